// The PostgreSQL backend of the database layer (db/connection.h), for several
// hosts sharing one database (libpq).
//
// Statements are written with `?` parameters as for SQLite and sent with
// PQexecParams as $1, $2, …; text is sent as text, integers as int8, blobs in
// binary as bytea; results come back in binary, so a blob is never escaped.
// SQLSTATEs map to the layer's codes: 23505 ALREADY_EXISTS; 23503 and a
// trigger's RAISE (P0001) FAILED_PRECONDITION; other integrity violations and
// data exceptions INVALID_ARGUMENT; 53xxx (disk full, out of memory)
// RESOURCE_EXHAUSTED; a lost connection, 08xxx, 57Pxx (the server shutting
// down), 40001/40P01 (serialisation failure, deadlock: try again), 55P03 and
// 25006 (a read-only server) UNAVAILABLE; XX001/XX002 DATA_LOSS. Messages
// carry the server's primary message only (never DETAIL, which shows key
// values), and not even that for data exceptions (22xxx), whose message can
// quote the value refused.
//
// Transactions: kImmediate is SERIALIZABLE (a write that raced another host's
// fails with UNAVAILABLE and is retried by the caller, as SQLite's busy
// lock is), kDeferred REPEATABLE READ (one snapshot). Migrations take a
// transaction-scoped advisory lock, so that hosts starting together migrate
// once.
#ifndef GRANTVAULT_DB_POSTGRES_H_
#define GRANTVAULT_DB_POSTGRES_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "db/connection.h"

// libpq's connection and result (PGconn, PGresult), kept out of callers'
// includes.
struct pg_conn;
struct pg_result;

namespace grantvault::db {

struct PostgresOptions {
  // Starts every error message: "grant store", "audit log".
  std::string owner = "database";
  // A libpq connection string or URI: host, port, dbname, user, and for a
  // server off this host sslmode=verify-full with sslrootcert. Must not hold
  // the password: that comes from `password_file`.
  std::string conninfo;
  // A file holding the password alone (one trailing newline is dropped), as
  // an operator or a systemd credential ($CREDENTIALS_DIRECTORY/…) keeps it.
  // Empty: no password (peer or certificate authentication).
  std::string password_file;
  absl::Duration connect_timeout = absl::Seconds(5);
  // Names the host in what its sessions change (the setting
  // grantvault.origin, which the grant store's change log records), so that
  // a host can tell its own changes from other hosts'. Empty: unset.
  std::string origin;
};

// Reads a password file as PostgresOptions::password_file says, under the
// rules of every secret file (common/files.h: ReadSecretFile); the caller
// wipes the result.
absl::StatusOr<std::string> ReadPasswordFile(const std::string& path);

// InvalidArgument unless `conninfo` parses as a libpq connection string or
// URI without a password in it (the password comes from a file). The message
// never quotes the string.
absl::Status CheckConninfo(const std::string& conninfo);

// What a connection string leaves exposed, for the daemon to warn about at
// start: empty, or why the link to the server is not authenticated (a TCP
// host other than loopback without sslmode=verify-full or verify-ca).
std::string ConninfoWeakness(const std::string& conninfo);

// `sql` with its `?` parameters numbered for PostgreSQL ($1, $2, …; SQLite's
// `?NNN` is $NNN), outside string literals, quoted names and comments;
// `count` gets the highest number.
std::string NumberParameters(std::string_view sql, int& count);

absl::StatusCode CodeForSqlState(std::string_view sqlstate);

class Postgres final : public Connection {
 public:
  // Connects; UNAVAILABLE (with libpq's reason) when the server cannot be
  // reached or refuses the login.
  static absl::StatusOr<std::unique_ptr<Postgres>> Connect(PostgresOptions options);
  Postgres(const Postgres&) = delete;
  Postgres& operator=(const Postgres&) = delete;
  ~Postgres() override;

  pg_conn* raw() const { return conn_; }
  // False once the connection to the server is lost.
  bool Healthy() const;
  // Connects again (a lost connection, a restarted server). Outside a
  // transaction only: one that was open is gone with the old connection.
  absl::Status Reconnect();

  const std::string& owner() const override { return options_.owner; }
  std::string Describe() const override;
  absl::Status Exec(const char* sql, std::string_view context) override;
  absl::StatusOr<Statement> Prepare(std::string_view sql, std::string_view context) override;
  size_t Changes() const override { return changes_; }
  bool InTransaction() const override;
  void RollBackIfOpen() override;
  const char* BeginSql(TransactionMode mode) const override;
  const char* MigrationsTableSql() const override;
  absl::Status LockForMigration() override;
  // LISTEN on `channel` (an identifier of letters, digits and '_'): the
  // server's notifications on it are then taken by WaitForNotifications.
  absl::Status Listen(std::string_view channel);
  // Waits at most `timeout` for notifications and takes every one that has
  // arrived: how many. UNAVAILABLE once the connection is lost.
  absl::StatusOr<int> WaitForNotifications(absl::Duration timeout);

  // The first column of the first row of the last statement's result.
  absl::StatusOr<std::string> ExecForTesting(std::string_view sql) override;

  // For statements: the error of a failed result (or of a lost connection
  // when `result` is null), and the count a completed command changed.
  absl::Status ResultError(const pg_result* result, std::string_view context) const;
  void NoteChanges(size_t changes) { changes_ = changes; }

 private:
  explicit Postgres(PostgresOptions options) : options_(std::move(options)) {}
  absl::Status Open();

  PostgresOptions options_;
  pg_conn* conn_ = nullptr;
  size_t changes_ = 0;
};

}  // namespace grantvault::db

#endif  // GRANTVAULT_DB_POSTGRES_H_
