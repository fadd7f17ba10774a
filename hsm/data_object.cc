#include "hsm/data_object.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grantvault::hsm {
namespace {

CK_BBOOL kTrue = CK_TRUE;

absl::Status CheckRv(Session& session, std::string_view what, CK_RV rv) {
  if (rv == CKR_OK) return absl::OkStatus();
  if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) session.MarkBroken();
  return Pkcs11Error(what, rv);
}

// Every data object of ours labelled `label`.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindDataObjects(Session& session,
                                                              const std::string& label) {
  CK_OBJECT_CLASS cls = CKO_DATA;
  std::string application = kDataObjectApplication;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_TOKEN, &kTrue, sizeof(kTrue)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_APPLICATION, application.data(), application.size()},
  };
  const std::string what = absl::StrCat("find data object ", label);
  GV_RETURN_IF_ERROR(
      CheckRv(session, what, session.fn()->C_FindObjectsInit(session.handle(), tmpl, 4)));
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = CKR_OK;
  while (true) {
    CK_OBJECT_HANDLE batch[16];
    CK_ULONG n = 0;
    rv = session.fn()->C_FindObjects(session.handle(), batch, 16, &n);
    if (rv != CKR_OK || n == 0) break;
    found.insert(found.end(), batch, batch + n);
  }
  CK_RV final_rv = session.fn()->C_FindObjectsFinal(session.handle());
  GV_RETURN_IF_ERROR(CheckRv(session, what, rv));
  GV_RETURN_IF_ERROR(CheckRv(session, what, final_rv));
  return found;
}

absl::StatusOr<std::optional<CK_OBJECT_HANDLE>> FindOneDataObject(Session& session,
                                                                  const std::string& label) {
  GV_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found, FindDataObjects(session, label));
  if (found.empty()) return std::optional<CK_OBJECT_HANDLE>();
  if (found.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat("the token holds ", found.size(),
                                                      " data objects labelled \"", label,
                                                      "\"; refusing to guess which one is meant"));
  }
  return std::optional<CK_OBJECT_HANDLE>(found[0]);
}

}  // namespace

absl::StatusOr<std::optional<std::vector<uint8_t>>> ReadDataObject(Token& token,
                                                                   const std::string& label) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  GV_ASSIGN_OR_RETURN(std::optional<CK_OBJECT_HANDLE> handle, FindOneDataObject(session, label));
  if (!handle.has_value()) return std::optional<std::vector<uint8_t>>();
  const std::string what = absl::StrCat("read data object ", label);
  CK_ATTRIBUTE size_query = {CKA_VALUE, nullptr, 0};
  GV_RETURN_IF_ERROR(CheckRv(
      session, what, session.fn()->C_GetAttributeValue(session.handle(), *handle, &size_query, 1)));
  std::vector<uint8_t> value(size_query.ulValueLen);
  CK_ATTRIBUTE read = {CKA_VALUE, value.data(), value.size()};
  if (!value.empty()) {
    GV_RETURN_IF_ERROR(CheckRv(
        session, what, session.fn()->C_GetAttributeValue(session.handle(), *handle, &read, 1)));
  }
  value.resize(read.ulValueLen);
  return std::optional<std::vector<uint8_t>>(std::move(value));
}

absl::Status WriteDataObject(Token& token, const std::string& label,
                             absl::Span<const uint8_t> value) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  GV_ASSIGN_OR_RETURN(std::optional<CK_OBJECT_HANDLE> handle, FindOneDataObject(session, label));
  const std::string what = absl::StrCat("write data object ", label);
  // Some tokens refuse a zero-length attribute pointer; an empty value is
  // still written with a valid (unused) pointer.
  uint8_t none = 0;
  void* bytes = value.empty() ? &none : const_cast<uint8_t*>(value.data());
  if (handle.has_value()) {
    CK_ATTRIBUTE set = {CKA_VALUE, bytes, value.size()};
    const CK_RV rv = session.fn()->C_SetAttributeValue(session.handle(), *handle, &set, 1);
    // SoftHSM2 keeps a data object's value read-only once created: replace
    // the object instead.
    if (rv != CKR_ATTRIBUTE_READ_ONLY) return CheckRv(session, what, rv);
    GV_RETURN_IF_ERROR(
        CheckRv(session, what, session.fn()->C_DestroyObject(session.handle(), *handle)));
  }
  CK_OBJECT_CLASS cls = CKO_DATA;
  std::string application = kDataObjectApplication;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_TOKEN, &kTrue, sizeof(kTrue)},
      {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
      {CKA_MODIFIABLE, &kTrue, sizeof(kTrue)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_APPLICATION, application.data(), application.size()},
      {CKA_VALUE, bytes, value.size()},
  };
  CK_OBJECT_HANDLE created = CK_INVALID_HANDLE;
  return CheckRv(session, what, session.fn()->C_CreateObject(session.handle(), tmpl, 7, &created));
}

absl::Status DestroyDataObject(Token& token, const std::string& label) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  GV_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found, FindDataObjects(session, label));
  for (CK_OBJECT_HANDLE handle : found) {
    GV_RETURN_IF_ERROR(CheckRv(session, absl::StrCat("destroy data object ", label),
                               session.fn()->C_DestroyObject(session.handle(), handle)));
  }
  return absl::OkStatus();
}

}  // namespace grantvault::hsm
