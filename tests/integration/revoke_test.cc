// End-to-end revocation and audit: the real grantvaultd and grantvault CLI
// against the real oidc-provider over TLS.
//
//  - Revocation reaches everything: a resolve held on a stalled refresh gets
//    REVOKED, a subscriber hears of it at once, later resolves get REVOKED,
//    the failing revocation at the provider is retried and visible until it
//    succeeds, and then the provider's introspection says the refresh token
//    is inactive.
//  - A scripted scenario produces every audit event type; exports of the
//    workspace and system chains verify offline; no token value is in the
//    audit database or its exports; an audit log that cannot be written makes
//    resolve and revoke fail closed.
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "keys/sealed_context.h"
#include "nlohmann/json.hpp"
#include "oauth/http_client.h"
#include "oauth/pkce.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/wait.h"

namespace grantvault {
namespace {

using json = nlohmann::json;
using testing::CommandResult;
using testing::DaemonProcess;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunCommand;

constexpr char kWorkspace[] = "ws_acme";

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

class RevokeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto provider = testing::OAuthProvider::Start({});
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
    policy_ = dir_.Join("policy.toml");
    std::ofstream(policy_) << "[[callers]]\nuid = " << ::getuid()
                           << "\nrole = \"agent\"\nworkspaces = [\"" << kWorkspace
                           << "\"]\n[workspaces." << kWorkspace
                           << "]\nallow_resolve_without_tool = true\n";
    std::ofstream(config_) << "[oauth]\nca_file = \"" << provider_->ca_file()
                           << "\"\nuse_system_trust_store = false\n"
                              "revocation_timeout_ms = 1000\nrevocation_retry_ms = 300\n"
                              "refresh_timeout_ms = 2000\n"
                              "[policy]\nfile = \""
                           << policy_ << "\"\n[audit]\ngroup_commit_ms = 50\n";
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    secret_file_ = dir_.Join("client.secret");
    std::ofstream(secret_file_) << provider_->clients()[0].client_secret;
    ::chmod(secret_file_.c_str(), 0600);
    oauth::HttpClientOptions http;
    http.use_system_trust_store = false;
    http.ca_file = provider_->ca_file();
    auto client = oauth::NewHttpClient(http);
    ASSERT_TRUE(client.ok());
    http_ = std::move(*client);
  }
  void TearDown() override {
    if (provider_ && provider_->pid() > 0) ::kill(provider_->pid(), SIGCONT);
    if (daemon_ && daemon_->running()) daemon_->Stop(SIGTERM);
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {GV_CLI, "--state-dir", state_});
    return RunCommand(args);
  }

  json CliJson(std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    CommandResult r = Cli(std::move(args));
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  }

  void Register(const std::string& connector) {
    CommandResult reg =
        Cli({"connectors", "register", "--id", connector, "--type", "oidc", "--client-id",
             provider_->clients()[0].client_id, "--client-secret-file", secret_file_, "--issuer",
             provider_->issuer()});
    ASSERT_EQ(reg.exit_code, 0) << reg.out << reg.err;
  }

  // Authorizes through the admin socket; returns the grant id.
  std::string Authorize(const std::string& connector, std::vector<std::string> scopes = {}) {
    auto done = CompleteAuthorization(connector, std::move(scopes));
    EXPECT_TRUE(done.ok() && done->has_complete_authorization())
        << (done.ok() ? done->error().message() : done.status().ToString());
    return done.ok() ? done->complete_authorization().grant().grant_id() : "";
  }

  // Begins an authorization, approves it at the provider and completes it;
  // the daemon's answer to the completion.
  absl::StatusOr<v1::Response> CompleteAuthorization(const std::string& connector,
                                                     std::vector<std::string> scopes = {}) {
    auto admin = ipc::Client::Connect(state_ + "/run/admin.sock");
    if (!admin.ok()) return admin.status();
    v1::Request begin;
    begin.set_admin_user("alice-admin");
    begin.mutable_begin_authorization()->set_workspace_id(kWorkspace);
    begin.mutable_begin_authorization()->set_connector_id(connector);
    for (const std::string& s : scopes) begin.mutable_begin_authorization()->add_scopes(s);
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    auto started = (*admin)->Call(begin, absl::Seconds(30));
    if (!started.ok()) return started.status();
    if (!started->has_begin_authorization()) {
      return absl::InternalError("begin failed: " + started->error().message());
    }
    auto redirect = provider_->Approve(started->begin_authorization().authorization_url());
    if (!redirect.ok()) return redirect.status();
    v1::Request complete;
    complete.set_admin_user("alice-admin");
    complete.mutable_complete_authorization()->set_callback_url(*redirect);
    return (*admin)->Call(complete, absl::Seconds(30));
  }

  static v1::Request Resolve(const std::string& connector, uint32_t min_valid_seconds = 1) {
    v1::Request r;
    r.mutable_resolve()->set_workspace_id(kWorkspace);
    r.mutable_resolve()->set_connector_id(connector);
    r.mutable_resolve()->set_min_valid_seconds(min_valid_seconds);
    return r;
  }

  std::unique_ptr<ipc::Client> Agent() {
    auto client = ipc::Client::Connect(state_ + "/run/agent.sock");
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // The grant's refresh token as the daemon holds it now (read from the
  // state, which may be opened next to the running daemon).
  std::string StoredRefreshToken(const std::string& grant_id) {
    auto vault = daemon::OpenEmbeddedState(state_);
    EXPECT_TRUE(vault.ok()) << vault.status();
    if (!vault.ok()) return "";
    auto secret = vault->store->GetSealedSecret({grant_id, "refresh_token"});
    EXPECT_TRUE(secret.ok()) << secret.status();
    if (!secret.ok()) return "";
    auto token = keys::OpenSealed(*vault->sealer, *secret);
    EXPECT_TRUE(token.ok());
    return token.ok() ? std::string(token->view()) : "";
  }

  // RFC 7009 / RFC 7662 calls of the provider's own, as another client would.
  absl::StatusOr<json> CallProvider(const std::string& endpoint_key, const std::string& token) {
    oauth::HttpRequest discovery;
    discovery.url = provider_->issuer() + "/.well-known/openid-configuration";
    auto document = http_->Send(discovery, absl::Seconds(10));
    if (!document.ok()) return document.status();
    const json metadata = json::parse(document->body, nullptr, false);
    oauth::HttpRequest request;
    request.method = "POST";
    request.url = metadata.value(endpoint_key, "");
    request.headers = {
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"Accept", "application/json"},
        {"Authorization", "Basic " + oauth::Base64(provider_->clients()[0].client_id + ":" +
                                                   provider_->clients()[0].client_secret)}};
    request.body = oauth::FormEncode({{"token", token}, {"token_type_hint", "refresh_token"}});
    auto response = http_->Send(request, absl::Seconds(10));
    if (!response.ok()) return response.status();
    if (response->body.empty()) return json::object();
    return json::parse(response->body, nullptr, false);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::string state_, config_, policy_, secret_file_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<oauth::HttpClient> http_;
};

TEST_F(RevokeTest, RevocationReachesTheCacheTheWaitersTheSubscribersAndTheProvider) {
  Register("demo");
  const std::string grant_id = Authorize("demo");
  ASSERT_FALSE(grant_id.empty());
  std::unique_ptr<ipc::Client> agent = Agent();
  auto first = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(first.ok() && first->has_resolve())
      << (first.ok() ? first->error().message() : first.status().ToString());
  const std::string refresh_token = StoredRefreshToken(grant_id);
  ASSERT_FALSE(refresh_token.empty());
  auto active = CallProvider("introspection_endpoint", refresh_token);
  ASSERT_TRUE(active.ok()) << active.status();
  ASSERT_EQ((*active)["active"], true) << active->dump();
  // A cached token answers any min_valid while it holds half its lifetime (docs/refresh.md,
  // "What min_valid can ask"); the resolve held below must find it past that, so that it
  // refreshes.
  const absl::Time past_half_life = absl::FromUnixMillis(first->resolve().expires_at_ms()) -
                                    testing::OAuthProviderOptions().access_token_ttl / 2 +
                                    absl::Milliseconds(100);
  absl::SleepFor(past_half_life - absl::Now());

  // An agent host subscribed to the workspace.
  absl::Mutex mu;
  std::vector<std::pair<v1::GrantEvent, absl::Time>> events;
  std::unique_ptr<ipc::Client> subscriber = Agent();
  ipc::SubscribeGrantEvents(
      *subscriber, kWorkspace,
      [&](const v1::GrantEvent& event) {
        absl::MutexLock lock(&mu);
        events.emplace_back(event, absl::Now());
      },
      [](absl::Status) {});
  {
    absl::MutexLock lock(&mu);
    auto subscribed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !events.empty(); };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&subscribed), absl::Seconds(5)));
    EXPECT_EQ(events.front().first.kind(), v1::GrantEvent::SUBSCRIBED);
  }

  // A resolve held on a refresh the stalled provider does not answer.
  ASSERT_EQ(::kill(provider_->pid(), SIGSTOP), 0);
  absl::Notification held_done;
  absl::StatusOr<v1::Response> held = absl::UnknownError("pending");
  std::unique_ptr<ipc::Client> waiter = Agent();
  waiter->CallAsync(Resolve("demo", /*min_valid_seconds=*/600), absl::Seconds(30),
                    [&](absl::StatusOr<v1::Response> r) {
                      held = std::move(r);
                      held_done.Notify();
                    });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_FALSE(held_done.HasBeenNotified());

  const absl::Time revoke_started = absl::Now();
  CommandResult revoked = Cli({"revoke", grant_id, "--reason", "offboarding"});
  const absl::Time revoke_returned = absl::Now();
  ASSERT_EQ(revoked.exit_code, 0) << revoked.out << revoked.err;
  EXPECT_THAT(revoked.out, HasSubstr("revoked"));

  // The waiter is released with REVOKED.
  ASSERT_TRUE(held_done.WaitForNotificationWithTimeout(absl::Seconds(2)));
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->error().code(), v1::Error::REVOKED) << held->error().message();

  // The subscriber heard of it within 100 ms.
  {
    absl::MutexLock lock(&mu);
    auto revoked_event = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return std::any_of(events.begin(), events.end(),
                         [](const auto& e) { return e.first.kind() == v1::GrantEvent::REVOKED; });
    };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&revoked_event), absl::Seconds(2)));
    for (const auto& [event, at] : events) {
      if (event.kind() != v1::GrantEvent::REVOKED) continue;
      EXPECT_EQ(event.grant_id(), grant_id);
      EXPECT_LT(at - revoke_started, (revoke_returned - revoke_started) + absl::Milliseconds(100));
      std::printf(
          "subscriber got REVOKED %.1f ms after the revoke started (the CLI took %.1f ms)\n",
          absl::ToDoubleMilliseconds(at - revoke_started),
          absl::ToDoubleMilliseconds(revoke_returned - revoke_started));
    }
  }

  // Later resolves are REVOKED, from the cache and from a new connection.
  auto later = Agent()->Call(Resolve("demo"), absl::Seconds(10));
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->error().code(), v1::Error::REVOKED) << later->error().message();

  // The provider is down: the revocation there fails, is retried, and shows.
  json shown;
  for (int i = 0; i < 100; ++i) {
    shown = CliJson({"grants", "show", grant_id});
    if (shown["grant"].value("upstream_revocation_attempts", 0) >= 1) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(shown["grant"]["status"], "revoked");
  EXPECT_EQ(shown["grant"]["upstream_revocation"], "pending") << shown.dump();
  EXPECT_GE(shown["grant"]["upstream_revocation_attempts"].get<int>(), 1) << shown.dump();
  EXPECT_FALSE(shown["grant"]["upstream_revocation_error"].get<std::string>().empty());
  json status = CliJson({"status"});
  EXPECT_GE(status["upstream_revocations_pending"].get<int>(), 1) << status.dump();

  // The provider comes back: the retry succeeds.
  ASSERT_EQ(::kill(provider_->pid(), SIGCONT), 0);
  for (int i = 0; i < 200; ++i) {
    shown = CliJson({"grants", "show", grant_id});
    if (shown["grant"]["upstream_revocation"] != "pending") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(shown["grant"]["upstream_revocation"], "revoked") << shown.dump() << provider_->Log();
  auto inactive = CallProvider("introspection_endpoint", refresh_token);
  ASSERT_TRUE(inactive.ok()) << inactive.status();
  EXPECT_EQ((*inactive)["active"], false) << inactive->dump();
  for (int i = 0; i < 30; ++i) {  // Status is a snapshot at most a second old
    status = CliJson({"status"});
    if (status["upstream_revocations_pending"].get<int>() == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(status["upstream_revocations_pending"].get<int>(), 0);
}

// The token.released records of a JSONL export (of `grant_id` only, when
// given), and the releases they stand for (their counts).
struct Releases {
  uint64_t records = 0;
  uint64_t releases = 0;
};
Releases ReleasesIn(const std::string& jsonl, const std::string& grant_id = "") {
  Releases out;
  const std::vector<std::string> lines = absl::StrSplit(jsonl, '\n', absl::SkipEmpty());
  for (const std::string& line : lines) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.value("kind", "") != "record" || j.value("type", "") != "token.released") continue;
    if (!grant_id.empty() && j.value("grant_id", "") != grant_id) continue;
    ++out.records;
    out.releases += std::stoull(j["details"].value("count", "1"));
  }
  return out;
}

// A process that already holds a token gets it again without waiting for the
// audit log (the repeat is recorded afterwards); a first release waits for its
// record. The log's write lock is held by this test to stop every commit.
TEST_F(RevokeTest, ARepeatedReleaseIsAnsweredBeforeItsRecordAFirstOneIsNot) {
  Register("demo");
  ASSERT_FALSE(Authorize("demo").empty());
  std::unique_ptr<ipc::Client> first = Agent();
  ASSERT_NE(first, nullptr);
  auto recorded = first->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(recorded.ok() && recorded->has_resolve());
  const std::string token = recorded->resolve().access_token();
  std::unique_ptr<ipc::Client> second = Agent();
  ASSERT_NE(second, nullptr);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_ + "/audit.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);  // the daemon's own writes may hold it a moment
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  // The same token to the same connection's process: answered at once.
  for (int i = 0; i < 20; ++i) {
    auto repeat = first->Call(Resolve("demo"), absl::Seconds(2));
    ASSERT_TRUE(repeat.ok()) << repeat.status();
    ASSERT_TRUE(repeat->has_resolve()) << repeat->error().message();
    EXPECT_EQ(repeat->resolve().access_token(), token);
  }
  // A first release on another connection is not answered while nothing can
  // be recorded…
  auto waiting = second->Call(Resolve("demo"), absl::Milliseconds(1500));
  EXPECT_EQ(waiting.status().code(), absl::StatusCode::kDeadlineExceeded) << waiting.status();
  // …and once the repeats' record has waited too long (over 500 ms), a repeat
  // waits for its record as well: a stuck log does not let them flow on.
  auto stuck = first->Call(Resolve("demo"), absl::Seconds(1));
  EXPECT_EQ(stuck.status().code(), absl::StatusCode::kDeadlineExceeded) << stuck.status();
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  // …and is once its record commits.
  std::unique_ptr<ipc::Client> third = Agent();
  ASSERT_NE(third, nullptr);
  auto released = third->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(released.ok() && released->has_resolve());

  // Every release is counted: 1 + 20 repeats + the two that waited + 1.
  const std::string exported = dir_.Join("repeat.jsonl");
  absl::SleepFor(absl::Milliseconds(200));  // the repeats' deferred batch
  CommandResult export_result = Cli({"audit", "export", "--workspace", kWorkspace, "-o", exported});
  ASSERT_EQ(export_result.exit_code, 0) << export_result.err;
  EXPECT_EQ(ReleasesIn(Slurp(exported)).releases, 24u);
}

TEST_F(RevokeTest, EveryEventIsAuditedExportsVerifyAndNoTokenIsInThem) {
  Register("demo");
  Register("demo2");
  const std::string grant_id = Authorize("demo");
  ASSERT_FALSE(grant_id.empty());
  // A scope change replaces the grant.
  const std::string changed = Authorize("demo", {"openid", "offline_access", "profile"});
  ASSERT_FALSE(changed.empty());
  std::unique_ptr<ipc::Client> agent = Agent();
  std::vector<std::string> tokens;
  auto released = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(released.ok() && released->has_resolve());
  tokens.push_back(released->resolve().access_token());
  tokens.push_back(StoredRefreshToken(changed));
  // 200 more releases of the same token to this process, 8 connections at
  // once: identical releases committed together share a record with a count
  // (docs/audit.md), and the counts add up to every release.
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 25;
  std::atomic<int> fetched{0};
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        std::unique_ptr<ipc::Client> client = Agent();
        for (int i = 0; i < kCallsPerThread && client != nullptr; ++i) {
          auto r = client->Call(Resolve("demo"), absl::Seconds(30));
          if (r.ok() && r->has_resolve()) ++fetched;
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
  ASSERT_EQ(fetched.load(), kThreads * kCallsPerThread);
  auto denied = agent->Call(Resolve("nope"), absl::Seconds(30));
  ASSERT_TRUE(denied.ok() && denied->has_error());

  // grant.reauth_required: demo2's refresh token is revoked at the provider
  // behind grantvault's back; its next refresh is refused (invalid_grant).
  const std::string second = Authorize("demo2");
  ASSERT_FALSE(second.empty());
  const std::string second_refresh = StoredRefreshToken(second);
  tokens.push_back(second_refresh);
  ASSERT_TRUE(CallProvider("revocation_endpoint", second_refresh).ok());
  auto reauth = agent->Call(Resolve("demo2", 600), absl::Seconds(30));
  ASSERT_TRUE(reauth.ok());
  EXPECT_EQ(reauth->error().code(), v1::Error::REAUTH_REQUIRED) << reauth->error().message();

  ASSERT_EQ(Cli({"revoke", "--workspace", kWorkspace, "--connector", "demo", "--reason", "done"})
                .exit_code,
            0);
  for (int i = 0; i < 100; ++i) {
    if (CliJson({"grants", "show", changed})["grant"]["upstream_revocation"] == "revoked") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(Cli({"keys", "rotate"}).exit_code, 0);
  ASSERT_EQ(Cli({"keys", "rewrap"}).exit_code, 0);
  CommandResult retired = Cli({"keys", "retire", "1"});
  ASSERT_EQ(retired.exit_code, 0) << retired.out << retired.err;
  daemon_->Signal(SIGHUP);  // policy.reloaded
  absl::SleepFor(absl::Milliseconds(300));

  const std::string pem = dir_.Join("audit.pem");
  ASSERT_EQ(Cli({"keys", "audit-public-key", "-o", pem}).exit_code, 0);
  const std::string ws_export = dir_.Join("ws.jsonl");
  const std::string system_export = dir_.Join("system.csv");
  CommandResult exported = Cli({"audit", "export", "--workspace", kWorkspace, "-o", ws_export});
  ASSERT_EQ(exported.exit_code, 0) << exported.out << exported.err;
  exported = Cli({"audit", "export", "--system", "--format", "csv", "-o", system_export});
  ASSERT_EQ(exported.exit_code, 0) << exported.out << exported.err;

  // Offline: the daemon is not needed to verify.
  for (const std::string& file : {ws_export, system_export}) {
    CommandResult verified = RunCommand({GV_CLI, "audit", "verify", file, "--public-key", pem});
    EXPECT_EQ(verified.exit_code, 0) << verified.out << verified.err;
    EXPECT_THAT(verified.out, HasSubstr("verified"));
  }
  const Releases of_changed = ReleasesIn(Slurp(ws_export), changed);
  EXPECT_EQ(of_changed.releases, 1u + kThreads * kCallsPerThread);
  std::cout << "201 releases of one token to one process: " << of_changed.records
            << " token.released records\n";
  const std::string all = Slurp(ws_export) + Slurp(system_export);
  // The revocation names its admin by the peer's kernel-given uid and pid too,
  // not only by the admin_user it asserted.
  bool revoked_record = false;
  for (absl::string_view line : absl::StrSplit(Slurp(ws_export), '\n', absl::SkipEmpty())) {
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.value("type", "") != "grant.revoked") continue;
    revoked_record = true;
    EXPECT_EQ(j["actor"]["uid"], ::getuid()) << line;
    EXPECT_GT(j["actor"]["pid"].get<int64_t>(), 0) << line;
  }
  EXPECT_TRUE(revoked_record);
  for (const char* type :
       {"grant.authorized", "grant.scope_changed", "grant.revoked", "grant.reauth_required",
        "grant.upstream_revoked", "token.released", "token.denied", "key.created", "key.rotated",
        "keys.rewrapped", "key.retired", "connector.registered", "policy.reloaded"}) {
    EXPECT_THAT(all, HasSubstr(type)) << type;
  }
  // An edited record is caught and named.
  std::string edited = Slurp(ws_export);
  const size_t at = edited.find("offboarding") != std::string::npos ? edited.find("offboarding")
                                                                    : edited.find("\"done\"");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at + 1, 2, "XX");
  const std::string tampered = dir_.Join("tampered.jsonl");
  std::ofstream(tampered) << edited;
  CommandResult broken = RunCommand({GV_CLI, "audit", "verify", tampered, "--public-key", pem});
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_THAT(broken.err, HasSubstr("line "));

  // No token value in the audit database, its WAL, or the exports.
  const std::string database = Slurp(state_ + "/audit.db") + Slurp(state_ + "/audit.db-wal");
  for (const std::string& token : tokens) {
    ASSERT_FALSE(token.empty());
    EXPECT_THAT(database, Not(HasSubstr(token)));
    EXPECT_THAT(all, Not(HasSubstr(token)));
  }
}

// Rows of the audit database (read next to a stopped daemon).
std::vector<std::string> AuditRows(const std::string& database, const std::string& sql) {
  std::vector<std::string> rows;
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(database.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
  while (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) {
    rows.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)));
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return rows;
}

// A peer no caller rule matches (the policy names another uid) asks again and
// again, for the policy's workspace and for made-up ones: it gets a bounded
// number of counted caller.unmatched records and no chain; a matched caller's
// refusals for undeclared workspaces go to the system chain; revocation
// still works afterwards.
TEST_F(RevokeTest, AnUnmatchedPeerCannotFloodTheAuditLogAndRevocationStillWorks) {
  Register("demo");
  const std::string grant_id = Authorize("demo");
  ASSERT_FALSE(grant_id.empty());
  auto write_policy = [&](uid_t uid) {
    std::ofstream(policy_) << "[[callers]]\nuid = " << uid << "\nrole = \"agent\"\nworkspaces = [\""
                           << kWorkspace << "\"]\n[workspaces." << kWorkspace
                           << "]\nallow_resolve_without_tool = true\n";
  };
  // An unmatched peer is refused at accept (the error for request 0, then
  // closed), or on a request once a reload drops its rule (then closed too):
  // each asking connects again when its connection was closed, and a refusal
  // at connect counts like one on a request.
  std::unique_ptr<ipc::Client> agent;
  auto code_of = [&](const v1::Request& request) {
    if (agent == nullptr) {
      auto connected = ipc::Client::Connect(state_ + "/run/agent.sock");
      if (!connected.ok()) {
        return absl::IsPermissionDenied(connected.status()) ? v1::Error::PERMISSION_DENIED
                                                            : v1::Error::INTERNAL;
      }
      agent = *std::move(connected);
    }
    auto answer = agent->Call(request, absl::Seconds(30));
    if (!answer.ok()) {
      agent.reset();
      return v1::Error::INTERNAL;
    }
    if (answer->has_error() && answer->error().code() == v1::Error::PERMISSION_DENIED) {
      agent.reset();  // the daemon closes a connection whose caller no rule matches
    }
    return answer->has_error() ? answer->error().code() : v1::Error::CODE_UNSPECIFIED;
  };
  write_policy(::getuid() + 1);
  daemon_->Signal(SIGHUP);
  uint64_t refused = 0;  // PERMISSION_DENIED answers while unmatched
  ASSERT_TRUE(::grantvault::testing::WaitFor(
      [&] {
        if (code_of(Resolve("demo")) != v1::Error::PERMISSION_DENIED) return false;
        ++refused;
        return true;
      },
      absl::Seconds(20)));
  const absl::Time flood_started = absl::Now();
  constexpr int kFlood = 400;
  for (int i = 0; i < kFlood; ++i) {
    v1::Request request = Resolve("demo");
    if (i % 2 == 1) request.mutable_resolve()->set_workspace_id(absl::StrCat("ws_flood_", i));
    ASSERT_EQ(code_of(request), v1::Error::PERMISSION_DENIED) << i;
    ++refused;
  }
  const absl::Duration flooded_for = absl::Now() - flood_started;

  // Matched again: refusals for workspaces the policy does not declare.
  write_policy(::getuid());
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(::grantvault::testing::WaitFor(
      [&] {
        const v1::Error::Code code = code_of(Resolve("demo"));
        if (code == v1::Error::PERMISSION_DENIED) ++refused;  // the reload is not in yet
        return code == v1::Error::CODE_UNSPECIFIED;
      },
      absl::Seconds(20)));
  constexpr int kUndeclared = 5;
  for (int i = 0; i < kUndeclared; ++i) {
    v1::Request request = Resolve("demo");
    request.mutable_resolve()->set_workspace_id(absl::StrCat("ws_undeclared_", i));
    ASSERT_EQ(code_of(request), v1::Error::PERMISSION_DENIED);
  }

  // The log still takes a revocation.
  CommandResult revoked =
      Cli({"revoke", "--workspace", kWorkspace, "--connector", "demo", "--reason", "flooded"});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.out << revoked.err;
  EXPECT_EQ(code_of(Resolve("demo")), v1::Error::REVOKED);
  agent.reset();
  ASSERT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();  // records what the tally held back

  const std::string database = state_ + "/audit.db";
  std::vector<std::string> chains = AuditRows(database, "SELECT chain FROM chains ORDER BY chain");
  EXPECT_EQ(chains, (std::vector<std::string>{"system", absl::StrCat("workspace:", kWorkspace)}));
  const std::vector<std::string> unmatched =
      AuditRows(database, "SELECT details FROM records WHERE type = 'caller.unmatched'");
  // The first refusal at once, then at most one per minute, and what was held
  // back at the stop.
  EXPECT_GE(unmatched.size(), 1u);
  EXPECT_LE(unmatched.size(), 2u + static_cast<size_t>(absl::ToInt64Seconds(flooded_for) / 60 + 1));
  uint64_t counted = 0;
  for (const std::string& details : unmatched) {
    counted += std::stoull(json::parse(details)["refusals"].get<std::string>());
  }
  EXPECT_EQ(counted, refused);
  EXPECT_THAT(AuditRows(database, "SELECT reason FROM records WHERE type = 'caller.unmatched'"),
              ::testing::Each(HasSubstr("not in the policy")));
  // In the workspace's chain, only the matched caller's refusal after the
  // revocation.
  EXPECT_THAT(
      AuditRows(database,
                "SELECT reason FROM records WHERE type = 'token.denied' AND chain != 'system'"),
      ::testing::ElementsAre(HasSubstr("REVOKED")));
  const std::vector<std::string> undeclared = AuditRows(
      database, "SELECT details FROM records WHERE type = 'token.denied' AND chain = 'system'");
  ASSERT_EQ(undeclared.size(), static_cast<size_t>(kUndeclared));
  EXPECT_THAT(undeclared[0], HasSubstr("\"requested_workspace\":\"ws_undeclared_0\""));
  EXPECT_EQ(AuditRows(database, "SELECT seq FROM records WHERE type = 'grant.revoked'").size(), 1u);
}

// The daemon against a rolled-back audit.db: the token's anchor says more
// was signed than the database holds, so the daemon refuses to start and says
// which chain and seq; the genuine database starts again.
TEST_F(RevokeTest, ADaemonRefusesToStartOnARolledBackAuditLog) {
  Register("demo");
  ASSERT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
  const std::string database = state_ + "/audit.db";
  auto copy = [](const std::string& from, const std::string& to) {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::filesystem::remove(to + suffix);
      if (std::filesystem::exists(from + suffix)) {
        std::filesystem::copy_file(from + suffix, to + suffix);
      }
    }
  };
  const std::string backup = dir_.Join("audit-backup.db");
  copy(database, backup);

  ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Stderr();
  Register("demo2");
  // An export checkpoints (and so anchors) the system chain.
  CommandResult exported = Cli({"audit", "export", "--system", "-o", dir_.Join("system.jsonl")});
  ASSERT_EQ(exported.exit_code, 0) << exported.out << exported.err;
  ASSERT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->Stderr();
  const std::string genuine = dir_.Join("audit-genuine.db");
  copy(database, genuine);

  copy(backup, database);  // what someone with write access to the file can do
  auto refused = std::make_unique<DaemonProcess>(std::vector<std::string>{
      GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
  EXPECT_FALSE(refused->Start().ok());
  EXPECT_THAT(refused->Stderr(), HasSubstr("chain system: the token's anchor is seq"));
  EXPECT_THAT(refused->Stderr(), HasSubstr("the database ends at seq"));
  if (refused->running()) refused->Stop(SIGKILL);

  copy(genuine, database);
  ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Stderr();
}

TEST_F(RevokeTest, AnAuditLogThatCannotBeWrittenMakesResolveAndRevokeFailClosed) {
  Register("demo");
  const std::string grant_id = Authorize("demo");
  ASSERT_FALSE(grant_id.empty());
  std::unique_ptr<ipc::Client> agent = Agent();
  auto ok = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(ok.ok() && ok->has_resolve());

  // Every write that would grow a file now fails (EFBIG): the real database
  // refuses, whoever the daemon runs as (root ignores file modes, not this).
  struct rlimit limits {};
  ASSERT_EQ(::prlimit(daemon_->pid(), RLIMIT_FSIZE, nullptr, &limits), 0);
  const rlimit tiny{1, limits.rlim_max};
  ASSERT_EQ(::prlimit(daemon_->pid(), RLIMIT_FSIZE, &tiny, nullptr), 0);

  // The process that already received this token (its release recorded)
  // gets it again; the repeat's own record then fails, and from then on no
  // release is answered before its record, which cannot be written.
  auto repeat = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(repeat.ok());
  EXPECT_TRUE(repeat->has_resolve()) << repeat->error().message();
  // Once the repeat's deferred record has failed, the same call is refused.
  for (int i = 0; i < 100; ++i) {
    auto probe = agent->Call(Resolve("demo"), absl::Seconds(30));
    ASSERT_TRUE(probe.ok());
    if (!probe->has_resolve()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::unique_ptr<ipc::Client> other = Agent();
  for (ipc::Client* client : {agent.get(), other.get()}) {
    auto refused = client->Call(Resolve("demo"), absl::Seconds(30));
    ASSERT_TRUE(refused.ok());
    EXPECT_FALSE(refused->has_resolve());
    EXPECT_EQ(refused->error().code(), v1::Error::UNAVAILABLE) << refused->error().message();
    EXPECT_THAT(refused->error().message(), HasSubstr("audit"));
  }
  CommandResult revoke = Cli({"revoke", grant_id, "--reason", "test"});
  EXPECT_NE(revoke.exit_code, 0);
  EXPECT_THAT(revoke.err, HasSubstr("audit"));

  ASSERT_EQ(::prlimit(daemon_->pid(), RLIMIT_FSIZE, &limits, nullptr), 0);
  // Nothing was revoked, and the token flows again once the log can be written.
  EXPECT_EQ(CliJson({"grants", "show", grant_id})["grant"]["status"], "active");
  auto again = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->has_resolve()) << again->error().message();
}

// A re-authorization replaces the workspace's grant. When its audit record
// cannot be written the new grant is revoked (fail closed), and the replaced
// one, revoked by the store in the same transaction as the new one's insert,
// must not live on in the daemon's memory: its cached token is never served
// again, neither as a repeat to the process that already holds it nor to a
// new connection. The audit log's write lock is held by the test, so only the
// audit write fails (the grant store writes as usual).
TEST_F(RevokeTest, AGrantReplacedByAnUnauditedReauthorizationIsNeverServedAgain) {
  Register("demo");
  const std::string old_grant = Authorize("demo");
  ASSERT_FALSE(old_grant.empty());
  std::unique_ptr<ipc::Client> agent = Agent();
  ASSERT_NE(agent, nullptr);
  auto first = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(first.ok() && first->has_resolve())
      << (first.ok() ? first->error().message() : first.status().ToString());
  const std::string old_token = first->resolve().access_token();
  // A repeat, so that the connection answers it from memory from now on.
  auto repeat = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(repeat.ok() && repeat->has_resolve());
  ASSERT_EQ(repeat->resolve().access_token(), old_token);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_ + "/audit.db").c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);  // the daemon's own writes may hold it a moment
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto changed = CompleteAuthorization("demo", {"openid", "offline_access", "profile"});
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  ASSERT_TRUE(changed.ok()) << changed.status();
  ASSERT_TRUE(changed->has_error()) << "the scope change was answered as if audited";
  EXPECT_THAT(changed->error().message(), HasSubstr("audit"));

  // The log is writable again: anything served now is recorded, so only the
  // fix keeps the replaced grant's token from flowing.
  std::unique_ptr<ipc::Client> fresh = Agent();
  ASSERT_NE(fresh, nullptr);
  for (ipc::Client* client : {agent.get(), fresh.get()}) {
    for (int i = 0; i < 3; ++i) {
      auto after = client->Call(Resolve("demo"), absl::Seconds(30));
      ASSERT_TRUE(after.ok()) << after.status();
      if (after->has_resolve()) {
        EXPECT_NE(after->resolve().access_token(), old_token) << "the replaced grant was served";
        EXPECT_NE(after->resolve().grant_id(), old_grant);
      } else {
        EXPECT_EQ(after->error().code(), v1::Error::REVOKED) << after->error().message();
      }
    }
  }
  EXPECT_EQ(CliJson({"grants", "show", old_grant})["grant"]["status"], "revoked");

  // A later, audited re-authorization gives the workspace a working grant again.
  const std::string again = Authorize("demo");
  ASSERT_FALSE(again.empty());
  auto working = agent->Call(Resolve("demo"), absl::Seconds(30));
  ASSERT_TRUE(working.ok() && working->has_resolve())
      << (working.ok() ? working->error().message() : working.status().ToString());
  EXPECT_EQ(working->resolve().grant_id(), again);
  EXPECT_NE(working->resolve().access_token(), old_token);
}

}  // namespace
}  // namespace grantvault
