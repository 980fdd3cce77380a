/* Unit tests for proto_parse: every client op, and every way a frame can be
 * refused (the code and the echoed id the client sees). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "proto.h"

static int parse(const char *text, struct proto_op *op, const char **code)
{
    const char *msg = NULL;
    *code = NULL;
    int rc = proto_parse(text, strlen(text), 4096, op, code, &msg);
    if (rc < 0)
        assert_non_null(msg);
    return rc;
}

static void test_send_ok(void **state)
{
    (void)state;
    struct proto_op op;
    const char *code;
    assert_int_equal(parse("{\"op\":\"send\",\"id\":\"c1\",\"conv\":42,\"body\":\"hi\"}", &op, &code), 0);
    assert_int_equal(op.kind, OP_SEND);
    assert_string_equal(op.id, "c1");
    assert_int_equal(op.conv, 42);
    assert_int_equal(op.body_len, 2);
    assert_memory_equal(op.body, "hi", 2);
    proto_op_dispose(&op);
}

static void test_send_body_with_nul(void **state)
{
    (void)state;
    struct proto_op op;
    const char *code;
    assert_int_equal(parse("{\"op\":\"send\",\"id\":\"x\",\"conv\":1,\"body\":\"a\\u0000b\"}", &op, &code), 0);
    assert_int_equal(op.body_len, 3);
    assert_memory_equal(op.body, "a\0b", 3);
    proto_op_dispose(&op);
}

static void test_send_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *code, *id;
    } cases[] = {
        {"{\"op\":\"send\",\"conv\":1,\"body\":\"x\"}", "bad_request", NULL},
        {"{\"op\":\"send\",\"id\":\"\",\"conv\":1,\"body\":\"x\"}", "bad_request", NULL},
        {"{\"op\":\"send\",\"id\":5,\"conv\":1,\"body\":\"x\"}", "bad_request", NULL},
        {"{\"op\":\"send\",\"id\":\"a\",\"body\":\"x\"}", "bad_request", "a"},
        {"{\"op\":\"send\",\"id\":\"a\",\"conv\":\"1\",\"body\":\"x\"}", "bad_request", "a"},
        {"{\"op\":\"send\",\"id\":\"a\",\"conv\":-3,\"body\":\"x\"}", "bad_request", "a"},
        {"{\"op\":\"send\",\"id\":\"a\",\"conv\":1,\"body\":\"\"}", "bad_request", "a"},
        {"{\"op\":\"send\",\"id\":\"a\",\"conv\":1,\"body\":7}", "bad_request", "a"},
        {"{\"op\":\"send\",\"id\":\"a\\u0000b\",\"conv\":1,\"body\":\"x\"}", "bad_request", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct proto_op op;
        const char *code;
        assert_int_equal(parse(cases[i].text, &op, &code), -1);
        assert_string_equal(code, cases[i].code);
        if (cases[i].id)
            assert_string_equal(op.id, cases[i].id);
        else
            assert_null(op.id);
        proto_op_dispose(&op);
    }
}

static void test_send_limits(void **state)
{
    (void)state;
    char frame[6000], id[200];
    struct proto_op op;
    const char *code, *msg;
    /* 4096 bytes: allowed; 4097: too_large, with the id echoed */
    for (int n = 4096; n <= 4097; n++) {
        int len = snprintf(frame, sizeof frame, "{\"op\":\"send\",\"id\":\"big\",\"conv\":1,\"body\":\"%0*d\"}", n, 0);
        int rc = proto_parse(frame, (size_t)len, 4096, &op, &code, &msg);
        assert_int_equal(rc, n == 4096 ? 0 : -1);
        if (rc < 0) {
            assert_string_equal(code, "too_large");
            assert_string_equal(op.id, "big");
        }
        proto_op_dispose(&op);
    }
    /* the client id: 128 characters (multi-byte ones count once) but not 129 */
    memset(id, 0, sizeof id);
    for (int i = 0; i < 64; i++)
        memcpy(id + 2 * i, "\xc3\xa9", 2); /* 64 x U+00E9, 128 bytes */
    int len = snprintf(frame, sizeof frame, "{\"op\":\"send\",\"id\":\"%s%s\",\"conv\":1,\"body\":\"x\"}", id,
                       "0123456789012345678901234567890123456789012345678901234567890123");
    assert_int_equal(proto_parse(frame, (size_t)len, 4096, &op, &code, &msg), 0);
    proto_op_dispose(&op);
    len = snprintf(frame, sizeof frame, "{\"op\":\"send\",\"id\":\"%s%s\",\"conv\":1,\"body\":\"x\"}", id,
                   "01234567890123456789012345678901234567890123456789012345678901234");
    assert_int_equal(proto_parse(frame, (size_t)len, 4096, &op, &code, &msg), -1);
    proto_op_dispose(&op);
}

static void test_other_ops(void **state)
{
    (void)state;
    struct proto_op op;
    const char *code;
    assert_int_equal(parse("{\"op\":\"auth\",\"token\":\"abc\"}", &op, &code), 0);
    assert_int_equal(op.kind, OP_AUTH);
    assert_string_equal(op.token, "abc");
    proto_op_dispose(&op);

    assert_int_equal(parse("{\"op\":\"sync\",\"since\":{\"42\":16,\"7\":0}}", &op, &code), 0);
    assert_int_equal(op.kind, OP_SYNC);
    assert_int_equal(json_object_size(op.since), 2);
    proto_op_dispose(&op);

    assert_int_equal(parse("{\"op\":\"sync\"}", &op, &code), 0);
    assert_null(op.since);
    proto_op_dispose(&op);

    assert_int_equal(parse("{\"op\":\"read\",\"conv\":42,\"seq\":17}", &op, &code), 0);
    assert_int_equal(op.kind, OP_READ);
    assert_int_equal(op.conv, 42);
    assert_int_equal(op.seq, 17);
    proto_op_dispose(&op);

    assert_int_equal(parse("{\"op\":\"typing\",\"conv\":9}", &op, &code), 0);
    assert_int_equal(op.kind, OP_TYPING);
    assert_int_equal(op.conv, 9);
    proto_op_dispose(&op);

    assert_int_equal(parse("{\"op\":\"ping\"}", &op, &code), 0);
    assert_int_equal(op.kind, OP_PING);
    proto_op_dispose(&op);
}

static void test_refused_frames(void **state)
{
    (void)state;
    static const char *bad[] = {
        "", "not json", "[1,2]", "\"op\"", "{\"op\":\"nope\"}", "{}", "{\"op\":5}",
        "{\"op\":\"send\",\"op\":\"ping\"}", /* duplicate keys */
        "{\"op\":\"auth\"}", "{\"op\":\"auth\",\"token\":\"\"}", "{\"op\":\"sync\",\"since\":[1]}",
        "{\"op\":\"read\",\"conv\":1}", "{\"op\":\"read\",\"conv\":1,\"seq\":-1}", "{\"op\":\"typing\"}",
        "{\"op\":\"ping\"} trailing",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct proto_op op;
        const char *code;
        assert_int_equal(parse(bad[i], &op, &code), -1);
        assert_string_equal(code, "bad_request");
        proto_op_dispose(&op);
    }
}

/* Valid JSON that jansson cannot hold (issue 8, item 10): the number is read
 * as null, so the field is refused by name and a send's id is echoed. */
static void test_numbers_out_of_range(void **state)
{
    (void)state;
    static const struct {
        const char *text, *id, *message;
    } cases[] = {
        {"{\"op\":\"send\",\"id\":\"a1\",\"conv\":1e400,\"body\":\"x\"}", "a1", "send needs conv: a conversation id"},
        {"{\"op\":\"send\",\"id\":\"a2\",\"conv\":99999999999999999999999,\"body\":\"x\"}", "a2",
         "send needs conv: a conversation id"},
        {"{\"op\":\"send\",\"conv\":-1e999,\"id\":\"a3\",\"body\":\"1e400 is text\"}", "a3",
         "send needs conv: a conversation id"},
        {"{\"op\":\"read\",\"conv\":1,\"seq\":1e400}", NULL, "read needs conv and seq"},
        {"{\"op\":\"typing\",\"conv\":18446744073709551616}", NULL, "typing needs conv"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct proto_op op;
        const char *code, *msg = NULL;
        assert_int_equal(proto_parse(cases[i].text, strlen(cases[i].text), 4096, &op, &code, &msg), -1);
        assert_string_equal(code, "bad_request");
        assert_string_equal(msg, cases[i].message);
        if (cases[i].id)
            assert_string_equal(op.id, cases[i].id);
        else
            assert_null(op.id);
        proto_op_dispose(&op);
    }
    /* elsewhere in the frame it changes nothing; a body keeps its text */
    struct proto_op op;
    const char *code = NULL, *msg = NULL;
    const char *ping = "{\"op\":\"ping\",\"x\":[1e400,2]}";
    assert_int_equal(proto_parse(ping, strlen(ping), 4096, &op, &code, &msg), 0);
    assert_int_equal(op.kind, OP_PING);
    proto_op_dispose(&op);
    const char *send = "{\"op\":\"send\",\"id\":\"b\",\"conv\":2,\"body\":\"1e400 \\\"9e999\\\"\",\"n\":1e400}";
    assert_int_equal(proto_parse(send, strlen(send), 4096, &op, &code, &msg), 0);
    assert_int_equal(op.conv, 2);
    assert_string_equal(op.body, "1e400 \"9e999\"");
    proto_op_dispose(&op);
    /* not JSON stays not JSON */
    const char *bad = "{\"op\":\"send\",\"conv\":1e400";
    assert_int_equal(proto_parse(bad, strlen(bad), 4096, &op, &code, &msg), -1);
    assert_string_equal(msg, "malformed JSON: expected one object per frame");
    proto_op_dispose(&op);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_ok),     cmocka_unit_test(test_send_body_with_nul),
        cmocka_unit_test(test_send_errors), cmocka_unit_test(test_send_limits),
        cmocka_unit_test(test_other_ops),   cmocka_unit_test(test_refused_frames),
        cmocka_unit_test(test_numbers_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
