// End-to-end authorization: the real grantvaultd and grantvault CLI (with its
// loopback redirect listener) against the real oidc-provider over TLS.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>

#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oauth/pkce.h"
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
    auto provider = testing::OAuthProvider::Start({});
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
    std::ofstream(config_) << "[oauth]\nca_file = \"" << provider_->ca_file()
                           << "\"\nuse_system_trust_store = false\n";
    daemon_ = std::make_unique<DaemonProcess>(
        std::vector<std::string>{GV_GRANTVAULTD, "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    secret_file_ = dir_.Join("client.secret");
    std::ofstream(secret_file_) << provider_->clients()[0].client_secret;
    ::chmod(secret_file_.c_str(), 0600);
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

}  // namespace
}  // namespace grantvault
