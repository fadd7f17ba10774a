// First-start set-up of an embedded SoftHSM2 token.
#ifndef GRANTVAULT_HSM_SOFTHSM_H_
#define GRANTVAULT_HSM_SOFTHSM_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/secret_bytes.h"

namespace grantvault::hsm {

// Creates `dir` (0700) with a SoftHSM2 configuration whose token directory is
// `dir`/tokens, unless it exists, and points SOFTHSM2_CONF at it for this
// process (SoftHSM reads it when the module is first initialised, so call this
// before loading the module). Returns the configuration file's path.
//
// Every path, in the file, in SOFTHSM2_CONF and returned, is absolute (`dir`
// is made absolute first), so that any tool started from any directory with
// SOFTHSM2_CONF=<that file> finds the token. A configuration written by
// grantvault whose token directory is not `dir`/tokens (a relative one from an
// earlier version, or a state directory that moved) is rewritten; one written
// by someone else is left as it is, unless its token directory is relative
// (FailedPrecondition).
absl::StatusOr<std::string> PrepareSoftHsm(const std::string& dir);

// Initialises a new token labelled `label` (≤ 32 bytes) on the module's free
// slot, and sets its user PIN, entirely through PKCS#11: no PIN ever appears
// on a command line. AlreadyExists if a token with that label exists.
absl::Status InitializeToken(const std::string& module_path, const std::string& label,
                             const SecretBytes& so_pin, const SecretBytes& user_pin);

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_SOFTHSM_H_
