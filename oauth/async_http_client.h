// The HTTPS client's asynchronous side, for callers on an event loop (the
// API proxy runs its calls on the front's I/O threads: docs/proxy.md). Same
// requests, checks, caps and connection reuse as HttpClient::Stream; the
// answer goes to a sink that may suspend the exchange (a caller that reads
// slowly holds the API's answer back).
#ifndef GRANTVAULT_OAUTH_ASYNC_HTTP_CLIENT_H_
#define GRANTVAULT_OAUTH_ASYNC_HTTP_CLIENT_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "oauth/http_client.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
// clang-format on

namespace grantvault::oauth {

// Receives a response as it arrives (AsyncHttpClient::StreamAsync); as
// ResponseSink, each call may suspend before it answers. `last` marks a
// part known to end the body; that may not be known (a chunked body's end
// can arrive on its own), and a body-less answer has no part at all.
class AsyncResponseSink {
 public:
  virtual ~AsyncResponseSink() = default;
  virtual boost::asio::awaitable<bool> OnHead(int status, const HttpHeaders& headers) = 0;
  virtual boost::asio::awaitable<bool> OnBody(std::string_view part, bool last) = 0;
};

// Thread-safe.
class AsyncHttpClient {
 public:
  virtual ~AsyncHttpClient() = default;
  // HttpClient::Stream on the calling coroutine's executor, which must be an
  // io_context run by one thread. Its connections live there and are reused
  // only by calls on that executor. `request`, `sink` and `options` must
  // outlive the call.
  virtual boost::asio::awaitable<absl::StatusOr<StreamResult>> StreamAsync(
      const HttpRequest& request, absl::Duration deadline, AsyncResponseSink& sink,
      const StreamOptions& options) = 0;
  // Closes the connections kept for reuse, every executor's: call it before
  // their io_contexts go.
  virtual void CloseIdleConnections() = 0;
};

// The Boost.Beast + OpenSSL implementation (NewHttpClient's).
absl::StatusOr<std::unique_ptr<AsyncHttpClient>> NewAsyncHttpClient(
    const HttpClientOptions& options);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_ASYNC_HTTP_CLIENT_H_
