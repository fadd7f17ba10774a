// A PKCS#11 token reached through a module: loading, token selection by
// label, login, and a thread-safe pool of logged-in sessions.
#ifndef GRANTVAULT_HSM_TOKEN_H_
#define GRANTVAULT_HSM_TOKEN_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
#include "hsm/pkcs11.h"

namespace grantvault::hsm {

inline constexpr char kDefaultModulePath[] = "/usr/lib/softhsm/libsofthsm2.so";

// A loaded and initialised PKCS#11 module. One instance per module path per
// process (C_Initialize/C_Finalize are process-wide), shared by everyone who
// loads that path; finalised and unloaded when the last owner lets go.
// SoftHSM2 reads SOFTHSM2_CONF when the first owner loads it.
class Module {
 public:
  static absl::StatusOr<std::shared_ptr<Module>> Load(const std::string& path);
  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  CK_FUNCTION_LIST* functions() const { return fn_; }
  const std::string& path() const { return path_; }

  struct SlotToken {
    CK_SLOT_ID slot;
    std::string label;  // trailing blanks removed
    bool initialized;
  };
  // Every slot that has a token present.
  absl::StatusOr<std::vector<SlotToken>> ListTokens() const;
  // The slot of the initialised token labelled `label` (never chosen by slot
  // id or order). NotFound names the labels that were seen.
  absl::StatusOr<CK_SLOT_ID> FindToken(const std::string& label) const;

 private:
  Module(std::string path, CK_FUNCTION_LIST* fn) : path_(std::move(path)), fn_(fn) {}
  std::string path_;
  CK_FUNCTION_LIST* fn_;
};

struct TokenOptions {
  std::string module_path = kDefaultModulePath;
  std::string token_label;
  std::string pin_file;  // read with ReadSecretFile (mode 0600 or stricter)
  size_t max_sessions = 8;
  // How long Acquire() waits for a free session before Unavailable.
  absl::Duration acquire_timeout = absl::Seconds(5);
};

class Token;

// A logged-in read-write session borrowed from a Token's pool; it goes back to
// the pool when this object dies. Use from one thread at a time.
class Session {
 public:
  Session(Session&& other) noexcept;
  Session& operator=(Session&&) = delete;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  CK_SESSION_HANDLE handle() const { return handle_; }
  CK_FUNCTION_LIST* fn() const { return fn_; }
  // The session answered as closed or invalid: it is closed instead of
  // returned to the pool, and the pool opens a fresh one when needed.
  void MarkBroken() { broken_ = true; }

 private:
  friend class Token;
  Session(Token* token, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE handle)
      : token_(token), fn_(fn), handle_(handle) {}
  Token* token_;
  CK_FUNCTION_LIST* fn_;
  CK_SESSION_HANDLE handle_;
  bool broken_ = false;
};

// Thread-safe. Must outlive every Session it hands out.
class Token {
 public:
  // Loads the module, finds the token by label, reads the PIN file and logs
  // in. Errors name what is wrong: the module path, the label (and the labels
  // present), the PIN file, or a PIN the token refused.
  static absl::StatusOr<std::unique_ptr<Token>> Open(const TokenOptions& options);
  // As Open, with the PIN already in memory (first-start bootstrap).
  static absl::StatusOr<std::unique_ptr<Token>> OpenWithPin(const TokenOptions& options,
                                                            const SecretBytes& pin);
  ~Token();
  Token(const Token&) = delete;
  Token& operator=(const Token&) = delete;

  absl::StatusOr<Session> Acquire();

  const std::string& label() const { return label_; }
  CK_FUNCTION_LIST* functions() const { return module_->functions(); }
  CK_SLOT_ID slot() const { return slot_; }

 private:
  Token(std::shared_ptr<Module> module, CK_SLOT_ID slot, std::string label,
        const TokenOptions& options, SecretBytes pin)
      : module_(std::move(module)),
        slot_(slot),
        label_(std::move(label)),
        options_(options),
        pin_(std::move(pin)) {}
  // Opens a session and makes sure the application is logged in (a token
  // logs out when its last session closes, e.g. after every session broke).
  absl::StatusOr<CK_SESSION_HANDLE> OpenLoggedInSession();
  void Release(CK_SESSION_HANDLE handle, bool broken);
  friend class Session;

  std::shared_ptr<Module> module_;
  const CK_SLOT_ID slot_;
  const std::string label_;
  const TokenOptions options_;
  const SecretBytes pin_;  // kept to log in again after the token logged us out

  absl::Mutex mu_;
  std::vector<CK_SESSION_HANDLE> idle_ ABSL_GUARDED_BY(mu_);
  size_t open_sessions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grantvault::hsm

#endif  // GRANTVAULT_HSM_TOKEN_H_
