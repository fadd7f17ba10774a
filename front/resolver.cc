#include "front/resolver.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace grantvault::front {
// The executable's path is always collected at accept; only its hash may
// still be missing (and never can be added when the executable could not be
// read).
bool Covers(const policy::CallerIdentity& have, const policy::AttestOptions& need) {
  return !need.hash_exe || have.exe_sha256.has_value() || !have.exe_path.has_value();
}

policy::ExecutableChecks ExecutableChecksOf(const policy::CallerRule& rule) {
  return policy::ExecutableChecks{.path = rule.exe.has_value(),
                                  .inode = rule.exe_sha256.has_value()};
}

void Resolver::SetPolicy(std::shared_ptr<const policy::Policy> policy) {
  {
    absl::MutexLock lock(&mu_);
    policy_ = std::move(policy);
    refusal_ = absl::PermissionDeniedError(
        "no caller policy is configured, so no agent may use grantvault (docs/policy.md)");
  }
  generation_.fetch_add(1, std::memory_order_release);
}

void Resolver::RefuseAll(absl::Status refusal) {
  {
    absl::MutexLock lock(&mu_);
    policy_ = nullptr;
    refusal_ = std::move(refusal);
  }
  generation_.fetch_add(1, std::memory_order_release);
}

Resolver::PolicySnapshot Resolver::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return PolicySnapshot{policy_, refusal_};
}

std::shared_ptr<const policy::Policy> Resolver::policy() const {
  absl::MutexLock lock(&mu_);
  return policy_;
}

absl::StatusOr<policy::CallerIdentity> Resolver::Attest(pid_t pid, uid_t uid, gid_t gid) const {
  std::shared_ptr<const policy::Policy> current = policy();
  return policy::AttestCaller(pid, uid, gid,
                              current ? current->RequiredAttestation() : policy::AttestOptions{});
}

void Resolver::ForgetGrant(const std::string& workspace_id, const std::string& connector_id) {
  {
    absl::MutexLock lock(&mu_);
    directory_.erase({workspace_id, connector_id});
  }
  generation_.fetch_add(1, std::memory_order_release);
}

absl::StatusOr<std::shared_ptr<const store::Grant>> Resolver::FindGrant(
    const std::string& workspace_id, const std::string& connector_id) {
  std::shared_ptr<const store::Grant> grant = CachedGrant(workspace_id, connector_id);
  if (grant == nullptr) {
    absl::StatusOr<store::Grant> current = store_->FindCurrentGrant(workspace_id, connector_id);
    if (absl::IsNotFound(current.status())) {
      // No current grant: if the last one was revoked, say so (an agent must
      // tell "revoked" from "never authorized").
      GV_ASSIGN_OR_RETURN(std::vector<store::Grant> all, store_->ListGrants(workspace_id));
      for (auto it = all.rbegin(); it != all.rend(); ++it) {
        if (it->connector_id == connector_id) {
          current = std::move(*it);
          break;
        }
      }
    }
    if (absl::IsNotFound(current.status())) {
      return absl::NotFoundError(absl::StrCat("workspace '", workspace_id,
                                              "' has no grant for connector '", connector_id, "'"));
    }
    GV_RETURN_IF_ERROR(current.status());
    grant = std::make_shared<const store::Grant>(*std::move(current));
    absl::MutexLock lock(&mu_);
    directory_.insert_or_assign({workspace_id, connector_id}, grant);
  }
  switch (grant->status) {
    case store::GrantStatus::kRevoked:
      return absl::FailedPreconditionError(
          absl::StrCat("REVOKED: grant ", grant->grant_id, " is revoked: ", grant->status_reason));
    case store::GrantStatus::kReauthRequired:
      return absl::FailedPreconditionError(
          absl::StrCat("REAUTH_REQUIRED: grant ", grant->grant_id, ": ", grant->status_reason));
    case store::GrantStatus::kActive:
      break;
  }
  return grant;
}

absl::StatusOr<policy::CallerRule> Resolver::AllowWorkspace(policy::CallerIdentity& caller,
                                                            const std::string& workspace_id) const {
  const PolicySnapshot current = Snapshot();
  GV_ASSIGN_OR_RETURN(const policy::CallerRule* rule,
                      AllowWorkspaceUnder(current, caller, workspace_id));
  return *rule;
}

bool Resolver::MatchesACallerRule(const policy::CallerIdentity& caller) const {
  const std::shared_ptr<const policy::Policy> current = policy();
  return current != nullptr && Covers(caller, current->RequiredAttestation()) &&
         current->FindCaller(caller) != nullptr;
}

bool Resolver::DeclaresWorkspace(std::string_view workspace_id) const {
  const std::shared_ptr<const policy::Policy> current = policy();
  return current != nullptr && current->workspaces().contains(workspace_id);
}

absl::StatusOr<policy::CallerRule> Resolver::MatchCaller(policy::CallerIdentity& caller) const {
  const PolicySnapshot current = Snapshot();
  GV_ASSIGN_OR_RETURN(const policy::CallerRule* rule, MatchUnder(current, caller));
  return *rule;
}

absl::StatusOr<const policy::CallerRule*> Resolver::MatchUnder(const PolicySnapshot& snapshot,
                                                               policy::CallerIdentity& caller) {
  const policy::Policy* current = snapshot.policy.get();
  if (current == nullptr) return snapshot.refusal;
  // The policy may match on the executable's hash, computed once per
  // connection, of the very file attested at accept (HashAttestedExe refuses a
  // process that has executed another program since): never of whatever the
  // pid runs now.
  if (!Covers(caller, current->RequiredAttestation())) {
    GV_RETURN_IF_ERROR(policy::HashAttestedExe(caller));
  }
  const policy::CallerRule* rule = current->FindCaller(caller);
  // No rule: MatchCaller (same rules, same caller) says why.
  if (rule == nullptr) return current->MatchCaller(caller).status();
  // A process that executed another program keeps its pid, start time and
  // pidfd: if the rule named the program, the identity no longer holds.
  GV_RETURN_IF_ERROR(policy::StillSameCaller(caller, ExecutableChecksOf(*rule)));
  return rule;
}

absl::StatusOr<const policy::CallerRule*> Resolver::AllowWorkspaceUnder(
    const PolicySnapshot& current, policy::CallerIdentity& caller,
    const std::string& workspace_id) {
  GV_ASSIGN_OR_RETURN(const policy::CallerRule* rule, MatchUnder(current, caller));
  if (!rule->AllowsWorkspace(workspace_id)) {
    // Checked before any grant is looked up, so another workspace's grants
    // are not even confirmed to exist.
    return absl::PermissionDeniedError(absl::StrCat(
        "workspace '", workspace_id, "' is not allowed for the caller (", rule->where, ")"));
  }
  return rule;
}

absl::StatusOr<Resolved> Resolver::Resolve(policy::CallerIdentity& caller,
                                           const ResolveQuery& query,
                                           std::optional<store::Grant>* found) {
  if (query.workspace_id.empty() || query.connector_id.empty()) {
    return absl::InvalidArgumentError("resolve needs a workspace id and a connector id");
  }
  // One snapshot for the whole request, however many reloads happen meanwhile.
  const PolicySnapshot snapshot = Snapshot();
  std::shared_ptr<const policy::Policy> current = snapshot.policy;
  GV_ASSIGN_OR_RETURN(const policy::CallerRule* rule,
                      AllowWorkspaceUnder(snapshot, caller, query.workspace_id));
  GV_ASSIGN_OR_RETURN(std::shared_ptr<const store::Grant> grant,
                      FindGrant(query.workspace_id, query.connector_id));
  if (found != nullptr) *found = *grant;
  GV_ASSIGN_OR_RETURN(std::vector<std::string> scopes, CheckQuery(*current, *rule, *grant, query));
  GV_ASSIGN_OR_RETURN(tokens::SharedAccessToken token,
                      refresher_->GetAccessToken(grant->grant_id, query.min_valid, query.deadline));
  // The process that asked must still be the one that was attested, running
  // the program it was attested with: a PID reused meanwhile, or a process
  // that executed another program, must not receive the token.
  GV_RETURN_IF_ERROR(policy::StillSameCaller(caller, ExecutableChecksOf(*rule)));
  return Resolved{
      std::move(token), absl::InfiniteFuture(), std::move(grant), std::move(current), rule,
      std::move(scopes)};
}

absl::StatusOr<std::vector<std::string>> Resolver::CheckQuery(const policy::Policy& current,
                                                              const policy::CallerRule& rule,
                                                              const store::Grant& grant,
                                                              const ResolveQuery& query) {
  std::vector<std::string> scopes = query.scopes;
  if (scopes.empty()) {
    const policy::ToolDecl* tool = nullptr;
    if (query.tool) {
      auto ws = current.workspaces().find(query.workspace_id);
      if (ws != current.workspaces().end()) tool = ws->second.FindTool(*query.tool);
    }
    scopes = tool != nullptr ? tool->scopes : grant.scopes;
  }
  std::sort(scopes.begin(), scopes.end());
  scopes.erase(std::unique(scopes.begin(), scopes.end()), scopes.end());
  std::optional<std::string_view> tool;
  if (query.tool) tool = *query.tool;
  GV_RETURN_IF_ERROR(current.CheckResolve(rule, query.workspace_id, query.connector_id, tool,
                                          scopes, grant.scopes));
  return scopes;
}

std::shared_ptr<const store::Grant> Resolver::CachedGrant(const std::string& workspace_id,
                                                          const std::string& connector_id) {
  absl::MutexLock lock(&mu_);
  return DirectoryEntryLocked(workspace_id, connector_id);
}

std::shared_ptr<const store::Grant> Resolver::DirectoryEntryLocked(
    const std::string& workspace_id, const std::string& connector_id) const {
  auto it = directory_.find({workspace_id, connector_id});
  return it == directory_.end() ? nullptr : it->second;
}

std::optional<absl::StatusOr<Resolved>> Resolver::ResolveIfCached(
    const policy::CallerIdentity& caller, const ResolveQuery& query) {
  std::shared_ptr<const policy::Policy> current;
  std::shared_ptr<const store::Grant> grant;
  {
    absl::MutexLock lock(&mu_);  // one lock for both: this runs on the I/O threads
    current = policy_;
    grant = DirectoryEntryLocked(query.workspace_id, query.connector_id);
  }
  if (current == nullptr || query.workspace_id.empty() || query.connector_id.empty()) {
    return std::nullopt;  // the slow path says why
  }
  if (!Covers(caller, current->RequiredAttestation())) {
    return std::nullopt;  // the slow path hashes the executable
  }
  if (grant == nullptr || grant->status != store::GrantStatus::kActive) return std::nullopt;
  const policy::CallerRule* rule = current->FindCaller(caller);
  if (rule == nullptr || !rule->AllowsWorkspace(query.workspace_id)) return std::nullopt;
  absl::StatusOr<std::vector<std::string>> scopes = CheckQuery(*current, *rule, *grant, query);
  if (!scopes.ok()) return absl::StatusOr<Resolved>(scopes.status());
  std::optional<tokens::TokenCache::Lookup> cached =
      refresher_->GetCached(grant->grant_id, query.min_valid);
  if (!cached) return std::nullopt;
  if (absl::Status same = policy::StillSameCaller(caller, ExecutableChecksOf(*rule)); !same.ok()) {
    return absl::StatusOr<Resolved>(same);
  }
  return absl::StatusOr<Resolved>(Resolved{std::move(cached->token), cached->refresh_at,
                                           std::move(grant), std::move(current), rule,
                                           *std::move(scopes)});
}

}  // namespace grantvault::front
