// Finding grantvaultd's own processes from outside, through /proc: the front
// (the process a test starts) forks the spawner (prctl name "gv-spawner"),
// which fork+execs each broker (front/broker_spawner.h).
#ifndef GRANTVAULT_TESTS_TESTING_PROCESS_TREE_H_
#define GRANTVAULT_TESTS_TESTING_PROCESS_TREE_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace grantvault::testing {

// The live (not zombie) processes whose parent is `parent`, from the PPid
// and State lines of /proc/*/status.
std::vector<pid_t> ChildrenOf(pid_t parent);
// /proc/<pid>/comm without its newline; "" when the process is gone.
std::string CommOf(pid_t pid);

// The spawner of the front `front`: its child named "gv-spawner"; -1 if none.
pid_t SpawnerOf(pid_t front);
// The broker running now under the front `front` (the spawner's one live
// child); -1 while there is none (or, for a moment, more than one).
pid_t BrokerOf(pid_t front);
// Waits (tests/testing/wait.h) until a broker other than `not_this` runs
// under `front`; returns it, or -1 after `timeout`.
pid_t WaitForBroker(pid_t front, pid_t not_this = -1, absl::Duration timeout = absl::Seconds(20));

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_PROCESS_TREE_H_
