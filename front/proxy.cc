#include "front/proxy.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log_escape.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "common/strings.h"
#include "front/service.h"
#include "front/service_internal.h"
#include "oauth/async_http_client.h"
#include "policy/policy.h"
#include "spdlog/spdlog.h"

// Boost.Asio needs <utility> first; ipc/asio.h takes care of it.
// clang-format off
#include "ipc/asio.h"
#include <boost/asio/thread_pool.hpp>
// clang-format on

namespace grantvault::front {
namespace {

namespace asio = boost::asio;
template <typename T>
using Awaitable = asio::awaitable<T>;

// A call that needs the token for longer than this would get one that could
// expire on its way.
constexpr absl::Duration kMinTokenValidity = absl::Seconds(60);
// The answer frames a call may have queued for a slow reader before it stops
// reading the API's answer (flow control), and how often it looks again.
constexpr size_t kMaxQueuedAnswerBytes = size_t{256} << 10;
constexpr std::chrono::milliseconds kFlowControlPoll{5};
// How long Stop waits for the calls it ended to finish.
constexpr absl::Duration kStopGrace = absl::Seconds(5);
// A body part per frame: what fits in one frame with the envelope around it.
constexpr size_t kMaxBodyPart = 60 * 1024;
constexpr size_t kMaxUrlLength = 8192;
constexpr size_t kMaxRememberedRevocations = 100000;
// Past this many events queued for the audit log, calls are refused until it
// catches up: every call is recorded.
constexpr size_t kMaxAuditBacklogForCalls = 16384;
// After a call's record failed, calls are refused this long; the next one
// admitted then tries the log again.
constexpr absl::Duration kAuditFailureHold = absl::Seconds(5);
constexpr size_t kMaxCallerHeaders = 64;
constexpr size_t kMaxCallerHeaderBytes = 32 * 1024;

bool IsAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Headers that some API front ends read as another method, path or origin
// than the request's own (Google's APIs honour X-HTTP-Method-Override on
// POST, for one): a tool's declared calls would not bound what they do.
bool IsRequestRewrite(std::string_view name) {
  for (std::string_view h : {"x-http-method-override", "x-http-method", "x-method-override",
                             "x-original-url", "x-original-method", "x-rewrite-url", "forwarded",
                             "x-real-ip", "x-client-ip", "true-client-ip"}) {
    if (absl::EqualsIgnoreCase(Sv(name), Sv(h))) return true;
  }
  return absl::StartsWithIgnoreCase(Sv(name), "x-forwarded-");
}

bool IsHopByHop(std::string_view name) {
  for (std::string_view h : {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                             "transfer-encoding", "upgrade"}) {
    if (absl::EqualsIgnoreCase(Sv(name), Sv(h))) return true;
  }
  return false;
}

// The path of an origin-form target (without its query).
std::string_view PathOf(std::string_view target) { return target.substr(0, target.find('?')); }

// Whether `url` lies within `base` (same scheme, host and port; the path
// under the base's path), both as the HTTPS client reads them.
bool Within(const oauth::HttpsUrl& url, const oauth::HttpsUrl& base) {
  return url.authority == base.authority && absl::StartsWith(Sv(PathOf(url.target)), base.target);
}

void AppendVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Response{request_id, more: true, proxy_body: {data}}, encoded by hand so
// that the body is copied once (serialized messages concatenate as a merge).
std::string BodyFrame(uint64_t request_id, std::string_view data) {
  v1::Response head;
  head.set_request_id(request_id);
  head.set_more(true);
  std::string frame;
  const size_t inner = 1 + VarintSize(data.size()) + data.size();
  frame.reserve(head.ByteSizeLong() + 3 + VarintSize(inner) + inner);
  head.AppendToString(&frame);
  AppendVarint(frame, (uint64_t{v1::Response::kProxyBodyFieldNumber} << 3) | 2);
  AppendVarint(frame, inner);
  AppendVarint(frame, (uint64_t{v1::ProxyResponseBody::kDataFieldNumber} << 3) | 2);
  AppendVarint(frame, data.size());
  frame.append(data.data(), data.size());
  return frame;
}

// The methods an API call may use (RFC 9110 §9, RFC 5789); CONNECT and TRACE
// have no business on an API.
bool IsApiMethod(std::string_view method) {
  for (std::string_view m : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    if (method == m) return true;
  }
  return false;
}

bool IsRedirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::optional<std::string> HeaderOf(const oauth::HttpHeaders& headers, std::string_view name) {
  for (const auto& [n, v] : headers) {
    if (absl::EqualsIgnoreCase(Sv(n), Sv(name))) return v;
  }
  return std::nullopt;
}

absl::Status Refused(std::string message) {
  return absl::PermissionDeniedError(std::move(message));
}

template <typename F>
Awaitable<std::invoke_result_t<F&>> Invoke(F fn) {
  co_return fn();
}

// Runs `fn`, which may block, on `pool`; the calling coroutine waits
// meanwhile without holding its event loop, and goes on there.
template <typename F>
Awaitable<std::invoke_result_t<F&>> OffLoop(asio::thread_pool& pool, F fn) {
  co_return co_await asio::co_spawn(pool, Invoke(std::move(fn)), asio::use_awaitable);
}

}  // namespace

absl::StatusOr<oauth::HttpHeaders> CallerHeadersToSend(const v1::ProxyRequest& in) {
  if (static_cast<size_t>(in.headers_size()) > kMaxCallerHeaders) {
    return absl::InvalidArgumentError(
        absl::StrCat("a proxied call may carry at most ", kMaxCallerHeaders, " headers"));
  }
  size_t total = 0;
  std::vector<std::string> named_by_connection;
  for (const v1::HttpHeader& h : in.headers()) {
    total += h.name().size() + h.value().size();
    if (!oauth::IsHttpToken(h.name())) {
      return absl::InvalidArgumentError("a header name is not an HTTP token");
    }
    if (!oauth::IsHttpFieldValue(h.value())) {
      return absl::InvalidArgumentError(
          absl::StrCat("header ", h.name(), " has a control character in its value"));
    }
    if (absl::EqualsIgnoreCase(h.name(), "connection")) {
      for (absl::string_view option : absl::StrSplit(h.value(), ',')) {
        named_by_connection.emplace_back(absl::StripAsciiWhitespace(option));
      }
    }
  }
  if (total > kMaxCallerHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a proxied call's headers may hold at most ",
                                                   kMaxCallerHeaderBytes, " bytes"));
  }
  oauth::HttpHeaders out;
  for (const v1::HttpHeader& h : in.headers()) {
    const std::string& name = h.name();
    const bool dropped =
        IsHopByHop(name) || IsRequestRewrite(name) || absl::EqualsIgnoreCase(name, "host") ||
        absl::EqualsIgnoreCase(name, "content-length") ||
        absl::EqualsIgnoreCase(name, "authorization") || absl::EqualsIgnoreCase(name, "cookie") ||
        absl::StartsWithIgnoreCase(name, "proxy-") ||
        std::any_of(named_by_connection.begin(), named_by_connection.end(),
                    [&](const std::string& n) { return absl::EqualsIgnoreCase(n, name); });
    if (!dropped) out.emplace_back(name, h.value());
  }
  return out;
}

bool IsResponseHeaderPassedBack(std::string_view name) {
  return !IsHopByHop(name) && !absl::EqualsIgnoreCase(Sv(name), "set-cookie") &&
         !absl::EqualsIgnoreCase(Sv(name), "set-cookie2") &&
         !absl::StartsWithIgnoreCase(Sv(name), "proxy-");
}

std::optional<absl::Duration> RetryAfterOf(const oauth::HttpHeaders& headers, absl::Time now) {
  const std::optional<std::string> value = HeaderOf(headers, "retry-after");
  if (!value) return std::nullopt;
  const absl::string_view text = absl::StripAsciiWhitespace(*value);
  absl::Duration wait;
  if (int64_t seconds = 0; !text.empty() &&
                           std::all_of(text.begin(), text.end(), absl::ascii_isdigit) &&
                           absl::SimpleAtoi(text, &seconds)) {
    wait = absl::Seconds(seconds);
  } else {
    absl::Time at;
    std::string error;
    if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", text, &at, &error)) return std::nullopt;
    wait = std::max(at - now, absl::ZeroDuration());
  }
  return std::min(wait, absl::Hours(24));
}

struct Proxy::Pool {
  explicit Pool(size_t n) : threads(n) {}
  boost::asio::thread_pool threads;
};

struct Proxy::Call {
  std::string grant_id;
  uint64_t connection_id = 0;
  uint64_t request_id = 0;
  oauth::Cancellation cancellation;

  // Ended from outside (revoked, cancelled, the connection gone): why.
  void End(absl::Status why) {
    {
      absl::MutexLock lock(&mu);
      if (ended.ok()) ended = std::move(why);
    }
    cancellation.Cancel();
  }
  absl::Status EndedBecause() {
    absl::MutexLock lock(&mu);
    return ended;
  }

  absl::Mutex mu;
  absl::Status ended ABSL_GUARDED_BY(mu);
};

struct Proxy::Registration {
  std::string connector_type;
  std::vector<std::string> bases;  // "{grant:<key>}" not yet filled
  bool allow_private_network = false;
};

struct Proxy::Target {
  std::string url;  // absolute
  oauth::HttpsUrl parsed;
  std::string connector_id;
  std::vector<oauth::HttpsUrl> bases;      // where redirects may go
  const policy::ToolDecl* tool = nullptr;  // lives as long as the call's Resolved::policy
  bool public_only = true;
};

// Queues `frames` on `connection` together (one write where the connection
// is idle) once the peer has read enough of what was queued before. The wait
// polls: it is a slow reader's, and holds no thread. Gives up when
// `give_up()` says so (the frames are then wiped): kFull.
template <typename GiveUp>
Awaitable<ipc::Connection::SendOutcome> SendWhenRead(ipc::Connection& connection,
                                                     std::vector<std::string>& frames, bool final,
                                                     GiveUp give_up) {
  std::optional<asio::steady_timer> timer;
  for (;;) {
    // Checked and queued in one step: calls streaming on one connection
    // together cannot overrun its cap.
    const ipc::Connection::SendOutcome sent =
        connection.SendAllWithin(frames, kMaxQueuedAnswerBytes, final);
    if (sent != ipc::Connection::SendOutcome::kFull) {
      frames.clear();
      co_return sent;
    }
    if (connection.closed() || give_up()) {
      for (std::string& frame : frames) WipeString(frame);
      frames.clear();
      co_return connection.closed() ? ipc::Connection::SendOutcome::kClosed
                                    : ipc::Connection::SendOutcome::kFull;
    }
    if (!timer) timer.emplace(co_await asio::this_coro::executor);
    timer->expires_after(kFlowControlPoll);
    boost::system::error_code ignored;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
}

// Streams the API's answer to the connection, or stops at a head the proxy
// acts on itself (a 401 to renew, a 429/503 to pass on as UNAVAILABLE, a
// redirect to check).
class Proxy::Sink final : public oauth::AsyncResponseSink {
 public:
  enum class Stop { kNone, kRenew, kUnavailable, kRedirect, kPeerGone };

  // `held`: frames not sent yet, for the call to send with its last one.
  Sink(ipc::Connection& connection, uint64_t request_id, Call& call, const store::Grant& grant,
       bool may_renew, absl::Time deadline, Clock* clock, std::vector<std::string>& held)
      : held_(held),
        connection_(connection),
        request_id_(request_id),
        call_(call),
        grant_(grant),
        may_renew_(may_renew),
        deadline_(deadline),
        clock_(clock) {}

  Awaitable<bool> OnHead(int status, const oauth::HttpHeaders& headers) override {
    status_ = status;
    if (status == 401 && may_renew_) co_return StopWith(Stop::kRenew);
    if (status == 429 || status == 503) {
      if (std::optional<absl::Duration> wait = RetryAfterOf(headers, clock_->Now())) {
        retry_after_ = *wait;
        co_return StopWith(Stop::kUnavailable);
      }
    }
    if (IsRedirect(status)) {
      if (std::optional<std::string> location = HeaderOf(headers, "location")) {
        location_ = *std::move(location);
        co_return StopWith(Stop::kRedirect);
      }
    }
    v1::Response r;
    r.set_request_id(request_id_);
    r.set_more(true);
    v1::ProxyResponseHead* head = r.mutable_proxy_head();
    head->set_status(static_cast<uint32_t>(status));
    for (const auto& [name, value] : headers) {
      // HttpHeader's fields are protobuf strings, which must be UTF-8: a
      // value with obs-text (RFC 9110 §5.5) is dropped rather than break the
      // client's parse of the frame.
      if (!IsResponseHeaderPassedBack(name) || !IsAscii(value)) continue;
      v1::HttpHeader* h = head->add_headers();
      h->set_name(name);
      h->set_value(value);
    }
    head->set_grant_id(grant_.grant_id);
    head->set_account_id(grant_.account_id);
    std::string frame;
    if (!r.SerializeToString(&frame) || frame.size() > 65536) {
      failure_ = absl::ResourceExhaustedError("the API's response headers do not fit in a frame");
      co_return StopWith(Stop::kPeerGone);
    }
    // Held until the body's first part (or the end) goes: one write, not two.
    held_.push_back(std::move(frame));
    co_return true;
  }

  Awaitable<bool> OnBody(std::string_view part, bool last) override {
    while (!part.empty()) {
      const std::string_view piece = part.substr(0, kMaxBodyPart);
      part.remove_prefix(piece.size());
      body_bytes_ += piece.size();
      held_.push_back(BodyFrame(request_id_, piece));
    }
    // The last part waits for the call's end, to go out with it.
    if (last) co_return true;
    co_return co_await Flush();
  }

  Stop stop() const { return stop_; }
  int status() const { return status_; }
  uint64_t body_bytes() const { return body_bytes_; }
  absl::Duration retry_after() const { return retry_after_; }
  const std::string& location() const { return location_; }
  const absl::Status& failure() const { return failure_; }

 private:
  bool StopWith(Stop stop) {
    stop_ = stop;
    return false;
  }

  // Sends what is held, or stops when the peer goes away, the call ends or
  // the deadline passes.
  Awaitable<bool> Flush() {
    const ipc::Connection::SendOutcome sent =
        co_await SendWhenRead(connection_, held_, /*final=*/false, [this] {
          if (clock_->Now() >= deadline_) {
            failure_ = absl::DeadlineExceededError("the caller did not read the answer in time");
            return true;
          }
          return call_.cancellation.cancelled();
        });
    if (sent != ipc::Connection::SendOutcome::kSent) co_return StopWith(Stop::kPeerGone);
    co_return true;
  }

  std::vector<std::string>& held_;
  ipc::Connection& connection_;
  const uint64_t request_id_;
  Call& call_;
  const store::Grant& grant_;
  const bool may_renew_;
  const absl::Time deadline_;
  Clock* const clock_;
  Stop stop_ = Stop::kNone;
  int status_ = 0;
  uint64_t body_bytes_ = 0;
  absl::Duration retry_after_;
  std::string location_;
  absl::Status failure_;
};

// Counts a call's coroutine (a parameter of it, so that it lives as long as
// the coroutine's frame) until it ends, also when it is destroyed unfinished
// or never started (its event loop stopped), for Stop.
class Proxy::Running {
 public:
  explicit Running(Proxy& proxy) : proxy_(proxy) {}
  ~Running() {
    absl::MutexLock lock(&proxy_.mu_);
    --proxy_.running_;
  }
  Running(const Running&) = delete;
  Running& operator=(const Running&) = delete;

 private:
  Proxy& proxy_;
};

Proxy::Proxy(Deps deps, Limits limits)
    : deps_(std::move(deps)),
      limits_(limits),
      pool_(std::make_unique<Pool>(std::max<size_t>(1, limits.blocking_threads))) {}

Proxy::~Proxy() { Stop(); }

void Proxy::Stop() {
  std::vector<std::shared_ptr<Call>> running;
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    for (const auto& [grant, calls] : calls_)
      running.insert(running.end(), calls.begin(), calls.end());
  }
  for (const std::shared_ptr<Call>& call : running) {
    call->End(absl::UnavailableError("grantvaultd is stopping; retry_after_ms=1000"));
  }
  {
    // The calls end on their event loops, which still run: their answers
    // go out, and their connections to the APIs close there.
    absl::MutexLock lock(&mu_);
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_ == 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), kStopGrace)) {
      spdlog::warn("proxy.stop {} proxied calls still running after {}", running_,
                   absl::FormatDuration(kStopGrace));
    }
  }
  pool_->threads.join();
  // Before the event loops go: the idle connections to the APIs live on them.
  deps_.http->CloseIdleConnections();
}

void Proxy::Start(std::shared_ptr<ipc::Connection> connection, v1::Request request,
                  policy::CallerIdentity caller, absl::Time deadline, CallerCompleted completed) {
  {
    absl::MutexLock lock(&mu_);
    absl::Status refused;
    if (stopped_) {
      refused = absl::UnavailableError("grantvaultd is stopping; retry_after_ms=1000");
    } else if (running_ >= limits_.max_calls) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat(running_,
                       " proxied calls are under way, the most this daemon makes at "
                       "once ([proxy] max_calls); retry_after_ms=100"));
    }
    if (!refused.ok()) {
      SendResponse(*connection, internal::ErrorResponse(request.request_id(), refused));
      return;
    }
    ++running_;
  }
  auto running = std::make_unique<Running>(*this);
  const boost::asio::any_io_executor loop = connection->executor();
  boost::asio::co_spawn(loop,
                        Run(std::move(running), std::move(connection), std::move(request),
                            std::move(caller), deadline, std::move(completed)),
                        boost::asio::detached);
}

absl::Time Proxy::DeadlineOf(const v1::Request& request, absl::Time received) const {
  const absl::Duration wanted =
      request.deadline_ms() == 0 ? limits_.timeout : absl::Milliseconds(request.deadline_ms());
  return received + std::min(wanted, limits_.timeout);
}

std::shared_ptr<const Proxy::Registration> Proxy::CachedRegistration(
    const std::string& connector_id) {
  absl::MutexLock lock(&mu_);
  auto it = registrations_.find(connector_id);
  return it == registrations_.end() ? nullptr : it->second;
}

absl::StatusOr<std::shared_ptr<const Proxy::Registration>> Proxy::RegistrationOf(
    const std::string& connector_id) {
  uint64_t generation = 0;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = registrations_.find(connector_id); it != registrations_.end()) return it->second;
    generation = registrations_generation_;
  }
  GV_ASSIGN_OR_RETURN(store::ConnectorRegistration stored,
                      deps_.store->GetConnectorRegistration(connector_id));
  auto registration = std::make_shared<Registration>();
  registration->connector_type = stored.connector_type;
  registration->allow_private_network = stored.allow_private_network;
  registration->bases = stored.api_bases;
  const oauth::ConnectorType* type =
      deps_.catalog == nullptr ? nullptr : deps_.catalog->Find(stored.connector_type);
  if (type != nullptr && !type->api_bases.empty()) {
    GV_ASSIGN_OR_RETURN(oauth::ResolvedEndpoints resolved,
                        oauth::Catalog::Resolve(*type, stored.parameters));
    registration->bases = resolved.api_bases;
  }
  absl::MutexLock lock(&mu_);
  // Kept only if no registration changed while it was read: a change
  // forgotten meanwhile must not be remembered stale.
  if (registrations_generation_ == generation) registrations_[connector_id] = registration;
  return registration;
}

void Proxy::ForgetConnector(const std::string& connector_id) {
  absl::MutexLock lock(&mu_);
  ++registrations_generation_;
  registrations_.erase(connector_id);
}

absl::StatusOr<std::vector<std::string>> Proxy::BasesOf(const store::Grant& grant,
                                                        const Registration& registration) {
  std::vector<std::string> out;
  for (const std::string& base : registration.bases) {
    GV_ASSIGN_OR_RETURN(std::string expanded, oauth::ExpandApiBase(base, grant.metadata));
    // Checked again as used: a parameter or metadata value that made it
    // something else than an https base is refused.
    if (absl::Status valid = oauth::ValidateApiBase(expanded); !valid.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("connector ", grant.connector_id, "'s API base ", base,
                       " expands to no valid base: ", valid.message()));
    }
    out.push_back(std::move(expanded));
  }
  if (out.empty()) {
    return Refused(absl::StrCat("connector ", grant.connector_id,
                                " names no API base, so nothing may be sent through the proxy "
                                "(docs/proxy.md: register it with --api-base)"));
  }
  return out;
}

absl::StatusOr<Proxy::Target> Proxy::Check(const v1::ProxyRequest& in, const Resolved& resolved,
                                           const Registration& registration, audit::Event& record) {
  const store::Grant& grant = *resolved.grant;
  GV_ASSIGN_OR_RETURN(std::vector<std::string> bases, BasesOf(grant, registration));
  Target target;
  target.connector_id = grant.connector_id;
  target.public_only = !registration.allow_private_network;
  target.tool =
      in.tool().empty() ? nullptr : resolved.policy->FindTool(in.workspace_id(), in.tool());
  for (const std::string& base : bases) {
    GV_ASSIGN_OR_RETURN(oauth::HttpsUrl parsed, oauth::ParseHttpsUrl(base));
    target.bases.push_back(std::move(parsed));
  }
  if (in.url().empty() || in.url().size() > kMaxUrlLength) {
    return absl::InvalidArgumentError("the URL is empty or too long");
  }
  // A path is taken against the first base's origin: "/gmail/v1/…".
  target.url = in.url().front() == '/'
                   ? absl::StrCat("https://", target.bases.front().authority, in.url())
                   : in.url();
  absl::StatusOr<oauth::HttpsUrl> parsed = oauth::ParseHttpsUrl(target.url);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the URL: ", parsed.status().message()));
  }
  target.parsed = *std::move(parsed);
  GV_RETURN_IF_ERROR(CheckHop(target, in.method(), record));
  return target;
}

absl::Status Proxy::CheckHop(const Target& target, std::string_view method, audit::Event& record) {
  const std::string path(PathOf(target.parsed.target));
  record.details["host"] = target.parsed.authority;
  if (absl::Status canonical = policy::CheckHttpPath(path); !canonical.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the URL's path: ", canonical.message()));
  }
  const auto base =
      std::find_if(target.bases.begin(), target.bases.end(),
                   [&](const oauth::HttpsUrl& b) { return Within(target.parsed, b); });
  if (base == target.bases.end()) {
    std::vector<std::string> bases;
    for (const oauth::HttpsUrl& b : target.bases) {
      bases.push_back(absl::StrCat("https://", b.authority, b.target));
    }
    return Refused(absl::StrCat("https://", target.parsed.authority, " is not within connector ",
                                target.connector_id, "'s API bases (", absl::StrJoin(bases, " "),
                                ")"));
  }
  // The tool's declared calls, when it declares any. (The refusal names the
  // method and the declarations, not the path: the audit record keeps it.)
  const policy::ToolDecl* tool = target.tool;
  if (tool != nullptr && !tool->http.empty()) {
    const policy::HttpAllowance* allowed = tool->AllowsHttp(method, path);
    if (allowed == nullptr) {
      std::vector<std::string> declared;
      for (const policy::HttpAllowance& a : tool->http) declared.push_back(a.declared);
      record.details["path_template"] = "(not declared)";
      return Refused(absl::StrCat("tool '", tool->name, "' may not make this ", Sv(method),
                                  " call: its path is outside what it declares (",
                                  absl::StrJoin(declared, ", "), ")"));
    }
    record.details["path_template"] =
        allowed->path_prefix == path ? path : absl::StrCat(allowed->path_prefix, "/…");
  } else {
    record.details["path_template"] = path == base->target ? path : absl::StrCat(base->target, "…");
  }
  return absl::OkStatus();
}

absl::Status Proxy::AuditHealthy() const {
  if (deps_.audit == nullptr) return absl::OkStatus();
  if (deps_.audit->backlog() >= kMaxAuditBacklogForCalls) {
    return absl::UnavailableError(
        "the audit log is behind; proxied calls wait for it; retry_after_ms=1000");
  }
  const absl::Time failed = absl::FromUnixNanos(audit_failed_at_.load());
  if (deps_.clock->Now() - failed < kAuditFailureHold) {
    return absl::UnavailableError(
        "the audit log could not record a proxied call just now; calls are refused until it "
        "can; retry_after_ms=1000");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Proxy::Call>> Proxy::Admit(const std::string& grant_id,
                                                          uint64_t connection_id,
                                                          uint64_t request_id) {
  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::UnavailableError("grantvaultd is stopping; retry_after_ms=1000");
  if (revoked_.contains(grant_id)) {
    return absl::FailedPreconditionError(absl::StrCat("REVOKED: grant ", grant_id, " is revoked"));
  }
  std::set<std::shared_ptr<Call>>& calls = calls_[grant_id];
  if (calls.size() >= limits_.max_calls_per_grant) {
    return absl::ResourceExhaustedError(
        absl::StrCat("grant ", grant_id, " already has ", calls.size(),
                     " proxied calls under way (the most one grant may have); retry_after_ms=100"));
  }
  auto call = std::make_shared<Call>();
  call->grant_id = grant_id;
  call->connection_id = connection_id;
  call->request_id = request_id;
  calls.insert(call);
  return call;
}

void Proxy::Retire(const std::shared_ptr<Call>& call) {
  absl::MutexLock lock(&mu_);
  auto it = calls_.find(call->grant_id);
  if (it == calls_.end()) return;
  it->second.erase(call);
  if (it->second.empty()) calls_.erase(it);
}

void Proxy::EndCallsOf(const std::string& grant_id, const std::string& reason) {
  std::vector<std::shared_ptr<Call>> ending;
  {
    absl::MutexLock lock(&mu_);
    if (revoked_.size() >= kMaxRememberedRevocations) revoked_.clear();
    revoked_.insert(grant_id);
    if (auto it = calls_.find(grant_id); it != calls_.end()) {
      ending.assign(it->second.begin(), it->second.end());
    }
  }
  for (const std::shared_ptr<Call>& call : ending) {
    call->End(absl::FailedPreconditionError(
        absl::StrCat("REVOKED: grant ", grant_id, " was revoked during the call: ", reason)));
  }
}

bool Proxy::Cancel(uint64_t connection_id, uint64_t request_id) {
  std::shared_ptr<Call> found;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [grant, calls] : calls_) {
      for (const std::shared_ptr<Call>& call : calls) {
        if (call->connection_id == connection_id && call->request_id == request_id) found = call;
      }
    }
  }
  if (found == nullptr) return false;
  found->End(absl::CancelledError("the call was cancelled by the caller"));
  return true;
}

void Proxy::EndCallsOfConnection(uint64_t connection_id) {
  std::vector<std::shared_ptr<Call>> ending;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [grant, calls] : calls_) {
      for (const std::shared_ptr<Call>& call : calls) {
        if (call->connection_id == connection_id) ending.push_back(call);
      }
    }
  }
  for (const std::shared_ptr<Call>& call : ending) {
    call->End(absl::CancelledError("the caller's connection closed"));
  }
}

Awaitable<void> Proxy::Run(std::unique_ptr<Running> /*running*/,
                           std::shared_ptr<ipc::Connection> connection, v1::Request request,
                           policy::CallerIdentity caller, absl::Time deadline,
                           CallerCompleted completed) {
  try {
    co_await Serve(connection, request, caller, deadline, completed);
  } catch (const std::exception& e) {
    // (Nothing in a call throws by design; a failed allocation would.)
    spdlog::error("proxy.call_failed request_id={}: {}", request.request_id(), e.what());
    SendResponse(*connection,
                 internal::ErrorResponse(request.request_id(),
                                         absl::InternalError("the proxied call failed")));
  }
}

Awaitable<void> Proxy::Serve(const std::shared_ptr<ipc::Connection>& connection,
                             const v1::Request& request, policy::CallerIdentity& caller,
                             absl::Time deadline, const CallerCompleted& completed) {
  const v1::ProxyRequest& in = request.proxy();
  const uint64_t id = request.request_id();
  const ipc::PeerCredentials& peer = connection->peer();
  const absl::Time started = deps_.clock->Now();

  audit::Event record;
  record.type = "proxy.call";
  record.workspace_id = in.workspace_id();
  record.connector_id = in.connector_id();
  record.actor.uid = peer.uid;
  record.actor.pid = peer.pid;
  if (caller.exe_path) record.actor.exe = *caller.exe_path;
  if (!in.tool().empty()) record.details["tool"] = in.tool();
  record.details["method"] = in.method();
  record.details["request_id"] = absl::StrCat(id);

  const auto answer_error = [&](const absl::Status& status) {
    SendResponse(*connection, internal::ErrorResponse(id, status));
  };
  // Audits the call's end. The record is queued, not waited for: the call
  // has happened at the API by now, and holding its answer back would undo
  // nothing. A record that fails keeps the next calls out for a while
  // (AuditHealthy), so that calls are never made unrecorded for long.
  const auto record_end = [&](audit::Event e, const absl::Status& outcome) {
    e.details["duration_ms"] =
        absl::StrCat(absl::ToInt64Milliseconds(deps_.clock->Now() - started));
    if (outcome.ok()) {
      e.outcome = "ok";
    } else {
      e.outcome = absl::IsPermissionDenied(outcome) ? "denied" : "failed";
      e.reason = std::string(outcome.message());
    }
    // Each call is in the audit log; the daemon's log has it at debug level
    // (as token releases), since a line per call costs a write per call.
    if (spdlog::should_log(spdlog::level::debug)) {
      spdlog::debug(
          "proxy.call uid={} pid={} workspace={} connector={} tool={} method={} host={} "
          "path={} status={} bytes={} outcome={}",
          peer.uid, peer.pid, EscapeForLog(e.workspace_id), EscapeForLog(e.connector_id),
          EscapeForLog(e.details["tool"]), EscapeForLog(e.details["method"]),
          EscapeForLog(e.details["host"]), EscapeForLog(e.details["path_template"]),
          e.details["status"], e.details["bytes_received"], e.outcome);
    }
    if (deps_.audit == nullptr) return;
    deps_.audit->AppendAsync(std::move(e), audit::Durability::kDeferred,
                             [this](absl::Status recorded) {
                               if (recorded.ok()) return;
                               spdlog::error("audit.write_failed event=proxy.call: {}",
                                             EscapeTextForLog(std::string(recorded.message())));
                               audit_failed_at_.store(absl::ToUnixNanos(deps_.clock->Now()));
                             });
  };

  {
    absl::MutexLock lock(&mu_);
    if (stopped_) {
      answer_error(absl::UnavailableError("grantvaultd is stopping; retry_after_ms=1000"));
      co_return;
    }
  }
  // The checks of a Resolve: caller, workspace, tool, scopes, grant, token.
  if (!IsApiMethod(in.method())) {
    answer_error(absl::InvalidArgumentError(
        "the method must be one of GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS"));
    co_return;
  }
  if (in.body().size() > limits_.max_request_body) {
    answer_error(absl::ResourceExhaustedError(absl::StrCat(
        "a proxied request body may hold at most ", limits_.max_request_body, " bytes")));
    co_return;
  }
  ResolveQuery query;
  query.workspace_id = in.workspace_id();
  query.connector_id = in.connector_id();
  if (!in.tool().empty()) query.tool = in.tool();
  query.scopes.assign(in.scopes().begin(), in.scopes().end());
  query.min_valid = kMinTokenValidity;
  query.deadline = deadline;
  // In memory (the usual case) it is answered here; otherwise (a refresh to
  // wait for, the executable to hash) on a proxy thread.
  std::optional<absl::StatusOr<Resolved>> cached = deps_.resolver->ResolveIfCached(caller, query);
  absl::StatusOr<Resolved> resolved = absl::UnknownError("not resolved");
  if (cached) {
    resolved = *std::move(cached);
  } else {
    const bool had_hash = caller.exe_sha256.has_value();
    resolved = co_await OffLoop(
        pool_->threads, [this, &caller, &query] { return deps_.resolver->Resolve(caller, query); });
    if (caller.exe_sha256.has_value() && !had_hash && completed) completed(caller);
  }
  if (!resolved.ok()) {
    answer_error(resolved.status());
    if (deps_.record_refusal) deps_.record_refusal(peer, caller, record, resolved.status());
    co_return;
  }
  internal::AddGrantFields(*resolved->grant, record);
  record.scopes = resolved->scopes;

  // What the tool may call, and where.
  const std::string& connector_id = resolved->grant->connector_id;
  absl::StatusOr<std::shared_ptr<const Registration>> registration =
      CachedRegistration(connector_id);
  if (*registration == nullptr) {
    registration = co_await OffLoop(pool_->threads,
                                    [this, &connector_id] { return RegistrationOf(connector_id); });
  }
  absl::StatusOr<Target> target = registration.ok() ? Check(in, *resolved, **registration, record)
                                                    : absl::StatusOr<Target>(registration.status());
  if (!target.ok()) {
    record_end(record, target.status());
    answer_error(target.status());
    co_return;
  }
  // Every refusal from here on is recorded, as the checks' are.
  absl::StatusOr<oauth::HttpHeaders> headers = CallerHeadersToSend(in);
  absl::StatusOr<std::shared_ptr<Call>> admitted = absl::UnknownError("not admitted");
  absl::Status refused = AuditHealthy();
  if (refused.ok()) refused = headers.status();
  if (refused.ok()) {
    admitted = Admit(resolved->grant->grant_id, connection->id(), id);
    refused = admitted.status();
  }
  if (!refused.ok()) {
    record_end(record, refused);
    answer_error(refused);
    co_return;
  }
  const std::shared_ptr<Call> call = *std::move(admitted);

  tokens::SharedAccessToken token = resolved->token;
  oauth::HttpRequest upstream;
  upstream.method = in.method();
  upstream.url = target->url;
  upstream.body = in.body();
  std::vector<std::string> held;  // answer frames to go with the last one
  bool renewed = false;
  int redirects = 0;
  absl::Status outcome;
  uint32_t upstream_status = 0;  // a 429 or 503 passed on as UNAVAILABLE
  int final_status = 0;
  uint64_t bytes = 0;
  for (;;) {
    if (connection->closed()) {
      // The caller went away before the call left: it is not made.
      call->End(absl::CancelledError("the caller's connection closed"));
    }
    if (absl::Status ended = call->EndedBecause(); !ended.ok()) {
      outcome = ended;
      break;
    }
    upstream.headers = *headers;
    std::string credential;  // wiped after the call, like every copy of the token
    credential.reserve(7 + token->token.size());
    credential.append("Bearer ").append(token->token.view());
    upstream.headers.emplace_back("Authorization", std::move(credential));
    Sink sink(*connection, id, *call, *resolved->grant, /*may_renew=*/!renewed, deadline,
              deps_.clock, held);
    oauth::StreamOptions options;
    options.public_addresses_only = target->public_only;
    options.max_response_bytes = limits_.max_response_bytes;
    options.cancellation = &call->cancellation;
    absl::StatusOr<oauth::StreamResult> result =
        co_await deps_.http->StreamAsync(upstream, deadline - deps_.clock->Now(), sink, options);
    WipeString(upstream.headers.back().second);
    final_status = sink.status();
    bytes = sink.body_bytes();
    if (absl::Status ended = call->EndedBecause(); !ended.ok()) {
      outcome = ended;  // revoked, cancelled, or the caller gone
      break;
    }
    if (sink.stop() == Sink::Stop::kRenew) {
      renewed = true;
      record.details["renewed"] = "true";
      absl::StatusOr<tokens::SharedAccessToken> fresh =
          co_await OffLoop(pool_->threads, [this, &resolved, &token, deadline] {
            return deps_.tokens->Renew(resolved->grant->grant_id, *token, kMinTokenValidity,
                                       deadline);
          });
      if (!fresh.ok()) {
        outcome = fresh.status();
        break;
      }
      token = *std::move(fresh);
      continue;
    }
    if (sink.stop() == Sink::Stop::kUnavailable) {
      upstream_status = static_cast<uint32_t>(final_status);
      outcome = absl::UnavailableError(
          absl::StrCat("the API answered ", final_status, " (", record.details["host"],
                       "); retry_after_ms=", absl::ToInt64Milliseconds(sink.retry_after())));
      break;
    }
    if (sink.stop() == Sink::Stop::kRedirect) {
      const std::string& location = sink.location();
      std::string next = location;
      if (!location.empty() && location.front() == '/' &&
          (location.size() < 2 || location[1] != '/')) {
        next = absl::StrCat("https://", target->parsed.authority, location);
      }
      if (++redirects > kMaxRedirects) {
        outcome = absl::UnavailableError(
            absl::StrCat("the API redirected more than ", kMaxRedirects, " times"));
        break;
      }
      // 303, and 301/302 after anything but GET and HEAD, become a GET
      // without a body (and without the body's Content-Type).
      if (final_status == 303 || ((final_status == 301 || final_status == 302) &&
                                  upstream.method != "GET" && upstream.method != "HEAD")) {
        upstream.method = "GET";
        WipeString(upstream.body);
        std::erase_if(*headers, [](const std::pair<std::string, std::string>& h) {
          return absl::EqualsIgnoreCase(h.first, "content-type");
        });
      }
      // The next hop is checked as the first was: within the API bases, and
      // declared by the tool for the method it is sent with.
      absl::StatusOr<oauth::HttpsUrl> parsed = oauth::ParseHttpsUrl(next);
      absl::Status hop = parsed.status();
      if (hop.ok()) {
        target->parsed = *std::move(parsed);
        hop = CheckHop(*target, upstream.method, record);
      }
      if (!hop.ok()) {
        outcome = Refused(absl::StrCat("the API redirected (HTTP ", final_status,
                                       ") to where this call may not go (", hop.message(),
                                       "); the redirect was not followed"));
        break;
      }
      upstream.url = next;
      continue;
    }
    if (!result.ok()) {
      outcome = sink.failure().ok() ? result.status() : sink.failure();
      // A server whose certificate does not verify is unavailable to the
      // caller, not a caller that failed to authenticate.
      if (absl::IsUnauthenticated(outcome)) outcome = absl::UnavailableError(outcome.message());
      break;
    }
    outcome = absl::OkStatus();
    break;
  }
  WipeString(upstream.body);
  Retire(call);

  record.details["status"] = absl::StrCat(final_status);
  record.details["bytes_sent"] = absl::StrCat(in.body().size());
  record.details["bytes_received"] = absl::StrCat(bytes);
  if (redirects > 0) record.details["redirects"] = absl::StrCat(redirects);
  record_end(std::move(record), outcome);
  // The last frame, and the answer's frames held back to go with it.
  v1::Response last;
  if (outcome.ok()) {
    last.set_request_id(id);
    last.mutable_proxy_end()->set_body_bytes(bytes);
  } else {
    last = internal::ErrorResponse(id, outcome);
    if (upstream_status != 0) last.mutable_error()->set_upstream_status(upstream_status);
  }
  held.push_back(last.SerializeAsString());
  const ipc::Connection::SendOutcome sent = co_await SendWhenRead(
      *connection, held, /*final=*/true, [&] { return deps_.clock->Now() >= deadline; });
  if (sent == ipc::Connection::SendOutcome::kFull) {
    answer_error(absl::DeadlineExceededError("the caller did not read the answer in time"));
  }
}

}  // namespace grantvault::front
