#include "front/broker_calls.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/secret_bytes.h"
#include "common/status.h"

namespace grantvault::front {
namespace {

// Key operations and signatures are quick; a rewrap of many records is not.
constexpr absl::Duration kQuickCall = absl::Seconds(30);
constexpr absl::Duration kRewrapCall = absl::Hours(1);

absl::Time TimeOf(int64_t micros) {
  return micros == 0 ? absl::InfinitePast() : absl::FromUnixMicros(micros);
}

store::KeyVersion FromProto(const broker::v1::KeyVersion& in) {
  store::KeyVersion k;
  k.version = in.version();
  k.label = in.label();
  k.key_id_hex = in.key_id_hex();
  k.state = static_cast<store::KeyState>(in.state());
  k.created_at = TimeOf(in.created_at_us());
  if (in.retired_at_us() != 0) k.retired_at = TimeOf(in.retired_at_us());
  return k;
}

class BrokerAuthorization final : public oauth::AuthorizationFlow {
 public:
  BrokerAuthorization(BrokerLinkSource links, store::GrantStore* store, absl::Duration timeout)
      : links_(std::move(links)), store_(store), timeout_(timeout) {}

  absl::StatusOr<store::ConnectorRegistration> Register(store::ConnectorRegistration registration,
                                                        const SecretBytes& client_secret) override {
    broker::v1::Request request;
    broker::v1::RegisterRequest* in = request.mutable_register_();
    broker::v1::ConnectorRegistration* r = in->mutable_registration();
    r->set_connector_id(registration.connector_id);
    r->set_connector_type(registration.connector_type);
    r->set_client_id(registration.client_id);
    r->set_issuer(registration.issuer);
    r->mutable_parameters()->insert(registration.parameters.begin(), registration.parameters.end());
    for (const std::string& uri : registration.redirect_uris) r->add_redirect_uris(uri);
    for (const std::string& url : registration.api_bases) r->add_api_bases(url);
    r->set_allow_private_network(registration.allow_private_network);
    r->set_registered_by(registration.registered_by);
    in->set_client_secret(reinterpret_cast<const char*>(client_secret.data()),
                          client_secret.size());
    absl::StatusOr<broker::v1::Reply> reply = CallBroker(links_, request, timeout_);
    WipeString(*in->mutable_client_secret());
    GV_RETURN_IF_ERROR(reply.status());
    return store_->GetConnectorRegistration(reply->register_().connector_id());
  }

  absl::StatusOr<Started> Begin(std::string_view workspace_id, std::string_view connector_id,
                                std::vector<std::string> scopes, std::string_view admin_user,
                                std::string_view redirect_uri) override {
    broker::v1::Request request;
    broker::v1::BeginRequest* in = request.mutable_begin();
    in->set_workspace_id(std::string(workspace_id));
    in->set_connector_id(std::string(connector_id));
    for (const std::string& s : scopes) in->add_scopes(s);
    in->set_admin_user(std::string(admin_user));
    in->set_redirect_uri(std::string(redirect_uri));
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, timeout_));
    Started started;
    started.authorization_url = reply.begin().authorization_url();
    started.expires_at = TimeOf(reply.begin().expires_at_us());
    started.scopes.assign(reply.begin().scopes().begin(), reply.begin().scopes().end());
    started.required_scopes.assign(reply.begin().required_scopes().begin(),
                                   reply.begin().required_scopes().end());
    return started;
  }

  absl::StatusOr<Completed> Complete(const oauth::Callback& callback) override {
    broker::v1::Request request;
    broker::v1::CompleteRequest* in = request.mutable_complete();
    in->set_state(callback.state);
    in->set_code(reinterpret_cast<const char*>(callback.code.data()), callback.code.size());
    in->set_error(callback.error);
    in->set_error_description(callback.error_description);
    in->set_issuer(callback.issuer);
    absl::StatusOr<broker::v1::Reply> reply = CallBroker(links_, request, timeout_);
    WipeString(*in->mutable_code());
    GV_RETURN_IF_ERROR(reply.status());
    Completed done;
    GV_ASSIGN_OR_RETURN(done.grant, store_->GetGrant(reply->complete().grant_id()));
    if (!reply->complete().replaced_grant_id().empty()) {
      done.replaced_grant_id = reply->complete().replaced_grant_id();
    }
    return done;
  }

 private:
  const BrokerLinkSource links_;
  store::GrantStore* const store_;
  const absl::Duration timeout_;
};

class BrokerCustodian final : public keys::Custodian {
 public:
  explicit BrokerCustodian(BrokerLinkSource links) : links_(std::move(links)) {}

  absl::StatusOr<std::vector<keys::KeyStatus>> Status() override {
    broker::v1::Request request;
    request.mutable_key_status();
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, kQuickCall));
    std::vector<keys::KeyStatus> out;
    for (const broker::v1::KeyStatus& k : reply.key_status().keys()) {
      out.push_back(keys::KeyStatus{FromProto(k.version()), k.sealed_records(), k.in_token()});
    }
    return out;
  }

  absl::StatusOr<store::KeyVersion> Rotate() override {
    broker::v1::Request request;
    request.mutable_rotate_key();
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, kQuickCall));
    return FromProto(reply.rotate_key().version());
  }

  absl::StatusOr<keys::RewrapResult> Rewrap(
      size_t batch_size,
      const std::function<void(const keys::RewrapProgress&)>& progress) override {
    broker::v1::Request request;
    request.mutable_rewrap()->set_batch_size(static_cast<uint32_t>(batch_size));
    GV_ASSIGN_OR_RETURN(
        broker::v1::Reply reply,
        CallBroker(links_, request, kRewrapCall, [&](const broker::v1::Reply& more) {
          if (progress && more.has_rewrap_progress()) {
            progress(keys::RewrapProgress{more.rewrap_progress().done(),
                                          more.rewrap_progress().remaining()});
          }
        }));
    keys::RewrapResult result;
    result.rewrapped = reply.rewrap().rewrapped();
    result.changed_meanwhile = reply.rewrap().changed_meanwhile();
    for (const auto& f : reply.rewrap().failures()) {
      result.failures.push_back(keys::RewrapResult::Failure{
          store::SealedSecretKey{f.owner_id(), f.purpose()}, f.kek_label(), f.reason()});
    }
    return result;
  }

  absl::Status Retire(int version) override {
    broker::v1::Request request;
    request.mutable_retire_key()->set_version(version);
    return CallBroker(links_, request, kQuickCall).status();
  }

  absl::StatusOr<keys::AuditPublicKey> AuditKey() override {
    broker::v1::Request request;
    request.mutable_audit_public_key();
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, kQuickCall));
    return keys::AuditPublicKey{reply.audit_public_key().label(), reply.audit_public_key().pem()};
  }

  keys::TokenHealth Health() override {
    broker::v1::Request request;
    request.mutable_health();
    absl::StatusOr<broker::v1::Reply> reply = CallBroker(links_, request, kHealthCallTimeout);
    keys::TokenHealth health;
    if (!reply.ok()) return health;  // not reachable: hsm_reachable stays false
    health.token_label = reply->health().token_label();
    health.hsm_reachable = reply->health().hsm_reachable();
    health.active_kek = reply->health().active_kek();
    return health;
  }

 private:
  const BrokerLinkSource links_;
};

class BrokerSigner final : public audit::Signer {
 public:
  BrokerSigner(BrokerLinkSource links, std::string label, std::string pem)
      : links_(std::move(links)), label_(std::move(label)), pem_(std::move(pem)) {}

  absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t> data) override {
    broker::v1::Request request;
    request.mutable_sign()->set_data(reinterpret_cast<const char*>(data.data()), data.size());
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, kQuickCall));
    const std::string& signature = reply.sign().signature();
    return std::vector<uint8_t>(signature.begin(), signature.end());
  }
  absl::StatusOr<std::string> PublicKeyPem() override { return pem_; }
  std::string key_label() const override { return label_; }

 private:
  const BrokerLinkSource links_;
  const std::string label_;
  const std::string pem_;
};

class BrokerAnchors final : public audit::AnchorStore {
 public:
  explicit BrokerAnchors(BrokerLinkSource links) : links_(std::move(links)) {}

  absl::StatusOr<std::optional<audit::ChainAnchors>> Load() override {
    broker::v1::Request request;
    request.mutable_load_anchors();
    GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links_, request, kQuickCall));
    if (!reply.load_anchors().present()) return std::nullopt;
    GV_ASSIGN_OR_RETURN(audit::DecodedAnchors decoded,
                        audit::DecodeAnchors(reply.load_anchors().encoded()));
    return std::move(decoded.anchors);
  }

  absl::Status Save(const audit::ChainAnchors& anchors) override {
    broker::v1::Request request;
    const std::vector<uint8_t> encoded = audit::EncodeAnchors(0, anchors);
    request.mutable_save_anchors()->set_encoded(reinterpret_cast<const char*>(encoded.data()),
                                                encoded.size());
    return CallBroker(links_, request, kQuickCall).status();
  }

 private:
  const BrokerLinkSource links_;
};

}  // namespace

absl::StatusOr<broker::v1::Reply> CallBroker(const BrokerLinkSource& links,
                                             const broker::v1::Request& request,
                                             absl::Duration timeout,
                                             const BrokerLink::OnProgress& progress) {
  GV_ASSIGN_OR_RETURN(std::shared_ptr<BrokerLink> link, links());
  return link->Call(request, timeout, progress);
}

std::unique_ptr<oauth::AuthorizationFlow> MakeBrokerAuthorization(BrokerLinkSource links,
                                                                  store::GrantStore* store,
                                                                  absl::Duration timeout) {
  return std::make_unique<BrokerAuthorization>(std::move(links), store, timeout);
}

std::unique_ptr<keys::Custodian> MakeBrokerCustodian(BrokerLinkSource links) {
  return std::make_unique<BrokerCustodian>(std::move(links));
}

absl::StatusOr<std::unique_ptr<audit::Signer>> MakeBrokerSigner(BrokerLinkSource links) {
  broker::v1::Request request;
  request.mutable_signer_info();
  GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links, request, kQuickCall));
  return std::make_unique<BrokerSigner>(std::move(links), reply.signer_info().key_label(),
                                        reply.signer_info().public_key_pem());
}

std::unique_ptr<audit::AnchorStore> MakeBrokerAnchors(BrokerLinkSource links) {
  return std::make_unique<BrokerAnchors>(std::move(links));
}

absl::StatusOr<SecretBytes> FetchFingerprintKey(const BrokerLinkSource& links) {
  broker::v1::Request request;
  request.mutable_fingerprint_key();
  GV_ASSIGN_OR_RETURN(broker::v1::Reply reply, CallBroker(links, request, kQuickCall));
  return SecretBytes::TakeFrom(*reply.mutable_fingerprint_key()->mutable_key());
}

}  // namespace grantvault::front
