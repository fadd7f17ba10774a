#include "front/unmatched_callers.h"

#include <utility>

namespace grantvault::front {

std::optional<UnmatchedCallerTally::Summary> UnmatchedCallerTally::Count(uid_t uid, pid_t pid,
                                                                         std::string_view reason,
                                                                         absl::Time now) {
  absl::MutexLock lock(&mu_);
  uid_t key = uid;
  if (!entries_.contains(uid) && entries_.size() >= max_uids_) {
    // Make room from uids with nothing pending whose interval is over…
    for (auto it = entries_.begin(); it != entries_.end() && entries_.size() >= max_uids_;) {
      const bool idle = it->first != kOverflow && it->second.pending.refusals == 0 &&
                        now - it->second.last_record >= interval_;
      it = idle ? entries_.erase(it) : std::next(it);
    }
    // …or count it with every other uid beyond the limit.
    if (entries_.size() >= max_uids_) key = kOverflow;
  }
  auto [it, inserted] = entries_.try_emplace(key);
  Entry& entry = it->second;
  Summary& pending = entry.pending;
  if (pending.refusals == 0) {
    pending.uid = key == kOverflow ? std::nullopt : std::optional<uid_t>(uid);
    pending.first = now;
    pending.reason = std::string(reason);
  }
  pending.last_pid = pid;
  ++pending.refusals;
  // A clock stepped back counts as an interval over, never as a long wait.
  const bool due = inserted || now - entry.last_record >= interval_ || now < entry.last_record;
  if (!due) return std::nullopt;
  entry.last_record = now;
  return std::exchange(pending, Summary{});
}

std::vector<UnmatchedCallerTally::Summary> UnmatchedCallerTally::Drain() {
  absl::MutexLock lock(&mu_);
  std::vector<Summary> out;
  for (auto& [uid, entry] : entries_) {
    if (entry.pending.refusals > 0) out.push_back(std::exchange(entry.pending, Summary{}));
  }
  return out;
}

}  // namespace grantvault::front
