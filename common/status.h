// Status helpers shared by every module. Errors cross module boundaries as
// absl::Status / absl::StatusOr values; no exception leaves a module.
#ifndef GRANTVAULT_COMMON_STATUS_H_
#define GRANTVAULT_COMMON_STATUS_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"

#define GV_STATUS_CONCAT_INNER_(a, b) a##b
#define GV_STATUS_CONCAT_(a, b) GV_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function
// if it is not OK.
#define GV_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status gv_status_ = (expr);      \
    if (!gv_status_.ok()) return gv_status_; \
  } while (false)

// GV_ASSIGN_OR_RETURN(auto x, MakeX()); evaluates a StatusOr, returns its status
// on error, otherwise moves the value into the declaration on the left.
#define GV_ASSIGN_OR_RETURN(lhs, expr) \
  GV_ASSIGN_OR_RETURN_IMPL_(GV_STATUS_CONCAT_(gv_statusor_, __LINE__), lhs, expr)

#define GV_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

namespace grantvault {

// An Unavailable message from the token and revocation engines ends with
// "retry_after_ms=N" when the provider (or a breaker) said when to try again.
// Returns N, or nullopt when the message does not end so.
inline std::optional<uint32_t> RetryAfterMillis(const absl::Status& status) {
  constexpr absl::string_view kKey = "retry_after_ms=";
  const absl::string_view message = status.message();
  const size_t at = message.rfind(kKey);
  uint32_t ms = 0;
  if (at == absl::string_view::npos || !absl::SimpleAtoi(message.substr(at + kKey.size()), &ms)) {
    return std::nullopt;
  }
  return ms;
}

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_STATUS_H_
