#include "daemon/vault.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::daemon {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using testing::TempDir;

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// The SO PIN initialises the token and is never needed again: it does not
// stay in the state directory, and the state still opens with the user PIN.
TEST(EmbeddedStateTest, TheSecurityOfficerPinIsRemovedOnceTheTokenIsInitialised) {
  TempDir dir;
  const StateLayout layout = LayoutFor(dir.Join("state"));
  std::vector<std::string> created, removed;
  {
    absl::StatusOr<Vault> vault = InitEmbeddedState(layout.dir, &created, {}, &removed);
    ASSERT_TRUE(vault.ok()) << vault.status();
  }
  EXPECT_THAT(created, Contains(HasSubstr("security-officer PIN")));
  EXPECT_THAT(removed, Contains(HasSubstr(layout.so_pin_file)));
  EXPECT_FALSE(Exists(layout.so_pin_file));
  EXPECT_EQ(ModeOf(layout.user_pin_file), 0600u);

  created.clear();
  removed.clear();
  absl::StatusOr<Vault> again = InitEmbeddedState(layout.dir, &created, {}, &removed);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(created, IsEmpty());
  EXPECT_THAT(removed, IsEmpty());
  EXPECT_FALSE(Exists(layout.so_pin_file));
}

TEST(EmbeddedStateTest, AnOperatorMayKeepTheSecurityOfficerPin) {
  TempDir dir;
  const StateLayout layout = LayoutFor(dir.Join("state"));
  EmbeddedStateOptions keep;
  keep.keep_so_pin = true;
  std::vector<std::string> removed;
  {
    absl::StatusOr<Vault> vault = InitEmbeddedState(layout.dir, nullptr, keep, &removed);
    ASSERT_TRUE(vault.ok()) << vault.status();
  }
  EXPECT_THAT(removed, IsEmpty());
  ASSERT_TRUE(Exists(layout.so_pin_file));
  EXPECT_EQ(ModeOf(layout.so_pin_file), 0600u);
  // Left in the state directory, it is removed at the next start that does
  // not ask to keep it (as one left by an older version or a crash is).
  absl::StatusOr<Vault> vault = InitEmbeddedState(layout.dir, nullptr, {}, &removed);
  ASSERT_TRUE(vault.ok()) << vault.status();
  EXPECT_THAT(removed, Contains(HasSubstr(layout.so_pin_file)));
  EXPECT_FALSE(Exists(layout.so_pin_file));
}

// The user PIN file is refused when its group may read it, naming the file
// and the mode but never the PIN.
TEST(EmbeddedStateTest, AUserPinFileOpenToItsGroupIsRefused) {
  TempDir dir;
  const StateLayout layout = LayoutFor(dir.Join("state"));
  {
    absl::StatusOr<Vault> vault = InitEmbeddedState(layout.dir);
    ASSERT_TRUE(vault.ok()) << vault.status();
  }
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(layout.user_pin_file);
  ASSERT_TRUE(pin.ok()) << pin.status();
  const std::string pin_text(pin->view());
  ASSERT_EQ(::chmod(layout.user_pin_file.c_str(), 0640), 0);
  absl::StatusOr<Vault> refused = OpenEmbeddedState(layout.dir);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsPermissionDenied(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr(layout.user_pin_file));
  EXPECT_THAT(refused.status().message(), HasSubstr("mode 0640"));
  EXPECT_THAT(refused.status().message(), Not(HasSubstr(pin_text)));
  ASSERT_EQ(::chmod(layout.user_pin_file.c_str(), 0600), 0);
  EXPECT_TRUE(OpenEmbeddedState(layout.dir).ok());
}

}  // namespace
}  // namespace grantvault::daemon
