// The refresh engine against a real OAuth server (oidc-provider over TLS on
// 127.0.0.1: refresh tokens rotated on every use, a grant killed when a
// rotated-out refresh token is reused), a real SoftHSM2 token and SQLite.
#include "tokens/refresher.h"

#include <sqlite3.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oauth/authorizer.h"
#include "oauth/catalog_resolver.h"
#include "oauth/id_token_verifier.h"
#include "oauth/pkce.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_vault.h"
#include "tests/testing/wait.h"

namespace grantvault::tokens {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<AccessToken> Copied(const absl::StatusOr<SharedAccessToken>& shared) {
  if (!shared.ok()) return shared.status();
  return (*shared)->Clone();
}

constexpr char kRedirect[] = "http://127.0.0.1:45678/callback";

// Puts upstream faults in front of the real provider: the next `faults` token-endpoint
// requests are answered with `status` (and Retry-After, when set) without reaching it.
class FaultyTokenEndpoint final : public oauth::HttpClient {
 public:
  explicit FaultyTokenEndpoint(oauth::HttpClient* real) : real_(real) {}
  void Inject(int faults, int status, std::string retry_after = "") {
    absl::MutexLock lock(&mu_);
    faults_ = faults;
    status_ = status;
    retry_after_ = std::move(retry_after);
  }
  absl::StatusOr<oauth::HttpResponse> Send(const oauth::HttpRequest& request,
                                           absl::Duration deadline) override {
    {
      absl::MutexLock lock(&mu_);
      if (request.method == "POST" && faults_ > 0) {
        --faults_;
        oauth::HttpResponse response;
        response.status = status_;
        if (!retry_after_.empty()) response.headers.emplace_back("Retry-After", retry_after_);
        response.body = R"({"error":"temporarily_unavailable"})";
        return response;
      }
    }
    return real_->Send(request, deadline);
  }

 private:
  oauth::HttpClient* const real_;
  absl::Mutex mu_;
  int faults_ ABSL_GUARDED_BY(mu_) = 0;
  int status_ ABSL_GUARDED_BY(mu_) = 503;
  std::string retry_after_ ABSL_GUARDED_BY(mu_);
};

// Fails the sealing of refresh tokens on demand (a token fault that clears: a real SoftHSM
// cannot be made to fail once), passing everything else to the real sealer.
class FlakyRefreshTokenSealer final : public hsm::Sealer {
 public:
  explicit FlakyRefreshTokenSealer(hsm::Sealer* real) : real_(real) {}
  void FailNext(int n) {
    absl::MutexLock lock(&mu_);
    fail_next_ = n;
  }
  void FailUntilHealed() {
    absl::MutexLock lock(&mu_);
    fail_until_healed_ = true;
  }
  void Heal() {
    absl::MutexLock lock(&mu_);
    fail_next_ = 0;
    fail_until_healed_ = false;
  }
  int failures() const {
    absl::MutexLock lock(&mu_);
    return failures_;
  }

  absl::StatusOr<hsm::Sealed> Seal(const SecretBytes& secret,
                                   const hsm::SealContext& context) override {
    if (context.purpose == "refresh_token") {
      absl::MutexLock lock(&mu_);
      if (fail_until_healed_ || fail_next_ > 0) {
        if (fail_next_ > 0) --fail_next_;
        ++failures_;
        return absl::UnavailableError("injected: C_Encrypt failed (CKR_DEVICE_ERROR)");
      }
    }
    return real_->Seal(secret, context);
  }
  absl::StatusOr<SecretBytes> Open(absl::Span<const uint8_t> record,
                                   const hsm::SealContext& context) override {
    return real_->Open(record, context);
  }
  absl::StatusOr<hsm::Sealed> Rewrap(absl::Span<const uint8_t> record,
                                     const hsm::SealContext& context) override {
    return real_->Rewrap(record, context);
  }
  hsm::KeyRef ActiveKek() const override { return real_->ActiveKek(); }
  absl::Status SetActiveKek(const hsm::KeyRef& kek) override { return real_->SetActiveKek(kek); }

 private:
  hsm::Sealer* const real_;
  mutable absl::Mutex mu_;
  int fail_next_ ABSL_GUARDED_BY(mu_) = 0;
  bool fail_until_healed_ ABSL_GUARDED_BY(mu_) = false;
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
};

// A real SQLite failing for a while: once armed, right after the provider's answer to a
// refresh arrives (before the refresher can commit the rotated token), another connection
// takes the database's write lock and holds it for `hold`, longer than the store's busy
// timeout (5 s), so the commit is refused at least once.
class WriteLockAfterAnswer final : public oauth::HttpClient {
 public:
  WriteLockAfterAnswer(oauth::HttpClient* real, std::string database, absl::Duration hold)
      : real_(real), database_(std::move(database)), hold_(hold) {}
  ~WriteLockAfterAnswer() override {
    if (releaser_.joinable()) releaser_.join();
  }
  void Arm() { armed_ = true; }
  bool locked() const { return locked_; }

  absl::StatusOr<oauth::HttpResponse> Send(const oauth::HttpRequest& request,
                                           absl::Duration deadline) override {
    absl::StatusOr<oauth::HttpResponse> response = real_->Send(request, deadline);
    if (response.ok() && response->status == 200 && armed_.exchange(false)) {
      sqlite3* db = nullptr;
      if (sqlite3_open(database_.c_str(), &db) == SQLITE_OK &&
          sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK) {
        locked_ = true;
        releaser_ = std::thread([db, hold = hold_] {
          absl::SleepFor(hold);
          sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
          sqlite3_close(db);
        });
      } else {
        sqlite3_close(db);
      }
    }
    return response;
  }

 private:
  oauth::HttpClient* const real_;
  const std::string database_;
  const absl::Duration hold_;
  std::atomic<bool> armed_{false};
  std::atomic<bool> locked_{false};
  std::thread releaser_;
};

class RefresherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = absl::Seconds(2);
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    auto vault = testing::TestVault::Create(dir_.Join("grants.db"));
    ASSERT_TRUE(vault.ok()) << vault.status();
    hsm_ = std::move(vault->hsm);
    store_ = std::move(vault->store);
    sealer_ = std::move(vault->sealer);

    oauth::HttpClientOptions http_options;
    http_options.use_system_trust_store = false;
    http_options.ca_file = provider_->ca_file();
    auto http = oauth::NewHttpClient(http_options);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = std::move(*http);
    auto catalog = oauth::Catalog::LoadDefault();
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    resolver_ =
        std::make_unique<oauth::CatalogResolver>(std::move(*catalog), http_.get(), &RealClock());
    id_tokens_ = oauth::NewJwksIdTokenVerifier();
    auto authorizer = oauth::Authorizer::Create(oauth::AuthorizerDeps{
        store_.get(), sealer_.get(), http_.get(), resolver_.get(), id_tokens_.get(), &RealClock()});
    ASSERT_TRUE(authorizer.ok()) << authorizer.status();
    authorizer_ = std::move(*authorizer);

    // Register and authorize once, exactly as an admin would.
    store::ConnectorRegistration reg;
    reg.connector_id = "demo";
    reg.connector_type = "oidc";
    reg.client_id = provider_->clients()[0].client_id;
    reg.issuer = provider_->issuer();
    reg.registered_by = "alice-admin";
    auto registered =
        authorizer_->Register(reg, SecretBytes::CopyOf(provider_->clients()[0].client_secret));
    ASSERT_TRUE(registered.ok()) << registered.status();
    registration_ = *registered;
    auto started = authorizer_->Begin("ws_acme", "demo", {"openid", "offline_access", "read"},
                                      "alice-admin", kRedirect);
    ASSERT_TRUE(started.ok()) << started.status();
    auto redirect = provider_->Approve(started->authorization_url);
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    auto callback = oauth::ParseCallback(*redirect);
    ASSERT_TRUE(callback.ok()) << callback.status();
    auto done = authorizer_->Complete(*callback);
    ASSERT_TRUE(done.ok()) << done.status() << "\n" << provider_->Log();
    grant_id_ = done->grant.grant_id;
    ASSERT_TRUE(store_->GetSealedSecret({grant_id_, "refresh_token"}).ok());

    auto refresher = Refresher::Create(RefresherDeps{
        store_.get(), sealer_.get(), http_.get(), resolver_.get(), &RealClock(), {}, {}});
    ASSERT_TRUE(refresher.ok()) << refresher.status();
    refresher_ = std::move(*refresher);
  }

  // A copy of the token the refresher shares, so that tests can keep it.
  absl::StatusOr<AccessToken> Get(absl::Duration min_valid = absl::ZeroDuration()) {
    return Copied(
        refresher_->GetAccessToken(grant_id_, min_valid, absl::Now() + absl::Seconds(10)));
  }

  store::SealedSecret StoredRefresh() {
    auto s = store_->GetSealedSecret({grant_id_, "refresh_token"});
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : store::SealedSecret{};
  }

  SecretBytes StoredRefreshToken() {
    auto token = testing::OpenStored(*sealer_, StoredRefresh());
    EXPECT_TRUE(token.ok()) << token.status();
    return token.ok() ? std::move(*token) : SecretBytes();
  }

  // Successful refresh-token grants the server answered, from its request log.
  int TokenPostsSeen() {
    absl::SleepFor(absl::Milliseconds(200));  // the log is written after the answer
    int n = 0;
    for (absl::string_view line : absl::StrSplit(provider_->Log(), '\n')) {
      if (absl::StrContains(line, "POST /token 200")) ++n;
    }
    return n;
  }

  // Plays a second client holding `refresh_token`: one refresh-token grant sent by hand.
  absl::StatusOr<oauth::HttpResponse> RefreshByHand(const SecretBytes& refresh_token) {
    GV_ASSIGN_OR_RETURN(oauth::ConnectorProfile profile, resolver_->Resolve(registration_));
    oauth::HttpRequest request;
    request.method = "POST";
    request.url = profile.resolved.endpoints.token;
    request.headers = {
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"Authorization", "Basic " + oauth::Base64(provider_->clients()[0].client_id + ":" +
                                                   provider_->clients()[0].client_secret)}};
    request.body = oauth::FormEncode(
        {{"grant_type", "refresh_token"}, {"refresh_token", std::string(refresh_token.view())}});
    return http_->Send(request, absl::Seconds(10));
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::unique_ptr<testing::SoftHsmToken> hsm_;
  std::unique_ptr<store::GrantStore> store_;
  std::unique_ptr<hsm::EnvelopeSealer> sealer_;
  std::unique_ptr<oauth::HttpClient> http_;
  std::unique_ptr<oauth::CatalogResolver> resolver_;
  std::unique_ptr<oauth::IdTokenVerifier> id_tokens_;
  std::unique_ptr<oauth::Authorizer> authorizer_;
  std::unique_ptr<Refresher> refresher_;
  store::ConnectorRegistration registration_;
  std::string grant_id_;
};

TEST_F(RefresherTest, FiveHundredConcurrentCallersShareOneRefreshAndTheGrantStaysAlive) {
  auto first = Get();
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << provider_->Log();
  EXPECT_EQ(refresher_->upstream_requests(), 1);
  // Let the 2 s access token expire.
  absl::SleepFor(first->expires_at - absl::Now() + absl::Milliseconds(100));

  const std::vector<uint8_t> record_before = StoredRefresh().record;
  const SecretBytes refresh_before = StoredRefreshToken();
  const int posts_before = TokenPostsSeen();

  constexpr size_t kThreads = 50;
  constexpr int kCallsPerThread = 10;
  std::vector<std::vector<absl::StatusOr<AccessToken>>> results(kThreads);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kCallsPerThread; ++i) results[t].push_back(Get());
    });
  }
  go = true;
  for (std::thread& t : threads) t.join();

  std::optional<SecretBytes> shared;
  for (const auto& per_thread : results) {
    for (const auto& result : per_thread) {
      ASSERT_TRUE(result.ok()) << result.status();
      if (!shared) shared = result->token.Clone();
      EXPECT_TRUE(result->token == *shared);
    }
  }
  EXPECT_FALSE(*shared == first->token);
  EXPECT_EQ(refresher_->upstream_requests(), 2);
  EXPECT_EQ(TokenPostsSeen(), posts_before + 1);
  EXPECT_NE(StoredRefresh().record, record_before);
  EXPECT_FALSE(StoredRefreshToken() == refresh_before);

  // The server kills a grant whose rotated-out refresh token is reused: one more refresh
  // succeeding proves no duplicate was sent.
  refresher_->Forget(grant_id_);
  auto again = Get();
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << provider_->Log();
  EXPECT_FALSE(again->token == *shared);
  auto grant = store_->GetGrant(grant_id_);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->status, store::GrantStatus::kActive);
}

TEST_F(RefresherTest, ACacheHitSendsNothingUpstream) {
  auto first = Get();
  ASSERT_TRUE(first.ok()) << first.status();
  const int posts = TokenPostsSeen();
  for (int i = 0; i < 100; ++i) {
    auto hit = Get();
    ASSERT_TRUE(hit.ok()) << hit.status();
    EXPECT_TRUE(hit->token == first->token);
  }
  EXPECT_EQ(refresher_->upstream_requests(), 1);
  EXPECT_EQ(TokenPostsSeen(), posts);
}

TEST_F(RefresherTest, InvalidGrantMarksTheGrantReauthRequired) {
  const SecretBytes old_refresh = StoredRefreshToken();
  ASSERT_TRUE(Get().ok());
  // Someone reuses the rotated-out token: the server revokes the whole grant.
  auto reuse = RefreshByHand(old_refresh);
  ASSERT_TRUE(reuse.ok()) << reuse.status();
  EXPECT_EQ(reuse->status, 400);

  refresher_->Forget(grant_id_);
  auto refused = Get();
  ASSERT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("REAUTH_REQUIRED"));
  EXPECT_THAT(refused.status().message(), HasSubstr("invalid_grant"));
  auto grant = store_->GetGrant(grant_id_);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->status, store::GrantStatus::kReauthRequired);
  EXPECT_THAT(grant->status_reason, HasSubstr("invalid_grant"));
  // Later callers get the same answer without going upstream.
  const int64_t sent = refresher_->upstream_requests();
  auto later = Get(absl::Hours(1));
  EXPECT_THAT(later.status().message(), HasSubstr("REAUTH_REQUIRED"));
  EXPECT_EQ(refresher_->upstream_requests(), sent);
}

TEST_F(RefresherTest, ARotationThatWasNeverRecordedIsReportedAsTheCrashWindow) {
  // A refresh whose answer we never recorded (we "crashed" after the server rotated): the
  // server consumed the stored token, and the attempt marker was left behind.
  const SecretBytes stored = StoredRefreshToken();
  auto lost = RefreshByHand(stored);
  ASSERT_TRUE(lost.ok()) << lost.status();
  ASSERT_EQ(lost->status, 200);
  ASSERT_TRUE(store_->MarkRefreshAttempt(grant_id_, absl::Now()).ok());

  auto refused = Get();
  ASSERT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("REAUTH_REQUIRED"));
  EXPECT_THAT(refused.status().message(), HasSubstr(kCrashWindowReason));
  auto grant = store_->GetGrant(grant_id_);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->status, store::GrantStatus::kReauthRequired);
  EXPECT_EQ(grant->status_reason, kCrashWindowReason);
  EXPECT_FALSE(grant->refresh_attempt_at.has_value());
}

TEST_F(RefresherTest, ARevokedGrantAnswersRevoked) {
  ASSERT_TRUE(store_
                  ->SetGrantStatus(grant_id_, store::GrantStatus::kRevoked, "revoked by an admin",
                                   absl::Now())
                  .ok());
  auto refused = Get();
  ASSERT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("REVOKED"));
  EXPECT_EQ(refresher_->upstream_requests(), 0);
}

TEST_F(RefresherTest, ErrorsNeverCarryTokens) {
  const SecretBytes stored = StoredRefreshToken();
  ASSERT_TRUE(RefreshByHand(stored).ok());  // consume it elsewhere
  auto refused = Get();
  ASSERT_FALSE(refused.ok());
  EXPECT_FALSE(absl::StrContains(refused.status().message(), Sv(stored.view())));
  EXPECT_FALSE(
      absl::StrContains(refused.status().message(), provider_->clients()[0].client_secret));
}

TEST_F(RefresherTest, ServerErrorsAreRetriedInsideTheDeadline) {
  FaultyTokenEndpoint faulty(http_.get());
  auto refresher = Refresher::Create(
      RefresherDeps{store_.get(), sealer_.get(), &faulty, resolver_.get(), &RealClock(), {}, {}});
  ASSERT_TRUE(refresher.ok());
  faulty.Inject(2, 503);
  const absl::Time start = absl::Now();
  auto token =
      (*refresher)->GetAccessToken(grant_id_, absl::ZeroDuration(), start + absl::Seconds(5));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ((*refresher)->upstream_requests(), 3);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // The grant is alive: the 503s rotated nothing.
  (*refresher)->Forget(grant_id_);
  auto again =
      (*refresher)->GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(again.ok()) << again.status();
}

TEST_F(RefresherTest, TooManyRequestsServesAStillValidTokenThenUnavailable) {
  FaultyTokenEndpoint faulty(http_.get());
  auto created = Refresher::Create(
      RefresherDeps{store_.get(), sealer_.get(), &faulty, resolver_.get(), &RealClock(), {}, {}});
  ASSERT_TRUE(created.ok());
  Refresher& refresher = **created;
  auto first =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(first.ok()) << first.status();

  faulty.Inject(1000, 429, "1");
  // Past half its 2 s life, asking an hour refreshes (a fresher token could give more).
  absl::SleepFor((*first)->obtained_at + absl::Milliseconds(1050) - absl::Now());
  // It cannot be valid for an hour, but it is still valid: served while upstream refuses.
  auto stale =
      refresher.GetAccessToken(grant_id_, absl::Hours(1), absl::Now() + absl::Milliseconds(800));
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_TRUE((*stale)->token == (*first)->token);
  EXPECT_GE(refresher.upstream_requests(), 2);  // it was asked for, and refused

  absl::SleepFor((*first)->expires_at - absl::Now() + absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  auto refused =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), start + absl::Seconds(3));
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("retry_after_ms=1000"));
  EXPECT_THAT(refused.status().message(), HasSubstr("429"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3) + absl::Milliseconds(500));
  auto grant = store_->GetGrant(grant_id_);
  ASSERT_TRUE(grant.ok());
  EXPECT_EQ(grant->status, store::GrantStatus::kActive);
}

// --- a rotated refresh token the store cannot take at once ----------------------------------

TEST_F(RefresherTest, ATransientSealFailureOfTheRotatedTokenIsRetriedAndCommitted) {
  FlakyRefreshTokenSealer flaky(sealer_.get());
  RefresherOptions options;
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(100);
  auto created = Refresher::Create(
      RefresherDeps{store_.get(), &flaky, http_.get(), resolver_.get(), &RealClock(), {}, {}},
      options);
  ASSERT_TRUE(created.ok()) << created.status();
  Refresher& refresher = **created;
  const SecretBytes before = StoredRefreshToken();

  flaky.FailNext(2);  // the server rotates; sealing its new token fails twice, then works
  auto token =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(token.ok()) << token.status() << "\n" << provider_->Log();
  EXPECT_EQ(flaky.failures(), 2);
  EXPECT_EQ(refresher.upstream_requests(), 1);
  EXPECT_FALSE(StoredRefreshToken() == before);
  EXPECT_TRUE(!store_->GetGrant(grant_id_)->refresh_attempt_at.has_value());

  // The provider kills a grant whose rotated-out token is reused: this refresh proves the
  // committed one is the provider's current token.
  refresher.Forget(grant_id_);
  auto again =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << provider_->Log();
  EXPECT_EQ(refresher.upstream_requests(), 2);
  EXPECT_EQ(store_->GetGrant(grant_id_)->status, store::GrantStatus::kActive);
}

TEST_F(RefresherTest, ARotatedTokenThatCannotBeStoredIsKeptAndCommittedBeforeTheNextRefresh) {
  FlakyRefreshTokenSealer flaky(sealer_.get());
  RefresherOptions options;
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(100);
  options.request_timeout = absl::Seconds(1);  // how long the worker retries the commit
  auto created = Refresher::Create(
      RefresherDeps{store_.get(), &flaky, http_.get(), resolver_.get(), &RealClock(), {}, {}},
      options);
  ASSERT_TRUE(created.ok()) << created.status();
  Refresher& refresher = **created;
  const SecretBytes before = StoredRefreshToken();

  // The fault outlasts the worker's retries of the commit (request_timeout).
  flaky.FailUntilHealed();
  auto refused =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("kept in memory"));
  EXPECT_FALSE(absl::StrContains(refused.status().message(), Sv(before.view())));
  // (The flight that answered has ended.)
  ASSERT_TRUE(refresher.HoldsUnstoredRefreshToken(grant_id_));
  // The next caller's flight retries the commit first, and sends nothing.
  auto unstored =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(absl::IsUnavailable(unstored.status())) << unstored.status();
  EXPECT_THAT(unstored.status().message(), HasSubstr("kept in memory"));
  // (The flight that answered has ended.)
  ASSERT_TRUE(refresher.HoldsUnstoredRefreshToken(grant_id_));
  EXPECT_GE(flaky.failures(), 3);
  EXPECT_EQ(refresher.upstream_requests(), 1);  // nothing was refreshed meanwhile
  EXPECT_TRUE(StoredRefreshToken() == before);  // the store still holds the dead token
  EXPECT_TRUE(store_->GetGrant(grant_id_)->refresh_attempt_at.has_value());

  // Once the fault clears, the kept token is committed first; the old one is never resent
  // (the provider would kill the grant).
  flaky.Heal();
  auto served =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(served.ok()) << served.status() << "\n" << provider_->Log();
  // The access token that came with it, unless it expired meanwhile (then one refresh with
  // the committed token).
  EXPECT_LE(refresher.upstream_requests(), 2);
  EXPECT_FALSE(refresher.HoldsUnstoredRefreshToken(grant_id_));
  EXPECT_FALSE(StoredRefreshToken() == before);
  EXPECT_TRUE(!store_->GetGrant(grant_id_)->refresh_attempt_at.has_value());

  const int64_t sent = refresher.upstream_requests();
  refresher.Forget(grant_id_);
  auto again =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << provider_->Log();
  EXPECT_EQ(refresher.upstream_requests(), sent + 1);
  EXPECT_EQ(store_->GetGrant(grant_id_)->status, store::GrantStatus::kActive);
}

TEST_F(RefresherTest, ARotatedTokenIsCommittedOnceALockedDatabaseFreesAgain) {
  WriteLockAfterAnswer locking(http_.get(), dir_.Join("grants.db"), absl::Seconds(8));
  RefresherOptions options;
  options.initial_backoff = absl::Milliseconds(50);
  options.max_backoff = absl::Milliseconds(200);
  options.request_timeout = absl::Seconds(30);  // the commit's retries outlast the lock
  auto created = Refresher::Create(
      RefresherDeps{store_.get(), sealer_.get(), &locking, resolver_.get(), &RealClock(), {}, {}},
      options);
  ASSERT_TRUE(created.ok()) << created.status();
  Refresher& refresher = **created;
  const SecretBytes before = StoredRefreshToken();

  locking.Arm();
  const absl::Time start = absl::Now();
  auto token =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(40));
  ASSERT_TRUE(locking.locked());
  ASSERT_TRUE(token.ok()) << token.status() << "\n" << provider_->Log();
  EXPECT_GE(absl::Now() - start, absl::Seconds(5));  // the commit waited out the store's refusal
  EXPECT_EQ(refresher.upstream_requests(), 1);
  EXPECT_FALSE(StoredRefreshToken() == before);
  EXPECT_TRUE(!store_->GetGrant(grant_id_)->refresh_attempt_at.has_value());

  // The committed token is the provider's current one: the grant keeps working.
  refresher.Forget(grant_id_);
  auto again =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << provider_->Log();
  EXPECT_EQ(refresher.upstream_requests(), 2);
  EXPECT_EQ(store_->GetGrant(grant_id_)->status, store::GrantStatus::kActive);
}

TEST_F(RefresherTest, ARevocationWaitsForAKeptRotatedTokenToBeStored) {
  FlakyRefreshTokenSealer flaky(sealer_.get());
  RefresherOptions options;
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(100);
  options.request_timeout = absl::Seconds(1);
  auto created = Refresher::Create(
      RefresherDeps{store_.get(), &flaky, http_.get(), resolver_.get(), &RealClock(), {}, {}},
      options);
  ASSERT_TRUE(created.ok()) << created.status();
  Refresher& refresher = **created;
  const SecretBytes before = StoredRefreshToken();
  flaky.FailUntilHealed();
  ASSERT_FALSE(
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(10))
          .ok());
  ASSERT_TRUE(testing::WaitFor([&] { return refresher.HoldsUnstoredRefreshToken(grant_id_); }));

  // Revoked while the provider's current token is only in memory: the upstream revoker must
  // wait (Refreshing) until it is stored, or it would revoke the dead one.
  refresher.Revoke(grant_id_, "offboarded");
  EXPECT_TRUE(refresher.Refreshing(grant_id_));
  EXPECT_TRUE(StoredRefreshToken() == before);
  flaky.Heal();
  ASSERT_TRUE(testing::WaitFor([&] { return !refresher.Refreshing(grant_id_); }));
  EXPECT_FALSE(refresher.HoldsUnstoredRefreshToken(grant_id_));
  EXPECT_FALSE(StoredRefreshToken() == before);
  EXPECT_EQ(refresher.upstream_requests(), 1);
  auto revoked =
      refresher.GetAccessToken(grant_id_, absl::ZeroDuration(), absl::Now() + absl::Seconds(5));
  EXPECT_THAT(revoked.status().message(), HasSubstr("REVOKED"));
  // The stored token is the provider's live one (what revoking there needs).
  auto live = RefreshByHand(StoredRefreshToken());
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(live->status, 200) << live->body;
}

}  // namespace
}  // namespace grantvault::tokens
