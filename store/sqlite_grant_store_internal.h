// Test-only access to the SQLite connection behind OpenSqliteGrantStore().
// Not part of the store's interface: only tests include this header.
#ifndef GRANTVAULT_STORE_SQLITE_GRANT_STORE_INTERNAL_H_
#define GRANTVAULT_STORE_SQLITE_GRANT_STORE_INTERNAL_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "store/grant_store.h"

namespace grantvault::store::internal {

// Runs `sql` (one or more statements) on the store's own connection, under the
// store's lock, so that tests can read per-connection settings (PRAGMA
// synchronous, foreign_keys) and provoke faults (PRAGMA max_page_count).
// Returns the first column of the first row any statement produced ("" when
// none did, or it was NULL). InvalidArgument when `store` did not come from
// OpenSqliteGrantStore(); errors map as the store's own errors do.
absl::StatusOr<std::string> ExecuteSqlForTesting(GrantStore& store, std::string_view sql);

}  // namespace grantvault::store::internal

#endif  // GRANTVAULT_STORE_SQLITE_GRANT_STORE_INTERNAL_H_
