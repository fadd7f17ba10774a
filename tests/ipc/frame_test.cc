#include "ipc/frame.h"

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace grantvault::ipc {
namespace {

using ::testing::HasSubstr;

TEST(FrameTest, EncodesBigEndianLengthThenPayload) {
  const std::string frame = EncodeFrame("hello");
  EXPECT_EQ(frame, std::string("\x00\x00\x00\x05hello", 9));
}

TEST(FrameTest, EncodesHeaderBytes) {
  EXPECT_EQ(EncodeFrameHeader(1), (std::array<uint8_t, 4>{0, 0, 0, 1}));
  EXPECT_EQ(EncodeFrameHeader(0x1234), (std::array<uint8_t, 4>{0, 0, 0x12, 0x34}));
  EXPECT_EQ(EncodeFrameHeader(kMaxFramePayload), (std::array<uint8_t, 4>{0, 1, 0, 0}));
}

TEST(FrameTest, RoundTripsEverySizeClass) {
  for (size_t size : {size_t{1}, size_t{255}, size_t{256}, size_t{65535}, kMaxFramePayload}) {
    const std::string payload(size, 'x');
    const std::string frame = EncodeFrame(payload);
    ASSERT_EQ(frame.size(), kFrameHeaderSize + size);
    std::array<uint8_t, kFrameHeaderSize> header;
    for (size_t i = 0; i < kFrameHeaderSize; ++i) header[i] = static_cast<uint8_t>(frame[i]);
    const absl::StatusOr<uint32_t> length = DecodeFrameHeader(header);
    ASSERT_TRUE(length.ok()) << length.status();
    EXPECT_EQ(*length, size);
    EXPECT_EQ(frame.substr(kFrameHeaderSize), payload);
  }
}

TEST(FrameTest, DecodeAcceptsBounds) {
  EXPECT_EQ(*DecodeFrameHeader({0, 0, 0, 1}), 1u);
  EXPECT_EQ(*DecodeFrameHeader({0, 1, 0, 0}), 65536u);
}

TEST(FrameTest, DecodeRefusesZero) {
  const absl::StatusOr<uint32_t> length = DecodeFrameHeader({0, 0, 0, 0});
  EXPECT_EQ(length.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(length.status().message()), HasSubstr("frame length 0"));
}

TEST(FrameTest, DecodeRefusesOneOverTheMaximum) {
  const absl::StatusOr<uint32_t> length = DecodeFrameHeader({0, 1, 0, 1});
  EXPECT_EQ(length.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(length.status().message()), HasSubstr("65537"));
}

TEST(FrameTest, DecodeRefusesFourGiB) {
  const absl::StatusOr<uint32_t> length = DecodeFrameHeader({0xff, 0xff, 0xff, 0xff});
  EXPECT_EQ(length.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(length.status().message()), HasSubstr("4294967295"));
}

TEST(FrameDeathTest, EncodingAnEmptyOrOversizedPayloadIsABug) {
  EXPECT_DEATH(EncodeFrame(""), "out of range");
  EXPECT_DEATH(EncodeFrameHeader(kMaxFramePayload + 1), "out of range");
}

}  // namespace
}  // namespace grantvault::ipc
