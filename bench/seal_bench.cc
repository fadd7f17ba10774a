// Seal/open throughput on a SoftHSM2 token, and rewrap of 100,000 stored
// records. Figures are recorded in docs/performance.md.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "daemon/vault.h"
#include "hsm/envelope_sealer.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

// One state directory for the process (SoftHSM is loaded once per process).
daemon::Vault& SharedVault() {
  static testing::TempDir* dir = new testing::TempDir();
  static daemon::Vault* vault = [] {
    auto v = daemon::InitEmbeddedState(dir->Join("state"));
    if (!v.ok()) {
      std::fprintf(stderr, "bench: %s\n", std::string(v.status().message()).c_str());
      std::abort();
    }
    return new daemon::Vault(std::move(*v));
  }();
  return *vault;
}

const hsm::SealContext kContext{"ws_bench", "google_workspace", "1134", "gr_bench",
                                "refresh_token"};

void BM_Seal(benchmark::State& state) {
  daemon::Vault& vault = SharedVault();
  SecretBytes secret = SecretBytes::Random(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    auto sealed = vault.sealer->Seal(secret, kContext);
    if (!sealed.ok()) state.SkipWithError("seal failed");
    benchmark::DoNotOptimize(sealed);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Seal)->Arg(64)->Arg(1024)->ThreadRange(1, 2)->UseRealTime();

void BM_Open(benchmark::State& state) {
  daemon::Vault& vault = SharedVault();
  SecretBytes secret = SecretBytes::Random(static_cast<size_t>(state.range(0)));
  auto sealed = vault.sealer->Seal(secret, kContext);
  if (!sealed.ok()) std::abort();
  for (auto _ : state) {
    auto opened = vault.sealer->Open(sealed->record, kContext);
    if (!opened.ok()) state.SkipWithError("open failed");
    benchmark::DoNotOptimize(opened);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Open)->Arg(64)->Arg(1024)->ThreadRange(1, 2)->UseRealTime();

// Seals `n` records into the store, rotates, and times one full rewrap.
void BM_Rewrap(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  daemon::Vault& vault = SharedVault();
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<store::SealedSecret> batch;
    for (int i = 0; i < n; ++i) {
      store::SealedSecret s;
      s.key = {absl::StrCat("gr_rewrap_", state.iterations(), "_", i), "refresh_token"};
      s.workspace_id = "ws_bench";
      s.connector_id = "github";
      s.account_id = "acct";
      hsm::SealContext ctx{s.workspace_id, s.connector_id, s.account_id, s.key.owner_id,
                           s.key.purpose};
      auto sealed = vault.sealer->Seal(SecretBytes::Random(64), ctx);
      if (!sealed.ok()) std::abort();
      s.kek_label = sealed->kek.label;
      s.record = std::move(sealed->record);
      batch.push_back(std::move(s));
      if (batch.size() == 5000 || i == n - 1) {
        if (!vault.store->PutSealedSecrets(batch).ok()) std::abort();
        batch.clear();
      }
    }
    if (!vault.keys->Rotate(vault.sealer.get()).ok()) std::abort();
    state.ResumeTiming();
    auto result = vault.keys->Rewrap(*vault.sealer, 1000, nullptr);
    if (!result.ok() || !result->failures.empty()) state.SkipWithError("rewrap failed");
    state.counters["records"] = static_cast<double>(result.ok() ? result->rewrapped : 0);
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_Rewrap)->Arg(100000)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace grantvault

BENCHMARK_MAIN();
