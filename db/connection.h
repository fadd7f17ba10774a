// The database layer's backend-neutral half: a connection, its statements,
// transactions and migrations, as the grant store and the audit log use them
// whichever engine holds their tables (db/sqlite.h: a local file, the
// embedded default; db/postgres.h: a shared PostgreSQL server).
//
// SQL is written with `?` parameters, numbered from 1; columns count from 0.
// Every error is an absl::Status whose message starts with the owner ("grant
// store: …") and the step, and whose code callers act on, the same for every
// backend: RESOURCE_EXHAUSTED (full disk, out of memory), UNAVAILABLE (busy,
// locked, the server or file unreachable or read-only, a serialisation
// failure: try again), ALREADY_EXISTS (a duplicate key), FAILED_PRECONDITION
// (a foreign key, or a trigger that refused), INVALID_ARGUMENT (a value the
// schema refuses), DATA_LOSS (a corrupt database), INTERNAL (anything else).
// No message ever carries a bound value: sealed records are bound values.
//
// A connection is used by one thread at a time; its owner serialises it.
#ifndef GRANTVAULT_DB_CONNECTION_H_
#define GRANTVAULT_DB_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace grantvault::db {

// What a backend's statement does; Statement is the handle callers hold.
class StatementImpl {
 public:
  virtual ~StatementImpl() = default;
  virtual void BindText(int index, std::string_view value) = 0;
  virtual void BindInt(int index, int64_t value) = 0;
  virtual void BindBlob(int index, absl::Span<const uint8_t> value) = 0;
  virtual void BindNull(int index) = 0;
  virtual absl::StatusOr<bool> Step() = 0;
  virtual void Reset() = 0;
  virtual bool IsNull(int column) const = 0;
  virtual int64_t Int(int column) const = 0;
  virtual std::string Text(int column) const = 0;
  virtual std::vector<uint8_t> Blob(int column) const = 0;
  // "<owner>: <context>", how this statement's errors begin.
  virtual std::string Where() const = 0;
};

// One prepared statement. Bind errors are remembered and reported by the
// next Step(), so that call sites bind without checking each call.
class Statement {
 public:
  explicit Statement(std::unique_ptr<StatementImpl> impl) : impl_(std::move(impl)) {}

  void BindText(int index, std::string_view value) { impl_->BindText(index, value); }
  void BindInt(int index, int64_t value) { impl_->BindInt(index, value); }
  void BindBlob(int index, absl::Span<const uint8_t> value) { impl_->BindBlob(index, value); }
  void BindNull(int index) { impl_->BindNull(index); }
  // Times are unix microseconds; the infinities saturate.
  void BindTime(int index, absl::Time value);
  void BindOptionalTime(int index, const std::optional<absl::Time>& value);

  // Runs one step: true when a row is ready, false when the statement is done.
  absl::StatusOr<bool> Step() { return impl_->Step(); }
  // Runs a statement that returns no rows.
  absl::Status Run();
  // Makes the statement ready to run again; bindings are kept until rebound.
  void Reset() { impl_->Reset(); }

  bool IsNull(int column) const { return impl_->IsNull(column); }
  int64_t Int(int column) const { return impl_->Int(column); }
  std::string Text(int column) const { return impl_->Text(column); }
  std::vector<uint8_t> Blob(int column) const { return impl_->Blob(column); }
  absl::Time Time(int column) const;
  std::optional<absl::Time> OptionalTime(int column) const;

 private:
  std::unique_ptr<StatementImpl> impl_;
};

enum class TransactionMode {
  kDeferred,   // reads from one snapshot
  kImmediate,  // writes: on SQLite takes the write lock at once
  // Schema changes (Migrate): one process at a time, each statement seeing
  // what others committed before it (the migrations' lock comes first).
  kMigration,
};

class Connection {
 public:
  virtual ~Connection() = default;

  // Starts every error message: "grant store", "audit log".
  virtual const std::string& owner() const = 0;
  // Names the database in messages about it: "database /var/…/grants.db".
  virtual std::string Describe() const = 0;
  // `code` and `detail` as this connection's error for `context`.
  absl::Status Error(absl::StatusCode code, std::string_view context,
                     std::string_view detail) const;

  // Runs `sql` (one or more statements, no rows wanted): migrations, settings.
  virtual absl::Status Exec(const char* sql, std::string_view context) = 0;
  virtual absl::StatusOr<Statement> Prepare(std::string_view sql, std::string_view context) = 0;
  // Prepares and runs one statement that returns no rows.
  absl::Status Run(std::string_view sql, std::string_view context);
  // The first column of the statement's first row; INTERNAL when no row.
  absl::StatusOr<std::string> QueryText(std::string_view sql, std::string_view context);

  // Rows changed by the last INSERT, UPDATE or DELETE that completed.
  virtual size_t Changes() const = 0;
  virtual bool InTransaction() const = 0;
  // Rolls back a transaction left open (after a failed COMMIT, say).
  virtual void RollBackIfOpen() = 0;

  // How this backend begins a transaction of `mode`.
  virtual const char* BeginSql(TransactionMode mode) const = 0;
  // The schema_migrations table in this backend's dialect.
  virtual const char* MigrationsTableSql() const = 0;
  // Inside a migration's transaction: waits until no other process migrates.
  virtual absl::Status LockForMigration() = 0;

  // Runs `sql` (one or more statements) and returns the first column of the
  // first row any of them produced ("" when none did, or it was NULL): for
  // tests that read settings or provoke faults.
  virtual absl::StatusOr<std::string> ExecForTesting(std::string_view sql) = 0;
};

// An open transaction; rolled back unless Commit() succeeds.
class Transaction {
 public:
  using Mode = TransactionMode;

  static absl::StatusOr<Transaction> Begin(Connection& db, Mode mode);
  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(Connection* db) : db_(db) {}
  Connection* db_;
};

// A schema step. Never edit a released migration: append a new one.
struct Migration {
  int version;
  const char* sql;
};

// Applies every migration newer than the database's, in order, each in its
// own transaction, recorded in schema_migrations (version, applied_at).
// Refuses a database whose schema is newer than `migrations` know, or whose
// recorded history has gaps. Safe against another process migrating the
// same database at the same time.
absl::Status Migrate(Connection& db, absl::Span<const Migration> migrations);

}  // namespace grantvault::db

#endif  // GRANTVAULT_DB_CONNECTION_H_
