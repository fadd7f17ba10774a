#include "daemon/config.h"

#include <stdlib.h>

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::daemon {
namespace {

using ::testing::HasSubstr;

class ConfigTest : public ::testing::Test {
 protected:
  absl::StatusOr<DaemonConfig> Load(const std::string& text) {
    const std::string path = dir_.Join("grantvaultd.toml");
    std::ofstream(path, std::ios::trunc) << text;
    return LoadConfig(path, dir_.Join("state"));
  }
  testing::TempDir dir_;
};

TEST_F(ConfigTest, EachSocketHasItsOwnConnectionLimitsByDefault) {
  absl::StatusOr<DaemonConfig> c = Load("");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->agent_limits.max_connections, 1024u);
  EXPECT_EQ(c->agent_limits.max_connections_per_uid, 128u);
  EXPECT_EQ(c->agent_limits.idle_timeout, absl::Minutes(5));
  EXPECT_EQ(c->admin_limits.max_connections, 64u);
  EXPECT_EQ(c->admin_limits.max_connections_per_uid, 0u);
  EXPECT_EQ(c->admin_limits.idle_timeout, absl::ZeroDuration());
}

TEST_F(ConfigTest, PerSocketKeysAreRead) {
  absl::StatusOr<DaemonConfig> c = Load(
      "[limits]\nagent_max_connections = 300\nagent_max_connections_per_uid = 7\n"
      "agent_idle_timeout_ms = 1500\nadmin_max_connections = 9\n"
      "admin_max_connections_per_uid = 2\nadmin_idle_timeout_ms = 60000\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->agent_limits.max_connections, 300u);
  EXPECT_EQ(c->agent_limits.max_connections_per_uid, 7u);
  EXPECT_EQ(c->agent_limits.idle_timeout, absl::Milliseconds(1500));
  EXPECT_EQ(c->admin_limits.max_connections, 9u);
  EXPECT_EQ(c->admin_limits.max_connections_per_uid, 2u);
  EXPECT_EQ(c->admin_limits.idle_timeout, absl::Minutes(1));
}

TEST_F(ConfigTest, OlderKeysAreTheDefaultsThePerSocketKeysOverride) {
  absl::StatusOr<DaemonConfig> c = Load("[limits]\nmax_connections = 600\nidle_timeout_ms = 0\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->agent_limits.max_connections, 600u);
  EXPECT_EQ(c->admin_limits.max_connections, 64u);  // never shared with agents again
  EXPECT_EQ(c->agent_limits.idle_timeout, absl::ZeroDuration());
  EXPECT_EQ(c->admin_limits.idle_timeout, absl::ZeroDuration());

  c = Load(
      "[limits]\nmax_connections = 600\nagent_max_connections = 50\nidle_timeout_ms = 1000\n"
      "agent_idle_timeout_ms = 2000\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->agent_limits.max_connections, 50u);
  EXPECT_EQ(c->agent_limits.idle_timeout, absl::Seconds(2));
  EXPECT_EQ(c->admin_limits.idle_timeout, absl::Seconds(1));
}

TEST_F(ConfigTest, OutOfRangeLimitsAreErrorsNamingTheKey) {
  for (const std::string& bad :
       {std::string("agent_max_connections = 0"), std::string("admin_max_connections = 0"),
        std::string("agent_max_connections_per_uid = -1"),
        std::string("agent_idle_timeout_ms = -5"), std::string("agent_max_connections = \"x\"")}) {
    absl::StatusOr<DaemonConfig> c = Load("[limits]\n" + bad + "\n");
    EXPECT_TRUE(absl::IsInvalidArgument(c.status())) << bad << ": " << c.status();
    EXPECT_THAT(c.status().message(), HasSubstr(bad.substr(0, bad.find(' ')))) << bad;
  }
}

TEST_F(ConfigTest, APostgresStoreIsAConnectionStringWithoutAPassword) {
  absl::StatusOr<DaemonConfig> c = Load(
      "[store]\npostgres = \"host=db.example port=5432 dbname=grantvault user=gv "
      "sslmode=verify-full\"\npassword_file = \"/etc/grantvault/db.password\"\n"
      "lock_connections = 12\nconnect_timeout_ms = 2500\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->uses_postgres());
  EXPECT_EQ(c->postgres_password_file, "/etc/grantvault/db.password");
  EXPECT_EQ(c->postgres_lock_connections, 12u);
  EXPECT_EQ(c->postgres_connect_timeout, absl::Milliseconds(2500));
  EXPECT_FALSE(Load("").value().uses_postgres());

  // A password in the string is refused, and never quoted back.
  absl::StatusOr<DaemonConfig> leaky =
      Load("[store]\npostgres = \"postgresql://gv:hunter2-secret@db.example/grantvault\"\n");
  ASSERT_FALSE(leaky.ok());
  EXPECT_THAT(std::string(leaky.status().message()), HasSubstr("holds a password"));
  EXPECT_THAT(std::string(leaky.status().message()), ::testing::Not(HasSubstr("hunter2")));
  absl::StatusOr<DaemonConfig> garbled = Load("[store]\npostgres = \"host = 'unterminated\"\n");
  ASSERT_FALSE(garbled.ok());
  EXPECT_THAT(std::string(garbled.status().message()), HasSubstr("not a libpq connection string"));
  // SQLite's file and a PostgreSQL server exclude each other; a password file needs a server.
  EXPECT_FALSE(Load("[store]\npostgres = \"host=/run/postgresql\"\ndatabase = \"/x.db\"\n").ok());
  EXPECT_FALSE(Load("[store]\npassword_file = \"/x\"\n").ok());
}

TEST_F(ConfigTest, APostgresPasswordFileWithoutASlashIsASystemdCredential) {
  ::setenv("CREDENTIALS_DIRECTORY", "/run/credentials/grantvaultd.service", 1);
  absl::StatusOr<DaemonConfig> c =
      Load("[store]\npostgres = \"host=/run/postgresql\"\npassword_file = \"db-password\"\n");
  ::unsetenv("CREDENTIALS_DIRECTORY");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->postgres_password_file, "/run/credentials/grantvaultd.service/db-password");
  absl::StatusOr<DaemonConfig> without =
      Load("[store]\npostgres = \"host=/run/postgresql\"\npassword_file = \"db-password\"\n");
  ASSERT_FALSE(without.ok());
  EXPECT_THAT(std::string(without.status().message()), HasSubstr("CREDENTIALS_DIRECTORY"));
}

}  // namespace
}  // namespace grantvault::daemon
