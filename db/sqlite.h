// The one SQLite layer of grantvault: the grant store (store/) and the audit
// log (audit/) both open, query and migrate their databases through it, so
// that a file's protections, the error mapping and the transaction rules are
// written once.
//
// A database file is private: created 0600 whatever the umask, never through
// a symbolic link, refused when another user can read it or it is not ours.
// A writable connection uses write-ahead logging, synchronous=FULL, foreign
// keys, defensive mode and a distrusted schema. SQLite's result codes become
// absl codes callers act on: a full disk is RESOURCE_EXHAUSTED; a busy or
// locked database, an I/O error or a read-only file UNAVAILABLE; a duplicate
// key ALREADY_EXISTS; a failed foreign key or trigger FAILED_PRECONDITION; a
// corrupt file DATA_LOSS. Messages name the owner ("grant store: …"), the
// step and SQLite's own text, which names tables and columns, never bound
// values.
//
// A connection is used by one thread at a time (NOMUTEX): its owner
// serialises it.
#ifndef GRANTVAULT_DB_SQLITE_H_
#define GRANTVAULT_DB_SQLITE_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace grantvault::db {

struct SqliteOptions {
  // Starts every error message: "grant store", "audit log".
  std::string owner = "database";
  // Names the file in messages about it: "database", "audit database".
  std::string file_kind = "database";
  // Opened read-only: the file must exist; nothing is configured that writes.
  bool read_only = false;
  // How long a statement waits for another connection's lock before failing
  // with UNAVAILABLE.
  int busy_timeout_ms = 5000;
  // Keeps prepared statements by their SQL for the next Prepare of the same
  // SQL: compiling one costs more than running most of them.
  bool keep_statements = false;
};

absl::StatusCode CodeForSqlite(int rc);

class Statement;
class StatementCache;

// One open connection.
class Sqlite {
 public:
  // Opens `path` (creating it, private, unless read-only) and configures the
  // connection as the file comment says.
  static absl::StatusOr<std::unique_ptr<Sqlite>> Open(const std::string& path,
                                                      SqliteOptions options);
  Sqlite(const Sqlite&) = delete;
  Sqlite& operator=(const Sqlite&) = delete;
  ~Sqlite();

  // For what this layer does not wrap (file controls, the WAL).
  sqlite3* raw() const { return db_; }
  const SqliteOptions& options() const { return options_; }

  // `rc` as a Status naming the owner and `context`.
  absl::Status Error(int rc, std::string_view context) const;

  // Runs `sql` (one or more statements, no rows wanted), compiled each time:
  // migrations, and pragmas (some take effect when they are compiled).
  absl::Status Exec(const char* sql, std::string_view context);
  // One statement, kept prepared when the connection keeps statements.
  absl::StatusOr<Statement> Prepare(std::string_view sql, std::string_view context);
  // Prepares and runs one statement that returns no rows (BEGIN, COMMIT…).
  absl::Status Run(std::string_view sql, std::string_view context);
  // The first column of the statement's first row; INTERNAL when no row.
  absl::StatusOr<std::string> QueryText(std::string_view sql, std::string_view context);

  // Rows changed by the last INSERT, UPDATE or DELETE that completed.
  size_t Changes() const;
  bool InTransaction() const { return sqlite3_get_autocommit(db_) == 0; }
  // Rolls back a transaction left open (after a failed ROLLBACK or COMMIT).
  void RollBackIfOpen();

  // Runs `sql` (one or more statements) and returns the first column of the
  // first row any of them produced ("" when none did, or it was NULL): for
  // tests that read per-connection settings or provoke faults.
  absl::StatusOr<std::string> ExecForTesting(std::string_view sql);

 private:
  Sqlite(sqlite3* db, SqliteOptions options);
  absl::Status Configure(const std::string& path);

  sqlite3* db_;
  SqliteOptions options_;
  std::unique_ptr<StatementCache> statements_;  // null unless keep_statements
};

// One prepared statement. Bind errors are remembered and reported by the next
// Step(), so that call sites bind without checking each call. Indexes count
// from 1 for parameters and from 0 for columns, as in SQLite.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  void BindText(int index, std::string_view value);
  void BindInt(int index, int64_t value);
  void BindBlob(int index, absl::Span<const uint8_t> value);
  void BindNull(int index);
  // Times are unix microseconds; the infinities saturate.
  void BindTime(int index, absl::Time value);
  void BindOptionalTime(int index, const std::optional<absl::Time>& value);

  // Runs one step: true when a row is ready, false when the statement is done.
  absl::StatusOr<bool> Step();
  // Runs a statement that returns no rows.
  absl::Status Run();
  // Makes the statement ready to run again; bindings are kept until rebound.
  void Reset();

  bool IsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const;
  std::vector<uint8_t> Blob(int column) const;
  absl::Time Time(int column) const;
  std::optional<absl::Time> OptionalTime(int column) const;

 private:
  friend class Sqlite;
  Statement(const Sqlite* db, sqlite3_stmt* stmt, StatementCache* cache, std::string context)
      : db_(db), stmt_(stmt), cache_(cache), context_(std::move(context)) {}
  void Note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  const Sqlite* db_;
  sqlite3_stmt* stmt_;
  StatementCache* cache_;  // nullptr: finalized when done
  std::string context_;
  int bind_rc_ = SQLITE_OK;
};

// An open transaction; rolled back unless Commit() succeeds.
class Transaction {
 public:
  enum class Mode {
    kDeferred,   // a read snapshot from the first read on
    kImmediate,  // takes the write lock now
  };

  static absl::StatusOr<Transaction> Begin(Sqlite& db, Mode mode);
  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(Sqlite* db) : db_(db) {}
  Sqlite* db_;
};

// A schema step. Never edit a released migration: append a new one.
struct Migration {
  int version;
  const char* sql;
};

// Applies every migration newer than the file's, in order, each in its own
// BEGIN IMMEDIATE transaction, recorded in schema_migrations (version,
// applied_at). Refuses a file whose schema is newer than `migrations` know,
// or whose recorded history has gaps. Safe against another process migrating
// the same file at the same time.
absl::Status Migrate(Sqlite& db, absl::Span<const Migration> migrations, const std::string& path);

}  // namespace grantvault::db

#endif  // GRANTVAULT_DB_SQLITE_H_
