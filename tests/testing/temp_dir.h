// A private temporary directory, removed with everything in it on destruction.
#ifndef GRANTVAULT_TESTS_TESTING_TEMP_DIR_H_
#define GRANTVAULT_TESTS_TESTING_TEMP_DIR_H_

#include <string>

namespace grantvault::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Reads a whole file; aborts the test on failure.
std::string ReadFileOrDie(const std::string& path);

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_TEMP_DIR_H_
