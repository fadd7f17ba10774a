// The audit trail: one hash chain per workspace plus one for the system, kept in
// its own SQLite database, with checkpoints signed by the HSM audit key, export
// (JSONL, CSV) and, in audit/verify.h, offline verification.
//
// File format and guarantees: docs/audit.md.
#ifndef GRANTVAULT_AUDIT_AUDIT_LOG_H_
#define GRANTVAULT_AUDIT_AUDIT_LOG_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "audit/anchor.h"
#include "audit/signer.h"
#include "common/clock.h"
#include "common/secret_bytes.h"

namespace grantvault::audit {

// Who did it: an admin (by name) or an agent caller (by attested identity).
struct Actor {
  std::string admin_user;
  std::optional<uint32_t> uid;
  std::optional<int32_t> pid;
  std::string exe;
};

// The event types the log accepts; anything else is refused.
inline constexpr const char* kEventTypes[] = {
    "grant.authorized",
    "grant.scope_changed",
    "grant.revoked",
    "grant.reauth_required",
    "grant.upstream_revoked",
    "grant.upstream_revoke_failed",
    "token.released",
    "token.denied",
    "key.created",
    "key.rotated",
    "keys.rewrapped",
    "key.retired",
    "connector.registered",
    "policy.reloaded",
    "caller.unmatched",
    "proxy.call",
};
bool IsKnownEventType(std::string_view type);

// One audited event. Never holds a secret: a token is named by
// AuditLog::Fingerprint() (e.g. details["token_fingerprint"]). Strings are
// recorded as UTF-8; invalid sequences are replaced by U+FFFD before hashing.
struct Event {
  std::string type;          // one of kEventTypes
  std::string workspace_id;  // empty → the system chain
  Actor actor;
  std::string grant_id, connector_id, account_id;
  std::vector<std::string> scopes;  // kept in the given order
  std::string outcome;              // "ok" | "denied" | "failed"
  std::string reason;               // never a secret
  // e.g. "token_fingerprint", "kek", "tool", "request_id". Keys that name a
  // secret ("access_token", "refresh_token", "client_secret", "code", …) are
  // refused.
  std::map<std::string, std::string> details;
  // Identical events may share one record: with Durability::kGrouped or
  // kDeferred, events marked `coalesce` that are equal in every field above
  // and are committed in the same batch, with no event that is not coalesced
  // between them, are recorded once, with details["count"] = how many (absent
  // means 1). Coalesced events of different callers in one batch may be
  // recorded in another order than they were appended. Each
  // caller still learns the outcome only after that record is committed. For
  // token.released, where one agent process fetching the same cached token
  // many times a second would otherwise write a row per fetch. The detail
  // "count" is then reserved.
  bool coalesce = false;
};

enum class Durability {
  // fsync()ed before Append returns (admin and key events).
  kDurable,
  // Committed to the database (so a killed daemon loses nothing) before Append
  // returns, fsync()ed within AuditOptions::group_commit_interval (so a power
  // loss loses at most that window). For token.released / token.denied.
  kGrouped,
  // As kGrouped, but the writer may hold it up to
  // AuditOptions::deferred_interval to commit it together with others (a
  // killed daemon loses such events not yet committed). For what may be
  // answered before it is recorded: a repeated token release (docs/audit.md).
  // A synchronous Append waits for that interval too: use AppendAsync.
  kDeferred,
};

struct AuditOptions {
  // A chain is checkpointed when it has this many records since its last
  // checkpoint…
  uint64_t checkpoint_every_records = 1000;
  // …or when its oldest unsigned record is this old (by the injected Clock).
  absl::Duration checkpoint_every = absl::Seconds(60);
  // How often (real time) the checkpoint thread looks at the clock, and the
  // wait before retrying a checkpoint whose signing failed.
  absl::Duration checkpoint_poll_interval = absl::Seconds(1);
  absl::Duration checkpoint_retry_interval = absl::Seconds(5);
  // kGrouped records are fsync()ed at least this often (real time). Zero:
  // every batch is fsync()ed, like kDurable.
  absl::Duration group_commit_interval = absl::Milliseconds(200);
  // kDeferred events wait at most this long (real time) for a batch
  // (0..60 s).
  absl::Duration deferred_interval = absl::Milliseconds(50);
  // At most this many events per transaction.
  size_t max_batch = 4096;
  // How long a writer waits for another connection's lock (SQLite busy timeout).
  int busy_timeout_ms = 5000;
};

// What to export: one chain (a workspace, or the system chain when
// workspace_id is empty), optionally limited by time and event type. Records
// outside the filter appear as stubs (hashes, seq, time, type; no content), so
// the export still verifies and proves that nothing matching was left out.
struct ExportFilter {
  std::string workspace_id;         // empty → the system chain
  std::optional<absl::Time> since;  // inclusive
  std::optional<absl::Time> until;  // exclusive
  std::vector<std::string> types;   // empty → every type
};

enum class ExportFormat { kJsonl, kCsv };

// Checkpoint signing health, for the daemon's status.
struct CheckpointHealth {
  uint64_t checkpoints_written = 0;
  uint64_t signing_failures = 0;   // since Open
  std::string last_signing_error;  // empty when the last attempt succeeded
  uint64_t unsigned_records = 0;   // records not yet covered by a checkpoint, all chains
};

// The count of a queued coalescable event (AuditLog::AppendCounted): more
// identical events are added to it, without a queue entry each, until the
// writer takes it. Thread-safe, lock-free.
class PendingCount {
 public:
  // Counts one more identical event into the queued one; false once it is
  // sealed (then append a new event instead).
  bool Add() {
    int64_t n = n_.load(std::memory_order_relaxed);
    while (n >= 0 && (n & kSealed) == 0) {
      if (n_.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel)) return true;
    }
    return false;
  }
  // For the log: Add() fails from now on (the writer took the event, or an
  // event that must not be overtaken was queued after it).
  void Seal() { n_.fetch_or(kSealed, std::memory_order_acq_rel); }
  // For the writer, once sealed: the final count.
  uint64_t Take() {
    return static_cast<uint64_t>(n_.exchange(-1, std::memory_order_acq_rel) & ~kSealed);
  }

 private:
  static constexpr int64_t kSealed = int64_t{1} << 62;
  std::atomic<int64_t> n_{1};  // the count, | kSealed once sealed; -1 once taken
};

// Thread-safe. One writer thread commits queued events in batches; one
// checkpoint thread signs. Destruction waits for queued events and stops both.
class AuditLog {
 public:
  // Opens (creating if missing, mode 0600, WAL) the database at
  // `database_path`, records the signer's public key (FailedPrecondition if the
  // log was signed by a different key under the same label), and verifies
  // every chain in full against what the token holds (docs/audit.md, "On
  // open"): every record's hashes and links from seq 1, every checkpoint's
  // signature with the signer's key (never a key stored in the database), and
  // each chain's anchor in `anchor_store`: a chain deleted, or cut, rewritten
  // or stripped of checkpoints up to its anchor, is DataLoss naming the chain,
  // the anchor's seq and what the database holds. The log is then not opened.
  // A database ahead of its anchor (a crash between a checkpoint's commit and
  // its anchoring) moves the anchor forward; so does a first open without one.
  //
  // `fingerprint_key` (at least 32 bytes) keys Fingerprint(); the daemon keeps
  // it as a sealed secret so that fingerprints stay comparable across restarts.
  // `clock` (not owned) must outlive the log.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& database_path,
                                                        std::unique_ptr<Signer> signer,
                                                        std::unique_ptr<AnchorStore> anchor_store,
                                                        SecretBytes fingerprint_key, Clock* clock,
                                                        AuditOptions options = {});
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Blocks until the event is recorded (see Durability). An error means the
  // event is NOT recorded — nothing of it was written — and the caller must
  // fail closed. InvalidArgument for an unknown type or outcome, a detail key
  // that names a secret, or an event larger than 64 KiB; ResourceExhausted
  // when the disk is full; Unavailable for other write failures.
  absl::Status Append(Event event, Durability durability);
  // As Append, without waiting: `on_done` is called once with the same
  // result, on the writer thread (or at once, on the caller's, when the event
  // is refused before it is queued). It must not block. For callers that
  // must not hold a thread while the batch commits (Resolve answers on the
  // I/O thread and sends the token from `on_done`).
  void AppendAsync(Event event, Durability durability, std::function<void(absl::Status)> on_done);
  // As AppendAsync for an event with `coalesce` set, returning its count:
  // PendingCount::Add() records one more identical event at the cost of an
  // atomic increment (its outcome is `on_done`'s). Null when the event was
  // refused at once (`on_done` has been called).
  std::shared_ptr<PendingCount> AppendCounted(Event event, Durability durability,
                                              std::function<void(absl::Status)> on_done);

  // "hmac-sha256:" + the first 16 bytes, in hex, of HMAC-SHA256(fingerprint
  // key, token): names a token without revealing it.
  std::string Fingerprint(const SecretBytes& token) const;

  // Signs and durably writes a checkpoint of every chain whose head is not
  // covered yet, then anchors them in the token. An error (e.g. the HSM is
  // unreachable) names the chain, or the anchor.
  absl::Status Checkpoint();

  // Writes one chain as an export file (format: docs/audit.md): a signed export
  // statement, the records (stubs outside the filter) and checkpoints, ending
  // with a signed checkpoint of its last record (Checkpoint() is called first).
  // `progress` (may be empty) is called with (entries written, total entries).
  // Appends continue meanwhile; the export is one consistent snapshot.
  absl::Status Export(const ExportFilter& filter, ExportFormat format, std::ostream& out,
                      std::function<void(uint64_t done, uint64_t total)> progress);

  // The PEM public key that verifies this log's signatures.
  std::string PublicKeyPem() const;

  // Whether the chain of `workspace_id` (empty: the system chain) exists:
  // some event was recorded for it. Without I/O.
  bool HasChain(std::string_view workspace_id) const;

  CheckpointHealth checkpoint_health() const;

  // Events queued and not yet taken by the writer (a snapshot, without a
  // lock): callers that append without waiting use it to bound the backlog.
  size_t backlog() const;
  // How long the oldest event not yet committed (queued, or in the batch
  // being written) has waited; zero when there is none. Without a lock. A
  // caller that answers before the record commits (a counted repeat) stops
  // doing so when this grows: the writer is stuck or failing.
  absl::Duration oldest_uncommitted_age() const;

 private:
  class Impl;
  explicit AuditLog(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace grantvault::audit

#endif  // GRANTVAULT_AUDIT_AUDIT_LOG_H_
