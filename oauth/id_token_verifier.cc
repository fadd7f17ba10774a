#include "oauth/id_token_verifier.h"

#include "common/status.h"
#include "oauth/id_token.h"

namespace grantvault::oauth {
namespace {

class JwksIdTokenVerifier final : public IdTokenVerifier {
 public:
  absl::StatusOr<std::string> VerifiedSubject(std::string_view id_token, std::string_view jwks_json,
                                              std::string_view issuer, std::string_view client_id,
                                              std::string_view nonce, absl::Time now) override {
    IdTokenExpectations expect;
    expect.issuer = std::string(issuer);
    expect.audience = std::string(client_id);
    expect.nonce = std::string(nonce);
    expect.now = now;
    GV_ASSIGN_OR_RETURN(IdTokenClaims claims, VerifyIdToken(id_token, jwks_json, expect));
    return claims.sub;
  }
};

}  // namespace

std::unique_ptr<IdTokenVerifier> NewJwksIdTokenVerifier() {
  return std::make_unique<JwksIdTokenVerifier>();
}

}  // namespace grantvault::oauth
