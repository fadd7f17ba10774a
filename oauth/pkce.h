// The random values of an authorization-code grant (RFC 6749 §10.12,
// RFC 7636, OIDC Core §3.1.2.1) and the parsing of its redirect.
#ifndef GRANTVAULT_OAUTH_PKCE_H_
#define GRANTVAULT_OAUTH_PKCE_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace grantvault::oauth {

// base64url without padding (RFC 4648 §5).
std::string Base64Url(const uint8_t* data, size_t size);
// Strict base64url decoding (no padding, canonical trailing bits), as JWS uses it
// (RFC 7515 §2); nullopt on anything else.
std::optional<std::string> Base64UrlDecode(std::string_view in);
// Standard base64 with padding (RFC 4648 §4), e.g. for HTTP Basic credentials.
std::string Base64(std::string_view data);

// 256 random bits as 43 base64url characters: a single-use `state`.
std::string NewState();
// The store keeps only this (hex SHA-256), so a copy of the database cannot
// complete a pending authorization.
std::string StateDigest(std::string_view state);
// 128 random bits as base64url: an OIDC nonce.
std::string NewNonce();

// A PKCE code verifier: 256 random bits as 43 base64url characters.
SecretBytes NewPkceVerifier();
// BASE64URL(SHA256(verifier)), the S256 code challenge.
std::string PkceChallengeS256(const SecretBytes& verifier);

// What the authorization server put on the redirect URI.
struct Callback {
  std::string state;
  SecretBytes code;               // empty when `error` is set
  std::string error;              // e.g. "access_denied"
  std::string error_description;  // the server's text, for people
  std::string issuer;             // RFC 9207 `iss`, when sent
};
// Parses a full redirect URL (`http://127.0.0.1:8765/callback?code=…&state=…`)
// or just its query. InvalidArgument when there is no state, or neither a
// code nor an error. The code is moved into SecretBytes; the message of an
// error never contains it.
absl::StatusOr<Callback> ParseCallback(std::string_view url_or_query);

// Splits a query string into decoded (name, value) pairs; InvalidArgument on
// a malformed percent-escape.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQuery(std::string_view query);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_PKCE_H_
