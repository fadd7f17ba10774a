#include "policy/attestation.h"

#include <fcntl.h>
#include <grp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pwd.h>
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

// Reads a small /proc file. NotFound (ENOENT/ESRCH) means the process is gone.
absl::StatusOr<std::string> ReadProcFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
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
absl::StatusOr<ProcStat> ReadLiveStat(const std::string& root, pid_t pid) {
  absl::StatusOr<std::string> contents = ReadProcFile(ProcPath(root, pid, "stat"));
  if (absl::IsNotFound(contents.status())) return absl::PermissionDeniedError(Exited(pid));
  if (!contents.ok()) return contents.status();
  absl::StatusOr<ProcStat> stat = ParseProcStat(*contents);
  if (!stat.ok()) {
    return absl::DataLossError(
        absl::StrCat(ProcPath(root, pid, "stat"), ": ", stat.status().message()));
  }
  if (stat->state == 'Z' || stat->state == 'X' || stat->state == 'x') {
    return absl::PermissionDeniedError(Exited(pid));
  }
  return stat;
}

absl::StatusOr<std::vector<gid_t>> ReadSupplementaryGroups(const std::string& root, pid_t pid) {
  const std::string path = ProcPath(root, pid, "status");
  absl::StatusOr<std::string> contents = ReadProcFile(path);
  if (absl::IsNotFound(contents.status())) return absl::PermissionDeniedError(Exited(pid));
  if (!contents.ok()) return contents.status();
  for (absl::string_view line : absl::StrSplit(*contents, '\n')) {
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

absl::StatusOr<std::string> ReadExePath(const std::string& root, pid_t pid) {
  const std::string path = ProcPath(root, pid, "exe");
  std::array<char, 4097> buf;
  const ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
  if (n < 0) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(pid));
    return absl::PermissionDeniedError(
        absl::StrCat("cannot read the executable of pid ", pid, ": ", std::strerror(err)));
  }
  if (static_cast<std::size_t>(n) >= buf.size()) {
    return absl::DataLossError(absl::StrCat(path, ": target too long"));
  }
  return std::string(buf.data(), static_cast<std::size_t>(n));
}

struct EvpMdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

absl::StatusOr<std::string> HashExe(const std::string& root, pid_t pid) {
  const std::string path = ProcPath(root, pid, "exe");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT || err == ESRCH) return absl::PermissionDeniedError(Exited(pid));
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open the executable of pid ", pid, ": ", std::strerror(err)));
  }
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("EVP_DigestInit_ex(sha256) failed");
  }
  std::array<unsigned char, 65536> buf;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
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

absl::StatusOr<CallerIdentity> AttestCaller(pid_t pid, uid_t uid, gid_t gid,
                                            const AttestOptions& options) {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("invalid peer pid ", pid));
  CallerIdentity id;
  id.pid = pid;
  id.uid = uid;
  id.gid = gid;
  id.proc_root = options.proc_root;
  GV_ASSIGN_OR_RETURN(ProcStat stat, ReadLiveStat(id.proc_root, pid));
  id.start_time = stat.start_time;
  GV_ASSIGN_OR_RETURN(id.supplementary_groups, ReadSupplementaryGroups(id.proc_root, pid));
  if (options.resolve_exe_path) {
    GV_ASSIGN_OR_RETURN(id.exe_path, ReadExePath(id.proc_root, pid));
  }
  if (options.hash_exe) {
    GV_ASSIGN_OR_RETURN(id.exe_sha256, HashExe(id.proc_root, pid));
  }
  if (id.proc_root == "/proc") {
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd >= 0) id.pidfd = std::make_shared<const UniqueFd>(fd);
  }
  // Everything above (and the pidfd) must describe the process that started
  // at start_time: read /proc once more, after all of it.
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
  GV_ASSIGN_OR_RETURN(ProcStat stat, ReadLiveStat(identity.proc_root, identity.pid));
  if (stat.start_time != identity.start_time) {
    return absl::PermissionDeniedError(
        absl::StrCat("the calling process (pid ", identity.pid,
                     ") is gone and its PID was reused by another process"));
  }
  return absl::OkStatus();
}

}  // namespace grantvault::policy
