// The daemon's in-process sandbox: process hardening, a seccomp allow-list
// and Landlock filesystem rules. Each part is a separate call so that the
// broker split (a front process and a broker process, DESIGN.md section 8)
// can give each process its own profile.
//
// Order of use (every call is for the process's main thread):
//   1. RefuseRoot(), before anything else.
//   2. HardenProcess(), as soon as the configuration is read.
//   3. RestrictFilesystem(), while the process is still single-threaded
//      (Landlock applies to the calling thread and the threads it creates
//      later, never to threads that already exist).
//   4. InstallSyscallFilter(), once start-up is finished: it applies to every
//      thread of the process (TSYNC) and cannot be undone.
// None of these is reversible, and none needs a capability.
#ifndef GRANTVAULT_SANDBOX_SANDBOX_H_
#define GRANTVAULT_SANDBOX_SANDBOX_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grantvault::sandbox {

// PermissionDenied when `uid` or `euid` is 0 and `allow_root` is false, with a
// message that says why and what to do instead. The ids are parameters so
// that the decision is testable; callers pass getuid() and geteuid().
absl::Status RefuseRoot(uid_t uid, uid_t euid, bool allow_root);

struct HardeningReport {
  // Effective, permitted, inheritable and ambient sets are empty.
  bool capabilities_dropped = false;
  // The bounding set is empty too (needs CAP_SETPCAP, i.e. only when started
  // with it; an unprivileged process keeps the bounding set it inherited,
  // which no_new_privs makes unusable).
  bool bounding_set_cleared = false;
};

// No core dumps (RLIMIT_CORE 0), not dumpable (no ptrace or /proc/<pid>/mem
// by other processes of the same uid), no_new_privs, and every capability
// dropped. An error only when one of these could not be put in place (the
// process must then not go on).
absl::StatusOr<HardeningReport> HardenProcess();

// What a process may do beyond the base set every process of grantvault
// needs (memory, threads, files, time, signals to itself, AF_UNIX sockets,
// epoll/eventfd/timerfd, pidfds). Anything not on the list kills the process
// (SCMP_ACT_KILL_PROCESS); ptrace, process_vm_*, mount, keyctl, bpf,
// perf_event_open, kexec_*, *_module, personality, userfaultfd, namespaces
// and clone flags that create them are never on it.
struct SyscallProfile {
  // socket(AF_INET/AF_INET6) and AF_NETLINK/NETLINK_ROUTE (getaddrinfo's
  // address-family check). AF_UNIX is always allowed; any other domain fails
  // with EAFNOSUPPORT.
  bool allow_inet_sockets = false;
  // bind, listen, accept, accept4.
  bool allow_listen = false;
  // execve, execveat, wait4, waitid, prctl(PR_SET_PDEATHSIG): starting and reaping a child.
  bool allow_exec = false;
  // The syscalls the ASan/LSan runtime makes (LSan's leak check at exit
  // ptraces the process's own threads from a clone() child and toggles
  // PR_SET_DUMPABLE). Set by DefaultSanitizerRuntime() in sanitizer builds
  // only.
  bool allow_sanitizer_runtime = false;
};

// True when this binary is built with AddressSanitizer.
bool BuiltWithSanitizers();

// The names of the syscalls `profile` allows (some with argument filters).
// For tests and for logging; InstallSyscallFilter uses the same list.
std::vector<std::string> AllowedSyscalls(const SyscallProfile& profile);

// Installs the filter on every thread of the process. Requires
// no_new_privs (HardenProcess).
absl::Status InstallSyscallFilter(const SyscallProfile& profile);

// The Landlock ABI version the kernel offers, 0 when it has none (or
// Landlock is disabled at boot).
int LandlockAbi();

struct FilesystemRules {
  // Read files and list directories beneath each path.
  std::vector<std::string> read_only;
  // Read, write, create, remove and rename beneath each path.
  std::vector<std::string> read_write;
};

struct FilesystemReport {
  int abi = 0;  // 0: Landlock not available, nothing enforced
  // Paths that did not exist (nor did their parent directory) and so got
  // no rule: access to them is denied.
  std::vector<std::string> skipped;
};

// Denies every filesystem access that `rules` do not grant, with the access
// rights of the ABI the kernel offers (execution is never granted). A path
// that does not exist yet is granted through its parent directory (a file
// the daemon creates later), unless that is the root directory; a file gets
// only the file rights of its rule.
// FailedPrecondition if the process has more than one thread. Returns abi 0,
// and changes nothing, where the kernel has no Landlock.
absl::StatusOr<FilesystemReport> RestrictFilesystem(const FilesystemRules& rules);

}  // namespace grantvault::sandbox

#endif  // GRANTVAULT_SANDBOX_SANDBOX_H_
