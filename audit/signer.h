// The key that signs audit checkpoints and exports.
#ifndef GRANTVAULT_AUDIT_SIGNER_H_
#define GRANTVAULT_AUDIT_SIGNER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/token.h"

namespace grantvault::audit {

// Signs with an ECDSA P-256 key. Implementations must be thread-safe.
class Signer {
 public:
  virtual ~Signer();
  // ECDSA over SHA-256(data), DER-encoded (ECDSA-Sig-Value).
  virtual absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t> data) = 0;
  // The public half as a PEM SubjectPublicKeyInfo ("-----BEGIN PUBLIC KEY-----").
  virtual absl::StatusOr<std::string> PublicKeyPem() = 0;
  // The key's name, recorded in every checkpoint (e.g. "grantvault-audit-1").
  virtual std::string key_label() const = 0;
};

// A Signer backed by the token's key pair labelled `label` (hsm::kAuditKeyLabelPrefix + n). The
// key is found once, by label, and then always used by label and CKA_ID; FailedPrecondition when
// the token holds several private keys with that label (someone with the PIN added one), NotFound
// when it holds none. `token` must outlive the Signer.
absl::StatusOr<std::unique_ptr<Signer>> MakeHsmSigner(hsm::Token& token, const std::string& label);

}  // namespace grantvault::audit

#endif  // GRANTVAULT_AUDIT_SIGNER_H_
