// GrantStore on a SQLite file: the embedded default (one host).
#ifndef GRANTVAULT_STORE_SQLITE_GRANT_STORE_H_
#define GRANTVAULT_STORE_SQLITE_GRANT_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "store/grant_store.h"

namespace grantvault::store {

struct SqliteOptions {
  // How long a writer waits for another connection's lock before failing
  // with Unavailable.
  int busy_timeout_ms = 5000;
};

// Opens (creating if missing, mode 0600) the database at `path`, in WAL mode
// with synchronous=FULL and foreign keys on, and applies every pending schema
// migration, each in its own transaction, recorded in `schema_migrations`.
// Refuses a database whose schema version is newer than this build knows.
absl::StatusOr<std::unique_ptr<GrantStore>> OpenSqliteGrantStore(const std::string& path,
                                                                 const SqliteOptions& options = {});

// The schema version this build migrates to.
int SqliteSchemaVersion();

}  // namespace grantvault::store

#endif  // GRANTVAULT_STORE_SQLITE_GRANT_STORE_H_
