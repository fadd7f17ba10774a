// Identifiers and random text drawn from the operating system's CSPRNG.
#ifndef GRANTVAULT_COMMON_IDS_H_
#define GRANTVAULT_COMMON_IDS_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/types/span.h"
#include "common/secret_bytes.h"

namespace grantvault {

// Lower-case RFC 4648 base32 without padding (a-z, 2-7): case-insensitive,
// URL- and file-name-safe.
std::string Base32(absl::Span<const uint8_t> bytes);

// `prefix` + 26 base32 characters encoding 128 random bits, e.g. "gr_…".
std::string NewId(std::string_view prefix);
inline std::string NewGrantId() { return NewId("gr_"); }

// A random secret of `random_bytes` bytes of entropy, as base32 text (for PINs
// and similar secrets that must be typeable).
SecretBytes NewSecretText(size_t random_bytes);

// Lower-case hexadecimal.
std::string Hex(absl::Span<const uint8_t> bytes);

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_IDS_H_
