// Every connector type of the catalog, end to end against a local TLS server that answers in
// that provider's documented shape: the authorization URL Begin builds, the exact token request
// (and identity request) Complete sends, and the grant and sealed secret it stores. Also the
// token endpoint's failure modes: a redirect, an oversized or malformed answer, Slack's
// ok:false and GitHub's error with HTTP 200, each a clear error with nothing stored.
//
// One TlsTestServer on 127.0.0.1 plays every provider: the catalog is oauth/connectors.toml with
// each endpoint's https://<host> rewritten to https://127.0.0.1:<port>/<host>, so the request
// path still names the host (after template expansion: /acme.zendesk.com/oauth/tokens) and
// every template parameter is still used by an endpoint, as the catalog requires.
#include <cjose/cjose.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/envelope_sealer.h"
#include "hsm/keys.h"
#include "oauth/authorizer.h"
#include "oauth/catalog_resolver.h"
#include "oauth/id_token_verifier.h"
#include "oauth/pkce.h"
#include "store/sqlite_grant_store.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_cert.h"
#include "tests/testing/test_vault.h"
#include "tests/testing/tls_test_server.h"

namespace grantvault::oauth {
namespace {

using ::grantvault::testing::Reply;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;
using json = nlohmann::json;
using Params = std::map<std::string, std::string>;

constexpr char kRedirect[] = "http://127.0.0.1:45678/callback";
constexpr char kClientId[] = "client-123";
constexpr char kClientSecret[] = "s3cret-456";
constexpr char kBasicAuth[] = "Basic Y2xpZW50LTEyMzpzM2NyZXQtNDU2";  // client-123:s3cret-456
constexpr char kCode[] = "code-0ff1ce";
constexpr char kJsonType[] = "application/json";
constexpr char kFormType[] = "application/x-www-form-urlencoded";
constexpr char kMicrosoftTenantId[] = "9188040d-6c67-4c5b-b112-36a304b66dad";

std::string FileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Params ToMap(const std::vector<std::pair<std::string, std::string>>& fields) {
  Params out;
  for (const auto& [k, v] : fields) {
    EXPECT_FALSE(out.contains(k)) << "field " << k << " sent twice";
    out[k] = v;
  }
  return out;
}

Params UrlParams(const std::string& url) {
  auto fields = ParseQuery(url.substr(url.find('?') + 1));
  EXPECT_TRUE(fields.ok()) << fields.status();
  return fields.ok() ? ToMap(*fields) : Params{};
}

Params FormBody(const std::string& body) {
  auto fields = ParseQuery(body);
  EXPECT_TRUE(fields.ok()) << fields.status();
  return fields.ok() ? ToMap(*fields) : Params{};
}

std::string Path(const std::string& target) { return target.substr(0, target.find('?')); }

struct JwkDeleter {
  void operator()(cjose_jwk_t* p) const { cjose_jwk_release(p); }
};

std::string SignRs256(cjose_jwk_t* key, const json& claims) {
  cjose_err err{};
  cjose_header_t* header = cjose_header_new(&err);
  EXPECT_TRUE(cjose_header_set(header, CJOSE_HDR_ALG, CJOSE_HDR_ALG_RS256, &err));
  EXPECT_TRUE(cjose_header_set(header, CJOSE_HDR_KID, "k1", &err));
  const std::string payload = claims.dump();
  cjose_jws_t* jws = cjose_jws_sign(key, header, reinterpret_cast<const uint8_t*>(payload.data()),
                                    payload.size(), &err);
  EXPECT_NE(jws, nullptr) << err.message;
  const char* compact = nullptr;
  EXPECT_TRUE(cjose_jws_export(jws, &compact, &err));
  std::string out = compact;
  cjose_jws_release(jws);
  cjose_header_release(header);
  return out;
}

Reply JsonReply(const json& body, int status = 200) {
  Reply r;
  r.status = status;
  r.headers = {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}};
  r.body = body.dump();
  return r;
}

class ProvidersTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    static const uint8_t kExponent[] = {0x01, 0x00, 0x01};
    cjose_err err{};
    signing_key_ = cjose_jwk_create_RSA_random(2048, kExponent, sizeof(kExponent), &err);
    ASSERT_NE(signing_key_, nullptr) << err.message;
    ASSERT_TRUE(cjose_jwk_set_kid(signing_key_, "k1", 2, &err));
  }
  static void TearDownTestSuite() { cjose_jwk_release(signing_key_); }

  void SetUp() override {
    certs_ = testing::WriteTestCertificates(dir_.path());
    testing::TlsTestServerOptions options;
    options.cert_file = certs_.cert_file;
    options.key_file = certs_.key_file;
    options.handler = [this](const testing::RecordedRequest& r) { return Route(r); };
    auto server = testing::TlsTestServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    origin_ = absl::StrCat("https://127.0.0.1:", server_->port());

    auto vault = testing::TestVault::Create(dir_.Join("grants.db"));
    ASSERT_TRUE(vault.ok()) << vault.status();
    hsm_ = std::move(vault->hsm);
    store_ = std::move(vault->store);
    sealer_ = std::move(vault->sealer);

    HttpClientOptions http_options;
    http_options.use_system_trust_store = false;
    http_options.ca_file = certs_.ca_file;
    auto http = NewHttpClient(http_options);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = std::move(*http);
    // Every endpoint's scheme and authority become the test server's; the host moves into the
    // path so that handlers can route by it.
    const std::regex endpoint("^((?:[a-z_]*endpoint|jwks_uri|issuer) = \")https://([^/\"]+)");
    std::istringstream lines(FileText(std::string(GV_SOURCE_DIR) + "/oauth/connectors.toml"));
    std::string toml;
    for (std::string line; std::getline(lines, line);) {
      toml += std::regex_replace(line, endpoint, absl::StrCat("$1", origin_, "/$2")) + "\n";
    }
    auto catalog = Catalog::LoadString(toml, "connectors.toml (test rewrite)");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    resolver_ = std::make_unique<CatalogResolver>(std::move(*catalog), http_.get(), &clock_);
    id_tokens_ = NewJwksIdTokenVerifier();
    AuthorizerDeps deps{store_.get(),    sealer_.get(),    http_.get(),
                        resolver_.get(), id_tokens_.get(), &clock_};
    auto authorizer = Authorizer::Create(deps);
    ASSERT_TRUE(authorizer.ok());
    authorizer_ = std::move(*authorizer);
  }

  // --- the fake provider ----------------------------------------------------------------
  Reply Route(const testing::RecordedRequest& r) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = routes_.find(Path(r.target));
    if (it == routes_.end()) return JsonReply({{"error", "not_found"}}, 404);
    return it->second;
  }
  void Serve(const std::string& path, Reply reply) {
    std::lock_guard<std::mutex> lock(mu_);
    routes_[path] = std::move(reply);
  }
  std::string Jwks() const {
    cjose_err err{};
    char* text = cjose_jwk_to_json(signing_key_, /*priv=*/false, &err);
    json key = json::parse(text);
    cjose_get_dealloc()(text);
    return json{{"keys", json::array({key})}}.dump();
  }
  std::string IdToken(const std::string& issuer, const std::string& nonce, json extra) {
    const int64_t now = absl::ToUnixSeconds(clock_.Now());
    json claims = {{"iss", issuer},  {"aud", kClientId}, {"sub", "subject-42"},
                   {"nonce", nonce}, {"iat", now - 5},   {"exp", now + 3600}};
    claims.update(extra);
    return SignRs256(signing_key_, claims);
  }

  // --- the flow ---------------------------------------------------------------------------
  void Register(const std::string& type, std::map<std::string, std::string> parameters = {},
                std::string issuer = "") {
    store::ConnectorRegistration reg;
    reg.connector_id = type;
    reg.connector_type = type;
    reg.client_id = kClientId;
    reg.issuer = std::move(issuer);
    reg.parameters = std::move(parameters);
    reg.registered_by = "alice-admin";
    auto done = authorizer_->Register(reg, SecretBytes::CopyOf(std::string_view(kClientSecret)));
    ASSERT_TRUE(done.ok()) << done.status();
  }

  // Begin; returns the authorization URL's parameters after checking the ones every connector
  // shares, and that the URL starts with `endpoint` (a path on the server).
  Params Begin(const std::string& type, const std::string& endpoint,
               std::vector<std::string> scopes = {}) {
    auto started = authorizer_->Begin("ws_acme", type, std::move(scopes), "alice-admin", kRedirect);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return {};
    const std::string& url = started->authorization_url;
    EXPECT_EQ(url.substr(0, url.find('?')), origin_ + endpoint);
    Params p = UrlParams(url);
    EXPECT_EQ(p["response_type"], "code");
    EXPECT_EQ(p["client_id"], kClientId);
    EXPECT_EQ(p["redirect_uri"], kRedirect);
    EXPECT_EQ(p["state"].size(), 43u);
    state_ = p["state"];
    return p;
  }

  absl::StatusOr<Authorizer::Completed> Complete() {
    GV_ASSIGN_OR_RETURN(Callback cb,
                        ParseCallback(absl::StrCat(kRedirect, "?code=", kCode, "&state=", state_)));
    return authorizer_->Complete(cb);
  }

  // Checks the PKCE parameters of the authorization URL; returns the challenge.
  static std::string ExpectPkce(Params& p) {
    EXPECT_EQ(p["code_challenge_method"], "S256");
    EXPECT_EQ(p["code_challenge"].size(), 43u);
    return p["code_challenge"];
  }
  static void ExpectNoPkce(const Params& p) {
    EXPECT_FALSE(p.contains("code_challenge"));
    EXPECT_FALSE(p.contains("code_challenge_method"));
  }
  // The verifier sent at the token endpoint answers the challenge of the authorization URL.
  static void ExpectVerifierMatches(const std::string& verifier, const std::string& challenge) {
    EXPECT_EQ(verifier.size(), 43u);
    EXPECT_EQ(PkceChallengeS256(SecretBytes::CopyOf(std::string_view(verifier))), challenge);
  }

  std::vector<testing::RecordedRequest> RequestsTo(const std::string& path) const {
    std::vector<testing::RecordedRequest> out;
    for (auto& r : server_->requests()) {
      if (Path(r.target) == path) out.push_back(r);
    }
    return out;
  }
  // The one token request, checked for method, path, Content-Type and Accept.
  testing::RecordedRequest TokenRequest(const std::string& path, const std::string& content_type) {
    std::vector<testing::RecordedRequest> requests = RequestsTo(path);
    EXPECT_EQ(requests.size(), 1u);
    if (requests.empty()) return {};
    const testing::RecordedRequest& r = requests.front();
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, path);
    EXPECT_EQ(r.Header("Content-Type"), content_type);
    EXPECT_EQ(r.Header("Accept"), kJsonType);
    size_t accepts = 0;
    for (const auto& [name, value] : r.headers)
      if (name == "Accept") ++accepts;
    EXPECT_EQ(accepts, 1u);
    return r;
  }
  // The one identity GET to `path`, with the access token as a bearer.
  void ExpectBearerGet(const std::string& path, const std::string& access_token) {
    std::vector<testing::RecordedRequest> requests = RequestsTo(path);
    ASSERT_EQ(requests.size(), 1u) << path;
    EXPECT_EQ(requests[0].method, "GET");
    EXPECT_EQ(requests[0].Header("Authorization"), "Bearer " + access_token);
    EXPECT_EQ(requests[0].body, "");
  }

  // The grant as stored, and its one sealed secret under `purpose`, opened.
  std::string SealedSecret(const store::Grant& g, const std::string& purpose) {
    auto stored = store_->GetGrant(g.grant_id);
    EXPECT_TRUE(stored.ok()) << stored.status();
    if (stored.ok()) {
      EXPECT_EQ(stored->account_id, g.account_id);
      EXPECT_EQ(stored->connector_id, g.connector_id);
      EXPECT_EQ(stored->scopes, g.scopes);
      EXPECT_EQ(stored->metadata, g.metadata);
      EXPECT_EQ(stored->status, store::GrantStatus::kActive);
      EXPECT_EQ(stored->access_token_expires_at.has_value(), g.access_token_expires_at.has_value());
    }
    const std::string other = purpose == "refresh_token" ? "access_token" : "refresh_token";
    EXPECT_TRUE(absl::IsNotFound(store_->GetSealedSecret({g.grant_id, other}).status()));
    auto secret = store_->GetSealedSecret({g.grant_id, purpose});
    EXPECT_TRUE(secret.ok()) << secret.status();
    if (!secret.ok()) return "";
    EXPECT_EQ(secret->account_id, g.account_id);
    EXPECT_EQ(secret->workspace_id, "ws_acme");
    hsm::SealContext ctx{secret->workspace_id, secret->connector_id, secret->account_id,
                         secret->key.owner_id, secret->key.purpose};
    auto opened = sealer_->Open(secret->record, ctx);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? std::string(opened->view()) : "";
  }

  void ExpectGrantBasics(const store::Grant& g, const std::string& type) {
    EXPECT_EQ(g.workspace_id, "ws_acme");
    EXPECT_EQ(g.connector_id, type);
    EXPECT_EQ(g.connector_type, type);
    EXPECT_EQ(g.authorized_by, "alice-admin");
    EXPECT_EQ(g.status, store::GrantStatus::kActive);
  }

  // A failed Complete: the error's code and text, nothing stored, no secret in the message.
  void ExpectFailure(const absl::StatusOr<Authorizer::Completed>& done, absl::StatusCode code,
                     const std::string& text) {
    ASSERT_FALSE(done.ok());
    EXPECT_EQ(done.status().code(), code) << done.status();
    EXPECT_THAT(done.status().message(), HasSubstr(text));
    EXPECT_THAT(done.status().message(), Not(HasSubstr(kCode)));
    EXPECT_THAT(done.status().message(), Not(HasSubstr(kClientSecret)));
    EXPECT_EQ(*store_->CountGrants(), 0);
  }

  static cjose_jwk_t* signing_key_;
  testing::TempDir dir_;
  testing::CertificateFiles certs_;
  ManualClock clock_{absl::Now()};
  std::mutex mu_;
  std::map<std::string, Reply> routes_;  // guarded by mu_
  std::unique_ptr<testing::TlsTestServer> server_;
  std::string origin_;
  std::unique_ptr<testing::SoftHsmToken> hsm_;
  std::unique_ptr<store::GrantStore> store_;
  std::unique_ptr<hsm::EnvelopeSealer> sealer_;
  std::unique_ptr<HttpClient> http_;
  std::unique_ptr<CatalogResolver> resolver_;
  std::unique_ptr<IdTokenVerifier> id_tokens_;
  std::unique_ptr<Authorizer> authorizer_;
  std::string state_;
};

cjose_jwk_t* ProvidersTest::signing_key_ = nullptr;

// --- Google Workspace: Basic, form, PKCE, offline access, id_token ---------------------------
TEST_F(ProvidersTest, GoogleWorkspace) {
  Register("google_workspace");
  Params p = Begin("google_workspace", "/accounts.google.com/o/oauth2/v2/auth",
                   {"openid", "email", "https://www.googleapis.com/auth/drive.readonly"});
  EXPECT_EQ(p["scope"], "openid email https://www.googleapis.com/auth/drive.readonly");
  EXPECT_EQ(p["access_type"], "offline");
  EXPECT_EQ(p["prompt"], "consent");
  EXPECT_FALSE(p.contains("include_granted_scopes"));
  EXPECT_FALSE(p["nonce"].empty());
  const std::string challenge = ExpectPkce(p);

  const std::string issuer = origin_ + "/accounts.google.com";
  Serve("/www.googleapis.com/oauth2/v3/certs", JsonReply(json::parse(Jwks())));
  Serve("/oauth2.googleapis.com/token",
        JsonReply({{"access_token", "ya29.google-access"},
                   {"expires_in", 3599},
                   {"refresh_token", "1//google-refresh"},
                   {"scope",
                    "openid https://www.googleapis.com/auth/userinfo.email "
                    "https://www.googleapis.com/auth/drive.readonly"},
                   {"token_type", "Bearer"},
                   {"id_token", IdToken(issuer, p["nonce"],
                                        {{"hd", "acme.com"},
                                         {"email", "ada@acme.com"},
                                         {"email_verified", true},
                                         {"name", "Ada"}})}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/oauth2.googleapis.com/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), kBasicAuth);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body, UnorderedElementsAre(Pair("grant_type", "authorization_code"),
                                         Pair("code", kCode), Pair("redirect_uri", kRedirect)));
  EXPECT_EQ(RequestsTo("/www.googleapis.com/oauth2/v3/certs").size(), 1u);

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "google_workspace");
  EXPECT_EQ(g.account_id, "subject-42");
  EXPECT_THAT(g.scopes, ElementsAre("openid", "https://www.googleapis.com/auth/userinfo.email",
                                    "https://www.googleapis.com/auth/drive.readonly"));
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("hd", "acme.com"), Pair("email", "ada@acme.com")));
  EXPECT_EQ(g.access_token_expires_at, clock_.Now() + absl::Seconds(3599));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "1//google-refresh");
}

TEST_F(ProvidersTest, GoogleWithoutARefreshTokenIsRefused) {
  Register("google_workspace");
  Params p = Begin("google_workspace", "/accounts.google.com/o/oauth2/v2/auth");
  Serve("/www.googleapis.com/oauth2/v3/certs", JsonReply(json::parse(Jwks())));
  Serve("/oauth2.googleapis.com/token",
        JsonReply(
            {{"access_token", "ya29.a"},
             {"expires_in", 3599},
             {"token_type", "Bearer"},
             {"id_token", IdToken(origin_ + "/accounts.google.com", p["nonce"], json::object())}}));
  ExpectFailure(Complete(), absl::StatusCode::kFailedPrecondition, "no refresh_token");
}

// --- Microsoft 365: post, form, tenant template, offline_access, {tenantid} issuer -----------
TEST_F(ProvidersTest, Microsoft365) {
  Register("microsoft_365");  // tenant: the default, organizations
  Params p =
      Begin("microsoft_365", "/login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
            {"User.Read", "Mail.Read"});
  EXPECT_EQ(p["scope"], "openid offline_access User.Read Mail.Read");
  EXPECT_EQ(p["prompt"], "consent");
  EXPECT_FALSE(p["nonce"].empty());
  const std::string challenge = ExpectPkce(p);

  const std::string issuer =
      absl::StrCat(origin_, "/login.microsoftonline.com/", kMicrosoftTenantId, "/v2.0");
  Serve("/login.microsoftonline.com/organizations/discovery/v2.0/keys",
        JsonReply(json::parse(Jwks())));
  Serve("/login.microsoftonline.com/organizations/oauth2/v2.0/token",
        JsonReply({{"token_type", "Bearer"},
                   {"scope", "openid User.Read Mail.Read"},
                   {"expires_in", 4460},
                   {"ext_expires_in", 4460},
                   {"access_token", "eyJ0eXAi.ms-access"},
                   {"refresh_token", "0.AAAA.ms-refresh"},
                   {"id_token", IdToken(issuer, p["nonce"],
                                        {{"tid", kMicrosoftTenantId},
                                         {"oid", "00000000-0000-0000-66f3-3332eca7ea81"},
                                         {"preferred_username", "ada@acme.onmicrosoft.com"}})}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t =
      TokenRequest("/login.microsoftonline.com/organizations/oauth2/v2.0/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body,
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "microsoft_365");
  EXPECT_EQ(g.account_id, "subject-42");
  EXPECT_THAT(g.scopes, ElementsAre("openid", "User.Read", "Mail.Read"));
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("tid", kMicrosoftTenantId),
                                   Pair("oid", "00000000-0000-0000-66f3-3332eca7ea81"),
                                   Pair("preferred_username", "ada@acme.onmicrosoft.com")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "0.AAAA.ms-refresh");
}

// --- Slack: Basic, form, comma scopes, ok:true bot token, no rotation -> access token sealed --
TEST_F(ProvidersTest, Slack) {
  Register("slack");
  Params p = Begin("slack", "/slack.com/oauth/v2/authorize", {"channels:read", "chat:write"});
  EXPECT_EQ(p["scope"], "channels:read,chat:write");
  EXPECT_FALSE(p.contains("user_scope"));
  EXPECT_FALSE(p.contains("nonce"));
  const std::string challenge = ExpectPkce(p);

  Serve("/slack.com/api/oauth.v2.access",
        JsonReply({{"ok", true},
                   {"access_token", "xoxb-17653672481-bot"},
                   {"token_type", "bot"},
                   {"scope", "channels:read,chat:write"},
                   {"bot_user_id", "U0KRQLJ9H"},
                   {"app_id", "A0KRD7HC3"},
                   {"team", {{"name", "Slack Softball Team"}, {"id", "T9TK3CUKW"}}},
                   {"enterprise", nullptr},
                   {"is_enterprise_install", false},
                   {"authed_user", {{"id", "U1234"}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/slack.com/api/oauth.v2.access", kFormType);
  EXPECT_EQ(t.Header("Authorization"), kBasicAuth);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body, UnorderedElementsAre(Pair("grant_type", "authorization_code"),
                                         Pair("code", kCode), Pair("redirect_uri", kRedirect)));
  EXPECT_EQ(server_->request_count(), 1u);  // the account comes from the token response

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "slack");
  EXPECT_EQ(g.account_id, "T9TK3CUKW:U1234");
  EXPECT_THAT(g.scopes, ElementsAre("channels:read", "chat:write"));
  EXPECT_THAT(
      g.metadata,
      UnorderedElementsAre(Pair("team_id", "T9TK3CUKW"), Pair("team_name", "Slack Softball Team"),
                           Pair("app_id", "A0KRD7HC3"), Pair("bot_user_id", "U0KRQLJ9H")));
  EXPECT_EQ(g.access_token_expires_at, std::nullopt);
  EXPECT_EQ(SealedSecret(g, "access_token"), "xoxb-17653672481-bot");
}

TEST_F(ProvidersTest, SlackWithTokenRotationSealsTheRefreshToken) {
  Register("slack");
  Begin("slack", "/slack.com/oauth/v2/authorize");
  Serve("/slack.com/api/oauth.v2.access",
        JsonReply({{"ok", true},
                   {"access_token", "xoxe.xoxb-1-rotating"},
                   {"refresh_token", "xoxe-1-refresh"},
                   {"expires_in", 43200},
                   {"token_type", "bot"},
                   {"scope", "channels:read"},
                   {"bot_user_id", "U0KRQLJ9H"},
                   {"app_id", "A0KRD7HC3"},
                   {"team", {{"name", "Acme"}, {"id", "T1"}}},
                   {"enterprise", {{"name", "Acme Corp"}, {"id", "E1"}}},
                   {"is_enterprise_install", false},
                   {"authed_user", {{"id", "U2"}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->grant.account_id, "T1:U2");
  EXPECT_EQ(done->grant.metadata.at("enterprise_id"), "E1");
  EXPECT_EQ(done->grant.access_token_expires_at, clock_.Now() + absl::Hours(12));
  EXPECT_EQ(SealedSecret(done->grant, "refresh_token"), "xoxe-1-refresh");
}

TEST_F(ProvidersTest, SlackOkFalseWithHttp200IsAnError) {
  Register("slack");
  Begin("slack", "/slack.com/oauth/v2/authorize");
  Serve("/slack.com/api/oauth.v2.access", JsonReply({{"ok", false}, {"error", "invalid_code"}}));
  ExpectFailure(Complete(), absl::StatusCode::kFailedPrecondition,
                "token endpoint refused the request: invalid_code");
}

// --- GitHub: post, form, Accept: application/json, comma scopes in the answer, GET /user -----
TEST_F(ProvidersTest, GitHubOAuthApp) {
  Register("github");
  Params p = Begin("github", "/github.com/login/oauth/authorize", {"read:user", "repo"});
  EXPECT_EQ(p["scope"], "read:user repo");
  const std::string challenge = ExpectPkce(p);

  Serve("/github.com/login/oauth/access_token",
        JsonReply({{"access_token", "gho_16C7e42F292c6912E7710c838347Ae178B4a"},
                   {"scope", "read:user,repo"},
                   {"token_type", "bearer"}}));
  Serve("/api.github.com/user",
        JsonReply({{"login", "octocat"}, {"id", 583231}, {"type", "User"}, {"email", nullptr}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/github.com/login/oauth/access_token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body,
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));
  ExpectBearerGet("/api.github.com/user", "gho_16C7e42F292c6912E7710c838347Ae178B4a");

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "github");
  EXPECT_EQ(g.account_id, "583231");
  EXPECT_THAT(g.scopes, ElementsAre("read:user", "repo"));
  EXPECT_THAT(g.metadata, UnorderedElementsAre(Pair("login", "octocat")));
  EXPECT_EQ(SealedSecret(g, "access_token"), "gho_16C7e42F292c6912E7710c838347Ae178B4a");
}

TEST_F(ProvidersTest, GitHubAppWithExpiringTokensSealsTheRefreshToken) {
  Register("github");
  Begin("github", "/github.com/login/oauth/authorize");
  // Form-encoded, as GitHub answers without Accept: application/json.
  Reply form;
  form.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}};
  form.body =
      "access_token=ghu_access&expires_in=28800&refresh_token=ghr_refresh"
      "&refresh_token_expires_in=15897600&scope=&token_type=bearer";
  Serve("/github.com/login/oauth/access_token", form);
  Serve("/api.github.com/user", JsonReply({{"login", "octocat"}, {"id", 1}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->grant.account_id, "1");
  EXPECT_THAT(done->grant.scopes, IsEmpty());  // GitHub Apps: permissions, not scopes
  EXPECT_EQ(done->grant.access_token_expires_at, clock_.Now() + absl::Hours(8));
  EXPECT_EQ(SealedSecret(done->grant, "refresh_token"), "ghr_refresh");
}

TEST_F(ProvidersTest, GitHubErrorWithHttp200IsAnError) {
  Register("github");
  Begin("github", "/github.com/login/oauth/authorize");
  Serve("/github.com/login/oauth/access_token",
        JsonReply({{"error", "bad_verification_code"},
                   {"error_description", "The code passed is incorrect or expired."},
                   {"error_uri", "https://docs.github.com/apps/troubleshooting"}}));
  ExpectFailure(Complete(), absl::StatusCode::kFailedPrecondition,
                "refused the request: bad_verification_code (The code passed is incorrect");
  EXPECT_TRUE(RequestsTo("/api.github.com/user").empty());
}

// --- Notion: Basic + JSON body, Notion-Version, no scopes, no PKCE, owner user ---------------
TEST_F(ProvidersTest, Notion) {
  Register("notion");
  Params p = Begin("notion", "/api.notion.com/v1/oauth/authorize");
  EXPECT_FALSE(p.contains("scope"));
  EXPECT_EQ(p["owner"], "user");
  ExpectNoPkce(p);

  Serve("/api.notion.com/v1/oauth/token",
        JsonReply({{"access_token", "ntn_access"},
                   {"refresh_token", "ntn_refresh"},
                   {"token_type", "bearer"},
                   {"bot_id", "b-7"},
                   {"workspace_id", "w-1"},
                   {"workspace_name", "Acme HQ"},
                   {"workspace_icon", "https://example.com/icon.png"},
                   {"duplicated_template_id", nullptr},
                   {"owner",
                    {{"type", "user"},
                     {"user", {{"object", "user"}, {"id", "u-42"}, {"name", "Ada"}}}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/api.notion.com/v1/oauth/token", kJsonType);
  EXPECT_EQ(t.Header("Authorization"), kBasicAuth);
  EXPECT_EQ(t.Header("Notion-Version"), "2025-09-03");
  EXPECT_EQ(
      json::parse(t.body),
      (json{{"grant_type", "authorization_code"}, {"code", kCode}, {"redirect_uri", kRedirect}}));

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "notion");
  EXPECT_EQ(g.account_id, "u-42");
  EXPECT_THAT(g.scopes, IsEmpty());
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("workspace_id", "w-1"), Pair("workspace_name", "Acme HQ"),
                                   Pair("bot_id", "b-7")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "ntn_refresh");
}

// --- Salesforce: my-domain template, post, form, instance_url, id URL parsed -----------------
TEST_F(ProvidersTest, Salesforce) {
  Register("salesforce", {{"my_domain", "acme"}});
  Params p = Begin("salesforce", "/acme.my.salesforce.com/services/oauth2/authorize");
  EXPECT_EQ(p["scope"], "api refresh_token");
  const std::string challenge = ExpectPkce(p);

  Serve("/acme.my.salesforce.com/services/oauth2/token",
        JsonReply({{"access_token", "00Dxx0000001gPL!sf-access"},
                   {"refresh_token", "5Aep861sf-refresh"},
                   {"signature", "CMJ4l+CCaPQiKjoOEwEig9H4wqhpuLSk4J2urAe+fVg="},
                   {"scope", "refresh_token api"},
                   {"instance_url", "https://acme.my.salesforce.com"},
                   {"id", "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"},
                   {"token_type", "Bearer"},
                   {"issued_at", "1278448101416"}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t =
      TokenRequest("/acme.my.salesforce.com/services/oauth2/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body,
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));
  EXPECT_EQ(server_->request_count(), 1u);  // the id URL is parsed, not fetched

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "salesforce");
  EXPECT_EQ(g.account_id, "005xx000001SwiUAAS");
  EXPECT_THAT(g.scopes, ElementsAre("refresh_token", "api"));
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("instance_url", "https://acme.my.salesforce.com"),
                                   Pair("organization_id", "00Dxx0000001gPLEAY")));
  EXPECT_EQ(g.access_token_expires_at, std::nullopt);
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "5Aep861sf-refresh");
}

TEST_F(ProvidersTest, SalesforceInstanceUrlOutsideSalesforceIsRefused) {
  Register("salesforce", {{"my_domain", "acme"}});
  Begin("salesforce", "/acme.my.salesforce.com/services/oauth2/authorize");
  Serve("/acme.my.salesforce.com/services/oauth2/token",
        JsonReply({{"access_token", "a"},
                   {"refresh_token", "r"},
                   {"instance_url", "https://evil.example"},
                   {"id", "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"},
                   {"token_type", "Bearer"}}));
  ExpectFailure(Complete(), absl::StatusCode::kUnavailable, "instance_url");
}

// --- HubSpot: post, form, token info with the token in the path (no bearer) ------------------
TEST_F(ProvidersTest, HubSpot) {
  Register("hubspot");
  Params p = Begin("hubspot", "/app.hubspot.com/oauth/authorize");
  EXPECT_EQ(p["scope"], "oauth crm.objects.contacts.read");
  const std::string challenge = ExpectPkce(p);

  const std::string access = "CJSP5qf1/hub+access";  // needs percent-encoding in the path
  Serve("/api.hubapi.com/oauth/v1/token", JsonReply({{"token_type", "bearer"},
                                                     {"refresh_token", "hub-refresh"},
                                                     {"access_token", access},
                                                     {"expires_in", 1800}}));
  const std::string info_path = "/api.hubapi.com/oauth/v1/access-tokens/CJSP5qf1%2Fhub%2Baccess";
  Serve(info_path, JsonReply({{"token", access},
                              {"user", "ada@acme.com"},
                              {"hub_domain", "acme.hubspot.com"},
                              {"scopes", {"oauth", "crm.objects.contacts.read"}},
                              {"hub_id", 62515},
                              {"app_id", 456},
                              {"expires_in", 1754},
                              {"user_id", 123},
                              {"token_type", "access"}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/api.hubapi.com/oauth/v1/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body,
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));
  std::vector<testing::RecordedRequest> info = RequestsTo(info_path);
  ASSERT_EQ(info.size(), 1u);
  EXPECT_EQ(info[0].method, "GET");
  EXPECT_EQ(info[0].Header("Authorization"), std::nullopt);

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "hubspot");
  EXPECT_EQ(g.account_id, "62515:123");
  EXPECT_THAT(g.scopes, ElementsAre("oauth", "crm.objects.contacts.read"));  // from token info
  EXPECT_THAT(g.metadata, UnorderedElementsAre(Pair("hub_id", "62515"),
                                               Pair("hub_domain", "acme.hubspot.com")));
  EXPECT_EQ(g.access_token_expires_at, clock_.Now() + absl::Minutes(30));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "hub-refresh");
}

// --- Linear: post, form, comma scopes, GraphQL viewer ----------------------------------------
TEST_F(ProvidersTest, Linear) {
  Register("linear");
  Params p = Begin("linear", "/linear.app/oauth/authorize", {"read", "write"});
  EXPECT_EQ(p["scope"], "read,write");
  EXPECT_EQ(p["prompt"], "consent");
  const std::string challenge = ExpectPkce(p);

  Serve("/api.linear.app/oauth/token", JsonReply({{"access_token", "lin_oauth_access"},
                                                  {"refresh_token", "lin_refresh"},
                                                  {"token_type", "Bearer"},
                                                  {"expires_in", 86399},
                                                  {"scope", {"read", "write"}}}));
  Serve("/api.linear.app/graphql",
        JsonReply({{"data",
                    {{"viewer", {{"id", "v-2f9"}}},
                     {"organization", {{"id", "o-77"}, {"urlKey", "acme"}}}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/api.linear.app/oauth/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body,
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));
  std::vector<testing::RecordedRequest> gql = RequestsTo("/api.linear.app/graphql");
  ASSERT_EQ(gql.size(), 1u);
  EXPECT_EQ(gql[0].method, "POST");
  EXPECT_EQ(gql[0].Header("Authorization"), "Bearer lin_oauth_access");
  EXPECT_EQ(gql[0].Header("Content-Type"), kJsonType);
  EXPECT_EQ(json::parse(gql[0].body),
            (json{{"query", "{ viewer { id } organization { id urlKey } }"}}));

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "linear");
  EXPECT_EQ(g.account_id, "v-2f9");
  EXPECT_THAT(g.scopes, ElementsAre("read", "write"));
  EXPECT_THAT(g.metadata, UnorderedElementsAre(Pair("organization_id", "o-77"),
                                               Pair("organization_url_key", "acme")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "lin_refresh");
}

// --- Jira (Atlassian): post in a JSON body, no PKCE, audience, accessible-resources + /me ----
TEST_F(ProvidersTest, Jira) {
  Register("jira");
  Params p = Begin("jira", "/auth.atlassian.com/authorize");
  EXPECT_EQ(p["scope"], "read:jira-work read:me offline_access");
  EXPECT_EQ(p["audience"], "api.atlassian.com");
  EXPECT_EQ(p["prompt"], "consent");
  ExpectNoPkce(p);

  Serve("/auth.atlassian.com/oauth/token",
        JsonReply({{"access_token", "atl-access"},
                   {"refresh_token", "atl-refresh"},
                   {"expires_in", 3600},
                   {"scope", "read:jira-work read:me offline_access"},
                   {"token_type", "Bearer"}}));
  Serve("/api.atlassian.com/oauth/token/accessible-resources",
        JsonReply(json::array({{{"id", "1324a887-45db-1bf4-1e99-ef0ff456d421"},
                                {"url", "https://acme.atlassian.net"},
                                {"name", "acme"},
                                {"scopes", {"read:jira-work"}},
                                {"avatarUrl", "https://example.com/a.png"}}})));
  Serve("/api.atlassian.com/me",
        JsonReply({{"account_id", "5b10ac8d82e05b22cc7d4ef5"}, {"email", "ada@acme.com"}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/auth.atlassian.com/oauth/token", kJsonType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  EXPECT_EQ(json::parse(t.body), (json{{"grant_type", "authorization_code"},
                                       {"code", kCode},
                                       {"redirect_uri", kRedirect},
                                       {"client_id", kClientId},
                                       {"client_secret", kClientSecret}}));
  ExpectBearerGet("/api.atlassian.com/oauth/token/accessible-resources", "atl-access");
  ExpectBearerGet("/api.atlassian.com/me", "atl-access");

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "jira");
  EXPECT_EQ(g.account_id, "5b10ac8d82e05b22cc7d4ef5");
  EXPECT_THAT(g.scopes, ElementsAre("read:jira-work", "read:me", "offline_access"));
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("cloud_id", "1324a887-45db-1bf4-1e99-ef0ff456d421"),
                                   Pair("site_url", "https://acme.atlassian.net")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "atl-refresh");
}

// --- Zendesk: subdomain template, post in a JSON body, PKCE, users/me ------------------------
TEST_F(ProvidersTest, Zendesk) {
  Register("zendesk", {{"subdomain", "acme"}});
  Params p = Begin("zendesk", "/acme.zendesk.com/oauth/authorizations/new");
  EXPECT_EQ(p["scope"], "tickets:read users:read");
  const std::string challenge = ExpectPkce(p);

  Serve("/acme.zendesk.com/oauth/tokens", JsonReply({{"access_token", "zd-access"},
                                                     {"refresh_token", "zd-refresh"},
                                                     {"token_type", "bearer"},
                                                     {"scope", "tickets:read users:read"},
                                                     {"expires_in", 172800},
                                                     {"refresh_token_expires_in", 2592000}}));
  Serve("/acme.zendesk.com/api/v2/users/me.json",
        JsonReply({{"user", {{"id", 35436}, {"name", "Ada"}, {"role", "admin"}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/acme.zendesk.com/oauth/tokens", kJsonType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  json body = json::parse(t.body);
  ExpectVerifierMatches(body.value("code_verifier", ""), challenge);
  body.erase("code_verifier");
  EXPECT_EQ(body, (json{{"grant_type", "authorization_code"},
                        {"code", kCode},
                        {"redirect_uri", kRedirect},
                        {"client_id", kClientId},
                        {"client_secret", kClientSecret}}));
  ExpectBearerGet("/acme.zendesk.com/api/v2/users/me.json", "zd-access");

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "zendesk");
  EXPECT_EQ(g.account_id, "35436");
  EXPECT_THAT(g.scopes, ElementsAre("tickets:read", "users:read"));
  EXPECT_THAT(g.metadata, UnorderedElementsAre(Pair("subdomain", "acme")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "zd-refresh");
}

// --- Intercom: region template, post, form, no scopes, no refresh tokens, /me ----------------
TEST_F(ProvidersTest, Intercom) {
  Register("intercom", {{"region", "eu"}});
  Params p = Begin("intercom", "/app.eu.intercom.com/oauth");
  EXPECT_FALSE(p.contains("scope"));
  ExpectNoPkce(p);

  Serve(
      "/api.eu.intercom.io/auth/eagle/token",
      JsonReply({{"token_type", "Bearer"}, {"token", "ic-access"}, {"access_token", "ic-access"}}));
  Serve("/api.eu.intercom.io/me",
        JsonReply({{"type", "admin"},
                   {"id", "991267"},
                   {"email", "ada@acme.com"},
                   {"app", {{"type", "app"}, {"id_code", "abc123"}, {"name", "Acme"}}}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/api.eu.intercom.io/auth/eagle/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), std::nullopt);
  EXPECT_THAT(FormBody(t.body),
              UnorderedElementsAre(Pair("grant_type", "authorization_code"), Pair("code", kCode),
                                   Pair("redirect_uri", kRedirect), Pair("client_id", kClientId),
                                   Pair("client_secret", kClientSecret)));
  ExpectBearerGet("/api.eu.intercom.io/me", "ic-access");

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "intercom");
  EXPECT_EQ(g.account_id, "991267");
  EXPECT_THAT(g.scopes, IsEmpty());
  EXPECT_THAT(g.metadata,
              UnorderedElementsAre(Pair("app_id_code", "abc123"), Pair("region", "eu")));
  EXPECT_EQ(SealedSecret(g, "access_token"), "ic-access");  // refresh = none
}

// --- Generic OpenID Connect: discovery, Basic, form, PKCE, id_token --------------------------
TEST_F(ProvidersTest, GenericOidc) {
  const std::string issuer = origin_ + "/oidc";
  Serve("/oidc/.well-known/openid-configuration",
        JsonReply({{"issuer", issuer},
                   {"authorization_endpoint", issuer + "/auth"},
                   {"token_endpoint", issuer + "/token"},
                   {"jwks_uri", issuer + "/jwks"},
                   {"code_challenge_methods_supported", {"S256"}},
                   {"token_endpoint_auth_methods_supported", {"client_secret_basic"}}}));
  Register("oidc", {}, issuer);
  Params p = Begin("oidc", "/oidc/auth");
  EXPECT_EQ(p["scope"], "openid offline_access");
  EXPECT_EQ(p["prompt"], "consent");
  const std::string challenge = ExpectPkce(p);

  Serve("/oidc/jwks", JsonReply(json::parse(Jwks())));
  Serve("/oidc/token",
        JsonReply({{"access_token", "oidc-access"},
                   {"refresh_token", "oidc-refresh"},
                   {"expires_in", 600},
                   {"scope", "openid offline_access"},
                   {"token_type", "Bearer"},
                   {"id_token", IdToken(issuer, p["nonce"], {{"email", "ada@example.com"}})}}));
  auto done = Complete();
  ASSERT_TRUE(done.ok()) << done.status();

  testing::RecordedRequest t = TokenRequest("/oidc/token", kFormType);
  EXPECT_EQ(t.Header("Authorization"), kBasicAuth);
  Params body = FormBody(t.body);
  ExpectVerifierMatches(body["code_verifier"], challenge);
  body.erase("code_verifier");
  EXPECT_THAT(body, UnorderedElementsAre(Pair("grant_type", "authorization_code"),
                                         Pair("code", kCode), Pair("redirect_uri", kRedirect)));

  const store::Grant& g = done->grant;
  ExpectGrantBasics(g, "oidc");
  EXPECT_EQ(g.account_id, "subject-42");
  EXPECT_THAT(g.scopes, ElementsAre("openid", "offline_access"));
  EXPECT_THAT(g.metadata, UnorderedElementsAre(Pair("email", "ada@example.com")));
  EXPECT_EQ(SealedSecret(g, "refresh_token"), "oidc-refresh");
}

// --- The token endpoint's failure modes --------------------------------------------------------
class TokenEndpointFailureTest : public ProvidersTest {
 protected:
  void StartLinear() {
    Register("linear");
    Begin("linear", "/linear.app/oauth/authorize");
    Serve("/api.linear.app/graphql", JsonReply({{"data", {{"viewer", {{"id", "v"}}}}}}));
  }
  void ExpectNoIdentityCall() { EXPECT_TRUE(RequestsTo("/api.linear.app/graphql").empty()); }
};

TEST_F(TokenEndpointFailureTest, ARedirectIsNotFollowed) {
  StartLinear();
  Reply redirect;
  redirect.status = 302;
  redirect.headers = {{"Location", origin_ + "/api.linear.app/graphql"}};
  Serve("/api.linear.app/oauth/token", redirect);
  ExpectFailure(Complete(), absl::StatusCode::kUnavailable, "redirects are not followed");
  ExpectNoIdentityCall();
}

TEST_F(TokenEndpointFailureTest, AnOversizedAnswerIsRefused) {
  StartLinear();
  Reply big;
  big.headers = {{"Content-Type", "application/json"}};
  big.oversized_body_bytes = size_t{2} << 20;
  Serve("/api.linear.app/oauth/token", big);
  ExpectFailure(Complete(), absl::StatusCode::kResourceExhausted, "exceeds");
  ExpectNoIdentityCall();
}

TEST_F(TokenEndpointFailureTest, AnAnswerThatIsNotJsonIsMalformed) {
  StartLinear();
  Reply html;
  html.headers = {{"Content-Type", "text/html"}};
  html.body = "<html><body>Sign in</body></html>";
  Serve("/api.linear.app/oauth/token", html);
  ExpectFailure(Complete(), absl::StatusCode::kUnavailable, "malformed token response");
  ExpectNoIdentityCall();
}

TEST_F(TokenEndpointFailureTest, AnAnswerWithoutAccessTokenIsMalformed) {
  StartLinear();
  Serve("/api.linear.app/oauth/token", JsonReply({{"token_type", "Bearer"}, {"expires_in", 60}}));
  ExpectFailure(Complete(), absl::StatusCode::kUnavailable,
                "malformed token response: no access_token");
  ExpectNoIdentityCall();
}

TEST_F(TokenEndpointFailureTest, AnRfc6749ErrorIsRefused) {
  StartLinear();
  Serve("/api.linear.app/oauth/token", JsonReply({{"error", "invalid_grant"}}, 400));
  ExpectFailure(Complete(), absl::StatusCode::kFailedPrecondition, "invalid_grant");
  ExpectNoIdentityCall();
}

TEST_F(TokenEndpointFailureTest, AFailingIdentityCallStoresNothing) {
  StartLinear();
  Serve(
      "/api.linear.app/oauth/token",
      JsonReply({{"access_token", "lin-a"}, {"refresh_token", "lin-r"}, {"token_type", "Bearer"}}));
  Serve("/api.linear.app/graphql", JsonReply({{"errors", {{{"message", "nope"}}}}}, 401));
  auto done = Complete();
  ExpectFailure(done, absl::StatusCode::kUnavailable, "answered HTTP 401");
  EXPECT_THAT(done.status().message(), Not(HasSubstr("lin-a")));
}

TEST_F(ProvidersTest, HubSpotIdentityErrorsDoNotNameTheToken) {
  Register("hubspot");
  Begin("hubspot", "/app.hubspot.com/oauth/authorize");
  Serve("/api.hubapi.com/oauth/v1/token", JsonReply({{"token_type", "bearer"},
                                                     {"refresh_token", "hub-refresh"},
                                                     {"access_token", "hub-secret-access"},
                                                     {"expires_in", 1800}}));
  auto done = Complete();  // the token-info path answers 404
  ExpectFailure(done, absl::StatusCode::kUnavailable, "access-tokens/{token}");
  EXPECT_THAT(done.status().message(), Not(HasSubstr("hub-secret-access")));
}

}  // namespace
}  // namespace grantvault::oauth
