// Polling for a condition in tests that watch another thread or process.
#ifndef GRANTVAULT_TESTS_TESTING_WAIT_H_
#define GRANTVAULT_TESTS_TESTING_WAIT_H_

#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace grantvault::testing {

// Polls `done` every 5 ms until it holds (true) or `timeout` passes (false).
inline bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

}  // namespace grantvault::testing

#endif  // GRANTVAULT_TESTS_TESTING_WAIT_H_
