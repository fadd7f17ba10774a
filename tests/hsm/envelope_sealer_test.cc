#include "hsm/envelope_sealer.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/sealed_record.h"
#include "tests/testing/softhsm_token.h"

namespace grantvault::hsm {
namespace {

using ::testing::HasSubstr;
using testing::SoftHsmToken;

SealContext Ctx() {
  return SealContext{"ws_acme", "google_workspace", "113482", "gr_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                     "refresh_token"};
}

class EnvelopeSealerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = SoftHsmToken::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    hsm_ = std::move(*t);
    auto kek = GenerateKek(hsm_->token(), KekLabel(1));
    ASSERT_TRUE(kek.ok()) << kek.status();
    kek1_ = *kek;
    auto sealer = EnvelopeSealer::Create(&hsm_->token(), kek1_);
    ASSERT_TRUE(sealer.ok()) << sealer.status();
    sealer_ = std::move(*sealer);
  }

  std::vector<uint8_t> SealOrDie(std::string_view secret, const SealContext& ctx = Ctx()) {
    absl::StatusOr<Sealed> sealed = sealer_->Seal(SecretBytes::CopyOf(secret), ctx);
    EXPECT_TRUE(sealed.ok()) << sealed.status();
    return sealed.ok() ? sealed->record : std::vector<uint8_t>();
  }

  std::unique_ptr<SoftHsmToken> hsm_;
  KeyRef kek1_;
  std::unique_ptr<EnvelopeSealer> sealer_;
};

TEST_F(EnvelopeSealerTest, SealThenOpenRoundTrips) {
  const std::string secret = "1//0gRefreshTokenValue-abcdefghijklmnopqrstuvwxyz";
  absl::StatusOr<Sealed> sealed =
      sealer_->Seal(SecretBytes::CopyOf(std::string_view(secret)), Ctx());
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_EQ(sealed->kek, kek1_);
  // The secret does not appear in the record.
  std::string record(sealed->record.begin(), sealed->record.end());
  EXPECT_EQ(record.find(secret), std::string::npos);
  absl::StatusOr<SecretBytes> opened = sealer_->Open(sealed->record, Ctx());
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->view(), secret);
}

TEST_F(EnvelopeSealerTest, SealingTwiceGivesDifferentRecords) {
  EXPECT_NE(SealOrDie("same"), SealOrDie("same"));
}

TEST_F(EnvelopeSealerTest, RecordFormatHasTheDocumentedLayout) {
  std::vector<uint8_t> record = SealOrDie("0123456789");
  absl::StatusOr<SealedRecord> parsed = SealedRecord::Parse(record);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->version, 1);
  EXPECT_EQ(parsed->kek, kek1_);
  EXPECT_EQ(parsed->wrapped_key.size(), 48u);
  EXPECT_EQ(parsed->ciphertext.size(), 10u + 16u);
  EXPECT_EQ(record.size(), 4 + 1 + 1 + kek1_.label.size() + 1 + 16 + 12 + 1 + 48 + 24 + 4 + 26);
  EXPECT_EQ(parsed->Encode(), record);
}

TEST_F(EnvelopeSealerTest, EveryFlippedBitIsDetected) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  for (size_t byte = 0; byte < record.size(); ++byte) {
    for (int bit : {0, 7}) {
      std::vector<uint8_t> tampered = record;
      tampered[byte] ^= static_cast<uint8_t>(1u << bit);
      absl::StatusOr<SecretBytes> opened = sealer_->Open(tampered, Ctx());
      ASSERT_FALSE(opened.ok()) << "byte " << byte << " bit " << bit << " went unnoticed";
      // Never the secret in the message.
      EXPECT_THAT(opened.status().message(), ::testing::Not(HasSubstr("refresh-token")));
    }
  }
  // And the token keeps working after all those failures.
  EXPECT_TRUE(sealer_->Open(record, Ctx()).ok());
}

TEST_F(EnvelopeSealerTest, TamperedPartsGiveAnAuthenticationError) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  absl::StatusOr<SealedRecord> parsed = SealedRecord::Parse(record);
  ASSERT_TRUE(parsed.ok());
  auto expect_not_authentic = [&](SealedRecord r, const char* what) {
    absl::StatusOr<SecretBytes> opened = sealer_->Open(r.Encode(), Ctx());
    EXPECT_TRUE(absl::IsDataLoss(opened.status())) << what << ": " << opened.status();
  };
  SealedRecord r = *parsed;
  r.hsm_iv[0] ^= 1;
  expect_not_authentic(r, "hsm iv");
  r = *parsed;
  r.wrapped_key[47] ^= 1;
  expect_not_authentic(r, "wrapped key tag");
  r = *parsed;
  r.nonce[3] ^= 1;
  expect_not_authentic(r, "nonce");
  r = *parsed;
  r.ciphertext[0] ^= 1;
  expect_not_authentic(r, "ciphertext");
  r = *parsed;
  r.ciphertext.back() ^= 1;
  expect_not_authentic(r, "payload tag");
}

TEST_F(EnvelopeSealerTest, RecordMovedToAnotherRowDoesNotOpen) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  SealContext other = Ctx();
  other.workspace_id = "ws_other";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(record, other).status()));
  other = Ctx();
  other.connector_id = "slack";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(record, other).status()));
  other = Ctx();
  other.account_id = "999";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(record, other).status()));
  other = Ctx();
  other.owner_id = "gr_bbbbbbbbbbbbbbbbbbbbbbbbbb";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(record, other).status()));
  other = Ctx();
  other.purpose = "access_token";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(record, other).status()));
  // Field boundaries count: "ab"+"c" is not "a"+"bc".
  SealContext a{"ab", "c", "x", "y", "z"}, b{"a", "bc", "x", "y", "z"};
  std::vector<uint8_t> rec_a = SealOrDie("s", a);
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Open(rec_a, b).status()));
}

TEST_F(EnvelopeSealerTest, RecordNamingAnotherKekWithTheSameLabelDoesNotOpen) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  absl::StatusOr<SealedRecord> parsed = SealedRecord::Parse(record);
  ASSERT_TRUE(parsed.ok());
  parsed->kek.id[0] ^= 1;  // a key with that label but another id is not ours
  absl::StatusOr<SecretBytes> opened = sealer_->Open(parsed->Encode(), Ctx());
  EXPECT_TRUE(absl::IsNotFound(opened.status())) << opened.status();
}

TEST_F(EnvelopeSealerTest, MissingKekIsAClearError) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  ASSERT_TRUE(DestroyKey(hsm_->token(), CKO_SECRET_KEY, kek1_).ok());
  absl::StatusOr<SecretBytes> opened = sealer_->Open(record, Ctx());
  ASSERT_TRUE(absl::IsNotFound(opened.status())) << opened.status();
  EXPECT_THAT(opened.status().message(), HasSubstr("KEK grantvault-kek-1 is not in token"));
}

TEST_F(EnvelopeSealerTest, WrongPinCannotOpenRecords) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  sealer_.reset();
  hsm_->Close();
  TokenOptions options = hsm_->options();
  absl::StatusOr<std::unique_ptr<Token>> wrong =
      Token::OpenWithPin(options, SecretBytes::CopyOf(std::string_view("0000")));
  EXPECT_TRUE(absl::IsUnauthenticated(wrong.status())) << wrong.status();
  // And with the right PIN the record opens again.
  ASSERT_TRUE(hsm_->Reopen().ok());
  auto sealer = EnvelopeSealer::Create(&hsm_->token(), kek1_);
  ASSERT_TRUE(sealer.ok());
  EXPECT_TRUE((*sealer)->Open(record, Ctx()).ok());
}

TEST_F(EnvelopeSealerTest, MalformedRecordsAreRefusedWithoutCrashing) {
  std::vector<uint8_t> record = SealOrDie("refresh-token");
  EXPECT_FALSE(sealer_->Open({}, Ctx()).ok());
  for (size_t len = 0; len < record.size(); ++len) {
    std::vector<uint8_t> cut(record.begin(), record.begin() + static_cast<ptrdiff_t>(len));
    EXPECT_FALSE(sealer_->Open(cut, Ctx()).ok()) << "truncated to " << len;
  }
  std::vector<uint8_t> longer = record;
  longer.push_back(0);
  EXPECT_FALSE(sealer_->Open(longer, Ctx()).ok());
  std::vector<uint8_t> future = record;
  future[4] = 2;
  absl::StatusOr<SecretBytes> opened = sealer_->Open(future, Ctx());
  EXPECT_THAT(opened.status().message(), HasSubstr("version 2 is not supported"));
}

TEST_F(EnvelopeSealerTest, SecretSizeIsBounded) {
  EXPECT_TRUE(absl::IsInvalidArgument(sealer_->Seal(SecretBytes(), Ctx()).status()));
  EXPECT_TRUE(sealer_->Seal(SecretBytes::Random(kMaxSealedSecretSize), Ctx()).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(
      sealer_->Seal(SecretBytes::Random(kMaxSealedSecretSize + 1), Ctx()).status()));
}

TEST_F(EnvelopeSealerTest, RewrapMovesOnlyTheDataKeyToTheActiveKek) {
  const std::vector<uint8_t> record = SealOrDie("refresh-token");
  absl::StatusOr<KeyRef> kek2 = GenerateKek(hsm_->token(), KekLabel(2));
  ASSERT_TRUE(kek2.ok());
  ASSERT_TRUE(sealer_->SetActiveKek(*kek2).ok());
  absl::StatusOr<Sealed> rewrapped = sealer_->Rewrap(record, Ctx());
  ASSERT_TRUE(rewrapped.ok()) << rewrapped.status();
  EXPECT_EQ(rewrapped->kek, *kek2);
  auto before = SealedRecord::Parse(record);
  auto after = SealedRecord::Parse(rewrapped->record);
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_EQ(before->ciphertext, after->ciphertext);
  EXPECT_EQ(before->nonce, after->nonce);
  EXPECT_NE(before->wrapped_key, after->wrapped_key);
  // It opens without KEK 1.
  ASSERT_TRUE(DestroyKey(hsm_->token(), CKO_SECRET_KEY, kek1_).ok());
  absl::StatusOr<SecretBytes> opened = sealer_->Open(rewrapped->record, Ctx());
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->view(), "refresh-token");
  // Rewrapping a record for the wrong row fails like Open does.
  SealContext other = Ctx();
  other.workspace_id = "ws_other";
  EXPECT_TRUE(absl::IsDataLoss(sealer_->Rewrap(rewrapped->record, other).status()));
}

TEST_F(EnvelopeSealerTest, ConcurrentSealAndOpenFromManyThreads) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string secret = "secret-" + std::to_string(t) + "-" + std::to_string(i);
        const std::string owner = "gr_" + std::to_string(t * kPerThread + i);
        SealContext ctx{"ws", "c", "a", owner, "refresh_token"};
        absl::StatusOr<Sealed> sealed =
            sealer_->Seal(SecretBytes::CopyOf(std::string_view(secret)), ctx);
        if (!sealed.ok()) {
          ++failures;
          continue;
        }
        absl::StatusOr<SecretBytes> opened = sealer_->Open(sealed->record, ctx);
        if (!opened.ok() || opened->view() != secret) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace grantvault::hsm
