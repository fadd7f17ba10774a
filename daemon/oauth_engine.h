// The OAuth engine as the daemon wires it: HTTPS client, connector catalog,
// catalog-backed resolver, id_token verifier and the Authorizer.
#ifndef GRANTVAULT_DAEMON_OAUTH_ENGINE_H_
#define GRANTVAULT_DAEMON_OAUTH_ENGINE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "daemon/config.h"
#include "daemon/vault.h"
#include "oauth/authorizer.h"
#include "oauth/catalog.h"
#include "oauth/catalog_resolver.h"
#include "oauth/http_client.h"

namespace grantvault::daemon {

struct OAuthEngine {
  std::unique_ptr<oauth::HttpClient> http;
  std::unique_ptr<oauth::CatalogResolver> connectors;
  std::unique_ptr<oauth::IdTokenVerifier> id_tokens;
  std::unique_ptr<oauth::Authorizer> authorizer;
};

// Fails, naming the file, when the CA file or the catalog cannot be loaded.
absl::StatusOr<std::unique_ptr<OAuthEngine>> MakeOAuthEngine(const DaemonConfig& config,
                                                             Vault& vault, Clock* clock);

}  // namespace grantvault::daemon

#endif  // GRANTVAULT_DAEMON_OAUTH_ENGINE_H_
