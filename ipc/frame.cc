#include "ipc/frame.h"

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace grantvault::ipc {
namespace {

void CheckPayloadSize(size_t payload_size) {
  if (payload_size == 0 || payload_size > kMaxFramePayload) {
    std::fprintf(stderr, "ipc: bug: frame payload of %zu bytes is out of range 1..%zu\n",
                 payload_size, kMaxFramePayload);
    std::abort();
  }
}

}  // namespace

std::array<uint8_t, kFrameHeaderSize> EncodeFrameHeader(size_t payload_size) {
  CheckPayloadSize(payload_size);
  const auto n = static_cast<uint32_t>(payload_size);
  return {static_cast<uint8_t>(n >> 24), static_cast<uint8_t>(n >> 16),
          static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)};
}

std::string EncodeFrame(std::string_view payload) {
  const std::array<uint8_t, kFrameHeaderSize> header = EncodeFrameHeader(payload.size());
  std::string frame;
  frame.reserve(kFrameHeaderSize + payload.size());
  for (uint8_t byte : header) frame.push_back(static_cast<char>(byte));
  frame.append(payload);
  return frame;
}

absl::StatusOr<uint32_t> DecodeFrameHeader(const std::array<uint8_t, kFrameHeaderSize>& header) {
  const uint32_t n = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                     (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  if (n == 0 || n > kMaxFramePayload) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame length ", n, " is out of range 1..", kMaxFramePayload));
  }
  return n;
}

}  // namespace grantvault::ipc
