/* chat: see chat.h. */
#include "chat.h"

#include "chat_limits.h"
#include "config.h"
#include "log.h"
#include "presence.h"
#include "writer.h"
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRESENCE_BEAT_MS 10000              /* cluster: each node's presence heartbeat */
#define PRESENCE_TTL_MS (3 * PRESENCE_BEAT_MS) /* another node's users stay online this long unheard */
#define REPAIR_WAIT_MS 200 /* how long a gap waits for the missing messages before reading them */
#define HOLD_MAX 1024      /* messages held behind a gap, per conversation and worker */
#define PUSH_WAIT_MS 2000  /* how long messages to a local member wait for the push naming the conversation */

/* One ordered stream of a conversation on a worker: the number delivered up
 * to (-1: not known yet, the next one is taken as it comes) and the
 * publications that arrived ahead of a gap, sorted (references). */
struct order_stream {
    int64_t delivered;
    struct bus_msg **held;
    size_t nheld, capheld;
};

/* Per worker, per conversation with a local member: its messages by seq and
 * its changes (update frames) by mod. */
struct conv_order {
    struct order_stream msgs, mods;
    int check;           /* newly watched: read back once what a late subscription missed */
    int64_t awaiting_ms; /* not 0: no local member joined yet, everything held since then (await_push) */
};

static void stream_dispose(struct order_stream *s)
{
    for (size_t i = 0; i < s->nheld; i++)
        bus_msg_unref(s->held[i]);
    free(s->held);
}

static void order_free(struct conv_order *o)
{
    stream_dispose(&o->msgs);
    stream_dispose(&o->mods);
    free(o);
}

static struct conv_order *order_new(struct chat_worker *cw, int64_t conv)
{
    struct conv_order *o = xcalloc(1, sizeof *o);
    o->msgs.delivered = -1;
    o->mods.delivered = -1;
    idmap_put(&cw->order, conv, o);
    return o;
}

static void forget_awaiting(struct chat_worker *cw, struct conv_order *o)
{
    if (o->awaiting_ms) {
        o->awaiting_ms = 0;
        cw->awaiting--;
    }
}

static void on_watch(void *ctx, int64_t conv, int on)
{
    struct chat_worker *cw = ctx;
    if (on) {
        if (!idmap_get(&cw->order, conv)) /* else: held for this join (await_push) */
            order_new(cw, conv);
        bus_watch(cw->chat->bus, cw->w->index, conv);
    } else {
        struct conv_order *o = idmap_del(&cw->order, conv);
        if (o) {
            forget_awaiting(cw, o);
            order_free(o);
        }
        bus_unwatch(cw->chat->bus, cw->w->index, conv);
    }
}

static void arm_repair(struct chat_worker *cw);

/* On a network bus the subscription to o's channel is being made now: what
 * was published before it took effect is read back soon. */
static void read_back_once(struct chat_worker *cw, struct conv_order *o)
{
    if (cw->chat->check_ms > 0) {
        o->check = 1;
        arm_repair(cw);
    }
}

/* A conversation got a local member at a known point: what came before is
 * the member's sync's business. */
static void order_baseline(struct chat_worker *cw, int64_t conv, int64_t last_seq, int64_t last_mod)
{
    struct conv_order *o = idmap_get(&cw->order, conv);
    if (!o)
        return;
    forget_awaiting(cw, o); /* what was held goes once the caller sent what comes first: release_held */
    if (o->mods.delivered < 0 && last_mod >= 0)
        o->mods.delivered = last_mod;
    if (o->msgs.delivered < 0) {
        o->msgs.delivered = last_seq;
        read_back_once(cw, o);
    }
}

static void check_now(struct chat_worker *cw, int all);
static void release_held(struct chat_worker *cw, int64_t conv);

static void expire_awaiting(struct chat_worker *cw);

static void on_repair_timer(uv_timer_t *t)
{
    struct chat_worker *cw = t->data;
    cw->repair_armed = 0;
    if (cw->awaiting)
        expire_awaiting(cw);
    check_now(cw, 0);
}

static void on_check_timer(uv_timer_t *t)
{
    check_now(t->data, 1);
}

static void publish(struct chat_worker *cw, struct bus_msg *m);

/* Cluster: this node's users online, so the other nodes keep them online
 * (and let them go if this node dies). Worker 0 only. */
static void on_beat_timer(uv_timer_t *t)
{
    struct chat_worker *cw = t->data;
    int64_t *users;
    size_t n = presence_local_users(cw->chat->presence, &users);
    struct bus_msg *m = bus_msg_new(BUS_ALIVE, 0);
    m->users = idlist_new(users, n);
    free(users);
    publish(cw, m);
}

struct chat_worker *chat_worker_new(struct chat *ch, struct worker *w, struct reader *rd)
{
    struct chat_worker *cw = xcalloc(1, sizeof *cw);
    cw->chat = ch;
    cw->w = w;
    cw->reader = rd;
    hub_init(&cw->hub, on_watch, cw);
    uv_timer_init(&w->loop, &cw->repair_timer);
    cw->repair_timer.data = cw;
    uv_unref((uv_handle_t *)&cw->repair_timer);
    uv_timer_init(&w->loop, &cw->check_timer);
    cw->check_timer.data = cw;
    if (ch->check_ms > 0)
        uv_timer_start(&cw->check_timer, on_check_timer, (uint64_t)ch->check_ms, (uint64_t)ch->check_ms);
    uv_unref((uv_handle_t *)&cw->check_timer); /* never keeps the loop alive */
    uv_timer_init(&w->loop, &cw->beat_timer);
    cw->beat_timer.data = cw;
    if (ch->check_ms > 0 && w->index == 0)
        uv_timer_start(&cw->beat_timer, on_beat_timer, PRESENCE_BEAT_MS / 10, PRESENCE_BEAT_MS);
    uv_unref((uv_handle_t *)&cw->beat_timer);
    return cw;
}

void chat_worker_free(struct chat_worker *cw)
{
    if (!cw)
        return;
    hub_dispose(&cw->hub);
    IDMAP_FOREACH(&cw->order, s)
        order_free(s->val);
    idmap_dispose(&cw->order);
    reader_free(cw->reader);
    free(cw);
}

int chat_ready(struct chat_worker *cw, const char *problems[4])
{
    int n = 0;
    if (!writer_db_ok(cw->chat->writer))
        problems[n++] = "database";
    if (!bus_ready(cw->chat->bus))
        problems[n++] = "bus";
    if (cw->w->draining || cw->w->leaving)
        problems[n++] = "draining";
    problems[n] = NULL;
    return n == 0;
}

const char *chat_rc_code(int rc, int unavailable)
{
    if (unavailable || rc == STORE_UNAVAILABLE)
        return "unavailable";
    switch (rc) {
    case STORE_NOT_FOUND: return "not_found";
    case STORE_FORBIDDEN: return "forbidden";
    case STORE_BAD_REQUEST: return "bad_request";
    case STORE_CONFLICT: return "conflict";
    default: return "internal";
    }
}

static void send_json(struct conn *c, json_t *o)
{
    conn_send_json(c, o);
    json_decref(o);
}

static void publish(struct chat_worker *cw, struct bus_msg *m)
{
    bus_publish(cw->chat->bus, m, NULL);
    bus_msg_unref(m);
}

/* ---- delivery of publications on this worker ---- */

/* The origin connection to skip, if the publication came from this node. */
static uint64_t except_of(struct chat_worker *cw, const struct bus_msg *m)
{
    return m->origin == cw->chat->bus->node ? m->except_conn : 0;
}

/* {"op":"conversation","conversation":{"last_read_seq":N,"unread":M, + the
 * shared body: one small head per member, one body for all. */
static struct frame *push_head(int64_t last_seq, int64_t pos, size_t body_len)
{
    char text[160];
    int n = snprintf(text, sizeof text,
                     "{\"op\":\"conversation\",\"conversation\":{\"last_read_seq\":%lld,\"unread\":%lld,",
                     (long long)pos, (long long)(last_seq > pos ? last_seq - pos : 0));
    size_t total = (size_t)n + body_len;
    size_t hl = ws_header_len(total);
    struct frame *f = frame_new(hl + (size_t)n);
    ws_write_header(f->data, WS_OP_TEXT, total);
    memcpy(f->data + hl, text, (size_t)n);
    return f;
}

static void deliver_push(struct chat_worker *cw, const struct bus_msg *m)
{
    struct hub *h = &cw->hub;
    for (size_t i = 0; i < m->npos; i++) {
        struct hub_user *u = hub_user(h, m->pos[i].user);
        if (!u)
            continue;
        hub_join(h, m->pos[i].user, m->conv);
        order_baseline(cw, m->conv, m->seq, -1);
        struct frame *head = push_head(m->seq, m->pos[i].last_read_seq, m->frame->len);
        for (struct conn *c = u->head; c; c = c->unext)
            if (c->state == CONN_WS)
                conn_send2(c, head, m->frame);
        frame_unref(head);
    }
    release_held(cw, m->conv); /* after the push: the client knows the conversation */
    for (uint32_t i = 0; m->users && i < m->users->n; i++) {
        hub_leave(h, m->users->ids[i], m->conv);
        hub_send_user(h, m->users->ids[i], m->aux, 0);
    }
}

static void deliver_presence(struct chat_worker *cw, const struct bus_msg *m)
{
    struct hub *h = &cw->hub;
    struct presence *pr = cw->chat->presence;
    if (m->origin != cw->chat->bus->node && cw->w->index == 0) /* every worker gets it: one records it */
        presence_remote_set(pr, m->origin, m->user, m->seq != 0, util_mono_ms() + PRESENCE_TTL_MS);
    /* offline at one node, online at another: the user is still online */
    if (!m->seq && presence_online_but(pr, m->user, m->origin))
        return;
    uint32_t mark = ++h->mark;
    if (!mark)
        mark = ++h->mark; /* 0 is every user's initial mark */
    for (uint32_t i = 0; i < m->users->n; i++) {
        size_t n;
        const int64_t *users = hub_conv_users(h, m->users->ids[i], &n);
        for (size_t k = 0; k < n; k++) {
            struct hub_user *u = hub_user(h, users[k]);
            if (users[k] == m->user || u->mark == mark)
                continue;
            u->mark = mark; /* a peer in several shared conversations hears it once */
            hub_send_user(h, users[k], m->frame, 0);
        }
    }
}

/* A message to its local recipients: the members the batch saw, or (a
 * message read back by a repair) the conversation's local members. */
const char *const chat_limited_names[LIMITED__N] = {"send", "read", "signup", "login", "conversation", "connection"};
const double chat_s2d_bounds[CHAT_S2D_BUCKETS - 1] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05, 0.1, 0.25, 0.5, 1};

void chat_count_limited(struct chat_worker *cw, enum chat_limited what)
{
    cw->counters.limited[what]++;
}

static void observe_s2d(struct chat_worker *cw, uint64_t t0_ns)
{
    double secs = (double)(uv_hrtime() - t0_ns) / 1e9;
    int i = 0;
    while (i < CHAT_S2D_BUCKETS - 1 && secs > chat_s2d_bounds[i])
        i++;
    cw->counters.s2d[i]++;
    cw->counters.s2d_sum += secs;
}

/* A run (bus.h) is delivered from its part `from` on: the whole of it (one
 * buffer for every recipient), or, when this worker has delivered its first
 * messages already (a repair overtook it), a copy of the rest. */
static void deliver_msg(struct chat_worker *cw, const struct bus_msg *m, uint32_t from)
{
    struct hub *h = &cw->hub;
    struct frame *f = m->frame, *rest = NULL;
    uint32_t nmsgs = bus_msg_count(m) - from;
    if (from) {
        uint32_t off = m->parts[from - 1].end;
        rest = frame_new(f->len - off);
        memcpy(rest->data, f->data + off, f->len - off);
        f = rest;
    }
    size_t sent = 0;
    if (m->users) {
        for (uint32_t i = 0; i < m->users->n; i++)
            sent += hub_send_user_frames(h, m->users->ids[i], f, nmsgs, except_of(cw, m));
    } else {
        size_t n;
        const int64_t *users = hub_conv_users(h, m->conv, &n);
        for (size_t i = 0; i < n; i++)
            sent += hub_send_user_frames(h, users[i], f, nmsgs, except_of(cw, m));
    }
    frame_unref(rest);
    cw->counters.deliveries += sent * nmsgs;
    /* once per message and worker that had recipients */
    for (uint32_t i = from; sent && i < bus_msg_count(m); i++) {
        uint64_t t0 = m->nparts ? m->parts[i].t0_ns : m->t0_ns;
        if (t0)
            observe_s2d(cw, t0);
    }
}

/* The last seq (mod) m carries. */
static int64_t last_seq(const struct bus_msg *m)
{
    return m->seq + (int64_t)bus_msg_count(m) - 1;
}

static void arm_repair(struct chat_worker *cw)
{
    if (cw->repair_armed)
        return;
    cw->repair_armed = 1;
    uv_timer_start(&cw->repair_timer, on_repair_timer, REPAIR_WAIT_MS, 0);
}

/* Keeps s->held sorted by seq; a full hold drops the publication (the
 * repair reads it back from the database). */
static void hold(struct order_stream *s, const struct bus_msg *m)
{
    if (s->nheld == HOLD_MAX)
        return;
    size_t i = s->nheld;
    while (i > 0 && s->held[i - 1]->seq > m->seq)
        i--;
    if (i > 0 && s->held[i - 1]->seq == m->seq) { /* held already: keep the longer run */
        if (last_seq(m) > last_seq(s->held[i - 1])) {
            bus_msg_unref(s->held[i - 1]);
            s->held[i - 1] = bus_msg_ref((struct bus_msg *)m);
        }
        return;
    }
    if (s->nheld == s->capheld) {
        s->capheld = s->capheld ? s->capheld * 2 : 8;
        s->held = xrealloc(s->held, s->capheld * sizeof *s->held);
    }
    memmove(s->held + i + 1, s->held + i, (s->nheld - i) * sizeof *s->held);
    s->held[i] = bus_msg_ref((struct bus_msg *)m);
    s->nheld++;
}

static void drain_held(struct chat_worker *cw, struct order_stream *s);

/* Whether m is for a user with a connection on this worker. */
static int local_recipient(struct chat_worker *cw, const struct bus_msg *m)
{
    for (uint32_t i = 0; m->users && i < m->users->n; i++)
        if (hub_user(&cw->hub, m->users->ids[i]))
            return 1;
    return 0;
}

/* A message for a local user in a conversation this worker has no member
 * of: the user was just added, and the push that says so (from another
 * node, on another channel) has not come yet. Taken as it comes, the
 * message would be the first the client hears of the conversation, and the
 * client would take what came before it (which this node, not subscribed
 * yet, never saw) for history. So everything waits for the push, whose
 * last_seq says where the member's stream starts (order_baseline), at most
 * PUSH_WAIT_MS (expire_awaiting). */
static struct conv_order *await_push(struct chat_worker *cw, int64_t conv)
{
    struct conv_order *o = order_new(cw, conv);
    int64_t now = worker_now(cw->w);
    o->awaiting_ms = now > 0 ? now : 1;
    cw->awaiting++;
    arm_repair(cw);
    return o;
}

/* After order_baseline, once the frames that must come first (the push, a
 * hello) are queued: what was held waiting for the baseline, from it on.
 * (A stream held behind an ordinary gap has nothing to deliver here.) */
static void release_held(struct chat_worker *cw, int64_t conv)
{
    struct conv_order *o = idmap_get(&cw->order, conv);
    if (!o || o->awaiting_ms)
        return;
    struct order_stream *streams[2] = {&o->msgs, &o->mods};
    for (int i = 0; i < 2; i++) {
        struct order_stream *s = streams[i];
        if (!s->nheld)
            continue;
        if (s->delivered < 0) /* no baseline for this stream: from the first held */
            s->delivered = s->held[0]->seq - 1;
        drain_held(cw, s);
        if (s->nheld)
            arm_repair(cw); /* a gap: read back */
    }
}

static void refresh_memberships(struct chat_worker *cw);

/* Messages that waited PUSH_WAIT_MS for a push that did not come (lost with
 * a dropped publication; a session that started as the push went by; the
 * user left meanwhile): delivered as they came, and the database asked who
 * of this worker's users is in what (membership_read joins them, or forgets
 * the conversation again). */
static void expire_awaiting(struct chat_worker *cw)
{
    int64_t now = worker_now(cw->w);
    int64_t *due = xmalloc(cw->awaiting * sizeof *due);
    size_t n = 0, left = 0;
    IDMAP_FOREACH(&cw->order, it) {
        struct conv_order *o = it->val;
        if (!o->awaiting_ms)
            continue;
        if (now - o->awaiting_ms >= PUSH_WAIT_MS && n < cw->awaiting)
            due[n++] = it->key;
        else
            left++;
    }
    for (size_t i = 0; i < n; i++) {
        forget_awaiting(cw, idmap_get(&cw->order, due[i]));
        release_held(cw, due[i]);
    }
    if (n) {
        log_warn("worker %d: %zu conversation(s) had messages for a local member but no push in %d ms; "
                 "delivered as they came, memberships read again", cw->w->index, n, PUSH_WAIT_MS);
        refresh_memberships(cw);
    }
    free(due);
    if (left)
        arm_repair(cw);
}

/* Each conversation's messages (by seq) and changes (by mod) reach this
 * worker's connections once and in order, whatever order the bus (several
 * nodes publishing, a repair reading back) brings them in: a duplicate is
 * dropped, one ahead of a gap waits until the gap is filled (by the bus, or
 * by a repair). settled: m comes from a repair's read of everything after
 * what was delivered, so nothing before it can still come (a change read
 * back carries the newest mod of its message, and the mods it superseded
 * never will). */
static void deliver_in_order(struct chat_worker *cw, const struct bus_msg *m, int settled)
{
    struct conv_order *o = idmap_get(&cw->order, m->conv);
    if (!o) {
        if (!local_recipient(cw, m))
            return;
        o = await_push(cw, m->conv);
    }
    struct order_stream *s = m->kind == BUS_UPDATE ? &o->mods : &o->msgs;
    if (o->awaiting_ms) {
        hold(s, m);
        return;
    }
    if (s->delivered >= 0 && last_seq(m) <= s->delivered)
        return; /* delivered already */
    if (s->delivered >= 0 && m->seq > s->delivered + 1 && !settled) {
        hold(s, m);
        arm_repair(cw);
        return;
    }
    /* a run whose first messages were delivered already: the rest */
    deliver_msg(cw, m, s->delivered >= m->seq ? (uint32_t)(s->delivered + 1 - m->seq) : 0);
    s->delivered = last_seq(m);
    drain_held(cw, s);
}

/* Delivers what s holds that follows what was delivered, up to the next gap,
 * and drops what was delivered already. */
static void drain_held(struct chat_worker *cw, struct order_stream *s)
{
    size_t k = 0;
    while (k < s->nheld && s->held[k]->seq <= s->delivered + 1) {
        const struct bus_msg *h = s->held[k];
        if (last_seq(h) > s->delivered) {
            deliver_msg(cw, h, (uint32_t)(s->delivered + 1 - h->seq));
            s->delivered = last_seq(h);
        }
        bus_msg_unref(s->held[k++]);
    }
    if (k) /* held may be NULL: memmove of NULL is undefined even for 0 bytes (UBSan) */
        memmove(s->held, s->held + k, (s->nheld - k) * sizeof *s->held);
    s->nheld -= k;
}

/* ---- repair: messages the bus did not bring ---- */

static void repair_read(struct read *r)
{
    struct chat_worker *cw = r->arg;
    cw->repair_inflight = 0;
    if (r->rc != STORE_OK)
        return; /* the next check tries again */
    size_t i;
    json_t *msg;
    json_array_foreach(r->result, i, msg) {
        struct bus_msg *m = bus_msg_new(BUS_MSG, (int64_t)json_integer_value(json_object_get(msg, "conv")));
        m->seq = (int64_t)json_integer_value(json_object_get(msg, "seq"));
        json_object_set_new(msg, "op", json_string("msg"));
        m->frame = frame_ws_json(msg);
        deliver_in_order(cw, m, 0);
        bus_msg_unref(m);
    }
    /* changes: each conversation's page, in mod order, after what was delivered */
    json_array_foreach(r->extra, i, msg) {
        int64_t conv = (int64_t)json_integer_value(json_object_get(msg, "conv"));
        int64_t seq = (int64_t)json_integer_value(json_object_get(msg, "seq"));
        int64_t mod = (int64_t)json_integer_value(json_object_get(msg, "mod"));
        json_t *u = json_pack("{s:s,s:I,s:I,s:I,s:O}", "op", "update", "conv", (json_int_t)conv, "seq",
                              (json_int_t)seq, "mod", (json_int_t)mod, "message", msg);
        struct bus_msg *m = bus_msg_new(BUS_UPDATE, conv);
        m->seq = mod;
        m->frame = frame_ws_json(u);
        json_decref(u);
        deliver_in_order(cw, m, 1);
        bus_msg_unref(m);
    }
    /* a gap still open (more than one page behind): read on */
    IDMAP_FOREACH(&cw->order, s) {
        struct conv_order *o = s->val;
        if (o->msgs.nheld || o->mods.nheld)
            arm_repair(cw);
    }
}

/* Reads what this worker's conversations are missing: all of them (the
 * periodic check, a bus link back), or those with a gap. */
static void check_now(struct chat_worker *cw, int all)
{
    if (cw->repair_inflight)
        return;
    size_t n = 0;
#define DUE(o) ((o)->msgs.delivered >= 0 && (all || (o)->msgs.nheld || (o)->mods.nheld || (o)->check))
    IDMAP_FOREACH(&cw->order, s) {
        struct conv_order *o = s->val;
        n += DUE(o);
    }
    if (!n)
        return;
    struct read *r = chat_read(cw, READ_REPAIR, NULL, repair_read);
    r->ids = xmalloc(n * sizeof *r->ids);
    r->ids2 = xmalloc(n * sizeof *r->ids2);
    r->mods = xmalloc(n * sizeof *r->mods);
    IDMAP_FOREACH(&cw->order, s) {
        struct conv_order *o = s->val;
        if (DUE(o)) {
            o->check = 0;
            r->ids[r->n] = s->key;
            r->mods[r->n] = o->mods.delivered;
            r->ids2[r->n++] = o->msgs.delivered;
        }
    }
#undef DUE
    r->n2 = r->n;
    cw->repair_inflight = 1;
    chat_read_submit(cw, r);
}

/* Forgets the conversations whose messages waited for a push that did not
 * come and that have no local member (the database did not say otherwise). */
static void forget_orphans(struct chat_worker *cw)
{
    size_t n = 0, cap = 0;
    int64_t *gone = NULL;
    IDMAP_FOREACH(&cw->order, s) {
        struct conv_order *o = s->val;
        size_t members = 0;
        if (!o->awaiting_ms)
            hub_conv_users(&cw->hub, s->key, &members);
        if (o->awaiting_ms || members)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            gone = xrealloc(gone, cap * sizeof *gone);
        }
        gone[n++] = s->key;
    }
    for (size_t i = 0; i < n; i++)
        order_free(idmap_del(&cw->order, gone[i]));
    free(gone);
}

/* After a bus outage: a conversation push may have been lost, so a local
 * user may be in a conversation this worker does not know of. The database
 * says; such a conversation is joined with nothing delivered yet, and the
 * check reads its messages back (the client's SDK takes them as the first
 * words of a conversation it did not know). */
static void membership_read(struct read *r)
{
    struct chat_worker *cw = r->arg;
    if (r->rc != STORE_OK)
        return;
    size_t i;
    json_t *pair;
    int joined = 0;
    json_array_foreach(r->result, i, pair) {
        int64_t user = (int64_t)json_integer_value(json_array_get(pair, 0));
        int64_t conv = (int64_t)json_integer_value(json_array_get(pair, 1));
        if (hub_in_conv(&cw->hub, user, conv) || !hub_user(&cw->hub, user))
            continue;
        hub_join(&cw->hub, user, conv);
        order_baseline(cw, conv, 0, 0);
        /* watched from now, even one delivered to before (expire_awaiting) */
        read_back_once(cw, idmap_get(&cw->order, conv));
        release_held(cw, conv);
        joined++;
    }
    if (joined)
        log_info("worker %d: %d conversation memberships learned from the database", cw->w->index, joined);
    forget_orphans(cw);
}

static void refresh_memberships(struct chat_worker *cw)
{
    size_t n = cw->hub.users.len;
    if (!n)
        return;
    struct read *r = chat_read(cw, READ_MEMBERSHIP, NULL, membership_read);
    r->ids = xmalloc(n * sizeof *r->ids);
    IDMAP_FOREACH(&cw->hub.users, s)
        r->ids[r->n++] = s->key;
    chat_read_submit(cw, r);
}

static void run_check(struct worker *w, struct event *ev)
{
    free(ev);
    check_now(w->ctx, 1);
    refresh_memberships(w->ctx);
}

static void drop_check(struct event *ev)
{
    free(ev);
}

void chat_check_all(struct chat *ch)
{
    for (int i = 0; i < ch->nworkers; i++) {
        struct event *ev = xcalloc(1, sizeof *ev);
        ev->run = run_check;
        ev->drop = drop_check;
        worker_post(ch->workers[i], ev, ev);
    }
}

void chat_deliver(struct worker *w, const struct bus_msg *m)
{
    struct chat_worker *cw = w->ctx;
    struct hub *h = &cw->hub;
    switch (m->kind) {
    case BUS_MSG:
    case BUS_UPDATE:
        deliver_in_order(cw, m, 0);
        break;
    case BUS_CONV_EVENT: {
        size_t n;
        const int64_t *users = hub_conv_users(h, m->conv, &n);
        for (size_t i = 0; i < n; i++)
            if (users[i] != m->user)
                hub_send_user(h, users[i], m->frame, except_of(cw, m));
        break;
    }
    case BUS_PRESENCE: deliver_presence(cw, m); break;
    case BUS_CONV_PUSH: deliver_push(cw, m); break;
    case BUS_ALIVE:
        if (m->origin != cw->chat->bus->node && w->index == 0 && m->users)
            presence_remote_alive(cw->chat->presence, m->origin, m->users->ids, m->users->n,
                                  util_mono_ms() + PRESENCE_TTL_MS);
        break;
    }
}

/* ---- conversation pushes ---- */

/* The view of someone no longer in the conversation: who is in it now,
 * nothing of the messages. */
static json_t *outside_view(int64_t conv, json_t *shared)
{
    json_t *o;
    if (shared) {
        o = json_deep_copy(shared);
        json_object_set_new(o, "last_message", json_null());
    } else { /* nobody is left */
        o = json_pack("{s:I,s:s,s:n,s:[],s:i,s:n,s:i}", "id", (json_int_t)conv, "kind", "group", "title",
                      "members", "last_seq", 0, "last_message", "created_at", 0);
    }
    json_object_set_new(o, "last_read_seq", json_integer(0));
    json_object_set_new(o, "unread", json_integer(0));
    json_t *f = json_pack("{s:s,s:o}", "op", "conversation", "conversation", o);
    return f;
}

/* After the conversation view is read: one publication carries the shared
 * body (encoded once), each member's read position, and the frame for the
 * former members in r->ids. Then the job that changed the conversation is
 * answered: a client's next request (a send) comes after the push, as in
 * one process, so the push's last_seq never already counts it. */
static void push_view_read(struct read *r)
{
    struct job *j = r->arg;
    struct chat_worker *cw = j->arg;
    struct bus_msg *m = bus_msg_new(BUS_CONV_PUSH, r->conv);
    if (r->rc == STORE_OK) {
        char *text = json_dumps(r->result, JSON_COMPACT); /* {"id":...} */
        size_t len = strlen(text);
        m->frame = frame_new(len); /* the body after the head's comma: "id":...}} */
        memcpy(m->frame->data, text + 1, len - 1);
        m->frame->data[len - 1] = '}';
        free(text);
        m->seq = (int64_t)json_integer_value(json_object_get(r->result, "last_seq"));
        m->pos = r->pos;
        m->npos = r->npos;
        r->pos = NULL;
    }
    if (r->n && (r->rc == STORE_OK || r->rc == STORE_NOT_FOUND)) {
        m->users = idlist_new(r->ids, r->n);
        json_t *o = outside_view(r->conv, r->rc == STORE_OK ? r->result : NULL);
        m->aux = frame_ws_json(o);
        json_decref(o);
    }
    if (m->frame || m->users) {
        if (!m->frame)
            m->frame = frame_new(0);
        publish(cw, m);
    } else {
        bus_msg_unref(m);
    }
    if (j->reply)
        j->reply(j);
    job_release(j);
}

/* Pushes the conversation j changed to every member, and the outside view
 * to the n_gone users who just left or were removed; then answers j (which
 * the push keeps until then). */
static void push_conversation(struct chat_worker *cw, struct job *j, int64_t conv, const int64_t *gone,
                              size_t n_gone)
{
    struct read *r = chat_read(cw, READ_CONV_VIEW, NULL, push_view_read);
    r->arg = j;
    job_hold(j);
    r->conv = conv;
    if (n_gone) {
        r->ids = xmalloc(n_gone * sizeof *r->ids);
        memcpy(r->ids, gone, n_gone * sizeof *r->ids);
        r->n = n_gone;
    }
    chat_read_submit(cw, r);
}

/* ---- jobs ---- */

static void core_done(struct job *j)
{
    struct chat_worker *cw = j->arg;
    if (j->rc == STORE_OK) {
        switch (j->kind) {
        case JOB_CONV_CREATE:
            if (j->u.create.created) {
                push_conversation(cw, j, j->u.create.conv, NULL, 0);
                return; /* answered after the push */
            }
            break;
        case JOB_MEMBER:
            if (j->u.member.changed) {
                push_conversation(cw, j, j->u.member.conv, &j->u.member.target,
                                  j->u.member.op == MEMBER_REMOVE);
                return;
            }
            break;
        case JOB_READ: {
            struct job_read *rd = &j->u.read;
            if (!chat_read_moved(cw, rd->user, rd->conv, rd->pos))
                break; /* that position was announced already: no fan-out */
            json_t *o = json_pack("{s:s,s:I,s:I,s:I}", "op", "read", "conv", (json_int_t)rd->conv, "user",
                                  (json_int_t)rd->user, "seq", (json_int_t)rd->pos);
            struct bus_msg *m = bus_msg_new(BUS_CONV_EVENT, rd->conv);
            m->frame = frame_ws_json(o);
            m->except_conn = j->conn ? j->conn->id : 0; /* every member connection but this one */
            json_decref(o);
            publish(cw, m);
            break;
        }
        default: break;
        }
    }
    if (j->reply)
        j->reply(j);
}

/* A resend of a stored message: publish the stored message again before
 * the original ack goes out (commit, publish, ack: a node that died between
 * its commit and its publish leaves nobody without the message once the
 * sender retries; receivers drop the seq if they have it). */
static void republish_read(struct read *r)
{
    struct job *j = r->arg;
    struct chat_worker *cw = j->arg;
    if (r->rc == STORE_OK) {
        struct bus_msg *m = bus_msg_new(BUS_MSG, r->conv);
        m->seq = r->seq;
        json_object_set_new(r->result, "op", json_string("msg"));
        m->frame = frame_ws_json(r->result);
        m->users = idlist_new(r->ids, r->n);
        publish(cw, m);
    }
    if (j->reply)
        j->reply(j);
    job_release(j);
}

static void send_done(struct job *j)
{
    struct chat_worker *cw = j->arg;
    if (j->rc != STORE_OK || !j->u.send.dup) {
        if (j->reply)
            j->reply(j);
        return;
    }
    struct read *r = chat_read(cw, READ_REPUBLISH, NULL, republish_read);
    r->arg = j;
    r->conv = j->u.send.conv;
    r->seq = j->u.send.seq;
    r->min_seq = j->u.send.seq;
    job_hold(j);
    chat_read_submit(cw, r);
}

struct job *chat_job(struct chat_worker *cw, enum job_kind kind, struct conn *c, job_done_fn reply)
{
    struct job *j = job_new(kind, cw->w, c, kind == JOB_SEND ? send_done : core_done, cw);
    j->reply = reply;
    return j;
}

void chat_submit(struct chat_worker *cw, struct job *j)
{
    writer_submit(cw->chat->writer, j);
}

/* One token of user's send limit (sends and changes share it), or -1 with
 * *retry_ms. */
static int take_send_token(struct chat_worker *cw, int64_t user, int64_t *retry_ms)
{
    const struct config *cfg = cw->chat->cfg;
    /* A user connected at k nodes sends through k buckets: each holds 1/k of
     * the limit, so the limit holds across the cluster. */
    int64_t k = cw->chat->check_ms > 0 ? presence_other_nodes(cw->chat->presence, user) + 1 : 1;
    int64_t rate = cfg->send_rate ? (cfg->send_rate + k - 1) / k : 0;
    int64_t burst = cfg->send_burst ? (cfg->send_burst + k - 1) / k : 0;
    if (presence_take_token(cw->chat->presence, user, util_mono_ms(), rate, burst, retry_ms) < 0) {
        chat_count_limited(cw, LIMITED_SEND);
        return -1;
    }
    return 0;
}

int chat_send(struct chat_worker *cw, struct job *j, int64_t *retry_ms)
{
    j->u.send.arrived_ns = uv_hrtime();
    if (take_send_token(cw, j->u.send.sender, retry_ms) < 0) {
        job_free(j);
        return -1;
    }
    writer_submit(cw->chat->writer, j);
    return 0;
}

int chat_change(struct chat_worker *cw, struct job *j, int64_t *retry_ms)
{
    if (take_send_token(cw, j->u.change.user, retry_ms) < 0) {
        job_free(j);
        return -1;
    }
    writer_submit(cw->chat->writer, j);
    return 0;
}

struct read *chat_read(struct chat_worker *cw, enum read_kind kind, struct conn *c, read_done_fn done)
{
    return read_new(kind, cw->w, c, done, cw);
}

void chat_read_submit(struct chat_worker *cw, struct read *r)
{
    cw->counters.reads++;
    reader_submit(cw->reader, r);
}

int chat_typing(struct chat_worker *cw, struct conn *c, int64_t conv)
{
    if (!hub_in_conv(&cw->hub, c->user_id, conv))
        return STORE_NOT_FOUND;
    if (!chat_typing_due(cw, c->user_id, conv))
        return STORE_OK; /* coalesced: the last one is still showing */
    json_t *t = json_pack("{s:s,s:I,s:I}", "op", "typing", "conv", (json_int_t)conv, "user", (json_int_t)c->user_id);
    struct bus_msg *m = bus_msg_new(BUS_CONV_EVENT, conv);
    m->frame = frame_ws_json(t);
    m->user = c->user_id; /* none of the typist's own connections */
    json_decref(t);
    publish(cw, m);
    return STORE_OK;
}

/* ---- sessions ---- */

static void send_hello(struct chat_worker *cw, struct conn *c, json_t *user)
{
    send_json(c, json_pack("{s:s,s:O,s:I}", "op", "hello", "user", user, "heartbeat_ms",
                           (json_int_t)cw->chat->cfg->heartbeat_ms));
}

static void publish_presence(struct chat_worker *cw, int64_t user, const int64_t *convs, size_t n, int online)
{
    if (!n && cw->chat->check_ms <= 0)
        return; /* nobody to tell; in a cluster the other nodes record it all the same */
    json_t *o = json_pack("{s:s,s:I,s:b}", "op", "presence", "user", (json_int_t)user, "online", online);
    struct bus_msg *m = bus_msg_new(BUS_PRESENCE, 0);
    m->frame = frame_ws_json(o);
    m->users = idlist_new(convs, n);
    m->user = user;
    m->seq = online;
    json_decref(o);
    publish(cw, m);
}

static void session_read(struct read *r)
{
    struct chat_worker *cw = r->arg;
    struct conn *c = r->conn;
    if (c->state != CONN_WS_AUTH)
        return; /* closed meanwhile */
    if (r->rc == STORE_NOT_FOUND) {
        conn_close_ws(c, 4001, "unknown user");
        return;
    }
    if (r->rc != STORE_OK) { /* 1013 Try Again Later: the client reconnects with backoff */
        conn_close_ws(c, r->rc == STORE_UNAVAILABLE ? 1013 : 1011,
                      r->rc == STORE_UNAVAILABLE ? "database unavailable; retry" : "internal error");
        return;
    }
    c->state = CONN_WS;
    c->last_ping_ms = worker_now(cw->w); /* in place of the auth deadline (worker.h) */
    c->in_session = 1;
    if (hub_add(&cw->hub, c))
        hub_set_convs(&cw->hub, c->user_id, r->ids2, r->n2);
    size_t i;
    json_t *sum;
    json_array_foreach(r->extra, i, sum)
        order_baseline(cw, (int64_t)json_integer_value(json_object_get(sum, "conv")),
                       (int64_t)json_integer_value(json_object_get(sum, "last_seq")),
                       (int64_t)json_integer_value(json_object_get(sum, "last_mod")));
    int count = presence_up(cw->chat->presence, c->user_id);
    send_hello(cw, c, r->result);
    json_array_foreach(r->extra, i, sum) /* after the hello */
        release_held(cw, (int64_t)json_integer_value(json_object_get(sum, "conv")));
    for (i = 0; i < r->n; i++)
        if (presence_online(cw->chat->presence, r->ids[i]))
            send_json(c, json_pack("{s:s,s:I,s:b}", "op", "presence", "user", (json_int_t)r->ids[i], "online", 1));
    if (count == 1)
        publish_presence(cw, c->user_id, r->ids2, r->n2, 1);
}

void chat_session_start(struct chat_worker *cw, struct conn *c, const struct jwt_claims *cl)
{
    c->user_id = cl->sub;
    c->token_exp_ms = cl->exp * 1000;
    struct read *r = chat_read(cw, READ_SESSION, c, session_read);
    r->user = cl->sub;
    chat_read_submit(cw, r);
}

static void renew_read(struct read *r)
{
    struct chat_worker *cw = r->arg;
    if (r->rc == STORE_OK && r->conn->state == CONN_WS)
        send_hello(cw, r->conn, r->result);
}

void chat_session_renew(struct chat_worker *cw, struct conn *c, const struct jwt_claims *cl)
{
    if (cl->exp * 1000 > c->token_exp_ms)
        c->token_exp_ms = cl->exp * 1000;
    struct read *r = chat_read(cw, READ_USER, c, renew_read);
    r->user = c->user_id;
    chat_read_submit(cw, r);
}

void chat_session_end(void *ctx, struct conn *c)
{
    struct chat_worker *cw = ctx;
    struct hub_user *u = hub_user(&cw->hub, c->user_id);
    struct idlist *convs = NULL;
    if (u && u->head == c && !c->unext) /* the user's last connection here */
        convs = idlist_new(u->convs, u->nconvs);
    hub_remove(&cw->hub, c);
    if (presence_down(cw->chat->presence, c->user_id) == 0 && !cw->w->stopping && convs)
        publish_presence(cw, c->user_id, convs->ids, convs->n, 0);
    idlist_unref(convs);
}

/* ---- /metrics: one event per worker, summed under a mutex, answered on
 * the worker that asked ---- */

struct gather {
    uv_mutex_t mu;                    /* guards snap and pending */
    struct metrics_snapshot snap;
    int pending;
    struct chat_worker *origin;
    struct conn *c;                   /* pinned */
    chat_metrics_fn done;
};

struct gather_event {
    struct event ev;
    struct gather *g;
};

static void gather_free(struct gather *g)
{
    conn_release(g->c);
    uv_mutex_destroy(&g->mu);
    free(g);
}

static void gather_answer(struct worker *w, struct event *ev)
{
    struct gather *g = ((struct gather_event *)ev)->g;
    (void)w;
    free(ev);
    if (g->c->state == CONN_HTTP)
        g->done(g->c, &g->snap);
    gather_free(g);
}

static void gather_drop(struct event *ev)
{
    struct gather *g = ((struct gather_event *)ev)->g;
    free(ev);
    uv_mutex_lock(&g->mu);
    int last = --g->pending <= 0;
    uv_mutex_unlock(&g->mu);
    if (last)
        gather_free(g);
}

static void add_u64(uint64_t *dst, const uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}

static void gather_run(struct worker *w, struct event *ev)
{
    struct gather *g = ((struct gather_event *)ev)->g;
    struct chat_worker *cw = w->ctx;
    uint64_t http = 0, unauth = 0, ws = 0;
    for (struct conn *c = w->conns; c; c = c->next) {
        http += c->state == CONN_HTTP;
        unauth += c->state == CONN_WS_AUTH;
        ws += c->state == CONN_WS;
    }
    uv_mutex_lock(&g->mu);
    struct metrics_snapshot *s = &g->snap;
    s->rt.frames_in += w->counters.frames_in;
    s->rt.frames_out += w->counters.frames_out;
    s->rt.slow_closes += w->counters.slow_closes;
    add_u64(&s->rt.http[0][0], &w->counters.http[0][0], WORKER_ROUTES * WORKER_STATUSES);
    s->core.deliveries += cw->counters.deliveries;
    add_u64(s->core.limited, cw->counters.limited, LIMITED__N);
    add_u64(s->core.s2d, cw->counters.s2d, CHAT_S2D_BUCKETS);
    s->core.s2d_sum += cw->counters.s2d_sum;
    s->core.reads += cw->counters.reads;
    s->conns_http += http;
    s->conns_ws_unauth += unauth;
    s->conns_ws += ws;
    s->nworkers++;
    int last = --g->pending == 0;
    uv_mutex_unlock(&g->mu);
    if (!last) {
        free(ev);
        return;
    }
    /* the last worker hands the sums back to the one that asked */
    ev->run = gather_answer;
    ev->drop = gather_drop;
    g->pending = 1;
    worker_post(g->origin->w, ev, ev);
}

void chat_metrics_gather(struct chat_worker *cw, struct conn *c, chat_metrics_fn done)
{
    struct chat *ch = cw->chat;
    struct gather *g = xcalloc(1, sizeof *g);
    uv_mutex_init(&g->mu);
    g->pending = ch->nworkers;
    g->origin = cw;
    g->c = c;
    c->pending++;
    g->done = done;
    for (int i = 0; i < ch->nworkers; i++) {
        struct gather_event *ge = xcalloc(1, sizeof *ge);
        ge->ev.run = gather_run;
        ge->ev.drop = gather_drop;
        ge->g = g;
        worker_post(ch->workers[i], &ge->ev, &ge->ev);
    }
}
