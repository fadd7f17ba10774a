#include "store/grant_change_feed.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/thread_name.h"

namespace grantvault::store {
namespace {

constexpr char kChannel[] = "grantvault_grant_changes";
constexpr int64_t kBatch = 1000;
constexpr absl::Duration kWaitSlice = absl::Milliseconds(500);  // how soon a stop is seen
constexpr absl::Duration kMaxBackoff = absl::Seconds(5);
constexpr absl::Duration kPruneEvery = absl::Hours(1);

}  // namespace

absl::StatusOr<std::unique_ptr<GrantChangeFeed>> GrantChangeFeed::Start(
    Options options, OnChange on_change, std::function<void()> on_gap) {
  options.connection.owner = "grant change feed";
  std::unique_ptr<GrantChangeFeed> feed(
      new GrantChangeFeed(std::move(options), std::move(on_change), std::move(on_gap)));
  GV_ASSIGN_OR_RETURN(feed->connection_, db::Postgres::Connect(feed->options_.connection));
  GV_RETURN_IF_ERROR(feed->connection_->Listen(kChannel));
  GV_ASSIGN_OR_RETURN(
      const std::string end,
      feed->connection_->QueryText("SELECT coalesce(max(seq), 0)::text FROM grant_changes",
                                   "read where the grant change log ends"));
  int64_t last = 0;
  if (!absl::SimpleAtoi(end, &last)) {
    return absl::InternalError("grant change feed: the log's end is not a number");
  }
  feed->last_seen_ = last;
  feed->thread_ = std::thread([f = feed.get()] { f->Run(); });
  return feed;
}

GrantChangeFeed::~GrantChangeFeed() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

absl::Status GrantChangeFeed::CatchUp() {
  while (true) {
    GV_ASSIGN_OR_RETURN(db::Statement query,
                        connection_->Prepare("SELECT seq, grant_id, origin FROM grant_changes "
                                             "WHERE seq > ? ORDER BY seq LIMIT ?",
                                             "read the grant change log"));
    query.BindInt(1, last_seen_.load());
    query.BindInt(2, kBatch);
    int64_t rows = 0;
    while (true) {
      GV_ASSIGN_OR_RETURN(const bool row, query.Step());
      if (!row) break;
      ++rows;
      last_seen_ = query.Int(0);
      if (query.Text(2) != options_.connection.origin) on_change_(query.Text(1));
    }
    if (rows < kBatch) return absl::OkStatus();
  }
}

absl::Status GrantChangeFeed::Prune() {
  GV_ASSIGN_OR_RETURN(db::Statement prune,
                      connection_->Prepare("DELETE FROM grant_changes WHERE changed_at < "
                                           "now() - make_interval(secs => ?)",
                                           "prune the grant change log"));
  prune.BindInt(1, absl::ToInt64Seconds(options_.retention));
  return prune.Run();
}

void GrantChangeFeed::Run() {
  NameThisThread("gv-grant-feed");
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time next_poll = absl::Now() + options_.poll;
  absl::Time next_prune = absl::Now();
  std::optional<absl::Time> lost_since;
  while (!stopping_) {
    if (!connection_->Healthy()) {
      if (!lost_since) lost_since = absl::Now();
      if (!connection_->Reconnect().ok() || !connection_->Listen(kChannel).ok()) {
        // Sleeps in slices, so that a stop is not held up by the backoff.
        for (absl::Time until = absl::Now() + backoff; !stopping_ && absl::Now() < until;) {
          absl::SleepFor(std::min(kWaitSlice, until - absl::Now()));
        }
        backoff = std::min(kMaxBackoff, backoff * 2);
        continue;
      }
      backoff = absl::Milliseconds(100);
      // Listening again: what was announced in the gap is read from the log.
      if (absl::Now() - *lost_since > options_.retention / 2 && on_gap_) on_gap_();
      lost_since.reset();
      next_poll = absl::Now();
    }
    absl::StatusOr<int> heard = connection_->WaitForNotifications(kWaitSlice);
    if (!heard.ok()) continue;  // reconnected above
    if (*heard > 0 || absl::Now() >= next_poll) {
      if (CatchUp().ok()) next_poll = absl::Now() + options_.poll;
    }
    if (absl::Now() >= next_prune) {
      Prune().IgnoreError();  // every host prunes; any one of them suffices
      next_prune = absl::Now() + kPruneEvery;
    }
  }
}

}  // namespace grantvault::store
