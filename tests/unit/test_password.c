/* Unit tests for password: argon2id hashing and verification. Each hash or
 * verify costs ~64 MiB and tens of milliseconds, so the cases stay few. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "password.h"

#define PW "correct horse battery staple"

static void hash_then_verify(void **state)
{
    (void)state;
    char h[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(PW, strlen(PW), h), 0);
    assert_true(strlen(h) < PASSWORD_HASH_MAX);
    assert_int_equal(password_verify(h, PW, strlen(PW)), 0);
}

static void wrong_password(void **state)
{
    (void)state;
    char h[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(PW, strlen(PW), h), 0);
    assert_int_equal(password_verify(h, "correct horse battery stapler", strlen(PW) + 1), -1);
    assert_int_equal(password_verify(h, "Correct horse battery staple", strlen(PW)), -1);
    /* A prefix of the right password, by length, is not the password. */
    assert_int_equal(password_verify(h, PW, strlen(PW) - 1), -1);
    assert_int_equal(password_verify(h, "", 0), -1);
}

static void hash_is_argon2id_and_salted(void **state)
{
    (void)state;
    char a[PASSWORD_HASH_MAX], b[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(PW, strlen(PW), a), 0);
    assert_int_equal(password_hash(PW, strlen(PW), b), 0);
    assert_memory_equal(a, "$argon2id$", 10);
    /* Interactive limits: 64 MiB, 2 passes (libsodium's encoding). */
    assert_non_null(strstr(a, "$m=65536,t=2,p=1$"));
    assert_string_not_equal(a, b); /* random salt */
    assert_int_equal(password_verify(b, PW, strlen(PW)), 0);
}

static void length_is_explicit(void **state)
{
    (void)state;
    /* Bytes after a NUL count: the length, not strlen, delimits. */
    static const char pw[] = "abc\0defgh";
    char h[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(pw, sizeof pw - 1, h), 0);
    assert_int_equal(password_verify(h, pw, sizeof pw - 1), 0);
    assert_int_equal(password_verify(h, "abc", 3), -1);
}

static void malformed_hash(void **state)
{
    (void)state;
    char h[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(PW, strlen(PW), h), 0);

    assert_int_equal(password_verify("", PW, strlen(PW)), -1);
    assert_int_equal(password_verify("not a hash", PW, strlen(PW)), -1);
    assert_int_equal(password_verify("$argon2id$", PW, strlen(PW)), -1);
    assert_int_equal(password_verify("$argon2id$v=19$m=65536,t=2,p=1$", PW, strlen(PW)), -1);
    assert_int_equal(password_verify(NULL, PW, strlen(PW)), -1);

    char cut[PASSWORD_HASH_MAX];
    strcpy(cut, h);
    cut[strlen(cut) - 5] = '\0'; /* truncated digest */
    assert_int_equal(password_verify(cut, PW, strlen(PW)), -1);

    /* Another algorithm's string is refused even though libsodium knows it. */
    char other[PASSWORD_HASH_MAX];
    strcpy(other, "$argon2i$");
    strcat(other, h + strlen("$argon2id$"));
    assert_int_equal(password_verify(other, PW, strlen(PW)), -1);

    /* No NUL within PASSWORD_HASH_MAX bytes: refused without reading past. */
    char unterminated[PASSWORD_HASH_MAX];
    memset(unterminated, 'a', sizeof unterminated);
    memcpy(unterminated, h, strlen(h));
    assert_int_equal(password_verify(unterminated, PW, strlen(PW)), -1);
}

static void dummy_always_fails(void **state)
{
    (void)state;
    assert_int_equal(password_verify_dummy(PW, strlen(PW)), -1);
    assert_int_equal(password_verify_dummy("", 0), -1);
    assert_int_equal(password_verify_dummy(NULL, 0), -1);
}

static void empty_password(void **state)
{
    (void)state;
    char h[PASSWORD_HASH_MAX];
    /* The module hashes what it is given; the 8-byte minimum is the API's. */
    assert_int_equal(password_hash("", 0, h), 0);
    assert_int_equal(password_verify(h, "", 0), 0);
    assert_int_equal(password_verify(h, NULL, 0), 0);
    assert_int_equal(password_verify(h, "x", 1), -1);
    assert_int_equal(password_hash(NULL, 0, h), 0);
    assert_int_equal(password_verify(h, "", 0), 0);
}

static void null_with_length_refused(void **state)
{
    (void)state;
    char h[PASSWORD_HASH_MAX];
    assert_int_equal(password_hash(NULL, 5, h), -1);
    assert_int_equal(password_hash(PW, strlen(PW), h), 0);
    assert_int_equal(password_verify(h, NULL, 5), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hash_then_verify),
        cmocka_unit_test(wrong_password),
        cmocka_unit_test(hash_is_argon2id_and_salted),
        cmocka_unit_test(length_is_explicit),
        cmocka_unit_test(malformed_hash),
        cmocka_unit_test(dummy_always_fails),
        cmocka_unit_test(empty_password),
        cmocka_unit_test(null_with_length_refused),
    };
    return cmocka_run_group_tests_name("password", tests, NULL, NULL);
}
