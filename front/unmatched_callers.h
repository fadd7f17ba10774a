// Refusals of agent peers that no caller rule matches, counted instead of
// recorded one by one. Any local process can connect to agent.sock and ask;
// a record per refusal would let it fill the audit log (and its disk), and a
// log that cannot be written makes revocations fail closed. So such a peer
// gets at most one `caller.unmatched` record per interval per uid, carrying
// how many refusals it stands for (docs/audit.md, "Refusals").
#ifndef GRANTVAULT_FRONT_UNMATCHED_CALLERS_H_
#define GRANTVAULT_FRONT_UNMATCHED_CALLERS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grantvault::front {

// Thread-safe. Memory is bounded: at most `max_uids` uids are told apart;
// refusals of further uids are counted together (Summary::uid empty).
class UnmatchedCallerTally {
 public:
  struct Summary {
    std::optional<uid_t> uid;  // empty: uids beyond max_uids, together
    pid_t last_pid = 0;
    uint64_t refusals = 0;  // how many refusals this record stands for
    absl::Time first;       // the first of them
    std::string reason;     // the first one's reason (names the uid, never a secret)
  };

  UnmatchedCallerTally(absl::Duration interval, size_t max_uids)
      : interval_(interval), max_uids_(max_uids) {}

  // Counts one refusal of `uid`. Returns what to record now: the first
  // refusal of a uid at once, then, at the first refusal an interval after the
  // last record, everything counted since. Nothing otherwise.
  std::optional<Summary> Count(uid_t uid, pid_t pid, std::string_view reason, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Everything counted and not yet recorded (at shutdown), and forgets it.
  std::vector<Summary> Drain() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    absl::Time last_record;
    Summary pending;  // refusals == 0: none since last_record
  };
  static constexpr uid_t kOverflow = static_cast<uid_t>(-1);

  const absl::Duration interval_;
  const size_t max_uids_;
  absl::Mutex mu_;
  std::map<uid_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_UNMATCHED_CALLERS_H_
