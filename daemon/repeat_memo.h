// RepeatMemo: an agent connection's memory of its last counted release (a
// token sent again to a process that already had it, counted into a queued
// audit record: docs/audit.md), so that the exact repeat of that request is
// answered without the resolver (docs/performance.md, "The repeat memo").
//
// The memo holds the request as asked and everything its answer was checked
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
#ifndef GRANTVAULT_DAEMON_REPEAT_MEMO_H_
#define GRANTVAULT_DAEMON_REPEAT_MEMO_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "grantvault/v1/agent.pb.h"
#include "policy/attestation.h"
#include "store/grant_store.h"

namespace grantvault::daemon {

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

  // Remembers `in` as answered on `basis` (nothing, if basis has no record,
  // caller, grant or token serial to rest on).
  void Remember(const v1::ResolveRequest& in, Basis basis);
  void Forget() { *this = RepeatMemo(); }

  // Whether `in`, asked at `now` for a token valid `min_valid` more, is the
  // remembered request and `current` is what its answer rested on.
  bool Answers(const v1::ResolveRequest& in, absl::Time now, absl::Duration min_valid,
               const Current& current) const;

  // The remembered answer's basis (meaningful while Answers can be true).
  const Basis& basis() const { return basis_; }

 private:
  bool Asks(const v1::ResolveRequest& in) const;

  bool remembered_ = false;
  std::string workspace_id_;
  std::string connector_id_;
  std::string tool_;
  std::vector<std::string> scopes_;  // as asked, in order
  Basis basis_;
};

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_REPEAT_MEMO_H_
