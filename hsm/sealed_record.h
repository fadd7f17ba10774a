// The byte format of a sealed secret (documented in docs/sealed-records.md).
//
//   offset  size   field
//   0       4      magic "GVSR"
//   4       1      format version (1)
//   5       1      L = length of the KEK label (1..64)
//   6       L      KEK label, e.g. "grantvault-kek-3"
//   ..      1      I = length of the KEK CKA_ID (1..64)
//   ..      I      KEK CKA_ID
//   ..      12     AES-GCM IV used by the token
//   ..      1      W = length of the wrapped data key (48: 32-byte key + 16-byte tag)
//   ..      W      wrapped data key
//   ..      24     XChaCha20-Poly1305 nonce
//   ..      4      C = ciphertext length, big-endian (17..65,552)
//   ..      C      ciphertext ‖ 16-byte Poly1305 tag
//
// Parsing is strict: every length is bounded, and trailing bytes are refused.
#ifndef GRANTVAULT_HSM_SEALED_RECORD_H_
#define GRANTVAULT_HSM_SEALED_RECORD_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hsm/keys.h"

namespace grantvault::hsm {

inline constexpr uint8_t kSealedRecordVersion = 1;
inline constexpr size_t kMaxSealedSecretSize = 65536;
inline constexpr size_t kDataKeySize = 32;
inline constexpr size_t kHsmIvSize = 12;
inline constexpr size_t kGcmTagSize = 16;
inline constexpr size_t kWrappedKeySize = kDataKeySize + kGcmTagSize;
inline constexpr size_t kNonceSize = 24;
inline constexpr size_t kAeadTagSize = 16;
inline constexpr size_t kMaxKeyLabelSize = 64;
inline constexpr size_t kMaxKeyIdSize = 64;

struct SealedRecord {
  uint8_t version = kSealedRecordVersion;
  KeyRef kek;
  std::array<uint8_t, kHsmIvSize> hsm_iv{};
  std::vector<uint8_t> wrapped_key;
  std::array<uint8_t, kNonceSize> nonce{};
  std::vector<uint8_t> ciphertext;

  std::vector<uint8_t> Encode() const;
  // InvalidArgument (DataLoss for a known-version record whose lengths do not
  // add up) naming the field that is wrong; never echoes the bytes.
  static absl::StatusOr<SealedRecord> Parse(absl::Span<const uint8_t> bytes);
};

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_SEALED_RECORD_H_
