// Refresher: answers "an access token for grant G, valid for at least D" from
// the cache, or by one refresh-token grant (RFC 6749 §6) per grant however
// many callers ask at once (single flight). See docs/refresh.md.
//
// Contract:
//  - A rotated refresh token is sealed and committed to the store (compare-
//    and-swap on the record that was sent) before any caller sees the access
//    token that came with it. A refresh token that has been sent is never
//    sent again by this process once its successor is known: a seal or store
//    failure is retried with backoff, and a rotated token that still could
//    not be stored is kept in secret memory and committed before anything
//    else refreshes its grant.
//  - A cached token answers a caller's min_valid by ServesMinValid
//    (token_cache.h): a token just minted answers any min_valid, so callers
//    asking more than the provider's lifetime cause one refresh per half
//    lifetime, not one per call.
//  - Refreshes run on the Refresher's own worker threads; callers only wait
//    for them, each until its own deadline. A request that has been sent is
//    never cut short by a caller's deadline (only by request_timeout), so a
//    rotated token is not lost because a caller gave up.
//  - `invalid_grant` marks the grant reauth_required (with a reason) and
//    answers FailedPrecondition "REAUTH_REQUIRED: …"; a revoked grant
//    answers FailedPrecondition "REVOKED: …".
//  - 5xx, 429 and transport failures are retried with jittered backoff inside
//    the callers' deadlines (Retry-After honoured); meanwhile, and after, a
//    cached token that is still valid (even for less than `min_valid`) is
//    served; otherwise Unavailable "… retry_after_ms=N".
//  - Refresh ahead: a cached token inside its connector's margin before
//    expiry is still answered at once, and one background refresh is started.
//  - A circuit breaker per connector opens after
//    `breaker_failure_threshold` consecutive upstream failures; while open
//    nothing is sent to that connector's token endpoint.
//  - Revoke(grant) erases the cached token and releases every caller waiting
//    for that grant with "REVOKED: …" at once; a refresh that completes later
//    is neither served nor cached (its rotated token is still stored). The
//    store is read only on a cache miss.
//  - A grant whose connector issues no refresh token holds a sealed
//    "access_token": it is answered as long-lived (or until the grant's
//    recorded expiry). Every sealed secret of a grant, that one too, must be
//    bound to the grant's own id, workspace, connector and account
//    (DataLoss otherwise).
//  - Never logs; no error message holds a token or secret.
// Clocks: token expiry, refresh-ahead and the breaker's cool-down use
// deps.clock; callers' deadlines, request timeouts and backoff sleeps are
// real time (absl::Now()).
// Thread-safe. Every dependency must outlive the Refresher; no call may be in
// progress when it is destroyed (the destructor waits for requests already
// sent, at most request_timeout).
#ifndef GRANTVAULT_TOKENS_REFRESHER_H_
#define GRANTVAULT_TOKENS_REFRESHER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "hsm/sealer.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"
#include "store/grant_store.h"
#include "tokens/token_cache.h"
#include "tokens/token_source.h"

namespace grantvault::tokens {

// The reason recorded on a grant whose refresh was refused with invalid_grant
// while an earlier attempt's outcome was never recorded (a crash or a lost
// response between the server rotating the token and our commit).
inline constexpr char kCrashWindowReason[] =
    "refresh token rotated but not recorded (crash window)";

struct RefresherDeps {
  store::GrantStore* store = nullptr;
  hsm::Sealer* sealer = nullptr;
  oauth::HttpClient* http = nullptr;
  oauth::ConnectorResolver* connectors = nullptr;
  Clock* clock = nullptr;
  // Called once a grant has been marked reauth_required (after the store
  // committed it), on the refreshing thread; may be empty. For the audit log
  // and the grant-event stream.
  std::function<void(std::string_view grant_id, std::string_view reason)> on_reauth_required;
  // Called when the disk did not confirm a refresh's writes (they were
  // committed, and answered, unsynced: docs/refresh.md, "Durability"), on the
  // refreshing thread; may be empty. For the log.
  std::function<void(std::string_view grant_id, const absl::Status& error)> on_sync_failed;
};

struct RefresherOptions {
  // Retries of one refresh after a 5xx, 429 or transport failure.
  int max_attempts = 4;
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  // The most one token-endpoint request may take.
  absl::Duration request_timeout = absl::Seconds(20);

  // Refresh ahead of expiry: a cached token with less than its margin left is
  // still answered, and one background refresh is started. The margin is
  // `refresh_ahead_by_connector[connector id]` (else [connector type], else
  // `refresh_ahead`), scaled by a random factor in [1 - jitter, 1 + jitter]
  // drawn once per token, and at most half the token's lifetime. A zero
  // margin turns it off.
  absl::Duration refresh_ahead = absl::Seconds(60);
  double refresh_ahead_jitter = 0.2;
  std::map<std::string, absl::Duration, std::less<>> refresh_ahead_by_connector;

  // Circuit breaker per connector id: open after this many consecutive
  // upstream failures (5xx, 429, no answer, a malformed answer; never a
  // definite refusal such as invalid_grant), for `breaker_cooldown` or the
  // server's Retry-After if longer; then one probe request is let through.
  int breaker_failure_threshold = 5;
  absl::Duration breaker_cooldown = absl::Seconds(30);

  // Worker threads (grants refreshed at once); more grants wait their turn.
  int max_concurrent_refreshes = 16;
};

class Refresher : public TokenSource {
 public:
  static absl::StatusOr<std::unique_ptr<Refresher>> Create(const RefresherDeps& deps,
                                                           RefresherOptions options = {});

  ~Refresher() override;
  Refresher(const Refresher&) = delete;
  Refresher& operator=(const Refresher&) = delete;

  absl::StatusOr<SharedAccessToken> GetAccessToken(std::string_view grant_id,
                                                   absl::Duration min_valid,
                                                   absl::Time deadline) override;
  // At most one renewal per grant per kMinRenewInterval; within it, the
  // cached token is served as GetAccessToken would.
  absl::StatusOr<SharedAccessToken> Renew(std::string_view grant_id, const AccessToken& rejected,
                                          absl::Duration min_valid, absl::Time deadline) override;
  static constexpr absl::Duration kMinRenewInterval = absl::Seconds(30);

  // The cache-hit half of GetAccessToken, which never waits: the cached token
  // when it stays valid for `min_valid` (starting a refresh ahead in the
  // background when one is due), nullopt otherwise. A revoked grant's token
  // is never cached, so a hit is a token of a grant not revoked here.
  std::optional<TokenCache::Lookup> GetCached(std::string_view grant_id,
                                              absl::Duration min_valid) override;
  // TokenCache::generation() of the cache: changes when any cached token is
  // replaced (a refresh) or dropped (a revocation, a reauth_required).
  uint64_t cache_generation() const override { return cache_.generation(); }

  // The revoke path calls this (after or before marking the grant revoked in
  // the store): the cached token is erased, every caller waiting for the
  // grant returns FailedPrecondition "REVOKED: grant <id> is revoked:
  // <reason>" at once, a refresh still in flight is neither served nor cached
  // nor recorded, and later calls answer the same without reading the store.
  // Final for the life of the Refresher.
  void Revoke(std::string_view grant_id, std::string reason) override;
  // Drops the grant's cached token, so that the next call reads the store
  // (e.g. after its status was changed elsewhere).
  void Forget(std::string_view grant_id) override;

  // Whether the grant's newest refresh token is held in memory only: the
  // server rotated it, and sealing or committing it kept failing for longer
  // than the worker's retries (request_timeout). The next flight for the
  // grant commits it before anything else.
  bool HoldsUnstoredRefreshToken(std::string_view grant_id) const;

  // Whether a refresh of the grant is being run right now (its request may
  // still bring back a rotated refresh token, which is then committed), or a
  // rotated token is kept unstored (HoldsUnstoredRefreshToken; a flight to
  // store it is then started). The upstream revoker waits for it, so that it
  // revokes the newest token.
  bool Refreshing(std::string_view grant_id);

  // Every connector's circuit breaker seen so far, ordered by connector id.
  std::vector<BreakerState> Breakers() const override;

  // Number of refresh-token requests sent upstream (for tests and metrics).
  int64_t upstream_requests() const;
  TokenCache& cache() { return cache_; }

 private:
  // One refresh of one grant, run by a worker; callers wait for it. Fields are
  // guarded by the Refresher's mu_.
  struct Flight {
    explicit Flight(std::string_view id, absl::Time first_deadline)
        : grant_id(id), deadline(first_deadline) {}
    bool Finished() const { return done || abandoned; }

    const std::string grant_id;
    absl::Time deadline;  // the latest deadline of anyone waiting: no new attempt after it
    absl::Duration retry_after = absl::ZeroDuration();  // the longest wait upstream asked for
    bool done = false;
    bool abandoned = false;  // revoked, or the Refresher is shutting down
    std::string revoke_reason;
    bool revoked = false;
    // Where several hosts share the store (GrantStore::SharedAcrossHosts): the
    // most min_valid anyone waiting asked for, and when the token this flight
    // replaces was obtained (InfinitePast: none). A token another host
    // obtained later that serves min_valid is used instead of refreshing.
    absl::Duration min_valid = absl::ZeroDuration();
    absl::Time replaces_obtained_at = absl::InfinitePast();
    absl::StatusOr<SharedAccessToken> result = absl::UnknownError("pending");
    // The refreshing worker's alone: the refresh committed writes unsynced,
    // which the worker syncs once it has answered.
    bool unsynced = false;
  };
  struct Refreshed {
    AccessToken token;
    absl::Time refresh_at = absl::InfiniteFuture();  // refresh ahead from then on
  };
  // A rotated refresh token the store has not taken yet, with what came with it.
  struct PendingRotation {
    store::SealedSecret sent_row;  // the row whose token was sent (binding, expected record)
    SecretBytes sent_token;        // to tell a rewrap of it from another rotation
    SecretBytes rotated_token;
    Refreshed refreshed;  // the access token, answered once the rotated token is stored
  };
  enum class CommitOutcome { kCommitted, kRotatedElsewhere };
  struct Breaker {
    BreakerPhase phase = BreakerPhase::kClosed;
    int consecutive_failures = 0;
    absl::Time open_until = absl::InfinitePast();
    bool probe_in_flight = false;
    std::string last_failure;
  };

  Refresher(const RefresherDeps& deps, RefresherOptions options)
      : deps_(deps), options_(std::move(options)), cache_(deps.clock) {}

  // Creates the grant's flight and queues it for a worker.
  // GetAccessToken, where the caller's token obtained at `replaces` (an API
  // refused it) must not come back from another host.
  absl::StatusOr<SharedAccessToken> GetReplacing(std::string_view grant_id,
                                                 absl::Duration min_valid, absl::Time deadline,
                                                 absl::Time replaces);
  std::shared_ptr<Flight> StartFlightLocked(std::string_view grant_id, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartRefreshAhead(std::string_view grant_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Starts a flight that stores the grant's kept rotated token, unless one runs.
  void StartStoringPendingLocked(std::string_view grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  // Publishes a flight's outcome (caching a token unless the grant was revoked).
  void FinishLocked(Flight& flight, absl::StatusOr<Refreshed> outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkRevokedLocked(std::string_view grant_id, std::string reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // One refresh for the flight's grant, on a worker thread.
  absl::StatusOr<Refreshed> Refresh(Flight& flight) ABSL_LOCKS_EXCLUDED(mu_);
  bool Abandoned(const Flight& flight) const ABSL_LOCKS_EXCLUDED(mu_);
  bool IsRevoked(std::string_view grant_id) const ABSL_LOCKS_EXCLUDED(mu_);
  absl::Time FlightDeadline(const Flight& flight) const ABSL_LOCKS_EXCLUDED(mu_);
  void NoteRetryAfter(Flight& flight, absl::Duration wait) ABSL_LOCKS_EXCLUDED(mu_);
  // Unavailable "UNAVAILABLE: grant <id>: <what>; retry_after_ms=N".
  absl::Status UnavailableFor(const Flight& flight, std::string_view what) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sleeps `wait` unless the flight is abandoned first (then false).
  bool BackOff(const Flight& flight, absl::Duration wait) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Time RefreshAheadAt(const store::Grant& grant, absl::Time now, absl::Duration lifetime,
                            absl::BitGen& random) const;

  // The connector's breaker: OK when a request may be sent now (with
  // `take_probe`, a half-open breaker's one probe is taken by this request);
  // otherwise Unavailable, and `retry_after` says when to ask again.
  absl::Status AdmitUpstream(const std::string& connector_id, bool take_probe,
                             absl::Duration* retry_after) ABSL_LOCKS_EXCLUDED(mu_);
  void RecordUpstream(const std::string& connector_id, bool failed, std::string what,
                      absl::Duration server_wait) ABSL_LOCKS_EXCLUDED(mu_);

  // Seals `rotated` for `sent_row`'s binding and replaces the row if it still
  // holds `sent_token` (compare-and-swap; a rewrap of it is followed). An
  // error is a seal or store failure: nothing was recorded.
  // With `finish`, the first swap also removes the crash-window marker and
  // records the access token's expiry in the same transaction
  // (GrantStore::FinishRefresh), and `*finished` says whether it did.
  struct Finish {  // committed unsynced (store::Sync::kLater)
    absl::Time access_expires_at;
    absl::Time now;
  };
  absl::StatusOr<CommitOutcome> CommitRotation(const store::SealedSecret& sent_row,
                                               const SecretBytes& sent_token,
                                               const SecretBytes& rotated,
                                               const Finish* finish = nullptr,
                                               bool* finished = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  // CommitRotation retried with jittered backoff for request_timeout (or
  // until shutdown), however long anyone waits for it.
  absl::StatusOr<CommitOutcome> CommitWithBackoff(const store::SealedSecret& sent_row,
                                                  const SecretBytes& sent_token,
                                                  const SecretBytes& rotated,
                                                  const Finish* finish = nullptr,
                                                  bool* finished = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::optional<PendingRotation> TakePendingRotation(std::string_view grant_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  void KeepPendingRotation(std::string_view grant_id, PendingRotation pending)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Sleeps `wait` unless the Refresher is shutting down first (then false).
  bool WaitUnlessStopping(absl::Duration wait) ABSL_LOCKS_EXCLUDED(mu_);

  // Several hosts: the access token another host's refresh left in the store,
  // when it is newer than the one the flight replaces and serves its
  // min_valid; and this host's, stored for the others (best effort: a host
  // that cannot read it refreshes, under the same lock).
  std::optional<Refreshed> TakeSharedToken(const Flight& flight, const store::Grant& grant,
                                           absl::BitGen& random) ABSL_LOCKS_EXCLUDED(mu_);
  void ShareToken(const store::Grant& grant, const AccessToken& token) ABSL_LOCKS_EXCLUDED(mu_);

  // Falls back to a still-valid cached token when `status` is Unavailable.
  absl::StatusOr<SharedAccessToken> ServeStaleOr(std::string_view grant_id, absl::Status status);

  const RefresherDeps deps_;
  const RefresherOptions options_;
  TokenCache cache_;

  mutable absl::Mutex mu_;  // order: mu_ before the cache's mutex
  std::map<std::string, std::shared_ptr<Flight>, std::less<>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string, std::less<>> revoked_ ABSL_GUARDED_BY(mu_);  // → reason
  // When Renew last dropped each grant's token (at most one per
  // kMinRenewInterval: an API that refuses every token cannot make the
  // front refresh without end).
  std::map<std::string, absl::Time, std::less<>> renewed_at_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Breaker, std::less<>> breakers_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Flight>> queue_ ABSL_GUARDED_BY(mu_);
  // Grants whose refresh a worker is running now (even after a revocation
  // abandoned its callers: the request may still bring a rotated token).
  std::multiset<std::string, std::less<>> running_ ABSL_GUARDED_BY(mu_);
  // Rotated refresh tokens not stored yet (PendingRotation), by grant id.
  std::map<std::string, PendingRotation, std::less<>> pending_rotations_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  size_t idle_workers_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t upstream_requests_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grantvault::tokens

#endif  // GRANTVAULT_TOKENS_REFRESHER_H_
