// BrokerSpawner: the one process that may start a broker. It is forked from
// the front at start, while the front is still one thread and before it opens
// its sockets, its database or anything an agent sent, so the front itself can
// run with no execve in its seccomp filter (OpenSSH's sshd keeps the same
// right in its privileged monitor for the same reason).
//
// The spawner holds nothing: it closes every descriptor but its channel and
// stderr, and answers one request, "start a broker", with the broker's end of
// a new socketpair and a pidfd (SCM_RIGHTS). It reaps its brokers and logs how
// each ended. It dies with the front (PR_SET_PDEATHSIG), and its brokers die
// with it. It installs no seccomp filter of its own: filters are inherited
// across execve, and the broker's (docs/architecture.md) is its own.
//
// Spawn() is thread-safe.
#ifndef GRANTVAULT_FRONT_BROKER_SPAWNER_H_
#define GRANTVAULT_FRONT_BROKER_SPAWNER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"

namespace grantvault::front {

// A broker just started: the front's end of its link, and a pidfd to watch
// (readable once it has exited) and to signal it through.
struct SpawnedBroker {
  UniqueFd link;
  UniqueFd pidfd;
  pid_t pid = -1;
};

class BrokerSpawner {
 public:
  // The broker's descriptor number for its link ("--broker-fd=3").
  static constexpr int kBrokerFd = 3;

  // Forks the spawner. Call it while the process has one thread. `argv` is
  // the broker's whole command line; argv[0] is the absolute path executed.
  static absl::StatusOr<std::unique_ptr<BrokerSpawner>> Fork(std::vector<std::string> argv);
  // Closes the channel: the spawner waits a bounded time for its brokers to
  // end (each ends when its link closes), kills what is left, and exits; this
  // waits for that, and reaps it.
  ~BrokerSpawner();
  BrokerSpawner(const BrokerSpawner&) = delete;
  BrokerSpawner& operator=(const BrokerSpawner&) = delete;

  // Aborted once the spawner is gone or out of step with this end (for good:
  // nothing can start a broker any more); Unavailable when it could not start
  // one this time (out of processes or descriptors).
  absl::StatusOr<SpawnedBroker> Spawn();
  pid_t pid() const { return pid_; }

 private:
  BrokerSpawner(UniqueFd channel, pid_t pid) : channel_(std::move(channel)), pid_(pid) {}

  absl::Mutex mu_;
  UniqueFd channel_ ABSL_GUARDED_BY(mu_);
  const pid_t pid_;
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_BROKER_SPAWNER_H_
