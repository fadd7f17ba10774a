#include "audit/verify.h"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "audit/record_format.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::audit {
namespace {

using format::Entry;

absl::Status Broken(uint64_t line, std::string_view what) {
  return absl::DataLossError(absl::StrCat("line ", line, ": ", Sv(what)));
}

absl::Status BrokenRecord(uint64_t line, uint64_t seq, std::string_view chain,
                          std::string_view what) {
  return absl::DataLossError(
      absl::StrCat("line ", line, ": seq ", seq, " (chain ", Sv(chain), "): ", Sv(what)));
}

}  // namespace

absl::StatusOr<VerifyReport> VerifyExportStream(std::istream& in,
                                                const std::string& public_key_pem) {
  GV_ASSIGN_OR_RETURN(format::PublicKey key, format::PublicKey::FromPem(public_key_pem));
  GV_ASSIGN_OR_RETURN(std::unique_ptr<format::ExportReader> reader, format::MakeExportReader(in));

  Entry entry;
  GV_ASSIGN_OR_RETURN(bool any, reader->Next(entry));
  if (!any) return Broken(1, "the export is empty");
  if (entry.kind != Entry::Kind::kStatement) {
    return Broken(entry.line, "the export does not start with its signed export statement");
  }
  const format::Statement s = entry.statement;
  const uint64_t statement_line = entry.line;
  if (!key.Verify(format::CanonicalStatement(s), s.signature)) {
    return Broken(statement_line,
                  "the export statement's signature does not verify with the given public key "
                  "(wrong key, or the statement was edited)");
  }
  if (s.chain != format::ChainIdFor(s.workspace_id)) {
    return Broken(statement_line, "the statement's chain does not match its workspace");
  }
  if (!std::is_sorted(s.types.begin(), s.types.end()) ||
      std::adjacent_find(s.types.begin(), s.types.end()) != s.types.end()) {
    return Broken(statement_line, "the statement's types are not sorted and unique");
  }
  if (s.first_seq > s.last_seq || (s.entries == 0) != (s.last_seq == 0) ||
      (s.last_seq != 0 && s.first_seq == 0)) {
    return Broken(statement_line, "the statement's range is inconsistent");
  }

  VerifyReport report;
  report.format = reader->format();
  report.chain = s.chain;
  report.workspace_id = s.workspace_id;
  report.since = s.since;
  report.until = s.until;
  report.types = s.types;
  report.first_seq = s.first_seq;
  report.last_seq = s.last_seq;
  report.exported_at = s.exported_at;
  report.key_label = s.key_label;

  uint64_t count = 0;
  uint64_t expected_seq = s.first_seq;
  bool have_record = false;
  format::Record previous;
  bool last_was_checkpoint = false;
  bool closed_right = false;
  uint64_t last_line = statement_line;
  while (true) {
    GV_ASSIGN_OR_RETURN(bool more, reader->Next(entry));
    if (!more) break;
    last_line = entry.line;
    if (++count > s.entries) {
      return Broken(entry.line, absl::StrCat("more entries than the ", s.entries,
                                             " that the signed export statement announces"));
    }
    switch (entry.kind) {
      case Entry::Kind::kStatement:
        return Broken(entry.line, "a second export statement");
      case Entry::Kind::kRecord: {
        format::Record& r = entry.record;
        if (r.chain != s.chain) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              absl::StrCat("the record belongs to chain ", r.chain, ", not to ",
                                           s.chain, " (swapped in from another export?)"));
        }
        if (r.seq != expected_seq) {
          return BrokenRecord(
              entry.line, r.seq, r.chain,
              absl::StrCat("seq ", expected_seq,
                           " was expected here: records are missing, duplicated or out of order "
                           "(deleted or reordered?)"));
        }
        if (r.seq > s.last_seq) {
          return BrokenRecord(entry.line, r.seq, r.chain, "beyond the signed range");
        }
        if (!r.stub && r.body.workspace_id != s.workspace_id) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "the record's workspace is not the export's");
        }
        format::Record recomputed = r;
        format::ComputeHashes(recomputed);
        if (!r.stub && recomputed.body_hash != r.body_hash) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "the record's content does not match its body_hash (edited)");
        }
        if (recomputed.hash != r.hash) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "the record does not match its hash (edited)");
        }
        if (r.seq == 1 && r.prev_hash != format::kGenesisHash) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "the first record of a chain must have the all-zero prev_hash");
        }
        if (have_record) {
          if (r.prev_hash != previous.hash) {
            return BrokenRecord(entry.line, r.seq, r.chain,
                                absl::StrCat("prev_hash is not the hash of seq ", previous.seq,
                                             " (a record was deleted, reordered, edited or "
                                             "swapped in)"));
          }
          if (r.time < previous.time) {
            return BrokenRecord(entry.line, r.seq, r.chain, "time goes backwards");
          }
        } else if (s.first_seq > 1 && !(s.since.has_value() && r.time < *s.since)) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "the export starts in the middle of the chain without a record "
                              "from before `since`");
        }
        if (r.stub && format::MatchesFilter(s, r.time, r.type)) {
          return BrokenRecord(entry.line, r.seq, r.chain,
                              "a stub hides a record that the export's filter selects");
        }
        if (s.until.has_value() && r.time >= *s.until) closed_right = true;
        (r.stub ? report.stubs : report.records)++;
        previous = std::move(r);
        have_record = true;
        ++expected_seq;
        last_was_checkpoint = false;
        break;
      }
      case Entry::Kind::kCheckpoint: {
        const format::Checkpoint& c = entry.checkpoint;
        if (c.chain != s.chain) {
          return BrokenRecord(
              entry.line, c.seq, c.chain,
              absl::StrCat("the checkpoint belongs to chain ", c.chain, ", not to ", s.chain));
        }
        if (!have_record || c.seq != previous.seq || c.head_hash != previous.hash) {
          return BrokenRecord(entry.line, c.seq, c.chain,
                              have_record ? absl::StrCat("the checkpoint does not cover the "
                                                         "record before it (seq ",
                                                         previous.seq, ")")
                                          : std::string("a checkpoint before any record"));
        }
        if (!key.Verify(format::CanonicalCheckpoint(c), c.signature)) {
          return BrokenRecord(entry.line, c.seq, c.chain,
                              "the checkpoint's signature does not verify (forged, edited, or "
                              "signed by another key)");
        }
        ++report.checkpoints;
        report.last_checkpoint_time = c.time;
        last_was_checkpoint = true;
        break;
      }
    }
  }
  if (count < s.entries) {
    return BrokenRecord(last_line + 1, previous.seq, s.chain,
                        absl::StrCat("the export ends after ", count, " of the ", s.entries,
                                     " entries its signed statement announces (truncated)"));
  }
  if (s.entries > 0 && (!last_was_checkpoint || previous.seq != s.last_seq)) {
    return BrokenRecord(last_line, previous.seq, s.chain,
                        "the export does not end with a signed checkpoint of its last record "
                        "(truncated)");
  }
  report.window_closed = s.entries > 0 && s.until.has_value() && closed_right;
  return report;
}

absl::StatusOr<VerifyReport> VerifyExport(const std::string& file,
                                          const std::string& public_key_pem) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot read audit export ", file));
  }
  return VerifyExportStream(in, public_key_pem);
}

}  // namespace grantvault::audit
