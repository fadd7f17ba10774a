// Runs the local OAuth 2.0 / OpenID Connect authorization server
// (tests/provider/server.mjs, oidc-provider on Node.js) for end-to-end tests:
// HTTPS on 127.0.0.1 with a freshly generated self-signed certificate, PKCE
// required, refresh tokens rotated on every use, revocation and introspection
// on. Approve() plays the user at its login and consent pages.
//
//   auto provider = OAuthProvider::Start({});   // one client, see below
//   ASSERT_TRUE(provider.ok()) << provider.status();
//   ... build an authorization URL against (*provider)->issuer() ...
//   absl::StatusOr<std::string> redirect = (*provider)->Approve(url);
//   // *redirect == "http://127.0.0.1:PORT/callback?code=…&state=…&iss=…"
//
// The destructor stops the server and removes its directory. Needs `node` (>= 20)
// on PATH (or GV_NODE) and tests/provider/node_modules (scripts/install-deps.sh).
#ifndef GRANTVAULT_TESTS_TESTING_OAUTH_PROVIDER_H_
#define GRANTVAULT_TESTS_TESTING_OAUTH_PROVIDER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::testing {

struct OAuthProviderClient {
  std::string client_id = "grantvault-test";
  std::string client_secret = "grantvault-test-secret";
  // http://127.0.0.1/… URIs make a native client: any port on the same path is
  // accepted (RFC 8252 §7.3). Anything else must match exactly.
  std::vector<std::string> redirect_uris = {"http://127.0.0.1/callback"};
  // "client_secret_basic" or "client_secret_post" (oidc-provider 9 accepts the
  // secret either way for both).
  std::string token_endpoint_auth_method = "client_secret_basic";
  // "RS256" or "ES256".
  std::string id_token_signed_response_alg = "RS256";
};

struct OAuthProviderOptions {
  // Empty: one default OAuthProviderClient.
  std::vector<OAuthProviderClient> clients;
  // 0: an ephemeral port.
  int port = 0;
  absl::Duration access_token_ttl = absl::Seconds(60);
  absl::Duration refresh_token_ttl = absl::Hours(14 * 24);
  absl::Duration startup_timeout = absl::Seconds(60);  // generous: CI machines are loaded
};

class OAuthProvider {
 public:
  // Generates the certificate, writes the clients file, starts the server and
  // waits for it to listen.
  static absl::StatusOr<std::unique_ptr<OAuthProvider>> Start(OAuthProviderOptions options);

  ~OAuthProvider();
  OAuthProvider(const OAuthProvider&) = delete;
  OAuthProvider& operator=(const OAuthProvider&) = delete;

  // "https://127.0.0.1:<port>"; discovery at issuer() + "/.well-known/openid-configuration".
  const std::string& issuer() const { return issuer_; }
  int port() const { return port_; }
  // The server process (tests stall it with SIGSTOP / SIGCONT).
  pid_t pid() const { return pid_; }
  // The server's self-signed certificate: the one CA a client must trust.
  const std::string& ca_file() const { return ca_file_; }
  const std::vector<OAuthProviderClient>& clients() const { return clients_; }
  const std::string& dir() const { return dir_.path(); }

  // Follows `authorization_url` as user `user` (who becomes the `sub`): signs
  // in and consents, or with `deny` cancels at consent. Returns the redirect
  // back to the client (not fetched): ?code=…&state=… or ?error=access_denied….
  // An error page or a failure is an error status carrying approve.mjs's reason.
  absl::StatusOr<std::string> Approve(const std::string& authorization_url, bool deny = false,
                                      const std::string& user = "alice",
                                      absl::Duration timeout = absl::Seconds(20)) const;

  // What the server logged so far: one line per request, token-endpoint and
  // other errors with their error_detail; never codes or tokens.
  std::string Log() const;
  // Refresh-token grants the server answered with tokens so far (its
  // "grant.success: refresh_token" log lines, written before each answer is
  // sent, so a client holding the answer sees it counted).
  int RefreshesServed() const;

  // SIGTERM, then SIGKILL after `timeout`. Returns the exit code (128 + signal
  // if killed). Idempotent.
  int Stop(absl::Duration timeout = absl::Seconds(5));
  bool running() const { return pid_ > 0; }

 private:
  OAuthProvider() = default;

  TempDir dir_;
  std::vector<OAuthProviderClient> clients_;
  std::string issuer_;
  int port_ = 0;
  std::string ca_file_;
  std::string log_file_;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int exit_code_ = -1;
};

// The directory of the provider scripts (GV_SOURCE_DIR/tests/provider).
std::string OAuthProviderScriptDir();

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_OAUTH_PROVIDER_H_
