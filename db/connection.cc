#include "db/connection.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::db {
namespace {

int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }  // infinities saturate

absl::Time FromMicros(int64_t micros) {
  if (micros == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  if (micros == std::numeric_limits<int64_t>::max()) return absl::InfiniteFuture();
  return absl::FromUnixMicros(micros);
}

}  // namespace

// --- statements ----------------------------------------------------------------

void Statement::BindTime(int index, absl::Time value) { BindInt(index, ToMicros(value)); }

void Statement::BindOptionalTime(int index, const std::optional<absl::Time>& value) {
  if (value.has_value()) {
    BindTime(index, *value);
  } else {
    BindNull(index);
  }
}

absl::Status Statement::Run() {
  GV_ASSIGN_OR_RETURN(const bool row, Step());
  if (row) return absl::InternalError(absl::StrCat(impl_->Where(), ": unexpected row"));
  return absl::OkStatus();
}

absl::Time Statement::Time(int column) const { return FromMicros(Int(column)); }

std::optional<absl::Time> Statement::OptionalTime(int column) const {
  if (IsNull(column)) return std::nullopt;
  return Time(column);
}

// --- connections ---------------------------------------------------------------

absl::Status Connection::Error(absl::StatusCode code, std::string_view context,
                               std::string_view detail) const {
  return absl::Status(code, absl::StrCat(owner(), ": ", Sv(context), ": ", Sv(detail)));
}

absl::Status Connection::Run(std::string_view sql, std::string_view context) {
  GV_ASSIGN_OR_RETURN(Statement statement, Prepare(sql, context));
  return statement.Run();
}

absl::StatusOr<std::string> Connection::QueryText(std::string_view sql, std::string_view context) {
  GV_ASSIGN_OR_RETURN(Statement query, Prepare(sql, context));
  GV_ASSIGN_OR_RETURN(const bool row, query.Step());
  if (!row) return Error(absl::StatusCode::kInternal, context, "no row");
  return query.Text(0);
}

// --- transactions --------------------------------------------------------------

absl::StatusOr<Transaction> Transaction::Begin(Connection& db, Mode mode) {
  GV_RETURN_IF_ERROR(db.Run(db.BeginSql(mode), "begin transaction"));
  return Transaction(&db);
}

Transaction::~Transaction() {
  // Some errors (SQLite's SQLITE_FULL, SQLITE_IOERR…) already rolled the
  // transaction back; ROLLBACK is only issued while one is open.
  if (db_ != nullptr) db_->RollBackIfOpen();
}

absl::Status Transaction::Commit() {
  GV_RETURN_IF_ERROR(db_->Run("COMMIT", "commit transaction"));
  db_ = nullptr;
  return absl::OkStatus();
}

// --- migrations ----------------------------------------------------------------

namespace {

struct AppliedMigrations {
  int64_t newest = 0;
  int64_t count = 0;
};

absl::StatusOr<AppliedMigrations> ReadAppliedMigrations(Connection& db) {
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db.Prepare("SELECT coalesce(max(version), 0), count(*) FROM schema_migrations",
                 "read schema_migrations"));
  GV_ASSIGN_OR_RETURN(const bool row, query.Step());
  if (!row) return db.Error(absl::StatusCode::kInternal, "read schema_migrations", "no row");
  return AppliedMigrations{query.Int(0), query.Int(1)};
}

absl::Status CheckAppliedMigrations(const Connection& db, const AppliedMigrations& applied,
                                    int latest) {
  if (applied.newest > latest) {
    return absl::FailedPreconditionError(absl::StrCat(
        db.Describe(), " has schema version ", applied.newest, ", newer than version ", latest,
        " that this build of grantvault knows; run a newer grantvault (or restore a backup "
        "taken before the upgrade)"));
  }
  if (applied.count != applied.newest) {
    return absl::FailedPreconditionError(absl::StrCat(
        db.Describe(), " records ", applied.count, " schema migrations but its newest is version ",
        applied.newest, "; the schema history is inconsistent"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Migrate(Connection& db, absl::Span<const Migration> migrations) {
  const int latest = migrations.empty() ? 0 : migrations.back().version;
  GV_RETURN_IF_ERROR(db.Exec(db.MigrationsTableSql(), "create schema_migrations"));
  GV_ASSIGN_OR_RETURN(AppliedMigrations applied, ReadAppliedMigrations(db));
  GV_RETURN_IF_ERROR(CheckAppliedMigrations(db, applied, latest));
  for (const Migration& migration : migrations) {
    if (migration.version <= applied.newest) continue;
    GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, TransactionMode::kMigration));
    GV_RETURN_IF_ERROR(db.LockForMigration());
    // Another process may have migrated the database since we looked.
    GV_ASSIGN_OR_RETURN(applied, ReadAppliedMigrations(db));
    GV_RETURN_IF_ERROR(CheckAppliedMigrations(db, applied, latest));
    if (migration.version <= applied.newest) continue;
    const std::string context = absl::StrCat("apply schema migration ", migration.version);
    GV_RETURN_IF_ERROR(db.Exec(migration.sql, context));
    GV_ASSIGN_OR_RETURN(
        Statement record,
        db.Prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", context));
    record.BindInt(1, migration.version);
    record.BindTime(2, absl::Now());
    GV_RETURN_IF_ERROR(record.Run());
    GV_RETURN_IF_ERROR(txn.Commit());
    applied.newest = migration.version;
  }
  return absl::OkStatus();
}

}  // namespace grantvault::db
