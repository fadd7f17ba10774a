#include "front/broker_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "ipc/packet_channel.h"
#include "spdlog/spdlog.h"

namespace grantvault::front {
namespace {

constexpr int kBrokerFd = 3;

// SIGKILL to our own unreaped child, through a pidfd (the front's seccomp
// filter lets kill() reach only the front itself).
void KillChild(pid_t pid) {
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return;
  ::syscall(SYS_pidfd_send_signal, fd, SIGKILL, nullptr, 0);
  ::close(fd);
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
  GV_ASSIGN_OR_RETURN(auto spawned, process->Spawn());
  absl::Status greeted = process->Hello(*spawned.first, hello);
  {
    absl::MutexLock lock(&process->mu_);
    process->link_ = spawned.first;
    process->pid_ = spawned.second;
    process->link_ready_ = greeted.ok();
  }
  if (!greeted.ok()) return greeted;  // the destructor reaps it
  process->supervisor_ = std::thread([p = process.get()] { p->Supervise(); });
  process->events_thread_ = std::thread([p = process.get()] { p->DeliverEvents(); });
  return process;
}

BrokerProcess::~BrokerProcess() {
  std::shared_ptr<BrokerLink> link;
  pid_t pid;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    link = std::move(link_);
    pid = pid_;
  }
  link.reset();  // closes the channel: the broker's Serve returns and it exits
  if (supervisor_.joinable()) supervisor_.join();
  if (events_thread_.joinable()) events_thread_.join();
  if (pid > 0) {
    // Bounded: a broker still finishing a refresh gets the refresh's time.
    for (int i = 0; i < 300; ++i) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
      absl::SleepFor(absl::Milliseconds(100));
    }
    KillChild(pid);
    ::waitpid(pid, nullptr, 0);
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

absl::StatusOr<std::pair<std::shared_ptr<BrokerLink>, pid_t>> BrokerProcess::Spawn() {
  GV_ASSIGN_OR_RETURN(auto pair, ipc::PacketSocketPair());
  // Everything the child needs is made before fork: after it, only
  // async-signal-safe calls.
  std::vector<std::string> args;
  args.push_back(options_.executable);
  for (const std::string& a : options_.args) args.push_back(a);
  args.push_back(absl::StrCat("--broker-fd=", kBrokerFd));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int child_end = pair.second.get();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (::getppid() != parent) ::_exit(127);
    if (::dup2(child_end, kBrokerFd) != kBrokerFd) ::_exit(127);  // dup2 clears close-on-exec
    // Nothing else of the front's (listening sockets, the state lock) reaches the broker.
    ::syscall(SYS_close_range, kBrokerFd + 1, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  pair.second.reset();
  auto* self = this;
  std::shared_ptr<BrokerLink> link = BrokerLink::Connect(
      std::move(pair.first),
      [self](const broker::v1::Event& event) {
        absl::MutexLock lock(&self->mu_);
        if (self->events_.size() < kMaxQueuedEvents) self->events_.push_back(event);
      },
      [self](const absl::Status&) {
        absl::MutexLock lock(&self->mu_);
        self->link_closed_ = true;
      });
  spdlog::info("broker.started pid={}", pid);
  return std::pair{std::move(link), pid};
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
    pid_t dead;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || link_closed_; };
      mu_.Await(absl::Condition(&wake));
      if (stopping_) return;
      link_ready_ = false;
      dead = pid_;
    }
    int wstatus = 0;
    ::waitpid(dead, &wstatus, 0);
    if (WIFSIGNALED(wstatus)) {
      spdlog::error("broker.died pid={} signal={}; starting another in {}", dead,
                    strsignal(WTERMSIG(wstatus)), absl::FormatDuration(backoff));
    } else {
      spdlog::error("broker.exited pid={} status={}; starting another in {}", dead,
                    WEXITSTATUS(wstatus), absl::FormatDuration(backoff));
    }
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff)) return;
    }
    absl::StatusOr<std::pair<std::shared_ptr<BrokerLink>, pid_t>> spawned = Spawn();
    absl::Status greeted = spawned.ok() ? Hello(*spawned->first, nullptr) : spawned.status();
    absl::MutexLock lock(&mu_);
    ++restarts_;
    if (spawned.ok()) {
      link_ = spawned->first;
      pid_ = spawned->second;
      link_closed_ = !greeted.ok() || !link_->alive();
      link_ready_ = greeted.ok();
    }
    if (greeted.ok()) {
      spdlog::info("broker.restarted pid={} restarts={}", pid_, restarts_);
      backoff = options_.min_backoff;
    } else {
      spdlog::error("broker.restart_failed: {}", std::string(greeted.message()));
      if (spawned.ok()) KillChild(pid_);
      backoff = std::min(options_.max_backoff, backoff * 2);
    }
  }
}

}  // namespace grantvault::front
