#include "common/secret_bytes.h"

#include <openssl/crypto.h>
#include <sodium.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

namespace grantvault {
namespace {

// Secrets up to this size live in OpenSSL's secure heap (one mlock()ed,
// MADV_DONTDUMP arena between guard pages, zeroed on free); larger ones, and
// any that do not fit, get libsodium guarded pages of their own.
constexpr size_t kMaxHeapSecret = 4096;
constexpr size_t kMinHeapBlock = 32;
constexpr size_t kDefaultHeapSize = size_t{4} << 20;

std::atomic<size_t> requested_heap_size{kDefaultHeapSize};
std::atomic<size_t> heap_size{0};  // set once, when the heap is created
std::atomic<int> heap_state{0};  // CRYPTO_secure_malloc_init's answer: 0 none, 1 locked, 2 unlocked

[[noreturn]] void Die(const char* what) {
  std::fputs(what, stderr);
  std::fputc('\n', stderr);
  std::abort();
}

void InitializeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) Die("grantvault: libsodium failed to initialise");
    heap_state = CRYPTO_secure_malloc_init(requested_heap_size.load(), kMinHeapBlock);
    if (heap_state.load() != 0) heap_size = requested_heap_size.load();
  });
}

uint8_t* Allocate(size_t size) {
  InitializeOnce();
  if (size <= kMaxHeapSecret && heap_state.load() != 0) {
    if (void* p = CRYPTO_secure_zalloc(size, OPENSSL_FILE, OPENSSL_LINE)) {
      return static_cast<uint8_t*>(p);
    }
  }
  void* p = sodium_malloc(size);
  if (p == nullptr) Die("grantvault: guarded allocation for a secret failed");
  sodium_memzero(p, size);
  return static_cast<uint8_t*>(p);
}

void Release(uint8_t* p, size_t size) {
  if (CRYPTO_secure_allocated(p)) {
    CRYPTO_secure_clear_free(p, size, OPENSSL_FILE, OPENSSL_LINE);
  } else {
    sodium_free(p);  // zeroes the region, then unmaps it with its guard pages
  }
}

}  // namespace

void EnsureSodiumInitialized() { InitializeOnce(); }

void WipeMemory(void* data, size_t size) {
  if (data != nullptr && size > 0) sodium_memzero(data, size);
}

void WipeString(std::string& s) {
  WipeMemory(s.data(), s.capacity());
  s.clear();
}

bool ConfigureSecretHeap(size_t bytes) {
  if (bytes == 0 || (bytes & (bytes - 1)) != 0) return false;
  requested_heap_size = bytes;
  InitializeOnce();
  return heap_size.load() == bytes;
}

SecretHeapInfo GetSecretHeapInfo() {
  InitializeOnce();
  SecretHeapInfo info;
  info.available = heap_state.load() != 0;
  info.locked = heap_state.load() == 1;
  info.size = heap_size.load();
  info.used = info.available ? CRYPTO_secure_used() : 0;
  return info;
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
  return SecretBytes(Allocate(size), size);
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

void SecretBytes::Truncate(size_t size) {
  if (size >= size_) return;
  sodium_memzero(data_ + size, size_ - size);
  size_ = size;
  if (size_ == 0) Clear();
}

void SecretBytes::Clear() {
  if (data_ != nullptr) Release(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace grantvault
