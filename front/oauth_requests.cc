// The OAuth requests on admin.sock: register and list connectors, begin and complete
// an authorization (the new grant audited, or revoked when it cannot be).

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log_escape.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "front/proxy.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "oauth/pkce.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {

using internal::AddGrantFields;
using internal::AdminEvent;
using internal::AuditFailedAfter;
using internal::GrantEventOf;
using internal::UnixMillis;

namespace {

// Caller-supplied items (scopes) for one log field: each escaped, joined by ','.
template <typename List>
std::string EscapedList(const List& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ',';
    out += EscapeForLog(item);
  }
  return out.empty() ? EscapeForLog("") : out;
}

void ToProto(const store::ConnectorRegistration& reg, const oauth::Catalog* catalog,
             v1::ConnectorInfo* out) {
  out->set_connector_id(reg.connector_id);
  out->set_connector_type(reg.connector_type);
  if (catalog != nullptr) {
    if (const oauth::ConnectorType* type = catalog->Find(reg.connector_type)) {
      out->set_display_name(type->display_name);
    }
  }
  out->set_client_id(reg.client_id);
  out->set_issuer(reg.issuer);
  for (const auto& [k, v] : reg.parameters) (*out->mutable_parameters())[k] = v;
  out->set_registered_by(reg.registered_by);
  out->set_created_at_ms(UnixMillis(reg.created_at));
  out->set_updated_at_ms(UnixMillis(reg.updated_at));
  for (const std::string& uri : reg.redirect_uris) out->add_redirect_uris(uri);
  // The bases the proxy uses: the catalog's (parameters filled) or the registration's.
  std::vector<std::string> bases = reg.api_bases;
  if (catalog != nullptr) {
    if (const oauth::ConnectorType* type = catalog->Find(reg.connector_type);
        type != nullptr && !type->api_bases.empty()) {
      absl::StatusOr<oauth::ResolvedEndpoints> resolved =
          oauth::Catalog::Resolve(*type, reg.parameters);
      if (resolved.ok()) bases = resolved->api_bases;
    }
  }
  for (const std::string& url : bases) out->add_api_base_urls(url);
  out->set_allow_private_network(reg.allow_private_network);
}

}  // namespace

absl::Status Service::RunOAuth(const ipc::Connection& connection, v1::Request& request,
                               v1::Response& r) {
  const std::string& admin = request.admin_user();
  if (request.has_list_connectors()) {
    GV_ASSIGN_OR_RETURN(std::vector<store::ConnectorRegistration> all,
                        store_->ListConnectorRegistrations());
    for (const auto& reg : all) {
      ToProto(reg, oauth_.catalog, r.mutable_list_connectors()->add_connectors());
    }
    return absl::OkStatus();
  }
  if (oauth_.authorizer == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("the OAuth engine is not available: ", oauth_.unavailable_reason));
  }
  oauth::AuthorizationFlow& authorizer = *oauth_.authorizer;
  switch (request.body_case()) {
    case v1::Request::kRegisterConnector: {
      v1::RegisterConnectorRequest& in = *request.mutable_register_connector();
      // The secret leaves the protobuf message at once.
      SecretBytes client_secret = SecretBytes::TakeFrom(*in.mutable_client_secret());
      store::ConnectorRegistration reg;
      reg.connector_id = in.connector_id();
      reg.connector_type = in.connector_type();
      reg.client_id = in.client_id();
      reg.issuer = in.issuer();
      reg.parameters.insert(in.parameters().begin(), in.parameters().end());
      reg.redirect_uris.assign(in.redirect_uris().begin(), in.redirect_uris().end());
      reg.api_bases.assign(in.api_base_urls().begin(), in.api_base_urls().end());
      reg.allow_private_network = in.allow_private_network();
      reg.registered_by = admin;
      GV_ASSIGN_OR_RETURN(store::ConnectorRegistration stored,
                          authorizer.Register(std::move(reg), client_secret));
      if (proxy_ != nullptr) proxy_->ForgetConnector(stored.connector_id);
      spdlog::info("connector.registered admin={} uid={} connector={} type={} client_id={}",
                   EscapeForLog(admin), connection.peer().uid, EscapeForLog(stored.connector_id),
                   EscapeForLog(stored.connector_type), EscapeForLog(stored.client_id));
      audit::Event e = AdminEvent(request, connection, "connector.registered");
      e.connector_id = stored.connector_id;
      e.details["connector_type"] = stored.connector_type;
      e.details["client_id"] = stored.client_id;
      if (!stored.redirect_uris.empty()) {
        e.details["redirect_uris"] = absl::StrJoin(stored.redirect_uris, " ");
      }
      if (!stored.api_bases.empty()) e.details["api_bases"] = absl::StrJoin(stored.api_bases, " ");
      if (stored.allow_private_network) e.details["allow_private_network"] = "true";
      GV_RETURN_IF_ERROR(
          AuditFailedAfter("the registration", Audit(std::move(e), audit::Durability::kDurable)));
      ToProto(stored, oauth_.catalog, r.mutable_register_connector()->mutable_connector());
      return absl::OkStatus();
    }
    case v1::Request::kBeginAuthorization: {
      const v1::BeginAuthorizationRequest& in = request.begin_authorization();
      // What the workspace's declared tools need, when the policy says.
      std::optional<std::vector<std::string>> needed;
      if (std::shared_ptr<const policy::Policy> current =
              agents_.resolver ? agents_.resolver->policy() : nullptr) {
        absl::StatusOr<std::vector<std::string>> suggested =
            current->SuggestScopes(in.workspace_id(), in.connector_id());
        if (suggested.ok()) needed = std::move(*suggested);
      }
      std::vector<std::string> scopes(in.scopes().begin(), in.scopes().end());
      if (in.from_manifests()) {
        if (!scopes.empty()) {
          return absl::InvalidArgumentError("give either scopes or from_manifests, not both");
        }
        if (!needed) {
          return absl::FailedPreconditionError(absl::StrCat(
              "the caller policy declares no tool for connector '", in.connector_id(),
              "' in workspace '", in.workspace_id(), "', so there is no scope set to request"));
        }
        scopes = *needed;
      }
      GV_ASSIGN_OR_RETURN(oauth::AuthorizationFlow::Started started,
                          authorizer.Begin(in.workspace_id(), in.connector_id(), std::move(scopes),
                                           admin, in.redirect_uri()));
      spdlog::info("authorization.started admin={} uid={} workspace={} connector={} scopes={}",
                   EscapeForLog(admin), connection.peer().uid, EscapeForLog(in.workspace_id()),
                   EscapeForLog(in.connector_id()), EscapedList(started.scopes));
      v1::BeginAuthorizationReply* out = r.mutable_begin_authorization();
      out->set_authorization_url(started.authorization_url);
      out->set_expires_at_ms(UnixMillis(started.expires_at));
      for (const std::string& s : started.scopes) out->add_scopes(s);
      if (needed) {
        for (const std::string& s : *needed) out->add_needed_scopes(s);
        for (const std::string& s : started.scopes) {
          if (std::find(needed->begin(), needed->end(), s) == needed->end() &&
              std::find(started.required_scopes.begin(), started.required_scopes.end(), s) ==
                  started.required_scopes.end()) {
            out->add_unneeded_scopes(s);
          }
        }
        if (out->unneeded_scopes_size() > 0) {
          spdlog::warn(
              "authorization.wider_than_needed admin={} workspace={} connector={} unneeded={}",
              EscapeForLog(admin), EscapeForLog(in.workspace_id()), EscapeForLog(in.connector_id()),
              EscapedList(out->unneeded_scopes()));
        }
      }
      return absl::OkStatus();
    }
    case v1::Request::kCompleteAuthorization: {
      v1::CompleteAuthorizationRequest& in = *request.mutable_complete_authorization();
      oauth::Callback callback;
      if (in.has_code_and_state()) {
        callback.state = in.code_and_state().state();
        callback.code = SecretBytes::TakeFrom(*in.mutable_code_and_state()->mutable_code());
        if (callback.code.empty() || callback.state.empty()) {
          return absl::InvalidArgumentError("both the code and the state are required");
        }
      } else {
        absl::StatusOr<oauth::Callback> parsed = oauth::ParseCallback(in.callback_url());
        WipeMemory(in.mutable_callback_url()->data(), in.callback_url().size());
        in.clear_callback_url();
        GV_RETURN_IF_ERROR(parsed.status());
        callback = std::move(*parsed);
      }
      absl::StatusOr<oauth::AuthorizationFlow::Completed> done = authorizer.Complete(callback);
      if (!done.ok()) {
        spdlog::warn("authorization.failed admin={} uid={} reason={}", EscapeForLog(admin),
                     connection.peer().uid, EscapeTextForLog(std::string(done.status().message())));
        return done.status();
      }
      const store::Grant& g = done->grant;
      // The store has committed: the replaced grant is revoked there. It
      // leaves memory now, before anything below can fail, so that no path
      // (a failed audit write included) leaves its token servable.
      if (done->replaced_grant_id) {
        RetireInMemory(g.workspace_id, g.connector_id, *done->replaced_grant_id,
                       absl::StrCat("replaced by ", g.grant_id));
      } else if (agents_.resolver != nullptr) {
        agents_.resolver->ForgetGrant(g.workspace_id, g.connector_id);
      }
      spdlog::info("{} admin={} uid={} workspace={} connector={} grant={} account={} scopes={}{}",
                   done->replaced_grant_id ? "grant.scope_changed" : "grant.authorized",
                   EscapeForLog(g.authorized_by), connection.peer().uid,
                   EscapeForLog(g.workspace_id), EscapeForLog(g.connector_id), g.grant_id,
                   EscapeForLog(g.account_id), EscapedList(g.scopes),
                   done->replaced_grant_id ? " replaced=" + *done->replaced_grant_id : "");
      audit::Event e =
          AdminEvent(request, connection,
                     done->replaced_grant_id ? "grant.scope_changed" : "grant.authorized");
      e.actor.admin_user = g.authorized_by;
      AddGrantFields(g, e);
      if (done->replaced_grant_id) e.details["replaced_grant_id"] = *done->replaced_grant_id;
      if (absl::Status audited = Audit(std::move(e), audit::Durability::kDurable); !audited.ok()) {
        // Fail closed: a grant nobody can account for is not left usable.
        const std::string reason = "the audit log could not record its authorization";
        if (absl::Status revoked = store_->SetGrantStatus(g.grant_id, store::GrantStatus::kRevoked,
                                                          reason, clock_->Now());
            !revoked.ok()) {
          spdlog::error("grant.unaccounted grant={}: it could not be revoked: {}", g.grant_id,
                        EscapeTextForLog(std::string(revoked.message())));
        }
        RetireInMemory(g.workspace_id, g.connector_id, g.grant_id, reason);
        // Agent hosts hear that the grant they used is gone (no AUTHORIZED
        // event follows to tell them of its successor).
        if (done->replaced_grant_id) {
          absl::StatusOr<store::Grant> replaced = store_->GetGrant(*done->replaced_grant_id);
          if (replaced.ok()) {
            PublishGrantEvent(GrantEventOf(v1::GrantEvent::REVOKED, *replaced,
                                           replaced->status_reason, clock_->Now()));
          }
        }
        return absl::Status(audited.code(),
                            absl::StrCat("the audit log could not record the authorization, so "
                                         "the new grant was revoked: ",
                                         audited.message()));
      }
      FillGrant(g, r.mutable_complete_authorization()->mutable_grant());
      if (done->replaced_grant_id) {
        r.mutable_complete_authorization()->set_replaced_grant_id(*done->replaced_grant_id);
      }
      v1::GrantEvent event = GrantEventOf(v1::GrantEvent::AUTHORIZED, g, "", clock_->Now());
      if (done->replaced_grant_id) event.set_replaced_grant_id(*done->replaced_grant_id);
      PublishGrantEvent(event);
      return absl::OkStatus();
    }
    default:
      return absl::InternalError("unexpected OAuth request");
  }
}

}  // namespace grantvault::front
