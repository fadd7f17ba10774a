// The secret heap of a grantvaultd process, set from [limits] secret_heap_mib
// before the first secret is allocated, and how it came out, for the log.
#ifndef GRANTVAULT_DAEMON_SECRET_HEAP_H_
#define GRANTVAULT_DAEMON_SECRET_HEAP_H_

#include <string>

#include "absl/status/status.h"
#include "daemon/config.h"

namespace grantvault::daemon {

// Sizes the heap; an error if one is already in use with another size (a
// secret was allocated before this call). Logs one line naming `process`.
absl::Status SetUpSecretHeap(const DaemonConfig& config, const std::string& process);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_SECRET_HEAP_H_
