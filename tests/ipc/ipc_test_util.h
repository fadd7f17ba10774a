// Helpers shared by the ipc tests: short socket directories, a raw blocking
// client that can send anything, and polling.
#ifndef GRANTVAULT_TESTS_IPC_IPC_TEST_UTIL_H_
#define GRANTVAULT_TESTS_IPC_IPC_TEST_UTIL_H_

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "ipc/frame.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault::ipc::testing {

// A private temporary directory whose paths fit a Unix socket address
// (108 bytes): TEST_TMPDIR is used only when it is short.
inline std::unique_ptr<grantvault::testing::TempDir> MakeSocketDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  if (base == nullptr || std::strlen(base) <= 48) {
    return std::make_unique<grantvault::testing::TempDir>();
  }
  const std::string saved = base;
  ::setenv("TEST_TMPDIR", "/tmp", 1);
  auto dir = std::make_unique<grantvault::testing::TempDir>();
  ::setenv("TEST_TMPDIR", saved.c_str(), 1);
  return dir;
}

// grantvault::testing::WaitFor with the ipc tests' chrono timeouts.
inline bool WaitFor(const std::function<bool()>& done,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
  return grantvault::testing::WaitFor(done, absl::FromChrono(timeout));
}

inline std::string Header(uint32_t length) {
  return std::string{static_cast<char>(length >> 24), static_cast<char>(length >> 16),
                     static_cast<char>(length >> 8), static_cast<char>(length)};
}

// A blocking Unix-socket client that speaks raw bytes.
class RawClient {
 public:
  RawClient() = default;
  explicit RawClient(int fd) : fd_(fd) {}
  RawClient(RawClient&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  RawClient& operator=(RawClient&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  ~RawClient() { Close(); }

  // An unconnected client (fd -1) when connect() fails.
  static RawClient Connect(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return RawClient();
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return RawClient();
    }
    return RawClient(fd);
  }

  bool connected() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void ShutdownWrite() { ::shutdown(fd_, SHUT_WR); }

  bool SendAll(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  bool SendFrame(std::string_view payload) { return SendAll(EncodeFrame(payload)); }

  // Reads exactly `n` bytes; nullopt on EOF, error or timeout.
  std::optional<std::string> ReadExactly(
      size_t n, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    std::string out(n, '\0');
    size_t got = 0;
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (got < n) {
      if (!WaitReadable(until)) return std::nullopt;
      const ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) return std::nullopt;
      got += static_cast<size_t>(r);
    }
    return out;
  }

  std::optional<std::string> ReadFrame(
      std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    const auto header = ReadExactly(kFrameHeaderSize, timeout);
    if (!header) return std::nullopt;
    const uint32_t length = (uint32_t{static_cast<uint8_t>((*header)[0])} << 24) |
                            (uint32_t{static_cast<uint8_t>((*header)[1])} << 16) |
                            (uint32_t{static_cast<uint8_t>((*header)[2])} << 8) |
                            uint32_t{static_cast<uint8_t>((*header)[3])};
    return ReadExactly(length, timeout);
  }

  // True when the server closes the connection (EOF or reset) within
  // `timeout`; data that arrives first is discarded.
  bool WaitClosed(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    for (;;) {
      if (!WaitReadable(until)) return false;
      const ssize_t r = ::recv(fd_, buf, sizeof(buf), 0);
      if (r == 0) return true;
      if (r < 0) return errno == ECONNRESET;
    }
  }

 private:
  bool WaitReadable(std::chrono::steady_clock::time_point until) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() < 0) return false;
      pollfd p = {fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return true;
      if (r == 0) return false;
      if (errno != EINTR) return false;
    }
  }

  int fd_ = -1;
};

}  // namespace grantvault::ipc::testing

#endif  // GRANTVAULT_TESTS_IPC_IPC_TEST_UTIL_H_
