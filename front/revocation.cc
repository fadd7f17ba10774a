// Grants that stop being served: RunRevoke (an admin's revocation), a refresh that
// found a grant needs reauthorization, the upstream revoker's attempts, RetireInMemory.
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log_escape.h"
#include "common/status.h"
#include "front/proxy.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {

using internal::AddGrantFields;
using internal::GrantEventOf;

void Service::RetireInMemory(const std::string& workspace_id, const std::string& connector_id,
                             const std::string& grant_id, std::string reason) {
  if (proxy_ != nullptr) proxy_->EndCallsOf(grant_id, reason);
  if (trail_.refresher != nullptr) trail_.refresher->Revoke(grant_id, std::move(reason));
  if (agents_.resolver != nullptr) agents_.resolver->ForgetGrant(workspace_id, connector_id);
}

void Service::OnReauthRequired(std::string_view grant_id, std::string_view reason) {
  absl::StatusOr<store::Grant> grant = store_->GetGrant(grant_id);
  if (!grant.ok()) return;
  spdlog::warn("grant.reauth_required workspace={} connector={} grant={} reason={}",
               EscapeForLog(grant->workspace_id), EscapeForLog(grant->connector_id),
               grant->grant_id, EscapeTextForLog(reason));
  if (agents_.resolver != nullptr) {
    agents_.resolver->ForgetGrant(grant->workspace_id, grant->connector_id);
  }
  audit::Event e;
  e.type = "grant.reauth_required";
  e.actor.admin_user = "grantvaultd";
  AddGrantFields(*grant, e);
  e.outcome = "ok";
  e.reason = std::string(reason);
  if (absl::Status audited = Audit(std::move(e), audit::Durability::kDurable); !audited.ok()) {
    spdlog::error("audit.write_failed event=grant.reauth_required grant={}: {}", grant->grant_id,
                  EscapeTextForLog(std::string(audited.message())));
  }
  PublishGrantEvent(
      GrantEventOf(v1::GrantEvent::REAUTH_REQUIRED, *grant, std::string(reason), clock_->Now()));
}

void Service::OnGrantChangedElsewhere(std::string_view grant_id) {
  absl::StatusOr<store::Grant> found = store_->GetGrant(grant_id);
  if (!found.ok()) {
    spdlog::warn("grant.changed_elsewhere grant={}: cannot read it: {}",
                 EscapeForLog(std::string(grant_id)),
                 EscapeTextForLog(std::string(found.status().message())));
    return;
  }
  const store::Grant& grant = *found;
  v1::GrantEvent::Kind kind = v1::GrantEvent::AUTHORIZED;
  switch (grant.status) {
    case store::GrantStatus::kRevoked:
      kind = v1::GrantEvent::REVOKED;
      RetireInMemory(grant.workspace_id, grant.connector_id, grant.grant_id, grant.status_reason);
      break;
    case store::GrantStatus::kReauthRequired:
      kind = v1::GrantEvent::REAUTH_REQUIRED;
      if (trail_.refresher != nullptr) trail_.refresher->Forget(grant.grant_id);
      if (agents_.resolver != nullptr) {
        agents_.resolver->ForgetGrant(grant.workspace_id, grant.connector_id);
      }
      break;
    case store::GrantStatus::kActive:
      if (agents_.resolver != nullptr) {
        agents_.resolver->ForgetGrant(grant.workspace_id, grant.connector_id);
      }
      break;
  }
  spdlog::info("grant.changed_elsewhere workspace={} connector={} grant={} status={}",
               EscapeForLog(grant.workspace_id), EscapeForLog(grant.connector_id), grant.grant_id,
               store::GrantStatusName(grant.status));
  PublishGrantEvent(GrantEventOf(kind, grant, grant.status_reason, clock_->Now()));
}

void Service::OnUpstreamAttempt(const store::Grant& grant, const store::UpstreamRevocation& state) {
  const bool done = state.state != store::UpstreamRevocationState::kPending;
  if (done) {
    spdlog::info("grant.upstream_revoked grant={} connector={} outcome={} attempts={}",
                 grant.grant_id, EscapeForLog(grant.connector_id),
                 store::UpstreamRevocationStateName(state.state), state.attempts);
  } else {
    spdlog::warn(
        "grant.upstream_revoke_failed grant={} connector={} attempts={} next_in={} "
        "error={}",
        grant.grant_id, EscapeForLog(grant.connector_id), state.attempts,
        absl::FormatDuration(state.next_attempt_at - clock_->Now()),
        EscapeTextForLog(state.last_error));
  }
  // Every outcome, and the first failure: later retries are in the log and
  // in `grants show`, not one audit record per retry.
  if (!done && state.attempts > 1) return;
  audit::Event e;
  e.type = done ? "grant.upstream_revoked" : "grant.upstream_revoke_failed";
  e.actor.admin_user = "grantvaultd";
  AddGrantFields(grant, e);
  e.outcome = done ? "ok" : "failed";
  e.reason = done ? std::string(store::UpstreamRevocationStateName(state.state)) : state.last_error;
  e.details["attempts"] = absl::StrCat(state.attempts);
  if (absl::Status audited = Audit(std::move(e), audit::Durability::kDurable); !audited.ok()) {
    spdlog::error("audit.write_failed event={} grant={}: {}",
                  done ? "grant.upstream_revoked" : "grant.upstream_revoke_failed", grant.grant_id,
                  EscapeTextForLog(std::string(audited.message())));
  }
}

absl::Status Service::RunRevoke(const ipc::Connection& connection, const v1::Request& request,
                                v1::Response& response) {
  const v1::RevokeGrantRequest& in = request.revoke_grant();
  if (in.reason().empty()) return absl::InvalidArgumentError("a revocation needs a reason");
  absl::StatusOr<store::Grant> found = absl::InvalidArgumentError(
      "name the grant: its id, or the workspace and connector whose current grant it is");
  if (!in.grant_id().empty()) {
    found = store_->GetGrant(in.grant_id());
  } else if (!in.workspace_id().empty() && !in.connector_id().empty()) {
    found = store_->FindCurrentGrant(in.workspace_id(), in.connector_id());
  }
  GV_RETURN_IF_ERROR(found.status());
  const store::Grant& grant = *found;
  if (grant.status == store::GrantStatus::kRevoked) {
    return absl::FailedPreconditionError(
        absl::StrCat("grant ", grant.grant_id, " is already revoked (", grant.status_reason, ")"));
  }
  // 1. The audit record first: if it cannot be written, nothing happens.
  audit::Event e;
  e.type = "grant.revoked";
  e.actor.admin_user = request.admin_user();
  e.actor.uid = connection.peer().uid;
  e.actor.pid = connection.peer().pid;
  AddGrantFields(grant, e);
  e.outcome = "ok";
  e.reason = in.reason();
  if (absl::Status audited = Audit(e, audit::Durability::kDurable); !audited.ok()) {
    return absl::Status(audited.code(),
                        absl::StrCat("the audit log cannot record the revocation, so nothing was "
                                     "revoked: ",
                                     audited.message()));
  }
  // 2. Durable: revoked, and its upstream revocation pending, in one transaction.
  const std::string reason = absl::StrCat("revoked by ", request.admin_user(), ": ", in.reason());
  if (absl::Status revoked = store_->RevokeGrant(grant.grant_id, reason, clock_->Now());
      !revoked.ok()) {
    e.outcome = "failed";
    e.details["error"] = std::string(revoked.message());
    (void)Audit(std::move(e), audit::Durability::kDurable);
    return revoked;
  }
  // 3 and 4. Its proxied calls end, the cached token goes, every resolve
  // waiting on the grant fails with REVOKED, and the directory forgets it.
  RetireInMemory(grant.workspace_id, grant.connector_id, grant.grant_id, reason);
  // 5. Agent hosts subscribed to the workspace hear of it.
  PublishGrantEvent(GrantEventOf(v1::GrantEvent::REVOKED, grant, reason, clock_->Now()));
  // 6. The provider, in the background (retried until it confirms).
  if (trail_.wake_revoker) trail_.wake_revoker();
  spdlog::info("grant.revoked admin={} uid={} workspace={} connector={} grant={} reason={}",
               EscapeForLog(request.admin_user()), connection.peer().uid,
               EscapeForLog(grant.workspace_id), EscapeForLog(grant.connector_id), grant.grant_id,
               EscapeTextForLog(in.reason()));
  GV_ASSIGN_OR_RETURN(store::Grant now, store_->GetGrant(grant.grant_id));
  FillGrant(now, response.mutable_revoke_grant()->mutable_grant());
  return absl::OkStatus();
}

}  // namespace grantvault::front
