// What only the SQLite backend (db/sqlite.h) has, against real files: the
// file's protections, the connection's settings, a full disk, another
// writer's lock, the statement cache. The contract both backends keep is in
// contract_test.cc.
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

}  // namespace
}  // namespace grantvault::db
