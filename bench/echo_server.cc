// echo_server: the baseline for bench/socket_bench.sh. A bare epoll server on
// a Unix socket that speaks grantvault's framing (4-byte big-endian length N,
// 1 <= N <= 65,536, then N bytes) and writes every complete frame back
// unchanged. No protobuf, no allocation per frame, no locks: what the kernel
// and the framing cost, and nothing else.
//
//   echo_server --socket PATH [--threads T]
//
// Thread 0 accepts and hands connections round-robin to T epoll loops (the
// default, 2, is one per core of the standard machine). SIGINT/SIGTERM remove
// the socket and exit.
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr size_t kHeaderSize = 4;
constexpr size_t kMaxPayload = 65536;
constexpr size_t kReadBufferSize = 4 * (kHeaderSize + kMaxPayload);

char g_socket_path[sizeof(sockaddr_un::sun_path)] = {};

extern "C" void OnTerminate(int) {
  ::unlink(g_socket_path);
  ::_exit(0);
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "echo_server: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

struct Connection {
  int fd = -1;
  std::unique_ptr<char[]> in = std::make_unique<char[]>(kReadBufferSize);
  size_t in_begin = 0;  // first unconsumed byte
  size_t in_end = 0;    // one past the last byte read
  std::string out;      // echoed bytes the socket did not take yet
  bool want_write = false;
};

class Loop {
 public:
  Loop() : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epoll_fd_ < 0) Die("epoll_create1");
  }

  // Called from the accepting thread: after epoll_ctl the connection belongs
  // to this loop's thread only.
  void Adopt(int fd) {
    auto* c = new Connection;
    c->fd = fd;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = c;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      delete c;
    }
  }

  // `listen_fd` >= 0: this loop also accepts and distributes to `loops`.
  void Run(int listen_fd, std::vector<std::unique_ptr<Loop>>* loops) {
    if (listen_fd >= 0) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = nullptr;
      if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd, &ev) != 0) Die("epoll_ctl listen");
    }
    epoll_event events[256];
    size_t next = 0;
    for (;;) {
      int n = ::epoll_wait(epoll_fd_, events, 256, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        const epoll_event& ev = events[i];
        if (ev.data.ptr == nullptr) {
          for (;;) {
            int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) break;  // EAGAIN, or a transient error: the next wakeup retries
            (*loops)[next % loops->size()]->Adopt(fd);
            ++next;
          }
          continue;
        }
        auto* c = static_cast<Connection*>(ev.data.ptr);
        if (!Service(c, ev.events)) {
          ::close(c->fd);  // also removes it from the epoll set
          delete c;
        }
      }
    }
  }

 private:
  // False: close the connection.
  bool Service(Connection* c, uint32_t events) {
    if ((events & (EPOLLERR | EPOLLHUP)) != 0) return false;
    if ((events & EPOLLOUT) != 0 && !Flush(c)) return false;
    if ((events & (EPOLLIN | EPOLLRDHUP)) != 0 && !c->want_write) {
      // Read until the socket is empty (or the buffer is full).
      for (;;) {
        if (c->in_end == kReadBufferSize) {
          if (c->in_begin == 0) return false;  // cannot happen: a frame fits 4 times
          std::memmove(c->in.get(), c->in.get() + c->in_begin, c->in_end - c->in_begin);
          c->in_end -= c->in_begin;
          c->in_begin = 0;
        }
        ssize_t got = ::read(c->fd, c->in.get() + c->in_end, kReadBufferSize - c->in_end);
        if (got == 0) return false;
        if (got < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) break;
          return false;
        }
        c->in_end += static_cast<size_t>(got);
        // The complete frames at the front are echoed as one block.
        size_t end = c->in_begin;
        while (c->in_end - end >= kHeaderSize) {
          const auto* h = reinterpret_cast<const unsigned char*>(c->in.get() + end);
          const size_t len =
              (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | size_t{h[3]};
          if (len == 0 || len > kMaxPayload) return false;
          if (c->in_end - end < kHeaderSize + len) break;
          end += kHeaderSize + len;
        }
        if (end > c->in_begin) {
          if (!Echo(c, c->in.get() + c->in_begin, end - c->in_begin)) return false;
          c->in_begin = end;
          if (c->in_begin == c->in_end) c->in_begin = c->in_end = 0;
        }
        if (c->want_write) break;  // the peer is not reading: stop reading too
        if (static_cast<size_t>(got) < kReadBufferSize / 4) break;  // most likely drained
      }
    }
    return true;
  }

  bool Echo(Connection* c, const char* data, size_t size) {
    if (!c->out.empty()) {
      c->out.append(data, size);
      return true;
    }
    while (size > 0) {
      ssize_t put = ::send(c->fd, data, size, MSG_NOSIGNAL);
      if (put < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return false;
        c->out.assign(data, size);
        return Watch(c, true);
      }
      data += put;
      size -= static_cast<size_t>(put);
    }
    return true;
  }

  bool Flush(Connection* c) {
    size_t done = 0;
    while (done < c->out.size()) {
      ssize_t put = ::send(c->fd, c->out.data() + done, c->out.size() - done, MSG_NOSIGNAL);
      if (put < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return false;
        c->out.erase(0, done);
        return true;
      }
      done += static_cast<size_t>(put);
    }
    c->out.clear();
    return Watch(c, false);
  }

  bool Watch(Connection* c, bool write) {
    c->want_write = write;
    epoll_event ev{};
    ev.events = write ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP);
    ev.data.ptr = c;
    return ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev) == 0;
  }

  int epoll_fd_;
};

void Usage() {
  std::fprintf(stderr, "usage: echo_server --socket PATH [--threads T]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  long threads = 2;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) Usage();
    if (arg == "--socket") {
      path = argv[++i];
    } else if (arg == "--threads") {
      threads = std::strtol(argv[++i], nullptr, 10);
    } else {
      Usage();
    }
  }
  if (path.empty() || path.size() >= sizeof(g_socket_path) || threads < 1 || threads > 64) {
    Usage();
  }
  std::memcpy(g_socket_path, path.c_str(), path.size() + 1);

  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  ::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = OnTerminate;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  int listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) Die("socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());
  if (::bind(listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) Die("bind");
  if (::listen(listen_fd, SOMAXCONN) != 0) Die("listen");

  std::vector<std::unique_ptr<Loop>> loops;
  for (long i = 0; i < threads; ++i) loops.push_back(std::make_unique<Loop>());
  std::vector<std::thread> workers;
  for (size_t i = 1; i < loops.size(); ++i) {
    workers.emplace_back([&loops, i] { loops[i]->Run(-1, nullptr); });
  }
  std::fprintf(stderr, "echo_server: listening on %s with %ld thread(s)\n", path.c_str(), threads);
  loops[0]->Run(listen_fd, &loops);
}
