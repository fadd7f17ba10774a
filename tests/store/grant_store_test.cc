#include "store/grant_store.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/ids.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/grant_change_feed.h"
#include "store/postgres_grant_store.h"
#include "store/sqlite_grant_store.h"
#include "store/sqlite_grant_store_internal.h"
#include "tests/testing/postgres_server.h"
#include "tests/testing/wait.h"

namespace grantvault::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

absl::Status StatusOf(const absl::Status& status) { return status; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// OK, or the status in the failure message.
MATCHER(IsOk, "is OK") {
  const absl::Status status = StatusOf(arg);
  *result_listener << status;
  return status.ok();
}

// A time with whole microseconds, as the store keeps them.
absl::Time At(int64_t seconds) { return absl::FromUnixSeconds(1'700'000'000 + seconds); }

std::vector<uint8_t> Record(std::string_view text) {
  return std::vector<uint8_t>(text.begin(), text.end());
}

// A second, independent connection to the database file, to look at what the
// store wrote the way another process would.
struct RawCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using RawDb = std::unique_ptr<sqlite3, RawCloser>;

RawDb OpenRaw(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  RawDb owner(db);
  EXPECT_EQ(rc, SQLITE_OK) << sqlite3_errstr(rc);
  sqlite3_busy_timeout(db, 5000);
  return owner;
}

int RawExec(sqlite3* db, const std::string& sql) {
  return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
}

std::vector<std::vector<std::string>> RawQuery(sqlite3* db, const std::string& sql) {
  std::vector<std::vector<std::string>> rows;
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr);
  std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> stmt(raw, &sqlite3_finalize);
  EXPECT_EQ(rc, SQLITE_OK) << sqlite3_errmsg(db);
  if (rc != SQLITE_OK) return rows;
  while (sqlite3_step(stmt.get()) == SQLITE_ROW) {
    std::vector<std::string> row;
    for (int i = 0; i < sqlite3_column_count(stmt.get()); ++i) {
      const unsigned char* text = sqlite3_column_text(stmt.get(), i);
      row.emplace_back(text != nullptr ? reinterpret_cast<const char*>(text) : "NULL");
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

class SqliteGrantStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/grant_store_test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/grants.db";
  }

  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::unique_ptr<GrantStore> Open(const SqliteOptions& options = {}) {
    absl::StatusOr<std::unique_ptr<GrantStore>> store =
        postgres_database_.empty() ? OpenSqliteGrantStore(path_, options)
                                   : OpenPostgresGrantStore(PostgresOptions());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  db::PostgresOptions PostgresOptions() const {
    db::PostgresOptions o;
    o.conninfo = postgres_->ConnectionString(postgres_database_);
    o.password_file = postgres_->password_file();
    return o;
  }

  // A store with key versions 1 (active) and 2 (inactive).
  std::unique_ptr<GrantStore> OpenWithKeys() {
    std::unique_ptr<GrantStore> store = Open();
    if (store == nullptr) return nullptr;
    EXPECT_THAT(store->AddKeyVersion(Key(1, KeyState::kActive)), IsOk());
    EXPECT_THAT(store->AddKeyVersion(Key(2, KeyState::kInactive)), IsOk());
    return store;
  }

  static KeyVersion Key(int version, KeyState state) {
    KeyVersion key;
    key.version = version;
    key.label = Label(version);
    key.key_id_hex = absl::StrCat("0a0b0c", version);
    key.state = state;
    key.created_at = At(version);
    return key;
  }

  static std::string Label(int version) { return absl::StrCat("grantvault-kek-", version); }

  static Grant MakeGrant(std::string id, std::string workspace, std::string connector,
                         absl::Time created = At(100)) {
    Grant grant;
    grant.grant_id = std::move(id);
    grant.workspace_id = std::move(workspace);
    grant.connector_id = std::move(connector);
    grant.connector_type = "google";
    grant.account_id = "acct-" + grant.grant_id;
    grant.scopes = {"openid", "https://www.googleapis.com/auth/gmail.readonly", "email"};
    grant.authorized_by = "admin@example.com";
    grant.created_at = created;
    grant.updated_at = created;
    grant.access_token_expires_at = created + absl::Hours(1);
    grant.metadata = {{"tenant", "example.com"}, {"instance_url", "https://example.test"}};
    return grant;
  }

  static SealedSecret SecretFor(const Grant& grant, int kek = 1,
                                std::string_view record = "sealed-refresh") {
    SealedSecret secret;
    secret.key = {grant.grant_id, "refresh_token"};
    secret.workspace_id = grant.workspace_id;
    secret.connector_id = grant.connector_id;
    secret.account_id = grant.account_id;
    secret.kek_label = Label(kek);
    secret.record = Record(record);
    secret.updated_at = grant.updated_at;
    return secret;
  }

  static SealedSecret Secret(std::string owner, std::string purpose, int kek,
                             std::string_view record) {
    SealedSecret secret;
    secret.key = {std::move(owner), std::move(purpose)};
    secret.workspace_id = "ws1";
    secret.connector_id = "google_workspace";
    secret.account_id = "acct";
    secret.kek_label = Label(kek);
    secret.record = Record(record);
    secret.updated_at = At(7);
    return secret;
  }

  std::string dir_;
  std::string path_;
  testing::PostgresServer* postgres_ = nullptr;
  std::string postgres_database_;  // empty: the store is a SQLite file at path_
};

enum class Backend { kSqlite, kPostgres };

// The store's behaviour, the same on both backends: a SQLite file, and a
// PostgreSQL database of the test's own on a real server.
class GrantStoreTest : public SqliteGrantStoreTest, public ::testing::WithParamInterface<Backend> {
 protected:
  void SetUp() override {
    SqliteGrantStoreTest::SetUp();
    if (GetParam() != Backend::kPostgres) return;
    absl::StatusOr<testing::PostgresServer*> server = testing::SharedPostgresServer();
    ASSERT_TRUE(server.ok()) << server.status();
    postgres_ = *server;
    postgres_database_ = absl::AsciiStrToLower(NewId("store_"));
    ASSERT_TRUE(postgres_->CreateDatabase(postgres_database_).ok());
  }

  // A one-byte blob in the backend's SQL, for statements run below the store.
  static std::string OneByteBlob() {
    return GetParam() == Backend::kPostgres ? "'\\x01'::bytea" : "x'01'";
  }
};

// What only a server does: go away and come back.
class PostgresGrantStoreTest : public GrantStoreTest {};

INSTANTIATE_TEST_SUITE_P(Server, PostgresGrantStoreTest, ::testing::Values(Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>&) { return "Postgres"; });

INSTANTIATE_TEST_SUITE_P(Backends, GrantStoreTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& backend) {
                           return backend.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

// --- opening and migrations --------------------------------------------------

TEST_F(SqliteGrantStoreTest, MigratesEmptyFileWithDurableSettingsAndPrivateMode) {
  mode_t old_umask = ::umask(0);  // the store must not rely on the umask
  std::unique_ptr<GrantStore> store = Open();
  ::umask(old_umask);
  ASSERT_NE(store, nullptr);

  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600);
  // Write something so the write-ahead log exists, then check it is private too.
  ASSERT_THAT(store->AddKeyVersion(Key(1, KeyState::kActive)), IsOk());
  ASSERT_EQ(::stat((path_ + "-wal").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600);

  // synchronous and foreign_keys are per connection: ask the store's own.
  EXPECT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA synchronous"), "2");
  EXPECT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA foreign_keys"), "1");

  RawDb raw = OpenRaw(path_);
  std::vector<std::vector<std::string>> versions =
      RawQuery(raw.get(), "SELECT version FROM schema_migrations ORDER BY version");
  ASSERT_EQ(versions.size(), static_cast<size_t>(SqliteSchemaVersion()));
  for (int v = 1; v <= SqliteSchemaVersion(); ++v) {
    EXPECT_EQ(versions[static_cast<size_t>(v - 1)][0], std::to_string(v));
  }
  EXPECT_EQ(RawQuery(raw.get(), "PRAGMA journal_mode")[0][0], "wal");  // persistent
  std::vector<std::vector<std::string>> tables =
      RawQuery(raw.get(), "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name");
  std::vector<std::string> names;
  for (const auto& row : tables) names.push_back(row[0]);
  EXPECT_THAT(names,
              ElementsAre("authorization_sessions", "connector_api_bases", "connector_parameters",
                          "connector_redirect_uris", "connector_registrations", "grant_metadata",
                          "grant_scopes", "grants", "key_versions", "schema_migrations",
                          "sealed_secrets", "upstream_revocations"));
}

TEST_F(SqliteGrantStoreTest, ReopeningKeepsDataAndAppliesNothingTwice) {
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  std::vector<std::vector<std::string>> migrations_before;
  {
    std::unique_ptr<GrantStore> store = OpenWithKeys();
    ASSERT_NE(store, nullptr);
    ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
    RawDb raw = OpenRaw(path_);
    migrations_before = RawQuery(raw.get(), "SELECT * FROM schema_migrations ORDER BY version");
  }
  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->GetGrant("gr_1"), grant);
  EXPECT_EQ(*store->GetSealedSecret({"gr_1", "refresh_token"}), SecretFor(grant));
  EXPECT_EQ(store->ListKeyVersions()->size(), 2u);
  RawDb raw = OpenRaw(path_);
  EXPECT_EQ(RawQuery(raw.get(), "SELECT * FROM schema_migrations ORDER BY version"),
            migrations_before);
}

TEST_F(SqliteGrantStoreTest, RefusesDatabaseFromNewerBuild) {
  ASSERT_NE(Open(), nullptr);
  {
    RawDb raw = OpenRaw(path_);
    ASSERT_EQ(RawExec(raw.get(), absl::StrCat("INSERT INTO schema_migrations VALUES (",
                                              SqliteSchemaVersion() + 1, ", 0)")),
              SQLITE_OK);
  }
  absl::StatusOr<std::unique_ptr<GrantStore>> store = OpenSqliteGrantStore(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(store.status().message(),
              HasSubstr(absl::StrCat("has schema version ", SqliteSchemaVersion() + 1,
                                     ", newer than version ", SqliteSchemaVersion())));
}

TEST_F(SqliteGrantStoreTest, RefusesFileOthersCanRead) {
  { std::ofstream(path_) << ""; }
  ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);
  absl::StatusOr<std::unique_ptr<GrantStore>> store = OpenSqliteGrantStore(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(store.status().message(), HasSubstr("chmod 600"));
}

TEST_F(SqliteGrantStoreTest, RefusesSymlink) {
  ASSERT_EQ(::symlink((dir_ + "/elsewhere.db").c_str(), path_.c_str()), 0);
  absl::StatusOr<std::unique_ptr<GrantStore>> store = OpenSqliteGrantStore(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/elsewhere.db"));
}

TEST_F(SqliteGrantStoreTest, RefusesFileThatIsNotADatabase) {
  { std::ofstream(path_) << std::string(8192, 'x'); }
  ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
  absl::StatusOr<std::unique_ptr<GrantStore>> store = OpenSqliteGrantStore(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr("not a database"));
}

TEST_F(SqliteGrantStoreTest, ValidatesOptions) {
  EXPECT_EQ(OpenSqliteGrantStore("").status().code(), absl::StatusCode::kInvalidArgument);
  SqliteOptions options;
  options.busy_timeout_ms = -1;
  EXPECT_EQ(OpenSqliteGrantStore(path_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path_));
}

// --- grants ------------------------------------------------------------------

TEST_P(GrantStoreTest, InsertsAndReadsGrants) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant first = MakeGrant("gr_b", "ws1", "google_workspace", At(100));
  Grant second = MakeGrant("gr_a", "ws1", "slack", At(200));
  second.scopes = {"z", "a", "m"};  // order is kept, not sorted
  second.access_token_expires_at.reset();
  second.metadata.clear();
  Grant other_workspace = MakeGrant("gr_c", "ws2", "google_workspace", At(50));
  ASSERT_THAT(store->InsertGrant(second, SecretFor(second)), IsOk());
  ASSERT_THAT(store->InsertGrant(first, SecretFor(first)), IsOk());
  ASSERT_THAT(store->InsertGrant(other_workspace, SecretFor(other_workspace)), IsOk());

  EXPECT_EQ(*store->GetGrant("gr_b"), first);
  EXPECT_EQ(*store->GetGrant("gr_a"), second);
  EXPECT_EQ(store->GetGrant("gr_missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store->FindCurrentGrant("ws1", "slack"), second);
  EXPECT_EQ(store->FindCurrentGrant("ws1", "github").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(*store->ListGrants("ws1"), ElementsAre(first, second));  // oldest first
  EXPECT_THAT(*store->ListGrants("ws3"), IsEmpty());
  EXPECT_EQ(*store->CountGrants(), 3);
  EXPECT_EQ(*store->GetSealedSecret({"gr_a", "refresh_token"}), SecretFor(second));
}

TEST_P(GrantStoreTest, GrantStatusChangesAndRevokedIsFinal) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());

  ASSERT_TRUE(
      store->SetGrantStatus("gr_1", GrantStatus::kReauthRequired, "invalid_grant", At(300)).ok());
  absl::StatusOr<Grant> got = store->GetGrant("gr_1");
  EXPECT_EQ(got->status, GrantStatus::kReauthRequired);
  EXPECT_EQ(got->status_reason, "invalid_grant");
  EXPECT_EQ(got->updated_at, At(300));
  EXPECT_EQ(got->created_at, At(100));
  // Still the current grant while it waits for re-authorization.
  EXPECT_EQ(store->FindCurrentGrant("ws1", "google_workspace")->grant_id, "gr_1");

  ASSERT_THAT(store->SetGrantStatus("gr_1", GrantStatus::kActive, "", At(400)), IsOk());
  ASSERT_THAT(store->SetGrantStatus("gr_1", GrantStatus::kRevoked, "admin revoked", At(500)),
              IsOk());
  EXPECT_EQ(store->FindCurrentGrant("ws1", "google_workspace").status().code(),
            absl::StatusCode::kNotFound);

  for (GrantStatus status :
       {GrantStatus::kActive, GrantStatus::kReauthRequired, GrantStatus::kRevoked}) {
    absl::Status s = store->SetGrantStatus("gr_1", status, "again", At(600));
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  got = store->GetGrant("gr_1");
  EXPECT_EQ(got->status, GrantStatus::kRevoked);
  EXPECT_EQ(got->status_reason, "admin revoked");
  EXPECT_EQ(store->SetGrantStatus("gr_none", GrantStatus::kRevoked, "", At(1)).code(),
            absl::StatusCode::kNotFound);

  // The database itself refuses to bring a revoked grant back.
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store, "UPDATE grants SET status = 'active' WHERE grant_id = 'gr_1'");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(raw.status().message(), HasSubstr("a revoked grant cannot change status"));
}

TEST_P(GrantStoreTest, RevokeGrantRecordsThePendingUpstreamRevocationInOneStep) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
  EXPECT_TRUE(absl::IsNotFound(store->GetUpstreamRevocation("gr_1").status()));

  ASSERT_THAT(store->RevokeGrant("gr_1", "revoked by alice: offboarding", At(200)), IsOk());
  absl::StatusOr<Grant> got = store->GetGrant("gr_1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->status, GrantStatus::kRevoked);
  EXPECT_EQ(got->status_reason, "revoked by alice: offboarding");
  absl::StatusOr<UpstreamRevocation> pending = store->GetUpstreamRevocation("gr_1");
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_EQ(pending->state, UpstreamRevocationState::kPending);
  EXPECT_EQ(pending->attempts, 0);
  EXPECT_EQ(pending->next_attempt_at, At(200));
  EXPECT_EQ(store->ListPendingUpstreamRevocations()->size(), 1u);
  // Revoked is final: a second revocation is refused and changes nothing.
  EXPECT_TRUE(absl::IsFailedPrecondition(store->RevokeGrant("gr_1", "again", At(300))));
  EXPECT_TRUE(absl::IsNotFound(store->RevokeGrant("gr_nope", "x", At(300))));

  // A failed attempt, then success: the state survives reopening.
  UpstreamRevocation failed = *pending;
  failed.attempts = 1;
  failed.last_error = "HTTP 503";
  failed.next_attempt_at = At(260);
  failed.updated_at = At(250);
  ASSERT_THAT(store->PutUpstreamRevocation(failed), IsOk());
  EXPECT_EQ(*store->GetUpstreamRevocation("gr_1"), failed);
  UpstreamRevocation done = failed;
  done.state = UpstreamRevocationState::kRevoked;
  done.attempts = 2;
  done.last_error.clear();
  ASSERT_THAT(store->PutUpstreamRevocation(done), IsOk());
  store.reset();
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->GetUpstreamRevocation("gr_1"), done);
  EXPECT_TRUE(store->ListPendingUpstreamRevocations()->empty());
}

TEST_P(GrantStoreTest, RecordsTheAccessTokenExpiryButNotOfARevokedGrant) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  grant.access_token_expires_at.reset();
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
  ASSERT_TRUE(
      store->SetGrantStatus("gr_1", GrantStatus::kReauthRequired, "invalid_grant", At(150)).ok());

  ASSERT_THAT(store->SetAccessTokenExpiry("gr_1", At(3800), At(200)), IsOk());
  absl::StatusOr<Grant> got = store->GetGrant("gr_1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->access_token_expires_at, At(3800));
  EXPECT_EQ(got->updated_at, At(200));
  // The status and its reason are untouched.
  EXPECT_EQ(got->status, GrantStatus::kReauthRequired);
  EXPECT_EQ(got->status_reason, "invalid_grant");
  EXPECT_EQ(got->created_at, At(100));

  // A second refresh moves it on; the value survives reopening.
  ASSERT_THAT(store->SetAccessTokenExpiry("gr_1", At(7400), At(3700)), IsOk());
  store.reset();
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->GetGrant("gr_1")->access_token_expires_at, At(7400));

  EXPECT_EQ(store->SetAccessTokenExpiry("gr_none", At(1), At(1)).code(),
            absl::StatusCode::kNotFound);
  ASSERT_THAT(store->SetGrantStatus("gr_1", GrantStatus::kRevoked, "admin revoked", At(8000)),
              IsOk());
  absl::Status refused = store->SetAccessTokenExpiry("gr_1", At(9999), At(8100));
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  got = store->GetGrant("gr_1");
  EXPECT_EQ(got->access_token_expires_at, At(7400));
  EXPECT_EQ(got->updated_at, At(8000));
  EXPECT_EQ(got->status, GrantStatus::kRevoked);
}

TEST_P(GrantStoreTest, OneCurrentGrantPerWorkspaceConnector) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant first = MakeGrant("gr_1", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(first, SecretFor(first)), IsOk());

  Grant rival = MakeGrant("gr_2", "ws1", "google_workspace");
  absl::Status s = store->InsertGrant(rival, SecretFor(rival));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr("already has current grant gr_1"));

  Grant same_id = MakeGrant("gr_1", "ws1", "slack");
  s = store->InsertGrant(same_id, SecretFor(same_id));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr("gr_1 is taken"));

  Grant other_connector = MakeGrant("gr_3", "ws1", "slack");
  EXPECT_THAT(store->InsertGrant(other_connector, SecretFor(other_connector)), IsOk());
  Grant other_workspace = MakeGrant("gr_4", "ws2", "google_workspace");
  EXPECT_THAT(store->InsertGrant(other_workspace, SecretFor(other_workspace)), IsOk());

  // The partial unique index enforces it below the API too.
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store,
      "INSERT INTO grants VALUES ('gr_x', 'ws1', 'google_workspace', 'google', 'a', 'active', '', "
      "'admin', 0, 0, NULL, NULL)");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kAlreadyExists);

  // Once revoked, the connector can be authorized afresh.
  ASSERT_THAT(store->SetGrantStatus("gr_1", GrantStatus::kRevoked, "admin", At(200)), IsOk());
  EXPECT_THAT(store->InsertGrant(rival, SecretFor(rival)), IsOk());
  EXPECT_EQ(*store->CountGrants(), 4);
  EXPECT_EQ(store->GetSealedSecret({"gr_2", "refresh_token"}).status().code(),
            absl::StatusCode::kOk);
}

TEST_P(GrantStoreTest, ReplacesRevokesTheOldGrantInTheSameTransaction) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant old_grant = MakeGrant("gr_old", "ws1", "google_workspace", At(100));
  ASSERT_THAT(store->InsertGrant(old_grant, SecretFor(old_grant)), IsOk());

  Grant successor = MakeGrant("gr_new", "ws1", "google_workspace", At(200));
  successor.scopes = {"openid"};
  ASSERT_THAT(store->InsertGrant(successor, SecretFor(successor), "gr_old"), IsOk());

  absl::StatusOr<Grant> old_now = store->GetGrant("gr_old");
  EXPECT_EQ(old_now->status, GrantStatus::kRevoked);
  EXPECT_EQ(old_now->status_reason, "replaced by gr_new");
  EXPECT_EQ(old_now->updated_at, At(200));
  EXPECT_EQ(*store->FindCurrentGrant("ws1", "google_workspace"), successor);
  // The old grant's secret stays (to revoke it at the provider); the new one is stored.
  EXPECT_THAT(store->GetSealedSecret({"gr_old", "refresh_token"}), IsOk());
  EXPECT_THAT(store->GetSealedSecret({"gr_new", "refresh_token"}), IsOk());

  // Replacing a grant that does not exist writes nothing.
  Grant orphan = MakeGrant("gr_orphan", "ws1", "slack");
  absl::Status s = store->InsertGrant(orphan, SecretFor(orphan), "gr_missing");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetGrant("gr_orphan").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetSealedSecret({"gr_orphan", "refresh_token"}).status().code(),
            absl::StatusCode::kNotFound);

  // A revoked grant cannot be replaced (its status is final).
  Grant third = MakeGrant("gr_third", "ws1", "google_workspace", At(300));
  s = store->InsertGrant(third, SecretFor(third), "gr_old");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->GetGrant("gr_third").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetGrant("gr_old")->status_reason, "replaced by gr_new");

  // Nor can a grant of another connector.
  Grant slack = MakeGrant("gr_slack", "ws1", "slack", At(400));
  s = store->InsertGrant(slack, SecretFor(slack), "gr_new");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->GetGrant("gr_new")->status, GrantStatus::kActive);
}

TEST_P(GrantStoreTest, InsertGrantIsAtomicWhenTheSecretIsRefused) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant old_grant = MakeGrant("gr_old", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(old_grant, SecretFor(old_grant)), IsOk());
  Grant successor = MakeGrant("gr_new", "ws1", "google_workspace");
  absl::Status s = store->InsertGrant(successor, SecretFor(successor, /*kek=*/9), "gr_old");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->GetGrant("gr_new").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetGrant("gr_old")->status, GrantStatus::kActive);
}

TEST_P(GrantStoreTest, InsertGrantValidatesItsSecret) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  SealedSecret wrong_owner = SecretFor(grant);
  wrong_owner.key.owner_id = "gr_2";
  EXPECT_EQ(store->InsertGrant(grant, wrong_owner).code(), absl::StatusCode::kInvalidArgument);
  SealedSecret wrong_binding = SecretFor(grant);
  wrong_binding.account_id = "someone-else";
  EXPECT_EQ(store->InsertGrant(grant, wrong_binding).code(), absl::StatusCode::kInvalidArgument);
  SealedSecret empty = SecretFor(grant, 1, "");
  EXPECT_EQ(store->InsertGrant(grant, empty).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*store->CountGrants(), 0);
}

// --- sealed secrets ----------------------------------------------------------

TEST_P(GrantStoreTest, PutsGetsAndDeletesSealedSecrets) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  SealedSecret secret = Secret("reg_1", "client_secret", 1, std::string("a\0b\xff", 4));
  ASSERT_THAT(store->PutSealedSecret(secret), IsOk());
  EXPECT_EQ(*store->GetSealedSecret(secret.key), secret);

  SealedSecret rotated = Secret("reg_1", "client_secret", 2, "rotated");
  rotated.updated_at = At(8);
  ASSERT_THAT(store->PutSealedSecret(rotated), IsOk());
  EXPECT_EQ(*store->GetSealedSecret(secret.key), rotated);
  EXPECT_EQ(store->GetSealedSecret({"reg_1", "other"}).status().code(),
            absl::StatusCode::kNotFound);

  ASSERT_THAT(store->DeleteSealedSecret(secret.key), IsOk());
  EXPECT_EQ(store->GetSealedSecret(secret.key).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->DeleteSealedSecret(secret.key).code(), absl::StatusCode::kNotFound);
}

TEST_P(GrantStoreTest, RefusesSealedSecretUnderUnknownKek) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  absl::Status s = store->PutSealedSecret(Secret("reg_1", "client_secret", 7, "x"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("grantvault-kek-7"));
  EXPECT_EQ(store->GetSealedSecret({"reg_1", "client_secret"}).status().code(),
            absl::StatusCode::kNotFound);

  // The foreign key refuses it below the API too.
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store, absl::StrCat("INSERT INTO sealed_secrets VALUES ('o', 'p', 'w', 'c', 'a', "
                           "'grantvault-kek-7', ",
                           OneByteBlob(), ", 0)"));
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(absl::AsciiStrToLower(raw.status().message()), HasSubstr("foreign key"));
}

TEST_P(GrantStoreTest, ListSealedSecretsUnderVisitsEachRecordOnce) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  std::set<SealedSecretKey> expected;
  for (int i = 0; i < 23; ++i) {
    // Owners that share prefixes and several purposes per owner exercise the
    // (owner_id, purpose) row-value cursor.
    for (std::string purpose : {"access_token", "refresh_token"}) {
      std::string owner = absl::StrCat("gr_", i % 7, "_", i);
      SealedSecret s = Secret(owner, purpose, 1, absl::StrCat("r", i, purpose));
      ASSERT_THAT(store->PutSealedSecret(s), IsOk());
      expected.insert(s.key);
    }
    ASSERT_THAT(store->PutSealedSecret(Secret(absl::StrCat("other_", i), "x", 2, "o")), IsOk());
  }

  std::vector<SealedSecretKey> visited;
  std::optional<SealedSecretKey> cursor;
  int pages = 0;
  while (true) {
    absl::StatusOr<std::vector<SealedSecret>> page =
        store->ListSealedSecretsUnder(Label(1), cursor, 5);
    ASSERT_TRUE(page.ok()) << page.status();
    if (page->empty()) break;
    EXPECT_LE(page->size(), 5u);
    ++pages;
    for (const SealedSecret& s : *page) {
      EXPECT_EQ(s.kek_label, Label(1));
      visited.push_back(s.key);
    }
    cursor = page->back().key;
  }
  EXPECT_EQ(pages, 10);  // 46 records in pages of 5
  EXPECT_TRUE(std::is_sorted(visited.begin(), visited.end()));
  EXPECT_EQ(std::set<SealedSecretKey>(visited.begin(), visited.end()), expected);
  EXPECT_EQ(visited.size(), expected.size());

  EXPECT_THAT(*store->ListSealedSecretsUnder(Label(1), std::nullopt, 0), IsEmpty());
  EXPECT_EQ(store->ListSealedSecretsUnder(Label(2), std::nullopt, SIZE_MAX)->size(), 23u);
  EXPECT_THAT(*store->ListSealedSecretsUnder("grantvault-kek-9", std::nullopt, 10), IsEmpty());
}

// A refresh's rotated token, its marker's removal and the access token's
// expiry commit together, or (the row changed meanwhile) not at all.
TEST_P(GrantStoreTest, FinishRefreshSwapsRemovesTheMarkerAndRecordsTheExpiryTogether) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  grant.access_token_expires_at.reset();
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant, 1, "rt-v1")), IsOk());
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(100)), IsOk());
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(150)), IsOk());
  EXPECT_EQ(store->GetGrant("gr_1")->refresh_attempt_at, At(100)) << "the earliest is kept";
  EXPECT_EQ(store->MarkRefreshAttempt("gr_9", At(100)).code(), absl::StatusCode::kNotFound);

  // The row changed meanwhile (another rotation): nothing is written.
  const SealedSecretUpdate stale{
      {"gr_1", "refresh_token"}, Record("rt-v0"), Label(1), Record("rt-v2")};
  absl::StatusOr<bool> applied = store->FinishRefresh(stale, "gr_1", At(3800), At(200), Sync::kNow);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_FALSE(*applied);
  EXPECT_EQ(store->GetSealedSecret({"gr_1", "refresh_token"})->record, Record("rt-v1"));
  EXPECT_EQ(store->GetGrant("gr_1")->refresh_attempt_at, At(100)) << "the marker stays";
  EXPECT_FALSE(store->GetGrant("gr_1")->access_token_expires_at.has_value());

  const SealedSecretUpdate rotation{
      {"gr_1", "refresh_token"}, Record("rt-v1"), Label(1), Record("rt-v2")};
  applied = store->FinishRefresh(rotation, "gr_1", At(3800), At(200), Sync::kNow);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_TRUE(*applied);
  EXPECT_EQ(store->GetSealedSecret({"gr_1", "refresh_token"})->record, Record("rt-v2"));
  EXPECT_FALSE(store->GetGrant("gr_1")->refresh_attempt_at.has_value());
  EXPECT_EQ(store->GetGrant("gr_1")->access_token_expires_at, At(3800));

  // Without a rotation (the server kept the refresh token), and with no
  // marker left: the expiry is recorded; a revoked grant's is not.
  applied = store->FinishRefresh(std::nullopt, "gr_1", At(7400), At(300), Sync::kNow);
  ASSERT_TRUE(applied.ok() && *applied) << applied.status();
  EXPECT_EQ(store->GetGrant("gr_1")->access_token_expires_at, At(7400));
  ASSERT_THAT(store->RevokeGrant("gr_1", "revoked by alice", At(400)), IsOk());
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(450)), IsOk());
  applied = store->FinishRefresh(std::nullopt, "gr_1", At(9999), At(500), Sync::kNow);
  ASSERT_TRUE(applied.ok() && *applied) << applied.status();
  EXPECT_EQ(store->GetGrant("gr_1")->access_token_expires_at, At(7400));
  EXPECT_FALSE(store->GetGrant("gr_1")->refresh_attempt_at.has_value()) << "cleared all the same";
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(600)), IsOk());
  ASSERT_THAT(store->ClearRefreshAttempt("gr_1"), IsOk());
  EXPECT_FALSE(store->GetGrant("gr_1")->refresh_attempt_at.has_value());
}

// Unsynced writes (Sync::kLater): another connection reads them at once, they
// survive the death of the writing process before anything synced them, and
// the connection commits synchronously again afterwards. (What a power cut
// does to them cannot be shown here: docs/refresh.md, "Durability".)
TEST_F(SqliteGrantStoreTest, UnsyncedWritesAreVisibleAndSurviveTheWritersDeath) {
  {
    std::unique_ptr<GrantStore> store = OpenWithKeys();
    ASSERT_NE(store, nullptr);
    Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
    ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant, 1, "rt-v1")), IsOk());
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The writer: both unsynced writes of a refresh, then killed before any
    // sync and before the store is closed.
    absl::StatusOr<std::unique_ptr<GrantStore>> store = OpenSqliteGrantStore(path_, {});
    if (!store.ok() || !(*store)->MarkRefreshAttempt("gr_1", At(150)).ok()) ::_exit(2);
    if (*internal::ExecuteSqlForTesting(**store, "PRAGMA synchronous") != "2") ::_exit(3);
    const SealedSecretUpdate rotation{
        {"gr_1", "refresh_token"}, Record("rt-v1"), Label(1), Record("rt-v2")};
    absl::StatusOr<bool> applied =
        (*store)->FinishRefresh(rotation, "gr_1", At(3800), At(200), Sync::kLater);
    if (!applied.ok() || !*applied) ::_exit(4);
    if (*internal::ExecuteSqlForTesting(**store, "PRAGMA synchronous") != "2") ::_exit(5);
    ::kill(::getpid(), SIGKILL);
    ::_exit(6);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the writer failed before its death: exit " << WEXITSTATUS(status);

  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->GetSealedSecret({"gr_1", "refresh_token"})->record, Record("rt-v2"));
  EXPECT_FALSE(store->GetGrant("gr_1")->refresh_attempt_at.has_value());
  EXPECT_EQ(store->GetGrant("gr_1")->access_token_expires_at, At(3800));

  // The marker alone, before the request it stands for, survives too.
  const pid_t marker_writer = ::fork();
  ASSERT_GE(marker_writer, 0);
  if (marker_writer == 0) {
    absl::StatusOr<std::unique_ptr<GrantStore>> writer = OpenSqliteGrantStore(path_, {});
    if (!writer.ok() || !(*writer)->MarkRefreshAttempt("gr_1", At(300)).ok()) ::_exit(2);
    ::kill(::getpid(), SIGKILL);
    ::_exit(6);
  }
  ASSERT_EQ(::waitpid(marker_writer, &status, 0), marker_writer);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_EQ(store->GetGrant("gr_1")->refresh_attempt_at, At(300));
  ASSERT_THAT(store->ClearRefreshAttempt("gr_1"), IsOk());

  // Visible to another connection before any sync, and synced on request.
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(4000)), IsOk());
  std::unique_ptr<GrantStore> reader = Open();
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->GetGrant("gr_1")->refresh_attempt_at, At(4000));
  EXPECT_THAT(store->SyncToDisk(), IsOk());
  EXPECT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA synchronous"), "2");
}

TEST_P(GrantStoreTest, ReplaceSealedSecretsAppliesOnlyMatchingRows) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ASSERT_THAT(store->PutSealedSecret(Secret("a", "refresh_token", 1, "a-v1")), IsOk());
  ASSERT_THAT(store->PutSealedSecret(Secret("b", "refresh_token", 1, "b-v1")), IsOk());
  ASSERT_THAT(store->PutSealedSecret(Secret("c", "refresh_token", 1, "c-v2")), IsOk());

  std::vector<SealedSecretUpdate> updates = {
      {{"a", "refresh_token"}, Record("a-v1"), Label(2), Record("a-rewrapped")},
      {{"b", "refresh_token"}, Record("b-v1"), Label(2), Record("b-rewrapped")},
      // Rotated meanwhile: the rewrap of the old value must not overwrite it.
      {{"c", "refresh_token"}, Record("c-v1"), Label(2), Record("c-rewrapped")},
      // Deleted meanwhile.
      {{"d", "refresh_token"}, Record("d-v1"), Label(2), Record("d-rewrapped")},
  };
  absl::StatusOr<size_t> applied = store->ReplaceSealedSecrets(updates);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 2u);

  absl::StatusOr<SealedSecret> a = store->GetSealedSecret({"a", "refresh_token"});
  EXPECT_EQ(a->record, Record("a-rewrapped"));
  EXPECT_EQ(a->kek_label, Label(2));
  EXPECT_EQ(a->workspace_id, "ws1");  // the binding is untouched
  absl::StatusOr<SealedSecret> c = store->GetSealedSecret({"c", "refresh_token"});
  EXPECT_EQ(c->record, Record("c-v2"));
  EXPECT_EQ(c->kek_label, Label(1));
  EXPECT_EQ(store->GetSealedSecret({"d", "refresh_token"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(*store->ReplaceSealedSecrets({}), 0u);

  // All or nothing: one update naming an unknown key version refuses the batch.
  std::vector<SealedSecretUpdate> mixed = {
      {{"c", "refresh_token"}, Record("c-v2"), Label(2), Record("c-rewrapped")},
      {{"a", "refresh_token"}, Record("a-rewrapped"), "grantvault-kek-9", Record("a-again")},
  };
  EXPECT_EQ(store->ReplaceSealedSecrets(mixed).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->GetSealedSecret({"c", "refresh_token"})->record, Record("c-v2"));
}

TEST_P(GrantStoreTest, CountsSealedSecretsByKek) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(*store->CountSealedSecretsByKek(), IsEmpty());
  ASSERT_THAT(store->AddKeyVersion(Key(3, KeyState::kInactive)), IsOk());
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(store->PutSealedSecret(Secret(absl::StrCat("o", i), "p", 1, "r")), IsOk());
  }
  ASSERT_THAT(store->PutSealedSecret(Secret("o9", "p", 2, "r")), IsOk());
  EXPECT_THAT(*store->CountSealedSecretsByKek(),
              UnorderedElementsAre(Pair(Label(1), 5), Pair(Label(2), 1)));
}

// --- key versions ------------------------------------------------------------

TEST_P(GrantStoreTest, AddsListsAndActivatesKeyVersions) {
  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  ASSERT_THAT(store->AddKeyVersion(Key(2, KeyState::kInactive)), IsOk());
  ASSERT_THAT(store->AddKeyVersion(Key(1, KeyState::kActive)), IsOk());
  EXPECT_THAT(*store->ListKeyVersions(),
              ElementsAre(Key(1, KeyState::kActive), Key(2, KeyState::kInactive)));

  KeyVersion same_version = Key(2, KeyState::kInactive);
  same_version.label = "other-label";
  EXPECT_EQ(store->AddKeyVersion(same_version).code(), absl::StatusCode::kAlreadyExists);
  KeyVersion same_label = Key(5, KeyState::kInactive);
  same_label.label = Label(1);
  EXPECT_EQ(store->AddKeyVersion(same_label).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store->AddKeyVersion(Key(3, KeyState::kActive)).code(),
            absl::StatusCode::kFailedPrecondition);

  ASSERT_THAT(store->ActivateKeyVersion(2), IsOk());
  EXPECT_THAT(*store->ListKeyVersions(),
              ElementsAre(Key(1, KeyState::kInactive), Key(2, KeyState::kActive)));
  ASSERT_THAT(store->ActivateKeyVersion(2), IsOk());  // already active: no change
  EXPECT_EQ(store->ActivateKeyVersion(9).code(), absl::StatusCode::kNotFound);

  // The partial unique index allows one active key, below the API too.
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store, "UPDATE key_versions SET state = 'active' WHERE version = 1");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kAlreadyExists);
  int active = 0;
  absl::StatusOr<std::vector<KeyVersion>> keys = store->ListKeyVersions();
  ASSERT_TRUE(keys.ok()) << keys.status();
  for (const KeyVersion& k : *keys) active += k.state == KeyState::kActive;
  EXPECT_EQ(active, 1);
}

TEST_P(GrantStoreTest, RetiresKeyVersionOnlyOnceNothingNamesIt) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();  // 1 active, 2 inactive
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(store->PutSealedSecret(Secret(absl::StrCat("o", i), "p", 1, "r")), IsOk());
  }
  absl::Status s = store->RetireKeyVersion(1, At(1000));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("active"));

  ASSERT_THAT(store->ActivateKeyVersion(2), IsOk());
  s = store->RetireKeyVersion(1, At(1000));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(),
              HasSubstr("key version 1 still wraps 3 sealed secrets; run rewrap first"));
  EXPECT_EQ(store->RetireKeyVersion(7, At(1000)).code(), absl::StatusCode::kNotFound);

  // Rewrap everything under version 2, then retirement succeeds.
  std::vector<SealedSecretUpdate> updates;
  absl::StatusOr<std::vector<SealedSecret>> old_records =
      store->ListSealedSecretsUnder(Label(1), std::nullopt, 100);
  ASSERT_TRUE(old_records.ok()) << old_records.status();
  for (const SealedSecret& old : *old_records) {
    updates.push_back({old.key, old.record, Label(2), Record("rewrapped")});
  }
  ASSERT_EQ(*store->ReplaceSealedSecrets(updates), 3u);
  ASSERT_THAT(store->RetireKeyVersion(1, At(1000)), IsOk());
  ASSERT_THAT(store->RetireKeyVersion(1, At(2000)), IsOk());  // idempotent
  KeyVersion retired = (*store->ListKeyVersions())[0];
  EXPECT_EQ(retired.state, KeyState::kRetired);
  EXPECT_EQ(retired.retired_at, At(1000));

  // Nothing can be written under it any more, nor can it come back.
  s = store->PutSealedSecret(Secret("o_new", "p", 1, "r"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("retired"));
  std::vector<SealedSecretUpdate> back = {
      {{"o0", "p"}, Record("rewrapped"), Label(1), Record("x")}};
  EXPECT_EQ(store->ReplaceSealedSecrets(back).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->ActivateKeyVersion(1).code(), absl::StatusCode::kFailedPrecondition);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  EXPECT_EQ(store->InsertGrant(grant, SecretFor(grant, 1)).code(),
            absl::StatusCode::kFailedPrecondition);

  // ...and the database enforces it itself, whatever the caller.
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store, absl::StrCat("INSERT INTO sealed_secrets VALUES ('o', 'p2', 'w', 'c', 'a', "
                           "'grantvault-kek-1', ",
                           OneByteBlob(), ", 0)"));
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(raw.status().message(), HasSubstr("retired key version"));
  raw = internal::ExecuteSqlForTesting(
      *store, "UPDATE sealed_secrets SET kek_label = 'grantvault-kek-1' WHERE owner_id = 'o0'");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  raw = internal::ExecuteSqlForTesting(
      *store, "UPDATE key_versions SET state = 'inactive', retired_at = NULL WHERE version = 1");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->GetSealedSecret({"o0", "p"})->kek_label, Label(2));
}

TEST_P(GrantStoreTest, DatabaseRefusesRetiringAKeyThatStillWrapsSecrets) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ASSERT_THAT(store->PutSealedSecret(Secret("o", "p", 2, "r")), IsOk());
  absl::StatusOr<std::string> raw = internal::ExecuteSqlForTesting(
      *store, "UPDATE key_versions SET state = 'retired', retired_at = 1 WHERE version = 2");
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store->ListKeyVersions())[1].state, KeyState::kInactive);
}

// --- concurrency and faults --------------------------------------------------

TEST_P(GrantStoreTest, ConcurrentWritersAllLand) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Grant grant = MakeGrant(absl::StrCat("gr_", t, "_", i), absl::StrCat("ws", t),
                                absl::StrCat("connector", i), At(i));
        if (!store->InsertGrant(grant, SecretFor(grant, 1 + (i % 2))).ok()) ++failures;
      }
    });
  }
  std::thread reader([&] {
    while (!done.load()) {
      if (!store->CountGrants().ok() || !store->ListGrants("ws0").ok()) ++failures;
    }
  });
  for (std::thread& thread : threads) thread.join();
  done = true;
  reader.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(*store->CountGrants(), kThreads * kPerThread);
  EXPECT_THAT(*store->CountSealedSecretsByKek(),
              UnorderedElementsAre(Pair(Label(1), kThreads * kPerThread / 2),
                                   Pair(Label(2), kThreads * kPerThread / 2)));
  EXPECT_EQ(store->ListGrants("ws3")->size(), static_cast<size_t>(kPerThread));
}

TEST_F(SqliteGrantStoreTest, FullDatabaseIsResourceExhaustedAndKeepsEarlierData) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
  ASSERT_THAT(store->PutSealedSecret(Secret("o", "p", 1, "before")), IsOk());

  // Cap the file at its current size: the next write that needs a page fails
  // inside SQLite exactly as on a full disk (SQLITE_FULL).
  std::string pages = *internal::ExecuteSqlForTesting(*store, "PRAGMA page_count");
  ASSERT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA max_page_count = " + pages), pages);

  const std::string big(64 * 1024, 'z');
  absl::Status s = store->PutSealedSecret(Secret("o_big", "p", 1, big));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr("zzzz")));
  Grant second = MakeGrant("gr_2", "ws1", "slack");
  s = store->InsertGrant(second, SecretFor(second, 1, big));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;

  // Nothing half-written, everything earlier intact, and the store still works.
  EXPECT_EQ(store->GetGrant("gr_2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetSealedSecret({"o_big", "p"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store->GetGrant("gr_1"), grant);
  EXPECT_EQ(store->GetSealedSecret({"o", "p"})->record, Record("before"));
  EXPECT_EQ(*internal::ExecuteSqlForTesting(*store, "PRAGMA integrity_check"), "ok");

  ASSERT_TRUE(internal::ExecuteSqlForTesting(*store, "PRAGMA max_page_count = 1000000").ok());
  EXPECT_THAT(store->InsertGrant(second, SecretFor(second, 1, big)), IsOk());
  EXPECT_EQ(store->GetSealedSecret({"gr_2", "refresh_token"})->record, Record(big));
}

TEST_F(SqliteGrantStoreTest, WriterLockedOutByAnotherProcessIsUnavailable) {
  SqliteOptions options;
  options.busy_timeout_ms = 50;
  std::unique_ptr<GrantStore> store = Open(options);
  ASSERT_NE(store, nullptr);
  RawDb other = OpenRaw(path_);
  ASSERT_EQ(RawExec(other.get(), "BEGIN IMMEDIATE"), SQLITE_OK);
  absl::Status s = store->AddKeyVersion(Key(1, KeyState::kActive));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  ASSERT_EQ(RawExec(other.get(), "ROLLBACK"), SQLITE_OK);
  EXPECT_THAT(store->AddKeyVersion(Key(1, KeyState::kActive)), IsOk());
}

// --- names -------------------------------------------------------------------

TEST(GrantStoreNamesTest, RoundTrip) {
  for (GrantStatus status :
       {GrantStatus::kActive, GrantStatus::kReauthRequired, GrantStatus::kRevoked}) {
    EXPECT_EQ(*ParseGrantStatus(GrantStatusName(status)), status);
  }
  for (KeyState state : {KeyState::kActive, KeyState::kInactive, KeyState::kRetired}) {
    EXPECT_EQ(*ParseKeyState(KeyStateName(state)), state);
  }
  EXPECT_EQ(GrantStatusName(GrantStatus::kReauthRequired), "reauth_required");
  EXPECT_EQ(KeyStateName(KeyState::kRetired), "retired");
  EXPECT_EQ(ParseGrantStatus("Active").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKeyState("").status().code(), absl::StatusCode::kInvalidArgument);
}

// --- connector registrations and authorization sessions ------------------------

ConnectorRegistration Registration(const std::string& id, int64_t at) {
  ConnectorRegistration r;
  r.connector_id = id;
  r.connector_type = "zendesk";
  r.client_id = "client-" + id;
  r.parameters = {{"subdomain", "acme"}};
  r.registered_by = "alice";
  r.created_at = At(at);
  r.updated_at = At(at);
  return r;
}

SealedSecret ClientSecret(const std::string& id, const std::string& record) {
  SealedSecret s;
  s.key = {RegistrationSecretOwner(id), "client_secret"};
  s.workspace_id = "";
  s.connector_id = id;
  s.kek_label = "grantvault-kek-1";
  s.record = Record(record);
  s.updated_at = At(0);
  return s;
}

AuthorizationSession Session(const std::string& id, const std::string& connector,
                             int64_t expires_at) {
  AuthorizationSession s;
  s.session_id = id;
  s.workspace_id = "ws_acme";
  s.connector_id = connector;
  s.scopes = {"read", "tickets:write"};
  s.admin_user = "alice";
  s.redirect_uri = "http://127.0.0.1:53682/callback";
  s.nonce = "n-0S6_WzA2Mj";
  s.created_at = At(0);
  s.expires_at = At(expires_at);
  return s;
}

SealedSecret Verifier(const std::string& session_id) {
  SealedSecret s;
  s.key = {session_id, "pkce_verifier"};
  s.workspace_id = "ws_acme";
  s.connector_id = "zendesk";
  s.kek_label = "grantvault-kek-1";
  s.record = Record("sealed-verifier");
  s.updated_at = At(0);
  return s;
}

TEST_P(GrantStoreTest, RegistrationsRoundTripAndReplaceTheirSecret) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(
      store->PutConnectorRegistration(Registration("zendesk", 1), ClientSecret("zendesk", "s1"))
          .ok());
  ASSERT_TRUE(
      store->PutConnectorRegistration(Registration("github", 2), ClientSecret("github", "s2"))
          .ok());
  absl::StatusOr<ConnectorRegistration> got = store->GetConnectorRegistration("zendesk");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Registration("zendesk", 1));

  ConnectorRegistration changed = Registration("zendesk", 5);
  changed.created_at = At(1);
  changed.client_id = "new-client";
  changed.parameters = {{"subdomain", "acme2"}};
  ASSERT_THAT(store->PutConnectorRegistration(changed, ClientSecret("zendesk", "s3")), IsOk());
  got = store->GetConnectorRegistration("zendesk");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->client_id, "new-client");
  EXPECT_EQ(got->created_at, At(1));  // kept
  EXPECT_EQ(got->updated_at, At(5));
  EXPECT_THAT(got->parameters, ElementsAre(Pair("subdomain", "acme2")));
  absl::StatusOr<SealedSecret> secret =
      store->GetSealedSecret({RegistrationSecretOwner("zendesk"), "client_secret"});
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ(secret->record, Record("s3"));

  absl::StatusOr<std::vector<ConnectorRegistration>> all = store->ListConnectorRegistrations();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].connector_id, "github");
  EXPECT_TRUE(absl::IsNotFound(store->GetConnectorRegistration("slack").status()));
  // The secret must belong to the registration.
  EXPECT_TRUE(absl::IsInvalidArgument(
      store->PutConnectorRegistration(Registration("slack", 1), ClientSecret("github", "x"))));
}

TEST_P(GrantStoreTest, RegistrationsKeepTheirRedirectUrisInOrder) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ConnectorRegistration reg = Registration("zendesk", 1);
  reg.redirect_uris = {"https://hub.example.com/oauth/callback", "http://127.0.0.1/callback"};
  ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s1")), IsOk());
  EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), reg);
  reg.redirect_uris = {"https://b.example.com/cb"};
  ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s2")), IsOk());
  EXPECT_THAT(store->ListConnectorRegistrations()->front().redirect_uris,
              ElementsAre("https://b.example.com/cb"));
  reg.redirect_uris = {""};
  EXPECT_TRUE(
      absl::IsInvalidArgument(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s3"))));
  EXPECT_THAT(store->GetConnectorRegistration("zendesk")->redirect_uris,
              ElementsAre("https://b.example.com/cb"));
}

// A registration's API bases and private-network flag (the proxy's egress
// allow-list) are kept in order and replaced whole; a database from before
// them migrates with none and the flag off.
TEST_F(SqliteGrantStoreTest, ApiBasesAreKeptInOrderAndOlderDatabasesMigrate) {
  {
    std::unique_ptr<GrantStore> store = OpenWithKeys();
    ASSERT_NE(store, nullptr);
    ConnectorRegistration reg = Registration("zendesk", 1);
    reg.api_bases = {"https://b.example.com/v2/", "https://a.example.com/"};
    reg.allow_private_network = true;
    ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s")), IsOk());
    EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), reg);
    reg.api_bases = {"https://c.example.com/"};
    reg.allow_private_network = false;
    ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s2")), IsOk());
    EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), reg);
    reg.api_bases = {""};
    EXPECT_TRUE(absl::IsInvalidArgument(
        store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s3"))));
    ASSERT_TRUE(
        store->PutConnectorRegistration(Registration("github", 1), ClientSecret("github", "g"))
            .ok());
  }
  {
    RawDb raw = OpenRaw(path_);
    ASSERT_EQ(RawExec(raw.get(),
                      "DROP TABLE connector_api_bases; "
                      "ALTER TABLE connector_registrations DROP COLUMN allow_private_network; "
                      "DELETE FROM schema_migrations WHERE version >= 7"),
              SQLITE_OK);
  }
  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  for (const char* id : {"zendesk", "github"}) {
    absl::StatusOr<ConnectorRegistration> migrated = store->GetConnectorRegistration(id);
    ASSERT_TRUE(migrated.ok()) << migrated.status();
    EXPECT_TRUE(migrated->api_bases.empty()) << id;
    EXPECT_FALSE(migrated->allow_private_network) << id;
  }
}

// A database written before redirect URIs were stored opens, migrates, and
// keeps its registrations (with none registered).
TEST_F(SqliteGrantStoreTest, ADatabaseFromBeforeRedirectUrisMigrates) {
  {
    std::unique_ptr<GrantStore> store = OpenWithKeys();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(
        store->PutConnectorRegistration(Registration("zendesk", 1), ClientSecret("zendesk", "s"))
            .ok());
  }
  {
    RawDb raw = OpenRaw(path_);
    ASSERT_EQ(RawExec(raw.get(),
                      "DROP TABLE connector_redirect_uris; DROP INDEX grants_by_connector; "
                      "ALTER TABLE grants DROP COLUMN refresh_attempt_at; "
                      "DROP TABLE connector_api_bases; "
                      "ALTER TABLE connector_registrations DROP COLUMN allow_private_network; "
                      "DELETE FROM schema_migrations WHERE version >= 5"),
              SQLITE_OK);
  }
  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), Registration("zendesk", 1));
  ConnectorRegistration reg = Registration("zendesk", 2);
  reg.created_at = At(1);
  reg.redirect_uris = {"https://hub.example.com/oauth/callback"};
  ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s2")), IsOk());
  EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), reg);
}

// The default VFS with each write-ahead log's xSync counted (the file's own
// methods, copied, with xSync wrapped), while an instance lives.
class WalSyncCounter {
 public:
  WalSyncCounter() {
    base_ = sqlite3_vfs_find(nullptr);
    vfs_ = *base_;
    vfs_.zName = "gv-wal-sync-counter";
    vfs_.xOpen = &Open;
    syncs_ = 0;
    sqlite3_vfs_register(&vfs_, /*makeDflt=*/1);
  }
  ~WalSyncCounter() {
    sqlite3_vfs_unregister(&vfs_);
    sqlite3_vfs_register(base_, /*makeDflt=*/1);
  }
  WalSyncCounter(const WalSyncCounter&) = delete;
  WalSyncCounter& operator=(const WalSyncCounter&) = delete;

  int syncs() const { return syncs_.load(); }
  void Reset() { syncs_ = 0; }

 private:
  static int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* file, int flags,
                  int* out_flags) {
    const int rc = base_->xOpen(base_, name, file, flags, out_flags);
    if (rc == SQLITE_OK && (flags & SQLITE_OPEN_WAL) != 0 && file->pMethods != nullptr) {
      if (real_sync_ == nullptr) {
        methods_ = *file->pMethods;
        real_sync_ = methods_.xSync;
        methods_.xSync = &Sync;
      }
      file->pMethods = &methods_;
    }
    return rc;
  }
  static int Sync(sqlite3_file* file, int flags) {
    ++syncs_;
    return real_sync_(file, flags);
  }

  static inline sqlite3_vfs* base_ = nullptr;
  static inline sqlite3_vfs vfs_{};
  static inline sqlite3_io_methods methods_{};
  static inline int (*real_sync_)(sqlite3_file*, int) = nullptr;
  static inline std::atomic<int> syncs_{0};
};

// What Sync::kLater means on the disk: no fsync of the log at the commit, one
// at SyncToDisk, and synced commits as before.
TEST_F(SqliteGrantStoreTest, UnsyncedWritesSyncTheLogOnlyWhenAsked) {
  WalSyncCounter counter;
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_1", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant, 1, "rt-v1")), IsOk());
  EXPECT_GE(counter.syncs(), 1) << "a synced write fsyncs the log";

  counter.Reset();
  ASSERT_THAT(store->MarkRefreshAttempt("gr_1", At(150)), IsOk());
  const SealedSecretUpdate rotation{
      {"gr_1", "refresh_token"}, Record("rt-v1"), Label(1), Record("rt-v2")};
  absl::StatusOr<bool> applied =
      store->FinishRefresh(rotation, "gr_1", At(3800), At(200), Sync::kLater);
  ASSERT_TRUE(applied.ok() && *applied) << applied.status();
  ASSERT_THAT(store->ClearRefreshAttempt("gr_1"), IsOk());
  EXPECT_EQ(counter.syncs(), 0) << "unsynced writes must not wait for the disk";

  ASSERT_THAT(store->SyncToDisk(), IsOk());
  EXPECT_EQ(counter.syncs(), 1);

  counter.Reset();
  applied = store->FinishRefresh(std::nullopt, "gr_1", At(7400), At(300), Sync::kNow);
  ASSERT_TRUE(applied.ok() && *applied) << applied.status();
  EXPECT_GE(counter.syncs(), 1) << "the connection is synchronous again";
}

// Before schema 6 the refresher's attempt marker was a sealed secret of
// purpose 'refresh_attempt': it becomes the grant's refresh_attempt_at.
TEST_F(SqliteGrantStoreTest, ADatabaseWithSealedAttemptMarkersMigrates) {
  {
    std::unique_ptr<GrantStore> store = OpenWithKeys();
    ASSERT_NE(store, nullptr);
    for (const char* id : {"gr_1", "gr_2"}) {
      Grant grant = MakeGrant(id, id, "google_workspace");
      ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
    }
    ASSERT_THAT(store->PutSealedSecret(Secret("gr_1", "refresh_attempt", 1, "attempt")), IsOk());
  }
  {
    RawDb raw = OpenRaw(path_);
    ASSERT_EQ(RawExec(raw.get(),
                      "ALTER TABLE grants DROP COLUMN refresh_attempt_at; "
                      "DROP TABLE connector_api_bases; "
                      "ALTER TABLE connector_registrations DROP COLUMN allow_private_network; "
                      "DELETE FROM schema_migrations WHERE version >= 6"),
              SQLITE_OK);
  }
  std::unique_ptr<GrantStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->GetGrant("gr_1")->refresh_attempt_at, At(7));
  EXPECT_FALSE(store->GetGrant("gr_2")->refresh_attempt_at.has_value());
  EXPECT_EQ(store->GetSealedSecret({"gr_1", "refresh_attempt"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(store->GetSealedSecret({"gr_1", "refresh_token"}), IsOk());
}

// Re-registering must not send the refresh tokens of live grants elsewhere.
TEST_P(GrantStoreTest, ARegistrationThatLiveGrantsUseKeepsItsEndpoints) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ConnectorRegistration reg = Registration("zendesk", 1);
  reg.api_bases = {"https://a.example.com/", "https://b.example.com/"};
  ASSERT_THAT(store->PutConnectorRegistration(reg, ClientSecret("zendesk", "s1")), IsOk());
  Grant active = MakeGrant("gr_a", "ws1", "zendesk");
  Grant reauth = MakeGrant("gr_b", "ws2", "zendesk");
  Grant elsewhere = MakeGrant("gr_c", "ws1", "github");
  for (const Grant* g : {&active, &reauth, &elsewhere}) {
    ASSERT_THAT(store->InsertGrant(*g, SecretFor(*g)), IsOk());
  }
  ASSERT_TRUE(
      store->SetGrantStatus("gr_b", GrantStatus::kReauthRequired, "invalid_grant", At(200)).ok());

  struct Change {
    const char* what;
    void (*apply)(ConnectorRegistration&);
  };
  const Change refused[] = {
      {"type", [](ConnectorRegistration& r) { r.connector_type = "oidc"; }},
      {"issuer", [](ConnectorRegistration& r) { r.issuer = "https://evil.example.com"; }},
      {"client id", [](ConnectorRegistration& r) { r.client_id = "another-client"; }},
      {"parameters", [](ConnectorRegistration& r) { r.parameters["subdomain"] = "evil"; }},
      // Where the proxy sends the grants' access tokens.
      {"API bases (added)",
       [](ConnectorRegistration& r) { r.api_bases.push_back("https://evil.example.com/"); }},
      {"private network", [](ConnectorRegistration& r) { r.allow_private_network = true; }},
  };
  for (const Change& c : refused) {
    ConnectorRegistration changed = reg;
    c.apply(changed);
    changed.updated_at = At(300);
    absl::Status st = store->PutConnectorRegistration(changed, ClientSecret("zendesk", "s2"));
    EXPECT_TRUE(absl::IsFailedPrecondition(st)) << c.what << ": " << st;
    EXPECT_THAT(st.message(), HasSubstr("2 live grant(s)")) << c.what;
    EXPECT_THAT(st.message(), HasSubstr(c.what));
    EXPECT_THAT(st.message(), HasSubstr("Revoke them first"));
    // Nothing changed, not even the secret that came with it.
    EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), reg) << c.what;
    EXPECT_EQ(store->GetSealedSecret({RegistrationSecretOwner("zendesk"), "client_secret"})->record,
              Record("s1"));
  }

  // A new client secret, other redirect URIs and fewer API bases are fine.
  ConnectorRegistration rotated = reg;
  rotated.redirect_uris = {"https://hub.example.com/oauth/callback"};
  rotated.api_bases = {"https://b.example.com/"};
  rotated.updated_at = At(400);
  ASSERT_THAT(store->PutConnectorRegistration(rotated, ClientSecret("zendesk", "s3")), IsOk());
  EXPECT_EQ(*store->GetConnectorRegistration("zendesk"), rotated);

  // Revoked with the revocation at the provider still pending: still frozen,
  // the upstream revoker sends the refresh token to the connector's endpoint.
  ASSERT_THAT(store->RevokeGrant("gr_a", "admin", At(500)), IsOk());
  ASSERT_THAT(store->SetGrantStatus("gr_b", GrantStatus::kRevoked, "admin", At(500)), IsOk());
  ConnectorRegistration moved = rotated;
  moved.parameters["subdomain"] = "acme2";
  absl::Status pending = store->PutConnectorRegistration(moved, ClientSecret("zendesk", "s4"));
  EXPECT_TRUE(absl::IsFailedPrecondition(pending)) << pending;
  EXPECT_THAT(pending.message(), HasSubstr("1 revoked grant(s) whose revocation at the provider"));
  UpstreamRevocation done;
  done.grant_id = "gr_a";
  done.state = UpstreamRevocationState::kRevoked;
  done.attempts = 1;
  done.next_attempt_at = At(600);
  done.updated_at = At(600);
  ASSERT_THAT(store->PutUpstreamRevocation(done), IsOk());
  // Nothing uses it any more: the change is allowed.
  ASSERT_THAT(store->PutConnectorRegistration(moved, ClientSecret("zendesk", "s4")), IsOk());
  EXPECT_EQ(store->GetConnectorRegistration("zendesk")->parameters.at("subdomain"), "acme2");
}

// The other order of the same race: a registration changed while an
// authorization ran (its tokens came from the endpoints of before).
TEST_P(GrantStoreTest, AGrantIssuedUnderAReplacedRegistrationIsRefused) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  const ConnectorRegistration issued_under = Registration("zendesk", 1);
  ASSERT_THAT(store->PutConnectorRegistration(issued_under, ClientSecret("zendesk", "s1")), IsOk());
  // A new secret and redirect URIs do not move the tokens.
  ConnectorRegistration rotated = issued_under;
  rotated.redirect_uris = {"https://hub.example.com/oauth/callback"};
  ASSERT_THAT(store->PutConnectorRegistration(rotated, ClientSecret("zendesk", "s2")), IsOk());
  Grant first = MakeGrant("gr_a", "ws1", "zendesk");
  ASSERT_THAT(store->InsertGrant(first, SecretFor(first), std::nullopt, &issued_under), IsOk());
  ASSERT_THAT(store->RevokeGrant("gr_a", "admin", At(150)), IsOk());
  UpstreamRevocation done;
  done.grant_id = "gr_a";
  done.state = UpstreamRevocationState::kRevoked;
  done.next_attempt_at = At(160);
  done.updated_at = At(160);
  ASSERT_THAT(store->PutUpstreamRevocation(done), IsOk());

  ConnectorRegistration moved = rotated;
  moved.parameters["subdomain"] = "evil";
  ASSERT_THAT(store->PutConnectorRegistration(moved, ClientSecret("zendesk", "s3")), IsOk());
  Grant late = MakeGrant("gr_b", "ws1", "zendesk");
  absl::Status refused = store->InsertGrant(late, SecretFor(late), std::nullopt, &issued_under);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused)) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("re-registered (its parameters)"));
  EXPECT_TRUE(absl::IsNotFound(store->GetGrant("gr_b").status()));
  EXPECT_TRUE(absl::IsNotFound(store->GetSealedSecret({"gr_b", "refresh_token"}).status()));
  EXPECT_THAT(store->InsertGrant(late, SecretFor(late), std::nullopt, &moved), IsOk());
  // A registration of another connector is a caller's mistake.
  Grant other = MakeGrant("gr_c", "ws2", "github");
  EXPECT_TRUE(absl::IsInvalidArgument(
      store->InsertGrant(other, SecretFor(other), std::nullopt, &issued_under)));
}

TEST_P(GrantStoreTest, AuthorizationSessionIsSingleUse) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(
      store->PutConnectorRegistration(Registration("zendesk", 1), ClientSecret("zendesk", "s"))
          .ok());
  ASSERT_TRUE(
      store->InsertAuthorizationSession(Session("h1", "zendesk", 600), Verifier("h1")).ok());
  absl::StatusOr<GrantStore::ConsumedSession> used =
      store->ConsumeAuthorizationSession("h1", At(10));
  ASSERT_TRUE(used.ok()) << used.status();
  EXPECT_EQ(used->session, Session("h1", "zendesk", 600));
  ASSERT_TRUE(used->pkce_verifier.has_value());
  EXPECT_EQ(used->pkce_verifier->record, Record("sealed-verifier"));
  // Gone, with its verifier.
  EXPECT_TRUE(absl::IsNotFound(store->ConsumeAuthorizationSession("h1", At(11)).status()));
  EXPECT_TRUE(absl::IsNotFound(store->GetSealedSecret({"h1", "pkce_verifier"}).status()));
  EXPECT_TRUE(absl::IsNotFound(store->ConsumeAuthorizationSession("never", At(11)).status()));
}

TEST_P(GrantStoreTest, ExpiredAuthorizationSessionIsRefusedAndDeleted) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(
      store->PutConnectorRegistration(Registration("zendesk", 1), ClientSecret("zendesk", "s"))
          .ok());
  ASSERT_TRUE(
      store->InsertAuthorizationSession(Session("h1", "zendesk", 600), Verifier("h1")).ok());
  absl::StatusOr<GrantStore::ConsumedSession> late =
      store->ConsumeAuthorizationSession("h1", At(601));
  EXPECT_TRUE(absl::IsFailedPrecondition(late.status())) << late.status();
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  EXPECT_TRUE(absl::IsNotFound(store->ConsumeAuthorizationSession("h1", At(1)).status()));

  ASSERT_TRUE(
      store->InsertAuthorizationSession(Session("h2", "zendesk", 100), Verifier("h2")).ok());
  ASSERT_THAT(store->InsertAuthorizationSession(Session("h3", "zendesk", 900), std::nullopt),
              IsOk());
  absl::StatusOr<int64_t> purged = store->DeleteExpiredAuthorizationSessions(At(500));
  ASSERT_TRUE(purged.ok());
  EXPECT_EQ(*purged, 1);
  EXPECT_TRUE(absl::IsNotFound(store->GetSealedSecret({"h2", "pkce_verifier"}).status()));
  absl::StatusOr<GrantStore::ConsumedSession> h3 =
      store->ConsumeAuthorizationSession("h3", At(501));
  ASSERT_TRUE(h3.ok());
  EXPECT_FALSE(h3->pkce_verifier.has_value());
}

TEST_P(GrantStoreTest, AuthorizationSessionNeedsARegisteredConnector) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  absl::Status s = store->InsertAuthorizationSession(Session("h1", "nobody", 600), std::nullopt);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("not registered"));
  AuthorizationSession bad = Session("h2", "nobody", 600);
  bad.scopes = {"two words"};
  EXPECT_TRUE(absl::IsInvalidArgument(store->InsertAuthorizationSession(bad, std::nullopt)));
}

TEST_P(PostgresGrantStoreTest, CallsWhileTheServerIsAwayAreUnavailableAndTheStoreReconnects) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant before = MakeGrant("gr_before", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(before, SecretFor(before)), IsOk());

  ASSERT_TRUE(postgres_->Stop().ok());
  Grant during = MakeGrant("gr_during", "ws1", "slack");
  const absl::Status lost = store->InsertGrant(during, SecretFor(during));
  EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable) << lost;
  EXPECT_EQ(store->GetGrant("gr_before").status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE(postgres_->StartAgain().ok()) << postgres_->Log();
  EXPECT_THAT(store->GetGrant("gr_before"), IsOk());  // connected again, nothing lost
  EXPECT_EQ(store->GetGrant("gr_during").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(store->InsertGrant(during, SecretFor(during)), IsOk());
  const absl::StatusOr<int64_t> count = store->CountGrants();
  ASSERT_THAT(count, IsOk());
  EXPECT_EQ(*count, 2);
}

// --- refreshes across hosts ----------------------------------------------------

TEST_P(GrantStoreTest, RevokingAGrantRemovesTheAccessTokenSharedWithOtherHosts) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_shared", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
  SealedSecret shared = SecretFor(grant, 1, "sealed-access");
  shared.key.purpose = kSharedAccessTokenPurpose;
  ASSERT_THAT(store->PutSealedSecrets({&shared, 1}), IsOk());
  ASSERT_THAT(store->GetSealedSecret(shared.key), IsOk());
  ASSERT_THAT(store->RevokeGrant("gr_shared", "test", At(200)), IsOk());
  EXPECT_TRUE(absl::IsNotFound(store->GetSealedSecret(shared.key).status()));
  // The refresh token stays: revoking at the provider needs it.
  EXPECT_THAT(store->GetSealedSecret(SecretFor(grant).key), IsOk());
  EXPECT_EQ(store->SharedAcrossHosts(), GetParam() == Backend::kPostgres);
}

TEST_P(PostgresGrantStoreTest, RefreshLocksOfOneGrantExcludeEachOtherAcrossStores) {
  std::unique_ptr<GrantStore> a = OpenWithKeys();
  std::unique_ptr<GrantStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto held = a->LockGrantForRefresh("gr_x", absl::Now() + absl::Seconds(5));
  ASSERT_THAT(held.status(), IsOk());
  const absl::Time asked = absl::Now();
  auto refused = b->LockGrantForRefresh("gr_x", asked + absl::Milliseconds(300));
  EXPECT_TRUE(absl::IsDeadlineExceeded(refused.status())) << refused.status();
  EXPECT_GE(absl::Now() - asked, absl::Milliseconds(250));
  // Another grant is not in the way.
  EXPECT_THAT(b->LockGrantForRefresh("gr_y", absl::Now() + absl::Seconds(1)).status(), IsOk());

  // Released: the waiter gets it at once.
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto lock = b->LockGrantForRefresh("gr_x", absl::Now() + absl::Seconds(10));
    got = lock.ok();
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(got.load());
  held->reset();
  waiter.join();
  EXPECT_TRUE(got.load());
}

TEST_P(PostgresGrantStoreTest, AHolderWhoseConnectionEndsLosesTheRefreshLock) {
  std::unique_ptr<GrantStore> a = OpenWithKeys();
  std::unique_ptr<GrantStore> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto held = a->LockGrantForRefresh("gr_x", absl::Now() + absl::Seconds(5));
  ASSERT_THAT(held.status(), IsOk());
  absl::StatusOr<std::unique_ptr<GrantStore::RefreshLock>> taken = absl::UnknownError("unset");
  absl::Time taken_at;
  std::thread waiter([&] {
    taken = b->LockGrantForRefresh("gr_x", absl::Now() + absl::Seconds(20));
    taken_at = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(300));
  // The holder's connection ends as a killed process's does: the server ends
  // its session, and with it the lock.
  const absl::Time killed_at = absl::Now();
  ASSERT_THAT(internal::ExecuteSqlForTesting(
                  *b,
                  "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = "
                  "'advisory' AND granted AND objsubid = 2 AND pid <> pg_backend_pid()"),
              IsOk());
  waiter.join();
  ASSERT_THAT(taken.status(), IsOk());
  EXPECT_LT(taken_at - killed_at, absl::Seconds(2));
  // The lost holder's release is harmless, and its pool connects again.
  held->reset();
  taken->reset();
  EXPECT_THAT(a->LockGrantForRefresh("gr_x", absl::Now() + absl::Seconds(5)).status(), IsOk());
}

TEST_P(PostgresGrantStoreTest, InsertionsAndStatusChangesAreLoggedForOtherHosts) {
  std::unique_ptr<GrantStore> store = OpenWithKeys();
  ASSERT_NE(store, nullptr);
  Grant grant = MakeGrant("gr_logged", "ws1", "google_workspace");
  ASSERT_THAT(store->InsertGrant(grant, SecretFor(grant)), IsOk());
  ASSERT_THAT(store->SetAccessTokenExpiry("gr_logged", At(300), At(200)), IsOk());  // not logged
  ASSERT_THAT(store->RevokeGrant("gr_logged", "test", At(200)), IsOk());
  EXPECT_EQ(*internal::ExecuteSqlForTesting(
                *store, "SELECT string_agg(grant_id, ',' ORDER BY seq) FROM grant_changes"),
            "gr_logged,gr_logged");
}

// Changes another host makes reach a feed at once, its own are skipped, and a
// server restart loses none.
TEST_P(PostgresGrantStoreTest, AChangeFeedHearsOtherHostsChangesAndSkipsItsOwn) {
  db::PostgresOptions host_a = PostgresOptions();
  host_a.origin = "host-a";
  absl::StatusOr<std::unique_ptr<GrantStore>> a = OpenPostgresGrantStore(host_a);
  ASSERT_THAT(a.status(), IsOk());
  ASSERT_THAT((*a)->AddKeyVersion(Key(1, KeyState::kActive)), IsOk());
  db::PostgresOptions host_b = PostgresOptions();
  host_b.origin = "host-b";
  absl::StatusOr<std::unique_ptr<GrantStore>> b = OpenPostgresGrantStore(host_b);
  ASSERT_THAT(b.status(), IsOk());

  absl::Mutex mu;
  std::vector<std::pair<std::string, absl::Time>> heard;
  GrantChangeFeed::Options options;
  options.connection = host_b;
  options.poll = absl::Seconds(30);  // announcements, not polls, must carry these
  auto feed = GrantChangeFeed::Start(
      options,
      [&](const std::string& grant_id) {
        absl::MutexLock lock(&mu);
        heard.emplace_back(grant_id, absl::Now());
      },
      nullptr);
  ASSERT_THAT(feed.status(), IsOk());
  auto heard_count = [&] {
    absl::MutexLock lock(&mu);
    return heard.size();
  };

  Grant grant = MakeGrant("gr_a", "ws1", "google_workspace");
  ASSERT_THAT((*a)->InsertGrant(grant, SecretFor(grant)), IsOk());
  const absl::Time revoked_at = absl::Now();
  ASSERT_THAT((*a)->RevokeGrant("gr_a", "test", At(200)), IsOk());
  ASSERT_TRUE(testing::WaitFor([&] { return heard_count() == 2; }, absl::Seconds(5)));
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(heard[0].first, "gr_a");
    EXPECT_LT(heard[1].second - revoked_at, absl::Seconds(1));
  }
  // Host B's own change is not reported to host B.
  Grant own = MakeGrant("gr_b", "ws1", "slack");
  ASSERT_THAT((*b)->InsertGrant(own, SecretFor(own)), IsOk());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(heard_count(), 2u);

  // The server restarts: the feed connects again and reads what it missed.
  ASSERT_TRUE(postgres_->Stop().ok());
  ASSERT_TRUE(postgres_->StartAgain().ok()) << postgres_->Log();
  Grant later = MakeGrant("gr_later", "ws1", "github");
  absl::Status inserted = (*a)->InsertGrant(later, SecretFor(later));
  if (!inserted.ok()) inserted = (*a)->InsertGrant(later, SecretFor(later));  // reconnected now
  ASSERT_THAT(inserted, IsOk());
  ASSERT_TRUE(testing::WaitFor([&] { return heard_count() == 3; }, absl::Seconds(15)));
  absl::MutexLock lock(&mu);
  EXPECT_EQ(heard[2].first, "gr_later");
}

}  // namespace
}  // namespace grantvault::store
