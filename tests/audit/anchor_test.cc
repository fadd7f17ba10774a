// The audit log against someone who can write audit.db but cannot log in to
// the token: every tampering below is refused at open (the whole chain is
// verified with the token's key, up to the anchor the token holds) and by the
// offline verifier. Real SoftHSM token, real SQLite files.
#include "audit/anchor.h"

#include <sqlite3.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "audit/audit_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/data_object.h"
#include "tests/audit/audit_test_fixture.h"
#include "tests/audit/audit_test_util.h"

namespace grantvault::audit {
namespace {

using testing::AdminEvent;
using ::testing::AllOf;
using testing::ExportToString;
using ::testing::HasSubstr;
using testing::JoinLines;
using testing::LineOfCheckpoint;
using testing::MemoryAnchorStore;
using testing::SoftwareSigner;
using testing::SplitLines;
using testing::VerifyString;

// Runs SQL with a connection of the test's own: an attacker with write
// access to the file, no defensive mode, triggers dropped at will.
void RunSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

std::string QueryText(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK);
  std::string out;
  if (sqlite3_step(stmt) == SQLITE_ROW) {
    out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

// Replaces the database files at `to` with those at `from` (both closed).
void ReplaceDatabase(const std::string& from, const std::string& to) {
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::filesystem::remove(to + suffix);
    if (std::filesystem::exists(from + suffix)) {
      std::filesystem::copy_file(from + suffix, to + suffix);
    }
  }
}

ExportFilter Chain(const std::string& workspace) {
  ExportFilter f;
  f.workspace_id = workspace;
  return f;
}

AuditOptions OnlyExplicitCheckpoints() {
  AuditOptions options;
  options.checkpoint_every_records = 1'000'000;
  options.checkpoint_every = absl::Hours(24 * 365);
  return options;
}

class AnchorTest : public testing::AuditTest {
 protected:
  // Eight events in acme, checkpoints at seq 3 and 6, an unsigned tail 7–8.
  void WriteHistory() {
    auto log = OpenLog(OnlyExplicitCheckpoints());
    ASSERT_NE(log, nullptr);
    pem_ = log->PublicKeyPem();
    for (int i = 1; i <= 8; ++i) {
      ASSERT_TRUE(
          log->Append(AdminEvent("acme", absl::StrCat("action ", i)), Durability::kDurable).ok());
      clock_.Advance(absl::Seconds(1));
      if (i == 3 || i == 6) {
        ASSERT_TRUE(log->Checkpoint().ok());
      }
    }
  }

  // What someone who can write the file but not sign with the token does:
  // builds another history with a key of their own, with the same events
  // except one, and puts it in place of audit.db. `checkpoint` whether the
  // forger signs checkpoints (with its own key, labelled `label`).
  void Forge(const std::string& label, bool checkpoint) {
    const std::string forged = dir_.Join("forged.db");
    {
      auto log = AuditLog::Open(forged, std::make_unique<SoftwareSigner>(label),
                                std::make_unique<MemoryAnchorStore>(), SecretBytes::Random(32),
                                &clock_, OnlyExplicitCheckpoints());
      ASSERT_TRUE(log.ok()) << log.status();
      for (int i = 1; i <= 8; ++i) {
        std::string reason = i == 2 ? "nothing happened" : absl::StrCat("action ", i);
        ASSERT_TRUE((*log)->Append(AdminEvent("acme", reason), Durability::kDurable).ok());
        if (checkpoint && (i == 3 || i == 6)) {
          ASSERT_TRUE((*log)->Checkpoint().ok());
        }
      }
    }
    // The token's public key is no secret: the forger copies the genuine
    // signing_keys row, so the row for the token's label matches.
    RunSql(forged, absl::StrCat("INSERT OR REPLACE INTO signing_keys VALUES ('", testing::kAuditKey,
                                "', '", pem_, "', 0)"));
    ReplaceDatabase(forged, db_path());
  }

  void ExpectRefused(const std::vector<std::string>& parts) {
    auto log = TryOpen(OnlyExplicitCheckpoints());
    ASSERT_FALSE(log.ok()) << "a tampered audit log was opened";
    EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss) << log.status();
    const std::string message(log.status().message());
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
  }

  absl::StatusOr<std::optional<ChainAnchors>> TokenAnchors() {
    auto store = MakeHsmAnchorStore(hsm_->token());
    if (!store.ok()) return store.status();
    return (*store)->Load();
  }

  std::string pem_;
};

TEST_F(AnchorTest, AnUntamperedLogReopensAndItsAnchorIsTheLastCheckpoint) {
  WriteHistory();
  auto anchors = TokenAnchors();
  ASSERT_TRUE(anchors.ok()) << anchors.status();
  ASSERT_TRUE(anchors->has_value());
  ASSERT_EQ((*anchors)->count("workspace:acme"), 1u);
  const ChainAnchor& acme = (*anchors)->at("workspace:acme");
  EXPECT_EQ(acme.seq, 6u);
  EXPECT_EQ(acme.checkpoints, 2u);
  EXPECT_EQ(acme.head_hash, QueryText(db_path(),
                                      "SELECT hash FROM records WHERE chain = 'workspace:acme' AND "
                                      "seq = 6"));
  auto log = TryOpen(OnlyExplicitCheckpoints());
  ASSERT_TRUE(log.ok()) << log.status();
}

TEST_F(AnchorTest, DeletedCheckpointsAreRefused) {
  WriteHistory();
  RunSql(db_path(),
         "DROP TRIGGER checkpoints_are_append_only_delete; DELETE FROM checkpoints WHERE seq = 3");
  ExpectRefused(
      {"chain workspace:acme", "anchor is seq 6 (2 checkpoints)", "holds 1 checkpoints up to it"});
  RunSql(db_path(), "DELETE FROM checkpoints");
  ExpectRefused({"chain workspace:acme", "anchor is seq 6", "holds 0 checkpoints up to it"});
}

TEST_F(AnchorTest, ATruncationAfterAnEarlierCheckpointIsRefused) {
  WriteHistory();
  // Cut after checkpoint K = 3, consistently: records, checkpoints and head.
  RunSql(db_path(),
         "DROP TRIGGER records_are_append_only_delete;"
         "DROP TRIGGER checkpoints_are_append_only_delete;"
         "DELETE FROM records WHERE seq > 3; DELETE FROM checkpoints WHERE seq > 3;"
         "UPDATE chains SET head_seq = 3, head_hash = "
         "(SELECT hash FROM records WHERE chain = 'workspace:acme' AND seq = 3)");
  ExpectRefused(
      {"chain workspace:acme", "the token's anchor is seq 6", "the database ends at seq 3"});
}

TEST_F(AnchorTest, AnOlderCopyOfTheDatabaseIsRefused) {
  const std::string copy = dir_.Join("copy.db");
  {
    auto log = OpenLog(OnlyExplicitCheckpoints());
    ASSERT_NE(log, nullptr);
    for (int i = 1; i <= 3; ++i) {
      ASSERT_TRUE(log->Append(AdminEvent("acme", absl::StrCat(i)), Durability::kDurable).ok());
    }
    ASSERT_TRUE(log->Checkpoint().ok());
  }
  ReplaceDatabase(db_path(), copy);  // a backup taken here
  {
    auto log = OpenLog(OnlyExplicitCheckpoints());
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(AdminEvent("acme", "revoked later"), Durability::kDurable).ok());
    ASSERT_TRUE(log->Checkpoint().ok());
  }
  ReplaceDatabase(copy, db_path());  // …restored to hide what came after
  ExpectRefused(
      {"chain workspace:acme", "the token's anchor is seq 4", "the database ends at seq 3"});
}

TEST_F(AnchorTest, ADeletedDatabaseOrChainIsRefused) {
  WriteHistory();
  {
    auto log = OpenLog(OnlyExplicitCheckpoints());
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(AdminEvent("", "system"), Durability::kDurable).ok());
    ASSERT_TRUE(log->Checkpoint().ok());
  }
  RunSql(db_path(),
         "DROP TRIGGER records_are_append_only_delete;"
         "DROP TRIGGER checkpoints_are_append_only_delete;"
         "DELETE FROM records WHERE chain = 'system';"
         "DELETE FROM checkpoints WHERE chain = 'system';"
         "DELETE FROM chains WHERE chain = 'system'");
  ExpectRefused({"chain system", "the database has no such chain (deleted)"});
  ReplaceDatabase(dir_.Join("nothing.db"), db_path());  // the whole file removed
  ExpectRefused({"the database has no such chain (deleted)"});
}

TEST_F(AnchorTest, RewrittenRecordsWithRecomputedHashesAreRefused) {
  WriteHistory();
  // A consistent history (hashes and links recomputed) without checkpoints:
  // before anchors, a chain without checkpoints was only checked for
  // internal consistency.
  Forge(testing::kAuditKey, /*checkpoint=*/false);
  ExpectRefused({"chain workspace:acme", "the token's anchor is seq 6",
                 "the record at seq 6 is not the anchored one"});
}

TEST_F(AnchorTest, CheckpointsSignedByAnotherKeyUnderTheTokensLabelAreRefused) {
  WriteHistory();
  Forge(testing::kAuditKey, /*checkpoint=*/true);
  ExpectRefused({"chain workspace:acme seq 3",
                 "the checkpoint's signature does not verify with the token's key"});
}

TEST_F(AnchorTest, APlantedSigningKeyRowIsNotTrusted) {
  WriteHistory();
  // The forger's checkpoints name its own key, whose row it planted.
  Forge("grantvault-audit-2", /*checkpoint=*/true);
  ASSERT_FALSE(QueryText(db_path(),
                         "SELECT public_key_pem FROM signing_keys WHERE key_label = "
                         "'grantvault-audit-2'")
                   .empty());
  ExpectRefused({"chain workspace:acme seq 3",
                 "names key \"grantvault-audit-2\", which is not the token's audit key"});
}

TEST_F(AnchorTest, AnEditedSigningKeyRowIsRefused) {
  WriteHistory();
  SoftwareSigner other(testing::kAuditKey);
  std::string other_pem = *other.PublicKeyPem();
  RunSql(db_path(), absl::StrCat("UPDATE signing_keys SET public_key_pem = '", other_pem, "'"));
  auto log = TryOpen(OnlyExplicitCheckpoints());
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition);
}

// A store that loads from the token but whose saves fail: the crash window
// between a checkpoint's commit and its anchoring.
class UnsavingAnchorStore final : public AnchorStore {
 public:
  explicit UnsavingAnchorStore(std::unique_ptr<AnchorStore> real) : real_(std::move(real)) {}
  absl::StatusOr<std::optional<ChainAnchors>> Load() override { return real_->Load(); }
  absl::Status Save(const ChainAnchors&) override {
    return absl::UnavailableError("token unplugged");
  }

 private:
  std::unique_ptr<AnchorStore> real_;
};

TEST_F(AnchorTest, ADatabaseAheadOfItsAnchorOpensAndMovesTheAnchorForward) {
  WriteHistory();  // anchored at seq 6
  {
    auto signer = MakeHsmSigner(hsm_->token(), testing::kAuditKey);
    ASSERT_TRUE(signer.ok());
    auto log = AuditLog::Open(db_path(), std::move(*signer),
                              std::make_unique<UnsavingAnchorStore>(HsmAnchors()),
                              fingerprint_key_.Clone(), &clock_, OnlyExplicitCheckpoints());
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->Append(AdminEvent("acme", "nine"), Durability::kDurable).ok());
    absl::Status checkpointed = (*log)->Checkpoint();
    EXPECT_THAT(checkpointed.message(), HasSubstr("audit anchor (in the token)"));
    EXPECT_THAT((*log)->checkpoint_health().last_signing_error, HasSubstr("token unplugged"));
  }
  auto before = TokenAnchors();
  ASSERT_TRUE(before.ok() && before->has_value());
  EXPECT_EQ((*before)->at("workspace:acme").seq, 6u);  // the checkpoint at 9 is not anchored

  auto log = TryOpen(OnlyExplicitCheckpoints());
  ASSERT_TRUE(log.ok()) << log.status();
  auto after = TokenAnchors();
  ASSERT_TRUE(after.ok() && after->has_value());
  EXPECT_EQ((*after)->at("workspace:acme"),
            (ChainAnchor{9, QueryText(db_path(), "SELECT hash FROM records WHERE seq = 9"), 3}));
}

TEST_F(AnchorTest, AnExistingLogWithoutAnchorIsVerifiedAndAnchoredOnFirstOpen) {
  WriteHistory();
  ASSERT_TRUE(hsm::DestroyDataObject(hsm_->token(), "grantvault-audit-anchor-a").ok());
  ASSERT_TRUE(hsm::DestroyDataObject(hsm_->token(), "grantvault-audit-anchor-b").ok());
  // As a log written before anchors existed: tampered, it is still refused
  // (the whole chain is checked against the token's key)…
  RunSql(db_path(),
         "DROP TRIGGER records_are_append_only_update;"
         "UPDATE records SET reason = 'edited' WHERE seq = 2");
  ExpectRefused({"chain workspace:acme seq 2", "the record does not match its hash"});
  RunSql(db_path(), "UPDATE records SET reason = 'action 2' WHERE seq = 2");
  // …intact, it is anchored.
  auto log = TryOpen(OnlyExplicitCheckpoints());
  ASSERT_TRUE(log.ok()) << log.status();
  auto anchors = TokenAnchors();
  ASSERT_TRUE(anchors.ok() && anchors->has_value());
  EXPECT_EQ((*anchors)->at("workspace:acme").seq, 6u);
}

// --- offline: the same tamperings in an export ----------------------------------

class AnchorExportTest : public AnchorTest, public ::testing::WithParamInterface<ExportFormat> {};

std::string FormatName(const ::testing::TestParamInfo<ExportFormat>& param) {
  return param.param == ExportFormat::kJsonl ? "Jsonl" : "Csv";
}

INSTANTIATE_TEST_SUITE_P(Formats, AnchorExportTest,
                         ::testing::Values(ExportFormat::kJsonl, ExportFormat::kCsv), FormatName);

TEST_P(AnchorExportTest, VerifyRefusesTheSameTamperingsInAnExport) {
  WriteHistory();
  std::string genuine;
  {
    auto log = OpenLog(OnlyExplicitCheckpoints());
    ASSERT_NE(log, nullptr);
    genuine = ExportToString(*log, Chain("acme"), GetParam());  // checkpoints 3, 6, 8
  }
  ASSERT_TRUE(VerifyString(genuine, pem_).ok());
  const std::vector<std::string> lines = SplitLines(genuine);

  // Checkpoints deleted.
  std::vector<std::string> no_checkpoints = lines;
  for (uint64_t seq : {8u, 6u, 3u}) {
    no_checkpoints.erase(no_checkpoints.begin() + static_cast<std::ptrdiff_t>(LineOfCheckpoint(
                                                      no_checkpoints, GetParam(), seq)));
  }
  EXPECT_EQ(VerifyString(JoinLines(no_checkpoints), pem_).status().code(),
            absl::StatusCode::kDataLoss);

  // Truncated right after checkpoint K = 3.
  std::vector<std::string> truncated(
      lines.begin(),
      lines.begin() + static_cast<std::ptrdiff_t>(LineOfCheckpoint(lines, GetParam(), 3) + 1));
  EXPECT_EQ(VerifyString(JoinLines(truncated), pem_).status().code(), absl::StatusCode::kDataLoss);

  // Rewritten records with recomputed hashes, signed by a planted key: the
  // forger's whole export (its own statement and checkpoints) …
  std::string forged;
  {
    SoftwareSigner forger("grantvault-audit-2");
    const std::string forged_db = dir_.Join("forged2.db");
    auto log = AuditLog::Open(forged_db, std::make_unique<SoftwareSigner>(forger),
                              std::make_unique<MemoryAnchorStore>(), SecretBytes::Random(32),
                              &clock_, OnlyExplicitCheckpoints());
    ASSERT_TRUE(log.ok()) << log.status();
    for (int i = 1; i <= 8; ++i) {
      std::string reason = i == 2 ? "nothing happened" : absl::StrCat("action ", i);
      ASSERT_TRUE((*log)->Append(AdminEvent("acme", reason), Durability::kDurable).ok());
    }
    forged = ExportToString(**log, Chain("acme"), GetParam());
    ASSERT_TRUE(VerifyString(forged, *forger.PublicKeyPem()).ok());  // valid under its own key
  }
  auto refused = VerifyString(forged, pem_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(refused.status().message(), HasSubstr("line"));
  // … or its records under the genuine statement and checkpoints.
  std::vector<std::string> spliced = lines;
  const std::vector<std::string> forged_lines = SplitLines(forged);
  const size_t first_record = GetParam() == ExportFormat::kJsonl ? 1 : 2;
  for (size_t i = 0; i < 3; ++i) spliced[first_record + i] = forged_lines[first_record + i];
  EXPECT_EQ(VerifyString(JoinLines(spliced), pem_).status().code(), absl::StatusCode::kDataLoss);
}

// --- the anchors' own form ---------------------------------------------------------

TEST(AnchorCodecTest, RoundTripsAndRefusesEveryTornOrAlteredForm) {
  ChainAnchors anchors;
  anchors["system"] = ChainAnchor{12, std::string(64, 'a'), 2};
  anchors["workspace:acme\nwith:odd\xc3\xa9"] = ChainAnchor{3000, std::string(64, 'b'), 3};
  const std::vector<uint8_t> bytes = EncodeAnchors(41, anchors);
  const std::string text(bytes.begin(), bytes.end());
  auto decoded = DecodeAnchors(text);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->generation, 41u);
  EXPECT_EQ(decoded->anchors, anchors);
  for (size_t cut = 0; cut < text.size(); ++cut) {
    EXPECT_FALSE(DecodeAnchors(text.substr(0, cut)).ok()) << "cut at " << cut;
  }
  for (size_t i = 0; i < text.size(); ++i) {
    std::string flipped = text;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x01);
    EXPECT_FALSE(DecodeAnchors(flipped).ok()) << "byte " << i;
  }
  EXPECT_FALSE(DecodeAnchors(text + "x").ok());
  const std::vector<uint8_t> none = EncodeAnchors(1, {});
  auto empty = DecodeAnchors(std::string(none.begin(), none.end()));
  EXPECT_TRUE(empty.ok()) << empty.status();
}

TEST_F(AnchorTest, TheTokenStoreKeepsTheOlderAnchorWhenTheNewerIsTorn) {
  auto store = MakeHsmAnchorStore(hsm_->token());
  ASSERT_TRUE(store.ok());
  auto none = (*store)->Load();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  const ChainAnchors first = {{"system", ChainAnchor{1, std::string(64, 'a'), 1}}};
  const ChainAnchors second = {{"system", ChainAnchor{2, std::string(64, 'b'), 2}}};
  ASSERT_TRUE((*store)->Save(first).ok());   // slot a
  ASSERT_TRUE((*store)->Save(second).ok());  // slot b
  auto reopened = MakeHsmAnchorStore(hsm_->token());
  auto latest = (*reopened)->Load();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ(**latest, second);

  // A store that saves before it loads still writes over the older slot (a).
  const ChainAnchors third = {{"system", ChainAnchor{3, std::string(64, 'c'), 3}}};
  ASSERT_TRUE((*MakeHsmAnchorStore(hsm_->token()))->Save(third).ok());
  std::vector<uint8_t> torn = EncodeAnchors(3, third);
  torn.resize(torn.size() / 2);
  ASSERT_TRUE(hsm::WriteDataObject(hsm_->token(), "grantvault-audit-anchor-a", torn).ok());
  auto kept = (*MakeHsmAnchorStore(hsm_->token()))->Load();
  ASSERT_TRUE(kept.ok() && kept->has_value()) << kept.status();
  EXPECT_EQ(**kept, second);

  // A crash tore the write of slot b: the older anchor in slot a remains.
  ASSERT_TRUE(
      hsm::WriteDataObject(hsm_->token(), "grantvault-audit-anchor-a", EncodeAnchors(1, first))
          .ok());
  ASSERT_TRUE(hsm::WriteDataObject(hsm_->token(), "grantvault-audit-anchor-b", torn).ok());
  auto fallback = (*MakeHsmAnchorStore(hsm_->token()))->Load();
  ASSERT_TRUE(fallback.ok() && fallback->has_value()) << fallback.status();
  EXPECT_EQ(**fallback, first);

  ASSERT_TRUE(hsm::WriteDataObject(hsm_->token(), "grantvault-audit-anchor-a", torn).ok());
  auto unreadable = (*MakeHsmAnchorStore(hsm_->token()))->Load();
  EXPECT_EQ(unreadable.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace grantvault::audit
