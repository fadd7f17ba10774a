// A Unix-socket server for length-prefixed frames (frame.h), on Boost.Asio.
//
// Per connection: one read loop; a frame that has started must complete within
// `frame_timeout` (a peer that sends half a frame and stalls is closed, others
// are unaffected); an optional idle timeout between frames; a deadline on every
// write; at most `max_in_flight_per_connection` frames handed to the handler
// and not yet answered (reading pauses until one is answered: back-pressure);
// at most `max_queued_bytes_per_connection` of responses waiting to be written
// (a peer that does not read is closed). Peer credentials (SO_PEERCRED) are
// taken once, on accept. Each listener has its own connection limits
// (ListenerLimits): past its `max_connections`, or its
// `max_connections_per_uid` for the peer's uid, a new connection is accepted,
// sent the handler's RefusalFrame (if any) and closed at once (and counted),
// so the listen queue never stalls and one listener filling up never locks
// the other out.
//
// Every close is logged once with its reason.
#ifndef GRANTVAULT_IPC_SERVER_H_
#define GRANTVAULT_IPC_SERVER_H_

#include <sys/types.h>

// clang-format off
#include <utility>  // before Boost.Asio (ipc/asio.h)
#include <boost/asio/any_io_executor.hpp>
// clang-format on
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grantvault::ipc {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Per connection, the same for every listener.
struct ServerLimits {
  size_t max_in_flight_per_connection = 64;
  size_t max_queued_bytes_per_connection = size_t{4} << 20;
  absl::Duration frame_timeout = absl::Seconds(5);
  absl::Duration write_timeout = absl::Seconds(5);
};

// Per listener: each socket counts its own connections.
struct ListenerLimits {
  size_t max_connections = 1024;       // open connections on this listener
  size_t max_connections_per_uid = 0;  // open connections of one peer uid; 0: no cap
  // Closes a connection with nothing in flight and nothing received for this
  // long; zero: connections may idle forever.
  absl::Duration idle_timeout = absl::ZeroDuration();
};

// One accepted connection. Thread-safe: Send and Close may be called from any
// thread, also after the connection closed (they then do nothing).
class Connection {
 public:
  virtual ~Connection() = default;
  virtual uint64_t id() const = 0;
  virtual const PeerCredentials& peer() const = 0;
  virtual const std::string& listener() const = 0;  // "agent" or "admin"
  // Queues `payload` (1..65,536 bytes) as one frame. `final` marks the last
  // frame answering one request: it frees that request's in-flight slot.
  // Called on the connection's own I/O thread (a handler answering inline)
  // with nothing else queued, the frame is written at once. The payload is
  // wiped once written or dropped (it may carry a token).
  // Returns false if the connection is closed or the queue is over its cap
  // (the connection is then closed).
  virtual bool Send(std::string payload, bool final) = 0;
  // Closes after logging `reason`. Nothing more is read or accepted (Send
  // returns false); frames already queued are still written, within
  // write_timeout, so that an Error sent just before Close reaches the peer.
  virtual void Close(std::string_view reason) = 0;
  virtual bool closed() const = 0;
  // Queues several frames together (and, on the connection's own thread,
  // writes them at once: one write where several would do), the last one
  // `final` or not, but only if the answers queued, these with them, stay
  // within `max_queued` bytes (and the connection's own cap): checked and
  // queued in one step, so that calls streaming on one connection together
  // cannot overrun it. kFull leaves every payload as it was, to send later.
  enum class SendOutcome { kSent, kFull, kClosed };
  virtual SendOutcome SendAllWithin(std::span<std::string> payloads, size_t max_queued,
                                    bool final) = 0;
  // The connection's I/O thread's event loop, for work that goes on there
  // without blocking it (the API proxy's calls). A Send from a handler
  // running there is written at once.
  virtual boost::asio::any_io_executor executor() const = 0;
  // The handler's own state for this connection (null until set). Set it in
  // FrameHandler::OnConnect, before any frame is delivered, and never again:
  // it is then read without a lock, on any thread that was handed one of the
  // connection's frames (or the connection) after that.
  virtual void set_context(std::shared_ptr<void> context) = 0;
  virtual const std::shared_ptr<void>& context() const = 0;
};

// Receives the frames of every connection of one listener.
class FrameHandler {
 public:
  virtual ~FrameHandler() = default;
  // Called on an I/O thread, in order for each connection. Must not block:
  // hand slow work to another thread and answer with Connection::Send. Each
  // frame holds one in-flight slot until a Send(..., final = true).
  // `payload` points into the connection's input buffer: it is valid for the
  // call only, and wiped when the call returns (a frame may carry a secret),
  // so copy whatever must outlive it.
  virtual void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) = 0;
  virtual void OnConnect(const std::shared_ptr<Connection>&) {}
  virtual void OnDisconnect(const Connection&) {}
  // A connection refused over a ListenerLimits cap (on an I/O thread, before
  // it is closed; OnConnect is never called for it): a payload to send it as
  // one frame first, so the peer learns why, or empty for none. Best effort:
  // written once without blocking.
  virtual std::string RefusalFrame(const PeerCredentials&, std::string_view /*reason*/) {
    return {};
  }
};

struct Listener {
  std::string name;  // "agent" or "admin"; also the systemd FileDescriptorName
  // A listening Unix socket from BindUnixSocket() or SystemdSockets(); the
  // server takes ownership.
  int fd = -1;
  FrameHandler* handler = nullptr;  // must outlive the server
  ListenerLimits limits;
};

struct ServerStats {
  uint64_t accepted = 0;
  uint64_t refused_over_limit = 0;      // over a listener's max_connections
  uint64_t refused_over_uid_limit = 0;  // over a listener's max_connections_per_uid
  uint64_t open = 0;
  std::map<std::string, uint64_t> open_by_listener;
  uint64_t frames = 0;
  uint64_t closed_bad_frame = 0;
  uint64_t closed_timeout = 0;
};

class Server {
 public:
  // Validates the listeners and limits; nothing runs until Start().
  static absl::StatusOr<std::unique_ptr<Server>> Create(std::vector<Listener> listeners,
                                                        const ServerLimits& limits,
                                                        size_t io_threads);
  virtual ~Server() = default;

  // Starts accepting on every listener, on `io_threads` threads, each running
  // its own io_context. Each connection is pinned to one of them (the one with
  // the fewest connections when it is accepted): its handler calls, in order,
  // all come from that one thread.
  virtual absl::Status Start() = 0;
  // Two stages: stop accepting; wait up to `drain` for every in-flight request
  // to be answered and its answer written; then close every connection and
  // join the threads. Idempotent.
  virtual void Shutdown(absl::Duration drain) = 0;
  virtual ServerStats stats() const = 0;
  // Liveness, for the systemd watchdog: posts a no-op to every io_context and
  // waits up to `timeout` for all of them to run it. OK only if every I/O
  // thread is turning its event loop; DeadlineExceeded if one is stuck (a
  // handler blocking its thread, a deadlock); FailedPrecondition before
  // Start() or after Shutdown(). Thread-safe; must not be called on an I/O
  // thread (it would wait for itself).
  virtual absl::Status CheckHealth(absl::Duration timeout) = 0;
};

// Where the module's log lines go (default: stderr). `routine` is true for
// ordinary events (a peer that closed its connection) and false for anything
// an operator may want to see (bad frames, time-outs, refusals). Set it once,
// before any Server starts.
enum class LogKind { kRoutine, kNotable };
void SetLogSink(std::function<void(LogKind kind, std::string_view line)> sink);

// Creates a listening Unix socket at `path`, after checking its directory:
// created with mode 0750 if missing; refused if it is a symlink, is not a
// directory, is owned by another user, or is writable by group or others.
// An existing socket file is replaced only if nothing answers on it
// (FailedPrecondition "another process is serving on …" otherwise); any other
// existing file is refused. The socket gets `mode` (e.g. 0660).
absl::StatusOr<int> BindUnixSocket(const std::string& path, mode_t mode);

// Listening sockets passed by systemd socket activation (LISTEN_FDS and
// LISTEN_FDNAMES), by name. Empty when not socket-activated.
absl::StatusOr<std::map<std::string, int>> SystemdSockets();

}  // namespace grantvault::ipc

#endif  // GRANTVAULT_IPC_SERVER_H_
