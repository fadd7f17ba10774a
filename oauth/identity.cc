#include "oauth/identity.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/secret_bytes.h"
#include "common/status.h"
#include "common/strings.h"
#include "oauth/pkce.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {
namespace {

using nlohmann::json;

constexpr absl::Duration kIdentityDeadline = absl::Seconds(20);
constexpr size_t kMaxAccountId = 255;
constexpr size_t kMaxMetadataValue = 1024;

// A parsed identity answer, wiped when it dies (HubSpot's token info echoes the token).
struct WipedJson {
  json doc;
  WipedJson() = default;
  WipedJson(WipedJson&& other) noexcept : doc(std::move(other.doc)) {}
  WipedJson& operator=(WipedJson&&) = delete;
  ~WipedJson() { WipeJson(doc); }
};

bool IsPrintable(std::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// A string or integer member as text; nullopt when absent, null or another type.
std::optional<std::string> Text(const json& obj, std::string_view name) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(name);
  if (it == obj.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return it->dump();
  return std::nullopt;
}

const json& Member(const json& obj, std::string_view name) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(name);
  return it == obj.end() ? kNull : *it;
}

absl::StatusOr<std::string> CheckedAccountId(std::optional<std::string> id, std::string_view what) {
  if (!id || id->empty() || id->size() > kMaxAccountId || !IsPrintable(*id)) {
    return absl::UnavailableError(
        absl::StrCat("the account cannot be identified: ", Sv(what), " is missing or malformed"));
  }
  return std::move(*id);
}

// Fills {token} and {client_id}, percent-encoded.
WipedString FillRunTime(std::string_view url_template, std::string_view client_id,
                        std::string_view token) {
  WipedString encoded_token{PercentEncode(token)};
  return WipedString{absl::StrReplaceAll(
      Sv(url_template),
      {{"{token}", encoded_token.value}, {"{client_id}", PercentEncode(client_id)}})};
}

struct Call {
  std::string_view url_template;  // as the catalog writes it: what errors name
  bool bearer = true;             // send the access token as a bearer
  std::string_view method = "GET";
  std::string_view body;  // JSON, POST only
};

absl::StatusOr<WipedJson> CallJson(HttpClient& http, const IdentityRequest& r, const Call& call) {
  if (call.url_template.empty()) {
    return absl::FailedPreconditionError("the connector has no identity endpoint");
  }
  const std::string_view token = r.tokens->access_token.view();
  HttpRequest request;
  request.method = std::string(call.method);
  WipedString url = FillRunTime(call.url_template, r.registration->client_id, token);
  request.url = url.value;
  request.headers.emplace_back("Accept", "application/json");
  if (call.bearer)
    request.headers.emplace_back("Authorization", absl::StrCat("Bearer ", Sv(token)));
  if (!call.body.empty()) {
    request.headers.emplace_back("Content-Type", "application/json");
    request.body = std::string(call.body);
  }
  absl::StatusOr<HttpResponse> response = http.Send(request, kIdentityDeadline);
  WipeString(request.url);
  for (auto& [name, value] : request.headers) WipeString(value);
  if (!response.ok()) {
    return absl::Status(response.status().code(),
                        absl::StrCat("identity call to ", Sv(call.url_template), ": ",
                                     response.status().message()));
  }
  if (response->status != 200) {
    return absl::UnavailableError(absl::StrCat("identity call to ", Sv(call.url_template),
                                               " answered HTTP ", response->status,
                                               " instead of 200"));
  }
  WipedJson out;
  out.doc = json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (out.doc.is_discarded()) {
    return absl::UnavailableError(
        absl::StrCat("identity call to ", Sv(call.url_template), " did not answer JSON"));
  }
  return out;
}

// The claims of an id_token that VerifyIdToken has accepted (so its payload is known good).
json VerifiedClaims(std::string_view id_token) {
  std::vector<absl::string_view> parts = absl::StrSplit(Sv(id_token), '.');
  if (parts.size() != 3) return json::object();
  std::optional<std::string> payload =
      Base64UrlDecode(std::string_view(parts[1].data(), parts[1].size()));
  if (!payload) return json::object();
  json claims = json::parse(*payload, nullptr, /*allow_exceptions=*/false);
  return claims.is_object() ? claims : json::object();
}

// Every top-level string or integer member of `obj`, as metadata candidates.
void AddCandidates(const json& obj, std::map<std::string, std::string>& candidates) {
  if (!obj.is_object()) return;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (std::optional<std::string> text = Text(obj, it.key())) candidates[it.key()] = *text;
  }
}

absl::StatusOr<std::string> FromIdToken(const IdentityRequest& r, HttpClient& http,
                                        IdTokenVerifier& id_tokens,
                                        std::map<std::string, std::string>& candidates) {
  const TokenResponse& tokens = *r.tokens;
  const Endpoints& endpoints = r.profile->resolved.endpoints;
  if (tokens.id_token.empty()) {
    return absl::FailedPreconditionError(
        "the token response has no id_token; the account cannot be identified");
  }
  if (endpoints.jwks_uri.empty()) {
    return absl::FailedPreconditionError("the connector has no jwks_uri to verify id_tokens");
  }
  HttpRequest request;
  request.url = endpoints.jwks_uri;
  request.headers.emplace_back("Accept", "application/json");
  absl::StatusOr<HttpResponse> jwks = http.Send(request, kIdentityDeadline);
  if (!jwks.ok()) {
    return absl::Status(jwks.status().code(), absl::StrCat("JWKS at ", endpoints.jwks_uri, ": ",
                                                           jwks.status().message()));
  }
  if (jwks->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("JWKS at ", endpoints.jwks_uri, " answered HTTP ", jwks->status));
  }
  GV_ASSIGN_OR_RETURN(std::string sub,
                      id_tokens.VerifiedSubject(tokens.id_token, jwks->body, endpoints.issuer,
                                                r.registration->client_id, r.nonce, r.now));
  AddCandidates(VerifiedClaims(tokens.id_token), candidates);
  return CheckedAccountId(std::move(sub), "the id_token's sub");
}

absl::StatusOr<std::string> Learn(const IdentityRequest& r, HttpClient& http,
                                  IdTokenVerifier& id_tokens, AccountIdentity& out,
                                  std::map<std::string, std::string>& candidates) {
  const ConnectorType& type = r.profile->catalog_type;
  const Endpoints& endpoints = r.profile->resolved.endpoints;
  const std::map<std::string, std::string>& extra = r.tokens->extra;
  auto from_extra = [&](const char* name) -> std::optional<std::string> {
    auto it = extra.find(name);
    if (it == extra.end()) return std::nullopt;
    return it->second;
  };
  switch (type.identity.method) {
    case IdentityMethod::kIdToken:
      return FromIdToken(r, http, id_tokens, candidates);

    case IdentityMethod::kUserinfo: {
      GV_ASSIGN_OR_RETURN(WipedJson info,
                          CallJson(http, r, Call{endpoints.userinfo, true, "GET", ""}));
      AddCandidates(info.doc, candidates);
      return CheckedAccountId(Text(info.doc, "sub"), "userinfo's sub");
    }

    case IdentityMethod::kGithubUser: {
      GV_ASSIGN_OR_RETURN(WipedJson user,
                          CallJson(http, r, Call{endpoints.identity, true, "GET", ""}));
      if (!Member(user.doc, "id").is_number_integer()) {
        return absl::UnavailableError("the GitHub user has no numeric id");
      }
      AddCandidates(user.doc, candidates);
      return CheckedAccountId(Text(user.doc, "id"), "the GitHub user's id");
    }

    case IdentityMethod::kSlackAuthedUser: {
      // An org-wide (Enterprise Grid) install has no team: the enterprise stands for it.
      std::optional<std::string> team = from_extra("is_enterprise_install") == "true"
                                            ? from_extra("enterprise_id")
                                            : from_extra("team_id");
      std::optional<std::string> user = from_extra("authed_user_id");
      if (!team || !user) {
        return absl::FailedPreconditionError(
            "the Slack token response names no team.id or authed_user.id");
      }
      return CheckedAccountId(absl::StrCat(*team, ":", *user), "team.id:authed_user.id");
    }

    case IdentityMethod::kNotionOwner: {
      if (std::optional<std::string> owner = from_extra("owner_user_id")) {
        return CheckedAccountId(std::move(owner), "owner.user.id");
      }
      if (from_extra("owner_type") == "workspace") {
        return CheckedAccountId(from_extra("bot_id"), "bot_id");
      }
      return absl::FailedPreconditionError(
          "the Notion token response names neither an owner user nor a workspace owner");
    }

    case IdentityMethod::kSalesforceIdUrl: {
      // https://login.salesforce.com/id/<org id>/<user id>
      std::optional<std::string> id_url = from_extra("id");
      if (!id_url || !absl::StartsWith(*id_url, "https://")) {
        return absl::FailedPreconditionError("the Salesforce token response has no https id URL");
      }
      std::vector<std::string> parts = absl::StrSplit(*id_url, '/');
      // "https:", "", host, "id", org, user
      auto is_sf_id = [](const std::string& s) {
        return (s.size() == 15 || s.size() == 18) &&
               s.find_first_not_of(
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                   "0123456789") == std::string::npos;
      };
      if (parts.size() != 6 || parts[3] != "id" || !is_sf_id(parts[4]) || !is_sf_id(parts[5])) {
        return absl::FailedPreconditionError(
            "the Salesforce id URL is not https://<host>/id/<org id>/<user id>");
      }
      candidates["organization_id"] = parts[4];
      return CheckedAccountId(parts[5], "the Salesforce user id");
    }

    case IdentityMethod::kHubspotTokenInfo: {
      GV_ASSIGN_OR_RETURN(WipedJson info,
                          CallJson(http, r, Call{endpoints.identity, false, "GET", ""}));
      std::optional<std::string> hub = Text(info.doc, "hub_id");
      std::optional<std::string> user = Text(info.doc, "user_id");
      if (!hub || !user)
        return absl::UnavailableError("HubSpot token info names no hub_id or user_id");
      for (const char* key : {"hub_id", "hub_domain", "user_id", "app_id"}) {
        if (std::optional<std::string> v = Text(info.doc, key)) candidates[key] = *v;
      }
      if (const json& scopes = Member(info.doc, "scopes"); scopes.is_array()) {
        std::vector<std::string> granted;
        for (const json& s : scopes) {
          if (s.is_string()) granted.push_back(s.get<std::string>());
        }
        out.granted_scopes = std::move(granted);
      }
      return CheckedAccountId(absl::StrCat(*hub, ":", *user), "hub_id:user_id");
    }

    case IdentityMethod::kLinearViewer: {
      GV_ASSIGN_OR_RETURN(
          WipedJson answer,
          CallJson(http, r,
                   Call{endpoints.identity, true, "POST",
                        R"({"query":"{ viewer { id } organization { id urlKey } }"})"}));
      const json& data = Member(answer.doc, "data");
      if (!Member(answer.doc, "errors").is_null() || !data.is_object()) {
        return absl::UnavailableError("the Linear viewer query failed");
      }
      const json& org = Member(data, "organization");
      if (std::optional<std::string> v = Text(org, "id")) candidates["organization_id"] = *v;
      if (std::optional<std::string> v = Text(org, "urlKey")) {
        candidates["organization_url_key"] = *v;
      }
      return CheckedAccountId(Text(Member(data, "viewer"), "id"), "viewer.id");
    }

    case IdentityMethod::kAtlassianMe: {
      GV_ASSIGN_OR_RETURN(WipedJson sites,
                          CallJson(http, r, Call{endpoints.identity_sites, true, "GET", ""}));
      if (!sites.doc.is_array() || sites.doc.empty()) {
        return absl::UnavailableError(
            "the grant gives access to no Atlassian site (accessible-resources is empty)");
      }
      const json& site = sites.doc.front();
      std::optional<std::string> cloud_id = Text(site, "id");
      if (!cloud_id) return absl::UnavailableError("the Atlassian site has no id");
      candidates["cloud_id"] = *cloud_id;
      if (std::optional<std::string> url = Text(site, "url")) candidates["site_url"] = *url;
      GV_ASSIGN_OR_RETURN(WipedJson me,
                          CallJson(http, r, Call{endpoints.identity, true, "GET", ""}));
      return CheckedAccountId(Text(me.doc, "account_id"), "the Atlassian account_id");
    }

    case IdentityMethod::kZendeskMe: {
      GV_ASSIGN_OR_RETURN(WipedJson me,
                          CallJson(http, r, Call{endpoints.identity, true, "GET", ""}));
      return CheckedAccountId(Text(Member(me.doc, "user"), "id"), "the Zendesk user.id");
    }

    case IdentityMethod::kIntercomMe: {
      GV_ASSIGN_OR_RETURN(WipedJson me,
                          CallJson(http, r, Call{endpoints.identity, true, "GET", ""}));
      if (std::optional<std::string> v = Text(Member(me.doc, "app"), "id_code")) {
        candidates["app_id_code"] = *v;
      }
      return CheckedAccountId(Text(me.doc, "id"), "the Intercom admin id");
    }
  }
  return absl::InternalError("unknown identity method");
}

}  // namespace

absl::StatusOr<AccountIdentity> LearnIdentity(const IdentityRequest& request, HttpClient& http,
                                              IdTokenVerifier& id_tokens) {
  AccountIdentity out;
  std::map<std::string, std::string> candidates = request.profile->resolved.parameters;
  for (const auto& [key, value] : request.tokens->extra) candidates.emplace(key, value);
  GV_ASSIGN_OR_RETURN(out.account_id, Learn(request, http, id_tokens, out, candidates));
  for (const std::string& name : request.profile->catalog_type.identity.metadata) {
    auto it = candidates.find(name);
    if (it == candidates.end() || it->second.empty()) continue;
    std::string value = it->second;
    if (value.size() > kMaxMetadataValue || !IsPrintable(value)) continue;
    out.metadata[name] = std::move(value);
  }
  return out;
}

}  // namespace grantvault::oauth
