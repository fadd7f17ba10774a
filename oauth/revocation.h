// Revoking a grant at the provider that issued it (DESIGN §7 "Revoke", issue #6): one request in
// the shape the connector's catalog entry names ([connectors.<type>.revocation], documented in
// docs/connectors.md, "Revocation").
//
// Wire format per method (URLs are the profile's revocation_endpoint, whose run-time
// placeholders {client_id} and {token} are filled here, percent-encoded):
//   rfc7009       POST; the catalog's client authentication (HTTP Basic, or client_id and
//                 client_secret in the body; a public client sends client_id alone); body
//                 `token=…&token_type_hint=refresh_token|access_token` (form), or {"token": …}
//                 (JSON, Notion: no hint); Accept: application/json; the catalog's token_headers
//                 (Notion-Version). Sends the token revocation.revoke_refresh_token names, and
//                 the other one when that one is missing.
//   github_grant_delete
//                 DELETE /applications/{client_id}/grant; Basic client_id:client_secret; JSON
//                 {"access_token": …}; Accept: application/vnd.github+json;
//                 X-GitHub-Api-Version: 2022-11-28. Deletes every token of the grant.
//   slack_auth_revoke
//                 POST auth.revoke, empty form body, the access token as a bearer.
//   hubspot_refresh_token_delete
//                 DELETE /oauth/v1/refresh-tokens/{token} with the refresh token in the path;
//                 no client authentication (HubSpot's v1 endpoint takes none).
//   zendesk_current_token_delete
//                 DELETE /api/v2/oauth/tokens/current.json, the access token as a bearer.
//   none          no request: kManual.
//
// Answers (each provider's documented behaviour; see docs/connectors.md for the sources):
//   OK(kRevoked)         the provider confirmed: 2xx (rfc7009, DELETEs), Slack ok:true with
//                        revoked:true. RFC 7009 §2.2 answers 200 for an already-invalid token
//                        too, so kRevoked does not say the token was still valid.
//   OK(kAlreadyInvalid)  the provider says the token no longer works: rfc7009 400 `invalid_token`
//                        (Google, Salesforce), GitHub 404 and 422, Slack `invalid_auth`,
//                        `token_revoked`, `token_expired`, `account_inactive`, HubSpot 404,
//                        Zendesk 401.
//   OK(kManual)          method none.
//   Unavailable          retryable: 5xx, 429 (and GitHub's 403 with x-ratelimit-remaining: 0),
//                        Slack `ratelimited` / `internal_error` / `fatal_error` /
//                        `service_unavailable` / `request_timeout`, Slack ok:true without
//                        revoked:true, a 2xx Slack answer that is not JSON, transport failures
//                        (connection, TLS, time-out, oversized answer), and a deadline that
//                        passed before the request went out. When the provider sent Retry-After
//                        in delta-seconds the message ends "; retry_after_ms=N".
//   PermissionDenied     not retryable, the client's credentials were refused: `invalid_client`,
//                        401 (except Zendesk, above), 403.
//   FailedPrecondition   not retryable, anything else: `unsupported_token_type`,
//                        `invalid_request`, other 4xx, a redirect (never followed), a grant
//                        without the token the method needs, a missing client secret where the
//                        method needs one, an endpoint the method cannot use.
//
// Secrets: no message ever holds a token, a client secret or an Authorization header; messages
// name the endpoint as the catalog writes it ("{token}" unfilled) and the provider's error code
// and description (printable ASCII, cut short, with any echo of a secret removed). The request
// (URL, headers, body) and any parsed answer are wiped before they are freed. Nothing here logs.
//
// Thread-safety: RevokeAtProvider is a pure function of its arguments; call it from any thread
// (HttpClient is thread-safe).
#ifndef GRANTVAULT_OAUTH_REVOCATION_H_
#define GRANTVAULT_OAUTH_REVOCATION_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"

namespace grantvault::oauth {

// What the daemon has for one grant. Pointers are borrowed for the call only.
struct RevocationRequestInput {
  // catalog_type.revocation names the method and the token to send; revocation_endpoint is
  // the URL with the registration's templates expanded. Must not be null.
  const ConnectorProfile* profile = nullptr;
  std::string client_id;
  const SecretBytes* client_secret = nullptr;  // null or empty: a public client
  const SecretBytes* refresh_token = nullptr;  // null or empty: none (connector without them)
  // The sealed long-lived token (refresh "none") or a cached access token; null or empty: none.
  // github_grant_delete, slack_auth_revoke and zendesk_current_token_delete need one: refresh
  // first when none is cached.
  const SecretBytes* access_token = nullptr;
};

enum class RevocationOutcome {
  kRevoked,         // the provider confirmed the revocation
  kAlreadyInvalid,  // the provider says the token was already revoked, expired or unknown
  kManual,          // method none: the provider has no API; the admin must remove the app
};

std::string_view ToString(RevocationOutcome outcome);

// Sends the connector's revocation request and reads the answer (see above). `deadline` bounds
// the whole exchange (connect, TLS, request, answer), on top of the client's own time-outs.
absl::StatusOr<RevocationOutcome> RevokeAtProvider(HttpClient& http,
                                                   const RevocationRequestInput& input,
                                                   absl::Time deadline);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_REVOCATION_H_
