// A fixture with a real SoftHSM token holding the audit key, a temporary
// directory for audit.db, and a manual clock.
#ifndef GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_FIXTURE_H_
#define GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_FIXTURE_H_

#include <memory>
#include <string>

#include "audit/anchor.h"
#include "audit/audit_log.h"
#include "audit/signer.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "gtest/gtest.h"
#include "hsm/keys.h"
#include "tests/audit/audit_test_util.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::audit::testing {

inline constexpr char kAuditKey[] = "grantvault-audit-1";

class AuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = grantvault::testing::SoftHsmToken::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    hsm_ = std::move(*t);
    auto key = hsm::GenerateSigningKeyPair(hsm_->token(), kAuditKey);
    ASSERT_TRUE(key.ok()) << key.status();
    fingerprint_key_ = SecretBytes::Random(32);
  }

  std::string db_path() const { return dir_.Join("audit.db"); }

  // The anchors in the test's token, as the daemon keeps them.
  std::unique_ptr<AnchorStore> HsmAnchors() { return *MakeHsmAnchorStore(hsm_->token()); }

  absl::StatusOr<std::unique_ptr<AuditLog>> TryOpen(AuditOptions options = {}) {
    auto signer = MakeHsmSigner(hsm_->token(), kAuditKey);
    if (!signer.ok()) return signer.status();
    return AuditLog::Open(db_path(), std::move(*signer), HsmAnchors(), fingerprint_key_.Clone(),
                          &clock_, options);
  }

  std::unique_ptr<AuditLog> OpenLog(AuditOptions options = {}) {
    auto log = TryOpen(options);
    EXPECT_TRUE(log.ok()) << log.status();
    return log.ok() ? std::move(*log) : nullptr;
  }

  std::unique_ptr<grantvault::testing::SoftHsmToken> hsm_;
  grantvault::testing::TempDir dir_;
  SecretBytes fingerprint_key_;
  ManualClock clock_;
};

}  // namespace grantvault::audit::testing

#endif  // GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_FIXTURE_H_
