// The authorization-code grant, grantvault as the client (DESIGN §7
// "Authorize"): register a connector's OAuth client, start an authorization
// (state, PKCE S256, nonce), and complete it (exchange, identity, seal, store).
#ifndef GRANTVAULT_OAUTH_AUTHORIZER_H_
#define GRANTVAULT_OAUTH_AUTHORIZER_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "hsm/sealer.h"
#include "oauth/catalog.h"
#include "oauth/http_client.h"
#include "oauth/pkce.h"
#include "store/grant_store.h"

namespace grantvault::oauth {

inline constexpr absl::Duration kAuthorizationSessionLifetime = absl::Minutes(10);

// What the flow needs to know about one registered connector: its endpoints
// (templates already expanded, discovery already done) and its quirks.
struct ConnectorProfile {
  // The catalog entry (after discovery, for OIDC) and its endpoints expanded
  // for this registration: everything provider-specific the flow may need.
  ConnectorType catalog_type;
  ResolvedEndpoints resolved;

  std::string type;
  std::string display_name;
  std::string authorization_endpoint;
  std::string token_endpoint;
  std::string revocation_endpoint;
  std::string userinfo_endpoint;
  std::string jwks_uri;
  std::string issuer;  // OIDC: the id_token's expected `iss`
  bool pkce = true;
  enum class ClientAuth { kBasic, kPost } client_auth = ClientAuth::kBasic;
  std::string scope_separator = " ";
  std::vector<std::pair<std::string, std::string>> extra_authorization_params;
  std::vector<std::pair<std::string, std::string>> extra_token_params;
  std::vector<std::string> allowed_scopes;  // empty: any
  std::vector<std::string> default_scopes;
  std::vector<std::string> required_scopes;  // always requested (e.g. openid)
  // How the account id is learnt: from the id_token's `sub` (OIDC) or from the
  // userinfo endpoint's `sub`.
  enum class Identity { kIdToken, kUserinfo } identity = Identity::kIdToken;
};

// Turns a registration into a profile (catalog lookup, template expansion,
// OIDC discovery). Thread-safe.
class ConnectorResolver {
 public:
  virtual ~ConnectorResolver() = default;
  // Validates a registration before it is stored (type known, parameters
  // valid, issuer reachable for OIDC).
  virtual absl::Status Validate(const store::ConnectorRegistration& registration) = 0;
  virtual absl::StatusOr<ConnectorProfile> Resolve(
      const store::ConnectorRegistration& registration) = 0;
};

// Verifies an id_token and returns its `sub` (see oauth/id_token.h).
class IdTokenVerifier {
 public:
  virtual ~IdTokenVerifier() = default;
  virtual absl::StatusOr<std::string> VerifiedSubject(std::string_view id_token,
                                                      std::string_view jwks_json,
                                                      std::string_view issuer,
                                                      std::string_view client_id,
                                                      std::string_view nonce, absl::Time now) = 0;
};

struct AuthorizerDeps {
  store::GrantStore* store = nullptr;
  hsm::Sealer* sealer = nullptr;
  HttpClient* http = nullptr;
  ConnectorResolver* connectors = nullptr;
  IdTokenVerifier* id_tokens = nullptr;
  Clock* clock = nullptr;
};

// The authorization-code flow as the admin handlers see it: the Authorizer
// itself where it runs (the broker process), or a proxy to it
// (front/broker_calls.h). Thread-safe. Never logs, and never puts in an
// error, a code, verifier, client secret or token.
class AuthorizationFlow {
 public:
  virtual ~AuthorizationFlow() = default;

  // Validates and stores the registration with its client secret sealed. Its
  // redirect URIs (at most 16, no repeats) must each pass ValidateRedirectUri.
  // Replacing a registration that grants use cannot change what decides their
  // endpoints (store::GrantStore::PutConnectorRegistration).
  virtual absl::StatusOr<store::ConnectorRegistration> Register(
      store::ConnectorRegistration registration, const SecretBytes& client_secret) = 0;

  struct Started {
    std::string authorization_url;
    absl::Time expires_at;
    std::vector<std::string> scopes;
    // The protocol scopes the connector always adds (e.g. openid,
    // offline_access): part of `scopes`, never a tool's need.
    std::vector<std::string> required_scopes;
  };
  // Requested scopes must be within what the connector allows (empty: its
  // default set). The redirect URI must pass ValidateRedirectUri and match one
  // the registration lists (RedirectUriMatches); a registration that lists
  // none accepts only loopback ones (the CLI's listener, RFC 8252 §7.3).
  virtual absl::StatusOr<Started> Begin(std::string_view workspace_id,
                                        std::string_view connector_id,
                                        std::vector<std::string> scopes,
                                        std::string_view admin_user,
                                        std::string_view redirect_uri) = 0;

  struct Completed {
    store::Grant grant;
    std::optional<std::string> replaced_grant_id;  // a scope change
  };
  // Consumes the state (single use), then: an error callback → PermissionDenied
  // naming the provider's error; otherwise exchange the code (with the PKCE
  // verifier), learn the account, seal the refresh token (or the access token
  // when no refresh token is issued), and store the grant, replacing the
  // workspace's current grant for that connector. Nothing is stored on error.
  virtual absl::StatusOr<Completed> Complete(const Callback& callback) = 0;
};

class Authorizer : public AuthorizationFlow {
 public:
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const AuthorizerDeps& deps);

  absl::StatusOr<store::ConnectorRegistration> Register(store::ConnectorRegistration registration,
                                                        const SecretBytes& client_secret) override;
  absl::StatusOr<Started> Begin(std::string_view workspace_id, std::string_view connector_id,
                                std::vector<std::string> scopes, std::string_view admin_user,
                                std::string_view redirect_uri) override;
  absl::StatusOr<Completed> Complete(const Callback& callback) override;

 private:
  explicit Authorizer(const AuthorizerDeps& deps) : deps_(deps) {}
  absl::StatusOr<SecretBytes> OpenClientSecret(const store::ConnectorRegistration& registration);

  AuthorizerDeps deps_;
};

// Whether `uri` may receive codes: an absolute https URL, or http on
// 127.0.0.0/8, [::1] or localhost (native apps, RFC 8252 §7.3, §8.3); a plain
// host[:port] authority (no user information), no fragment (RFC 6749
// §3.1.2). InvalidArgument naming what is wrong.
absl::Status ValidateRedirectUri(std::string_view uri);
bool IsAcceptableRedirectUri(std::string_view uri);
// An acceptable http URI on a loopback address.
bool IsLoopbackRedirectUri(std::string_view uri);

// Whether a request for `requested` is a use of the registered redirect URI
// `registered`: the same string, or, for a loopback http URI registered
// without a port, the same URI with any port (RFC 8252 §7.3, as providers
// treat native clients).
bool RedirectUriMatches(std::string_view registered, std::string_view requested);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_AUTHORIZER_H_
