#include "policy/policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace grantvault::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ReadFileOrDie;
using testing::TempDir;

// The first ```<lang> block of docs/policy.md, so the documented example is
// the one tested.
std::string DocBlock(const std::string& lang) {
  const std::string doc = ReadFileOrDie(std::string(GV_SOURCE_DIR) + "/docs/policy.md");
  const std::string fence = "```" + lang + "\n";
  const std::size_t begin = doc.find(fence);
  EXPECT_NE(begin, std::string::npos) << lang;
  const std::size_t body = begin + fence.size();
  return doc.substr(body, doc.find("```", body) - body);
}

void Write(const std::string& path, const std::string& contents) {
  std::ofstream(path) << contents;
}

// The documented example, with its manifest, in a temporary directory.
class ExamplePolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir(dir_.Join("manifests").c_str(), 0700);
    Write(dir_.Join("manifests/support-bot.json"), DocBlock("json"));
    Write(dir_.Join("policy.toml"), DocBlock("toml"));
    absl::StatusOr<Policy> loaded = Policy::Load(dir_.Join("policy.toml"));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    policy_.emplace(*std::move(loaded));
    absl::StatusOr<CallerRule> rule = policy_->MatchCaller(AgentHost());
    ASSERT_TRUE(rule.ok()) << rule.status();
    agent_ = *rule;
  }

  static CallerIdentity AgentHost() {
    CallerIdentity id;
    id.pid = 100;
    id.uid = 990;
    id.gid = 990;
    id.user_name = "agent-host";
    id.group_name = "agent-host";
    id.exe_path = "/usr/lib/agenthub/agent-host";
    return id;
  }

  absl::Status Resolve(const std::string& ws, const std::string& connector,
                       std::optional<std::string_view> tool, std::vector<std::string> requested,
                       std::vector<std::string> grant) {
    return policy_->CheckResolve(agent_, ws, connector, tool, requested, grant);
  }

  TempDir dir_;
  std::optional<Policy> policy_;
  CallerRule agent_;
};

void ExpectDenied(const absl::Status& status, const std::string& reason) {
  EXPECT_TRUE(absl::IsPermissionDenied(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr(reason));
}

TEST_F(ExamplePolicyTest, ParsesTheDocumentedExample) {
  ASSERT_EQ(policy_->callers().size(), 3u);
  EXPECT_EQ(policy_->callers()[0].role, Role::kAgent);
  EXPECT_EQ(policy_->callers()[1].role, Role::kAdmin);
  EXPECT_THAT(policy_->callers()[1].workspaces, ElementsAre("*"));
  EXPECT_THAT(policy_->callers()[0].where, HasSubstr("policy.toml:4"));
  const WorkspacePolicy& acme = policy_->workspaces().at("acme");
  EXPECT_FALSE(acme.allow_resolve_without_tool);
  ASSERT_EQ(acme.tools.size(), 5u);  // 3 inline + 2 from the manifest
  const ToolDecl* search = acme.FindTool("search_drive");
  ASSERT_NE(search, nullptr);
  EXPECT_EQ(search->connector, "google_workspace");
  EXPECT_THAT(search->scopes, ElementsAre("drive.readonly"));
  EXPECT_THAT(search->where, HasSubstr("support-bot.json"));
  EXPECT_TRUE(policy_->workspaces().at("sandbox").allow_resolve_without_tool);
  EXPECT_TRUE(policy_->RequiredAttestation().resolve_exe_path);
  EXPECT_FALSE(policy_->RequiredAttestation().hash_exe);
}

TEST_F(ExamplePolicyTest, MatchesCallersInOrder) {
  EXPECT_EQ(agent_.role, Role::kAgent);
  EXPECT_THAT(agent_.where, HasSubstr("policy.toml:4"));

  CallerIdentity wrong_exe = AgentHost();
  wrong_exe.exe_path = "/tmp/agent-host";
  ExpectDenied(policy_->MatchCaller(wrong_exe).status(), "uid 990 is not in the policy");
  CallerIdentity no_exe = AgentHost();
  no_exe.exe_path.reset();  // attested without the path: fails closed
  ExpectDenied(policy_->MatchCaller(no_exe).status(), "uid 990 is not in the policy");

  CallerIdentity admin_by_group;
  admin_by_group.uid = 1001;
  admin_by_group.supplementary_group_names = {"users", "grantvault-admins"};
  absl::StatusOr<CallerRule> rule = policy_->MatchCaller(admin_by_group);
  ASSERT_TRUE(rule.ok()) << rule.status();
  EXPECT_EQ(rule->role, Role::kAdmin);
  EXPECT_TRUE(rule->workspaces.empty());

  CallerIdentity stranger;
  stranger.uid = 999;
  stranger.user_name = "mallory";
  ExpectDenied(policy_->MatchCaller(stranger).status(), "uid 999 is not in the policy");
}

TEST_F(ExamplePolicyTest, AllowsADeclaredToolWithinItsAndTheGrantsScopes) {
  EXPECT_TRUE(Resolve("acme", "google_workspace", "send_email", {"gmail.send"},
                      {"gmail.send", "gmail.readonly"})
                  .ok());
  EXPECT_TRUE(Resolve("acme", "google_workspace", "reply_email", {}, {"gmail.send"}).ok());
}

TEST_F(ExamplePolicyTest, RefusesAnotherWorkspace) {
  ExpectDenied(Resolve("sandbox", "google_workspace", "send_email", {"gmail.send"}, {"gmail.send"}),
               "workspace 'sandbox' is not allowed for the caller");
}

TEST_F(ExamplePolicyTest, RefusesAnUndeclaredTool) {
  ExpectDenied(Resolve("acme", "google_workspace", "delete_everything", {}, {"gmail.send"}),
               "tool 'delete_everything' is not declared in workspace 'acme'");
}

TEST_F(ExamplePolicyTest, RefusesAToolDeclaredForAnotherConnector) {
  ExpectDenied(Resolve("acme", "google_workspace", "open_issue", {}, {"repo"}),
               "tool 'open_issue' is declared for connector 'github', not 'google_workspace'");
}

TEST_F(ExamplePolicyTest, RefusesAScopeBeyondTheTools) {
  ExpectDenied(Resolve("acme", "google_workspace", "send_email", {"gmail.send", "gmail.readonly"},
                       {"gmail.send", "gmail.readonly"}),
               "scope 'gmail.readonly' is beyond tool 'send_email' scopes");
}

TEST_F(ExamplePolicyTest, RefusesAScopeBeyondTheGrants) {
  ExpectDenied(
      Resolve("acme", "google_workspace", "reply_email", {"gmail.readonly"}, {"gmail.send"}),
      "scope 'gmail.readonly' is beyond the grant's scopes");
}

TEST_F(ExamplePolicyTest, ResolveWithoutToolOnlyWhereAllowed) {
  ExpectDenied(Resolve("acme", "google_workspace", std::nullopt, {}, {"gmail.send"}),
               "workspace 'acme' does not allow resolve without a tool");

  const CallerRule& root = policy_->callers()[1];  // uid 0, workspaces ["*"]
  EXPECT_TRUE(
      policy_->CheckResolve(root, "sandbox", "slack", std::nullopt, {"chat:write"}, {"chat:write"})
          .ok());
  ExpectDenied(
      policy_->CheckResolve(root, "sandbox", "slack", std::nullopt, {"admin"}, {"chat:write"}),
      "scope 'admin' is beyond the grant's scopes");
  ExpectDenied(policy_->CheckResolve(root, "elsewhere", "slack", std::nullopt, {}, {}),
               "workspace 'elsewhere' is not in the policy");
}

TEST_F(ExamplePolicyTest, SuggestsTheUnionOfTheWorkspacesToolScopes) {
  absl::StatusOr<std::vector<std::string>> scopes =
      policy_->SuggestScopes("acme", "google_workspace");
  ASSERT_TRUE(scopes.ok()) << scopes.status();
  EXPECT_THAT(*scopes, ElementsAre("drive.readonly", "gmail.readonly", "gmail.send"));
  scopes = policy_->SuggestScopes("acme", "slack");
  ASSERT_TRUE(scopes.ok()) << scopes.status();
  EXPECT_THAT(*scopes, ElementsAre("chat:write"));
  EXPECT_TRUE(absl::IsNotFound(policy_->SuggestScopes("acme", "notion").status()));
  EXPECT_TRUE(absl::IsNotFound(policy_->SuggestScopes("nope", "github").status()));
}

TEST(PolicyTest, MatchesTheRealTestProcessByUid) {
  const std::string text = absl::StrCat("[[callers]]\nuid = ", ::getuid(),
                                        "\nrole = \"agent\"\nworkspaces = [\"w\"]\n"
                                        "[workspaces.w]\nallow_resolve_without_tool = true\n");
  absl::StatusOr<Policy> policy = Policy::Parse(text, "p.toml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  absl::StatusOr<CallerIdentity> self =
      AttestCaller(::getpid(), ::getuid(), ::getgid(), policy->RequiredAttestation());
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_TRUE(policy->MatchCaller(*self).ok());
}

// Each invalid policy is refused with file:line and what is wrong.
TEST(PolicyTest, RefusesInvalidPolicies) {
  struct Case {
    std::string text;
    std::string expected;
  };
  const std::string ws = "[workspaces.w]\n";
  const std::vector<Case> cases = {
      {"[[callers]]\nuid = 1\nrol = \"agent\"\n", "p.toml:3: unknown key 'rol'"},
      {"colors = 1\n", "p.toml:1: unknown key 'colors'"},
      {ws +
           "[[workspaces.w.tools]]\nname = \"a\"\nconnector = \"c\"\nscopes = [\"s\"]\nscope = 1\n",
       "p.toml:6: unknown key 'scope'"},
      {ws + "allow_tools = true\n", "p.toml:2: unknown key 'allow_tools'"},
      {"[[callers]]\nuid = 1\nrole = \"root\"\nworkspaces = [\"*\"]\n", "p.toml:3: unknown role"},
      {"[[callers]]\nuid = 1\nworkspaces = [\"*\"]\n", "has no role"},
      {"[[callers]]\nrole = \"agent\"\nworkspaces = [\"*\"]\n", "matches nothing"},
      {"[[callers]]\nuid = 1\nrole = \"agent\"\n", "must list its workspaces"},
      {"[[callers]]\nuid = 1\nrole = \"agent\"\nworkspaces = [\"x\"]\n",
       "workspace 'x' is not declared"},
      {"[[callers]]\nuid = -1\nrole = \"agent\"\nworkspaces = [\"*\"]\n", "p.toml:2: uid must be"},
      {"[[callers]]\nuid = \"1\"\nrole = \"agent\"\nworkspaces = [\"*\"]\n", "uid must be"},
      {"[[callers]]\nexe_sha256 = \"ABC\"\nrole = \"agent\"\nworkspaces = [\"*\"]\n",
       "exe_sha256 must be 64 lowercase hex"},
      {"[[callers]]\nexe = \"bin/x\"\nrole = \"agent\"\nworkspaces = [\"*\"]\n",
       "exe must be an absolute path"},
      {"[[callers]]\nuid = 1\nrole = \"agent\"\nworkspaces = [\"*\", \"w\"]\n" + ws,
       "must be the only entry"},
      {ws + "[[workspaces.w.tools]]\nname = \"a\"\nconnector = \"c\"\nscopes = []\n",
       "p.toml:2: scopes must not be empty"},
      {ws + "[[workspaces.w.tools]]\nname = \"a\"\nconnector = \"c\"\n", "tool has no scopes"},
      {ws + "[[workspaces.w.tools]]\nname = \"a\"\nconnector = \"c\"\nscopes = [\"s\"]\n"
            "[[workspaces.w.tools]]\nname = \"a\"\nconnector = \"d\"\nscopes = [\"t\"]\n",
       "p.toml:6: duplicate tool 'a' in workspace 'w' (first declared at p.toml:2)"},
      {ws + "allow_resolve_without_tool = \"yes\"\n", "must be true or false"},
      {"[[callers]]\nuid = 1\nrole = \"agent\"\nworkspaces = [\"w\"\n", "p.toml:"},
      {"[workspaces.w]\nmanifests = [\"missing.json\"]\n", "cannot read"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Policy> policy = Policy::Parse(c.text, "p.toml");
    EXPECT_TRUE(absl::IsInvalidArgument(policy.status())) << c.text << "\n" << policy.status();
    EXPECT_THAT(policy.status().message(), HasSubstr(c.expected)) << c.text;
  }
}

TEST(PolicyTest, ImportsJsonManifests) {
  TempDir dir;
  Write(dir.Join("agent.json"),
        R"({"name": "triage-bot", "tools": [
             {"name": "read_issue", "connector": "github", "scopes": ["repo", "repo"],
              "description": "ignored"},
             {"name": "label_issue", "connector": "github", "scopes": ["repo", "write:discussion"]}
           ]})");
  Write(dir.Join("policy.toml"),
        "[workspaces.w]\nmanifests = [\"agent.json\"]\n"
        "[[workspaces.w.tools]]\nname = \"post\"\nconnector = \"slack\"\nscopes = "
        "[\"chat:write\"]\n");
  absl::StatusOr<Policy> policy = Policy::Load(dir.Join("policy.toml"));
  ASSERT_TRUE(policy.ok()) << policy.status();
  const WorkspacePolicy& w = policy->workspaces().at("w");
  ASSERT_EQ(w.tools.size(), 3u);
  ASSERT_NE(w.FindTool("read_issue"), nullptr);
  EXPECT_THAT(w.FindTool("read_issue")->scopes, ElementsAre("repo"));
  EXPECT_THAT(*policy->SuggestScopes("w", "github"), ElementsAre("repo", "write:discussion"));

  // A manifest tool clashing with an inline one, and malformed manifests.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"tools": [{"name": "post", "connector": "slack", "scopes": ["x"]}]})",
       "duplicate tool 'post'"},
      {R"({"tools": [{"name": "a", "connector": "c", "scopes": []}]})", "scopes must not be empty"},
      {R"({"tools": [{"name": "a", "connector": "c", "scopes": [1]}]})", "array of strings"},
      {R"({"tools": [{"name": "", "connector": "c", "scopes": ["s"]}]})", "\"name\" must be"},
      {R"({"tools": {}})", "\"tools\" array"},
      {R"({"tools": [)", "not valid JSON"},
  };
  for (const auto& [json, expected] : bad) {
    Write(dir.Join("bad.json"), json);
    Write(dir.Join("bad.toml"),
          "[workspaces.w]\nmanifests = [\"bad.json\"]\n"
          "[[workspaces.w.tools]]\nname = \"post\"\nconnector = \"slack\"\nscopes = [\"c\"]\n");
    absl::StatusOr<Policy> refused = Policy::Load(dir.Join("bad.toml"));
    EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << json;
    EXPECT_THAT(refused.status().message(), HasSubstr(expected)) << json;
    EXPECT_THAT(refused.status().message(), HasSubstr("bad.toml:2")) << json;
  }
}

// A tool's "http" entries bound the calls it may make through the proxy.
TEST(PolicyTest, ToolsDeclareTheCallsTheyMayMakeByMethodAndPathPrefix) {
  TempDir dir;
  Write(dir.Join("agent.json"),
        R"({"tools": [{"name": "read_mail", "connector": "google", "scopes": ["gmail.readonly"],
                       "http": ["GET /gmail/v1/users/me/messages/", "* /gmail/v1/users/me/labels"]}]})");
  Write(dir.Join("policy.toml"),
        "[workspaces.w]\nmanifests = [\"agent.json\"]\n"
        "[[workspaces.w.tools]]\nname = \"send_email\"\nconnector = \"google\"\n"
        "scopes = [\"gmail.send\"]\nhttp = [\"POST /gmail/v1/users/me/messages/send\"]\n"
        "[[workspaces.w.tools]]\nname = \"anything\"\nconnector = \"google\"\n"
        "scopes = [\"gmail.send\"]\n");
  absl::StatusOr<Policy> policy = Policy::Load(dir.Join("policy.toml"));
  ASSERT_TRUE(policy.ok()) << policy.status();

  const ToolDecl* send = policy->FindTool("w", "send_email");
  ASSERT_NE(send, nullptr);
  ASSERT_EQ(send->http.size(), 1u);
  EXPECT_NE(send->AllowsHttp("POST", "/gmail/v1/users/me/messages/send"), nullptr);
  EXPECT_EQ(send->AllowsHttp("GET", "/gmail/v1/users/me/messages/send"), nullptr);
  EXPECT_EQ(send->AllowsHttp("POST", "/gmail/v1/users/me/messages/sendX"), nullptr);
  EXPECT_EQ(send->AllowsHttp("POST", "/gmail/v1/users/me/messages"), nullptr);
  EXPECT_NE(send->AllowsHttp("POST", "/gmail/v1/users/me/messages/send/x"), nullptr);

  const ToolDecl* read = policy->FindTool("w", "read_mail");
  ASSERT_NE(read, nullptr);
  const HttpAllowance* messages = read->AllowsHttp("GET", "/gmail/v1/users/me/messages/123");
  ASSERT_NE(messages, nullptr);
  EXPECT_EQ(messages->path_prefix, "/gmail/v1/users/me/messages");
  EXPECT_EQ(messages->declared, "GET /gmail/v1/users/me/messages/");
  EXPECT_NE(read->AllowsHttp("GET", "/gmail/v1/users/me/messages"), nullptr);
  EXPECT_NE(read->AllowsHttp("DELETE", "/gmail/v1/users/me/labels/7"), nullptr);
  EXPECT_EQ(read->AllowsHttp("DELETE", "/gmail/v1/users/me/messages/1"), nullptr);

  // Without "http" a tool may call any path of the connector's API bases.
  const ToolDecl* anything = policy->FindTool("w", "anything");
  ASSERT_NE(anything, nullptr);
  EXPECT_TRUE(anything->http.empty());
  EXPECT_EQ(policy->FindTool("w", "nope"), nullptr);
  EXPECT_EQ(policy->FindTool("other", "send_email"), nullptr);

  for (const std::string bad : {"POST", "post /x", "GET x", "GET /a//b", "GET /a/../b",
                                "GET /a/%2e%2e/b", "GET /a?b", "GET /a%2Fb", "GET /a b"}) {
    Write(dir.Join("bad.toml"),
          absl::StrCat("[workspaces.w]\n[[workspaces.w.tools]]\nname = \"t\"\n"
                       "connector = \"c\"\nscopes = [\"s\"]\nhttp = [\"",
                       bad, "\"]\n"));
    absl::StatusOr<Policy> refused = Policy::Load(dir.Join("bad.toml"));
    EXPECT_TRUE(absl::IsInvalidArgument(refused.status())) << bad;
    EXPECT_THAT(refused.status().message(), HasSubstr("http entry")) << bad;
  }
  Write(dir.Join("bad.json"), R"({"tools": [{"name": "a", "connector": "c", "scopes": ["s"],
                                             "http": "GET /"}]})");
  Write(dir.Join("bad.toml"), "[workspaces.w]\nmanifests = [\"bad.json\"]\n");
  EXPECT_THAT(Policy::Load(dir.Join("bad.toml")).status().message(),
              HasSubstr("\"http\" must be an array of strings"));
}

TEST(PolicyTest, CanonicalPathsOnlyAreMatchedAgainstPrefixes) {
  for (const char* good :
       {"/", "/a", "/a/b", "/a/b/", "/a/%20b", "/a:b/c@d", "/r%C3%A9sum%C3%A9"}) {
    EXPECT_TRUE(CheckHttpPath(good).ok()) << good;
  }
  for (const char* bad :
       {"",        "a",     "//a",      "/a//b",  "/./a",          "/a/.",   "/a/..",
        "/a/../b", "/a\\b", "/a%2fb",   "/a%5Cb", "/%2E%2E/b",     "/a?x=1", "/a#f",
        "/a\tb",   "/\x7f", "/a/..;/b", "/a;x=1", "/%252e%252e/b", "/a%00",  "/%c0%ae%c0%ae/b",
        "/a/%41b", "/a%",   "/a%2",     "/a%zz"}) {
    EXPECT_FALSE(CheckHttpPath(bad).ok()) << bad;
  }
}

// Whoever can write the policy file or a manifest decides who gets tokens.
TEST(PolicyTest, RefusesAPolicyOrManifestOthersCouldRewrite) {
  TempDir dir;
  const std::string path = dir.Join("policy.toml");
  Write(path, "[workspaces.w]\nmanifests = [\"agent.json\"]\n");
  Write(dir.Join("agent.json"), R"({"tools": []})");
  ASSERT_TRUE(Policy::Load(path).ok());
  for (mode_t mode : {0664u, 0646u, 0666u}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    absl::StatusOr<Policy> refused = Policy::Load(path);
    EXPECT_TRUE(absl::IsPermissionDenied(refused.status())) << refused.status();
    EXPECT_THAT(refused.status().message(), HasSubstr(path));
    EXPECT_THAT(refused.status().message(), HasSubstr(absl::StrFormat("mode %04o", mode)));
  }
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  ASSERT_EQ(::chmod(dir.Join("agent.json").c_str(), 0666), 0);
  absl::StatusOr<Policy> refused = Policy::Load(path);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("agent.json is writable by its group"));
  ASSERT_EQ(::chmod(dir.Join("agent.json").c_str(), 0600), 0);
  ASSERT_TRUE(Policy::Load(path).ok());

  if (::geteuid() != 0) GTEST_SKIP() << "only root can give a file away";
  ASSERT_EQ(::chown(path.c_str(), 65534, static_cast<gid_t>(-1)), 0);
  refused = Policy::Load(path);
  EXPECT_TRUE(absl::IsPermissionDenied(refused.status())) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("owned by uid 65534"));
}

TEST(PolicyHolderTest, KeepsThePreviousPolicyWhenTheNewOneDoesNotParse) {
  TempDir dir;
  const std::string path = dir.Join("policy.toml");
  Write(path, "[workspaces.one]\n");
  absl::StatusOr<std::unique_ptr<PolicyHolder>> holder = PolicyHolder::Create(path);
  ASSERT_TRUE(holder.ok()) << holder.status();
  std::shared_ptr<const Policy> before = (*holder)->Current();
  ASSERT_TRUE(before->workspaces().contains("one"));

  Write(path, "[workspaces.two]\nallow_resolve_without_tool = true\nbogus = 1\n");
  absl::Status status = (*holder)->Reload(path);
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("previous one stays in force"));
  EXPECT_THAT(status.message(), HasSubstr("policy.toml:3: unknown key 'bogus'"));
  EXPECT_EQ((*holder)->Current(), before);

  Write(path, "[workspaces.two]\n");
  ASSERT_TRUE((*holder)->Reload(path).ok());
  std::shared_ptr<const Policy> after = (*holder)->Current();
  EXPECT_NE(after, before);
  EXPECT_TRUE(after->workspaces().contains("two"));
  EXPECT_TRUE(before->workspaces().contains("one"));  // old snapshot still usable

  EXPECT_FALSE(PolicyHolder::Create(dir.Join("missing.toml")).ok());
}

TEST(PolicyHolderTest, ReadersSeeWholePoliciesDuringReloads) {
  TempDir dir;
  const std::string a = dir.Join("a.toml");
  const std::string b = dir.Join("b.toml");
  Write(a, "[workspaces.a]\n");
  Write(b, "[workspaces.b]\n");
  absl::StatusOr<std::unique_ptr<PolicyHolder>> holder = PolicyHolder::Create(a);
  ASSERT_TRUE(holder.ok()) << holder.status();
  std::atomic<bool> stop{false};
  std::atomic<int> torn{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 4; ++i) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        std::shared_ptr<const Policy> p = (*holder)->Current();
        if (p == nullptr || p->workspaces().size() != 1) torn.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 50; ++i) ASSERT_TRUE((*holder)->Reload(i % 2 == 0 ? b : a).ok());
  stop.store(true);
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(torn.load(), 0);
}

}  // namespace
}  // namespace grantvault::policy
