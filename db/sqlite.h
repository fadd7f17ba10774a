// The SQLite backend of the database layer (db/connection.h): the grant
// store's file and the audit log's, on one host.
//
// A database file is private: created 0600 whatever the umask, never through
// a symbolic link, refused when another user can read it or it is not ours.
// A writable connection uses write-ahead logging, synchronous=FULL, foreign
// keys, defensive mode and a distrusted schema. SQLite's result codes map to
// the layer's codes (a full disk RESOURCE_EXHAUSTED; busy, locked, I/O, a
// read-only file UNAVAILABLE; …); messages carry SQLite's own text, which
// names tables and columns, never bound values. NOMUTEX: one thread at a
// time.
#ifndef GRANTVAULT_DB_SQLITE_H_
#define GRANTVAULT_DB_SQLITE_H_

#include <sqlite3.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "db/connection.h"

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

class StatementCache;

// One open connection to a SQLite file.
class Sqlite final : public Connection {
 public:
  // Opens `path` (creating it, private, unless read-only) and configures the
  // connection as the file comment says.
  static absl::StatusOr<std::unique_ptr<Sqlite>> Open(const std::string& path,
                                                      SqliteOptions options);
  Sqlite(const Sqlite&) = delete;
  Sqlite& operator=(const Sqlite&) = delete;
  ~Sqlite() override;

  // For what this layer does not wrap (file controls, the WAL).
  sqlite3* raw() const { return db_; }
  const SqliteOptions& options() const { return options_; }

  // `rc` as a Status naming the owner and `context`.
  using Connection::Error;
  absl::Status Error(int rc, std::string_view context) const;

  const std::string& owner() const override { return options_.owner; }
  std::string Describe() const override;
  // Compiled each time: pragmas take effect, or read their value, then.
  absl::Status Exec(const char* sql, std::string_view context) override;
  // Kept prepared when the connection keeps statements (never a pragma).
  absl::StatusOr<Statement> Prepare(std::string_view sql, std::string_view context) override;
  size_t Changes() const override;
  bool InTransaction() const override { return sqlite3_get_autocommit(db_) == 0; }
  void RollBackIfOpen() override;
  const char* BeginSql(TransactionMode mode) const override;
  const char* MigrationsTableSql() const override;
  // BEGIN IMMEDIATE took the file's write lock already.
  absl::Status LockForMigration() override { return absl::OkStatus(); }
  absl::StatusOr<std::string> ExecForTesting(std::string_view sql) override;

 private:
  Sqlite(sqlite3* db, std::string path, SqliteOptions options);
  absl::Status Configure();

  sqlite3* db_;
  std::string path_;
  SqliteOptions options_;
  std::unique_ptr<StatementCache> statements_;  // null unless keep_statements
};

}  // namespace grantvault::db

#endif  // GRANTVAULT_DB_SQLITE_H_
