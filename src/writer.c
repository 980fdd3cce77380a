/* writer: see writer.h. */
#include "writer.h"

#include "log.h"
#include "rows.h"
#include "ws.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct writer {
    struct store *st;         /* the read-write connection; this thread only */
    struct writer_config cfg;
    writer_exec_fn exec;
    struct bus *bus;
    struct worker **workers;
    int nworkers;
    uv_thread_t thread;
    uv_mutex_t mu;            /* guards head, tail, count, stopping */
    uv_cond_t cond;
    struct job *head, *tail;
    size_t count;
    uint64_t head_since;      /* uv_hrtime when the oldest waiting job came (about: see writer_main) */
    uint64_t last_arrival;    /* uv_hrtime when the newest waiting job came */
    int stopping;
    int started;
    atomic_int db_ok;         /* see writer_db_ok */
    struct writer_stats stats; /* under mu (written once per batch) */
};

const double writer_batch_bounds[WRITER_HIST - 1] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000};
const double writer_commit_bounds[WRITER_HIST - 1] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                       0.05, 0.1, 0.25, 0.5, 1};

static int bucket(const double *bounds, double v)
{
    int i = 0;
    while (i < WRITER_HIST - 1 && v > bounds[i])
        i++;
    return i;
}

#define WRITER_PING_MS 1000   /* an idle writer checks the database this often */

/* ---- one batch ---- */

static struct job *next_job(struct job *j)
{
    return (struct job *)j->ev.next;
}

/* Each stored message with the members it goes to, kept until the commit. */
struct published {
    struct job *job;
    struct idlist *members;   /* one reference */
    struct frame *frame;      /* its msg frame, while the batch is published */
    int done;                 /* published in a run already */
};

struct batch {
    struct store *st;
    int64_t now;
    struct published *pub;
    size_t npub, cappub;
    struct store_send *sends; /* scratch for one run of sends */
    size_t capsends;
};

/* Stores the run of sends [first, end) with one store_send_batch call. */
static int run_sends(struct batch *b, struct job *first, struct job *end)
{
    size_t n = 0;
    for (struct job *j = first; j != end; j = next_job(j))
        n++;
    if (n > b->capsends) {
        b->capsends = n;
        b->sends = xrealloc(b->sends, n * sizeof *b->sends);
    }
    size_t i = 0;
    for (struct job *j = first; j != end; j = next_job(j), i++) {
        struct job_send *s = &j->u.send;
        b->sends[i] = (struct store_send){.conv = s->conv, .sender = s->sender, .client_id = s->client_id,
                                          .body = s->body, .body_len = s->body_len, .reply_to = s->reply_to,
                                          .att = (const char *const *)s->att, .n_att = s->n_att};
    }
    struct store_batch_out out = {0};
    int rc = store_send_batch(b->st, b->sends, n, b->now, &out);
    i = 0;
    for (struct job *j = first; j != end && rc == STORE_OK; j = next_job(j), i++) {
        struct job_send *s = &j->u.send;
        const struct store_send *r = &b->sends[i];
        j->rc = r->rc;
        s->why = r->why;
        s->att_out = r->att_out; /* the job's reference now */
        s->dup = r->dup;
        s->conv = r->conv;
        s->seq = r->seq;
        s->ts = r->ts;
        if (r->rc != STORE_OK || r->dup)
            continue;
        if (b->npub == b->cappub) {
            b->cappub = b->cappub ? b->cappub * 2 : 64;
            b->pub = xrealloc(b->pub, b->cappub * sizeof *b->pub);
        }
        struct idlist *m = store_batch_members(&out, s->conv);
        b->pub[b->npub].job = j;
        b->pub[b->npub++].members = m ? idlist_ref(m) : idlist_new(NULL, 0);
    }
    store_batch_out_dispose(&out);
    return rc;
}

static int run_other(struct batch *b, struct job *j, writer_exec_fn exec)
{
    if (store_savepoint(b->st) != STORE_OK)
        return STORE_ERR;
    j->rc = exec(b->st, j);
    if (j->rc == STORE_ERR)
        return STORE_ERR;
    if (j->rc < 0)
        return store_rollback_to(b->st) == STORE_OK ? STORE_OK : STORE_ERR;
    return store_release(b->st) == STORE_OK ? STORE_OK : STORE_ERR;
}

/* The msg frame is written by hand: it is the one frame per message on the
 * writer's thread, and building a json_t to encode it cost a quarter of that
 * thread's time. The same object as rows_msg + rows_msg_v2 + "op". */
struct frame *writer_msg_frame(const struct job *j)
{
    const struct job_send *s = &j->u.send;
    char head[160], tail[96];
    char *att = s->att_out && json_array_size(s->att_out) ? json_dumps(s->att_out, JSON_COMPACT) : NULL;
    int hn = snprintf(head, sizeof head, "{\"conv\":%lld,\"seq\":%lld,\"from\":%lld,\"id\":", (long long)s->conv,
                      (long long)s->seq, (long long)s->sender);
    int tn = snprintf(tail, sizeof tail, ",\"ts\":%lld", (long long)s->ts);
    if (s->reply_to > 0)
        tn += snprintf(tail + tn, sizeof tail - (size_t)tn, ",\"reply_to\":%lld", (long long)s->reply_to);
    static const char body_key[] = ",\"body\":", att_key[] = ",\"attachments\":", end[] = ",\"op\":\"msg\"}";
    size_t id_len = strlen(s->client_id);
    size_t n = (size_t)hn + frame_json_str_len(s->client_id, id_len) + sizeof body_key - 1 +
               frame_json_str_len(s->body, s->body_len) + (size_t)tn + sizeof end - 1 +
               (att ? sizeof att_key - 1 + strlen(att) : 0);
    size_t hl = ws_header_len(n);
    struct frame *f = frame_new(hl + n);
    ws_write_header(f->data, WS_OP_TEXT, n);
    uint8_t *p = f->data + hl;
    memcpy(p, head, (size_t)hn);
    p = frame_json_str_put(p + hn, s->client_id, id_len);
    memcpy(p, body_key, sizeof body_key - 1);
    p = frame_json_str_put(p + sizeof body_key - 1, s->body, s->body_len);
    memcpy(p, tail, (size_t)tn);
    p += tn;
    if (att) {
        memcpy(p, att_key, sizeof att_key - 1);
        p += sizeof att_key - 1;
        memcpy(p, att, strlen(att));
        p += strlen(att);
        free(att);
    }
    memcpy(p, end, sizeof end - 1);
    return f;
}

/* A run ends at this many bytes of frames (or at a gap): a buffer shared by
 * every member connection, held by each until its socket took it. */
#define RUN_MAX_BYTES (64 * 1024)
#define NO_NEXT SIZE_MAX

struct conv_pos {
    int64_t conv;
    size_t i; /* index in the batch's pub[] */
};

static int conv_pos_cmp(const void *a, const void *b)
{
    const struct conv_pos *x = a, *y = b;
    if (x->conv != y->conv)
        return x->conv < y->conv ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* next[i]: the index of the batch's next message in pub[i]'s conversation,
 * or NO_NEXT. Sorted once (n log n), so finding the runs does not scan the
 * rest of the batch for every run (quadratic with many conversations and a
 * large PARLEY_BATCH_MAX). */
static void link_conversations(const struct batch *b, size_t *next)
{
    struct conv_pos *pos = xmalloc(b->npub * sizeof *pos);
    for (size_t i = 0; i < b->npub; i++)
        pos[i] = (struct conv_pos){.conv = b->pub[i].job->u.send.conv, .i = i};
    qsort(pos, b->npub, sizeof *pos, conv_pos_cmp);
    for (size_t r = 0; r < b->npub; r++)
        next[pos[r].i] = r + 1 < b->npub && pos[r + 1].conv == pos[r].conv ? pos[r + 1].i : NO_NEXT;
    free(pos);
}

/* Publishes the batch's messages as runs (bus.h): a conversation's messages
 * with consecutive seqs and the same members (one store_send_batch call),
 * in seq order, as one publication whose frame holds theirs back to back.
 * A worker then queues one buffer per member connection, where it queued
 * and copied every message (a batch of 24 messages into one group was 24
 * lookups, copies and queue steps per member: docs/BENCHMARKS.md). */
static void publish_runs(struct batch *b, writer_publish_fn publish, void *ctx)
{
    for (size_t i = 0; i < b->npub; i++) {
        b->pub[i].frame = writer_msg_frame(b->pub[i].job);
        b->pub[i].done = 0;
    }
    size_t *run = xmalloc(2 * b->npub * sizeof *run), *next_in_conv = run + b->npub;
    link_conversations(b, next_in_conv);
    for (size_t i = 0; i < b->npub; i++) {
        if (b->pub[i].done)
            continue;
        const struct job_send *first = &b->pub[i].job->u.send;
        size_t n = 0, bytes = 0;
        int64_t next = first->seq;
        /* the conversation's later messages: those not done yet, as earlier
         * runs of it ended where this one starts */
        for (size_t k = i; k != NO_NEXT; k = next_in_conv[k]) {
            const struct published *p = &b->pub[k];
            if (p->members != b->pub[i].members || p->job->u.send.seq != next ||
                (n && bytes + p->frame->len > RUN_MAX_BYTES))
                break;
            run[n++] = k;
            bytes += p->frame->len;
            next++;
        }
        struct bus_msg *m = bus_msg_new(BUS_MSG, first->conv);
        m->users = idlist_ref(b->pub[i].members);
        m->seq = first->seq;
        if (n == 1) {
            m->frame = b->pub[i].frame;
            m->t0_ns = first->arrived_ns;
        } else {
            m->frame = frame_new(bytes);
            m->nparts = (uint32_t)n;
            m->parts = xmalloc(n * sizeof *m->parts);
            size_t off = 0;
            for (size_t r = 0; r < n; r++) {
                struct published *p = &b->pub[run[r]];
                memcpy(m->frame->data + off, p->frame->data, p->frame->len);
                off += p->frame->len;
                m->parts[r] = (struct bus_part){.end = (uint32_t)off, .t0_ns = p->job->u.send.arrived_ns};
                frame_unref(p->frame);
            }
            m->t0_ns = first->arrived_ns;
        }
        for (size_t r = 0; r < n; r++) {
            b->pub[run[r]].done = 1;
            b->pub[run[r]].frame = NULL;
        }
        publish(ctx, m);
        bus_msg_unref(m);
    }
    free(run);
}

int writer_run_batch(struct store *st, struct job *batch, writer_exec_fn exec, writer_publish_fn publish,
                     writer_deliver_fn deliver, void *ctx)
{
    struct batch b = {.st = st, .now = util_now_ms()};
    int failed = store_begin(st) != STORE_OK;
    struct job *j = batch;
    while (j && !failed) {
        if (j->kind == JOB_SEND) {
            struct job *end = j;
            while (end && end->kind == JOB_SEND)
                end = next_job(end);
            failed = run_sends(&b, j, end) != STORE_OK;
            j = end;
        } else {
            failed = run_other(&b, j, exec) != STORE_OK;
            j = next_job(j);
        }
    }
    if (!failed)
        failed = store_commit(st) != STORE_OK;
    if (failed) {
        /* A lost connection is "unavailable" (retry later: nothing of it was
         * committed); anything else is an internal error. */
        int lost = store_ping(st) != STORE_OK;
        log_error("writer: batch failed, rolled back; every job in it gets %s",
                  lost ? "unavailable (the database is unreachable)" : "an internal error");
        store_rollback(st);
        for (j = batch; j; j = next_job(j)) {
            j->rc = STORE_ERR;
            j->unavailable = lost;
            if (j->kind == JOB_SEND)
                j->u.send.dup = 0;
        }
    }
    /* messages first, in seq order, so a sender's own msg frame comes
     * before its ack in every inbox */
    if (!failed && publish)
        publish_runs(&b, publish, ctx);
    for (size_t i = 0; i < b.npub; i++)
        idlist_unref(b.pub[i].members);
    /* then what the other jobs made to publish (changes), in batch order */
    for (j = batch; j; j = next_job(j)) {
        if (!j->publish)
            continue;
        if (!failed && publish && j->rc >= 0)
            publish(ctx, j->publish);
        bus_msg_unref(j->publish);
        j->publish = NULL;
    }
    int n = 0;
    struct job *next;
    for (j = batch; j; j = next) {
        next = next_job(j);
        j->ev.next = NULL;
        deliver(ctx, j);
        n++;
    }
    free(b.pub);
    free(b.sends);
    return n;
}

/* ---- the thread ---- */

struct thread_ctx {
    struct writer *wr;
    struct postbox pb;
    uint64_t stored;  /* messages published by the batch being run */
};

static void deliver_to_postbox(void *ctx, struct job *j)
{
    struct thread_ctx *t = ctx;
    postbox_add(&t->pb, j->origin->index, &j->ev);
}

static void publish_to_bus(void *ctx, struct bus_msg *m)
{
    struct thread_ctx *t = ctx;
    t->stored += m->kind == BUS_MSG ? bus_msg_count(m) : 0;
    bus_publish(t->wr->bus, m, &t->pb);
}

int writer_prune(struct store *st, int64_t now_ms)
{
    int n = 0, na = 0;
    if (store_begin(st) != STORE_OK)
        return -1;
    if (store_refresh_prune(st, now_ms, now_ms - WRITER_ROTATED_KEEP_MS, WRITER_PRUNE_ROWS, &n) != STORE_OK ||
        store_att_prune(st, now_ms - WRITER_UPLOAD_KEEP_MS, WRITER_PRUNE_ROWS, &na) != STORE_OK ||
        store_commit(st) != STORE_OK) {
        store_rollback(st);
        return -1;
    }
    if (n)
        log_info("writer: %d dead refresh tokens deleted", n);
    if (na)
        log_info("writer: %d uploads never attached deleted", na);
    return n > na ? n : na; /* a full step of either: more is waiting */
}

/* Housekeeping when it is due (mutex not held): one bounded step; a full
 * step means more is waiting, so the next one comes right after the next
 * batch instead of an interval later. */
static void housekeeping(struct writer *wr, uint64_t *next_ms)
{
    uint64_t now = uv_hrtime() / 1000000ULL;
    if (wr->cfg.prune_interval_ms <= 0 || now < *next_ms)
        return;
    int n = writer_prune(wr->st, util_now_ms());
    *next_ms = n == WRITER_PRUNE_ROWS ? now : now + (uint64_t)wr->cfg.prune_interval_ms;
}

static void writer_main(void *arg)
{
    struct writer *wr = arg;
    struct thread_ctx t = {.wr = wr};
    uint64_t next_prune = 0; /* at start */
    postbox_init(&t.pb, wr->workers, wr->nworkers);

    uv_mutex_lock(&wr->mu);
    for (;;) {
        while (!wr->head && !wr->stopping) {
            /* idle: a timed wait, so a database that went away is noticed */
            if (uv_cond_timedwait(&wr->cond, &wr->mu, (uint64_t)WRITER_PING_MS * 1000000ULL) != 0 && !wr->head) {
                uv_mutex_unlock(&wr->mu);
                atomic_store(&wr->db_ok, store_ping(wr->st) == STORE_OK);
                housekeeping(wr, &next_prune);
                uv_mutex_lock(&wr->mu);
            }
        }
        if (!wr->head)
            break; /* stopping and drained */
        /* Let the batch fill: up to batch_max jobs, or until the oldest job
         * has waited batch_interval_ms. Counted from its arrival, not from
         * now: jobs that came during the previous commit have waited part
         * of it already (with 4 x 8 sends in flight into one group, they
         * waited a whole commit and then the whole interval again).
         * And no longer than batch_gap_us after the newest job: when nothing
         * more comes, the senders are waiting for their acks (a window of
         * sends is full), and waiting out the interval only idles the whole
         * cycle (one publisher with 8 in flight: 2 ms of every cycle). */
        uint64_t deadline = wr->head_since + (uint64_t)wr->cfg.batch_interval_ms * 1000000ULL;
        uint64_t gap = (uint64_t)wr->cfg.batch_gap_us * 1000ULL;
        while (wr->count < (size_t)wr->cfg.batch_max && !wr->stopping) {
            uint64_t now = uv_hrtime(), until = deadline;
            if (now >= deadline)
                break;
            if (gap) {
                if (now >= wr->last_arrival + gap)
                    break;
                if (wr->last_arrival + gap < until)
                    until = wr->last_arrival + gap;
            }
            uv_cond_timedwait(&wr->cond, &wr->mu, until - now); /* the conditions above decide */
        }
        struct job *batch = wr->head, *last = wr->head;
        size_t n = 1;
        while (n < (size_t)wr->cfg.batch_max && last->ev.next) {
            last = next_job(last);
            n++;
        }
        wr->head = next_job(last);
        if (!wr->head)
            wr->tail = NULL;
        else
            wr->head_since = uv_hrtime(); /* more than a batch waited: the rest from now */
        last->ev.next = NULL;
        wr->count -= n;
        uv_mutex_unlock(&wr->mu);

        uint64_t t0 = uv_hrtime();
        t.stored = 0;
        int njobs = writer_run_batch(wr->st, batch, wr->exec, publish_to_bus, deliver_to_postbox, &t);
        double secs = (double)(uv_hrtime() - t0) / 1e9;
        atomic_store(&wr->db_ok, store_ping(wr->st) == STORE_OK);
        postbox_flush(&t.pb); /* one wake-up per worker per batch */
        housekeeping(wr, &next_prune);
        uv_mutex_lock(&wr->mu);
        wr->stats.messages_stored += t.stored;
        wr->stats.batches++;
        wr->stats.batch_hist[bucket(writer_batch_bounds, njobs)]++;
        wr->stats.batch_sum += njobs;
        wr->stats.commit_hist[bucket(writer_commit_bounds, secs)]++;
        wr->stats.commit_sum_s += secs;
    }
    uv_mutex_unlock(&wr->mu);
    postbox_dispose(&t.pb);
}

struct writer *writer_new(struct store *st, struct writer_config cfg, writer_exec_fn exec, struct bus *bus,
                          struct worker **workers, int nworkers)
{
    struct writer *wr = xcalloc(1, sizeof *wr);
    wr->st = st;
    wr->cfg = cfg;
    wr->exec = exec;
    wr->bus = bus;
    wr->workers = workers;
    wr->nworkers = nworkers;
    atomic_init(&wr->db_ok, 1);
    uv_mutex_init(&wr->mu);
    uv_cond_init(&wr->cond);
    return wr;
}

int writer_start(struct writer *wr)
{
    if (uv_thread_create(&wr->thread, writer_main, wr) != 0)
        return -1;
    wr->started = 1;
    return 0;
}

void writer_submit(struct writer *wr, struct job *j)
{
    j->ev.next = NULL;
    uv_mutex_lock(&wr->mu);
    if (wr->stopping || (wr->cfg.max_queue > 0 && wr->count >= (size_t)wr->cfg.max_queue)) {
        int busy = !wr->stopping;
        uv_mutex_unlock(&wr->mu);
        j->rc = STORE_ERR;
        j->unavailable = busy ? JOB_BUSY : 1;
        worker_post(j->origin, &j->ev, &j->ev);
        return;
    }
    if (wr->tail)
        wr->tail->ev.next = &j->ev;
    else
        wr->head = j;
    wr->tail = j;
    wr->last_arrival = uv_hrtime();
    if (wr->count++ == 0)
        wr->head_since = wr->last_arrival;
    /* wake the writer when the first job arrives, and when a batch is full */
    if (wr->count == 1 || wr->count >= (size_t)wr->cfg.batch_max)
        uv_cond_signal(&wr->cond);
    uv_mutex_unlock(&wr->mu);
}

void writer_stats(struct writer *wr, struct writer_stats *out)
{
    uv_mutex_lock(&wr->mu);
    *out = wr->stats;
    out->queue_depth = wr->count;
    uv_mutex_unlock(&wr->mu);
}

int writer_db_ok(struct writer *wr)
{
    return atomic_load(&wr->db_ok);
}

void writer_stop(struct writer *wr)
{
    if (!wr || !wr->started)
        return;
    uv_mutex_lock(&wr->mu);
    wr->stopping = 1;
    uv_cond_signal(&wr->cond);
    uv_mutex_unlock(&wr->mu);
    uv_thread_join(&wr->thread);
    wr->started = 0;
}

void writer_free(struct writer *wr)
{
    if (!wr)
        return;
    writer_stop(wr);
    store_close(wr->st);
    uv_mutex_destroy(&wr->mu);
    uv_cond_destroy(&wr->cond);
    free(wr);
}
