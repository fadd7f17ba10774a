// End-to-end: the real grantvaultd on a temporary state directory, driven by
// the CLI and by the client library over its real sockets.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/ids.h"
#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "grantvault/v1/envelope.pb.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "ipc/server.h"
#include "tests/integration/raw_socket.h"
#include "tests/keys/sealed_fixtures.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using testing::CommandResult;
using testing::DaemonProcess;
using ::testing::HasSubstr;
using testing::RawSocket;
using testing::RunCommand;
using testing::TempDir;

constexpr int kRecords = 2000;
// Besides them, the daemon seals one secret of its own on first start: the
// audit log's fingerprint key (daemon/audit_setup.h).
constexpr int kSealedByDaemon = 1;
constexpr int kSealed = kRecords + kSealedByDaemon;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
    policy_ = dir_.Join("policy.toml");
    WriteConfig("");
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop(SIGTERM);
  }

  // `policy` goes into the [policy] section, whose file is policy_.
  void WriteConfig(const std::string& extra, const std::string& policy = "") {
    std::ofstream(config_) << "[limits]\nframe_timeout_ms = 400\n"
                           << extra << "\n[policy]\nfile = \"" << policy_ << "\"\n"
                           << policy;
  }

  void WritePolicy(const std::string& text) { std::ofstream(policy_, std::ios::trunc) << text; }

  // This process's uid as an agent of workspace "w".
  static std::string AgentPolicy(uid_t uid) {
    return absl::StrCat("[[callers]]\nuid = ", uid,
                        "\nrole = \"agent\"\nworkspaces = [\"w\"]\n"
                        "[workspaces.w]\nallow_resolve_without_tool = true\n");
  }

  // SIGHUP, and the daemon's READY=1 once it has re-read everything.
  void Reload() {
    daemon_->Signal(SIGHUP);
    ASSERT_TRUE(daemon_->WaitForNotification("READY=1", absl::Seconds(10)).ok());
  }

  static v1::Request StatusRequest() {
    v1::Request r;
    r.mutable_status();
    return r;
  }

  // Seals kRecords records into the state before the daemon starts.
  void Populate() {
    auto vault = daemon::InitEmbeddedState(state_);
    ASSERT_TRUE(vault.ok()) << vault.status();
    ASSERT_TRUE(keys::SealRecords(*vault, kRecords, "e2e").ok());
  }

  void StartDaemon() {
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  std::string AdminSocket() const { return state_ + "/run/admin.sock"; }
  std::string AgentSocket() const { return state_ + "/run/agent.sock"; }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {GV_CLI, "--state-dir", state_});
    return RunCommand(args);
  }

  std::unique_ptr<ipc::Client> Connect(const std::string& socket) {
    ipc::ClientOptions options;
    options.client_name = "daemon_test";
    auto client = ipc::Client::Connect(socket, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  static v1::Request AdminRequest() {
    v1::Request r;
    r.set_admin_user("alice");
    return r;
  }

  TempDir dir_;
  std::string state_;
  std::string config_;
  std::string policy_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(DaemonTest, StatusOnBothSocketsThroughTheClientLibrary) {
  WritePolicy(AgentPolicy(::getuid()));
  StartDaemon();
  auto admin = Connect(AdminSocket());
  ASSERT_NE(admin, nullptr);
  EXPECT_EQ(admin->hello().socket_role(), v1::HelloReply::ADMIN);
  v1::Request r;
  r.mutable_status();
  auto resp = admin->Call(r);
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_TRUE(resp->has_status()) << resp->DebugString();
  EXPECT_TRUE(resp->status().hsm_reachable());
  EXPECT_TRUE(resp->status().store_reachable());
  EXPECT_EQ(resp->status().active_kek(), "grantvault-kek-1");
  EXPECT_EQ(resp->status().token_label(), "grantvault");
  EXPECT_EQ(resp->status().store_kind(), "sqlite");
  EXPECT_GE(resp->status().open_connections(), 1u);

  auto agent = Connect(AgentSocket());
  ASSERT_NE(agent, nullptr);
  EXPECT_EQ(agent->hello().socket_role(), v1::HelloReply::AGENT);
  resp = agent->Call(r);
  ASSERT_TRUE(resp.ok());
  EXPECT_TRUE(resp->has_status());

  // Admin requests are refused on the agent socket.
  v1::Request rotate = AdminRequest();
  rotate.mutable_rotate_key();
  resp = agent->Call(rotate);
  ASSERT_TRUE(resp.ok());
  ASSERT_TRUE(resp->has_error());
  EXPECT_EQ(resp->error().code(), v1::Error::PERMISSION_DENIED);

  // Admin requests must name the admin user.
  v1::Request anonymous;
  anonymous.mutable_key_status();
  resp = admin->Call(anonymous);
  ASSERT_TRUE(resp.ok());
  EXPECT_EQ(resp->error().code(), v1::Error::INVALID_ARGUMENT);
}

TEST_F(DaemonTest, CliDrivesTheKeyLifecycle) {
  Populate();
  StartDaemon();

  CommandResult status = Cli({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("active KEK  grantvault-kek-1"));
  EXPECT_THAT(status.out, HasSubstr(absl::StrCat(kSealed, " secret(s)")));

  CommandResult json = Cli({"--json", "status"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_THAT(json.out, HasSubstr("\"active_kek\":\"grantvault-kek-1\""));

  CommandResult rotate = Cli({"keys", "rotate"});
  EXPECT_EQ(rotate.exit_code, 0) << rotate.err;
  EXPECT_THAT(rotate.out, HasSubstr("grantvault-kek-2"));

  CommandResult early = Cli({"keys", "retire", "1"});
  EXPECT_EQ(early.exit_code, 6) << early.out << early.err;
  EXPECT_THAT(early.err, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(early.err, HasSubstr(absl::StrCat(kSealed)));

  CommandResult rewrap = Cli({"--json", "keys", "rewrap", "--batch", "250"});
  EXPECT_EQ(rewrap.exit_code, 0) << rewrap.err;
  EXPECT_THAT(rewrap.out, HasSubstr(absl::StrCat("\"rewrapped\":", kSealed)));

  CommandResult keys = Cli({"--json", "keys", "status"});
  EXPECT_EQ(keys.exit_code, 0) << keys.err;
  EXPECT_THAT(keys.out, HasSubstr("\"label\":\"grantvault-kek-2\""));

  CommandResult retire = Cli({"keys", "retire", "1"});
  EXPECT_EQ(retire.exit_code, 0) << retire.err;
  EXPECT_THAT(retire.out, HasSubstr("Retired grantvault-kek-1"));

  CommandResult missing = Cli({"keys", "retire", "9"});
  EXPECT_EQ(missing.exit_code, 4) << missing.err;

  const std::string pem_file = dir_.Join("audit.pem");
  CommandResult pub = Cli({"keys", "audit-public-key", "-o", pem_file});
  EXPECT_EQ(pub.exit_code, 0) << pub.err;
  EXPECT_THAT(testing::ReadFileOrDie(pem_file), HasSubstr("-----BEGIN PUBLIC KEY-----"));

  CommandResult usage = Cli({"keys", "frobnicate"});
  EXPECT_EQ(usage.exit_code, 2);

  // Every record still opens with the keys the daemon left behind.
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
  auto vault = daemon::OpenEmbeddedState(state_);
  ASSERT_TRUE(vault.ok()) << vault.status();
  EXPECT_EQ(vault->sealer->ActiveKek().label, "grantvault-kek-2");
  EXPECT_TRUE(keys::VerifyRecords(*vault, kRecords, "e2e").ok());
}

TEST_F(DaemonTest, CliListsAndShowsGrantsWithoutSecrets) {
  const std::string refresh_token = "1//0g-refresh-token-that-must-never-be-shown";
  std::string grant_id;
  {
    auto vault = daemon::InitEmbeddedState(state_);
    ASSERT_TRUE(vault.ok()) << vault.status();
    store::Grant g;
    g.grant_id = NewGrantId();
    g.workspace_id = "ws_acme";
    g.connector_id = "github";
    g.connector_type = "github";
    g.account_id = "583231";
    g.scopes = {"repo:status", "read:org"};
    g.authorized_by = "alice";
    g.created_at = g.updated_at = absl::Now();
    g.metadata = {{"login", "octocat"}};
    hsm::SealContext ctx{g.workspace_id, g.connector_id, g.account_id, g.grant_id, "refresh_token"};
    auto sealed = vault->sealer->Seal(SecretBytes::CopyOf(refresh_token), ctx);
    ASSERT_TRUE(sealed.ok());
    store::SealedSecret secret;
    secret.key = {g.grant_id, "refresh_token"};
    secret.workspace_id = g.workspace_id;
    secret.connector_id = g.connector_id;
    secret.account_id = g.account_id;
    secret.kek_label = sealed->kek.label;
    secret.record = sealed->record;
    ASSERT_TRUE(vault->store->InsertGrant(g, secret).ok());
    grant_id = g.grant_id;
  }
  StartDaemon();
  CommandResult list = Cli({"grants", "list", "--workspace", "ws_acme"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr(grant_id));
  EXPECT_THAT(list.out, HasSubstr("repo:status read:org"));
  CommandResult show = Cli({"--json", "grants", "show", grant_id});
  EXPECT_EQ(show.exit_code, 0) << show.err;
  EXPECT_THAT(show.out, HasSubstr("\"account_id\":\"583231\""));
  EXPECT_THAT(show.out, HasSubstr("\"login\":\"octocat\""));
  for (const CommandResult* r : {&list, &show}) {
    EXPECT_THAT(r->out, ::testing::Not(HasSubstr(refresh_token)));
  }
  EXPECT_EQ(Cli({"grants", "show", "gr_nosuchgrant"}).exit_code, 4);
  CommandResult empty = Cli({"grants", "list", "--workspace", "ws_other"});
  EXPECT_THAT(empty.out, HasSubstr("has no grants"));
  EXPECT_THAT(daemon_->Stderr(), ::testing::Not(HasSubstr(refresh_token)));
}

TEST_F(DaemonTest, CliChecksAPolicyFileOffline) {
  const std::string good = dir_.Join("policy.toml");
  std::ofstream(good) << "[[callers]]\nuid = 1000\nrole = \"agent\"\nworkspaces = [\"acme\"]\n"
                         "[workspaces.acme]\n"
                         "[[workspaces.acme.tools]]\nname = \"send_email\"\n"
                         "connector = \"google_workspace\"\nscopes = [\"gmail.send\"]\n"
                         "[[workspaces.acme.tools]]\nname = \"read_inbox\"\n"
                         "connector = \"google_workspace\"\nscopes = [\"gmail.readonly\"]\n";
  CommandResult ok = RunCommand({GV_CLI, "policy", "check", good});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("is valid: 1 caller rule(s), 1 workspace(s), 2 tool(s)"));
  EXPECT_THAT(ok.out, HasSubstr("acme / google_workspace: 2 tool(s), narrowest scopes "
                                "[gmail.readonly gmail.send]"));
  const std::string bad = dir_.Join("bad.toml");
  std::ofstream(bad) << "[[callers]]\nuid = 1000\nrole = \"agent\"\nworkspace = [\"acme\"]\n";
  CommandResult refused = RunCommand({GV_CLI, "policy", "check", bad});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_THAT(refused.err, HasSubstr("bad.toml:4: unknown key 'workspace'"));
}

TEST_F(DaemonTest, CliReportsAnUnreachableDaemon) {
  CommandResult r = Cli({"status"});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_THAT(r.err, HasSubstr("cannot reach grantvaultd"));
}

// An unknown command is a usage error named on stderr, also where CLI11
// would answer --help first (it printed the main help and exited 0).
TEST_F(DaemonTest, CliRefusesAnUnknownCommand) {
  const std::vector<std::vector<std::string>> cases = {
      {"UNKNOWN"}, {"UNKNOWN", "--help"}, {"UNKNOWN", "status"}, {"keys", "UNKNOWN"}};
  for (const std::vector<std::string>& args : cases) {
    const std::string what = absl::StrJoin(args, " ");
    CommandResult r = Cli(args);
    EXPECT_EQ(r.exit_code, 2) << what << ": " << r.out << r.err;
    EXPECT_THAT(r.err, HasSubstr("unknown command 'UNKNOWN'")) << what;
    EXPECT_EQ(r.out, "") << what;
  }
  CommandResult help = Cli({"keys", "--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_THAT(help.out, HasSubstr("rotate"));
}

TEST_F(DaemonTest, RewrapStreamsProgressThroughTheClientLibrary) {
  Populate();
  StartDaemon();
  auto admin = Connect(AdminSocket());
  ASSERT_NE(admin, nullptr);
  v1::Request rotate = AdminRequest();
  rotate.mutable_rotate_key();
  auto resp = admin->Call(rotate);
  ASSERT_TRUE(resp.ok() && resp->has_rotate_key()) << resp->DebugString();

  v1::Request rewrap = AdminRequest();
  rewrap.mutable_rewrap()->set_batch_size(100);
  std::vector<uint64_t> done;
  resp = admin->Call(rewrap, absl::Seconds(60), [&](const v1::Response& partial) {
    EXPECT_TRUE(partial.more());
    done.push_back(partial.rewrap_progress().done());
  });
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_TRUE(resp->has_rewrap()) << resp->DebugString();
  EXPECT_EQ(resp->rewrap().rewrapped(), static_cast<uint64_t>(kSealed));
  ASSERT_EQ(done.size(), static_cast<size_t>((kSealed + 99) / 100));
  EXPECT_EQ(done.back(), static_cast<uint64_t>(kSealed));

  v1::Request retire = AdminRequest();
  retire.mutable_retire_key()->set_version(1);
  resp = admin->Call(retire);
  ASSERT_TRUE(resp.ok() && resp->has_retire_key()) << resp->DebugString();
  EXPECT_EQ(resp->retire_key().key().state(), v1::KeyVersion::RETIRED);
}

TEST_F(DaemonTest, HostileFramesCloseOnlyTheirConnection) {
  WritePolicy(AgentPolicy(::getuid()));  // Status on agent.sock is for callers it names
  StartDaemon();
  auto good = Connect(AgentSocket());
  ASSERT_NE(good, nullptr);
  v1::Request status;
  status.mutable_status();
  auto still_serving = [&] {
    auto r = good->Call(status);
    return r.ok() && r->has_status();
  };

  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"zero length", std::string("\0\0\0\0", 4)},
      {"length 65,537", std::string("\x00\x01\x00\x01", 4) + std::string(100, 'x')},
      {"length 4 GiB", std::string("\xff\xff\xff\xff", 4)},
      {"garbage protobuf", ipc::EncodeFrame(std::string("\xff\xff\xff\xff\xff\xff\xff", 7))},
  };
  for (const auto& [what, bytes] : hostile) {
    RawSocket s(AgentSocket());
    ASSERT_TRUE(s.connected()) << what;
    ASSERT_TRUE(s.Write(bytes)) << what;
    EXPECT_TRUE(s.ClosedByPeer(absl::Seconds(5))) << what << " did not close the connection";
    EXPECT_TRUE(still_serving()) << "after " << what;
  }

  {  // The first request must be Hello.
    RawSocket s(AgentSocket());
    v1::Request r;
    r.set_request_id(5);
    r.mutable_status();
    ASSERT_TRUE(s.WriteRequest(r));
    auto resp = s.ReadResponse();
    ASSERT_TRUE(resp.has_value());
    EXPECT_EQ(resp->error().code(), v1::Error::INVALID_ARGUMENT);
    EXPECT_TRUE(s.ClosedByPeer(absl::Seconds(5)));
  }
  {  // A truncated frame, then the client goes away.
    RawSocket s(AgentSocket());
    ASSERT_TRUE(s.Hello());
    ASSERT_TRUE(s.Write(std::string("\x00\x00\x01\x00", 4) + "only-part"));
  }
  {  // An unknown message type is answered and the connection stays usable.
    RawSocket s(AgentSocket());
    ASSERT_TRUE(s.Hello());
    // Field 99 (unknown to this server), length-delimited, plus request_id 7.
    std::string unknown = std::string("\x08\x07", 2) + std::string("\x9a\x06\x02hi", 5);
    ASSERT_TRUE(s.Write(ipc::EncodeFrame(unknown)));
    auto resp = s.ReadResponse();
    ASSERT_TRUE(resp.has_value());
    EXPECT_EQ(resp->request_id(), 7u);
    EXPECT_EQ(resp->error().code(), v1::Error::INVALID_ARGUMENT);
    v1::Request r;
    r.set_request_id(8);
    r.mutable_status();
    ASSERT_TRUE(s.WriteRequest(r));
    resp = s.ReadResponse();
    ASSERT_TRUE(resp.has_value());
    EXPECT_TRUE(resp->has_status());
  }
  {  // Half a frame, then a stall: closed after the frame deadline (400 ms).
    RawSocket s(AgentSocket());
    ASSERT_TRUE(s.Hello());
    ASSERT_TRUE(s.Write(std::string("\x00\x00\x00\x40", 4) + "half"));
    const absl::Time start = absl::Now();
    EXPECT_TRUE(still_serving());
    EXPECT_TRUE(s.ClosedByPeer(absl::Seconds(5)));
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  }
  EXPECT_TRUE(still_serving());
  EXPECT_THAT(daemon_->Stderr(), ::testing::Not(HasSubstr("only-part")));
}

TEST_F(DaemonTest, PipelinedRequestsAreAnsweredWithTheirIds) {
  WritePolicy(AgentPolicy(::getuid()));  // Status on agent.sock is for callers it names
  StartDaemon();
  RawSocket s(AgentSocket());
  ASSERT_TRUE(s.Hello());
  std::string batch;
  for (uint64_t id = 100; id < 200; ++id) {
    v1::Request r;
    r.set_request_id(id);
    r.mutable_status();
    batch += ipc::EncodeFrame(r.SerializeAsString());
  }
  ASSERT_TRUE(s.Write(batch));
  std::set<uint64_t> seen;
  for (int i = 0; i < 100; ++i) {
    auto resp = s.ReadResponse();
    ASSERT_TRUE(resp.has_value()) << "response " << i;
    EXPECT_TRUE(resp->has_status());
    seen.insert(resp->request_id());
  }
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_EQ(*seen.begin(), 100u);
  EXPECT_EQ(*seen.rbegin(), 199u);
}

TEST_F(DaemonTest, AThousandSimultaneousConnectionsAreServedOrRefusedCleanly) {
  // The older key, read as agent.sock's limit; no per-uid cap (one uid opens them all).
  WriteConfig("max_connections = 600\nagent_max_connections_per_uid = 0\n");
  WritePolicy(AgentPolicy(::getuid()));
  StartDaemon();
  std::vector<std::unique_ptr<RawSocket>> sockets;
  int served = 0, refused = 0;
  for (int i = 0; i < 1000; ++i) sockets.push_back(std::make_unique<RawSocket>(AgentSocket()));
  for (auto& s : sockets) {
    if (s->connected() && s->Hello()) {
      ++served;
    } else {
      ++refused;
    }
  }
  EXPECT_EQ(served + refused, 1000);
  EXPECT_GE(served, 590);
  EXPECT_LE(served, 600);
  sockets.clear();
  // The daemon is still up and serves new connections.
  auto client = Connect(AgentSocket());
  ASSERT_NE(client, nullptr);
  v1::Request r;
  r.mutable_status();
  auto resp = client->Call(r);
  ASSERT_TRUE(resp.ok());
  EXPECT_TRUE(resp->has_status());
}

TEST_F(DaemonTest, SocketDirectoryThatIsASymlinkIsRefusedAtStart) {
  const std::string real = dir_.Join("real-run");
  ASSERT_EQ(::mkdir(real.c_str(), 0750), 0);
  ASSERT_EQ(::symlink(real.c_str(), dir_.Join("link-run").c_str()), 0);
  WriteConfig("[sockets]\nagent = \"" + dir_.Join("link-run/agent.sock") + "\"\nadmin = \"" +
              dir_.Join("link-run/admin.sock") + "\"\n");
  DaemonProcess d({GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  EXPECT_FALSE(d.Start().ok());
  EXPECT_NE(d.Wait(), 0);
  EXPECT_THAT(d.Stderr(), HasSubstr("link-run is a symlink"));
}

TEST_F(DaemonTest, SocketDirectoryOwnedByAnotherUserIsRefusedAtStart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a directory away";
  const std::string other = dir_.Join("other-run");
  ASSERT_EQ(::mkdir(other.c_str(), 0750), 0);
  ASSERT_EQ(::chown(other.c_str(), 65534, 65534), 0);
  WriteConfig("[sockets]\nagent = \"" + other + "/agent.sock\"\nadmin = \"" + other +
              "/admin.sock\"\n");
  DaemonProcess d({GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  EXPECT_FALSE(d.Start().ok());
  EXPECT_NE(d.Wait(), 0);
  EXPECT_THAT(d.Stderr(), HasSubstr("owned by uid 65534"));
}

TEST_F(DaemonTest, RestartKeepsEverythingAndReplacesAStaleSocket) {
  StartDaemon();
  ASSERT_EQ(Cli({"keys", "rotate"}).exit_code, 0);
  // Killed without cleanup: the socket files stay behind, nothing answers.
  EXPECT_EQ(daemon_->Stop(SIGKILL), 128 + SIGKILL);
  struct stat st;
  ASSERT_EQ(::stat(AdminSocket().c_str(), &st), 0);
  StartDaemon();
  CommandResult status = Cli({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("grantvault-kek-2"));
  // A clean stop removes the sockets and exits 0.
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
  EXPECT_NE(::stat(AdminSocket().c_str(), &st), 0);
}

TEST_F(DaemonTest, SocketsHandedOverBySystemdAreServedByName) {
  const std::string run = dir_.Join("activated");
  auto agent = ipc::BindUnixSocket(run + "/agent.sock", 0660);
  auto admin = ipc::BindUnixSocket(run + "/admin.sock", 0660);
  ASSERT_TRUE(agent.ok() && admin.ok());
  // Deliberately in the other order: the daemon must go by name, not position.
  DaemonProcess d({GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  d.InheritSockets({{"admin", *admin}, {"agent", *agent}});
  ASSERT_TRUE(d.Start().ok()) << d.Stderr();
  ::close(*agent);
  ::close(*admin);
  EXPECT_THAT(d.Stderr(), HasSubstr("socket.inherited name=agent"));
  // The daemon bound nothing of its own.
  struct stat st;
  EXPECT_NE(::stat(AgentSocket().c_str(), &st), 0);
  auto a = Connect(run + "/agent.sock");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->hello().socket_role(), v1::HelloReply::AGENT);
  auto b = Connect(run + "/admin.sock");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->hello().socket_role(), v1::HelloReply::ADMIN);
  EXPECT_EQ(d.Stop(SIGTERM), 0);
  // The sockets belong to systemd: the daemon leaves them in place.
  EXPECT_EQ(::stat((run + "/agent.sock").c_str(), &st), 0);
}

TEST_F(DaemonTest, ASecondDaemonOnTheSameStateRefusesClearly) {
  StartDaemon();
  DaemonProcess second(
      {GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  EXPECT_FALSE(second.Start().ok());
  EXPECT_EQ(second.Wait(), 1);
  EXPECT_THAT(second.Stderr(),
              HasSubstr(absl::StrCat("another grantvaultd (pid ", daemon_->pid(), ")")));
  EXPECT_EQ(Cli({"status"}).exit_code, 0);  // the first one is unaffected
}

TEST_F(DaemonTest, SighupReloadsAndABadConfigKeepsThePreviousOne) {
  StartDaemon();
  WriteConfig("[log]\nlevel = \"debug\"\n");
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(daemon_->WaitForNotification("READY=1", absl::Seconds(5)).ok());
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("config.reloaded log_level=debug"));
  WriteConfig("[log]\nlevel = \"loud\"\n");
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(daemon_->WaitForNotification("READY=1", absl::Seconds(5)).ok());
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("config.reload_failed"));
  EXPECT_EQ(Cli({"status"}).exit_code, 0);
}

TEST_F(DaemonTest, AnUnknownConfigKeyIsRefusedWithItsLine) {
  WriteConfig("max_conections = 5\n");
  DaemonProcess d({GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  EXPECT_FALSE(d.Start().ok());
  EXPECT_EQ(d.Wait(), 2);
  EXPECT_THAT(d.Stderr(), HasSubstr("max_conections"));
}

// Status on agent.sock tells whoever asks what the daemon holds: only a peer
// the caller policy names gets it.
TEST_F(DaemonTest, AgentStatusIsRefusedToPeersNoCallerRuleMatches) {
  StartDaemon();  // no policy file yet
  auto agent = Connect(AgentSocket());
  ASSERT_NE(agent, nullptr);
  auto refused = agent->Call(StatusRequest());
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_FALSE(refused->has_status());
  EXPECT_EQ(refused->error().code(), v1::Error::PERMISSION_DENIED) << refused->DebugString();

  WritePolicy(AgentPolicy(::getuid() + 4242));
  Reload();
  refused = agent->Call(StatusRequest());
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_FALSE(refused->has_status());
  EXPECT_EQ(refused->error().code(), v1::Error::PERMISSION_DENIED);
  EXPECT_THAT(refused->error().message(), HasSubstr("is not in the policy"));

  WritePolicy(AgentPolicy(::getuid()));
  Reload();
  auto answered = agent->Call(StatusRequest());
  ASSERT_TRUE(answered.ok()) << answered.status();
  EXPECT_TRUE(answered->has_status()) << answered->error().message();
  // The admin socket answers as before.
  auto admin = Connect(AdminSocket());
  ASSERT_NE(admin, nullptr);
  auto status = admin->Call(StatusRequest());
  ASSERT_TRUE(status.ok() && status->has_status());
}

// A reload that fails is loud and visible in Status; with reload_failure =
// "deny" it leaves no policy in force until a reload succeeds.
TEST_F(DaemonTest, AFailedPolicyReloadIsShownAndWithDenyRefusesEveryAgentRequest) {
  WritePolicy(AgentPolicy(::getuid()));
  StartDaemon();
  auto admin = Connect(AdminSocket());
  auto agent = Connect(AgentSocket());
  ASSERT_NE(admin, nullptr);
  ASSERT_NE(agent, nullptr);
  auto status = [&] {
    auto r = admin->Call(StatusRequest());
    EXPECT_TRUE(r.ok() && r->has_status());
    return r.ok() ? r->status() : v1::StatusReply();
  };
  const v1::StatusReply loaded = status();
  EXPECT_EQ(loaded.policy_file(), policy_);
  EXPECT_GT(loaded.policy_loaded_at_ms(), 0);
  EXPECT_EQ(loaded.policy_last_reload_error(), "");
  EXPECT_FALSE(loaded.policy_denying());

  // A policy file its group could rewrite is refused; the previous policy
  // stays in force (the default, "keep"), and the failure shows.
  ASSERT_EQ(::chmod(policy_.c_str(), 0664), 0);
  Reload();
  v1::StatusReply kept = status();
  EXPECT_THAT(kept.policy_last_reload_error(), HasSubstr("writable by its group"));
  EXPECT_GT(kept.policy_last_reload_failed_at_ms(), 0);
  EXPECT_EQ(kept.policy_loaded_at_ms(), loaded.policy_loaded_at_ms());
  EXPECT_FALSE(kept.policy_denying());
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("policy.reload_failed"));
  auto still = agent->Call(StatusRequest());
  ASSERT_TRUE(still.ok());
  EXPECT_TRUE(still->has_status()) << still->error().message();
  CommandResult shown = Cli({"status"});
  EXPECT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.out, HasSubstr("LAST RELOAD FAILED"));

  // The operator chooses fail-closed: a policy that does not parse now
  // leaves every agent request refused.
  WriteConfig("", "reload_failure = \"deny\"\n");
  ASSERT_EQ(::chmod(policy_.c_str(), 0644), 0);
  WritePolicy("[[callers]]\nuid = 0\nrole = \"agent\"\nbogus = 1\n");
  Reload();
  v1::StatusReply denying = status();
  EXPECT_TRUE(denying.policy_denying());
  EXPECT_EQ(denying.policy_loaded_at_ms(), 0);
  EXPECT_THAT(denying.policy_last_reload_error(), HasSubstr("bogus"));
  auto refused = agent->Call(StatusRequest());
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->error().code(), v1::Error::PERMISSION_DENIED);
  EXPECT_THAT(refused->error().message(), HasSubstr("reload_failure"));
  v1::Request resolve;
  resolve.mutable_resolve()->set_workspace_id("w");
  resolve.mutable_resolve()->set_connector_id("demo");
  auto denied = agent->Call(resolve);
  ASSERT_TRUE(denied.ok());
  EXPECT_EQ(denied->error().code(), v1::Error::PERMISSION_DENIED);
  EXPECT_THAT(denied->error().message(), HasSubstr("reload_failure"));

  // Back to "keep", another failure keeps what is in force: nothing.
  WriteConfig("");
  Reload();
  EXPECT_TRUE(status().policy_denying());
  auto still_refused = agent->Call(StatusRequest());
  ASSERT_TRUE(still_refused.ok());
  EXPECT_EQ(still_refused->error().code(), v1::Error::PERMISSION_DENIED);

  // A good reload ends it.
  WritePolicy(AgentPolicy(::getuid()));
  Reload();
  v1::StatusReply recovered = status();
  EXPECT_FALSE(recovered.policy_denying());
  EXPECT_EQ(recovered.policy_last_reload_error(), "");
  EXPECT_GT(recovered.policy_loaded_at_ms(), 0);
  auto again = agent->Call(StatusRequest());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->has_status()) << again->error().message();
}

// Admin rights on admin.sock: the caller policy's role decides for a peer a
// rule names; otherwise [admin] allowed_gids counts supplementary groups too.
// Peers of other uids run the real CLI through setpriv(1).
TEST_F(DaemonTest, AdminRightsFollowThePolicyRoleAndSupplementaryGroups) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the CLI as other users";
  const std::string sockets = dir_.Join("sock");
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0711), 0);
  ASSERT_EQ(::mkdir(sockets.c_str(), 0711), 0);
  const std::string admin_socket = sockets + "/admin.sock";
  WriteConfig(absl::StrCat("[sockets]\nagent = \"", sockets, "/agent.sock\"\nadmin = \"",
                           admin_socket,
                           "\"\nmode = 0o666\n[admin]\nallowed_uids = [65534]\n"
                           "allowed_gids = [4242]\n"));
  WritePolicy(
      "[[callers]]\ngid = 4243\nrole = \"admin\"\n\n"
      "[[callers]]\nuid = 65534\nrole = \"agent\"\nworkspaces = [\"w\"]\n[workspaces.w]\n");
  StartDaemon();
  auto cli_as = [&](uid_t uid, const std::string& groups, std::vector<std::string> args) {
    std::vector<std::string> argv = {"/usr/bin/setpriv",
                                     absl::StrCat("--reuid=", uid),
                                     absl::StrCat("--regid=", uid),
                                     groups.empty() ? "--clear-groups" : "--groups=" + groups,
                                     GV_CLI,
                                     "--socket",
                                     admin_socket,
                                     "--admin",
                                     "bob"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  };
  // An admin rule matched through a supplementary group.
  CommandResult admin_by_role = cli_as(65534, "4243", {"keys", "status"});
  EXPECT_EQ(admin_by_role.exit_code, 0) << admin_by_role.out << admin_by_role.err;
  // The agent role keeps a peer out, though [admin] allowed_uids names it.
  CommandResult agent = cli_as(65534, "", {"keys", "status"});
  EXPECT_NE(agent.exit_code, 0) << agent.out;
  EXPECT_THAT(agent.err, HasSubstr("agent role"));
  // No rule names uid 65533: allowed_gids decides, with its supplementary groups.
  CommandResult by_group = cli_as(65533, "4242", {"keys", "rotate"});
  EXPECT_EQ(by_group.exit_code, 0) << by_group.out << by_group.err;
  CommandResult outsider = cli_as(65533, "", {"keys", "status"});
  EXPECT_NE(outsider.exit_code, 0) << outsider.out;
  EXPECT_THAT(outsider.err, HasSubstr("not allowed to administer"));

  // The admin record names the peer by its kernel-given uid, not only by the
  // admin_user it asserted.
  const std::string exported = dir_.Join("system.jsonl");
  CommandResult exported_ok =
      RunCommand({GV_CLI, "--socket", admin_socket, "audit", "export", "--system", "-o", exported});
  ASSERT_EQ(exported_ok.exit_code, 0) << exported_ok.err;
  bool found = false;
  std::ifstream in(exported);
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"key.rotated\"") == std::string::npos) continue;
    found = true;
    EXPECT_THAT(line, HasSubstr("\"admin_user\":\"bob\""));
    EXPECT_THAT(line, HasSubstr("\"uid\":65533"));
    EXPECT_THAT(line, ::testing::ContainsRegex("\"pid\":[1-9]"));
  }
  EXPECT_TRUE(found);
}

// A caller's strings cannot end a log line and forge the next one.
TEST_F(DaemonTest, CallerSuppliedStringsCannotForgeLogLines) {
  StartDaemon();
  auto admin = Connect(AdminSocket());
  ASSERT_NE(admin, nullptr);
  v1::Request r;
  r.set_admin_user("eve\n2026-01-01T00:00:00.000 info key.rotated admin=root uid=0");
  r.mutable_show_grant()->set_grant_id("gr_nope\ninfo grant.revoked admin=root");
  auto resp = admin->Call(r);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->error().code(), v1::Error::NOT_FOUND) << resp->DebugString();
  ASSERT_TRUE(testing::WaitFor(
      [&] { return daemon_->Stderr().find("admin request failed") != std::string::npos; }));
  const std::string log = daemon_->Stderr();
  EXPECT_THAT(log, ::testing::Not(HasSubstr("\n2026-01-01T00:00:00.000 info key.rotated")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("\ninfo grant.revoked")));
  EXPECT_THAT(log, HasSubstr("admin=eve\\x0a2026-01-01T00:00:00.000\\x20info\\x20key.rotated"));
  EXPECT_THAT(log, HasSubstr("gr_nope\\x0ainfo grant.revoked"));
}

// SoftHSM2 resolves a relative token directory against the working directory
// of each process that loads it: the configuration must name it absolutely.
TEST_F(DaemonTest, ARelativeStateDirectoryWritesAbsolutePathsThatWorkFromAnywhere) {
  const std::string work = dir_.Join("work");
  ASSERT_EQ(::mkdir(work.c_str(), 0700), 0);
  const std::string conf = work + "/var/hsm/softhsm2.conf";
  auto init_from_work = [&] {
    return RunCommand({"/bin/sh", "-c",
                       "cd '" + work +
                           "' && exec '" GV_GRANTVAULTD
                           "' --allow-root --init-only --state-dir ./var/"});
  };
  // What pkcs11-tool or softhsm2-util see when started elsewhere.
  auto token_seen_from_root = [&] {
    CommandResult slots = RunCommand(
        {"/bin/sh", "-c", "cd / && SOFTHSM2_CONF='" + conf + "' exec softhsm2-util --show-slots"});
    return slots.exit_code == 0 &&
           slots.out.find("Label:            grantvault ") != std::string::npos;
  };

  CommandResult first = init_from_work();
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  EXPECT_THAT(first.out, HasSubstr(work + "/var/hsm/softhsm2.conf"));
  const std::string written = testing::ReadFileOrDie(conf);
  EXPECT_THAT(written, HasSubstr("\ndirectories.tokendir = " + work + "/var/hsm/tokens/\n"));
  EXPECT_TRUE(token_seen_from_root()) << written;

  // A configuration an earlier version wrote with the relative path is made
  // absolute on the next start; the token in it is kept.
  std::ofstream(conf, std::ios::trunc)
      << "# SoftHSM2 token store of this grantvault state directory.\n"
         "directories.tokendir = ./var/hsm/tokens/\nobjectstore.backend = file\n"
         "log.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\n"
         "library.reset_on_fork = false\n";
  EXPECT_FALSE(token_seen_from_root());
  CommandResult again = init_from_work();
  ASSERT_EQ(again.exit_code, 0) << again.out << again.err;
  EXPECT_THAT(again.out, HasSubstr("nothing created"));
  EXPECT_THAT(testing::ReadFileOrDie(conf),
              HasSubstr("\ndirectories.tokendir = " + work + "/var/hsm/tokens/\n"));
  EXPECT_TRUE(token_seen_from_root());

  // A daemon started from there on a relative path serves the same state.
  DaemonProcess d({"/bin/sh", "-c",
                   "cd '" + work +
                       "' && exec '" GV_GRANTVAULTD "' --allow-root --state-dir var --config '" +
                       config_ + "'"});
  ASSERT_TRUE(d.Start().ok()) << d.Stderr();
  CommandResult status = RunCommand({GV_CLI, "--state-dir", work + "/var", "status"});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("reachable"));
  EXPECT_EQ(d.Stop(SIGTERM), 0) << d.Stderr();
}

}  // namespace
}  // namespace grantvault
