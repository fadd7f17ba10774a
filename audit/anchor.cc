#include "audit/anchor.h"

#include <charconv>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "audit/record_format.h"
#include "common/status.h"
#include "common/strings.h"
#include "hsm/data_object.h"

namespace grantvault::audit {

AnchorStore::~AnchorStore() = default;

namespace {

constexpr std::string_view kAnchorsMagic = "grantvault.audit.anchors.v1\n";
// Far more than any log has chains; bounds what a decoder accepts.
constexpr uint64_t kMaxChains = 10'000'000;

void AppendField(std::string& out, std::string_view value) {
  absl::StrAppend(&out, value.size(), ":");
  out.append(value);
  out.push_back('\n');
}

// Reads one S(x) field (docs/audit.md, "Canonical forms").
class FieldReader {
 public:
  explicit FieldReader(std::string_view in) : in_(in) {}
  bool Next(std::string_view& value) {
    size_t colon = in_.find(':', pos_);
    if (colon == std::string_view::npos || colon == pos_ || colon - pos_ > 20) return false;
    uint64_t len = 0;
    if (!ParseNumber(in_.substr(pos_, colon - pos_), len)) return false;
    const size_t start = colon + 1;
    if (len > in_.size() - start || start + len >= in_.size() || in_[start + len] != '\n') {
      return false;
    }
    value = in_.substr(start, len);
    pos_ = start + len + 1;
    return true;
  }
  bool NextNumber(uint64_t& n) {
    std::string_view text;
    return Next(text) && ParseNumber(text, n);
  }
  size_t pos() const { return pos_; }

  static bool ParseNumber(std::string_view text, uint64_t& n) {
    if (text.empty() || (text.size() > 1 && text[0] == '0')) return false;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    return ec == std::errc() && end == text.data() + text.size();
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

class HsmAnchorStore final : public AnchorStore {
 public:
  explicit HsmAnchorStore(hsm::Token& token) : token_(token) {}

  absl::StatusOr<std::optional<ChainAnchors>> Load() override {
    absl::MutexLock lock(&mu_);
    return LoadLocked();
  }

  absl::Status Save(const ChainAnchors& anchors) override {
    absl::MutexLock lock(&mu_);
    // Which slot holds the newest anchor decides where to write.
    if (!loaded_) GV_RETURN_IF_ERROR(LoadLocked().status());
    const std::vector<uint8_t> bytes = EncodeAnchors(generation_ + 1, anchors);
    // Never over the newest: a torn write must leave it intact.
    GV_RETURN_IF_ERROR(hsm::WriteDataObject(token_, Label(next_slot_), bytes));
    ++generation_;
    next_slot_ = 1 - next_slot_;
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::optional<ChainAnchors>> LoadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::optional<DecodedAnchors> newest;
    int newest_slot = -1;
    bool any_present = false;
    std::string unreadable;
    for (int slot = 0; slot < 2; ++slot) {
      GV_ASSIGN_OR_RETURN(std::optional<std::vector<uint8_t>> bytes,
                          hsm::ReadDataObject(token_, Label(slot)));
      if (!bytes.has_value()) continue;
      any_present = true;
      absl::StatusOr<DecodedAnchors> decoded = DecodeAnchors(
          std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()));
      if (!decoded.ok()) {
        unreadable = absl::StrCat(Label(slot), ": ", decoded.status().message());
        continue;  // torn by a crash while written: the other one is the anchor
      }
      if (!newest.has_value() || decoded->generation > newest->generation) {
        newest = *std::move(decoded);
        newest_slot = slot;
      }
    }
    if (!any_present) {
      generation_ = 0;
      next_slot_ = 0;
      loaded_ = true;
      return std::optional<ChainAnchors>();
    }
    if (!newest.has_value()) {
      return absl::DataLossError(
          absl::StrCat("the token's audit anchors are unreadable (", unreadable,
                       "); the log cannot be checked against them (docs/audit.md, \"Anchors\")"));
    }
    generation_ = newest->generation;
    next_slot_ = 1 - newest_slot;
    loaded_ = true;
    return std::optional<ChainAnchors>(std::move(newest->anchors));
  }

  static std::string Label(int slot) {
    return absl::StrCat(kAnchorLabelPrefix, slot == 0 ? "a" : "b");
  }

  hsm::Token& token_;
  absl::Mutex mu_;
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int next_slot_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::vector<uint8_t> EncodeAnchors(uint64_t generation, const ChainAnchors& anchors) {
  std::string out(kAnchorsMagic);
  AppendField(out, absl::StrCat(generation));
  AppendField(out, absl::StrCat(anchors.size()));
  for (const auto& [chain, anchor] : anchors) {
    AppendField(out, chain);
    AppendField(out, absl::StrCat(anchor.seq));
    AppendField(out, anchor.head_hash);
    AppendField(out, absl::StrCat(anchor.checkpoints));
  }
  AppendField(out, format::Sha256Hex(out));
  return std::vector<uint8_t>(out.begin(), out.end());
}

absl::StatusOr<DecodedAnchors> DecodeAnchors(std::string_view bytes) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("audit anchors: ", Sv(what)));
  };
  if (!bytes.starts_with(kAnchorsMagic)) return bad("not an anchor record (version line)");
  FieldReader reader(bytes.substr(kAnchorsMagic.size()));
  DecodedAnchors decoded;
  uint64_t count = 0;
  if (!reader.NextNumber(decoded.generation) || !reader.NextNumber(count) || count > kMaxChains) {
    return bad("malformed header");
  }
  for (uint64_t i = 0; i < count; ++i) {
    std::string_view chain, hash;
    ChainAnchor anchor;
    if (!reader.Next(chain) || !reader.NextNumber(anchor.seq) || !reader.Next(hash) ||
        !reader.NextNumber(anchor.checkpoints)) {
      return bad("malformed or truncated chain entry");
    }
    if (anchor.seq == 0 || anchor.checkpoints == 0 || anchor.checkpoints > anchor.seq ||
        hash.size() != 64) {
      return bad("impossible chain entry");
    }
    anchor.head_hash = std::string(hash);
    if (!decoded.anchors.emplace(std::string(chain), std::move(anchor)).second) {
      return bad("a chain appears twice");
    }
  }
  const size_t body_size = kAnchorsMagic.size() + reader.pos();
  std::string_view checksum;
  if (!reader.Next(checksum) || kAnchorsMagic.size() + reader.pos() != bytes.size()) {
    return bad("truncated (no checksum) or trailing bytes");
  }
  if (checksum != format::Sha256Hex(bytes.substr(0, body_size))) {
    return bad("checksum mismatch (torn or altered)");
  }
  return decoded;
}

absl::StatusOr<std::unique_ptr<AnchorStore>> MakeHsmAnchorStore(hsm::Token& token) {
  return std::unique_ptr<AnchorStore>(std::make_unique<HsmAnchorStore>(token));
}

}  // namespace grantvault::audit
