#include "daemon/config.h"

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

}  // namespace
}  // namespace grantvault::daemon
