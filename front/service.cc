// The Service itself: construction, configuration and policy reloads, connect and
// disconnect, caller admission on agent.sock, and the dispatch of every frame.
#include "front/service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "front/proxy.h"
#include "front/service_internal.h"
#include "ipc/asio.h"
#include "ipc/client.h"

namespace grantvault::front {

using internal::ErrorResponse;
using internal::kDefaultAgentDeadline;

namespace {

bool IsAdminRequest(const v1::Request& r) {
  switch (r.body_case()) {
    case v1::Request::kKeyStatus:
    case v1::Request::kRotateKey:
    case v1::Request::kRewrap:
    case v1::Request::kRetireKey:
    case v1::Request::kAuditPublicKey:
    case v1::Request::kRegisterConnector:
    case v1::Request::kListConnectors:
    case v1::Request::kBeginAuthorization:
    case v1::Request::kCompleteAuthorization:
    case v1::Request::kListGrants:
    case v1::Request::kShowGrant:
    case v1::Request::kSuggestScopes:
    case v1::Request::kRevokeGrant:
    case v1::Request::kAuditExport:
      return true;
    default:
      return false;
  }
}

}  // namespace

v1::Error StatusToError(const absl::Status& status) {
  v1::Error e;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
      e.set_code(v1::Error::INVALID_ARGUMENT);
      break;
    case absl::StatusCode::kUnauthenticated:
      e.set_code(v1::Error::UNAUTHENTICATED);
      break;
    case absl::StatusCode::kPermissionDenied:
      e.set_code(v1::Error::PERMISSION_DENIED);
      break;
    case absl::StatusCode::kNotFound:
      e.set_code(v1::Error::NOT_FOUND);
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
      e.set_code(v1::Error::UNAVAILABLE);
      e.set_retry_after_ms(RetryAfterMillis(status).value_or(1000));
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.set_code(v1::Error::DEADLINE_EXCEEDED);
      break;
    case absl::StatusCode::kResourceExhausted:
      e.set_code(v1::Error::RESOURCE_EXHAUSTED);
      e.set_retry_after_ms(RetryAfterMillis(status).value_or(1000));
      break;
    case absl::StatusCode::kFailedPrecondition:
      // The token engine names these two in the message (tokens/refresher.h).
      // (the code then says it; the message drops the prefix).
      for (const auto& [prefix, code] :
           {std::pair{std::string_view("REVOKED: "), v1::Error::REVOKED},
            std::pair{std::string_view("REAUTH_REQUIRED: "), v1::Error::REAUTH_REQUIRED}}) {
        if (absl::StartsWith(status.message(), Sv(prefix))) {
          e.set_code(code);
          e.set_message(std::string(status.message().substr(prefix.size())));
          return e;
        }
      }
      e.set_code(v1::Error::FAILED_PRECONDITION);
      break;
    case absl::StatusCode::kAlreadyExists:
      e.set_code(v1::Error::ALREADY_EXISTS);
      break;
    case absl::StatusCode::kCancelled:
      e.set_code(v1::Error::CANCELLED);
      break;
    default:
      e.set_code(v1::Error::INTERNAL);
      break;
  }
  e.set_message(std::string(status.message()));
  return e;
}

void SendResponse(ipc::Connection& connection, const v1::Response& response) {
  std::string bytes;
  if (!response.SerializeToString(&bytes) || bytes.empty() || bytes.size() > 65536) {
    v1::Response error = ErrorResponse(response.request_id(), v1::Error::INTERNAL,
                                       "the response does not fit in one frame");
    error.SerializeToString(&bytes);
    connection.Send(std::move(bytes), /*final=*/true);
    return;
  }
  connection.Send(std::move(bytes), /*final=*/!response.more());
}

class Service::Handler final : public ipc::FrameHandler {
 public:
  Handler(Service* service, v1::HelloReply::Role role) : service_(service), role_(role) {}
  void OnFrame(const std::shared_ptr<ipc::Connection>& connection,
               std::string_view payload) override {
    service_->OnFrame(role_, connection, payload);
  }
  void OnConnect(const std::shared_ptr<ipc::Connection>& connection) override {
    service_->OnConnect(role_, connection);
  }
  void OnDisconnect(const ipc::Connection& connection) override {
    service_->OnDisconnect(connection);
  }
  // Over a connection limit: RESOURCE_EXHAUSTED for request 0, then closed.
  std::string RefusalFrame(const ipc::PeerCredentials&, std::string_view reason) override {
    return ErrorResponse(0, v1::Error::RESOURCE_EXHAUSTED,
                         absl::StrCat("connection refused: ", Sv(reason)))
        .SerializeAsString();
  }

 private:
  Service* const service_;
  const v1::HelloReply::Role role_;
};

struct Service::Workers {
  explicit Workers(size_t n) : pool(n) {}
  boost::asio::thread_pool pool;
};

Service::Service(store::GrantStore* store, keys::Custodian* custodian, OAuth oauth,
                 AdminPolicy admin, size_t worker_threads, Clock* clock)
    : store_(store),
      custodian_(custodian),
      oauth_(std::move(oauth)),
      clock_(clock),
      started_(clock->Now()),
      agent_handler_(std::make_unique<Handler>(this, v1::HelloReply::AGENT)),
      admin_handler_(std::make_unique<Handler>(this, v1::HelloReply::ADMIN)),
      workers_(std::make_unique<Workers>(std::max<size_t>(1, worker_threads))),
      admin_(std::move(admin)) {}

Service::~Service() { Stop(); }

ipc::FrameHandler* Service::agent_handler() { return agent_handler_.get(); }
ipc::FrameHandler* Service::admin_handler() { return admin_handler_.get(); }

void Service::ReloadAdminPolicy(AdminPolicy admin) {
  absl::MutexLock lock(&mu_);
  admin_ = std::move(admin);
}

void Service::Stop() {
  if (agent_workers_) agent_workers_->pool.join();
  workers_->pool.join();
  // What the tally held back is recorded before the log closes.
  for (const UnmatchedCallerTally::Summary& held : unmatched_callers_.Drain()) {
    RecordUnmatched(held);
  }
}

void Service::EnableAgents(Agents agents) {
  agent_workers_ = std::make_unique<Workers>(std::max<size_t>(1, agents.threads));
  agents_ = std::move(agents);
  if (agents_.resolver != nullptr && agents_.resolver->policy() != nullptr) {
    absl::MutexLock lock(&snapshot_mu_);
    policy_state_.loaded_at = clock_->Now();
  }
}

absl::Status Service::ReloadPolicy(bool deny_on_failure) {
  if (agents_.resolver == nullptr) return absl::FailedPreconditionError("agents are not served");
  absl::StatusOr<policy::Policy> fresh = policy::Policy::Load(agents_.policy_file);
  const absl::Time now = clock_->Now();
  if (!fresh.ok()) {
    const std::string why(fresh.status().message());
    // "keep" keeps what is in force, which may be nothing (no file at start,
    // or an earlier failure under "deny").
    const bool none_in_force = deny_on_failure || agents_.resolver->policy() == nullptr;
    {
      absl::MutexLock lock(&snapshot_mu_);
      policy_state_.last_reload_error = why;
      policy_state_.last_reload_failed_at = now;
      policy_state_.denying = none_in_force;
    }
    if (!deny_on_failure) {
      return absl::Status(
          fresh.status().code(),
          absl::StrCat(none_in_force
                           ? "no policy is in force, so every agent request stays refused: "
                           : "the previous policy stays in force: ",
                       why));
    }
    // Fail closed, as the operator chose: the previous policy may be wider
    // than the one that was meant to replace it.
    agents_.resolver->RefuseAll(absl::PermissionDeniedError(absl::StrCat(
        "the caller policy's last reload failed and [policy] reload_failure = \"deny\", so "
        "every agent request is refused until a reload succeeds: ",
        why)));
    EndRefusedSubscriptions();
    return absl::Status(fresh.status().code(),
                        absl::StrCat("every agent request is refused until a reload succeeds "
                                     "(reload_failure = \"deny\"): ",
                                     why));
  }
  agents_.resolver->SetPolicy(std::make_shared<const policy::Policy>(std::move(*fresh)));
  {
    absl::MutexLock lock(&snapshot_mu_);
    policy_state_ = PolicyState{now, "", absl::InfinitePast(), false};
  }
  EndRefusedSubscriptions();
  return absl::OkStatus();
}

void Service::OnConnect(v1::HelloReply::Role role,
                        const std::shared_ptr<ipc::Connection>& connection) {
  auto state = std::make_shared<ConnectionState>();
  // Admin peers too: the admin check needs their supplementary groups (and
  // the policy's role), read now, while the pid is surely the peer's.
  state->caller = AttestedSlot(*connection);
  std::shared_ptr<CallerSlot> slot = state->caller;
  connection->set_context(std::move(state));
  // Admin peers are judged by the admin check of each request instead.
  if (role != v1::HelloReply::AGENT || slot == nullptr) return;
  // A caller that cannot be attested, or that no rule names, is told why
  // (for request 0, before its Hello is read) and closed at once: it must not
  // hold a connection slot until it speaks or idles out.
  AdmitAgentCaller(*connection, slot.get(), 0);
}

bool Service::AdmitAgentCaller(ipc::Connection& connection, CallerSlot* slot, uint64_t request_id) {
  absl::Status attested = absl::UnauthenticatedError("the caller was not attested");
  if (slot != nullptr) {
    absl::MutexLock slot_lock(&slot->mu);
    attested = slot->identity.status();
  }
  if (attested.ok()) attested = CallerMatched(slot);
  if (attested.ok()) return true;
  CountUnmatched(connection.peer(), attested);
  SendResponse(connection, ErrorResponse(request_id, attested));
  connection.Close(absl::StrCat("caller attestation failed: ", attested.message()));
  return false;
}

std::shared_ptr<Service::CallerSlot> Service::AttestedSlot(const ipc::Connection& connection) {
  // Who is calling is settled now, at accept: the kernel's SO_PEERCRED and the
  // process start time (DESIGN §6). What a rule may need on top (executable
  // path, hash) is collected on a worker by the first request that needs it.
  auto slot = std::make_shared<CallerSlot>();
  const ipc::PeerCredentials& peer = connection.peer();
  absl::StatusOr<policy::CallerIdentity> identity =
      policy::AttestCaller(peer.pid, peer.uid, peer.gid, policy::AttestOptions{});
  {
    absl::MutexLock slot_lock(&slot->mu);
    if (identity.ok()) {
      slot->identity = std::make_shared<const policy::CallerIdentity>(*std::move(identity));
    } else {
      slot->identity = identity.status();
    }
  }
  return slot;
}

absl::Status Service::CallerMatched(CallerSlot* slot) const {
  if (agents_.resolver == nullptr) return absl::OkStatus();
  const std::shared_ptr<const policy::Policy> current = agents_.resolver->policy();
  // Without a policy every agent request is refused with the reason.
  if (current == nullptr) return absl::OkStatus();
  GV_ASSIGN_OR_RETURN(std::shared_ptr<const policy::CallerIdentity> caller, SharedCaller(slot));
  // Not before the executable's hash is taken, when a rule needs it (on a
  // worker, by the first request: hashing does not belong on an I/O thread).
  if (!Covers(*caller, current->RequiredAttestation())) return absl::OkStatus();
  return current->MatchCaller(*caller).status();
}

void Service::CloseIfCallerRefused(ipc::Connection& connection, const absl::Status& refusal,
                                   const policy::CallerIdentity* caller) const {
  // The connection's process is no longer the attested one (it executed
  // another program): nothing it asks can be answered any more.
  if (absl::IsUnauthenticated(refusal)) {
    connection.Close(absl::StrCat("caller refused: ", refusal.message()));
    return;
  }
  // No rule of the current policy names the caller: keeping its connection
  // open would only hold a connection slot.
  if (caller == nullptr || agents_.resolver == nullptr) return;
  const std::shared_ptr<const policy::Policy> current = agents_.resolver->policy();
  if (current != nullptr && Covers(*caller, current->RequiredAttestation()) &&
      current->FindCaller(*caller) == nullptr) {
    connection.Close(
        absl::StrCat("caller refused: ", current->MatchCaller(*caller).status().message()));
  }
}

absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> Service::SharedCaller(
    CallerSlot* slot) {
  if (slot == nullptr) return absl::UnauthenticatedError("the caller was not attested");
  absl::MutexLock lock(&slot->mu);
  return slot->identity;
}

absl::StatusOr<policy::CallerIdentity> Service::CopyCaller(CallerSlot* slot) {
  GV_ASSIGN_OR_RETURN(std::shared_ptr<const policy::CallerIdentity> shared, SharedCaller(slot));
  return *shared;
}

std::shared_ptr<Service::CallerSlot> Service::CallerOf(const ipc::Connection& connection) {
  const ConnectionState* state = StateOf(connection);
  return state == nullptr ? nullptr : state->caller;
}

void Service::OnDisconnect(const ipc::Connection& connection) {
  if (proxy_ != nullptr) proxy_->EndCallsOfConnection(connection.id());
  absl::MutexLock lock(&mu_);
  for (auto it = subscribers_.begin(); it != subscribers_.end();) {
    std::erase_if(it->second,
                  [&](const Subscription& s) { return s.connection_id == connection.id(); });
    it = it->second.empty() ? subscribers_.erase(it) : std::next(it);
  }
}

void Service::OnFrame(v1::HelloReply::Role role, const std::shared_ptr<ipc::Connection>& connection,
                      std::string_view payload) {
  const absl::Time received = clock_->Now();
  if (role == v1::HelloReply::AGENT && TryAnswerRepeat(connection, payload, received)) return;
  v1::Request request;
  // (The ipc server wipes the frame, which may carry a client secret or a
  // code, once this returns.)
  const bool parsed = request.ParseFromArray(payload.data(), static_cast<int>(payload.size()));
  if (!parsed) {
    SendResponse(*connection, ErrorResponse(0, v1::Error::INVALID_ARGUMENT,
                                            "the frame is not a grantvault.v1.Request"));
    connection->Close("unparseable request frame");
    return;
  }
  ConnectionState* state = StateOf(*connection);
  if (state == nullptr) {  // OnConnect always sets it; never trust that blindly
    SendResponse(*connection, ErrorResponse(request.request_id(), v1::Error::INTERNAL,
                                            "the connection was not set up"));
    connection->Close("connection without state");
    return;
  }
  if (!state->hello_done.load(std::memory_order_acquire)) {
    if (!request.has_hello()) {
      SendResponse(*connection, ErrorResponse(request.request_id(), v1::Error::INVALID_ARGUMENT,
                                              "the first request on a connection must be Hello"));
      connection->Close("first request was not Hello");
      return;
    }
    if (request.hello().protocol_version() != ipc::kProtocolVersion) {
      SendResponse(
          *connection,
          ErrorResponse(request.request_id(), v1::Error::INVALID_ARGUMENT,
                        absl::StrCat("protocol version ", request.hello().protocol_version(),
                                     " is not supported; this server speaks version ",
                                     ipc::kProtocolVersion)));
      connection->Close("unsupported protocol version");
      return;
    }
    // Checked again at Hello: a reload since the accept may have dropped the
    // caller's rule.
    if (role == v1::HelloReply::AGENT &&
        !AdmitAgentCaller(*connection, CallerOf(*connection).get(), request.request_id())) {
      return;
    }
    state->hello_done.store(true, std::memory_order_release);
    v1::Response r;
    r.set_request_id(request.request_id());
    r.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    r.mutable_hello()->set_server_version(kServerVersion);
    r.mutable_hello()->set_socket_role(role);
    SendResponse(*connection, r);
    return;
  }
  Dispatch(role, connection, std::move(request), received);
}

void Service::Dispatch(v1::HelloReply::Role role,
                       const std::shared_ptr<ipc::Connection>& connection, v1::Request request,
                       absl::Time received) {
  const uint64_t id = request.request_id();
  switch (request.body_case()) {
    case v1::Request::kHello:
      SendResponse(*connection, ErrorResponse(id, v1::Error::INVALID_ARGUMENT,
                                              "Hello was already exchanged on this connection"));
      return;
    case v1::Request::kStatus: {
      if (role == v1::HelloReply::AGENT) {
        if (agents_.resolver == nullptr || agent_workers_ == nullptr) {
          SendResponse(*connection, ErrorResponse(id, v1::Error::UNAVAILABLE,
                                                  "this daemon does not serve agents"));
          return;
        }
        boost::asio::post(agent_workers_->pool,
                          [this, connection, id] { AnswerAgentStatus(connection, id); });
        return;
      }
      if (SendFreshStatus(*connection, id)) return;
      boost::asio::post(workers_->pool, [this, connection, id] { AnswerStatus(connection, id); });
      return;
    }
    case v1::Request::BODY_NOT_SET:
      SendResponse(*connection, ErrorResponse(id, v1::Error::INVALID_ARGUMENT,
                                              "unknown or missing request type"));
      return;
    case v1::Request::kProxy:
    case v1::Request::kCancel:
      if (role != v1::HelloReply::AGENT) {
        SendResponse(*connection, ErrorResponse(id, v1::Error::PERMISSION_DENIED,
                                                "agent requests are served only on agent.sock"));
        return;
      }
      if (request.has_cancel()) {
        RunCancel(connection, request);
      } else {
        DispatchProxy(connection, std::move(request), received);
      }
      return;
    case v1::Request::kResolve:
    case v1::Request::kSubscribe:
      if (role != v1::HelloReply::AGENT) {
        SendResponse(*connection, ErrorResponse(id, v1::Error::PERMISSION_DENIED,
                                                "agent requests are served only on agent.sock"));
        return;
      }
      if (request.has_resolve() && TryResolveOnIoThread(connection, request, received)) return;
      DispatchAgent(connection, std::move(request), received);
      return;
    default:
      break;
  }
  if (!IsAdminRequest(request)) {
    SendResponse(*connection, ErrorResponse(id, v1::Error::INVALID_ARGUMENT,
                                            "this server does not serve that request type yet"));
    return;
  }
  if (role != v1::HelloReply::ADMIN) {
    SendResponse(*connection, ErrorResponse(id, v1::Error::PERMISSION_DENIED,
                                            "admin requests are served only on admin.sock"));
    return;
  }
  if (absl::Status allowed = CheckAdmin(*connection, request); !allowed.ok()) {
    SendResponse(*connection, ErrorResponse(id, allowed));
    return;
  }
  const absl::Duration deadline = request.deadline_ms() == 0
                                      ? absl::InfiniteDuration()
                                      : absl::Milliseconds(request.deadline_ms());
  boost::asio::post(workers_->pool, [this, connection, request = std::move(request), received,
                                     deadline]() mutable {
    if (clock_->Now() - received > deadline) {
      SendResponse(*connection, ErrorResponse(request.request_id(), v1::Error::DEADLINE_EXCEEDED,
                                              "the request's deadline passed before it ran"));
      return;
    }
    RunAdmin(connection, request);
  });
}

void Service::DispatchAgent(const std::shared_ptr<ipc::Connection>& connection, v1::Request request,
                            absl::Time received) {
  if (agents_.resolver == nullptr || agent_workers_ == nullptr) {
    SendResponse(*connection, ErrorResponse(request.request_id(), v1::Error::UNAVAILABLE,
                                            "this daemon does not serve agents"));
    return;
  }
  const absl::Time deadline =
      received + (request.deadline_ms() == 0 ? kDefaultAgentDeadline
                                             : absl::Milliseconds(request.deadline_ms()));
  boost::asio::post(agent_workers_->pool, [this, connection, request = std::move(request),
                                           deadline]() {
    if (clock_->Now() > deadline) {
      SendResponse(*connection, ErrorResponse(request.request_id(), v1::Error::DEADLINE_EXCEEDED,
                                              "the request's deadline passed before it ran"));
      return;
    }
    if (request.has_resolve()) {
      RunResolve(connection, request, deadline);
    } else {
      RunSubscribe(connection, request);
    }
  });
}

}  // namespace grantvault::front
