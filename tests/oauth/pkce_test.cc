#include "oauth/pkce.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace grantvault::oauth {
namespace {

using ::testing::HasSubstr;

TEST(PkceTest, ChallengeMatchesRfc7636AppendixB) {
  SecretBytes verifier =
      SecretBytes::CopyOf(std::string_view("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
  EXPECT_EQ(PkceChallengeS256(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

TEST(PkceTest, RandomValuesHaveTheRightShapeAndDoNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string state = NewState();
    EXPECT_EQ(state.size(), 43u);
    EXPECT_EQ(
        state.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
        std::string::npos);
    EXPECT_TRUE(seen.insert(state).second);
  }
  EXPECT_EQ(NewPkceVerifier().size(), 43u);  // RFC 7636: 43..128 characters
  EXPECT_EQ(StateDigest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(PkceTest, ParsesACallbackWithACode) {
  absl::StatusOr<Callback> cb = ParseCallback(
      "http://127.0.0.1:8765/callback?code=Spxl%2BOBe&state=af0ifjsldkj&iss=https%3A%2F%2Fidp");
  ASSERT_TRUE(cb.ok()) << cb.status();
  EXPECT_EQ(cb->code.view(), "Spxl+OBe");
  EXPECT_EQ(cb->state, "af0ifjsldkj");
  EXPECT_EQ(cb->issuer, "https://idp");
  EXPECT_TRUE(cb->error.empty());
}

TEST(PkceTest, ParsesAnErrorCallback) {
  absl::StatusOr<Callback> cb =
      ParseCallback("state=s1&error=access_denied&error_description=The+user+said+no");
  ASSERT_TRUE(cb.ok()) << cb.status();
  EXPECT_EQ(cb->error, "access_denied");
  EXPECT_EQ(cb->error_description, "The user said no");
  EXPECT_TRUE(cb->code.empty());
}

TEST(PkceTest, RefusesMalformedCallbacksWithoutEchoingTheCode) {
  EXPECT_FALSE(ParseCallback("http://x/cb?code=abc").ok());  // no state
  EXPECT_FALSE(ParseCallback("http://x/cb?state=s").ok());   // neither code nor error
  EXPECT_FALSE(ParseCallback("code=a&code=b&state=s").ok());
  absl::StatusOr<Callback> bad = ParseCallback("code=secret-code%zz&state=s");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), ::testing::Not(HasSubstr("secret-code")));
  EXPECT_FALSE(ParseCallback("state=s&code=%4").ok());
}

}  // namespace
}  // namespace grantvault::oauth
