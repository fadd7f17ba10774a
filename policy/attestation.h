// Caller attestation: who is on the other end of an accepted Unix socket.
//
// The uid and gid come from SO_PEERCRED, captured by the caller at accept time
// (the kernel vouches for them). Everything else is read from /proc/<pid>,
// through one directory fd opened on it (so every read describes the same
// process, whatever later happens to the pid number): the process start time
// (which, together with the pid, names one process for the life of the
// system), the real and effective uid/gid (which must equal SO_PEERCRED's),
// the supplementary groups, the executable's path, device and inode, and, only
// when a policy rule needs it, the executable's SHA-256.
//
// pid, start time and pidfd all survive execve(), so a process attested as
// binary A could exec binary B and keep the connection. Callers must therefore
// call StillSameCaller() after matching and before every answer that carries
// a token: it refuses a connection whose process has exited, whose pid now
// belongs to another process, or (when the matching rule names an executable)
// whose process now runs another executable than the one attested.
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

// What the policy matches executables by (Policy::RequiredAttestation). The
// executable's path, device and inode are collected whatever these say (a
// policy reloaded later may need them, and they must describe the program the
// process ran when it connected, not a later one).
struct AttestOptions {
  // Some rule matches the executable path. (The path is collected anyway;
  // Policy::RequiredAttestation reports it.)
  bool resolve_exe_path = false;
  // Some rule matches the executable's SHA-256: AttestCaller hashes it, read
  // through /proc/<pid>/exe (so a binary replaced or deleted on disk after
  // exec is still the one hashed).
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
  // The executable the process ran when attested. A path whose file was
  // deleted after exec ends in " (deleted)", as the kernel reports it. Unset
  // when /proc/<pid>/exe could not be read (another user's process that this
  // one may not inspect, a kernel thread): exe_error says why, and a rule that
  // matches executables then never matches (fail closed).
  std::optional<std::string> exe_path;
  dev_t exe_device = 0;
  ino_t exe_inode = 0;
  std::string exe_error;
  // Set when AttestOptions::hash_exe asked for it, or later by HashAttestedExe.
  std::optional<std::string> exe_sha256;  // 64 lowercase hex digits
  // The procfs root the identity was read from; StillSameProcess uses it.
  std::string proc_root = "/proc";
  // A pidfd (pidfd_open) on the attested process, opened and then confirmed
  // to name the process that started at start_time. It cannot be fooled by
  // PID reuse, so StillSameProcess only polls it (one syscall) instead of
  // re-reading /proc. Null when pidfd_open is unavailable or proc_root is not
  // "/proc" (tests), and then /proc is read.
  std::shared_ptr<const UniqueFd> pidfd;
  // /proc/<pid> itself, opened at attestation: lookups through it describe the
  // attested process or fail (ESRCH/ENOENT) once it is gone, never another
  // process that got its pid. StillSameExecutable looks up "exe" through it.
  std::shared_ptr<const UniqueFd> proc_dir;
};

// The identity's /proc "Uid:"/"Gid:" values (real, effective) against the
// socket's SO_PEERCRED uid/gid. Exposed for tests.
struct ProcCredentials {
  uid_t real_uid = 0;
  uid_t effective_uid = 0;
  gid_t real_gid = 0;
  gid_t effective_gid = 0;
};
// Parses the Uid: and Gid: lines of /proc/<pid>/status; DataLoss when either is
// missing or malformed.
absl::StatusOr<ProcCredentials> ParseProcCredentials(std::string_view status_contents);
// OK when the real and effective uid equal `peer_uid` and the real and
// effective gid equal `peer_gid`; PermissionDenied naming both sides
// otherwise. A mismatch means the process changed its credentials after
// connect() (setuid, a setuid executable) or is not the process that made the
// connection: it is not the caller SO_PEERCRED vouches for.
absl::Status CheckPeerCredentials(pid_t pid, const ProcCredentials& proc, uid_t peer_uid,
                                  gid_t peer_gid);

// Attests the process `pid` whose credentials SO_PEERCRED reported as
// uid/gid. PermissionDenied when the process has already exited (or is a
// zombie), changed identity while it was being read, or its /proc uid/gid
// differ from uid/gid (CheckPeerCredentials); Internal/DataLoss when /proc
// content is malformed. An unreadable executable is not an error (see
// CallerIdentity::exe_error), but one that cannot be hashed when
// options.hash_exe asks for it is.
absl::StatusOr<CallerIdentity> AttestCaller(pid_t pid, uid_t uid, gid_t gid,
                                            const AttestOptions& options = {});

// Re-reads the start time of identity.pid. OK if the same process is still
// running; PermissionDenied "... exited" when it is gone or a zombie;
// PermissionDenied "... PID was reused" when the pid now names a process with
// another start time.
absl::Status StillSameProcess(const CallerIdentity& identity);
// The same check by /proc alone (the start time re-read), whatever the pidfd.
absl::Status StillSameProcessByProc(const CallerIdentity& identity);

// What a release must re-check of the executable: what the policy rule that
// allowed it matches on. A rule that matches no executable needs nothing: the
// process could exec any unnamed program, reconnect and match it again.
struct ExecutableChecks {
  bool path = false;   // the rule has `exe`: whatever file is at that path
  bool inode = false;  // the rule has `exe_sha256`: the very file that was hashed
};

// Whether the process still runs the executable it was attested with: with
// `checks.path` its path (one readlinkat through proc_dir), with
// `checks.inode` its device and inode (one fstatat). OK when they match, or
// when the identity holds no executable (it then matched no executable rule).
// Unauthenticated "... executed another program since it connected" when they
// differ; PermissionDenied "... exited" when the process is gone.
absl::Status StillSameExecutable(const CallerIdentity& identity, const ExecutableChecks& checks);

// The check before a release: StillSameProcess, then StillSameExecutable with
// `checks`. Without checks it costs nothing beyond StillSameProcess.
absl::Status StillSameCaller(const CallerIdentity& identity, const ExecutableChecks& checks);

// Sets identity.exe_sha256 (if unset) to the SHA-256 of the executable the
// identity was attested with: the file is opened through proc_dir and must be
// that device and inode, else Unauthenticated (the process executed another
// program since). FailedPrecondition when the identity holds no executable.
// Reads the whole file: run it off the I/O threads.
absl::Status HashAttestedExe(CallerIdentity& identity);

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
