#include "daemon/audit_setup.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "audit/signer.h"
#include "common/status.h"
#include "keys/key_manager.h"
#include "keys/sealed_context.h"

namespace grantvault::daemon {
namespace {

constexpr char kFingerprintKeyOwner[] = "audit";
constexpr char kFingerprintKeyPurpose[] = "fingerprint_key";
constexpr size_t kFingerprintKeyBytes = 32;

}  // namespace

absl::StatusOr<SecretBytes> LoadOrCreateFingerprintKey(Vault& vault, Clock* clock) {
  const store::SealedSecretKey key{kFingerprintKeyOwner, kFingerprintKeyPurpose};
  absl::StatusOr<store::SealedSecret> stored = vault.store->GetSealedSecret(key);
  if (stored.ok()) return keys::OpenSealed(*vault.sealer, *stored);
  if (!absl::IsNotFound(stored.status())) return stored.status();
  SecretBytes fresh = SecretBytes::Random(kFingerprintKeyBytes);
  store::SealedSecret secret;
  secret.key = key;
  GV_ASSIGN_OR_RETURN(hsm::Sealed sealed, vault.sealer->Seal(fresh, keys::SealContextOf(secret)));
  secret.kek_label = sealed.kek.label;
  secret.record = std::move(sealed.record);
  secret.updated_at = clock->Now();
  GV_RETURN_IF_ERROR(vault.store->PutSealedSecret(secret));
  return fresh;
}

absl::StatusOr<std::unique_ptr<audit::AuditLog>> OpenAuditLog(const DaemonConfig& config,
                                                              Vault& vault, Clock* clock) {
  GV_ASSIGN_OR_RETURN(std::unique_ptr<audit::Signer> signer,
                      audit::MakeHsmSigner(*vault.token, keys::kAuditKeyLabel));
  GV_ASSIGN_OR_RETURN(std::unique_ptr<audit::AnchorStore> anchors,
                      audit::MakeHsmAnchorStore(*vault.token));
  GV_ASSIGN_OR_RETURN(SecretBytes fingerprint_key, LoadOrCreateFingerprintKey(vault, clock));
  return OpenAuditLog(config, std::move(signer), std::move(anchors), std::move(fingerprint_key),
                      clock);
}

absl::StatusOr<std::unique_ptr<audit::AuditLog>> OpenAuditLog(
    const DaemonConfig& config, std::unique_ptr<audit::Signer> signer,
    std::unique_ptr<audit::AnchorStore> anchors, SecretBytes fingerprint_key, Clock* clock) {
  audit::AuditOptions options;
  options.group_commit_interval = config.audit_group_commit;
  options.deferred_interval = config.audit_repeat_record;
  absl::StatusOr<std::unique_ptr<audit::AuditLog>> log =
      audit::AuditLog::Open(config.audit_database, std::move(signer), std::move(anchors),
                            std::move(fingerprint_key), clock, options);
  if (!log.ok()) {
    return absl::Status(log.status().code(), absl::StrCat("audit log ", config.audit_database, ": ",
                                                          log.status().message()));
  }
  return log;
}

}  // namespace grantvault::daemon
