#include "front/broker_tokens.h"

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "ipc/packet_channel.h"

namespace grantvault::front {
namespace {

absl::Time TimeOr(int64_t micros, absl::Time otherwise) {
  return micros == 0 ? otherwise : absl::FromUnixMicros(micros);
}

}  // namespace

BrokerTokens::~BrokerTokens() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return background_ == 0; };
  mu_.Await(absl::Condition(&idle));
}

absl::Status BrokerTokens::RevokedError(std::string_view grant_id) const {
  auto it = revoked_.find(grant_id);
  return absl::FailedPreconditionError(absl::StrCat("REVOKED: grant ", std::string(grant_id),
                                                    " is revoked: ", std::string(it->second)));
}

std::optional<tokens::TokenCache::Lookup> BrokerTokens::GetCached(std::string_view grant_id,
                                                                  absl::Duration min_valid) {
  std::optional<tokens::TokenCache::Lookup> hit =
      cache_.GetClaimingRefresh(grant_id, min_valid, absl::Seconds(1));
  if (hit.has_value() && hit->refresh_claimed) {
    // Asks for more than this token has left, so that the broker refreshes
    // rather than answering with the same token.
    const absl::Duration left = hit->token->expires_at - clock_->Now();
    StartRefreshAhead(std::string(grant_id), left + absl::Seconds(1));
  }
  return hit;
}

void BrokerTokens::StartRefreshAhead(std::string grant_id, absl::Duration min_valid) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || flights_.contains(grant_id)) return;
    ++background_;
  }
  std::thread([this, grant_id = std::move(grant_id), min_valid] {
    Fetch(grant_id, min_valid, absl::Now() + call_timeout_).IgnoreError();
    absl::MutexLock lock(&mu_);
    --background_;
  }).detach();
}

absl::StatusOr<tokens::SharedAccessToken> BrokerTokens::GetAccessToken(std::string_view grant_id,
                                                                       absl::Duration min_valid,
                                                                       absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (revoked_.contains(grant_id)) return RevokedError(grant_id);
  }
  if (tokens::SharedAccessToken hit = cache_.Get(grant_id, min_valid)) return hit;
  return Fetch(std::string(grant_id), min_valid, deadline);
}

absl::StatusOr<tokens::SharedAccessToken> BrokerTokens::Renew(std::string_view grant_id,
                                                              const tokens::AccessToken& rejected,
                                                              absl::Duration min_valid,
                                                              absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (revoked_.contains(grant_id)) return RevokedError(grant_id);
  }
  cache_.EraseIfSame(grant_id, rejected.token);
  // A newer token, from a renewal another caller asked for.
  if (tokens::SharedAccessToken hit = cache_.Get(grant_id, min_valid)) return hit;
  // The broker decides (Refresher::Renew: at most one renewal per grant per
  // kMinRenewInterval); it may answer with the refused token itself.
  return Fetch(std::string(grant_id), min_valid, deadline, &rejected.token);
}

absl::StatusOr<tokens::SharedAccessToken> BrokerTokens::Fetch(const std::string& grant_id,
                                                              absl::Duration min_valid,
                                                              absl::Time deadline,
                                                              const SecretBytes* rejected) {
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    absl::MutexLock lock(&mu_);
    if (revoked_.contains(grant_id)) return RevokedError(grant_id);
    auto it = flights_.find(grant_id);
    if (it == flights_.end()) {
      it = flights_.emplace(grant_id, std::make_shared<Flight>()).first;
      leader = true;
    }
    flight = it->second;
  }
  if (!leader) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return flight->done || revoked_.contains(grant_id);
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&done), deadline)) {
      return absl::DeadlineExceededError(
          absl::StrCat("UNAVAILABLE: grant ", grant_id,
                       ": no token within the caller's deadline; retry_after_ms=500"));
    }
    if (revoked_.contains(grant_id)) return RevokedError(grant_id);
    return flight->result;
  }

  broker::v1::Request request;
  request.mutable_token()->set_grant_id(grant_id);
  request.mutable_token()->set_min_valid_ms(absl::ToInt64Milliseconds(min_valid));
  if (rejected != nullptr) {
    request.mutable_token()->set_rejected_token(std::string(rejected->view()));
  }
  const absl::Duration wait =
      std::min(call_timeout_, std::max(deadline - absl::Now(), absl::Milliseconds(1)));
  request.mutable_token()->set_timeout_ms(absl::ToInt64Milliseconds(wait));
  absl::StatusOr<broker::v1::Reply> reply = CallBroker(links_, request, wait + absl::Seconds(1));
  WipeString(*request.mutable_token()->mutable_rejected_token());
  absl::StatusOr<tokens::SharedAccessToken> result =
      absl::UnknownError("the broker's answer was not read");
  if (!reply.ok()) result = reply.status();
  if (reply.ok() && (!reply->has_token() || reply->token().token().empty())) {
    // An OK answer of another kind, or an empty token: a broken broker, never
    // a token to cache.
    result = absl::InternalError("the broker's answer to a token call carries no token");
  } else if (reply.ok()) {
    broker::v1::AccessToken* in = reply->mutable_token();
    tokens::AccessToken token;
    token.token = SecretBytes::TakeFrom(*in->mutable_token());
    token.token_type = in->token_type();
    token.expires_at = TimeOr(in->expires_at_us(), absl::InfiniteFuture());
    token.obtained_at = TimeOr(in->obtained_at_us(), absl::InfinitePast());
    token.serial = tokens::NewTokenSerial();
    auto shared = std::make_shared<const tokens::AccessToken>(std::move(token));
    result = shared;
    absl::MutexLock lock(&mu_);
    if (revoked_.contains(grant_id)) {
      result = RevokedError(grant_id);
    } else {
      cache_.Put(grant_id, shared, TimeOr(in->refresh_at_us(), absl::InfiniteFuture()));
    }
  } else if (absl::IsUnavailable(reply.status()) || absl::IsDeadlineExceeded(reply.status())) {
    // The broker is gone or slow: a token still valid, even for less than
    // asked, is better than none (as the Refresher does with its provider).
    if (tokens::SharedAccessToken stale = cache_.Get(grant_id, absl::ZeroDuration())) {
      result = stale;
    }
  }
  absl::MutexLock lock(&mu_);
  flight->done = true;
  flight->result = result;
  flights_.erase(grant_id);
  if (revoked_.contains(grant_id)) return RevokedError(grant_id);
  return result;
}

void BrokerTokens::Revoke(std::string_view grant_id, std::string reason) {
  {
    absl::MutexLock lock(&mu_);
    revoked_.insert_or_assign(std::string(grant_id), reason);
    cache_.Erase(grant_id);
  }
  broker::v1::Request request;
  request.mutable_revoke()->set_grant_id(std::string(grant_id));
  request.mutable_revoke()->set_reason(std::move(reason));
  // A broker that misses this reads the revocation from the store at its next refresh.
  CallBroker(links_, request, absl::Seconds(5)).IgnoreError();
}

void BrokerTokens::Forget(std::string_view grant_id) {
  cache_.Erase(grant_id);
  broker::v1::Request request;
  request.mutable_forget()->set_grant_id(std::string(grant_id));
  CallBroker(links_, request, absl::Seconds(5)).IgnoreError();
}

std::vector<tokens::BreakerState> BrokerTokens::Breakers() const {
  broker::v1::Request request;
  request.mutable_health();
  absl::StatusOr<broker::v1::Reply> reply = CallBroker(links_, request, kHealthCallTimeout);
  std::vector<tokens::BreakerState> out;
  if (!reply.ok()) return out;
  for (const broker::v1::Breaker& b : reply->health().breakers()) {
    tokens::BreakerState s;
    s.connector_id = b.connector_id();
    s.phase = static_cast<tokens::BreakerPhase>(b.phase());
    s.consecutive_failures = b.consecutive_failures();
    s.open_until = TimeOr(b.open_until_us(), absl::InfinitePast());
    s.last_failure = b.last_failure();
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace grantvault::front
