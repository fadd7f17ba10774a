// The shared SQLite layer (db/sqlite.h) against real SQLite files: the file's
// protections, the connection's settings, the error mapping callers act on,
// transactions, the statement cache and migrations.
#include "db/sqlite.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

SqliteOptions Options() {
  SqliteOptions o;
  o.owner = "test store";
  o.file_kind = "test database";
  return o;
}

std::unique_ptr<Sqlite> OpenOrDie(const std::string& path, SqliteOptions options = Options()) {
  absl::StatusOr<std::unique_ptr<Sqlite>> db = Sqlite::Open(path, std::move(options));
  EXPECT_TRUE(db.ok()) << db.status();
  return db.ok() ? std::move(*db) : nullptr;
}

constexpr Migration kSchema[] = {
    {1, "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) STRICT;"},
    {2, R"sql(
CREATE TABLE notes (item TEXT NOT NULL REFERENCES items (id), note TEXT NOT NULL) STRICT;
CREATE TRIGGER items_are_final BEFORE DELETE ON items
BEGIN SELECT RAISE(ABORT, 'items cannot be deleted'); END;
)sql"},
};

int StatementsOpen(const Sqlite& db) {
  int n = 0;
  for (sqlite3_stmt* s = sqlite3_next_stmt(db.raw(), nullptr); s != nullptr;
       s = sqlite3_next_stmt(db.raw(), s)) {
    ++n;
  }
  return n;
}

class SqliteTest : public ::testing::Test {
 protected:
  std::unique_ptr<Sqlite> OpenMigrated(SqliteOptions options = Options()) {
    auto db = OpenOrDie(path_, std::move(options));
    if (db == nullptr) return nullptr;
    absl::Status migrated = Migrate(*db, kSchema);
    EXPECT_TRUE(migrated.ok()) << migrated;
    return db;
  }
  absl::Status Insert(Sqlite& db, const std::string& id, int64_t n) {
    absl::StatusOr<Statement> insert =
        db.Prepare("INSERT INTO items (id, n) VALUES (?, ?)", "insert an item");
    if (!insert.ok()) return insert.status();
    insert->BindText(1, id);
    insert->BindInt(2, n);
    return insert->Run();
  }

  testing::TempDir dir_;
  std::string path_ = dir_.Join("test.db");
};

TEST_F(SqliteTest, CreatesAPrivateFileWhateverTheUmask) {
  const mode_t old = ::umask(022);
  auto db = OpenOrDie(path_);
  ::umask(old);
  ASSERT_NE(db, nullptr);
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600);
}

TEST_F(SqliteTest, RefusesASymbolicLinkAFileOthersCanReadAndADirectory) {
  const std::string target = dir_.Join("target.db");
  ASSERT_EQ(::symlink(target.c_str(), path_.c_str()), 0);
  absl::StatusOr<std::unique_ptr<Sqlite>> linked = Sqlite::Open(path_, Options());
  EXPECT_EQ(linked.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(linked.status().message()), HasSubstr("test database"));
  EXPECT_THAT(std::string(linked.status().message()), HasSubstr("symbolic link"));

  const std::string open = dir_.Join("open.db");
  { auto db = OpenOrDie(open); }
  ASSERT_EQ(::chmod(open.c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<Sqlite>> readable = Sqlite::Open(open, Options());
  EXPECT_EQ(readable.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(readable.status().message()), HasSubstr("chmod 600"));

  EXPECT_EQ(Sqlite::Open(dir_.path(), Options()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sqlite::Open("", Options()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SqliteTest, AWritableConnectionUsesWalFullSyncForeignKeysAndDefensiveMode) {
  auto db = OpenOrDie(path_);
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(*db->ExecForTesting("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(*db->ExecForTesting("PRAGMA synchronous"), "2");
  EXPECT_EQ(*db->ExecForTesting("PRAGMA foreign_keys"), "1");
  // Defensive mode: the schema cannot be written directly.
  EXPECT_FALSE(db->ExecForTesting("PRAGMA writable_schema = ON; "
                                  "UPDATE sqlite_schema SET sql = '' WHERE 0")
                   .ok());
}

TEST_F(SqliteTest, AReadOnlyConnectionNeedsTheFileAndCannotWrite) {
  SqliteOptions read_only = Options();
  read_only.read_only = true;
  EXPECT_FALSE(Sqlite::Open(path_, read_only).ok());  // not created
  { auto db = OpenMigrated(); }
  auto reader = OpenOrDie(path_, read_only);
  ASSERT_NE(reader, nullptr);
  absl::Status s = Insert(*reader, "a", 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;  // SQLITE_READONLY
}

TEST_F(SqliteTest, ErrorsMapToCodesCallersActOnAndNeverCarryABoundValue) {
  auto db = OpenMigrated();
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(Insert(*db, "item-1", 1).ok());

  const absl::Status duplicate = Insert(*db, "item-1", 2);
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(duplicate.message()), StartsWith("test store: insert an item: "));
  EXPECT_THAT(std::string(duplicate.message()), Not(HasSubstr("item-1")));

  absl::StatusOr<Statement> orphan =
      db->Prepare("INSERT INTO notes (item, note) VALUES (?, ?)", "insert a note");
  ASSERT_TRUE(orphan.ok());
  orphan->BindText(1, "no-such-item");
  orphan->BindText(2, "a secret note");
  const absl::Status foreign = orphan->Run();
  EXPECT_EQ(foreign.code(), absl::StatusCode::kFailedPrecondition) << foreign;
  EXPECT_THAT(std::string(foreign.message()), Not(HasSubstr("secret")));

  const absl::Status trigger = db->Run("DELETE FROM items", "delete items");
  EXPECT_EQ(trigger.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(trigger.message()), HasSubstr("items cannot be deleted"));

  absl::StatusOr<Statement> not_null =
      db->Prepare("INSERT INTO items (id, n) VALUES (?, NULL)", "insert without n");
  ASSERT_TRUE(not_null.ok());
  not_null->BindText(1, "item-2");
  EXPECT_EQ(not_null->Run().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(db->Prepare("SELEC nonsense", "parse").status().code(), absl::StatusCode::kInternal);
}

TEST_F(SqliteTest, AFullDatabaseIsResourceExhaustedAndLosesNothingCommitted) {
  auto db = OpenMigrated();
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(Insert(*db, "kept", 1).ok());
  const std::string pages = *db->ExecForTesting("PRAGMA page_count");
  ASSERT_TRUE(db->ExecForTesting("PRAGMA max_page_count = " + pages).ok());
  absl::Status full;
  for (int i = 0; i < 10000 && full.ok(); ++i) {
    full = Insert(*db, std::string(500, 'x') + std::to_string(i), i);
  }
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(*db->ExecForTesting("SELECT n FROM items WHERE id = 'kept'"), "1");
}

TEST_F(SqliteTest, AnotherWritersLockIsUnavailableAfterTheBusyTimeout) {
  SqliteOptions quick = Options();
  quick.busy_timeout_ms = 50;
  auto first = OpenMigrated(quick);
  auto second = OpenOrDie(path_, quick);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  absl::StatusOr<Transaction> held = Transaction::Begin(*first, Transaction::Mode::kImmediate);
  ASSERT_TRUE(held.ok()) << held.status();
  const absl::StatusOr<Transaction> blocked =
      Transaction::Begin(*second, Transaction::Mode::kImmediate);
  EXPECT_EQ(blocked.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SqliteTest, ATransactionNotCommittedIsRolledBack) {
  auto db = OpenMigrated();
  ASSERT_NE(db, nullptr);
  {
    absl::StatusOr<Transaction> txn = Transaction::Begin(*db, Transaction::Mode::kImmediate);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(Insert(*db, "dropped", 1).ok());
    EXPECT_TRUE(db->InTransaction());
  }
  EXPECT_FALSE(db->InTransaction());
  EXPECT_EQ(*db->ExecForTesting("SELECT count(*) FROM items"), "0");
  {
    absl::StatusOr<Transaction> txn = Transaction::Begin(*db, Transaction::Mode::kImmediate);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(Insert(*db, "kept", 1).ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  EXPECT_EQ(*db->ExecForTesting("SELECT count(*) FROM items"), "1");
  EXPECT_EQ(db->Changes(), 1u);
}

TEST_F(SqliteTest, ABindErrorIsReportedByTheNextStep) {
  auto db = OpenMigrated();
  ASSERT_NE(db, nullptr);
  absl::StatusOr<Statement> insert = db->Prepare("INSERT INTO items (id, n) VALUES (?, ?)", "bind");
  ASSERT_TRUE(insert.ok());
  insert->BindText(1, "a");
  insert->BindInt(2, 1);
  insert->BindInt(3, 7);  // no third parameter
  EXPECT_EQ(insert->Run().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*db->ExecForTesting("SELECT count(*) FROM items"), "0");
}

TEST_F(SqliteTest, KeptStatementsAreReusedWithTheirBindingsCleared) {
  SqliteOptions keep = Options();
  keep.keep_statements = true;
  auto db = OpenMigrated(keep);
  ASSERT_NE(db, nullptr);
  const int before = StatementsOpen(*db);
  {
    absl::StatusOr<Statement> echo = db->Prepare("SELECT ?", "echo");
    ASSERT_TRUE(echo.ok());
    echo->BindText(1, "a sealed record");
    ASSERT_TRUE(*echo->Step());
    EXPECT_EQ(echo->Text(0), "a sealed record");
  }
  EXPECT_EQ(StatementsOpen(*db), before + 1);  // kept, not finalized
  {
    absl::StatusOr<Statement> again = db->Prepare("SELECT ?", "echo");
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(StatementsOpen(*db), before + 1);  // the kept one, not a new one
    ASSERT_TRUE(*again->Step());
    EXPECT_TRUE(again->IsNull(0));  // the earlier binding is gone
  }
  // Pragmas are never kept: some act when compiled.
  ASSERT_TRUE(db->QueryText("PRAGMA foreign_keys", "read a pragma").ok());
  EXPECT_EQ(StatementsOpen(*db), before + 1);

  auto plain = OpenOrDie(dir_.Join("plain.db"));
  ASSERT_NE(plain, nullptr);
  { ASSERT_TRUE(plain->Prepare("SELECT 1", "one").ok()); }
  EXPECT_EQ(StatementsOpen(*plain), 0);
}

TEST_F(SqliteTest, TimesRoundTripAndTheInfinitiesSaturate) {
  auto db = OpenMigrated();
  ASSERT_NE(db, nullptr);
  const absl::Time t = absl::FromUnixMicros(1764720000123456);
  for (const absl::Time value : {t, absl::InfiniteFuture(), absl::InfinitePast()}) {
    absl::StatusOr<Statement> echo = db->Prepare("SELECT ?", "echo a time");
    ASSERT_TRUE(echo.ok());
    echo->BindTime(1, value);
    ASSERT_TRUE(*echo->Step());
    EXPECT_EQ(echo->Time(0), value);
  }
  absl::StatusOr<Statement> none = db->Prepare("SELECT ?", "echo no time");
  ASSERT_TRUE(none.ok());
  none->BindOptionalTime(1, std::nullopt);
  ASSERT_TRUE(*none->Step());
  EXPECT_EQ(none->OptionalTime(0), std::nullopt);
}

TEST_F(SqliteTest, MigrationsApplyOnceInOrderAndANewerOrGappedSchemaIsRefused) {
  {
    auto db = OpenMigrated();
    ASSERT_NE(db, nullptr);
    EXPECT_EQ(*db->ExecForTesting("SELECT group_concat(version) FROM schema_migrations"), "1,2");
    // Again: nothing to do.
    ASSERT_TRUE(Migrate(*db, kSchema).ok());
    EXPECT_EQ(*db->ExecForTesting("SELECT count(*) FROM schema_migrations"), "2");
  }
  {
    auto db = OpenOrDie(path_);
    ASSERT_NE(db, nullptr);
    // An older build knows only the first migration.
    const absl::Status older = Migrate(*db, absl::MakeConstSpan(kSchema, 1));
    EXPECT_EQ(older.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(older.message()),
                HasSubstr("has schema version 2, newer than version 1"));
    EXPECT_THAT(std::string(older.message()), StartsWith("test database "));
    ASSERT_TRUE(db->ExecForTesting("DELETE FROM schema_migrations WHERE version = 1").ok());
    const absl::Status gapped = Migrate(*db, kSchema);
    EXPECT_EQ(gapped.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(gapped.message()), HasSubstr("inconsistent"));
  }
}

TEST_F(SqliteTest, AFailingMigrationLeavesTheSchemaAsItWas) {
  constexpr Migration kBroken[] = {
      {1, "CREATE TABLE a (x INTEGER) STRICT;"},
      {2, "CREATE TABLE b (x INTEGER) STRICT; CREATE TABLE a (y INTEGER) STRICT;"},
  };
  auto db = OpenOrDie(path_);
  ASSERT_NE(db, nullptr);
  EXPECT_FALSE(Migrate(*db, kBroken).ok());
  EXPECT_EQ(*db->ExecForTesting("SELECT group_concat(version) FROM schema_migrations"), "1");
  EXPECT_EQ(*db->ExecForTesting("SELECT count(*) FROM sqlite_schema WHERE name = 'b'"), "0");
}

}  // namespace
}  // namespace grantvault::db
