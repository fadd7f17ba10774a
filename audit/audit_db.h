// Small owners for the audit database's SQLite handles, with the grant
// store's conventions (store/sqlite_grant_store.cc): private 0600 file, no
// symlinks, WAL, defensive mode, busy timeout, errors mapped to absl codes
// (full disk → ResourceExhausted; busy, locked, I/O → Unavailable). Internal to
// the audit module.
#ifndef GRANTVAULT_AUDIT_AUDIT_DB_H_
#define GRANTVAULT_AUDIT_AUDIT_DB_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grantvault::audit::db {

struct Closer {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Handle = std::unique_ptr<sqlite3, Closer>;

absl::Status Error(sqlite3* db, int rc, std::string_view context);
absl::Status Exec(sqlite3* db, const char* sql, std::string_view context);

// Opens `path` read-write (creating it 0600 first when `create`), or read-only,
// and configures the connection. NOMUTEX: callers serialise their connection.
absl::StatusOr<Handle> Open(const std::string& path, bool read_only, int busy_timeout_ms);

// One prepared statement. Bind errors are reported by the next Step().
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, std::string_view sql,
                                           std::string_view context);
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  void BindText(int index, std::string_view value);
  void BindInt(int index, int64_t value);
  void BindBlob(int index, const std::vector<uint8_t>& value);
  // True when a row is ready, false when done.
  absl::StatusOr<bool> Step();
  absl::Status Run();  // a statement that returns no rows
  void Reset();

  bool IsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const;
  std::vector<uint8_t> Blob(int column) const;

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt, std::string context)
      : db_(db), stmt_(stmt), context_(std::move(context)) {}
  void Note(int rc) {
    if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string context_;
  int bind_rc_ = SQLITE_OK;
};

// An open transaction; rolled back unless Commit() succeeds.
class Transaction {
 public:
  // BEGIN IMMEDIATE (write) or BEGIN DEFERRED (read snapshot from the first read).
  static absl::StatusOr<Transaction> Begin(sqlite3* db, bool immediate);
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

}  // namespace grantvault::audit::db

#endif  // GRANTVAULT_AUDIT_AUDIT_DB_H_
