// A scriptable HTTPS/1.1 server on 127.0.0.1 for tests of HTTP clients and of
// the OAuth providers' response shapes.
//
// It listens on an ephemeral loopback port, runs on its own thread, records
// every request it receives and answers each with a handler the test
// supplies. Replies can also misbehave on purpose: stall, hang up, send too
// much or send something that is not HTTP. Every read, write and handshake
// has a time limit, connections and request sizes are capped, and the
// destructor stops accepting, closes every connection and joins the thread.
//
// Thread-safety: every method may be called from any thread. The handler runs
// on the server's thread, one request at a time.
#ifndef GRANTVAULT_TESTS_TESTING_TLS_TEST_SERVER_H_
#define GRANTVAULT_TESTS_TESTING_TLS_TEST_SERVER_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grantvault::testing {

struct RecordedRequest {
  size_t connection = 0;  // 1-based number of the TCP connection that carried it
  std::string method;
  std::string target;                                        // as on the request line: /path?query
  std::vector<std::pair<std::string, std::string>> headers;  // as received, in order
  std::string body;

  // The first header named `name` (case-insensitive).
  std::optional<std::string> Header(std::string_view name) const;
};

struct Reply {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  bool keep_alive = true;  // false: "Connection: close", then close
  bool chunked = false;    // chunked transfer coding instead of Content-Length

  // Faults.
  std::chrono::milliseconds stall{0};  // wait this long before answering
  bool close_without_answer = false;   // hang up instead of answering
  bool close_after_answer = false;     // hang up after answering, without saying so
  size_t oversized_body_bytes = 0;     // > 0: a body of this many 'x' instead of `body`
  bool garbage = false;                // answer with bytes that are not HTTP, then close
};

using ReplyHandler = std::function<Reply(const RecordedRequest&)>;

struct TlsTestServerOptions {
  std::string cert_file;  // PEM, the server certificate (chain)
  std::string key_file;   // PEM private key
  ReplyHandler handler;   // none: 200 with an empty body
  // The newest TLS version offered, e.g. TLS1_1_VERSION to play an outdated
  // server; 0 leaves OpenSSL's defaults.
  int max_tls_version = 0;
  size_t max_connections = 64;  // connections beyond this are closed at once
  size_t max_request_bytes = size_t{1} << 20;
  std::chrono::milliseconds io_timeout{5000};  // per handshake, read and write
};

class TlsTestServer {
 public:
  static absl::StatusOr<std::unique_ptr<TlsTestServer>> Start(TlsTestServerOptions options);
  ~TlsTestServer();
  TlsTestServer(const TlsTestServer&) = delete;
  TlsTestServer& operator=(const TlsTestServer&) = delete;

  uint16_t port() const;
  // https://127.0.0.1:<port><target>
  std::string Url(std::string_view target = "/") const;

  void SetHandler(ReplyHandler handler);
  std::vector<RecordedRequest> requests() const;
  size_t request_count() const;
  size_t accepted_connections() const;
  // True once `count` requests have been received.
  bool WaitForRequests(size_t count, absl::Duration timeout) const;

 private:
  class Impl;
  explicit TlsTestServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_TLS_TEST_SERVER_H_
