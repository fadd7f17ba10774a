#include "keys/key_manager.h"

#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/sealed_record.h"
#include "tests/keys/sealed_fixtures.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::keys {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

class KeyManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vault = daemon::InitEmbeddedState(dir_.Join("state"));
    ASSERT_TRUE(vault.ok()) << vault.status();
    vault_ = std::move(*vault);
  }
  int64_t CountUnder(const std::string& label) {
    auto counts = vault_.store->CountSealedSecretsByKek();
    EXPECT_TRUE(counts.ok());
    auto it = counts->find(label);
    return it == counts->end() ? 0 : it->second;
  }
  TempDir dir_;
  daemon::Vault vault_;
};

TEST_F(KeyManagerTest, BootstrapMadeKek1ActiveAndIsIdempotent) {
  auto status = vault_.keys->Status();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->size(), 1u);
  EXPECT_EQ((*status)[0].version.label, "grantvault-kek-1");
  EXPECT_EQ((*status)[0].version.state, store::KeyState::kActive);
  EXPECT_TRUE((*status)[0].in_token);
  auto again = vault_.keys->Bootstrap();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
}

TEST_F(KeyManagerTest, RotateMakesTheNewKekActiveForNewSeals) {
  ASSERT_TRUE(SealRecords(vault_, 10, "before").ok());
  auto v2 = vault_.keys->Rotate(vault_.sealer.get());
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->label, "grantvault-kek-2");
  EXPECT_EQ(vault_.sealer->ActiveKek().label, "grantvault-kek-2");
  // Re-sealing records 0..4 replaces them: they move to the new KEK.
  ASSERT_TRUE(SealRecords(vault_, 5, "after").ok());
  EXPECT_EQ(CountUnder("grantvault-kek-1"), 5);
  EXPECT_EQ(CountUnder("grantvault-kek-2"), 5);
  auto active = vault_.keys->ActiveKek();
  ASSERT_TRUE(active.ok());
  EXPECT_EQ(active->label, "grantvault-kek-2");
}

TEST_F(KeyManagerTest, RetireIsRefusedUntilRewrapThenSucceedsAndDestroysTheKey) {
  ASSERT_TRUE(SealRecords(vault_, 250, "r").ok());
  ASSERT_TRUE(vault_.keys->Rotate(vault_.sealer.get()).ok());
  absl::Status early = vault_.keys->Retire(1);
  EXPECT_TRUE(absl::IsFailedPrecondition(early)) << early;
  EXPECT_THAT(early.message(), HasSubstr("250"));
  EXPECT_TRUE(absl::IsFailedPrecondition(vault_.keys->Retire(2)));  // the active key

  std::vector<RewrapProgress> seen;
  auto result =
      vault_.keys->Rewrap(*vault_.sealer, 64, [&](const RewrapProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->rewrapped, 250);
  EXPECT_TRUE(result->failures.empty());
  ASSERT_EQ(seen.size(), 4u);  // 64+64+64+58
  EXPECT_EQ(seen.back().done, 250);
  EXPECT_EQ(seen.back().remaining, 0);
  EXPECT_EQ(CountUnder("grantvault-kek-1"), 0);
  ASSERT_TRUE(VerifyRecords(vault_, 250, "r").ok());

  ASSERT_TRUE(vault_.keys->Retire(1).ok());
  auto status = vault_.keys->Status();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)[0].version.state, store::KeyState::kRetired);
  EXPECT_FALSE((*status)[0].in_token);
  // Retiring again is harmless; an unknown version is NotFound.
  EXPECT_TRUE(vault_.keys->Retire(1).ok());
  EXPECT_TRUE(absl::IsNotFound(vault_.keys->Retire(9)));
  // Records still open after the old key is gone.
  ASSERT_TRUE(VerifyRecords(vault_, 250, "r").ok());
}

TEST_F(KeyManagerTest, RewrapReportsRecordsThatDoNotAuthenticateAndLeavesThemAlone) {
  ASSERT_TRUE(SealRecords(vault_, 20, "r").ok());
  // Tamper with one stored record's wrapped key.
  auto victim = vault_.store->GetSealedSecret(RecordKey(7));
  ASSERT_TRUE(victim.ok());
  auto parsed = hsm::SealedRecord::Parse(victim->record);
  ASSERT_TRUE(parsed.ok());
  parsed->wrapped_key[0] ^= 1;
  victim->record = parsed->Encode();
  ASSERT_TRUE(vault_.store->PutSealedSecret(*victim).ok());

  ASSERT_TRUE(vault_.keys->Rotate(vault_.sealer.get()).ok());
  auto result = vault_.keys->Rewrap(*vault_.sealer, 8, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->rewrapped, 19);
  ASSERT_EQ(result->failures.size(), 1u);
  EXPECT_EQ(result->failures[0].key, RecordKey(7));
  EXPECT_THAT(result->failures[0].reason, HasSubstr("does not authenticate"));
  EXPECT_EQ(CountUnder("grantvault-kek-1"), 1);
  EXPECT_TRUE(absl::IsFailedPrecondition(vault_.keys->Retire(1)));
}

TEST_F(KeyManagerTest, RotationAfterAnUnrecordedKekSkipsItsVersion) {
  // A rotation that crashed after generating KEK 2 in the token but before
  // recording it: the next rotation must not collide with it.
  ASSERT_TRUE(hsm::GenerateKek(*vault_.token, hsm::KekLabel(2)).ok());
  auto v = vault_.keys->Rotate(vault_.sealer.get());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->version, 3);
}

TEST_F(KeyManagerTest, ReopeningTheStateKeepsEverything) {
  ASSERT_TRUE(SealRecords(vault_, 30, "r").ok());
  ASSERT_TRUE(vault_.keys->Rotate(vault_.sealer.get()).ok());
  vault_ = daemon::Vault();
  std::vector<std::string> created;
  auto again = daemon::InitEmbeddedState(dir_.Join("state"), &created);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(created.empty());
  vault_ = std::move(*again);
  EXPECT_EQ(vault_.sealer->ActiveKek().label, "grantvault-kek-2");
  ASSERT_TRUE(VerifyRecords(vault_, 30, "r").ok());
}

TEST(EmbeddedStateTest, OpeningAnUninitialisedDirectoryNamesWhatIsMissing) {
  TempDir dir;
  auto vault = daemon::OpenEmbeddedState(dir.path());
  ASSERT_TRUE(absl::IsFailedPrecondition(vault.status())) << vault.status();
  EXPECT_THAT(vault.status().message(), HasSubstr("not an initialised state directory"));
}

}  // namespace
}  // namespace grantvault::keys
