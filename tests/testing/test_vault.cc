#include "tests/testing/test_vault.h"

#include "common/ids.h"
#include "common/status.h"
#include "hsm/keys.h"
#include "store/sqlite_grant_store.h"

namespace grantvault::testing {

absl::StatusOr<TestVault> TestVault::Create(const std::string& database_path) {
  TestVault v;
  GV_ASSIGN_OR_RETURN(v.hsm, SoftHsmToken::Create());
  GV_ASSIGN_OR_RETURN(hsm::KeyRef kek, hsm::GenerateKek(v.hsm->token(), hsm::KekLabel(1)));
  GV_ASSIGN_OR_RETURN(v.store, store::OpenSqliteGrantStore(database_path));
  store::KeyVersion version{1, kek.label, Hex(kek.id), store::KeyState::kActive, absl::Now(), {}};
  GV_RETURN_IF_ERROR(v.store->AddKeyVersion(version));
  GV_ASSIGN_OR_RETURN(v.sealer, hsm::EnvelopeSealer::Create(&v.hsm->token(), kek));
  return v;
}

absl::StatusOr<SecretBytes> OpenStored(hsm::Sealer& sealer, const store::SealedSecret& secret) {
  return sealer.Open(secret.record,
                     hsm::SealContext{secret.workspace_id, secret.connector_id, secret.account_id,
                                      secret.key.owner_id, secret.key.purpose});
}

}  // namespace grantvault::testing
