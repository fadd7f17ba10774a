// grantvault: the command-line client of grantvaultd's admin socket.
//
// Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 usage or invalid
// argument, 3 permission denied, 4 not found, 5 daemon unavailable (not
// running, busy, deadline), 6 refused in the current state.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "audit/verify.h"
#include "cli/json_output.h"
#include "common/files.h"
#include "common/secret_bytes.h"
#include "grantvault/v1/envelope.pb.h"
#include "ipc/client.h"
#include "policy/policy.h"

namespace grantvault::cli {
namespace {

enum ExitCode {
  kOk = 0,
  kInternal = 1,
  kUsage = 2,
  kDenied = 3,
  kNotFound = 4,
  kUnavailable = 5,
  kRefused = 6,
};

struct Globals {
  std::string state_dir;
  std::string socket;
  std::string agent_socket;
  std::string admin;
  bool json = false;
  double timeout_s = 30;
};

int ExitCodeFor(v1::Error::Code code) {
  switch (code) {
    case v1::Error::INVALID_ARGUMENT:
      return kUsage;
    case v1::Error::UNAUTHENTICATED:
    case v1::Error::PERMISSION_DENIED:
      return kDenied;
    case v1::Error::NOT_FOUND:
      return kNotFound;
    case v1::Error::UNAVAILABLE:
    case v1::Error::DEADLINE_EXCEEDED:
    case v1::Error::RESOURCE_EXHAUSTED:
      return kUnavailable;
    case v1::Error::CANCELLED:
    case v1::Error::FAILED_PRECONDITION:
    case v1::Error::ALREADY_EXISTS:
    case v1::Error::REVOKED:
    case v1::Error::REAUTH_REQUIRED:
      return kRefused;
    default:
      return kInternal;
  }
}

std::string Json(const google::protobuf::Message& m) { return JsonLine(m); }

// Where admin.sock is: --socket, else <--state-dir>/run/admin.sock, else
// $GRANTVAULT_STATE_DIR/run/admin.sock, else the systemd location.
std::string SocketPath(const Globals& g) {
  if (!g.socket.empty()) return g.socket;
  if (!g.state_dir.empty()) return g.state_dir + "/run/admin.sock";
  if (const char* env = std::getenv("GRANTVAULT_STATE_DIR"); env != nullptr && *env != '\0') {
    return std::string(env) + "/run/admin.sock";
  }
  return "/run/grantvault/admin.sock";
}

// Where agent.sock is: --agent-socket, else next to admin.sock.
std::string AgentSocketPath(const Globals& g) {
  if (!g.agent_socket.empty()) return g.agent_socket;
  std::string admin = SocketPath(g);
  return admin.substr(0, admin.rfind('/') + 1) + "agent.sock";
}

enum class Socket { kAdmin, kAgent };

std::string AdminUser(const Globals& g) {
  if (!g.admin.empty()) return g.admin;
  if (const char* sudo = std::getenv("SUDO_USER"); sudo != nullptr && *sudo != '\0') return sudo;
  if (struct passwd* pw = ::getpwuid(::getuid()); pw != nullptr) return pw->pw_name;
  return "uid:" + std::to_string(::getuid());
}

void PrintError(const Globals& g, const v1::Error& error) {
  if (g.json) {
    std::printf("{\"error\":%s}\n", Json(error).c_str());
  } else {
    std::fprintf(stderr, "grantvault: %s: %s\n", v1::Error::Code_Name(error.code()).c_str(),
                 error.message().c_str());
  }
}

// Runs one request; on success hands the final response to `print`.
template <typename Print>
int Run(const Globals& g, v1::Request request, Print print,
        ipc::Client::PartialCallback on_partial = nullptr, Socket socket = Socket::kAdmin) {
  ipc::ClientOptions options;
  options.client_name = "grantvault-cli/0.1";
  const std::string path = socket == Socket::kAdmin ? SocketPath(g) : AgentSocketPath(g);
  absl::StatusOr<std::unique_ptr<ipc::Client>> client = ipc::Client::Connect(path, options);
  if (!client.ok()) {
    v1::Error e;
    e.set_code(absl::IsPermissionDenied(client.status()) ? v1::Error::PERMISSION_DENIED
                                                         : v1::Error::UNAVAILABLE);
    e.set_message(absl::StrFormat("cannot reach grantvaultd at %s: %s", path,
                                  std::string(client.status().message())));
    PrintError(g, e);
    return ExitCodeFor(e.code());
  }
  if (socket == Socket::kAdmin) request.set_admin_user(AdminUser(g));
  absl::StatusOr<v1::Response> response = (*client)->Call(
      std::move(request), absl::Milliseconds(static_cast<int64_t>(g.timeout_s * 1000)),
      std::move(on_partial));
  if (!response.ok()) {
    v1::Error e;
    e.set_code(absl::IsDeadlineExceeded(response.status()) ? v1::Error::DEADLINE_EXCEEDED
                                                           : v1::Error::UNAVAILABLE);
    e.set_message(std::string(response.status().message()));
    PrintError(g, e);
    return ExitCodeFor(e.code());
  }
  if (response->has_error()) {
    PrintError(g, response->error());
    return ExitCodeFor(response->error().code());
  }
  print(*response);
  return kOk;
}

std::string Millis(int64_t ms) {
  if (ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixMillis(ms), absl::UTCTimeZone());
}

const char* StateName(v1::KeyVersion::State s) {
  switch (s) {
    case v1::KeyVersion::ACTIVE:
      return "active";
    case v1::KeyVersion::INACTIVE:
      return "inactive";
    case v1::KeyVersion::RETIRED:
      return "retired";
    default:
      return "?";
  }
}

void PrintGrant(const v1::GrantInfo& g, bool detail) {
  std::string scopes;
  for (const std::string& s : g.scopes()) scopes += (scopes.empty() ? "" : " ") + s;
  std::printf("%s  %-16s %-20s %-16s account %s  scopes [%s]\n", g.grant_id().c_str(),
              g.status().c_str(), g.connector_id().c_str(), g.connector_type().c_str(),
              g.account_id().c_str(), scopes.c_str());
  if (!detail) return;
  std::printf("  workspace      %s\n", g.workspace_id().c_str());
  std::printf("  authorized by  %s\n", g.authorized_by().c_str());
  std::printf("  created        %s\n", Millis(g.created_at_ms()).c_str());
  std::printf("  updated        %s\n", Millis(g.updated_at_ms()).c_str());
  if (!g.status_reason().empty()) std::printf("  reason         %s\n", g.status_reason().c_str());
  for (const auto& [k, v] : g.metadata()) std::printf("  %-14s %s\n", k.c_str(), v.c_str());
  if (!g.upstream_revocation().empty()) {
    std::printf("  at provider    %s after %u attempt(s)\n", g.upstream_revocation().c_str(),
                g.upstream_revocation_attempts());
    if (g.upstream_revocation() == "pending") {
      if (!g.upstream_revocation_error().empty()) {
        std::printf("  last error     %s\n", g.upstream_revocation_error().c_str());
      }
      std::printf("  next attempt   %s\n", Millis(g.upstream_revocation_next_attempt_ms()).c_str());
    } else if (g.upstream_revocation() == "manual") {
      std::printf("  (the provider has no revocation API: remove the app in its admin console)\n");
    }
  }
}

void PrintKey(const v1::KeyVersion& k) {
  std::printf("  %-20s %-9s %8llu sealed record(s)  created %s%s%s\n", k.label().c_str(),
              StateName(k.state()), static_cast<unsigned long long>(k.sealed_records()),
              Millis(k.created_at_ms()).c_str(),
              k.retired_at_ms() ? ("  retired " + Millis(k.retired_at_ms())).c_str() : "",
              k.in_token() ? "" : (k.state() == v1::KeyVersion::RETIRED ? "" : "  NOT IN TOKEN"));
}

// A progress bar on stderr when it is a terminal; nothing otherwise.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label)
      : enabled_(enabled && ::isatty(STDERR_FILENO)), label_(std::move(label)) {}
  void Update(uint64_t done, uint64_t remaining) {
    if (!enabled_) return;
    const uint64_t total = done + remaining;
    const int width = 40;
    const int filled = total == 0 ? width : static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %llu/%llu", label_.c_str(),
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(),
                 total == 0 ? 100 : static_cast<int>(100 * done / total),
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
    drawn_ = true;
  }

  ~ProgressBar() {
    if (drawn_) std::fputc('\n', stderr);
  }

 private:
  const bool enabled_;
  const std::string label_;
  bool drawn_ = false;
};

// --- authorize: the loopback redirect listener (RFC 8252 §7.3) ---------------

// Listens on 127.0.0.1 for the one redirect that carries the code.
class LoopbackListener {
 public:
  static absl::StatusOr<LoopbackListener> Open(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError("cannot create the loopback listener");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 8) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ::close(fd);
      return absl::UnavailableError(
          absl::StrFormat("cannot listen on 127.0.0.1:%d: %s", port, std::strerror(errno)));
    }
    return LoopbackListener(fd, ntohs(addr.sin_port));
  }
  LoopbackListener(LoopbackListener&& o) noexcept : fd_(std::exchange(o.fd_, -1)), port_(o.port_) {}
  ~LoopbackListener() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::string redirect_uri() const {
    return absl::StrFormat("http://127.0.0.1:%d/callback", port_);
  }

  // Waits for GET /callback?… and answers the browser; returns the full URL.
  absl::StatusOr<std::string> WaitForRedirect(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    for (;;) {
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(end - absl::Now()));
      if (ms <= 0) return absl::DeadlineExceededError("no redirect arrived in time");
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) continue;
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::string request;
      char buf[4096];
      while (request.find("\r\n") == std::string::npos && request.size() < 16384) {
        pollfd cp{c, POLLIN, 0};
        if (::poll(&cp, 1, 5000) <= 0) break;
        ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      std::string target;
      if (request.rfind("GET ", 0) == 0) {
        size_t end_target = request.find(' ', 4);
        if (end_target != std::string::npos) target = request.substr(4, end_target - 4);
      }
      const bool ours = target.rfind("/callback?", 0) == 0;
      const std::string body =
          ours ? "grantvault received the authorization. You can close this window.\n"
               : "Not found.\n";
      const std::string answer = absl::StrFormat(
          "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
          "Connection: close\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n\r\n%s",
          ours ? "200 OK" : "404 Not Found", body.size(), body);
      ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      ::close(c);
      WipeMemory(request.data(), request.size());
      if (ours) return absl::StrFormat("http://127.0.0.1:%d%s", port_, target);
    }
  }

 private:
  LoopbackListener(int fd, uint16_t port) : fd_(fd), port_(port) {}
  int fd_;
  uint16_t port_;
};

std::vector<std::string> SplitScopes(const std::string& s) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(s, absl::ByAnyChar(" ,"), absl::SkipEmpty())) {
    out.emplace_back(part);
  }
  return out;
}

// CLI11 answers --help before it looks at arguments it did not expect
// (`grantvault UNKNOWN --help` printed the main help and exited 0), and a
// missing subcommand before naming the unknown one. An unexpected argument is
// a usage error, reported first and by name on stderr: kUsage; kOk when there
// is none.
int ReportUnexpectedArguments(CLI::App& app, int argc, char** argv) {
  const std::vector<std::string> unexpected = app.remaining(/*recurse=*/true);
  if (unexpected.empty()) return kOk;
  const std::string& first = unexpected.front();
  // Where it stood: after which of the chosen (sub)commands.
  int at = 1;
  while (at < argc && first != argv[at]) ++at;
  CLI::App* where = &app;
  int command_at = 0;
  for (std::vector<CLI::App*> chosen = where->get_subcommands(); !chosen.empty();
       chosen = where->get_subcommands()) {
    int next = command_at + 1;
    while (next < argc && chosen.front()->get_name() != argv[next]) ++next;
    if (next >= at) break;
    where = chosen.front();
    command_at = next;
  }
  std::vector<std::string> commands;
  for (const CLI::App* sub : where->get_subcommands([](CLI::App*) { return true; })) {
    commands.push_back(sub->get_name());
  }
  const std::string context = where == &app ? "" : absl::StrCat(" for '", where->get_name(), "'");
  if (first.starts_with("-")) {
    std::fprintf(stderr, "grantvault: unknown option '%s'%s\n", first.c_str(), context.c_str());
  } else if (!commands.empty()) {
    std::fprintf(stderr, "grantvault: unknown command '%s'%s (commands: %s)\n", first.c_str(),
                 context.c_str(), absl::StrJoin(commands, ", ").c_str());
  } else {
    std::fprintf(stderr, "grantvault: unexpected argument '%s'%s\n", first.c_str(),
                 context.c_str());
  }
  std::fprintf(stderr, "Run with --help for more information.\n");
  return kUsage;
}

}  // namespace

int Main(int argc, char** argv) {
  CLI::App app{"grantvault: administer grantvaultd (keys, status)"};
  app.require_subcommand(1);
  // Global options may also follow the subcommand: `grantvault keys status --json`.
  app.fallthrough();
  Globals g;
  app.add_option("--state-dir", g.state_dir,
                 "the daemon's state directory (its sockets are in DIR/run); "
                 "default $GRANTVAULT_STATE_DIR");
  app.add_option("--socket", g.socket, "path of admin.sock (overrides --state-dir)");
  app.add_option("--agent-socket", g.agent_socket,
                 "path of agent.sock (default: next to admin.sock)");
  app.add_option("--admin", g.admin, "admin user recorded for this action (default: you)");
  app.add_flag("--json", g.json, "print the daemon's answer as JSON");
  app.add_option("--timeout", g.timeout_s, "seconds to wait for the daemon (default 30)")
      ->check(CLI::PositiveNumber);

  int rc = kOk;
  CLI::App* status = app.add_subcommand("status", "the daemon's health and inventory");
  status->callback([&] {
    v1::Request r;
    r.mutable_status();
    rc = Run(g, r, [&](const v1::Response& resp) {
      const v1::StatusReply& s = resp.status();
      if (g.json) return (void)std::printf("%s\n", Json(s).c_str());
      std::printf("grantvaultd %s, up %llds\n", s.server_version().c_str(),
                  static_cast<long long>(s.uptime_ms() / 1000));
      std::printf("  HSM token   '%s' %s\n", s.token_label().c_str(),
                  s.hsm_reachable() ? "reachable" : "NOT REACHABLE");
      std::printf("  store       %s %s\n", s.store_kind().c_str(),
                  s.store_reachable() ? "reachable" : "NOT REACHABLE");
      std::printf("  active KEK  %s\n", s.active_kek().c_str());
      std::printf("  grants      %llu\n", static_cast<unsigned long long>(s.grants()));
      std::printf("  sealed      %llu secret(s)\n",
                  static_cast<unsigned long long>(s.sealed_secrets()));
      std::printf("  connections %u\n", s.open_connections());
      for (const v1::StatusReply::Breaker& b : s.breakers()) {
        std::printf("  breaker     %s %s until %s after %u failure(s) (%s)\n",
                    b.connector_id().c_str(), b.phase().c_str(), Millis(b.open_until_ms()).c_str(),
                    b.consecutive_failures(), b.last_failure().c_str());
      }
      if (s.upstream_revocations_pending() > 0) {
        std::printf("  revocations %u pending at providers (grants show names them)\n",
                    s.upstream_revocations_pending());
      }
      if (!s.policy_file().empty()) {
        std::printf("  policy      %s, %s\n", s.policy_file().c_str(),
                    s.policy_loaded_at_ms() != 0
                        ? ("loaded " + Millis(s.policy_loaded_at_ms())).c_str()
                        : "NONE IN FORCE: every agent request is refused");
      }
      if (!s.policy_last_reload_error().empty()) {
        std::printf("  policy      LAST RELOAD FAILED at %s (%s): %s\n",
                    Millis(s.policy_last_reload_failed_at_ms()).c_str(),
                    s.policy_denying() ? "no policy in force: every agent request is refused"
                                       : "the previous policy stays in force",
                    s.policy_last_reload_error().c_str());
      }
      std::printf("  audit       %s\n",
                  !s.audit_enabled() ? "OFF"
                  : s.audit_last_signing_error().empty()
                      ? "on"
                      : ("on; checkpoints failing: " + s.audit_last_signing_error()).c_str());
    });
  });

  CLI::App* keys = app.add_subcommand("keys", "key-encryption keys and the audit key");
  keys->require_subcommand(1);
  keys->add_subcommand("status", "every KEK version, its state and record count")->callback([&] {
    v1::Request r;
    r.mutable_key_status();
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.key_status()).c_str());
      std::printf("Key-encryption keys:\n");
      for (const v1::KeyVersion& k : resp.key_status().keys()) PrintKey(k);
    });
  });
  keys->add_subcommand("rotate", "create KEK n+1 and make it active")->callback([&] {
    v1::Request r;
    r.mutable_rotate_key();
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.rotate_key()).c_str());
      std::printf("Rotated: new secrets are now sealed under %s.\n",
                  resp.rotate_key().key().label().c_str());
      std::printf("Run 'grantvault keys rewrap' to move existing records to it.\n");
    });
  });
  uint32_t batch = 0;
  CLI::App* rewrap =
      keys->add_subcommand("rewrap", "move every record's data key to the active KEK (online)");
  rewrap->add_option("--batch", batch, "records per transaction (default 1000)");
  rewrap->callback([&] {
    v1::Request r;
    r.mutable_rewrap()->set_batch_size(batch);
    ProgressBar bar(!g.json, "rewrap");
    bool left_records = false;
    rc = Run(
        g, r,
        [&](const v1::Response& resp) {
          const v1::RewrapReply& w = resp.rewrap();
          left_records = w.failures_size() > 0;
          if (g.json) return (void)std::printf("%s\n", Json(w).c_str());
          bar.Update(w.rewrapped(), 0);
          std::printf("Rewrapped %llu record(s)", static_cast<unsigned long long>(w.rewrapped()));
          if (w.changed_meanwhile() > 0) {
            std::printf(" (%llu changed meanwhile and were re-sealed by their writer)",
                        static_cast<unsigned long long>(w.changed_meanwhile()));
          }
          std::printf(".\n");
          for (const auto& f : w.failures()) {
            std::printf("  NOT rewrapped: %s/%s under %s: %s\n", f.owner_id().c_str(),
                        f.purpose().c_str(), f.kek_label().c_str(), f.reason().c_str());
          }
        },
        [&](const v1::Response& partial) {
          if (partial.has_rewrap_progress()) {
            bar.Update(partial.rewrap_progress().done(), partial.rewrap_progress().remaining());
          }
        });
    // Records left behind keep the old KEK from being retired: scripts must
    // notice.
    if (rc == kOk && left_records) rc = kRefused;
  });
  int retire_version = 0;
  CLI::App* retire = keys->add_subcommand("retire", "retire KEK N (only when no record uses it)");
  retire->add_option("N", retire_version, "KEK version")->required()->check(CLI::PositiveNumber);
  retire->callback([&] {
    v1::Request r;
    r.mutable_retire_key()->set_version(static_cast<uint32_t>(retire_version));
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.retire_key()).c_str());
      std::printf("Retired %s: it is destroyed in the token.\n",
                  resp.retire_key().key().label().c_str());
    });
  });
  std::string out_file;
  CLI::App* pub =
      keys->add_subcommand("audit-public-key", "the audit signing key's public key (PEM)");
  pub->add_option("-o,--output", out_file, "write the PEM to this file");
  pub->callback([&] {
    v1::Request r;
    r.mutable_audit_public_key();
    rc = Run(g, r, [&](const v1::Response& resp) {
      const v1::AuditPublicKeyReply& k = resp.audit_public_key();
      if (!out_file.empty()) {
        std::ofstream(out_file) << k.pem();
        if (!g.json)
          std::printf("Wrote %s (%s) to %s\n", k.label().c_str(), "ECDSA P-256", out_file.c_str());
      }
      if (g.json) return (void)std::printf("%s\n", Json(k).c_str());
      if (out_file.empty()) std::printf("%s", k.pem().c_str());
    });
  });

  CLI::App* connectors = app.add_subcommand("connectors", "OAuth client registrations");
  connectors->require_subcommand(1);
  std::string reg_id, reg_type, reg_client_id, reg_secret_file, reg_issuer;
  std::vector<std::string> reg_params;
  CLI::App* reg =
      connectors->add_subcommand("register", "register (or replace) a connector's OAuth client");
  reg->add_option("--id", reg_id, "connector id that grants and agents name, e.g. google_workspace")
      ->required();
  reg->add_option("--type", reg_type, "catalog type (docs/connectors.md)")->required();
  reg->add_option("--client-id", reg_client_id, "OAuth client id")->required();
  reg->add_option("--client-secret-file", reg_secret_file,
                  "file holding the client secret (mode 0600)")
      ->required();
  reg->add_option("--issuer", reg_issuer, "issuer URL (type oidc)");
  reg->add_option("--param", reg_params,
                  "tenant parameter NAME=VALUE (tenant, subdomain, my_domain, region)");
  std::vector<std::string> reg_redirect_uris;
  reg->add_option("--redirect-uri", reg_redirect_uris,
                  "a redirect URI the client is registered with at the provider (repeatable; "
                  "https, or http on loopback); without any, only the loopback listener is used");
  std::vector<std::string> reg_api_bases;
  bool reg_private_network = false;
  reg->add_option("--api-base", reg_api_bases,
                  "where the proxy may send this connector's API calls, e.g. "
                  "https://api.example.com/v1/ (repeatable; type oidc: the catalog fixes the "
                  "others')");
  reg->add_flag("--private-network", reg_private_network,
                "let the proxy reach private, loopback and link-local addresses for it");
  reg->callback([&] {
    absl::StatusOr<SecretBytes> secret = ReadSecretFile(reg_secret_file);
    if (!secret.ok()) {
      std::fprintf(stderr, "grantvault: %s\n", std::string(secret.status().message()).c_str());
      rc = kUsage;
      return;
    }
    v1::Request r;
    v1::RegisterConnectorRequest* in = r.mutable_register_connector();
    in->set_connector_id(reg_id);
    in->set_connector_type(reg_type);
    in->set_client_id(reg_client_id);
    in->set_client_secret(std::string(secret->view()));
    in->set_issuer(reg_issuer);
    for (const std::string& uri : reg_redirect_uris) in->add_redirect_uris(uri);
    for (const std::string& url : reg_api_bases) in->add_api_base_urls(url);
    in->set_allow_private_network(reg_private_network);
    for (const std::string& p : reg_params) {
      size_t eq = p.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "grantvault: --param takes NAME=VALUE, not '%s'\n", p.c_str());
        rc = kUsage;
        return;
      }
      (*in->mutable_parameters())[p.substr(0, eq)] = p.substr(eq + 1);
    }
    rc = Run(g, std::move(r), [&](const v1::Response& resp) {
      const v1::ConnectorInfo& c = resp.register_connector().connector();
      if (g.json) return (void)std::printf("%s\n", Json(c).c_str());
      std::printf("Registered connector %s (%s), client id %s. The client secret is sealed.\n",
                  c.connector_id().c_str(),
                  c.display_name().empty() ? c.connector_type().c_str() : c.display_name().c_str(),
                  c.client_id().c_str());
    });
  });
  connectors->add_subcommand("list", "registered connectors (never a secret)")->callback([&] {
    v1::Request r;
    r.mutable_list_connectors();
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.list_connectors()).c_str());
      if (resp.list_connectors().connectors().empty()) std::printf("No connector is registered.\n");
      for (const v1::ConnectorInfo& c : resp.list_connectors().connectors()) {
        std::printf("%-20s %-18s client %s%s%s\n", c.connector_id().c_str(),
                    c.connector_type().c_str(), c.client_id().c_str(),
                    c.issuer().empty() ? "" : "  issuer ", c.issuer().c_str());
        for (const std::string& uri : c.redirect_uris()) {
          std::printf("%-20s redirect URI %s\n", "", uri.c_str());
        }
        for (const std::string& url : c.api_base_urls()) {
          std::printf("%-20s API base %s%s\n", "", url.c_str(),
                      c.allow_private_network() ? " (private network allowed)" : "");
        }
      }
    });
  });

  std::string az_workspace, az_connector, az_scopes;
  bool az_paste = false;
  int az_port = 0;
  double az_wait_s = 600;
  CLI::App* authorize = app.add_subcommand(
      "authorize", "authorize a connector for a workspace (OAuth authorization-code grant)");
  authorize->add_option("--workspace", az_workspace, "workspace id")->required();
  authorize->add_option("--connector", az_connector, "connector id")->required();
  authorize->add_option(
      "--scopes", az_scopes,
      "space- or comma-separated scopes (default: the connector's narrow default)");
  bool az_from_manifests = false;
  authorize->add_flag("--from-manifests", az_from_manifests,
                      "request exactly the scopes the workspace's declared tools need (the "
                      "daemon's policy; see `grantvault scopes suggest`)");
  authorize->add_flag("--paste", az_paste,
                      "paste the final redirect URL instead of running a loopback listener");
  authorize->add_option("--port", az_port, "loopback listener port (default: any free port)")
      ->check(CLI::Range(0, 65535));
  std::string az_redirect_uri;
  authorize
      ->add_option("--redirect-uri", az_redirect_uri,
                   "one of the connector's registered redirect URIs (e.g. the hub's "
                   "https://…/oauth/callback); implies --paste: paste the URL the provider "
                   "redirected to")
      ->excludes("--port");
  authorize->add_option("--wait", az_wait_s, "seconds to wait for the redirect (default 600)");
  authorize->callback([&] {
    std::optional<LoopbackListener> listener;
    std::string redirect_uri = "http://127.0.0.1/callback";
    // A redirect to a URI the hub serves reaches the admin as the URL the
    // browser ends on (or the hub's web app forwards it): pasted.
    if (!az_redirect_uri.empty()) {
      az_paste = true;
      redirect_uri = az_redirect_uri;
    }
    if (!az_paste) {
      absl::StatusOr<LoopbackListener> l = LoopbackListener::Open(static_cast<uint16_t>(az_port));
      if (!l.ok()) {
        std::fprintf(stderr, "grantvault: %s\n", std::string(l.status().message()).c_str());
        rc = kUnavailable;
        return;
      }
      listener.emplace(std::move(*l));
      redirect_uri = listener->redirect_uri();
    }
    v1::Request begin;
    begin.mutable_begin_authorization()->set_workspace_id(az_workspace);
    begin.mutable_begin_authorization()->set_connector_id(az_connector);
    for (const std::string& s : SplitScopes(az_scopes))
      begin.mutable_begin_authorization()->add_scopes(s);
    begin.mutable_begin_authorization()->set_redirect_uri(redirect_uri);
    begin.mutable_begin_authorization()->set_from_manifests(az_from_manifests);
    std::string url;
    rc = Run(g, begin, [&](const v1::Response& resp) {
      const v1::BeginAuthorizationReply& started = resp.begin_authorization();
      url = started.authorization_url();
      std::fprintf(stderr, "Requesting scopes: %s\n", absl::StrJoin(started.scopes(), " ").c_str());
      if (started.unneeded_scopes_size() > 0) {
        std::fprintf(stderr,
                     "WARNING: no tool the workspace declares needs %s; the grant would reach "
                     "further than the use case (declared tools need: %s). Use --from-manifests "
                     "to request exactly those.\n",
                     absl::StrJoin(started.unneeded_scopes(), " ").c_str(),
                     absl::StrJoin(started.needed_scopes(), " ").c_str());
      }
    });
    if (rc != kOk) return;
    std::fprintf(stderr, "Open this URL in a browser, sign in and approve:\n");
    std::printf("%s\n", url.c_str());
    std::fflush(stdout);
    std::string callback;
    if (az_paste) {
      std::fprintf(stderr, "Then paste the full URL you were redirected to:\n");
      if (!std::getline(std::cin, callback)) {
        rc = kUsage;
        return;
      }
    } else {
      std::fprintf(stderr, "Waiting for the redirect on %s …\n", redirect_uri.c_str());
      absl::StatusOr<std::string> got =
          listener->WaitForRedirect(absl::Milliseconds(static_cast<int64_t>(az_wait_s * 1000)));
      if (!got.ok()) {
        std::fprintf(stderr, "grantvault: %s\n", std::string(got.status().message()).c_str());
        rc = kUnavailable;
        return;
      }
      callback = std::move(*got);
    }
    v1::Request complete;
    complete.mutable_complete_authorization()->set_callback_url(callback);
    WipeMemory(callback.data(), callback.size());
    rc = Run(g, std::move(complete), [&](const v1::Response& resp) {
      const v1::CompleteAuthorizationReply& done = resp.complete_authorization();
      if (g.json) return (void)std::printf("%s\n", Json(done).c_str());
      std::printf("Authorized: ");
      PrintGrant(done.grant(), false);
      if (!done.replaced_grant_id().empty()) {
        std::printf("This replaced grant %s (a scope change); it is revoked.\n",
                    done.replaced_grant_id().c_str());
      }
    });
  });

  // Offline: check a policy file before installing it (the daemon keeps its
  // previous policy when a reload does not parse; this says why first).
  CLI::App* policy_cmd = app.add_subcommand("policy", "caller and tool policy files");
  policy_cmd->require_subcommand(1);
  std::string policy_file;
  CLI::App* check =
      policy_cmd->add_subcommand("check", "parse and validate a policy file (offline)");
  check->add_option("FILE", policy_file, "policy file (TOML, docs/policy.md)")->required();
  check->callback([&] {
    absl::StatusOr<policy::Policy> p = policy::Policy::Load(policy_file);
    if (!p.ok()) {
      if (g.json) {
        v1::Error e;
        e.set_code(v1::Error::INVALID_ARGUMENT);
        e.set_message(std::string(p.status().message()));
        PrintError(g, e);
      } else {
        std::fprintf(stderr, "grantvault: %s\n", std::string(p.status().message()).c_str());
      }
      rc = kUsage;
      return;
    }
    size_t tools = 0;
    for (const auto& [id, ws] : p->workspaces()) tools += ws.tools.size();
    if (g.json) {
      std::printf("{\"valid\":true,\"callers\":%zu,\"workspaces\":%zu,\"tools\":%zu}\n",
                  p->callers().size(), p->workspaces().size(), tools);
      return;
    }
    std::printf("%s is valid: %zu caller rule(s), %zu workspace(s), %zu tool(s).\n",
                policy_file.c_str(), p->callers().size(), p->workspaces().size(), tools);
    for (const auto& [id, ws] : p->workspaces()) {
      std::map<std::string, int> per_connector;
      for (const policy::ToolDecl& t : ws.tools) ++per_connector[t.connector];
      for (const auto& [connector, n] : per_connector) {
        absl::StatusOr<std::vector<std::string>> scopes = p->SuggestScopes(id, connector);
        std::printf("  %s / %s: %d tool(s), narrowest scopes [%s]\n", id.c_str(), connector.c_str(),
                    n, scopes.ok() ? absl::StrJoin(*scopes, " ").c_str() : "?");
      }
    }
  });
  CLI::App* scopes_cmd = app.add_subcommand("scopes", "narrowest scopes for declared tools");
  scopes_cmd->require_subcommand(1);
  std::string sg_workspace, sg_connector;
  CLI::App* suggest = scopes_cmd->add_subcommand(
      "suggest", "the smallest scope set covering every tool a workspace declares for a connector");
  suggest->add_option("--workspace", sg_workspace, "workspace id")->required();
  suggest->add_option("--connector", sg_connector, "connector id")->required();
  suggest->callback([&] {
    v1::Request r;
    r.mutable_suggest_scopes()->set_workspace_id(sg_workspace);
    r.mutable_suggest_scopes()->set_connector_id(sg_connector);
    rc = Run(g, r, [&](const v1::Response& resp) {
      const v1::SuggestScopesReply& out = resp.suggest_scopes();
      if (g.json) return (void)std::printf("%s\n", Json(out).c_str());
      std::printf("%s\n", absl::StrJoin(out.scopes(), " ").c_str());
      for (const v1::SuggestScopesReply::Tool& t : out.tools()) {
        std::fprintf(stderr, "  tool %-24s needs %s  (%s)\n", t.name().c_str(),
                     absl::StrJoin(t.scopes(), " ").c_str(), t.where().c_str());
      }
    });
  });

  std::string rs_workspace, rs_connector, rs_tool, rs_scopes;
  uint32_t rs_min_valid = 0;
  bool rs_reveal = false;
  CLI::App* resolve = app.add_subcommand(
      "resolve", "ask agent.sock for an access token, as an agent host does (for developers)");
  resolve->add_option("--workspace", rs_workspace, "workspace id")->required();
  resolve->add_option("--connector", rs_connector, "connector id")->required();
  resolve->add_option("--tool", rs_tool, "the agent tool the token is for");
  resolve->add_option("--scopes", rs_scopes,
                      "space- or comma-separated scopes the call needs (default: the tool's)");
  resolve->add_option("--min-valid", rs_min_valid,
                      "seconds the token must stay valid (default 30, at most 600)");
  resolve->add_flag("--reveal", rs_reveal,
                    "print the access token itself (otherwise only its length is shown)");
  resolve->callback([&] {
    v1::Request r;
    v1::ResolveRequest* in = r.mutable_resolve();
    in->set_workspace_id(rs_workspace);
    in->set_connector_id(rs_connector);
    in->set_tool(rs_tool);
    for (const std::string& s : SplitScopes(rs_scopes)) in->add_scopes(s);
    in->set_min_valid_seconds(rs_min_valid);
    rc = Run(
        g, r,
        [&](const v1::Response& resp) {
          v1::ResolveReply out = resp.resolve();
          const size_t length = out.access_token().size();
          if (!rs_reveal) out.clear_access_token();
          if (g.json) {
            // ToJson leaves bytes out; the token is added as the provider
            // issued it (protobuf's mapping would print base64).
            nlohmann::ordered_json shown = ToJson(out);
            if (rs_reveal) {
              PrintJsonWithSecret(stdout, shown, "access_token", out.access_token());
            } else {
              shown["access_token_length"] = length;
              std::printf(
                  "%s\n",
                  shown.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
                      .c_str());
            }
          } else {
            std::printf("grant      %s (%s)\naccount    %s\nscopes     %s\nexpires    %s\n",
                        out.grant_id().c_str(), out.connector_type().c_str(),
                        out.account_id().c_str(), absl::StrJoin(out.scopes(), " ").c_str(),
                        out.expires_at_ms() == 0 ? "never" : Millis(out.expires_at_ms()).c_str());
            if (rs_reveal) {
              std::printf("%s %s\n", out.token_type().c_str(), out.access_token().c_str());
            } else {
              std::printf("token      %s, %zu bytes (--reveal prints it)\n",
                          out.token_type().c_str(), length);
            }
          }
          WipeMemory(out.mutable_access_token()->data(), out.access_token().size());
        },
        nullptr, Socket::kAgent);
  });

  std::string px_workspace, px_connector, px_tool, px_scopes, px_method = "GET", px_url, px_data;
  std::vector<std::string> px_headers;
  bool px_include = false;
  CLI::App* proxy = app.add_subcommand(
      "proxy",
      "make an API call through agent.sock's proxy, as an agent host does (for developers); the "
      "daemon injects the credential");
  proxy->add_option("--workspace", px_workspace, "workspace id")->required();
  proxy->add_option("--connector", px_connector, "connector id")->required();
  proxy->add_option("--tool", px_tool, "the agent tool the call is for (its limits apply)");
  proxy->add_option("--scopes", px_scopes, "scopes the call needs (default: the tool's)");
  proxy->add_option("-X,--method", px_method, "HTTP method (default GET)");
  proxy->add_option("-H,--header", px_headers, "a request header 'Name: value' (repeatable)");
  proxy->add_option("-d,--data", px_data, "the request body; @FILE reads it from FILE");
  proxy->add_flag("-i,--include", px_include, "print the status line and headers first");
  proxy
      ->add_option("url", px_url,
                   "an https URL on the connector's API bases, or a path such as /v1/things")
      ->required();
  proxy->callback([&] {
    v1::Request r;
    v1::ProxyRequest* in = r.mutable_proxy();
    in->set_workspace_id(px_workspace);
    in->set_connector_id(px_connector);
    in->set_tool(px_tool);
    in->set_method(px_method);
    in->set_url(px_url);
    for (const std::string& s : SplitScopes(px_scopes)) in->add_scopes(s);
    for (const std::string& h : px_headers) {
      const size_t colon = h.find(':');
      if (colon == std::string::npos || colon == 0) {
        std::fprintf(stderr, "grantvault: --header takes 'Name: value', not '%s'\n", h.c_str());
        rc = kUsage;
        return;
      }
      v1::HttpHeader* out = in->add_headers();
      out->set_name(h.substr(0, colon));
      out->set_value(std::string(absl::StripLeadingAsciiWhitespace(h.substr(colon + 1))));
    }
    if (!px_data.empty() && px_data.front() == '@') {
      std::ifstream file(px_data.substr(1), std::ios::binary);
      if (!file) {
        std::fprintf(stderr, "grantvault: cannot read %s\n", px_data.substr(1).c_str());
        rc = kUsage;
        return;
      }
      in->set_body(std::string(std::istreambuf_iterator<char>(file), {}));
    } else {
      in->set_body(px_data);
    }
    rc = Run(
        g, r, [&](const v1::Response&) { std::fflush(stdout); },
        [&](const v1::Response& partial) {
          if (partial.has_proxy_head() && px_include) {
            std::printf("HTTP %u\n", partial.proxy_head().status());
            for (const v1::HttpHeader& h : partial.proxy_head().headers()) {
              std::printf("%s: %s\n", h.name().c_str(), h.value().c_str());
            }
            std::printf("\n");
          }
          if (partial.has_proxy_body()) {
            const std::string& data = partial.proxy_body().data();
            std::fwrite(data.data(), 1, data.size(), stdout);
          }
        },
        Socket::kAgent);
  });

  std::string rv_grant, rv_workspace, rv_connector, rv_reason;
  CLI::App* revoke = app.add_subcommand(
      "revoke", "revoke a grant: at once here, then at the provider (retried until it succeeds)");
  revoke->add_option("GRANT_ID", rv_grant, "grant id (gr_…); or --workspace and --connector");
  revoke->add_option("--workspace", rv_workspace, "the workspace whose current grant to revoke");
  revoke->add_option("--connector", rv_connector, "with --workspace: the connector");
  revoke->add_option("--reason", rv_reason, "why (audited)")->required();
  revoke->callback([&] {
    v1::Request r;
    v1::RevokeGrantRequest* in = r.mutable_revoke_grant();
    in->set_grant_id(rv_grant);
    in->set_workspace_id(rv_workspace);
    in->set_connector_id(rv_connector);
    in->set_reason(rv_reason);
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.revoke_grant()).c_str());
      std::printf("Revoked: ");
      PrintGrant(resp.revoke_grant().grant(), true);
    });
  });

  CLI::App* audit_cmd = app.add_subcommand("audit", "the tamper-evident audit log");
  audit_cmd->require_subcommand(1);
  std::string ax_workspace, ax_since, ax_until, ax_format = "jsonl", ax_out;
  std::vector<std::string> ax_events;
  bool ax_system = false;
  CLI::App* ax = audit_cmd->add_subcommand(
      "export", "export one chain (a workspace, or --system) as JSONL or CSV (docs/audit.md)");
  ax->add_option("--workspace", ax_workspace, "workspace id");
  ax->add_flag("--system", ax_system, "the system chain (keys, connectors, policy)");
  ax->add_option("--since", ax_since, "from this time (RFC 3339, inclusive)");
  ax->add_option("--until", ax_until, "up to this time (RFC 3339, exclusive)");
  ax->add_option("--event", ax_events, "only these event types (repeatable)");
  ax->add_option("--format", ax_format, "jsonl (default) or csv")
      ->check(CLI::IsMember({"jsonl", "csv"}));
  ax->add_option("-o,--output", ax_out, "file to write (created 0600)")->required();
  ax->callback([&] {
    v1::Request r;
    v1::AuditExportRequest* in = r.mutable_audit_export();
    in->set_workspace_id(ax_workspace);
    in->set_system(ax_system);
    for (const auto& [text, field] :
         {std::pair{&ax_since, &v1::AuditExportRequest::set_since_ms},
          std::pair{&ax_until, &v1::AuditExportRequest::set_until_ms}}) {
      if (text->empty()) continue;
      absl::Time t;
      std::string error;
      if (!absl::ParseTime(absl::RFC3339_full, *text, &t, &error)) {
        std::fprintf(stderr, "grantvault: '%s' is not an RFC 3339 time: %s\n", text->c_str(),
                     error.c_str());
        rc = kUsage;
        return;
      }
      (in->*field)(absl::ToUnixMillis(t));
    }
    for (const std::string& e : ax_events) in->add_event_types(e);
    in->set_format(ax_format);
    const int fd = ::open(ax_out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    std::FILE* out = fd >= 0 ? ::fdopen(fd, "w") : nullptr;
    if (out == nullptr) {
      if (fd >= 0) ::close(fd);
      std::fprintf(stderr, "grantvault: cannot create %s: %s\n", ax_out.c_str(),
                   std::strerror(errno));
      rc = kUsage;
      return;
    }
    ProgressBar progress(!g.json, "export");
    bool write_failed = false;
    rc = Run(
        g, r,
        [&](const v1::Response& resp) {
          const v1::AuditExportReply& done = resp.audit_export();
          if (g.json) return (void)std::printf("%s\n", Json(done).c_str());
          std::printf("Exported %llu record(s), %llu bytes, to %s\n",
                      static_cast<unsigned long long>(done.records()),
                      static_cast<unsigned long long>(done.bytes()), ax_out.c_str());
        },
        [&](const v1::Response& partial) {
          const v1::AuditExportChunk& chunk = partial.audit_export_chunk();
          if (std::fwrite(chunk.data().data(), 1, chunk.data().size(), out) !=
              chunk.data().size()) {
            write_failed = true;
          }
          progress.Update(chunk.done(), chunk.total() - std::min(chunk.total(), chunk.done()));
        });
    if (std::fclose(out) != 0 || write_failed) {
      std::fprintf(stderr, "grantvault: writing %s failed: %s\n", ax_out.c_str(),
                   std::strerror(errno));
      if (rc == kOk) rc = kInternal;
    }
    if (rc != kOk) ::unlink(ax_out.c_str());
  });
  std::string av_file, av_key;
  CLI::App* av = audit_cmd->add_subcommand(
      "verify", "verify an export offline: hash chains and signed checkpoints (no daemon needed)");
  av->add_option("FILE", av_file, "the exported file (JSONL or CSV)")->required();
  av->add_option("--public-key", av_key,
                 "the audit public key (PEM; `grantvault keys audit-public-key -o FILE`)")
      ->required();
  av->callback([&] {
    std::ifstream key_file(av_key);
    std::string pem((std::istreambuf_iterator<char>(key_file)), std::istreambuf_iterator<char>());
    if (!key_file.good() && !key_file.eof()) {
      std::fprintf(stderr, "grantvault: cannot read %s\n", av_key.c_str());
      rc = kUsage;
      return;
    }
    absl::StatusOr<audit::VerifyReport> report = audit::VerifyExport(av_file, pem);
    if (!report.ok()) {
      std::fprintf(stderr, "grantvault: %s: NOT VERIFIED: %s\n", av_file.c_str(),
                   std::string(report.status().message()).c_str());
      rc = absl::IsDataLoss(report.status()) ? kRefused : kUsage;
      return;
    }
    const audit::VerifyReport& v = *report;
    if (g.json) {
      std::printf(
          "{\"verified\":true,\"chain\":\"%s\",\"first_seq\":%llu,\"last_seq\":%llu,"
          "\"records\":%llu,\"stubs\":%llu,\"checkpoints\":%llu,\"key_label\":\"%s\"}\n",
          v.chain.c_str(), static_cast<unsigned long long>(v.first_seq),
          static_cast<unsigned long long>(v.last_seq), static_cast<unsigned long long>(v.records),
          static_cast<unsigned long long>(v.stubs), static_cast<unsigned long long>(v.checkpoints),
          v.key_label.c_str());
      return;
    }
    std::printf(
        "%s: verified (%s)\n  chain        %s\n  records      seq %llu..%llu: %llu in "
        "full, %llu outside the filter\n  checkpoints  %llu, signed by %s, last at %s\n"
        "  exported at  %s%s\n",
        av_file.c_str(), v.format.c_str(), v.chain.c_str(),
        static_cast<unsigned long long>(v.first_seq), static_cast<unsigned long long>(v.last_seq),
        static_cast<unsigned long long>(v.records), static_cast<unsigned long long>(v.stubs),
        static_cast<unsigned long long>(v.checkpoints), v.key_label.c_str(),
        v.last_checkpoint_time.c_str(), v.exported_at.c_str(),
        v.window_closed ? "" : " (complete up to the last checkpoint)");
  });

  CLI::App* grants = app.add_subcommand("grants", "the grants of a workspace (never a secret)");
  grants->require_subcommand(1);
  std::string workspace;
  CLI::App* list = grants->add_subcommand("list", "every grant of a workspace, any status");
  list->add_option("--workspace", workspace, "workspace id")->required();
  list->callback([&] {
    v1::Request r;
    r.mutable_list_grants()->set_workspace_id(workspace);
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.list_grants()).c_str());
      if (resp.list_grants().grants().empty()) {
        std::printf("Workspace %s has no grants.\n", workspace.c_str());
      }
      for (const v1::GrantInfo& gi : resp.list_grants().grants()) PrintGrant(gi, false);
    });
  });
  std::string grant_id;
  CLI::App* show = grants->add_subcommand("show", "one grant in detail");
  show->add_option("GRANT_ID", grant_id, "grant id (gr_…)")->required();
  show->callback([&] {
    v1::Request r;
    r.mutable_show_grant()->set_grant_id(grant_id);
    rc = Run(g, r, [&](const v1::Response& resp) {
      if (g.json) return (void)std::printf("%s\n", Json(resp.show_grant()).c_str());
      PrintGrant(resp.show_grant().grant(), true);
    });
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (const int unexpected = ReportUnexpectedArguments(app, argc, argv); unexpected != kOk)
      return unexpected;
    return app.exit(e) == 0 ? kOk : kUsage;
  }
  return rc;
}

}  // namespace grantvault::cli

int main(int argc, char** argv) { return grantvault::cli::Main(argc, argv); }
