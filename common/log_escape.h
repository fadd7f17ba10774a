// Caller-supplied text in log lines. The daemon logs "event key=value …"
// lines; a workspace id, tool name, admin user or reason comes from whoever
// is on the other end of a socket, and unescaped it could end a line and
// forge the next one, add a "key=value" field of its own, or steer a
// terminal. EscapeForLog is the one place that makes such text inert.
#ifndef GRANTVAULT_COMMON_LOG_ESCAPE_H_
#define GRANTVAULT_COMMON_LOG_ESCAPE_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace grantvault {

// The most bytes of one value (or one message) written to a log line; the
// rest is dropped and counted ("…(+N bytes)").
inline constexpr size_t kMaxLoggedValueBytes = 256;
inline constexpr size_t kMaxLoggedTextBytes = 1024;

// `text` as one log field: printable ASCII other than space, '"' and '\' and
// well-formed UTF-8 characters are kept; everything else — control
// characters (newline, CR, ESC, DEL, the C1 range), space, '"', invalid
// UTF-8, and the line/paragraph separators and bidirectional overrides of
// Unicode — is written as \xNN per byte ('\' as \\). An empty value is `""`.
// At most `max_bytes` of `text` are kept (never splitting a character).
// Not for secrets: nothing secret is ever logged, escaped or not.
std::string EscapeForLog(std::string_view text, size_t max_bytes = kMaxLoggedValueBytes);

// The same for free text (an error message, a reason) written as the last
// field of a line: spaces and '"' are kept so that it stays readable;
// everything else is escaped as above.
std::string EscapeTextForLog(std::string_view text, size_t max_bytes = kMaxLoggedTextBytes);

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_LOG_ESCAPE_H_
