// Offline verification of an audit export: needs only the file and the audit
// public key (no daemon, no HSM, no database).
#ifndef GRANTVAULT_AUDIT_VERIFY_H_
#define GRANTVAULT_AUDIT_VERIFY_H_

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grantvault::audit {

// What a successful verification proved.
struct VerifyReport {
  std::string format;        // "jsonl" or "csv"
  std::string chain;         // "system" or "workspace:<id>"
  std::string workspace_id;  // empty for the system chain
  // The signed filter: every record of the chain with since <= time < until
  // and a listed type (any type when empty) between first_seq and last_seq
  // is present in full.
  std::optional<std::string> since, until;
  std::vector<std::string> types;
  uint64_t first_seq = 0, last_seq = 0;  // 0, 0 for an empty chain
  uint64_t records = 0;                  // in full
  uint64_t stubs = 0;                    // outside the filter
  uint64_t checkpoints = 0;
  std::string exported_at;
  std::string last_checkpoint_time;
  std::string key_label;
  // The export holds every matching record of the whole window: the chain
  // starts in it (or a record before `since` opens it) and a record at or
  // after `until` closes it. When false, it is complete up to
  // last_checkpoint_time (the window reached past the export's time).
  bool window_closed = false;
};

// Verifies an export (JSONL or CSV, detected from the first line) against the
// PEM public key. OK with a report, or DataLoss naming the first problem: its
// line number, seq and chain, and what broke (edited, deleted, reordered or
// foreign record, bad signature, truncation). InvalidArgument for an unusable
// public key; NotFound/PermissionDenied when the file cannot be read.
absl::StatusOr<VerifyReport> VerifyExport(const std::string& file,
                                          const std::string& public_key_pem);
// The same, reading from a stream.
absl::StatusOr<VerifyReport> VerifyExportStream(std::istream& in,
                                                const std::string& public_key_pem);

}  // namespace grantvault::audit

#endif  // GRANTVAULT_AUDIT_VERIFY_H_
