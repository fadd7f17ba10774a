// The vault: a token, a store, the key manager and the sealer, opened
// together. Either the embedded default deployment — a SoftHSM2 token and a
// SQLite database in one state directory, created on first start — or an
// external token (any PKCS#11 module) with a SQLite database.
//
//   <state>/                 0700
//     hsm/                   0700  SoftHSM2 configuration and token store
//       softhsm2.conf
//       tokens/
//       so.pin               0600  security-officer PIN: only until the token is
//                                  initialised (kept only on request, below)
//       user.pin             0600  the PIN grantvault logs in with
//     grantvault.db          0600  SQLite (WAL): grants, sealed secrets, keys
#ifndef GRANTVAULT_DAEMON_VAULT_H_
#define GRANTVAULT_DAEMON_VAULT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config.h"
#include "db/postgres.h"
#include "hsm/envelope_sealer.h"
#include "hsm/token.h"
#include "keys/key_manager.h"
#include "store/grant_store.h"
#include "store/postgres_grant_store.h"

namespace grantvault::daemon {

inline constexpr char kEmbeddedTokenLabel[] = "grantvault";

// Paths of the embedded state. InitEmbeddedState and OpenEmbeddedState make the
// state directory absolute first, so every path here (and every path written
// into a state file) is absolute.
struct StateLayout {
  std::string dir;
  std::string hsm_dir;
  std::string softhsm_conf;
  std::string so_pin_file;
  std::string user_pin_file;
  std::string database;
};
// `state_dir` should be absolute (AbsolutePath in common/files.h).
StateLayout LayoutFor(const std::string& state_dir);

// Everything a process needs to seal, open and manage keys, opened on one
// state directory. Members are destroyed in reverse order of declaration.
struct Vault {
  StateLayout layout;
  std::unique_ptr<hsm::Token> token;
  std::unique_ptr<store::GrantStore> store;
  std::unique_ptr<keys::KeyManager> keys;
  std::unique_ptr<hsm::EnvelopeSealer> sealer;
};

// Where the grants are kept: the SQLite file `sqlite_path` (the default), or
// a PostgreSQL database that several hosts share (docs/operations.md,
// "Several hosts").
struct StoreLocation {
  std::string sqlite_path;
  std::optional<db::PostgresOptions> postgres;
  store::PostgresStoreLimits postgres_limits;
};
// The store a configuration names (the front's own handle; the broker's is
// the vault's).
StoreLocation StoreLocationFor(const DaemonConfig& config);
// Names this daemon in the changes it makes to a shared store (front and
// broker alike): its host name and state directory.
std::string HostOrigin(const DaemonConfig& config);
absl::StatusOr<std::unique_ptr<store::GrantStore>> OpenStore(const StoreLocation& location);

struct EmbeddedStateOptions {
  // Keep <state>/hsm/so.pin once the token is initialised. The daemon never
  // needs the security-officer PIN after C_InitToken/C_InitPIN, so by default
  // the file is overwritten and removed then (and any so.pin found in an
  // initialised state, e.g. left by an older version or a crash, is removed
  // at start). An operator who wants it asks for it and moves it away.
  bool keep_so_pin = false;
  // The grants in PostgreSQL instead of <state>/grantvault.db.
  std::optional<db::PostgresOptions> postgres;
  store::PostgresStoreLimits postgres_limits;
};

// Creates whatever is missing of the embedded state under `state_dir` (the
// directory, the SoftHSM2 configuration, the token with generated PINs stored
// in 0600 files, the database, KEK 1 and the audit signing key), then opens it.
// Idempotent: on an existing state it creates nothing. `created` (optional)
// receives one line per thing created. PIN files are written before the token
// is initialised, so a crash in between never loses a PIN; the SO PIN file is
// then removed unless `options.keep_so_pin` (`removed`, optional, receives
// one line per file removed).
absl::StatusOr<Vault> InitEmbeddedState(const std::string& state_dir,
                                        std::vector<std::string>* created = nullptr,
                                        const EmbeddedStateOptions& options = {},
                                        std::vector<std::string>* removed = nullptr);

// Opens an existing embedded state; FailedPrecondition naming what is missing
// when it was never initialised.
absl::StatusOr<Vault> OpenEmbeddedState(const std::string& state_dir);

// Opens an external token (already initialised, by its owner) and the store
// at `location`; on first start generates KEK 1 and the audit key in that
// token (reported in `created`).
absl::StatusOr<Vault> OpenExternalVault(const hsm::TokenOptions& token,
                                        const StoreLocation& location,
                                        std::vector<std::string>* created = nullptr);

// The vault a configuration names: the embedded state (created on first
// start) or the external token and its database.
absl::StatusOr<Vault> OpenConfiguredVault(const DaemonConfig& config,
                                          const EmbeddedStateOptions& embedded,
                                          std::vector<std::string>* created,
                                          std::vector<std::string>* removed);
// The SQLite grant database a configuration names (unused with PostgreSQL).
std::string GrantDatabasePath(const DaemonConfig& config);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_VAULT_H_
