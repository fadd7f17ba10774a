#include "tokens/token_cache.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace grantvault::tokens {

TokenCache::Entry* TokenCache::ValidEntryLocked(std::string_view grant_id, absl::Time now,
                                                absl::Duration min_valid) {
  auto it = entries_.find(grant_id);
  if (it == entries_.end()) return nullptr;
  if (it->second.token->expires_at <= now) {
    entries_.erase(it);
    return nullptr;
  }
  return ServesMinValid(*it->second.token, now, min_valid) ? &it->second : nullptr;
}

SharedAccessToken TokenCache::Get(std::string_view grant_id, absl::Duration min_valid) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  const Entry* entry = ValidEntryLocked(grant_id, now, min_valid);
  return entry == nullptr ? nullptr : entry->token;
}

std::optional<TokenCache::Lookup> TokenCache::GetClaimingRefresh(std::string_view grant_id,
                                                                 absl::Duration min_valid,
                                                                 absl::Duration min_retry) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  Entry* found = ValidEntryLocked(grant_id, now, min_valid);
  if (found == nullptr) return std::nullopt;
  Entry& entry = *found;
  Lookup lookup{entry.token, false};
  if (entry.refresh_at <= now) {
    lookup.refresh_claimed = true;
    entry.refresh_at = now + std::max(min_retry, (entry.token->expires_at - now) / 4);
  }
  lookup.refresh_at = entry.refresh_at;
  return lookup;
}

void TokenCache::Put(std::string_view grant_id, AccessToken token) {
  Put(grant_id, std::move(token), absl::InfiniteFuture());
}

uint64_t NewTokenSerial() {
  static std::atomic<uint64_t> next_serial{1};
  return next_serial.fetch_add(1, std::memory_order_relaxed);
}

void TokenCache::Put(std::string_view grant_id, AccessToken token, absl::Time refresh_at) {
  if (token.serial == 0) token.serial = NewTokenSerial();
  Put(grant_id, std::make_shared<const AccessToken>(std::move(token)), refresh_at);
}

void TokenCache::Put(std::string_view grant_id, SharedAccessToken token, absl::Time refresh_at) {
  if (token == nullptr || token->serial == 0) {
    std::fprintf(stderr, "fatal: TokenCache::Put of a token without a serial\n");
    std::abort();
  }
  SharedAccessToken replaced;  // wiped, if nobody else holds it, after the lock is released
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = entries_.try_emplace(std::string(grant_id));
  if (!inserted) replaced = std::move(it->second.token);
  it->second = Entry{std::move(token), refresh_at};
  generation_.fetch_add(1, std::memory_order_release);
}

void TokenCache::Erase(std::string_view grant_id) {
  SharedAccessToken erased;  // wiped, if nobody else holds it, after the lock is released
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(grant_id);
  if (it == entries_.end()) return;
  erased = std::move(it->second.token);
  entries_.erase(it);
  generation_.fetch_add(1, std::memory_order_release);
}

bool TokenCache::EraseIfSame(std::string_view grant_id, const SecretBytes& token) {
  SharedAccessToken erased;  // wiped, if nobody else holds it, after the lock is released
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(grant_id);
  if (it == entries_.end() || !(it->second.token->token == token)) return false;
  erased = std::move(it->second.token);
  entries_.erase(it);
  generation_.fetch_add(1, std::memory_order_release);
  return true;
}

size_t TokenCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace grantvault::tokens
