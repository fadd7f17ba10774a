// TokenCache: the access tokens grantvault holds, in SecretBytes, keyed by
// grant id, each with the time it expires (absl::InfiniteFuture for a
// long-lived token) and the time a refresh ahead of that expiry becomes due.
// Thread-safe. A cached token is immutable and shared (SharedAccessToken):
// a hit hands out a reference, not a copy of the secret, so the token's
// bytes exist once however many callers hold it, and are wiped when the last
// holder lets go (after the cache has dropped or replaced it).
#ifndef GRANTVAULT_TOKENS_TOKEN_CACHE_H_
#define GRANTVAULT_TOKENS_TOKEN_CACHE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/secret_bytes.h"

namespace grantvault::tokens {

struct AccessToken {
  SecretBytes token;
  std::string token_type = "Bearer";
  absl::Time expires_at = absl::InfiniteFuture();
  // When the authorization server issued it (by the refresher's clock), so
  // that its lifetime is expires_at - obtained_at; InfinitePast when unknown
  // (a long-lived token read from the store).
  absl::Time obtained_at = absl::InfinitePast();
  // Names this token (not its value) within the process: NewTokenSerial(),
  // given by whoever obtained the token (TokenCache::Put gives one to a token
  // that has none); copies keep it. Lets callers recognise a token they saw
  // before without hashing it.
  uint64_t serial = 0;

  AccessToken Clone() const {
    return AccessToken{token.Clone(), token_type, expires_at, obtained_at, serial};
  }
};

// A token as the cache and the refresher hand it out: shared, never changed
// after it was made (so its serial keeps naming exactly these bytes).
using SharedAccessToken = std::shared_ptr<const AccessToken>;

// A serial no other token of this process has (never 0).
uint64_t NewTokenSerial();

// Strictly valid: not expired at `now`, and valid for at least `min_valid`
// more. Every token ValidFor a caller's min_valid is also ServesMinValid for
// it, so a caller that remembers only a token's expiry (front/repeat_memo.h)
// and applies this answers a subset of what the cache answers.
inline bool ValidFor(absl::Time expires_at, absl::Time now, absl::Duration min_valid) {
  return expires_at > now && expires_at - now >= min_valid;
}

// The least time between two refreshes of one grant that callers can cause by
// asking more than its tokens live (see ServesMinValid).
inline constexpr absl::Duration kMinRefreshInterval = absl::Seconds(1);

// The cache's one rule for a token it may answer a caller asking `min_valid`
// with (docs/refresh.md, "What min_valid can ask"): not expired, and either
// valid for `min_valid` more, or — when its lifetime is known — still holding
// at least half of it, or issued less than kMinRefreshInterval ago. No
// refresh can promise more than the provider's lifetime, so a caller asking
// more than a fresh token gives is answered with a token in the first half
// of its life (with its real expiry) instead of refreshing on every call: a
// token just minted serves any min_valid, and callers cause at most one
// refresh per grant per half token lifetime (at least kMinRefreshInterval).
inline bool ServesMinValid(const AccessToken& token, absl::Time now, absl::Duration min_valid) {
  if (ValidFor(token.expires_at, now, min_valid)) return true;
  if (token.expires_at <= now || token.obtained_at == absl::InfinitePast() ||
      token.expires_at == absl::InfiniteFuture()) {
    return false;
  }
  const absl::Duration lifetime = token.expires_at - token.obtained_at;
  return token.expires_at - now >= lifetime / 2 || now - token.obtained_at < kMinRefreshInterval;
}

class TokenCache {
 public:
  // `clock` must outlive the cache.
  explicit TokenCache(Clock* clock) : clock_(clock) {}
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;

  // The grant's token when it ServesMinValid(`min_valid`) now; null otherwise
  // (an expired entry is dropped).
  SharedAccessToken Get(std::string_view grant_id, absl::Duration min_valid);
  void Put(std::string_view grant_id, AccessToken token);
  // As Put; from `refresh_at` on, GetClaimingRefresh reports the refresh due.
  void Put(std::string_view grant_id, AccessToken token, absl::Time refresh_at);
  // As Put, sharing `token` (not null, with a serial) with whoever else holds it.
  void Put(std::string_view grant_id, SharedAccessToken token, absl::Time refresh_at);

  struct Lookup {
    SharedAccessToken token;  // never null
    // This caller claimed the entry's refresh ahead of expiry and should start it.
    bool refresh_claimed = false;
    // When the next refresh ahead falls due (after this lookup's claim, if any).
    absl::Time refresh_at = absl::InfiniteFuture();
  };
  // As Get; and when the entry's refresh time has come, exactly one caller is
  // told refresh_claimed, and the entry's refresh time moves on by a quarter
  // of its remaining life (at least `min_retry`), so that a refresh that fails
  // is claimed again later, not by every caller at once. A new Put resets it.
  std::optional<Lookup> GetClaimingRefresh(std::string_view grant_id, absl::Duration min_valid,
                                           absl::Duration min_retry);
  void Erase(std::string_view grant_id);
  // Erases the grant's token only if it is `token` (compared in constant
  // time): a token an API refused, unless a newer one replaced it already.
  // True when it erased it.
  bool EraseIfSame(std::string_view grant_id, const SecretBytes& token);
  size_t size() const;
  // Grows with every Put and Erase (read it before a lookup): a caller that
  // remembers an answer can tell that a token was replaced or removed since.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  Clock* const clock_;
  mutable absl::Mutex mu_;
  struct Entry {
    SharedAccessToken token;  // never null
    absl::Time refresh_at = absl::InfiniteFuture();
  };
  // The grant's entry when its token ServesMinValid(`min_valid`) at `now`;
  // null otherwise (an expired entry is dropped).
  Entry* ValidEntryLocked(std::string_view grant_id, absl::Time now, absl::Duration min_valid)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::map<std::string, Entry, std::less<>> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> generation_{0};  // bumped after each change of entries_
};

}  // namespace grantvault::tokens

#endif  // GRANTVAULT_TOKENS_TOKEN_CACHE_H_
