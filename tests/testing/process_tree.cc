#include "tests/testing/process_tree.h"

#include <dirent.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/testing/wait.h"

namespace grantvault::testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// PPid and the first letter of State; false when the process is gone.
bool ParentAndState(pid_t pid, pid_t* parent, char* state) {
  const std::string status = Slurp(absl::StrCat("/proc/", pid, "/status"));
  bool have_parent = false, have_state = false;
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    if (absl::ConsumePrefix(&line, "PPid:")) {
      int value = 0;
      have_parent = absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value);
      *parent = value;
    } else if (absl::ConsumePrefix(&line, "State:")) {
      line = absl::StripAsciiWhitespace(line);
      have_state = !line.empty();
      if (have_state) *state = line[0];
    }
  }
  return have_parent && have_state;
}

}  // namespace

std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return children;
  while (dirent* e = ::readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    pid_t ppid = -1;
    char state = '?';
    if (ParentAndState(pid, &ppid, &state) && ppid == parent && state != 'Z' && state != 'X') {
      children.push_back(pid);
    }
  }
  ::closedir(proc);
  return children;
}

std::string CommOf(pid_t pid) {
  return std::string(
      absl::StripTrailingAsciiWhitespace(Slurp(absl::StrCat("/proc/", pid, "/comm"))));
}

pid_t SpawnerOf(pid_t front) {
  for (pid_t child : ChildrenOf(front)) {
    if (CommOf(child) == "gv-spawner") return child;
  }
  return -1;
}

pid_t BrokerOf(pid_t front) {
  const pid_t spawner = SpawnerOf(front);
  if (spawner < 0) return -1;
  const std::vector<pid_t> brokers = ChildrenOf(spawner);
  return brokers.size() == 1 ? brokers[0] : -1;
}

pid_t WaitForBroker(pid_t front, pid_t not_this, absl::Duration timeout) {
  pid_t found = -1;
  WaitFor(
      [&] {
        found = BrokerOf(front);
        return found > 0 && found != not_this;
      },
      timeout);
  return found > 0 && found != not_this ? found : -1;
}

}  // namespace grantvault::testing
