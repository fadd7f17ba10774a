#include "common/log_escape.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace grantvault {
namespace {

// The length of the well-formed UTF-8 sequence starting at text[i] (2 to 4),
// or 0 when it is not one (overlong forms, surrogates and code points above
// U+10FFFF included). `code_point` receives its value.
size_t Utf8SequenceAt(std::string_view text, size_t i, uint32_t& code_point) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[i + k]); };
  const uint8_t lead = byte(0);
  size_t length = 0;
  uint32_t min = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    code_point = lead & 0x1F;
    min = 0x80;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    code_point = lead & 0x0F;
    min = 0x800;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    code_point = lead & 0x07;
    min = 0x10000;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(k) & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte(k) & 0x3F);
  }
  if (code_point < min || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) {
    return 0;
  }
  return length;
}

// Characters that are well-formed but still change how a line reads: C1
// controls, line and paragraph separators, bidirectional embeddings,
// overrides and isolates.
bool IsInvisibleControl(uint32_t c) {
  return (c >= 0x80 && c <= 0x9F) || c == 0x2028 || c == 0x2029 || (c >= 0x202A && c <= 0x202E) ||
         (c >= 0x2066 && c <= 0x2069) || c == 0x200E || c == 0x200F || c == 0x061C;
}

void AppendEscaped(std::string& out, std::string_view bytes) {
  for (char c : bytes) absl::StrAppendFormat(&out, "\\x%02x", static_cast<uint8_t>(c));
}

std::string Escape(std::string_view text, size_t max_bytes, bool keep_spaces) {
  if (text.empty()) return "\"\"";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    const auto u = static_cast<uint8_t>(c);
    size_t length = 1;
    uint32_t code_point = u;
    bool well_formed = true;
    if (u >= 0x80) {
      length = Utf8SequenceAt(text, i, code_point);
      if (length == 0) {  // an invalid byte: escaped alone
        length = 1;
        well_formed = false;
      }
    }
    if (i + length > max_bytes) break;
    if (u < 0x80) {
      if (c == '\\') {
        out += "\\\\";
      } else if (keep_spaces && (c == ' ' || c == '"')) {
        out += c;
      } else if (u <= 0x20 || u == 0x7F || c == '"') {
        AppendEscaped(out, text.substr(i, 1));
      } else {
        out += c;
      }
    } else if (!well_formed || IsInvisibleControl(code_point)) {
      AppendEscaped(out, text.substr(i, length));  // invalid, or a control
    } else {
      out.append(text.substr(i, length));
    }
    i += length;
  }
  if (i < text.size()) absl::StrAppend(&out, "…(+", text.size() - i, " bytes)");
  return out;
}

}  // namespace

std::string EscapeForLog(std::string_view text, size_t max_bytes) {
  return Escape(text, max_bytes, /*keep_spaces=*/false);
}

std::string EscapeTextForLog(std::string_view text, size_t max_bytes) {
  return Escape(text, max_bytes, /*keep_spaces=*/true);
}

}  // namespace grantvault
