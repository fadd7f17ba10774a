// Small application data kept inside the token as PKCS#11 data objects
// (CKO_DATA): token objects (they persist), private (readable only after
// login, so only by whoever holds the PIN), modifiable, with CKA_APPLICATION
// "grantvault". For values that must not live beside the files they vouch for
// (e.g. the audit log's anchors, audit/anchor.h).
#ifndef GRANTVAULT_HSM_DATA_OBJECT_H_
#define GRANTVAULT_HSM_DATA_OBJECT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hsm/token.h"

namespace grantvault::hsm {

inline constexpr char kDataObjectApplication[] = "grantvault";

// The value of the data object labelled `label`; nullopt when the token holds
// none. FailedPrecondition when it holds several (someone with the PIN added
// one: which is meant cannot be told).
absl::StatusOr<std::optional<std::vector<uint8_t>>> ReadDataObject(Token& token,
                                                                   const std::string& label);

// Sets the value of the data object labelled `label`, creating it when the
// token holds none (FailedPrecondition when it holds several). Where the
// token keeps the value read-only (SoftHSM2), the object is destroyed and
// created again. Not atomic across a crash: the object may be left torn or
// missing, so callers that cannot lose the value keep two objects written
// alternately, with a generation (audit/anchor.cc).
absl::Status WriteDataObject(Token& token, const std::string& label,
                             absl::Span<const uint8_t> value);

// Destroys every data object labelled `label`; OK when there is none.
absl::Status DestroyDataObject(Token& token, const std::string& label);

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_DATA_OBJECT_H_
