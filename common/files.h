// File-system helpers for state that must survive crashes and stay private.
#ifndef GRANTVAULT_COMMON_FILES_H_
#define GRANTVAULT_COMMON_FILES_H_

#include <sys/types.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace grantvault {

// Reads a secret (a PIN, a client secret) from a file of at most 4 KiB. One
// trailing newline is dropped. Refused, with the path (and, for the last two,
// the mode) in the message but never the content, when the file is missing,
// unreadable, a symlink, not a regular file, larger than the limit, empty, not
// owned by this process's effective uid, or has any group or other permission
// bit (0600 and 0400 pass).
absl::StatusOr<SecretBytes> ReadSecretFile(const std::string& path);

// Writes `contents` to `path` so that a crash leaves either the old file or the
// new one: a temporary file in the same directory created with `mode`,
// fsync()ed, renamed over `path`, and the directory fsync()ed.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents, mode_t mode);

// Removes a secret file for good, as far as a file system allows: its bytes
// are overwritten with zeros and fsync()ed, then it is unlinked and its
// directory fsync()ed. OK when the file does not exist. Refuses a symlink or
// anything but a regular file (with the path in the message).
absl::Status RemoveSecretFile(const std::string& path);

// Creates `path` (one level) with `mode` if it is missing. Either way, refuses
// a path that is a symlink, is not a directory, or is owned by another user.
absl::Status EnsurePrivateDirectory(const std::string& path, mode_t mode);

// `path` made absolute against the current working directory and lexically
// normalised ("./var/" -> "/home/me/var"), without resolving symlinks or
// requiring it to exist. Paths that end up in files other processes read (a
// SoftHSM2 configuration) must not depend on the working directory of the
// process that wrote them. InvalidArgument for an empty path.
absl::StatusOr<std::string> AbsolutePath(const std::string& path);

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_FILES_H_
