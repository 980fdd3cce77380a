/* reader_pool: see reader_pool.h. */
#include "reader_pool.h"

#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define REPLICA_RETRY_MS 1000
#define LAG_EVERY_MS 2000 /* how often the replica's replay lag is measured */

struct reader_pool {
    reader_open_fn open;
    void *open_arg;
    int have_replica;
    int per_conv;
    size_t max_queue;          /* reads waiting, at most (0: no bound) */
    uv_mutex_t mu;             /* guards head, tail, queued, stopping, replica_logged */
    uv_cond_t cond;
    struct read *head, *tail;
    size_t queued;             /* reads waiting for a thread */
    int stopping;
    int replica_logged;        /* the replica's failure was logged (once per outage) */
    atomic_int replica_ok;
    atomic_llong lag_ms;       /* the replica's replay lag, last measured */
    atomic_llong lag_at_ms;    /* when (monotonic); a thread claims the next measure by moving it */
    struct reader_pool_stats stats;
    int nthreads;
    uv_thread_t *threads;
};

/* One thread's connections; owned by that thread. */
struct pool_conns {
    struct store *primary, *replica;
    int64_t replica_retry_ms;  /* monotonic: do not try the replica before */
};

static int replica_kind(const struct read *r)
{
    return r->kind == READ_HISTORY || r->kind == READ_SYNC || r->kind == READ_CONVS || r->kind == READ_USERS;
}

static struct store *get_primary(struct reader_pool *p, struct pool_conns *pc)
{
    char err[256];
    if (!pc->primary && p->open(p->open_arg, 0, &pc->primary, err, sizeof err) != STORE_OK) {
        log_warn("reader: cannot open the primary: %s", err);
        pc->primary = NULL;
    }
    if (pc->primary && store_ping(pc->primary) != STORE_OK)
        return NULL;
    return pc->primary;
}

static void replica_failed(struct reader_pool *p, struct pool_conns *pc, const char *why)
{
    atomic_fetch_add(&p->stats.replica_failures, 1);
    atomic_store(&p->replica_ok, 0);
    pc->replica_retry_ms = util_mono_ms() + REPLICA_RETRY_MS;
    uv_mutex_lock(&p->mu);
    int log = !p->replica_logged;
    p->replica_logged = 1;
    uv_mutex_unlock(&p->mu);
    if (log)
        log_warn("reader: the replica is unavailable (%s); reads go to the primary until it is back", why);
}

static struct store *get_replica(struct reader_pool *p, struct pool_conns *pc)
{
    if (!p->have_replica || util_mono_ms() < pc->replica_retry_ms)
        return NULL;
    char err[256];
    if (!pc->replica && p->open(p->open_arg, 1, &pc->replica, err, sizeof err) != STORE_OK) {
        pc->replica = NULL;
        replica_failed(p, pc, err);
        return NULL;
    }
    if (store_ping(pc->replica) != STORE_OK) {
        replica_failed(p, pc, "connection lost");
        return NULL;
    }
    return pc->replica;
}

/* The conversations a read must see complete, with the seq each must reach
 * (the read's min_seq): a sync's asked conversations, a history page (its
 * messages' current state: every committed change), a read that names its
 * min_seq. 0 when any replica state will do. Search, changes and
 * attachments never read the replica (a delete must leave them at once). */
static size_t complete_convs(const struct read *r, int64_t *convs, size_t max)
{
    size_t n = 0;
    if (r->kind == READ_SYNC) {
        const char *key;
        json_t *v;
        json_object_foreach(r->since, key, v) {
            int64_t conv;
            if (n < max && util_parse_i64(key, &conv) == 0 && conv > 0)
                convs[n++] = conv;
        }
    } else if (r->kind == READ_HISTORY || r->min_seq > 0) {
        convs[n++] = r->conv;
    }
    return n;
}

#define FRESH_MAX 256 /* a sync asking for more conversations reads the primary */

/* Whether the replica has replayed everything this read must include: the
 * primary's last_seq of each conversation it must see complete (one cheap
 * round trip of primary-key lookups), and the read's own min_seq, against
 * the replica's. The heavy part of the read still runs on the replica. */
static int replica_fresh(struct store *primary, struct store *replica, const struct read *r, int *failed)
{
    int64_t convs[FRESH_MAX], need[FRESH_MAX], have[FRESH_MAX], need_mod[FRESH_MAX], have_mod[FRESH_MAX];
    if (r->kind == READ_SYNC && json_object_size(r->since) > FRESH_MAX)
        return 0;
    size_t n = complete_convs(r, convs, FRESH_MAX);
    if (!n)
        return 1;
    /* Messages come back in their current state, so the replica must have
     * replayed the last change too (a delete above all: it must never show
     * the old text to the user who just changed it): last_seq and last_mod,
     * one round trip each side. */
    if (!primary || store_conv_last_seqs(primary, convs, n, need, need_mod) != STORE_OK)
        return 0; /* the primary answers the read itself, or says it cannot */
    int rc = store_conv_last_seqs(replica, convs, n, have, have_mod);
    if (rc != STORE_OK) {
        *failed = 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (r->min_seq > need[i] && r->conv == convs[i])
            need[i] = r->min_seq;
        if (have[i] < need[i] || have_mod[i] < need_mod[i])
            return 0;
    }
    return 1;
}

static void answer(struct reader_pool *p, struct pool_conns *pc, struct read *r)
{
    struct store *st = NULL;
    if (replica_kind(r)) {
        struct store *replica = get_replica(p, pc);
        int failed = 0;
        if (replica && replica_fresh(get_primary(p, pc), replica, r, &failed)) {
            reader_run(replica, r, p->per_conv);
            if (r->rc != STORE_ERR && r->rc != STORE_UNAVAILABLE) {
                atomic_fetch_add(&p->stats.replica_reads, 1);
                if (!atomic_exchange(&p->replica_ok, 1)) {
                    uv_mutex_lock(&p->mu);
                    p->replica_logged = 0;
                    uv_mutex_unlock(&p->mu);
                    log_info("reader: the replica answers again");
                }
                return;
            }
            failed = 1;
            /* start the answer again on the primary */
            json_decref(r->result);
            json_decref(r->extra);
            r->result = r->extra = NULL;
        }
        if (failed)
            replica_failed(p, pc, "a read failed");
        else if (replica)
            atomic_fetch_add(&p->stats.replica_behind, 1);
    }
    st = get_primary(p, pc);
    if (!st) {
        r->rc = STORE_UNAVAILABLE;
        return;
    }
    reader_run(st, r, p->per_conv);
    atomic_fetch_add(&p->stats.primary_reads, 1);
    if (r->rc == STORE_ERR && store_ping(st) != STORE_OK)
        r->rc = STORE_UNAVAILABLE;
}

/* Every LAG_EVERY_MS one thread measures the replica's replay lag (for
 * /metrics), with the connection it has. */
static void measure_lag(struct reader_pool *p, struct pool_conns *pc)
{
    int64_t now = util_mono_ms();
    long long at = atomic_load(&p->lag_at_ms);
    if (!p->have_replica || now < at + LAG_EVERY_MS || !atomic_compare_exchange_strong(&p->lag_at_ms, &at, now))
        return;
    struct store *replica = get_replica(p, pc);
    int64_t ms = 0;
    if (replica && replica->ops->replay_lag && replica->ops->replay_lag(replica, &ms) == STORE_OK)
        atomic_store(&p->lag_ms, ms);
}

static void pool_main(void *arg)
{
    struct reader_pool *p = arg;
    struct pool_conns pc = {0};
    uv_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping)
            uv_cond_wait(&p->cond, &p->mu);
        struct read *r = p->head;
        if (!r)
            break; /* stopping and drained */
        p->head = (struct read *)r->ev.next;
        if (!p->head)
            p->tail = NULL;
        p->queued--;
        uv_mutex_unlock(&p->mu);
        r->ev.next = NULL;
        answer(p, &pc, r);
        worker_post(r->origin, &r->ev, &r->ev); /* done runs on the worker that asked */
        measure_lag(p, &pc);
        uv_mutex_lock(&p->mu);
    }
    uv_mutex_unlock(&p->mu);
    store_close(pc.primary);
    store_close(pc.replica);
}

static void pool_submit(struct reader_pool *p, struct read *r)
{
    r->ev.next = NULL;
    uv_mutex_lock(&p->mu);
    if (p->max_queue && p->queued >= p->max_queue) {
        /* full: answered at once, on the caller's thread (503 + Retry-After) */
        uv_mutex_unlock(&p->mu);
        atomic_fetch_add(&p->stats.refused, 1);
        r->rc = STORE_UNAVAILABLE;
        r->busy = 1;
        r->done(r);
        read_free(r);
        return;
    }
    p->queued++;
    if (p->tail)
        p->tail->ev.next = &r->ev;
    else
        p->head = r;
    p->tail = r;
    uv_cond_signal(&p->cond);
    uv_mutex_unlock(&p->mu);
}

struct reader_pool *reader_pool_new(int nthreads, reader_open_fn open, void *open_arg, int have_replica,
                                    int per_conv, size_t max_queue)
{
    struct reader_pool *p = xcalloc(1, sizeof *p);
    p->max_queue = max_queue;
    p->open = open;
    p->open_arg = open_arg;
    p->have_replica = have_replica;
    p->per_conv = per_conv;
    atomic_init(&p->replica_ok, 1);
    uv_mutex_init(&p->mu);
    uv_cond_init(&p->cond);
    p->threads = xcalloc((size_t)nthreads, sizeof *p->threads);
    for (int i = 0; i < nthreads; i++) {
        if (uv_thread_create(&p->threads[i], pool_main, p) != 0)
            break;
        p->nthreads++;
    }
    return p;
}

void reader_pool_free(struct reader_pool *p)
{
    if (!p)
        return;
    uv_mutex_lock(&p->mu);
    p->stopping = 1;
    uv_cond_broadcast(&p->cond);
    uv_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        uv_thread_join(&p->threads[i]);
    free(p->threads);
    uv_mutex_destroy(&p->mu);
    uv_cond_destroy(&p->cond);
    free(p);
}

const struct reader_pool_stats *reader_pool_stats(struct reader_pool *p)
{
    return &p->stats;
}

int64_t reader_pool_replica_lag_ms(struct reader_pool *p)
{
    return p->have_replica ? atomic_load(&p->lag_ms) : 0;
}

int reader_pool_replica_ok(struct reader_pool *p)
{
    return !p->have_replica || atomic_load(&p->replica_ok);
}

/* ---- a worker's handle ---- */

struct pool_handle {
    struct reader base; /* first */
    struct reader_pool *pool;
};

static void handle_submit(struct reader *rd, struct read *r)
{
    pool_submit(((struct pool_handle *)rd)->pool, r);
}

static void handle_free(struct reader *rd)
{
    free(rd);
}

struct reader *reader_pool_handle(struct reader_pool *p)
{
    struct pool_handle *h = xcalloc(1, sizeof *h);
    h->base.submit = handle_submit;
    h->base.free = handle_free;
    h->pool = p;
    return &h->base;
}
