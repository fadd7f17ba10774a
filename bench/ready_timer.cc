// ready_timer: starts a daemon under a systemd-style notify socket and times
// it from fork to READY=1 (grantvaultd sends it once both sockets serve). For
// bench/resolve_bench.sh.
//
//   ready_timer [--timeout S] -- COMMAND [ARG…]
//
// Prints "ready_ms=<ms> pid=<daemon pid>" on stdout (flushed) once READY=1
// arrives, then stays the daemon's parent: SIGTERM and SIGINT are passed on
// to it, and ready_timer exits with its exit status (128 + signal if it was
// killed). Exits 1 without a line if the daemon exits or does not become
// ready within the timeout (default 60 s; the daemon is then killed). The
// daemon inherits stdin, stdout and stderr.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

volatile sig_atomic_t g_child = 0;

void Forward(int sig) {
  if (g_child > 0) ::kill(g_child, sig);
}

double NowMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

[[noreturn]] void Usage() {
  std::fprintf(stderr, "usage: ready_timer [--timeout S] -- COMMAND [ARG...]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  double timeout_s = 60;
  int first = 1;
  while (first < argc && std::string_view(argv[first]) != "--") {
    if (std::string_view(argv[first]) == "--timeout" && first + 1 < argc) {
      timeout_s = std::atof(argv[first + 1]);
      first += 2;
    } else {
      Usage();
    }
  }
  if (first + 1 >= argc || timeout_s <= 0) Usage();
  char** command = argv + first + 1;

  char dir[] = "/tmp/gv-ready-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("ready_timer: mkdtemp");
    return 1;
  }
  const std::string path = std::string(dir) + "/notify";
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("ready_timer: notify socket");
    return 1;
  }
  const std::string env = "NOTIFY_SOCKET=" + path;

  struct sigaction sa {};
  sa.sa_handler = Forward;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);

  const double started = NowMs();
  const pid_t child = ::fork();
  if (child < 0) {
    std::perror("ready_timer: fork");
    return 1;
  }
  if (child == 0) {
    ::putenv(const_cast<char*>(env.c_str()));
    ::execvp(command[0], command);
    std::fprintf(stderr, "ready_timer: exec %s: %s\n", command[0], std::strerror(errno));
    ::_exit(127);
  }
  g_child = child;

  bool ready = false;
  int status = 0;
  bool exited = false;
  while (!ready) {
    const double left = timeout_s * 1e3 - (NowMs() - started);
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left < 50 ? left + 1 : 50));
    if (n > 0) {
      char buf[4096];
      const ssize_t got = ::recv(fd, buf, sizeof(buf) - 1, 0);
      if (got > 0) {
        buf[got] = '\0';
        // Messages are newline-separated assignments; READY=1 is one of them.
        const std::string msg(buf, static_cast<size_t>(got));
        if (msg == "READY=1" || msg.rfind("READY=1\n", 0) == 0 ||
            msg.find("\nREADY=1") != std::string::npos) {
          std::printf("ready_ms=%.1f pid=%d\n", NowMs() - started, static_cast<int>(child));
          std::fflush(stdout);
          ready = true;
        }
      }
    } else if (::waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      break;
    }
  }
  ::close(fd);
  ::unlink(path.c_str());
  ::rmdir(dir);
  if (exited) {
    std::fprintf(stderr, "ready_timer: the daemon exited (status %d) before READY=1\n",
                 ExitCode(status));
    return 1;
  }
  if (!ready) {
    std::fprintf(stderr, "ready_timer: no READY=1 within %.0f s; killing the daemon\n", timeout_s);
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    return 1;
  }
  while (::waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  return ExitCode(status);
}
