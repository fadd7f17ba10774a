// Learning the account a new grant belongs to, per the catalog's identity method
// (docs/connectors.md, [connectors.<type>.identity]), and the non-secret metadata kept with it.
//
// Methods and what they read (calls are GETs with the access token as a bearer, Accept:
// application/json, unless noted):
//   id_token           the verified id_token's `sub` (signature against the JWKS at jwks_uri,
//                      issuer, audience, nonce, expiry: oauth/id_token.h); metadata from its
//                      claims (hd, email, tid, oid, …).
//   userinfo           userinfo endpoint → `sub`.
//   github_user        identity endpoint (GET /user) → numeric `id`; metadata `login`.
//   slack_authed_user  token response, no call: account "<team.id>:<authed_user.id>"
//                      (enterprise.id instead of team.id for an org-wide install).
//   notion_owner       token response, no call: owner.user.id, or bot_id for workspace-owned
//                      integrations.
//   salesforce_id_url  token response `id` = https://…/id/<org id>/<user id>, parsed, not
//                      fetched: account <user id>, metadata organization_id, instance_url.
//   hubspot_token_info GET /oauth/v1/access-tokens/{token} (no bearer; the token is in the
//                      path) → account "<hub_id>:<user_id>"; its `scopes` are the granted ones.
//   linear_viewer      POST GraphQL {"query":"{ viewer { id } organization { id urlKey } }"}
//                      → viewer.id; metadata organization_id, organization_url_key.
//   atlassian_me       GET accessible-resources → the first site's id (cloud_id) and url
//                      (site_url); GET /me → account_id.
//   zendesk_me         GET /api/v2/users/me.json → user.id.
//   intercom_me        GET /me → id; metadata app_id_code (app.id_code).
// The registration's parameters (subdomain, region, tenant…) are metadata candidates too. Only
// the names the catalog lists in identity.metadata are kept, each printable ASCII of at most
// 1024 characters.
//
// Run-time placeholders in identity endpoints ({token}, {client_id}) are filled here,
// percent-encoded. Errors never contain a token: they name the endpoint as the catalog writes
// it (with "{token}" unfilled). Nothing here logs.
#ifndef GRANTVAULT_OAUTH_IDENTITY_H_
#define GRANTVAULT_OAUTH_IDENTITY_H_

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"
#include "oauth/token_response.h"
#include "store/grant_store.h"

namespace grantvault::oauth {

struct AccountIdentity {
  std::string account_id;
  std::map<std::string, std::string> metadata;  // only names the catalog lists
  // The scopes the provider reports as granted when the identity call says (HubSpot token
  // info) and the token response did not.
  std::optional<std::vector<std::string>> granted_scopes;
};

struct IdentityRequest {
  const ConnectorProfile* profile = nullptr;
  const store::ConnectorRegistration* registration = nullptr;
  const TokenResponse* tokens = nullptr;
  std::string_view nonce;  // the authorization request's nonce (id_token only)
  absl::Time now;
};

// Errors: FailedPrecondition when the token response lacks what the method needs;
// Unavailable when an identity call fails or answers something unusable; the verifier's
// error for a refused id_token.
absl::StatusOr<AccountIdentity> LearnIdentity(const IdentityRequest& request, HttpClient& http,
                                              IdTokenVerifier& id_tokens);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_IDENTITY_H_
