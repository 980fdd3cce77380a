/* main: the composition root. Reads the configuration, opens the store,
 * builds the layers bottom-up (workers, bus, writer, the core's per-worker
 * state with its reader) and wires them together: the workers call up only
 * through the handler table below. Then waits for SIGTERM/SIGINT and shuts
 * down in order: stop accepting and reading, flush the writer (acks go out),
 * close every socket with 1001, exit 0. */
#include "api.h"
#include "api_attach.h"
#include "bus.h"
#include "chat.h"
#include "chat_tx.h"
#include "config.h"
#include "chat_limits.h"
#include "guard.h"
#include "log.h"
#include "presence.h"
#include "proto.h"
#include "reader.h"
#include "bus_redis.h"
#include "reader_pool.h"
#include "store_pg.h"
#include "store_sqlite.h"
#include "util.h"
#include "worker.h"
#include "writer.h"

#include <malloc.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define SYNC_PAGE 200     /* messages of one conversation in a sync answer */
#define PRUNE_INTERVAL_MS (10 * 60 * 1000) /* the writer deletes dead refresh tokens this often */
#define CHECK_MS 5000     /* cluster: each worker checks its conversations for missed messages */

/* What a worker does with its connections' input: the transports, and the
 * core's end of a session. */
static const struct conn_handler handler = {
    .on_request = api_handle,
    .on_body_start = api_body_start,
    .on_message = proto_handle,
    .on_session_end = chat_session_end,
};

struct main_state {
    struct chat *chat;
    struct worker **workers;
    int nworkers;
    const struct config *cfg;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;     /* the graceful drain's steps */
    int drain_step;
};

/* The end of every stop: no more reading, every job already queued commits
 * and is answered, then the sockets close (1001) and the workers end. */
static void stop_now(struct main_state *ms)
{
    /* Every worker has stopped reading before the writer stops: a frame
     * read in between would be submitted to a stopping writer and answered
     * `unavailable` instead of being left unread (and resent). */
    uv_sem_t drained;
    uv_sem_init(&drained, 0);
    for (int i = 0; i < ms->nworkers; i++)
        worker_post_drain(ms->workers[i], &drained);
    for (int i = 0; i < ms->nworkers; i++)
        uv_sem_wait(&drained);
    uv_sem_destroy(&drained);
    writer_stop(ms->chat->writer);
    for (int i = 0; i < ms->nworkers; i++)
        worker_post_stop(ms->workers[i]);
    if (!uv_is_closing((uv_handle_t *)&ms->drain_timer))
        uv_close((uv_handle_t *)&ms->drain_timer, NULL);
}

/* The graceful drain (SIGTERM): not ready at once, serving on for
 * drain_delay_s so the load balancer notices; then the WebSockets close
 * with 1001 spread over drain_seconds (clients reconnect elsewhere a few at
 * a time); then stop_now. */
static void on_drain_timer(uv_timer_t *t)
{
    struct main_state *ms = t->data;
    if (ms->drain_step++ == 0 && ms->cfg->drain_seconds > 0) {
        log_info("drain: closing WebSockets over %lld s", (long long)ms->cfg->drain_seconds);
        for (int i = 0; i < ms->nworkers; i++)
            worker_post_spread_close(ms->workers[i], ms->cfg->drain_seconds * 1000);
        uv_timer_start(t, on_drain_timer, (uint64_t)ms->cfg->drain_seconds * 1000 + 200, 0);
        return;
    }
    stop_now(ms);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct main_state *ms = h->data;
    /* Closing the handles restores the default action: a second signal
     * during the drain ends the process at once. */
    uv_close((uv_handle_t *)&ms->sigterm, NULL);
    uv_close((uv_handle_t *)&ms->sigint, NULL);
    if (signum == SIGTERM && (ms->cfg->drain_delay_s > 0 || ms->cfg->drain_seconds > 0)) {
        log_info("signal %d: draining (not ready; serving for %lld s, then closing WebSockets over %lld s)",
                 signum, (long long)ms->cfg->drain_delay_s, (long long)ms->cfg->drain_seconds);
        for (int i = 0; i < ms->nworkers; i++)
            worker_post_leave(ms->workers[i]);
        uv_timer_start(&ms->drain_timer, on_drain_timer, (uint64_t)ms->cfg->drain_delay_s * 1000, 0);
        return;
    }
    log_info("signal %d: draining", signum); /* SIGINT (Ctrl-C): at once */
    stop_now(ms);
}

/* The Redis bus's link hook (on its thread): a shard is whole again after a
 * loss, so every worker reads back what its conversations missed. */
static void on_bus_link(void *ctx, int shard, int up)
{
    (void)shard;
    if (up)
        chat_check_all(ctx);
}

/* A reader pool's connection: the primary or the replica. */
static int open_pg_reader(void *arg, int replica, struct store **out, char *err, size_t errlen)
{
    const struct config *cfg = arg;
    return store_pg_open(replica ? cfg->db_replica_url : cfg->db_url, 0, out, err, errlen);
}

/* arg: the database's path. A query-only connection (WAL: it reads beside
 * the writer and the workers' connections). */
static int open_sqlite_reader(void *arg, int replica, struct store **out, char *err, size_t errlen)
{
    (void)replica; /* never asked: no replica */
    return store_sqlite_open(arg, 1, out, err, errlen);
}

static int fail(const char *what, const char *err)
{
    fprintf(stderr, "parleyd: %s%s%s\n", what, err && *err ? ": " : "", err ? err : "");
    return 2;
}

/* `parleyd backup --to FILE [options]`: a consistent copy of the embedded
 * database while the server runs (SQLite's online backup API), written
 * beside FILE and renamed over it when complete. */
static int backup(int argc, char **argv)
{
    static struct config cfg;
    char err[512] = "";
    const char *to = NULL;
    char **rest = xcalloc((size_t)argc + 1, sizeof *rest);
    int n = 0;
    rest[n++] = argv[0];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            to = argv[++i];
        else if (strncmp(argv[i], "--to=", 5) == 0)
            to = argv[i] + 5;
        else
            rest[n++] = argv[i];
    }
    int rc = config_load(&cfg, n, rest, err, sizeof err);
    free(rest);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return fail(err, NULL);
    if (!to || !*to)
        return fail("backup: --to FILE is required", NULL);
    if (cfg.db_url[0])
        return fail("backup: this node uses PostgreSQL (PARLEY_DB_URL); back it up with pg_dump or "
                    "pg_basebackup (docs/OPERATIONS.md)", NULL);
    char db_path[1100];
    snprintf(db_path, sizeof db_path, "%s/parley.db", cfg.data_dir);
    if (store_sqlite_backup(db_path, to, err, sizeof err) != STORE_OK)
        return fail("backup failed", err);
    printf("parleyd: backup of %s written to %s\n", db_path, to);
    return 0;
}

int main(int argc, char **argv)
{
    static struct config cfg; /* read-only once loaded; static only for its size */
    char err[512] = "";
    if (argc > 1 && strcmp(argv[1], "backup") == 0)
        return backup(argc, argv);
    int rc = config_load(&cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return fail(err, NULL);
    log_set_level(cfg.log_level);
    log_set_json(strcmp(cfg.log_format, "json") == 0);
    if (sodium_init() < 0)
        return fail("libsodium failed to initialize", NULL);
    if (config_load_secret(&cfg, err, sizeof err) < 0)
        return fail(err, NULL);
    if (api_attach_prepare(&cfg, err, sizeof err) < 0) /* <data>/attachments/tmp, emptied */
        return fail(err, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Threads other than main get their own malloc arenas, which glibc shrinks
     * (madvise) whenever their free top passes the trim threshold: with the
     * writer freeing a batch's worth at a time that was a system call per few
     * messages (bench/: ~20% of direct-send throughput). Keep up to 64 MiB. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);

    /* The store: PostgreSQL when PARLEY_DB_URL is set (migrations once per
     * cluster, under an advisory lock), else SQLite in the data directory. */
    const int pg = cfg.db_url[0] != 0;
    char db_path[1100];
    snprintf(db_path, sizeof db_path, "%s/parley.db", cfg.data_dir);
    struct store *wst;
    if ((pg ? store_pg_open(cfg.db_url, 1, &wst, err, sizeof err)
            : store_sqlite_open(db_path, 0, &wst, err, sizeof err)) != STORE_OK) /* creates and migrates */
        return fail("cannot open database", err);

    int nw = cfg.workers;
    struct worker **workers = xcalloc((size_t)nw, sizeof *workers);
    struct chat chat = {.cfg = &cfg, .workers = workers, .nworkers = nw};
    /* The signal handlers go in before any listener opens: a SIGTERM that
     * arrives as soon as the port answers is a drain, not the default death.
     * (They run in uv_run below, once everything is built.) */
    struct main_state ms = {.chat = &chat, .workers = workers, .nworkers = nw, .cfg = &cfg};
    uv_loop_t *loop = uv_default_loop();
    uv_timer_init(loop, &ms.drain_timer);
    ms.drain_timer.data = &ms;
    uv_signal_init(loop, &ms.sigterm);
    uv_signal_init(loop, &ms.sigint);
    ms.sigterm.data = ms.sigint.data = &ms;
    uv_signal_start(&ms.sigterm, on_signal, SIGTERM);
    uv_signal_start(&ms.sigint, on_signal, SIGINT);
    for (int i = 0; i < nw; i++) {
        if (!(workers[i] = worker_new(&cfg, i, nw, err, sizeof err)))
            return fail(err, NULL);
        /* Port 0: the first worker's listener got a port from the kernel; the
         * others share it (SO_REUSEPORT), and the log line below tells it. */
        if (i == 0 && cfg.listen_port == 0 && (cfg.listen_port = worker_bound_port(workers[0], 0)) < 0)
            return fail("cannot read the bound port", NULL);
        if (i == 0 && cfg.metrics_host[0] && cfg.metrics_port == 0 &&
            (cfg.metrics_port = worker_bound_port(workers[0], 1)) < 0)
            return fail("cannot read the bound port", NULL);
    }

    chat.presence = presence_new();
    chat.guard = guard_new((int)cfg.max_hashes, (size_t)cfg.hash_queue);
    /* The bus: Redis when PARLEY_REDIS_URL is set, else in-process. */
    if (cfg.redis_url[0]) {
        struct bus_redis_hooks hooks = {.link = on_bus_link, .ctx = &chat};
        if (!(chat.bus = bus_redis_new(cfg.redis_url, workers, nw, chat_deliver, &hooks, err, sizeof err)))
            return fail("cannot start the Redis bus", err);
        chat.check_ms = CHECK_MS;
    } else {
        chat.bus = bus_local_new(workers, nw, chat_deliver);
    }
    struct writer_config wcfg = {.batch_max = cfg.batch_max, .batch_interval_ms = cfg.batch_interval_ms,
                                 .batch_gap_us = cfg.batch_gap_us,
                                 .max_queue = cfg.writer_queue, .prune_interval_ms = PRUNE_INTERVAL_MS};
    chat.writer = writer_new(wst, wcfg, chat_tx_run, chat.bus, workers, nw);

    /* Reads: each worker's own SQLite connection, or a pool of PostgreSQL
     * connections (primary and replica) shared by the workers. With SQLite
     * the searches (reader_slow_kind) go to a pool of SQLite connections, so
     * a walk of the whole index never stalls a worker's loop. */
    struct reader_pool *pool = NULL;
    if (pg)
        pool = reader_pool_new(cfg.read_threads > 0 ? (int)cfg.read_threads : 1, open_pg_reader, &cfg,
                               cfg.db_replica_url[0] != 0, SYNC_PAGE, (size_t)cfg.read_queue);
    else if (cfg.read_threads > 0)
        pool = reader_pool_new((int)cfg.read_threads, open_sqlite_reader, db_path, 0, SYNC_PAGE,
                               (size_t)cfg.read_queue);
    chat.pool = pg ? pool : NULL; /* its counts in /metrics are every read's only there */
    struct chat_worker **cws = xcalloc((size_t)nw, sizeof *cws);
    for (int i = 0; i < nw; i++) {
        struct reader *rd;
        if (pool) {
            rd = reader_pool_handle(pool);
        } else {
            struct store *rst;
            if (store_sqlite_open(db_path, 1, &rst, err, sizeof err) != STORE_OK)
                return fail("cannot open database", err);
            rd = reader_inline_new(rst, SYNC_PAGE, pool ? reader_pool_handle(pool) : NULL);
        }
        cws[i] = chat_worker_new(&chat, workers[i], rd);
        worker_set_handler(workers[i], &handler, cws[i]);
        chat_limits_attach(cws[i]); /* connections per source address */
    }
    if (writer_start(chat.writer) < 0)
        return fail("cannot start the writer thread", NULL);
    for (int i = 0; i < nw; i++)
        if (worker_start(workers[i]) < 0)
            return fail("cannot start a worker thread", NULL);


    /* before the main line, which tells the harness that every listener is up */
    if (cfg.metrics_host[0])
        log_info("parleyd metrics listening on http://%s%s%s:%d/metrics", strchr(cfg.metrics_host, ':') ? "[" : "",
                 cfg.metrics_host, strchr(cfg.metrics_host, ':') ? "]" : "", cfg.metrics_port);
    const char *host = cfg.listen_host;
    log_info("parleyd listening on http://%s%s%s:%d/ (%d workers, %s store, %s bus, data in %s)",
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", cfg.listen_port, cfg.workers,
             pg ? (cfg.db_replica_url[0] ? "PostgreSQL with replica" : "PostgreSQL") : "SQLite",
             cfg.redis_url[0] ? "Redis" : "in-process", cfg.data_dir);
    uv_run(loop, UV_RUN_DEFAULT);

    for (int i = 0; i < nw; i++)
        worker_join(workers[i]);
    /* threads that post to the workers' inboxes end before the workers go */
    bus_free(chat.bus);
    reader_pool_free(pool);
    for (int i = 0; i < nw; i++)
        worker_free(workers[i]);
    for (int i = 0; i < nw; i++)
        chat_worker_free(cws[i]);
    writer_free(chat.writer);
    presence_free(chat.presence);
    guard_free(chat.guard);
    free(cws);
    free(workers);
    uv_loop_close(loop);
    log_info("parleyd stopped");
    return 0;
}
