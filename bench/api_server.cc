// api_server: a small HTTPS/1.1 API on 127.0.0.1 for bench/proxy_bench.sh, the
// stand-in for a provider's API that proxied and direct calls both reach.
//
//   api_server --cert PEM --key PEM [--threads N]
//
// Prints "PORT <n>" and then "READY" on stdout. Keep-alive connections, one
// io_context per thread. Every request must carry "Authorization: Bearer …"
// (else 401). Routes, shaped like a ticketing API's:
//   GET  /v1/items/<id>        200, a ~600-byte JSON item
//   GET  /v1/search?q=…        200, a ~6 KiB JSON page of 10 items
//   POST /v1/items             201, the created item's id and the body's size
//   anything else              404
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
// clang-format on

namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

std::string Item(const std::string& id) {
  std::string out = "{\"id\":\"" + id +
                    "\",\"title\":\"Printer on floor 3 jams on every duplex job\","
                    "\"status\":\"open\",\"priority\":\"normal\",\"requester\":{\"id\":\"u_1842\","
                    "\"name\":\"Dana Smith\",\"email\":\"dana@example.com\"},\"assignee\":null,"
                    "\"tags\":[\"hardware\",\"printer\",\"floor-3\"],\"created_at\":"
                    "\"2026-11-30T09:12:44Z\",\"updated_at\":\"2026-12-01T16:03:10Z\",\"body\":\"";
  out.append(260, 'x');
  out += "\"}";
  return out;
}

std::string SearchPage() {
  std::string out = "{\"results\":[";
  for (int i = 0; i < 10; ++i) {
    if (i > 0) out += ",";
    out += Item("t_" + std::to_string(1000 + i));
  }
  return out + "],\"next_page\":\"cursor_2\"}";
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, ssl::context& tls) : stream_(std::move(socket), tls) {}

  void Start() {
    stream_.async_handshake(ssl::stream_base::server,
                            [self = shared_from_this()](beast::error_code ec) {
                              if (!ec) self->Read();
                            });
  }

 private:
  void Read() {
    request_ = {};
    http::async_read(stream_, buffer_, request_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (!ec) self->Answer();
                     });
  }

  void Answer() {
    response_ = {};
    response_.version(11);
    response_.keep_alive(request_.keep_alive());
    response_.set(http::field::content_type, "application/json");
    const std::string target(request_.target());
    const auto authorization = request_.find(http::field::authorization);
    if (authorization == request_.end() || !authorization->value().starts_with("Bearer ")) {
      response_.result(http::status::unauthorized);
      response_.body() = "{\"error\":\"invalid_token\"}";
    } else if (request_.method() == http::verb::get && target.starts_with("/v1/items/")) {
      response_.result(http::status::ok);
      response_.body() = Item(target.substr(10));
    } else if (request_.method() == http::verb::get && target.starts_with("/v1/search")) {
      response_.result(http::status::ok);
      response_.body() = search_page_;
    } else if (request_.method() == http::verb::post && target == "/v1/items") {
      response_.result(http::status::created);
      response_.body() = "{\"id\":\"t_" + std::to_string(++created_) +
                         "\",\"received\":" + std::to_string(request_.body().size()) + "}";
    } else {
      response_.result(http::status::not_found);
      response_.body() = "{\"error\":\"not_found\"}";
    }
    response_.prepare_payload();
    http::async_write(stream_, response_,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        if (!ec && self->response_.keep_alive()) self->Read();
                      });
  }

  beast::ssl_stream<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
  const std::string search_page_ = SearchPage();
  static inline std::atomic<uint64_t> created_{0};
};

}  // namespace

int main(int argc, char** argv) {
  std::string cert, key;
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--cert") {
      cert = argv[i + 1];
    } else if (flag == "--key") {
      key = argv[i + 1];
    } else if (flag == "--threads") {
      threads = std::max(1, std::atoi(argv[i + 1]));
    }
  }
  if (cert.empty() || key.empty()) {
    std::fprintf(stderr, "usage: api_server --cert PEM --key PEM [--threads N]\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  ssl::context tls(ssl::context::tls_server);
  tls.use_certificate_chain_file(cert);
  tls.use_private_key_file(key, ssl::context::pem);

  asio::io_context io(threads);
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0));
  std::function<void()> accept = [&] {
    acceptor.async_accept([&](beast::error_code ec, tcp::socket socket) {
      if (!ec) {
        socket.set_option(tcp::no_delay(true));
        std::make_shared<Session>(std::move(socket), tls)->Start();
      }
      accept();
    });
  };
  accept();
  std::printf("PORT %u\nREADY\n", acceptor.local_endpoint().port());
  std::fflush(stdout);
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back([&] { io.run(); });
  io.run();
  for (std::thread& t : pool) t.join();
  return 0;
}
