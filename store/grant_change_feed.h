// GrantChangeFeed: hears of the grant changes that other hosts sharing a
// PostgreSQL store make (docs/operations.md, "Several hosts").
//
// The store logs every grant inserted and every status change in commit
// order (the grant_changes table) and announces it on the channel
// grantvault_grant_changes. The feed LISTENs on its own connection and, at
// each announcement (and every `poll` in case one was missed), reads the log
// past the last change it has seen and calls `on_change` with each grant id
// whose change another host made (a change carries the origin of the session
// that made it: PostgresOptions::origin), on the feed's thread, in commit
// order. A lost connection is connected again (backing off up to 5 s), and
// what the log gained meanwhile is read then: nothing missed in the gap is
// lost. Changes older than `retention` are pruned from the log; a feed that
// was away longer than that calls `on_gap` instead (forget everything).
#ifndef GRANTVAULT_STORE_GRANT_CHANGE_FEED_H_
#define GRANTVAULT_STORE_GRANT_CHANGE_FEED_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "db/postgres.h"

namespace grantvault::store {

class GrantChangeFeed {
 public:
  struct Options {
    db::PostgresOptions connection;  // its origin is this host's: its changes are skipped
    absl::Duration poll = absl::Seconds(5);
    absl::Duration retention = absl::Hours(24 * 7);
  };
  using OnChange = std::function<void(const std::string& grant_id)>;

  // Connects, starts listening and reads where the log ends now (changes
  // before the start concern no cache of this process); UNAVAILABLE when the
  // database cannot be reached.
  static absl::StatusOr<std::unique_ptr<GrantChangeFeed>> Start(Options options, OnChange on_change,
                                                                std::function<void()> on_gap);
  // Stops the thread (within half a second) and joins it.
  ~GrantChangeFeed();
  GrantChangeFeed(const GrantChangeFeed&) = delete;
  GrantChangeFeed& operator=(const GrantChangeFeed&) = delete;

  // The last change read from the log.
  int64_t last_seen() const { return last_seen_.load(); }

 private:
  GrantChangeFeed(Options options, OnChange on_change, std::function<void()> on_gap)
      : options_(std::move(options)),
        on_change_(std::move(on_change)),
        on_gap_(std::move(on_gap)) {}
  void Run();
  // Reads the log past last_seen_ and reports other hosts' changes.
  absl::Status CatchUp();
  absl::Status Prune();

  const Options options_;
  const OnChange on_change_;
  const std::function<void()> on_gap_;
  std::unique_ptr<db::Postgres> connection_;  // the feed thread's alone once started
  std::atomic<int64_t> last_seen_{0};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace grantvault::store

#endif  // GRANTVAULT_STORE_GRANT_CHANGE_FEED_H_
