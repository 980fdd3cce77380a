/* pg-insert-bench: how a batch of messages goes into PostgreSQL fastest, for
 * store_pg.c (docs/BENCHMARKS.md, "PostgreSQL: batch inserts").
 *
 * Two ways to insert the B messages of one writer batch, timed on the same
 * connection, schema and data, alternating round by round:
 *   multi-row  one INSERT ... SELECT FROM unnest($1::bigint[], ..., $5::bytea[])
 *              (what store_pg's send_batch does);
 *   pipeline   B single-row INSERTs sent in libpq's pipeline mode (one round
 *              trip, B statements executed).
 * Each batch is BEGIN, the inserts (the timed part: from the first byte sent
 * to the last answer), COMMIT (fsync). Then, for context, whole batches
 * through store_send_batch (lookups, members, reservations, inserts, read
 * positions, commit): what a node's writer gets.
 *
 *   pg-insert-bench [--rounds N] [--sizes 1,16,128,512] [--body BYTES] [URL]
 *
 * URL defaults to $PARLEY_TEST_PG_URL; the run uses a schema of its own
 * (dropped at the end). Typical: scripts/pgtmp exec build/pgtmp-bench
 * build/release/bench/pg/pg-insert-bench */
#include "store_pg.h"
#include "util.h"

#include <endian.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { CONVS = 8, MAXB = 4096 };

struct ctx {
    PGconn *conn;
    int64_t convs[CONVS], sconvs[CONVS], sender; /* the direct inserts', the store's */
    int64_t next_seq[CONVS];
    long serial; /* client ids */
    size_t body_len;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, PGconn *conn)
{
    fprintf(stderr, "pg-insert-bench: %s: %s\n", what, conn ? PQerrorMessage(conn) : "");
    exit(1);
}

static void exec_ok(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die(sql, conn);
    PQclear(r);
}

static void put32(struct buf *b, uint32_t v)
{
    uint32_t be = htobe32(v);
    buf_append(b, &be, 4);
}

static void arr_start(struct buf *b, uint32_t oid, size_t n)
{
    buf_init(b);
    put32(b, 1);
    put32(b, 0);
    put32(b, oid);
    put32(b, (uint32_t)n);
    put32(b, 1);
}

static void arr_i64(struct buf *b, int64_t v)
{
    uint64_t be = htobe64((uint64_t)v);
    put32(b, 8);
    buf_append(b, &be, 8);
}

static void arr_bytes(struct buf *b, const void *p, size_t n)
{
    put32(b, (uint32_t)n);
    buf_append(b, p, n);
}

struct msg {
    int64_t conv, seq, sender;
    char cid[32];
    uint64_t be[3];
};

static void make_batch(struct ctx *c, struct msg *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int k = (int)(i % CONVS);
        m[i].conv = c->convs[k];
        m[i].seq = ++c->next_seq[k];
        m[i].sender = c->sender;
        snprintf(m[i].cid, sizeof m[i].cid, "b%ld", ++c->serial);
    }
}

static const char *INSERT_MANY =
    "INSERT INTO messages(conv_id, seq, sender_id, client_id, body, created_at)"
    " SELECT k.conv, k.seq, k.sender, k.cid, k.body, $6 FROM"
    " unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[]) AS k(conv, seq, sender, cid, body)";
static const char *INSERT_ONE = "INSERT INTO messages(conv_id, seq, sender_id, client_id, body, created_at)"
                                " VALUES ($1, $2, $3, $4, $5, $6)";

/* The timed inserts of one batch, multi-row: seconds. */
static double insert_multi(struct ctx *c, struct msg *m, size_t n, const char *body)
{
    static const int fmt[6] = {1, 1, 1, 1, 1, 1};
    struct buf a[5];
    uint64_t ts = htobe64(1000);
    double t0 = now_s(); /* the arrays are part of the work, as the pipeline's messages are */
    arr_start(&a[0], 20, n);
    arr_start(&a[1], 20, n);
    arr_start(&a[2], 20, n);
    arr_start(&a[3], 25, n);
    arr_start(&a[4], 17, n);
    for (size_t i = 0; i < n; i++) {
        arr_i64(&a[0], m[i].conv);
        arr_i64(&a[1], m[i].seq);
        arr_i64(&a[2], m[i].sender);
        arr_bytes(&a[3], m[i].cid, strlen(m[i].cid));
        arr_bytes(&a[4], body, c->body_len);
    }
    const char *val[6] = {a[0].data, a[1].data, a[2].data, a[3].data, a[4].data, (const char *)&ts};
    int len[6] = {(int)a[0].len, (int)a[1].len, (int)a[2].len, (int)a[3].len, (int)a[4].len, 8};
    PGresult *r = PQexecPrepared(c->conn, "many", 6, val, len, fmt, 1);
    double dt = now_s() - t0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("insert (multi-row)", c->conn);
    PQclear(r);
    for (int i = 0; i < 5; i++)
        buf_dispose(&a[i]);
    return dt;
}

/* The timed inserts of one batch, pipelined single rows: seconds. */
static double insert_pipeline(struct ctx *c, struct msg *m, size_t n, const char *body)
{
    static const int fmt[6] = {1, 1, 1, 1, 1, 1};
    uint64_t ts = htobe64(1000);
    double t0 = now_s();
    if (!PQenterPipelineMode(c->conn))
        die("pipeline mode", c->conn);
    for (size_t i = 0; i < n; i++) {
        m[i].be[0] = htobe64((uint64_t)m[i].conv);
        m[i].be[1] = htobe64((uint64_t)m[i].seq);
        m[i].be[2] = htobe64((uint64_t)m[i].sender);
        const char *val[6] = {(const char *)&m[i].be[0], (const char *)&m[i].be[1], (const char *)&m[i].be[2],
                              m[i].cid, body, (const char *)&ts};
        int len[6] = {8, 8, 8, (int)strlen(m[i].cid), (int)c->body_len, 8};
        if (!PQsendQueryPrepared(c->conn, "one", 6, val, len, fmt, 1))
            die("send", c->conn);
    }
    if (!PQpipelineSync(c->conn))
        die("sync", c->conn);
    for (size_t i = 0; i < n; i++) {
        PGresult *r = PQgetResult(c->conn);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("insert (pipeline)", c->conn);
        PQclear(r);
        if ((r = PQgetResult(c->conn)) != NULL)
            die("pipeline: more results than expected", c->conn);
    }
    PGresult *r = PQgetResult(c->conn);
    if (PQresultStatus(r) != PGRES_PIPELINE_SYNC)
        die("pipeline sync", c->conn);
    PQclear(r);
    double dt = now_s() - t0;
    if (!PQexitPipelineMode(c->conn))
        die("exit pipeline mode", c->conn);
    return dt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Whole batches through the store: messages per second (median of rounds). */
static double store_rate(struct store *st, struct ctx *c, size_t n, int rounds, const char *body)
{
    struct store_send *v = calloc(n, sizeof *v);
    char (*cid)[32] = calloc(n, sizeof *cid);
    double *rate = calloc((size_t)rounds, sizeof *rate);

    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < n; i++) {
            snprintf(cid[i], sizeof cid[i], "s%ld", ++c->serial);
            v[i] = (struct store_send){.conv = c->sconvs[i % CONVS], .sender = c->sender, .client_id = cid[i],
                                       .body = body, .body_len = c->body_len};
        }
        double t0 = now_s();
        if (store_begin(st) != STORE_OK || store_send_batch(st, v, n, 1000, NULL) != STORE_OK ||
            store_commit(st) != STORE_OK)
            die("store_send_batch", NULL);
        rate[r] = (double)n / (now_s() - t0);
    }
    double m = median(rate, rounds);
    free(v);
    free(cid);
    free(rate);
    return m;
}

int main(int argc, char **argv)
{
    const char *url = getenv("PARLEY_TEST_PG_URL");
    size_t sizes[16] = {1, 16, 128, 512}, nsizes = 4, body_len = 100;
    int rounds = 30;
    char schema[32], opt[192], err[256];
    struct ctx c = {0};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--body") == 0 && i + 1 < argc) {
            body_len = (size_t)atol(argv[++i]);
        } else if (strcmp(argv[i], "--sizes") == 0 && i + 1 < argc) {
            char *s = argv[++i], *tok;
            nsizes = 0;
            while ((tok = strsep(&s, ",")) != NULL && nsizes < 16)
                sizes[nsizes++] = (size_t)atol(tok);
        } else if (argv[i][0] != '-') {
            url = argv[i];
        } else {
            fprintf(stderr, "usage: pg-insert-bench [--rounds N] [--sizes 1,16,128,512] [--body BYTES] [URL]\n");
            return 2;
        }
    }
    if (!url || !*url || rounds < 1 || body_len > 65536) {
        fprintf(stderr, "pg-insert-bench: no database URL (argument or PARLEY_TEST_PG_URL), or a bad option\n");
        return 2;
    }
    for (size_t i = 0; i < nsizes; i++)
        if (sizes[i] < 1 || sizes[i] > MAXB) {
            fprintf(stderr, "pg-insert-bench: batch sizes are 1-%d\n", MAXB);
            return 2;
        }

    /* a schema of our own, migrated by the store */
    c.conn = PQconnectdb(url);
    if (PQstatus(c.conn) != CONNECTION_OK)
        die("connect", c.conn);
    snprintf(schema, sizeof schema, "bench_%ld", (long)getpid());
    snprintf(opt, sizeof opt, "SET client_min_messages = warning; CREATE SCHEMA %s; SET search_path = %s", schema,
             schema);
    exec_ok(c.conn, opt);
    snprintf(opt, sizeof opt, "-c search_path=%s", schema);
    setenv("PGOPTIONS", opt, 1);
    struct store *st;
    if (store_pg_open(url, 1, &st, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "pg-insert-bench: %s\n", err);
        return 1;
    }
    json_t *u = NULL;
    if (store_user_create(st, "bench", NULL, "h", 1, &u) != STORE_OK)
        die("user", NULL);
    c.sender = json_integer_value(json_object_get(u, "id"));
    json_decref(u);
    for (int k = 0; k < CONVS; k++)
        if (store_conv_create_group(st, c.sender, "bench", NULL, 0, 1, &c.convs[k]) != STORE_OK ||
            store_conv_create_group(st, c.sender, "bench", NULL, 0, 1, &c.sconvs[k]) != STORE_OK)
            die("conversation", NULL);
    c.body_len = body_len;
    char *body = xmalloc(body_len + 1);
    memset(body, 'x', body_len);
    PGresult *r = PQprepare(c.conn, "many", INSERT_MANY, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("prepare", c.conn);
    PQclear(r);
    r = PQprepare(c.conn, "one", INSERT_ONE, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("prepare", c.conn);
    PQclear(r);

    printf("PostgreSQL %d, body %zu bytes, %d rounds per size, medians\n", PQserverVersion(c.conn), body_len, rounds);
    printf("%6s  %14s  %14s  %7s  %14s  %14s  %7s  %14s\n", "batch", "multi ins/s", "pipe ins/s", "ratio",
           "multi +commit", "pipe +commit", "ratio", "send_batch/s");
    struct msg *m = xmalloc(MAXB * sizeof *m);
    double *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = xmalloc((size_t)rounds * sizeof(double));
    for (size_t s = 0; s < nsizes; s++) {
        size_t n = sizes[s];
        for (int round = 0; round < rounds; round++) {
            for (int w = 0; w < 2; w++) {
                int which = (round + w) % 2; /* alternate who goes first */
                make_batch(&c, m, n);
                double t0 = now_s();
                exec_ok(c.conn, "BEGIN");
                double dt = which == 0 ? insert_multi(&c, m, n, body) : insert_pipeline(&c, m, n, body);
                exec_ok(c.conn, "COMMIT");
                t[which][round] = dt;
                t[2 + which][round] = now_s() - t0;
            }
        }
        double im = (double)n / median(t[0], rounds), ip = (double)n / median(t[1], rounds);
        double cm = (double)n / median(t[2], rounds), cp = (double)n / median(t[3], rounds);
        double sb = store_rate(st, &c, n, rounds, body);
        printf("%6zu  %14.0f  %14.0f  %7.2f  %14.0f  %14.0f  %7.2f  %14.0f\n", n, im, ip, im / ip, cm, cp, cm / cp,
               sb);
        fflush(stdout);
    }
    for (int i = 0; i < 4; i++)
        free(t[i]);
    free(m);
    free(body);
    store_close(st);
    snprintf(opt, sizeof opt, "DROP SCHEMA %s CASCADE", schema);
    exec_ok(c.conn, opt);
    PQfinish(c.conn);
    return 0;
}
