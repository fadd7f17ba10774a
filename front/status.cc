// Status on both sockets: computed on a worker, kept as a snapshot for a second,
// answered with the live fields (uptime, connections, the policy's state) on top.
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "front/service.h"
#include "front/service_internal.h"

namespace grantvault::front {

using internal::UnixMillis;

namespace {

constexpr absl::Duration kStatusSnapshotMaxAge = absl::Seconds(1);

}  // namespace

v1::StatusReply Service::ComputeStatus() {
  v1::StatusReply s;
  s.set_server_version(kServerVersion);
  const keys::TokenHealth token = custodian_->Health();
  s.set_token_label(token.token_label);
  s.set_store_kind("sqlite");
  s.set_hsm_reachable(token.hsm_reachable);
  absl::StatusOr<int64_t> grants = store_->CountGrants();
  absl::StatusOr<std::map<std::string, int64_t>> sealed = store_->CountSealedSecretsByKek();
  s.set_store_reachable(grants.ok() && sealed.ok());
  if (grants.ok()) s.set_grants(static_cast<uint64_t>(*grants));
  if (sealed.ok()) {
    int64_t total = 0;
    for (const auto& [label, n] : *sealed) total += n;
    s.set_sealed_secrets(static_cast<uint64_t>(total));
  }
  s.set_active_kek(token.active_kek);
  if (absl::StatusOr<std::vector<store::UpstreamRevocation>> pending =
          store_->ListPendingUpstreamRevocations();
      pending.ok()) {
    s.set_upstream_revocations_pending(static_cast<uint32_t>(pending->size()));
  }
  if (trail_.refresher != nullptr) {
    for (const tokens::BreakerState& b : trail_.refresher->Breakers()) {
      if (b.phase == tokens::BreakerPhase::kClosed) continue;
      v1::StatusReply::Breaker* out = s.add_breakers();
      out->set_connector_id(b.connector_id);
      out->set_phase(std::string(tokens::BreakerPhaseName(b.phase)));
      out->set_open_until_ms(UnixMillis(b.open_until));
      out->set_consecutive_failures(static_cast<uint32_t>(b.consecutive_failures));
      out->set_last_failure(b.last_failure);
    }
  }
  s.set_audit_enabled(trail_.audit != nullptr);
  if (trail_.audit != nullptr) {
    const audit::CheckpointHealth health = trail_.audit->checkpoint_health();
    s.set_audit_unsigned_records(health.unsigned_records);
    s.set_audit_last_signing_error(health.last_signing_error);
  }
  return s;
}

void Service::SendStatus(ipc::Connection& connection, uint64_t request_id,
                         v1::StatusReply snapshot) {
  v1::Response r;
  r.set_request_id(request_id);
  *r.mutable_status() = std::move(snapshot);
  // Live fields on top of the (at most one second old) snapshot.
  r.mutable_status()->set_uptime_ms(
      static_cast<uint64_t>(absl::ToInt64Milliseconds(clock_->Now() - started_)));
  if (server_ != nullptr) {
    r.mutable_status()->set_open_connections(static_cast<uint32_t>(server_->stats().open));
  }
  // The policy's state is live too: a reload shows at once.
  r.mutable_status()->set_policy_file(agents_.policy_file);
  {
    absl::MutexLock lock(&snapshot_mu_);
    r.mutable_status()->set_policy_loaded_at_ms(
        policy_state_.denying ? 0 : UnixMillis(policy_state_.loaded_at));
    r.mutable_status()->set_policy_last_reload_error(policy_state_.last_reload_error);
    r.mutable_status()->set_policy_last_reload_failed_at_ms(
        UnixMillis(policy_state_.last_reload_failed_at));
    r.mutable_status()->set_policy_denying(policy_state_.denying);
  }
  SendResponse(connection, r);
}

bool Service::SendFreshStatus(ipc::Connection& connection, uint64_t request_id) {
  std::optional<v1::StatusReply> fresh;
  {
    absl::MutexLock lock(&snapshot_mu_);
    if (clock_->Now() - snapshot_.taken < kStatusSnapshotMaxAge) fresh = snapshot_.reply;
  }
  if (!fresh) return false;
  SendStatus(connection, request_id, std::move(*fresh));
  return true;
}

void Service::AnswerAgentStatus(const std::shared_ptr<ipc::Connection>& connection,
                                uint64_t request_id) {
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(CallerOf(*connection).get());
  absl::Status allowed = caller.status();
  if (allowed.ok()) allowed = agents_.resolver->MatchCaller(*caller).status();
  if (!allowed.ok()) {
    SendResponse(*connection, internal::ErrorResponse(request_id, allowed));
    return;
  }
  if (!SendFreshStatus(*connection, request_id)) AnswerStatus(connection, request_id);
}

void Service::AnswerStatus(const std::shared_ptr<ipc::Connection>& connection,
                           uint64_t request_id) {
  v1::StatusReply fresh = ComputeStatus();
  {
    absl::MutexLock lock(&snapshot_mu_);
    snapshot_.taken = clock_->Now();
    snapshot_.reply = fresh;
  }
  SendStatus(*connection, request_id, std::move(fresh));
}

}  // namespace grantvault::front
