#include "oauth/http_client.h"

#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oauth/async_http_client.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_cert.h"
#include "tests/testing/tls_test_server.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
// clang-format on

namespace grantvault::oauth {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using ::grantvault::testing::CertificateFiles;
using ::grantvault::testing::RecordedRequest;
using ::grantvault::testing::Reply;
using ::grantvault::testing::ReplyHandler;
using ::grantvault::testing::TempDir;
using ::grantvault::testing::TlsTestServer;
using ::grantvault::testing::TlsTestServerOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using Clock = std::chrono::steady_clock;

Reply Echo(const RecordedRequest& request) {
  Reply reply;
  reply.headers = {{"Content-Type", "application/octet-stream"},
                   {"X-Echo-Method", request.method},
                   {"X-Echo-Target", request.target}};
  reply.body = request.body;
  return reply;
}

HttpRequest Get(std::string url) {
  HttpRequest request;
  request.url = std::move(url);
  return request;
}

std::chrono::milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// A TCP listener on 127.0.0.1 that speaks no TLS. With an empty greeting it
// never accepts, so a client's TLS handshake stalls; otherwise it sends the
// greeting on every connection and closes it.
class PlainTcpServer {
 public:
  explicit PlainTcpServer(std::string greeting)
      : greeting_(std::move(greeting)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0)) {
    if (greeting_.empty()) return;
    Accept();
    thread_ = std::thread([this] { io_.run_for(std::chrono::seconds(10)); });
  }
  ~PlainTcpServer() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  void Accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec) return;
      auto connection = std::make_shared<tcp::socket>(std::move(socket));
      asio::async_write(*connection, asio::buffer(greeting_),
                        [connection](const boost::system::error_code&, size_t) {
                          boost::system::error_code ignored;
                          connection->shutdown(tcp::socket::shutdown_both, ignored);
                        });
      Accept();
    });
  }

  const std::string greeting_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::thread thread_;
};

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override { certs_ = grantvault::testing::WriteTestCertificates(dir_.path()); }

  static std::unique_ptr<TlsTestServer> StartServer(ReplyHandler handler,
                                                    const CertificateFiles& certs,
                                                    int max_tls_version = 0) {
    TlsTestServerOptions options;
    options.cert_file = certs.cert_file;
    options.key_file = certs.key_file;
    options.handler = std::move(handler);
    options.max_tls_version = max_tls_version;
    auto server = TlsTestServer::Start(std::move(options));
    if (!server.ok()) {
      ADD_FAILURE() << server.status();
      std::abort();
    }
    return *std::move(server);
  }
  std::unique_ptr<TlsTestServer> StartServer(ReplyHandler handler = Echo) {
    return StartServer(std::move(handler), certs_);
  }

  // Trusts the test CA only.
  HttpClientOptions TestOptions() const {
    HttpClientOptions options;
    options.use_system_trust_store = false;
    options.ca_file = certs_.ca_file;
    options.connect_timeout = absl::Seconds(2);
    options.request_timeout = absl::Seconds(3);
    return options;
  }

  static std::unique_ptr<HttpClient> NewClient(const HttpClientOptions& options) {
    auto client = NewHttpClient(options);
    if (!client.ok()) {
      ADD_FAILURE() << client.status();
      std::abort();
    }
    return *std::move(client);
  }
  std::unique_ptr<HttpClient> NewClient() { return NewClient(TestOptions()); }

  TempDir dir_;
  CertificateFiles certs_;
};

TEST_F(HttpClientTest, GetRoundTrip) {
  auto server = StartServer();
  auto client = NewClient();
  HttpRequest request = Get(server->Url("/userinfo?schema=openid&x=a%20b"));
  request.headers = {{"Accept", "application/json"}, {"X-Custom-Header", "Value  with\tspaces"}};

  absl::StatusOr<HttpResponse> response = client->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "");
  EXPECT_EQ(response->Header("x-echo-method"), "GET");
  EXPECT_EQ(response->Header("X-ECHO-TARGET"), "/userinfo?schema=openid&x=a%20b");
  EXPECT_EQ(response->Header("Content-Type"), "application/octet-stream");
  EXPECT_EQ(response->Header("X-Missing"), std::nullopt);

  const std::vector<RecordedRequest> seen = server->requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].target, "/userinfo?schema=openid&x=a%20b");
  EXPECT_THAT(seen[0].headers,
              ElementsAre(Pair("Host", absl::StrCat("127.0.0.1:", server->port())),
                          Pair("User-Agent", "grantvault/0.1"), Pair("Accept", "application/json"),
                          Pair("X-Custom-Header", "Value  with\tspaces")));
  EXPECT_EQ(seen[0].body, "");
}

TEST_F(HttpClientTest, PostRoundTripCarriesHeadersAndBodyExactly) {
  auto server = StartServer();
  auto client = NewClient();
  std::string binary;
  for (int i = 0; i < 256 * 400; ++i) binary.push_back(static_cast<char>(i % 256));
  for (const std::string& body :
       {std::string("grant_type=authorization_code&code=abc%2Fdef&code_verifier=xyz"), binary,
        std::string()}) {
    HttpRequest request;
    request.method = "POST";
    request.url = server->Url("/token");
    request.headers = {{"Content-Type", "application/x-www-form-urlencoded"},
                       {"Authorization", "Basic Y2xpZW50OnNlY3JldA=="},
                       {"User-Agent", "custom-agent/2"}};
    request.body = body;
    absl::StatusOr<HttpResponse> response = client->Send(request, absl::Seconds(2));
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, body);

    const RecordedRequest seen = server->requests().back();
    EXPECT_EQ(seen.method, "POST");
    EXPECT_EQ(seen.target, "/token");
    EXPECT_EQ(seen.body, body);
    EXPECT_THAT(seen.headers, ElementsAre(Pair("Host", absl::StrCat("127.0.0.1:", server->port())),
                                          Pair("Content-Type", "application/x-www-form-urlencoded"),
                                          Pair("Authorization", "Basic Y2xpZW50OnNlY3JldA=="),
                                          Pair("User-Agent", "custom-agent/2"),
                                          Pair("Content-Length", std::to_string(body.size()))));
  }
}

TEST_F(HttpClientTest, HeadResponseHasNoBodyAndKeepsTheConnectionUsable) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.body = "twelve bytes";
    return reply;
  });
  auto client = NewClient();
  HttpRequest head = Get(server->Url("/"));
  head.method = "HEAD";
  absl::StatusOr<HttpResponse> response = client->Send(head);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->Header("Content-Length"), "12");
  EXPECT_EQ(response->body, "");
  response = client->Send(Get(server->Url("/")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, "twelve bytes");
  EXPECT_EQ(server->accepted_connections(), 1u);
}

TEST_F(HttpClientTest, AcceptsCertificateFromCaFile) {
  auto server = StartServer();
  // CA file alone, and CA file on top of the system store.
  for (const bool system_store : {false, true}) {
    HttpClientOptions options = TestOptions();
    options.use_system_trust_store = system_store;
    absl::StatusOr<HttpResponse> response = NewClient(options)->Send(Get(server->Url("/")));
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
  }
}

TEST_F(HttpClientTest, VerifiesHostNamesThroughTheResolver) {
  auto server = StartServer();
  absl::StatusOr<HttpResponse> response =
      NewClient()->Send(Get(absl::StrCat("https://localhost:", server->port(), "/named")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(server->requests().back().Header("Host"), absl::StrCat("localhost:", server->port()));

  // A certificate for 127.0.0.1 only does not vouch for "localhost".
  TempDir ip_only_dir;
  const CertificateFiles ip_only =
      grantvault::testing::WriteTestCertificates(ip_only_dir.path(), {"IP:127.0.0.1"});
  auto ip_only_server = StartServer(Echo, ip_only);
  HttpClientOptions options = TestOptions();
  options.ca_file = ip_only.ca_file;
  response =
      NewClient(options)->Send(Get(absl::StrCat("https://localhost:", ip_only_server->port())));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnauthenticated) << response.status();
  EXPECT_THAT(response.status().message(),
              HasSubstr("TLS certificate verification failed for localhost"));
  EXPECT_EQ(ip_only_server->request_count(), 0u);
}

TEST_F(HttpClientTest, RefusesCertificateNotSignedByATrustedCa) {
  auto server = StartServer();
  HttpClientOptions options = TestOptions();
  options.use_system_trust_store = true;
  options.ca_file.clear();
  const Clock::time_point start = Clock::now();
  absl::StatusOr<HttpResponse> response = NewClient(options)->Send(Get(server->Url("/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnauthenticated) << response.status();
  EXPECT_THAT(response.status().message(),
              HasSubstr("TLS certificate verification failed for 127.0.0.1"));
  EXPECT_THAT(response.status().message(), HasSubstr("certificate"));
  EXPECT_LT(Since(start), std::chrono::seconds(2));
  EXPECT_EQ(server->request_count(), 0u);
}

TEST_F(HttpClientTest, RefusesCertificateWhoseNamesDoNotMatch) {
  TempDir mismatched_dir;
  const CertificateFiles mismatched =
      grantvault::testing::WriteMismatchedTestCertificates(mismatched_dir.path());
  auto server = StartServer(Echo, mismatched);
  HttpClientOptions options = TestOptions();
  options.ca_file = mismatched.ca_file;  // the chain itself is trusted
  absl::StatusOr<HttpResponse> response = NewClient(options)->Send(Get(server->Url("/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnauthenticated) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("IP address mismatch"));
  EXPECT_EQ(server->request_count(), 0u);
}

TEST_F(HttpClientTest, RefusesServersOlderThanTls12) {
  auto old_server = StartServer(Echo, certs_, TLS1_1_VERSION);
  absl::StatusOr<HttpResponse> response = NewClient()->Send(Get(old_server->Url("/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("protocol version"));
  EXPECT_EQ(old_server->request_count(), 0u);

  auto tls12_server = StartServer(Echo, certs_, TLS1_2_VERSION);
  response = NewClient()->Send(Get(tls12_server->Url("/")));
  EXPECT_TRUE(response.ok()) << response.status();
}

TEST_F(HttpClientTest, RefusesUrlsThatAreNotHttps) {
  auto client = NewClient();
  for (const std::string url :
       {"http://127.0.0.1/token", "HTTP://127.0.0.1/token", "ftp://127.0.0.1/", "127.0.0.1/token",
        "not a url", "", "https:///token", "https://user:secret@127.0.0.1/token",
        "https://127.0.0.1:0/", "https://127.0.0.1:65536/", "https://127.0.0.1:99999999/",
        "https://exa mple.com/", "https://[v1.fe]/", "https://127.0.0.1/\r\nX-Injected: 1"}) {
    absl::StatusOr<HttpResponse> response = client->Send(Get(url));
    EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << url << "': " << response.status();
  }
  // The query, which may carry a secret, stays out of the message.
  absl::StatusOr<HttpResponse> response = client->Send(Get("http://127.0.0.1/cb?code=SECRET-CODE"));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("SECRET")));
}

TEST_F(HttpClientTest, RefusesHeaderInjectionAndClientManagedHeaders) {
  auto server = StartServer();
  auto client = NewClient();
  for (const auto& header :
       std::vector<std::pair<std::string, std::string>>{{"X-A", "one\r\nX-Injected: two"},
                                                        {"X-A", std::string("nul\0byte", 8)},
                                                        {"Bad Name", "v"},
                                                        {"", "v"},
                                                        {"Host", "evil.example"},
                                                        {"Content-Length", "0"},
                                                        {"transfer-encoding", "chunked"},
                                                        {"Connection", "close"}}) {
    HttpRequest request = Get(server->Url("/"));
    request.headers = {header};
    EXPECT_EQ(client->Send(request).status().code(), absl::StatusCode::kInvalidArgument)
        << header.first;
  }
  HttpRequest request = Get(server->Url("/"));
  request.method = "GET /other HTTP/1.1\r\n";
  EXPECT_EQ(client->Send(request).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server->request_count(), 0u);
}

TEST_F(HttpClientTest, ReturnsRedirectsWithoutFollowingThem) {
  std::unique_ptr<TlsTestServer> server;
  server = StartServer([](const RecordedRequest& request) {
    Reply reply;
    if (request.target == "/token") {
      reply.status = 302;
      reply.headers = {{"Location", "/elsewhere"}};
    }
    return reply;
  });
  HttpRequest request;
  request.method = "POST";
  request.url = server->Url("/token");
  request.body = "code=abc";
  absl::StatusOr<HttpResponse> response = NewClient()->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 302);
  EXPECT_EQ(response->Header("location"), "/elsewhere");
  ASSERT_EQ(server->request_count(), 1u);
  EXPECT_EQ(server->requests()[0].target, "/token");
}

TEST_F(HttpClientTest, ReturnsHttpErrorStatusesAsResponses) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.status = 400;
    reply.headers = {{"Content-Type", "application/json"}};
    reply.body = R"({"error":"invalid_grant"})";
    return reply;
  });
  absl::StatusOr<HttpResponse> response = NewClient()->Send(Get(server->Url("/token")));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 400);
  EXPECT_EQ(response->body, R"({"error":"invalid_grant"})");
}

TEST_F(HttpClientTest, ResponsesOverTheCapAreResourceExhausted) {
  auto server = StartServer([](const RecordedRequest& request) {
    Reply reply;
    if (request.target == "/small") {
      reply.body = std::string(30 * 1024, 's');
    } else if (request.target == "/big") {
      reply.oversized_body_bytes = 2 << 20;
    } else if (request.target == "/big-chunked") {
      reply.oversized_body_bytes = 2 << 20;
      reply.chunked = true;
    } else if (request.target == "/big-header") {
      for (int i = 0; i < 8; ++i) {  // Beast caps one field at 64 KiB
        reply.headers.emplace_back(absl::StrCat("X-Padding-", i), std::string(10 * 1024, 'h'));
      }
    }
    return reply;
  });
  HttpClientOptions options = TestOptions();
  options.max_response_bytes = 64 * 1024;
  auto client = NewClient(options);

  absl::StatusOr<HttpResponse> small = client->Send(Get(server->Url("/small")));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->body.size(), 30u * 1024);
  for (const char* target : {"/big", "/big-chunked", "/big-header"}) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<HttpResponse> response = client->Send(Get(server->Url(target)));
    EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted)
        << target << ": " << response.status();
    EXPECT_LT(Since(start), std::chrono::seconds(2)) << target;
  }
}

TEST_F(HttpClientTest, StalledServerHitsTheDeadline) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.stall = std::chrono::milliseconds(3000);
    return reply;
  });
  auto client = NewClient();
  Clock::time_point start = Clock::now();
  absl::StatusOr<HttpResponse> response =
      client->Send(Get(server->Url("/slow")), absl::Milliseconds(300));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
  EXPECT_GE(Since(start), std::chrono::milliseconds(290));
  EXPECT_LT(Since(start), std::chrono::milliseconds(1500));

  // Without a deadline, request_timeout applies.
  HttpClientOptions options = TestOptions();
  options.request_timeout = absl::Milliseconds(300);
  start = Clock::now();
  response = NewClient(options)->Send(Get(server->Url("/slow")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
  EXPECT_LT(Since(start), std::chrono::milliseconds(1500));

  // A deadline that has already passed fails at once.
  response = client->Send(Get(server->Url("/slow")), absl::ZeroDuration());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(HttpClientTest, StalledHandshakeHitsTheConnectTimeout) {
  PlainTcpServer silent("");  // accepts at the TCP level only
  HttpClientOptions options = TestOptions();
  options.connect_timeout = absl::Milliseconds(200);
  const Clock::time_point start = Clock::now();
  absl::StatusOr<HttpResponse> response = NewClient(options)->Send(
      Get(absl::StrCat("https://127.0.0.1:", silent.port(), "/")), absl::Seconds(4));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
  EXPECT_LT(Since(start), std::chrono::milliseconds(1500));
}

TEST_F(HttpClientTest, MisbehavingServersAreUnavailable) {
  auto server = StartServer([](const RecordedRequest& request) {
    Reply reply;
    reply.close_without_answer = request.target == "/hang-up";
    reply.garbage = request.target == "/garbage";
    return reply;
  });
  auto client = NewClient();
  for (const char* target : {"/hang-up", "/garbage"}) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<HttpResponse> response = client->Send(Get(server->Url(target)));
    EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable)
        << target << ": " << response.status();
    EXPECT_LT(Since(start), std::chrono::seconds(2)) << target;
  }

  // On a reused connection that dies with the request in flight, a GET is
  // tried once more on a new connection; a POST (a token exchange) never is.
  ASSERT_TRUE(client->Send(Get(server->Url("/ok"))).ok());
  HttpRequest post = Get(server->Url("/hang-up"));
  post.method = "POST";
  size_t before = server->request_count();
  EXPECT_EQ(client->Send(post).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server->request_count(), before + 1);

  ASSERT_TRUE(client->Send(Get(server->Url("/ok"))).ok());
  before = server->request_count();
  EXPECT_EQ(client->Send(Get(server->Url("/hang-up"))).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(server->request_count(), before + 2);
}

TEST_F(HttpClientTest, ServersThatDoNotSpeakTlsAreUnavailable) {
  PlainTcpServer plain("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  auto client = NewClient();
  absl::StatusOr<HttpResponse> response =
      client->Send(Get(absl::StrCat("https://127.0.0.1:", plain.port(), "/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();

  // Nothing listening.
  uint16_t closed_port = 0;
  {
    asio::io_context io;
    tcp::acceptor probe(io, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0));
    closed_port = probe.local_endpoint().port();
  }
  response = client->Send(Get(absl::StrCat("https://127.0.0.1:", closed_port, "/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();
  response = client->Send(Get(absl::StrCat("https://[::1]:", closed_port, "/")));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr(absl::StrCat("[::1]:", closed_port)));
}

TEST_F(HttpClientTest, ReusesConnectionsPerHost) {
  auto server = StartServer();
  auto client = NewClient();
  ASSERT_TRUE(client->Send(Get(server->Url("/one"))).ok());
  HttpRequest post;
  post.method = "POST";
  post.url = server->Url("/two");
  post.body = "x=1";
  ASSERT_TRUE(client->Send(post).ok());
  EXPECT_EQ(server->accepted_connections(), 1u);
  const std::vector<RecordedRequest> seen = server->requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].connection, seen[1].connection);
}

TEST_F(HttpClientTest, DoesNotReuseConnectionsTheServerClosesOrThatIdledTooLong) {
  auto server = StartServer([](const RecordedRequest& request) {
    Reply reply;
    reply.keep_alive = request.target != "/close";
    reply.close_after_answer = request.target == "/silent-close";
    return reply;
  });
  HttpClientOptions options = TestOptions();
  options.idle_connection_timeout = absl::Milliseconds(200);
  auto client = NewClient(options);

  ASSERT_TRUE(client->Send(Get(server->Url("/close"))).ok());  // "Connection: close"
  ASSERT_TRUE(client->Send(Get(server->Url("/silent-close"))).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server hangs up
  ASSERT_TRUE(client->Send(Get(server->Url("/a"))).ok());
  EXPECT_EQ(server->accepted_connections(), 3u);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // beyond the idle timeout
  ASSERT_TRUE(client->Send(Get(server->Url("/b"))).ok());
  EXPECT_EQ(server->accepted_connections(), 4u);
  ASSERT_TRUE(client->Send(Get(server->Url("/c"))).ok());
  EXPECT_EQ(server->accepted_connections(), 4u);

  // A POST after the server silently hung up goes out on a new connection.
  ASSERT_TRUE(client->Send(Get(server->Url("/silent-close"))).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  HttpRequest post = Get(server->Url("/token"));
  post.method = "POST";
  EXPECT_TRUE(client->Send(post).ok());
  EXPECT_EQ(server->accepted_connections(), 5u);

  // Pooling off.
  options.max_idle_connections_per_host = 0;
  auto no_pool = NewClient(options);
  ASSERT_TRUE(no_pool->Send(Get(server->Url("/d"))).ok());
  ASSERT_TRUE(no_pool->Send(Get(server->Url("/e"))).ok());
  EXPECT_EQ(server->accepted_connections(), 7u);
  EXPECT_EQ(server->requests().back().Header("Connection"), "close");
}

TEST_F(HttpClientTest, ConcurrentRequestsFromEightThreads) {
  auto server = StartServer();
  auto client = NewClient();
  constexpr int kThreads = 8;
  constexpr int kRequestsPerThread = 10;
  std::atomic<int> succeeded{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRequestsPerThread; ++i) {
        HttpRequest request;
        request.method = "POST";
        request.url = server->Url(absl::StrCat("/thread/", t));
        request.body = absl::StrCat("thread=", t, "&request=", i);
        absl::StatusOr<HttpResponse> response = client->Send(request, absl::Seconds(3));
        if (response.ok() && response->status == 200 && response->body == request.body &&
            response->Header("X-Echo-Target") == absl::StrCat("/thread/", t)) {
          ++succeeded;
        } else {
          ADD_FAILURE() << (response.ok() ? response->body : response.status().ToString());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(succeeded.load(), kThreads * kRequestsPerThread);
  EXPECT_EQ(server->request_count(), static_cast<size_t>(kThreads * kRequestsPerThread));
  EXPECT_LT(server->accepted_connections(), static_cast<size_t>(kThreads * kRequestsPerThread));
}

TEST_F(HttpClientTest, FactoryValidatesOptions) {
  HttpClientOptions options = TestOptions();
  options.ca_file = dir_.Join("missing.pem");
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.ca_file = certs_.key_file;  // PEM, but no certificate
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);

  options = TestOptions();
  options.ca_file.clear();  // and no system store: nothing to trust
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);

  options = TestOptions();
  options.connect_timeout = absl::ZeroDuration();
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = TestOptions();
  options.request_timeout = absl::InfiniteDuration();
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = TestOptions();
  options.max_response_bytes = 0;
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = TestOptions();
  options.user_agent = "agent\r\nX-Injected: 1";
  EXPECT_EQ(NewHttpClient(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// Collects what Stream delivers; stops after `stop_after` body bytes (0: never).
class RecordingSink final : public ResponseSink {
 public:
  explicit RecordingSink(size_t stop_after = 0) : stop_after_(stop_after) {}
  bool OnHead(int head_status, const HttpHeaders& head_headers) override {
    ++heads;
    status = head_status;
    headers = head_headers;
    return true;
  }
  bool OnBody(std::string_view part) override {
    ++parts;
    body.append(part);
    return stop_after_ == 0 || body.size() < stop_after_;
  }
  int heads = 0;
  int status = 0;
  HttpHeaders headers;
  int parts = 0;
  std::string body;

 private:
  const size_t stop_after_;
};

TEST_F(HttpClientTest, StreamDeliversTheHeadThenTheBodyInParts) {
  const std::string big(300000, 'z');
  auto server = StartServer([&](const RecordedRequest&) {
    Reply reply;
    reply.chunked = true;
    reply.headers = {{"X-Kind", "stream"}};
    reply.body = big;
    return reply;
  });
  HttpClientOptions options = TestOptions();
  options.max_response_bytes = 1 << 20;
  auto client = NewClient(options);
  RecordingSink sink;
  absl::StatusOr<StreamResult> result =
      client->Stream(Get(server->Url("/s")), absl::Seconds(3), sink, StreamOptions{});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(result->body_bytes, big.size());
  EXPECT_EQ(sink.heads, 1);
  EXPECT_GT(sink.parts, 1);  // in parts, not collected first
  EXPECT_EQ(sink.body, big);
  EXPECT_THAT(sink.headers, ::testing::Contains(Pair("X-Kind", "stream")));

  // The cap of the call, below the client's.
  StreamOptions capped;
  capped.max_response_bytes = 100000;
  RecordingSink refused;
  result = client->Stream(Get(server->Url("/s")), absl::Seconds(3), refused, capped);
  EXPECT_TRUE(absl::IsResourceExhausted(result.status())) << result.status();

  // A sink that stops: Cancelled, and the connection is not reused.
  const size_t connections = server->accepted_connections();
  RecordingSink stopping(/*stop_after=*/1);
  result = client->Stream(Get(server->Url("/s")), absl::Seconds(3), stopping, StreamOptions{});
  EXPECT_TRUE(absl::IsCancelled(result.status())) << result.status();
  ASSERT_TRUE(client->Send(Get(server->Url("/after"))).ok());
  EXPECT_GT(server->accepted_connections(), connections);
}

TEST_F(HttpClientTest, ACancellationEndsAStreamWaitingForTheServerAtOnce) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.stall = std::chrono::milliseconds(4000);
    return reply;
  });
  auto client = NewClient();
  Cancellation cancellation;
  StreamOptions options;
  options.cancellation = &cancellation;
  std::thread canceller([&] {
    server->WaitForRequests(1, absl::Seconds(3));
    cancellation.Cancel();
  });
  const Clock::time_point start = Clock::now();
  RecordingSink sink;
  absl::StatusOr<StreamResult> result =
      client->Stream(Get(server->Url("/held")), absl::Seconds(3), sink, options);
  canceller.join();
  EXPECT_TRUE(absl::IsCancelled(result.status())) << result.status();
  EXPECT_LT(Since(start), std::chrono::milliseconds(2000));
  EXPECT_EQ(sink.heads, 0);
  // Cancelled before it starts: nothing is sent.
  const size_t requests = server->request_count();
  result = client->Stream(Get(server->Url("/never")), absl::Seconds(3), sink, options);
  EXPECT_TRUE(absl::IsCancelled(result.status()));
  EXPECT_EQ(server->request_count(), requests);
}

TEST_F(HttpClientTest, PublicAddressesOnlyRefusesLoopbackBeforeConnecting) {
  auto server = StartServer();
  auto client = NewClient();
  StreamOptions options;
  options.public_addresses_only = true;
  RecordingSink sink;
  absl::StatusOr<StreamResult> result =
      client->Stream(Get(server->Url("/x")), absl::Seconds(3), sink, options);
  EXPECT_TRUE(absl::IsPermissionDenied(result.status())) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("127.0.0.1"));
  // By name, too: what the name resolves to is what is checked.
  HttpRequest by_name = Get(absl::StrCat("https://localhost:", server->port(), "/x"));
  result = client->Stream(by_name, absl::Seconds(3), sink, options);
  EXPECT_TRUE(absl::IsPermissionDenied(result.status())) << result.status();
  EXPECT_EQ(server->accepted_connections(), 0u);
  // A connection made without the check is not reused for a call that needs it.
  ASSERT_TRUE(client->Send(Get(server->Url("/x"))).ok());
  result = client->Stream(Get(server->Url("/x")), absl::Seconds(3), sink, options);
  EXPECT_TRUE(absl::IsPermissionDenied(result.status())) << result.status();
}

// The asynchronous client: StreamAsync on the caller's event loop.

std::unique_ptr<AsyncHttpClient> NewAsyncClient(const HttpClientOptions& options) {
  auto client = NewAsyncHttpClient(options);
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    std::abort();
  }
  return *std::move(client);
}

// Runs the coroutine `make` returns on `io`, on this thread, until it has
// finished; fails the test if it throws or is not done within `limit`. The
// io_context must outlive the client (or the client's idle connections must
// be closed first).
template <typename MakeCoroutine>
void RunOnLoop(asio::io_context& io, MakeCoroutine make,
               std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  bool done = false;
  std::exception_ptr failure;
  asio::co_spawn(io, std::move(make), [&](std::exception_ptr e) {
    done = true;
    failure = e;
  });
  io.restart();
  io.run_for(limit);
  ASSERT_TRUE(done) << "the coroutine did not finish within " << limit.count() << " ms";
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      FAIL() << "the coroutine threw: " << e.what();
    }
  }
}

// Collects what StreamAsync delivers, noting the thread it runs on. Each body
// part may be held for `pause` (the sink suspends on the caller's loop)
// before it is taken; OnHead answers `accept_head`.
class AsyncRecordingSink final : public AsyncResponseSink {
 public:
  explicit AsyncRecordingSink(std::chrono::milliseconds pause = std::chrono::milliseconds(0),
                              bool accept_head = true)
      : pause_(pause), accept_head_(accept_head) {}
  asio::awaitable<bool> OnHead(int head_status, const HttpHeaders& head_headers) override {
    ++heads;
    status = head_status;
    headers = head_headers;
    threads.push_back(std::this_thread::get_id());
    co_return accept_head_;
  }
  asio::awaitable<bool> OnBody(std::string_view part, bool last) override {
    ++parts;
    if (last) last_at = parts;
    if (pause_.count() > 0) {
      asio::steady_timer timer(co_await asio::this_coro::executor, pause_);
      co_await timer.async_wait(asio::use_awaitable);
      ++pauses;
    }
    // After the pause: the part stays valid while the sink is suspended.
    body.append(part);
    threads.push_back(std::this_thread::get_id());
    co_return true;
  }
  int heads = 0;
  int status = 0;
  HttpHeaders headers;
  int parts = 0;
  int last_at = 0;  // which part was marked the last (1-based; 0: none)
  int pauses = 0;
  std::string body;
  std::vector<std::thread::id> threads;

 private:
  const std::chrono::milliseconds pause_;
  const bool accept_head_;
};

TEST_F(HttpClientTest, StreamAsyncDeliversTheAnswerWithoutBlockingTheLoop) {
  auto server = StartServer([](const RecordedRequest& request) {
    Reply reply;
    reply.status = 201;
    reply.headers = {
        {"Content-Type", "text/plain"}, {"X-Kind", "async"}, {"X-Echo-Target", request.target}};
    reply.body = "the answer, held back a while";
    reply.stall = std::chrono::milliseconds(500);
    return reply;
  });
  asio::io_context io(1);  // before the client: it outlives the client's connections
  auto client = NewAsyncClient(TestOptions());
  // By address, then by name (resolved on a helper thread, waited for on the loop).
  for (const std::string& url : {server->Url("/slow?x=1"),
                                 absl::StrCat("https://localhost:", server->port(), "/slow?x=1")}) {
    SCOPED_TRACE(url);
    AsyncRecordingSink sink;
    std::optional<absl::StatusOr<StreamResult>> result;
    bool finished = false;
    int ticks = 0;
    Clock::duration longest_gap{0};
    // A timer on the same loop keeps firing while the call waits for the server.
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          asio::steady_timer timer(co_await asio::this_coro::executor);
          Clock::time_point last = Clock::now();
          while (!finished) {
            timer.expires_after(std::chrono::milliseconds(5));
            co_await timer.async_wait(asio::use_awaitable);
            const Clock::time_point now = Clock::now();
            longest_gap = std::max(longest_gap, now - last);
            last = now;
            if (!finished) ++ticks;
          }
        },
        asio::detached);
    const Clock::time_point start = Clock::now();
    RunOnLoop(io, [&]() -> asio::awaitable<void> {
      HttpRequest request = Get(url);
      request.headers = {{"Accept", "text/plain"}};
      result = co_await client->StreamAsync(request, absl::Seconds(3), sink, StreamOptions{});
      finished = true;
    });
    ASSERT_TRUE(result.has_value());
    ASSERT_TRUE(result->ok()) << result->status();
    EXPECT_GE(Since(start), std::chrono::milliseconds(490));  // the server's stall
    EXPECT_EQ((*result)->status, 201);
    EXPECT_EQ((*result)->body_bytes, sink.body.size());
    EXPECT_EQ(sink.heads, 1);
    EXPECT_EQ(sink.status, 201);
    EXPECT_THAT(sink.headers, ::testing::IsSupersetOf({Pair("Content-Type", "text/plain"),
                                                       Pair("X-Kind", "async"),
                                                       Pair("X-Echo-Target", "/slow?x=1")}));
    EXPECT_EQ(sink.body, "the answer, held back a while");
    EXPECT_EQ(sink.last_at, sink.parts);  // its length was known: the last part says so
    // The sink ran on the loop's thread, this one.
    EXPECT_THAT(sink.threads, ::testing::Each(std::this_thread::get_id()));
    // 500 ms of stall at 5 ms a tick: the loop was free nearly all along.
    EXPECT_GE(ticks, 20);
    EXPECT_LT(longest_gap, std::chrono::milliseconds(250));
    const RecordedRequest seen = server->requests().back();
    EXPECT_EQ(seen.method, "GET");
    EXPECT_EQ(seen.target, "/slow?x=1");
    EXPECT_EQ(seen.Header("Accept"), "text/plain");
    EXPECT_EQ(seen.Header("User-Agent"), "grantvault/0.1");
  }
  EXPECT_EQ(server->requests()[0].Header("Host"), absl::StrCat("127.0.0.1:", server->port()));
  EXPECT_EQ(server->requests()[1].Header("Host"), absl::StrCat("localhost:", server->port()));
}

TEST_F(HttpClientTest, StreamAsyncSinkThatSuspendsGetsTheWholeBodyInOrder) {
  std::string big;
  // Numbered, so that a part lost, repeated or out of order shows. (Parts come
  // as they are read, often ~512 bytes: kept small enough for the deadline.)
  for (int i = 0; big.size() < 24000; ++i) absl::StrAppend(&big, i, ",");
  auto server = StartServer([&](const RecordedRequest&) {
    Reply reply;
    reply.chunked = true;
    reply.body = big;
    return reply;
  });
  asio::io_context io(1);
  HttpClientOptions options = TestOptions();
  options.request_timeout = absl::Seconds(10);  // the sink's pauses count against it
  auto client = NewAsyncClient(options);
  AsyncRecordingSink sink(/*pause=*/std::chrono::milliseconds(20));
  std::optional<absl::StatusOr<StreamResult>> result;
  const Clock::time_point start = Clock::now();
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    result = co_await client->StreamAsync(Get(server->Url("/big")), absl::Seconds(8), sink, {});
  });
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status();
  EXPECT_EQ((*result)->status, 200);
  EXPECT_EQ((*result)->body_bytes, big.size());
  EXPECT_GT(sink.parts, 1);  // in parts, each held 20 ms
  // Chunked: the body's end may come on its own, after its last part; no
  // part before the last says it is the last.
  EXPECT_TRUE(sink.last_at == 0 || sink.last_at == sink.parts) << sink.last_at;
  EXPECT_EQ(sink.pauses, sink.parts);
  EXPECT_GE(Since(start), std::chrono::milliseconds(20) * sink.parts);
  EXPECT_TRUE(sink.body == big) << "the body differs: " << sink.body.size() << " bytes of "
                                << big.size();
  EXPECT_THAT(sink.threads, ::testing::Each(std::this_thread::get_id()));
}

TEST_F(HttpClientTest, StreamAsyncSinkThatRefusesTheHeadCancels) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.body = std::string(50000, 'b');
    return reply;
  });
  asio::io_context io(1);
  auto client = NewAsyncClient(TestOptions());
  AsyncRecordingSink refusing(std::chrono::milliseconds(0), /*accept_head=*/false);
  AsyncRecordingSink after;
  std::optional<absl::StatusOr<StreamResult>> result;
  std::optional<absl::StatusOr<StreamResult>> next;
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    result = co_await client->StreamAsync(Get(server->Url("/refused")), absl::Seconds(3), refusing,
                                          StreamOptions{});
    next = co_await client->StreamAsync(Get(server->Url("/after")), absl::Seconds(3), after,
                                        StreamOptions{});
  });
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(absl::IsCancelled(result->status())) << result->status();
  EXPECT_EQ(refusing.heads, 1);
  EXPECT_EQ(refusing.parts, 0);
  // The unread answer makes the connection unusable: the next call opens another.
  ASSERT_TRUE(next.has_value());
  ASSERT_TRUE(next->ok()) << next->status();
  EXPECT_EQ(after.body.size(), 50000u);
  EXPECT_EQ(server->accepted_connections(), 2u);
}

TEST_F(HttpClientTest, StreamAsyncPublicAddressesOnlyRefusesLoopback) {
  auto server = StartServer();
  asio::io_context io(1);
  auto client = NewAsyncClient(TestOptions());
  StreamOptions options;
  options.public_addresses_only = true;
  AsyncRecordingSink sink;
  std::vector<absl::Status> refused;
  std::optional<absl::StatusOr<StreamResult>> unchecked;
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    refused.push_back(
        (co_await client->StreamAsync(Get(server->Url("/x")), absl::Seconds(3), sink, options))
            .status());
    // By name, too: what the name resolves to is what is checked.
    refused.push_back(
        (co_await client->StreamAsync(Get(absl::StrCat("https://localhost:", server->port(), "/x")),
                                      absl::Seconds(3), sink, options))
            .status());
    // A connection made without the check is not reused for a call that needs it.
    unchecked = co_await client->StreamAsync(Get(server->Url("/x")), absl::Seconds(3), sink,
                                             StreamOptions{});
    refused.push_back(
        (co_await client->StreamAsync(Get(server->Url("/x")), absl::Seconds(3), sink, options))
            .status());
  });
  ASSERT_EQ(refused.size(), 3u);
  for (const absl::Status& status : refused) {
    EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  }
  EXPECT_THAT(refused[0].message(), HasSubstr("127.0.0.1"));
  EXPECT_THAT(refused[1].message(), HasSubstr("localhost"));
  ASSERT_TRUE(unchecked.has_value());
  EXPECT_TRUE(unchecked->ok()) << unchecked->status();
  EXPECT_EQ(server->accepted_connections(), 1u);  // the unchecked call's only
  EXPECT_EQ(server->request_count(), 1u);
  EXPECT_EQ(sink.heads, 1);
}

TEST_F(HttpClientTest, StreamAsyncCancellationFromAnotherThreadEndsTheCallAtOnce) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.stall = std::chrono::milliseconds(4000);
    return reply;
  });
  asio::io_context io(1);
  auto client = NewAsyncClient(TestOptions());
  Cancellation cancellation;
  StreamOptions options;
  options.cancellation = &cancellation;
  std::thread canceller([&] {
    server->WaitForRequests(1, absl::Seconds(3));
    cancellation.Cancel();
  });
  AsyncRecordingSink sink;
  std::optional<absl::StatusOr<StreamResult>> result;
  std::chrono::milliseconds took{0};
  std::optional<absl::StatusOr<StreamResult>> after_cancel;
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    const Clock::time_point start = Clock::now();
    result =
        co_await client->StreamAsync(Get(server->Url("/held")), absl::Seconds(3), sink, options);
    took = Since(start);
    // Cancelled before it starts: nothing is sent.
    after_cancel =
        co_await client->StreamAsync(Get(server->Url("/never")), absl::Seconds(3), sink, options);
  });
  canceller.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(absl::IsCancelled(result->status())) << result->status();
  EXPECT_LT(took, std::chrono::milliseconds(2000));
  EXPECT_EQ(sink.heads, 0);
  ASSERT_TRUE(after_cancel.has_value());
  EXPECT_TRUE(absl::IsCancelled(after_cancel->status())) << after_cancel->status();
  EXPECT_EQ(server->request_count(), 1u);
}

TEST_F(HttpClientTest, StreamAsyncHitsTheDeadline) {
  auto server = StartServer([](const RecordedRequest&) {
    Reply reply;
    reply.stall = std::chrono::milliseconds(3000);
    return reply;
  });
  PlainTcpServer silent("");  // accepts at the TCP level only: the handshake stalls
  HttpClientOptions client_options = TestOptions();
  client_options.connect_timeout = absl::Milliseconds(200);
  asio::io_context io(1);
  auto client = NewAsyncClient(client_options);
  AsyncRecordingSink sink;
  std::optional<absl::StatusOr<StreamResult>> stalled;
  std::optional<absl::StatusOr<StreamResult>> handshake;
  std::optional<absl::StatusOr<StreamResult>> no_time;
  std::chrono::milliseconds stalled_took{0};
  std::chrono::milliseconds handshake_took{0};
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    Clock::time_point start = Clock::now();
    stalled = co_await client->StreamAsync(Get(server->Url("/slow")), absl::Milliseconds(300), sink,
                                           StreamOptions{});
    stalled_took = Since(start);
    start = Clock::now();
    handshake =
        co_await client->StreamAsync(Get(absl::StrCat("https://127.0.0.1:", silent.port(), "/")),
                                     absl::Seconds(4), sink, StreamOptions{});
    handshake_took = Since(start);
    // A deadline that has already passed fails at once.
    no_time = co_await client->StreamAsync(Get(server->Url("/slow")), absl::ZeroDuration(), sink,
                                           StreamOptions{});
  });
  ASSERT_TRUE(stalled.has_value());
  EXPECT_EQ(stalled->status().code(), absl::StatusCode::kDeadlineExceeded) << stalled->status();
  EXPECT_GE(stalled_took, std::chrono::milliseconds(290));
  EXPECT_LT(stalled_took, std::chrono::milliseconds(1500));
  ASSERT_TRUE(handshake.has_value());
  EXPECT_EQ(handshake->status().code(), absl::StatusCode::kDeadlineExceeded) << handshake->status();
  EXPECT_LT(handshake_took, std::chrono::milliseconds(1500));
  ASSERT_TRUE(no_time.has_value());
  EXPECT_EQ(no_time->status().code(), absl::StatusCode::kDeadlineExceeded) << no_time->status();
  EXPECT_EQ(sink.heads, 0);
  EXPECT_EQ(server->request_count(), 1u);
}

TEST_F(HttpClientTest, StreamAsyncReusesTheLoopsConnectionUntilCloseIdleConnections) {
  auto server = StartServer();
  asio::io_context io(1);
  auto client = NewAsyncClient(TestOptions());
  AsyncRecordingSink sink;
  std::vector<absl::StatusOr<StreamResult>> results;
  const auto call = [&](std::string target) -> asio::awaitable<void> {
    HttpRequest request = Get(server->Url(target));
    request.method = "POST";
    request.body = target;
    results.push_back(co_await client->StreamAsync(request, absl::Seconds(3), sink, {}));
  };
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    co_await call("/one");
    co_await call("/two");
  });
  EXPECT_EQ(server->accepted_connections(), 1u);
  // Another run of the same loop: still its connection.
  RunOnLoop(io, [&]() -> asio::awaitable<void> { co_await call("/three"); });
  EXPECT_EQ(server->accepted_connections(), 1u);

  client->CloseIdleConnections();
  RunOnLoop(io, [&]() -> asio::awaitable<void> {
    co_await call("/four");
    co_await call("/five");
  });
  EXPECT_EQ(server->accepted_connections(), 2u);

  ASSERT_EQ(results.size(), 5u);
  for (const absl::StatusOr<StreamResult>& result : results) {
    EXPECT_TRUE(result.ok()) << result.status();
  }
  EXPECT_EQ(sink.body, "/one/two/three/four/five");  // Echo
  const std::vector<RecordedRequest> seen = server->requests();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].connection, seen[1].connection);
  EXPECT_EQ(seen[0].connection, seen[2].connection);
  EXPECT_NE(seen[2].connection, seen[3].connection);
  EXPECT_EQ(seen[3].connection, seen[4].connection);
}

TEST_F(HttpClientTest, StreamAsyncOnTwoLoopsAtOnceKeepsEachLoopsConnections) {
  auto server = StartServer([](const RecordedRequest& request) {
    Reply reply = Echo(request);
    reply.stall = std::chrono::milliseconds(150);  // the loops' calls overlap
    return reply;
  });
  constexpr size_t kLoops = 2;
  constexpr int kCallsPerLoop = 3;
  std::vector<std::unique_ptr<asio::io_context>> loops;  // before the client
  for (size_t i = 0; i < kLoops; ++i) loops.push_back(std::make_unique<asio::io_context>(1));
  auto client = NewAsyncClient(TestOptions());
  std::atomic<int> succeeded{0};
  std::vector<std::thread> threads;
  for (size_t l = 0; l < kLoops; ++l) {
    threads.emplace_back([&, l] {
      AsyncRecordingSink sink;
      RunOnLoop(*loops[l], [&]() -> asio::awaitable<void> {
        for (int i = 0; i < kCallsPerLoop; ++i) {
          HttpRequest request;
          request.method = "POST";
          request.url = server->Url(absl::StrCat("/loop/", l));
          request.body = absl::StrCat("loop=", l, "&call=", i);
          const size_t before = sink.body.size();
          absl::StatusOr<StreamResult> result =
              co_await client->StreamAsync(request, absl::Seconds(3), sink, {});
          if (result.ok() && result->status == 200 && sink.body.substr(before) == request.body) {
            ++succeeded;
          } else {
            ADD_FAILURE() << "loop " << l << " call " << i << ": "
                          << (result.ok() ? sink.body : result.status().ToString());
          }
        }
      });
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(succeeded.load(), static_cast<int>(kLoops) * kCallsPerLoop);

  // One connection per loop, used by that loop's calls only.
  EXPECT_EQ(server->accepted_connections(), kLoops);
  std::vector<size_t> connection_of(kLoops, 0);
  for (const RecordedRequest& seen : server->requests()) {
    const size_t l = seen.target == "/loop/0" ? 0 : 1;
    if (connection_of[l] == 0) connection_of[l] = seen.connection;
    EXPECT_EQ(seen.connection, connection_of[l]) << seen.target << " " << seen.body;
  }
  EXPECT_NE(connection_of[0], connection_of[1]);
  client->CloseIdleConnections();
}

TEST(NonPublicAddressTest, NamesLoopbackPrivateLinkLocalAndReservedRanges) {
  for (const char* refused : {"127.0.0.1",
                              "10.1.2.3",
                              "172.16.0.1",
                              "172.31.255.255",
                              "192.168.1.1",
                              "169.254.169.254",
                              "100.64.0.1",
                              "0.0.0.0",
                              "224.0.0.1",
                              "255.255.255.255",
                              "198.18.0.1",
                              "192.0.2.5",
                              "::1",
                              "::",
                              "fe80::1",
                              "fc00::1",
                              "fd12::1",
                              "ff02::1",
                              "::ffff:127.0.0.1",
                              "::ffff:10.0.0.1",
                              "64:ff9b::a00:1",
                              "2001:db8::1",
                              "2002:a00:1::",
                              "not an address"}) {
    EXPECT_TRUE(IsNonPublicAddress(refused)) << refused;
  }
  for (const char* allowed : {"8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "142.250.1.1",
                              "2a00:1450:4001::1", "2606:4700::1111", "::ffff:8.8.8.8"}) {
    EXPECT_FALSE(IsNonPublicAddress(allowed)) << allowed;
  }
}

TEST(PercentEncodeTest, KeepsUnreservedAndEncodesEverythingElse) {
  EXPECT_EQ(PercentEncode(""), "");
  EXPECT_EQ(PercentEncode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(PercentEncode("a b"), "a%20b");
  EXPECT_EQ(PercentEncode("a+b&c=d/e?f#g%h"), "a%2Bb%26c%3Dd%2Fe%3Ff%23g%25h");
  EXPECT_EQ(PercentEncode(":@!$'()*,;[]"), "%3A%40%21%24%27%28%29%2A%2C%3B%5B%5D");
  EXPECT_EQ(PercentEncode("\xC3\xA9t\xC3\xA9"), "%C3%A9t%C3%A9");
  EXPECT_EQ(PercentEncode(std::string("\0\n\x7f\xff", 4)), "%00%0A%7F%FF");
}

TEST(FormEncodeTest, EncodesFieldsInOrder) {
  EXPECT_EQ(FormEncode({}), "");
  EXPECT_EQ(FormEncode({{"grant_type", "authorization_code"},
                        {"code", "SplxlOBeZQQYbYS6WxSbIA"},
                        {"redirect_uri", "https://client.example.com/cb?a=1&b=2"},
                        {"scope", "openid email"},
                        {"empty", ""}}),
            "grant_type=authorization_code&code=SplxlOBeZQQYbYS6WxSbIA"
            "&redirect_uri=https%3A%2F%2Fclient.example.com%2Fcb%3Fa%3D1%26b%3D2"
            "&scope=openid%20email&empty=");
  EXPECT_EQ(FormEncode({{"a b", "c+d"}, {"k", "=&"}}), "a%20b=c%2Bd&k=%3D%26");
}

}  // namespace
}  // namespace grantvault::oauth
