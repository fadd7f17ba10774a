#include "front/service.h"

#include <openssl/crypto.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <ostream>
#include <streambuf>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log_escape.h"
#include "common/status.h"
#include "common/strings.h"
#include "ipc/asio.h"
#include "ipc/client.h"
#include "oauth/pkce.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {
namespace {

constexpr absl::Duration kStatusSnapshotMaxAge = absl::Seconds(1);
constexpr uint32_t kDefaultRewrapBatch = 1000;
// Agent requests without a deadline of their own.
constexpr absl::Duration kDefaultAgentDeadline = absl::Seconds(30);
// Token releases remembered as recorded per connection (more: forget them all).
constexpr size_t kMaxRecordedReleases = 64;
// Per agent connection: recent encoded answers (one per grant) and memos of
// counted releases (one per distinct request) kept to answer repeats of an
// agent that alternates between a few tools and grants.
constexpr size_t kMaxEncodedReplies = 16;
constexpr size_t kMaxRepeatMemos = 32;
// A repeated release is answered before its record commits only while the
// audit writer has fewer events than this waiting.
constexpr size_t kMaxAuditBacklog = 16384;
// …and while no audit event has waited longer than this to be committed (a
// stuck or failing writer): repeats then wait for their records too.
constexpr absl::Duration kMaxUnrecordedRepeatAge = absl::Milliseconds(500);
// Resolve's min_valid_seconds: the default, and the most honoured (beyond the
// lifetime a provider gives its tokens, every call would refresh).
constexpr absl::Duration kDefaultMinValid = absl::Seconds(30);
constexpr absl::Duration kMaxMinValid = absl::Minutes(10);

v1::Response ErrorResponse(uint64_t request_id, v1::Error::Code code, std::string message) {
  v1::Response r;
  r.set_request_id(request_id);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
  return r;
}

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

int64_t UnixMillis(absl::Time t) { return t == absl::InfinitePast() ? 0 : absl::ToUnixMillis(t); }

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

// An event done by an admin on admin.sock.
audit::Event AdminEvent(const v1::Request& request, const ipc::Connection& connection,
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
absl::Status AuditFailedAfter(std::string_view what, const absl::Status& audited) {
  if (audited.ok()) return audited;
  return absl::Status(audited.code(),
                      absl::StrCat(Sv(what), " was done, but the audit log could not record it: ",
                                   audited.message()));
}

void AddGrantFields(const store::Grant& g, audit::Event& e) {
  e.workspace_id = g.workspace_id;
  e.grant_id = g.grant_id;
  e.connector_id = g.connector_id;
  e.account_id = g.account_id;
  e.scopes = g.scopes;
}

// The event subscribers of the grant's workspace are sent.
v1::GrantEvent GrantEventOf(v1::GrantEvent::Kind kind, const store::Grant& g, std::string reason,
                            absl::Time at) {
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

int64_t ExpiryMillis(absl::Time t) {
  return t == absl::InfiniteFuture() ? 0 : absl::ToUnixMillis(t);
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
      e.set_retry_after_ms(1000);
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

void Service::EndRefusedSubscriptions() {
  std::vector<std::pair<std::string, Subscription>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [workspace, subscriptions] : subscribers_) {
      for (const Subscription& s : subscriptions) all.emplace_back(workspace, s);
    }
  }
  for (const auto& [workspace, s] : all) {
    std::shared_ptr<ipc::Connection> connection = s.connection.lock();
    if (connection == nullptr) continue;
    std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
    absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
    absl::Status allowed = caller.status();
    if (allowed.ok()) allowed = agents_.resolver->AllowWorkspace(*caller, workspace).status();
    if (allowed.ok()) continue;
    {
      absl::MutexLock lock(&mu_);
      auto it = subscribers_.find(workspace);
      if (it != subscribers_.end()) {
        std::erase_if(it->second, [&](const Subscription& other) {
          return other.connection_id == s.connection_id && other.request_id == s.request_id;
        });
        if (it->second.empty()) subscribers_.erase(it);
      }
    }
    // The stream ends with the reason: the reloaded policy no longer lets
    // this caller hear of the workspace's grants.
    v1::Response r;
    r.set_request_id(s.request_id);
    *r.mutable_error() = StatusToError(absl::PermissionDeniedError(
        absl::StrCat("the reloaded policy ends this subscription: ", allowed.message())));
    SendResponse(*connection, r);
    CloseIfCallerRefused(*connection, allowed, caller.ok() ? &*caller : nullptr);
  }
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
  v1::Response refused;
  refused.set_request_id(request_id);
  *refused.mutable_error() = StatusToError(attested);
  SendResponse(connection, refused);
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
    v1::Response r;
    r.set_request_id(id);
    *r.mutable_error() = StatusToError(allowed);
    SendResponse(*connection, r);
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
    v1::Response r;
    r.set_request_id(request_id);
    *r.mutable_error() = StatusToError(allowed);
    SendResponse(*connection, r);
    return;
  }
  if (!SendFreshStatus(*connection, request_id)) AnswerStatus(connection, request_id);
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

namespace {

absl::Duration MinValidOf(const v1::ResolveRequest& in) {
  return in.min_valid_seconds() == 0
             ? kDefaultMinValid
             : std::min(absl::Seconds(in.min_valid_seconds()), kMaxMinValid);
}

// A released token, named by its grant only (debug level: a line per resolve).
void LogRelease(const ipc::PeerCredentials& peer, const v1::ResolveRequest& in,
                const std::string& grant_id) {
  spdlog::debug("token.released uid={} pid={} workspace={} connector={} grant={} tool={}", peer.uid,
                peer.pid, EscapeForLog(in.workspace_id()), EscapeForLog(in.connector_id()),
                grant_id, EscapeForLog(in.tool()));
}

ResolveQuery QueryFor(const v1::ResolveRequest& in, absl::Time deadline) {
  ResolveQuery query;
  query.workspace_id = in.workspace_id();
  query.connector_id = in.connector_id();
  if (!in.tool().empty()) query.tool = in.tool();
  query.scopes.assign(in.scopes().begin(), in.scopes().end());
  query.min_valid = MinValidOf(in);
  query.deadline = deadline;
  return query;
}

// The answer carrying the token, without its request id: a Response with
// only `resolve` set, serialized. (Serialized messages concatenate as a merge,
// so the frame is RequestIdPart() followed by this.) The token's copies other
// than the result are wiped.
absl::StatusOr<SecretBytes> ResolvePart(const Resolved& resolved) {
  v1::Response r;
  v1::ResolveReply* out = r.mutable_resolve();
  out->set_access_token(std::string(resolved.token->token.view()));
  out->set_token_type(resolved.token->token_type);
  out->set_expires_at_ms(ExpiryMillis(resolved.token->expires_at));
  out->set_grant_id(resolved.grant->grant_id);
  out->set_account_id(resolved.grant->account_id);
  for (const std::string& scope : resolved.grant->scopes) out->add_scopes(scope);
  out->set_connector_type(resolved.grant->connector_type);
  for (const auto& [k, v] : resolved.grant->metadata) (*out->mutable_metadata())[k] = v;
  std::string bytes;
  const bool serialized = r.SerializeToString(&bytes);
  OPENSSL_cleanse(out->mutable_access_token()->data(), out->access_token().size());
  if (!serialized) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return absl::InternalError("the answer could not be encoded");
  }
  return SecretBytes::TakeFrom(bytes);  // wipes `bytes`
}

// The answer frame: the request id, then the resolve part.
std::string TokenFrame(uint64_t request_id, const SecretBytes& resolve_part) {
  v1::Response head;
  head.set_request_id(request_id);
  std::string frame;
  frame.reserve(head.ByteSizeLong() + resolve_part.size());
  head.AppendToString(&frame);
  frame.append(resolve_part.view());
  return frame;
}

// What makes two releases to one process the same release: the token (by
// serial, or fingerprint), the grant, the tool, the scopes and the caller's
// executable when known. Everything else in the record is the caller's, fixed
// for the connection.
// (Length-prefixed fields: no two different releases share a key.)
std::string ReleaseKey(const std::string& grant_id, const std::string& token_name,
                       const std::string& tool, const std::vector<std::string>& scopes,
                       const std::string& exe) {
  std::string key;
  auto add = [&key](const std::string& field) { absl::StrAppend(&key, field.size(), ":", field); };
  add(exe);  // what the record names the caller by, once learnt
  add(grant_id);
  add(token_name);
  add(tool);
  for (const std::string& scope : scopes) add(scope);
  return key;
}

}  // namespace

bool Service::TryResolveOnIoThread(const std::shared_ptr<ipc::Connection>& connection,
                                   const v1::Request& request, absl::Time received) {
  if (agents_.resolver == nullptr) return false;
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> caller = SharedCaller(slot.get());
  if (!caller.ok()) return false;
  // Read before anything the answer depends on: a change after this makes a
  // memo of the answer stale.
  RepeatBasis basis{agents_.resolver->generation(), *caller};
  const ResolveQuery query = QueryFor(request.resolve(), received + kDefaultAgentDeadline);
  std::optional<absl::StatusOr<Resolved>> resolved =
      agents_.resolver->ResolveIfCached(**caller, query);
  if (!resolved) return false;
  FinishResolve(connection, request, slot, caller->get(), std::move(*resolved), basis);
  return true;
}

void Service::RememberRepeat(CallerSlot& slot, const v1::Request& request, const std::string& key,
                             const Resolved& resolved, const RepeatBasis& basis, uint64_t epoch,
                             const std::shared_ptr<const SecretBytes>& part) {
  // The memo counts into the release's queued record: only while the slot
  // still counts this release into it, in this epoch, for this caller.
  // Otherwise the request alone is kept, to find (and forget) its old memo.
  auto it = slot.recorded_releases.find(key);
  const bool counting = it != slot.recorded_releases.end() && it->second.epoch == epoch &&
                        it->second.counting != nullptr && part != nullptr && slot.identity.ok() &&
                        *slot.identity == basis.caller;
  RepeatMemo memo;
  memo.Remember(request, MinValidOf(request.resolve()),
                counting ? RepeatMemo::Basis{basis.generation, epoch, basis.caller, resolved.grant,
                                             resolved.token->serial, resolved.token->expires_at,
                                             resolved.refresh_at, it->second.counting,
                                             ExecutableChecksOf(*resolved.rule), part}
                         : RepeatMemo::Basis{});
  auto same = std::find_if(slot.repeats.begin(), slot.repeats.end(),
                           [&](const RepeatMemo& m) { return m.SameRequest(memo); });
  if (!counting) {
    if (same != slot.repeats.end()) same->Forget();
    return;
  }
  if (same != slot.repeats.end()) {
    *same = std::move(memo);
  } else if (slot.repeats.size() < kMaxRepeatMemos) {
    slot.repeats.push_back(std::move(memo));
  } else {
    slot.repeats[slot.next_repeat] = std::move(memo);
    slot.next_repeat = (slot.next_repeat + 1) % kMaxRepeatMemos;
  }
}

bool Service::RepeatsGoFirst() const {
  // Repeats wait for their record like first releases while the log lags
  // (docs/audit.md): too much queued, or an event uncommitted for too long.
  return trail_.audit != nullptr && trail_.audit->backlog() < kMaxAuditBacklog &&
         trail_.audit->oldest_uncommitted_age() < kMaxUnrecordedRepeatAge;
}

bool Service::TryAnswerRepeat(const std::shared_ptr<ipc::Connection>& connection,
                              std::string_view payload, absl::Time now) {
  if (agents_.resolver == nullptr || !RepeatsGoFirst()) return false;
  const ConnectionState* state = StateOf(*connection);
  if (state == nullptr || state->caller == nullptr ||
      !state->hello_done.load(std::memory_order_acquire)) {
    return false;
  }
  const std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(payload);
  if (!framed) return false;
  CallerSlot& slot = *state->caller;
  const uint64_t generation = agents_.resolver->generation();
  const uint64_t epoch = audit_epoch_->load();
  std::shared_ptr<const policy::CallerIdentity> caller;
  std::shared_ptr<audit::PendingCount> counting;
  policy::ExecutableChecks exe_checks;
  std::string frame;
  v1::ResolveRequest logged;  // for the debug log only
  std::string grant_id;
  {
    absl::MutexLock lock(&slot.mu);
    const RepeatMemo* memo = nullptr;
    for (const RepeatMemo& m : slot.repeats) {
      if (m.Is(framed->rest)) {
        memo = &m;
        break;
      }
    }
    if (memo == nullptr) return false;
    // The memo carries its own encoded answer and record: it answers with
    // them (a sealed record fails Add below, and the full path queues a new
    // one and a new memo). What may have changed since is the state.
    const RepeatMemo::Basis& b = memo->basis();
    const RepeatMemo::Current current{
        generation,    epoch,    slot.identity.ok() ? slot.identity->get() : nullptr,
        b.grant.get(), b.serial, b.counting.get(),
    };
    if (!memo->Answers(framed->rest, now, current)) return false;
    caller = b.caller;
    counting = b.counting;
    exe_checks = b.exe_checks;
    if (spdlog::should_log(spdlog::level::debug)) {
      logged = memo->resolve();
      grant_id = b.grant->grant_id;
    }
    frame = TokenFrame(framed->request_id, *b.reply);
  }
  // As on the full path: the process must still be the one attested (running
  // the program the rule named, if it named one), and the repeat is counted
  // before its token leaves.
  if (!policy::StillSameCaller(*caller, exe_checks).ok() || !counting->Add()) {
    WipeMemory(frame.data(), frame.capacity());
    return false;  // the full path says why, or records the repeat anew
  }
  LogRelease(connection->peer(), logged, grant_id);
  connection->Send(std::move(frame), /*final=*/true);
  return true;
}

void Service::RunResolve(const std::shared_ptr<ipc::Connection>& connection,
                         const v1::Request& request, absl::Time deadline) {
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
  absl::StatusOr<Resolved> resolved = absl::UnknownError("not resolved");
  if (!caller.ok()) {
    resolved = caller.status();
  } else {
    const bool had_hash = caller->exe_sha256.has_value();
    resolved = agents_.resolver->Resolve(*caller, QueryFor(request.resolve(), deadline));
    if (caller->exe_sha256.has_value() && !had_hash && slot != nullptr) {
      // Keep the executable's hash (of the file attested at accept) for the
      // connection's next calls.
      absl::MutexLock lock(&slot->mu);
      if (slot->identity.ok() && (*slot->identity)->start_time == caller->start_time) {
        slot->identity = std::make_shared<const policy::CallerIdentity>(*caller);
      }
    }
  }
  FinishResolve(connection, request, slot, caller.ok() ? &*caller : nullptr, std::move(resolved));
}

void Service::FinishResolve(const std::shared_ptr<ipc::Connection>& connection,
                            const v1::Request& request, const std::shared_ptr<CallerSlot>& slot,
                            const policy::CallerIdentity* caller, absl::StatusOr<Resolved> resolved,
                            const std::optional<RepeatBasis>& basis) {
  const v1::ResolveRequest& in = request.resolve();
  const ipc::PeerCredentials& peer = connection->peer();
  const uint64_t id = request.request_id();
  // The audit record's fields common to a release and a refusal (built only
  // when a record is written: a counted repeat needs none).
  auto event_of_call = [&] {
    audit::Event e;
    e.workspace_id = in.workspace_id();
    e.connector_id = in.connector_id();
    e.actor.uid = peer.uid;
    e.actor.pid = peer.pid;
    if (caller != nullptr && caller->exe_path) e.actor.exe = *caller->exe_path;
    if (!in.tool().empty()) e.details["tool"] = in.tool();
    return e;
  };
  if (!resolved.ok()) {
    audit::Event e = event_of_call();
    e.details["request_id"] = absl::StrCat(id);
    e.scopes.assign(in.scopes().begin(), in.scopes().end());
    v1::Response r;
    r.set_request_id(id);
    *r.mutable_error() = StatusToError(resolved.status());
    SendResponse(*connection, r);
    CloseIfCallerRefused(*connection, resolved.status(), caller);
    // Refused either way: the record is not waited for.
    RecordRefusal(peer, caller, std::move(e), resolved.status());
    return;
  }
  absl::StatusOr<Reply> reply = ReplyFrame(slot.get(), id, *resolved);
  if (!reply.ok()) {
    SendResponse(*connection,
                 ErrorResponse(id, v1::Error::INTERNAL, std::string(reply.status().message())));
    return;
  }
  std::string* frame = &reply->frame;
  LogRelease(peer, in, resolved->grant->grant_id);
  if (trail_.audit == nullptr) {
    connection->Send(std::move(*frame), /*final=*/true);
    return;
  }
  // The token is named by its serial when it has one (no HMAC per repeat);
  // its fingerprint is computed only for a record.
  std::string fingerprint;
  if (resolved->token->serial == 0) fingerprint = trail_.audit->Fingerprint(resolved->token->token);
  std::string key = ReleaseKey(
      resolved->grant->grant_id,
      resolved->token->serial != 0 ? absl::StrCat("serial ", resolved->token->serial) : fingerprint,
      in.tool(), resolved->scopes,
      caller != nullptr && caller->exe_path ? *caller->exe_path : std::string());
  const uint64_t epoch = audit_epoch_->load();
  const RepeatKind kind =
      slot != nullptr && RepeatsGoFirst() ? CountRepeat(*slot, key, epoch) : RepeatKind::kFirst;
  if (kind != RepeatKind::kFirst) {
    // This process already received this very token, and that release is
    // committed: sending it again discloses nothing new. The repeat is still
    // recorded (counted into a deferred record), without holding the answer
    // back. A failure makes every release wait for its record again.
    connection->Send(std::move(*frame), /*final=*/true);
    if (kind == RepeatKind::kCounted) {
      if (basis) {
        absl::MutexLock lock(&slot->mu);
        RememberRepeat(*slot, request, key, *resolved, *basis, epoch, reply->part);
      }
      return;
    }
  }
  audit::Event e = event_of_call();
  e.type = "token.released";
  e.outcome = "ok";
  AddGrantFields(*resolved->grant, e);
  e.scopes = resolved->scopes;
  if (fingerprint.empty()) fingerprint = trail_.audit->Fingerprint(resolved->token->token);
  e.details["token_fingerprint"] = std::move(fingerprint);
  // Repeated releases of the same token to the same process share a record
  // (with a count): the release is recorded, not the request (docs/audit.md).
  e.coalesce = true;
  if (kind == RepeatKind::kUncounted) {
    std::shared_ptr<audit::PendingCount> count = trail_.audit->AppendCounted(
        std::move(e), audit::Durability::kDeferred, [epochs = audit_epoch_](absl::Status audited) {
          if (audited.ok()) return;
          epochs->fetch_add(1);
          spdlog::error("token.released (repeat) not recorded: {}",
                        EscapeTextForLog(std::string(audited.message())));
        });
    if (count != nullptr) {
      absl::MutexLock lock(&slot->mu);
      auto it = slot->recorded_releases.find(key);
      if (it != slot->recorded_releases.end() && it->second.epoch == epoch) {
        it->second.counting = std::move(count);
        if (basis) RememberRepeat(*slot, request, key, *resolved, *basis, epoch, reply->part);
      }
    }
    return;
  }
  // Fail closed: the token leaves only once its release is recorded (group
  // commit: the writer calls back when the batch is committed).
  auto bytes = std::make_shared<std::string>(std::move(*frame));
  trail_.audit->AppendAsync(
      std::move(e), audit::Durability::kGrouped,
      [connection, bytes, id, uid = peer.uid, pid = peer.pid, slot, key = std::move(key), epoch,
       epochs = audit_epoch_](absl::Status audited) {
        if (audited.ok()) {
          if (slot != nullptr && epochs->load() == epoch) RememberRecorded(*slot, key, epoch);
          connection->Send(std::move(*bytes), /*final=*/true);
          return;
        }
        epochs->fetch_add(1);
        OPENSSL_cleanse(bytes->data(), bytes->size());
        spdlog::error("token.withheld uid={} pid={}: the audit log cannot record it: {}", uid, pid,
                      EscapeTextForLog(std::string(audited.message())));
        v1::Response r = ErrorResponse(
            id, v1::Error::UNAVAILABLE,
            absl::StrCat("the audit log cannot record the release, so no token is released: ",
                         audited.message()));
        r.mutable_error()->set_retry_after_ms(1000);
        SendResponse(*connection, r);
      });
}

absl::StatusOr<Service::Reply> Service::ReplyFrame(CallerSlot* slot, uint64_t request_id,
                                                   const Resolved& resolved) {
  // The same token of the same grant again (a cached resolve): its encoded
  // answer is kept for the connection, in secret memory.
  const bool cacheable = slot != nullptr && resolved.token->serial != 0;
  if (cacheable) {
    absl::MutexLock lock(&slot->mu);
    for (const CallerSlot::EncodedReply& r : slot->replies) {
      if (r.serial == resolved.token->serial && r.grant == resolved.grant) {
        return Reply{TokenFrame(request_id, *r.part), r.part};
      }
    }
  }
  GV_ASSIGN_OR_RETURN(SecretBytes encoded, ResolvePart(resolved));
  auto part = std::make_shared<const SecretBytes>(std::move(encoded));
  Reply reply{TokenFrame(request_id, *part), nullptr};
  if (cacheable) {
    reply.part = part;
    absl::MutexLock lock(&slot->mu);
    CallerSlot::EncodedReply entry{resolved.token->serial, resolved.grant, std::move(part)};
    // A refreshed token of a grant replaces that grant's answer.
    for (CallerSlot::EncodedReply& r : slot->replies) {
      if (r.grant == resolved.grant) {
        r = std::move(entry);
        return reply;
      }
    }
    if (slot->replies.size() < kMaxEncodedReplies) {
      slot->replies.push_back(std::move(entry));
    } else {
      slot->replies[slot->next_reply] = std::move(entry);
      slot->next_reply = (slot->next_reply + 1) % kMaxEncodedReplies;
    }
  }
  return reply;
}

Service::RepeatKind Service::CountRepeat(CallerSlot& slot, const std::string& key, uint64_t epoch) {
  absl::MutexLock lock(&slot.mu);
  auto it = slot.recorded_releases.find(key);
  if (it == slot.recorded_releases.end() || it->second.epoch != epoch) return RepeatKind::kFirst;
  if (it->second.counting != nullptr && it->second.counting->Add()) return RepeatKind::kCounted;
  return RepeatKind::kUncounted;
}

void Service::RememberRecorded(CallerSlot& slot, const std::string& key, uint64_t epoch) {
  absl::MutexLock lock(&slot.mu);
  if (slot.recorded_releases.size() >= kMaxRecordedReleases) {
    slot.recorded_releases.clear();
    slot.repeats.clear();  // they rest on releases remembered here
    slot.next_repeat = 0;
  }
  slot.recorded_releases.insert_or_assign(key, CallerSlot::RecordedRelease{epoch, nullptr});
}

void Service::RecordRefusal(const ipc::PeerCredentials& peer, const policy::CallerIdentity* caller,
                            audit::Event e, const absl::Status& refusal) {
  const std::string reason(refusal.message());
  if (caller == nullptr || !agents_.resolver->MatchesACallerRule(*caller)) {
    CountUnmatched(peer, refusal);
    return;
  }
  spdlog::info("token.denied uid={} pid={} workspace={} connector={} tool={} reason={}", peer.uid,
               peer.pid, EscapeForLog(e.workspace_id), EscapeForLog(e.connector_id),
               EscapeForLog(e.details.contains("tool") ? e.details["tool"] : ""),
               EscapeTextForLog(reason));
  if (trail_.audit == nullptr) return;
  e.type = "token.denied";
  e.outcome = "denied";
  e.reason = reason;
  // A chain is made only for a workspace the policy declares (or that has
  // one already, e.g. from its grants' admin events).
  if (!e.workspace_id.empty() && !agents_.resolver->DeclaresWorkspace(e.workspace_id) &&
      !trail_.audit->HasChain(e.workspace_id)) {
    e.details["requested_workspace"] = std::move(e.workspace_id);
    e.workspace_id.clear();
  }
  trail_.audit->AppendAsync(std::move(e), audit::Durability::kGrouped, [](absl::Status) {});
}

void Service::CountUnmatched(const ipc::PeerCredentials& peer, const absl::Status& refusal) {
  // Anyone on the host can ask: no record (nor log line) per refusal.
  std::optional<UnmatchedCallerTally::Summary> due =
      unmatched_callers_.Count(peer.uid, peer.pid, std::string(refusal.message()), clock_->Now());
  if (due.has_value()) RecordUnmatched(*due);
}

void Service::RecordUnmatched(const UnmatchedCallerTally::Summary& summary) {
  spdlog::info("caller.unmatched uid={} pid={} refusals={} reason={}",
               summary.uid.has_value() ? absl::StrCat(*summary.uid) : std::string("(others)"),
               summary.last_pid, summary.refusals, summary.reason);
  if (trail_.audit == nullptr) return;
  audit::Event e;
  e.type = "caller.unmatched";
  e.outcome = "denied";
  e.actor.uid = summary.uid;
  e.actor.pid = summary.last_pid;
  e.reason = summary.reason;
  e.details["refusals"] = absl::StrCat(summary.refusals);
  e.details["since"] = absl::FormatTime(absl::RFC3339_full, summary.first, absl::UTCTimeZone());
  trail_.audit->AppendAsync(std::move(e), audit::Durability::kGrouped, [](absl::Status) {});
}

void Service::RunSubscribe(const std::shared_ptr<ipc::Connection>& connection,
                           const v1::Request& request) {
  const std::string& workspace = request.subscribe().workspace_id();
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
  absl::Status allowed = caller.status();
  if (allowed.ok() && workspace.empty()) {
    allowed = absl::InvalidArgumentError("subscribe needs a workspace id");
  }
  if (allowed.ok()) allowed = agents_.resolver->AllowWorkspace(*caller, workspace).status();
  if (allowed.ok()) allowed = policy::StillSameProcess(*caller);
  if (!allowed.ok()) {
    v1::Response r;
    r.set_request_id(request.request_id());
    *r.mutable_error() = StatusToError(allowed);
    SendResponse(*connection, r);
    CloseIfCallerRefused(*connection, allowed, caller.ok() ? &*caller : nullptr);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    // Registered before the first answer, so no event can fall in between.
    subscribers_[workspace].push_back(
        Subscription{connection, connection->id(), request.request_id()});
  }
  v1::Response r;
  r.set_request_id(request.request_id());
  r.set_more(true);
  v1::GrantEvent* event = r.mutable_grant_event();
  event->set_kind(v1::GrantEvent::SUBSCRIBED);
  event->set_workspace_id(workspace);
  event->set_at_ms(UnixMillis(clock_->Now()));
  SendResponse(*connection, r);
}

absl::Status Service::Audit(audit::Event event, audit::Durability durability) {
  if (trail_.audit == nullptr) return absl::OkStatus();
  return trail_.audit->Append(std::move(event), durability);
}

void Service::RetireInMemory(const std::string& workspace_id, const std::string& connector_id,
                             const std::string& grant_id, std::string reason) {
  if (trail_.refresher != nullptr) trail_.refresher->Revoke(grant_id, std::move(reason));
  if (agents_.resolver != nullptr) agents_.resolver->ForgetGrant(workspace_id, connector_id);
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
  // 3 and 4. The cached token goes, and every resolve waiting on the grant
  // fails with REVOKED; the directory forgets it.
  if (trail_.refresher != nullptr) trail_.refresher->Revoke(grant.grant_id, reason);
  if (agents_.resolver != nullptr) {
    agents_.resolver->ForgetGrant(grant.workspace_id, grant.connector_id);
  }
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

namespace {

// Sends what is written to it as AuditExportChunk responses of at most
// kChunkBytes each (protobuf + frame overhead stay well inside 64 KiB).
class ChunkStream final : public std::streambuf {
 public:
  static constexpr size_t kChunkBytes = 48 * 1024;
  ChunkStream(ipc::Connection& connection, uint64_t request_id)
      : connection_(connection), request_id_(request_id) {
    buffer_.resize(kChunkBytes);
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  void set_progress(uint64_t done, uint64_t total) {
    done_ = done;
    total_ = total;
  }
  uint64_t bytes() const { return bytes_; }
  bool Flush() {
    const size_t n = static_cast<size_t>(pptr() - pbase());
    if (n == 0) return true;
    v1::Response r;
    r.set_request_id(request_id_);
    r.set_more(true);
    v1::AuditExportChunk* chunk = r.mutable_audit_export_chunk();
    chunk->set_data(std::string(pbase(), n));
    chunk->set_done(done_);
    chunk->set_total(total_);
    bytes_ += n;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    std::string frame;
    if (!r.SerializeToString(&frame)) return false;
    return connection_.Send(std::move(frame), /*final=*/false);
  }

 protected:
  int_type overflow(int_type ch) override {
    if (!Flush()) return traits_type::eof();
    if (ch != traits_type::eof()) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  int sync() override { return Flush() ? 0 : -1; }

 private:
  ipc::Connection& connection_;
  const uint64_t request_id_;
  std::vector<char> buffer_;
  uint64_t done_ = 0, total_ = 0, bytes_ = 0;
};

}  // namespace

absl::Status Service::RunAuditExport(const std::shared_ptr<ipc::Connection>& connection,
                                     const v1::Request& request, v1::Response& response) {
  if (trail_.audit == nullptr) {
    return absl::FailedPreconditionError("auditing is turned off ([audit] enabled = false)");
  }
  const v1::AuditExportRequest& in = request.audit_export();
  if (in.workspace_id().empty() && !in.system()) {
    return absl::InvalidArgumentError("name a workspace, or ask for the system chain");
  }
  if (!in.workspace_id().empty() && in.system()) {
    return absl::InvalidArgumentError("a workspace or the system chain, not both");
  }
  audit::ExportFormat format = audit::ExportFormat::kJsonl;
  if (in.format() == "csv") {
    format = audit::ExportFormat::kCsv;
  } else if (!in.format().empty() && in.format() != "jsonl") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown export format '", in.format(), "' (jsonl or csv)"));
  }
  audit::ExportFilter filter;
  filter.workspace_id = in.workspace_id();
  if (in.since_ms() != 0) filter.since = absl::FromUnixMillis(in.since_ms());
  if (in.until_ms() != 0) filter.until = absl::FromUnixMillis(in.until_ms());
  filter.types.assign(in.event_types().begin(), in.event_types().end());
  ChunkStream chunks(*connection, request.request_id());
  std::ostream out(&chunks);
  uint64_t records = 0;
  GV_RETURN_IF_ERROR(trail_.audit->Export(filter, format, out, [&](uint64_t done, uint64_t total) {
    chunks.set_progress(done, total);
    records = done;
  }));
  out.flush();
  if (!chunks.Flush()) return absl::UnavailableError("the connection closed during the export");
  response.mutable_audit_export()->set_records(records);
  response.mutable_audit_export()->set_bytes(chunks.bytes());
  return absl::OkStatus();
}

void Service::PublishGrantEvent(const v1::GrantEvent& event) {
  std::vector<Subscription> targets;
  {
    absl::MutexLock lock(&mu_);
    auto it = subscribers_.find(event.workspace_id());
    if (it == subscribers_.end()) return;
    targets = it->second;
  }
  for (const Subscription& s : targets) {
    std::shared_ptr<ipc::Connection> connection = s.connection.lock();
    if (connection == nullptr) continue;
    v1::Response r;
    r.set_request_id(s.request_id);
    r.set_more(true);
    *r.mutable_grant_event() = event;
    SendResponse(*connection, r);
  }
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

namespace {

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
      reg.registered_by = admin;
      GV_ASSIGN_OR_RETURN(store::ConnectorRegistration stored,
                          authorizer.Register(std::move(reg), client_secret));
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
        OPENSSL_cleanse(in.mutable_callback_url()->data(), in.callback_url().size());
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
