// ConnectorResolver backed by the connector catalog: template expansion for
// tenant-specific endpoints, and OpenID Connect discovery for the generic
// "oidc" type (cached per issuer).
#ifndef GRANTVAULT_OAUTH_CATALOG_RESOLVER_H_
#define GRANTVAULT_OAUTH_CATALOG_RESOLVER_H_

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "oauth/authorizer.h"
#include "oauth/catalog.h"
#include "oauth/http_client.h"

namespace grantvault::oauth {

class CatalogResolver final : public ConnectorResolver {
 public:
  // `http` and `clock` must outlive the resolver.
  CatalogResolver(Catalog catalog, HttpClient* http, Clock* clock)
      : catalog_(std::move(catalog)), http_(http), clock_(clock) {}

  absl::Status Validate(const store::ConnectorRegistration& registration) override;
  absl::StatusOr<ConnectorProfile> Resolve(
      const store::ConnectorRegistration& registration) override;

  const Catalog& catalog() const { return catalog_; }

 private:
  // The catalog entry for a registration, with discovery applied for OIDC.
  absl::StatusOr<ConnectorType> TypeFor(const store::ConnectorRegistration& registration);
  absl::StatusOr<ConnectorType> Discover(const ConnectorType& oidc_template,
                                         const std::string& issuer);

  const Catalog catalog_;
  HttpClient* const http_;
  Clock* const clock_;

  struct Discovered {
    ConnectorType type;
    absl::Time fetched_at;
  };
  absl::Mutex mu_;
  std::map<std::string, Discovered> discovered_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_CATALOG_RESOLVER_H_
