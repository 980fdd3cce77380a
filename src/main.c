/* main: reads the configuration, opens the database, starts the writer and
 * one worker per core, then waits for SIGTERM/SIGINT and shuts down in order:
 * stop accepting, flush the writer (acks go out), close every socket with
 * 1001, exit 0. */
#include "config.h"
#include "log.h"
#include "presence.h"
#include "server.h"
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

struct main_state {
    struct server *srv;
    uv_signal_t sigterm, sigint;
};

static void post_all(struct server *srv, enum event_kind kind)
{
    for (int i = 0; i < srv->nworkers; i++) {
        struct event *ev = xcalloc(1, sizeof *ev);
        ev->kind = kind;
        worker_post(srv->workers[i], ev, ev);
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct main_state *ms = h->data;
    log_info("signal %d: draining", signum);
    post_all(ms->srv, EV_STOP_ACCEPT);
    /* every job already queued commits and is answered before sockets close */
    writer_stop(ms->srv->writer);
    post_all(ms->srv, EV_STOP);
    /* Closing the handles restores the default action: a second signal
     * during the drain ends the process at once. */
    uv_close((uv_handle_t *)&ms->sigterm, NULL);
    uv_close((uv_handle_t *)&ms->sigint, NULL);
}

static int fail(const char *what, const char *err)
{
    fprintf(stderr, "parleyd: %s%s%s\n", what, err && *err ? ": " : "", err ? err : "");
    return 2;
}

int main(int argc, char **argv)
{
    static struct config cfg; /* read-only once loaded; static only for its size */
    char err[512] = "";
    int rc = config_load(&cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return fail(err, NULL);
    log_set_level(cfg.log_level);
    if (sodium_init() < 0)
        return fail("libsodium failed to initialize", NULL);
    if (config_load_secret(&cfg, err, sizeof err) < 0)
        return fail(err, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Threads other than main get their own malloc arenas, which glibc shrinks
     * (madvise) whenever their free top passes the trim threshold: with the
     * writer freeing a batch's worth at a time that was a system call per few
     * messages (bench/: ~20% of direct-send throughput). Keep up to 64 MiB. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);

    struct server srv = {0};
    srv.cfg = &cfg;
    srv.nworkers = cfg.workers;
    snprintf(srv.db_path, sizeof srv.db_path, "%s/parley.db", cfg.data_dir);
    srv.presence = presence_new();
    srv.workers = xcalloc((size_t)srv.nworkers, sizeof *srv.workers);
    srv.writer = writer_new(&srv, err, sizeof err); /* creates the db and migrates */
    if (!srv.writer)
        return fail("cannot open database", err);
    for (int i = 0; i < srv.nworkers; i++) {
        srv.workers[i] = worker_new(&srv, i, err, sizeof err);
        if (!srv.workers[i])
            return fail(err, NULL);
    }
    if (writer_start(srv.writer) < 0)
        return fail("cannot start the writer thread", NULL);
    for (int i = 0; i < srv.nworkers; i++)
        if (worker_start(srv.workers[i]) < 0)
            return fail("cannot start a worker thread", NULL);

    struct main_state ms = {.srv = &srv};
    uv_loop_t *loop = uv_default_loop();
    uv_signal_init(loop, &ms.sigterm);
    uv_signal_init(loop, &ms.sigint);
    ms.sigterm.data = ms.sigint.data = &ms;
    uv_signal_start(&ms.sigterm, on_signal, SIGTERM);
    uv_signal_start(&ms.sigint, on_signal, SIGINT);

    const char *host = cfg.listen_host;
    log_info("parleyd listening on http://%s%s%s:%d/ (%d workers, data in %s)", strchr(host, ':') ? "[" : "",
             host, strchr(host, ':') ? "]" : "", cfg.listen_port, cfg.workers, cfg.data_dir);
    uv_run(loop, UV_RUN_DEFAULT);

    for (int i = 0; i < srv.nworkers; i++)
        worker_join(srv.workers[i]);
    for (int i = 0; i < srv.nworkers; i++)
        worker_free(srv.workers[i]);
    writer_free(srv.writer);
    presence_free(srv.presence);
    free(srv.workers);
    uv_loop_close(loop);
    log_info("parleyd stopped");
    return 0;
}
