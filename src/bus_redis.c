/* bus_redis: see bus_redis.h. The envelope codec, then the bus thread (its
 * queue, the connections and their failures, publishing, subscriptions,
 * receiving), then the bus_ops the other threads call. */
#include "bus_redis.h"

#include "idmap.h"
#include "log.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    BACKOFF_MIN_MS = 50,      /* first retry after a loss (then doubling, with jitter) */
    BACKOFF_MAX_MS = 2000,
    HEALTH_MS = 1000,         /* each shard: a ping through Redis, stalls checked */
    DEAD_TICKS = 10,          /* health ticks with nothing back: the connection is closed */
    CONNECT_TICKS = 5,        /* health ticks to connect */
    SUB_CHUNK = 512,          /* channels per SUBSCRIBE when resubscribing */
    CHAN_MAX = 64,
    WAKE_OPS = 1024,          /* queued operations taken per loop iteration, at most */
    WAKE_BYTES = 1 << 20,     /* and envelope bytes */
};
#define BACKLOG_MAX ((size_t)64 << 20) /* unacknowledged PUBLISH bytes per shard; more: dropped */

/* ---- the envelope ----
 *
 *  0  u8   version (1)
 *  1  u8   kind (enum bus_kind)
 *  2  u8   flags: 1 frame, 2 aux, 4 users present
 *  3  u8   0
 *  4  u64  origin node          12 u64 except_conn
 * 20  i64  conv                 28 i64 user          36 i64 seq
 * 44  u32  frame bytes          48 u32 aux bytes
 * 52  u32  users                56 u32 positions
 * 60  frame, aux, users (i64 each), positions ({i64 user, i64 last_read_seq} each)
 * All little-endian; the lengths must add up to the envelope's exactly. */

enum { HDR = 60, F_FRAME = 1, F_AUX = 2, F_USERS = 4 };

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One envelope's bytes: m's head, aux, users and positions with a frame of
 * flen bytes. */
static size_t envelope_size(const struct bus_msg *m, uint32_t flen)
{
    return HDR + flen + (m->aux ? m->aux->len : 0) + (m->users ? (size_t)m->users->n * 8 : 0) + m->npos * 16;
}

size_t bus_redis_envelope_size(const struct bus_msg *m)
{
    /* a run: one envelope per message, each with the whole head */
    return envelope_size(m, 0) * bus_msg_count(m) + (m->frame ? m->frame->len : 0);
}

/* The envelope of m with frame[0..flen) as its frame (NULL: none) and seq
 * as its seq: a single message, or one message of a run read in place. */
static void encode(const struct bus_msg *m, const uint8_t *frame, uint32_t flen, int64_t seq, struct buf *out)
{
    size_t size = envelope_size(m, flen);
    buf_reserve(out, size);
    uint8_t *p = (uint8_t *)out->data + out->len;
    p[0] = BUS_REDIS_ENVELOPE_VERSION;
    p[1] = (uint8_t)m->kind;
    p[2] = (uint8_t)((frame ? F_FRAME : 0) | (m->aux ? F_AUX : 0) | (m->users ? F_USERS : 0));
    p[3] = 0;
    put64(p + 4, m->origin);
    put64(p + 12, m->except_conn);
    put64(p + 20, (uint64_t)m->conv);
    put64(p + 28, (uint64_t)m->user);
    put64(p + 36, (uint64_t)seq);
    put32(p + 44, flen);
    put32(p + 48, m->aux ? m->aux->len : 0);
    put32(p + 52, m->users ? m->users->n : 0);
    put32(p + 56, (uint32_t)m->npos);
    uint8_t *q = p + HDR;
    if (frame) {
        memcpy(q, frame, flen);
        q += flen;
    }
    if (m->aux) {
        memcpy(q, m->aux->data, m->aux->len);
        q += m->aux->len;
    }
    for (uint32_t i = 0; m->users && i < m->users->n; i++, q += 8)
        put64(q, (uint64_t)m->users->ids[i]);
    for (size_t i = 0; i < m->npos; i++, q += 16) {
        put64(q, (uint64_t)m->pos[i].user);
        put64(q + 8, (uint64_t)m->pos[i].last_read_seq);
    }
    out->len += size;
}

void bus_redis_encode(const struct bus_msg *m, struct buf *out)
{
    encode(m, m->frame ? m->frame->data : NULL, m->frame ? m->frame->len : 0, m->seq, out);
}

/* A complete, unmasked, final WebSocket frame of exactly len bytes: what
 * chat_deliver writes to sockets as it is. */
static int ws_frame_ok(const uint8_t *p, size_t len)
{
    if (len < 2 || !(p[0] & 0x80) || (p[0] & 0x70) || (p[1] & 0x80))
        return 0;
    uint64_t n = p[1] & 0x7f;
    size_t hl = 2;
    if (n == 126) {
        if (len < 4)
            return 0;
        n = (uint64_t)p[2] << 8 | p[3];
        hl = 4;
    } else if (n == 127) {
        if (len < 10)
            return 0;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
        hl = 10;
    }
    return n == len - hl;
}

static struct bus_msg *bad(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return NULL;
}

struct bus_msg *bus_redis_decode(const void *data, size_t len, const char **why)
{
    const uint8_t *p = data;
    if (!p || len < HDR)
        return bad(why, "shorter than the header");
    if (p[0] != BUS_REDIS_ENVELOPE_VERSION)
        return bad(why, "unknown version");
    unsigned kind = p[1], flags = p[2];
    if (kind > BUS_UPDATE)
        return bad(why, "unknown kind");
    if ((flags & ~(unsigned)(F_FRAME | F_AUX | F_USERS)) || p[3])
        return bad(why, "unknown flags");
    uint64_t origin = get64(p + 4);
    int64_t conv = (int64_t)get64(p + 20);
    uint32_t flen = get32(p + 44), alen = get32(p + 48), nusers = get32(p + 52), npos = get32(p + 56);
    /* at most 2^32 * (1 + 1 + 8 + 16) + 60: no overflow in 64 bits */
    if ((uint64_t)HDR + flen + alen + (uint64_t)nusers * 8 + (uint64_t)npos * 16 != (uint64_t)len)
        return bad(why, "lengths do not add up");
    if ((!(flags & F_FRAME) && flen) || (!(flags & F_AUX) && alen) || (!(flags & F_USERS) && nusers))
        return bad(why, "length of an absent part");
    if (!origin)
        return bad(why, "no origin");
    const uint8_t *frame = p + HDR, *aux = frame + flen, *users = aux + alen, *pos = users + (size_t)nusers * 8;

    /* what chat_deliver relies on, per kind */
    if (kind == BUS_ALIVE && (flags & (F_FRAME | F_AUX)))
        return bad(why, "a heartbeat carries no frame");
    if (kind != BUS_ALIVE && !(flags & F_FRAME))
        return bad(why, "no frame");
    if (kind != BUS_CONV_PUSH && kind != BUS_ALIVE && !ws_frame_ok(frame, flen))
        return bad(why, "frame is not one WebSocket frame");
    if (kind != BUS_CONV_PUSH && ((flags & F_AUX) || npos))
        return bad(why, "aux or positions outside a push");
    if ((kind == BUS_MSG || kind == BUS_UPDATE || kind == BUS_PRESENCE) && !(flags & F_USERS))
        return bad(why, "no users");
    if (kind == BUS_CONV_PUSH && (flags & F_USERS) && !(flags & F_AUX))
        return bad(why, "former members without their frame");
    if ((flags & F_AUX) && !ws_frame_ok(aux, alen))
        return bad(why, "aux is not one WebSocket frame");
    if (kind != BUS_PRESENCE && kind != BUS_ALIVE && conv <= 0)
        return bad(why, "no conversation");
    for (uint32_t i = 0; i < nusers; i++)
        if ((int64_t)get64(users + (size_t)i * 8) <= 0)
            return bad(why, "bad id in users");
    for (uint32_t i = 0; i < npos; i++)
        if ((int64_t)get64(pos + (size_t)i * 16) <= 0)
            return bad(why, "bad user in positions");

    struct bus_msg *m = bus_msg_new((enum bus_kind)kind, conv);
    m->origin = origin;
    m->except_conn = get64(p + 12);
    m->user = (int64_t)get64(p + 28);
    m->seq = (int64_t)get64(p + 36);
    if (flags & F_FRAME) {
        m->frame = frame_new(flen);
        memcpy(m->frame->data, frame, flen);
    }
    if (flags & F_AUX) {
        m->aux = frame_new(alen);
        memcpy(m->aux->data, aux, alen);
    }
    if (flags & F_USERS) {
        int64_t *ids = xmalloc(((size_t)nusers + 1) * sizeof *ids);
        for (uint32_t i = 0; i < nusers; i++)
            ids[i] = (int64_t)get64(users + (size_t)i * 8);
        m->users = idlist_new(ids, nusers);
        free(ids);
    }
    if (npos) {
        m->pos = xmalloc((size_t)npos * sizeof *m->pos);
        m->npos = npos;
        for (uint32_t i = 0; i < npos; i++) {
            m->pos[i].user = (int64_t)get64(pos + (size_t)i * 16);
            m->pos[i].last_read_seq = (int64_t)get64(pos + (size_t)i * 16 + 8);
        }
    }
    return m;
}

int bus_redis_shard_of(int64_t conv, int n)
{
    if (n <= 1)
        return 0;
    uint64_t z = (uint64_t)conv + 0x9E3779B97F4A7C15ULL; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (int)(z % (uint64_t)n);
}

/* ---- the bus ---- */

enum rc_state { RC_DOWN, RC_CONNECTING, RC_UP };

struct bus_redis;
struct shard;

/* One connection to one Redis server, with its reconnection state. */
struct rconn {
    struct shard *sh;
    int sub;                  /* the subscribed connection (else the publishing one) */
    redisAsyncContext *ac;    /* NULL while down; freed by hiredis after a loss */
    enum rc_state state;
    uv_timer_t retry;
    unsigned backoff_ms;      /* the last delay (0: none yet) */
    int ever_up;
    int silent;               /* health ticks since the last sign of life (counted in ticks, not
                                 time: a bus thread that was itself held up blames nobody) */
    size_t pending;           /* commands waiting for their reply (publishing connection) */
    const char *kill_why;     /* we closed it: why */
    uv_getaddrinfo_t gai;     /* resolving the host name (resolving = 1) */
    int resolving;
    unsigned attempts;        /* which of the host's addresses to try next */
};

struct shard {
    struct bus_redis *br;
    int index;
    char host[256];
    int port, db;
    int numeric;              /* host is an IP address: nothing to resolve */
    char user[128], pass[256]; /* pass[0] == 0: no AUTH */
    char label[300];          /* host:port for the logs */
    char prefix[24];          /* channel prefix: "parley:" (db 0) or "parley:<db>:" */
    char bcast[CHAN_MAX], health[CHAN_MAX];
    size_t bcast_len, health_len;
    struct rconn pub, sub;
    struct idmap convs;       /* watched conversations of this shard: conv -> (void *)1 */
    size_t resub_left;        /* "subscribe" confirmations the connect-time batch still owes */
    size_t confirmed;         /* channels Redis confirmed on sub */
    size_t backlog;           /* PUBLISH bytes not answered yet */
    int up;                   /* both connections up, every channel subscribed */
    int down_signalled;       /* link(0) was called: link(1) owed */
    int refused_logged;       /* a refused AUTH or PUBLISH: logged once until the shard is up */
    uint64_t down_since_ms, dropped, dropped_at_down;
    uint64_t lost;            /* publications lost with a connection, before the outage was signalled */
};

enum op_kind { OP_PUBLISH, OP_WATCH, OP_UNWATCH };

struct op {
    struct op *next;
    enum op_kind kind;
    int64_t conv;
    struct bus_msg *msg;      /* OP_PUBLISH: one reference */
};

struct bus_redis {
    struct bus base;          /* first */
    struct bus *local;        /* delivery to this node's workers (bus_local), owned */
    struct bus_redis_hooks hooks;
    int nshards;
    struct shard *shards;

    /* shared with the calling threads, under mu */
    uv_mutex_t mu;
    struct op *head, *tail;
    struct idmap watch;       /* conv -> number of watching workers, as a pointer-sized int */
    int stopping;

    /* the bus thread's */
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_check_t flush;         /* end of each loop iteration: one wake-up per worker */
    uv_timer_t health;
    struct postbox pb;        /* received publications, per worker */
    struct buf cmd;           /* the command being built */
    int stopped;
    uint64_t malformed_logged_ms;

    atomic_uint_fast64_t published, dropped, received, malformed, reconnects, channels;
    atomic_int shards_up;
};

static const struct bus_ops redis_ops;

static uint64_t now_ms(struct bus_redis *br)
{
    return uv_now(&br->loop);
}

static void count(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void drop_publication(struct shard *sh)
{
    sh->dropped++;
    count(&sh->br->dropped, 1);
}

/* ---- commands, in RESP, built in br->cmd ---- */

static void resp_begin(struct buf *b, size_t nargs)
{
    char t[32];
    b->len = 0;
    buf_append(b, t, (size_t)snprintf(t, sizeof t, "*%zu\r\n", nargs));
}

static void resp_arg(struct buf *b, const void *p, size_t n)
{
    char t[32];
    buf_append(b, t, (size_t)snprintf(t, sizeof t, "$%zu\r\n", n));
    buf_append(b, p, n);
    buf_append(b, "\r\n", 2);
}

/* A big command does not keep its buffer. */
static void cmd_done(struct bus_redis *br)
{
    if (br->cmd.cap > (1u << 20))
        buf_dispose(&br->cmd);
    br->cmd.len = 0;
}

static size_t conv_channel(const struct shard *sh, int64_t conv, char *out)
{
    return (size_t)snprintf(out, CHAN_MAX, "%sc:%lld", sh->prefix, (long long)conv);
}

/* ---- shard state and the link hook ---- */

static void shard_down(struct shard *sh, const struct rconn *rc, const char *why)
{
    struct bus_redis *br = sh->br;
    if (sh->up) {
        sh->up = 0;
        atomic_fetch_sub(&br->shards_up, 1);
    }
    uint64_t lost = sh->lost;
    sh->lost = 0;
    if (sh->down_signalled)
        return; /* one log line and one hook call per outage */
    sh->down_signalled = 1;
    sh->down_since_ms = now_ms(br);
    sh->dropped_at_down = sh->dropped - lost;
    log_warn("bus_redis: shard %d (%s): %s connection %s: %s; reconnecting", sh->index, sh->label,
             rc->sub ? "subscriber" : "publisher", rc->ever_up ? "lost" : "failed", why);
    if (br->hooks.link)
        br->hooks.link(br->hooks.ctx, sh->index, 0);
}

static void shard_check_up(struct shard *sh)
{
    struct bus_redis *br = sh->br;
    if (sh->up || sh->pub.state != RC_UP || sh->sub.state != RC_UP || sh->resub_left)
        return;
    sh->up = 1;
    atomic_fetch_add(&br->shards_up, 1);
    sh->pub.backoff_ms = sh->sub.backoff_ms = 0; /* stable again: the next loss starts at the bottom */
    sh->refused_logged = 0;
    sh->sub.silent = 0;
    if (!sh->down_signalled)
        return;
    sh->down_signalled = 0;
    log_info("bus_redis: shard %d (%s): back after %llu ms, %zu channels subscribed again, %llu publications "
             "dropped meanwhile",
             sh->index, sh->label, (unsigned long long)(now_ms(br) - sh->down_since_ms), sh->confirmed,
             (unsigned long long)(sh->dropped - sh->dropped_at_down));
    if (br->hooks.link)
        br->hooks.link(br->hooks.ctx, sh->index, 1);
}

/* ---- hiredis on the bus loop ----
 * Our own version of <hiredis/adapters/libuv.h>: 0.14's returns on a poll
 * error, and libuv reports POLLERR (a refused connect, a reset connection)
 * as an error and stops the handle, so the context would hang until a
 * timeout. Here hiredis handles the event anyway and finds the socket error
 * itself (SO_ERROR while connecting, a failed read after). */

struct poller {
    redisAsyncContext *ac;    /* NULL once hiredis let go of it */
    uv_poll_t h;
    int events;
};

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct poller *p = h->data;
    if (status < 0) { /* libuv stopped the handle: let hiredis see why (and ask again) */
        p->events = 0;
        events = p->ac && !(p->ac->c.flags & REDIS_CONNECTED) ? UV_WRITABLE : UV_READABLE | UV_WRITABLE;
    }
    if (p->ac && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void poll_set(struct poller *p, int events)
{
    if (events == p->events)
        return; /* hiredis asks for writes at every command */
    p->events = events;
    if (events)
        uv_poll_start(&p->h, events, on_poll);
    else
        uv_poll_stop(&p->h);
}

static void ev_add_read(void *d) { struct poller *p = d; poll_set(p, p->events | UV_READABLE); }
static void ev_del_read(void *d) { struct poller *p = d; poll_set(p, p->events & ~UV_READABLE); }
static void ev_add_write(void *d) { struct poller *p = d; poll_set(p, p->events | UV_WRITABLE); }
static void ev_del_write(void *d) { struct poller *p = d; poll_set(p, p->events & ~UV_WRITABLE); }

static void on_poller_closed(uv_handle_t *h)
{
    free(h->data);
}

static void ev_cleanup(void *d)
{
    struct poller *p = d;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->h, on_poller_closed);
}

static int attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct poller *p = xcalloc(1, sizeof *p);
    if (uv_poll_init(loop, &p->h, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->ac = ac;
    p->h.data = p;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    return 0;
}

/* ---- connections ---- */

static void rconn_connect(struct rconn *rc);

static void on_retry(uv_timer_t *t)
{
    rconn_connect(t->data);
}

/* The connection is gone (hiredis freed the context, or never made one):
 * count, tell, and try again later. */
static void rconn_lost(struct rconn *rc, const char *why)
{
    struct shard *sh = rc->sh;
    struct bus_redis *br = sh->br;
    rc->ac = NULL;
    rc->state = RC_DOWN;
    rc->pending = 0;
    rc->kill_why = NULL;
    if (rc->sub) {
        atomic_fetch_sub(&br->channels, sh->confirmed);
        sh->confirmed = 0;
        sh->resub_left = 0;
    }
    if (br->stopped)
        return;
    shard_down(sh, rc, why);
    unsigned d = rc->backoff_ms ? rc->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (d > BACKOFF_MAX_MS)
        d = BACKOFF_MAX_MS;
    rc->backoff_ms = d;
    uv_timer_start(&rc->retry, on_retry, d / 2 + randombytes_uniform(d / 2 + 1), 0); /* equal jitter */
}

/* We close it (a stall, a refused AUTH, the end). Safe inside a hiredis
 * callback: the context is then freed when the callback returns. */
static void rconn_kill(struct rconn *rc, const char *why)
{
    redisAsyncContext *ac = rc->ac;
    if (!ac)
        return;
    rc->kill_why = why;
    int connected = (ac->c.flags & REDIS_CONNECTED) != 0, in_callback = (ac->c.flags & REDIS_IN_CALLBACK) != 0;
    redisAsyncFree(ac); /* a connected context calls on_disconnect, now or when the callback returns */
    if (!connected && !in_callback)
        rconn_lost(rc, why);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rconn *rc = ac->data;
    char why[320];
    if (rc->kill_why)
        snprintf(why, sizeof why, "%s", rc->kill_why);
    else if (status != REDIS_OK && ac->c.errstr[0])
        snprintf(why, sizeof why, "%s", ac->c.errstr);
    else
        snprintf(why, sizeof why, "closed by the server");
    rconn_lost(rc, why);
}

static void subscribe_all(struct shard *sh);

static void on_auth(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    struct rconn *rc = priv;
    (void)ac;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        if (!rc->sh->refused_logged++)
            log_error("bus_redis: shard %d (%s): AUTH refused: %s", rc->sh->index, rc->sh->label, reply->str);
        rconn_kill(rc, "AUTH refused");
    }
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    struct rconn *rc = cac->data;
    struct shard *sh = rc->sh;
    struct bus_redis *br = sh->br;
    if (status != REDIS_OK) { /* hiredis frees the context after this */
        char why[320];
        snprintf(why, sizeof why, "%s", cac->c.errstr[0] ? cac->c.errstr : "cannot connect");
        rconn_lost(rc, why);
        return;
    }
    redisAsyncContext *ac = rc->ac;
    if (rc->ever_up)
        count(&br->reconnects, 1);
    rc->ever_up = 1;
    rc->state = RC_UP;
    rc->silent = 0;
    if (sh->pass[0]) {
        if (sh->user[0])
            redisAsyncCommand(ac, on_auth, rc, "AUTH %s %s", sh->user, sh->pass);
        else
            redisAsyncCommand(ac, on_auth, rc, "AUTH %s", sh->pass);
    }
    if (rc->sub)
        subscribe_all(sh);
    shard_check_up(sh);
}

/* Connects to one address (numeric: hiredis resolves nothing). */
static void connect_to(struct rconn *rc, const char *ip)
{
    struct shard *sh = rc->sh;
    struct bus_redis *br = sh->br;
    redisAsyncContext *ac = redisAsyncConnect(ip, sh->port);
    if (!ac) {
        rconn_lost(rc, "cannot allocate a connection");
        return;
    }
    if (ac->err) {
        char why[320];
        snprintf(why, sizeof why, "%s", ac->errstr ? ac->errstr : ac->c.errstr);
        redisAsyncFree(ac);
        rconn_lost(rc, why);
        return;
    }
    ac->data = rc;
    if (attach(ac, &br->loop) < 0) {
        redisAsyncFree(ac);
        rconn_lost(rc, "cannot poll the socket");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisEnableKeepAlive(&ac->c);
    rc->ac = ac;
    rc->state = RC_CONNECTING;
    rc->silent = 0;
    rc->pending = 0;
}

/* A host name is resolved on libuv's thread pool, never on the bus thread
 * (a slow DNS would stall every shard); each attempt takes the next address. */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct rconn *rc = req->data;
    rc->resolving = 0;
    if (rc->sh->br->stopped) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0) {
        char why[320];
        snprintf(why, sizeof why, "cannot resolve %s: %s", rc->sh->host, uv_strerror(status));
        uv_freeaddrinfo(res);
        rconn_lost(rc, why);
        return;
    }
    unsigned n = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        n++;
    if (!n) {
        uv_freeaddrinfo(res);
        rconn_lost(rc, "the host name has no address");
        return;
    }
    struct addrinfo *a = res;
    for (unsigned i = rc->attempts++ % n; i > 0; i--)
        a = a->ai_next;
    char ip[INET6_ADDRSTRLEN] = "";
    if (a->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)a->ai_addr, ip, sizeof ip);
    else
        uv_ip4_name((const struct sockaddr_in *)a->ai_addr, ip, sizeof ip);
    uv_freeaddrinfo(res);
    connect_to(rc, ip);
}

static void rconn_connect(struct rconn *rc)
{
    struct shard *sh = rc->sh;
    struct bus_redis *br = sh->br;
    if (br->stopped || rc->ac || rc->resolving)
        return;
    if (sh->numeric) {
        connect_to(rc, sh->host);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    rc->gai.data = rc;
    int err = uv_getaddrinfo(&br->loop, &rc->gai, on_resolved, sh->host, NULL, &hints);
    if (err < 0) {
        char why[320];
        snprintf(why, sizeof why, "cannot resolve %s: %s", sh->host, uv_strerror(err));
        rconn_lost(rc, why);
        return;
    }
    rc->resolving = 1;
    rc->state = RC_CONNECTING;
    rc->silent = 0;
}

/* A command the publishing connection sent / answered. */
static void rconn_sent(struct rconn *rc)
{
    if (rc->pending++ == 0)
        rc->silent = 0; /* the silence counts from the first unanswered one */
}

static void rconn_answered(struct rconn *rc)
{
    if (rc->pending)
        rc->pending--;
    rc->silent = 0;
}

/* ---- publishing ---- */

static void on_published(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    struct rconn *rc = ac->data;
    struct shard *sh = rc->sh;
    sh->backlog -= (size_t)(uintptr_t)priv;
    if (!reply) { /* the connection went away first */
        drop_publication(sh);
        sh->lost++;
        return;
    }
    rconn_answered(rc);
    if (reply->type == REDIS_REPLY_ERROR) {
        drop_publication(sh);
        if (!sh->refused_logged++)
            log_warn("bus_redis: shard %d (%s): PUBLISH refused: %s", sh->index, sh->label, reply->str);
        return;
    }
    count(&sh->br->published, 1);
}

static void on_ping(redisAsyncContext *ac, void *r, void *priv)
{
    (void)priv;
    if (r)
        rconn_answered(ac->data);
}

static void send_one(struct bus_redis *br, const struct bus_msg *m, const uint8_t *frame, uint32_t flen,
                     int64_t seq)
{
    /* conversation-scoped kinds on the conversation's channel; the others on
     * the broadcast channel of the conversation's (presence: the user's)
     * shard, which every node subscribes to on every shard */
    int64_t key = m->kind == BUS_PRESENCE ? m->user : m->conv;
    struct shard *sh = &br->shards[bus_redis_shard_of(key, br->nshards)];
    if (!frame || sh->pub.state != RC_UP || sh->backlog > BACKLOG_MAX) {
        drop_publication(sh);
        return;
    }
    char chan[CHAN_MAX];
    size_t clen;
    if (m->kind == BUS_MSG || m->kind == BUS_UPDATE || m->kind == BUS_CONV_EVENT) {
        clen = conv_channel(sh, m->conv, chan);
    } else {
        memcpy(chan, sh->bcast, sh->bcast_len);
        clen = sh->bcast_len;
    }
    struct buf *b = &br->cmd;
    size_t size = envelope_size(m, flen);
    resp_begin(b, 3);
    resp_arg(b, "PUBLISH", 7);
    resp_arg(b, chan, clen);
    char t[32];
    buf_append(b, t, (size_t)snprintf(t, sizeof t, "$%zu\r\n", size));
    encode(m, frame, flen, seq, b);
    buf_append(b, "\r\n", 2);
    size_t total = b->len;
    if (redisAsyncFormattedCommand(sh->pub.ac, on_published, (void *)(uintptr_t)total, b->data, b->len) !=
        REDIS_OK) {
        drop_publication(sh);
    } else {
        rconn_sent(&sh->pub);
        sh->backlog += total;
    }
    cmd_done(br);
}

/* A run (bus.h) goes as its messages, each in an envelope of its own (its
 * slice of the run's frame, encoded in place): other nodes, and older ones,
 * read one message per envelope. */
static void send_publication(struct bus_redis *br, const struct bus_msg *m)
{
    if (!m->nparts || !m->frame) {
        send_one(br, m, m->frame ? m->frame->data : NULL, m->frame ? m->frame->len : 0, m->seq);
        return;
    }
    uint32_t start = 0;
    for (uint32_t i = 0; i < m->nparts; i++) {
        send_one(br, m, m->frame->data + start, m->parts[i].end - start, m->seq + (int64_t)i);
        start = m->parts[i].end;
    }
}

/* ---- subscriptions ---- */

static void receive(struct shard *sh, const char *data, size_t len);

/* Every reply of a subscribed connection: messages and confirmations. */
static void on_sub(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    struct shard *sh = priv;
    (void)ac;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return; /* NULL: the connection is going away */
    struct bus_redis *br = sh->br;
    sh->sub.silent = 0;
    const char *type = reply->element[0]->str;
    if (!strcasecmp(type, "message")) {
        redisReply *chan = reply->element[1], *payload = reply->element[2];
        if (chan->type == REDIS_REPLY_STRING && chan->len == sh->health_len &&
            !memcmp(chan->str, sh->health, sh->health_len))
            return; /* our own ping: the connection is alive */
        if (payload->type == REDIS_REPLY_STRING)
            receive(sh, payload->str, payload->len);
    } else if (!strcasecmp(type, "subscribe")) {
        sh->confirmed++;
        count(&br->channels, 1);
        if (sh->resub_left && --sh->resub_left == 0)
            shard_check_up(sh);
    } else if (!strcasecmp(type, "unsubscribe")) {
        if (sh->confirmed) {
            sh->confirmed--;
            atomic_fetch_sub(&br->channels, 1);
        }
    }
}

/* At connect: the broadcast channel, this node's ping channel and every
 * watched conversation of the shard; the shard is up once Redis confirmed
 * them all (replies come in order, so these are the first confirmations). */
static void subscribe_all(struct shard *sh)
{
    struct bus_redis *br = sh->br;
    struct buf *b = &br->cmd;
    size_t total = 2 + sh->convs.len, done = 0;
    sh->resub_left = total;
    struct idmap_slot *s = sh->convs.v;
    while (done < total) {
        size_t n = total - done < SUB_CHUNK ? total - done : SUB_CHUNK;
        resp_begin(b, n + 1);
        resp_arg(b, "SUBSCRIBE", 9);
        for (size_t i = 0; i < n; i++, done++) {
            if (done == 0) {
                resp_arg(b, sh->bcast, sh->bcast_len);
            } else if (done == 1) {
                resp_arg(b, sh->health, sh->health_len);
            } else {
                while (!s->key)
                    s++;
                char chan[CHAN_MAX];
                resp_arg(b, chan, conv_channel(sh, s->key, chan));
                s++;
            }
        }
        redisAsyncFormattedCommand(sh->sub.ac, on_sub, sh, b->data, b->len);
    }
    cmd_done(br);
}

static void apply_watch(struct bus_redis *br, int64_t conv, int on)
{
    struct shard *sh = &br->shards[bus_redis_shard_of(conv, br->nshards)];
    if (on) {
        if (idmap_get(&sh->convs, conv))
            return;
        idmap_put(&sh->convs, conv, (void *)1);
    } else if (!idmap_del(&sh->convs, conv)) {
        return;
    }
    if (sh->sub.state != RC_UP)
        return; /* the subscription at connect takes the set as it is then */
    char chan[CHAN_MAX];
    struct buf *b = &br->cmd;
    resp_begin(b, 2);
    if (on)
        resp_arg(b, "SUBSCRIBE", 9);
    else
        resp_arg(b, "UNSUBSCRIBE", 11);
    resp_arg(b, chan, conv_channel(sh, conv, chan));
    redisAsyncFormattedCommand(sh->sub.ac, on ? on_sub : NULL, sh, b->data, b->len);
    cmd_done(br);
}

/* ---- receiving ---- */

static void receive(struct shard *sh, const char *data, size_t len)
{
    struct bus_redis *br = sh->br;
    const char *why = "";
    struct bus_msg *m = bus_redis_decode(data, len, &why);
    if (!m) {
        count(&br->malformed, 1);
        uint64_t now = now_ms(br);
        if (!br->malformed_logged_ms || now - br->malformed_logged_ms >= 1000) { /* at most one a second */
            br->malformed_logged_ms = now;
            log_warn("bus_redis: shard %d (%s): dropped a malformed envelope (%zu bytes): %s (%llu so far)",
                     sh->index, sh->label, len, why, (unsigned long long)atomic_load(&br->malformed));
        }
        return;
    }
    if (m->origin != br->base.node) { /* our own were delivered when published */
        count(&br->received, 1);
        br->local->ops->publish(br->local, m, &br->pb); /* flushed at the end of this loop iteration */
    }
    bus_msg_unref(m);
}

static void on_flush(uv_check_t *h)
{
    struct bus_redis *br = h->data;
    postbox_flush(&br->pb);
}

/* ---- health: pings through Redis, stalls and connect timeouts ---- */

static void on_health(uv_timer_t *t)
{
    struct bus_redis *br = t->data;
    for (int i = 0; i < br->nshards; i++) {
        struct shard *sh = &br->shards[i];
        struct rconn *rcs[2] = {&sh->pub, &sh->sub};
        for (int k = 0; k < 2; k++)
            if (rcs[k]->state == RC_CONNECTING && ++rcs[k]->silent > CONNECT_TICKS)
                rconn_kill(rcs[k], "connect timed out");
        if (sh->pub.state == RC_UP) {
            if (sh->pub.pending && ++sh->pub.silent > DEAD_TICKS) {
                rconn_kill(&sh->pub, "no answer for 10 s");
            } else {
                struct buf *b = &br->cmd;
                resp_begin(b, 3);
                resp_arg(b, "PUBLISH", 7);
                resp_arg(b, sh->health, sh->health_len);
                resp_arg(b, "", 0);
                if (redisAsyncFormattedCommand(sh->pub.ac, on_ping, NULL, b->data, b->len) == REDIS_OK)
                    rconn_sent(&sh->pub);
                cmd_done(br);
            }
        }
        /* up: our pings reach it every tick; subscribing: the confirmations are owed */
        if (sh->sub.state == RC_UP && (sh->up || sh->resub_left) && ++sh->sub.silent > DEAD_TICKS)
            rconn_kill(&sh->sub, "nothing received for 10 s");
    }
}

/* ---- the bus thread: its queue, start and stop ---- */

static void drop_postbox(struct postbox *pb)
{
    for (int i = 0; i < pb->n; i++) {
        for (struct event *ev = pb->head[i], *next; ev; ev = next) {
            next = ev->next;
            ev->drop(ev);
        }
        pb->head[i] = pb->tail[i] = NULL;
    }
}

static void free_ops(struct bus_redis *br, struct op *op)
{
    while (op) {
        struct op *next = op->next;
        if (op->msg) {
            bus_msg_unref(op->msg);
            count(&br->dropped, 1);
        }
        free(op);
        op = next;
    }
}

static void stop(struct bus_redis *br)
{
    br->stopped = 1;
    for (int i = 0; i < br->nshards; i++) {
        struct shard *sh = &br->shards[i];
        struct rconn *rcs[2] = {&sh->pub, &sh->sub};
        for (int k = 0; k < 2; k++) {
            if (rcs[k]->resolving)
                uv_cancel((uv_req_t *)&rcs[k]->gai); /* or it finishes: the loop waits for it */
            if (rcs[k]->ac)
                redisAsyncFree(rcs[k]->ac); /* pending callbacks run with NULL; the poll handle closes */
            rcs[k]->ac = NULL;
            uv_close((uv_handle_t *)&rcs[k]->retry, NULL);
        }
    }
    uv_close((uv_handle_t *)&br->health, NULL);
    uv_close((uv_handle_t *)&br->flush, NULL);
    uv_close((uv_handle_t *)&br->wake, NULL);
    drop_postbox(&br->pb); /* the workers may be stopping: nothing more reaches them */
}

/* Takes the queue; a long one in slices (WAKE_OPS, WAKE_BYTES), the rest put
 * back in front and the thread woken again, so the loop writes to the
 * sockets and reads arrivals between slices. */
static void on_wake(uv_async_t *h)
{
    struct bus_redis *br = h->data;
    uv_mutex_lock(&br->mu);
    struct op *op = br->head, *last = br->tail;
    br->head = br->tail = NULL;
    int stopping = br->stopping;
    uv_mutex_unlock(&br->mu);
    if (stopping) {
        free_ops(br, op);
        stop(br);
        return;
    }
    size_t ops = 0, bytes = 0;
    while (op && ops < WAKE_OPS && bytes < WAKE_BYTES) {
        struct op *next = op->next;
        if (op->kind == OP_PUBLISH) {
            bytes += bus_redis_envelope_size(op->msg);
            send_publication(br, op->msg);
            bus_msg_unref(op->msg);
        } else {
            apply_watch(br, op->conv, op->kind == OP_WATCH);
        }
        free(op);
        op = next;
        ops++;
    }
    if (op) {
        uv_mutex_lock(&br->mu);
        last->next = br->head;
        if (!br->head)
            br->tail = last;
        br->head = op;
        uv_mutex_unlock(&br->mu);
        uv_async_send(&br->wake);
    }
}

static void bus_main(void *arg)
{
    struct bus_redis *br = arg;
    for (int i = 0; i < br->nshards; i++) {
        rconn_connect(&br->shards[i].pub);
        rconn_connect(&br->shards[i].sub);
    }
    uv_run(&br->loop, UV_RUN_DEFAULT);
}

static void enqueue(struct bus_redis *br, struct op *op)
{
    op->next = NULL;
    if (br->tail)
        br->tail->next = op;
    else
        br->head = op;
    br->tail = op;
}

/* ---- bus_ops: any thread ---- */

static void redis_publish(struct bus *b, struct bus_msg *m, struct postbox *pb)
{
    struct bus_redis *br = (struct bus_redis *)b;
    br->local->ops->publish(br->local, m, pb); /* this node: at once, as bus_local */
    struct op *op = xmalloc(sizeof *op);
    op->kind = OP_PUBLISH;
    op->conv = m->conv;
    op->msg = bus_msg_ref(m);
    uv_mutex_lock(&br->mu);
    int stopping = br->stopping;
    if (!stopping)
        enqueue(br, op);
    uv_mutex_unlock(&br->mu);
    if (stopping) {
        op->next = NULL;
        free_ops(br, op);
        return;
    }
    uv_async_send(&br->wake);
}

/* Under mu: the op for a 0->1 or 1->0 change, queued in the order the
 * counts changed. */
static void watch_change(struct bus_redis *br, int64_t conv, int on)
{
    int wake = 0;
    struct op *op = xmalloc(sizeof *op);
    op->kind = on ? OP_WATCH : OP_UNWATCH;
    op->conv = conv;
    op->msg = NULL;
    uv_mutex_lock(&br->mu);
    intptr_t n = (intptr_t)idmap_get(&br->watch, conv);
    if (on) {
        idmap_put(&br->watch, conv, (void *)(n + 1));
        wake = n == 0;
    } else if (n == 1) {
        idmap_del(&br->watch, conv);
        wake = 1;
    } else if (n > 1) {
        idmap_put(&br->watch, conv, (void *)(n - 1));
    }
    wake = wake && !br->stopping;
    if (wake)
        enqueue(br, op);
    uv_mutex_unlock(&br->mu);
    if (wake)
        uv_async_send(&br->wake);
    else
        free(op);
}

static void redis_watch(struct bus *b, int worker, int64_t conv)
{
    (void)worker; /* counted per node */
    if (conv > 0)
        watch_change((struct bus_redis *)b, conv, 1);
}

static void redis_unwatch(struct bus *b, int worker, int64_t conv)
{
    (void)worker;
    if (conv > 0)
        watch_change((struct bus_redis *)b, conv, 0);
}

static int redis_watching(struct bus *b, int64_t conv)
{
    struct bus_redis *br = (struct bus_redis *)b;
    if (conv <= 0)
        return 0;
    uv_mutex_lock(&br->mu);
    int n = (int)(intptr_t)idmap_get(&br->watch, conv);
    uv_mutex_unlock(&br->mu);
    return n;
}

static void redis_free(struct bus *b)
{
    struct bus_redis *br = (struct bus_redis *)b;
    uv_mutex_lock(&br->mu);
    br->stopping = 1;
    uv_mutex_unlock(&br->mu);
    uv_async_send(&br->wake);
    uv_thread_join(&br->thread);
    uv_loop_close(&br->loop);
    free_ops(br, br->head); /* nothing should be left: the thread took the queue at the stop */
    for (int i = 0; i < br->nshards; i++)
        idmap_dispose(&br->shards[i].convs);
    free(br->shards);
    idmap_dispose(&br->watch);
    postbox_dispose(&br->pb);
    buf_dispose(&br->cmd);
    bus_free(br->local);
    uv_mutex_destroy(&br->mu);
    free(br);
}

static const struct bus_ops redis_ops = {
    .name = "redis",
    .publish = redis_publish,
    .watch = redis_watch,
    .unwatch = redis_unwatch,
    .watching = redis_watching,
    .ready = bus_redis_ready,
    .free = redis_free,
};

int bus_redis_ready(struct bus *b)
{
    if (!b || b->ops != &redis_ops)
        return 0;
    struct bus_redis *br = (struct bus_redis *)b;
    return atomic_load(&br->shards_up) == br->nshards;
}

void bus_redis_stats(struct bus *b, struct bus_redis_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!b || b->ops != &redis_ops)
        return;
    struct bus_redis *br = (struct bus_redis *)b;
    out->published = atomic_load(&br->published);
    out->dropped = atomic_load(&br->dropped);
    out->received = atomic_load(&br->received);
    out->malformed = atomic_load(&br->malformed);
    out->reconnects = atomic_load(&br->reconnects);
    out->channels = atomic_load(&br->channels);
    out->shards = br->nshards;
    out->shards_up = atomic_load(&br->shards_up);
}

/* ---- creation ---- */

static int parse_int(const char *s, size_t n, long min, long max, long *out)
{
    if (!n || n > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* redis://[[user]:password@]host[:port][/db]; host may be [an:ipv6::address]. */
static int parse_url(const char *u, size_t n, struct shard *sh, char *err, size_t errlen)
{
    const char *end = u + n, *p = u + 8;
    if (n < 9 || strncmp(u, "redis://", 8) != 0)
        goto bad;
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *hp_end = slash ? slash : end;
    const char *at = NULL;
    for (const char *q = p; q < hp_end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t ulen = colon ? (size_t)(colon - p) : 0, plen = (size_t)(at - pw);
        if (ulen >= sizeof sh->user || plen >= sizeof sh->pass || !plen)
            goto bad;
        memcpy(sh->user, p, ulen);
        memcpy(sh->pass, pw, plen);
        p = at + 1;
    }
    const char *host = p, *host_end, *port = NULL;
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(hp_end - host));
        if (!host_end)
            goto bad;
        if (host_end + 1 < hp_end) {
            if (host_end[1] != ':')
                goto bad;
            port = host_end + 2;
        }
    } else {
        host_end = memchr(p, ':', (size_t)(hp_end - p));
        if (host_end)
            port = host_end + 1;
        else
            host_end = hp_end;
    }
    if (host_end == host || (size_t)(host_end - host) >= sizeof sh->host)
        goto bad;
    memcpy(sh->host, host, (size_t)(host_end - host));
    long v = 6379;
    if (port && parse_int(port, (size_t)(hp_end - port), 1, 65535, &v) < 0)
        goto bad;
    sh->port = (int)v;
    v = 0;
    if (slash && slash + 1 < end && parse_int(slash + 1, (size_t)(end - slash - 1), 0, 1000000, &v) < 0)
        goto bad;
    sh->db = (int)v;
    struct in6_addr any;
    sh->numeric = inet_pton(AF_INET, sh->host, &any) == 1 || inet_pton(AF_INET6, sh->host, &any) == 1;
    snprintf(sh->label, sizeof sh->label, "%s%s%s:%d", strchr(sh->host, ':') ? "[" : "", sh->host,
             strchr(sh->host, ':') ? "]" : "", sh->port);
    return 0;
bad:
    snprintf(err, errlen, "PARLEY_REDIS_URL: expected redis://[[user]:password@]host[:port][/db], got '%.*s'",
             (int)(n > 200 ? 200 : n), u);
    return -1;
}

static void rconn_init(struct bus_redis *br, struct shard *sh, struct rconn *rc, int sub)
{
    rc->sh = sh;
    rc->sub = sub;
    uv_timer_init(&br->loop, &rc->retry);
    rc->retry.data = rc;
}

struct bus *bus_redis_new(const char *urls, struct worker **workers, int nworkers, bus_deliver_fn deliver,
                          const struct bus_redis_hooks *hooks, char *err, size_t errlen)
{
    if (!urls || !*urls) {
        snprintf(err, errlen, "PARLEY_REDIS_URL: empty");
        return NULL;
    }
    int n = 1;
    for (const char *p = urls; *p; p++)
        n += *p == ',';
    if (n > BUS_REDIS_MAX_SHARDS) {
        snprintf(err, errlen, "PARLEY_REDIS_URL: %d servers, at most %d", n, BUS_REDIS_MAX_SHARDS);
        return NULL;
    }
    struct bus_redis *br = xcalloc(1, sizeof *br);
    br->nshards = n;
    br->shards = xcalloc((size_t)n, sizeof *br->shards);
    const char *p = urls;
    for (int i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (parse_url(p, len, &br->shards[i], err, errlen) < 0) {
            free(br->shards);
            free(br);
            return NULL;
        }
        p += len + (comma ? 1 : 0);
    }

    br->base.ops = &redis_ops;
    br->local = bus_local_new(workers, nworkers, deliver);
    do
        randombytes_buf(&br->base.node, sizeof br->base.node);
    while (!br->base.node);
    br->local->node = br->base.node;
    if (hooks)
        br->hooks = *hooks;
    uv_mutex_init(&br->mu);
    atomic_init(&br->published, 0);
    atomic_init(&br->dropped, 0);
    atomic_init(&br->received, 0);
    atomic_init(&br->malformed, 0);
    atomic_init(&br->reconnects, 0);
    atomic_init(&br->channels, 0);
    atomic_init(&br->shards_up, 0);
    postbox_init(&br->pb, workers, nworkers);
    buf_init(&br->cmd);

    uv_loop_init(&br->loop);
    uv_async_init(&br->loop, &br->wake, on_wake);
    br->wake.data = br;
    uv_check_init(&br->loop, &br->flush);
    br->flush.data = br;
    uv_check_start(&br->flush, on_flush);
    uv_timer_init(&br->loop, &br->health);
    br->health.data = br;
    uv_timer_start(&br->health, on_health, HEALTH_MS, HEALTH_MS);
    for (int i = 0; i < n; i++) {
        struct shard *sh = &br->shards[i];
        sh->br = br;
        sh->index = i;
        if (sh->db)
            snprintf(sh->prefix, sizeof sh->prefix, "parley:%d:", sh->db);
        else
            snprintf(sh->prefix, sizeof sh->prefix, "parley:");
        sh->bcast_len = (size_t)snprintf(sh->bcast, sizeof sh->bcast, "%sb", sh->prefix);
        sh->health_len = (size_t)snprintf(sh->health, sizeof sh->health, "%sh:%016llx", sh->prefix,
                                          (unsigned long long)br->base.node);
        rconn_init(br, sh, &sh->pub, 0);
        rconn_init(br, sh, &sh->sub, 1);
    }
    if (uv_thread_create(&br->thread, bus_main, br) != 0) {
        snprintf(err, errlen, "cannot start the Redis bus thread");
        br->stopping = 1;
        stop(br);
        uv_run(&br->loop, UV_RUN_DEFAULT);
        uv_loop_close(&br->loop);
        for (int i = 0; i < n; i++)
            idmap_dispose(&br->shards[i].convs);
        free(br->shards);
        postbox_dispose(&br->pb);
        bus_free(br->local);
        uv_mutex_destroy(&br->mu);
        free(br);
        return NULL;
    }
    return &br->base;
}
