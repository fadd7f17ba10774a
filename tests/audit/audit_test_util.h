// Helpers shared by the audit tests.
#ifndef GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_UTIL_H_
#define GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_UTIL_H_

#include <openssl/evp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "audit/anchor.h"
#include "audit/audit_log.h"
#include "audit/signer.h"
#include "audit/verify.h"

namespace grantvault::audit::testing {

// An ECDSA P-256 key in process memory. Only for tests that fork(): PKCS#11
// sessions (SoftHSM's included) do not survive fork(), so a child process
// cannot sign with the token its parent opened. Every other test signs with a
// real SoftHSM token.
class SoftwareSigner final : public Signer {
 public:
  explicit SoftwareSigner(std::string label);   // generates a key
  SoftwareSigner(const SoftwareSigner& other);  // shares the key
  ~SoftwareSigner() override;
  absl::StatusOr<std::vector<uint8_t>> SignSha256(std::span<const uint8_t> data) override;
  absl::StatusOr<std::string> PublicKeyPem() override;
  std::string key_label() const override { return label_; }

 private:
  std::string label_;
  EVP_PKEY* key_;
};

// Anchors in process memory; copies share them. Only beside a SoftwareSigner
// (tests that fork()); every other test anchors in a real SoftHSM token.
class MemoryAnchorStore final : public AnchorStore {
 public:
  MemoryAnchorStore() : saved_(std::make_shared<std::optional<ChainAnchors>>()) {}
  absl::StatusOr<std::optional<ChainAnchors>> Load() override { return *saved_; }
  absl::Status Save(const ChainAnchors& anchors) override {
    *saved_ = anchors;
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<std::optional<ChainAnchors>> saved_;
};

Event AdminEvent(const std::string& workspace, const std::string& reason,
                 const std::string& type = "grant.revoked");
Event TokenEvent(const std::string& workspace, const std::string& grant_id);

// Exports a chain into a string; fails the test on error.
std::string ExportToString(AuditLog& log, const ExportFilter& filter, ExportFormat format);
absl::StatusOr<VerifyReport> VerifyString(const std::string& text, const std::string& pem);

// Lines with their terminators, and back.
std::vector<std::string> SplitLines(const std::string& text);
std::string JoinLines(const std::vector<std::string>& lines);

inline constexpr size_t kNoLine = static_cast<size_t>(-1);
// The index in `lines` of the record or stub with `seq`, or kNoLine.
size_t LineOfSeq(const std::vector<std::string>& lines, ExportFormat format, uint64_t seq);
// The index of the checkpoint with `seq`, or kNoLine.
size_t LineOfCheckpoint(const std::vector<std::string>& lines, ExportFormat format, uint64_t seq);
// The base64 signature on a checkpoint line.
std::string SignatureOf(const std::string& line, ExportFormat format);

// Every file in `dir` whose name starts with `prefix`, concatenated.
std::string ReadFilesWithPrefix(const std::string& dir, const std::string& prefix);

}  // namespace grantvault::audit::testing

#endif  // GRANTVAULT_TESTS_AUDIT_AUDIT_TEST_UTIL_H_
