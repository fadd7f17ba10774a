#include "daemon/oauth_engine.h"

#include "common/status.h"
#include "oauth/id_token_verifier.h"

namespace grantvault::daemon {

absl::StatusOr<std::unique_ptr<OAuthEngine>> MakeOAuthEngine(const DaemonConfig& config,
                                                             Vault& vault, Clock* clock) {
  auto engine = std::make_unique<OAuthEngine>();
  oauth::HttpClientOptions http;
  http.ca_file = config.oauth_ca_file;
  http.use_system_trust_store = config.oauth_use_system_trust;
  GV_ASSIGN_OR_RETURN(engine->http, oauth::NewHttpClient(http));
  absl::StatusOr<oauth::Catalog> catalog = config.connector_catalog.empty()
                                               ? oauth::Catalog::LoadDefault()
                                               : oauth::Catalog::LoadFile(config.connector_catalog);
  GV_RETURN_IF_ERROR(catalog.status());
  engine->connectors =
      std::make_unique<oauth::CatalogResolver>(std::move(*catalog), engine->http.get(), clock);
  engine->id_tokens = oauth::NewJwksIdTokenVerifier();
  oauth::AuthorizerDeps deps;
  deps.store = vault.store.get();
  deps.sealer = vault.sealer.get();
  deps.http = engine->http.get();
  deps.connectors = engine->connectors.get();
  deps.id_tokens = engine->id_tokens.get();
  deps.clock = clock;
  GV_ASSIGN_OR_RETURN(engine->authorizer, oauth::Authorizer::Create(deps));
  return engine;
}

}  // namespace grantvault::daemon
