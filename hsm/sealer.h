// Sealer: seals secrets so that only this deployment's HSM can open them, and
// only for the row they were sealed for.
#ifndef GRANTVAULT_HSM_SEALER_H_
#define GRANTVAULT_HSM_SEALER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/secret_bytes.h"
#include "hsm/keys.h"

namespace grantvault::hsm {

// What a sealed secret belongs to. Every field is bound into the record's
// authenticated data: a record copied to another workspace, connector,
// account, owner (grant id) or purpose does not open.
struct SealContext {
  std::string_view workspace_id;
  std::string_view connector_id;
  std::string_view account_id;
  std::string_view owner_id;  // grant id, registration id, session id
  std::string_view purpose;   // "refresh_token", "access_token", "client_secret", …
};

struct Sealed {
  std::vector<uint8_t> record;  // hsm/sealed_record.h format
  KeyRef kek;                   // the KEK that wraps its data key
};

// Thread-safe.
class Sealer {
 public:
  virtual ~Sealer() = default;

  // Seals `secret` (1..65,536 bytes) under the active KEK.
  virtual absl::StatusOr<Sealed> Seal(const SecretBytes& secret, const SealContext& context) = 0;
  // Opens a record sealed for `context`. Any failure to authenticate — a
  // flipped bit anywhere, a record moved to another row, a different KEK —
  // is DataLoss ("does not authenticate"); a KEK missing from the token is
  // NotFound; token faults keep their PKCS#11 status.
  virtual absl::StatusOr<SecretBytes> Open(absl::Span<const uint8_t> record,
                                           const SealContext& context) = 0;
  // Re-wraps only the record's data key under the active KEK; the encrypted
  // secret is carried over unchanged and never decrypted. The data key is
  // authenticated under the old KEK first, with the same errors as Open.
  virtual absl::StatusOr<Sealed> Rewrap(absl::Span<const uint8_t> record,
                                        const SealContext& context) = 0;

  virtual KeyRef ActiveKek() const = 0;
  // New seals and rewraps use `kek` from now on (after rotation).
  virtual absl::Status SetActiveKek(const KeyRef& kek) = 0;
};

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_SEALER_H_
