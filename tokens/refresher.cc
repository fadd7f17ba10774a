#include "tokens/refresher.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "keys/sealed_context.h"
#include "oauth/token_request.h"
#include "oauth/token_response.h"

namespace grantvault::tokens {
namespace {

constexpr char kRefreshTokenPurpose[] = "refresh_token";
constexpr char kAccessTokenPurpose[] = "access_token";
constexpr char kClientSecretPurpose[] = "client_secret";
// When a token response names no lifetime.
constexpr absl::Duration kDefaultAccessTokenLifetime = absl::Hours(1);
// How often a commit is retried when the stored record changed without the
// token changing (a KEK rewrap raced the refresh).
constexpr int kMaxCommitAttempts = 3;
// How often a refresh starts over after another writer rotated the token.
constexpr int kMaxRotationRounds = 3;
// How an answer names a rotated refresh token kept in memory until the store takes it.
constexpr char kNotStoredYet[] =
    "the rotated refresh token could not be stored yet (it is kept in memory and stored before "
    "the grant is refreshed again): ";
// The least time between two claims of one cached token's refresh ahead.
constexpr absl::Duration kMinRefreshAheadRetry = absl::Seconds(1);

// Retry-After (RFC 9110 §10.2.3) in delta-seconds; an HTTP date is not honoured.
std::optional<absl::Duration> RetryAfter(const oauth::HttpResponse& response) {
  std::optional<std::string> value = response.Header("Retry-After");
  int seconds = 0;
  if (!value || !absl::SimpleAtoi(*value, &seconds) || seconds < 0) return std::nullopt;
  return absl::Seconds(std::min(seconds, 3600));
}

int64_t CeilMillis(absl::Duration d) {
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

absl::Status RevokedError(std::string_view grant_id, std::string_view reason) {
  return absl::FailedPreconditionError(
      absl::StrCat("REVOKED: grant ", Sv(grant_id), " is revoked: ", Sv(reason)));
}

// The binding check every sealed secret of a grant passes before it is used:
// the HSM only proves that a record belongs to its own row's binding (the AAD);
// this proves that the row belongs to the grant being answered, so a row (or a
// grant) moved to another workspace, connector or account is refused.
absl::Status CheckBoundToGrant(const store::Grant& grant, const store::SealedSecret& secret) {
  if (secret.key.owner_id != grant.grant_id || secret.workspace_id != grant.workspace_id ||
      secret.connector_id != grant.connector_id || secret.account_id != grant.account_id) {
    return absl::DataLossError(absl::StrCat("the sealed ", secret.key.purpose, " of grant ",
                                            grant.grant_id,
                                            " is bound to another grant, workspace, connector or "
                                            "account"));
  }
  return absl::OkStatus();
}

// A shared access token's plaintext (GrantStore::kSharedAccessTokenPurpose):
// a version byte, when it was obtained and when it expires (Unix µs, 8 bytes
// big-endian each), the token type's length and the type, then the token.
constexpr uint8_t kSharedTokenVersion = 1;
constexpr size_t kSharedTokenHeader = 1 + 8 + 8 + 1;

void PutInt64(uint8_t* out, int64_t value) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(value & 0xff);
    value = static_cast<int64_t>(static_cast<uint64_t>(value) >> 8);
  }
}

int64_t GetInt64(const uint8_t* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | in[i];
  return static_cast<int64_t>(value);
}

SecretBytes EncodeSharedToken(const AccessToken& token) {
  const size_t type_size = std::min<size_t>(token.token_type.size(), 255);
  SecretBytes out = SecretBytes::Zeroed(kSharedTokenHeader + type_size + token.token.size());
  uint8_t* p = out.data();
  p[0] = kSharedTokenVersion;
  PutInt64(p + 1, absl::ToUnixMicros(token.obtained_at));
  PutInt64(p + 9, absl::ToUnixMicros(token.expires_at));
  p[17] = static_cast<uint8_t>(type_size);
  std::copy_n(token.token_type.data(), type_size, p + kSharedTokenHeader);
  std::copy_n(token.token.data(), token.token.size(), p + kSharedTokenHeader + type_size);
  return out;
}

std::optional<AccessToken> DecodeSharedToken(const SecretBytes& plain) {
  const uint8_t* p = plain.data();
  if (plain.size() < kSharedTokenHeader || p[0] != kSharedTokenVersion) return std::nullopt;
  const size_t type_size = p[17];
  if (plain.size() <= kSharedTokenHeader + type_size) return std::nullopt;  // no token
  AccessToken token;
  token.obtained_at = absl::FromUnixMicros(GetInt64(p + 1));
  token.expires_at = absl::FromUnixMicros(GetInt64(p + 9));
  token.token_type.assign(reinterpret_cast<const char*>(p + kSharedTokenHeader), type_size);
  token.token = SecretBytes::CopyOf(absl::Span<const uint8_t>(
      p + kSharedTokenHeader + type_size, plain.size() - kSharedTokenHeader - type_size));
  if (token.expires_at <= token.obtained_at) return std::nullopt;
  return token;
}

}  // namespace

std::string_view BreakerPhaseName(BreakerPhase phase) {
  switch (phase) {
    case BreakerPhase::kClosed:
      return "closed";
    case BreakerPhase::kOpen:
      return "open";
    case BreakerPhase::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Refresher>> Refresher::Create(const RefresherDeps& deps,
                                                             RefresherOptions options) {
  if (deps.store == nullptr || deps.sealer == nullptr || deps.http == nullptr ||
      deps.connectors == nullptr || deps.clock == nullptr) {
    return absl::InvalidArgumentError("Refresher needs every dependency");
  }
  if (options.max_attempts < 1 || options.initial_backoff <= absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff ||
      options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "Refresher options: max_attempts >= 1, 0 < initial_backoff <= max_backoff, "
        "request_timeout > 0");
  }
  bool margins_valid = options.refresh_ahead >= absl::ZeroDuration() &&
                       options.refresh_ahead_jitter >= 0 && options.refresh_ahead_jitter < 1;
  for (const auto& [connector, margin] : options.refresh_ahead_by_connector) {
    if (connector.empty() || margin < absl::ZeroDuration()) margins_valid = false;
  }
  if (!margins_valid) {
    return absl::InvalidArgumentError(
        "Refresher options: refresh_ahead margins >= 0 (named by a connector), "
        "0 <= refresh_ahead_jitter < 1");
  }
  if (options.breaker_failure_threshold < 1 || options.breaker_cooldown <= absl::ZeroDuration() ||
      options.max_concurrent_refreshes < 1) {
    return absl::InvalidArgumentError(
        "Refresher options: breaker_failure_threshold >= 1, breaker_cooldown > 0, "
        "max_concurrent_refreshes >= 1");
  }
  return std::unique_ptr<Refresher>(new Refresher(deps, std::move(options)));
}

Refresher::~Refresher() {
  std::vector<std::thread> workers;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [grant_id, flight] : in_flight_) flight->abandoned = true;
    for (const std::shared_ptr<Flight>& queued : queue_) {
      queued->result = absl::UnavailableError("UNAVAILABLE: the refresher is shutting down");
      queued->done = true;
      auto it = in_flight_.find(queued->grant_id);
      if (it != in_flight_.end() && it->second == queued) in_flight_.erase(it);
    }
    queue_.clear();
    workers.swap(workers_);
  }
  for (std::thread& worker : workers) worker.join();
}

int64_t Refresher::upstream_requests() const {
  absl::MutexLock lock(&mu_);
  return upstream_requests_;
}

absl::StatusOr<SharedAccessToken> Refresher::Renew(std::string_view grant_id,
                                                   const AccessToken& rejected,
                                                   absl::Duration min_valid, absl::Time deadline) {
  // Callers that report the same token while its refresh runs find the
  // cache empty and join that refresh's flight; later ones find its result.
  bool renew = false;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = deps_.clock->Now();
    auto it = renewed_at_.find(grant_id);
    renew = it == renewed_at_.end() || now - it->second >= kMinRenewInterval;
    if (renew && cache_.EraseIfSame(grant_id, rejected.token)) {
      renewed_at_.insert_or_assign(std::string(grant_id), now);
    }
  }
  return GetReplacing(grant_id, min_valid, deadline, rejected.obtained_at);
}

absl::StatusOr<SharedAccessToken> Refresher::GetAccessToken(std::string_view grant_id,
                                                            absl::Duration min_valid,
                                                            absl::Time deadline) {
  return GetReplacing(grant_id, min_valid, deadline, absl::InfinitePast());
}

absl::StatusOr<SharedAccessToken> Refresher::GetReplacing(std::string_view grant_id,
                                                          absl::Duration min_valid,
                                                          absl::Time deadline,
                                                          absl::Time replaces) {
  if (grant_id.empty()) return absl::InvalidArgumentError("a grant id is required");
  if (min_valid < absl::ZeroDuration()) min_valid = absl::ZeroDuration();
  if (std::optional<TokenCache::Lookup> hit = GetCached(grant_id, min_valid)) {
    return std::move(hit->token);
  }

  absl::StatusOr<SharedAccessToken> result = absl::UnknownError("unset");
  {
    absl::MutexLock lock(&mu_);
    if (auto revoked = revoked_.find(grant_id); revoked != revoked_.end()) {
      return RevokedError(grant_id, revoked->second);
    }
    std::shared_ptr<Flight> flight;
    if (auto it = in_flight_.find(grant_id); it != in_flight_.end()) {
      flight = it->second;
      flight->deadline = std::max(flight->deadline, deadline);
      flight->min_valid = std::max(flight->min_valid, min_valid);
      flight->replaces_obtained_at = std::max(flight->replaces_obtained_at, replaces);
    } else {
      // A flight may have finished (and cached its token) since the miss above.
      if (SharedAccessToken hit = cache_.Get(grant_id, min_valid)) return hit;
      if (stopping_) return absl::UnavailableError("UNAVAILABLE: the refresher is shutting down");
      const SharedAccessToken held = cache_.Get(grant_id, absl::ZeroDuration());
      flight = StartFlightLocked(grant_id, deadline);
      flight->min_valid = min_valid;
      flight->replaces_obtained_at = std::max(replaces, held ? held->obtained_at : replaces);
    }
    if (!mu_.AwaitWithDeadline(absl::Condition(flight.get(), &Flight::Finished), deadline)) {
      result = absl::UnavailableError(
          absl::StrCat("UNAVAILABLE: the caller's deadline passed while grant ", Sv(grant_id),
                       " was being refreshed; retry_after_ms=",
                       CeilMillis(std::max(options_.initial_backoff, flight->retry_after))));
    } else if (flight->revoked) {
      result = RevokedError(grant_id, flight->revoke_reason);
    } else if (!flight->done) {
      result = absl::UnavailableError("UNAVAILABLE: the refresher is shutting down");
    } else {
      result = flight->result;  // every waiter shares the one token
    }
  }
  if (!result.ok()) return ServeStaleOr(grant_id, result.status());
  return result;
}

std::optional<TokenCache::Lookup> Refresher::GetCached(std::string_view grant_id,
                                                       absl::Duration min_valid) {
  std::optional<TokenCache::Lookup> hit = cache_.GetClaimingRefresh(
      grant_id, std::max(min_valid, absl::ZeroDuration()), kMinRefreshAheadRetry);
  if (hit && hit->refresh_claimed) StartRefreshAhead(grant_id);
  return hit;
}

void Refresher::Revoke(std::string_view grant_id, std::string reason) {
  absl::MutexLock lock(&mu_);
  MarkRevokedLocked(grant_id, std::move(reason));
  // Revoking at the provider wants the current refresh token: a kept one is stored now.
  StartStoringPendingLocked(grant_id);
}

void Refresher::Forget(std::string_view grant_id) { cache_.Erase(grant_id); }

void Refresher::MarkRevokedLocked(std::string_view grant_id, std::string reason) {
  cache_.Erase(grant_id);
  if (auto it = in_flight_.find(grant_id); it != in_flight_.end()) {
    it->second->revoked = true;
    it->second->abandoned = true;
    it->second->revoke_reason = reason;
  }
  revoked_.insert_or_assign(std::string(grant_id), std::move(reason));
}

std::vector<BreakerState> Refresher::Breakers() const {
  const absl::Time now = deps_.clock->Now();
  std::vector<BreakerState> out;
  absl::MutexLock lock(&mu_);
  out.reserve(breakers_.size());
  for (const auto& [connector_id, breaker] : breakers_) {
    BreakerState state{connector_id, breaker.phase, breaker.consecutive_failures,
                       breaker.open_until, breaker.last_failure};
    if (state.phase == BreakerPhase::kOpen && now >= state.open_until) {
      state.phase = BreakerPhase::kHalfOpen;  // the next request is the probe
    }
    out.push_back(std::move(state));
  }
  return out;
}

std::shared_ptr<Refresher::Flight> Refresher::StartFlightLocked(std::string_view grant_id,
                                                                absl::Time deadline) {
  auto flight = std::make_shared<Flight>(grant_id, deadline);
  in_flight_.emplace(std::string(grant_id), flight);
  queue_.push_back(flight);
  if (idle_workers_ < queue_.size() &&
      workers_.size() < static_cast<size_t>(options_.max_concurrent_refreshes)) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
  return flight;
}

void Refresher::StartRefreshAhead(std::string_view grant_id) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || revoked_.contains(grant_id) || in_flight_.contains(grant_id)) return;
  // Nobody waits for it: it gets one request_timeout's worth of attempts, more if a caller
  // joins it with a later deadline.
  const SharedAccessToken held = cache_.Get(grant_id, absl::ZeroDuration());
  std::shared_ptr<Flight> flight =
      StartFlightLocked(grant_id, absl::Now() + options_.request_timeout);
  if (held) flight->replaces_obtained_at = held->obtained_at;
}

void Refresher::WorkerLoop() {
  mu_.Lock();
  while (true) {
    ++idle_workers_;
    mu_.Await(absl::Condition(this, &Refresher::HasWorkOrStopping));
    --idle_workers_;
    if (queue_.empty()) break;  // stopping
    std::shared_ptr<Flight> flight = std::move(queue_.front());
    queue_.pop_front();
    running_.insert(flight->grant_id);
    mu_.Unlock();
    absl::StatusOr<Refreshed> outcome = Refresh(*flight);
    mu_.Lock();
    running_.erase(running_.find(flight->grant_id));
    FinishLocked(*flight, std::move(outcome));
    if (flight->unsynced) {
      // The waiters have their answer; the disk catches up meanwhile
      // (docs/refresh.md, "Durability").
      mu_.Unlock();
      if (absl::Status synced = deps_.store->SyncToDisk(); !synced.ok() && deps_.on_sync_failed) {
        deps_.on_sync_failed(flight->grant_id, synced);
      }
      mu_.Lock();
    }
  }
  mu_.Unlock();
}

bool Refresher::Refreshing(std::string_view grant_id) {
  absl::MutexLock lock(&mu_);
  if (running_.find(grant_id) != running_.end()) return true;
  if (!pending_rotations_.contains(grant_id)) return false;
  StartStoringPendingLocked(grant_id);
  return true;
}

void Refresher::StartStoringPendingLocked(std::string_view grant_id) {
  if (stopping_ || !pending_rotations_.contains(grant_id) || in_flight_.contains(grant_id)) return;
  // Nobody waits for it; its attempts to store the kept token last request_timeout.
  StartFlightLocked(grant_id, absl::Now() + options_.request_timeout);
}

void Refresher::FinishLocked(Flight& flight, absl::StatusOr<Refreshed> outcome) {
  if (auto revoked = revoked_.find(flight.grant_id); revoked != revoked_.end()) {
    // Revoked while the refresh ran: its token is neither served nor cached.
    flight.result = RevokedError(flight.grant_id, revoked->second);
  } else if (outcome.ok()) {
    // The cache and the waiters share one token (one serial, one copy of the bytes).
    if (outcome->token.serial == 0) outcome->token.serial = NewTokenSerial();
    auto token = std::make_shared<const AccessToken>(std::move(outcome->token));
    cache_.Put(flight.grant_id, token, outcome->refresh_at);
    flight.result = std::move(token);
  } else {
    flight.result = outcome.status();
  }
  flight.done = true;
  auto it = in_flight_.find(flight.grant_id);
  if (it != in_flight_.end() && it->second.get() == &flight) in_flight_.erase(it);
}

bool Refresher::Abandoned(const Flight& flight) const {
  absl::MutexLock lock(&mu_);
  return flight.abandoned;
}

bool Refresher::IsRevoked(std::string_view grant_id) const {
  absl::MutexLock lock(&mu_);
  return revoked_.contains(grant_id);
}

absl::Time Refresher::FlightDeadline(const Flight& flight) const {
  absl::MutexLock lock(&mu_);
  return flight.deadline;
}

void Refresher::NoteRetryAfter(Flight& flight, absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  flight.retry_after = std::max(flight.retry_after, wait);
}

absl::Status Refresher::UnavailableFor(const Flight& flight, std::string_view what) const {
  absl::Duration retry_after = options_.initial_backoff;
  {
    absl::MutexLock lock(&mu_);
    retry_after = std::max(retry_after, flight.retry_after);
  }
  return absl::UnavailableError(absl::StrCat("UNAVAILABLE: grant ", flight.grant_id, ": ", Sv(what),
                                             "; retry_after_ms=", CeilMillis(retry_after)));
}

bool Refresher::BackOff(const Flight& flight, absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(absl::Condition(&flight.abandoned), wait);
}

absl::Time Refresher::RefreshAheadAt(const store::Grant& grant, absl::Time now,
                                     absl::Duration lifetime, absl::BitGen& random) const {
  absl::Duration margin = options_.refresh_ahead;
  if (auto it = options_.refresh_ahead_by_connector.find(grant.connector_id);
      it != options_.refresh_ahead_by_connector.end()) {
    margin = it->second;
  } else if (auto by_type = options_.refresh_ahead_by_connector.find(grant.connector_type);
             by_type != options_.refresh_ahead_by_connector.end()) {
    margin = by_type->second;
  }
  if (margin <= absl::ZeroDuration() || lifetime == absl::InfiniteDuration()) {
    return absl::InfiniteFuture();
  }
  if (options_.refresh_ahead_jitter > 0) {
    margin *=
        absl::Uniform(random, 1 - options_.refresh_ahead_jitter, 1 + options_.refresh_ahead_jitter);
  }
  margin = std::min(margin, lifetime / 2);
  // Never sooner than callers could cause a refresh (ServesMinValid).
  return std::max(now + kMinRefreshInterval, now + lifetime - margin);
}

absl::Status Refresher::AdmitUpstream(const std::string& connector_id, bool take_probe,
                                      absl::Duration* retry_after) {
  const absl::Time now = deps_.clock->Now();
  absl::MutexLock lock(&mu_);
  Breaker& breaker = breakers_[connector_id];
  switch (breaker.phase) {
    case BreakerPhase::kClosed:
      return absl::OkStatus();
    case BreakerPhase::kOpen:
      if (now < breaker.open_until) {
        *retry_after = breaker.open_until - now;
        return absl::UnavailableError(absl::StrCat(
            "the circuit breaker for connector ", connector_id, " is open after ",
            breaker.consecutive_failures,
            " consecutive upstream failures (last: ", breaker.last_failure, "); nothing was sent"));
      }
      if (take_probe) {
        breaker.phase = BreakerPhase::kHalfOpen;
        breaker.probe_in_flight = true;
      }
      return absl::OkStatus();
    case BreakerPhase::kHalfOpen:
      if (breaker.probe_in_flight) {
        *retry_after = options_.initial_backoff;
        return absl::UnavailableError(
            absl::StrCat("the circuit breaker for connector ", connector_id,
                         " is half-open and its probe request is in flight; nothing was sent"));
      }
      if (take_probe) breaker.probe_in_flight = true;
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

void Refresher::RecordUpstream(const std::string& connector_id, bool failed, std::string what,
                               absl::Duration server_wait) {
  const absl::Time now = deps_.clock->Now();
  absl::MutexLock lock(&mu_);
  Breaker& breaker = breakers_[connector_id];
  if (!failed) {
    breaker.phase = BreakerPhase::kClosed;
    breaker.consecutive_failures = 0;
    breaker.probe_in_flight = false;
    return;
  }
  ++breaker.consecutive_failures;
  breaker.last_failure = std::move(what);
  if (breaker.phase == BreakerPhase::kHalfOpen ||
      breaker.consecutive_failures >= options_.breaker_failure_threshold) {
    breaker.phase = BreakerPhase::kOpen;
    breaker.open_until = now + std::max(options_.breaker_cooldown, server_wait);
    breaker.probe_in_flight = false;
  }
}

absl::StatusOr<SharedAccessToken> Refresher::ServeStaleOr(std::string_view grant_id,
                                                          absl::Status status) {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
    if (SharedAccessToken stale = cache_.Get(grant_id, absl::ZeroDuration())) return stale;
  }
  return status;
}

bool Refresher::WaitUnlessStopping(absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(absl::Condition(&stopping_), wait);
}

std::optional<Refresher::PendingRotation> Refresher::TakePendingRotation(
    std::string_view grant_id) {
  absl::MutexLock lock(&mu_);
  auto it = pending_rotations_.find(grant_id);
  if (it == pending_rotations_.end()) return std::nullopt;
  PendingRotation pending = std::move(it->second);
  pending_rotations_.erase(it);
  return pending;
}

void Refresher::KeepPendingRotation(std::string_view grant_id, PendingRotation pending) {
  absl::MutexLock lock(&mu_);
  pending_rotations_.insert_or_assign(std::string(grant_id), std::move(pending));
}

bool Refresher::HoldsUnstoredRefreshToken(std::string_view grant_id) const {
  absl::MutexLock lock(&mu_);
  return pending_rotations_.contains(grant_id);
}

absl::StatusOr<Refresher::CommitOutcome> Refresher::CommitRotation(
    const store::SealedSecret& sent_row, const SecretBytes& sent_token, const SecretBytes& rotated,
    const Finish* finish, bool* finished) {
  if (finished != nullptr) *finished = false;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                      deps_.sealer->Seal(rotated, keys::SealContextOf(sent_row)));
  store::SealedSecretUpdate update{sent_row.key, sent_row.record, sealed.kek.label,
                                   std::move(sealed.record)};
  for (int commit = 0; commit < kMaxCommitAttempts; ++commit) {
    if (finish != nullptr) {
      GV_ASSIGN_OR_RETURN(
          bool applied,
          deps_.store->FinishRefresh(update, sent_row.key.owner_id, finish->access_expires_at,
                                     finish->now, store::Sync::kLater));
      if (applied) {
        if (finished != nullptr) *finished = true;
        return CommitOutcome::kCommitted;
      }
    } else {
      GV_ASSIGN_OR_RETURN(size_t applied, deps_.store->ReplaceSealedSecrets({&update, 1}));
      if (applied == 1) return CommitOutcome::kCommitted;
    }
    // The row changed under us: a rewrap (same token, new record), an earlier commit of this
    // very token whose success was not reported, or another rotation.
    GV_ASSIGN_OR_RETURN(store::SealedSecret current, deps_.store->GetSealedSecret(sent_row.key));
    GV_ASSIGN_OR_RETURN(SecretBytes current_token,
                        deps_.sealer->Open(current.record, keys::SealContextOf(current)));
    if (current_token == rotated) return CommitOutcome::kCommitted;
    if (!(current_token == sent_token)) return CommitOutcome::kRotatedElsewhere;
    update.expected_record = current.record;
  }
  return absl::UnavailableError("the refresh token row kept changing");
}

absl::StatusOr<Refresher::CommitOutcome> Refresher::CommitWithBackoff(
    const store::SealedSecret& sent_row, const SecretBytes& sent_token, const SecretBytes& rotated,
    const Finish* finish, bool* finished) {
  // For a request's worth of time, whoever waits: until this commits, the grant cannot be
  // refreshed again. Callers with shorter deadlines are answered at their deadlines meanwhile.
  const absl::Time give_up = absl::Now() + options_.request_timeout;
  absl::BitGen random;
  absl::Duration backoff = options_.initial_backoff;
  while (true) {
    absl::StatusOr<CommitOutcome> outcome =
        CommitRotation(sent_row, sent_token, rotated, finish, finished);
    if (outcome.ok()) return outcome;
    const absl::Duration wait =
        std::min(options_.max_backoff, backoff * absl::Uniform(random, 0.5, 1.5));
    if (absl::Now() + wait >= give_up || !WaitUnlessStopping(wait)) return outcome.status();
    backoff = std::min(options_.max_backoff, backoff * 2);
  }
}

std::optional<Refresher::Refreshed> Refresher::TakeSharedToken(const Flight& flight,
                                                               const store::Grant& grant,
                                                               absl::BitGen& random) {
  absl::StatusOr<store::SealedSecret> sealed =
      deps_.store->GetSealedSecret({grant.grant_id, store::kSharedAccessTokenPurpose});
  if (!sealed.ok() || !CheckBoundToGrant(grant, *sealed).ok()) return std::nullopt;
  absl::StatusOr<SecretBytes> opened = keys::OpenSealed(*deps_.sealer, *sealed);
  if (!opened.ok()) return std::nullopt;
  std::optional<AccessToken> token = DecodeSharedToken(*opened);
  if (!token.has_value()) return std::nullopt;
  absl::Duration min_valid;
  absl::Time replaces;
  {
    absl::MutexLock lock(&mu_);
    min_valid = flight.min_valid;
    replaces = flight.replaces_obtained_at;
  }
  const absl::Time now = deps_.clock->Now();
  if (token->obtained_at <= replaces || !ServesMinValid(*token, now, min_valid)) {
    return std::nullopt;
  }
  Refreshed out;
  out.refresh_at =
      RefreshAheadAt(grant, token->obtained_at, token->expires_at - token->obtained_at, random);
  out.token = *std::move(token);
  return out;
}

void Refresher::ShareToken(const store::Grant& grant, const AccessToken& token) {
  store::SealedSecret secret;
  secret.key = {grant.grant_id, store::kSharedAccessTokenPurpose};
  secret.workspace_id = grant.workspace_id;
  secret.connector_id = grant.connector_id;
  secret.account_id = grant.account_id;
  secret.updated_at = deps_.clock->Now();
  const SecretBytes encoded = EncodeSharedToken(token);
  absl::StatusOr<hsm::Sealed> sealed = deps_.sealer->Seal(encoded, keys::SealContextOf(secret));
  if (!sealed.ok()) return;
  secret.kek_label = sealed->kek.label;
  secret.record = std::move(sealed->record);
  deps_.store->PutSealedSecrets({&secret, 1}).IgnoreError();
}

absl::StatusOr<Refresher::Refreshed> Refresher::Refresh(Flight& flight) {
  const std::string& grant_id = flight.grant_id;
  absl::BitGen random;
  for (int round = 0; round < kMaxRotationRounds; ++round) {
    if (Abandoned(flight)) return UnavailableFor(flight, "the refresh was abandoned");
    // One refresh of this grant at a time across every host sharing the store
    // (a no-op lock on SQLite), held for the round: everything below reads
    // what the last holder committed.
    absl::StatusOr<std::unique_ptr<store::GrantStore::RefreshLock>> refresh_lock =
        deps_.store->LockGrantForRefresh(grant_id, FlightDeadline(flight));
    if (!refresh_lock.ok())
      return UnavailableFor(flight, std::string(refresh_lock.status().message()));
    GV_ASSIGN_OR_RETURN(store::Grant grant, deps_.store->GetGrant(grant_id));
    // The attempt marker: set before a request is sent, cleared once its outcome is known.
    // Finding it set means an earlier attempt's outcome was lost (a crash, or a response that
    // never arrived), which is how the crash window is recognised.
    bool marker_set = grant.refresh_attempt_at.has_value();
    // Best effort: a marker left behind only makes a later invalid_grant name the crash window.
    auto resolve_attempt = [&] {
      deps_.store->ClearRefreshAttempt(grant_id).IgnoreError();
      marker_set = false;
      flight.unsynced = true;
    };

    // A rotated refresh token that an earlier flight could not store goes to the store before
    // anything else: the stored one is dead at the server. Also for a grant revoked meanwhile
    // (revoking at the provider wants the current token).
    std::optional<Refreshed> held;
    if (std::optional<PendingRotation> pending = TakePendingRotation(grant_id)) {
      absl::StatusOr<CommitOutcome> committed =
          CommitWithBackoff(pending->sent_row, pending->sent_token, pending->rotated_token);
      if (!committed.ok()) {
        const std::string why(committed.status().message());
        KeepPendingRotation(grant_id, *std::move(pending));
        return UnavailableFor(flight, absl::StrCat(kNotStoredYet, why));
      }
      if (*committed == CommitOutcome::kCommitted) {
        resolve_attempt();
        held = std::move(pending->refreshed);
      }
      // kRotatedElsewhere: the store holds a newer token than the one kept; it is dropped.
    }
    // A flight started after a revocation (to store a kept token) sends nothing.
    if (IsRevoked(grant_id)) return RevokedError(grant_id, "revoked while its refresh was pending");

    if (grant.status == store::GrantStatus::kRevoked) {
      {
        absl::MutexLock lock(&mu_);
        MarkRevokedLocked(grant_id, grant.status_reason);  // final: no need to ask again
      }
      return RevokedError(grant_id, grant.status_reason);
    }
    if (grant.status == store::GrantStatus::kReauthRequired) {
      cache_.Erase(grant_id);
      return absl::FailedPreconditionError(absl::StrCat(
          "REAUTH_REQUIRED: grant ", grant_id, " needs authorizing again: ", grant.status_reason));
    }
    if (held.has_value() && held->token.expires_at > deps_.clock->Now()) {
      if (!IsRevoked(grant_id)) {
        deps_.store->SetAccessTokenExpiry(grant_id, held->token.expires_at, deps_.clock->Now())
            .IgnoreError();
        if (deps_.store->SharedAcrossHosts()) ShareToken(grant, held->token);
      }
      return *std::move(held);
    }
    if (deps_.store->SharedAcrossHosts()) {
      // Another host refreshed while this one waited for the lock: its token, not another refresh.
      if (std::optional<Refreshed> shared = TakeSharedToken(flight, grant, random)) {
        return *std::move(shared);
      }
    }

    absl::StatusOr<store::SealedSecret> sealed_refresh =
        deps_.store->GetSealedSecret({grant_id, kRefreshTokenPurpose});
    if (absl::IsNotFound(sealed_refresh.status())) {
      // A connector without refresh tokens: the grant keeps its long-lived access token.
      GV_ASSIGN_OR_RETURN(store::SealedSecret sealed_access,
                          deps_.store->GetSealedSecret({grant_id, kAccessTokenPurpose}));
      GV_RETURN_IF_ERROR(CheckBoundToGrant(grant, sealed_access));
      Refreshed out;
      GV_ASSIGN_OR_RETURN(out.token.token, deps_.sealer->Open(sealed_access.record,
                                                              keys::SealContextOf(sealed_access)));
      out.token.expires_at = grant.access_token_expires_at.value_or(absl::InfiniteFuture());
      if (out.token.expires_at <= deps_.clock->Now()) {
        return absl::FailedPreconditionError(
            absl::StrCat("REAUTH_REQUIRED: grant ", grant_id,
                         " holds an access token that has expired and no refresh token"));
      }
      return out;
    }
    GV_RETURN_IF_ERROR(sealed_refresh.status());
    GV_RETURN_IF_ERROR(CheckBoundToGrant(grant, *sealed_refresh));
    const std::string& connector_id = grant.connector_id;

    // An open breaker: nothing is sent, and no marker is written.
    {
      absl::Duration wait = absl::ZeroDuration();
      if (absl::Status admitted = AdmitUpstream(connector_id, /*take_probe=*/false, &wait);
          !admitted.ok()) {
        NoteRetryAfter(flight, wait);
        return UnavailableFor(flight, std::string(admitted.message()));
      }
    }

    GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                        deps_.store->GetConnectorRegistration(grant.connector_id));
    GV_ASSIGN_OR_RETURN(oauth::ConnectorProfile profile, deps_.connectors->Resolve(registration));
    GV_ASSIGN_OR_RETURN(
        store::SealedSecret sealed_client_secret,
        deps_.store->GetSealedSecret(
            {store::RegistrationSecretOwner(registration.connector_id), kClientSecretPurpose}));
    GV_ASSIGN_OR_RETURN(
        SecretBytes client_secret,
        deps_.sealer->Open(sealed_client_secret.record, keys::SealContextOf(sealed_client_secret)));
    GV_ASSIGN_OR_RETURN(
        SecretBytes refresh_token,
        deps_.sealer->Open(sealed_refresh->record, keys::SealContextOf(*sealed_refresh)));

    const bool earlier_attempt_unresolved = marker_set;
    // Unsynced: it must survive the broker's death, which it does at once; a power cut that took
    // it would only leave a later invalid_grant without the crash-window reason.
    GV_RETURN_IF_ERROR(deps_.store->MarkRefreshAttempt(grant_id, deps_.clock->Now()));
    flight.unsynced = true;  // this and what follows: synced once the flight has answered
    // After an outcome that rotated nothing, the marker goes unless it also stands for an
    // earlier attempt whose outcome is still unknown.
    auto resolve_attempt_unless_earlier = [&] {
      if (!earlier_attempt_unresolved) resolve_attempt();
    };
    absl::Duration backoff = options_.initial_backoff;
    std::string last = "no attempt was made";
    bool outcome_unknown = false;  // a request may have reached the server unanswered
    std::optional<oauth::TokenResponse> tokens;
    for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
      if (Abandoned(flight)) {
        last = "the refresh was abandoned";
        break;
      }
      {
        absl::Duration wait = absl::ZeroDuration();
        if (absl::Status admitted = AdmitUpstream(connector_id, /*take_probe=*/true, &wait);
            !admitted.ok()) {
          NoteRetryAfter(flight, wait);
          last = std::string(admitted.message());
          break;
        }
      }
      absl::StatusOr<oauth::HttpResponse> response;
      {
        const oauth::TokenRequest request(
            profile, oauth::RefreshTokenExchange{.client_id = registration.client_id,
                                                 .client_secret = &client_secret,
                                                 .refresh_token = &refresh_token});
        {
          absl::MutexLock lock(&mu_);
          ++upstream_requests_;
        }
        // Never cut short by a caller's deadline: an answer that carries a rotated token must
        // be read and committed even when nobody waits for it any more.
        response = deps_.http->Send(request.http(), options_.request_timeout);
      }
      absl::Duration server_wait = absl::ZeroDuration();
      if (!response.ok()) {
        // No answer: the server may or may not have rotated the token; the marker stays.
        last = absl::StrCat("the token endpoint did not answer: ", response.status().message());
        outcome_unknown = true;
        RecordUpstream(connector_id, /*failed=*/true, "no answer", absl::ZeroDuration());
      } else if (response->status == 429 || response->status >= 500) {
        last = absl::StrCat("the token endpoint answered HTTP ", response->status);
        server_wait = RetryAfter(*response).value_or(absl::ZeroDuration());
        NoteRetryAfter(flight, server_wait);
        RecordUpstream(connector_id, /*failed=*/true, absl::StrCat("HTTP ", response->status),
                       server_wait);
      } else {
        absl::StatusOr<oauth::TokenResponse> parsed =
            oauth::ParseTokenResponse(*response, profile.catalog_type);
        if (parsed.ok()) {
          RecordUpstream(connector_id, /*failed=*/false, "", absl::ZeroDuration());
          tokens = std::move(*parsed);
          break;
        }
        if (absl::IsFailedPrecondition(parsed.status())) {
          RecordUpstream(connector_id, /*failed=*/false, "", absl::ZeroDuration());
        }
        if (absl::IsFailedPrecondition(parsed.status()) &&
            absl::StrContains(parsed.status().message(), "invalid_grant")) {
          const std::string reason = earlier_attempt_unresolved
                                         ? std::string(kCrashWindowReason)
                                         : std::string(
                                               "the authorization server refused the refresh token "
                                               "(invalid_grant): revoked, expired or reused");
          cache_.Erase(grant_id);
          if (IsRevoked(grant_id)) {
            resolve_attempt();
            return absl::FailedPreconditionError(
                absl::StrCat("REVOKED: grant ", grant_id, " is revoked"));
          }
          absl::Status marked = deps_.store->SetGrantStatus(
              grant_id, store::GrantStatus::kReauthRequired, reason, deps_.clock->Now());
          if (!marked.ok()) {
            // A revoked grant cannot change status: a revocation won the race.
            absl::StatusOr<store::Grant> now = deps_.store->GetGrant(grant_id);
            if (now.ok() && now->status == store::GrantStatus::kRevoked) {
              absl::MutexLock lock(&mu_);
              MarkRevokedLocked(grant_id, now->status_reason);
              return RevokedError(grant_id, now->status_reason);
            }
            return marked;
          }
          resolve_attempt();
          if (deps_.on_reauth_required) deps_.on_reauth_required(grant_id, reason);
          return absl::FailedPreconditionError(
              absl::StrCat("REAUTH_REQUIRED: grant ", grant_id, ": ", reason));
        }
        if (absl::IsFailedPrecondition(parsed.status())) {
          // Another refusal (invalid_client, unauthorized_client…): nothing was rotated.
          resolve_attempt_unless_earlier();
          return parsed.status();
        }
        // A malformed answer: it may have carried a rotated token (the marker stays), and
        // resending could lose another one: no retry.
        RecordUpstream(connector_id, /*failed=*/true, "malformed answer", absl::ZeroDuration());
        return UnavailableFor(flight, std::string(parsed.status().message()));
      }
      if (attempt + 1 == options_.max_attempts) break;
      const absl::Duration jittered =
          std::min(options_.max_backoff, backoff * absl::Uniform(random, 0.5, 1.5));
      const absl::Duration wait = std::max(jittered, server_wait);  // Retry-After is a floor
      if (absl::Now() + wait >= FlightDeadline(flight)) break;
      if (!BackOff(flight, wait)) {
        last = "the refresh was abandoned";
        break;
      }
      backoff = std::min(options_.max_backoff, std::max(backoff, server_wait) * 2);
    }
    if (!tokens.has_value()) {
      if (!outcome_unknown) resolve_attempt_unless_earlier();
      return UnavailableFor(flight, last);
    }

    const absl::Time now = deps_.clock->Now();
    const absl::Duration lifetime = tokens->expires_in.value_or(kDefaultAccessTokenLifetime);
    Refreshed out;
    out.token.token = std::move(tokens->access_token);
    if (!tokens->token_type.empty()) out.token.token_type = tokens->token_type;
    out.token.obtained_at = now;
    out.token.expires_at = now + lifetime;
    out.refresh_at = RefreshAheadAt(grant, now, lifetime, random);

    // Commit the rotated refresh token before anyone sees the access token. Also when the
    // grant was revoked meanwhile: the old token is dead, and revoking at the provider needs
    // the current one.
    // The rotated token, the marker's removal and the access token's expiry
    // go to the store in one transaction when they can (FinishRefresh).
    const Finish finish{out.token.expires_at, now};
    bool finished = false;
    if (!tokens->refresh_token.empty()) {
      absl::StatusOr<CommitOutcome> committed = CommitWithBackoff(
          *sealed_refresh, refresh_token, tokens->refresh_token, &finish, &finished);
      if (!committed.ok()) {
        // Not recorded yet: kept in memory and committed before the grant is refreshed again.
        // The marker stays: were the process to die first, this is the crash window.
        const std::string why(committed.status().message());
        KeepPendingRotation(grant_id,
                            PendingRotation{*sealed_refresh, std::move(refresh_token),
                                            std::move(tokens->refresh_token), std::move(out)});
        return UnavailableFor(flight, absl::StrCat(kNotStoredYet, why));
      }
      // Start over from the store; never resend the old token.
      if (*committed == CommitOutcome::kRotatedElsewhere) continue;
    }
    if (!finished) {
      // Best effort: a marker left behind only names the crash window later,
      // and the token is as valid whether or not its expiry is on record.
      deps_.store
          ->FinishRefresh(std::nullopt, grant_id, out.token.expires_at, now, store::Sync::kLater)
          .IgnoreError();
    }
    // For the other hosts, before the lock goes: the next holder finds it.
    if (deps_.store->SharedAcrossHosts() && !IsRevoked(grant_id)) ShareToken(grant, out.token);
    return out;
  }
  return UnavailableFor(flight, "its refresh token kept being rotated elsewhere");
}

}  // namespace grantvault::tokens
