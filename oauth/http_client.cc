#include "oauth/http_client.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <uriparser/Uri.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/async_http_client.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
// clang-format on

namespace grantvault::oauth {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxUrlLength = 8192;
constexpr size_t kMaxMethodLength = 32;
constexpr size_t kMaxResponseBytesLimit = size_t{1} << 30;
constexpr size_t kMaxIdleConnectionsPerHostLimit = 64;
// Idle connections kept across all hosts.
constexpr size_t kMaxIdleConnectionsTotal = 64;
// 1xx answers skipped before the final response.
constexpr int kMaxInterimResponses = 8;
constexpr absl::Duration kMaxTimeout = absl::Hours(1);
// What one read of a response takes from the connection, at most.
constexpr size_t kReadChunk = 16384;

void WipeHeaders(HttpHeaders& headers) {
  for (auto& [name, value] : headers) {
    WipeString(name);
    WipeString(value);
  }
}

// Wipes memory before giving it back: Beast's buffers, fields and bodies hold
// request and response bytes (secrets, codes, tokens), including the blocks a
// growing buffer leaves behind.
template <typename T>
class WipingAllocator {
 public:
  using value_type = T;

  WipingAllocator() noexcept = default;
  template <typename U>
  WipingAllocator(const WipingAllocator<U>& /*other*/) noexcept {}  // NOLINT: rebinding

  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept {
    WipeMemory(p, n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }

  template <typename U>
  bool operator==(const WipingAllocator<U>& /*other*/) const noexcept {
    return true;
  }
};

// Deletes a read chunk (kReadChunk bytes) after wiping it.
struct WipingDelete {
  void operator()(char* p) const noexcept {
    WipeMemory(p, kReadChunk);
    delete[] p;
  }
};

using WipingString = std::basic_string<char, std::char_traits<char>, WipingAllocator<char>>;
using ReadBuffer = beast::basic_flat_buffer<WipingAllocator<char>>;
using TlsStream = ssl::stream<beast::tcp_stream>;

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

std::string ToString(beast::string_view s) { return std::string(s.data(), s.size()); }

bool IsTchar(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsReplayable(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "PUT" ||
         method == "DELETE";
}

// Where a request goes. Error messages name `authority`, never the path or
// query, which may carry secrets.
using ParsedUrl = HttpsUrl;

std::string_view RangeView(const UriTextRangeA& range) {
  if (range.first == nullptr || range.afterLast == nullptr) return {};
  return std::string_view(range.first, static_cast<size_t>(range.afterLast - range.first));
}

class ParsedUri {
 public:
  ParsedUri() = default;
  ~ParsedUri() {
    if (parsed_) uriFreeUriMembersA(&uri_);
  }
  ParsedUri(const ParsedUri&) = delete;
  ParsedUri& operator=(const ParsedUri&) = delete;

  bool Parse(std::string_view text) {
    const char* error_pos = nullptr;
    parsed_ = uriParseSingleUriExA(&uri_, text.data(), text.data() + text.size(), &error_pos) ==
              URI_SUCCESS;
    return parsed_;
  }
  const UriUriA& uri() const { return uri_; }

 private:
  UriUriA uri_{};
  bool parsed_ = false;
};

}  // namespace

absl::StatusOr<HttpsUrl> ParseHttpsUrl(std::string_view url) {
  if (url.empty() || url.size() > kMaxUrlLength) {
    return absl::InvalidArgumentError("URL is empty or too long");
  }
  ParsedUri parsed;
  if (!parsed.Parse(url)) return absl::InvalidArgumentError("URL does not parse");
  const UriUriA& uri = parsed.uri();
  const std::string_view scheme = RangeView(uri.scheme);
  if (!absl::EqualsIgnoreCase(Sv(scheme), "https")) {
    return absl::InvalidArgumentError(
        absl::StrCat("only https URLs are allowed, not '", Sv(scheme), "'"));
  }
  if (uri.userInfo.first != nullptr) {
    return absl::InvalidArgumentError("URL must not carry user information");
  }

  ParsedUrl out;
  bool ipv6 = false;
  if (uri.hostData.ip4 != nullptr) {
    const asio::ip::address_v4::bytes_type bytes{
        uri.hostData.ip4->data[0], uri.hostData.ip4->data[1], uri.hostData.ip4->data[2],
        uri.hostData.ip4->data[3]};
    out.host = asio::ip::address_v4(bytes).to_string();
    out.host_is_ip = true;
  } else if (uri.hostData.ip6 != nullptr) {
    asio::ip::address_v6::bytes_type bytes{};
    std::copy(std::begin(uri.hostData.ip6->data), std::end(uri.hostData.ip6->data), bytes.begin());
    out.host = asio::ip::address_v6(bytes).to_string();
    out.host_is_ip = true;
    ipv6 = true;
  } else if (uri.hostData.ipFuture.first != nullptr) {
    return absl::InvalidArgumentError("URL has an unsupported IP literal");
  } else {
    const std::string_view host = RangeView(uri.hostText);
    const bool valid = !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
      return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
    });
    if (!valid) return absl::InvalidArgumentError("URL has no valid host name");
    out.host = absl::AsciiStrToLower(Sv(host));
  }

  const std::string_view port = RangeView(uri.portText);
  if (!port.empty()) {
    uint32_t value = 0;
    const bool digits = port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) {
                          return absl::ascii_isdigit(static_cast<unsigned char>(c));
                        });
    if (digits) {
      for (const char c : port) value = value * 10 + static_cast<uint32_t>(c - '0');
    }
    if (!digits || value == 0 || value > 65535) {
      return absl::InvalidArgumentError("URL has an invalid port");
    }
    out.port = static_cast<uint16_t>(value);
  }

  out.authority = ipv6 ? absl::StrCat("[", out.host, "]") : out.host;
  if (out.port != 443) absl::StrAppend(&out.authority, ":", out.port);

  // The authority ends at the first '/', '?' or '#' after "//" (RFC 3986
  // section 3.2); the fragment is never sent.
  const size_t authority_start = url.find("//");
  if (authority_start == std::string_view::npos) {
    return absl::InvalidArgumentError("URL has no authority");
  }
  const size_t target_start = std::min(url.find_first_of("/?#", authority_start + 2), url.size());
  const size_t target_end = std::min(url.find('#', target_start), url.size());
  const std::string_view target = url.substr(target_start, target_end - target_start);
  if (target.empty() || target.front() != '/') out.target = "/";
  out.target.append(target);
  return out;
}

namespace {

absl::Status ValidateRequest(const HttpRequest& request) {
  if (request.method.size() > kMaxMethodLength || !IsHttpToken(request.method)) {
    return absl::InvalidArgumentError("HTTP method is not a token");
  }
  for (const auto& [name, value] : request.headers) {
    if (!IsHttpToken(name)) return absl::InvalidArgumentError("HTTP header name is not a token");
    if (!IsHttpFieldValue(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTP header ", Sv(name), " has a control character in its value"));
    }
    for (const std::string_view reserved :
         {"host", "content-length", "transfer-encoding", "connection", "upgrade"}) {
      if (absl::EqualsIgnoreCase(Sv(name), Sv(reserved))) {
        return absl::InvalidArgumentError(
            absl::StrCat("HTTP header ", Sv(name), " is set by the client itself"));
      }
    }
  }
  return absl::OkStatus();
}

WipingString SerializeRequest(const HttpRequest& request, const ParsedUrl& url,
                              std::string_view default_user_agent, bool close_after) {
  bool has_user_agent = false;
  size_t size = request.method.size() + url.target.size() + url.authority.size() + 128 +
                default_user_agent.size() + request.body.size();
  for (const auto& [name, value] : request.headers) {
    size += name.size() + value.size() + 4;
    if (absl::EqualsIgnoreCase(Sv(name), "user-agent")) has_user_agent = true;
  }
  WipingString out;
  out.reserve(size);
  const auto append = [&out](std::string_view s) { out.append(s.data(), s.size()); };
  append(request.method);
  append(" ");
  append(url.target);
  append(" HTTP/1.1\r\nHost: ");
  append(url.authority);
  append("\r\n");
  if (!has_user_agent && !default_user_agent.empty()) {
    append("User-Agent: ");
    append(default_user_agent);
    append("\r\n");
  }
  for (const auto& [name, value] : request.headers) {
    append(name);
    append(": ");
    append(value);
    append("\r\n");
  }
  if (!request.body.empty() || request.method == "POST" || request.method == "PUT" ||
      request.method == "PATCH") {
    append("Content-Length: ");
    append(std::to_string(request.body.size()));
    append("\r\n");
  }
  if (close_after) append("Connection: close\r\n");
  append("\r\n");
  append(request.body);
  return out;
}

absl::Status IoFailure(const ErrorCode& ec, Clock::time_point expiry, std::string_view what,
                       const ParsedUrl& url) {
  if (ec == beast::error::timeout || Clock::now() >= expiry) {
    return absl::DeadlineExceededError(absl::StrCat(Sv(what), " ", url.authority, " timed out"));
  }
  return absl::UnavailableError(
      absl::StrCat(Sv(what), " ", url.authority, " failed: ", ec.message()));
}

using Executor = asio::any_io_executor;
template <typename T>
using Awaitable = asio::awaitable<T>;

// Completion tokens that report errors in `ec` instead of throwing.
auto Into(ErrorCode& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

// One TLS connection. A blocking call's runs on its own small io_context,
// driven by the calling thread (Run); an asynchronous call's lives on the
// caller's event loop. Only one exchange uses a connection at a time.
class Connection {
 public:
  explicit Connection(ssl::context& tls)
      : own_io_(std::make_unique<asio::io_context>(1)), stream_(own_io_->get_executor(), tls) {}
  Connection(ssl::context& tls, Executor loop) : stream_(std::move(loop), tls) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  TlsStream& stream() { return stream_; }
  beast::tcp_stream& transport() { return stream_.next_layer(); }
  // Kept for every exchange on this connection, so that a call allocates
  // neither. Exchange wipes the body part after each use; the read buffer is
  // wiped when the connection goes back to the pool, and both when it is
  // freed.
  ReadBuffer& read_buffer() { return read_buffer_; }  // the answer's bytes as read
  std::span<char> body_part() { return {body_part_.get(), kReadChunk}; }  // decoded body

  // Runs `op` (which uses this connection) on the connection's own
  // io_context until it completes; for a blocking call's connection only.
  template <typename T>
  T Run(Awaitable<T> op) {
    std::optional<T> result;
    std::exception_ptr failure;
    asio::co_spawn(*own_io_, std::move(op), [&](std::exception_ptr e, T value) {
      failure = e;
      if (!e) result.emplace(std::move(value));
    });
    own_io_->restart();
    own_io_->run();
    if (failure) std::rethrow_exception(failure);
    return *std::move(result);
  }

  // False if the peer has closed the connection or sent something unasked
  // since the last response: such a connection must not carry a request.
  bool LooksIdle() {
    pollfd poll_fd{};
    poll_fd.fd = transport().socket().native_handle();
    poll_fd.events = POLLIN;
    return ::poll(&poll_fd, 1, 0) == 0;
  }

 private:
  std::unique_ptr<asio::io_context> own_io_;  // declared first: it outlives the stream
  TlsStream stream_;
  ReadBuffer read_buffer_;
  std::unique_ptr<char[], WipingDelete> body_part_{new char[kReadChunk]};
};

// Name resolution runs on a helper thread of its own, so that a hung resolver
// can neither outlive the deadline nor hold up an event loop or a shutdown;
// the thread finishes on its own.
class Resolution {
 public:
  static absl::StatusOr<std::shared_ptr<Resolution>> Start(const ParsedUrl& url) {
    auto resolution = std::make_shared<Resolution>();
    try {
      std::thread([resolution, host = url.host, port = url.port] {
        asio::io_context io(1);
        tcp::resolver resolver(io);
        ErrorCode ec;
        const auto results =
            resolver.resolve(host, std::to_string(port), tcp::resolver::numeric_service, ec);
        absl::MutexLock lock(&resolution->mu_);
        resolution->ec_ = ec;
        if (!ec) {
          for (const auto& entry : results) resolution->endpoints_.push_back(entry.endpoint());
        }
        resolution->done_ = true;
        // Under the lock: the waiter, once it has stopped waiting, is never
        // woken (its event loop may be gone by then).
        if (resolution->wake_) resolution->wake_();
      }).detach();
    } catch (const std::system_error& e) {
      return absl::UnavailableError(absl::StrCat("cannot start name resolution: ", e.what()));
    }
    return resolution;
  }

  // Waits on the calling thread.
  absl::StatusOr<std::vector<tcp::endpoint>> Wait(const ParsedUrl& url,
                                                  Clock::time_point deadline) {
    const absl::Duration remaining = absl::FromChrono(
        std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()));
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done_), remaining)) return TimedOut(url);
    return ResultLocked(url);
  }

  // Waits on the calling coroutine's event loop, without blocking it.
  Awaitable<absl::StatusOr<std::vector<tcp::endpoint>>> WaitAsync(const ParsedUrl& url,
                                                                  Clock::time_point deadline) {
    const Executor loop = co_await asio::this_coro::executor;
    auto timer = std::make_shared<asio::steady_timer>(loop, deadline);
    {
      absl::MutexLock lock(&mu_);
      if (!done_) {
        wake_ = [loop, weak = std::weak_ptr<asio::steady_timer>(timer)] {
          asio::post(loop, [weak] {
            if (const auto t = weak.lock()) t->cancel();
          });
        };
      }
    }
    // Also when the coroutine is destroyed unfinished (its loop stopped).
    const absl::Cleanup stop_waking = [this] {
      absl::MutexLock lock(&mu_);
      wake_ = nullptr;
    };
    ErrorCode ec;
    if (!Done()) co_await timer->async_wait(Into(ec));
    absl::MutexLock lock(&mu_);
    if (!done_) co_return TimedOut(url);
    co_return ResultLocked(url);
  }

 private:
  bool Done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  static absl::Status TimedOut(const ParsedUrl& url) {
    return absl::DeadlineExceededError(absl::StrCat("resolving ", url.host, " timed out"));
  }
  absl::StatusOr<std::vector<tcp::endpoint>> ResultLocked(const ParsedUrl& url)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ec_) {
      return absl::UnavailableError(absl::StrCat("cannot resolve ", url.host, ": ", ec_.message()));
    }
    if (endpoints_.empty())
      return absl::UnavailableError(absl::StrCat("no address for ", url.host));
    return endpoints_;
  }

  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  ErrorCode ec_ ABSL_GUARDED_BY(mu_);
  std::vector<tcp::endpoint> endpoints_ ABSL_GUARDED_BY(mu_);
  std::function<void()> wake_ ABSL_GUARDED_BY(mu_);
};

// The addresses to connect to, checked as `public_only` asks. Every address,
// not only the first: a name that resolves to a public and a private address
// could be connected to either.
absl::Status CheckAddresses(const ParsedUrl& url, const std::vector<tcp::endpoint>& endpoints,
                            bool public_only) {
  if (!public_only) return absl::OkStatus();
  for (const tcp::endpoint& endpoint : endpoints) {
    const std::string address = endpoint.address().to_string();
    if (IsNonPublicAddress(address)) {
      return absl::PermissionDeniedError(
          absl::StrCat(url.host, " is or resolves to ", address,
                       ", a loopback, private or reserved address, which may not be reached"));
    }
  }
  return absl::OkStatus();
}

// The address of an IP-literal URL; nullopt for a name.
absl::StatusOr<std::optional<tcp::endpoint>> LiteralEndpoint(const ParsedUrl& url) {
  if (!url.host_is_ip) return std::nullopt;
  ErrorCode ec;
  const asio::ip::address address = asio::ip::make_address(url.host, ec);
  if (ec) return absl::InvalidArgumentError("URL has an invalid IP address");
  return tcp::endpoint(address, url.port);
}

// Connects `connection` to one of `endpoints` and makes the TLS handshake,
// the certificate verified for the URL's host, all by `connect_by`.
Awaitable<absl::Status> Handshake(Connection& connection, const ParsedUrl& url,
                                  std::vector<tcp::endpoint> endpoints,
                                  Clock::time_point connect_by) {
  SSL* ssl = connection.stream().native_handle();
  if (url.host_is_ip) {
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), url.host.c_str()) != 1) {
      co_return absl::InternalError("cannot set the expected IP address");
    }
  } else {
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    // Server Name Indication, for names only (RFC 6066 section 3).
    if (SSL_set1_host(ssl, url.host.c_str()) != 1 ||
        SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                 const_cast<char*>(url.host.c_str())) != 1) {
      co_return absl::InternalError("cannot set the expected host name");
    }
  }

  ErrorCode ec;
  connection.transport().expires_at(connect_by);
  co_await connection.transport().async_connect(endpoints, Into(ec));
  if (ec) co_return IoFailure(ec, connect_by, "connecting to", url);
  ErrorCode ignored;
  connection.transport().socket().set_option(tcp::no_delay(true), ignored);

  connection.transport().expires_at(connect_by);
  co_await connection.stream().async_handshake(ssl::stream_base::client, Into(ec));
  if (ec) {
    if (ec == beast::error::timeout || Clock::now() >= connect_by) {
      co_return absl::DeadlineExceededError(
          absl::StrCat("TLS handshake with ", url.authority, " timed out"));
    }
    const long verify_result = SSL_get_verify_result(ssl);
    if (verify_result != X509_V_OK) {
      co_return absl::UnauthenticatedError(
          absl::StrCat("TLS certificate verification failed for ", url.host, ": ",
                       X509_verify_cert_error_string(verify_result)));
    }
    co_return absl::UnavailableError(
        absl::StrCat("TLS handshake with ", url.authority, " failed: ", ec.message()));
  }
  co_return absl::OkStatus();
}

struct ExchangeOutcome {
  bool reusable = false;
  // Nothing at all came back: on a reused connection the server most likely
  // closed it while the request was on its way.
  bool nothing_received = false;
  bool head_delivered = false;  // the sink has seen the response
};

// Collects a response for Send: the body in wiping memory while it grows.
class CollectingSink final : public ResponseSink {
 public:
  explicit CollectingSink(HttpResponse& out) : out_(out) {}
  ~CollectingSink() override = default;

  bool OnHead(int status, const HttpHeaders& headers) override {
    out_.status = status;
    out_.headers = headers;
    return true;
  }
  bool OnBody(std::string_view part) override {
    body_.append(part.data(), part.size());
    return true;
  }
  void Finish() { out_.body.assign(body_.data(), body_.size()); }

 private:
  HttpResponse& out_;
  WipingString body_;
};

// A blocking call's sink, as the exchange (a coroutine) sees it.
class SinkOnThread final : public AsyncResponseSink {
 public:
  explicit SinkOnThread(ResponseSink& sink) : sink_(sink) {}
  Awaitable<bool> OnHead(int status, const HttpHeaders& headers) override {
    co_return sink_.OnHead(status, headers);
  }
  Awaitable<bool> OnBody(std::string_view part, bool /*last*/) override {
    co_return sink_.OnBody(part);
  }

 private:
  ResponseSink& sink_;
};

// Shuts the exchange's socket down on Cancel while it is attached.
class AttachedSocket {
 public:
  AttachedSocket(Cancellation* cancellation, int fd) : cancellation_(cancellation) {
    attached_ = cancellation_ == nullptr || cancellation_->Attach(fd);
  }
  ~AttachedSocket() {
    if (cancellation_ != nullptr && attached_) cancellation_->Detach();
  }
  AttachedSocket(const AttachedSocket&) = delete;
  AttachedSocket& operator=(const AttachedSocket&) = delete;
  bool attached() const { return attached_; }

 private:
  Cancellation* const cancellation_;
  bool attached_ = false;
};

bool Cancelled(const StreamOptions& options) {
  return options.cancellation != nullptr && options.cancellation->cancelled();
}

absl::Status CancelledError(const ParsedUrl& url) {
  return absl::CancelledError(absl::StrCat("the request to ", url.authority, " was cancelled"));
}

// What a call sends and how, worked out once for both kinds of call.
struct Prepared {
  ParsedUrl url;
  WipingString wire;
  bool head = false;
  size_t cap = 0;
  Clock::time_point deadline;
  std::string pool_key;  // "host:port", "|public" for connections checked to be public
};

// Empties `buffer` and zeroes all of its storage: once empty, a flat buffer
// starts again at the beginning of its storage, which prepare() then spans.
void WipeReadBuffer(ReadBuffer& buffer) {
  buffer.consume(buffer.size());
  const auto all = buffer.prepare(buffer.capacity());
  WipeMemory(all.data(), all.size());
}

// Sends the request on `connection` and delivers the answer to `sink`.
Awaitable<absl::StatusOr<StreamResult>> Exchange(Connection& connection, const Prepared& call,
                                                 AsyncResponseSink& sink,
                                                 const StreamOptions& options,
                                                 ExchangeOutcome& outcome) {
  const ParsedUrl& url = call.url;
  const Clock::time_point deadline = call.deadline;
  const size_t cap = call.cap;
  const AttachedSocket attached(options.cancellation,
                                connection.transport().socket().native_handle());
  if (!attached.attached()) co_return CancelledError(url);
  // Errors after a cancellation are its consequence: say so.
  const auto failure = [&](absl::Status status) {
    return Cancelled(options) ? CancelledError(url) : status;
  };

  ErrorCode ec;
  connection.transport().expires_at(deadline);
  co_await asio::async_write(connection.stream(), asio::buffer(call.wire.data(), call.wire.size()),
                             Into(ec));
  if (ec) {
    outcome.nothing_received = true;
    co_return failure(IoFailure(ec, deadline, "sending a request to", url));
  }

  const auto too_large = [&] {
    return absl::ResourceExhaustedError(
        absl::StrCat("response from ", url.authority, " exceeds ", cap, " bytes"));
  };
  const auto read_failure = [&](const ErrorCode& e) {
    if (e == http::error::body_limit || e == http::error::header_limit ||
        e == http::error::buffer_overflow) {
      return too_large();
    }
    return failure(IoFailure(e, deadline, "reading the response from", url));
  };

  ReadBuffer& buffer = connection.read_buffer();
  // Beast reads as much as the buffer has room for, and at least 512 bytes:
  // room from the start, or a body would arrive 512 bytes at a time.
  buffer.reserve(kReadChunk);
  size_t used = 0;  // header bytes so far, interim responses included
  for (int interim = 0;; ++interim) {
    http::response_parser<http::buffer_body, WipingAllocator<char>> parser;
    parser.header_limit(static_cast<std::uint32_t>(
        std::min<size_t>(cap - used, std::numeric_limits<std::uint32_t>::max())));
    parser.body_limit(static_cast<std::uint64_t>(cap - used));
    if (call.head) parser.skip(true);
    connection.transport().expires_at(deadline);
    const size_t header_bytes =
        co_await http::async_read_header(connection.stream(), buffer, parser, Into(ec));
    if (ec) {
      outcome.nothing_received = interim == 0 && !parser.got_some() && buffer.size() == 0;
      co_return read_failure(ec);
    }
    used += std::min(header_bytes, cap - used);
    const unsigned status = parser.get().result_int();
    if (status >= 100 && status < 200) {
      if (status == 101 || interim + 1 >= kMaxInterimResponses) {
        co_return absl::UnavailableError(
            absl::StrCat("unexpected informational responses from ", url.authority));
      }
      continue;
    }

    const size_t body_budget = cap - used;
    // (A HEAD or 304 answer's Content-Length names a body that is not sent.)
    const auto content_length = parser.content_length();
    if (!call.head && status != 304 && content_length && *content_length > body_budget) {
      co_return too_large();
    }
    parser.body_limit(static_cast<std::uint64_t>(body_budget));

    HttpHeaders headers;
    for (const auto& field : parser.get()) {
      headers.emplace_back(ToString(field.name_string()), ToString(field.value()));
    }
    outcome.head_delivered = true;
    const bool go_on = co_await sink.OnHead(static_cast<int>(status), headers);
    WipeHeaders(headers);
    if (!go_on) co_return CancelledError(url);

    StreamResult result;
    result.status = static_cast<int>(status);
    // Decoded body bytes pass through this buffer on their way to the sink.
    const std::span<char> part = connection.body_part();
    while (!parser.is_done()) {
      parser.get().body().data = part.data();
      parser.get().body().size = part.size();
      connection.transport().expires_at(deadline);
      // What has arrived goes on at once (a slow or streamed answer is not
      // held back until the buffer fills).
      co_await http::async_read_some(connection.stream(), buffer, parser, Into(ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        WipeMemory(part.data(), part.size());  // how much a failed read left is unknown
        co_return read_failure(ec);
      }
      const size_t n = part.size() - parser.get().body().size;
      if (n == 0) continue;
      result.body_bytes += n;
      const bool more = co_await sink.OnBody(std::string_view(part.data(), n), parser.is_done());
      WipeMemory(part.data(), n);
      if (!more) co_return CancelledError(url);
    }
    if (Cancelled(options)) co_return CancelledError(url);
    outcome.reusable = parser.keep_alive() && !parser.need_eof() && buffer.size() == 0;
    connection.transport().expires_never();
    co_return result;
  }
}

// Whether a call that failed on a reused connection may be sent again on a
// new one. A request that must not be sent twice (a token exchange) never
// is: the server may have acted on it.
bool RetryOnFreshConnection(const absl::StatusOr<StreamResult>& result,
                            const ExchangeOutcome& outcome, const HttpRequest& request,
                            const StreamOptions& options) {
  return !result.ok() && outcome.nothing_received && !outcome.head_delivered &&
         IsReplayable(request.method) && !absl::IsDeadlineExceeded(result.status()) &&
         !Cancelled(options);
}

class BeastHttpClient final : public HttpClient, public AsyncHttpClient {
 public:
  BeastHttpClient(const HttpClientOptions& options, std::unique_ptr<ssl::context> tls)
      : options_(options), tls_(std::move(tls)) {}
  ~BeastHttpClient() override { CloseIdleConnections(); }

  using HttpClient::Send;
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request, absl::Duration deadline) override {
    HttpResponse response;
    CollectingSink sink(response);
    absl::StatusOr<StreamResult> result = Stream(request, deadline, sink, StreamOptions{});
    if (!result.ok()) return result.status();
    sink.Finish();
    return response;
  }

  absl::StatusOr<StreamResult> Stream(const HttpRequest& request, absl::Duration deadline,
                                      ResponseSink& sink, const StreamOptions& options) override {
    try {
      return StreamOnThread(request, deadline, sink, options);
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("HTTPS client: ", e.what()));
    }
  }

  Awaitable<absl::StatusOr<StreamResult>> StreamAsync(const HttpRequest& request,
                                                      absl::Duration deadline,
                                                      AsyncResponseSink& sink,
                                                      const StreamOptions& options) override {
    try {
      co_return co_await StreamOnLoop(request, deadline, sink, options);
    } catch (const std::exception& e) {
      co_return absl::InternalError(absl::StrCat("HTTPS client: ", e.what()));
    }
  }

  void CloseIdleConnections() override {
    std::map<std::string, std::deque<IdleConnection>> closing;  // closed outside the lock
    absl::MutexLock lock(&mu_);
    closing.swap(idle_);
    idle_count_ = 0;
  }

 private:
  struct IdleConnection {
    std::unique_ptr<Connection> connection;
    Clock::time_point since;
  };

  absl::StatusOr<Prepared> Prepare(const HttpRequest& request, absl::Duration deadline,
                                   const StreamOptions& options) const;
  absl::StatusOr<StreamResult> StreamOnThread(const HttpRequest& request, absl::Duration deadline,
                                              ResponseSink& sink, const StreamOptions& options);
  Awaitable<absl::StatusOr<StreamResult>> StreamOnLoop(const HttpRequest& request,
                                                       absl::Duration deadline,
                                                       AsyncResponseSink& sink,
                                                       const StreamOptions& options);
  Clock::time_point ConnectBy(Clock::time_point deadline) const {
    return std::min(deadline, Clock::now() + ToClock(options_.connect_timeout));
  }
  std::unique_ptr<Connection> TakeIdle(const std::string& key);
  void ReturnIdle(const std::string& key, std::unique_ptr<Connection> connection);
  void EvictExpiredLocked(Clock::time_point now, std::vector<std::unique_ptr<Connection>>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Pooling() const {
    return options_.max_idle_connections_per_host > 0 &&
           options_.idle_connection_timeout > absl::ZeroDuration();
  }

  const HttpClientOptions options_;
  const std::unique_ptr<ssl::context> tls_;

  absl::Mutex mu_;
  // Per Prepared::pool_key (and, for an event loop's connections, the loop),
  // oldest first.
  std::map<std::string, std::deque<IdleConnection>> idle_ ABSL_GUARDED_BY(mu_);
  size_t idle_count_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<Prepared> BeastHttpClient::Prepare(const HttpRequest& request,
                                                  absl::Duration deadline,
                                                  const StreamOptions& options) const {
  Prepared call;
  GV_ASSIGN_OR_RETURN(call.url, ParseHttpsUrl(request.url));
  GV_RETURN_IF_ERROR(ValidateRequest(request));
  const absl::Duration timeout = std::min(deadline, options_.request_timeout);
  if (timeout <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError(
        absl::StrCat("no time left for a request to ", call.url.authority));
  }
  call.cap = options.max_response_bytes == 0
                 ? options_.max_response_bytes
                 : std::min(options.max_response_bytes, kMaxResponseBytesLimit);
  call.deadline = Clock::now() + ToClock(timeout);
  call.wire = SerializeRequest(request, call.url, options_.user_agent, !Pooling());
  call.head = request.method == "HEAD";
  call.pool_key = absl::StrCat(call.url.authority, call.url.port == 443 ? ":443" : "",
                               options.public_addresses_only ? "|public" : "");
  if (Cancelled(options)) return CancelledError(call.url);
  return call;
}

absl::StatusOr<StreamResult> BeastHttpClient::StreamOnThread(const HttpRequest& request,
                                                             absl::Duration deadline,
                                                             ResponseSink& sink,
                                                             const StreamOptions& options) {
  GV_ASSIGN_OR_RETURN(const Prepared call, Prepare(request, deadline, options));
  SinkOnThread on_thread(sink);
  if (std::unique_ptr<Connection> idle = TakeIdle(call.pool_key)) {
    ExchangeOutcome outcome;
    absl::StatusOr<StreamResult> result =
        idle->Run(Exchange(*idle, call, on_thread, options, outcome));
    if (!RetryOnFreshConnection(result, outcome, request, options)) {
      if (result.ok() && outcome.reusable) ReturnIdle(call.pool_key, std::move(idle));
      return result;
    }
  }

  const Clock::time_point connect_by = ConnectBy(call.deadline);
  GV_ASSIGN_OR_RETURN(std::optional<tcp::endpoint> literal, LiteralEndpoint(call.url));
  std::vector<tcp::endpoint> endpoints;
  if (literal) {
    endpoints.push_back(*literal);
  } else {
    GV_ASSIGN_OR_RETURN(std::shared_ptr<Resolution> resolution, Resolution::Start(call.url));
    GV_ASSIGN_OR_RETURN(endpoints, resolution->Wait(call.url, connect_by));
  }
  GV_RETURN_IF_ERROR(CheckAddresses(call.url, endpoints, options.public_addresses_only));
  auto connection = std::make_unique<Connection>(*tls_);
  GV_RETURN_IF_ERROR(
      connection->Run(Handshake(*connection, call.url, std::move(endpoints), connect_by)));
  ExchangeOutcome outcome;
  absl::StatusOr<StreamResult> result =
      connection->Run(Exchange(*connection, call, on_thread, options, outcome));
  if (result.ok() && outcome.reusable) ReturnIdle(call.pool_key, std::move(connection));
  return result;
}

Awaitable<absl::StatusOr<StreamResult>> BeastHttpClient::StreamOnLoop(
    const HttpRequest& request, absl::Duration deadline, AsyncResponseSink& sink,
    const StreamOptions& options) {
  absl::StatusOr<Prepared> prepared = Prepare(request, deadline, options);
  if (!prepared.ok()) co_return prepared.status();
  const Prepared& call = *prepared;
  const Executor loop = co_await asio::this_coro::executor;
  // An event loop's connections are its own: their sockets live on it.
  const std::string key =
      absl::StrCat(call.pool_key, "|loop@",
                   reinterpret_cast<uintptr_t>(&asio::query(loop, asio::execution::context)));
  if (std::unique_ptr<Connection> idle = TakeIdle(key)) {
    ExchangeOutcome outcome;
    absl::StatusOr<StreamResult> result = co_await Exchange(*idle, call, sink, options, outcome);
    if (!RetryOnFreshConnection(result, outcome, request, options)) {
      if (result.ok() && outcome.reusable) ReturnIdle(key, std::move(idle));
      co_return result;
    }
  }

  const Clock::time_point connect_by = ConnectBy(call.deadline);
  absl::StatusOr<std::optional<tcp::endpoint>> literal = LiteralEndpoint(call.url);
  if (!literal.ok()) co_return literal.status();
  absl::StatusOr<std::vector<tcp::endpoint>> endpoints;
  if (*literal) {
    endpoints = std::vector<tcp::endpoint>{**literal};
  } else {
    absl::StatusOr<std::shared_ptr<Resolution>> resolution = Resolution::Start(call.url);
    if (!resolution.ok()) co_return resolution.status();
    endpoints = co_await (*resolution)->WaitAsync(call.url, connect_by);
  }
  if (!endpoints.ok()) co_return endpoints.status();
  if (absl::Status allowed = CheckAddresses(call.url, *endpoints, options.public_addresses_only);
      !allowed.ok()) {
    co_return allowed;
  }
  auto connection = std::make_unique<Connection>(*tls_, loop);
  if (absl::Status connected =
          co_await Handshake(*connection, call.url, *std::move(endpoints), connect_by);
      !connected.ok()) {
    co_return connected;
  }
  ExchangeOutcome outcome;
  absl::StatusOr<StreamResult> result =
      co_await Exchange(*connection, call, sink, options, outcome);
  if (result.ok() && outcome.reusable) ReturnIdle(key, std::move(connection));
  co_return result;
}

void BeastHttpClient::EvictExpiredLocked(Clock::time_point now,
                                         std::vector<std::unique_ptr<Connection>>& evicted) {
  const Clock::duration idle_timeout = ToClock(options_.idle_connection_timeout);
  for (auto it = idle_.begin(); it != idle_.end();) {
    auto& queue = it->second;
    while (!queue.empty() && now - queue.front().since >= idle_timeout) {
      evicted.push_back(std::move(queue.front().connection));
      queue.pop_front();
      --idle_count_;
    }
    it = queue.empty() ? idle_.erase(it) : std::next(it);
  }
}

std::unique_ptr<Connection> BeastHttpClient::TakeIdle(const std::string& key) {
  if (!Pooling()) return nullptr;
  for (;;) {
    // Closed outside the lock.
    std::vector<std::unique_ptr<Connection>> evicted;
    std::unique_ptr<Connection> candidate;
    {
      absl::MutexLock lock(&mu_);
      EvictExpiredLocked(Clock::now(), evicted);
      const auto it = idle_.find(key);
      if (it == idle_.end()) return nullptr;
      candidate = std::move(it->second.back().connection);
      it->second.pop_back();
      --idle_count_;
      if (it->second.empty()) idle_.erase(it);
    }
    if (candidate->LooksIdle()) return candidate;
  }
}

void BeastHttpClient::ReturnIdle(const std::string& key, std::unique_ptr<Connection> connection) {
  if (!Pooling()) return;
  // An idle connection keeps no answer; one not kept is wiped as it is freed.
  WipeReadBuffer(connection->read_buffer());
  std::vector<std::unique_ptr<Connection>> evicted;  // closed after the lock is released
  absl::MutexLock lock(&mu_);
  const Clock::time_point now = Clock::now();
  EvictExpiredLocked(now, evicted);
  auto& queue = idle_[key];
  queue.push_back(IdleConnection{std::move(connection), now});
  ++idle_count_;
  if (queue.size() > options_.max_idle_connections_per_host) {
    evicted.push_back(std::move(queue.front().connection));
    queue.pop_front();
    --idle_count_;
  }
  while (idle_count_ > kMaxIdleConnectionsTotal) {
    auto oldest = idle_.begin();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->second.front().since < oldest->second.front().since) oldest = it;
    }
    evicted.push_back(std::move(oldest->second.front().connection));
    oldest->second.pop_front();
    --idle_count_;
    if (oldest->second.empty()) idle_.erase(oldest);
  }
}

absl::Status ValidateOptions(const HttpClientOptions& options) {
  const auto positive_and_bounded = [](absl::Duration d) {
    return d > absl::ZeroDuration() && d <= kMaxTimeout;
  };
  if (!positive_and_bounded(options.connect_timeout)) {
    return absl::InvalidArgumentError("connect_timeout must be positive and at most an hour");
  }
  if (!positive_and_bounded(options.request_timeout)) {
    return absl::InvalidArgumentError("request_timeout must be positive and at most an hour");
  }
  if (options.idle_connection_timeout < absl::ZeroDuration() ||
      options.idle_connection_timeout > kMaxTimeout) {
    return absl::InvalidArgumentError("idle_connection_timeout must be between 0 and an hour");
  }
  if (options.max_response_bytes == 0 || options.max_response_bytes > kMaxResponseBytesLimit) {
    return absl::InvalidArgumentError("max_response_bytes must be between 1 and 1 GiB");
  }
  if (options.max_idle_connections_per_host > kMaxIdleConnectionsPerHostLimit) {
    return absl::InvalidArgumentError(absl::StrCat("max_idle_connections_per_host must be at most ",
                                                   kMaxIdleConnectionsPerHostLimit));
  }
  if (!IsHttpFieldValue(options.user_agent)) {
    return absl::InvalidArgumentError("user_agent has a control character");
  }
  if (!options.use_system_trust_store && options.ca_file.empty()) {
    return absl::InvalidArgumentError(
        "no trust anchors: use the system trust store or give a CA file");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ssl::context>> NewTlsContext(const HttpClientOptions& options) {
  auto tls = std::make_unique<ssl::context>(ssl::context::tls_client);
  SSL_CTX* native = tls->native_handle();
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1) {
    return absl::InternalError("cannot require TLS 1.2");
  }
  // Decrypted records are wiped once handed over: they hold tokens.
  SSL_CTX_set_options(native,
                      SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CLEANSE_PLAINTEXT);
  ErrorCode ec;
  tls->set_verify_mode(ssl::verify_peer, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot enable verification: ", ec.message()));
  if (options.use_system_trust_store) {
    tls->set_default_verify_paths(ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot use the system trust store: ", ec.message()));
    }
  }
  if (!options.ca_file.empty()) {
    tls->load_verify_file(options.ca_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot load CA file ", options.ca_file, ": ", ec.message()));
    }
  }
  return tls;
}

}  // namespace

HttpRequest::~HttpRequest() {
  WipeString(body);
  WipeHeaders(headers);
  WipeString(url);
}

HttpResponse::~HttpResponse() {
  WipeString(body);
  WipeHeaders(headers);
}

std::optional<std::string> HttpResponse::Header(std::string_view name) const {
  for (const auto& [header_name, value] : headers) {
    if (absl::EqualsIgnoreCase(Sv(header_name), Sv(name))) return value;
  }
  return std::nullopt;
}

bool IsHttpToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTchar);
}

bool IsHttpFieldValue(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u == '\t' || (u >= 0x20 && u != 0x7f);
  });
}

void Cancellation::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  // Wakes the exchange's pending read or write at once (with an error); the
  // descriptor stays open, and stays ours, until Detach.
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

bool Cancellation::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool Cancellation::Attach(int fd) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  fd_ = fd;
  return true;
}

void Cancellation::Detach() {
  absl::MutexLock lock(&mu_);
  fd_ = -1;
}

bool IsNonPublicAddress(std::string_view text) {
  ErrorCode ec;
  asio::ip::address address = asio::ip::make_address(std::string(text), ec);
  if (ec) return true;
  if (address.is_v6()) {
    const asio::ip::address_v6 v6 = address.to_v6();
    if (v6.is_v4_mapped()) {
      address = asio::ip::make_address_v4(asio::ip::v4_mapped, v6);
    } else {
      const asio::ip::address_v6::bytes_type b = v6.to_bytes();
      const auto prefix = [&b](std::initializer_list<unsigned> bytes) {
        size_t i = 0;
        for (const unsigned v : bytes) {
          if (b[i++] != v) return false;
        }
        return true;
      };
      return v6.is_unspecified() || v6.is_loopback() || v6.is_link_local() || v6.is_site_local() ||
             v6.is_multicast() || (b[0] & 0xfe) == 0xfc ||  // fc00::/7 unique local
             prefix({0x20, 0x01, 0x0d, 0xb8}) ||            // 2001:db8::/32 documentation
             prefix({0x00, 0x64, 0xff, 0x9b}) ||            // 64:ff9b::/96 NAT64: names IPv4 inside
             prefix({0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}) ||  // 100::/64 discard
             prefix({0x20, 0x02});  // 2002::/16 6to4: names IPv4 inside
    }
  }
  const uint32_t v4 = address.to_v4().to_uint();
  const auto in = [v4](uint32_t network, int bits) {
    const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
    return (v4 & mask) == network;
  };
  return in(0x00000000, 8) ||   // 0.0.0.0/8 "this network"
         in(0x0a000000, 8) ||   // 10/8
         in(0x64400000, 10) ||  // 100.64/10 shared (carrier-grade NAT)
         in(0x7f000000, 8) ||   // 127/8 loopback
         in(0xa9fe0000, 16) ||  // 169.254/16 link-local (cloud metadata)
         in(0xac100000, 12) ||  // 172.16/12
         in(0xc0000000, 24) ||  // 192.0.0/24 protocol assignments
         in(0xc0000200, 24) ||  // 192.0.2/24 documentation
         in(0xc0a80000, 16) ||  // 192.168/16
         in(0xc6120000, 15) ||  // 198.18/15 benchmarking
         in(0xc6336400, 24) ||  // 198.51.100/24 documentation
         in(0xcb007100, 24) ||  // 203.0.113/24 documentation
         in(0xe0000000, 4) ||   // 224/4 multicast
         in(0xf0000000, 4);     // 240/4 reserved, broadcast
}

namespace {

absl::StatusOr<std::unique_ptr<BeastHttpClient>> NewBeastHttpClient(
    const HttpClientOptions& options) {
  GV_RETURN_IF_ERROR(ValidateOptions(options));
  try {
    GV_ASSIGN_OR_RETURN(std::unique_ptr<ssl::context> tls, NewTlsContext(options));
    return std::make_unique<BeastHttpClient>(options, std::move(tls));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot create the TLS context: ", e.what()));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpClient>> NewHttpClient(const HttpClientOptions& options) {
  GV_ASSIGN_OR_RETURN(std::unique_ptr<BeastHttpClient> client, NewBeastHttpClient(options));
  return std::unique_ptr<HttpClient>(std::move(client));
}

absl::StatusOr<std::unique_ptr<AsyncHttpClient>> NewAsyncHttpClient(
    const HttpClientOptions& options) {
  GV_ASSIGN_OR_RETURN(std::unique_ptr<BeastHttpClient> client, NewBeastHttpClient(options));
  return std::unique_ptr<AsyncHttpClient>(std::move(client));
}

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (absl::ascii_isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0x0f]);
    }
  }
  return out;
}

std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    if (!out.empty()) out.push_back('&');
    absl::StrAppend(&out, PercentEncode(name), "=", PercentEncode(value));
  }
  return out;
}

}  // namespace grantvault::oauth
