// BrokerProcess: has the spawner start the broker (this binary again, with
// --broker-fd), keeps a link to it, and has another started with backoff
// when it dies. While it
// is down, calls fail Unavailable with a retry hint; what the front caches
// (access tokens) keeps being served.
//
// Thread-safe.
#ifndef GRANTVAULT_FRONT_BROKER_PROCESS_H_
#define GRANTVAULT_FRONT_BROKER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "front/broker_calls.h"
#include "front/broker_link.h"
#include "front/broker_spawner.h"

namespace grantvault::front {

class BrokerProcess {
 public:
  struct Options {
    BrokerSpawner* spawner = nullptr;  // must outlive the BrokerProcess
    // Called once, on the supervisor's thread, when no broker can be started
    // any more (the spawner is gone): the daemon should stop (and systemd
    // start it again) rather than serve without one.
    std::function<void(const absl::Status&)> on_fatal;
    absl::Duration min_backoff = absl::Milliseconds(100);
    absl::Duration max_backoff = absl::Seconds(5);
    // Opening the vault may initialise a token on first start.
    absl::Duration hello_timeout = absl::Seconds(120);
  };
  // Starts the broker and waits for its hello (returned in `hello`).
  // `on_event` runs on a thread of its own (never the link's reader, so it
  // may call the broker).
  static absl::StatusOr<std::unique_ptr<BrokerProcess>> Start(Options options,
                                                              BrokerLink::OnEvent on_event,
                                                              broker::v1::HelloReply* hello);
  // Stops the broker (the link closes; it exits) and reaps it.
  ~BrokerProcess();
  BrokerProcess(const BrokerProcess&) = delete;
  BrokerProcess& operator=(const BrokerProcess&) = delete;

  // The link to the broker running now.
  BrokerLinkSource links();
  pid_t pid() const;
  int restarts() const;

 private:
  BrokerProcess(Options options, BrokerLink::OnEvent on_event)
      : options_(std::move(options)), on_event_(std::move(on_event)) {}
  struct Running {
    std::shared_ptr<BrokerLink> link;
    std::shared_ptr<UniqueFd> pidfd;
    pid_t pid;
    uint64_t generation;  // which Spawn() made it
  };
  // Has the spawner start a broker; its link and pidfd.
  absl::StatusOr<Running> Spawn();
  absl::Status Hello(BrokerLink& link, broker::v1::HelloReply* hello);
  void Supervise();
  void DeliverEvents();

  const Options options_;
  const BrokerLink::OnEvent on_event_;
  mutable absl::Mutex mu_;
  std::shared_ptr<BrokerLink> link_ ABSL_GUARDED_BY(mu_);
  bool link_ready_ ABSL_GUARDED_BY(mu_) = false;   // hello answered
  bool link_closed_ ABSL_GUARDED_BY(mu_) = false;  // of the link of `generation_`
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;   // of link_
  uint64_t spawned_ ABSL_GUARDED_BY(mu_) = 0;      // generations handed out
  pid_t pid_ ABSL_GUARDED_BY(mu_) = -1;
  std::shared_ptr<UniqueFd> pidfd_ ABSL_GUARDED_BY(mu_);
  int restarts_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<broker::v1::Event> events_ ABSL_GUARDED_BY(mu_);
  std::thread supervisor_;
  std::thread events_thread_;
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_BROKER_PROCESS_H_
