#include "policy/attestation.h"

#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"
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
                   const std::string& groups = "10 20",
                   const std::string& uid_line = "1000\t1000\t1000\t1000",
                   const std::string& gid_line = "1000\t1000\t1000\t1000") {
  const std::string dir = root.Join(std::to_string(pid));
  ::mkdir(dir.c_str(), 0700);
  std::ofstream(dir + "/stat") << stat;
  std::ofstream(dir + "/status") << "Name:\tfake\nUid:\t" << uid_line << "\nGid:\t" << gid_line
                                 << "\nGroups:\t" << groups << "\nVmRSS:\t1 kB\n";
}

// Points <root>/<pid>/exe at `target`, as the kernel's magic link would.
void SetFakeExe(const TempDir& root, pid_t pid, const std::string& target) {
  const std::string link = root.Join(std::to_string(pid)) + "/exe";
  ::unlink(link.c_str());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0) << link;
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

TEST(AttestationTest, ExeIdentityAlwaysHashOnlyWhenAsked) {
  absl::StatusOr<CallerIdentity> id = AttestCaller(::getpid(), ::getuid(), ::getgid());
  ASSERT_TRUE(id.ok()) << id.status();
  // The path, device and inode are taken at attestation whatever the policy
  // needs: a policy reloaded later must judge the program that connected.
  ASSERT_TRUE(id->exe_path.has_value()) << id->exe_error;
  EXPECT_EQ(*id->exe_path, SelfExeTarget());
  struct stat st {};
  ASSERT_EQ(::stat(SelfExeTarget().c_str(), &st), 0);
  EXPECT_EQ(id->exe_device, st.st_dev);
  EXPECT_EQ(id->exe_inode, st.st_ino);
  EXPECT_FALSE(id->exe_sha256.has_value());
  // Hashed later, it is the attested file's hash.
  ASSERT_TRUE(HashAttestedExe(*id).ok());
  ASSERT_TRUE(id->exe_sha256.has_value());
  EXPECT_EQ(*id->exe_sha256, Sha256HexWithSodium(ReadFileOrDie(SelfExeTarget())));
  EXPECT_TRUE(StillSameExecutable(*id, ExecutableChecks{.path = true, .inode = true}).ok());
}

// A child of this test that waits until told, then executes /bin/sleep in
// place: same pid, same start time, same pidfd, another program.
class ExecingChild {
 public:
  ExecingChild() {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(fds[1]);
      char c;
      while (::read(fds[0], &c, 1) > 0) {
      }
      ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[0]);
    go_fd_ = fds[1];
  }
  ~ExecingChild() {
    if (go_fd_ >= 0) ::close(go_fd_);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  // Lets the child exec and waits (bounded) until its exe is /bin/sleep's.
  bool ExecAndWait(const std::string& before) {
    ::close(go_fd_);
    go_fd_ = -1;
    const std::string link = absl::StrCat("/proc/", pid_, "/exe");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      std::array<char, 4096> buf{};
      const ssize_t n = ::readlink(link.c_str(), buf.data(), buf.size() - 1);
      if (n > 0 && std::string(buf.data(), static_cast<std::size_t>(n)) != before) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
  int go_fd_ = -1;
};

TEST(AttestationTest, ProcessThatExecutesAnotherProgramIsRefused) {
  ExecingChild child;
  absl::StatusOr<CallerIdentity> id = AttestCaller(child.pid(), ::getuid(), ::getgid());
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(id->exe_path, SelfExeTarget());
  const ExecutableChecks both{.path = true, .inode = true};
  ASSERT_TRUE(StillSameCaller(*id, both).ok());

  ASSERT_TRUE(child.ExecAndWait(SelfExeTarget()));
  // pid, start time and pidfd survive the exec: the process check alone
  // cannot tell.
  EXPECT_TRUE(StillSameProcess(*id).ok());
  for (const ExecutableChecks& checks :
       {ExecutableChecks{.path = true}, ExecutableChecks{.inode = true}, both}) {
    absl::Status status = StillSameCaller(*id, checks);
    EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr("executed another program"));
  }
  // Nor can the hash be taken of the new program in the old one's name.
  absl::Status status = HashAttestedExe(*id);
  EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;
  EXPECT_FALSE(id->exe_sha256.has_value());
  // A rule that names no executable does not pay for the check.
  EXPECT_TRUE(StillSameCaller(*id, ExecutableChecks{}).ok());
}

TEST(AttestationTest, ExecutablePathOrInodeChangeIsRefusedThroughFakeProc) {
  TempDir fake;
  TempDir bins;
  const pid_t pid = 4242;
  WriteFakeProc(fake, pid, FakeStat(pid, "agent", 'S', 777));
  const std::string a = bins.Join("agent-a");
  const std::string b = bins.Join("agent-b");
  std::ofstream(a) << "program A";
  std::ofstream(b) << "program B";
  SetFakeExe(fake, pid, a);
  AttestOptions options;
  options.proc_root = fake.path();
  options.hash_exe = true;
  absl::StatusOr<CallerIdentity> id = AttestCaller(pid, 1000, 1000, options);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->exe_path, a);
  EXPECT_EQ(id->exe_sha256, Sha256HexWithSodium("program A"));
  const ExecutableChecks path{.path = true};
  const ExecutableChecks inode{.inode = true};
  EXPECT_TRUE(StillSameExecutable(*id, ExecutableChecks{.path = true, .inode = true}).ok());

  // The same file under another name (a hard link): same device and inode,
  // another path. Refused only where the rule matches paths.
  const std::string a_link = bins.Join("agent-a-link");
  ASSERT_EQ(::link(a.c_str(), a_link.c_str()), 0);
  SetFakeExe(fake, pid, a_link);
  EXPECT_TRUE(StillSameExecutable(*id, inode).ok());
  absl::Status status = StillSameExecutable(*id, path);
  EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr(a_link));

  // Another file at the attested path (replaced on disk, then executed):
  // whatever is at the path is what a path rule allows; a hash rule is not.
  ASSERT_EQ(::rename(b.c_str(), a.c_str()), 0);
  SetFakeExe(fake, pid, a);
  EXPECT_TRUE(StillSameExecutable(*id, path).ok());
  status = StillSameExecutable(*id, inode);
  EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;

  // Another file at another path: refused by both.
  const std::string c = bins.Join("agent-c");
  std::ofstream(c) << "program C";
  SetFakeExe(fake, pid, c);
  for (const ExecutableChecks& checks : {path, inode}) {
    status = StillSameExecutable(*id, checks);
    EXPECT_TRUE(absl::IsUnauthenticated(status)) << status;
  }
  // A rule that names no executable checks nothing.
  EXPECT_TRUE(StillSameExecutable(*id, ExecutableChecks{}).ok());
  // The process gone: exited, not "another program".
  ASSERT_EQ(::unlink((fake.Join(std::to_string(pid)) + "/exe").c_str()), 0);
  for (const ExecutableChecks& checks : {path, inode}) {
    status = StillSameExecutable(*id, checks);
    EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  }
}

TEST(AttestationTest, UnreadableExecutableIsRecordedNotFatal) {
  TempDir fake;
  const pid_t pid = 4242;
  WriteFakeProc(fake, pid, FakeStat(pid, "agent", 'S', 777));  // no exe link
  AttestOptions options;
  options.proc_root = fake.path();
  options.resolve_exe_path = true;
  options.hash_exe = true;
  absl::StatusOr<CallerIdentity> id = AttestCaller(pid, 1000, 1000, options);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_FALSE(id->exe_path.has_value());
  EXPECT_FALSE(id->exe_sha256.has_value());
  EXPECT_THAT(id->exe_error, HasSubstr("executable"));
  // Nothing to re-check (it matched no executable rule), nothing to hash.
  EXPECT_TRUE(StillSameExecutable(*id, ExecutableChecks{.path = true, .inode = true}).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(HashAttestedExe(*id)));
}

TEST(AttestationTest, ProcUidAndGidMustEqualThePeerCredentials) {
  TempDir fake;
  AttestOptions options;
  options.proc_root = fake.path();
  struct Case {
    std::string uid_line;
    std::string gid_line;
    bool ok;
  };
  const Case cases[] = {
      {"1000\t1000\t1000\t1000", "1000\t1000\t1000\t1000", true},
      // Saved and filesystem ids are not compared.
      {"1000\t1000\t0\t0", "1000\t1000\t0\t0", true},
      {"0\t1000\t0\t1000", "1000\t1000\t1000\t1000", false},     // real uid differs
      {"1000\t0\t0\t0", "1000\t1000\t1000\t1000", false},        // effective uid differs
      {"1000\t1000\t1000\t1000", "0\t1000\t1000\t1000", false},  // real gid differs
      {"1000\t1000\t1000\t1000", "1000\t5\t1000\t1000", false},  // effective gid differs
  };
  pid_t pid = 5000;
  for (const Case& c : cases) {
    ++pid;
    WriteFakeProc(fake, pid, FakeStat(pid, "x", 'S', 9), "10", c.uid_line, c.gid_line);
    absl::StatusOr<CallerIdentity> id = AttestCaller(pid, 1000, 1000, options);
    EXPECT_EQ(id.ok(), c.ok) << c.uid_line << " / " << c.gid_line << ": " << id.status();
    if (!c.ok) {
      EXPECT_TRUE(absl::IsPermissionDenied(id.status())) << id.status();
      EXPECT_THAT(id.status().message(), HasSubstr("differ from the socket's peer credentials"));
    }
  }
  // Malformed or missing lines are errors, never a pass.
  for (const std::string& status :
       {std::string("Uid:\t1000\t1000\t1000\t1000\n"), std::string("Gid:\t1\t1\t1\t1\n"),
        std::string("Uid:\t1000\t1000\nGid:\t1\t1\t1\t1\n"),
        std::string("Uid:\tx\t1000\t1000\t1000\nGid:\t1\t1\t1\t1\n")}) {
    EXPECT_FALSE(ParseProcCredentials(status).ok()) << status;
  }
  absl::StatusOr<ProcCredentials> parsed =
      ParseProcCredentials("Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->real_uid, 1u);
  EXPECT_EQ(parsed->effective_uid, 2u);
  EXPECT_EQ(parsed->real_gid, 5u);
  EXPECT_EQ(parsed->effective_gid, 6u);
}

// With real processes and real sockets (root only: changing uids needs it).
// A process that connects and then changes its uid, and one whose real and
// effective uids differ when it connects, are both not the caller that
// SO_PEERCRED names.
TEST(AttestationTest, RealPeerWhoseCredentialsDifferFromSoPeercredIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to change uids";
  TempDir dir;
  const std::string path = dir.Join("s");
  for (bool change_after_connect : {true, false}) {
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listener.valid());
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ::unlink(path.c_str());
    ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listener.get(), 4), 0);
    // Reachable for the child whose effective uid is 65534.
    ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
    ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t child = ::fork();
    if (child == 0) {
      ::close(ready[0]);
      // Before connecting: real uid 0, effective uid 65534.
      if (!change_after_connect && ::setresuid(0, 65534, 0) != 0) ::_exit(2);
      const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
      if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) ::_exit(3);
      // After connecting as root: every uid 65534.
      if (change_after_connect && ::setresuid(65534, 65534, 65534) != 0) ::_exit(4);
      if (::write(ready[1], "x", 1) != 1) ::_exit(5);
      ::sleep(30);  // killed long before, unless the test failed
      ::_exit(0);
    }
    ::close(ready[1]);
    // The child says it is ready only after connecting; if it fails, its
    // pipe end closes and the read ends: never a blocking accept.
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1) << "the child could not connect";
    ::close(ready[0]);
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn.valid());
    ucred cred{};
    socklen_t len = sizeof(cred);
    ASSERT_EQ(::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
    EXPECT_EQ(cred.pid, child);
    EXPECT_EQ(cred.uid, change_after_connect ? 0u : 65534u);
    absl::StatusOr<CallerIdentity> id = AttestCaller(cred.pid, cred.uid, cred.gid);
    EXPECT_TRUE(absl::IsPermissionDenied(id.status())) << change_after_connect << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr("differ from the socket's peer credentials"));
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
  }
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
