// grantvaultd: keeps OAuth grants sealed under HSM-held keys and serves
// agent.sock and admin.sock.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "common/files.h"
#include "common/log_escape.h"
#include "common/status.h"
#include "daemon/audit_setup.h"
#include "daemon/broker_main.h"
#include "daemon/config.h"
#include "daemon/logging.h"
#include "daemon/oauth_engine.h"
#include "daemon/secret_heap.h"
#include "daemon/upstream_revoker.h"
#include "daemon/vault.h"
#include "db/postgres.h"
#include "front/broker_calls.h"
#include "front/broker_process.h"
#include "front/broker_spawner.h"
#include "front/broker_tokens.h"
#include "front/proxy.h"
#include "front/resolver.h"
#include "front/service.h"
#include "hsm/keys.h"
#include "ipc/server.h"
#include "keys/custodian.h"
#include "oauth/async_http_client.h"
#include "oauth/http_client.h"
#include "policy/policy.h"
#include "sandbox/sandbox.h"
#include "spdlog/spdlog.h"
#include "store/grant_change_feed.h"
#include "tokens/refresher.h"

namespace grantvault::daemon {
namespace {

// One descriptor per client connection: allow as many as the hard limit.
void RaiseDescriptorLimit() {
  struct rlimit files;
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
}

// Everything the daemon opens after start-up, for Landlock: read-only the
// system's libraries and configuration (/usr, /etc: OpenSSL, p11-kit, the
// resolver), /proc (attestation; the executables of agents attested by
// `exe`/`exe_sha256` rules must lie under /usr or a [sandbox] read path), the
// configuration, policy, catalog, CA and
// HSM files; read-write the state directory, the socket and database
// directories. Plus the operator's [sandbox] paths.
sandbox::FilesystemRules FilesystemRulesFor(const DaemonConfig& config,
                                            const std::string& config_file) {
  sandbox::FilesystemRules rules;
  rules.read_only = {"/usr", "/etc", "/proc", "/sys/devices/system/cpu", "/dev/urandom"};
  for (const std::string* path :
       {&config_file, &config.policy_file, &config.oauth_ca_file, &config.connector_catalog,
        &config.hsm_module, &config.pin_file}) {
    if (!path->empty()) rules.read_only.push_back(*path);
  }
#ifdef GV_SHIPPED_CONNECTORS_TOML
  if (config.connector_catalog.empty()) rules.read_only.push_back(GV_SHIPPED_CONNECTORS_TOML);
#endif
  // An external SoftHSM2 token's configuration (its token directory goes in
  // [sandbox] write_paths).
  if (const char* softhsm_conf = std::getenv("SOFTHSM2_CONF"); softhsm_conf != nullptr) {
    rules.read_only.push_back(softhsm_conf);
  }
  rules.read_only.insert(rules.read_only.end(), config.sandbox_read_paths.begin(),
                         config.sandbox_read_paths.end());
  rules.read_write = {"/dev/null", config.state_dir};
  for (const std::string* path :
       {&config.agent_socket, &config.admin_socket, &config.audit_database, &config.database}) {
    if (path->empty()) continue;
    const size_t slash = path->find_last_of('/');
    rules.read_write.push_back(slash == std::string::npos ? "." : path->substr(0, slash));
  }
  rules.read_write.insert(rules.read_write.end(), config.sandbox_write_paths.begin(),
                          config.sandbox_write_paths.end());
  return rules;
}

// What the sandbox put in place, for the start line and the ready line.
struct SandboxState {
  bool seccomp = false;
  int landlock_abi = 0;  // -1: not asked for ([sandbox] landlock)
  bool capabilities_dropped = false;
  bool bounding_set_cleared = false;

  std::string Describe() const {
    return absl::StrCat("seccomp=", seccomp ? "on" : "off", " landlock=",
                        landlock_abi > 0   ? absl::StrCat("abi", landlock_abi)
                        : landlock_abi < 0 ? std::string("off")
                                           : std::string("not-available"),
                        " capabilities=",
                        capabilities_dropped
                            ? (bounding_set_cleared ? "dropped" : "dropped(bounding-set-kept)")
                            : "kept");
  }
};

#if defined(GRANTVAULT_TEST_HOOKS)
// Test builds only (GRANTVAULT_TEST_HOOKS=ON): on SIGUSR2 the daemon does
// what --test-hook names, so that a test can show the sandbox stops it:
// "keyctl" (forbidden by seccomp: the process dies of SIGSYS), "execve"
// (the same, in the front and the broker: neither may start a program) or
// "open:<path>" (logs whether the open succeeded, for Landlock).
void RunTestHook(const std::string& hook) {
  if (hook == "execve") {
    ::execl("/bin/true", "true", static_cast<char*>(nullptr));
    spdlog::error("test_hook.execve returned: {}", std::strerror(errno));
  } else if (hook == "keyctl") {
    const long r = ::syscall(SYS_keyctl, 0L, 0L, 0L, 0L, 0L);
    spdlog::error("test_hook.keyctl returned {}: {}", r, std::strerror(errno));
  } else if (absl::StartsWith(hook, "open:")) {
    const std::string path = hook.substr(5);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    const int err = errno;
    if (fd >= 0) ::close(fd);
    spdlog::info("test_hook.open path={} result={}", EscapeForLog(path),
                 fd >= 0 ? "opened" : std::strerror(err));
  }
}
#endif

// Holds an exclusive lock on <state_dir>/grantvaultd.lock for the life of the
// process, so that two daemons never share one state directory.
absl::StatusOr<int> LockStateDirectory(const std::string& state_dir) {
  GV_RETURN_IF_ERROR(EnsurePrivateDirectory(state_dir, 0700));
  const std::string path = state_dir + "/grantvaultd.lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open lock file ", path, ": ", std::strerror(errno)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {};
    ssize_t n = ::pread(fd, pid, sizeof(pid) - 1, 0);
    ::close(fd);
    std::string holder = n > 0 ? std::string(pid, static_cast<size_t>(n)) : "unknown";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return absl::FailedPreconditionError(absl::StrCat(
        "another grantvaultd (pid ", holder, ") is already using the state directory ", state_dir));
  }
  std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    spdlog::warn("cannot record pid in {}", path);
  }
  return fd;
}

struct Sockets {
  std::vector<ipc::Listener> listeners;
  std::vector<std::string> bound_paths;  // removed at exit (systemd's are not ours)
};

absl::StatusOr<Sockets> OpenSockets(const DaemonConfig& config, front::Service& service) {
  GV_ASSIGN_OR_RETURN(auto inherited, ipc::SystemdSockets());
  Sockets s;
  for (const auto& [name, path, handler, limits] :
       {std::tuple{std::string("agent"), config.agent_socket, service.agent_handler(),
                   config.agent_limits},
        std::tuple{std::string("admin"), config.admin_socket, service.admin_handler(),
                   config.admin_limits}}) {
    auto it = inherited.find(name);
    int fd = -1;
    if (it != inherited.end()) {
      fd = it->second;
      spdlog::info("socket.inherited name={} fd={}", name, fd);
    } else {
      absl::StatusOr<int> bound = ipc::BindUnixSocket(path, config.socket_mode);
      if (!bound.ok()) {
        for (ipc::Listener& l : s.listeners) ::close(l.fd);
        return absl::Status(bound.status().code(),
                            absl::StrCat(name, " socket: ", bound.status().message()));
      }
      fd = *bound;
      s.bound_paths.push_back(path);
    }
    s.listeners.push_back(ipc::Listener{name, fd, handler, limits});
  }
  return s;
}

front::AdminPolicy AdminPolicyFrom(const DaemonConfig& config) {
  return front::AdminPolicy{config.admin_uids, config.admin_gids};
}

// Loads the caller policy if its file exists; a file that exists but does not
// load stops the daemon (a typo must not silently leave agents refused).
absl::Status LoadPolicy(const std::string& path, front::Resolver& resolver) {
  if (::access(path.c_str(), F_OK) != 0) {
    spdlog::warn(
        "policy.absent file={}: every agent request is refused until it exists and "
        "the daemon is reloaded (SIGHUP)",
        path);
    return absl::OkStatus();
  }
  absl::StatusOr<policy::Policy> loaded = policy::Policy::Load(path);
  if (!loaded.ok()) return loaded.status();
  spdlog::info("policy.loaded file={} callers={} workspaces={}", path, loaded->callers().size(),
               loaded->workspaces().size());
  resolver.SetPolicy(std::make_shared<const policy::Policy>(std::move(*loaded)));
  return absl::OkStatus();
}

// An event of the daemon itself, on the system chain.
audit::Event SystemEvent(std::string type, std::string reason) {
  audit::Event e;
  e.type = std::move(type);
  e.actor.admin_user = "grantvaultd";
  e.actor.uid = ::getuid();
  e.actor.pid = ::getpid();
  e.outcome = "ok";
  e.reason = std::move(reason);
  return e;
}

// The systemd watchdog (WatchdogSec= in the unit, WATCHDOG_USEC for us):
// WATCHDOG=1 every half interval, sent only when every I/O thread of the
// server has just run a posted check, so that a hung event loop lets the
// watchdog fire instead of being papered over by an independent pinger.
class Watchdog {
 public:
  explicit Watchdog(ipc::Server* server) : server_(server) {
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
      interval_ = absl::Microseconds(static_cast<int64_t>(usec)) / 2;
      spdlog::info("watchdog.enabled ping_every={}", absl::FormatDuration(interval_));
    }
  }

  // Waits for one of `signals`, pinging the watchdog in the meantime when it
  // is enabled. Returns the signal, or 0 when the wait ended without one.
  int WaitForSignal(const sigset_t& signals) {
    if (interval_ == absl::ZeroDuration()) {
      int sig = 0;
      return sigwait(&signals, &sig) == 0 ? sig : 0;
    }
    const absl::Time now = absl::Now();
    if (now >= next_ping_) {
      Ping();
      next_ping_ = now + interval_;
    }
    const timespec wait =
        absl::ToTimespec(std::max(next_ping_ - absl::Now(), absl::ZeroDuration()));
    const int sig = sigtimedwait(&signals, nullptr, &wait);
    return sig > 0 ? sig : 0;
  }

 private:
  void Ping() {
    // Half of the half interval: a failed check still leaves time for the
    // next one before systemd gives up.
    absl::Status healthy = server_->CheckHealth(interval_ / 2);
    if (!healthy.ok()) {
      spdlog::error("watchdog.unhealthy not pinging: {}",
                    EscapeTextForLog(std::string(healthy.message())));
      unhealthy_ = true;
      return;
    }
    if (unhealthy_) {
      spdlog::info("watchdog.healthy again");
      unhealthy_ = false;
    }
    sd_notify(0, "WATCHDOG=1");
  }

  ipc::Server* const server_;
  absl::Duration interval_ = absl::ZeroDuration();  // zero: watchdog off
  absl::Time next_ping_ = absl::InfinitePast();
  bool unhealthy_ = false;
};

// This binary, for starting the broker: resolved once, at start.
absl::StatusOr<std::string> SelfExecutable() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) {
    return absl::InternalError(absl::StrCat("cannot read /proc/self/exe: ", std::strerror(errno)));
  }
  return std::string(path, static_cast<size_t>(n));
}

int Fail(const absl::Status& status) {
  spdlog::error("{}", EscapeTextForLog(std::string(status.message()), 4096));
  sd_notifyf(0, "STATUS=failed: %s", std::string(status.message()).c_str());
  return 1;
}

struct RunOptions {
  std::string test_hook;    // GRANTVAULT_TEST_HOOKS builds only
  bool allow_root = false;  // passed on to the broker
};

int Run(const std::string& config_file, const std::string& state_dir, bool init_only,
        const EmbeddedStateOptions& embedded, const RunOptions& options) {
  absl::StatusOr<DaemonConfig> config = LoadConfig(config_file, state_dir);
  if (!config.ok()) {
    std::fprintf(stderr, "grantvaultd: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  InitLogging(config->log_level);
  if (absl::Status heap = SetUpSecretHeap(*config, "front"); !heap.ok()) return Fail(heap);
  if (config->uses_postgres()) {
    if (const std::string weak = db::ConninfoWeakness(config->postgres); !weak.empty()) {
      spdlog::warn("store.postgres_unverified {}", EscapeTextForLog(weak));
    }
  }
  ipc::SetLogSink([](ipc::LogKind kind, std::string_view line) {
    // (The server's lines name peers by pid and uid only; escaped all the
    // same, so that no line from below can split into two.)
    if (kind == ipc::LogKind::kRoutine) {
      spdlog::debug("{}", EscapeTextForLog(line));
    } else {
      spdlog::info("{}", EscapeTextForLog(line));
    }
  });
  SandboxState sandboxed;
  {
    absl::StatusOr<sandbox::HardeningReport> hardened = sandbox::HardenProcess();
    if (!hardened.ok()) return Fail(hardened.status());
    sandboxed.capabilities_dropped = hardened->capabilities_dropped;
    sandboxed.bounding_set_cleared = hardened->bounding_set_cleared;
  }
  RaiseDescriptorLimit();
  // The broker's spawner, forked now: one thread, nothing read from anyone
  // yet. The broker is this binary again, on the same configuration; it alone
  // opens the token (creating the embedded state on first start) and the
  // secrets.
  std::unique_ptr<front::BrokerSpawner> spawner;
  if (!init_only) {
    absl::StatusOr<std::string> self = SelfExecutable();
    if (!self.ok()) return Fail(self.status());
    std::vector<std::string> argv = {*self};
    if (!config_file.empty()) argv.push_back("--config=" + config_file);
    argv.push_back("--state-dir=" + config->state_dir);
    if (embedded.keep_so_pin) argv.push_back("--keep-so-pin");
    if (options.allow_root) argv.push_back("--allow-root");
#if defined(GRANTVAULT_TEST_HOOKS)
    if (!options.test_hook.empty()) argv.push_back("--test-hook=" + options.test_hook);
#endif
    argv.push_back(absl::StrCat("--broker-fd=", front::BrokerSpawner::kBrokerFd));
    absl::StatusOr<std::unique_ptr<front::BrokerSpawner>> forked =
        front::BrokerSpawner::Fork(std::move(argv));
    if (!forked.ok()) return Fail(forked.status());
    spawner = *std::move(forked);
  }

  // Debian's abseil is built with lock-order (deadlock) detection on, which
  // costs a graph update per lock: the tests keep it, the daemon does not.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Signals are taken by sigwait() below, in this thread only.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals, sig);
#if defined(GRANTVAULT_TEST_HOOKS)
  if (!options.test_hook.empty()) sigaddset(&signals, SIGUSR2);
#else
  (void)options;
#endif
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // A file-size limit makes writes fail (and the operation with them, closed)
  // instead of killing the daemon.
  ::signal(SIGXFSZ, SIG_IGN);

  absl::StatusOr<int> lock = LockStateDirectory(config->state_dir);
  if (!lock.ok()) return Fail(lock.status());
  // Landlock now, while the process has one thread (the state directory
  // exists from here on); seccomp once start-up is finished, below.
  if (config->sandbox_enabled && config->sandbox_landlock) {
    absl::StatusOr<sandbox::FilesystemReport> restricted =
        sandbox::RestrictFilesystem(FilesystemRulesFor(*config, config_file));
    if (!restricted.ok()) return Fail(restricted.status());
    sandboxed.landlock_abi = restricted->abi;
    for (const std::string& path : restricted->skipped) {
      spdlog::warn("sandbox.path_missing path={}: neither it nor its directory exists; no access",
                   EscapeForLog(path));
    }
  } else if (config->sandbox_enabled) {
    sandboxed.landlock_abi = -1;
    spdlog::info(
        "sandbox.landlock off: a Landlock domain cannot read agents' /proc/<pid>/exe, which exe "
        "and exe_sha256 rules need ([sandbox] landlock = true where no rule uses them)");
  } else {
    spdlog::warn(
        "sandbox.disabled: no seccomp filter and no Landlock rules ([sandbox] enabled = false "
        "is for debugging only)");
  }

  if (init_only) {
    std::vector<std::string> created, removed;
    absl::StatusOr<Vault> vault = OpenConfiguredVault(*config, embedded, &created, &removed);
    if (!vault.ok()) return Fail(vault.status());
    for (const std::string& c : created) spdlog::info("state.created {}", c);
    for (const std::string& r : removed) spdlog::info("state.removed {}", r);
    if (created.empty()) {
      std::printf("State in %s is already initialised; nothing created.\n",
                  config->state_dir.c_str());
    } else {
      std::printf("Initialised the state in %s:\n", config->state_dir.c_str());
      for (const std::string& c : created) std::printf("  created %s\n", c.c_str());
    }
    for (const std::string& r : removed) std::printf("  removed %s\n", r.c_str());
    absl::StatusOr<std::vector<keys::KeyStatus>> keys = vault->keys->Status();
    if (!keys.ok()) return Fail(keys.status());
    std::printf("Key-encryption keys in token '%s':\n", vault->token->label().c_str());
    for (const auto& k : *keys) {
      std::printf("  %-20s %-8s %lld sealed record(s)%s\n", k.version.label.c_str(),
                  std::string(store::KeyStateName(k.version.state)).c_str(),
                  static_cast<long long>(k.sealed_records), k.in_token ? "" : "  (not in token)");
    }
    return 0;
  }

  front::BrokerProcess::Options broker_options;
  broker_options.spawner = spawner.get();
  // No broker can be started any more (the spawner is gone): stop, with a
  // failure status, so that systemd's Restart=on-failure starts us again.
  std::atomic<bool> broker_lost_for_good{false};
  broker_options.on_fatal = [&broker_lost_for_good](const absl::Status&) {
    broker_lost_for_good = true;
    ::kill(::getpid(), SIGTERM);
  };
  // Events from the broker (a grant marked reauth_required, an upstream
  // revocation attempt) reach the service once it exists.
  absl::Mutex callbacks_mu;
  front::Service* service_for_callbacks = nullptr;
  front::BrokerTokens* tokens_for_callbacks = nullptr;
  store::GrantStore* store_for_callbacks = nullptr;
  broker::v1::HelloReply hello;
  absl::StatusOr<std::unique_ptr<front::BrokerProcess>> broker = front::BrokerProcess::Start(
      broker_options,
      [&](const broker::v1::Event& event) {
        absl::MutexLock hold(&callbacks_mu);
        if (service_for_callbacks == nullptr) return;
        if (event.has_reauth_required()) {
          const auto& e = event.reauth_required();
          tokens_for_callbacks->Forget(e.grant_id());
          service_for_callbacks->OnReauthRequired(e.grant_id(), e.reason());
        } else if (event.has_upstream_attempt()) {
          const std::string& id = event.upstream_attempt().grant_id();
          absl::StatusOr<store::Grant> grant = store_for_callbacks->GetGrant(id);
          absl::StatusOr<store::UpstreamRevocation> state =
              store_for_callbacks->GetUpstreamRevocation(id);
          if (grant.ok() && state.ok()) service_for_callbacks->OnUpstreamAttempt(*grant, *state);
        }
      },
      &hello);
  if (!broker.ok()) return Fail(broker.status());
  for (const std::string& c : hello.created()) spdlog::info("state.created {}", c);
  for (const std::string& r : hello.removed()) spdlog::info("state.removed {}", r);
  // The front's own handle on the database; the broker opened it first (and migrated it).
  absl::StatusOr<std::unique_ptr<store::GrantStore>> store = OpenStore(StoreLocationFor(*config));
  if (!store.ok()) return Fail(store.status());
  absl::StatusOr<oauth::Catalog> catalog =
      config->connector_catalog.empty() ? oauth::Catalog::LoadDefault()
                                        : oauth::Catalog::LoadFile(config->connector_catalog);
  if (!catalog.ok()) return Fail(catalog.status());
  const front::BrokerLinkSource links = (*broker)->links();
  std::unique_ptr<oauth::AuthorizationFlow> authorization =
      front::MakeBrokerAuthorization(links, store->get(), config->oauth_refresh_timeout * 3);
  front::Service::OAuth oauth_deps{authorization.get(), &*catalog, ""};
  // Declared before the service, so that they outlive its worker threads.
  std::unique_ptr<audit::AuditLog> audit_log;
  if (config->audit_enabled) {
    absl::StatusOr<std::unique_ptr<audit::Signer>> signer = front::MakeBrokerSigner(links);
    if (!signer.ok()) return Fail(signer.status());
    absl::StatusOr<SecretBytes> fingerprint_key = front::FetchFingerprintKey(links);
    if (!fingerprint_key.ok()) return Fail(fingerprint_key.status());
    absl::StatusOr<std::unique_ptr<audit::AuditLog>> opened =
        OpenAuditLog(*config, *std::move(signer), front::MakeBrokerAnchors(links),
                     *std::move(fingerprint_key), &RealClock());
    if (!opened.ok()) return Fail(opened.status());
    audit_log = std::move(*opened);
  } else {
    spdlog::warn(
        "audit.disabled: nothing is audited ([audit] enabled = false is for measuring "
        "the audit log's cost only)");
  }
  // A refresh and the broker hop: the broker's own request timeout, its retries, and margin.
  front::BrokerTokens tokens(links, &RealClock(), config->oauth_refresh_timeout * 3);
  front::Resolver resolver(store->get(), &tokens);
  absl::Status policy_loaded = LoadPolicy(config->policy_file, resolver);
  if (!policy_loaded.ok()) return Fail(policy_loaded);
  std::unique_ptr<keys::Custodian> custodian = front::MakeBrokerCustodian(links);
  front::Service service(store->get(), custodian.get(), oauth_deps, AdminPolicyFrom(*config),
                         config->worker_threads, &RealClock());
  service.EnableAgents(
      front::Service::Agents{&resolver, config->policy_file, config->agent_threads});
  service.EnableTrail(
      front::Service::Trail{audit_log.get(), &tokens, [links] {
                              broker::v1::Request wake;
                              wake.mutable_wake_revoker();
                              front::CallBroker(links, wake, absl::Seconds(5)).IgnoreError();
                            }});
  // The API proxy: its own HTTPS client (the front's connections to APIs,
  // made on the I/O threads). Declared after the service, so that it is
  // destroyed first; stopped before the I/O threads (below).
  std::unique_ptr<oauth::AsyncHttpClient> api_client;
  std::unique_ptr<front::Proxy> proxy;
  if (config->proxy_enabled) {
    oauth::HttpClientOptions http;
    http.ca_file = config->proxy_ca_file.empty() ? config->oauth_ca_file : config->proxy_ca_file;
    http.use_system_trust_store = config->proxy_use_system_trust;
    http.request_timeout = config->proxy_timeout;
    http.max_response_bytes = config->proxy_max_response_bytes;
    http.max_idle_connections_per_host = std::min<size_t>(64, config->proxy_max_calls);
    absl::StatusOr<std::unique_ptr<oauth::AsyncHttpClient>> client =
        oauth::NewAsyncHttpClient(http);
    if (!client.ok()) return Fail(client.status());
    api_client = *std::move(client);
    front::Proxy::Deps deps;
    deps.resolver = &resolver;
    deps.tokens = &tokens;
    deps.store = store->get();
    deps.catalog = &*catalog;
    deps.http = api_client.get();
    deps.audit = audit_log.get();
    deps.clock = &RealClock();
    deps.record_refusal = [&service](const ipc::PeerCredentials& peer,
                                     const policy::CallerIdentity& caller, audit::Event event,
                                     const absl::Status& refusal) {
      service.RecordRefusal(peer, &caller, std::move(event), refusal);
    };
    front::Proxy::Limits limits;
    limits.max_calls = config->proxy_max_calls;
    limits.max_calls_per_grant = config->proxy_max_calls_per_grant;
    limits.max_response_bytes = config->proxy_max_response_bytes;
    limits.timeout = config->proxy_timeout;
    proxy = std::make_unique<front::Proxy>(std::move(deps), limits);
    service.EnableProxy(proxy.get());
  }
  {
    absl::MutexLock hold(&callbacks_mu);
    service_for_callbacks = &service;
    tokens_for_callbacks = &tokens;
    store_for_callbacks = store->get();
  }
  // On every way out, before the service is destroyed: the broker's events stop reaching it.
  absl::Cleanup stop_callers_of_service = [&] {
    service.Stop();
    absl::MutexLock hold(&callbacks_mu);
    service_for_callbacks = nullptr;
    tokens_for_callbacks = nullptr;
    store_for_callbacks = nullptr;
  };
  // Several hosts: what the others change reaches this one's caches, waiting
  // resolves, proxied calls and subscribers. Declared after the cleanup
  // above, so that its thread stops first.
  std::unique_ptr<store::GrantChangeFeed> changes;
  if (std::optional<db::PostgresOptions> postgres = StoreLocationFor(*config).postgres) {
    store::GrantChangeFeed::Options feed;
    feed.connection = *std::move(postgres);
    absl::StatusOr<std::unique_ptr<store::GrantChangeFeed>> started = store::GrantChangeFeed::Start(
        std::move(feed),
        [&service](const std::string& grant_id) { service.OnGrantChangedElsewhere(grant_id); },
        [&broker_lost_for_good] {
          // Cut off from the others for longer than the change log keeps
          // changes: this host's caches may hold what another revoked. A
          // restart (systemd's Restart=on-failure) starts them empty.
          spdlog::error(
              "store.changes_missed: away from the database longer than its change log keeps "
              "changes; stopping so that a restart clears the caches");
          broker_lost_for_good = true;
          ::kill(::getpid(), SIGTERM);
        });
    if (!started.ok()) return Fail(started.status());
    changes = *std::move(started);
  }
  for (const std::string& c : hello.created()) {
    if (!absl::StrContains(c, "KEK") && !absl::StrContains(c, "audit signing key")) continue;
    if (absl::Status audited =
            service.Audit(SystemEvent("key.created", c), audit::Durability::kDurable);
        !audited.ok()) {
      return Fail(audited);
    }
  }
  if (resolver.policy() != nullptr) {
    audit::Event e = SystemEvent("policy.reloaded", "loaded at start");
    e.details["file"] = config->policy_file;
    if (absl::Status audited = service.Audit(std::move(e), audit::Durability::kDurable);
        !audited.ok()) {
      return Fail(audited);
    }
  }
  absl::StatusOr<Sockets> sockets = OpenSockets(*config, service);
  if (!sockets.ok()) return Fail(sockets.status());
  absl::StatusOr<std::unique_ptr<ipc::Server>> server =
      ipc::Server::Create(sockets->listeners, config->limits, config->io_threads);
  if (!server.ok()) return Fail(server.status());
  service.set_server(server->get());
  // On every way out, while the I/O threads still run: the proxied calls
  // and the proxy's connections to APIs live on them.
  absl::Cleanup stop_proxy = [&] {
    if (proxy != nullptr) proxy->Stop();
  };
  if (absl::Status started = (*server)->Start(); !started.ok()) return Fail(started);
  if (config->sandbox_enabled) {
    sandbox::SyscallProfile profile;
    // The front listens on the Unix sockets; it connects to the Internet
    // only for the API proxy (the broker talks to authorization servers);
    // it executes nothing (the spawner starts brokers).
    profile.allow_listen = true;
    // The proxy's APIs, and a PostgreSQL server reached over TCP.
    profile.allow_inet_sockets = config->proxy_enabled || config->uses_postgres();
    profile.allow_exec = false;
    profile.allow_sanitizer_runtime = sandbox::BuiltWithSanitizers();
    if (absl::Status filtered = sandbox::InstallSyscallFilter(profile); !filtered.ok()) {
      return Fail(filtered);
    }
    sandboxed.seccomp = true;
  }
  spdlog::info("sandbox {}", sandboxed.Describe());

  spdlog::info(
      "grantvaultd.ready version={} state_dir={} agent={} admin={} token={} kek={} broker_pid={} "
      "sandbox=[{}]",
      front::kServerVersion, config->state_dir, config->agent_socket, config->admin_socket,
      hello.token_label(), hello.active_kek(), (*broker)->pid(), sandboxed.Describe());
  // Before READY=1, so that whoever sees the daemon ready also sees (in the
  // log) whether the watchdog is on.
  Watchdog watchdog(server->get());
  sd_notifyf(0, "READY=1\nSTATUS=serving\nMAINPID=%d", static_cast<int>(::getpid()));
  for (;;) {
    const int sig = watchdog.WaitForSignal(signals);
    if (sig <= 0) continue;
#if defined(GRANTVAULT_TEST_HOOKS)
    if (sig == SIGUSR2) {
      RunTestHook(options.test_hook);
      continue;
    }
#endif
    if (sig == SIGHUP) {
      sd_notify(0, "RELOADING=1");
      absl::StatusOr<DaemonConfig> fresh = LoadConfig(config_file, state_dir);
      if (!fresh.ok()) {
        spdlog::error("config.reload_failed keeping the previous configuration: {}",
                      EscapeTextForLog(std::string(fresh.status().message())));
      } else {
        SetLogLevel(fresh->log_level);
        if (fresh->policy_file != config->policy_file) {
          spdlog::warn("policy.file changes apply at the next start; re-reading {}",
                       config->policy_file);
        }
        const bool deny = fresh->policy_reload_failure == DaemonConfig::PolicyReloadFailure::kDeny;
        absl::Status reloaded = service.ReloadPolicy(deny);
        if (reloaded.ok()) {
          spdlog::info("policy.reloaded file={}", EscapeForLog(config->policy_file));
          sd_notify(0, "STATUS=serving");
        } else {
          // Loud: an operator must not miss a policy change that did not apply.
          spdlog::error("policy.reload_failed file={} on_failure={} error={}",
                        EscapeForLog(config->policy_file), deny ? "deny" : "keep",
                        EscapeTextForLog(std::string(reloaded.message())));
          sd_notifyf(0, "STATUS=policy reload failed (%s): %s",
                     deny ? "every agent request refused" : "the previous policy stays in force",
                     EscapeTextForLog(std::string(reloaded.message())).c_str());
        }
        audit::Event e = SystemEvent("policy.reloaded", reloaded.ok() ? "SIGHUP" : "");
        e.outcome = reloaded.ok() ? "ok" : "failed";
        if (!reloaded.ok()) e.reason = std::string(reloaded.message());
        e.details["file"] = config->policy_file;
        if (absl::Status audited = service.Audit(std::move(e), audit::Durability::kDurable);
            !audited.ok()) {
          spdlog::error("audit.write_failed event=policy.reloaded: {}",
                        EscapeTextForLog(std::string(audited.message())));
        }
        service.ReloadAdminPolicy(AdminPolicyFrom(*fresh));
        spdlog::info(
            "config.reloaded log_level={} admin_uids={} (sockets, token and limits "
            "apply at the next start)",
            fresh->log_level, fresh->admin_uids.size());
      }
      sd_notify(0, "READY=1");
      continue;
    }
    spdlog::info("grantvaultd.stopping signal={}", strsignal(sig));
    break;
  }
  sd_notify(0, "STOPPING=1");
  std::move(stop_proxy).Invoke();
  (*server)->Shutdown(absl::Seconds(5));
  service.Stop();
  for (const std::string& path : sockets->bound_paths) ::unlink(path.c_str());
  spdlog::info("grantvaultd.stopped");
  return broker_lost_for_good ? 1 : 0;
}

}  // namespace
}  // namespace grantvault::daemon

int main(int argc, char** argv) {
  CLI::App app{"grantvaultd: keeps OAuth grants sealed under HSM-held keys"};
  std::string state_dir, config_file;
  bool init_only = false;
  bool allow_root = false;
  grantvault::daemon::RunOptions options;
  grantvault::daemon::EmbeddedStateOptions embedded;
  app.add_option("--state-dir", state_dir,
                 "state directory (embedded default: SoftHSM2 token + SQLite database, created on "
                 "first start)");
  app.add_option("--config", config_file, "TOML configuration file (docs/operations.md)");
  app.add_flag("--init-only", init_only,
               "create whatever is missing of the state, report it, and exit");
  app.add_flag("--keep-so-pin", embedded.keep_so_pin,
               "keep the embedded token's security-officer PIN in <state>/hsm/so.pin (by default "
               "it is removed once the token is initialised; move a kept one to safe storage)");
  app.add_flag("--allow-root", allow_root,
               "run even as root (refused by default: run as the dedicated user instead, e.g. the "
               "unit's User=grantvault)");
#if defined(GRANTVAULT_TEST_HOOKS)
  app.add_option("--test-hook", options.test_hook,
                 "test builds only: what SIGUSR2 makes the front or the broker do (keyctl, execve, "
                 "open:<path>)");
#endif
  int broker_fd = -1;
  app.add_option("--broker-fd", broker_fd)->group("");  // internal: how the front starts its broker
  CLI11_PARSE(app, argc, argv);
  if (absl::Status refused = grantvault::sandbox::RefuseRoot(::getuid(), ::geteuid(), allow_root);
      !refused.ok()) {
    std::fprintf(stderr, "grantvaultd: %s\n", std::string(refused.message()).c_str());
    return 2;
  }
  if (broker_fd >= 0) {
    grantvault::daemon::BrokerStart start{broker_fd,
                                          config_file,
                                          state_dir,
                                          embedded,
                                          [&](const grantvault::daemon::DaemonConfig& c) {
                                            return grantvault::daemon::FilesystemRulesFor(
                                                c, config_file);
                                          },
                                          nullptr};
#if defined(GRANTVAULT_TEST_HOOKS)
    if (!options.test_hook.empty()) {
      start.test_hook = [hook = options.test_hook] { grantvault::daemon::RunTestHook(hook); };
    }
#endif
    return grantvault::daemon::RunBroker(start);
  }
  options.allow_root = allow_root;
  return grantvault::daemon::Run(config_file, state_dir, init_only, embedded, options);
}
