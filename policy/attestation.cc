#include "policy/attestation.h"

#include <fcntl.h>
#include <grp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/strings.h"
#include "common/unique_fd.h"

namespace grantvault::policy {
namespace {

constexpr std::size_t kMaxProcFileBytes = 64 * 1024;

std::string ProcPath(const std::string& root, pid_t pid, std::string_view leaf) {
  return absl::StrCat(root, "/", pid, "/", Sv(leaf));
}

std::string Exited(pid_t pid) { return absl::StrCat("the calling process (pid ", pid, ") exited"); }

// Reads a small /proc file, `leaf` under the process directory `dir`.
// NotFound (ENOENT/ESRCH) means the process is gone.
absl::StatusOr<std::string> ReadProcFile(int dir, const std::string& path, const char* leaf) {
  UniqueFd fd(::openat(dir, leaf, O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::NotFoundError(path);
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  std::string out;
  std::array<char, 4096> buf;
  while (out.size() < kMaxProcFileBytes) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      if (err == ESRCH) return absl::NotFoundError(path);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    if (n == 0) return out;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  return absl::DataLossError(absl::StrCat(path, " is larger than expected"));
}

// Reads the process's stat; PermissionDenied "exited" when it is gone or a
// zombie (a zombie has exited; only its parent has not reaped it yet).
absl::StatusOr<ProcStat> ReadLiveStat(int dir, const std::string& root, pid_t pid) {
  const std::string path = ProcPath(root, pid, "stat");
  absl::StatusOr<std::string> contents = ReadProcFile(dir, path, "stat");
  if (absl::IsNotFound(contents.status())) return absl::PermissionDeniedError(Exited(pid));
  if (!contents.ok()) return contents.status();
  absl::StatusOr<ProcStat> stat = ParseProcStat(*contents);
  if (!stat.ok()) return absl::DataLossError(absl::StrCat(path, ": ", stat.status().message()));
  if (stat->state == 'Z' || stat->state == 'X' || stat->state == 'x') {
    return absl::PermissionDeniedError(Exited(pid));
  }
  return stat;
}

absl::StatusOr<std::vector<gid_t>> ParseSupplementaryGroups(const std::string& contents,
                                                            const std::string& path) {
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    if (!absl::ConsumePrefix(&line, "Groups:")) continue;
    std::vector<gid_t> groups;
    for (absl::string_view field :
         absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
      std::uint32_t gid = 0;
      if (!absl::SimpleAtoi(field, &gid)) {
        return absl::DataLossError(absl::StrCat(path, ": malformed Groups: line"));
      }
      groups.push_back(static_cast<gid_t>(gid));
    }
    return groups;
  }
  return absl::DataLossError(absl::StrCat(path, " has no Groups: line"));
}

// The first two numbers of the status line `key` ("Uid:" / "Gid:"): real and
// effective.
absl::Status ParseIdPair(std::string_view contents, std::string_view key, std::uint32_t* real,
                         std::uint32_t* effective) {
  for (absl::string_view line : absl::StrSplit(Sv(contents), '\n')) {
    if (!absl::ConsumePrefix(&line, Sv(key))) continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 4 || !absl::SimpleAtoi(fields[0], real) ||
        !absl::SimpleAtoi(fields[1], effective)) {
      return absl::DataLossError(absl::StrCat("malformed ", Sv(key), " line"));
    }
    return absl::OkStatus();
  }
  return absl::DataLossError(absl::StrCat("no ", Sv(key), " line"));
}

std::string UserName(uid_t uid) {
  std::array<char, 4096> buf;
  passwd pw{};
  passwd* result = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &result) != 0 || result == nullptr) return {};
  return pw.pw_name;
}

std::string GroupName(gid_t gid) {
  std::array<char, 16384> buf;
  group gr{};
  group* result = nullptr;
  if (::getgrgid_r(gid, &gr, buf.data(), buf.size(), &result) != 0 || result == nullptr) return {};
  return gr.gr_name;
}

// readlinkat(dir, "exe"): the executable's path, or the errno.
absl::StatusOr<std::string> ReadExeLink(int dir, int* err) {
  std::array<char, 4097> buf;
  const ssize_t n = ::readlinkat(dir, "exe", buf.data(), buf.size());
  if (n < 0) {
    *err = errno;
    return absl::UnknownError(std::strerror(*err));
  }
  if (static_cast<std::size_t>(n) >= buf.size()) {
    *err = ENAMETOOLONG;
    return absl::UnknownError("the executable's path is too long");
  }
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

// Records the executable's path, device and inode in `id`, or why they could
// not be read in id.exe_error. The inode is read before and after the path so
// that an exec in between is noticed rather than mixing two programs.
void ReadExeIdentity(int dir, CallerIdentity& id) {
  struct stat before {};
  struct stat after {};
  int err = 0;
  if (::fstatat(dir, "exe", &before, 0) != 0) {
    id.exe_error =
        absl::StrCat("cannot inspect the executable of pid ", id.pid, ": ", std::strerror(errno));
    return;
  }
  absl::StatusOr<std::string> path = ReadExeLink(dir, &err);
  if (!path.ok()) {
    id.exe_error =
        absl::StrCat("cannot read the executable of pid ", id.pid, ": ", path.status().message());
    return;
  }
  if (::fstatat(dir, "exe", &after, 0) != 0 || after.st_dev != before.st_dev ||
      after.st_ino != before.st_ino) {
    id.exe_error = absl::StrCat("the executable of pid ", id.pid, " changed while it was read");
    return;
  }
  id.exe_path = *std::move(path);
  id.exe_device = before.st_dev;
  id.exe_inode = before.st_ino;
}

std::string ExecutedAnother(const CallerIdentity& identity, std::string_view what) {
  return absl::StrCat("the calling process (pid ", identity.pid,
                      ") executed another program since it connected (", Sv(what), "; attested as ",
                      identity.exe_path.value_or("?"), "); reconnect to be attested again");
}

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

absl::StatusOr<std::string> Sha256Hex(int fd, const std::string& what) {
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("EVP_DigestInit_ex(sha256) failed");
  }
  std::array<unsigned char, 65536> buf;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot read ", what, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n)) != 1) {
      return absl::InternalError("EVP_DigestUpdate failed");
    }
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest;
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest.data(), &len) != 1) {
    return absl::InternalError("EVP_DigestFinal_ex failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0xf]);
  }
  return hex;
}

int ProcDirOf(const CallerIdentity& identity) {
  return identity.proc_dir != nullptr && identity.proc_dir->valid() ? identity.proc_dir->get() : -1;
}

}  // namespace

absl::StatusOr<ProcStat> ParseProcStat(std::string_view contents) {
  const std::size_t close = contents.rfind(')');
  if (close == std::string_view::npos || contents.find('(') == std::string_view::npos ||
      contents.find('(') > close) {
    return absl::DataLossError("stat has no (comm) field");
  }
  // Fields after the comm: index 0 is field 3 (state), so field 22 is index 19.
  std::vector<absl::string_view> fields =
      absl::StrSplit(Sv(contents.substr(close + 1)), absl::ByAnyChar(" \n"), absl::SkipEmpty());
  constexpr std::size_t kStartTimeIndex = 22 - 3;
  if (fields.size() <= kStartTimeIndex) return absl::DataLossError("stat has too few fields");
  if (fields[0].size() != 1) return absl::DataLossError("stat has a malformed state field");
  ProcStat stat;
  stat.state = fields[0][0];
  for (char c : fields[kStartTimeIndex]) {
    if (c < '0' || c > '9') return absl::DataLossError("stat has a malformed start time");
  }
  if (!absl::SimpleAtoi(fields[kStartTimeIndex], &stat.start_time)) {
    return absl::DataLossError("stat has a malformed start time");
  }
  return stat;
}

absl::StatusOr<ProcCredentials> ParseProcCredentials(std::string_view status_contents) {
  ProcCredentials creds;
  std::uint32_t real = 0;
  std::uint32_t effective = 0;
  GV_RETURN_IF_ERROR(ParseIdPair(status_contents, "Uid:", &real, &effective));
  creds.real_uid = static_cast<uid_t>(real);
  creds.effective_uid = static_cast<uid_t>(effective);
  GV_RETURN_IF_ERROR(ParseIdPair(status_contents, "Gid:", &real, &effective));
  creds.real_gid = static_cast<gid_t>(real);
  creds.effective_gid = static_cast<gid_t>(effective);
  return creds;
}

absl::Status CheckPeerCredentials(pid_t pid, const ProcCredentials& proc, uid_t peer_uid,
                                  gid_t peer_gid) {
  if (proc.real_uid == peer_uid && proc.effective_uid == peer_uid && proc.real_gid == peer_gid &&
      proc.effective_gid == peer_gid) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("the credentials of the calling process (pid ", pid, ": uid ", proc.real_uid,
                   "/", proc.effective_uid, ", gid ", proc.real_gid, "/", proc.effective_gid,
                   " real/effective) differ from the socket's peer credentials (uid ", peer_uid,
                   ", gid ", peer_gid, ")"));
}

absl::StatusOr<CallerIdentity> AttestCaller(pid_t pid, uid_t uid, gid_t gid,
                                            const AttestOptions& options) {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("invalid peer pid ", pid));
  CallerIdentity id;
  id.pid = pid;
  id.uid = uid;
  id.gid = gid;
  id.proc_root = options.proc_root;
  const std::string dir_path = absl::StrCat(id.proc_root, "/", pid);
  UniqueFd dir(::open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(pid));
    return absl::InternalError(absl::StrCat("cannot open ", dir_path, ": ", std::strerror(err)));
  }
  GV_ASSIGN_OR_RETURN(ProcStat stat, ReadLiveStat(dir.get(), id.proc_root, pid));
  id.start_time = stat.start_time;
  {
    const std::string path = ProcPath(id.proc_root, pid, "status");
    absl::StatusOr<std::string> status = ReadProcFile(dir.get(), path, "status");
    if (absl::IsNotFound(status.status())) return absl::PermissionDeniedError(Exited(pid));
    if (!status.ok()) return status.status();
    absl::StatusOr<ProcCredentials> creds = ParseProcCredentials(*status);
    if (!creds.ok()) {
      return absl::DataLossError(absl::StrCat(path, ": ", creds.status().message()));
    }
    GV_RETURN_IF_ERROR(CheckPeerCredentials(pid, *creds, uid, gid));
    GV_ASSIGN_OR_RETURN(id.supplementary_groups, ParseSupplementaryGroups(*status, path));
  }
  ReadExeIdentity(dir.get(), id);
  id.proc_dir = std::make_shared<const UniqueFd>(std::move(dir));
  if (options.hash_exe && id.exe_path.has_value()) GV_RETURN_IF_ERROR(HashAttestedExe(id));
  if (id.proc_root == "/proc") {
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd >= 0) id.pidfd = std::make_shared<const UniqueFd>(fd);
  }
  // The pidfd was opened by pid number: it names the attested process only
  // if that pid still has the attested start time after it was opened.
  GV_RETURN_IF_ERROR(StillSameProcessByProc(id));
  id.user_name = UserName(uid);
  id.group_name = GroupName(gid);
  for (gid_t g : id.supplementary_groups) {
    std::string name = GroupName(g);
    if (!name.empty()) id.supplementary_group_names.push_back(std::move(name));
  }
  return id;
}

absl::Status StillSameProcess(const CallerIdentity& identity) {
  if (identity.pidfd != nullptr && identity.pidfd->valid()) {
    // A pidfd becomes readable when its process exits (a zombie included).
    pollfd p{identity.pidfd->get(), POLLIN, 0};
    const int ready = ::poll(&p, 1, 0);
    if (ready < 0) {
      return absl::InternalError(
          absl::StrCat("poll on the caller's pidfd: ", std::strerror(errno)));
    }
    if (ready > 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("the calling process (pid ", identity.pid, ") exited"));
    }
    return absl::OkStatus();
  }
  return StillSameProcessByProc(identity);
}

absl::Status StillSameProcessByProc(const CallerIdentity& identity) {
  const std::string dir_path = absl::StrCat(identity.proc_root, "/", identity.pid);
  UniqueFd dir(::open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(identity.pid));
    return absl::InternalError(absl::StrCat("cannot open ", dir_path, ": ", std::strerror(err)));
  }
  GV_ASSIGN_OR_RETURN(ProcStat stat, ReadLiveStat(dir.get(), identity.proc_root, identity.pid));
  if (stat.start_time != identity.start_time) {
    return absl::PermissionDeniedError(
        absl::StrCat("the calling process (pid ", identity.pid,
                     ") is gone and its PID was reused by another process"));
  }
  return absl::OkStatus();
}

absl::Status StillSameExecutable(const CallerIdentity& identity, const ExecutableChecks& checks) {
  if (!identity.exe_path.has_value() || (!checks.path && !checks.inode)) return absl::OkStatus();
  const int dir = ProcDirOf(identity);
  if (dir < 0) {
    return absl::InternalError(absl::StrCat("the identity of pid ", identity.pid,
                                            " holds no /proc directory to re-check"));
  }
  if (checks.inode) {
    struct stat now {};
    if (::fstatat(dir, "exe", &now, 0) != 0) {
      const int err = errno;
      if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(identity.pid));
      return absl::PermissionDeniedError(absl::StrCat("cannot re-check the executable of pid ",
                                                      identity.pid, ": ", std::strerror(err)));
    }
    if (now.st_dev != identity.exe_device || now.st_ino != identity.exe_inode) {
      return absl::UnauthenticatedError(ExecutedAnother(identity, "another device and inode"));
    }
  }
  if (checks.path) {
    int err = 0;
    absl::StatusOr<std::string> path = ReadExeLink(dir, &err);
    if (!path.ok()) {
      if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(identity.pid));
      return absl::PermissionDeniedError(absl::StrCat("cannot re-check the executable of pid ",
                                                      identity.pid, ": ", path.status().message()));
    }
    if (*path != *identity.exe_path) {
      return absl::UnauthenticatedError(
          ExecutedAnother(identity, absl::StrCat("the executable is now ", *path)));
    }
  }
  return absl::OkStatus();
}

absl::Status StillSameCaller(const CallerIdentity& identity, const ExecutableChecks& checks) {
  GV_RETURN_IF_ERROR(StillSameProcess(identity));
  return StillSameExecutable(identity, checks);
}

absl::Status HashAttestedExe(CallerIdentity& identity) {
  if (identity.exe_sha256.has_value()) return absl::OkStatus();
  if (!identity.exe_path.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("the executable of pid ", identity.pid,
                                                      " was not attested: ", identity.exe_error));
  }
  const int dir = ProcDirOf(identity);
  if (dir < 0) {
    return absl::InternalError(
        absl::StrCat("the identity of pid ", identity.pid, " holds no /proc directory"));
  }
  UniqueFd fd(::openat(dir, "exe", O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(identity.pid));
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open the executable of pid ", identity.pid, ": ", std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return absl::InternalError(
        absl::StrCat("fstat on the executable of pid ", identity.pid, ": ", std::strerror(errno)));
  }
  if (st.st_dev != identity.exe_device || st.st_ino != identity.exe_inode) {
    return absl::UnauthenticatedError(ExecutedAnother(identity, "another device and inode"));
  }
  GV_ASSIGN_OR_RETURN(identity.exe_sha256,
                      Sha256Hex(fd.get(), ProcPath(identity.proc_root, identity.pid, "exe")));
  return absl::OkStatus();
}

}  // namespace grantvault::policy
