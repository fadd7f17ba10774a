#include "common/secret_bytes.h"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ostream>
#include <string>
#include <type_traits>

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

TEST(SecretBytesTest, FreedSecretLeavesNoBytesBehind) {
  const std::string secret = "1//0gSECRET-refresh-token-for-the-free-test";
  const uint8_t* where = nullptr;
  {
    SecretBytes s = SecretBytes::CopyOf(std::string_view(secret));
    where = s.data();
    std::string seen;
    ASSERT_TRUE(Readable(where, secret.size(), &seen));
    ASSERT_EQ(seen, secret);
  }
  // After destruction the region is either unmapped (the usual case: the
  // guarded allocation is returned to the kernel) or, if the address was
  // reused, holds something else: never the secret.
  std::string after;
  if (Readable(where, secret.size(), &after)) {
    EXPECT_NE(after, secret);
  } else {
    SUCCEED() << "freed secret's pages are unmapped";
  }
}

TEST(SecretBytesTest, ClearWipesAndEmpties) {
  SecretBytes s = SecretBytes::CopyOf(std::string_view("abc"));
  s.Clear();
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.data(), nullptr);
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

TEST(SecretBytesDeathTest, ReadingPastTheEndHitsTheGuardPage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  SecretBytes s = SecretBytes::Random(32);
  const volatile uint8_t* p = s.data();
  // sodium_malloc places the bytes right before a PROT_NONE page (rounded up
  // to the 16-byte alignment of the allocation).
  EXPECT_DEATH({ [[maybe_unused]] uint8_t x = p[s.size() + 64]; }, "");
}

}  // namespace
}  // namespace grantvault
