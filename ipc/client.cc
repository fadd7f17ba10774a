#include "ipc/client.h"

#include <sys/un.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "ipc/asio.h"
#include "ipc/frame.h"

namespace grantvault::ipc {
namespace {

namespace asio = boost::asio;
using stream_protocol = asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

// A deadline this long (or infinite) means "no deadline".
constexpr absl::Duration kNoDeadline = absl::Hours(24 * 365);
constexpr size_t kMaxClientName = 1024;
constexpr size_t kMaxFramesPerWrite = 64;

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

[[noreturn]] void Fatal(const char* message) {
  std::fprintf(stderr, "ipc: fatal: %s\n", message);
  std::abort();
}

// One call from Submit until its final response, its failure, or its caller
// giving up.
struct CallState {
  Client::ResponseCallback on_done;
  Client::PartialCallback on_partial;
  std::shared_ptr<asio::steady_timer> timer;  // set and cancelled on the I/O thread only
  // Held while on_partial runs; `cancelled` is set by a Call that gave up, so
  // no partial callback runs after Call returned.
  absl::Mutex callback_mu;
  bool cancelled ABSL_GUARDED_BY(callback_mu) = false;
};

// One connection (attempt). Touched on the I/O thread only.
struct Conn {
  explicit Conn(asio::io_context& io) : socket(io), handshake_timer(io) {}

  stream_protocol::socket socket;
  asio::steady_timer handshake_timer;  // connect + Hello within connect_timeout
  uint64_t hello_id = 0;
  bool ready = false;  // Hello answered: calls may go out
  std::array<uint8_t, kFrameHeaderSize> header{};
  std::string payload;
  std::deque<std::string> outbox;
  std::vector<std::string> writing;
};

class ClientImpl final : public Client {
 public:
  ClientImpl(std::string socket_path, const ClientOptions& options);
  ~ClientImpl() override;

  // The first connection and Hello; fills hello_.
  absl::Status Handshake();

  using Client::Call;
  absl::StatusOr<v1::Response> Call(v1::Request request, absl::Duration deadline,
                                    PartialCallback on_partial) override;
  void CallAsync(v1::Request request, absl::Duration deadline, ResponseCallback on_done,
                 PartialCallback on_partial) override {
    Submit(std::move(request), deadline, std::move(on_done), std::move(on_partial));
  }
  const v1::HelloReply& hello() const override { return hello_; }
  absl::Duration default_deadline() const override { return options_.default_deadline; }

 private:
  using WorkGuard = asio::executor_work_guard<asio::io_context::executor_type>;

  // Assigns the request id, registers the call and hands it to the I/O thread.
  uint64_t Submit(v1::Request request, absl::Duration deadline, ResponseCallback on_done,
                  PartialCallback on_partial) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<CallState> TakeCall(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  // I/O thread only.
  void StartCall(uint64_t id, std::string frame, std::optional<Clock::time_point> deadline);
  void FailCall(uint64_t id, const absl::Status& status);
  void FailAll(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  void EnsureConnection();
  void OnConnected(const std::shared_ptr<Conn>& conn, const ErrorCode& ec);
  void OnHelloReply(const std::shared_ptr<Conn>& conn, const v1::Response& response);
  void ReadHeader(const std::shared_ptr<Conn>& conn);
  void ReadPayload(const std::shared_ptr<Conn>& conn);
  void Dispatch(const std::shared_ptr<Conn>& conn, v1::Response response);
  void Write(const std::shared_ptr<Conn>& conn, std::string frame);
  void WriteNext(const std::shared_ptr<Conn>& conn);
  // Closes `conn` if it is the current connection and fails every pending
  // call with `status`; the next call connects again.
  void Break(std::shared_ptr<Conn> conn, const absl::Status& status);

  const std::string path_;
  const ClientOptions options_;
  v1::HelloReply hello_;  // written once, by the first handshake, before Connect returns
  std::atomic<uint64_t> next_id_{1};

  asio::io_context io_;  // before everything holding I/O objects: destroyed after them
  std::optional<WorkGuard> work_;

  absl::Mutex mu_;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, std::shared_ptr<CallState>> pending_ ABSL_GUARDED_BY(mu_);

  // I/O thread only.
  std::shared_ptr<Conn> conn_;
  std::vector<std::string> waiting_;  // frames to send once Hello is answered
  std::function<void(absl::Status)> on_handshake_;

  std::thread thread_;
  std::thread::id thread_id_;
};

ClientImpl::ClientImpl(std::string socket_path, const ClientOptions& options)
    : path_(std::move(socket_path)), options_(options) {
  work_.emplace(asio::make_work_guard(io_));
  thread_ = std::thread([this] {
    try {
      io_.run();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ipc: fatal: exception on the client's I/O thread: %s\n", e.what());
      std::abort();
    }
  });
  thread_id_ = thread_.get_id();
}

ClientImpl::~ClientImpl() {
  if (std::this_thread::get_id() == thread_id_) {
    Fatal("a Client was destroyed from one of its own callbacks");
  }
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;
  }
  const absl::Status closed = absl::UnavailableError("the client is closed");
  asio::post(io_, [this, closed] {
    waiting_.clear();
    if (conn_ != nullptr) Break(conn_, closed);
    FailAll(closed);
  });
  work_.reset();
  thread_.join();
  FailAll(closed);  // anything submitted while the I/O thread was finishing
  conn_.reset();
}

absl::Status ClientImpl::Handshake() {
  std::promise<absl::Status> done;
  std::future<absl::Status> result = done.get_future();
  asio::post(io_, [this, &done] {
    on_handshake_ = [&done](absl::Status status) { done.set_value(std::move(status)); };
    EnsureConnection();
  });
  return result.get();
}

uint64_t ClientImpl::Submit(v1::Request request, absl::Duration deadline, ResponseCallback on_done,
                            PartialCallback on_partial) {
  const uint64_t id = next_id_.fetch_add(1);
  request.set_request_id(id);
  std::optional<Clock::time_point> deadline_at;
  if (deadline < kNoDeadline) {
    deadline_at = Clock::now() + ToClock(std::max(deadline, absl::ZeroDuration()));
    if (request.deadline_ms() == 0 && deadline > absl::ZeroDuration()) {
      const double ms = std::ceil(absl::ToDoubleMilliseconds(deadline));
      request.set_deadline_ms(static_cast<uint32_t>(
          std::min(ms, static_cast<double>(std::numeric_limits<uint32_t>::max()))));
    }
  }
  const std::string payload = request.SerializeAsString();
  absl::Status refused;
  if (deadline <= absl::ZeroDuration()) {
    refused = absl::DeadlineExceededError("the deadline passed before the request was sent");
  } else if (payload.empty() || payload.size() > kMaxFramePayload) {
    refused = absl::InvalidArgumentError(absl::StrCat("a request of ", payload.size(),
                                                      " bytes does not fit in one frame (1..",
                                                      kMaxFramePayload, " bytes)"));
  }

  auto call = std::make_shared<CallState>();
  call->on_done = std::move(on_done);
  call->on_partial = std::move(on_partial);
  bool closing;
  {
    absl::MutexLock lock(&mu_);
    closing = closing_;
    if (!closing && refused.ok()) pending_.emplace(id, call);
  }
  if (closing) {
    call->on_done(absl::UnavailableError("the client is closed"));
  } else if (!refused.ok()) {
    asio::post(io_, [call, refused] { call->on_done(refused); });
  } else {
    asio::post(io_, [this, id, frame = EncodeFrame(payload), deadline_at]() mutable {
      StartCall(id, std::move(frame), deadline_at);
    });
  }
  return id;
}

std::shared_ptr<CallState> ClientImpl::TakeCall(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(id);
  if (it == pending_.end()) return nullptr;
  std::shared_ptr<CallState> call = std::move(it->second);
  pending_.erase(it);
  return call;
}

absl::StatusOr<v1::Response> ClientImpl::Call(v1::Request request, absl::Duration deadline,
                                              PartialCallback on_partial) {
  if (std::this_thread::get_id() == thread_id_) {
    return absl::FailedPreconditionError(
        "Client::Call on the client's I/O thread (inside a callback) would deadlock; use "
        "CallAsync");
  }
  struct Waiter {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    std::optional<absl::StatusOr<v1::Response>> result ABSL_GUARDED_BY(mu);
  };
  auto waiter = std::make_shared<Waiter>();
  const uint64_t id = Submit(
      std::move(request), deadline,
      [waiter](absl::StatusOr<v1::Response> response) {
        absl::MutexLock lock(&waiter->mu);
        waiter->result = std::move(response);
        waiter->done = true;
      },
      std::move(on_partial));

  {
    absl::MutexLock lock(&waiter->mu);
    if (deadline >= kNoDeadline) {
      waiter->mu.Await(absl::Condition(&waiter->done));
    } else {
      waiter->mu.AwaitWithTimeout(absl::Condition(&waiter->done), deadline);
    }
    if (waiter->done) return std::move(*waiter->result);
  }
  if (std::shared_ptr<CallState> call = TakeCall(id)) {
    // Waits for a partial callback that is running, and stops later ones.
    absl::MutexLock lock(&call->callback_mu);
    call->cancelled = true;
    return absl::DeadlineExceededError(
        absl::StrCat("no response from ", path_, " within ", absl::FormatDuration(deadline)));
  }
  // The final response or a failure is being delivered right now.
  absl::MutexLock lock(&waiter->mu);
  waiter->mu.Await(absl::Condition(&waiter->done));
  return std::move(*waiter->result);
}

void ClientImpl::StartCall(uint64_t id, std::string frame,
                           std::optional<Clock::time_point> deadline) {
  std::shared_ptr<CallState> call;
  bool closing;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;  // already failed or given up
    call = it->second;
    closing = closing_;
  }
  if (closing) {
    FailCall(id, absl::UnavailableError("the client is closed"));
    return;
  }
  if (deadline.has_value()) {
    call->timer = std::make_shared<asio::steady_timer>(io_, *deadline);
    call->timer->async_wait([this, id, timer = call->timer](const ErrorCode& ec) {
      if (!ec) {
        FailCall(id, absl::DeadlineExceededError(absl::StrCat(
                         "no response from ", path_, " within the deadline (request ", id, ")")));
      }
    });
  }
  if (conn_ != nullptr && conn_->ready) {
    Write(conn_, std::move(frame));
  } else {
    waiting_.push_back(std::move(frame));
    EnsureConnection();
  }
}

void ClientImpl::FailCall(uint64_t id, const absl::Status& status) {
  std::shared_ptr<CallState> call = TakeCall(id);
  if (call == nullptr) return;
  if (call->timer != nullptr) call->timer->cancel();
  call->on_done(status);
}

void ClientImpl::FailAll(const absl::Status& status) {
  std::map<uint64_t, std::shared_ptr<CallState>> calls;
  {
    absl::MutexLock lock(&mu_);
    calls.swap(pending_);
  }
  for (auto& [id, call] : calls) {
    if (call->timer != nullptr) call->timer->cancel();
    call->on_done(status);
  }
}

void ClientImpl::EnsureConnection() {
  if (conn_ != nullptr) return;
  auto conn = std::make_shared<Conn>(io_);
  conn_ = conn;
  conn->handshake_timer.expires_after(ToClock(options_.connect_timeout));
  conn->handshake_timer.async_wait([this, conn](const ErrorCode& ec) {
    if (ec || conn_ != conn || conn->ready) return;
    Break(conn,
          absl::UnavailableError(absl::StrCat("no answer to Hello from ", path_, " within ",
                                              absl::FormatDuration(options_.connect_timeout))));
  });
  conn->socket.async_connect(stream_protocol::endpoint(path_),
                             [this, conn](const ErrorCode& ec) { OnConnected(conn, ec); });
}

void ClientImpl::OnConnected(const std::shared_ptr<Conn>& conn, const ErrorCode& ec) {
  if (conn_ != conn) return;
  if (ec) {
    Break(conn,
          absl::UnavailableError(absl::StrCat("cannot connect to ", path_, ": ", ec.message())));
    return;
  }
  v1::Request hello;
  conn->hello_id = next_id_.fetch_add(1);
  hello.set_request_id(conn->hello_id);
  hello.mutable_hello()->set_protocol_version(kProtocolVersion);
  hello.mutable_hello()->set_client_name(options_.client_name);
  Write(conn, EncodeFrame(hello.SerializeAsString()));
  ReadHeader(conn);
}

void ClientImpl::OnHelloReply(const std::shared_ptr<Conn>& conn, const v1::Response& response) {
  conn->handshake_timer.cancel();
  if (response.has_hello()) {
    conn->ready = true;
    for (std::string& frame : waiting_) Write(conn, std::move(frame));
    waiting_.clear();
    if (on_handshake_) {
      hello_ = response.hello();
      std::function<void(absl::Status)> notify = std::move(on_handshake_);
      on_handshake_ = nullptr;
      notify(absl::OkStatus());
    }
    return;
  }
  Break(conn, response.has_error()
                  ? ErrorToStatus(response.error())
                  : absl::UnavailableError(absl::StrCat(
                        path_, " answered Hello with something other than a HelloReply")));
}

void ClientImpl::ReadHeader(const std::shared_ptr<Conn>& conn) {
  asio::async_read(
      conn->socket, asio::buffer(conn->header), [this, conn](const ErrorCode& ec, size_t) {
        if (conn_ != conn) return;
        if (ec) {
          Break(conn, absl::UnavailableError(
                          ec == asio::error::eof
                              ? absl::StrCat(path_, " closed the connection")
                              : absl::StrCat("reading from ", path_, " failed: ", ec.message())));
          return;
        }
        const absl::StatusOr<uint32_t> size = DecodeFrameHeader(conn->header);
        if (!size.ok()) {
          Break(conn, absl::UnavailableError(absl::StrCat("malformed frame from ", path_, ": ",
                                                          size.status().message())));
          return;
        }
        conn->payload.resize(*size);
        ReadPayload(conn);
      });
}

void ClientImpl::ReadPayload(const std::shared_ptr<Conn>& conn) {
  asio::async_read(
      conn->socket, asio::buffer(conn->payload), [this, conn](const ErrorCode& ec, size_t) {
        if (conn_ != conn) return;
        if (ec) {
          Break(conn, absl::UnavailableError(
                          absl::StrCat("reading from ", path_, " failed: ", ec.message())));
          return;
        }
        v1::Response response;
        if (!response.ParseFromString(conn->payload)) {
          Break(conn, absl::UnavailableError(absl::StrCat("malformed response from ", path_)));
          return;
        }
        Dispatch(conn, std::move(response));
        if (conn_ == conn) ReadHeader(conn);
      });
}

void ClientImpl::Dispatch(const std::shared_ptr<Conn>& conn, v1::Response response) {
  if (!conn->ready) {
    // A connection refused at once (over a connection limit) is answered
    // with an error for request 0 before the server closes it.
    if (response.request_id() == 0 && response.has_error()) {
      Break(conn, ErrorToStatus(response.error()));
      return;
    }
    if (response.request_id() != conn->hello_id) {
      Break(conn,
            absl::UnavailableError(absl::StrCat(path_, " sent a response before answering Hello")));
      return;
    }
    OnHelloReply(conn, response);
    return;
  }
  const bool final = !response.more();
  std::shared_ptr<CallState> call;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(response.request_id());
    if (it == pending_.end()) return;  // its caller gave up: dropped
    call = it->second;
    if (final) pending_.erase(it);
  }
  if (!final) {
    absl::MutexLock lock(&call->callback_mu);
    if (!call->cancelled && call->on_partial) call->on_partial(response);
    return;
  }
  if (call->timer != nullptr) call->timer->cancel();
  call->on_done(std::move(response));
}

void ClientImpl::Write(const std::shared_ptr<Conn>& conn, std::string frame) {
  conn->outbox.push_back(std::move(frame));
  if (conn->writing.empty()) WriteNext(conn);
}

void ClientImpl::WriteNext(const std::shared_ptr<Conn>& conn) {
  while (!conn->outbox.empty() && conn->writing.size() < kMaxFramesPerWrite) {
    conn->writing.push_back(std::move(conn->outbox.front()));
    conn->outbox.pop_front();
  }
  if (conn->writing.empty()) return;
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(conn->writing.size());
  for (const std::string& frame : conn->writing) buffers.push_back(asio::buffer(frame));
  asio::async_write(conn->socket, buffers, [this, conn](const ErrorCode& ec, size_t) {
    conn->writing.clear();
    if (conn_ != conn) return;
    if (ec) {
      // Before Hello is answered, a server that refuses the connection (over
      // a limit) has already sent why and closed: the read side delivers that
      // answer, then the close (or the handshake timer ends the wait).
      if (!conn->ready) return;
      Break(conn,
            absl::UnavailableError(absl::StrCat("writing to ", path_, " failed: ", ec.message())));
      return;
    }
    WriteNext(conn);
  });
}

// `conn` by value: the caller's reference may be conn_ itself.
void ClientImpl::Break(std::shared_ptr<Conn> conn, const absl::Status& status) {
  if (conn_ != conn) return;
  conn_.reset();
  ErrorCode ignored;
  conn->socket.close(ignored);
  conn->handshake_timer.cancel();
  waiting_.clear();
  FailAll(status);
  if (on_handshake_) {
    std::function<void(absl::Status)> notify = std::move(on_handshake_);
    on_handshake_ = nullptr;
    notify(status);
  }
}

}  // namespace

absl::Status ErrorToStatus(const v1::Error& error) {
  const std::string& message = error.message();
  absl::Status status;
  switch (error.code()) {
    case v1::Error::INVALID_ARGUMENT:
      status = absl::InvalidArgumentError(message);
      break;
    case v1::Error::UNAUTHENTICATED:
      status = absl::UnauthenticatedError(message);
      break;
    case v1::Error::PERMISSION_DENIED:
      status = absl::PermissionDeniedError(message);
      break;
    case v1::Error::NOT_FOUND:
      status = absl::NotFoundError(message);
      break;
    case v1::Error::REVOKED:
      status = absl::FailedPreconditionError(absl::StrCat("REVOKED: ", message));
      break;
    case v1::Error::REAUTH_REQUIRED:
      status = absl::FailedPreconditionError(absl::StrCat("REAUTH_REQUIRED: ", message));
      break;
    case v1::Error::UNAVAILABLE:
      status = absl::UnavailableError(message);
      break;
    case v1::Error::DEADLINE_EXCEEDED:
      status = absl::DeadlineExceededError(message);
      break;
    case v1::Error::RESOURCE_EXHAUSTED:
      status = absl::ResourceExhaustedError(message);
      break;
    case v1::Error::INTERNAL:
      status = absl::InternalError(message);
      break;
    case v1::Error::FAILED_PRECONDITION:
      status = absl::FailedPreconditionError(message);
      break;
    case v1::Error::ALREADY_EXISTS:
      status = absl::AlreadyExistsError(message);
      break;
    case v1::Error::CANCELLED:
      status = absl::CancelledError(message);
      break;
    default:
      status = absl::UnknownError(message);
      break;
  }
  std::string name = v1::Error::Code_Name(error.code());
  if (name.empty()) name = absl::StrCat(static_cast<int>(error.code()));
  status.SetPayload("grantvault.error_code", absl::Cord(name));
  if (error.retry_after_ms() != 0) {
    status.SetPayload("grantvault.retry_after_ms",
                      absl::Cord(absl::StrCat(error.retry_after_ms())));
  }
  if (error.upstream_status() != 0) {
    status.SetPayload("grantvault.upstream_status",
                      absl::Cord(absl::StrCat(error.upstream_status())));
  }
  return status;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path,
                                                        const ClientOptions& options) {
  if (socket_path.empty() || socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path \"", socket_path, "\" must be 1..",
                                                   sizeof(sockaddr_un{}.sun_path) - 1,
                                                   " bytes long"));
  }
  if (options.connect_timeout <= absl::ZeroDuration() ||
      options.default_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout and default_deadline must be positive");
  }
  if (options.client_name.size() > kMaxClientName) {
    return absl::InvalidArgumentError(
        absl::StrCat("client_name is longer than ", kMaxClientName, " bytes"));
  }
  auto client = std::make_unique<ClientImpl>(socket_path, options);
  const absl::Status status = client->Handshake();
  if (!status.ok()) return status;
  return std::unique_ptr<Client>(std::move(client));
}

void SubscribeGrantEvents(Client& client, const std::string& workspace_id,
                          std::function<void(const v1::GrantEvent&)> on_event,
                          std::function<void(absl::Status)> on_end) {
  v1::Request request;
  request.mutable_subscribe()->set_workspace_id(workspace_id);
  client.CallAsync(
      std::move(request), absl::InfiniteDuration(),
      [on_end = std::move(on_end)](absl::StatusOr<v1::Response> last) {
        if (!last.ok()) return on_end(last.status());
        if (last->has_error()) return on_end(ErrorToStatus(last->error()));
        on_end(absl::OkStatus());
      },
      [on_event = std::move(on_event)](const v1::Response& partial) {
        if (partial.has_grant_event()) on_event(partial.grant_event());
      });
}

absl::StatusOr<uint64_t> ProxyCall(Client& client, v1::ProxyRequest call, absl::Duration deadline,
                                   std::function<void(const v1::ProxyResponseHead&)> on_head,
                                   std::function<void(std::string_view)> on_body) {
  v1::Request request;
  *request.mutable_proxy() = std::move(call);
  GV_ASSIGN_OR_RETURN(v1::Response last,
                      client.Call(std::move(request), deadline,
                                  [on_head = std::move(on_head),
                                   on_body = std::move(on_body)](const v1::Response& partial) {
                                    if (partial.has_proxy_head() && on_head)
                                      on_head(partial.proxy_head());
                                    if (partial.has_proxy_body() && on_body)
                                      on_body(partial.proxy_body().data());
                                  }));
  if (last.has_error()) return ErrorToStatus(last.error());
  if (!last.has_proxy_end()) {
    return absl::InternalError("the daemon ended a proxied call without its end");
  }
  return last.proxy_end().body_bytes();
}

}  // namespace grantvault::ipc
