#include "policy/attestation.h"

#include <signal.h>
#include <sodium.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::policy {
namespace {

using ::testing::HasSubstr;
using testing::ReadFileOrDie;
using testing::TempDir;

// A /proc/<pid>/stat line with the given comm, state and start time (field 22).
std::string FakeStat(pid_t pid, const std::string& comm, char state, std::uint64_t start) {
  return absl::StrCat(pid, " (", comm, ") ", std::string(1, state),
                      " 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 ", start,
                      " 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n");
}

// A fake procfs tree: <root>/<pid>/{stat,status}.
void WriteFakeProc(const TempDir& root, pid_t pid, const std::string& stat,
                   const std::string& groups = "10 20") {
  const std::string dir = root.Join(std::to_string(pid));
  ::mkdir(dir.c_str(), 0700);
  std::ofstream(dir + "/stat") << stat;
  std::ofstream(dir + "/status") << "Name:\tfake\nUid:\t1000\t1000\t1000\t1000\nGroups:\t" << groups
                                 << "\nVmRSS:\t1 kB\n";
}

// Field 22 of /proc/self/stat, read independently of ParseProcStat with a
// stream over what follows the last ')'.
std::uint64_t SelfStartTimeIndependently() {
  const std::string stat = ReadFileOrDie("/proc/self/stat");
  std::istringstream in(stat.substr(stat.rfind(')') + 1));
  std::string field;
  for (int i = 3; i < 22; ++i) in >> field;
  std::uint64_t start = 0;
  in >> start;
  return start;
}

std::string SelfExeTarget() {
  std::array<char, 4096> buf{};
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  EXPECT_GT(n, 0);
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

std::string Sha256HexWithSodium(const std::string& contents) {
  EXPECT_GE(sodium_init(), 0);
  std::array<unsigned char, crypto_hash_sha256_BYTES> digest{};
  crypto_hash_sha256(digest.data(), reinterpret_cast<const unsigned char*>(contents.data()),
                     contents.size());
  std::array<char, 2 * crypto_hash_sha256_BYTES + 1> hex{};
  sodium_bin2hex(hex.data(), hex.size(), digest.data(), digest.size());
  return std::string(hex.data());
}

// A child that blocks until the write end of its pipe is closed, then exits.
class BlockedChild {
 public:
  BlockedChild() {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(fds[1]);
      char c;
      while (::read(fds[0], &c, 1) > 0) {
      }
      ::_exit(0);
    }
    ::close(fds[0]);
    write_fd_ = fds[1];
  }
  ~BlockedChild() {
    Release();
    Reap();
  }
  pid_t pid() const { return pid_; }
  void Release() {
    if (write_fd_ >= 0) ::close(write_fd_);
    write_fd_ = -1;
  }
  void Reap() {
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int write_fd_ = -1;
};

TEST(AttestationTest, AttestsTheTestProcessFromRealProc) {
  AttestOptions options;
  options.resolve_exe_path = true;
  options.hash_exe = true;
  absl::StatusOr<CallerIdentity> id = AttestCaller(::getpid(), ::getuid(), ::getgid(), options);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->pid, ::getpid());
  EXPECT_EQ(id->uid, ::getuid());
  EXPECT_EQ(id->gid, ::getgid());
  EXPECT_EQ(id->start_time, SelfStartTimeIndependently());
  EXPECT_GT(id->start_time, 0u);

  std::vector<gid_t> groups(static_cast<std::size_t>(::getgroups(0, nullptr)));
  ASSERT_EQ(::getgroups(static_cast<int>(groups.size()), groups.data()),
            static_cast<int>(groups.size()));
  std::vector<gid_t> attested = id->supplementary_groups;
  std::sort(groups.begin(), groups.end());
  std::sort(attested.begin(), attested.end());
  EXPECT_EQ(attested, groups);

  ASSERT_TRUE(id->exe_path.has_value());
  EXPECT_EQ(*id->exe_path, SelfExeTarget());
  ASSERT_TRUE(id->exe_sha256.has_value());
  EXPECT_EQ(*id->exe_sha256, Sha256HexWithSodium(ReadFileOrDie(SelfExeTarget())));

  EXPECT_TRUE(StillSameProcess(*id).ok());
}

TEST(AttestationTest, ExePathAndHashOnlyWhenAsked) {
  absl::StatusOr<CallerIdentity> id = AttestCaller(::getpid(), ::getuid(), ::getgid());
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_FALSE(id->exe_path.has_value());
  EXPECT_FALSE(id->exe_sha256.has_value());
}

TEST(AttestationTest, ChildThatExitsIsRefused) {
  BlockedChild child;
  absl::StatusOr<CallerIdentity> id = AttestCaller(child.pid(), ::getuid(), ::getgid());
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(StillSameProcess(*id).ok());

  child.Release();
  // Exited but not reaped yet: a zombie, which must count as exited.
  absl::Status status;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while ((status = StillSameProcess(*id)).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("exited"));

  const pid_t pid = child.pid();
  child.Reap();
  status = StillSameProcess(*id);
  EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  // The pid could in theory have been handed out again already.
  if (::kill(pid, 0) != 0) {
    EXPECT_THAT(status.message(), HasSubstr("exited"));
  }
}

// Real PID reuse cannot be forced reliably: the kernel hands pids out
// round-robin across the whole pid namespace, so waiting for one particular pid
// to come back means forking up to pid_max processes. So the real child is
// attested, exits and is reaped, and then a fake procfs tree stands in for the
// moment another process has taken the same pid with another start time.
TEST(AttestationTest, ReusedPidIsRefused) {
  BlockedChild child;
  const pid_t pid = child.pid();
  absl::StatusOr<CallerIdentity> id = AttestCaller(pid, ::getuid(), ::getgid());
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_NE(id->pidfd, nullptr);  // pidfd_open works on this kernel
  child.Release();
  child.Reap();
  // The pidfd names the attested process itself: whatever now has its pid,
  // it says the caller exited.
  absl::Status by_pidfd = StillSameProcess(*id);
  EXPECT_TRUE(absl::IsPermissionDenied(by_pidfd)) << by_pidfd;
  EXPECT_THAT(by_pidfd.message(), HasSubstr("exited"));

  // Without a pidfd, /proc: a pid now held by a process with another start
  // time is a reused PID.
  TempDir fake;
  WriteFakeProc(fake, pid, FakeStat(pid, "impostor", 'S', id->start_time + 4242));
  CallerIdentity seen_through_fake = *id;
  seen_through_fake.proc_root = fake.path();
  seen_through_fake.pidfd = nullptr;
  absl::Status status = StillSameProcess(seen_through_fake);
  EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("reused"));

  // And the same start time is, by definition, the same process.
  WriteFakeProc(fake, pid, FakeStat(pid, "original", 'S', id->start_time));
  EXPECT_TRUE(StillSameProcess(seen_through_fake).ok());
}

TEST(AttestationTest, CommWithSpacesAndParenthesesIsParsed) {
  TempDir fake;
  const pid_t pid = 4242;
  WriteFakeProc(fake, pid, FakeStat(pid, "evil) R 1 2 (x) y", 'S', 987654321), "5 6 7");
  AttestOptions options;
  options.proc_root = fake.path();
  absl::StatusOr<CallerIdentity> id = AttestCaller(pid, 1000, 1000, options);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->start_time, 987654321u);
  EXPECT_EQ(id->supplementary_groups, (std::vector<gid_t>{5, 6, 7}));

  absl::StatusOr<ProcStat> stat = ParseProcStat(FakeStat(pid, ") ) )", 'R', 42));
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->state, 'R');
  EXPECT_EQ(stat->start_time, 42u);
}

TEST(AttestationTest, MalformedStatIsAnErrorNotACrash) {
  for (const std::string& bad :
       {std::string(""), std::string("4242 no-parens S 1 2 3"), std::string("4242 (x) S 1 2 3\n"),
        std::string("4242 (x) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12x4 5\n"),
        std::string("4242 (x) S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 -12 5\n"),
        std::string("4242 (x) SS 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12 5\n"),
        std::string("4242 (x)"), std::string(") 4242 (x")}) {
    absl::StatusOr<ProcStat> stat = ParseProcStat(bad);
    EXPECT_FALSE(stat.ok()) << "accepted: " << bad;
  }
  TempDir fake;
  WriteFakeProc(fake, 4242, "4242 (x) S 1 2 3\n");
  AttestOptions options;
  options.proc_root = fake.path();
  absl::StatusOr<CallerIdentity> id = AttestCaller(4242, 1000, 1000, options);
  EXPECT_FALSE(id.ok());
  EXPECT_FALSE(absl::IsPermissionDenied(id.status())) << id.status();

  WriteFakeProc(fake, 4243, FakeStat(4243, "x", 'S', 1), "10 abc");
  id = AttestCaller(4243, 1000, 1000, options);
  EXPECT_FALSE(id.ok());
}

TEST(AttestationTest, MissingOrZombieProcessIsRefusedAsExited) {
  TempDir fake;
  AttestOptions options;
  options.proc_root = fake.path();
  absl::StatusOr<CallerIdentity> id = AttestCaller(4242, 1000, 1000, options);
  EXPECT_TRUE(absl::IsPermissionDenied(id.status())) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("exited"));

  WriteFakeProc(fake, 4242, FakeStat(4242, "zombie", 'Z', 5));
  id = AttestCaller(4242, 1000, 1000, options);
  EXPECT_TRUE(absl::IsPermissionDenied(id.status())) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("exited"));

  EXPECT_TRUE(absl::IsInvalidArgument(AttestCaller(0, 0, 0).status()));
}

}  // namespace
}  // namespace grantvault::policy
