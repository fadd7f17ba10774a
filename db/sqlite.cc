#include "db/sqlite.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::db {

absl::StatusCode CodeForSqlite(int rc) {
  switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
    case SQLITE_CONSTRAINT_TRIGGER:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_IOERR_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    default:
      break;
  }
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CONSTRAINT:  // NOT NULL, CHECK: a value the schema does not accept
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
      return absl::StatusCode::kInvalidArgument;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    default:
      return absl::StatusCode::kInternal;
  }
}

// The prepared statements of one connection that are not in use, by their
// SQL. A kept statement's bindings are cleared (sealed records are bound
// values).
class StatementCache {
 public:
  StatementCache() = default;
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;
  ~StatementCache() {
    for (auto& [sql, idle] : idle_) {
      for (sqlite3_stmt* stmt : idle) sqlite3_finalize(stmt);
    }
  }

  // A kept statement of `sql`, reset and unbound; nullptr when there is none.
  sqlite3_stmt* Take(std::string_view sql) {
    auto it = idle_.find(sql);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    sqlite3_stmt* stmt = it->second.back();
    it->second.pop_back();
    return stmt;
  }

  // Keeps `stmt` (of SQL `sql`) for reuse, or finalizes it when enough of the
  // same SQL are kept already (nested uses of one query).
  void Give(std::string_view sql, sqlite3_stmt* stmt) {
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    auto it = idle_.find(sql);
    if (it == idle_.end()) it = idle_.emplace(std::string(sql), std::vector<sqlite3_stmt*>()).first;
    std::vector<sqlite3_stmt*>& idle = it->second;
    if (idle.size() >= kMaxIdlePerSql) {
      sqlite3_finalize(stmt);
      return;
    }
    idle.push_back(stmt);
  }

 private:
  static constexpr size_t kMaxIdlePerSql = 2;
  std::map<std::string, std::vector<sqlite3_stmt*>, std::less<>> idle_;
};

namespace {

// Creates the file 0600 whatever the umask (SQLite would use 0644; the -wal
// and -shm files take the database's mode), so that SQLite never creates it,
// and refuses anything that is not a private regular file of ours.
absl::Status CreatePrivateFile(const std::string& path, std::string_view kind) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat(Sv(kind), " ", path, " is a symbolic link; refusing to follow it"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open ", Sv(kind), " ", path));
  }
  struct stat st;
  const int stat_rc = ::fstat(fd, &st);
  const int stat_err = errno;
  ::close(fd);
  if (stat_rc != 0) return absl::ErrnoToStatus(stat_err, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(Sv(kind), " ", path, " is not a regular file"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::PermissionDeniedError(
        absl::StrCat(Sv(kind), " ", path, " is owned by uid ", st.st_uid, ", not by this user"));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::PermissionDeniedError(
        absl::StrFormat("%s %s is accessible to other users (mode %04o); run: chmod 600 %s",
                        Sv(kind), path, st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

}  // namespace

// --- statements ----------------------------------------------------------------

namespace {

// A statement on a Sqlite connection: borrowed from its StatementCache and
// given back, or finalized when the connection keeps none.
class SqliteStatement final : public StatementImpl {
 public:
  SqliteStatement(const Sqlite* db, sqlite3_stmt* stmt, StatementCache* cache, std::string context)
      : db_(db), stmt_(stmt), cache_(cache), context_(std::move(context)) {}
  SqliteStatement(const SqliteStatement&) = delete;
  SqliteStatement& operator=(const SqliteStatement&) = delete;
  ~SqliteStatement() override {
    if (cache_ != nullptr) {
      cache_->Give(sqlite3_sql(stmt_), stmt_);
    } else {
      sqlite3_finalize(stmt_);
    }
  }

  void BindText(int index, std::string_view value) override {
    // A null pointer would bind SQL NULL, not the empty string.
    const char* data = value.data() != nullptr ? value.data() : "";
    Note(sqlite3_bind_text64(stmt_, index, data, static_cast<sqlite3_uint64>(value.size()),
                             SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  void BindInt(int index, int64_t value) override { Note(sqlite3_bind_int64(stmt_, index, value)); }
  void BindBlob(int index, absl::Span<const uint8_t> value) override {
    if (value.empty()) {
      Note(sqlite3_bind_zeroblob(stmt_, index, 0));
    } else {
      Note(sqlite3_bind_blob64(stmt_, index, value.data(),
                               static_cast<sqlite3_uint64>(value.size()), SQLITE_TRANSIENT));
    }
  }
  void BindNull(int index) override { Note(sqlite3_bind_null(stmt_, index)); }

  absl::StatusOr<bool> Step() override {
    if (bind_rc_ != SQLITE_OK) return db_->Error(bind_rc_, context_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return db_->Error(rc, context_);
  }
  void Reset() override {
    sqlite3_reset(stmt_);
    bind_rc_ = SQLITE_OK;
  }

  bool IsNull(int column) const override {
    return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
  }
  int64_t Int(int column) const override { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const override {
    const unsigned char* text = sqlite3_column_text(stmt_, column);
    if (text == nullptr) return std::string();
    return std::string(reinterpret_cast<const char*>(text),
                       static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  std::vector<uint8_t> Blob(int column) const override {
    const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, column));
    if (data == nullptr) return {};
    return std::vector<uint8_t>(data,
                                data + static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  std::string Where() const override { return absl::StrCat(db_->owner(), ": ", context_); }

 private:
  void Note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  const Sqlite* db_;
  sqlite3_stmt* stmt_;
  StatementCache* cache_;  // nullptr: finalized when done
  std::string context_;
  int bind_rc_ = SQLITE_OK;
};

}  // namespace

// --- the connection --------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Sqlite>> Sqlite::Open(const std::string& path,
                                                     SqliteOptions options) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.file_kind, " path must not be empty"));
  }
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.file_kind, " path must not contain a NUL character"));
  }
  if (options.busy_timeout_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("busy_timeout_ms must not be negative (got ", options.busy_timeout_ms, ")"));
  }
  if (!options.read_only) GV_RETURN_IF_ERROR(CreatePrivateFile(path, options.file_kind));
  sqlite3* raw = nullptr;
  // No SQLITE_OPEN_CREATE: CreatePrivateFile made the file.
  const int flags = (options.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                    SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  std::unique_ptr<Sqlite> db(new Sqlite(raw, path, std::move(options)));
  if (rc != SQLITE_OK) return db->Error(rc, absl::StrCat("open ", path));
  GV_RETURN_IF_ERROR(db->Configure());
  return db;
}

Sqlite::Sqlite(sqlite3* db, std::string path, SqliteOptions options)
    : db_(db),
      path_(std::move(path)),
      options_(std::move(options)),
      statements_(options_.keep_statements ? std::make_unique<StatementCache>() : nullptr) {}

Sqlite::~Sqlite() {
  statements_.reset();  // its statements are finalized before the connection closes
  sqlite3_close_v2(db_);
}

absl::Status Sqlite::Configure() {
  int rc = sqlite3_extended_result_codes(db_, 1);
  if (rc != SQLITE_OK) return Error(rc, "enable extended result codes");
  rc = sqlite3_busy_timeout(db_, options_.busy_timeout_ms);
  if (rc != SQLITE_OK) return Error(rc, "set busy timeout");
  // No writable_schema, no direct writes to internal tables; the schema's
  // triggers may not call application functions.
  rc = sqlite3_db_config(db_, SQLITE_DBCONFIG_DEFENSIVE, 1, static_cast<int*>(nullptr));
  if (rc != SQLITE_OK) return Error(rc, "enable defensive mode");
  rc = sqlite3_db_config(db_, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, static_cast<int*>(nullptr));
  if (rc != SQLITE_OK) return Error(rc, "distrust the schema");
  if (options_.read_only) return absl::OkStatus();

  GV_ASSIGN_OR_RETURN(const std::string journal_mode,
                      QueryText("PRAGMA journal_mode = WAL", "set journal_mode"));
  if (journal_mode != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat(Describe(), " cannot use write-ahead logging (journal_mode is ", journal_mode,
                     "); is it on a network file system?"));
  }
  GV_RETURN_IF_ERROR(Exec("PRAGMA synchronous = FULL", "set synchronous"));
  GV_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys = ON", "enable foreign keys"));
  GV_ASSIGN_OR_RETURN(const std::string synchronous,
                      QueryText("PRAGMA synchronous", "synchronous"));
  GV_ASSIGN_OR_RETURN(const std::string foreign_keys,
                      QueryText("PRAGMA foreign_keys", "foreign_keys"));
  if (synchronous != "2" || foreign_keys != "1") {
    return absl::InternalError(absl::StrCat(
        options_.owner, ": ", path_, ": SQLite refused synchronous=FULL or foreign_keys=ON"));
  }
  return absl::OkStatus();
}

absl::Status Sqlite::Error(int rc, std::string_view context) const {
  const char* message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  return absl::Status(CodeForSqlite(rc), absl::StrCat(options_.owner, ": ", Sv(context), ": ",
                                                      message, " (sqlite code ", rc, ")"));
}

absl::Status Sqlite::Exec(const char* sql, std::string_view context) {
  char* raw_message = nullptr;
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &raw_message);
  std::unique_ptr<char, decltype(&sqlite3_free)> message(raw_message, &sqlite3_free);
  if (rc == SQLITE_OK) return absl::OkStatus();
  return absl::Status(CodeForSqlite(rc),
                      absl::StrCat(options_.owner, ": ", Sv(context), ": ",
                                   message != nullptr ? message.get() : sqlite3_errstr(rc),
                                   " (sqlite code ", rc, ")"));
}

absl::StatusOr<Statement> Sqlite::Prepare(std::string_view sql, std::string_view context) {
  if (sql.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat(options_.owner, ": ", Sv(context), ": SQL too long"));
  }
  // Never a pragma: some take effect, or read their value, when compiled.
  StatementCache* cache =
      absl::StartsWithIgnoreCase(Sv(sql), "PRAGMA") ? nullptr : statements_.get();
  if (cache != nullptr) {
    if (sqlite3_stmt* kept = cache->Take(sql)) {
      return Statement(std::make_unique<SqliteStatement>(this, kept, cache, std::string(context)));
    }
  }
  sqlite3_stmt* stmt = nullptr;
  const char* tail = nullptr;
  const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                    cache != nullptr ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, &tail);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(rc, context);
  }
  // Kept under sqlite3_sql(), the text it compiled: only when that is all of
  // `sql`, so that the next Take(sql) finds it.
  if (tail != sql.data() + sql.size()) cache = nullptr;
  return Statement(std::make_unique<SqliteStatement>(this, stmt, cache, std::string(context)));
}

size_t Sqlite::Changes() const {
  const int changes = sqlite3_changes(db_);
  return changes > 0 ? static_cast<size_t>(changes) : 0;
}

std::string Sqlite::Describe() const { return absl::StrCat(options_.file_kind, " ", path_); }

const char* Sqlite::BeginSql(TransactionMode mode) const {
  return mode == TransactionMode::kDeferred ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE";
}

const char* Sqlite::MigrationsTableSql() const {
  return "CREATE TABLE IF NOT EXISTS schema_migrations ("
         "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT";
}

void Sqlite::RollBackIfOpen() {
  if (InTransaction()) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

absl::StatusOr<std::string> Sqlite::ExecForTesting(std::string_view sql) {
  const std::string text(sql);
  std::optional<std::string> first;
  auto callback = [](void* out, int columns, char** values, char**) -> int {
    auto* result = static_cast<std::optional<std::string>*>(out);
    if (!result->has_value()) {
      *result = (columns > 0 && values[0] != nullptr) ? std::string(values[0]) : std::string();
    }
    return 0;
  };
  char* raw_message = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), callback, &first, &raw_message);
  std::unique_ptr<char, decltype(&sqlite3_free)> message(raw_message, &sqlite3_free);
  if (rc != SQLITE_OK) {
    return absl::Status(CodeForSqlite(rc),
                        absl::StrCat(options_.owner, ": execute SQL for testing: ",
                                     message != nullptr ? message.get() : sqlite3_errstr(rc),
                                     " (sqlite code ", rc, ")"));
  }
  return first.value_or(std::string());
}

}  // namespace grantvault::db
