#include "tests/testing/socket_activated_daemon.h"

#include <grp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grantvault/v1/envelope.pb.h"
#include "ipc/client.h"
#include "tests/integration/raw_socket.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/wait.h"

namespace grantvault::testing {

std::string FindTool(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/bin", "/usr/sbin", "/sbin"}) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::map<std::string, std::string> UnitSettings(const std::string& text) {
  std::map<std::string, std::string> settings;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    settings[kv.first] = kv.second;
  }
  return settings;
}

SocketUnit ReadSocketUnit(const std::string& unit_file, const std::string& run_dir) {
  std::map<std::string, std::string> s = UnitSettings(Slurp(unit_file));
  SocketUnit socket;
  socket.fd_name = s["FileDescriptorName"];
  socket.listen_stream = s["ListenStream"];
  socket.path =
      absl::StrCat(run_dir, "/", socket.listen_stream.substr(socket.listen_stream.rfind('/') + 1));
  socket.group = s["SocketGroup"];
  socket.mode = static_cast<mode_t>(std::strtoul(s["SocketMode"].c_str(), nullptr, 8));
  return socket;
}

absl::StatusOr<std::unique_ptr<DaemonProcess>> StartSocketActivated(const SocketActivation& how) {
  std::vector<std::string> argv = {how.activate};
  for (const SocketUnit& s : how.sockets) {
    argv.insert(argv.end(), {"-l", s.path, absl::StrCat("--fdname=", s.fd_name)});
  }
  argv.insert(argv.end(), {"-E", "NOTIFY_SOCKET", "-E",
                           absl::StrCat("WATCHDOG_USEC=", absl::ToInt64Microseconds(how.watchdog)),
                           how.setpriv, absl::StrCat("--reuid=", how.uid),
                           absl::StrCat("--regid=", how.gid), "--clear-groups"});
  argv.insert(argv.end(), how.daemon_argv.begin(), how.daemon_argv.end());
  auto daemon = std::make_unique<DaemonProcess>(std::move(argv));
  daemon->AllowNotificationsFrom(how.uid);
  int knock = -1;
  std::thread trigger([&] {
    for (const SocketUnit& s : how.sockets) {
      struct stat st;
      if (!WaitFor([&] { return ::stat(s.path.c_str(), &st) == 0; })) return;
      const gid_t group = how.group_id ? how.group_id(s.group) : how.gid;
      if (::chown(s.path.c_str(), how.uid, group) != 0 || ::chmod(s.path.c_str(), s.mode) != 0) {
        return;  // the caller's mode checks then fail
      }
    }
    if (how.sockets.empty()) return;
    // The socket's file exists from bind(); a connect before the activator's
    // listen() is refused, and a knock lost that way would leave the daemon
    // unstarted: knock until one is accepted.
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", how.sockets.back().path.c_str());
    WaitFor([&] {
      knock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(knock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return true;
      ::close(knock);
      knock = -1;
      return false;
    });
  });
  absl::Status started = daemon->Start(absl::Seconds(30));
  trigger.join();
  if (knock >= 0) ::close(knock);
  if (!started.ok()) {
    return absl::Status(started.code(), absl::StrCat(started.message(), "\n", daemon->Stderr()));
  }
  return daemon;
}

CommandResult RunAs(const std::string& setpriv, uid_t uid, gid_t gid, const std::string& groups,
                    std::vector<std::string> argv) {
  std::vector<std::string> full = {setpriv, absl::StrCat("--reuid=", uid),
                                   absl::StrCat("--regid=", gid),
                                   groups.empty() ? "--clear-groups" : "--groups=" + groups};
  full.insert(full.end(), argv.begin(), argv.end());
  return RunCommand(full);
}

std::string ResolveAsAgent(const std::string& agent_socket, uid_t uid, gid_t agents_gid,
                           const std::string& workspace, const std::string& connector) {
  int out[2];
  if (::pipe(out) != 0) return "pipe failed";
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(out[0]);
    const gid_t groups[] = {agents_gid};
    if (::setgroups(1, groups) != 0 || ::setresgid(uid, uid, uid) != 0 ||
        ::setresuid(uid, uid, uid) != 0) {
      ::_exit(9);
    }
    // Dumpable, as a process exec'd under that uid is (a credential change
    // clears it, which would hide /proc/<pid>/exe even from its own uid).
    ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    RawSocket raw(agent_socket);
    if (!raw.connected()) ::_exit(10);
    if (!raw.Hello()) ::_exit(11);
    v1::Request request;
    request.set_request_id(2);
    request.mutable_resolve()->set_workspace_id(workspace);
    request.mutable_resolve()->set_connector_id(connector);
    request.mutable_resolve()->set_min_valid_seconds(1);
    if (!raw.WriteRequest(request)) ::_exit(12);
    std::optional<v1::Response> response = raw.ReadResponse(absl::Seconds(20));
    if (!response) ::_exit(13);
    const std::string report = absl::StrCat(
        "code=", response->has_error() ? static_cast<int>(response->error().code()) : 0);
    ::_exit(::write(out[1], report.data(), report.size()) == static_cast<ssize_t>(report.size())
                ? 0
                : 14);
  }
  ::close(out[1]);
  std::string report;
  char buf[256];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof(buf))) > 0) report.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 10) return "cannot connect";
  if (WIFEXITED(status) && WEXITSTATUS(status) == 11) return "hello refused";
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::StrCat("child failed with status ", status, ": ", report);
  }
  return report;
}

absl::StatusOr<std::string> AuthorizeAtProvider(const std::string& admin_socket,
                                                OAuthProvider& provider,
                                                const std::string& workspace,
                                                const std::string& connector) {
  auto admin = ipc::Client::Connect(admin_socket);
  if (!admin.ok()) return admin.status();
  v1::Request begin;
  begin.set_admin_user("alice-admin");
  begin.mutable_begin_authorization()->set_workspace_id(workspace);
  begin.mutable_begin_authorization()->set_connector_id(connector);
  begin.mutable_begin_authorization()->set_redirect_uri("http://127.0.0.1/callback");
  auto started = (*admin)->Call(begin, absl::Seconds(30));
  if (!started.ok()) return started.status();
  if (!started->has_begin_authorization()) {
    return absl::InternalError(absl::StrCat("begin: ", started->error().message()));
  }
  auto redirect = provider.Approve(started->begin_authorization().authorization_url());
  if (!redirect.ok()) return redirect.status();
  v1::Request complete;
  complete.set_admin_user("alice-admin");
  complete.mutable_complete_authorization()->set_callback_url(*redirect);
  auto done = (*admin)->Call(complete, absl::Seconds(30));
  if (!done.ok()) return done.status();
  if (!done->has_complete_authorization()) {
    return absl::InternalError(absl::StrCat("complete: ", done->error().message()));
  }
  return done->complete_authorization().grant().grant_id();
}

}  // namespace grantvault::testing
