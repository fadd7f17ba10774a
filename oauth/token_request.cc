#include "oauth/token_request.h"

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "common/secret_bytes.h"
#include "common/strings.h"
#include "oauth/pkce.h"
#include "oauth/request_parts.h"
#include "oauth/wiping.h"

namespace grantvault::oauth {

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
  if (!CatalogSetsHeader(type, "Accept"))
    request_.headers.emplace_back("Accept", "application/json");
  for (const auto& [name, value] : type.token_headers) request_.headers.emplace_back(name, value);
  if (basic) {
    request_.headers.emplace_back("Authorization",
                                  BasicAuthorization(client_id, client_secret.view()));
  }
}

TokenRequest::~TokenRequest() {
  for (auto& [name, value] : request_.headers) WipeString(value);
}

}  // namespace grantvault::oauth
