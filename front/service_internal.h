// Helpers that more than one of the Service's units (front/*.cc) need: error
// answers, times in the protocol's milliseconds, the fields of audit records.
#ifndef GRANTVAULT_FRONT_SERVICE_INTERNAL_H_
#define GRANTVAULT_FRONT_SERVICE_INTERNAL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "common/log_escape.h"
#include "common/strings.h"
#include "front/service.h"  // StatusToError
#include "grantvault/v1/envelope.pb.h"
#include "ipc/server.h"
#include "spdlog/spdlog.h"
#include "store/grant_store.h"

namespace grantvault::front::internal {

// Agent requests without a deadline of their own.
inline constexpr absl::Duration kDefaultAgentDeadline = absl::Seconds(30);

inline v1::Response ErrorResponse(uint64_t request_id, v1::Error::Code code, std::string message) {
  v1::Response r;
  r.set_request_id(request_id);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
  return r;
}

// The answer to request `request_id` that `status` (not OK) refuses.
inline v1::Response ErrorResponse(uint64_t request_id, const absl::Status& status) {
  v1::Response r;
  r.set_request_id(request_id);
  *r.mutable_error() = StatusToError(status);
  return r;
}

inline int64_t UnixMillis(absl::Time t) {
  return t == absl::InfinitePast() ? 0 : absl::ToUnixMillis(t);
}

// An event done by an admin on admin.sock.
inline audit::Event AdminEvent(const v1::Request& request, const ipc::Connection& connection,
                               std::string type) {
  audit::Event e;
  e.type = std::move(type);
  e.actor.admin_user = request.admin_user();
  e.actor.uid = connection.peer().uid;
  e.actor.pid = connection.peer().pid;
  e.outcome = "ok";
  return e;
}

// An admin operation that succeeded but could not be audited is reported as
// failed: the admin must know the trail has a gap.
inline absl::Status AuditFailedAfter(std::string_view what, const absl::Status& audited) {
  if (audited.ok()) return audited;
  return absl::Status(audited.code(),
                      absl::StrCat(Sv(what), " was done, but the audit log could not record it: ",
                                   audited.message()));
}

inline void AddGrantFields(const store::Grant& g, audit::Event& e) {
  e.workspace_id = g.workspace_id;
  e.grant_id = g.grant_id;
  e.connector_id = g.connector_id;
  e.account_id = g.account_id;
  e.scopes = g.scopes;
}

// The event subscribers of the grant's workspace are sent.
inline v1::GrantEvent GrantEventOf(v1::GrantEvent::Kind kind, const store::Grant& g,
                                   std::string reason, absl::Time at) {
  v1::GrantEvent event;
  event.set_kind(kind);
  event.set_workspace_id(g.workspace_id);
  event.set_connector_id(g.connector_id);
  event.set_grant_id(g.grant_id);
  event.set_account_id(g.account_id);
  event.set_reason(std::move(reason));
  event.set_at_ms(UnixMillis(at));
  return event;
}

// A released token, named by its grant only (debug level: a line per resolve).
inline void LogRelease(const ipc::PeerCredentials& peer, const v1::ResolveRequest& in,
                       const std::string& grant_id) {
  spdlog::debug("token.released uid={} pid={} workspace={} connector={} grant={} tool={}", peer.uid,
                peer.pid, EscapeForLog(in.workspace_id()), EscapeForLog(in.connector_id()),
                grant_id, EscapeForLog(in.tool()));
}

}  // namespace grantvault::front::internal

#endif  // GRANTVAULT_FRONT_SERVICE_INTERNAL_H_
