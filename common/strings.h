// Debian 12's abseil is built with its own absl::string_view (not an alias of
// std::string_view), and the two do not convert implicitly. grantvault's
// interfaces use std::string_view; wrap one with Sv() where an absl string
// function (StrCat, StrFormat, Status messages) wants an absl::string_view.
#ifndef GRANTVAULT_COMMON_STRINGS_H_
#define GRANTVAULT_COMMON_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace grantvault {

inline absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

}  // namespace grantvault

#endif  // GRANTVAULT_COMMON_STRINGS_H_
