#include "tests/testing/daemon_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace grantvault::testing {
namespace {

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (std::string& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Waits for `pid` with a timeout; kills it with SIGKILL when it runs out.
int WaitWithTimeout(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return DecodeWaitStatus(status);
    if (r < 0) return -1;
    if (absl::Now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return DecodeWaitStatus(status);
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

std::vector<std::string> Environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (entry.rfind("NOTIFY_SOCKET=", 0) == 0 || entry.rfind("LISTEN_", 0) == 0) continue;
    env.push_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

}  // namespace

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& extra_env) {
  char out_tmpl[] = "/tmp/gv-cmd-out-XXXXXX";
  char err_tmpl[] = "/tmp/gv-cmd-err-XXXXXX";
  int out_fd = ::mkstemp(out_tmpl);
  int err_fd = ::mkstemp(err_tmpl);
  std::vector<std::string> args = argv;
  std::vector<std::string> env = Environment(extra_env);
  std::vector<char*> cargs = CStrings(args);
  std::vector<char*> cenv = CStrings(env);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, STDIN_FILENO);
    ::execve(cargs[0], cargs.data(), cenv.data());
    ::_exit(127);
  }
  CommandResult result;
  result.exit_code = WaitWithTimeout(pid, absl::Seconds(60));
  ::close(out_fd);
  ::close(err_fd);
  result.out = Slurp(out_tmpl);
  result.err = Slurp(err_tmpl);
  ::unlink(out_tmpl);
  ::unlink(err_tmpl);
  return result;
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop(SIGKILL);
  if (notify_fd_ >= 0) ::close(notify_fd_);
  if (!notify_path_.empty()) ::unlink(notify_path_.c_str());
  if (!stderr_path_.empty()) ::unlink(stderr_path_.c_str());
}

absl::Status DaemonProcess::Start(absl::Duration timeout) {
  char dir_tmpl[] = "/tmp/gv-notify-XXXXXX";
  if (::mkdtemp(dir_tmpl) == nullptr) return absl::InternalError("mkdtemp");
  notify_path_ = absl::StrCat(dir_tmpl, "/notify");
  stderr_path_ = absl::StrCat(dir_tmpl, "/stderr");
  notify_fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify_path_.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(notify_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::InternalError(absl::StrCat("bind notify socket: ", std::strerror(errno)));
  }
  if (notify_uid_ != static_cast<uid_t>(-1) &&
      (::chown(dir_tmpl, notify_uid_, static_cast<gid_t>(-1)) != 0 ||
       ::chown(notify_path_.c_str(), notify_uid_, static_cast<gid_t>(-1)) != 0)) {
    return absl::InternalError(absl::StrCat("chown notify socket: ", std::strerror(errno)));
  }
  int err_fd = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::vector<std::string> args = args_;
  std::vector<std::string> env = Environment({"NOTIFY_SOCKET=" + notify_path_});
  std::vector<char*> cargs = CStrings(args);
  std::vector<char*> cenv = CStrings(env);
  std::string fd_names;
  for (const auto& [name, fd] : inherited_) {
    fd_names += (fd_names.empty() ? "" : ":") + name;
  }
  pid_ = ::fork();
  if (pid_ == 0) {
    ::dup2(err_fd, STDERR_FILENO);
    ::dup2(err_fd, STDOUT_FILENO);
    if (!inherited_.empty()) {
      // Move the sockets out of the way first, then into 3, 4, … in order.
      std::vector<int> moved;
      for (const auto& entry : inherited_) moved.push_back(::fcntl(entry.second, F_DUPFD, 100));
      for (size_t i = 0; i < moved.size(); ++i) ::dup2(moved[i], 3 + static_cast<int>(i));
      std::string fds = "LISTEN_FDS=" + std::to_string(inherited_.size());
      std::string names = "LISTEN_FDNAMES=" + fd_names;
      std::string pid = "LISTEN_PID=" + std::to_string(::getpid());
      env.push_back(fds);
      env.push_back(names);
      env.push_back(pid);
      cenv = CStrings(env);
    }
    ::execve(cargs[0], cargs.data(), cenv.data());
    ::_exit(127);
  }
  ::close(err_fd);
  absl::Status ready = WaitForNotification("READY=1", timeout);
  if (!ready.ok()) {
    return absl::Status(ready.code(),
                        absl::StrCat(ready.message(), "; daemon stderr:\n", Stderr()));
  }
  return absl::OkStatus();
}

absl::Status DaemonProcess::WaitForNotification(const std::string& text, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (pid_ > 0) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = DecodeWaitStatus(status);
        pid_ = -1;
        return absl::FailedPreconditionError(
            absl::StrCat("the daemon exited with code ", exit_code_, " before ", text));
      }
    }
    pollfd p{notify_fd_, POLLIN, 0};
    if (::poll(&p, 1, 20) > 0) {
      char buf[4096];
      ssize_t n = ::recv(notify_fd_, buf, sizeof(buf), 0);
      if (n > 0 && std::string(buf, static_cast<size_t>(n)).find(text) != std::string::npos) {
        return absl::OkStatus();
      }
    }
  }
  return absl::DeadlineExceededError(absl::StrCat("no ", text, " from the daemon"));
}

void DaemonProcess::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

int DaemonProcess::Stop(int sig, absl::Duration timeout) {
  if (pid_ <= 0) return exit_code_;
  ::kill(pid_, sig);
  return Wait(timeout);
}

int DaemonProcess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return exit_code_;
  exit_code_ = WaitWithTimeout(pid_, timeout);
  pid_ = -1;
  return exit_code_;
}

std::string DaemonProcess::Stderr() const { return Slurp(stderr_path_); }

}  // namespace grantvault::testing
