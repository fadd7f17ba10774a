// Revocation at the provider (oauth/revocation.h), for every revocation method of the catalog.
//
// RevocationTest: one TlsTestServer on 127.0.0.1 plays every provider, as in providers_test.cc:
// the catalog is oauth/connectors.toml with each endpoint's https://<host> rewritten to
// https://127.0.0.1:<port>/<host>, so the request path still names the host. Each method's exact
// request (method, path, headers, body) is checked, and every answer's mapping: revoked, already
// invalid, retryable (503, 429 with Retry-After), not retryable (400, 401…), a stalled server
// bounded by the deadline, and no token or secret in any error message.
//
// RevocationProviderTest: the real oidc-provider (revocation and introspection on): authorize,
// revoke the refresh token with RFC 7009, then the refresh-token grant fails with invalid_grant
// and introspection says the token is inactive.
#include "oauth/revocation.h"

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oauth/catalog_resolver.h"
#include "oauth/id_token_verifier.h"
#include "oauth/pkce.h"
#include "oauth/token_request.h"
#include "oauth/token_response.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_cert.h"
#include "tests/testing/test_vault.h"
#include "tests/testing/tls_test_server.h"

namespace grantvault::oauth {
namespace {

using ::grantvault::testing::RecordedRequest;
using ::grantvault::testing::Reply;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using Params = std::map<std::string, std::string>;

constexpr char kClientId[] = "client-123";
constexpr char kClientSecret[] = "s3cret-456";
constexpr char kBasicAuth[] = "Basic Y2xpZW50LTEyMzpzM2NyZXQtNDU2";  // client-123:s3cret-456
// Characters that must be percent-encoded in a path or a form, so that encoding is checked.
constexpr char kAccessToken[] = "acc-T0KEN/one+two=";
constexpr char kAccessTokenEncoded[] = "acc-T0KEN%2Fone%2Btwo%3D";
constexpr char kRefreshToken[] = "ref-T0KEN/three+four=";
constexpr char kRefreshTokenEncoded[] = "ref-T0KEN%2Fthree%2Bfour%3D";
constexpr char kFormType[] = "application/x-www-form-urlencoded";
constexpr char kJsonType[] = "application/json";

std::string FileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Params FormBody(const std::string& body) {
  auto fields = ParseQuery(body);
  EXPECT_TRUE(fields.ok()) << fields.status();
  Params out;
  if (!fields.ok()) return out;
  for (const auto& [k, v] : *fields) {
    EXPECT_FALSE(out.contains(k)) << "field " << k << " sent twice";
    out[k] = v;
  }
  return out;
}

Reply JsonReply(const json& body, int status = 200) {
  Reply r;
  r.status = status;
  r.headers = {{"Content-Type", "application/json"}};
  r.body = body.dump();
  return r;
}

Reply Status(int status) {
  Reply r;
  r.status = status;
  return r;
}

Reply WithHeader(Reply r, std::string name, std::string value) {
  r.headers.emplace_back(std::move(name), std::move(value));
  return r;
}

// What a message must never contain.
void ExpectNoSecrets(const absl::Status& status) {
  const std::string message(status.message());
  for (const char* secret : {kAccessToken, kAccessTokenEncoded, kRefreshToken, kRefreshTokenEncoded,
                             kClientSecret, kBasicAuth + 6 /* the base64 part */}) {
    EXPECT_THAT(message, Not(HasSubstr(secret))) << "a secret leaked into: " << message;
  }
}

// One answer and what RevokeAtProvider must make of it.
struct Case {
  std::string name;
  Reply reply;
  std::optional<RevocationOutcome> outcome;  // set: OK with this outcome
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string text;  // a substring of the error message
};
Case Ok(std::string name, Reply reply, RevocationOutcome outcome) {
  return Case{std::move(name), std::move(reply), outcome, absl::StatusCode::kOk, ""};
}
Case Err(std::string name, Reply reply, absl::StatusCode code, std::string text) {
  return Case{std::move(name), std::move(reply), std::nullopt, code, std::move(text)};
}

// Which of the grant's secrets a call is given.
struct Tokens {
  bool refresh = true;
  bool access = true;
  bool secret = true;
};

class RevocationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = testing::WriteTestCertificates(dir_.path());
    testing::TlsTestServerOptions options;
    options.cert_file = certs_.cert_file;
    options.key_file = certs_.key_file;
    options.handler = [this](const RecordedRequest&) {
      std::lock_guard<std::mutex> lock(mu_);
      return reply_;
    };
    auto server = testing::TlsTestServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    origin_ = absl::StrCat("https://127.0.0.1:", server_->port());

    HttpClientOptions http_options;
    http_options.use_system_trust_store = false;
    http_options.ca_file = certs_.ca_file;
    auto http = NewHttpClient(http_options);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = std::move(*http);

    const std::regex endpoint("^((?:[a-z_]*endpoint|jwks_uri|issuer) = \")https://([^/\"]+)");
    std::istringstream lines(FileText(std::string(GV_SOURCE_DIR) + "/oauth/connectors.toml"));
    std::string toml;
    for (std::string line; std::getline(lines, line);) {
      toml += std::regex_replace(line, endpoint, absl::StrCat("$1", origin_, "/$2")) + "\n";
    }
    auto catalog = Catalog::LoadString(toml, "connectors.toml (test rewrite)");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    resolver_ = std::make_unique<CatalogResolver>(std::move(*catalog), http_.get(), &clock_);
  }

  ConnectorProfile Profile(const std::string& type, Params parameters = {}) {
    store::ConnectorRegistration reg;
    reg.connector_id = type;
    reg.connector_type = type;
    reg.client_id = kClientId;
    reg.parameters = std::move(parameters);
    auto profile = resolver_->Resolve(reg);
    EXPECT_TRUE(profile.ok()) << profile.status();
    return profile.ok() ? std::move(*profile) : ConnectorProfile{};
  }

  void Answer(Reply reply) {
    std::lock_guard<std::mutex> lock(mu_);
    reply_ = std::move(reply);
  }

  absl::StatusOr<RevocationOutcome> Revoke(const ConnectorProfile& profile, Tokens with = Tokens(),
                                           absl::Duration timeout = absl::Seconds(10)) {
    RevocationRequestInput input;
    input.profile = &profile;
    input.client_id = kClientId;
    input.client_secret = with.secret ? &secret_ : &no_secret_;
    input.refresh_token = with.refresh ? &refresh_ : nullptr;
    input.access_token = with.access ? &access_ : nullptr;
    return RevokeAtProvider(*http_, input, absl::Now() + timeout);
  }

  // The one request the server has seen since the last call.
  RecordedRequest OnlyRequest() {
    std::vector<RecordedRequest> requests = server_->requests();
    EXPECT_EQ(requests.size(), seen_ + 1);
    seen_ = requests.size();
    return requests.empty() ? RecordedRequest{} : requests.back();
  }

  // Each case against `profile`: the outcome or the error's code and text, no secret in it.
  void ExpectAnswers(const ConnectorProfile& profile, const std::vector<Case>& cases,
                     Tokens with = Tokens()) {
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      Answer(c.reply);
      absl::StatusOr<RevocationOutcome> result = Revoke(profile, with);
      if (c.outcome) {
        ASSERT_TRUE(result.ok()) << result.status();
        EXPECT_EQ(*result, *c.outcome) << ToString(*result);
      } else {
        ASSERT_FALSE(result.ok()) << ToString(*result);
        EXPECT_EQ(result.status().code(), c.code) << result.status();
        EXPECT_THAT(result.status().message(), HasSubstr(c.text));
        ExpectNoSecrets(result.status());
      }
    }
  }

  testing::TempDir dir_;
  testing::CertificateFiles certs_;
  std::unique_ptr<testing::TlsTestServer> server_;
  std::string origin_;
  std::unique_ptr<HttpClient> http_;
  ManualClock clock_{absl::Now()};
  std::unique_ptr<CatalogResolver> resolver_;
  SecretBytes secret_ = SecretBytes::CopyOf(std::string_view(kClientSecret));
  SecretBytes no_secret_;
  SecretBytes access_ = SecretBytes::CopyOf(std::string_view(kAccessToken));
  SecretBytes refresh_ = SecretBytes::CopyOf(std::string_view(kRefreshToken));
  std::mutex mu_;
  Reply reply_;
  size_t seen_ = 0;
};

// --- rfc7009 ---------------------------------------------------------------------------------

TEST_F(RevocationTest, Rfc7009SendsTheRefreshTokenWithBasicClientAuthentication) {
  const ConnectorProfile google = Profile("google_workspace");  // basic, form, refresh_token
  Answer(Status(200));
  absl::StatusOr<RevocationOutcome> result = Revoke(google);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);

  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/oauth2.googleapis.com/revoke");
  EXPECT_EQ(r.Header("Content-Type"), kFormType);
  EXPECT_EQ(r.Header("Accept"), kJsonType);
  EXPECT_EQ(r.Header("Authorization"), kBasicAuth);
  EXPECT_EQ(r.body, absl::StrCat("token=", kRefreshTokenEncoded, "&token_type_hint=refresh_token"));
}

TEST_F(RevocationTest, Rfc7009FallsBackToTheAccessTokenWhenThereIsNoRefreshToken) {
  const ConnectorProfile google = Profile("google_workspace");
  Answer(Status(200));
  absl::StatusOr<RevocationOutcome> result = Revoke(google, {.refresh = false});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(FormBody(OnlyRequest().body),
            (Params{{"token", kAccessToken}, {"token_type_hint", "access_token"}}));

  // Neither token: nothing to send.
  result = Revoke(google, {.refresh = false, .access = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(server_->request_count(), seen_);
}

TEST_F(RevocationTest, Rfc7009PostClientAuthenticationPutsTheCredentialsInTheBody) {
  // Salesforce: client_secret_post, refresh token; the My Domain template is expanded.
  const ConnectorProfile salesforce = Profile("salesforce", {{"my_domain", "acme"}});
  Answer(Status(200));
  ASSERT_TRUE(Revoke(salesforce).ok());
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/acme.my.salesforce.com/services/oauth2/revoke");
  EXPECT_EQ(r.Header("Authorization"), std::nullopt);
  EXPECT_EQ(r.Header("Content-Type"), kFormType);
  EXPECT_EQ(FormBody(r.body), (Params{{"token", kRefreshToken},
                                      {"token_type_hint", "refresh_token"},
                                      {"client_id", kClientId},
                                      {"client_secret", kClientSecret}}));

  // Linear names the access token.
  const ConnectorProfile linear = Profile("linear");
  ASSERT_TRUE(Revoke(linear).ok());
  const RecordedRequest l = OnlyRequest();
  EXPECT_EQ(l.target, "/api.linear.app/oauth/revoke");
  EXPECT_EQ(FormBody(l.body), (Params{{"token", kAccessToken},
                                      {"token_type_hint", "access_token"},
                                      {"client_id", kClientId},
                                      {"client_secret", kClientSecret}}));
}

TEST_F(RevocationTest, Rfc7009JsonBodyForNotion) {
  const ConnectorProfile notion = Profile("notion");  // basic_json, body json, access_token
  Answer(JsonReply({{"request_id", "3c90c3cc-0d44-4b50-8888-8dd25736052a"}}));
  absl::StatusOr<RevocationOutcome> result = Revoke(notion);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/api.notion.com/v1/oauth/revoke");
  EXPECT_EQ(r.Header("Content-Type"), kJsonType);
  EXPECT_EQ(r.Header("Accept"), kJsonType);
  EXPECT_EQ(r.Header("Notion-Version"), "2025-09-03");
  EXPECT_EQ(r.Header("Authorization"), kBasicAuth);
  EXPECT_EQ(json::parse(r.body), (json{{"token", kAccessToken}}));
}

TEST_F(RevocationTest, Rfc7009PublicClientSendsItsIdAlone) {
  const ConnectorProfile google = Profile("google_workspace");
  Answer(Status(200));
  ASSERT_TRUE(Revoke(google, {.secret = false}).ok());
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.Header("Authorization"), std::nullopt);
  EXPECT_EQ(FormBody(r.body), (Params{{"token", kRefreshToken},
                                      {"token_type_hint", "refresh_token"},
                                      {"client_id", kClientId}}));
}

TEST_F(RevocationTest, Rfc7009AnswersAreMappedDeliberately) {
  const ConnectorProfile google = Profile("google_workspace");
  ExpectAnswers(
      google,
      {
          Ok("200 (RFC 7009 §2.2: also for an invalid token)", Status(200),
             RevocationOutcome::kRevoked),
          Ok("204", Status(204), RevocationOutcome::kRevoked),
          Ok("400 invalid_token (Google, Salesforce)",
             JsonReply(
                 {{"error", "invalid_token"}, {"error_description", "Token expired or revoked"}},
                 400),
             RevocationOutcome::kAlreadyInvalid),
          Err("400 unsupported_token_type", JsonReply({{"error", "unsupported_token_type"}}, 400),
              absl::StatusCode::kFailedPrecondition, "unsupported_token_type"),
          Err("400 invalid_request", JsonReply({{"error", "invalid_request"}}, 400),
              absl::StatusCode::kFailedPrecondition, "HTTP 400"),
          Err("400 invalid_client", JsonReply({{"error", "invalid_client"}}, 400),
              absl::StatusCode::kPermissionDenied, "invalid_client"),
          Err("401 bad client credentials", JsonReply({{"error", "invalid_client"}}, 401),
              absl::StatusCode::kPermissionDenied, "HTTP 401"),
          Err("401 without a body", Status(401), absl::StatusCode::kPermissionDenied, "HTTP 401"),
          Err("503 (RFC 7009 §2.2.1)", Status(503), absl::StatusCode::kUnavailable, "HTTP 503"),
          Err("503 with Retry-After", WithHeader(Status(503), "Retry-After", "7"),
              absl::StatusCode::kUnavailable, "retry_after_ms=7000"),
          Err("429 with Retry-After", WithHeader(Status(429), "Retry-After", "2"),
              absl::StatusCode::kUnavailable, "retry_after_ms=2000"),
          Err("500", Status(500), absl::StatusCode::kUnavailable, "HTTP 500"),
          Err("302 (never followed)", WithHeader(Status(302), "Location", "https://example.com/"),
              absl::StatusCode::kFailedPrecondition, "redirect"),
      });
  // Without Retry-After no retry hint is invented.
  Answer(Status(503));
  EXPECT_THAT(Revoke(google).status().message(), Not(HasSubstr("retry_after_ms")));
}

// --- github_grant_delete ---------------------------------------------------------------------

TEST_F(RevocationTest, GithubDeletesTheGrantWithBasicAndTheAccessTokenInJson) {
  const ConnectorProfile github = Profile("github");
  Answer(Status(204));
  absl::StatusOr<RevocationOutcome> result = Revoke(github);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "DELETE");
  EXPECT_EQ(r.target, "/api.github.com/applications/client-123/grant");
  EXPECT_EQ(r.Header("Authorization"), kBasicAuth);
  EXPECT_EQ(r.Header("Accept"), "application/vnd.github+json");
  EXPECT_EQ(r.Header("X-GitHub-Api-Version"), "2022-11-28");
  EXPECT_EQ(r.Header("Content-Type"), kJsonType);
  EXPECT_EQ(json::parse(r.body), (json{{"access_token", kAccessToken}}));

  // The grant is found by its access token: without one there is nothing to send.
  result = Revoke(github, {.access = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("access token"));
  result = Revoke(github, {.secret = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(server_->request_count(), seen_);
}

TEST_F(RevocationTest, GithubAnswersAreMappedDeliberately) {
  const ConnectorProfile github = Profile("github");
  const json not_found = {{"message", "Not Found"},
                          {"documentation_url", "https://docs.github.com/rest"}};
  ExpectAnswers(
      github,
      {
          Ok("204", Status(204), RevocationOutcome::kRevoked),
          Ok("404: no grant for this token", JsonReply(not_found, 404),
             RevocationOutcome::kAlreadyInvalid),
          Ok("422: the token does not validate", JsonReply({{"message", "Validation Failed"}}, 422),
             RevocationOutcome::kAlreadyInvalid),
          Err("401: bad client credentials", JsonReply({{"message", "Bad credentials"}}, 401),
              absl::StatusCode::kPermissionDenied, "Bad credentials"),
          Err("403 without rate limit", JsonReply({{"message", "Forbidden"}}, 403),
              absl::StatusCode::kPermissionDenied, "HTTP 403"),
          Err("403 rate limit", WithHeader(Status(403), "x-ratelimit-remaining", "0"),
              absl::StatusCode::kUnavailable, "rate limited"),
          Err("429 with Retry-After", WithHeader(Status(429), "Retry-After", "60"),
              absl::StatusCode::kUnavailable, "retry_after_ms=60000"),
          Err("503", Status(503), absl::StatusCode::kUnavailable, "HTTP 503"),
          Err("400", JsonReply({{"message", "Problems parsing JSON"}}, 400),
              absl::StatusCode::kFailedPrecondition, "Problems parsing JSON"),
      });
}

// --- slack_auth_revoke -----------------------------------------------------------------------

TEST_F(RevocationTest, SlackRevokesTheAccessTokenAsBearer) {
  const ConnectorProfile slack = Profile("slack");
  Answer(JsonReply({{"ok", true}, {"revoked", true}}));
  absl::StatusOr<RevocationOutcome> result = Revoke(slack);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/slack.com/api/auth.revoke");
  EXPECT_EQ(r.Header("Authorization"), absl::StrCat("Bearer ", kAccessToken));
  EXPECT_EQ(r.Header("Content-Type"), kFormType);
  EXPECT_EQ(r.body, "");

  result = Revoke(slack, {.access = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(server_->request_count(), seen_);
}

TEST_F(RevocationTest, SlackAnswersAreMappedDeliberately) {
  const ConnectorProfile slack = Profile("slack");
  auto not_ok = [](const char* error) { return JsonReply({{"ok", false}, {"error", error}}); };
  ExpectAnswers(
      slack,
      {
          Ok("ok, revoked", JsonReply({{"ok", true}, {"revoked", true}}),
             RevocationOutcome::kRevoked),
          Ok("invalid_auth", not_ok("invalid_auth"), RevocationOutcome::kAlreadyInvalid),
          Ok("token_revoked", not_ok("token_revoked"), RevocationOutcome::kAlreadyInvalid),
          Ok("token_expired", not_ok("token_expired"), RevocationOutcome::kAlreadyInvalid),
          Ok("account_inactive", not_ok("account_inactive"), RevocationOutcome::kAlreadyInvalid),
          Err("not_authed", not_ok("not_authed"), absl::StatusCode::kFailedPrecondition,
              "not_authed"),
          Err("not_bearer_token", not_ok("not_bearer_token"), absl::StatusCode::kFailedPrecondition,
              "not_bearer_token"),
          Err("ok without revoked", JsonReply({{"ok", true}, {"revoked", false}}),
              absl::StatusCode::kUnavailable, "without revoked"),
          Err("internal_error", not_ok("internal_error"), absl::StatusCode::kUnavailable,
              "internal_error"),
          Err("429 ratelimited with Retry-After",
              WithHeader(JsonReply({{"ok", false}, {"error", "ratelimited"}}, 429), "Retry-After",
                         "30"),
              absl::StatusCode::kUnavailable, "retry_after_ms=30000"),
          Err("503", Status(503), absl::StatusCode::kUnavailable, "HTTP 503"),
          Err("200, not JSON", Status(200), absl::StatusCode::kUnavailable, "malformed"),
          Err("400", Status(400), absl::StatusCode::kFailedPrecondition, "HTTP 400"),
      });
}

// --- hubspot_refresh_token_delete ------------------------------------------------------------

TEST_F(RevocationTest, HubspotDeletesTheRefreshTokenNamedInThePath) {
  const ConnectorProfile hubspot = Profile("hubspot");
  Answer(Status(204));
  absl::StatusOr<RevocationOutcome> result = Revoke(hubspot);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "DELETE");
  EXPECT_EQ(r.target,
            absl::StrCat("/api.hubapi.com/oauth/v1/refresh-tokens/", kRefreshTokenEncoded));
  EXPECT_EQ(r.Header("Authorization"), std::nullopt);
  EXPECT_EQ(r.body, "");

  result = Revoke(hubspot, {.refresh = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(server_->request_count(), seen_);
}

TEST_F(RevocationTest, HubspotAnswersAreMappedDeliberately) {
  const ConnectorProfile hubspot = Profile("hubspot");
  ExpectAnswers(
      hubspot, {
                   Ok("204", Status(204), RevocationOutcome::kRevoked),
                   Ok("404: no such refresh token",
                      JsonReply({{"status", "error"}, {"message", "refresh token not found"}}, 404),
                      RevocationOutcome::kAlreadyInvalid),
                   Err("400", JsonReply({{"status", "error"}, {"message", "bad token"}}, 400),
                       absl::StatusCode::kFailedPrecondition, "bad token"),
                   Err("401", Status(401), absl::StatusCode::kPermissionDenied, "HTTP 401"),
                   Err("429 with Retry-After", WithHeader(Status(429), "Retry-After", "10"),
                       absl::StatusCode::kUnavailable, "retry_after_ms=10000"),
                   Err("502", Status(502), absl::StatusCode::kUnavailable, "HTTP 502"),
               });
}

// --- zendesk_current_token_delete ------------------------------------------------------------

TEST_F(RevocationTest, ZendeskDeletesTheCurrentTokenAsBearer) {
  const ConnectorProfile zendesk = Profile("zendesk", {{"subdomain", "acme"}});
  Answer(Status(204));
  absl::StatusOr<RevocationOutcome> result = Revoke(zendesk);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, RevocationOutcome::kRevoked);
  const RecordedRequest r = OnlyRequest();
  EXPECT_EQ(r.method, "DELETE");
  EXPECT_EQ(r.target, "/acme.zendesk.com/api/v2/oauth/tokens/current.json");
  EXPECT_EQ(r.Header("Authorization"), absl::StrCat("Bearer ", kAccessToken));
  EXPECT_EQ(r.body, "");

  result = Revoke(zendesk, {.access = false});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_EQ(server_->request_count(), seen_);
}

TEST_F(RevocationTest, ZendeskAnswersAreMappedDeliberately) {
  const ConnectorProfile zendesk = Profile("zendesk", {{"subdomain", "acme"}});
  ExpectAnswers(
      zendesk,
      {
          Ok("204", Status(204), RevocationOutcome::kRevoked),
          Ok("401: the token no longer authenticates",
             JsonReply({{"error", "invalid_token"},
                        {"error_description",
                         "The access token provided is expired, revoked, "
                         "malformed or invalid for other reasons."}},
                       401),
             RevocationOutcome::kAlreadyInvalid),
          Err("403: the token may not revoke itself", JsonReply({{"error", "Forbidden"}}, 403),
              absl::StatusCode::kPermissionDenied, "HTTP 403"),
          Err("404", Status(404), absl::StatusCode::kFailedPrecondition, "HTTP 404"),
          Err("429 with Retry-After", WithHeader(Status(429), "Retry-After", "5"),
              absl::StatusCode::kUnavailable, "retry_after_ms=5000"),
          Err("500", Status(500), absl::StatusCode::kUnavailable, "HTTP 500"),
      });
}

// --- none ------------------------------------------------------------------------------------

TEST_F(RevocationTest, MethodNoneIsManualAndSendsNothing) {
  for (const char* type : {"microsoft_365", "jira", "intercom"}) {
    SCOPED_TRACE(type);
    const ConnectorProfile profile = Profile(
        type, std::string(type) == "microsoft_365" ? Params{{"tenant", "common"}} : Params{});
    EXPECT_EQ(profile.catalog_type.revocation.method, RevocationMethod::kNone);
    absl::StatusOr<RevocationOutcome> result = Revoke(profile);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, RevocationOutcome::kManual);
  }
  EXPECT_EQ(server_->request_count(), 0u);
}

// --- every method: deadlines, transport failures, secrets ------------------------------------

struct MethodProfile {
  const char* type;
  Params parameters;
};
const std::vector<MethodProfile>& OneProfilePerMethod() {
  static const auto* profiles = new std::vector<MethodProfile>{
      {"google_workspace", {}}, {"notion", {}},
      {"github", {}},           {"slack", {}},
      {"hubspot", {}},          {"zendesk", {{"subdomain", "acme"}}},
  };
  return *profiles;
}

TEST_F(RevocationTest, AStalledProviderIsBoundedByTheDeadline) {
  Reply stall = Status(200);
  stall.stall = std::chrono::milliseconds(10000);
  Answer(stall);
  for (const MethodProfile& m : OneProfilePerMethod()) {
    SCOPED_TRACE(m.type);
    const ConnectorProfile profile = Profile(m.type, m.parameters);
    const absl::Time start = absl::Now();
    absl::StatusOr<RevocationOutcome> result = Revoke(profile, {}, absl::Milliseconds(400));
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("timed out"));
    EXPECT_GE(took, absl::Milliseconds(350));
    EXPECT_LT(took, absl::Seconds(3));
    ExpectNoSecrets(result.status());
  }
}

TEST_F(RevocationTest, APassedDeadlineSendsNothing) {
  const ConnectorProfile google = Profile("google_workspace");
  absl::StatusOr<RevocationOutcome> result = Revoke(google, {}, -absl::Seconds(1));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("deadline"));
  EXPECT_EQ(server_->request_count(), 0u);
}

TEST_F(RevocationTest, TransportFailuresAreRetryable) {
  Reply hang_up;
  hang_up.close_without_answer = true;
  Reply garbage;
  garbage.garbage = true;
  for (const Reply& reply : {hang_up, garbage}) {
    Answer(reply);
    for (const MethodProfile& m : OneProfilePerMethod()) {
      SCOPED_TRACE(m.type);
      absl::StatusOr<RevocationOutcome> result = Revoke(Profile(m.type, m.parameters));
      EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
      ExpectNoSecrets(result.status());
    }
  }
}

TEST_F(RevocationTest, NoSecretInAnyMessageEvenWhenTheProviderEchoesOne) {
  // A provider that repeats what it was sent, raw and percent-encoded, in its error.
  const std::string echo =
      absl::StrCat("bad token ", kAccessToken, " / ", kRefreshToken, " / ", kAccessTokenEncoded,
                   " / ", kRefreshTokenEncoded, " for client secret ", kClientSecret);
  const std::vector<Reply> replies = {
      JsonReply({{"error", "invalid_request"}, {"error_description", echo}}, 400),
      JsonReply({{"message", echo}}, 400),
      JsonReply({{"ok", false}, {"error", echo}}),
      JsonReply({{"error", echo}}, 401),
  };
  for (const Reply& reply : replies) {
    Answer(reply);
    for (const MethodProfile& m : OneProfilePerMethod()) {
      SCOPED_TRACE(absl::StrCat(m.type, " ", reply.body));
      absl::StatusOr<RevocationOutcome> result = Revoke(Profile(m.type, m.parameters));
      if (result.ok()) continue;  // e.g. Zendesk's 401 is "already invalid"
      ExpectNoSecrets(result.status());
    }
  }
  // The error still names what it can.
  Answer(JsonReply({{"error", "invalid_request"}, {"error_description", echo}}, 400));
  absl::StatusOr<RevocationOutcome> result = Revoke(Profile("google_workspace"));
  EXPECT_THAT(result.status().message(), HasSubstr("invalid_request"));
  EXPECT_THAT(result.status().message(), HasSubstr("[redacted]"));
  // HubSpot's URL carries the token: errors name the endpoint as the catalog writes it.
  Answer(Status(400));
  result = Revoke(Profile("hubspot"));
  EXPECT_THAT(result.status().message(), HasSubstr("refresh-tokens/{token}"));
}

TEST_F(RevocationTest, OutcomeNames) {
  EXPECT_EQ(ToString(RevocationOutcome::kRevoked), "revoked");
  EXPECT_EQ(ToString(RevocationOutcome::kAlreadyInvalid), "already_invalid");
  EXPECT_EQ(ToString(RevocationOutcome::kManual), "manual");
}

// --- against the real oidc-provider ----------------------------------------------------------

constexpr char kRedirect[] = "http://127.0.0.1:45678/callback";

class RevocationProviderTest : public ::testing::Test {
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

    HttpClientOptions http_options;
    http_options.use_system_trust_store = false;
    http_options.ca_file = provider_->ca_file();
    auto http = NewHttpClient(http_options);
    ASSERT_TRUE(http.ok()) << http.status();
    http_ = std::move(*http);
    auto catalog = Catalog::LoadDefault();
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    resolver_ = std::make_unique<CatalogResolver>(std::move(*catalog), http_.get(), &RealClock());
    id_tokens_ = NewJwksIdTokenVerifier();
    auto authorizer = Authorizer::Create(AuthorizerDeps{
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
    client_secret_ = SecretBytes::CopyOf(provider_->clients()[0].client_secret);
    auto registered = authorizer_->Register(reg, client_secret_.Clone());
    ASSERT_TRUE(registered.ok()) << registered.status();
    registration_ = *registered;
    auto started = authorizer_->Begin("ws_acme", "demo", {"openid", "offline_access", "read"},
                                      "alice-admin", kRedirect);
    ASSERT_TRUE(started.ok()) << started.status();
    auto redirect = provider_->Approve(started->authorization_url);
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    auto callback = ParseCallback(*redirect);
    ASSERT_TRUE(callback.ok()) << callback.status();
    auto done = authorizer_->Complete(*callback);
    ASSERT_TRUE(done.ok()) << done.status() << "\n" << provider_->Log();
    auto sealed = store_->GetSealedSecret({done->grant.grant_id, "refresh_token"});
    ASSERT_TRUE(sealed.ok()) << sealed.status();
    auto refresh = testing::OpenStored(*sealer_, *sealed);
    ASSERT_TRUE(refresh.ok()) << refresh.status();
    refresh_token_ = std::move(*refresh);

    auto profile = resolver_->Resolve(registration_);
    ASSERT_TRUE(profile.ok()) << profile.status();
    profile_ = std::move(*profile);
  }

  absl::StatusOr<RevocationOutcome> Revoke(const SecretBytes& client_secret) {
    RevocationRequestInput input;
    input.profile = &profile_;
    input.client_id = registration_.client_id;
    input.client_secret = &client_secret;
    input.refresh_token = &refresh_token_;
    return RevokeAtProvider(*http_, input, absl::Now() + absl::Seconds(10));
  }

  // The refresh-token grant, as the refresher sends it.
  absl::StatusOr<TokenResponse> Refresh() {
    TokenRequest request(
        profile_, RefreshTokenExchange{registration_.client_id, &client_secret_, &refresh_token_});
    GV_ASSIGN_OR_RETURN(HttpResponse response, http_->Send(request.http(), absl::Seconds(10)));
    return ParseTokenResponse(response, profile_.catalog_type);
  }

  // RFC 7662 introspection of the refresh token at the provider's introspection endpoint.
  absl::StatusOr<json> Introspect() {
    HttpRequest discovery;
    discovery.url = provider_->issuer() + "/.well-known/openid-configuration";
    GV_ASSIGN_OR_RETURN(HttpResponse document, http_->Send(discovery, absl::Seconds(10)));
    const json metadata = json::parse(document.body, nullptr, /*allow_exceptions=*/false);
    if (!metadata.is_object() || !metadata.contains("introspection_endpoint")) {
      return absl::NotFoundError("the provider has no introspection endpoint");
    }
    HttpRequest request;
    request.method = "POST";
    request.url = metadata["introspection_endpoint"].get<std::string>();
    request.headers = {{"Content-Type", "application/x-www-form-urlencoded"},
                       {"Accept", "application/json"},
                       {"Authorization", "Basic " + Base64(registration_.client_id + ":" +
                                                           std::string(client_secret_.view()))}};
    request.body = FormEncode(
        {{"token", std::string(refresh_token_.view())}, {"token_type_hint", "refresh_token"}});
    GV_ASSIGN_OR_RETURN(HttpResponse response, http_->Send(request, absl::Seconds(10)));
    if (response.status != 200) {
      return absl::UnavailableError(absl::StrCat("introspection answered ", response.status));
    }
    return json::parse(response.body);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::unique_ptr<testing::SoftHsmToken> hsm_;
  std::unique_ptr<store::GrantStore> store_;
  std::unique_ptr<hsm::EnvelopeSealer> sealer_;
  std::unique_ptr<HttpClient> http_;
  std::unique_ptr<CatalogResolver> resolver_;
  std::unique_ptr<IdTokenVerifier> id_tokens_;
  std::unique_ptr<Authorizer> authorizer_;
  store::ConnectorRegistration registration_;
  SecretBytes client_secret_;
  SecretBytes refresh_token_;
  ConnectorProfile profile_;
};

TEST_F(RevocationProviderTest, RevokedRefreshTokenNoLongerWorks) {
  ASSERT_EQ(profile_.catalog_type.revocation.method, RevocationMethod::kRfc7009);
  ASSERT_FALSE(profile_.revocation_endpoint.empty());
  absl::StatusOr<json> before = Introspect();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ((*before)["active"], true) << before->dump();

  absl::StatusOr<RevocationOutcome> revoked = Revoke(client_secret_);
  ASSERT_TRUE(revoked.ok()) << revoked.status() << "\n" << provider_->Log();
  EXPECT_EQ(*revoked, RevocationOutcome::kRevoked);

  absl::StatusOr<TokenResponse> refreshed = Refresh();
  EXPECT_EQ(refreshed.status().code(), absl::StatusCode::kFailedPrecondition) << refreshed.status();
  EXPECT_THAT(refreshed.status().message(), HasSubstr("invalid_grant"));

  absl::StatusOr<json> after = Introspect();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)["active"], false) << after->dump();

  // RFC 7009 §2.2: revoking it again is answered 200 as well.
  absl::StatusOr<RevocationOutcome> again = Revoke(client_secret_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, RevocationOutcome::kRevoked);
}

TEST_F(RevocationProviderTest, WrongClientSecretIsRefusedAndRevokesNothing) {
  const SecretBytes wrong = SecretBytes::CopyOf(std::string_view("not-the-secret"));
  absl::StatusOr<RevocationOutcome> result = Revoke(wrong);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("invalid_client"));
  EXPECT_THAT(result.status().message(), Not(HasSubstr("not-the-secret")));
  EXPECT_THAT(result.status().message(), Not(HasSubstr(std::string(refresh_token_.view()))));

  absl::StatusOr<json> still = Introspect();
  ASSERT_TRUE(still.ok()) << still.status();
  EXPECT_EQ((*still)["active"], true) << still->dump();
  EXPECT_TRUE(Refresh().ok());
}

}  // namespace
}  // namespace grantvault::oauth
