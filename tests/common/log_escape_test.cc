#include "common/log_escape.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace grantvault {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(EscapeForLogTest, PlainIdentifiersAreKept) {
  EXPECT_EQ(EscapeForLog("ws_acme"), "ws_acme");
  EXPECT_EQ(EscapeForLog("google_workspace/gmail.send:v2"), "google_workspace/gmail.send:v2");
}

TEST(EscapeForLogTest, ANewlineCannotStartAForgedLine) {
  const std::string escaped = EscapeForLog("acme\ninfo grant.revoked admin=root\r");
  EXPECT_EQ(escaped, "acme\\x0ainfo\\x20grant.revoked\\x20admin=root\\x0d");
  EXPECT_THAT(escaped, Not(HasSubstr("\n")));
  EXPECT_THAT(escaped, Not(HasSubstr("\r")));
}

TEST(EscapeForLogTest, ASpaceCannotAddAField) {
  EXPECT_EQ(EscapeForLog("acme uid=0"), "acme\\x20uid=0");
}

TEST(EscapeForLogTest, ControlsQuotesAndBackslashesAreEscaped) {
  EXPECT_EQ(EscapeForLog(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(EscapeForLog("\x1b[31mred\x7f"), "\\x1b[31mred\\x7f");
  EXPECT_EQ(EscapeForLog("say \"hi\"\\"), "say\\x20\\x22hi\\x22\\\\");
  // An escaped backslash cannot be mistaken for an escape sequence.
  EXPECT_EQ(EscapeForLog("\\x0a"), "\\\\x0a");
}

TEST(EscapeForLogTest, Utf8IsKeptButInvisibleControlsAndInvalidBytesAreNot) {
  EXPECT_EQ(EscapeForLog("Zürich-日本"), "Zürich-日本");
  EXPECT_EQ(EscapeForLog("a\xc2\x85z"), "a\\xc2\\x85z");           // NEL (C1)
  EXPECT_EQ(EscapeForLog("a\xe2\x80\xa8z"), "a\\xe2\\x80\\xa8z");  // line separator
  EXPECT_EQ(EscapeForLog("a\xe2\x80\xaez"), "a\\xe2\\x80\\xaez");  // right-to-left override
  EXPECT_EQ(EscapeForLog("a\xff\xc3z"), "a\\xff\\xc3z");           // invalid
  EXPECT_EQ(EscapeForLog("a\xc0\x8a"), "a\\xc0\\x8a");             // overlong newline
  EXPECT_EQ(EscapeForLog("a\xed\xa0\x80"), "a\\xed\\xa0\\x80");    // surrogate
}

TEST(EscapeForLogTest, TextKeepsItsSpacesButNotItsLineBreaks) {
  EXPECT_EQ(EscapeTextForLog("workspace 'a\nb' is \"not\" allowed"),
            "workspace 'a\\x0ab' is \"not\" allowed");
  EXPECT_EQ(EscapeTextForLog("tab\there\\"), "tab\\x09here\\\\");
  EXPECT_EQ(EscapeTextForLog(std::string(2000, 'x')),
            std::string(kMaxLoggedTextBytes, 'x') + "…(+976 bytes)");
}

TEST(EscapeForLogTest, EmptyIsVisible) { EXPECT_EQ(EscapeForLog(""), "\"\""); }

TEST(EscapeForLogTest, LongValuesAreBoundedWithoutSplittingACharacter) {
  EXPECT_EQ(EscapeForLog(std::string(300, 'a')), std::string(256, 'a') + "…(+44 bytes)");
  EXPECT_EQ(EscapeForLog("abcdef", 4), "abcd…(+2 bytes)");
  // "é" is two bytes: it does not fit after three, and is not split.
  EXPECT_EQ(EscapeForLog("abcé", 4), "abc…(+2 bytes)");
  EXPECT_EQ(EscapeForLog(std::string(10000, '\n')).size(),
            4 * kMaxLoggedValueBytes + std::string("…(+9744 bytes)").size());
}

}  // namespace
}  // namespace grantvault
