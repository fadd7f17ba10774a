// Refresher: answers "an access token for grant G, valid for at least D" from
// the cache, or by one refresh-token grant (RFC 6749 §6) per grant however
// many callers ask at once (single flight). See docs/refresh.md.
//
// Contract:
//  - A rotated refresh token is sealed and committed to the store (compare-
//    and-swap on the record that was sent) before any caller sees the access
//    token that came with it. A refresh token that has been sent is never
//    sent again by this process once its successor is known.
//  - `invalid_grant` marks the grant reauth_required (with a reason) and
//    answers FailedPrecondition "REAUTH_REQUIRED: …"; a revoked grant
//    answers FailedPrecondition "REVOKED: …".
//  - 5xx, 429 and transport failures are retried with jittered backoff inside
//    the caller's deadline; meanwhile, and after, a cached token that is still
//    valid (even for less than `min_valid`) is served; otherwise Unavailable
//    "… retry_after_ms=N".
//  - A grant whose connector issues no refresh token holds a sealed
//    "access_token": it is answered as long-lived (or until the grant's
//    recorded expiry).
//  - Never logs; no error message holds a token or secret.
// Thread-safe. Every dependency must outlive the Refresher.
#ifndef GRANTVAULT_TOKENS_REFRESHER_H_
#define GRANTVAULT_TOKENS_REFRESHER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "hsm/sealer.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"
#include "store/grant_store.h"
#include "tokens/token_cache.h"

namespace grantvault::tokens {

// The reason recorded on a grant whose refresh was refused with invalid_grant
// while an earlier attempt's outcome was never recorded (a crash or a lost
// response between the server rotating the token and our commit).
inline constexpr char kCrashWindowReason[] =
    "refresh token rotated but not recorded (crash window)";
// The sealed-secret purpose of the marker written before a refresh is sent and
// removed once its outcome is known.
inline constexpr char kRefreshAttemptPurpose[] = "refresh_attempt";

struct RefresherDeps {
  store::GrantStore* store = nullptr;
  hsm::Sealer* sealer = nullptr;
  oauth::HttpClient* http = nullptr;
  oauth::ConnectorResolver* connectors = nullptr;
  Clock* clock = nullptr;
};

struct RefresherOptions {
  // Retries of one refresh after a 5xx, 429 or transport failure.
  int max_attempts = 4;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  // The most one token-endpoint request may take.
  absl::Duration request_timeout = absl::Seconds(20);
};

class Refresher {
 public:
  static absl::StatusOr<std::unique_ptr<Refresher>> Create(const RefresherDeps& deps,
                                                           RefresherOptions options = {});

  absl::StatusOr<AccessToken> GetAccessToken(std::string_view grant_id, absl::Duration min_valid,
                                             absl::Time deadline);

  // Number of refresh-token requests sent upstream (for tests and metrics).
  int64_t upstream_requests() const;
  TokenCache& cache() { return cache_; }

 private:
  struct Flight {
    bool done = false;
    absl::StatusOr<AccessToken> result = absl::UnknownError("pending");
  };

  Refresher(const RefresherDeps& deps, RefresherOptions options)
      : deps_(deps), options_(options), cache_(deps.clock) {}

  // One refresh for `grant_id` (the caller is the flight's leader).
  absl::StatusOr<AccessToken> Refresh(const std::string& grant_id, absl::Time deadline);
  // Falls back to a still-valid cached token when `status` is Unavailable.
  absl::StatusOr<AccessToken> ServeStaleOr(std::string_view grant_id, absl::Status status);

  const RefresherDeps deps_;
  const RefresherOptions options_;
  TokenCache cache_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Flight>, std::less<>> in_flight_ ABSL_GUARDED_BY(mu_);
  int64_t upstream_requests_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grantvault::tokens

#endif  // GRANTVAULT_TOKENS_REFRESHER_H_
