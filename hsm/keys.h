// Keys held in the token: generation, lookup, description and destruction.
// No function here ever reads a secret key's value out of the token.
#ifndef GRANTVAULT_HSM_KEYS_H_
#define GRANTVAULT_HSM_KEYS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hsm/pkcs11.h"
#include "hsm/token.h"

namespace grantvault::hsm {

// A token object named by both CKA_LABEL and CKA_ID (a label alone could be
// duplicated by anyone who can write to the token).
struct KeyRef {
  std::string label;
  std::vector<uint8_t> id;

  bool operator==(const KeyRef&) const = default;
};

inline constexpr char kKekLabelPrefix[] = "grantvault-kek-";
inline constexpr char kAuditKeyLabelPrefix[] = "grantvault-audit-";
std::string KekLabel(int version);  // "grantvault-kek-<version>"
// The version in a KEK label, or -1 if `label` is not one.
int KekVersionFromLabel(std::string_view label);

// Generates a new AES-256 key-encryption key inside the token: CKA_TOKEN,
// CKA_PRIVATE, CKA_SENSITIVE, never extractable, usable only to encrypt and
// decrypt, with a random 16-byte CKA_ID. AlreadyExists if `label` is taken.
absl::StatusOr<KeyRef> GenerateKek(Token& token, const std::string& label);

// Generates an ECDSA P-256 key pair inside the token (private half sensitive
// and never extractable, only for signing). AlreadyExists if `label` is taken.
absl::StatusOr<KeyRef> GenerateSigningKeyPair(Token& token, const std::string& label);

// The handle of the object of `object_class` named by `ref` (label and id).
// NotFound when the token has no such object.
absl::StatusOr<CK_OBJECT_HANDLE> FindObject(Session& session, CK_OBJECT_CLASS object_class,
                                            const KeyRef& ref);

// Every object of `object_class` whose label starts with `label_prefix`.
absl::StatusOr<std::vector<KeyRef>> ListKeys(Token& token, CK_OBJECT_CLASS object_class,
                                             std::string_view label_prefix);

// The protection attributes of a key, read back from the token.
struct KeyAttributes {
  CK_KEY_TYPE key_type = 0;
  CK_ULONG value_len = 0;  // bytes, for secret keys
  bool token = false;
  bool private_object = false;
  bool sensitive = false;
  bool extractable = true;
  bool always_sensitive = false;
  bool never_extractable = false;
  bool encrypt = false;
  bool decrypt = false;
  bool wrap = false;
  bool unwrap = false;
  bool sign = false;
  bool derive = false;
};
absl::StatusOr<KeyAttributes> DescribeKey(Token& token, CK_OBJECT_CLASS object_class,
                                          const KeyRef& ref);

// Destroys the object(s) named by `ref`: for a key pair, pass CKO_PRIVATE_KEY
// and CKO_PUBLIC_KEY in turn. NotFound if absent.
absl::Status DestroyKey(Token& token, CK_OBJECT_CLASS object_class, const KeyRef& ref);

// The public half of a signing key pair as a PEM SubjectPublicKeyInfo.
absl::StatusOr<std::string> SigningPublicKeyPem(Token& token, const KeyRef& ref);

// SHA-256 of `message` (computed in software: SoftHSM has no CKM_ECDSA_SHA256),
// signed inside the token with CKM_ECDSA; returned DER-encoded (ECDSA-Sig-Value)
// so that OpenSSL and any X.509 tooling verify it.
absl::StatusOr<std::vector<uint8_t>> SignSha256(Token& token, const KeyRef& ref,
                                                absl::Span<const uint8_t> message);

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_KEYS_H_
