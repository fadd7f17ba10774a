// Wiping of ordinary strings and parsed JSON that held secrets (codes, verifiers, client
// secrets, tokens): the oauth module's one copy of these helpers.
#ifndef GRANTVAULT_OAUTH_WIPING_H_
#define GRANTVAULT_OAUTH_WIPING_H_

#include <nlohmann/json.hpp>
#include <string>

#include "common/secret_bytes.h"

namespace grantvault::oauth {

// A std::string wiped when it dies: request bodies, headers and URLs with a secret in them.
struct WipedString {
  std::string value;
  ~WipedString() { WipeString(value); }
};

// Wipes every string in a parsed document (before it is freed).
inline void WipeJson(nlohmann::json& j) {
  if (j.is_string()) {
    WipeString(j.get_ref<std::string&>());
  } else if (j.is_structured()) {
    for (auto& child : j) WipeJson(child);
  }
}

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_WIPING_H_
