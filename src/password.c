/* password: see password.h. */
#include "password.h"

#include <sodium.h>
#include <string.h>

_Static_assert(PASSWORD_HASH_MAX >= crypto_pwhash_STRBYTES,
               "PASSWORD_HASH_MAX must hold any crypto_pwhash_str() output");

/* Only argon2id hashes are ever stored (PROTOCOL.md). crypto_pwhash_str_verify()
 * would also accept argon2i strings; refusing them keeps a row we did not
 * write from ever verifying. */
static const char ARGON2ID_PREFIX[] = crypto_pwhash_argon2id_STRPREFIX;

/* A real argon2id hash of 32 random bytes (thrown away), made once with the
 * same parameters as password_hash(), so verifying against it costs the same
 * time and memory as a real verification. No password matches it in practice.
 * A constant instead of a lazily computed hash: no global mutable state. If
 * the OPSLIMIT/MEMLIMIT below change, regenerate it with the same values. */
static const char DUMMY_HASH[] =
    "$argon2id$v=19$m=65536,t=2,p=1$WlCqgnPm4+Qm8Ovg1Px2Eg$"
    "WWzc8P3UWjWkVwU0jWUP/k4qIboEoyW0ogu/zknZ/7w";

/* Both public calls start here: sodium_init() is idempotent, thread-safe and
 * cheap after its first call, so no caller has to remember it. */
static int ready(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

/* libsodium wants a non-NULL pointer even for an empty password. */
static const char *nonnull(const char *password, size_t len)
{
    return len ? password : "";
}

int password_hash(const char *password, size_t len, char out[PASSWORD_HASH_MAX])
{
    if (ready() < 0 || (len && !password) || len > crypto_pwhash_PASSWD_MAX)
        return -1;
    if (crypto_pwhash_str_alg(out, nonnull(password, len), len,
                              crypto_pwhash_OPSLIMIT_INTERACTIVE,
                              crypto_pwhash_MEMLIMIT_INTERACTIVE,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        return -1; /* out of memory for the 64 MiB work area */
    return 0;
}

int password_verify(const char *hash, const char *password, size_t len)
{
    if (ready() < 0 || !hash || (len && !password) || len > crypto_pwhash_PASSWD_MAX)
        return -1;
    /* libsodium reads the hash as a C string: refuse one that is not
     * terminated within the size any stored hash can have. */
    size_t n = strnlen(hash, crypto_pwhash_STRBYTES);
    if (n == crypto_pwhash_STRBYTES)
        return -1;
    if (strncmp(hash, ARGON2ID_PREFIX, sizeof ARGON2ID_PREFIX - 1) != 0)
        return -1;
    /* ...but declares it as char[crypto_pwhash_STRBYTES], and the compiler
     * holds us to that size (GCC's -Wstringop-overread, once a shorter
     * string such as DUMMY_HASH is inlined here): hand it a full-size,
     * NUL-padded copy, whatever the caller's buffer is. */
    char str[crypto_pwhash_STRBYTES] = {0};
    memcpy(str, hash, n);
    return crypto_pwhash_str_verify(str, nonnull(password, len), len) == 0 ? 0 : -1;
}

int password_verify_dummy(const char *password, size_t len)
{
    /* The result is discarded on purpose: the caller only wants the cost. */
    (void)password_verify(DUMMY_HASH, password, len);
    return -1;
}
