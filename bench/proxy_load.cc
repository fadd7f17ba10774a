// proxy_load: closed-loop load of API calls, made through grantvault's proxy
// (agent.sock) or directly to the API with a bearer token, for
// bench/proxy_bench.sh (docs/performance.md, "Proxy").
//
//   proxy_load --mode proxy --socket AGENT_SOCK --mix FILE
//              [--calls N] [--duration S] [--warmup S]
//   proxy_load --mode direct --api https://127.0.0.1:PORT --ca PEM --mix FILE
//              [--calls N] [--duration S] [--warmup S]
//
// N calls are kept in flight (N threads, each making one call after the
// other; through the proxy each thread has its own agent.sock connection,
// as agent hosts' workers would). Each thread walks the mix from its own
// offset. A mix line: "workspace connector tool METHOD path [body_bytes]"
// ('#' starts a comment). Direct calls send the same method, path and body
// with "Authorization: Bearer" and a token of a real token's size; the
// workspace, connector and tool only matter to the proxy. Every answer must
// be 2xx. Prints one line:
//   calls_per_s=… p50_us=… p99_us=… calls=… errors=… completed=… cpu_us=…
// calls_per_s, the percentiles and calls are for the calls that started
// after the warm-up and ended before the end; completed counts every call
// that succeeded and cpu_us is this process's CPU time, for CPU per call.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "ipc/client.h"
#include "oauth/http_client.h"

namespace {

using namespace grantvault;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;

struct MixCall {
  std::string workspace, connector, tool, method, path, body;
};

std::vector<MixCall> ReadMix(const std::string& path) {
  std::vector<MixCall> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    MixCall call;
    size_t body_bytes = 0;
    fields >> call.workspace >> call.connector >> call.tool >> call.method >> call.path;
    fields >> body_bytes;
    if (call.path.empty()) continue;
    call.body.assign(body_bytes, '{');
    out.push_back(std::move(call));
  }
  return out;
}

struct Results {
  std::vector<int64_t> latencies_us;
  uint64_t completed = 0;  // every call that succeeded, warm-up included
  uint64_t errors = 0;
  std::string first_error;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("proxy_load: API calls through grantvault's proxy, or directly");
  std::string mode, socket, api, ca, mix_file;
  int calls = 1;
  double duration_s = 3, warmup_s = 1;
  app.add_option("--mode", mode, "proxy or direct")->required();
  app.add_option("--socket", socket, "agent.sock (proxy)");
  app.add_option("--api", api, "the API's origin, https://host:port (direct)");
  app.add_option("--ca", ca, "the API's CA certificate (direct)");
  app.add_option("--mix", mix_file, "the calls, one per line")->required();
  app.add_option("--calls", calls, "calls in flight (threads)");
  app.add_option("--duration", duration_s, "measured seconds");
  app.add_option("--warmup", warmup_s, "unmeasured seconds first");
  CLI11_PARSE(app, argc, argv);
  const std::vector<MixCall> mix = ReadMix(mix_file);
  if (mix.empty() || calls < 1 || (mode != "proxy" && mode != "direct")) {
    std::fprintf(stderr, "proxy_load: a mix, --calls >= 1 and --mode proxy|direct are needed\n");
    return 2;
  }

  std::unique_ptr<oauth::HttpClient> http;
  if (mode == "direct") {
    oauth::HttpClientOptions options;
    options.use_system_trust_store = false;
    options.ca_file = ca;
    options.max_idle_connections_per_host = 64;
    absl::StatusOr<std::unique_ptr<oauth::HttpClient>> client = oauth::NewHttpClient(options);
    if (!client.ok()) {
      std::fprintf(stderr, "proxy_load: %s\n", std::string(client.status().message()).c_str());
      return 1;
    }
    http = *std::move(client);
  }
  // What a grant's access token looks like on the wire (oidc-provider's are 43 characters).
  const std::string bearer = "Bearer " + std::string(43, 't');

  const Clock::time_point start = Clock::now();
  const Clock::time_point measure_from =
      start + std::chrono::microseconds(static_cast<int64_t>(warmup_s * 1e6));
  const Clock::time_point end =
      measure_from + std::chrono::microseconds(static_cast<int64_t>(duration_s * 1e6));
  std::vector<Results> results(static_cast<size_t>(calls));
  std::vector<std::thread> threads;
  for (int t = 0; t < calls; ++t) {
    threads.emplace_back([&, t] {
      Results& mine = results[static_cast<size_t>(t)];
      std::unique_ptr<ipc::Client> client;
      if (mode == "proxy") {
        ipc::ClientOptions options;
        options.client_name = "proxy_load";
        absl::StatusOr<std::unique_ptr<ipc::Client>> connected =
            ipc::Client::Connect(socket, options);
        if (!connected.ok()) {
          ++mine.errors;
          mine.first_error = std::string(connected.status().message());
          return;
        }
        client = *std::move(connected);
      }
      for (size_t i = static_cast<size_t>(t);; ++i) {
        const Clock::time_point began = Clock::now();
        if (began >= end) break;
        const MixCall& call = mix[i % mix.size()];
        absl::Status outcome;
        int status = 0;
        if (client != nullptr) {
          v1::ProxyRequest request;
          request.set_workspace_id(call.workspace);
          request.set_connector_id(call.connector);
          request.set_tool(call.tool);
          request.set_method(call.method);
          request.set_url(call.path);
          request.set_body(call.body);
          v1::HttpHeader* accept = request.add_headers();
          accept->set_name("Accept");
          accept->set_value("application/json");
          absl::StatusOr<uint64_t> done = ipc::ProxyCall(
              *client, std::move(request), absl::Seconds(30),
              [&status](const v1::ProxyResponseHead& head) {
                status = static_cast<int>(head.status());
              },
              nullptr);
          outcome = done.status();
        } else {
          oauth::HttpRequest request;
          request.method = call.method;
          request.url = api + call.path;
          request.body = call.body;
          request.headers = {{"Accept", "application/json"}, {"Authorization", bearer}};
          absl::StatusOr<oauth::HttpResponse> done = http->Send(request, absl::Seconds(30));
          outcome = done.status();
          if (done.ok()) status = done->status;
        }
        const Clock::time_point finished = Clock::now();
        if (outcome.ok() && (status < 200 || status >= 300)) {
          outcome = absl::InternalError(absl::StrCat("HTTP ", status, " for ", call.path));
        }
        if (!outcome.ok()) {
          ++mine.errors;
          if (mine.first_error.empty()) mine.first_error = std::string(outcome.message());
          continue;
        }
        ++mine.completed;
        if (began >= measure_from && finished <= end) {
          mine.latencies_us.push_back(
              std::chrono::duration_cast<std::chrono::microseconds>(finished - began).count());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();

  std::vector<int64_t> all;
  uint64_t errors = 0;
  uint64_t completed = 0;
  std::string first_error;
  for (const Results& r : results) {
    all.insert(all.end(), r.latencies_us.begin(), r.latencies_us.end());
    completed += r.completed;
    errors += r.errors;
    if (first_error.empty()) first_error = r.first_error;
  }
  std::sort(all.begin(), all.end());
  const auto at = [&all](double q) {
    return all.empty() ? 0
                       : all[std::min(all.size() - 1,
                                      static_cast<size_t>(q * static_cast<double>(all.size())))];
  };
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  const auto cpu_us = [](const timeval& t) { return t.tv_sec * 1000000LL + t.tv_usec; };
  std::printf(
      "calls_per_s=%.0f p50_us=%lld p99_us=%lld calls=%zu errors=%llu completed=%llu "
      "cpu_us=%lld\n",
      static_cast<double>(all.size()) / duration_s, static_cast<long long>(at(0.5)),
      static_cast<long long>(at(0.99)), all.size(), static_cast<unsigned long long>(errors),
      static_cast<unsigned long long>(completed),
      static_cast<long long>(cpu_us(usage.ru_utime) + cpu_us(usage.ru_stime)));
  if (errors > 0) std::fprintf(stderr, "proxy_load: first error: %s\n", first_error.c_str());
  return errors > 0 ? 1 : 0;
}
