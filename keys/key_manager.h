// Key lifecycle: the KEK versions in the token and the store, kept in step.
//
//   rotate   generate KEK n+1 in the token, record it, make it the active key
//            for new seals (the sealer switches at once);
//   rewrap   move every sealed secret's data key from older KEKs to the active
//            one, online and in batches; each batch commits on its own with a
//            compare-and-swap per record, so a crash at any moment leaves every
//            record openable and a second run carries on where the first
//            stopped;
//   retire   refuse while any record names KEK n, otherwise mark it retired in
//            the store (after which the store refuses records under it) and
//            destroy it in the token.
//
// Thread-safe; one lifecycle operation at a time per KeyManager (rotate,
// rewrap and retire serialise on an internal mutex; seals and opens do not
// wait on it).
#ifndef GRANTVAULT_KEYS_KEY_MANAGER_H_
#define GRANTVAULT_KEYS_KEY_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "hsm/keys.h"
#include "hsm/sealer.h"
#include "hsm/token.h"
#include "store/grant_store.h"

namespace grantvault::keys {

inline constexpr char kAuditKeyLabel[] = "grantvault-audit-1";

struct KeyStatus {
  store::KeyVersion version;
  int64_t sealed_records = 0;  // records whose data key this KEK wraps
  bool in_token = false;       // the token still holds the key
};

struct RewrapProgress {
  int64_t done = 0;       // records moved to the active KEK so far
  int64_t remaining = 0;  // records still under older KEKs (at the last count)
};

struct RewrapResult {
  int64_t rewrapped = 0;
  // Records that changed under us (e.g. a refresh rotated the secret): they
  // were sealed afresh by that writer, under the active KEK.
  int64_t changed_meanwhile = 0;
  // Records that could not be rewrapped (they do not authenticate, or their
  // KEK is gone). They are left untouched and listed here, never skipped
  // silently; retire stays refused while they exist.
  struct Failure {
    store::SealedSecretKey key;
    std::string kek_label;
    std::string reason;
  };
  std::vector<Failure> failures;
};

class KeyManager {
 public:
  // `token`, `store`, `sealer` and `clock` must outlive the manager.
  static absl::StatusOr<std::unique_ptr<KeyManager>> Create(hsm::Token* token,
                                                            store::GrantStore* store, Clock* clock);

  // The active KEK recorded in the store, checked to exist in the token.
  // FailedPrecondition when the store has no active key (not bootstrapped).
  absl::StatusOr<hsm::KeyRef> ActiveKek();

  // First start: generates KEK 1 (active) and the audit signing key if the
  // store has no key versions; otherwise does nothing. Returns what it made.
  absl::StatusOr<std::vector<std::string>> Bootstrap();

  // Creates KEK n+1 (n = the highest version in the store or the token) and
  // makes it active. `sealer`, when given, switches to it before this returns.
  absl::StatusOr<store::KeyVersion> Rotate(hsm::Sealer* sealer);

  // Re-wraps, in batches of `batch_size`, every record under a KEK other than
  // the sealer's active one. `progress` (optional) is called after each batch.
  absl::StatusOr<RewrapResult> Rewrap(hsm::Sealer& sealer, size_t batch_size,
                                      const std::function<void(const RewrapProgress&)>& progress);

  // Retires KEK `version`: FailedPrecondition while it is active or any record
  // names it. Destroys the key in the token after the store has recorded it
  // retired (a crash in between leaves a retired key in the token, which a
  // second retire call destroys).
  absl::Status Retire(int version);

  // Every key version with its record count and presence in the token.
  absl::StatusOr<std::vector<KeyStatus>> Status();

 private:
  KeyManager(hsm::Token* token, store::GrantStore* store, Clock* clock)
      : token_(token), store_(store), clock_(clock) {}
  absl::StatusOr<hsm::KeyRef> TokenKeyFor(const store::KeyVersion& version);

  hsm::Token* const token_;
  store::GrantStore* const store_;
  Clock* const clock_;
  absl::Mutex lifecycle_mu_;  // serialises Bootstrap/Rotate/Rewrap/Retire
};

// Parses a CKA_ID stored as hex in the store.
absl::StatusOr<std::vector<uint8_t>> KeyIdFromHex(const std::string& hex);

}  // namespace grantvault::keys

#endif  // GRANTVAULT_KEYS_KEY_MANAGER_H_
