#include "daemon/upstream_revoker.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "keys/sealed_context.h"
#include "oauth/revocation.h"

namespace grantvault::daemon {
namespace {

constexpr char kRefreshTokenPurpose[] = "refresh_token";
constexpr char kAccessTokenPurpose[] = "access_token";
constexpr char kClientSecretPurpose[] = "client_secret";
// How long the thread sleeps when nothing is due (a Wake() cuts it short).
constexpr absl::Duration kIdlePoll = absl::Minutes(1);

// Opens the grant's sealed secret for `purpose`, if there is one.
absl::StatusOr<std::optional<SecretBytes>> OpenIfPresent(store::GrantStore& store,
                                                         hsm::Sealer& sealer,
                                                         const std::string& owner,
                                                         const char* purpose) {
  absl::StatusOr<store::SealedSecret> sealed = store.GetSealedSecret({owner, purpose});
  if (absl::IsNotFound(sealed.status())) return std::optional<SecretBytes>();
  GV_RETURN_IF_ERROR(sealed.status());
  GV_ASSIGN_OR_RETURN(SecretBytes secret, keys::OpenSealed(sealer, *sealed));
  return std::optional<SecretBytes>(std::move(secret));
}

}  // namespace

UpstreamRevoker::UpstreamRevoker(Deps deps, Options options)
    : deps_(std::move(deps)), options_(options) {}

UpstreamRevoker::~UpstreamRevoker() { Stop(); }

void UpstreamRevoker::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void UpstreamRevoker::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

void UpstreamRevoker::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void UpstreamRevoker::Loop() {
  for (;;) {
    RunDue();
    absl::Time next = deps_.clock->Now() + kIdlePoll;
    if (absl::StatusOr<std::vector<store::UpstreamRevocation>> pending =
            deps_.store->ListPendingUpstreamRevocations();
        pending.ok() && !pending->empty()) {
      next = std::min(next, pending->front().next_attempt_at);
    }
    absl::MutexLock lock(&mu_);
    const absl::Duration wait = std::max(absl::ZeroDuration(), next - deps_.clock->Now());
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || woken_; };
    mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
    if (stop_) return;
    woken_ = false;
  }
}

int UpstreamRevoker::RunDue() {
  absl::StatusOr<std::vector<store::UpstreamRevocation>> pending =
      deps_.store->ListPendingUpstreamRevocations();
  if (!pending.ok()) return 0;
  int attempts = 0;
  for (const store::UpstreamRevocation& p : *pending) {
    if (p.next_attempt_at > deps_.clock->Now()) break;  // sorted by next attempt
    {
      absl::MutexLock lock(&mu_);
      if (stop_) break;
    }
    Attempt(p);
    ++attempts;
  }
  return attempts;
}

absl::StatusOr<store::UpstreamRevocationState> UpstreamRevoker::Send(const store::Grant& grant) {
  GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                      deps_.store->GetConnectorRegistration(grant.connector_id));
  GV_ASSIGN_OR_RETURN(oauth::ConnectorProfile profile, deps_.connectors->Resolve(registration));
  GV_ASSIGN_OR_RETURN(
      std::optional<SecretBytes> client_secret,
      OpenIfPresent(*deps_.store, *deps_.sealer, store::RegistrationSecretOwner(grant.connector_id),
                    kClientSecretPurpose));
  GV_ASSIGN_OR_RETURN(
      std::optional<SecretBytes> refresh_token,
      OpenIfPresent(*deps_.store, *deps_.sealer, grant.grant_id, kRefreshTokenPurpose));
  GV_ASSIGN_OR_RETURN(
      std::optional<SecretBytes> access_token,
      OpenIfPresent(*deps_.store, *deps_.sealer, grant.grant_id, kAccessTokenPurpose));
  oauth::RevocationRequestInput input;
  input.profile = &profile;
  input.client_id = registration.client_id;
  input.client_secret = client_secret ? &*client_secret : nullptr;
  input.refresh_token = refresh_token ? &*refresh_token : nullptr;
  input.access_token = access_token ? &*access_token : nullptr;
  GV_ASSIGN_OR_RETURN(
      oauth::RevocationOutcome outcome,
      oauth::RevokeAtProvider(*deps_.http, input, deps_.clock->Now() + options_.request_timeout));
  switch (outcome) {
    case oauth::RevocationOutcome::kRevoked:
      return store::UpstreamRevocationState::kRevoked;
    case oauth::RevocationOutcome::kAlreadyInvalid:
      return store::UpstreamRevocationState::kAlreadyInvalid;
    case oauth::RevocationOutcome::kManual:
      return store::UpstreamRevocationState::kManual;
  }
  return absl::InternalError("unexpected revocation outcome");
}

void UpstreamRevoker::Attempt(const store::UpstreamRevocation& pending) {
  absl::StatusOr<store::Grant> grant = deps_.store->GetGrant(pending.grant_id);
  if (!grant.ok()) return;  // cascaded away, or the database is down: next pass
  if (deps_.refreshing && deps_.refreshing(pending.grant_id)) {
    // Not an attempt: come back once the refresh has committed what it got.
    store::UpstreamRevocation later = pending;
    later.next_attempt_at = deps_.clock->Now() + options_.refresh_wait;
    (void)deps_.store->PutUpstreamRevocation(later);
    return;
  }
  absl::StatusOr<store::UpstreamRevocationState> sent = Send(*grant);
  store::UpstreamRevocation next = pending;
  next.attempts = pending.attempts + 1;
  next.updated_at = deps_.clock->Now();
  if (sent.ok()) {
    next.state = *sent;
    next.last_error.clear();
    next.next_attempt_at = next.updated_at;
    // The tokens are dead at the provider (or an admin must remove the app
    // there): nothing is left for them to do here.
    for (const char* purpose : {kRefreshTokenPurpose, kAccessTokenPurpose}) {
      (void)deps_.store->DeleteSealedSecret({grant->grant_id, purpose});
    }
  } else {
    next.state = store::UpstreamRevocationState::kPending;
    next.last_error = std::string(sent.status().message());
    absl::Duration backoff = options_.initial_backoff;
    for (int i = 1; i < next.attempts && backoff < options_.max_backoff; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.max_backoff);
    if (std::optional<uint32_t> asked_ms = RetryAfterMillis(sent.status())) {
      backoff = std::max(backoff, std::min(absl::Milliseconds(*asked_ms), options_.max_backoff));
    }
    next.next_attempt_at = next.updated_at + backoff;
  }
  if (!deps_.store->PutUpstreamRevocation(next).ok()) return;  // retried on the next pass
  if (deps_.on_attempt) deps_.on_attempt(*grant, next);
}

}  // namespace grantvault::daemon
