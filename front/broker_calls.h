// The front's proxies for what the broker holds: the authorization flow,
// the keys' custodian, the audit signer and anchors. Each call goes over the
// current link (BrokerLinkSource), so a restarted broker serves the next call.
#ifndef GRANTVAULT_FRONT_BROKER_CALLS_H_
#define GRANTVAULT_FRONT_BROKER_CALLS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "audit/anchor.h"
#include "audit/signer.h"
#include "common/secret_bytes.h"
#include "front/broker_link.h"
#include "keys/custodian.h"
#include "oauth/authorizer.h"
#include "store/grant_store.h"

namespace grantvault::front {

// The link to the broker running now; Unavailable while it is being restarted.
using BrokerLinkSource = std::function<absl::StatusOr<std::shared_ptr<BrokerLink>>()>;

// How long a health call (the token's health, the breakers: both for Status)
// waits: a hung broker must not hold Status for long; a live one answers in
// well under a millisecond.
inline constexpr absl::Duration kHealthCallTimeout = absl::Milliseconds(750);

// Calls `request` on the current link.
absl::StatusOr<broker::v1::Reply> CallBroker(const BrokerLinkSource& links,
                                             const broker::v1::Request& request,
                                             absl::Duration timeout,
                                             const BrokerLink::OnProgress& progress = {});

// `store` (the front's own handle on the database) reads back what the broker stored.
std::unique_ptr<oauth::AuthorizationFlow> MakeBrokerAuthorization(BrokerLinkSource links,
                                                                  store::GrantStore* store,
                                                                  absl::Duration timeout);
std::unique_ptr<keys::Custodian> MakeBrokerCustodian(BrokerLinkSource links);
// The signer's label and public key are asked for once, here.
absl::StatusOr<std::unique_ptr<audit::Signer>> MakeBrokerSigner(BrokerLinkSource links);
std::unique_ptr<audit::AnchorStore> MakeBrokerAnchors(BrokerLinkSource links);
absl::StatusOr<SecretBytes> FetchFingerprintKey(const BrokerLinkSource& links);

}  // namespace grantvault::front

#endif  // GRANTVAULT_FRONT_BROKER_CALLS_H_
