/* ws: a pure RFC 6455 codec. No I/O, no allocation except where stated.
 * The connection layer (conn.c) owns sockets and buffers; this module only
 * reads and writes bytes it is given. Server side: incoming frames must be
 * masked, outgoing frames are never masked. */
#ifndef PARLEY_WS_H
#define PARLEY_WS_H

#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Parser results (DESIGN.md rule 2: bytes consumed, -2 partial, -1 error). */
#define WS_PARTIAL (-2)
#define WS_ERROR (-1)
#define WS_TOO_BIG (-3) /* payload length above the caller's limit: close 1009 */

struct ws_frame {
    int fin;
    int opcode;          /* enum ws_opcode */
    const uint8_t *payload; /* points into the caller's buffer, unmasked in place */
    size_t len;
};

/* Parses one client frame at buf[0..len). On success returns the number of
 * bytes it occupies and fills *f; the payload is unmasked IN PLACE (buf is
 * modified). Returns WS_PARTIAL when more bytes are needed, WS_TOO_BIG when
 * the declared payload exceeds max_payload (known from the header alone, before
 * the payload arrives), WS_ERROR on a protocol violation: unmasked frame, RSV
 * bits set, unknown opcode, control frame fragmented or longer than 125 bytes,
 * 64-bit length with the top bit set, length not minimally encoded (RFC 6455
 * 5.2). *err, if not NULL, gets a static reason (NULL on success or partial).
 * Stateless: continuation/fragment sequencing is the caller's job. */
int ws_parse(uint8_t *buf, size_t len, size_t max_payload, struct ws_frame *f, const char **err);

/* Size of the header of an unmasked server frame with this payload length. */
size_t ws_header_len(size_t payload_len);
/* Writes the header of a FIN server frame (no mask) to out (at least 10 bytes);
 * returns its length. The payload goes right after it. */
size_t ws_write_header(uint8_t *out, int opcode, size_t payload_len);

/* Builds a close payload (2-byte code + reason, reason truncated to fit 123
 * bytes, never inside a UTF-8 character) into out (at least 125 bytes);
 * returns its length. reason may be NULL. */
size_t ws_close_payload(uint8_t *out, uint16_t code, const char *reason);

/* Parses a close payload: 0 with *code (1005 when empty), -1 if malformed
 * (length 1, invalid code, or reason not valid UTF-8). */
int ws_parse_close(const uint8_t *payload, size_t len, uint16_t *code);

/* 1 if s[0..len) is valid UTF-8 (RFC 3629: no overlongs, no surrogates). */
int ws_utf8_valid(const uint8_t *s, size_t len);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)).
 * out must hold 29 bytes (28 characters + NUL). Returns 0, or -1 when the key
 * is not the base64 of a 16-byte nonce (22 base64 characters + "=="). */
int ws_accept_key(const char *key, size_t key_len, char out[29]);

#endif
