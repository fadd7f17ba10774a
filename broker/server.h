// The broker process's side of the link (docs/architecture.md, "Two
// processes"): takes the front's calls off the channel, runs each on a worker
// (a token call may wait for a refresh, a completion for the provider), and
// answers. It holds what the front never does: the token session, the
// Refresher with its refresh tokens, the Authorizer with client secrets and
// PKCE verifiers. What it sends back is limited to what broker.proto lists.
#ifndef GRANTVAULT_BROKER_SERVER_H_
#define GRANTVAULT_BROKER_SERVER_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "audit/anchor.h"
#include "audit/signer.h"
#include "common/secret_bytes.h"
#include "common/unique_fd.h"
#include "grantvault/broker/v1/broker.pb.h"
#include "ipc/packet_channel.h"
#include "keys/custodian.h"
#include "oauth/authorizer.h"
#include "tokens/refresher.h"

namespace grantvault::broker {

// Everything must outlive the server.
struct ServerDeps {
  tokens::Refresher* refresher = nullptr;
  oauth::AuthorizationFlow* authorizer = nullptr;  // null: the OAuth engine is unavailable
  std::string oauth_unavailable_reason;
  keys::Custodian* custodian = nullptr;
  audit::Signer* signer = nullptr;
  audit::AnchorStore* anchors = nullptr;
  std::function<absl::StatusOr<SecretBytes>()> fingerprint_key;
  std::function<void()> wake_revoker;
  v1::HelloReply hello;
};

class Server {
 public:
  // Takes the broker's end of the channel; serves nothing until Serve().
  explicit Server(UniqueFd fd, size_t workers = 16);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Sends an event to the front (thread-safe; dropped once the link is gone).
  void SendEvent(const v1::Event& event);
  // Serves calls until the front closes the channel (or exits), and returns
  // once every call in progress has finished. Blocking.
  void Serve(const ServerDeps& deps);

 private:
  void OnPacket(std::string_view bytes);
  void Run(uint64_t call_id, v1::Request request);
  v1::Reply Handle(uint64_t call_id, v1::Request& request);
  void Reply(uint64_t call_id, v1::Reply& reply);
  void WorkerLoop();

  ServerDeps deps_;
  std::unique_ptr<ipc::PacketChannel> channel_;
  const size_t worker_count_;
  absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::pair<uint64_t, v1::Request>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

}  // namespace grantvault::broker

#endif  // GRANTVAULT_BROKER_SERVER_H_
