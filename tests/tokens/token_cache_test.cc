#include "tokens/token_cache.h"

#include "gtest/gtest.h"

namespace grantvault::tokens {
namespace {

AccessToken Token(std::string_view value, absl::Time expires_at) {
  return AccessToken{SecretBytes::CopyOf(value), "Bearer", expires_at};
}

TEST(TokenCacheTest, AnswersOnlyWhileValidForTheAskedMargin) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Token("tok-a", clock.Now() + absl::Seconds(60)));
  auto hit = cache.Get("gr_a", absl::Seconds(30));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->token.view(), "tok-a");
  EXPECT_FALSE(cache.Get("gr_a", absl::Seconds(61)).has_value());
  EXPECT_FALSE(cache.Get("gr_b", absl::ZeroDuration()).has_value());
  clock.Advance(absl::Seconds(60));
  EXPECT_FALSE(cache.Get("gr_a", absl::ZeroDuration()).has_value());
  EXPECT_EQ(cache.size(), 0u);  // an expired entry is dropped
}

TEST(TokenCacheTest, PutReplacesAndEraseRemoves) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Token("one", absl::InfiniteFuture()));
  cache.Put("gr_a", Token("two", absl::InfiniteFuture()));
  auto hit = cache.Get("gr_a", absl::Hours(1000));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->token.view(), "two");
  cache.Erase("gr_a");
  EXPECT_FALSE(cache.Get("gr_a", absl::ZeroDuration()).has_value());
}

}  // namespace
}  // namespace grantvault::tokens
