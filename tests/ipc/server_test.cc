#include "ipc/server.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipc/frame.h"
#include "tests/ipc/ipc_test_util.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::ipc {
namespace {

using ::grantvault::ipc::testing::Header;
using ::grantvault::ipc::testing::MakeSocketDir;
using ::grantvault::ipc::testing::RawClient;
using ::grantvault::ipc::testing::WaitFor;
using std::chrono::milliseconds;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// Answers every frame with the same bytes, at once.
class EchoHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    connection->Send(std::string(payload), /*final=*/true);
  }
  void OnConnect(const std::shared_ptr<Connection>& connection) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++connects_;
    last_ = connection;
    peers_.push_back(connection->peer());
  }
  void OnDisconnect(const Connection&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++disconnects_;
  }

  int connects() {
    std::lock_guard<std::mutex> lock(mu_);
    return connects_;
  }
  int disconnects() {
    std::lock_guard<std::mutex> lock(mu_);
    return disconnects_;
  }
  std::shared_ptr<Connection> last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }
  std::vector<PeerCredentials> peers() {
    std::lock_guard<std::mutex> lock(mu_);
    return peers_;
  }

 private:
  std::mutex mu_;
  int connects_ = 0;
  int disconnects_ = 0;
  std::shared_ptr<Connection> last_;
  std::vector<PeerCredentials> peers_;
};

// Holds every frame until the test answers it.
class HoldingHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    std::lock_guard<std::mutex> lock(mu_);
    held_.emplace_back(connection, std::string(payload));
    ++received_;
    max_held_ = std::max(max_held_, held_.size());
  }

  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }
  size_t received() {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }
  size_t max_held() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_held_;
  }
  // Echoes the oldest held frame; false when none is held.
  bool AnswerOne() {
    std::pair<std::shared_ptr<Connection>, std::string> frame;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_.empty()) return false;
      frame = std::move(held_.front());
      held_.pop_front();
    }
    return frame.first->Send(std::move(frame.second), /*final=*/true);
  }
  std::shared_ptr<Connection> last() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.empty() ? nullptr : held_.back().first;
  }

 private:
  std::mutex mu_;
  std::deque<std::pair<std::shared_ptr<Connection>, std::string>> held_;
  size_t received_ = 0;
  size_t max_held_ = 0;
};

// Answers each frame with two partial frames, then (on request) a final one.
class StreamingHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    const std::string request(payload);
    connection->Send(request + " part 1", /*final=*/false);
    connection->Send(request + " part 2", /*final=*/false);
    std::lock_guard<std::mutex> lock(mu_);
    pending_.emplace_back(connection, request);
    ++received_;
  }
  size_t received() {
    std::lock_guard<std::mutex> lock(mu_);
    return received_;
  }
  void FinishOne() {
    std::pair<std::shared_ptr<Connection>, std::string> frame;
    {
      std::lock_guard<std::mutex> lock(mu_);
      frame = std::move(pending_.front());
      pending_.pop_front();
    }
    frame.first->Send(frame.second + " done", /*final=*/true);
  }

 private:
  std::mutex mu_;
  std::deque<std::pair<std::shared_ptr<Connection>, std::string>> pending_;
  size_t received_ = 0;
};

// Answers the first frame, then closes.
class AnswerAndCloseHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    connection->Send(std::string(payload), /*final=*/true);
    connection->Close("answered, then closed");
    sent_after_close_ = connection->Send("after close", true);
  }
  bool sent_after_close() const { return sent_after_close_; }

 private:
  std::atomic<bool> sent_after_close_{false};
};

// Records the threads each connection's events run on. Answers the frames of
// odd-numbered connections inline and those of even-numbered ones from its
// own worker thread (a Send from a thread that is not the connection's).
class ThreadRecordingHandler : public FrameHandler {
 public:
  ThreadRecordingHandler() : worker_([this] { Work(); }) {}
  ~ThreadRecordingHandler() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void OnConnect(const std::shared_ptr<Connection>& connection) override {
    std::lock_guard<std::mutex> lock(mu_);
    threads_[connection->id()].insert(std::this_thread::get_id());
  }
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_[connection->id()].insert(std::this_thread::get_id());
      if (connection->id() % 2 == 0) {
        queue_.emplace_back(connection, std::string(payload));
        cv_.notify_one();
        return;
      }
    }
    connection->Send(std::string(payload), /*final=*/true);
  }
  void OnDisconnect(const Connection& connection) override {
    std::lock_guard<std::mutex> lock(mu_);
    threads_[connection.id()].insert(std::this_thread::get_id());
  }

  // By connection id.
  std::map<uint64_t, std::set<std::thread::id>> threads() {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_;
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      std::pair<std::shared_ptr<Connection>, std::string> frame = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      frame.first->Send(std::move(frame.second), /*final=*/true);
      frame.first.reset();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<std::pair<std::shared_ptr<Connection>, std::string>> queue_;
  std::map<uint64_t, std::set<std::thread::id>> threads_;
  std::thread worker_;  // last: starts once the rest exists
};

ServerLimits FastLimits() {
  ServerLimits limits;
  limits.frame_timeout = absl::Seconds(5);
  limits.write_timeout = absl::Seconds(5);
  return limits;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeSocketDir();
    path_ = dir_->Join("agent.sock");
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
    server_.reset();
  }

  void StartServer(FrameHandler* handler, const ServerLimits& limits, size_t io_threads = 2,
                   const ListenerLimits& listener_limits = {}) {
    absl::StatusOr<int> fd = BindUnixSocket(path_, 0660);
    ASSERT_TRUE(fd.ok()) << fd.status();
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Create({Listener{"agent", *fd, handler, listener_limits}}, limits, io_threads);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->Start().ok());
  }

  RawClient Connect() {
    RawClient client = RawClient::Connect(path_);
    EXPECT_TRUE(client.connected());
    return client;
  }
  std::vector<RawClient> HoldRequestsOnFourIoThreads(size_t clients_count);

  // A fresh client gets its frame echoed: the server is still serving.
  void ExpectServing() {
    RawClient client = Connect();
    ASSERT_TRUE(client.SendFrame("still there?"));
    EXPECT_EQ(client.ReadFrame(), "still there?");
  }

  // Handlers outlive the server (declared before it).
  EchoHandler echo_;
  HoldingHandler holding_;
  StreamingHandler streaming_;
  AnswerAndCloseHandler answer_and_close_;
  ThreadRecordingHandler recording_;
  std::unique_ptr<grantvault::testing::TempDir> dir_;
  std::string path_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, EchoesFrames) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  for (int i = 0; i < 10; ++i) {
    const std::string payload = "frame " + std::to_string(i);
    ASSERT_TRUE(client.SendFrame(payload));
    EXPECT_EQ(client.ReadFrame(), payload);
  }
  EXPECT_EQ(server_->stats().frames, 10u);
  EXPECT_EQ(server_->stats().open, 1u);
}

TEST_F(ServerTest, ServesTheLargestFrame) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  std::string payload(kMaxFramePayload, 'a');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(client.SendFrame(payload));
  EXPECT_EQ(client.ReadFrame(), payload);
}

// Inline answers (written at once on the connection's thread) that the socket
// cannot take whole: the rest of a half-written frame, and the frames behind
// it, go the asynchronous way, in order and intact.
TEST_F(ServerTest, InlineAnswersTheSocketCannotTakeAtOnceArriveWholeAndInOrder) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  timeval send_timeout = {5, 0};
  ::setsockopt(client.fd(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  constexpr size_t kFrames = 24;  // 1.4 MB: far more than a Unix socket buffers
  std::vector<std::string> sent;
  for (size_t i = 0; i < kFrames; ++i) {
    std::string payload(60000, '\0');
    for (size_t k = 0; k < payload.size(); ++k) payload[k] = static_cast<char>('a' + (i + k) % 26);
    ASSERT_TRUE(client.SendFrame(payload)) << "frame " << i;  // nothing is read yet
    sent.push_back(std::move(payload));
  }
  for (size_t i = 0; i < kFrames; ++i) EXPECT_EQ(client.ReadFrame(), sent[i]) << "frame " << i;
  EXPECT_EQ(server_->stats().open, 1u);
}

// Answers each frame inline with SendAllWithin: large frames, more than
// the socket takes at once, then the final one; and, while those wait, a
// batch over a small limit, which must come back untouched (kFull).
class BatchHandler : public FrameHandler {
 public:
  static constexpr size_t kParts = 8;  // 480 KB: more than a Unix socket buffers
  static std::string Part(std::string_view request, size_t i) {
    std::string part(60000, '\0');
    for (size_t k = 0; k < part.size(); ++k) part[k] = static_cast<char>('a' + (i + k) % 26);
    part.replace(0, request.size(), request);
    return part;
  }
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    std::vector<std::string> batch;
    for (size_t i = 0; i < kParts; ++i) batch.push_back(Part(payload, i));
    const Connection::SendOutcome first =
        connection->SendAllWithin(batch, size_t{4} << 20, /*final=*/false);
    std::vector<std::string> over = {"x", "y"};
    const Connection::SendOutcome held = connection->SendAllWithin(over, 1, /*final=*/false);
    std::vector<std::string> last = {std::string(payload) + " done"};
    const Connection::SendOutcome final =
        connection->SendAllWithin(last, size_t{4} << 20, /*final=*/true);
    std::lock_guard<std::mutex> lock(mu_);
    outcomes_.push_back({first, held, final});
    held_back_.push_back(over);
  }
  std::vector<std::array<Connection::SendOutcome, 3>> outcomes() {
    std::lock_guard<std::mutex> lock(mu_);
    return outcomes_;
  }
  std::vector<std::vector<std::string>> held_back() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_back_;
  }

 private:
  std::mutex mu_;
  std::vector<std::array<Connection::SendOutcome, 3>> outcomes_;
  std::vector<std::vector<std::string>> held_back_;
};

TEST_F(ServerTest, FramesSentTogetherArriveWholeAndInOrderAndABatchOverItsLimitIsHeldBack) {
  BatchHandler handler;
  ServerLimits limits = FastLimits();
  limits.max_in_flight_per_connection = 1;  // the second request waits for the first's final frame
  StartServer(&handler, limits);
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(EncodeFrame("one") + EncodeFrame("two")));
  for (const std::string request : {"one", "two"}) {
    for (size_t i = 0; i < BatchHandler::kParts; ++i) {
      EXPECT_EQ(client.ReadFrame(), BatchHandler::Part(request, i)) << request << " part " << i;
    }
    EXPECT_EQ(client.ReadFrame(), request + " done");
  }
  using Outcome = Connection::SendOutcome;
  const std::array<Outcome, 3> expected = {Outcome::kSent, Outcome::kFull, Outcome::kSent};
  EXPECT_THAT(handler.outcomes(), ::testing::ElementsAre(expected, expected));
  const std::vector<std::string> untouched = {"x", "y"};
  EXPECT_THAT(handler.held_back(), ::testing::ElementsAre(untouched, untouched));
  EXPECT_EQ(server_->stats().open, 1u);
  server_->Shutdown(absl::ZeroDuration());  // before the handler goes
  server_.reset();
}

// Hands out each frame in place and remembers where it was.
class RememberingHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = payload;
    }
    connection->Send(std::string(payload), /*final=*/true);
  }
  std::string_view last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

 private:
  std::mutex mu_;
  std::string_view last_;
};

// A frame may carry a client secret: the server's copy is wiped once the
// handler returns. (White-box: the view points into the live connection's
// input buffer, which an idle connection keeps.)
TEST_F(ServerTest, AFrameIsWipedInTheInputBufferOnceItsHandlerReturns) {
  RememberingHandler handler;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  const std::string secret = "client_secret=s3cr3t-value-that-must-not-linger";
  ASSERT_TRUE(client.SendFrame(secret));
  ASSERT_EQ(client.ReadFrame(), secret);
  const std::string_view handed = handler.last();
  ASSERT_EQ(handed.size(), secret.size());
  const auto wiped = [&] {
    for (const char& c : handed) {
      if (*static_cast<const volatile char*>(&c) != 0) return false;
    }
    return true;
  };
  EXPECT_TRUE(WaitFor(wiped));  // the answer can arrive before the handler has returned
  server_->Shutdown(absl::ZeroDuration());
}

TEST_F(ServerTest, ClosesOnZeroLengthAndLogsTheReason) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  ::testing::internal::CaptureStderr();
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(Header(0)));
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().closed_bad_frame == 1; }));
  ASSERT_TRUE(WaitFor([&] { return handler.disconnects() == 1; }));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("ipc: closed connection "));
  EXPECT_THAT(
      log, HasSubstr("(pid " + std::to_string(::getpid()) + " uid " + std::to_string(::getuid()) +
                     ") on agent: frame length 0 is out of "
                     "range"));
  ExpectServing();
}

TEST_F(ServerTest, ClosesOnLengthOneOverTheMaximum) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(Header(kMaxFramePayload + 1)));
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().closed_bad_frame == 1; }));
  ExpectServing();
}

TEST_F(ServerTest, ClosesOnFourGiBLength) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(Header(0xFFFFFFFFu) + "more bytes that never make a frame"));
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().closed_bad_frame == 1; }));
  ExpectServing();
}

TEST_F(ServerTest, ClosesOnGarbage) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().closed_bad_frame == 1; }));
  EXPECT_EQ(server_->stats().frames, 0u);
  ExpectServing();
}

TEST_F(ServerTest, TruncatedFrameThenCloseIsHandled) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(Header(100) + std::string(10, 'x')));
  client.ShutdownWrite();
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));
  EXPECT_EQ(server_->stats().frames, 0u);
  ExpectServing();
}

TEST_F(ServerTest, HalfFrameThenStallIsClosedAfterFrameTimeoutOthersServed) {
  EchoHandler& handler = echo_;
  ServerLimits limits = FastLimits();
  limits.frame_timeout = absl::Milliseconds(300);
  StartServer(&handler, limits);

  RawClient staller = Connect();
  RawClient busy = Connect();
  const auto start = Clock::now();
  ASSERT_TRUE(staller.SendAll(Header(1000) + std::string(500, 'x')));

  std::atomic<bool> staller_closed{false};
  std::thread watcher([&] { staller_closed = staller.WaitClosed(milliseconds(3000)); });
  // The busy client keeps being served while the staller waits out its deadline,
  // each of its frames arriving in two halves 20 ms apart.
  int served = 0;
  while (Clock::now() - start < milliseconds(700)) {
    const std::string payload = "ping " + std::to_string(served);
    const std::string frame = EncodeFrame(payload);
    ASSERT_TRUE(busy.SendAll(frame.substr(0, 3)));
    std::this_thread::sleep_for(milliseconds(20));
    ASSERT_TRUE(busy.SendAll(frame.substr(3)));
    ASSERT_EQ(busy.ReadFrame(), payload);
    ++served;
  }
  watcher.join();
  const auto elapsed = Clock::now() - start;
  EXPECT_TRUE(staller_closed);
  EXPECT_GE(elapsed, milliseconds(290));
  EXPECT_GE(served, 10);
  EXPECT_EQ(server_->stats().closed_timeout, 1u);
  ASSERT_TRUE(busy.SendFrame("after"));
  EXPECT_EQ(busy.ReadFrame(), "after");
}

TEST_F(ServerTest, StalledFrameClosedNoSoonerThanFrameTimeout) {
  EchoHandler& handler = echo_;
  ServerLimits limits = FastLimits();
  limits.frame_timeout = absl::Milliseconds(300);
  StartServer(&handler, limits);
  RawClient staller = Connect();
  const auto start = Clock::now();
  ASSERT_TRUE(staller.SendAll(Header(1000).substr(0, 2)));
  EXPECT_TRUE(staller.WaitClosed(milliseconds(3000)));
  const auto elapsed = Clock::now() - start;
  EXPECT_GE(elapsed, milliseconds(290));
  EXPECT_LT(elapsed, milliseconds(2000));
}

TEST_F(ServerTest, IdleTimeoutClosesQuietConnectionsOnly) {
  EchoHandler& handler = echo_;
  ListenerLimits listener;
  listener.idle_timeout = absl::Milliseconds(200);
  StartServer(&handler, FastLimits(), 2, listener);
  RawClient quiet = Connect();
  RawClient chatty = Connect();
  const auto start = Clock::now();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(chatty.SendFrame("tick"));
    ASSERT_EQ(chatty.ReadFrame(), "tick");
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_TRUE(quiet.WaitClosed(milliseconds(100)));
  EXPECT_GE(Clock::now() - start, milliseconds(190));
  ASSERT_TRUE(chatty.SendFrame("tock"));
  EXPECT_EQ(chatty.ReadFrame(), "tock");
  EXPECT_EQ(server_->stats().closed_timeout, 1u);
}

TEST_F(ServerTest, IdleTimeoutDoesNotRunWhileARequestIsInFlight) {
  HoldingHandler& handler = holding_;
  ListenerLimits listener;
  listener.idle_timeout = absl::Milliseconds(150);
  StartServer(&handler, FastLimits(), 2, listener);
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("slow request"));
  ASSERT_TRUE(WaitFor([&] { return handler.held() == 1; }));
  std::this_thread::sleep_for(milliseconds(400));
  ASSERT_TRUE(handler.AnswerOne());
  EXPECT_EQ(client.ReadFrame(), "slow request");
  // Now idle again: closed after the idle timeout.
  EXPECT_TRUE(client.WaitClosed(milliseconds(2000)));
}

TEST_F(ServerTest, PipelinedFramesAreAnsweredInOrder) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  std::string burst;
  for (int i = 0; i < 500; ++i) burst += EncodeFrame("request " + std::to_string(i));
  ASSERT_TRUE(client.SendAll(burst));
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(client.ReadFrame(), "request " + std::to_string(i));
  }
}

TEST_F(ServerTest, CapturesPeerCredentials) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_EQ(client.ReadFrame(), "x");
  const std::vector<PeerCredentials> peers = handler.peers();
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_EQ(peers[0].pid, ::getpid());
  EXPECT_EQ(peers[0].uid, ::getuid());
  EXPECT_EQ(peers[0].gid, ::getgid());
  EXPECT_EQ(handler.last()->listener(), "agent");
  EXPECT_GT(handler.last()->id(), 0u);
}

TEST_F(ServerTest, SendAndCloseAfterCloseAreHarmless) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_EQ(client.ReadFrame(), "x");
  std::shared_ptr<Connection> connection = handler.last();
  ASSERT_NE(connection, nullptr);
  EXPECT_FALSE(connection->closed());
  connection->Close("test closes it");
  EXPECT_TRUE(connection->closed());
  EXPECT_FALSE(connection->Send("too late", true));
  connection->Close("twice");
  EXPECT_TRUE(client.WaitClosed());
  ASSERT_TRUE(WaitFor([&] { return handler.disconnects() == 1; }));

  // Also after the server is gone.
  server_->Shutdown(absl::ZeroDuration());
  server_.reset();
  EXPECT_FALSE(connection->Send("much too late", true));
  connection->Close("after the server");
}

TEST_F(ServerTest, ConnectionOutlivingTheServerIsClosedAndHarmless) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_EQ(client.ReadFrame(), "x");
  std::shared_ptr<Connection> connection = handler.last();
  server_.reset();  // the destructor shuts down
  EXPECT_TRUE(connection->closed());
  EXPECT_FALSE(connection->Send("x", true));
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(ServerTest, CloseWritesWhatWasQueuedFirst) {
  AnswerAndCloseHandler& handler = answer_and_close_;
  StartServer(&handler, FastLimits());
  for (int i = 0; i < 20; ++i) {
    RawClient client = Connect();
    ASSERT_TRUE(client.SendAll(EncodeFrame("last words") + EncodeFrame("never read")));
    EXPECT_EQ(client.ReadFrame(), "last words");
    EXPECT_TRUE(client.WaitClosed());
  }
  EXPECT_FALSE(handler.sent_after_close());
  EXPECT_EQ(server_->stats().frames, 20u);
}

TEST_F(ServerTest, CloseOfAPeerThatDoesNotReadEndsAtTheWriteTimeout) {
  HoldingHandler& handler = holding_;
  ServerLimits limits = FastLimits();
  limits.max_queued_bytes_per_connection = 64 << 20;
  limits.write_timeout = absl::Milliseconds(300);
  StartServer(&handler, limits);
  ::testing::internal::CaptureStderr();
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_TRUE(WaitFor([&] { return handler.held() == 1; }));
  std::shared_ptr<Connection> connection = handler.last();
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(connection->Send(std::string(60000, 'z'), false));
  const auto start = Clock::now();
  connection->Close("closing a peer that does not read");
  EXPECT_TRUE(connection->closed());
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));
  EXPECT_LT(Clock::now() - start, milliseconds(3000));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("closing a peer that does not read; then peer did not take a "
                             "response within 300ms"));
}

TEST_F(ServerTest, InvalidSendClosesTheConnection) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_EQ(client.ReadFrame(), "x");
  std::shared_ptr<Connection> connection = handler.last();
  EXPECT_FALSE(connection->Send(std::string(kMaxFramePayload + 1, 'x'), true));
  EXPECT_TRUE(connection->closed());
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(ServerTest, BackPressureHoldsAtMostMaxInFlight) {
  HoldingHandler& handler = holding_;
  ServerLimits limits = FastLimits();
  limits.max_in_flight_per_connection = 2;
  StartServer(&handler, limits);
  RawClient client = Connect();
  std::string burst;
  for (int i = 0; i < 6; ++i) burst += EncodeFrame("request " + std::to_string(i));
  ASSERT_TRUE(client.SendAll(burst));

  ASSERT_TRUE(WaitFor([&] { return handler.held() == 2; }));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(handler.received(), 2u);  // reading paused

  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(WaitFor([&] { return handler.held() >= 1; }));
    ASSERT_TRUE(handler.AnswerOne());
    ASSERT_EQ(client.ReadFrame(), "request " + std::to_string(i));
    if (i < 4) {
      // The freed slot resumes reading: the next frame arrives.
      ASSERT_TRUE(WaitFor([&] { return handler.received() == static_cast<size_t>(i) + 3; }));
    }
  }
  EXPECT_EQ(handler.max_held(), 2u);
  EXPECT_EQ(handler.received(), 6u);
}

TEST_F(ServerTest, OnlyTheFinalFrameFreesTheInFlightSlot) {
  StreamingHandler& handler = streaming_;
  ServerLimits limits = FastLimits();
  limits.max_in_flight_per_connection = 1;
  StartServer(&handler, limits);
  RawClient client = Connect();
  ASSERT_TRUE(client.SendAll(EncodeFrame("a") + EncodeFrame("b")));
  EXPECT_EQ(client.ReadFrame(), "a part 1");
  EXPECT_EQ(client.ReadFrame(), "a part 2");
  std::this_thread::sleep_for(milliseconds(150));
  EXPECT_EQ(handler.received(), 1u);
  handler.FinishOne();
  EXPECT_EQ(client.ReadFrame(), "a done");
  EXPECT_EQ(client.ReadFrame(), "b part 1");
  EXPECT_EQ(client.ReadFrame(), "b part 2");
  handler.FinishOne();
  EXPECT_EQ(client.ReadFrame(), "b done");
}

TEST_F(ServerTest, SlowReaderIsClosedOverTheQueuedBytesCap) {
  EchoHandler& handler = echo_;
  ServerLimits limits = FastLimits();
  limits.max_queued_bytes_per_connection = 256 * 1024;
  StartServer(&handler, limits);
  ::testing::internal::CaptureStderr();
  RawClient client = Connect();
  timeval send_timeout = {2, 0};
  ::setsockopt(client.fd(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  const std::string frame = EncodeFrame(std::string(60000, 'q'));
  for (int i = 0; i < 100; ++i) {
    if (!client.SendAll(frame)) break;  // the server closed the connection
  }
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("peer is not reading"));
  ExpectServing();
}

TEST_F(ServerTest, WriteTimeoutClosesAPeerThatDoesNotRead) {
  EchoHandler& handler = echo_;
  ServerLimits limits = FastLimits();
  limits.max_queued_bytes_per_connection = 64 << 20;
  limits.write_timeout = absl::Milliseconds(300);
  StartServer(&handler, limits);
  RawClient client = Connect();
  timeval send_timeout = {2, 0};
  ::setsockopt(client.fd(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
  const std::string frame = EncodeFrame(std::string(60000, 'w'));
  for (int i = 0; i < 40; ++i) {
    if (!client.SendAll(frame)) break;
  }
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }, milliseconds(4000)));
  EXPECT_EQ(server_->stats().closed_timeout, 1u);
}

TEST_F(ServerTest, ServesAThousandSimultaneousConnections) {
  rlimit files = {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &files), 0);
  if (files.rlim_cur < 4096) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  if (files.rlim_cur < 2100) GTEST_SKIP() << "RLIMIT_NOFILE is too low: " << files.rlim_cur;

  EchoHandler& handler = echo_;
  ListenerLimits listener;
  listener.max_connections = 1024;
  StartServer(&handler, FastLimits(), 2, listener);
  std::vector<RawClient> clients;
  clients.reserve(1000);
  for (int i = 0; i < 1000; ++i) {
    clients.push_back(RawClient::Connect(path_));
    ASSERT_TRUE(clients.back().connected()) << i;
  }
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(clients[static_cast<size_t>(i)].SendFrame("client " + std::to_string(i)));
  }
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(clients[static_cast<size_t>(i)].ReadFrame(), "client " + std::to_string(i));
  }
  EXPECT_EQ(server_->stats().open, 1000u);
  EXPECT_EQ(server_->stats().refused_over_limit, 0u);
  clients.clear();
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));
  EXPECT_EQ(handler.disconnects(), 1000);
}

TEST_F(ServerTest, RefusesConnectionsOverTheLimitAndStaysUp) {
  rlimit files = {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &files), 0);
  if (files.rlim_cur < 4096) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 4096);
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  if (files.rlim_cur < 2100) GTEST_SKIP() << "RLIMIT_NOFILE is too low: " << files.rlim_cur;

  EchoHandler& handler = echo_;
  ListenerLimits listener;
  listener.max_connections = 500;
  StartServer(&handler, FastLimits(), 2, listener);
  ::testing::internal::CaptureStderr();
  std::vector<RawClient> clients;
  clients.reserve(1000);
  for (int i = 0; i < 1000; ++i) {
    clients.push_back(RawClient::Connect(path_));
    ASSERT_TRUE(clients.back().connected()) << i;
  }
  ASSERT_TRUE(WaitFor([&] { return server_->stats().accepted == 1000; }));
  int served = 0;
  int refused = 0;
  for (RawClient& client : clients) {
    if (client.SendFrame("hello") && client.ReadFrame() == "hello") {
      ++served;
    } else {
      ++refused;
    }
  }
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(served, 500);
  EXPECT_EQ(refused, 500);
  EXPECT_EQ(server_->stats().refused_over_limit, 500u);
  EXPECT_EQ(server_->stats().open, 500u);
  EXPECT_THAT(log, HasSubstr("the limit is 500"));

  clients.clear();
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));
  ExpectServing();
}

// Echoes, and says why when a connection is refused over a limit.
class RefusingEchoHandler : public EchoHandler {
 public:
  std::string RefusalFrame(const PeerCredentials& peer, std::string_view reason) override {
    return absl::StrCat("refused uid ", peer.uid, ": ", std::string(reason));
  }
};

TEST(ServerListenerLimitsTest, EachListenerCountsItsOwnConnections) {
  auto dir = MakeSocketDir();
  RefusingEchoHandler agents;
  RefusingEchoHandler admins;
  absl::StatusOr<int> agent_fd = BindUnixSocket(dir->Join("agent.sock"), 0600);
  absl::StatusOr<int> admin_fd = BindUnixSocket(dir->Join("admin.sock"), 0600);
  ASSERT_TRUE(agent_fd.ok() && admin_fd.ok());
  ListenerLimits agent_limits;
  agent_limits.max_connections = 4;
  ListenerLimits admin_limits;
  admin_limits.max_connections = 2;
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Create({Listener{"agent", *agent_fd, &agents, agent_limits},
                      Listener{"admin", *admin_fd, &admins, admin_limits}},
                     FastLimits(), 2);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->Start().ok());

  // agent.sock full: its next connection is refused, with the reason.
  std::vector<RawClient> agent_clients;
  for (int i = 0; i < 4; ++i) {
    agent_clients.push_back(RawClient::Connect(dir->Join("agent.sock")));
    ASSERT_TRUE(agent_clients.back().SendFrame("agent"));
    ASSERT_EQ(agent_clients.back().ReadFrame(), "agent");
  }
  RawClient over = RawClient::Connect(dir->Join("agent.sock"));
  std::optional<std::string> refusal = over.ReadFrame();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_THAT(*refusal, HasSubstr("4 connections open, the limit is 4"));
  EXPECT_TRUE(over.WaitClosed());
  // admin.sock is not affected by agent.sock being full.
  std::vector<RawClient> admin_clients;
  for (int i = 0; i < 2; ++i) {
    admin_clients.push_back(RawClient::Connect(dir->Join("admin.sock")));
    ASSERT_TRUE(admin_clients.back().SendFrame("admin"));
    ASSERT_EQ(admin_clients.back().ReadFrame(), "admin");
  }
  RawClient admin_over = RawClient::Connect(dir->Join("admin.sock"));
  EXPECT_TRUE(admin_over.WaitClosed());
  const ServerStats stats = (*server)->stats();
  EXPECT_EQ(stats.refused_over_limit, 2u);
  EXPECT_EQ(stats.open_by_listener.at("agent"), 4u);
  EXPECT_EQ(stats.open_by_listener.at("admin"), 2u);

  // A closed connection frees its slot.
  agent_clients.pop_back();
  ASSERT_TRUE(WaitFor([&] { return (*server)->stats().open_by_listener.at("agent") == 3; }));
  RawClient again = RawClient::Connect(dir->Join("agent.sock"));
  ASSERT_TRUE(again.SendFrame("again"));
  EXPECT_EQ(again.ReadFrame(), "again");
  (*server)->Shutdown(absl::ZeroDuration());
}

TEST(ServerListenerLimitsTest, PerUidCapRefusesOnlyThatUid) {
  auto dir = MakeSocketDir();
  RefusingEchoHandler handler;
  const std::string path = dir->Join("agent.sock");
  absl::StatusOr<int> fd = BindUnixSocket(path, 0666);
  ASSERT_TRUE(fd.ok()) << fd.status();
  ListenerLimits limits;
  limits.max_connections = 100;
  limits.max_connections_per_uid = 3;
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Create({Listener{"agent", *fd, &handler, limits}}, FastLimits(), 2);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->Start().ok());

  std::vector<RawClient> mine;
  for (int i = 0; i < 3; ++i) {
    mine.push_back(RawClient::Connect(path));
    ASSERT_TRUE(mine.back().SendFrame("mine"));
    ASSERT_EQ(mine.back().ReadFrame(), "mine");
  }
  RawClient fourth = RawClient::Connect(path);
  std::optional<std::string> refusal = fourth.ReadFrame();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_THAT(*refusal, HasSubstr(absl::StrCat("refused uid ", ::geteuid(), ": uid ", ::geteuid(),
                                               " has 3 connections open, the limit per uid is 3")));
  EXPECT_TRUE(fourth.WaitClosed());
  EXPECT_EQ((*server)->stats().refused_over_uid_limit, 1u);
  EXPECT_EQ((*server)->stats().refused_over_limit, 0u);

  // Another uid is still served (root only: it takes a child that changes uid).
  if (::geteuid() == 0) {
    ASSERT_EQ(::chmod(dir->path().c_str(), 0755), 0);
    const pid_t child = ::fork();
    if (child == 0) {
      if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
        ::_exit(2);
      }
      RawClient other = RawClient::Connect(path);
      if (!other.connected() || !other.SendFrame("other")) ::_exit(3);
      ::_exit(other.ReadFrame() == std::optional<std::string>("other") ? 0 : 4);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }

  // Once one of the uid's connections closes, it may open another.
  mine.pop_back();
  ASSERT_TRUE(WaitFor([&] { return (*server)->stats().open_by_listener.at("agent") == 2; }));
  RawClient again = RawClient::Connect(path);
  ASSERT_TRUE(again.SendFrame("again"));
  EXPECT_EQ(again.ReadFrame(), "again");
  (*server)->Shutdown(absl::ZeroDuration());
}

TEST_F(ServerTest, ShutdownDrainsInFlightRequests) {
  HoldingHandler& handler = holding_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("answer me"));
  ASSERT_TRUE(WaitFor([&] { return handler.held() == 1; }));

  const auto start = Clock::now();
  std::thread shutdown([&] { server_->Shutdown(absl::Seconds(5)); });
  std::this_thread::sleep_for(milliseconds(150));
  // Stage 1 stopped accepting.
  EXPECT_FALSE(RawClient::Connect(path_).connected());
  // The answer given during the drain window reaches the client.
  ASSERT_TRUE(handler.AnswerOne());
  EXPECT_EQ(client.ReadFrame(), "answer me");
  EXPECT_TRUE(client.WaitClosed());
  shutdown.join();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(server_->stats().open, 0u);
}

TEST_F(ServerTest, ShutdownClosesAfterTheDrainWindow) {
  HoldingHandler& handler = holding_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("never answered"));
  ASSERT_TRUE(WaitFor([&] { return handler.held() == 1; }));
  const auto start = Clock::now();
  server_->Shutdown(absl::Milliseconds(300));
  const auto elapsed = Clock::now() - start;
  EXPECT_GE(elapsed, milliseconds(290));
  EXPECT_LT(elapsed, milliseconds(2000));
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_FALSE(handler.AnswerOne());    // Send on the closed connection: false
  server_->Shutdown(absl::Seconds(1));  // idempotent
}

TEST_F(ServerTest, ShutdownWithNothingInFlightIsQuick) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("x"));
  ASSERT_EQ(client.ReadFrame(), "x");
  const auto start = Clock::now();
  server_->Shutdown(absl::Seconds(5));
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  EXPECT_TRUE(client.WaitClosed());
  EXPECT_EQ(handler.disconnects(), 1);
}

TEST_F(ServerTest, FramesArrivingDuringTheDrainAreNotHandedOut) {
  HoldingHandler& handler = holding_;
  StartServer(&handler, FastLimits());
  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("first"));
  ASSERT_TRUE(WaitFor([&] { return handler.held() == 1; }));
  std::thread shutdown([&] { server_->Shutdown(absl::Seconds(5)); });
  std::this_thread::sleep_for(milliseconds(100));
  ASSERT_TRUE(client.SendFrame("during the drain"));
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(handler.received(), 1u);
  ASSERT_TRUE(handler.AnswerOne());
  EXPECT_EQ(client.ReadFrame(), "first");
  EXPECT_TRUE(client.WaitClosed());
  shutdown.join();
}

TEST_F(ServerTest, StartTwiceFailsAndShutdownIsIdempotent) {
  EchoHandler& handler = echo_;
  StartServer(&handler, FastLimits());
  EXPECT_EQ(server_->Start().code(), absl::StatusCode::kFailedPrecondition);
  server_->Shutdown(absl::ZeroDuration());
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_EQ(server_->Start().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ServerTest, FourIoThreadsServeEveryConnectionEachOnOneThread) {
  ThreadRecordingHandler& handler = recording_;
  StartServer(&handler, FastLimits(), /*io_threads=*/4);
  constexpr size_t kClients = 64;
  constexpr size_t kRounds = 5;
  std::vector<RawClient> clients;
  for (size_t i = 0; i < kClients; ++i) {
    clients.push_back(Connect());
    ASSERT_TRUE(clients.back().connected()) << i;
  }
  for (size_t round = 0; round < kRounds; ++round) {
    for (size_t i = 0; i < kClients; ++i) {
      const std::string frame = "client " + std::to_string(i) + " round " + std::to_string(round);
      // Even rounds pipeline two frames.
      ASSERT_TRUE(clients[i].SendFrame(frame));
      if (round % 2 == 0) {
        ASSERT_TRUE(clients[i].SendFrame(frame + " again"));
      }
    }
    for (size_t i = 0; i < kClients; ++i) {
      const std::string frame = "client " + std::to_string(i) + " round " + std::to_string(round);
      ASSERT_EQ(clients[i].ReadFrame(), frame);
      if (round % 2 == 0) {
        ASSERT_EQ(clients[i].ReadFrame(), frame + " again");
      }
    }
  }
  clients.clear();
  ASSERT_TRUE(WaitFor([&] { return server_->stats().open == 0; }));

  const std::map<uint64_t, std::set<std::thread::id>> threads = handler.threads();
  ASSERT_EQ(threads.size(), kClients);
  std::set<std::thread::id> all;
  for (const auto& [id, on] : threads) {
    EXPECT_EQ(on.size(), 1u) << "connection " << id << " ran on several threads";
    all.insert(on.begin(), on.end());
  }
  EXPECT_EQ(all.size(), 4u) << "connections are not spread over every I/O thread";
}

// Four I/O threads; 16 clients whose requests ("request <i>") the holding
// handler holds unanswered.
std::vector<RawClient> ServerTest::HoldRequestsOnFourIoThreads(size_t clients_count) {
  StartServer(&holding_, FastLimits(), /*io_threads=*/4);
  std::vector<RawClient> clients;
  for (size_t i = 0; i < clients_count; ++i) {
    clients.push_back(Connect());
    EXPECT_TRUE(clients.back().SendFrame("request " + std::to_string(i)));
  }
  EXPECT_TRUE(WaitFor([&] { return holding_.held() == clients_count; }));
  return clients;
}

TEST_F(ServerTest, ShutdownDrainsAndClosesConnectionsOnEveryIoThread) {
  HoldingHandler& handler = holding_;
  constexpr size_t kClients = 16;
  std::vector<RawClient> clients = HoldRequestsOnFourIoThreads(kClients);
  ASSERT_FALSE(HasFailure());

  const auto start = Clock::now();
  std::thread shutdown([&] { server_->Shutdown(absl::Seconds(5)); });
  std::this_thread::sleep_for(milliseconds(100));
  EXPECT_FALSE(RawClient::Connect(path_).connected());
  // Answered from this thread during the drain window: every answer is written.
  for (size_t i = 0; i < kClients; ++i) EXPECT_TRUE(handler.AnswerOne()) << i;
  for (size_t i = 0; i < kClients; ++i) {
    EXPECT_EQ(clients[i].ReadFrame(), "request " + std::to_string(i));
    EXPECT_TRUE(clients[i].WaitClosed()) << i;
  }
  shutdown.join();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(server_->stats().open, 0u);
}

TEST_F(ServerTest, ShutdownWithoutDrainClosesHeldConnectionsOnEveryIoThread) {
  HoldingHandler& handler = holding_;
  std::vector<RawClient> clients = HoldRequestsOnFourIoThreads(16);
  ASSERT_FALSE(HasFailure());
  server_->Shutdown(absl::ZeroDuration());
  for (RawClient& client : clients) EXPECT_TRUE(client.WaitClosed());
  EXPECT_EQ(server_->stats().open, 0u);
  // The handler still holds every connection; the server goes first.
  server_.reset();
  EXPECT_FALSE(handler.AnswerOne());
}

TEST_F(ServerTest, ServesTwoListeners) {
  EchoHandler agent;
  EchoHandler admin;
  absl::StatusOr<int> agent_fd = BindUnixSocket(dir_->Join("agent.sock"), 0660);
  absl::StatusOr<int> admin_fd = BindUnixSocket(dir_->Join("admin.sock"), 0600);
  ASSERT_TRUE(agent_fd.ok() && admin_fd.ok());
  auto server = Server::Create(
      {Listener{"agent", *agent_fd, &agent, {}}, Listener{"admin", *admin_fd, &admin, {}}},
      FastLimits(), 1);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->Start().ok());
  RawClient a = RawClient::Connect(dir_->Join("agent.sock"));
  RawClient b = RawClient::Connect(dir_->Join("admin.sock"));
  ASSERT_TRUE(a.SendFrame("to agent"));
  ASSERT_TRUE(b.SendFrame("to admin"));
  EXPECT_EQ(a.ReadFrame(), "to agent");
  EXPECT_EQ(b.ReadFrame(), "to admin");
  EXPECT_EQ(agent.last()->listener(), "agent");
  EXPECT_EQ(admin.last()->listener(), "admin");
  (*server)->Shutdown(absl::Seconds(1));
}

// --- Create --------------------------------------------------------------------

bool FdIsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(ServerCreateTest, RefusesBadArgumentsAndClosesTheFds) {
  auto dir = MakeSocketDir();
  EchoHandler handler;
  auto bind = [&](const std::string& name) {
    absl::StatusOr<int> fd = BindUnixSocket(dir->Join(name), 0600);
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.value_or(-1);
  };

  EXPECT_EQ(Server::Create({}, ServerLimits(), 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  int fd = bind("a.sock");
  EXPECT_EQ(
      Server::Create({Listener{"agent", fd, &handler, {}}}, ServerLimits(), 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FdIsOpen(fd));

  fd = bind("b.sock");
  EXPECT_EQ(Server::Create({Listener{"agent", fd, nullptr, {}}}, ServerLimits(), 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  const int fd1 = bind("c.sock");
  const int fd2 = bind("d.sock");
  EXPECT_EQ(
      Server::Create({Listener{"agent", fd1, &handler, {}}, Listener{"agent", fd2, &handler, {}}},
                     ServerLimits(), 1)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FdIsOpen(fd1));
  EXPECT_FALSE(FdIsOpen(fd2));

  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const absl::Status not_a_socket =
      Server::Create({Listener{"agent", pipe_fds[0], &handler, {}}}, ServerLimits(), 1).status();
  EXPECT_EQ(not_a_socket.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_a_socket.message()), HasSubstr("not a listening Unix stream"));
  ::close(pipe_fds[1]);

  ServerLimits tiny_queue;
  tiny_queue.max_queued_bytes_per_connection = 1000;
  fd = bind("e.sock");
  EXPECT_EQ(Server::Create({Listener{"agent", fd, &handler, {}}}, tiny_queue, 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  ServerLimits no_timeout;
  no_timeout.frame_timeout = absl::ZeroDuration();
  fd = bind("f.sock");
  EXPECT_EQ(Server::Create({Listener{"agent", fd, &handler, {}}}, no_timeout, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ServerCreateTest, DestroyingAnUnstartedServerClosesItsListener) {
  auto dir = MakeSocketDir();
  EchoHandler handler;
  absl::StatusOr<int> fd = BindUnixSocket(dir->Join("a.sock"), 0600);
  ASSERT_TRUE(fd.ok());
  {
    auto server = Server::Create({Listener{"agent", *fd, &handler, {}}}, ServerLimits(), 1);
    ASSERT_TRUE(server.ok());
    EXPECT_TRUE(FdIsOpen(*fd));
  }
  EXPECT_FALSE(FdIsOpen(*fd));
}

// --- BindUnixSocket ------------------------------------------------------------

mode_t ModeOf(const std::string& path) {
  struct stat st = {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class BindUnixSocketTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeSocketDir(); }
  std::unique_ptr<grantvault::testing::TempDir> dir_;
};

TEST_F(BindUnixSocketTest, CreatesAMissingDirectoryAndSetsModes) {
  const std::string sub = dir_->Join("run");
  const std::string path = sub + "/agent.sock";
  absl::StatusOr<int> fd = BindUnixSocket(path, 0660);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ModeOf(sub), 0750u);
  EXPECT_EQ(ModeOf(path), 0660u);
  EXPECT_NE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC, 0);
  int listening = 0;
  socklen_t len = sizeof(listening);
  ASSERT_EQ(::getsockopt(*fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len), 0);
  EXPECT_EQ(listening, 1);
  EXPECT_TRUE(RawClient::Connect(path).connected());
  ::close(*fd);
}

TEST_F(BindUnixSocketTest, RefusesASymlinkedDirectory) {
  const std::string real = dir_->Join("real");
  const std::string link = dir_->Join("link");
  ASSERT_EQ(::mkdir(real.c_str(), 0750), 0);
  ASSERT_EQ(::symlink(real.c_str(), link.c_str()), 0);
  const absl::StatusOr<int> fd = BindUnixSocket(link + "/agent.sock", 0660);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr(link));
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("symlink"));
}

TEST_F(BindUnixSocketTest, RefusesAPathWhoseDirectoryIsAFile) {
  const std::string file = dir_->Join("file");
  std::ofstream(file) << "x";
  const absl::StatusOr<int> fd = BindUnixSocket(file + "/agent.sock", 0660);
  ASSERT_FALSE(fd.ok());
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("not a directory"));
}

TEST_F(BindUnixSocketTest, RefusesADirectoryOwnedByAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
  const std::string other = dir_->Join("other");
  ASSERT_EQ(::mkdir(other.c_str(), 0750), 0);
  ASSERT_EQ(::chown(other.c_str(), 65534, 65534), 0);
  const absl::StatusOr<int> fd = BindUnixSocket(other + "/agent.sock", 0660);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("owned by uid 65534"));
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr(other));
}

TEST_F(BindUnixSocketTest, RefusesAGroupWritableDirectory) {
  const std::string shared = dir_->Join("shared");
  ASSERT_EQ(::mkdir(shared.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(shared.c_str(), 0770), 0);
  const absl::StatusOr<int> fd = BindUnixSocket(shared + "/agent.sock", 0660);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr("writable by group or others"));

  ASSERT_EQ(::chmod(shared.c_str(), 0702), 0);
  EXPECT_FALSE(BindUnixSocket(shared + "/agent.sock", 0660).ok());
}

TEST_F(BindUnixSocketTest, RefusesALiveSocket) {
  const std::string path = dir_->Join("agent.sock");
  absl::StatusOr<int> first = BindUnixSocket(path, 0660);
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::StatusOr<int> second = BindUnixSocket(path, 0660);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("another process is serving on " + path));
  // The live socket is untouched.
  EXPECT_TRUE(RawClient::Connect(path).connected());
  ::close(*first);
}

TEST_F(BindUnixSocketTest, ReplacesAStaleSocket) {
  const std::string path = dir_->Join("agent.sock");
  absl::StatusOr<int> first = BindUnixSocket(path, 0660);
  ASSERT_TRUE(first.ok());
  ::close(*first);  // the file stays; nothing answers
  EXPECT_FALSE(RawClient::Connect(path).connected());
  absl::StatusOr<int> second = BindUnixSocket(path, 0600);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_TRUE(RawClient::Connect(path).connected());
  ::close(*second);
}

TEST_F(BindUnixSocketTest, RefusesARegularFileAtThePath) {
  const std::string path = dir_->Join("agent.sock");
  std::ofstream(path) << "not a socket";
  const absl::StatusOr<int> fd = BindUnixSocket(path, 0660);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(fd.status().message()), HasSubstr(path + " exists and is not a socket"));
  EXPECT_EQ(grantvault::testing::ReadFileOrDie(path), "not a socket");
}

TEST_F(BindUnixSocketTest, RefusesASymlinkAtThePath) {
  const std::string target = dir_->Join("target.sock");
  absl::StatusOr<int> live = BindUnixSocket(target, 0660);
  ASSERT_TRUE(live.ok());
  const std::string path = dir_->Join("agent.sock");
  ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
  EXPECT_FALSE(BindUnixSocket(path, 0660).ok());
  ::close(*live);
}

TEST_F(BindUnixSocketTest, RefusesATooLongPath) {
  const absl::StatusOr<int> fd = BindUnixSocket(dir_->Join(std::string(120, 'x')), 0660);
  EXPECT_EQ(fd.status().code(), absl::StatusCode::kInvalidArgument);
}

// --- SystemdSockets ------------------------------------------------------------

// Systemd passes its sockets from fd 3 on. Whatever the test runner left at
// fds 3 and 4 is parked on high fds for the test and put back afterwards.
class ParkedFd {
 public:
  explicit ParkedFd(int fd) : fd_(fd), flags_(::fcntl(fd, F_GETFD)) {
    if (flags_ != -1) {
      parked_ = ::fcntl(fd, F_DUPFD_CLOEXEC, 100);
      ::close(fd);
    }
  }
  ~ParkedFd() {
    ::close(fd_);
    if (parked_ != -1) {
      ::dup2(parked_, fd_);
      ::fcntl(fd_, F_SETFD, flags_);
      ::close(parked_);
    }
  }
  ParkedFd(const ParkedFd&) = delete;
  ParkedFd& operator=(const ParkedFd&) = delete;

 private:
  int fd_;
  int flags_;
  int parked_ = -1;
};

// Moves `fd` to `target` (which must be free).
void MoveFd(int fd, int target) {
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  ::close(fd);
  ASSERT_EQ(::dup2(high, target), target);
  ::close(high);
}

TEST(SystemdSocketsTest, EmptyWhenNotSocketActivated) {
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  absl::StatusOr<std::map<std::string, int>> sockets = SystemdSockets();
  ASSERT_TRUE(sockets.ok()) << sockets.status();
  EXPECT_TRUE(sockets->empty());
}

TEST(SystemdSocketsTest, MapsNamesToListeningSockets) {
  ParkedFd park3(3);
  ParkedFd park4(4);
  auto dir = MakeSocketDir();
  absl::StatusOr<int> agent = BindUnixSocket(dir->Join("agent.sock"), 0660);
  absl::StatusOr<int> admin = BindUnixSocket(dir->Join("admin.sock"), 0600);
  ASSERT_TRUE(agent.ok() && admin.ok());
  const int agent_high = ::fcntl(*agent, F_DUPFD_CLOEXEC, 10);  // *agent may be 3 or 4
  ::close(*agent);
  MoveFd(*admin, 4);
  MoveFd(agent_high, 3);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::setenv("LISTEN_FDS", "2", 1);
  ::setenv("LISTEN_FDNAMES", "agent:admin", 1);
  absl::StatusOr<std::map<std::string, int>> sockets = SystemdSockets();
  ASSERT_TRUE(sockets.ok()) << sockets.status();
  EXPECT_EQ(*sockets, (std::map<std::string, int>{{"agent", 3}, {"admin", 4}}));
  EXPECT_EQ(std::getenv("LISTEN_FDS"), nullptr);  // unset for children
  EXPECT_NE(::fcntl(3, F_GETFD) & FD_CLOEXEC, 0);
}

TEST(SystemdSocketsTest, RefusesASocketThatIsNotListening) {
  ParkedFd park3(3);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  const int high = ::fcntl(pair[0], F_DUPFD_CLOEXEC, 10);
  ::close(pair[0]);
  ::close(pair[1]);
  MoveFd(high, 3);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::setenv("LISTEN_FDS", "1", 1);
  ::setenv("LISTEN_FDNAMES", "agent", 1);
  const absl::StatusOr<std::map<std::string, int>> sockets = SystemdSockets();
  ASSERT_FALSE(sockets.ok());
  EXPECT_THAT(std::string(sockets.status().message()), HasSubstr("not a listening Unix stream"));
  EXPECT_FALSE(FdIsOpen(3));  // closed with the refusal
}

// Blocks the I/O thread that delivers a frame until released.
class BlockingHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    entered_.Notify();
    release_.WaitForNotification();
    connection->Send(std::string(payload), /*final=*/true);
  }
  absl::Notification entered_;
  absl::Notification release_;
};

TEST_F(ServerTest, CheckHealthFailsWhileAnIoThreadIsStuckAndRecovers) {
  BlockingHandler blocking;
  absl::Cleanup release = [&] {
    if (!blocking.release_.HasBeenNotified()) blocking.release_.Notify();
  };
  StartServer(&blocking, FastLimits(), /*io_threads=*/1);
  EXPECT_TRUE(server_->CheckHealth(absl::Seconds(5)).ok());

  RawClient client = Connect();
  ASSERT_TRUE(client.SendFrame("hold the thread"));
  ASSERT_TRUE(blocking.entered_.WaitForNotificationWithTimeout(absl::Seconds(5)));
  const absl::Status stuck = server_->CheckHealth(absl::Milliseconds(200));
  EXPECT_EQ(stuck.code(), absl::StatusCode::kDeadlineExceeded) << stuck;
  EXPECT_THAT(stuck.message(), HasSubstr("1 of 1 I/O thread(s)"));

  blocking.release_.Notify();
  EXPECT_EQ(client.ReadFrame(), "hold the thread");
  EXPECT_TRUE(server_->CheckHealth(absl::Seconds(5)).ok());
  server_->Shutdown(absl::ZeroDuration());
  EXPECT_EQ(server_->CheckHealth(absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ServerHealthTest, CheckHealthBeforeStartIsAPreconditionFailure) {
  std::unique_ptr<grantvault::testing::TempDir> dir = MakeSocketDir();
  absl::StatusOr<int> fd = BindUnixSocket(dir->Join("agent.sock"), 0660);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EchoHandler echo;
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Create({Listener{"agent", *fd, &echo, {}}}, FastLimits(), 1);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->CheckHealth(absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace grantvault::ipc
