// Starting grantvaultd the way its systemd units do, without systemd as PID 1:
// under systemd-socket-activate (which binds the .socket files' ListenStream=
// paths, as systemd does) as root, dropping to the daemon's uid with setpriv
// right before exec, with NOTIFY_SOCKET and WATCHDOG_USEC. Shared by
// tests/integration/systemd_test.cc (the source tree's units, the built
// daemon) and install_test.cc (the installed units and daemon).
#ifndef GRANTVAULT_TESTS_TESTING_SOCKET_ACTIVATED_DAEMON_H_
#define GRANTVAULT_TESTS_TESTING_SOCKET_ACTIVATED_DAEMON_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/daemon_process.h"

namespace grantvault::testing {

class OAuthProvider;

// The path of a tool in /usr/bin, /bin, /usr/sbin or /sbin; "" if absent.
std::string FindTool(const std::string& name);

// A file's whole text ("" if it cannot be read).
std::string Slurp(const std::string& path);

// Key=value lines of a unit file (the last one wins; enough for these units).
std::map<std::string, std::string> UnitSettings(const std::string& text);

// One listening socket as a .socket file describes it.
struct SocketUnit {
  std::string fd_name;
  std::string listen_stream;  // as the unit says
  std::string path;           // where the test binds it
  std::string group;
  mode_t mode = 0;
};
// The socket `unit_file` describes, bound at `run_dir`/<ListenStream='s file name>.
SocketUnit ReadSocketUnit(const std::string& unit_file, const std::string& run_dir);

struct SocketActivation {
  std::string activate;  // systemd-socket-activate
  std::string setpriv;   // util-linux setpriv
  std::vector<SocketUnit> sockets;
  uid_t uid = 65534;  // User=, Group=
  gid_t gid = 65534;
  // SocketGroup= → gid (the test's ids need no /etc/group entry).
  std::function<gid_t(const std::string&)> group_id;
  absl::Duration watchdog = absl::Seconds(2);
  std::vector<std::string> daemon_argv;  // the daemon and its arguments
};

// Starts the daemon and waits for READY=1. systemd-socket-activate starts it at
// the first connection, as socket activation does: a thread gives the sockets
// their owner (uid), group and mode from the .socket files (SocketUser= etc.)
// and then knocks on the last socket.
absl::StatusOr<std::unique_ptr<DaemonProcess>> StartSocketActivated(const SocketActivation& how);

// `argv` as `uid` with primary group `gid` and supplementary `groups`
// (comma-separated gids, "" for none).
CommandResult RunAs(const std::string& setpriv, uid_t uid, gid_t gid, const std::string& groups,
                    std::vector<std::string> argv);

// A child that becomes the agent `uid` (primary group `uid`, supplementary
// `agents_gid`), connects to `agent_socket`, says Hello and resolves
// `connector` for `workspace`. "code=<Error.Code, 0 for a token>",
// "cannot connect", "hello refused", or why else it failed.
std::string ResolveAsAgent(const std::string& agent_socket, uid_t uid, gid_t agents_gid,
                           const std::string& workspace, const std::string& connector);

// Authorises `connector` (already registered) for `workspace` through
// admin.sock, playing the user at `provider`: returns the grant id.
absl::StatusOr<std::string> AuthorizeAtProvider(const std::string& admin_socket,
                                                OAuthProvider& provider,
                                                const std::string& workspace,
                                                const std::string& connector);

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_SOCKET_ACTIVATED_DAEMON_H_
