/* reader: see reader.h. */
#include "reader.h"

#include "util.h"

#include <stdlib.h>
#include <string.h>

static void read_returned(struct worker *w, struct event *ev)
{
    struct read *r = (struct read *)ev;
    (void)w;
    r->done(r);
    read_free(r);
}

static void read_dropped(struct event *ev)
{
    read_free((struct read *)ev);
}

struct read *read_new(enum read_kind kind, struct worker *origin, struct conn *conn, read_done_fn done, void *arg)
{
    struct read *r = xcalloc(1, sizeof *r);
    r->ev.run = read_returned;
    r->ev.drop = read_dropped;
    r->kind = kind;
    r->origin = origin;
    r->done = done;
    r->arg = arg;
    if (conn) {
        r->conn = conn;
        conn->pending++;
    }
    return r;
}

static void decref(json_t *o)
{
    if (o)
        json_decref(o);
}

void read_free(struct read *r)
{
    if (!r)
        return;
    free(r->str);
    free(r->str2);
    free(r->mods);
    decref(r->since);
    decref(r->result);
    decref(r->extra);
    free(r->pwhash);
    if (r->frame)
        frame_unref(r->frame);
    free(r->ids);
    free(r->ids2);
    free(r->pos);
    if (r->conn)
        conn_release(r->conn);
    free(r);
}

/* One step of a sync: up to per_conv messages after each asked position,
 * for each asked conversation the user is in, in since's order, and at most
 * limit messages and about SYNC_STEP_BYTES of bodies in all (at least one
 * message): it stops where either is reached, with has_more set. */
static int run_sync(struct store *st, struct read *r, int per_conv)
{
    json_t *msgs = json_array();
    int left = r->limit > 0 ? r->limit : per_conv;
    size_t bytes = 0;
    const char *key;
    json_t *v;
    r->has_more = 0;
    json_object_foreach(r->since, key, v) {
        int64_t conv;
        if (left <= 0 || bytes >= SYNC_STEP_BYTES) {
            r->has_more = 1;
            break;
        }
        if (util_parse_id(key, &conv) < 0 || !json_is_integer(v) || json_integer_value(v) < 0)
            continue; /* not a conversation: nothing to send for it */
        int rc = store_is_member(st, conv, r->user);
        if (rc == STORE_NOT_FOUND)
            continue;
        json_t *page = NULL;
        int more;
        if (rc == STORE_OK)
            rc = store_msg_page(st, conv, 0, json_integer_value(v), per_conv < left ? per_conv : left, &page, &more);
        if (rc != STORE_OK) { /* the database failed: the step fails, nothing half-sent */
            json_decref(msgs);
            return rc;
        }
        size_t i;
        json_t *m;
        json_array_foreach(page, i, m) {
            if (bytes >= SYNC_STEP_BYTES) {
                r->has_more = 1;
                break;
            }
            bytes += json_string_length(json_object_get(m, "body")) + 64;
            json_array_append(msgs, m);
            left--;
        }
        json_decref(page);
    }
    if (left <= 0)
        r->has_more = 1; /* the last conversation read may have more */
    r->result = msgs;
    return STORE_OK;
}

/* One round trip for every conversation's last seq and last mod, then a
 * page only of those behind what was delivered. */
static int run_repair(struct store *st, struct read *r, int per_conv)
{
    size_t cap = r->n ? r->n : 1;
    int64_t *last = xmalloc(cap * sizeof *last), *mods = r->mods ? xmalloc(cap * sizeof *mods) : NULL;
    int rc = store_conv_last_seqs(st, r->ids, r->n, last, mods);
    json_t *msgs = json_array(), *changed = json_array();
    for (size_t i = 0; i < r->n && rc == STORE_OK; i++) {
        if (last[i] <= r->ids2[i])
            continue;
        json_t *page;
        int more;
        rc = store_msg_page(st, r->ids[i], 0, r->ids2[i], per_conv, &page, &more);
        if (rc == STORE_OK) {
            json_array_extend(msgs, page);
            json_decref(page);
        }
    }
    for (size_t i = 0; mods && i < r->n && rc == STORE_OK; i++) {
        if (r->mods[i] < 0 || mods[i] <= r->mods[i])
            continue;
        json_t *page;
        int64_t last_mod;
        rc = store_changes_page(st, r->ids[i], r->mods[i], per_conv, &page, &last_mod);
        if (rc == STORE_OK) {
            json_array_extend(changed, page);
            json_decref(page);
        }
    }
    free(last);
    free(mods);
    if (rc != STORE_OK) {
        json_decref(msgs);
        json_decref(changed);
        return rc;
    }
    r->result = msgs;
    r->extra = changed;
    return STORE_OK;
}

static int run_membership(struct store *st, struct read *r)
{
    json_t *pairs = json_array();
    for (size_t i = 0; i < r->n; i++) {
        int64_t *convs;
        size_t n;
        int rc = store_user_convs(st, r->ids[i], &convs, &n);
        if (rc != STORE_OK) {
            json_decref(pairs);
            return rc;
        }
        for (size_t k = 0; k < n; k++)
            json_array_append_new(pairs, json_pack("[I,I]", (json_int_t)r->ids[i], (json_int_t)convs[k]));
        free(convs);
    }
    r->result = pairs;
    return STORE_OK;
}

/* The message r->seq of r->conv into r->result. */
static int one_msg(struct store *st, struct read *r)
{
    json_t *page = NULL;
    int more;
    int rc = store_msg_page(st, r->conv, 0, r->seq - 1, 1, &page, &more);
    if (rc == STORE_OK && json_array_size(page) == 1)
        r->result = json_incref(json_array_get(page, 0));
    else if (rc == STORE_OK)
        rc = STORE_NOT_FOUND;
    if (page)
        json_decref(page);
    return rc;
}

/* r->str holds r->n words, each NUL-terminated, one after the other. */
static int run_search(struct store *st, struct read *r)
{
    if (r->conv > 0) {
        int rc = store_is_member(st, r->conv, r->user);
        if (rc != STORE_OK)
            return rc;
    }
    const char *words[READ_SEARCH_WORDS];
    size_t n = 0;
    const char *p = r->str;
    while (p && n < r->n && n < READ_SEARCH_WORDS) {
        words[n++] = p;
        p += strlen(p) + 1;
    }
    return store_search(st, r->user, r->conv, words, n, r->before, r->limit, &r->result, &r->seq);
}

void reader_run(struct store *st, struct read *r, int per_conv)
{
    switch (r->kind) {
    case READ_USER:
        r->rc = store_user_by_id(st, r->user, &r->result);
        break;
    case READ_USER_BY_NAME:
        r->rc = store_user_by_name(st, r->str, &r->result, &r->pwhash);
        break;
    case READ_USERS:
        r->rc = store_users_search(st, r->str ? r->str : "", r->limit, &r->result);
        break;
    case READ_CONVS:
        r->rc = store_conv_list(st, r->user, &r->result);
        break;
    case READ_CONV:
        r->rc = store_conv_get(st, r->conv, r->user, &r->result);
        break;
    case READ_HISTORY:
        r->rc = store_is_member(st, r->conv, r->user);
        if (r->rc == STORE_OK)
            r->rc = store_msg_page(st, r->conv, r->before, r->after, r->limit, &r->result, &r->has_more);
        break;
    case READ_MSG:
        r->rc = one_msg(st, r);
        break;
    case READ_SYNC:
        r->rc = run_sync(st, r, per_conv);
        break;
    case READ_SYNC_SUMMARY:
        r->rc = store_sync_summary(st, r->user, &r->result);
        break;
    case READ_SESSION:
        r->rc = store_user_by_id(st, r->user, &r->result);
        if (r->rc == STORE_OK)
            r->rc = store_peers(st, r->user, &r->ids, &r->n);
        if (r->rc == STORE_OK)
            r->rc = store_user_convs(st, r->user, &r->ids2, &r->n2);
        if (r->rc == STORE_OK)
            r->rc = store_sync_summary(st, r->user, &r->extra);
        break;
    case READ_REPAIR:
        r->rc = run_repair(st, r, per_conv);
        break;
    case READ_MEMBERSHIP:
        r->rc = run_membership(st, r);
        break;
    case READ_REPUBLISH:
        r->rc = one_msg(st, r);
        if (r->rc == STORE_OK)
            r->rc = store_members(st, r->conv, &r->ids, &r->n);
        break;
    case READ_CONV_VIEW:
        r->rc = store_conv_view(st, r->conv, &r->result, &r->pos, &r->npos);
        break;
    case READ_CHANGES:
        r->rc = store_is_member(st, r->conv, r->user);
        if (r->rc == STORE_OK)
            r->rc = store_changes_page(st, r->conv, r->after, r->limit, &r->result, &r->seq);
        break;
    case READ_SEARCH:
        r->rc = run_search(st, r);
        break;
    case READ_ATTACHMENT:
        r->rc = store_att_get(st, r->str, r->user, &r->result, &r->pwhash);
        if (r->rc == STORE_OK && store_att_path(st, r->pwhash, &r->str2) != STORE_OK)
            r->str2 = NULL;
        break;
    case READ_ATT_CHUNK: {
        /* read straight into the frame the worker queues: one copy, from the store */
        size_t want = r->limit > 0 ? (size_t)r->limit : 0, n = 0;
        r->frame = frame_new(want);
        r->rc = store_att_read(st, r->str, r->after, r->frame->data, want, &n);
        r->frame->len = (uint32_t)(r->rc == STORE_OK && n <= want ? n : 0);
        break;
    }
    }
}

/* ---- the inline reader: the worker's own connection ---- */

struct reader_inline {
    struct reader base; /* first */
    struct store *st;
    int per_conv;
    struct reader *slow; /* NULL: every read here */
};

int reader_slow_kind(enum read_kind kind)
{
    return kind == READ_SEARCH;
}

static void inline_submit(struct reader *rd, struct read *r)
{
    struct reader_inline *ri = (struct reader_inline *)rd;
    if (ri->slow && reader_slow_kind(r->kind)) {
        reader_submit(ri->slow, r);
        return;
    }
    /* SQLite in WAL mode: every statement sees the newest commit, so min_seq
     * always holds here; a replica-backed reader checks it. */
    reader_run(ri->st, r, ri->per_conv);
    r->done(r);
    read_free(r);
}

static void inline_free(struct reader *rd)
{
    struct reader_inline *ri = (struct reader_inline *)rd;
    reader_free(ri->slow);
    store_close(ri->st);
    free(ri);
}

struct reader *reader_inline_new(struct store *st, int per_conv, struct reader *slow)
{
    struct reader_inline *ri = xcalloc(1, sizeof *ri);
    ri->slow = slow;
    ri->base.submit = inline_submit;
    ri->base.free = inline_free;
    ri->st = st;
    ri->per_conv = per_conv;
    return &ri->base;
}
