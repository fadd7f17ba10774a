// Audit append throughput against a real SQLite file in /tmp, signing with a
// SoftHSM2 token. Figures are recorded in docs/audit.md ("Performance").
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "audit/audit_log.h"
#include "audit/signer.h"
#include "common/clock.h"
#include "hsm/keys.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "audit_bench: %s\n", status.ToString().c_str());
  std::abort();
}

// One token for the process (SoftHSM is loaded once per process).
testing::SoftHsmToken& SharedToken() {
  static testing::SoftHsmToken* token = [] {
    auto t = testing::SoftHsmToken::Create();
    if (!t.ok()) Die(t.status());
    auto key = hsm::GenerateSigningKeyPair((*t)->token(), "grantvault-audit-1");
    if (!key.ok()) Die(key.status());
    return t->release();
  }();
  return *token;
}

// One log per configuration, each in its own database file.
audit::AuditLog& SharedLog(absl::Duration group_commit_interval) {
  static testing::TempDir* dir = new testing::TempDir();
  static absl::Mutex mu;
  static auto* logs = new std::map<int64_t, std::unique_ptr<audit::AuditLog>>();
  absl::MutexLock lock(&mu);
  auto& log = (*logs)[absl::ToInt64Milliseconds(group_commit_interval)];
  if (log == nullptr) {
    auto signer = audit::MakeHsmSigner(SharedToken().token(), "grantvault-audit-1");
    if (!signer.ok()) Die(signer.status());
    audit::AuditOptions options;
    options.group_commit_interval = group_commit_interval;
    auto opened = audit::AuditLog::Open(
        dir->Join(absl::StrCat("audit-", absl::ToInt64Milliseconds(group_commit_interval), ".db")),
        std::move(*signer), *audit::MakeHsmAnchorStore(SharedToken().token()),
        SecretBytes::Random(32), &RealClock(), options);
    if (!opened.ok()) Die(opened.status());
    log = std::move(*opened);
  }
  return *log;
}

audit::Event TokenReleased(int thread) {
  audit::Event e;
  e.type = "token.released";
  e.workspace_id = absl::StrCat("ws_", thread % 4);
  e.actor.uid = 1000;
  e.actor.pid = 4000 + thread;
  e.actor.exe = "/usr/bin/agent-host";
  e.grant_id = "gr_abcdefghijklmnopqrstuvwxyz";
  e.connector_id = "google_workspace";
  e.account_id = "113456789012345678901";
  e.scopes = {"https://www.googleapis.com/auth/gmail.readonly"};
  e.outcome = "ok";
  e.details = {{"tool", "gmail.search"},
               {"token_fingerprint", "hmac-sha256:0123456789abcdef0123456789abcdef"},
               {"request_id", "req-0123456789"}};
  return e;
}

void RunAppends(benchmark::State& state, audit::AuditLog& log, audit::Durability durability) {
  const audit::Event event = TokenReleased(state.thread_index());
  for (auto _ : state) {
    absl::Status s = log.Append(event, durability);
    if (!s.ok()) state.SkipWithError("append failed");
  }
  state.SetItemsProcessed(state.iterations());
}

// Token releases, group commit: fsynced at least every 200 ms (the default).
void BM_AppendGrouped(benchmark::State& state) {
  RunAppends(state, SharedLog(absl::Milliseconds(200)), audit::Durability::kGrouped);
}
BENCHMARK(BM_AppendGrouped)->Threads(1)->Threads(16)->Threads(64)->UseRealTime();

// The alternative: every batch fsynced before Append returns.
void BM_AppendGroupedFsyncEveryBatch(benchmark::State& state) {
  RunAppends(state, SharedLog(absl::ZeroDuration()), audit::Durability::kGrouped);
}
BENCHMARK(BM_AppendGroupedFsyncEveryBatch)->Threads(1)->Threads(16)->Threads(64)->UseRealTime();

// Admin events: fsynced before Append returns.
void BM_AppendDurable(benchmark::State& state) {
  RunAppends(state, SharedLog(absl::Milliseconds(200)), audit::Durability::kDurable);
}
BENCHMARK(BM_AppendDurable)->Threads(1)->Threads(16)->UseRealTime();

// A proxied call's record (front/proxy.cc), as the proxy writes one per call.
audit::Event ProxyCall(int64_t i) {
  audit::Event e;
  e.type = "proxy.call";
  e.workspace_id = absl::StrCat("ws_", i % 2);
  e.actor.uid = 1000;
  e.actor.pid = 4000;
  e.actor.exe = "/usr/bin/agent-host";
  e.grant_id = absl::StrCat("gr_abcdefghijklmnopqrstuvwxy", i % 4);
  e.connector_id = "demo_api";
  e.account_id = "113456789012345678901";
  e.outcome = "ok";
  e.details = {{"tool", "get_item"},       {"method", "GET"}, {"host", "127.0.0.1:8443"},
               {"path", "/v1/items/{id}"}, {"status", "200"}, {"request_bytes", "0"},
               {"response_bytes", "612"},  {"ms", "1"}};
  return e;
}

int64_t CpuMicros() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  const auto us = [](const timeval& t) { return t.tv_sec * 1000000LL + t.tv_usec; };
  return us(usage.ru_utime) + us(usage.ru_stime);
}

// The proxy's records: appended without waiting, committed in batches within
// 50 ms (kDeferred). At most 4096 in the queue, as a busy proxy has. The
// process's CPU time per record (the writer thread's included) is the
// counter to watch: the calls are what the machine is busy with.
void BM_AppendDeferredAsync(benchmark::State& state) {
  audit::AuditLog& log = SharedLog(absl::Milliseconds(200));
  std::atomic<int64_t> pending = 0;
  int64_t i = 0;
  const int64_t cpu_before = CpuMicros();
  for (auto _ : state) {
    while (pending.load(std::memory_order_relaxed) >= 4096) absl::SleepFor(absl::Microseconds(200));
    pending.fetch_add(1, std::memory_order_relaxed);
    log.AppendAsync(ProxyCall(i++), audit::Durability::kDeferred, [&pending](absl::Status s) {
      if (!s.ok()) std::abort();
      pending.fetch_sub(1, std::memory_order_relaxed);
    });
  }
  while (pending.load() > 0) absl::SleepFor(absl::Milliseconds(1));
  state.SetItemsProcessed(state.iterations());
  state.counters["cpu_us_per_record"] =
      static_cast<double>(CpuMicros() - cpu_before) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_AppendDeferredAsync)->UseRealTime();

}  // namespace
}  // namespace grantvault

BENCHMARK_MAIN();
