#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "audit/signer.h"
#include "common/status.h"
#include "hsm/keys.h"

namespace grantvault::audit {

Signer::~Signer() = default;

namespace {

class HsmSigner final : public Signer {
 public:
  HsmSigner(hsm::Token& token, hsm::KeyRef ref, std::string pem)
      : token_(token), ref_(std::move(ref)), pem_(std::move(pem)) {}

  absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t> data) override {
    return hsm::SignSha256(token_, ref_, {data.data(), data.size()});
  }
  absl::StatusOr<std::string> PublicKeyPem() override { return pem_; }
  std::string key_label() const override { return ref_.label; }

 private:
  hsm::Token& token_;
  const hsm::KeyRef ref_;
  const std::string pem_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Signer>> MakeHsmSigner(hsm::Token& token, const std::string& label) {
  if (label.empty()) return absl::InvalidArgumentError("audit key label must not be empty");
  GV_ASSIGN_OR_RETURN(std::vector<hsm::KeyRef> keys, hsm::ListKeys(token, CKO_PRIVATE_KEY, label));
  std::vector<hsm::KeyRef> exact;
  for (hsm::KeyRef& key : keys) {
    if (key.label == label) exact.push_back(std::move(key));
  }
  if (exact.empty()) {
    return absl::NotFoundError(
        absl::StrCat("the token has no audit signing key labelled \"", label, "\""));
  }
  if (exact.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the token holds ", exact.size(), " private keys labelled \"", label,
                     "\"; refusing to guess which one signs the audit log"));
  }
  GV_ASSIGN_OR_RETURN(std::string pem, hsm::SigningPublicKeyPem(token, exact[0]));
  return std::unique_ptr<Signer>(
      std::make_unique<HsmSigner>(token, std::move(exact[0]), std::move(pem)));
}

}  // namespace grantvault::audit
