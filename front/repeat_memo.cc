#include "front/repeat_memo.h"

#include <utility>

#include "google/protobuf/io/coded_stream.h"
#include "tokens/token_cache.h"

namespace grantvault::front {

std::optional<RepeatMemo::Framed> RepeatMemo::SplitRequestId(std::string_view frame) {
  constexpr uint32_t kRequestIdTag = (1 << 3) | 0;  // field 1, varint
  constexpr uint32_t kDeadlineTag = (3 << 3) | 0;   // field 3, varint
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(frame.data()),
                                            static_cast<int>(frame.size()));
  Framed framed;
  if (in.ReadTag() != kRequestIdTag || !in.ReadVarint64(&framed.request_id)) return std::nullopt;
  int rest = in.CurrentPosition();
  uint32_t deadline_ms = 0;
  if (in.ReadTag() == kDeadlineTag) {
    if (!in.ReadVarint32(&deadline_ms)) return std::nullopt;
    rest = in.CurrentPosition();
  }
  framed.rest = frame.substr(static_cast<size_t>(rest));
  return framed;
}

void RepeatMemo::Remember(const v1::Request& request, absl::Duration min_valid, Basis basis) {
  Forget();
  if (!request.has_resolve()) return;
  // The same encoder as the client's (fields in order) gives the same bytes;
  // a client that encodes otherwise is never matched, and takes the full path.
  v1::Request rest = request;
  rest.clear_request_id();
  rest.clear_deadline_ms();
  if (!rest.SerializeToString(&encoded_)) return;
  if (basis.counting == nullptr || basis.caller == nullptr || basis.grant == nullptr ||
      basis.serial == 0 || basis.reply == nullptr) {
    return;  // the request is kept (SameRequest), never answered (remembered_ stays false)
  }
  resolve_ = request.resolve();
  min_valid_ = min_valid;
  basis_ = std::move(basis);
  remembered_ = true;
}

bool RepeatMemo::Answers(std::string_view rest, absl::Time now, const Current& current) const {
  const Basis& b = basis_;
  // The token cache's own tests first (TokenCache::GetClaimingRefresh), then
  // everything else the answer rests on, then the request itself.
  return remembered_ && tokens::ValidFor(b.expires_at, now, min_valid_) && now < b.refresh_at &&
         current.generation == b.generation && current.audit_epoch == b.audit_epoch &&
         current.caller == b.caller.get() && current.grant == b.grant.get() &&
         current.serial == b.serial && current.counting == b.counting.get() && rest == encoded_;
}

}  // namespace grantvault::front
