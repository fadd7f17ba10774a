#include "audit/audit_db.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::audit::db {
namespace {

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
    case SQLITE_CONSTRAINT:
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

// Creates the file 0600 whatever the umask (SQLite would use 0644; the -wal and
// -shm files take the database's mode) and refuses anything that is not a
// private regular file of ours.
absl::Status CreatePrivateFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat("audit database ", path, " is a symbolic link; refusing to follow it"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open audit database ", path));
  }
  struct stat st;
  int stat_rc = ::fstat(fd, &st);
  int stat_err = errno;
  ::close(fd);
  if (stat_rc != 0) return absl::ErrnoToStatus(stat_err, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("audit database ", path, " is not a regular file"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::PermissionDeniedError(absl::StrCat("audit database ", path, " is owned by uid ",
                                                    st.st_uid, ", not by this user"));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "audit database %s is accessible to other users (mode %04o); run: chmod 600 %s", path,
        st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

}  // namespace

// SQLite's messages name tables and columns, never bound values.
absl::Status Error(sqlite3* db, int rc, std::string_view context) {
  const char* message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return absl::Status(CodeForSqlite(rc), absl::StrCat("audit log: ", Sv(context), ": ", message,
                                                      " (sqlite code ", rc, ")"));
}

absl::Status Exec(sqlite3* db, const char* sql, std::string_view context) {
  char* raw_message = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &raw_message);
  std::unique_ptr<char, decltype(&sqlite3_free)> message(raw_message, &sqlite3_free);
  if (rc == SQLITE_OK) return absl::OkStatus();
  return absl::Status(CodeForSqlite(rc),
                      absl::StrCat("audit log: ", Sv(context), ": ",
                                   message != nullptr ? message.get() : sqlite3_errstr(rc),
                                   " (sqlite code ", rc, ")"));
}

absl::StatusOr<Handle> Open(const std::string& path, bool read_only, int busy_timeout_ms) {
  if (!read_only) GV_RETURN_IF_ERROR(CreatePrivateFile(path));
  sqlite3* raw = nullptr;
  int flags = (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOFOLLOW |
              SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  Handle db(raw);
  if (rc != SQLITE_OK) return Error(db.get(), rc, absl::StrCat("open ", path));
  rc = sqlite3_extended_result_codes(db.get(), 1);
  if (rc != SQLITE_OK) return Error(db.get(), rc, "enable extended result codes");
  rc = sqlite3_busy_timeout(db.get(), busy_timeout_ms);
  if (rc != SQLITE_OK) return Error(db.get(), rc, "set busy timeout");
  rc = sqlite3_db_config(db.get(), SQLITE_DBCONFIG_DEFENSIVE, 1, static_cast<int*>(nullptr));
  if (rc != SQLITE_OK) return Error(db.get(), rc, "enable defensive mode");
  rc = sqlite3_db_config(db.get(), SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, static_cast<int*>(nullptr));
  if (rc != SQLITE_OK) return Error(db.get(), rc, "distrust the schema");
  if (read_only) return db;

  GV_ASSIGN_OR_RETURN(
      Statement wal, Statement::Prepare(db.get(), "PRAGMA journal_mode = WAL", "set journal_mode"));
  GV_ASSIGN_OR_RETURN(bool row, wal.Step());
  if (!row || wal.Text(0) != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("audit database ", path,
                     " cannot use write-ahead logging; is it on a network file system?"));
  }
  GV_RETURN_IF_ERROR(Exec(db.get(), "PRAGMA synchronous = FULL", "set synchronous"));
  GV_RETURN_IF_ERROR(Exec(db.get(), "PRAGMA foreign_keys = ON", "enable foreign keys"));
  return db;
}

absl::StatusOr<Statement> Statement::Prepare(sqlite3* db, std::string_view sql,
                                             std::string_view context) {
  if (sql.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError("audit log: SQL too long");
  }
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(db, rc, context);
  }
  return Statement(db, stmt, std::string(context));
}

Statement::Statement(Statement&& other) noexcept
    : db_(other.db_),
      stmt_(std::exchange(other.stmt_, nullptr)),
      context_(std::move(other.context_)),
      bind_rc_(other.bind_rc_) {}

Statement::~Statement() { sqlite3_finalize(stmt_); }

void Statement::BindText(int index, std::string_view value) {
  const char* data = value.data() != nullptr ? value.data() : "";
  Note(sqlite3_bind_text64(stmt_, index, data, static_cast<sqlite3_uint64>(value.size()),
                           SQLITE_TRANSIENT, SQLITE_UTF8));
}

void Statement::BindInt(int index, int64_t value) { Note(sqlite3_bind_int64(stmt_, index, value)); }

void Statement::BindBlob(int index, const std::vector<uint8_t>& value) {
  if (value.empty()) {
    Note(sqlite3_bind_zeroblob(stmt_, index, 0));
  } else {
    Note(sqlite3_bind_blob64(stmt_, index, value.data(), static_cast<sqlite3_uint64>(value.size()),
                             SQLITE_TRANSIENT));
  }
}

absl::StatusOr<bool> Statement::Step() {
  if (bind_rc_ != SQLITE_OK) return Error(db_, bind_rc_, context_);
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return Error(db_, rc, context_);
}

absl::Status Statement::Run() {
  GV_ASSIGN_OR_RETURN(bool row, Step());
  if (row) return absl::InternalError(absl::StrCat("audit log: ", context_, ": unexpected row"));
  return absl::OkStatus();
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  bind_rc_ = SQLITE_OK;
}

std::string Statement::Text(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  if (text == nullptr) return std::string();
  return std::string(reinterpret_cast<const char*>(text),
                     static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}

std::vector<uint8_t> Statement::Blob(int column) const {
  const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, column));
  if (data == nullptr) return {};
  return std::vector<uint8_t>(data,
                              data + static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}

absl::StatusOr<Transaction> Transaction::Begin(sqlite3* db, bool immediate) {
  GV_RETURN_IF_ERROR(
      Exec(db, immediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED", "begin transaction"));
  return Transaction(db);
}

Transaction::Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Transaction::~Transaction() {
  // Some errors (SQLITE_FULL, SQLITE_IOERR…) already rolled back.
  if (db_ != nullptr && sqlite3_get_autocommit(db_) == 0) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

absl::Status Transaction::Commit() {
  GV_RETURN_IF_ERROR(Exec(db_, "COMMIT", "commit transaction"));
  db_ = nullptr;
  return absl::OkStatus();
}

}  // namespace grantvault::audit::db
