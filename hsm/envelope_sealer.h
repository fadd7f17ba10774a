// The envelope Sealer of DESIGN §4:
//  - a fresh 32-byte data key per secret (libsodium CSPRNG, in SecretBytes);
//  - the secret encrypted in software with XChaCha20-Poly1305, AAD = payload
//    binding (context, format version);
//  - the data key encrypted inside the token with the KEK, CKM_AES_GCM, a
//    random 12-byte IV and AAD = key binding (context, KEK label and id,
//    format version).
// The KEK reference is bound into the data key's AAD but not into the
// payload's, so rewrap touches only the 48-byte wrapped key.
#ifndef GRANTVAULT_HSM_ENVELOPE_SEALER_H_
#define GRANTVAULT_HSM_ENVELOPE_SEALER_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsm/sealer.h"
#include "hsm/token.h"

namespace grantvault::hsm {

class EnvelopeSealer final : public Sealer {
 public:
  // `token` must outlive the sealer. Fails if `active_kek` is not in the token.
  static absl::StatusOr<std::unique_ptr<EnvelopeSealer>> Create(Token* token,
                                                                const KeyRef& active_kek);

  absl::StatusOr<Sealed> Seal(const SecretBytes& secret, const SealContext& context) override;
  absl::StatusOr<SecretBytes> Open(absl::Span<const uint8_t> record,
                                   const SealContext& context) override;
  absl::StatusOr<Sealed> Rewrap(absl::Span<const uint8_t> record,
                                const SealContext& context) override;
  KeyRef ActiveKek() const override;
  absl::Status SetActiveKek(const KeyRef& kek) override;

 private:
  EnvelopeSealer(Token* token, KeyRef active) : token_(token), active_(std::move(active)) {}

  absl::StatusOr<CK_OBJECT_HANDLE> KekHandle(Session& session, const KeyRef& kek);
  void ForgetKek(const KeyRef& kek);
  // Encrypts (wrap) or decrypts (unwrap) a data key with `kek` in the token.
  absl::StatusOr<std::vector<uint8_t>> WrapDataKey(const SecretBytes& data_key, const KeyRef& kek,
                                                   absl::Span<const uint8_t> iv,
                                                   absl::Span<const uint8_t> aad);
  absl::StatusOr<SecretBytes> UnwrapDataKey(absl::Span<const uint8_t> wrapped, const KeyRef& kek,
                                            absl::Span<const uint8_t> iv,
                                            absl::Span<const uint8_t> aad);
  // One CKM_AES_GCM encryption or decryption with `kek` inside the token,
  // written to `output` (which has room for the whole result); returns the
  // number of bytes written.
  absl::StatusOr<size_t> GcmInToken(bool encrypt, absl::Span<const uint8_t> input,
                                    const KeyRef& kek, absl::Span<const uint8_t> iv,
                                    absl::Span<const uint8_t> aad, absl::Span<uint8_t> output);

  Token* const token_;
  mutable absl::Mutex mu_;
  KeyRef active_ ABSL_GUARDED_BY(mu_);
  // Object handles by label ‖ id; valid for every session of this application.
  std::map<std::string, CK_OBJECT_HANDLE> handles_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_ENVELOPE_SEALER_H_
