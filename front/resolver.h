// Resolve (DESIGN §7): an agent host asks for a connector's access token in
// one workspace. The Resolver checks the caller against the policy, finds the
// workspace's grant for the connector, checks the requested scopes against the
// tool and the grant, gets a token from the Refresher (cache or one
// single-flight refresh), and re-checks that the calling process is still the
// one that was attested before the token leaves.
//
// Errors (all messages are free of secrets):
//   PermissionDenied   no policy, caller not in the policy, workspace/tool/
//                      scope not allowed, the calling process exited or its
//                      PID was reused
//   Unauthenticated    the calling process executed another program since
//                      it was attested (the connection should be closed)
//   NotFound           the workspace never held a grant for the connector
//   FailedPrecondition "REVOKED: …" / "REAUTH_REQUIRED: …"
//   Unavailable        upstream trouble, "… retry_after_ms=N"
//   InvalidArgument    a malformed request
//
// Thread-safe; blocking (run it on a worker thread, never an I/O thread).
#ifndef GRANTVAULT_FRONT_RESOLVER_H_
#define GRANTVAULT_FRONT_RESOLVER_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policy/attestation.h"
#include "policy/policy.h"
#include "store/grant_store.h"
#include "tokens/token_source.h"

namespace grantvault::front {

struct ResolveQuery {
  std::string workspace_id;
  std::string connector_id;
  std::optional<std::string> tool;
  std::vector<std::string> scopes;  // empty: the tool's, or the grant's
  absl::Duration min_valid = absl::Seconds(60);
  absl::Time deadline = absl::InfiniteFuture();
};

struct Resolved {
  tokens::SharedAccessToken token;  // never null; shared with the token cache
  // When the token's refresh ahead falls due (answered from the cache), or never.
  absl::Time refresh_at = absl::InfiniteFuture();
  // Shared with the Resolver's directory: never copied on the hot path.
  std::shared_ptr<const store::Grant> grant;
  // The policy the call was checked against, and its rule that allowed the
  // caller (points into `policy`).
  std::shared_ptr<const policy::Policy> policy;
  const policy::CallerRule* rule = nullptr;
  std::vector<std::string> scopes;  // the scopes the call was checked for
};

// Whether `have` holds all that a policy needing `need` matches on: the
// executable's hash once a rule needs it (an executable that could not be
// read never matches an exe rule, so it needs none).
bool Covers(const policy::CallerIdentity& have, const policy::AttestOptions& need);

// What a release allowed by `rule` must re-check of the caller's executable
// (policy::StillSameCaller): the parts the rule matches on.
policy::ExecutableChecks ExecutableChecksOf(const policy::CallerRule& rule);

class Resolver {
 public:
  // Both must outlive the Resolver. Until SetPolicy() gives it a policy,
  // every resolve is refused.
  Resolver(store::GrantStore* store, tokens::TokenSource* refresher)
      : store_(store), refresher_(refresher) {}

  // Publishes the policy resolves are checked against (null: none).
  void SetPolicy(std::shared_ptr<const policy::Policy> policy) ABSL_LOCKS_EXCLUDED(mu_);
  // Publishes no policy at all: every agent request is refused with
  // `refusal` (a PermissionDenied saying why) until SetPolicy gives one.
  void RefuseAll(absl::Status refusal) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const policy::Policy> policy() const ABSL_LOCKS_EXCLUDED(mu_);

  // Attests a newly connected caller with what the current policy needs.
  absl::StatusOr<policy::CallerIdentity> Attest(pid_t pid, uid_t uid, gid_t gid) const;

  // The policy rule that lets `caller` use `workspace_id` (Resolve and
  // Subscribe both start here). `caller` may be completed as below.
  absl::StatusOr<policy::CallerRule> AllowWorkspace(policy::CallerIdentity& caller,
                                                    const std::string& workspace_id) const;

  // The rule of the current policy that matches `caller` (whatever its
  // workspaces), or PermissionDenied saying why none does. `caller` may be
  // re-attested as below.
  absl::StatusOr<policy::CallerRule> MatchCaller(policy::CallerIdentity& caller) const;

  // For the record of a refusal (docs/audit.md, "Refusals"): whether a caller
  // rule of the current policy matches `caller` as attested (false without a
  // policy, or when the policy needs more than was attested), and whether the
  // current policy declares `workspace_id`.
  bool MatchesACallerRule(const policy::CallerIdentity& caller) const;
  bool DeclaresWorkspace(std::string_view workspace_id) const;

  // `caller` may be completed (its executable's hash, of the file attested at
  // accept) when the policy now needs it. `found` (optional) receives
  // the grant as soon as it is known, for the audit of a refusal.
  absl::StatusOr<Resolved> Resolve(policy::CallerIdentity& caller, const ResolveQuery& query,
                                   std::optional<store::Grant>* found = nullptr);

  // Resolve without blocking, for the I/O thread: the answer when everything
  // it needs is in memory (the caller attested with what the policy needs,
  // the grant in the directory, its token cached), nullopt otherwise (then
  // call Resolve on a worker).
  std::optional<absl::StatusOr<Resolved>> ResolveIfCached(const policy::CallerIdentity& caller,
                                                          const ResolveQuery& query);

  // Drops the cached directory entry of (workspace, connector): called after
  // an authorization, a scope change or a revocation.
  void ForgetGrant(const std::string& workspace_id, const std::string& connector_id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Grows whenever an answer may have changed: a new policy, a forgotten
  // grant, a cached token replaced or dropped. Read before a resolve, it lets
  // the caller reuse that resolve's answer for as long as it is unchanged
  // (and the token still valid and not due for refresh: Resolved::refresh_at).
  uint64_t generation() const {
    return generation_.load(std::memory_order_acquire) + refresher_->cache_generation();
  }

 private:
  // The policy in force, or why there is none.
  struct PolicySnapshot {
    std::shared_ptr<const policy::Policy> policy;
    absl::Status refusal;  // when `policy` is null
  };
  PolicySnapshot Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);
  // The rule of `current` that matches `caller` (re-attested when `current`
  // needs more than it holds).
  static absl::StatusOr<const policy::CallerRule*> MatchUnder(const PolicySnapshot& current,
                                                              policy::CallerIdentity& caller);
  // The rule of `current` that lets `caller` use `workspace_id`.
  static absl::StatusOr<const policy::CallerRule*> AllowWorkspaceUnder(
      const PolicySnapshot& current, policy::CallerIdentity& caller,
      const std::string& workspace_id);
  // The scopes the query asks for (sorted, unique), checked against the
  // policy and the grant.
  static absl::StatusOr<std::vector<std::string>> CheckQuery(const policy::Policy& current,
                                                             const policy::CallerRule& rule,
                                                             const store::Grant& grant,
                                                             const ResolveQuery& query);
  // The directory entry alone (never the store); null when absent.
  std::shared_ptr<const store::Grant> CachedGrant(const std::string& workspace_id,
                                                  const std::string& connector_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const store::Grant> DirectoryEntryLocked(const std::string& workspace_id,
                                                           const std::string& connector_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::shared_ptr<const store::Grant>> FindGrant(const std::string& workspace_id,
                                                                const std::string& connector_id)
      ABSL_LOCKS_EXCLUDED(mu_);

  store::GrantStore* const store_;
  tokens::TokenSource* const refresher_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const policy::Policy> policy_ ABSL_GUARDED_BY(mu_);
  // Why every agent request is refused while `policy_` is null.
  absl::Status refusal_ ABSL_GUARDED_BY(mu_) = absl::PermissionDeniedError(
      "no caller policy is configured, so no agent may use grantvault (docs/policy.md)");
  // (workspace, connector) → the current grant's non-secret fields, or the
  // last revoked one when there is no current one. Only this daemon writes
  // grants (one daemon per store), and it forgets an entry on every change it
  // makes (authorization, revocation, reauth_required).
  std::map<std::pair<std::string, std::string>, std::shared_ptr<const store::Grant>> directory_
      ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> generation_{0};  // bumped after SetPolicy and ForgetGrant
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_RESOLVER_H_
