// BrokerLink: the front's end of the channel to its broker process
// (docs/architecture.md, "Two processes"): calls with ids, answered in any
// order, each with its own timeout; events from the broker handed to a
// callback. When the channel ends (the broker exited), every call waiting
// fails Unavailable and later calls fail at once; the owner starts a new
// broker and a new link.
//
// Thread-safe. Callbacks run on the channel's reader thread and must not call
// back into the link.
#ifndef GRANTVAULT_FRONT_BROKER_LINK_H_
#define GRANTVAULT_FRONT_BROKER_LINK_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"
#include "grantvault/broker/v1/broker.pb.h"
#include "ipc/packet_channel.h"

namespace grantvault::front {

class BrokerLink {
 public:
  using OnEvent = std::function<void(const broker::v1::Event&)>;
  using OnProgress = std::function<void(const broker::v1::Reply&)>;
  using OnClosed = std::function<void(const absl::Status& why)>;

  // Takes the front's end of a connected channel.
  static std::unique_ptr<BrokerLink> Connect(UniqueFd fd, OnEvent on_event, OnClosed on_closed);
  ~BrokerLink();
  BrokerLink(const BrokerLink&) = delete;
  BrokerLink& operator=(const BrokerLink&) = delete;

  // One call. The reply's own status is turned into the error returned (so
  // an OK result is a reply with an OK status). Replies marked `more` go to
  // `progress` first. Unavailable when the broker is gone or does not answer
  // within `timeout` (the call may still complete in the broker).
  absl::StatusOr<broker::v1::Reply> Call(const broker::v1::Request& request, absl::Duration timeout,
                                         const OnProgress& progress = {});
  bool alive() const;

 private:
  struct Pending {
    OnProgress progress;
    std::optional<broker::v1::Reply> reply;
    absl::Status failed;  // set when the channel ended first
  };
  BrokerLink(OnEvent on_event, OnClosed on_closed)
      : on_event_(std::move(on_event)), on_closed_(std::move(on_closed)) {}
  void OnPacket(std::string_view packet);
  void OnChannelClosed(const absl::Status& why);

  const OnEvent on_event_;
  const OnClosed on_closed_;
  std::unique_ptr<ipc::PacketChannel> channel_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status closed_ ABSL_GUARDED_BY(mu_);  // not OK once the channel ended
};

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_BROKER_LINK_H_
