#include "oauth/catalog.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace grantvault::oauth {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

class ShippedCatalogTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Catalog> loaded = Catalog::LoadDefault();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    catalog_ = new Catalog(std::move(*loaded));
  }
  static void TearDownTestSuite() {
    delete catalog_;
    catalog_ = nullptr;
  }
  const ConnectorType& Type(std::string_view name) {
    const ConnectorType* type = catalog_->Find(name);
    EXPECT_NE(type, nullptr) << name;
    return *type;
  }
  static Catalog* catalog_;
};

Catalog* ShippedCatalogTest::catalog_ = nullptr;

// Sample parameters that satisfy every type that needs some.
const std::map<std::string, std::map<std::string, std::string>> kSampleParams = {
    {"salesforce", {{"my_domain", "acme"}}},
    {"zendesk", {{"subdomain", "acme"}}},
};

TEST_F(ShippedCatalogTest, ListsEveryConnector) {
  const std::map<std::string, std::string> expected = {
      {"google_workspace", "google"}, {"microsoft_365", "microsoft"}, {"slack", "slack"},
      {"github", "github"},           {"notion", "notion"},           {"salesforce", "salesforce"},
      {"hubspot", "hubspot"},         {"linear", "linear"},           {"jira", "atlassian"},
      {"zendesk", "zendesk"},         {"intercom", "intercom"},       {"oidc", "oidc"},
  };
  for (const auto& [type, provider] : expected) {
    const ConnectorType* t = catalog_->Find(type);
    ASSERT_NE(t, nullptr) << type;
    EXPECT_EQ(t->provider, provider) << type;
    EXPECT_FALSE(t->display_name.empty()) << type;
  }
  EXPECT_EQ(catalog_->Find("myspace"), nullptr);
  EXPECT_EQ(catalog_->types().size(), expected.size());
}

TEST_F(ShippedCatalogTest, EveryTypeResolvesToHttpsEndpoints) {
  for (const ConnectorType& type : catalog_->types()) {
    SCOPED_TRACE(type.type);
    if (type.discovery) {
      EXPECT_TRUE(type.endpoints.authorization.empty());
      continue;
    }
    auto it = kSampleParams.find(type.type);
    absl::StatusOr<ResolvedEndpoints> r = Catalog::Resolve(
        type, it == kSampleParams.end() ? std::map<std::string, std::string>() : it->second);
    ASSERT_TRUE(r.ok()) << r.status();
    const Endpoints& e = r->endpoints;
    for (const std::string* url : {&e.authorization, &e.token}) {
      EXPECT_THAT(*url, StartsWith("https://"));
      EXPECT_TRUE(ValidateEndpointUrl(*url, false).ok()) << *url;
    }
    for (const std::string* url :
         {&e.revocation, &e.userinfo, &e.jwks_uri, &e.identity, &e.identity_sites}) {
      if (!url->empty()) {
        EXPECT_THAT(*url, StartsWith("https://"));
      }
    }
    EXPECT_EQ(type.revocation.method == RevocationMethod::kNone, e.revocation.empty());
    EXPECT_TRUE(Catalog::CheckScopes(type, type.scopes_default).ok());
    EXPECT_TRUE(Catalog::CheckScopes(type, type.scopes_required).ok());
  }
}

TEST_F(ShippedCatalogTest, ProviderQuirksAreRecorded) {
  const ConnectorType& google = Type("google_workspace");
  EXPECT_THAT(
      google.authorization_params,
      ::testing::UnorderedElementsAre(std::pair<std::string, std::string>("access_type", "offline"),
                                      std::pair<std::string, std::string>("prompt", "consent")));
  EXPECT_EQ(google.identity.method, IdentityMethod::kIdToken);

  const ConnectorType& microsoft = Type("microsoft_365");
  EXPECT_THAT(microsoft.scopes_required, ::testing::Contains("offline_access"));
  EXPECT_EQ(microsoft.revocation.method, RevocationMethod::kNone);

  const ConnectorType& github = Type("github");
  EXPECT_EQ(github.token_response, TokenResponseShape::kGithub);
  EXPECT_THAT(github.token_headers, ::testing::Contains(std::pair<std::string, std::string>(
                                        "Accept", "application/json")));
  EXPECT_EQ(github.revocation.method, RevocationMethod::kGithubGrantDelete);

  const ConnectorType& slack = Type("slack");
  EXPECT_EQ(slack.token_response, TokenResponseShape::kSlackV2);
  EXPECT_EQ(slack.scope_separator, ",");
  EXPECT_EQ(slack.revocation.method, RevocationMethod::kSlackAuthRevoke);

  const ConnectorType& notion = Type("notion");
  EXPECT_EQ(notion.client_auth, ClientAuth::kBasicJson);
  EXPECT_EQ(notion.token_body, BodyFormat::kJson);
  EXPECT_TRUE(notion.scope_param.empty());

  const ConnectorType& jira = Type("jira");
  EXPECT_THAT(jira.authorization_params, ::testing::Contains(std::pair<std::string, std::string>(
                                             "audience", "api.atlassian.com")));
  EXPECT_EQ(jira.tokens.refresh, RefreshTokens::kRotated);

  EXPECT_EQ(Type("hubspot").revocation.method, RevocationMethod::kHubspotRefreshTokenDelete);
  EXPECT_EQ(Type("salesforce").token_response, TokenResponseShape::kSalesforce);
  EXPECT_EQ(Type("intercom").tokens.refresh, RefreshTokens::kNone);
  EXPECT_TRUE(Type("oidc").any_scope);
}

TEST_F(ShippedCatalogTest, ZendeskSubdomainIsValidated) {
  const ConnectorType& zendesk = Type("zendesk");
  absl::StatusOr<ResolvedEndpoints> r = Catalog::Resolve(zendesk, {{"subdomain", "acme"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->endpoints.authorization, "https://acme.zendesk.com/oauth/authorizations/new");
  EXPECT_EQ(r->endpoints.token, "https://acme.zendesk.com/oauth/tokens");
  EXPECT_EQ(r->endpoints.identity, "https://acme.zendesk.com/api/v2/users/me.json");
  EXPECT_EQ(r->parameters.at("subdomain"), "acme");

  for (const char* bad : {"evil.com/x", "evil.com", "", "-acme", "acme-", "a@b", "acme:443",
                          "ac me", "acme/", "acme?x", "acme#", "x{y}"}) {
    absl::StatusOr<ResolvedEndpoints> refused = Catalog::Resolve(zendesk, {{"subdomain", bad}});
    EXPECT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<ResolvedEndpoints> missing = Catalog::Resolve(zendesk, {});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(Message(missing.status()), HasSubstr("needs parameter subdomain"));
  absl::StatusOr<ResolvedEndpoints> extra =
      Catalog::Resolve(zendesk, {{"subdomain", "acme"}, {"tenant", "common"}});
  ASSERT_FALSE(extra.ok());
  EXPECT_THAT(Message(extra.status()), HasSubstr("takes no parameter tenant"));
}

TEST_F(ShippedCatalogTest, MicrosoftTenantIsValidated) {
  const ConnectorType& microsoft = Type("microsoft_365");
  absl::StatusOr<ResolvedEndpoints> def = Catalog::Resolve(microsoft, {});
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_EQ(def->endpoints.authorization,
            "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize");
  EXPECT_EQ(def->parameters.at("tenant"), "organizations");
  // The issuer keeps the run-time placeholder for the id_token's tid.
  EXPECT_EQ(def->endpoints.issuer, "https://login.microsoftonline.com/{tenantid}/v2.0");

  for (const char* good :
       {"common", "organizations", "consumers", "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "contoso.onmicrosoft.com", "contoso.com"}) {
    absl::StatusOr<ResolvedEndpoints> r = Catalog::Resolve(microsoft, {{"tenant", good}});
    ASSERT_TRUE(r.ok()) << good << ": " << r.status();
    EXPECT_EQ(r->endpoints.token,
              std::string("https://login.microsoftonline.com/") + good + "/oauth2/v2.0/token");
  }
  for (const char* bad : {"", "contoso", "evil.com/x", "../common", "common/..", "a b.com",
                          "10.0.0.1", "72f988bf-86f1-41af-91ab", "contoso.com.", "contoso..com",
                          "user@contoso.com", "common?x=1"}) {
    EXPECT_FALSE(Catalog::Resolve(microsoft, {{"tenant", bad}}).ok()) << bad;
  }
}

TEST_F(ShippedCatalogTest, SalesforceAndIntercomTemplates) {
  const ConnectorType& salesforce = Type("salesforce");
  absl::StatusOr<ResolvedEndpoints> prod = Catalog::Resolve(salesforce, {{"my_domain", "acme"}});
  ASSERT_TRUE(prod.ok()) << prod.status();
  EXPECT_EQ(prod->endpoints.token, "https://acme.my.salesforce.com/services/oauth2/token");
  absl::StatusOr<ResolvedEndpoints> sandbox =
      Catalog::Resolve(salesforce, {{"my_domain", "acme--uat"}, {"environment", "sandbox"}});
  ASSERT_TRUE(sandbox.ok()) << sandbox.status();
  EXPECT_EQ(sandbox->endpoints.revocation,
            "https://acme--uat.sandbox.my.salesforce.com/services/oauth2/revoke");
  EXPECT_FALSE(
      Catalog::Resolve(salesforce, {{"my_domain", "acme"}, {"environment", "sandbox.my"}}).ok());
  EXPECT_FALSE(Catalog::Resolve(salesforce, {{"my_domain", "evil.com#"}}).ok());

  const ConnectorType& intercom = Type("intercom");
  absl::StatusOr<ResolvedEndpoints> us = Catalog::Resolve(intercom, {});
  ASSERT_TRUE(us.ok()) << us.status();
  EXPECT_EQ(us->endpoints.authorization, "https://app.intercom.com/oauth");
  EXPECT_EQ(us->endpoints.token, "https://api.intercom.io/auth/eagle/token");
  absl::StatusOr<ResolvedEndpoints> eu = Catalog::Resolve(intercom, {{"region", "eu"}});
  ASSERT_TRUE(eu.ok()) << eu.status();
  EXPECT_EQ(eu->endpoints.authorization, "https://app.eu.intercom.com/oauth");
  EXPECT_EQ(eu->endpoints.identity, "https://api.eu.intercom.io/me");
  absl::StatusOr<ResolvedEndpoints> bad = Catalog::Resolve(intercom, {{"region", "eu.evil.com/"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(Message(bad.status()), HasSubstr("must be one of au, eu, us"));
}

TEST_F(ShippedCatalogTest, RunTimePlaceholdersAreKept) {
  absl::StatusOr<ResolvedEndpoints> github = Catalog::Resolve(Type("github"), {});
  ASSERT_TRUE(github.ok()) << github.status();
  EXPECT_EQ(github->endpoints.revocation, "https://api.github.com/applications/{client_id}/grant");
  absl::StatusOr<ResolvedEndpoints> hubspot = Catalog::Resolve(Type("hubspot"), {});
  ASSERT_TRUE(hubspot.ok()) << hubspot.status();
  EXPECT_EQ(hubspot->endpoints.identity, "https://api.hubapi.com/oauth/v1/access-tokens/{token}");
}

TEST_F(ShippedCatalogTest, CheckScopes) {
  const ConnectorType& google = Type("google_workspace");
  EXPECT_TRUE(Catalog::CheckScopes(google, {}).ok());
  EXPECT_TRUE(Catalog::CheckScopes(
                  google, {"openid", "email", "https://www.googleapis.com/auth/gmail.send"})
                  .ok());
  absl::Status st = Catalog::CheckScopes(
      google, {"openid", "https://mail.google.com/", "https://www.googleapis.com/auth/drive"});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(st), HasSubstr("scope https://mail.google.com/ is not allowed"));
  EXPECT_THAT(Message(Catalog::CheckScopes(google, {"openid", "openid"})), HasSubstr("twice"));
  EXPECT_FALSE(Catalog::CheckScopes(google, {"openid email"}).ok());
  EXPECT_FALSE(Catalog::CheckScopes(google, {""}).ok());
  EXPECT_FALSE(Catalog::CheckScopes(google, {"open\"id"}).ok());

  const ConnectorType& slack = Type("slack");
  EXPECT_TRUE(Catalog::CheckScopes(slack, {"channels:read", "chat:write"}).ok());
  EXPECT_FALSE(Catalog::CheckScopes(slack, {"channels:read,admin"}).ok());
  EXPECT_THAT(Message(Catalog::CheckScopes(slack, {"chat:write", "admin"})),
              HasSubstr("scope admin is not allowed"));

  EXPECT_FALSE(Catalog::CheckScopes(Type("notion"), {"read"}).ok());
  EXPECT_TRUE(Catalog::CheckScopes(Type("notion"), {}).ok());
  EXPECT_TRUE(Catalog::CheckScopes(Type("oidc"), {"openid", "anything:goes"}).ok());
}

// ----- loading errors ------------------------------------------------------------------------

constexpr char kMinimal[] = R"(format_version = 1
[connectors.demo]
display_name = "Demo"
provider = "demo"
authorization_endpoint = "https://auth.example.com/authorize"
token_endpoint = "https://auth.example.com/token"
scope_separator = " "
pkce = true
client_auth = "basic"
token_body = "form"
token_response = "standard"
scopes_allowed = ["read", "write"]
scopes_default = ["read"]
[connectors.demo.tokens]
refresh = "rotated"
[connectors.demo.revocation]
method = "none"
[connectors.demo.identity]
method = "github_user"
endpoint = "https://api.example.com/user"
)";

absl::Status LoadWith(std::string_view from, std::string_view to) {
  std::string text = kMinimal;
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  return Catalog::LoadString(text, "test.toml").status();
}

TEST(CatalogLoadTest, MinimalCatalogLoads) {
  absl::StatusOr<Catalog> c = Catalog::LoadString(kMinimal, "test.toml");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_NE(c->Find("demo"), nullptr);
  EXPECT_EQ(c->Find("demo")->tokens.refresh, RefreshTokens::kRotated);
}

TEST(CatalogLoadTest, UnknownKeyNamesFileLineAndKey) {
  absl::Status st = LoadWith("scope_separator = \" \"", "scope_seperator = \" \"");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(st), HasSubstr("test.toml:7: connectors.demo.scope_seperator:"));
  EXPECT_THAT(Message(st), HasSubstr("is not a known key"));

  absl::Status nested = LoadWith("refresh = \"rotated\"", "refresh = \"rotated\"\nrotate = true");
  EXPECT_THAT(Message(nested), HasSubstr("test.toml:16: connectors.demo.tokens.rotate:"));
}

TEST(CatalogLoadTest, ParseErrorIsAStatus) {
  absl::Status st = LoadWith("pkce = true", "pkce = = true");
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(Message(st), StartsWith("test.toml:8:"));
}

TEST(CatalogLoadTest, InvalidEntriesAreRefused) {
  struct Case {
    const char* from;
    const char* to;
    const char* expect;
  };
  const Case cases[] = {
      {"https://auth.example.com/token", "http://auth.example.com/token", "token_endpoint"},
      {"https://auth.example.com/token", "https://auth.example.com/{tenant}/token",
       "not a declared parameter"},
      {"https://auth.example.com/token", "https://user@auth.example.com/token", "user information"},
      {"https://auth.example.com/token", "https://auth.example.com/token#x", "fragment"},
      {"scopes_default = [\"read\"]", "scopes_default = [\"admin\"]", "scopes_allowed does not"},
      {"scopes_default = [\"read\"]", "scopes_default = [\"read\", \"read\"]", "twice"},
      {"client_auth = \"basic\"", "client_auth = \"basic_json\"", "token_body"},
      {"client_auth = \"basic\"", "client_auth = \"mtls\"", "must be one of basic, post"},
      {"pkce = true", "pkce = \"yes\"", "must be true or false"},
      {"scope_separator = \" \"", "scope_separator = \";\"", "scope_separator"},
      {"method = \"none\"", "method = \"rfc7009\"\ntoken = \"refresh_token\"",
       "revocation_endpoint"},
      {"endpoint = \"https://api.example.com/user\"\n", "", "required by this identity method"},
      {"format_version = 1", "format_version = 2", "format_version: must be 1"},
      {"display_name = \"Demo\"\n", "", "display_name: is required"},
      {"scopes_default = [\"read\"]",
       "scopes_default = [\"read\"]\nauthorization_params = { redirect_uri = \"x\" }",
       "may not set redirect_uri"},
      {"scopes_default = [\"read\"]",
       "scopes_default = [\"read\"]\ntoken_headers = { Authorization = \"x\" }",
       "may not set header Authorization"},
      {"scopes_default = [\"read\"]",
       "scopes_default = [\"read\"]\n[connectors.demo.parameters.site]\nkind = \"dns_label\"\n"
       "description = \"x\"",
       "no endpoint uses it"},
  };
  for (const Case& c : cases) {
    absl::Status st = LoadWith(c.from, c.to);
    EXPECT_FALSE(st.ok()) << c.to;
    EXPECT_THAT(Message(st), HasSubstr(c.expect)) << c.to;
  }
}

TEST(CatalogLoadTest, MissingFileIsNotFound) {
  absl::StatusOr<Catalog> c = Catalog::LoadFile("/nonexistent/connectors.toml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

// ----- discovery -------------------------------------------------------------------------------

constexpr char kIssuer[] = "https://id.example.com";

std::string Discovery(const std::string& extra = "") {
  return std::string(R"({"issuer": "https://id.example.com",
    "authorization_endpoint": "https://id.example.com/authorize",
    "token_endpoint": "https://id.example.com/token",
    "revocation_endpoint": "https://id.example.com/revoke",
    "userinfo_endpoint": "https://id.example.com/userinfo",
    "jwks_uri": "https://id.example.com/jwks")") +
         extra + "}";
}

class DiscoveryTest : public ShippedCatalogTest {};

TEST_F(DiscoveryTest, FillsEndpoints) {
  absl::StatusOr<ConnectorType> t =
      Catalog::FromDiscovery(Type("oidc"), Discovery(R"(, "code_challenge_methods_supported":
          ["plain", "S256"], "token_endpoint_auth_methods_supported": ["client_secret_basic"])"),
                             kIssuer, false);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->endpoints.authorization, "https://id.example.com/authorize");
  EXPECT_EQ(t->endpoints.token, "https://id.example.com/token");
  EXPECT_EQ(t->endpoints.revocation, "https://id.example.com/revoke");
  EXPECT_EQ(t->endpoints.userinfo, "https://id.example.com/userinfo");
  EXPECT_EQ(t->endpoints.jwks_uri, "https://id.example.com/jwks");
  EXPECT_EQ(t->endpoints.issuer, kIssuer);
  EXPECT_TRUE(t->pkce);
  EXPECT_EQ(t->client_auth, ClientAuth::kBasic);
  EXPECT_EQ(t->revocation.method, RevocationMethod::kRfc7009);
  // The result resolves like any other type.
  absl::StatusOr<ResolvedEndpoints> r = Catalog::Resolve(*t, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->endpoints.token, "https://id.example.com/token");
}

TEST_F(DiscoveryTest, AdaptsToAdvertisedCapabilities) {
  absl::StatusOr<ConnectorType> t = Catalog::FromDiscovery(Type("oidc"),
                                                           R"({"issuer": "https://id.example.com",
          "authorization_endpoint": "https://id.example.com/a",
          "token_endpoint": "https://id.example.com/t", "jwks_uri": "https://id.example.com/k",
          "code_challenge_methods_supported": ["plain"],
          "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]})",
                                                           kIssuer, false);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->pkce);
  EXPECT_EQ(t->client_auth, ClientAuth::kPost);
  EXPECT_EQ(t->revocation.method, RevocationMethod::kNone);
  EXPECT_TRUE(t->endpoints.revocation.empty());
}

// RFC 9207: whether the server promises `iss` on its authorization responses.
TEST_F(DiscoveryTest, ReadsWhetherTheServerSendsIssOnAuthorizationResponses) {
  absl::StatusOr<ConnectorType> silent =
      Catalog::FromDiscovery(Type("oidc"), Discovery(), kIssuer, false);
  ASSERT_TRUE(silent.ok()) << silent.status();
  EXPECT_FALSE(silent->authorization_response_iss);
  absl::StatusOr<ConnectorType> promised = Catalog::FromDiscovery(
      Type("oidc"), Discovery(R"(, "authorization_response_iss_parameter_supported": true)"),
      kIssuer, false);
  ASSERT_TRUE(promised.ok()) << promised.status();
  EXPECT_TRUE(promised->authorization_response_iss);
  absl::StatusOr<ConnectorType> declined = Catalog::FromDiscovery(
      Type("oidc"), Discovery(R"(, "authorization_response_iss_parameter_supported": false)"),
      kIssuer, false);
  ASSERT_TRUE(declined.ok()) << declined.status();
  EXPECT_FALSE(declined->authorization_response_iss);
  absl::StatusOr<ConnectorType> garbled = Catalog::FromDiscovery(
      Type("oidc"), Discovery(R"(, "authorization_response_iss_parameter_supported": "yes")"),
      kIssuer, false);
  ASSERT_FALSE(garbled.ok());
  EXPECT_THAT(Message(garbled.status()), HasSubstr("not a boolean"));
}

TEST_F(DiscoveryTest, RefusesBadDocuments) {
  const ConnectorType& oidc = Type("oidc");
  struct Case {
    std::string doc;
    std::string expected_issuer;
    const char* expect;
  };
  const Case cases[] = {
      {Discovery(), "https://other.example.com", "another issuer"},
      {Discovery(), "https://id.example.com/", "another issuer"},
      {"not json", kIssuer, "not a JSON object"},
      {"[]", kIssuer, "not a JSON object"},
      {R"({"issuer": "https://id.example.com", "authorization_endpoint": "https://id.example.com/a",
          "token_endpoint": "https://id.example.com/t"})",
       kIssuer, "jwks_uri"},
      {R"({"issuer": "https://id.example.com", "authorization_endpoint": "http://id.example.com/a",
          "token_endpoint": "https://id.example.com/t", "jwks_uri": "https://id.example.com/k"})",
       kIssuer, "authorization_endpoint: URL is not https"},
      {R"({"issuer": "https://id.example.com", "authorization_endpoint": "https://id.example.com/a",
          "token_endpoint": "https://evil@id.example.com/t", "jwks_uri": "https://id.example.com/k"})",
       kIssuer, "user information"},
      {R"({"issuer": "https://id.example.com", "authorization_endpoint": 7,
          "token_endpoint": "https://id.example.com/t", "jwks_uri": "https://id.example.com/k"})",
       kIssuer, "not a string"},
      {Discovery(R"(, "token_endpoint_auth_methods_supported": ["private_key_jwt"])"), kIssuer,
       "neither client_secret_basic nor client_secret_post"},
      {Discovery(), "http://id.example.com", "expected issuer"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ConnectorType> t = Catalog::FromDiscovery(oidc, c.doc, c.expected_issuer, false);
    ASSERT_FALSE(t.ok()) << c.doc;
    EXPECT_THAT(Message(t.status()), HasSubstr(c.expect)) << c.doc;
  }
  // Only a discovery template can be filled from a document.
  EXPECT_FALSE(Catalog::FromDiscovery(Type("google_workspace"), Discovery(), kIssuer, false).ok());
}

TEST_F(DiscoveryTest, LoopbackHttpOnlyWhenAllowed) {
  const std::string doc = R"({"issuer": "http://127.0.0.1:8443",
      "authorization_endpoint": "http://127.0.0.1:8443/auth",
      "token_endpoint": "http://localhost:8443/token",
      "jwks_uri": "http://[::1]:8443/jwks"})";
  EXPECT_FALSE(Catalog::FromDiscovery(Type("oidc"), doc, "http://127.0.0.1:8443", false).ok());
  absl::StatusOr<ConnectorType> t =
      Catalog::FromDiscovery(Type("oidc"), doc, "http://127.0.0.1:8443", true);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->endpoints.token, "http://localhost:8443/token");

  const std::string remote = R"({"issuer": "http://127.0.0.1:8443",
      "authorization_endpoint": "http://127.0.0.1:8443/auth",
      "token_endpoint": "http://10.0.0.5/token", "jwks_uri": "http://127.0.0.1:8443/jwks"})";
  absl::StatusOr<ConnectorType> refused =
      Catalog::FromDiscovery(Type("oidc"), remote, "http://127.0.0.1:8443", true);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(Message(refused.status()), HasSubstr("not a loopback address"));
}

TEST(ValidateEndpointUrlTest, AcceptsAndRefuses) {
  for (const char* good :
       {"https://a.example.com", "https://a.example.com/", "https://a.example.com:8443/x?y=1",
        "https://[2001:db8::1]/x", "https://a.example.com/p%20q"}) {
    EXPECT_TRUE(ValidateEndpointUrl(good, false).ok()) << good;
  }
  for (const char* bad :
       {"", "a.example.com", "ftp://a.example.com", "https://", "https:///x", "https://a b.com",
        "https://a.example.com/#frag", "https://u:p@a.example.com", "https://a.example.com:0",
        "https://a.example.com:99999", "https://a..b/", "https://a.example.com/%zz",
        "https://a.example.com/\n", "https://a.example.com/{x}", "http://127.0.0.1/",
        "HTTPS://a.example.com"}) {
    EXPECT_FALSE(ValidateEndpointUrl(bad, false).ok()) << bad;
  }
  EXPECT_TRUE(ValidateEndpointUrl("http://127.0.0.1:80/", true).ok());
  EXPECT_TRUE(ValidateEndpointUrl("http://127.1.2.3/", true).ok());
  EXPECT_FALSE(ValidateEndpointUrl("http://128.0.0.1/", true).ok());
  EXPECT_FALSE(ValidateEndpointUrl("http://127.0.0.1.evil.com/", true).ok());
  EXPECT_FALSE(ValidateEndpointUrl("http://localhost.evil.com/", true).ok());
}

}  // namespace
}  // namespace grantvault::oauth
