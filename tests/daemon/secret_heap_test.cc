// The default secret heap ([limits] secret_heap_mib) holds 100,000 cached
// access tokens of the shapes the catalog's providers issue, every one of
// them in the locked arena (none falls back to a guarded mapping of its own,
// which would run into vm.max_map_count long before 100,000).
//
// Each test runs in a process of its own under ctest; run alone, the heap is
// sized before anything else allocates a secret.
#include <openssl/crypto.h>

#include <iostream>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "daemon/config.h"
#include "gtest/gtest.h"
#include "tokens/token_cache.h"

namespace grantvault {
namespace {

constexpr int kCachedTokens = 100'000;

// A token length drawn from the catalog's providers: short opaque tokens
// (GitHub, Slack, Linear, Notion, Zendesk, Intercom: 40–72 bytes), longer
// opaque ones (Google, Salesforce, HubSpot: 100–260) and JWTs (Microsoft
// Graph, Atlassian: 1,200–2,400), 30/50/20.
size_t TokenLength(std::mt19937& random) {
  const int kind = std::uniform_int_distribution<int>(0, 9)(random);
  if (kind < 3) return std::uniform_int_distribution<size_t>(40, 72)(random);
  if (kind < 8) return std::uniform_int_distribution<size_t>(100, 260)(random);
  return std::uniform_int_distribution<size_t>(1200, 2400)(random);
}

TEST(SecretHeapTest, AHundredThousandCachedTokensFitTheDefaultHeapLocked) {
  const size_t heap_bytes = daemon::DaemonConfig{}.secret_heap_mib << 20;
  if (!ConfigureSecretHeap(heap_bytes)) {
    GTEST_SKIP() << "the secret heap was made before this test (run it alone, as ctest does)";
  }
  ManualClock clock;
  tokens::TokenCache cache(&clock);
  std::mt19937 random(20261202);
  size_t token_bytes = 0;
  int outside_heap = 0;
  for (int i = 0; i < kCachedTokens; ++i) {
    tokens::AccessToken token;
    token.token = SecretBytes::Random(TokenLength(random));
    token_bytes += token.token.size();
    if (CRYPTO_secure_allocated(token.token.data()) == 0) ++outside_heap;
    token.expires_at = clock.Now() + absl::Hours(1);
    token.obtained_at = clock.Now();
    cache.Put(absl::StrCat("gr_", i), std::move(token));
  }
  ASSERT_EQ(cache.size(), static_cast<size_t>(kCachedTokens));
  const SecretHeapInfo heap = GetSecretHeapInfo();
  std::cout << kCachedTokens << " cached tokens, " << (token_bytes >> 20) << " MiB of token bytes, "
            << (heap.used >> 20) << " MiB of the " << (heap.size >> 20)
            << " MiB secret heap used; locked: " << (heap.locked ? "yes" : "no") << "\n";
  RecordProperty("heap_used_mib", static_cast<int>(heap.used >> 20));
  EXPECT_EQ(outside_heap, 0) << "tokens that did not fit the secret heap";
  // Room left for each connection's encoded answers and repeat memos.
  EXPECT_LT(heap.used, heap.size * 3 / 4);
}

}  // namespace
}  // namespace grantvault
