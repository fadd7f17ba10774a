#include "common/ids.h"

#include <set>

#include "gtest/gtest.h"

namespace grantvault {
namespace {

TEST(IdsTest, GrantIdsHaveTheDocumentedShape) {
  std::string id = NewGrantId();
  ASSERT_EQ(id.size(), 3u + 26u);
  EXPECT_EQ(id.substr(0, 3), "gr_");
  for (char c : id.substr(3)) EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7')) << c;
}

TEST(IdsTest, IdsDoNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) EXPECT_TRUE(seen.insert(NewGrantId()).second);
}

TEST(IdsTest, Base32MatchesRfc4648Vectors) {
  auto b32 = [](std::string_view s) {
    return Base32(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  };
  EXPECT_EQ(b32(""), "");
  EXPECT_EQ(b32("f"), "my");
  EXPECT_EQ(b32("fo"), "mzxq");
  EXPECT_EQ(b32("foo"), "mzxw6");
  EXPECT_EQ(b32("foob"), "mzxw6yq");
  EXPECT_EQ(b32("fooba"), "mzxw6ytb");
  EXPECT_EQ(b32("foobar"), "mzxw6ytboi");
}

TEST(IdsTest, SecretTextIsBase32OfTheRequestedEntropy) {
  SecretBytes pin = NewSecretText(20);
  EXPECT_EQ(pin.size(), 32u);
}

TEST(IdsTest, HexIsLowerCase) {
  const uint8_t bytes[] = {0x00, 0xab, 0xff};
  EXPECT_EQ(Hex(bytes), "00abff");
}

}  // namespace
}  // namespace grantvault
