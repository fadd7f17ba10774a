#include "oauth/authorizer.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/ids.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/token_response.h"

namespace grantvault::oauth {
namespace {

constexpr char kClientSecretPurpose[] = "client_secret";
constexpr char kVerifierPurpose[] = "pkce_verifier";
constexpr absl::Duration kTokenDeadline = absl::Seconds(20);

// A std::string that is wiped when it dies: for request bodies and headers
// that carry codes, verifiers and client secrets.
struct WipedString {
  std::string value;
  ~WipedString() { OPENSSL_cleanse(value.data(), value.size()); }
};

void AppendField(std::string& body, std::string_view name, std::string_view value) {
  if (!body.empty()) body.push_back('&');
  body += PercentEncode(name);
  body.push_back('=');
  WipedString encoded{PercentEncode(value)};
  body += encoded.value;
}

hsm::SealContext ContextFor(const store::SealedSecret& s) {
  return hsm::SealContext{s.workspace_id, s.connector_id, s.account_id, s.key.owner_id,
                          s.key.purpose};
}

std::string Host(std::string_view uri) {
  size_t scheme = uri.find("://");
  if (scheme == std::string_view::npos) return "";
  std::string_view rest = uri.substr(scheme + 3);
  size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (authority.find('@') != std::string_view::npos) return "";  // no userinfo
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    return close == std::string_view::npos ? "" : std::string(authority.substr(0, close + 1));
  }
  return std::string(authority.substr(0, authority.find(':')));
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

absl::StatusOr<std::string> GetJson(HttpClient& http, const std::string& url,
                                    const std::string& bearer) {
  HttpRequest request;
  request.url = url;
  request.headers.push_back({"Accept", "application/json"});
  WipedString authorization;
  if (!bearer.empty()) {
    authorization.value = "Bearer " + bearer;
    request.headers.push_back({"Authorization", authorization.value});
  }
  absl::StatusOr<HttpResponse> response = http.Send(request, kTokenDeadline);
  for (auto& [name, value] : request.headers) OPENSSL_cleanse(value.data(), value.size());
  GV_RETURN_IF_ERROR(response.status());
  if (response->status != 200) {
    return absl::UnavailableError(
        absl::StrCat(url, " answered HTTP ", response->status, " instead of 200"));
  }
  return std::string(response->body);
}

}  // namespace

bool IsAcceptableRedirectUri(std::string_view uri) {
  if (uri.size() > 2048 || uri.find('#') != std::string_view::npos) return false;
  const std::string host = Host(uri);
  if (host.empty()) return false;
  if (uri.starts_with("https://")) return true;
  return uri.starts_with("http://") &&
         (host == "127.0.0.1" || host == "[::1]" || host == "localhost");
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
  GV_RETURN_IF_ERROR(deps_.connectors->Validate(registration));
  const absl::Time now = deps_.clock->Now();
  absl::StatusOr<store::ConnectorRegistration> existing =
      deps_.store->GetConnectorRegistration(registration.connector_id);
  registration.created_at = existing.ok() ? existing->created_at : now;
  registration.updated_at = now;

  store::SealedSecret secret;
  secret.key = {store::RegistrationSecretOwner(registration.connector_id), kClientSecretPurpose};
  secret.connector_id = registration.connector_id;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed, deps_.sealer->Seal(client_secret, ContextFor(secret)));
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
  return deps_.sealer->Open(secret.record, ContextFor(secret));
}

absl::StatusOr<Authorizer::Started> Authorizer::Begin(std::string_view workspace_id,
                                                      std::string_view connector_id,
                                                      std::vector<std::string> scopes,
                                                      std::string_view admin_user,
                                                      std::string_view redirect_uri) {
  if (workspace_id.empty()) return absl::InvalidArgumentError("a workspace id is required");
  if (admin_user.empty()) return absl::InvalidArgumentError("the admin user is required");
  if (!IsAcceptableRedirectUri(redirect_uri)) {
    return absl::InvalidArgumentError(
        "the redirect URI must be https, or http on a loopback address (RFC 8252)");
  }
  GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                      deps_.store->GetConnectorRegistration(connector_id));
  GV_ASSIGN_OR_RETURN(ConnectorProfile profile, deps_.connectors->Resolve(registration));
  if (scopes.empty()) scopes = profile.default_scopes;
  for (const std::string& required : profile.required_scopes) {
    if (!Contains(scopes, required)) scopes.insert(scopes.begin(), required);
  }
  for (const std::string& scope : scopes) {
    if (scope.empty() || scope.find_first_of(" \t\r\n\"\\") != std::string::npos) {
      return absl::InvalidArgumentError("a scope must be a non-empty token without spaces");
    }
    if (!profile.allowed_scopes.empty() && !Contains(profile.allowed_scopes, scope)) {
      return absl::InvalidArgumentError(
          absl::StrCat("connector ", Sv(connector_id), " does not allow the scope '", scope, "'"));
    }
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
  session.nonce = profile.identity == ConnectorProfile::Identity::kIdToken ? NewNonce() : "";
  session.created_at = now;
  session.expires_at = now + kAuthorizationSessionLifetime;

  std::string query;
  AppendField(query, "response_type", "code");
  AppendField(query, "client_id", registration.client_id);
  AppendField(query, "redirect_uri", redirect_uri);
  AppendField(query, "scope", absl::StrJoin(scopes, Sv(profile.scope_separator)));
  AppendField(query, "state", state);
  std::optional<store::SealedSecret> sealed_verifier;
  if (profile.pkce) {
    SecretBytes verifier = NewPkceVerifier();
    AppendField(query, "code_challenge", PkceChallengeS256(verifier));
    AppendField(query, "code_challenge_method", "S256");
    store::SealedSecret s;
    s.key = {session.session_id, kVerifierPurpose};
    s.workspace_id = session.workspace_id;
    s.connector_id = session.connector_id;
    GV_ASSIGN_OR_RETURN(hsm::Sealed sealed, deps_.sealer->Seal(verifier, ContextFor(s)));
    s.kek_label = sealed.kek.label;
    s.record = std::move(sealed.record);
    s.updated_at = now;
    sealed_verifier = std::move(s);
  }
  if (!session.nonce.empty()) AppendField(query, "nonce", session.nonce);
  bool has_prompt = false;
  for (const auto& [name, value] : profile.extra_authorization_params) {
    AppendField(query, name, value);
    has_prompt = has_prompt || name == "prompt";
  }
  // OIDC Core §11: a request for offline_access must ask for consent.
  if (!has_prompt && Contains(scopes, "offline_access")) AppendField(query, "prompt", "consent");
  GV_RETURN_IF_ERROR(deps_.store->InsertAuthorizationSession(session, sealed_verifier));

  Started started;
  const char* joiner = profile.authorization_endpoint.find('?') == std::string::npos ? "?" : "&";
  started.authorization_url = absl::StrCat(profile.authorization_endpoint, joiner, query);
  started.expires_at = session.expires_at;
  started.scopes = std::move(scopes);
  return started;
}

absl::StatusOr<std::string> Authorizer::AccountId(const ConnectorProfile& profile,
                                                  const store::ConnectorRegistration& registration,
                                                  const TokenResponse& tokens,
                                                  std::string_view nonce) {
  if (profile.identity == ConnectorProfile::Identity::kIdToken) {
    if (tokens.id_token.empty()) {
      return absl::FailedPreconditionError(
          "the token response has no id_token; the account cannot be identified");
    }
    if (profile.jwks_uri.empty()) {
      return absl::FailedPreconditionError("the connector has no jwks_uri to verify id_tokens");
    }
    GV_ASSIGN_OR_RETURN(std::string jwks, GetJson(*deps_.http, profile.jwks_uri, ""));
    return deps_.id_tokens->VerifiedSubject(tokens.id_token, jwks, profile.issuer,
                                            registration.client_id, nonce, deps_.clock->Now());
  }
  if (profile.userinfo_endpoint.empty()) {
    return absl::FailedPreconditionError("the connector has no userinfo endpoint");
  }
  WipedString bearer{std::string(tokens.access_token.view())};
  GV_ASSIGN_OR_RETURN(std::string body,
                      GetJson(*deps_.http, profile.userinfo_endpoint, bearer.value));
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_object()) {
    for (const char* key : {"sub", "id", "user_id"}) {
      auto it = doc.find(key);
      if (it == doc.end()) continue;
      if (it->is_string() && !it->get_ref<const std::string&>().empty())
        return it->get<std::string>();
      if (it->is_number_integer()) return it->dump();
    }
  }
  return absl::UnavailableError("the userinfo answer names no account (no sub or id)");
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
  if (!callback.issuer.empty() && !profile.issuer.empty() && callback.issuer != profile.issuer) {
    return absl::InvalidArgumentError(
        "the redirect names another issuer than the connector's (RFC 9207 mix-up defence)");
  }
  SecretBytes verifier;
  if (consumed->pkce_verifier.has_value()) {
    GV_ASSIGN_OR_RETURN(verifier, deps_.sealer->Open(consumed->pkce_verifier->record,
                                                     ContextFor(*consumed->pkce_verifier)));
  }
  GV_ASSIGN_OR_RETURN(SecretBytes client_secret, OpenClientSecret(registration));

  // The token request (RFC 6749 §4.1.3).
  HttpRequest request;
  request.method = "POST";
  request.url = profile.token_endpoint;
  request.headers.push_back({"Content-Type", "application/x-www-form-urlencoded"});
  request.headers.push_back({"Accept", "application/json"});
  AppendField(request.body, "grant_type", "authorization_code");
  AppendField(request.body, "code", callback.code.view());
  AppendField(request.body, "redirect_uri", session.redirect_uri);
  if (!verifier.empty()) AppendField(request.body, "code_verifier", verifier.view());
  for (const auto& [name, value] : profile.extra_token_params)
    AppendField(request.body, name, value);
  if (profile.client_auth == ConnectorProfile::ClientAuth::kPost) {
    AppendField(request.body, "client_id", registration.client_id);
    AppendField(request.body, "client_secret", client_secret.view());
  } else {
    // RFC 6749 §2.3.1: both parts form-encoded before base64.
    WipedString credentials{PercentEncode(registration.client_id) + ":" +
                            PercentEncode(client_secret.view())};
    std::string basic = "Basic " + Base64(credentials.value);
    request.headers.push_back({"Authorization", basic});
    OPENSSL_cleanse(basic.data(), basic.size());
  }
  absl::StatusOr<HttpResponse> response = deps_.http->Send(request, kTokenDeadline);
  for (auto& [name, value] : request.headers) OPENSSL_cleanse(value.data(), value.size());
  GV_RETURN_IF_ERROR(response.status());
  GV_ASSIGN_OR_RETURN(TokenResponse tokens, ParseTokenResponse(*response, profile.scope_separator));
  GV_ASSIGN_OR_RETURN(std::string account_id,
                      AccountId(profile, registration, tokens, session.nonce));

  store::Grant grant;
  grant.grant_id = NewGrantId();
  grant.workspace_id = session.workspace_id;
  grant.connector_id = session.connector_id;
  grant.connector_type = registration.connector_type;
  grant.account_id = account_id;
  grant.scopes = tokens.scopes.value_or(session.scopes);
  grant.status = store::GrantStatus::kActive;
  grant.authorized_by = session.admin_user;
  grant.created_at = now;
  grant.updated_at = now;
  if (tokens.expires_in) grant.access_token_expires_at = now + *tokens.expires_in;
  for (const auto& [key, value] : tokens.extra) {
    if (key != "token_type") grant.metadata[key] = value;
  }

  const bool has_refresh = !tokens.refresh_token.empty();
  store::SealedSecret secret;
  secret.key = {grant.grant_id, has_refresh ? "refresh_token" : "access_token"};
  secret.workspace_id = grant.workspace_id;
  secret.connector_id = grant.connector_id;
  secret.account_id = grant.account_id;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                      deps_.sealer->Seal(has_refresh ? tokens.refresh_token : tokens.access_token,
                                         ContextFor(secret)));
  secret.kek_label = sealed.kek.label;
  secret.record = std::move(sealed.record);
  secret.updated_at = now;

  Completed done;
  absl::StatusOr<store::Grant> current =
      deps_.store->FindCurrentGrant(grant.workspace_id, grant.connector_id);
  if (current.ok()) done.replaced_grant_id = current->grant_id;
  GV_RETURN_IF_ERROR(deps_.store->InsertGrant(grant, secret, done.replaced_grant_id));
  done.grant = std::move(grant);
  return done;
}

}  // namespace grantvault::oauth
