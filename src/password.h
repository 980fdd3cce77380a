/* password: argon2id hashing and verification (libsodium crypto_pwhash_str).
 * Both calls are slow (~90 ms, 64 MiB) by design: call them off the event
 * loops (the worker runs them on libuv's thread pool). Thread-safe, stateless. */
#ifndef PARLEY_PASSWORD_H
#define PARLEY_PASSWORD_H

#include <stddef.h>

/* Size of a buffer that holds any hash string, NUL included. */
#define PASSWORD_HASH_MAX 128

/* Hashes password[0..len) into out (PASSWORD_HASH_MAX bytes). 0 or -1. */
int password_hash(const char *password, size_t len, char out[PASSWORD_HASH_MAX]);
/* 0 when password matches hash, -1 otherwise (including a malformed hash). */
int password_verify(const char *hash, const char *password, size_t len);
/* Runs a verification against a fixed dummy hash, so a login for an unknown
 * user costs the same time as one for a known user. Always returns -1. */
int password_verify_dummy(const char *password, size_t len);

#endif
