// TokenCache: the access tokens grantvault holds, in SecretBytes, keyed by
// grant id, each with the time it expires (absl::InfiniteFuture for a
// long-lived token). Thread-safe; values are handed out as deliberate copies.
#ifndef GRANTVAULT_TOKENS_TOKEN_CACHE_H_
#define GRANTVAULT_TOKENS_TOKEN_CACHE_H_

#include <map>
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

  AccessToken Clone() const { return AccessToken{token.Clone(), token_type, expires_at}; }
};

class TokenCache {
 public:
  // `clock` must outlive the cache.
  explicit TokenCache(Clock* clock) : clock_(clock) {}
  TokenCache(const TokenCache&) = delete;
  TokenCache& operator=(const TokenCache&) = delete;

  // A copy of the grant's token when it is still valid for at least
  // `min_valid` from now; nullopt otherwise (an expired entry is dropped).
  std::optional<AccessToken> Get(std::string_view grant_id, absl::Duration min_valid);
  void Put(std::string_view grant_id, AccessToken token);
  void Erase(std::string_view grant_id);
  size_t size() const;

 private:
  Clock* const clock_;
  mutable absl::Mutex mu_;
  std::map<std::string, AccessToken, std::less<>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grantvault::tokens

#endif  // GRANTVAULT_TOKENS_TOKEN_CACHE_H_
