// Proxy and Cancel on agent.sock: the calls run on the connection's event
// loop (front/proxy.h); Cancel ends one proxied call or Subscribe stream of the
// same connection.
#include <memory>
#include <utility>

#include "front/proxy.h"
#include "front/service.h"
#include "front/service_internal.h"

namespace grantvault::front {

using internal::ErrorResponse;

void Service::DispatchProxy(const std::shared_ptr<ipc::Connection>& connection, v1::Request request,
                            absl::Time received) {
  if (proxy_ == nullptr || agents_.resolver == nullptr) {
    SendResponse(*connection,
                 ErrorResponse(request.request_id(), v1::Error::UNAVAILABLE,
                               "this daemon does not proxy API calls ([proxy] enabled = false)"));
    return;
  }
  const absl::Time deadline = proxy_->DeadlineOf(request, received);
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
  if (!caller.ok()) {
    SendResponse(*connection, ErrorResponse(request.request_id(), caller.status()));
    return;
  }
  proxy_->Start(
      connection, std::move(request), *std::move(caller), deadline,
      [slot](const policy::CallerIdentity& completed) {
        // As after a resolve: the executable's hash (of the file
        // attested at accept) is kept for the connection's next calls.
        if (slot == nullptr) return;
        absl::MutexLock lock(&slot->mu);
        if (slot->identity.ok() && (*slot->identity)->start_time == completed.start_time) {
          slot->identity = std::make_shared<const policy::CallerIdentity>(completed);
        }
      });
}

void Service::RunCancel(const std::shared_ptr<ipc::Connection>& connection,
                        const v1::Request& request) {
  const uint64_t target = request.cancel().target_request_id();
  bool found = proxy_ != nullptr && proxy_->Cancel(connection->id(), target);
  if (!found) {
    bool subscribed = false;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = subscribers_.begin(); it != subscribers_.end() && !subscribed;) {
        subscribed = std::erase_if(it->second, [&](const Subscription& s) {
                       return s.connection_id == connection->id() && s.request_id == target;
                     }) > 0;
        it = it->second.empty() ? subscribers_.erase(it) : std::next(it);
      }
    }
    if (subscribed) {
      SendResponse(*connection, ErrorResponse(target, v1::Error::CANCELLED,
                                              "the subscription was cancelled by the caller"));
      found = true;
    }
  }
  v1::Response r;
  r.set_request_id(request.request_id());
  r.mutable_cancel()->set_found(found);
  SendResponse(*connection, r);
}

}  // namespace grantvault::front
