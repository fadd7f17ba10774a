#include "tokens/token_cache.h"

#include <utility>

namespace grantvault::tokens {

std::optional<AccessToken> TokenCache::Get(std::string_view grant_id, absl::Duration min_valid) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(grant_id);
  if (it == entries_.end()) return std::nullopt;
  if (it->second.expires_at <= now) {
    entries_.erase(it);
    return std::nullopt;
  }
  if (it->second.expires_at - now < min_valid) return std::nullopt;
  return it->second.Clone();
}

void TokenCache::Put(std::string_view grant_id, AccessToken token) {
  absl::MutexLock lock(&mu_);
  entries_.insert_or_assign(std::string(grant_id), std::move(token));
}

void TokenCache::Erase(std::string_view grant_id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(grant_id);
  if (it != entries_.end()) entries_.erase(it);
}

size_t TokenCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace grantvault::tokens
