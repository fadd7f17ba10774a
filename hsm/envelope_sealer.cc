#include "hsm/envelope_sealer.h"

#include <sodium.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "hsm/sealed_record.h"

namespace grantvault::hsm {
namespace {

constexpr std::string_view kAadDomain = "grantvault/v1";

static_assert(kNonceSize == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
static_assert(kDataKeySize == crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
static_assert(kAeadTagSize == crypto_aead_xchacha20poly1305_ietf_ABYTES);

void AppendField(std::vector<uint8_t>& out, std::string_view field) {
  const auto n = static_cast<uint32_t>(field.size());
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(n >> shift));
  out.insert(out.end(), field.begin(), field.end());
}

// Domain, each context field length-prefixed (so no two contexts encode
// alike), a layer tag, and the format version.
std::vector<uint8_t> ContextAad(const SealContext& c, std::string_view layer) {
  std::vector<uint8_t> aad;
  AppendField(aad, kAadDomain);
  AppendField(aad, layer);
  AppendField(aad, c.workspace_id);
  AppendField(aad, c.connector_id);
  AppendField(aad, c.account_id);
  AppendField(aad, c.owner_id);
  AppendField(aad, c.purpose);
  aad.push_back(kSealedRecordVersion);
  return aad;
}

std::vector<uint8_t> PayloadAad(const SealContext& c) { return ContextAad(c, "payload"); }

std::vector<uint8_t> KeyAad(const SealContext& c, const KeyRef& kek) {
  std::vector<uint8_t> aad = ContextAad(c, "data-key");
  AppendField(aad, kek.label);
  AppendField(aad, std::string_view(reinterpret_cast<const char*>(kek.id.data()), kek.id.size()));
  return aad;
}

absl::Status NotAuthentic() {
  return absl::DataLossError(
      "sealed record does not authenticate: it was altered, or belongs to another grant, "
      "workspace, account or purpose");
}

std::string HandleKey(const KeyRef& kek) {
  return kek.label + "/" + std::string(kek.id.begin(), kek.id.end());
}

}  // namespace

absl::StatusOr<std::unique_ptr<EnvelopeSealer>> EnvelopeSealer::Create(Token* token,
                                                                       const KeyRef& active_kek) {
  if (token == nullptr) return absl::InvalidArgumentError("EnvelopeSealer needs a token");
  EnsureSodiumInitialized();
  std::unique_ptr<EnvelopeSealer> sealer(new EnvelopeSealer(token, active_kek));
  GV_RETURN_IF_ERROR(sealer->SetActiveKek(active_kek));
  return sealer;
}

KeyRef EnvelopeSealer::ActiveKek() const {
  absl::MutexLock lock(&mu_);
  return active_;
}

absl::Status EnvelopeSealer::SetActiveKek(const KeyRef& kek) {
  if (kek.label.empty() || kek.label.size() > kMaxKeyLabelSize || kek.id.empty() ||
      kek.id.size() > kMaxKeyIdSize) {
    return absl::InvalidArgumentError("KEK reference has an empty or oversized label or id");
  }
  GV_ASSIGN_OR_RETURN(Session session, token_->Acquire());
  GV_RETURN_IF_ERROR(KekHandle(session, kek).status());
  absl::MutexLock lock(&mu_);
  active_ = kek;
  return absl::OkStatus();
}

absl::StatusOr<CK_OBJECT_HANDLE> EnvelopeSealer::KekHandle(Session& session, const KeyRef& kek) {
  const std::string key = HandleKey(kek);
  {
    absl::MutexLock lock(&mu_);
    auto it = handles_.find(key);
    if (it != handles_.end()) return it->second;
  }
  absl::StatusOr<CK_OBJECT_HANDLE> handle = FindObject(session, CKO_SECRET_KEY, kek);
  if (absl::IsNotFound(handle.status())) {
    return absl::NotFoundError(absl::StrCat("KEK ", kek.label, " is not in token '",
                                            token_->label(), "' (destroyed, or another token)"));
  }
  if (!handle.ok()) return handle.status();
  absl::MutexLock lock(&mu_);
  handles_[key] = *handle;
  return *handle;
}

void EnvelopeSealer::ForgetKek(const KeyRef& kek) {
  absl::MutexLock lock(&mu_);
  handles_.erase(HandleKey(kek));
}

absl::StatusOr<size_t> EnvelopeSealer::GcmInToken(bool encrypt, absl::Span<const uint8_t> input,
                                                  const KeyRef& kek, absl::Span<const uint8_t> iv,
                                                  absl::Span<const uint8_t> aad,
                                                  absl::Span<uint8_t> output) {
  GV_ASSIGN_OR_RETURN(Session session, token_->Acquire());
  GV_ASSIGN_OR_RETURN(CK_OBJECT_HANDLE handle, KekHandle(session, kek));

  CK_GCM_PARAMS params{};
  params.pIv = const_cast<CK_BYTE_PTR>(iv.data());
  params.ulIvLen = iv.size();
  params.ulIvBits = iv.size() * 8;
  params.pAAD = const_cast<CK_BYTE_PTR>(aad.data());
  params.ulAADLen = aad.size();
  params.ulTagBits = kGcmTagSize * 8;
  CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
  CK_FUNCTION_LIST* fn = session.fn();
  const char* what = encrypt ? "wrap data key with " : "unwrap data key with ";

  CK_RV rv = encrypt ? fn->C_EncryptInit(session.handle(), &mech, handle)
                     : fn->C_DecryptInit(session.handle(), &mech, handle);
  if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
    // The key was destroyed since we cached its handle: look it up afresh.
    ForgetKek(kek);
    GV_ASSIGN_OR_RETURN(handle, KekHandle(session, kek));
    rv = encrypt ? fn->C_EncryptInit(session.handle(), &mech, handle)
                 : fn->C_DecryptInit(session.handle(), &mech, handle);
  }
  if (rv == CKR_OK) {
    CK_BYTE_PTR in = const_cast<CK_BYTE_PTR>(input.data());
    CK_ULONG written = output.size();
    rv = encrypt ? fn->C_Encrypt(session.handle(), in, input.size(), output.data(), &written)
                 : fn->C_Decrypt(session.handle(), in, input.size(), output.data(), &written);
    if (rv == CKR_OK) return static_cast<size_t>(written);
  }
  if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED) session.MarkBroken();
  // SoftHSM reports a failed GCM tag as CKR_GENERAL_ERROR: every decrypt
  // failure of well-formed input is treated as an authentication failure.
  if (!encrypt &&
      (rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_FUNCTION_FAILED)) {
    return NotAuthentic();
  }
  return Pkcs11Error(absl::StrCat(what, kek.label), rv);
}

absl::StatusOr<std::vector<uint8_t>> EnvelopeSealer::WrapDataKey(const SecretBytes& data_key,
                                                                 const KeyRef& kek,
                                                                 absl::Span<const uint8_t> iv,
                                                                 absl::Span<const uint8_t> aad) {
  std::vector<uint8_t> wrapped(kWrappedKeySize);
  GV_ASSIGN_OR_RETURN(size_t n,
                      GcmInToken(true, data_key.span(), kek, iv, aad, absl::MakeSpan(wrapped)));
  if (n != kWrappedKeySize) {
    return absl::InternalError("token returned a wrapped data key of unexpected length");
  }
  return wrapped;
}

absl::StatusOr<SecretBytes> EnvelopeSealer::UnwrapDataKey(absl::Span<const uint8_t> wrapped,
                                                          const KeyRef& kek,
                                                          absl::Span<const uint8_t> iv,
                                                          absl::Span<const uint8_t> aad) {
  // Room for the whole input: a token may want as much output space as input.
  SecretBytes data_key = SecretBytes::Zeroed(wrapped.size());
  GV_ASSIGN_OR_RETURN(size_t n, GcmInToken(false, wrapped, kek, iv, aad,
                                           absl::MakeSpan(data_key.data(), data_key.size())));
  if (n != kDataKeySize) return NotAuthentic();
  data_key.Truncate(kDataKeySize);
  return data_key;
}

absl::StatusOr<Sealed> EnvelopeSealer::Seal(const SecretBytes& secret, const SealContext& context) {
  if (secret.empty() || secret.size() > kMaxSealedSecretSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("a secret to seal must be 1..", kMaxSealedSecretSize, " bytes long"));
  }
  SealedRecord rec;
  rec.kek = ActiveKek();
  randombytes_buf(rec.hsm_iv.data(), rec.hsm_iv.size());
  randombytes_buf(rec.nonce.data(), rec.nonce.size());
  SecretBytes data_key = SecretBytes::Random(kDataKeySize);

  const std::vector<uint8_t> payload_aad = PayloadAad(context);
  rec.ciphertext.resize(secret.size() + kAeadTagSize);
  unsigned long long ciphertext_len = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(rec.ciphertext.data(), &ciphertext_len, secret.data(),
                                             secret.size(), payload_aad.data(), payload_aad.size(),
                                             nullptr, rec.nonce.data(), data_key.data());
  rec.ciphertext.resize(ciphertext_len);

  GV_ASSIGN_OR_RETURN(rec.wrapped_key,
                      WrapDataKey(data_key, rec.kek, rec.hsm_iv, KeyAad(context, rec.kek)));
  return Sealed{rec.Encode(), rec.kek};
}

absl::StatusOr<SecretBytes> EnvelopeSealer::Open(absl::Span<const uint8_t> record,
                                                 const SealContext& context) {
  GV_ASSIGN_OR_RETURN(SealedRecord rec, SealedRecord::Parse(record));
  GV_ASSIGN_OR_RETURN(SecretBytes data_key, UnwrapDataKey(rec.wrapped_key, rec.kek, rec.hsm_iv,
                                                          KeyAad(context, rec.kek)));
  const std::vector<uint8_t> payload_aad = PayloadAad(context);
  SecretBytes secret = SecretBytes::Zeroed(rec.ciphertext.size() - kAeadTagSize);
  unsigned long long secret_len = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          secret.data(), &secret_len, nullptr, rec.ciphertext.data(), rec.ciphertext.size(),
          payload_aad.data(), payload_aad.size(), rec.nonce.data(), data_key.data()) != 0) {
    return NotAuthentic();
  }
  return secret;
}

absl::StatusOr<Sealed> EnvelopeSealer::Rewrap(absl::Span<const uint8_t> record,
                                              const SealContext& context) {
  GV_ASSIGN_OR_RETURN(SealedRecord rec, SealedRecord::Parse(record));
  GV_ASSIGN_OR_RETURN(SecretBytes data_key, UnwrapDataKey(rec.wrapped_key, rec.kek, rec.hsm_iv,
                                                          KeyAad(context, rec.kek)));
  rec.kek = ActiveKek();
  randombytes_buf(rec.hsm_iv.data(), rec.hsm_iv.size());
  GV_ASSIGN_OR_RETURN(rec.wrapped_key,
                      WrapDataKey(data_key, rec.kek, rec.hsm_iv, KeyAad(context, rec.kek)));
  return Sealed{rec.Encode(), rec.kek};
}

}  // namespace grantvault::hsm
