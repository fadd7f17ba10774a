#include "db/postgres.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::db {
namespace {

// Type OIDs (pg_type.dat); stable across server versions.
constexpr Oid kBoolOid = 16;
constexpr Oid kByteaOid = 17;
constexpr Oid kInt8Oid = 20;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kTextOid = 25;

// The advisory lock that migrations hold, for the rest of their transaction.
constexpr char kMigrationLock[] = "SELECT pg_advisory_xact_lock(29111713315631730)";

std::string Trimmed(const char* message) {
  std::string text = message != nullptr ? message : "";
  absl::StripTrailingAsciiWhitespace(&text);
  return text;
}

uint64_t ReadBigEndian(const char* p, int length) {
  uint64_t v = 0;
  for (int i = 0; i < length; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// A statement on a Postgres connection: run with PQexecParams at the first
// Step after binding, its rows read from the result.
class PostgresStatement final : public StatementImpl {
 public:
  PostgresStatement(Postgres* db, std::string sql, int parameters, std::string context)
      : db_(db),
        sql_(std::move(sql)),
        values_(static_cast<size_t>(parameters)),
        // An unbound parameter is NULL, as text: a statement may leave out
        // one it does not use (the server could not infer its type).
        types_(static_cast<size_t>(parameters), kTextOid),
        formats_(static_cast<size_t>(parameters), 0),
        context_(std::move(context)) {}
  PostgresStatement(const PostgresStatement&) = delete;
  PostgresStatement& operator=(const PostgresStatement&) = delete;
  ~PostgresStatement() override {
    Clear();
    for (auto& value : values_) {
      if (value.has_value()) WipeString(*value);  // bound values may be sealed records
    }
  }

  void BindText(int index, std::string_view value) override {
    Bind(index, std::string(value), kTextOid, 0);
  }
  void BindInt(int index, int64_t value) override {
    Bind(index, std::to_string(value), kInt8Oid, 0);
  }
  void BindBlob(int index, absl::Span<const uint8_t> value) override {
    Bind(index, std::string(reinterpret_cast<const char*>(value.data()), value.size()), kByteaOid,
         1);
  }
  void BindNull(int index) override { Bind(index, std::nullopt, 0, 0); }

  absl::StatusOr<bool> Step() override {
    if (!bind_error_.ok()) return bind_error_;
    if (result_ == nullptr) {
      std::vector<const char*> values(values_.size());
      std::vector<int> lengths(values_.size());
      for (size_t i = 0; i < values_.size(); ++i) {
        if (values_[i].has_value()) {
          values[i] = values_[i]->data();
          lengths[i] = static_cast<int>(values_[i]->size());
        }
      }
      result_ = PQexecParams(db_->raw(), sql_.c_str(), static_cast<int>(values_.size()),
                             types_.data(), values.data(), lengths.data(), formats_.data(),
                             /*resultFormat=*/1);
      const ExecStatusType status =
          result_ != nullptr ? PQresultStatus(result_) : PGRES_FATAL_ERROR;
      if (status == PGRES_COMMAND_OK) {
        db_->NoteChanges(ChangedRows());
        return false;
      }
      if (status != PGRES_TUPLES_OK) {
        absl::Status error = db_->ResultError(result_, context_);
        Clear();
        return error;
      }
      row_ = -1;
    }
    ++row_;
    return row_ < PQntuples(result_);
  }

  void Reset() override { Clear(); }

  bool IsNull(int column) const override { return PQgetisnull(result_, row_, column) != 0; }
  int64_t Int(int column) const override {
    if (IsNull(column)) return 0;
    const char* value = PQgetvalue(result_, row_, column);
    const int length = PQgetlength(result_, row_, column);
    switch (PQftype(result_, column)) {
      case kInt8Oid:
        return static_cast<int64_t>(ReadBigEndian(value, 8));
      case kInt4Oid:
        return static_cast<int32_t>(ReadBigEndian(value, 4));
      case kInt2Oid:
        return static_cast<int16_t>(ReadBigEndian(value, 2));
      case kBoolOid:
        return length > 0 && value[0] != 0 ? 1 : 0;
      default:  // text and the like: as SQLite reads a number from text
        return std::strtoll(std::string(value, static_cast<size_t>(length)).c_str(), nullptr, 10);
    }
  }
  std::string Text(int column) const override {
    if (IsNull(column)) return std::string();
    switch (PQftype(result_, column)) {
      case kInt8Oid:
      case kInt4Oid:
      case kInt2Oid:
      case kBoolOid:
        return std::to_string(Int(column));
      default:  // text types (and bytea) arrive as their bytes
        return std::string(PQgetvalue(result_, row_, column),
                           static_cast<size_t>(PQgetlength(result_, row_, column)));
    }
  }
  std::vector<uint8_t> Blob(int column) const override {
    if (IsNull(column)) return {};
    const auto* data = reinterpret_cast<const uint8_t*>(PQgetvalue(result_, row_, column));
    return std::vector<uint8_t>(data,
                                data + static_cast<size_t>(PQgetlength(result_, row_, column)));
  }
  std::string Where() const override { return absl::StrCat(db_->owner(), ": ", context_); }

 private:
  void Bind(int index, std::optional<std::string> value, Oid type, int format) {
    if (index < 1 || static_cast<size_t>(index) > values_.size()) {
      if (bind_error_.ok()) {
        bind_error_ = db_->Error(
            absl::StatusCode::kInvalidArgument, context_,
            absl::StrCat("no parameter ", index, " (the statement has ", values_.size(), ")"));
      }
      return;
    }
    Clear();  // a new binding is for the next run
    auto& slot = values_[static_cast<size_t>(index - 1)];
    if (slot.has_value()) WipeString(*slot);
    slot = std::move(value);
    types_[static_cast<size_t>(index - 1)] = type;
    formats_[static_cast<size_t>(index - 1)] = format;
  }

  size_t ChangedRows() const {
    const char* tuples = PQcmdTuples(result_);
    return tuples != nullptr && *tuples != '\0' ? std::strtoull(tuples, nullptr, 10) : 0;
  }

  void Clear() {
    if (result_ != nullptr) PQclear(result_);
    result_ = nullptr;
    row_ = -1;
  }

  Postgres* db_;
  std::string sql_;
  std::vector<std::optional<std::string>> values_;
  std::vector<Oid> types_;
  std::vector<int> formats_;
  std::string context_;
  absl::Status bind_error_;
  PGresult* result_ = nullptr;
  int row_ = -1;
};

}  // namespace

absl::StatusCode CodeForSqlState(std::string_view state) {
  if (state.size() != 5) return absl::StatusCode::kInternal;
  if (state == "23505") return absl::StatusCode::kAlreadyExists;
  if (state == "23503" || state == "P0001") return absl::StatusCode::kFailedPrecondition;
  if (state == "40001" || state == "40P01" || state == "55P03" || state == "25006" ||
      state == "53300") {
    return absl::StatusCode::kUnavailable;  // try again (53300: too many connections)
  }
  if (state == "XX001" || state == "XX002") return absl::StatusCode::kDataLoss;
  const std::string_view cls = state.substr(0, 2);
  if (cls == "23" || cls == "22") return absl::StatusCode::kInvalidArgument;
  if (cls == "53") return absl::StatusCode::kResourceExhausted;
  if (cls == "08" || cls == "57") return absl::StatusCode::kUnavailable;
  return absl::StatusCode::kInternal;
}

std::string NumberParameters(std::string_view sql, int& count) {
  std::string out;
  out.reserve(sql.size() + 16);
  count = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {  // a literal or a quoted name, to its closing quote
      const size_t end = sql.find(c, i + 1);
      const size_t stop = end == std::string_view::npos ? sql.size() : end + 1;
      out.append(sql.substr(i, stop - i));
      i = stop - 1;
    } else if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      const size_t end = sql.find('\n', i);
      const size_t stop = end == std::string_view::npos ? sql.size() : end;
      out.append(sql.substr(i, stop - i));
      i = stop - 1;
    } else if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      const size_t end = sql.find("*/", i + 2);
      const size_t stop = end == std::string_view::npos ? sql.size() : end + 2;
      out.append(sql.substr(i, stop - i));
      i = stop - 1;
    } else if (c == '?') {
      // "?NNN" (SQLite's numbered parameter) is $NNN; a bare "?" the next one.
      size_t digits = i + 1;
      while (digits < sql.size() && absl::ascii_isdigit(static_cast<unsigned char>(sql[digits]))) {
        ++digits;
      }
      if (digits > i + 1) {
        const std::string_view number = sql.substr(i + 1, digits - i - 1);
        absl::StrAppend(&out, "$", Sv(number));
        count = std::max(count, std::atoi(std::string(number).c_str()));
        i = digits - 1;
      } else {
        absl::StrAppend(&out, "$", ++count);
      }
    } else {
      out.push_back(c);
    }
  }
  return out;
}

namespace {

// The keywords and values of a connection string (PQconninfoParse), or
// InvalidArgument.
absl::StatusOr<std::map<std::string, std::string>> ParseConninfo(const std::string& conninfo) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
  if (options == nullptr) {
    // libpq's message quotes the string, which may hold what must not be shown.
    if (error != nullptr) PQfreemem(error);
    return absl::InvalidArgumentError(
        "is not a libpq connection string or URI (keyword=value pairs, or "
        "postgresql://user@host:port/dbname?sslmode=verify-full)");
  }
  std::map<std::string, std::string> out;
  for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) out.emplace(o->keyword, o->val);
  }
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) WipeMemory(o->val, std::strlen(o->val));
  }
  PQconninfoFree(options);
  return out;
}

}  // namespace

absl::Status CheckConninfo(const std::string& conninfo) {
  using Options = std::map<std::string, std::string>;
  GV_ASSIGN_OR_RETURN(Options parsed, ParseConninfo(conninfo));
  const bool has_password = parsed.contains("password");
  for (auto& [keyword, value] : parsed) WipeString(value);
  if (has_password) {
    return absl::InvalidArgumentError(
        "holds a password: put it in a file of its own (store.password_file, or a systemd "
        "credential), never in the connection string");
  }
  return absl::OkStatus();
}

std::string ConninfoWeakness(const std::string& conninfo) {
  absl::StatusOr<std::map<std::string, std::string>> parsed = ParseConninfo(conninfo);
  if (!parsed.ok()) return "";
  const auto value = [&](const char* key) {
    auto it = parsed->find(key);
    return it == parsed->end() ? std::string() : it->second;
  };
  const std::string host = value("host").empty() ? value("hostaddr") : value("host");
  const std::string sslmode = value("sslmode");
  const std::vector<std::string> hosts = absl::StrSplit(host, ',');
  for (const std::string& h : hosts) {
    const bool local = h.empty() || h.front() == '/' || h.front() == '@' || h == "localhost" ||
                       absl::StartsWith(h, "127.") || h == "::1";
    if (!local && sslmode != "verify-full" && sslmode != "verify-ca") {
      return absl::StrCat("the server ", h, " is reached over TCP with sslmode=",
                          sslmode.empty() ? "prefer (the default)" : sslmode,
                          ": its identity is not checked; use sslmode=verify-full with "
                          "sslrootcert");
    }
  }
  return "";
}

absl::StatusOr<std::string> ReadPasswordFile(const std::string& path) {
  // The project's secret-file rules: ours, 0600 or 0400, a regular file, not
  // through a symlink, one trailing newline dropped.
  GV_ASSIGN_OR_RETURN(const SecretBytes secret, ReadSecretFile(path));
  const std::string_view text = secret.view();
  if (text.find('\n') != std::string_view::npos || text.find('\0') != std::string_view::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat("password file ", path, " must hold the password alone, on one line"));
  }
  return std::string(text);
}

absl::StatusOr<std::unique_ptr<Postgres>> Postgres::Connect(PostgresOptions options) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError("PostgreSQL connection string must not be empty");
  }
  std::unique_ptr<Postgres> db(new Postgres(std::move(options)));
  GV_RETURN_IF_ERROR(db->Open());
  return db;
}

absl::Status Postgres::Open() {
  std::string password;
  if (!options_.password_file.empty()) {
    GV_ASSIGN_OR_RETURN(password, ReadPasswordFile(options_.password_file));
  }
  const std::string timeout =
      std::to_string(std::max<int64_t>(1, absl::ToInt64Seconds(options_.connect_timeout)));
  // The connection string first: the keywords after it override what it says.
  std::vector<const char*> keywords = {"dbname", "connect_timeout", "application_name"};
  std::vector<const char*> values = {options_.conninfo.c_str(), timeout.c_str(), "grantvaultd"};
  if (!password.empty()) {
    keywords.push_back("password");
    values.push_back(password.c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = PQconnectdbParams(keywords.data(), values.data(), /*expand_dbname=*/1);
  WipeString(password);
  if (conn_ == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
  if (PQstatus(conn_) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat(options_.owner, ": connect to ", Describe(), ": ",
                                               Trimmed(PQerrorMessage(conn_))));
  }
  // The server's notices ("already exists, skipping") are not errors, and
  // libpq would print them on stderr.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  if (!options_.origin.empty()) {
    const char* origin[] = {options_.origin.c_str()};
    PGresult* set = PQexecParams(conn_, "SELECT set_config('grantvault.origin', $1, false)", 1,
                                 nullptr, origin, nullptr, nullptr, 0);
    const bool ok = set != nullptr && PQresultStatus(set) == PGRES_TUPLES_OK;
    absl::Status error = ok ? absl::OkStatus() : ResultError(set, "name this host's session");
    PQclear(set);
    GV_RETURN_IF_ERROR(error);
  }
  return absl::OkStatus();
}

absl::Status Postgres::Listen(std::string_view channel) {
  if (channel.empty() || !std::all_of(channel.begin(), channel.end(), [](char c) {
        return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
      })) {
    return absl::InvalidArgumentError("a notification channel is letters, digits and '_'");
  }
  const std::string sql = absl::StrCat("LISTEN ", Sv(channel));
  return Exec(sql.c_str(), absl::StrCat("listen on ", Sv(channel)));
}

absl::StatusOr<int> Postgres::WaitForNotifications(absl::Duration timeout) {
  auto lost = [&] {
    return absl::UnavailableError(absl::StrCat(options_.owner, ": the connection to ", Describe(),
                                               " was lost: ", Trimmed(PQerrorMessage(conn_))));
  };
  if (!Healthy()) return lost();
  auto take = [&] {
    int n = 0;
    while (PGnotify* notify = PQnotifies(conn_)) {
      PQfreemem(notify);
      ++n;
    }
    return n;
  };
  if (PQconsumeInput(conn_) == 0) return lost();
  if (int n = take(); n > 0) return n;
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  if (fd.fd < 0) return lost();
  const int ms = static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(timeout), 0, 24 * 3600 * 1000));
  const int ready = ::poll(&fd, 1, ms);
  if (ready < 0 && errno != EINTR) return lost();
  if (ready <= 0) return 0;
  if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) return lost();
  return take();
}

Postgres::~Postgres() {
  if (conn_ != nullptr) PQfinish(conn_);
}

bool Postgres::Healthy() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }

absl::Status Postgres::Reconnect() { return Open(); }

std::string Postgres::Describe() const {
  if (conn_ == nullptr || PQdb(conn_) == nullptr) return "PostgreSQL database";
  const char* host = PQhost(conn_);
  return absl::StrCat("PostgreSQL database ", PQdb(conn_), " on ", host != nullptr ? host : "?",
                      ":", PQport(conn_) != nullptr ? PQport(conn_) : "?");
}

absl::Status Postgres::ResultError(const pg_result* result, std::string_view context) const {
  if (result == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    return Error(
        absl::StatusCode::kUnavailable, context,
        absl::StrCat("the connection to the server is lost: ", Trimmed(PQerrorMessage(conn_))));
  }
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  const std::string sqlstate = state != nullptr ? state : "";
  const absl::StatusCode code = CodeForSqlState(sqlstate);
  std::string detail;
  if (sqlstate.rfind("22", 0) == 0) {
    // Its message may quote the value: name the column, if the server did.
    const char* column = PQresultErrorField(result, PG_DIAG_COLUMN_NAME);
    detail = absl::StrCat("a value the schema refuses",
                          column != nullptr ? absl::StrCat(" in column ", column) : "");
  } else {
    detail = Trimmed(PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY));
  }
  return Error(code, context, absl::StrCat(detail, " (SQLSTATE ", sqlstate, ")"));
}

absl::Status Postgres::Exec(const char* sql, std::string_view context) {
  PGresult* result = PQexec(conn_, sql);
  const ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  absl::Status outcome = absl::OkStatus();
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    outcome = ResultError(result, context);
  }
  PQclear(result);
  return outcome;
}

absl::StatusOr<Statement> Postgres::Prepare(std::string_view sql, std::string_view context) {
  int parameters = 0;
  std::string numbered = NumberParameters(sql, parameters);
  return Statement(std::make_unique<PostgresStatement>(this, std::move(numbered), parameters,
                                                       std::string(context)));
}

bool Postgres::InTransaction() const {
  const PGTransactionStatusType status = PQtransactionStatus(conn_);
  return status == PQTRANS_INTRANS || status == PQTRANS_INERROR;
}

void Postgres::RollBackIfOpen() {
  if (InTransaction()) PQclear(PQexec(conn_, "ROLLBACK"));
}

const char* Postgres::BeginSql(TransactionMode mode) const {
  switch (mode) {
    case TransactionMode::kDeferred:
      return "BEGIN ISOLATION LEVEL REPEATABLE READ";
    case TransactionMode::kImmediate:
      return "BEGIN ISOLATION LEVEL SERIALIZABLE";
    case TransactionMode::kMigration:
      // Not a snapshot: it would be taken by the lock's statement, before
      // the wait, and miss what the host that held the lock committed.
      return "BEGIN ISOLATION LEVEL READ COMMITTED";
  }
  return "BEGIN";
}

const char* Postgres::MigrationsTableSql() const {
  // One implicit transaction, under the migrations' lock: hosts starting
  // together create the table once.
  static const std::string sql =
      absl::StrCat(kMigrationLock,
                   "; CREATE TABLE IF NOT EXISTS schema_migrations ("
                   "version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)");
  return sql.c_str();
}

absl::Status Postgres::LockForMigration() {
  return Exec(kMigrationLock, "wait for other hosts' migrations");
}

absl::StatusOr<std::string> Postgres::ExecForTesting(std::string_view sql) {
  const std::string text(sql);
  PGresult* result = PQexec(conn_, text.c_str());
  const ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    absl::Status error = ResultError(result, "execute SQL for testing");
    PQclear(result);
    return error;
  }
  std::string first;
  if (status == PGRES_TUPLES_OK && PQntuples(result) > 0 && PQnfields(result) > 0 &&
      PQgetisnull(result, 0, 0) == 0) {
    first = PQgetvalue(result, 0, 0);
  }
  PQclear(result);
  return first;
}

}  // namespace grantvault::db
