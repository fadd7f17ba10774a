// The database layer's contract (db/connection.h), the same on both backends:
// a SQLite file, and a PostgreSQL database on a real server the test starts.
// What only one backend has is in sqlite_test.cc and postgres_test.cc.
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/ids.h"
#include "db/connection.h"
#include "db/postgres.h"
#include "db/sqlite.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

enum class Backend { kSqlite, kPostgres };

constexpr Migration kSqliteSchema[] = {
    {1,
     "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL CHECK (n >= 0)) "
     "STRICT;"},
    {2, R"sql(
CREATE TABLE notes (item TEXT NOT NULL REFERENCES items (id), note TEXT NOT NULL) STRICT;
CREATE TRIGGER items_are_final BEFORE DELETE ON items
BEGIN SELECT RAISE(ABORT, 'items cannot be deleted'); END;
)sql"},
};

constexpr Migration kPostgresSchema[] = {
    {1, "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, n BIGINT NOT NULL CHECK (n >= 0))"},
    {2, R"sql(
CREATE TABLE notes (item TEXT NOT NULL REFERENCES items (id), note TEXT NOT NULL);
CREATE FUNCTION items_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'items cannot be deleted'; END $$;
CREATE TRIGGER items_are_final BEFORE DELETE ON items
FOR EACH ROW EXECUTE FUNCTION items_are_final();
)sql"},
};

class ContractTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kPostgres) {
      absl::StatusOr<testing::PostgresServer*> server = testing::SharedPostgresServer();
      ASSERT_TRUE(server.ok()) << server.status();
      server_ = *server;
      database_ = absl::AsciiStrToLower(NewId("db_"));
      ASSERT_TRUE(server_->CreateDatabase(database_).ok());
    }
  }

  absl::Span<const Migration> Schema() const {
    if (GetParam() == Backend::kPostgres) return kPostgresSchema;
    return kSqliteSchema;
  }

  std::unique_ptr<Connection> ConnectOrDie() {
    absl::StatusOr<std::unique_ptr<Connection>> db;
    if (GetParam() == Backend::kPostgres) {
      PostgresOptions o;
      o.owner = "test store";
      o.conninfo = server_->ConnectionString(database_);
      o.password_file = server_->password_file();
      db = Postgres::Connect(o);
    } else {
      SqliteOptions o;
      o.owner = "test store";
      o.file_kind = "test database";
      db = Sqlite::Open(dir_.Join("test.db"), o);
    }
    EXPECT_TRUE(db.ok()) << db.status();
    return db.ok() ? std::move(*db) : nullptr;
  }

  std::unique_ptr<Connection> ConnectMigrated() {
    auto db = ConnectOrDie();
    if (db == nullptr) return nullptr;
    const absl::Status migrated = Migrate(*db, Schema());
    EXPECT_TRUE(migrated.ok()) << migrated;
    return db;
  }

  static absl::Status Insert(Connection& db, const std::string& id, int64_t n) {
    absl::StatusOr<Statement> insert =
        db.Prepare("INSERT INTO items (id, n) VALUES (?, ?)", "insert an item");
    if (!insert.ok()) return insert.status();
    insert->BindText(1, id);
    insert->BindInt(2, n);
    return insert->Run();
  }

  testing::TempDir dir_;
  testing::PostgresServer* server_ = nullptr;  // on PostgreSQL
  std::string database_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ContractTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& backend) {
                           return backend.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

TEST_P(ContractTest, ErrorsMapToTheLayersCodesAndNeverCarryABoundValue) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(Insert(*db, "item-1", 1).ok());

  const absl::Status duplicate = Insert(*db, "item-1", 2);
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_THAT(std::string(duplicate.message()), StartsWith("test store: insert an item: "));
  EXPECT_THAT(std::string(duplicate.message()), Not(HasSubstr("item-1")));

  absl::StatusOr<Statement> orphan =
      db->Prepare("INSERT INTO notes (item, note) VALUES (?, ?)", "insert a note");
  ASSERT_TRUE(orphan.ok());
  orphan->BindText(1, "no-such-item");
  orphan->BindText(2, "a secret note");
  const absl::Status foreign = orphan->Run();
  EXPECT_EQ(foreign.code(), absl::StatusCode::kFailedPrecondition) << foreign;
  EXPECT_THAT(std::string(foreign.message()), Not(HasSubstr("no-such-item")));
  EXPECT_THAT(std::string(foreign.message()), Not(HasSubstr("secret")));

  const absl::Status trigger = db->Run("DELETE FROM items", "delete items");
  EXPECT_EQ(trigger.code(), absl::StatusCode::kFailedPrecondition) << trigger;
  EXPECT_THAT(std::string(trigger.message()), HasSubstr("items cannot be deleted"));

  const absl::Status refused = Insert(*db, "item-2", -7);  // CHECK (n >= 0)
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("-7")));

  absl::StatusOr<Statement> not_null =
      db->Prepare("INSERT INTO items (id, n) VALUES (?, NULL)", "insert without n");
  ASSERT_TRUE(not_null.ok());
  not_null->BindText(1, "item-3");
  EXPECT_EQ(not_null->Run().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(db->Run("SELEC nonsense", "parse").code(), absl::StatusCode::kInternal);
}

TEST_P(ContractTest, ATransactionNotCommittedIsRolledBack) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  {
    absl::StatusOr<Transaction> txn = Transaction::Begin(*db, Transaction::Mode::kImmediate);
    ASSERT_TRUE(txn.ok()) << txn.status();
    ASSERT_TRUE(Insert(*db, "dropped", 1).ok());
    EXPECT_TRUE(db->InTransaction());
  }
  EXPECT_FALSE(db->InTransaction());
  EXPECT_EQ(*db->QueryText("SELECT count(*) FROM items", "count"), "0");
  {
    absl::StatusOr<Transaction> txn = Transaction::Begin(*db, Transaction::Mode::kImmediate);
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(Insert(*db, "kept", 1).ok());
    ASSERT_TRUE(txn->Commit().ok());
  }
  EXPECT_EQ(*db->QueryText("SELECT count(*) FROM items", "count"), "1");
  // A statement that failed inside a transaction: the destructor rolls back
  // (on PostgreSQL nothing but a rollback is accepted after it).
  {
    absl::StatusOr<Transaction> txn = Transaction::Begin(*db, Transaction::Mode::kImmediate);
    ASSERT_TRUE(txn.ok());
    EXPECT_FALSE(Insert(*db, "kept", 2).ok());
  }
  EXPECT_FALSE(db->InTransaction());
  EXPECT_TRUE(Insert(*db, "after", 3).ok());
}

TEST_P(ContractTest, StatementsRunAgainAfterResetAndCountWhatTheyChanged) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  absl::StatusOr<Statement> insert =
      db->Prepare("INSERT INTO items (id, n) VALUES (?, ?)", "insert");
  ASSERT_TRUE(insert.ok());
  for (int i = 0; i < 3; ++i) {
    insert->Reset();
    insert->BindText(1, absl::StrCat("item-", i));
    insert->BindInt(2, i);
    ASSERT_TRUE(insert->Run().ok());
    EXPECT_EQ(db->Changes(), 1u);
  }
  ASSERT_TRUE(db->Run("UPDATE items SET n = n + 1", "bump").ok());
  EXPECT_EQ(db->Changes(), 3u);
  absl::StatusOr<Statement> read =
      db->Prepare("SELECT id, n FROM items WHERE n >= ? ORDER BY id", "read");
  ASSERT_TRUE(read.ok());
  read->BindInt(1, 2);
  ASSERT_TRUE(*read->Step());
  EXPECT_EQ(read->Text(0), "item-1");
  EXPECT_EQ(read->Int(1), 2);
  ASSERT_TRUE(*read->Step());
  EXPECT_EQ(read->Text(0), "item-2");
  EXPECT_FALSE(*read->Step());
}

TEST_P(ContractTest, ABindErrorIsReportedByTheNextStep) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  absl::StatusOr<Statement> insert = db->Prepare("INSERT INTO items (id, n) VALUES (?, ?)", "bind");
  ASSERT_TRUE(insert.ok());
  insert->BindText(1, "a");
  insert->BindInt(2, 1);
  insert->BindInt(3, 7);  // no third parameter
  EXPECT_EQ(insert->Run().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*db->QueryText("SELECT count(*) FROM items", "count"), "0");
}

TEST_P(ContractTest, TimesRoundTripAndTheInfinitiesSaturate) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  const absl::Time t = absl::FromUnixMicros(1764720000123456);
  for (const absl::Time value : {t, absl::InfiniteFuture(), absl::InfinitePast()}) {
    absl::StatusOr<Statement> echo = db->Prepare("SELECT CAST(? AS BIGINT)", "echo a time");
    ASSERT_TRUE(echo.ok());
    echo->BindTime(1, value);
    ASSERT_TRUE(*echo->Step());
    EXPECT_EQ(echo->Time(0), value);
  }
  absl::StatusOr<Statement> none = db->Prepare("SELECT CAST(? AS BIGINT)", "echo no time");
  ASSERT_TRUE(none.ok());
  none->BindOptionalTime(1, std::nullopt);
  ASSERT_TRUE(*none->Step());
  EXPECT_EQ(none->OptionalTime(0), std::nullopt);
}

TEST_P(ContractTest, MigrationsApplyOnceAndANewerOrGappedSchemaIsRefused) {
  {
    auto db = ConnectMigrated();
    ASSERT_NE(db, nullptr);
    EXPECT_EQ(*db->QueryText("SELECT max(version) FROM schema_migrations", "newest"), "2");
    ASSERT_TRUE(Migrate(*db, Schema()).ok());  // again: nothing to do
    EXPECT_EQ(*db->QueryText("SELECT count(*) FROM schema_migrations", "count"), "2");
  }
  auto db = ConnectOrDie();
  ASSERT_NE(db, nullptr);
  // An older build knows only the first migration.
  const absl::Status older = Migrate(*db, Schema().subspan(0, 1));
  EXPECT_EQ(older.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(older.message()),
              HasSubstr("has schema version 2, newer than version 1"));
  ASSERT_TRUE(db->Run("DELETE FROM schema_migrations WHERE version = 1", "forget one").ok());
  const absl::Status gapped = Migrate(*db, Schema());
  EXPECT_EQ(gapped.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(gapped.message()), HasSubstr("inconsistent"));
}

TEST_P(ContractTest, AFailingMigrationLeavesTheSchemaAsItWas) {
  constexpr Migration kBroken[] = {
      {1, "CREATE TABLE a (x INTEGER)"},
      {2, "CREATE TABLE b (x INTEGER); CREATE TABLE a (y INTEGER)"},
  };
  auto db = ConnectOrDie();
  ASSERT_NE(db, nullptr);
  EXPECT_FALSE(Migrate(*db, kBroken).ok());
  EXPECT_EQ(*db->QueryText("SELECT max(version) FROM schema_migrations", "newest"), "1");
  EXPECT_FALSE(db->QueryText("SELECT count(*) FROM b", "read b").ok());  // never created
}

}  // namespace
}  // namespace grantvault::db
