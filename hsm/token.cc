#include "hsm/token.h"

#include <p11-kit/p11-kit.h>
#include <sys/stat.h>

#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status.h"

namespace grantvault::hsm {
namespace {

std::string TrimBlankPadded(const unsigned char* field, size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  size_t end = s.find_last_not_of(' ');
  return end == std::string::npos ? std::string() : s.substr(0, end + 1);
}

// Module instances by path: PKCS#11 initialisation is process-wide, so every
// user of one path shares one initialised module.
std::mutex& RegistryMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
std::map<std::string, std::weak_ptr<Module>>& Registry() {
  static auto* registry = new std::map<std::string, std::weak_ptr<Module>>();
  return *registry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Module>> Module::Load(const std::string& path) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  if (auto existing = Registry()[path].lock()) return existing;

  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("PKCS#11 module ", path, " does not exist"));
  }
  CK_FUNCTION_LIST* fn = p11_kit_module_load(path.c_str(), P11_KIT_MODULE_UNMANAGED);
  if (fn == nullptr) {
    const char* why = p11_kit_message();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load PKCS#11 module ", path, ": ", why ? why : "unknown error"));
  }
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = fn->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    p11_kit_module_release(fn);
    return Pkcs11Error(absl::StrCat("C_Initialize of PKCS#11 module ", path), rv);
  }
  std::shared_ptr<Module> module(new Module(path, fn));
  Registry()[path] = module;
  return module;
}

Module::~Module() {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  fn_->C_Finalize(nullptr);
  p11_kit_module_release(fn_);
}

absl::StatusOr<std::vector<Module::SlotToken>> Module::ListTokens() const {
  CK_ULONG count = 0;
  CK_RV rv = fn_->C_GetSlotList(CK_TRUE, nullptr, &count);
  if (rv != CKR_OK) return Pkcs11Error("C_GetSlotList", rv);
  std::vector<CK_SLOT_ID> slots(count);
  rv = fn_->C_GetSlotList(CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) return Pkcs11Error("C_GetSlotList", rv);
  slots.resize(count);
  std::vector<SlotToken> tokens;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info;
    if (fn_->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    tokens.push_back(SlotToken{slot, TrimBlankPadded(info.label, sizeof(info.label)),
                               (info.flags & CKF_TOKEN_INITIALIZED) != 0});
  }
  return tokens;
}

absl::StatusOr<CK_SLOT_ID> Module::FindToken(const std::string& label) const {
  GV_ASSIGN_OR_RETURN(std::vector<SlotToken> tokens, ListTokens());
  std::vector<std::string> seen;
  for (const SlotToken& t : tokens) {
    if (!t.initialized) continue;
    if (t.label == label) return t.slot;
    seen.push_back(absl::StrCat("'", t.label, "'"));
  }
  return absl::NotFoundError(absl::StrCat(
      "no initialised token labelled '", label, "' in PKCS#11 module ", path_,
      seen.empty() ? " (it has no initialised token)"
                   : absl::StrCat(" (tokens present: ", absl::StrJoin(seen, ", "), ")")));
}

absl::StatusOr<std::unique_ptr<Token>> Token::Open(const TokenOptions& options) {
  // Load the module and find the token before reading the PIN, so that the
  // first error reported is the first thing wrong.
  GV_ASSIGN_OR_RETURN(std::shared_ptr<Module> module, Module::Load(options.module_path));
  GV_RETURN_IF_ERROR(module->FindToken(options.token_label).status());
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(options.pin_file);
  if (!pin.ok()) {
    return absl::Status(pin.status().code(),
                        absl::StrCat("HSM PIN file: ", pin.status().message()));
  }
  return OpenWithPin(options, *pin);
}

absl::StatusOr<std::unique_ptr<Token>> Token::OpenWithPin(const TokenOptions& options,
                                                          const SecretBytes& pin) {
  if (options.max_sessions == 0) return absl::InvalidArgumentError("max_sessions must be positive");
  GV_ASSIGN_OR_RETURN(std::shared_ptr<Module> module, Module::Load(options.module_path));
  GV_ASSIGN_OR_RETURN(CK_SLOT_ID slot, module->FindToken(options.token_label));
  std::unique_ptr<Token> token(
      new Token(std::move(module), slot, options.token_label, options, pin.Clone()));
  absl::StatusOr<CK_SESSION_HANDLE> first = token->OpenLoggedInSession();
  if (!first.ok()) {
    if (absl::IsUnauthenticated(first.status()) && !options.pin_file.empty()) {
      return absl::UnauthenticatedError(
          absl::StrCat(first.status().message(), " (PIN read from ", options.pin_file, ")"));
    }
    return first.status();
  }
  absl::MutexLock lock(&token->mu_);
  token->idle_.push_back(*first);
  token->open_sessions_ = 1;
  return token;
}

Token::~Token() {
  absl::MutexLock lock(&mu_);
  // Every Session must have been returned: closing all sessions also logs out.
  functions()->C_CloseAllSessions(slot_);
  idle_.clear();
  open_sessions_ = 0;
}

absl::StatusOr<CK_SESSION_HANDLE> Token::OpenLoggedInSession() {
  CK_FUNCTION_LIST* fn = functions();
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  CK_RV rv =
      fn->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &handle);
  if (rv != CKR_OK) return Pkcs11Error(absl::StrCat("open session on token '", label_, "'"), rv);
  CK_SESSION_INFO info;
  rv = fn->C_GetSessionInfo(handle, &info);
  if (rv == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS) return handle;
  rv = fn->C_Login(handle, CKU_USER, const_cast<CK_UTF8CHAR_PTR>(pin_.data()), pin_.size());
  if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) return handle;
  fn->C_CloseSession(handle);
  if (rv == CKR_PIN_INCORRECT) {
    return absl::UnauthenticatedError(
        absl::StrCat("token '", label_, "' refused the PIN (CKR_PIN_INCORRECT)"));
  }
  return Pkcs11Error(absl::StrCat("login to token '", label_, "'"), rv);
}

absl::StatusOr<Session> Token::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_sessions_ < options_.max_sessions;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&available), options_.acquire_timeout)) {
      return absl::UnavailableError(absl::StrCat("all ", options_.max_sessions,
                                                 " sessions of token '", label_, "' are busy"));
    }
    if (!idle_.empty()) {
      CK_SESSION_HANDLE h = idle_.back();
      idle_.pop_back();
      return Session(this, functions(), h);
    }
    ++open_sessions_;  // reserve the slot; opened outside the lock
  }
  absl::StatusOr<CK_SESSION_HANDLE> handle = OpenLoggedInSession();
  if (!handle.ok()) {
    absl::MutexLock lock(&mu_);
    --open_sessions_;
    return handle.status();
  }
  return Session(this, functions(), *handle);
}

void Token::Release(CK_SESSION_HANDLE handle, bool broken) {
  if (broken) functions()->C_CloseSession(handle);
  absl::MutexLock lock(&mu_);
  if (broken) {
    --open_sessions_;
  } else {
    idle_.push_back(handle);
  }
}

Session::Session(Session&& other) noexcept
    : token_(std::exchange(other.token_, nullptr)),
      fn_(other.fn_),
      handle_(std::exchange(other.handle_, CK_INVALID_HANDLE)),
      broken_(other.broken_) {}

Session::~Session() {
  if (token_ != nullptr) token_->Release(handle_, broken_);
}

}  // namespace grantvault::hsm
