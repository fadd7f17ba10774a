// A fresh SoftHSM2 token in a temporary directory, for tests and benchmarks.
#ifndef GRANTVAULT_TESTS_TESTING_SOFTHSM_TOKEN_H_
#define GRANTVAULT_TESTS_TESTING_SOFTHSM_TOKEN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hsm/token.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::testing {

inline constexpr char kTestTokenLabel[] = "grantvault-test";

// Owns the directory, the initialised token and an open, logged-in Token.
// One per process at a time (SoftHSM reads SOFTHSM2_CONF once per load).
class SoftHsmToken {
 public:
  static absl::StatusOr<std::unique_ptr<SoftHsmToken>> Create(size_t max_sessions = 8);
  ~SoftHsmToken();

  hsm::Token& token() { return *token_; }
  const hsm::TokenOptions& options() const { return options_; }
  const std::string& dir() const { return dir_.path(); }
  // Closes the Token (the module is unloaded if nobody else holds it).
  void Close() { token_.reset(); }
  absl::Status Reopen();

 private:
  SoftHsmToken() = default;
  TempDir dir_;
  hsm::TokenOptions options_;
  std::unique_ptr<hsm::Token> token_;
};

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_SOFTHSM_TOKEN_H_
