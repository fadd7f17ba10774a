#include "audit/verify.h"

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "audit/audit_log.h"
#include "audit/record_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/keys.h"
#include "nlohmann/json.hpp"
#include "tests/audit/audit_test_fixture.h"
#include "tests/audit/audit_test_util.h"

namespace grantvault::audit {
namespace {

using testing::AdminEvent;
using testing::ExportToString;
using ::testing::HasSubstr;
using testing::JoinLines;
using testing::LineOfCheckpoint;
using testing::LineOfSeq;
using testing::SignatureOf;
using testing::SplitLines;
using testing::TokenEvent;
using testing::VerifyString;

// Each tampering test runs on both export formats.
class VerifyTest : public testing::AuditTest, public ::testing::WithParamInterface<ExportFormat> {
 protected:
  void SetUp() override {
    AuditTest::SetUp();
    if (HasFatalFailure()) return;
    AuditOptions options;
    options.checkpoint_every = absl::Hours(24 * 365);  // only the checkpoints a test asks for
    log_ = OpenLog(options);
    ASSERT_NE(log_, nullptr);
  }

  ExportFormat format() const { return GetParam(); }

  // Ten admin events in `workspace`, each with a unique reason, one a minute;
  // explicit checkpoints after seq 5 and 10.
  void AppendTen(const std::string& workspace) {
    for (size_t i = 1; i <= 10; ++i) {
      ASSERT_TRUE(log_->Append(AdminEvent(workspace, absl::StrCat(workspace, " action ", i)),
                               Durability::kDurable)
                      .ok());
      clock_.Advance(absl::Minutes(1));
      if (i % 5 == 0) {
        ASSERT_TRUE(log_->Checkpoint().ok());
      }
    }
  }

  std::string Export(const std::string& workspace) {
    ExportFilter filter;
    filter.workspace_id = workspace;
    return ExportToString(*log_, filter, format());
  }

  absl::Status Verify(const std::string& text) {
    return VerifyString(text, log_->PublicKeyPem()).status();
  }

  // 1-based line number of lines[index].
  static std::string LineName(size_t index) { return absl::StrCat("line ", index + 1, ":"); }

  std::unique_ptr<AuditLog> log_;
};

std::string FormatName(const ::testing::TestParamInfo<ExportFormat>& param) {
  return param.param == ExportFormat::kJsonl ? "Jsonl" : "Csv";
}

INSTANTIATE_TEST_SUITE_P(Formats, VerifyTest,
                         ::testing::Values(ExportFormat::kJsonl, ExportFormat::kCsv), FormatName);

TEST_P(VerifyTest, AnUntouchedExportVerifies) {
  AppendTen("acme");
  std::string text = Export("acme");
  auto report = VerifyString(text, log_->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->format, format() == ExportFormat::kJsonl ? "jsonl" : "csv");
  EXPECT_EQ(report->records, 10u);
  EXPECT_EQ(report->stubs, 0u);
  EXPECT_EQ(report->checkpoints, 2u);
  EXPECT_EQ(report->first_seq, 1u);
  EXPECT_EQ(report->last_seq, 10u);
  EXPECT_FALSE(report->window_closed);  // no `until`: complete up to the last checkpoint
  EXPECT_FALSE(report->last_checkpoint_time.empty());
  // The file on disk verifies the same way.
  std::string path = dir_.Join("export");
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  EXPECT_TRUE(VerifyExport(path, log_->PublicKeyPem()).ok());
  EXPECT_TRUE(absl::IsNotFound(VerifyExport(dir_.Join("missing"), log_->PublicKeyPem()).status()));
}

TEST_P(VerifyTest, AnEditedFieldIsNamed) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t i = LineOfSeq(lines, format(), 7);
  ASSERT_NE(i, testing::kNoLine);
  lines[i] = absl::StrReplaceAll(lines[i], {{"acme action 7", "acme action 8"}});
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(LineName(i)));
  EXPECT_THAT(s.message(), HasSubstr("seq 7 (chain workspace:acme)"));
  EXPECT_THAT(s.message(), HasSubstr("edited"));
}

TEST_P(VerifyTest, AnEditedActorIsNamed) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t i = LineOfSeq(lines, format(), 4);
  ASSERT_NE(i, testing::kNoLine);
  lines[i] = absl::StrReplaceAll(lines[i], {{"alice", "mallory"}});
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(i), " seq 4")));
}

TEST_P(VerifyTest, ADeletedRecordIsNamed) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t i = LineOfSeq(lines, format(), 3);
  ASSERT_NE(i, testing::kNoLine);
  lines.erase(lines.begin() + static_cast<std::ptrdiff_t>(i));
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  // The line that now holds seq 4 is where seq 3 was expected.
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(i), " seq 4")));
  EXPECT_THAT(s.message(), HasSubstr("seq 3 was expected"));
}

TEST_P(VerifyTest, TwoReorderedRecordsAreNamed) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t a = LineOfSeq(lines, format(), 7), b = LineOfSeq(lines, format(), 8);
  ASSERT_EQ(b, a + 1);
  std::swap(lines[a], lines[b]);
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(a), " seq 8")));
  EXPECT_THAT(s.message(), HasSubstr("out of order"));
}

TEST_P(VerifyTest, ReorderingWithRenumberedSeqsBreaksTheHashes) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t a = LineOfSeq(lines, format(), 7), b = LineOfSeq(lines, format(), 8);
  // Swap only the contents (reasons), keeping seq, hashes and order.
  lines[a] = absl::StrReplaceAll(lines[a], {{"acme action 7", "acme action 8"}});
  lines[b] = absl::StrReplaceAll(lines[b], {{"acme action 8", "acme action 7"}});
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(a), " seq 7")));
}

TEST_P(VerifyTest, ATruncatedExportIsCaught) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  // Drop the last checkpoint and the two records before it.
  size_t eight = LineOfSeq(lines, format(), 8);
  ASSERT_NE(eight, testing::kNoLine);
  lines.resize(eight);
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("seq 7"));
  EXPECT_THAT(s.message(), HasSubstr("truncated"));

  // Cut right after the checkpoint of seq 5: it ends signed, but short of the
  // signed statement's promise.
  lines = SplitLines(Export("acme"));
  lines.resize(LineOfCheckpoint(lines, format(), 5) + 1);
  s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
}

TEST_P(VerifyTest, ARecordFromAnotherWorkspacesExportIsCaught) {
  AppendTen("acme");
  AppendTen("globex");
  std::vector<std::string> acme = SplitLines(Export("acme"));
  std::vector<std::string> globex = SplitLines(Export("globex"));
  size_t i = LineOfSeq(acme, format(), 6);
  acme[i] = globex[LineOfSeq(globex, format(), 6)];
  absl::Status s = Verify(JoinLines(acme));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(i), " seq 6")));
  EXPECT_THAT(s.message(), HasSubstr("workspace:globex"));

  // Relabelled as acme's, the record no longer matches its hash.
  acme[i] = absl::StrReplaceAll(acme[i], {{"workspace:globex", "workspace:acme"}});
  s = Verify(JoinLines(acme));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(i), " seq 6")));
}

TEST_P(VerifyTest, AForgedCheckpointSignatureIsCaught) {
  AppendTen("acme");
  std::vector<std::string> lines = SplitLines(Export("acme"));
  size_t five = LineOfCheckpoint(lines, format(), 5), ten = LineOfCheckpoint(lines, format(), 10);
  ASSERT_NE(five, testing::kNoLine);
  ASSERT_NE(ten, testing::kNoLine);
  // A genuine signature, but of the other checkpoint.
  lines[ten] = absl::StrReplaceAll(
      lines[ten], {{SignatureOf(lines[ten], format()), SignatureOf(lines[five], format())}});
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(ten), " seq 10")));
  EXPECT_THAT(s.message(), HasSubstr("signature does not verify"));
}

TEST_P(VerifyTest, AWrongPublicKeyIsRefused) {
  AppendTen("acme");
  auto other = hsm::GenerateSigningKeyPair(hsm_->token(), "grantvault-audit-2");
  ASSERT_TRUE(other.ok()) << other.status();
  auto pem = hsm::SigningPublicKeyPem(hsm_->token(), *other);
  ASSERT_TRUE(pem.ok());
  auto report = VerifyString(Export("acme"), *pem);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(report.status().message(),
              HasSubstr(format() == ExportFormat::kJsonl ? "line 1:" : "line 2:"));
  EXPECT_THAT(report.status().message(), HasSubstr("given public key"));
  EXPECT_EQ(VerifyString(Export("acme"), "not a key").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(VerifyTest, FilteredExportsStillVerify) {
  // Ten records a minute apart; every third one is a key rotation.
  const absl::Time start = clock_.Now();
  for (size_t i = 0; i < 10; ++i) {
    Event e = i % 3 == 0 ? AdminEvent("acme", absl::StrCat("rotation ", i), "key.rotated")
                         : TokenEvent("acme", "gr_1");
    ASSERT_TRUE(log_->Append(e, Durability::kDurable).ok());
    clock_.Advance(absl::Minutes(1));
  }
  struct Case {
    std::optional<absl::Time> since, until;
    std::vector<std::string> types;
    uint64_t records;
    bool closed;
  };
  const std::vector<Case> cases = {
      {start + absl::Minutes(3), start + absl::Minutes(7), {}, 4, true},  // seq 4..7
      {std::nullopt, std::nullopt, {"key.rotated"}, 4, false},            // seq 1, 4, 7, 10
      {start + absl::Minutes(2), std::nullopt, {"key.rotated"}, 3, false},
      {std::nullopt, start + absl::Minutes(5), {"token.released"}, 3, true},  // seq 2, 3, 5
      {start + absl::Hours(1), std::nullopt, {}, 0, false},                   // after everything
  };
  for (const Case& c : cases) {
    ExportFilter filter;
    filter.workspace_id = "acme";
    filter.since = c.since;
    filter.until = c.until;
    filter.types = c.types;
    std::string text = ExportToString(*log_, filter, format());
    auto report = VerifyString(text, log_->PublicKeyPem());
    ASSERT_TRUE(report.ok()) << report.status() << "\n" << text;
    EXPECT_EQ(report->records, c.records) << text;
    EXPECT_EQ(report->window_closed, c.closed) << text;
    EXPECT_EQ(report->types, c.types);
    EXPECT_EQ(report->since.has_value(), c.since.has_value());
  }
}

TEST_P(VerifyTest, TheSignedFilterCannotBeEdited) {
  AppendTen("acme");
  ExportFilter filter;
  filter.workspace_id = "acme";
  filter.types = {"grant.revoked"};
  std::vector<std::string> lines = SplitLines(ExportToString(*log_, filter, format()));
  size_t statement = format() == ExportFormat::kJsonl ? 0 : 1;
  lines[statement] = absl::StrReplaceAll(lines[statement], {{"grant.revoked", "key.rotated"}});
  absl::Status s = Verify(JoinLines(lines));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(LineName(statement), " the export statement")));
}

// A filtered export may not hide a record the filter selects behind a stub.
TEST(VerifyStubTest, AStubCannotHideASelectedRecord) {
  testing::SoftwareSigner signer("grantvault-audit-1");
  grantvault::testing::TempDir dir;
  ManualClock clock;
  auto log = AuditLog::Open(dir.Join("audit.db"), std::make_unique<testing::SoftwareSigner>(signer),
                            std::make_unique<testing::MemoryAnchorStore>(), SecretBytes::Random(32),
                            &clock, {});
  ASSERT_TRUE(log.ok()) << log.status();
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE((*log)->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
    ASSERT_TRUE((*log)->Append(AdminEvent("acme", "revoked"), Durability::kDurable).ok());
  }
  ExportFilter filter;
  filter.workspace_id = "acme";
  filter.types = {"grant.revoked"};
  std::vector<std::string> lines = SplitLines(ExportToString(**log, filter, ExportFormat::kJsonl));
  size_t i = LineOfSeq(lines, ExportFormat::kJsonl, 4);
  nlohmann::json record = nlohmann::json::parse(lines[i]);
  ASSERT_EQ(record["kind"], "record");
  nlohmann::json stub = {{"kind", "stub"},
                         {"chain", record["chain"]},
                         {"seq", record["seq"]},
                         {"time", record["time"]},
                         {"type", record["type"]},
                         {"prev_hash", record["prev_hash"]},
                         {"body_hash", record["body_hash"]},
                         {"hash", record["hash"]}};
  lines[i] = stub.dump() + "\n";
  auto report = VerifyString(JoinLines(lines), (*log)->PublicKeyPem());
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(report.status().message(), HasSubstr(absl::StrCat("line ", i + 1, ": seq 4")));
  EXPECT_THAT(report.status().message(), HasSubstr("stub hides"));
}

// The size check on every append uses CanonicalBodySize, which must agree
// with the body it stands for, whatever the lengths (1, 2 and 5 digits).
TEST(RecordFormatTest, CanonicalBodySizeIsTheSizeOfTheCanonicalBody) {
  format::RecordBody b;
  EXPECT_EQ(format::CanonicalBodySize(b), format::CanonicalBody(b).size());
  b.workspace_id = "acme";
  b.uid = "1000";
  b.exe = std::string(12345, 'x');
  b.scopes = std::vector<std::string>(11, "scope");
  b.reason = std::string(99, 'r');
  for (size_t i = 0; i < 12; ++i) b.details[absl::StrCat("k", i)] = std::string(i * 10, 'v');
  EXPECT_EQ(format::CanonicalBodySize(b), format::CanonicalBody(b).size());
}

}  // namespace
}  // namespace grantvault::audit
