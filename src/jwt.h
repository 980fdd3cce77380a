/* jwt: HS256 JSON Web Tokens on libsodium's HMAC-SHA-256 (no other alg is
 * accepted: "none", HS384/HS512, RS*, anything else is refused). Pure
 * functions; the key is the caller's (read-only config). */
#ifndef PARLEY_JWT_H
#define PARLEY_JWT_H

#include <stddef.h>
#include <stdint.h>

enum jwt_rc {
    JWT_OK = 0,
    JWT_MALFORMED = -1, /* not three base64url parts, bad JSON, missing claims */
    JWT_BAD_ALG = -2,   /* header alg is not exactly "HS256" (or typ not JWT when present) */
    JWT_BAD_SIG = -3,   /* signature does not match (constant-time compare) */
    JWT_EXPIRED = -4,   /* now >= exp */
};

struct jwt_claims {
    int64_t sub;        /* user id (the "sub" claim is its decimal string) */
    char name[64];      /* username */
    int64_t iat;        /* seconds */
    int64_t exp;        /* seconds */
};

/* Signs {"alg":"HS256","typ":"JWT"} + claims {"sub","name","iat","exp"}.
 * Returns a malloc'd NUL-terminated token (caller frees). NULL only on caller
 * bugs: an empty key, or c->name not NUL-terminated within its 64 bytes or
 * not UTF-8 (usernames are ASCII, so a validated one never gets NULL). */
char *jwt_sign(const uint8_t *key, size_t key_len, const struct jwt_claims *c);

/* Verifies alg, signature, then exp against now_s (seconds). Fills *c on OK
 * only. An empty key refuses every token (JWT_BAD_SIG); tokens longer than
 * 4096 bytes are JWT_MALFORMED. */
int jwt_verify(const uint8_t *key, size_t key_len, const char *token, size_t token_len,
               int64_t now_s, struct jwt_claims *c);

const char *jwt_strerror(int rc);

#endif
