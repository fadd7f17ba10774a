// loadgen: closed-loop load generator for grantvault's Unix sockets (and for
// bench/echo_server, the baseline speaking the same framing).
//
//   loadgen --socket PATH [--request status|resolve|echo|echo-resolve]
//           [--connections N] [--depth D] [--duration S] [--warmup S]
//           [--threads T] [--count N] [--label NAME] [--json]
//           [--workspace W --connector C [--tool T] [--min-valid S] | --mix FILE]
//   loadgen --socket PATH --probe [--request …] [--workspace W --connector C … | --mix FILE]
//
// Every connection keeps D requests outstanding: each answer is checked
// (request id, the expected reply body, no Error) and immediately replaced by
// a new request. --request status: each connection first exchanges Hello
// (protocol version 1) and then sends StatusRequests. --request resolve: Hello,
// then ResolveRequest{workspace_id, connector_id, tool, min_valid_seconds}
// (agent.sock; answered from the token cache once the first call has filled
// it, unless --min-valid exceeds the token's lifetime, which forces a refresh
// per call). --request echo / echo-resolve: the very same Status / Resolve
// frames without Hello (an echo server returns them unchanged; Request and
// Response number the status and resolve bodies alike, so the checks are the
// same). Latency is measured per request id (answers may come out of order)
// from just before the write to just after the read, for requests sent after
// the warm-up and answered before the end. Requests/s counts answers received
// in the measured window.
//
// --mix FILE (resolve, echo-resolve): instead of one ResolveRequest, the
// distinct requests listed in FILE, one per line, "workspace connector tool
// [min_valid_seconds]" ('#' starts a comment; at least 2 lines, no two the
// same). Every connection sends them in turn, starting at its own offset
// (connection i at line i mod n), so that no two consecutive requests on one
// connection are the same and neighbouring connections ask different things.
// --probe sends each of them once, on one connection.
//
// --count N: no warm-up; exactly N requests are sent (then the run ends when
// they are answered, or after --duration at the latest) and requests/s is N
// over the time to the last answer. For timing a fixed number of slow calls.
//
// --probe: one connection, Hello (status, resolve) and one request; exit
// status 0 if it was answered correctly (an Error's message goes to stderr).
// Scripts use it to wait for a server to be ready.
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "grantvault/v1/envelope.pb.h"

namespace {

namespace v1 = grantvault::v1;

constexpr size_t kHeaderSize = 4;
constexpr size_t kMaxPayload = 65536;
constexpr uint32_t kMaxDepth = 1024;
constexpr uint64_t kSlotBits = 16;  // request_id = generation << 16 | slot
constexpr uint64_t kSlotMask = (uint64_t{1} << kSlotBits) - 1;

int64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

[[noreturn]] void Fatal(const std::string& what) {
  std::fprintf(stderr, "loadgen: %s\n", what.c_str());
  std::exit(1);
}

[[noreturn]] void FatalErrno(const std::string& what) { Fatal(what + ": " + std::strerror(errno)); }

// ---------------------------------------------------------------------------
// Latency histogram: log-linear buckets (128 per power of two: < 0.8 % error),
// exact below 256 ns.
class Histogram {
 public:
  static constexpr int kSubBits = 8;
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;
  static constexpr size_t kBuckets = (64 - kSubBits + 1) * kSub;

  Histogram() : counts_(kBuckets, 0) {}

  void Add(int64_t ns) {
    const uint64_t v = ns < 0 ? 0 : static_cast<uint64_t>(ns);
    ++counts_[Index(v)];
    ++total_;
    sum_ += v;
    max_ = std::max(max_, v);
  }

  void Merge(const Histogram& other) {
    for (size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    total_ += other.total_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  uint64_t total() const { return total_; }
  uint64_t max() const { return max_; }
  double mean() const {
    return total_ == 0 ? 0 : static_cast<double>(sum_) / static_cast<double>(total_);
  }

  // The upper bound of the bucket holding the q-quantile, in ns.
  uint64_t Quantile(double q) const {
    if (total_ == 0) return 0;
    auto rank = static_cast<uint64_t>(q * static_cast<double>(total_));
    if (rank >= total_) rank = total_ - 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen > rank) return std::min(UpperBound(i), max_);
    }
    return max_;
  }

 private:
  // Below kSub: exact. Above: the top kSubBits bits of v, i.e. (v >> shift)
  // in [kSub/2, kSub), at index shift * kSub + (v >> shift).
  static size_t Index(uint64_t v) {
    if (v < kSub) return static_cast<size_t>(v);
    const int msb = 63 - __builtin_clzll(v);
    const int shift = msb - kSubBits + 1;
    return static_cast<size_t>(shift) * kSub + static_cast<size_t>(v >> shift);
  }
  static uint64_t UpperBound(size_t i) {
    if (i < kSub) return i;
    const size_t shift = i / kSub;
    const uint64_t top = i % kSub;
    return ((top + 1) << shift) - 1;
  }

  std::vector<uint64_t> counts_;
  uint64_t total_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

// ---------------------------------------------------------------------------
// Wire encoding. The hot path encodes and decodes the few bytes by hand; the
// encodings are checked once against the generated classes at startup.

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void PutHeader(std::string& out, size_t payload) {
  out.push_back(static_cast<char>((payload >> 24) & 0xff));
  out.push_back(static_cast<char>((payload >> 16) & 0xff));
  out.push_back(static_cast<char>((payload >> 8) & 0xff));
  out.push_back(static_cast<char>(payload & 0xff));
}

constexpr int kStatusField = 11;   // Request.status, Response.status
constexpr int kResolveField = 20;  // Request.resolve, Response.resolve
constexpr int kErrorField = 9;     // Response.error

// Request{request_id = id, <body field> = body}: field 1 varint, then the
// body, length-delimited. `body` is the encoded StatusRequest (empty) or
// ResolveRequest; it is the same for every request of a run.
void AppendFrame(std::string& out, uint64_t id, int body_field, std::string_view body) {
  std::string payload;
  if (id != 0) {
    payload.push_back(0x08);
    PutVarint(payload, id);
  }
  PutVarint(payload, (static_cast<uint64_t>(body_field) << 3) | 2);
  PutVarint(payload, body.size());
  payload.append(body);
  PutHeader(out, payload.size());
  out += payload;
}

std::string Frame(const std::string& payload) {
  std::string out;
  PutHeader(out, payload.size());
  out += payload;
  return out;
}

// What a request of a run carries: its body field and encoded body (one per
// distinct request of a --mix, used in turn; otherwise the same for all).
struct RequestBody {
  int field = kStatusField;
  std::string bytes;
};
using RequestBodies = std::vector<RequestBody>;

void SelfCheck(const RequestBody& body) {
  for (uint64_t id : {uint64_t{0}, uint64_t{1}, uint64_t{0x12345}, uint64_t{1} << 40}) {
    v1::Request r;
    r.set_request_id(id);
    if (body.field == kStatusField) {
      r.mutable_status();
    } else if (!r.mutable_resolve()->ParseFromString(body.bytes)) {
      Fatal("internal: the ResolveRequest body does not parse");
    }
    std::string mine;
    AppendFrame(mine, id, body.field, body.bytes);
    if (mine != Frame(r.SerializeAsString())) Fatal("internal: hand-encoded request differs");
  }
}

struct Answer {
  bool ok = false;
  uint64_t request_id = 0;
  int body_field = 0;  // the oneof field present (11 status, 20 resolve, 9 error, 10 hello)
};

bool ReadVarint(const unsigned char*& p, const unsigned char* end, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (p == end) return false;
    const unsigned char b = *p++;
    *v |= uint64_t{b & 0x7fu} << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// Scans a Response (or an echoed Request: the numbers of request_id and of
// the status and resolve bodies are the same) for its request_id and its body
// field.
Answer Decode(const unsigned char* p, size_t size) {
  Answer a;
  const unsigned char* end = p + size;
  while (p < end) {
    uint64_t key = 0;
    if (!ReadVarint(p, end, &key)) return a;
    const uint64_t field = key >> 3;
    switch (key & 7) {
      case 0: {
        uint64_t v = 0;
        if (!ReadVarint(p, end, &v)) return a;
        if (field == 1) a.request_id = v;
        break;
      }
      case 1:
        if (end - p < 8) return a;
        p += 8;
        break;
      case 2: {
        uint64_t len = 0;
        if (!ReadVarint(p, end, &len) || len > static_cast<uint64_t>(end - p)) return a;
        p += len;
        if (field >= 9) a.body_field = static_cast<int>(field);
        break;
      }
      case 5:
        if (end - p < 4) return a;
        p += 4;
        break;
      default:
        return a;
    }
  }
  a.ok = true;
  return a;
}

// ---------------------------------------------------------------------------
// Blocking setup helpers.

int Connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) FatalErrno("socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) Fatal("socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

bool ReadExact(int fd, unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool ReadFrame(int fd, std::string* payload) {
  unsigned char h[kHeaderSize];
  if (!ReadExact(fd, h, kHeaderSize)) return false;
  const size_t len =
      (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | size_t{h[3]};
  if (len == 0 || len > kMaxPayload) return false;
  payload->resize(len);
  return ReadExact(fd, reinterpret_cast<unsigned char*>(payload->data()), len);
}

// Hello on a fresh blocking connection; an empty string means success.
std::string Hello(int fd) {
  v1::Request r;
  r.set_request_id(1);
  r.mutable_hello()->set_protocol_version(1);
  r.mutable_hello()->set_client_name("grantvault-loadgen");
  if (!WriteAll(fd, Frame(r.SerializeAsString()))) return std::string("write: ") + strerror(errno);
  std::string payload;
  if (!ReadFrame(fd, &payload)) return "no HelloReply (connection closed or bad frame)";
  v1::Response reply;
  if (!reply.ParseFromString(payload)) return "the answer to Hello is not a Response";
  if (reply.has_error()) return "Hello refused: " + reply.error().message();
  if (!reply.has_hello() || reply.request_id() != 1) return "the answer to Hello is no HelloReply";
  return "";
}

// ---------------------------------------------------------------------------
// The measured loop.

struct Options {
  std::string socket;
  std::string request = "status";
  std::string label;
  uint32_t connections = 1;
  uint32_t depth = 1;
  double duration = 5;
  double warmup = 1;
  uint32_t threads = 2;
  uint64_t count = 0;  // 0: run for --duration
  bool json = false;
  bool probe = false;
  // --request resolve / echo-resolve
  std::string workspace;
  std::string connector;
  std::string tool;
  uint32_t min_valid_seconds = 0;
  std::string mix;  // --mix FILE

  bool hello() const { return request == "status" || request == "resolve"; }
  bool resolve() const { return request == "resolve" || request == "echo-resolve"; }
};

RequestBody ResolveBody(const std::string& workspace, const std::string& connector,
                        const std::string& tool, uint32_t min_valid_seconds) {
  v1::ResolveRequest r;
  r.set_workspace_id(workspace);
  r.set_connector_id(connector);
  r.set_tool(tool);
  r.set_min_valid_seconds(min_valid_seconds);
  RequestBody body;
  body.field = kResolveField;
  body.bytes = r.SerializeAsString();
  return body;
}

uint32_t ParseCount(const char* s, uint32_t lo, uint32_t hi, const char* flag);

// --mix FILE: "workspace connector tool [min_valid_seconds]" per line.
RequestBodies ReadMix(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) FatalErrno("--mix " + path);
  RequestBodies bodies;
  char line[1024];
  int number = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    ++number;
    if (char* hash = std::strchr(line, '#')) *hash = '\0';
    std::vector<std::string> words;
    for (char* w = std::strtok(line, " \t\r\n"); w != nullptr;
         w = std::strtok(nullptr, " \t\r\n")) {
      words.emplace_back(w);
    }
    if (words.empty()) continue;
    if (words.size() < 3 || words.size() > 4) {
      Fatal("--mix " + path + ":" + std::to_string(number) +
            ": expected 'workspace connector tool [min_valid_seconds]'");
    }
    const uint32_t min_valid =
        words.size() == 4 ? ParseCount(words[3].c_str(), 0, 86400, "min_valid_seconds") : 0;
    bodies.push_back(ResolveBody(words[0], words[1], words[2], min_valid));
  }
  std::fclose(f);
  if (bodies.size() < 2) Fatal("--mix " + path + ": at least 2 requests are needed");
  for (size_t i = 0; i < bodies.size(); ++i) {
    for (size_t j = i + 1; j < bodies.size(); ++j) {
      if (bodies[i].bytes == bodies[j].bytes) {
        Fatal("--mix " + path + ": request " + std::to_string(j + 1) + " repeats request " +
              std::to_string(i + 1));
      }
    }
  }
  return bodies;
}

RequestBodies BodiesFor(const Options& o) {
  if (!o.resolve()) return {RequestBody{}};
  if (!o.mix.empty()) return ReadMix(o.mix);
  return {ResolveBody(o.workspace, o.connector, o.tool, o.min_valid_seconds)};
}

struct Conn {
  int fd = -1;
  std::vector<int64_t> sent_ns;  // per slot; 0: nothing outstanding
  std::vector<uint64_t> generation;
  std::unique_ptr<unsigned char[]> in;
  size_t in_begin = 0;
  size_t in_end = 0;
  std::string out;  // requests the socket did not take yet
  bool want_write = false;
  size_t next_body = 0;  // the index of the next request body to send
};

constexpr size_t kInBuffer = 2 * (kHeaderSize + kMaxPayload);

struct Window {
  int64_t measure_begin = 0;
  int64_t measure_end = 0;
  // --count: requests left to send, shared by every worker; null otherwise.
  std::atomic<int64_t>* budget = nullptr;
};

struct WorkerResult {
  Histogram latency;
  uint64_t answered = 0;  // in the measured window
  uint64_t errors = 0;
  int64_t last_answer_ns = 0;
  std::string failure;  // first failure, if any
};

class Worker {
 public:
  Worker(std::vector<Conn*> conns, uint32_t depth, Window window, const RequestBodies* bodies)
      : conns_(std::move(conns)), depth_(depth), window_(window), bodies_(bodies) {}

  WorkerResult& result() { return result_; }

  void Run() {
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) FatalErrno("epoll_create1");
    for (Conn* c : conns_) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = c;
      if (::epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) FatalErrno("epoll_ctl");
      const int64_t now = NowNs();
      for (uint32_t s = 0; s < depth_; ++s) Queue(c, s, now);
      if (!Flush(ep, c)) return Stop(ep);
    }
    std::array<epoll_event, 256> events{};
    for (;;) {
      const int64_t now = NowNs();
      if (now >= window_.measure_end) break;
      if (window_.budget != nullptr && outstanding_ == 0) break;  // --count: all answered
      const int64_t left_ms = (window_.measure_end - now) / 1'000'000 + 1;
      const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()),
                                 static_cast<int>(std::min<int64_t>(left_ms, 100)));
      if (n < 0) {
        if (errno == EINTR) continue;
        FatalErrno("epoll_wait");
      }
      for (int i = 0; i < n; ++i) {
        auto* c = static_cast<Conn*>(events[static_cast<size_t>(i)].data.ptr);
        const uint32_t ev = events[static_cast<size_t>(i)].events;
        if ((ev & EPOLLOUT) != 0 && !Flush(ep, c)) return Stop(ep);
        if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0 && !Receive(c)) return Stop(ep);
        if (!c->out.empty() && !c->want_write && !Flush(ep, c)) return Stop(ep);
      }
    }
    Stop(ep);
  }

 private:
  void Stop(int ep) { ::close(ep); }

  void Queue(Conn* c, uint32_t slot, int64_t now) {
    if (window_.budget != nullptr && window_.budget->fetch_sub(1) <= 0) {
      c->sent_ns[slot] = 0;  // the slot stays idle
      return;
    }
    const uint64_t gen = ++c->generation[slot];
    const RequestBody& body = (*bodies_)[c->next_body];
    c->next_body = (c->next_body + 1) % bodies_->size();
    AppendFrame(c->out, (gen << kSlotBits) | slot, body.field, body.bytes);
    c->sent_ns[slot] = now;
    ++outstanding_;
  }

  bool Fail(const std::string& why) {
    if (result_.failure.empty()) result_.failure = why;
    ++result_.errors;
    return false;
  }

  bool Flush(int ep, Conn* c) {
    size_t done = 0;
    while (done < c->out.size()) {
      ssize_t n = ::send(c->fd, c->out.data() + done, c->out.size() - done, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return Fail(std::string("send: ") + std::strerror(errno));
        break;
      }
      done += static_cast<size_t>(n);
    }
    c->out.erase(0, done);
    const bool want = !c->out.empty();
    if (want != c->want_write) {
      c->want_write = want;
      epoll_event ev{};
      ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
      ev.data.ptr = c;
      if (::epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) FatalErrno("epoll_ctl");
    }
    return true;
  }

  bool Receive(Conn* c) {
    if (c->in_begin > 0 && c->in_begin == c->in_end) c->in_begin = c->in_end = 0;
    if (kInBuffer - c->in_end < kHeaderSize + kMaxPayload) {
      std::memmove(c->in.get(), c->in.get() + c->in_begin, c->in_end - c->in_begin);
      c->in_end -= c->in_begin;
      c->in_begin = 0;
    }
    ssize_t got = ::read(c->fd, c->in.get() + c->in_end, kInBuffer - c->in_end);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) return true;
      return Fail(std::string("read: ") + std::strerror(errno));
    }
    if (got == 0) return Fail("the server closed a connection");
    c->in_end += static_cast<size_t>(got);
    const int64_t now = NowNs();
    while (c->in_end - c->in_begin >= kHeaderSize) {
      const unsigned char* h = c->in.get() + c->in_begin;
      const size_t len =
          (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | size_t{h[3]};
      if (len == 0 || len > kMaxPayload) return Fail("bad frame length " + std::to_string(len));
      if (c->in_end - c->in_begin < kHeaderSize + len) break;
      const Answer a = Decode(h + kHeaderSize, len);
      c->in_begin += kHeaderSize + len;
      if (!a.ok) return Fail("unparseable answer");
      const int field = bodies_->front().field;  // the same for every body of a run
      if (a.body_field != field) {
        return Fail(a.body_field == kErrorField
                        ? "the server answered with an Error (run --probe to see it)"
                    : field == kStatusField ? "an answer without a StatusReply"
                                            : "an answer without a ResolveReply");
      }
      const uint64_t slot = a.request_id & kSlotMask;
      if (slot >= depth_ || c->sent_ns[slot] == 0 ||
          (a.request_id >> kSlotBits) != c->generation[slot]) {
        return Fail("an answer to no outstanding request (id " + std::to_string(a.request_id) +
                    ")");
      }
      const int64_t sent = c->sent_ns[slot];
      --outstanding_;
      if (now >= window_.measure_begin && now < window_.measure_end) {
        ++result_.answered;
        result_.last_answer_ns = now;
        if (sent >= window_.measure_begin) result_.latency.Add(now - sent);
      }
      Queue(c, static_cast<uint32_t>(slot), now);
    }
    return true;
  }

  std::vector<Conn*> conns_;
  uint32_t depth_;
  Window window_;
  const RequestBodies* bodies_;
  uint64_t outstanding_ = 0;
  WorkerResult result_;
};

// ---------------------------------------------------------------------------

[[noreturn]] void Usage() {
  std::fprintf(
      stderr,
      "usage: loadgen --socket PATH [--request status|resolve|echo|echo-resolve]\n"
      "               [--connections N] [--depth D] [--duration S] [--warmup S]\n"
      "               [--threads T] [--count N] [--label NAME] [--json]\n"
      "               [--workspace W --connector C [--tool T] [--min-valid S] |\n"
      "                --mix FILE]\n"
      "       loadgen --socket PATH --probe [--request ...] [--workspace ... | --mix FILE]\n");
  std::exit(2);
}

uint32_t ParseCount(const char* s, uint32_t lo, uint32_t hi, const char* flag) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < static_cast<long>(lo) || v > static_cast<long>(hi)) {
    Fatal(std::string(flag) + " must be an integer in [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "]");
  }
  return static_cast<uint32_t>(v);
}

double ParseSeconds(const char* s, double lo, double hi, const char* flag) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v >= lo && v <= hi)) {
    Fatal(std::string(flag) + " must be a number of seconds in [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "]");
  }
  return v;
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--json") {
      o.json = true;
      continue;
    }
    if (a == "--probe") {
      o.probe = true;
      continue;
    }
    if (a == "--help" || a == "-h" || i + 1 >= argc) Usage();
    const char* v = argv[++i];
    if (a == "--socket") {
      o.socket = v;
    } else if (a == "--request") {
      o.request = v;
    } else if (a == "--label") {
      o.label = v;
    } else if (a == "--connections") {
      o.connections = ParseCount(v, 1, 10000, "--connections");
    } else if (a == "--depth") {
      o.depth = ParseCount(v, 1, kMaxDepth, "--depth");
    } else if (a == "--threads") {
      o.threads = ParseCount(v, 1, 64, "--threads");
    } else if (a == "--duration") {
      o.duration = ParseSeconds(v, 0.1, 60, "--duration");
    } else if (a == "--warmup") {
      o.warmup = ParseSeconds(v, 0, 60, "--warmup");
    } else if (a == "--count") {
      o.count = ParseCount(v, 1, 1'000'000'000, "--count");
    } else if (a == "--workspace") {
      o.workspace = v;
    } else if (a == "--connector") {
      o.connector = v;
    } else if (a == "--tool") {
      o.tool = v;
    } else if (a == "--mix") {
      o.mix = v;
    } else if (a == "--min-valid") {
      o.min_valid_seconds = ParseCount(v, 0, 86400, "--min-valid");
    } else {
      Usage();
    }
  }
  if (o.socket.empty()) Usage();
  if (o.request != "status" && o.request != "resolve" && o.request != "echo" &&
      o.request != "echo-resolve") {
    Fatal("--request must be status, resolve, echo or echo-resolve");
  }
  if (o.resolve() && o.mix.empty() && (o.workspace.empty() || o.connector.empty())) {
    Fatal("--request " + o.request + " needs --workspace and --connector, or --mix");
  }
  if (!o.mix.empty() && !o.resolve()) Fatal("--mix is for --request resolve or echo-resolve");
  if (o.count > 0) o.warmup = 0;
  if (o.label.empty()) {
    o.label = o.request == "status"    ? "grantvaultd-status"
              : o.request == "resolve" ? "grantvaultd-resolve"
                                       : o.request;
  }
  return o;
}

int ProbeOne(const Options& o, int fd, const RequestBody& body) {
  std::string frame;
  AppendFrame(frame, 7, body.field, body.bytes);
  std::string payload;
  if (!WriteAll(fd, frame) || !ReadFrame(fd, &payload)) return 1;
  const Answer a = Decode(reinterpret_cast<const unsigned char*>(payload.data()), payload.size());
  if (a.ok && a.body_field == kErrorField) {
    v1::Response r;
    if (r.ParseFromString(payload)) {
      std::fprintf(stderr, "loadgen: probe: %s: %s\n",
                   v1::Error::Code_Name(r.error().code()).c_str(), r.error().message().c_str());
    }
    return 1;
  }
  if (!a.ok || a.body_field != body.field || a.request_id != 7) return 1;
  if (o.request == "resolve") {
    v1::Response r;
    if (!r.ParseFromString(payload) || r.resolve().access_token().empty()) {
      std::fprintf(stderr, "loadgen: probe: a ResolveReply without an access token\n");
      return 1;
    }
  }
  return 0;
}

int Probe(const Options& o, const RequestBodies& bodies) {
  int fd = Connect(o.socket);
  if (fd < 0) return 1;
  // A resolve may wait for a refresh (the provider, the HSM, the disk).
  timeval tv{o.resolve() ? 30 : 2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int status = o.hello() && !Hello(fd).empty() ? 1 : 0;
  for (const RequestBody& body : bodies) {
    if (status != 0) break;
    status = ProbeOne(o, fd, body);
  }
  ::close(fd);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  const Options o = ParseOptions(argc, argv);
  ::signal(SIGPIPE, SIG_IGN);
  const RequestBodies bodies = BodiesFor(o);
  for (const RequestBody& body : bodies) SelfCheck(body);
  if (o.probe) return Probe(o, bodies);

  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  // Connect (and Hello) every connection before the clock starts.
  std::vector<std::unique_ptr<Conn>> conns;
  for (uint32_t i = 0; i < o.connections; ++i) {
    auto c = std::make_unique<Conn>();
    c->fd = Connect(o.socket);
    if (c->fd < 0) FatalErrno("connect " + o.socket + " (connection " + std::to_string(i) + ")");
    if (o.hello()) {
      const std::string err = Hello(c->fd);
      if (!err.empty()) Fatal("connection " + std::to_string(i) + ": " + err);
    }
    timeval none{0, 0};
    ::setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    if (::fcntl(c->fd, F_SETFL, O_NONBLOCK) != 0) FatalErrno("fcntl");
    c->sent_ns.assign(o.depth, 0);
    c->generation.assign(o.depth, 0);
    c->in = std::make_unique<unsigned char[]>(kInBuffer);
    c->next_body = i % bodies.size();  // each connection starts at its own offset
    conns.push_back(std::move(c));
  }

  const uint32_t nthreads = std::min(o.threads, o.connections);
  std::atomic<int64_t> budget{static_cast<int64_t>(o.count)};
  Window window;
  window.measure_begin = NowNs() + static_cast<int64_t>(o.warmup * 1e9);
  window.measure_end = window.measure_begin + static_cast<int64_t>(o.duration * 1e9);
  if (o.count > 0) window.budget = &budget;
  std::vector<std::unique_ptr<Worker>> workers;
  for (uint32_t t = 0; t < nthreads; ++t) {
    std::vector<Conn*> mine;
    for (size_t i = t; i < conns.size(); i += nthreads) mine.push_back(conns[i].get());
    workers.push_back(std::make_unique<Worker>(std::move(mine), o.depth, window, &bodies));
  }
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->Run(); });
  for (std::thread& t : threads) t.join();
  for (auto& c : conns) ::close(c->fd);

  WorkerResult total;
  for (auto& w : workers) {
    total.latency.Merge(w->result().latency);
    total.answered += w->result().answered;
    total.errors += w->result().errors;
    total.last_answer_ns = std::max(total.last_answer_ns, w->result().last_answer_ns);
    if (total.failure.empty()) total.failure = w->result().failure;
  }
  if (o.count > 0 && total.errors == 0 && total.answered < o.count) {
    ++total.errors;
    total.failure = "only " + std::to_string(total.answered) + " of " + std::to_string(o.count) +
                    " requests were answered within --duration";
  }
  // --count: the time to the last answer; otherwise the fixed window.
  const int64_t end =
      o.count > 0 && total.last_answer_ns > 0 ? total.last_answer_ns : window.measure_end;
  const double seconds = static_cast<double>(end - window.measure_begin) / 1e9;
  const double rps = static_cast<double>(total.answered) / seconds;
  auto us = [&](double q) { return static_cast<double>(total.latency.Quantile(q)) / 1000.0; };
  const double max_us = static_cast<double>(total.latency.max()) / 1000.0;
  const double mean_us = total.latency.mean() / 1000.0;
  if (o.json) {
    std::printf(
        "{\"target\":\"%s\",\"connections\":%u,\"depth\":%u,\"threads\":%u,\"duration_s\":%.3f,"
        "\"requests\":%llu,\"rps\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
        "\"max_us\":%.1f,\"mean_us\":%.1f,\"errors\":%llu}\n",
        o.label.c_str(), o.connections, o.depth, nthreads, seconds,
        static_cast<unsigned long long>(total.answered), rps, us(0.5), us(0.99), us(0.999), max_us,
        mean_us, static_cast<unsigned long long>(total.errors));
  } else {
    std::printf(
        "target=%s connections=%u depth=%u rps=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f "
        "max_us=%.1f mean_us=%.1f requests=%llu seconds=%.3f errors=%llu\n",
        o.label.c_str(), o.connections, o.depth, rps, us(0.5), us(0.99), us(0.999), max_us, mean_us,
        static_cast<unsigned long long>(total.answered), seconds,
        static_cast<unsigned long long>(total.errors));
  }
  if (total.errors > 0) {
    std::fprintf(stderr, "loadgen: %s\n", total.failure.c_str());
    return 1;
  }
  return 0;
}
