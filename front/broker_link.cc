#include "front/broker_link.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace grantvault::front {

absl::Status StatusOf(const broker::v1::Status& status) {
  if (status.code() == 0) return absl::OkStatus();
  const int code = status.code();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(absl::StrCat("the broker answered status code ", code));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.message());
}

namespace {

void WipeSecretsOf(broker::v1::Reply& reply) {
  // Through the case: a mutable_ accessor of another case would clear it.
  if (reply.body_case() == broker::v1::Reply::kToken) {
    ipc::WipeString(*reply.mutable_token()->mutable_token());
  } else if (reply.body_case() == broker::v1::Reply::kFingerprintKey) {
    ipc::WipeString(*reply.mutable_fingerprint_key()->mutable_key());
  }
}

}  // namespace

void SetStatus(const absl::Status& from, broker::v1::Status* to) {
  to->set_code(static_cast<int>(from.code()));
  to->set_message(std::string(from.message()));
}

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
  // The request may hold a client secret or an authorization code (read
  // through the case: a mutable_ accessor of another case would clear it).
  if (packet.request().body_case() == broker::v1::Request::kRegister) {
    ipc::WipeString(*packet.mutable_request()->mutable_register_()->mutable_client_secret());
  } else if (packet.request().body_case() == broker::v1::Request::kComplete) {
    ipc::WipeString(*packet.mutable_request()->mutable_complete()->mutable_code());
  }
  absl::Status sent = channel_->Send(bytes);
  ipc::WipeString(bytes);
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
    if (pending->reply.has_value()) WipeSecretsOf(*pending->reply);
    return pending->failed;
  }
  if (!pending->reply.has_value()) {
    return absl::UnavailableError(
        absl::StrCat("the broker did not answer within ", absl::FormatDuration(timeout)));
  }
  broker::v1::Reply reply = *std::move(pending->reply);
  WipeSecretsOf(*pending->reply);  // what a move may leave behind
  absl::Status status = StatusOf(reply.status());
  if (!status.ok()) {
    WipeSecretsOf(reply);
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
      WipeSecretsOf(*packet.mutable_reply());
      return;
    }
    pending = it->second;
    if (!packet.reply().more()) {
      pending->reply = std::move(*packet.mutable_reply());
      WipeSecretsOf(*packet.mutable_reply());  // what a move may leave behind
      return;
    }
  }
  if (pending->progress) pending->progress(packet.reply());
  WipeSecretsOf(*packet.mutable_reply());
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
