// What the audit trail records of agents: token releases (recorded before the token
// leaves, or counted as repeats), refusals, and callers no rule matches.

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log_escape.h"
#include "common/secret_bytes.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {

using internal::AddGrantFields;
using internal::ErrorResponse;
using internal::LogRelease;

namespace {

// Token releases remembered as recorded per connection (more: forget them all).
constexpr size_t kMaxRecordedReleases = 64;

// A repeated release is answered before its record commits only while the
// audit writer has fewer events than this waiting.
constexpr size_t kMaxAuditBacklog = 16384;
// …and while no audit event has waited longer than this to be committed (a
// stuck or failing writer): repeats then wait for their records too.
constexpr absl::Duration kMaxUnrecordedRepeatAge = absl::Milliseconds(500);

// What makes two releases to one process the same release: the token (by
// serial, or fingerprint), the grant, the tool, the scopes and the caller's
// executable when known. Everything else in the record is the caller's, fixed
// for the connection.
// (Length-prefixed fields: no two different releases share a key.)
std::string ReleaseKey(const std::string& grant_id, const std::string& token_name,
                       const std::string& tool, const std::vector<std::string>& scopes,
                       const std::string& exe) {
  std::string key;
  auto add = [&key](const std::string& field) { absl::StrAppend(&key, field.size(), ":", field); };
  add(exe);  // what the record names the caller by, once learnt
  add(grant_id);
  add(token_name);
  add(tool);
  for (const std::string& scope : scopes) add(scope);
  return key;
}

}  // namespace

bool Service::RepeatsGoFirst() const {
  // Repeats wait for their record like first releases while the log lags
  // (docs/audit.md): too much queued, or an event uncommitted for too long.
  return trail_.audit != nullptr && trail_.audit->backlog() < kMaxAuditBacklog &&
         trail_.audit->oldest_uncommitted_age() < kMaxUnrecordedRepeatAge;
}

void Service::FinishResolve(const std::shared_ptr<ipc::Connection>& connection,
                            const v1::Request& request, const std::shared_ptr<CallerSlot>& slot,
                            const policy::CallerIdentity* caller, absl::StatusOr<Resolved> resolved,
                            const std::optional<RepeatBasis>& basis) {
  const v1::ResolveRequest& in = request.resolve();
  const ipc::PeerCredentials& peer = connection->peer();
  const uint64_t id = request.request_id();
  // The audit record's fields common to a release and a refusal (built only
  // when a record is written: a counted repeat needs none).
  auto event_of_call = [&] {
    audit::Event e;
    e.workspace_id = in.workspace_id();
    e.connector_id = in.connector_id();
    e.actor.uid = peer.uid;
    e.actor.pid = peer.pid;
    if (caller != nullptr && caller->exe_path) e.actor.exe = *caller->exe_path;
    if (!in.tool().empty()) e.details["tool"] = in.tool();
    return e;
  };
  if (!resolved.ok()) {
    audit::Event e = event_of_call();
    e.details["request_id"] = absl::StrCat(id);
    e.scopes.assign(in.scopes().begin(), in.scopes().end());
    SendResponse(*connection, ErrorResponse(id, resolved.status()));
    CloseIfCallerRefused(*connection, resolved.status(), caller);
    // Refused either way: the record is not waited for.
    RecordRefusal(peer, caller, std::move(e), resolved.status());
    return;
  }
  absl::StatusOr<Reply> reply = ReplyFrame(slot.get(), id, *resolved);
  if (!reply.ok()) {
    SendResponse(*connection,
                 ErrorResponse(id, v1::Error::INTERNAL, std::string(reply.status().message())));
    return;
  }
  std::string* frame = &reply->frame;
  LogRelease(peer, in, resolved->grant->grant_id);
  if (trail_.audit == nullptr) {
    connection->Send(std::move(*frame), /*final=*/true);
    return;
  }
  // The token is named by its serial when it has one (no HMAC per repeat);
  // its fingerprint is computed only for a record.
  std::string fingerprint;
  if (resolved->token->serial == 0) fingerprint = trail_.audit->Fingerprint(resolved->token->token);
  std::string key = ReleaseKey(
      resolved->grant->grant_id,
      resolved->token->serial != 0 ? absl::StrCat("serial ", resolved->token->serial) : fingerprint,
      in.tool(), resolved->scopes,
      caller != nullptr && caller->exe_path ? *caller->exe_path : std::string());
  const uint64_t epoch = audit_epoch_->load();
  const RepeatKind kind =
      slot != nullptr && RepeatsGoFirst() ? CountRepeat(*slot, key, epoch) : RepeatKind::kFirst;
  if (kind != RepeatKind::kFirst) {
    // This process already received this very token, and that release is
    // committed: sending it again discloses nothing new. The repeat is still
    // recorded (counted into a deferred record), without holding the answer
    // back. A failure makes every release wait for its record again.
    connection->Send(std::move(*frame), /*final=*/true);
    if (kind == RepeatKind::kCounted) {
      if (basis) {
        absl::MutexLock lock(&slot->mu);
        RememberRepeat(*slot, request, key, *resolved, *basis, epoch, reply->part);
      }
      return;
    }
  }
  audit::Event e = event_of_call();
  e.type = "token.released";
  e.outcome = "ok";
  AddGrantFields(*resolved->grant, e);
  e.scopes = resolved->scopes;
  if (fingerprint.empty()) fingerprint = trail_.audit->Fingerprint(resolved->token->token);
  e.details["token_fingerprint"] = std::move(fingerprint);
  // Repeated releases of the same token to the same process share a record
  // (with a count): the release is recorded, not the request (docs/audit.md).
  e.coalesce = true;
  if (kind == RepeatKind::kUncounted) {
    std::shared_ptr<audit::PendingCount> count = trail_.audit->AppendCounted(
        std::move(e), audit::Durability::kDeferred, [epochs = audit_epoch_](absl::Status audited) {
          if (audited.ok()) return;
          epochs->fetch_add(1);
          spdlog::error("token.released (repeat) not recorded: {}",
                        EscapeTextForLog(std::string(audited.message())));
        });
    if (count != nullptr) {
      absl::MutexLock lock(&slot->mu);
      auto it = slot->recorded_releases.find(key);
      if (it != slot->recorded_releases.end() && it->second.epoch == epoch) {
        it->second.counting = std::move(count);
        if (basis) RememberRepeat(*slot, request, key, *resolved, *basis, epoch, reply->part);
      }
    }
    return;
  }
  // Fail closed: the token leaves only once its release is recorded (group
  // commit: the writer calls back when the batch is committed).
  auto bytes = std::make_shared<std::string>(std::move(*frame));
  trail_.audit->AppendAsync(
      std::move(e), audit::Durability::kGrouped,
      [connection, bytes, id, uid = peer.uid, pid = peer.pid, slot, key = std::move(key), epoch,
       epochs = audit_epoch_](absl::Status audited) {
        if (audited.ok()) {
          if (slot != nullptr && epochs->load() == epoch) RememberRecorded(*slot, key, epoch);
          connection->Send(std::move(*bytes), /*final=*/true);
          return;
        }
        epochs->fetch_add(1);
        WipeMemory(bytes->data(), bytes->size());
        spdlog::error("token.withheld uid={} pid={}: the audit log cannot record it: {}", uid, pid,
                      EscapeTextForLog(std::string(audited.message())));
        v1::Response r = ErrorResponse(
            id, v1::Error::UNAVAILABLE,
            absl::StrCat("the audit log cannot record the release, so no token is released: ",
                         audited.message()));
        r.mutable_error()->set_retry_after_ms(1000);
        SendResponse(*connection, r);
      });
}

Service::RepeatKind Service::CountRepeat(CallerSlot& slot, const std::string& key, uint64_t epoch) {
  absl::MutexLock lock(&slot.mu);
  auto it = slot.recorded_releases.find(key);
  if (it == slot.recorded_releases.end() || it->second.epoch != epoch) return RepeatKind::kFirst;
  if (it->second.counting != nullptr && it->second.counting->Add()) return RepeatKind::kCounted;
  return RepeatKind::kUncounted;
}

void Service::RememberRecorded(CallerSlot& slot, const std::string& key, uint64_t epoch) {
  absl::MutexLock lock(&slot.mu);
  if (slot.recorded_releases.size() >= kMaxRecordedReleases) {
    slot.recorded_releases.clear();
    slot.repeats.clear();  // they rest on releases remembered here
    slot.next_repeat = 0;
  }
  slot.recorded_releases.insert_or_assign(key, CallerSlot::RecordedRelease{epoch, nullptr});
}

void Service::RecordRefusal(const ipc::PeerCredentials& peer, const policy::CallerIdentity* caller,
                            audit::Event e, const absl::Status& refusal) {
  const std::string reason(refusal.message());
  if (caller == nullptr || !agents_.resolver->MatchesACallerRule(*caller)) {
    CountUnmatched(peer, refusal);
    return;
  }
  spdlog::info("token.denied uid={} pid={} workspace={} connector={} tool={} reason={}", peer.uid,
               peer.pid, EscapeForLog(e.workspace_id), EscapeForLog(e.connector_id),
               EscapeForLog(e.details.contains("tool") ? e.details["tool"] : ""),
               EscapeTextForLog(reason));
  if (trail_.audit == nullptr) return;
  if (e.type.empty()) e.type = "token.denied";  // a proxied call's refusal keeps proxy.call
  e.outcome = "denied";
  e.reason = reason;
  // A chain is made only for a workspace the policy declares (or that has
  // one already, e.g. from its grants' admin events).
  if (!e.workspace_id.empty() && !agents_.resolver->DeclaresWorkspace(e.workspace_id) &&
      !trail_.audit->HasChain(e.workspace_id)) {
    e.details["requested_workspace"] = std::move(e.workspace_id);
    e.workspace_id.clear();
  }
  trail_.audit->AppendAsync(std::move(e), audit::Durability::kGrouped, [](absl::Status) {});
}

void Service::CountUnmatched(const ipc::PeerCredentials& peer, const absl::Status& refusal) {
  // Anyone on the host can ask: no record (nor log line) per refusal.
  std::optional<UnmatchedCallerTally::Summary> due =
      unmatched_callers_.Count(peer.uid, peer.pid, std::string(refusal.message()), clock_->Now());
  if (due.has_value()) RecordUnmatched(*due);
}

void Service::RecordUnmatched(const UnmatchedCallerTally::Summary& summary) {
  spdlog::info("caller.unmatched uid={} pid={} refusals={} reason={}",
               summary.uid.has_value() ? absl::StrCat(*summary.uid) : std::string("(others)"),
               summary.last_pid, summary.refusals, summary.reason);
  if (trail_.audit == nullptr) return;
  audit::Event e;
  e.type = "caller.unmatched";
  e.outcome = "denied";
  e.actor.uid = summary.uid;
  e.actor.pid = summary.last_pid;
  e.reason = summary.reason;
  e.details["refusals"] = absl::StrCat(summary.refusals);
  e.details["since"] = absl::FormatTime(absl::RFC3339_full, summary.first, absl::UTCTimeZone());
  trail_.audit->AppendAsync(std::move(e), audit::Durability::kGrouped, [](absl::Status) {});
}

absl::Status Service::Audit(audit::Event event, audit::Durability durability) {
  if (trail_.audit == nullptr) return absl::OkStatus();
  return trail_.audit->Append(std::move(event), durability);
}

}  // namespace grantvault::front
