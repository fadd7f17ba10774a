#include "audit/record_format.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <sodium.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace grantvault::audit::format {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// Largest time the fixed-width format can hold: 9999-12-31T23:59:59.999999Z.
constexpr int64_t kMaxMicros = 253402300799999999;
constexpr size_t kMaxLineBytes = 1 << 20;

void AppendField(std::string& out, std::string_view value) {
  absl::StrAppend(&out, value.size(), ":", Sv(value), "\n");
}

std::string Base64(const std::vector<uint8_t>& bytes) {
  std::string out(sodium_base64_encoded_len(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(),
                    sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

absl::StatusOr<std::vector<uint8_t>> FromBase64(std::string_view text) {
  std::vector<uint8_t> out(text.size());
  size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr, &len, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != text.data() + text.size()) {
    return absl::DataLossError("not valid base64");
  }
  out.resize(len);
  return out;
}

bool IsLowerHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Accepts only the canonical decimal form (no sign, no leading zeros).
std::optional<uint64_t> ParseCanonicalUint(std::string_view s) {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

bool IsCanonicalInt(std::string_view s, bool is_signed) {
  if (is_signed && s.size() > 1 && s[0] == '-' && s[1] != '0') s.remove_prefix(1);
  return ParseCanonicalUint(s).has_value();
}

// --- JSON helpers ------------------------------------------------------------

std::string Dump(const OrderedJson& j) {
  // Records hold valid UTF-8 (Append replaces invalid sequences); a database
  // edited by hand may not, and must not make the export throw.
  return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

// Parses one JSON text strictly: no duplicate keys at any level.
absl::StatusOr<Json> ParseStrictJson(std::string_view text) {
  std::vector<std::set<std::string>> keys;
  bool duplicate = false;
  Json::parser_callback_t callback = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get_ref<const std::string&>()).second) {
          duplicate = true;
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json j = Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError("not valid JSON");
  if (duplicate) return absl::DataLossError("a JSON object repeats a key");
  return j;
}

absl::StatusOr<std::vector<std::string>> StringList(const Json& j, std::string_view name) {
  if (!j.is_array()) {
    return absl::DataLossError(absl::StrCat("field \"", Sv(name), "\" is not an array"));
  }
  std::vector<std::string> out;
  for (const Json& item : j) {
    if (!item.is_string()) {
      return absl::DataLossError(
          absl::StrCat("field \"", Sv(name), "\" holds something other than strings"));
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> StringMap(const Json& j, std::string_view name) {
  if (!j.is_object()) {
    return absl::DataLossError(absl::StrCat("field \"", Sv(name), "\" is not an object"));
  }
  std::map<std::string, std::string> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::DataLossError(
          absl::StrCat("field \"", Sv(name), "\" holds something other than strings"));
    }
    out.emplace(it.key(), it.value().get<std::string>());
  }
  return out;
}

OrderedJson ListJson(const std::vector<std::string>& list) {
  OrderedJson j = OrderedJson::array();
  for (const std::string& s : list) j.push_back(s);
  return j;
}

OrderedJson MapJson(const std::map<std::string, std::string>& map) {
  OrderedJson j = OrderedJson::object();
  for (const auto& [k, v] : map) j[k] = v;
  return j;
}

// --- fields: one interface over a JSON object and a CSV row -------------------

class FieldSource {
 public:
  virtual ~FieldSource() = default;
  virtual absl::StatusOr<std::string> Str(std::string_view name) = 0;
  virtual absl::StatusOr<std::optional<std::string>> OptStr(std::string_view name) = 0;
  virtual absl::StatusOr<uint64_t> Uint(std::string_view name) = 0;
  // "" when absent, else the canonical decimal form.
  virtual absl::StatusOr<std::string> OptInt(std::string_view name, bool is_signed) = 0;
  virtual absl::StatusOr<std::vector<std::string>> List(std::string_view name) = 0;
  virtual absl::StatusOr<std::map<std::string, std::string>> Map(std::string_view name) = 0;
  virtual bool is_json() const = 0;
  // DataLoss when a field was not read (JSON) or is set but unused (CSV).
  virtual absl::Status Finish() = 0;
};

class JsonFields final : public FieldSource {
 public:
  explicit JsonFields(const Json& object) : object_(object) {}

  absl::StatusOr<std::string> Str(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    if (!j->is_string()) return Wrong(name, "a string");
    return j->get<std::string>();
  }
  absl::StatusOr<std::optional<std::string>> OptStr(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    if (j->is_null()) return std::optional<std::string>();
    if (!j->is_string()) return Wrong(name, "a string or null");
    return std::optional<std::string>(j->get<std::string>());
  }
  absl::StatusOr<uint64_t> Uint(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    if (!j->is_number_unsigned()) return Wrong(name, "an unsigned integer");
    return j->get<uint64_t>();
  }
  absl::StatusOr<std::string> OptInt(std::string_view name, bool is_signed) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    if (j->is_null()) return std::string();
    if (j->is_number_unsigned()) return std::to_string(j->get<uint64_t>());
    if (is_signed && j->is_number_integer()) return std::to_string(j->get<int64_t>());
    return Wrong(name, "an integer or null");
  }
  absl::StatusOr<std::vector<std::string>> List(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    return StringList(*j, name);
  }
  absl::StatusOr<std::map<std::string, std::string>> Map(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(const Json* j, Get(name));
    return StringMap(*j, name);
  }
  bool is_json() const override { return true; }
  absl::Status Finish() override { return CheckAllUsed(object_, ""); }

 private:
  absl::StatusOr<const Json*> Get(std::string_view name) {
    used_.insert(std::string(name));
    const Json* at = &object_;
    std::string_view rest = name;
    while (true) {
      size_t dot = rest.find('.');
      std::string key(rest.substr(0, dot));
      if (!at->is_object()) break;
      auto it = at->find(key);
      if (it == at->end()) break;
      at = &*it;
      if (dot == std::string_view::npos) return at;
      rest.remove_prefix(dot + 1);
    }
    return absl::DataLossError(absl::StrCat("field \"", Sv(name), "\" is missing"));
  }
  static absl::Status Wrong(std::string_view name, std::string_view what) {
    return absl::DataLossError(absl::StrCat("field \"", Sv(name), "\" is not ", Sv(what)));
  }
  absl::Status CheckAllUsed(const Json& object, const std::string& prefix) {
    for (auto it = object.begin(); it != object.end(); ++it) {
      std::string path = prefix + it.key();
      if (used_.count(path) != 0) continue;
      if (it.value().is_object() && prefix.empty() && it.key() == "actor") {
        GV_RETURN_IF_ERROR(CheckAllUsed(it.value(), path + "."));
        continue;
      }
      return absl::DataLossError(absl::StrCat("unexpected field \"", path, "\""));
    }
    return absl::OkStatus();
  }

  const Json& object_;
  std::set<std::string> used_;
};

constexpr std::array<std::string_view, 28> kCsvColumns = {
    "kind",         "chain",        "seq",        "time",    "type",      "prev_hash", "body_hash",
    "hash",         "workspace_id", "admin_user", "uid",     "pid",       "exe",       "grant_id",
    "connector_id", "account_id",   "scopes",     "outcome", "reason",    "details",   "key_label",
    "signature",    "since",        "until",      "types",   "first_seq", "last_seq",  "entries"};

// Field names that live in a differently named CSV column.
std::string_view CsvColumnFor(std::string_view name) {
  if (name == "head_hash") return "hash";
  if (name == "exported_at") return "time";
  if (name.starts_with("actor.")) return name.substr(6);
  return name;
}

class CsvFields final : public FieldSource {
 public:
  explicit CsvFields(const std::vector<std::string>& cells) : cells_(cells) {}

  absl::StatusOr<std::string> Str(std::string_view name) override { return Cell(name); }
  absl::StatusOr<std::optional<std::string>> OptStr(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(std::string cell, Cell(name));
    if (cell.empty()) return std::optional<std::string>();
    return std::optional<std::string>(std::move(cell));
  }
  absl::StatusOr<uint64_t> Uint(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(std::string cell, Cell(name));
    std::optional<uint64_t> value = ParseCanonicalUint(cell);
    if (!value.has_value()) {
      return absl::DataLossError(
          absl::StrCat("field \"", Sv(name), "\" is not an unsigned integer"));
    }
    return *value;
  }
  absl::StatusOr<std::string> OptInt(std::string_view name, bool is_signed) override {
    GV_ASSIGN_OR_RETURN(std::string cell, Cell(name));
    if (!cell.empty() && !IsCanonicalInt(cell, is_signed)) {
      return absl::DataLossError(absl::StrCat("field \"", Sv(name), "\" is not an integer"));
    }
    return cell;
  }
  absl::StatusOr<std::vector<std::string>> List(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(std::string cell, Cell(name));
    GV_ASSIGN_OR_RETURN(Json j, ParseStrictJson(cell));
    return StringList(j, name);
  }
  absl::StatusOr<std::map<std::string, std::string>> Map(std::string_view name) override {
    GV_ASSIGN_OR_RETURN(std::string cell, Cell(name));
    GV_ASSIGN_OR_RETURN(Json j, ParseStrictJson(cell));
    return StringMap(j, name);
  }
  bool is_json() const override { return false; }
  absl::Status Finish() override {
    for (size_t i = 0; i < kCsvColumns.size(); ++i) {
      if (!used_[i] && !cells_[i].empty()) {
        return absl::DataLossError(
            absl::StrCat("column \"", Sv(kCsvColumns[i]), "\" must be empty in this kind of row"));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::string> Cell(std::string_view name) {
    std::string_view column = CsvColumnFor(name);
    for (size_t i = 0; i < kCsvColumns.size(); ++i) {
      if (kCsvColumns[i] == column) {
        used_[i] = true;
        return cells_[i];
      }
    }
    return absl::InternalError(absl::StrCat("no CSV column for field ", Sv(name)));
  }

  const std::vector<std::string>& cells_;
  std::array<bool, kCsvColumns.size()> used_{};
};

absl::Status ParseHash(FieldSource& f, std::string_view name, std::string& out) {
  GV_ASSIGN_OR_RETURN(out, f.Str(name));
  if (!IsLowerHex64(out)) {
    return absl::DataLossError(
        absl::StrCat("field \"", Sv(name), "\" is not 64 lower-case hex digits"));
  }
  return absl::OkStatus();
}

absl::Status ParseTimeField(FieldSource& f, std::string_view name, std::string& out) {
  GV_ASSIGN_OR_RETURN(out, f.Str(name));
  if (!IsCanonicalTime(out)) {
    return absl::DataLossError(
        absl::StrCat("field \"", Sv(name), "\" is not a time like 2026-01-31T12:00:00.000000Z"));
  }
  return absl::OkStatus();
}

absl::Status ParseSignature(FieldSource& f, std::vector<uint8_t>& out) {
  GV_ASSIGN_OR_RETURN(std::string text, f.Str("signature"));
  absl::StatusOr<std::vector<uint8_t>> bytes = FromBase64(text);
  if (!bytes.ok()) return absl::DataLossError("field \"signature\" is not valid base64");
  out = std::move(*bytes);
  return absl::OkStatus();
}

absl::Status ParseEntry(FieldSource& f, Entry& entry) {
  GV_ASSIGN_OR_RETURN(std::string kind, f.Str("kind"));
  if (kind == "export") {
    entry.kind = Entry::Kind::kStatement;
    Statement& s = entry.statement;
    s = Statement();
    if (f.is_json()) {
      GV_ASSIGN_OR_RETURN(std::string name, f.Str("format"));
      GV_ASSIGN_OR_RETURN(uint64_t version, f.Uint("version"));
      if (name != kExportFormatName || version != kExportFormatVersion) {
        return absl::DataLossError(absl::StrCat("not a ", Sv(kExportFormatName), " version ",
                                                kExportFormatVersion, " file"));
      }
    }
    GV_ASSIGN_OR_RETURN(s.chain, f.Str("chain"));
    GV_ASSIGN_OR_RETURN(s.workspace_id, f.Str("workspace_id"));
    GV_ASSIGN_OR_RETURN(s.since, f.OptStr("since"));
    GV_ASSIGN_OR_RETURN(s.until, f.OptStr("until"));
    for (const auto* bound : {&s.since, &s.until}) {
      if (bound->has_value() && !IsCanonicalTime(**bound)) {
        return absl::DataLossError("field \"since\" or \"until\" is not a canonical time");
      }
    }
    GV_ASSIGN_OR_RETURN(s.types, f.List("types"));
    GV_ASSIGN_OR_RETURN(s.first_seq, f.Uint("first_seq"));
    GV_ASSIGN_OR_RETURN(s.last_seq, f.Uint("last_seq"));
    GV_ASSIGN_OR_RETURN(s.entries, f.Uint("entries"));
    GV_RETURN_IF_ERROR(ParseTimeField(f, "exported_at", s.exported_at));
    GV_ASSIGN_OR_RETURN(s.key_label, f.Str("key_label"));
    GV_RETURN_IF_ERROR(ParseSignature(f, s.signature));
  } else if (kind == "record" || kind == "stub") {
    entry.kind = Entry::Kind::kRecord;
    Record& r = entry.record;
    r = Record();
    r.stub = kind == "stub";
    GV_ASSIGN_OR_RETURN(r.chain, f.Str("chain"));
    GV_ASSIGN_OR_RETURN(r.seq, f.Uint("seq"));
    GV_RETURN_IF_ERROR(ParseTimeField(f, "time", r.time));
    GV_ASSIGN_OR_RETURN(r.type, f.Str("type"));
    GV_RETURN_IF_ERROR(ParseHash(f, "prev_hash", r.prev_hash));
    GV_RETURN_IF_ERROR(ParseHash(f, "body_hash", r.body_hash));
    GV_RETURN_IF_ERROR(ParseHash(f, "hash", r.hash));
    if (!r.stub) {
      RecordBody& b = r.body;
      GV_ASSIGN_OR_RETURN(b.workspace_id, f.Str("workspace_id"));
      GV_ASSIGN_OR_RETURN(b.admin_user, f.Str("actor.admin_user"));
      GV_ASSIGN_OR_RETURN(b.uid, f.OptInt("actor.uid", false));
      GV_ASSIGN_OR_RETURN(b.pid, f.OptInt("actor.pid", true));
      GV_ASSIGN_OR_RETURN(b.exe, f.Str("actor.exe"));
      GV_ASSIGN_OR_RETURN(b.grant_id, f.Str("grant_id"));
      GV_ASSIGN_OR_RETURN(b.connector_id, f.Str("connector_id"));
      GV_ASSIGN_OR_RETURN(b.account_id, f.Str("account_id"));
      GV_ASSIGN_OR_RETURN(b.scopes, f.List("scopes"));
      GV_ASSIGN_OR_RETURN(b.outcome, f.Str("outcome"));
      GV_ASSIGN_OR_RETURN(b.reason, f.Str("reason"));
      GV_ASSIGN_OR_RETURN(b.details, f.Map("details"));
    }
  } else if (kind == "checkpoint") {
    entry.kind = Entry::Kind::kCheckpoint;
    Checkpoint& c = entry.checkpoint;
    c = Checkpoint();
    GV_ASSIGN_OR_RETURN(c.chain, f.Str("chain"));
    GV_ASSIGN_OR_RETURN(c.seq, f.Uint("seq"));
    GV_RETURN_IF_ERROR(ParseHash(f, "head_hash", c.head_hash));
    GV_RETURN_IF_ERROR(ParseTimeField(f, "time", c.time));
    GV_ASSIGN_OR_RETURN(c.key_label, f.Str("key_label"));
    GV_RETURN_IF_ERROR(ParseSignature(f, c.signature));
  } else {
    return absl::DataLossError(absl::StrCat("unknown entry kind \"", kind, "\""));
  }
  return f.Finish();
}

// --- JSONL -------------------------------------------------------------------

class JsonlWriter final : public ExportWriter {
 public:
  explicit JsonlWriter(std::ostream& out) : out_(out) {}

  void Write(const Statement& s) override {
    OrderedJson j;
    j["kind"] = "export";
    j["format"] = kExportFormatName;
    j["version"] = kExportFormatVersion;
    j["chain"] = s.chain;
    j["workspace_id"] = s.workspace_id;
    j["since"] = s.since.has_value() ? OrderedJson(*s.since) : OrderedJson(nullptr);
    j["until"] = s.until.has_value() ? OrderedJson(*s.until) : OrderedJson(nullptr);
    j["types"] = ListJson(s.types);
    j["first_seq"] = s.first_seq;
    j["last_seq"] = s.last_seq;
    j["entries"] = s.entries;
    j["exported_at"] = s.exported_at;
    j["key_label"] = s.key_label;
    j["signature"] = Base64(s.signature);
    out_ << Dump(j) << '\n';
  }

  void Write(const Record& r) override {
    OrderedJson j;
    j["kind"] = r.stub ? "stub" : "record";
    j["chain"] = r.chain;
    j["seq"] = r.seq;
    j["time"] = r.time;
    j["type"] = r.type;
    j["prev_hash"] = r.prev_hash;
    j["body_hash"] = r.body_hash;
    j["hash"] = r.hash;
    if (!r.stub) {
      const RecordBody& b = r.body;
      j["workspace_id"] = b.workspace_id;
      OrderedJson actor;
      actor["admin_user"] = b.admin_user;
      actor["uid"] = NumberOrNull(b.uid);
      actor["pid"] = NumberOrNull(b.pid);
      actor["exe"] = b.exe;
      j["actor"] = std::move(actor);
      j["grant_id"] = b.grant_id;
      j["connector_id"] = b.connector_id;
      j["account_id"] = b.account_id;
      j["scopes"] = ListJson(b.scopes);
      j["outcome"] = b.outcome;
      j["reason"] = b.reason;
      j["details"] = MapJson(b.details);
    }
    out_ << Dump(j) << '\n';
  }

  void Write(const Checkpoint& c) override {
    OrderedJson j;
    j["kind"] = "checkpoint";
    j["chain"] = c.chain;
    j["seq"] = c.seq;
    j["head_hash"] = c.head_hash;
    j["time"] = c.time;
    j["key_label"] = c.key_label;
    j["signature"] = Base64(c.signature);
    out_ << Dump(j) << '\n';
  }

 private:
  static OrderedJson NumberOrNull(const std::string& decimal) {
    if (decimal.empty()) return nullptr;
    if (decimal[0] == '-') {
      int64_t v = 0;
      std::from_chars(decimal.data(), decimal.data() + decimal.size(), v);
      return v;
    }
    uint64_t v = 0;
    std::from_chars(decimal.data(), decimal.data() + decimal.size(), v);
    return v;
  }

  std::ostream& out_;
};

class JsonlReader final : public ExportReader {
 public:
  explicit JsonlReader(std::istream& in) : in_(in) {}

  absl::StatusOr<bool> Next(Entry& entry) override {
    std::string line;
    while (true) {
      if (!std::getline(in_, line)) {
        if (in_.bad()) return absl::DataLossError("cannot read the export");
        return false;
      }
      ++line_;
      if (line.size() > kMaxLineBytes) {
        return absl::DataLossError(absl::StrCat("line ", line_, ": longer than 1 MiB"));
      }
      if (!line.empty()) break;  // a blank line (e.g. the file's last) carries nothing
    }
    entry.line = line_;
    absl::StatusOr<Json> j = ParseStrictJson(line);
    if (!j.ok())
      return absl::DataLossError(absl::StrCat("line ", line_, ": ", j.status().message()));
    if (!j->is_object()) {
      return absl::DataLossError(absl::StrCat("line ", line_, ": not a JSON object"));
    }
    JsonFields fields(*j);
    absl::Status parsed = ParseEntry(fields, entry);
    if (!parsed.ok()) {
      return absl::DataLossError(absl::StrCat("line ", line_, ": ", parsed.message()));
    }
    return true;
  }
  std::string format() const override { return "jsonl"; }

 private:
  std::istream& in_;
  uint64_t line_ = 0;
};

// --- CSV (RFC 4180) ------------------------------------------------------------

// Cells that a spreadsheet would take for a formula (or that start with the
// escape itself) get a leading apostrophe, which readers drop again.
std::string CsvCell(std::string_view value) {
  std::string cell;
  if (!value.empty() && std::string_view("=+-@\t\r'").find(value[0]) != std::string_view::npos) {
    cell = "'";
  }
  cell.append(value);
  if (cell.find_first_of(",\"\r\n") == std::string::npos) return cell;
  std::string quoted = "\"";
  for (char c : cell) {
    if (c == '"') quoted.push_back('"');
    quoted.push_back(c);
  }
  quoted.push_back('"');
  return quoted;
}

class CsvWriter final : public ExportWriter {
 public:
  explicit CsvWriter(std::ostream& out) : out_(out) {
    out_ << absl::StrJoin(kCsvColumns, ",", [](std::string* s, std::string_view c) {
      s->append(c);
    }) << "\r\n";
  }

  void Write(const Statement& s) override {
    Row row;
    row.Set("kind", "export");
    row.Set("chain", s.chain);
    row.Set("workspace_id", s.workspace_id);
    row.Set("since", s.since.value_or(""));
    row.Set("until", s.until.value_or(""));
    row.Set("types", Dump(ListJson(s.types)));
    row.Set("first_seq", std::to_string(s.first_seq));
    row.Set("last_seq", std::to_string(s.last_seq));
    row.Set("entries", std::to_string(s.entries));
    row.Set("time", s.exported_at);
    row.Set("key_label", s.key_label);
    row.Set("signature", Base64(s.signature));
    Emit(row);
  }

  void Write(const Record& r) override {
    Row row;
    row.Set("kind", r.stub ? "stub" : "record");
    row.Set("chain", r.chain);
    row.Set("seq", std::to_string(r.seq));
    row.Set("time", r.time);
    row.Set("type", r.type);
    row.Set("prev_hash", r.prev_hash);
    row.Set("body_hash", r.body_hash);
    row.Set("hash", r.hash);
    if (!r.stub) {
      const RecordBody& b = r.body;
      row.Set("workspace_id", b.workspace_id);
      row.Set("admin_user", b.admin_user);
      row.Set("uid", b.uid);
      row.Set("pid", b.pid);
      row.Set("exe", b.exe);
      row.Set("grant_id", b.grant_id);
      row.Set("connector_id", b.connector_id);
      row.Set("account_id", b.account_id);
      row.Set("scopes", Dump(ListJson(b.scopes)));
      row.Set("outcome", b.outcome);
      row.Set("reason", b.reason);
      row.Set("details", Dump(MapJson(b.details)));
    }
    Emit(row);
  }

  void Write(const Checkpoint& c) override {
    Row row;
    row.Set("kind", "checkpoint");
    row.Set("chain", c.chain);
    row.Set("seq", std::to_string(c.seq));
    row.Set("hash", c.head_hash);
    row.Set("time", c.time);
    row.Set("key_label", c.key_label);
    row.Set("signature", Base64(c.signature));
    Emit(row);
  }

 private:
  struct Row {
    std::array<std::string, kCsvColumns.size()> cells;
    void Set(std::string_view column, std::string value) {
      for (size_t i = 0; i < kCsvColumns.size(); ++i) {
        if (kCsvColumns[i] == column) {
          cells[i] = std::move(value);
          return;
        }
      }
    }
  };
  void Emit(const Row& row) {
    out_ << absl::StrJoin(row.cells, ",", [](std::string* s, const std::string& c) {
      s->append(CsvCell(c));
    }) << "\r\n";
  }

  std::ostream& out_;
};

class CsvReader final : public ExportReader {
 public:
  explicit CsvReader(std::istream& in) : in_(in) {}

  absl::StatusOr<bool> Next(Entry& entry) override {
    if (!header_read_) {
      std::vector<std::string> header;
      GV_ASSIGN_OR_RETURN(bool got, ReadRow(header));
      if (!got || header.size() != kCsvColumns.size() ||
          !std::equal(header.begin(), header.end(), kCsvColumns.begin())) {
        return absl::DataLossError(
            absl::StrCat("line 1: not a grantvault audit CSV header (expected: ",
                         absl::StrJoin(kCsvColumns, ",",
                                       [](std::string* s, std::string_view c) { s->append(c); }),
                         ")"));
      }
      header_read_ = true;
    }
    std::vector<std::string> cells;
    GV_ASSIGN_OR_RETURN(bool got, ReadRow(cells));
    if (!got) return false;
    entry.line = row_line_;
    if (cells.size() != kCsvColumns.size()) {
      return absl::DataLossError(absl::StrCat("line ", row_line_, ": ", cells.size(),
                                              " columns, expected ", kCsvColumns.size()));
    }
    CsvFields fields(cells);
    absl::Status parsed = ParseEntry(fields, entry);
    if (!parsed.ok()) {
      return absl::DataLossError(absl::StrCat("line ", row_line_, ": ", parsed.message()));
    }
    return true;
  }
  std::string format() const override { return "csv"; }

 private:
  // Reads one RFC 4180 record (quoted cells may span lines). Blank lines are
  // skipped. False at the end of the input.
  absl::StatusOr<bool> ReadRow(std::vector<std::string>& cells) {
    cells.clear();
    int c = in_.get();
    while (c == '\r' || c == '\n') {
      if (c == '\n') ++line_;
      c = in_.get();
    }
    if (c == std::char_traits<char>::eof()) return false;
    row_line_ = line_ + 1;
    std::string cell;
    bool quoted = false, was_quoted = false;
    size_t bytes = 0;
    auto finish_cell = [&] {
      if (!cell.empty() && cell[0] == '\'') cell.erase(0, 1);
      cells.push_back(std::move(cell));
      cell.clear();
      was_quoted = false;
    };
    while (true) {
      if (++bytes > kMaxLineBytes) {
        return absl::DataLossError(absl::StrCat("line ", row_line_, ": row longer than 1 MiB"));
      }
      if (c == std::char_traits<char>::eof()) {
        if (quoted) {
          return absl::DataLossError(
              absl::StrCat("line ", row_line_, ": unterminated quoted cell"));
        }
        finish_cell();
        ++line_;
        return true;
      }
      char ch = static_cast<char>(c);
      if (quoted) {
        if (ch == '"') {
          if (in_.peek() == '"') {
            in_.get();
            cell.push_back('"');
          } else {
            quoted = false;
          }
        } else {
          if (ch == '\n') ++line_;
          cell.push_back(ch);
        }
      } else if (ch == '"' && cell.empty() && !was_quoted) {
        quoted = was_quoted = true;
      } else if (ch == ',') {
        finish_cell();
      } else if (ch == '\r' || ch == '\n') {
        if (ch == '\r' && in_.peek() == '\n') in_.get();
        finish_cell();
        ++line_;
        return true;
      } else if (was_quoted) {
        return absl::DataLossError(absl::StrCat("line ", line_ + 1, ": text after a quoted cell"));
      } else {
        cell.push_back(ch);
      }
      c = in_.get();
    }
  }

  std::istream& in_;
  bool header_read_ = false;
  uint64_t line_ = 0;      // lines consumed so far
  uint64_t row_line_ = 0;  // where the current row started
};

}  // namespace

std::string ChainIdFor(std::string_view workspace_id) {
  if (workspace_id.empty()) return std::string(kSystemChain);
  return absl::StrCat(Sv(kWorkspaceChainPrefix), Sv(workspace_id));
}

absl::StatusOr<std::string> FormatTime(int64_t unix_micros) {
  if (unix_micros < 0 || unix_micros > kMaxMicros) {
    return absl::InvalidArgumentError(
        absl::StrCat("time ", unix_micros, " µs since 1970 is outside years 1970..9999"));
  }
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::FromUnixMicros(unix_micros),
                          absl::UTCTimeZone());
}

bool IsCanonicalTime(std::string_view t) {
  static constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
  if (t.size() != kShape.size()) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    if (kShape[i] == 'd' ? (t[i] < '0' || t[i] > '9') : t[i] != kShape[i]) return false;
  }
  return true;
}

namespace {

constexpr std::string_view kBodyHeader = "grantvault.audit.body.v1\n";

// Calls `field` with every field of the canonical body, in order (after
// kBodyHeader): CanonicalBody and CanonicalBodySize walk the same fields.
template <typename F>
void ForEachBodyField(const RecordBody& b, F&& field) {
  for (const std::string* value : {&b.workspace_id, &b.admin_user, &b.uid, &b.pid, &b.exe,
                                   &b.grant_id, &b.connector_id, &b.account_id}) {
    field(*value);
  }
  field(std::to_string(b.scopes.size()));
  for (const std::string& scope : b.scopes) field(scope);
  field(b.outcome);
  field(b.reason);
  field(std::to_string(b.details.size()));
  for (const auto& [key, value] : b.details) {
    field(key);
    field(value);
  }
}

size_t FieldSize(size_t value_size) {
  size_t digits = 1;
  for (size_t n = value_size; n >= 10; n /= 10) ++digits;
  return digits + 2 + value_size;  // "<size>:<value>\n"
}

}  // namespace

size_t CanonicalBodySize(const RecordBody& b) {
  size_t size = kBodyHeader.size();
  ForEachBodyField(b, [&size](std::string_view value) { size += FieldSize(value.size()); });
  return size;
}

std::string CanonicalBody(const RecordBody& b) {
  std::string out;
  out.reserve(CanonicalBodySize(b));  // one allocation, not one per doubling
  out.append(kBodyHeader);
  ForEachBodyField(b, [&out](std::string_view value) { AppendField(out, value); });
  return out;
}

std::string CanonicalRecord(const Record& r) {
  std::string out = "grantvault.audit.record.v1\n";
  AppendField(out, r.chain);
  AppendField(out, std::to_string(r.seq));
  AppendField(out, r.time);
  AppendField(out, r.type);
  AppendField(out, r.prev_hash);
  AppendField(out, r.body_hash);
  return out;
}

std::string CanonicalCheckpoint(const Checkpoint& c) {
  std::string out = "grantvault.audit.checkpoint.v1\n";
  AppendField(out, c.chain);
  AppendField(out, std::to_string(c.seq));
  AppendField(out, c.head_hash);
  AppendField(out, c.time);
  AppendField(out, c.key_label);
  return out;
}

std::string CanonicalStatement(const Statement& s) {
  std::string out = "grantvault.audit.export.v1\n";
  AppendField(out, s.chain);
  AppendField(out, s.workspace_id);
  AppendField(out, s.since.value_or(""));
  AppendField(out, s.until.value_or(""));
  AppendField(out, std::to_string(s.types.size()));
  for (const std::string& type : s.types) AppendField(out, type);
  AppendField(out, std::to_string(s.first_seq));
  AppendField(out, std::to_string(s.last_seq));
  AppendField(out, std::to_string(s.entries));
  AppendField(out, s.exported_at);
  AppendField(out, s.key_label);
  return out;
}

std::string Sha256Hex(std::string_view data) {
  // OpenSSL's SHA-256 uses the CPU's SHA extensions where it has them
  // (libsodium's does not: 300 bytes took 970 ns, this 300 ns), and an
  // appended record is hashed twice. Fetched once: an implicit fetch per
  // call costs as much as the hash.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest;
  if (sha256 == nullptr ||
      EVP_Digest(data.data(), data.size(), digest.data(), nullptr, sha256, nullptr) != 1) {
    std::abort();  // SHA-256 over memory cannot fail short of a broken library
  }
  std::string hex(digest.size() * 2 + 1, '\0');
  sodium_bin2hex(hex.data(), hex.size(), digest.data(), digest.size());
  hex.pop_back();
  return hex;
}

void ComputeHashes(Record& record) {
  if (!record.stub) record.body_hash = Sha256Hex(CanonicalBody(record.body));
  record.hash = Sha256Hex(CanonicalRecord(record));
}

bool MatchesFilter(const Statement& s, std::string_view time, std::string_view type) {
  if (s.since.has_value() && time < *s.since) return false;
  if (s.until.has_value() && time >= *s.until) return false;
  if (s.types.empty()) return true;
  return std::binary_search(s.types.begin(), s.types.end(), type);
}

absl::StatusOr<PublicKey> PublicKey::FromPem(const std::string& pem) {
  if (pem.size() > 64 * 1024) return absl::InvalidArgumentError("public key PEM is too large");
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  if (!bio) return absl::InternalError("OpenSSL: cannot allocate a BIO");
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    return absl::InvalidArgumentError("not a PEM public key (-----BEGIN PUBLIC KEY-----)");
  }
  PublicKey result(key);
  char group[64] = {};
  size_t group_len = 0;
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                     &group_len) != 1 ||
      std::string_view(group, group_len) != "prime256v1") {
    return absl::InvalidArgumentError("the public key is not an ECDSA P-256 key");
  }
  return result;
}

bool PublicKey::Verify(std::string_view message, const std::vector<uint8_t>& signature) const {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key_.get()) != 1) {
    return false;
  }
  return EVP_DigestVerify(ctx.get(), signature.data(), signature.size(),
                          reinterpret_cast<const unsigned char*>(message.data()),
                          message.size()) == 1;
}

std::unique_ptr<ExportWriter> MakeExportWriter(ExportFormat format, std::ostream& out) {
  if (format == ExportFormat::kCsv) return std::make_unique<CsvWriter>(out);
  return std::make_unique<JsonlWriter>(out);
}

absl::StatusOr<std::unique_ptr<ExportReader>> MakeExportReader(std::istream& in) {
  int first = in.peek();
  if (first == std::char_traits<char>::eof()) {
    return absl::DataLossError("line 1: the export is empty");
  }
  if (first == '{') return std::unique_ptr<ExportReader>(std::make_unique<JsonlReader>(in));
  return std::unique_ptr<ExportReader>(std::make_unique<CsvReader>(in));
}

}  // namespace grantvault::audit::format
