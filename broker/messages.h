// Helpers for the messages of the front–broker protocol (broker.proto) that
// both ends need.
#ifndef GRANTVAULT_BROKER_MESSAGES_H_
#define GRANTVAULT_BROKER_MESSAGES_H_

#include "absl/status/status.h"
#include "grantvault/broker/v1/broker.pb.h"

namespace grantvault::broker {

// A reply's status as an absl::Status, and back. A code outside absl's range
// (a broken broker) is Internal.
absl::Status StatusOf(const v1::Status& status);
void SetStatus(const absl::Status& from, v1::Status* to);

// Wipes the secret a message may carry (a client secret or an authorization
// code in a request; an access token or the fingerprint key in a reply), in
// place. Through the body's case: a mutable_ accessor of another case would
// clear the body instead, and free the secret unwiped.
void WipeSecrets(v1::Request& request);
void WipeSecrets(v1::Reply& reply);

}  // namespace grantvault::broker

#endif  // GRANTVAULT_BROKER_MESSAGES_H_
