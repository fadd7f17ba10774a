// End-to-end Resolve: the real grantvaultd, a grant authorized against the
// real oidc-provider over TLS (refresh tokens rotated on every use, a reused
// refresh token kills the grant), agents calling agent.sock through the C++
// client library, and the caller policy in force.
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "tests/integration/raw_socket.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using testing::DaemonProcess;
using ::testing::HasSubstr;

constexpr char kWorkspace[] = "ws_acme";

// The policy the tests start from: this process's uid is an agent of ws_acme,
// which declares two tools of connector "demo".
std::string PolicyFor(uid_t uid, bool allow_without_tool = false) {
  return absl::StrCat(R"([[callers]]
uid = )",
                      uid, R"(
role = "agent"
workspaces = ["ws_acme"]

[workspaces.ws_acme]
allow_resolve_without_tool = )",
                      allow_without_tool ? "true" : "false", R"(

[[workspaces.ws_acme.tools]]
name = "read_docs"
connector = "demo"
scopes = ["read"]

[[workspaces.ws_acme.tools]]
name = "write_docs"
connector = "demo"
scopes = ["read", "write"]

[workspaces.ws_other]
allow_resolve_without_tool = true
)");
}

class ResolveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = absl::Seconds(4);
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
    policy_ = dir_.Join("policy.toml");
    WritePolicy(PolicyFor(::getuid()));
    WriteConfig("");
    StartDaemon();
    RegisterAndAuthorize({"openid", "offline_access", "read"});
  }
  void TearDown() override {
    if (daemon_ && daemon_->running()) daemon_->Stop(SIGTERM);
  }

  void WritePolicy(const std::string& text) { std::ofstream(policy_, std::ios::trunc) << text; }

  // `limits` goes into the [limits] table.
  void WriteConfig(const std::string& limits) {
    std::ofstream(config_, std::ios::trunc)
        << "[oauth]\nca_file = \"" << provider_->ca_file()
        << "\"\nuse_system_trust_store = false\n[policy]\nfile = \"" << policy_
        << "\"\n[limits]\nmax_in_flight_per_connection = 64\n"
        << limits
        // Repeats are counted into one record for 400 ms (and no fsync takes it
        // sooner): long enough for a test to reach the connection's memo of them
        // (RepeatMemo) after a fork and an exit.
        << "[audit]\nrepeat_record_ms = 400\ngroup_commit_ms = 1000\n";
  }

  // Writes the policy and waits until the daemon has reloaded it.
  void ReloadPolicy(const std::string& text) {
    auto reloads = [&] {
      const std::string log = daemon_->Stderr();
      int n = 0;
      for (size_t at = log.find("policy.reloaded file="); at != std::string::npos;
           at = log.find("policy.reloaded file=", at + 1)) {
        ++n;
      }
      return n;
    };
    const int before = reloads();
    WritePolicy(text);
    daemon_->Signal(SIGHUP);
    ASSERT_TRUE(testing::WaitFor([&] { return reloads() > before; }));
  }

  // Restarts the daemon on the same state with `limits` in its [limits].
  void RestartWithLimits(const std::string& limits) {
    admin_.reset();
    agent_.reset();
    daemon_->Stop(SIGTERM);
    WriteConfig(limits);
    StartDaemon();
  }

  void StartDaemon() {
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  std::unique_ptr<ipc::Client> Connect(const std::string& socket) {
    auto client = ipc::Client::Connect(state_ + "/run/" + socket);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  v1::Response Admin(v1::Request request) {
    if (admin_ == nullptr) admin_ = Connect("admin.sock");
    request.set_admin_user("alice-admin");
    auto response = admin_->Call(std::move(request), absl::Seconds(30));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::Response();
  }

  void RegisterAndAuthorize(const std::vector<std::string>& scopes) {
    v1::Request reg;
    v1::RegisterConnectorRequest* r = reg.mutable_register_connector();
    r->set_connector_id("demo");
    r->set_connector_type("oidc");
    r->set_client_id(provider_->clients()[0].client_id);
    r->set_client_secret(provider_->clients()[0].client_secret);
    r->set_issuer(provider_->issuer());
    v1::Response registered = Admin(reg);
    ASSERT_FALSE(registered.has_error()) << registered.error().message();
    Authorize(scopes);
  }

  void Authorize(const std::vector<std::string>& scopes) {
    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id(kWorkspace);
    begin.mutable_begin_authorization()->set_connector_id("demo");
    for (const std::string& s : scopes) begin.mutable_begin_authorization()->add_scopes(s);
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    v1::Response started = Admin(begin);
    ASSERT_FALSE(started.has_error()) << started.error().message();
    absl::StatusOr<std::string> redirect =
        provider_->Approve(started.begin_authorization().authorization_url());
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    v1::Request complete;
    complete.mutable_complete_authorization()->set_callback_url(*redirect);
    v1::Response done = Admin(complete);
    ASSERT_FALSE(done.has_error()) << done.error().message() << daemon_->Stderr();
    grant_id_ = done.complete_authorization().grant().grant_id();
  }

  static v1::Request ResolveRequest(const std::string& workspace, const std::string& tool,
                                    std::vector<std::string> scopes = {},
                                    uint32_t min_valid_seconds = 1) {
    v1::Request request;
    v1::ResolveRequest* in = request.mutable_resolve();
    in->set_workspace_id(workspace);
    in->set_connector_id("demo");
    in->set_tool(tool);
    for (const std::string& s : scopes) in->add_scopes(s);
    in->set_min_valid_seconds(min_valid_seconds);
    return request;
  }

  v1::Response Resolve(const v1::Request& request) {
    if (agent_ == nullptr) agent_ = Connect("agent.sock");
    auto response = agent_->Call(request, absl::Seconds(30));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::Response();
  }

  // "POST /token 200" lines: the code exchange plus every refresh.
  int TokenRequests() const {
    int n = 0;
    for (absl::string_view line : absl::StrSplit(provider_->Log(), '\n')) {
      if (absl::StrContains(line, "POST /token 200")) ++n;
    }
    return n;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::string state_, config_, policy_, grant_id_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<ipc::Client> admin_, agent_;
};

TEST_F(ResolveTest, AnAllowedToolGetsATokenBoundToTheGrantsAccount) {
  v1::Response r = Resolve(ResolveRequest(kWorkspace, "read_docs"));
  ASSERT_TRUE(r.has_resolve()) << r.error().message() << daemon_->Stderr();
  EXPECT_FALSE(r.resolve().access_token().empty());
  EXPECT_EQ(r.resolve().grant_id(), grant_id_);
  EXPECT_EQ(r.resolve().account_id(), "alice");
  EXPECT_EQ(r.resolve().token_type(), "Bearer");
  EXPECT_GT(r.resolve().expires_at_ms(), absl::ToUnixMillis(absl::Now()));

  // Cached: the same token again, and no second refresh.
  const int before = TokenRequests();
  v1::Response again = Resolve(ResolveRequest(kWorkspace, "read_docs"));
  ASSERT_TRUE(again.has_resolve());
  EXPECT_EQ(again.resolve().access_token(), r.resolve().access_token());
  EXPECT_EQ(TokenRequests(), before);
  // The daemon never logs the token.
  EXPECT_THAT(daemon_->Stderr(), ::testing::Not(HasSubstr(r.resolve().access_token())));
}

TEST_F(ResolveTest, FiveHundredConcurrentResolvesOfAnExpiredTokenMakeOneRefresh) {
  ASSERT_TRUE(Resolve(ResolveRequest(kWorkspace, "read_docs")).has_resolve());
  absl::SleepFor(absl::Seconds(4.5));  // the cached access token expires
  const int before = TokenRequests();

  constexpr int kConnections = 50;
  constexpr int kPerConnection = 10;
  std::vector<std::unique_ptr<ipc::Client>> clients;
  for (int i = 0; i < kConnections; ++i) clients.push_back(Connect("agent.sock"));
  absl::Mutex mu;
  std::map<std::string, int> tokens;
  std::vector<std::string> errors;
  int done = 0;
  for (auto& client : clients) {
    for (int j = 0; j < kPerConnection; ++j) {
      client->CallAsync(ResolveRequest(kWorkspace, "read_docs"), absl::Seconds(30),
                        [&](absl::StatusOr<v1::Response> r) {
                          absl::MutexLock lock(&mu);
                          ++done;
                          if (!r.ok()) {
                            errors.push_back(std::string(r.status().message()));
                          } else if (r->has_error()) {
                            errors.push_back(r->error().message());
                          } else {
                            ++tokens[r->resolve().access_token()];
                          }
                        });
    }
  }
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(
        mu.AwaitWithTimeout(absl::Condition(
                                +[](int* d) { return *d == kConnections * kPerConnection; }, &done),
                            absl::Seconds(60)));
  }
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_EQ(tokens.size(), 1u);  // every caller got the same new token
  EXPECT_EQ(TokenRequests(), before + 1) << provider_->Log();

  // The grant is alive: the rotated refresh token works (a duplicate refresh
  // would have made the server revoke the whole grant).
  absl::SleepFor(absl::Seconds(4.5));
  v1::Response later = Resolve(ResolveRequest(kWorkspace, "read_docs"));
  ASSERT_TRUE(later.has_resolve()) << later.error().message();
  EXPECT_EQ(TokenRequests(), before + 2);
}

TEST_F(ResolveTest, ThePolicyRefusesWhatItDoesNotAllow) {
  auto denied = [&](const v1::Request& request) {
    v1::Response r = Resolve(request);
    EXPECT_TRUE(r.has_error());
    EXPECT_EQ(r.error().code(), v1::Error::PERMISSION_DENIED) << r.error().message();
    return r.error().message();
  };
  EXPECT_THAT(denied(ResolveRequest("ws_other", "read_docs")), HasSubstr("ws_other"));
  EXPECT_THAT(denied(ResolveRequest(kWorkspace, "delete_everything")), HasSubstr("not declared"));
  EXPECT_THAT(denied(ResolveRequest(kWorkspace, "read_docs", {"write"})), HasSubstr("beyond tool"));
  // write_docs declares "write", but the grant was authorized without it.
  EXPECT_THAT(denied(ResolveRequest(kWorkspace, "write_docs", {"read", "write"})),
              HasSubstr("beyond the grant"));
  // Without a tool, only when the workspace allows it.
  EXPECT_THAT(denied(ResolveRequest(kWorkspace, "")), HasSubstr("without a tool"));
  // Nor may it listen to another workspace's grant events.
  {
    absl::Notification ended;
    absl::Status end;
    std::unique_ptr<ipc::Client> subscriber = Connect("agent.sock");
    ipc::SubscribeGrantEvents(
        *subscriber, "ws_other", [](const v1::GrantEvent&) {},
        [&](absl::Status s) {
          end = s;
          ended.Notify();
        });
    ASSERT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(absl::IsPermissionDenied(end)) << end;
  }

  // A subscription the policy allows now…
  absl::Notification subscription_ended;
  absl::Status subscription_end;
  std::unique_ptr<ipc::Client> listener = Connect("agent.sock");
  ipc::SubscribeGrantEvents(
      *listener, kWorkspace, [](const v1::GrantEvent&) {},
      [&](absl::Status s) {
        subscription_end = s;
        subscription_ended.Notify();
      });
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_FALSE(subscription_ended.HasBeenNotified());

  // A uid not in the policy: the policy is reloaded to name another uid.
  // The open connection's request is refused and the connection closed (a
  // caller no rule names can do nothing with it); a new connection is refused
  // at Hello.
  ReloadPolicy(PolicyFor(::getuid() + 4242));
  EXPECT_THAT(denied(ResolveRequest(kWorkspace, "read_docs")),
              HasSubstr(absl::StrCat("uid ", ::getuid(), " is not in the policy")));
  agent_.reset();
  auto refused_at_hello = [&] {
    auto client = ipc::Client::Connect(state_ + "/run/agent.sock");
    EXPECT_FALSE(client.ok());
    EXPECT_TRUE(absl::IsPermissionDenied(client.status())) << client.status();
    return std::string(client.status().message());
  };
  EXPECT_THAT(refused_at_hello(),
              HasSubstr(absl::StrCat("uid ", ::getuid(), " is not in the policy")));
  // …is ended by the reload that no longer allows it.
  ASSERT_TRUE(subscription_ended.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(absl::IsPermissionDenied(subscription_end)) << subscription_end;

  // A policy that does not parse keeps the previous one.
  WritePolicy("[[callers]]\nrole = \"agent\"\nworkspaces = [\"ws_acme\"]\nbogus = 1\n");
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "policy.reload_failed"); }));
  EXPECT_THAT(refused_at_hello(), HasSubstr("is not in the policy"));

  // And a good one applies at once.
  WritePolicy(PolicyFor(::getuid(), /*allow_without_tool=*/true));
  daemon_->Signal(SIGHUP);
  absl::SleepFor(absl::Milliseconds(300));
  v1::Response ok = Resolve(ResolveRequest(kWorkspace, ""));
  EXPECT_TRUE(ok.has_resolve()) << ok.error().message();
}

// One connection repeating one request is answered from its memo of the last
// counted release (front/service.h, RepeatMemo): every change the answer
// depends on must end the memo at once.
TEST_F(ResolveTest, ARepeatedResolveIsAnsweredAfreshOnceAnythingItRestsOnChanges) {
  const v1::Request read = ResolveRequest(kWorkspace, "read_docs");
  // A first release, a repeat that starts a counted record, repeats counted into it.
  std::string token;
  for (int i = 0; i < 4; ++i) {
    v1::Response r = Resolve(read);
    ASSERT_TRUE(r.has_resolve()) << r.error().message();
    if (token.empty()) token = r.resolve().access_token();
    EXPECT_EQ(r.resolve().access_token(), token);
  }
  auto code = [&](const v1::Request& request) {
    v1::Response r = Resolve(request);
    return r.has_error() ? r.error().code() : v1::Error::CODE_UNSPECIFIED;
  };
  // Another request on the same connection is checked in full.
  EXPECT_EQ(code(ResolveRequest(kWorkspace, "read_docs", {"write"})), v1::Error::PERMISSION_DENIED);
  EXPECT_EQ(Resolve(read).resolve().access_token(), token);

  // A reloaded policy applies to the very next repeat (and, naming the
  // caller no more, closes its connection).
  ReloadPolicy(PolicyFor(::getuid() + 4242));
  EXPECT_EQ(code(read), v1::Error::PERMISSION_DENIED);
  agent_.reset();
  ReloadPolicy(PolicyFor(::getuid()));
  EXPECT_EQ(code(read), v1::Error::CODE_UNSPECIFIED);
  EXPECT_EQ(Resolve(read).resolve().access_token(), token);

  // A longer min_valid than the token has left is not served from the memo (which checks the
  // expiry only): the full path answers it, by the cache's rule for an ask beyond what the
  // provider's 4 s tokens can give — a token still in the first half of its life, or a new one
  // (docs/refresh.md, "What min_valid can ask").
  const absl::Time asked_longer = absl::Now();
  v1::Response longer = Resolve(ResolveRequest(kWorkspace, "read_docs", {}, 600));
  ASSERT_TRUE(longer.has_resolve()) << longer.error().message();
  EXPECT_GE(absl::FromUnixMillis(longer.resolve().expires_at_ms()),
            asked_longer + absl::Seconds(2) - absl::Milliseconds(1));
  token = longer.resolve().access_token();

  // Repeats never get a token closer to its expiry than they ask for (1 s),
  // and the refreshes reach the connection; at least one ahead of expiry
  // (the provider's tokens live 4 s, refresh-ahead starts 2 s before the
  // end): the old token still had more than the asked second left.
  int switches = 0;
  bool switched_ahead = false;
  std::string last = token;
  absl::Time last_expiry = absl::FromUnixMillis(longer.resolve().expires_at_ms());
  const absl::Time end = absl::Now() + absl::Seconds(9);
  while (absl::Now() < end) {
    v1::Response r = Resolve(read);
    const absl::Time now = absl::Now();
    ASSERT_TRUE(r.has_resolve()) << r.error().message();
    EXPECT_GE(absl::FromUnixMillis(r.resolve().expires_at_ms()), now + absl::Seconds(1));
    if (r.resolve().access_token() != last) {
      ++switches;
      if (last_expiry - now > absl::Milliseconds(1300)) switched_ahead = true;
      last = r.resolve().access_token();
      last_expiry = absl::FromUnixMillis(r.resolve().expires_at_ms());
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GE(switches, 2);
  EXPECT_TRUE(switched_ahead);

  // A revocation ends the memo before the revoke call returns.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Resolve(read).has_resolve());
  v1::Request revoke;
  revoke.mutable_revoke_grant()->set_grant_id(grant_id_);
  revoke.mutable_revoke_grant()->set_reason("memo test");
  v1::Response revoked = Admin(revoke);
  ASSERT_FALSE(revoked.has_error()) << revoked.error().message();
  EXPECT_EQ(code(read), v1::Error::REVOKED);
}

TEST_F(ResolveTest, AnUnknownConnectorIsNotFound) {
  v1::Request request = ResolveRequest(kWorkspace, "");
  WritePolicy(PolicyFor(::getuid(), /*allow_without_tool=*/true));
  daemon_->Signal(SIGHUP);
  absl::SleepFor(absl::Milliseconds(300));
  request.mutable_resolve()->set_connector_id("nope");
  v1::Response r = Resolve(request);
  ASSERT_TRUE(r.has_error());
  EXPECT_EQ(r.error().code(), v1::Error::NOT_FOUND) << r.error().message();
}

TEST_F(ResolveTest, AConnectionWhoseProcessExitedIsRefused) {
  // A child connects and says Hello (so it is attested), hands the connection
  // to a grandchild and exits; the grandchild then asks on the child's behalf.
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const std::string socket = state_ + "/run/agent.sock";
  pid_t child = ::fork();
  if (child == 0) {
    ::close(report[0]);
    testing::RawSocket raw(socket);
    if (!raw.connected() || !raw.Hello()) ::_exit(10);
    // Repeats first, so that the grandchild's request is an exact repeat of
    // the connection's last release (answered from its memo but for this check).
    for (uint64_t i = 0; i < 4; ++i) {
      v1::Request repeat = ResolveRequest(kWorkspace, "read_docs");
      repeat.set_request_id(2 + i);
      if (!raw.WriteRequest(repeat)) ::_exit(12);
      std::optional<v1::Response> r = raw.ReadResponse();
      if (!r || !r->has_resolve()) ::_exit(13);
    }
    const pid_t attested = ::getpid();
    if (::fork() == 0) {
      // Wait until the child is gone (a zombie counts as gone).
      while (::getppid() == attested) ::usleep(1000);
      ::usleep(200 * 1000);
      v1::Request last = ResolveRequest(kWorkspace, "read_docs");
      last.set_request_id(6);
      if (!raw.WriteRequest(last)) ::_exit(11);
      std::optional<v1::Response> r = raw.ReadResponse();
      const int code = r && r->has_error() ? r->error().code() : (r ? 100 : 101);
      const char byte = static_cast<char>(code);
      (void)!::write(report[1], &byte, 1);
      ::_exit(0);
    }
    ::_exit(0);
  }
  ::close(report[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  char byte = 0;
  ASSERT_EQ(::read(report[0], &byte, 1), 1);
  ::close(report[0]);
  EXPECT_EQ(byte, static_cast<char>(v1::Error::PERMISSION_DENIED));
  // The refusal is logged after it is answered.
  EXPECT_TRUE(testing::WaitFor([&] {
    return daemon_->Stderr().find("exited") != std::string::npos;
  })) << daemon_->Stderr();
}

// The executable this test runs as; its forks run it too until they exec.
std::string SelfExe() {
  char buf[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Empties this process's capability sets. The daemon runs without any
// capability (sandbox/), even as root, and the kernel lets a process read
// another's /proc/<pid>/exe only if the other holds no capability the reader
// lacks: an agent attested by executable holds none, as every agent of an
// unprivileged user does. (SECBIT_NOROOT first, so that an exec as root
// does not give them back.)
bool DropCapabilities() {
  if (::geteuid() == 0 && ::prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED) != 0) {
    return false;
  }
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  return ::syscall(SYS_capset, &header, data) == 0;
}

// `PolicyFor(uid)` with its caller rule also matching `matcher` (an `exe` or
// `exe_sha256` line).
std::string PolicyWithExeRule(uid_t uid, const std::string& matcher) {
  std::string policy = PolicyFor(uid);
  const std::string role = "role = \"agent\"";
  policy.replace(policy.find(role), role.size(), matcher + "\n" + role);
  return policy;
}

// A child connects to agent.sock and says Hello while it runs this test's
// executable, resolves `resolves_before` times as that executable, then execs
// exec_resolver with the connection kept open across the exec (no CLOEXEC),
// which asks once more on it. Returns exec_resolver's report line, or why the
// child failed.
std::string ExecAfterHelloAndResolve(const std::string& socket, int resolves_before) {
  int out[2];
  if (::pipe(out) != 0) return "pipe failed";
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(out[0]);
    if (!DropCapabilities()) ::_exit(9);
    testing::RawSocket raw(socket);
    if (!raw.connected() || !raw.Hello()) ::_exit(10);
    for (int i = 0; i < resolves_before; ++i) {
      v1::Request request;
      v1::ResolveRequest* in = request.mutable_resolve();
      in->set_workspace_id(kWorkspace);
      in->set_connector_id("demo");
      in->set_tool("read_docs");
      in->set_min_valid_seconds(1);
      request.set_request_id(static_cast<uint64_t>(2 + i));
      if (!raw.WriteRequest(request)) ::_exit(11);
      std::optional<v1::Response> r = raw.ReadResponse(absl::Seconds(20));
      if (!r || !r->has_resolve()) ::_exit(12);
    }
    const int fd = raw.fd();
    if (::fcntl(fd, F_SETFD, 0) != 0 || ::dup2(out[1], STDOUT_FILENO) < 0) ::_exit(13);
    const std::string fd_arg = std::to_string(fd);
    const std::string id_arg = std::to_string(2 + resolves_before);
    ::execl(GV_EXEC_RESOLVER, GV_EXEC_RESOLVER, fd_arg.c_str(), kWorkspace, "read_docs",
            id_arg.c_str(), static_cast<char*>(nullptr));
    ::_exit(14);
  }
  ::close(out[1]);
  std::string report;
  char buf[256];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof(buf))) > 0) report.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::StrCat("child failed with status ", status, ": ", report);
  }
  return report;
}

// pid, start time and pidfd survive execve: the daemon must notice that the
// process it attested as one executable now runs another, before every
// release, including a repeat answered from the connection's memo.
TEST_F(ResolveTest, AProcessThatExecsAnotherProgramAfterItWasAttestedGetsNoToken) {
  WritePolicy(PolicyWithExeRule(::getuid(), absl::StrCat("exe = \"", SelfExe(), "\"")));
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "policy.reloaded file="); }));
  const std::string socket = state_ + "/run/agent.sock";
  // Allowed as this executable (four times, so the fourth is a memo repeat),
  // refused once it has become exec_resolver, and the connection closed.
  EXPECT_EQ(ExecAfterHelloAndResolve(socket, 4),
            absl::StrCat("code=", static_cast<int>(v1::Error::UNAUTHENTICATED), " closed=1\n"));
  // And without any release before the exec.
  EXPECT_EQ(ExecAfterHelloAndResolve(socket, 0),
            absl::StrCat("code=", static_cast<int>(v1::Error::UNAUTHENTICATED), " closed=1\n"));
  EXPECT_TRUE(testing::WaitFor([&] {
    return absl::StrContains(daemon_->Stderr(), "executed another program since it connected");
  })) << daemon_->Stderr();
}

// The executable is identified when the connection is accepted, not when a
// rule first needs it: a process that connects as one program and then execs
// the allowed one is still the program that connected (its hash is taken of
// the file attested at accept, never of whatever runs by that pid later).
TEST_F(ResolveTest, AProcessThatExecsTheAllowedProgramAfterHelloGetsNoToken) {
  testing::CommandResult sum = testing::RunCommand({"/usr/bin/sha256sum", GV_EXEC_RESOLVER});
  ASSERT_EQ(sum.exit_code, 0) << sum.err;
  const std::string hash = sum.out.substr(0, 64);
  WritePolicy(PolicyWithExeRule(::getuid(), absl::StrCat("exe_sha256 = \"", hash, "\"")));
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "policy.reloaded file="); }));
  EXPECT_EQ(ExecAfterHelloAndResolve(state_ + "/run/agent.sock", 0),
            absl::StrCat("code=", static_cast<int>(v1::Error::UNAUTHENTICATED), " closed=1\n"));
}

// An exe_sha256 rule: the hash is taken on a worker by the first request
// that needs it, of the file attested at accept; a request refused for its
// own sake before that does not cost the connection.
TEST_F(ResolveTest, AnExeSha256RuleAllowsTheHashedProgramOnItsConnection) {
  testing::CommandResult sum = testing::RunCommand({"/usr/bin/sha256sum", SelfExe()});
  ASSERT_EQ(sum.exit_code, 0) << sum.err;
  ReloadPolicy(
      PolicyWithExeRule(::getuid(), absl::StrCat("exe_sha256 = \"", sum.out.substr(0, 64), "\"")));
  ASSERT_TRUE(DropCapabilities());  // this process is the agent
  testing::RawSocket raw(state_ + "/run/agent.sock");
  ASSERT_TRUE(raw.Hello());
  v1::Request malformed = ResolveRequest("", "read_docs");
  malformed.set_request_id(2);
  ASSERT_TRUE(raw.WriteRequest(malformed));
  std::optional<v1::Response> r = raw.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->error().code(), v1::Error::INVALID_ARGUMENT);
  v1::Request good = ResolveRequest(kWorkspace, "read_docs");
  good.set_request_id(3);
  ASSERT_TRUE(raw.WriteRequest(good));
  r = raw.ReadResponse(absl::Seconds(20));
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->has_resolve()) << r->error().message();
}

// agent.sock full of idle connections of one uid: admin.sock has limits of
// its own, so an admin can still connect and revoke.
TEST_F(ResolveTest, AFullAgentSocketLeavesAdminsAbleToRevoke) {
  RestartWithLimits("agent_max_connections = 12\nagent_max_connections_per_uid = 12\n");
  const std::string socket = state_ + "/run/agent.sock";
  std::vector<std::unique_ptr<testing::RawSocket>> idle;
  for (int i = 0; i < 12; ++i) {
    idle.push_back(std::make_unique<testing::RawSocket>(socket));
    ASSERT_TRUE(idle.back()->Hello()) << i;
  }
  // The next agent connection is refused, and told why.
  testing::RawSocket over(socket);
  ASSERT_TRUE(over.connected());
  std::optional<v1::Response> refusal = over.ReadResponse();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->request_id(), 0u);
  EXPECT_EQ(refusal->error().code(), v1::Error::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refusal->error().message(), HasSubstr("12 connections open, the limit is 12"));
  EXPECT_TRUE(over.ClosedByPeer(absl::Seconds(5)));
  auto client = ipc::Client::Connect(socket);
  EXPECT_TRUE(absl::IsResourceExhausted(client.status())) << client.status();

  v1::Request revoke;
  revoke.mutable_revoke_grant()->set_grant_id(grant_id_);
  revoke.mutable_revoke_grant()->set_reason("agent.sock is full");
  v1::Response revoked = Admin(revoke);
  ASSERT_FALSE(revoked.has_error()) << revoked.error().message();
  EXPECT_EQ(revoked.revoke_grant().grant().status(), "revoked");
  // The idle agent connections are still open (no idle timeout here).
  v1::Request status;
  status.set_request_id(7);
  status.mutable_status();
  ASSERT_TRUE(idle.front()->WriteRequest(status));
  std::optional<v1::Response> answer = idle.front()->ReadResponse();
  ASSERT_TRUE(answer.has_value());
  EXPECT_TRUE(answer->has_status());
}

TEST_F(ResolveTest, AgentConnectionsAreCappedPerUidAndClosedWhenIdle) {
  RestartWithLimits("agent_max_connections_per_uid = 3\nagent_idle_timeout_ms = 1500\n");
  const std::string socket = state_ + "/run/agent.sock";
  std::vector<std::unique_ptr<testing::RawSocket>> mine;
  for (int i = 0; i < 3; ++i) {
    mine.push_back(std::make_unique<testing::RawSocket>(socket));
    ASSERT_TRUE(mine.back()->Hello()) << i;
  }
  const absl::Time last_activity = absl::Now();
  testing::RawSocket fourth(socket);
  std::optional<v1::Response> refusal = fourth.ReadResponse();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->error().code(), v1::Error::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refusal->error().message(),
              HasSubstr(absl::StrCat("uid ", ::getuid(),
                                     " has 3 connections open, the limit per uid is 3")));
  EXPECT_TRUE(fourth.ClosedByPeer(absl::Seconds(5)));

  // Idle connections are closed after the idle timeout (not before it).
  for (auto& connection : mine) EXPECT_TRUE(connection->ClosedByPeer(absl::Seconds(30)));
  EXPECT_GE(absl::Now() - last_activity, absl::Milliseconds(1400));
  mine.clear();
  EXPECT_TRUE(testing::WaitFor([&] {
    return absl::StrContains(daemon_->Stderr(), "idle for 1.5s");
  })) << daemon_->Stderr();
  // Their slots are free again.
  ASSERT_TRUE(testing::WaitFor([&] {
    testing::RawSocket again(socket);
    return again.Hello();
  }));
  v1::Response r = Resolve(ResolveRequest(kWorkspace, "read_docs"));
  EXPECT_TRUE(r.has_resolve()) << r.error().message();
}

TEST_F(ResolveTest, APeerThatCannotBeServedIsClosedAtOnce) {
  // No rule names this uid: refused and closed at once, without waiting for
  // anything from it (the idle timeout is 5 minutes here).
  ReloadPolicy(PolicyFor(::getuid() + 4242));
  {
    testing::RawSocket silent(state_ + "/run/agent.sock");
    std::optional<v1::Response> refusal = silent.ReadResponse();
    ASSERT_TRUE(refusal.has_value());
    EXPECT_EQ(refusal->request_id(), 0u);
    EXPECT_EQ(refusal->error().code(), v1::Error::PERMISSION_DENIED);
    EXPECT_THAT(refusal->error().message(), HasSubstr("is not in the policy"));
    EXPECT_TRUE(silent.ClosedByPeer(absl::Seconds(5)));
  }
  // A peer that says Hello at once gets the same answer. The daemon does not
  // wait for it, so the write may meet a socket already closed (EPIPE); the
  // refusal is still there to read (a Unix socket keeps what was sent).
  testing::RawSocket unmatched(state_ + "/run/agent.sock");
  v1::Request hello;
  hello.set_request_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  (void)unmatched.WriteRequest(hello);
  std::optional<v1::Response> answer = unmatched.ReadResponse();
  ASSERT_TRUE(answer.has_value());
  EXPECT_EQ(answer->error().code(), v1::Error::PERMISSION_DENIED);
  EXPECT_THAT(answer->error().message(), HasSubstr("is not in the policy"));
  EXPECT_TRUE(unmatched.ClosedByPeer(absl::Seconds(5)));
  // (Logged once the close is done, which the peer may see first.)
  EXPECT_TRUE(testing::WaitFor([&] {
    return absl::StrContains(daemon_->Stderr(), "caller attestation failed");
  })) << daemon_->Stderr();
}

TEST_F(ResolveTest, ScopesSuggestAndAWiderAuthorizationIsWarnedAbout) {
  v1::Request suggest;
  suggest.mutable_suggest_scopes()->set_workspace_id(kWorkspace);
  suggest.mutable_suggest_scopes()->set_connector_id("demo");
  v1::Response s = Admin(suggest);
  ASSERT_TRUE(s.has_suggest_scopes()) << s.error().message();
  EXPECT_THAT(s.suggest_scopes().scopes(), ::testing::ElementsAre("read", "write"));

  v1::Request wide;
  wide.mutable_begin_authorization()->set_workspace_id(kWorkspace);
  wide.mutable_begin_authorization()->set_connector_id("demo");
  for (const char* scope : {"read", "write", "admin"}) {
    wide.mutable_begin_authorization()->add_scopes(scope);
  }
  wide.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
  v1::Response w = Admin(wide);
  ASSERT_TRUE(w.has_begin_authorization()) << w.error().message();
  EXPECT_THAT(w.begin_authorization().unneeded_scopes(), ::testing::ElementsAre("admin"));

  v1::Request exact;
  exact.mutable_begin_authorization()->set_workspace_id(kWorkspace);
  exact.mutable_begin_authorization()->set_connector_id("demo");
  exact.mutable_begin_authorization()->set_from_manifests(true);
  exact.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
  v1::Response e = Admin(exact);
  ASSERT_TRUE(e.has_begin_authorization()) << e.error().message();
  // The connector's protocol scopes (openid, …) come on top, never counted as unneeded.
  EXPECT_THAT(e.begin_authorization().scopes(), ::testing::IsSupersetOf({"read", "write"}));
  EXPECT_THAT(e.begin_authorization().scopes(), ::testing::Not(::testing::Contains("admin")));
  EXPECT_TRUE(e.begin_authorization().unneeded_scopes().empty());
}

}  // namespace
}  // namespace grantvault
