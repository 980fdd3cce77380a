/* Unit tests for ws.c, the RFC 6455 codec. wslay (an independent, widely
 * used implementation) is the oracle: its client encodes the masked frames
 * we must decode, and decodes the frames we encode. Hand-built frames cover
 * the protocol violations wslay will not produce. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "ws.h"

#define MAX_MSGS 16
#define BIG_LIMIT (1u << 20)

static const size_t test_lengths[] = {0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70000};
#define N_LENGTHS (sizeof test_lengths / sizeof test_lengths[0])

/* ---- a byte vector ------------------------------------------------------ */

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void bytes_append(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void bytes_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- a wslay peer over in-memory buffers -------------------------------- */

struct msg {
    int opcode;
    uint8_t *data;
    size_t len;
    uint16_t status;
};

struct peer {
    wslay_event_context_ptr ctx;
    struct bytes out;  /* bytes wslay sent */
    const uint8_t *in; /* bytes wslay will receive */
    size_t in_len, in_pos;
    struct msg msgs[MAX_MSGS];
    size_t nmsgs;
    unsigned mask_seed;
};

static ssize_t peer_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                         void *user)
{
    struct peer *p = user;
    (void)ctx;
    (void)flags;
    bytes_append(&p->out, data, len);
    return (ssize_t)len;
}

static ssize_t peer_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                         void *user)
{
    struct peer *p = user;
    size_t n = p->in_len - p->in_pos;
    (void)flags;
    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n > len)
        n = len;
    memcpy(buf, p->in + p->in_pos, n);
    p->in_pos += n;
    return (ssize_t)n;
}

/* Deterministic but varied keys, never all zero (a zero key would hide a
 * parser that forgets to unmask). */
static int peer_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
    struct peer *p = user;
    (void)ctx;
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(p->mask_seed * 53u + i * 97u + 0x5Au);
    p->mask_seed++;
    return 0;
}

static void peer_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                        void *user)
{
    struct peer *p = user;
    struct msg *m;
    (void)ctx;
    assert_true(p->nmsgs < MAX_MSGS);
    m = &p->msgs[p->nmsgs++];
    m->opcode = arg->opcode;
    m->len = arg->msg_length;
    m->status = arg->status_code;
    m->data = malloc(m->len ? m->len : 1);
    assert_non_null(m->data);
    if (m->len)
        memcpy(m->data, arg->msg, m->len);
}

static void peer_init(struct peer *p, int client)
{
    struct wslay_event_callbacks cb = {
        peer_recv, peer_send, peer_genmask, NULL, NULL, NULL, peer_on_msg,
    };
    memset(p, 0, sizeof *p);
    if (client)
        assert_int_equal(wslay_event_context_client_init(&p->ctx, &cb, p), 0);
    else
        assert_int_equal(wslay_event_context_server_init(&p->ctx, &cb, p), 0);
}

static void peer_free(struct peer *p)
{
    for (size_t i = 0; i < p->nmsgs; i++)
        free(p->msgs[i].data);
    wslay_event_context_free(p->ctx);
    bytes_free(&p->out);
}

/* Feeds bytes to the peer and runs its receive (and reply) loop. */
static void peer_feed(struct peer *p, const uint8_t *in, size_t len)
{
    p->in = in;
    p->in_len = len;
    p->in_pos = 0;
    (void)wslay_event_recv(p->ctx);
    (void)wslay_event_send(p->ctx);
}

/* Masked client frame(s) for one message, as wslay encodes them. */
static void client_encode(struct bytes *out, int opcode, const uint8_t *payload, size_t len,
                          unsigned seed)
{
    struct peer p;
    struct wslay_event_msg m = {(uint8_t)opcode, payload, len};

    peer_init(&p, 1);
    p.mask_seed = seed;
    assert_int_equal(wslay_event_queue_msg(p.ctx, &m), 0);
    assert_int_equal(wslay_event_send(p.ctx), 0);
    bytes_append(out, p.out.p, p.out.len);
    peer_free(&p);
}

static uint8_t *pattern(size_t len, int text)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = text ? (uint8_t)('a' + i % 26) : (uint8_t)(i * 7u + 3u);
    return p;
}

/* One complete server frame: our header, then the payload. */
static void server_encode(struct bytes *out, int opcode, const uint8_t *payload, size_t len)
{
    uint8_t hdr[10];
    size_t n = ws_write_header(hdr, opcode, len);

    assert_int_equal(n, ws_header_len(len));
    bytes_append(out, hdr, n);
    bytes_append(out, payload, len);
}

/* ---- client frames from wslay -> ws_parse -------------------------------- */

/* Every strict prefix is WS_PARTIAL and leaves the buffer untouched. */
static void assert_partial_prefixes(uint8_t *buf, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    struct ws_frame f;

    assert_non_null(copy);
    memcpy(copy, buf, len);
    for (size_t k = 0; k < len; k++)
        assert_int_equal(ws_parse(buf, k, BIG_LIMIT, &f, NULL), WS_PARTIAL);
    assert_memory_equal(buf, copy, len);
    free(copy);
}

static void check_client_frame(int opcode, size_t len)
{
    struct bytes b = {0};
    uint8_t *payload = pattern(len, opcode == WS_OP_TEXT);
    struct ws_frame f;
    const char *err = "unset";

    client_encode(&b, opcode, payload, len, (unsigned)len);
    assert_int_equal(b.len, ws_header_len(len) + 4 + len);
    assert_partial_prefixes(b.p, b.len);
    if (len > 0)
        assert_int_equal(ws_parse(b.p, b.len, len - 1, &f, NULL), WS_TOO_BIG);
    assert_int_equal(ws_parse(b.p, b.len, len, &f, &err), (int)b.len);
    assert_null(err);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.opcode, opcode);
    assert_int_equal(f.len, len);
    assert_ptr_equal(f.payload, b.p + b.len - len);
    if (len)
        assert_memory_equal(f.payload, payload, len);
    free(payload);
    bytes_free(&b);
}

static void test_parse_wslay_data_frames(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_LENGTHS; i++) {
        check_client_frame(WS_OP_TEXT, test_lengths[i]);
        check_client_frame(WS_OP_BINARY, test_lengths[i]);
    }
}

static void test_parse_wslay_control_frames(void **state)
{
    static const size_t lens[] = {0, 1, 124, 125};
    (void)state;
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        check_client_frame(WS_OP_PING, lens[i]);
        check_client_frame(WS_OP_PONG, lens[i]);
    }
}

static void check_wslay_close(uint16_t code, const char *reason, uint16_t want)
{
    struct peer p;
    struct ws_frame f;
    uint16_t got = 0;
    size_t rlen = reason ? strlen(reason) : 0;

    peer_init(&p, 1);
    assert_int_equal(wslay_event_queue_close(p.ctx, code, (const uint8_t *)reason, rlen), 0);
    assert_int_equal(wslay_event_send(p.ctx), 0);
    assert_int_equal(ws_parse(p.out.p, p.out.len, 125, &f, NULL), (int)p.out.len);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.fin, 1);
    assert_int_equal(ws_parse_close(f.payload, f.len, &got), 0);
    assert_int_equal(got, want);
    if (code && rlen)
        assert_memory_equal(f.payload + 2, reason, rlen);
    peer_free(&p);
}

static void test_parse_wslay_close(void **state)
{
    (void)state;
    check_wslay_close(1000, "bye", 1000);
    check_wslay_close(1001, NULL, 1001);
    check_wslay_close(4001, "token expired \xc3\xa9", 4001);
    check_wslay_close(0, NULL, 1005); /* wslay sends an empty close payload */
}

/* Several messages in one buffer parse back to back. */
static void test_parse_back_to_back(void **state)
{
    struct bytes b = {0};
    struct ws_frame f;
    size_t off = 0;
    int rc;
    (void)state;

    client_encode(&b, WS_OP_TEXT, (const uint8_t *)"one", 3, 1);
    client_encode(&b, WS_OP_PING, (const uint8_t *)"p", 1, 2);
    client_encode(&b, WS_OP_BINARY, (const uint8_t *)"three", 5, 3);
    rc = ws_parse(b.p + off, b.len - off, BIG_LIMIT, &f, NULL);
    assert_int_equal(rc, 2 + 4 + 3);
    assert_memory_equal(f.payload, "one", 3);
    off += (size_t)rc;
    rc = ws_parse(b.p + off, b.len - off, BIG_LIMIT, &f, NULL);
    assert_int_equal(f.opcode, WS_OP_PING);
    assert_memory_equal(f.payload, "p", 1);
    off += (size_t)rc;
    rc = ws_parse(b.p + off, b.len - off, BIG_LIMIT, &f, NULL);
    assert_int_equal(f.opcode, WS_OP_BINARY);
    assert_memory_equal(f.payload, "three", 5);
    off += (size_t)rc;
    assert_int_equal(off, b.len);
    assert_int_equal(ws_parse(b.p + off, 0, BIG_LIMIT, &f, NULL), WS_PARTIAL);
    bytes_free(&b);
}

/* Unmasking in place at every alignment and every tail length, so the
 * 8-bytes-at-a-time loop and its byte tail both meet the wslay result. */
static void test_parse_unmask_alignment(void **state)
{
    (void)state;
    for (size_t len = 0; len <= 40; len++) {
        uint8_t *payload = pattern(len, 0);
        for (size_t shift = 0; shift < 8; shift++) {
            struct bytes b = {0};
            struct ws_frame f;
            uint8_t *buf;

            client_encode(&b, WS_OP_BINARY, payload, len, (unsigned)(len * 8 + shift));
            buf = malloc(b.len + shift);
            assert_non_null(buf);
            memcpy(buf + shift, b.p, b.len);
            assert_int_equal(ws_parse(buf + shift, b.len, BIG_LIMIT, &f, NULL), (int)b.len);
            assert_int_equal(f.len, len);
            if (len)
                assert_memory_equal(f.payload, payload, len);
            free(buf);
            bytes_free(&b);
        }
        free(payload);
    }
}

/* ---- fragmented messages from wslay ------------------------------------- */

struct frag_src {
    const uint8_t *data;
    size_t len, pos;
    const size_t *chunks;
    size_t nchunks, calls;
    size_t ping_at; /* queue a ping while producing this fragment (SIZE_MAX: never) */
};

static ssize_t frag_read(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                         const union wslay_event_msg_source *source, int *eof, void *user)
{
    struct frag_src *s = source->data;
    size_t n = s->chunks[s->calls % s->nchunks];
    (void)user;

    if (s->calls == s->ping_at) {
        struct wslay_event_msg ping = {WS_OP_PING, (const uint8_t *)"mid", 3};
        assert_int_equal(wslay_event_queue_msg(ctx, &ping), 0);
    }
    s->calls++;
    if (n > len)
        n = len;
    if (n > s->len - s->pos)
        n = s->len - s->pos;
    memcpy(buf, s->data + s->pos, n);
    s->pos += n;
    *eof = s->pos == s->len;
    return (ssize_t)n;
}

/* Parses a fragmented stream: reassembles the data frames, counts the
 * fragments and the pings found between them, checks the fin/opcode rules. */
static void parse_fragments(struct bytes *b, int opcode, struct bytes *msg, size_t *nfrag,
                            size_t *npings)
{
    size_t off = 0;

    *nfrag = *npings = 0;
    while (off < b->len) {
        struct ws_frame f;
        int rc = ws_parse(b->p + off, b->len - off, BIG_LIMIT, &f, NULL);
        assert_true(rc > 0);
        off += (size_t)rc;
        if (f.opcode == WS_OP_PING) {
            assert_memory_equal(f.payload, "mid", 3);
            (*npings)++;
            continue;
        }
        assert_int_equal(f.opcode, *nfrag == 0 ? opcode : WS_OP_CONT);
        assert_int_equal(f.fin, off == b->len);
        bytes_append(msg, f.payload, f.len);
        (*nfrag)++;
    }
}

static void check_fragmented(int opcode, size_t len, const size_t *chunks, size_t nchunks,
                             size_t ping_at)
{
    uint8_t *payload = pattern(len, opcode == WS_OP_TEXT);
    struct frag_src src = {payload, len, 0, chunks, nchunks, 0, ping_at};
    struct wslay_event_fragmented_msg m;
    struct bytes msg = {0};
    struct peer p;
    size_t nfrag, npings;

    m.opcode = (uint8_t)opcode;
    m.source.data = &src;
    m.read_callback = frag_read;
    peer_init(&p, 1);
    assert_int_equal(wslay_event_queue_fragmented_msg(p.ctx, &m), 0);
    assert_int_equal(wslay_event_send(p.ctx), 0);
    assert_partial_prefixes(p.out.p, ws_header_len(chunks[0]) + 4 + chunks[0]);
    parse_fragments(&p.out, opcode, &msg, &nfrag, &npings);
    assert_int_equal(nfrag, src.calls);
    assert_true(nfrag > 1);
    assert_int_equal(npings, ping_at < src.calls ? 1 : 0);
    assert_int_equal(msg.len, len);
    assert_memory_equal(msg.p, payload, len);
    bytes_free(&msg);
    peer_free(&p);
    free(payload);
}

static void test_parse_wslay_fragmented(void **state)
{
    static const size_t mixed[] = {1, 125, 126, 4096, 300, 127};
    static const size_t ones[] = {1};
    (void)state;
    check_fragmented(WS_OP_TEXT, 70000, mixed, 6, SIZE_MAX);
    check_fragmented(WS_OP_BINARY, 65536, mixed, 6, 3);
    check_fragmented(WS_OP_TEXT, 5, ones, 1, 2);
    check_fragmented(WS_OP_BINARY, 2, ones, 1, SIZE_MAX);
}

/* An empty final continuation frame (wslay never sends one, browsers may). */
static void test_parse_empty_final_fragment(void **state)
{
    uint8_t buf[] = {0x01, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2, 0x80, 0x80, 9, 9, 9, 9};
    struct ws_frame f;
    (void)state;

    assert_int_equal(ws_parse(buf, sizeof buf, 10, &f, NULL), 8);
    assert_int_equal(f.fin, 0);
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_memory_equal(f.payload, "hi", 2);
    assert_int_equal(ws_parse(buf + 8, sizeof buf - 8, 10, &f, NULL), 6);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.opcode, WS_OP_CONT);
    assert_int_equal(f.len, 0);
}

/* ---- server frames from ws_write_header -> wslay -------------------------- */

static void check_server_frame(int opcode, size_t len)
{
    struct bytes b = {0};
    uint8_t *payload = pattern(len, opcode == WS_OP_TEXT);
    struct peer p;

    server_encode(&b, opcode, payload, len);
    peer_init(&p, 1);
    peer_feed(&p, b.p, b.len);
    assert_int_equal(p.in_pos, b.len);
    assert_int_equal(p.nmsgs, 1);
    assert_int_equal(p.msgs[0].opcode, opcode);
    assert_int_equal(p.msgs[0].len, len);
    if (len)
        assert_memory_equal(p.msgs[0].data, payload, len);
    assert_true(wslay_event_get_read_enabled(p.ctx));
    peer_free(&p);
    free(payload);
    bytes_free(&b);
}

static void test_wslay_decodes_server_frames(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_LENGTHS; i++) {
        check_server_frame(WS_OP_TEXT, test_lengths[i]);
        check_server_frame(WS_OP_BINARY, test_lengths[i]);
    }
    check_server_frame(WS_OP_PONG, 0);
    check_server_frame(WS_OP_PONG, 125);
}

/* Our ping reaches wslay, wslay's pong comes back through ws_parse. */
static void test_wslay_ping_roundtrip(void **state)
{
    struct bytes b = {0};
    struct ws_frame f;
    struct peer p;
    (void)state;

    server_encode(&b, WS_OP_PING, (const uint8_t *)"hb", 2);
    peer_init(&p, 1);
    peer_feed(&p, b.p, b.len);
    assert_int_equal(p.nmsgs, 1);
    assert_int_equal(p.msgs[0].opcode, WS_OP_PING);
    assert_int_equal(ws_parse(p.out.p, p.out.len, 125, &f, NULL), (int)p.out.len);
    assert_int_equal(f.opcode, WS_OP_PONG);
    assert_int_equal(f.len, 2);
    assert_memory_equal(f.payload, "hb", 2);
    peer_free(&p);
    bytes_free(&b);
}

/* Our close reaches wslay with its code; wslay's echo parses back. */
static void check_close_roundtrip(uint16_t code, const char *reason)
{
    uint8_t payload[125];
    size_t n = ws_close_payload(payload, code, reason);
    struct bytes b = {0};
    struct ws_frame f;
    uint16_t got = 0;
    struct peer p;

    server_encode(&b, WS_OP_CLOSE, payload, n);
    peer_init(&p, 1);
    peer_feed(&p, b.p, b.len);
    assert_int_equal(p.nmsgs, 1);
    assert_int_equal(p.msgs[0].opcode, WS_OP_CLOSE);
    assert_int_equal(p.msgs[0].status, code);
    assert_int_equal(p.msgs[0].len, n);
    assert_memory_equal(p.msgs[0].data, payload, n);
    assert_true(wslay_event_get_close_received(p.ctx));
    assert_int_equal(ws_parse(p.out.p, p.out.len, 125, &f, NULL), (int)p.out.len);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(ws_parse_close(f.payload, f.len, &got), 0);
    assert_int_equal(got, code);
    peer_free(&p);
    bytes_free(&b);
}

static void test_wslay_close_roundtrip(void **state)
{
    char long_reason[300];
    (void)state;
    memset(long_reason, 'x', sizeof long_reason - 1);
    long_reason[sizeof long_reason - 1] = '\0';
    check_close_roundtrip(1000, "");
    check_close_roundtrip(1001, "server draining");
    check_close_roundtrip(1009, "frame too big");
    check_close_roundtrip(4001, "token expired");
    check_close_roundtrip(1008, long_reason);
}

static void test_wslay_decodes_many_server_frames(void **state)
{
    struct bytes b = {0};
    uint8_t *big = pattern(70000, 1);
    struct peer p;
    (void)state;

    server_encode(&b, WS_OP_TEXT, (const uint8_t *)"{\"op\":\"hello\"}", 14);
    server_encode(&b, WS_OP_PING, NULL, 0);
    server_encode(&b, WS_OP_TEXT, big, 70000);
    server_encode(&b, WS_OP_BINARY, big, 126);
    peer_init(&p, 1);
    peer_feed(&p, b.p, b.len);
    assert_int_equal(p.nmsgs, 4);
    assert_int_equal(p.msgs[0].len, 14);
    assert_int_equal(p.msgs[1].opcode, WS_OP_PING);
    assert_int_equal(p.msgs[2].len, 70000);
    assert_memory_equal(p.msgs[2].data, big, 70000);
    assert_int_equal(p.msgs[3].opcode, WS_OP_BINARY);
    peer_free(&p);
    bytes_free(&b);
    free(big);
}

/* ---- protocol violations ------------------------------------------------- */

/* 1 if a wslay server takes the bytes as one good message. */
static int wslay_server_accepts(const uint8_t *buf, size_t len)
{
    struct peer p;
    int ok;

    peer_init(&p, 0);
    peer_feed(&p, buf, len);
    ok = p.nmsgs == 1 && wslay_event_get_read_enabled(p.ctx);
    peer_free(&p);
    return ok;
}

/* A masked frame with a raw first byte and a raw 7-bit length field. */
static size_t raw_frame(uint8_t *out, uint8_t b0, uint8_t len7, const uint8_t *ext, size_t ext_len,
                        size_t payload_len)
{
    size_t n = 0;
    out[n++] = b0;
    out[n++] = (uint8_t)(0x80 | len7);
    if (ext_len)
        memcpy(out + n, ext, ext_len);
    n += ext_len;
    memcpy(out + n, "\x11\x22\x33\x44", 4);
    n += 4;
    memset(out + n, 0x55, payload_len);
    return n + payload_len;
}

/* Full frame: WS_ERROR with a reason, and wslay refuses it too. Prefixes:
 * PARTIAL until the offending byte arrives, WS_ERROR from then on. */
static void assert_violation(uint8_t *buf, size_t len)
{
    struct ws_frame f;
    const char *err = NULL;
    int seen_error = 0;

    assert_int_equal(ws_parse(buf, len, BIG_LIMIT, &f, &err), WS_ERROR);
    assert_non_null(err);
    assert_false(wslay_server_accepts(buf, len));
    for (size_t k = 0; k <= len; k++) {
        int rc = ws_parse(buf, k, BIG_LIMIT, &f, NULL);
        if (seen_error)
            assert_int_equal(rc, WS_ERROR);
        else
            assert_true(rc == WS_PARTIAL || rc == WS_ERROR);
        seen_error = rc == WS_ERROR;
    }
}

static void test_unmasked_frame(void **state)
{
    uint8_t text[] = {0x81, 0x03, 'a', 'b', 'c'};
    uint8_t ping[] = {0x89, 0x00};
    struct bytes b = {0};
    struct ws_frame f;
    (void)state;

    assert_violation(text, sizeof text);
    assert_violation(ping, sizeof ping);
    /* Our own server frames are unmasked: a server must refuse them. */
    server_encode(&b, WS_OP_BINARY, (const uint8_t *)"12345678", 8);
    assert_int_equal(ws_parse(b.p, 2, BIG_LIMIT, &f, NULL), WS_ERROR);
    bytes_free(&b);
}

static void test_rsv_bits(void **state)
{
    static const uint8_t rsv[] = {0x40, 0x20, 0x10, 0x70};
    uint8_t buf[16];
    (void)state;
    for (size_t i = 0; i < sizeof rsv; i++) {
        size_t n = raw_frame(buf, (uint8_t)(0x81 | rsv[i]), 1, NULL, 0, 1);
        assert_violation(buf, n);
        n = raw_frame(buf, (uint8_t)(0x89 | rsv[i]), 0, NULL, 0, 0);
        assert_violation(buf, n);
    }
}

static void test_unknown_opcode(void **state)
{
    static const uint8_t ops[] = {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF};
    uint8_t buf[16];
    (void)state;
    for (size_t i = 0; i < sizeof ops; i++) {
        size_t n = raw_frame(buf, (uint8_t)(0x80 | ops[i]), 2, NULL, 0, 2);
        assert_violation(buf, n);
    }
}

static void test_fragmented_control(void **state)
{
    static const uint8_t ops[] = {WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG};
    uint8_t buf[16];
    (void)state;
    for (size_t i = 0; i < sizeof ops; i++) {
        size_t n = raw_frame(buf, ops[i], 0, NULL, 0, 0);
        assert_violation(buf, n);
    }
}

static void test_control_too_long(void **state)
{
    static const uint8_t ops[] = {0x88, 0x89, 0x8A};
    uint8_t buf[300];
    struct ws_frame f;
    size_t n;
    (void)state;

    for (size_t i = 0; i < sizeof ops; i++) {
        n = raw_frame(buf, ops[i], 126, (const uint8_t *)"\x00\x7E", 2, 126);
        assert_violation(buf, n);
        n = raw_frame(buf, ops[i], 127, (const uint8_t *)"\0\0\0\0\0\1\0\0", 8, 0);
        assert_int_equal(ws_parse(buf, n, BIG_LIMIT, &f, NULL), WS_ERROR);
        /* The limit is 125: exactly 125 is fine. */
        n = raw_frame(buf, ops[i], 125, NULL, 0, 125);
        assert_int_equal(ws_parse(buf, n, BIG_LIMIT, &f, NULL), (int)n);
    }
}

static void test_length_encoding(void **state)
{
    uint8_t buf[16];
    struct ws_frame f;
    size_t n;
    (void)state;

    /* 64-bit length with the top bit set. */
    n = raw_frame(buf, 0x82, 127, (const uint8_t *)"\x80\0\0\0\0\0\0\0", 8, 0);
    assert_int_equal(ws_parse(buf, n, SIZE_MAX, &f, NULL), WS_ERROR);
    assert_false(wslay_server_accepts(buf, n));
    /* Non-minimal encodings (RFC 6455 5.2), which wslay refuses as well. */
    n = raw_frame(buf, 0x82, 126, (const uint8_t *)"\x00\x05", 2, 5);
    assert_violation(buf, n);
    n = raw_frame(buf, 0x82, 126, (const uint8_t *)"\x00\x7D", 2, 0);
    assert_int_equal(ws_parse(buf, n, BIG_LIMIT, &f, NULL), WS_ERROR);
    n = raw_frame(buf, 0x82, 127, (const uint8_t *)"\0\0\0\0\0\0\xFF\xFF", 8, 0);
    assert_int_equal(ws_parse(buf, n, BIG_LIMIT, &f, NULL), WS_ERROR);
    assert_false(wslay_server_accepts(buf, n));
}

/* WS_TOO_BIG is decided from the header alone: no mask key, no payload. */
static void test_too_big_from_header(void **state)
{
    uint8_t h7[] = {0x82, 0x80 | 100};
    uint8_t h16[] = {0x82, 0xFE, 0x01, 0x00};
    uint8_t h64[] = {0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0};
    uint8_t huge[] = {0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    uint8_t ping[] = {0x89, 0x80 | 125};
    struct ws_frame f;
    const char *err = NULL;
    (void)state;

    assert_int_equal(ws_parse(h7, 2, 99, &f, &err), WS_TOO_BIG);
    assert_non_null(err);
    assert_int_equal(ws_parse(h7, 2, 100, &f, NULL), WS_PARTIAL);
    assert_int_equal(ws_parse(h16, 3, 255, &f, NULL), WS_PARTIAL);
    assert_int_equal(ws_parse(h16, 4, 255, &f, NULL), WS_TOO_BIG);
    assert_int_equal(ws_parse(h16, 4, 256, &f, NULL), WS_PARTIAL);
    assert_int_equal(ws_parse(h64, 9, 65535, &f, NULL), WS_PARTIAL);
    assert_int_equal(ws_parse(h64, 10, 65535, &f, NULL), WS_TOO_BIG);
    assert_int_equal(ws_parse(h64, 10, 65536, &f, NULL), WS_PARTIAL);
    /* A length that would not fit the int return is too big for any limit. */
    assert_int_equal(ws_parse(huge, 10, SIZE_MAX, &f, NULL), WS_TOO_BIG);
    assert_int_equal(ws_parse(ping, 2, 100, &f, NULL), WS_TOO_BIG);
}

/* The 64 KiB limit of PROTOCOL.md against a real 70000-byte wslay frame. */
static void test_too_big_wslay_frame(void **state)
{
    struct bytes b = {0};
    uint8_t *payload = pattern(70000, 1);
    struct ws_frame f;
    (void)state;

    client_encode(&b, WS_OP_TEXT, payload, 70000, 9);
    for (size_t k = 0; k < 10; k++)
        assert_int_equal(ws_parse(b.p, k, 65536, &f, NULL), WS_PARTIAL);
    for (size_t k = 10; k <= b.len; k += 997)
        assert_int_equal(ws_parse(b.p, k, 65536, &f, NULL), WS_TOO_BIG);
    free(payload);
    bytes_free(&b);
}

/* ---- header writer ------------------------------------------------------- */

static void test_write_header(void **state)
{
    uint8_t h[10];
    (void)state;

    assert_int_equal(ws_header_len(0), 2);
    assert_int_equal(ws_header_len(125), 2);
    assert_int_equal(ws_header_len(126), 4);
    assert_int_equal(ws_header_len(65535), 4);
    assert_int_equal(ws_header_len(65536), 10);
    assert_int_equal(ws_header_len(70000), 10);

    assert_int_equal(ws_write_header(h, WS_OP_TEXT, 125), 2);
    assert_memory_equal(h, "\x81\x7D", 2);
    assert_int_equal(ws_write_header(h, WS_OP_BINARY, 126), 4);
    assert_memory_equal(h, "\x82\x7E\x00\x7E", 4);
    assert_int_equal(ws_write_header(h, WS_OP_TEXT, 65535), 4);
    assert_memory_equal(h, "\x81\x7E\xFF\xFF", 4);
    assert_int_equal(ws_write_header(h, WS_OP_TEXT, 70000), 10);
    assert_memory_equal(h, "\x81\x7F\0\0\0\0\0\x01\x11\x70", 10);
    assert_int_equal(ws_write_header(h, WS_OP_CLOSE, 0), 2);
    assert_memory_equal(h, "\x88\x00", 2);
    /* Junk above the opcode bits never reaches RSV. */
    ws_write_header(h, 0xF1, 0);
    assert_int_equal(h[0], 0x81);
}

/* ---- accept key ---------------------------------------------------------- */

static void test_accept_key(void **state)
{
    char out[29];
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    (void)state;

    assert_int_equal(ws_accept_key(key, strlen(key), out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* Only the first key_len bytes count. */
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==garbage", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    assert_int_equal(ws_accept_key(key, 23, out), -1);
    assert_int_equal(ws_accept_key("", 0, out), -1);
    assert_int_equal(ws_accept_key(NULL, 24, out), -1);
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=x", 24, out), -1);
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25j*Q==", 24, out), -1);
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ== ", 25, out), -1);
    assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ", 22, out), -1);
}

/* ---- close payloads ------------------------------------------------------ */

static int parse_close(const char *p, size_t len, uint16_t *code)
{
    return ws_parse_close((const uint8_t *)p, len, code);
}

static void test_parse_close_cases(void **state)
{
    static const uint16_t good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                    1011, 1012, 1013, 1014, 3000, 3999, 4000, 4001, 4999};
    static const uint16_t bad[] = {0,    1,    999,  1004, 1005, 1006, 1015, 1016,
                                   1100, 2000, 2999, 5000, 0xFFFF};
    uint16_t code = 0;
    (void)state;

    assert_int_equal(parse_close("", 0, &code), 0);
    assert_int_equal(code, 1005);
    assert_int_equal(parse_close("\x03", 1, &code), -1);
    assert_int_equal(parse_close("\x03\xE8", 2, &code), 0);
    assert_int_equal(code, 1000);
    assert_int_equal(parse_close("\x0F\xA1" "bye \xF0\x9F\x91\x8B", 10, &code), 0);
    assert_int_equal(code, 4001);
    assert_int_equal(parse_close("\x03\xE8\xFF", 3, &code), -1);
    assert_int_equal(parse_close("\x03\xE8" "ab\xC3", 5, &code), -1);
    assert_int_equal(parse_close("\x03\xE8\xED\xA0\x80", 5, &code), -1);
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint8_t p[2] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i]};
        assert_int_equal(ws_parse_close(p, 2, &code), 0);
        assert_int_equal(code, good[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t p[2] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
        assert_int_equal(ws_parse_close(p, 2, &code), -1);
    }
}

/* Every code, against wslay's own check. The one deliberate difference:
 * 1012-1014 (IANA-registered after RFC 6455) are valid for us, not for
 * wslay 1.1.1. */
static void test_close_codes_vs_wslay(void **state)
{
    (void)state;
    for (uint32_t c = 0; c <= 0xFFFF; c++) {
        uint8_t payload[2] = {(uint8_t)(c >> 8), (uint8_t)c};
        struct bytes b = {0};
        struct peer p;
        uint16_t code;
        int ours = ws_parse_close(payload, 2, &code) == 0;
        int theirs;

        server_encode(&b, WS_OP_CLOSE, payload, 2);
        peer_init(&p, 1);
        peer_feed(&p, b.p, b.len);
        theirs = p.nmsgs == 1;
        if (c >= 1012 && c <= 1014)
            assert_true(ours && !theirs);
        else if (ours != theirs)
            fail_msg("close code %u: ours %d, wslay %d", (unsigned)c, ours, theirs);
        peer_free(&p);
        bytes_free(&b);
    }
}

static void test_close_payload(void **state)
{
    uint8_t out[125];
    char reason[200];
    uint16_t code = 0;
    size_t n;
    (void)state;

    n = ws_close_payload(out, 1000, NULL);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "\x03\xE8", 2);
    n = ws_close_payload(out, 4001, "token expired");
    assert_int_equal(n, 15);
    assert_memory_equal(out, "\x0F\xA1token expired", 15);

    memset(reason, 'a', sizeof reason - 1);
    reason[sizeof reason - 1] = '\0';
    assert_int_equal(ws_close_payload(out, 1008, reason), 125);
    assert_int_equal(ws_parse_close(out, 125, &code), 0);
    assert_int_equal(code, 1008);

    /* 122 ASCII + a 2-byte character straddling the 123-byte cut: the whole
     * character goes, so the payload stays valid UTF-8. */
    memcpy(reason + 122, "\xC3\xA9", 3);
    n = ws_close_payload(out, 1000, reason);
    assert_int_equal(n, 124);
    assert_int_equal(ws_parse_close(out, n, &code), 0);
    /* 121 ASCII + a 4-byte character cut after its 2nd byte. */
    memset(reason, 'a', 121);
    memcpy(reason + 121, "\xF0\x9F\x91\x8B", 5);
    n = ws_close_payload(out, 1000, reason);
    assert_int_equal(n, 123);
    assert_int_equal(ws_parse_close(out, n, &code), 0);
    /* Exactly 123 bytes ending in a full 4-byte character: kept whole. */
    memset(reason, 'a', 119);
    memcpy(reason + 119, "\xF0\x9F\x91\x8B", 5);
    n = ws_close_payload(out, 1000, reason);
    assert_int_equal(n, 125);
    assert_memory_equal(out + 121, "\xF0\x9F\x91\x8B", 4);
}

/* ---- UTF-8 --------------------------------------------------------------- */

struct utf8_case {
    const char *s;
    size_t len;
    int valid;
};

#define U(lit, v) {lit, sizeof(lit) - 1, v}

static const struct utf8_case utf8_cases[] = {
    U("", 1),
    U("hello, world", 1),
    U("\xC3\xA9", 1),                                  /* U+00E9 */
    U("\xE2\x82\xAC", 1),                              /* U+20AC */
    U("\xF0\x9D\x84\x9E", 1),                          /* U+1D11E, 4 bytes */
    U("\xF0\x90\x80\x80", 1),                          /* U+10000, smallest 4-byte */
    U("\xF4\x8F\xBF\xBF", 1),                          /* U+10FFFF, the last */
    U("\xED\x9F\xBF", 1),                              /* U+D7FF, before surrogates */
    U("\xEE\x80\x80", 1),                              /* U+E000, after them */
    U("\xEF\xBF\xBF", 1),                              /* U+FFFF */
    U("\x00", 1),                                      /* NUL is a character */
    U("abcdefg\xC3\xA9xyzabcdefgh\xF0\x9F\x91\x8B", 1), /* across the 8-byte steps */
    U("\xC0\x80", 0),                                  /* overlong NUL */
    U("\xC1\xBF", 0),                                  /* overlong U+7F */
    U("\xE0\x80\x80", 0),                              /* overlong 3-byte */
    U("\xE0\x9F\xBF", 0),                              /* overlong U+7FF */
    U("\xF0\x80\x80\x80", 0),                          /* overlong 4-byte */
    U("\xF0\x8F\xBF\xBF", 0),                          /* overlong U+FFFF */
    U("\xED\xA0\x80", 0),                              /* U+D800 surrogate */
    U("\xED\xBF\xBF", 0),                              /* U+DFFF surrogate */
    U("\xED\xA0\xBD\xED\xB2\xA9", 0),                  /* CESU-8 surrogate pair */
    U("\xF4\x90\x80\x80", 0),                          /* U+110000 */
    U("\xF5\x80\x80\x80", 0),
    U("\xFE", 0),
    U("\xFF", 0),
    U("\x80", 0),                                      /* lone continuation */
    U("a\xBF", 0),
    U("\xC3", 0),                                      /* truncated 2-byte */
    U("\xE2\x82", 0),                                  /* truncated 3-byte */
    U("\xF0\x9D\x84", 0),                              /* truncated 4-byte */
    U("\xE2\x82" "A", 0),                              /* cut by ASCII */
    U("\xC3\xA9\xC3", 0),
    U("abcdefgh\x80", 0),                              /* after a fast 8-byte step */
    U("abcdefghijklmno\xF0\x9D\x84", 0),
    U("\xF0\x9D\x84\x9E\x9E", 0),                      /* one continuation too many */
};

static void test_utf8_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof utf8_cases / sizeof utf8_cases[0]; i++) {
        const struct utf8_case *c = &utf8_cases[i];
        if (ws_utf8_valid((const uint8_t *)c->s, c->len) != c->valid)
            fail_msg("utf8 case %zu: expected %d", i, c->valid);
    }
}

/* Independent reference: decode the code point arithmetically and reject
 * overlongs, surrogates and values above U+10FFFF (RFC 3629). */
static int ref_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if ((s[i] & 0xE0) == 0xC0) {
            n = 2;
            cp = s[i] & 0x1Fu;
        } else if ((s[i] & 0xF0) == 0xE0) {
            n = 3;
            cp = s[i] & 0x0Fu;
        } else if ((s[i] & 0xF8) == 0xF0) {
            n = 4;
            cp = s[i] & 0x07u;
        } else {
            return 0;
        }
        if (len - i < n)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000))
            return 0;
        if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return 0;
        i += n;
    }
    return 1;
}

/* Every 1-, 2- and 3-byte string, and 4-byte strings over all lead and
 * second bytes, against the reference. */
static void test_utf8_exhaustive(void **state)
{
    static const uint8_t tails[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xC2, 0xFF};
    uint8_t s[4];
    (void)state;

    for (uint32_t v = 0; v < (1u << 24); v++) {
        s[0] = (uint8_t)(v >> 16);
        s[1] = (uint8_t)(v >> 8);
        s[2] = (uint8_t)v;
        for (size_t n = 1; n <= 3; n++) {
            if (n < 3 && (v & 0xFF) != 0)
                continue; /* shorter strings: one pass over their prefixes is enough */
            if (ws_utf8_valid(s, n) != ref_utf8_valid(s, n))
                fail_msg("utf8 mismatch: %02x %02x %02x len %zu", s[0], s[1], s[2], n);
        }
    }
    for (uint32_t v = 0; v < (1u << 16); v++) {
        s[0] = (uint8_t)(v >> 8);
        s[1] = (uint8_t)v;
        for (size_t i = 0; i < sizeof tails; i++) {
            for (size_t j = 0; j < sizeof tails; j++) {
                s[2] = tails[i];
                s[3] = tails[j];
                if (ws_utf8_valid(s, 4) != ref_utf8_valid(s, 4))
                    fail_msg("utf8 mismatch: %02x %02x %02x %02x", s[0], s[1], s[2], s[3]);
            }
        }
    }
}

/* wslay validates text frames too: random near-UTF-8 strings sent as our
 * text frames must be accepted by wslay exactly when ws_utf8_valid says so. */
static void test_utf8_vs_wslay(void **state)
{
    static const uint8_t pool[] = {0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1,
                                   0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
    uint32_t rng = 12345;
    (void)state;

    for (int iter = 0; iter < 20000; iter++) {
        uint8_t s[16];
        size_t len;
        struct bytes b = {0};
        struct peer p;
        int ours, theirs;

        rng = rng * 1103515245u + 12345u;
        len = (rng >> 16) % sizeof s;
        for (size_t i = 0; i < len; i++) {
            rng = rng * 1103515245u + 12345u;
            s[i] = pool[(rng >> 16) % sizeof pool];
        }
        ours = ws_utf8_valid(s, len);
        server_encode(&b, WS_OP_TEXT, s, len);
        peer_init(&p, 1);
        peer_feed(&p, b.p, b.len);
        theirs = p.nmsgs == 1;
        if (ours != theirs)
            fail_msg("utf8 vs wslay, iteration %d: ours %d, wslay %d", iter, ours, theirs);
        peer_free(&p);
        bytes_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_wslay_data_frames),
        cmocka_unit_test(test_parse_wslay_control_frames),
        cmocka_unit_test(test_parse_wslay_close),
        cmocka_unit_test(test_parse_back_to_back),
        cmocka_unit_test(test_parse_unmask_alignment),
        cmocka_unit_test(test_parse_wslay_fragmented),
        cmocka_unit_test(test_parse_empty_final_fragment),
        cmocka_unit_test(test_wslay_decodes_server_frames),
        cmocka_unit_test(test_wslay_ping_roundtrip),
        cmocka_unit_test(test_wslay_close_roundtrip),
        cmocka_unit_test(test_wslay_decodes_many_server_frames),
        cmocka_unit_test(test_unmasked_frame),
        cmocka_unit_test(test_rsv_bits),
        cmocka_unit_test(test_unknown_opcode),
        cmocka_unit_test(test_fragmented_control),
        cmocka_unit_test(test_control_too_long),
        cmocka_unit_test(test_length_encoding),
        cmocka_unit_test(test_too_big_from_header),
        cmocka_unit_test(test_too_big_wslay_frame),
        cmocka_unit_test(test_write_header),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_parse_close_cases),
        cmocka_unit_test(test_close_codes_vs_wslay),
        cmocka_unit_test(test_close_payload),
        cmocka_unit_test(test_utf8_cases),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_utf8_vs_wslay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
