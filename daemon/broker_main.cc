#include "daemon/broker_main.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "audit/anchor.h"
#include "audit/signer.h"
#include "broker/server.h"
#include "common/log_escape.h"
#include "daemon/audit_setup.h"
#include "daemon/config.h"
#include "daemon/logging.h"
#include "daemon/oauth_engine.h"
#include "daemon/secret_heap.h"
#include "daemon/upstream_revoker.h"
#include "keys/custodian.h"
#include "sandbox/sandbox.h"
#include "spdlog/spdlog.h"
#include "tokens/refresher.h"

namespace grantvault::daemon {
namespace {

int Fail(const absl::Status& status) {
  spdlog::error("broker: {}", EscapeTextForLog(std::string(status.message()), 4096));
  return 1;
}

}  // namespace

int RunBroker(const BrokerStart& start) {
  const EmbeddedStateOptions& embedded = start.embedded;
  // Not dumpable and no core before anything is opened: execve made the
  // process dumpable again, and the PIN is read below (HardenProcess, later,
  // does the rest).
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  const struct rlimit no_core = {0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  // Dies with the front, and is of no use to anyone else.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGXFSZ, SIG_IGN);
  // The front owns SIGTERM/SIGINT/SIGHUP: the broker ends when the link does.
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);  // systemd's stop signal to the unit: the front's to act on
  if (start.test_hook) {
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, nullptr);  // before any thread: taken by sigwait below
  }
  absl::StatusOr<DaemonConfig> config = LoadConfig(start.config_file, start.state_dir);
  if (!config.ok()) return Fail(config.status());
  InitLogging(config->log_level);
  if (absl::Status heap = SetUpSecretHeap(*config, "broker"); !heap.ok()) return Fail(heap);
  // Landlock while the process has one thread (a thread made later inherits
  // it). The broker never reads other processes' /proc entries, so unlike the
  // front it needs no opt-in: on by default wherever its paths are all known,
  // that is with the embedded token; an external token's files may lie
  // anywhere, so there it is on with [sandbox] landlock = true.
  int landlock_abi = 0;
  if (config->sandbox_enabled && (config->sandbox_landlock || config->uses_embedded_token()) &&
      start.filesystem_rules) {
    absl::StatusOr<sandbox::FilesystemReport> restricted =
        sandbox::RestrictFilesystem(start.filesystem_rules(*config));
    if (!restricted.ok()) return Fail(restricted.status());
    landlock_abi = restricted->abi;
  }
  broker::Server server{UniqueFd(start.fd)};

  std::vector<std::string> created, removed;
  absl::StatusOr<Vault> vault = OpenConfiguredVault(*config, embedded, &created, &removed);
  if (!vault.ok()) return Fail(vault.status());
  absl::StatusOr<std::unique_ptr<OAuthEngine>> oauth =
      MakeOAuthEngine(*config, *vault, &RealClock());
  if (!oauth.ok()) return Fail(oauth.status());

  tokens::RefresherDeps refresher_deps;
  refresher_deps.store = vault->store.get();
  refresher_deps.sealer = vault->sealer.get();
  refresher_deps.http = (*oauth)->http.get();
  refresher_deps.connectors = (*oauth)->connectors.get();
  refresher_deps.clock = &RealClock();
  refresher_deps.on_reauth_required = [&server](std::string_view grant_id,
                                                std::string_view reason) {
    broker::v1::Event e;
    e.mutable_reauth_required()->set_grant_id(std::string(grant_id));
    e.mutable_reauth_required()->set_reason(std::string(reason));
    server.SendEvent(e);
  };
  refresher_deps.on_sync_failed = [](std::string_view grant_id, const absl::Status& error) {
    // The refresh was answered and committed; a power cut could now take it
    // (a rotated refresh token with it: the grant would need authorizing again).
    spdlog::error("refresh.unsynced grant={}: the disk did not confirm the refresh's writes: {}",
                  EscapeForLog(std::string(grant_id)),
                  EscapeTextForLog(std::string(error.message())));
  };
  tokens::RefresherOptions refresher_options;
  refresher_options.request_timeout = config->oauth_refresh_timeout;
  absl::StatusOr<std::unique_ptr<tokens::Refresher>> refresher =
      tokens::Refresher::Create(refresher_deps, refresher_options);
  if (!refresher.ok()) return Fail(refresher.status());

  UpstreamRevoker::Deps revoker_deps;
  revoker_deps.store = vault->store.get();
  revoker_deps.sealer = vault->sealer.get();
  revoker_deps.http = (*oauth)->http.get();
  revoker_deps.connectors = (*oauth)->connectors.get();
  revoker_deps.clock = &RealClock();
  revoker_deps.on_attempt = [&server](const store::Grant& grant, const store::UpstreamRevocation&) {
    broker::v1::Event e;
    e.mutable_upstream_attempt()->set_grant_id(grant.grant_id);
    server.SendEvent(e);
  };
  revoker_deps.refreshing = [&](const std::string& grant_id) {
    return (*refresher)->Refreshing(grant_id);
  };
  UpstreamRevoker::Options revoker_options;
  revoker_options.request_timeout = config->oauth_revocation_timeout;
  revoker_options.initial_backoff = config->oauth_revocation_backoff;
  UpstreamRevoker revoker(revoker_deps, revoker_options);

  std::unique_ptr<keys::Custodian> custodian =
      keys::MakeLocalCustodian(vault->token.get(), vault->keys.get(), vault->sealer.get());
  absl::StatusOr<std::unique_ptr<audit::Signer>> signer =
      audit::MakeHsmSigner(*vault->token, keys::kAuditKeyLabel);
  if (!signer.ok()) return Fail(signer.status());
  absl::StatusOr<std::unique_ptr<audit::AnchorStore>> anchors =
      audit::MakeHsmAnchorStore(*vault->token);
  if (!anchors.ok()) return Fail(anchors.status());

  broker::ServerDeps deps;
  deps.refresher = refresher->get();
  deps.authorizer = (*oauth)->authorizer.get();
  deps.custodian = custodian.get();
  deps.signer = signer->get();
  deps.anchors = anchors->get();
  deps.fingerprint_key = [&] { return LoadOrCreateFingerprintKey(*vault, &RealClock()); };
  deps.wake_revoker = [&] { revoker.Wake(); };
  deps.hello.set_version(broker::v1::VERSION_1);
  for (const std::string& c : created) deps.hello.add_created(c);
  for (const std::string& r : removed) deps.hello.add_removed(r);
  deps.hello.set_token_label(vault->token->label());
  deps.hello.set_active_kek(vault->sealer->ActiveKek().label);
  if (config->sandbox_enabled) {
    // Not dumpable again (execve reset it), no core, no capabilities (the
    // front dropped them before starting us). The broker talks HTTPS to the
    // providers and over its one socketpair: no listening socket, no exec.
    absl::StatusOr<sandbox::HardeningReport> hardened = sandbox::HardenProcess();
    if (!hardened.ok()) return Fail(hardened.status());
    sandbox::SyscallProfile profile;
    profile.allow_inet_sockets = true;
    profile.allow_listen = false;
    profile.allow_exec = false;
    profile.allow_sanitizer_runtime = sandbox::BuiltWithSanitizers();
    if (absl::Status filtered = sandbox::InstallSyscallFilter(profile); !filtered.ok()) {
      return Fail(filtered);
    }
  }
  if (start.test_hook) {
    std::thread([hook = start.test_hook] {
      sigset_t usr2;
      sigemptyset(&usr2);
      sigaddset(&usr2, SIGUSR2);
      for (int sig = 0; sigwait(&usr2, &sig) == 0;) hook();
    }).detach();
  }
  revoker.Start();
  spdlog::info("broker.ready pid={} token={} sandbox=[seccomp={} landlock={}]", ::getpid(),
               vault->token->label(), config->sandbox_enabled ? "on" : "off",
               landlock_abi > 0 ? absl::StrCat("abi", landlock_abi) : std::string("off"));
  server.Serve(deps);  // until the front closes the link or exits
  revoker.Stop();
  refresher->reset();
  spdlog::info("broker.stopped");
  return 0;
}

}  // namespace grantvault::daemon
