#include "front/broker_process.h"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {
namespace {

void Kill(const UniqueFd& pidfd) {
  if (pidfd.valid()) ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
}
// Whether the process behind `pidfd` exited within `timeout` (a pidfd is
// readable once it has; the spawner, its parent, reaps it and logs how).
bool Exited(const UniqueFd& pidfd, absl::Duration timeout) {
  if (!pidfd.valid()) return true;
  pollfd p{pidfd.get(), POLLIN, 0};
  const int millis = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  int ready;
  do {
    ready = ::poll(&p, 1, millis);
  } while (ready < 0 && errno == EINTR);
  return ready == 1;
}
// Events are rare (a reauth_required, an upstream revocation attempt); past
// this many undelivered, the broker is misbehaving and later ones are dropped.
constexpr size_t kMaxQueuedEvents = 10000;

}  // namespace

absl::StatusOr<std::unique_ptr<BrokerProcess>> BrokerProcess::Start(Options options,
                                                                    BrokerLink::OnEvent on_event,
                                                                    broker::v1::HelloReply* hello) {
  std::unique_ptr<BrokerProcess> process(
      new BrokerProcess(std::move(options), std::move(on_event)));
  if (process->options_.spawner == nullptr) {
    return absl::InvalidArgumentError("a broker process needs a spawner");
  }
  GV_ASSIGN_OR_RETURN(Running spawned, process->Spawn());
  absl::Status greeted = process->Hello(*spawned.link, hello);
  {
    absl::MutexLock lock(&process->mu_);
    process->link_ = spawned.link;
    process->pid_ = spawned.pid;
    process->pidfd_ = spawned.pidfd;
    process->generation_ = spawned.generation;
    process->link_closed_ = !spawned.link->alive();
    process->link_ready_ = greeted.ok() && !process->link_closed_;
  }
  if (!greeted.ok()) return greeted;  // the destructor reaps it
  process->supervisor_ = std::thread([p = process.get()] { p->Supervise(); });
  process->events_thread_ = std::thread([p = process.get()] { p->DeliverEvents(); });
  return process;
}

BrokerProcess::~BrokerProcess() {
  std::shared_ptr<BrokerLink> link;
  std::shared_ptr<UniqueFd> pidfd;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    link = std::move(link_);
    pidfd = std::move(pidfd_);
  }
  link.reset();  // closes the channel: the broker's Serve returns and it exits
  if (supervisor_.joinable()) supervisor_.join();
  if (events_thread_.joinable()) events_thread_.join();
  // Bounded: a broker still finishing a refresh gets the refresh's time.
  if (pidfd != nullptr && !Exited(*pidfd, absl::Seconds(30))) {
    Kill(*pidfd);
    Exited(*pidfd, absl::Seconds(5));
  }
}

BrokerLinkSource BrokerProcess::links() {
  return [this]() -> absl::StatusOr<std::shared_ptr<BrokerLink>> {
    absl::MutexLock lock(&mu_);
    if (link_ == nullptr || !link_ready_ || link_closed_) {
      return absl::UnavailableError("the broker process is restarting; retry_after_ms=500");
    }
    return link_;
  };
}

pid_t BrokerProcess::pid() const {
  absl::MutexLock lock(&mu_);
  return pid_;
}

int BrokerProcess::restarts() const {
  absl::MutexLock lock(&mu_);
  return restarts_;
}

absl::StatusOr<BrokerProcess::Running> BrokerProcess::Spawn() {
  GV_ASSIGN_OR_RETURN(SpawnedBroker spawned, options_.spawner->Spawn());
  uint64_t generation;
  {
    absl::MutexLock lock(&mu_);
    generation = ++spawned_;
  }
  auto* self = this;
  std::shared_ptr<BrokerLink> link = BrokerLink::Connect(
      std::move(spawned.link),
      [self](const broker::v1::Event& event) {
        absl::MutexLock lock(&self->mu_);
        if (self->events_.size() < kMaxQueuedEvents) self->events_.push_back(event);
      },
      [self, generation](const absl::Status&) {
        // Only the current broker's link closing matters: an older one's
        // (a broker that failed its hello, killed since) may close late.
        absl::MutexLock lock(&self->mu_);
        if (self->generation_ == generation) self->link_closed_ = true;
      });
  return Running{std::move(link), std::make_shared<UniqueFd>(std::move(spawned.pidfd)), spawned.pid,
                 generation};
}

absl::Status BrokerProcess::Hello(BrokerLink& link, broker::v1::HelloReply* hello) {
  broker::v1::Request request;
  request.mutable_hello()->set_version(broker::v1::VERSION_1);
  absl::StatusOr<broker::v1::Reply> reply = link.Call(request, options_.hello_timeout);
  if (!reply.ok()) {
    return absl::Status(reply.status().code(),
                        absl::StrCat("the broker did not start (its log lines say why): ",
                                     reply.status().message()));
  }
  if (reply->hello().version() != broker::v1::VERSION_1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the broker speaks protocol version ", reply->hello().version()));
  }
  if (hello != nullptr) *hello = reply->hello();
  return absl::OkStatus();
}

void BrokerProcess::DeliverEvents() {
  while (true) {
    broker::v1::Event event;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !events_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      event = std::move(events_.front());
      events_.pop_front();
    }
    if (on_event_) on_event_(event);
  }
}

void BrokerProcess::Supervise() {
  absl::Duration backoff = options_.min_backoff;
  while (true) {
    std::shared_ptr<UniqueFd> dead;
    pid_t dead_pid;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || link_closed_; };
      mu_.Await(absl::Condition(&wake));
      if (stopping_) return;
      link_ready_ = false;
      dead = pidfd_;
      dead_pid = pid_;
    }
    // Its link is closed: it is exiting, or it is of no use and is made to.
    if (dead != nullptr && !Exited(*dead, absl::Seconds(2))) {
      Kill(*dead);
      Exited(*dead, absl::Seconds(5));
    }
    spdlog::error("broker.lost pid={}; starting another in {}", dead_pid,
                  absl::FormatDuration(backoff));
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff)) return;
    }
    absl::StatusOr<Running> spawned = Spawn();
    if (!spawned.ok() && absl::IsAborted(spawned.status())) {
      spdlog::error("broker.unrecoverable: {}; the daemon stops",
                    std::string(spawned.status().message()));
      if (options_.on_fatal) options_.on_fatal(spawned.status());
      return;
    }
    absl::Status greeted = spawned.ok() ? Hello(*spawned->link, nullptr) : spawned.status();
    // The link replaced is released after the lock: closing it joins its
    // reader, which may be waiting for the lock in its close callback.
    std::shared_ptr<BrokerLink> replaced;
    absl::ReleasableMutexLock lock(&mu_);
    ++restarts_;
    if (spawned.ok()) {
      replaced = std::exchange(link_, spawned->link);
      pid_ = spawned->pid;
      pidfd_ = spawned->pidfd;
      generation_ = spawned->generation;
      link_closed_ = !greeted.ok() || !link_->alive();
      link_ready_ = greeted.ok() && !link_closed_;
    }
    if (link_ready_) {
      spdlog::info("broker.restarted pid={} restarts={}", pid_, restarts_);
      backoff = options_.min_backoff;
    } else {
      spdlog::error("broker.restart_failed: {}", std::string(greeted.message()));
      if (spawned.ok()) Kill(*spawned->pidfd);
      // Loops again at once: link_closed_ is still set.
      backoff = std::min(options_.max_backoff, backoff * 2);
    }
    lock.Release();
    replaced.reset();
  }
}

}  // namespace grantvault::front
