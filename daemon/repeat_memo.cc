#include "daemon/repeat_memo.h"

#include <algorithm>
#include <utility>

namespace grantvault::daemon {

void RepeatMemo::Remember(const v1::ResolveRequest& in, Basis basis) {
  Forget();
  if (basis.counting == nullptr || basis.caller == nullptr || basis.grant == nullptr ||
      basis.serial == 0) {
    return;
  }
  workspace_id_ = in.workspace_id();
  connector_id_ = in.connector_id();
  tool_ = in.tool();
  scopes_.assign(in.scopes().begin(), in.scopes().end());
  basis_ = std::move(basis);
  remembered_ = true;
}

bool RepeatMemo::Asks(const v1::ResolveRequest& in) const {
  return in.workspace_id() == workspace_id_ && in.connector_id() == connector_id_ &&
         in.tool() == tool_ &&
         std::equal(in.scopes().begin(), in.scopes().end(), scopes_.begin(), scopes_.end());
}

bool RepeatMemo::Answers(const v1::ResolveRequest& in, absl::Time now, absl::Duration min_valid,
                         const Current& current) const {
  const Basis& b = basis_;
  // The token cache's own tests first (TokenCache::GetClaimingRefresh), then
  // everything else the answer rests on, then the request itself.
  return remembered_ && b.expires_at > now && b.expires_at - now >= min_valid &&
         now < b.refresh_at && current.generation == b.generation &&
         current.audit_epoch == b.audit_epoch && current.caller == b.caller.get() &&
         current.grant == b.grant.get() && current.serial == b.serial &&
         current.counting == b.counting.get() && Asks(in);
}

}  // namespace grantvault::daemon
