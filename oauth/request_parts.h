// Pieces every request to an authorization server is built from (token
// endpoint, revocation endpoint): client authentication and form fields, with
// every intermediate copy of a secret wiped.
#ifndef GRANTVAULT_OAUTH_REQUEST_PARTS_H_
#define GRANTVAULT_OAUTH_REQUEST_PARTS_H_

#include <string>
#include <string_view>

#include "oauth/catalog.h"

namespace grantvault::oauth {

// "Basic " + base64(urlencode(client_id) ":" urlencode(client_secret))
// (RFC 6749 §2.3.1: both parts form-encoded before base64). The result holds
// the secret: put it in an HttpRequest (which wipes its headers) and nowhere else.
std::string BasicAuthorization(std::string_view client_id, std::string_view client_secret);

// Appends `name=value` (application/x-www-form-urlencoded) to `body`; the
// encoded copy of `value` is wiped.
void AppendFormField(std::string& body, std::string_view name, std::string_view value);

// Whether the catalog entry sets header `name` itself (case-insensitive), in
// its token_headers.
bool CatalogSetsHeader(const ConnectorType& type, std::string_view name);

}  // namespace grantvault::oauth

#endif  // GRANTVAULT_OAUTH_REQUEST_PARTS_H_
