/* Unit tests of the Redis bus (bus_redis.c) against real redis-server
 * processes, which the tests start on free loopback ports and stop by PID
 * (skipped, with a message, when redis-server is not installed). Two bus
 * instances in this process are two nodes, each with its own real workers
 * whose loops the test runs (as test_bus.c does). Nothing is proven absent
 * by sleeping: a later marker that must arrive is awaited, then the earlier
 * publication is checked missing. Every wait is bounded (WAIT_MS).
 *
 * Also, without Redis: the envelope codec (round trips, every truncation,
 * random corruption) and URL parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bus_redis.h"
#include "config.h"
#include "ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { NW = 2, MAXSEEN = 4096, MAXKEPT = 64, MAXLINKS = 64, WAIT_MS = 20000 };

/* ---- redis-server processes ---- */

struct redis {
    pid_t pid;
    int port;
    char pass[32];
};

static int redis_installed(void)
{
    const char *path = getenv("PATH");
    char file[4096];
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        snprintf(file, sizeof file, "%.*s/redis-server", (int)n, p);
        if (access(file, X_OK) == 0)
            return 1;
        p += n + (colon ? 1 : 0);
    }
    print_message("redis-server is not installed (apt-get install redis-server): test skipped\n");
    return 0;
}

#define NEED_REDIS()             \
    do {                         \
        if (!redis_installed()) \
            skip();              \
    } while (0)

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static int port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Starts redis-server on r->port (0: a free one), waits until it accepts. */
static void redis_start(struct redis *r)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = r->port ? r->port : free_port();
        char ports[16], logf[256];
        snprintf(ports, sizeof ports, "%d", port);
        const char *tmp = getenv("PARLEY_TEST_TMP");
        if (tmp && *tmp)
            mkdir(tmp, 0700);
        snprintf(logf, sizeof logf, "%s/redis-%d.log", tmp && *tmp ? tmp : "/tmp", port);
        char *argv[32];
        int n = 0;
        argv[n++] = "redis-server";
        argv[n++] = "--port";
        argv[n++] = ports;
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
        argv[n++] = "--save";
        argv[n++] = "";
        argv[n++] = "--appendonly";
        argv[n++] = "no";
        argv[n++] = "--daemonize";
        argv[n++] = "no";
        argv[n++] = "--loglevel";
        argv[n++] = "warning";
        argv[n++] = "--dir";
        argv[n++] = tmp && *tmp ? (char *)tmp : "/tmp";
        if (r->pass[0]) {
            argv[n++] = "--requirepass";
            argv[n++] = r->pass;
        }
        argv[n] = NULL;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        pid_t pid;
        int rc = posix_spawnp(&pid, "redis-server", &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        assert_int_equal(rc, 0);
        uint64_t deadline = mono_ms() + 10000;
        int status;
        while (mono_ms() < deadline) {
            if (port_open(port)) {
                r->pid = pid;
                r->port = port;
                return;
            }
            if (waitpid(pid, &status, WNOHANG) == pid)
                break; /* exited: the port was taken meanwhile? */
            usleep(5000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        if (r->port) /* a fixed port (a restart): it may still be closing; try again */
            usleep(200000);
    }
    fail_msg("redis-server did not start (port %d)", r->port);
}

static void redis_stop(struct redis *r, int sig)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, sig);
    kill(r->pid, SIGCONT); /* if a test left it stopped */
    int status;
    waitpid(r->pid, &status, 0);
    r->pid = 0;
}

/* A plain connection to one server, for what the test does by hand. */
static redisContext *redis_cli(const struct redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    if (r->pass[0]) {
        redisReply *rep = redisCommand(c, "AUTH %s", r->pass);
        assert_non_null(rep);
        freeReplyObject(rep);
    }
    return c;
}

static long long numsub(const struct redis *r, const char *chan)
{
    redisContext *c = redis_cli(r);
    redisReply *rep = redisCommand(c, "PUBSUB NUMSUB %s", chan);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 2);
    long long n = rep->element[1]->integer;
    freeReplyObject(rep);
    redisFree(c);
    return n;
}

static void publish_raw(const struct redis *r, const char *chan, const void *data, size_t len)
{
    redisContext *c = redis_cli(r);
    redisReply *rep = redisCommand(c, "PUBLISH %s %b", chan, data, len);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    redisFree(c);
}

/* ---- nodes: workers + a Redis bus ---- */

struct seen {
    int64_t conv, seq, user;
    enum bus_kind kind;
    uint64_t origin;
};

struct node {
    struct config cfg;
    struct worker *w[NW];
    struct bus *bus;
    struct seen seen[NW][MAXSEEN];
    int nseen[NW];
    struct bus_msg *kept[MAXKEPT]; /* worker 0's broadcast kinds, for their contents */
    int nkept;
    uv_mutex_t mu;                 /* links: written on the bus thread */
    int links[MAXLINKS];           /* shard * 2 + up */
    int nlinks;
};

static void record(struct worker *w, const struct bus_msg *m)
{
    struct node *n = w->ctx;
    int i = w->index;
    if (n->nseen[i] < MAXSEEN)
        n->seen[i][n->nseen[i]++] = (struct seen){m->conv, m->seq, m->user, m->kind, m->origin};
    if (i == 0 && (m->kind == BUS_PRESENCE || m->kind == BUS_CONV_PUSH) && n->nkept < MAXKEPT)
        n->kept[n->nkept++] = bus_msg_ref((struct bus_msg *)m);
}

static void on_link(void *ctx, int shard, int up)
{
    struct node *n = ctx;
    uv_mutex_lock(&n->mu);
    if (n->nlinks < MAXLINKS)
        n->links[n->nlinks++] = shard * 2 + up;
    uv_mutex_unlock(&n->mu);
}

static int nlinks(struct node *n)
{
    uv_mutex_lock(&n->mu);
    int k = n->nlinks;
    uv_mutex_unlock(&n->mu);
    return k;
}

static struct node *node_new(const char *urls)
{
    struct node *n = calloc(1, sizeof *n);
    assert_non_null(n);
    strcpy(n->cfg.listen_host, "127.0.0.1");
    n->cfg.listen_port = 0;
    n->cfg.heartbeat_ms = 30000;
    uv_mutex_init(&n->mu);
    char err[256];
    for (int i = 0; i < NW; i++) {
        n->w[i] = worker_new(&n->cfg, i, NW, err, sizeof err);
        assert_non_null(n->w[i]);
        worker_set_handler(n->w[i], NULL, n);
    }
    struct bus_redis_hooks hooks = {.link = on_link, .ctx = n};
    n->bus = bus_redis_new(urls, n->w, NW, record, &hooks, err, sizeof err);
    if (!n->bus)
        fail_msg("bus_redis_new: %s", err);
    return n;
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    bus_free(n->bus); /* before the workers: its thread posts to them */
    for (int i = 0; i < NW; i++)
        worker_free(n->w[i]);
    for (int i = 0; i < n->nkept; i++)
        bus_msg_unref(n->kept[i]);
    uv_mutex_destroy(&n->mu);
    free(n);
}

static void pump(struct node *n)
{
    for (int i = 0; n && i < NW; i++)
        uv_run(&n->w[i]->loop, UV_RUN_NOWAIT);
}

static struct bus_redis_stats stats(struct node *n)
{
    struct bus_redis_stats s;
    bus_redis_stats(n->bus, &s);
    return s;
}

static int seen_count(struct node *n, int w, enum bus_kind kind, int64_t conv, int64_t seq)
{
    int k = 0;
    for (int i = 0; i < n->nseen[w]; i++)
        if (n->seen[w][i].kind == kind && n->seen[w][i].conv == conv && n->seen[w][i].seq == seq)
            k++;
    return k;
}

static int seen_everywhere(struct node *n, enum bus_kind kind, int64_t conv, int64_t seq)
{
    for (int w = 0; w < NW; w++)
        if (!seen_count(n, w, kind, conv, seq))
            return 0;
    return 1;
}

struct fixture {
    struct redis r[2];
    struct node *a, *b;
};

/* Waits, running both nodes' workers, until cond holds; fails after WAIT_MS. */
#define WAIT(f, cond)                                                 \
    do {                                                              \
        uint64_t deadline_ = mono_ms() + WAIT_MS;                     \
        while (!(cond)) {                                             \
            pump((f)->a);                                             \
            pump((f)->b);                                             \
            if (mono_ms() > deadline_)                                \
                fail_msg("timed out waiting for: %s", #cond);         \
            usleep(1000);                                             \
        }                                                             \
        pump((f)->a);                                                 \
        pump((f)->b);                                                 \
    } while (0)

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    node_free(f->a);
    node_free(f->b);
    for (int i = 0; i < 2; i++)
        redis_stop(&f->r[i], SIGTERM);
    free(f);
    return 0;
}

static struct bus_msg *msg(int64_t conv, int64_t seq)
{
    struct bus_msg *m = bus_msg_new(BUS_MSG, conv);
    m->seq = seq;
    m->frame = frame_ws(WS_OP_TEXT, "x", 1);
    int64_t members[] = {1, 2, 3};
    m->users = idlist_new(members, 3);
    return m;
}

static void publish(struct node *n, struct bus_msg *m)
{
    bus_publish(n->bus, m, NULL);
    bus_msg_unref(m);
}

static struct bus_msg *presence(int64_t user)
{
    struct bus_msg *m = bus_msg_new(BUS_PRESENCE, 0);
    m->user = user;
    m->frame = frame_ws(WS_OP_TEXT, "{\"op\":\"presence\"}", 17);
    int64_t convs[] = {10, 11};
    m->users = idlist_new(convs, 2);
    return m;
}

static void url_of(char *out, size_t len, const struct redis *r, int nr)
{
    size_t off = 0;
    for (int i = 0; i < nr; i++)
        off += (size_t)snprintf(out + off, len - off, "%sredis://127.0.0.1:%d", i ? "," : "", r[i].port);
}

/* Two nodes on the servers of f->r[0..nr), both up. */
static void two_nodes(struct fixture *f, int nr)
{
    char urls[256];
    url_of(urls, sizeof urls, f->r, nr);
    f->a = node_new(urls);
    f->b = node_new(urls);
    WAIT(f, bus_redis_ready(f->a->bus) && bus_redis_ready(f->b->bus));
    /* per shard: the broadcast channel and the node's ping channel */
    assert_int_equal(stats(f->a).channels, 2 * nr);
    assert_int_equal(stats(f->b).channels, 2 * nr);
}

/* ---- with Redis ---- */

/* A publication reaches the other node's workers for a watched conversation,
 * not for an unwatched one, in publish order; the publisher's own workers
 * get each once (at once, not again from Redis). Unwatching unsubscribes. */
static void test_watched_unwatched_order_own(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    two_nodes(f, 1);
    struct node *a = f->a, *b = f->b;

    bus_watch(b->bus, 0, 10);
    bus_watch(b->bus, 1, 10); /* a second worker: no second SUBSCRIBE */
    bus_watch(a->bus, 0, 10); /* A hears its own back from Redis: skipped */
    assert_int_equal(bus_watching(b->bus, 10), 2);
    WAIT(f, stats(b).channels == 3 && stats(a).channels == 3);
    assert_int_equal(numsub(&f->r[0], "parley:c:10"), 2);

    publish(a, msg(11, 1)); /* nobody watches 11 */
    struct postbox pb;
    postbox_init(&pb, a->w, NW);
    for (int s = 1; s <= 200; s++) {
        struct bus_msg *m = msg(10, s);
        bus_publish(a->bus, m, s <= 100 ? &pb : NULL);
        bus_msg_unref(m);
        if (s == 100)
            postbox_flush(&pb); /* local delivery of the first 100 waits for the flush */
    }
    postbox_dispose(&pb);
    WAIT(f, seen_everywhere(b, BUS_MSG, 10, 200));
    /* B's marker goes through Redis after A's 200 did, on the same connections */
    publish(b, msg(10, 1000));
    WAIT(f, seen_everywhere(a, BUS_MSG, 10, 1000));

    for (int w = 0; w < NW; w++) {
        /* B: all 200 in order, nothing of conv 11 (it came before them) */
        int64_t next = 1;
        for (int i = 0; i < b->nseen[w]; i++) {
            assert_int_not_equal(b->seen[w][i].conv, 11);
            if (b->seen[w][i].conv == 10 && b->seen[w][i].seq <= 200) {
                assert_int_equal(b->seen[w][i].seq, next);
                assert_int_equal(b->seen[w][i].origin, a->bus->node);
                next++;
            }
        }
        assert_int_equal(next, 201);
        /* A: each of its own exactly once, the local delivery */
        assert_int_equal(seen_count(a, w, BUS_MSG, 11, 1), 1);
        for (int s = 1; s <= 200; s++)
            assert_int_equal(seen_count(a, w, BUS_MSG, 10, s), 1);
        assert_int_equal(a->nseen[w], 202);
    }
    WAIT(f, stats(a).published >= 201);
    assert_int_equal(stats(a).dropped, 0);
    assert_int_equal(stats(b).received, 200);

    /* unwatch: the channel goes with the last worker */
    bus_unwatch(b->bus, 0, 10);
    assert_int_equal(bus_watching(b->bus, 10), 1);
    bus_unwatch(b->bus, 1, 10);
    assert_int_equal(bus_watching(b->bus, 10), 0);
    WAIT(f, stats(b).channels == 2);
    publish(a, msg(10, 300));
    publish(a, presence(42)); /* broadcast: B gets it whatever it watches */
    WAIT(f, seen_everywhere(b, BUS_PRESENCE, 0, 0));
    for (int w = 0; w < NW; w++)
        assert_int_equal(seen_count(b, w, BUS_MSG, 10, 300), 0);
}

/* Presence and conversation pushes reach every node without a watch, with
 * their contents intact. */
static void test_broadcast_kinds(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    two_nodes(f, 1);
    struct node *a = f->a, *b = f->b;

    struct bus_msg *p = presence(7);
    bus_publish(a->bus, p, NULL);

    struct bus_msg *push = bus_msg_new(BUS_CONV_PUSH, 12);
    push->seq = 9;
    push->frame = frame_new(5);
    memcpy(push->frame->data, "body}", 5); /* a push's shared body is not a whole frame */
    push->pos = malloc(2 * sizeof *push->pos);
    push->pos[0] = (struct store_pos){.user = 1, .last_read_seq = 3};
    push->pos[1] = (struct store_pos){.user = 2, .last_read_seq = 9};
    push->npos = 2;
    int64_t gone[] = {5};
    push->users = idlist_new(gone, 1);
    push->aux = frame_ws(WS_OP_TEXT, "{\"gone\":1}", 10);
    bus_publish(a->bus, push, NULL);

    WAIT(f, seen_everywhere(b, BUS_CONV_PUSH, 12, 9) && seen_everywhere(b, BUS_PRESENCE, 0, 0));
    assert_int_equal(b->nkept, 2);
    struct bus_msg *rp = b->kept[0], *rq = b->kept[1];
    assert_int_equal(rp->kind, BUS_PRESENCE);
    assert_int_equal(rp->user, 7);
    assert_int_equal(rp->users->n, 2);
    assert_int_equal(rp->users->ids[1], 11);
    assert_int_equal(rp->frame->len, p->frame->len);
    assert_memory_equal(rp->frame->data, p->frame->data, p->frame->len);
    assert_int_equal(rp->origin, a->bus->node);

    assert_int_equal(rq->kind, BUS_CONV_PUSH);
    assert_int_equal(rq->conv, 12);
    assert_int_equal(rq->npos, 2);
    assert_int_equal(rq->pos[1].user, 2);
    assert_int_equal(rq->pos[1].last_read_seq, 9);
    assert_int_equal(rq->users->n, 1);
    assert_int_equal(rq->users->ids[0], 5);
    assert_int_equal(rq->frame->len, 5);
    assert_memory_equal(rq->frame->data, "body}", 5);
    assert_int_equal(rq->aux->len, push->aux->len);
    assert_memory_equal(rq->aux->data, push->aux->data, push->aux->len);
    bus_msg_unref(p);
    bus_msg_unref(push);

    /* A's own broadcasts came back from Redis and were skipped: once each */
    publish(b, presence(8));
    WAIT(f, a->nkept == 3);
    for (int w = 0; w < NW; w++)
        assert_int_equal(seen_count(a, w, BUS_CONV_PUSH, 12, 9), 1);
    assert_int_equal(a->kept[0]->user, 7);
    assert_int_equal(a->kept[2]->user, 8);
}

/* Envelopes that are not ours, or are broken, are counted and dropped;
 * a good one published by hand is delivered. */
static void test_malformed_dropped(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    two_nodes(f, 1);
    struct node *a = f->a, *b = f->b;
    bus_watch(b->bus, 0, 20);
    WAIT(f, stats(b).channels == 3);

    struct bus_msg *good = msg(20, 5);
    good->origin = 0x1234; /* some other node */
    struct buf env;
    buf_init(&env);
    bus_redis_encode(good, &env);
    bus_msg_unref(good);

    const struct redis *r = &f->r[0];
    int nbad = 0;
    publish_raw(r, "parley:c:20", "", 0);
    publish_raw(r, "parley:c:20", "garbage", 7);
    publish_raw(r, "parley:c:20", env.data, env.len - 1); /* truncated */
    publish_raw(r, "parley:b", env.data, 59);            /* shorter than the header */
    nbad += 4;
    char *copy = malloc(env.len + 8);
    struct { size_t at, n; int byte; size_t extra; } corrupt[] = {
        {0, 1, 2, 0},       /* a version this node does not know */
        {1, 1, 9, 0},       /* kind */
        {52, 4, 0xff, 0},   /* 2^32 - 1 users */
        {4, 8, 0, 0},       /* no origin */
        {60, 1, 0x01, 0},   /* the frame is not one WebSocket frame (no FIN) */
        {env.len, 8, 0, 8}, /* trailing bytes */
    };
    for (size_t i = 0; i < sizeof corrupt / sizeof *corrupt; i++) {
        memcpy(copy, env.data, env.len);
        memset(copy + corrupt[i].at, corrupt[i].byte, corrupt[i].n);
        publish_raw(r, "parley:c:20", copy, env.len + corrupt[i].extra);
        nbad++;
    }
    free(copy);

    publish_raw(r, "parley:c:20", env.data, env.len); /* good: delivered */
    buf_dispose(&env);
    publish(a, msg(20, 6)); /* the marker */
    WAIT(f, seen_everywhere(b, BUS_MSG, 20, 6));
    for (int w = 0; w < NW; w++) {
        assert_int_equal(b->nseen[w], 2);
        assert_int_equal(b->seen[w][0].seq, 5);
        assert_int_equal(b->seen[w][0].origin, 0x1234);
    }
    assert_int_equal(stats(b).malformed, nbad);
    assert_int_equal(stats(b).received, 2);
    WAIT(f, stats(a).malformed == 1); /* the broadcast one reached A too */
}

/* redis-server killed and restarted on its port: local delivery goes on,
 * what is published meanwhile is dropped and counted, both nodes reconnect
 * and resubscribe, the link hook says down then up, delivery resumes. */
static void test_redis_restart(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    two_nodes(f, 1);
    struct node *a = f->a, *b = f->b;
    bus_watch(b->bus, 0, 30);
    bus_watch(a->bus, 1, 31);
    WAIT(f, stats(b).channels == 3 && stats(a).channels == 3);
    assert_int_equal(nlinks(a), 0);
    assert_int_equal(nlinks(b), 0);

    redis_stop(&f->r[0], SIGKILL);
    WAIT(f, nlinks(a) == 1 && nlinks(b) == 1);
    assert_int_equal(a->links[0], 0); /* shard 0 down */
    assert_int_equal(b->links[0], 0);
    assert_false(bus_redis_ready(a->bus));

    publish(a, msg(30, 1)); /* local delivery works; Redis does not */
    WAIT(f, seen_everywhere(a, BUS_MSG, 30, 1));
    WAIT(f, stats(a).dropped >= 1);
    bus_watch(b->bus, 1, 32); /* a watch while down: subscribed at the reconnection */

    redis_start(&f->r[0]); /* the same port */
    WAIT(f, nlinks(a) == 2 && nlinks(b) == 2);
    assert_int_equal(a->links[1], 1); /* shard 0 up */
    assert_int_equal(b->links[1], 1);
    assert_true(bus_redis_ready(a->bus));
    assert_true(bus_redis_ready(b->bus));
    assert_int_equal(stats(b).channels, 4);
    assert_int_equal(stats(a).channels, 3);
    assert_true(stats(a).reconnects >= 2);
    assert_true(stats(b).reconnects >= 2);

    publish(a, msg(30, 2));
    publish(a, msg(32, 1));
    publish(b, msg(31, 7));
    WAIT(f, seen_everywhere(b, BUS_MSG, 30, 2) && seen_everywhere(b, BUS_MSG, 32, 1) &&
                seen_everywhere(a, BUS_MSG, 31, 7));
    for (int w = 0; w < NW; w++)
        assert_int_equal(seen_count(b, w, BUS_MSG, 30, 1), 0); /* dropped while down */
    assert_int_equal(nlinks(a), 2);
}

/* A Redis that stops answering (SIGSTOP) while its connections stay open:
 * the pings through it go unanswered, both nodes close and reconnect after
 * the dead interval (10 s), and come back when it answers again. */
static void test_redis_stalled(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    two_nodes(f, 1);
    struct node *a = f->a, *b = f->b;
    bus_watch(b->bus, 0, 60);
    WAIT(f, stats(b).channels == 3);

    kill(f->r[0].pid, SIGSTOP);
    publish(a, msg(60, 1)); /* taken by the connection, never answered */
    WAIT(f, nlinks(a) == 1 && nlinks(b) == 1);
    assert_int_equal(a->links[0], 0);
    assert_int_equal(b->links[0], 0);
    WAIT(f, stats(a).dropped >= 1); /* with the publishing connection, maybe a tick after */
    kill(f->r[0].pid, SIGCONT);
    WAIT(f, nlinks(a) == 2 && nlinks(b) == 2);
    assert_int_equal(a->links[1], 1);
    assert_int_equal(b->links[1], 1);
    publish(a, msg(60, 2));
    WAIT(f, seen_everywhere(b, BUS_MSG, 60, 2));
    for (int w = 0; w < NW; w++)
        assert_int_equal(seen_count(b, w, BUS_MSG, 60, 1), 0);
}

/* Two Redis servers: conversations live on both, by the stable hash, and
 * are delivered across nodes on both; broadcasts too. */
static void test_two_shards(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    redis_start(&f->r[0]);
    redis_start(&f->r[1]);
    two_nodes(f, 2);
    struct node *a = f->a, *b = f->b;
    int64_t conv[2] = {0, 0}, user[2] = {0, 0};
    for (int64_t c = 1; !conv[0] || !conv[1]; c++)
        if (!conv[bus_redis_shard_of(c, 2)])
            conv[bus_redis_shard_of(c, 2)] = c;
    for (int64_t u = 1000; !user[0] || !user[1]; u++)
        if (!user[bus_redis_shard_of(u, 2)])
            user[bus_redis_shard_of(u, 2)] = u;
    bus_watch(b->bus, 0, conv[0]);
    bus_watch(b->bus, 1, conv[1]);
    WAIT(f, stats(b).channels == 6);
    for (int s = 0; s < 2; s++) {
        char chan[64];
        snprintf(chan, sizeof chan, "parley:c:%lld", (long long)conv[s]);
        assert_int_equal(numsub(&f->r[s], chan), 1);
        assert_int_equal(numsub(&f->r[!s], chan), 0);
        assert_int_equal(numsub(&f->r[s], "parley:b"), 2); /* both nodes, on every shard */
    }
    for (int s = 1; s <= 100; s++)
        publish(a, msg(conv[s % 2], s));
    publish(a, presence(user[0]));
    publish(a, presence(user[1]));
    WAIT(f, seen_everywhere(b, BUS_MSG, conv[0], 100) && seen_everywhere(b, BUS_MSG, conv[1], 99));
    for (int w = 0; w < NW; w++) {
        int64_t next[2] = {2, 1};
        for (int i = 0; i < b->nseen[w]; i++) {
            struct seen *x = &b->seen[w][i];
            if (x->kind != BUS_MSG)
                continue;
            int s = x->conv == conv[1];
            assert_int_equal(x->seq, next[s]); /* in order per conversation */
            next[s] += 2;
        }
        assert_int_equal(next[0], 102);
        assert_int_equal(next[1], 101);
    }
    WAIT(f, b->nkept == 2);
    assert_int_equal(stats(b).malformed, 0);

    /* the hash spreads conversations evenly */
    int on0 = 0;
    for (int64_t c = 1; c <= 10000; c++)
        on0 += bus_redis_shard_of(c, 2) == 0;
    assert_in_range(on0, 4500, 5500);
    assert_int_equal(bus_redis_shard_of(12345, 1), 0);
}

/* A password, a database number and a host name: AUTH first; the channels carry the
 * database in their prefix (Redis's pub/sub ignores SELECT). A wrong
 * password is a failed link, not a crash. */
static void test_auth_and_db(void **state)
{
    NEED_REDIS();
    struct fixture *f = *state;
    strcpy(f->r[0].pass, "s3cret");
    redis_start(&f->r[0]);
    char urls[128];
    /* A by name: resolved off the bus thread (::1 first, maybe: then the next address) */
    snprintf(urls, sizeof urls, "redis://:s3cret@localhost:%d/3", f->r[0].port);
    f->a = node_new(urls);
    snprintf(urls, sizeof urls, "redis://:s3cret@127.0.0.1:%d/3", f->r[0].port);
    f->b = node_new(urls);
    WAIT(f, bus_redis_ready(f->a->bus) && bus_redis_ready(f->b->bus));
    bus_watch(f->b->bus, 0, 40);
    WAIT(f, stats(f->b).channels == 3);
    assert_int_equal(numsub(&f->r[0], "parley:3:c:40"), 1);
    publish(f->a, msg(40, 1));
    WAIT(f, seen_everywhere(f->b, BUS_MSG, 40, 1));
    node_free(f->b);
    f->b = NULL;

    snprintf(urls, sizeof urls, "redis://default:wrong@127.0.0.1:%d", f->r[0].port);
    f->b = node_new(urls);
    WAIT(f, nlinks(f->b) == 1);
    assert_int_equal(f->b->links[0], 0);
    assert_false(bus_redis_ready(f->b->bus));
    publish(f->b, msg(41, 1)); /* local delivery regardless */
    WAIT(f, seen_everywhere(f->b, BUS_MSG, 41, 1));
}

/* ---- without Redis ---- */

/* Nothing listens: the bus starts anyway, says the link is down once,
 * delivers locally, and frees cleanly while retrying. */
static void test_start_without_redis(void **state)
{
    struct fixture *f = *state;
    char urls[64];
    snprintf(urls, sizeof urls, "redis://127.0.0.1:%d", free_port());
    f->a = node_new(urls);
    WAIT(f, nlinks(f->a) == 1);
    assert_int_equal(f->a->links[0], 0);
    assert_false(bus_redis_ready(f->a->bus));
    publish(f->a, msg(50, 1));
    WAIT(f, seen_everywhere(f->a, BUS_MSG, 50, 1));
    WAIT(f, stats(f->a).dropped == 1);
    assert_int_equal(nlinks(f->a), 1);
}

static void test_urls(void **state)
{
    (void)state;
    const char *bad[] = {
        "", "127.0.0.1:6379", "redis://", "redis://:6379", "redis://h:0", "redis://h:65536", "redis://h:12x",
        "redis://h:6379/x", "redis://[::1", "redis://[::1]x", "redis://h:1,", "redis://h:1,http://h:2",
        "redis://:@h:1", "redis://h/-1",
    };
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        struct bus *b = bus_redis_new(bad[i], NULL, 0, NULL, NULL, err, sizeof err);
        if (b)
            fail_msg("accepted '%s'", bad[i]);
        assert_true(strstr(err, "PARLEY_REDIS_URL") != NULL);
    }
    /* closed ports on loopback addresses: no name to resolve, nothing answers */
    const char *good[] = {
        "redis://127.0.0.1:1", "redis://127.0.0.1:1/0", "redis://[::1]:2", "redis://:pw@127.0.0.1:3/15",
        "redis://user:pw@127.0.0.1:4", "redis://127.0.0.1:1,redis://[::1]:2,redis://127.0.0.1:3",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        struct bus *b = bus_redis_new(good[i], NULL, 0, NULL, NULL, err, sizeof err);
        if (!b)
            fail_msg("refused '%s': %s", good[i], err);
        struct bus_redis_stats s;
        bus_redis_stats(b, &s);
        assert_int_equal(s.shards, i == 5 ? 3 : 1);
        assert_false(bus_redis_ready(b));
        bus_free(b);
    }
    /* not a Redis bus */
    struct bus *l = bus_local_new(NULL, 0, NULL);
    assert_false(bus_redis_ready(l));
    struct bus_redis_stats s = {.published = 1};
    bus_redis_stats(l, &s);
    assert_int_equal(s.published, 0);
    bus_free(l);
}

static struct bus_msg *sample(enum bus_kind kind)
{
    struct bus_msg *m = bus_msg_new(kind, kind == BUS_PRESENCE ? 0 : 77);
    m->origin = 0xabcdef;
    m->except_conn = 99;
    m->user = 4;
    m->seq = 123456789012LL;
    if (kind == BUS_CONV_PUSH) {
        m->frame = frame_new(3);
        memcpy(m->frame->data, "a}}", 3);
        m->pos = malloc(sizeof *m->pos);
        m->pos[0] = (struct store_pos){.user = 8, .last_read_seq = -1};
        m->npos = 1;
        m->aux = frame_ws(WS_OP_TEXT, "{}", 2);
    } else {
        char big[300];
        memset(big, 'y', sizeof big); /* a 16-bit length header */
        m->frame = frame_ws(WS_OP_TEXT, big, sizeof big);
    }
    if (kind != BUS_CONV_EVENT) {
        int64_t ids[] = {3, 1, 2};
        m->users = idlist_new(ids, 3);
    }
    return m;
}

static void test_envelope(void **state)
{
    (void)state;
    static const enum bus_kind kinds[] = {BUS_MSG, BUS_CONV_EVENT, BUS_PRESENCE, BUS_CONV_PUSH, BUS_UPDATE};
    for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
        int k = (int)kinds[ki];
        struct bus_msg *m = sample((enum bus_kind)k);
        struct buf b;
        buf_init(&b);
        buf_append(&b, "pre", 3); /* encode appends */
        bus_redis_encode(m, &b);
        assert_int_equal(b.len, 3 + bus_redis_envelope_size(m));
        const char *why = NULL;
        struct bus_msg *d = bus_redis_decode(b.data + 3, b.len - 3, &why);
        if (!d)
            fail_msg("kind %d: %s", k, why);
        assert_int_equal(d->kind, m->kind);
        assert_int_equal(d->conv, m->conv);
        assert_int_equal(d->user, m->user);
        assert_int_equal(d->seq, m->seq);
        assert_int_equal(d->origin, m->origin);
        assert_int_equal(d->except_conn, m->except_conn);
        assert_int_equal(d->frame->len, m->frame->len);
        assert_memory_equal(d->frame->data, m->frame->data, m->frame->len);
        assert_int_equal(!!d->aux, !!m->aux);
        if (m->aux)
            assert_memory_equal(d->aux->data, m->aux->data, m->aux->len);
        assert_int_equal(!!d->users, !!m->users);
        if (m->users) {
            assert_int_equal(d->users->n, m->users->n);
            assert_memory_equal(d->users->ids, m->users->ids, m->users->n * sizeof(int64_t));
        }
        assert_int_equal(d->npos, m->npos);
        if (m->npos)
            assert_memory_equal(d->pos, m->pos, m->npos * sizeof *m->pos);
        bus_msg_unref(d);

        /* every truncation is refused, reading nothing past its length */
        for (size_t n = 0; n < b.len - 3; n++) {
            char *cut = malloc(n ? n : 1);
            memcpy(cut, b.data + 3, n);
            assert_null(bus_redis_decode(cut, n, &why));
            free(cut);
        }
        /* random corruption: refused or decoded, never a crash (ASan watches) */
        uint64_t x = 0x9E3779B97F4A7C15ULL * (uint64_t)(k + 1);
        for (int i = 0; i < 20000; i++) {
            size_t len = b.len - 3;
            uint8_t *c = malloc(len);
            memcpy(c, b.data + 3, len);
            for (int flips = 0; flips < 1 + i % 4; flips++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                c[x % len] ^= (uint8_t)(x >> 32);
            }
            struct bus_msg *r = bus_redis_decode(c, len, &why);
            bus_msg_unref(r);
            free(c);
        }
        buf_dispose(&b);
        bus_msg_unref(m);
    }
    const char *why = NULL;
    assert_null(bus_redis_decode(NULL, 0, &why));
    assert_non_null(why);
    /* what chat_deliver would trip on is refused */
    struct bus_msg *m = sample(BUS_MSG);
    idlist_unref(m->users);
    m->users = NULL;
    struct buf b;
    buf_init(&b);
    bus_redis_encode(m, &b);
    assert_null(bus_redis_decode(b.data, b.len, &why));
    assert_string_equal(why, "no users");
    buf_dispose(&b);
    bus_msg_unref(m);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_urls),
        cmocka_unit_test_setup_teardown(test_start_without_redis, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watched_unwatched_order_own, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broadcast_kinds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_stalled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_and_db, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
