#include "front/broker_link.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "broker/messages.h"
#include "common/secret_bytes.h"

namespace grantvault::front {

using broker::StatusOf;
using broker::WipeSecrets;

std::unique_ptr<BrokerLink> BrokerLink::Connect(UniqueFd fd, OnEvent on_event, OnClosed on_closed) {
  std::unique_ptr<BrokerLink> link(new BrokerLink(std::move(on_event), std::move(on_closed)));
  BrokerLink* self = link.get();
  link->channel_ = ipc::PacketChannel::Start(
      std::move(fd), [self](std::string_view p) { self->OnPacket(p); },
      [self](const absl::Status& why) { self->OnChannelClosed(why); });
  return link;
}

BrokerLink::~BrokerLink() { channel_.reset(); }

bool BrokerLink::alive() const {
  absl::MutexLock lock(&mu_);
  return closed_.ok();
}

absl::StatusOr<broker::v1::Reply> BrokerLink::Call(const broker::v1::Request& request,
                                                   absl::Duration timeout,
                                                   const OnProgress& progress) {
  auto pending = std::make_shared<Pending>();
  pending->progress = progress;
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (!closed_.ok()) return closed_;
    id = next_id_++;
    pending_.emplace(id, pending);
  }
  broker::v1::Packet packet;
  packet.set_call_id(id);
  *packet.mutable_request() = request;
  std::string bytes = packet.SerializeAsString();
  WipeSecrets(*packet.mutable_request());  // it may hold a client secret or a code
  absl::Status sent = channel_->Send(bytes);
  WipeString(bytes);
  absl::MutexLock lock(&mu_);
  if (!sent.ok()) {
    pending_.erase(id);
    return absl::UnavailableError(absl::StrCat("the broker is not reachable: ", sent.message()));
  }
  auto answered = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return pending->reply.has_value() || !pending->failed.ok();
  };
  mu_.AwaitWithTimeout(absl::Condition(&answered), timeout);
  pending_.erase(id);
  if (!pending->failed.ok()) {
    if (pending->reply.has_value()) WipeSecrets(*pending->reply);
    return pending->failed;
  }
  if (!pending->reply.has_value()) {
    return absl::UnavailableError(
        absl::StrCat("the broker did not answer within ", absl::FormatDuration(timeout)));
  }
  broker::v1::Reply reply = *std::move(pending->reply);
  WipeSecrets(*pending->reply);  // what a move may leave behind
  absl::Status status = StatusOf(reply.status());
  if (!status.ok()) {
    WipeSecrets(reply);
    return status;
  }
  return reply;
}

void BrokerLink::OnPacket(std::string_view bytes) {
  broker::v1::Packet packet;
  if (!packet.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    channel_->Close();  // a broker that speaks garbage is not trusted further
    return;
  }
  if (packet.has_event()) {
    if (on_event_) on_event_(packet.event());
    return;
  }
  if (!packet.has_reply()) return;
  std::shared_ptr<Pending> pending;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(packet.call_id());
    if (it == pending_.end()) {  // the caller gave up
      WipeSecrets(*packet.mutable_reply());
      return;
    }
    pending = it->second;
    if (!packet.reply().more()) {
      pending->reply = std::move(*packet.mutable_reply());
      WipeSecrets(*packet.mutable_reply());  // what a move may leave behind
      return;
    }
  }
  if (pending->progress) pending->progress(packet.reply());
  WipeSecrets(*packet.mutable_reply());
}

void BrokerLink::OnChannelClosed(const absl::Status& why) {
  const absl::Status failed = absl::UnavailableError(
      absl::StrCat("the broker process is gone (", why.message(), "); retry_after_ms=500"));
  {
    absl::MutexLock lock(&mu_);
    closed_ = failed;
    for (auto& [id, pending] : pending_) pending->failed = failed;
  }
  if (on_closed_) on_closed_(why);
}

}  // namespace grantvault::front
