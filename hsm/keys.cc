#include "hsm/keys.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <sodium.h>

#include <array>
#include <charconv>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grantvault::hsm {
namespace {

CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;

// DER of the prime256v1 (secp256r1) object identifier, for CKA_EC_PARAMS.
constexpr std::array<uint8_t, 10> kP256Oid = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                              0xce, 0x3d, 0x03, 0x01, 0x07};

CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, void* value, size_t size) {
  return CK_ATTRIBUTE{type, value, size};
}
CK_ATTRIBUTE Bool(CK_ATTRIBUTE_TYPE type, bool value) {
  return Attr(type, value ? &kTrue : &kFalse, sizeof(CK_BBOOL));
}
CK_ATTRIBUTE Bytes(CK_ATTRIBUTE_TYPE type, const void* data, size_t size) {
  return Attr(type, const_cast<void*>(data), size);
}

template <typename T>
using OsslPtr = std::unique_ptr<T, void (*)(T*)>;

absl::Status RefuseTakenLabel(Token& token, CK_OBJECT_CLASS object_class,
                              const std::string& label) {
  GV_ASSIGN_OR_RETURN(std::vector<KeyRef> existing, ListKeys(token, object_class, label));
  for (const KeyRef& k : existing) {
    if (k.label == label) {
      return absl::AlreadyExistsError(
          absl::StrCat("token '", token.label(), "' already holds a key labelled ", label));
    }
  }
  return absl::OkStatus();
}

std::vector<uint8_t> RandomId() {
  std::vector<uint8_t> id(16);
  randombytes_buf(id.data(), id.size());
  return id;
}

absl::Status CheckRv(Session& session, std::string_view what, CK_RV rv) {
  if (rv == CKR_OK) return absl::OkStatus();
  if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) session.MarkBroken();
  return Pkcs11Error(what, rv);
}

}  // namespace

std::string KekLabel(int version) { return absl::StrCat(kKekLabelPrefix, version); }

int KekVersionFromLabel(std::string_view label) {
  if (!label.starts_with(kKekLabelPrefix)) return -1;
  std::string_view digits = label.substr(sizeof(kKekLabelPrefix) - 1);
  int version = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), version);
  if (ec != std::errc() || end != digits.data() + digits.size() || version <= 0) return -1;
  return version;
}

absl::StatusOr<KeyRef> GenerateKek(Token& token, const std::string& label) {
  GV_RETURN_IF_ERROR(RefuseTakenLabel(token, CKO_SECRET_KEY, label));
  KeyRef ref{label, RandomId()};
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_ULONG len = 32;
  std::vector<CK_ATTRIBUTE> tmpl = {
      Bytes(CKA_CLASS, &cls, sizeof(cls)),
      Bytes(CKA_KEY_TYPE, &type, sizeof(type)),
      Bytes(CKA_VALUE_LEN, &len, sizeof(len)),
      Bytes(CKA_LABEL, ref.label.data(), ref.label.size()),
      Bytes(CKA_ID, ref.id.data(), ref.id.size()),
      Bool(CKA_TOKEN, true),
      Bool(CKA_PRIVATE, true),
      Bool(CKA_SENSITIVE, true),
      Bool(CKA_EXTRACTABLE, false),
      Bool(CKA_ENCRYPT, true),
      Bool(CKA_DECRYPT, true),
      Bool(CKA_WRAP, false),
      Bool(CKA_UNWRAP, false),
      Bool(CKA_SIGN, false),
      Bool(CKA_VERIFY, false),
      Bool(CKA_DERIVE, false),
  };
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv =
      session.fn()->C_GenerateKey(session.handle(), &mech, tmpl.data(), tmpl.size(), &handle);
  GV_RETURN_IF_ERROR(CheckRv(session, absl::StrCat("generate AES-256 key ", label), rv));
  return ref;
}

absl::StatusOr<KeyRef> GenerateSigningKeyPair(Token& token, const std::string& label) {
  GV_RETURN_IF_ERROR(RefuseTakenLabel(token, CKO_PRIVATE_KEY, label));
  KeyRef ref{label, RandomId()};
  std::vector<CK_ATTRIBUTE> pub = {
      Bytes(CKA_EC_PARAMS, kP256Oid.data(), kP256Oid.size()),
      Bytes(CKA_LABEL, ref.label.data(), ref.label.size()),
      Bytes(CKA_ID, ref.id.data(), ref.id.size()),
      Bool(CKA_TOKEN, true),
      Bool(CKA_VERIFY, true),
      Bool(CKA_ENCRYPT, false),
      Bool(CKA_WRAP, false),
  };
  std::vector<CK_ATTRIBUTE> priv = {
      Bytes(CKA_LABEL, ref.label.data(), ref.label.size()),
      Bytes(CKA_ID, ref.id.data(), ref.id.size()),
      Bool(CKA_TOKEN, true),
      Bool(CKA_PRIVATE, true),
      Bool(CKA_SENSITIVE, true),
      Bool(CKA_EXTRACTABLE, false),
      Bool(CKA_SIGN, true),
      Bool(CKA_DECRYPT, false),
      Bool(CKA_UNWRAP, false),
      Bool(CKA_DERIVE, false),
  };
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  CK_MECHANISM mech{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pub_handle = CK_INVALID_HANDLE, priv_handle = CK_INVALID_HANDLE;
  CK_RV rv = session.fn()->C_GenerateKeyPair(session.handle(), &mech, pub.data(), pub.size(),
                                             priv.data(), priv.size(), &pub_handle, &priv_handle);
  GV_RETURN_IF_ERROR(CheckRv(session, absl::StrCat("generate P-256 key pair ", label), rv));
  return ref;
}

absl::StatusOr<CK_OBJECT_HANDLE> FindObject(Session& session, CK_OBJECT_CLASS object_class,
                                            const KeyRef& ref) {
  CK_ATTRIBUTE tmpl[] = {
      Bytes(CKA_CLASS, &object_class, sizeof(object_class)),
      Bytes(CKA_LABEL, ref.label.data(), ref.label.size()),
      Bytes(CKA_ID, ref.id.data(), ref.id.size()),
  };
  CK_FUNCTION_LIST* fn = session.fn();
  GV_RETURN_IF_ERROR(CheckRv(session, "C_FindObjectsInit",
                             fn->C_FindObjectsInit(session.handle(), tmpl, std::size(tmpl))));
  CK_OBJECT_HANDLE found[2];
  CK_ULONG count = 0;
  CK_RV rv = fn->C_FindObjects(session.handle(), found, std::size(found), &count);
  fn->C_FindObjectsFinal(session.handle());
  GV_RETURN_IF_ERROR(CheckRv(session, "C_FindObjects", rv));
  if (count == 0) {
    return absl::NotFoundError(
        absl::StrCat("key ", ref.label, " (id ", ref.id.size(), " bytes) is not in the token"));
  }
  if (count > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the token holds more than one object named ", ref.label, " with that id"));
  }
  return found[0];
}

absl::StatusOr<std::vector<KeyRef>> ListKeys(Token& token, CK_OBJECT_CLASS object_class,
                                             std::string_view label_prefix) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  CK_FUNCTION_LIST* fn = session.fn();
  CK_ATTRIBUTE tmpl[] = {Bytes(CKA_CLASS, &object_class, sizeof(object_class))};
  GV_RETURN_IF_ERROR(
      CheckRv(session, "C_FindObjectsInit", fn->C_FindObjectsInit(session.handle(), tmpl, 1)));
  std::vector<CK_OBJECT_HANDLE> handles;
  CK_RV rv = CKR_OK;
  for (;;) {
    CK_OBJECT_HANDLE batch[64];
    CK_ULONG count = 0;
    rv = fn->C_FindObjects(session.handle(), batch, std::size(batch), &count);
    if (rv != CKR_OK || count == 0) break;
    handles.insert(handles.end(), batch, batch + count);
  }
  fn->C_FindObjectsFinal(session.handle());
  GV_RETURN_IF_ERROR(CheckRv(session, "C_FindObjects", rv));

  std::vector<KeyRef> keys;
  for (CK_OBJECT_HANDLE h : handles) {
    CK_ATTRIBUTE sizes[] = {Attr(CKA_LABEL, nullptr, 0), Attr(CKA_ID, nullptr, 0)};
    if (fn->C_GetAttributeValue(session.handle(), h, sizes, 2) != CKR_OK) continue;
    KeyRef ref;
    ref.label.resize(sizes[0].ulValueLen);
    ref.id.resize(sizes[1].ulValueLen);
    CK_ATTRIBUTE values[] = {Attr(CKA_LABEL, ref.label.data(), ref.label.size()),
                             Attr(CKA_ID, ref.id.data(), ref.id.size())};
    if (fn->C_GetAttributeValue(session.handle(), h, values, 2) != CKR_OK) continue;
    if (std::string_view(ref.label).starts_with(label_prefix)) keys.push_back(std::move(ref));
  }
  return keys;
}

absl::StatusOr<KeyAttributes> DescribeKey(Token& token, CK_OBJECT_CLASS object_class,
                                          const KeyRef& ref) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  GV_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE handle, FindObject(session, object_class, ref));
  KeyAttributes a;
  CK_BBOOL b[12] = {};
  CK_ATTRIBUTE tmpl[] = {
      Attr(CKA_KEY_TYPE, &a.key_type, sizeof(a.key_type)),
      Attr(CKA_TOKEN, &b[0], 1),
      Attr(CKA_PRIVATE, &b[1], 1),
      Attr(CKA_SENSITIVE, &b[2], 1),
      Attr(CKA_EXTRACTABLE, &b[3], 1),
      Attr(CKA_ALWAYS_SENSITIVE, &b[4], 1),
      Attr(CKA_NEVER_EXTRACTABLE, &b[5], 1),
      Attr(CKA_DECRYPT, &b[6], 1),
      Attr(CKA_UNWRAP, &b[7], 1),
      Attr(CKA_SIGN, &b[8], 1),
      Attr(CKA_DERIVE, &b[9], 1),
  };
  GV_RETURN_IF_ERROR(
      CheckRv(session, absl::StrCat("read attributes of ", ref.label),
              session.fn()->C_GetAttributeValue(session.handle(), handle, tmpl, std::size(tmpl))));
  a.token = b[0];
  a.private_object = b[1];
  a.sensitive = b[2];
  a.extractable = b[3];
  a.always_sensitive = b[4];
  a.never_extractable = b[5];
  a.decrypt = b[6];
  a.unwrap = b[7];
  a.sign = b[8];
  a.derive = b[9];
  if (object_class == CKO_SECRET_KEY) {
    CK_BBOOL enc = CK_FALSE, wrap = CK_FALSE;
    CK_ATTRIBUTE more[] = {Attr(CKA_VALUE_LEN, &a.value_len, sizeof(a.value_len)),
                           Attr(CKA_ENCRYPT, &enc, 1), Attr(CKA_WRAP, &wrap, 1)};
    GV_RETURN_IF_ERROR(CheckRv(
        session, absl::StrCat("read attributes of ", ref.label),
        session.fn()->C_GetAttributeValue(session.handle(), handle, more, std::size(more))));
    a.encrypt = enc;
    a.wrap = wrap;
  }
  return a;
}

absl::Status DestroyKey(Token& token, CK_OBJECT_CLASS object_class, const KeyRef& ref) {
  GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
  GV_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE handle, FindObject(session, object_class, ref));
  return CheckRv(session, absl::StrCat("destroy ", ref.label),
                 session.fn()->C_DestroyObject(session.handle(), handle));
}

absl::StatusOr<std::string> SigningPublicKeyPem(Token& token, const KeyRef& ref) {
  std::vector<uint8_t> point;
  {
    GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
    GV_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE handle, FindObject(session, CKO_PUBLIC_KEY, ref));
    CK_ATTRIBUTE size = Attr(CKA_EC_POINT, nullptr, 0);
    GV_RETURN_IF_ERROR(
        CheckRv(session, "read CKA_EC_POINT",
                session.fn()->C_GetAttributeValue(session.handle(), handle, &size, 1)));
    point.resize(size.ulValueLen);
    CK_ATTRIBUTE value = Attr(CKA_EC_POINT, point.data(), point.size());
    GV_RETURN_IF_ERROR(
        CheckRv(session, "read CKA_EC_POINT",
                session.fn()->C_GetAttributeValue(session.handle(), handle, &value, 1)));
  }
  // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point 04‖X‖Y.
  if (point.size() == 67 && point[0] == 0x04 && point[1] == 65)
    point.erase(point.begin(), point.begin() + 2);
  if (point.size() != 65 || point[0] != 0x04) {
    return absl::InternalError(absl::StrCat("unexpected CKA_EC_POINT for ", ref.label));
  }
  OsslPtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new(), OSSL_PARAM_BLD_free);
  if (!bld ||
      !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return absl::InternalError("OpenSSL: cannot build EC public key parameters");
  }
  OsslPtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()), OSSL_PARAM_free);
  OsslPtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr), EVP_PKEY_CTX_free);
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
    return absl::InternalError(absl::StrCat("OpenSSL rejected the public key of ", ref.label));
  }
  OsslPtr<EVP_PKEY> pkey(raw, EVP_PKEY_free);
  OsslPtr<BIO> bio(BIO_new(BIO_s_mem()), BIO_free_all);
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), pkey.get()) != 1) {
    return absl::InternalError("OpenSSL: cannot write PEM public key");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<std::vector<uint8_t>> SignSha256(Token& token, const KeyRef& ref,
                                                absl::Span<const uint8_t> message) {
  std::array<uint8_t, crypto_hash_sha256_BYTES> digest;
  crypto_hash_sha256(digest.data(), message.data(), message.size());
  std::array<uint8_t, 64> raw;  // r ‖ s, 32 bytes each for P-256
  {
    GV_ASSIGN_OR_RETURN(Session session, token.Acquire());
    GV_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE key, FindObject(session, CKO_PRIVATE_KEY, ref));
    CK_MECHANISM mech{CKM_ECDSA, nullptr, 0};
    GV_RETURN_IF_ERROR(CheckRv(session, absl::StrCat("sign with ", ref.label),
                               session.fn()->C_SignInit(session.handle(), &mech, key)));
    CK_ULONG len = raw.size();
    GV_RETURN_IF_ERROR(CheckRv(
        session, absl::StrCat("sign with ", ref.label),
        session.fn()->C_Sign(session.handle(), digest.data(), digest.size(), raw.data(), &len)));
    if (len != raw.size()) return absl::InternalError("ECDSA signature of unexpected length");
  }
  OsslPtr<ECDSA_SIG> sig(ECDSA_SIG_new(), ECDSA_SIG_free);
  BIGNUM* r = BN_bin2bn(raw.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw.data() + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return absl::InternalError("OpenSSL: cannot build ECDSA signature");
  }
  int der_len = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (der_len <= 0) return absl::InternalError("OpenSSL: cannot encode ECDSA signature");
  std::vector<uint8_t> der(static_cast<size_t>(der_len));
  uint8_t* out = der.data();
  i2d_ECDSA_SIG(sig.get(), &out);
  return der;
}

}  // namespace grantvault::hsm
