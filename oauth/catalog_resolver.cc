#include "oauth/catalog_resolver.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/strings.h"

namespace grantvault::oauth {
namespace {

constexpr absl::Duration kDiscoveryCacheLifetime = absl::Minutes(10);

}  // namespace

absl::StatusOr<ConnectorType> CatalogResolver::Discover(const ConnectorType& oidc_template,
                                                        const std::string& issuer) {
  {
    absl::MutexLock lock(&mu_);
    auto it = discovered_.find(issuer);
    if (it != discovered_.end() &&
        clock_->Now() - it->second.fetched_at < kDiscoveryCacheLifetime) {
      return it->second.type;
    }
  }
  GV_RETURN_IF_ERROR(ValidateEndpointUrl(issuer, /*allow_loopback_http=*/false));
  HttpRequest request;
  request.url =
      absl::StrCat(issuer, issuer.ends_with("/") ? "" : "/", ".well-known/openid-configuration");
  request.headers.push_back({"Accept", "application/json"});
  absl::StatusOr<HttpResponse> response = http_->Send(request, absl::Seconds(15));
  if (!response.ok()) {
    return absl::Status(response.status().code(), absl::StrCat("OpenID discovery at ", issuer, ": ",
                                                               response.status().message()));
  }
  if (response->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("OpenID discovery at ", issuer, " answered HTTP ", response->status));
  }
  GV_ASSIGN_OR_RETURN(ConnectorType type,
                      Catalog::FromDiscovery(oidc_template, response->body, issuer,
                                             /*allow_loopback_http=*/false));
  absl::MutexLock lock(&mu_);
  discovered_[issuer] = Discovered{type, clock_->Now()};
  return type;
}

absl::StatusOr<ConnectorType> CatalogResolver::TypeFor(
    const store::ConnectorRegistration& registration) {
  const ConnectorType* type = catalog_.Find(registration.connector_type);
  if (type == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("the catalog has no connector type '", registration.connector_type, "'"));
  }
  if (!type->discovery) {
    if (!registration.issuer.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "connector type ", type->type, " has fixed endpoints; an issuer is only for 'oidc'"));
    }
    return *type;
  }
  if (registration.issuer.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("connector type ", type->type, " needs the issuer URL (--issuer)"));
  }
  return Discover(*type, registration.issuer);
}

absl::Status CatalogResolver::Validate(const store::ConnectorRegistration& registration) {
  GV_ASSIGN_OR_RETURN(ConnectorType type, TypeFor(registration));
  if (!type.api_bases.empty() && !registration.api_bases.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the catalog fixes where connector type ", type.type, " sends API calls (",
                     absl::StrJoin(type.api_bases, " "), "); a registration names none"));
  }
  return Catalog::Resolve(type, registration.parameters).status();
}

absl::StatusOr<ConnectorProfile> CatalogResolver::Resolve(
    const store::ConnectorRegistration& registration) {
  GV_ASSIGN_OR_RETURN(ConnectorType type, TypeFor(registration));
  GV_ASSIGN_OR_RETURN(ResolvedEndpoints resolved, Catalog::Resolve(type, registration.parameters));
  ConnectorProfile p;
  p.catalog_type = type;
  p.resolved = resolved;
  p.type = type.type;
  p.display_name = type.display_name;
  p.authorization_endpoint = resolved.endpoints.authorization;
  p.token_endpoint = resolved.endpoints.token;
  p.revocation_endpoint = resolved.endpoints.revocation;
  p.userinfo_endpoint = resolved.endpoints.userinfo;
  p.jwks_uri = resolved.endpoints.jwks_uri;
  p.issuer = resolved.endpoints.issuer;
  p.pkce = type.pkce;
  p.scope_separator = type.scope_separator;
  p.extra_authorization_params = type.authorization_params;
  p.extra_token_params = type.token_params;
  if (!type.any_scope) p.allowed_scopes = type.scopes_allowed;
  p.default_scopes = type.scopes_default;
  p.required_scopes = type.scopes_required;
  // Every client authentication, token response shape and identity method of the catalog is
  // implemented (oauth/token_request.h, token_response.h, identity.h); the legacy fields below
  // summarise them.
  p.client_auth = type.client_auth == ClientAuth::kPost ? ConnectorProfile::ClientAuth::kPost
                                                        : ConnectorProfile::ClientAuth::kBasic;
  p.identity = type.identity.method == IdentityMethod::kIdToken
                   ? ConnectorProfile::Identity::kIdToken
                   : ConnectorProfile::Identity::kUserinfo;
  return p;
}

}  // namespace grantvault::oauth
