#include "tests/testing/oauth_provider.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

#ifndef GV_SOURCE_DIR
#error "GV_SOURCE_DIR must be defined (tests/testing/CMakeLists.txt)"
#endif

namespace grantvault::testing {
namespace {

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  out.reserve(v.size() + 1);
  for (std::string& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> Environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (entry.rfind("NOTIFY_SOCKET=", 0) == 0 || entry.rfind("LISTEN_", 0) == 0 ||
        entry.rfind("GV_PROVIDER_", 0) == 0) {
      continue;
    }
    env.push_back(std::move(entry));
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Waits for `pid` until `end`; SIGKILLs it when the time runs out.
int WaitUntil(pid_t pid, absl::Time end) {
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return DecodeWaitStatus(status);
    if (r < 0 && errno != EINTR) return -1;
    if (absl::Now() > end) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return DecodeWaitStatus(status);
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

// An absolute path for `name`: $GV_<NAME> if set, else the first executable
// on PATH.
absl::StatusOr<std::string> FindProgram(const std::string& name, const char* override_env) {
  if (const char* o = std::getenv(override_env); o != nullptr && *o != '\0') return std::string(o);
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string candidate = absl::StrCat(dir, "/", name);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(absl::StrCat(name, " not found on PATH (set ", override_env, ")"));
}

// Forks and execs `argv` with `env`; stdin is /dev/null, stdout goes to the
// returned pipe (read end, close-on-exec) and stderr to `stderr_fd` (or the
// same pipe when -1). The child dies with the calling thread (PDEATHSIG), so a
// crashed test leaves no server behind.
absl::StatusOr<pid_t> Spawn(std::vector<std::string> argv, std::vector<std::string> env,
                            int stderr_fd, int* stdout_read_fd) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  std::vector<char*> cargs = CStrings(argv);
  std::vector<char*> cenv = CStrings(env);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(stderr_fd >= 0 ? stderr_fd : out[1], STDERR_FILENO);
    ::execve(cargs[0], cargs.data(), cenv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  *stdout_read_fd = out[0];
  return pid;
}

struct Output {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `argv` to completion (at most `timeout`), capturing stdout and stderr
// through pipes.
absl::StatusOr<Output> Run(std::vector<std::string> argv, std::vector<std::string> extra_env,
                           absl::Duration timeout) {
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  int out_fd = -1;
  const std::string program = argv[0];
  absl::StatusOr<pid_t> pid = Spawn(std::move(argv), Environment(extra_env), err_pipe[1], &out_fd);
  ::close(err_pipe[1]);
  if (!pid.ok()) {
    ::close(err_pipe[0]);
    return pid.status();
  }
  const absl::Time end = absl::Now() + timeout;
  Output result;
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    const int64_t ms = absl::ToInt64Milliseconds(end - absl::Now());
    if (ms <= 0) {
      timed_out = true;
      break;
    }
    int n = ::poll(fds, 2, static_cast<int>(ms));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t r = ::read(fds[i].fd, buf, sizeof(buf));
      if (r > 0) {
        sinks[i]->append(buf, static_cast<size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  result.exit_code = WaitUntil(*pid, timed_out ? absl::Now() : end + absl::Seconds(1));
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(
        program, " did not finish in ", absl::FormatDuration(timeout), "; stderr: ", result.err));
  }
  return result;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned char>(c));
          out += esc;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string ClientsJson(const std::vector<OAuthProviderClient>& clients) {
  std::vector<std::string> entries;
  for (const OAuthProviderClient& c : clients) {
    std::vector<std::string> uris;
    for (const std::string& u : c.redirect_uris) uris.push_back(JsonString(u));
    entries.push_back(absl::StrCat(
        "{\"client_id\":", JsonString(c.client_id), ",\"client_secret\":",
        JsonString(c.client_secret), ",\"redirect_uris\":[", absl::StrJoin(uris, ","),
        "],\"token_endpoint_auth_method\":", JsonString(c.token_endpoint_auth_method),
        ",\"id_token_signed_response_alg\":", JsonString(c.id_token_signed_response_alg), "}"));
  }
  return absl::StrCat("[", absl::StrJoin(entries, ","), "]\n");
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Tail(const std::string& s, size_t n = 4000) {
  return s.size() <= n ? s : "…" + s.substr(s.size() - n);
}

}  // namespace

std::string OAuthProviderScriptDir() { return std::string(GV_SOURCE_DIR) + "/tests/provider"; }

absl::StatusOr<std::unique_ptr<OAuthProvider>> OAuthProvider::Start(OAuthProviderOptions options) {
  std::unique_ptr<OAuthProvider> p(new OAuthProvider());
  p->clients_ = options.clients.empty() ? std::vector<OAuthProviderClient>{OAuthProviderClient{}}
                                        : std::move(options.clients);
  const std::string scripts = OAuthProviderScriptDir();
  if (::access((scripts + "/node_modules/oidc-provider/package.json").c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        scripts, "/node_modules is missing: run scripts/install-deps.sh (npm ci there)"));
  }
  absl::StatusOr<std::string> node = FindProgram("node", "GV_NODE");
  if (!node.ok()) return node.status();
  absl::StatusOr<std::string> bash = FindProgram("bash", "GV_BASH");
  if (!bash.ok()) return bash.status();

  // Certificate and key.
  absl::StatusOr<Output> cert =
      Run({*bash, scripts + "/provider-cert.sh", p->dir_.path()}, {}, absl::Seconds(20));
  if (!cert.ok()) return cert.status();
  if (cert->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("provider-cert.sh exited ", cert->exit_code, ": ", cert->err));
  }
  p->ca_file_ = p->dir_.Join("cert.pem");

  // Clients.
  const std::string clients_file = p->dir_.Join("clients.json");
  {
    int fd = ::open(clients_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return absl::InternalError(absl::StrCat("create ", clients_file));
    const std::string json = ClientsJson(p->clients_);
    const bool ok = ::write(fd, json.data(), json.size()) == static_cast<ssize_t>(json.size());
    ::close(fd);
    if (!ok) return absl::InternalError(absl::StrCat("write ", clients_file));
  }

  // The server: stdout through a pipe (PORT/READY lines), stderr into a file.
  p->log_file_ = p->dir_.Join("server.log");
  int log_fd = ::open(p->log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("create ", p->log_file_));
  std::vector<std::string> env = Environment({
      absl::StrCat("GV_PROVIDER_AT_TTL=",
                   std::max<int64_t>(1, absl::ToInt64Seconds(options.access_token_ttl))),
      absl::StrCat("GV_PROVIDER_RT_TTL=",
                   std::max<int64_t>(1, absl::ToInt64Seconds(options.refresh_token_ttl))),
  });
  absl::StatusOr<pid_t> pid =
      Spawn({*node, scripts + "/server.mjs", "--port", std::to_string(options.port), "--cert",
             p->ca_file_, "--key", p->dir_.Join("key.pem"), "--clients", clients_file},
            std::move(env), log_fd, &p->stdout_fd_);
  ::close(log_fd);
  if (!pid.ok()) return pid.status();
  p->pid_ = *pid;

  // Wait for "READY <issuer>".
  const absl::Time end = absl::Now() + options.startup_timeout;
  std::string out;
  for (;;) {
    size_t nl = out.find('\n');
    bool found = false;
    while (nl != std::string::npos) {
      absl::string_view line(out.data(), nl);
      if (absl::ConsumePrefix(&line, "READY ")) {
        p->issuer_ = std::string(line);
        found = true;
        break;
      }
      out.erase(0, nl + 1);
      nl = out.find('\n');
    }
    if (found) break;
    const int64_t ms = absl::ToInt64Milliseconds(end - absl::Now());
    if (ms <= 0) {
      p->Stop(absl::Seconds(1));
      return absl::DeadlineExceededError(absl::StrCat("no READY from server.mjs in ",
                                                      absl::FormatDuration(options.startup_timeout),
                                                      "; its log:\n", Tail(p->Log())));
    }
    pollfd pfd{p->stdout_fd_, POLLIN, 0};
    int n = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(ms, 100)));
    if (n > 0) {
      char buf[1024];
      ssize_t r = ::read(p->stdout_fd_, buf, sizeof(buf));
      if (r > 0) {
        out.append(buf, static_cast<size_t>(r));
        continue;
      }
      if (r == 0) {
        int code = p->Stop(absl::Seconds(1));
        return absl::FailedPreconditionError(absl::StrCat(
            "server.mjs exited (", code, ") before READY; its log:\n", Tail(p->Log())));
      }
    }
  }
  absl::string_view rest(p->issuer_);
  if (!absl::ConsumePrefix(&rest, "https://127.0.0.1:") || !absl::SimpleAtoi(rest, &p->port_) ||
      p->port_ <= 0) {
    p->Stop(absl::Seconds(1));
    return absl::InternalError(absl::StrCat("unexpected issuer from server.mjs: ", p->issuer_));
  }
  return p;
}

OAuthProvider::~OAuthProvider() { Stop(); }

int OAuthProvider::Stop(absl::Duration timeout) {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    exit_code_ = WaitUntil(pid_, absl::Now() + timeout);
    pid_ = -1;
  }
  if (stdout_fd_ >= 0) {
    ::close(stdout_fd_);
    stdout_fd_ = -1;
  }
  return exit_code_;
}

std::string OAuthProvider::Log() const { return Slurp(log_file_); }

int OAuthProvider::RefreshesServed() const {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(Log(), '\n')) {
    if (absl::EndsWith(line, "grant.success: refresh_token")) ++n;
  }
  return n;
}

absl::StatusOr<std::string> OAuthProvider::Approve(const std::string& authorization_url, bool deny,
                                                   const std::string& user,
                                                   absl::Duration timeout) const {
  absl::StatusOr<std::string> node = FindProgram("node", "GV_NODE");
  if (!node.ok()) return node.status();
  std::vector<std::string> argv = {
      *node,          OAuthProviderScriptDir() + "/approve.mjs",
      "--ca",         ca_file_,
      "--user",       user,
      "--timeout-ms", std::to_string(absl::ToInt64Milliseconds(timeout))};
  if (deny) argv.push_back("--deny");
  argv.push_back(authorization_url);
  absl::StatusOr<Output> r = Run(std::move(argv), {}, timeout + absl::Seconds(5));
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::FailedPreconditionError(absl::StrCat("approve.mjs exited ", r->exit_code, ": ",
                                                      absl::StripAsciiWhitespace(r->err)));
  }
  return std::string(absl::StripAsciiWhitespace(r->out));
}

}  // namespace grantvault::testing
