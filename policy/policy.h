// The caller policy: which local processes may ask for which workspace's
// tokens, and for which tools and scopes. Loaded from a TOML file (format in
// docs/policy.md); agent tool manifests may be imported from JSON.
//
// A Policy is immutable once loaded and safe to read from any thread.
// PolicyHolder publishes the current Policy and swaps it on Reload(); readers
// take a shared_ptr snapshot that stays valid however many reloads follow.
#ifndef GRANTVAULT_POLICY_POLICY_H_
#define GRANTVAULT_POLICY_POLICY_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "policy/attestation.h"

namespace grantvault::policy {

enum class Role { kAgent, kAdmin };
std::string_view RoleName(Role role);

// One [[callers]] entry. Every matcher that is set must match (they are
// ANDed); a rule has at least one. `gid`/`group` match the primary group or
// any supplementary group.
struct CallerRule {
  std::string where;  // "file:line", for messages and audit
  std::optional<uid_t> uid;
  std::optional<std::string> user;
  std::optional<gid_t> gid;
  std::optional<std::string> group;
  std::optional<std::string> exe;         // absolute path, compared exactly
  std::optional<std::string> exe_sha256;  // 64 lowercase hex digits
  Role role = Role::kAgent;
  std::vector<std::string> workspaces;  // or exactly {"*"}: every workspace

  bool Matches(const CallerIdentity& caller) const;
  bool AllowsWorkspace(std::string_view workspace) const;
};

// A call a tool may make through the proxy, declared "METHOD /path/prefix":
// the method (upper case, or "*" for any) and a path prefix matched by whole
// segments: "/gmail/v1/users/me/messages" covers that path and
// ".../messages/123", never ".../messagesX". The query is not matched.
struct HttpAllowance {
  std::string method;
  std::string path_prefix;  // canonical (CheckHttpPath), without a trailing '/' but for "/"
  std::string declared;     // as written, for messages and audit
};

// A tool an agent declares: the same shape as an agent manifest entry.
struct ToolDecl {
  std::string name;
  std::string connector;
  std::vector<std::string> scopes;  // non-empty, sorted, deduplicated
  // The calls the tool may make through the proxy; empty: any call to the
  // connector's API bases (its scopes still bound what the API allows).
  std::vector<HttpAllowance> http;
  std::string where;  // "file:line" or "manifest.json: tools[i]"

  // The first allowance covering `method` and the canonical `path`, or null.
  const HttpAllowance* AllowsHttp(std::string_view method, std::string_view path) const;
};

// OK when `path` is a canonical absolute path that a prefix can be matched
// against safely: it starts with '/', has no empty, "." or ".." segment, no
// backslash, no percent-encoded '/', '\\' or '.', no query or fragment, and
// only visible ASCII. Anything else could reach another resource on the API
// than the prefix it seems to match.
absl::Status CheckHttpPath(std::string_view path);

// Parses one "METHOD /path/prefix" declaration.
absl::StatusOr<HttpAllowance> ParseHttpAllowance(std::string_view declared);

struct WorkspacePolicy {
  std::string id;
  bool allow_resolve_without_tool = false;
  std::vector<ToolDecl> tools;  // names unique within the workspace

  const ToolDecl* FindTool(std::string_view name) const;
};

class Policy {
 public:
  // Reads and validates a policy file. InvalidArgument naming file:line (and
  // the key) for a syntax error, an unknown key, a wrong type, a duplicate tool
  // name, empty scopes, an unknown role, a rule without matchers, a rule
  // allowing an undeclared workspace, or an unreadable/invalid manifest.
  // Relative manifest paths are resolved against the policy file's directory.
  static absl::StatusOr<Policy> Load(const std::string& path);
  // As Load, from text; `source_path` is used for messages and to resolve
  // relative manifest paths.
  static absl::StatusOr<Policy> Parse(std::string_view toml_text, const std::string& source_path);

  // The first rule (in file order) that matches, or PermissionDenied
  // "uid N is not in the policy".
  absl::StatusOr<CallerRule> MatchCaller(const CallerIdentity& caller) const;
  // The same rule without a copy (null when none matches): it lives as long
  // as this Policy.
  const CallerRule* FindCaller(const CallerIdentity& caller) const;

  // Whether `rule`'s caller may resolve a token of `connector` in `workspace`
  // with `requested_scopes`, given that the grant holds `grant_scopes`.
  // OK or PermissionDenied naming the reason. With a tool, every requested
  // scope must be both the tool's and the grant's; without one, the workspace
  // must allow it and every requested scope must be the grant's.
  absl::Status CheckResolve(const CallerRule& rule, std::string_view workspace,
                            std::string_view connector, std::optional<std::string_view> tool,
                            const std::vector<std::string>& requested_scopes,
                            const std::vector<std::string>& grant_scopes) const;

  // The smallest scope set covering every tool `workspace` declares for
  // `connector`: the union, sorted and deduplicated. NotFound when the
  // workspace is not in the policy or declares no tool for the connector.
  absl::StatusOr<std::vector<std::string>> SuggestScopes(std::string_view workspace,
                                                         std::string_view connector) const;

  // The tool `workspace` declares under `name`, or null.
  const ToolDecl* FindTool(std::string_view workspace, std::string_view name) const;

  // What AttestCaller must collect for MatchCaller to evaluate every rule.
  AttestOptions RequiredAttestation() const;

  const std::vector<CallerRule>& callers() const { return callers_; }
  const std::map<std::string, WorkspacePolicy, std::less<>>& workspaces() const {
    return workspaces_;
  }
  const std::string& source_path() const { return source_path_; }

 private:
  Policy() = default;

  std::string source_path_;
  std::vector<CallerRule> callers_;
  std::map<std::string, WorkspacePolicy, std::less<>> workspaces_;
};

// The current policy, swapped atomically on reload (SIGHUP, later).
class PolicyHolder {
 public:
  explicit PolicyHolder(Policy initial);
  // Loads `path`; fails as Policy::Load does.
  static absl::StatusOr<std::unique_ptr<PolicyHolder>> Create(const std::string& path);

  PolicyHolder(const PolicyHolder&) = delete;
  PolicyHolder& operator=(const PolicyHolder&) = delete;

  // Loads `path` and, if it is valid, makes it current. Otherwise the previous
  // policy stays current and the returned status says why.
  absl::Status Reload(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_);

  // A snapshot; never null. Stays valid after later reloads.
  std::shared_ptr<const Policy> Current() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const Policy> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grantvault::policy

#endif  // GRANTVAULT_POLICY_POLICY_H_
