/* server: the process-wide objects, created by main before any thread starts
 * and read-only afterwards (the pointers; each object guards itself):
 * the configuration, the workers, the writer and the presence table. */
#ifndef PARLEY_SERVER_H
#define PARLEY_SERVER_H

#include "config.h"

struct worker;
struct writer;
struct presence;

struct server {
    const struct config *cfg;
    struct worker **workers;
    int nworkers;
    struct writer *writer;
    struct presence *presence;
    char db_path[1100];
};

#endif
