/* libFuzzer target for ws.c: runs ws_parse over the input as a stream of
 * frames (the way conn.c will), and checks the invariants a caller relies
 * on. Any violation aborts, so the fuzzer reports it as a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

/* The first input byte picks the limit, so the fuzzer explores both the
 * WS_TOO_BIG path and large frames. */
static size_t pick_limit(uint8_t b)
{
    static const size_t limits[] = {0, 1, 125, 126, 65535, 65536, SIZE_MAX};
    return limits[b % (sizeof limits / sizeof limits[0])];
}

/* A frame that parsed: its payload lies inside the buffer at its end, the
 * result respects the limit and the control-frame rules, and every strict
 * prefix would have been WS_PARTIAL. The prefix check runs on a pristine
 * copy because ws_parse unmasked buf in place. */
static void check_frame(const uint8_t *orig, uint8_t *buf, size_t avail, int rc, size_t limit,
                        const struct ws_frame *f)
{
    size_t n = (size_t)rc;
    uint8_t *copy;
    struct ws_frame g;

    CHECK(n >= 6 && n <= avail);
    CHECK(f->payload + f->len == buf + n);
    CHECK(f->len <= limit);
    CHECK(f->opcode <= WS_OP_BINARY || (f->opcode >= WS_OP_CLOSE && f->opcode <= WS_OP_PONG));
    if (f->opcode >= WS_OP_CLOSE)
        CHECK(f->fin && f->len <= 125);

    copy = malloc(n);
    CHECK(copy != NULL);
    memcpy(copy, orig, n);
    CHECK(ws_parse(copy, n - 1, limit, &g, NULL) == WS_PARTIAL);
    CHECK(ws_parse(copy, n - f->len - 1, limit, &g, NULL) == WS_PARTIAL);
    free(copy);
}

/* What conn.c will do with a parsed frame's payload. */
static void use_payload(const struct ws_frame *f)
{
    uint16_t code = 0;

    if (f->opcode == WS_OP_CLOSE && ws_parse_close(f->payload, f->len, &code) == 0)
        CHECK(code == 1005 || (code >= 1000 && code <= 4999));
    if (f->opcode == WS_OP_TEXT)
        (void)ws_utf8_valid(f->payload, f->len);
}

static void fuzz_stream(const uint8_t *data, size_t size)
{
    size_t limit = pick_limit(data[0]);
    uint8_t *buf = malloc(size);
    size_t off = 1;

    CHECK(buf != NULL);
    memcpy(buf, data, size);
    while (off < size) {
        struct ws_frame f;
        const char *err = NULL;
        int rc = ws_parse(buf + off, size - off, limit, &f, &err);

        if (rc < 0) {
            CHECK(rc == WS_PARTIAL || rc == WS_ERROR || rc == WS_TOO_BIG);
            CHECK((rc == WS_PARTIAL) == (err == NULL));
            break;
        }
        check_frame(data + off, buf + off, size - off, rc, limit, &f);
        use_payload(&f);
        off += (size_t)rc;
    }
    free(buf);
}

/* Encoder properties: a header we write has the length ws_header_len says,
 * and a close payload built from valid UTF-8 always parses back. */
static void fuzz_encoders(const uint8_t *data, size_t size)
{
    uint8_t hdr[10], close[125];
    char reason[256];
    size_t rlen = size < sizeof reason - 1 ? size : sizeof reason - 1;
    uint16_t code = 0;
    char accept[29];

    CHECK(ws_write_header(hdr, data[0] & 0xF, size) == ws_header_len(size));
    memcpy(reason, data, rlen);
    reason[rlen] = '\0';
    rlen = strlen(reason);
    if (ws_utf8_valid((const uint8_t *)reason, rlen)) {
        size_t n = ws_close_payload(close, 4000, reason);
        CHECK(n >= 2 && n <= 125);
        CHECK(ws_parse_close(close, n, &code) == 0 && code == 4000);
    }
    (void)ws_parse_close(data, size, &code);
    (void)ws_utf8_valid(data, size);
    if (ws_accept_key((const char *)data, size, accept) == 0)
        CHECK(strlen(accept) == 28);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    fuzz_stream(data, size);
    fuzz_encoders(data, size);
    return 0;
}
