// Seals and checks numbered test records in a Vault: record i belongs to
// workspace "ws_<i % 7>", grant "gr_<i>", and holds "<prefix>-refresh-<i>".
#ifndef GRANTVAULT_TESTS_KEYS_SEALED_FIXTURES_H_
#define GRANTVAULT_TESTS_KEYS_SEALED_FIXTURES_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "daemon/vault.h"

namespace grantvault::keys {

inline store::SealedSecretKey RecordKey(int i) {
  char owner[32];
  std::snprintf(owner, sizeof(owner), "gr_%08d", i);
  return {owner, "refresh_token"};
}

inline std::string RecordWorkspace(int i) { return absl::StrCat("ws_", i % 7); }

inline std::string RecordSecret(const std::string& prefix, int i) {
  return absl::StrCat(prefix, "-refresh-", i);
}

// Seals records [0, n) and stores them in batches of 1,000.
inline absl::Status SealRecords(daemon::Vault& vault, int n, const std::string& prefix) {
  std::vector<store::SealedSecret> batch;
  for (int i = 0; i < n; ++i) {
    store::SealedSecret s;
    s.key = RecordKey(i);
    s.workspace_id = RecordWorkspace(i);
    s.connector_id = "github";
    s.account_id = absl::StrCat("acct-", i);
    hsm::SealContext ctx{s.workspace_id, s.connector_id, s.account_id, s.key.owner_id,
                         s.key.purpose};
    GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                        vault.sealer->Seal(SecretBytes::CopyOf(RecordSecret(prefix, i)), ctx));
    s.kek_label = sealed.kek.label;
    s.record = std::move(sealed.record);
    batch.push_back(std::move(s));
    if (batch.size() == 1000 || i == n - 1) {
      GV_RETURN_IF_ERROR(vault.store->PutSealedSecrets(batch));
      batch.clear();
    }
  }
  return absl::OkStatus();
}

// Opens records [0, n) and checks every secret.
inline absl::Status VerifyRecords(daemon::Vault& vault, int n, const std::string& prefix) {
  for (int i = 0; i < n; ++i) {
    GV_ASSIGN_OR_RETURN(store::SealedSecret s, vault.store->GetSealedSecret(RecordKey(i)));
    hsm::SealContext ctx{s.workspace_id, s.connector_id, s.account_id, s.key.owner_id,
                         s.key.purpose};
    absl::StatusOr<SecretBytes> secret = vault.sealer->Open(s.record, ctx);
    if (!secret.ok()) {
      return absl::Status(secret.status().code(),
                          absl::StrCat("record ", i, ": ", secret.status().message()));
    }
    if (secret->view() != RecordSecret(prefix, i)) {
      return absl::DataLossError(absl::StrCat("record ", i, " opened to the wrong secret"));
    }
  }
  return absl::OkStatus();
}

}  // namespace grantvault::keys

#endif  // GRANTVAULT_TESTS_KEYS_SEALED_FIXTURES_H_
