#include "policy/policy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/strings.h"
#include "common/unique_fd.h"
#include "nlohmann/json.hpp"
#include "toml++/toml.h"

namespace grantvault::policy {
namespace {

constexpr std::size_t kMaxFileBytes = 1024 * 1024;

std::string Where(const std::string& file, const toml::source_region& region) {
  return absl::StrCat(file, ":", region.begin.line);
}

absl::Status Invalid(const std::string& file, const toml::source_region& region,
                     std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(Where(file, region), ": ", Sv(what)));
}

// A policy file or manifest decides who gets tokens: only this daemon's user
// or root may be able to change it. Checked on the opened file, so a file
// swapped in after the check is not the one read.
absl::Status CheckTrustedFile(const std::string& path, int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const uid_t self = ::geteuid();
  if (st.st_uid != self && st.st_uid != 0) {
    return absl::PermissionDeniedError(
        absl::StrFormat("%s is owned by uid %d, neither this daemon's uid %d nor root, so its "
                        "owner could rewrite the policy; run: chown %d %s",
                        path, st.st_uid, self, self, path));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s is writable by its group or other users (mode %04o), so they could rewrite the "
        "policy; run: chmod go-w %s",
        path, st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  if (absl::Status trusted = CheckTrustedFile(path, fd.get()); !trusted.ok()) return trusted;
  std::string out;
  std::array<char, 8192> buf;
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
    if (out.size() > kMaxFileBytes) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is larger than 1 MiB"));
    }
  }
  return out;
}

std::string DirOf(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Refuses keys of `table` outside `allowed`, naming file:line:key.
absl::Status CheckKeys(const std::string& file, const toml::table& table,
                       std::initializer_list<std::string_view> allowed) {
  for (auto&& [key, node] : table) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(file, key.source()), ": unknown key '", Sv(key.str()), "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> GetString(const std::string& file, const toml::node& node,
                                      std::string_view key) {
  const toml::value<std::string>* s = node.as_string();
  if (s == nullptr) return Invalid(file, node.source(), absl::StrCat(Sv(key), " must be a string"));
  if (s->get().empty()) {
    return Invalid(file, node.source(), absl::StrCat(Sv(key), " must not be empty"));
  }
  return s->get();
}

absl::StatusOr<std::vector<std::string>> GetStringArray(const std::string& file,
                                                        const toml::node& node,
                                                        std::string_view key) {
  const toml::array* arr = node.as_array();
  if (arr == nullptr) {
    return Invalid(file, node.source(), absl::StrCat(Sv(key), " must be an array of strings"));
  }
  std::vector<std::string> out;
  for (const toml::node& element : *arr) {
    absl::StatusOr<std::string> s = GetString(file, element, key);
    if (!s.ok()) return s.status();
    out.push_back(*std::move(s));
  }
  return out;
}

absl::StatusOr<std::uint32_t> GetId(const std::string& file, const toml::node& node,
                                    std::string_view key) {
  const toml::value<std::int64_t>* v = node.as_integer();
  if (v == nullptr || v->get() < 0 || v->get() > 0xfffffffe) {
    return Invalid(file, node.source(),
                   absl::StrCat(Sv(key), " must be an integer from 0 to 4294967294"));
  }
  return static_cast<std::uint32_t>(v->get());
}

bool IsLowerHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Shared by TOML tools and JSON manifest tools.
absl::Status NormalizeScopes(std::vector<std::string>& scopes, const std::string& where) {
  if (scopes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": scopes must not be empty"));
  }
  for (const std::string& s : scopes) {
    if (s.empty() || s.find_first_of(" \t\r\n") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": scope '", s, "' is empty or contains whitespace"));
    }
  }
  std::sort(scopes.begin(), scopes.end());
  scopes.erase(std::unique(scopes.begin(), scopes.end()), scopes.end());
  return absl::OkStatus();
}

// The "http" entries of a tool, from TOML or JSON, already as strings.
absl::Status ParseHttpAllowances(const std::vector<std::string>& declared, ToolDecl& tool) {
  for (const std::string& d : declared) {
    absl::StatusOr<HttpAllowance> allowance = ParseHttpAllowance(d);
    if (!allowance.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(tool.where, ": http entry '", d, "': ", allowance.status().message()));
    }
    tool.http.push_back(*std::move(allowance));
  }
  return absl::OkStatus();
}

absl::StatusOr<CallerRule> ParseCallerRule(const std::string& file, const toml::node& node) {
  const toml::table* t = node.as_table();
  if (t == nullptr) return Invalid(file, node.source(), "each [[callers]] entry must be a table");
  if (absl::Status s = CheckKeys(
          file, *t, {"uid", "user", "gid", "group", "exe", "exe_sha256", "role", "workspaces"});
      !s.ok()) {
    return s;
  }
  CallerRule rule;
  rule.where = Where(file, t->source());
  bool has_role = false;
  for (auto&& [key, value] : *t) {
    const std::string_view k = key.str();
    if (k == "uid") {
      absl::StatusOr<std::uint32_t> v = GetId(file, value, k);
      if (!v.ok()) return v.status();
      rule.uid = static_cast<uid_t>(*v);
    } else if (k == "gid") {
      absl::StatusOr<std::uint32_t> v = GetId(file, value, k);
      if (!v.ok()) return v.status();
      rule.gid = static_cast<gid_t>(*v);
    } else if (k == "user" || k == "group" || k == "exe" || k == "exe_sha256" || k == "role") {
      absl::StatusOr<std::string> v = GetString(file, value, k);
      if (!v.ok()) return v.status();
      if (k == "user") {
        rule.user = *v;
      } else if (k == "group") {
        rule.group = *v;
      } else if (k == "exe") {
        if ((*v)[0] != '/') return Invalid(file, value.source(), "exe must be an absolute path");
        rule.exe = *v;
      } else if (k == "exe_sha256") {
        if (!IsLowerHex64(*v)) {
          return Invalid(file, value.source(), "exe_sha256 must be 64 lowercase hex digits");
        }
        rule.exe_sha256 = *v;
      } else {
        if (*v == "agent") {
          rule.role = Role::kAgent;
        } else if (*v == "admin") {
          rule.role = Role::kAdmin;
        } else {
          return Invalid(file, value.source(),
                         absl::StrCat("unknown role '", *v, "' (expected \"agent\" or \"admin\")"));
        }
        has_role = true;
      }
    } else {  // workspaces
      absl::StatusOr<std::vector<std::string>> v = GetStringArray(file, value, k);
      if (!v.ok()) return v.status();
      rule.workspaces = *std::move(v);
      const bool has_star =
          std::find(rule.workspaces.begin(), rule.workspaces.end(), "*") != rule.workspaces.end();
      if (has_star && rule.workspaces.size() != 1) {
        return Invalid(file, value.source(), "\"*\" must be the only entry of workspaces");
      }
    }
  }
  if (!has_role) return Invalid(file, t->source(), "caller rule has no role");
  if (!rule.uid && !rule.user && !rule.gid && !rule.group && !rule.exe && !rule.exe_sha256) {
    return Invalid(file, t->source(),
                   "caller rule matches nothing (set uid, user, gid, group, exe or exe_sha256)");
  }
  if (rule.role == Role::kAgent && rule.workspaces.empty()) {
    return Invalid(file, t->source(), "an agent rule must list its workspaces");
  }
  return rule;
}

absl::Status AddTool(WorkspacePolicy& ws, ToolDecl tool) {
  if (const ToolDecl* existing = ws.FindTool(tool.name); existing != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(tool.where, ": duplicate tool '", tool.name,
                                                   "' in workspace '", ws.id,
                                                   "' (first declared at ", existing->where, ")"));
  }
  ws.tools.push_back(std::move(tool));
  return absl::OkStatus();
}

absl::StatusOr<ToolDecl> ParseTomlTool(const std::string& file, const toml::node& node) {
  const toml::table* t = node.as_table();
  if (t == nullptr) return Invalid(file, node.source(), "each tools entry must be a table");
  if (absl::Status s = CheckKeys(file, *t, {"name", "connector", "scopes", "http"}); !s.ok()) {
    return s;
  }
  ToolDecl tool;
  tool.where = Where(file, t->source());
  for (std::string_view k : {"name", "connector", "scopes"}) {
    if (!t->contains(k)) return Invalid(file, t->source(), absl::StrCat("tool has no ", Sv(k)));
  }
  absl::StatusOr<std::string> name = GetString(file, *t->get("name"), "name");
  if (!name.ok()) return name.status();
  absl::StatusOr<std::string> connector = GetString(file, *t->get("connector"), "connector");
  if (!connector.ok()) return connector.status();
  absl::StatusOr<std::vector<std::string>> scopes =
      GetStringArray(file, *t->get("scopes"), "scopes");
  if (!scopes.ok()) return scopes.status();
  tool.name = *std::move(name);
  tool.connector = *std::move(connector);
  tool.scopes = *std::move(scopes);
  if (absl::Status s = NormalizeScopes(tool.scopes, tool.where); !s.ok()) return s;
  if (const toml::node* http = t->get("http"); http != nullptr) {
    absl::StatusOr<std::vector<std::string>> declared = GetStringArray(file, *http, "http");
    if (!declared.ok()) return declared.status();
    if (absl::Status s = ParseHttpAllowances(*declared, tool); !s.ok()) return s;
  }
  return tool;
}

// A manifest in JSON: {"tools": [{"name", "connector", "scopes": [...],
// "http": [...]}, ...]} ("http" optional: it only narrows a tool). Other keys
// (of the manifest or of a tool) are the agent platform's business and are
// ignored; they cannot widen what a tool may do.
absl::Status ImportManifest(const std::string& path, WorkspacePolicy& ws) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  if (!doc.is_object() || !doc.contains("tools") || !doc["tools"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected an object with a \"tools\" array"));
  }
  const nlohmann::json& tools = doc["tools"];
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const nlohmann::json& t = tools[i];
    ToolDecl tool;
    tool.where = absl::StrCat(path, ": tools[", i, "]");
    if (!t.is_object()) return absl::InvalidArgumentError(tool.where + " is not an object");
    for (const char* k : {"name", "connector"}) {
      if (!t.contains(k) || !t[k].is_string() || t[k].get_ref<const std::string&>().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(tool.where, ": \"", k, "\" must be a non-empty string"));
      }
    }
    tool.name = t["name"].get<std::string>();
    tool.connector = t["connector"].get<std::string>();
    if (!t.contains("scopes") || !t["scopes"].is_array()) {
      return absl::InvalidArgumentError(tool.where + ": \"scopes\" must be an array of strings");
    }
    for (const nlohmann::json& s : t["scopes"]) {
      if (!s.is_string()) {
        return absl::InvalidArgumentError(tool.where + ": \"scopes\" must be an array of strings");
      }
      tool.scopes.push_back(s.get<std::string>());
    }
    if (absl::Status s = NormalizeScopes(tool.scopes, tool.where); !s.ok()) return s;
    if (t.contains("http")) {
      std::vector<std::string> declared;
      const nlohmann::json& http = t["http"];
      const bool strings =
          http.is_array() && std::all_of(http.begin(), http.end(),
                                         [](const nlohmann::json& e) { return e.is_string(); });
      if (!strings) {
        return absl::InvalidArgumentError(tool.where + ": \"http\" must be an array of strings");
      }
      for (const nlohmann::json& e : http) declared.push_back(e.get<std::string>());
      if (absl::Status s = ParseHttpAllowances(declared, tool); !s.ok()) return s;
    }
    if (absl::Status s = AddTool(ws, std::move(tool)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<WorkspacePolicy> ParseWorkspace(const std::string& file, const std::string& id,
                                               const toml::node& node) {
  const toml::table* t = node.as_table();
  if (t == nullptr) {
    return Invalid(file, node.source(), absl::StrCat("workspaces.", id, " must be a table"));
  }
  if (absl::Status s = CheckKeys(file, *t, {"allow_resolve_without_tool", "tools", "manifests"});
      !s.ok()) {
    return s;
  }
  WorkspacePolicy ws;
  ws.id = id;
  if (const toml::node* v = t->get("allow_resolve_without_tool"); v != nullptr) {
    const toml::value<bool>* b = v->as_boolean();
    if (b == nullptr) {
      return Invalid(file, v->source(), "allow_resolve_without_tool must be true or false");
    }
    ws.allow_resolve_without_tool = b->get();
  }
  if (const toml::node* v = t->get("tools"); v != nullptr) {
    const toml::array* arr = v->as_array();
    if (arr == nullptr) return Invalid(file, v->source(), "tools must be an array of tables");
    for (const toml::node& element : *arr) {
      absl::StatusOr<ToolDecl> tool = ParseTomlTool(file, element);
      if (!tool.ok()) return tool.status();
      if (absl::Status s = AddTool(ws, *std::move(tool)); !s.ok()) return s;
    }
  }
  if (const toml::node* v = t->get("manifests"); v != nullptr) {
    absl::StatusOr<std::vector<std::string>> paths = GetStringArray(file, *v, "manifests");
    if (!paths.ok()) return paths.status();
    for (const std::string& p : *paths) {
      const std::string resolved = p[0] == '/' ? p : absl::StrCat(DirOf(file), "/", p);
      if (absl::Status s = ImportManifest(resolved, ws); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(file, v->source()), ": manifest: ", s.message()));
      }
    }
  }
  return ws;
}

absl::Status Denied(std::string_view why) { return absl::PermissionDeniedError(Sv(why)); }

bool Contains(const std::vector<std::string>& set, const std::string& s) {
  return std::find(set.begin(), set.end(), s) != set.end();
}

}  // namespace

std::string_view RoleName(Role role) { return role == Role::kAdmin ? "admin" : "agent"; }

bool CallerRule::Matches(const CallerIdentity& caller) const {
  if (uid && *uid != caller.uid) return false;
  if (user && *user != caller.user_name) return false;
  if (gid && *gid != caller.gid &&
      std::find(caller.supplementary_groups.begin(), caller.supplementary_groups.end(), *gid) ==
          caller.supplementary_groups.end()) {
    return false;
  }
  if (group && *group != caller.group_name && !Contains(caller.supplementary_group_names, *group)) {
    return false;
  }
  // An identity attested without the exe path or hash never matches a rule
  // that needs them: fail closed.
  if (exe && (!caller.exe_path || *exe != *caller.exe_path)) return false;
  if (exe_sha256 && (!caller.exe_sha256 || *exe_sha256 != *caller.exe_sha256)) return false;
  return true;
}

bool CallerRule::AllowsWorkspace(std::string_view workspace) const {
  if (workspaces.size() == 1 && workspaces[0] == "*") return true;
  return std::find(workspaces.begin(), workspaces.end(), workspace) != workspaces.end();
}

absl::Status CheckHttpPath(std::string_view path) {
  if (path.empty() || path.front() != '/') {
    return absl::InvalidArgumentError("the path must start with '/'");
  }
  if (path.size() > 4096) return absl::InvalidArgumentError("the path is over 4096 bytes");
  for (const char c : path) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '\\' || c == '?' || c == '#' || c == ';') {
      return absl::InvalidArgumentError(
          "the path may hold only visible ASCII, without '\\', ';', '?' or '#' (servers that "
          "read ';' as a path parameter would see another path)");
    }
  }
  // Percent-encoding only where it is needed, once: an encoded '/', '\\',
  // '.', '%' (double encoding), NUL, an unreserved character or an overlong
  // UTF-8 lead byte could be decoded by the API into another path than the
  // one a prefix was matched against.
  const auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  };
  const auto value = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') continue;
    if (i + 2 >= path.size() || !hex(path[i + 1]) || !hex(path[i + 2])) {
      return absl::InvalidArgumentError("the path has a '%' that is not a percent-encoding");
    }
    const int byte = value(path[i + 1]) * 16 + value(path[i + 2]);
    const bool unreserved = (byte >= 'a' && byte <= 'z') || (byte >= 'A' && byte <= 'Z') ||
                            (byte >= '0' && byte <= '9') || byte == '-' || byte == '_' ||
                            byte == '~';
    if (unreserved || byte == '/' || byte == '\\' || byte == '.' || byte == '%' || byte == 0 ||
        byte == 0xc0 || byte == 0xc1) {
      return absl::InvalidArgumentError(
          "the path percent-encodes what must not be ('/', '\\', '.', '%', NUL, an unreserved "
          "character or an overlong UTF-8 byte): it could name another resource");
    }
  }
  if (path == "/") return absl::OkStatus();
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view segment = path.substr(start, end - start);
    const bool last = end == path.size();
    if ((segment.empty() && !last) || segment == "." || segment == "..") {
      return absl::InvalidArgumentError("the path must not have an empty, '.' or '..' segment");
    }
    start = end + 1;
  }
  return absl::OkStatus();
}

absl::StatusOr<HttpAllowance> ParseHttpAllowance(std::string_view declared) {
  const size_t space = declared.find(' ');
  if (space == std::string_view::npos || space == 0) {
    return absl::InvalidArgumentError("expected \"METHOD /path/prefix\"");
  }
  HttpAllowance out;
  out.declared = std::string(declared);
  out.method = std::string(declared.substr(0, space));
  const bool method_ok =
      out.method == "*" ||
      (out.method.size() <= 16 && std::all_of(out.method.begin(), out.method.end(),
                                              [](char c) { return c >= 'A' && c <= 'Z'; }));
  if (!method_ok) {
    return absl::InvalidArgumentError("the method must be upper-case letters (GET, POST…) or *");
  }
  std::string_view path = declared.substr(space + 1);
  if (absl::Status s = CheckHttpPath(path); !s.ok()) return s;
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  out.path_prefix = std::string(path);
  return out;
}

const HttpAllowance* ToolDecl::AllowsHttp(std::string_view method, std::string_view path) const {
  for (const HttpAllowance& a : http) {
    if (a.method != "*" && a.method != method) continue;
    const std::string_view prefix = a.path_prefix;
    if (prefix == "/" || (path.substr(0, prefix.size()) == prefix &&
                          (path.size() == prefix.size() || path[prefix.size()] == '/'))) {
      return &a;
    }
  }
  return nullptr;
}

const ToolDecl* Policy::FindTool(std::string_view workspace, std::string_view name) const {
  const auto ws = workspaces_.find(workspace);
  return ws == workspaces_.end() ? nullptr : ws->second.FindTool(name);
}

const ToolDecl* WorkspacePolicy::FindTool(std::string_view name) const {
  for (const ToolDecl& t : tools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<Policy> Policy::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::StatusOr<Policy> Policy::Parse(std::string_view toml_text, const std::string& source_path) {
  const std::string& file = source_path;
  toml::table root;
  try {
    root = toml::parse(toml_text, file);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", e.source().begin.line, ": ", Sv(e.description())));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", e.what()));
  }
  if (absl::Status s = CheckKeys(file, root, {"callers", "workspaces"}); !s.ok()) return s;

  Policy policy;
  policy.source_path_ = file;
  if (const toml::node* ws = root.get("workspaces"); ws != nullptr) {
    const toml::table* t = ws->as_table();
    if (t == nullptr) return Invalid(file, ws->source(), "workspaces must be a table");
    for (auto&& [key, node] : *t) {
      absl::StatusOr<WorkspacePolicy> parsed = ParseWorkspace(file, std::string(key.str()), node);
      if (!parsed.ok()) return parsed.status();
      policy.workspaces_.emplace(parsed->id, *std::move(parsed));
    }
  }
  if (const toml::node* callers = root.get("callers"); callers != nullptr) {
    const toml::array* arr = callers->as_array();
    if (arr == nullptr)
      return Invalid(file, callers->source(), "callers must be [[callers]] tables");
    for (const toml::node& element : *arr) {
      absl::StatusOr<CallerRule> rule = ParseCallerRule(file, element);
      if (!rule.ok()) return rule.status();
      for (const std::string& w : rule->workspaces) {
        if (w != "*" && policy.workspaces_.find(w) == policy.workspaces_.end()) {
          return absl::InvalidArgumentError(absl::StrCat(rule->where, ": workspace '", w,
                                                         "' is not declared under [workspaces]"));
        }
      }
      policy.callers_.push_back(*std::move(rule));
    }
  }
  return policy;
}

const CallerRule* Policy::FindCaller(const CallerIdentity& caller) const {
  for (const CallerRule& rule : callers_) {
    if (rule.Matches(caller)) return &rule;
  }
  return nullptr;
}

absl::StatusOr<CallerRule> Policy::MatchCaller(const CallerIdentity& caller) const {
  if (const CallerRule* rule = FindCaller(caller); rule != nullptr) return *rule;
  return absl::PermissionDeniedError(absl::StrCat("uid ", caller.uid, " is not in the policy"));
}

absl::Status Policy::CheckResolve(const CallerRule& rule, std::string_view workspace,
                                  std::string_view connector, std::optional<std::string_view> tool,
                                  const std::vector<std::string>& requested_scopes,
                                  const std::vector<std::string>& grant_scopes) const {
  if (!rule.AllowsWorkspace(workspace)) {
    return Denied(absl::StrCat("workspace '", Sv(workspace), "' is not allowed for the caller (",
                               rule.where, ")"));
  }
  auto ws = workspaces_.find(workspace);
  if (ws == workspaces_.end()) {
    return Denied(absl::StrCat("workspace '", Sv(workspace), "' is not in the policy"));
  }
  if (tool.has_value()) {
    const ToolDecl* decl = ws->second.FindTool(*tool);
    if (decl == nullptr) {
      return Denied(absl::StrCat("tool '", Sv(*tool), "' is not declared in workspace '",
                                 Sv(workspace), "'"));
    }
    if (decl->connector != connector) {
      return Denied(absl::StrCat("tool '", Sv(*tool), "' is declared for connector '",
                                 decl->connector, "', not '", Sv(connector), "'"));
    }
    for (const std::string& s : requested_scopes) {
      if (!Contains(decl->scopes, s)) {
        return Denied(absl::StrCat("scope '", s, "' is beyond tool '", Sv(*tool), "' scopes (",
                                   absl::StrJoin(decl->scopes, " "), ")"));
      }
    }
  } else if (!ws->second.allow_resolve_without_tool) {
    return Denied(
        absl::StrCat("workspace '", Sv(workspace), "' does not allow resolve without a tool"));
  }
  for (const std::string& s : requested_scopes) {
    if (!Contains(grant_scopes, s)) {
      return Denied(absl::StrCat("scope '", s, "' is beyond the grant's scopes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Policy::SuggestScopes(std::string_view workspace,
                                                               std::string_view connector) const {
  auto ws = workspaces_.find(workspace);
  if (ws == workspaces_.end()) {
    return absl::NotFoundError(
        absl::StrCat("workspace '", Sv(workspace), "' is not in the policy"));
  }
  std::set<std::string> scopes;
  bool any = false;
  for (const ToolDecl& t : ws->second.tools) {
    if (t.connector != connector) continue;
    any = true;
    scopes.insert(t.scopes.begin(), t.scopes.end());
  }
  if (!any) {
    return absl::NotFoundError(absl::StrCat(
        "workspace '", Sv(workspace), "' declares no tool for connector '", Sv(connector), "'"));
  }
  return std::vector<std::string>(scopes.begin(), scopes.end());
}

AttestOptions Policy::RequiredAttestation() const {
  AttestOptions options;
  for (const CallerRule& rule : callers_) {
    if (rule.exe) options.resolve_exe_path = true;
    if (rule.exe_sha256) options.hash_exe = true;
  }
  return options;
}

PolicyHolder::PolicyHolder(Policy initial)
    : current_(std::make_shared<const Policy>(std::move(initial))) {}

absl::StatusOr<std::unique_ptr<PolicyHolder>> PolicyHolder::Create(const std::string& path) {
  absl::StatusOr<Policy> policy = Policy::Load(path);
  if (!policy.ok()) return policy.status();
  return std::make_unique<PolicyHolder>(*std::move(policy));
}

absl::Status PolicyHolder::Reload(const std::string& path) {
  absl::StatusOr<Policy> policy = Policy::Load(path);
  if (!policy.ok()) {
    return absl::Status(policy.status().code(),
                        absl::StrCat("policy not reloaded, the previous one stays in force: ",
                                     policy.status().message()));
  }
  auto next = std::make_shared<const Policy>(*std::move(policy));
  absl::MutexLock lock(&mu_);
  current_ = std::move(next);
  return absl::OkStatus();
}

std::shared_ptr<const Policy> PolicyHolder::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

}  // namespace grantvault::policy
