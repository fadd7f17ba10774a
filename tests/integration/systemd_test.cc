// The shipped systemd units (systemd/): they verify, their sandbox scores low
// on `systemd-analyze security`, and the daemon really runs the way the units
// start it: socket-activated with both sockets (by systemd-socket-activate,
// with the .socket files' names, owners and modes), as an unprivileged uid,
// Type=notify with a watchdog.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "grantvault/v1/envelope.pb.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "keys/sealed_context.h"
#include "nlohmann/json.hpp"
#include "oauth/http_client.h"
#include "oauth/pkce.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/socket_activated_daemon.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using json = nlohmann::json;
using testing::CommandResult;
using testing::DaemonProcess;
using testing::FindTool;
using ::testing::HasSubstr;
using testing::ReadSocketUnit;
using testing::RunCommand;
using testing::Slurp;
using testing::SocketUnit;
using testing::TempDir;
using testing::UnitSettings;

// The unit scores 1.4 with every function it needs kept (docs/operations.md,
// "systemd"); a change that takes it past 1.5 fails here.
constexpr double kMaxExposure = 1.5;

constexpr char kWorkspace[] = "ws_acme";

// The ids the run test plays with (none needs an /etc/passwd entry).
constexpr uid_t kDaemonUid = 65534;  // User=grantvault
constexpr gid_t kDaemonGid = 65534;
constexpr gid_t kAgentsGid = 64001;    // grantvault-agents
constexpr gid_t kAdminsGid = 64002;    // grantvault-admins
constexpr uid_t kAgentUid = 64010;     // in grantvault-agents (supplementary)
constexpr uid_t kAdminUid = 64020;     // in grantvault-admins (supplementary)
constexpr uid_t kOutsiderUid = 64030;  // in no policy rule, nor in grantvault-admins

const char* const kUnits[] = {"grantvaultd.service", "grantvault-agent.socket",
                              "grantvault-admin.socket"};

// The units as the build tree configured them (for its install prefix).
std::string UnitFile(const std::string& name) { return absl::StrCat(GV_SYSTEMD_DIR, "/", name); }

// The units, copied to `dir` with ExecStart= naming the built daemon.
void CopyUnits(const TempDir& dir) {
  for (const char* unit : kUnits) {
    std::string text = Slurp(UnitFile(unit));
    ASSERT_FALSE(text.empty()) << unit;
    const std::string shipped = absl::StrCat("ExecStart=", GV_INSTALLED_GRANTVAULTD, " ");
    if (absl::StrContains(text, shipped)) {
      text =
          absl::StrReplaceAll(text, {{shipped, absl::StrCat("ExecStart=", GV_GRANTVAULTD, " ")}});
    }
    std::ofstream(dir.Join(unit)) << text;
  }
}

TEST(SystemdUnitsTest, VerifyIsClean) {
  const std::string analyze = FindTool("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed";
  TempDir dir;
  CopyUnits(dir);
  std::vector<std::string> argv = {analyze, "verify"};
  for (const char* unit : kUnits) argv.push_back(dir.Join(unit));
  CommandResult verify = RunCommand(argv);
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  // Lines about other units on the machine are not ours to judge.
  for (absl::string_view line : absl::StrSplit(verify.out + verify.err, '\n')) {
    EXPECT_FALSE(absl::StrContains(line, "grantvault")) << line;
  }
}

TEST(SystemdUnitsTest, SecurityExposureIsLow) {
  const std::string analyze = FindTool("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed";
  TempDir dir;
  CopyUnits(dir);
  CommandResult security = RunCommand(
      {analyze, "security", "--offline=true", "--no-pager", dir.Join("grantvaultd.service")});
  ASSERT_EQ(security.exit_code, 0) << security.out << security.err;
  const std::string marker = "Overall exposure level for grantvaultd.service: ";
  const size_t at = security.out.find(marker);
  ASSERT_NE(at, std::string::npos) << security.out;
  const std::string rest = security.out.substr(at + marker.size());
  double exposure = 0;
  ASSERT_TRUE(absl::SimpleAtod(rest.substr(0, rest.find(' ')), &exposure)) << rest;
  EXPECT_LE(exposure, kMaxExposure) << security.out;
}

// What the sandbox must leave the daemon for its functions, whatever it
// scores: each of these settings once broke it.
TEST(SystemdUnitsTest, SandboxKeepsWhatTheDaemonNeeds) {
  std::map<std::string, std::string> s = UnitSettings(Slurp(UnitFile("grantvaultd.service")));
  // A user namespace maps every peer's SO_PEERCRED to 65534.
  EXPECT_EQ(s.count("PrivateUsers"), 0u);
  // Attestation reads other processes' /proc/<pid>/status and stat.
  EXPECT_EQ(s["ProtectProc"], "default");
  // Outbound HTTPS to the OAuth servers.
  EXPECT_THAT(s["RestrictAddressFamilies"], HasSubstr("AF_INET "));
  EXPECT_THAT(s["RestrictAddressFamilies"] + " ", HasSubstr("AF_INET6 "));
  EXPECT_NE(s["IPAddressDeny"], "any");
  EXPECT_EQ(s["Type"], "notify");
  EXPECT_FALSE(s["WatchdogSec"].empty());
  EXPECT_EQ(s["User"], "grantvault");

  const std::string sysusers = Slurp(UnitFile("grantvault.sysusers.conf"));
  for (const auto& [socket, group] : {std::pair{"grantvault-agent.socket", "grantvault-agents"},
                                      std::pair{"grantvault-admin.socket", "grantvault-admins"}}) {
    std::map<std::string, std::string> sock = UnitSettings(Slurp(UnitFile(socket)));
    EXPECT_EQ(sock["SocketGroup"], group) << socket;
    EXPECT_EQ(sock["SocketMode"], "0660") << socket;
    EXPECT_EQ(sock["Service"], "grantvaultd.service") << socket;
    EXPECT_THAT(sysusers, HasSubstr(absl::StrCat("\ng ", group, " "))) << group;
  }
}

class SystemdRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    activate_ = FindTool("systemd-socket-activate");
    setpriv_ = FindTool("setpriv");
    if (activate_.empty()) GTEST_SKIP() << "systemd-socket-activate is not installed";
    if (setpriv_.empty()) GTEST_SKIP() << "setpriv (util-linux) is not installed";
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the daemon and agents as other uids";
    // Traversable by the daemon's and the clients' uids, as /run is.
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    state_ = dir_.Join("state");
    run_ = dir_.Join("run");
    ASSERT_EQ(::mkdir(state_.c_str(), 0700), 0);
    ASSERT_EQ(::chown(state_.c_str(), kDaemonUid, kDaemonGid), 0);
    ASSERT_EQ(::mkdir(run_.c_str(), 0755), 0);
    config_ = dir_.Join("grantvaultd.toml");
    policy_ = dir_.Join("policy.toml");
    std::ofstream(config_) << "[admin]\nallowed_uids = []\nallowed_gids = [" << kAdminsGid
                           << "]\n[policy]\nfile = \"" << policy_ << "\"\n";
    ASSERT_EQ(::chmod(config_.c_str(), 0644), 0);
    agent_ = ReadSocketUnit(UnitFile("grantvault-agent.socket"), run_);
    admin_ = ReadSocketUnit(UnitFile("grantvault-admin.socket"), run_);
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop(SIGKILL);
  }

  static gid_t GroupId(const std::string& group) {
    return group == "grantvault-agents"   ? kAgentsGid
           : group == "grantvault-admins" ? kAdminsGid
                                          : 0;
  }

  // The daemon as grantvaultd.service starts it (tests/testing/socket_activated_daemon.h).
  void StartActivated(absl::Duration watchdog) {
    std::map<std::string, std::string> service =
        UnitSettings(Slurp(UnitFile("grantvaultd.service")));
    ASSERT_EQ(service["ExecStart"],
              absl::StrCat(GV_INSTALLED_GRANTVAULTD, " --state-dir /var/lib/grantvault"));
    testing::SocketActivation how;
    how.activate = activate_;
    how.setpriv = setpriv_;
    how.sockets = {agent_, admin_};
    how.uid = kDaemonUid;
    how.gid = kDaemonGid;
    how.group_id = GroupId;
    how.watchdog = watchdog;
    how.daemon_argv = {GV_GRANTVAULTD, "--state-dir", state_, "--config", config_};
    auto daemon = testing::StartSocketActivated(how);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = std::move(*daemon);
  }

  CommandResult RunAs(uid_t uid, gid_t gid, const std::string& groups,
                      std::vector<std::string> argv) {
    return testing::RunAs(setpriv_, uid, gid, groups, std::move(argv));
  }

  std::string ResolveAsAgent(uid_t uid) {
    return testing::ResolveAsAgent(agent_.path, uid, kAgentsGid, kWorkspace, "demo");
  }

  CommandResult AdminCli(std::vector<std::string> args) {
    args.insert(args.begin(), {GV_CLI, "--socket", admin_.path, "--timeout", "30"});
    return RunAs(kAdminUid, kAdminUid, std::to_string(kAdminsGid), std::move(args));
  }

  TempDir dir_;
  std::string activate_, setpriv_, state_, run_, config_, policy_;
  SocketUnit agent_, admin_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(SystemdRunTest, SocketActivatedNotifyDaemonPingsTheWatchdogAndServesAdmins) {
  EXPECT_EQ(agent_.fd_name, "agent");
  EXPECT_EQ(admin_.fd_name, "admin");
  ASSERT_NO_FATAL_FAILURE(StartActivated(absl::Seconds(1)));
  // The daemon's stderr is read by another thread: wait for what it logged
  // before READY=1 to arrive.
  EXPECT_TRUE(testing::WaitFor([&] {
    return daemon_->Stderr().find("watchdog.enabled") != std::string::npos;
  })) << daemon_->Stderr();
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("socket.inherited name=agent"));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("socket.inherited name=admin"));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("watchdog.enabled ping_every=500ms"));
  // Two pings: the watchdog keeps going, not just once after READY=1.
  EXPECT_TRUE(daemon_->WaitForNotification("WATCHDOG=1", absl::Seconds(5)).ok());
  EXPECT_TRUE(daemon_->WaitForNotification("WATCHDOG=1", absl::Seconds(5)).ok());

  struct stat st;
  ASSERT_EQ(::stat(admin_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, kAdminsGid);

  // An admin by group membership (a supplementary group, which the daemon
  // reads from /proc/<pid>/status of the peer), through the activated socket.
  CommandResult status = RunAs(kAdminUid, kAdminUid, std::to_string(kAdminsGid),
                               {GV_CLI, "--socket", admin_.path, "--timeout", "10", "status"});
  EXPECT_EQ(status.exit_code, 0) << status.out << status.err << daemon_->Stderr();
  EXPECT_THAT(status.out, HasSubstr("active KEK"));
  // Outside the group, the socket's mode keeps the caller out.
  CommandResult outsider = RunAs(kOutsiderUid, kOutsiderUid, "",
                                 {GV_CLI, "--socket", admin_.path, "--timeout", "5", "status"});
  EXPECT_EQ(outsider.exit_code, 5) << outsider.out;
  EXPECT_THAT(outsider.err, HasSubstr("Permission denied"));

  daemon_->Signal(SIGTERM);
  EXPECT_TRUE(daemon_->WaitForNotification("STOPPING=1", absl::Seconds(10)).ok());
  EXPECT_EQ(daemon_->Wait(absl::Seconds(20)), 0) << daemon_->Stderr();
}

// The whole path through the unit's sandbox-relevant choices: outbound HTTPS
// to the provider (authorisation, refresh, upstream revocation), an agent of
// another uid let in by the socket's group and told apart by SO_PEERCRED and
// its /proc entry.
TEST_F(SystemdRunTest, AnAgentOfAnotherUidResolvesAndARevocationReachesTheProvider) {
  auto provider = testing::OAuthProvider::Start({});
  if (!provider.ok() && absl::StrContains(provider.status().message(), "node")) {
    GTEST_SKIP() << "no oidc-provider: " << provider.status();
  }
  ASSERT_TRUE(provider.ok()) << provider.status();
  // Readable by the daemon's uid, as /etc/grantvault would be.
  const std::string ca_file = dir_.Join("provider-ca.pem");
  std::ofstream(ca_file) << Slurp((*provider)->ca_file());
  ASSERT_EQ(::chmod(ca_file.c_str(), 0644), 0);
  std::ofstream(config_, std::ios::app)
      << "[oauth]\nca_file = \"" << ca_file
      << "\"\nuse_system_trust_store = false\nrevocation_timeout_ms = 2000\n"
         "revocation_retry_ms = 300\n";
  // Root may use admin.sock too (the test's own authorisation below).
  std::string config = Slurp(config_);
  config = absl::StrReplaceAll(config, {{"allowed_uids = []", "allowed_uids = [0]"}});
  std::ofstream(config_, std::ios::trunc) << config;
  std::ofstream(policy_) << "[[callers]]\nuid = " << kAgentUid
                         << "\nrole = \"agent\"\nworkspaces = [\"" << kWorkspace
                         << "\"]\n[workspaces." << kWorkspace
                         << "]\nallow_resolve_without_tool = true\n";
  ASSERT_EQ(::chmod(policy_.c_str(), 0644), 0);
  const std::string secret_file = dir_.Join("client.secret");
  std::ofstream(secret_file) << (*provider)->clients()[0].client_secret;
  ASSERT_EQ(::chmod(secret_file.c_str(), 0600), 0);
  ASSERT_EQ(::chown(secret_file.c_str(), kAdminUid, kAdminUid), 0);

  ASSERT_NO_FATAL_FAILURE(StartActivated(absl::Seconds(2)));
  CommandResult reg =
      AdminCli({"connectors", "register", "--id", "demo", "--type", "oidc", "--client-id",
                (*provider)->clients()[0].client_id, "--client-secret-file", secret_file,
                "--issuer", (*provider)->issuer()});
  ASSERT_EQ(reg.exit_code, 0) << reg.out << reg.err << daemon_->Stderr();

  // Authorisation: the daemon exchanges the code at the provider.
  absl::StatusOr<std::string> grant =
      testing::AuthorizeAtProvider(admin_.path, **provider, kWorkspace, "demo");
  ASSERT_TRUE(grant.ok()) << grant.status() << daemon_->Stderr();
  const std::string grant_id = *grant;

  // The agent of another uid gets a token (the policy names that uid only, so
  // the daemon saw its real uid); one the policy does not name, though in
  // the group, is refused.
  EXPECT_EQ(ResolveAsAgent(kAgentUid), "code=0") << daemon_->Stderr();
  EXPECT_EQ(ResolveAsAgent(kOutsiderUid), "hello refused") << daemon_->Stderr();

  // The refresh token the daemon holds (read from the state, next to it, as
  // the state's owner).
  std::string refresh_token;
  {
    ASSERT_EQ(::setegid(kDaemonGid), 0);
    ASSERT_EQ(::seteuid(kDaemonUid), 0);
    absl::Cleanup back_to_root = [] {
      if (::seteuid(0) != 0 || ::setegid(0) != 0) std::abort();
    };
    auto vault = daemon::OpenEmbeddedState(state_);
    ASSERT_TRUE(vault.ok()) << vault.status();
    auto secret = vault->store->GetSealedSecret({grant_id, "refresh_token"});
    ASSERT_TRUE(secret.ok()) << secret.status();
    auto token = keys::OpenSealed(*vault->sealer, *secret);
    ASSERT_TRUE(token.ok()) << token.status();
    refresh_token = std::string(token->view());
  }

  CommandResult revoked = AdminCli({"revoke", grant_id, "--reason", "offboarding"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.out << revoked.err;
  json shown;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        CommandResult r = AdminCli({"--json", "grants", "show", grant_id});
        shown = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
        return shown.is_object() && shown["grant"].value("upstream_revocation", "") == "revoked";
      },
      absl::Seconds(20)))
      << shown.dump() << daemon_->Stderr();

  // The provider says so too (RFC 7662 introspection, as another client).
  oauth::HttpClientOptions http_options;
  http_options.use_system_trust_store = false;
  http_options.ca_file = (*provider)->ca_file();
  auto http = oauth::NewHttpClient(http_options);
  ASSERT_TRUE(http.ok()) << http.status();
  oauth::HttpRequest discovery;
  discovery.url = (*provider)->issuer() + "/.well-known/openid-configuration";
  auto document = (*http)->Send(discovery, absl::Seconds(10));
  ASSERT_TRUE(document.ok()) << document.status();
  const json metadata = json::parse(document->body, nullptr, false);
  oauth::HttpRequest introspect;
  introspect.method = "POST";
  introspect.url = metadata.value("introspection_endpoint", "");
  introspect.headers = {
      {"Content-Type", "application/x-www-form-urlencoded"},
      {"Accept", "application/json"},
      {"Authorization", "Basic " + oauth::Base64((*provider)->clients()[0].client_id + ":" +
                                                 (*provider)->clients()[0].client_secret)}};
  introspect.body =
      oauth::FormEncode({{"token", refresh_token}, {"token_type_hint", "refresh_token"}});
  auto answer = (*http)->Send(introspect, absl::Seconds(10));
  ASSERT_TRUE(answer.ok()) << answer.status();
  const json introspection = json::parse(answer->body, nullptr, false);
  EXPECT_EQ(introspection["active"], false) << answer->body;
}

// The unit's daemon has no CAP_SYS_PTRACE: it can read /proc/<pid>/exe of
// its own uid's processes only, so an exe rule matches an agent of that uid
// and fails closed for any other (docs/policy.md, docs/operations.md).
TEST_F(SystemdRunTest, AnExeRuleMatchesOnlyAgentsOfTheDaemonsOwnUid) {
  std::array<char, 4096> self{};
  const ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
  ASSERT_GT(n, 0);
  std::ofstream policy(policy_);
  for (uid_t uid : {kDaemonUid, kAgentUid}) {
    policy << "[[callers]]\nuid = " << uid << "\nexe = \""
           << std::string(self.data(), static_cast<size_t>(n))
           << "\"\nrole = \"agent\"\nworkspaces = [\"" << kWorkspace << "\"]\n";
  }
  policy << "[workspaces." << kWorkspace << "]\nallow_resolve_without_tool = true\n";
  policy.close();
  ASSERT_EQ(::chmod(policy_.c_str(), 0644), 0);
  ASSERT_NO_FATAL_FAILURE(StartActivated(absl::Seconds(2)));

  // Attested, so past Hello; the resolve itself finds no connector.
  EXPECT_EQ(ResolveAsAgent(kDaemonUid), "code=4") << daemon_->Stderr();
  EXPECT_EQ(ResolveAsAgent(kAgentUid), "hello refused") << daemon_->Stderr();
}

}  // namespace
}  // namespace grantvault
