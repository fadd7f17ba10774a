// The IdTokenVerifier the Authorizer uses: oauth/id_token.h's VerifyIdToken
// against the issuer's JWKS.
#ifndef GRANTVAULT_OAUTH_ID_TOKEN_VERIFIER_H_
#define GRANTVAULT_OAUTH_ID_TOKEN_VERIFIER_H_

#include <memory>

#include "oauth/authorizer.h"

namespace grantvault::oauth {

std::unique_ptr<IdTokenVerifier> NewJwksIdTokenVerifier();

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_ID_TOKEN_VERIFIER_H_
