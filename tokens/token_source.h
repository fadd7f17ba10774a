// TokenSource: where the daemon's resolves get access tokens. In the broker
// process it is the Refresher itself (tokens/refresher.h); in the front
// process it is a cache in front of the broker (front/broker_tokens.h), so
// that a cached resolve never leaves the front and the front never holds a
// refresh token. The contract of each call is the Refresher's.
#ifndef GRANTVAULT_TOKENS_TOKEN_SOURCE_H_
#define GRANTVAULT_TOKENS_TOKEN_SOURCE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tokens/token_cache.h"

namespace grantvault::tokens {

enum class BreakerPhase {
  kClosed,    // requests go upstream
  kOpen,      // nothing is sent until `open_until`
  kHalfOpen,  // the next request (one) is a probe; its outcome closes or reopens
};
std::string_view BreakerPhaseName(BreakerPhase phase);  // "closed", "open", "half_open"

// One connector's circuit breaker, for status output.
struct BreakerState {
  std::string connector_id;
  BreakerPhase phase = BreakerPhase::kClosed;
  int consecutive_failures = 0;
  absl::Time open_until = absl::InfinitePast();  // kOpen: when a probe may go
  std::string last_failure;                      // e.g. "HTTP 503"; never holds a token or secret
};

// Thread-safe.
class TokenSource {
 public:
  virtual ~TokenSource() = default;

  // An access token for the grant valid for `min_valid` (ServesMinValid),
  // waiting for one refresh at most until `deadline`.
  virtual absl::StatusOr<SharedAccessToken> GetAccessToken(std::string_view grant_id,
                                                           absl::Duration min_valid,
                                                           absl::Time deadline) = 0;
  // The API the token is for refused `rejected` (HTTP 401): unless a newer
  // token replaced it already, it is dropped and one refresh, shared by every
  // caller that reports it, gets another. Otherwise as GetAccessToken.
  virtual absl::StatusOr<SharedAccessToken> Renew(std::string_view grant_id,
                                                  const AccessToken& rejected,
                                                  absl::Duration min_valid,
                                                  absl::Time deadline) = 0;
  // The cache-hit half, which never waits (starting a refresh ahead in the
  // background when one is due).
  virtual std::optional<TokenCache::Lookup> GetCached(std::string_view grant_id,
                                                      absl::Duration min_valid) = 0;
  // Changes whenever a cached token is replaced or dropped.
  virtual uint64_t cache_generation() const = 0;
  // The grant was revoked: its token is dropped, its waiters fail REVOKED,
  // and nothing serves it any more. Final.
  virtual void Revoke(std::string_view grant_id, std::string reason) = 0;
  // Drops the grant's cached token (its status changed elsewhere).
  virtual void Forget(std::string_view grant_id) = 0;
  // Every connector's circuit breaker seen so far, ordered by connector id.
  virtual std::vector<BreakerState> Breakers() const = 0;
};

}  // namespace grantvault::tokens

#endif  // GRANTVAULT_TOKENS_TOKEN_SOURCE_H_
