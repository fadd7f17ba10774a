// The token-injecting API proxy (docs/proxy.md). An agent sends the API call
// itself (ProxyRequest); the proxy checks it exactly as a Resolve (caller,
// workspace, tool, scopes, grant), then against the tool's declared calls
// (policy::ToolDecl::http) and the connector's API bases (the egress
// allow-list), sends it with the grant's credential, and streams the answer
// back. The credential never leaves this process.
//
//   - HTTPS only, certificate verification always on; the private network
//     only for a registration that allows it (StreamOptions).
//   - Redirects are followed only within the API bases (at most
//     kMaxRedirects), the credential sent again; one elsewhere is refused.
//   - HTTP 401: the token is renewed once (TokenSource::Renew: one refresh
//     for every call that saw it refused) and the call sent again.
//   - HTTP 429/503 with Retry-After: UNAVAILABLE with retry_after_ms.
//   - A revocation ends every call of the grant at once (REVOKED), and the
//     grant is refused from then on; a Cancel ends one call (CANCELLED).
//   - Every call that reached the checks is audited (proxy.call: method, host,
//     path template, status, bytes; never a body, a header value or a query).
//
// Threads: a call runs on the event loop of the connection it came on (that
// connection's I/O thread), as a coroutine that never blocks it; what may
// block (a resolve that waits for a refresh or hashes the caller's
// executable, a token renewal, reading a registration) runs on the proxy's
// few threads meanwhile. Every method may be called from any thread.
#ifndef GRANTVAULT_FRONT_PROXY_H_
#define GRANTVAULT_FRONT_PROXY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "audit/audit_log.h"
#include "common/clock.h"
#include "front/resolver.h"
#include "grantvault/v1/envelope.pb.h"
#include "ipc/server.h"
#include "oauth/async_http_client.h"
#include "oauth/catalog.h"
#include "oauth/http_client.h"
#include "policy/attestation.h"
#include "store/grant_store.h"
#include "tokens/token_source.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
// clang-format on

namespace grantvault::front {

class Proxy {
 public:
  struct Limits {
    // What a request body may hold: it travels in the request's one frame.
    size_t max_request_body = 60 * 1024;
    size_t max_response_bytes = size_t{8} << 20;  // headers and body
    size_t max_calls = 256;                       // at once, every grant together; more are refused
    size_t max_calls_per_grant = 32;
    size_t blocking_threads = 4;                 // for the steps that may block (see above)
    absl::Duration timeout = absl::Seconds(60);  // a call's default (and longest) deadline
  };
  static constexpr int kMaxRedirects = 3;

  struct Deps {
    Resolver* resolver = nullptr;
    tokens::TokenSource* tokens = nullptr;
    store::GrantStore* store = nullptr;  // connector registrations
    const oauth::Catalog* catalog = nullptr;
    oauth::AsyncHttpClient* http = nullptr;
    audit::AuditLog* audit = nullptr;  // null: auditing off
    Clock* clock = nullptr;
    // A refusal of the checks that Resolve makes (caller, workspace, tool,
    // scopes, grant), for the service to record as it records resolves'.
    std::function<void(const ipc::PeerCredentials&, const policy::CallerIdentity&, audit::Event,
                       const absl::Status&)>
        record_refusal;
  };

  // Everything in `deps` must outlive the proxy.
  Proxy(Deps deps, Limits limits);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // When a call received at `received` must be answered: its deadline_ms,
  // at most Limits::timeout.
  absl::Time DeadlineOf(const v1::Request& request, absl::Time received) const;
  // Called, on a proxy thread, with the caller as the call's resolve
  // completed it (its executable's hash taken): for the connection's next calls.
  using CallerCompleted = std::function<void(const policy::CallerIdentity&)>;
  // Starts one call (request.proxy()) of `caller` (the connection's attested
  // caller) on the connection's event loop, and answers it there. Refuses
  // it at once (RESOURCE_EXHAUSTED) when Limits::max_calls are under way.
  // Call it on the connection's I/O thread.
  void Start(std::shared_ptr<ipc::Connection> connection, v1::Request request,
             policy::CallerIdentity caller, absl::Time deadline, CallerCompleted completed);

  // The grant was revoked: its calls end REVOKED now, and no call of it
  // starts from now on.
  void EndCallsOf(const std::string& grant_id, const std::string& reason);
  // Ends the connection's call `request_id` (CANCELLED); false when none runs.
  bool Cancel(uint64_t connection_id, uint64_t request_id);
  // The connection closed: its calls end (nobody is left to answer).
  void EndCallsOfConnection(uint64_t connection_id);
  // A registration changed: its API bases are read again.
  void ForgetConnector(const std::string& connector_id);
  // Ends every call and waits (a few seconds at most) until they have
  // finished on their event loops, then closes the idle connections to the
  // APIs: call it before the I/O threads stop. Start refuses afterwards.
  // Idempotent.
  void Stop();

 private:
  struct Call;
  struct Target;
  struct Registration;
  class Sink;
  class Running;

  // The call's coroutine: Serve, answered Internal if it throws.
  // `running` counts the call until the coroutine's frame goes.
  boost::asio::awaitable<void> Run(std::unique_ptr<Running> running,
                                   std::shared_ptr<ipc::Connection> connection, v1::Request request,
                                   policy::CallerIdentity caller, absl::Time deadline,
                                   CallerCompleted completed);
  boost::asio::awaitable<void> Serve(const std::shared_ptr<ipc::Connection>& connection,
                                     const v1::Request& request, policy::CallerIdentity& caller,
                                     absl::Time deadline, const CallerCompleted& completed);

  // The checks after Resolve's: where the call goes and whether the tool may
  // make it. Fills `record` with what the audit record says of the target.
  absl::StatusOr<Target> Check(const v1::ProxyRequest& in, const Resolved& resolved,
                               const Registration& registration, audit::Event& record);
  // The checks every hop (the first, and each redirect) must pass: a
  // canonical path within the API bases, and one the tool declares. Sets the
  // record's host and path template to the hop's.
  static absl::Status CheckHop(const Target& target, std::string_view method, audit::Event& record);
  // A connector's registration: the one in memory (null when none), or read
  // from the store (which may block) and kept.
  std::shared_ptr<const Registration> CachedRegistration(const std::string& connector_id);
  absl::StatusOr<std::shared_ptr<const Registration>> RegistrationOf(
      const std::string& connector_id);
  // The API bases of `grant` (its registration's, its metadata filled).
  absl::StatusOr<std::vector<std::string>> BasesOf(const store::Grant& grant,
                                                   const Registration& registration);
  // Admits a call of `grant_id` (not revoked, under the caps) and registers it.
  absl::StatusOr<std::shared_ptr<Call>> Admit(const std::string& grant_id, uint64_t connection_id,
                                              uint64_t request_id);
  void Retire(const std::shared_ptr<Call>& call);
  // OK unless the audit log is behind or failed to record a call lately.
  absl::Status AuditHealthy() const;

  const Deps deps_;
  const Limits limits_;
  // When a call's record last failed (unix ns; the distant past when never).
  std::atomic<int64_t> audit_failed_at_{std::numeric_limits<int64_t>::min() / 2};
  struct Pool;
  std::unique_ptr<Pool> pool_;

  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;  // calls' coroutines started and not yet ended
  std::map<std::string, std::set<std::shared_ptr<Call>>, std::less<>> calls_ ABSL_GUARDED_BY(mu_);
  // Revoked grants: a call admitted after the revocation is refused (a grant
  // never comes back; the set is bounded by kMaxRememberedRevocations).
  absl::flat_hash_set<std::string> revoked_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<const Registration>, std::less<>> registrations_
      ABSL_GUARDED_BY(mu_);
  uint64_t registrations_generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by ForgetConnector
};

// The request headers a proxied call keeps of the caller's: none that is
// hop-by-hop (RFC 9110 §7.6.1, and those its Connection header names), Host,
// Content-Length, Authorization, Cookie or Proxy-*. Refuses (InvalidArgument)
// more than 64 headers, a name that is not a token, a value with a control
// character, or more than 32 KiB in all.
absl::StatusOr<oauth::HttpHeaders> CallerHeadersToSend(const v1::ProxyRequest& in);
// The response headers passed back: none that is hop-by-hop, and no Set-Cookie.
bool IsResponseHeaderPassedBack(std::string_view name);
// Retry-After (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, as a wait
// from `now` (at most a day); nullopt when absent or unreadable.
std::optional<absl::Duration> RetryAfterOf(const oauth::HttpHeaders& headers, absl::Time now);

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_PROXY_H_
