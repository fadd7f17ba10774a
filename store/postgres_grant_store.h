// GrantStore on a PostgreSQL database, which several grantvaultd hosts share
// (DESIGN §9; docs/operations.md). The same store as the SQLite one
// (store/sql_grant_store.cc), on the database layer's PostgreSQL backend
// (db/postgres.h): the same tables, rules and triggers, migrated under an
// advisory lock so that hosts starting together migrate once.
#ifndef GRANTVAULT_STORE_POSTGRES_GRANT_STORE_H_
#define GRANTVAULT_STORE_POSTGRES_GRANT_STORE_H_

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "db/postgres.h"
#include "store/grant_store.h"

namespace grantvault::store {

struct PostgresStoreLimits {
  // Connections that hold refresh locks (GrantStore::LockGrantForRefresh):
  // one per refresh in progress in this process.
  size_t lock_connections = 8;
  // A lock holder that stays this long without a statement loses the lock
  // (and its connection): longer than one refresh with all its retries.
  absl::Duration refresh_lock_lease = absl::Minutes(2);
};

// Connects (`options.owner` is set to "grant store") and applies every
// pending migration. Refuses a database whose schema is newer than this
// build knows. Writes are SERIALIZABLE: one that races another host's fails
// with UNAVAILABLE, to be tried again. Refresh locks are advisory locks, each
// on a connection of its own (at most `limits.lock_connections`).
absl::StatusOr<std::unique_ptr<GrantStore>> OpenPostgresGrantStore(
    db::PostgresOptions options, const PostgresStoreLimits& limits = {});

// The schema version this build migrates a PostgreSQL database to.
int PostgresSchemaVersion();

}  // namespace grantvault::store

#endif  // GRANTVAULT_STORE_POSTGRES_GRANT_STORE_H_
