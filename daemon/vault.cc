#include "daemon/vault.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/status.h"
#include "hsm/softhsm.h"
#include "store/sqlite_grant_store.h"

namespace grantvault::daemon {
namespace {

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// 20 random bytes → 32 base32 characters (SoftHSM allows up to 255).
constexpr size_t kPinEntropyBytes = 20;

absl::Status EnsurePinFile(const std::string& path, std::vector<std::string>* created,
                           const char* what) {
  if (Exists(path)) return absl::OkStatus();
  SecretBytes pin = NewSecretText(kPinEntropyBytes);
  GV_RETURN_IF_ERROR(WriteFileAtomically(path, pin.view(), 0600));
  if (created) created->push_back(absl::StrCat(what, " ", path, " (mode 0600)"));
  return absl::OkStatus();
}

absl::StatusOr<Vault> OpenParts(const hsm::TokenOptions& options, const StateLayout& layout,
                                const StoreLocation& location) {
  Vault vault;
  vault.layout = layout;
  GV_ASSIGN_OR_RETURN(vault.token, hsm::Token::Open(options));
  GV_ASSIGN_OR_RETURN(vault.store, OpenStore(location));
  GV_ASSIGN_OR_RETURN(vault.keys,
                      keys::KeyManager::Create(vault.token.get(), vault.store.get(), &RealClock()));
  return vault;
}

absl::StatusOr<Vault> OpenLayout(const StateLayout& layout, const EmbeddedStateOptions& embedded) {
  hsm::TokenOptions options;
  options.token_label = kEmbeddedTokenLabel;
  options.pin_file = layout.user_pin_file;
  return OpenParts(options, layout,
                   StoreLocation{layout.database, embedded.postgres, embedded.postgres_limits});
}

absl::Status AttachSealer(Vault& vault) {
  GV_ASSIGN_OR_RETURN(hsm::KeyRef active, vault.keys->ActiveKek());
  GV_ASSIGN_OR_RETURN(vault.sealer, hsm::EnvelopeSealer::Create(vault.token.get(), active));
  return absl::OkStatus();
}

}  // namespace

StateLayout LayoutFor(const std::string& state_dir) {
  StateLayout l;
  l.dir = state_dir;
  l.hsm_dir = absl::StrCat(state_dir, "/hsm");
  l.softhsm_conf = absl::StrCat(l.hsm_dir, "/softhsm2.conf");
  l.so_pin_file = absl::StrCat(l.hsm_dir, "/so.pin");
  l.user_pin_file = absl::StrCat(l.hsm_dir, "/user.pin");
  l.database = absl::StrCat(state_dir, "/grantvault.db");
  return l;
}

absl::StatusOr<Vault> InitEmbeddedState(const std::string& state_dir_as_given,
                                        std::vector<std::string>* created,
                                        const EmbeddedStateOptions& options,
                                        std::vector<std::string>* removed) {
  GV_ASSIGN_OR_RETURN(const std::string state_dir, AbsolutePath(state_dir_as_given));
  const StateLayout layout = LayoutFor(state_dir);
  const bool had_dir = Exists(layout.dir);
  GV_RETURN_IF_ERROR(EnsurePrivateDirectory(layout.dir, 0700));
  if (!had_dir && created) created->push_back(absl::StrCat("state directory ", layout.dir));

  const bool had_conf = Exists(layout.softhsm_conf);
  GV_RETURN_IF_ERROR(hsm::PrepareSoftHsm(layout.hsm_dir).status());
  if (!had_conf && created) {
    created->push_back(absl::StrCat("SoftHSM2 configuration ", layout.softhsm_conf));
  }
  {
    GV_ASSIGN_OR_RETURN(std::shared_ptr<hsm::Module> module,
                        hsm::Module::Load(hsm::kDefaultModulePath));
    const bool token_missing = absl::IsNotFound(module->FindToken(kEmbeddedTokenLabel).status());
    if (token_missing) {
      GV_RETURN_IF_ERROR(EnsurePinFile(layout.so_pin_file, created, "security-officer PIN"));
    }
    GV_RETURN_IF_ERROR(EnsurePinFile(layout.user_pin_file, created, "user PIN"));
    if (token_missing) {
      GV_ASSIGN_OR_RETURN(SecretBytes so_pin, ReadSecretFile(layout.so_pin_file));
      GV_ASSIGN_OR_RETURN(SecretBytes user_pin, ReadSecretFile(layout.user_pin_file));
      GV_RETURN_IF_ERROR(
          hsm::InitializeToken(hsm::kDefaultModulePath, kEmbeddedTokenLabel, so_pin, user_pin));
      if (created) {
        created->push_back(absl::StrCat("SoftHSM2 token '", kEmbeddedTokenLabel, "' in ",
                                        layout.hsm_dir, "/tokens"));
      }
    }
    // From here on nothing needs the SO PIN: a copy of it beside the user PIN
    // would only be one more secret for a reader of the state to take.
    if (!options.keep_so_pin && Exists(layout.so_pin_file)) {
      GV_RETURN_IF_ERROR(RemoveSecretFile(layout.so_pin_file));
      if (removed) {
        removed->push_back(absl::StrCat(
            "security-officer PIN ", layout.so_pin_file,
            " (the token is initialised and the daemon never needs it; --keep-so-pin keeps it)"));
      }
    }
  }

  const bool had_db = options.postgres.has_value() || Exists(layout.database);
  GV_ASSIGN_OR_RETURN(Vault vault, OpenLayout(layout, options));
  if (!had_db && created) {
    created->push_back(absl::StrCat("database ", layout.database, " (SQLite, schema version ",
                                    store::SqliteSchemaVersion(), ")"));
  }
  GV_ASSIGN_OR_RETURN(std::vector<std::string> keys_made, vault.keys->Bootstrap());
  if (created) {
    for (std::string& k : keys_made) created->push_back(absl::StrCat(k, " in the token"));
  }
  GV_RETURN_IF_ERROR(AttachSealer(vault));
  return vault;
}

absl::StatusOr<Vault> OpenEmbeddedState(const std::string& state_dir_as_given) {
  GV_ASSIGN_OR_RETURN(const std::string state_dir, AbsolutePath(state_dir_as_given));
  const StateLayout layout = LayoutFor(state_dir);
  for (const std::string* path : {&layout.softhsm_conf, &layout.user_pin_file}) {
    if (!Exists(*path)) {
      return absl::FailedPreconditionError(absl::StrCat(*path, " is missing: ", state_dir,
                                                        " is not an initialised state directory"));
    }
  }
  if (!Exists(layout.database)) {
    return absl::FailedPreconditionError(absl::StrCat(layout.database, " is missing: ", state_dir,
                                                      " is not an initialised state directory"));
  }
  GV_RETURN_IF_ERROR(hsm::PrepareSoftHsm(layout.hsm_dir).status());
  GV_ASSIGN_OR_RETURN(Vault vault, OpenLayout(layout, {}));
  GV_RETURN_IF_ERROR(AttachSealer(vault));
  return vault;
}

absl::StatusOr<Vault> OpenExternalVault(const hsm::TokenOptions& token,
                                        const StoreLocation& location,
                                        std::vector<std::string>* created) {
  StateLayout layout;
  layout.database = location.sqlite_path;
  layout.user_pin_file = token.pin_file;
  GV_ASSIGN_OR_RETURN(Vault vault, OpenParts(token, layout, location));
  GV_ASSIGN_OR_RETURN(std::vector<std::string> keys_made, vault.keys->Bootstrap());
  if (created) {
    for (std::string& k : keys_made) created->push_back(absl::StrCat(k, " in the token"));
  }
  GV_RETURN_IF_ERROR(AttachSealer(vault));
  return vault;
}

absl::StatusOr<Vault> OpenConfiguredVault(const DaemonConfig& config,
                                          const EmbeddedStateOptions& embedded,
                                          std::vector<std::string>* created,
                                          std::vector<std::string>* removed) {
  const StoreLocation location = StoreLocationFor(config);
  if (config.uses_embedded_token()) {
    EmbeddedStateOptions with_store = embedded;
    with_store.postgres = location.postgres;
    with_store.postgres_limits = location.postgres_limits;
    return InitEmbeddedState(config.state_dir, created, with_store, removed);
  }
  hsm::TokenOptions token;
  if (!config.hsm_module.empty()) token.module_path = config.hsm_module;
  token.token_label = config.token_label;
  token.pin_file = config.pin_file;
  return OpenExternalVault(token, location, created);
}

std::string HostOrigin(const DaemonConfig& config) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  return absl::StrCat(host, ":", config.state_dir);
}

StoreLocation StoreLocationFor(const DaemonConfig& config) {
  StoreLocation location;
  location.sqlite_path = GrantDatabasePath(config);
  if (config.uses_postgres()) {
    db::PostgresOptions postgres;
    postgres.conninfo = config.postgres;
    postgres.password_file = config.postgres_password_file;
    postgres.connect_timeout = config.postgres_connect_timeout;
    postgres.origin = HostOrigin(config);
    location.postgres = std::move(postgres);
    location.postgres_limits.lock_connections = config.postgres_lock_connections;
  }
  return location;
}

absl::StatusOr<std::unique_ptr<store::GrantStore>> OpenStore(const StoreLocation& location) {
  if (location.postgres.has_value()) {
    return store::OpenPostgresGrantStore(*location.postgres, location.postgres_limits);
  }
  return store::OpenSqliteGrantStore(location.sqlite_path);
}

std::string GrantDatabasePath(const DaemonConfig& config) {
  if (config.uses_embedded_token()) return LayoutFor(config.state_dir).database;
  return config.database.empty() ? config.state_dir + "/grantvault.db" : config.database;
}

}  // namespace grantvault::daemon
