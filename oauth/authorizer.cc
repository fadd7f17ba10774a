#include "oauth/authorizer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/ids.h"
#include "common/status.h"
#include "common/strings.h"
#include "keys/sealed_context.h"
#include "oauth/identity.h"
#include "oauth/token_request.h"
#include "oauth/token_response.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {
namespace {

constexpr char kClientSecretPurpose[] = "client_secret";
constexpr char kVerifierPurpose[] = "pkce_verifier";
constexpr char kRefreshTokenPurpose[] = "refresh_token";
constexpr char kAccessTokenPurpose[] = "access_token";
constexpr absl::Duration kTokenDeadline = absl::Seconds(20);

void AppendField(std::string& body, std::string_view name, std::string_view value) {
  if (!body.empty()) body.push_back('&');
  body += PercentEncode(name);
  body.push_back('=');
  WipedString encoded{PercentEncode(value)};
  body += encoded.value;
}

constexpr size_t kMaxRedirectUris = 16;
constexpr size_t kMaxApiBases = 16;

// "http://127.0.0.1:8080/cb?x" -> {"http://127.0.0.1", "8080", "/cb?x"}, of a
// URI ValidateRedirectUri accepted.
struct UriParts {
  std::string_view before_port;
  std::string_view port;
  std::string_view after_port;
};
UriParts SplitUri(std::string_view uri) {
  const size_t authority_start = uri.find("://") + 3;
  size_t authority_end = uri.find_first_of("/?", authority_start);
  if (authority_end == std::string_view::npos) authority_end = uri.size();
  const std::string_view authority = uri.substr(authority_start, authority_end - authority_start);
  const size_t colon = authority.rfind(':');
  const size_t bracket = authority.rfind(']');
  if (colon == std::string_view::npos || (bracket != std::string_view::npos && colon < bracket)) {
    return {uri.substr(0, authority_end), "", uri.substr(authority_end)};
  }
  return {uri.substr(0, authority_start + colon), authority.substr(colon + 1),
          uri.substr(authority_end)};
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

absl::Status ValidateRedirectUri(std::string_view uri) {
  if (absl::Status st = ValidateEndpointUrl(uri, /*allow_loopback_http=*/true); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "redirect URI '", Sv(uri), "': ", st.message(),
        " (it must be an absolute https URL, or http on a loopback address: RFC 8252)"));
  }
  return absl::OkStatus();
}

bool IsAcceptableRedirectUri(std::string_view uri) { return ValidateRedirectUri(uri).ok(); }

bool IsLoopbackRedirectUri(std::string_view uri) {
  return uri.starts_with("http://") && ValidateRedirectUri(uri).ok();
}

bool RedirectUriMatches(std::string_view registered, std::string_view requested) {
  if (registered == requested) return true;
  if (!IsLoopbackRedirectUri(registered) || !IsLoopbackRedirectUri(requested)) return false;
  const UriParts r = SplitUri(registered);
  const UriParts q = SplitUri(requested);
  return r.port.empty() && r.before_port == q.before_port && r.after_port == q.after_port;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const AuthorizerDeps& deps) {
  if (deps.store == nullptr || deps.sealer == nullptr || deps.http == nullptr ||
      deps.connectors == nullptr || deps.id_tokens == nullptr || deps.clock == nullptr) {
    return absl::InvalidArgumentError("Authorizer needs every dependency");
  }
  return std::unique_ptr<Authorizer>(new Authorizer(deps));
}

absl::StatusOr<store::ConnectorRegistration> Authorizer::Register(
    store::ConnectorRegistration registration, const SecretBytes& client_secret) {
  if (registration.connector_id.empty() || registration.connector_id.size() > 64 ||
      registration.connector_id.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_-") !=
          std::string::npos) {
    return absl::InvalidArgumentError(
        "a connector id is 1..64 characters of a-z, 0-9, '_' and '-'");
  }
  if (registration.client_id.empty()) return absl::InvalidArgumentError("a client id is required");
  if (client_secret.empty()) return absl::InvalidArgumentError("a client secret is required");
  if (registration.redirect_uris.size() > kMaxRedirectUris) {
    return absl::InvalidArgumentError(
        absl::StrCat("a connector registers at most ", kMaxRedirectUris, " redirect URIs"));
  }
  for (auto it = registration.redirect_uris.begin(); it != registration.redirect_uris.end(); ++it) {
    GV_RETURN_IF_ERROR(ValidateRedirectUri(*it));
    if (std::find(registration.redirect_uris.begin(), it, *it) != it) {
      return absl::InvalidArgumentError(absl::StrCat("redirect URI '", *it, "' is given twice"));
    }
  }
  if (registration.api_bases.size() > kMaxApiBases) {
    return absl::InvalidArgumentError(
        absl::StrCat("a connector registers at most ", kMaxApiBases, " API bases"));
  }
  for (auto it = registration.api_bases.begin(); it != registration.api_bases.end(); ++it) {
    if (absl::Status st = ValidateApiBase(*it); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("API base '", *it, "' ", st.message()));
    }
    if (std::find(registration.api_bases.begin(), it, *it) != it) {
      return absl::InvalidArgumentError(absl::StrCat("API base '", *it, "' is given twice"));
    }
  }
  GV_RETURN_IF_ERROR(deps_.connectors->Validate(registration));
  const absl::Time now = deps_.clock->Now();
  absl::StatusOr<store::ConnectorRegistration> existing =
      deps_.store->GetConnectorRegistration(registration.connector_id);
  registration.created_at = existing.ok() ? existing->created_at : now;
  registration.updated_at = now;

  store::SealedSecret secret;
  secret.key = {store::RegistrationSecretOwner(registration.connector_id), kClientSecretPurpose};
  secret.connector_id = registration.connector_id;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                      deps_.sealer->Seal(client_secret, keys::SealContextOf(secret)));
  secret.kek_label = sealed.kek.label;
  secret.record = std::move(sealed.record);
  secret.updated_at = now;
  GV_RETURN_IF_ERROR(deps_.store->PutConnectorRegistration(registration, secret));
  return registration;
}

absl::StatusOr<SecretBytes> Authorizer::OpenClientSecret(
    const store::ConnectorRegistration& registration) {
  GV_ASSIGN_OR_RETURN(
      store::SealedSecret secret,
      deps_.store->GetSealedSecret(
          {store::RegistrationSecretOwner(registration.connector_id), kClientSecretPurpose}));
  if (secret.connector_id != registration.connector_id) {
    return absl::DataLossError("the client secret row is bound to another connector");
  }
  return deps_.sealer->Open(secret.record, keys::SealContextOf(secret));
}

absl::StatusOr<Authorizer::Started> Authorizer::Begin(std::string_view workspace_id,
                                                      std::string_view connector_id,
                                                      std::vector<std::string> scopes,
                                                      std::string_view admin_user,
                                                      std::string_view redirect_uri) {
  if (workspace_id.empty()) return absl::InvalidArgumentError("a workspace id is required");
  if (admin_user.empty()) return absl::InvalidArgumentError("the admin user is required");
  GV_RETURN_IF_ERROR(ValidateRedirectUri(redirect_uri));
  GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                      deps_.store->GetConnectorRegistration(connector_id));
  // The code goes wherever the provider redirects the browser: only to a URI
  // the connector's client is registered with (or, when it registers none, to
  // a loopback listener on this host).
  if (registration.redirect_uris.empty()) {
    if (!IsLoopbackRedirectUri(redirect_uri)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "connector ", Sv(connector_id), " registers no redirect URI, so only a loopback one ",
          "(the CLI's listener) can be used; register '", Sv(redirect_uri),
          "' with the connector first (grantvault connectors register … --redirect-uri)"));
    }
  } else if (std::none_of(registration.redirect_uris.begin(), registration.redirect_uris.end(),
                          [&](const std::string& registered) {
                            return RedirectUriMatches(registered, redirect_uri);
                          })) {
    return absl::InvalidArgumentError(absl::StrCat(
        "redirect URI '", Sv(redirect_uri), "' is not registered for connector ", Sv(connector_id),
        " (registered: ", absl::StrJoin(registration.redirect_uris, ", "), ")"));
  }
  GV_ASSIGN_OR_RETURN(ConnectorProfile profile, deps_.connectors->Resolve(registration));
  const ConnectorType& type = profile.catalog_type;
  if (scopes.empty()) scopes = type.scopes_default;
  std::vector<std::string> missing;
  for (const std::string& required : type.scopes_required) {
    if (!Contains(scopes, required)) missing.push_back(required);
  }
  scopes.insert(scopes.begin(), missing.begin(), missing.end());
  absl::Status allowed = Catalog::CheckScopes(type, scopes);
  if (!allowed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("connector ", Sv(connector_id), ": ", allowed.message()));
  }
  const absl::Time now = deps_.clock->Now();
  // Best effort: expired sessions are garbage, and removing them is not this
  // request's business to fail on.
  deps_.store->DeleteExpiredAuthorizationSessions(now).status().IgnoreError();

  const std::string state = NewState();
  store::AuthorizationSession session;
  session.session_id = StateDigest(state);
  session.workspace_id = std::string(workspace_id);
  session.connector_id = std::string(connector_id);
  session.scopes = scopes;
  session.admin_user = std::string(admin_user);
  session.redirect_uri = std::string(redirect_uri);
  session.nonce = type.identity.method == IdentityMethod::kIdToken ? NewNonce() : "";
  session.created_at = now;
  session.expires_at = now + kAuthorizationSessionLifetime;

  std::string query;
  AppendField(query, "response_type", "code");
  AppendField(query, "client_id", registration.client_id);
  AppendField(query, "redirect_uri", redirect_uri);
  if (!type.scope_param.empty()) {
    AppendField(query, type.scope_param, absl::StrJoin(scopes, Sv(type.scope_separator)));
  }
  AppendField(query, "state", state);
  std::optional<store::SealedSecret> sealed_verifier;
  if (type.pkce) {
    SecretBytes verifier = NewPkceVerifier();
    AppendField(query, "code_challenge", PkceChallengeS256(verifier));
    AppendField(query, "code_challenge_method", "S256");
    store::SealedSecret s;
    s.key = {session.session_id, kVerifierPurpose};
    s.workspace_id = session.workspace_id;
    s.connector_id = session.connector_id;
    GV_ASSIGN_OR_RETURN(hsm::Sealed sealed, deps_.sealer->Seal(verifier, keys::SealContextOf(s)));
    s.kek_label = sealed.kek.label;
    s.record = std::move(sealed.record);
    s.updated_at = now;
    sealed_verifier = std::move(s);
  }
  if (!session.nonce.empty()) AppendField(query, "nonce", session.nonce);
  bool has_prompt = false;
  for (const auto& [name, value] : type.authorization_params) {
    AppendField(query, name, value);
    has_prompt = has_prompt || name == "prompt";
  }
  // OIDC Core §11: a request for offline_access must ask for consent.
  if (!has_prompt && Contains(scopes, "offline_access")) AppendField(query, "prompt", "consent");
  GV_RETURN_IF_ERROR(deps_.store->InsertAuthorizationSession(session, sealed_verifier));

  Started started;
  const std::string& endpoint = profile.resolved.endpoints.authorization;
  const char* joiner = endpoint.find('?') == std::string::npos ? "?" : "&";
  started.authorization_url = absl::StrCat(endpoint, joiner, query);
  started.expires_at = session.expires_at;
  started.scopes = std::move(scopes);
  started.required_scopes = type.scopes_required;
  return started;
}

absl::StatusOr<Authorizer::Completed> Authorizer::Complete(const Callback& callback) {
  const absl::Time now = deps_.clock->Now();
  absl::StatusOr<store::GrantStore::ConsumedSession> consumed =
      deps_.store->ConsumeAuthorizationSession(StateDigest(callback.state), now);
  if (absl::IsNotFound(consumed.status())) {
    return absl::InvalidArgumentError(
        "unknown or already used state: start the authorization again");
  }
  if (absl::IsFailedPrecondition(consumed.status())) {
    return absl::InvalidArgumentError(consumed.status().message());
  }
  GV_RETURN_IF_ERROR(consumed.status());
  const store::AuthorizationSession& session = consumed->session;
  if (!callback.error.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the provider did not authorize: ", callback.error,
        callback.error_description.empty() ? ""
                                           : absl::StrCat(" (", callback.error_description, ")")));
  }
  GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                      deps_.store->GetConnectorRegistration(session.connector_id));
  GV_ASSIGN_OR_RETURN(ConnectorProfile profile, deps_.connectors->Resolve(registration));
  const ConnectorType& type = profile.catalog_type;
  const std::string& issuer = profile.resolved.endpoints.issuer;
  // RFC 9207 §2.4: a server that says it sends `iss` always does, so a redirect
  // without it did not come from that server. A templated issuer (Microsoft's
  // {tenantid}) is checked on the id_token instead.
  if (callback.issuer.empty()) {
    if (type.authorization_response_iss) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the redirect has no iss parameter, which ", issuer,
          " sends on every authorization response (RFC 9207): it did not come from that server"));
    }
  } else if (!issuer.empty() && issuer.find('{') == std::string::npos &&
             callback.issuer != issuer) {
    return absl::InvalidArgumentError(
        "the redirect names another issuer than the connector's (RFC 9207 mix-up defence)");
  }
  SecretBytes verifier;
  if (consumed->pkce_verifier.has_value()) {
    GV_ASSIGN_OR_RETURN(verifier,
                        deps_.sealer->Open(consumed->pkce_verifier->record,
                                           keys::SealContextOf(*consumed->pkce_verifier)));
  }
  GV_ASSIGN_OR_RETURN(SecretBytes client_secret, OpenClientSecret(registration));

  // The exchange (RFC 6749 §4.1.3), in the provider's shape.
  absl::StatusOr<HttpResponse> response;
  {
    const TokenRequest request(profile,
                               AuthorizationCodeExchange{.client_id = registration.client_id,
                                                         .client_secret = &client_secret,
                                                         .code = &callback.code,
                                                         .redirect_uri = session.redirect_uri,
                                                         .pkce_verifier = &verifier});
    response = deps_.http->Send(request.http(), kTokenDeadline);
  }
  client_secret.Clear();
  verifier.Clear();
  GV_RETURN_IF_ERROR(response.status());
  GV_ASSIGN_OR_RETURN(TokenResponse tokens, ParseTokenResponse(*response, type));
  GV_ASSIGN_OR_RETURN(AccountIdentity identity,
                      LearnIdentity(IdentityRequest{.profile = &profile,
                                                    .registration = &registration,
                                                    .tokens = &tokens,
                                                    .nonce = session.nonce,
                                                    .now = now},
                                    *deps_.http, *deps_.id_tokens));

  // Which secret the grant keeps: the refresh token, or the long-lived access token of a
  // provider (or app setting) that issues none.
  bool seal_refresh = false;
  if (type.tokens.refresh != RefreshTokens::kNone) {
    if (!tokens.refresh_token.empty()) {
      seal_refresh = true;
    } else if (!type.tokens.refresh_optional) {
      return absl::FailedPreconditionError(
          absl::StrCat("the token response has no refresh_token, which ", type.display_name,
                       " always issues for this request; check the app's settings and the scopes"));
    }
  }

  store::Grant grant;
  grant.grant_id = NewGrantId();
  grant.workspace_id = session.workspace_id;
  grant.connector_id = session.connector_id;
  grant.connector_type = registration.connector_type;
  grant.account_id = std::move(identity.account_id);
  if (tokens.scopes) {
    grant.scopes = *tokens.scopes;
  } else if (identity.granted_scopes) {
    grant.scopes = *identity.granted_scopes;
  } else {
    grant.scopes = session.scopes;
  }
  grant.status = store::GrantStatus::kActive;
  grant.authorized_by = session.admin_user;
  grant.created_at = now;
  grant.updated_at = now;
  if (tokens.expires_in) grant.access_token_expires_at = now + *tokens.expires_in;
  grant.metadata = std::move(identity.metadata);

  store::SealedSecret secret;
  secret.key = {grant.grant_id, seal_refresh ? kRefreshTokenPurpose : kAccessTokenPurpose};
  secret.workspace_id = grant.workspace_id;
  secret.connector_id = grant.connector_id;
  secret.account_id = grant.account_id;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                      deps_.sealer->Seal(seal_refresh ? tokens.refresh_token : tokens.access_token,
                                         keys::SealContextOf(secret)));
  secret.kek_label = sealed.kek.label;
  secret.record = std::move(sealed.record);
  secret.updated_at = now;

  Completed done;
  absl::StatusOr<store::Grant> current =
      deps_.store->FindCurrentGrant(grant.workspace_id, grant.connector_id);
  if (current.ok()) done.replaced_grant_id = current->grant_id;
  // Bound to the registration the tokens came from: a re-registration that
  // ran meanwhile makes this fail rather than file them under new endpoints.
  GV_RETURN_IF_ERROR(
      deps_.store->InsertGrant(grant, secret, done.replaced_grant_id, &registration));
  done.grant = std::move(grant);
  return done;
}

}  // namespace grantvault::oauth
