#include "audit/audit_log.h"

#include <sodium.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "audit/record_format.h"
#include "common/status.h"
#include "common/strings.h"
#include "common/thread_name.h"
#include "db/sqlite.h"
#include "nlohmann/json.hpp"

namespace grantvault::audit {
namespace {

using format::Record;
using format::RecordBody;

constexpr size_t kMaxEventBytes = 64 * 1024;
// The detail a coalesced record carries: how many identical events it stands for.
constexpr std::string_view kCountDetail = "count";
constexpr size_t kMinFingerprintKeyBytes = 32;

// Detail keys that would name a secret. A token is recorded only through
// Fingerprint() (details["token_fingerprint"]).
constexpr std::array<std::string_view, 12> kSecretDetailKeys = {
    "access_token", "refresh_token", "id_token", "token", "client_secret", "secret",
    "code",         "code_verifier", "password", "pin",   "authorization", "assertion"};

// --- schema ------------------------------------------------------------------
// Times are unix microseconds. Never edit a released migration; append one.

constexpr db::Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE signing_keys (
  key_label TEXT PRIMARY KEY NOT NULL,
  public_key_pem TEXT NOT NULL,
  first_used_at INTEGER NOT NULL
) STRICT;

CREATE TABLE chains (
  chain TEXT PRIMARY KEY NOT NULL,
  workspace_id TEXT NOT NULL,
  head_seq INTEGER NOT NULL CHECK (head_seq >= 1),
  head_hash TEXT NOT NULL,
  head_time INTEGER NOT NULL
) STRICT;

CREATE TABLE records (
  chain TEXT NOT NULL,
  seq INTEGER NOT NULL CHECK (seq >= 1),
  time INTEGER NOT NULL,
  type TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  body_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  admin_user TEXT NOT NULL,
  uid TEXT NOT NULL,
  pid TEXT NOT NULL,
  exe TEXT NOT NULL,
  grant_id TEXT NOT NULL,
  connector_id TEXT NOT NULL,
  account_id TEXT NOT NULL,
  scopes TEXT NOT NULL,
  outcome TEXT NOT NULL,
  reason TEXT NOT NULL,
  details TEXT NOT NULL,
  PRIMARY KEY (chain, seq)
) STRICT, WITHOUT ROWID;

CREATE INDEX records_by_time ON records (chain, time);

CREATE TABLE checkpoints (
  chain TEXT NOT NULL,
  seq INTEGER NOT NULL,
  head_hash TEXT NOT NULL,
  time INTEGER NOT NULL,
  key_label TEXT NOT NULL REFERENCES signing_keys (key_label),
  signature BLOB NOT NULL,
  PRIMARY KEY (chain, seq)
) STRICT, WITHOUT ROWID;

-- Written only to force an fsync of grouped commits when no other write comes.
CREATE TABLE sync_marker (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  syncs INTEGER NOT NULL
) STRICT;
INSERT INTO sync_marker (id, syncs) VALUES (1, 0);

CREATE TRIGGER records_are_append_only_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER records_are_append_only_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER checkpoints_are_append_only_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_are_append_only_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
)sql"},
};

db::SqliteOptions DatabaseOptions(const AuditOptions& options, bool read_only) {
  db::SqliteOptions o;
  o.owner = "audit log";
  o.file_kind = "audit database";
  o.read_only = read_only;
  o.busy_timeout_ms = options.busy_timeout_ms;
  return o;
}

// --- events ------------------------------------------------------------------

// Replaces each invalid UTF-8 sequence with U+FFFD, so that every recorded
// string is valid JSON text and hashes the same in every reader.
std::string SanitizeUtf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    auto byte = [&](size_t k) { return static_cast<unsigned char>(in[k]); };
    unsigned char c = byte(i);
    size_t len = 0;
    uint32_t min = 0;
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      min = 0x10000;
    }
    bool valid = len != 0 && i + len <= in.size();
    uint32_t cp = len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (size_t k = 1; valid && k < len; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) valid = false;
      cp = (cp << 6) | (byte(i + k) & 0x3Fu);
    }
    if (valid && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) valid = false;
    if (valid) {
      out.append(in.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

std::string ScopesJson(const std::vector<std::string>& scopes) {
  nlohmann::json j = scopes;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string DetailsJson(const std::map<std::string, std::string>& details) {
  nlohmann::json j = details;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Reads what ScopesJson/DetailsJson wrote. A value edited into something else
// yields an empty list or map: the record's hash then no longer matches.
std::vector<std::string> ParseScopes(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  std::vector<std::string> out;
  if (!j.is_array()) return out;
  for (const auto& item : j) {
    if (item.is_string()) out.push_back(item.get<std::string>());
  }
  return out;
}

std::map<std::string, std::string> ParseDetails(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  std::map<std::string, std::string> out;
  if (!j.is_object()) return out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string()) out.emplace(it.key(), it.value().get<std::string>());
  }
  return out;
}

absl::StatusOr<Record> PrepareRecord(Event event) {
  if (!IsKnownEventType(event.type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("audit: unknown event type \"", SanitizeUtf8(event.type), "\""));
  }
  if (event.outcome != "ok" && event.outcome != "denied" && event.outcome != "failed") {
    return absl::InvalidArgumentError(absl::StrCat(
        "audit: outcome must be ok, denied or failed (got \"", SanitizeUtf8(event.outcome), "\")"));
  }
  if (event.coalesce && event.details.contains(std::string(kCountDetail))) {
    return absl::InvalidArgumentError("audit: detail \"count\" is reserved for coalesced events");
  }
  Record r;
  r.chain = format::ChainIdFor(event.workspace_id);
  r.type = std::move(event.type);
  RecordBody& b = r.body;
  b.workspace_id = SanitizeUtf8(event.workspace_id);
  if (b.workspace_id != event.workspace_id) {
    return absl::InvalidArgumentError("audit: workspace id is not valid UTF-8");
  }
  b.admin_user = SanitizeUtf8(event.actor.admin_user);
  if (event.actor.uid.has_value()) b.uid = std::to_string(*event.actor.uid);
  if (event.actor.pid.has_value()) b.pid = std::to_string(*event.actor.pid);
  b.exe = SanitizeUtf8(event.actor.exe);
  b.grant_id = SanitizeUtf8(event.grant_id);
  b.connector_id = SanitizeUtf8(event.connector_id);
  b.account_id = SanitizeUtf8(event.account_id);
  for (const std::string& scope : event.scopes) b.scopes.push_back(SanitizeUtf8(scope));
  b.outcome = std::move(event.outcome);
  b.reason = SanitizeUtf8(event.reason);
  for (const auto& [key, value] : event.details) {
    std::string lower = key;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c); });
    if (std::find(kSecretDetailKeys.begin(), kSecretDetailKeys.end(), lower) !=
        kSecretDetailKeys.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("audit: detail \"", SanitizeUtf8(key),
                       "\" would record a secret; name a token with Fingerprint() "
                       "(detail \"token_fingerprint\")"));
    }
    // Sanitising can merge two keys; the later one wins, as in any map.
    b.details[SanitizeUtf8(key)] = SanitizeUtf8(value);
  }
  if (format::CanonicalBodySize(b) > kMaxEventBytes) {
    return absl::InvalidArgumentError("audit: event larger than 64 KiB");
  }
  return r;
}

// --- chain state ---------------------------------------------------------------

struct Head {
  uint64_t seq = 0;
  std::string hash = std::string(format::kGenesisHash);
  int64_t time_us = 0;
};

struct ChainState {
  std::string workspace_id;
  Head head;
  uint64_t signed_seq = 0;
  // The last checkpoint's head hash and how many checkpoints the chain holds:
  // what the token anchors (audit/anchor.h).
  std::string signed_hash;
  uint64_t checkpoint_count = 0;
  // By the injected clock: when the oldest record not covered by a checkpoint
  // was appended (meaningful only while head.seq > signed_seq).
  int64_t unsigned_since_us = 0;
  absl::Time retry_after = absl::InfinitePast();  // real time
};

using ChainMap = std::map<std::string, ChainState>;

struct Job {
  enum class Kind { kAppend, kCheckpoint };
  Kind kind = Kind::kAppend;
  Record record;  // kAppend: chain, type and body; the writer fills the rest
  Durability durability = Durability::kDurable;
  bool coalesce = false;          // Event::coalesce
  format::Checkpoint checkpoint;  // kCheckpoint
  int64_t checkpoint_time_us = 0;
  // AppendAsync: called by the writer with the result, after which the
  // writer deletes the job. Empty for a caller waiting in Submit().
  std::function<void(absl::Status)> on_done;
  // Set by the writer.
  absl::Status result;
  bool done = false;
  int64_t unsigned_since_us = 0;  // kCheckpoint: time of the record after it, if any
  // kCheckpoint: false when a checkpoint at or after its seq already existed
  // (then nothing was written: checkpoints only move forward).
  bool inserted = false;
  // Coalescing (Event::coalesce), set by the writer for one batch: a folded
  // job is recorded by the identical job it points to, which counts them.
  Job* folded_into = nullptr;
  // How many events the job stands for: 1, or its PendingCount once taken,
  // plus what was folded into it.
  uint64_t weight = 1;
  std::shared_ptr<PendingCount> counter;  // AppendCounted
};

bool CoalescesWith(const Job& a, const Job& b) {
  return a.record.chain == b.record.chain && a.record.type == b.record.type &&
         a.record.body == b.record.body;
}

// Folds every coalescable event of `batch` (kGrouped or kDeferred) into the
// first identical one (Event::coalesce). An event that is not coalesced
// closes every open group, so that a record never stands for events on both
// sides of such an event (coalesced events of other callers may move past
// each other within the batch).
void CoalesceBatch(const std::vector<Job*>& batch) {
  std::unordered_multimap<size_t, Job*> open;  // by hash of chain, type and body
  for (Job* job : batch) {
    if (job->kind != Job::Kind::kAppend) continue;  // a checkpoint covers earlier records only
    if (!job->coalesce || job->durability == Durability::kDurable) {
      open.clear();
      continue;
    }
    const Record& r = job->record;
    const RecordBody& b = r.body;
    const size_t hash =
        absl::HashOf(r.chain, r.type, b.workspace_id, b.admin_user, b.uid, b.pid, b.exe, b.grant_id,
                     b.connector_id, b.account_id, b.scopes, b.outcome, b.reason, b.details);
    Job* representative = nullptr;
    auto [first, last] = open.equal_range(hash);
    for (auto it = first; it != last; ++it) {
      if (CoalescesWith(*it->second, *job)) {
        representative = it->second;
        break;
      }
    }
    if (representative == nullptr) {
      open.emplace(hash, job);
    } else {
      job->folded_into = representative;
      representative->weight += job->weight;
    }
  }
}

Record ReadRecordRow(const db::Statement& row) {
  // Columns: chain, seq, time, type, prev_hash, body_hash, hash, workspace_id,
  // admin_user, uid, pid, exe, grant_id, connector_id, account_id, scopes,
  // outcome, reason, details.
  Record r;
  r.chain = row.Text(0);
  r.seq = static_cast<uint64_t>(row.Int(1));
  r.time = format::FormatTime(row.Int(2)).value_or("");
  r.type = row.Text(3);
  r.prev_hash = row.Text(4);
  r.body_hash = row.Text(5);
  r.hash = row.Text(6);
  RecordBody& b = r.body;
  b.workspace_id = row.Text(7);
  b.admin_user = row.Text(8);
  b.uid = row.Text(9);
  b.pid = row.Text(10);
  b.exe = row.Text(11);
  b.grant_id = row.Text(12);
  b.connector_id = row.Text(13);
  b.account_id = row.Text(14);
  b.scopes = ParseScopes(row.Text(15));
  b.outcome = row.Text(16);
  b.reason = row.Text(17);
  b.details = ParseDetails(row.Text(18));
  return r;
}

constexpr char kRecordColumns[] =
    "chain, seq, time, type, prev_hash, body_hash, hash, workspace_id, admin_user, uid, pid, exe, "
    "grant_id, connector_id, account_id, scopes, outcome, reason, details";

// A row of "SELECT seq, head_hash, time, key_label, signature FROM checkpoints".
format::Checkpoint ReadCheckpointRow(const std::string& chain, const db::Statement& row) {
  format::Checkpoint c;
  c.chain = chain;
  c.seq = static_cast<uint64_t>(row.Int(0));
  c.head_hash = row.Text(1);
  c.time = format::FormatTime(row.Int(2)).value_or("");
  c.key_label = row.Text(3);
  c.signature = row.Blob(4);
  return c;
}

absl::Status TamperedError(const std::string& chain, uint64_t seq, std::string_view what) {
  return absl::DataLossError(absl::StrCat("audit log: chain ", chain, " seq ", seq, ": ", Sv(what),
                                          "; the stored audit trail was altered (export and "
                                          "verify it, then move audit.db aside)"));
}

}  // namespace

bool IsKnownEventType(std::string_view type) {
  return std::find(std::begin(kEventTypes), std::end(kEventTypes), type) != std::end(kEventTypes);
}

// --- the log ---------------------------------------------------------------------

class AuditLog::Impl {
 public:
  Impl(std::string path, std::unique_ptr<db::Sqlite> db, std::unique_ptr<Signer> signer,
       std::unique_ptr<AnchorStore> anchor_store, std::string pem, SecretBytes fingerprint_key,
       Clock* clock, AuditOptions options, std::map<std::string, ChainState> chains)
      : path_(std::move(path)),
        db_(std::move(db)),
        signer_(std::move(signer)),
        anchor_store_(std::move(anchor_store)),
        pem_(std::move(pem)),
        fingerprint_key_(std::move(fingerprint_key)),
        clock_(clock),
        options_(options),
        chains_(std::move(chains)) {
    for (const auto& [chain, state] : chains_) writer_heads_[chain] = state.head;
    writer_ = std::thread([this] {
      NameThisThread("gv-audit-write");
      WriterLoop();
    });
    checkpointer_ = std::thread([this] {
      NameThisThread("gv-audit-sign");
      CheckpointLoop();
    });
  }

  ~Impl() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    checkpointer_.join();
    {
      absl::MutexLock lock(&mu_);
      writer_stop_ = true;
    }
    writer_.join();
  }

  absl::Status Append(Event event, Durability durability) {
    GV_ASSIGN_OR_RETURN(Job job, AppendJob(std::move(event), durability));
    return Submit(job);
  }

  void AppendAsync(Event event, Durability durability, std::function<void(absl::Status)> on_done) {
    Enqueue(std::move(event), durability, std::move(on_done), nullptr);
  }

  std::shared_ptr<PendingCount> AppendCounted(Event event, Durability durability,
                                              std::function<void(absl::Status)> on_done) {
    if (!event.coalesce) {
      on_done(absl::InvalidArgumentError("audit: a counted event must be coalescable"));
      return nullptr;
    }
    auto counter = std::make_shared<PendingCount>();
    return Enqueue(std::move(event), durability, std::move(on_done), counter) ? counter : nullptr;
  }

  std::string Fingerprint(const SecretBytes& token) const {
    crypto_auth_hmacsha256_state state;
    crypto_auth_hmacsha256_init(&state, fingerprint_key_.data(), fingerprint_key_.size());
    crypto_auth_hmacsha256_update(&state, token.data(), token.size());
    std::array<uint8_t, crypto_auth_hmacsha256_BYTES> mac;
    crypto_auth_hmacsha256_final(&state, mac.data());
    sodium_memzero(&state, sizeof(state));
    std::array<char, 16 * 2 + 1> hex;
    sodium_bin2hex(hex.data(), hex.size(), mac.data(), 16);
    return absl::StrCat("hmac-sha256:", hex.data());
  }

  absl::Status Checkpoint() {
    std::vector<std::pair<std::string, Head>> due;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [chain, state] : chains_) {
        if (state.head.seq > state.signed_seq) due.emplace_back(chain, state.head);
      }
    }
    absl::Status first_error;
    for (const auto& [chain, head] : due) {
      absl::Status s = SignAndStore(chain, head);
      if (!s.ok() && first_error.ok()) first_error = s;
    }
    absl::Status anchored = SaveAnchors();
    if (!anchored.ok() && first_error.ok()) first_error = anchored;
    return first_error;
  }

  absl::Status Export(const ExportFilter& filter, ExportFormat format, std::ostream& out,
                      const std::function<void(uint64_t, uint64_t)>& progress);

  const std::string& pem() const { return pem_; }

  bool HasChain(std::string_view workspace_id) const {
    const std::string chain = format::ChainIdFor(workspace_id);
    absl::MutexLock lock(&mu_);
    return chains_.contains(chain);
  }

  size_t backlog() const { return backlog_.load(std::memory_order_relaxed); }

  absl::Duration oldest_uncommitted_age() const {
    int64_t oldest = 0;
    for (const auto* since : {&queued_since_ns_, &inflight_since_ns_}) {
      const int64_t t = since->load(std::memory_order_relaxed);
      if (t != 0 && (oldest == 0 || t < oldest)) oldest = t;
    }
    if (oldest == 0) return absl::ZeroDuration();
    return std::max(absl::Nanoseconds(SteadyNanos() - oldest), absl::ZeroDuration());
  }

  CheckpointHealth health() const {
    absl::MutexLock lock(&mu_);
    CheckpointHealth h = health_;
    for (const auto& [chain, state] : chains_)
      h.unsigned_records += state.head.seq - state.signed_seq;
    return h;
  }

 private:
  // Queues a job for the writer and waits for its result.
  absl::Status Submit(Job& job) {
    absl::MutexLock lock(&mu_);
    if (writer_stop_) return absl::FailedPreconditionError("audit log is closing");
    EnqueueLocked(&job);
    mu_.Await(absl::Condition(&job.done));
    return job.result;
  }

  // Signs a checkpoint of `head` of `chain` and stores it durably.
  absl::Status SignAndStore(const std::string& chain, const Head& head) {
    Job job;
    job.kind = Job::Kind::kCheckpoint;
    format::Checkpoint& c = job.checkpoint;
    c.chain = chain;
    c.seq = head.seq;
    c.head_hash = head.hash;
    // A checkpoint is never dated before the record it covers.
    job.checkpoint_time_us = std::max(absl::ToUnixMicros(clock_->Now()), head.time_us);
    absl::StatusOr<std::string> time = format::FormatTime(job.checkpoint_time_us);
    absl::Status status = time.status();
    if (status.ok()) {
      c.time = *time;
      c.key_label = signer_->key_label();
      std::string message = format::CanonicalCheckpoint(c);
      absl::StatusOr<std::vector<uint8_t>> signature =
          signer_->SignSha256({reinterpret_cast<const uint8_t*>(message.data()), message.size()});
      status = signature.status();
      if (status.ok()) {
        c.signature = std::move(*signature);
        status = Submit(job);
      }
    }
    absl::MutexLock lock(&mu_);
    if (!status.ok()) {
      status = absl::Status(status.code(), absl::StrCat("audit checkpoint of chain ", chain,
                                                        " seq ", head.seq, ": ", status.message()));
      ++health_.signing_failures;
      health_.last_signing_error = std::string(status.message());
      chains_[chain].retry_after = absl::Now() + options_.checkpoint_retry_interval;
      return status;
    }
    // The writer advanced the chain's signed_seq when it committed the job.
    ++health_.checkpoints_written;
    health_.last_signing_error.clear();
    chains_[chain].retry_after = absl::InfinitePast();
    return absl::OkStatus();
  }

  void CheckpointLoop() {
    while (true) {
      std::vector<std::pair<std::string, Head>> due;
      {
        absl::MutexLock lock(&mu_);
        auto wake = [this]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || checkpoint_wakeup_; };
        mu_.AwaitWithTimeout(absl::Condition(&wake), options_.checkpoint_poll_interval);
        if (stop_) return;
        checkpoint_wakeup_ = false;
        const int64_t now_us = absl::ToUnixMicros(clock_->Now());
        const absl::Time real_now = absl::Now();
        for (const auto& [chain, state] : chains_) {
          if (state.head.seq <= state.signed_seq || real_now < state.retry_after) continue;
          bool by_count = state.head.seq - state.signed_seq >= options_.checkpoint_every_records;
          bool by_time =
              absl::Microseconds(now_us - state.unsigned_since_us) >= options_.checkpoint_every;
          if (by_count || by_time) due.emplace_back(chain, state.head);
        }
      }
      for (const auto& [chain, head] : due) {
        SignAndStore(chain, head).IgnoreError();  // counted in health_, retried later
      }
      // Also retries an anchor that could not be saved last time.
      SaveAnchors().IgnoreError();  // counted in health_, retried at the next poll
    }
  }

  // Anchors, in the token, the last checkpoint of every chain as committed
  // (fsynced) to the database. Called only after the checkpoints' commit, so
  // the anchor is never ahead of the database (audit/anchor.h). The snapshot
  // is taken under anchor_mu_, so anchors are saved in the order of the
  // states they describe and never move back.
  absl::Status SaveAnchors() ABSL_LOCKS_EXCLUDED(anchor_mu_, mu_) {
    absl::MutexLock anchor_lock(&anchor_mu_);
    ChainAnchors current;
    uint64_t committed = 0;
    {
      absl::MutexLock lock(&mu_);
      committed = checkpoints_committed_;
      if (committed == checkpoints_anchored_) return absl::OkStatus();  // nothing new
      for (const auto& [chain, state] : chains_) {
        if (state.checkpoint_count == 0) continue;
        current.emplace(chain,
                        ChainAnchor{state.signed_seq, state.signed_hash, state.checkpoint_count});
      }
    }
    absl::Status saved = anchor_store_->Save(current);
    if (saved.ok()) {
      checkpoints_anchored_ = committed;
      return saved;
    }
    saved =
        absl::Status(saved.code(), absl::StrCat("audit anchor (in the token): ", saved.message()));
    absl::MutexLock lock(&mu_);
    ++health_.signing_failures;
    health_.last_signing_error = std::string(saved.message());
    return saved;
  }

  // The job that appends `event` (refused as PrepareRecord refuses it).
  static absl::StatusOr<Job> AppendJob(Event event, Durability durability) {
    const bool coalesce = event.coalesce;
    GV_ASSIGN_OR_RETURN(Record record, PrepareRecord(std::move(event)));
    Job job;
    job.kind = Job::Kind::kAppend;
    job.record = std::move(record);
    job.durability = durability;
    job.coalesce = coalesce;
    return job;
  }

  // Queues an asynchronous append; false (after calling on_done with the
  // reason) when it was refused.
  bool Enqueue(Event event, Durability durability, std::function<void(absl::Status)> on_done,
               std::shared_ptr<PendingCount> counter) {
    absl::StatusOr<Job> prepared = AppendJob(std::move(event), durability);
    if (!prepared.ok()) {
      on_done(prepared.status());
      return false;
    }
    auto job = std::make_unique<Job>(*std::move(prepared));
    job->on_done = std::move(on_done);
    job->counter = std::move(counter);
    {
      absl::MutexLock lock(&mu_);
      if (!writer_stop_) {
        EnqueueLocked(job.release());
        return true;
      }
    }
    job->on_done(absl::FailedPreconditionError("audit log is closing"));
    return false;
  }

  void EnqueueLocked(Job* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    queue_.push_back(job);
    backlog_.fetch_add(1, std::memory_order_relaxed);
    if (queued_since_ns_.load(std::memory_order_relaxed) == 0) {
      queued_since_ns_.store(SteadyNanos(), std::memory_order_relaxed);
    }
    if (job->durability != Durability::kDeferred) {
      ++urgent_queued_;
    } else if (deferred_deadline_ == absl::InfiniteFuture()) {
      deferred_deadline_ = absl::Now() + options_.deferred_interval;
    }
    if (job->counter != nullptr) {
      open_counters_.push_back(job->counter);
    } else if (!job->coalesce || job->durability == Durability::kDurable) {
      // An event that coalesced records must not overtake: nothing counted
      // after it may join a record queued before it (CoalesceBatch's rule).
      for (const auto& counter : open_counters_) counter->Seal();
      open_counters_.clear();
    }
  }

  static int64_t SteadyNanos() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Waits until there is a batch to write or a grouped commit to fsync:
  // anything but kDeferred events at once; kDeferred ones once the oldest
  // has waited deferred_interval or a batch is full.
  void AwaitWorkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (true) {
      const absl::Time now = absl::Now();
      // A deadline further away than it can be was set before the clock
      // stepped back: it is due.
      const bool deferred_due =
          now >= deferred_deadline_ || (deferred_deadline_ != absl::InfiniteFuture() &&
                                        deferred_deadline_ - now > options_.deferred_interval);
      if (writer_stop_ || urgent_queued_ > 0 || queue_.size() >= options_.max_batch ||
          (!queue_.empty() && deferred_due) || (unsynced_ && now >= sync_deadline_)) {
        return;
      }
      absl::Time wake = unsynced_ ? sync_deadline_ : absl::InfiniteFuture();
      if (!queue_.empty()) wake = std::min(wake, deferred_deadline_);
      // Woken early when something urgent arrives or a sooner deadline is set.
      auto changed = [this, wake]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return writer_stop_ || urgent_queued_ > 0 || queue_.size() >= options_.max_batch ||
               deferred_deadline_ < wake;
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), wake);
    }
  }

  void WriterLoop() {
    while (true) {
      std::vector<Job*> batch;
      bool sync_due = false;
      bool stopping = false;
      {
        absl::MutexLock lock(&mu_);
        AwaitWorkLocked();
        size_t n = std::min(queue_.size(), options_.max_batch);
        batch.assign(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        backlog_.fetch_sub(n, std::memory_order_relaxed);
        urgent_queued_ =
            static_cast<size_t>(std::count_if(queue_.begin(), queue_.end(), [](const Job* job) {
              return job->durability != Durability::kDeferred;
            }));
        // What is left (more than one batch) is written next, without waiting.
        deferred_deadline_ = queue_.empty() ? absl::InfiniteFuture() : absl::InfinitePast();
        // The batch's counts are final from here on.
        for (Job* job : batch) {
          if (job->counter != nullptr) job->counter->Seal();
        }
        open_counters_.clear();
        for (const Job* job : queue_) {
          if (job->counter != nullptr) open_counters_.push_back(job->counter);
        }
        // The oldest event in flight is the oldest that was queued; what is
        // still queued is counted as at least that old.
        if (!batch.empty()) {
          inflight_since_ns_.store(queued_since_ns_.load(std::memory_order_relaxed),
                                   std::memory_order_relaxed);
        }
        if (queue_.empty()) queued_since_ns_.store(0, std::memory_order_relaxed);
        stopping = writer_stop_ && queue_.empty();
        sync_due = unsynced_ && (stopping || absl::Now() >= sync_deadline_);
        if (stopping && batch.empty() && !unsynced_) return;
      }
      // Counted events stop counting now: what is added later needs a new event.
      for (Job* job : batch) {
        if (job->counter != nullptr) job->weight = job->counter->Take();
      }
      if (!batch.empty()) {
        WriteBatch(batch, sync_due);
        inflight_since_ns_.store(0, std::memory_order_relaxed);
      } else if (sync_due && !ForceSync() && stopping) {
        return;  // nothing more can be done; the last grouped commits stay unsynced
      }
    }
  }

  absl::Status SetSynchronous(bool full) {
    if (full == synchronous_full_) return absl::OkStatus();
    GV_RETURN_IF_ERROR(db_->Exec(full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                                 "set synchronous"));
    synchronous_full_ = full;
    return absl::OkStatus();
  }

  // Commits a tiny write with synchronous=FULL: SQLite then fsyncs the WAL,
  // which makes every earlier grouped commit durable too.
  bool ForceSync() {
    absl::Status s = SetSynchronous(true);
    if (s.ok()) {
      s = db_->Exec("UPDATE sync_marker SET syncs = syncs + 1 WHERE id = 1",
                    "fsync grouped records");
    }
    absl::MutexLock lock(&mu_);
    if (s.ok()) {
      unsynced_ = false;
    } else {
      sync_deadline_ =
          absl::Now() + std::max(options_.group_commit_interval, absl::Milliseconds(10));
    }
    return s.ok();
  }

  void WriteBatch(const std::vector<Job*>& batch, bool sync_due) {
    bool durable = sync_due || options_.group_commit_interval <= absl::ZeroDuration();
    for (const Job* job : batch) {
      if (job->kind == Job::Kind::kCheckpoint || job->durability == Durability::kDurable) {
        durable = true;
      }
    }
    std::map<std::string, Head> touched;
    std::map<std::string, std::string> new_chain_workspace;
    std::map<std::string, int64_t> first_new_time;  // per chain, the batch's first record
    CoalesceBatch(batch);
    absl::Status status =
        WriteBatchTransaction(batch, durable, touched, new_chain_workspace, first_new_time);
    for (Job* job : batch) {
      if (job->folded_into != nullptr) job->result = job->folded_into->result;
    }
    bool wake_checkpointer = false;
    std::vector<Job*> finished_async;
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) {
        // Checkpoints first: a record of this batch is always after them.
        for (const Job* job : batch) {
          if (job->kind != Job::Kind::kCheckpoint) continue;
          ChainState& state = chains_[job->checkpoint.chain];
          if (job->inserted && job->checkpoint.seq > state.signed_seq) {
            state.signed_seq = job->checkpoint.seq;
            state.signed_hash = job->checkpoint.head_hash;
            ++state.checkpoint_count;
            ++checkpoints_committed_;
            state.unsigned_since_us = job->unsigned_since_us;
          }
        }
        for (auto& [chain, head] : touched) {
          writer_heads_[chain] = head;
          ChainState& state = chains_[chain];
          if (auto it = new_chain_workspace.find(chain); it != new_chain_workspace.end()) {
            state.workspace_id = it->second;
          }
          if (state.head.seq <= state.signed_seq) state.unsigned_since_us = first_new_time[chain];
          state.head = head;
          if (state.head.seq - state.signed_seq >= options_.checkpoint_every_records) {
            wake_checkpointer = true;
          }
        }
        if (durable) {
          unsynced_ = false;
        } else if (!unsynced_) {
          unsynced_ = true;
          sync_deadline_ = absl::Now() + options_.group_commit_interval;
        }
      }
      for (Job* job : batch) {
        if (!status.ok()) job->result = status;
        if (job->on_done) {
          finished_async.push_back(job);
        } else {
          job->done = true;  // its waiter may free it from here on
        }
      }
      if (wake_checkpointer) checkpoint_wakeup_ = true;
    }
    // Outside the lock: a callback may append again.
    for (Job* job : finished_async) {
      std::unique_ptr<Job> owned(job);
      owned->on_done(owned->result);
    }
  }

  absl::Status WriteBatchTransaction(const std::vector<Job*>& batch, bool durable,
                                     std::map<std::string, Head>& touched,
                                     std::map<std::string, std::string>& new_chain_workspace,
                                     std::map<std::string, int64_t>& first_new_time) {
    db::Sqlite& db = *db_;
    GV_RETURN_IF_ERROR(SetSynchronous(durable));
    GV_ASSIGN_OR_RETURN(db::Transaction txn,
                        db::Transaction::Begin(db, db::Transaction::Mode::kImmediate));
    if (!insert_record_.has_value()) {
      GV_ASSIGN_OR_RETURN(
          db::Statement prepared,
          db.Prepare(absl::StrCat("INSERT INTO records (", kRecordColumns,
                                  ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                                  "?, ?, ?, ?, ?)"),
                     "append audit record"));
      insert_record_.emplace(std::move(prepared));
    }
    db::Statement& insert = *insert_record_;
    const int64_t now_us = absl::ToUnixMicros(clock_->Now());
    for (Job* job : batch) {
      if (job->kind == Job::Kind::kCheckpoint) {
        GV_RETURN_IF_ERROR(InsertCheckpoint(db, *job));
        continue;
      }
      if (job->folded_into != nullptr) continue;  // recorded by its representative
      Record& r = job->record;
      if (job->weight > 1) r.body.details[std::string(kCountDetail)] = std::to_string(job->weight);
      auto [it, inserted] = touched.try_emplace(r.chain);
      Head& head = it->second;
      if (inserted) {
        auto known = writer_heads_.find(r.chain);
        if (known != writer_heads_.end()) {
          head = known->second;
        } else {
          new_chain_workspace[r.chain] = r.body.workspace_id;
        }
      }
      // Times never go backwards within a chain, so that a time window is one
      // contiguous run of records (exports rely on it).
      const int64_t time_us = std::max(now_us, head.time_us);
      absl::StatusOr<std::string> time = format::FormatTime(time_us);
      if (!time.ok()) {
        job->result = absl::InternalError(
            absl::StrCat("audit: the clock is unusable: ", time.status().message()));
        continue;
      }
      r.seq = head.seq + 1;
      r.time = *time;
      r.prev_hash = head.hash;
      format::ComputeHashes(r);
      insert.Reset();
      insert.BindText(1, r.chain);
      insert.BindInt(2, static_cast<int64_t>(r.seq));
      insert.BindInt(3, time_us);
      insert.BindText(4, r.type);
      insert.BindText(5, r.prev_hash);
      insert.BindText(6, r.body_hash);
      insert.BindText(7, r.hash);
      const RecordBody& b = r.body;
      insert.BindText(8, b.workspace_id);
      insert.BindText(9, b.admin_user);
      insert.BindText(10, b.uid);
      insert.BindText(11, b.pid);
      insert.BindText(12, b.exe);
      insert.BindText(13, b.grant_id);
      insert.BindText(14, b.connector_id);
      insert.BindText(15, b.account_id);
      insert.BindText(16, ScopesJson(b.scopes));
      insert.BindText(17, b.outcome);
      insert.BindText(18, b.reason);
      insert.BindText(19, DetailsJson(b.details));
      GV_RETURN_IF_ERROR(insert.Run());
      first_new_time.try_emplace(r.chain, time_us);
      head.seq = r.seq;
      head.hash = r.hash;
      head.time_us = time_us;
    }
    if (!advance_head_.has_value()) {
      GV_ASSIGN_OR_RETURN(
          db::Statement prepared,
          db.Prepare("INSERT INTO chains (chain, workspace_id, head_seq, head_hash, head_time) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (chain) DO UPDATE SET "
                     "head_seq = excluded.head_seq, head_hash = excluded.head_hash, "
                     "head_time = excluded.head_time",
                     "advance audit chain head"));
      advance_head_.emplace(std::move(prepared));
    }
    db::Statement& upsert = *advance_head_;
    for (const auto& [chain, head] : touched) {
      if (head.seq == 0) continue;  // every record of a new chain failed
      upsert.Reset();
      upsert.BindText(1, chain);
      auto ws = new_chain_workspace.find(chain);
      upsert.BindText(2, ws != new_chain_workspace.end() ? ws->second : chains_workspace(chain));
      upsert.BindInt(3, static_cast<int64_t>(head.seq));
      upsert.BindText(4, head.hash);
      upsert.BindInt(5, head.time_us);
      GV_RETURN_IF_ERROR(upsert.Run());
    }
    GV_RETURN_IF_ERROR(txn.Commit());
    for (auto it = touched.begin(); it != touched.end();) {
      it = it->second.seq == 0 ? touched.erase(it) : std::next(it);
    }
    return absl::OkStatus();
  }

  // The workspace id of a chain already in the database: only used for the
  // upsert's insert half, which never runs for an existing chain.
  static std::string chains_workspace(const std::string& chain) {
    if (chain == format::kSystemChain) return "";
    return chain.substr(format::kWorkspaceChainPrefix.size());
  }

  absl::Status InsertCheckpoint(db::Sqlite& db, Job& job) {
    const format::Checkpoint& c = job.checkpoint;
    // Checkpoints only move forward (two signers may race for one head, or
    // an older head's checkpoint may arrive after a newer one's): the count
    // the token anchors must stay the count of rows.
    GV_ASSIGN_OR_RETURN(
        db::Statement insert,
        db.Prepare("INSERT INTO checkpoints (chain, seq, head_hash, time, key_label, "
                   "signature) SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS "
                   "(SELECT 1 FROM checkpoints WHERE chain = ?1 AND seq >= ?2)",
                   absl::StrCat("store checkpoint of chain ", c.chain)));
    insert.BindText(1, c.chain);
    insert.BindInt(2, static_cast<int64_t>(c.seq));
    insert.BindText(3, c.head_hash);
    insert.BindInt(4, job.checkpoint_time_us);
    insert.BindText(5, c.key_label);
    insert.BindBlob(6, c.signature);
    GV_RETURN_IF_ERROR(insert.Run());
    job.inserted = db.Changes() > 0;
    GV_ASSIGN_OR_RETURN(db::Statement next,
                        db.Prepare("SELECT time FROM records WHERE chain = ? AND seq = ?",
                                   "read the record after a checkpoint"));
    next.BindText(1, c.chain);
    next.BindInt(2, static_cast<int64_t>(c.seq + 1));
    GV_ASSIGN_OR_RETURN(bool row, next.Step());
    job.unsigned_since_us = row ? next.Int(0) : 0;
    return absl::OkStatus();
  }

  const std::string path_;
  std::unique_ptr<db::Sqlite> db_;              // used only by the writer thread
  bool synchronous_full_ = true;                // writer thread only
  std::map<std::string, Head> writer_heads_;    // writer thread only: committed heads
  std::optional<db::Statement> insert_record_;  // writer thread only, prepared once
  std::optional<db::Statement> advance_head_;   // writer thread only, prepared once
  const std::unique_ptr<Signer> signer_;
  const std::unique_ptr<AnchorStore> anchor_store_;
  // Serialises anchor saves; taken before mu_.
  absl::Mutex anchor_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // How many of the checkpoints committed since Open (checkpoints_committed_)
  // the token's anchors include.
  uint64_t checkpoints_anchored_ ABSL_GUARDED_BY(anchor_mu_) = 0;
  const std::string pem_;
  const SecretBytes fingerprint_key_;
  Clock* const clock_;
  const AuditOptions options_;

  mutable absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> backlog_{0};                 // queue_.size(), readable without mu_
  size_t urgent_queued_ ABSL_GUARDED_BY(mu_) = 0;  // queued, not kDeferred
  // Counters of queued events that may still be added to (PendingCount).
  std::vector<std::shared_ptr<PendingCount>> open_counters_ ABSL_GUARDED_BY(mu_);
  // Steady-clock nanoseconds at which the oldest queued event, and the
  // oldest event of the batch being written, were queued (0: none). Written
  // under mu_ (queued) or by the writer (in flight); read without a lock.
  std::atomic<int64_t> queued_since_ns_{0};
  std::atomic<int64_t> inflight_since_ns_{0};
  // When the oldest queued kDeferred event is due (InfiniteFuture: none).
  absl::Time deferred_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;         // the checkpoint thread
  bool writer_stop_ ABSL_GUARDED_BY(mu_) = false;  // the writer (after the checkpoint thread)
  bool checkpoint_wakeup_ ABSL_GUARDED_BY(mu_) = false;
  bool unsynced_ ABSL_GUARDED_BY(mu_) = false;  // grouped commits not yet fsynced
  absl::Time sync_deadline_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ChainState> chains_ ABSL_GUARDED_BY(mu_);
  uint64_t checkpoints_committed_ ABSL_GUARDED_BY(mu_) = 0;  // since Open, by the writer
  CheckpointHealth health_ ABSL_GUARDED_BY(mu_);

  std::thread writer_;
  std::thread checkpointer_;
};

// --- export ----------------------------------------------------------------------

namespace {

absl::StatusOr<std::optional<int64_t>> QueryOptionalInt(db::Sqlite& db, const std::string& sql,
                                                        const std::string& chain,
                                                        std::optional<int64_t> arg2,
                                                        std::optional<int64_t> arg3) {
  GV_ASSIGN_OR_RETURN(db::Statement q, db.Prepare(sql, "plan audit export"));
  q.BindText(1, chain);
  if (arg2.has_value()) q.BindInt(2, *arg2);
  if (arg3.has_value()) q.BindInt(3, *arg3);
  GV_ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row || q.IsNull(0)) return std::optional<int64_t>();
  return std::optional<int64_t>(q.Int(0));
}

}  // namespace

absl::Status AuditLog::Impl::Export(const ExportFilter& filter, ExportFormat fmt, std::ostream& out,
                                    const std::function<void(uint64_t, uint64_t)>& progress) {
  format::Statement statement;
  statement.chain = format::ChainIdFor(filter.workspace_id);
  statement.workspace_id = filter.workspace_id;
  std::optional<int64_t> since_us, until_us;
  if (filter.since.has_value()) {
    since_us = absl::ToUnixMicros(*filter.since);
    GV_ASSIGN_OR_RETURN(std::string since, format::FormatTime(*since_us));
    statement.since = since;
  }
  if (filter.until.has_value()) {
    until_us = absl::ToUnixMicros(*filter.until);
    GV_ASSIGN_OR_RETURN(std::string until, format::FormatTime(*until_us));
    statement.until = until;
  }
  if (since_us.has_value() && until_us.has_value() && *since_us >= *until_us) {
    return absl::InvalidArgumentError("audit export: since must be before until");
  }
  for (const std::string& type : filter.types) {
    if (!IsKnownEventType(type)) {
      return absl::InvalidArgumentError(
          absl::StrCat("audit export: unknown event type \"", type, "\""));
    }
  }
  std::set<std::string> types(filter.types.begin(), filter.types.end());
  statement.types.assign(types.begin(), types.end());

  // The export must end with a signed checkpoint of its last record.
  GV_RETURN_IF_ERROR(Checkpoint());

  GV_ASSIGN_OR_RETURN(std::unique_ptr<db::Sqlite> db,
                      db::Sqlite::Open(path_, DatabaseOptions(options_, /*read_only=*/true)));
  GV_ASSIGN_OR_RETURN(db::Transaction snapshot,
                      db::Transaction::Begin(*db, db::Transaction::Mode::kDeferred));
  const std::string& chain = statement.chain;
  GV_ASSIGN_OR_RETURN(std::optional<int64_t> final_seq,
                      QueryOptionalInt(*db, "SELECT max(seq) FROM checkpoints WHERE chain = ?",
                                       chain, std::nullopt, std::nullopt));
  GV_ASSIGN_OR_RETURN(std::optional<int64_t> head_seq,
                      QueryOptionalInt(*db, "SELECT head_seq FROM chains WHERE chain = ?", chain,
                                       std::nullopt, std::nullopt));
  if (head_seq.has_value() && !final_seq.has_value()) {
    return absl::UnavailableError(absl::StrCat(
        "audit export: chain ", chain, " has no checkpoint yet (it was just created); retry"));
  }
  uint64_t first = 0, last = 0, entries = 0;
  if (final_seq.has_value()) {
    first = 1;
    if (since_us.has_value()) {
      GV_ASSIGN_OR_RETURN(std::optional<int64_t> before,
                          QueryOptionalInt(*db,
                                           "SELECT max(seq) FROM records WHERE chain = ? AND "
                                           "time < ? AND seq <= ?",
                                           chain, *since_us, *final_seq));
      if (before.has_value()) first = static_cast<uint64_t>(*before);
    }
    last = static_cast<uint64_t>(*final_seq);
    if (until_us.has_value()) {
      GV_ASSIGN_OR_RETURN(std::optional<int64_t> after,
                          QueryOptionalInt(*db,
                                           "SELECT min(seq) FROM records WHERE chain = ? AND "
                                           "time >= ? AND seq <= ?",
                                           chain, *until_us, *final_seq));
      if (after.has_value()) {
        GV_ASSIGN_OR_RETURN(std::optional<int64_t> covering,
                            QueryOptionalInt(*db,
                                             "SELECT min(seq) FROM checkpoints WHERE chain = ? "
                                             "AND seq >= ?",
                                             chain, *after, std::nullopt));
        if (covering.has_value()) last = static_cast<uint64_t>(*covering);
      }
    }
    GV_ASSIGN_OR_RETURN(
        std::optional<int64_t> checkpoints,
        QueryOptionalInt(*db,
                         "SELECT count(*) FROM checkpoints WHERE chain = ? AND "
                         "seq BETWEEN ? AND ?",
                         chain, static_cast<int64_t>(first), static_cast<int64_t>(last)));
    entries = last - first + 1 + static_cast<uint64_t>(checkpoints.value_or(0));
  }
  statement.first_seq = first;
  statement.last_seq = last;
  statement.entries = entries;
  GV_ASSIGN_OR_RETURN(statement.exported_at, format::FormatTime(absl::ToUnixMicros(clock_->Now())));
  statement.key_label = signer_->key_label();
  std::string message = format::CanonicalStatement(statement);
  GV_ASSIGN_OR_RETURN(
      statement.signature,
      signer_->SignSha256({reinterpret_cast<const uint8_t*>(message.data()), message.size()}));

  std::unique_ptr<format::ExportWriter> writer = format::MakeExportWriter(fmt, out);
  writer->Write(statement);
  uint64_t done = 0;
  if (progress) progress(0, entries);
  if (entries > 0) {
    GV_ASSIGN_OR_RETURN(
        db::Statement records,
        db->Prepare(absl::StrCat("SELECT ", kRecordColumns,
                                 " FROM records WHERE chain = ? AND seq BETWEEN ? AND ? "
                                 "ORDER BY seq"),
                    "read audit records"));
    records.BindText(1, chain);
    records.BindInt(2, static_cast<int64_t>(first));
    records.BindInt(3, static_cast<int64_t>(last));
    GV_ASSIGN_OR_RETURN(
        db::Statement checkpoints,
        db->Prepare("SELECT seq, head_hash, time, key_label, signature FROM checkpoints "
                    "WHERE chain = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                    "read audit checkpoints"));
    checkpoints.BindText(1, chain);
    checkpoints.BindInt(2, static_cast<int64_t>(first));
    checkpoints.BindInt(3, static_cast<int64_t>(last));
    GV_ASSIGN_OR_RETURN(bool have_checkpoint, checkpoints.Step());
    auto tick = [&] {
      ++done;
      if (progress && (done % 1024 == 0 || done == entries)) progress(done, entries);
    };
    while (true) {
      GV_ASSIGN_OR_RETURN(bool row, records.Step());
      if (!row) break;
      Record r = ReadRecordRow(records);
      r.stub = !format::MatchesFilter(statement, r.time, r.type);
      writer->Write(r);
      tick();
      while (have_checkpoint && static_cast<uint64_t>(checkpoints.Int(0)) <= r.seq) {
        writer->Write(ReadCheckpointRow(chain, checkpoints));
        tick();
        GV_ASSIGN_OR_RETURN(have_checkpoint, checkpoints.Step());
      }
      if (!out) return absl::UnavailableError("audit export: cannot write the output");
    }
    if (done != entries) {
      return absl::DataLossError(absl::StrCat("audit export of chain ", chain, ": expected ",
                                              entries, " entries but the database yielded ", done,
                                              " (records missing between seq ", first, " and ",
                                              last, ")"));
    }
  }
  out.flush();
  if (!out) return absl::UnavailableError("audit export: cannot write the output");
  return snapshot.Commit();
}

// --- opening -----------------------------------------------------------------------

namespace {

absl::Status RecordSigningKey(db::Sqlite& db, const std::string& label, const std::string& pem) {
  GV_ASSIGN_OR_RETURN(db::Transaction txn,
                      db::Transaction::Begin(db, db::Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(db::Statement q,
                      db.Prepare("SELECT public_key_pem FROM signing_keys WHERE key_label = ?",
                                 "read audit signing keys"));
  q.BindText(1, label);
  GV_ASSIGN_OR_RETURN(bool row, q.Step());
  if (row) {
    if (q.Text(0) != pem) {
      return absl::FailedPreconditionError(absl::StrCat(
          "audit key ", label,
          " in the token is not the key that signed this audit log (was the token replaced or "
          "the key regenerated?)"));
    }
    return absl::OkStatus();
  }
  GV_ASSIGN_OR_RETURN(
      db::Statement insert,
      db.Prepare(
          "INSERT INTO signing_keys (key_label, public_key_pem, first_used_at) VALUES (?, ?, ?)",
          "record the audit signing key"));
  insert.BindText(1, label);
  insert.BindText(2, pem);
  insert.BindInt(3, absl::ToUnixMicros(absl::Now()));
  GV_RETURN_IF_ERROR(insert.Run());
  return txn.Commit();
}

// What a chain is checked against at open: the token's key (never a key
// read from the database) and the chain's anchor in the token, if any.
struct TrustedKey {
  std::string label;
  format::PublicKey key;
};

absl::Status RolledBackError(const std::string& chain, const ChainAnchor& anchor,
                             std::string_view what) {
  return absl::DataLossError(absl::StrCat(
      "audit log: chain ", chain, ": the token's anchor is seq ", anchor.seq, " (",
      anchor.checkpoints, " checkpoints) but ", Sv(what),
      "; the database was rolled back, truncated or rewritten (export and verify what is left, "
      "then see docs/audit.md, \"Anchors\")"));
}

// Verifies a whole chain from seq 1: the head row against the last record,
// every record's hashes, links and times, every checkpoint's signature with
// the token's key and the record it covers, and the token's anchor (the
// anchored record, and the number of checkpoints up to it). Returns the state
// to continue from; `last_checkpoint` is the anchor the database supports now.
absl::StatusOr<ChainState> VerifyChain(db::Sqlite& db, const std::string& chain, ChainState state,
                                       const TrustedKey& trusted, const ChainAnchor* anchor,
                                       ChainAnchor& last_checkpoint) {
  GV_ASSIGN_OR_RETURN(db::Statement last, db.Prepare("SELECT max(seq) FROM records WHERE chain = ?",
                                                     "read the chain tail"));
  last.BindText(1, chain);
  GV_ASSIGN_OR_RETURN(bool row, last.Step());
  if (!row || last.IsNull(0)) return TamperedError(chain, state.head.seq, "its records are gone");
  uint64_t max_seq = static_cast<uint64_t>(last.Int(0));
  if (max_seq != state.head.seq) {
    return TamperedError(chain, max_seq,
                         absl::StrCat("the chain head says seq ", state.head.seq,
                                      " but the last record is seq ", max_seq));
  }
  if (anchor != nullptr && state.head.seq < anchor->seq) {
    return RolledBackError(chain, *anchor,
                           absl::StrCat("the database ends at seq ", state.head.seq));
  }
  GV_ASSIGN_OR_RETURN(db::Statement checkpoints,
                      db.Prepare("SELECT seq, head_hash, time, key_label, signature "
                                 "FROM checkpoints WHERE chain = ? ORDER BY seq",
                                 "read the chain's checkpoints"));
  checkpoints.BindText(1, chain);
  GV_ASSIGN_OR_RETURN(bool have_checkpoint, checkpoints.Step());
  GV_ASSIGN_OR_RETURN(db::Statement records,
                      db.Prepare(absl::StrCat("SELECT ", kRecordColumns,
                                              " FROM records WHERE chain = ? ORDER BY seq"),
                                 "verify the chain"));
  records.BindText(1, chain);
  uint64_t expected_seq = 1;
  int64_t previous_time = 0;
  std::string previous_hash(format::kGenesisHash);
  last_checkpoint = ChainAnchor{};
  int64_t unsigned_since_us = 0;
  while (true) {
    GV_ASSIGN_OR_RETURN(bool more, records.Step());
    if (!more) break;
    Record r = ReadRecordRow(records);
    const int64_t time_us = records.Int(2);
    const std::string stored_hash = r.hash;
    const std::string stored_body_hash = r.body_hash;
    format::ComputeHashes(r);
    if (r.seq != expected_seq) return TamperedError(chain, expected_seq, "the record is missing");
    if (r.body_hash != stored_body_hash || r.hash != stored_hash) {
      return TamperedError(chain, r.seq, "the record does not match its hash");
    }
    if (r.prev_hash != previous_hash) {
      return TamperedError(chain, r.seq, "prev_hash does not match the previous record");
    }
    if (time_us < previous_time) return TamperedError(chain, r.seq, "time goes backwards");
    if (r.seq == last_checkpoint.seq + 1) unsigned_since_us = time_us;
    while (have_checkpoint && static_cast<uint64_t>(checkpoints.Int(0)) <= r.seq) {
      const format::Checkpoint c = ReadCheckpointRow(chain, checkpoints);
      if (c.seq != r.seq) {
        return TamperedError(chain, c.seq, "a checkpoint names a seq that has no record");
      }
      if (c.key_label != trusted.label) {
        return TamperedError(
            chain, c.seq,
            absl::StrCat("the checkpoint names key \"", c.key_label,
                         "\", which is not the token's audit key \"", trusted.label, "\""));
      }
      if (c.head_hash != r.hash) {
        return TamperedError(chain, c.seq, "the checkpoint does not match the record it covers");
      }
      if (!trusted.key.Verify(format::CanonicalCheckpoint(c), c.signature)) {
        return TamperedError(chain, c.seq,
                             "the checkpoint's signature does not verify with the token's key");
      }
      last_checkpoint = ChainAnchor{c.seq, c.head_hash, last_checkpoint.checkpoints + 1};
      GV_ASSIGN_OR_RETURN(have_checkpoint, checkpoints.Step());
    }
    if (anchor != nullptr && r.seq == anchor->seq) {
      if (r.hash != anchor->head_hash) {
        return RolledBackError(
            chain, *anchor, absl::StrCat("the record at seq ", r.seq, " is not the anchored one"));
      }
      if (last_checkpoint != *anchor) {
        return RolledBackError(
            chain, *anchor,
            absl::StrCat("the database holds ", last_checkpoint.checkpoints,
                         " checkpoints up to it, the last at seq ", last_checkpoint.seq));
      }
    }
    previous_time = time_us;
    previous_hash = r.hash;
    ++expected_seq;
  }
  if (have_checkpoint) {
    return TamperedError(chain, static_cast<uint64_t>(checkpoints.Int(0)),
                         absl::StrCat("a checkpoint covers seq ", checkpoints.Int(0),
                                      " but the chain ends at seq ", state.head.seq));
  }
  if (expected_seq != state.head.seq + 1 || previous_hash != state.head.hash) {
    return TamperedError(chain, state.head.seq, "the chain head does not match the last record");
  }
  state.signed_seq = last_checkpoint.seq;
  state.signed_hash = last_checkpoint.head_hash;
  state.checkpoint_count = last_checkpoint.checkpoints;
  state.unsigned_since_us = unsigned_since_us;
  state.head.time_us = std::max(state.head.time_us, previous_time);
  return state;
}

// Loads and verifies every chain against the token's key and anchors.
// `supported` receives the anchors the verified database supports (equal to
// or ahead of `anchors`).
absl::StatusOr<std::map<std::string, ChainState>> LoadChains(db::Sqlite& db,
                                                             const TrustedKey& trusted,
                                                             const ChainAnchors& anchors,
                                                             ChainAnchors& supported) {
  std::map<std::string, ChainState> chains;
  {
    GV_ASSIGN_OR_RETURN(db::Statement q,
                        db.Prepare("SELECT chain, workspace_id, head_seq, head_hash, head_time "
                                   "FROM chains",
                                   "read audit chains"));
    while (true) {
      GV_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      ChainState state;
      state.workspace_id = q.Text(1);
      state.head.seq = static_cast<uint64_t>(q.Int(2));
      state.head.hash = q.Text(3);
      state.head.time_us = q.Int(4);
      std::string chain = q.Text(0);
      if (chain != format::ChainIdFor(state.workspace_id)) {
        return TamperedError(chain, state.head.seq, "the chain does not match its workspace");
      }
      chains.emplace(std::move(chain), std::move(state));
    }
  }
  for (const auto& [chain, anchor] : anchors) {
    if (!chains.contains(chain)) {
      return RolledBackError(chain, anchor, "the database has no such chain (deleted)");
    }
  }
  {
    GV_ASSIGN_OR_RETURN(db::Statement q, db.Prepare("SELECT DISTINCT chain FROM checkpoints",
                                                    "read checkpointed chains"));
    while (true) {
      GV_ASSIGN_OR_RETURN(bool row, q.Step());
      if (!row) break;
      if (chains.count(q.Text(0)) == 0) {
        return TamperedError(q.Text(0), 0, "the chain has checkpoints but no head");
      }
    }
  }
  supported.clear();
  for (auto& [chain, state] : chains) {
    auto anchor = anchors.find(chain);
    ChainAnchor last_checkpoint;
    GV_ASSIGN_OR_RETURN(
        state, VerifyChain(db, chain, std::move(state), trusted,
                           anchor == anchors.end() ? nullptr : &anchor->second, last_checkpoint));
    if (last_checkpoint.checkpoints > 0) supported.emplace(chain, std::move(last_checkpoint));
  }
  return chains;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::string& database_path,
                                                         std::unique_ptr<Signer> signer,
                                                         std::unique_ptr<AnchorStore> anchor_store,
                                                         SecretBytes fingerprint_key, Clock* clock,
                                                         AuditOptions options) {
  if (database_path.empty() || database_path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("audit database path must be a non-empty path");
  }
  if (signer == nullptr) return absl::InvalidArgumentError("audit log needs a signer");
  if (anchor_store == nullptr) {
    return absl::InvalidArgumentError("audit log needs an anchor store (audit/anchor.h)");
  }
  if (clock == nullptr) return absl::InvalidArgumentError("audit log needs a clock");
  if (fingerprint_key.size() < kMinFingerprintKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat("audit fingerprint key must have at least ",
                                                   kMinFingerprintKeyBytes, " bytes"));
  }
  if (options.checkpoint_every_records == 0 || options.checkpoint_every <= absl::ZeroDuration() ||
      options.checkpoint_poll_interval <= absl::ZeroDuration() ||
      options.checkpoint_retry_interval < absl::ZeroDuration() ||
      options.group_commit_interval < absl::ZeroDuration() || options.max_batch == 0 ||
      options.busy_timeout_ms < 0) {
    return absl::InvalidArgumentError(
        "audit options: checkpoint cadence, poll interval and batch size must be positive, "
        "intervals and busy timeout not negative");
  }
  if (options.deferred_interval < absl::ZeroDuration() ||
      options.deferred_interval > absl::Minutes(1)) {
    return absl::InvalidArgumentError("audit options: deferred_interval must be 0..60 s");
  }
  if (signer->key_label().empty()) {
    return absl::InvalidArgumentError("audit signer has no key label");
  }
  GV_ASSIGN_OR_RETURN(std::string pem, signer->PublicKeyPem());
  GV_RETURN_IF_ERROR(format::PublicKey::FromPem(pem).status());

  GV_ASSIGN_OR_RETURN(
      std::unique_ptr<db::Sqlite> db,
      db::Sqlite::Open(database_path, DatabaseOptions(options, /*read_only=*/false)));
  GV_RETURN_IF_ERROR(db::Migrate(*db, kMigrations));
  GV_RETURN_IF_ERROR(RecordSigningKey(*db, signer->key_label(), pem));
  // Checkpoints are checked with the signer's key as the token gives it,
  // never with a key read from the database (which anyone who can write the
  // file could replace).
  GV_ASSIGN_OR_RETURN(format::PublicKey token_key, format::PublicKey::FromPem(pem));
  const TrustedKey trusted{signer->key_label(), std::move(token_key)};
  GV_ASSIGN_OR_RETURN(std::optional<ChainAnchors> loaded, anchor_store->Load());
  const ChainAnchors anchors = loaded.value_or(ChainAnchors{});
  ChainAnchors supported;
  GV_ASSIGN_OR_RETURN(ChainMap chains, LoadChains(*db, trusted, anchors, supported));
  // First use (no anchor yet), or a crash between a checkpoint's commit and
  // its anchor: the database, verified above, moves the anchor forward.
  if (!loaded.has_value() || supported != anchors) {
    absl::Status saved = anchor_store->Save(supported);
    if (!saved.ok()) {
      return absl::Status(saved.code(),
                          absl::StrCat("audit anchor (in the token): ", saved.message()));
    }
  }
  return std::unique_ptr<AuditLog>(new AuditLog(std::make_unique<Impl>(
      database_path, std::move(db), std::move(signer), std::move(anchor_store), std::move(pem),
      std::move(fingerprint_key), clock, options, std::move(chains))));
}

AuditLog::AuditLog(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditLog::~AuditLog() = default;

absl::Status AuditLog::Append(Event event, Durability durability) {
  return impl_->Append(std::move(event), durability);
}

std::shared_ptr<PendingCount> AuditLog::AppendCounted(Event event, Durability durability,
                                                      std::function<void(absl::Status)> on_done) {
  return impl_->AppendCounted(std::move(event), durability, std::move(on_done));
}

void AuditLog::AppendAsync(Event event, Durability durability,
                           std::function<void(absl::Status)> on_done) {
  impl_->AppendAsync(std::move(event), durability, std::move(on_done));
}

std::string AuditLog::Fingerprint(const SecretBytes& token) const {
  return impl_->Fingerprint(token);
}

absl::Status AuditLog::Checkpoint() { return impl_->Checkpoint(); }

absl::Status AuditLog::Export(const ExportFilter& filter, ExportFormat format, std::ostream& out,
                              std::function<void(uint64_t done, uint64_t total)> progress) {
  return impl_->Export(filter, format, out, progress);
}

std::string AuditLog::PublicKeyPem() const { return impl_->pem(); }

bool AuditLog::HasChain(std::string_view workspace_id) const {
  return impl_->HasChain(workspace_id);
}

CheckpointHealth AuditLog::checkpoint_health() const { return impl_->health(); }

size_t AuditLog::backlog() const { return impl_->backlog(); }

absl::Duration AuditLog::oldest_uncommitted_age() const { return impl_->oldest_uncommitted_age(); }

}  // namespace grantvault::audit
