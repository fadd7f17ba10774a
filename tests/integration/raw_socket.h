// A raw Unix-socket client for hostile-input tests: writes arbitrary bytes
// and reads frames, with timeouts.
#ifndef GRANTVAULT_TESTS_INTEGRATION_RAW_SOCKET_H_
#define GRANTVAULT_TESTS_INTEGRATION_RAW_SOCKET_H_

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grantvault/v1/envelope.pb.h"
#include "ipc/client.h"
#include "ipc/frame.h"

namespace grantvault::testing {

class RawSocket {
 public:
  explicit RawSocket(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  // Takes over an already connected socket (e.g. one inherited through exec).
  struct AdoptFd {
    int fd;
  };
  explicit RawSocket(AdoptFd adopt) : fd_(adopt.fd) {}
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  bool Write(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  bool WriteRequest(const v1::Request& request) {
    return Write(ipc::EncodeFrame(request.SerializeAsString()));
  }
  bool Hello() {
    v1::Request r;
    r.set_request_id(1);
    r.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    if (!WriteRequest(r)) return false;
    std::optional<v1::Response> resp = ReadResponse();
    return resp && resp->has_hello();
  }

  // Reads exactly n bytes, or nothing when the peer closes or time runs out.
  std::optional<std::string> ReadExactly(size_t n, absl::Duration timeout) {
    std::string out;
    const absl::Time end = absl::Now() + timeout;
    while (out.size() < n) {
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now()));
      if (ms <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) return std::nullopt;
      char buf[65536];
      ssize_t got = ::recv(fd_, buf, std::min(sizeof(buf), n - out.size()), 0);
      if (got <= 0) return std::nullopt;
      out.append(buf, static_cast<size_t>(got));
    }
    return out;
  }

  std::optional<v1::Response> ReadResponse(absl::Duration timeout = absl::Seconds(5)) {
    std::optional<std::string> header = ReadExactly(4, timeout);
    if (!header) return std::nullopt;
    const auto* h = reinterpret_cast<const uint8_t*>(header->data());
    const size_t n = (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | h[3];
    std::optional<std::string> body = ReadExactly(n, timeout);
    if (!body) return std::nullopt;
    v1::Response r;
    if (!r.ParseFromString(*body)) return std::nullopt;
    return r;
  }

  // True when the server closed the connection within `timeout` (any data
  // that was still in flight is read and dropped).
  bool ClosedByPeer(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    for (;;) {
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now()));
      if (ms <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) return false;
      char buf[4096];
      ssize_t got = ::recv(fd_, buf, sizeof(buf), 0);
      if (got <= 0) return true;
    }
  }

 private:
  int fd_ = -1;
};

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_INTEGRATION_RAW_SOCKET_H_
