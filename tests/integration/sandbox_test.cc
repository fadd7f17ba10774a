// grantvaultd's in-process sandbox (sandbox/), seen from outside the running
// daemon: root is refused without --allow-root; the front and the broker are
// each not dumpable (no ptrace by their own uid, no core file), have no
// capabilities, run under a seccomp filter that kills them for a syscall off
// their list (execve for both), and cannot open a file outside their Landlock
// rules. A broker killed so is replaced by the front.
#include "sandbox/sandbox.h"

#include <dirent.h>
#include <grp.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/process_tree.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using testing::CommandResult;
using testing::DaemonProcess;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunCommand;
using testing::TempDir;

constexpr uid_t kNobody = 65534;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "Key:\tvalue" lines of /proc/<pid>/status.
std::map<std::string, std::string> ProcStatus(pid_t pid) {
  std::map<std::string, std::string> fields;
  for (absl::string_view line :
       absl::StrSplit(Slurp(absl::StrCat("/proc/", pid, "/status")), '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    fields[std::string(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return fields;
}

std::string Setpriv() {
  for (const char* path : {"/usr/bin/setpriv", "/bin/setpriv"}) {
    if (::access(path, X_OK) == 0) return path;
  }
  return "";
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Traversable by the unprivileged daemon.
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    state_ = dir_.Join("state");
    work_ = dir_.Join("work");
    ASSERT_EQ(::mkdir(state_.c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(work_.c_str(), 0777), 0);
  }

  // The daemon as root (--allow-root), from `work_` as its working directory.
  void StartAsRoot(const std::vector<std::string>& extra = {}) {
    std::string command = absl::StrCat("cd '", work_, "' && exec '", GV_GRANTVAULTD,
                                       "' --allow-root --state-dir '", state_, "'");
    for (const std::string& arg : extra) absl::StrAppend(&command, " '", arg, "'");
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{"/bin/sh", "-c", command});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  // The daemon as uid and gid 65534 (as the unit's User=grantvault), by setpriv.
  void StartAsNobody(const std::vector<std::string>& extra = {}) {
    ASSERT_EQ(::chown(state_.c_str(), kNobody, kNobody), 0);
    std::vector<std::string> argv = {Setpriv(),
                                     absl::StrCat("--reuid=", kNobody),
                                     absl::StrCat("--regid=", kNobody),
                                     "--clear-groups",
                                     GV_GRANTVAULTD,
                                     "--state-dir",
                                     state_};
    argv.insert(argv.end(), extra.begin(), extra.end());
    daemon_ = std::make_unique<DaemonProcess>(argv);
    daemon_->AllowNotificationsFrom(kNobody);
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  bool NeedsRoot() { return ::geteuid() == 0 && !Setpriv().empty(); }

  pid_t BrokerPid() const { return testing::WaitForBroker(daemon_->pid()); }
  // Waits for the front to have started a broker other than `dead`; its pid.
  pid_t WaitForAnotherBroker(pid_t dead) const {
    return testing::WaitForBroker(daemon_->pid(), dead, absl::Seconds(30));
  }
  // The entries of the daemon's working directory (where a core would go).
  std::vector<std::string> FilesInWorkDirectory() const {
    std::vector<std::string> left;
    DIR* dir = ::opendir(work_.c_str());
    if (dir == nullptr) return {"(cannot open the working directory)"};
    while (dirent* e = ::readdir(dir)) {
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..")
        left.push_back(e->d_name);
    }
    ::closedir(dir);
    return left;
  }

  TempDir dir_;
  std::string state_, work_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(SandboxTest, RootWithoutAllowRootIsRefusedWithTheReason) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  CommandResult run = RunCommand({GV_GRANTVAULTD, "--state-dir", state_});
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("refusing to run as root"));
  EXPECT_THAT(run.err, HasSubstr("User=grantvault"));
  EXPECT_THAT(run.err, HasSubstr("--allow-root"));
  // Nothing was created.
  EXPECT_FALSE(::access((state_ + "/grantvaultd.lock").c_str(), F_OK) == 0);
}

TEST_F(SandboxTest, RootDaemonHasSeccompNoNewPrivsAndNoCapabilities) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot();
  std::map<std::string, std::string> status = ProcStatus(daemon_->pid());
  EXPECT_EQ(status["Seccomp"], "2");
  EXPECT_EQ(status["NoNewPrivs"], "1");
  for (const char* set : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    EXPECT_EQ(status[set], "0000000000000000") << set;
  }
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("sandbox=[seccomp=on landlock="));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("capabilities=dropped]"));
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

TEST_F(SandboxTest, UnprivilegedDaemonHasSeccompNoNewPrivsAndNoCapabilities) {
  if (!NeedsRoot()) GTEST_SKIP() << "needs root and setpriv to start the daemon as 65534";
  StartAsNobody();
  std::map<std::string, std::string> status = ProcStatus(daemon_->pid());
  EXPECT_EQ(status["Uid"].substr(0, 5), "65534");
  EXPECT_EQ(status["Seccomp"], "2");
  EXPECT_EQ(status["NoNewPrivs"], "1");
  EXPECT_EQ(status["CapPrm"], "0000000000000000");
  EXPECT_EQ(status["CapEff"], "0000000000000000");
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

// A child that becomes uid/gid 65534 and tries PTRACE_ATTACH then
// PTRACE_SEIZE on `target`. Its exit code: 0 both refused with EPERM, 1 an
// attach succeeded, 2 another error, 9 it could not change uid.
int PtraceAsNobody(pid_t target) {
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0) {
      ::_exit(9);
    }
    for (int request : {PTRACE_ATTACH, PTRACE_SEIZE}) {
      if (::ptrace(static_cast<__ptrace_request>(request), target, nullptr, nullptr) == 0) {
        ::_exit(1);
      }
      if (errno != EPERM) ::_exit(2);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(SandboxTest, PtraceFromTheSameUidIsRefused) {
  if (!NeedsRoot()) GTEST_SKIP() << "needs root and setpriv to start the daemon as 65534";
  // The control: a dumpable process of the same uid can be attached to, so
  // the refusal below is the daemon's doing, not the machine's.
  const pid_t sleeper = ::fork();
  if (sleeper == 0) {
    if (::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0) {
      ::_exit(9);
    }
    ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_TRUE(testing::WaitFor([&] {
    return ProcStatus(sleeper)["Uid"].rfind("65534", 0) == 0 &&
           ProcStatus(sleeper)["Name"] == "sleep";
  }));
  EXPECT_EQ(PtraceAsNobody(sleeper), 1) << "ptrace of a dumpable process of the same uid";
  ::kill(sleeper, SIGKILL);
  ::waitpid(sleeper, nullptr, 0);

  StartAsNobody();
  EXPECT_EQ(PtraceAsNobody(daemon_->pid()), 0) << "0: EPERM for PTRACE_ATTACH and PTRACE_SEIZE";
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

TEST_F(SandboxTest, SigsegvLeavesNoCoreFile) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot();
  EXPECT_THAT(Slurp(absl::StrCat("/proc/", daemon_->pid(), "/limits")),
              ::testing::ContainsRegex("Max core file size +0 +0 "));
  daemon_->Signal(SIGSEGV);
  EXPECT_NE(daemon_->Wait(), 0);
  EXPECT_THAT(FilesInWorkDirectory(), ::testing::IsEmpty());
}

TEST_F(SandboxTest, BrokerHasItsOwnSeccompFilterNoNewPrivsNoCapabilitiesAndLandlock) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot();
  const pid_t broker = BrokerPid();
  ASSERT_GT(broker, 0) << daemon_->Stderr();
  ASSERT_NE(broker, daemon_->pid());
  std::map<std::string, std::string> status = ProcStatus(broker);
  EXPECT_EQ(status["Seccomp"], "2");
  EXPECT_EQ(status["NoNewPrivs"], "1");
  for (const char* set : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    EXPECT_EQ(status[set], "0000000000000000") << set;
  }
  EXPECT_THAT(Slurp(absl::StrCat("/proc/", broker, "/limits")),
              ::testing::ContainsRegex("Max core file size +0 +0 "));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("sandbox=[seccomp=on landlock="));
  if (sandbox::LandlockAbi() > 0) {
    EXPECT_THAT(daemon_->Stderr(), ::testing::ContainsRegex("broker.ready .*landlock=abi[0-9]"));
  }
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

// Without its spawner no broker can be started again: the front stops with
// a failure (systemd's Restart=on-failure starts it afresh) rather than serve
// without one.
TEST_F(SandboxTest, TheFrontStopsWithAFailureWhenItsSpawnerIsGone) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot();
  ASSERT_GT(BrokerPid(), 0) << daemon_->Stderr();
  const pid_t spawner = testing::SpawnerOf(daemon_->pid());
  ASSERT_GT(spawner, 0);
  ASSERT_EQ(::kill(spawner, SIGKILL), 0);  // its broker dies with it (PR_SET_PDEATHSIG)
  EXPECT_EQ(daemon_->Wait(absl::Seconds(30)), 1) << daemon_->Stderr();
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("broker.unrecoverable"));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("grantvaultd.stopped"));
}

TEST_F(SandboxTest, BrokerPtraceFromTheSameUidIsRefused) {
  if (!NeedsRoot()) GTEST_SKIP() << "needs root and setpriv to start the daemon as 65534";
  StartAsNobody();
  const pid_t broker = BrokerPid();
  ASSERT_GT(broker, 0) << daemon_->Stderr();
  EXPECT_EQ(ProcStatus(broker)["Uid"].substr(0, 5), "65534");
  EXPECT_EQ(PtraceAsNobody(broker), 0) << "0: EPERM for PTRACE_ATTACH and PTRACE_SEIZE";
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

TEST_F(SandboxTest, BrokerSigsegvLeavesNoCoreFileAndTheFrontStartsAnother) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot();
  const pid_t broker = BrokerPid();
  ASSERT_GT(broker, 0) << daemon_->Stderr();
  ASSERT_EQ(::kill(broker, SIGSEGV), 0);
  const pid_t next = WaitForAnotherBroker(broker);
  ASSERT_GT(next, 0) << daemon_->Stderr();
  EXPECT_THAT(daemon_->Stderr(), HasSubstr(absl::StrCat("broker.died pid=", broker, " signal=")));
  EXPECT_THAT(FilesInWorkDirectory(), ::testing::IsEmpty());
  EXPECT_TRUE(daemon_->running());
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

#if defined(GV_TEST_HOOKS)
TEST_F(SandboxTest, ASyscallOffTheListKillsTheDaemonWithSigsys) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot({"--test-hook", "keyctl"});
  daemon_->Signal(SIGUSR2);
  EXPECT_EQ(daemon_->Wait(), 128 + SIGSYS) << daemon_->Stderr();
}

TEST_F(SandboxTest, TheFrontCannotStartAProgram) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  StartAsRoot({"--test-hook", "execve"});
  daemon_->Signal(SIGUSR2);
  EXPECT_EQ(daemon_->Wait(), 128 + SIGSYS) << daemon_->Stderr();
}

// keyctl (off both lists) and execve: each kills the broker with SIGSYS, and
// the front, still serving, starts another.
TEST_F(SandboxTest, ASyscallOffTheBrokersListKillsItAndTheFrontStartsAnother) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  for (const char* hook : {"keyctl", "execve"}) {
    SCOPED_TRACE(hook);
    StartAsRoot({"--test-hook", hook});
    const pid_t broker = BrokerPid();
    ASSERT_GT(broker, 0) << daemon_->Stderr();
    ASSERT_EQ(::kill(broker, SIGUSR2), 0);
    ASSERT_GT(WaitForAnotherBroker(broker), 0) << daemon_->Stderr();
    EXPECT_THAT(daemon_->Stderr(),
                HasSubstr(absl::StrCat("broker.died pid=", broker, " signal=Bad system call")));
    EXPECT_THAT(daemon_->Stderr(), Not(HasSubstr("test_hook.")));  // it never returned
    EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
  }
}

TEST_F(SandboxTest, BrokerLandlockDeniesAFileOutsideItsRulesByDefault) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  if (sandbox::LandlockAbi() == 0) GTEST_SKIP() << "this kernel has no Landlock";
  const std::string outside = dir_.Join("outside.txt");
  std::ofstream(outside) << "not the broker's\n";
  ASSERT_EQ(::chmod(outside.c_str(), 0644), 0);
  StartAsRoot({"--test-hook", "open:" + outside});  // no [sandbox] landlock: the broker's default
  const pid_t broker = BrokerPid();
  ASSERT_GT(broker, 0) << daemon_->Stderr();
  ASSERT_EQ(::kill(broker, SIGUSR2), 0);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "test_hook.open"); }, absl::Seconds(10)))
      << daemon_->Stderr();
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("result=Permission denied"));
  // The front, without [sandbox] landlock, opens it (the control).
  daemon_->Signal(SIGUSR2);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "result=opened"); }, absl::Seconds(10)))
      << daemon_->Stderr();
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}

TEST_F(SandboxTest, LandlockDeniesAFileOutsideItsRules) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  if (sandbox::LandlockAbi() == 0) GTEST_SKIP() << "this kernel has no Landlock";
  // Readable by anyone: only Landlock can refuse it (root without
  // capabilities still owns it).
  const std::string outside = dir_.Join("outside.txt");
  std::ofstream(outside) << "not the daemon's\n";
  ASSERT_EQ(::chmod(outside.c_str(), 0644), 0);
  const std::string config = dir_.Join("grantvaultd.toml");
  std::ofstream(config) << "[sandbox]\nlandlock = true\n";
  StartAsRoot({"--config", config, "--test-hook", "open:" + outside});
  daemon_->Signal(SIGUSR2);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(daemon_->Stderr(), "test_hook.open"); }, absl::Seconds(10)))
      << daemon_->Stderr();
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("result=Permission denied"));
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
}
#endif

}  // namespace
}  // namespace grantvault
