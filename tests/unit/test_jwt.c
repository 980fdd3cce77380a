/* Unit tests for jwt: round trips, every refusal path, and known answers
 * computed outside this code (openssl dgst -sha256 -hmac, RFC 7515 A.1). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

#define KEY ((const uint8_t *)"test-secret-key-of-some-length")
#define KEY_LEN (sizeof "test-secret-key-of-some-length" - 1)
#define NOW 1700000000

enum alg { ALG_HS256, ALG_HS512, ALG_NONE };

static char *b64(const void *p, size_t n)
{
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *s = malloc(cap);
    assert_non_null(s);
    sodium_bin2base64(s, cap, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return s;
}

/* Appends "." and the alg signature of signed_part (ALG_NONE: nothing), so
 * tests control every byte, including ones our encoder would never emit. */
static char *forge_raw(const char *signed_part, enum alg alg, const uint8_t *key,
                       size_t key_len)
{
    size_t cap = strlen(signed_part) + 200;
    char *t = malloc(cap);
    assert_non_null(t);
    strcpy(t, signed_part);

    char *sig = NULL;
    if (alg == ALG_HS256) {
        unsigned char mac[crypto_auth_hmacsha256_BYTES];
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, key, key_len);
        crypto_auth_hmacsha256_update(&st, (const unsigned char *)t, strlen(t));
        crypto_auth_hmacsha256_final(&st, mac);
        sig = b64(mac, sizeof mac);
    } else if (alg == ALG_HS512) {
        unsigned char mac[crypto_auth_hmacsha512_BYTES];
        crypto_auth_hmacsha512_state st;
        crypto_auth_hmacsha512_init(&st, key, key_len);
        crypto_auth_hmacsha512_update(&st, (const unsigned char *)t, strlen(t));
        crypto_auth_hmacsha512_final(&st, mac);
        sig = b64(mac, sizeof mac);
    }
    strcat(t, ".");
    if (sig)
        strcat(t, sig);
    free(sig);
    return t;
}

/* base64url(header).base64url(payload), signed as forge_raw() does. */
static char *forge(const char *header, const char *payload, enum alg alg,
                   const uint8_t *key, size_t key_len)
{
    char *h = b64(header, strlen(header)), *p = b64(payload, strlen(payload));
    char *hp = malloc(strlen(h) + strlen(p) + 2);
    assert_non_null(hp);
    sprintf(hp, "%s.%s", h, p);
    char *t = forge_raw(hp, alg, key, key_len);
    free(hp);
    free(h);
    free(p);
    return t;
}

#define HS256_HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define GOOD_PAYLOAD "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700000900}"

static int verify(const char *t, struct jwt_claims *c)
{
    return jwt_verify(KEY, KEY_LEN, t, strlen(t), NOW, c);
}

/* Verifies a token forged from header + payload with HS256 and our key. */
static int verify_forged(const char *header, const char *payload)
{
    struct jwt_claims c;
    char *t = forge(header, payload, ALG_HS256, KEY, KEY_LEN);
    int rc = verify(t, &c);
    free(t);
    return rc;
}

static struct jwt_claims sample(void)
{
    struct jwt_claims c = {.sub = 42, .iat = NOW, .exp = NOW + 900};
    strcpy(c.name, "alice");
    return c;
}

/* ---- signing and the happy path ---- */

static void round_trip(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    memset(&out, 0, sizeof out);
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    assert_non_null(t);
    assert_int_equal(verify(t, &out), JWT_OK);
    assert_int_equal(out.sub, 42);
    assert_string_equal(out.name, "alice");
    assert_int_equal(out.iat, NOW);
    assert_int_equal(out.exp, NOW + 900);
    free(t);
}

static void round_trip_extremes(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    in.sub = INT64_MAX;
    memset(in.name, 'n', sizeof in.name - 1); /* 63 bytes: the longest allowed */
    in.name[sizeof in.name - 1] = '\0';
    in.exp = INT64_MAX;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    assert_non_null(t);
    assert_int_equal(verify(t, &out), JWT_OK);
    assert_int_equal(out.sub, INT64_MAX);
    assert_string_equal(out.name, in.name);
    assert_int_equal(out.exp, INT64_MAX);
    free(t);
}

static void uses_token_len_not_nul(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    size_t n = strlen(t);
    char *buf = malloc(n + 8);
    memcpy(buf, t, n);
    memcpy(buf + n, "garbage", 8); /* beyond token_len: must be ignored */
    assert_int_equal(jwt_verify(KEY, KEY_LEN, buf, n, NOW, &out), JWT_OK);
    /* ...but bytes inside token_len are the token. */
    assert_int_not_equal(jwt_verify(KEY, KEY_LEN, buf, n + 7, NOW, &out), JWT_OK);
    free(buf);
    free(t);
}

static void long_key_round_trip(void **state)
{
    (void)state;
    uint8_t key[200]; /* longer than the HMAC block: gets hashed first */
    memset(key, 0xa5, sizeof key);
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(key, sizeof key, &in);
    assert_int_equal(jwt_verify(key, sizeof key, t, strlen(t), NOW, &out), JWT_OK);
    assert_int_equal(jwt_verify(key, sizeof key - 1, t, strlen(t), NOW, &out), JWT_BAD_SIG);
    free(t);
}

static void sign_refuses_caller_bugs(void **state)
{
    (void)state;
    struct jwt_claims c = sample();
    assert_null(jwt_sign(KEY, 0, &c));
    assert_null(jwt_sign(NULL, 0, &c));
    strcpy(c.name, "bad\xff");
    assert_null(jwt_sign(KEY, KEY_LEN, &c)); /* not UTF-8 */
    memset(c.name, 'a', sizeof c.name);      /* not NUL-terminated */
    assert_null(jwt_sign(KEY, KEY_LEN, &c));
}

/* ---- time ---- */

static void expired(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, t, strlen(t), in.exp + 1, &out), JWT_EXPIRED);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, t, strlen(t), in.exp + 100000, &out), JWT_EXPIRED);
    free(t);
}

static void exp_equal_now_is_expired(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, t, strlen(t), in.exp, &out), JWT_EXPIRED);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, t, strlen(t), in.exp - 1, &out), JWT_OK);
    free(t);
}

/* ---- signature ---- */

static void bad_signature(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    char *sig = strrchr(t, '.') + 1;
    sig[0] = sig[0] == 'A' ? 'B' : 'A'; /* first char: keeps the base64 canonical */
    assert_int_equal(verify(t, &out), JWT_BAD_SIG);
    free(t);
}

static void other_key(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign((const uint8_t *)"another key", 11, &in);
    assert_int_equal(verify(t, &out), JWT_BAD_SIG);
    free(t);
}

static void empty_key_refuses_everything(void **state)
{
    (void)state;
    struct jwt_claims out;
    char *t = forge(HS256_HDR, GOOD_PAYLOAD, ALG_HS256, (const uint8_t *)"", 0);
    assert_int_equal(jwt_verify((const uint8_t *)"", 0, t, strlen(t), NOW, &out), JWT_BAD_SIG);
    assert_int_equal(jwt_verify(NULL, 0, t, strlen(t), NOW, &out), JWT_BAD_SIG);
    free(t);
}

static void tampered_payload(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    const char *sig = strrchr(t, '.');
    /* Same header and signature, payload claiming another user. */
    char *evil_pay = b64("{\"sub\":\"1\",\"name\":\"admin\",\"iat\":1700000000,\"exp\":1700000900}",
                         strlen("{\"sub\":\"1\",\"name\":\"admin\",\"iat\":1700000000,\"exp\":1700000900}"));
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s.%s%s", (int)(strchr(t, '.') - t), t, evil_pay, sig);
    assert_int_equal(verify(buf, &out), JWT_BAD_SIG);
    free(evil_pay);
    free(t);
}

static void short_or_long_signature(void **state)
{
    (void)state;
    struct jwt_claims out;
    char *t = forge(HS256_HDR, GOOD_PAYLOAD, ALG_HS256, KEY, KEY_LEN);
    char buf[1024];
    /* 42 chars: the first 31 bytes of the MAC (canonical only by luck, so
     * accept either refusal), and the real MAC plus 3 more bytes. */
    snprintf(buf, sizeof buf, "%.*s", (int)(strlen(t) - 1), t);
    assert_int_not_equal(verify(buf, &out), JWT_OK);
    snprintf(buf, sizeof buf, "%sAAAA", t);
    assert_int_equal(verify(buf, &out), JWT_BAD_SIG);
    free(t);
}

/* ---- algorithm ---- */

static void alg_none_empty_signature(void **state)
{
    (void)state;
    struct jwt_claims out;
    char *t = forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", GOOD_PAYLOAD, ALG_NONE, NULL, 0);
    assert_int_equal(verify(t, &out), JWT_BAD_ALG);
    free(t);
    /* Even carrying a valid HS256 MAC, "none" is refused. */
    assert_int_equal(verify_forged("{\"alg\":\"none\",\"typ\":\"JWT\"}", GOOD_PAYLOAD), JWT_BAD_ALG);
}

static void alg_hs512_refused(void **state)
{
    (void)state;
    struct jwt_claims out;
    char *t = forge("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", GOOD_PAYLOAD, ALG_HS512, KEY, KEY_LEN);
    assert_int_equal(verify(t, &out), JWT_BAD_ALG);
    free(t);
}

static void alg_variants_refused(void **state)
{
    (void)state;
    static const char *headers[] = {
        "{\"typ\":\"JWT\"}",                     /* missing */
        "{\"alg\":\"hs256\",\"typ\":\"JWT\"}",   /* case */
        "{\"alg\":\"HS256 \",\"typ\":\"JWT\"}",  /* trailing space */
        "{\"alg\":\"HS384\"}",
        "{\"alg\":\"RS256\"}",
        "{\"alg\":\"\"}",
        "{\"alg\":256}",                         /* not a string */
        "{\"alg\":null}",
        "{\"alg\":[\"HS256\"]}",
        "{\"alg\":\"HS256\",\"typ\":\"JWS\"}",   /* typ present but not JWT */
        "{\"alg\":\"HS256\",\"typ\":1}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        int rc = verify_forged(headers[i], GOOD_PAYLOAD);
        if (rc != JWT_BAD_ALG)
            fail_msg("header %s: got %d", headers[i], rc);
    }
}

static void header_shapes(void **state)
{
    (void)state;
    /* typ is optional; whitespace and extra fields are fine. */
    assert_int_equal(verify_forged("{\"alg\":\"HS256\"}", GOOD_PAYLOAD), JWT_OK);
    assert_int_equal(verify_forged("{ \"typ\" : \"JWT\",\r\n \"alg\" : \"HS256\", \"kid\":\"1\" }",
                                   GOOD_PAYLOAD), JWT_OK);
    /* Duplicate alg: parsers disagree which wins, so it is refused. */
    assert_int_equal(verify_forged("{\"alg\":\"HS256\",\"alg\":\"none\"}", GOOD_PAYLOAD), JWT_MALFORMED);
    assert_int_equal(verify_forged("{\"alg\":\"none\",\"alg\":\"HS256\"}", GOOD_PAYLOAD), JWT_MALFORMED);
    /* Not an object, not JSON, trailing bytes after the object. */
    assert_int_equal(verify_forged("[\"HS256\"]", GOOD_PAYLOAD), JWT_MALFORMED);
    assert_int_equal(verify_forged("\"HS256\"", GOOD_PAYLOAD), JWT_MALFORMED);
    assert_int_equal(verify_forged("{\"alg\":\"HS256\"", GOOD_PAYLOAD), JWT_MALFORMED);
    assert_int_equal(verify_forged("{\"alg\":\"HS256\"}x", GOOD_PAYLOAD), JWT_MALFORMED);
    /* Extensions we do not implement must be refused. */
    assert_int_equal(verify_forged("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", GOOD_PAYLOAD),
                     JWT_MALFORMED);
}

/* ---- structure and encoding ---- */

static void wrong_part_counts(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    char buf[1024];

    *strrchr(strcpy(buf, t), '.') = '\0'; /* two parts */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s.", t);  /* four parts, last empty */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s.%s", t, strrchr(t, '.') + 1); /* four parts */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    assert_int_equal(verify("", &out), JWT_MALFORMED);
    assert_int_equal(verify("abc", &out), JWT_MALFORMED);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, NULL, 0, NOW, &out), JWT_MALFORMED);
    free(t);
}

static void empty_parts(void **state)
{
    (void)state;
    struct jwt_claims out;
    char *t = forge(HS256_HDR, GOOD_PAYLOAD, ALG_HS256, KEY, KEY_LEN);
    char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
    char buf[1024];

    assert_int_equal(verify("..", &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s", d1); /* empty header */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%.*s.%s", (int)(d1 - t), t, d2); /* empty payload */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%.*s.", (int)(d2 - t), t); /* empty signature */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    free(t);
}

static void garbage_base64(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
    int hl = (int)(d1 - t), pl = (int)(d2 - d1 - 1);
    char buf[1024];

    assert_int_equal(verify("!!!.@@@.###", &out), JWT_MALFORMED);
    /* Payloads with padding, other alphabets, impossible lengths or trailing
     * bytes, under a valid signature, so the refusal comes from decoding and
     * not from the MAC. */
    static const char *bad_payloads[] = {"=", "+", "/", " ", "A", "Zm9v=", "Zm9", "Zm8"};
    for (size_t i = 0; i < sizeof bad_payloads / sizeof bad_payloads[0]; i++) {
        snprintf(buf, sizeof buf, "%.*s.%.*s%s", hl, t, pl, d1 + 1, bad_payloads[i]);
        char *f = forge_raw(buf, ALG_HS256, KEY, KEY_LEN);
        int rc = verify(f, &out);
        free(f);
        if (rc != JWT_MALFORMED)
            fail_msg("payload suffix '%s': got %d", bad_payloads[i], rc);
    }
    snprintf(buf, sizeof buf, "%s=", t); /* padding on the signature */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s\n", t); /* trailing newline */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%s ", t); /* trailing space */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, " %s", t); /* leading space */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%.*s+.%s", hl, t, d1 + 1); /* standard, not url, alphabet */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);
    snprintf(buf, sizeof buf, "%.*sA.%s", hl, t, d1 + 1); /* impossible length (4n+1) */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);

    /* An embedded NUL inside token_len is not part of any alphabet. */
    size_t n = strlen(t);
    memcpy(buf, t, n + 1);
    buf[hl / 2] = '\0';
    assert_int_equal(jwt_verify(KEY, KEY_LEN, buf, n, NOW, &out), JWT_MALFORMED);

    /* 43 signature chars carry 258 bits for 256: setting one of the 2 unused
     * bits gives a second spelling of the same MAC, which is refused. */
    strcpy(buf, t);
    char *last = buf + strlen(buf) - 1;
    *last = (char)(*last + 1); /* a canonical last char has its low 2 bits clear */
    assert_int_equal(verify(buf, &out), JWT_MALFORMED);

    /* A hostile length is refused before anything is decoded. */
    char *huge = malloc(8192);
    memset(huge, 'A', 8191);
    huge[8191] = '\0';
    huge[100] = '.';
    huge[200] = '.';
    assert_int_equal(verify(huge, &out), JWT_MALFORMED);
    free(huge);
    free(t);
}

/* ---- claims ---- */

static void sub_not_numeric(void **state)
{
    (void)state;
    static const char *subs[] = {
        "\"abc\"", "\"\"", "\"0\"", "\"-5\"", "\"+5\"", "\" 5\"", "\"5 \"", "\"05\"",
        "\"1e3\"", "\"0x10\"", "\"4.2\"", "\"9223372036854775808\"",
        "\"99999999999999999999\"", "42", "null", "true", "[\"42\"]",
    };
    char payload[256];
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(payload, sizeof payload,
                 "{\"sub\":%s,\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700000900}", subs[i]);
        int rc = verify_forged(HS256_HDR, payload);
        if (rc != JWT_MALFORMED)
            fail_msg("sub %s: got %d", subs[i], rc);
    }
    struct jwt_claims c;
    char *t = forge(HS256_HDR,
                    "{\"sub\":\"9223372036854775807\",\"name\":\"a\",\"iat\":1,\"exp\":1700000900}",
                    ALG_HS256, KEY, KEY_LEN);
    assert_int_equal(verify(t, &c), JWT_OK);
    assert_int_equal(c.sub, INT64_MAX);
    free(t);
}

static void other_claims_checked(void **state)
{
    (void)state;
    static const char *payloads[] = {
        "{}",
        "[]",
        "{\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700000900}",           /* no sub */
        "{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700000900}",               /* no name */
        "{\"sub\":\"42\",\"name\":\"alice\",\"exp\":1700000900}",               /* no iat */
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000}",               /* no exp */
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":1.7e9}", /* real */
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":\"1700000900\"}",
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":\"now\",\"exp\":1700000900}",
        "{\"sub\":\"42\",\"name\":7,\"iat\":1700000000,\"exp\":1700000900}",
        "{\"sub\":\"42\",\"name\":\"a\\u0000b\",\"iat\":1700000000,\"exp\":1700000900}",
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700000900,\"exp\":9999999999}",
        "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700000900}trailing",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        int rc = verify_forged(HS256_HDR, payloads[i]);
        if (rc != JWT_MALFORMED)
            fail_msg("payload %s: got %d", payloads[i], rc);
    }
}

static void name_length_limit(void **state)
{
    (void)state;
    char payload[256], name[80];
    memset(name, 'x', sizeof name);
    name[63] = '\0';
    snprintf(payload, sizeof payload,
             "{\"sub\":\"42\",\"name\":\"%s\",\"iat\":1700000000,\"exp\":1700000900}", name);
    assert_int_equal(verify_forged(HS256_HDR, payload), JWT_OK);
    name[63] = 'x';
    name[64] = '\0';
    snprintf(payload, sizeof payload,
             "{\"sub\":\"42\",\"name\":\"%s\",\"iat\":1700000000,\"exp\":1700000900}", name);
    assert_int_equal(verify_forged(HS256_HDR, payload), JWT_MALFORMED);
}

static void claims_untouched_on_failure(void **state)
{
    (void)state;
    struct jwt_claims in = sample(), out, before;
    memset(&out, 0x5a, sizeof out);
    before = out;
    char *t = jwt_sign(KEY, KEY_LEN, &in);
    assert_int_equal(jwt_verify(KEY, KEY_LEN, t, strlen(t), in.exp, &out), JWT_EXPIRED);
    assert_memory_equal(&out, &before, sizeof out);
    assert_int_equal(jwt_verify(KEY, 3, t, strlen(t), NOW, &out), JWT_BAD_SIG);
    assert_memory_equal(&out, &before, sizeof out);
    free(t);
}

/* ---- known answers ---- */

/* Built by hand with coreutils basenc and
 *   printf '%s' "$H.$P" | openssl dgst -sha256 -hmac 'parley-known-answer-key' -binary
 * for H = {"alg":"HS256","typ":"JWT"} and
 *     P = {"sub":"42","name":"alice","iat":1700000000,"exp":1700000900}. */
#define KAT_KEY "parley-known-answer-key"
#define KAT_HDR "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
#define KAT_PAY "eyJzdWIiOiI0MiIsIm5hbWUiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwOTAwfQ"
#define KAT_SIG "SPUfHNVPBLqxtdA4YInlHgjaRRjUlA3snQDWfYpMWAE"
/* Same header and payload, key = 100 bytes of 'k' (longer than the HMAC
 * block, so HMAC hashes the key first). */
#define KAT_LONG_SIG "G7ADozgO-HKBBoTi3hUVsruLB90tB9ZATby9Ha7bMbU"

static void known_answer(void **state)
{
    (void)state;
    const char *tok = KAT_HDR "." KAT_PAY "." KAT_SIG;
    const uint8_t *key = (const uint8_t *)KAT_KEY;
    size_t key_len = strlen(KAT_KEY);
    struct jwt_claims c;

    assert_int_equal(jwt_verify(key, key_len, tok, strlen(tok), NOW, &c), JWT_OK);
    assert_int_equal(c.sub, 42);
    assert_string_equal(c.name, "alice");
    assert_int_equal(c.iat, 1700000000);
    assert_int_equal(c.exp, 1700000900);

    /* jwt_sign emits byte-for-byte the same token for the same claims. */
    char *t = jwt_sign(key, key_len, &c);
    assert_string_equal(t, tok);
    free(t);

    uint8_t long_key[100];
    memset(long_key, 'k', sizeof long_key);
    const char *long_tok = KAT_HDR "." KAT_PAY "." KAT_LONG_SIG;
    assert_int_equal(jwt_verify(long_key, sizeof long_key, long_tok, strlen(long_tok), NOW, &c),
                     JWT_OK);
    t = jwt_sign(long_key, sizeof long_key, &c);
    assert_string_equal(t, long_tok);
    free(t);
}

/* RFC 7515 appendix A.1: header {"typ":"JWT",CRLF "alg":"HS256"} with a
 * 64-byte binary key. Its claims are not ours, so the right key gets past
 * the signature and stops at the claims (MALFORMED), the wrong key stops at
 * the signature (BAD_SIG): an independent check of our HMAC. */
static void rfc7515_a1(void **state)
{
    (void)state;
    static const uint8_t key[] = {
        0x03, 0x23, 0x35, 0x4b, 0x2b, 0x0f, 0xa5, 0xbc, 0x83, 0x7e, 0x06, 0x65, 0x77,
        0x7b, 0xa6, 0x8f, 0x5a, 0xb3, 0x28, 0xe6, 0xf0, 0x54, 0xc9, 0x28, 0xa9, 0x0f,
        0x84, 0xb2, 0xd2, 0x50, 0x2e, 0xbf, 0xd3, 0xfb, 0x5a, 0x92, 0xd2, 0x06, 0x47,
        0xef, 0x96, 0x8a, 0xb4, 0xc3, 0x77, 0x62, 0x3d, 0x22, 0x3d, 0x2e, 0x21, 0x72,
        0x05, 0x2e, 0x4f, 0x08, 0xc0, 0xcd, 0x9a, 0xf5, 0x67, 0xd0, 0x80, 0xa3,
    };
    const char *tok =
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
        ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    struct jwt_claims c;
    assert_int_equal(jwt_verify(key, sizeof key, tok, strlen(tok), NOW, &c), JWT_MALFORMED);
    assert_int_equal(jwt_verify(key, sizeof key - 1, tok, strlen(tok), NOW, &c), JWT_BAD_SIG);
}

static void strerror_covers_all(void **state)
{
    (void)state;
    int rcs[] = {JWT_OK, JWT_MALFORMED, JWT_BAD_ALG, JWT_BAD_SIG, JWT_EXPIRED, -99};
    for (size_t i = 0; i < sizeof rcs / sizeof rcs[0]; i++) {
        assert_non_null(jwt_strerror(rcs[i]));
        assert_true(strlen(jwt_strerror(rcs[i])) > 0);
    }
    assert_string_not_equal(jwt_strerror(JWT_BAD_ALG), jwt_strerror(JWT_BAD_SIG));
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip),
        cmocka_unit_test(round_trip_extremes),
        cmocka_unit_test(uses_token_len_not_nul),
        cmocka_unit_test(long_key_round_trip),
        cmocka_unit_test(sign_refuses_caller_bugs),
        cmocka_unit_test(expired),
        cmocka_unit_test(exp_equal_now_is_expired),
        cmocka_unit_test(bad_signature),
        cmocka_unit_test(other_key),
        cmocka_unit_test(empty_key_refuses_everything),
        cmocka_unit_test(tampered_payload),
        cmocka_unit_test(short_or_long_signature),
        cmocka_unit_test(alg_none_empty_signature),
        cmocka_unit_test(alg_hs512_refused),
        cmocka_unit_test(alg_variants_refused),
        cmocka_unit_test(header_shapes),
        cmocka_unit_test(wrong_part_counts),
        cmocka_unit_test(empty_parts),
        cmocka_unit_test(garbage_base64),
        cmocka_unit_test(sub_not_numeric),
        cmocka_unit_test(other_claims_checked),
        cmocka_unit_test(name_length_limit),
        cmocka_unit_test(claims_untouched_on_failure),
        cmocka_unit_test(known_answer),
        cmocka_unit_test(rfc7515_a1),
        cmocka_unit_test(strerror_covers_all),
    };
    return cmocka_run_group_tests_name("jwt", tests, NULL, NULL);
}
