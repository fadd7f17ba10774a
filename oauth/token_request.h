// The request grantvault sends to a token endpoint (RFC 6749 §4.1.3), built from a connector's
// catalog entry: the body encoding (form or JSON: Notion, Atlassian), how the client
// authenticates (HTTP Basic, body parameters, or Basic with a JSON body), the connector's extra
// token parameters and headers (GitHub's Accept: application/json).
//
// Wire format (the refresh-token grant, RFC 6749 §6, is the same with grant_type=refresh_token
// and refresh_token instead of code/redirect_uri/code_verifier, and without the catalog's
// token_params, which belong to the code exchange):
//   POST <resolved token endpoint>
//   Content-Type: application/x-www-form-urlencoded | application/json
//   Accept: application/json            (unless the catalog sets Accept itself)
//   <catalog token_headers>
//   Authorization: Basic base64(urlencode(client_id) ":" urlencode(client_secret))  (basic*)
//   grant_type=authorization_code, code, redirect_uri, code_verifier (PKCE only),
//   <catalog token_params>, client_id + client_secret (post only)
//
// Secrets: the body and every header value are wiped when the TokenRequest dies; nothing here
// logs. Not copyable, so no unwiped copy can exist.
#ifndef GRANTVAULT_OAUTH_TOKEN_REQUEST_H_
#define GRANTVAULT_OAUTH_TOKEN_REQUEST_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/secret_bytes.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"

namespace grantvault::oauth {

struct AuthorizationCodeExchange {
  std::string_view client_id;
  const SecretBytes* client_secret = nullptr;  // must not be null
  const SecretBytes* code = nullptr;           // must not be null
  std::string_view redirect_uri;
  const SecretBytes* pkce_verifier = nullptr;  // null or empty: PKCE was not used
};

struct RefreshTokenExchange {
  std::string_view client_id;
  const SecretBytes* client_secret = nullptr;  // must not be null
  const SecretBytes* refresh_token = nullptr;  // must not be null
};

class TokenRequest {
 public:
  // Builds the authorization-code exchange for `profile`'s token endpoint. Cannot fail: the
  // catalog entry was validated when it was loaded.
  TokenRequest(const ConnectorProfile& profile, const AuthorizationCodeExchange& exchange);
  // Builds the refresh-token grant for `profile`'s token endpoint.
  TokenRequest(const ConnectorProfile& profile, const RefreshTokenExchange& exchange);
  ~TokenRequest();
  TokenRequest(const TokenRequest&) = delete;
  TokenRequest& operator=(const TokenRequest&) = delete;

  const HttpRequest& http() const { return request_; }

 private:
  using Fields = std::vector<std::pair<std::string_view, std::string_view>>;
  // Body (form or JSON) from `fields` plus client_id/client_secret when the connector
  // authenticates in the body; the headers; HTTP Basic otherwise.
  void Build(const ConnectorProfile& profile, std::string_view client_id,
             const SecretBytes& client_secret, Fields fields);

  HttpRequest request_;
};

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_TOKEN_REQUEST_H_
