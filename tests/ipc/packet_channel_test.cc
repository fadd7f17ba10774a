#include "ipc/packet_channel.h"

#include <sys/socket.h>

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace grantvault::ipc {
namespace {

// What one end of a channel received, and how it ended.
struct Inbox {
  absl::Mutex mu;
  std::vector<std::string> packets ABSL_GUARDED_BY(mu);
  absl::Status why ABSL_GUARDED_BY(mu);
  absl::Notification closed;

  PacketChannel::OnPacket OnPacket() {
    return [this](std::string_view p) {
      absl::MutexLock lock(&mu);
      packets.emplace_back(p);
    };
  }
  PacketChannel::OnClosed OnClosed() {
    return [this](const absl::Status& status) {
      {
        absl::MutexLock lock(&mu);
        why = status;
      }
      closed.Notify();
    };
  }
  size_t Count() {
    absl::MutexLock lock(&mu);
    return packets.size();
  }
};

TEST(PacketChannelTest, PacketsArriveWholeAndInOrder) {
  auto pair = PacketSocketPair();
  ASSERT_TRUE(pair.ok()) << pair.status();
  Inbox a, b;
  auto left = PacketChannel::Start(std::move(pair->first), a.OnPacket(), a.OnClosed());
  auto right = PacketChannel::Start(std::move(pair->second), b.OnPacket(), b.OnClosed());
  const std::string big(kMaxChannelPacket, 'x');
  ASSERT_TRUE(left->Send("one").ok());
  ASSERT_TRUE(left->Send(std::string(1, '\0')).ok());
  ASSERT_TRUE(left->Send(big).ok());
  ASSERT_TRUE(left->Send("two").ok());
  for (int i = 0; i < 500 && b.Count() < 4; ++i) absl::SleepFor(absl::Milliseconds(10));
  absl::MutexLock lock(&b.mu);
  ASSERT_EQ(b.packets.size(), 4u);
  EXPECT_EQ(b.packets[0], "one");
  EXPECT_EQ(b.packets[1], std::string(1, '\0'));
  EXPECT_EQ(b.packets[2], big);
  EXPECT_EQ(b.packets[3], "two");
}

TEST(PacketChannelTest, APacketTooLargeIsRefusedBeforeItIsSent) {
  auto pair = PacketSocketPair();
  ASSERT_TRUE(pair.ok());
  Inbox a, b;
  auto left = PacketChannel::Start(std::move(pair->first), a.OnPacket(), a.OnClosed());
  auto right = PacketChannel::Start(std::move(pair->second), b.OnPacket(), b.OnClosed());
  EXPECT_TRUE(absl::IsInvalidArgument(left->Send(std::string(kMaxChannelPacket + 1, 'x'))));
  EXPECT_TRUE(left->Send("still open").ok());
}

TEST(PacketChannelTest, AnOversizedPacketFromThePeerClosesTheChannel) {
  auto pair = PacketSocketPair();
  ASSERT_TRUE(pair.ok());
  Inbox b;
  UniqueFd raw = std::move(pair->first);
  auto right = PacketChannel::Start(std::move(pair->second), b.OnPacket(), b.OnClosed(),
                                    /*max_packet=*/16);
  const std::string too_big(17, 'x');
  ASSERT_EQ(::send(raw.get(), too_big.data(), too_big.size(), 0), 17);
  ASSERT_TRUE(b.closed.WaitForNotificationWithTimeout(absl::Seconds(5)));
  absl::MutexLock lock(&b.mu);
  EXPECT_TRUE(absl::IsDataLoss(b.why)) << b.why;
  EXPECT_TRUE(b.packets.empty());
}

TEST(PacketChannelTest, ThePeerGoingAwayEndsTheChannelAndFailsLaterSends) {
  auto pair = PacketSocketPair();
  ASSERT_TRUE(pair.ok());
  Inbox a, b;
  auto left = PacketChannel::Start(std::move(pair->first), a.OnPacket(), a.OnClosed());
  auto right = PacketChannel::Start(std::move(pair->second), b.OnPacket(), b.OnClosed());
  right.reset();  // closes its end, as a process exiting would
  ASSERT_TRUE(a.closed.WaitForNotificationWithTimeout(absl::Seconds(5)));
  {
    absl::MutexLock lock(&a.mu);
    EXPECT_TRUE(absl::IsUnavailable(a.why)) << a.why;
  }
  EXPECT_TRUE(absl::IsUnavailable(left->Send("anyone?")));
}

}  // namespace
}  // namespace grantvault::ipc
