#include "hsm/sealed_record.h"

#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace grantvault::hsm {
namespace {

constexpr char kMagic[4] = {'G', 'V', 'S', 'R'};

class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> bytes) : bytes_(bytes) {}
  bool Take(size_t n, const uint8_t** out) {
    if (bytes_.size() - pos_ < n) return false;
    *out = bytes_.data() + pos_;
    pos_ += n;
    return true;
  }
  bool U8(uint8_t* v) {
    const uint8_t* p;
    if (!Take(1, &p)) return false;
    *v = *p;
    return true;
  }
  bool U32(uint32_t* v) {
    const uint8_t* p;
    if (!Take(4, &p)) return false;
    *v = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
    return true;
  }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  absl::Span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

absl::Status Malformed(std::string_view field) {
  return absl::DataLossError(absl::StrCat("sealed record is malformed: bad ", Sv(field)));
}

}  // namespace

std::vector<uint8_t> SealedRecord::Encode() const {
  // Sized once and filled through a cursor (vector::insert after reserve trips
  // a GCC 12 -Wstringop-overflow false positive).
  std::vector<uint8_t> out(4 + 1 + 1 + kek.label.size() + 1 + kek.id.size() + kHsmIvSize + 1 +
                           wrapped_key.size() + kNonceSize + 4 + ciphertext.size());
  uint8_t* p = out.data();
  auto put = [&p](const void* data, size_t n) {
    if (n > 0) std::memcpy(p, data, n);
    p += n;
  };
  auto put_u8 = [&p](size_t v) { *p++ = static_cast<uint8_t>(v); };
  put(kMagic, sizeof(kMagic));
  put_u8(version);
  put_u8(kek.label.size());
  put(kek.label.data(), kek.label.size());
  put_u8(kek.id.size());
  put(kek.id.data(), kek.id.size());
  put(hsm_iv.data(), hsm_iv.size());
  put_u8(wrapped_key.size());
  put(wrapped_key.data(), wrapped_key.size());
  put(nonce.data(), nonce.size());
  const auto n = static_cast<uint32_t>(ciphertext.size());
  for (int shift = 24; shift >= 0; shift -= 8) put_u8(n >> shift);
  put(ciphertext.data(), ciphertext.size());
  return out;
}

absl::StatusOr<SealedRecord> SealedRecord::Parse(absl::Span<const uint8_t> bytes) {
  Reader r(bytes);
  const uint8_t* p;
  if (!r.Take(4, &p) || std::memcmp(p, kMagic, 4) != 0) {
    return absl::InvalidArgumentError("not a grantvault sealed record (bad magic)");
  }
  SealedRecord rec;
  if (!r.U8(&rec.version)) return Malformed("version");
  if (rec.version != kSealedRecordVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("sealed record format version ", rec.version, " is not supported"));
  }
  uint8_t n8 = 0;
  if (!r.U8(&n8) || n8 == 0 || n8 > kMaxKeyLabelSize || !r.Take(n8, &p))
    return Malformed("KEK label");
  rec.kek.label.assign(reinterpret_cast<const char*>(p), n8);
  if (!r.U8(&n8) || n8 == 0 || n8 > kMaxKeyIdSize || !r.Take(n8, &p)) return Malformed("KEK id");
  rec.kek.id.assign(p, p + n8);
  if (!r.Take(kHsmIvSize, &p)) return Malformed("HSM IV");
  std::memcpy(rec.hsm_iv.data(), p, kHsmIvSize);
  if (!r.U8(&n8) || n8 != kWrappedKeySize || !r.Take(n8, &p)) return Malformed("wrapped data key");
  rec.wrapped_key.assign(p, p + n8);
  if (!r.Take(kNonceSize, &p)) return Malformed("nonce");
  std::memcpy(rec.nonce.data(), p, kNonceSize);
  uint32_t n32 = 0;
  if (!r.U32(&n32) || n32 <= kAeadTagSize || n32 > kMaxSealedSecretSize + kAeadTagSize ||
      !r.Take(n32, &p)) {
    return Malformed("ciphertext");
  }
  rec.ciphertext.assign(p, p + n32);
  if (!r.done()) return Malformed("length (trailing bytes)");
  return rec;
}

}  // namespace grantvault::hsm
