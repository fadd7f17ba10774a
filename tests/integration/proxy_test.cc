// End-to-end proxy: the real grantvaultd proxies an agent's API calls to a
// local TLS API server with the credential of a grant authorized against the
// real oidc-provider. The agent (this test, through the C++ client library)
// never receives the token; the API server sees it.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_cert.h"
#include "tests/testing/tls_test_server.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using testing::DaemonProcess;
using ::testing::HasSubstr;
using testing::RecordedRequest;
using testing::Reply;
using testing::ReplyHandler;

constexpr char kWorkspace[] = "ws_acme";

std::string PolicyFor(uid_t uid) {
  return absl::StrCat(R"([[callers]]
uid = )",
                      uid, R"(
role = "agent"
workspaces = ["ws_acme"]

[workspaces.ws_acme]

[[workspaces.ws_acme.tools]]
name = "read_things"
connector = "demo"
scopes = ["read"]
http = ["GET /v1/things", "GET /v1/hold", "GET /v1/moved", "GET /v1/big", "GET /v1/limited"]

[[workspaces.ws_acme.tools]]
name = "write_things"
connector = "demo"
scopes = ["read", "write"]
http = ["POST /v1/things"]

[[workspaces.ws_acme.tools]]
name = "anything"
connector = "demo"
scopes = ["read"]
)");
}

std::string Str(const absl::Status& s) { return std::string(s.message()); }

std::string PayloadOf(const absl::Status& s, const char* key) {
  const absl::optional<absl::Cord> p = s.GetPayload(key);
  return p ? std::string(*p) : std::string();
}

class ProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = absl::Seconds(300);
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);

    certs_ = testing::WriteTestCertificates(dir_.path());
    testing::TlsTestServerOptions api;
    api.cert_file = certs_.cert_file;
    api.key_file = certs_.key_file;
    api.handler = [](const RecordedRequest&) { return Reply{}; };
    auto server = testing::TlsTestServer::Start(std::move(api));
    ASSERT_TRUE(server.ok()) << server.status();
    api_ = std::move(*server);

    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
    policy_ = dir_.Join("policy.toml");
    std::ofstream(policy_) << PolicyFor(::getuid());
    std::ofstream(config_) << "[oauth]\nca_file = \"" << provider_->ca_file()
                           << "\"\nuse_system_trust_store = false\n[policy]\nfile = \"" << policy_
                           << "\"\n[proxy]\nca_file = \"" << certs_.ca_file
                           << "\"\nuse_system_trust_store = false\nmax_response_bytes = 65536\n"
                           << "[log]\nlevel = \"debug\"\n";  // a line per proxied call
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    Register(/*private_network=*/true);
    Authorize();
    auto agent = ipc::Client::Connect(state_ + "/run/agent.sock");
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = std::move(*agent);
  }
  void TearDown() override {
    agent_.reset();
    admin_.reset();
    if (daemon_ && daemon_->running()) daemon_->Stop(SIGTERM);
  }

  v1::Response Admin(v1::Request request) {
    if (admin_ == nullptr) {
      auto admin = ipc::Client::Connect(state_ + "/run/admin.sock");
      EXPECT_TRUE(admin.ok()) << admin.status();
      if (!admin.ok()) return v1::Response();
      admin_ = std::move(*admin);
    }
    request.set_admin_user("alice-admin");
    auto response = admin_->Call(std::move(request), absl::Seconds(30));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::Response();
  }

  void Register(bool private_network) {
    v1::Request reg;
    v1::RegisterConnectorRequest* r = reg.mutable_register_connector();
    r->set_connector_id("demo");
    r->set_connector_type("oidc");
    r->set_client_id(provider_->clients()[0].client_id);
    r->set_client_secret(provider_->clients()[0].client_secret);
    r->set_issuer(provider_->issuer());
    r->add_api_base_urls(api_->Url("/v1/"));
    r->set_allow_private_network(private_network);
    v1::Response registered = Admin(reg);
    ASSERT_FALSE(registered.has_error()) << registered.error().message();
  }

  void Authorize() {
    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id(kWorkspace);
    begin.mutable_begin_authorization()->set_connector_id("demo");
    for (const char* s : {"openid", "offline_access", "read", "write"}) {
      begin.mutable_begin_authorization()->add_scopes(s);
    }
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    v1::Response started = Admin(begin);
    ASSERT_FALSE(started.has_error()) << started.error().message();
    absl::StatusOr<std::string> redirect =
        provider_->Approve(started.begin_authorization().authorization_url());
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    v1::Request complete;
    complete.mutable_complete_authorization()->set_callback_url(*redirect);
    v1::Response done = Admin(complete);
    ASSERT_FALSE(done.has_error()) << done.error().message() << daemon_->Stderr();
    grant_id_ = done.complete_authorization().grant().grant_id();
  }

  // The grant's current token, as a Resolve from this (policy-listed) process gives it.
  std::string CurrentToken() {
    v1::Request request;
    request.mutable_resolve()->set_workspace_id(kWorkspace);
    request.mutable_resolve()->set_connector_id("demo");
    request.mutable_resolve()->set_tool("read_things");
    auto r = agent_->Call(request, absl::Seconds(30));
    EXPECT_TRUE(r.ok() && r->has_resolve()) << (r.ok() ? r->error().message() : Str(r.status()));
    return r.ok() ? r->resolve().access_token() : std::string();
  }

  struct Answer {
    absl::StatusOr<uint64_t> end = absl::UnknownError("not called");
    v1::ProxyResponseHead head;
    std::string body;
  };
  static v1::ProxyRequest Call(std::string tool, std::string method, std::string url) {
    v1::ProxyRequest call;
    call.set_workspace_id(kWorkspace);
    call.set_connector_id("demo");
    call.set_tool(std::move(tool));
    call.set_method(std::move(method));
    call.set_url(std::move(url));
    return call;
  }
  // A handler that holds each request until `gate` is notified (or 20 s).
  // The handler owns the gate: it runs on the API server's thread, which may
  // still be inside the wait when the test's body has returned.
  static ReplyHandler Held(std::shared_ptr<absl::Notification> gate) {
    return [gate = std::move(gate)](const RecordedRequest&) {
      gate->WaitForNotificationWithTimeout(absl::Seconds(20));
      return Reply{};
    };
  }
  Answer Proxy(v1::ProxyRequest call, ipc::Client* client = nullptr) {
    Answer a;
    a.end = ipc::ProxyCall(
        client == nullptr ? *agent_ : *client, std::move(call), absl::Seconds(30),
        [&a](const v1::ProxyResponseHead& head) { a.head = head; },
        [&a](std::string_view part) { a.body.append(part); });
    return a;
  }

  testing::TempDir dir_;
  testing::CertificateFiles certs_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::unique_ptr<testing::TlsTestServer> api_;
  std::string state_, config_, policy_, grant_id_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<ipc::Client> admin_, agent_;
};

TEST_F(ProxyTest, TheCallGoesOutWithTheGrantsTokenAndItsAnswerStreamsBack) {
  api_->SetHandler([](const RecordedRequest& request) {
    Reply reply;
    reply.chunked = true;
    reply.headers = {{"Content-Type", "application/json"},
                     {"Set-Cookie", "s=1"},
                     {"Content-Disposition", "attachment; filename=\"r\xe9sum\xe9.txt\""}};
    reply.body = absl::StrCat(R"({"path":")", request.target, R"(","pad":")",
                              std::string(100000 / 2, 'p'), "\"}");
    return reply;
  });
  v1::ProxyRequest call = Call("read_things", "GET", "/v1/things/42?limit=5");
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"Accept", "application/json"},
                                                        {"Authorization", "Bearer the-agents-own"},
                                                        {"Cookie", "c=1"},
                                                        {"Connection", "X-Drop-Me"},
                                                        {"X-Drop-Me", "1"},
                                                        {"Proxy-Authorization", "Basic eA=="},
                                                        {"X-HTTP-Method-Override", "DELETE"},
                                                        {"X-Forwarded-Host", "evil.example.com"}}) {
    v1::HttpHeader* h = call.add_headers();
    h->set_name(name);
    h->set_value(value);
  }
  Answer a = Proxy(std::move(call));
  ASSERT_TRUE(a.end.ok()) << a.end.status() << daemon_->Stderr();
  EXPECT_EQ(a.head.status(), 200u);
  EXPECT_EQ(a.head.grant_id(), grant_id_);
  EXPECT_EQ(a.head.account_id(), "alice");
  EXPECT_THAT(a.body, HasSubstr(R"({"path":"/v1/things/42?limit=5")"));
  EXPECT_EQ(*a.end, a.body.size());
  for (const v1::HttpHeader& h : a.head.headers()) {
    EXPECT_FALSE(absl::EqualsIgnoreCase(h.name(), "set-cookie")) << h.name();
    EXPECT_FALSE(absl::EqualsIgnoreCase(h.name(), "transfer-encoding")) << h.name();
    // Not UTF-8 (obs-text): it could not travel in a protobuf string.
    EXPECT_FALSE(absl::EqualsIgnoreCase(h.name(), "content-disposition")) << h.name();
  }

  ASSERT_EQ(api_->request_count(), 1u);
  const RecordedRequest seen = api_->requests().front();
  EXPECT_EQ(seen.Header("Authorization"), "Bearer " + CurrentToken());
  EXPECT_EQ(seen.Header("Accept"), "application/json");
  for (const char* dropped : {"Cookie", "X-Drop-Me", "Proxy-Authorization",
                              "X-HTTP-Method-Override", "X-Forwarded-Host"}) {
    EXPECT_FALSE(seen.Header(dropped).has_value()) << dropped;
  }
  // Audited, and logged without the query or the token.
  const std::string log = daemon_->Stderr();
  EXPECT_THAT(log, HasSubstr("proxy.call uid="));
  EXPECT_THAT(log, HasSubstr("path=/v1/things/…"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("limit=5")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr(CurrentToken())));
}

TEST_F(ProxyTest, ABodyIsSentAndTheToolsMethodIsEnforced) {
  api_->SetHandler([](const RecordedRequest& request) {
    Reply reply;
    reply.status = 201;
    reply.body = absl::StrCat("got ", request.body.size(), " bytes");
    return reply;
  });
  v1::ProxyRequest post = Call("write_things", "POST", "/v1/things");
  post.set_body(std::string(50000, 'b'));
  Answer a = Proxy(post);
  ASSERT_TRUE(a.end.ok()) << a.end.status();
  EXPECT_EQ(a.head.status(), 201u);
  EXPECT_EQ(a.body, "got 50000 bytes");

  // The same call under a tool that declares only GET: refused before it leaves.
  post.set_tool("read_things");
  Answer refused = Proxy(post);
  EXPECT_TRUE(absl::IsPermissionDenied(refused.end.status())) << refused.end.status();
  EXPECT_THAT(Str(refused.end.status()), HasSubstr("may not make this POST call"));
  // A body over the cap of one frame.
  post.set_tool("write_things");
  post.set_body(std::string(62 * 1024, 'b'));
  EXPECT_TRUE(absl::IsResourceExhausted(Proxy(post).end.status()));
  EXPECT_EQ(api_->request_count(), 1u);
}

TEST_F(ProxyTest, PathsOutsideTheToolsPrefixesAndHostsOutsideTheApiBasesAreRefused) {
  for (const std::string& url :
       {std::string("/v1/thingsX"), std::string("/v1/other"), std::string("/v1/things/../admin"),
        std::string("/v1/things/%2e%2e/admin"), std::string("/v1//things")}) {
    Answer a = Proxy(Call("read_things", "GET", url));
    EXPECT_FALSE(a.end.ok()) << url;
    EXPECT_TRUE(absl::IsPermissionDenied(a.end.status()) || absl::IsInvalidArgument(a.end.status()))
        << url << ": " << a.end.status();
  }
  // Another host (the same server by another address), another port, another base path.
  for (const std::string& url : {absl::StrCat("https://localhost:", api_->port(), "/v1/things"),
                                 absl::StrCat("https://127.0.0.1:", api_->port() + 1, "/v1/things"),
                                 absl::StrCat("https://127.0.0.1:", api_->port(), "/v2/things"),
                                 std::string("http://127.0.0.1/v1/things")}) {
    Answer a = Proxy(Call("anything", "GET", url));
    EXPECT_FALSE(a.end.ok()) << url;
    if (!absl::StartsWith(url, "http:")) {
      EXPECT_TRUE(absl::IsPermissionDenied(a.end.status())) << url << ": " << a.end.status();
      EXPECT_THAT(Str(a.end.status()), HasSubstr("API bases")) << url;
    }
  }
  EXPECT_EQ(api_->request_count(), 0u);
  // The full URL of a base works like its path.
  Answer a = Proxy(Call("anything", "GET", api_->Url("/v1/anything/at/all")));
  EXPECT_TRUE(a.end.ok()) << a.end.status();
}

TEST_F(ProxyTest, RedirectsAreFollowedOnlyWithinTheApiBases) {
  const std::string elsewhere = absl::StrCat("https://localhost:", api_->port(), "/v1/things/1");
  api_->SetHandler([&](const RecordedRequest& request) {
    Reply reply;
    if (absl::StartsWith(request.target, "/v1/moved/in")) {
      reply.status = 302;
      reply.headers = {{"Location", "/v1/things/1"}};
    } else if (absl::StartsWith(request.target, "/v1/moved/undeclared")) {
      reply.status = 307;
      reply.headers = {{"Location", "/v1/admin/delete-everything"}};
    } else if (absl::StartsWith(request.target, "/v1/moved/out")) {
      reply.status = 307;
      reply.headers = {{"Location", elsewhere}};
    } else {
      reply.body = "here";
    }
    return reply;
  });
  Answer in = Proxy(Call("read_things", "GET", "/v1/moved/in"));
  ASSERT_TRUE(in.end.ok()) << in.end.status();
  EXPECT_EQ(in.body, "here");
  ASSERT_EQ(api_->request_count(), 2u);
  EXPECT_EQ(api_->requests()[1].Header("Authorization"), "Bearer " + CurrentToken());

  Answer out = Proxy(Call("read_things", "GET", "/v1/moved/out"));
  EXPECT_TRUE(absl::IsPermissionDenied(out.end.status())) << out.end.status();
  EXPECT_THAT(Str(out.end.status()), HasSubstr("redirected"));
  EXPECT_EQ(api_->request_count(), 3u);  // the redirect to the other host was not followed

  // Within the API bases, but not where the tool may go: not followed either.
  Answer undeclared = Proxy(Call("read_things", "GET", "/v1/moved/undeclared"));
  EXPECT_TRUE(absl::IsPermissionDenied(undeclared.end.status())) << undeclared.end.status();
  EXPECT_THAT(Str(undeclared.end.status()), HasSubstr("outside what it declares"));
  EXPECT_EQ(api_->request_count(), 4u);
}

TEST_F(ProxyTest, AnAnswerOverTheCapIsRefused) {
  api_->SetHandler([](const RecordedRequest&) {
    Reply reply;
    reply.oversized_body_bytes = 200000;
    return reply;
  });
  Answer a = Proxy(Call("read_things", "GET", "/v1/big"));
  EXPECT_TRUE(absl::IsResourceExhausted(a.end.status())) << a.end.status();
  EXPECT_THAT(Str(a.end.status()), HasSubstr("exceeds"));
}

TEST_F(ProxyTest, A401RenewsTheTokenOnceAndTheCallIsSentAgain) {
  const std::string first = CurrentToken();
  const int refreshes = provider_->RefreshesServed();
  api_->SetHandler([&](const RecordedRequest& request) {
    Reply reply;
    if (request.Header("Authorization") == "Bearer " + first) {
      reply.status = 401;
      reply.headers = {{"WWW-Authenticate", "Bearer error=\"invalid_token\""}};
    } else {
      reply.body = "fresh";
    }
    return reply;
  });
  Answer a = Proxy(Call("read_things", "GET", "/v1/things"));
  ASSERT_TRUE(a.end.ok()) << a.end.status() << daemon_->Stderr();
  EXPECT_EQ(a.body, "fresh");
  EXPECT_EQ(provider_->RefreshesServed(), refreshes + 1);
  ASSERT_EQ(api_->request_count(), 2u);
  const std::string second = CurrentToken();
  EXPECT_NE(second, first);
  EXPECT_EQ(api_->requests()[1].Header("Authorization"), "Bearer " + second);

  // A token the API keeps refusing: the 401 is the answer, and no refresh
  // follows another within Refresher::kMinRenewInterval, however often the
  // agent calls.
  api_->SetHandler([](const RecordedRequest&) {
    Reply reply;
    reply.status = 401;
    return reply;
  });
  for (int i = 0; i < 3; ++i) {
    Answer refused = Proxy(Call("read_things", "GET", "/v1/things"));
    ASSERT_TRUE(refused.end.ok()) << refused.end.status();
    EXPECT_EQ(refused.head.status(), 401u);
  }
  EXPECT_EQ(provider_->RefreshesServed(), refreshes + 1);
}

TEST_F(ProxyTest, TooManyRequestsWithRetryAfterIsUnavailableWithItsWait) {
  api_->SetHandler([](const RecordedRequest&) {
    Reply reply;
    reply.status = 429;
    reply.headers = {{"Retry-After", "2"}};
    return reply;
  });
  Answer a = Proxy(Call("read_things", "GET", "/v1/limited"));
  EXPECT_TRUE(absl::IsUnavailable(a.end.status())) << a.end.status();
  EXPECT_EQ(PayloadOf(a.end.status(), "grantvault.retry_after_ms"), "2000");
  EXPECT_EQ(PayloadOf(a.end.status(), "grantvault.upstream_status"), "429");
  // Without Retry-After the API's answer is the caller's to read.
  api_->SetHandler([](const RecordedRequest&) {
    Reply reply;
    reply.status = 503;
    reply.body = "down";
    return reply;
  });
  Answer passed = Proxy(Call("read_things", "GET", "/v1/limited"));
  ASSERT_TRUE(passed.end.ok()) << passed.end.status();
  EXPECT_EQ(passed.head.status(), 503u);
}

TEST_F(ProxyTest, RevocationEndsACallInFlightAndRefusesTheNext) {
  auto release = std::make_shared<absl::Notification>();
  api_->SetHandler(Held(release));
  absl::StatusOr<uint64_t> held = absl::UnknownError("not done");
  absl::Time ended;
  std::thread caller([&] {
    held = Proxy(Call("read_things", "GET", "/v1/hold")).end;
    ended = absl::Now();
  });
  ASSERT_TRUE(api_->WaitForRequests(1, absl::Seconds(10)));
  v1::Request revoke;
  revoke.mutable_revoke_grant()->set_grant_id(grant_id_);
  revoke.mutable_revoke_grant()->set_reason("test");
  const absl::Time revoked_at = absl::Now();
  v1::Response r = Admin(revoke);
  ASSERT_FALSE(r.has_error()) << r.error().message();
  caller.join();
  release->Notify();
  EXPECT_TRUE(absl::IsFailedPrecondition(held.status())) << held.status();
  EXPECT_EQ(PayloadOf(held.status(), "grantvault.error_code"), "REVOKED");
  EXPECT_LT(ended - revoked_at, absl::Seconds(1));

  Answer next = Proxy(Call("read_things", "GET", "/v1/things"));
  EXPECT_EQ(PayloadOf(next.end.status(), "grantvault.error_code"), "REVOKED") << next.end.status();
}

TEST_F(ProxyTest, StoppingTheDaemonEndsACallInFlightAndItExitsCleanly) {
  // A first call leaves a connection to the API idle in the pool (on an I/O
  // thread's loop), which the stop must close before that loop goes.
  Answer first = Proxy(Call("read_things", "GET", "/v1/things"));
  ASSERT_TRUE(first.end.ok()) << first.end.status();
  auto hold = std::make_shared<absl::Notification>();
  api_->SetHandler(Held(hold));
  absl::StatusOr<uint64_t> held = absl::UnknownError("not done");
  std::thread caller([&] { held = Proxy(Call("read_things", "GET", "/v1/hold")).end; });
  ASSERT_TRUE(api_->WaitForRequests(2, absl::Seconds(10)));
  const absl::Time stopped_at = absl::Now();
  const int code = daemon_->Stop(SIGTERM);
  const absl::Duration took = absl::Now() - stopped_at;
  caller.join();
  hold->Notify();
  EXPECT_EQ(code, 0);  // no crash on the way out
  EXPECT_LT(took, absl::Seconds(5));
  // The call ended UNAVAILABLE (or its connection closed first, as the
  // daemon went): never an answer from an API it no longer waited for.
  EXPECT_FALSE(held.ok());
  EXPECT_TRUE(absl::IsUnavailable(held.status())) << held.status();
}

TEST_F(ProxyTest, ACancelEndsTheCallAndAClosedConnectionEndsItsCalls) {
  // The server answers one request at a time: each held call waits for its own release.
  auto first_release = std::make_shared<absl::Notification>();
  auto second_release = std::make_shared<absl::Notification>();
  api_->SetHandler(Held(first_release));
  v1::Request request;
  *request.mutable_proxy() = Call("read_things", "GET", "/v1/hold");
  absl::Notification done;
  absl::StatusOr<v1::Response> last = absl::UnknownError("unset");
  // The client assigns request ids in order: this call's is the next one.
  agent_->CallAsync(request, absl::Seconds(20), [&](absl::StatusOr<v1::Response> r) {
    last = std::move(r);
    done.Notify();
  });
  ASSERT_TRUE(api_->WaitForRequests(1, absl::Seconds(10)));
  // Find the call's id by cancelling ids until one is found (ids are small).
  bool found = false;
  for (uint64_t id = 1; id < 64 && !found; ++id) {
    v1::Request cancel;
    cancel.mutable_cancel()->set_target_request_id(id);
    auto reply = agent_->Call(cancel, absl::Seconds(5));
    ASSERT_TRUE(reply.ok()) << reply.status();
    found = reply->cancel().found();
  }
  EXPECT_TRUE(found);
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  ASSERT_TRUE(last.ok()) << last.status();
  ASSERT_TRUE(last->has_error());
  EXPECT_EQ(last->error().code(), v1::Error::CANCELLED);
  api_->SetHandler(Held(second_release));
  first_release->Notify();

  // A caller that goes away: its call ends (and is recorded) at once, while
  // the API still holds it.
  auto leaving = ipc::Client::Connect(state_ + "/run/agent.sock");
  ASSERT_TRUE(leaving.ok()) << leaving.status();
  (*leaving)->CallAsync(request, absl::Seconds(20), [](absl::StatusOr<v1::Response>) {});
  ASSERT_TRUE(api_->WaitForRequests(2, absl::Seconds(10)));
  auto ended_calls = [&] {
    const std::string log = daemon_->Stderr();
    int n = 0;
    for (size_t at = log.find("outcome=failed"); at != std::string::npos;
         at = log.find("outcome=failed", at + 1)) {
      ++n;
    }
    return n;
  };
  const int before = ended_calls();
  leaving->reset();
  EXPECT_TRUE(testing::WaitFor([&] { return ended_calls() > before; }, absl::Seconds(2)));
  second_release->Notify();
}

TEST_F(ProxyTest, WithoutThePrivateNetworkALoopbackApiIsRefused) {
  Register(/*private_network=*/false);
  Answer a = Proxy(Call("read_things", "GET", "/v1/things"));
  EXPECT_TRUE(absl::IsPermissionDenied(a.end.status())) << a.end.status();
  EXPECT_THAT(Str(a.end.status()), HasSubstr("loopback, private or reserved"));
  EXPECT_EQ(api_->request_count(), 0u);
}

}  // namespace
}  // namespace grantvault
