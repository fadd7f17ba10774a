#include "front/unmatched_callers.h"

#include "gtest/gtest.h"

namespace grantvault::front {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1'800'000'000);

TEST(UnmatchedCallerTallyTest, AtMostOneRecordPerIntervalPerUidCarryingEveryRefusal) {
  UnmatchedCallerTally tally(absl::Seconds(60), 16);
  auto first = tally.Count(1000, 41, "uid 1000 is not in the policy", kStart);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->uid, 1000u);
  EXPECT_EQ(first->refusals, 1u);
  EXPECT_EQ(first->reason, "uid 1000 is not in the policy");
  for (int i = 1; i <= 500; ++i) {
    EXPECT_FALSE(tally.Count(1000, 42, "again", kStart + absl::Milliseconds(i)).has_value());
  }
  // Another uid is told apart.
  EXPECT_TRUE(tally.Count(2000, 7, "uid 2000 is not in the policy", kStart).has_value());
  auto next = tally.Count(1000, 43, "later", kStart + absl::Seconds(60));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->refusals, 501u);  // the 500 held back and this one
  EXPECT_EQ(next->first, kStart + absl::Milliseconds(1));
  EXPECT_EQ(next->last_pid, 43);
  EXPECT_EQ(next->reason, "again");
  EXPECT_TRUE(tally.Drain().empty());
}

TEST(UnmatchedCallerTallyTest, DrainGivesWhatIsHeldBackOnce) {
  UnmatchedCallerTally tally(absl::Seconds(60), 16);
  ASSERT_TRUE(tally.Count(1000, 1, "r", kStart).has_value());
  ASSERT_FALSE(tally.Count(1000, 1, "r", kStart + absl::Seconds(1)).has_value());
  ASSERT_FALSE(tally.Count(1000, 1, "r", kStart + absl::Seconds(2)).has_value());
  auto drained = tally.Drain();
  ASSERT_EQ(drained.size(), 1u);
  EXPECT_EQ(drained[0].refusals, 2u);
  EXPECT_TRUE(tally.Drain().empty());
}

TEST(UnmatchedCallerTallyTest, UidsBeyondTheLimitAreCountedTogether) {
  UnmatchedCallerTally tally(absl::Seconds(60), 4);
  size_t records = 0;
  uint64_t refusals = 0;
  for (uid_t uid = 1; uid <= 1000; ++uid) {
    if (auto due = tally.Count(uid, 1, "r", kStart)) {
      ++records;
      refusals += due->refusals;
    }
  }
  EXPECT_LE(records, 5u);  // four uids, then everyone else together
  for (const auto& held : tally.Drain()) {
    EXPECT_FALSE(held.uid.has_value());
    refusals += held.refusals;
  }
  EXPECT_EQ(refusals, 1000u);
  // Once their interval is over, idle uids make room again.
  auto later = tally.Count(5000, 1, "r", kStart + absl::Seconds(61));
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(later->uid, 5000u);
}

}  // namespace
}  // namespace grantvault::front
