// The C++ client library for both sockets.
//
// A Client owns one connection and reuses it for every call; it reconnects
// (and says Hello again) on the next call after the connection broke. Calls
// may be made from many threads at once: requests are pipelined on the one
// connection and responses matched by request id. Every call has a deadline.
#ifndef GRANTVAULT_IPC_CLIENT_H_
#define GRANTVAULT_IPC_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grantvault/v1/envelope.pb.h"

namespace grantvault::ipc {

inline constexpr uint32_t kProtocolVersion = 1;

struct ClientOptions {
  std::string client_name = "grantvault-client";
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration default_deadline = absl::Seconds(10);
};

// Maps a protocol Error to an absl::Status with the same meaning (REVOKED and
// REAUTH_REQUIRED become FailedPrecondition with the code named in the
// message; the original is in the payload "grantvault.error_code").
absl::Status ErrorToStatus(const v1::Error& error);

class Client {
 public:
  // Connects and exchanges Hello. Unavailable when nothing listens at
  // `socket_path`; the daemon's Error when it refuses the protocol version or
  // the caller (PermissionDenied), or refuses the connection over a
  // connection limit (ResourceExhausted).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& socket_path,
                                                         const ClientOptions& options = {});
  virtual ~Client() = default;

  using PartialCallback = std::function<void(const v1::Response&)>;
  using ResponseCallback = std::function<void(absl::StatusOr<v1::Response>)>;

  // Sends `request` (its request_id is assigned by the client) and waits for
  // its final response. Responses with more = true are passed to `on_partial`
  // first, on the client's I/O thread. Transport failures and the deadline are
  // returned as a Status (Unavailable, DeadlineExceeded); an Error answered by
  // the server is returned inside the Response (see ErrorToStatus).
  virtual absl::StatusOr<v1::Response> Call(v1::Request request, absl::Duration deadline,
                                            PartialCallback on_partial = nullptr) = 0;
  absl::StatusOr<v1::Response> Call(v1::Request request) {
    return Call(std::move(request), default_deadline());
  }

  // Asynchronous form: `on_done` is called once, on the client's I/O thread,
  // with the final response or the transport error.
  virtual void CallAsync(v1::Request request, absl::Duration deadline, ResponseCallback on_done,
                         PartialCallback on_partial = nullptr) = 0;

  virtual const v1::HelloReply& hello() const = 0;
  virtual absl::Duration default_deadline() const = 0;
};

// Opens a Subscribe stream (agent.sock) for `workspace_id` on `client`:
// `on_event` is called on the client's I/O thread for every GrantEvent, the
// first one of kind SUBSCRIBED (the stream is open: no event can be missed
// from then on); `on_end` once, when the stream ends — the connection broke
// (Unavailable), or the server refused it (e.g. PermissionDenied: the caller
// may not use the workspace). The stream has no deadline.
void SubscribeGrantEvents(Client& client, const std::string& workspace_id,
                          std::function<void(const v1::GrantEvent&)> on_event,
                          std::function<void(absl::Status)> on_end);

// An API call made by the daemon's proxy with the grant's credential
// (agent.sock; docs/proxy.md): `on_head` once with the API's status and
// headers, then `on_body` for every part of its body, both on the client's
// I/O thread; then the body's length. A refusal or failure is the daemon's
// Error as a Status (ErrorToStatus), also after the head (REVOKED mid-call);
// the API's 429/503 with Retry-After come back as Unavailable. The token
// never reaches the caller.
absl::StatusOr<uint64_t> ProxyCall(Client& client, v1::ProxyRequest call, absl::Duration deadline,
                                   std::function<void(const v1::ProxyResponseHead&)> on_head,
                                   std::function<void(std::string_view)> on_body);

}  // namespace grantvault::ipc

#endif  // GRANTVAULT_IPC_CLIENT_H_
