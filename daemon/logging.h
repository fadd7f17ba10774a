// Structured logging to stderr (journald adds time and unit under systemd).
// Lines are "event key=value …"; nothing secret is ever a value.
#ifndef GRANTVAULT_DAEMON_LOGGING_H_
#define GRANTVAULT_DAEMON_LOGGING_H_

#include <string>

namespace grantvault::daemon {

// Installs the stderr logger; `level` is trace, debug, info, warn or error.
void InitLogging(const std::string& level);
void SetLogLevel(const std::string& level);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_LOGGING_H_
