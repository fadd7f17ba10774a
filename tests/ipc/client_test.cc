#include "ipc/client.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grantvault/v1/envelope.pb.h"
#include "gtest/gtest.h"
#include "ipc/frame.h"
#include "ipc/server.h"
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

enum class Mode { kNormal, kPartials, kNeverAnswer, kRefuseHello, kGarbage };

// A small daemon stand-in: parses each Request and answers a Response.
class ProtoHandler : public FrameHandler {
 public:
  void OnFrame(const std::shared_ptr<Connection>& connection, std::string_view payload) override {
    v1::Request request;
    if (!request.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      connection->Close("unparsable request");
      return;
    }
    v1::Response response;
    response.set_request_id(request.request_id());
    if (request.has_hello()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++hellos_;
        last_hello_ = request.hello();
      }
      if (mode.load() == Mode::kRefuseHello) {
        response.mutable_error()->set_code(v1::Error::INVALID_ARGUMENT);
        response.mutable_error()->set_message("protocol version 1 is not supported");
      } else {
        response.mutable_hello()->set_protocol_version(1);
        response.mutable_hello()->set_server_version("test-server");
        response.mutable_hello()->set_socket_role(v1::HelloReply::AGENT);
      }
      connection->Send(response.SerializeAsString(), true);
      // As the daemon does: the Error is written before the connection closes.
      if (mode.load() == Mode::kRefuseHello) connection->Close("unsupported protocol version");
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_deadline_ms_ = request.deadline_ms();
    }
    switch (mode.load()) {
      case Mode::kNeverAnswer: {
        std::lock_guard<std::mutex> lock(mu_);
        held_.emplace_back(connection, std::move(request));
        return;
      }
      case Mode::kGarbage:
        connection->Send(std::string("\x08\x80", 2), true);  // a varint that never ends
        return;
      case Mode::kPartials:
        for (int i = 1; i <= 3; ++i) {
          response.set_more(true);
          response.mutable_status()->set_server_version("part " + std::to_string(i));
          connection->Send(response.SerializeAsString(), false);
        }
        response.set_more(false);
        response.mutable_status()->set_server_version("final");
        connection->Send(response.SerializeAsString(), true);
        return;
      case Mode::kNormal:
      case Mode::kRefuseHello:
        break;
    }
    if (request.has_status()) {
      response.mutable_status()->set_server_version("test-server");
    } else {
      // Echoes a per-request tag so that tests can check the matching.
      response.mutable_error()->set_code(v1::Error::NOT_FOUND);
      response.mutable_error()->set_message(request.admin_user());
    }
    connection->Send(response.SerializeAsString(), true);
  }

  // Answers every held request now (late).
  void AnswerHeld() {
    std::deque<std::pair<std::shared_ptr<Connection>, v1::Request>> held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      held.swap(held_);
    }
    for (auto& [connection, request] : held) {
      v1::Response response;
      response.set_request_id(request.request_id());
      response.mutable_error()->set_code(v1::Error::NOT_FOUND);
      response.mutable_error()->set_message("late " + request.admin_user());
      connection->Send(response.SerializeAsString(), true);
    }
  }
  void DropHeld() {
    std::lock_guard<std::mutex> lock(mu_);
    held_.clear();
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }
  int hellos() {
    std::lock_guard<std::mutex> lock(mu_);
    return hellos_;
  }
  v1::Hello last_hello() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_hello_;
  }
  uint32_t last_deadline_ms() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_deadline_ms_;
  }

  std::atomic<Mode> mode{Mode::kNormal};

 private:
  std::mutex mu_;
  std::deque<std::pair<std::shared_ptr<Connection>, v1::Request>> held_;
  int hellos_ = 0;
  v1::Hello last_hello_;
  uint32_t last_deadline_ms_ = 0;
};

v1::Request StatusRequest() {
  v1::Request request;
  request.mutable_status();
  return request;
}

v1::Request TaggedRequest(const std::string& tag) {
  v1::Request request;
  request.set_admin_user(tag);
  request.mutable_key_status();
  return request;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeSocketDir();
    path_ = dir_->Join("agent.sock");
  }
  void TearDown() override { StopServer(); }

  void StartServer() {
    absl::StatusOr<int> fd = BindUnixSocket(path_, 0660);
    ASSERT_TRUE(fd.ok()) << fd.status();
    auto server = Server::Create({Listener{"agent", *fd, &handler_, {}}}, ServerLimits(), 2);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->Start().ok());
  }
  void StopServer() {
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
    server_.reset();
  }

  std::unique_ptr<Client> ConnectOrDie() {
    ClientOptions options;
    options.client_name = "client-test/1";
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(path_, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  ProtoHandler handler_;
  std::unique_ptr<grantvault::testing::TempDir> dir_;
  std::string path_;
  std::unique_ptr<Server> server_;
};

TEST_F(ClientTest, ConnectSaysHello) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->hello().server_version(), "test-server");
  EXPECT_EQ(client->hello().socket_role(), v1::HelloReply::AGENT);
  EXPECT_EQ(handler_.hellos(), 1);
  EXPECT_EQ(handler_.last_hello().protocol_version(), kProtocolVersion);
  EXPECT_EQ(handler_.last_hello().client_name(), "client-test/1");
  EXPECT_EQ(client->default_deadline(), absl::Seconds(10));
}

TEST_F(ClientTest, ConnectToNothingIsUnavailable) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(path_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(client.status().message()), HasSubstr(path_));

  // A socket file nobody serves on.
  absl::StatusOr<int> fd = BindUnixSocket(path_, 0660);
  ASSERT_TRUE(fd.ok());
  ::close(*fd);
  client = Client::Connect(path_);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ClientTest, ConnectValidatesItsArguments) {
  EXPECT_EQ(Client::Connect("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Client::Connect(std::string(200, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientOptions options;
  options.connect_timeout = absl::ZeroDuration();
  EXPECT_EQ(Client::Connect(path_, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, ConnectReturnsTheServersErrorWhenHelloIsRefused) {
  handler_.mode = Mode::kRefuseHello;
  StartServer();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(path_);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("not supported"));
  EXPECT_EQ(client.status().GetPayload("grantvault.error_code"), absl::Cord("INVALID_ARGUMENT"));
}

TEST_F(ClientTest, ConnectTimesOutWhenHelloIsNeverAnswered) {
  // A listener nobody accepts on: connect succeeds (backlog), Hello is never answered.
  absl::StatusOr<int> fd = BindUnixSocket(path_, 0660);
  ASSERT_TRUE(fd.ok());
  ClientOptions options;
  options.connect_timeout = absl::Milliseconds(200);
  const auto start = Clock::now();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(path_, options);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_GE(Clock::now() - start, milliseconds(190));
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  ::close(*fd);
}

TEST_F(ClientTest, CallReturnsTheMatchingResponse) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Response> status = client->Call(StatusRequest());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(status->has_status());
  EXPECT_EQ(status->status().server_version(), "test-server");
  EXPECT_NE(status->request_id(), 0u);
  EXPECT_EQ(handler_.last_deadline_ms(), 10000u);  // the default deadline travels along

  // An Error is an answer, not a transport failure.
  absl::StatusOr<v1::Response> tagged = client->Call(TaggedRequest("alice"), absl::Seconds(2));
  ASSERT_TRUE(tagged.ok()) << tagged.status();
  ASSERT_TRUE(tagged->has_error());
  EXPECT_EQ(tagged->error().message(), "alice");
  EXPECT_GT(tagged->request_id(), status->request_id());
  EXPECT_EQ(ErrorToStatus(tagged->error()).code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, PartialResponsesGoToOnPartialFirst) {
  handler_.mode = Mode::kPartials;
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::vector<std::string> parts;
  absl::StatusOr<v1::Response> response =
      client->Call(StatusRequest(), absl::Seconds(2), [&](const v1::Response& partial) {
        EXPECT_TRUE(partial.more());
        parts.push_back(partial.status().server_version());
      });
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->more());
  EXPECT_EQ(response->status().server_version(), "final");
  EXPECT_EQ(parts, (std::vector<std::string>{"part 1", "part 2", "part 3"}));
}

TEST_F(ClientTest, DeadlineExceededAndTheLateResponseIsDropped) {
  handler_.mode = Mode::kNeverAnswer;
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  const auto start = Clock::now();
  absl::StatusOr<v1::Response> response =
      client->Call(TaggedRequest("slow"), absl::Milliseconds(200));
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(elapsed, milliseconds(190));
  EXPECT_LT(elapsed, milliseconds(2000));
  EXPECT_EQ(handler_.last_deadline_ms(), 200u);

  // The late answer arrives on the same connection and is dropped; the next
  // call gets its own answer.
  handler_.mode = Mode::kNormal;
  handler_.AnswerHeld();
  absl::StatusOr<v1::Response> next = client->Call(TaggedRequest("fast"), absl::Seconds(2));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->error().message(), "fast");
  EXPECT_EQ(handler_.hellos(), 1);  // same connection
}

TEST_F(ClientTest, NonPositiveDeadlineFailsAtOnce) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Call(StatusRequest(), absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client->Call(StatusRequest(), absl::Seconds(-1)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(client->Call(StatusRequest(), absl::InfiniteDuration()).ok());
}

TEST_F(ClientTest, CallAsyncAnswersOnTheIoThread) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::promise<std::pair<absl::StatusOr<v1::Response>, std::thread::id>> done;
  client->CallAsync(TaggedRequest("async"), absl::Seconds(2),
                    [&done](absl::StatusOr<v1::Response> response) {
                      done.set_value({std::move(response), std::this_thread::get_id()});
                    });
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(3)), std::future_status::ready);
  auto [response, thread] = future.get();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->error().message(), "async");
  EXPECT_NE(thread, std::this_thread::get_id());
}

TEST_F(ClientTest, CallAsyncDeadline) {
  handler_.mode = Mode::kNeverAnswer;
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::promise<absl::Status> done;
  const auto start = Clock::now();
  client->CallAsync(
      TaggedRequest("never"), absl::Milliseconds(150),
      [&done](absl::StatusOr<v1::Response> response) { done.set_value(response.status()); });
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(3)), std::future_status::ready);
  EXPECT_EQ(future.get().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(Clock::now() - start, milliseconds(140));
}

TEST_F(ClientTest, CallInsideACallbackIsRefusedNotDeadlocked) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::promise<absl::StatusCode> done;
  client->CallAsync(StatusRequest(), absl::Seconds(2), [&](absl::StatusOr<v1::Response>) {
    done.set_value(client->Call(StatusRequest()).status().code());
  });
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(3)), std::future_status::ready);
  EXPECT_EQ(future.get(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientTest, OversizedRequestIsRefused) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  absl::StatusOr<v1::Response> response =
      client->Call(TaggedRequest(std::string(kMaxFramePayload, 'x')), absl::Seconds(2));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(client->Call(StatusRequest(), absl::Seconds(2)).ok());
}

TEST_F(ClientTest, ReconnectsOnTheNextCallAfterTheServerRestarts) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Call(StatusRequest(), absl::Seconds(2)).ok());

  // A call in flight when the server goes away fails with Unavailable.
  handler_.mode = Mode::kNeverAnswer;
  std::promise<absl::Status> in_flight;
  client->CallAsync(TaggedRequest("in flight"), absl::Seconds(5),
                    [&in_flight](absl::StatusOr<v1::Response> response) {
                      in_flight.set_value(response.status());
                    });
  ASSERT_TRUE(WaitFor([&] { return handler_.held() == 1; }));
  StopServer();
  handler_.DropHeld();
  auto future = in_flight.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(3)), std::future_status::ready);
  EXPECT_EQ(future.get().code(), absl::StatusCode::kUnavailable);

  // Nobody listens: the next call tries to reconnect and fails.
  handler_.mode = Mode::kNormal;
  EXPECT_EQ(client->Call(StatusRequest(), absl::Seconds(2)).status().code(),
            absl::StatusCode::kUnavailable);

  // The server is back (its socket file was stale and is replaced).
  StartServer();
  absl::StatusOr<v1::Response> response = client->Call(StatusRequest(), absl::Seconds(2));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status().server_version(), "test-server");
  EXPECT_EQ(handler_.hellos(), 2);
}

TEST_F(ClientTest, EightThreadsOfConcurrentCallsAreMatched) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::atomic<int> matched{0};
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string tag = "thread " + std::to_string(t) + " call " + std::to_string(i);
        absl::StatusOr<v1::Response> response = client->Call(TaggedRequest(tag), absl::Seconds(5));
        if (response.ok() && response->error().message() == tag) {
          ++matched;
        } else {
          ++wrong;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(matched.load(), 1600);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(handler_.hellos(), 1);
}

TEST_F(ClientTest, ABurstOfAsyncCallsBeyondTheServersInFlightCap) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  constexpr int kCalls = 1000;
  std::mutex mu;
  std::set<std::string> answered;
  int failed = 0;
  std::promise<void> all_done;
  for (int i = 0; i < kCalls; ++i) {
    const std::string tag = "burst " + std::to_string(i);
    client->CallAsync(TaggedRequest(tag), absl::Seconds(5),
                      [&, tag](absl::StatusOr<v1::Response> response) {
                        std::lock_guard<std::mutex> lock(mu);
                        if (response.ok() && response->error().message() == tag) {
                          answered.insert(tag);
                        } else {
                          ++failed;
                        }
                        if (static_cast<int>(answered.size()) + failed == kCalls) {
                          all_done.set_value();
                        }
                      });
  }
  auto future = all_done.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(8)), std::future_status::ready);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(static_cast<int>(answered.size()), kCalls);
  EXPECT_EQ(failed, 0);
}

TEST_F(ClientTest, MalformedResponseBreaksTheConnectionAndTheNextCallReconnects) {
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  handler_.mode = Mode::kGarbage;
  absl::StatusOr<v1::Response> response = client->Call(StatusRequest(), absl::Seconds(2));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("malformed response"));
  handler_.mode = Mode::kNormal;
  EXPECT_TRUE(client->Call(StatusRequest(), absl::Seconds(2)).ok());
  EXPECT_EQ(handler_.hellos(), 2);
}

TEST_F(ClientTest, OversizedResponseFrameBreaksTheConnection) {
  // A hand-written server: answers Hello, then announces a 65,537-byte frame.
  absl::StatusOr<int> listen_fd = BindUnixSocket(path_, 0660);
  ASSERT_TRUE(listen_fd.ok());
  std::thread server([fd = *listen_fd] {
    RawClient peer(::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC));
    std::optional<std::string> hello_frame = peer.ReadFrame();
    if (!hello_frame) return;
    v1::Request hello;
    hello.ParseFromString(*hello_frame);
    v1::Response reply;
    reply.set_request_id(hello.request_id());
    reply.mutable_hello()->set_protocol_version(1);
    peer.SendFrame(reply.SerializeAsString());
    if (!peer.ReadFrame()) return;
    peer.SendAll(Header(kMaxFramePayload + 1) + std::string(100, 'z'));
    peer.WaitClosed();
  });
  {
    std::unique_ptr<Client> client = ConnectOrDie();
    ASSERT_NE(client, nullptr);
    absl::StatusOr<v1::Response> response = client->Call(StatusRequest(), absl::Seconds(2));
    EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(response.status().message()), HasSubstr("65537"));
  }
  server.join();
  ::close(*listen_fd);
}

TEST_F(ClientTest, DestroyingTheClientFailsPendingCalls) {
  handler_.mode = Mode::kNeverAnswer;
  StartServer();
  std::unique_ptr<Client> client = ConnectOrDie();
  ASSERT_NE(client, nullptr);
  std::promise<absl::Status> done;
  client->CallAsync(
      TaggedRequest("pending"), absl::Seconds(30),
      [&done](absl::StatusOr<v1::Response> response) { done.set_value(response.status()); });
  ASSERT_TRUE(WaitFor([&] { return handler_.held() == 1; }));
  const auto start = Clock::now();
  client.reset();
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  auto future = done.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_EQ(future.get().code(), absl::StatusCode::kUnavailable);
  handler_.DropHeld();
}

TEST(ErrorToStatusTest, MapsEveryCode) {
  struct Case {
    v1::Error::Code code;
    absl::StatusCode status;
    const char* name;
  };
  const Case cases[] = {
      {v1::Error::INVALID_ARGUMENT, absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT"},
      {v1::Error::UNAUTHENTICATED, absl::StatusCode::kUnauthenticated, "UNAUTHENTICATED"},
      {v1::Error::PERMISSION_DENIED, absl::StatusCode::kPermissionDenied, "PERMISSION_DENIED"},
      {v1::Error::NOT_FOUND, absl::StatusCode::kNotFound, "NOT_FOUND"},
      {v1::Error::REVOKED, absl::StatusCode::kFailedPrecondition, "REVOKED"},
      {v1::Error::REAUTH_REQUIRED, absl::StatusCode::kFailedPrecondition, "REAUTH_REQUIRED"},
      {v1::Error::UNAVAILABLE, absl::StatusCode::kUnavailable, "UNAVAILABLE"},
      {v1::Error::DEADLINE_EXCEEDED, absl::StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED"},
      {v1::Error::RESOURCE_EXHAUSTED, absl::StatusCode::kResourceExhausted, "RESOURCE_EXHAUSTED"},
      {v1::Error::INTERNAL, absl::StatusCode::kInternal, "INTERNAL"},
      {v1::Error::FAILED_PRECONDITION, absl::StatusCode::kFailedPrecondition,
       "FAILED_PRECONDITION"},
      {v1::Error::ALREADY_EXISTS, absl::StatusCode::kAlreadyExists, "ALREADY_EXISTS"},
      {v1::Error::CODE_UNSPECIFIED, absl::StatusCode::kUnknown, "CODE_UNSPECIFIED"},
  };
  for (const Case& c : cases) {
    v1::Error error;
    error.set_code(c.code);
    error.set_message("the message");
    const absl::Status status = ErrorToStatus(error);
    EXPECT_EQ(status.code(), c.status) << c.name;
    EXPECT_EQ(status.GetPayload("grantvault.error_code"), absl::Cord(c.name)) << c.name;
    EXPECT_THAT(std::string(status.message()), HasSubstr("the message"));
  }

  v1::Error revoked;
  revoked.set_code(v1::Error::REVOKED);
  revoked.set_message("grant g-1 was revoked");
  EXPECT_EQ(std::string(ErrorToStatus(revoked).message()), "REVOKED: grant g-1 was revoked");
  v1::Error reauth;
  reauth.set_code(v1::Error::REAUTH_REQUIRED);
  reauth.set_message("grant g-2");
  EXPECT_EQ(std::string(ErrorToStatus(reauth).message()), "REAUTH_REQUIRED: grant g-2");

  v1::Error busy;
  busy.set_code(v1::Error::UNAVAILABLE);
  busy.set_retry_after_ms(250);
  EXPECT_EQ(ErrorToStatus(busy).GetPayload("grantvault.retry_after_ms"), absl::Cord("250"));

  v1::Error unknown;
  unknown.set_code(static_cast<v1::Error::Code>(99));
  EXPECT_EQ(ErrorToStatus(unknown).code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(ErrorToStatus(unknown).GetPayload("grantvault.error_code"), absl::Cord("99"));
}

}  // namespace
}  // namespace grantvault::ipc
