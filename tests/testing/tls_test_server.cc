#include "tests/testing/tls_test_server.h"

#include <openssl/ssl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status.h"
#include "common/strings.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
// clang-format on

namespace grantvault::testing {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr std::uint32_t kMaxRequestHeaderBytes = 64 * 1024;
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(10);
constexpr std::string_view kGarbage = "this is not an HTTP response\r\n\r\n";

std::string ToString(beast::string_view s) { return std::string(s.data(), s.size()); }

struct Session {
  Session(tcp::socket socket, ssl::context& tls, size_t connection_number)
      : stream(std::move(socket), tls), timer(stream.get_executor()), number(connection_number) {}

  beast::tcp_stream& transport() { return beast::get_lowest_layer(stream); }
  void Close() {
    ErrorCode ignored;
    timer.cancel();
    transport().socket().shutdown(tcp::socket::shutdown_both, ignored);
    transport().close();
  }

  beast::ssl_stream<beast::tcp_stream> stream;
  asio::steady_timer timer;  // stalls
  const size_t number;
};

http::response<http::string_body> BuildResponse(const Reply& reply,
                                                const http::request<http::string_body>& request) {
  http::response<http::string_body> response;
  response.version(11);
  response.result(static_cast<unsigned>(reply.status));
  for (const auto& [name, value] : reply.headers) response.insert(name, value);
  response.body() =
      reply.oversized_body_bytes > 0 ? std::string(reply.oversized_body_bytes, 'x') : reply.body;
  if (reply.chunked) {
    response.chunked(true);
  } else {
    response.prepare_payload();
  }
  if (request.method() == http::verb::head) {
    response.content_length(response.body().size());
    response.body().clear();
  }
  response.keep_alive(reply.keep_alive && request.keep_alive());
  return response;
}

}  // namespace

class TlsTestServer::Impl {
 public:
  explicit Impl(TlsTestServerOptions options)
      : options_(std::move(options)), handler_(options_.handler) {}

  absl::Status Listen() {
    ErrorCode ec;
    tls_.use_certificate_chain_file(options_.cert_file, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("certificate: ", ec.message()));
    tls_.use_private_key_file(options_.key_file, ssl::context::pem, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("private key: ", ec.message()));
    if (options_.max_tls_version != 0) {
      SSL_CTX* native = tls_.native_handle();
      if (options_.max_tls_version < TLS1_2_VERSION) {
        // OpenSSL 3 refuses TLS 1.0 and 1.1 above security level 0.
        SSL_CTX_set_security_level(native, 0);
        SSL_CTX_set_min_proto_version(native, TLS1_VERSION);
      }
      SSL_CTX_set_max_proto_version(native, options_.max_tls_version);
    }
    const tcp::endpoint endpoint(asio::ip::make_address_v4("127.0.0.1"), 0);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(64, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("listen: ", ec.message()));
    port_ = acceptor_.local_endpoint().port();
    return absl::OkStatus();
  }

  void Run() {
    asio::co_spawn(io_, AcceptLoop(), [](const std::exception_ptr& e) {
      if (e) std::rethrow_exception(e);
    });
    thread_ = std::thread([this] {
      try {
        io_.run();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "TlsTestServer: %s\n", e.what());
        std::abort();
      }
      finished_.Notify();
    });
  }

  // Stops accepting and closes every connection; if something still runs
  // after a grace period, the event loop is stopped outright.
  void Stop() {
    asio::post(io_, [this] {
      stopping_ = true;
      ErrorCode ignored;
      acceptor_.close(ignored);
      for (const auto& session : sessions_) session->Close();
    });
    if (!finished_.WaitForNotificationWithTimeout(absl::Seconds(2))) io_.stop();
    thread_.join();
  }

  uint16_t port() const { return port_; }

  void SetHandler(ReplyHandler handler) {
    absl::MutexLock lock(&mu_);
    handler_ = std::move(handler);
  }
  std::vector<RecordedRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  size_t request_count() const {
    absl::MutexLock lock(&mu_);
    return requests_.size();
  }
  size_t accepted_connections() const {
    absl::MutexLock lock(&mu_);
    return accepted_;
  }
  bool WaitForRequests(size_t count, absl::Duration timeout) const {
    const auto enough = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return requests_.size() >= count;
    };
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  asio::awaitable<void> AcceptLoop() {
    for (;;) {
      ErrorCode ec;
      auto socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_) co_return;
      if (ec) {
        asio::steady_timer delay(io_, kAcceptRetryDelay);
        co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      size_t number = 0;
      {
        absl::MutexLock lock(&mu_);
        number = ++accepted_;
      }
      if (sessions_.size() >= options_.max_connections) {
        socket.close(ec);
        continue;
      }
      socket.set_option(tcp::no_delay(true), ec);
      auto session = std::make_shared<Session>(std::move(socket), tls_, number);
      sessions_.insert(session);
      // A handler or reply the server cannot carry out is a bug in the test:
      // it ends up in Run()'s catch.
      asio::co_spawn(io_, Serve(session), [](const std::exception_ptr& e) {
        if (e) std::rethrow_exception(e);
      });
    }
  }

  asio::awaitable<void> Serve(std::shared_ptr<Session> session) {
    const auto token = [](ErrorCode& ec) { return asio::redirect_error(asio::use_awaitable, ec); };
    ErrorCode ec;
    session->transport().expires_after(options_.io_timeout);
    co_await session->stream.async_handshake(ssl::stream_base::server, token(ec));
    beast::flat_buffer buffer;
    while (!ec && !stopping_) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(kMaxRequestHeaderBytes);
      parser.body_limit(options_.max_request_bytes);
      session->transport().expires_after(options_.io_timeout);
      co_await http::async_read(session->stream, buffer, parser, token(ec));
      if (ec) break;
      const http::request<http::string_body>& request = parser.get();

      RecordedRequest recorded;
      recorded.connection = session->number;
      recorded.method = ToString(request.method_string());
      recorded.target = ToString(request.target());
      for (const auto& field : request) {
        recorded.headers.emplace_back(ToString(field.name_string()), ToString(field.value()));
      }
      recorded.body = request.body();
      ReplyHandler handler;
      {
        absl::MutexLock lock(&mu_);
        requests_.push_back(recorded);
        handler = handler_;
      }
      const Reply reply = handler ? handler(recorded) : Reply{};

      if (reply.stall.count() > 0) {
        session->timer.expires_after(reply.stall);
        co_await session->timer.async_wait(token(ec));
        ec = {};
        if (stopping_) break;
      }
      if (reply.close_without_answer) break;
      session->transport().expires_after(options_.io_timeout);
      if (reply.garbage) {
        co_await asio::async_write(session->stream, asio::buffer(kGarbage.data(), kGarbage.size()),
                                   token(ec));
        break;
      }
      http::response<http::string_body> response = BuildResponse(reply, request);
      co_await http::async_write(session->stream, response, token(ec));
      if (!response.keep_alive() || reply.close_after_answer) break;
    }
    session->Close();
    sessions_.erase(session);
  }

  // Destroyed last: everything below belongs to it.
  asio::io_context io_{1};
  const TlsTestServerOptions options_;
  ssl::context tls_{ssl::context::tls_server};
  tcp::acceptor acceptor_{io_};
  uint16_t port_ = 0;
  std::thread thread_;
  absl::Notification finished_;

  mutable absl::Mutex mu_;
  ReplyHandler handler_ ABSL_GUARDED_BY(mu_);
  std::vector<RecordedRequest> requests_ ABSL_GUARDED_BY(mu_);
  size_t accepted_ ABSL_GUARDED_BY(mu_) = 0;

  // Used on the server thread only.
  bool stopping_ = false;
  std::set<std::shared_ptr<Session>> sessions_;
};

std::optional<std::string> RecordedRequest::Header(std::string_view name) const {
  for (const auto& [header_name, value] : headers) {
    if (absl::EqualsIgnoreCase(Sv(header_name), Sv(name))) return value;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<TlsTestServer>> TlsTestServer::Start(TlsTestServerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  GV_RETURN_IF_ERROR(impl->Listen());
  impl->Run();
  return std::unique_ptr<TlsTestServer>(new TlsTestServer(std::move(impl)));
}

TlsTestServer::TlsTestServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TlsTestServer::~TlsTestServer() { impl_->Stop(); }

uint16_t TlsTestServer::port() const { return impl_->port(); }

std::string TlsTestServer::Url(std::string_view target) const {
  return absl::StrCat("https://127.0.0.1:", impl_->port(), Sv(target));
}

void TlsTestServer::SetHandler(ReplyHandler handler) { impl_->SetHandler(std::move(handler)); }

std::vector<RecordedRequest> TlsTestServer::requests() const { return impl_->requests(); }

size_t TlsTestServer::request_count() const { return impl_->request_count(); }

size_t TlsTestServer::accepted_connections() const { return impl_->accepted_connections(); }

bool TlsTestServer::WaitForRequests(size_t count, absl::Duration timeout) const {
  return impl_->WaitForRequests(count, timeout);
}

}  // namespace grantvault::testing
