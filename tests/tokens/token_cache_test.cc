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
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->token.view(), "tok-a");
  EXPECT_FALSE(cache.Get("gr_a", absl::Seconds(61)) != nullptr);
  EXPECT_FALSE(cache.Get("gr_b", absl::ZeroDuration()) != nullptr);
  clock.Advance(absl::Seconds(60));
  EXPECT_FALSE(cache.Get("gr_a", absl::ZeroDuration()) != nullptr);
  EXPECT_EQ(cache.size(), 0u);  // an expired entry is dropped
}

TEST(TokenCacheTest, PutReplacesAndEraseRemoves) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Token("one", absl::InfiniteFuture()));
  cache.Put("gr_a", Token("two", absl::InfiniteFuture()));
  auto hit = cache.Get("gr_a", absl::Hours(1000));
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->token.view(), "two");
  cache.Erase("gr_a");
  EXPECT_FALSE(cache.Get("gr_a", absl::ZeroDuration()) != nullptr);
}

TEST(TokenCacheTest, EveryStoredTokenHasItsOwnSerialAndCopiesKeepIt) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Token("one", absl::InfiniteFuture()));
  SharedAccessToken first = cache.Get("gr_a", absl::ZeroDuration());
  ASSERT_NE(first, nullptr);
  EXPECT_NE(first->serial, 0u);
  EXPECT_EQ(cache.Get("gr_a", absl::ZeroDuration())->serial, first->serial);
  EXPECT_EQ(first->Clone().serial, first->serial);
  cache.Put("gr_a", Token("two", absl::InfiniteFuture()));
  EXPECT_NE(cache.Get("gr_a", absl::ZeroDuration())->serial, first->serial);
  // A serial given before the token is stored is kept (the refresher gives
  // the cached copy and the waiters' copy the same one).
  AccessToken named = Token("three", absl::InfiniteFuture());
  named.serial = NewTokenSerial();
  const uint64_t serial = named.serial;
  cache.Put("gr_b", std::move(named));
  EXPECT_EQ(cache.Get("gr_b", absl::ZeroDuration())->serial, serial);
}

TEST(TokenCacheTest, AHitSharesTheCachedTokenAndOutlivesItsEntry) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Token("tok-a", absl::InfiniteFuture()));
  SharedAccessToken first = cache.Get("gr_a", absl::ZeroDuration());
  SharedAccessToken second = cache.Get("gr_a", absl::ZeroDuration());
  ASSERT_NE(first, nullptr);
  // One copy of the bytes however many callers hold the token.
  EXPECT_EQ(first.get(), second.get());
  EXPECT_EQ(first->token.data(), second->token.data());
  // Erased (revoked) or replaced, the token stays intact for whoever still holds it.
  cache.Erase("gr_a");
  EXPECT_EQ(first->token.view(), "tok-a");
  cache.Put("gr_a", Token("tok-b", absl::InfiniteFuture()));
  EXPECT_EQ(first->token.view(), "tok-a");
  EXPECT_EQ(cache.Get("gr_a", absl::ZeroDuration())->token.view(), "tok-b");
}

TEST(TokenCacheTest, TheGenerationGrowsWithEveryPutAndEraseOnly) {
  ManualClock clock;
  TokenCache cache(&clock);
  const uint64_t empty = cache.generation();
  cache.Put("gr_a", Token("one", absl::InfiniteFuture()));
  const uint64_t one = cache.generation();
  EXPECT_GT(one, empty);
  // Lookups, hits or misses, and claims change nothing.
  ASSERT_NE(cache.Get("gr_a", absl::ZeroDuration()), nullptr);
  EXPECT_EQ(cache.Get("gr_b", absl::ZeroDuration()), nullptr);
  ASSERT_TRUE(cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1)));
  EXPECT_EQ(cache.generation(), one);
  cache.Put("gr_a", Token("two", absl::InfiniteFuture()));  // a refresh
  const uint64_t two = cache.generation();
  EXPECT_GT(two, one);
  cache.Erase("gr_a");  // a revocation
  EXPECT_GT(cache.generation(), two);
}

TEST(TokenCacheTest, ARefreshAheadIsClaimedByOneCallerAtATime) {
  ManualClock clock;
  TokenCache cache(&clock);
  const absl::Time expires = clock.Now() + absl::Seconds(100);
  cache.Put("gr_a", Token("tok-a", expires), /*refresh_at=*/expires - absl::Seconds(40));
  auto early = cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1));
  ASSERT_TRUE(early.has_value());
  EXPECT_FALSE(early->refresh_claimed);
  EXPECT_EQ(early->refresh_at, expires - absl::Seconds(40));

  clock.Advance(absl::Seconds(60));  // due, 40 s left
  auto claimed = cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1));
  ASSERT_TRUE(claimed.has_value());
  EXPECT_TRUE(claimed->refresh_claimed);
  EXPECT_EQ(claimed->refresh_at, clock.Now() + absl::Seconds(10));  // the lookup says when next
  EXPECT_EQ(claimed->token->token.view(), "tok-a");
  // Everyone else is served without the claim, until a quarter of the remaining life passed.
  for (int i = 0; i < 5; ++i) {
    auto other = cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1));
    ASSERT_TRUE(other.has_value());
    EXPECT_FALSE(other->refresh_claimed);
  }
  clock.Advance(absl::Seconds(9));
  EXPECT_FALSE(
      cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1))->refresh_claimed);
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(
      cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1))->refresh_claimed);
  // min_valid still applies, and Get never claims.
  EXPECT_FALSE(cache.GetClaimingRefresh("gr_a", absl::Seconds(31), absl::Seconds(1)).has_value());
  // A Put replaces the entry and its refresh time; the plain Put never asks for a refresh.
  cache.Put("gr_a", Token("tok-b", clock.Now() + absl::Seconds(10)));
  auto replaced = cache.GetClaimingRefresh("gr_a", absl::ZeroDuration(), absl::Seconds(1));
  ASSERT_TRUE(replaced.has_value());
  EXPECT_EQ(replaced->token->token.view(), "tok-b");
  EXPECT_FALSE(replaced->refresh_claimed);
}

// A token fresh from the provider: issued now, living `lifetime`.
AccessToken Minted(std::string_view value, absl::Time now, absl::Duration lifetime) {
  AccessToken token = Token(value, now + lifetime);
  token.obtained_at = now;
  return token;
}

TEST(TokenCacheTest, AJustMintedTokenServesAnyMinValidWithItsRealExpiry) {
  ManualClock clock;
  TokenCache cache(&clock);
  const absl::Time expires = clock.Now() + absl::Seconds(8);
  cache.Put("gr_a", Minted("tok-8s", clock.Now(), absl::Seconds(8)));
  // No token of this provider can live 30 s or 10 min: the fresh one is the best there is.
  for (absl::Duration asked : {absl::Seconds(30), absl::Minutes(10), absl::Hours(24)}) {
    auto hit = cache.Get("gr_a", asked);
    ASSERT_NE(hit, nullptr) << asked;
    EXPECT_EQ(hit->token.view(), "tok-8s");
    EXPECT_EQ(hit->expires_at, expires);  // never stretched
  }
  ASSERT_TRUE(cache.GetClaimingRefresh("gr_a", absl::Seconds(30), absl::Seconds(1)).has_value());
}

TEST(TokenCacheTest, AskingMoreThanATokenLivesIsServedForHalfItsLifetime) {
  ManualClock clock;
  TokenCache cache(&clock);
  // A provider issuing 5-minute tokens and callers asking 10 minutes.
  cache.Put("gr_a", Minted("tok-5m", clock.Now(), absl::Minutes(5)));
  clock.Advance(absl::Seconds(150));  // exactly half left
  EXPECT_NE(cache.Get("gr_a", absl::Minutes(10)), nullptr);
  clock.Advance(absl::Seconds(1));  // less than half left: a refresh can give more
  EXPECT_EQ(cache.Get("gr_a", absl::Minutes(10)), nullptr);
  // What the token can still give is asked the ordinary way.
  EXPECT_NE(cache.Get("gr_a", absl::Seconds(149)), nullptr);
  EXPECT_EQ(cache.Get("gr_a", absl::Seconds(150)), nullptr);
}

TEST(TokenCacheTest, ATinyLifetimeIsServedForAtLeastTheMinimumRefreshInterval) {
  ManualClock clock;
  TokenCache cache(&clock);
  cache.Put("gr_a", Minted("tok-1500ms", clock.Now(), absl::Milliseconds(1500)));
  clock.Advance(kMinRefreshInterval - absl::Milliseconds(1));  // past half its life
  EXPECT_NE(cache.Get("gr_a", absl::Seconds(30)), nullptr);
  clock.Advance(absl::Milliseconds(1));
  EXPECT_EQ(cache.Get("gr_a", absl::Seconds(30)), nullptr);
  clock.Advance(absl::Milliseconds(500));  // expired: never served, whatever is asked
  EXPECT_EQ(cache.Get("gr_a", absl::ZeroDuration()), nullptr);
}

TEST(TokenCacheTest, ATokenOfUnknownLifetimeIsServedOnlyForWhatItStillHolds) {
  ManualClock clock;
  TokenCache cache(&clock);
  // obtained_at unknown (a long-lived token with a recorded expiry): the strict rule.
  cache.Put("gr_a", Token("tok-a", clock.Now() + absl::Seconds(8)));
  EXPECT_EQ(cache.Get("gr_a", absl::Seconds(30)), nullptr);
  EXPECT_NE(cache.Get("gr_a", absl::Seconds(8)), nullptr);
}

TEST(TokenCacheTest, ValidForIsTheStricterRule) {
  // What a caller remembering only the expiry answers (ValidFor) the cache answers too.
  const absl::Time now = absl::FromUnixSeconds(1'000'000);
  for (int age : {0, 1, 3, 4, 5, 7}) {
    AccessToken token = Minted("t", now - absl::Seconds(age), absl::Seconds(8));
    for (int asked : {0, 1, 2, 4, 7, 8, 30}) {
      if (ValidFor(token.expires_at, now, absl::Seconds(asked))) {
        EXPECT_TRUE(ServesMinValid(token, now, absl::Seconds(asked))) << age << " " << asked;
      }
    }
  }
}

}  // namespace
}  // namespace grantvault::tokens
