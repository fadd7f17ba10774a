#include "common/secret_bytes.h"
#include <utility>

#include <sodium.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace grantvault {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fputs(what, stderr);
  std::fputc('\n', stderr);
  std::abort();
}

uint8_t* AllocateGuarded(size_t size) {
  EnsureSodiumInitialized();
  void* p = sodium_malloc(size);
  if (p == nullptr) Die("grantvault: guarded allocation for a secret failed");
  sodium_memzero(p, size);
  return static_cast<uint8_t*>(p);
}

}  // namespace

void EnsureSodiumInitialized() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) Die("grantvault: libsodium failed to initialise");
  });
}

SecretBytes::~SecretBytes() { Clear(); }

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SecretBytes SecretBytes::Zeroed(size_t size) {
  if (size == 0) return SecretBytes();
  return SecretBytes(AllocateGuarded(size), size);
}

SecretBytes SecretBytes::Random(size_t size) {
  SecretBytes s = Zeroed(size);
  if (size > 0) randombytes_buf(s.data_, size);
  return s;
}

SecretBytes SecretBytes::CopyOf(absl::Span<const uint8_t> bytes) {
  SecretBytes s = Zeroed(bytes.size());
  if (!bytes.empty()) std::memcpy(s.data_, bytes.data(), bytes.size());
  return s;
}

SecretBytes SecretBytes::CopyOf(std::string_view bytes) {
  return CopyOf(
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

SecretBytes SecretBytes::TakeFrom(std::string& source) {
  SecretBytes s = CopyOf(std::string_view(source));
  // Wipe the whole buffer, not only size(): a shorter assignment may have left
  // older secret bytes beyond the current size.
  sodium_memzero(source.data(), source.capacity());
  source.clear();
  return s;
}

SecretBytes SecretBytes::Clone() const { return CopyOf(span()); }

bool SecretBytes::ConstantTimeEquals(const SecretBytes& other) const {
  if (size_ != other.size_) return false;
  if (size_ == 0) return true;
  return sodium_memcmp(data_, other.data_, size_) == 0;
}

void SecretBytes::Clear() {
  if (data_ != nullptr) {
    // sodium_free zeroes the region before unmapping it.
    sodium_free(data_);
  }
  data_ = nullptr;
  size_ = 0;
}

}  // namespace grantvault
