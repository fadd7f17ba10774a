#include "common/ids.h"

#include <sodium.h>

#include <array>

namespace grantvault {
namespace {

constexpr char kBase32Alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

size_t Base32Length(size_t bytes) { return (bytes * 8 + 4) / 5; }

// Writes the base32 encoding of `bytes` to `out`, which has Base32Length() room.
void Base32Into(absl::Span<const uint8_t> bytes, char* out) {
  uint32_t buffer = 0;
  int bits = 0;
  size_t o = 0;
  for (uint8_t b : bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out[o++] = kBase32Alphabet[(buffer >> (bits - 5)) & 0x1f];
      bits -= 5;
    }
  }
  if (bits > 0) out[o++] = kBase32Alphabet[(buffer << (5 - bits)) & 0x1f];
}

}  // namespace

std::string Base32(absl::Span<const uint8_t> bytes) {
  std::string out(Base32Length(bytes.size()), '\0');
  Base32Into(bytes, out.data());
  return out;
}

std::string NewId(std::string_view prefix) {
  EnsureSodiumInitialized();
  std::array<uint8_t, 16> raw;
  randombytes_buf(raw.data(), raw.size());
  return std::string(prefix) + Base32(raw);
}

SecretBytes NewSecretText(size_t random_bytes) {
  SecretBytes raw = SecretBytes::Random(random_bytes);
  SecretBytes text = SecretBytes::Zeroed(Base32Length(random_bytes));
  Base32Into(raw.span(), reinterpret_cast<char*>(text.data()));
  return text;
}

std::string Hex(absl::Span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

}  // namespace grantvault
