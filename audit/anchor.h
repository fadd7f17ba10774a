// Each chain's last signed checkpoint, kept outside the audit database (in the
// token), so that a database rewritten, rolled back or deleted by someone who
// can write the file, but who cannot log in to the token, is refused at open.
//
// The rule (docs/audit.md, "Anchors"): a checkpoint is committed to the
// database (fsynced) first and anchored second. So the anchor is never ahead
// of a database that was not tampered with; a database ahead of its anchor (a
// crash between the two steps) is verified and the anchor moved forward; a
// database behind its anchor is refused.
#ifndef GRANTVAULT_AUDIT_ANCHOR_H_
#define GRANTVAULT_AUDIT_ANCHOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/token.h"

namespace grantvault::audit {

// A chain's last checkpoint: its seq, the hash of the record at that seq
// (which covers the whole chain up to it), and how many checkpoints the
// chain holds up to and including it (so that deleting any is seen).
struct ChainAnchor {
  uint64_t seq = 0;
  std::string head_hash;
  uint64_t checkpoints = 0;
  bool operator==(const ChainAnchor&) const = default;
};

// By chain id ("system", "workspace:<id>").
using ChainAnchors = std::map<std::string, ChainAnchor>;

// Where anchors are kept. Implementations must be thread-safe; Save() calls
// are serialised by the log.
class AnchorStore {
 public:
  virtual ~AnchorStore();
  // The last saved anchors; nullopt when none were ever saved (a log opened
  // for the first time with anchoring). DataLoss when the stored anchors are
  // unreadable.
  virtual absl::StatusOr<std::optional<ChainAnchors>> Load() = 0;
  // Replaces the saved anchors. An error leaves the previous ones readable.
  virtual absl::Status Save(const ChainAnchors& anchors) = 0;
};

// The serialised form (docs/audit.md, "Anchors"): a version line, a
// generation, the anchors in chain order, and a SHA-256 of all of it, so that
// a torn write is recognised as such.
std::vector<uint8_t> EncodeAnchors(uint64_t generation, const ChainAnchors& anchors);
struct DecodedAnchors {
  uint64_t generation = 0;
  ChainAnchors anchors;
};
// InvalidArgument for anything that is not exactly what EncodeAnchors wrote.
absl::StatusOr<DecodedAnchors> DecodeAnchors(std::string_view bytes);

// Label prefix of the token's anchor objects: "<prefix>a" and "<prefix>b".
inline constexpr char kAnchorLabelPrefix[] = "grantvault-audit-anchor-";

// An AnchorStore in two private data objects of `token` (hsm/data_object.h),
// written alternately, each with a generation and a checksum: a crash while
// one is written leaves the other, one generation older (a database ahead of
// its anchor, which the log accepts). `token` must outlive the store.
absl::StatusOr<std::unique_ptr<AnchorStore>> MakeHsmAnchorStore(hsm::Token& token);

}  // namespace grantvault::audit

#endif  // GRANTVAULT_AUDIT_ANCHOR_H_
