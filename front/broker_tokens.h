// BrokerTokens: the front's TokenSource. Its own cache answers every resolve
// it can (a cached resolve never crosses to the broker); a miss asks the
// broker once per grant however many resolves wait (single flight), and the
// broker's Refresher does the refresh. A revoked grant is refused here at
// once, whatever the broker says, and stays refused.
//
// Thread-safe.
#ifndef GRANTVAULT_FRONT_BROKER_TOKENS_H_
#define GRANTVAULT_FRONT_BROKER_TOKENS_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "front/broker_calls.h"
#include "tokens/token_source.h"

namespace grantvault::front {

class BrokerTokens final : public tokens::TokenSource {
 public:
  // `clock` must outlive it. A flight's call waits at most `call_timeout`
  // (a refresh's own timeout and retries, plus the hop).
  BrokerTokens(BrokerLinkSource links, Clock* clock, absl::Duration call_timeout)
      : links_(std::move(links)), clock_(clock), call_timeout_(call_timeout), cache_(clock) {}
  ~BrokerTokens() override;

  absl::StatusOr<tokens::SharedAccessToken> GetAccessToken(std::string_view grant_id,
                                                           absl::Duration min_valid,
                                                           absl::Time deadline) override;
  absl::StatusOr<tokens::SharedAccessToken> Renew(std::string_view grant_id,
                                                  const tokens::AccessToken& rejected,
                                                  absl::Duration min_valid,
                                                  absl::Time deadline) override;
  std::optional<tokens::TokenCache::Lookup> GetCached(std::string_view grant_id,
                                                      absl::Duration min_valid) override;
  uint64_t cache_generation() const override { return cache_.generation(); }
  void Revoke(std::string_view grant_id, std::string reason) override;
  void Forget(std::string_view grant_id) override;
  std::vector<tokens::BreakerState> Breakers() const override;

 private:
  struct Flight {
    bool done = false;
    absl::StatusOr<tokens::SharedAccessToken> result = absl::UnknownError("pending");
  };
  // Asks the broker for the grant's token (valid for `min_valid`), caching it;
  // with `rejected`, for one newer than that token (Renew). Callers of one
  // grant share one call.
  absl::StatusOr<tokens::SharedAccessToken> Fetch(const std::string& grant_id,
                                                  absl::Duration min_valid, absl::Time deadline,
                                                  const SecretBytes* rejected = nullptr);
  void StartRefreshAhead(std::string grant_id, absl::Duration min_valid);
  absl::Status RevokedError(std::string_view grant_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const BrokerLinkSource links_;
  Clock* const clock_;
  const absl::Duration call_timeout_;
  tokens::TokenCache cache_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Flight>, std::less<>> flights_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string, std::less<>> revoked_ ABSL_GUARDED_BY(mu_);  // → reason
  int background_ ABSL_GUARDED_BY(mu_) = 0;  // refreshes ahead running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_BROKER_TOKENS_H_
