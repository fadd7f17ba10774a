// Revocation at the target tool (DESIGN §7 "Revoke", step 5): after a grant
// is revoked locally (store::GrantStore::RevokeGrant records it as pending),
// one background thread sends the connector's own revocation request
// (oauth/revocation.h) and retries failures with exponential backoff until
// the provider confirms. It never blocks the local revocation. The state
// (pending / revoked / already_invalid / manual, attempts, last error, next
// attempt) lives in the store, so `grants show` and `status` show it and a
// restart resumes it. Once done, the grant's sealed tokens are deleted.
//
// Thread-safe. Every dependency must outlive the revoker.
#ifndef GRANTVAULT_DAEMON_UPSTREAM_REVOKER_H_
#define GRANTVAULT_DAEMON_UPSTREAM_REVOKER_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "hsm/sealer.h"
#include "oauth/authorizer.h"
#include "oauth/http_client.h"
#include "store/grant_store.h"

namespace grantvault::daemon {

class UpstreamRevoker {
 public:
  struct Deps {
    store::GrantStore* store = nullptr;
    hsm::Sealer* sealer = nullptr;
    oauth::HttpClient* http = nullptr;
    oauth::ConnectorResolver* connectors = nullptr;
    Clock* clock = nullptr;
    // Whether a refresh of the grant is still running (it may commit a rotated
    // refresh token: revoking the one before it could leave the new one
    // alive). Such a grant's attempt waits. May be empty.
    std::function<bool(const std::string& grant_id)> refreshing;
    // After every attempt, with the state recorded (for the audit log).
    std::function<void(const store::Grant&, const store::UpstreamRevocation&)> on_attempt;
  };
  struct Options {
    absl::Duration initial_backoff = absl::Seconds(1);
    absl::Duration max_backoff = absl::Minutes(5);
    absl::Duration request_timeout = absl::Seconds(20);
    // How long an attempt waits for a running refresh of the same grant.
    absl::Duration refresh_wait = absl::Milliseconds(200);
  };

  UpstreamRevoker(Deps deps, Options options);
  ~UpstreamRevoker();  // Stop()
  UpstreamRevoker(const UpstreamRevoker&) = delete;
  UpstreamRevoker& operator=(const UpstreamRevoker&) = delete;

  // Starts the thread; pending revocations in the store are resumed.
  void Start();
  // Wakes the thread: a new pending revocation was recorded.
  void Wake();
  // Stops after the attempt in progress (bounded by request_timeout).
  void Stop();

  // One pass over everything due now; returns how many attempts were made.
  // Exposed for tests; the thread calls it.
  int RunDue();

 private:
  void Loop();
  // One attempt for one grant; records the outcome.
  void Attempt(const store::UpstreamRevocation& pending);
  absl::StatusOr<store::UpstreamRevocationState> Send(const store::Grant& grant);

  const Deps deps_;
  const Options options_;
  std::thread thread_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_UPSTREAM_REVOKER_H_
