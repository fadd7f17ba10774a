// Test helper: opens an embedded state directory and rewraps every record to
// the active KEK, printing "progress <done> <remaining>" after each batch so
// that rewrap_crash_test can kill it at a moment of its choosing.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "daemon/vault.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: rewrap_worker STATE_DIR BATCH_SIZE\n");
    return 2;
  }
  auto vault = grantvault::daemon::OpenEmbeddedState(argv[1]);
  if (!vault.ok()) {
    std::fprintf(stderr, "rewrap_worker: %s\n", std::string(vault.status().message()).c_str());
    return 1;
  }
  auto result =
      vault->keys->Rewrap(*vault->sealer, static_cast<size_t>(std::atoi(argv[2])),
                          [](const grantvault::keys::RewrapProgress& p) {
                            std::printf("progress %lld %lld\n", static_cast<long long>(p.done),
                                        static_cast<long long>(p.remaining));
                            std::fflush(stdout);
                          });
  if (!result.ok()) {
    std::fprintf(stderr, "rewrap_worker: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  std::printf("done %lld\n", static_cast<long long>(result->rewrapped));
  return 0;
}
