// A real PostgreSQL server for tests: Debian's own binaries, a new cluster in
// a temporary directory, listening on 127.0.0.1 on a free port (and a Unix
// socket in its directory), password (SCRAM) authentication for TCP. Run as
// the `postgres` user when the tests run as root (initdb refuses root). The
// cluster is stopped and removed with the object, and by a reaper process if
// the test process dies first (a crash, a kill, a static never destroyed).
#ifndef GRANTVAULT_TESTS_TESTING_POSTGRES_SERVER_H_
#define GRANTVAULT_TESTS_TESTING_POSTGRES_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grantvault::testing {

class PostgresServer {
 public:
  // FAILED_PRECONDITION when no PostgreSQL server binaries are installed
  // (scripts/install-deps.sh installs them).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;
  ~PostgresServer();

  // A libpq connection string for `database` over TCP, without the password.
  std::string ConnectionString(const std::string& database = "postgres") const;
  // The same, with the password in it.
  std::string ConnectionStringWithPassword(const std::string& database = "postgres") const;
  const std::string& user() const { return user_; }
  const std::string& password() const { return password_; }
  // A file holding the password alone (mode 0600), as an operator keeps it.
  const std::string& password_file() const { return password_file_; }
  int port() const { return port_; }

  // Creates an empty database (a fresh one per test keeps tests apart).
  absl::Status CreateDatabase(const std::string& name);

  // Stops the server (fast: open connections are ended) and starts it again
  // on the same port, for tests of a database that goes away.
  absl::Status Stop();
  absl::Status StartAgain();

  // The server's log so far, for a failing test's message.
  std::string Log() const;

 private:
  PostgresServer() = default;
  absl::Status RunAsServerUser(const std::vector<std::string>& argv, const std::string& what) const;
  // Starts the process that stops the server and removes root_ once this
  // process is gone (it waits for the end of a pipe only we hold).
  absl::Status StartReaper();
  absl::Status RunSql(const std::string& sql) const;

  std::string bin_;   // /usr/lib/postgresql/<version>/bin
  std::string root_;  // the temporary directory: data/, the socket, the log
  std::string user_ = "grantvault";
  std::string password_;
  std::string password_file_;
  int port_ = 0;
  bool as_postgres_user_ = false;
  bool running_ = false;
  pid_t reaper_ = -1;
  int reaper_pipe_ = -1;  // our end; closing it (exiting) wakes the reaper
};

// One server for the whole test process, started by the first caller (every
// caller gets that start's error if it failed) and stopped when the process
// ends. A test that stops it must start it again.
absl::StatusOr<PostgresServer*> SharedPostgresServer();

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_POSTGRES_SERVER_H_
