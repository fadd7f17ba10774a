#include "broker/server.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "broker/messages.h"
#include "common/secret_bytes.h"
#include "common/thread_name.h"

namespace grantvault::broker {
namespace {

int64_t MicrosOf(absl::Time t) {
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) return 0;
  return absl::ToUnixMicros(t);
}

void ToProto(const store::KeyVersion& k, v1::KeyVersion* out) {
  out->set_version(k.version);
  out->set_label(k.label);
  out->set_key_id_hex(k.key_id_hex);
  out->set_state(static_cast<int>(k.state));
  out->set_created_at_us(MicrosOf(k.created_at));
  if (k.retired_at) out->set_retired_at_us(MicrosOf(*k.retired_at));
}

store::ConnectorRegistration FromProto(const v1::ConnectorRegistration& in) {
  store::ConnectorRegistration r;
  r.connector_id = in.connector_id();
  r.connector_type = in.connector_type();
  r.client_id = in.client_id();
  r.issuer = in.issuer();
  r.parameters.insert(in.parameters().begin(), in.parameters().end());
  r.redirect_uris.assign(in.redirect_uris().begin(), in.redirect_uris().end());
  r.api_bases.assign(in.api_bases().begin(), in.api_bases().end());
  r.allow_private_network = in.allow_private_network();
  r.registered_by = in.registered_by();
  return r;
}

}  // namespace

// Calls waiting for a worker (more: the front is broken, and the link closed).
constexpr size_t kMaxQueuedCalls = 4096;

Server::Server(UniqueFd fd, size_t workers) : worker_count_(workers) {
  channel_ = ipc::PacketChannel::Start(
      std::move(fd), [this](std::string_view p) { OnPacket(p); },
      [this](const absl::Status&) {
        absl::MutexLock lock(&mu_);
        closed_ = true;
      });
}

Server::~Server() {
  channel_->Close();
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  channel_.reset();
}

void Server::SendEvent(const v1::Event& event) {
  v1::Packet packet;
  *packet.mutable_event() = event;
  channel_->Send(packet.SerializeAsString()).IgnoreError();  // the front is gone: nobody to tell
}

void Server::Serve(const ServerDeps& deps) {
  {
    absl::MutexLock lock(&mu_);
    deps_ = deps;
    serving_ = true;
  }
  for (size_t i = 0; i < worker_count_; ++i) {
    workers_.emplace_back([this] {
      NameThisThread("gv-broker-work");
      WorkerLoop();
    });
  }
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&closed_));
  }
  // Each worker finishes the call it is running (with the dependencies its
  // caller still holds) before Serve returns and they are destroyed.
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void Server::OnPacket(std::string_view bytes) {
  v1::Packet packet;
  if (!packet.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())) ||
      !packet.has_request() || packet.call_id() == 0) {
    channel_->Close();  // only the front holds the other end: garbage means a bug, not input
    return;
  }
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= kMaxQueuedCalls) {
    // The front never has this many calls waiting (its callers are bounded
    // by its own threads): it is broken or hostile.
    closed_ = true;
    channel_->Close();
    return;
  }
  queue_.emplace_back(packet.call_id(), std::move(*packet.mutable_request()));
}

void Server::WorkerLoop() {
  while (true) {
    std::pair<uint64_t, v1::Request> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return closed_ || (serving_ && !queue_.empty());
      };
      mu_.Await(absl::Condition(&ready));
      if (closed_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    Run(job.first, std::move(job.second));
  }
}

void Server::Run(uint64_t call_id, v1::Request request) {
  v1::Reply reply = Handle(call_id, request);
  WipeSecrets(request);  // what the front sent may hold a client secret or a code
  Reply(call_id, reply);
}

void Server::Reply(uint64_t call_id, v1::Reply& reply) {
  v1::Packet packet;
  packet.set_call_id(call_id);
  *packet.mutable_reply() = std::move(reply);
  std::string bytes = packet.SerializeAsString();
  absl::Status sent = channel_->Send(bytes);
  WipeString(bytes);
  if (absl::IsInvalidArgument(sent)) {
    // Too large for one packet (a reply made of many failures, say): the
    // front is told so rather than left to time out.
    v1::Packet refusal;
    refusal.set_call_id(call_id);
    SetStatus(absl::InternalError(
                  absl::StrCat("the broker's answer is too large to send (", sent.message(), ")")),
              refusal.mutable_reply()->mutable_status());
    channel_->Send(refusal.SerializeAsString()).IgnoreError();
  }
  // Otherwise a failure means the front is gone: nobody to answer.
  WipeSecrets(*packet.mutable_reply());
}

v1::Reply Server::Handle(uint64_t call_id, v1::Request& request) {
  v1::Reply r;
  absl::Status status;
  switch (request.body_case()) {
    case v1::Request::kHello:
      if (request.hello().version() != v1::VERSION_1) {
        status = absl::FailedPreconditionError(
            absl::StrCat("broker protocol version ", request.hello().version(),
                         " is not this broker's (", v1::VERSION_1, ")"));
        break;
      }
      *r.mutable_hello() = deps_.hello;
      break;
    case v1::Request::kToken: {
      const v1::TokenRequest& in = request.token();
      const absl::Time deadline = absl::Now() + absl::Milliseconds(in.timeout_ms());
      absl::StatusOr<tokens::SharedAccessToken> token = absl::UnknownError("unset");
      if (in.rejected_token().empty()) {
        token = deps_.refresher->GetAccessToken(in.grant_id(),
                                                absl::Milliseconds(in.min_valid_ms()), deadline);
      } else {
        tokens::AccessToken rejected;
        rejected.token = SecretBytes::TakeFrom(*request.mutable_token()->mutable_rejected_token());
        token = deps_.refresher->Renew(in.grant_id(), rejected,
                                       absl::Milliseconds(in.min_valid_ms()), deadline);
      }
      status = token.status();
      if (!token.ok()) break;
      v1::AccessToken* out = r.mutable_token();
      const tokens::AccessToken& t = **token;
      out->set_token(reinterpret_cast<const char*>(t.token.data()), t.token.size());
      out->set_token_type(t.token_type);
      out->set_expires_at_us(MicrosOf(t.expires_at));
      out->set_obtained_at_us(MicrosOf(t.obtained_at));
      if (std::optional<tokens::TokenCache::Lookup> cached =
              deps_.refresher->cache().GetClaimingRefresh(in.grant_id(), absl::ZeroDuration(),
                                                          absl::Seconds(1))) {
        out->set_refresh_at_us(MicrosOf(cached->refresh_at));
      }
      break;
    }
    case v1::Request::kRevoke:
      deps_.refresher->Revoke(request.revoke().grant_id(), request.revoke().reason());
      break;
    case v1::Request::kForget:
      deps_.refresher->Forget(request.forget().grant_id());
      break;
    case v1::Request::kWakeRevoker:
      if (deps_.wake_revoker) deps_.wake_revoker();
      break;
    case v1::Request::kRegister:
    case v1::Request::kBegin:
    case v1::Request::kComplete: {
      if (deps_.authorizer == nullptr) {
        status = absl::UnavailableError(
            absl::StrCat("the OAuth engine is not available: ", deps_.oauth_unavailable_reason));
        break;
      }
      if (request.has_register_()) {
        SecretBytes secret =
            SecretBytes::TakeFrom(*request.mutable_register_()->mutable_client_secret());
        absl::StatusOr<store::ConnectorRegistration> stored =
            deps_.authorizer->Register(FromProto(request.register_().registration()), secret);
        status = stored.status();
        if (stored.ok()) r.mutable_register_()->set_connector_id(stored->connector_id);
      } else if (request.has_begin()) {
        const v1::BeginRequest& in = request.begin();
        absl::StatusOr<oauth::AuthorizationFlow::Started> started = deps_.authorizer->Begin(
            in.workspace_id(), in.connector_id(),
            std::vector<std::string>(in.scopes().begin(), in.scopes().end()), in.admin_user(),
            in.redirect_uri());
        status = started.status();
        if (!started.ok()) break;
        v1::BeginReply* out = r.mutable_begin();
        out->set_authorization_url(started->authorization_url);
        out->set_expires_at_us(MicrosOf(started->expires_at));
        for (const std::string& s : started->scopes) out->add_scopes(s);
        for (const std::string& s : started->required_scopes) out->add_required_scopes(s);
      } else {
        v1::CompleteRequest& in = *request.mutable_complete();
        oauth::Callback callback;
        callback.state = in.state();
        callback.code = SecretBytes::TakeFrom(*in.mutable_code());
        callback.error = in.error();
        callback.error_description = in.error_description();
        callback.issuer = in.issuer();
        absl::StatusOr<oauth::AuthorizationFlow::Completed> done =
            deps_.authorizer->Complete(callback);
        status = done.status();
        if (!done.ok()) break;
        r.mutable_complete()->set_grant_id(done->grant.grant_id);
        if (done->replaced_grant_id) {
          r.mutable_complete()->set_replaced_grant_id(*done->replaced_grant_id);
        }
      }
      break;
    }
    case v1::Request::kKeyStatus: {
      absl::StatusOr<std::vector<keys::KeyStatus>> all = deps_.custodian->Status();
      status = all.status();
      if (!all.ok()) break;
      for (const keys::KeyStatus& k : *all) {
        v1::KeyStatus* out = r.mutable_key_status()->add_keys();
        ToProto(k.version, out->mutable_version());
        out->set_sealed_records(k.sealed_records);
        out->set_in_token(k.in_token);
      }
      break;
    }
    case v1::Request::kRotateKey: {
      absl::StatusOr<store::KeyVersion> v = deps_.custodian->Rotate();
      status = v.status();
      if (v.ok()) ToProto(*v, r.mutable_rotate_key()->mutable_version());
      break;
    }
    case v1::Request::kRewrap: {
      absl::StatusOr<keys::RewrapResult> result = deps_.custodian->Rewrap(
          request.rewrap().batch_size(), [&](const keys::RewrapProgress& p) {
            v1::Reply progress;
            progress.set_more(true);
            progress.mutable_rewrap_progress()->set_done(p.done);
            progress.mutable_rewrap_progress()->set_remaining(p.remaining);
            Reply(call_id, progress);
          });
      status = result.status();
      if (!result.ok()) break;
      v1::RewrapReply* out = r.mutable_rewrap();
      out->set_rewrapped(result->rewrapped);
      out->set_changed_meanwhile(result->changed_meanwhile);
      for (size_t i = 0; i < result->failures.size() && i < 100; ++i) {
        const keys::RewrapResult::Failure& f = result->failures[i];
        v1::RewrapReply::Failure* failure = out->add_failures();
        failure->set_owner_id(f.key.owner_id);
        failure->set_purpose(f.key.purpose);
        failure->set_kek_label(f.kek_label);
        failure->set_reason(f.reason);
      }
      break;
    }
    case v1::Request::kRetireKey:
      status = deps_.custodian->Retire(request.retire_key().version());
      break;
    case v1::Request::kAuditPublicKey: {
      absl::StatusOr<keys::AuditPublicKey> key = deps_.custodian->AuditKey();
      status = key.status();
      if (key.ok()) {
        r.mutable_audit_public_key()->set_label(key->label);
        r.mutable_audit_public_key()->set_pem(key->pem);
      }
      break;
    }
    case v1::Request::kHealth: {
      const keys::TokenHealth health = deps_.custodian->Health();
      v1::HealthReply* out = r.mutable_health();
      out->set_token_label(health.token_label);
      out->set_hsm_reachable(health.hsm_reachable);
      out->set_active_kek(health.active_kek);
      for (const tokens::BreakerState& b : deps_.refresher->Breakers()) {
        v1::Breaker* breaker = out->add_breakers();
        breaker->set_connector_id(b.connector_id);
        breaker->set_phase(static_cast<int>(b.phase));
        breaker->set_consecutive_failures(b.consecutive_failures);
        breaker->set_open_until_us(MicrosOf(b.open_until));
        breaker->set_last_failure(b.last_failure);
      }
      break;
    }
    case v1::Request::kSign: {
      const std::string& data = request.sign().data();
      absl::StatusOr<std::vector<uint8_t>> signature = deps_.signer->SignSha256(
          std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
      status = signature.status();
      if (signature.ok()) {
        r.mutable_sign()->set_signature(reinterpret_cast<const char*>(signature->data()),
                                        signature->size());
      }
      break;
    }
    case v1::Request::kSignerInfo: {
      absl::StatusOr<std::string> pem = deps_.signer->PublicKeyPem();
      status = pem.status();
      if (pem.ok()) {
        r.mutable_signer_info()->set_key_label(deps_.signer->key_label());
        r.mutable_signer_info()->set_public_key_pem(*pem);
      }
      break;
    }
    case v1::Request::kLoadAnchors: {
      absl::StatusOr<std::optional<audit::ChainAnchors>> loaded = deps_.anchors->Load();
      status = loaded.status();
      if (loaded.ok() && loaded->has_value()) {
        const std::vector<uint8_t> encoded = audit::EncodeAnchors(0, **loaded);
        r.mutable_load_anchors()->set_present(true);
        r.mutable_load_anchors()->set_encoded(reinterpret_cast<const char*>(encoded.data()),
                                              encoded.size());
      }
      break;
    }
    case v1::Request::kSaveAnchors: {
      absl::StatusOr<audit::DecodedAnchors> decoded =
          audit::DecodeAnchors(request.save_anchors().encoded());
      status = decoded.status();
      if (decoded.ok()) status = deps_.anchors->Save(decoded->anchors);
      break;
    }
    case v1::Request::kFingerprintKey: {
      absl::StatusOr<SecretBytes> key = deps_.fingerprint_key();
      status = key.status();
      if (key.ok()) {
        r.mutable_fingerprint_key()->set_key(reinterpret_cast<const char*>(key->data()),
                                             key->size());
      }
      break;
    }
    case v1::Request::BODY_NOT_SET:
      status = absl::InvalidArgumentError("an empty broker request");
      break;
  }
  SetStatus(status, r.mutable_status());
  return r;
}

}  // namespace grantvault::broker
