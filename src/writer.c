/* writer: see writer.h. */
#include "writer.h"

#include "log.h"
#include "server.h"
#include "store.h"

#include <stdlib.h>
#include <string.h>

struct writer {
    struct server *srv;
    struct store *st;      /* the read-write connection; this thread only */
    uv_thread_t thread;
    uv_mutex_t mu;         /* guards head, tail, count, stopping */
    uv_cond_t cond;
    struct job *head, *tail;
    size_t count;
    int stopping;
    int started;
};

struct job *job_new(struct worker *origin, struct conn *conn, job_run_fn run, job_done_fn done)
{
    struct job *j = xcalloc(1, sizeof *j);
    j->ev.kind = EV_JOB;
    j->origin = origin;
    j->run = run;
    j->done = done;
    if (conn)
        job_bind(j, conn);
    return j;
}

void job_bind(struct job *j, struct conn *conn)
{
    j->conn = conn;
    conn->pending++; /* the conn outlives the job: see conn_release */
}

void job_free(struct job *j)
{
    if (!j)
        return;
    free(j->str);
    free(j->str2);
    free(j->str3);
    free(j->body);
    free(j->ids);
    if (j->result)
        json_decref(j->result);
    free(j);
}

/* ---- one batch ---- */

/* The conversations a batch sent to: their next seq, and their members for
 * the fan-out (read inside the transaction, so they match the commit). */
struct seqslot {
    int64_t conv;
    int64_t next_seq;
    int64_t last_ts;
    int touched;
    struct idlist *members;
    struct { int64_t user, seq; } *senders; /* each sender's last new seq here */
    size_t n_senders;
};

struct seqmap {
    struct seqslot *v;
    size_t n, cap;
};

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The conversation's members, sorted, read once per batch (and again after
 * a job that may have changed them). They serve both the membership check of
 * every send and the fan-out after the commit. */
static int load_members(struct store *st, struct seqslot *s)
{
    if (s->members)
        return STORE_OK;
    int64_t *ids;
    size_t n;
    if (store_members(st, s->conv, &ids, &n) != STORE_OK)
        return STORE_ERR;
    qsort(ids, n, sizeof *ids, cmp_id);
    s->members = idlist_new(ids, n);
    free(ids);
    return STORE_OK;
}

static int is_member(const struct seqslot *s, int64_t user)
{
    return bsearch(&user, s->members->ids, s->members->n, sizeof user, cmp_id) != NULL;
}

static struct seqslot *seqmap_get(struct store *st, struct seqmap *m, int64_t conv, int *rc)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i].conv == conv) {
            *rc = load_members(st, &m->v[i]);
            return *rc == STORE_OK ? &m->v[i] : NULL;
        }
    int64_t last;
    *rc = store_conv_last_seq(st, conv, &last);
    if (*rc != STORE_OK)
        return NULL;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->v = xrealloc(m->v, m->cap * sizeof *m->v);
    }
    struct seqslot *s = &m->v[m->n++];
    memset(s, 0, sizeof *s);
    s->conv = conv;
    s->next_seq = last + 1;
    *rc = load_members(st, s);
    return *rc == STORE_OK ? s : NULL;
}

/* A job ran that may have added or removed members: read them again. */
static void seqmap_forget_members(struct seqmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        idlist_unref(m->v[i].members);
        m->v[i].members = NULL;
    }
}

static void seqmap_dispose(struct seqmap *m)
{
    seqmap_forget_members(m);
    for (size_t i = 0; i < m->n; i++)
        free(m->v[i].senders);
    free(m->v);
}

static void note_sender(struct seqslot *s, int64_t user, int64_t seq)
{
    for (size_t i = 0; i < s->n_senders; i++)
        if (s->senders[i].user == user) {
            s->senders[i].seq = seq;
            return;
        }
    s->senders = xrealloc(s->senders, (s->n_senders + 1) * sizeof *s->senders);
    s->senders[s->n_senders].user = user;
    s->senders[s->n_senders++].seq = seq;
}

/* The original of a resent client id, if there is one. */
static int find_original(struct store *st, struct job *j)
{
    int64_t conv, seq, ts;
    int rc = store_msg_by_client(st, j->user, j->str, &conv, &seq, &ts);
    if (rc == STORE_OK) {
        j->dup = 1;
        j->conv = conv;
        j->seq = seq;
        j->ts = ts;
    }
    return rc;
}

/* A send: idempotent on (sender, client id), members only, next dense seq.
 * The common case costs one INSERT: the unique key on (sender, client id)
 * finds resends, and only then is the original looked up. Returns STORE_ERR
 * only for a database failure (the batch is then undone). */
static int run_send(struct store *st, struct job *j, struct seqmap *m, int64_t now)
{
    int rc;
    struct seqslot *s = seqmap_get(st, m, j->conv, &rc);
    if (rc == STORE_ERR)
        return STORE_ERR;
    if (!s || !is_member(s, j->user))
        return find_original(st, j); /* a resend answers with the original, wherever it went */
    j->seq = s->next_seq;
    j->ts = now > s->last_ts ? now : s->last_ts; /* ts never goes back within a conversation */
    rc = store_msg_insert(st, j->conv, j->seq, j->user, j->str, j->body, j->body_len, j->ts);
    if (rc == STORE_CONFLICT) {
        rc = find_original(st, j);
        return rc == STORE_OK ? STORE_OK : STORE_ERR;
    }
    if (rc != STORE_OK)
        return STORE_ERR;
    s->next_seq++;
    s->last_ts = j->ts;
    s->touched = 1;
    note_sender(s, j->user, j->seq);
    return STORE_OK;
}

static int run_other(struct store *st, struct job *j, struct seqmap *m)
{
    if (store_savepoint(st) != STORE_OK)
        return STORE_ERR;
    j->rc = j->run(st, j);
    if (j->rc < 0) {
        if (store_rollback_to(st) != STORE_OK)
            return STORE_ERR;
    } else if (store_release(st) != STORE_OK) {
        return STORE_ERR;
    }
    seqmap_forget_members(m);
    return STORE_OK;
}

/* After the inserts: move each conversation's last_seq, then each sender's
 * read position to its last message (read positions are clamped to
 * last_seq, so this comes after the advance; one update per sender), and
 * make sure the members for the fan-out are current. */
static int finish_convs(struct store *st, struct seqmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        struct seqslot *s = &m->v[i];
        if (!s->touched)
            continue;
        if (store_conv_advance(st, s->conv, s->next_seq - 1, s->last_ts) != STORE_OK)
            return STORE_ERR;
        for (size_t k = 0; k < s->n_senders; k++) {
            int64_t pos;
            int rc = store_read_set(st, s->conv, s->senders[k].user, s->senders[k].seq, &pos);
            if (rc != STORE_OK && rc != STORE_NOT_FOUND)
                return STORE_ERR;
        }
        if (load_members(st, s) != STORE_OK)
            return STORE_ERR;
    }
    return STORE_OK;
}

static struct frame *msg_frame(const struct job *j)
{
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:s, s:s%, s:I}", "op", "msg", "conv", (json_int_t)j->conv,
                          "seq", (json_int_t)j->seq, "from", (json_int_t)j->user, "id", j->str, "body",
                          j->body, j->body_len, "ts", (json_int_t)j->ts);
    struct frame *f = frame_ws_json(o);
    json_decref(o);
    return f;
}

int writer_run_batch(struct store *st, struct job *batch, writer_deliver_fn deliver,
                     writer_fanout_fn fanout, void *ctx)
{
    struct seqmap m = {0};
    int64_t now = util_now_ms();
    int failed = store_begin(st) != STORE_OK;
    for (struct job *j = batch; j && !failed; j = (struct job *)j->ev.next) {
        if (j->run) {
            failed = run_other(st, j, &m) != STORE_OK;
        } else {
            j->rc = run_send(st, j, &m, now);
            failed = j->rc == STORE_ERR;
        }
    }
    if (!failed)
        failed = finish_convs(st, &m) != STORE_OK;
    if (!failed)
        failed = store_commit(st) != STORE_OK;
    if (failed) {
        log_error("writer: batch failed, rolled back; every job in it gets an internal error");
        store_rollback(st);
    }

    int n = 0;
    /* fan out first, in seq order, so a sender's own msg frame and ack are
     * both queued by the time the worker runs */
    for (struct job *j = batch; j; j = (struct job *)j->ev.next) {
        if (failed) {
            j->rc = STORE_ERR;
            j->dup = 0;
            continue;
        }
        if (j->run || j->rc != STORE_OK || j->dup || !fanout)
            continue;
        for (size_t i = 0; i < m.n; i++) {
            if (m.v[i].conv == j->conv) {
                struct frame *f = msg_frame(j);
                fanout(ctx, j->conv, f, m.v[i].members);
                frame_unref(f);
                break;
            }
        }
    }
    struct job *next;
    for (struct job *j = batch; j; j = next) {
        next = (struct job *)j->ev.next;
        j->ev.next = NULL;
        deliver(ctx, j);
        n++;
    }
    seqmap_dispose(&m);
    return n;
}

/* ---- the thread ---- */

/* Collects per-worker event chains during a batch; posted once per worker. */
struct outbox {
    struct writer *wr;
    struct event **head, **tail;
};

static void outbox_add(struct outbox *ob, int w, struct event *ev)
{
    ev->next = NULL;
    if (ob->tail[w])
        ob->tail[w]->next = ev;
    else
        ob->head[w] = ev;
    ob->tail[w] = ev;
}

static void deliver_to_outbox(void *ctx, struct job *j)
{
    outbox_add(ctx, j->origin->index, &j->ev);
}

static void fanout_to_outbox(void *ctx, int64_t conv, struct frame *f, struct idlist *members)
{
    struct outbox *ob = ctx;
    (void)conv;
    for (int w = 0; w < ob->wr->srv->nworkers; w++) {
        struct fanout *fo = xcalloc(1, sizeof *fo);
        fo->ev.kind = EV_FANOUT;
        fo->frame = frame_ref(f);
        fo->users = idlist_ref(members);
        outbox_add(ob, w, &fo->ev);
    }
}

static void writer_main(void *arg)
{
    struct writer *wr = arg;
    const struct config *cfg = wr->srv->cfg;
    int nw = wr->srv->nworkers;
    struct outbox ob = {wr, xcalloc((size_t)nw, sizeof(struct event *)), xcalloc((size_t)nw, sizeof(struct event *))};

    uv_mutex_lock(&wr->mu);
    for (;;) {
        while (!wr->head && !wr->stopping)
            uv_cond_wait(&wr->cond, &wr->mu);
        if (!wr->head)
            break; /* stopping and drained */
        /* Let the batch fill: up to batch_max jobs or batch_interval_ms. */
        uint64_t deadline = uv_hrtime() + (uint64_t)cfg->batch_interval_ms * 1000000ULL;
        while (wr->count < (size_t)cfg->batch_max && !wr->stopping) {
            uint64_t now = uv_hrtime();
            if (now >= deadline || uv_cond_timedwait(&wr->cond, &wr->mu, deadline - now) != 0)
                break;
        }
        struct job *batch = wr->head, *last = wr->head;
        size_t n = 1;
        while (n < (size_t)cfg->batch_max && last->ev.next) {
            last = (struct job *)last->ev.next;
            n++;
        }
        wr->head = (struct job *)last->ev.next;
        if (!wr->head)
            wr->tail = NULL;
        last->ev.next = NULL;
        wr->count -= n;
        uv_mutex_unlock(&wr->mu);

        writer_run_batch(wr->st, batch, deliver_to_outbox, fanout_to_outbox, &ob);
        for (int w = 0; w < nw; w++) {
            if (ob.head[w])
                worker_post(wr->srv->workers[w], ob.head[w], ob.tail[w]);
            ob.head[w] = ob.tail[w] = NULL;
        }
        uv_mutex_lock(&wr->mu);
    }
    uv_mutex_unlock(&wr->mu);
    free(ob.head);
    free(ob.tail);
}

struct writer *writer_new(struct server *srv, char *err, size_t errlen)
{
    struct writer *wr = xcalloc(1, sizeof *wr);
    wr->srv = srv;
    if (store_open(srv->db_path, 0, &wr->st, err, errlen) != STORE_OK) {
        free(wr);
        return NULL;
    }
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
    if (wr->stopping) {
        uv_mutex_unlock(&wr->mu);
        j->rc = STORE_ERR;
        j->flag = -1;
        worker_post(j->origin, &j->ev, &j->ev);
        return;
    }
    if (wr->tail)
        wr->tail->ev.next = &j->ev;
    else
        wr->head = j;
    wr->tail = j;
    wr->count++;
    /* wake the writer when the first job arrives, and when a batch is full */
    if (wr->count == 1 || wr->count >= (size_t)wr->srv->cfg->batch_max)
        uv_cond_signal(&wr->cond);
    uv_mutex_unlock(&wr->mu);
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
