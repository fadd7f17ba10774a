// OpenID Connect id_token validation (OpenID Connect Core 1.0 §3.1.3.7), used to learn the
// account a grant belongs to.
//
// VerifyIdToken checks, in this order, and stops at the first failure:
//   1. JWS compact form: three base64url segments (a JWE, five segments, is refused), header
//      and payload JSON objects without duplicate members, no "crit" header.
//   2. alg is RS256, PS256 or ES256. "none", the HMAC algorithms and everything else are
//      refused: the client secret is never a verification key here.
//   3. The key: the JWKS member whose kid equals the header's kid (and whose kty, use and alg
//      fit); without a kid in the header, the only key of the fitting kty. RSA keys shorter
//      than 2048 bits are refused. jku/x5u/jwk headers are ignored: keys come only from the
//      JWKS the caller fetched from the issuer's jwks_uri.
//   4. The signature (cjose).
//   5. iss equals expect.issuer exactly. An issuer containing "{tenantid}" (Microsoft's
//      multi-tenant issuer) is first completed with the token's tid claim, which must be a
//      GUID.
//   6. aud is the client id or an array holding it; with more than one audience, azp must be
//      the client id (and azp, when present, must be the client id anyway).
//   7. exp > now - leeway; iat <= now + leeway; nbf (if present) <= now + leeway.
//   8. nonce equals expect.nonce (which must not be empty).
//   9. sub is a non-empty string of at most 255 characters.
//
// Errors are InvalidArgument (a malformed input) or Unauthenticated (a well-formed token that
// fails a check); the message says which check failed and never contains the token, its
// claims, or the keys. Nothing here logs. No exception leaves this module.
//
// Thread-safe: no shared state.
#ifndef GRANTVAULT_OAUTH_ID_TOKEN_H_
#define GRANTVAULT_OAUTH_ID_TOKEN_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grantvault::oauth {

struct IdTokenExpectations {
  std::string issuer;                        // exact; may hold "{tenantid}" (see above)
  std::string audience;                      // the client id
  std::string nonce;                         // the nonce sent in the authorization request
  absl::Time now = absl::InfinitePast();     // must be set: the verifier has no clock
  absl::Duration leeway = absl::Minutes(2);  // clock skew tolerated on exp, iat and nbf (<= 10 min)
};

struct IdTokenClaims {
  std::string sub;
  std::string iss;
  std::vector<std::string> aud;
  absl::Time exp;
  absl::Time iat;
  std::optional<std::string> email;
  bool email_verified = false;
  std::optional<std::string> name;
  std::optional<std::string> tid;  // Microsoft tenant id, when present
};

absl::StatusOr<IdTokenClaims> VerifyIdToken(std::string_view compact_jwt,
                                            std::string_view jwks_json,
                                            const IdTokenExpectations& expect);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_ID_TOKEN_H_
