#include "ipc/packet_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/secret_bytes.h"

namespace grantvault::ipc {

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> PacketSocketPair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  return std::pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

std::unique_ptr<PacketChannel> PacketChannel::Start(UniqueFd fd, OnPacket on_packet,
                                                    OnClosed on_closed, size_t max_packet) {
  std::unique_ptr<PacketChannel> channel(
      new PacketChannel(std::move(fd), std::move(on_packet), std::move(on_closed), max_packet));
  channel->reader_ = std::thread([c = channel.get()] { c->ReadLoop(); });
  return channel;
}

PacketChannel::PacketChannel(UniqueFd fd, OnPacket on_packet, OnClosed on_closed, size_t max_packet)
    : fd_(std::move(fd)),
      on_packet_(std::move(on_packet)),
      on_closed_(std::move(on_closed)),
      max_packet_(max_packet) {}

PacketChannel::~PacketChannel() {
  Close();
  if (reader_.joinable()) reader_.join();
}

void PacketChannel::Close() {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  closed_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
}

absl::Status PacketChannel::Send(std::string_view packet, absl::Duration timeout) {
  if (packet.size() > max_packet_) {
    return absl::InvalidArgumentError(
        absl::StrCat("a packet of ", packet.size(), " bytes exceeds the channel's ", max_packet_));
  }
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("the channel is closed");
  }
  absl::MutexLock lock(&send_mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const ssize_t n = ::send(fd_.get(), packet.data(), packet.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(packet.size())) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The peer is not reading (stopped, or stuck): wait for room, not forever.
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::UnavailableError(
            absl::StrCat("the channel's peer read nothing for ", absl::FormatDuration(timeout)));
      }
      pollfd p{fd_.get(), POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      continue;
    }
    return absl::UnavailableError(
        absl::StrCat("the channel's peer is gone: ", n < 0 ? std::strerror(errno) : "short send"));
  }
}

void PacketChannel::ReadLoop() {
  // One byte more than the largest packet, to see one that is too large.
  SecretBytes buffer = SecretBytes::Zeroed(max_packet_ + 1);
  absl::Status why;
  while (true) {
    const ssize_t n = ::recv(fd_.get(), buffer.data(), buffer.size(), MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = absl::UnavailableError(absl::StrCat("channel read: ", std::strerror(errno)));
      break;
    }
    if (n == 0) {
      bool closed_here;
      {
        absl::MutexLock lock(&mu_);
        closed_here = closed_;
      }
      why = closed_here ? absl::CancelledError("the channel was closed")
                        : absl::UnavailableError("the channel's peer closed it or exited");
      break;
    }
    if (static_cast<size_t>(n) > max_packet_) {
      WipeMemory(buffer.data(), buffer.size());
      why = absl::DataLossError(
          absl::StrCat("a packet of ", n, " bytes exceeds the channel's ", max_packet_));
      break;
    }
    on_packet_(
        std::string_view(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(n)));
    WipeMemory(buffer.data(), static_cast<size_t>(n));
  }
  Close();
  on_closed_(why);
}

}  // namespace grantvault::ipc
