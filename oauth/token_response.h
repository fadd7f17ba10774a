// Parsing of token-endpoint answers (RFC 6749 §5.1 success, §5.2 error), and of the shapes
// providers use instead (docs/connectors.md, "Enumerations: token responses").
#ifndef GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_
#define GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
#include "oauth/catalog.h"
#include "oauth/http_client.h"

namespace grantvault::oauth {

struct TokenResponse {
  SecretBytes access_token;
  std::string token_type;  // "Bearer"
  std::optional<absl::Duration> expires_in;
  SecretBytes refresh_token;  // empty when the server issued none
  // The scopes the server granted, when it said (RFC 6749 §5.1: it must when
  // they differ from the request).
  std::optional<std::vector<std::string>> scopes;
  std::string id_token;  // OIDC; an identity assertion, never logged
  // Other top-level string or number fields (instance_url, bot_id…), for
  // connector-specific metadata, plus the nested fields a shape names (below).
  // Never holds a field whose name contains "token" or "secret". Values are
  // printable ASCII, at most 1024 characters.
  std::map<std::string, std::string> extra;
};

// Reads a token endpoint's answer:
//  - 200 with a JSON object holding access_token → the response;
//  - an RFC 6749 error object (400/401) → FailedPrecondition
//    "token endpoint refused the request: invalid_grant (description)";
//  - 429 and 5xx → Unavailable (the Retry-After, if any, in the message);
//  - a redirect → Unavailable "the token endpoint redirected; redirects are
//    not followed";
//  - anything else (not JSON, no access_token, wrong types) → Unavailable
//    "malformed token response".
// Token values are moved into SecretBytes; no message ever holds one.
// `scope_separator` splits the `scope` field (" " by default; some providers
// use ",").
absl::StatusOr<TokenResponse> ParseTokenResponse(const HttpResponse& response,
                                                 std::string_view scope_separator = " ");

// Reads a token endpoint's answer in the shape `type.token_response` names, with the same
// errors as above, and:
//  - standard, hubspot: as above, `scope` split on the type's separator.
//  - slack_v2: HTTP 200 with "ok": false → FailedPrecondition naming Slack's `error`; "ok"
//    must be true. The token fields are read from the top level (bot token), or from
//    `authed_user` when the type asks for user scopes (scope_param "user_scope"). `scope` is
//    comma-separated. extra gains team_id, team_name, enterprise_id, enterprise_name,
//    authed_user_id and is_enterprise_install ("true"/"false").
//  - github: an `error` member with HTTP 200 is an error; a form-encoded answer (when
//    Accept: application/json was not honoured) is read like JSON; `scope` is comma-separated;
//    refresh_token only for apps with expiring user tokens.
//  - salesforce: `instance_url` (an https *.salesforce.com or *.force.com origin) and `id` are
//    required and land in extra; no expires_in.
//  - notion: `bot_id` and `workspace_id` are required; extra gains owner_type ("user" or
//    "workspace") and, for user-owned integrations, owner_user_id.
absl::StatusOr<TokenResponse> ParseTokenResponse(const HttpResponse& response,
                                                 const ConnectorType& type);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_
