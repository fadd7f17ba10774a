// The audit log's canonical forms (what is hashed and signed) and the export
// file encodings (JSONL, CSV), shared by AuditLog (writing) and VerifyExport
// (reading). Internal to the audit module; the format is specified for
// outside verifiers in docs/audit.md, and any change here must change it too.
#ifndef GRANTVAULT_AUDIT_RECORD_FORMAT_H_
#define GRANTVAULT_AUDIT_RECORD_FORMAT_H_

#include <openssl/evp.h>

#include <cstdint>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "audit/audit_log.h"

namespace grantvault::audit::format {

// The prev_hash of a chain's first record.
inline constexpr std::string_view kGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";
inline constexpr std::string_view kSystemChain = "system";
inline constexpr std::string_view kWorkspaceChainPrefix = "workspace:";
inline constexpr std::string_view kExportFormatName = "grantvault-audit-export";
inline constexpr int kExportFormatVersion = 1;

// "system" for the empty workspace id, else "workspace:" + id.
std::string ChainIdFor(std::string_view workspace_id);

// RFC 3339 UTC with exactly six fractional digits, "2026-11-25T10:00:00.000000Z":
// fixed width, so comparing two such strings compares the times.
// InvalidArgument outside years 1970..9999.
absl::StatusOr<std::string> FormatTime(int64_t unix_micros);
bool IsCanonicalTime(std::string_view time);

struct RecordBody {
  std::string workspace_id;
  std::string admin_user;
  std::string uid;  // decimal, or empty when absent
  std::string pid;  // decimal, or empty when absent
  std::string exe;
  std::string grant_id, connector_id, account_id;
  std::vector<std::string> scopes;
  std::string outcome;
  std::string reason;
  std::map<std::string, std::string> details;  // ascending byte order

  bool operator==(const RecordBody&) const = default;
};

struct Record {
  std::string chain;
  uint64_t seq = 0;
  std::string time;
  std::string type;
  std::string prev_hash;
  std::string body_hash;
  std::string hash;
  bool stub = false;  // a stub carries no body; body_hash is taken as given
  RecordBody body;
};

struct Checkpoint {
  std::string chain;
  uint64_t seq = 0;
  std::string head_hash;
  std::string time;
  std::string key_label;
  std::vector<uint8_t> signature;  // DER ECDSA-Sig-Value
};

// The signed first entry of an export.
struct Statement {
  std::string chain;
  std::string workspace_id;
  std::optional<std::string> since, until;
  std::vector<std::string> types;  // sorted, unique; empty = every type
  uint64_t first_seq = 0, last_seq = 0;
  uint64_t entries = 0;  // records, stubs and checkpoints after the statement
  std::string exported_at;
  std::string key_label;
  std::vector<uint8_t> signature;
};

// Canonical forms: see docs/audit.md, "Canonical forms".
std::string CanonicalBody(const RecordBody& body);
// CanonicalBody(body).size(), without building it.
size_t CanonicalBodySize(const RecordBody& body);
std::string CanonicalRecord(const Record& record);  // uses body_hash, not body
std::string CanonicalCheckpoint(const Checkpoint& checkpoint);
std::string CanonicalStatement(const Statement& statement);

std::string Sha256Hex(std::string_view data);
// body_hash (unless a stub) and hash, from the other fields.
void ComputeHashes(Record& record);

// Whether a record with this time and type is selected by the statement's filter.
bool MatchesFilter(const Statement& statement, std::string_view time, std::string_view type);

// A P-256 public key for checking signatures offline.
class PublicKey {
 public:
  // InvalidArgument unless `pem` is a PEM SubjectPublicKeyInfo of a P-256 key.
  static absl::StatusOr<PublicKey> FromPem(const std::string& pem);
  bool Verify(std::string_view message, const std::vector<uint8_t>& der_signature) const;

 private:
  struct Free {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
  };
  explicit PublicKey(EVP_PKEY* key) : key_(key, Free()) {}
  std::shared_ptr<EVP_PKEY> key_;
};

class ExportWriter {
 public:
  virtual ~ExportWriter() = default;
  virtual void Write(const Statement& statement) = 0;
  virtual void Write(const Record& record) = 0;
  virtual void Write(const Checkpoint& checkpoint) = 0;
};
std::unique_ptr<ExportWriter> MakeExportWriter(ExportFormat format, std::ostream& out);

struct Entry {
  enum class Kind { kStatement, kRecord, kCheckpoint };
  Kind kind = Kind::kRecord;
  uint64_t line = 0;  // where the entry starts, 1-based
  Statement statement;
  Record record;
  Checkpoint checkpoint;
};

// Reads entries one by one; strict: unknown or missing fields, wrong types and
// malformed lines are DataLoss naming the line.
class ExportReader {
 public:
  virtual ~ExportReader() = default;
  // False at the end of the input.
  virtual absl::StatusOr<bool> Next(Entry& entry) = 0;
  virtual std::string format() const = 0;
};
// Detects the format from the first byte ('{' → JSONL, else CSV).
absl::StatusOr<std::unique_ptr<ExportReader>> MakeExportReader(std::istream& in);

}  // namespace grantvault::audit::format

#endif  // GRANTVAULT_AUDIT_RECORD_FORMAT_H_
