/* Unit tests of the core's membership rules (chat_tx.c) over a real store,
 * SQLite, and PostgreSQL with --pg (CTest's test_chat_tx_pg): who may add,
 * remove and promote whom, ownership passing on, direct conversations, no
 * existence leaks, the group size cap. Every test runs on a fresh database
 * (store_fixture.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat_tx.h"
#include "store_fixture.h"
#include "test_json.h"

#define setup fx_setup
#define teardown fx_teardown

/* ---- helpers ---- */

static int64_t mkuser(struct store *st, const char *name)
{
    json_t *u = NULL;
    int64_t id;

    assert_int_equal(store_user_create(st, name, NULL, "hash", 1000, &u), STORE_OK);
    id = json_integer_value(json_object_get(u, "id"));
    assert_true(id > 0);
    json_decref(u);
    return id;
}

static int64_t mkgroup(struct store *st, int64_t owner, const int64_t *members, size_t n, int64_t now)
{
    int64_t conv = 0;

    assert_int_equal(store_conv_create_group(st, owner, "room", members, n, now, &conv), STORE_OK);
    assert_true(conv > 0);
    return conv;
}


static const char *role_in(struct store *st, int64_t conv, int64_t viewer, int64_t user)
{
    static char role[16]; /* test-only convenience */
    json_t *c = NULL;
    const char *r;

    assert_int_equal(store_conv_get(st, conv, viewer, &c), STORE_OK);
    r = role_of(c, user);
    snprintf(role, sizeof role, "%s", r ? r : "");
    json_decref(c);
    return role;
}

/* ---- members ---- */

static void test_member_add_remove(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave");
    int64_t g = mkgroup(f->st, a, (int64_t[]){b, c}, 2, 100);
    int added = -1;
    const char *why;

    assert_int_equal(chat_tx_member_add(f->st, g, b, d, 0, 200, &added, &why), STORE_FORBIDDEN);
    assert_int_equal(chat_tx_member_add(f->st, g, d, d, 0, 200, &added, &why), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_add(f->st, g + 10, a, d, 0, 200, &added, &why), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_add(f->st, g, a, d + 100, 0, 200, &added, &why), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_add(f->st, g, a, d, 0, 200, &added, &why), STORE_OK);
    assert_int_equal(added, 1);
    assert_int_equal(chat_tx_member_add(f->st, g, a, d, 0, 300, &added, &why), STORE_OK);
    assert_int_equal(added, 0);
    assert_int_equal(store_is_member(f->st, g, d), STORE_OK);

    assert_int_equal(chat_tx_member_remove(f->st, g, b, c), STORE_FORBIDDEN);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, b, ROLE_ADMIN), STORE_OK);
    assert_string_equal(role_in(f->st, g, a, b), "admin");
    /* An admin may add and remove members, but not the owner. */
    assert_int_equal(chat_tx_member_remove(f->st, g, b, c), STORE_OK);
    assert_int_equal(store_is_member(f->st, g, c), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_remove(f->st, g, b, c), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_remove(f->st, g, b, a), STORE_FORBIDDEN);
    assert_int_equal(chat_tx_member_add(f->st, g, b, c, 0, 400, &added, &why), STORE_OK);
    assert_int_equal(added, 1);
    /* Leaving needs no rank. */
    assert_int_equal(chat_tx_member_remove(f->st, g, d, d), STORE_OK);
    assert_int_equal(store_is_member(f->st, g, d), STORE_NOT_FOUND);
    /* Gone: may no longer act. */
    assert_int_equal(chat_tx_member_remove(f->st, g, d, c), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_remove(f->st, g + 10, a, b), STORE_NOT_FOUND);
    /* The owner removes an admin. */
    assert_int_equal(chat_tx_member_remove(f->st, g, a, b), STORE_OK);
    assert_int_equal(store_is_member(f->st, g, b), STORE_NOT_FOUND);
    assert_string_equal(role_in(f->st, g, a, a), "owner");
}

static void test_set_role(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave");
    int64_t g = mkgroup(f->st, a, (int64_t[]){b, c}, 2, 100);

    assert_int_equal(chat_tx_member_set_role(f->st, g, a, b, ROLE_OWNER), STORE_BAD_REQUEST);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, a, ROLE_MEMBER), STORE_BAD_REQUEST);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, d, ROLE_ADMIN), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_set_role(f->st, g, d, b, ROLE_ADMIN), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_set_role(f->st, g, b, c, ROLE_ADMIN), STORE_FORBIDDEN);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, b, ROLE_ADMIN), STORE_OK);
    /* Admins are not owners. */
    assert_int_equal(chat_tx_member_set_role(f->st, g, b, c, ROLE_ADMIN), STORE_FORBIDDEN);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, b, ROLE_MEMBER), STORE_OK);
    assert_string_equal(role_in(f->st, g, a, b), "member");
}

static void test_owner_transfer(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave");
    int64_t g = mkgroup(f->st, a, &b, 1, 100), *ids = NULL, last = -1;
    size_t n = 99;
    int added;
    const char *why;

    assert_int_equal(chat_tx_member_add(f->st, g, a, d, 0, 300, &added, &why), STORE_OK);
    assert_int_equal(chat_tx_member_add(f->st, g, a, c, 0, 200, &added, &why), STORE_OK);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, d, ROLE_ADMIN), STORE_OK);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, c, ROLE_ADMIN), STORE_OK);

    /* The longest-standing admin (c joined before d), over the older member b. */
    assert_int_equal(chat_tx_member_remove(f->st, g, a, a), STORE_OK);
    assert_string_equal(role_in(f->st, g, b, c), "owner");
    assert_string_equal(role_in(f->st, g, b, d), "admin");
    assert_string_equal(role_in(f->st, g, b, b), "member");
    assert_int_equal(chat_tx_member_remove(f->st, g, c, c), STORE_OK);
    assert_string_equal(role_in(f->st, g, b, d), "owner");
    /* No admin left: the longest-standing member. */
    assert_int_equal(chat_tx_member_remove(f->st, g, d, d), STORE_OK);
    assert_string_equal(role_in(f->st, g, b, b), "owner");
    /* An admin leaving hands nothing on. */
    assert_int_equal(chat_tx_member_add(f->st, g, b, a, 0, 400, &added, &why), STORE_OK);
    assert_int_equal(chat_tx_member_set_role(f->st, g, b, a, ROLE_ADMIN), STORE_OK);
    assert_int_equal(chat_tx_member_remove(f->st, g, a, a), STORE_OK);
    assert_string_equal(role_in(f->st, g, b, b), "owner");
    /* The last one out: the conversation stays, empty. */
    assert_int_equal(chat_tx_member_remove(f->st, g, b, b), STORE_OK);
    assert_int_equal(store_members(f->st, g, &ids, &n), STORE_OK);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(store_conv_last_seq(f->st, g, &last), STORE_OK);
    assert_int_equal(last, 0);
}

static void test_direct_member_ops(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol"), d = 0;
    int created, added = -1;
    const char *why;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    assert_int_equal(chat_tx_member_add(f->st, d, a, c, 0, 200, &added, &why), STORE_BAD_REQUEST);
    assert_int_equal(added, 0);
    assert_int_equal(chat_tx_member_remove(f->st, d, a, a), STORE_BAD_REQUEST);
    assert_int_equal(chat_tx_member_remove(f->st, d, a, b), STORE_BAD_REQUEST);
    assert_int_equal(chat_tx_member_set_role(f->st, d, a, b, ROLE_ADMIN), STORE_BAD_REQUEST);
    /* Outsiders learn nothing. */
    assert_int_equal(chat_tx_member_add(f->st, d, c, c, 0, 200, &added, &why), STORE_NOT_FOUND);
    assert_int_equal(chat_tx_member_remove(f->st, d, c, a), STORE_NOT_FOUND);
    assert_int_equal(store_is_member(f->st, d, a), STORE_OK);
    assert_int_equal(store_is_member(f->st, d, b), STORE_OK);
}

static void test_group_cap(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave");
    int64_t g = mkgroup(f->st, a, &b, 1, 100);
    int added = -1;
    const char *why = NULL;

    /* full at 2: a stranger still learns nothing, a member is told why */
    assert_int_equal(chat_tx_member_add(f->st, g, d, c, 2, 200, &added, &why), STORE_NOT_FOUND);
    assert_null(why);
    assert_int_equal(chat_tx_member_add(f->st, g, a, c, 2, 200, &added, &why), STORE_BAD_REQUEST);
    assert_non_null(why);
    assert_int_equal(added, 0);
    /* adding someone already there is no growth */
    assert_int_equal(chat_tx_member_add(f->st, g, a, b, 2, 200, &added, &why), STORE_OK);
    assert_int_equal(added, 0);
    assert_int_equal(chat_tx_member_add(f->st, g, a, c, 3, 200, &added, &why), STORE_OK);
    assert_int_equal(added, 1);
}

/* ---- changes (version 2) ---- */

static int64_t mksend(struct store *st, int64_t conv, int64_t sender, const char *id, const char *body)
{
    struct store_send s = {.conv = conv, .sender = sender, .client_id = id, .body = body, .body_len = strlen(body)};
    struct store_batch_out out = {0};

    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_send_batch(st, &s, 1, 1000, &out), STORE_OK);
    assert_int_equal(s.rc, STORE_OK);
    assert_int_equal(store_commit(st), STORE_OK);
    store_batch_out_dispose(&out);
    json_decref(s.att_out);
    return s.seq;
}

/* Runs one change as the writer would (its own transaction); returns the
 * rc and leaves the job's outputs in *out (mod, changed, why; the
 * publication's kind, users and frame checked here). */
static int change(struct store *st, enum store_change_kind kind, int64_t conv, int64_t seq, int64_t user,
                  const char *text, struct job_change *out, size_t want_users)
{
    struct job *j = job_new(JOB_CHANGE, NULL, NULL, NULL, NULL);
    struct job_change *c = &j->u.change;
    int rc;

    c->kind = kind;
    c->conv = conv;
    c->seq = seq;
    c->user = user;
    if (text) {
        c->text = strdup(text);
        c->text_len = strlen(text);
    }
    assert_int_equal(store_begin(st), STORE_OK);
    rc = chat_tx_run(st, j);
    assert_int_equal(rc < 0 ? store_rollback(st) : store_commit(st), STORE_OK);
    if (rc == STORE_OK && c->changed) {
        assert_non_null(j->publish);
        assert_int_equal(j->publish->kind, BUS_UPDATE);
        assert_int_equal(j->publish->conv, conv);
        assert_int_equal(j->publish->seq, c->mod);
        assert_int_equal(j->publish->users->n, want_users);
        assert_non_null(c->message);
        assert_int_equal(jint(c->message, "mod"), c->mod);
    } else {
        assert_null(j->publish);
    }
    *out = *c;
    out->text = NULL;
    out->message = NULL;
    out->request_id = NULL;
    job_free(j);
    return rc;
}

static void test_change_rules(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave");
    int64_t members[] = {b, c};
    int64_t g = mkgroup(f->st, a, members, 2, 100), dm = 0;
    int created;
    struct job_change r;

    assert_int_equal(store_conv_create_direct(f->st, a, c, 100, &dm, &created), STORE_OK);
    assert_int_equal(chat_tx_member_set_role(f->st, g, a, b, ROLE_ADMIN), STORE_OK);
    int64_t s_a = mksend(f->st, g, a, "a1", "from alice");
    int64_t s_c = mksend(f->st, g, c, "c1", "from carol");
    int64_t s_dm = mksend(f->st, dm, c, "c2", "direct from carol");

    /* the sender edits; nobody else, whatever the role; strangers learn nothing */
    assert_int_equal(change(f->st, CHANGE_EDIT, g, s_c, c, "fixed", &r, 3), STORE_OK);
    assert_int_equal(r.mod, 1);
    assert_int_equal(r.changed, 1);
    assert_int_equal(change(f->st, CHANGE_EDIT, g, s_c, a, "owner edit", &r, 3), STORE_FORBIDDEN);
    assert_int_equal(change(f->st, CHANGE_EDIT, g, s_c, d, "stranger", &r, 3), STORE_NOT_FOUND);
    assert_int_equal(change(f->st, CHANGE_EDIT, g, 99, c, "no such", &r, 3), STORE_NOT_FOUND);
    /* editing to the same body again still takes a mod */
    assert_int_equal(change(f->st, CHANGE_EDIT, g, s_c, c, "fixed", &r, 3), STORE_OK);
    assert_int_equal(r.mod, 2);

    /* reactions: any member; a second identical one changes nothing */
    assert_int_equal(change(f->st, CHANGE_REACT_ON, g, s_a, c, "\xf0\x9f\x91\x8d", &r, 3), STORE_OK);
    assert_int_equal(r.mod, 3);
    assert_int_equal(change(f->st, CHANGE_REACT_ON, g, s_a, c, "\xf0\x9f\x91\x8d", &r, 3), STORE_OK);
    assert_int_equal(r.changed, 0);
    assert_int_equal(r.mod, 3);
    assert_int_equal(change(f->st, CHANGE_REACT_OFF, g, s_a, b, "\xf0\x9f\x91\x8d", &r, 3), STORE_OK);
    assert_int_equal(r.changed, 0);
    assert_int_equal(change(f->st, CHANGE_REACT_ON, g, s_a, d, "x", &r, 3), STORE_NOT_FOUND);

    /* deletes: a plain member only its own; an admin or the owner anyone's */
    assert_int_equal(change(f->st, CHANGE_DELETE, g, s_a, c, NULL, &r, 3), STORE_FORBIDDEN);
    assert_int_equal(change(f->st, CHANGE_DELETE, g, s_a, b, NULL, &r, 3), STORE_OK);
    assert_int_equal(r.mod, 4);
    /* a deleted message: no edit, no reaction; a second delete changes nothing */
    assert_int_equal(change(f->st, CHANGE_EDIT, g, s_a, a, "back", &r, 3), STORE_BAD_REQUEST);
    assert_non_null(r.why);
    assert_int_equal(change(f->st, CHANGE_REACT_ON, g, s_a, c, "x", &r, 3), STORE_BAD_REQUEST);
    assert_int_equal(change(f->st, CHANGE_DELETE, g, s_a, a, NULL, &r, 3), STORE_OK);
    assert_int_equal(r.changed, 0);
    assert_int_equal(r.mod, 4);

    /* a direct conversation: nobody deletes the other's message */
    assert_int_equal(change(f->st, CHANGE_DELETE, dm, s_dm, a, NULL, &r, 2), STORE_FORBIDDEN);
    assert_int_equal(change(f->st, CHANGE_DELETE, dm, s_dm, c, NULL, &r, 2), STORE_OK);
    assert_int_equal(r.mod, 1); /* mods are per conversation */

    /* the group's state after all that */
    json_t *m = NULL;
    assert_int_equal(store_msg_get(f->st, g, s_a, &m), STORE_OK);
    assert_true(json_is_true(json_object_get(m, "deleted")));
    assert_string_equal(jstr(m, "body"), "");
    assert_null(json_object_get(m, "reactions"));
    json_decref(m);
    assert_int_equal(store_msg_get(f->st, g, s_c, &m), STORE_OK);
    assert_string_equal(jstr(m, "body"), "fixed");
    assert_true(jint(m, "edited_at") > 0);
    assert_int_equal(jint(m, "mod"), 2);
    json_decref(m);
}

int main(int argc, char **argv)
{
    int skip_rc = fx_init(argc, argv);
    if (skip_rc)
        return skip_rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_member_add_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_role, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owner_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_member_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_rules, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
