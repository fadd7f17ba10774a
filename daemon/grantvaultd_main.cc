// grantvaultd: the grantvault daemon.
//
// This build initialises and checks the embedded state (SoftHSM2 token and
// SQLite database under --state-dir); serving the agent and admin sockets is
// the next step of the project (see docs/architecture.md).
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "daemon/embedded_state.h"
#include "hsm/keys.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "grantvaultd: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grantvaultd: keeps OAuth grants sealed under HSM-held keys"};
  std::string state_dir;
  bool init_only = false;
  app.add_option("--state-dir", state_dir, "state directory (SoftHSM2 token + SQLite database)")
      ->required();
  app.add_flag("--init-only", init_only,
               "create whatever is missing of the embedded state, report it, and exit")
      ->required();
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> created;
  absl::StatusOr<grantvault::daemon::Vault> vault =
      grantvault::daemon::InitEmbeddedState(state_dir, &created);
  if (!vault.ok()) return Fail(vault.status());

  if (created.empty()) {
    std::printf("State in %s is already initialised; nothing created.\n", state_dir.c_str());
  } else {
    std::printf("Initialised the embedded state in %s:\n", state_dir.c_str());
    for (const std::string& line : created) std::printf("  created %s\n", line.c_str());
  }
  absl::StatusOr<std::vector<grantvault::keys::KeyStatus>> keys = vault->keys->Status();
  if (!keys.ok()) return Fail(keys.status());
  std::printf("Key-encryption keys in token '%s':\n", vault->token->label().c_str());
  for (const auto& k : *keys) {
    std::printf("  %-20s %-8s %lld sealed record(s)%s\n", k.version.label.c_str(),
                std::string(grantvault::store::KeyStateName(k.version.state)).c_str(),
                static_cast<long long>(k.sealed_records), k.in_token ? "" : "  (not in token)");
  }
  absl::StatusOr<std::vector<grantvault::hsm::KeyRef>> audit = grantvault::hsm::ListKeys(
      *vault->token, CKO_PRIVATE_KEY, grantvault::hsm::kAuditKeyLabelPrefix);
  if (!audit.ok()) return Fail(audit.status());
  for (const auto& a : *audit)
    std::printf("Audit signing key: %s (ECDSA P-256)\n", a.label.c_str());
  return 0;
}
