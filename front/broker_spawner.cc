// The spawner's loop (in the forked child) and the front's side of its
// channel.
#include "front/broker_spawner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "ipc/packet_channel.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {
namespace {

// The channel carries one request and one reply kind; a version byte lets a
// front and a spawner of different builds (never the case: it is a fork)
// refuse each other rather than misread.
constexpr uint8_t kSpawnRequest = 0x53;  // 'S', version 1
struct SpawnReply {
  int32_t pid;
  int32_t error;  // errno of the failed step, or 0; two descriptors follow when 0
};
// The spawner's own channel, after it has closed every other descriptor.
constexpr int kSpawnerChannelFd = 3;
// How long the spawner gives its brokers to end once the front is gone.
constexpr int kDrainMillis = 30'000;

int PidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
void SignalPidfd(int pidfd, int sig) { ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0); }

// Sends `reply` and, when it succeeded, the two descriptors.
void SendReply(int channel, SpawnReply reply, int link, int pidfd) {
  iovec iov{&reply, sizeof(reply)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  if (reply.error == 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    const int fds[2] = {link, pidfd};
    std::memcpy(CMSG_DATA(c), fds, sizeof(fds));
  }
  while (::sendmsg(channel, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

// In the broker's child, between fork and exec: async-signal-safe calls only.
[[noreturn]] void ExecBroker(int link, char* const* argv, pid_t spawner) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (::getppid() != spawner) ::_exit(127);
  if (::dup2(link, BrokerSpawner::kBrokerFd) != BrokerSpawner::kBrokerFd) ::_exit(127);
  ::syscall(SYS_close_range, BrokerSpawner::kBrokerFd + 1, ~0U, 0);
  ::execv(argv[0], argv);
  ::_exit(127);
}

struct Child {
  pid_t pid;
  int pidfd;
};

void Reap(const Child& child) {
  int status = 0;
  while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
  }
  ::close(child.pidfd);
  if (WIFSIGNALED(status)) {
    spdlog::error("broker.died pid={} signal={}", child.pid, strsignal(WTERMSIG(status)));
  } else if (WEXITSTATUS(status) != 0) {
    spdlog::error("broker.exited pid={} status={}", child.pid, WEXITSTATUS(status));
  } else {
    spdlog::info("broker.exited pid={} status=0", child.pid);
  }
}

// Starts one broker and answers the front.
void SpawnOne(std::vector<char*>& argv, std::vector<Child>& children) {
  const pid_t self = ::getpid();
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> pair = ipc::PacketSocketPair();
  if (!pair.ok()) {
    SendReply(kSpawnerChannelFd, {-1, errno != 0 ? errno : EMFILE}, -1, -1);
    return;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    SendReply(kSpawnerChannelFd, {-1, errno}, -1, -1);
    return;
  }
  if (pid == 0) ExecBroker(pair->second.get(), argv.data(), self);
  pair->second.reset();
  const int pidfd = PidfdOpen(pid);
  if (pidfd < 0) {
    const int error = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    SendReply(kSpawnerChannelFd, {-1, error}, -1, -1);
    return;
  }
  // The front gets its own pidfd: ours stays here, for reaping.
  const int front_pidfd = ::fcntl(pidfd, F_DUPFD_CLOEXEC, 0);
  SendReply(kSpawnerChannelFd, {pid, front_pidfd < 0 ? errno : 0}, pair->first.get(), front_pidfd);
  if (front_pidfd >= 0) ::close(front_pidfd);
  children.push_back({pid, pidfd});
  spdlog::info("broker.started pid={}", pid);
}

[[noreturn]] void SpawnerMain(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<Child> children;
  bool front_gone = false;
  int drain_left = kDrainMillis;
  while (!front_gone || !children.empty()) {
    std::vector<pollfd> fds;
    if (!front_gone) fds.push_back({kSpawnerChannelFd, POLLIN, 0});
    for (const Child& c : children) fds.push_back({c.pidfd, POLLIN, 0});
    const int ready = ::poll(fds.data(), fds.size(), front_gone ? 100 : -1);
    if (ready < 0 && errno != EINTR) break;
    if (front_gone) {
      drain_left -= 100;
      if (drain_left <= 0) {
        for (const Child& c : children) SignalPidfd(c.pidfd, SIGKILL);
      }
    }
    size_t i = 0;
    if (!front_gone) {
      if (fds[0].revents != 0) {
        uint8_t request = 0;
        const ssize_t n = ::recv(kSpawnerChannelFd, &request, sizeof(request), 0);
        if (n == 1 && request == kSpawnRequest) {
          SpawnOne(argv, children);
        } else if (n == 0 || (n < 0 && errno != EINTR)) {
          front_gone = true;
        } else if (n > 0) {
          SendReply(kSpawnerChannelFd, {-1, EPROTO}, -1, -1);
        }
      }
      i = 1;
    }
    for (size_t c = 0; i < fds.size(); ++i, ++c) {
      if (fds[i].revents == 0) continue;
      const pid_t pid = children[c].pid;
      Reap(children[c]);
      children[c].pid = -pid;  // erased below
    }
    std::erase_if(children, [](const Child& c) { return c.pid < 0; });
  }
  ::_exit(0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<BrokerSpawner>> BrokerSpawner::Fork(std::vector<std::string> argv) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return absl::InvalidArgumentError("the broker's executable must be an absolute path");
  }
  GV_ASSIGN_OR_RETURN(auto pair, ipc::PacketSocketPair());
  const pid_t front = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // One thread (the front forked while it had one), a copy of nothing the
    // front has read from anyone.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (::getppid() != front) ::_exit(127);
    ::prctl(PR_SET_NAME, "gv-spawner", 0, 0, 0);
    if (::dup2(pair.second.get(), kSpawnerChannelFd) != kSpawnerChannelFd) ::_exit(127);
    ::syscall(SYS_close_range, kSpawnerChannelFd + 1, ~0U, 0);
    (void)pair.first.release();  // closed by close_range
    (void)pair.second.release();
    // The front owns shutdown: the spawner (and the brokers it starts, which
    // inherit SIG_IGN) ends when its channel does. systemd's SIGTERM to the
    // whole unit does not cut a refresh short.
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) ::signal(sig, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    SpawnerMain(std::move(argv));
  }
  pair.second.reset();
  return std::unique_ptr<BrokerSpawner>(new BrokerSpawner(std::move(pair.first), pid));
}

BrokerSpawner::~BrokerSpawner() {
  {
    absl::MutexLock lock(&mu_);
    channel_.reset();
  }
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

absl::StatusOr<SpawnedBroker> BrokerSpawner::Spawn() {
  absl::MutexLock lock(&mu_);
  if (!channel_.valid()) return absl::AbortedError("the broker spawner is gone");
  // Anything but a well-formed answer in time leaves the channel out of step
  // (a late answer would be read as the next one's): the spawner is given up,
  // and so is the daemon (BrokerProcess).
  auto give_up = [this](std::string why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    channel_.reset();  // the spawner sees its channel close, ends its brokers and exits
    return absl::AbortedError(std::move(why));
  };
  const uint8_t request = kSpawnRequest;
  if (::send(channel_.get(), &request, sizeof(request), MSG_NOSIGNAL) != 1) {
    return give_up(absl::StrCat("the broker spawner is gone: ", std::strerror(errno)));
  }
  pollfd pfd{channel_.get(), POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&pfd, 1, 10'000);
  } while (ready < 0 && errno == EINTR);
  if (ready != 1) return give_up("the broker spawner did not answer within 10 s");
  SpawnReply reply{};
  iovec iov{&reply, sizeof(reply)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(channel_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  SpawnedBroker spawned;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int fds[2] = {-1, -1};
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    std::memcpy(fds, CMSG_DATA(c), std::min<size_t>(count, 2) * sizeof(int));
    spawned.link = UniqueFd(fds[0]);
    spawned.pidfd = UniqueFd(fds[1]);
  }
  if (n == 0) return give_up("the broker spawner is gone");
  if (n != static_cast<ssize_t>(sizeof(reply)) || (msg.msg_flags & MSG_CTRUNC) != 0) {
    return give_up("the broker spawner's answer is malformed");
  }
  if (reply.error != 0) {
    // Fork or socketpair failed there (out of processes or descriptors): worth
    // trying again later.
    return absl::UnavailableError(
        absl::StrCat("the broker spawner could not start a broker: ", std::strerror(reply.error)));
  }
  if (!spawned.link.valid() || !spawned.pidfd.valid()) {
    return give_up("the broker spawner's answer carried no descriptors");
  }
  spawned.pid = reply.pid;
  return spawned;
}

}  // namespace grantvault::front
