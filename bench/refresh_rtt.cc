// refresh_rtt: the provider's own time per refresh, as a bare client sees it.
// Sends refresh_token grants to a token endpoint with grantvault's own HTTPS
// client (oauth/http_client: the same TLS stack and connection reuse as the
// broker), each with the refresh token the previous answer rotated to, and
// prints each request's round trip in microseconds (request written to answer
// read), one per line: one refresh per line read on stdin (until EOF), or
// with --count, N refreshes --interval-ms apart. bench/resolve_bench.sh
// interleaves them with its cold resolves and subtracts their mean from the
// cold resolve's: what is left is grantvaultd's.
//
//   refresh_rtt --token-endpoint URL --ca-file CA.pem --client-id ID
//       --client-secret-file FILE --refresh-token-file FILE
//       [--count N [--interval-ms MS]]
//
// The refresh-token file (from bench/reference_grant.mjs) is read once; the
// rotated tokens stay in this process. Exits 1 on the first failed refresh.
#include <time.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/files.h"
#include "common/secret_bytes.h"
#include "oauth/http_client.h"
#include "oauth/request_parts.h"
#include "oauth/token_response.h"

namespace {

using grantvault::SecretBytes;
namespace oauth = grantvault::oauth;

int64_t NowMicros() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"refresh_rtt: a bare client's refresh round trips"};
  std::string endpoint, ca_file, client_id, secret_file, token_file;
  int count = 0;  // 0: one refresh per line on stdin
  int interval_ms = 1100;
  app.add_option("--token-endpoint", endpoint)->required();
  app.add_option("--ca-file", ca_file)->required();
  app.add_option("--client-id", client_id)->required();
  app.add_option("--client-secret-file", secret_file)->required();
  app.add_option("--refresh-token-file", token_file)->required();
  app.add_option("--count", count)->check(CLI::Range(0, 100000));
  app.add_option("--interval-ms", interval_ms)->check(CLI::Range(0, 600000));
  CLI11_PARSE(app, argc, argv);

  oauth::HttpClientOptions options;
  options.use_system_trust_store = false;
  options.ca_file = ca_file;
  absl::StatusOr<std::unique_ptr<oauth::HttpClient>> http = oauth::NewHttpClient(options);
  if (!http.ok()) {
    std::fprintf(stderr, "refresh_rtt: %s\n", std::string(http.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<SecretBytes> secret = grantvault::ReadSecretFile(secret_file);
  absl::StatusOr<SecretBytes> refresh_token = grantvault::ReadSecretFile(token_file);
  for (const absl::Status& read : {secret.status(), refresh_token.status()}) {
    if (!read.ok()) {
      std::fprintf(stderr, "refresh_rtt: %s\n", std::string(read.message()).c_str());
      return 1;
    }
  }
  std::string line;
  for (int i = 0; count == 0 || i < count; ++i) {
    if (count == 0) {
      if (!std::getline(std::cin, line)) break;
    } else if (i > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    }
    oauth::HttpRequest request;
    request.method = "POST";
    request.url = endpoint;
    oauth::AppendFormField(request.body, "grant_type", "refresh_token");
    oauth::AppendFormField(request.body, "refresh_token", refresh_token->view());
    request.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
    request.headers.emplace_back("Accept", "application/json");
    request.headers.emplace_back("Authorization",
                                 oauth::BasicAuthorization(client_id, secret->view()));
    const int64_t started = NowMicros();
    absl::StatusOr<oauth::HttpResponse> response = (*http)->Send(request, absl::Seconds(15));
    const int64_t took = NowMicros() - started;
    if (!response.ok()) {
      std::fprintf(stderr, "refresh_rtt: %s\n", std::string(response.status().message()).c_str());
      return 1;
    }
    absl::StatusOr<oauth::TokenResponse> tokens = oauth::ParseTokenResponse(*response);
    if (!tokens.ok()) {
      std::fprintf(stderr, "refresh_rtt: refresh %d: HTTP %d: %s\n", i + 1, response->status,
                   std::string(tokens.status().message()).c_str());
      return 1;
    }
    if (!tokens->refresh_token.empty()) *refresh_token = std::move(tokens->refresh_token);
    std::printf("%lld\n", static_cast<long long>(took));
    std::fflush(stdout);
  }
  return 0;
}
