/* test_json: the checks on JSON objects the store tests share (test_store.c,
 * test_store_v2.c, test_chat_tx.c). Include after cmocka.h: each check fails
 * the test when the field is missing or of another type. */
#ifndef PARLEY_TEST_JSON_H
#define PARLEY_TEST_JSON_H

#include <jansson.h>
#include <stdint.h>

static inline int64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    assert_non_null(v);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static inline const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    assert_non_null(v);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* The role of user in a conversation object, or NULL. */
static inline const char *role_of(json_t *conv, int64_t user)
{
    json_t *members = json_object_get(conv, "members"), *m;
    size_t i;

    json_array_foreach(members, i, m)
        if (jint(m, "id") == user)
            return jstr(m, "role");
    return NULL;
}

#endif
