#include <sqlite3.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "common/strings.h"
#include "db/postgres.h"
#include "db/sqlite.h"
#include "store/grant_store.h"
#include "store/postgres_grant_store.h"
#include "store/sqlite_grant_store.h"
#include "store/sqlite_grant_store_internal.h"

namespace grantvault::store {
namespace {

using db::Statement;
using db::Transaction;

// --- schema ------------------------------------------------------------------
//
// Applied in order by db::Migrate, each in its own BEGIN IMMEDIATE
// transaction, and recorded in schema_migrations. Never edit a released
// migration: append a new one. Times are unix microseconds.

constexpr db::Migration kSqliteMigrations[] = {
    {1, R"sql(
CREATE TABLE key_versions (
  version INTEGER PRIMARY KEY,
  label TEXT NOT NULL UNIQUE,
  key_id_hex TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active', 'inactive', 'retired')),
  created_at INTEGER NOT NULL,
  retired_at INTEGER,
  CHECK ((state = 'retired') = (retired_at IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX key_versions_one_active ON key_versions (state) WHERE state = 'active';

CREATE TABLE sealed_secrets (
  owner_id TEXT NOT NULL,
  purpose TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL,
  account_id TEXT NOT NULL,
  kek_label TEXT NOT NULL REFERENCES key_versions (label),
  record BLOB NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (owner_id, purpose)
) STRICT, WITHOUT ROWID;

CREATE INDEX sealed_secrets_by_kek ON sealed_secrets (kek_label, owner_id, purpose);

CREATE TRIGGER sealed_secrets_insert_refuses_retired_kek
BEFORE INSERT ON sealed_secrets
WHEN EXISTS (SELECT 1 FROM key_versions WHERE label = NEW.kek_label AND state = 'retired')
BEGIN
  SELECT RAISE(ABORT, 'sealed secrets cannot be written under a retired key version');
END;

CREATE TRIGGER sealed_secrets_update_refuses_retired_kek
BEFORE UPDATE OF kek_label ON sealed_secrets
WHEN EXISTS (SELECT 1 FROM key_versions WHERE label = NEW.kek_label AND state = 'retired')
BEGIN
  SELECT RAISE(ABORT, 'sealed secrets cannot be written under a retired key version');
END;

CREATE TRIGGER key_versions_retired_is_final
BEFORE UPDATE OF state ON key_versions
WHEN OLD.state = 'retired' AND NEW.state <> 'retired'
BEGIN
  SELECT RAISE(ABORT, 'a retired key version cannot be used again');
END;

CREATE TRIGGER key_versions_retire_only_unused
BEFORE UPDATE OF state ON key_versions
WHEN NEW.state = 'retired' AND EXISTS (SELECT 1 FROM sealed_secrets WHERE kek_label = NEW.label)
BEGIN
  SELECT RAISE(ABORT, 'a key version that still wraps sealed secrets cannot be retired');
END;
)sql"},
    {2, R"sql(
CREATE TABLE grants (
  grant_id TEXT PRIMARY KEY NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL,
  connector_type TEXT NOT NULL,
  account_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('active', 'reauth_required', 'revoked')),
  status_reason TEXT NOT NULL,
  authorized_by TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  access_token_expires_at INTEGER
) STRICT;

CREATE UNIQUE INDEX grants_one_current_per_connector
  ON grants (workspace_id, connector_id) WHERE status <> 'revoked';

CREATE INDEX grants_by_workspace ON grants (workspace_id, created_at);

CREATE TRIGGER grants_revoked_is_final
BEFORE UPDATE OF status, status_reason ON grants
WHEN OLD.status = 'revoked'
BEGIN
  SELECT RAISE(ABORT, 'a revoked grant cannot change status');
END;

CREATE TABLE grant_scopes (
  grant_id TEXT NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  scope TEXT NOT NULL,
  PRIMARY KEY (grant_id, position)
) STRICT, WITHOUT ROWID;

CREATE TABLE grant_metadata (
  grant_id TEXT NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (grant_id, name)
) STRICT, WITHOUT ROWID;
)sql"},
    {3, R"sql(
CREATE TABLE connector_registrations (
  connector_id TEXT PRIMARY KEY NOT NULL,
  connector_type TEXT NOT NULL,
  client_id TEXT NOT NULL,
  issuer TEXT NOT NULL,
  registered_by TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE connector_parameters (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (connector_id, name)
) STRICT, WITHOUT ROWID;

-- A state is looked up by its SHA-256; scopes are space-separated (RFC 6749
-- scope tokens cannot contain spaces).
CREATE TABLE authorization_sessions (
  session_id TEXT PRIMARY KEY NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id),
  scopes TEXT NOT NULL,
  admin_user TEXT NOT NULL,
  redirect_uri TEXT NOT NULL,
  nonce TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX authorization_sessions_by_expiry ON authorization_sessions (expires_at);
)sql"},
    {4, R"sql(
-- Revocation at the provider, after the local one (DESIGN §7 "Revoke"):
-- retried in the background until it is done; never blocks the local one.
CREATE TABLE upstream_revocations (
  grant_id TEXT PRIMARY KEY NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  state TEXT NOT NULL CHECK (state IN ('pending', 'revoked', 'already_invalid', 'manual')),
  attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  next_attempt_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX upstream_revocations_pending ON upstream_revocations (state, next_attempt_at);
)sql"},
    {5, R"sql(
-- The redirect URIs registered for a connector's client at the provider, in
-- order; Begin accepts only these (none: the CLI's loopback listener).
CREATE TABLE connector_redirect_uris (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  uri TEXT NOT NULL,
  PRIMARY KEY (connector_id, position)
) STRICT, WITHOUT ROWID;

CREATE INDEX grants_by_connector ON grants (connector_id, status);
)sql"},
    {6, R"sql(
-- The refresher's attempt marker (docs/refresh.md, "The crash window that
-- remains"): since when a refresh request whose outcome is not known was sent.
-- It holds no secret; it was a sealed secret of purpose 'refresh_attempt'.
ALTER TABLE grants ADD COLUMN refresh_attempt_at INTEGER;
UPDATE grants SET refresh_attempt_at = (
  SELECT s.updated_at FROM sealed_secrets s
  WHERE s.owner_id = grants.grant_id AND s.purpose = 'refresh_attempt');
DELETE FROM sealed_secrets WHERE purpose = 'refresh_attempt';
)sql"},
    {7, R"sql(
-- Where the proxy may send a connector's API calls, when its catalog type
-- names no API bases (oidc), in order; and whether they may be on a private
-- network (docs/proxy.md).
CREATE TABLE connector_api_bases (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  url TEXT NOT NULL,
  PRIMARY KEY (connector_id, position)
) STRICT, WITHOUT ROWID;
ALTER TABLE connector_registrations
  ADD COLUMN allow_private_network INTEGER NOT NULL DEFAULT 0 CHECK (allow_private_network IN (0, 1));
)sql"},
};

constexpr int kLatestSchemaVersion = kSqliteMigrations[std::size(kSqliteMigrations) - 1].version;

// The same schema on PostgreSQL. Its history starts at the schema above as it
// stands at SQLite version 7: no PostgreSQL database predates it. Integers are
// BIGINT (times are microseconds), blobs BYTEA; the triggers' checks are
// PL/pgSQL functions (a trigger's WHEN cannot hold a subquery there).
constexpr db::Migration kPostgresMigrations[] = {
    {1, R"sql(
CREATE FUNCTION gv_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;

CREATE TABLE key_versions (
  version BIGINT PRIMARY KEY,
  label TEXT NOT NULL UNIQUE,
  key_id_hex TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active', 'inactive', 'retired')),
  created_at BIGINT NOT NULL,
  retired_at BIGINT,
  CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);

CREATE UNIQUE INDEX key_versions_one_active ON key_versions (state) WHERE state = 'active';

CREATE TABLE sealed_secrets (
  owner_id TEXT NOT NULL,
  purpose TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL,
  account_id TEXT NOT NULL,
  kek_label TEXT NOT NULL REFERENCES key_versions (label),
  record BYTEA NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (owner_id, purpose)
);

CREATE INDEX sealed_secrets_by_kek ON sealed_secrets (kek_label, owner_id, purpose);

CREATE FUNCTION gv_sealed_secrets_refuse_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM key_versions WHERE label = NEW.kek_label AND state = 'retired') THEN
    RAISE EXCEPTION 'sealed secrets cannot be written under a retired key version';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER sealed_secrets_insert_refuses_retired_kek BEFORE INSERT ON sealed_secrets
FOR EACH ROW EXECUTE FUNCTION gv_sealed_secrets_refuse_retired_kek();

CREATE TRIGGER sealed_secrets_update_refuses_retired_kek BEFORE UPDATE OF kek_label
ON sealed_secrets FOR EACH ROW EXECUTE FUNCTION gv_sealed_secrets_refuse_retired_kek();

CREATE TRIGGER key_versions_retired_is_final BEFORE UPDATE OF state ON key_versions
FOR EACH ROW WHEN (OLD.state = 'retired' AND NEW.state <> 'retired')
EXECUTE FUNCTION gv_refuse('a retired key version cannot be used again');

CREATE FUNCTION gv_key_versions_retire_only_unused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM sealed_secrets WHERE kek_label = NEW.label) THEN
    RAISE EXCEPTION 'a key version that still wraps sealed secrets cannot be retired';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER key_versions_retire_only_unused BEFORE UPDATE OF state ON key_versions
FOR EACH ROW WHEN (NEW.state = 'retired')
EXECUTE FUNCTION gv_key_versions_retire_only_unused();

CREATE TABLE grants (
  grant_id TEXT PRIMARY KEY NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL,
  connector_type TEXT NOT NULL,
  account_id TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('active', 'reauth_required', 'revoked')),
  status_reason TEXT NOT NULL,
  authorized_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  access_token_expires_at BIGINT,
  refresh_attempt_at BIGINT
);

CREATE UNIQUE INDEX grants_one_current_per_connector
  ON grants (workspace_id, connector_id) WHERE status <> 'revoked';
CREATE INDEX grants_by_workspace ON grants (workspace_id, created_at);
CREATE INDEX grants_by_connector ON grants (connector_id, status);

CREATE TRIGGER grants_revoked_is_final BEFORE UPDATE OF status, status_reason ON grants
FOR EACH ROW WHEN (OLD.status = 'revoked')
EXECUTE FUNCTION gv_refuse('a revoked grant cannot change status');

CREATE TABLE grant_scopes (
  grant_id TEXT NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  position BIGINT NOT NULL,
  scope TEXT NOT NULL,
  PRIMARY KEY (grant_id, position)
);

CREATE TABLE grant_metadata (
  grant_id TEXT NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (grant_id, name)
);

CREATE TABLE connector_registrations (
  connector_id TEXT PRIMARY KEY NOT NULL,
  connector_type TEXT NOT NULL,
  client_id TEXT NOT NULL,
  issuer TEXT NOT NULL,
  registered_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  allow_private_network BIGINT NOT NULL DEFAULT 0 CHECK (allow_private_network IN (0, 1))
);

CREATE TABLE connector_parameters (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (connector_id, name)
);

CREATE TABLE connector_redirect_uris (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  position BIGINT NOT NULL,
  uri TEXT NOT NULL,
  PRIMARY KEY (connector_id, position)
);

CREATE TABLE connector_api_bases (
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id) ON DELETE CASCADE,
  position BIGINT NOT NULL,
  url TEXT NOT NULL,
  PRIMARY KEY (connector_id, position)
);

CREATE TABLE authorization_sessions (
  session_id TEXT PRIMARY KEY NOT NULL,
  workspace_id TEXT NOT NULL,
  connector_id TEXT NOT NULL REFERENCES connector_registrations (connector_id),
  scopes TEXT NOT NULL,
  admin_user TEXT NOT NULL,
  redirect_uri TEXT NOT NULL,
  nonce TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);

CREATE INDEX authorization_sessions_by_expiry ON authorization_sessions (expires_at);

CREATE TABLE upstream_revocations (
  grant_id TEXT PRIMARY KEY NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
  state TEXT NOT NULL CHECK (state IN ('pending', 'revoked', 'already_invalid', 'manual')),
  attempts BIGINT NOT NULL,
  last_error TEXT NOT NULL,
  next_attempt_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

CREATE INDEX upstream_revocations_pending ON upstream_revocations (state, next_attempt_at);
)sql"},
    // The changes other hosts must hear of (docs/operations.md, "Several
    // hosts"): a grant inserted, or its status changed, is logged in commit
    // order and announced on the channel grantvault_grant_changes. The
    // transaction-scoped lock orders the log's numbers as the commits: a
    // reader that has seen change N has seen every change before it.
    // grantvault.origin names the host that made the change (its sessions set
    // it), so that a host skips its own.
    {2, R"sql(
CREATE TABLE grant_changes (
  seq BIGSERIAL PRIMARY KEY,
  grant_id TEXT NOT NULL,
  origin TEXT NOT NULL,
  changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX grant_changes_by_time ON grant_changes (changed_at);

CREATE FUNCTION gv_note_grant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(29111713315631731);
  INSERT INTO grant_changes (grant_id, origin)
    VALUES (NEW.grant_id, coalesce(current_setting('grantvault.origin', true), ''));
  PERFORM pg_notify('grantvault_grant_changes', '');
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER grants_inserted AFTER INSERT ON grants
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gv_note_grant_change();
CREATE CONSTRAINT TRIGGER grants_status_changed AFTER UPDATE ON grants
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION gv_note_grant_change();
)sql"},
};

// --- validation --------------------------------------------------------------

absl::Status RequireNonEmpty(std::string_view value, std::string_view what) {
  if (value.empty())
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " must not be empty"));
  return absl::OkStatus();
}

absl::Status ValidateGrant(const Grant& grant) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(grant.grant_id, "grant id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(grant.workspace_id, "grant workspace id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(grant.connector_id, "grant connector id"));
  return absl::OkStatus();
}

absl::Status ValidateSecretKey(const SealedSecretKey& key) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(key.owner_id, "sealed secret owner id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(key.purpose, "sealed secret purpose"));
  return absl::OkStatus();
}

absl::Status ValidateSecret(const SealedSecret& secret) {
  GV_RETURN_IF_ERROR(ValidateSecretKey(secret.key));
  GV_RETURN_IF_ERROR(RequireNonEmpty(secret.kek_label, "sealed secret kek label"));
  if (secret.record.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sealed secret ", secret.key.owner_id, "/",
                                                   secret.key.purpose, " has an empty record"));
  }
  return absl::OkStatus();
}

// A compare-and-swap of one sealed secret's record (rewrap, rotation): it
// applies only while the row still holds `expected_record`.
constexpr char kReplaceSecretSql[] =
    "UPDATE sealed_secrets SET kek_label = ?, record = ?, updated_at = ? "
    "WHERE owner_id = ? AND purpose = ? AND record = ?";
constexpr char kDeleteSecretSql[] = "DELETE FROM sealed_secrets WHERE owner_id = ? AND purpose = ?";

std::string SecretName(const SealedSecretKey& key) {
  return absl::StrCat(key.owner_id, "/", key.purpose);
}

absl::Status ValidateSecretUpdate(const SealedSecretUpdate& update) {
  GV_RETURN_IF_ERROR(ValidateSecretKey(update.key));
  GV_RETURN_IF_ERROR(RequireNonEmpty(update.new_kek_label, "new kek label"));
  if (update.new_record.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the new record for sealed secret ", SecretName(update.key), " is empty"));
  }
  return absl::OkStatus();
}

// Binds `update` to a statement of kReplaceSecretSql.
void BindSecretUpdate(Statement& replace, const SealedSecretUpdate& update, absl::Time now) {
  replace.BindText(1, update.new_kek_label);
  replace.BindBlob(2, update.new_record);
  replace.BindTime(3, now);
  replace.BindText(4, update.key.owner_id);
  replace.BindText(5, update.key.purpose);
  replace.BindBlob(6, update.expected_record);
}

// --- rows --------------------------------------------------------------------

constexpr char kGrantColumns[] =
    "grant_id, workspace_id, connector_id, connector_type, account_id, status, status_reason, "
    "authorized_by, created_at, updated_at, access_token_expires_at, refresh_attempt_at";

absl::StatusOr<Grant> ReadGrantRow(const Statement& row) {
  Grant grant;
  grant.grant_id = row.Text(0);
  grant.workspace_id = row.Text(1);
  grant.connector_id = row.Text(2);
  grant.connector_type = row.Text(3);
  grant.account_id = row.Text(4);
  GV_ASSIGN_OR_RETURN(grant.status, ParseGrantStatus(row.Text(5)));
  grant.status_reason = row.Text(6);
  grant.authorized_by = row.Text(7);
  grant.created_at = row.Time(8);
  grant.updated_at = row.Time(9);
  grant.access_token_expires_at = row.OptionalTime(10);
  grant.refresh_attempt_at = row.OptionalTime(11);
  return grant;
}

absl::Status LoadScopesAndMetadata(db::Connection& db, Grant& grant) {
  GV_ASSIGN_OR_RETURN(
      Statement scopes,
      db.Prepare("SELECT scope FROM grant_scopes WHERE grant_id = ? ORDER BY position",
                 absl::StrCat("read scopes of grant ", grant.grant_id)));
  scopes.BindText(1, grant.grant_id);
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, scopes.Step());
    if (!row) break;
    grant.scopes.push_back(scopes.Text(0));
  }
  GV_ASSIGN_OR_RETURN(Statement metadata,
                      db.Prepare("SELECT name, value FROM grant_metadata WHERE grant_id = ?",
                                 absl::StrCat("read metadata of grant ", grant.grant_id)));
  metadata.BindText(1, grant.grant_id);
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, metadata.Step());
    if (!row) break;
    grant.metadata.emplace(metadata.Text(0), metadata.Text(1));
  }
  return absl::OkStatus();
}

// Runs a prepared SELECT of kGrantColumns and completes every grant it returns.
absl::StatusOr<std::vector<Grant>> SelectGrants(db::Connection& db, Statement& query) {
  std::vector<Grant> grants;
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    GV_ASSIGN_OR_RETURN(Grant grant, ReadGrantRow(query));
    grants.push_back(std::move(grant));
  }
  for (Grant& grant : grants) GV_RETURN_IF_ERROR(LoadScopesAndMetadata(db, grant));
  return grants;
}

// What of a registration decides where its grants' tokens are sent (every
// endpoint, the client they were issued to, and where the proxy sends access
// tokens) and differs between `a` and its successor `b`, by name. The API
// bases may shrink and the private network be closed: that sends tokens to
// fewer places, never to new ones.
std::vector<std::string> EndpointFieldsChanged(const ConnectorRegistration& a,
                                               const ConnectorRegistration& b) {
  std::vector<std::string> changed;
  if (a.connector_type != b.connector_type) changed.push_back("type");
  if (a.issuer != b.issuer) changed.push_back("issuer");
  if (a.client_id != b.client_id) changed.push_back("client id");
  if (a.parameters != b.parameters) changed.push_back("parameters");
  const bool bases_added = std::any_of(b.api_bases.begin(), b.api_bases.end(), [&](const auto& u) {
    return std::find(a.api_bases.begin(), a.api_bases.end(), u) == a.api_bases.end();
  });
  if (bases_added) changed.push_back("API bases (added)");
  if (b.allow_private_network && !a.allow_private_network) changed.push_back("private network");
  return changed;
}

absl::Status InsertGrantRows(db::Connection& db, const Grant& grant) {
  std::string context = absl::StrCat("insert grant ", grant.grant_id);
  GV_ASSIGN_OR_RETURN(Statement insert,
                      db.Prepare(absl::StrCat("INSERT INTO grants (", kGrantColumns,
                                              ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                                 context));
  insert.BindText(1, grant.grant_id);
  insert.BindText(2, grant.workspace_id);
  insert.BindText(3, grant.connector_id);
  insert.BindText(4, grant.connector_type);
  insert.BindText(5, grant.account_id);
  insert.BindText(6, GrantStatusName(grant.status));
  insert.BindText(7, grant.status_reason);
  insert.BindText(8, grant.authorized_by);
  insert.BindTime(9, grant.created_at);
  insert.BindTime(10, grant.updated_at);
  insert.BindOptionalTime(11, grant.access_token_expires_at);
  insert.BindOptionalTime(12, grant.refresh_attempt_at);
  GV_RETURN_IF_ERROR(insert.Run());

  GV_ASSIGN_OR_RETURN(
      Statement scope,
      db.Prepare("INSERT INTO grant_scopes (grant_id, position, scope) VALUES (?, ?, ?)", context));
  int64_t position = 0;
  for (const std::string& s : grant.scopes) {
    scope.Reset();
    scope.BindText(1, grant.grant_id);
    scope.BindInt(2, position++);
    scope.BindText(3, s);
    GV_RETURN_IF_ERROR(scope.Run());
  }

  GV_ASSIGN_OR_RETURN(
      Statement metadata,
      db.Prepare("INSERT INTO grant_metadata (grant_id, name, value) VALUES (?, ?, ?)", context));
  for (const auto& [name, value] : grant.metadata) {
    metadata.Reset();
    metadata.BindText(1, grant.grant_id);
    metadata.BindText(2, name);
    metadata.BindText(3, value);
    GV_RETURN_IF_ERROR(metadata.Run());
  }
  return absl::OkStatus();
}

constexpr char kSecretColumns[] =
    "owner_id, purpose, workspace_id, connector_id, account_id, kek_label, record, updated_at";

SealedSecret ReadSecretRow(const Statement& row) {
  SealedSecret secret;
  secret.key.owner_id = row.Text(0);
  secret.key.purpose = row.Text(1);
  secret.workspace_id = row.Text(2);
  secret.connector_id = row.Text(3);
  secret.account_id = row.Text(4);
  secret.kek_label = row.Text(5);
  secret.record = row.Blob(6);
  secret.updated_at = row.Time(7);
  return secret;
}

enum class OnConflict { kFail, kReplace };

absl::Status WriteSecretRow(db::Connection& db, const SealedSecret& secret,
                            OnConflict on_conflict) {
  std::string sql = absl::StrCat("INSERT INTO sealed_secrets (", kSecretColumns,
                                 ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  if (on_conflict == OnConflict::kReplace) {
    absl::StrAppend(&sql,
                    " ON CONFLICT (owner_id, purpose) DO UPDATE SET"
                    " workspace_id = excluded.workspace_id,"
                    " connector_id = excluded.connector_id,"
                    " account_id = excluded.account_id,"
                    " kek_label = excluded.kek_label,"
                    " record = excluded.record,"
                    " updated_at = excluded.updated_at");
  }
  GV_ASSIGN_OR_RETURN(Statement insert,
                      db.Prepare(sql, absl::StrCat("write sealed secret ", SecretName(secret.key),
                                                   " under ", secret.kek_label)));
  insert.BindText(1, secret.key.owner_id);
  insert.BindText(2, secret.key.purpose);
  insert.BindText(3, secret.workspace_id);
  insert.BindText(4, secret.connector_id);
  insert.BindText(5, secret.account_id);
  insert.BindText(6, secret.kek_label);
  insert.BindBlob(7, secret.record);
  insert.BindTime(8, secret.updated_at);
  return insert.Run();
}

// Refuses, with a clear message, a KEK label that names no key version or a
// retired one. The schema enforces the same (foreign key, triggers); this only
// explains it better. Call inside the writing transaction.
absl::Status CheckKekWritable(db::Connection& db, std::string_view kek_label) {
  GV_ASSIGN_OR_RETURN(Statement query,
                      db.Prepare("SELECT version, state FROM key_versions WHERE label = ?",
                                 absl::StrCat("look up key version ", Sv(kek_label))));
  query.BindText(1, kek_label);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) {
    return absl::FailedPreconditionError(
        absl::StrCat("no key version is labelled \"", Sv(kek_label), "\""));
  }
  if (query.Text(1) == KeyStateName(KeyState::kRetired)) {
    return absl::FailedPreconditionError(absl::StrCat("key version ", query.Int(0), " (",
                                                      Sv(kek_label),
                                                      ") is retired; seal under the active key"));
  }
  return absl::OkStatus();
}

// The access token that hosts sharing the store would have used goes with a
// revoked grant.
absl::Status DeleteSharedAccessToken(db::Connection& db, std::string_view grant_id,
                                     const std::string& context) {
  GV_ASSIGN_OR_RETURN(Statement remove, db.Prepare(kDeleteSecretSql, context));
  remove.BindText(1, grant_id);
  remove.BindText(2, kSharedAccessTokenPurpose);
  return remove.Run();
}

// --- refresh locks on PostgreSQL ---------------------------------------------

// Connections that hold refresh locks: each lock is a transaction-scoped
// advisory lock (pg_advisory_xact_lock) in an open transaction of its own
// connection, released by ROLLBACK when the holder is done and by the server
// when the holder's connection ends. A holder that dies loses it as soon as
// the server sees its connection end: at once when its process dies (its
// kernel closes the socket), within about 25 s when its host vanishes (the
// server's TCP keepalives and user timeout, set on these connections), and a
// holder that hangs loses it after `lease` without a statement
// (idle_in_transaction_session_timeout).
// The first key of every refresh lock (pg_advisory_xact_lock(int4, int4));
// the second is the grant id's hashtext.
constexpr int32_t kRefreshLockClass = 0x67760001;

class RefreshLockPool {
 public:
  RefreshLockPool(db::PostgresOptions options, size_t max_connections, absl::Duration lease)
      : options_(std::move(options)), max_(max_connections), lease_(lease) {
    options_.owner = "grant store (refresh locks)";
  }

  absl::StatusOr<std::unique_ptr<GrantStore::RefreshLock>> Lock(std::string_view grant_id,
                                                                absl::Time deadline);

 private:
  class Held;

  // A connection of the pool, or DEADLINE_EXCEEDED once `deadline` passes
  // with all of them in use.
  absl::StatusOr<std::unique_ptr<db::Postgres>> Take(absl::Time deadline);
  void Return(std::unique_ptr<db::Postgres> connection);

  db::PostgresOptions options_;
  const size_t max_;
  const absl::Duration lease_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<db::Postgres>> idle_ ABSL_GUARDED_BY(mu_);
  size_t open_ ABSL_GUARDED_BY(mu_) = 0;  // idle and in use
};

class RefreshLockPool::Held final : public GrantStore::RefreshLock {
 public:
  Held(RefreshLockPool* pool, std::unique_ptr<db::Postgres> connection)
      : pool_(pool), connection_(std::move(connection)) {}
  ~Held() override {
    connection_->RollBackIfOpen();  // releases the lock
    pool_->Return(std::move(connection_));
  }

 private:
  RefreshLockPool* const pool_;
  std::unique_ptr<db::Postgres> connection_;
};

absl::StatusOr<std::unique_ptr<db::Postgres>> RefreshLockPool::Take(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < max_;
    };
    if (!mu_.AwaitWithDeadline(absl::Condition(&available), deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "grant store: all ", max_, " refresh-lock connections stayed in use until the deadline"));
    }
    if (!idle_.empty()) {
      std::unique_ptr<db::Postgres> connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
    ++open_;
  }
  absl::StatusOr<std::unique_ptr<db::Postgres>> connected = db::Postgres::Connect(options_);
  if (connected.ok()) {
    // The server's side of a lost client: keepalives and the user timeout
    // (TCP only; ignored on a Unix socket).
    absl::Status set = (*connected)
                           ->Exec(
                               "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                               "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000",
                               "set the refresh-lock connection's keepalives");
    if (set.ok()) return connected;
    connected = set;
  }
  absl::MutexLock lock(&mu_);
  --open_;
  return connected.status();
}

void RefreshLockPool::Return(std::unique_ptr<db::Postgres> connection) {
  absl::MutexLock lock(&mu_);
  if (connection->Healthy() && !connection->InTransaction()) {
    idle_.push_back(std::move(connection));
  } else {
    --open_;  // a lost connection is not kept
  }
}

absl::StatusOr<std::unique_ptr<GrantStore::RefreshLock>> RefreshLockPool::Lock(
    std::string_view grant_id, absl::Time deadline) {
  GV_ASSIGN_OR_RETURN(std::unique_ptr<db::Postgres> connection, Take(deadline));
  const std::string context = absl::StrCat("lock grant ", Sv(grant_id), " for its refresh");
  const int64_t wait_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(deadline - absl::Now()));
  absl::Status locked = connection->Exec("BEGIN", context);
  if (locked.ok()) {
    // Settings of this transaction alone: the wait is the caller's, the lease
    // the lock's.
    locked = connection->Exec(absl::StrCat("SET LOCAL lock_timeout = ", wait_ms,
                                           "; SET LOCAL idle_in_transaction_session_timeout = ",
                                           std::max<int64_t>(1, absl::ToInt64Milliseconds(lease_)))
                                  .c_str(),
                              context);
  }
  if (locked.ok()) {
    // Two int4 keys: their own key space, apart from the migrations' int8 lock.
    absl::StatusOr<db::Statement> take = connection->Prepare(
        absl::StrCat("SELECT pg_advisory_xact_lock(", kRefreshLockClass, ", hashtext(?))"),
        context);
    if (take.ok()) {
      take->BindText(1, grant_id);
      locked = take->Step().status();  // one row, of type void
    } else {
      locked = take.status();
    }
  }
  if (!locked.ok()) {
    connection->RollBackIfOpen();
    Return(std::move(connection));
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("grant store: grant ", Sv(grant_id),
                       " stayed locked by another host's refresh until "
                       "the deadline"));
    }
    return locked;
  }
  return std::make_unique<Held>(this, std::move(connection));
}

// --- the store ---------------------------------------------------------------

class SqlGrantStore final : public GrantStore {
 public:
  // `sqlite` or `postgres` is the same connection as `db`, the other null:
  // for what only one backend has (SQLite's deferred syncs, a server's
  // reconnect).
  SqlGrantStore(std::unique_ptr<db::Connection> db, db::Sqlite* sqlite, db::Postgres* postgres,
                std::unique_ptr<RefreshLockPool> refresh_locks = nullptr)
      : db_(std::move(db)),
        sqlite_(sqlite),
        postgres_(postgres),
        refresh_locks_(std::move(refresh_locks)) {}

  absl::StatusOr<std::unique_ptr<RefreshLock>> LockGrantForRefresh(std::string_view grant_id,
                                                                   absl::Time deadline) override {
    if (refresh_locks_ == nullptr) return GrantStore::LockGrantForRefresh(grant_id, deadline);
    return refresh_locks_->Lock(grant_id, deadline);
  }
  bool SharedAcrossHosts() const override { return postgres_ != nullptr; }

  absl::Status InsertGrant(const Grant& grant, const SealedSecret& secret,
                           std::optional<std::string> replaces,
                           const ConnectorRegistration* issued_under) override;
  absl::StatusOr<Grant> GetGrant(std::string_view grant_id) override;
  absl::StatusOr<Grant> FindCurrentGrant(std::string_view workspace_id,
                                         std::string_view connector_id) override;
  absl::StatusOr<std::vector<Grant>> ListGrants(std::string_view workspace_id) override;
  absl::Status SetGrantStatus(std::string_view grant_id, GrantStatus status,
                              std::string_view reason, absl::Time now) override;
  absl::Status SetAccessTokenExpiry(std::string_view grant_id, absl::Time expires_at,
                                    absl::Time now) override;
  absl::StatusOr<int64_t> CountGrants() override;
  absl::Status RevokeGrant(std::string_view grant_id, std::string_view reason,
                           absl::Time now) override;
  absl::Status PutUpstreamRevocation(const UpstreamRevocation& revocation) override;
  absl::StatusOr<UpstreamRevocation> GetUpstreamRevocation(std::string_view grant_id) override;
  absl::StatusOr<std::vector<UpstreamRevocation>> ListPendingUpstreamRevocations() override;

  absl::Status PutSealedSecrets(absl::Span<const SealedSecret> secrets) override;
  absl::StatusOr<SealedSecret> GetSealedSecret(const SealedSecretKey& key) override;
  absl::Status DeleteSealedSecret(const SealedSecretKey& key) override;
  absl::StatusOr<size_t> ReplaceSealedSecrets(
      absl::Span<const SealedSecretUpdate> updates) override;
  absl::Status MarkRefreshAttempt(std::string_view grant_id, absl::Time now) override;
  absl::Status ClearRefreshAttempt(std::string_view grant_id) override;
  absl::StatusOr<bool> FinishRefresh(const std::optional<SealedSecretUpdate>& rotation,
                                     std::string_view grant_id, absl::Time access_expires_at,
                                     absl::Time now, Sync sync) override;
  absl::Status SyncToDisk() override;
  absl::StatusOr<std::vector<SealedSecret>> ListSealedSecretsUnder(
      std::string_view kek_label, const std::optional<SealedSecretKey>& after,
      size_t limit) override;
  absl::StatusOr<std::map<std::string, int64_t>> CountSealedSecretsByKek() override;

  absl::Status PutConnectorRegistration(const ConnectorRegistration& registration,
                                        const SealedSecret& client_secret) override;
  absl::StatusOr<ConnectorRegistration> GetConnectorRegistration(
      std::string_view connector_id) override;
  absl::StatusOr<std::vector<ConnectorRegistration>> ListConnectorRegistrations() override;
  absl::Status InsertAuthorizationSession(
      const AuthorizationSession& session,
      const std::optional<SealedSecret>& pkce_verifier) override;
  absl::StatusOr<ConsumedSession> ConsumeAuthorizationSession(std::string_view session_id,
                                                              absl::Time now) override;
  absl::StatusOr<int64_t> DeleteExpiredAuthorizationSessions(absl::Time now) override;

  absl::Status AddKeyVersion(const KeyVersion& key) override;
  absl::StatusOr<std::vector<KeyVersion>> ListKeyVersions() override;
  absl::Status ActivateKeyVersion(int version) override;
  absl::Status RetireKeyVersion(int version, absl::Time now) override;

  absl::StatusOr<std::string> ExecuteSqlForTesting(std::string_view sql);

 private:
  // The connection. On PostgreSQL, connected again first when the server was
  // lost outside a transaction: the call that met the loss failed with
  // UNAVAILABLE, a later one reconnects (and fails the same way while the
  // server is still away).
  db::Connection& db() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (postgres_ != nullptr && !postgres_->Healthy() && !postgres_->InTransaction()) {
      (void)postgres_->Reconnect();  // a failure shows as the next statement's error
    }
    return *db_;
  }

  absl::Status RevokeReplacedGrant(std::string_view replaced_id, const Grant& successor)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // NotFound unless the grant exists; FailedPrecondition(`if_revoked`) when
  // it is revoked (a revoked grant is final). Inside the caller's transaction.
  absl::Status RequireNotRevoked(std::string_view grant_id, const std::string& context,
                                 std::string if_revoked) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FailedPrecondition when replacing the stored registration with
  // `registration` would move the tokens of grants that still use it.
  absl::Status CheckRegistrationChange(const ConnectorRegistration& registration)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<ConnectorRegistration>> SelectRegistrations(
      std::optional<std::string_view> connector_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Runs `write` (a transaction) with its commit synced as `sync` says.
  template <typename Write>
  auto WithSync(Sync sync, Write write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> decltype(write());

  // One connection, used by one thread at a time.
  absl::Mutex mu_;
  std::unique_ptr<db::Connection> db_ ABSL_GUARDED_BY(mu_);
  db::Sqlite* const sqlite_;                              // db_ on SQLite, else null
  db::Postgres* const postgres_;                          // db_ on PostgreSQL, else null
  const std::unique_ptr<RefreshLockPool> refresh_locks_;  // on PostgreSQL, else null
};

// --- grants ------------------------------------------------------------------

absl::Status SqlGrantStore::RevokeReplacedGrant(std::string_view replaced_id,
                                                const Grant& successor) {
  std::string context =
      absl::StrCat("revoke grant ", Sv(replaced_id), " replaced by ", successor.grant_id);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare("SELECT workspace_id, connector_id, status FROM grants WHERE grant_id = ?",
                   context));
  query.BindText(1, replaced_id);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("grant ", Sv(replaced_id), " to be replaced by ",
                                            successor.grant_id, " does not exist"));
  }
  if (query.Text(0) != successor.workspace_id || query.Text(1) != successor.connector_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "grant ", Sv(replaced_id), " belongs to workspace ", query.Text(0), " connector ",
        query.Text(1), ", not to workspace ", successor.workspace_id, " connector ",
        successor.connector_id, "; it cannot be replaced by ", successor.grant_id));
  }
  if (query.Text(2) == GrantStatusName(GrantStatus::kRevoked)) {
    return absl::FailedPreconditionError(
        absl::StrCat("grant ", Sv(replaced_id), " is already revoked; it cannot be replaced"));
  }
  GV_ASSIGN_OR_RETURN(
      Statement update,
      db().Prepare("UPDATE grants SET status = 'revoked', status_reason = ?, updated_at = ? "
                   "WHERE grant_id = ?",
                   context));
  update.BindText(1, absl::StrCat("replaced by ", successor.grant_id));
  update.BindTime(2, successor.updated_at);
  update.BindText(3, replaced_id);
  GV_RETURN_IF_ERROR(update.Run());
  return DeleteSharedAccessToken(db(), replaced_id, context);
}

absl::Status SqlGrantStore::InsertGrant(const Grant& grant, const SealedSecret& secret,
                                        std::optional<std::string> replaces,
                                        const ConnectorRegistration* issued_under) {
  GV_RETURN_IF_ERROR(ValidateGrant(grant));
  GV_RETURN_IF_ERROR(ValidateSecret(secret));
  if (secret.key.owner_id != grant.grant_id) {
    return absl::InvalidArgumentError(absl::StrCat("the sealed secret of grant ", grant.grant_id,
                                                   " must be owned by it, not by ",
                                                   secret.key.owner_id));
  }
  if (secret.workspace_id != grant.workspace_id || secret.connector_id != grant.connector_id ||
      secret.account_id != grant.account_id) {
    return absl::InvalidArgumentError(
        absl::StrCat("the sealed secret of grant ", grant.grant_id,
                     " is bound to a different workspace, connector or account than the grant"));
  }
  if (replaces.has_value() && *replaces == grant.grant_id) {
    return absl::InvalidArgumentError(
        absl::StrCat("grant ", grant.grant_id, " cannot replace itself"));
  }

  if (issued_under != nullptr && issued_under->connector_id != grant.connector_id) {
    return absl::InvalidArgumentError(absl::StrCat("grant ", grant.grant_id, " of connector ",
                                                   grant.connector_id, " cannot be issued under ",
                                                   issued_under->connector_id));
  }

  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  if (issued_under != nullptr) {
    GV_ASSIGN_OR_RETURN(std::vector<ConnectorRegistration> current,
                        SelectRegistrations(grant.connector_id));
    const std::vector<std::string> changed =
        current.empty() ? std::vector<std::string>{"registration"}
                        : EndpointFieldsChanged(*issued_under, current.front());
    if (!changed.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "connector ", grant.connector_id, " was re-registered (its ",
          absl::StrJoin(changed, ", "),
          ") while this authorization ran; its tokens came from the endpoints of before, so "
          "nothing is stored: authorize again"));
    }
  }
  if (replaces.has_value()) GV_RETURN_IF_ERROR(RevokeReplacedGrant(*replaces, grant));

  // The schema enforces both uniqueness rules; checking first names the conflict.
  GV_ASSIGN_OR_RETURN(
      Statement conflict,
      db().Prepare("SELECT grant_id, grant_id = ?1 FROM grants WHERE grant_id = ?1 OR "
                   "(workspace_id = ?2 AND connector_id = ?3 AND status <> 'revoked' AND ?4 = 1)",
                   absl::StrCat("insert grant ", grant.grant_id)));
  conflict.BindText(1, grant.grant_id);
  conflict.BindText(2, grant.workspace_id);
  conflict.BindText(3, grant.connector_id);
  conflict.BindInt(4, grant.status != GrantStatus::kRevoked ? 1 : 0);
  GV_ASSIGN_OR_RETURN(bool row, conflict.Step());
  if (row) {
    if (conflict.Int(1) != 0) {
      return absl::AlreadyExistsError(absl::StrCat("grant id ", grant.grant_id, " is taken"));
    }
    return absl::AlreadyExistsError(absl::StrCat(
        "workspace ", grant.workspace_id, " already has current grant ", conflict.Text(0),
        " for connector ", grant.connector_id, "; re-authorizing must replace it"));
  }

  GV_RETURN_IF_ERROR(CheckKekWritable(db(), secret.kek_label));
  GV_RETURN_IF_ERROR(InsertGrantRows(db(), grant));
  GV_RETURN_IF_ERROR(WriteSecretRow(db(), secret, OnConflict::kFail));
  return txn.Commit();
}

absl::StatusOr<Grant> SqlGrantStore::GetGrant(std::string_view grant_id) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kDeferred));
  GV_ASSIGN_OR_RETURN(Statement query, db().Prepare(absl::StrCat("SELECT ", kGrantColumns,
                                                                 " FROM grants WHERE grant_id = ?"),
                                                    absl::StrCat("get grant ", Sv(grant_id))));
  query.BindText(1, grant_id);
  GV_ASSIGN_OR_RETURN(std::vector<Grant> grants, SelectGrants(db(), query));
  GV_RETURN_IF_ERROR(txn.Commit());
  if (grants.empty())
    return absl::NotFoundError(absl::StrCat("grant ", Sv(grant_id), " does not exist"));
  return std::move(grants.front());
}

absl::StatusOr<Grant> SqlGrantStore::FindCurrentGrant(std::string_view workspace_id,
                                                      std::string_view connector_id) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kDeferred));
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare(absl::StrCat("SELECT ", kGrantColumns,
                                " FROM grants WHERE workspace_id = ? AND connector_id = ? "
                                "AND status <> 'revoked'"),
                   absl::StrCat("find current grant of workspace ", Sv(workspace_id), " connector ",
                                Sv(connector_id))));
  query.BindText(1, workspace_id);
  query.BindText(2, connector_id);
  GV_ASSIGN_OR_RETURN(std::vector<Grant> grants, SelectGrants(db(), query));
  GV_RETURN_IF_ERROR(txn.Commit());
  if (grants.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "workspace ", Sv(workspace_id), " has no current grant for connector ", Sv(connector_id)));
  }
  return std::move(grants.front());
}

absl::StatusOr<std::vector<Grant>> SqlGrantStore::ListGrants(std::string_view workspace_id) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kDeferred));
  GV_ASSIGN_OR_RETURN(Statement query,
                      db().Prepare(absl::StrCat("SELECT ", kGrantColumns,
                                                " FROM grants WHERE workspace_id = ? "
                                                "ORDER BY created_at, grant_id"),
                                   absl::StrCat("list grants of workspace ", Sv(workspace_id))));
  query.BindText(1, workspace_id);
  GV_ASSIGN_OR_RETURN(std::vector<Grant> grants, SelectGrants(db(), query));
  GV_RETURN_IF_ERROR(txn.Commit());
  return grants;
}

absl::Status SqlGrantStore::RequireNotRevoked(std::string_view grant_id, const std::string& context,
                                              std::string if_revoked) {
  GV_ASSIGN_OR_RETURN(Statement query,
                      db().Prepare("SELECT status FROM grants WHERE grant_id = ?", context));
  query.BindText(1, grant_id);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("grant ", Sv(grant_id), " does not exist"));
  if (query.Text(0) == GrantStatusName(GrantStatus::kRevoked)) {
    return absl::FailedPreconditionError(std::move(if_revoked));
  }
  return absl::OkStatus();
}

absl::Status SqlGrantStore::SetGrantStatus(std::string_view grant_id, GrantStatus status,
                                           std::string_view reason, absl::Time now) {
  std::string context = absl::StrCat("set status of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_RETURN_IF_ERROR(RequireNotRevoked(
      grant_id, context,
      absl::StrCat("grant ", Sv(grant_id), " is revoked; a revoked grant cannot change status")));
  GV_ASSIGN_OR_RETURN(
      Statement update,
      db().Prepare("UPDATE grants SET status = ?, status_reason = ?, updated_at = ? "
                   "WHERE grant_id = ?",
                   context));
  update.BindText(1, GrantStatusName(status));
  update.BindText(2, reason);
  update.BindTime(3, now);
  update.BindText(4, grant_id);
  GV_RETURN_IF_ERROR(update.Run());
  return txn.Commit();
}

absl::Status SqlGrantStore::RevokeGrant(std::string_view grant_id, std::string_view reason,
                                        absl::Time now) {
  std::string context = absl::StrCat("revoke grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_RETURN_IF_ERROR(RequireNotRevoked(
      grant_id, context, absl::StrCat("grant ", Sv(grant_id), " is already revoked")));
  GV_ASSIGN_OR_RETURN(
      Statement update,
      db().Prepare("UPDATE grants SET status = 'revoked', status_reason = ?, updated_at = ? "
                   "WHERE grant_id = ?",
                   context));
  update.BindText(1, reason);
  update.BindTime(2, now);
  update.BindText(3, grant_id);
  GV_RETURN_IF_ERROR(update.Run());
  GV_ASSIGN_OR_RETURN(
      Statement pending,
      db().Prepare("INSERT INTO upstream_revocations (grant_id, state, attempts, last_error, "
                   "next_attempt_at, updated_at) VALUES (?, 'pending', 0, '', ?, ?) "
                   "ON CONFLICT (grant_id) DO UPDATE SET state = excluded.state, "
                   "attempts = excluded.attempts, last_error = excluded.last_error, "
                   "next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
                   context));
  pending.BindText(1, grant_id);
  pending.BindTime(2, now);
  pending.BindTime(3, now);
  GV_RETURN_IF_ERROR(pending.Run());
  GV_RETURN_IF_ERROR(DeleteSharedAccessToken(db(), grant_id, context));
  return txn.Commit();
}

absl::Status SqlGrantStore::PutUpstreamRevocation(const UpstreamRevocation& r) {
  std::string context = absl::StrCat("record the upstream revocation of grant ", r.grant_id);
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement put,
      db().Prepare("INSERT INTO upstream_revocations (grant_id, state, attempts, last_error, "
                   "next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (grant_id) DO UPDATE SET state = excluded.state, "
                   "attempts = excluded.attempts, last_error = excluded.last_error, "
                   "next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
                   context));
  put.BindText(1, r.grant_id);
  put.BindText(2, UpstreamRevocationStateName(r.state));
  put.BindInt(3, r.attempts);
  put.BindText(4, r.last_error);
  put.BindTime(5, r.next_attempt_at);
  put.BindTime(6, r.updated_at);
  return put.Run();
}

namespace {

constexpr char kSelectUpstreamRevocation[] =
    "SELECT grant_id, state, attempts, last_error, next_attempt_at, updated_at "
    "FROM upstream_revocations ";

absl::StatusOr<UpstreamRevocation> ReadUpstreamRevocation(const Statement& row) {
  UpstreamRevocation r;
  r.grant_id = row.Text(0);
  GV_ASSIGN_OR_RETURN(r.state, ParseUpstreamRevocationState(row.Text(1)));
  r.attempts = static_cast<int>(row.Int(2));
  r.last_error = row.Text(3);
  r.next_attempt_at = row.Time(4);
  r.updated_at = row.Time(5);
  return r;
}

}  // namespace

absl::StatusOr<UpstreamRevocation> SqlGrantStore::GetUpstreamRevocation(std::string_view grant_id) {
  std::string context = absl::StrCat("read the upstream revocation of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare(absl::StrCat(kSelectUpstreamRevocation, "WHERE grant_id = ?"), context));
  query.BindText(1, grant_id);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("grant ", Sv(grant_id), " has no upstream revocation"));
  }
  return ReadUpstreamRevocation(query);
}

absl::StatusOr<std::vector<UpstreamRevocation>> SqlGrantStore::ListPendingUpstreamRevocations() {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Statement query,
                      db().Prepare(absl::StrCat(kSelectUpstreamRevocation,
                                                "WHERE state = 'pending' ORDER BY next_attempt_at"),
                                   "list pending upstream revocations"));
  std::vector<UpstreamRevocation> out;
  for (;;) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    GV_ASSIGN_OR_RETURN(UpstreamRevocation r, ReadUpstreamRevocation(query));
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status SqlGrantStore::SetAccessTokenExpiry(std::string_view grant_id, absl::Time expires_at,
                                                 absl::Time now) {
  std::string context = absl::StrCat("record the access-token expiry of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_RETURN_IF_ERROR(RequireNotRevoked(
      grant_id, context,
      absl::StrCat("grant ", Sv(grant_id),
                   " is revoked; its access-token expiry is no longer recorded")));
  GV_ASSIGN_OR_RETURN(
      Statement update,
      db().Prepare(
          "UPDATE grants SET access_token_expires_at = ?, updated_at = ? WHERE grant_id = ?",
          context));
  update.BindTime(1, expires_at);
  update.BindTime(2, now);
  update.BindText(3, grant_id);
  GV_RETURN_IF_ERROR(update.Run());
  return txn.Commit();
}

absl::StatusOr<int64_t> SqlGrantStore::CountGrants() {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Statement query, db().Prepare("SELECT count(*) FROM grants", "count grants"));
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) return absl::InternalError("grant store: count grants: no row");
  return query.Int(0);
}

// --- sealed secrets ----------------------------------------------------------

absl::Status SqlGrantStore::PutSealedSecrets(absl::Span<const SealedSecret> secrets) {
  for (const SealedSecret& secret : secrets) GV_RETURN_IF_ERROR(ValidateSecret(secret));
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  std::string checked_label;
  for (const SealedSecret& secret : secrets) {
    if (secret.kek_label != checked_label) {
      GV_RETURN_IF_ERROR(CheckKekWritable(db(), secret.kek_label));
      checked_label = secret.kek_label;
    }
    GV_RETURN_IF_ERROR(WriteSecretRow(db(), secret, OnConflict::kReplace));
  }
  return txn.Commit();
}

absl::Status SqlGrantStore::MarkRefreshAttempt(std::string_view grant_id, absl::Time now) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(grant_id, "grant id"));
  const std::string context = absl::StrCat("mark the refresh attempt of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  return WithSync(Sync::kLater, [&]() -> absl::Status {
    // The earliest attempt whose outcome is unknown is kept.
    GV_ASSIGN_OR_RETURN(
        Statement mark,
        db().Prepare("UPDATE grants SET refresh_attempt_at = coalesce(refresh_attempt_at, ?) "
                     "WHERE grant_id = ?",
                     context));
    mark.BindTime(1, now);
    mark.BindText(2, grant_id);
    GV_RETURN_IF_ERROR(mark.Run());
    if (db().Changes() == 0) {
      return absl::NotFoundError(absl::StrCat("grant ", Sv(grant_id), " does not exist"));
    }
    return absl::OkStatus();
  });
}

absl::Status SqlGrantStore::ClearRefreshAttempt(std::string_view grant_id) {
  const std::string context = absl::StrCat("clear the refresh attempt of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  return WithSync(Sync::kLater, [&]() -> absl::Status {
    GV_ASSIGN_OR_RETURN(
        Statement clear,
        db().Prepare("UPDATE grants SET refresh_attempt_at = NULL WHERE grant_id = ?", context));
    clear.BindText(1, grant_id);
    return clear.Run();
  });
}

template <typename Write>
auto SqlGrantStore::WithSync(Sync sync, Write write) -> decltype(write()) {
  // A PostgreSQL commit is durable on the server when it returns: there is
  // no local sync to defer.
  if (sync == Sync::kNow || sqlite_ == nullptr) return write();
  if (db().InTransaction()) {
    return absl::InternalError("grant store: an unsynced write inside an open transaction");
  }
  // In WAL mode, synchronous = NORMAL appends the commit to the WAL without
  // an fsync (the next FULL commit, or SyncToDisk, syncs it too). The
  // connection is FULL again before the lock is released, whatever the
  // write's outcome.
  // (Exec, not Run: a pragma takes effect when it is compiled.)
  GV_RETURN_IF_ERROR(db().Exec("PRAGMA synchronous = NORMAL", "defer the sync of a commit"));
  auto written = write();
  // A transaction left open (a failed ROLLBACK) would refuse the pragma.
  db().RollBackIfOpen();
  const absl::Status restored =
      db().Exec("PRAGMA synchronous = FULL", "restore synchronous commits");
  if (!restored.ok()) {
    // Only out of memory; later commits must never go unsynced.
    std::fprintf(stderr, "fatal: grant store: %s\n", std::string(restored.message()).c_str());
    std::abort();
  }
  return written;
}

absl::Status SqlGrantStore::SyncToDisk() {
  if (sqlite_ == nullptr) return absl::OkStatus();  // nothing deferred (WithSync)
  absl::MutexLock lock(&mu_);
  sqlite3_file* wal = nullptr;
  // The WAL's file (SQLITE_FCNTL_JOURNAL_POINTER): unsynced commits are only
  // there until a checkpoint, and a checkpoint syncs the WAL before it copies.
  const int rc = sqlite3_file_control(sqlite_->raw(), "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
  if (rc != SQLITE_OK) return sqlite_->Error(rc, "find the write-ahead log to sync");
  if (wal == nullptr || wal->pMethods == nullptr) return absl::OkStatus();  // not open: nothing
  const int synced = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
  if (synced != SQLITE_OK) return sqlite_->Error(synced, "sync the write-ahead log");
  return absl::OkStatus();
}

absl::StatusOr<SealedSecret> SqlGrantStore::GetSealedSecret(const SealedSecretKey& key) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare(absl::StrCat("SELECT ", kSecretColumns,
                                " FROM sealed_secrets WHERE owner_id = ? AND purpose = ?"),
                   absl::StrCat("get sealed secret ", SecretName(key))));
  query.BindText(1, key.owner_id);
  query.BindText(2, key.purpose);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("sealed secret ", SecretName(key), " does not exist"));
  }
  return ReadSecretRow(query);
}

absl::Status SqlGrantStore::DeleteSealedSecret(const SealedSecretKey& key) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement remove,
      db().Prepare(kDeleteSecretSql, absl::StrCat("delete sealed secret ", SecretName(key))));
  remove.BindText(1, key.owner_id);
  remove.BindText(2, key.purpose);
  GV_RETURN_IF_ERROR(remove.Run());
  if (db().Changes() == 0) {
    return absl::NotFoundError(absl::StrCat("sealed secret ", SecretName(key), " does not exist"));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> SqlGrantStore::ReplaceSealedSecrets(
    absl::Span<const SealedSecretUpdate> updates) {
  for (const SealedSecretUpdate& update : updates) {
    GV_RETURN_IF_ERROR(ValidateSecretUpdate(update));
  }
  if (updates.empty()) return size_t{0};
  // The interface carries no time for a rewrap; it happens now.
  const absl::Time now = absl::Now();

  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  std::set<std::string_view> checked_labels;
  for (const SealedSecretUpdate& update : updates) {
    if (checked_labels.insert(update.new_kek_label).second) {
      GV_RETURN_IF_ERROR(CheckKekWritable(db(), update.new_kek_label));
    }
  }
  GV_ASSIGN_OR_RETURN(Statement replace, db().Prepare(kReplaceSecretSql, "replace sealed secrets"));
  size_t applied = 0;
  for (const SealedSecretUpdate& update : updates) {
    replace.Reset();
    BindSecretUpdate(replace, update, now);
    GV_RETURN_IF_ERROR(replace.Run());
    applied += db().Changes();
  }
  GV_RETURN_IF_ERROR(txn.Commit());
  return applied;
}

absl::StatusOr<bool> SqlGrantStore::FinishRefresh(const std::optional<SealedSecretUpdate>& rotation,
                                                  std::string_view grant_id,
                                                  absl::Time access_expires_at, absl::Time now,
                                                  Sync sync) {
  if (rotation.has_value()) GV_RETURN_IF_ERROR(ValidateSecretUpdate(*rotation));
  const std::string context = absl::StrCat("finish the refresh of grant ", Sv(grant_id));
  absl::MutexLock lock(&mu_);
  return WithSync(sync, [&]() -> absl::StatusOr<bool> {
    GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
    if (rotation.has_value()) {
      GV_RETURN_IF_ERROR(CheckKekWritable(db(), rotation->new_kek_label));
      GV_ASSIGN_OR_RETURN(Statement replace, db().Prepare(kReplaceSecretSql, context));
      BindSecretUpdate(replace, *rotation, now);
      GV_RETURN_IF_ERROR(replace.Run());
      if (db().Changes() == 0) return false;  // changed meanwhile: the transaction rolls back
    }
    // The marker goes whatever the grant's status; a revoked grant's expiry
    // is left as it was.
    GV_ASSIGN_OR_RETURN(
        Statement expiry,
        db().Prepare("UPDATE grants SET refresh_attempt_at = NULL, "
                     "access_token_expires_at = CASE WHEN status != ?1 THEN ?2 "
                     "ELSE access_token_expires_at END, "
                     "updated_at = CASE WHEN status != ?1 THEN ?3 ELSE updated_at END "
                     "WHERE grant_id = ?4",
                     context));
    expiry.BindText(1, GrantStatusName(GrantStatus::kRevoked));
    expiry.BindTime(2, access_expires_at);
    expiry.BindTime(3, now);
    expiry.BindText(4, grant_id);
    GV_RETURN_IF_ERROR(expiry.Run());
    GV_RETURN_IF_ERROR(txn.Commit());
    return true;
  });
}

absl::StatusOr<std::vector<SealedSecret>> SqlGrantStore::ListSealedSecretsUnder(
    std::string_view kek_label, const std::optional<SealedSecretKey>& after, size_t limit) {
  std::vector<SealedSecret> secrets;
  if (limit == 0) return secrets;
  const auto sql_limit = static_cast<int64_t>(
      std::min<uint64_t>(limit, static_cast<uint64_t>(std::numeric_limits<int64_t>::max())));

  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare(
          absl::StrCat("SELECT ", kSecretColumns, " FROM sealed_secrets WHERE kek_label = ?1",
                       after.has_value() ? " AND (owner_id, purpose) > (?2, ?3)" : "",
                       " ORDER BY owner_id, purpose LIMIT ?4"),
          absl::StrCat("list sealed secrets under ", Sv(kek_label))));
  query.BindText(1, kek_label);
  if (after.has_value()) {
    query.BindText(2, after->owner_id);
    query.BindText(3, after->purpose);
  }
  query.BindInt(4, sql_limit);
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    secrets.push_back(ReadSecretRow(query));
  }
  return secrets;
}

absl::StatusOr<std::map<std::string, int64_t>> SqlGrantStore::CountSealedSecretsByKek() {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare("SELECT kek_label, count(*) FROM sealed_secrets GROUP BY kek_label",
                   "count sealed secrets by kek"));
  std::map<std::string, int64_t> counts;
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    counts.emplace(query.Text(0), query.Int(1));
  }
  return counts;
}

// --- connector registrations ---------------------------------------------------

namespace {

// A registration's list kept in `table` (connector_id, position, `column`),
// replaced whole.
absl::Status ReplaceOrderedList(db::Connection& db, const char* table, const char* column,
                                const std::string& connector_id,
                                const std::vector<std::string>& values,
                                const std::string& context) {
  GV_ASSIGN_OR_RETURN(
      Statement clear,
      db.Prepare(absl::StrCat("DELETE FROM ", table, " WHERE connector_id = ?"), context));
  clear.BindText(1, connector_id);
  GV_RETURN_IF_ERROR(clear.Run());
  GV_ASSIGN_OR_RETURN(Statement insert,
                      db.Prepare(absl::StrCat("INSERT INTO ", table, " (connector_id, position, ",
                                              column, ") VALUES (?, ?, ?)"),
                                 context));
  for (size_t i = 0; i < values.size(); ++i) {
    insert.Reset();
    insert.BindText(1, connector_id);
    insert.BindInt(2, static_cast<int64_t>(i));
    insert.BindText(3, values[i]);
    GV_RETURN_IF_ERROR(insert.Run());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadOrderedList(db::Connection& db, const char* table,
                                                         const char* column,
                                                         const std::string& connector_id,
                                                         const std::string& context) {
  GV_ASSIGN_OR_RETURN(Statement query,
                      db.Prepare(absl::StrCat("SELECT ", column, " FROM ", table,
                                              " WHERE connector_id = ? ORDER BY position"),
                                 context));
  query.BindText(1, connector_id);
  std::vector<std::string> out;
  for (;;) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    out.push_back(query.Text(0));
  }
  return out;
}

}  // namespace

absl::Status SqlGrantStore::PutConnectorRegistration(const ConnectorRegistration& registration,
                                                     const SealedSecret& client_secret) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(registration.connector_id, "connector id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(registration.connector_type, "connector type"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(registration.client_id, "client id"));
  GV_RETURN_IF_ERROR(ValidateSecret(client_secret));
  if (client_secret.key.owner_id != RegistrationSecretOwner(registration.connector_id) ||
      client_secret.key.purpose != "client_secret") {
    return absl::InvalidArgumentError(absl::StrCat(
        "the client secret of connector ", registration.connector_id, " must be owned by ",
        RegistrationSecretOwner(registration.connector_id), " with purpose client_secret"));
  }
  for (const std::string& uri : registration.redirect_uris) {
    GV_RETURN_IF_ERROR(RequireNonEmpty(uri, "redirect URI"));
  }
  for (const std::string& url : registration.api_bases) {
    GV_RETURN_IF_ERROR(RequireNonEmpty(url, "API base"));
  }
  const std::string context = absl::StrCat("register connector ", registration.connector_id);
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_RETURN_IF_ERROR(CheckRegistrationChange(registration));
  GV_ASSIGN_OR_RETURN(
      Statement upsert,
      db().Prepare(
          "INSERT INTO connector_registrations (connector_id, connector_type, client_id, issuer, "
          "registered_by, created_at, updated_at, allow_private_network) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
          "ON CONFLICT (connector_id) DO UPDATE SET connector_type = excluded.connector_type, "
          "client_id = excluded.client_id, issuer = excluded.issuer, "
          "registered_by = excluded.registered_by, updated_at = excluded.updated_at, "
          "allow_private_network = excluded.allow_private_network",
          context));
  upsert.BindText(1, registration.connector_id);
  upsert.BindText(2, registration.connector_type);
  upsert.BindText(3, registration.client_id);
  upsert.BindText(4, registration.issuer);
  upsert.BindText(5, registration.registered_by);
  upsert.BindTime(6, registration.created_at);
  upsert.BindTime(7, registration.updated_at);
  upsert.BindInt(8, registration.allow_private_network ? 1 : 0);
  GV_RETURN_IF_ERROR(upsert.Run());
  GV_ASSIGN_OR_RETURN(
      Statement clear,
      db().Prepare("DELETE FROM connector_parameters WHERE connector_id = ?", context));
  clear.BindText(1, registration.connector_id);
  GV_RETURN_IF_ERROR(clear.Run());
  GV_ASSIGN_OR_RETURN(
      Statement param,
      db().Prepare("INSERT INTO connector_parameters (connector_id, name, value) VALUES (?, ?, ?)",
                   context));
  for (const auto& [name, value] : registration.parameters) {
    param.Reset();
    param.BindText(1, registration.connector_id);
    param.BindText(2, name);
    param.BindText(3, value);
    GV_RETURN_IF_ERROR(param.Run());
  }
  GV_RETURN_IF_ERROR(ReplaceOrderedList(db(), "connector_redirect_uris", "uri",
                                        registration.connector_id, registration.redirect_uris,
                                        context));
  GV_RETURN_IF_ERROR(ReplaceOrderedList(db(), "connector_api_bases", "url",
                                        registration.connector_id, registration.api_bases,
                                        context));
  GV_RETURN_IF_ERROR(CheckKekWritable(db(), client_secret.kek_label));
  GV_RETURN_IF_ERROR(WriteSecretRow(db(), client_secret, OnConflict::kReplace));
  return txn.Commit();
}

absl::Status SqlGrantStore::CheckRegistrationChange(const ConnectorRegistration& registration) {
  GV_ASSIGN_OR_RETURN(std::vector<ConnectorRegistration> found,
                      SelectRegistrations(registration.connector_id));
  if (found.empty()) return absl::OkStatus();
  const std::vector<std::string> changed = EndpointFieldsChanged(found.front(), registration);
  if (changed.empty()) return absl::OkStatus();
  GV_ASSIGN_OR_RETURN(
      Statement count,
      db().Prepare(
          "SELECT (SELECT count(*) FROM grants WHERE connector_id = ?1 AND status <> 'revoked'), "
          "(SELECT count(*) FROM upstream_revocations u JOIN grants g USING (grant_id) "
          "WHERE g.connector_id = ?1 AND u.state = 'pending')",
          "count the grants of a connector"));
  count.BindText(1, registration.connector_id);
  GV_ASSIGN_OR_RETURN(bool row, count.Step());
  if (!row) return absl::InternalError("counting the grants of a connector returned no row");
  const int64_t live = count.Int(0);
  const int64_t pending = count.Int(1);
  if (live == 0 && pending == 0) return absl::OkStatus();
  std::string users;
  if (live > 0) absl::StrAppend(&users, live, " live grant(s) (active or reauth_required)");
  if (pending > 0) {
    absl::StrAppend(&users, live > 0 ? " and " : "", pending,
                    " revoked grant(s) whose revocation at the provider is still pending");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "connector ", registration.connector_id, " is used by ", users, ": its ",
      absl::StrJoin(changed, ", "),
      " cannot change while they exist, because their tokens belong to the authorization "
      "server the registration names. Revoke them first (grantvault revoke), then register "
      "the change and authorize again. The client secret and the redirect URIs may change "
      "at any time."));
}

absl::StatusOr<std::vector<ConnectorRegistration>> SqlGrantStore::SelectRegistrations(
    std::optional<std::string_view> connector_id) {
  const std::string context = "read connector registrations";
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare(
          absl::StrCat("SELECT connector_id, connector_type, client_id, issuer, "
                       "registered_by, created_at, updated_at, allow_private_network "
                       "FROM connector_registrations",
                       connector_id ? " WHERE connector_id = ?" : "", " ORDER BY connector_id"),
          context));
  if (connector_id) query.BindText(1, *connector_id);
  std::vector<ConnectorRegistration> out;
  for (;;) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    ConnectorRegistration r;
    r.connector_id = query.Text(0);
    r.connector_type = query.Text(1);
    r.client_id = query.Text(2);
    r.issuer = query.Text(3);
    r.registered_by = query.Text(4);
    r.created_at = query.Time(5);
    r.updated_at = query.Time(6);
    r.allow_private_network = query.Int(7) != 0;
    out.push_back(std::move(r));
  }
  GV_ASSIGN_OR_RETURN(
      Statement params,
      db().Prepare("SELECT name, value FROM connector_parameters WHERE connector_id = ?", context));
  for (ConnectorRegistration& r : out) {
    params.Reset();
    params.BindText(1, r.connector_id);
    for (;;) {
      GV_ASSIGN_OR_RETURN(bool row, params.Step());
      if (!row) break;
      r.parameters[params.Text(0)] = params.Text(1);
    }
    GV_ASSIGN_OR_RETURN(r.redirect_uris, ReadOrderedList(db(), "connector_redirect_uris", "uri",
                                                         r.connector_id, context));
    GV_ASSIGN_OR_RETURN(
        r.api_bases, ReadOrderedList(db(), "connector_api_bases", "url", r.connector_id, context));
  }
  return out;
}

absl::StatusOr<ConnectorRegistration> SqlGrantStore::GetConnectorRegistration(
    std::string_view connector_id) {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(std::vector<ConnectorRegistration> found, SelectRegistrations(connector_id));
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat("connector ", Sv(connector_id), " is not registered"));
  }
  return std::move(found.front());
}

absl::StatusOr<std::vector<ConnectorRegistration>> SqlGrantStore::ListConnectorRegistrations() {
  absl::MutexLock lock(&mu_);
  return SelectRegistrations(std::nullopt);
}

// --- authorization sessions ------------------------------------------------------

absl::Status SqlGrantStore::InsertAuthorizationSession(
    const AuthorizationSession& session, const std::optional<SealedSecret>& pkce_verifier) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(session.session_id, "authorization session id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(session.workspace_id, "workspace id"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(session.connector_id, "connector id"));
  for (const std::string& scope : session.scopes) {
    if (scope.empty() || scope.find(' ') != std::string::npos) {
      return absl::InvalidArgumentError("a scope must be non-empty and contain no space");
    }
  }
  if (pkce_verifier.has_value()) {
    GV_RETURN_IF_ERROR(ValidateSecret(*pkce_verifier));
    if (pkce_verifier->key.owner_id != session.session_id) {
      return absl::InvalidArgumentError("the PKCE verifier must be owned by its session");
    }
  }
  const std::string context = absl::StrCat("start authorization of ", session.connector_id,
                                           " for workspace ", session.workspace_id);
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(
      Statement insert,
      db().Prepare("INSERT INTO authorization_sessions (session_id, workspace_id, "
                   "connector_id, scopes, admin_user, redirect_uri, nonce, created_at, "
                   "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   context));
  insert.BindText(1, session.session_id);
  insert.BindText(2, session.workspace_id);
  insert.BindText(3, session.connector_id);
  insert.BindText(4, absl::StrJoin(session.scopes, " "));
  insert.BindText(5, session.admin_user);
  insert.BindText(6, session.redirect_uri);
  insert.BindText(7, session.nonce);
  insert.BindTime(8, session.created_at);
  insert.BindTime(9, session.expires_at);
  absl::Status inserted = insert.Run();
  if (absl::IsFailedPrecondition(inserted)) {
    return absl::FailedPreconditionError(
        absl::StrCat("connector ", session.connector_id, " is not registered"));
  }
  GV_RETURN_IF_ERROR(inserted);
  if (pkce_verifier.has_value()) {
    GV_RETURN_IF_ERROR(CheckKekWritable(db(), pkce_verifier->kek_label));
    GV_RETURN_IF_ERROR(WriteSecretRow(db(), *pkce_verifier, OnConflict::kFail));
  }
  return txn.Commit();
}

absl::StatusOr<GrantStore::ConsumedSession> SqlGrantStore::ConsumeAuthorizationSession(
    std::string_view session_id, absl::Time now) {
  const std::string context = "complete authorization";
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare("SELECT workspace_id, connector_id, scopes, admin_user, redirect_uri, "
                   "nonce, created_at, expires_at FROM authorization_sessions "
                   "WHERE session_id = ?",
                   context));
  query.BindText(1, session_id);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) {
    return absl::NotFoundError("unknown or already used authorization state");
  }
  ConsumedSession out;
  AuthorizationSession& s = out.session;
  s.session_id = std::string(session_id);
  s.workspace_id = query.Text(0);
  s.connector_id = query.Text(1);
  const std::string scopes = query.Text(2);
  if (!scopes.empty()) s.scopes = absl::StrSplit(scopes, ' ');
  s.admin_user = query.Text(3);
  s.redirect_uri = query.Text(4);
  s.nonce = query.Text(5);
  s.created_at = query.Time(6);
  s.expires_at = query.Time(7);

  const SealedSecretKey verifier_key{std::string(session_id), "pkce_verifier"};
  GV_ASSIGN_OR_RETURN(
      Statement secret,
      db().Prepare(absl::StrCat("SELECT ", kSecretColumns,
                                " FROM sealed_secrets WHERE owner_id = ? AND purpose = ?"),
                   context));
  secret.BindText(1, verifier_key.owner_id);
  secret.BindText(2, verifier_key.purpose);
  GV_ASSIGN_OR_RETURN(bool has_secret, secret.Step());
  if (has_secret) out.pkce_verifier = ReadSecretRow(secret);

  for (const char* sql :
       {kDeleteSecretSql, "DELETE FROM authorization_sessions WHERE session_id = ?"}) {
    GV_ASSIGN_OR_RETURN(Statement remove, db().Prepare(sql, context));
    remove.BindText(1, session_id);
    if (std::string_view(sql).find("purpose") != std::string_view::npos) {
      remove.BindText(2, verifier_key.purpose);
    }
    GV_RETURN_IF_ERROR(remove.Run());
  }
  GV_RETURN_IF_ERROR(txn.Commit());
  if (s.expires_at <= now) {
    return absl::FailedPreconditionError(absl::StrCat("the authorization session expired at ",
                                                      absl::FormatTime(s.expires_at),
                                                      "; start the authorization again"));
  }
  return out;
}

absl::StatusOr<int64_t> SqlGrantStore::DeleteExpiredAuthorizationSessions(absl::Time now) {
  const std::string context = "delete expired authorization sessions";
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(
      Statement secrets,
      db().Prepare("DELETE FROM sealed_secrets WHERE purpose = 'pkce_verifier' AND owner_id "
                   "IN (SELECT session_id FROM authorization_sessions WHERE expires_at <= ?)",
                   context));
  secrets.BindTime(1, now);
  GV_RETURN_IF_ERROR(secrets.Run());
  GV_ASSIGN_OR_RETURN(
      Statement sessions,
      db().Prepare("DELETE FROM authorization_sessions WHERE expires_at <= ?", context));
  sessions.BindTime(1, now);
  GV_RETURN_IF_ERROR(sessions.Run());
  const auto deleted = static_cast<int64_t>(db().Changes());
  GV_RETURN_IF_ERROR(txn.Commit());
  return deleted;
}

// --- key versions ------------------------------------------------------------

absl::Status SqlGrantStore::AddKeyVersion(const KeyVersion& key) {
  GV_RETURN_IF_ERROR(RequireNonEmpty(key.label, "key version label"));
  GV_RETURN_IF_ERROR(RequireNonEmpty(key.key_id_hex, "key version key id"));
  if ((key.state == KeyState::kRetired) != key.retired_at.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key version ", key.version, ": retired_at must be set exactly when the key is retired"));
  }
  std::string context = absl::StrCat("add key version ", key.version, " (", key.label, ")");

  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(Statement conflict,
                      db().Prepare("SELECT version, label, state FROM key_versions "
                                   "WHERE version = ? OR label = ? OR state = 'active'",
                                   context));
  conflict.BindInt(1, key.version);
  conflict.BindText(2, key.label);
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, conflict.Step());
    if (!row) break;
    if (conflict.Int(0) == key.version) {
      return absl::AlreadyExistsError(absl::StrCat("key version ", key.version, " already exists"));
    }
    if (conflict.Text(1) == key.label) {
      return absl::AlreadyExistsError(absl::StrCat(
          "key version label ", key.label, " is already used by version ", conflict.Int(0)));
    }
    if (key.state == KeyState::kActive) {
      return absl::FailedPreconditionError(
          absl::StrCat("key version ", conflict.Int(0), " is active; add version ", key.version,
                       " inactive and activate it with ActivateKeyVersion"));
    }
  }
  GV_ASSIGN_OR_RETURN(Statement insert,
                      db().Prepare("INSERT INTO key_versions (version, label, key_id_hex, "
                                   "state, created_at, retired_at) VALUES (?, ?, ?, ?, ?, ?)",
                                   context));
  insert.BindInt(1, key.version);
  insert.BindText(2, key.label);
  insert.BindText(3, key.key_id_hex);
  insert.BindText(4, KeyStateName(key.state));
  insert.BindTime(5, key.created_at);
  insert.BindOptionalTime(6, key.retired_at);
  GV_RETURN_IF_ERROR(insert.Run());
  return txn.Commit();
}

absl::StatusOr<std::vector<KeyVersion>> SqlGrantStore::ListKeyVersions() {
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare("SELECT version, label, key_id_hex, state, created_at, retired_at "
                   "FROM key_versions ORDER BY version",
                   "list key versions"));
  std::vector<KeyVersion> keys;
  while (true) {
    GV_ASSIGN_OR_RETURN(bool row, query.Step());
    if (!row) break;
    KeyVersion key;
    const int64_t version = query.Int(0);
    if (version < std::numeric_limits<int>::min() || version > std::numeric_limits<int>::max()) {
      return absl::InternalError(
          absl::StrCat("grant store: key version ", version, " is out of range"));
    }
    key.version = static_cast<int>(version);
    key.label = query.Text(1);
    key.key_id_hex = query.Text(2);
    GV_ASSIGN_OR_RETURN(key.state, ParseKeyState(query.Text(3)));
    key.created_at = query.Time(4);
    key.retired_at = query.OptionalTime(5);
    keys.push_back(std::move(key));
  }
  return keys;
}

absl::Status SqlGrantStore::ActivateKeyVersion(int version) {
  std::string context = absl::StrCat("activate key version ", version);
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(Statement query,
                      db().Prepare("SELECT state FROM key_versions WHERE version = ?", context));
  query.BindInt(1, version);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("key version ", version, " does not exist"));
  GV_ASSIGN_OR_RETURN(KeyState state, ParseKeyState(query.Text(0)));
  if (state == KeyState::kRetired) {
    return absl::FailedPreconditionError(
        absl::StrCat("key version ", version, " is retired and cannot be activated"));
  }
  if (state == KeyState::kActive) return txn.Commit();
  // Deactivate first: the partial unique index allows one active row at a time.
  GV_RETURN_IF_ERROR(
      db().Exec("UPDATE key_versions SET state = 'inactive' WHERE state = 'active'", context));
  GV_ASSIGN_OR_RETURN(
      Statement update,
      db().Prepare("UPDATE key_versions SET state = 'active' WHERE version = ?", context));
  update.BindInt(1, version);
  GV_RETURN_IF_ERROR(update.Run());
  return txn.Commit();
}

absl::Status SqlGrantStore::RetireKeyVersion(int version, absl::Time now) {
  std::string context = absl::StrCat("retire key version ", version);
  absl::MutexLock lock(&mu_);
  GV_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db(), Transaction::Mode::kImmediate));
  GV_ASSIGN_OR_RETURN(
      Statement query,
      db().Prepare("SELECT state, (SELECT count(*) FROM sealed_secrets s "
                   "WHERE s.kek_label = k.label) FROM key_versions k WHERE version = ?",
                   context));
  query.BindInt(1, version);
  GV_ASSIGN_OR_RETURN(bool row, query.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("key version ", version, " does not exist"));
  GV_ASSIGN_OR_RETURN(KeyState state, ParseKeyState(query.Text(0)));
  const int64_t wrapped = query.Int(1);
  if (state == KeyState::kRetired) return txn.Commit();  // already done
  if (state == KeyState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat(
        "key version ", version, " is the active key; activate another version first"));
  }
  if (wrapped != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "key version ", version, " still wraps ", wrapped, " sealed secrets; run rewrap first"));
  }
  GV_ASSIGN_OR_RETURN(Statement update,
                      db().Prepare("UPDATE key_versions SET state = 'retired', retired_at = ? "
                                   "WHERE version = ?",
                                   context));
  update.BindTime(1, now);
  update.BindInt(2, version);
  GV_RETURN_IF_ERROR(update.Run());
  return txn.Commit();
}

absl::StatusOr<std::string> SqlGrantStore::ExecuteSqlForTesting(std::string_view sql) {
  absl::MutexLock lock(&mu_);
  return db().ExecForTesting(sql);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrantStore>> OpenSqliteGrantStore(const std::string& path,
                                                                 const SqliteOptions& options) {
  db::SqliteOptions o;
  o.owner = "grant store";
  o.file_kind = "database";
  o.busy_timeout_ms = options.busy_timeout_ms;
  // Most calls run a handful of statements; compiling them each time would
  // cost more than running them.
  o.keep_statements = true;
  GV_ASSIGN_OR_RETURN(std::unique_ptr<db::Sqlite> db, db::Sqlite::Open(path, std::move(o)));
  GV_RETURN_IF_ERROR(db::Migrate(*db, kSqliteMigrations));
  db::Sqlite* sqlite = db.get();
  return std::make_unique<SqlGrantStore>(std::move(db), sqlite, nullptr);
}

absl::StatusOr<std::unique_ptr<GrantStore>> OpenPostgresGrantStore(
    db::PostgresOptions options, const PostgresStoreLimits& limits) {
  options.owner = "grant store";
  auto refresh_locks = std::make_unique<RefreshLockPool>(options, limits.lock_connections,
                                                         limits.refresh_lock_lease);
  GV_ASSIGN_OR_RETURN(std::unique_ptr<db::Postgres> db, db::Postgres::Connect(std::move(options)));
  GV_RETURN_IF_ERROR(db::Migrate(*db, kPostgresMigrations));
  db::Postgres* postgres = db.get();
  return std::make_unique<SqlGrantStore>(std::move(db), nullptr, postgres,
                                         std::move(refresh_locks));
}

int PostgresSchemaVersion() {
  return kPostgresMigrations[std::size(kPostgresMigrations) - 1].version;
}

int SqliteSchemaVersion() { return kLatestSchemaVersion; }

namespace internal {

absl::StatusOr<std::string> ExecuteSqlForTesting(GrantStore& store, std::string_view sql) {
  auto* sql_store = dynamic_cast<SqlGrantStore*>(&store);
  if (sql_store == nullptr) {
    return absl::InvalidArgumentError("not a store opened by OpenSqliteGrantStore()");
  }
  return sql_store->ExecuteSqlForTesting(sql);
}

}  // namespace internal
}  // namespace grantvault::store
