#include "front/repeat_memo.h"

#include <memory>
#include <optional>
#include <string>

#include "gtest/gtest.h"

namespace grantvault::front {
namespace {

class RepeatMemoTest : public ::testing::Test {
 protected:
  RepeatMemoTest() {
    request_.set_request_id(17);
    v1::ResolveRequest* in = request_.mutable_resolve();
    in->set_workspace_id("ws_acme");
    in->set_connector_id("demo");
    in->set_tool("read_docs");
    in->add_scopes("read");
    in->add_scopes("profile");
    in->set_min_valid_seconds(30);
    basis_.generation = 7;
    basis_.audit_epoch = 3;
    basis_.caller = std::make_shared<const policy::CallerIdentity>();
    basis_.grant = std::make_shared<const store::Grant>();
    basis_.serial = 42;
    basis_.expires_at = now_ + absl::Minutes(10);
    basis_.refresh_at = now_ + absl::Minutes(9);
    basis_.counting = std::make_shared<audit::PendingCount>();
    basis_.reply =
        std::make_shared<const SecretBytes>(SecretBytes::CopyOf(std::string_view("answer")));
    memo_.Remember(request_, absl::Seconds(30), basis_);
  }

  // The state exactly as the memo was made on.
  RepeatMemo::Current Unchanged() const {
    return {basis_.generation,  basis_.audit_epoch, basis_.caller.get(),
            basis_.grant.get(), basis_.serial,      basis_.counting.get()};
  }
  // The frame a client would send for `request` (as encoded by protobuf).
  static std::string Frame(const v1::Request& request) { return request.SerializeAsString(); }
  // Whether the memo answers the frame of `request` at `now`.
  bool Answers(const v1::Request& request, const RepeatMemo::Current& current,
               std::optional<absl::Time> at = std::nullopt) const {
    const std::string frame = Frame(request);
    std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(frame);
    return framed && memo_.Answers(framed->rest, at.value_or(now_), current);
  }

  const absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
  v1::Request request_;
  RepeatMemo::Basis basis_;
  RepeatMemo memo_;
};

TEST_F(RepeatMemoTest, SplitsAFrameIntoItsRequestIdAndTheRest) {
  request_.set_request_id(0xFFFF'FFFF'FFFF'FFFF);
  const std::string frame = Frame(request_);
  std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(frame);
  ASSERT_TRUE(framed.has_value());
  EXPECT_EQ(framed->request_id, 0xFFFF'FFFF'FFFF'FFFFu);
  v1::Request rest;
  ASSERT_TRUE(rest.ParseFromArray(framed->rest.data(), static_cast<int>(framed->rest.size())));
  EXPECT_EQ(rest.request_id(), 0u);
  EXPECT_EQ(rest.resolve().tool(), "read_docs");
  // The deadline is skipped as well.
  request_.set_deadline_ms(30'000);
  const std::string with_deadline = Frame(request_);
  framed = RepeatMemo::SplitRequestId(with_deadline);
  ASSERT_TRUE(framed.has_value());
  ASSERT_TRUE(rest.ParseFromArray(framed->rest.data(), static_cast<int>(framed->rest.size())));
  EXPECT_EQ(rest.deadline_ms(), 0u);
  EXPECT_EQ(rest.resolve().tool(), "read_docs");
  // Not recognised (the frame is then parsed): no request id first, a
  // truncated id, nothing at all.
  v1::Request no_id = request_;
  no_id.clear_request_id();
  EXPECT_FALSE(RepeatMemo::SplitRequestId(Frame(no_id)).has_value());
  EXPECT_FALSE(RepeatMemo::SplitRequestId(std::string("\x08\xff\xff", 3)).has_value());
  EXPECT_FALSE(RepeatMemo::SplitRequestId("").has_value());
  // request_id after the body: a valid encoding, but not the one we recognise.
  const std::string late = Frame(no_id) + std::string("\x08\x11", 2);
  EXPECT_FALSE(RepeatMemo::SplitRequestId(late).has_value());
}

TEST_F(RepeatMemoTest, AnswersTheSameRequestUnderAnyRequestIdOrDeadlineOnTheSameState) {
  EXPECT_TRUE(Answers(request_, Unchanged()));
  request_.set_request_id(123456789);
  EXPECT_TRUE(Answers(request_, Unchanged()));
  // The deadline does not change an answer from memory (it is immediate).
  request_.set_deadline_ms(29'999);
  EXPECT_TRUE(Answers(request_, Unchanged()));
  EXPECT_EQ(memo_.basis().serial, 42u);
  EXPECT_EQ(memo_.basis().counting, basis_.counting);
  EXPECT_EQ(memo_.resolve().workspace_id(), "ws_acme");
}

TEST_F(RepeatMemoTest, AnyOtherRequestIsNotARepeat) {
  auto differs = [&](auto change) {
    v1::Request other = request_;
    change(other);
    return !Answers(other, Unchanged());
  };
  using R = v1::Request;
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->set_workspace_id("ws_other"); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->set_connector_id("github"); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->set_tool("write_docs"); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->clear_tool(); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->add_scopes("write"); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->mutable_scopes()->RemoveLast(); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->mutable_scopes()->SwapElements(0, 1); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_resolve()->set_min_valid_seconds(600); }));
  EXPECT_TRUE(differs([](R& r) { r.mutable_subscribe()->set_workspace_id("ws_acme"); }));
  // Trailing bytes: the same request followed by anything is another frame.
  const std::string frame = Frame(request_) + std::string("\x18\x05", 2);
  std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(frame);
  ASSERT_TRUE(framed.has_value());
  EXPECT_FALSE(memo_.Answers(framed->rest, now_, Unchanged()));
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
  // 30 s asked, as the token cache would check it: fine until 30 s before expiry.
  RepeatMemo::Basis never_refreshed = basis_;
  never_refreshed.refresh_at = absl::InfiniteFuture();
  memo_.Remember(request_, absl::Seconds(30), never_refreshed);
  EXPECT_TRUE(Answers(request_, Unchanged(), basis_.expires_at - absl::Seconds(30)));
  EXPECT_FALSE(Answers(request_, Unchanged(), basis_.expires_at - absl::Seconds(29)));
  // Nothing asked: still never an expired token.
  memo_.Remember(request_, absl::ZeroDuration(), never_refreshed);
  EXPECT_TRUE(Answers(request_, Unchanged(), basis_.expires_at - absl::Nanoseconds(1)));
  EXPECT_FALSE(Answers(request_, Unchanged(), basis_.expires_at));
  // Past refresh_at the full path must run, to claim the refresh ahead.
  memo_.Remember(request_, absl::Seconds(30), basis_);
  EXPECT_TRUE(Answers(request_, Unchanged(), basis_.refresh_at - absl::Nanoseconds(1)));
  EXPECT_FALSE(Answers(request_, Unchanged(), basis_.refresh_at));
}

TEST_F(RepeatMemoTest, NothingIsRememberedWithoutAResolveARecordACallerAGrantOrASerial) {
  auto remembers = [&](auto change, v1::Request request) {
    RepeatMemo::Basis basis = basis_;
    change(basis);
    RepeatMemo memo;
    memo.Remember(request, absl::Seconds(30), basis);
    RepeatMemo::Current current{basis.generation,  basis.audit_epoch, basis.caller.get(),
                                basis.grant.get(), basis.serial,      basis.counting.get()};
    const std::string frame = Frame(request);
    std::optional<RepeatMemo::Framed> framed = RepeatMemo::SplitRequestId(frame);
    return framed && memo.Answers(framed->rest, now_, current);
  };
  auto same = [](RepeatMemo::Basis&) {};
  EXPECT_TRUE(remembers(same, request_));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.counting = nullptr; }, request_));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.caller = nullptr; }, request_));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.grant = nullptr; }, request_));
  EXPECT_FALSE(remembers([](RepeatMemo::Basis& b) { b.serial = 0; }, request_));
  v1::Request status;
  status.set_request_id(1);
  status.mutable_status();
  EXPECT_FALSE(remembers(same, status));
  // Forget ends it; a failed Remember forgets what was there.
  memo_.Forget();
  EXPECT_FALSE(Answers(request_, Unchanged()));
  memo_.Remember(request_, absl::Seconds(30), basis_);
  memo_.Remember(request_, absl::Seconds(30), RepeatMemo::Basis{});
  EXPECT_FALSE(Answers(request_, Unchanged()));
}

}  // namespace
}  // namespace grantvault::front
