// The broker process of grantvaultd (docs/architecture.md, "Two processes"):
// started by the front as `grantvaultd --broker-fd N …` with the same
// configuration, it opens the vault (creating the embedded state on first
// start), the OAuth engine, the Refresher and the upstream revoker, answers
// the front's calls over fd N, and exits when the front goes away.
#ifndef GRANTVAULT_DAEMON_BROKER_MAIN_H_
#define GRANTVAULT_DAEMON_BROKER_MAIN_H_

#include <functional>
#include <string>

#include "daemon/config.h"
#include "daemon/vault.h"
#include "sandbox/sandbox.h"

namespace grantvault::daemon {

struct BrokerStart {
  int fd = -1;  // the link to the front
  std::string config_file, state_dir;
  EmbeddedStateOptions embedded;
  // The Landlock rules for a configuration (the front's own, computed by the
  // binary that knows its shipped paths).
  std::function<sandbox::FilesystemRules(const DaemonConfig&)> filesystem_rules;
  // Test builds only: what SIGUSR2 makes the broker do (empty: nothing).
  std::function<void()> test_hook;
};

int RunBroker(const BrokerStart& start);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_BROKER_MAIN_H_
