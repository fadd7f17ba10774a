#include "hsm/softhsm.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/status.h"
#include "hsm/token.h"

namespace grantvault::hsm {

namespace {

constexpr char kConfigHeader[] = "# SoftHSM2 token store of this grantvault state directory.\n";
constexpr char kTokenDirKey[] = "directories.tokendir";
constexpr size_t kMaxConfigBytes = 64 * 1024;

std::string ConfigText(const std::string& token_dir) {
  return absl::StrCat(kConfigHeader, kTokenDirKey, " = ", token_dir, "/\n",
                      "objectstore.backend = file\n", "log.level = ERROR\n",
                      "slots.removable = false\n", "slots.mechanisms = ALL\n",
                      "library.reset_on_fork = false\n");
}

// The value of `directories.tokendir` in a SoftHSM2 configuration ("" when
// the file names none).
std::string TokenDirOf(const std::string& config) {
  for (absl::string_view line : absl::StrSplit(config, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, kTokenDirKey)) continue;
    line = absl::StripLeadingAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, "=")) continue;
    return std::string(absl::StripAsciiWhitespace(line));
  }
  return "";
}

absl::StatusOr<std::string> ReadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("cannot read ", path));
  std::string text;
  text.resize(kMaxConfigBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigBytes) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is larger than 64 KiB"));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::string> PrepareSoftHsm(const std::string& dir_as_given) {
  GV_ASSIGN_OR_RETURN(const std::string dir, AbsolutePath(dir_as_given));
  GV_RETURN_IF_ERROR(EnsurePrivateDirectory(dir, 0700));
  const std::string tokens = absl::StrCat(dir, "/tokens");
  GV_RETURN_IF_ERROR(EnsurePrivateDirectory(tokens, 0700));
  const std::string conf = absl::StrCat(dir, "/softhsm2.conf");
  bool write = ::access(conf.c_str(), F_OK) != 0;
  if (!write) {
    GV_ASSIGN_OR_RETURN(const std::string existing, ReadConfig(conf));
    const std::string token_dir = TokenDirOf(existing);
    if (existing.starts_with(kConfigHeader)) {
      // Ours: earlier versions wrote the token directory as given (relative to
      // the daemon's working directory), and a state directory may have moved.
      write = token_dir != absl::StrCat(tokens, "/");
    } else if (!token_dir.starts_with("/")) {
      return absl::FailedPreconditionError(
          absl::StrCat(conf, ": ", kTokenDirKey,
                       " must be an absolute path (SoftHSM2 resolves a relative one "
                       "against the working directory of every process that loads it)"));
    }
  }
  if (write) GV_RETURN_IF_ERROR(WriteFileAtomically(conf, ConfigText(tokens), 0600));
  if (::setenv("SOFTHSM2_CONF", conf.c_str(), 1) != 0) {
    return absl::InternalError("cannot set SOFTHSM2_CONF");
  }
  return conf;
}

absl::Status InitializeToken(const std::string& module_path, const std::string& label,
                             const SecretBytes& so_pin, const SecretBytes& user_pin) {
  if (label.empty() || label.size() > 32) {
    return absl::InvalidArgumentError("a token label must be 1..32 bytes long");
  }
  GV_ASSIGN_OR_RETURN(std::shared_ptr<Module> module, Module::Load(module_path));
  GV_ASSIGN_OR_RETURN(std::vector<Module::SlotToken> tokens, module->ListTokens());
  const Module::SlotToken* free_slot = nullptr;
  for (const Module::SlotToken& t : tokens) {
    if (t.initialized && t.label == label) {
      return absl::AlreadyExistsError(absl::StrCat("a token labelled '", label, "' exists"));
    }
    if (!t.initialized && free_slot == nullptr) free_slot = &t;
  }
  if (free_slot == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("PKCS#11 module ", module_path, " has no uninitialised slot"));
  }
  CK_FUNCTION_LIST* fn = module->functions();
  CK_UTF8CHAR padded[32];
  std::memset(padded, ' ', sizeof(padded));
  std::memcpy(padded, label.data(), label.size());
  CK_RV rv = fn->C_InitToken(free_slot->slot, const_cast<CK_UTF8CHAR_PTR>(so_pin.data()),
                             so_pin.size(), padded);
  if (rv != CKR_OK) return Pkcs11Error(absl::StrCat("initialise token '", label, "'"), rv);

  // The token moves to a new slot id once initialised: find it by label.
  GV_ASSIGN_OR_RETURN(CK_SLOT_ID slot, module->FindToken(label));
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  rv = fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session);
  if (rv != CKR_OK) return Pkcs11Error("open session on the new token", rv);
  rv = fn->C_Login(session, CKU_SO, const_cast<CK_UTF8CHAR_PTR>(so_pin.data()), so_pin.size());
  if (rv == CKR_OK) {
    rv = fn->C_InitPIN(session, const_cast<CK_UTF8CHAR_PTR>(user_pin.data()), user_pin.size());
    fn->C_Logout(session);
  }
  fn->C_CloseSession(session);
  if (rv != CKR_OK) return Pkcs11Error(absl::StrCat("set the user PIN of token '", label, "'"), rv);
  return absl::OkStatus();
}

}  // namespace grantvault::hsm
