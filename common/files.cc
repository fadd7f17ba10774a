#include "common/files.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/unique_fd.h"

namespace grantvault {
namespace {

constexpr size_t kMaxSecretFileSize = 4096;

std::string ErrnoText(int err) { return std::strerror(err); }

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status FsyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot fsync directory ", dir, ": ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SecretBytes> ReadSecretFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT)
      return absl::NotFoundError(absl::StrCat("secret file ", path, " does not exist"));
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open secret file ", path, ": ", ErrnoText(err)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("secret file ", path, " is not a regular file"));
  }
  // Only this process's user may have any access: a group that can read a
  // PIN holds the token, and a file another user owns is theirs to change.
  if (st.st_uid != ::geteuid()) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "secret file %s is owned by uid %d, not by this process's uid %d (mode %04o); run: "
        "chown %d %s",
        path, st.st_uid, ::geteuid(), st.st_mode & 07777, ::geteuid(), path));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "secret file %s is accessible to its group or other users (mode %04o); run: chmod 600 %s",
        path, st.st_mode & 07777, path));
  }
  if (st.st_size <= 0)
    return absl::InvalidArgumentError(absl::StrCat("secret file ", path, " is empty"));
  if (static_cast<size_t>(st.st_size) > kMaxSecretFileSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("secret file ", path, " is larger than ", kMaxSecretFileSize, " bytes"));
  }
  SecretBytes buffer = SecretBytes::Zeroed(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < buffer.size()) {
    ssize_t n = ::read(fd.get(), buffer.data() + got, buffer.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InternalError(
          absl::StrCat("cannot read secret file ", path, ": ", ErrnoText(errno)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  while (got > 0 && (buffer.data()[got - 1] == '\n' || buffer.data()[got - 1] == '\r')) --got;
  if (got == 0) return absl::InvalidArgumentError(absl::StrCat("secret file ", path, " is empty"));
  if (got == buffer.size()) return buffer;
  return SecretBytes::CopyOf(buffer.span().subspan(0, got));
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents, mode_t mode) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  ::unlink(tmp.c_str());
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
    if (fd.get() < 0) {
      return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ErrnoText(errno)));
    }
    if (::fchmod(fd.get(), mode) != 0) {
      return absl::InternalError(absl::StrCat("cannot chmod ", tmp, ": ", ErrnoText(errno)));
    }
    size_t done = 0;
    while (done < contents.size()) {
      ssize_t n = ::write(fd.get(), contents.data() + done, contents.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot write ", tmp, ": ", ErrnoText(err)));
      }
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot fsync ", tmp, ": ", ErrnoText(err)));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ErrnoText(err)));
  }
  return FsyncDirectory(DirName(path));
}

absl::Status RemoveSecretFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open secret file ", path, " to remove it: ", ErrnoText(errno)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("secret file ", path, " is not a regular file"));
  }
  const std::string zeros(4096, '\0');
  off_t done = 0;
  while (done < st.st_size) {
    const size_t chunk = static_cast<size_t>(std::min<off_t>(st.st_size - done, 4096));
    const ssize_t n = ::pwrite(fd.get(), zeros.data(), chunk, done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::InternalError(
          absl::StrCat("cannot overwrite secret file ", path, ": ", ErrnoText(errno)));
    }
    done += n;
  }
  if (::fsync(fd.get()) != 0) {
    return absl::InternalError(absl::StrCat("cannot fsync ", path, ": ", ErrnoText(errno)));
  }
  if (::unlink(path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ErrnoText(errno)));
  }
  return FsyncDirectory(DirName(path));
}

absl::Status EnsurePrivateDirectory(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create directory ", path, ": ", ErrnoText(errno)));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ErrnoText(errno)));
  }
  if (S_ISLNK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is a symbolic link; refusing to use it"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is owned by uid %d, not by this process's uid %d", path, st.st_uid, ::geteuid()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> AbsolutePath(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("an empty path cannot be made absolute");
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(path, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot make ", path, " absolute: ", error.message()));
  }
  std::string normal = absolute.lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  return normal;
}

}  // namespace grantvault
