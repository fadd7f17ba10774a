#include "broker/messages.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/secret_bytes.h"
#include "ipc/packet_channel.h"

namespace grantvault::broker {

absl::Status StatusOf(const v1::Status& status) {
  if (status.code() == 0) return absl::OkStatus();
  const int code = status.code();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(absl::StrCat("the broker answered status code ", code));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.message());
}

void SetStatus(const absl::Status& from, v1::Status* to) {
  to->set_code(static_cast<int>(from.code()));
  to->set_message(std::string(from.message()));
}

void WipeSecrets(v1::Request& request) {
  if (request.body_case() == v1::Request::kRegister) {
    WipeString(*request.mutable_register_()->mutable_client_secret());
  } else if (request.body_case() == v1::Request::kComplete) {
    WipeString(*request.mutable_complete()->mutable_code());
  } else if (request.body_case() == v1::Request::kToken) {
    WipeString(*request.mutable_token()->mutable_rejected_token());
  }
}

void WipeSecrets(v1::Reply& reply) {
  if (reply.body_case() == v1::Reply::kToken) {
    WipeString(*reply.mutable_token()->mutable_token());
  } else if (reply.body_case() == v1::Reply::kFingerprintKey) {
    WipeString(*reply.mutable_fingerprint_key()->mutable_key());
  }
}

}  // namespace grantvault::broker
