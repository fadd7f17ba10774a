// Runs the real grantvaultd binary for end-to-end tests: started with
// NOTIFY_SOCKET pointing at the test, so Start() returns when the daemon says
// READY=1 (or fails with what it wrote to stderr).
#ifndef GRANTVAULT_TESTS_TESTING_DAEMON_PROCESS_H_
#define GRANTVAULT_TESTS_TESTING_DAEMON_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace grantvault::testing {

// Runs `argv` to completion, capturing stdout and stderr. Returns the exit
// code (or 128 + signal).
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& extra_env = {});

class DaemonProcess {
 public:
  explicit DaemonProcess(std::vector<std::string> args) : args_(std::move(args)) {}

  // Hands listening sockets to the daemon the way systemd socket activation
  // does (fds 3, 4, … with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID). Call
  // before Start(); the fds stay owned by the caller.
  void InheritSockets(std::vector<std::pair<std::string, int>> named_fds) {
    inherited_ = std::move(named_fds);
  }
  // Lets a daemon that drops to `uid` (under setpriv, say) still notify: the
  // notification socket and its directory are given to that uid. Call before
  // Start().
  void AllowNotificationsFrom(uid_t uid) { notify_uid_ = uid; }
  ~DaemonProcess();

  // Starts the daemon and waits up to `timeout` for READY=1.
  absl::Status Start(absl::Duration timeout = absl::Seconds(20));
  // Sends `sig` and waits for the exit; returns the exit code (128 + signal if
  // killed by one).
  int Stop(int sig = 15, absl::Duration timeout = absl::Seconds(20));
  // Waits for the process to exit on its own.
  int Wait(absl::Duration timeout = absl::Seconds(20));
  void Signal(int sig);
  // Waits until a notification containing `text` arrives (e.g. "READY=1").
  absl::Status WaitForNotification(const std::string& text, absl::Duration timeout);
  // Everything the daemon wrote to stderr so far.
  std::string Stderr() const;
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

 private:
  std::vector<std::string> args_;
  std::vector<std::pair<std::string, int>> inherited_;
  pid_t pid_ = -1;
  int notify_fd_ = -1;
  uid_t notify_uid_ = static_cast<uid_t>(-1);  // -1: stays this process's
  std::string notify_path_;
  std::string stderr_path_;
  int exit_code_ = -1;
};

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_DAEMON_PROCESS_H_
