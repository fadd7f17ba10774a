// Custodian: the key operations an administrator asks for (key status, KEK
// rotation, rewrap, retirement, the audit public key) and the token's health,
// wherever the token is held. In the broker process it is LocalCustodian, on
// the token itself; in the front process it is a proxy to the broker
// (front/broker_calls.h), which never holds the PIN or a session.
#ifndef GRANTVAULT_KEYS_CUSTODIAN_H_
#define GRANTVAULT_KEYS_CUSTODIAN_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/sealer.h"
#include "hsm/token.h"
#include "keys/key_manager.h"
#include "store/grant_store.h"

namespace grantvault::keys {

struct AuditPublicKey {
  std::string label;
  std::string pem;
};

struct TokenHealth {
  std::string token_label;
  bool hsm_reachable = false;  // a session could be used just now
  std::string active_kek;      // label of the KEK new secrets are sealed under
};

// Thread-safe.
class Custodian {
 public:
  virtual ~Custodian() = default;
  // KeyManager::Status, Rotate (switching the sealer), Rewrap, Retire.
  virtual absl::StatusOr<std::vector<KeyStatus>> Status() = 0;
  virtual absl::StatusOr<store::KeyVersion> Rotate() = 0;
  virtual absl::StatusOr<RewrapResult> Rewrap(
      size_t batch_size, const std::function<void(const RewrapProgress&)>& progress) = 0;
  virtual absl::Status Retire(int version) = 0;
  // The audit signing key's public half; NotFound when there is none.
  virtual absl::StatusOr<AuditPublicKey> AuditKey() = 0;
  virtual TokenHealth Health() = 0;
};

// The custodian of a token opened in this process. Every pointer must outlive it.
std::unique_ptr<Custodian> MakeLocalCustodian(hsm::Token* token, KeyManager* keys,
                                              hsm::Sealer* sealer);

}  // namespace grantvault::keys

#endif  // GRANTVAULT_KEYS_CUSTODIAN_H_
