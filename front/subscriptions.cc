// Subscribe on agent.sock: the streams of grant events per workspace, and their
// end when a reloaded policy no longer allows them.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "front/service.h"
#include "front/service_internal.h"

namespace grantvault::front {

using internal::UnixMillis;

void Service::EndRefusedSubscriptions() {
  std::vector<std::pair<std::string, Subscription>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [workspace, subscriptions] : subscribers_) {
      for (const Subscription& s : subscriptions) all.emplace_back(workspace, s);
    }
  }
  for (const auto& [workspace, s] : all) {
    std::shared_ptr<ipc::Connection> connection = s.connection.lock();
    if (connection == nullptr) continue;
    std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
    absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
    absl::Status allowed = caller.status();
    if (allowed.ok()) allowed = agents_.resolver->AllowWorkspace(*caller, workspace).status();
    if (allowed.ok()) continue;
    {
      absl::MutexLock lock(&mu_);
      auto it = subscribers_.find(workspace);
      if (it != subscribers_.end()) {
        std::erase_if(it->second, [&](const Subscription& other) {
          return other.connection_id == s.connection_id && other.request_id == s.request_id;
        });
        if (it->second.empty()) subscribers_.erase(it);
      }
    }
    // The stream ends with the reason: the reloaded policy no longer lets
    // this caller hear of the workspace's grants.
    v1::Response r;
    r.set_request_id(s.request_id);
    *r.mutable_error() = StatusToError(absl::PermissionDeniedError(
        absl::StrCat("the reloaded policy ends this subscription: ", allowed.message())));
    SendResponse(*connection, r);
    CloseIfCallerRefused(*connection, allowed, caller.ok() ? &*caller : nullptr);
  }
}

void Service::RunSubscribe(const std::shared_ptr<ipc::Connection>& connection,
                           const v1::Request& request) {
  const std::string& workspace = request.subscribe().workspace_id();
  std::shared_ptr<CallerSlot> slot = CallerOf(*connection);
  absl::StatusOr<policy::CallerIdentity> caller = CopyCaller(slot.get());
  absl::Status allowed = caller.status();
  if (allowed.ok() && workspace.empty()) {
    allowed = absl::InvalidArgumentError("subscribe needs a workspace id");
  }
  if (allowed.ok()) allowed = agents_.resolver->AllowWorkspace(*caller, workspace).status();
  if (allowed.ok()) allowed = policy::StillSameProcess(*caller);
  if (!allowed.ok()) {
    SendResponse(*connection, internal::ErrorResponse(request.request_id(), allowed));
    CloseIfCallerRefused(*connection, allowed, caller.ok() ? &*caller : nullptr);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    // Registered before the first answer, so no event can fall in between.
    subscribers_[workspace].push_back(
        Subscription{connection, connection->id(), request.request_id()});
  }
  v1::Response r;
  r.set_request_id(request.request_id());
  r.set_more(true);
  v1::GrantEvent* event = r.mutable_grant_event();
  event->set_kind(v1::GrantEvent::SUBSCRIBED);
  event->set_workspace_id(workspace);
  event->set_at_ms(UnixMillis(clock_->Now()));
  SendResponse(*connection, r);
}

void Service::PublishGrantEvent(const v1::GrantEvent& event) {
  std::vector<Subscription> targets;
  {
    absl::MutexLock lock(&mu_);
    auto it = subscribers_.find(event.workspace_id());
    if (it == subscribers_.end()) return;
    targets = it->second;
  }
  for (const Subscription& s : targets) {
    std::shared_ptr<ipc::Connection> connection = s.connection.lock();
    if (connection == nullptr) continue;
    v1::Response r;
    r.set_request_id(s.request_id);
    r.set_more(true);
    *r.mutable_grant_event() = event;
    SendResponse(*connection, r);
  }
}

}  // namespace grantvault::front
