/* Unit tests for util: the canonical id parser (one spelling per id: the
 * sync amplification of issue 8 came from "01", " 1" and "+1" all naming
 * conversation 1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util.h"

static void test_parse_id_canonical(void **state)
{
    (void)state;
    int64_t v = -1;
    assert_int_equal(util_parse_id("1", &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(util_parse_id("42", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(util_parse_id("9007199254740991", &v), 0); /* 2^53 - 1 */
    assert_int_equal(v, INT64_C(9007199254740991));
}

static void test_parse_id_refused(void **state)
{
    (void)state;
    static const char *bad[] = {
        "", "0", "00", "01", "001", " 1", "1 ", "+1", "-1", "1.0", "1e3", "0x1", "١",
        "9007199254740992", "99999999999999999999999", "18446744073709551617", "1\n", "\t1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 77;
        assert_int_equal(util_parse_id(bad[i], &v), -1);
        assert_int_equal(v, 77); /* untouched */
    }
    int64_t v;
    assert_int_equal(util_parse_id(NULL, &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_id_canonical),
        cmocka_unit_test(test_parse_id_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
