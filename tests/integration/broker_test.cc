// The broker process seen from outside the running daemon: the front (the
// process the test starts) stays up while its broker is killed or stopped;
// the grant still refreshes (or, only inside the documented crash window,
// is marked so), cached tokens keep being served, and the front's memory never
// holds what only the broker may (refresh tokens, client secrets, PKCE
// verifiers).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "daemon/vault.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/client.h"
#include "oauth/pkce.h"
#include "tests/testing/daemon_config.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/process_tree.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/test_vault.h"
#include "tests/testing/wait.h"
#include "tokens/refresher.h"

namespace grantvault {
namespace {

using testing::DaemonProcess;
using ::testing::HasSubstr;

// An UNAVAILABLE answer must say when to try again.
bool HasRetryHint(const v1::Error& error) {
  return error.retry_after_ms() > 0 || absl::StrContains(error.message(), "retry_after_ms");
}

// A live (not zombie) process.
bool Alive(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, "State:")) return !absl::StrContains(line, "Z (zombie)");
  }
  return false;
}

// How many times each needle occurs in the readable, writable, anonymous memory
// of a process ([heap], [stack], unnamed mappings such as OpenSSL's secure heap
// and the allocator's arenas), read through /proc/<pid>/mem.
struct MemoryScan {
  int regions_read = 0;
  int regions_unreadable = 0;
  uint64_t bytes = 0;
  std::map<std::string, int> hits;  // needle name → occurrences
};
MemoryScan ScanMemory(pid_t pid, const std::map<std::string, std::string>& needles) {
  MemoryScan scan;
  for (const auto& [name, needle] : needles) scan.hits[name] = 0;
  std::ifstream maps(absl::StrCat("/proc/", pid, "/maps"));
  const int mem = ::open(absl::StrCat("/proc/", pid, "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) return scan;
  size_t longest = 1;
  for (const auto& [name, needle] : needles) longest = std::max(longest, needle.size());
  std::string buffer;
  for (std::string line; std::getline(maps, line);) {
    // "start-end perms offset dev inode [path]"
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() < 5 || fields[1].size() < 2) continue;
    if (fields[1][0] != 'r' || fields[1][1] != 'w') continue;
    const std::string path = fields.size() > 5 ? fields[5] : "";
    const bool anonymous = path.empty() || (path[0] == '[' && path != "[vvar]" &&
                                            path != "[vsyscall]" && path != "[vdso]");
    if (!anonymous) continue;
    std::vector<std::string> range = absl::StrSplit(fields[0], '-');
    uint64_t start = 0, end = 0;
    if (range.size() != 2 || !absl::SimpleHexAtoi(range[0], &start) ||
        !absl::SimpleHexAtoi(range[1], &end) || end <= start) {
      continue;
    }
    // Read in chunks, each overlapping the last by a needle's length.
    constexpr uint64_t kChunk = 1 << 20;
    std::string carry;
    bool failed = false;
    for (uint64_t at = start; at < end; at += kChunk) {
      const uint64_t n = std::min(kChunk, end - at);
      buffer.assign(carry);
      const size_t offset = buffer.size();
      buffer.resize(offset + n);
      const ssize_t got =
          ::pread(mem, buffer.data() + offset, n, static_cast<off_t>(at));  // addresses < 2^63
      if (got <= 0) {
        failed = true;
        break;
      }
      buffer.resize(offset + static_cast<size_t>(got));
      scan.bytes += static_cast<uint64_t>(got);
      for (const auto& [name, needle] : needles) {
        if (needle.empty()) continue;
        // Occurrences starting in the carry were counted with the last chunk
        // only if they ended there, so count from the start and skip those.
        for (size_t found = buffer.find(needle); found != std::string::npos;
             found = buffer.find(needle, found + 1)) {
          if (found + needle.size() > offset) ++scan.hits[name];
        }
      }
      carry = buffer.substr(buffer.size() - std::min(buffer.size(), longest - 1));
      if (static_cast<uint64_t>(got) < n) break;
    }
    if (failed) {
      ++scan.regions_unreadable;
    } else {
      ++scan.regions_read;
    }
  }
  ::close(mem);
  return scan;
}

std::string Describe(const MemoryScan& scan) {
  std::string out = absl::StrCat(scan.regions_read, " regions (", scan.bytes / 1024, " KiB) read, ",
                                 scan.regions_unreadable, " unreadable;");
  for (const auto& [name, n] : scan.hits) absl::StrAppend(&out, " ", name, "=", n);
  return out;
}

// The `state` parameter of an authorization URL (base64url: never escaped).
std::string StateOf(const std::string& url) {
  const size_t query = url.find('?');
  if (query == std::string::npos) return "";
  for (absl::string_view pair : absl::StrSplit(url.substr(query + 1), '&')) {
    if (absl::ConsumePrefix(&pair, "state=")) return std::string(pair);
  }
  return "";
}

class BrokerTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (daemon_ && daemon_->running()) daemon_->Stop(SIGKILL);
  }

  void StartProvider(absl::Duration token_lifetime) {
    testing::OAuthProviderOptions options;
    options.access_token_ttl = token_lifetime;
    auto provider = testing::OAuthProvider::Start(options);
    ASSERT_TRUE(provider.ok()) << provider.status();
    provider_ = std::move(*provider);
    state_ = dir_.Join("state");
    config_ = testing::WriteAgentDaemonConfig(dir_, provider_->ca_file(), "ws");
  }

  // Starts the daemon, registers `connectors` (all the provider's one client)
  // and authorizes a grant for each; leaves the broker's pid in broker_.
  void StartAndAuthorize(const std::vector<std::string>& connectors = {"demo"}) {
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ASSERT_TRUE(started.ok()) << started;
    front_ = daemon_->pid();
    broker_ = testing::WaitForBroker(front_);
    ASSERT_GT(broker_, 0) << "no broker under the front " << front_;
    // The one the front's ready line names.
    EXPECT_THAT(daemon_->Stderr(), HasSubstr(absl::StrCat("broker_pid=", broker_)));
    for (const std::string& connector : connectors) {
      v1::Request reg;
      v1::RegisterConnectorRequest* r = reg.mutable_register_connector();
      r->set_connector_id(connector);
      r->set_connector_type("oidc");
      r->set_client_id(provider_->clients()[0].client_id);
      r->set_client_secret(provider_->clients()[0].client_secret);
      r->set_issuer(provider_->issuer());
      auto registered = Admin(reg);
      ASSERT_TRUE(registered.ok() && !registered->has_error())
          << (registered.ok() ? registered->error().message() : registered.status().ToString());
      Authorize(connector);
    }
  }

  absl::StatusOr<v1::Response> Admin(v1::Request request,
                                     absl::Duration timeout = absl::Seconds(30)) {
    auto client = ipc::Client::Connect(state_ + "/run/admin.sock");
    if (!client.ok()) return client.status();
    request.set_admin_user("broker-test");
    return (*client)->Call(std::move(request), timeout);
  }

  // An authorization begun, not yet completed.
  std::string BeginAuthorization(const std::string& connector) {
    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id("ws");
    begin.mutable_begin_authorization()->set_connector_id(connector);
    begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
    auto started = Admin(begin);
    EXPECT_TRUE(started.ok() && started->has_begin_authorization())
        << (started.ok() ? started->error().message() : started.status().ToString());
    if (!started.ok() || !started->has_begin_authorization()) return "";
    return started->begin_authorization().authorization_url();
  }
  void CompleteAuthorization(const std::string& connector, const std::string& url) {
    auto redirect = provider_->Approve(url);
    ASSERT_TRUE(redirect.ok()) << redirect.status();
    v1::Request complete;
    complete.mutable_complete_authorization()->set_callback_url(*redirect);
    auto done = Admin(complete);
    ASSERT_TRUE(done.ok() && done->has_complete_authorization())
        << (done.ok() ? done->error().message() : done.status().ToString());
    grant_ids_[connector] = done->complete_authorization().grant().grant_id();
  }
  void Authorize(const std::string& connector = "demo") {
    const std::string url = BeginAuthorization(connector);
    ASSERT_FALSE(url.empty());
    CompleteAuthorization(connector, url);
  }

  static v1::Request Resolve(uint32_t min_valid_seconds, const std::string& connector = "demo") {
    v1::Request r;
    r.mutable_resolve()->set_workspace_id("ws");
    r.mutable_resolve()->set_connector_id(connector);
    r.mutable_resolve()->set_min_valid_seconds(min_valid_seconds);
    return r;
  }
  absl::StatusOr<v1::Response> Call(v1::Request request,
                                    absl::Duration timeout = absl::Seconds(20)) {
    auto client = ipc::Client::Connect(state_ + "/run/agent.sock");
    if (!client.ok()) return client.status();
    return (*client)->Call(std::move(request), timeout);
  }

  // The admin Status request, answered; how long it took.
  absl::Duration CheckStatus(const std::string& when) {
    const absl::Time start = absl::Now();
    v1::Request status;
    status.mutable_status();
    auto answer = Admin(status);
    const absl::Duration took = absl::Now() - start;
    EXPECT_TRUE(answer.ok() && answer->has_status())
        << when << ": " << (answer.ok() ? answer->error().message() : answer.status().ToString());
    return took;
  }

  // Waits until the front says it has `pid` as its broker again.
  bool WaitForRestartedLine(pid_t pid, absl::Duration timeout = absl::Seconds(20)) {
    const std::string line = absl::StrCat("broker.restarted pid=", pid, " ");
    return testing::WaitFor([&] { return absl::StrContains(daemon_->Stderr(), line); }, timeout);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::OAuthProvider> provider_;
  std::string state_, config_;
  std::map<std::string, std::string> grant_ids_;  // connector → its current grant
  std::unique_ptr<DaemonProcess> daemon_;
  pid_t front_ = -1, broker_ = -1;
};

constexpr int kKills = 50;
// As RefreshCrashTest: 2 s tokens answer any min_valid until past half their life,
// then the loop's next resolve refreshes, about once a second.
constexpr absl::Duration kShortLifetime = absl::Seconds(2);

TEST_F(BrokerTest, KilledDuringRefreshesEachGrantRefreshesOrIsMarkedInTheWindow) {
  StartProvider(kShortLifetime);
  StartAndAuthorize();
  if (HasFatalFailure()) return;
  const absl::Time test_start = absl::Now();

  std::mt19937 random(20261202);
  std::uniform_int_distribution<int> kill_after_half_life_ms(0, 50);
  int survived = 0, marked_in_window = 0;
  std::atomic<int> unavailable = 0, unavailable_without_hint = 0, reauth_in_loop = 0;
  int unavailable_after_restart = 0;
  int64_t refreshes_before_kills = 0;
  std::mutex errors_mu;
  std::vector<std::string> unexpected;  // guarded by errors_mu
  absl::Duration longest_restart = absl::ZeroDuration();
  const auto note_unavailable = [&](const v1::Error& error) {
    ++unavailable;
    if (!HasRetryHint(error)) {
      ++unavailable_without_hint;
      std::lock_guard<std::mutex> lock(errors_mu);
      unexpected.push_back(absl::StrCat("UNAVAILABLE without a retry hint: ", error.message()));
    }
  };

  for (int round = 0; round < kKills; ++round) {
    std::atomic<bool> stop = false;
    std::atomic<int64_t> refreshed = 0;
    std::atomic<int64_t> expiry_ms = 0;
    std::thread loop([&] {
      auto client = ipc::Client::Connect(state_ + "/run/agent.sock");
      if (!client.ok()) return;
      while (!stop) {
        auto answer = (*client)->Call(Resolve(600), absl::Seconds(10));
        if (!answer.ok()) {
          std::lock_guard<std::mutex> lock(errors_mu);
          unexpected.push_back(absl::StrCat("loop: ", answer.status().ToString()));
          return;  // the front must stay up
        }
        if (answer->has_resolve()) {
          if (answer->resolve().expires_at_ms() != expiry_ms) {
            if (expiry_ms != 0) ++refreshed;
            expiry_ms = answer->resolve().expires_at_ms();
          }
          continue;
        }
        const v1::Error& error = answer->error();
        if (error.code() == v1::Error::UNAVAILABLE) {
          note_unavailable(error);
        } else if (error.code() == v1::Error::REAUTH_REQUIRED) {
          ++reauth_in_loop;  // the check after the restart looks at why
        } else {
          std::lock_guard<std::mutex> lock(errors_mu);
          unexpected.push_back(absl::StrCat("loop: code ", error.code(), ": ", error.message()));
        }
        absl::SleepFor(absl::Milliseconds(20));
      }
    });
    const bool answered = testing::WaitFor([&] { return expiry_ms != 0; }, absl::Seconds(20));
    if (answered) {
      const absl::Time half_life = absl::FromUnixMillis(expiry_ms) - kShortLifetime / 2;
      absl::SleepFor(half_life + absl::Milliseconds(kill_after_half_life_ms(random)) - absl::Now());
    }
    const absl::Time killed_at = absl::Now();
    ASSERT_EQ(::kill(broker_, SIGKILL), 0) << "round " << round;
    const pid_t next = testing::WaitForBroker(front_, broker_);
    const bool restarted = next > 0 && WaitForRestartedLine(next);
    longest_restart = std::max(longest_restart, absl::Now() - killed_at);
    stop = true;
    loop.join();
    ASSERT_TRUE(answered) << "round " << round << ": the loop got no token";
    ASSERT_TRUE(restarted) << "round " << round << ": no new broker after " << broker_ << "\n"
                           << daemon_->Stderr();
    ASSERT_TRUE(Alive(front_)) << "round " << round << ": the front died";
    refreshes_before_kills += refreshed;
    broker_ = next;

    // The grant must refresh again (a token the new broker obtained: issued
    // after the kill, so expiring later than kill + lifetime), or be marked
    // inside the crash window. A token from before the kill may still be
    // served meanwhile (from the front's cache).
    const int64_t newer_than_ms = absl::ToUnixMillis(killed_at + kShortLifetime);
    bool settled = false;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!settled && absl::Now() < deadline) {
      auto answer = Call(Resolve(600));
      ASSERT_TRUE(answer.ok()) << "round " << round << ": " << answer.status();
      if (answer->has_resolve()) {
        if (answer->resolve().expires_at_ms() > newer_than_ms) {
          ++survived;
          settled = true;
        } else {
          absl::SleepFor(absl::Milliseconds(20));
        }
        continue;
      }
      const v1::Error& error = answer->error();
      if (error.code() == v1::Error::UNAVAILABLE) {
        ++unavailable_after_restart;
        note_unavailable(error);
        absl::SleepFor(absl::Milliseconds(std::clamp<int64_t>(error.retry_after_ms(), 20, 500)));
        continue;
      }
      // Only the documented window may break the grant, and it must say so.
      ASSERT_EQ(error.code(), v1::Error::REAUTH_REQUIRED)
          << "round " << round << ": " << error.message();
      v1::Request show;
      show.mutable_show_grant()->set_grant_id(grant_ids_["demo"]);
      auto shown = Admin(show);
      ASSERT_TRUE(shown.ok() && shown->has_show_grant());
      EXPECT_EQ(shown->show_grant().grant().status(), "reauth_required");
      EXPECT_EQ(shown->show_grant().grant().status_reason(), tokens::kCrashWindowReason)
          << "round " << round;
      ++marked_in_window;
      settled = true;
      Authorize();  // an admin re-authorizes; the loop goes on
      if (HasFatalFailure()) return;
    }
    ASSERT_TRUE(settled) << "round " << round << ": the grant neither refreshed nor was marked";
  }
  const absl::Duration took = absl::Now() - test_start;
  std::cout << "broker SIGKILL loop: " << kKills << " kills of the broker in "
            << absl::FormatDuration(absl::Trunc(took, absl::Milliseconds(100))) << " (front pid "
            << front_ << " up throughout), " << refreshes_before_kills
            << " refreshes answered between them; after each restart the grant refreshed "
            << survived << " times and was marked reauth_required (crash window) "
            << marked_in_window << " times; silently broken: 0; UNAVAILABLE answers " << unavailable
            << " (" << unavailable_after_restart << " after the new broker was seen, "
            << unavailable_without_hint << " without a retry hint); REAUTH_REQUIRED in the loop "
            << reauth_in_loop << "; longest restart "
            << absl::FormatDuration(absl::Trunc(longest_restart, absl::Milliseconds(1))) << "\n";
  RecordProperty("survived", survived);
  RecordProperty("marked_in_window", marked_in_window);
  RecordProperty("unavailable", unavailable.load());
  RecordProperty("unavailable_after_restart", unavailable_after_restart);
  RecordProperty("unavailable_without_hint", unavailable_without_hint.load());
  RecordProperty("refreshes_before_kills", static_cast<int>(refreshes_before_kills));
  EXPECT_EQ(survived + marked_in_window, kKills);
  EXPECT_EQ(unavailable_without_hint, 0);
  std::lock_guard<std::mutex> lock(errors_mu);
  EXPECT_THAT(unexpected, ::testing::IsEmpty());
  EXPECT_TRUE(Alive(front_));
}

// Long enough for the stopped broker's phase below, short enough that the
// test reaches the second half of a token's life (when a refresh is due).
constexpr absl::Duration kCachedLifetime = absl::Seconds(12);
// A cached answer takes the front's path only; far under any broker call.
constexpr absl::Duration kQuick = absl::Milliseconds(500);

TEST_F(BrokerTest, CachedTokensAreServedWhileTheBrokerIsDown) {
  StartProvider(kCachedLifetime);
  // "other": a second grant the front has never cached, so it needs the broker.
  StartAndAuthorize({"demo", "other"});
  if (HasFatalFailure()) return;
  auto first = Call(Resolve(5));
  ASSERT_TRUE(first.ok() && first->has_resolve())
      << (first.ok() ? first->error().message() : first.status().ToString());
  const std::string token = first->resolve().access_token();
  const int64_t expires_at_ms = first->resolve().expires_at_ms();
  const absl::Time half_life = absl::FromUnixMillis(expires_at_ms) - kCachedLifetime / 2;
  absl::Duration slowest_cached = absl::ZeroDuration();
  // A resolve the front answers from its cache: the same token, quickly.
  const auto expect_cached = [&](uint32_t min_valid, const std::string& when) {
    const absl::Time start = absl::Now();
    auto answer = Call(Resolve(min_valid));
    const absl::Duration took = absl::Now() - start;
    slowest_cached = std::max(slowest_cached, took);
    ASSERT_TRUE(answer.ok() && answer->has_resolve())
        << when << ": " << (answer.ok() ? answer->error().message() : answer.status().ToString());
    EXPECT_EQ(answer->resolve().access_token(), token) << when;
    EXPECT_EQ(answer->resolve().expires_at_ms(), expires_at_ms) << when;
    EXPECT_LT(took, kQuick) << when;
  };

  // Stopped: it takes nothing off its link, so any call to it would hang.
  ASSERT_EQ(::kill(broker_, SIGSTOP), 0);
  for (int i = 0; i < 20; ++i) {
    expect_cached(5, absl::StrCat("broker stopped, resolve ", i));
    if (HasFatalFailure()) return;
  }
  const absl::Duration status_stopped = CheckStatus("broker stopped");
  // Past half the token's life a refresh ahead is due: a cached answer starts
  // it in the background (toward the stopped broker) and still answers at once.
  absl::SleepFor(half_life + absl::Milliseconds(300) - absl::Now());
  for (int i = 0; i < 5; ++i) {
    expect_cached(3, absl::StrCat("broker stopped, refresh due, resolve ", i));
    if (HasFatalFailure()) return;
  }

  // Killed while stopped.
  ASSERT_EQ(::kill(broker_, SIGKILL), 0);
  expect_cached(2, "broker just killed");
  if (HasFatalFailure()) return;
  // A grant the front never cached: UNAVAILABLE with a retry hint, unless
  // the new broker already answers.
  std::string uncached_outcome, refresh_outcome;
  {
    auto answer = Call(Resolve(5, "other"));
    ASSERT_TRUE(answer.ok()) << answer.status();
    if (answer->has_resolve()) {
      uncached_outcome = "a token";
    } else {
      EXPECT_EQ(answer->error().code(), v1::Error::UNAVAILABLE) << answer->error().message();
      EXPECT_TRUE(HasRetryHint(answer->error())) << answer->error().message();
      uncached_outcome =
          absl::StrCat("UNAVAILABLE retry_after_ms=", answer->error().retry_after_ms(), " (",
                       answer->error().message(), ")");
    }
  }
  // More than the token holds, past half its life: it needs a refresh. While
  // the broker is down the front answers with the token it has (still valid,
  // if for less than asked: broker_tokens.cc), or UNAVAILABLE with a hint.
  {
    auto answer = Call(Resolve(3600));
    ASSERT_TRUE(answer.ok()) << answer.status();
    if (answer->has_resolve()) {
      refresh_outcome = answer->resolve().access_token() == token
                            ? "the cached token (valid for less than asked)"
                            : "a new token (the new broker was up)";
    } else {
      EXPECT_EQ(answer->error().code(), v1::Error::UNAVAILABLE) << answer->error().message();
      EXPECT_TRUE(HasRetryHint(answer->error())) << answer->error().message();
      refresh_outcome =
          absl::StrCat("UNAVAILABLE retry_after_ms=", answer->error().retry_after_ms());
    }
  }
  const absl::Duration status_killed = CheckStatus("broker killed");

  const pid_t next = testing::WaitForBroker(front_, broker_);
  ASSERT_GT(next, 0) << daemon_->Stderr();
  ASSERT_TRUE(WaitForRestartedLine(next)) << daemon_->Stderr();
  ASSERT_TRUE(Alive(front_));
  EXPECT_THAT(daemon_->Stderr(), HasSubstr(absl::StrCat("broker.lost pid=", broker_)));
  // The refresh the killed broker never made: the new one makes it.
  auto refreshed = Call(Resolve(3600));
  ASSERT_TRUE(refreshed.ok() && refreshed->has_resolve())
      << (refreshed.ok() ? refreshed->error().message() : refreshed.status().ToString());
  EXPECT_NE(refreshed->resolve().access_token(), token);
  EXPECT_GT(refreshed->resolve().expires_at_ms(), expires_at_ms);
  auto other = Call(Resolve(5, "other"));
  EXPECT_TRUE(other.ok() && other->has_resolve())
      << (other.ok() ? other->error().message() : other.status().ToString());
  const absl::Duration status_restarted = CheckStatus("broker restarted");

  // A hung broker holds Status for at most its two health calls
  // (front::kHealthCallTimeout each), not the seconds of an ordinary call.
  EXPECT_LT(status_stopped, absl::Seconds(3));
  const auto ms = [](absl::Duration d) { return absl::ToInt64Milliseconds(d); };
  std::cout << "broker down: 26 cached resolves answered with the same token, slowest "
            << ms(slowest_cached) << " ms; status took " << ms(status_stopped)
            << " ms (broker stopped), " << ms(status_killed) << " ms (killed), "
            << ms(status_restarted)
            << " ms (restarted); right after the kill an uncached grant got " << uncached_outcome
            << " and a resolve needing a refresh got " << refresh_outcome
            << "; after the restart (pid " << broker_ << " -> " << next
            << ") the refresh succeeded\n";
  RecordProperty("slowest_cached_ms", static_cast<int>(ms(slowest_cached)));
  RecordProperty("status_stopped_ms", static_cast<int>(ms(status_stopped)));
  RecordProperty("status_killed_ms", static_cast<int>(ms(status_killed)));
  RecordProperty("uncached_after_kill", uncached_outcome);
  RecordProperty("refresh_after_kill", refresh_outcome);
  broker_ = next;
}

// Short, so that the resolves below include a refresh.
constexpr absl::Duration kScanLifetime = absl::Seconds(4);

TEST_F(BrokerTest, TheFrontsMemoryNeverHoldsARefreshTokenClientSecretOrPkceVerifier) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (to read the daemon's memory and its token)";
#if defined(__SANITIZE_ADDRESS__)
  // ASan reserves terabytes of shadow memory as anonymous read-write
  // mappings: reading them all takes longer than the test may. The
  // RelWithDebInfo build runs this scan.
  GTEST_SKIP() << "not in an AddressSanitizer build (its shadow memory is too large to scan)";
#endif
  StartProvider(kScanLifetime);
  StartAndAuthorize();
  if (HasFatalFailure()) return;
  // Several resolves, one of them a refresh.
  auto first = Call(Resolve(1));
  ASSERT_TRUE(first.ok() && first->has_resolve());
  absl::SleepFor(absl::FromUnixMillis(first->resolve().expires_at_ms()) - kScanLifetime / 2 +
                 absl::Milliseconds(200) - absl::Now());
  std::string access_token;
  for (int i = 0; i < 3; ++i) {
    auto answer = Call(Resolve(600));
    ASSERT_TRUE(answer.ok() && answer->has_resolve())
        << (answer.ok() ? answer->error().message() : answer.status().ToString());
    access_token = answer->resolve().access_token();
  }
  ASSERT_NE(access_token, first->resolve().access_token()) << "no refresh happened";

  // An authorization begun: its PKCE verifier is sealed in the store.
  const std::string url = BeginAuthorization("demo");
  ASSERT_FALSE(url.empty());
  const std::string state = StateOf(url);
  ASSERT_FALSE(state.empty()) << url;

  // The test opens the vault itself (the same state directory, the same
  // SoftHSM2 token) to learn the secrets the front must never see.
  absl::StatusOr<daemon::Vault> vault = daemon::OpenEmbeddedState(state_);
  ASSERT_TRUE(vault.ok()) << vault.status();
  const auto unseal = [&](const std::string& owner, const std::string& purpose) -> std::string {
    auto sealed = vault->store->GetSealedSecret({owner, purpose});
    EXPECT_TRUE(sealed.ok()) << owner << " " << purpose << ": " << sealed.status();
    if (!sealed.ok()) return "";
    auto opened = testing::OpenStored(*vault->sealer, *sealed);
    EXPECT_TRUE(opened.ok()) << owner << " " << purpose << ": " << opened.status();
    return opened.ok() ? std::string(opened->view()) : "";
  };
  const std::string verifier = unseal(oauth::StateDigest(state), "pkce_verifier");
  const std::string refresh_token = unseal(grant_ids_["demo"], "refresh_token");
  const std::string client_secret = provider_->clients()[0].client_secret;
  ASSERT_FALSE(verifier.empty());
  ASSERT_FALSE(refresh_token.empty());
  ASSERT_NE(refresh_token, access_token);

  std::map<std::string, std::string> needles = {{"refresh_token", refresh_token},
                                                {"client_secret", client_secret},
                                                {"pkce_verifier", verifier},
                                                {"access_token", access_token}};
  MemoryScan front = ScanMemory(front_, needles);
  std::cout << "front " << front_
            << " after resolves and a refresh, authorization pending: " << Describe(front) << "\n";
  // The control: what the front holds by design (it caches the token it answered)
  // is found, so the scanner works.
  ASSERT_GT(front.regions_read, 0);
  EXPECT_GT(front.hits["access_token"], 0) << "the scanner does not find the cached token";
  EXPECT_EQ(front.hits["refresh_token"], 0);
  EXPECT_EQ(front.hits["client_secret"], 0);
  EXPECT_EQ(front.hits["pkce_verifier"], 0);

  // Completing it gives a new grant (replacing the first) and a new refresh token.
  CompleteAuthorization("demo", url);
  if (HasFatalFailure()) return;
  auto resolved = Call(Resolve(1));
  ASSERT_TRUE(resolved.ok() && resolved->has_resolve())
      << (resolved.ok() ? resolved->error().message() : resolved.status().ToString());
  needles["access_token"] = resolved->resolve().access_token();
  needles["refresh_token"] = unseal(grant_ids_["demo"], "refresh_token");
  needles["old_refresh_token"] = refresh_token;
  ASSERT_FALSE(needles["refresh_token"].empty());
  MemoryScan after = ScanMemory(front_, needles);
  std::cout << "front " << front_ << " after the authorization completed: " << Describe(after)
            << "\n";
  EXPECT_GT(after.hits["access_token"], 0) << "the scanner does not find the cached token";
  EXPECT_EQ(after.hits["refresh_token"], 0);
  EXPECT_EQ(after.hits["old_refresh_token"], 0);
  EXPECT_EQ(after.hits["client_secret"], 0);
  EXPECT_EQ(after.hits["pkce_verifier"], 0);

  // The broker, idle: reported, not judged (it holds these by design while it works).
  absl::SleepFor(absl::Seconds(1));
  const pid_t broker = testing::BrokerOf(front_);
  ASSERT_GT(broker, 0);
  MemoryScan idle = ScanMemory(broker, needles);
  std::cout << "broker " << broker << " idle: " << Describe(idle) << "; it "
            << (idle.hits["refresh_token"] > 0 ? "still holds" : "does not hold")
            << " the current refresh token\n";
  RecordProperty("front_regions_read", after.regions_read);
  RecordProperty("front_access_token_hits", after.hits["access_token"]);
  RecordProperty("broker_idle_refresh_token_hits", idle.hits["refresh_token"]);
  RecordProperty("broker_idle_old_refresh_token_hits", idle.hits["old_refresh_token"]);
  RecordProperty("broker_idle_client_secret_hits", idle.hits["client_secret"]);
  RecordProperty("broker_idle_pkce_verifier_hits", idle.hits["pkce_verifier"]);
}

}  // namespace
}  // namespace grantvault
