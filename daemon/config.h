// grantvaultd's configuration: command-line flags and an optional TOML file
// (documented with every key in docs/operations.md).
#ifndef GRANTVAULT_DAEMON_CONFIG_H_
#define GRANTVAULT_DAEMON_CONFIG_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ipc/server.h"

namespace grantvault::daemon {

struct DaemonConfig {
  // The embedded default: SoftHSM2 token + SQLite under this directory,
  // created on first start. Also holds the lock file and, unless configured
  // otherwise, the sockets (<state_dir>/run/agent.sock, admin.sock).
  std::string state_dir;

  // An external token instead of the embedded SoftHSM2 one (token_label set).
  // pin_file: a path, or a bare name (no '/') read as a systemd credential:
  // $CREDENTIALS_DIRECTORY/<name>. Left unset with token_label set, it is the
  // credential "hsm-pin" (LoadCredential[Encrypted]=hsm-pin:...), so the
  // unit's credential line is all an operator writes. LoadConfig resolves it
  // to a full path; the PIN file checks (owner, mode) apply unchanged.
  std::string hsm_module;  // default: SoftHSM2
  std::string token_label;
  std::string pin_file;
  // With an external token: the SQLite database (default
  // <state_dir>/grantvault.db). The embedded default always uses that path.
  std::string database;
  // Several hosts: the grants in a PostgreSQL database instead ([store]
  // postgres, a libpq connection string or URI without a password;
  // docs/operations.md, "Several hosts"). postgres_password_file: a path, or a
  // bare name read as a systemd credential ($CREDENTIALS_DIRECTORY/<name>);
  // empty: no password (peer or certificate authentication).
  std::string postgres;
  std::string postgres_password_file;
  absl::Duration postgres_connect_timeout = absl::Seconds(5);
  // Connections that hold refresh locks (one per refresh in progress on this
  // host; a refresh beyond them waits for one).
  size_t postgres_lock_connections = 8;

  std::string agent_socket;
  std::string admin_socket;
  mode_t socket_mode = 0660;

  ipc::ServerLimits limits;
  // Each socket has its own connection limits, so that agents filling
  // agent.sock never lock admins out of admin.sock. An agent connection with
  // nothing in flight is closed after agent_limits.idle_timeout.
  ipc::ListenerLimits agent_limits{
      .max_connections = 1024, .max_connections_per_uid = 128, .idle_timeout = absl::Minutes(5)};
  ipc::ListenerLimits admin_limits{
      .max_connections = 64, .max_connections_per_uid = 0, .idle_timeout = absl::ZeroDuration()};
  size_t io_threads = 2;
  size_t worker_threads = 2;
  // Threads that run Resolve and Subscribe (a resolve may wait on a refresh).
  size_t agent_threads = 8;
  // The secret heap of each process (common/secret_bytes.h), MiB, a power of
  // two: sized for 100,000 cached access tokens of the catalog's providers
  // (docs/operations.md, "Memory locking"). Locked only as far as
  // RLIMIT_MEMLOCK allows (the unit's LimitMEMLOCK).
  size_t secret_heap_mib = 128;

  // The caller policy (docs/policy.md), re-read on SIGHUP. Default
  // <state_dir>/policy.toml; while the file does not exist, every agent
  // request is refused.
  std::string policy_file;
  // What a reload that fails (the file does not parse, or others could write
  // it) leaves in force: the previous policy (kKeep), or none, so that every
  // agent request is refused until a reload succeeds (kDeny).
  enum class PolicyReloadFailure { kKeep, kDeny };
  PolicyReloadFailure policy_reload_failure = PolicyReloadFailure::kKeep;

  // The audit log (docs/audit.md). Turning it off is for measuring its cost
  // only: the daemon then warns at every start, and nothing is audited.
  bool audit_enabled = true;
  std::string audit_database;  // default <state_dir>/audit.db
  // Token releases are committed before the token leaves and fsynced at least
  // this often (0: every batch). Admin events are always fsynced first.
  absl::Duration audit_group_commit = absl::Milliseconds(200);
  // Repeated releases (a token sent again to a process that already has it)
  // are counted into a record written at most this long after (0..400 ms:
  // repeats stop being answered early once a record has waited 500 ms).
  absl::Duration audit_repeat_record = absl::Milliseconds(50);

  std::string log_level = "info";  // trace, debug, info, warn, error

  // OAuth engine: extra trust anchors (PEM) for authorization servers with a
  // private CA (the local demo server, tests), and the connector catalog
  // (default: the installed catalog next to the daemon,
  // <exe>/../share/grantvault/connectors.toml as GNUInstallDirs lays it out;
  // a daemon run from its build tree, where that file does not exist, keeps
  // it empty and gets the source tree's, oauth::Catalog::LoadDefault).
  std::string oauth_ca_file;
  bool oauth_use_system_trust = true;
  std::string connector_catalog;
  // Revocation at the provider: the most one request may take, and the first
  // wait before a retry (doubling up to 5 minutes).
  absl::Duration oauth_revocation_timeout = absl::Seconds(20);
  // The most one refresh-token request may take (tokens/refresher.h).
  absl::Duration oauth_refresh_timeout = absl::Seconds(20);
  absl::Duration oauth_revocation_backoff = absl::Seconds(1);

  // The API proxy (docs/proxy.md). On, the front's sandbox allows Internet
  // sockets (connect only is not expressible in seccomp: see the threat
  // model). Its own trust anchors: ca_file (default: oauth.ca_file's) added
  // to the system store unless use_system_trust_store is false.
  bool proxy_enabled = true;
  std::string proxy_ca_file;
  bool proxy_use_system_trust = true;
  size_t proxy_max_calls = 256;
  size_t proxy_max_calls_per_grant = 32;
  size_t proxy_max_response_bytes = size_t{8} << 20;
  absl::Duration proxy_timeout = absl::Seconds(60);

  // Peers allowed on admin.sock, besides the daemon's own uid.
  std::vector<uid_t> admin_uids;
  std::vector<gid_t> admin_gids;

  // The in-process sandbox (docs/operations.md, "Sandbox"): seccomp
  // allow-list and Landlock rules. Turning it off is for debugging only: the
  // daemon then warns at every start. Extra paths beyond those the daemon
  // derives from this configuration (an external HSM module's own files).
  bool sandbox_enabled = true;
  // Landlock is off unless asked for: a Landlock domain may not read
  // /proc/<pid>/exe of a process outside it (the kernel treats that as
  // ptrace), so in the one process that still attests agents it would make
  // every exe and exe_sha256 rule fail closed. For deployments without such
  // rules; the broker of the coming split gets it always.
  bool sandbox_landlock = false;
  std::vector<std::string> sandbox_read_paths;
  std::vector<std::string> sandbox_write_paths;

  bool uses_embedded_token() const { return pin_file.empty(); }
  bool uses_postgres() const { return !postgres.empty(); }
};

// Reads `config_file` (if not empty) over the defaults, then applies
// `state_dir` (if not empty), then fills derived defaults. InvalidArgument
// naming the file, line and key for anything that does not parse or is out of
// range; an unknown key is an error too (a typo must not be silently ignored).
// Reads $CREDENTIALS_DIRECTORY (set by systemd for a unit with credentials)
// to resolve hsm.pin_file.
absl::StatusOr<DaemonConfig> LoadConfig(const std::string& config_file,
                                        const std::string& state_dir);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_CONFIG_H_
