// SecretBytes: the one type that holds secret material in memory (refresh and
// access tokens, data keys, PINs, client secrets, PKCE verifiers).
//
// Contract:
//  - Storage is locked in memory (kept out of swap where RLIMIT_MEMLOCK
//    allows), excluded from core dumps, and zeroed when the object dies.
//    Secrets up to 4 KiB come from OpenSSL's secure heap: one arena, mlock()ed
//    and MADV_DONTDUMP, between guard pages; this keeps a hundred thousand
//    cached tokens cheap (no mapping per secret, no system call per
//    allocation). Larger secrets, or any once the arena is full, come from
//    libsodium's guarded allocator: their own pages, followed by a guard page,
//    unmapped on free.
//  - Move-only. A copy is made only on purpose, with Clone().
//  - Equality is constant-time in the contents (lengths are not secret).
//  - Cannot be streamed, StrCat'ed or formatted: there is no operator<< and no
//    AbslStringify, so logging a secret by accident does not compile.
//  - Not thread-safe for mutation; const access from several threads is fine.
#ifndef GRANTVAULT_COMMON_SECRET_BYTES_H_
#define GRANTVAULT_COMMON_SECRET_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

#include "absl/types/span.h"

namespace grantvault {

class SecretBytes {
 public:
  SecretBytes() = default;
  ~SecretBytes();

  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  // `size` zero bytes in guarded memory. Aborts if the allocator fails: a
  // secret that cannot be stored safely is not stored unsafely instead.
  static SecretBytes Zeroed(size_t size);
  // `size` bytes from the operating system's CSPRNG.
  static SecretBytes Random(size_t size);
  // Copies `bytes` into guarded memory. The caller still owns (and should wipe)
  // the source.
  static SecretBytes CopyOf(absl::Span<const uint8_t> bytes);
  static SecretBytes CopyOf(std::string_view bytes);
  // Moves a secret out of an ordinary std::string (e.g. a protobuf field or a
  // parsed HTTP body): copies it, then zeroes and clears the source.
  static SecretBytes TakeFrom(std::string& source);

  // An explicit, deliberate copy.
  SecretBytes Clone() const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  absl::Span<const uint8_t> span() const { return {data_, size_}; }
  // A view for handing the secret to an API that takes text (an HTTP body, a
  // PKCS#11 PIN). The view dies with this object; never store it.
  std::string_view view() const { return {reinterpret_cast<const char*>(data_), size_}; }

  // Constant-time comparison of the contents.
  bool ConstantTimeEquals(const SecretBytes& other) const;
  friend bool operator==(const SecretBytes& a, const SecretBytes& b) {
    return a.ConstantTimeEquals(b);
  }

  // Wipes and releases the storage now; the object is empty afterwards.
  void Clear();
  // Keeps the first `size` bytes (no larger than size()) and wipes the rest,
  // without reallocating.
  void Truncate(size_t size);

 private:
  SecretBytes(uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Deliberately not printable.
std::ostream& operator<<(std::ostream&, const SecretBytes&) = delete;
template <typename Sink>
void AbslStringify(Sink&, const SecretBytes&) = delete;

// Zeroes `size` bytes at `data` in a way the compiler cannot drop: for memory
// outside a SecretBytes that held secret bytes in passing (a socket buffer, a
// serialised frame).
void WipeMemory(void* data, size_t size);

// Zeroes the whole of a string's storage (its capacity, not only its size: a
// shorter assignment leaves older bytes behind) and empties it.
void WipeString(std::string& s);

// Initialises libsodium and the secret heap once per process; aborts if
// libsodium cannot start (no CSPRNG).
void EnsureSodiumInitialized();

// Sets the size of the secret heap (a power of two). Effective only before the
// first secret is allocated; returns whether the heap now has that size.
bool ConfigureSecretHeap(size_t bytes);

struct SecretHeapInfo {
  bool available = false;  // the arena exists (else every secret is page-guarded)
  bool locked = false;     // mlock() succeeded (RLIMIT_MEMLOCK was large enough)
  size_t size = 0;
  size_t used = 0;
};
SecretHeapInfo GetSecretHeapInfo();

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_SECRET_BYTES_H_
