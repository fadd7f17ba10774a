// `cmake --install` of this build tree (cmake/Install.cmake): what lands
// where, the installed units verify with their installed paths, the installed
// sysusers.d and tmpfiles.d files apply to a root directory, and the installed
// daemon, started the way its installed units start it, lets an agent resolve
// with the installed connector catalog and no catalog setting.
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/oauth_provider.h"
#include "tests/testing/socket_activated_daemon.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

using testing::CommandResult;
using testing::FindTool;
using ::testing::HasSubstr;
using testing::RunCommand;
using testing::Slurp;
using ::testing::StartsWith;
using testing::TempDir;
using testing::UnitSettings;

constexpr char kWorkspace[] = "ws_installed";
constexpr uid_t kDaemonUid = 65534;
constexpr gid_t kDaemonGid = 65534;
constexpr gid_t kAgentsGid = 64101;
constexpr gid_t kAdminsGid = 64102;
constexpr uid_t kAgentUid = 64110;

const char* const kUnits[] = {"grantvaultd.service", "grantvault-agent.socket",
                              "grantvault-admin.socket"};

// Runs `cmake --install` of this build into `prefix` (under DESTDIR=`destdir`
// if not empty).
CommandResult Install(const std::string& prefix, const std::string& destdir) {
  std::vector<std::string> env;
  if (!destdir.empty()) env.push_back("DESTDIR=" + destdir);
  return RunCommand({GV_CMAKE, "--install", GV_BUILD_DIR, "--prefix", prefix}, env);
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_mode : 0;
}

// Field 2 (the id) of `name`'s line in a passwd- or group-format file; -1 if none.
long IdIn(const std::string& file, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(Slurp(file), '\n')) {
    std::vector<std::string> fields = absl::StrSplit(line, ':');
    if (fields.size() >= 3 && fields[0] == name) return std::stol(fields[2]);
  }
  return -1;
}

// DESTDIR=<root> --prefix /usr, as a package build does: the tree, the units'
// paths, and sysusers.d / tmpfiles.d applied to <root>.
TEST(InstallTest, PrefixUsrLaysOutTheTreeAndItsSystemFilesApplyToARoot) {
  TempDir dir;
  const std::string root = dir.Join("root");
  CommandResult installed = Install("/usr", root);
  ASSERT_EQ(installed.exit_code, 0) << installed.out << installed.err;

  for (const char* exe : {"/usr/sbin/grantvaultd", "/usr/bin/grantvault"}) {
    EXPECT_EQ(ModeOf(root + exe) & 0111, 0111u) << exe;
  }
  for (const char* file :
       {"/usr/share/grantvault/connectors.toml", "/usr/lib/systemd/system/grantvaultd.service",
        "/usr/lib/systemd/system/grantvault-agent.socket",
        "/usr/lib/systemd/system/grantvault-admin.socket", "/usr/lib/sysusers.d/grantvault.conf",
        "/usr/lib/tmpfiles.d/grantvault.conf", "/usr/share/doc/grantvault/README.md",
        "/usr/share/doc/grantvault/operations.md",
        "/usr/share/doc/grantvault/grantvaultd.toml.example"}) {
    EXPECT_TRUE(S_ISREG(ModeOf(root + file))) << file;
  }
  // Nothing in /etc or /var: those are the operator's and systemd's.
  EXPECT_EQ(ModeOf(root + "/etc"), 0u);
  EXPECT_EQ(ModeOf(root + "/var"), 0u);

  // The unit names the installed daemon and docs (under the root here).
  std::map<std::string, std::string> service =
      UnitSettings(Slurp(root + "/usr/lib/systemd/system/grantvaultd.service"));
  EXPECT_EQ(service["ExecStart"], "/usr/sbin/grantvaultd --state-dir /var/lib/grantvault");
  EXPECT_EQ(service["Documentation"], "file:///usr/share/doc/grantvault/operations.md");
  EXPECT_TRUE(S_ISREG(ModeOf(root + "/usr/share/doc/grantvault/operations.md")));

  const std::string sysusers = FindTool("systemd-sysusers");
  const std::string tmpfiles = FindTool("systemd-tmpfiles");
  if (sysusers.empty() || tmpfiles.empty()) GTEST_SKIP() << "no systemd-sysusers/-tmpfiles";
  if (::geteuid() != 0) GTEST_SKIP() << "systemd-tmpfiles --root needs root to chown";
  ASSERT_EQ(::mkdir((root + "/etc").c_str(), 0755), 0);
  CommandResult users =
      RunCommand({sysusers, "--root=" + root, root + "/usr/lib/sysusers.d/grantvault.conf"});
  ASSERT_EQ(users.exit_code, 0) << users.out << users.err;
  const long uid = IdIn(root + "/etc/passwd", "grantvault");
  const long gid = IdIn(root + "/etc/group", "grantvault");
  EXPECT_GT(uid, 0);
  EXPECT_GT(gid, 0);
  EXPECT_GT(IdIn(root + "/etc/group", "grantvault-agents"), 0);
  EXPECT_GT(IdIn(root + "/etc/group", "grantvault-admins"), 0);
  EXPECT_THAT(Slurp(root + "/etc/passwd"), HasSubstr(":/var/lib/grantvault:"));

  CommandResult dirs = RunCommand(
      {tmpfiles, "--root=" + root, "--create", root + "/usr/lib/tmpfiles.d/grantvault.conf"});
  ASSERT_EQ(dirs.exit_code, 0) << dirs.out << dirs.err;
  struct stat st;
  ASSERT_EQ(::stat((root + "/etc/grantvault").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(static_cast<long>(st.st_gid), gid);  // the root's grantvault, not the host's
}

class InstalledDaemonTest : public ::testing::Test {
 protected:
  static gid_t GroupId(const std::string& group) {
    return group == "grantvault-agents"   ? kAgentsGid
           : group == "grantvault-admins" ? kAdminsGid
                                          : 0;
  }
  std::string Unit(const std::string& name) const {
    return absl::StrCat(prefix_, "/lib/systemd/system/", name);
  }

  void TearDown() override {
    if (daemon_) daemon_->Stop(SIGKILL);
  }

  TempDir dir_;
  std::string prefix_ = dir_.Join("prefix");
  std::unique_ptr<testing::DaemonProcess> daemon_;
};

// --prefix <tmp>: the units verify as installed (ExecStart= naming
// <tmp>/sbin/grantvaultd), and that daemon, started by them with their
// ListenStream= paths moved into the temporary directory and no
// oauth.connector_catalog, reads the installed catalog: a connector of a type
// only the installed copy has registers, is authorised, and an agent of
// another uid resolves it.
TEST_F(InstalledDaemonTest, TheInstalledDaemonResolvesWithTheInstalledCatalog) {
  CommandResult installed = Install(prefix_, "");
  ASSERT_EQ(installed.exit_code, 0) << installed.out << installed.err;

  const std::string analyze = FindTool("systemd-analyze");
  if (!analyze.empty()) {
    std::vector<std::string> argv = {analyze, "verify"};
    for (const char* unit : kUnits) argv.push_back(Unit(unit));
    CommandResult verify = RunCommand(argv);
    EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
    for (absl::string_view line : absl::StrSplit(verify.out + verify.err, '\n')) {
      EXPECT_FALSE(absl::StrContains(line, "grantvault")) << line;
    }
  }

  testing::SocketActivation how;
  how.activate = FindTool("systemd-socket-activate");
  how.setpriv = FindTool("setpriv");
  if (how.activate.empty() || how.setpriv.empty()) GTEST_SKIP() << "no systemd-socket-activate";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the daemon and agents as other uids";
  auto provider = testing::OAuthProvider::Start({});
  if (!provider.ok() && absl::StrContains(provider.status().message(), "node")) {
    GTEST_SKIP() << "no oidc-provider: " << provider.status();
  }
  ASSERT_TRUE(provider.ok()) << provider.status();

  // The installed catalog gains a type the source tree's does not have.
  const std::string catalog = prefix_ + "/share/grantvault/connectors.toml";
  std::string oidc = Slurp(catalog);
  ASSERT_NE(oidc.find("[connectors.oidc]"), std::string::npos);
  oidc = oidc.substr(oidc.find("[connectors.oidc]"));
  std::ofstream(catalog, std::ios::app)
      << "\n"
      << absl::StrReplaceAll(oidc, {{"[connectors.oidc", "[connectors.installed_oidc"}});

  // /run and /var/lib, inside the temporary directory.
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  const std::string run = dir_.Join("run/grantvault");
  const std::string state = dir_.Join("var/lib/grantvault");
  for (const std::string& d : {dir_.Join("run"), run, dir_.Join("var"), dir_.Join("var/lib")}) {
    ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << d;
  }
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(::chown(state.c_str(), kDaemonUid, kDaemonGid), 0);
  for (const char* unit : {"grantvault-agent.socket", "grantvault-admin.socket"}) {
    testing::SocketUnit socket = testing::ReadSocketUnit(Unit(unit), run);
    EXPECT_THAT(socket.listen_stream, StartsWith("/run/grantvault/")) << unit;
    how.sockets.push_back(socket);
  }

  // The installed example configuration, with what this test needs added.
  const std::string ca_file = dir_.Join("provider-ca.pem");
  std::ofstream(ca_file) << Slurp((*provider)->ca_file());
  const std::string policy = dir_.Join("policy.toml");
  std::ofstream(policy) << "[[callers]]\nuid = " << kAgentUid
                        << "\nrole = \"agent\"\nworkspaces = [\"" << kWorkspace
                        << "\"]\n[workspaces." << kWorkspace
                        << "]\nallow_resolve_without_tool = true\n";
  const std::string config = dir_.Join("grantvaultd.toml");
  std::ofstream(config) << Slurp(prefix_ + "/share/doc/grantvault/grantvaultd.toml.example")
                        << "\n[admin]\nallowed_uids = [0]\n[policy]\nfile = \"" << policy
                        << "\"\n[oauth]\nca_file = \"" << ca_file
                        << "\"\nuse_system_trust_store = false\n";
  for (const std::string& f : {ca_file, policy, config}) ASSERT_EQ(::chmod(f.c_str(), 0644), 0);

  // ExecStart= as installed, with the state directory moved.
  std::vector<std::string> exec_start =
      absl::StrSplit(UnitSettings(Slurp(Unit("grantvaultd.service")))["ExecStart"], ' ');
  ASSERT_EQ(exec_start, (std::vector<std::string>{prefix_ + "/sbin/grantvaultd", "--state-dir",
                                                  "/var/lib/grantvault"}));
  how.daemon_argv = {exec_start[0], "--state-dir", state, "--config", config};
  how.uid = kDaemonUid;
  how.gid = kDaemonGid;
  how.group_id = GroupId;
  auto daemon = testing::StartSocketActivated(how);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  daemon_ = std::move(*daemon);
  const std::string admin_socket = how.sockets[1].path;

  const std::string secret_file = dir_.Join("client.secret");
  std::ofstream(secret_file) << (*provider)->clients()[0].client_secret;
  ASSERT_EQ(::chmod(secret_file.c_str(), 0600), 0);
  CommandResult reg =
      RunCommand({prefix_ + "/bin/grantvault", "--socket", admin_socket, "--timeout", "30",
                  "connectors", "register", "--id", "demo", "--type", "installed_oidc",
                  "--client-id", (*provider)->clients()[0].client_id, "--client-secret-file",
                  secret_file, "--issuer", (*provider)->issuer()});
  ASSERT_EQ(reg.exit_code, 0) << reg.out << reg.err << daemon_->Stderr();

  auto grant = testing::AuthorizeAtProvider(admin_socket, **provider, kWorkspace, "demo");
  ASSERT_TRUE(grant.ok()) << grant.status() << daemon_->Stderr();
  EXPECT_EQ(testing::ResolveAsAgent(how.sockets[0].path, kAgentUid, kAgentsGid, kWorkspace, "demo"),
            "code=0")
      << daemon_->Stderr();

  daemon_->Signal(SIGTERM);
  EXPECT_EQ(daemon_->Wait(absl::Seconds(20)), 0) << daemon_->Stderr();
}

}  // namespace
}  // namespace grantvault
