// broker::Server on a real socketpair, the front's BrokerLink at the other
// end: what the broker does with calls the happy path never makes.
#include "broker/server.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "front/broker_link.h"
#include "gtest/gtest.h"
#include "ipc/packet_channel.h"

namespace grantvault::broker {
namespace {

// Signs with whatever it is told to return, after `gate` (when set) opens.
class FakeSigner final : public audit::Signer {
 public:
  absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t>) override {
    ++calls;
    if (gate != nullptr) gate->WaitForNotification();
    return signature;
  }
  absl::StatusOr<std::string> PublicKeyPem() override { return std::string("PEM"); }
  std::string key_label() const override { return "fake-audit-key"; }

  std::vector<uint8_t> signature = {1, 2, 3};
  absl::Notification* gate = nullptr;
  std::atomic<int> calls = 0;
};

class BrokerServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pair = ipc::PacketSocketPair();
    ASSERT_TRUE(pair.ok());
    front_end_ = std::move(pair->first);
    server_ = std::make_unique<Server>(std::move(pair->second));
    deps_.signer = &signer_;
    deps_.hello.set_version(v1::VERSION_1);
    deps_.hello.set_token_label("fake-token");
  }
  void TearDown() override {
    link_.reset();  // the server's Serve returns once its link closes
    if (serving_.joinable()) serving_.join();
  }

  void Serve() {
    serving_ = std::thread([this] { server_->Serve(deps_); });
  }
  front::BrokerLink& Link() {
    if (link_ == nullptr) {
      link_ = front::BrokerLink::Connect(std::move(front_end_), nullptr,
                                         [this](const absl::Status&) { closed_.Notify(); });
    }
    return *link_;
  }
  static v1::Request Sign() {
    v1::Request request;
    request.mutable_sign()->set_data("a checkpoint");
    return request;
  }

  UniqueFd front_end_;
  std::unique_ptr<Server> server_;
  ServerDeps deps_;
  FakeSigner signer_;
  std::thread serving_;
  std::unique_ptr<front::BrokerLink> link_;
  absl::Notification closed_;
  absl::Notification gate_;  // outlives the server's workers (joined in TearDown)
};

TEST_F(BrokerServerTest, HelloIsAnsweredAndAnotherProtocolVersionIsRefused) {
  Serve();
  v1::Request hello;
  hello.mutable_hello()->set_version(v1::VERSION_1);
  absl::StatusOr<v1::Reply> reply = Link().Call(hello, absl::Seconds(5));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->hello().token_label(), "fake-token");
  hello.mutable_hello()->set_version(static_cast<v1::Version>(2));
  reply = Link().Call(hello, absl::Seconds(5));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kFailedPrecondition) << reply.status();
}

TEST_F(BrokerServerTest, AReplyTooLargeForOnePacketIsAnErrorNotATimeout) {
  signer_.signature.assign(200 * 1024, 0x5a);  // over the link's 128 KiB
  Serve();
  absl::StatusOr<v1::Reply> reply = Link().Call(Sign(), absl::Seconds(5));
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInternal) << reply.status();
  EXPECT_NE(reply.status().message().find("too large"), std::string::npos) << reply.status();
  // The link still serves.
  signer_.signature = {9};
  reply = Link().Call(Sign(), absl::Seconds(5));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->sign().signature(), std::string("\x09"));
}

TEST_F(BrokerServerTest, AMalformedPacketClosesTheLink) {
  Serve();
  auto raw = ipc::PacketChannel::Start(
      std::move(front_end_), [](std::string_view) {},
      [this](const absl::Status&) { closed_.Notify(); });
  ASSERT_TRUE(raw->Send("\xff\xff\xff not a packet").ok());
  EXPECT_TRUE(closed_.WaitForNotificationWithTimeout(absl::Seconds(5)));
  raw.reset();
}

TEST_F(BrokerServerTest, AFrontQueueingCallsWithoutBoundIsCutOff) {
  signer_.gate = &gate_;  // every worker blocks in its first call
  Serve();
  auto raw = ipc::PacketChannel::Start(
      std::move(front_end_), [](std::string_view) {},
      [this](const absl::Status&) { closed_.Notify(); });
  // More calls than the workers and the queue take (16 + 4,096).
  for (uint64_t id = 1; id <= 16 + 4096 + 64 && !closed_.HasBeenNotified(); ++id) {
    v1::Packet packet;
    packet.set_call_id(id);
    *packet.mutable_request() = Sign();
    if (!raw->Send(packet.SerializeAsString()).ok()) break;
  }
  EXPECT_TRUE(closed_.WaitForNotificationWithTimeout(absl::Seconds(20)))
      << "the server should close a link that queues more than it may";
  gate_.Notify();
  raw.reset();
}

}  // namespace
}  // namespace grantvault::broker
