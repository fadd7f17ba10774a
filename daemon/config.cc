#include "daemon/config.h"

#include <toml++/toml.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "db/postgres.h"

namespace grantvault::daemon {
namespace {

std::string Where(const toml::node& node, const std::string& key) {
  const toml::source_region& src = node.source();
  return absl::StrCat(src.path ? std::string(*src.path) : std::string("config"), ":",
                      src.begin.line, ": ", key);
}

absl::Status Invalid(const toml::node& node, const std::string& key, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(Where(node, key), " ", std::string(why)));
}

// Reads table[key] into `out` if present. Each overload checks the type.
absl::Status Read(const toml::table& table, const std::string& key, std::string* out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return absl::OkStatus();
  if (!node->is_string()) return Invalid(*node, key, "must be a string");
  *out = node->as_string()->get();
  return absl::OkStatus();
}

absl::Status Read(const toml::table& table, const std::string& key, int64_t min, int64_t max,
                  int64_t* out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return absl::OkStatus();
  if (!node->is_integer()) return Invalid(*node, key, "must be an integer");
  int64_t v = node->as_integer()->get();
  if (v < min || v > max) {
    return Invalid(*node, key, absl::StrCat("must be between ", min, " and ", max));
  }
  *out = v;
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadUnsigned(const toml::table& table, const std::string& key, int64_t min,
                          int64_t max, T* out) {
  int64_t v = static_cast<int64_t>(*out);
  GV_RETURN_IF_ERROR(Read(table, key, min, max, &v));
  *out = static_cast<T>(v);
  return absl::OkStatus();
}

absl::Status ReadMillis(const toml::table& table, const std::string& key, int64_t min, int64_t max,
                        absl::Duration* out) {
  int64_t ms = absl::ToInt64Milliseconds(*out);
  GV_RETURN_IF_ERROR(Read(table, key, min, max, &ms));
  *out = absl::Milliseconds(ms);
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadIdList(const toml::table& table, const std::string& key, std::vector<T>* out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return absl::OkStatus();
  const toml::array* array = node->as_array();
  if (array == nullptr) return Invalid(*node, key, "must be an array of integers");
  out->clear();
  for (const toml::node& element : *array) {
    if (!element.is_integer() || element.as_integer()->get() < 0 ||
        element.as_integer()->get() > 0xfffffffe) {
      return Invalid(element, key, "must hold user or group ids (0..4294967294)");
    }
    out->push_back(static_cast<T>(element.as_integer()->get()));
  }
  return absl::OkStatus();
}

absl::Status ReadPathList(const toml::table& table, const std::string& key,
                          std::vector<std::string>* out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return absl::OkStatus();
  const toml::array* array = node->as_array();
  if (array == nullptr) return Invalid(*node, key, "must be an array of absolute paths");
  out->clear();
  for (const toml::node& element : *array) {
    if (!element.is_string() || element.as_string()->get().empty() ||
        element.as_string()->get()[0] != '/') {
      return Invalid(element, key, "must hold absolute paths");
    }
    out->push_back(element.as_string()->get());
  }
  return absl::OkStatus();
}

// Refuses keys the daemon does not know, so a typo is an error.
absl::Status OnlyKnownKeys(const toml::table& table, const std::string& section,
                           const std::set<std::string>& known) {
  for (const auto& [key, node] : table) {
    std::string k(key.str());
    if (known.count(k) == 0) {
      return Invalid(
          node, section.empty() ? k : absl::StrCat(section, ".", k),
          absl::StrCat("is not a known setting (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

const toml::table* Section(const toml::table& root, const std::string& name) {
  const toml::node* node = root.get(name);
  return node == nullptr ? nullptr : node->as_table();
}

absl::Status Apply(const toml::table& root, DaemonConfig& c) {
  GV_RETURN_IF_ERROR(OnlyKnownKeys(root, "",
                                   {"state_dir", "hsm", "store", "sockets", "limits", "log",
                                    "admin", "oauth", "policy", "audit", "sandbox", "proxy"}));
  GV_RETURN_IF_ERROR(Read(root, "state_dir", &c.state_dir));
  for (const char* name : {"hsm", "store", "sockets", "limits", "log", "admin", "oauth", "policy",
                           "audit", "sandbox", "proxy"}) {
    const toml::node* node = root.get(name);
    if (node != nullptr && !node->is_table()) return Invalid(*node, name, "must be a table");
  }
  if (const toml::table* t = Section(root, "hsm")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "hsm", {"module", "token_label", "pin_file"}));
    GV_RETURN_IF_ERROR(Read(*t, "module", &c.hsm_module));
    GV_RETURN_IF_ERROR(Read(*t, "token_label", &c.token_label));
    GV_RETURN_IF_ERROR(Read(*t, "pin_file", &c.pin_file));
  }
  if (const toml::table* t = Section(root, "store")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(
        *t, "store",
        {"database", "postgres", "password_file", "connect_timeout_ms", "lock_connections"}));
    GV_RETURN_IF_ERROR(Read(*t, "database", &c.database));
    GV_RETURN_IF_ERROR(Read(*t, "postgres", &c.postgres));
    GV_RETURN_IF_ERROR(Read(*t, "password_file", &c.postgres_password_file));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "connect_timeout_ms", 100, 600'000, &c.postgres_connect_timeout));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "lock_connections", 1, 256, &c.postgres_lock_connections));
    if (const toml::node* n = t->get("postgres")) {
      if (c.postgres.empty()) return Invalid(*n, "store.postgres", "must not be empty");
      if (absl::Status usable = db::CheckConninfo(c.postgres); !usable.ok()) {
        return Invalid(*n, "store.postgres", std::string(usable.message()));
      }
      if (t->get("database") != nullptr) {
        return Invalid(*n, "store.postgres", "and store.database (SQLite) exclude each other");
      }
    } else if (const toml::node* pw = t->get("password_file")) {
      return Invalid(*pw, "store.password_file", "is for store.postgres, which is not set");
    }
  }
  if (const toml::table* t = Section(root, "sockets")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "sockets", {"agent", "admin", "mode"}));
    GV_RETURN_IF_ERROR(Read(*t, "agent", &c.agent_socket));
    GV_RETURN_IF_ERROR(Read(*t, "admin", &c.admin_socket));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "mode", 0, 0777, &c.socket_mode));
  }
  if (const toml::table* t = Section(root, "limits")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(
        *t, "limits",
        {"max_connections", "agent_max_connections", "admin_max_connections",
         "agent_max_connections_per_uid", "admin_max_connections_per_uid",
         "max_in_flight_per_connection", "max_queued_bytes_per_connection", "frame_timeout_ms",
         "idle_timeout_ms", "agent_idle_timeout_ms", "admin_idle_timeout_ms", "write_timeout_ms",
         "io_threads", "worker_threads", "agent_threads", "secret_heap_mib"}));
    // Older configurations' max_connections limited both sockets together; it
    // is read as agent.sock's default now, and idle_timeout_ms as both
    // sockets' default. The per-socket keys win.
    GV_RETURN_IF_ERROR(
        ReadUnsigned(*t, "max_connections", 1, 1000000, &c.agent_limits.max_connections));
    GV_RETURN_IF_ERROR(
        ReadUnsigned(*t, "agent_max_connections", 1, 1000000, &c.agent_limits.max_connections));
    GV_RETURN_IF_ERROR(
        ReadUnsigned(*t, "admin_max_connections", 1, 1000000, &c.admin_limits.max_connections));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "agent_max_connections_per_uid", 0, 1000000,
                                    &c.agent_limits.max_connections_per_uid));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "admin_max_connections_per_uid", 0, 1000000,
                                    &c.admin_limits.max_connections_per_uid));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "idle_timeout_ms", 0, 86400000, &c.agent_limits.idle_timeout));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "idle_timeout_ms", 0, 86400000, &c.admin_limits.idle_timeout));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "agent_idle_timeout_ms", 0, 86400000, &c.agent_limits.idle_timeout));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "admin_idle_timeout_ms", 0, 86400000, &c.admin_limits.idle_timeout));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "max_in_flight_per_connection", 1, 100000,
                                    &c.limits.max_in_flight_per_connection));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "max_queued_bytes_per_connection", 65536 + 4,
                                    int64_t{1} << 30, &c.limits.max_queued_bytes_per_connection));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "frame_timeout_ms", 1, 3600000, &c.limits.frame_timeout));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "write_timeout_ms", 1, 3600000, &c.limits.write_timeout));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "io_threads", 1, 64, &c.io_threads));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "worker_threads", 1, 64, &c.worker_threads));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "agent_threads", 1, 256, &c.agent_threads));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "secret_heap_mib", 1, 4096, &c.secret_heap_mib));
    if ((c.secret_heap_mib & (c.secret_heap_mib - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("limits.secret_heap_mib must be a power of two (1, 2, 4 … 4096), not ",
                       c.secret_heap_mib));
    }
  }
  if (const toml::table* t = Section(root, "audit")) {
    GV_RETURN_IF_ERROR(
        OnlyKnownKeys(*t, "audit", {"enabled", "database", "group_commit_ms", "repeat_record_ms"}));
    if (const toml::node* n = t->get("enabled")) {
      if (!n->is_boolean()) return Invalid(*n, "audit.enabled", "must be true or false");
      c.audit_enabled = n->as_boolean()->get();
    }
    GV_RETURN_IF_ERROR(Read(*t, "database", &c.audit_database));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "group_commit_ms", 0, 10000, &c.audit_group_commit));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "repeat_record_ms", 0, 400, &c.audit_repeat_record));
  }
  if (const toml::table* t = Section(root, "policy")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "policy", {"file", "reload_failure"}));
    GV_RETURN_IF_ERROR(Read(*t, "file", &c.policy_file));
    std::string on_failure;
    GV_RETURN_IF_ERROR(Read(*t, "reload_failure", &on_failure));
    if (on_failure == "deny") {
      c.policy_reload_failure = DaemonConfig::PolicyReloadFailure::kDeny;
    } else if (!on_failure.empty() && on_failure != "keep") {
      return Invalid(*t->get("reload_failure"), "policy.reload_failure",
                     "must be \"keep\" or \"deny\"");
    }
  }
  if (const toml::table* t = Section(root, "log")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "log", {"level"}));
    GV_RETURN_IF_ERROR(Read(*t, "level", &c.log_level));
  }
  if (const toml::table* t = Section(root, "oauth")) {
    GV_RETURN_IF_ERROR(
        OnlyKnownKeys(*t, "oauth",
                      {"ca_file", "use_system_trust_store", "connector_catalog",
                       "revocation_timeout_ms", "revocation_retry_ms", "refresh_timeout_ms"}));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "refresh_timeout_ms", 100, 600000, &c.oauth_refresh_timeout));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "revocation_timeout_ms", 100, 600000, &c.oauth_revocation_timeout));
    GV_RETURN_IF_ERROR(
        ReadMillis(*t, "revocation_retry_ms", 10, 600000, &c.oauth_revocation_backoff));
    GV_RETURN_IF_ERROR(Read(*t, "ca_file", &c.oauth_ca_file));
    GV_RETURN_IF_ERROR(Read(*t, "connector_catalog", &c.connector_catalog));
    if (const toml::node* n = t->get("use_system_trust_store")) {
      if (!n->is_boolean())
        return Invalid(*n, "oauth.use_system_trust_store", "must be true or false");
      c.oauth_use_system_trust = n->as_boolean()->get();
    }
  }
  if (const toml::table* t = Section(root, "proxy")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "proxy",
                                     {"enabled", "ca_file", "use_system_trust_store", "max_calls",
                                      "max_calls_per_grant", "max_response_bytes", "timeout_ms"}));
    for (const auto& [key, out] :
         {std::pair{"enabled", &c.proxy_enabled},
          std::pair{"use_system_trust_store", &c.proxy_use_system_trust}}) {
      if (const toml::node* n = t->get(key)) {
        if (!n->is_boolean())
          return Invalid(*n, absl::StrCat("proxy.", key), "must be true or false");
        *out = n->as_boolean()->get();
      }
    }
    GV_RETURN_IF_ERROR(Read(*t, "ca_file", &c.proxy_ca_file));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "max_calls", 1, 4096, &c.proxy_max_calls));
    GV_RETURN_IF_ERROR(
        ReadUnsigned(*t, "max_calls_per_grant", 1, 4096, &c.proxy_max_calls_per_grant));
    GV_RETURN_IF_ERROR(ReadUnsigned(*t, "max_response_bytes", 1024, int64_t{1} << 30,
                                    &c.proxy_max_response_bytes));
    GV_RETURN_IF_ERROR(ReadMillis(*t, "timeout_ms", 100, 3600000, &c.proxy_timeout));
  }
  if (const toml::table* t = Section(root, "sandbox")) {
    GV_RETURN_IF_ERROR(
        OnlyKnownKeys(*t, "sandbox", {"enabled", "landlock", "read_paths", "write_paths"}));
    if (const toml::node* n = t->get("enabled")) {
      if (!n->is_boolean()) return Invalid(*n, "sandbox.enabled", "must be true or false");
      c.sandbox_enabled = n->as_boolean()->get();
    }
    if (const toml::node* n = t->get("landlock")) {
      if (!n->is_boolean()) return Invalid(*n, "sandbox.landlock", "must be true or false");
      c.sandbox_landlock = n->as_boolean()->get();
    }
    GV_RETURN_IF_ERROR(ReadPathList(*t, "read_paths", &c.sandbox_read_paths));
    GV_RETURN_IF_ERROR(ReadPathList(*t, "write_paths", &c.sandbox_write_paths));
  }
  if (const toml::table* t = Section(root, "admin")) {
    GV_RETURN_IF_ERROR(OnlyKnownKeys(*t, "admin", {"allowed_uids", "allowed_gids"}));
    GV_RETURN_IF_ERROR(ReadIdList(*t, "allowed_uids", &c.admin_uids));
    GV_RETURN_IF_ERROR(ReadIdList(*t, "allowed_gids", &c.admin_gids));
  }
  return absl::OkStatus();
}

// The systemd credential an external token's PIN is read from by default.
constexpr char kPinCredential[] = "hsm-pin";

// hsm.pin_file as a path: a bare name is a credential in
// $CREDENTIALS_DIRECTORY; unset with a token label, the credential hsm-pin.
absl::Status ResolvePinFile(DaemonConfig& c) {
  if (c.token_label.empty()) {
    if (!c.pin_file.empty()) {
      return absl::InvalidArgumentError(
          "an external token needs hsm.token_label as well as hsm.pin_file");
    }
    return absl::OkStatus();  // the embedded token
  }
  if (absl::StrContains(c.pin_file, '/')) return absl::OkStatus();
  const std::string name = c.pin_file.empty() ? kPinCredential : c.pin_file;
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  if (credentials == nullptr || credentials[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "an external token needs its PIN: set hsm.pin_file to a file, or pass the credential '",
        name, "' (LoadCredentialEncrypted=", name,
        ":... in the unit; $CREDENTIALS_DIRECTORY is not set)"));
  }
  c.pin_file = absl::StrCat(credentials, "/", name);
  return absl::OkStatus();
}

// store.password_file as a path: a bare name is a systemd credential.
absl::Status ResolvePostgresPasswordFile(DaemonConfig& c) {
  if (c.postgres_password_file.empty() || absl::StrContains(c.postgres_password_file, '/')) {
    return absl::OkStatus();
  }
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  if (credentials == nullptr || credentials[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "store.password_file '", c.postgres_password_file,
        "' names a credential (no '/'), but $CREDENTIALS_DIRECTORY is not set (LoadCredential",
        "Encrypted=", c.postgres_password_file, ":... in the unit, or a path)"));
  }
  c.postgres_password_file = absl::StrCat(credentials, "/", c.postgres_password_file);
  return absl::OkStatus();
}

// The installed catalog next to the running daemon, if there is one.
std::string InstalledConnectorCatalog() {
#ifdef GV_INSTALLED_CATALOG_FROM_EXE_DIR
  std::array<char, 4096> exe{};
  const ssize_t n = ::readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (n <= 0) return "";
  std::string path(exe.data(), static_cast<size_t>(n));
  path.resize(path.rfind('/') + 1);
  path += GV_INSTALLED_CATALOG_FROM_EXE_DIR;
  if (::access(path.c_str(), R_OK) != 0) return "";
  return path;
#else
  return "";
#endif
}

}  // namespace

absl::StatusOr<DaemonConfig> LoadConfig(const std::string& config_file,
                                        const std::string& state_dir) {
  DaemonConfig c;
  if (!config_file.empty()) {
    try {
      toml::table root = toml::parse_file(config_file);
      GV_RETURN_IF_ERROR(Apply(root, c));
    } catch (const toml::parse_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(config_file, ":", e.source().begin.line, ":",
                                                     e.source().begin.column, ": ",
                                                     std::string(e.description())));
    }
  }
  if (!state_dir.empty()) c.state_dir = state_dir;
  if (c.state_dir.empty()) {
    return absl::InvalidArgumentError("no state directory: pass --state-dir or set state_dir");
  }
  while (c.state_dir.size() > 1 && c.state_dir.back() == '/') c.state_dir.pop_back();
  if (c.agent_socket.empty()) c.agent_socket = c.state_dir + "/run/agent.sock";
  if (c.admin_socket.empty()) c.admin_socket = c.state_dir + "/run/admin.sock";
  if (c.policy_file.empty()) c.policy_file = c.state_dir + "/policy.toml";
  if (c.audit_database.empty()) c.audit_database = c.state_dir + "/audit.db";
  GV_RETURN_IF_ERROR(ResolvePinFile(c));
  GV_RETURN_IF_ERROR(ResolvePostgresPasswordFile(c));
  if (c.connector_catalog.empty()) c.connector_catalog = InstalledConnectorCatalog();
  static const std::set<std::string> kLevels = {"trace", "debug", "info", "warn", "error"};
  if (kLevels.count(c.log_level) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log.level '", c.log_level, "' is not one of trace, debug, info, warn, error"));
  }
  return c;
}

}  // namespace grantvault::daemon
