// The authorization-code flow against a real OAuth server (oidc-provider from
// npm, over TLS on 127.0.0.1), with a real SoftHSM2 token and SQLite store.
#include "oauth/authorizer.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/envelope_sealer.h"
#include "hsm/keys.h"
#include "oauth/catalog_resolver.h"
#include "oauth/id_token_verifier.h"
#include "store/sqlite_grant_store.h"
#include "store/sqlite_grant_store_internal.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_vault.h"

namespace grantvault::oauth {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kRedirect[] = "http://127.0.0.1:45678/callback";

std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string QueryParam(const std::string& url, const std::string& name) {
  auto fields = ParseQuery(url.substr(url.find('?') + 1));
  if (!fields.ok()) return "";
  for (const auto& [k, v] : *fields) {
    if (k == name) return v;
  }
  return "";
}

class AuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto provider = testing::OAuthProvider::Start({});
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    auto vault = testing::TestVault::Create(dir_.Join("grants.db"));
    ASSERT_TRUE(vault.ok()) << vault.status();
    hsm_ = std::move(vault->hsm);
    store_ = std::move(vault->store);
    sealer_ = std::move(vault->sealer);
    ASSERT_TRUE(MakeAuthorizer(provider_->ca_file()).ok());
  }

  // Trusts only `ca_file`, or (when empty) only the system's trust store.
  absl::Status MakeAuthorizer(const std::string& ca_file) {
    HttpClientOptions options;
    options.use_system_trust_store = ca_file.empty();
    options.ca_file = ca_file;
    GV_ASSIGN_OR_RETURN(http_, NewHttpClient(options));
    GV_ASSIGN_OR_RETURN(Catalog catalog, Catalog::LoadDefault());
    resolver_ = std::make_unique<CatalogResolver>(std::move(catalog), http_.get(), &clock_);
    id_tokens_ = NewJwksIdTokenVerifier();
    AuthorizerDeps deps{store_.get(),    sealer_.get(),    http_.get(),
                        resolver_.get(), id_tokens_.get(), &clock_};
    GV_ASSIGN_OR_RETURN(authorizer_, Authorizer::Create(deps));
    return absl::OkStatus();
  }

  absl::StatusOr<store::ConnectorRegistration> RegisterDemo() {
    store::ConnectorRegistration reg;
    reg.connector_id = "demo";
    reg.connector_type = "oidc";
    reg.client_id = provider_->clients()[0].client_id;
    reg.issuer = provider_->issuer();
    reg.registered_by = "alice-admin";
    return authorizer_->Register(reg, SecretBytes::CopyOf(provider_->clients()[0].client_secret));
  }

  // Begin, then play the user at the provider; returns the redirect URL.
  absl::StatusOr<std::string> StartAndApprove(bool deny = false,
                                              std::vector<std::string> scopes = {
                                                  "openid", "offline_access", "read"}) {
    GV_ASSIGN_OR_RETURN(Authorizer::Started started,
                        authorizer_->Begin("ws_acme", "demo", scopes, "alice-admin", kRedirect));
    last_url_ = started.authorization_url;
    return provider_->Approve(started.authorization_url, deny);
  }

  absl::StatusOr<Authorizer::Completed> CompleteWith(const std::string& redirect) {
    GV_ASSIGN_OR_RETURN(Callback cb, ParseCallback(redirect));
    return authorizer_->Complete(cb);
  }

  int64_t GrantCount() {
    auto n = store_->CountGrants();
    return n.ok() ? *n : -1;
  }

  testing::TempDir dir_;
  ManualClock clock_{absl::Now()};
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::unique_ptr<testing::SoftHsmToken> hsm_;
  std::unique_ptr<store::GrantStore> store_;
  std::unique_ptr<hsm::EnvelopeSealer> sealer_;
  std::unique_ptr<HttpClient> http_;
  std::unique_ptr<CatalogResolver> resolver_;
  std::unique_ptr<IdTokenVerifier> id_tokens_;
  std::unique_ptr<Authorizer> authorizer_;
  std::string last_url_;
};

TEST_F(AuthorizerTest, FullFlowStoresASealedGrantBoundToWorkspaceAndAccount) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  EXPECT_EQ(QueryParam(last_url_, "code_challenge_method"), "S256");
  EXPECT_EQ(QueryParam(last_url_, "prompt"), "consent");
  EXPECT_EQ(QueryParam(last_url_, "state").size(), 43u);
  EXPECT_FALSE(QueryParam(last_url_, "nonce").empty());
  EXPECT_EQ(QueryParam(last_url_, "code_verifier"), "");

  absl::StatusOr<Authorizer::Completed> done = CompleteWith(*redirect);
  ASSERT_TRUE(done.ok()) << done.status() << "\nprovider log:\n" << provider_->Log();
  const store::Grant& g = done->grant;
  EXPECT_EQ(g.workspace_id, "ws_acme");
  EXPECT_EQ(g.connector_id, "demo");
  EXPECT_EQ(g.connector_type, "oidc");
  EXPECT_EQ(g.account_id, "alice");  // the id_token's sub
  EXPECT_EQ(g.authorized_by, "alice-admin");
  EXPECT_THAT(g.scopes, Contains("read"));
  EXPECT_THAT(g.scopes, Contains("offline_access"));
  EXPECT_FALSE(done->replaced_grant_id.has_value());

  absl::StatusOr<store::Grant> stored = store_->GetGrant(g.grant_id);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->account_id, "alice");
  absl::StatusOr<store::SealedSecret> secret =
      store_->GetSealedSecret({g.grant_id, "refresh_token"});
  ASSERT_TRUE(secret.ok()) << secret.status();
  hsm::SealContext ctx{secret->workspace_id, secret->connector_id, secret->account_id,
                       secret->key.owner_id, secret->key.purpose};
  absl::StatusOr<SecretBytes> refresh = sealer_->Open(secret->record, ctx);
  ASSERT_TRUE(refresh.ok());
  ASSERT_GT(refresh->size(), 20u);
  // The refresh token is only in sealed form at rest: not in the database
  // file nor its write-ahead log.
  const std::string token(refresh->view());
  for (const char* suffix : {"", "-wal"}) {
    EXPECT_EQ(FileBytes(dir_.Join(std::string("grants.db") + suffix)).find(token),
              std::string::npos)
        << "refresh token found in grants.db" << suffix;
  }
  // Nor is the client secret or the PKCE verifier.
  EXPECT_EQ(FileBytes(dir_.Join("grants.db-wal")).find(provider_->clients()[0].client_secret),
            std::string::npos);
}

// oidc-provider advertises authorization_response_iss_parameter_supported and
// sends `iss` on its redirects (the full-flow test completes with it); the
// same redirect without `iss` cannot be told from one sent by another server.
TEST_F(AuthorizerTest, ARedirectWithoutIssIsRefusedWhenTheServerPromisesIt) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  ASSERT_EQ(QueryParam(*redirect, "iss"), provider_->issuer());
  std::string without_iss = redirect->substr(0, redirect->find('?') + 1);
  auto fields = ParseQuery(redirect->substr(redirect->find('?') + 1));
  ASSERT_TRUE(fields.ok());
  for (const auto& [name, value] : *fields) {
    if (name == "iss") continue;
    absl::StrAppend(&without_iss, without_iss.ends_with("?") ? "" : "&", name, "=", value);
  }
  absl::StatusOr<Authorizer::Completed> done = CompleteWith(without_iss);
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), absl::StatusCode::kInvalidArgument) << done.status();
  EXPECT_THAT(done.status().message(), HasSubstr("RFC 9207"));
  EXPECT_THAT(done.status().message(), Not(HasSubstr(QueryParam(*redirect, "code"))));
  EXPECT_EQ(GrantCount(), 0);
  EXPECT_THAT(provider_->Log(), Not(HasSubstr("POST /token")));
}

TEST_F(AuthorizerTest, AStateIsSingleUse) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  ASSERT_TRUE(CompleteWith(*redirect).ok());
  absl::StatusOr<Authorizer::Completed> again = CompleteWith(*redirect);
  EXPECT_TRUE(absl::IsInvalidArgument(again.status())) << again.status();
  EXPECT_THAT(again.status().message(), HasSubstr("already used"));
  EXPECT_EQ(GrantCount(), 1);
}

TEST_F(AuthorizerTest, AnUnknownStateIsRefused) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<Authorizer::Completed> done =
      CompleteWith(absl::StrCat(kRedirect, "?code=abc&state=", NewState()));
  EXPECT_TRUE(absl::IsInvalidArgument(done.status())) << done.status();
  EXPECT_EQ(GrantCount(), 0);
}

TEST_F(AuthorizerTest, AnExpiredStateIsRefusedAndStoresNothing) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  clock_.Advance(kAuthorizationSessionLifetime + absl::Seconds(1));
  absl::StatusOr<Authorizer::Completed> done = CompleteWith(*redirect);
  EXPECT_TRUE(absl::IsInvalidArgument(done.status())) << done.status();
  EXPECT_THAT(done.status().message(), HasSubstr("expired"));
  EXPECT_EQ(GrantCount(), 0);
}

TEST_F(AuthorizerTest, AccessDeniedAtTheProviderStoresNothing) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove(/*deny=*/true);
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  absl::StatusOr<Authorizer::Completed> done = CompleteWith(*redirect);
  EXPECT_TRUE(absl::IsPermissionDenied(done.status())) << done.status();
  EXPECT_THAT(done.status().message(), HasSubstr("access_denied"));
  EXPECT_EQ(GrantCount(), 0);
}

TEST_F(AuthorizerTest, AWrongPkceVerifierIsRefusedByTheServer) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  // Swap the stored verifier for another (properly sealed for the session).
  const std::string session_id = StateDigest(QueryParam(last_url_, "state"));
  absl::StatusOr<store::SealedSecret> verifier =
      store_->GetSealedSecret({session_id, "pkce_verifier"});
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  hsm::SealContext ctx{verifier->workspace_id, verifier->connector_id, verifier->account_id,
                       verifier->key.owner_id, verifier->key.purpose};
  auto other = sealer_->Seal(NewPkceVerifier(), ctx);
  ASSERT_TRUE(other.ok());
  verifier->record = other->record;
  ASSERT_TRUE(store_->PutSealedSecret(*verifier).ok());

  absl::StatusOr<Authorizer::Completed> done = CompleteWith(*redirect);
  EXPECT_TRUE(absl::IsFailedPrecondition(done.status())) << done.status();
  EXPECT_THAT(done.status().message(), HasSubstr("invalid_grant"));
  EXPECT_EQ(GrantCount(), 0);
}

TEST_F(AuthorizerTest, AnIdTokenWithAnotherNonceIsRefused) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> redirect = StartAndApprove();
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  ASSERT_TRUE(store::internal::ExecuteSqlForTesting(
                  *store_, "UPDATE authorization_sessions SET nonce = 'another-nonce'")
                  .ok());
  absl::StatusOr<Authorizer::Completed> done = CompleteWith(*redirect);
  EXPECT_FALSE(done.ok());
  EXPECT_THAT(done.status().message(), HasSubstr("nonce"));
  EXPECT_EQ(GrantCount(), 0);
}

TEST_F(AuthorizerTest, ReauthorizingReplacesTheGrant) {
  ASSERT_TRUE(RegisterDemo().ok());
  absl::StatusOr<std::string> first_redirect = StartAndApprove();
  ASSERT_TRUE(first_redirect.ok());
  absl::StatusOr<Authorizer::Completed> first = CompleteWith(*first_redirect);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::string> second_redirect =
      StartAndApprove(false, {"openid", "offline_access", "read", "write"});
  ASSERT_TRUE(second_redirect.ok());
  absl::StatusOr<Authorizer::Completed> second = CompleteWith(*second_redirect);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(second->replaced_grant_id.has_value());
  EXPECT_EQ(*second->replaced_grant_id, first->grant.grant_id);
  EXPECT_THAT(second->grant.scopes, Contains("write"));
  auto old = store_->GetGrant(first->grant.grant_id);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->status, store::GrantStatus::kRevoked);
  auto current = store_->FindCurrentGrant("ws_acme", "demo");
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->grant_id, second->grant.grant_id);
}

TEST_F(AuthorizerTest, ScopesTheConnectorDoesNotAllowAreRefusedBeforeAnyRequest) {
  store::ConnectorRegistration reg;
  reg.connector_id = "google_workspace";
  reg.connector_type = "google_workspace";
  reg.client_id = "123.apps.googleusercontent.com";
  reg.registered_by = "alice-admin";
  ASSERT_TRUE(authorizer_->Register(reg, SecretBytes::CopyOf(std::string_view("s"))).ok());
  auto started = authorizer_->Begin("ws_acme", "google_workspace", {"https://mail.google.com/"},
                                    "alice-admin", kRedirect);
  EXPECT_TRUE(absl::IsInvalidArgument(started.status())) << started.status();
  EXPECT_THAT(started.status().message(), HasSubstr("https://mail.google.com/"));
}

TEST_F(AuthorizerTest, RedirectUrisMustBeHttpsOrLoopback) {
  ASSERT_TRUE(RegisterDemo().ok());
  EXPECT_FALSE(authorizer_->Begin("ws", "demo", {}, "a", "http://evil.example/cb").ok());
  EXPECT_FALSE(authorizer_->Begin("ws", "demo", {}, "a", "http://127.0.0.1@evil/cb").ok());
  EXPECT_TRUE(IsAcceptableRedirectUri("http://[::1]:8080/cb"));
  EXPECT_TRUE(IsAcceptableRedirectUri("https://hub.example.com/oauth/callback"));
  EXPECT_TRUE(IsAcceptableRedirectUri("https://hub.example.com/oauth/callback?tenant=acme"));
  for (const char* bad :
       {"https://hub.example.com/cb#frag", "/oauth/callback", "hub.example.com/cb",
        "ftp://hub.example.com/cb", "https://user@hub.example.com/cb", "https:///cb",
        "http://10.0.0.1/cb", "https://hub.example.com/a b"}) {
    EXPECT_FALSE(IsAcceptableRedirectUri(bad)) << bad;
  }
}

TEST(RedirectUriMatchesTest, ExactOrAnyPortOnALoopbackUriRegisteredWithout) {
  EXPECT_TRUE(RedirectUriMatches("https://hub.example.com/oauth/callback",
                                 "https://hub.example.com/oauth/callback"));
  EXPECT_FALSE(RedirectUriMatches("https://hub.example.com/oauth/callback",
                                  "https://hub.example.com:8443/oauth/callback"));
  EXPECT_FALSE(RedirectUriMatches("https://hub.example.com/oauth/callback",
                                  "https://hub.example.com/oauth/callback2"));
  EXPECT_FALSE(RedirectUriMatches("https://hub.example.com/oauth/callback",
                                  "https://hub.example.com/oauth/callback?x=1"));
  EXPECT_TRUE(RedirectUriMatches("http://127.0.0.1/callback", "http://127.0.0.1:53682/callback"));
  EXPECT_TRUE(RedirectUriMatches("http://[::1]/callback", "http://[::1]:53682/callback"));
  EXPECT_FALSE(RedirectUriMatches("http://127.0.0.1/callback", "http://127.0.0.1:53682/other"));
  EXPECT_FALSE(RedirectUriMatches("http://127.0.0.1/callback", "http://[::1]:53682/callback"));
  EXPECT_FALSE(
      RedirectUriMatches("http://127.0.0.1:8080/callback", "http://127.0.0.1:9090/callback"));
  EXPECT_FALSE(RedirectUriMatches("http://127.0.0.1/callback", "https://127.0.0.1/callback"));
}

// A registration carries the redirect URIs its client is registered with;
// Begin uses only those (none registered: only a loopback listener).
TEST_F(AuthorizerTest, BeginUsesOnlyARegisteredRedirectUri) {
  store::ConnectorRegistration reg;
  reg.connector_id = "demo";
  reg.connector_type = "oidc";
  reg.client_id = provider_->clients()[0].client_id;
  reg.issuer = provider_->issuer();
  reg.registered_by = "alice-admin";
  const SecretBytes secret = SecretBytes::CopyOf(provider_->clients()[0].client_secret);
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"http://hub.example.com/oauth/callback"},
        std::vector<std::string>{"https://hub.example.com/cb#x"},
        std::vector<std::string>{"https://hub.example.com/cb", "https://hub.example.com/cb"},
        std::vector<std::string>{""}}) {
    reg.redirect_uris = bad;
    absl::StatusOr<store::ConnectorRegistration> refused = authorizer_->Register(reg, secret);
    EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << bad[0] << ": " << refused.status();
    EXPECT_TRUE(absl::IsNotFound(store_->GetConnectorRegistration("demo").status()));
  }

  // None registered: the loopback listener only.
  reg.redirect_uris.clear();
  ASSERT_TRUE(authorizer_->Register(reg, secret).ok());
  EXPECT_TRUE(authorizer_->Begin("ws", "demo", {}, "a", kRedirect).ok());
  absl::StatusOr<Authorizer::Started> https =
      authorizer_->Begin("ws", "demo", {}, "a", "https://hub.example.com/oauth/callback");
  EXPECT_TRUE(absl::IsInvalidArgument(https.status())) << https.status();
  EXPECT_THAT(https.status().message(), HasSubstr("registers no redirect URI"));

  reg.redirect_uris = {"https://hub.example.com/oauth/callback", "http://127.0.0.1/callback"};
  absl::StatusOr<store::ConnectorRegistration> stored = authorizer_->Register(reg, secret);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(store_->GetConnectorRegistration("demo")->redirect_uris, reg.redirect_uris);
  absl::StatusOr<Authorizer::Started> hub =
      authorizer_->Begin("ws", "demo", {}, "a", "https://hub.example.com/oauth/callback");
  ASSERT_TRUE(hub.ok()) << hub.status();
  EXPECT_EQ(QueryParam(hub->authorization_url, "redirect_uri"),
            "https://hub.example.com/oauth/callback");
  EXPECT_TRUE(authorizer_->Begin("ws", "demo", {}, "a", kRedirect).ok());
  absl::StatusOr<Authorizer::Started> other =
      authorizer_->Begin("ws", "demo", {}, "a", "https://evil.example.com/oauth/callback");
  EXPECT_TRUE(absl::IsInvalidArgument(other.status())) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("is not registered for connector demo"));
}

TEST_F(AuthorizerTest, AServerCertificateThatIsNotTrustedFailsRegistration) {
  // The system trust store does not know the provider's private CA.
  ASSERT_TRUE(MakeAuthorizer(/*ca_file=*/"").ok());
  absl::StatusOr<store::ConnectorRegistration> reg = RegisterDemo();
  EXPECT_TRUE(absl::IsUnauthenticated(reg.status())) << reg.status();
  EXPECT_THAT(reg.status().message(), HasSubstr("certificate"));
  EXPECT_TRUE(absl::IsNotFound(store_->GetConnectorRegistration("demo").status()));
}

}  // namespace
}  // namespace grantvault::oauth
