/* server: the process-wide objects, created by main before any thread starts
 * and read-only afterwards (the pointers; each object guards itself):
 * the configuration, the workers, the writer and the presence table; and
 * one atomic counter, the running password hashes, so the cap of
 * PARLEY_MAX_HASHES holds for the process, not per worker. */
#ifndef PARLEY_SERVER_H
#define PARLEY_SERVER_H

#include "config.h"

#include <stdatomic.h>

struct worker;
struct writer;
struct presence;

struct server {
    const struct config *cfg;
    struct worker **workers;
    int nworkers;
    struct writer *writer;
    struct presence *presence;
    atomic_int hashes_running;  /* password hashes in the thread pool, all workers */
    char db_path[1100];
};

#endif
