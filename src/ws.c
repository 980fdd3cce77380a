/* ws: a pure RFC 6455 codec (see ws.h). No I/O, no allocation, no global
 * mutable state: every function works only on the bytes it is given. */
#include "ws.h"

#include <limits.h>
#include <string.h>

#include <nettle/base64.h>
#include <nettle/sha1.h>

/* RFC 6455 section 5.2 header bits. */
#define WS_FIN 0x80u
#define WS_RSV 0x70u
#define WS_OPCODE 0x0Fu
#define WS_MASK 0x80u
#define WS_LEN7 0x7Fu
#define WS_LEN16 126u
#define WS_LEN64 127u
#define WS_MASK_KEY_LEN 4u
#define WS_CONTROL_MAX 125u

/* ws_parse returns the frame size as an int, so a frame must fit one; this cap
 * is far above any sane max_payload and only matters if a caller passes
 * SIZE_MAX. Header (14 bytes at most) + payload must stay <= INT_MAX. */
#define WS_PARSE_HARD_MAX ((uint64_t)INT_MAX - 14u)

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static int set_err(const char **err, const char *reason, int rc)
{
    if (err)
        *err = reason;
    return rc;
}

static int opcode_known(unsigned op)
{
    return op == WS_OP_CONT || op == WS_OP_TEXT || op == WS_OP_BINARY || op == WS_OP_CLOSE ||
           op == WS_OP_PING || op == WS_OP_PONG;
}

static int opcode_is_control(unsigned op)
{
    return (op & 0x8u) != 0;
}

/* Checks the first byte alone, so garbage is refused as soon as it arrives
 * instead of waiting for a length that may never come. */
static int check_byte0(uint8_t b0, const char **err)
{
    unsigned op = b0 & WS_OPCODE;

    if (b0 & WS_RSV)
        return set_err(err, "RSV bits set without a negotiated extension", WS_ERROR);
    if (!opcode_known(op))
        return set_err(err, "unknown opcode", WS_ERROR);
    if (opcode_is_control(op) && !(b0 & WS_FIN))
        return set_err(err, "fragmented control frame", WS_ERROR);
    return 0;
}

static int check_byte1(uint8_t b0, uint8_t b1, const char **err)
{
    if (!(b1 & WS_MASK))
        return set_err(err, "unmasked client frame", WS_ERROR);
    if (opcode_is_control(b0 & WS_OPCODE) && (b1 & WS_LEN7) > WS_CONTROL_MAX)
        return set_err(err, "control frame longer than 125 bytes", WS_ERROR);
    return 0;
}

static uint64_t read_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Decodes the payload length. Returns the size of the length field after
 * byte 1 (0, 2 or 8), WS_PARTIAL if it has not fully arrived, or WS_ERROR. */
static int read_length(const uint8_t *buf, size_t len, uint64_t *plen, const char **err)
{
    unsigned len7 = buf[1] & WS_LEN7;
    size_t ext = len7 == WS_LEN16 ? 2 : len7 == WS_LEN64 ? 8 : 0;

    if (len - 2 < ext)
        return WS_PARTIAL;
    *plen = ext ? read_be(buf + 2, ext) : len7;
    if (ext == 8 && (*plen >> 63))
        return set_err(err, "64-bit payload length with the top bit set", WS_ERROR);
    /* RFC 6455 5.2: "the minimal number of bytes MUST be used". A longer
     * encoding only serves to smuggle frames past naive length checks. */
    if ((ext == 2 && *plen < WS_LEN16) || (ext == 8 && *plen <= 0xFFFF))
        return set_err(err, "payload length not minimally encoded", WS_ERROR);
    return (int)ext;
}

/* XORs the payload with the 4-byte key. Eight bytes at a time through
 * memcpy (no alignment or aliasing assumptions): the key repeats every 4
 * bytes, so a doubled key covers 8. */
static void unmask(uint8_t *p, size_t n, const uint8_t key[4])
{
    uint8_t key8[8];
    uint64_t k, w;
    size_t i = 0;

    memcpy(key8, key, 4);
    memcpy(key8 + 4, key, 4);
    memcpy(&k, key8, 8);
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        w ^= k;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= key[i & 3];
}

int ws_parse(uint8_t *buf, size_t len, size_t max_payload, struct ws_frame *f, const char **err)
{
    uint64_t plen = 0;
    size_t hdr;
    int rc;

    if (err)
        *err = NULL;
    if (len < 1)
        return WS_PARTIAL;
    if ((rc = check_byte0(buf[0], err)) < 0)
        return rc;
    if (len < 2)
        return WS_PARTIAL;
    if ((rc = check_byte1(buf[0], buf[1], err)) < 0)
        return rc;
    if ((rc = read_length(buf, len, &plen, err)) < 0)
        return rc;
    /* The length is known: refuse an oversized frame now, before the peer
     * makes us buffer its payload. */
    if (plen > max_payload || plen > WS_PARSE_HARD_MAX)
        return set_err(err, "payload larger than the limit", WS_TOO_BIG);
    hdr = 2 + (size_t)rc + WS_MASK_KEY_LEN;
    /* len >= hdr - 4 here; compare by subtraction so nothing overflows. */
    if (len < hdr || len - hdr < plen)
        return WS_PARTIAL;

    unmask(buf + hdr, (size_t)plen, buf + hdr - WS_MASK_KEY_LEN);
    f->fin = (buf[0] & WS_FIN) != 0;
    f->opcode = buf[0] & WS_OPCODE;
    f->payload = buf + hdr;
    f->len = (size_t)plen;
    return (int)(hdr + (size_t)plen);
}

size_t ws_header_len(size_t payload_len)
{
    if (payload_len < WS_LEN16)
        return 2;
    if (payload_len <= 0xFFFF)
        return 4;
    return 10;
}

size_t ws_write_header(uint8_t *out, int opcode, size_t payload_len)
{
    size_t n = ws_header_len(payload_len);
    uint64_t v = payload_len;

    /* Only the low 4 bits are an opcode; masking keeps RSV clear whatever
     * the caller passes, so we never emit a frame peers must reject. */
    out[0] = (uint8_t)(WS_FIN | ((unsigned)opcode & WS_OPCODE));
    if (n == 2) {
        out[1] = (uint8_t)payload_len;
        return n;
    }
    out[1] = (uint8_t)(n == 4 ? WS_LEN16 : WS_LEN64);
    for (size_t i = n; i > 2; i--) {
        out[i - 1] = (uint8_t)(v & 0xFF);
        v >>= 8;
    }
    return n;
}

/* Largest prefix of s[0..n) not ending inside a UTF-8 sequence: a reason
 * cut mid-character would make the peer fail the whole close (RFC 6455 8.1). */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    size_t cut;

    if (n <= max)
        return n;
    cut = max;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

size_t ws_close_payload(uint8_t *out, uint16_t code, const char *reason)
{
    size_t rlen = reason ? utf8_cut(reason, strlen(reason), WS_CONTROL_MAX - 2) : 0;

    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)(code & 0xFF);
    if (rlen)
        memcpy(out + 2, reason, rlen);
    return 2 + rlen;
}

/* Codes a peer may put on the wire (RFC 6455 7.4.1 plus the IANA registry's
 * 1012-1014; 1004-1006 and 1015 are reserved and never sent). Same rule as
 * Node's ws, one of our independent test clients. */
static int close_code_valid(uint16_t code)
{
    if (code >= 1000 && code <= 1014)
        return code != 1004 && code != 1005 && code != 1006;
    return code >= 3000 && code <= 4999;
}

int ws_parse_close(const uint8_t *payload, size_t len, uint16_t *code)
{
    uint16_t c;

    if (len == 0) {
        *code = 1005; /* "no status received" (RFC 6455 7.1.5) */
        return 0;
    }
    if (len == 1)
        return -1;
    c = (uint16_t)((payload[0] << 8) | payload[1]);
    if (!close_code_valid(c) || !ws_utf8_valid(payload + 2, len - 2))
        return -1;
    *code = c;
    return 0;
}

/* Length of the sequence led by b and the allowed range of its SECOND byte
 * (RFC 3629 section 4); the narrowed ranges exclude overlongs (E0, F0),
 * surrogates (ED) and code points above U+10FFFF (F4). 0 if b cannot lead. */
static size_t utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b == 0xE0)
        *lo = 0xA0;
    else if (b == 0xED)
        *hi = 0x9F;
    if (b >= 0xE0 && b <= 0xEF)
        return 3;
    if (b == 0xF0)
        *lo = 0x90;
    else if (b == 0xF4)
        *hi = 0x8F;
    if (b >= 0xF0 && b <= 0xF4)
        return 4;
    return 0; /* continuation byte, C0/C1 (always overlong) or F5..FF */
}

/* Validates one multi-byte sequence at s[0..len); returns its length or 0. */
static size_t utf8_seq(const uint8_t *s, size_t len)
{
    uint8_t lo, hi;
    size_t n = utf8_lead(s[0], &lo, &hi);

    if (n == 0 || len < n)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

int ws_utf8_valid(const uint8_t *s, size_t len)
{
    const uint64_t high = 0x8080808080808080ull;
    size_t i = 0;

    while (i < len) {
        uint64_t w;
        size_t n;

        /* Chat text is mostly ASCII: skip 8 plain bytes at a time. */
        if (len - i >= 8) {
            memcpy(&w, s + i, 8);
            if (!(w & high)) {
                i += 8;
                continue;
            }
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        if ((n = utf8_seq(s + i, len - i)) == 0)
            return 0;
        i += n;
    }
    return 1;
}

/* RFC 6455 4.2.1: the key is base64 of a 16-byte nonce, i.e. exactly 22
 * base64 characters and "==". Same check as Node's ws; anything else is a
 * bad handshake (400), not something to hash. */
static int key_valid(const char *key, size_t key_len)
{
    if (!key || key_len != 24 || key[22] != '=' || key[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++) {
        unsigned char c = (unsigned char)key[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '+' || c == '/';
        if (!ok)
            return 0;
    }
    return 1;
}

int ws_accept_key(const char *key, size_t key_len, char out[29])
{
    struct sha1_ctx ctx;
    uint8_t digest[SHA1_DIGEST_SIZE];

    if (!key_valid(key, key_len))
        return -1;
    sha1_init(&ctx);
    sha1_update(&ctx, key_len, (const uint8_t *)key);
    sha1_update(&ctx, sizeof ws_guid - 1, (const uint8_t *)ws_guid);
    sha1_digest(&ctx, sizeof digest, digest);
    base64_encode_raw(out, sizeof digest, digest); /* exactly 28 characters */
    out[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE)] = '\0';
    return 0;
}
