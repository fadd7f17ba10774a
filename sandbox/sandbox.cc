#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/netlink.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grantvault::sandbox {
namespace {

std::string Errno(int err) { return std::strerror(err); }

// Access rights by the Landlock ABI that introduced them (the system's
// <linux/landlock.h> may predate some).
constexpr uint64_t kFsExecute = 1ULL << 0;
constexpr uint64_t kFsWriteFile = 1ULL << 1;
constexpr uint64_t kFsReadFile = 1ULL << 2;
constexpr uint64_t kFsReadDir = 1ULL << 3;
constexpr uint64_t kFsRemoveDir = 1ULL << 4;
constexpr uint64_t kFsRemoveFile = 1ULL << 5;
constexpr uint64_t kFsMakeChar = 1ULL << 6;
constexpr uint64_t kFsMakeDir = 1ULL << 7;
constexpr uint64_t kFsMakeReg = 1ULL << 8;
constexpr uint64_t kFsMakeSock = 1ULL << 9;
constexpr uint64_t kFsMakeFifo = 1ULL << 10;
constexpr uint64_t kFsMakeBlock = 1ULL << 11;
constexpr uint64_t kFsMakeSym = 1ULL << 12;
constexpr uint64_t kFsRefer = 1ULL << 13;     // ABI 2
constexpr uint64_t kFsTruncate = 1ULL << 14;  // ABI 3
constexpr uint64_t kFsIoctlDev = 1ULL << 15;  // ABI 5

uint64_t HandledFsAccess(int abi) {
  uint64_t handled = kFsExecute | kFsWriteFile | kFsReadFile | kFsReadDir | kFsRemoveDir |
                     kFsRemoveFile | kFsMakeChar | kFsMakeDir | kFsMakeReg | kFsMakeSock |
                     kFsMakeFifo | kFsMakeBlock | kFsMakeSym;
  if (abi >= 2) handled |= kFsRefer;
  if (abi >= 3) handled |= kFsTruncate;
  if (abi >= 5) handled |= kFsIoctlDev;
  return handled;
}

// The rights a rule on a file (not a directory) may carry.
constexpr uint64_t kFileRights =
    kFsExecute | kFsWriteFile | kFsReadFile | kFsTruncate | kFsIoctlDev;
constexpr uint64_t kReadOnly = kFsReadFile | kFsReadDir;
constexpr uint64_t kReadWrite = kFsReadFile | kFsReadDir | kFsWriteFile | kFsTruncate |
                                kFsRemoveDir | kFsRemoveFile | kFsMakeDir | kFsMakeReg |
                                kFsMakeSock | kFsRefer;

// Landlock's structures, as the kernel defines them (ABI 1 layouts, which
// later ABIs extend only by handled_access_net and scoped at the end).
struct RulesetAttr {
  uint64_t handled_access_fs;
};
struct __attribute__((packed)) PathBeneathAttr {
  uint64_t allowed_access;
  int32_t parent_fd;
};
constexpr int kRulePathBeneath = 1;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int ThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) {
      int n = 0;
      return absl::SimpleAtoi(line.substr(8), &n) ? n : -1;
    }
  }
  return -1;
}

std::string Parent(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Adds a path-beneath rule for `path` (or, if it does not exist, its parent
// directory). Returns false when neither exists.
absl::StatusOr<bool> AddPathRule(int ruleset, const std::string& path, uint64_t access,
                                 uint64_t handled) {
  std::string target = path;
  int fd = ::open(target.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    // Never widened to the root directory.
    target = Parent(path);
    if (target == "/") return false;
    fd = ::open(target.c_str(), O_PATH | O_CLOEXEC);
  }
  if (fd < 0) {
    if (errno == ENOENT) return false;
    return absl::PermissionDeniedError(
        absl::StrCat("landlock: cannot open ", target, ": ", Errno(errno)));
  }
  Fd owned(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("landlock: fstat ", target, ": ", Errno(errno)));
  }
  PathBeneathAttr rule{};
  rule.allowed_access = access & handled;
  if (!S_ISDIR(st.st_mode)) rule.allowed_access &= kFileRights;
  rule.parent_fd = fd;
  if (::syscall(SYS_landlock_add_rule, ruleset, kRulePathBeneath, &rule, 0) != 0) {
    return absl::InternalError(
        absl::StrCat("landlock: cannot add a rule for ", target, ": ", Errno(errno)));
  }
  return true;
}

// Syscalls every profile allows, unconditionally. Each is about the process
// itself: its memory, threads, descriptors, files (Landlock limits which),
// time, and waiting.
constexpr const char* kBase[] = {
    // Memory.
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "mlock2",
    "munlock",
    "membarrier",
    // Threads and synchronisation (clone is below, with its flags checked).
    "futex",
    "futex_waitv",
    "set_robust_list",
    "get_robust_list",
    "set_tid_address",
    "rseq",
    "sched_yield",
    "sched_getaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "getcpu",
    "exit",
    "exit_group",
    "restart_syscall",
    // Identity and limits of this process (prlimit64 only on itself, below).
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "getrlimit",
    "getrusage",
    "getpriority",
    "capget",
    "uname",
    "sysinfo",
    "times",
    "arch_prctl",
    // Files and descriptors.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "openat2",
    "close",
    "close_range",
    "lseek",
    "fstat",
    "stat",
    "lstat",
    "newfstatat",
    "statx",
    "fstatfs",
    "statfs",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "getdents",
    "getdents64",
    "fcntl",
    "flock",
    "fsync",
    "fdatasync",
    "ftruncate",
    "truncate",
    "fallocate",
    "fadvise64",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "link",
    "linkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchown",
    "umask",
    "getcwd",
    "chdir",
    "fchdir",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    // Event loops (Boost.Asio: epoll, eventfd, timerfd; poll elsewhere).
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    // Signals (to other processes only through a pidfd, for attestation's
    // liveness checks; kill/tgkill only to this process, below).
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "rt_sigpending",
    "rt_sigsuspend",
    "sigaltstack",
    "pidfd_open",
    "pidfd_send_signal",
    // Reaping this process's own children (the front its broker spawner).
    "wait4",
    "waitid",
    // Time and randomness.
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    "getrandom",
    // Unix sockets (and, with allow_inet_sockets, TCP): connections made,
    // data moved, peers named (SO_PEERCRED).
    "connect",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "shutdown",
};

constexpr const char* kListen[] = {"bind", "listen", "accept", "accept4"};
// Starting a program (the spawner starting a broker).
constexpr const char* kExec[] = {"execve", "execveat"};
// LSan's StopTheWorld: a clone() child (not a thread) ptraces every thread
// and is waited for; PR_SET_DUMPABLE/PR_SET_PTRACER are toggled around it.
constexpr const char* kSanitizer[] = {"ptrace"};

// prctl options a running process of grantvault uses: naming threads and
// reading its own state. PR_SET_DUMPABLE is not among them (the sanitizer
// runtime adds it).
constexpr int kPrctlOptions[] = {PR_SET_NAME,     PR_GET_NAME,         PR_GET_DUMPABLE,
                                 PR_GET_SECCOMP,  PR_GET_NO_NEW_PRIVS, PR_CAPBSET_READ,
                                 PR_GET_PDEATHSIG};
constexpr int kSanitizerPrctlOptions[] = {PR_SET_DUMPABLE, PR_SET_PTRACER, PR_SET_PDEATHSIG};

// clone() flags that create namespaces: never allowed.
constexpr uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                     CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;

struct FilterDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Filter = std::unique_ptr<void, FilterDeleter>;

absl::Status Check(int rc, std::string_view what) {
  if (rc == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("seccomp: ", std::string(what), ": ", Errno(-rc)));
}

absl::Status Allow(scmp_filter_ctx ctx, const char* name) {
  const int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return absl::OkStatus();  // not a syscall on this architecture
  return Check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), name);
}

}  // namespace

absl::Status RefuseRoot(uid_t uid, uid_t euid, bool allow_root) {
  if ((uid != 0 && euid != 0) || allow_root) return absl::OkStatus();
  return absl::PermissionDeniedError(
      "refusing to run as root: a compromise of the daemon would then be a compromise of the "
      "whole machine, and files it creates would belong to root. Run it as its own "
      "unprivileged user (the systemd unit uses User=grantvault), or pass --allow-root to run "
      "as root anyway (every capability is still dropped)");
}

absl::StatusOr<HardeningReport> HardenProcess() {
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return absl::InternalError(absl::StrCat("prctl(PR_SET_DUMPABLE, 0): ", Errno(errno)));
  }
  const struct rlimit no_core = {0, 0};
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) {
    return absl::InternalError(absl::StrCat("setrlimit(RLIMIT_CORE, 0): ", Errno(errno)));
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return absl::InternalError(absl::StrCat("prctl(PR_SET_NO_NEW_PRIVS, 1): ", Errno(errno)));
  }
  HardeningReport report;
  // The bounding set first: dropping from it needs CAP_SETPCAP, which the
  // capset below removes.
  report.bounding_set_cleared = true;
  for (int cap = 0; ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
    if (::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 &&
        ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      if (errno != EPERM) {
        return absl::InternalError(
            absl::StrCat("prctl(PR_CAPBSET_DROP, ", cap, "): ", Errno(errno)));
      }
      report.bounding_set_cleared = false;
    }
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
    return absl::InternalError(absl::StrCat("prctl(PR_CAP_AMBIENT_CLEAR_ALL): ", Errno(errno)));
  }
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  header.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capset, &header, data) != 0) {
    return absl::InternalError(absl::StrCat("capset (drop every capability): ", Errno(errno)));
  }
  report.capabilities_dropped = true;
  return report;
}

bool BuiltWithSanitizers() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

std::vector<std::string> AllowedSyscalls(const SyscallProfile& profile) {
  std::vector<std::string> names(std::begin(kBase), std::end(kBase));
  // With argument filters (see InstallSyscallFilter).
  for (const char* name : {"socket", "socketpair", "clone", "ioctl", "prctl", "kill", "tgkill",
                           "tkill", "prlimit64"}) {
    names.emplace_back(name);
  }
  if (profile.allow_listen) names.insert(names.end(), std::begin(kListen), std::end(kListen));
  if (profile.allow_exec) names.insert(names.end(), std::begin(kExec), std::end(kExec));
  if (profile.allow_sanitizer_runtime) {
    names.insert(names.end(), std::begin(kSanitizer), std::end(kSanitizer));
  }
  return names;
}

absl::Status InstallSyscallFilter(const SyscallProfile& profile) {
  Filter filter(seccomp_init(SCMP_ACT_KILL_PROCESS));
  if (filter == nullptr) return absl::InternalError("seccomp_init failed");
  scmp_filter_ctx ctx = filter.get();
  // Every thread, at once; a thread that cannot be synchronised fails the call.
  if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1); rc != 0) {
    return Check(rc, "TSYNC");
  }
  for (const char* name : kBase) {
    if (absl::Status s = Allow(ctx, name); !s.ok()) return s;
  }
  if (profile.allow_listen) {
    for (const char* name : kListen) {
      if (absl::Status s = Allow(ctx, name); !s.ok()) return s;
    }
  }
  if (profile.allow_exec) {
    for (const char* name : kExec) {
      if (absl::Status s = Allow(ctx, name); !s.ok()) return s;
    }
  }
  if (profile.allow_sanitizer_runtime) {
    for (const char* name : kSanitizer) {
      if (absl::Status s = Allow(ctx, name); !s.ok()) return s;
    }
  }
  auto add = [&](uint32_t action, int nr, std::string_view what,
                 std::initializer_list<scmp_arg_cmp> args) {
    return Check(
        seccomp_rule_add_array(ctx, action, nr, static_cast<unsigned>(args.size()), args.begin()),
        what);
  };
  const auto domain_is = [](int domain) {
    return SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(domain));
  };
  // socket(): AF_UNIX always; the Internet families (and the routing netlink
  // socket getaddrinfo opens) only when allowed; any other domain fails.
  GV_RETURN_IF_ERROR(
      add(SCMP_ACT_ALLOW, SCMP_SYS(socket), "socket(AF_UNIX)", {domain_is(AF_UNIX)}));
  GV_RETURN_IF_ERROR(
      add(SCMP_ACT_ALLOW, SCMP_SYS(socketpair), "socketpair(AF_UNIX)", {domain_is(AF_UNIX)}));
  if (profile.allow_inet_sockets) {
    GV_RETURN_IF_ERROR(
        add(SCMP_ACT_ALLOW, SCMP_SYS(socket), "socket(AF_INET)", {domain_is(AF_INET)}));
    GV_RETURN_IF_ERROR(
        add(SCMP_ACT_ALLOW, SCMP_SYS(socket), "socket(AF_INET6)", {domain_is(AF_INET6)}));
    GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(socket), "socket(AF_NETLINK)",
                           {domain_is(AF_NETLINK), SCMP_A2(SCMP_CMP_EQ, NETLINK_ROUTE)}));
  }
  for (int other : {AF_NETLINK, AF_PACKET, AF_INET, AF_INET6}) {
    if (other == AF_NETLINK && profile.allow_inet_sockets) continue;
    if ((other == AF_INET || other == AF_INET6) && profile.allow_inet_sockets) continue;
    GV_RETURN_IF_ERROR(add(SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), "socket(refused family)",
                           {domain_is(other)}));
  }
  // clone(): threads (and, for the sanitizer runtime, its tracer child), never
  // a new namespace. clone3 hides its flags in memory a filter cannot read:
  // it answers ENOSYS, and glibc falls back to clone.
  GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(clone), "clone",
                         {SCMP_A0(SCMP_CMP_MASKED_EQ, kNamespaceFlags, 0)}));
  GV_RETURN_IF_ERROR(add(SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), "clone3", {}));
  // ioctl(): the requests Boost.Asio (FIONBIO, FIONREAD), descriptor flags
  // and isatty() (TCGETS) make; no other (TIOCSTI, device ioctls).
  for (unsigned long request :
       std::initializer_list<unsigned long>{FIONBIO, FIONREAD, FIOCLEX, FIONCLEX, TCGETS}) {
    GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(ioctl), "ioctl",
                           {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, request)}));
  }
  // prctl(): the options listed above only.
  for (int option : kPrctlOptions) {
    GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(prctl), "prctl",
                           {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(option))}));
  }
  if (profile.allow_exec && !profile.allow_sanitizer_runtime) {
    // The child about to exec asks to die with its parent.
    GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(prctl), "prctl",
                           {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(PR_SET_PDEATHSIG))}));
  }
  if (profile.allow_sanitizer_runtime) {
    for (int option : kSanitizerPrctlOptions) {
      GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(prctl), "prctl",
                             {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(option))}));
    }
  }
  // Signals by pid only to this process (abort(), raise()); prlimit64 only on
  // itself.
  const auto self = static_cast<scmp_datum_t>(::getpid());
  GV_RETURN_IF_ERROR(
      add(SCMP_ACT_ALLOW, SCMP_SYS(kill), "kill(self)", {SCMP_A0(SCMP_CMP_EQ, self)}));
  GV_RETURN_IF_ERROR(
      add(SCMP_ACT_ALLOW, SCMP_SYS(tgkill), "tgkill(self)", {SCMP_A0(SCMP_CMP_EQ, self)}));
  GV_RETURN_IF_ERROR(add(SCMP_ACT_ALLOW, SCMP_SYS(tkill), "tkill", {}));
  GV_RETURN_IF_ERROR(
      add(SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), "prlimit64(self)", {SCMP_A0(SCMP_CMP_EQ, 0)}));
  return Check(seccomp_load(ctx), "load");
}

int LandlockAbi() {
  const long abi =
      ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return abi > 0 ? static_cast<int>(abi) : 0;
}

absl::StatusOr<FilesystemReport> RestrictFilesystem(const FilesystemRules& rules) {
  FilesystemReport report;
  report.abi = LandlockAbi();
  if (report.abi == 0) return report;
  if (const int threads = ThreadCount(); threads != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "landlock: the process has ", threads, " threads; rules must be set while it has one"));
  }
  const uint64_t handled = HandledFsAccess(report.abi);
  RulesetAttr attr{handled};
  const long ruleset = ::syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
  if (ruleset < 0) {
    return absl::InternalError(absl::StrCat("landlock_create_ruleset: ", Errno(errno)));
  }
  Fd owned(static_cast<int>(ruleset));
  for (const auto& [paths, access] :
       {std::pair{&rules.read_only, kReadOnly}, std::pair{&rules.read_write, kReadWrite}}) {
    for (const std::string& path : *paths) {
      absl::StatusOr<bool> added = AddPathRule(owned.get(), path, access, handled);
      if (!added.ok()) return added.status();
      if (!*added) report.skipped.push_back(path);
    }
  }
  if (::syscall(SYS_landlock_restrict_self, owned.get(), 0) != 0) {
    return absl::InternalError(absl::StrCat("landlock_restrict_self: ", Errno(errno)));
  }
  return report;
}

}  // namespace grantvault::sandbox
