// HTTPS client for talking to OAuth servers (token, revocation, userinfo,
// discovery and JWKS endpoints).
//
// Contract:
//  - https:// only. TLS 1.2 or newer; the server's certificate chain and host
//    name (or IP address) are always verified, against the system trust store
//    and/or a CA file from the configuration (private servers, tests).
//  - Redirects are never followed: a 3xx comes back as the response.
//  - Deadlines on connect and on the whole exchange; a cap on the response
//    size (headers + body).
//  - Idle connections are reused per (host, port), up to a small number.
//  - Request and response buffers are wiped when they are destroyed: bodies
//    carry client secrets, codes and tokens. Nothing is ever logged.
//
// Errors: Unavailable for connection failures and servers that misbehave at
// the HTTP level (malformed response, closed early), DeadlineExceeded for
// time-outs, Unauthenticated for a certificate or host-name failure ("TLS
// certificate verification failed for <host>: <reason>"), ResourceExhausted
// for a response over the cap, InvalidArgument for a URL that is not https or
// does not parse. An HTTP error status (4xx, 5xx) is not an error here: it is
// returned in the response.
#ifndef GRANTVAULT_OAUTH_HTTP_CLIENT_H_
#define GRANTVAULT_OAUTH_HTTP_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grantvault::oauth {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  HttpRequest() = default;
  HttpRequest(const HttpRequest&) = default;
  HttpRequest& operator=(const HttpRequest&) = default;
  ~HttpRequest();  // wipes body

  std::string method = "GET";
  std::string url;  // https://host[:port]/path?query
  HttpHeaders headers;
  std::string body;
};

struct HttpResponse {
  HttpResponse() = default;
  HttpResponse(HttpResponse&&) = default;
  HttpResponse& operator=(HttpResponse&&) = default;
  ~HttpResponse();  // wipes body

  int status = 0;
  HttpHeaders headers;  // names as sent by the server
  std::string body;

  // The first header named `name` (case-insensitive).
  std::optional<std::string> Header(std::string_view name) const;
};

// Receives a response as it arrives (HttpClient::Stream).
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // The final response's status and headers (names as sent). False stops the
  // exchange: the connection is dropped and Stream returns Cancelled.
  virtual bool OnHead(int status, const HttpHeaders& headers) = 0;
  // The next part of the body, transfer coding removed; valid for the call
  // only, and wiped after it. False stops the exchange as above.
  virtual bool OnBody(std::string_view part) = 0;
};

// Lets another thread end a Stream call at once: its socket is shut down and
// the call returns Cancelled. A call still connecting notices when the
// connection is made (within the connect timeout). One per call; thread-safe.
class Cancellation {
 public:
  void Cancel();
  bool cancelled() const;

  // For HttpClient implementations: the socket of the exchange under way.
  // Attach returns false (attaching nothing) once cancelled; Detach must be
  // called before that socket is closed or reused.
  bool Attach(int fd);
  void Detach();

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
};

struct StreamOptions {
  // Refuse to connect when the host is or resolves to a loopback, private,
  // link-local, unique-local, shared, multicast, reserved or unspecified
  // address (PermissionDenied). What is checked is what is connected to,
  // after name resolution, so a name that resolves to 10.0.0.1 is refused.
  bool public_addresses_only = false;
  // The response's size cap (headers and body); 0: the client's
  // max_response_bytes.
  size_t max_response_bytes = 0;
  Cancellation* cancellation = nullptr;  // optional
};

struct StreamResult {
  int status = 0;
  uint64_t body_bytes = 0;
};

// A URL as the client sends it (ParseHttpsUrl).
struct HttpsUrl {
  std::string host;  // lower-case DNS name, or an IP address without brackets
  bool host_is_ip = false;
  uint16_t port = 443;
  std::string authority;  // host[:port] as sent in Host, IPv6 in brackets
  std::string target;     // origin-form request target: /path?query (no fragment)
};

// How the client reads `url` (https only; no user information): the proxy
// checks the very parts the client will use.
absl::StatusOr<HttpsUrl> ParseHttpsUrl(std::string_view url);

// Whether `address` (an IPv4 or IPv6 literal) is one StreamOptions::
// public_addresses_only refuses. An address that does not parse is not public.
bool IsNonPublicAddress(std::string_view address);

struct HttpClientOptions {
  bool use_system_trust_store = true;
  std::string ca_file;  // PEM; added to (or, without the system store, instead of) the trust store
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration request_timeout = absl::Seconds(15);  // default for Send without a deadline
  size_t max_response_bytes = size_t{1} << 20;
  size_t max_idle_connections_per_host = 4;
  absl::Duration idle_connection_timeout = absl::Seconds(30);
  std::string user_agent = "grantvault/0.1";
};

// Thread-safe.
class HttpClient {
 public:
  virtual ~HttpClient() = default;
  virtual absl::StatusOr<HttpResponse> Send(const HttpRequest& request,
                                            absl::Duration deadline) = 0;
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) {
    return Send(request, absl::InfiniteDuration());  // request_timeout applies
  }
  // As Send, delivering the response to `sink` as it arrives instead of
  // collecting it. Errors as for Send; Cancelled when the sink stopped the
  // exchange or `options.cancellation` was cancelled. A request on a reused
  // connection that the server closed before answering is sent again on a
  // new one only if nothing reached the sink.
  // Clients that cannot (test doubles) answer Unimplemented.
  virtual absl::StatusOr<StreamResult> Stream(const HttpRequest& /*request*/,
                                              absl::Duration /*deadline*/, ResponseSink& /*sink*/,
                                              const StreamOptions& /*options*/) {
    return absl::UnimplementedError("this HTTP client does not stream responses");
  }
};

// The Boost.Beast + OpenSSL implementation. Fails if the CA file cannot be
// loaded.
absl::StatusOr<std::unique_ptr<HttpClient>> NewHttpClient(const HttpClientOptions& options);

// RFC 9110 token (a method, a header name), and field value (visible
// characters, obs-text, spaces and tabs): what the client accepts to send.
bool IsHttpToken(std::string_view s);
bool IsHttpFieldValue(std::string_view s);

// application/x-www-form-urlencoded encoding of `fields` (RFC 6749 appendix B).
std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields);
// Percent-encoding of one URL component (unreserved characters kept).
std::string PercentEncode(std::string_view s);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_HTTP_CLIENT_H_
