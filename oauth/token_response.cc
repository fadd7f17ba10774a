#include "oauth/token_response.h"

#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/strings.h"

namespace grantvault::oauth {
namespace {

using nlohmann::json;

// Wipes every string in a parsed document before it is freed.
void Wipe(json& j) {
  if (j.is_string()) {
    std::string& s = j.get_ref<std::string&>();
    OPENSSL_cleanse(s.data(), s.size());
  } else if (j.is_structured()) {
    for (auto& child : j) Wipe(child);
  }
}

struct WipeOnExit {
  json& j;
  ~WipeOnExit() { Wipe(j); }
};

absl::Status Malformed(std::string_view why) {
  return absl::UnavailableError(absl::StrCat("malformed token response: ", Sv(why)));
}

// The server's error code and description, cut to a sane length and with
// nothing but printable ASCII (they are echoed to admins and logs).
std::string Printable(std::string s, size_t max) {
  if (s.size() > max) s.resize(max);
  for (char& c : s) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return s;
}

}  // namespace

absl::StatusOr<TokenResponse> ParseTokenResponse(const HttpResponse& response,
                                                 std::string_view scope_separator) {
  if (response.status >= 300 && response.status < 400) {
    return absl::UnavailableError(absl::StrCat("the token endpoint redirected (HTTP ",
                                               response.status, "); redirects are not followed"));
  }
  if (response.status == 429 || response.status >= 500) {
    std::optional<std::string> retry = response.Header("Retry-After");
    return absl::UnavailableError(
        absl::StrCat("the token endpoint is unavailable (HTTP ", response.status, ")",
                     retry ? absl::StrCat("; retry after ", Printable(*retry, 32), " s") : ""));
  }
  json doc = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  WipeOnExit wipe{doc};
  if (!doc.is_object()) {
    if (response.status != 200) {
      return absl::FailedPreconditionError(
          absl::StrCat("the token endpoint refused the request (HTTP ", response.status, ")"));
    }
    return Malformed("not a JSON object");
  }
  if (doc.contains("error")) {
    const json& error = doc["error"];
    std::string code = error.is_string() ? Printable(error.get<std::string>(), 64) : "unknown";
    std::string description;
    if (auto d = doc.find("error_description"); d != doc.end() && d->is_string()) {
      description = absl::StrCat(" (", Printable(d->get<std::string>(), 256), ")");
    }
    return absl::FailedPreconditionError(
        absl::StrCat("the token endpoint refused the request: ", code, description));
  }
  if (response.status != 200) {
    return absl::FailedPreconditionError(
        absl::StrCat("the token endpoint refused the request (HTTP ", response.status, ")"));
  }
  TokenResponse out;
  auto access = doc.find("access_token");
  if (access == doc.end() || !access->is_string() || access->get_ref<std::string&>().empty()) {
    return Malformed("no access_token");
  }
  out.access_token = SecretBytes::TakeFrom(access->get_ref<std::string&>());
  if (auto t = doc.find("token_type"); t != doc.end()) {
    if (!t->is_string()) return Malformed("token_type is not a string");
    out.token_type = Printable(t->get<std::string>(), 32);
  }
  if (auto e = doc.find("expires_in"); e != doc.end()) {
    int64_t seconds = 0;
    if (e->is_number_integer()) {
      seconds = e->get<int64_t>();
    } else if (e->is_string()) {  // some servers send "3600"
      if (!absl::SimpleAtoi(e->get_ref<const std::string&>(), &seconds)) {
        return Malformed("expires_in is not a number");
      }
    } else {
      return Malformed("expires_in is not a number");
    }
    if (seconds <= 0 || seconds > 10 * 365 * 86400) return Malformed("expires_in is out of range");
    out.expires_in = absl::Seconds(seconds);
  }
  if (auto r = doc.find("refresh_token"); r != doc.end() && !r->is_null()) {
    if (!r->is_string()) return Malformed("refresh_token is not a string");
    out.refresh_token = SecretBytes::TakeFrom(r->get_ref<std::string&>());
  }
  if (auto s = doc.find("scope"); s != doc.end() && !s->is_null()) {
    if (!s->is_string()) return Malformed("scope is not a string");
    std::vector<std::string> scopes =
        absl::StrSplit(s->get_ref<const std::string&>(), Sv(scope_separator), absl::SkipEmpty());
    out.scopes = std::move(scopes);
  }
  if (auto i = doc.find("id_token"); i != doc.end() && !i->is_null()) {
    if (!i->is_string()) return Malformed("id_token is not a string");
    out.id_token = i->get<std::string>();
  }
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& key = it.key();
    if (key.find("token") != std::string::npos || key.find("secret") != std::string::npos ||
        key == "scope" || key == "expires_in") {
      continue;
    }
    if (it->is_string()) {
      out.extra[key] = Printable(it->get<std::string>(), 1024);
    } else if (it->is_number()) {
      out.extra[key] = it->dump();
    }
  }
  return out;
}

}  // namespace grantvault::oauth
