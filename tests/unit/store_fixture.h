/* store_fixture: the store a unit test runs on, SQLite or PostgreSQL, for the
 * tests written against the store interface (test_store.c, test_chat_tx.c).
 *
 * The backend is the run's: `test_x` runs on SQLite (a fresh database file in
 * its own mkdtemp directory under /tmp per test); `test_x --pg` runs on the
 * PostgreSQL server of PARLEY_TEST_PG_URL (scripts/pgtmp exec sets it; CTest
 * registers each such test a second time as test_x_pg), each test in a fresh
 * schema of its own (CREATE SCHEMA, migrations, DROP SCHEMA ... CASCADE at the
 * end): as good as a fresh database, and cheap. The store's connections find
 * the schema through PGOPTIONS (-c search_path=...), which the fixture sets
 * before opening them. `--pg` without the variable: exit 77, which CTest
 * reports as skipped.
 *
 * Owns the fixture struct, the SQLite directory or the schema, and an admin
 * connection used to create, inspect (fx_count) and drop the schema. Test
 * code: the backend choice is one static of the including file. */
#ifndef PARLEY_TEST_STORE_FIXTURE_H
#define PARLEY_TEST_STORE_FIXTURE_H

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store_pg.h"
#include "store_sqlite.h"

#define FX_SKIP 77

static struct {
    int pg;          /* 1: PostgreSQL */
    const char *url; /* PARLEY_TEST_PG_URL */
    unsigned seq;    /* schemas made by this process */
} fx_run;

struct fx {
    char dir[64];
    char path[128];  /* SQLite: the database file */
    char schema[64]; /* PostgreSQL: the test's schema */
    PGconn *admin;
    struct store *st;
};

/* From main(argc, argv): 0, or the code main must return (77: skip). */
static inline int fx_init(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--pg") == 0)
            fx_run.pg = 1;
    if (!fx_run.pg)
        return 0;
    fx_run.url = getenv("PARLEY_TEST_PG_URL");
    if (!fx_run.url || !*fx_run.url) {
        fprintf(stderr, "PARLEY_TEST_PG_URL is not set: the PostgreSQL run is skipped (scripts/pgtmp exec sets it)\n");
        return FX_SKIP;
    }
    return 0;
}

static inline int fx_is_pg(void)
{
    return fx_run.pg;
}

/* Runs sql on the admin connection; 0 or -1 (printed). */
static inline int fx_admin_exec(struct fx *f, const char *sql)
{
    PGresult *r = PQexec(f->admin, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

    if (!ok)
        fprintf(stderr, "fixture: %s: %s", sql, PQerrorMessage(f->admin));
    PQclear(r);
    return ok ? 0 : -1;
}

/* Makes the connections opened from now on use schema (NULL: the default). */
static inline void fx_use_schema(const char *schema)
{
    char opt[128];

    if (!schema) {
        unsetenv("PGOPTIONS");
        return;
    }
    snprintf(opt, sizeof opt, "-c search_path=%s", schema);
    setenv("PGOPTIONS", opt, 1);
}

/* A new empty schema named after the process and a counter. */
static inline int fx_new_schema(struct fx *f, char *name, size_t len)
{
    char sql[160];

    snprintf(name, len, "t%ld_%u", (long)getpid(), ++fx_run.seq);
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", name);
    return fx_admin_exec(f, sql);
}

/* Another connection to the test's database: SQLite readonly = 1 a
 * query-only reader; PostgreSQL readonly = 1 a reader (migrate = 0). */
static inline int fx_open_other(struct fx *f, int readonly, struct store **out)
{
    char err[256] = "";
    int rc;

    if (fx_run.pg) {
        fx_use_schema(f->schema);
        rc = store_pg_open(fx_run.url, !readonly, out, err, sizeof err);
    } else {
        rc = store_sqlite_open(f->path, readonly, out, err, sizeof err);
    }
    if (rc != STORE_OK)
        fprintf(stderr, "fixture: open: %s\n", err);
    return rc;
}

static inline int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    if (!f)
        return -1;
    if (fx_run.pg) {
        f->admin = PQconnectdb(fx_run.url);
        if (PQstatus(f->admin) != CONNECTION_OK) {
            fprintf(stderr, "fixture: connect: %s", PQerrorMessage(f->admin));
            goto fail;
        }
        /* a test that failed with a transaction open must not hang the
         * DROP SCHEMA of its teardown */
        PQclear(PQexec(f->admin, "SET client_min_messages = warning; SET lock_timeout = '20s'"));
        if (fx_new_schema(f, f->schema, sizeof f->schema) < 0)
            goto fail;
        char sql[96];
        snprintf(sql, sizeof sql, "SET search_path = %s", f->schema);
        if (fx_admin_exec(f, sql) < 0)
            goto fail;
    } else {
        snprintf(f->dir, sizeof f->dir, "/tmp/parley-store-XXXXXX");
        if (!mkdtemp(f->dir))
            goto fail;
        snprintf(f->path, sizeof f->path, "%s/parley.db", f->dir);
    }
    if (fx_open_other(f, 0, &f->st) != STORE_OK)
        goto fail;
    *state = f;
    return 0;
fail:
    if (f->dir[0])
        rmdir(f->dir);
    PQfinish(f->admin);
    free(f);
    return -1;
}

static inline int fx_teardown(void **state)
{
    struct fx *f = *state;

    store_close(f->st);
    if (fx_run.pg) {
        char sql[96];
        snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", f->schema);
        fx_admin_exec(f, sql);
        PQfinish(f->admin);
        fx_use_schema(NULL);
    } else {
        const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
        char p[160];
        for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
            snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
            unlink(p);
        }
        rmdir(f->dir);
    }
    free(f);
    return 0;
}

/* The first column of the first row of sql, read on a connection of its
 * own (committed data only), or -1. */
static inline int64_t fx_count(struct fx *f, const char *sql)
{
    int64_t n = -1;

    if (fx_run.pg) {
        PGresult *r = PQexec(f->admin, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
            n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        else
            fprintf(stderr, "fixture: %s: %s", sql, PQerrorMessage(f->admin));
        PQclear(r);
        return n;
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    if (sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

#endif
