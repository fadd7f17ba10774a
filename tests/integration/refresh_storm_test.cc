// A provider whose access tokens live shorter than callers ask (8 s tokens,
// agents asking the default 30 s): the real grantvaultd, a grant authorized
// against the real oidc-provider over TLS, 100 agents resolving through
// agent.sock. A token just minted must answer every one of them; refreshes are
// counted where they happen, at the provider.
#include <signal.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "tests/testing/daemon_config.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

using testing::DaemonProcess;

constexpr char kWorkspace[] = "ws_acme";
constexpr absl::Duration kTokenLifetime = absl::Seconds(8);

class RefreshStormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = kTokenLifetime;
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    config_ = testing::WriteAgentDaemonConfig(dir_, provider_->ca_file(), kWorkspace);
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    RegisterAndAuthorize();
  }
  void TearDown() override {
    if (daemon_ && daemon_->running()) daemon_->Stop(SIGTERM);
  }

  std::unique_ptr<ipc::Client> Connect(const std::string& socket) {
    auto client = ipc::Client::Connect(state_ + "/run/" + socket);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  v1::Response Admin(v1::Request request) {
    std::unique_ptr<ipc::Client> admin = Connect("admin.sock");
    if (admin == nullptr) return v1::Response();
    request.set_admin_user("alice-admin");
    auto response = admin->Call(std::move(request), absl::Seconds(30));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::Response();
  }

  void RegisterAndAuthorize() {
    v1::Request reg;
    v1::RegisterConnectorRequest* r = reg.mutable_register_connector();
    r->set_connector_id("demo");
    r->set_connector_type("oidc");
    r->set_client_id(provider_->clients()[0].client_id);
    r->set_client_secret(provider_->clients()[0].client_secret);
    r->set_issuer(provider_->issuer());
    v1::Response registered = Admin(reg);
    ASSERT_FALSE(registered.has_error()) << registered.error().message();

    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id(kWorkspace);
    begin.mutable_begin_authorization()->set_connector_id("demo");
    for (const char* scope : {"openid", "offline_access", "read"}) {
      begin.mutable_begin_authorization()->add_scopes(scope);
    }
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

  // A resolve with the default min_valid_seconds (0 → the daemon's 30 s).
  static v1::Request DefaultResolve() {
    v1::Request request;
    request.mutable_resolve()->set_workspace_id(kWorkspace);
    request.mutable_resolve()->set_connector_id("demo");
    return request;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::string state_, config_, grant_id_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(RefreshStormTest, AHundredResolvesOfEightSecondTokensCauseOneRefresh) {
  ASSERT_EQ(provider_->RefreshesServed(), 0);  // the authorization exchanged a code only
  // 100 agents, each on its own connection, in waves of 10: a wave starts once the one
  // before has its answers (agents arriving over time, as `grantvault resolve` processes
  // do). Before the fix each wave refreshed again: an 8 s token is never valid for 30 s.
  constexpr size_t kWaves = 10;
  constexpr size_t kPerWave = 10;
  std::vector<std::unique_ptr<ipc::Client>> agents;
  for (size_t i = 0; i < kWaves * kPerWave; ++i) {
    agents.push_back(Connect("agent.sock"));
    ASSERT_NE(agents.back(), nullptr);
  }
  const absl::Time first_call = absl::Now();
  std::vector<absl::StatusOr<v1::Response>> answers;
  for (size_t i = 0; i < kWaves * kPerWave; ++i) answers.emplace_back(absl::UnknownError("unset"));
  for (size_t wave = 0; wave < kWaves; ++wave) {
    std::vector<std::thread> callers;
    for (size_t i = wave * kPerWave; i < (wave + 1) * kPerWave; ++i) {
      callers.emplace_back(
          [&, i] { answers[i] = agents[i]->Call(DefaultResolve(), absl::Seconds(30)); });
    }
    for (std::thread& t : callers) t.join();
  }
  const absl::Time last_answer = absl::Now();

  std::set<std::string> tokens;
  std::set<int64_t> expiries;
  for (const auto& answer : answers) {
    ASSERT_TRUE(answer.ok()) << answer.status();
    ASSERT_TRUE(answer->has_resolve()) << answer->error().message() << daemon_->Stderr();
    tokens.insert(answer->resolve().access_token());
    expiries.insert(answer->resolve().expires_at_ms());
  }
  EXPECT_EQ(provider_->RefreshesServed(), 1) << provider_->Log();
  EXPECT_EQ(tokens.size(), 1u);
  ASSERT_EQ(expiries.size(), 1u);
  // The token's real expiry, not a stretched one: 8 s after it was minted, which was
  // between the first call and the last answer.
  const absl::Time expires_at = absl::FromUnixMillis(*expiries.begin());
  EXPECT_GE(expires_at, first_call + kTokenLifetime - absl::Milliseconds(1));
  EXPECT_LE(expires_at, last_answer + kTokenLifetime);
  // The daemon never logs the token.
  EXPECT_THAT(daemon_->Stderr(), ::testing::Not(::testing::HasSubstr(*tokens.begin())));
}

}  // namespace
}  // namespace grantvault
