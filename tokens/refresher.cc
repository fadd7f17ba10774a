#include "tokens/refresher.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/token_request.h"
#include "oauth/token_response.h"

namespace grantvault::tokens {
namespace {

constexpr char kRefreshTokenPurpose[] = "refresh_token";
constexpr char kAccessTokenPurpose[] = "access_token";
constexpr char kClientSecretPurpose[] = "client_secret";
// When a token response names no lifetime.
constexpr absl::Duration kDefaultAccessTokenLifetime = absl::Hours(1);
// How often a commit is retried when the stored record changed without the
// token changing (a KEK rewrap raced the refresh).
constexpr int kMaxCommitAttempts = 3;
// How often a refresh starts over after another writer rotated the token.
constexpr int kMaxRotationRounds = 3;

hsm::SealContext ContextFor(const store::SealedSecret& s) {
  return hsm::SealContext{s.workspace_id, s.connector_id, s.account_id, s.key.owner_id,
                          s.key.purpose};
}

// Retry-After (RFC 9110 §10.2.3) in delta-seconds; an HTTP date is not honoured.
std::optional<absl::Duration> RetryAfter(const oauth::HttpResponse& response) {
  std::optional<std::string> value = response.Header("Retry-After");
  int seconds = 0;
  if (!value || !absl::SimpleAtoi(*value, &seconds) || seconds < 0) return std::nullopt;
  return absl::Seconds(std::min(seconds, 3600));
}

absl::StatusOr<AccessToken> CloneResult(const absl::StatusOr<AccessToken>& result) {
  if (!result.ok()) return result.status();
  return result->Clone();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Refresher>> Refresher::Create(const RefresherDeps& deps,
                                                             RefresherOptions options) {
  if (deps.store == nullptr || deps.sealer == nullptr || deps.http == nullptr ||
      deps.connectors == nullptr || deps.clock == nullptr) {
    return absl::InvalidArgumentError("Refresher needs every dependency");
  }
  if (options.max_attempts < 1 || options.initial_backoff <= absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff ||
      options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "Refresher options: max_attempts >= 1, 0 < initial_backoff <= max_backoff, "
        "request_timeout > 0");
  }
  return std::unique_ptr<Refresher>(new Refresher(deps, options));
}

int64_t Refresher::upstream_requests() const {
  absl::MutexLock lock(&mu_);
  return upstream_requests_;
}

absl::StatusOr<AccessToken> Refresher::GetAccessToken(std::string_view grant_id,
                                                      absl::Duration min_valid,
                                                      absl::Time deadline) {
  if (grant_id.empty()) return absl::InvalidArgumentError("a grant id is required");
  if (min_valid < absl::ZeroDuration()) min_valid = absl::ZeroDuration();
  if (std::optional<AccessToken> hit = cache_.Get(grant_id, min_valid)) return std::move(*hit);

  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = in_flight_.find(grant_id);
    if (it == in_flight_.end()) {
      flight = std::make_shared<Flight>();
      in_flight_.emplace(std::string(grant_id), flight);
      leader = true;
    } else {
      flight = it->second;
    }
  }

  if (leader) {
    // A flight may have finished between the cache miss and taking the lead.
    absl::StatusOr<AccessToken> result = absl::UnknownError("unset");
    if (std::optional<AccessToken> hit = cache_.Get(grant_id, min_valid)) {
      result = std::move(*hit);
    } else {
      result = Refresh(std::string(grant_id), deadline);
    }
    {
      absl::MutexLock lock(&mu_);
      flight->result = CloneResult(result);
      flight->done = true;
      in_flight_.erase(in_flight_.find(grant_id));
    }
    if (!result.ok()) return ServeStaleOr(grant_id, result.status());
    return result;
  }

  absl::StatusOr<AccessToken> result = absl::UnknownError("unset");
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(&flight->done), deadline)) {
      result = absl::UnavailableError(
          absl::StrCat("UNAVAILABLE: the caller's deadline passed while grant ", Sv(grant_id),
                       " was being refreshed; retry_after_ms=",
                       options_.initial_backoff / absl::Milliseconds(1)));
    } else {
      result = CloneResult(flight->result);
    }
  }
  if (!result.ok()) return ServeStaleOr(grant_id, result.status());
  return result;
}

absl::StatusOr<AccessToken> Refresher::ServeStaleOr(std::string_view grant_id,
                                                    absl::Status status) {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
    if (std::optional<AccessToken> stale = cache_.Get(grant_id, absl::ZeroDuration())) {
      return std::move(*stale);
    }
  }
  return status;
}

absl::StatusOr<AccessToken> Refresher::Refresh(const std::string& grant_id, absl::Time deadline) {
  absl::BitGen random;
  for (int round = 0; round < kMaxRotationRounds; ++round) {
    GV_ASSIGN_OR_RETURN(store::Grant grant, deps_.store->GetGrant(grant_id));
    if (grant.status == store::GrantStatus::kRevoked) {
      cache_.Erase(grant_id);
      return absl::FailedPreconditionError(
          absl::StrCat("REVOKED: grant ", grant_id, " is revoked: ", grant.status_reason));
    }
    if (grant.status == store::GrantStatus::kReauthRequired) {
      cache_.Erase(grant_id);
      return absl::FailedPreconditionError(absl::StrCat(
          "REAUTH_REQUIRED: grant ", grant_id, " needs authorizing again: ", grant.status_reason));
    }

    absl::StatusOr<store::SealedSecret> sealed_refresh =
        deps_.store->GetSealedSecret({grant_id, kRefreshTokenPurpose});
    if (absl::IsNotFound(sealed_refresh.status())) {
      // A connector without refresh tokens: the grant keeps its long-lived access token.
      GV_ASSIGN_OR_RETURN(store::SealedSecret sealed_access,
                          deps_.store->GetSealedSecret({grant_id, kAccessTokenPurpose}));
      AccessToken token;
      GV_ASSIGN_OR_RETURN(token.token,
                          deps_.sealer->Open(sealed_access.record, ContextFor(sealed_access)));
      token.expires_at = grant.access_token_expires_at.value_or(absl::InfiniteFuture());
      if (token.expires_at <= deps_.clock->Now()) {
        return absl::FailedPreconditionError(
            absl::StrCat("REAUTH_REQUIRED: grant ", grant_id,
                         " holds an access token that has expired and no refresh token"));
      }
      cache_.Put(grant_id, token.Clone());
      return token;
    }
    GV_RETURN_IF_ERROR(sealed_refresh.status());
    if (sealed_refresh->workspace_id != grant.workspace_id ||
        sealed_refresh->connector_id != grant.connector_id) {
      return absl::DataLossError("the refresh token row is bound to another grant");
    }

    GV_ASSIGN_OR_RETURN(store::ConnectorRegistration registration,
                        deps_.store->GetConnectorRegistration(grant.connector_id));
    GV_ASSIGN_OR_RETURN(oauth::ConnectorProfile profile, deps_.connectors->Resolve(registration));
    GV_ASSIGN_OR_RETURN(
        store::SealedSecret sealed_client_secret,
        deps_.store->GetSealedSecret(
            {store::RegistrationSecretOwner(registration.connector_id), kClientSecretPurpose}));
    GV_ASSIGN_OR_RETURN(
        SecretBytes client_secret,
        deps_.sealer->Open(sealed_client_secret.record, ContextFor(sealed_client_secret)));
    GV_ASSIGN_OR_RETURN(SecretBytes refresh_token,
                        deps_.sealer->Open(sealed_refresh->record, ContextFor(*sealed_refresh)));

    // The attempt marker: present before the request is sent, removed once its outcome is
    // known. Finding one left over means an earlier attempt's outcome was lost (a crash, or a
    // response that never arrived), which is how the crash window is recognised.
    store::SealedSecret marker;
    marker.key = {grant_id, kRefreshAttemptPurpose};
    marker.workspace_id = grant.workspace_id;
    marker.connector_id = grant.connector_id;
    marker.account_id = grant.account_id;
    const bool earlier_attempt_unresolved = deps_.store->GetSealedSecret(marker.key).ok();
    {
      GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                          deps_.sealer->Seal(SecretBytes::Random(16), ContextFor(marker)));
      marker.kek_label = sealed.kek.label;
      marker.record = std::move(sealed.record);
      marker.updated_at = deps_.clock->Now();
      GV_RETURN_IF_ERROR(deps_.store->PutSealedSecret(marker));
    }
    auto resolve_attempt = [&] {
      // Best effort: a marker left behind only makes a later invalid_grant name the crash
      // window.
      deps_.store->DeleteSealedSecret(marker.key).IgnoreError();
    };

    absl::Duration backoff = options_.initial_backoff;
    absl::Status last = absl::UnavailableError("no attempt was made before the deadline");
    absl::Duration retry_after = options_.initial_backoff;
    std::optional<oauth::TokenResponse> tokens;
    for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
      const absl::Duration remaining = deadline - deps_.clock->Now();
      if (remaining <= absl::ZeroDuration()) break;
      absl::StatusOr<oauth::HttpResponse> response;
      {
        const oauth::TokenRequest request(
            profile, oauth::RefreshTokenExchange{.client_id = registration.client_id,
                                                 .client_secret = &client_secret,
                                                 .refresh_token = &refresh_token});
        {
          absl::MutexLock lock(&mu_);
          ++upstream_requests_;
        }
        response = deps_.http->Send(request.http(), std::min(remaining, options_.request_timeout));
      }
      bool retryable = false;
      if (!response.ok()) {
        // No answer: the server may or may not have rotated the token; the marker stays.
        last = absl::UnavailableError(
            absl::StrCat("the token endpoint did not answer: ", response.status().message()));
        retryable = true;
      } else if (response->status == 429 || response->status >= 500) {
        last = absl::UnavailableError(
            absl::StrCat("the token endpoint answered HTTP ", response->status));
        if (std::optional<absl::Duration> server_wait = RetryAfter(*response)) {
          retry_after = std::max(retry_after, *server_wait);
          backoff = std::max(backoff, *server_wait);
        }
        retryable = true;
      } else {
        absl::StatusOr<oauth::TokenResponse> parsed =
            oauth::ParseTokenResponse(*response, profile.catalog_type);
        if (parsed.ok()) {
          tokens = std::move(*parsed);
          break;
        }
        if (absl::IsFailedPrecondition(parsed.status()) &&
            absl::StrContains(parsed.status().message(), "invalid_grant")) {
          const std::string reason = earlier_attempt_unresolved
                                         ? std::string(kCrashWindowReason)
                                         : std::string(
                                               "the authorization server refused the refresh token "
                                               "(invalid_grant): revoked, expired or reused");
          cache_.Erase(grant_id);
          GV_RETURN_IF_ERROR(deps_.store->SetGrantStatus(
              grant_id, store::GrantStatus::kReauthRequired, reason, deps_.clock->Now()));
          resolve_attempt();
          return absl::FailedPreconditionError(
              absl::StrCat("REAUTH_REQUIRED: grant ", grant_id, ": ", reason));
        }
        if (absl::IsFailedPrecondition(parsed.status())) {
          // Another refusal (invalid_client, unauthorized_client…): nothing was rotated.
          resolve_attempt();
          return parsed.status();
        }
        // A malformed answer: it may have carried a rotated token; the marker stays.
        return absl::UnavailableError(
            absl::StrCat("UNAVAILABLE: grant ", grant_id, ": ", parsed.status().message(),
                         "; retry_after_ms=", retry_after / absl::Milliseconds(1)));
      }
      if (!retryable || attempt + 1 == options_.max_attempts) break;
      const absl::Duration wait = std::min(
          options_.max_backoff, backoff * absl::Uniform(random, 0.5, 1.5));  // jitter: ±50 %
      if (deps_.clock->Now() + wait >= deadline) break;
      absl::SleepFor(wait);
      backoff = std::min(options_.max_backoff, backoff * 2);
    }
    if (!tokens.has_value()) {
      return absl::UnavailableError(
          absl::StrCat("UNAVAILABLE: grant ", grant_id, ": ", last.message(),
                       "; retry_after_ms=", retry_after / absl::Milliseconds(1)));
    }

    // Commit the rotated refresh token before anyone sees the access token.
    bool rotated_elsewhere = false;
    if (!tokens->refresh_token.empty()) {
      GV_ASSIGN_OR_RETURN(hsm::Sealed sealed,
                          deps_.sealer->Seal(tokens->refresh_token, ContextFor(*sealed_refresh)));
      store::SealedSecretUpdate update{sealed_refresh->key, sealed_refresh->record,
                                       sealed.kek.label, std::move(sealed.record)};
      bool committed = false;
      for (int commit = 0; commit < kMaxCommitAttempts && !committed; ++commit) {
        absl::StatusOr<size_t> applied = deps_.store->ReplaceSealedSecrets({&update, 1});
        if (!applied.ok()) {
          // The new refresh token is not recorded: this is the crash window, and the marker
          // stays so that the invalid_grant that follows names it.
          return absl::UnavailableError(absl::StrCat(
              "UNAVAILABLE: grant ", grant_id,
              ": the rotated refresh token could not be stored: ", applied.status().message(),
              "; retry_after_ms=", options_.initial_backoff / absl::Milliseconds(1)));
        }
        if (*applied == 1) {
          committed = true;
          break;
        }
        // The row changed under us: a rewrap (same token, new record) or another rotation.
        GV_ASSIGN_OR_RETURN(store::SealedSecret current,
                            deps_.store->GetSealedSecret(sealed_refresh->key));
        GV_ASSIGN_OR_RETURN(SecretBytes current_token,
                            deps_.sealer->Open(current.record, ContextFor(current)));
        if (!(current_token == refresh_token)) {
          rotated_elsewhere = true;
          break;
        }
        update.expected_record = current.record;
      }
      if (rotated_elsewhere) continue;  // start over from the store; never resend the old token
      if (!committed) {
        return absl::UnavailableError(
            absl::StrCat("UNAVAILABLE: grant ", grant_id,
                         ": the refresh token row kept changing; retry_after_ms=",
                         options_.initial_backoff / absl::Milliseconds(1)));
      }
    }
    resolve_attempt();

    AccessToken token;
    token.token = std::move(tokens->access_token);
    if (!tokens->token_type.empty()) token.token_type = tokens->token_type;
    token.expires_at =
        deps_.clock->Now() + tokens->expires_in.value_or(kDefaultAccessTokenLifetime);
    cache_.Put(grant_id, token.Clone());
    return token;
  }
  return absl::UnavailableError(absl::StrCat("UNAVAILABLE: grant ", grant_id,
                                             ": its refresh token kept being rotated elsewhere; "
                                             "retry_after_ms=",
                                             options_.initial_backoff / absl::Milliseconds(1)));
}

}  // namespace grantvault::tokens
