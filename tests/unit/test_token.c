/* Unit tests for token: random base64url tokens and their SHA-256 hex hashes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "token.h"

#define N_UNIQUE 1000

static int is_b64url(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

static void length_and_charset(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++) {
        char t[TOKEN_STR_LEN];
        memset(t, '#', sizeof t);
        token_new(t);
        assert_int_equal(strlen(t), TOKEN_STR_LEN - 1); /* 43 */
        for (size_t j = 0; j < TOKEN_STR_LEN - 1; j++)
            if (!is_b64url(t[j]))
                fail_msg("token %s: byte %zu is '%c'", t, j, t[j]);
    }
}

static int cmp(const void *a, const void *b)
{
    return memcmp(a, b, TOKEN_STR_LEN);
}

static void unique(void **state)
{
    (void)state;
    char(*t)[TOKEN_STR_LEN] = calloc(N_UNIQUE, TOKEN_STR_LEN);
    assert_non_null(t);
    for (int i = 0; i < N_UNIQUE; i++)
        token_new(t[i]);
    qsort(t, N_UNIQUE, TOKEN_STR_LEN, cmp);
    for (int i = 1; i < N_UNIQUE; i++)
        if (memcmp(t[i - 1], t[i], TOKEN_STR_LEN) == 0)
            fail_msg("duplicate token %s", t[i]);
    free(t);
}

static void all_positions_vary(void **state)
{
    (void)state;
    /* A stuck byte (say, a buffer never filled) would show as a position
     * that has the same character in every token. */
    char first[TOKEN_STR_LEN], t[TOKEN_STR_LEN];
    int varies[TOKEN_STR_LEN - 1] = {0};
    token_new(first);
    for (int i = 0; i < 200; i++) {
        token_new(t);
        for (size_t j = 0; j < TOKEN_STR_LEN - 1; j++)
            varies[j] |= t[j] != first[j];
    }
    for (size_t j = 0; j < TOKEN_STR_LEN - 1; j++)
        if (!varies[j])
            fail_msg("position %zu never changes", j);
}

static void hash_shape_and_determinism(void **state)
{
    (void)state;
    char t[TOKEN_STR_LEN], h1[TOKEN_HASH_LEN], h2[TOKEN_HASH_LEN], h3[TOKEN_HASH_LEN];
    token_new(t);
    token_hash(t, strlen(t), h1);
    token_hash(t, strlen(t), h2);
    assert_int_equal(strlen(h1), 64);
    for (size_t j = 0; j < 64; j++)
        assert_true((h1[j] >= '0' && h1[j] <= '9') || (h1[j] >= 'a' && h1[j] <= 'f'));
    assert_string_equal(h1, h2);

    token_new(t);
    token_hash(t, strlen(t), h3);
    assert_string_not_equal(h1, h3);
}

static void hash_known_answers(void **state)
{
    (void)state;
    char h[TOKEN_HASH_LEN];
    /* FIPS 180-2 test vectors. */
    token_hash("abc", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    token_hash("", 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    token_hash(NULL, 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* Only token[0..len) counts. */
    token_hash("abcdef", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(length_and_charset),
        cmocka_unit_test(unique),
        cmocka_unit_test(all_positions_vary),
        cmocka_unit_test(hash_shape_and_determinism),
        cmocka_unit_test(hash_known_answers),
    };
    return cmocka_run_group_tests_name("token", tests, NULL, NULL);
}
