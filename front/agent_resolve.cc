// Resolve on agent.sock: on the I/O thread from memory, or on an agent worker;
// the repeat memo (answering exact repeats) and the encoded reply frames.

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "common/secret_bytes.h"
#include "common/status.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {

using internal::kDefaultAgentDeadline;
using internal::LogRelease;

namespace {

// Per agent connection: recent encoded answers (one per grant) and memos of
// counted releases (one per distinct request) kept to answer repeats of an
// agent that alternates between a few tools and grants.
constexpr size_t kMaxEncodedReplies = 16;
constexpr size_t kMaxRepeatMemos = 32;

// Resolve's min_valid_seconds: the default, and the most honoured (beyond the
// lifetime a provider gives its tokens, every call would refresh).
constexpr absl::Duration kDefaultMinValid = absl::Seconds(30);
constexpr absl::Duration kMaxMinValid = absl::Minutes(10);

int64_t ExpiryMillis(absl::Time t) {
  return t == absl::InfiniteFuture() ? 0 : absl::ToUnixMillis(t);
}

absl::Duration MinValidOf(const v1::ResolveRequest& in) {
  return in.min_valid_seconds() == 0
             ? kDefaultMinValid
             : std::min(absl::Seconds(in.min_valid_seconds()), kMaxMinValid);
}

ResolveQuery QueryFor(const v1::ResolveRequest& in, absl::Time deadline) {
  ResolveQuery query;
  query.workspace_id = in.workspace_id();
  query.connector_id = in.connector_id();
  if (!in.tool().empty()) query.tool = in.tool();
  query.scopes.assign(in.scopes().begin(), in.scopes().end());
  query.min_valid = MinValidOf(in);
  query.deadline = deadline;
  return query;
}

// The answer carrying the token, without its request id: a Response with
// only `resolve` set, serialized. (Serialized messages concatenate as a merge,
// so the frame is RequestIdPart() followed by this.) The token's copies other
// than the result are wiped.
absl::StatusOr<SecretBytes> ResolvePart(const Resolved& resolved) {
  v1::Response r;
  v1::ResolveReply* out = r.mutable_resolve();
  out->set_access_token(std::string(resolved.token->token.view()));
  out->set_token_type(resolved.token->token_type);
  out->set_expires_at_ms(ExpiryMillis(resolved.token->expires_at));
  out->set_grant_id(resolved.grant->grant_id);
  out->set_account_id(resolved.grant->account_id);
  for (const std::string& scope : resolved.grant->scopes) out->add_scopes(scope);
  out->set_connector_type(resolved.grant->connector_type);
  for (const auto& [k, v] : resolved.grant->metadata) (*out->mutable_metadata())[k] = v;
  std::string bytes;
  const bool serialized = r.SerializeToString(&bytes);
  WipeMemory(out->mutable_access_token()->data(), out->access_token().size());
  if (!serialized) {
    WipeMemory(bytes.data(), bytes.size());
    return absl::InternalError("the answer could not be encoded");
  }
  return SecretBytes::TakeFrom(bytes);  // wipes `bytes`
}

// The answer frame: the request id, then the resolve part.
std::string TokenFrame(uint64_t request_id, const SecretBytes& resolve_part) {
  v1::Response head;
  head.set_request_id(request_id);
  std::string frame;
  frame.reserve(head.ByteSizeLong() + resolve_part.size());
  head.AppendToString(&frame);
  frame.append(resolve_part.view());
  return frame;
}

}  // namespace

bool Service::TryResolveOnIoThread(const std::shared_ptr<ipc::Connection>& connection,
                                   const v1::Request& request, absl::Time received) {
  if (agents_.resolver == nullptr) return false;
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> caller = SharedCaller(slot.get());
  if (!caller.ok()) return false;
  // Read before anything the answer depends on: a change after this makes a
  // memo of the answer stale.
  RepeatBasis basis{agents_.resolver->generation(), *caller};
  const ResolveQuery query = QueryFor(request.resolve(), received + kDefaultAgentDeadline);
  std::optional<absl::StatusOr<Resolved>> resolved =
      agents_.resolver->ResolveIfCached(**caller, query);
  if (!resolved) return false;
  FinishResolve(connection, request, slot, caller->get(), std::move(*resolved), basis);
  return true;
}

void Service::RememberRepeat(CallerSlot& slot, const v1::Request& request, const std::string& key,
                             const Resolved& resolved, const RepeatBasis& basis, uint64_t epoch,
                             const std::shared_ptr<const SecretBytes>& part) {
  // The memo counts into the release's queued record: only while the slot
  // still counts this release into it, in this epoch, for this caller.
  // Otherwise the request alone is kept, to find (and forget) its old memo.
  auto it = slot.recorded_releases.find(key);
  const bool counting = it != slot.recorded_releases.end() && it->second.epoch == epoch &&
                        it->second.counting != nullptr && part != nullptr && slot.identity.ok() &&
                        *slot.identity == basis.caller;
  RepeatMemo memo;
  memo.Remember(request, MinValidOf(request.resolve()),
                counting ? RepeatMemo::Basis{basis.generation, epoch, basis.caller, resolved.grant,
                                             resolved.token->serial, resolved.token->expires_at,
                                             resolved.refresh_at, it->second.counting,
                                             ExecutableChecksOf(*resolved.rule), part}
                         : RepeatMemo::Basis{});
  auto same = std::find_if(slot.repeats.begin(), slot.repeats.end(),
                           [&](const RepeatMemo& m) { return m.SameRequest(memo); });
  if (!counting) {
    if (same != slot.repeats.end()) same->Forget();
    return;
  }
  if (same != slot.repeats.end()) {
    *same = std::move(memo);
  } else if (slot.repeats.size() < kMaxRepeatMemos) {
    slot.repeats.push_back(std::move(memo));
  } else {
    slot.repeats[slot.next_repeat] = std::move(memo);
    slot.next_repeat = (slot.next_repeat + 1) % kMaxRepeatMemos;
  }
}

bool Service::TryAnswerRepeat(const std::shared_ptr<ipc::Connection>& connection,
                              std::string_view payload, absl::Time now) {
  if (agents_.resolver == nullptr || !RepeatsGoFirst()) return false;
  const ConnectionState* state = StateOf(*connection);
  if (state == nullptr || state->caller == nullptr ||
      !state->hello_done.load(std::memory_order_acquire)) {
    return false;
  }
  const std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(payload);
  if (!framed) return false;
  CallerSlot& slot = *state->caller;
  const uint64_t generation = agents_.resolver->generation();
  const uint64_t epoch = audit_epoch_->load();
  std::shared_ptr<const policy::CallerIdentity> caller;
  std::shared_ptr<audit::PendingCount> counting;
  policy::ExecutableChecks exe_checks;
  std::string frame;
  v1::ResolveRequest logged;  // for the debug log only
  std::string grant_id;
  {
    absl::MutexLock lock(&slot.mu);
    const RepeatMemo* memo = nullptr;
    for (const RepeatMemo& m : slot.repeats) {
      if (m.Is(framed->rest)) {
        memo = &m;
        break;
      }
    }
    if (memo == nullptr) return false;
    // The memo carries its own encoded answer and record: it answers with
    // them (a sealed record fails Add below, and the full path queues a new
    // one and a new memo). What may have changed since is the state.
    const RepeatMemo::Basis& b = memo->basis();
    const RepeatMemo::Current current{
        generation,    epoch,    slot.identity.ok() ? slot.identity->get() : nullptr,
        b.grant.get(), b.serial, b.counting.get(),
    };
    if (!memo->Answers(framed->rest, now, current)) return false;
    caller = b.caller;
    counting = b.counting;
    exe_checks = b.exe_checks;
    if (spdlog::should_log(spdlog::level::debug)) {
      logged = memo->resolve();
      grant_id = b.grant->grant_id;
    }
    frame = TokenFrame(framed->request_id, *b.reply);
  }
  // As on the full path: the process must still be the one attested (running
  // the program the rule named, if it named one), and the repeat is counted
  // before its token leaves.
  if (!policy::StillSameCaller(*caller, exe_checks).ok() || !counting->Add()) {
    WipeMemory(frame.data(), frame.capacity());
    return false;  // the full path says why, or records the repeat anew
  }
  LogRelease(connection->peer(), logged, grant_id);
  connection->Send(std::move(frame), /*final=*/true);
  return true;
}

void Service::RunResolve(const std::shared_ptr<ipc::Connection>& connection,
                         const v1::Request& request, absl::Time deadline) {
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
  absl::StatusOr<Resolved> resolved = absl::UnknownError("not resolved");
  if (!caller.ok()) {
    resolved = caller.status();
  } else {
    const bool had_hash = caller->exe_sha256.has_value();
    resolved = agents_.resolver->Resolve(*caller, QueryFor(request.resolve(), deadline));
    if (caller->exe_sha256.has_value() && !had_hash && slot != nullptr) {
      // Keep the executable's hash (of the file attested at accept) for the
      // connection's next calls.
      absl::MutexLock lock(&slot->mu);
      if (slot->identity.ok() && (*slot->identity)->start_time == caller->start_time) {
        slot->identity = std::make_shared<const policy::CallerIdentity>(*caller);
      }
    }
  }
  FinishResolve(connection, request, slot, caller.ok() ? &*caller : nullptr, std::move(resolved));
}

absl::StatusOr<Service::Reply> Service::ReplyFrame(CallerSlot* slot, uint64_t request_id,
                                                   const Resolved& resolved) {
  // The same token of the same grant again (a cached resolve): its encoded
  // answer is kept for the connection, in secret memory.
  const bool cacheable = slot != nullptr && resolved.token->serial != 0;
  if (cacheable) {
    absl::MutexLock lock(&slot->mu);
    for (const CallerSlot::EncodedReply& r : slot->replies) {
      if (r.serial == resolved.token->serial && r.grant == resolved.grant) {
        return Reply{TokenFrame(request_id, *r.part), r.part};
      }
    }
  }
  GV_ASSIGN_OR_RETURN(SecretBytes encoded, ResolvePart(resolved));
  auto part = std::make_shared<const SecretBytes>(std::move(encoded));
  Reply reply{TokenFrame(request_id, *part), nullptr};
  if (cacheable) {
    reply.part = part;
    absl::MutexLock lock(&slot->mu);
    CallerSlot::EncodedReply entry{resolved.token->serial, resolved.grant, std::move(part)};
    // A refreshed token of a grant replaces that grant's answer.
    for (CallerSlot::EncodedReply& r : slot->replies) {
      if (r.grant == resolved.grant) {
        r = std::move(entry);
        return reply;
      }
    }
    if (slot->replies.size() < kMaxEncodedReplies) {
      slot->replies.push_back(std::move(entry));
    } else {
      slot->replies[slot->next_reply] = std::move(entry);
      slot->next_reply = (slot->next_reply + 1) % kMaxEncodedReplies;
    }
  }
  return reply;
}

}  // namespace grantvault::front
