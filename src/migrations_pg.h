/* migrations_pg: the numbered schema files of migrations_pg/ (the PostgreSQL
 * schema of cluster mode), embedded at build time like migrations/ for SQLite
 * (cmake/embed_migrations.cmake generates the table with the prefix
 * migrations_pg). Read-only data; store_pg.c applies them. */
#ifndef PARLEY_MIGRATIONS_PG_H
#define PARLEY_MIGRATIONS_PG_H

#include "migrations.h"

extern const struct migration migrations_pg[];
extern const int migrations_pg_count;

#endif
