/* chat_sync: see chat_sync.h. */
#include "chat_sync.h"

#include <stdlib.h>
#include <string.h>

struct sync_run {
    struct event ev;        /* first: the next step, posted to our own worker */
    struct chat_worker *cw;
    struct conn *c;         /* pinned until the run ends */
    int64_t *conv, *after;  /* asked: sorted conversation ids, the seq after which to send */
    int *sent;              /* messages of each already sent */
    size_t n, next;         /* next: the first conversation not done yet */
    int64_t *mconv, *mafter; /* changes asked: sorted conversation ids, the mod after which to send */
    int msent;              /* updates of mconv[mnext] already sent */
    size_t mn, mnext;
    int budget;             /* messages this answer may still send */
};

static void step(struct sync_run *s);

static int open_ws(const struct conn *c)
{
    return c->state == CONN_WS;
}

static void run_dispose(struct sync_run *s)
{
    free(s->conv);
    free(s->after);
    free(s->sent);
    free(s->mconv);
    free(s->mafter);
}

static void run_free(struct sync_run *s)
{
    struct conn *c = s->c;
    run_dispose(s);
    free(s);
    conn_unhold(c); /* the connection's next frames (may start another sync) */
    conn_release(c);
}

static void sync_error(struct sync_run *s)
{
    json_t *e = json_pack("{s:s,s:s,s:s}", "op", "error", "code", "internal", "message", "sync failed");
    conn_send_json(s->c, e);
    json_decref(e);
}

/* ---- yielding between steps ---- */

static void posted(struct worker *w, struct event *ev)
{
    (void)w;
    step((struct sync_run *)ev);
}

static void dropped(struct event *ev)
{
    struct sync_run *s = (struct sync_run *)ev;
    run_dispose(s);
    conn_release(s->c); /* the worker is going away: no unhold */
    free(s);
}

/* The next step runs after the loop has served the others once, and only
 * when the peer has read what the last step queued. */
static void yield(struct sync_run *s);

static void drained(struct conn *c, void *arg)
{
    struct sync_run *s = arg;
    if (!open_ws(c)) {
        run_free(s);
        return;
    }
    yield(s);
}

static void yield(struct sync_run *s)
{
    if (conn_congested(s->c)) {
        conn_on_drain(s->c, drained, s);
        return;
    }
    s->ev.run = posted;
    s->ev.drop = dropped;
    worker_post(s->cw->w, &s->ev, &s->ev);
}

/* ---- the steps ---- */

static void summary_read(struct read *r)
{
    struct sync_run *s = r->arg;
    if (open_ws(s->c)) {
        if (r->rc != STORE_OK) {
            sync_error(s);
        } else {
            json_t *reply = json_pack("{s:s,s:O}", "op", "synced", "conversations", r->result);
            conn_send_json(s->c, reply);
            json_decref(reply);
        }
    }
    run_free(s);
}

/* The index of conv in s->conv[from..n), or n. */
static size_t find(const struct sync_run *s, size_t from, int64_t conv)
{
    size_t lo = from, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->conv[mid] < conv)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && s->conv[lo] == conv ? lo : s->n;
}

static void msgs_read(struct read *r)
{
    struct sync_run *s = r->arg;
    if (!open_ws(s->c)) {
        run_free(s);
        return;
    }
    if (r->rc != STORE_OK) {
        sync_error(s);
        run_free(s);
        return;
    }
    size_t window = s->n - s->next < SYNC_STEP_CONVS ? s->n - s->next : SYNC_STEP_CONVS;
    size_t count = json_array_size(r->result), last = s->next;
    json_t *m;
    size_t i;
    json_array_foreach(r->result, i, m) {
        int64_t conv = (int64_t)json_integer_value(json_object_get(m, "conv"));
        size_t k = find(s, s->next, conv);
        if (k < s->n) {
            s->sent[k]++;
            s->after[k] = (int64_t)json_integer_value(json_object_get(m, "seq"));
            last = k;
        }
        json_object_set_new(m, "op", json_string("msg"));
        conn_send_json(s->c, m);
    }
    s->budget -= (int)count;
    if (!r->has_more) {
        s->next += window; /* every asked conversation was read to its end (or its cap) */
    } else {
        /* The step stopped at conversation `last` (its message or byte
         * limit): those before it are done; it continues from its last
         * message unless it has its share; those after it were not read. */
        s->next = s->sent[last] < SYNC_PER_CONV ? last : last + 1;
    }
    yield(s);
}

/* One page of one conversation's changes: update frames in mod order. A
 * conversation the user is not in is skipped, as in since. */
static void changes_read(struct read *r)
{
    struct sync_run *s = r->arg;
    if (!open_ws(s->c)) {
        run_free(s);
        return;
    }
    if (r->rc != STORE_OK && r->rc != STORE_NOT_FOUND) {
        sync_error(s);
        run_free(s);
        return;
    }
    size_t i, n = r->rc == STORE_OK ? json_array_size(r->result) : 0;
    json_t *m;
    if (n)
        json_array_foreach(r->result, i, m) {
            int64_t mod = (int64_t)json_integer_value(json_object_get(m, "mod"));
            json_t *u = json_pack("{s:s,s:O,s:O,s:I,s:O}", "op", "update", "conv", json_object_get(m, "conv"), "seq",
                                  json_object_get(m, "seq"), "mod", (json_int_t)mod, "message", m);
            conn_send_json(s->c, u);
            json_decref(u);
            s->mafter[s->mnext] = mod;
        }
    s->msent += (int)n;
    if ((int)n < r->limit || s->msent >= SYNC_PER_CONV) { /* this conversation is done */
        s->mnext++;
        s->msent = 0;
    }
    yield(s);
}

static void step(struct sync_run *s)
{
    struct chat_worker *cw = s->cw;
    if (!open_ws(s->c)) {
        run_free(s);
        return;
    }
    while (s->next < s->n && s->sent[s->next] >= SYNC_PER_CONV)
        s->next++;
    if (s->next < s->n && s->budget > 0) {
        struct read *r = chat_read(cw, READ_SYNC, NULL, msgs_read);
        r->arg = s;
        r->user = s->c->user_id;
        r->since = json_object();
        size_t end = s->n - s->next < SYNC_STEP_CONVS ? s->n : s->next + SYNC_STEP_CONVS;
        char key[24];
        for (size_t k = s->next; k < end; k++) {
            snprintf(key, sizeof key, "%lld", (long long)s->conv[k]);
            json_object_set_new(r->since, key, json_integer(s->after[k]));
        }
        /* the first may be a conversation the last step cut short */
        int share = SYNC_PER_CONV - s->sent[s->next];
        r->limit = s->budget < share ? s->budget : share;
        chat_read_submit(cw, r);
        return;
    }
    if (s->mnext < s->mn) { /* then the changes, a page at a time */
        struct read *r = chat_read(cw, READ_CHANGES, NULL, changes_read);
        r->arg = s;
        r->user = s->c->user_id;
        r->conv = s->mconv[s->mnext];
        r->after = s->mafter[s->mnext];
        r->limit = SYNC_PER_CONV - s->msent < SYNC_CHANGES_STEP ? SYNC_PER_CONV - s->msent : SYNC_CHANGES_STEP;
        chat_read_submit(cw, r);
        return;
    }
    struct read *r = chat_read(cw, READ_SYNC_SUMMARY, NULL, summary_read);
    r->arg = s;
    r->user = s->c->user_id;
    chat_read_submit(cw, r);
}

void chat_sync(struct chat_worker *cw, struct conn *c, int64_t *conv, int64_t *after, size_t n, int64_t *mconv,
               int64_t *mafter, size_t mn)
{
    struct sync_run *s = xcalloc(1, sizeof *s);
    s->mconv = mconv;
    s->mafter = mafter;
    s->mn = mn;
    s->cw = cw;
    s->c = c;
    c->pending++;
    s->conv = conv;
    s->after = after;
    s->n = n;
    s->sent = xcalloc(n ? n : 1, sizeof *s->sent);
    s->budget = SYNC_TOTAL;
    conn_hold(c);
    step(s);
}
