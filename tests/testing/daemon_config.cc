#include "tests/testing/daemon_config.h"

#include <unistd.h>

#include <fstream>

namespace grantvault::testing {

std::string WriteAgentDaemonConfig(const TempDir& dir, const std::string& ca_file,
                                   const std::string& workspace) {
  const std::string policy = dir.Join("policy.toml");
  std::ofstream(policy) << "[[callers]]\nuid = " << ::getuid()
                        << "\nrole = \"agent\"\nworkspaces = [\"" << workspace
                        << "\"]\n\n[workspaces." << workspace
                        << "]\nallow_resolve_without_tool = true\n";
  const std::string config = dir.Join("grantvaultd.toml");
  std::ofstream(config) << "[oauth]\nca_file = \"" << ca_file
                        << "\"\nuse_system_trust_store = false\n[policy]\nfile = \"" << policy
                        << "\"\n";
  return config;
}

}  // namespace grantvault::testing
