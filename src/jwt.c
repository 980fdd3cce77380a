/* jwt: see jwt.h.
 *
 * Verification order matters: split, then the header's alg (so a token with
 * "alg":"none" or any other algorithm never reaches signature code), then the
 * signature in constant time over the exact bytes received, and only then the
 * claims, so unauthenticated claims are never interpreted. */
#include "jwt.h"

#include "util.h"

#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B64URL sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define SIG_BYTES crypto_auth_hmacsha256_BYTES
/* Our tokens are ~200 bytes; the cap keeps hostile input from making us
 * allocate and parse megabytes before the signature check. */
#define TOKEN_MAX 4096

/* base64url('{"alg":"HS256","typ":"JWT"}'): the only header we emit. */
static const char HEADER_B64[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

struct parts {
    const char *hdr, *pay, *sig;
    size_t hdr_len, pay_len, sig_len;
    size_t signed_len; /* "header.payload": what the signature covers */
};

/* Encodes bin[0..n) as base64url without padding; malloc'd. */
static char *b64url_encode(const unsigned char *bin, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, B64URL);
    char *out = xmalloc(cap);
    sodium_bin2base64(out, cap, bin, n, B64URL);
    return out;
}

/* Decodes all of s[0..n) (no padding, no ignored characters, canonical
 * trailing bits) into a malloc'd buffer in *out. 0 or -1. */
static int b64url_decode(const char *s, size_t n, unsigned char **out, size_t *out_len)
{
    size_t cap = n / 4 * 3 + 3;
    unsigned char *bin = xmalloc(cap);

    /* A NULL b64_end makes libsodium fail unless every byte was consumed. */
    if (n == 0 || sodium_base642bin(bin, cap, s, n, NULL, out_len, NULL, B64URL) != 0) {
        free(bin);
        return -1;
    }
    *out = bin;
    return 0;
}

static void hmac(const uint8_t *key, size_t key_len, const char *msg, size_t msg_len,
                 unsigned char mac[SIG_BYTES])
{
    crypto_auth_hmacsha256_state st;

    /* init/update/final rather than crypto_auth_hmacsha256(): that one
     * insists on a 32-byte key, and the configured secret can be any length. */
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, msg_len);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
}

/* ---- signing ---- */

static char *claims_json(const struct jwt_claims *c, size_t name_len)
{
    char sub[24];
    snprintf(sub, sizeof sub, "%" PRId64, c->sub);

    json_t *name = json_stringn(c->name, name_len); /* NULL unless UTF-8 */
    if (!name)
        return NULL;
    json_t *o = json_object();
    json_object_set_new(o, "sub", json_string(sub));
    json_object_set_new(o, "name", name);
    json_object_set_new(o, "iat", json_integer(c->iat));
    json_object_set_new(o, "exp", json_integer(c->exp));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

char *jwt_sign(const uint8_t *key, size_t key_len, const struct jwt_claims *c)
{
    size_t name_len = strnlen(c->name, sizeof c->name);

    if (!key || key_len == 0 || name_len == sizeof c->name)
        return NULL;
    char *json = claims_json(c, name_len);
    if (!json)
        return NULL;
    char *pay = b64url_encode((const unsigned char *)json, strlen(json));
    free(json);

    size_t hdr_len = sizeof HEADER_B64 - 1, pay_len = strlen(pay);
    size_t sig_cap = sodium_base64_ENCODED_LEN(SIG_BYTES, B64URL);
    char *tok = xmalloc(hdr_len + 1 + pay_len + 1 + sig_cap);
    size_t n = 0;
    memcpy(tok, HEADER_B64, hdr_len);
    n += hdr_len;
    tok[n++] = '.';
    memcpy(tok + n, pay, pay_len);
    n += pay_len;
    free(pay);

    unsigned char mac[SIG_BYTES];
    hmac(key, key_len, tok, n, mac);
    tok[n++] = '.';
    sodium_bin2base64(tok + n, sig_cap, mac, sizeof mac, B64URL);
    return tok;
}

/* ---- verification ---- */

/* Exactly three dot-separated parts; header and payload non-empty. An empty
 * signature passes here so that "alg":"none" tokens are refused as BAD_ALG. */
static int split(const char *t, size_t n, struct parts *p)
{
    const char *d1 = memchr(t, '.', n);
    if (!d1)
        return -1;
    const char *d2 = memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - t));
    if (!d2 || memchr(d2 + 1, '.', n - (size_t)(d2 + 1 - t)))
        return -1;
    p->hdr = t;
    p->hdr_len = (size_t)(d1 - t);
    p->pay = d1 + 1;
    p->pay_len = (size_t)(d2 - p->pay);
    p->sig = d2 + 1;
    p->sig_len = n - (size_t)(p->sig - t);
    p->signed_len = (size_t)(d2 - t);
    return p->hdr_len && p->pay_len ? 0 : -1;
}

/* Decodes a base64url part that must hold a JSON object. Duplicate keys are
 * refused: parsers disagree on which one wins ("alg" twice is an attack). */
static json_t *decode_object(const char *s, size_t n)
{
    unsigned char *bin;
    size_t len;
    if (b64url_decode(s, n, &bin, &len) < 0)
        return NULL;
    json_t *j = json_loadb((const char *)bin, len, JSON_REJECT_DUPLICATES, NULL);
    free(bin);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* True when j is a JSON string equal to lit, byte for byte (case matters). */
static int string_is(const json_t *j, const char *lit)
{
    return json_is_string(j) && json_string_length(j) == strlen(lit) &&
           memcmp(json_string_value(j), lit, strlen(lit)) == 0;
}

static int check_header(const struct parts *p)
{
    json_t *h = decode_object(p->hdr, p->hdr_len);
    if (!h)
        return JWT_MALFORMED;
    int rc = JWT_OK;
    json_t *typ = json_object_get(h, "typ");
    if (!string_is(json_object_get(h, "alg"), "HS256") || (typ && !string_is(typ, "JWT")))
        rc = JWT_BAD_ALG;
    else if (json_object_get(h, "crit"))
        rc = JWT_MALFORMED; /* we implement no extensions, so must refuse (RFC 7515 4.1.11) */
    json_decref(h);
    return rc;
}

static int check_signature(const uint8_t *key, size_t key_len, const char *t,
                           const struct parts *p)
{
    unsigned char *sig;
    size_t sig_len;
    if (b64url_decode(p->sig, p->sig_len, &sig, &sig_len) < 0)
        return JWT_MALFORMED;
    int rc = JWT_BAD_SIG;
    if (sig_len == SIG_BYTES) {
        unsigned char mac[SIG_BYTES];
        hmac(key, key_len, t, p->signed_len, mac);
        if (sodium_memcmp(sig, mac, SIG_BYTES) == 0)
            rc = JWT_OK;
    }
    free(sig);
    return rc;
}

/* "sub" is the user id as canonical decimal: digits only, no sign, no
 * leading zero, no spaces (strtoll would accept all of those), > 0. */
static int parse_sub(const json_t *j, int64_t *out)
{
    if (!json_is_string(j))
        return -1;
    const char *s = json_string_value(j);
    size_t n = json_string_length(j);
    if (n == 0 || n > 19 || s[0] == '0')
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_claims(const struct parts *p, struct jwt_claims *c)
{
    json_t *o = decode_object(p->pay, p->pay_len);
    if (!o)
        return JWT_MALFORMED;
    int rc = JWT_MALFORMED;
    json_t *iat = json_object_get(o, "iat"), *exp = json_object_get(o, "exp");
    json_t *name = json_object_get(o, "name");
    if (parse_sub(json_object_get(o, "sub"), &c->sub) < 0 || !json_is_integer(iat) ||
        !json_is_integer(exp) || !json_is_string(name))
        goto out;
    size_t name_len = json_string_length(name);
    /* jansson refuses \u0000 by default, so the C string is the whole name. */
    if (name_len >= sizeof c->name)
        goto out;
    memcpy(c->name, json_string_value(name), name_len + 1);
    c->iat = json_integer_value(iat);
    c->exp = json_integer_value(exp);
    rc = JWT_OK;
out:
    json_decref(o);
    return rc;
}

int jwt_verify(const uint8_t *key, size_t key_len, const char *token, size_t token_len,
               int64_t now_s, struct jwt_claims *c)
{
    struct parts p;
    struct jwt_claims tmp;
    int rc;

    if (!token || token_len > TOKEN_MAX || split(token, token_len, &p) < 0)
        return JWT_MALFORMED;
    if ((rc = check_header(&p)) != JWT_OK)
        return rc;
    /* With an empty key anyone could mint tokens: refuse rather than trust. */
    if (!key || key_len == 0)
        return JWT_BAD_SIG;
    if ((rc = check_signature(key, key_len, token, &p)) != JWT_OK)
        return rc;
    if ((rc = parse_claims(&p, &tmp)) != JWT_OK)
        return rc;
    if (now_s >= tmp.exp)
        return JWT_EXPIRED;
    *c = tmp;
    return JWT_OK;
}

const char *jwt_strerror(int rc)
{
    switch (rc) {
    case JWT_OK:
        return "ok";
    case JWT_MALFORMED:
        return "malformed token";
    case JWT_BAD_ALG:
        return "algorithm not allowed";
    case JWT_BAD_SIG:
        return "bad signature";
    case JWT_EXPIRED:
        return "token expired";
    default:
        return "unknown jwt error";
    }
}
