// RepeatMemo: an agent connection's memory of one recent counted release (a
// token sent again to a process that already had it, counted into a queued
// audit record: docs/audit.md), so that the exact repeat of that request is
// answered without the resolver; a connection keeps several, one per distinct
// request (docs/performance.md, "The repeat memo").
//
// The memo holds the request as encoded (an exact repeat is the same bytes
// but for the request id: no parsing needed to recognise it) and everything
// its answer was checked
// against or made of: the Resolver's generation (policy, grant directory,
// token cache) and the audit epoch read before the checks, the caller's
// identity, the grant and token the connection's encoded answer is of, the
// token's expiry and refresh-ahead time, and the record the repeats are
// counted into. While every one of them is unchanged, the full path would
// give the repeat the very same outcome (the same token, counted into the
// same record), so the memo may give it instead. Anything different, and the
// full path runs (and makes a new memo).
//
// It checks the request and the state; the caller's liveness (the PID-reuse
// check) and counting the repeat remain the caller's to do, as on the full
// path. Not thread-safe: the connection's slot guards it.
#ifndef GRANTVAULT_FRONT_REPEAT_MEMO_H_
#define GRANTVAULT_FRONT_REPEAT_MEMO_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "common/secret_bytes.h"
#include "grantvault/v1/envelope.pb.h"
#include "policy/attestation.h"
#include "store/grant_store.h"

namespace grantvault::front {

class RepeatMemo {
 public:
  // What an answer rests on. The memo keeps the objects alive, so that a
  // pointer compared later can never be a new object at a freed address.
  struct Basis {
    uint64_t generation = 0;   // Resolver::generation(), read before the checks
    uint64_t audit_epoch = 0;  // read before the checks
    std::shared_ptr<const policy::CallerIdentity> caller;
    std::shared_ptr<const store::Grant> grant;  // of the connection's encoded answer
    uint64_t serial = 0;                        // of the connection's encoded answer
    absl::Time expires_at = absl::InfinitePast();
    // From then on the full path must run, to claim the refresh ahead.
    absl::Time refresh_at = absl::InfinitePast();
    std::shared_ptr<audit::PendingCount> counting;  // the record repeats are counted into
    // What the rule that allowed the answer matches of the caller's
    // executable: re-checked before every repeat (policy::StillSameCaller).
    policy::ExecutableChecks exe_checks;
    // The answer (the Response without its request id) for `grant` and token
    // `serial`, in secret memory, shared with the connection's other holders.
    std::shared_ptr<const SecretBytes> reply;
  };
  // The same, as they are now (borrowed, for one comparison).
  struct Current {
    uint64_t generation = 0;
    uint64_t audit_epoch = 0;
    const policy::CallerIdentity* caller = nullptr;
    const store::Grant* grant = nullptr;
    uint64_t serial = 0;
    const audit::PendingCount* counting = nullptr;
  };

  // A frame as its request id and the rest of its encoding past the request
  // id and the deadline (which does not change an answer from memory), when
  // it starts with the request id (protobuf encoders write fields in number
  // order: request_id is field 1, deadline_ms field 3); nullopt otherwise:
  // parse it.
  struct Framed {
    uint64_t request_id = 0;
    std::string_view rest;
  };
  static std::optional<Framed> SplitRequestId(std::string_view frame);

  // Remembers the Resolve `request` as answered on `basis` (nothing, if basis
  // has no record, caller, grant or token serial to rest on). `min_valid` is
  // the validity the request asks of its token.
  void Remember(const v1::Request& request, absl::Duration min_valid, Basis basis);
  void Forget() { *this = RepeatMemo(); }

  // Whether a frame whose encoding after its request id is `rest`, received
  // at `now`, is the remembered request, byte for byte, and `current` is
  // what its answer rested on.
  bool Answers(std::string_view rest, absl::Time now, const Current& current) const;
  // Whether `rest` is the remembered request (the first of Answers' tests,
  // for picking a memo among several).
  bool Is(std::string_view rest) const { return remembered_ && rest == encoded_; }
  // Whether both hold the same request (remembered or not: Remember with an
  // empty basis keeps only the request, for this comparison).
  bool SameRequest(const RepeatMemo& other) const { return encoded_ == other.encoded_; }

  // The remembered answer's basis and request (meaningful while Answers can
  // be true).
  const Basis& basis() const { return basis_; }
  const v1::ResolveRequest& resolve() const { return resolve_; }

 private:
  bool remembered_ = false;
  std::string encoded_;         // the Request's encoding without request id and deadline
  v1::ResolveRequest resolve_;  // its Resolve, for the caller's log line
  absl::Duration min_valid_;
  Basis basis_;
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_REPEAT_MEMO_H_
