#include "oauth/request_parts.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "oauth/http_client.h"
#include "oauth/pkce.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {

std::string BasicAuthorization(std::string_view client_id, std::string_view client_secret) {
  WipedString secret{PercentEncode(client_secret)};
  WipedString credentials{absl::StrCat(PercentEncode(client_id), ":", secret.value)};
  WipedString encoded{Base64(credentials.value)};
  return absl::StrCat("Basic ", encoded.value);
}

void AppendFormField(std::string& body, std::string_view name, std::string_view value) {
  if (!body.empty()) body.push_back('&');
  absl::StrAppend(&body, PercentEncode(name), "=");
  WipedString encoded{PercentEncode(value)};
  body += encoded.value;
}

bool CatalogSetsHeader(const ConnectorType& type, std::string_view name) {
  for (const auto& [header, value] : type.token_headers) {
    if (absl::EqualsIgnoreCase(header, Sv(name))) return true;
  }
  return false;
}

}  // namespace grantvault::oauth
