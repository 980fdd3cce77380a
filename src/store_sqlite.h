/* store_sqlite: the SQLite backend of the store interface (embedded mode).
 *
 * Owns one SQLite connection per struct store it opens, for one thread
 * (SQLITE_OPEN_NOMUTEX): the writer's read-write connection (WAL,
 * synchronous=FULL, foreign keys, migrations applied at open) or a worker's
 * read-only one (query_only). Every SQL statement of the embedded mode
 * lives in store_sqlite.c. */
#ifndef PARLEY_STORE_SQLITE_H
#define PARLEY_STORE_SQLITE_H

#include "store.h"

/* Opens (creating if needed) the database at path. readonly=1: a query-only
 * reader of an existing, migrated database. STORE_OK and *out, or STORE_ERR
 * with a one-line reason in errbuf. Close with store_close. */
int store_sqlite_open(const char *path, int readonly, struct store **out, char *errbuf, size_t errlen);

/* A consistent copy of the database at path, taken while others use it
 * (SQLite's online backup API), into dest: written to dest.tmp, synced,
 * then renamed over dest. STORE_OK, or STORE_ERR with a reason in errbuf. */
int store_sqlite_backup(const char *path, const char *dest, char *errbuf, size_t errlen);

#endif
