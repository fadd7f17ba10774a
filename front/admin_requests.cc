// The admin requests on admin.sock: who may make them (CheckAdmin), and the key
// and grant handlers (RunAdmin); OAuth, revocation and export have units of their own.
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log_escape.h"
#include "common/status.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {

using internal::AdminEvent;
using internal::AuditFailedAfter;
using internal::UnixMillis;

namespace {

constexpr uint32_t kDefaultRewrapBatch = 1000;

v1::KeyVersion ToProto(const keys::KeyStatus& k) {
  v1::KeyVersion out;
  out.set_version(static_cast<uint32_t>(k.version.version));
  out.set_label(k.version.label);
  out.set_key_id_hex(k.version.key_id_hex);
  switch (k.version.state) {
    case store::KeyState::kActive:
      out.set_state(v1::KeyVersion::ACTIVE);
      break;
    case store::KeyState::kInactive:
      out.set_state(v1::KeyVersion::INACTIVE);
      break;
    case store::KeyState::kRetired:
      out.set_state(v1::KeyVersion::RETIRED);
      break;
  }
  out.set_sealed_records(static_cast<uint64_t>(k.sealed_records));
  out.set_in_token(k.in_token);
  out.set_created_at_ms(UnixMillis(k.version.created_at));
  if (k.version.retired_at) out.set_retired_at_ms(UnixMillis(*k.version.retired_at));
  return out;
}

void ToProto(const store::Grant& g, v1::GrantInfo* out) {
  out->set_grant_id(g.grant_id);
  out->set_workspace_id(g.workspace_id);
  out->set_connector_id(g.connector_id);
  out->set_connector_type(g.connector_type);
  out->set_account_id(g.account_id);
  for (const std::string& scope : g.scopes) out->add_scopes(scope);
  out->set_status(std::string(store::GrantStatusName(g.status)));
  out->set_status_reason(g.status_reason);
  out->set_authorized_by(g.authorized_by);
  out->set_created_at_ms(UnixMillis(g.created_at));
  out->set_updated_at_ms(UnixMillis(g.updated_at));
  if (g.access_token_expires_at) {
    out->set_access_token_expires_at_ms(UnixMillis(*g.access_token_expires_at));
  }
  for (const auto& [k, v] : g.metadata) (*out->mutable_metadata())[k] = v;
}

absl::StatusOr<v1::KeyVersion> FindKeyStatus(keys::Custodian& keys, int version) {
  GV_ASSIGN_OR_RETURN(std::vector<keys::KeyStatus> all, keys.Status());
  for (const keys::KeyStatus& k : all) {
    if (k.version.version == version) return ToProto(k);
  }
  return absl::NotFoundError(absl::StrCat("there is no key version ", version));
}

}  // namespace

absl::Status Service::CheckAdmin(const ipc::Connection& connection, const v1::Request& request) {
  if (request.admin_user().empty()) {
    return absl::InvalidArgumentError("admin requests must name the admin user (admin_user)");
  }
  const ipc::PeerCredentials& peer = connection.peer();
  if (peer.uid == ::geteuid()) return absl::OkStatus();
  absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> caller =
      SharedCaller(CallerOf(connection).get());
  // A rule of the caller policy that names the peer decides by its role.
  // (Matched on what was attested at connect: an `exe` rule on the executable
  // identified then, re-checked here as before a release; an `exe_sha256` rule
  // never matches here, since admin peers' executables are not hashed.)
  if (caller.ok() && agents_.resolver != nullptr) {
    if (std::shared_ptr<const policy::Policy> current = agents_.resolver->policy()) {
      if (const policy::CallerRule* rule = current->FindCaller(**caller); rule != nullptr) {
        if (rule->role == policy::Role::kAdmin) {
          // A process that executed another program since it connected is no
          // longer the one the rule named.
          return policy::StillSameCaller(**caller, ExecutableChecksOf(*rule));
        }
        return absl::PermissionDeniedError(
            absl::StrCat("uid ", peer.uid, " has the agent role in the caller policy (",
                         rule->where, "): agents may only resolve and subscribe on agent.sock"));
      }
    }
  }
  std::vector<gid_t> groups = {peer.gid};
  if (caller.ok()) {
    groups.insert(groups.end(), (*caller)->supplementary_groups.begin(),
                  (*caller)->supplementary_groups.end());
  }
  absl::MutexLock lock(&mu_);
  if (std::find(admin_.uids.begin(), admin_.uids.end(), peer.uid) != admin_.uids.end()) {
    return absl::OkStatus();
  }
  for (gid_t gid : groups) {
    if (std::find(admin_.gids.begin(), admin_.gids.end(), gid) != admin_.gids.end()) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("uid ", peer.uid, " is not allowed to administer grantvault"));
}

void Service::RunAdmin(const std::shared_ptr<ipc::Connection>& connection, v1::Request& request) {
  const uint64_t id = request.request_id();
  v1::Response r;
  r.set_request_id(id);
  absl::Status status;
  keys::Custodian& keys = *custodian_;
  switch (request.body_case()) {
    case v1::Request::kKeyStatus: {
      absl::StatusOr<std::vector<keys::KeyStatus>> all = keys.Status();
      status = all.status();
      if (all.ok()) {
        for (const keys::KeyStatus& k : *all) *r.mutable_key_status()->add_keys() = ToProto(k);
      }
      break;
    }
    case v1::Request::kRotateKey: {
      absl::StatusOr<store::KeyVersion> v = keys.Rotate();
      status = v.status();
      if (v.ok()) {
        spdlog::info("key.rotated admin={} uid={} new_kek={}", EscapeForLog(request.admin_user()),
                     connection->peer().uid, v->label);
        audit::Event e = AdminEvent(request, *connection, "key.rotated");
        e.details["kek"] = v->label;
        absl::StatusOr<v1::KeyVersion> k = FindKeyStatus(keys, v->version);
        status = AuditFailedAfter("the rotation", Audit(std::move(e), audit::Durability::kDurable));
        if (status.ok()) status = k.status();
        if (k.ok()) *r.mutable_rotate_key()->mutable_key() = *k;
      }
      break;
    }
    case v1::Request::kRewrap: {
      const uint32_t batch =
          request.rewrap().batch_size() == 0 ? kDefaultRewrapBatch : request.rewrap().batch_size();
      absl::StatusOr<keys::RewrapResult> result =
          keys.Rewrap(batch, [&](const keys::RewrapProgress& p) {
            v1::Response progress;
            progress.set_request_id(id);
            progress.set_more(true);
            progress.mutable_rewrap_progress()->set_done(static_cast<uint64_t>(p.done));
            progress.mutable_rewrap_progress()->set_remaining(static_cast<uint64_t>(p.remaining));
            SendResponse(*connection, progress);
          });
      status = result.status();
      if (result.ok()) {
        spdlog::info("keys.rewrapped admin={} uid={} rewrapped={} failures={}",
                     EscapeForLog(request.admin_user()), connection->peer().uid, result->rewrapped,
                     result->failures.size());
        audit::Event e = AdminEvent(request, *connection, "keys.rewrapped");
        e.details["rewrapped"] = absl::StrCat(result->rewrapped);
        e.details["failures"] = absl::StrCat(result->failures.size());
        e.details["active_kek"] = keys.Health().active_kek;
        status = AuditFailedAfter("the rewrap", Audit(std::move(e), audit::Durability::kDurable));
        v1::RewrapReply* reply = r.mutable_rewrap();
        reply->set_rewrapped(static_cast<uint64_t>(result->rewrapped));
        reply->set_changed_meanwhile(static_cast<uint64_t>(result->changed_meanwhile));
        // Keep the answer inside one frame: the count is in the log and in
        // key status; the first failures are enough to act on.
        for (size_t i = 0; i < result->failures.size() && i < 100; ++i) {
          const auto& f = result->failures[i];
          v1::RewrapReply::Failure* out = reply->add_failures();
          out->set_owner_id(f.key.owner_id);
          out->set_purpose(f.key.purpose);
          out->set_kek_label(f.kek_label);
          out->set_reason(f.reason);
        }
      }
      break;
    }
    case v1::Request::kRetireKey: {
      const int version = static_cast<int>(request.retire_key().version());
      status = keys.Retire(version);
      if (status.ok()) {
        spdlog::info("key.retired admin={} uid={} version={}", EscapeForLog(request.admin_user()),
                     connection->peer().uid, version);
        audit::Event e = AdminEvent(request, *connection, "key.retired");
        e.details["version"] = absl::StrCat(version);
        absl::StatusOr<v1::KeyVersion> k = FindKeyStatus(keys, version);
        status =
            AuditFailedAfter("the retirement", Audit(std::move(e), audit::Durability::kDurable));
        if (status.ok()) status = k.status();
        if (k.ok()) *r.mutable_retire_key()->mutable_key() = *k;
      }
      break;
    }
    case v1::Request::kAuditPublicKey: {
      absl::StatusOr<keys::AuditPublicKey> audit = keys.AuditKey();
      status = audit.status();
      if (audit.ok()) {
        r.mutable_audit_public_key()->set_label(audit->label);
        r.mutable_audit_public_key()->set_pem(audit->pem);
      }
      break;
    }
    case v1::Request::kListGrants: {
      if (request.list_grants().workspace_id().empty()) {
        status = absl::InvalidArgumentError("list grants needs a workspace id");
        break;
      }
      absl::StatusOr<std::vector<store::Grant>> grants =
          store_->ListGrants(request.list_grants().workspace_id());
      status = grants.status();
      if (grants.ok()) {
        v1::ListGrantsReply* reply = r.mutable_list_grants();
        for (const store::Grant& g : *grants) FillGrant(g, reply->add_grants());
      }
      break;
    }
    case v1::Request::kShowGrant: {
      absl::StatusOr<store::Grant> grant = store_->GetGrant(request.show_grant().grant_id());
      status = grant.status();
      if (grant.ok()) FillGrant(*grant, r.mutable_show_grant()->mutable_grant());
      break;
    }
    case v1::Request::kRevokeGrant:
      status = RunRevoke(*connection, request, r);
      break;
    case v1::Request::kAuditExport:
      status = RunAuditExport(connection, request, r);
      break;
    case v1::Request::kSuggestScopes: {
      const v1::SuggestScopesRequest& in = request.suggest_scopes();
      std::shared_ptr<const policy::Policy> current =
          agents_.resolver ? agents_.resolver->policy() : nullptr;
      if (current == nullptr) {
        status = absl::FailedPreconditionError("the daemon has no caller policy (docs/policy.md)");
        break;
      }
      absl::StatusOr<std::vector<std::string>> scopes =
          current->SuggestScopes(in.workspace_id(), in.connector_id());
      status = scopes.status();
      if (!scopes.ok()) break;
      v1::SuggestScopesReply* out = r.mutable_suggest_scopes();
      for (const std::string& scope : *scopes) out->add_scopes(scope);
      const policy::WorkspacePolicy& ws = current->workspaces().find(in.workspace_id())->second;
      for (const policy::ToolDecl& tool : ws.tools) {
        if (tool.connector != in.connector_id()) continue;
        v1::SuggestScopesReply::Tool* t = out->add_tools();
        t->set_name(tool.name);
        for (const std::string& scope : tool.scopes) t->add_scopes(scope);
        t->set_where(tool.where);
      }
      break;
    }
    case v1::Request::kRegisterConnector:
    case v1::Request::kListConnectors:
    case v1::Request::kBeginAuthorization:
    case v1::Request::kCompleteAuthorization:
      status = RunOAuth(*connection, request, r);
      break;
    default:
      status = absl::UnimplementedError("this daemon does not serve that admin request yet");
  }
  if (!status.ok()) {
    spdlog::warn("admin request failed: admin={} uid={} request={} error={}",
                 EscapeForLog(request.admin_user()), connection->peer().uid,
                 static_cast<int>(request.body_case()),
                 EscapeTextForLog(std::string(status.message())));
    r.clear_body();
    *r.mutable_error() = StatusToError(status);
  }
  SendResponse(*connection, r);
}

void Service::FillGrant(const store::Grant& grant, v1::GrantInfo* out) {
  ToProto(grant, out);
  absl::StatusOr<store::UpstreamRevocation> upstream =
      store_->GetUpstreamRevocation(grant.grant_id);
  if (!upstream.ok()) return;
  out->set_upstream_revocation(std::string(store::UpstreamRevocationStateName(upstream->state)));
  out->set_upstream_revocation_attempts(static_cast<uint32_t>(upstream->attempts));
  out->set_upstream_revocation_error(upstream->last_error);
  if (upstream->state == store::UpstreamRevocationState::kPending) {
    out->set_upstream_revocation_next_attempt_ms(UnixMillis(upstream->next_attempt_at));
  }
}

}  // namespace grantvault::front
