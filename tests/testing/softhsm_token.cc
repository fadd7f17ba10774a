#include "tests/testing/softhsm_token.h"

#include "common/files.h"
#include "common/ids.h"
#include "common/status.h"
#include "hsm/softhsm.h"

namespace grantvault::testing {

absl::StatusOr<std::unique_ptr<SoftHsmToken>> SoftHsmToken::Create(size_t max_sessions) {
  std::unique_ptr<SoftHsmToken> t(new SoftHsmToken());
  GV_RETURN_IF_ERROR(hsm::PrepareSoftHsm(t->dir_.Join("hsm")).status());
  SecretBytes so_pin = NewSecretText(16);
  SecretBytes user_pin = NewSecretText(16);
  GV_RETURN_IF_ERROR(
      hsm::InitializeToken(hsm::kDefaultModulePath, kTestTokenLabel, so_pin, user_pin));
  t->options_.token_label = kTestTokenLabel;
  t->options_.pin_file = t->dir_.Join("hsm/user.pin");
  t->options_.max_sessions = max_sessions;
  GV_RETURN_IF_ERROR(WriteFileAtomically(t->options_.pin_file, user_pin.view(), 0600));
  GV_RETURN_IF_ERROR(t->Reopen());
  return t;
}

SoftHsmToken::~SoftHsmToken() { token_.reset(); }

absl::Status SoftHsmToken::Reopen() {
  token_.reset();
  GV_ASSIGN_OR_RETURN(token_, hsm::Token::Open(options_));
  return absl::OkStatus();
}

}  // namespace grantvault::testing
