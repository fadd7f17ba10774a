// sandbox/sandbox.h in forked children of the test (each restriction is for
// good, so the test process itself stays free).
#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace grantvault::sandbox {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// Runs `body` in a forked child; returns its wait status.
int InChild(const std::function<int()>& body) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(body());
  int status = 0;
  ::waitpid(child, &status, 0);
  return status;
}

std::string ProcSelfStatusField(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string value = line.substr(key.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      return value;
    }
  }
  return "";
}

TEST(RefuseRootTest, RootIsRefusedUnlessAllowed) {
  for (auto [uid, euid] : {std::pair<uid_t, uid_t>{0, 0}, {0, 1000}, {1000, 0}}) {
    absl::Status refused = RefuseRoot(uid, euid, /*allow_root=*/false);
    EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << uid << " " << euid;
    EXPECT_THAT(refused.message(), HasSubstr("--allow-root"));
    EXPECT_THAT(refused.message(), HasSubstr("User=grantvault"));
    EXPECT_TRUE(RefuseRoot(uid, euid, /*allow_root=*/true).ok());
  }
  EXPECT_TRUE(RefuseRoot(1000, 1000, false).ok());
  EXPECT_TRUE(RefuseRoot(65534, 65534, false).ok());
}

TEST(SyscallProfileTest, TheListFollowsTheProfile) {
  SyscallProfile front;
  std::vector<std::string> names = AllowedSyscalls(front);
  for (const char* never : {"ptrace",
                            "process_vm_readv",
                            "process_vm_writev",
                            "mount",
                            "umount2",
                            "keyctl",
                            "add_key",
                            "bpf",
                            "perf_event_open",
                            "kexec_load",
                            "kexec_file_load",
                            "init_module",
                            "finit_module",
                            "delete_module",
                            "personality",
                            "userfaultfd",
                            "unshare",
                            "setns",
                            "setuid",
                            "setgid",
                            "chroot",
                            "pivot_root",
                            "swapon",
                            "reboot",
                            "execve",
                            "execveat",
                            "bind",
                            "listen",
                            "accept",
                            "accept4",
                            "io_uring_setup"}) {
    EXPECT_THAT(names, Not(Contains(never))) << never;
  }
  EXPECT_THAT(names, Contains("socket"));  // AF_UNIX only (argument filter)
  SyscallProfile daemon;
  daemon.allow_inet_sockets = true;
  daemon.allow_listen = true;
  names = AllowedSyscalls(daemon);
  for (const char* listed : {"bind", "listen", "accept4"}) EXPECT_THAT(names, Contains(listed));
  EXPECT_THAT(names, Not(Contains("execve")));
  SyscallProfile exec;
  exec.allow_exec = true;
  EXPECT_THAT(AllowedSyscalls(exec), Contains("execve"));
  SyscallProfile sanitizer;
  sanitizer.allow_sanitizer_runtime = true;
  EXPECT_THAT(AllowedSyscalls(sanitizer), Contains("ptrace"));
}

SyscallProfile ForThisBuild(bool inet) {
  SyscallProfile p;
  p.allow_inet_sockets = inet;
  p.allow_sanitizer_runtime = BuiltWithSanitizers();
  return p;
}

TEST(SyscallFilterTest, UnixSocketsOnlyWithoutInet) {
  const int status = InChild([] {
    if (!HardenProcess().ok()) return 10;
    if (!InstallSyscallFilter(ForThisBuild(false)).ok()) return 11;
    const int unix_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (unix_fd < 0) return 12;
    if (::socket(AF_INET, SOCK_STREAM, 0) >= 0 || errno != EAFNOSUPPORT) return 13;
    if (::socket(AF_INET6, SOCK_STREAM, 0) >= 0 || errno != EAFNOSUPPORT) return 14;
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SyscallFilterTest, InetSocketsWhenAllowed) {
  const int status = InChild([] {
    if (!HardenProcess().ok()) return 10;
    if (!InstallSyscallFilter(ForThisBuild(true)).ok()) return 11;
    return ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) >= 0 ? 0 : 12;
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SyscallFilterTest, ASyscallOffTheListKillsTheProcess) {
  for (const char* what : {"execve", "ptrace", "listen"}) {
    const std::string name = what;
    const int status = InChild([&] {
      if (!HardenProcess().ok()) return 10;
      if (!InstallSyscallFilter(SyscallProfile{}).ok()) return 11;
      if (name == "execve") {
        char* const argv[] = {nullptr};
        ::execve("/bin/true", argv, argv);
      } else if (name == "ptrace") {
        ::syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0);
      } else {
        ::listen(0, 1);
      }
      return 0;
    });
    ASSERT_TRUE(WIFSIGNALED(status)) << what << " status " << status;
    EXPECT_EQ(WTERMSIG(status), SIGSYS) << what;
  }
}

TEST(HardenProcessTest, NotDumpableNoCoreNoNewPrivsNoCapabilities) {
  const int status = InChild([] {
    absl::StatusOr<HardeningReport> report = HardenProcess();
    if (!report.ok() || !report->capabilities_dropped) return 10;
    if (ProcSelfStatusField("NoNewPrivs") != "1") return 11;
    if (ProcSelfStatusField("CapEff") != "0000000000000000") return 12;
    if (ProcSelfStatusField("CapPrm") != "0000000000000000") return 13;
    if (ProcSelfStatusField("CapAmb") != "0000000000000000") return 14;
    if (report->bounding_set_cleared && ProcSelfStatusField("CapBnd") != "0000000000000000") {
      return 15;
    }
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(LandlockTest, ProbeMatchesTheKernel) {
  const long raw =
      ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  EXPECT_EQ(LandlockAbi(), raw > 0 ? static_cast<int>(raw) : 0);
}

TEST(LandlockTest, OnlyTheRulesPathsAreReachable) {
  if (LandlockAbi() == 0) GTEST_SKIP() << "this kernel has no Landlock";
  char base_tmpl[] = "/tmp/gv-landlock-XXXXXX";
  ASSERT_NE(::mkdtemp(base_tmpl), nullptr);
  const std::string base = base_tmpl;
  const std::string ro = base + "/ro", rw = base + "/rw", other = base + "/other";
  for (const std::string& d : {ro, rw, other}) ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
  for (const std::string& d : {ro, other}) std::ofstream(d + "/f") << "x";
  const int status = InChild([&] {
    if (!HardenProcess().ok()) return 10;
    absl::StatusOr<FilesystemReport> report =
        RestrictFilesystem(FilesystemRules{{ro, "/proc"}, {rw, base + "/missing/x"}});
    if (!report.ok() || report->abi != LandlockAbi()) return 11;
    if (report->skipped.size() != 1) return 12;
    int fd = ::open((ro + "/f").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 13;
    ::close(fd);
    if (::open((ro + "/f").c_str(), O_WRONLY | O_CLOEXEC) >= 0 || errno != EACCES) return 14;
    fd = ::open((rw + "/new").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return 15;
    ::close(fd);
    if (::rename((rw + "/new").c_str(), (rw + "/renamed").c_str()) != 0) return 16;
    if (::open((other + "/f").c_str(), O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES) return 17;
    if (::open("/etc/passwd", O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES) return 18;
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  for (const char* f : {"/ro/f", "/other/f", "/rw/renamed"}) ::unlink((base + f).c_str());
  for (const char* d : {"/ro", "/rw", "/other", ""}) ::rmdir((base + d).c_str());
}

TEST(LandlockTest, RefusedOnceThereAreThreads) {
  if (LandlockAbi() == 0) GTEST_SKIP() << "this kernel has no Landlock";
  const int status = InChild([] {
    std::thread t([] { ::pause(); });
    t.detach();
    absl::StatusOr<FilesystemReport> report = RestrictFilesystem(FilesystemRules{{"/"}, {}});
    return report.status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 1;
  });
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace grantvault::sandbox
