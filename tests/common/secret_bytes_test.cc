#include "common/secret_bytes.h"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace grantvault {
namespace {

// Compile-time proof that a secret cannot be printed, formatted or copied by
// accident.
template <typename T>
concept Streamable = requires(std::ostream& os, const T& t) {
  os << t;
};
template <typename T>
concept StrCatable = requires(const T& t) {
  absl::StrCat(t);
};
static_assert(!Streamable<SecretBytes>);
static_assert(!StrCatable<SecretBytes>);
static_assert(!std::is_copy_constructible_v<SecretBytes>);
static_assert(!std::is_copy_assignable_v<SecretBytes>);
static_assert(std::is_nothrow_move_constructible_v<SecretBytes>);

// Whether `n` bytes at `p` can be read by this process, asked of the kernel so
// that an unmapped page is reported instead of crashing the test.
bool Readable(const void* p, size_t n, std::string* contents) {
  int fds[2];
  if (::pipe(fds) != 0) return false;
  ssize_t w = ::write(fds[1], p, n);
  bool ok = w == static_cast<ssize_t>(n);
  if (ok) {
    contents->resize(n);
    ok = ::read(fds[0], contents->data(), n) == static_cast<ssize_t>(n);
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return ok;
}

TEST(SecretBytesTest, CopyOfHoldsTheBytes) {
  SecretBytes s = SecretBytes::CopyOf(std::string_view("refresh-token-value"));
  EXPECT_EQ(s.size(), 19u);
  EXPECT_EQ(s.view(), "refresh-token-value");
}

// Whether any 8-byte window of `needle` appears in `haystack`.
bool SharesAWindow(const std::string& haystack, const std::string& needle) {
  for (size_t i = 0; i + 8 <= needle.size(); ++i) {
    if (haystack.find(needle.substr(i, 8)) != std::string::npos) return true;
  }
  return false;
}

// Frees a secret of `size` bytes and checks that none of it is left at its
// old address: the memory is either unmapped or wiped (the heap allocator may
// keep its free-list links in the first bytes of a freed block).
void ExpectNothingLeftAfterFree(size_t size) {
  std::string secret;
  while (secret.size() < size)
    secret += "1//0gSECRET-refresh-token-" + std::to_string(secret.size());
  secret.resize(size);
  const uint8_t* where = nullptr;
  {
    SecretBytes s = SecretBytes::CopyOf(std::string_view(secret));
    where = s.data();
    std::string seen;
    ASSERT_TRUE(Readable(where, secret.size(), &seen));
    ASSERT_EQ(seen, secret);
  }
  std::string after;
  if (Readable(where, secret.size(), &after)) {
    EXPECT_FALSE(SharesAWindow(after, secret)) << "secret bytes survived the free";
  } else {
    SUCCEED() << "freed secret's pages are unmapped";
  }
}

TEST(SecretBytesTest, FreedSmallSecretLeavesNoBytesBehind) { ExpectNothingLeftAfterFree(64); }

TEST(SecretBytesTest, FreedLargeSecretLeavesNoBytesBehind) { ExpectNothingLeftAfterFree(10000); }

// The VmFlags of the mapping that holds `p`, from /proc/self/smaps.
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > 8) {
      inside = addr >= lo && addr < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(SecretBytesTest, SecretMemoryIsLockedAndKeptOutOfCoreDumps) {
  for (size_t size : {size_t{32}, size_t{10000}}) {
    SecretBytes s = SecretBytes::Random(size);
    std::string flags = VmFlagsOf(s.data());
    ASSERT_FALSE(flags.empty()) << size;
    EXPECT_NE(flags.find(" dd"), std::string::npos) << "not excluded from core dumps: " << flags;
#ifdef __SANITIZE_ADDRESS__
    // AddressSanitizer turns mlock() into a no-op (libsodium's path); OpenSSL
    // locks its heap with the mlock2 system call, which it does not intercept.
    const bool can_lock = size <= 4096 && GetSecretHeapInfo().locked;
#else
    const bool can_lock = size > 4096 || GetSecretHeapInfo().locked;
#endif
    if (can_lock) {
      EXPECT_NE(flags.find(" lo"), std::string::npos) << "not locked: " << flags;
    }
  }
}

TEST(SecretBytesTest, SmallSecretsShareTheSecureHeap) {
  SecretHeapInfo before = GetSecretHeapInfo();
  ASSERT_TRUE(before.available);
  std::vector<SecretBytes> many;
  for (int i = 0; i < 1000; ++i) many.push_back(SecretBytes::Random(200));
  EXPECT_GE(GetSecretHeapInfo().used, before.used + 1000 * 200);
  many.clear();
  EXPECT_EQ(GetSecretHeapInfo().used, before.used);
}

TEST(SecretBytesTest, ClearWipesAndEmpties) {
  SecretBytes s = SecretBytes::CopyOf(std::string_view("abc"));
  s.Clear();
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.data(), nullptr);
}

TEST(SecretBytesTest, TruncateWipesTheTailInPlace) {
  SecretBytes s = SecretBytes::CopyOf(std::string_view("keep-wipe"));
  uint8_t* p = s.data();
  s.Truncate(4);
  EXPECT_EQ(s.view(), "keep");
  EXPECT_EQ(s.data(), p);
  for (size_t i = 4; i < 9; ++i) EXPECT_EQ(p[i], 0) << i;
  s.Truncate(10);  // never grows
  EXPECT_EQ(s.size(), 4u);
  s.Truncate(0);
  EXPECT_TRUE(s.empty());
}

TEST(SecretBytesTest, TakeFromWipesTheSourceString) {
  std::string source = "a-long-access-token-that-is-not-in-sso-storage";
  const char* buffer = source.data();
  const size_t n = source.size();
  SecretBytes s = SecretBytes::TakeFrom(source);
  EXPECT_EQ(s.view(), "a-long-access-token-that-is-not-in-sso-storage");
  EXPECT_TRUE(source.empty());
  // The string keeps its buffer after clear(); every byte of it is zero.
  ASSERT_EQ(source.data(), buffer);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(buffer[i], '\0') << "byte " << i;
}

TEST(SecretBytesTest, WipeStringZeroesTheWholeBufferAndEmptiesIt) {
  std::string s = "a-long-access-token-that-is-not-in-sso-storage";
  s.resize(8);  // the bytes past size() still hold the token
  const char* buffer = s.data();
  const size_t capacity = s.capacity();
  WipeString(s);
  EXPECT_TRUE(s.empty());
  ASSERT_EQ(s.data(), buffer);
  for (size_t i = 0; i < capacity; ++i) EXPECT_EQ(buffer[i], '\0') << "byte " << i;
}

TEST(SecretBytesTest, MoveLeavesSourceEmpty) {
  SecretBytes a = SecretBytes::Random(32);
  const uint8_t* p = a.data();
  SecretBytes b = std::move(a);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): checking the contract
  EXPECT_EQ(b.data(), p);
  SecretBytes c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
}

TEST(SecretBytesTest, CloneIsADeliberateIndependentCopy) {
  SecretBytes a = SecretBytes::Random(32);
  SecretBytes b = a.Clone();
  EXPECT_NE(a.data(), b.data());
  EXPECT_TRUE(a == b);
  b.data()[0] ^= 1;
  EXPECT_FALSE(a == b);
}

TEST(SecretBytesTest, ConstantTimeEqualityComparesContentsAndLength) {
  EXPECT_TRUE(SecretBytes::CopyOf(std::string_view("x")) ==
              SecretBytes::CopyOf(std::string_view("x")));
  EXPECT_FALSE(SecretBytes::CopyOf(std::string_view("x")) ==
               SecretBytes::CopyOf(std::string_view("y")));
  EXPECT_FALSE(SecretBytes::CopyOf(std::string_view("x")) ==
               SecretBytes::CopyOf(std::string_view("xx")));
  EXPECT_TRUE(SecretBytes() == SecretBytes());
}

TEST(SecretBytesTest, RandomSecretsDiffer) {
  EXPECT_FALSE(SecretBytes::Random(32) == SecretBytes::Random(32));
}

TEST(SecretBytesDeathTest, ReadingPastALargeSecretHitsTheGuardPage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Large secrets get pages of their own, right before a PROT_NONE page.
  SecretBytes s = SecretBytes::Random(8192);
  const volatile uint8_t* p = s.data();
  EXPECT_DEATH({ [[maybe_unused]] uint8_t x = p[s.size() + 64]; }, "");
}

}  // namespace
}  // namespace grantvault
