#include "oauth/token_response.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/pkce.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {
namespace {

using nlohmann::json;

struct WipeOnExit {
  json& j;
  ~WipeOnExit() { WipeJson(j); }
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

absl::Status Refused(int status) {
  return absl::FailedPreconditionError(
      absl::StrCat("the token endpoint refused the request (HTTP ", status, ")"));
}

// Redirects, rate limits and server errors, whatever the body says.
absl::Status CheckTransport(const HttpResponse& response) {
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
  return absl::OkStatus();
}

// An RFC 6749 §5.2 error object (also with HTTP 200: GitHub, Slack), or a non-200 status.
absl::Status CheckError(const json& doc, int status) {
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
  if (status != 200) return Refused(status);
  return absl::OkStatus();
}

// A form-encoded answer (GitHub without Accept: application/json) as a JSON object of strings.
absl::StatusOr<json> FormToJson(std::string_view body) {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> fields = ParseQuery(body);
  if (!fields.ok()) return Malformed("not a form-encoded body");
  json doc = json::object();
  for (auto& [name, value] : *fields) {
    doc[name] = value;
    WipeMemory(value.data(), value.size());
  }
  return doc;
}

// access_token, token_type, expires_in, refresh_token, scope and id_token of `obj`.
absl::Status ReadTokenFields(json& obj, std::string_view scope_separator, TokenResponse& out) {
  auto access = obj.find("access_token");
  if (access == obj.end() || !access->is_string() || access->get_ref<std::string&>().empty()) {
    return Malformed("no access_token");
  }
  out.access_token = SecretBytes::TakeFrom(access->get_ref<std::string&>());
  if (auto t = obj.find("token_type"); t != obj.end()) {
    if (!t->is_string()) return Malformed("token_type is not a string");
    out.token_type = Printable(t->get<std::string>(), 32);
  }
  if (auto e = obj.find("expires_in"); e != obj.end() && !e->is_null()) {
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
  if (auto r = obj.find("refresh_token"); r != obj.end() && !r->is_null()) {
    if (!r->is_string()) return Malformed("refresh_token is not a string");
    out.refresh_token = SecretBytes::TakeFrom(r->get_ref<std::string&>());
  }
  if (auto s = obj.find("scope"); s != obj.end() && !s->is_null() && s->is_array()) {
    // Some servers (Linear) send an array of scopes.
    std::vector<std::string> scopes;
    for (const json& scope : *s) {
      if (!scope.is_string()) return Malformed("scope is not a string or an array of strings");
      scopes.push_back(Printable(scope.get<std::string>(), 256));
    }
    out.scopes = std::move(scopes);
  } else if (s != obj.end() && !s->is_null()) {
    if (!s->is_string()) return Malformed("scope is not a string");
    std::vector<std::string> scopes;
    for (absl::string_view scope :
         absl::StrSplit(s->get_ref<const std::string&>(), Sv(scope_separator), absl::SkipEmpty())) {
      scope = absl::StripAsciiWhitespace(scope);
      if (!scope.empty()) scopes.emplace_back(scope);
    }
    out.scopes = std::move(scopes);
  }
  if (auto i = obj.find("id_token"); i != obj.end() && !i->is_null()) {
    if (!i->is_string()) return Malformed("id_token is not a string");
    out.id_token = i->get<std::string>();
  }
  return absl::OkStatus();
}

void ReadExtra(const json& obj, TokenResponse& out) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
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
}

// obj[outer][inner] as text, when it is a string or a number.
void ReadNested(const json& obj, const char* outer, const char* inner, const std::string& as,
                TokenResponse& out) {
  auto o = obj.find(outer);
  if (o == obj.end() || !o->is_object()) return;
  auto i = o->find(inner);
  if (i == o->end()) return;
  if (i->is_string()) {
    out.extra[as] = Printable(i->get<std::string>(), 1024);
  } else if (i->is_number()) {
    out.extra[as] = i->dump();
  }
}

absl::Status ReadSlack(json& doc, const ConnectorType& type, TokenResponse& out) {
  auto ok = doc.find("ok");
  if (ok == doc.end() || !ok->is_boolean()) return Malformed("no \"ok\" member");
  if (!ok->get<bool>()) {
    return absl::FailedPreconditionError("the token endpoint refused the request: ok is false");
  }
  ReadExtra(doc, out);
  ReadNested(doc, "team", "id", "team_id", out);
  ReadNested(doc, "team", "name", "team_name", out);
  ReadNested(doc, "enterprise", "id", "enterprise_id", out);
  ReadNested(doc, "enterprise", "name", "enterprise_name", out);
  ReadNested(doc, "authed_user", "id", "authed_user_id", out);
  if (auto e = doc.find("is_enterprise_install"); e != doc.end() && e->is_boolean()) {
    out.extra["is_enterprise_install"] = e->get<bool>() ? "true" : "false";
  }
  if (type.scope_param == "user_scope") {
    auto user = doc.find("authed_user");
    if (user == doc.end() || !user->is_object()) return Malformed("no authed_user");
    return ReadTokenFields(*user, ",", out);
  }
  return ReadTokenFields(doc, ",", out);
}

// An https origin on *.salesforce.com or *.force.com: the API base of the org.
bool IsSalesforceInstanceUrl(std::string_view url) {
  if (!url.starts_with("https://")) return false;
  url.remove_prefix(8);
  if (url.ends_with("/")) url.remove_suffix(1);
  if (url.empty() ||
      url.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != std::string_view::npos) {
    return false;
  }
  for (std::string_view suffix : {".salesforce.com", ".force.com"}) {
    if (url.size() > suffix.size() && absl::EndsWithIgnoreCase(Sv(url), Sv(suffix)) &&
        url[url.size() - suffix.size() - 1] != '.') {
      return true;
    }
  }
  return false;
}

absl::Status ReadSalesforce(const TokenResponse& out) {
  auto instance = out.extra.find("instance_url");
  if (instance == out.extra.end()) return Malformed("no instance_url");
  if (!IsSalesforceInstanceUrl(instance->second)) {
    return Malformed("instance_url is not an https *.salesforce.com or *.force.com origin");
  }
  if (!out.extra.contains("id")) return Malformed("no id (identity URL)");
  return absl::OkStatus();
}

absl::Status ReadNotion(const json& doc, TokenResponse& out) {
  if (!out.extra.contains("bot_id")) return Malformed("no bot_id");
  if (!out.extra.contains("workspace_id")) return Malformed("no workspace_id");
  auto owner = doc.find("owner");
  if (owner == doc.end() || !owner->is_object()) return Malformed("no owner");
  ReadNested(doc, "owner", "type", "owner_type", out);
  if (auto user = owner->find("user"); user != owner->end() && user->is_object()) {
    auto id = user->find("id");
    if (id == user->end() || !id->is_string()) return Malformed("owner.user has no id");
    out.extra["owner_user_id"] = Printable(id->get<std::string>(), 1024);
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenResponse> Parse(const HttpResponse& response, TokenResponseShape shape,
                                    const ConnectorType* type, std::string_view scope_separator) {
  GV_RETURN_IF_ERROR(CheckTransport(response));
  json doc;
  WipeOnExit wipe{doc};
  std::optional<std::string> content_type = response.Header("Content-Type");
  if (shape == TokenResponseShape::kGithub && content_type &&
      absl::StartsWithIgnoreCase(*content_type, "application/x-www-form-urlencoded")) {
    absl::StatusOr<json> form = FormToJson(response.body);
    if (!form.ok()) return response.status != 200 ? Refused(response.status) : form.status();
    doc = std::move(*form);
  } else {
    doc = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  }
  if (!doc.is_object()) {
    if (response.status != 200) return Refused(response.status);
    return Malformed("not a JSON object");
  }
  GV_RETURN_IF_ERROR(CheckError(doc, response.status));
  TokenResponse out;
  switch (shape) {
    case TokenResponseShape::kSlackV2:
      GV_RETURN_IF_ERROR(ReadSlack(doc, *type, out));
      return out;
    case TokenResponseShape::kGithub:
      scope_separator = ",";
      break;
    case TokenResponseShape::kStandard:
    case TokenResponseShape::kSalesforce:
    case TokenResponseShape::kNotion:
    case TokenResponseShape::kHubspot:
      break;
  }
  ReadExtra(doc, out);
  GV_RETURN_IF_ERROR(ReadTokenFields(doc, scope_separator, out));
  if (shape == TokenResponseShape::kSalesforce) GV_RETURN_IF_ERROR(ReadSalesforce(out));
  if (shape == TokenResponseShape::kNotion) GV_RETURN_IF_ERROR(ReadNotion(doc, out));
  return out;
}

}  // namespace

absl::StatusOr<TokenResponse> ParseTokenResponse(const HttpResponse& response,
                                                 std::string_view scope_separator) {
  return Parse(response, TokenResponseShape::kStandard, nullptr, scope_separator);
}

absl::StatusOr<TokenResponse> ParseTokenResponse(const HttpResponse& response,
                                                 const ConnectorType& type) {
  return Parse(response, type.token_response, &type, type.scope_separator);
}

}  // namespace grantvault::oauth
