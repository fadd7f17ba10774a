// The bridge between a stored sealed secret and the sealer: the SealContext a
// store::SealedSecret was sealed for (its binding is part of the record's
// AAD), so that opening or rewrapping it names exactly that binding. Header
// only; the store never learns of the sealer, nor the sealer of the store.
#ifndef GRANTVAULT_KEYS_SEALED_CONTEXT_H_
#define GRANTVAULT_KEYS_SEALED_CONTEXT_H_

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "hsm/sealer.h"
#include "store/grant_store.h"

namespace grantvault::keys {

// Views into `secret`, which must outlive the returned context.
inline hsm::SealContext SealContextOf(const store::SealedSecret& secret) {
  return hsm::SealContext{secret.workspace_id, secret.connector_id, secret.account_id,
                          secret.key.owner_id, secret.key.purpose};
}

inline absl::StatusOr<SecretBytes> OpenSealed(hsm::Sealer& sealer,
                                              const store::SealedSecret& secret) {
  return sealer.Open(secret.record, SealContextOf(secret));
}

}  // namespace grantvault::keys

#endif  // GRANTVAULT_KEYS_SEALED_CONTEXT_H_
