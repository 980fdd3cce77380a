/* Unit tests for api_attach's pure helpers: the Range header (RFC 9110
 * 14.1.2: a-b, a-, -n; several ranges and malformed ones are ignored),
 * If-None-Match (weak comparison, lists, "*"), and Content-Disposition
 * (RFC 6266 with an RFC 8187 filename*: the exact UTF-8 name, and an ASCII
 * fallback that cannot break out of its quotes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api_attach.h"

#include <stdlib.h>
#include <string.h>

static void range_is(const char *h, int64_t size, int want, int64_t ws, int64_t we)
{
    int64_t s = -7, e = -7;
    int rc = api_attach_range(h, size, &s, &e);
    if (rc != want)
        fail_msg("range '%s' of %lld: %d, expected %d", h ? h : "(null)", (long long)size, rc, want);
    if (want == 1) {
        assert_int_equal(s, ws);
        assert_int_equal(e, we);
    }
}

static void test_range(void **state)
{
    (void)state;
    range_is(NULL, 100, 0, 0, 0);
    range_is("bytes=0-9", 100, 1, 0, 9);
    range_is("bytes=10-", 100, 1, 10, 99);
    range_is("bytes=-10", 100, 1, 90, 99);
    range_is("bytes=-1000", 100, 1, 0, 99);
    range_is("bytes=50-5000", 100, 1, 50, 99);
    range_is("bytes=99-99", 100, 1, 99, 99);
    range_is(" Bytes = 1-2 ", 100, 1, 1, 2);
    range_is("bytes=100-", 100, -1, 0, 0);
    range_is("bytes=100-200", 100, -1, 0, 0);
    range_is("bytes=-0", 100, -1, 0, 0);
    range_is("bytes=99999999999999999999999-", 100, -1, 0, 0);
    range_is("bytes=0-99999999999999999999999", 100, 1, 0, 99);
    /* ignored: the whole is sent */
    range_is("bytes=0-1,3-4", 100, 0, 0, 0);
    range_is("bytes=5-1", 100, 0, 0, 0);
    range_is("bytes=-", 100, 0, 0, 0);
    range_is("bytes=a-b", 100, 0, 0, 0);
    range_is("bytes=1-2x", 100, 0, 0, 0);
    range_is("items=0-1", 100, 0, 0, 0);
    range_is("bytes 0-1", 100, 0, 0, 0);
    range_is("", 100, 0, 0, 0);
}

static void test_etag(void **state)
{
    (void)state;
    const char *t = "\"abc\"";
    assert_true(api_attach_etag_match("\"abc\"", t));
    assert_true(api_attach_etag_match("W/\"abc\"", t));
    assert_true(api_attach_etag_match("\"x\", \"abc\"", t));
    assert_true(api_attach_etag_match(" \"x\" ,W/\"abc\" ", t));
    assert_true(api_attach_etag_match("*", t));
    assert_false(api_attach_etag_match("\"abcd\"", t));
    assert_false(api_attach_etag_match("abc", t));
    assert_false(api_attach_etag_match("", t));
    assert_false(api_attach_etag_match("\"ab\", \"c\"", t));
}

static void disposition_is(const char *type, const char *name, const char *want)
{
    char *d = api_attach_disposition(type, name);
    if (strcmp(d, want) != 0)
        fail_msg("disposition of %s '%s':\n  %s\nexpected\n  %s", type, name, d, want);
    free(d);
}

static void test_disposition(void **state)
{
    (void)state;
    disposition_is("image/png", "a.png", "inline; filename=\"a.png\"; filename*=UTF-8''a.png");
    disposition_is("IMAGE/JPEG; x=y", "a.jpg", "inline; filename=\"a.jpg\"; filename*=UTF-8''a.jpg");
    disposition_is("image/gif", "g", "inline; filename=\"g\"; filename*=UTF-8''g");
    disposition_is("image/webp", "w", "inline; filename=\"w\"; filename*=UTF-8''w");
    disposition_is("image/svg+xml", "s.svg", "attachment; filename=\"s.svg\"; filename*=UTF-8''s.svg");
    disposition_is("text/html", "x.html", "attachment; filename=\"x.html\"; filename*=UTF-8''x.html");
    disposition_is("image/pngx", "p", "attachment; filename=\"p\"; filename*=UTF-8''p");
    /* quotes, backslashes, percent, spaces, UTF-8 */
    disposition_is("application/pdf", "a \"b\"\\%.pdf",
                   "attachment; filename=\"a _b___.pdf\"; filename*=UTF-8''a%20%22b%22%5C%25.pdf");
    disposition_is("text/plain", "résumé.txt",
                   "attachment; filename=\"r__sum__.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt");
    disposition_is("text/plain", "a;b,c=d", "attachment; filename=\"a;b,c=d\"; filename*=UTF-8''a%3Bb%2Cc%3Dd");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_range),
        cmocka_unit_test(test_etag),
        cmocka_unit_test(test_disposition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
