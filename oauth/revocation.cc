#include "oauth/revocation.h"

#include <algorithm>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/secret_bytes.h"
#include "common/strings.h"
#include "oauth/catalog.h"
#include "oauth/pkce.h"
#include "oauth/request_parts.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {
namespace {

using nlohmann::json;

constexpr int64_t kMaxRetryAfterSeconds = 3600;
constexpr size_t kMaxErrorCode = 64;
constexpr size_t kMaxErrorDescription = 256;
constexpr char kRedacted[] = "[redacted]";

// A parsed answer, wiped when it dies (error descriptions may echo what was sent).
struct WipedJson {
  json doc;
  ~WipedJson() { WipeJson(doc); }
};

std::string_view View(const SecretBytes* s) {
  return s == nullptr ? std::string_view() : s->view();
}

// Everything a message must never contain, raw and as it went on the wire.
class Redactor {
 public:
  void Add(std::string_view secret) {
    if (secret.empty()) return;
    secrets_.push_back(WipedString{std::string(secret)});
    secrets_.push_back(WipedString{PercentEncode(secret)});
  }
  // `text` cut to `max` printable ASCII characters, every secret in it replaced first.
  std::string Clean(std::string text, size_t max) const {
    for (const WipedString& secret : secrets_) {
      for (size_t at = text.find(secret.value); at != std::string::npos;
           at = text.find(secret.value, at)) {
        WipeMemory(text.data() + at, secret.value.size());
        text.replace(at, secret.value.size(), kRedacted);
        at += sizeof(kRedacted) - 1;
      }
    }
    if (text.size() > max) text.resize(max);
    for (char& c : text) {
      if (c < 0x20 || c > 0x7e) c = '?';
    }
    return text;
  }

 private:
  std::vector<WipedString> secrets_;
};

// One request on its way: where errors say it went, and what they may not repeat.
struct Call {
  std::string_view method_name;  // the catalog's name for the method
  std::string_view endpoint;     // as the catalog writes it, "{token}" unfilled
  Redactor redactor;

  std::string Where() const {
    return absl::StrCat("revocation (", Sv(method_name), ") at ", Sv(endpoint));
  }
  absl::Status Unavailable(std::string_view what, const HttpResponse* response = nullptr) const {
    std::string message = absl::StrCat(Where(), ": ", Sv(what));
    if (response != nullptr) {
      std::optional<std::string> retry = response->Header("Retry-After");
      int64_t seconds = 0;
      if (retry && absl::SimpleAtoi(*retry, &seconds) && seconds >= 0) {
        absl::StrAppend(&message,
                        "; retry_after_ms=", std::min(seconds, kMaxRetryAfterSeconds) * 1000);
      }
    }
    return absl::UnavailableError(message);
  }
  absl::Status Refused(absl::StatusCode code, int status, std::string_view detail) const {
    return absl::Status(code, absl::StrCat(Where(), " refused the request (HTTP ", status, ")",
                                           detail.empty() ? "" : ": ", Sv(detail)));
  }
  absl::Status Precondition(std::string_view what) const {
    return absl::FailedPreconditionError(absl::StrCat(Where(), ": ", Sv(what)));
  }
};

bool IsSuccess(int status) { return status >= 200 && status < 300; }

// Redirects, rate limits and server errors, whatever the method.
std::optional<absl::Status> CommonFailure(const Call& call, const HttpResponse& response) {
  if (response.status >= 300 && response.status < 400) {
    return call.Precondition(absl::StrCat("the provider redirected (HTTP ", response.status,
                                          "); redirects are not followed"));
  }
  if (response.status == 429 || response.status >= 500) {
    return call.Unavailable(
        absl::StrCat("the provider is unavailable (HTTP ", response.status, ")"), &response);
  }
  return std::nullopt;
}

// The provider's error code and description from a JSON answer: RFC 6749/7009 `error` and
// `error_description`, Notion's `code` and `message`, GitHub's `message`. Either may be empty.
struct ProviderError {
  std::string code;
  std::string description;
  std::string Detail() const {
    if (code.empty()) return description;
    return description.empty() ? code : absl::StrCat(code, " (", description, ")");
  }
};

std::string StringMember(const json& doc, const char* name) {
  if (!doc.is_object()) return "";
  auto it = doc.find(name);
  return it != doc.end() && it->is_string() ? it->get<std::string>() : "";
}

ProviderError ReadError(const Call& call, const HttpResponse& response) {
  WipedJson parsed{json::parse(response.body, nullptr, /*allow_exceptions=*/false)};
  ProviderError out;
  if (!parsed.doc.is_object()) return out;
  std::string code = StringMember(parsed.doc, "error");
  if (code.empty()) code = StringMember(parsed.doc, "code");
  std::string description = StringMember(parsed.doc, "error_description");
  if (description.empty()) description = StringMember(parsed.doc, "message");
  out.code = call.redactor.Clean(std::move(code), kMaxErrorCode);
  out.description = call.redactor.Clean(std::move(description), kMaxErrorDescription);
  return out;
}

// Fills {token} and {client_id}, percent-encoded.
WipedString FillRunTime(std::string_view url_template, std::string_view client_id,
                        std::string_view token) {
  WipedString encoded_token{PercentEncode(token)};
  return WipedString{absl::StrReplaceAll(
      Sv(url_template),
      {{"{token}", encoded_token.value}, {"{client_id}", PercentEncode(client_id)}})};
}

// --- sending -------------------------------------------------------------------------------

absl::StatusOr<HttpResponse> Send(HttpClient& http, const Call& call, const HttpRequest& request,
                                  absl::Duration timeout) {
  absl::StatusOr<HttpResponse> response = http.Send(request, timeout);
  if (response.ok()) return response;
  const absl::Status& status = response.status();
  if (absl::IsInvalidArgument(status)) {
    return call.Precondition(absl::StrCat("the request cannot be sent: ",
                                          call.redactor.Clean(std::string(status.message()), 512)));
  }
  // Connection failures, time-outs, TLS failures, oversized answers: the next attempt may work.
  return call.Unavailable(call.redactor.Clean(std::string(status.message()), 512));
}

// --- rfc7009 -------------------------------------------------------------------------------

absl::StatusOr<RevocationOutcome> RevokeRfc7009(HttpClient& http, const RevocationRequestInput& in,
                                                const Call& call, absl::Duration timeout) {
  const ConnectorType& type = in.profile->catalog_type;
  const std::string_view refresh = View(in.refresh_token);
  const std::string_view access = View(in.access_token);
  const bool send_refresh =
      type.revocation.revoke_refresh_token ? !refresh.empty() : access.empty();
  const std::string_view token = send_refresh ? refresh : access;
  if (token.empty())
    return call.Precondition("the grant has neither a refresh nor an access token");

  const std::string_view secret = View(in.client_secret);
  const bool basic = type.client_auth != ClientAuth::kPost && !secret.empty();
  std::vector<std::pair<std::string_view, std::string_view>> fields = {{"token", token}};
  const bool json_body = type.revocation.body == BodyFormat::kJson;
  if (!json_body) {
    fields.emplace_back("token_type_hint", send_refresh ? "refresh_token" : "access_token");
  }
  if (!basic) {
    fields.emplace_back("client_id", in.client_id);
    if (!secret.empty()) fields.emplace_back("client_secret", secret);
  }

  HttpRequest request;
  request.method = "POST";
  request.url = in.profile->revocation_endpoint;
  if (json_body) {
    json body = json::object();
    for (const auto& [name, value] : fields) body[std::string(name)] = std::string(value);
    request.body = body.dump();
    WipeJson(body);
    request.headers.emplace_back("Content-Type", "application/json");
  } else {
    for (const auto& [name, value] : fields) AppendFormField(request.body, name, value);
    request.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  }
  if (!CatalogSetsHeader(type, "Accept"))
    request.headers.emplace_back("Accept", "application/json");
  for (const auto& [name, value] : type.token_headers) request.headers.emplace_back(name, value);
  if (basic)
    request.headers.emplace_back("Authorization", BasicAuthorization(in.client_id, secret));

  absl::StatusOr<HttpResponse> response = Send(http, call, request, timeout);
  if (!response.ok()) return response.status();
  if (IsSuccess(response->status)) return RevocationOutcome::kRevoked;
  if (auto failure = CommonFailure(call, *response)) return *failure;
  const ProviderError error = ReadError(call, *response);
  // RFC 7009 §2.2 answers 200 for an invalid token; Google and Salesforce answer 400
  // invalid_token instead.
  if (error.code == "invalid_token") return RevocationOutcome::kAlreadyInvalid;
  if (error.code == "invalid_client" || response->status == 401 || response->status == 403) {
    return call.Refused(absl::StatusCode::kPermissionDenied, response->status, error.Detail());
  }
  return call.Refused(absl::StatusCode::kFailedPrecondition, response->status, error.Detail());
}

// --- github_grant_delete -------------------------------------------------------------------

absl::StatusOr<RevocationOutcome> RevokeGithubGrant(HttpClient& http,
                                                    const RevocationRequestInput& in,
                                                    const Call& call, absl::Duration timeout) {
  const std::string_view access = View(in.access_token);
  const std::string_view secret = View(in.client_secret);
  if (access.empty()) return call.Precondition("deleting a GitHub grant needs its access token");
  if (secret.empty()) return call.Precondition("deleting a GitHub grant needs the client secret");

  HttpRequest request;
  request.method = "DELETE";
  request.url = FillRunTime(in.profile->revocation_endpoint, in.client_id, "").value;
  json body = {{"access_token", std::string(access)}};
  request.body = body.dump();
  WipeJson(body);
  request.headers = {{"Content-Type", "application/json"},
                     {"Accept", "application/vnd.github+json"},
                     {"X-GitHub-Api-Version", "2022-11-28"},
                     {"Authorization", BasicAuthorization(in.client_id, secret)}};

  absl::StatusOr<HttpResponse> response = Send(http, call, request, timeout);
  if (!response.ok()) return response.status();
  const int status = response->status;
  if (IsSuccess(status)) return RevocationOutcome::kRevoked;
  // 404: no grant for this token (revoked, or the user removed the app); 422: the token does not
  // validate (expired, malformed).
  if (status == 404 || status == 422) return RevocationOutcome::kAlreadyInvalid;
  // GitHub's primary rate limit answers 403 with x-ratelimit-remaining: 0.
  if (status == 403 && (response->Header("x-ratelimit-remaining") == "0" ||
                        response->Header("Retry-After").has_value())) {
    return call.Unavailable("rate limited (HTTP 403)", &*response);
  }
  if (auto failure = CommonFailure(call, *response)) return *failure;
  const ProviderError error = ReadError(call, *response);
  if (status == 401 || status == 403) {
    return call.Refused(absl::StatusCode::kPermissionDenied, status, error.Detail());
  }
  return call.Refused(absl::StatusCode::kFailedPrecondition, status, error.Detail());
}

// --- slack_auth_revoke ---------------------------------------------------------------------

bool IsOneOf(std::string_view s, std::initializer_list<std::string_view> values) {
  for (std::string_view v : values) {
    if (s == v) return true;
  }
  return false;
}

absl::StatusOr<RevocationOutcome> RevokeSlack(HttpClient& http, const RevocationRequestInput& in,
                                              const Call& call, absl::Duration timeout) {
  const std::string_view access = View(in.access_token);
  if (access.empty()) return call.Precondition("auth.revoke needs the access token");

  HttpRequest request;
  request.method = "POST";
  request.url = in.profile->revocation_endpoint;
  request.headers = {{"Content-Type", "application/x-www-form-urlencoded"},
                     {"Accept", "application/json"},
                     {"Authorization", absl::StrCat("Bearer ", Sv(access))}};

  absl::StatusOr<HttpResponse> response = Send(http, call, request, timeout);
  if (!response.ok()) return response.status();
  if (auto failure = CommonFailure(call, *response)) return *failure;
  if (response->status != 200) {
    return call.Refused(absl::StatusCode::kFailedPrecondition, response->status,
                        ReadError(call, *response).Detail());
  }
  WipedJson answer{json::parse(response->body, nullptr, /*allow_exceptions=*/false)};
  if (!answer.doc.is_object() || !answer.doc.contains("ok") || !answer.doc["ok"].is_boolean()) {
    return call.Unavailable("malformed answer (no boolean `ok`)");
  }
  if (answer.doc["ok"].get<bool>()) {
    auto revoked = answer.doc.find("revoked");
    if (revoked != answer.doc.end() && revoked->is_boolean() && revoked->get<bool>()) {
      return RevocationOutcome::kRevoked;
    }
    return call.Unavailable("Slack answered ok without revoked: true");
  }
  const std::string error = call.redactor.Clean(StringMember(answer.doc, "error"), kMaxErrorCode);
  if (IsOneOf(error, {"invalid_auth", "token_revoked", "token_expired", "account_inactive"})) {
    return RevocationOutcome::kAlreadyInvalid;
  }
  if (IsOneOf(error, {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                      "request_timeout"})) {
    return call.Unavailable(absl::StrCat("Slack answered ", error), &*response);
  }
  return call.Refused(absl::StatusCode::kFailedPrecondition, 200,
                      error.empty() ? "ok: false" : error);
}

// --- hubspot_refresh_token_delete, zendesk_current_token_delete ----------------------------

absl::StatusOr<RevocationOutcome> RevokeHubspot(HttpClient& http, const RevocationRequestInput& in,
                                                const Call& call, absl::Duration timeout) {
  const std::string_view refresh = View(in.refresh_token);
  if (refresh.empty())
    return call.Precondition("HubSpot revokes the refresh token; none was given");
  if (!absl::StrContains(Sv(in.profile->revocation_endpoint), "{token}")) {
    return call.Precondition("the endpoint has no {token} placeholder");
  }
  HttpRequest request;
  request.method = "DELETE";
  request.url = FillRunTime(in.profile->revocation_endpoint, in.client_id, refresh).value;
  request.headers = {{"Accept", "application/json"}};

  absl::StatusOr<HttpResponse> response = Send(http, call, request, timeout);
  if (!response.ok()) return response.status();
  const int status = response->status;
  if (IsSuccess(status)) return RevocationOutcome::kRevoked;
  if (status == 404) return RevocationOutcome::kAlreadyInvalid;  // no such refresh token
  if (auto failure = CommonFailure(call, *response)) return *failure;
  const ProviderError error = ReadError(call, *response);
  if (status == 401 || status == 403) {
    return call.Refused(absl::StatusCode::kPermissionDenied, status, error.Detail());
  }
  return call.Refused(absl::StatusCode::kFailedPrecondition, status, error.Detail());
}

absl::StatusOr<RevocationOutcome> RevokeZendesk(HttpClient& http, const RevocationRequestInput& in,
                                                const Call& call, absl::Duration timeout) {
  const std::string_view access = View(in.access_token);
  if (access.empty()) return call.Precondition("Zendesk revokes the access token; none was given");
  HttpRequest request;
  request.method = "DELETE";
  request.url = in.profile->revocation_endpoint;
  request.headers = {{"Accept", "application/json"},
                     {"Authorization", absl::StrCat("Bearer ", Sv(access))}};

  absl::StatusOr<HttpResponse> response = Send(http, call, request, timeout);
  if (!response.ok()) return response.status();
  const int status = response->status;
  if (IsSuccess(status)) return RevocationOutcome::kRevoked;
  // The token authenticates the request: 401 means it no longer works.
  if (status == 401) return RevocationOutcome::kAlreadyInvalid;
  if (auto failure = CommonFailure(call, *response)) return *failure;
  const ProviderError error = ReadError(call, *response);
  if (status == 403) {
    return call.Refused(absl::StatusCode::kPermissionDenied, status, error.Detail());
  }
  return call.Refused(absl::StatusCode::kFailedPrecondition, status, error.Detail());
}

}  // namespace

std::string_view ToString(RevocationOutcome outcome) {
  switch (outcome) {
    case RevocationOutcome::kRevoked:
      return "revoked";
    case RevocationOutcome::kAlreadyInvalid:
      return "already_invalid";
    case RevocationOutcome::kManual:
      return "manual";
  }
  return "unknown";
}

absl::StatusOr<RevocationOutcome> RevokeAtProvider(HttpClient& http,
                                                   const RevocationRequestInput& input,
                                                   absl::Time deadline) {
  if (input.profile == nullptr) return absl::InvalidArgumentError("revocation needs a profile");
  const RevocationMethod method = input.profile->catalog_type.revocation.method;
  if (method == RevocationMethod::kNone) return RevocationOutcome::kManual;

  Call call{ToString(method), input.profile->revocation_endpoint, {}};
  call.redactor.Add(View(input.refresh_token));
  call.redactor.Add(View(input.access_token));
  call.redactor.Add(View(input.client_secret));
  if (input.profile->revocation_endpoint.empty()) {
    return call.Precondition("the connector has no revocation endpoint");
  }
  const absl::Duration timeout = deadline - absl::Now();
  if (timeout <= absl::ZeroDuration()) {
    return call.Unavailable("the deadline passed before the request was sent");
  }
  switch (method) {
    case RevocationMethod::kRfc7009:
      return RevokeRfc7009(http, input, call, timeout);
    case RevocationMethod::kGithubGrantDelete:
      return RevokeGithubGrant(http, input, call, timeout);
    case RevocationMethod::kSlackAuthRevoke:
      return RevokeSlack(http, input, call, timeout);
    case RevocationMethod::kHubspotRefreshTokenDelete:
      return RevokeHubspot(http, input, call, timeout);
    case RevocationMethod::kZendeskCurrentTokenDelete:
      return RevokeZendesk(http, input, call, timeout);
    case RevocationMethod::kNone:
      break;
  }
  return RevocationOutcome::kManual;
}

}  // namespace grantvault::oauth
