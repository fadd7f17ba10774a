// PacketChannel: one end of a SOCK_SEQPACKET socketpair between two processes
// of one daemon (the front and its broker). A packet is sent whole and
// received whole, so there is no framing to get wrong; a packet larger than
// `max_packet` is a protocol error that closes the channel.
//
// Packets may carry access tokens: the receive buffer is guarded memory
// (SecretBytes) wiped after every packet, and Send's callers wipe what they
// serialised (grantvault::WipeString).
//
// Thread-safe: Send from any thread; `on_packet` and then `on_closed` (once)
// run on the channel's reader thread.
#ifndef GRANTVAULT_IPC_PACKET_CHANNEL_H_
#define GRANTVAULT_IPC_PACKET_CHANNEL_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"

namespace grantvault::ipc {

inline constexpr size_t kMaxChannelPacket = size_t{128} << 10;

class PacketChannel {
 public:
  // `packet` is valid only during the call (its memory is wiped after).
  using OnPacket = std::function<void(std::string_view packet)>;
  // Why the channel ended: the peer closed it or exited (Unavailable), a
  // read error, an oversized packet, or Close().
  using OnClosed = std::function<void(const absl::Status& why)>;

  // Takes `fd` (a connected SOCK_SEQPACKET socket) and starts reading.
  static std::unique_ptr<PacketChannel> Start(UniqueFd fd, OnPacket on_packet, OnClosed on_closed,
                                              size_t max_packet = kMaxChannelPacket);
  // Close(), then waits for the reader thread (which must not be the caller).
  ~PacketChannel();
  PacketChannel(const PacketChannel&) = delete;
  PacketChannel& operator=(const PacketChannel&) = delete;

  // Sends one packet, waiting while the socket buffer is full, at most
  // `timeout` (a peer that stopped reading). Unavailable once the channel is
  // closed, or when the time is up.
  absl::Status Send(std::string_view packet, absl::Duration timeout = absl::Seconds(5));
  // Shuts the socket down: the peer sees the end of the channel, the reader
  // thread ends (on_closed with Cancelled).
  void Close();

 private:
  PacketChannel(UniqueFd fd, OnPacket on_packet, OnClosed on_closed, size_t max_packet);
  void ReadLoop();

  const UniqueFd fd_;
  const OnPacket on_packet_;
  const OnClosed on_closed_;
  const size_t max_packet_;
  absl::Mutex send_mu_;  // one packet at a time (SEQPACKET sends are atomic, but EINTR loops)
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reader_;
};

// A connected SOCK_SEQPACKET socketpair, both ends close-on-exec.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> PacketSocketPair();

}  // namespace grantvault::ipc

#endif  // GRANTVAULT_IPC_PACKET_CHANNEL_H_
