#include "daemon/secret_heap.h"

#include "absl/strings/str_cat.h"
#include "common/secret_bytes.h"
#include "spdlog/spdlog.h"

namespace grantvault::daemon {

absl::Status SetUpSecretHeap(const DaemonConfig& config, const std::string& process) {
  const size_t bytes = config.secret_heap_mib << 20;
  if (!ConfigureSecretHeap(bytes)) {
    const SecretHeapInfo info = GetSecretHeapInfo();
    if (!info.available) {
      spdlog::warn(
          "{}.secret_heap unavailable: every secret gets guarded pages of its own (slower, and "
          "bounded by vm.max_map_count)",
          process);
      return absl::OkStatus();
    }
    return absl::InternalError(absl::StrCat("the secret heap already has ", info.size >> 20,
                                            " MiB, not the configured ", config.secret_heap_mib));
  }
  const SecretHeapInfo info = GetSecretHeapInfo();
  if (info.locked) {
    spdlog::info("{}.secret_heap size={}MiB locked", process, config.secret_heap_mib);
  } else {
    spdlog::warn(
        "{}.secret_heap size={}MiB not locked: RLIMIT_MEMLOCK is smaller (the unit sets "
        "LimitMEMLOCK=); secrets can reach swap",
        process, config.secret_heap_mib);
  }
  return absl::OkStatus();
}

}  // namespace grantvault::daemon
