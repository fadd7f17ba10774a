#include "daemon/service.h"

#include <openssl/crypto.h>
#include <unistd.h>

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "hsm/keys.h"
#include "ipc/asio.h"
#include "ipc/client.h"
#include "oauth/pkce.h"
#include "spdlog/spdlog.h"

namespace grantvault::daemon {
namespace {

constexpr absl::Duration kStatusSnapshotMaxAge = absl::Seconds(1);
constexpr uint32_t kDefaultRewrapBatch = 1000;

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

absl::StatusOr<v1::KeyVersion> FindKeyStatus(keys::KeyManager& keys, int version) {
  GV_ASSIGN_OR_RETURN(std::vector<keys::KeyStatus> all, keys.Status());
  for (const keys::KeyStatus& k : all) {
    if (k.version.version == version) return ToProto(k);
  }
  return absl::NotFoundError(absl::StrCat("there is no key version ", version));
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
      e.set_retry_after_ms(1000);
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.set_code(v1::Error::DEADLINE_EXCEEDED);
      break;
    case absl::StatusCode::kResourceExhausted:
      e.set_code(v1::Error::RESOURCE_EXHAUSTED);
      e.set_retry_after_ms(1000);
      break;
    case absl::StatusCode::kFailedPrecondition:
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
  void OnFrame(const std::shared_ptr<ipc::Connection>& connection, std::string payload) override {
    service_->OnFrame(role_, connection, std::move(payload));
  }
  void OnDisconnect(const ipc::Connection& connection) override {
    service_->OnDisconnect(connection);
  }

 private:
  Service* const service_;
  const v1::HelloReply::Role role_;
};

struct Service::Workers {
  explicit Workers(size_t n) : pool(n) {}
  boost::asio::thread_pool pool;
};

Service::Service(Vault* vault, OAuth oauth, AdminPolicy admin, size_t worker_threads, Clock* clock)
    : vault_(vault),
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

void Service::Stop() { workers_->pool.join(); }

void Service::OnDisconnect(const ipc::Connection& connection) {
  absl::MutexLock lock(&mu_);
  connections_.erase(connection.id());
}

void Service::OnFrame(v1::HelloReply::Role role, const std::shared_ptr<ipc::Connection>& connection,
                      std::string payload) {
  const absl::Time received = clock_->Now();
  v1::Request request;
  const bool parsed = request.ParseFromString(payload);
  // The frame may carry a client secret or a code: wipe our copy at once.
  OPENSSL_cleanse(payload.data(), payload.size());
  if (!parsed) {
    SendResponse(*connection, ErrorResponse(0, v1::Error::INVALID_ARGUMENT,
                                            "the frame is not a grantvault.v1.Request"));
    connection->Close("unparseable request frame");
    return;
  }
  bool hello_done;
  {
    absl::MutexLock lock(&mu_);
    hello_done = connections_[connection->id()].hello_done;
  }
  if (!hello_done) {
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
    {
      absl::MutexLock lock(&mu_);
      connections_[connection->id()].hello_done = true;
    }
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
      std::optional<v1::StatusReply> fresh;
      {
        absl::MutexLock lock(&snapshot_mu_);
        if (clock_->Now() - snapshot_.taken < kStatusSnapshotMaxAge) fresh = snapshot_.reply;
      }
      if (fresh) {
        SendStatus(*connection, id, std::move(*fresh));
        return;
      }
      boost::asio::post(workers_->pool, [this, connection, id] { AnswerStatus(connection, id); });
      return;
    }
    case v1::Request::BODY_NOT_SET:
      SendResponse(*connection, ErrorResponse(id, v1::Error::INVALID_ARGUMENT,
                                              "unknown or missing request type"));
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
  absl::MutexLock lock(&mu_);
  if (std::find(admin_.uids.begin(), admin_.uids.end(), peer.uid) != admin_.uids.end() ||
      std::find(admin_.gids.begin(), admin_.gids.end(), peer.gid) != admin_.gids.end()) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("uid ", peer.uid, " is not allowed to administer grantvault"));
}

void Service::RunAdmin(const std::shared_ptr<ipc::Connection>& connection, v1::Request& request) {
  const uint64_t id = request.request_id();
  v1::Response r;
  r.set_request_id(id);
  absl::Status status;
  keys::KeyManager& keys = *vault_->keys;
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
      absl::StatusOr<store::KeyVersion> v = keys.Rotate(vault_->sealer.get());
      status = v.status();
      if (v.ok()) {
        spdlog::info("key.rotated admin={} uid={} new_kek={}", request.admin_user(),
                     connection->peer().uid, v->label);
        absl::StatusOr<v1::KeyVersion> k = FindKeyStatus(keys, v->version);
        status = k.status();
        if (k.ok()) *r.mutable_rotate_key()->mutable_key() = *k;
      }
      break;
    }
    case v1::Request::kRewrap: {
      const uint32_t batch =
          request.rewrap().batch_size() == 0 ? kDefaultRewrapBatch : request.rewrap().batch_size();
      absl::StatusOr<keys::RewrapResult> result =
          keys.Rewrap(*vault_->sealer, batch, [&](const keys::RewrapProgress& p) {
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
                     request.admin_user(), connection->peer().uid, result->rewrapped,
                     result->failures.size());
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
        spdlog::info("key.retired admin={} uid={} version={}", request.admin_user(),
                     connection->peer().uid, version);
        absl::StatusOr<v1::KeyVersion> k = FindKeyStatus(keys, version);
        status = k.status();
        if (k.ok()) *r.mutable_retire_key()->mutable_key() = *k;
      }
      break;
    }
    case v1::Request::kAuditPublicKey: {
      absl::StatusOr<std::vector<hsm::KeyRef>> audit =
          hsm::ListKeys(*vault_->token, CKO_PUBLIC_KEY, hsm::kAuditKeyLabelPrefix);
      status = audit.status();
      if (audit.ok() && audit->empty()) status = absl::NotFoundError("there is no audit key");
      if (status.ok()) {
        absl::StatusOr<std::string> pem = hsm::SigningPublicKeyPem(*vault_->token, audit->front());
        status = pem.status();
        if (pem.ok()) {
          r.mutable_audit_public_key()->set_label(audit->front().label);
          r.mutable_audit_public_key()->set_pem(*pem);
        }
      }
      break;
    }
    case v1::Request::kListGrants: {
      if (request.list_grants().workspace_id().empty()) {
        status = absl::InvalidArgumentError("list grants needs a workspace id");
        break;
      }
      absl::StatusOr<std::vector<store::Grant>> grants =
          vault_->store->ListGrants(request.list_grants().workspace_id());
      status = grants.status();
      if (grants.ok()) {
        v1::ListGrantsReply* reply = r.mutable_list_grants();
        for (const store::Grant& g : *grants) ToProto(g, reply->add_grants());
      }
      break;
    }
    case v1::Request::kShowGrant: {
      absl::StatusOr<store::Grant> grant = vault_->store->GetGrant(request.show_grant().grant_id());
      status = grant.status();
      if (grant.ok()) ToProto(*grant, r.mutable_show_grant()->mutable_grant());
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
    spdlog::warn("admin request failed: admin={} uid={} request={} error={}", request.admin_user(),
                 connection->peer().uid, static_cast<int>(request.body_case()),
                 std::string(status.message()));
    r.clear_body();
    *r.mutable_error() = StatusToError(status);
  }
  SendResponse(*connection, r);
}

v1::StatusReply Service::ComputeStatus() {
  v1::StatusReply s;
  s.set_server_version(kServerVersion);
  s.set_token_label(vault_->token->label());
  s.set_store_kind("sqlite");
  absl::StatusOr<hsm::Session> session = vault_->token->Acquire();
  if (session.ok()) {
    CK_SESSION_INFO info;
    s.set_hsm_reachable(session->fn()->C_GetSessionInfo(session->handle(), &info) == CKR_OK);
  }
  absl::StatusOr<int64_t> grants = vault_->store->CountGrants();
  absl::StatusOr<std::map<std::string, int64_t>> sealed = vault_->store->CountSealedSecretsByKek();
  s.set_store_reachable(grants.ok() && sealed.ok());
  if (grants.ok()) s.set_grants(static_cast<uint64_t>(*grants));
  if (sealed.ok()) {
    int64_t total = 0;
    for (const auto& [label, n] : *sealed) total += n;
    s.set_sealed_secrets(static_cast<uint64_t>(total));
  }
  s.set_active_kek(vault_->sealer->ActiveKek().label);
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
  SendResponse(connection, r);
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
}

}  // namespace

absl::Status Service::RunOAuth(const ipc::Connection& connection, v1::Request& request,
                               v1::Response& r) {
  const std::string& admin = request.admin_user();
  if (request.has_list_connectors()) {
    GV_ASSIGN_OR_RETURN(std::vector<store::ConnectorRegistration> all,
                        vault_->store->ListConnectorRegistrations());
    for (const auto& reg : all) {
      ToProto(reg, oauth_.catalog, r.mutable_list_connectors()->add_connectors());
    }
    return absl::OkStatus();
  }
  if (oauth_.authorizer == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("the OAuth engine is not available: ", oauth_.unavailable_reason));
  }
  oauth::Authorizer& authorizer = *oauth_.authorizer;
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
      reg.registered_by = admin;
      GV_ASSIGN_OR_RETURN(store::ConnectorRegistration stored,
                          authorizer.Register(std::move(reg), client_secret));
      spdlog::info("connector.registered admin={} uid={} connector={} type={} client_id={}", admin,
                   connection.peer().uid, stored.connector_id, stored.connector_type,
                   stored.client_id);
      ToProto(stored, oauth_.catalog, r.mutable_register_connector()->mutable_connector());
      return absl::OkStatus();
    }
    case v1::Request::kBeginAuthorization: {
      const v1::BeginAuthorizationRequest& in = request.begin_authorization();
      GV_ASSIGN_OR_RETURN(
          oauth::Authorizer::Started started,
          authorizer.Begin(in.workspace_id(), in.connector_id(),
                           std::vector<std::string>(in.scopes().begin(), in.scopes().end()), admin,
                           in.redirect_uri()));
      spdlog::info("authorization.started admin={} uid={} workspace={} connector={} scopes={}",
                   admin, connection.peer().uid, in.workspace_id(), in.connector_id(),
                   absl::StrJoin(started.scopes, " "));
      v1::BeginAuthorizationReply* out = r.mutable_begin_authorization();
      out->set_authorization_url(started.authorization_url);
      out->set_expires_at_ms(UnixMillis(started.expires_at));
      for (const std::string& s : started.scopes) out->add_scopes(s);
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
      absl::StatusOr<oauth::Authorizer::Completed> done = authorizer.Complete(callback);
      if (!done.ok()) {
        spdlog::warn("authorization.failed admin={} uid={} reason={}", admin, connection.peer().uid,
                     std::string(done.status().message()));
        return done.status();
      }
      const store::Grant& g = done->grant;
      spdlog::info("{} admin={} uid={} workspace={} connector={} grant={} account={} scopes={}{}",
                   done->replaced_grant_id ? "grant.scope_changed" : "grant.authorized",
                   g.authorized_by, connection.peer().uid, g.workspace_id, g.connector_id,
                   g.grant_id, g.account_id, absl::StrJoin(g.scopes, " "),
                   done->replaced_grant_id ? " replaced=" + *done->replaced_grant_id : "");
      ToProto(g, r.mutable_complete_authorization()->mutable_grant());
      if (done->replaced_grant_id) {
        r.mutable_complete_authorization()->set_replaced_grant_id(*done->replaced_grant_id);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InternalError("unexpected OAuth request");
  }
}

}  // namespace grantvault::daemon
