/* token: opaque random tokens (refresh tokens, token families) and their
 * stored hashes. Stateless; uses libsodium's CSPRNG. */
#ifndef PARLEY_TOKEN_H
#define PARLEY_TOKEN_H

#include <stddef.h>

#define TOKEN_STR_LEN 44  /* 32 random bytes, base64url without padding = 43 chars + NUL */
#define TOKEN_HASH_LEN 65 /* SHA-256 as lowercase hex + NUL */

/* Fills out with a new random base64url token. */
void token_new(char out[TOKEN_STR_LEN]);
/* Hex SHA-256 of token[0..len): what the database stores. */
void token_hash(const char *token, size_t len, char out[TOKEN_HASH_LEN]);

#endif
