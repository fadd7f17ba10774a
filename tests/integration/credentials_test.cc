// An external token's PIN as a systemd credential (LoadCredential= /
// LoadCredentialEncrypted=hsm-pin:...): systemd hands the daemon
// $CREDENTIALS_DIRECTORY, a 0700 directory holding the file hsm-pin (0400,
// the service's user), and the daemon reads it without hsm.pin_file naming it.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/daemon_process.h"
#include "tests/testing/socket_activated_daemon.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

using testing::CommandResult;
using testing::DaemonProcess;
using ::testing::HasSubstr;
using testing::RunCommand;
using testing::TempDir;

class DaemonCredentialsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto token = testing::SoftHsmToken::Create();
    ASSERT_TRUE(token.ok()) << token.status();
    token_ = std::move(*token);
    token_->Close();  // the daemon logs in on its own
    credentials_ = dir_.Join("credentials");
    ASSERT_EQ(::mkdir(credentials_.c_str(), 0700), 0);
    state_ = dir_.Join("state");
    config_ = dir_.Join("grantvaultd.toml");
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop();
    ::unsetenv("CREDENTIALS_DIRECTORY");
  }

  // The PIN as systemd writes a credential: read-only for its owner.
  void WriteCredential(const std::string& name) {
    const std::string path = absl::StrCat(credentials_, "/", name);
    std::ofstream(path) << testing::Slurp(token_->options().pin_file);
    ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  }

  // The daemon with `config` and $CREDENTIALS_DIRECTORY as systemd sets it.
  absl::Status StartDaemon(const std::string& config, bool with_credentials = true) {
    std::ofstream(config_) << config;
    if (with_credentials) ::setenv("CREDENTIALS_DIRECTORY", credentials_.c_str(), 1);
    daemon_ = std::make_unique<DaemonProcess>(std::vector<std::string>{
        GV_GRANTVAULTD, "--allow-root", "--state-dir", state_, "--config", config_});
    absl::Status started = daemon_->Start();
    ::unsetenv("CREDENTIALS_DIRECTORY");
    return started;
  }

  std::string Status() {
    CommandResult r = RunCommand({GV_CLI, "--socket", state_ + "/run/admin.sock", "status"});
    return r.out + r.err;
  }

  TempDir dir_;
  std::unique_ptr<testing::SoftHsmToken> token_;
  std::string credentials_, state_, config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(DaemonCredentialsTest, AnExternalTokenWithoutPinFileReadsTheCredentialHsmPin) {
  ASSERT_NO_FATAL_FAILURE(WriteCredential("hsm-pin"));
  absl::Status started =
      StartDaemon(absl::StrCat("[hsm]\ntoken_label = \"", testing::kTestTokenLabel, "\"\n"));
  ASSERT_TRUE(started.ok()) << started << daemon_->Stderr();
  EXPECT_THAT(Status(), HasSubstr(testing::kTestTokenLabel));
}

TEST_F(DaemonCredentialsTest, ABarePinFileNameIsACredentialName) {
  ASSERT_NO_FATAL_FAILURE(WriteCredential("token-pin"));
  absl::Status started = StartDaemon(absl::StrCat(
      "[hsm]\ntoken_label = \"", testing::kTestTokenLabel, "\"\npin_file = \"token-pin\"\n"));
  ASSERT_TRUE(started.ok()) << started << daemon_->Stderr();
  EXPECT_THAT(Status(), HasSubstr(testing::kTestTokenLabel));
}

TEST_F(DaemonCredentialsTest, WithoutCredentialsDirectoryTheStartSaysWhatIsMissing) {
  absl::Status started =
      StartDaemon(absl::StrCat("[hsm]\ntoken_label = \"", testing::kTestTokenLabel, "\"\n"),
                  /*with_credentials=*/false);
  ASSERT_FALSE(started.ok());
  EXPECT_THAT(daemon_->Stderr(), HasSubstr("LoadCredentialEncrypted=hsm-pin:"));
  daemon_.reset();
}

TEST_F(DaemonCredentialsTest, ACredentialOthersCouldReadIsRefused) {
  ASSERT_NO_FATAL_FAILURE(WriteCredential("hsm-pin"));
  ASSERT_EQ(::chmod((credentials_ + "/hsm-pin").c_str(), 0644), 0);
  absl::Status started =
      StartDaemon(absl::StrCat("[hsm]\ntoken_label = \"", testing::kTestTokenLabel, "\"\n"));
  ASSERT_FALSE(started.ok());
  EXPECT_THAT(daemon_->Stderr(), HasSubstr(credentials_ + "/hsm-pin"));
  daemon_.reset();
}

}  // namespace
}  // namespace grantvault
