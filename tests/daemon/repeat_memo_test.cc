#include "daemon/repeat_memo.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace grantvault::daemon {
namespace {

class RepeatMemoTest : public ::testing::Test {
 protected:
  RepeatMemoTest() {
    request_.set_workspace_id("ws_acme");
    request_.set_connector_id("demo");
    request_.set_tool("read_docs");
    request_.add_scopes("read");
    request_.add_scopes("profile");
    basis_.generation = 7;
    basis_.audit_epoch = 3;
    basis_.caller = std::make_shared<const policy::CallerIdentity>();
    basis_.grant = std::make_shared<const store::Grant>();
    basis_.serial = 42;
    basis_.expires_at = now_ + absl::Minutes(10);
    basis_.refresh_at = now_ + absl::Minutes(9);
    basis_.counting = std::make_shared<audit::PendingCount>();
    memo_.Remember(request_, basis_);
  }

  // The state exactly as the memo was made on.
  RepeatMemo::Current Unchanged() const {
    return {basis_.generation,  basis_.audit_epoch, basis_.caller.get(),
            basis_.grant.get(), basis_.serial,      basis_.counting.get()};
  }
  bool Answers(const v1::ResolveRequest& in, const RepeatMemo::Current& current,
               absl::Duration min_valid = absl::Seconds(30)) const {
    return memo_.Answers(in, now_, min_valid, current);
  }

  const absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  v1::ResolveRequest request_;
  RepeatMemo::Basis basis_;
  RepeatMemo memo_;
};

TEST_F(RepeatMemoTest, AnswersTheSameRequestOnTheSameState) {
  EXPECT_TRUE(Answers(request_, Unchanged()));
  EXPECT_EQ(memo_.basis().serial, 42u);
  EXPECT_EQ(memo_.basis().counting, basis_.counting);
}

TEST_F(RepeatMemoTest, AnyOtherRequestIsNotARepeat) {
  auto differs = [&](auto change) {
    v1::ResolveRequest other = request_;
    change(other);
    return !Answers(other, Unchanged());
  };
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.set_workspace_id("ws_other"); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.set_connector_id("github"); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.set_tool("write_docs"); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.clear_tool(); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.add_scopes("write"); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.mutable_scopes()->RemoveLast(); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.mutable_scopes()->SwapElements(0, 1); }));
  EXPECT_TRUE(differs([](v1::ResolveRequest& r) { r.clear_scopes(); }));
  // What the memo does not decide on: the deadline and min_valid are the
  // request's, checked against the token by Answers itself.
  EXPECT_FALSE(differs([](v1::ResolveRequest& r) { r.set_min_valid_seconds(5); }));
}

TEST_F(RepeatMemoTest, AnyChangeOfWhatTheAnswerRestsOnEndsIt) {
  auto ends = [&](auto change) {
    RepeatMemo::Current current = Unchanged();
    change(current);
    return !Answers(request_, current);
  };
  const auto other_caller = std::make_shared<const policy::CallerIdentity>();
  const auto other_grant = std::make_shared<const store::Grant>();
  const auto other_count = std::make_shared<audit::PendingCount>();
  // A policy reload, a forgotten grant, a token refreshed or revoked.
  EXPECT_TRUE(ends([](RepeatMemo::Current& c) { ++c.generation; }));
  // A release that could not be recorded.
  EXPECT_TRUE(ends([](RepeatMemo::Current& c) { ++c.audit_epoch; }));
  // The caller re-attested (a new identity), another encoded answer, another record.
  EXPECT_TRUE(ends([&](RepeatMemo::Current& c) { c.caller = other_caller.get(); }));
  EXPECT_TRUE(ends([](RepeatMemo::Current& c) { c.caller = nullptr; }));
  EXPECT_TRUE(ends([&](RepeatMemo::Current& c) { c.grant = other_grant.get(); }));
  EXPECT_TRUE(ends([](RepeatMemo::Current& c) { ++c.serial; }));
  EXPECT_TRUE(ends([&](RepeatMemo::Current& c) { c.counting = other_count.get(); }));
  EXPECT_TRUE(ends([](RepeatMemo::Current& c) { c.counting = nullptr; }));
}

TEST_F(RepeatMemoTest, TheTokenMustStayValidForMinValidAndNotBeDueForRefresh) {
  // 10 minutes left: 30 s asked is fine, 10 min is not (as the token cache says).
  EXPECT_TRUE(Answers(request_, Unchanged(), absl::Minutes(10)));
  EXPECT_FALSE(Answers(request_, Unchanged(), absl::Minutes(10) + absl::Seconds(1)));
  // Past refresh_at the full path must run, to claim the refresh ahead.
  EXPECT_TRUE(memo_.Answers(request_, basis_.refresh_at - absl::Nanoseconds(1), absl::Seconds(30),
                            Unchanged()));
  EXPECT_FALSE(memo_.Answers(request_, basis_.refresh_at, absl::Seconds(30), Unchanged()));
  // An expired token never (also with nothing asked).
  RepeatMemo::Basis never_refreshed = basis_;
  never_refreshed.refresh_at = absl::InfiniteFuture();
  RepeatMemo memo;
  memo.Remember(request_, never_refreshed);
  EXPECT_TRUE(memo.Answers(request_, basis_.expires_at - absl::Seconds(1), absl::ZeroDuration(),
                           Unchanged()));
  EXPECT_FALSE(memo.Answers(request_, basis_.expires_at, absl::ZeroDuration(), Unchanged()));
}

TEST_F(RepeatMemoTest, NothingIsRememberedWithoutARecordACallerAGrantOrASerial) {
  auto remembers = [&](auto change) {
    RepeatMemo::Basis basis = basis_;
    change(basis);
    RepeatMemo memo;
    memo.Remember(request_, basis);
    RepeatMemo::Current current{basis.generation,  basis.audit_epoch, basis.caller.get(),
                                basis.grant.get(), basis.serial,      basis.counting.get()};
    return memo.Answers(request_, now_, absl::Seconds(30), current);
  };
  EXPECT_TRUE(remembers([](RepeatMemo::Basis&) {}));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.counting = nullptr; }));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.caller = nullptr; }));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.grant = nullptr; }));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.serial = 0; }));
  // Forget ends it; a failed Remember forgets what was there.
  memo_.Forget();
  EXPECT_FALSE(Answers(request_, Unchanged()));
  memo_.Remember(request_, basis_);
  RepeatMemo::Basis empty;
  memo_.Remember(request_, empty);
  EXPECT_FALSE(Answers(request_, Unchanged()));
}

}  // namespace
}  // namespace grantvault::daemon
