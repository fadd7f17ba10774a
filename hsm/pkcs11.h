// The PKCS#11 C API (OASIS names, from p11-kit's header) and error helpers.
#ifndef GRANTVAULT_HSM_PKCS11_H_
#define GRANTVAULT_HSM_PKCS11_H_

#include <p11-kit/pkcs11.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace grantvault::hsm {

// "CKR_PIN_INCORRECT" for known codes, "CKR_0x…" otherwise.
std::string RvName(CK_RV rv);

// A Status for a failed PKCS#11 call: "<what>: <CKR name>". The code says
// what a caller can do about it (Unauthenticated for PIN problems,
// Unavailable for a token that went away, Internal otherwise).
absl::Status Pkcs11Error(std::string_view what, CK_RV rv);

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_PKCS11_H_
