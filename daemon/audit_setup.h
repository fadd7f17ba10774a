// Opens the daemon's audit log (audit/audit_log.h): its own SQLite database,
// checkpoints signed by the token's audit key, and token fingerprints keyed by
// a 32-byte key generated on first start and kept as a sealed secret (owner
// "audit", purpose "fingerprint_key"), so it never exists outside the process
// unsealed.
#ifndef GRANTVAULT_DAEMON_AUDIT_SETUP_H_
#define GRANTVAULT_DAEMON_AUDIT_SETUP_H_

#include <memory>

#include "absl/status/statusor.h"
#include "audit/anchor.h"
#include "audit/audit_log.h"
#include "audit/signer.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "daemon/config.h"
#include "daemon/vault.h"

namespace grantvault::daemon {

absl::StatusOr<std::unique_ptr<audit::AuditLog>> OpenAuditLog(const DaemonConfig& config,
                                                              Vault& vault, Clock* clock);
// The same with the signer, anchors and fingerprint key given (the front
// process gets them from the broker).
absl::StatusOr<std::unique_ptr<audit::AuditLog>> OpenAuditLog(
    const DaemonConfig& config, std::unique_ptr<audit::Signer> signer,
    std::unique_ptr<audit::AnchorStore> anchors, SecretBytes fingerprint_key, Clock* clock);
// The audit fingerprint key of the vault, generated and sealed on first use.
absl::StatusOr<SecretBytes> LoadOrCreateFingerprintKey(Vault& vault, Clock* clock);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_AUDIT_SETUP_H_
