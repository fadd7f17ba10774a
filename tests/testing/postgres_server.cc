#include "tests/testing/postgres_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/ids.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::testing {
namespace {

// The newest installed server's binaries (Debian: /usr/lib/postgresql/N/bin).
std::string FindServerBin() {
  std::error_code ec;
  std::string best;
  int best_version = -1;
  for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string version = entry.path().filename();
    const int n = std::atoi(version.c_str());
    const std::string bin = entry.path() / "bin";
    if (n > best_version && ::access((bin + "/initdb").c_str(), X_OK) == 0 &&
        ::access((bin + "/pg_ctl").c_str(), X_OK) == 0) {
      best = bin;
      best_version = n;
    }
  }
  return best;
}

// A loopback port nothing listens on now (bound once, then released).
int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->bin_ = FindServerBin();
  if (server->bin_.empty()) {
    return absl::FailedPreconditionError(
        "no PostgreSQL server under /usr/lib/postgresql (run scripts/install-deps.sh)");
  }
  server->as_postgres_user_ = ::geteuid() == 0;
  // Under /tmp, not TEST_TMPDIR: the postgres user must reach the directory.
  std::string root = "/tmp/gv-postgres-XXXXXX";
  if (::mkdtemp(root.data()) == nullptr) {
    return absl::ErrnoToStatus(errno, "cannot create the PostgreSQL test directory");
  }
  server->root_ = root;
  server->password_ = NewId("pw_");
  // Two copies: the one initdb reads must be the server user's, the one
  // clients read ours (ReadSecretFile refuses another user's file).
  server->password_file_ = root + "/password";
  const std::string initdb_password = root + "/initdb-password";
  for (const std::string* file : {&std::as_const(server->password_file_), &initdb_password}) {
    if (absl::Status s = WriteFileAtomically(*file, server->password_, 0600); !s.ok()) return s;
  }
  if (server->as_postgres_user_) {
    const passwd* pg = ::getpwnam("postgres");
    if (pg == nullptr) return absl::FailedPreconditionError("no postgres user to run the server");
    // The server's own directory and the password file initdb reads.
    if (::chown(root.c_str(), pg->pw_uid, pg->pw_gid) != 0 ||
        ::chown(initdb_password.c_str(), pg->pw_uid, pg->pw_gid) != 0) {
      return absl::ErrnoToStatus(errno, "cannot give the test directory to postgres");
    }
  }
  // From here on the directory is the reaper's to remove if this process dies.
  if (absl::Status s = server->StartReaper(); !s.ok()) return s;
  if (absl::Status s = server->RunAsServerUser(
          {server->bin_ + "/initdb", "--pgdata", root + "/data", "--username", server->user_,
           "--pwfile", initdb_password, "--auth-local=trust", "--auth-host=scram-sha-256",
           "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"},
          "initdb");
      !s.ok()) {
    return s;
  }
  // Nothing but tests: no fsync, small.
  if (absl::Status s = WriteFile(root + "/data/postgresql.auto.conf",
                                 "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
                                 "shared_buffers = 16MB\nmax_connections = 100\n");
      !s.ok()) {
    return s;
  }
  for (int attempt = 0; attempt < 5; ++attempt) {
    server->port_ = FreeLoopbackPort();
    if (server->StartAgain().ok()) return server;
  }
  return absl::UnavailableError(absl::StrCat("PostgreSQL did not start:\n", server->Log()));
}

PostgresServer::~PostgresServer() {
  if (running_) (void)Stop();
  if (reaper_ > 0) {  // nothing left for it to do
    ::kill(reaper_, SIGKILL);
    ::waitpid(reaper_, nullptr, 0);
  }
  if (reaper_pipe_ >= 0) ::close(reaper_pipe_);
  std::error_code ec;
  if (!root_.empty()) std::filesystem::remove_all(root_, ec);
}

absl::Status PostgresServer::StartReaper() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe for the reaper");
  // A shell, so that the child only execs after fork (this process may have
  // threads). `read` returns when the write end closes: when this process is
  // gone, whatever way it went. Paths are ours (mkdtemp), without quotes.
  const std::string stop =
      absl::StrCat(as_postgres_user_ ? "/usr/sbin/runuser -u postgres -- " : "", bin_,
                   "/pg_ctl --pgdata ", root_, "/data --mode immediate --wait stop");
  const std::string script = absl::StrCat("read _; ", stop, " >/dev/null 2>&1; rm -rf ", root_, "");
  std::vector<std::string> args = {"/bin/sh", "-c", script};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork the reaper");
  if (pid == 0) {
    ::dup2(fds[0], STDIN_FILENO);  // clears close-on-exec for the copy
    ::setsid();                    // not in the test's process group: a ^C reaches the test only
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[0]);
  reaper_ = pid;
  reaper_pipe_ = fds[1];
  return absl::OkStatus();
}

absl::StatusOr<PostgresServer*> SharedPostgresServer() {
  static const absl::StatusOr<PostgresServer*> server = []() -> absl::StatusOr<PostgresServer*> {
    absl::StatusOr<std::unique_ptr<PostgresServer>> started = PostgresServer::Start();
    if (!started.ok()) return started.status();
    // Not destroyed at exit (tests may still be using it from other
    // statics); the reaper stops it when the process is gone.
    return started->release();
  }();
  return server;
}

absl::Status PostgresServer::RunAsServerUser(const std::vector<std::string>& argv,
                                             const std::string& what) const {
  std::vector<std::string> full;
  if (as_postgres_user_) full = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  full.insert(full.end(), argv.begin(), argv.end());
  const CommandResult r = RunCommand(full, {"LC_ALL=C.UTF-8"});
  if (r.exit_code != 0) {
    return absl::UnavailableError(
        absl::StrCat(what, " failed (exit ", r.exit_code, "): ", r.err, r.out));
  }
  return absl::OkStatus();
}

absl::Status PostgresServer::StartAgain() {
  const std::string options = absl::StrCat("-c listen_addresses=127.0.0.1 -c port=", port_,
                                           " -c unix_socket_directories=", root_);
  absl::Status started =
      RunAsServerUser({bin_ + "/pg_ctl", "--pgdata", root_ + "/data", "--log", root_ + "/log",
                       "--options", options, "--wait", "--timeout", "30", "start"},
                      "pg_ctl start");
  running_ = started.ok();
  return started;
}

absl::Status PostgresServer::Stop() {
  absl::Status stopped = RunAsServerUser(
      {bin_ + "/pg_ctl", "--pgdata", root_ + "/data", "--mode", "fast", "--wait", "stop"},
      "pg_ctl stop");
  if (stopped.ok()) running_ = false;
  return stopped;
}

absl::Status PostgresServer::RunSql(const std::string& sql) const {
  // Over the Unix socket in the server's directory (trusted, no password).
  return RunAsServerUser({bin_ + "/psql", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1",
                          "--host", root_, "--port", std::to_string(port_), "--username", user_,
                          "--dbname", "postgres", "--command", sql},
                         "psql");
}

absl::Status PostgresServer::CreateDatabase(const std::string& name) {
  return RunSql(absl::StrCat("CREATE DATABASE \"", name, "\""));
}

std::string PostgresServer::ConnectionString(const std::string& database) const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " user=", user_, " dbname=", database,
                      " connect_timeout=5");
}

std::string PostgresServer::ConnectionStringWithPassword(const std::string& database) const {
  return absl::StrCat(ConnectionString(database), " password=", password_);
}

std::string PostgresServer::Log() const {
  std::ifstream in(root_ + "/log");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
}

}  // namespace grantvault::testing
