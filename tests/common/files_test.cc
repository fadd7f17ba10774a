#include "common/files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::TempDir;

void WriteRaw(const std::string& path, const std::string& contents, mode_t mode) {
  std::ofstream(path) << contents;
  ::chmod(path.c_str(), mode);
}

TEST(FilesTest, ReadsSecretAndDropsTrailingNewline) {
  TempDir dir;
  WriteRaw(dir.Join("pin"), "1234abcd\n", 0600);
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("pin"));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->view(), "1234abcd");
}

TEST(FilesTest, MissingSecretFileIsNamed) {
  TempDir dir;
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("nope.pin"));
  EXPECT_TRUE(absl::IsNotFound(pin.status()));
  EXPECT_THAT(pin.status().message(), HasSubstr("nope.pin"));
}

TEST(FilesTest, WorldReadableSecretFileIsRefused) {
  TempDir dir;
  WriteRaw(dir.Join("pin"), "1234", 0644);
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("pin"));
  EXPECT_TRUE(absl::IsPermissionDenied(pin.status()));
  EXPECT_THAT(pin.status().message(), HasSubstr("chmod 600"));
}

TEST(FilesTest, GroupAccessibleSecretFileIsRefusedNamingItsMode) {
  TempDir dir;
  for (mode_t mode : {0640u, 0620u, 0610u, 0660u}) {
    WriteRaw(dir.Join("pin"), "s3cr3t-pin", mode);
    absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("pin"));
    EXPECT_TRUE(absl::IsPermissionDenied(pin.status())) << std::oct << mode;
    EXPECT_THAT(pin.status().message(), HasSubstr(dir.Join("pin")));
    EXPECT_THAT(pin.status().message(), HasSubstr(absl::StrFormat("mode %04o", mode)));
    EXPECT_THAT(pin.status().message(), HasSubstr("chmod 600"));
    EXPECT_THAT(pin.status().message(), Not(HasSubstr("s3cr3t")));
  }
  WriteRaw(dir.Join("pin"), "s3cr3t-pin", 0400);
  EXPECT_TRUE(ReadSecretFile(dir.Join("pin")).ok());
}

TEST(FilesTest, SecretFileOwnedByAnotherUserIsRefused) {
  TempDir dir;
  WriteRaw(dir.Join("pin"), "s3cr3t-pin", 0600);
  const uid_t other = ::geteuid() == 0 ? 65534 : ::geteuid() + 1;
  if (::chown(dir.Join("pin").c_str(), other, static_cast<gid_t>(-1)) != 0) {
    GTEST_SKIP() << "only root can give a file away";
  }
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("pin"));
  EXPECT_TRUE(absl::IsPermissionDenied(pin.status())) << pin.status();
  EXPECT_THAT(pin.status().message(), HasSubstr(dir.Join("pin")));
  EXPECT_THAT(pin.status().message(), HasSubstr(absl::StrCat("owned by uid ", other)));
  EXPECT_THAT(pin.status().message(), HasSubstr("mode 0600"));
  EXPECT_THAT(pin.status().message(), Not(HasSubstr("s3cr3t")));
}

TEST(FilesTest, UnreadableSecretFileIsNamed) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads any file; covered by the mode check";
  TempDir dir;
  WriteRaw(dir.Join("pin"), "1234", 0000);
  absl::StatusOr<SecretBytes> pin = ReadSecretFile(dir.Join("pin"));
  EXPECT_FALSE(pin.ok());
  EXPECT_THAT(pin.status().message(), HasSubstr(dir.Join("pin")));
}

TEST(FilesTest, DirectoryOrEmptyOrHugeSecretFileIsRefused) {
  TempDir dir;
  EXPECT_FALSE(ReadSecretFile(dir.path()).ok());
  WriteRaw(dir.Join("empty"), "\n", 0600);
  EXPECT_FALSE(ReadSecretFile(dir.Join("empty")).ok());
  WriteRaw(dir.Join("huge"), std::string(5000, 'x'), 0600);
  EXPECT_FALSE(ReadSecretFile(dir.Join("huge")).ok());
}

TEST(FilesTest, SymlinkedSecretFileIsRefused) {
  TempDir dir;
  WriteRaw(dir.Join("real"), "1234", 0600);
  ASSERT_EQ(::symlink(dir.Join("real").c_str(), dir.Join("link").c_str()), 0);
  EXPECT_FALSE(ReadSecretFile(dir.Join("link")).ok());
}

TEST(FilesTest, RemoveSecretFileRemovesAFileAndRefusesASymlink) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("so.pin"), "s3cr3t-pin", 0600).ok());
  // A second name for the same inode shows what is left of its bytes.
  ASSERT_EQ(::link(dir.Join("so.pin").c_str(), dir.Join("witness").c_str()), 0);
  ASSERT_TRUE(RemoveSecretFile(dir.Join("so.pin")).ok());
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("witness")), std::string(10, '\0'));
  EXPECT_NE(::access(dir.Join("so.pin").c_str(), F_OK), 0);
  EXPECT_TRUE(RemoveSecretFile(dir.Join("so.pin")).ok());  // already gone

  WriteRaw(dir.Join("real"), "keep me", 0600);
  ASSERT_EQ(::symlink(dir.Join("real").c_str(), dir.Join("link").c_str()), 0);
  EXPECT_FALSE(RemoveSecretFile(dir.Join("link")).ok());
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("real")), "keep me");
}

TEST(FilesTest, WriteFileAtomicallySetsModeAndReplaces) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("f"), "one", 0600).ok());
  ASSERT_TRUE(WriteFileAtomically(dir.Join("f"), "two", 0600).ok());
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("f")), "two");
  struct stat st;
  ASSERT_EQ(::stat(dir.Join("f").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(FilesTest, PrivateDirectoryRefusesSymlinks) {
  TempDir dir;
  ASSERT_TRUE(EnsurePrivateDirectory(dir.Join("d"), 0700).ok());
  ASSERT_EQ(::symlink(dir.Join("d").c_str(), dir.Join("l").c_str()), 0);
  absl::Status s = EnsurePrivateDirectory(dir.Join("l"), 0700);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("symbolic link"));
}

}  // namespace
}  // namespace grantvault
