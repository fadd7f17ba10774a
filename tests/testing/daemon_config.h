// The configuration most end-to-end tests start grantvaultd with: this
// process's uid an agent of one workspace (resolves without a tool allowed),
// a provider's CA trusted instead of the system's, nothing else.
#ifndef GRANTVAULT_TESTS_TESTING_DAEMON_CONFIG_H_
#define GRANTVAULT_TESTS_TESTING_DAEMON_CONFIG_H_

#include <string>

#include "tests/testing/temp_dir.h"

namespace grantvault::testing {

// Writes <dir>/policy.toml and <dir>/grantvaultd.toml (naming that policy and
// trusting `ca_file`); returns the configuration's path.
std::string WriteAgentDaemonConfig(const TempDir& dir, const std::string& ca_file,
                                   const std::string& workspace);

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_DAEMON_CONFIG_H_
