// Caller attestation: who is on the other end of an accepted Unix socket.
//
// The uid and gid come from SO_PEERCRED, captured by the caller at accept time
// (the kernel vouches for them). Everything else is read from /proc/<pid>: the
// process start time (which, together with the pid, names one process for the
// life of the system), the supplementary groups, and, only when a policy rule
// needs them, the executable's path and SHA-256. Because a pid can be reused
// once its process has exited, callers must call StillSameProcess() after
// matching and before answering; it refuses a connection whose process has
// exited or whose pid now belongs to another process.
//
// Thread-safety: free functions with no shared state; safe from any thread.
#ifndef GRANTVAULT_POLICY_ATTESTATION_H_
#define GRANTVAULT_POLICY_ATTESTATION_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace grantvault::policy {

struct AttestOptions {
  // Resolve the executable path (readlink /proc/<pid>/exe).
  bool resolve_exe_path = false;
  // Hash the executable, read through /proc/<pid>/exe (so a binary replaced or
  // deleted on disk after exec is still the one hashed).
  bool hash_exe = false;
  // Where procfs is mounted. Tests point this at a fake tree.
  std::string proc_root = "/proc";
};

struct CallerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;  // from SO_PEERCRED
  gid_t gid = 0;  // from SO_PEERCRED
  // From the "Groups:" line of /proc/<pid>/status, in the kernel's order.
  std::vector<gid_t> supplementary_groups;
  // Names from the system's user and group databases; empty when unknown.
  std::string user_name;
  std::string group_name;
  std::vector<std::string> supplementary_group_names;  // unknown groups omitted
  // Field 22 of /proc/<pid>/stat: clock ticks after boot at which the process
  // started. (pid, start_time) identifies one process.
  std::uint64_t start_time = 0;
  // Set only when AttestOptions asked for them. A path whose file was deleted
  // after exec ends in " (deleted)", as the kernel reports it.
  std::optional<std::string> exe_path;
  std::optional<std::string> exe_sha256;  // 64 lowercase hex digits
  // The procfs root the identity was read from; StillSameProcess uses it.
  std::string proc_root = "/proc";
  // A pidfd (pidfd_open) on the attested process, opened and then confirmed
  // to name the process that started at start_time. It cannot be fooled by
  // PID reuse, so StillSameProcess only polls it (one syscall) instead of
  // re-reading /proc. Null when pidfd_open is unavailable or proc_root is not
  // "/proc" (tests), and then /proc is read.
  std::shared_ptr<const UniqueFd> pidfd;
};

// Attests the process `pid` whose credentials SO_PEERCRED reported as
// uid/gid. PermissionDenied when the process has already exited (or is a
// zombie) or changed identity while it was being read; Internal/DataLoss when
// /proc content is malformed.
absl::StatusOr<CallerIdentity> AttestCaller(pid_t pid, uid_t uid, gid_t gid,
                                            const AttestOptions& options = {});

// Re-reads the start time of identity.pid. OK if the same process is still
// running; PermissionDenied "... exited" when it is gone or a zombie;
// PermissionDenied "... PID was reused" when the pid now names a process with
// another start time.
absl::Status StillSameProcess(const CallerIdentity& identity);
// The same check by /proc alone (the start time re-read), whatever the pidfd.
absl::Status StillSameProcessByProc(const CallerIdentity& identity);

// Parses the contents of /proc/<pid>/stat. The comm field (2) is in
// parentheses and may itself contain spaces and ')', so fields are counted
// from the LAST ')'. Exposed for tests.
struct ProcStat {
  char state = '?';              // field 3
  std::uint64_t start_time = 0;  // field 22
};
absl::StatusOr<ProcStat> ParseProcStat(std::string_view contents);

}  // namespace grantvault::policy

#endif  // GRANTVAULT_POLICY_ATTESTATION_H_
