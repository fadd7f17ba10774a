// seed_grants: fills the embedded state of a stopped grantvaultd with
// synthetic grants, each with a real sealed refresh token (a fresh random
// secret sealed under the active KEK for the grant's binding), so that the
// daemon starts and serves on a store of realistic size. For
// bench/resolve_bench.sh (docs/performance.md, "Resolve").
//
//   seed_grants --state-dir DIR [--grants N] [--workspaces W]
//
// Grant i (0 <= i < N) belongs to workspace "ws_seed_<i mod W>" with
// connector "seed_<i div W>" (connector type "oidc", account "acct_<i>",
// scope "read"), so (workspace, connector) is unique as the store demands.
// The connectors are not registered: the grants are only there to be
// stored, listed and counted, never refreshed. The state must exist
// (grantvaultd --init-only) and no daemon may be running on it. Prints one
// summary line: grants=N seconds=S rate=R/s.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/ids.h"
#include "common/secret_bytes.h"
#include "daemon/vault.h"
#include "hsm/sealer.h"
#include "store/grant_store.h"

namespace grantvault {
namespace {

constexpr char kPurpose[] = "refresh_token";
constexpr size_t kRefreshTokenBytes = 43;  // the size of oidc-provider's refresh tokens

[[noreturn]] void Fatal(absl::string_view what) {
  std::fprintf(stderr, "seed_grants: %.*s\n", static_cast<int>(what.size()), what.data());
  std::exit(1);
}

[[noreturn]] void Usage() {
  std::fprintf(stderr, "usage: seed_grants --state-dir DIR [--grants N] [--workspaces W]\n");
  std::exit(2);
}

long ParsePositive(const char* s, const char* flag) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 1 || v > 100'000'000) {
    Fatal(absl::StrCat(flag, " must be an integer in [1, 100000000]"));
  }
  return v;
}

int Main(int argc, char** argv) {
  std::string state_dir;
  long grants = 100'000;
  long workspaces = 1'000;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h" || i + 1 >= argc) Usage();
    const char* v = argv[++i];
    if (a == "--state-dir") {
      state_dir = v;
    } else if (a == "--grants") {
      grants = ParsePositive(v, "--grants");
    } else if (a == "--workspaces") {
      workspaces = ParsePositive(v, "--workspaces");
    } else {
      Usage();
    }
  }
  if (state_dir.empty()) Usage();

  absl::StatusOr<daemon::Vault> vault = daemon::OpenEmbeddedState(state_dir);
  if (!vault.ok()) Fatal(vault.status().message());

  const absl::Time started = absl::Now();
  for (long i = 0; i < grants; ++i) {
    const absl::Time now = absl::Now();
    store::Grant grant;
    grant.grant_id = NewGrantId();
    grant.workspace_id = absl::StrFormat("ws_seed_%04d", i % workspaces);
    grant.connector_id = absl::StrFormat("seed_%03d", i / workspaces);
    grant.connector_type = "oidc";
    grant.account_id = absl::StrCat("acct_", i);
    grant.scopes = {"read"};
    grant.status = store::GrantStatus::kActive;
    grant.authorized_by = "seed_grants";
    grant.created_at = now;
    grant.updated_at = now;

    store::SealedSecret secret;
    secret.key = {grant.grant_id, kPurpose};
    secret.workspace_id = grant.workspace_id;
    secret.connector_id = grant.connector_id;
    secret.account_id = grant.account_id;
    const hsm::SealContext context{secret.workspace_id, secret.connector_id, secret.account_id,
                                   secret.key.owner_id, secret.key.purpose};
    absl::StatusOr<hsm::Sealed> sealed =
        vault->sealer->Seal(SecretBytes::Random(kRefreshTokenBytes), context);
    if (!sealed.ok()) Fatal(absl::StrCat("seal: ", sealed.status().message()));
    secret.kek_label = sealed->kek.label;
    secret.record = std::move(sealed->record);
    secret.updated_at = now;
    if (absl::Status inserted = vault->store->InsertGrant(grant, secret); !inserted.ok()) {
      Fatal(absl::StrCat("insert grant ", i, ": ", inserted.message()));
    }
    if ((i + 1) % 10'000 == 0) {
      std::fprintf(stderr, "seed_grants: %ld of %ld\n", i + 1, grants);
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - started);
  std::printf("grants=%ld seconds=%.1f rate=%.0f/s\n", grants, seconds,
              static_cast<double>(grants) / seconds);
  return 0;
}

}  // namespace
}  // namespace grantvault

int main(int argc, char** argv) { return grantvault::Main(argc, argv); }
