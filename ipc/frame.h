// Framing shared by both sockets: a 4-byte big-endian length N, then N bytes
// of protobuf. 1 <= N <= 65,536; anything else ends the connection.
#ifndef GRANTVAULT_IPC_FRAME_H_
#define GRANTVAULT_IPC_FRAME_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace grantvault::ipc {

inline constexpr size_t kFrameHeaderSize = 4;
inline constexpr size_t kMaxFramePayload = 65536;

// Header ‖ payload. `payload` must be 1..kMaxFramePayload bytes (checked by
// the caller; a violation aborts: it is a bug, not input).
std::string EncodeFrame(std::string_view payload);
std::array<uint8_t, kFrameHeaderSize> EncodeFrameHeader(size_t payload_size);

// The payload length a header announces; InvalidArgument (naming the length)
// for zero or more than kMaxFramePayload.
absl::StatusOr<uint32_t> DecodeFrameHeader(const std::array<uint8_t, kFrameHeaderSize>& header);

}  // namespace grantvault::ipc

#endif  // GRANTVAULT_IPC_FRAME_H_
