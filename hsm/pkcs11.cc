#include "hsm/pkcs11.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"

namespace grantvault::hsm {

std::string RvName(CK_RV rv) {
  switch (rv) {
#define GV_RV(name) \
  case name:        \
    return #name;
    GV_RV(CKR_OK)
    GV_RV(CKR_CANCEL)
    GV_RV(CKR_HOST_MEMORY)
    GV_RV(CKR_SLOT_ID_INVALID)
    GV_RV(CKR_GENERAL_ERROR)
    GV_RV(CKR_FUNCTION_FAILED)
    GV_RV(CKR_ARGUMENTS_BAD)
    GV_RV(CKR_ATTRIBUTE_SENSITIVE)
    GV_RV(CKR_ATTRIBUTE_TYPE_INVALID)
    GV_RV(CKR_ATTRIBUTE_VALUE_INVALID)
    GV_RV(CKR_DATA_INVALID)
    GV_RV(CKR_DATA_LEN_RANGE)
    GV_RV(CKR_DEVICE_ERROR)
    GV_RV(CKR_DEVICE_MEMORY)
    GV_RV(CKR_DEVICE_REMOVED)
    GV_RV(CKR_ENCRYPTED_DATA_INVALID)
    GV_RV(CKR_ENCRYPTED_DATA_LEN_RANGE)
    GV_RV(CKR_KEY_HANDLE_INVALID)
    GV_RV(CKR_KEY_TYPE_INCONSISTENT)
    GV_RV(CKR_KEY_FUNCTION_NOT_PERMITTED)
    GV_RV(CKR_MECHANISM_INVALID)
    GV_RV(CKR_MECHANISM_PARAM_INVALID)
    GV_RV(CKR_OBJECT_HANDLE_INVALID)
    GV_RV(CKR_OPERATION_ACTIVE)
    GV_RV(CKR_OPERATION_NOT_INITIALIZED)
    GV_RV(CKR_PIN_INCORRECT)
    GV_RV(CKR_PIN_INVALID)
    GV_RV(CKR_PIN_LEN_RANGE)
    GV_RV(CKR_PIN_EXPIRED)
    GV_RV(CKR_PIN_LOCKED)
    GV_RV(CKR_SESSION_CLOSED)
    GV_RV(CKR_SESSION_COUNT)
    GV_RV(CKR_SESSION_HANDLE_INVALID)
    GV_RV(CKR_SESSION_READ_ONLY)
    GV_RV(CKR_SIGNATURE_INVALID)
    GV_RV(CKR_TEMPLATE_INCOMPLETE)
    GV_RV(CKR_TEMPLATE_INCONSISTENT)
    GV_RV(CKR_TOKEN_NOT_PRESENT)
    GV_RV(CKR_TOKEN_NOT_RECOGNIZED)
    GV_RV(CKR_TOKEN_WRITE_PROTECTED)
    GV_RV(CKR_USER_ALREADY_LOGGED_IN)
    GV_RV(CKR_USER_NOT_LOGGED_IN)
    GV_RV(CKR_USER_PIN_NOT_INITIALIZED)
    GV_RV(CKR_USER_TYPE_INVALID)
    GV_RV(CKR_BUFFER_TOO_SMALL)
    GV_RV(CKR_CRYPTOKI_NOT_INITIALIZED)
    GV_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef GV_RV
    default:
      return absl::StrFormat("CKR_0x%08x", rv);
  }
}

absl::Status Pkcs11Error(std::string_view what, CK_RV rv) {
  std::string message = absl::StrCat(Sv(what), ": ", RvName(rv));
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_USER_PIN_NOT_INITIALIZED:
      return absl::UnauthenticatedError(message);
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_DEVICE_ERROR:
    case CKR_SESSION_COUNT:
      return absl::UnavailableError(message);
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_MEMORY:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace grantvault::hsm
