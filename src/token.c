/* token: see token.h. */
#include "token.h"

#include <sodium.h>

#define TOKEN_RAW_BYTES 32

_Static_assert(TOKEN_STR_LEN ==
                   sodium_base64_ENCODED_LEN(TOKEN_RAW_BYTES,
                                             sodium_base64_VARIANT_URLSAFE_NO_PADDING),
               "TOKEN_STR_LEN must hold 32 bytes in base64url without padding, plus NUL");
_Static_assert(TOKEN_HASH_LEN == crypto_hash_sha256_BYTES * 2 + 1,
               "TOKEN_HASH_LEN must hold SHA-256 in hex, plus NUL");

void token_new(char out[TOKEN_STR_LEN])
{
    unsigned char raw[TOKEN_RAW_BYTES];

    /* sodium_init() is idempotent and thread-safe; its result is not needed
     * because randombytes_buf() seeds itself on first use and has no error
     * path (libsodium aborts if the kernel CSPRNG is unusable). */
    int inited = sodium_init();
    (void)inited;
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, TOKEN_STR_LEN, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    /* The raw bytes are the secret; do not leave them on the stack. */
    sodium_memzero(raw, sizeof raw);
}

void token_hash(const char *token, size_t len, char out[TOKEN_HASH_LEN])
{
    unsigned char digest[crypto_hash_sha256_BYTES];

    /* A plain (unsalted) hash is enough: the token has 256 bits of entropy,
     * so it cannot be guessed from its hash, and a deterministic hash lets
     * the store look the token up by equality. */
    crypto_hash_sha256(digest, (const unsigned char *)(len ? token : ""), len);
    sodium_bin2hex(out, TOKEN_HASH_LEN, digest, sizeof digest);
}
