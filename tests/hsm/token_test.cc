#include "hsm/token.h"

#include <atomic>
#include <fstream>
#include <thread>
#include <vector>

#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/softhsm_token.h"

namespace grantvault::hsm {
namespace {

using ::testing::HasSubstr;
using testing::SoftHsmToken;

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = SoftHsmToken::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    hsm_ = std::move(*t);
  }
  std::unique_ptr<SoftHsmToken> hsm_;
};

TEST_F(TokenTest, OpensByLabelAndLogsIn) {
  absl::StatusOr<Session> s = hsm_->token().Acquire();
  ASSERT_TRUE(s.ok()) << s.status();
  CK_SESSION_INFO info;
  ASSERT_EQ(s->fn()->C_GetSessionInfo(s->handle(), &info), CKR_OK);
  EXPECT_EQ(info.state, static_cast<CK_STATE>(CKS_RW_USER_FUNCTIONS));
}

TEST_F(TokenTest, MissingModulePathIsNamed) {
  TokenOptions options = hsm_->options();
  options.module_path = "/nonexistent/libpkcs11-missing.so";
  absl::StatusOr<std::unique_ptr<Token>> t = Token::Open(options);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("/nonexistent/libpkcs11-missing.so"));
  EXPECT_THAT(t.status().message(), HasSubstr("does not exist"));
}

TEST_F(TokenTest, UnknownTokenLabelIsNamedWithTheLabelsPresent) {
  TokenOptions options = hsm_->options();
  options.token_label = "no-such-token";
  absl::StatusOr<std::unique_ptr<Token>> t = Token::Open(options);
  ASSERT_TRUE(absl::IsNotFound(t.status())) << t.status();
  EXPECT_THAT(t.status().message(), HasSubstr("'no-such-token'"));
  EXPECT_THAT(t.status().message(), HasSubstr(testing::kTestTokenLabel));
}

TEST_F(TokenTest, UnreadablePinFileIsNamed) {
  TokenOptions options = hsm_->options();
  options.pin_file = hsm_->dir() + "/missing.pin";
  absl::StatusOr<std::unique_ptr<Token>> t = Token::Open(options);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("HSM PIN file"));
  EXPECT_THAT(t.status().message(), HasSubstr("missing.pin"));
}

TEST_F(TokenTest, WrongPinIsRefusedClearly) {
  TokenOptions options = hsm_->options();
  options.pin_file = hsm_->dir() + "/wrong.pin";
  ASSERT_TRUE(WriteFileAtomically(options.pin_file, "not-the-pin", 0600).ok());
  hsm_->Close();  // log out, so that the next login checks the PIN
  absl::StatusOr<std::unique_ptr<Token>> t = Token::Open(options);
  ASSERT_TRUE(absl::IsUnauthenticated(t.status())) << t.status();
  EXPECT_THAT(t.status().message(), HasSubstr("refused the PIN"));
  EXPECT_THAT(t.status().message(), HasSubstr("wrong.pin"));
  EXPECT_THAT(t.status().message(), ::testing::Not(HasSubstr("not-the-pin")));
}

TEST_F(TokenTest, PoolServesManyThreadsWithBoundedSessions) {
  ASSERT_TRUE(hsm_->Reopen().ok());
  std::atomic<int> in_use{0}, max_in_use{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        absl::StatusOr<Session> s = hsm_->token().Acquire();
        if (!s.ok()) {
          ++failures;
          continue;
        }
        int now = ++in_use;
        int seen = max_in_use.load();
        while (now > seen && !max_in_use.compare_exchange_weak(seen, now)) {
        }
        CK_SESSION_INFO info;
        if (s->fn()->C_GetSessionInfo(s->handle(), &info) != CKR_OK) ++failures;
        --in_use;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(max_in_use.load(), 8);
}

TEST_F(TokenTest, BrokenSessionIsReplacedAndStillLoggedIn) {
  {
    absl::StatusOr<Session> s = hsm_->token().Acquire();
    ASSERT_TRUE(s.ok());
    s->MarkBroken();  // closed on release; the token logs out with its last session
  }
  absl::StatusOr<Session> s = hsm_->token().Acquire();
  ASSERT_TRUE(s.ok()) << s.status();
  CK_SESSION_INFO info;
  ASSERT_EQ(s->fn()->C_GetSessionInfo(s->handle(), &info), CKR_OK);
  EXPECT_EQ(info.state, static_cast<CK_STATE>(CKS_RW_USER_FUNCTIONS));
}

}  // namespace
}  // namespace grantvault::hsm
