#include "oauth/token_request.h"

#include <openssl/crypto.h>

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/strings.h"
#include "oauth/pkce.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {
namespace {

void AppendFormField(std::string& body, std::string_view name, std::string_view value) {
  if (!body.empty()) body.push_back('&');
  body += PercentEncode(name);
  body.push_back('=');
  std::string encoded = PercentEncode(value);
  body += encoded;
  Cleanse(encoded);
}

bool SetsHeader(const ConnectorType& type, std::string_view name) {
  for (const auto& [header, value] : type.token_headers) {
    if (absl::EqualsIgnoreCase(header, Sv(name))) return true;
  }
  return false;
}

}  // namespace

TokenRequest::TokenRequest(const ConnectorProfile& profile,
                           const AuthorizationCodeExchange& exchange) {
  Fields fields = {
      {"grant_type", "authorization_code"},
      {"code", exchange.code->view()},
      {"redirect_uri", exchange.redirect_uri},
  };
  if (exchange.pkce_verifier != nullptr && !exchange.pkce_verifier->empty()) {
    fields.emplace_back("code_verifier", exchange.pkce_verifier->view());
  }
  for (const auto& [name, value] : profile.catalog_type.token_params) {
    fields.emplace_back(name, value);
  }
  Build(profile, exchange.client_id, *exchange.client_secret, std::move(fields));
}

TokenRequest::TokenRequest(const ConnectorProfile& profile, const RefreshTokenExchange& exchange) {
  Build(profile, exchange.client_id, *exchange.client_secret,
        {{"grant_type", "refresh_token"}, {"refresh_token", exchange.refresh_token->view()}});
}

void TokenRequest::Build(const ConnectorProfile& profile, std::string_view client_id,
                         const SecretBytes& client_secret, Fields fields) {
  const ConnectorType& type = profile.catalog_type;
  const bool basic = type.client_auth != ClientAuth::kPost;
  if (!basic) {
    fields.emplace_back("client_id", client_id);
    fields.emplace_back("client_secret", client_secret.view());
  }

  request_.method = "POST";
  request_.url = profile.resolved.endpoints.token;
  if (type.token_body == BodyFormat::kJson) {
    nlohmann::json body = nlohmann::json::object();
    for (const auto& [name, value] : fields) body[std::string(name)] = std::string(value);
    request_.body = body.dump();
    WipeJson(body);
    request_.headers.emplace_back("Content-Type", "application/json");
  } else {
    for (const auto& [name, value] : fields) AppendFormField(request_.body, name, value);
    request_.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  }
  if (!SetsHeader(type, "Accept")) request_.headers.emplace_back("Accept", "application/json");
  for (const auto& [name, value] : type.token_headers) request_.headers.emplace_back(name, value);
  if (basic) {
    // RFC 6749 §2.3.1: both parts form-encoded before base64.
    std::string id = PercentEncode(client_id);
    std::string secret = PercentEncode(client_secret.view());
    std::string credentials = id + ":" + secret;
    std::string encoded = Base64(credentials);
    request_.headers.emplace_back("Authorization", "Basic " + encoded);
    Cleanse(secret);
    Cleanse(credentials);
    Cleanse(encoded);
  }
}

TokenRequest::~TokenRequest() {
  for (auto& [name, value] : request_.headers) Cleanse(value);
}

}  // namespace grantvault::oauth
