#include "oauth/catalog.h"

#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <exception>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::oauth {
namespace {

constexpr size_t kMaxDiscoveryBytes = 256 * 1024;
constexpr size_t kMaxUrlBytes = 2048;

// Placeholders the OAuth engine fills at run time, and the endpoint fields they may appear in.
constexpr std::string_view kClientIdPlaceholder = "client_id";
constexpr std::string_view kTokenPlaceholder = "token";
constexpr std::string_view kTenantIdPlaceholder = "tenantid";

// ----- enumerations ------------------------------------------------------------------------

template <typename T>
struct EnumName {
  std::string_view name;
  T value;
};

constexpr std::array<EnumName<ClientAuth>, 3> kClientAuthNames{{
    {"basic", ClientAuth::kBasic},
    {"post", ClientAuth::kPost},
    {"basic_json", ClientAuth::kBasicJson},
}};
constexpr std::array<EnumName<BodyFormat>, 2> kBodyFormatNames{{
    {"form", BodyFormat::kForm},
    {"json", BodyFormat::kJson},
}};
constexpr std::array<EnumName<TokenResponseShape>, 6> kTokenResponseNames{{
    {"standard", TokenResponseShape::kStandard},
    {"slack_v2", TokenResponseShape::kSlackV2},
    {"github", TokenResponseShape::kGithub},
    {"salesforce", TokenResponseShape::kSalesforce},
    {"notion", TokenResponseShape::kNotion},
    {"hubspot", TokenResponseShape::kHubspot},
}};
constexpr std::array<EnumName<RefreshTokens>, 3> kRefreshNames{{
    {"none", RefreshTokens::kNone},
    {"reused", RefreshTokens::kReused},
    {"rotated", RefreshTokens::kRotated},
}};
constexpr std::array<EnumName<RevocationMethod>, 6> kRevocationNames{{
    {"none", RevocationMethod::kNone},
    {"rfc7009", RevocationMethod::kRfc7009},
    {"github_grant_delete", RevocationMethod::kGithubGrantDelete},
    {"slack_auth_revoke", RevocationMethod::kSlackAuthRevoke},
    {"hubspot_refresh_token_delete", RevocationMethod::kHubspotRefreshTokenDelete},
    {"zendesk_current_token_delete", RevocationMethod::kZendeskCurrentTokenDelete},
}};
constexpr std::array<EnumName<IdentityMethod>, 11> kIdentityNames{{
    {"id_token", IdentityMethod::kIdToken},
    {"userinfo", IdentityMethod::kUserinfo},
    {"github_user", IdentityMethod::kGithubUser},
    {"slack_authed_user", IdentityMethod::kSlackAuthedUser},
    {"notion_owner", IdentityMethod::kNotionOwner},
    {"salesforce_id_url", IdentityMethod::kSalesforceIdUrl},
    {"hubspot_token_info", IdentityMethod::kHubspotTokenInfo},
    {"linear_viewer", IdentityMethod::kLinearViewer},
    {"atlassian_me", IdentityMethod::kAtlassianMe},
    {"zendesk_me", IdentityMethod::kZendeskMe},
    {"intercom_me", IdentityMethod::kIntercomMe},
}};
constexpr std::array<EnumName<TemplateParameter::Kind>, 3> kParameterKindNames{{
    {"dns_label", TemplateParameter::Kind::kDnsLabel},
    {"microsoft_tenant", TemplateParameter::Kind::kMicrosoftTenant},
    {"choice", TemplateParameter::Kind::kChoice},
}};

template <typename T, size_t N>
std::string_view NameOf(const std::array<EnumName<T>, N>& names, T value) {
  for (const auto& n : names) {
    if (n.value == value) return n.name;
  }
  return "?";
}

template <typename T, size_t N>
std::string NameList(const std::array<EnumName<T>, N>& names) {
  std::vector<std::string> out;
  for (const auto& n : names) out.emplace_back(n.name);
  return absl::StrJoin(out, ", ");
}

// ----- character classes -------------------------------------------------------------------

bool IsAlnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
bool IsHex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Identifiers in the file: catalog keys, parameter names, metadata names.
bool IsIdentifier(std::string_view s, size_t max_len = 64) {
  if (s.empty() || s.size() > max_len) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || IsDigit(c) || c == '_'; });
}

// No control characters (log and header injection) and nothing outside printable ASCII.
bool IsPrintableAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
bool IsScopeToken(std::string_view s) {
  if (s.empty() || s.size() > 256) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
  });
}

// RFC 9110 token, for header names and request parameter names.
bool IsHttpToken(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return IsAlnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// One DNS label: letters, digits and '-', 1..63, not starting or ending with '-'.
bool IsDnsLabel(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return IsAlnum(c) || c == '-'; });
}

// A domain name of two or more labels whose last label is not all digits (not an address).
bool IsDomainName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t labels = 0;
  std::string_view last;
  while (!s.empty()) {
    size_t dot = s.find('.');
    std::string_view label = s.substr(0, dot);
    if (!IsDnsLabel(label)) return false;
    ++labels;
    last = label;
    if (dot == std::string_view::npos) break;
    s.remove_prefix(dot + 1);
    if (s.empty()) return false;  // trailing dot
  }
  return labels >= 2 && !std::all_of(last.begin(), last.end(), IsDigit);
}

bool IsGuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !IsHex(s[i])) return false;
  }
  return true;
}

// ----- URLs --------------------------------------------------------------------------------

bool IsUrlChar(char c) {
  // RFC 3986 unreserved, gen-delims (less '#', checked apart), sub-delims and '%'.
  return IsAlnum(c) ||
         std::string_view("-._~:/?#[]@!$&'()*+,;=%").find(c) != std::string_view::npos;
}

bool IsLoopbackHost(std::string_view host) {
  if (EqualsIgnoreCase(host, "localhost") || host == "[::1]") return true;
  // 127.0.0.0/8, dotted quad only.
  int parts = 0;
  std::string_view rest = host;
  while (true) {
    size_t dot = rest.find('.');
    std::string_view part = rest.substr(0, dot);
    if (part.empty() || part.size() > 3 || !std::all_of(part.begin(), part.end(), IsDigit)) {
      return false;
    }
    int v = std::stoi(std::string(part));
    if (v > 255 || (parts == 0 && v != 127)) return false;
    ++parts;
    if (dot == std::string_view::npos) break;
    rest.remove_prefix(dot + 1);
  }
  return parts == 4;
}

// Replaces every "{name}" in `s` by fill(name). Unbalanced braces are an error.
template <typename Fill>
absl::StatusOr<std::string> ExpandTemplate(std::string_view s, Fill fill) {
  std::string out;
  while (!s.empty()) {
    size_t open = s.find('{');
    size_t close = s.find('}');
    if (open == std::string_view::npos) {
      if (close != std::string_view::npos) return absl::InvalidArgumentError("unbalanced '}'");
      out.append(s);
      break;
    }
    if (close < open) return absl::InvalidArgumentError("unbalanced '}'");
    close = s.find('}', open);
    if (close == std::string_view::npos) return absl::InvalidArgumentError("unbalanced '{'");
    out.append(s.substr(0, open));
    std::string_view name = s.substr(open + 1, close - open - 1);
    GV_ASSIGN_OR_RETURN(std::string value, fill(name));
    out.append(value);
    s.remove_prefix(close + 1);
  }
  return out;
}

std::vector<std::string> Placeholders(std::string_view s) {
  std::vector<std::string> names;
  (void)ExpandTemplate(s, [&](std::string_view name) -> absl::StatusOr<std::string> {
    names.emplace_back(name);
    return std::string();
  });
  return names;
}

// ----- TOML reading ------------------------------------------------------------------------

std::string Where(const toml::node& node, std::string_view key) {
  const toml::source_region& src = node.source();
  return absl::StrCat(src.path ? *src.path : std::string("catalog"), ":", src.begin.line, ": ",
                      Sv(key), ":");
}

absl::Status Invalid(const toml::node& node, std::string_view key, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(Where(node, key), " ", Sv(why)));
}

std::string Msg(const absl::Status& status) { return std::string(status.message()); }

std::string Join(std::string_view section, std::string_view key) {
  return section.empty() ? std::string(key) : absl::StrCat(Sv(section), ".", Sv(key));
}

// A table of the file, with its dotted name for messages.
struct Section {
  const toml::table& table;
  std::string name;

  std::string Key(std::string_view key) const { return Join(name, key); }

  absl::Status OnlyKnownKeys(std::initializer_list<std::string_view> known) const {
    for (const auto& [key, node] : table) {
      std::string_view k = key.str();
      if (std::find(known.begin(), known.end(), k) == known.end()) {
        std::vector<std::string> names(known.begin(), known.end());
        std::sort(names.begin(), names.end());
        return Invalid(
            node, Key(k),
            absl::StrCat("is not a known key (known: ", absl::StrJoin(names, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Missing(std::string_view key) const {
    return Invalid(table, Key(key), "is required");
  }

  absl::Status ReadString(std::string_view key, bool required, std::string* out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!node->is_string()) return Invalid(*node, Key(key), "must be a string");
    *out = node->as_string()->get();
    if (!IsPrintableAscii(*out)) {
      return Invalid(*node, Key(key), "must hold printable ASCII characters only");
    }
    return absl::OkStatus();
  }

  absl::Status ReadBool(std::string_view key, bool required, bool* out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (!node->is_boolean()) return Invalid(*node, Key(key), "must be true or false");
    *out = node->as_boolean()->get();
    return absl::OkStatus();
  }

  template <typename T, size_t N>
  absl::Status ReadEnum(std::string_view key, bool required,
                        const std::array<EnumName<T>, N>& names, T* out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return required ? Missing(key) : absl::OkStatus();
    if (node->is_string()) {
      const std::string& v = node->as_string()->get();
      for (const auto& n : names) {
        if (n.name == v) {
          *out = n.value;
          return absl::OkStatus();
        }
      }
    }
    return Invalid(*node, Key(key), absl::StrCat("must be one of ", NameList(names)));
  }

  absl::Status ReadStringArray(std::string_view key, std::vector<std::string>* out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::array* array = node->as_array();
    if (array == nullptr) return Invalid(*node, Key(key), "must be an array of strings");
    out->clear();
    for (const toml::node& element : *array) {
      if (!element.is_string()) return Invalid(element, Key(key), "must hold strings only");
      out->push_back(element.as_string()->get());
    }
    return absl::OkStatus();
  }

  // An inline table (or table) of string values, in key order.
  absl::Status ReadStringPairs(std::string_view key,
                               std::vector<std::pair<std::string, std::string>>* out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::table* t = node->as_table();
    if (t == nullptr) return Invalid(*node, Key(key), "must be a table of strings");
    out->clear();
    for (const auto& [k, v] : *t) {
      std::string full = absl::StrCat(Key(key), ".", Sv(k.str()));
      if (!v.is_string()) return Invalid(v, full, "must be a string");
      const std::string& value = v.as_string()->get();
      if (!IsPrintableAscii(value)) {
        return Invalid(v, full, "must hold printable ASCII characters only");
      }
      out->emplace_back(std::string(k.str()), value);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<Section>> Subtable(std::string_view key) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return std::optional<Section>();
    const toml::table* t = node->as_table();
    if (t == nullptr) return Invalid(*node, Key(key), "must be a table");
    return std::optional<Section>(Section{*t, Key(key)});
  }

  const toml::node& NodeOr(std::string_view key) const {
    const toml::node* node = table.get(key);
    return node != nullptr ? *node : static_cast<const toml::node&>(table);
  }
};

// Parameters an engine may never have overridden by the catalog.
bool IsReservedRequestParam(std::string_view name) {
  static constexpr std::array<std::string_view, 14> kReserved = {"response_type",
                                                                 "client_id",
                                                                 "client_secret",
                                                                 "redirect_uri",
                                                                 "scope",
                                                                 "state",
                                                                 "nonce",
                                                                 "code",
                                                                 "code_verifier",
                                                                 "code_challenge",
                                                                 "code_challenge_method",
                                                                 "grant_type",
                                                                 "refresh_token",
                                                                 "user_scope"};
  return std::find(kReserved.begin(), kReserved.end(), name) != kReserved.end();
}

bool IsForbiddenHeader(std::string_view name) {
  static constexpr std::array<std::string_view, 7> kForbidden = {
      "authorization",     "content-type", "content-length", "host",
      "transfer-encoding", "cookie",       "connection"};
  return std::any_of(kForbidden.begin(), kForbidden.end(),
                     [&](std::string_view f) { return EqualsIgnoreCase(f, name); });
}

absl::Status ValidateParameterValue(const TemplateParameter& p, std::string_view value) {
  switch (p.kind) {
    case TemplateParameter::Kind::kDnsLabel:
      if (IsDnsLabel(value)) return absl::OkStatus();
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter ", p.name, " must be one DNS label (letters, digits and '-', at most 63)"));
    case TemplateParameter::Kind::kMicrosoftTenant:
      if (value == "common" || value == "organizations" || value == "consumers" || IsGuid(value) ||
          IsDomainName(value)) {
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(
          absl::StrCat("parameter ", p.name,
                       " must be a tenant GUID, a domain name, or common, organizations or "
                       "consumers"));
    case TemplateParameter::Kind::kChoice:
      if (p.choices.count(std::string(value)) != 0) return absl::OkStatus();
      {
        std::vector<std::string> keys;
        for (const auto& [k, v] : p.choices) keys.push_back(k);
        return absl::InvalidArgumentError(
            absl::StrCat("parameter ", p.name, " must be one of ", absl::StrJoin(keys, ", ")));
      }
  }
  return absl::InternalError("unknown parameter kind");
}

// The text that replaces "{name}" for a validated value.
std::string Substitution(const TemplateParameter& p, const std::string& value) {
  if (p.kind == TemplateParameter::Kind::kChoice) return p.choices.at(value);
  return value;
}

struct EndpointField {
  std::string_view key;
  std::string Endpoints::*member;
  bool allows_client_id_and_token;
  bool allows_tenantid;
};

constexpr std::array<EndpointField, 6> kEndpointFields{{
    {"authorization_endpoint", &Endpoints::authorization, false, false},
    {"token_endpoint", &Endpoints::token, false, false},
    {"revocation_endpoint", &Endpoints::revocation, true, false},
    {"userinfo_endpoint", &Endpoints::userinfo, false, false},
    {"jwks_uri", &Endpoints::jwks_uri, false, false},
    {"issuer", &Endpoints::issuer, false, true},
}};

// Checks a template: placeholders are declared parameters or allowed run-time ones, and the
// URL is https once they are filled.
absl::Status CheckTemplate(const ConnectorType& type, std::string_view url, bool run_time_ok,
                           bool tenantid_ok) {
  GV_ASSIGN_OR_RETURN(
      std::string sample,
      ExpandTemplate(url, [&](std::string_view name) -> absl::StatusOr<std::string> {
        if (run_time_ok && (name == kClientIdPlaceholder || name == kTokenPlaceholder)) {
          return std::string("x");
        }
        if (tenantid_ok && name == kTenantIdPlaceholder) return std::string("x");
        const TemplateParameter* p = type.FindParameter(name);
        if (p == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("names {", Sv(name), "}, which is not a declared parameter"));
        }
        return std::string("x");
      }));
  return ValidateEndpointUrl(sample, /*allow_loopback_http=*/false);
}

constexpr std::string_view kGrantPlaceholderPrefix = "grant:";

// An API base with every placeholder standing for a value: what it looks like in use.
absl::StatusOr<std::string> SampleApiBase(const ConnectorType& type, std::string_view base) {
  return ExpandTemplate(base, [&](std::string_view name) -> absl::StatusOr<std::string> {
    if (name.substr(0, kGrantPlaceholderPrefix.size()) == kGrantPlaceholderPrefix) {
      if (!IsIdentifier(name.substr(kGrantPlaceholderPrefix.size()))) {
        return absl::InvalidArgumentError(absl::StrCat("{", Sv(name), "} names no metadata key"));
      }
      return std::string("x");
    }
    if (type.FindParameter(name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("names {", Sv(name), "}, which is not a declared parameter"));
    }
    return std::string("x");
  });
}

absl::Status ReadApiBases(const Section& s, ConnectorType& type) {
  GV_RETURN_IF_ERROR(s.ReadStringArray("api_bases", &type.api_bases));
  for (const std::string& base : type.api_bases) {
    absl::StatusOr<std::string> sample = SampleApiBase(type, base);
    absl::Status st = sample.ok() ? ValidateApiBase(*sample) : sample.status();
    if (!st.ok()) {
      return Invalid(s.NodeOr("api_bases"), s.Key("api_bases"),
                     absl::StrCat("'", base, "' ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadParameters(const Section& s, ConnectorType& type) {
  GV_ASSIGN_OR_RETURN(std::optional<Section> params, s.Subtable("parameters"));
  if (!params) return absl::OkStatus();
  for (const auto& [key, node] : params->table) {
    std::string name(key.str());
    const toml::table* t = node.as_table();
    if (t == nullptr) return Invalid(node, params->Key(name), "must be a table");
    if (!IsIdentifier(name, 32)) {
      return Invalid(node, params->Key(name), "must be named with [a-z0-9_]");
    }
    Section ps{*t, params->Key(name)};
    GV_RETURN_IF_ERROR(ps.OnlyKnownKeys({"kind", "description", "default", "choices"}));
    TemplateParameter p;
    p.name = name;
    GV_RETURN_IF_ERROR(ps.ReadEnum("kind", true, kParameterKindNames, &p.kind));
    GV_RETURN_IF_ERROR(ps.ReadString("description", true, &p.description));
    std::vector<std::pair<std::string, std::string>> choices;
    GV_RETURN_IF_ERROR(ps.ReadStringPairs("choices", &choices));
    if (p.kind == TemplateParameter::Kind::kChoice) {
      if (choices.empty()) return ps.Missing("choices");
      for (const auto& [k, v] : choices) {
        const bool value_ok = std::all_of(
            v.begin(), v.end(), [](char c) { return IsAlnum(c) || c == '-' || c == '.'; });
        if (!IsIdentifier(k, 32) || !value_ok) {
          return Invalid(ps.NodeOr("choices"), ps.Key("choices"),
                         "keys must be [a-z0-9_] and values [A-Za-z0-9.-]");
        }
        p.choices.emplace(k, v);
      }
    } else if (!choices.empty()) {
      return Invalid(ps.NodeOr("choices"), ps.Key("choices"), "is only for kind = \"choice\"");
    }
    if (t->get("default") != nullptr) {
      std::string def;
      GV_RETURN_IF_ERROR(ps.ReadString("default", false, &def));
      absl::Status valid = ValidateParameterValue(p, def);
      if (!valid.ok()) return Invalid(ps.NodeOr("default"), ps.Key("default"), Msg(valid));
      p.default_value = def;
    }
    type.parameters.push_back(std::move(p));
  }
  return absl::OkStatus();
}

absl::Status CheckScopeList(const Section& s, std::string_view key, const ConnectorType& type,
                            const std::vector<std::string>& scopes, bool must_be_allowed) {
  std::set<std::string> seen;
  for (const std::string& scope : scopes) {
    if (!IsScopeToken(scope) || scope.find(type.scope_separator) != std::string::npos) {
      return Invalid(s.NodeOr(key), s.Key(key),
                     absl::StrCat("holds \"", scope, "\", which is not a valid scope"));
    }
    if (!seen.insert(scope).second) {
      return Invalid(s.NodeOr(key), s.Key(key), absl::StrCat("lists ", scope, " twice"));
    }
    if (must_be_allowed && !type.any_scope &&
        std::find(type.scopes_allowed.begin(), type.scopes_allowed.end(), scope) ==
            type.scopes_allowed.end()) {
      return Invalid(s.NodeOr(key), s.Key(key),
                     absl::StrCat("holds ", scope, ", which scopes_allowed does not"));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadScopes(const Section& s, ConnectorType& type) {
  const toml::node* allowed = s.table.get("scopes_allowed");
  if (allowed == nullptr) return s.Missing("scopes_allowed");
  if (allowed->is_string()) {
    if (allowed->as_string()->get() != "any") {
      return Invalid(*allowed, s.Key("scopes_allowed"), "must be an array of scopes or \"any\"");
    }
    type.any_scope = true;
  } else {
    GV_RETURN_IF_ERROR(s.ReadStringArray("scopes_allowed", &type.scopes_allowed));
  }
  GV_RETURN_IF_ERROR(s.ReadStringArray("scopes_required", &type.scopes_required));
  GV_RETURN_IF_ERROR(s.ReadStringArray("scopes_default", &type.scopes_default));
  GV_RETURN_IF_ERROR(CheckScopeList(s, "scopes_allowed", type, type.scopes_allowed, false));
  GV_RETURN_IF_ERROR(CheckScopeList(s, "scopes_required", type, type.scopes_required, true));
  GV_RETURN_IF_ERROR(CheckScopeList(s, "scopes_default", type, type.scopes_default, true));
  GV_RETURN_IF_ERROR(ReadApiBases(s, type));
  if (type.scope_param.empty() &&
      (type.any_scope || !type.scopes_allowed.empty() || !type.scopes_required.empty())) {
    return Invalid(s.NodeOr("scope_param"), s.Key("scope_param"),
                   "is empty (scopes are fixed at app registration), so scopes_allowed must be "
                   "[] and scopes_required absent");
  }
  return absl::OkStatus();
}

absl::Status ReadConnector(const Section& s, ConnectorType& type) {
  GV_RETURN_IF_ERROR(s.OnlyKnownKeys({"display_name",
                                      "provider",
                                      "discovery",
                                      "authorization_endpoint",
                                      "token_endpoint",
                                      "revocation_endpoint",
                                      "userinfo_endpoint",
                                      "jwks_uri",
                                      "issuer",
                                      "scope_separator",
                                      "scope_param",
                                      "pkce",
                                      "client_auth",
                                      "token_body",
                                      "token_response",
                                      "token_headers",
                                      "authorization_params",
                                      "token_params",
                                      "scopes_allowed",
                                      "scopes_required",
                                      "scopes_default",
                                      "parameters",
                                      "tokens",
                                      "revocation",
                                      "identity",
                                      "api_bases"}));
  GV_RETURN_IF_ERROR(s.ReadString("display_name", true, &type.display_name));
  if (type.display_name.empty())
    return Invalid(s.NodeOr("display_name"), s.Key("display_name"), "must not be empty");
  GV_RETURN_IF_ERROR(s.ReadString("provider", true, &type.provider));
  if (!IsIdentifier(type.provider)) {
    return Invalid(s.NodeOr("provider"), s.Key("provider"), "must be [a-z0-9_]");
  }
  GV_RETURN_IF_ERROR(s.ReadBool("discovery", false, &type.discovery));
  GV_RETURN_IF_ERROR(ReadParameters(s, type));

  for (const EndpointField& f : kEndpointFields) {
    GV_RETURN_IF_ERROR(s.ReadString(f.key, false, &(type.endpoints.*f.member)));
  }
  GV_RETURN_IF_ERROR(s.ReadString("scope_separator", true, &type.scope_separator));
  if (type.scope_separator != " " && type.scope_separator != ",") {
    return Invalid(s.NodeOr("scope_separator"), s.Key("scope_separator"), "must be \" \" or \",\"");
  }
  GV_RETURN_IF_ERROR(s.ReadString("scope_param", false, &type.scope_param));
  if (!type.scope_param.empty() && !IsIdentifier(type.scope_param, 32)) {
    return Invalid(s.NodeOr("scope_param"), s.Key("scope_param"), "must be [a-z0-9_] or empty");
  }
  GV_RETURN_IF_ERROR(s.ReadBool("pkce", true, &type.pkce));
  GV_RETURN_IF_ERROR(s.ReadEnum("client_auth", true, kClientAuthNames, &type.client_auth));
  GV_RETURN_IF_ERROR(s.ReadEnum("token_body", true, kBodyFormatNames, &type.token_body));
  if (type.client_auth == ClientAuth::kBasicJson && type.token_body != BodyFormat::kJson) {
    return Invalid(s.NodeOr("token_body"), s.Key("token_body"),
                   "must be \"json\" when client_auth is \"basic_json\"");
  }
  GV_RETURN_IF_ERROR(s.ReadEnum("token_response", true, kTokenResponseNames, &type.token_response));

  GV_RETURN_IF_ERROR(s.ReadStringPairs("token_headers", &type.token_headers));
  for (const auto& [name, value] : type.token_headers) {
    if (!IsHttpToken(name) || IsForbiddenHeader(name)) {
      return Invalid(s.NodeOr("token_headers"), s.Key("token_headers"),
                     absl::StrCat("may not set header ", name));
    }
  }
  for (std::string_view key : {"authorization_params", "token_params"}) {
    auto* out = key == "authorization_params" ? &type.authorization_params : &type.token_params;
    GV_RETURN_IF_ERROR(s.ReadStringPairs(key, out));
    for (const auto& [name, value] : *out) {
      if (!IsHttpToken(name) || IsReservedRequestParam(name)) {
        return Invalid(s.NodeOr(key), s.Key(key),
                       absl::StrCat("may not set ", name, ": the OAuth engine owns it"));
      }
    }
  }
  GV_RETURN_IF_ERROR(ReadScopes(s, type));

  // tokens
  GV_ASSIGN_OR_RETURN(std::optional<Section> tokens, s.Subtable("tokens"));
  if (!tokens) return s.Missing("tokens");
  GV_RETURN_IF_ERROR(
      tokens->OnlyKnownKeys({"refresh", "refresh_optional", "refresh_expires", "access_expires"}));
  GV_RETURN_IF_ERROR(tokens->ReadEnum("refresh", true, kRefreshNames, &type.tokens.refresh));
  GV_RETURN_IF_ERROR(tokens->ReadBool("refresh_optional", false, &type.tokens.refresh_optional));
  GV_RETURN_IF_ERROR(tokens->ReadBool("refresh_expires", false, &type.tokens.refresh_expires));
  GV_RETURN_IF_ERROR(tokens->ReadBool("access_expires", false, &type.tokens.access_expires));
  if (type.tokens.refresh == RefreshTokens::kNone &&
      (type.tokens.refresh_optional || type.tokens.refresh_expires)) {
    return Invalid(tokens->table, tokens->Key("refresh"),
                   "is \"none\", so refresh_optional and refresh_expires must be false");
  }

  // revocation
  GV_ASSIGN_OR_RETURN(std::optional<Section> rev, s.Subtable("revocation"));
  if (!rev) return s.Missing("revocation");
  GV_RETURN_IF_ERROR(rev->OnlyKnownKeys({"method", "token", "body"}));
  GV_RETURN_IF_ERROR(rev->ReadEnum("method", true, kRevocationNames, &type.revocation.method));
  GV_RETURN_IF_ERROR(rev->ReadEnum("body", false, kBodyFormatNames, &type.revocation.body));
  if (type.revocation.method == RevocationMethod::kNone) {
    if (rev->table.get("token") != nullptr) {
      return Invalid(rev->NodeOr("token"), rev->Key("token"), "is meaningless for method none");
    }
    if (!type.endpoints.revocation.empty()) {
      return Invalid(s.NodeOr("revocation_endpoint"), s.Key("revocation_endpoint"),
                     "is set but revocation.method is \"none\"");
    }
  } else {
    std::string which;
    GV_RETURN_IF_ERROR(rev->ReadString("token", true, &which));
    if (which != "refresh_token" && which != "access_token") {
      return Invalid(rev->NodeOr("token"), rev->Key("token"),
                     "must be \"refresh_token\" or \"access_token\"");
    }
    type.revocation.revoke_refresh_token = which == "refresh_token";
    if (type.revocation.revoke_refresh_token && type.tokens.refresh == RefreshTokens::kNone) {
      return Invalid(rev->NodeOr("token"), rev->Key("token"),
                     "names the refresh token of a type that has none");
    }
    if (type.endpoints.revocation.empty() && !type.discovery) {
      return Invalid(s.table, s.Key("revocation_endpoint"),
                     "is required when revocation.method is not \"none\"");
    }
  }

  // identity
  GV_ASSIGN_OR_RETURN(std::optional<Section> id, s.Subtable("identity"));
  if (!id) return s.Missing("identity");
  GV_RETURN_IF_ERROR(id->OnlyKnownKeys({"method", "endpoint", "sites_endpoint", "metadata"}));
  GV_RETURN_IF_ERROR(id->ReadEnum("method", true, kIdentityNames, &type.identity.method));
  GV_RETURN_IF_ERROR(id->ReadString("endpoint", false, &type.endpoints.identity));
  GV_RETURN_IF_ERROR(id->ReadString("sites_endpoint", false, &type.endpoints.identity_sites));
  GV_RETURN_IF_ERROR(id->ReadStringArray("metadata", &type.identity.metadata));
  for (const std::string& m : type.identity.metadata) {
    if (!IsIdentifier(m)) {
      return Invalid(id->NodeOr("metadata"), id->Key("metadata"),
                     absl::StrCat("holds \"", m, "\": names are [a-z0-9_]"));
    }
  }
  const IdentityMethod im = type.identity.method;
  const bool needs_call =
      im == IdentityMethod::kGithubUser || im == IdentityMethod::kHubspotTokenInfo ||
      im == IdentityMethod::kLinearViewer || im == IdentityMethod::kAtlassianMe ||
      im == IdentityMethod::kZendeskMe || im == IdentityMethod::kIntercomMe;
  if (needs_call != !type.endpoints.identity.empty()) {
    return Invalid(
        id->NodeOr("endpoint"), id->Key("endpoint"),
        needs_call ? "is required by this identity method" : "is not used by this identity method");
  }
  if ((im == IdentityMethod::kAtlassianMe) != !type.endpoints.identity_sites.empty()) {
    return Invalid(id->NodeOr("sites_endpoint"), id->Key("sites_endpoint"),
                   "is required by atlassian_me and used by nothing else");
  }

  // endpoints
  if (type.discovery) {
    for (const EndpointField& f : kEndpointFields) {
      if (!(type.endpoints.*f.member).empty()) {
        return Invalid(s.NodeOr(f.key), s.Key(f.key),
                       "must be absent: discovery = true takes it from the discovery document");
      }
    }
    if (!type.parameters.empty()) {
      return Invalid(s.NodeOr("parameters"), s.Key("parameters"),
                     "must be absent when discovery = true");
    }
    if (im != IdentityMethod::kIdToken && im != IdentityMethod::kUserinfo) {
      return Invalid(id->NodeOr("method"), id->Key("method"),
                     "must be id_token or userinfo when discovery = true");
    }
  } else {
    if (type.endpoints.authorization.empty()) return s.Missing("authorization_endpoint");
    if (type.endpoints.token.empty()) return s.Missing("token_endpoint");
    if (im == IdentityMethod::kIdToken &&
        (type.endpoints.jwks_uri.empty() || type.endpoints.issuer.empty())) {
      return Invalid(s.table, s.Key("issuer"),
                     "and jwks_uri are required by identity method id_token");
    }
    if (im == IdentityMethod::kUserinfo && type.endpoints.userinfo.empty()) {
      return s.Missing("userinfo_endpoint");
    }
  }
  std::set<std::string> used;
  for (const EndpointField& f : kEndpointFields) {
    const std::string& url = type.endpoints.*f.member;
    if (url.empty()) continue;
    absl::Status st = CheckTemplate(type, url, f.allows_client_id_and_token, f.allows_tenantid);
    if (!st.ok()) return Invalid(s.NodeOr(f.key), s.Key(f.key), Msg(st));
    for (std::string& p : Placeholders(url)) used.insert(std::move(p));
  }
  for (std::string_view key : {"endpoint", "sites_endpoint"}) {
    const std::string& url =
        key == "endpoint" ? type.endpoints.identity : type.endpoints.identity_sites;
    if (url.empty()) continue;
    absl::Status st = CheckTemplate(type, url, /*run_time_ok=*/true, /*tenantid_ok=*/false);
    if (!st.ok()) return Invalid(id->NodeOr(key), id->Key(key), Msg(st));
    for (std::string& p : Placeholders(url)) used.insert(std::move(p));
  }
  for (const TemplateParameter& p : type.parameters) {
    if (used.count(p.name) == 0) {
      return Invalid(s.NodeOr("parameters"), s.Key(absl::StrCat("parameters.", p.name)),
                     "is declared but no endpoint uses it");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ConnectorType>> ReadCatalog(const toml::table& root,
                                                       std::string_view source_name) {
  Section top{root, ""};
  GV_RETURN_IF_ERROR(top.OnlyKnownKeys({"format_version", "connectors"}));
  const toml::node* version = root.get("format_version");
  if (version == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(source_name), ": format_version: is required"));
  }
  if (!version->is_integer() || version->as_integer()->get() != 1) {
    return Invalid(*version, "format_version", "must be 1");
  }
  GV_ASSIGN_OR_RETURN(std::optional<Section> connectors, top.Subtable("connectors"));
  if (!connectors || connectors->table.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(source_name), ": connectors: at least one connector is required"));
  }
  std::vector<ConnectorType> types;
  for (const auto& [key, node] : connectors->table) {
    std::string name(key.str());
    const toml::table* t = node.as_table();
    if (t == nullptr) return Invalid(node, connectors->Key(name), "must be a table");
    if (!IsIdentifier(name)) {
      return Invalid(node, connectors->Key(name), "type names are [a-z0-9_], at most 64");
    }
    ConnectorType type;
    type.type = name;
    GV_RETURN_IF_ERROR(ReadConnector(Section{*t, connectors->Key(name)}, type));
    types.push_back(std::move(type));
  }
  std::sort(types.begin(), types.end(),
            [](const ConnectorType& a, const ConnectorType& b) { return a.type < b.type; });
  return types;
}

// ----- discovery ---------------------------------------------------------------------------

absl::StatusOr<std::string> DiscoveryString(const nlohmann::json& doc, const char* key,
                                            bool required) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) {
    if (required) {
      return absl::InvalidArgumentError(absl::StrCat("discovery document has no ", key));
    }
    return std::string();
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("discovery document: ", key, " is not a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<std::optional<std::vector<std::string>>> DiscoveryStringList(
    const nlohmann::json& doc, const char* key) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return std::optional<std::vector<std::string>>();
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("discovery document: ", key, " is not an array"));
  }
  std::vector<std::string> out;
  for (const nlohmann::json& v : *it) {
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("discovery document: ", key, " holds a non-string"));
    }
    out.push_back(v.get<std::string>());
  }
  return std::optional<std::vector<std::string>>(std::move(out));
}

bool Contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

absl::StatusOr<ConnectorType> FromDiscoveryImpl(const ConnectorType& oidc_template,
                                                std::string_view discovery_json,
                                                std::string_view expected_issuer,
                                                bool allow_loopback_http) {
  if (!oidc_template.discovery) {
    return absl::InvalidArgumentError(absl::StrCat("connector type ", oidc_template.type,
                                                   " is not configured from a discovery document"));
  }
  {
    absl::Status st = ValidateEndpointUrl(expected_issuer, allow_loopback_http);
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("expected issuer: ", st.message()));
    }
  }
  if (discovery_json.size() > kMaxDiscoveryBytes) {
    return absl::InvalidArgumentError("discovery document is larger than 256 KiB");
  }
  nlohmann::json doc = nlohmann::json::parse(discovery_json.begin(), discovery_json.end(), nullptr,
                                             /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError("discovery document is not a JSON object");
  }
  GV_ASSIGN_OR_RETURN(std::string issuer, DiscoveryString(doc, "issuer", true));
  if (issuer != expected_issuer) {
    return absl::InvalidArgumentError(
        absl::StrCat("discovery document names another issuer than ", Sv(expected_issuer)));
  }
  ConnectorType type = oidc_template;
  type.endpoints = Endpoints();
  type.endpoints.issuer = issuer;
  struct Field {
    const char* key;
    std::string Endpoints::*member;
    bool required;
  };
  const Field fields[] = {
      {"authorization_endpoint", &Endpoints::authorization, true},
      {"token_endpoint", &Endpoints::token, true},
      {"jwks_uri", &Endpoints::jwks_uri, true},
      {"revocation_endpoint", &Endpoints::revocation, false},
      {"userinfo_endpoint", &Endpoints::userinfo, false},
  };
  for (const Field& f : fields) {
    GV_ASSIGN_OR_RETURN(std::string url, DiscoveryString(doc, f.key, f.required));
    if (url.empty()) {
      if (f.required) {
        return absl::InvalidArgumentError(absl::StrCat("discovery document: ", f.key, " is empty"));
      }
      continue;
    }
    absl::Status st = ValidateEndpointUrl(url, allow_loopback_http);
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("discovery document: ", f.key, ": ", st.message()));
    }
    type.endpoints.*f.member = std::move(url);
  }
  if (type.identity.method == IdentityMethod::kUserinfo && type.endpoints.userinfo.empty()) {
    return absl::InvalidArgumentError("discovery document has no userinfo_endpoint");
  }
  if (type.endpoints.revocation.empty()) {
    type.revocation.method = RevocationMethod::kNone;
  }

  if (auto iss = doc.find("authorization_response_iss_parameter_supported");
      iss != doc.end() && !iss->is_null()) {
    if (!iss->is_boolean()) {
      return absl::InvalidArgumentError(
          "discovery document: authorization_response_iss_parameter_supported is not a boolean");
    }
    type.authorization_response_iss = iss->get<bool>();
  }

  GV_ASSIGN_OR_RETURN(auto pkce_methods,
                      DiscoveryStringList(doc, "code_challenge_methods_supported"));
  // Absent: servers that accept PKCE often do not say so, and RFC 6749 §3.1 makes them ignore
  // parameters they do not know, so the code_challenge stays. Listed without S256: off.
  if (pkce_methods && !Contains(*pkce_methods, "S256")) type.pkce = false;

  GV_ASSIGN_OR_RETURN(auto auth_methods,
                      DiscoveryStringList(doc, "token_endpoint_auth_methods_supported"));
  if (auth_methods) {
    const bool basic = Contains(*auth_methods, "client_secret_basic");
    const bool post = Contains(*auth_methods, "client_secret_post");
    if (!basic && !post) {
      return absl::InvalidArgumentError(
          "the token endpoint supports neither client_secret_basic nor client_secret_post");
    }
    if (type.client_auth == ClientAuth::kBasic && !basic) type.client_auth = ClientAuth::kPost;
    if (type.client_auth == ClientAuth::kPost && !post) type.client_auth = ClientAuth::kBasic;
    if (type.client_auth == ClientAuth::kBasicJson && !basic) {
      return absl::InvalidArgumentError("the token endpoint does not support client_secret_basic");
    }
  }
  return type;
}

}  // namespace

// ----- public --------------------------------------------------------------------------------

const TemplateParameter* ConnectorType::FindParameter(std::string_view name) const {
  for (const TemplateParameter& p : parameters) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

absl::StatusOr<std::string> ExpandApiBase(std::string_view base,
                                          const std::map<std::string, std::string>& metadata) {
  return ExpandTemplate(base, [&](std::string_view name) -> absl::StatusOr<std::string> {
    if (name.substr(0, kGrantPlaceholderPrefix.size()) != kGrantPlaceholderPrefix) {
      return absl::InvalidArgumentError(absl::StrCat("unknown placeholder {", Sv(name), "}"));
    }
    const std::string key(name.substr(kGrantPlaceholderPrefix.size()));
    const auto it = metadata.find(key);
    if (it == metadata.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the grant has no '", key, "', which the connector's API address needs"));
    }
    const std::string& value = it->second;
    const bool identifier = !value.empty() && value.size() <= 128 &&
                            std::all_of(value.begin(), value.end(), [](char c) {
                              return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                                     c == '-' || c == '_' || c == '.';
                            });
    if (!identifier || value == "." || value == "..") {
      return absl::FailedPreconditionError(
          absl::StrCat("the grant's '", key, "' is not an identifier; it cannot name an API"));
    }
    return value;
  });
}

absl::Status ValidateApiBase(std::string_view url) {
  GV_RETURN_IF_ERROR(ValidateEndpointUrl(url, /*allow_loopback_http=*/false));
  if (url.find('?') != std::string_view::npos) {
    return absl::InvalidArgumentError("must not have a query");
  }
  const size_t authority = url.find("://") + 3;
  const size_t path = url.find('/', authority);
  if (path == std::string_view::npos || url.back() != '/') {
    return absl::InvalidArgumentError("must have a path that ends in '/'");
  }
  return absl::OkStatus();
}

absl::Status ValidateEndpointUrl(std::string_view url, bool allow_loopback_http) {
  if (url.size() > kMaxUrlBytes) return absl::InvalidArgumentError("URL is too long");
  if (!std::all_of(url.begin(), url.end(), IsUrlChar)) {
    return absl::InvalidArgumentError("URL holds characters a URL may not hold");
  }
  if (url.find('#') != std::string_view::npos) {
    return absl::InvalidArgumentError("URL has a fragment");
  }
  for (size_t i = url.find('%'); i != std::string_view::npos; i = url.find('%', i + 1)) {
    if (i + 2 >= url.size() || !IsHex(url[i + 1]) || !IsHex(url[i + 2])) {
      return absl::InvalidArgumentError("URL has a malformed percent-encoding");
    }
  }
  bool http = false;
  std::string_view rest;
  if (url.substr(0, 8) == "https://") {
    rest = url.substr(8);
  } else if (url.substr(0, 7) == "http://") {
    http = true;
    rest = url.substr(7);
  } else {
    return absl::InvalidArgumentError("URL is not https");
  }
  std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
  if (authority.empty()) return absl::InvalidArgumentError("URL has no host");
  if (authority.find('@') != std::string_view::npos) {
    return absl::InvalidArgumentError("URL carries user information");
  }
  std::string_view host;
  std::string_view port;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return absl::InvalidArgumentError("URL has a bad host");
    host = authority.substr(0, close + 1);
    std::string_view inner = host.substr(1, host.size() - 2);
    if (inner.empty() || !std::all_of(inner.begin(), inner.end(),
                                      [](char c) { return IsHex(c) || c == ':' || c == '.'; })) {
      return absl::InvalidArgumentError("URL has a bad host");
    }
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return absl::InvalidArgumentError("URL has a bad host");
      port = after.substr(1);
      if (port.empty()) return absl::InvalidArgumentError("URL has a bad port");
    }
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return absl::InvalidArgumentError("URL has a bad port");
    }
    if (host.empty() || host.front() == '.' || host.back() == '.' ||
        host.find("..") != std::string_view::npos ||
        !std::all_of(host.begin(), host.end(),
                     [](char c) { return IsAlnum(c) || c == '-' || c == '.'; })) {
      return absl::InvalidArgumentError("URL has a bad host");
    }
  }
  if (!port.empty()) {
    if (port.size() > 5 || !std::all_of(port.begin(), port.end(), IsDigit) ||
        std::stoi(std::string(port)) < 1 || std::stoi(std::string(port)) > 65535) {
      return absl::InvalidArgumentError("URL has a bad port");
    }
  }
  if (http && !(allow_loopback_http && IsLoopbackHost(host))) {
    return absl::InvalidArgumentError(allow_loopback_http
                                          ? "URL is http but its host is not a loopback address"
                                          : "URL is not https");
  }
  return absl::OkStatus();
}

absl::StatusOr<Catalog> Catalog::LoadString(std::string_view toml, std::string_view source_name) {
  try {
    toml::table root = toml::parse(toml, source_name);
    GV_ASSIGN_OR_RETURN(std::vector<ConnectorType> types, ReadCatalog(root, source_name));
    return Catalog(std::move(types));
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(source_name), ":", e.source().begin.line, ":",
                                                   e.source().begin.column, ": ",
                                                   Sv(e.description())));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(Sv(source_name), ": ", e.what()));
  }
}

absl::StatusOr<Catalog> Catalog::LoadFile(const std::string& path) {
  try {
    toml::table root = toml::parse_file(path);
    GV_ASSIGN_OR_RETURN(std::vector<ConnectorType> types, ReadCatalog(root, path));
    return Catalog(std::move(types));
  } catch (const toml::parse_error& e) {
    // toml++ reports a file it cannot open as a parse error at line 0.
    if (e.source().begin.line == 0) {
      return absl::NotFoundError(
          absl::StrCat("cannot read connector catalog ", path, ": ", Sv(e.description())));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        path, ":", e.source().begin.line, ":", e.source().begin.column, ": ", Sv(e.description())));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<Catalog> Catalog::LoadDefault() {
#ifdef GV_CONNECTORS_TOML
  return LoadFile(GV_CONNECTORS_TOML);
#else
  return absl::FailedPreconditionError("grantvault was built without GV_CONNECTORS_TOML");
#endif
}

const ConnectorType* Catalog::Find(std::string_view type) const {
  auto it = std::lower_bound(types_.begin(), types_.end(), type,
                             [](const ConnectorType& t, std::string_view v) { return t.type < v; });
  return it != types_.end() && it->type == type ? &*it : nullptr;
}

absl::StatusOr<ResolvedEndpoints> Catalog::Resolve(
    const ConnectorType& type, const std::map<std::string, std::string>& params) {
  for (const auto& [name, value] : params) {
    if (type.FindParameter(name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("connector type ", type.type, " takes no parameter ", name));
    }
  }
  ResolvedEndpoints out;
  std::map<std::string, std::string> substitutions;
  for (const TemplateParameter& p : type.parameters) {
    auto it = params.find(p.name);
    std::string value;
    if (it != params.end()) {
      value = it->second;
    } else if (p.default_value) {
      value = *p.default_value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "connector type ", type.type, " needs parameter ", p.name, " (", p.description, ")"));
    }
    GV_RETURN_IF_ERROR(ValidateParameterValue(p, value));
    substitutions[p.name] = Substitution(p, value);
    out.parameters[p.name] = value;
  }
  auto expand = [&](const std::string& url, bool run_time_ok,
                    bool tenantid_ok) -> absl::StatusOr<std::string> {
    if (url.empty()) return std::string();
    GV_ASSIGN_OR_RETURN(
        std::string expanded,
        ExpandTemplate(url, [&](std::string_view name) -> absl::StatusOr<std::string> {
          if ((run_time_ok && (name == kClientIdPlaceholder || name == kTokenPlaceholder)) ||
              (tenantid_ok && name == kTenantIdPlaceholder)) {
            return absl::StrCat("{", Sv(name), "}");
          }
          auto it = substitutions.find(std::string(name));
          if (it == substitutions.end()) {
            return absl::InvalidArgumentError(absl::StrCat("unknown placeholder {", Sv(name), "}"));
          }
          return it->second;
        }));
    // Check the URL as it will be used, with run-time placeholders standing for a value.
    GV_ASSIGN_OR_RETURN(
        std::string sample,
        ExpandTemplate(expanded, [](std::string_view) -> absl::StatusOr<std::string> {
          return std::string("x");
        }));
    GV_RETURN_IF_ERROR(ValidateEndpointUrl(sample, /*allow_loopback_http=*/false));
    return expanded;
  };
  struct Field {
    std::string Endpoints::*member;
    bool run_time_ok;
    bool tenantid_ok;
  };
  for (const std::string& base : type.api_bases) {
    GV_ASSIGN_OR_RETURN(
        std::string expanded,
        ExpandTemplate(base, [&](std::string_view name) -> absl::StatusOr<std::string> {
          if (name.substr(0, kGrantPlaceholderPrefix.size()) == kGrantPlaceholderPrefix)
            return absl::StrCat("{", Sv(name), "}");
          auto it = substitutions.find(std::string(name));
          if (it == substitutions.end()) {
            return absl::InvalidArgumentError(absl::StrCat("unknown placeholder {", Sv(name), "}"));
          }
          return it->second;
        }));
    out.api_bases.push_back(std::move(expanded));
  }
  const Field fields[] = {
      {&Endpoints::authorization, false, false}, {&Endpoints::token, false, false},
      {&Endpoints::revocation, true, false},     {&Endpoints::userinfo, false, false},
      {&Endpoints::jwks_uri, false, false},      {&Endpoints::issuer, false, true},
      {&Endpoints::identity, true, false},       {&Endpoints::identity_sites, true, false},
  };
  for (const Field& f : fields) {
    absl::StatusOr<std::string> expanded =
        expand(type.endpoints.*f.member, f.run_time_ok, f.tenantid_ok);
    if (!expanded.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("connector type ", type.type, ": ", expanded.status().message()));
    }
    out.endpoints.*f.member = std::move(*expanded);
  }
  return out;
}

absl::Status Catalog::CheckScopes(const ConnectorType& type,
                                  const std::vector<std::string>& requested) {
  if (type.scope_param.empty() && !requested.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(type.display_name,
                     " takes no scopes in the authorization request: its permissions are set "
                     "on the app; requested ",
                     requested.front()));
  }
  std::set<std::string_view> seen;
  for (const std::string& scope : requested) {
    if (!IsScopeToken(scope) || scope.find(type.scope_separator) != std::string::npos) {
      return absl::InvalidArgumentError("a requested scope is not a valid scope token");
    }
    if (!seen.insert(scope).second) {
      return absl::InvalidArgumentError(absl::StrCat("scope ", scope, " is requested twice"));
    }
    if (!type.any_scope && !Contains(type.scopes_allowed, scope)) {
      return absl::InvalidArgumentError(absl::StrCat("scope ", scope, " is not allowed for ",
                                                     type.display_name, " (", type.type, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ConnectorType> Catalog::FromDiscovery(const ConnectorType& oidc_template,
                                                     std::string_view discovery_json,
                                                     std::string_view expected_issuer,
                                                     bool allow_loopback_http) {
  try {
    return FromDiscoveryImpl(oidc_template, discovery_json, expected_issuer, allow_loopback_http);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("discovery document: ", e.what()));
  }
}

std::string_view ToString(ClientAuth v) { return NameOf(kClientAuthNames, v); }
std::string_view ToString(BodyFormat v) { return NameOf(kBodyFormatNames, v); }
std::string_view ToString(TokenResponseShape v) { return NameOf(kTokenResponseNames, v); }
std::string_view ToString(RefreshTokens v) { return NameOf(kRefreshNames, v); }
std::string_view ToString(RevocationMethod v) { return NameOf(kRevocationNames, v); }
std::string_view ToString(IdentityMethod v) { return NameOf(kIdentityNames, v); }

}  // namespace grantvault::oauth
