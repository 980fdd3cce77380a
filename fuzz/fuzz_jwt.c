/* libFuzzer target for JWT verification: any bytes presented as a token
 * (an Authorization header, ?token=, an auth frame) are verified or refused
 * with one of the codes, never crash; and a token we signed, changed in one
 * byte the input picks, no longer verifies as the same claims unless that
 * byte did not matter. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static const uint8_t key[] = "fuzz-secret-0123456789abcdef";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jwt_claims c;
    int rc = jwt_verify(key, sizeof key - 1, (const char *)data, size, 1000, &c);
    CHECK(rc == JWT_OK || rc == JWT_MALFORMED || rc == JWT_BAD_ALG || rc == JWT_BAD_SIG || rc == JWT_EXPIRED);
    if (rc == JWT_OK)
        CHECK(c.exp > 1000 && c.sub > 0 && memchr(c.name, '\0', sizeof c.name));
    CHECK(jwt_strerror(rc) != NULL);

    /* tampering with a real token */
    if (size < 3)
        return 0;
    struct jwt_claims mine = {.sub = 1 + data[0], .iat = 900, .exp = 5000};
    memcpy(mine.name, "alice", 6);
    char *tok = jwt_sign(key, sizeof key - 1, &mine);
    CHECK(tok != NULL);
    size_t n = strlen(tok), at = ((size_t)data[1] << 8 | data[2]) % n;
    CHECK(jwt_verify(key, sizeof key - 1, tok, n, 1000, &c) == JWT_OK && c.sub == mine.sub);
    char was = tok[at];
    tok[at] = (char)(size > 3 ? data[3] : 'A');
    rc = jwt_verify(key, sizeof key - 1, tok, n, 1000, &c);
    if (tok[at] != was && rc == JWT_OK)
        CHECK(c.sub == mine.sub && c.exp == mine.exp && strcmp(c.name, "alice") == 0);
    free(tok);
    return 0;
}
