// Rotation and rewrap of 10,000 stored records, with the rewrapping process
// killed (SIGKILL) half-way and the rewrap resumed afterwards.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <random>
#include <string>

#include "daemon/vault.h"
#include "gtest/gtest.h"
#include "tests/keys/sealed_fixtures.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::keys {
namespace {

constexpr int kRecords = 10000;

struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

Child StartWorker(const std::string& state_dir, int batch) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    const std::string b = std::to_string(batch);
    ::execl(GV_REWRAP_WORKER, GV_REWRAP_WORKER, state_dir.c_str(), b.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  return Child{pid, ::fdopen(fds[0], "r")};
}

std::map<std::string, int64_t> Counts(daemon::Vault& vault) {
  auto counts = vault.store->CountSealedSecretsByKek();
  EXPECT_TRUE(counts.ok()) << counts.status();
  return counts.ok() ? *counts : std::map<std::string, int64_t>{};
}

TEST(RewrapCrashTest, KilledHalfWayThenResumedLosesNothing) {
  testing::TempDir dir;
  const std::string state = dir.Join("state");
  {
    auto vault = daemon::InitEmbeddedState(state);
    ASSERT_TRUE(vault.ok()) << vault.status();
    ASSERT_TRUE(SealRecords(*vault, kRecords, "k").ok());
    ASSERT_TRUE(vault->keys->Rotate(vault->sealer.get()).ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(vault->keys->Retire(1)));
  }  // closes the token: the worker process has it to itself

  // Kill somewhere between 30 % and 70 % of the way, at a point that differs
  // from run to run (printed, so that a failure can be reproduced).
  std::random_device entropy;
  const long long kill_after =
      kRecords * 3 / 10 + static_cast<long long>(entropy() % (kRecords * 4 / 10));
  std::printf("killing the worker once it reports %lld records rewrapped\n", kill_after);
  Child child = StartWorker(state, 50);
  ASSERT_GT(child.pid, 0);
  char line[128];
  long long done = 0, remaining = 0;
  bool killed = false;
  while (std::fgets(line, sizeof(line), child.out) != nullptr) {
    if (std::sscanf(line, "progress %lld %lld", &done, &remaining) == 2 && done >= kill_after) {
      // The worker is already sealing its next batch: the kill lands mid-work.
      ::kill(child.pid, SIGKILL);
      killed = true;
      break;
    }
  }
  std::fclose(child.out);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child.pid, &wstatus, 0), child.pid);
  ASSERT_TRUE(killed) << "the worker finished before it could be killed";
  ASSERT_TRUE(WIFSIGNALED(wstatus));

  auto vault = daemon::OpenEmbeddedState(state);
  ASSERT_TRUE(vault.ok()) << vault.status();
  auto counts = Counts(*vault);
  const int64_t old_left = counts["grantvault-kek-1"];
  std::printf("after SIGKILL: %lld records under KEK 1, %lld under KEK 2\n",
              static_cast<long long>(old_left), static_cast<long long>(counts["grantvault-kek-2"]));
  EXPECT_GT(old_left, 0);
  EXPECT_LE(old_left, kRecords - kill_after);
  EXPECT_EQ(counts["grantvault-kek-1"] + counts["grantvault-kek-2"], kRecords);
  // Every record opens in the interrupted state, whichever KEK it is under.
  ASSERT_TRUE(VerifyRecords(*vault, kRecords, "k").ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(vault->keys->Retire(1)));

  auto resumed = vault->keys->Rewrap(*vault->sealer, 500, nullptr);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->rewrapped, old_left);
  EXPECT_TRUE(resumed->failures.empty());
  counts = Counts(*vault);
  EXPECT_EQ(counts.count("grantvault-kek-1"), 0u);
  EXPECT_EQ(counts["grantvault-kek-2"], kRecords);
  ASSERT_TRUE(VerifyRecords(*vault, kRecords, "k").ok());

  ASSERT_TRUE(vault->keys->Retire(1).ok());
  ASSERT_TRUE(VerifyRecords(*vault, kRecords, "k").ok());
}

}  // namespace
}  // namespace grantvault::keys
