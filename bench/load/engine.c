/* engine.c: thousands of WebSocket clients in one process. Each thread owns a slice of the
 * clients (client i goes to thread i % nthreads) and runs its own level-triggered epoll loop:
 * non-blocking connect from a loopback source address of its own (127.0.0.2, .3, ...; bound
 * before connect with IP_BIND_ADDRESS_NO_PORT, so every source address has the whole
 * ephemeral port range to itself), the HTTP upgrade with the bearer token, RFC 6455 client
 * framing (every frame masked with a fresh key), sends driven by a window or by a rate, and
 * the checks on every msg frame: right conversation, seq exactly last + 1.
 *
 * Threads share nothing but the phase (set by main.c), the conversations' ack tallies
 * (atomics) and the send budget; their counters and histograms have one writer each. */
#include "load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RLX memory_order_relaxed
#define CNT_ADD(t, f, v) atomic_store_explicit(&(t)->c.f, atomic_load_explicit(&(t)->c.f, RLX) + (v), RLX)
#define CNT_SET(t, f, v) atomic_store_explicit(&(t)->c.f, (v), RLX)
#define CNT_GET(t, f) atomic_load_explicit(&(t)->c.f, RLX)

const char *const err_code_names[8] = {"bad_request", "forbidden", "not_found", "too_large",
                                       "rate_limited", "internal", "unavailable", "other"};

const char *const other_op_names[6] = {"presence", "read", "typing", "conversation", "synced", "other"};

enum cstate { CS_NEW, CS_CONNECTING, CS_UPGRADE, CS_HELLO, CS_READY, CS_CLOSING, CS_DONE };

struct pub {
    int64_t target;    /* change ops: the seq of the message this publisher changes */
    uint64_t rng;      /* --words: xorshift state of this publisher's bodies */
    uint64_t k;        /* sends issued; the client id of send k is "<client>.<k>.<send time>" */
    uint32_t inflight; /* sent, neither acked nor refused */
    uint64_t due;      /* rate mode: when the next send is due (ns since t0) */
};

struct client {
    int fd;
    uint8_t state, out_armed, dirty, pinged;
    uint32_t idx, user;
    int32_t conv;
    uint64_t last_seq;
    char *obuf;
    uint32_t olen, ooff, ocap;
    char *ibuf;
    uint32_t ilen, icap;
    struct pub *pub;
};

struct thr {
    struct engine *e;
    uint32_t id;
    pthread_t th;
    int ep;
    struct client **cl;
    uint32_t n, npubs;
    struct client **pubs;
    uint32_t next_open, opening;
    struct client **dirty;
    uint32_t ndirty;
    char *rbuf;
    size_t rcap;
    char *sbuf;
    size_t scap;
    uint64_t rng;
    enum phase seen;
    int measuring, sending;
    uint64_t now;          /* ns since t0, taken once per read */
    uint64_t drain_check;  /* last drain tally */
    uint64_t close_until;
    _Atomic int close_done;
    int nsamples;
    char samples[4][240];
    struct counters c;
    struct hist lat, acklat;
};

struct engine {
    struct engine_cfg cfg;
    struct client *clients;
    uint32_t n;
    struct thr *thr;
    _Atomic int phase;
    _Atomic uint64_t budget_used;
    uint64_t seed;
    uint32_t ping_every, ping_sample;
};

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void sample(struct thr *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sample(struct thr *t, const char *fmt, ...)
{
    if (t->nsamples >= 4)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->samples[t->nsamples++], sizeof t->samples[0], fmt, ap);
    va_end(ap);
}

/* the Sec-WebSocket-Key of client idx (16 bytes derived from the run's seed, base64: 24 chars) */
static void ws_key(const struct engine *e, uint32_t idx, char out[25])
{
    uint64_t s = e->seed ^ ((uint64_t)idx * 0x9e3779b97f4a7c15ull);
    uint8_t raw[16];
    uint64_t a = splitmix(&s), b = splitmix(&s);
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    base64_encode_raw(out, 16, raw);
    out[24] = 0;
}

static void ws_accept(const char key[25], char out[29])
{
    struct sha1_ctx ctx;
    uint8_t d[SHA1_DIGEST_SIZE];
    sha1_init(&ctx);
    sha1_update(&ctx, 24, (const uint8_t *)key);
    sha1_update(&ctx, sizeof WS_GUID - 1, (const uint8_t *)WS_GUID);
    sha1_digest(&ctx, sizeof d, d);
    base64_encode_raw(out, sizeof d, d);
    out[28] = 0;
}

/* ------------------------------------------------------------------ output */

static void mark_dirty(struct thr *t, struct client *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        t->dirty[t->ndirty++] = c;
    }
}

static void out_reserve(struct client *c, uint32_t more)
{
    if (c->olen + more > c->ocap) {
        uint32_t cap = c->ocap ? c->ocap : 512;
        while (cap < c->olen + more)
            cap *= 2;
        c->obuf = xrealloc(c->obuf, cap);
        c->ocap = cap;
    }
}

static void out_raw(struct thr *t, struct client *c, const char *p, size_t n)
{
    out_reserve(c, (uint32_t)n);
    memcpy(c->obuf + c->olen, p, n);
    c->olen += (uint32_t)n;
    mark_dirty(t, c);
}

/* one masked client frame (RFC 6455 5.3: every client frame is masked, with a fresh key) */
static void out_frame(struct thr *t, struct client *c, int opcode, const char *p, size_t n)
{
    out_reserve(c, (uint32_t)n + 14);
    uint8_t *o = (uint8_t *)c->obuf + c->olen;
    size_t h = 0;
    o[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126)
        o[h++] = (uint8_t)(0x80 | n);
    else if (n < 65536) {
        o[h++] = 0x80 | 126;
        o[h++] = (uint8_t)(n >> 8);
        o[h++] = (uint8_t)n;
    } else {
        o[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            o[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    uint32_t key = (uint32_t)splitmix(&t->rng);
    memcpy(o + h, &key, 4);
    uint8_t *dst = o + h + 4;
    uint64_t k8 = (uint64_t)key | ((uint64_t)key << 32);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* i is a multiple of 4: the key lines up */
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= k8;
        memcpy(dst + i, &v, 8);
    }
    const uint8_t *kb = (const uint8_t *)&key;
    for (; i < n; i++)
        dst[i] = (uint8_t)p[i] ^ kb[i & 3];
    c->olen += (uint32_t)(h + 4 + n);
    mark_dirty(t, c);
}

static void conn_gone(struct thr *t, struct client *c, const char *why);

static void set_events(struct thr *t, struct client *c, uint32_t ev)
{
    struct epoll_event ee = {.events = ev, .data.ptr = c};
    epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &ee);
}

static void flush(struct thr *t, struct client *c)
{
    if (c->fd < 0)
        return;
    while (c->ooff < c->olen) {
        ssize_t w = write(c->fd, c->obuf + c->ooff, c->olen - c->ooff);
        if (w > 0) {
            c->ooff += (uint32_t)w;
            CNT_ADD(t, bytes_out, (uint64_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->out_armed) {
                c->out_armed = 1;
                set_events(t, c, EPOLLIN | EPOLLOUT);
            }
            return;
        }
        conn_gone(t, c, w < 0 ? strerror(errno) : "write returned 0");
        return;
    }
    c->olen = c->ooff = 0;
    if (c->ocap > 65536) { /* a burst is over: give the memory back */
        free(c->obuf);
        c->obuf = NULL;
        c->ocap = 0;
    }
    if (c->out_armed) {
        c->out_armed = 0;
        set_events(t, c, EPOLLIN);
    }
}

static void flush_dirty(struct thr *t)
{
    for (uint32_t i = 0; i < t->ndirty; i++) {
        struct client *c = t->dirty[i];
        c->dirty = 0;
        flush(t, c);
    }
    t->ndirty = 0;
}

/* ------------------------------------------------------------------ connection life */

static void conn_gone(struct thr *t, struct client *c, const char *why)
{
    if (c->state == CS_DONE)
        return;
    enum phase ph = (enum phase)atomic_load_explicit(&t->e->phase, RLX);
    if (c->state < CS_READY) {
        CNT_ADD(t, conn_fail, 1);
        t->opening--;
        sample(t, "client %u: connection failed before hello: %s", c->idx, why);
    } else if (c->state == CS_CLOSING) {
        CNT_ADD(t, closed_ok, 1);
    } else if (ph < PH_CLOSE) {
        CNT_ADD(t, unexpected_close, 1);
        sample(t, "client %u: connection lost: %s", c->idx, why);
    }
    if (c->pub && c->pub->inflight) {
        CNT_SET(t, inflight, CNT_GET(t, inflight) - c->pub->inflight);
        c->pub->inflight = 0;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = CS_DONE;
    free(c->ibuf);
    c->ibuf = NULL;
    c->ilen = c->icap = 0;
    c->olen = c->ooff = 0;
}

static void start_connect(struct thr *t, struct client *c)
{
    const struct engine_cfg *cfg = &t->e->cfg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = CS_CONNECTING;
    t->opening++;
    if (fd < 0) {
        conn_gone(t, c, strerror(errno));
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + c->idx % cfg->nsrc); /* 127.0.0.2 + i % nsrc */
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
        conn_gone(t, c, strerror(errno));
        return;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->t->port)};
    inet_pton(AF_INET, cfg->t->host, &dst.sin_addr);
    struct epoll_event ee = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ee) < 0) {
        conn_gone(t, c, strerror(errno));
        return;
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        char why[128];
        snprintf(why, sizeof why, "connect: %s%s", strerror(errno),
                 errno == EADDRNOTAVAIL ? " (out of local ports: raise --src-addrs)" : "");
        conn_gone(t, c, why);
    }
}

static void on_connected(struct thr *t, struct client *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        conn_gone(t, c, strerror(err));
        return;
    }
    const struct engine_cfg *cfg = &t->e->cfg;
    char key[25];
    ws_key(t->e, c->idx, key);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ",
                     cfg->t->host, cfg->t->port, key);
    c->state = CS_UPGRADE;
    set_events(t, c, EPOLLIN);
    out_raw(t, c, head, (size_t)n);
    const char *tok = cfg->users[c->user].token;
    out_raw(t, c, tok, strlen(tok));
    out_raw(t, c, "\r\n\r\n", 4);
}

/* The 101 answer: status and Sec-WebSocket-Accept. Returns header length, 0 if incomplete, -1 bad. */
static int check_upgrade(struct thr *t, struct client *c, const char *p, size_t n)
{
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > 16384) {
            conn_gone(t, c, "upgrade answer without an end of headers");
            return -1;
        }
        return 0;
    }
    size_t hl = (size_t)(end - p) + 4;
    char line[120];
    size_t ll = (size_t)((const char *)memchr(p, '\r', hl) - p);
    snprintf(line, sizeof line, "%.*s", (int)(ll < 100 ? ll : 100), p);
    if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
        char why[200];
        snprintf(why, sizeof why, "upgrade refused: %s", line);
        conn_gone(t, c, why);
        return -1;
    }
    char key[25], want[29];
    ws_key(t->e, c->idx, key);
    ws_accept(key, want);
    const char *h = NULL;
    for (const char *q = p; q && q < end; q = memmem(q, (size_t)(end - q), "\r\n", 2)) {
        q += 2;
        if (!strncasecmp(q, "Sec-WebSocket-Accept:", 21)) {
            h = q + 21;
            while (*h == ' ')
                h++;
            break;
        }
    }
    if (!h || strncmp(h, want, 28) != 0) {
        conn_gone(t, c, "upgrade: wrong or missing Sec-WebSocket-Accept");
        return -1;
    }
    c->state = CS_HELLO;
    return (int)hl;
}

/* ------------------------------------------------------------------ sending */

static int take_budget(struct thr *t)
{
    uint64_t max = t->e->cfg.pub.max_sends;
    if (!max)
        return 1;
    return atomic_fetch_add_explicit(&t->e->budget_used, 1, RLX) < max;
}

/* one send; `at` = its time (ns since t0): now, or in rate mode the time it was due.
 * Change ops: a reaction toggled (on for even k, off for odd k: on one connection they are
 * applied in order, so each is a real change that takes a mod), or an edit whose body starts
 * with the send time like a message's. */
static void send_one(struct thr *t, struct client *c, uint64_t at)
{
    struct pub *p = c->pub;
    const struct engine_cfg *cfg = &t->e->cfg;
    uint64_t k = p->k++;
    p->inflight++;
    long long conv = (long long)cfg->convs[c->conv].id;
    int n;
    if (cfg->pub.op == OP_REACT) {
        n = snprintf(t->sbuf, t->scap,
                     "{\"op\":\"react\",\"id\":\"%u.%llu.%llu\",\"conv\":%lld,\"seq\":%lld,"
                     "\"emoji\":\"\xf0\x9f\x91\x8d\",\"on\":%s}", c->idx, (unsigned long long)k,
                     (unsigned long long)at, conv, (long long)p->target, k % 2 ? "false" : "true");
        out_frame(t, c, 0x1, t->sbuf, (size_t)n);
        CNT_ADD(t, sent, 1);
        CNT_ADD(t, inflight, 1);
        return;
    }
    if (cfg->pub.op == OP_EDIT)
        n = snprintf(t->sbuf, t->scap,
                     "{\"op\":\"edit\",\"id\":\"%u.%llu.%llu\",\"conv\":%lld,\"seq\":%lld,\"body\":\"%llu %llu ",
                     c->idx, (unsigned long long)k, (unsigned long long)at, conv, (long long)p->target,
                     (unsigned long long)at, (unsigned long long)k);
    else
        n = snprintf(t->sbuf, t->scap,
                     "{\"op\":\"send\",\"id\":\"%u.%llu.%llu\",\"conv\":%lld,\"body\":\"%llu %llu ", c->idx,
                     (unsigned long long)k, (unsigned long long)at, conv, (unsigned long long)at, (unsigned long long)k);
    size_t body_start = (size_t)n - (size_t)snprintf(NULL, 0, "%llu %llu ", (unsigned long long)at, (unsigned long long)k);
    size_t want = body_start + cfg->pub.body_bytes;
    if (cfg->pub.words) {
        /* words of a fixed vocabulary, Zipf-like (word i about 1/(i+1) as often): bodies a
         * search index has something to do with; the same sequence in every run */
        uint64_t x = p->rng ? p->rng : (p->rng = 0x9e3779b97f4a7c15ull * (c->idx + 1));
        while ((size_t)n + 16 < want && (size_t)n + 16 < t->scap - 4) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            double u = (double)(x >> 11) / 9007199254740992.0;
            uint32_t w = (uint32_t)(pow((double)cfg->pub.words + 1, u)) - 1; /* log-uniform: ~1/(i+1) */
            if (w >= cfg->pub.words)
                w = cfg->pub.words - 1;
            n += word_of(w, t->sbuf + n);
            t->sbuf[n++] = ' ';
        }
        p->rng = x;
    }
    while ((size_t)n < want && (size_t)n < t->scap - 4)
        t->sbuf[n++] = 'x';
    t->sbuf[n++] = '"';
    t->sbuf[n++] = '}';
    out_frame(t, c, 0x1, t->sbuf, (size_t)n);
    CNT_ADD(t, sent, 1);
    CNT_ADD(t, inflight, 1);
}

static void pump_window(struct thr *t, struct client *c)
{
    if (!t->sending || c->state != CS_READY)
        return;
    uint32_t w = t->e->cfg.pub.window;
    while (c->pub->inflight < w && take_budget(t))
        send_one(t, c, t->now);
}

/* rate mode: every publisher whose time has come; returns the next due time */
static uint64_t pump_rate(struct thr *t)
{
    const struct pub_cfg *pc = &t->e->cfg.pub;
    uint64_t interval = (uint64_t)(1e9 / pc->rate_per_pub);
    uint64_t next = UINT64_MAX;
    for (uint32_t i = 0; i < t->npubs; i++) {
        struct client *c = t->pubs[i];
        if (c->state != CS_READY)
            continue;
        struct pub *p = c->pub;
        while (p->due <= t->now) {
            if (p->inflight >= pc->max_inflight)
                CNT_ADD(t, rate_skipped, 1); /* the server is this far behind: skip, count it */
            else if (take_budget(t))
                send_one(t, c, p->due);
            else
                break;
            p->due += interval;
        }
        if (p->due < next)
            next = p->due;
    }
    return next;
}

/* ------------------------------------------------------------------ receiving */

static uint64_t parse_u64(const char *p, uint32_t n, uint32_t *used)
{
    uint64_t v = 0;
    uint32_t i = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        v = v * 10 + (uint64_t)(p[i++] - '0');
    if (used)
        *used = i;
    return v;
}

static void on_msg(struct thr *t, struct client *c, const struct frame_fields *f)
{
    const struct engine_cfg *cfg = &t->e->cfg;
    CNT_ADD(t, deliv, 1);
    if (t->measuring)
        CNT_ADD(t, deliv_m, 1);
    if (c->conv < 0 || !f->has_conv || f->conv != cfg->convs[c->conv].id || !f->has_seq) {
        CNT_ADD(t, wrong_conv, 1);
        sample(t, "client %u: msg of conv %lld, expected %lld", c->idx, (long long)f->conv,
               c->conv < 0 ? -1LL : (long long)cfg->convs[c->conv].id);
        return;
    }
    uint64_t seq = (uint64_t)f->seq;
    if (seq != c->last_seq + 1) {
        if (seq <= c->last_seq) {
            CNT_ADD(t, seq_dups, 1);
            sample(t, "client %u conv %lld: seq %llu after %llu (repeat or out of order)", c->idx, (long long)f->conv,
                   (unsigned long long)seq, (unsigned long long)c->last_seq);
        } else {
            CNT_ADD(t, seq_gaps, 1);
            sample(t, "client %u conv %lld: seq %llu after %llu (gap)", c->idx, (long long)f->conv,
                   (unsigned long long)seq, (unsigned long long)c->last_seq);
        }
    }
    if (seq > c->last_seq)
        c->last_seq = seq;
    if (t->measuring && f->body.n) {
        uint32_t used;
        uint64_t at = parse_u64(f->body.p, f->body.n, &used);
        if (used && t->now >= at)
            hist_add(&t->lat, t->now - at);
    }
}

/* An update frame (change ops): a delivery, checked for order on mod the way msg frames are on
 * seq (client->last_seq holds the last mod). Its latency only for edits, whose new body starts
 * with the send time: the body is inside "message", which the flat scanner skips, so it is
 * found by its key. */
static void on_update(struct thr *t, struct client *c, const struct frame_fields *f, const char *p, size_t n)
{
    const struct engine_cfg *cfg = &t->e->cfg;
    CNT_ADD(t, deliv, 1);
    if (t->measuring)
        CNT_ADD(t, deliv_m, 1);
    if (c->conv < 0 || !f->has_conv || f->conv != cfg->convs[c->conv].id || !f->has_mod) {
        CNT_ADD(t, wrong_conv, 1);
        sample(t, "client %u: update of conv %lld without a mod, or not its conversation", c->idx, (long long)f->conv);
        return;
    }
    uint64_t mod = (uint64_t)f->mod;
    if (mod != c->last_seq + 1) {
        if (mod <= c->last_seq)
            CNT_ADD(t, seq_dups, 1);
        else
            CNT_ADD(t, seq_gaps, 1);
        sample(t, "client %u conv %lld: mod %llu after %llu", c->idx, (long long)f->conv, (unsigned long long)mod,
               (unsigned long long)c->last_seq);
    }
    if (mod > c->last_seq)
        c->last_seq = mod;
    if (t->measuring && cfg->pub.op == OP_EDIT) {
        const char *b = memmem(p, n, "\"body\":\"", 8);
        if (b) {
            b += 8;
            uint32_t used;
            uint64_t at = parse_u64(b, (uint32_t)(p + n - b), &used);
            if (used && t->now >= at)
                hist_add(&t->lat, t->now - at);
        }
    }
}

/* a client id of this publisher, "<client>.<k>.<send time>": its send time */
static int our_send(struct client *c, struct span id, uint64_t *at)
{
    if (!c->pub || !id.n)
        return 0;
    uint32_t u1, u2, u3;
    uint64_t idx = parse_u64(id.p, id.n, &u1);
    if (!u1 || u1 + 1 >= id.n || id.p[u1] != '.' || idx != c->idx)
        return 0;
    uint64_t k = parse_u64(id.p + u1 + 1, id.n - u1 - 1, &u2);
    if (!u2 || u1 + u2 + 2 >= id.n || id.p[u1 + 1 + u2] != '.' || k >= c->pub->k)
        return 0;
    *at = parse_u64(id.p + u1 + u2 + 2, id.n - u1 - u2 - 2, &u3);
    return u3 && u1 + u2 + 2 + u3 == id.n;
}

static void on_ack(struct thr *t, struct client *c, const struct frame_fields *f)
{
    uint64_t at;
    if (!our_send(c, f->id, &at) || !c->pub->inflight) {
        CNT_ADD(t, bad_frames, 1);
        sample(t, "client %u: ack for an id it did not send: %.*s", c->idx, (int)(f->id.n < 60 ? f->id.n : 60), f->id.p);
        return;
    }
    struct pub *p = c->pub;
    p->inflight--;
    CNT_SET(t, inflight, CNT_GET(t, inflight) - 1);
    CNT_ADD(t, acks, 1);
    if (t->measuring) {
        CNT_ADD(t, acks_m, 1);
        if (t->now >= at)
            hist_add(&t->acklat, t->now - at);
    }
    /* the dense check: acked seqs of sends, acked mods of changes (a change that changed
     * nothing would repeat a mod, and show as not dense) */
    int change = t->e->cfg.pub.op != OP_SEND;
    int64_t v = change ? f->mod : f->seq;
    if ((change ? f->has_mod : f->has_seq) && v > 0) {
        struct conv *cv = &t->e->cfg.convs[c->conv];
        atomic_fetch_add_explicit(&cv->acks, 1, RLX);
        atomic_fetch_add_explicit(&cv->seq_sum, (uint64_t)v, RLX);
        uint64_t m = atomic_load_explicit(&cv->seq_max, RLX);
        while ((uint64_t)v > m && !atomic_compare_exchange_weak_explicit(&cv->seq_max, &m, (uint64_t)v, RLX, RLX))
            ;
    } else {
        CNT_ADD(t, bad_frames, 1);
        sample(t, "client %u: ack without a %s", c->idx, change ? "mod" : "seq");
    }
    if (t->e->cfg.pub.window)
        pump_window(t, c);
}

static void on_error_frame(struct thr *t, struct client *c, const struct frame_fields *f)
{
    CNT_ADD(t, err_frames, 1);
    int i = 7;
    for (int j = 0; j < 7; j++)
        if (span_eq(f->code, err_code_names[j]))
            i = j;
    atomic_fetch_add_explicit(&t->c.err_code[i], 1, RLX);
    sample(t, "client %u: error frame code=%.*s message=%.*s id=%.*s", c->idx, (int)f->code.n, f->code.p,
           (int)(f->message.n < 100 ? f->message.n : 100), f->message.p, (int)(f->id.n < 40 ? f->id.n : 40), f->id.p);
    uint64_t at;
    if (our_send(c, f->id, &at) && c->pub->inflight) {
        c->pub->inflight--;
        CNT_SET(t, inflight, CNT_GET(t, inflight) - 1);
        CNT_ADD(t, failed, 1);
        if (t->e->cfg.pub.window)
            pump_window(t, c);
    }
}

static void on_text(struct thr *t, struct client *c, const char *p, size_t n)
{
    struct frame_fields f;
    if (scan_frame(p, n, &f) < 0 || !f.op.n) {
        CNT_ADD(t, bad_frames, 1);
        sample(t, "client %u: unparsable frame: %.*s", c->idx, (int)(n < 120 ? n : 120), p);
        return;
    }
    switch (f.op.p[0]) {
    case 'm':
        if (span_eq(f.op, "msg")) {
            on_msg(t, c, &f);
            return;
        }
        break;
    case 'a':
        if (span_eq(f.op, "ack")) {
            on_ack(t, c, &f);
            return;
        }
        break;
    case 'e':
        if (span_eq(f.op, "error")) {
            on_error_frame(t, c, &f);
            return;
        }
        break;
    case 'h':
        if (span_eq(f.op, "hello")) {
            if (c->state == CS_HELLO) {
                c->state = CS_READY;
                t->opening--;
                CNT_ADD(t, opened, 1);
                if (c->pub && t->sending) {
                    if (t->e->cfg.pub.window)
                        pump_window(t, c);
                    else
                        c->pub->due = t->now;
                }
            }
            return;
        }
        break;
    case 'u':
        if (span_eq(f.op, "update")) {
            on_update(t, c, &f, p, n);
            return;
        }
        break;
    case 'p':
        if (span_eq(f.op, "pong")) {
            CNT_ADD(t, pongs, 1);
            return;
        }
        break;
    }
    CNT_ADD(t, frames_other, 1); /* presence, read, typing, conversation, synced */
    int i = 5;
    for (int j = 0; j < 5; j++)
        if (span_eq(f.op, other_op_names[j]))
            i = j;
    atomic_store_explicit(&t->c.other_op[i], atomic_load_explicit(&t->c.other_op[i], RLX) + 1, RLX);
}

/* Parses complete frames from p[0..n); returns the bytes consumed. Stops early if c closed. */
static size_t on_frames(struct thr *t, struct client *c, const char *p, size_t n)
{
    size_t off = 0;
    while (n - off >= 2 && c->state != CS_DONE) {
        const uint8_t *h = (const uint8_t *)p + off;
        if (h[1] & 0x80) {
            CNT_ADD(t, bad_frames, 1);
            conn_gone(t, c, "the server sent a masked frame");
            break;
        }
        uint64_t len = h[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - off < 4)
                break;
            len = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | h[2 + i];
            hl = 10;
            if (len > (1u << 30)) {
                CNT_ADD(t, bad_frames, 1);
                conn_gone(t, c, "frame over 1 GiB announced");
                break;
            }
        }
        if (n - off < hl + len)
            break;
        const char *pl = p + off + hl;
        int fin = h[0] & 0x80, op = h[0] & 0x0f;
        off += hl + (size_t)len;
        switch (op) {
        case 0x1:
            if (!fin) {
                CNT_ADD(t, bad_frames, 1);
                sample(t, "client %u: fragmented text frame (not supported)", c->idx);
                break;
            }
            on_text(t, c, pl, (size_t)len);
            break;
        case 0x8: {
            unsigned code = len >= 2 ? ((unsigned)(uint8_t)pl[0] << 8 | (uint8_t)pl[1]) : 1005;
            char why[160];
            snprintf(why, sizeof why, "close frame %u %.*s", code, (int)(len > 2 && len < 100 ? len - 2 : 0), pl + 2);
            if (c->state != CS_CLOSING)
                out_frame(t, c, 0x8, pl, len >= 2 ? 2 : 0), flush(t, c);
            conn_gone(t, c, why);
            break;
        }
        case 0x9:
            out_frame(t, c, 0xA, pl, (size_t)len);
            break;
        case 0xA:
            break;
        default:
            CNT_ADD(t, bad_frames, 1);
            sample(t, "client %u: frame with opcode %d", c->idx, op);
        }
    }
    return off;
}

static void on_readable(struct thr *t, struct client *c)
{
    size_t have = c->ilen;
    if (t->rcap < have + 65536) {
        t->rcap = (have + 65536) * 2;
        t->rbuf = xrealloc(t->rbuf, t->rcap);
    }
    if (have)
        memcpy(t->rbuf, c->ibuf, have);
    ssize_t r = read(c->fd, t->rbuf + have, t->rcap - have);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        conn_gone(t, c, r == 0 ? "the server closed the connection" : strerror(errno));
        return;
    }
    t->now = now_ns() - t->e->cfg.t0_ns;
    CNT_ADD(t, bytes_in, (uint64_t)r);
    size_t total = have + (size_t)r, used = 0;
    if (c->state == CS_UPGRADE) {
        int hl = check_upgrade(t, c, t->rbuf, total);
        if (hl < 0)
            return;
        used = (size_t)hl;
    }
    if (c->state >= CS_HELLO)
        used += on_frames(t, c, t->rbuf + used, total - used);
    if (c->state == CS_DONE)
        return;
    size_t left = total - used;
    if (left > c->icap) {
        c->icap = (uint32_t)left;
        c->ibuf = xrealloc(c->ibuf, left);
    }
    if (left)
        memcpy(c->ibuf, t->rbuf + used, left);
    c->ilen = (uint32_t)left;
    if (!left && c->icap > 16384) {
        free(c->ibuf);
        c->ibuf = NULL;
        c->icap = 0;
    }
}

/* ------------------------------------------------------------------ phases */

static void on_phase(struct thr *t, enum phase ph)
{
    struct engine *e = t->e;
    int was_sending = t->sending;
    t->measuring = ph == PH_MEASURE;
    t->sending = ph == PH_WARMUP || ph == PH_MEASURE;
    t->now = now_ns() - e->cfg.t0_ns;
    /* sending starts with the warm-up, or with the measurement when a thread never saw a
     * warm-up (--warmup 0: the phase moved on before the thread looked) */
    if (t->sending && !was_sending) {
        if (e->cfg.pub.window) {
            for (uint32_t i = 0; i < t->npubs; i++)
                pump_window(t, t->pubs[i]);
        } else {
            uint64_t interval = (uint64_t)(1e9 / e->cfg.pub.rate_per_pub);
            for (uint32_t i = 0; i < t->npubs; i++) /* spread the publishers over one interval */
                t->pubs[i]->pub->due = t->now + splitmix(&t->rng) % (interval ? interval : 1);
        }
    } else if (ph == PH_DRAIN) {
        CNT_SET(t, behind, UINT64_MAX);
        t->drain_check = 0;
    } else if (ph == PH_PING) {
        for (uint32_t i = 0; i < t->n; i++) {
            struct client *c = t->cl[i];
            if (c->state == CS_READY && c->idx % e->ping_every == 0) {
                c->pinged = 1;
                out_frame(t, c, 0x1, "{\"op\":\"ping\"}", 13);
            }
        }
    } else if (ph == PH_CLOSE) {
        t->close_until = t->now + 5000000000ull;
        for (uint32_t i = 0; i < t->n; i++) {
            struct client *c = t->cl[i];
            if (c->state == CS_READY || c->state == CS_HELLO) {
                out_frame(t, c, 0x8, "\x03\xe8", 2); /* 1000 */
                c->state = CS_CLOSING;
            } else if (c->state != CS_DONE && c->state != CS_CLOSING) {
                if (c->state != CS_NEW)
                    t->opening--;
                if (c->fd >= 0)
                    close(c->fd);
                c->fd = -1;
                c->state = CS_DONE;
            }
        }
    }
}

static void drain_tally(struct thr *t)
{
    const struct engine_cfg *cfg = &t->e->cfg;
    uint64_t behind = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        struct client *c = t->cl[i];
        if (c->conv < 0 || c->state != CS_READY)
            continue;
        uint64_t acked = atomic_load_explicit(&cfg->convs[c->conv].seq_max, RLX);
        if (acked > c->last_seq)
            behind += acked - c->last_seq;
    }
    CNT_SET(t, behind, behind);
}

static void *thr_main(void *arg)
{
    struct thr *t = arg;
    struct engine *e = t->e;
    struct epoll_event evs[256];
    for (;;) {
        enum phase ph = (enum phase)atomic_load_explicit(&e->phase, memory_order_acquire);
        if (ph != t->seen) {
            t->seen = ph;
            on_phase(t, ph);
        }
        if (ph == PH_EXIT)
            break;
        if (ph == PH_OPEN)
            while (t->opening < e->cfg.open_conc && t->next_open < t->n)
                start_connect(t, t->cl[t->next_open++]);
        t->now = now_ns() - e->cfg.t0_ns;
        uint64_t wait_ns = 5000000;
        if (t->sending && !e->cfg.pub.window) {
            uint64_t next = pump_rate(t);
            wait_ns = next <= t->now ? 0 : next - t->now < wait_ns ? next - t->now : wait_ns;
        }
        flush_dirty(t);
        struct timespec ts = {0, (long)wait_ns};
        int nev = epoll_pwait2(t->ep, evs, 256, &ts, NULL);
        if (nev < 0 && errno == ENOSYS)
            nev = epoll_wait(t->ep, evs, 256, (int)(wait_ns / 1000000));
        t->now = now_ns() - e->cfg.t0_ns;
        for (int i = 0; i < nev; i++) {
            struct client *c = evs[i].data.ptr;
            if (c->state == CS_DONE)
                continue;
            if (c->state == CS_CONNECTING) {
                on_connected(t, c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(t, c);
            if (c->state != CS_DONE && (evs[i].events & EPOLLOUT))
                flush(t, c);
        }
        flush_dirty(t);
        if (ph == PH_DRAIN && t->now - t->drain_check > 20000000) {
            drain_tally(t);
            t->drain_check = t->now;
        }
        if (ph == PH_CLOSE && !atomic_load_explicit(&t->close_done, RLX)) {
            int open = 0;
            for (uint32_t i = 0; i < t->n && !open; i++)
                open = t->cl[i]->state != CS_DONE;
            if (!open || t->now > t->close_until) {
                for (uint32_t i = 0; i < t->n; i++)
                    if (t->cl[i]->state != CS_DONE) {
                        t->cl[i]->state = CS_CLOSING; /* no answer in time: counted as closed */
                        conn_gone(t, t->cl[i], "close");
                    }
                atomic_store(&t->close_done, 1);
            }
        }
    }
    for (uint32_t i = 0; i < t->n; i++)
        if (t->cl[i]->fd >= 0) {
            close(t->cl[i]->fd);
            t->cl[i]->fd = -1;
        }
    return NULL;
}

/* ------------------------------------------------------------------ API */

struct engine *engine_new(const struct engine_cfg *cfg, uint32_t nclients)
{
    struct engine *e = xcalloc(1, sizeof *e);
    e->cfg = *cfg;
    if (!e->cfg.nthreads)
        e->cfg.nthreads = 1;
    if (!e->cfg.nsrc)
        e->cfg.nsrc = 1;
    if (!e->cfg.open_conc)
        e->cfg.open_conc = 64;
    e->n = nclients;
    e->clients = xcalloc(nclients, sizeof *e->clients);
    e->seed = now_ns() ^ ((uint64_t)getpid() << 32);
    e->ping_every = nclients > 200 ? nclients / 200 : 1;
    e->thr = xcalloc(e->cfg.nthreads, sizeof *e->thr);
    for (uint32_t i = 0; i < e->cfg.nthreads; i++) {
        struct thr *t = &e->thr[i];
        t->e = e;
        t->id = i;
        t->ep = epoll_create1(EPOLL_CLOEXEC);
        if (t->ep < 0)
            die("epoll_create1: %s", strerror(errno));
        uint32_t share = nclients / e->cfg.nthreads + 1;
        t->cl = xcalloc(share, sizeof *t->cl);
        t->pubs = xcalloc(share, sizeof *t->pubs);
        t->dirty = xcalloc(share, sizeof *t->dirty);
        t->rcap = 1 << 20;
        t->rbuf = xcalloc(1, t->rcap);
        t->scap = cfg->pub.body_bytes + 256;
        t->sbuf = xcalloc(1, t->scap);
        t->rng = e->seed ^ (0x1234567ull * (i + 1));
        t->seen = (enum phase)-1;
    }
    for (uint32_t i = 0; i < nclients; i++) {
        e->clients[i].fd = -1;
        e->clients[i].idx = i;
        e->clients[i].conv = -1;
    }
    return e;
}

void engine_client(struct engine *e, uint32_t i, uint32_t user, int32_t conv, int publisher)
{
    struct client *c = &e->clients[i];
    struct thr *t = &e->thr[i % e->cfg.nthreads];
    c->user = user;
    c->conv = conv;
    t->cl[t->n++] = c;
    if (publisher) {
        c->pub = xcalloc(1, sizeof *c->pub);
        t->pubs[t->npubs++] = c;
    }
}

void engine_pub_target(struct engine *e, uint32_t i, int64_t seq)
{
    if (e->clients[i].pub)
        e->clients[i].pub->target = seq;
}

void engine_start(struct engine *e)
{
    atomic_store(&e->phase, PH_OPEN);
    uint32_t ping = 0;
    for (uint32_t i = 0; i < e->n; i++)
        ping += i % e->ping_every == 0;
    e->ping_sample = ping;
    for (uint32_t i = 0; i < e->cfg.nthreads; i++)
        if (pthread_create(&e->thr[i].th, NULL, thr_main, &e->thr[i]) != 0)
            die("pthread_create failed");
}

void engine_set_phase(struct engine *e, enum phase p) { atomic_store_explicit(&e->phase, p, memory_order_release); }
enum phase engine_phase(struct engine *e) { return (enum phase)atomic_load(&e->phase); }
uint32_t engine_nthreads(struct engine *e) { return e->cfg.nthreads; }
struct counters *engine_counters(struct engine *e, uint32_t i) { return &e->thr[i].c; }
struct hist *engine_lat(struct engine *e, uint32_t i) { return &e->thr[i].lat; }
struct hist *engine_acklat(struct engine *e, uint32_t i) { return &e->thr[i].acklat; }
uint32_t engine_ping_sample(struct engine *e) { return e->ping_sample; }

void engine_sum(struct engine *e, struct counters *o)
{
    memset(o, 0, sizeof *o);
    _Atomic uint64_t *dst = (_Atomic uint64_t *)o;
    size_t nf = sizeof *o / sizeof(uint64_t);
    for (uint32_t i = 0; i < e->cfg.nthreads; i++) {
        _Atomic uint64_t *src = (_Atomic uint64_t *)&e->thr[i].c;
        for (size_t f = 0; f < nf; f++) {
            uint64_t v = atomic_load_explicit(&src[f], RLX);
            uint64_t cur = atomic_load_explicit(&dst[f], RLX);
            /* behind is UINT64_MAX until a thread tallied: keep it saturated */
            uint64_t sum = cur + v < cur ? UINT64_MAX : cur + v;
            atomic_store_explicit(&dst[f], sum, RLX);
        }
    }
}

/* only after engine_join: last_seq is each thread's own */
void engine_check_clients(struct engine *e, uint64_t *short_clients, uint64_t *missing, uint64_t *ahead)
{
    *short_clients = *missing = *ahead = 0;
    for (uint32_t i = 0; i < e->n; i++) {
        struct client *c = &e->clients[i];
        if (c->conv < 0)
            continue;
        uint64_t acked = atomic_load(&e->cfg.convs[c->conv].acks);
        if (c->last_seq < acked) {
            (*short_clients)++;
            *missing += acked - c->last_seq;
        } else if (c->last_seq > acked) {
            (*ahead)++;
        }
    }
}

size_t engine_samples(struct engine *e, char **out, size_t n)
{
    size_t k = 0;
    for (uint32_t i = 0; i < e->cfg.nthreads && k < n; i++)
        for (int j = 0; j < e->thr[i].nsamples && k < n; j++)
            out[k++] = e->thr[i].samples[j];
    return k;
}

void engine_join(struct engine *e)
{
    if (engine_phase(e) < PH_CLOSE)
        engine_set_phase(e, PH_CLOSE);
    uint64_t until = now_ns() + 10000000000ull;
    for (;;) {
        int done = 1;
        for (uint32_t i = 0; i < e->cfg.nthreads; i++)
            done &= atomic_load(&e->thr[i].close_done);
        if (done || now_ns() > until)
            break;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    engine_set_phase(e, PH_EXIT);
    for (uint32_t i = 0; i < e->cfg.nthreads; i++)
        pthread_join(e->thr[i].th, NULL);
}

void engine_free(struct engine *e)
{
    for (uint32_t i = 0; i < e->n; i++) {
        struct client *c = &e->clients[i];
        free(c->obuf);
        free(c->ibuf);
        free(c->pub);
    }
    for (uint32_t i = 0; i < e->cfg.nthreads; i++) {
        struct thr *t = &e->thr[i];
        close(t->ep);
        free(t->cl);
        free(t->pubs);
        free(t->dirty);
        free(t->rbuf);
        free(t->sbuf);
    }
    free(e->thr);
    free(e->clients);
    free(e);
}
