// The refresh engine against upstream faults played by a local TLS server on
// 127.0.0.1 (tests/testing/tls_test_server.h) standing in for Linear's token
// endpoint (the catalog's endpoints rewritten to the server, as in
// tests/oauth/providers_test.cc), with a real SoftHSM2 token and SQLite: 5xx
// then success, 5xx until the deadline, 429 with Retry-After, a stall, a
// malformed answer, invalid_grant, the circuit breaker, refresh ahead of
// expiry and revocation. The fake server rotates refresh tokens and refuses a
// rotated-out one with invalid_grant, as real providers do.
#include <atomic>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "keys/sealed_context.h"
#include "oauth/authorizer.h"
#include "oauth/catalog_resolver.h"
#include "oauth/id_token_verifier.h"
#include "oauth/pkce.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_cert.h"
#include "tests/testing/test_vault.h"
#include "tests/testing/tls_test_server.h"
#include "tokens/refresher.h"

namespace grantvault::tokens {
namespace {

using ::grantvault::testing::RecordedRequest;

absl::StatusOr<AccessToken> Copied(const absl::StatusOr<SharedAccessToken>& shared) {
  if (!shared.ok()) return shared.status();
  return (*shared)->Clone();
}
using ::grantvault::testing::Reply;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

constexpr char kTokenPath[] = "/api.linear.app/oauth/token";
constexpr char kClientSecret[] = "linear-client-secret";

std::string FileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Reply JsonReply(const json& body, int status = 200) {
  Reply r;
  r.status = status;
  r.headers = {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}};
  r.body = body.dump();
  return r;
}

Reply ErrorReply(int status, std::string retry_after = "") {
  Reply r = JsonReply({{"error", "temporarily_unavailable"}}, status);
  if (!retry_after.empty()) r.headers.emplace_back("Retry-After", retry_after);
  return r;
}

std::vector<absl::StatusOr<AccessToken>> Unset(size_t n) {
  std::vector<absl::StatusOr<AccessToken>> out;
  for (size_t i = 0; i < n; ++i) out.emplace_back(absl::UnknownError("unset"));
  return out;
}

Reply Stall(std::chrono::milliseconds how_long, Reply reply) {
  reply.stall = how_long;
  return reply;
}

// The N of "retry_after_ms=N" in a status message; -1 when absent.
int64_t RetryAfterMs(const absl::Status& status) {
  static const std::regex kRetryAfter("retry_after_ms=([0-9]+)");
  std::smatch match;
  const std::string message(status.message());
  int64_t ms = -1;
  if (!std::regex_search(message, match, kRetryAfter) || !absl::SimpleAtoi(match[1].str(), &ms)) {
    return -1;
  }
  return ms;
}

class RefresherUpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = testing::WriteTestCertificates(dir_.path());
    testing::TlsTestServerOptions server_options;
    server_options.cert_file = certs_.cert_file;
    server_options.key_file = certs_.key_file;
    server_options.handler = [this](const RecordedRequest& r) { return Answer(r); };
    auto server = testing::TlsTestServer::Start(server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    const std::string origin = absl::StrCat("https://127.0.0.1:", server_->port());

    auto vault = testing::TestVault::Create(dir_.Join("grants.db"));
    ASSERT_TRUE(vault.ok()) << vault.status();
    hsm_ = std::move(vault->hsm);
    store_ = std::move(vault->store);
    sealer_ = std::move(vault->sealer);

    oauth::HttpClientOptions http_options;
    http_options.use_system_trust_store = false;
    http_options.ca_file = certs_.ca_file;
    auto http = oauth::NewHttpClient(http_options);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = std::move(*http);
    const std::regex endpoint("^((?:[a-z_]*endpoint|jwks_uri|issuer) = \")https://([^/\"]+)");
    std::istringstream lines(FileText(std::string(GV_SOURCE_DIR) + "/oauth/connectors.toml"));
    std::string toml;
    for (std::string line; std::getline(lines, line);) {
      toml += std::regex_replace(line, endpoint, absl::StrCat("$1", origin, "/$2")) + "\n";
    }
    auto catalog = oauth::Catalog::LoadString(toml, "connectors.toml (test rewrite)");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    resolver_ = std::make_unique<oauth::CatalogResolver>(std::move(*catalog), http_.get(), &clock_);
    id_tokens_ = oauth::NewJwksIdTokenVerifier();
    auto authorizer = oauth::Authorizer::Create(oauth::AuthorizerDeps{
        store_.get(), sealer_.get(), http_.get(), resolver_.get(), id_tokens_.get(), &clock_});
    ASSERT_TRUE(authorizer.ok()) << authorizer.status();
    authorizer_ = std::move(*authorizer);

    store::ConnectorRegistration reg;
    reg.connector_id = "linear";
    reg.connector_type = "linear";
    reg.client_id = "linear-client";
    reg.registered_by = "alice-admin";
    auto registered =
        authorizer_->Register(reg, SecretBytes::CopyOf(std::string_view(kClientSecret)));
    ASSERT_TRUE(registered.ok()) << registered.status();

    // A grant as the authorization flow leaves it: its refresh token rt-0, sealed.
    store::Grant grant;
    grant.grant_id = NewGrantId();
    grant.workspace_id = "ws_acme";
    grant.connector_id = "linear";
    grant.connector_type = "linear";
    grant.account_id = "acct-1";
    grant.scopes = {"read"};
    grant.authorized_by = "alice-admin";
    grant.created_at = grant.updated_at = clock_.Now();
    store::SealedSecret refresh;
    refresh.key = {grant.grant_id, "refresh_token"};
    refresh.workspace_id = grant.workspace_id;
    refresh.connector_id = grant.connector_id;
    refresh.account_id = grant.account_id;
    auto sealed =
        sealer_->Seal(SecretBytes::CopyOf(std::string_view("rt-0")),
                      hsm::SealContext{grant.workspace_id, grant.connector_id, grant.account_id,
                                       grant.grant_id, "refresh_token"});
    ASSERT_TRUE(sealed.ok()) << sealed.status();
    refresh.kek_label = sealed->kek.label;
    refresh.record = sealed->record;
    refresh.updated_at = clock_.Now();
    ASSERT_TRUE(store_->InsertGrant(grant, refresh).ok());
    grant_id_ = grant.grant_id;
  }

  // Created per test, with small backoffs unless told otherwise.
  Refresher& Make(RefresherOptions options = SmallBackoffs()) {
    auto refresher = Refresher::Create(
        RefresherDeps{store_.get(), sealer_.get(), http_.get(), resolver_.get(), &clock_, {}, {}},
        std::move(options));
    EXPECT_TRUE(refresher.ok()) << refresher.status();
    refresher_ = std::move(*refresher);
    return *refresher_;
  }
  static RefresherOptions SmallBackoffs() {
    RefresherOptions options;
    options.initial_backoff = absl::Milliseconds(50);
    options.max_backoff = absl::Milliseconds(200);
    options.request_timeout = absl::Seconds(2);
    return options;
  }

  // A copy of the token the refresher shares, so that tests can keep it.
  absl::StatusOr<AccessToken> Get(absl::Duration deadline_in = absl::Seconds(5),
                                  absl::Duration min_valid = absl::ZeroDuration()) {
    return Copied(refresher_->GetAccessToken(grant_id_, min_valid, absl::Now() + deadline_in));
  }

  // --- the fake token endpoint ------------------------------------------------------------
  // The next token requests are answered with `replies`, in order; then normally.
  void Script(std::vector<Reply> replies) {
    std::lock_guard<std::mutex> lock(mu_);
    scripted_.assign(replies.begin(), replies.end());
  }
  // Every token request is answered with `reply` until Heal().
  void Always(Reply reply) {
    std::lock_guard<std::mutex> lock(mu_);
    always_ = std::move(reply);
  }
  void Heal() {
    std::lock_guard<std::mutex> lock(mu_);
    always_.reset();
    scripted_.clear();
  }
  void SetExpiresIn(int seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    expires_in_ = seconds;
  }
  int TokenRequests() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(request_times_.size());
  }
  std::vector<absl::Time> RequestTimes() {
    std::lock_guard<std::mutex> lock(mu_);
    return request_times_;
  }
  std::vector<std::string> RefreshTokensSent() {
    std::lock_guard<std::mutex> lock(mu_);
    return refresh_tokens_sent_;
  }

  Reply Answer(const RecordedRequest& r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.target != kTokenPath || r.method != "POST") return JsonReply({{"error", "nope"}}, 404);
    request_times_.push_back(absl::Now());
    std::string sent;
    if (auto fields = oauth::ParseQuery(r.body); fields.ok()) {
      for (const auto& [name, value] : *fields) {
        if (name == "refresh_token") sent = value;
      }
    }
    refresh_tokens_sent_.push_back(sent);
    if (!scripted_.empty()) {
      Reply next = std::move(scripted_.front());
      scripted_.pop_front();
      if (next.status == 200 && next.body.empty()) return Rotate(sent, next.stall);
      return next;
    }
    if (always_) return *always_;
    return Rotate(sent, std::chrono::milliseconds(0));
  }
  // A successful refresh that rotates the refresh token; a rotated-out one is refused.
  Reply Rotate(const std::string& sent, std::chrono::milliseconds stall) {
    if (sent != current_refresh_) {
      return JsonReply({{"error", "invalid_grant"}, {"error_description", "token reused"}}, 400);
    }
    ++issued_;
    current_refresh_ = absl::StrCat("rt-", issued_);
    Reply reply = JsonReply({{"access_token", absl::StrCat("at-", issued_)},
                             {"token_type", "Bearer"},
                             {"expires_in", expires_in_},
                             {"refresh_token", current_refresh_},
                             {"scope", "read"}});
    reply.stall = stall;
    return reply;
  }
  // A scripted success (rotating, after `stall`).
  static Reply Success(std::chrono::milliseconds stall = std::chrono::milliseconds(0)) {
    Reply r;
    r.stall = stall;
    return r;
  }

  // --- the store --------------------------------------------------------------------------
  std::string StoredRefreshToken() {
    auto secret = store_->GetSealedSecret({grant_id_, "refresh_token"});
    EXPECT_TRUE(secret.ok()) << secret.status();
    if (!secret.ok()) return "";
    auto opened = testing::OpenStored(*sealer_, *secret);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? std::string(opened->view()) : "";
  }
  store::Grant StoredGrant() {
    auto grant = store_->GetGrant(grant_id_);
    EXPECT_TRUE(grant.ok()) << grant.status();
    return grant.ok() ? *grant : store::Grant{};
  }
  bool MarkerPresent() { return store_->GetGrant(grant_id_)->refresh_attempt_at.has_value(); }
  // Waits (bounded) until a call answers `token`.
  bool EventuallyServes(const std::string& token) {
    for (int i = 0; i < 100; ++i) {
      auto got = Get(absl::Milliseconds(100));
      if (got.ok() && got->token.view() == token) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  testing::TempDir dir_;
  testing::CertificateFiles certs_;
  // Whole microseconds, as the store keeps times.
  ManualClock clock_{absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()))};
  std::unique_ptr<testing::SoftHsmToken> hsm_;
  std::unique_ptr<store::GrantStore> store_;
  std::unique_ptr<hsm::EnvelopeSealer> sealer_;
  std::unique_ptr<oauth::HttpClient> http_;
  std::unique_ptr<oauth::CatalogResolver> resolver_;
  std::unique_ptr<oauth::IdTokenVerifier> id_tokens_;
  std::unique_ptr<oauth::Authorizer> authorizer_;
  std::string grant_id_;

  std::mutex mu_;
  std::deque<Reply> scripted_;                    // guarded by mu_
  std::optional<Reply> always_;                   // guarded by mu_
  std::string current_refresh_ = "rt-0";          // guarded by mu_
  int issued_ = 0;                                // guarded by mu_
  int expires_in_ = 3600;                         // guarded by mu_
  std::vector<absl::Time> request_times_;         // guarded by mu_
  std::vector<std::string> refresh_tokens_sent_;  // guarded by mu_

  // Declared last: destroyed first (it may still wait for a request), before the server.
  std::unique_ptr<testing::TlsTestServer> server_;
  std::unique_ptr<Refresher> refresher_;
};

// --- 5xx ------------------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, FiveHundredsThenSuccessAreRetriedAndOneTokenIsServed) {
  Make();
  Script({ErrorReply(500), ErrorReply(500)});
  constexpr size_t kCallers = 6;
  std::vector<absl::StatusOr<AccessToken>> results = Unset(kCallers);
  std::vector<std::thread> callers;
  for (size_t i = 0; i < kCallers; ++i) callers.emplace_back([&, i] { results[i] = Get(); });
  for (std::thread& t : callers) t.join();
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->token.view(), "at-1");
  }
  EXPECT_EQ(TokenRequests(), 3);
  EXPECT_EQ(refresher_->upstream_requests(), 3);
  EXPECT_EQ(RefreshTokensSent(), (std::vector<std::string>{"rt-0", "rt-0", "rt-0"}));
  EXPECT_EQ(StoredRefreshToken(), "rt-1");
  const store::Grant grant = StoredGrant();
  EXPECT_EQ(grant.status, store::GrantStatus::kActive);
  // The new access token's expiry is on record.
  EXPECT_EQ(grant.access_token_expires_at, results[0]->expires_at);
  EXPECT_EQ(results[0]->expires_at, clock_.Now() + absl::Seconds(3600));
  EXPECT_FALSE(MarkerPresent());
}

TEST_F(RefresherUpstreamTest, FiveHundredsUntilTheDeadlineAreUnavailableWithRetryAfter) {
  RefresherOptions options = SmallBackoffs();
  options.max_attempts = 100;
  options.breaker_failure_threshold = 1000;
  Make(options);
  Always(ErrorReply(500));
  const absl::Time start = absl::Now();
  auto refused = Get(absl::Milliseconds(800));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("UNAVAILABLE"));
  EXPECT_GE(RetryAfterMs(refused.status()), 50);
  EXPECT_LE(took, absl::Milliseconds(800) + absl::Milliseconds(300));
  EXPECT_GE(TokenRequests(), 3);  // retried inside the deadline
  EXPECT_EQ(StoredGrant().status, store::GrantStatus::kActive);
  EXPECT_EQ(StoredRefreshToken(), "rt-0");

  // With a token in the cache, it is served while upstream keeps failing.
  Heal();
  auto first = Get();
  ASSERT_TRUE(first.ok()) << first.status();
  clock_.Advance(absl::Minutes(31));  // past half its hour: asking 2 h refreshes
  Always(ErrorReply(503));
  const int before = TokenRequests();
  auto stale = Get(absl::Milliseconds(500), /*min_valid=*/absl::Hours(2));
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(stale->token.view(), first->token.view());
  EXPECT_GT(TokenRequests(), before);
  // 5xx rotate nothing: the refresh token is the one of the last success, the marker gone.
  EXPECT_EQ(StoredRefreshToken(), "rt-1");
  EXPECT_FALSE(MarkerPresent());
}

// --- 429 ------------------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, TooManyRequestsWaitsForItsRetryAfter) {
  Make();
  Script({ErrorReply(429, "2")});
  auto token = Get(absl::Seconds(5));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token.view(), "at-1");
  const std::vector<absl::Time> times = RequestTimes();
  ASSERT_EQ(times.size(), 2u);
  EXPECT_GE(times[1] - times[0], absl::Milliseconds(1950));  // not the 50 ms backoff
}

TEST_F(RefresherUpstreamTest, TooManyRequestsWithARetryAfterPastTheDeadlineAnswersAtOnce) {
  Make();
  Always(ErrorReply(429, "2"));
  const absl::Time start = absl::Now();
  auto refused = Get(absl::Seconds(1));
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("HTTP 429"));
  EXPECT_GE(RetryAfterMs(refused.status()), 2000);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));  // no point waiting for the deadline
  EXPECT_EQ(TokenRequests(), 1);
}

// --- stalls ---------------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, AStalledServerTimesOutAndIsRetriedThenUnavailable) {
  RefresherOptions options = SmallBackoffs();
  options.request_timeout = absl::Milliseconds(300);
  options.max_attempts = 2;
  Make(options);
  Always(Stall(std::chrono::seconds(10), ErrorReply(200)));
  const absl::Time start = absl::Now();
  auto refused = Get(absl::Seconds(5));
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("did not answer"));
  EXPECT_GE(RetryAfterMs(refused.status()), 50);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_EQ(TokenRequests(), 2);
  // Unanswered requests may have rotated the token: the marker stays for the crash window.
  EXPECT_TRUE(MarkerPresent());
  EXPECT_EQ(StoredRefreshToken(), "rt-0");
  EXPECT_EQ(StoredGrant().status, store::GrantStatus::kActive);
}

TEST_F(RefresherUpstreamTest, AStallLongerThanTheCallersDeadlineAnswersAtTheDeadline) {
  RefresherOptions options = SmallBackoffs();
  options.request_timeout = absl::Seconds(1);
  Make(options);
  Always(Stall(std::chrono::seconds(10), ErrorReply(200)));
  const absl::Time start = absl::Now();
  auto refused = Get(absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("deadline passed"));
  EXPECT_GE(RetryAfterMs(refused.status()), 50);
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Milliseconds(450));
  // A second caller joins the refresh still in flight: nothing more is sent.
  auto again = Get(absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsUnavailable(again.status())) << again.status();
  EXPECT_EQ(TokenRequests(), 1);
}

TEST_F(RefresherUpstreamTest, ALateAnswerIsCommittedAndCachedAfterTheCallerGaveUp) {
  Make();
  Script({Success(std::chrono::milliseconds(700))});
  auto impatient = Get(absl::Milliseconds(200));
  ASSERT_TRUE(absl::IsUnavailable(impatient.status())) << impatient.status();
  // The request was not cut short: its rotated token is committed and its access token cached.
  ASSERT_TRUE(EventuallyServes("at-1"));
  EXPECT_EQ(TokenRequests(), 1);
  EXPECT_EQ(StoredRefreshToken(), "rt-1");
  EXPECT_FALSE(MarkerPresent());
}

// --- malformed answers ----------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, AMalformedAnswerIsUnavailableAndKeepsTheRefreshToken) {
  Make();
  Reply not_json;
  not_json.headers = {{"Content-Type", "text/html"}};
  not_json.body = "<html>upstream proxy error</html>";
  const Reply no_access_token = JsonReply({{"token_type", "Bearer"}, {"expires_in", 3600}});
  int requests = 0;
  for (const Reply& malformed : {not_json, no_access_token}) {
    SCOPED_TRACE(malformed.body);
    Script({malformed});
    const absl::Time start = absl::Now();
    auto refused = Get(absl::Seconds(5));
    ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
    EXPECT_THAT(refused.status().message(), HasSubstr("malformed token response"));
    EXPECT_GE(RetryAfterMs(refused.status()), 50);
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
    EXPECT_EQ(TokenRequests(), ++requests);  // not retried
    EXPECT_EQ(StoredRefreshToken(), "rt-0");
    EXPECT_EQ(StoredGrant().status, store::GrantStatus::kActive);
    EXPECT_TRUE(MarkerPresent());
  }
  // The grant still works (this server had not rotated anything).
  auto token = Get();
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->token.view(), "at-1");
  EXPECT_FALSE(MarkerPresent());
}

// --- invalid_grant --------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, InvalidGrantMakesEveryCallerReauthRequired) {
  Make();
  Script({Stall(std::chrono::milliseconds(300),
                JsonReply({{"error", "invalid_grant"}, {"error_description", "revoked"}}, 400))});
  constexpr size_t kCallers = 8;
  std::vector<absl::StatusOr<AccessToken>> results = Unset(kCallers);
  std::vector<std::thread> callers;
  for (size_t i = 0; i < kCallers; ++i) callers.emplace_back([&, i] { results[i] = Get(); });
  for (std::thread& t : callers) t.join();
  for (const auto& result : results) {
    ASSERT_TRUE(absl::IsFailedPrecondition(result.status())) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("REAUTH_REQUIRED"));
  }
  EXPECT_EQ(TokenRequests(), 1);
  const store::Grant grant = StoredGrant();
  EXPECT_EQ(grant.status, store::GrantStatus::kReauthRequired);
  EXPECT_THAT(grant.status_reason, HasSubstr("invalid_grant"));
  EXPECT_FALSE(MarkerPresent());
  // Later callers are answered from the stored status.
  auto later = Get();
  EXPECT_THAT(later.status().message(), HasSubstr("REAUTH_REQUIRED"));
  EXPECT_EQ(TokenRequests(), 1);
  // A definite refusal is no upstream failure.
  for (const BreakerState& breaker : refresher_->Breakers()) {
    EXPECT_EQ(breaker.phase, BreakerPhase::kClosed);
    EXPECT_EQ(breaker.consecutive_failures, 0);
  }
}

// --- the circuit breaker --------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, TheBreakerOpensAfterKFailuresSendsNothingThenAProbeClosesIt) {
  RefresherOptions options = SmallBackoffs();
  options.max_attempts = 1;
  options.breaker_failure_threshold = 3;
  options.breaker_cooldown = absl::Seconds(30);
  Make(options);
  auto first = Get();
  ASSERT_TRUE(first.ok()) << first.status();
  clock_.Advance(absl::Minutes(31));  // past half its hour: asking 2 h refreshes

  Always(ErrorReply(503));
  for (int i = 0; i < 3; ++i) {
    // A token valid for less than asked is still served while upstream fails.
    auto stale = Get(absl::Seconds(2), /*min_valid=*/absl::Hours(2));
    ASSERT_TRUE(stale.ok()) << stale.status();
    EXPECT_EQ(stale->token.view(), "at-1");
  }
  EXPECT_EQ(TokenRequests(), 4);
  std::vector<BreakerState> breakers = refresher_->Breakers();
  ASSERT_EQ(breakers.size(), 1u);
  EXPECT_EQ(breakers[0].connector_id, "linear");
  EXPECT_EQ(breakers[0].phase, BreakerPhase::kOpen);
  EXPECT_EQ(breakers[0].consecutive_failures, 3);
  EXPECT_EQ(breakers[0].last_failure, "HTTP 503");
  EXPECT_EQ(breakers[0].open_until, clock_.Now() + absl::Seconds(30));

  // Open: the cached token is served, and without one the answer is Unavailable; nothing is
  // sent either way.
  auto stale = Get(absl::Seconds(2), absl::Hours(2));
  ASSERT_TRUE(stale.ok()) << stale.status();
  refresher_->Forget(grant_id_);
  auto refused = Get(absl::Seconds(2));
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("circuit breaker for connector linear"));
  EXPECT_EQ(RetryAfterMs(refused.status()), 30000);
  EXPECT_EQ(TokenRequests(), 4);

  // After the cool-down one probe goes; its success closes the breaker.
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(refresher_->Breakers()[0].phase, BreakerPhase::kHalfOpen);
  Heal();
  auto probed = Get();
  ASSERT_TRUE(probed.ok()) << probed.status();
  EXPECT_EQ(probed->token.view(), "at-2");
  EXPECT_EQ(TokenRequests(), 5);
  breakers = refresher_->Breakers();
  EXPECT_EQ(breakers[0].phase, BreakerPhase::kClosed);
  EXPECT_EQ(breakers[0].consecutive_failures, 0);
}

TEST_F(RefresherUpstreamTest, TheBreakerHonoursALongerRetryAfterAndAFailedProbeReopensIt) {
  RefresherOptions options = SmallBackoffs();
  options.max_attempts = 1;
  options.breaker_failure_threshold = 2;
  options.breaker_cooldown = absl::Seconds(10);
  Make(options);
  Always(ErrorReply(503, "120"));
  EXPECT_TRUE(absl::IsUnavailable(Get().status()));
  EXPECT_TRUE(absl::IsUnavailable(Get().status()));
  EXPECT_EQ(TokenRequests(), 2);
  ASSERT_EQ(refresher_->Breakers()[0].phase, BreakerPhase::kOpen);
  EXPECT_EQ(refresher_->Breakers()[0].open_until, clock_.Now() + absl::Seconds(120));

  clock_.Advance(absl::Seconds(11));  // past the cool-down, not past Retry-After
  auto refused = Get();
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_EQ(RetryAfterMs(refused.status()), 109000);
  EXPECT_EQ(TokenRequests(), 2);

  clock_.Advance(absl::Seconds(110));
  auto probe = Get();  // the probe fails: open again at once, one request sent
  ASSERT_TRUE(absl::IsUnavailable(probe.status())) << probe.status();
  EXPECT_EQ(TokenRequests(), 3);
  EXPECT_EQ(refresher_->Breakers()[0].phase, BreakerPhase::kOpen);
  EXPECT_EQ(refresher_->Breakers()[0].consecutive_failures, 3);
  EXPECT_TRUE(absl::IsUnavailable(Get().status()));
  EXPECT_EQ(TokenRequests(), 3);
  EXPECT_EQ(StoredGrant().status, store::GrantStatus::kActive);
}

// --- refresh ahead --------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, RefreshAheadServesTheCachedTokenAndRefreshesOnceInTheBackground) {
  RefresherOptions options = SmallBackoffs();
  options.refresh_ahead = absl::Seconds(60);  // ±20 %: 48 to 72 s
  Make(options);
  SetExpiresIn(600);
  auto first = Get();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->token.view(), "at-1");

  clock_.Advance(absl::Seconds(500));  // 100 s left: outside any margin
  ASSERT_TRUE(Get().ok());
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(TokenRequests(), 1);

  clock_.Advance(absl::Seconds(60));  // 40 s left: inside every margin
  Script({Success(std::chrono::milliseconds(500))});
  constexpr size_t kCallers = 20;
  std::vector<absl::StatusOr<AccessToken>> results = Unset(kCallers);
  std::vector<std::thread> callers;
  const absl::Time start = absl::Now();
  for (size_t i = 0; i < kCallers; ++i) callers.emplace_back([&, i] { results[i] = Get(); });
  for (std::thread& t : callers) t.join();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(300));  // nobody waited for the refresh
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->token.view(), "at-1");
  }
  ASSERT_TRUE(EventuallyServes("at-2"));
  EXPECT_EQ(TokenRequests(), 2);
  EXPECT_EQ(StoredRefreshToken(), "rt-2");
  EXPECT_EQ(StoredGrant().access_token_expires_at, clock_.Now() + absl::Seconds(600));
}

TEST_F(RefresherUpstreamTest, RefreshAheadIsCappedAtHalfAShortLifetime) {
  RefresherOptions options = SmallBackoffs();
  options.refresh_ahead = absl::Seconds(60);
  options.refresh_ahead_jitter = 0;
  Make(options);
  SetExpiresIn(60);
  ASSERT_TRUE(Get().ok());
  clock_.Advance(absl::Seconds(25));  // 35 s left of 60: a 60 s margin would refresh now
  ASSERT_TRUE(Get().ok());
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(TokenRequests(), 1);
  clock_.Advance(absl::Seconds(10));  // 25 s left: inside half the lifetime
  auto served = Get();
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->token.view(), "at-1");
  ASSERT_TRUE(EventuallyServes("at-2"));
  EXPECT_EQ(TokenRequests(), 2);
}

TEST_F(RefresherUpstreamTest, RefreshAheadMarginIsSetPerConnector) {
  RefresherOptions options = SmallBackoffs();
  options.refresh_ahead_jitter = 0;
  options.refresh_ahead_by_connector = {{"linear", absl::Minutes(5)}};
  Make(options);
  ASSERT_TRUE(Get().ok());  // one hour
  clock_.Advance(absl::Minutes(54));
  ASSERT_TRUE(Get().ok());
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(TokenRequests(), 1);
  clock_.Advance(absl::Minutes(1) + absl::Seconds(1));
  ASSERT_TRUE(Get().ok());
  ASSERT_TRUE(EventuallyServes("at-2"));
  EXPECT_EQ(TokenRequests(), 2);
}

TEST_F(RefresherUpstreamTest, AFailedRefreshAheadKeepsServingTheTokenAndIsClaimedAgainLater) {
  RefresherOptions options = SmallBackoffs();
  options.refresh_ahead_jitter = 0;
  options.max_attempts = 1;
  Make(options);
  SetExpiresIn(600);
  ASSERT_TRUE(Get().ok());
  clock_.Advance(absl::Seconds(560));  // 40 s left
  Always(ErrorReply(503));
  ASSERT_TRUE(Get().ok());
  ASSERT_TRUE(server_->WaitForRequests(2, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(150));
  for (int i = 0; i < 10; ++i) {
    auto served = Get();
    ASSERT_TRUE(served.ok()) << served.status();
    EXPECT_EQ(served->token.view(), "at-1");
  }
  EXPECT_EQ(TokenRequests(), 2);      // not every caller retries it
  clock_.Advance(absl::Seconds(11));  // a quarter of the remaining 40 s later
  Heal();
  ASSERT_TRUE(Get().ok());
  ASSERT_TRUE(EventuallyServes("at-2"));
  EXPECT_EQ(TokenRequests(), 3);
}

// --- tokens that live shorter than callers ask -----------------------------------------------

TEST_F(RefresherUpstreamTest, TokensLivingShorterThanAskedCauseOneRefreshNotAStorm) {
  Make();
  SetExpiresIn(8);  // no token of this provider can be valid for the 30 s callers ask
  const absl::Time minted = clock_.Now();
  // 100 callers in waves of 10: each wave comes once the one before has its answers, so a
  // token that only counted as valid for 30 s would be refreshed again by every wave.
  constexpr int kWaves = 10;
  constexpr size_t kPerWave = 10;
  for (int wave = 0; wave < kWaves; ++wave) {
    std::vector<absl::StatusOr<AccessToken>> results = Unset(kPerWave);
    std::vector<std::thread> callers;
    for (size_t i = 0; i < kPerWave; ++i) {
      callers.emplace_back([&, i] { results[i] = Get(absl::Seconds(5), absl::Seconds(30)); });
    }
    for (std::thread& t : callers) t.join();
    for (const auto& result : results) {
      ASSERT_TRUE(result.ok()) << "wave " << wave << ": " << result.status();
      EXPECT_EQ(result->token.view(), "at-1");
      EXPECT_EQ(result->expires_at, minted + absl::Seconds(8));  // its real expiry
    }
    clock_.Advance(absl::Milliseconds(300));  // 3 s across the waves: inside its first half
  }
  EXPECT_EQ(TokenRequests(), 1);
  EXPECT_EQ(StoredRefreshToken(), "rt-1");

  // Past the first half of its life a refresh can give more than the token still holds.
  clock_.Advance(absl::Seconds(1) + absl::Milliseconds(1));
  auto next = Get(absl::Seconds(5), absl::Seconds(30));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->token.view(), "at-2");
  EXPECT_EQ(TokenRequests(), 2);
  // And a 10-minute ask of a fresh token is answered by it, not by another refresh.
  auto long_ask = Get(absl::Seconds(5), absl::Minutes(10));
  ASSERT_TRUE(long_ask.ok()) << long_ask.status();
  EXPECT_EQ(long_ask->token.view(), "at-2");
  EXPECT_EQ(TokenRequests(), 2);
}

// --- binding --------------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, ALongLivedAccessTokenBoundToAnotherWorkspaceIsRefused) {
  Make();
  // A grant of a connector that issues no refresh token: its sealed long-lived access token.
  store::Grant grant;
  grant.grant_id = NewGrantId();
  grant.workspace_id = "ws_beta";
  grant.connector_id = "linear";
  grant.connector_type = "linear";
  grant.account_id = "acct-2";
  grant.scopes = {"read"};
  grant.authorized_by = "alice-admin";
  grant.created_at = grant.updated_at = clock_.Now();
  auto sealed_for = [&](const std::string& workspace, const std::string& account,
                        std::string_view token) {
    store::SealedSecret secret;
    secret.key = {grant.grant_id, "access_token"};
    secret.workspace_id = workspace;
    secret.connector_id = grant.connector_id;
    secret.account_id = account;
    auto sealed = sealer_->Seal(SecretBytes::CopyOf(token), keys::SealContextOf(secret));
    EXPECT_TRUE(sealed.ok()) << sealed.status();
    secret.kek_label = sealed->kek.label;
    secret.record = sealed->record;
    secret.updated_at = clock_.Now();
    return secret;
  };
  ASSERT_TRUE(store_->InsertGrant(grant, sealed_for("ws_beta", "acct-2", "beta-token")).ok());
  auto served = refresher_->GetAccessToken(grant.grant_id, absl::ZeroDuration(),
                                           absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ((*served)->token.view(), "beta-token");

  // The row is swapped for one that opens (its record matches its own binding) but belongs
  // to another workspace's account: it must not be answered for this grant.
  for (const auto& [workspace, account] : std::vector<std::pair<std::string, std::string>>{
           {"ws_acme", "acct-2"}, {"ws_beta", "acct-1"}}) {
    ASSERT_TRUE(store_->PutSealedSecret(sealed_for(workspace, account, "acme-token")).ok());
    refresher_->Forget(grant.grant_id);
    auto refused = refresher_->GetAccessToken(grant.grant_id, absl::ZeroDuration(),
                                              absl::Now() + absl::Seconds(5));
    ASSERT_TRUE(absl::IsDataLoss(refused.status())) << workspace << " " << refused.status();
    EXPECT_THAT(refused.status().message(), HasSubstr("bound to another"));
    EXPECT_THAT(refused.status().message(), Not(HasSubstr("acme-token")));
  }
  EXPECT_EQ(TokenRequests(), 0);
}

TEST_F(RefresherUpstreamTest, ARefreshTokenBoundToAnotherAccountIsRefusedBeforeAnythingIsSent) {
  Make();
  store::SealedSecret moved = *store_->GetSealedSecret({grant_id_, "refresh_token"});
  moved.account_id = "acct-other";
  auto sealed =
      sealer_->Seal(SecretBytes::CopyOf(std::string_view("rt-0")), keys::SealContextOf(moved));
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  moved.record = sealed->record;
  ASSERT_TRUE(store_->PutSealedSecret(moved).ok());
  auto refused = Get();
  ASSERT_TRUE(absl::IsDataLoss(refused.status())) << refused.status();
  EXPECT_EQ(TokenRequests(), 0);
}

// --- revocation -----------------------------------------------------------------------------

TEST_F(RefresherUpstreamTest, RevokeReleasesEveryWaiterHeldOnASlowServerWithin100ms) {
  RefresherOptions options = SmallBackoffs();
  options.request_timeout = absl::Seconds(1);  // the stalled request itself ends then
  Make(options);
  Always(Stall(std::chrono::seconds(10), ErrorReply(200)));
  constexpr size_t kCallers = 3;
  std::vector<absl::StatusOr<AccessToken>> results = Unset(kCallers);
  std::vector<absl::Time> returned(kCallers);
  std::vector<std::thread> callers;
  for (size_t i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      results[i] = Get(absl::Seconds(5));
      returned[i] = absl::Now();
    });
  }
  ASSERT_TRUE(server_->WaitForRequests(1, absl::Seconds(2)));
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time revoked_at = absl::Now();
  refresher_->Revoke(grant_id_, "revoked by alice-admin");
  for (std::thread& t : callers) t.join();
  for (size_t i = 0; i < kCallers; ++i) {
    ASSERT_TRUE(absl::IsFailedPrecondition(results[i].status())) << results[i].status();
    EXPECT_THAT(results[i].status().message(), HasSubstr("REVOKED"));
    EXPECT_THAT(results[i].status().message(), HasSubstr("revoked by alice-admin"));
    EXPECT_LT(returned[i] - revoked_at, absl::Milliseconds(100));
  }
  // Later calls answer at once, without a request.
  auto later = Get();
  EXPECT_THAT(later.status().message(), HasSubstr("REVOKED"));
  EXPECT_EQ(TokenRequests(), 1);
}

TEST_F(RefresherUpstreamTest, ARefreshThatCompletesAfterRevocationIsNeitherServedNorCached) {
  Make();
  Script({Success(std::chrono::milliseconds(600))});
  absl::StatusOr<AccessToken> waiting = absl::UnknownError("unset");
  std::thread caller([&] { waiting = Get(absl::Seconds(5)); });
  ASSERT_TRUE(server_->WaitForRequests(1, absl::Seconds(2)));
  // The daemon's revoke path: the store first, then the refresher.
  ASSERT_TRUE(store_
                  ->SetGrantStatus(grant_id_, store::GrantStatus::kRevoked, "revoked by alice",
                                   clock_.Now())
                  .ok());
  refresher_->Revoke(grant_id_, "revoked by alice");
  caller.join();
  ASSERT_TRUE(absl::IsFailedPrecondition(waiting.status())) << waiting.status();
  EXPECT_THAT(waiting.status().message(), HasSubstr("REVOKED"));

  absl::SleepFor(absl::Milliseconds(900));  // the answer arrives and is dropped
  EXPECT_EQ(refresher_->cache().size(), 0u);
  auto later = Get();
  EXPECT_THAT(later.status().message(), HasSubstr("REVOKED"));
  const store::Grant grant = StoredGrant();
  EXPECT_EQ(grant.status, store::GrantStatus::kRevoked);
  EXPECT_EQ(grant.status_reason, "revoked by alice");
  EXPECT_FALSE(grant.access_token_expires_at.has_value());
  EXPECT_EQ(TokenRequests(), 1);
}

TEST_F(RefresherUpstreamTest, RevokeErasesTheCachedTokenAndForgetMakesTheStoreBeRead) {
  Make();
  ASSERT_TRUE(Get().ok());
  // A status change made elsewhere is seen once the cache entry is forgotten.
  ASSERT_TRUE(
      store_
          ->SetGrantStatus(grant_id_, store::GrantStatus::kReauthRequired, "by hand", clock_.Now())
          .ok());
  ASSERT_TRUE(Get().ok());  // still cached: the hot path does not read the store
  refresher_->Forget(grant_id_);
  auto reauth = Get();
  EXPECT_THAT(reauth.status().message(), HasSubstr("REAUTH_REQUIRED"));
  ASSERT_TRUE(
      store_->SetGrantStatus(grant_id_, store::GrantStatus::kActive, "", clock_.Now()).ok());
  ASSERT_TRUE(Get().ok());
  refresher_->Revoke(grant_id_, "offboarded");
  auto revoked = Get();
  ASSERT_TRUE(absl::IsFailedPrecondition(revoked.status()));
  EXPECT_THAT(revoked.status().message(), HasSubstr("REVOKED: grant"));
  EXPECT_THAT(revoked.status().message(), HasSubstr("offboarded"));
  EXPECT_EQ(TokenRequests(), 2);
}

TEST_F(RefresherUpstreamTest, CreateRefusesInvalidOptions) {
  const RefresherDeps deps{
      store_.get(), sealer_.get(), http_.get(), resolver_.get(), &clock_, {}, {}};
  auto with = [&](auto change) {
    RefresherOptions options;
    change(options);
    return Refresher::Create(deps, options).status();
  };
  EXPECT_TRUE(
      absl::IsInvalidArgument(with([](RefresherOptions& o) { o.refresh_ahead_jitter = 1; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      with([](RefresherOptions& o) { o.refresh_ahead = absl::Seconds(-1); })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](RefresherOptions& o) {
    o.refresh_ahead_by_connector = {{"linear", absl::Seconds(-1)}};
  })));
  EXPECT_TRUE(
      absl::IsInvalidArgument(with([](RefresherOptions& o) { o.breaker_failure_threshold = 0; })));
  EXPECT_TRUE(absl::IsInvalidArgument(
      with([](RefresherOptions& o) { o.breaker_cooldown = absl::ZeroDuration(); })));
  EXPECT_TRUE(
      absl::IsInvalidArgument(with([](RefresherOptions& o) { o.max_concurrent_refreshes = 0; })));
  EXPECT_TRUE(with([](RefresherOptions&) {}).ok());
}

}  // namespace
}  // namespace grantvault::tokens
