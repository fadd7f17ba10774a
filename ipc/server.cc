#include "ipc/server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/secret_bytes.h"
#include "common/strings.h"
#include "common/thread_name.h"
#include "common/unique_fd.h"
#include "ipc/asio.h"
#include "ipc/frame.h"

namespace grantvault::ipc {
namespace {

namespace asio = boost::asio;
using stream_protocol = asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;
// Every socket, acceptor and timer names its io_context's executor type
// rather than any_io_executor: no type erasure on the completion path.
using IoExecutor = asio::io_context::executor_type;
using Socket = asio::basic_stream_socket<stream_protocol, IoExecutor>;
using Acceptor = asio::basic_socket_acceptor<stream_protocol, IoExecutor>;
using Timer = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, IoExecutor>;

constexpr size_t kMaxIoThreads = 256;
// Responses written by one gather write at most: two buffers each (header,
// payload), and Asio hands at most 64 buffers to one writev.
constexpr size_t kMaxFramesPerWrite = 32;
// A read asks for at least this much, so that pipelined small frames arrive together.
constexpr size_t kReadChunk = 4096;
// An emptied input buffer larger than this is released.
constexpr size_t kKeepInputCapacity = 16 * 1024;
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);

// The module's one log sink (SetLogSink): one line per call, stderr by
// default. Messages name connections, peers and reasons; a payload is never
// logged.
std::mutex& LogMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
std::function<void(LogKind, std::string_view)>& LogSinkRef() {
  static auto* sink = new std::function<void(LogKind, std::string_view)>();
  return *sink;
}

void Log(std::string_view message, LogKind kind = LogKind::kNotable) {
  const std::string line = absl::StrCat("ipc: ", Sv(message));
  std::lock_guard<std::mutex> lock(LogMutex());
  if (LogSinkRef()) {
    LogSinkRef()(kind, line);
  } else {
    const std::string with_newline = line + "\n";
    std::fwrite(with_newline.data(), 1, with_newline.size(), stderr);
  }
}

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

std::string ToString(absl::string_view s) { return std::string(s.data(), s.size()); }

void SetCloseOnExec(int fd) {
  const int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

enum class CloseKind { kPeer, kBadFrame, kTimeout, kOverflow, kHandler, kShutdown, kError };

class ServerCore;

// A listener lives on one io_context; that io_context's one thread runs its
// accept loop and its stop, which serialises them.
struct ListenerState {
  ListenerState(asio::io_context& io, std::string listener_name, FrameHandler* frame_handler,
                const ListenerLimits& listener_limits)
      : name(std::move(listener_name)),
        handler(frame_handler),
        limits(listener_limits),
        executor(io.get_executor()),
        acceptor(io),
        retry_timer(io) {}

  const std::string name;
  FrameHandler* const handler;
  const ListenerLimits limits;
  const IoExecutor executor;
  Acceptor acceptor;
  Timer retry_timer;  // after a failed accept (e.g. EMFILE)
  // Guarded by ServerCore::mu: this listener's open connections, in all and
  // per peer uid (uids with none are erased).
  size_t open = 0;
  std::map<uid_t, size_t> open_by_uid;
};

// One io_context per I/O thread, each run by exactly that thread: concurrency
// hint 1 (Asio then queues work posted from its own thread without locking;
// posts from other threads still lock).
std::vector<std::unique_ptr<asio::io_context>> MakeIoContexts(size_t count) {
  std::vector<std::unique_ptr<asio::io_context>> ios;
  ios.reserve(count);
  for (size_t i = 0; i < count; ++i) ios.push_back(std::make_unique<asio::io_context>(1));
  return ios;
}

class ConnectionImpl;

// What the server and its connections share. Connections hold it by
// shared_ptr, so the io_contexts outlive every socket and timer even when a
// handler keeps a Connection after the Server is gone: the core can only be
// destroyed once no connection, and no pending handler (they hold the core or
// a connection), is left; then the listeners go, and the io_contexts last.
class ServerCore : public std::enable_shared_from_this<ServerCore> {
 public:
  ServerCore(const ServerLimits& server_limits, size_t io_count)
      : ios(MakeIoContexts(io_count)), limits(server_limits), io_load(io_count, 0) {}

  // Starts one accept; its connection will live on the io_context with the
  // fewest connections at this moment (ties rotate).
  void DoAccept(ListenerState& listener);
  void OnConnectionClosed(const ConnectionImpl& connection, CloseKind kind,
                          std::string_view reason);
  // Snapshot of the open connections.
  std::vector<std::shared_ptr<ConnectionImpl>> Connections() ABSL_LOCKS_EXCLUDED(mu);
  bool AllQuiet() ABSL_LOCKS_EXCLUDED(mu);

  // Declared first: destroyed last. Each is run by one I/O thread.
  const std::vector<std::unique_ptr<asio::io_context>> ios;
  const ServerLimits limits;
  std::vector<std::unique_ptr<ListenerState>> listeners;

  // Set when Shutdown begins: frames not yet handed out stay unread.
  std::atomic<bool> draining{false};

  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> refused_over_limit{0};
  std::atomic<uint64_t> refused_over_uid_limit{0};
  std::atomic<uint64_t> frames{0};
  std::atomic<uint64_t> closed_bad_frame{0};
  std::atomic<uint64_t> closed_timeout{0};

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;  // no new connection is admitted
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  std::map<uint64_t, std::shared_ptr<ConnectionImpl>> connections ABSL_GUARDED_BY(mu);
  std::vector<size_t> io_load ABSL_GUARDED_BY(mu);  // open connections per io_context
  size_t next_io ABSL_GUARDED_BY(mu) = 0;           // where the search for the least loaded starts

 private:
  size_t PickIo() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void OnAccept(ListenerState& listener, size_t io_index, const ErrorCode& ec, Socket socket);
  // Why `listener` cannot take one more connection from `peer`; empty when it can.
  std::string OverLimit(const ListenerState& listener, const PeerCredentials& peer,
                        bool* per_uid) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Sends the handler's refusal frame, if any, without blocking, and closes.
  static void Refuse(ListenerState& listener, const PeerCredentials& peer, Socket& socket,
                     std::string_view reason);
};

// A response frame: the header apart, so that the handler's payload string is
// written as it is, without copying it into a new one. The first `sent` bytes
// (header first) are written already. A payload may carry a token: it is
// wiped when the frame dies, written or dropped.
struct OutFrame {
  OutFrame(std::array<uint8_t, kFrameHeaderSize> frame_header, std::string frame_payload)
      : header(frame_header), payload(std::move(frame_payload)) {}
  OutFrame(OutFrame&& other) noexcept = default;
  OutFrame& operator=(OutFrame&& other) noexcept {
    if (this != &other) {
      Wipe();
      header = other.header;
      payload = std::move(other.payload);
      sent = other.sent;
    }
    return *this;
  }
  ~OutFrame() { Wipe(); }

  size_t size() const { return kFrameHeaderSize + payload.size(); }
  size_t unsent() const { return size() - sent; }
  // The buffers of what is not written yet: two, or one once the header is out.
  std::span<const asio::const_buffer> Unsent(std::array<asio::const_buffer, 2>& out) const {
    if (sent < kFrameHeaderSize) {
      out = {asio::buffer(header.data() + sent, kFrameHeaderSize - sent), asio::buffer(payload)};
      return {out.data(), 2};
    }
    out[0] = asio::buffer(payload.data() + (sent - kFrameHeaderSize), unsent());
    return {out.data(), 1};
  }

  std::array<uint8_t, kFrameHeaderSize> header;
  std::string payload;
  size_t sent = 0;

 private:
  // The whole buffer, not just size(): a moved-from short string keeps its
  // bytes in its inline buffer.
  void Wipe() { WipeMemory(payload.data(), payload.capacity()); }
};

// Lives on one io_context (`io_index` in the core), whose one thread runs all
// of its handlers: that thread, not a strand, serialises the connection.
class ConnectionImpl final : public Connection,
                             public std::enable_shared_from_this<ConnectionImpl> {
 public:
  ConnectionImpl(std::shared_ptr<ServerCore> core, ListenerState& listener, uint64_t id,
                 size_t io_index, Socket socket, const PeerCredentials& peer)
      : core_(std::move(core)),
        handler_(listener.handler),
        listener_state_(&listener),
        idle_timeout_(listener.limits.idle_timeout),
        listener_(listener.name),
        id_(id),
        io_index_(io_index),
        peer_(peer),
        executor_(core_->ios[io_index_]->get_executor()),
        socket_(std::move(socket)),
        read_timer_(*core_->ios[io_index_]),
        write_timer_(*core_->ios[io_index_]) {}

  uint64_t id() const override { return id_; }
  size_t io_index() const { return io_index_; }
  ListenerState& listener_state() const { return *listener_state_; }
  const PeerCredentials& peer() const override { return peer_; }
  const std::string& listener() const override { return listener_; }
  bool Send(std::string payload, bool final) override {
    return Queue(std::span<std::string>(&payload, 1), final, std::nullopt) == SendOutcome::kSent;
  }
  SendOutcome SendAllWithin(std::span<std::string> payloads, size_t max_queued,
                            bool final) override {
    return Queue(payloads, final, max_queued);
  }
  ~ConnectionImpl() override { ReleaseInput(); }
  void Close(std::string_view reason) override {
    CloseWith(CloseKind::kHandler, reason, /*flush=*/true);
  }
  bool closed() const override {
    absl::MutexLock lock(&mu_);
    return closed_;
  }

  boost::asio::any_io_executor executor() const override { return executor_; }
  void set_context(std::shared_ptr<void> context) override { context_ = std::move(context); }
  const std::shared_ptr<void>& context() const override { return context_; }

  // Delivers OnConnect and starts reading, on the connection's thread.
  void Start() {
    asio::post(executor_, [self = shared_from_this()] { self->OnStart(); });
  }
  // Marks the connection closed (Send and Close do nothing from now on) and
  // tears it down on its thread, where the close is logged once. With `flush`,
  // frames already queued are written first (within write_timeout); a later
  // close without `flush` cuts that short.
  void CloseWith(CloseKind kind, std::string_view reason, bool flush = false)
      ABSL_LOCKS_EXCLUDED(mu_);
  // True when closed, or when every frame handed out has been answered and
  // every answer written.
  bool Quiet() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (closed_) return !flushing_;
    return in_flight_ == 0 && queued_bytes_ == 0;
  }

 private:
  enum class ReadDeadlineKind { kNone, kFrame, kIdle };

  // Send and SendAllWithin (`within`: the SendAllWithin limit).
  SendOutcome Queue(std::span<std::string> payloads, bool final, std::optional<size_t> within);

  // All of these run on the connection's thread (executor_).
  void OnStart();
  void ProcessInput();
  void Resume();
  void UpdateReadDeadline();
  void ArmReadTimer();
  void OnReadTimer();
  void ReadMore();
  void OnRead(const ErrorCode& ec, size_t n);
  size_t Buffered() const { return in_end_ - in_begin_; }
  void ReserveInput(size_t want);
  void ReleaseInput();
  void WriteNow(std::vector<OutFrame> frames);
  // The outbox is empty: the write chain ends; true when that completes a
  // flushing close (the caller then tears down).
  bool EndWriteChainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartWrite();
  void OnWrite(const ErrorCode& ec);
  void ArmWriteTimer();
  void OnWriteTimer();
  void Teardown();

  const std::shared_ptr<ServerCore> core_;  // declared first: the io_contexts outlive the rest
  FrameHandler* const handler_;
  ListenerState* const listener_state_;  // the core's, which outlives it
  const absl::Duration idle_timeout_;    // the listener's
  const std::string listener_;
  const uint64_t id_;
  const size_t io_index_;
  const PeerCredentials peer_;
  const IoExecutor executor_;
  Socket socket_;
  Timer read_timer_;
  Timer write_timer_;

  std::shared_ptr<void> context_;  // set once, in OnConnect (see Connection::set_context)

  // Touched on the connection's thread only.
  // Received and not yet handed out: in_[in_begin_, in_end_); a read fills
  // in_[in_end_, in_capacity_). Never zero-filled: nothing past in_end_ is
  // read. Frames may carry secrets, so every byte is wiped once handed out,
  // moved away or released.
  std::unique_ptr<char[]> in_;
  size_t in_capacity_ = 0;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  bool reading_ = false;
  bool frame_started_ = false;  // input_ holds part of a frame
  Clock::time_point frame_start_;
  Clock::time_point read_deadline_ = Clock::time_point::max();
  ReadDeadlineKind read_deadline_kind_ = ReadDeadlineKind::kNone;
  bool read_timer_waiting_ = false;
  Clock::time_point write_deadline_ = Clock::time_point::max();
  bool write_timer_waiting_ = false;
  std::vector<OutFrame> writing_;                  // frames of the write in progress
  std::vector<asio::const_buffer> write_buffers_;  // writing_'s header and payload buffers
  bool connect_delivered_ = false;
  bool torn_down_ = false;

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool flushing_ ABSL_GUARDED_BY(mu_) = false;  // closed, still writing what was queued
  CloseKind close_kind_ ABSL_GUARDED_BY(mu_) = CloseKind::kPeer;
  std::string close_reason_ ABSL_GUARDED_BY(mu_);
  std::deque<OutFrame> outbox_ ABSL_GUARDED_BY(mu_);  // frames not yet written
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;      // outbox_ and the write in progress
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;         // frames handed out, not answered
  bool write_active_ ABSL_GUARDED_BY(mu_) = false;    // a StartWrite chain is running
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;     // back-pressure
};

// --- ConnectionImpl ----------------------------------------------------------

Connection::SendOutcome ConnectionImpl::Queue(std::span<std::string> payloads, bool final,
                                              std::optional<size_t> within) {
  const auto drop_all = [&payloads] {
    for (std::string& p : payloads) WipeMemory(p.data(), p.capacity());  // as every frame
  };
  size_t total = 0;
  for (const std::string& payload : payloads) {
    const size_t size = payload.size();
    if (size == 0 || size > kMaxFramePayload) {
      drop_all();
      if (!closed()) {
        CloseWith(CloseKind::kError, absl::StrCat("handler sent a frame of ", size,
                                                  " bytes (allowed 1..", kMaxFramePayload, ")"));
      }
      return SendOutcome::kClosed;
    }
    total += kFrameHeaderSize + size;
  }
  if (payloads.empty()) return SendOutcome::kSent;
  const size_t cap = core_->limits.max_queued_bytes_per_connection;
  // A handler answering inline, on the connection's own thread, with nothing
  // queued before it: written at once, no round trip through the io_context.
  const bool own_thread = executor_.running_in_this_thread();
  bool write_now = false;
  bool start_write = false;
  bool resume = false;
  size_t queued = 0;
  std::vector<OutFrame> frames;  // to write at once
  {
    absl::MutexLock lock(&mu_);
    if (closed_) {
      drop_all();
      return SendOutcome::kClosed;
    }
    queued = queued_bytes_ + total;
    // SendAllWithin: held back (handed back untouched) when it would not fit
    // beside what is queued, in the same step as the queueing; frames alone
    // always fit, or nothing could ever be sent.
    if (within && queued_bytes_ > 0 && queued > std::min(*within, cap)) return SendOutcome::kFull;
    if (queued <= cap) {
      queued_bytes_ = queued;
      if (!write_active_) {
        write_active_ = true;
        write_now = own_thread;
        start_write = !own_thread;
      }
      for (std::string& payload : payloads) {
        const auto header = EncodeFrameHeader(payload.size());  // before the move
        OutFrame frame(header, std::move(payload));
        if (write_now) {
          frames.push_back(std::move(frame));
        } else {
          outbox_.push_back(std::move(frame));
        }
      }
      if (final && in_flight_ > 0) {
        --in_flight_;
        if (read_paused_) {
          read_paused_ = false;
          resume = true;
        }
      }
    }
  }
  if (queued > cap) {
    drop_all();
    CloseWith(CloseKind::kOverflow,
              absl::StrCat("peer is not reading: ", queued,
                           " bytes of responses queued, over the cap of ", cap));
    return SendOutcome::kClosed;
  }
  if (write_now) {
    WriteNow(std::move(frames));
  } else if (start_write) {
    // From another thread: the write happens on the connection's thread.
    asio::post(executor_, [self = shared_from_this()] { self->StartWrite(); });
  }
  if (resume) asio::post(executor_, [self = shared_from_this()] { self->Resume(); });
  return SendOutcome::kSent;
}

void ConnectionImpl::CloseWith(CloseKind kind, std::string_view reason, bool flush) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) {
      if (!flushing_ || flush) return;
      // A failure or shutdown while flushing: give up on the rest.
      flushing_ = false;
      close_reason_ += absl::StrCat("; then ", Sv(reason));
    } else {
      closed_ = true;
      close_kind_ = kind;
      close_reason_ = std::string(reason);
      // queued_bytes_ > 0 means a write chain is running; it tears down once
      // the outbox is empty.
      flushing_ = flush && queued_bytes_ > 0;
      if (flushing_) return;
    }
    outbox_.clear();
    queued_bytes_ = 0;
  }
  asio::post(executor_, [self = shared_from_this()] { self->Teardown(); });
}

void ConnectionImpl::OnStart() {
  if (closed()) return;
  // Synchronous writes (WriteNow) must never block the I/O thread.
  ErrorCode ec;
  socket_.non_blocking(true, ec);
  if (ec) {
    CloseWith(CloseKind::kError,
              absl::StrCat("cannot make the socket non-blocking: ", ec.message()));
    return;
  }
  connect_delivered_ = true;
  handler_->OnConnect(shared_from_this());
  ProcessInput();
}

// Hands every complete frame in input_ to the handler (while the in-flight cap
// allows), then arms the read deadline and reads more.
void ConnectionImpl::ProcessInput() {
  if (closed() || reading_) return;
  const size_t max_in_flight = core_->limits.max_in_flight_per_connection;
  bool stop_reading = false;
  while (Buffered() >= kFrameHeaderSize) {
    std::array<uint8_t, kFrameHeaderSize> header;
    std::memcpy(header.data(), in_.get() + in_begin_, kFrameHeaderSize);
    const absl::StatusOr<uint32_t> length = DecodeFrameHeader(header);
    if (!length.ok()) {
      CloseWith(CloseKind::kBadFrame, ToString(length.status().message()));
      return;
    }
    if (Buffered() < kFrameHeaderSize + *length) break;
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return;
      if (core_->draining.load()) {
        stop_reading = true;
        break;
      }
      if (in_flight_ >= max_in_flight) {
        read_paused_ = true;
        stop_reading = true;
        break;
      }
      ++in_flight_;
    }
    // Handed out in place (OnFrame's view lives for the call), then wiped.
    char* const payload = in_.get() + in_begin_ + kFrameHeaderSize;
    in_begin_ += kFrameHeaderSize + *length;
    frame_started_ = false;
    core_->frames.fetch_add(1);
    handler_->OnFrame(shared_from_this(), std::string_view(payload, *length));
    WipeMemory(payload, *length);
  }
  if (Buffered() == 0) {
    in_begin_ = in_end_ = 0;
    if (in_capacity_ > kKeepInputCapacity) ReleaseInput();
  }
  if (core_->draining.load()) stop_reading = true;
  if (stop_reading) {
    // Whatever is buffered waits; its frame clock starts when reading resumes.
    frame_started_ = false;
    UpdateReadDeadline();
    return;
  }
  if (Buffered() > 0 && !frame_started_) {
    frame_started_ = true;
    frame_start_ = Clock::now();
  }
  UpdateReadDeadline();
  ReadMore();
}

void ConnectionImpl::Resume() {
  if (reading_) {
    UpdateReadDeadline();
  } else {
    ProcessInput();
  }
}

void ConnectionImpl::UpdateReadDeadline() {
  const absl::Duration idle = idle_timeout_;
  if (!frame_started_ && idle <= absl::ZeroDuration()) {
    // No frame under way and no idle limit: nothing to time, paused or not.
    read_deadline_ = Clock::time_point::max();
    read_deadline_kind_ = ReadDeadlineKind::kNone;
    return;
  }
  bool paused;
  bool busy;  // a request is being answered: the connection is not idle
  {
    absl::MutexLock lock(&mu_);
    paused = read_paused_;
    busy = in_flight_ > 0 || queued_bytes_ > 0;
  }
  if (paused || core_->draining.load()) {
    read_deadline_ = Clock::time_point::max();
    read_deadline_kind_ = ReadDeadlineKind::kNone;
  } else if (frame_started_) {
    read_deadline_ = frame_start_ + ToClock(core_->limits.frame_timeout);
    read_deadline_kind_ = ReadDeadlineKind::kFrame;
  } else if (idle > absl::ZeroDuration() && !busy) {
    read_deadline_ = Clock::now() + ToClock(idle);
    read_deadline_kind_ = ReadDeadlineKind::kIdle;
  } else {
    read_deadline_ = Clock::time_point::max();
    read_deadline_kind_ = ReadDeadlineKind::kNone;
  }
  ArmReadTimer();
}

// The timer only ever moves earlier here; when it fires before a deadline that
// was pushed back, OnReadTimer re-arms it for the new one.
void ConnectionImpl::ArmReadTimer() {
  if (read_deadline_ == Clock::time_point::max()) return;
  if (read_timer_waiting_) {
    if (read_deadline_ < read_timer_.expiry()) read_timer_.expires_at(read_deadline_);
    return;
  }
  read_timer_.expires_at(read_deadline_);
  read_timer_waiting_ = true;
  read_timer_.async_wait([self = shared_from_this()](const ErrorCode&) { self->OnReadTimer(); });
}

void ConnectionImpl::OnReadTimer() {
  read_timer_waiting_ = false;
  if (closed()) return;
  if (read_deadline_ != Clock::time_point::max() && read_deadline_ <= Clock::now()) {
    if (read_deadline_kind_ == ReadDeadlineKind::kFrame) {
      CloseWith(CloseKind::kTimeout, absl::StrCat("frame not completed within ",
                                                  absl::FormatDuration(core_->limits.frame_timeout),
                                                  " (", Buffered(), " bytes received)"));
    } else {
      CloseWith(CloseKind::kTimeout,
                absl::StrCat("idle for ", absl::FormatDuration(idle_timeout_)));
    }
    return;
  }
  ArmReadTimer();
}

void ConnectionImpl::ReadMore() {
  if (reading_) return;
  size_t want = kReadChunk;
  if (Buffered() >= kFrameHeaderSize) {
    // ProcessInput validated this header: the rest of the frame is wanted.
    const auto* h = reinterpret_cast<const uint8_t*>(in_.get() + in_begin_);
    const size_t length =
        (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | size_t{h[3]};
    want = std::max(want, kFrameHeaderSize + length - Buffered());
  }
  ReserveInput(want);
  reading_ = true;
  socket_.async_read_some(
      asio::buffer(in_.get() + in_end_, in_capacity_ - in_end_),
      [self = shared_from_this()](const ErrorCode& ec, size_t n) { self->OnRead(ec, n); });
}

// Room for at least `want` bytes after in_end_: the unconsumed bytes move to
// the front of the buffer, or to a larger one. At most one incomplete frame
// is buffered when this runs, so the buffer stays within one frame and a
// read chunk.
void ConnectionImpl::ReserveInput(size_t want) {
  if (in_capacity_ - in_end_ >= want) return;
  const size_t buffered = Buffered();
  if (in_capacity_ >= buffered + want) {
    std::memmove(in_.get(), in_.get() + in_begin_, buffered);
    WipeMemory(in_.get() + buffered, in_end_ - buffered);  // what the move left behind
  } else {
    const size_t capacity = std::max(kReadChunk, buffered + want);
    auto grown = std::make_unique_for_overwrite<char[]>(capacity);
    if (buffered > 0) std::memcpy(grown.get(), in_.get() + in_begin_, buffered);
    ReleaseInput();
    in_ = std::move(grown);
    in_capacity_ = capacity;
  }
  in_begin_ = 0;
  in_end_ = buffered;
}

void ConnectionImpl::ReleaseInput() {
  // All of it: a read that completed but was never handed out (a close in
  // between) left bytes past in_end_.
  if (in_ != nullptr) WipeMemory(in_.get(), in_capacity_);
  in_.reset();
  in_capacity_ = in_begin_ = in_end_ = 0;
}

void ConnectionImpl::OnRead(const ErrorCode& ec, size_t n) {
  reading_ = false;
  if (!ec) in_end_ += n;
  if (closed() || ec == asio::error::operation_aborted) return;
  if (ec == asio::error::eof || ec == asio::error::connection_reset) {
    if (Buffered() == 0) {
      CloseWith(CloseKind::kPeer, "peer closed the connection");
    } else {
      CloseWith(CloseKind::kPeer, absl::StrCat("peer closed the connection in the middle of a "
                                               "frame (",
                                               Buffered(), " bytes received)"));
    }
    return;
  }
  if (ec) {
    CloseWith(CloseKind::kError, absl::StrCat("read failed: ", ec.message()));
    return;
  }
  ProcessInput();
}

// On the connection's thread, with the write chain claimed (write_active_)
// and nothing queued before `frame`: one non-blocking send. What the socket
// does not take now, and whatever was queued meanwhile, goes the
// asynchronous way.
void ConnectionImpl::WriteNow(std::vector<OutFrame> frames) {
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(2 * frames.size());
  for (const OutFrame& frame : frames) {
    std::array<asio::const_buffer, 2> unsent;
    const std::span<const asio::const_buffer> parts = frame.Unsent(unsent);
    buffers.insert(buffers.end(), parts.begin(), parts.end());
  }
  ErrorCode ec;
  size_t n = socket_.write_some(buffers, ec);
  if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
    CloseWith(CloseKind::kError, absl::StrCat("write failed: ", ec.message()));
    return;
  }
  bool drained = false;
  bool more = false;
  bool teardown = false;
  {
    absl::MutexLock lock(&mu_);
    if (closed_ && !flushing_) return;
    queued_bytes_ -= n;
    // What was not written goes first in the outbox, in order.
    size_t left = n;
    auto first_unsent = frames.begin();
    for (; first_unsent != frames.end() && left >= first_unsent->unsent(); ++first_unsent) {
      left -= first_unsent->unsent();
    }
    if (first_unsent != frames.end()) first_unsent->sent += left;
    outbox_.insert(outbox_.begin(), std::make_move_iterator(first_unsent),
                   std::make_move_iterator(frames.end()));
    drained = queued_bytes_ == 0;
    more = !outbox_.empty();  // the rest, or what other threads queued meanwhile
    if (!more) teardown = EndWriteChainLocked();
  }
  if (teardown) {
    asio::post(executor_, [self = shared_from_this()] { self->Teardown(); });
    return;
  }
  if (drained && idle_timeout_ > absl::ZeroDuration()) UpdateReadDeadline();
  if (more) StartWrite();
}

bool ConnectionImpl::EndWriteChainLocked() {
  write_active_ = false;
  if (!flushing_) return false;
  flushing_ = false;  // everything queued before the close is written
  return true;
}

void ConnectionImpl::StartWrite() {
  {
    absl::MutexLock lock(&mu_);
    if ((closed_ && !flushing_) || outbox_.empty()) {
      if (EndWriteChainLocked()) {
        asio::post(executor_, [self = shared_from_this()] { self->Teardown(); });
      }
      return;
    }
    while (!outbox_.empty() && writing_.size() < kMaxFramesPerWrite) {
      writing_.push_back(std::move(outbox_.front()));
      outbox_.pop_front();
    }
  }
  write_buffers_.clear();
  for (const OutFrame& frame : writing_) {
    std::array<asio::const_buffer, 2> buffers;
    const std::span<const asio::const_buffer> unsent = frame.Unsent(buffers);
    write_buffers_.insert(write_buffers_.end(), unsent.begin(), unsent.end());
  }
  write_deadline_ = Clock::now() + ToClock(core_->limits.write_timeout);
  ArmWriteTimer();
  // async_write keeps a copy of the buffer sequence: a span, not the vector.
  asio::async_write(
      socket_, std::span<const asio::const_buffer>(write_buffers_),
      [self = shared_from_this()](const ErrorCode& ec, size_t) { self->OnWrite(ec); });
}

void ConnectionImpl::OnWrite(const ErrorCode& ec) {
  size_t written = 0;
  for (const OutFrame& frame : writing_) written += frame.unsent();
  writing_.clear();
  write_deadline_ = Clock::time_point::max();
  if (ec) {
    if (ec != asio::error::operation_aborted) {
      CloseWith(CloseKind::kError, absl::StrCat("write failed: ", ec.message()));
    }
    return;
  }
  bool drained;
  {
    absl::MutexLock lock(&mu_);
    if (closed_ && !flushing_) return;
    queued_bytes_ -= written;
    drained = queued_bytes_ == 0;
  }
  if (drained && idle_timeout_ > absl::ZeroDuration()) {
    UpdateReadDeadline();  // the idle clock starts once everything is written
  }
  StartWrite();
}

void ConnectionImpl::ArmWriteTimer() {
  if (write_timer_waiting_) {
    if (write_deadline_ < write_timer_.expiry()) write_timer_.expires_at(write_deadline_);
    return;
  }
  write_timer_.expires_at(write_deadline_);
  write_timer_waiting_ = true;
  write_timer_.async_wait([self = shared_from_this()](const ErrorCode&) { self->OnWriteTimer(); });
}

void ConnectionImpl::OnWriteTimer() {
  write_timer_waiting_ = false;
  if (write_deadline_ == Clock::time_point::max()) return;
  {
    absl::MutexLock lock(&mu_);
    if (closed_ && !flushing_) return;
  }
  if (write_deadline_ <= Clock::now()) {
    CloseWith(CloseKind::kTimeout, absl::StrCat("peer did not take a response within ",
                                                absl::FormatDuration(core_->limits.write_timeout)));
    return;
  }
  ArmWriteTimer();
}

void ConnectionImpl::Teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  ErrorCode ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
  ReleaseInput();  // the read, if one was pending, is aborted: nothing writes to it any more
  read_timer_.cancel();
  write_timer_.cancel();
  CloseKind kind;
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    kind = close_kind_;
    reason = close_reason_;
  }
  core_->OnConnectionClosed(*this, kind, reason);
  if (connect_delivered_) handler_->OnDisconnect(*this);
}

// --- ServerCore --------------------------------------------------------------

size_t ServerCore::PickIo() {
  size_t best = next_io;
  for (size_t k = 1; k < ios.size(); ++k) {
    const size_t i = (next_io + k) % ios.size();
    if (io_load[i] < io_load[best]) best = i;
  }
  next_io = (best + 1) % ios.size();
  return best;
}

// The accepted socket is created on the chosen io_context directly.
void ServerCore::DoAccept(ListenerState& listener) {
  size_t io_index;
  {
    absl::MutexLock lock(&mu);
    io_index = PickIo();
  }
  listener.acceptor.async_accept(*ios[io_index], [self = shared_from_this(), &listener, io_index](
                                                     const ErrorCode& ec, Socket socket) {
    self->OnAccept(listener, io_index, ec, std::move(socket));
  });
}

void ServerCore::OnAccept(ListenerState& listener, size_t io_index, const ErrorCode& ec,
                          Socket socket) {
  ErrorCode ignored;
  {
    absl::MutexLock lock(&mu);
    if (stopping) {
      socket.close(ignored);
      return;
    }
  }
  if (ec == asio::error::operation_aborted) return;
  if (ec) {
    Log(absl::StrCat("accept failed on ", listener.name, ": ", ec.message(), "; retrying"));
    listener.retry_timer.expires_after(kAcceptRetryDelay);
    listener.retry_timer.async_wait(
        [self = shared_from_this(), &listener](const ErrorCode& wait_ec) {
          if (!wait_ec) self->DoAccept(listener);
        });
    return;
  }
  accepted.fetch_add(1);
  const int fd = socket.native_handle();
  SetCloseOnExec(fd);
  PeerCredentials peer;
  struct ucred cred = {};
  socklen_t cred_len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0) {
    Log(absl::StrCat("closed a new connection on ", listener.name,
                     ": SO_PEERCRED failed: ", std::strerror(errno)));
    socket.close(ignored);
    DoAccept(listener);
    return;
  }
  peer.pid = cred.pid;
  peer.uid = cred.uid;
  peer.gid = cred.gid;

  std::string refusal;
  bool per_uid = false;
  {
    absl::MutexLock lock(&mu);
    if (stopping) {
      socket.close(ignored);
      return;
    }
    refusal = OverLimit(listener, peer, &per_uid);
    if (refusal.empty()) {
      const uint64_t id = next_id++;
      auto connection = std::make_shared<ConnectionImpl>(shared_from_this(), listener, id, io_index,
                                                         std::move(socket), peer);
      connections.emplace(id, connection);
      ++io_load[io_index];
      ++listener.open;
      ++listener.open_by_uid[peer.uid];
      connection->Start();
    }
  }
  if (!refusal.empty()) {
    (per_uid ? refused_over_uid_limit : refused_over_limit).fetch_add(1);
    Log(absl::StrCat("refused a connection (pid ", peer.pid, " uid ", peer.uid, ") on ",
                     listener.name, ": ", refusal));
    Refuse(listener, peer, socket, refusal);
  }
  DoAccept(listener);
}

std::string ServerCore::OverLimit(const ListenerState& listener, const PeerCredentials& peer,
                                  bool* per_uid) const {
  *per_uid = false;
  if (listener.open >= listener.limits.max_connections) {
    return absl::StrCat(listener.open, " connections open, the limit is ",
                        listener.limits.max_connections);
  }
  const size_t cap = listener.limits.max_connections_per_uid;
  if (cap == 0) return {};
  auto it = listener.open_by_uid.find(peer.uid);
  const size_t of_uid = it == listener.open_by_uid.end() ? 0 : it->second;
  if (of_uid < cap) return {};
  *per_uid = true;
  return absl::StrCat("uid ", peer.uid, " has ", of_uid, " connections open, the limit per uid is ",
                      cap);
}

void ServerCore::Refuse(ListenerState& listener, const PeerCredentials& peer, Socket& socket,
                        std::string_view reason) {
  std::string payload = listener.handler->RefusalFrame(peer, reason);
  if (!payload.empty() && payload.size() <= kMaxFramePayload) {
    std::string frame = EncodeFrame(payload);
    // One try, never blocking the I/O thread: a fresh connection's socket
    // buffer takes a short frame; if not, the peer only sees the close.
    [[maybe_unused]] const ssize_t sent =
        ::send(socket.native_handle(), frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  ErrorCode ignored;
  socket.close(ignored);
}

void ServerCore::OnConnectionClosed(const ConnectionImpl& connection, CloseKind kind,
                                    std::string_view reason) {
  if (kind == CloseKind::kBadFrame) closed_bad_frame.fetch_add(1);
  if (kind == CloseKind::kTimeout) closed_timeout.fetch_add(1);
  const PeerCredentials& peer = connection.peer();
  Log(absl::StrCat("closed connection ", connection.id(), " (pid ", peer.pid, " uid ", peer.uid,
                   ") on ", connection.listener(), ": ", Sv(reason)),
      kind == CloseKind::kPeer || kind == CloseKind::kShutdown ? LogKind::kRoutine
                                                               : LogKind::kNotable);
  absl::MutexLock lock(&mu);
  if (connections.erase(connection.id()) > 0) {
    --io_load[connection.io_index()];
    ListenerState& listener = connection.listener_state();
    --listener.open;
    auto it = listener.open_by_uid.find(peer.uid);
    if (it != listener.open_by_uid.end() && --it->second == 0) listener.open_by_uid.erase(it);
  }
}

std::vector<std::shared_ptr<ConnectionImpl>> ServerCore::Connections() {
  std::vector<std::shared_ptr<ConnectionImpl>> out;
  absl::MutexLock lock(&mu);
  out.reserve(connections.size());
  for (const auto& [id, connection] : connections) out.push_back(connection);
  return out;
}

bool ServerCore::AllQuiet() {
  for (const auto& connection : Connections()) {
    if (!connection->Quiet()) return false;
  }
  return true;
}

// --- ServerImpl --------------------------------------------------------------

class ServerImpl final : public Server {
 public:
  explicit ServerImpl(std::shared_ptr<ServerCore> core) : core_(std::move(core)) {}
  ~ServerImpl() override { Shutdown(absl::ZeroDuration()); }

  absl::Status Start() override;
  void Shutdown(absl::Duration drain) override;
  ServerStats stats() const override;
  absl::Status CheckHealth(absl::Duration timeout) override;

 private:
  enum class State { kCreated, kRunning, kStopped };
  using WorkGuard = asio::executor_work_guard<asio::io_context::executor_type>;

  const std::shared_ptr<ServerCore> core_;
  absl::Mutex lifecycle_mu_;  // held for the whole of Start and Shutdown
  State state_ ABSL_GUARDED_BY(lifecycle_mu_) = State::kCreated;
  std::vector<WorkGuard> work_ ABSL_GUARDED_BY(lifecycle_mu_);       // one per io_context
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(lifecycle_mu_);  // one per io_context
};

absl::Status ServerImpl::Start() {
  absl::MutexLock lock(&lifecycle_mu_);
  if (state_ != State::kCreated) {
    return absl::FailedPreconditionError("the server was already started");
  }
  state_ = State::kRunning;
  work_.reserve(core_->ios.size());
  for (const auto& io : core_->ios) work_.push_back(asio::make_work_guard(*io));
  for (const auto& listener : core_->listeners) {
    ListenerState* l = listener.get();
    asio::post(l->executor, [core = core_, l] { core->DoAccept(*l); });
  }
  threads_.reserve(core_->ios.size());
  for (const auto& io : core_->ios) {
    // The thread holds the core, so its io_context outlives the run.
    threads_.emplace_back([core = core_, io = io.get()] {
      NameThisThread("gv-io");
      try {
        io->run();
      } catch (const std::exception& e) {
        Log(absl::StrCat("fatal: exception on an I/O thread: ", e.what()));
        std::abort();
      }
    });
  }
  return absl::OkStatus();
}

void ServerImpl::Shutdown(absl::Duration drain) {
  absl::MutexLock lock(&lifecycle_mu_);
  if (state_ == State::kStopped) return;
  if (state_ == State::kCreated) {
    state_ = State::kStopped;
    for (const auto& listener : core_->listeners) {
      ErrorCode ignored;
      listener->acceptor.close(ignored);
    }
    return;
  }
  state_ = State::kStopped;
  for (const std::thread& thread : threads_) {
    if (thread.get_id() == std::this_thread::get_id()) {
      Log("fatal: Server::Shutdown called on one of the server's I/O threads");
      std::abort();
    }
  }

  // Stage 1: stop accepting; frames not yet handed out stay unread.
  {
    absl::MutexLock core_lock(&core_->mu);
    core_->stopping = true;
  }
  core_->draining.store(true);
  for (const auto& listener : core_->listeners) {
    ListenerState* l = listener.get();
    asio::post(l->executor, [l] {
      ErrorCode ignored;
      l->acceptor.close(ignored);
      l->retry_timer.cancel();
    });
  }

  // Stage 2: wait for every in-flight request to be answered and written.
  const absl::Time deadline = absl::Now() + std::max(drain, absl::ZeroDuration());
  while (!core_->AllQuiet() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(2));

  // Stage 3: close everything; each thread ends when its io_context has no
  // work left (the teardowns just posted are work).
  for (const auto& connection : core_->Connections()) {
    connection->CloseWith(CloseKind::kShutdown, "server is shutting down");
  }
  for (WorkGuard& work : work_) work.reset();
  work_.clear();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

absl::Status ServerImpl::CheckHealth(absl::Duration timeout) {
  // Shared with the posted no-ops, which may run after this returns.
  struct Pending {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
  };
  auto pending = std::make_shared<Pending>();
  {
    absl::MutexLock lock(&lifecycle_mu_);
    if (state_ != State::kRunning) {
      return absl::FailedPreconditionError("the server is not running");
    }
    {
      absl::MutexLock pending_lock(&pending->mu);
      pending->left = core_->ios.size();
    }
    for (const auto& io : core_->ios) {
      asio::post(*io, [pending] {
        absl::MutexLock pending_lock(&pending->mu);
        --pending->left;
      });
    }
  }
  absl::MutexLock pending_lock(&pending->mu);
  const auto all_ran = [&pending]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pending->mu) {
    return pending->left == 0;
  };
  if (!pending->mu.AwaitWithTimeout(absl::Condition(&all_ran), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        pending->left, " of ", core_->ios.size(),
        " I/O thread(s) did not run a posted check within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

ServerStats ServerImpl::stats() const {
  ServerStats s;
  s.accepted = core_->accepted.load();
  s.refused_over_limit = core_->refused_over_limit.load();
  s.refused_over_uid_limit = core_->refused_over_uid_limit.load();
  s.frames = core_->frames.load();
  s.closed_bad_frame = core_->closed_bad_frame.load();
  s.closed_timeout = core_->closed_timeout.load();
  absl::MutexLock lock(&core_->mu);
  s.open = core_->connections.size();
  for (const auto& listener : core_->listeners) s.open_by_listener[listener->name] = listener->open;
  return s;
}

absl::Status ValidateLimits(const ServerLimits& limits, size_t io_threads) {
  if (io_threads == 0 || io_threads > kMaxIoThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_threads must be 1..", kMaxIoThreads, ", not ", io_threads));
  }
  if (limits.max_in_flight_per_connection == 0) {
    return absl::InvalidArgumentError("max_in_flight_per_connection must be at least 1");
  }
  if (limits.max_queued_bytes_per_connection < kFrameHeaderSize + kMaxFramePayload) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued_bytes_per_connection must hold one full frame (",
                     kFrameHeaderSize + kMaxFramePayload, " bytes)"));
  }
  if (limits.frame_timeout <= absl::ZeroDuration() ||
      limits.write_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("frame_timeout and write_timeout must be positive");
  }
  return absl::OkStatus();
}

absl::Status ValidateListeners(const std::vector<Listener>& listeners) {
  if (listeners.empty()) return absl::InvalidArgumentError("a server needs at least one listener");
  std::set<std::string> names;
  for (const Listener& listener : listeners) {
    if (listener.name.empty()) return absl::InvalidArgumentError("a listener has no name");
    if (!names.insert(listener.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("two listeners are named \"", listener.name, "\""));
    }
    if (listener.handler == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener \"", listener.name, "\" has no handler"));
    }
    if (listener.limits.max_connections == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener \"", listener.name, "\": max_connections must be at least 1"));
    }
    if (listener.limits.idle_timeout < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener \"", listener.name, "\": idle_timeout must not be negative"));
    }
    if (listener.fd < 0 || sd_is_socket_unix(listener.fd, SOCK_STREAM, 1, nullptr, 0) <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("listener \"", listener.name, "\": fd ",
                                                     listener.fd,
                                                     " is not a listening Unix stream socket"));
    }
  }
  return absl::OkStatus();
}

// --- BindUnixSocket helpers -------------------------------------------------

absl::Status ErrnoError(int error, std::string_view what) {
  return absl::ErrnoToStatus(error, Sv(what));
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status CheckSocketDirectory(const std::string& dir) {
  struct stat st = {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return ErrnoError(errno, absl::StrCat("cannot inspect directory ", dir));
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
      return ErrnoError(errno, absl::StrCat("cannot create directory ", dir));
    }
    if (::lstat(dir.c_str(), &st) != 0) {
      return ErrnoError(errno, absl::StrCat("cannot inspect directory ", dir));
    }
    // mkdir applies the umask; make the mode exact (only if it is ours).
    if (S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() && (st.st_mode & 07777) != 0750) {
      if (::chmod(dir.c_str(), 0750) != 0) {
        return ErrnoError(errno, absl::StrCat("cannot set the mode of directory ", dir));
      }
      st.st_mode = (st.st_mode & ~mode_t{07777}) | 0750;
    }
  }
  if (S_ISLNK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir, " is a symlink; refusing it"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir, " is not a directory"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat("socket directory ", dir, " is owned by uid ",
                                                      st.st_uid, ", not by this process (uid ",
                                                      ::geteuid(), ")"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "socket directory %s is writable by group or others (mode %04o)", dir, st.st_mode & 07777));
  }
  return absl::OkStatus();
}

sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Removes a socket file that nothing answers on; refuses one that is in use
// and any other kind of file.
absl::Status RemoveStaleSocket(const std::string& path) {
  struct stat st = {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("cannot inspect ", path));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket; refusing to replace it"));
  }
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (probe.get() < 0) return ErrnoError(errno, "socket(AF_UNIX)");
  const sockaddr_un addr = UnixAddress(path);
  const int rc = ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int error = errno;
  if (rc == 0 || error == EAGAIN || error == EINPROGRESS) {
    return absl::FailedPreconditionError(absl::StrCat("another process is serving on ", path));
  }
  if (error == ENOENT) return absl::OkStatus();
  if (error != ECONNREFUSED) {
    return ErrnoError(error, absl::StrCat("cannot tell whether ", path, " is in use"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError(errno, absl::StrCat("cannot remove the stale socket ", path));
  }
  return absl::OkStatus();
}

void FreeNames(char** names) {
  if (names == nullptr) return;
  for (char** name = names; *name != nullptr; ++name) std::free(*name);
  std::free(names);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(std::vector<Listener> listeners,
                                                       const ServerLimits& limits,
                                                       size_t io_threads) {
  // The server owns the listeners' fds from here on, also when it refuses them.
  auto close_all = [&listeners] {
    for (const Listener& listener : listeners) {
      if (listener.fd >= 0) ::close(listener.fd);
    }
  };
  absl::Status valid = ValidateLimits(limits, io_threads);
  if (valid.ok()) valid = ValidateListeners(listeners);
  if (!valid.ok()) {
    close_all();
    return valid;
  }
  auto core = std::make_shared<ServerCore>(limits, io_threads);
  for (size_t i = 0; i < listeners.size(); ++i) {
    Listener& listener = listeners[i];
    // Listeners spread over the io_contexts; usually there are more threads.
    auto state = std::make_unique<ListenerState>(*core->ios[i % core->ios.size()], listener.name,
                                                 listener.handler, listener.limits);
    SetCloseOnExec(listener.fd);
    ErrorCode ec;
    state->acceptor.assign(stream_protocol(), listener.fd, ec);
    if (ec) {
      const absl::Status status = absl::InternalError(absl::StrCat(
          "listener \"", listener.name, "\": cannot use fd ", listener.fd, ": ", ec.message()));
      close_all();  // the ones assigned so far have fd -1 here; their acceptors close them
      return status;
    }
    listener.fd = -1;  // owned by the acceptor now
    core->listeners.push_back(std::move(state));
  }
  return std::unique_ptr<Server>(new ServerImpl(std::move(core)));
}

absl::StatusOr<int> BindUnixSocket(const std::string& path, mode_t mode) {
  if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path \"", path, "\" must be 1..",
                                                   sizeof(sockaddr_un{}.sun_path) - 1,
                                                   " bytes long"));
  }
  if ((mode & ~mode_t{0777}) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("socket mode %04o for %s has bits beyond 0777", mode, path));
  }
  const absl::Status dir_ok = CheckSocketDirectory(DirectoryOf(path));
  if (!dir_ok.ok()) return dir_ok;
  const absl::Status stale_ok = RemoveStaleSocket(path);
  if (!stale_ok.ok()) return stale_ok;

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return ErrnoError(errno, "socket(AF_UNIX)");
  const sockaddr_un addr = UnixAddress(path);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot bind ", path));
  }
  // Nobody can connect before listen(), so the mode is right before anyone can.
  if (::chmod(path.c_str(), mode) != 0) {
    const int error = errno;
    ::unlink(path.c_str());
    return ErrnoError(error, absl::StrCat("cannot set the mode of ", path));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) {
    const int error = errno;
    ::unlink(path.c_str());
    return ErrnoError(error, absl::StrCat("cannot listen on ", path));
  }
  return fd.release();
}

absl::StatusOr<std::map<std::string, int>> SystemdSockets() {
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) {
    FreeNames(names);
    return ErrnoError(-n, "sd_listen_fds_with_names (LISTEN_FDS/LISTEN_FDNAMES)");
  }
  std::map<std::string, int> sockets;
  absl::Status status;
  for (int i = 0; i < n && status.ok(); ++i) {
    const int fd = SD_LISTEN_FDS_START + i;
    const std::string name = (names != nullptr && names[i] != nullptr) ? names[i] : "unknown";
    const int rc = sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0);
    if (rc < 0) {
      status = ErrnoError(-rc, absl::StrCat("systemd socket \"", name, "\" (fd ", fd, ")"));
    } else if (rc == 0) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "systemd socket \"", name, "\" (fd ", fd, ") is not a listening Unix stream socket"));
    } else if (!sockets.emplace(name, fd).second) {
      status = absl::FailedPreconditionError(
          absl::StrCat("two systemd sockets are named \"", name, "\""));
    } else {
      SetCloseOnExec(fd);
    }
  }
  FreeNames(names);
  if (!status.ok()) {
    for (int i = 0; i < n; ++i) ::close(SD_LISTEN_FDS_START + i);
    return status;
  }
  return sockets;
}

void SetLogSink(std::function<void(LogKind kind, std::string_view line)> sink) {
  std::lock_guard<std::mutex> lock(LogMutex());
  LogSinkRef() = std::move(sink);
}

}  // namespace grantvault::ipc
