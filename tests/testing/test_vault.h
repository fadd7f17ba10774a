// What a test of anything that seals needs: a fresh SoftHSM2 token with KEK 1,
// a SQLite store that records KEK 1 as active, and an envelope sealer.
#ifndef GRANTVAULT_TESTS_TESTING_TEST_VAULT_H_
#define GRANTVAULT_TESTS_TESTING_TEST_VAULT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"
#include "hsm/envelope_sealer.h"
#include "store/grant_store.h"
#include "tests/testing/softhsm_token.h"

namespace grantvault::testing {

struct TestVault {
  std::unique_ptr<SoftHsmToken> hsm;
  std::unique_ptr<store::GrantStore> store;
  std::unique_ptr<hsm::EnvelopeSealer> sealer;

  static absl::StatusOr<TestVault> Create(const std::string& database_path);
};

// Opens a sealed secret as stored (its binding taken from the row).
absl::StatusOr<SecretBytes> OpenStored(hsm::Sealer& sealer, const store::SealedSecret& secret);

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_TEST_VAULT_H_
