#include "keys/custodian.h"

#include <utility>

#include "hsm/keys.h"

namespace grantvault::keys {
namespace {

class LocalCustodian final : public Custodian {
 public:
  LocalCustodian(hsm::Token* token, KeyManager* keys, hsm::Sealer* sealer)
      : token_(token), keys_(keys), sealer_(sealer) {}

  absl::StatusOr<std::vector<KeyStatus>> Status() override { return keys_->Status(); }
  absl::StatusOr<store::KeyVersion> Rotate() override { return keys_->Rotate(sealer_); }
  absl::StatusOr<RewrapResult> Rewrap(
      size_t batch_size, const std::function<void(const RewrapProgress&)>& progress) override {
    return keys_->Rewrap(*sealer_, batch_size, progress);
  }
  absl::Status Retire(int version) override { return keys_->Retire(version); }

  absl::StatusOr<AuditPublicKey> AuditKey() override {
    absl::StatusOr<std::vector<hsm::KeyRef>> found =
        hsm::ListKeys(*token_, CKO_PUBLIC_KEY, hsm::kAuditKeyLabelPrefix);
    if (!found.ok()) return found.status();
    if (found->empty()) return absl::NotFoundError("there is no audit key");
    absl::StatusOr<std::string> pem = hsm::SigningPublicKeyPem(*token_, found->front());
    if (!pem.ok()) return pem.status();
    return AuditPublicKey{found->front().label, *std::move(pem)};
  }

  TokenHealth Health() override {
    TokenHealth health;
    health.token_label = token_->label();
    health.active_kek = sealer_->ActiveKek().label;
    absl::StatusOr<hsm::Session> session = token_->Acquire();
    if (session.ok()) {
      CK_SESSION_INFO info;
      health.hsm_reachable = session->fn()->C_GetSessionInfo(session->handle(), &info) == CKR_OK;
    }
    return health;
  }

 private:
  hsm::Token* const token_;
  KeyManager* const keys_;
  hsm::Sealer* const sealer_;
};

}  // namespace

std::unique_ptr<Custodian> MakeLocalCustodian(hsm::Token* token, KeyManager* keys,
                                              hsm::Sealer* sealer) {
  return std::make_unique<LocalCustodian>(token, keys, sealer);
}

}  // namespace grantvault::keys
