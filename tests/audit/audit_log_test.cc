#include "audit/audit_log.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <sstream>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "audit/verify.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/audit/audit_test_fixture.h"
#include "tests/audit/audit_test_util.h"
#include "tests/testing/wait.h"

namespace grantvault::audit {
namespace {

using testing::AdminEvent;
using testing::AuditTest;
using testing::ExportToString;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::SoftwareSigner;
using testing::TokenEvent;
using testing::VerifyString;

using ::grantvault::testing::WaitFor;

// Runs SQL on the database with a connection of the test's own (no defensive
// mode: tests tamper with the file as an attacker with write access would).
void RunSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

ExportFilter Chain(const std::string& workspace) {
  ExportFilter f;
  f.workspace_id = workspace;
  return f;
}

TEST_F(AuditTest, EachWorkspaceAndTheSystemHaveTheirOwnChain) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        log->Append(AdminEvent("acme", absl::StrCat("acme ", i)), Durability::kDurable).ok());
  }
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(log->Append(TokenEvent("globex", "gr_1"), Durability::kGrouped).ok());
  }
  Event key_event = AdminEvent("", "rotated", "key.rotated");
  key_event.details["kek"] = "grantvault-kek-2";
  ASSERT_TRUE(log->Append(key_event, Durability::kDurable).ok());

  struct Expect {
    std::string workspace, chain;
    uint64_t records;
  };
  for (const Expect& e : {Expect{"acme", "workspace:acme", 3},
                          Expect{"globex", "workspace:globex", 2}, Expect{"", "system", 1}}) {
    std::string text = ExportToString(*log, Chain(e.workspace), ExportFormat::kJsonl);
    auto report = VerifyString(text, log->PublicKeyPem());
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->chain, e.chain);
    EXPECT_EQ(report->workspace_id, e.workspace);
    EXPECT_EQ(report->records, e.records);
    EXPECT_EQ(report->first_seq, 1u);
    EXPECT_EQ(report->last_seq, e.records);
    EXPECT_EQ(report->key_label, "grantvault-audit-1");
  }
  // A workspace with no events exports an empty, signed, verifiable chain.
  auto empty = VerifyString(ExportToString(*log, Chain("initech"), ExportFormat::kJsonl),
                            log->PublicKeyPem());
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->records, 0u);
}

TEST_F(AuditTest, EveryFieldOfTheEventIsExported) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  Event e = TokenEvent("acme", "gr_7");
  e.reason = "cached";
  e.details["request_id"] = "r-99";
  e.scopes = {"a", "b"};
  ASSERT_TRUE(log->Append(e, Durability::kGrouped).ok());
  std::string text = ExportToString(*log, Chain("acme"), ExportFormat::kJsonl);
  for (const char* expected :
       {"\"type\":\"token.released\"", "\"workspace_id\":\"acme\"", "\"uid\":1000", "\"pid\":4242",
        "\"exe\":\"/usr/bin/agent-host\"", "\"grant_id\":\"gr_7\"",
        "\"connector_id\":\"google_workspace\"", "\"account_id\":\"1134\"",
        "\"scopes\":[\"a\",\"b\"]", "\"outcome\":\"ok\"", "\"reason\":\"cached\"",
        "\"request_id\":\"r-99\"", "\"tool\":\"gmail.search\"", "\"time\":\"20"}) {
    EXPECT_THAT(text, HasSubstr(expected));
  }
}

// Holds SQLite's write lock on the log's database (BEGIN IMMEDIATE on a
// connection of the test's own) until Release(): the writer then waits in its
// busy timeout, and what is appended meanwhile queues up for one batch.
class WriteLockHolder {
 public:
  explicit WriteLockHolder(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);  // the log's own writes may hold it a moment
    EXPECT_EQ(sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  }
  ~WriteLockHolder() { Release(); }
  void Release() {
    if (db_ == nullptr) return;
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db_);
    db_ = nullptr;
  }

 private:
  sqlite3* db_ = nullptr;
};

// The records of a JSONL export, as (type, details["count"] or "1", pid).
std::vector<std::tuple<std::string, std::string, std::string>> RecordsOf(const std::string& text) {
  std::vector<std::tuple<std::string, std::string, std::string>> out;
  for (const std::string& line : testing::SplitLines(text)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || j.value("kind", "") != "record") continue;
    const nlohmann::json& details = j["details"];
    out.emplace_back(j.value("type", ""), details.value("count", "1"),
                     j["actor"]["pid"].is_number() ? j["actor"]["pid"].dump() : "");
  }
  return out;
}

TEST_F(AuditTest, IdenticalCoalescableEventsOfOneBatchShareARecordWithTheirCount) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  auto coalescable = [](int32_t pid) {
    Event e = TokenEvent("acme", "gr_1");
    e.actor.pid = pid;
    e.coalesce = true;
    return e;
  };
  std::atomic<int> ok{0};
  std::atomic<int> answered{0};
  auto on_done = [&](absl::Status s) {
    if (s.ok()) ++ok;
    ++answered;
  };
  {
    WriteLockHolder lock(db_path());
    // The writer takes this one and waits for the lock; everything after it
    // queues up meanwhile and is committed in the next batch.
    log->AppendAsync(AdminEvent("acme", "first"), Durability::kGrouped, on_done);
    ASSERT_TRUE(WaitFor([&] { return log->backlog() == 0; }));  // taken
    for (int i = 0; i < 40; ++i) log->AppendAsync(coalescable(4242), Durability::kGrouped, on_done);
    log->AppendAsync(coalescable(5555), Durability::kGrouped, on_done);  // another caller
    for (int i = 0; i < 10; ++i) log->AppendAsync(coalescable(4242), Durability::kGrouped, on_done);
    // Another event of the chain closes the groups: releases after it get their own record.
    log->AppendAsync(AdminEvent("acme", "between"), Durability::kGrouped, on_done);
    for (int i = 0; i < 7; ++i) log->AppendAsync(coalescable(4242), Durability::kGrouped, on_done);
    // Not grouped: never coalesced.
    log->AppendAsync(coalescable(4242), Durability::kDurable, on_done);
    log->AppendAsync(coalescable(4242), Durability::kDurable, on_done);
    // Nothing is answered before the batch is committed.
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(answered.load(), 0);
  }
  ASSERT_TRUE(WaitFor([&] { return answered.load() == 62; }));
  EXPECT_EQ(ok.load(), 62);

  const std::string text = ExportToString(*log, Chain("acme"), ExportFormat::kJsonl);
  auto report = VerifyString(text, log->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  using R = std::tuple<std::string, std::string, std::string>;
  EXPECT_THAT(
      RecordsOf(text),
      ::testing::ElementsAre(R{"grant.revoked", "1", ""}, R{"token.released", "50", "4242"},
                             R{"token.released", "1", "5555"}, R{"grant.revoked", "1", ""},
                             R{"token.released", "7", "4242"}, R{"token.released", "1", "4242"},
                             R{"token.released", "1", "4242"}));
}

TEST_F(AuditTest, ADeferredEventWaitsForItsIntervalOrTheNextUrgentOne) {
  AuditOptions options;
  options.deferred_interval = absl::Seconds(1);
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  std::atomic<int> done{0};
  const absl::Time start = absl::Now();
  std::atomic<int64_t> committed_after_ms{-1};
  log->AppendAsync(TokenEvent("acme", "gr_1"), Durability::kDeferred, [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    committed_after_ms = absl::ToInt64Milliseconds(absl::Now() - start);
    ++done;
  });
  ASSERT_TRUE(WaitFor([&] { return done.load() == 1; }));
  // Alone, it waited for its interval (and not much longer).
  EXPECT_GE(committed_after_ms.load(), 990);
  EXPECT_LT(committed_after_ms.load(), 10000);

  // Followed by an event somebody waits for, it is written with that one.
  const absl::Time second = absl::Now();
  log->AppendAsync(TokenEvent("acme", "gr_2"), Durability::kDeferred, [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    ++done;
  });
  ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_3"), Durability::kGrouped).ok());
  EXPECT_LT(absl::Now() - second, absl::Milliseconds(900));
  ASSERT_TRUE(WaitFor([&] { return done.load() == 2; }));
  auto report =
      VerifyString(ExportToString(*log, Chain("acme"), ExportFormat::kJsonl), log->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 3u);
}

TEST_F(AuditTest, ACountedEventRecordsEveryAddUntilTheWriterTakesIt) {
  AuditOptions options;
  options.deferred_interval = absl::Seconds(2);  // the Adds below come well before
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  Event e = TokenEvent("acme", "gr_1");
  e.coalesce = true;
  std::atomic<int> done{0};
  std::shared_ptr<PendingCount> count =
      log->AppendCounted(e, Durability::kDeferred, [&](absl::Status s) {
        EXPECT_TRUE(s.ok()) << s;
        ++done;
      });
  ASSERT_NE(count, nullptr);
  for (int i = 0; i < 9; ++i) EXPECT_TRUE(count->Add());
  ASSERT_TRUE(WaitFor([&] { return done.load() == 1; }));
  EXPECT_FALSE(count->Add());  // taken: a later repeat needs an event of its own

  const std::string text = ExportToString(*log, Chain("acme"), ExportFormat::kJsonl);
  ASSERT_TRUE(VerifyString(text, log->PublicKeyPem()).ok());
  using R = std::tuple<std::string, std::string, std::string>;
  EXPECT_THAT(RecordsOf(text), ::testing::ElementsAre(R{"token.released", "10", "4242"}));

  // Only a coalescable event can be counted.
  e.coalesce = false;
  absl::Status refused;
  EXPECT_EQ(log->AppendCounted(e, Durability::kDeferred, [&](absl::Status s) { refused = s; }),
            nullptr);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
}

// An event that records must not overtake seals the counts queued before it:
// a repeat after it needs a record of its own, after it.
TEST_F(AuditTest, AnEventQueuedAfterACountedOneEndsItsCount) {
  AuditOptions options;
  options.deferred_interval = absl::Seconds(2);
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  Event e = TokenEvent("acme", "gr_1");
  e.coalesce = true;
  std::atomic<int> done{0};
  auto on_done = [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    ++done;
  };
  std::shared_ptr<PendingCount> before;
  {
    WriteLockHolder lock(db_path());
    before = log->AppendCounted(e, Durability::kDeferred, on_done);
    ASSERT_NE(before, nullptr);
    EXPECT_TRUE(before->Add());
    // Another coalescable event does not end it…
    Event other = e;
    other.actor.pid = 5555;
    log->AppendAsync(other, Durability::kDeferred, on_done);
    EXPECT_TRUE(before->Add());
    // …an event that is not coalesced does.
    log->AppendAsync(AdminEvent("acme", "between"), Durability::kGrouped, on_done);
    EXPECT_FALSE(before->Add());
    std::shared_ptr<PendingCount> after = log->AppendCounted(e, Durability::kDeferred, on_done);
    ASSERT_NE(after, nullptr);
    EXPECT_TRUE(after->Add());
  }
  ASSERT_TRUE(WaitFor([&] { return done.load() == 4; }));
  const std::string text = ExportToString(*log, Chain("acme"), ExportFormat::kJsonl);
  ASSERT_TRUE(VerifyString(text, log->PublicKeyPem()).ok());
  using R = std::tuple<std::string, std::string, std::string>;
  EXPECT_THAT(
      RecordsOf(text),
      ::testing::ElementsAre(R{"token.released", "3", "4242"}, R{"token.released", "1", "5555"},
                             R{"grant.revoked", "1", ""}, R{"token.released", "2", "4242"}));
}

TEST_F(AuditTest, TheAgeOfTheOldestUncommittedEventShowsAStuckWriter) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->oldest_uncommitted_age(), absl::ZeroDuration());
  std::atomic<bool> done{false};
  {
    WriteLockHolder lock(db_path());
    log->AppendAsync(TokenEvent("acme", "gr_1"), Durability::kGrouped,
                     [&](absl::Status) { done = true; });
    absl::SleepFor(absl::Milliseconds(300));
    EXPECT_GE(log->oldest_uncommitted_age(), absl::Milliseconds(250));
  }
  ASSERT_TRUE(WaitFor([&] { return done.load(); }));
  ASSERT_TRUE(WaitFor([&] { return log->oldest_uncommitted_age() == absl::ZeroDuration(); }));
}

TEST_F(AuditTest, ACoalescableEventMayNotSetTheCountItself) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  Event e = TokenEvent("acme", "gr_1");
  e.coalesce = true;
  e.details["count"] = "1000";
  absl::Status s = log->Append(e, Durability::kGrouped);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("count"));
  e.coalesce = false;  // an ordinary event may carry any detail of that name
  EXPECT_TRUE(log->Append(e, Durability::kGrouped).ok());
}

TEST_F(AuditTest, ReopeningContinuesEveryChain) {
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(AdminEvent("acme", "one"), Durability::kDurable).ok());
    ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
    ASSERT_TRUE(log->Append(AdminEvent("", "sys"), Durability::kDurable).ok());
  }
  clock_.Advance(absl::Minutes(1));
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->Append(AdminEvent("acme", "three"), Durability::kDurable).ok());
    ASSERT_TRUE(log->Append(AdminEvent("", "sys 2"), Durability::kDurable).ok());
  }
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  for (const auto& [ws, n] : {std::pair<std::string, uint64_t>{"acme", 3}, {"", 2}}) {
    for (ExportFormat format : {ExportFormat::kJsonl, ExportFormat::kCsv}) {
      auto report = VerifyString(ExportToString(*log, Chain(ws), format), log->PublicKeyPem());
      ASSERT_TRUE(report.ok()) << report.status();
      EXPECT_EQ(report->records, n);
      EXPECT_EQ(report->last_seq, n);
    }
  }
}

TEST_F(AuditTest, OpenRefusesAnEditedTail) {
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(log->Append(AdminEvent("acme", absl::StrCat("e", i)), Durability::kDurable).ok());
    }
  }
  RunSql(db_path(),
         "DROP TRIGGER records_are_append_only_update;"
         "UPDATE records SET reason = 'nothing to see' WHERE seq = 3");
  auto log = TryOpen();
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(log.status().message(), HasSubstr("chain workspace:acme seq 3"));
}

TEST_F(AuditTest, OpenRefusesATailDeletedBehindACheckpoint) {
  {
    auto log = OpenLog();
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(log->Append(AdminEvent("acme", absl::StrCat("e", i)), Durability::kDurable).ok());
    }
    ASSERT_TRUE(log->Checkpoint().ok());
  }
  // The attacker removes the last two records and rewinds the head to match.
  RunSql(db_path(),
         "DROP TRIGGER records_are_append_only_delete;"
         "DELETE FROM records WHERE seq > 2;"
         "UPDATE chains SET head_seq = 2, head_hash = "
         "(SELECT hash FROM records WHERE chain = 'workspace:acme' AND seq = 2)");
  auto log = TryOpen();
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(log.status().message(), HasSubstr("the token's anchor is seq 4"));
}

TEST_F(AuditTest, OpenRefusesAnotherKeyUnderTheSameLabel) {
  { ASSERT_NE(OpenLog(), nullptr); }
  auto log = AuditLog::Open(db_path(), std::make_unique<SoftwareSigner>("grantvault-audit-1"),
                            HsmAnchors(), SecretBytes::Random(32), &clock_, {});
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(AuditTest, OpenValidatesItsArguments) {
  auto signer = [&] { return std::make_unique<SoftwareSigner>("k"); };
  EXPECT_FALSE(
      AuditLog::Open("", signer(), HsmAnchors(), SecretBytes::Random(32), &clock_, {}).ok());
  EXPECT_FALSE(
      AuditLog::Open(db_path(), nullptr, HsmAnchors(), SecretBytes::Random(32), &clock_, {}).ok());
  EXPECT_FALSE(
      AuditLog::Open(db_path(), signer(), nullptr, SecretBytes::Random(32), &clock_, {}).ok());
  EXPECT_FALSE(
      AuditLog::Open(db_path(), signer(), HsmAnchors(), SecretBytes::Random(16), &clock_, {}).ok());
  EXPECT_FALSE(
      AuditLog::Open(db_path(), signer(), HsmAnchors(), SecretBytes::Random(32), nullptr, {}).ok());
  AuditOptions zero;
  zero.checkpoint_every_records = 0;
  EXPECT_FALSE(
      AuditLog::Open(db_path(), signer(), HsmAnchors(), SecretBytes::Random(32), &clock_, zero)
          .ok());
  EXPECT_TRUE(absl::IsNotFound(MakeHsmSigner(hsm_->token(), "grantvault-audit-9").status()));
}

TEST_F(AuditTest, RefusesUnknownTypesOutcomesAndSecretDetails) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  Event bad_type = AdminEvent("acme", "x", "grant.stolen");
  Event bad_outcome = AdminEvent("acme", "x");
  bad_outcome.outcome = "maybe";
  Event secret = TokenEvent("acme", "gr_1");
  secret.details["Access_Token"] = "ya29.leak";
  Event huge = AdminEvent("acme", std::string(70 * 1024, 'x'));
  for (Event* e : {&bad_type, &bad_outcome, &secret, &huge}) {
    absl::Status s = log->Append(*e, Durability::kDurable);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), Not(HasSubstr("ya29.leak")));
  }
  auto report =
      VerifyString(ExportToString(*log, Chain("acme"), ExportFormat::kJsonl), log->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 0u);
}

TEST_F(AuditTest, InvalidUtf8IsReplacedAndStillVerifies) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  Event e = TokenEvent("acme", "gr_1");
  e.actor.exe = "/opt/\xff\xfe-agent";
  e.reason = "line\nbreak, \"quoted\", =cmd";
  ASSERT_TRUE(log->Append(e, Durability::kGrouped).ok());
  for (ExportFormat format : {ExportFormat::kJsonl, ExportFormat::kCsv}) {
    std::string text = ExportToString(*log, Chain("acme"), format);
    EXPECT_THAT(text, HasSubstr("/opt/\xEF\xBF\xBD\xEF\xBF\xBD-agent"));
    auto report = VerifyString(text, log->PublicKeyPem());
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->records, 1u);
  }
}

TEST_F(AuditTest, CheckpointsEveryNRecords) {
  AuditOptions options;
  options.checkpoint_every_records = 5;
  options.checkpoint_poll_interval = absl::Milliseconds(10);
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
  }
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(log->checkpoint_health().checkpoints_written, 0u);
  EXPECT_EQ(log->checkpoint_health().unsigned_records, 4u);
  ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
  ASSERT_TRUE(WaitFor([&] { return log->checkpoint_health().checkpoints_written == 1; }));
  EXPECT_EQ(log->checkpoint_health().unsigned_records, 0u);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return log->checkpoint_health().checkpoints_written == 2; }));

  auto report =
      VerifyString(ExportToString(*log, Chain("acme"), ExportFormat::kJsonl), log->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 10u);
  EXPECT_EQ(report->checkpoints, 2u);  // seq 5 and 10; the export needed no new one
}

TEST_F(AuditTest, CheckpointsAfterTimeByTheInjectedClock) {
  AuditOptions options;
  options.checkpoint_every = absl::Seconds(60);
  options.checkpoint_poll_interval = absl::Milliseconds(10);
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  ASSERT_TRUE(log->Append(AdminEvent("acme", "a"), Durability::kDurable).ok());
  clock_.Advance(absl::Seconds(59));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(log->checkpoint_health().checkpoints_written, 0u);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(WaitFor([&] { return log->checkpoint_health().checkpoints_written == 1; }));
  EXPECT_EQ(log->checkpoint_health().unsigned_records, 0u);
  // An idle chain is not checkpointed again.
  clock_.Advance(absl::Minutes(5));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(log->checkpoint_health().checkpoints_written, 1u);
}

// An HSM that can be made to fail on demand, around the real token signer.
class FlakySigner final : public Signer {
 public:
  FlakySigner(std::unique_ptr<Signer> real, std::atomic<bool>* fail)
      : real_(std::move(real)), fail_(fail) {}
  absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t> data) override {
    if (fail_->load()) return absl::UnavailableError("token not present");
    return real_->SignSha256(data);
  }
  absl::StatusOr<std::string> PublicKeyPem() override { return real_->PublicKeyPem(); }
  std::string key_label() const override { return real_->key_label(); }

 private:
  std::unique_ptr<Signer> real_;
  std::atomic<bool>* fail_;
};

TEST_F(AuditTest, RecordsAreStillWrittenWhileSigningFailsAndCheckpointsCatchUp) {
  std::atomic<bool> fail{true};
  auto real = MakeHsmSigner(hsm_->token(), testing::kAuditKey);
  ASSERT_TRUE(real.ok()) << real.status();
  AuditOptions options;
  options.checkpoint_every_records = 2;
  options.checkpoint_poll_interval = absl::Milliseconds(10);
  options.checkpoint_retry_interval = absl::Milliseconds(20);
  auto opened = AuditLog::Open(db_path(), std::make_unique<FlakySigner>(std::move(*real), &fail),
                               HsmAnchors(), fingerprint_key_.Clone(), &clock_, options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  AuditLog& log = **opened;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(log.Append(AdminEvent("acme", absl::StrCat(i)), Durability::kDurable).ok());
  }
  ASSERT_TRUE(WaitFor([&] { return log.checkpoint_health().signing_failures >= 2; }));
  CheckpointHealth health = log.checkpoint_health();
  EXPECT_THAT(health.last_signing_error, HasSubstr("chain workspace:acme"));
  EXPECT_EQ(health.unsigned_records, 3u);
  absl::Status forced = log.Checkpoint();
  EXPECT_EQ(forced.code(), absl::StatusCode::kUnavailable);
  std::ostringstream out;
  EXPECT_FALSE(log.Export(Chain("acme"), ExportFormat::kJsonl, out, nullptr).ok());

  fail = false;
  // (The writer marks the chain signed when it commits the checkpoint; the
  // error is cleared a moment later, once the signing call has returned.)
  ASSERT_TRUE(WaitFor([&] {
    const CheckpointHealth h = log.checkpoint_health();
    return h.unsigned_records == 0 && h.last_signing_error.empty();
  })) << log.checkpoint_health().last_signing_error;
  auto report =
      VerifyString(ExportToString(log, Chain("acme"), ExportFormat::kJsonl), log.PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 3u);
}

TEST_F(AuditTest, ExportReportsProgressWithTheTotalUpFront) {
  AuditOptions options;
  options.checkpoint_every_records = 1'000'000;  // only the export's own checkpoint
  auto log = OpenLog(options);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 2000; ++i) {
    ASSERT_TRUE(log->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok());
  }
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  std::ostringstream out;
  ASSERT_TRUE(log->Export(Chain("acme"), ExportFormat::kCsv, out,
                          [&](uint64_t done, uint64_t total) { calls.emplace_back(done, total); })
                  .ok());
  ASSERT_GE(calls.size(), 3u);
  EXPECT_EQ(calls.front(), std::make_pair(uint64_t{0}, uint64_t{2001}));
  EXPECT_EQ(calls.back(), std::make_pair(uint64_t{2001}, uint64_t{2001}));
  for (const auto& [done, total] : calls) EXPECT_EQ(total, 2001u);
  auto report = VerifyString(out.str(), log->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 2000u);
}

TEST_F(AuditTest, SixteenThreadsAppendingKeepEveryChainValid) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::vector<std::string> workspaces = {"acme", "globex", "initech", ""};
  constexpr int kThreads = 16, kPerThread = 150;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string& ws = workspaces[static_cast<size_t>(t + i) % workspaces.size()];
        absl::Status s = i % 10 == 0 ? log->Append(AdminEvent(ws, "admin"), Durability::kDurable)
                                     : log->Append(TokenEvent(ws, "gr_1"), Durability::kGrouped);
        if (!s.ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  uint64_t total = 0;
  for (const std::string& ws : workspaces) {
    auto report =
        VerifyString(ExportToString(*log, Chain(ws), ExportFormat::kJsonl), log->PublicKeyPem());
    ASSERT_TRUE(report.ok()) << report.status();
    total += report->records;
  }
  EXPECT_EQ(total, static_cast<uint64_t>(kThreads * kPerThread));
}

TEST_F(AuditTest, ATokenIsNamedOnlyByItsKeyedFingerprint) {
  auto log = OpenLog();
  ASSERT_NE(log, nullptr);
  const std::string token_text = "ya29.a0AfH6SMB-very-secret-access-token-value";
  SecretBytes token = SecretBytes::CopyOf(token_text);
  std::string fingerprint = log->Fingerprint(token);
  EXPECT_THAT(fingerprint, ::testing::MatchesRegex("hmac-sha256:[0-9a-f]{32}"));
  EXPECT_EQ(log->Fingerprint(SecretBytes::CopyOf(token_text)), fingerprint);
  EXPECT_NE(log->Fingerprint(SecretBytes::CopyOf(token_text + "x")), fingerprint);

  Event e = TokenEvent("acme", "gr_1");
  e.details["token_fingerprint"] = fingerprint;
  ASSERT_TRUE(log->Append(e, Durability::kGrouped).ok());
  std::string jsonl = ExportToString(*log, Chain("acme"), ExportFormat::kJsonl);
  std::string csv = ExportToString(*log, Chain("acme"), ExportFormat::kCsv);
  EXPECT_THAT(jsonl, HasSubstr(fingerprint));
  EXPECT_THAT(csv, HasSubstr(fingerprint));
  log.reset();  // flush everything to the files

  // The same key gives the same fingerprint after a restart; another key does not.
  log = OpenLog();
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->Fingerprint(token), fingerprint);
  log.reset();

  std::string files = testing::ReadFilesWithPrefix(dir_.path(), "audit.db");
  ASSERT_FALSE(files.empty());
  EXPECT_THAT(files, HasSubstr(fingerprint));
  for (const std::string* haystack : {&files, &jsonl, &csv}) {
    EXPECT_EQ(haystack->find(token_text), std::string::npos);
    EXPECT_EQ(haystack->find(token_text.substr(5, 20)), std::string::npos);
  }
}

// --- fail closed: a real write failure in a child process ---------------------------
//
// The tests run as root in CI, so permissions cannot stop SQLite writing. A
// file-size limit of one byte (RLIMIT_FSIZE, with SIGXFSZ ignored) makes every
// write past the WAL's first byte fail with EFBIG, as a full disk would. The
// limit is per process, hence a child; the child signs with a software key
// because PKCS#11 sessions do not survive fork().

// Runs `body` in a child process; the child's failure message (empty on
// success) comes back through a pipe.
std::string RunInChild(const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string message = body();
    ssize_t written = ::write(fds[1], message.data(), message.size());
    (void)written;
    ::_exit(message.empty() ? 0 : 1);
  }
  ::close(fds[1]);
  std::string message;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) message.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (message.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    return absl::StrCat("child ended with status ", status);
  }
  return message;
}

class AuditChildTest : public ::testing::Test {
 protected:
  std::string db_path() const { return dir_.Join("audit.db"); }
  absl::StatusOr<std::unique_ptr<AuditLog>> Open(AuditOptions options = {}) {
    return AuditLog::Open(db_path(), std::make_unique<SoftwareSigner>(signer_),
                          std::make_unique<testing::MemoryAnchorStore>(anchors_), key_.Clone(),
                          &clock_, options);
  }
  grantvault::testing::TempDir dir_;
  SoftwareSigner signer_{"grantvault-audit-1"};
  testing::MemoryAnchorStore anchors_;  // a child's saves stay in the child
  SecretBytes key_ = SecretBytes::Random(32);
  ManualClock clock_;
};

TEST_F(AuditChildTest, AFailedWriteReturnsAnErrorAndLeavesNothing) {
  std::string failure = RunInChild([&]() -> std::string {
    ::signal(SIGXFSZ, SIG_IGN);
    auto log = Open();
    if (!log.ok()) return absl::StrCat("open: ", log.status().ToString());
    if (!(*log)->Append(AdminEvent("acme", "before"), Durability::kDurable).ok()) {
      return "first append failed";
    }
    struct rlimit saved;
    ::getrlimit(RLIMIT_FSIZE, &saved);
    struct rlimit tiny = {1, saved.rlim_max};
    ::setrlimit(RLIMIT_FSIZE, &tiny);
    absl::Status durable =
        (*log)->Append(AdminEvent("acme", "lost-durable-event"), Durability::kDurable);
    absl::Status grouped =
        (*log)->Append(AdminEvent("acme", "lost-grouped-event"), Durability::kGrouped);
    ::setrlimit(RLIMIT_FSIZE, &saved);
    if (durable.ok() || grouped.ok()) return "an append succeeded although nothing was written";
    // SQLite reports EFBIG as an I/O error (Unavailable); ENOSPC would be
    // SQLITE_FULL (ResourceExhausted). Either way the caller fails closed.
    if (durable.code() != absl::StatusCode::kUnavailable &&
        durable.code() != absl::StatusCode::kResourceExhausted) {
      return absl::StrCat("unexpected error: ", durable.ToString());
    }
    if (!(*log)->Append(AdminEvent("acme", "after"), Durability::kDurable).ok()) {
      return "append after the failure failed";
    }
    std::ostringstream out;
    if (!(*log)->Export(Chain("acme"), ExportFormat::kJsonl, out, nullptr).ok()) return "export";
    auto report = VerifyString(out.str(), (*log)->PublicKeyPem());
    if (!report.ok()) return absl::StrCat("verify: ", report.status().ToString());
    if (report->records != 2 || report->last_seq != 2) return "expected exactly seq 1 and 2";
    if (out.str().find("lost-") != std::string::npos) return "a failed event was exported";
    log->reset();
    if (testing::ReadFilesWithPrefix(dir_.path(), "audit.db").find("lost-") != std::string::npos) {
      return "a failed event is in the database files";
    }
    return "";
  });
  EXPECT_EQ(failure, "");
}

TEST_F(AuditChildTest, AKilledProcessLosesNoGroupedRecord) {
  std::string failure = RunInChild([&]() -> std::string {
    AuditOptions options;
    options.group_commit_interval = absl::Hours(1);  // never fsynced before the kill
    auto log = Open(options);
    if (!log.ok()) return absl::StrCat("open: ", log.status().ToString());
    for (int i = 0; i < 50; ++i) {
      if (!(*log)->Append(TokenEvent("acme", "gr_1"), Durability::kGrouped).ok()) return "append";
    }
    ::kill(::getpid(), SIGKILL);
    return "not killed";
  });
  EXPECT_THAT(failure, HasSubstr("child ended with status"));  // killed, as intended
  auto log = Open();
  ASSERT_TRUE(log.ok()) << log.status();
  std::ostringstream out;
  ASSERT_TRUE((*log)->Export(Chain("acme"), ExportFormat::kJsonl, out, nullptr).ok());
  auto report = VerifyString(out.str(), (*log)->PublicKeyPem());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->records, 50u);
}

}  // namespace
}  // namespace grantvault::audit
