// The request handlers behind both sockets: Hello, Status, and on admin.sock
// the key operations. Parses each frame as a grantvault.v1.Request, checks the
// connection's state and the caller's rights, and answers with Responses.
//
// Threading: frames arrive on the server's I/O threads. Status is answered
// there from a snapshot refreshed at most once a second; everything that
// touches the token or the database runs on the service's worker pool, never
// on an I/O thread.
//
// The methods are defined by responsibility: front/service.cc (construction,
// connect and disconnect, caller admission, frame dispatch), admin_requests.cc,
// oauth_requests.cc, agent_resolve.cc, release_audit.cc, subscriptions.cc,
// revocation.cc, status.cc and audit_export.cc.
#ifndef GRANTVAULT_FRONT_SERVICE_H_
#define GRANTVAULT_FRONT_SERVICE_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "common/clock.h"
#include "common/secret_bytes.h"
#include "front/repeat_memo.h"
#include "front/resolver.h"
#include "front/unmatched_callers.h"
#include "grantvault/v1/envelope.pb.h"
#include "ipc/server.h"
#include "keys/custodian.h"
#include "oauth/authorizer.h"
#include "oauth/catalog.h"
#include "store/grant_store.h"
#include "tokens/token_source.h"

namespace grantvault::front {

inline constexpr char kServerVersion[] = "0.1.0";

struct AdminPolicy {
  // Peers allowed on admin.sock besides the daemon's own uid.
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
};

// Maps a Status to the protocol's Error (never copying anything but the
// message, which the callee guarantees holds no secret).
v1::Error StatusToError(const absl::Status& status);

class Proxy;

class Service {
 public:
  // Everything must outlive the service. `authorizer` and `catalog` may be
  // null (the OAuth engine is then unavailable: its requests are answered
  // UNAVAILABLE with the reason given).
  struct OAuth {
    oauth::AuthorizationFlow* authorizer = nullptr;
    const oauth::Catalog* catalog = nullptr;
    std::string unavailable_reason;
  };
  // The grants' store and the keys' custodian (the token, wherever it is held).
  Service(store::GrantStore* store, keys::Custodian* custodian, OAuth oauth, AdminPolicy admin,
          size_t worker_threads, Clock* clock);
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  ipc::FrameHandler* agent_handler();
  ipc::FrameHandler* admin_handler();
  // Serves Resolve and Subscribe on agent.sock (before the server starts;
  // without it they are answered UNAVAILABLE). `policy_file` is what
  // ReloadPolicy() reads; `threads` run resolves (which may wait on a refresh).
  struct Agents {
    Resolver* resolver = nullptr;
    std::string policy_file;
    size_t threads = 8;
  };
  void EnableAgents(Agents agents);
  // The audit log (null: auditing off), the token source (whose Revoke()
  // purges a revoked grant's token and fails its waiters) and what wakes the
  // upstream revoker. Before the server starts.
  struct Trail {
    audit::AuditLog* audit = nullptr;
    tokens::TokenSource* refresher = nullptr;
    std::function<void()> wake_revoker;
  };
  void EnableTrail(Trail trail) { trail_ = trail; }
  // Serves Proxy on agent.sock (before the server starts; without it,
  // proxied calls are answered UNAVAILABLE). Must outlive the service.
  void EnableProxy(Proxy* proxy) { proxy_ = proxy; }
  // Appends `event`; OK when auditing is off. An error means it was not
  // recorded: the caller must fail closed.
  absl::Status Audit(audit::Event event, audit::Durability durability);
  // The refresher marked a grant reauth_required: audit it, tell subscribers.
  void OnReauthRequired(std::string_view grant_id, std::string_view reason);
  // Another host sharing the store changed the grant (store/grant_change_feed.h;
  // it audited the change): revoked, its proxied calls here end, its token
  // goes from this host's caches, resolves waiting on it fail with REVOKED;
  // reauth_required, its token goes; either way this host's subscribers hear
  // of it. A new grant is announced AUTHORIZED, and the directory forgets
  // what it knew of its workspace and connector.
  void OnGrantChangedElsewhere(std::string_view grant_id);
  // The upstream revoker made an attempt: audit its outcome.
  void OnUpstreamAttempt(const store::Grant& grant, const store::UpstreamRevocation& state);

  // SIGHUP: re-reads the policy file. On any error (it does not parse, or
  // users other than the daemon's and root could write it) the previous
  // policy stays in force, or with `deny_on_failure` none does and every
  // agent request is refused until a reload succeeds; the error says which.
  // Either way Status reports the failure until the next good reload.
  absl::Status ReloadPolicy(bool deny_on_failure = false);
  // Ends (PERMISSION_DENIED) every Subscribe stream the current policy no
  // longer allows; ReloadPolicy calls it.
  void EndRefusedSubscriptions();
  // Sends `event` to every Subscribe stream open on its workspace.
  void PublishGrantEvent(const v1::GrantEvent& event);

  // Records a refused resolve (docs/audit.md, "Refusals"): a peer that no
  // caller rule matches only in a counted caller.unmatched system record; a
  // workspace the policy does not declare, and that has no chain, in the
  // system chain; anything else in the workspace's chain.
  void RecordRefusal(const ipc::PeerCredentials& peer, const policy::CallerIdentity* caller,
                     audit::Event event, const absl::Status& refusal);
  // For the connection count in Status; may be set after construction.
  void set_server(const ipc::Server* server) { server_ = server; }
  // SIGHUP: new admin rules apply to the next request.
  void ReloadAdminPolicy(AdminPolicy admin);
  // Stops taking work and waits for the workers to finish what they hold.
  void Stop();

 private:
  // A peer no caller rule matches: at most one caller.unmatched record per
  // interval per uid (UnmatchedCallerTally), uids told apart up to a bound.
  static constexpr absl::Duration kUnmatchedCallerRecordInterval = absl::Seconds(60);
  static constexpr size_t kUnmatchedCallerUids = 1024;

  class Handler;
  // What a memo made from a resolve on the I/O thread rests on.
  struct RepeatBasis {
    uint64_t generation = 0;  // Resolver::generation() before the resolve
    std::shared_ptr<const policy::CallerIdentity> caller;
  };
  // The caller on an agent connection, attested when it connected. Resolves
  // of one connection may run at once; each works on a copy.
  struct CallerSlot {
    absl::Mutex mu;
    // Replaced, never changed in place: readers share it without a copy.
    absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> identity ABSL_GUARDED_BY(mu) =
        absl::UnknownError("not attested");
    // Releases to this connection's process whose record is committed
    // (ReleaseKey → the audit epoch it was committed in, and the queued record
    // that counts this connection's repeats of it until the audit writer takes
    // it): a repeat of one of them is answered before its own record commits
    // (docs/audit.md). One record per release, so that a connection that
    // alternates between releases counts each into its own record.
    struct RecordedRelease {
      uint64_t epoch = 0;
      std::shared_ptr<audit::PendingCount> counting;  // null until a repeat queues one
    };
    absl::flat_hash_map<std::string, RecordedRelease> recorded_releases ABSL_GUARDED_BY(mu);
    // The last token answers sent on this connection (at most
    // kMaxEncodedReplies, one per grant and token), each encoded without its
    // request id (ResolvePart), in secret memory.
    struct EncodedReply {
      uint64_t serial = 0;
      std::shared_ptr<const store::Grant> grant;
      std::shared_ptr<const SecretBytes> part;
    };
    std::vector<EncodedReply> replies ABSL_GUARDED_BY(mu);
    size_t next_reply ABSL_GUARDED_BY(mu) = 0;  // the one replaced next when full
    // Recent counted releases (at most kMaxRepeatMemos, one per distinct
    // request), to answer their exact repeats (TryAnswerRepeat).
    std::vector<RepeatMemo> repeats ABSL_GUARDED_BY(mu);
    size_t next_repeat ABSL_GUARDED_BY(mu) = 0;  // the one replaced next when full
  };
  enum class RepeatKind {
    kFirst,      // not known to be recorded: wait for the record
    kCounted,    // a repeat, counted into a queued record
    kUncounted,  // a repeat that needs a (deferred) record of its own
  };
  // Kept as the connection's context (ipc::Connection::set_context), so
  // that a request finds it without a lock shared by every connection.
  struct ConnectionState {
    std::atomic<bool> hello_done{false};
    std::shared_ptr<CallerSlot> caller;  // agent connections only
  };
  static ConnectionState* StateOf(const ipc::Connection& connection) {
    return static_cast<ConnectionState*>(connection.context().get());
  }
  struct Subscription {
    std::weak_ptr<ipc::Connection> connection;
    uint64_t connection_id = 0;
    uint64_t request_id = 0;
  };
  struct Snapshot {
    absl::Time taken = absl::InfinitePast();
    v1::StatusReply reply;
  };
  // What Status says of the caller policy.
  struct PolicyState {
    absl::Time loaded_at = absl::InfinitePast();  // of the policy in force
    std::string last_reload_error;                // "" once a reload succeeds
    absl::Time last_reload_failed_at = absl::InfinitePast();
    bool denying = false;  // the last reload failed and no policy is in force
  };

  void OnFrame(v1::HelloReply::Role role, const std::shared_ptr<ipc::Connection>& connection,
               std::string_view payload);
  void OnConnect(v1::HelloReply::Role role, const std::shared_ptr<ipc::Connection>& connection);
  void OnDisconnect(const ipc::Connection& connection);
  void DispatchAgent(const std::shared_ptr<ipc::Connection>& connection, v1::Request request,
                     absl::Time received);
  void RunResolve(const std::shared_ptr<ipc::Connection>& connection, const v1::Request& request,
                  absl::Time deadline);
  // A resolve answered from memory alone (policy, grant directory, token
  // cache), on the I/O thread; false when it needs a worker.
  bool TryResolveOnIoThread(const std::shared_ptr<ipc::Connection>& connection,
                            const v1::Request& request, absl::Time received);
  // Whether a repeated release may be answered before its record: only while
  // the audit log keeps up.
  bool RepeatsGoFirst() const;
  // A frame that is the exact repeat of its connection's memo (RepeatMemo),
  // answered and counted with nothing but the memo, the caller's liveness
  // check and a few atomics, before the frame is even parsed; false (nothing
  // sent) when anything differs.
  bool TryAnswerRepeat(const std::shared_ptr<ipc::Connection>& connection, std::string_view frame,
                       absl::Time now);
  // Audits and answers a resolve: a token only once its release to this
  // process is recorded. With `basis`, a counted repeat becomes the slot's memo.
  void FinishResolve(const std::shared_ptr<ipc::Connection>& connection, const v1::Request& request,
                     const std::shared_ptr<CallerSlot>& slot, const policy::CallerIdentity* caller,
                     absl::StatusOr<Resolved> resolved,
                     const std::optional<RepeatBasis>& basis = std::nullopt);
  // Makes the counted release `key` (ReleaseKey) one of the slot's memos
  // (replacing the memo of the same request, else the oldest when full), if
  // the slot still counts that release into a queued record; `part` is its
  // encoded answer.
  static void RememberRepeat(CallerSlot& slot, const v1::Request& request, const std::string& key,
                             const Resolved& resolved, const RepeatBasis& basis, uint64_t epoch,
                             const std::shared_ptr<const SecretBytes>& part)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(slot.mu);
  // Whether the release named `key` (ReleaseKey) was recorded for this
  // connection's process in audit epoch `epoch` (and if so, counts it into the
  // connection's queued record when there is one); and remembering that it was.
  static RepeatKind CountRepeat(CallerSlot& slot, const std::string& key, uint64_t epoch);
  // The frame answering `request_id` with the resolved token (from the
  // connection's recent answers when one is of the same token of the same
  // grant), and its encoding without the request id (null when not kept).
  struct Reply {
    std::string frame;
    std::shared_ptr<const SecretBytes> part;
  };
  static absl::StatusOr<Reply> ReplyFrame(CallerSlot* slot, uint64_t request_id,
                                          const Resolved& resolved);
  static void RememberRecorded(CallerSlot& slot, const std::string& key, uint64_t epoch);
  // Counts the refusal of a peer no caller rule matches (at accept or on a
  // request) into its uid's caller.unmatched record.
  void CountUnmatched(const ipc::PeerCredentials& peer, const absl::Status& refusal);
  void RecordUnmatched(const UnmatchedCallerTally::Summary& summary);
  void RunSubscribe(const std::shared_ptr<ipc::Connection>& connection, const v1::Request& request);
  // A proxied call, on a proxy thread (front/agent_proxy.cc).
  void DispatchProxy(const std::shared_ptr<ipc::Connection>& connection, v1::Request request,
                     absl::Time received);
  // Ends one of the connection's proxied calls or Subscribe streams.
  void RunCancel(const std::shared_ptr<ipc::Connection>& connection, const v1::Request& request);
  std::shared_ptr<CallerSlot> CallerOf(const ipc::Connection& connection);
  // A new agent connection's caller, attested from its peer credentials.
  static std::shared_ptr<CallerSlot> AttestedSlot(const ipc::Connection& connection);
  // At accept and at Hello on agent.sock: OK unless the current policy has no rule for the
  // connection's caller (then the error to answer before closing).
  absl::Status CallerMatched(CallerSlot* slot) const;
  // Whether an agent connection's caller may be served: attested and, under a
  // policy, named by a rule (CallerMatched). If not, it is counted among the
  // unmatched peers, told why in an Error for `request_id`, closed, and false
  // is returned. At accept (request 0) and again at Hello.
  bool AdmitAgentCaller(ipc::Connection& connection, CallerSlot* slot, uint64_t request_id);
  // After an agent request was refused with `refusal`: closes the connection
  // when its caller can no longer be served at all (it executed another
  // program, or no rule of the current policy names it).
  void CloseIfCallerRefused(ipc::Connection& connection, const absl::Status& refusal,
                            const policy::CallerIdentity* caller) const;
  // A copy, so that concurrent requests of one connection never share it.
  static absl::StatusOr<policy::CallerIdentity> CopyCaller(CallerSlot* slot);
  // The slot's identity itself, for readers that do not change it.
  static absl::StatusOr<std::shared_ptr<const policy::CallerIdentity>> SharedCaller(
      CallerSlot* slot);
  void Dispatch(v1::HelloReply::Role role, const std::shared_ptr<ipc::Connection>& connection,
                v1::Request request, absl::Time received);
  // Whether the peer may make admin requests: the daemon's own uid; else the
  // role of the caller policy's first rule that matches the peer (attested at
  // connect); else [admin] allowed_uids, or allowed_gids against the peer's
  // primary and supplementary groups.
  absl::Status CheckAdmin(const ipc::Connection& connection, const v1::Request& request);
  // Status on agent.sock: only for a peer the caller policy names (on an
  // agent worker: matching may re-attest the caller).
  void AnswerAgentStatus(const std::shared_ptr<ipc::Connection>& connection, uint64_t request_id);
  // Answers from the snapshot when it is fresh enough; false when it is not.
  bool SendFreshStatus(ipc::Connection& connection, uint64_t request_id);
  void RunAdmin(const std::shared_ptr<ipc::Connection>& connection, v1::Request& request);
  // The OAuth requests (register, list connectors, begin/complete authorization).
  absl::Status RunOAuth(const ipc::Connection& connection, v1::Request& request,
                        v1::Response& response);
  void AnswerStatus(const std::shared_ptr<ipc::Connection>& connection, uint64_t request_id);
  v1::StatusReply ComputeStatus();
  absl::Status RunRevoke(const ipc::Connection& connection, const v1::Request& request,
                         v1::Response& response);
  absl::Status RunAuditExport(const std::shared_ptr<ipc::Connection>& connection,
                              const v1::Request& request, v1::Response& response);
  // After the store revoked `grant_id`: its cached token is erased, resolves
  // waiting on it fail REVOKED, and the directory forgets the (workspace,
  // connector) entry, so that nothing in memory serves it any more.
  void RetireInMemory(const std::string& workspace_id, const std::string& connector_id,
                      const std::string& grant_id, std::string reason);
  // A grant with its upstream revocation state, for answers.
  void FillGrant(const store::Grant& grant, v1::GrantInfo* out);
  void SendStatus(ipc::Connection& connection, uint64_t request_id, v1::StatusReply snapshot);

  store::GrantStore* const store_;
  keys::Custodian* const custodian_;
  const OAuth oauth_;
  Clock* const clock_;
  const absl::Time started_;
  const ipc::Server* server_ = nullptr;
  std::unique_ptr<Handler> agent_handler_;
  std::unique_ptr<Handler> admin_handler_;

  struct Workers;
  std::unique_ptr<Workers> workers_;
  Agents agents_;
  Trail trail_;
  Proxy* proxy_ = nullptr;
  UnmatchedCallerTally unmatched_callers_{kUnmatchedCallerRecordInterval, kUnmatchedCallerUids};
  std::unique_ptr<Workers> agent_workers_;

  absl::Mutex mu_;
  AdminPolicy admin_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<Subscription>, std::less<>> subscribers_ ABSL_GUARDED_BY(mu_);

  // Bumped whenever a token release could not be recorded: every release
  // remembered in a CallerSlot before then must be recorded again before its
  // token leaves. Shared with the audit callbacks, which may outlive a request.
  const std::shared_ptr<std::atomic<uint64_t>> audit_epoch_ =
      std::make_shared<std::atomic<uint64_t>>(0);

  absl::Mutex snapshot_mu_;
  Snapshot snapshot_ ABSL_GUARDED_BY(snapshot_mu_);
  PolicyState policy_state_ ABSL_GUARDED_BY(snapshot_mu_);
};

// Sends one Response on `connection` (final unless response.more()).
void SendResponse(ipc::Connection& connection, const v1::Response& response);

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_SERVICE_H_
