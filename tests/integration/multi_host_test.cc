// Several hosts (docs/operations.md, "Several hosts"): two real grantvaultd
// processes sharing one PostgreSQL database (a real server the test starts)
// and one SoftHSM2 token, a grant authorized against the real oidc-provider,
// whose refresh tokens rotate on every use and whose reuse detection kills
// the grant when a rotated token is sent again.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/ids.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "tests/testing/daemon_config.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using testing::DaemonProcess;

constexpr char kWorkspace[] = "ws_acme";
constexpr absl::Duration kTokenLifetime = absl::Seconds(2);

class MultiHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = kTokenLifetime;
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    auto postgres = testing::SharedPostgresServer();
    ASSERT_TRUE(postgres.ok()) << postgres.status();
    const std::string database = absl::AsciiStrToLower(NewId("hosts_"));
    ASSERT_TRUE((*postgres)->CreateDatabase(database).ok());
    // One token for both hosts, as a network HSM would be; this process lets go of it.
    auto token = testing::SoftHsmToken::Create();
    ASSERT_TRUE(token.ok()) << token.status();
    token_ = std::move(*token);
    token_->Close();
    // The daemons' own copy of the password: they drop every capability, and
    // the server's directory is the postgres user's.
    password_file_ = dirs_[0].Join("db.password");
    {
      std::ifstream in((*postgres)->password_file());
      std::ofstream(password_file_) << in.rdbuf();
    }
    ASSERT_EQ(::chmod(password_file_.c_str(), 0600), 0);
    for (int host = 0; host < 2; ++host) {
      testing::TempDir& dir = dirs_[host];
      state_[host] = dir.Join("state");
      const std::string config =
          testing::WriteAgentDaemonConfig(dir, provider_->ca_file(), kWorkspace);
      std::ofstream(config, std::ios::app)
          << "[hsm]\ntoken_label = \"" << token_->options().token_label << "\"\npin_file = \""
          << token_->options().pin_file << "\"\n[store]\npostgres = \""
          << (*postgres)->ConnectionString(database) << "\"\npassword_file = \"" << password_file_
          << "\"\n";
      daemons_[host] = std::make_unique<DaemonProcess>(std::vector<std::string>{
          GV_GRANTVAULTD, "--allow-root", "--state-dir", state_[host], "--config", config});
      // One after the other: the first makes KEK 1 and the audit key in the token.
      absl::Status started = daemons_[host]->Start();
      ASSERT_TRUE(started.ok()) << started << daemons_[host]->Stderr();
    }
    RegisterAndAuthorize();
  }
  void TearDown() override {
    for (auto& daemon : daemons_) {
      if (daemon && daemon->running()) daemon->Stop(SIGTERM);
    }
  }

  std::unique_ptr<ipc::Client> Connect(int host, const std::string& socket) {
    auto client = ipc::Client::Connect(state_[host] + "/run/" + socket);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  v1::Response Admin(int host, v1::Request request) {
    std::unique_ptr<ipc::Client> admin = Connect(host, "admin.sock");
    if (admin == nullptr) return v1::Response();
    request.set_admin_user("alice-admin");
    auto response = admin->Call(std::move(request), absl::Seconds(30));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::Response();
  }

  // On host 0.
  void RegisterAndAuthorize() {
    v1::Request reg;
    v1::RegisterConnectorRequest* r = reg.mutable_register_connector();
    r->set_connector_id("demo");
    r->set_connector_type("oidc");
    r->set_client_id(provider_->clients()[0].client_id);
    r->set_client_secret(provider_->clients()[0].client_secret);
    r->set_issuer(provider_->issuer());
    v1::Response registered = Admin(0, reg);
    ASSERT_FALSE(registered.has_error()) << registered.error().message();
    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id(kWorkspace);
    begin.mutable_begin_authorization()->set_connector_id("demo");
    for (const char* scope : {"openid", "offline_access", "read"}) {
      begin.mutable_begin_authorization()->add_scopes(scope);
    }
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    v1::Response started = Admin(0, begin);
    ASSERT_FALSE(started.has_error()) << started.error().message();
    absl::StatusOr<std::string> redirect =
        provider_->Approve(started.begin_authorization().authorization_url());
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    v1::Request complete;
    complete.mutable_complete_authorization()->set_callback_url(*redirect);
    v1::Response done = Admin(0, complete);
    ASSERT_FALSE(done.has_error()) << done.error().message() << daemons_[0]->Stderr();
    grant_id_ = done.complete_authorization().grant().grant_id();
    authorized_at_ = absl::Now();
  }

  static v1::Request Resolve(uint32_t min_valid_seconds = 1) {
    v1::Request request;
    request.mutable_resolve()->set_workspace_id(kWorkspace);
    request.mutable_resolve()->set_connector_id("demo");
    request.mutable_resolve()->set_min_valid_seconds(min_valid_seconds);
    return request;
  }

  std::string Logs() const {
    return absl::StrCat("host 0:\n", daemons_[0]->Stderr(), "\nhost 1:\n", daemons_[1]->Stderr(),
                        "\nprovider:\n", provider_->Log());
  }

  testing::TempDir dirs_[2];
  std::string state_[2];
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::unique_ptr<testing::SoftHsmToken> token_;
  std::unique_ptr<DaemonProcess> daemons_[2];
  std::string password_file_;
  std::string grant_id_;
  absl::Time authorized_at_;
};

// 500 resolves at once, half on each host, of a grant whose access token has
// expired: one refresh between them (the other host uses the winner's
// token), the grant alive after each of 20 rounds.
TEST_F(MultiHostTest, FiveHundredResolvesOverTwoHostsOfAnExpiredGrantCauseOneRefresh) {
  constexpr int kRounds = 20;
  constexpr int kConnectionsPerHost = 10;
  constexpr int kCallsPerConnection = 25;
  std::vector<std::unique_ptr<ipc::Client>> agents;
  for (int host = 0; host < 2; ++host) {
    for (int i = 0; i < kConnectionsPerHost; ++i) {
      agents.push_back(Connect(host, "agent.sock"));
      ASSERT_NE(agents.back(), nullptr);
    }
  }
  absl::Time expired_at = authorized_at_ + kTokenLifetime;
  for (int round = 0; round < kRounds; ++round) {
    absl::SleepFor(expired_at + absl::Milliseconds(100) - absl::Now());
    const int refreshes_before = provider_->RefreshesServed();
    absl::Mutex mu;
    std::vector<absl::StatusOr<v1::Response>> answers;
    absl::Notification all_answered;
    const size_t total = agents.size() * kCallsPerConnection;
    for (auto& agent : agents) {
      for (int c = 0; c < kCallsPerConnection; ++c) {
        agent->CallAsync(Resolve(), absl::Seconds(30), [&](absl::StatusOr<v1::Response> r) {
          absl::MutexLock lock(&mu);
          answers.push_back(std::move(r));
          if (answers.size() == total) all_answered.Notify();
        });
      }
    }
    ASSERT_TRUE(all_answered.WaitForNotificationWithTimeout(absl::Seconds(60))) << Logs();
    std::set<std::string> tokens;
    int64_t expires_ms = 0;
    for (const auto& answer : answers) {
      ASSERT_TRUE(answer.ok()) << answer.status();
      ASSERT_TRUE(answer->has_resolve())
          << "round " << round << ": " << answer->error().message() << "\n"
          << Logs();
      tokens.insert(answer->resolve().access_token());
      expires_ms = answer->resolve().expires_at_ms();
    }
    EXPECT_EQ(tokens.size(), 1u) << "round " << round;
    ASSERT_EQ(provider_->RefreshesServed(), refreshes_before + 1) << "round " << round << "\n"
                                                                  << Logs();
    expired_at = absl::FromUnixMillis(expires_ms);
  }
  // Alive: no refresh token was ever sent twice (the provider would have killed the grant).
  absl::SleepFor(expired_at + absl::Milliseconds(100) - absl::Now());
  auto last = agents[kConnectionsPerHost]->Call(Resolve(), absl::Seconds(30));
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(last->has_resolve()) << last->error().message();
}

// Revoked on host 0: a resolve that host 1 holds on a refresh fails with
// REVOKED, host 1's subscriber hears of it, and host 1 serves the grant no
// more — each within a second.
TEST_F(MultiHostTest, ARevocationOnOneHostReachesTheOthersWaitersSubscribersAndCache) {
  std::unique_ptr<ipc::Client> agent = Connect(1, "agent.sock");
  ASSERT_NE(agent, nullptr);
  auto warm = agent->Call(Resolve(), absl::Seconds(30));  // host 1 caches a token
  ASSERT_TRUE(warm.ok() && warm->has_resolve()) << Logs();

  absl::Mutex mu;
  std::vector<std::pair<v1::GrantEvent, absl::Time>> events;
  std::unique_ptr<ipc::Client> subscriber = Connect(1, "agent.sock");
  ipc::SubscribeGrantEvents(
      *subscriber, kWorkspace,
      [&](const v1::GrantEvent& event) {
        absl::MutexLock lock(&mu);
        events.emplace_back(event, absl::Now());
      },
      [](absl::Status) {});
  auto event_count = [&] {
    absl::MutexLock lock(&mu);
    return events.size();
  };
  ASSERT_TRUE(testing::WaitFor([&] { return event_count() == 1; }, absl::Seconds(5)));

  // A resolve held on host 1 by a refresh the stopped provider does not answer
  // (past its token's half-life, a token no longer serves 600 s).
  absl::SleepFor(kTokenLifetime / 2 + absl::Milliseconds(200));
  ASSERT_EQ(::kill(provider_->pid(), SIGSTOP), 0);
  absl::Notification held_done;
  absl::StatusOr<v1::Response> held = absl::UnknownError("pending");
  absl::Time held_ended;
  std::unique_ptr<ipc::Client> waiter = Connect(1, "agent.sock");
  waiter->CallAsync(Resolve(/*min_valid_seconds=*/600), absl::Seconds(30),
                    [&](absl::StatusOr<v1::Response> r) {
                      held = std::move(r);
                      held_ended = absl::Now();
                      held_done.Notify();
                    });
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_FALSE(held_done.HasBeenNotified());

  v1::Request revoke;
  revoke.mutable_revoke_grant()->set_grant_id(grant_id_);
  revoke.mutable_revoke_grant()->set_reason("leaked laptop");
  v1::Response revoked = Admin(0, revoke);
  const absl::Time revoked_at = absl::Now();
  ::kill(provider_->pid(), SIGCONT);
  ASSERT_FALSE(revoked.has_error()) << revoked.error().message();

  ASSERT_TRUE(held_done.WaitForNotificationWithTimeout(absl::Seconds(5))) << Logs();
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_TRUE(held->has_error()) << "the held resolve was answered with a token";
  EXPECT_EQ(held->error().code(), v1::Error::REVOKED) << held->error().message();
  EXPECT_LT(held_ended - revoked_at, absl::Seconds(1));

  ASSERT_TRUE(testing::WaitFor([&] { return event_count() == 2; }, absl::Seconds(5))) << Logs();
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(events[1].first.kind(), v1::GrantEvent::REVOKED);
    EXPECT_EQ(events[1].first.grant_id(), grant_id_);
    EXPECT_LT(events[1].second - revoked_at, absl::Seconds(1));
  }
  // The cached token is gone from host 1.
  auto after = agent->Call(Resolve(), absl::Seconds(30));
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_TRUE(after->has_error());
  EXPECT_EQ(after->error().code(), v1::Error::REVOKED) << after->error().message();
}

}  // namespace
}  // namespace grantvault
