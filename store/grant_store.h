// The store: grants, their sealed secrets and the key versions those secrets
// are sealed under. The store never sees a plaintext secret: a sealed record is
// an opaque byte string produced by hsm::Sealer, stored with the binding
// (workspace, connector, account, owner, purpose) it was sealed for and the
// label of the key-encryption key (KEK) that wraps its data key.
//
// Implementations: SQLite (embedded default, sqlite_grant_store.h) and, later,
// PostgreSQL. Every method is thread-safe. Every write is durable when the call
// returns OK. Errors: NotFound for a missing row, AlreadyExists for a
// uniqueness conflict, FailedPrecondition for a refused state change,
// Unavailable/Internal/ResourceExhausted for the database itself (a full disk
// is ResourceExhausted).
#ifndef GRANTVAULT_STORE_GRANT_STORE_H_
#define GRANTVAULT_STORE_GRANT_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace grantvault::store {

enum class GrantStatus { kActive, kReauthRequired, kRevoked };
std::string_view GrantStatusName(GrantStatus status);
absl::StatusOr<GrantStatus> ParseGrantStatus(std::string_view name);

// DESIGN §5. Non-secret fields only.
struct Grant {
  std::string grant_id;  // "gr_" + 26 base32 characters
  std::string workspace_id;
  std::string connector_id;         // workspace-scoped name, e.g. "google_workspace"
  std::string connector_type;       // catalog type, e.g. "google"
  std::string account_id;           // the account on the target tool
  std::vector<std::string> scopes;  // locked at authorization
  GrantStatus status = GrantStatus::kActive;
  std::string status_reason;  // why it is reauth_required or revoked
  std::string authorized_by;  // the admin user
  absl::Time created_at = absl::InfinitePast();
  absl::Time updated_at = absl::InfinitePast();
  std::optional<absl::Time> access_token_expires_at;
  // Since when a refresh request whose outcome is not known has been out (the
  // crash window's marker, GrantStore::MarkRefreshAttempt); none normally.
  std::optional<absl::Time> refresh_attempt_at;
  std::map<std::string, std::string> metadata;  // instance_url, tenant, team id…

  bool operator==(const Grant&) const = default;
};

// Names one sealed secret: its owner (a grant id, a connector registration id,
// an authorization session id) and what it is for ("refresh_token",
// "access_token", "client_secret", "pkce_verifier").
struct SealedSecretKey {
  std::string owner_id;
  std::string purpose;

  bool operator==(const SealedSecretKey&) const = default;
  auto operator<=>(const SealedSecretKey&) const = default;
};

struct SealedSecret {
  SealedSecretKey key;
  // The binding the record was sealed for (part of its AAD).
  std::string workspace_id;
  std::string connector_id;
  std::string account_id;
  // Label of the KEK wrapping the record's data key; must name a key version.
  std::string kek_label;
  std::vector<uint8_t> record;  // opaque sealed record (hsm/sealed_record.h)
  absl::Time updated_at = absl::InfinitePast();

  bool operator==(const SealedSecret&) const = default;
};

// Replace one record by another, only if it still holds `expected_record`
// (so a rewrap never overwrites a refresh that rotated the secret meanwhile).
struct SealedSecretUpdate {
  SealedSecretKey key;
  std::vector<uint8_t> expected_record;
  std::string new_kek_label;
  std::vector<uint8_t> new_record;
};

enum class KeyState {
  kActive,    // the one key new records are sealed under
  kInactive,  // still opens records; rewrap moves them away
  kRetired,   // no record names it; destroyed in the token
};
std::string_view KeyStateName(KeyState state);
absl::StatusOr<KeyState> ParseKeyState(std::string_view name);

struct KeyVersion {
  int version = 0;         // n in "grantvault-kek-<n>"
  std::string label;       // "grantvault-kek-<n>"
  std::string key_id_hex;  // the token object's CKA_ID
  KeyState state = KeyState::kInactive;
  absl::Time created_at = absl::InfinitePast();
  std::optional<absl::Time> retired_at;

  bool operator==(const KeyVersion&) const = default;
};

// The OAuth client this deployment is at one authorization server, under a
// connector id that grants and agents name (e.g. "google_workspace"). Its
// client secret is a sealed secret owned by RegistrationSecretOwner(id) with
// purpose "client_secret".
struct ConnectorRegistration {
  std::string connector_id;
  std::string connector_type;  // catalog type, e.g. "google", "oidc"
  std::string client_id;
  std::string issuer;  // the generic "oidc" type: the issuer URL; otherwise empty
  std::map<std::string, std::string> parameters;  // tenant, subdomain, my_domain, region
  // The redirect URIs registered for this client at the provider, in order
  // (validated by oauth::Authorizer: absolute https, or http on a loopback
  // address). Empty: only a loopback redirect (the CLI's listener) is used.
  std::vector<std::string> redirect_uris;
  // Where the proxy may send API calls when the catalog type names no API
  // bases (oidc), and whether they may be private addresses (docs/proxy.md).
  std::vector<std::string> api_bases;
  bool allow_private_network = false;
  std::string registered_by;
  absl::Time created_at = absl::InfinitePast();
  absl::Time updated_at = absl::InfinitePast();

  bool operator==(const ConnectorRegistration&) const = default;
};
std::string RegistrationSecretOwner(std::string_view connector_id);  // "reg:<id>"

// A started authorization (DESIGN §5), waiting for the callback. It is found
// by the SHA-256 of its state (hex): the state itself is never stored. Its
// PKCE verifier, when the connector uses PKCE, is a sealed secret owned by the
// session id with purpose "pkce_verifier".
struct AuthorizationSession {
  std::string session_id;  // hex SHA-256 of the state
  std::string workspace_id;
  std::string connector_id;
  std::vector<std::string> scopes;  // as requested
  std::string admin_user;
  std::string redirect_uri;
  std::string nonce;  // OIDC nonce (not secret: it travels in the URL)
  absl::Time created_at = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();

  bool operator==(const AuthorizationSession&) const = default;
};

// Revocation at the target tool, after the local revocation.
enum class UpstreamRevocationState {
  kPending,         // not done yet: retried with backoff
  kRevoked,         // the provider confirmed it
  kAlreadyInvalid,  // the provider said the token was already gone
  kManual,          // the provider has no API: an admin must remove the app there
};
std::string_view UpstreamRevocationStateName(UpstreamRevocationState state);
absl::StatusOr<UpstreamRevocationState> ParseUpstreamRevocationState(std::string_view name);

struct UpstreamRevocation {
  std::string grant_id;
  UpstreamRevocationState state = UpstreamRevocationState::kPending;
  int attempts = 0;
  std::string last_error;  // the last failure (never a secret); empty once done
  absl::Time next_attempt_at = absl::InfinitePast();
  absl::Time updated_at = absl::InfinitePast();

  bool operator==(const UpstreamRevocation&) const = default;
};

// When a write's commit returns. kNow: once the disk has it (what every write
// does unless it says otherwise). kLater: once every reader sees it and it
// survives the death of the writing process; a power cut can still take it
// until a later synced write or SyncToDisk().
enum class Sync { kNow, kLater };

// The purpose of a grant's current access token as its last refresh left it,
// sealed, where several hosts share the store (LockGrantForRefresh). Removed
// with the grant's revocation.
inline constexpr char kSharedAccessTokenPurpose[] = "access_token.shared";

class GrantStore {
 public:
  virtual ~GrantStore() = default;

  // --- grants --------------------------------------------------------------
  // Inserts `grant` and its sealed secret in one transaction. When `replaces`
  // names a grant, that grant is marked revoked (reason "replaced by <id>") in
  // the same transaction. AlreadyExists when another non-revoked grant holds
  // (workspace, connector) or the id is taken. When `issued_under` is given
  // (the registration whose endpoints issued the tokens), the connector's
  // registration must still have its type, issuer, client id and parameters,
  // checked in the same transaction: FailedPrecondition when it was
  // re-registered meanwhile (see PutConnectorRegistration).
  virtual absl::Status InsertGrant(const Grant& grant, const SealedSecret& secret,
                                   std::optional<std::string> replaces = std::nullopt,
                                   const ConnectorRegistration* issued_under = nullptr) = 0;
  virtual absl::StatusOr<Grant> GetGrant(std::string_view grant_id) = 0;
  // The grant that is not revoked for (workspace, connector); NotFound if none.
  virtual absl::StatusOr<Grant> FindCurrentGrant(std::string_view workspace_id,
                                                 std::string_view connector_id) = 0;
  // All grants of a workspace (every status), oldest first.
  virtual absl::StatusOr<std::vector<Grant>> ListGrants(std::string_view workspace_id) = 0;
  // A revoked grant cannot change status again (FailedPrecondition).
  virtual absl::Status SetGrantStatus(std::string_view grant_id, GrantStatus status,
                                      std::string_view reason, absl::Time now) = 0;
  // Records when the grant's current access token expires (after a refresh)
  // and sets updated_at to `now`; the status is untouched. NotFound for an
  // unknown grant; FailedPrecondition for a revoked one.
  virtual absl::Status SetAccessTokenExpiry(std::string_view grant_id, absl::Time expires_at,
                                            absl::Time now) = 0;
  virtual absl::StatusOr<int64_t> CountGrants() = 0;
  // Marks the grant revoked with `reason` and records its upstream revocation
  // as pending, in one transaction. FailedPrecondition if already revoked.
  virtual absl::Status RevokeGrant(std::string_view grant_id, std::string_view reason,
                                   absl::Time now) = 0;

  // --- upstream revocations ------------------------------------------------
  virtual absl::Status PutUpstreamRevocation(const UpstreamRevocation& revocation) = 0;
  // NotFound when the grant was never revoked through RevokeGrant.
  virtual absl::StatusOr<UpstreamRevocation> GetUpstreamRevocation(std::string_view grant_id) = 0;
  // Every pending one, soonest next attempt first.
  virtual absl::StatusOr<std::vector<UpstreamRevocation>> ListPendingUpstreamRevocations() = 0;

  // --- sealed secrets ------------------------------------------------------
  // Inserts or replaces each secret under its key, all in one transaction
  // (all or none are written).
  virtual absl::Status PutSealedSecrets(absl::Span<const SealedSecret> secrets) = 0;
  absl::Status PutSealedSecret(const SealedSecret& secret) {
    return PutSealedSecrets({&secret, 1});
  }
  virtual absl::StatusOr<SealedSecret> GetSealedSecret(const SealedSecretKey& key) = 0;
  virtual absl::Status DeleteSealedSecret(const SealedSecretKey& key) = 0;
  // Applies every update whose row still holds its expected record, in one
  // transaction; returns how many were applied (the rest changed meanwhile).
  virtual absl::StatusOr<size_t> ReplaceSealedSecrets(
      absl::Span<const SealedSecretUpdate> updates) = 0;
  // The refresher's attempt marker (docs/refresh.md, "The crash window that
  // remains"): Grant::refresh_attempt_at set (unless it already is) before a
  // refresh request is sent, and cleared once its outcome is known. Both
  // unsynced (Sync::kLater): a marker lost to a power cut costs a less
  // precise reason later, never a token. NotFound for an unknown grant.
  virtual absl::Status MarkRefreshAttempt(std::string_view grant_id, absl::Time now) = 0;
  virtual absl::Status ClearRefreshAttempt(std::string_view grant_id) = 0;
  // What a successful refresh leaves in the store, in one transaction: the
  // rotated refresh token in place of the one sent (`rotation`, when the
  // server rotated it: compare-and-swap as ReplaceSealedSecrets), and, if that
  // applied or there was none, the attempt marker cleared and the grant's
  // access-token expiry recorded (unless the grant is revoked). Returns
  // whether the swap applied (true without a rotation); when it did not,
  // nothing is changed. With Sync::kLater the caller calls SyncToDisk() next
  // (the refresher does, once it has answered: docs/refresh.md, "Durability").
  virtual absl::StatusOr<bool> FinishRefresh(const std::optional<SealedSecretUpdate>& rotation,
                                             std::string_view grant_id,
                                             absl::Time access_expires_at, absl::Time now,
                                             Sync sync) = 0;
  // Waits until every write committed so far, unsynced ones included, is on
  // the disk.
  virtual absl::Status SyncToDisk() = 0;

  // --- refreshes across hosts (docs/refresh.md, "Several hosts") -----------
  // Held while one process refreshes a grant; released when destroyed.
  class RefreshLock {
   public:
    virtual ~RefreshLock() = default;
  };
  // Serialises the refreshes of `grant_id` across every process that shares
  // this store: the caller holds the returned lock for one refresh (re-read
  // the grant, send, commit) and destroys it. A holder that dies loses it
  // (the store says how soon). A store that only one process refreshes from
  // (SQLite) returns a lock that serialises nothing: the refresher's own
  // single flight does. DEADLINE_EXCEEDED when `deadline` passes first,
  // UNAVAILABLE when the database cannot be reached.
  virtual absl::StatusOr<std::unique_ptr<RefreshLock>> LockGrantForRefresh(
      std::string_view grant_id, absl::Time deadline);
  // Whether processes on other hosts share this store, so that what one
  // refreshes the others should use (the access token, sealed:
  // kSharedAccessTokenPurpose) rather than refresh again.
  virtual bool SharedAcrossHosts() const { return false; }

  // Up to `limit` secrets wrapped under `kek_label` whose key sorts after
  // `after` (or from the first when nullopt), ordered by key. Served by an
  // index on (kek_label, owner_id, purpose).
  virtual absl::StatusOr<std::vector<SealedSecret>> ListSealedSecretsUnder(
      std::string_view kek_label, const std::optional<SealedSecretKey>& after, size_t limit) = 0;
  // Number of sealed secrets per KEK label (labels with none are absent).
  virtual absl::StatusOr<std::map<std::string, int64_t>> CountSealedSecretsByKek() = 0;

  // --- connector registrations ---------------------------------------------
  // Inserts or replaces the registration and its sealed client secret in one
  // transaction (a replaced registration keeps its created_at).
  //
  // A replacement cannot redirect the refresh tokens of the grants that use
  // the connector: while any of its grants is active or reauth_required, or
  // has a revocation still pending at the provider, the connector type,
  // issuer, client id and parameters (which decide every endpoint a token is
  // sent to) must stay as they are: FailedPrecondition naming how many grants
  // stand in the way. Revoking them (and re-authorizing) comes first. The
  // client secret and the redirect URIs may always change.
  virtual absl::Status PutConnectorRegistration(const ConnectorRegistration& registration,
                                                const SealedSecret& client_secret) = 0;
  virtual absl::StatusOr<ConnectorRegistration> GetConnectorRegistration(
      std::string_view connector_id) = 0;
  // Ordered by connector id.
  virtual absl::StatusOr<std::vector<ConnectorRegistration>> ListConnectorRegistrations() = 0;

  // --- authorization sessions ----------------------------------------------
  // Stores a session and, when given, its sealed PKCE verifier, in one
  // transaction. FailedPrecondition if the connector is not registered.
  virtual absl::Status InsertAuthorizationSession(
      const AuthorizationSession& session, const std::optional<SealedSecret>& pkce_verifier) = 0;
  // A state is single use: deletes the session (and its verifier) and
  // returns them, in one transaction. NotFound for an unknown or already used
  // state; FailedPrecondition for an expired one (deleted as well).
  struct ConsumedSession {
    AuthorizationSession session;
    std::optional<SealedSecret> pkce_verifier;
  };
  virtual absl::StatusOr<ConsumedSession> ConsumeAuthorizationSession(std::string_view session_id,
                                                                      absl::Time now) = 0;
  // Deletes sessions that expired before `now`; returns how many.
  virtual absl::StatusOr<int64_t> DeleteExpiredAuthorizationSessions(absl::Time now) = 0;

  // --- key versions --------------------------------------------------------
  // AlreadyExists if the version or label exists.
  virtual absl::Status AddKeyVersion(const KeyVersion& key) = 0;
  // Ordered by version.
  virtual absl::StatusOr<std::vector<KeyVersion>> ListKeyVersions() = 0;
  // Makes `version` the only active key (the previously active one becomes
  // inactive) in one transaction. NotFound / FailedPrecondition if retired.
  virtual absl::Status ActivateKeyVersion(int version) = 0;
  // Marks `version` retired. FailedPrecondition, naming the count, while any
  // sealed secret names it, or if it is the active key. After this no sealed
  // secret can be written under it (enforced by the database itself).
  virtual absl::Status RetireKeyVersion(int version, absl::Time now) = 0;
};

}  // namespace grantvault::store

#endif  // GRANTVAULT_STORE_GRANT_STORE_H_
