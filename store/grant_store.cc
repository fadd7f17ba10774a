#include "store/grant_store.h"

#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace grantvault::store {

namespace {

class NoRefreshLock final : public GrantStore::RefreshLock {};

}  // namespace

absl::StatusOr<std::unique_ptr<GrantStore::RefreshLock>> GrantStore::LockGrantForRefresh(
    std::string_view, absl::Time) {
  return std::make_unique<NoRefreshLock>();
}

std::string_view GrantStatusName(GrantStatus status) {
  switch (status) {
    case GrantStatus::kActive:
      return "active";
    case GrantStatus::kReauthRequired:
      return "reauth_required";
    case GrantStatus::kRevoked:
      return "revoked";
  }
  return "unknown";
}

absl::StatusOr<GrantStatus> ParseGrantStatus(std::string_view name) {
  if (name == "active") return GrantStatus::kActive;
  if (name == "reauth_required") return GrantStatus::kReauthRequired;
  if (name == "revoked") return GrantStatus::kRevoked;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown grant status \"", absl::CHexEscape(Sv(name)),
                   "\" (expected active, reauth_required or revoked)"));
}

std::string_view UpstreamRevocationStateName(UpstreamRevocationState state) {
  switch (state) {
    case UpstreamRevocationState::kPending:
      return "pending";
    case UpstreamRevocationState::kRevoked:
      return "revoked";
    case UpstreamRevocationState::kAlreadyInvalid:
      return "already_invalid";
    case UpstreamRevocationState::kManual:
      return "manual";
  }
  return "unknown";
}

absl::StatusOr<UpstreamRevocationState> ParseUpstreamRevocationState(std::string_view name) {
  if (name == "pending") return UpstreamRevocationState::kPending;
  if (name == "revoked") return UpstreamRevocationState::kRevoked;
  if (name == "already_invalid") return UpstreamRevocationState::kAlreadyInvalid;
  if (name == "manual") return UpstreamRevocationState::kManual;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown upstream revocation state \"", absl::CHexEscape(Sv(name)), "\""));
}

std::string_view KeyStateName(KeyState state) {
  switch (state) {
    case KeyState::kActive:
      return "active";
    case KeyState::kInactive:
      return "inactive";
    case KeyState::kRetired:
      return "retired";
  }
  return "unknown";
}

absl::StatusOr<KeyState> ParseKeyState(std::string_view name) {
  if (name == "active") return KeyState::kActive;
  if (name == "inactive") return KeyState::kInactive;
  if (name == "retired") return KeyState::kRetired;
  return absl::InvalidArgumentError(absl::StrCat("unknown key state \"", absl::CHexEscape(Sv(name)),
                                                 "\" (expected active, inactive or retired)"));
}

std::string RegistrationSecretOwner(std::string_view connector_id) {
  return "reg:" + std::string(connector_id);
}

}  // namespace grantvault::store
