// Parsing of token-endpoint answers (RFC 6749 §5.1 success, §5.2 error).
#ifndef GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_
#define GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
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
  // Other top-level string or number fields (instance_url, team id…), for
  // connector-specific metadata. Never holds a field whose name contains
  // "token" or "secret".
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

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_TOKEN_RESPONSE_H_
