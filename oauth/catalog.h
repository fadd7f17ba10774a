// The connector catalog: what grantvault knows about each kind of OAuth server it can be the
// client of (Google Workspace, Microsoft 365, Slack, ..., any OpenID Connect provider).
//
// The catalog is data: oauth/connectors.toml, shipped with the project and documented key by
// key in docs/connectors.md. Catalog::LoadFile parses and validates it completely, so that
// everything after loading can trust it: endpoints are https URLs whose templates name only
// declared parameters, enumerations hold known values, default and required scopes are allowed
// scopes. Unknown keys are errors ("<file>:<line>: connectors.slack.scope_seperator: is not a
// known key"), so a typo never silently changes how grantvault talks to a provider.
//
// Per registration, Resolve() expands an entry's templates with the registration's parameters
// (Microsoft tenant, Zendesk subdomain, Salesforce My Domain, Intercom region) after checking
// each value cannot change the structure of the URL it lands in.
//
// Errors are absl::Status values (InvalidArgument for bad input, NotFound for a missing file);
// no exception leaves this module. Nothing here logs.
//
// Thread-safety: a Catalog and the ConnectorTypes it holds are immutable after loading; any
// number of threads may read them.
#ifndef GRANTVAULT_OAUTH_CATALOG_H_
#define GRANTVAULT_OAUTH_CATALOG_H_

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grantvault::oauth {

// How the client authenticates at the token (and revocation) endpoint.
enum class ClientAuth {
  kBasic,      // HTTP Basic with client_id:client_secret (RFC 6749 §2.3.1)
  kPost,       // client_id and client_secret in the request body
  kBasicJson,  // HTTP Basic, and the body is JSON (Notion)
};

// Encoding of a request body sent to the token or revocation endpoint.
enum class BodyFormat {
  kForm,  // application/x-www-form-urlencoded
  kJson,  // application/json
};

// How to read the token endpoint's answer.
enum class TokenResponseShape {
  kStandard,    // RFC 6749 §5.1 / §5.2
  kSlackV2,     // HTTP 200 with ok:false on error; user token under authed_user; team, enterprise
  kGithub,      // errors come with HTTP 200 and an `error` field; form-encoded unless Accept: json
  kSalesforce,  // instance_url, id (identity URL), issued_at, signature; no expires_in
  kNotion,      // workspace_id, workspace_name, bot_id, owner
  kHubspot,     // standard fields; the account comes from the token-info call
};

enum class RefreshTokens {
  kNone,     // never issued: the access token itself is long-lived and sealed
  kReused,   // the same refresh token keeps working
  kRotated,  // each refresh returns a new refresh token and may invalidate the old one
};

enum class RevocationMethod {
  kNone,                       // the provider offers no API; revocation is reported as manual
  kRfc7009,                    // POST token (+ token_type_hint) to the revocation endpoint
  kGithubGrantDelete,          // DELETE /applications/{client_id}/grant, Basic, {access_token}
  kSlackAuthRevoke,            // auth.revoke with the token as bearer
  kHubspotRefreshTokenDelete,  // DELETE /oauth/v1/refresh-tokens/{token}
  kZendeskCurrentTokenDelete,  // DELETE /api/v2/oauth/tokens/current.json with the token as bearer
};

// How the OAuth engine learns the account a grant belongs to.
enum class IdentityMethod {
  kIdToken,           // OIDC id_token `sub` (oauth/id_token.h)
  kUserinfo,          // OIDC userinfo `sub`
  kGithubUser,        // GET /user -> id
  kSlackAuthedUser,   // token response: team.id + authed_user.id
  kNotionOwner,       // token response: owner.user.id (or bot_id for workspace-owned bots)
  kSalesforceIdUrl,   // token response `id` URL: .../id/<org id>/<user id>
  kHubspotTokenInfo,  // GET /oauth/v1/access-tokens/{token} -> hub_id + user_id
  kLinearViewer,      // GraphQL { viewer { id } organization { id urlKey } }
  kAtlassianMe,       // accessible-resources (cloud id) + GET /me -> account_id
  kZendeskMe,         // GET /api/v2/users/me.json -> user.id
  kIntercomMe,        // GET /me -> id, app.id_code
};

// A value a registration supplies for an endpoint template.
struct TemplateParameter {
  enum class Kind {
    // One DNS label: [A-Za-z0-9-]{1,63}, no leading or trailing '-'. Zendesk subdomain,
    // Salesforce My Domain.
    kDnsLabel,
    // A directory GUID, a domain name, or common / organizations / consumers.
    kMicrosoftTenant,
    // One of `choices`' keys; the key's value is what is substituted (Intercom region
    // "eu" -> "eu.").
    kChoice,
  };
  std::string name;
  Kind kind = Kind::kDnsLabel;
  std::string description;
  std::optional<std::string> default_value;
  std::map<std::string, std::string> choices;  // kChoice only
};

// Endpoint URLs, as templates in a ConnectorType and expanded in ResolvedEndpoints. An empty
// string means "none".
struct Endpoints {
  std::string authorization;
  std::string token;
  std::string revocation;
  std::string userinfo;
  std::string jwks_uri;
  std::string issuer;          // may hold "{tenantid}" (see VerifyIdToken)
  std::string identity;        // the identity call, when the identity method makes one
  std::string identity_sites;  // Atlassian accessible-resources
};

struct TokenPolicy {
  RefreshTokens refresh = RefreshTokens::kReused;
  bool refresh_optional = false;  // the server may omit the refresh token (app setting)
  bool refresh_expires = false;   // a refresh token can stop working on its own
  bool access_expires = true;
};

struct Revocation {
  RevocationMethod method = RevocationMethod::kNone;
  bool revoke_refresh_token = true;  // which token to send: refresh (true) or access (false)
  BodyFormat body = BodyFormat::kForm;
};

struct Identity {
  IdentityMethod method = IdentityMethod::kIdToken;
  std::vector<std::string> metadata;  // names of the non-secret provider metadata kept
};

// One entry of the catalog. Plain data, validated by the Catalog that made it.
struct ConnectorType {
  std::string type;      // the catalog key, e.g. "google_workspace"
  std::string provider;  // the protocol family, e.g. "google", "atlassian", "oidc"
  std::string display_name;
  bool discovery = false;  // generic OIDC: endpoints come from FromDiscovery()
  Endpoints endpoints;
  std::vector<TemplateParameter> parameters;
  std::string scope_separator = " ";
  std::string scope_param = "scope";  // empty: scopes are fixed at app registration
  bool pkce = true;                   // send an S256 code_challenge
  // RFC 9207: the server puts `iss` on every authorization response (discovery's
  // authorization_response_iss_parameter_supported). A callback without it is then refused:
  // it may come from another server the admin was tricked into using (mix-up attack).
  bool authorization_response_iss = false;
  ClientAuth client_auth = ClientAuth::kBasic;
  BodyFormat token_body = BodyFormat::kForm;
  TokenResponseShape token_response = TokenResponseShape::kStandard;
  std::vector<std::pair<std::string, std::string>> token_headers;  // e.g. Accept
  std::vector<std::pair<std::string, std::string>> authorization_params;
  std::vector<std::pair<std::string, std::string>> token_params;
  bool any_scope = false;
  std::vector<std::string> scopes_allowed;
  std::vector<std::string> scopes_required;  // always requested
  std::vector<std::string> scopes_default;   // requested when the admin names none
  TokenPolicy tokens;
  Revocation revocation;
  Identity identity;
  // Where the proxy may send this type's API calls (docs/proxy.md): https URLs whose path ends
  // in '/', templates like the endpoints' ("{subdomain}"), and "{grant:<key>}" filled at call
  // time from the grant's metadata (ExpandApiBase). Empty: the registration names them (oidc).
  std::vector<std::string> api_bases;

  const TemplateParameter* FindParameter(std::string_view name) const;
};

// A ConnectorType's endpoints for one registration.
struct ResolvedEndpoints {
  Endpoints endpoints;
  // Every declared parameter, defaults applied, as the registration should store it.
  std::map<std::string, std::string> parameters;
  // The type's api_bases with the parameters filled; "{grant:<key>}" left in place.
  std::vector<std::string> api_bases;
};

// An API base with its "{grant:<key>}" placeholders filled from a grant's metadata. A value must
// be one identifier ([A-Za-z0-9._-], 1 to 128 characters): a cloud id, never a host or a path.
absl::StatusOr<std::string> ExpandApiBase(std::string_view base,
                                          const std::map<std::string, std::string>& metadata);

// Checks an API base a registration names: an absolute https URL (an IP address or a DNS name)
// whose path ends in '/', without query, fragment or user information.
absl::Status ValidateApiBase(std::string_view url);

class Catalog {
 public:
  // Loads and validates a catalog file.
  static absl::StatusOr<Catalog> LoadFile(const std::string& path);
  // The catalog shipped with the project (GV_CONNECTORS_TOML, set at build time).
  static absl::StatusOr<Catalog> LoadDefault();
  // Parses catalog text; `source_name` is used in error messages. For tests and tools.
  static absl::StatusOr<Catalog> LoadString(std::string_view toml, std::string_view source_name);

  // nullptr when the catalog has no such type.
  const ConnectorType* Find(std::string_view type) const;
  const std::vector<ConnectorType>& types() const { return types_; }

  // Expands `type`'s endpoint templates with `params`. Every declared parameter must be given
  // or have a default; values are validated for their kind (a Zendesk subdomain "evil.com/x" is
  // refused); undeclared parameters are refused. Placeholders filled at run time ({client_id},
  // {token}, {tenantid}) are left in place. The result's endpoints are https URLs.
  static absl::StatusOr<ResolvedEndpoints> Resolve(
      const ConnectorType& type, const std::map<std::string, std::string>& params);

  // OK when every requested scope is allowed for `type` (and is a well-formed scope token
  // without the type's separator). The error names the first scope that is not.
  static absl::Status CheckScopes(const ConnectorType& type,
                                  const std::vector<std::string>& requested);

  // A copy of `oidc_template` (a type with discovery = true) whose endpoints come from an
  // issuer's discovery document (OpenID Connect Discovery 1.0 / RFC 8414): authorization,
  // token, revocation, userinfo endpoints, jwks_uri, issuer; PKCE off only when the document
  // lists code_challenge_methods_supported without S256; client_secret_post when the document
  // lists token_endpoint_auth_methods_supported without client_secret_basic. Refused: a
  // document that does not parse, whose issuer is not exactly `expected_issuer`, that lacks
  // authorization_endpoint, token_endpoint or jwks_uri, or whose URLs are not https (http is
  // accepted only for loopback hosts, and only when allow_loopback_http is set: tests).
  static absl::StatusOr<ConnectorType> FromDiscovery(const ConnectorType& oidc_template,
                                                     std::string_view discovery_json,
                                                     std::string_view expected_issuer,
                                                     bool allow_loopback_http);

 private:
  explicit Catalog(std::vector<ConnectorType> types) : types_(std::move(types)) {}

  std::vector<ConnectorType> types_;  // sorted by type
};

// Checks that `url` is an absolute https URL (or, with allow_loopback_http, an http URL whose
// host is 127.0.0.0/8, [::1] or localhost) with a plain host[:port] authority: no user info,
// no fragment, no whitespace or control characters.
absl::Status ValidateEndpointUrl(std::string_view url, bool allow_loopback_http);

// Names for the enumerations, as written in connectors.toml.
std::string_view ToString(ClientAuth v);
std::string_view ToString(BodyFormat v);
std::string_view ToString(TokenResponseShape v);
std::string_view ToString(RefreshTokens v);
std::string_view ToString(RevocationMethod v);
std::string_view ToString(IdentityMethod v);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_CATALOG_H_
