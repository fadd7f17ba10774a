// What only the PostgreSQL backend (db/postgres.h) has, against a real server
// that the test starts (Debian's PostgreSQL, a new cluster on a loopback
// port): parameter numbering, SQLSTATEs, a password file, binary values,
// serialisation failures, hosts migrating together, a lost connection and a
// reconnect. The contract both backends keep is in contract_test.cc.
#include "db/postgres.h"

#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/files.h"
#include "common/ids.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

testing::PostgresServer* server = nullptr;  // the process's shared server (SetUp)

constexpr Migration kSchema[] = {
    {1, "CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL, n BIGINT NOT NULL, data BYTEA)"},
    {2, R"sql(
CREATE TABLE notes (item TEXT NOT NULL REFERENCES items (id), note TEXT NOT NULL);
CREATE FUNCTION items_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'items cannot be deleted'; END $$;
CREATE TRIGGER items_are_final BEFORE DELETE ON items
FOR EACH ROW EXECUTE FUNCTION items_are_final();
)sql"},
};

class PostgresTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::PostgresServer*> shared = testing::SharedPostgresServer();
    ASSERT_TRUE(shared.ok()) << shared.status();
    server = *shared;
    database_ = absl::AsciiStrToLower(NewId("t_"));
    ASSERT_TRUE(server->CreateDatabase(database_).ok());
  }

  PostgresOptions Options() const {
    PostgresOptions o;
    o.owner = "test store";
    o.conninfo = server->ConnectionString(database_);
    o.password_file = server->password_file();
    return o;
  }
  std::unique_ptr<Postgres> ConnectOrDie() {
    absl::StatusOr<std::unique_ptr<Postgres>> db = Postgres::Connect(Options());
    EXPECT_TRUE(db.ok()) << db.status();
    return db.ok() ? std::move(*db) : nullptr;
  }
  std::unique_ptr<Postgres> ConnectMigrated() {
    auto db = ConnectOrDie();
    if (db == nullptr) return nullptr;
    absl::Status migrated = Migrate(*db, kSchema);
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

  std::string database_;
};

TEST(NumberParametersTest, NumbersQuestionMarksOutsideLiteralsNamesAndComments) {
  int count = 0;
  EXPECT_EQ(NumberParameters("SELECT ?, '?', \"a?\" -- ?\n, ? /* ? */ FROM t WHERE x = ?", count),
            "SELECT $1, '?', \"a?\" -- ?\n, $2 /* ? */ FROM t WHERE x = $3");
  EXPECT_EQ(count, 3);
  EXPECT_EQ(NumberParameters("SELECT 'it''s ?'", count), "SELECT 'it''s ?'");
  EXPECT_EQ(count, 0);
  EXPECT_EQ(NumberParameters("SELECT ?1 WHERE a = ?1 OR b = ?2", count),
            "SELECT $1 WHERE a = $1 OR b = $2");
  EXPECT_EQ(count, 2);
}

TEST(CodeForSqlStateTest, MapsTheStatesCallersActOn) {
  EXPECT_EQ(CodeForSqlState("23505"), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CodeForSqlState("23503"), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeForSqlState("P0001"), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CodeForSqlState("23502"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeForSqlState("22P02"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeForSqlState("53100"), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeForSqlState("40001"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("40P01"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("57P01"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("08006"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("25006"), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeForSqlState("XX001"), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CodeForSqlState("42601"), absl::StatusCode::kInternal);
}

TEST_F(PostgresTest, ConnectsWithThePasswordFromAFileAndRefusesAWrongOne) {
  auto db = ConnectOrDie();
  ASSERT_NE(db, nullptr);
  EXPECT_TRUE(db->Healthy());
  EXPECT_EQ(*db->ExecForTesting("SELECT current_database()"), database_);

  testing::TempDir dir;
  const std::string wrong = dir.Join("wrong");
  ASSERT_TRUE(WriteFileAtomically(wrong, "not-the-password\n", 0600).ok());
  PostgresOptions o = Options();
  o.password_file = wrong;
  absl::StatusOr<std::unique_ptr<Postgres>> refused = Postgres::Connect(o);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("password authentication"));
  EXPECT_THAT(std::string(refused.status().message()), Not(HasSubstr("not-the-password")));

  // The rules of every secret file (ReadSecretFile), and one line.
  o.password_file = dir.Join("missing");
  EXPECT_EQ(Postgres::Connect(o).status().code(), absl::StatusCode::kNotFound);
  const std::string readable = dir.Join("readable");
  ASSERT_TRUE(WriteFileAtomically(readable, server->password(), 0644).ok());
  o.password_file = readable;
  EXPECT_EQ(Postgres::Connect(o).status().code(), absl::StatusCode::kPermissionDenied);
  const std::string two_lines = dir.Join("two-lines");
  ASSERT_TRUE(WriteFileAtomically(two_lines, "a\nb\n", 0600).ok());
  o.password_file = two_lines;
  EXPECT_EQ(Postgres::Connect(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(PostgresTest, ValuesRoundTripWithBlobsInBinaryAndIntegersOfEveryWidth) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  const std::vector<uint8_t> blob = {0, 1, 2, 0xff, 0, '\\', 'x'};
  absl::StatusOr<Statement> insert =
      db->Prepare("INSERT INTO items (id, n, data) VALUES (?, ?, ?)", "insert");
  ASSERT_TRUE(insert.ok());
  insert->BindText(1, "blob");
  insert->BindInt(2, -1234567890123);
  insert->BindBlob(3, blob);
  ASSERT_TRUE(insert->Run().ok());
  EXPECT_EQ(db->Changes(), 1u);

  absl::StatusOr<Statement> read = db->Prepare(
      "SELECT n, data, id, 5, true, CAST(7 AS SMALLINT) FROM items WHERE id = ?", "read back");
  ASSERT_TRUE(read.ok());
  read->BindText(1, "blob");
  ASSERT_TRUE(*read->Step());
  EXPECT_EQ(read->Int(0), -1234567890123);
  EXPECT_EQ(read->Blob(1), blob);
  EXPECT_EQ(read->Text(2), "blob");
  EXPECT_EQ(read->Int(3), 5);
  EXPECT_EQ(read->Int(4), 1);
  EXPECT_EQ(read->Int(5), 7);
  EXPECT_FALSE(*read->Step());
}

TEST_F(PostgresTest, ConcurrentSerializableWritesOneFailsUnavailableToBeRetried) {
  auto a = ConnectMigrated();
  auto b = ConnectOrDie();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(Insert(*a, "counter", 0).ok());
  absl::StatusOr<Transaction> ta = Transaction::Begin(*a, Transaction::Mode::kImmediate);
  absl::StatusOr<Transaction> tb = Transaction::Begin(*b, Transaction::Mode::kImmediate);
  ASSERT_TRUE(ta.ok() && tb.ok());
  // Both read, then both write what they read: the second to commit loses.
  ASSERT_EQ(*a->ExecForTesting("SELECT n FROM items WHERE id = 'counter'"), "0");
  ASSERT_EQ(*b->ExecForTesting("SELECT n FROM items WHERE id = 'counter'"), "0");
  ASSERT_TRUE(a->Run("UPDATE items SET n = 1 WHERE id = 'counter'", "write a").ok());
  ASSERT_TRUE(ta->Commit().ok());
  absl::Status second = b->Run("UPDATE items SET n = 1 WHERE id = 'counter'", "write b");
  if (second.ok()) second = tb->Commit();
  EXPECT_EQ(second.code(), absl::StatusCode::kUnavailable) << second;
}

TEST_F(PostgresTest, TwoHostsMigratingAtOnceApplyEachMigrationOnce) {
  auto a = ConnectOrDie();
  auto b = ConnectOrDie();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  absl::Status from_b;
  std::thread other([&] { from_b = Migrate(*b, kSchema); });
  const absl::Status from_a = Migrate(*a, kSchema);
  other.join();
  EXPECT_TRUE(from_a.ok()) << from_a;
  EXPECT_TRUE(from_b.ok()) << from_b;
  EXPECT_EQ(*a->ExecForTesting("SELECT count(*) FROM schema_migrations"), "2");
}

TEST_F(PostgresTest, ALostConnectionIsUnavailableAndReconnectWorksWhenTheServerIsBack) {
  auto db = ConnectMigrated();
  ASSERT_NE(db, nullptr);
  ASSERT_TRUE(Insert(*db, "before", 1).ok());
  ASSERT_TRUE(server->Stop().ok());
  const absl::Status lost = Insert(*db, "during", 2);
  EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable) << lost;
  EXPECT_FALSE(db->Healthy());
  EXPECT_EQ(db->Reconnect().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server->StartAgain().ok()) << server->Log();
  ASSERT_TRUE(db->Reconnect().ok());
  EXPECT_TRUE(Insert(*db, "after", 3).ok());
  EXPECT_EQ(*db->ExecForTesting("SELECT string_agg(id, ',' ORDER BY id) FROM items"),
            "after,before");
}

TEST(ConninfoTest, AServerOffThisHostWithoutVerifiedTlsIsAWeakness) {
  EXPECT_EQ(ConninfoWeakness("host=/run/postgresql dbname=gv"), "");
  EXPECT_EQ(ConninfoWeakness("host=127.0.0.1 port=5432"), "");
  EXPECT_EQ(ConninfoWeakness("host=db.example sslmode=verify-full sslrootcert=/ca.pem"), "");
  EXPECT_THAT(ConninfoWeakness("host=db.example"), HasSubstr("sslmode=prefer (the default)"));
  EXPECT_THAT(ConninfoWeakness("postgresql://gv@db.example/gv?sslmode=require"),
              HasSubstr("sslmode=require"));
  EXPECT_TRUE(CheckConninfo("postgresql://gv@db.example/gv").ok());
  EXPECT_EQ(CheckConninfo("password=x host=db").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace grantvault::db
