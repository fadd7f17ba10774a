// End-to-end authorization: the real grantvaultd and grantvault CLI (with its
// loopback redirect listener) against the real oidc-provider over TLS.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>

#include "absl/time/time.h"
#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "grantvault/v1/envelope.pb.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "nlohmann/json.hpp"
#include "oauth/http_client.h"
#include "oauth/pkce.h"
#include "tests/testing/daemon_config.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

using testing::CommandResult;
using testing::DaemonProcess;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunCommand;
using json = nlohmann::json;

constexpr char kHubRedirect[] = "https://hub.example.test/oauth/callback";

// GETs an http://127.0.0.1:PORT/… URL (what the browser does at the end of
// the flow); returns the status line.
std::string BrowserGet(const std::string& url) {
  const std::string rest = url.substr(std::string("http://127.0.0.1:").size());
  const int port = std::stoi(rest.substr(0, rest.find('/')));
  const std::string target = rest.substr(rest.find('/'));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  const std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  char buf[1024];
  ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
  ::close(fd);
  std::string answer = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  return answer.substr(0, answer.find("\r\n"));
}

class AuthorizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Client 0 is a native client (loopback redirects); client 1 a web client
    // whose one redirect URI is the hub's (nothing listens there: the test
    // plays the browser and the admin who pastes the URL).
    testing::OAuthProviderOptions options;
    options.clients.resize(2);
    options.clients[1].client_id = "grantvault-hub";
    options.clients[1].client_secret = "grantvault-hub-secret";
    options.clients[1].redirect_uris = {kHubRedirect};
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    // This uid may resolve for ws_acme (the CLI's resolve is an agent call).
    config_ = testing::WriteAgentDaemonConfig(dir_, provider_->ca_file(), "ws_acme");
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    secret_file_ = WriteSecretFile("client.secret", provider_->clients()[0].client_secret);
    oauth::HttpClientOptions http;
    http.use_system_trust_store = false;
    http.ca_file = provider_->ca_file();
    auto client = oauth::NewHttpClient(http);
    ASSERT_TRUE(client.ok()) << client.status();
    http_ = std::move(*client);
  }

  std::string WriteSecretFile(const std::string& name, const std::string& secret) {
    const std::string path = dir_.Join(name);
    std::ofstream(path, std::ios::trunc) << secret;
    ::chmod(path.c_str(), 0600);
    return path;
  }

  CommandResult RegisterDemo(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"connectors",
                                     "register",
                                     "--id",
                                     "demo",
                                     "--type",
                                     "oidc",
                                     "--client-id",
                                     provider_->clients()[0].client_id,
                                     "--client-secret-file",
                                     secret_file_,
                                     "--issuer",
                                     provider_->issuer()};
    args.insert(args.end(), extra.begin(), extra.end());
    return Cli(args);
  }

  // Begin and Complete over admin.sock, the user played at the provider;
  // returns the grant id.
  std::string AuthorizeThroughTheSocket(const std::string& connector) {
    auto admin = ipc::Client::Connect(state_ + "/run/admin.sock");
    EXPECT_TRUE(admin.ok()) << admin.status();
    if (!admin.ok()) return "";
    v1::Request begin;
    begin.set_admin_user("alice-admin");
    begin.mutable_begin_authorization()->set_workspace_id("ws_acme");
    begin.mutable_begin_authorization()->set_connector_id(connector);
    begin.mutable_begin_authorization()->add_scopes("openid");
    begin.mutable_begin_authorization()->add_scopes("offline_access");
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    auto started = (*admin)->Call(begin, absl::Seconds(30));
    EXPECT_TRUE(started.ok() && started->has_begin_authorization())
        << (started.ok() ? started->error().message() : started.status().ToString());
    if (!started.ok() || !started->has_begin_authorization()) return "";
    auto redirect = provider_->Approve(started->begin_authorization().authorization_url());
    EXPECT_TRUE(redirect.ok()) << redirect.status();
    v1::Request complete;
    complete.set_admin_user("alice-admin");
    complete.mutable_complete_authorization()->set_callback_url(redirect.value_or(""));
    auto done = (*admin)->Call(complete, absl::Seconds(30));
    EXPECT_TRUE(done.ok() && done->has_complete_authorization())
        << (done.ok() ? done->error().message() : done.status().ToString());
    return done.ok() ? done->complete_authorization().grant().grant_id() : "";
  }

  // RFC 7662 introspection at the provider, as client 0.
  json Introspect(const std::string& token) {
    oauth::HttpRequest discovery;
    discovery.url = provider_->issuer() + "/.well-known/openid-configuration";
    auto document = http_->Send(discovery, absl::Seconds(10));
    EXPECT_TRUE(document.ok()) << document.status();
    if (!document.ok()) return json();
    const json metadata = json::parse(document->body, nullptr, false);
    oauth::HttpRequest request;
    request.method = "POST";
    request.url = metadata.value("introspection_endpoint", "");
    request.headers = {
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"Accept", "application/json"},
        {"Authorization", "Basic " + oauth::Base64(provider_->clients()[0].client_id + ":" +
                                                   provider_->clients()[0].client_secret)}};
    request.body = oauth::FormEncode({{"token", token}});
    auto response = http_->Send(request, absl::Seconds(10));
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return json();
    return json::parse(response->body, nullptr, false);
  }

  // Runs `grantvault authorize ARGS…`; once it printed the URL, pastes what
  // `approve` (the user at the provider) makes of it on its stdin.
  struct AuthorizeRun {
    std::string url;  // empty when it refused before printing one
    int exit_code = -1;
    std::string out;  // after the URL
    std::string err;
  };
  AuthorizeRun AuthorizeWithPaste(const std::vector<std::string>& args,
                                  const std::function<std::string(const std::string&)>& approve) {
    AuthorizeRun run;
    std::vector<std::string> argv = {GV_CLI, "--state-dir", state_, "authorize"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargs;
    for (std::string& a : argv) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    const std::string err_file = dir_.Join("authorize.err");
    int in[2], out[2];
    EXPECT_EQ(::pipe(in), 0);
    EXPECT_EQ(::pipe(out), 0);
    pid_t cli = ::fork();
    if (cli == 0) {
      const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(in[0], STDIN_FILENO);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err, STDERR_FILENO);
      ::close(in[1]);
      ::close(out[0]);
      ::execv(GV_CLI, cargs.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    FILE* cli_out = ::fdopen(out[0], "r");
    char line[8192];
    if (std::fgets(line, sizeof(line), cli_out) != nullptr) {
      run.url = line;
      run.url.erase(run.url.find_last_not_of("\r\n") + 1);
      const std::string pasted = approve(run.url) + "\n";
      EXPECT_EQ(::write(in[1], pasted.data(), pasted.size()), static_cast<ssize_t>(pasted.size()));
    }
    ::close(in[1]);
    while (std::fgets(line, sizeof(line), cli_out) != nullptr) run.out += line;
    std::fclose(cli_out);
    int status = 0;
    EXPECT_EQ(::waitpid(cli, &status, 0), cli);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.err = testing::ReadFileOrDie(err_file);
    return run;
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop(SIGTERM);
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {GV_CLI, "--state-dir", state_});
    return RunCommand(args);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::string state_, config_, secret_file_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<oauth::HttpClient> http_;
};

TEST_F(AuthorizeTest, RegisterThenAuthorizeThroughTheLoopbackListener) {
  CommandResult reg = Cli({"connectors", "register", "--id", "demo", "--type", "oidc",
                           "--client-id", provider_->clients()[0].client_id, "--client-secret-file",
                           secret_file_, "--issuer", provider_->issuer()});
  ASSERT_EQ(reg.exit_code, 0) << reg.out << reg.err;
  CommandResult list = Cli({"connectors", "list"});
  EXPECT_THAT(list.out, HasSubstr("demo"));
  EXPECT_THAT(list.out, Not(HasSubstr(provider_->clients()[0].client_secret)));

  // `grantvault authorize` prints the URL, then waits on its loopback listener.
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  pid_t cli = ::fork();
  if (cli == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::execl(GV_CLI, GV_CLI, "--state-dir", state_.c_str(), "authorize", "--workspace", "ws_acme",
            "--connector", "demo", "--scopes", "openid offline_access read", "--wait", "30",
            nullptr);
    ::_exit(127);
  }
  ::close(out[1]);
  FILE* cli_out = ::fdopen(out[0], "r");
  char line[8192];
  ASSERT_NE(std::fgets(line, sizeof(line), cli_out), nullptr);
  std::string url(line);
  url.erase(url.find_last_not_of("\r\n") + 1);
  ASSERT_THAT(url, ::testing::StartsWith(provider_->issuer()));

  absl::StatusOr<std::string> redirect = provider_->Approve(url);
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  auto callback = oauth::ParseCallback(*redirect);
  ASSERT_TRUE(callback.ok());
  const std::string code(callback->code.view());
  EXPECT_EQ(BrowserGet(*redirect), "HTTP/1.1 200 OK");

  std::string rest;
  while (std::fgets(line, sizeof(line), cli_out) != nullptr) rest += line;
  std::fclose(cli_out);
  int status = 0;
  ASSERT_EQ(::waitpid(cli, &status, 0), cli);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << rest << daemon_->Stderr();
  EXPECT_THAT(rest, HasSubstr("Authorized: gr_"));
  EXPECT_THAT(rest, HasSubstr("account alice"));

  CommandResult grants = Cli({"--json", "grants", "list", "--workspace", "ws_acme"});
  EXPECT_EQ(grants.exit_code, 0) << grants.err;
  EXPECT_THAT(grants.out, HasSubstr("\"account_id\":\"alice\""));
  EXPECT_THAT(grants.out, HasSubstr("\"status\":\"active\""));

  // The daemon logged the authorization, and no code or secret.
  const std::string log = daemon_->Stderr();
  EXPECT_THAT(log, HasSubstr("grant.authorized"));
  EXPECT_THAT(log, HasSubstr("connector.registered"));
  EXPECT_THAT(log, Not(HasSubstr(code)));
  EXPECT_THAT(log, Not(HasSubstr(provider_->clients()[0].client_secret)));
  EXPECT_THAT(provider_->Log(), Not(HasSubstr(code)));

  // Nor the refresh token itself (unsealed here, after the daemon stopped).
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0);
  const std::string final_log = daemon_->Stderr();
  daemon_.reset();
  auto vault = daemon::OpenEmbeddedState(state_);
  ASSERT_TRUE(vault.ok()) << vault.status();
  auto grant_list = vault->store->ListGrants("ws_acme");
  ASSERT_TRUE(grant_list.ok());
  ASSERT_EQ(grant_list->size(), 1u);
  auto secret = vault->store->GetSealedSecret({(*grant_list)[0].grant_id, "refresh_token"});
  ASSERT_TRUE(secret.ok()) << secret.status();
  auto refresh = vault->sealer->Open(
      secret->record,
      hsm::SealContext{secret->workspace_id, secret->connector_id, secret->account_id,
                       secret->key.owner_id, secret->key.purpose});
  ASSERT_TRUE(refresh.ok());
  EXPECT_THAT(final_log, Not(HasSubstr(std::string(refresh->view()))));
  EXPECT_THAT(provider_->Log(), Not(HasSubstr(std::string(refresh->view()))));
}

TEST_F(AuthorizeTest, TheSameFlowWorksWithAPastedRedirectAndRefusesAReplay) {
  ASSERT_EQ(Cli({"connectors", "register", "--id", "demo", "--type", "oidc", "--client-id",
                 provider_->clients()[0].client_id, "--client-secret-file", secret_file_,
                 "--issuer", provider_->issuer()})
                .exit_code,
            0);
  int in[2], out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  pid_t cli = ::fork();
  if (cli == 0) {
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    ::close(in[1]);
    ::close(out[0]);
    ::execl(GV_CLI, GV_CLI, "--state-dir", state_.c_str(), "authorize", "--workspace", "ws_acme",
            "--connector", "demo", "--paste", nullptr);
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  FILE* cli_out = ::fdopen(out[0], "r");
  char line[8192];
  ASSERT_NE(std::fgets(line, sizeof(line), cli_out), nullptr);
  std::string url(line);
  url.erase(url.find_last_not_of("\r\n") + 1);
  absl::StatusOr<std::string> redirect = provider_->Approve(url);
  ASSERT_TRUE(redirect.ok()) << redirect.status();
  const std::string pasted = *redirect + "\n";
  ASSERT_EQ(::write(in[1], pasted.data(), pasted.size()), static_cast<ssize_t>(pasted.size()));
  ::close(in[1]);
  std::string rest;
  while (std::fgets(line, sizeof(line), cli_out) != nullptr) rest += line;
  std::fclose(cli_out);
  int status = 0;
  ASSERT_EQ(::waitpid(cli, &status, 0), cli);
  EXPECT_EQ(WEXITSTATUS(status), 0) << rest;

  // A replayed callback: the state was used.
  std::string replay_file = dir_.Join("replay");
  std::ofstream(replay_file) << *redirect << "\n";
  CommandResult replay =
      RunCommand({"/bin/sh", "-c",
                  std::string(GV_CLI) + " --state-dir " + state_ +
                      " authorize --workspace ws_acme --connector demo --paste < " + replay_file});
  EXPECT_EQ(replay.exit_code, 2) << replay.out << replay.err;
  EXPECT_THAT(replay.err, HasSubstr("already used"));
}

// A web client (Slack, Salesforce, HubSpot, Google "web application") accepts
// only its registered redirect URIs, usually the hub's own https one: the
// registration carries them, authorize picks one, and the admin pastes the
// URL the browser was sent to.
TEST_F(AuthorizeTest, AuthorizeThroughARegisteredHttpsRedirectUriPasted) {
  const std::string hub_secret =
      WriteSecretFile("hub.secret", provider_->clients()[1].client_secret);
  auto register_hub = [&](const std::string& redirect_uri) {
    return Cli({"connectors", "register", "--id", "hub", "--type", "oidc", "--client-id",
                provider_->clients()[1].client_id, "--client-secret-file", hub_secret, "--issuer",
                provider_->issuer(), "--redirect-uri", redirect_uri});
  };
  // Not https, and not on loopback; a fragment: refused, nothing registered.
  for (const char* bad :
       {"http://hub.example.test/oauth/callback", "https://hub.example.test/oauth/callback#x"}) {
    CommandResult refused = register_hub(bad);
    EXPECT_EQ(refused.exit_code, 2) << bad << refused.out << refused.err;
    EXPECT_THAT(refused.err, HasSubstr("RFC 8252")) << bad;
  }
  EXPECT_THAT(Cli({"connectors", "list"}).out, HasSubstr("No connector is registered"));

  CommandResult reg = register_hub(kHubRedirect);
  ASSERT_EQ(reg.exit_code, 0) << reg.out << reg.err;
  CommandResult list = Cli({"connectors", "list"});
  EXPECT_THAT(list.out, HasSubstr(std::string("redirect URI ") + kHubRedirect));
  const json listed = json::parse(Cli({"--json", "connectors", "list"}).out, nullptr, false);
  ASSERT_TRUE(listed.is_object());
  EXPECT_EQ(listed["connectors"][0]["redirect_uris"], json::array({kHubRedirect})) << listed.dump();

  std::string redirect;
  AuthorizeRun run = AuthorizeWithPaste({"--workspace", "ws_acme", "--connector", "hub", "--scopes",
                                         "openid offline_access", "--redirect-uri", kHubRedirect},
                                        [&](const std::string& url) {
                                          absl::StatusOr<std::string> location =
                                              provider_->Approve(url);
                                          EXPECT_TRUE(location.ok()) << location.status();
                                          redirect = location.value_or("");
                                          return redirect;
                                        });
  ASSERT_THAT(run.url, ::testing::StartsWith(provider_->issuer()));
  EXPECT_THAT(run.url, HasSubstr("redirect_uri=https%3A%2F%2Fhub.example.test%2Foauth%2Fcallback"));
  // The provider sent the browser to the hub, with the code and the state.
  EXPECT_THAT(redirect, ::testing::StartsWith(std::string(kHubRedirect) + "?"));
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err << daemon_->Stderr();
  EXPECT_THAT(run.out, HasSubstr("Authorized: gr_"));
  EXPECT_THAT(run.out, HasSubstr("account alice"));

  // A redirect URI the connector does not register is refused before any URL
  // is made; so is the loopback listener, which this client cannot use.
  CommandResult other = Cli({"authorize", "--workspace", "ws_acme", "--connector", "hub",
                             "--redirect-uri", "https://evil.example.test/oauth/callback"});
  EXPECT_EQ(other.exit_code, 2) << other.out << other.err;
  EXPECT_THAT(other.err, HasSubstr("is not registered for connector hub"));
  EXPECT_EQ(other.out, "");
  CommandResult loopback =
      Cli({"authorize", "--workspace", "ws_acme", "--connector", "hub", "--paste"});
  EXPECT_EQ(loopback.exit_code, 2) << loopback.out << loopback.err;
  EXPECT_THAT(loopback.err, HasSubstr("is not registered for connector hub"));
}

// Re-registering a connector cannot send its grants' refresh tokens to other
// endpoints: type, issuer, client id and parameters stay while grants use it.
TEST_F(AuthorizeTest, ARegistrationInUseKeepsWhereItsTokensGo) {
  ASSERT_EQ(RegisterDemo().exit_code, 0);
  const std::string grant_id = AuthorizeThroughTheSocket("demo");
  ASSERT_FALSE(grant_id.empty());

  CommandResult retyped =
      Cli({"connectors", "register", "--id", "demo", "--type", "github", "--client-id",
           "Iv1.attacker", "--client-secret-file", secret_file_});
  EXPECT_EQ(retyped.exit_code, 6) << retyped.out << retyped.err;
  EXPECT_THAT(retyped.err, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(retyped.err, HasSubstr("1 live grant(s)"));
  EXPECT_THAT(retyped.err, HasSubstr("its type, issuer, client id cannot change"));
  CommandResult reclient = Cli({"connectors", "register", "--id", "demo", "--type", "oidc",
                                "--client-id", "another-client", "--client-secret-file",
                                secret_file_, "--issuer", provider_->issuer()});
  EXPECT_EQ(reclient.exit_code, 6) << reclient.out << reclient.err;
  EXPECT_THAT(reclient.err, HasSubstr("its client id cannot change"));
  json listed = json::parse(Cli({"--json", "connectors", "list"}).out, nullptr, false);
  ASSERT_TRUE(listed.is_object());
  EXPECT_EQ(listed["connectors"][0]["connector_type"], "oidc") << listed.dump();
  EXPECT_EQ(listed["connectors"][0]["client_id"], provider_->clients()[0].client_id);

  // A new client secret and a registered redirect URI are fine; the grant
  // still refreshes with it (the secret is what the provider knows).
  CommandResult same = RegisterDemo({"--redirect-uri", "http://127.0.0.1/callback"});
  EXPECT_EQ(same.exit_code, 0) << same.out << same.err;
  CommandResult resolved =
      Cli({"resolve", "--workspace", "ws_acme", "--connector", "demo", "--min-valid", "1"});
  EXPECT_EQ(resolved.exit_code, 0) << resolved.out << resolved.err;

  // Revoked, and confirmed at the provider: nothing uses it any more.
  CommandResult revoked = Cli({"revoke", grant_id, "--reason", "moving the connector"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.out << revoked.err;
  std::string upstream = "pending";
  for (int i = 0; i < 300 && upstream == "pending"; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    json shown = json::parse(Cli({"--json", "grants", "show", grant_id}).out, nullptr, false);
    upstream = shown.is_object() ? shown["grant"].value("upstream_revocation", "") : "";
  }
  ASSERT_THAT(upstream, ::testing::AnyOf("revoked", "already_invalid"));
  CommandResult moved = Cli({"connectors", "register", "--id", "demo", "--type", "github",
                             "--client-id", "Iv1.other", "--client-secret-file", secret_file_});
  EXPECT_EQ(moved.exit_code, 0) << moved.out << moved.err;
}

// `resolve --json` is for developers and scripts: the token exactly as the
// provider issued it (protobuf's JSON mapping would print bytes as base64),
// numbers as numbers, times also as RFC 3339.
TEST_F(AuthorizeTest, ResolveJsonPrintsTheTokenAsTheProviderIssuedIt) {
  ASSERT_EQ(RegisterDemo().exit_code, 0);
  const std::string grant_id = AuthorizeThroughTheSocket("demo");
  ASSERT_FALSE(grant_id.empty());

  CommandResult revealed = Cli({"--json", "resolve", "--workspace", "ws_acme", "--connector",
                                "demo", "--min-valid", "5", "--reveal"});
  ASSERT_EQ(revealed.exit_code, 0) << revealed.out << revealed.err;
  const json out = json::parse(revealed.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << revealed.out;
  EXPECT_EQ(out["grant_id"], grant_id);
  EXPECT_EQ(out["account_id"], "alice");
  ASSERT_TRUE(out["access_token"].is_string()) << revealed.out;
  const std::string token = out["access_token"].get<std::string>();
  // The provider knows this very string as a live access token of the grant.
  const json introspected = Introspect(token);
  EXPECT_EQ(introspected["active"], true) << introspected.dump();
  EXPECT_EQ(introspected["sub"], "alice") << introspected.dump();
  EXPECT_EQ(introspected["client_id"], provider_->clients()[0].client_id);

  ASSERT_TRUE(out["expires_at_ms"].is_number_integer()) << revealed.out;
  const int64_t expires_at_ms = out["expires_at_ms"].get<int64_t>();
  ASSERT_TRUE(out["expires_at"].is_string()) << revealed.out;
  absl::Time expires_at;
  std::string error;
  ASSERT_TRUE(absl::ParseTime(absl::RFC3339_full, out["expires_at"].get<std::string>(), &expires_at,
                              &error))
      << error;
  EXPECT_EQ(absl::ToUnixMillis(expires_at), expires_at_ms);
  EXPECT_GT(expires_at, absl::Now());

  // Without --reveal: no token, only its length.
  CommandResult hidden = Cli(
      {"--json", "resolve", "--workspace", "ws_acme", "--connector", "demo", "--min-valid", "5"});
  ASSERT_EQ(hidden.exit_code, 0) << hidden.err;
  const json quiet = json::parse(hidden.out, nullptr, false);
  ASSERT_TRUE(quiet.is_object()) << hidden.out;
  EXPECT_FALSE(quiet.contains("access_token")) << hidden.out;
  EXPECT_EQ(quiet["access_token_length"], token.size());
  EXPECT_THAT(hidden.out, Not(HasSubstr(token)));

  // Grants: times as numbers and RFC 3339 (0 → null).
  const json shown = json::parse(Cli({"--json", "grants", "show", grant_id}).out, nullptr, false);
  ASSERT_TRUE(shown.is_object());
  EXPECT_TRUE(shown["grant"]["created_at_ms"].is_number_integer()) << shown.dump();
  EXPECT_TRUE(shown["grant"]["created_at"].is_string()) << shown.dump();
  EXPECT_TRUE(shown["grant"]["upstream_revocation_next_attempt"].is_null()) << shown.dump();
}

}  // namespace
}  // namespace grantvault
