// The broker process of grantvaultd (docs/architecture.md, "Two processes"):
// started by the front as `grantvaultd --broker-fd N …` with the same
// configuration, it opens the vault (creating the embedded state on first
// start), the OAuth engine, the Refresher and the upstream revoker, answers
// the front's calls over fd N, and exits when the front goes away.
#ifndef GRANTVAULT_DAEMON_BROKER_MAIN_H_
#define GRANTVAULT_DAEMON_BROKER_MAIN_H_

#include <string>

#include "daemon/vault.h"

namespace grantvault::daemon {

int RunBroker(int fd, const std::string& config_file, const std::string& state_dir,
              const EmbeddedStateOptions& embedded);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_BROKER_MAIN_H_
