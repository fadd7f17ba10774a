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

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
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
};

// The Boost.Beast + OpenSSL implementation. Fails if the CA file cannot be
// loaded.
absl::StatusOr<std::unique_ptr<HttpClient>> NewHttpClient(const HttpClientOptions& options);

// application/x-www-form-urlencoded encoding of `fields` (RFC 6749 appendix B).
std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields);
// Percent-encoding of one URL component (unreserved characters kept).
std::string PercentEncode(std::string_view s);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_HTTP_CLIENT_H_
