#include "daemon/logging.h"

#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace grantvault::daemon {

void InitLogging(const std::string& level) {
  auto logger = spdlog::stderr_logger_mt("grantvaultd");
  // systemd's journal records its own timestamp; a terminal wants one.
  logger->set_pattern(std::getenv("JOURNAL_STREAM") != nullptr ? "%l %v"
                                                               : "%Y-%m-%dT%H:%M:%S.%e %l %v");
  spdlog::set_default_logger(logger);
  SetLogLevel(level);
}

void SetLogLevel(const std::string& level) {
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::trace);
}

}  // namespace grantvault::daemon
