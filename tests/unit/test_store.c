/* Unit tests of store, on SQLite and (test_store --pg, CTest's test_store_pg)
 * on PostgreSQL: every test runs on a fresh database (store_fixture.h). The
 * tests of the SQLite file itself (WAL, a reader of a missing file, a reader
 * that cannot write) are skipped on PostgreSQL; the tests of several
 * PostgreSQL connections at once (concurrent writers, concurrent migrations,
 * a lost connection) are skipped on SQLite. */
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
#include <pthread.h>

#include "migrations.h"
#include "migrations_pg.h"
#include "store_fixture.h"

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

/* Stores one message through the batch operation at time ts; the store
 * hands out the next dense seq, which must be the one the test expects. */
static void send_msg(struct store *st, int64_t conv, int64_t seq, int64_t from, const char *cid, int64_t ts)
{
    char body[32];
    struct store_batch_out out = {0};

    snprintf(body, sizeof body, "body %lld", (long long)seq);
    struct store_send m = {.conv = conv, .sender = from, .client_id = cid, .body = body, .body_len = strlen(body)};
    assert_int_equal(store_send_batch(st, &m, 1, ts, &out), STORE_OK);
    assert_int_equal(m.rc, STORE_OK);
    assert_int_equal(m.dup, 0);
    assert_int_equal(m.seq, seq);
    assert_int_equal(m.ts, ts);
    store_batch_out_dispose(&out);
}

static int64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    assert_non_null(v);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    assert_non_null(v);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* The role of user in a conversation object, or NULL. */
static const char *role_of(json_t *conv, int64_t user)
{
    json_t *members = json_object_get(conv, "members"), *m;
    size_t i;

    json_array_foreach(members, i, m)
        if (jint(m, "id") == user)
            return jstr(m, "role");
    return NULL;
}

/* On the fixture's own connection: committed rows only. */
static int64_t count_rows(struct fx *f, const char *sql)
{
    int64_t n = fx_count(f, sql);
    assert_true(n >= 0);
    return n;
}

/* ---- schema ---- */

static void test_migrations_idempotent(void **state)
{
    struct fx *f = *state;
    const struct migration *m = fx_is_pg() ? migrations_pg : migrations;
    int count = fx_is_pg() ? migrations_pg_count : migrations_count;
    json_t *u = NULL;

    assert_true(count >= 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM schema_version"), count);
    assert_int_equal(count_rows(f, "SELECT max(version) FROM schema_version"), m[count - 1].version);
    mkuser(f->st, "alice");

    /* Re-opening applies nothing twice and keeps the data. */
    store_close(f->st);
    f->st = NULL;
    assert_int_equal(fx_open_other(f, 0, &f->st), STORE_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM schema_version"), count);
    assert_int_equal(store_user_by_name(f->st, "alice", &u, NULL), STORE_OK);
    json_decref(u);
    if (!fx_is_pg())
        assert_int_equal(count_rows(f, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);
}

/* SQLite only: a file that is not there. */
/* synchronous is a setting of each connection: a second connection to the same
 * file would show its own, not the store's. An auto extension is called by
 * SQLite with every connection it opens in this process, so the test sees the
 * store's own connections. SQLite gives the callback no user pointer, hence the
 * file-scope variable (test code, one thread). */
static sqlite3 *opened_conn;

static int note_open(sqlite3 *db, char **err, const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    opened_conn = db;
    return SQLITE_OK;
}

static void pragma_text(sqlite3 *db, const char *sql, char *out, size_t len)
{
    sqlite3_stmt *s = NULL;
    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        snprintf(out, len, "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
}

/* What an ack promises (docs/PROTOCOL.md, Guarantees: WAL, synchronous=FULL)
 * holds for the connection that commits: the writer's; a reader is query-only. */
static void test_sqlite_connection_settings(void **state)
{
    struct fx *f = *state;
    struct store *w = NULL, *r = NULL;
    char v[32];

    if (fx_is_pg())
        skip();
    opened_conn = NULL;
    assert_int_equal(sqlite3_auto_extension((void (*)(void))note_open), SQLITE_OK);
    assert_int_equal(fx_open_other(f, 0, &w), STORE_OK);
    sqlite3 *wdb = opened_conn;
    assert_int_equal(fx_open_other(f, 1, &r), STORE_OK);
    sqlite3 *rdb = opened_conn;
    sqlite3_cancel_auto_extension((void (*)(void))note_open);
    assert_non_null(wdb);
    assert_non_null(rdb);
    assert_ptr_not_equal(wdb, rdb);

    pragma_text(wdb, "PRAGMA synchronous", v, sizeof v);
    assert_string_equal(v, "2"); /* FULL (NORMAL is 1) */
    pragma_text(wdb, "PRAGMA journal_mode", v, sizeof v);
    assert_string_equal(v, "wal");
    pragma_text(wdb, "PRAGMA foreign_keys", v, sizeof v);
    assert_string_equal(v, "1");
    pragma_text(wdb, "PRAGMA query_only", v, sizeof v);
    assert_string_equal(v, "0");
    pragma_text(rdb, "PRAGMA query_only", v, sizeof v);
    assert_string_equal(v, "1");
    pragma_text(rdb, "PRAGMA journal_mode", v, sizeof v);
    assert_string_equal(v, "wal");
    store_close(r);
    store_close(w);
}

static void test_readonly_needs_existing_db(void **state)
{
    struct fx *f = *state;
    struct store *ro = (struct store *)1;
    char path[160], err[256] = "";

    if (fx_is_pg())
        skip();
    snprintf(path, sizeof path, "%s/missing.db", f->dir);
    assert_int_equal(store_sqlite_open(path, 1, &ro, err, sizeof err), STORE_ERR);
    assert_null(ro);
    assert_true(err[0] != '\0');
    assert_int_equal(access(path, F_OK), -1);
}

/* ---- transactions ---- */

static void test_transactions(void **state)
{
    struct fx *f = *state;

    assert_int_equal(store_begin(f->st), STORE_OK);
    mkuser(f->st, "gone");
    assert_int_equal(store_rollback(f->st), STORE_OK);
    assert_int_equal(store_user_by_name(f->st, "gone", NULL, NULL), STORE_NOT_FOUND);
    /* Nothing open: rollback is a no-op, not an error. */
    assert_int_equal(store_rollback(f->st), STORE_OK);

    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    mkuser(f->st, "kept");
    assert_int_equal(store_release(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    mkuser(f->st, "undone");
    assert_int_equal(store_rollback_to(f->st), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);
    assert_int_equal(store_user_by_name(f->st, "kept", NULL, NULL), STORE_OK);
    assert_int_equal(store_user_by_name(f->st, "undone", NULL, NULL), STORE_NOT_FOUND);
}

/* ---- users ---- */

static void test_users(void **state)
{
    struct fx *f = *state;
    json_t *u = NULL, *v = NULL;
    char *hash = NULL;
    int64_t id;

    assert_int_equal(store_user_create(f->st, "alice", "Alice A.", "argon-hash", 1234, &u), STORE_OK);
    id = jint(u, "id");
    assert_string_equal(jstr(u, "username"), "alice");
    assert_string_equal(jstr(u, "display_name"), "Alice A.");
    assert_int_equal(jint(u, "created_at"), 1234);
    assert_int_equal(json_object_size(u), 4);

    assert_int_equal(store_user_create(f->st, "alice", NULL, "x", 1, &v), STORE_CONFLICT);
    assert_null(v);
    assert_int_equal(store_user_create(f->st, "ALICE", NULL, "x", 1, NULL), STORE_CONFLICT);

    assert_int_equal(store_user_by_name(f->st, "alice", &v, &hash), STORE_OK);
    assert_true(json_equal(u, v));
    assert_string_equal(hash, "argon-hash");
    free(hash);
    json_decref(v);

    assert_int_equal(store_user_by_id(f->st, id, &v), STORE_OK);
    assert_true(json_equal(u, v));
    json_decref(v);

    hash = (char *)"untouched";
    assert_int_equal(store_user_by_name(f->st, "bob", &v, &hash), STORE_NOT_FOUND);
    assert_null(v);
    assert_null(hash);
    assert_int_equal(store_user_by_id(f->st, id + 100, &v), STORE_NOT_FOUND);

    /* display_name defaults to the username. */
    assert_int_equal(store_user_create(f->st, "bob", NULL, "h", 1, &v), STORE_OK);
    assert_string_equal(jstr(v, "display_name"), "bob");
    json_decref(v);
    json_decref(u);
}

static void expect_search(struct store *st, const char *prefix, int limit, const char *const *names, size_t n)
{
    json_t *users = NULL, *u;
    size_t i;

    assert_int_equal(store_users_search(st, prefix, limit, &users), STORE_OK);
    assert_int_equal(json_array_size(users), n);
    json_array_foreach(users, i, u)
        assert_string_equal(jstr(u, "username"), names[i]);
    json_decref(users);
}

static void test_users_search(void **state)
{
    struct fx *f = *state;
    const char *all[] = {"a%c", "a\\d", "a_b", "abc", "axb", "bcd"};

    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        mkuser(f->st, all[i]);
    expect_search(f->st, "a_", 10, (const char *[]){"a_b"}, 1);
    expect_search(f->st, "A_", 10, (const char *[]){"a_b"}, 1);
    expect_search(f->st, "a%", 10, (const char *[]){"a%c"}, 1);
    expect_search(f->st, "a\\", 10, (const char *[]){"a\\d"}, 1);
    expect_search(f->st, "ab", 10, (const char *[]){"abc"}, 1);
    expect_search(f->st, "a", 3, all, 3);
    expect_search(f->st, "", 10, all, 6);
    expect_search(f->st, "zz", 10, NULL, 0);
    expect_search(f->st, "a", 0, NULL, 0);
}

/* ---- refresh tokens ---- */

static void test_refresh_rotate(void **state)
{
    struct fx *f = *state;
    int64_t u = mkuser(f->st, "alice"), who = 0;

    assert_int_equal(store_refresh_insert(f->st, u, "fam1", "h1", 5000, 1000), STORE_OK);
    assert_int_equal(store_refresh_insert(f->st, u, "fam1", "h1", 5000, 1000), STORE_CONFLICT);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h2", 6000, 1100, &who), STORE_OK);
    assert_int_equal(who, u);
    who = 0;
    assert_int_equal(store_refresh_rotate(f->st, "h2", "h3", 7000, 1200, &who), STORE_OK);
    assert_int_equal(who, u);
    assert_int_equal(store_refresh_rotate(f->st, "nope", "h4", 7000, 1200, &who), STORE_NOT_FOUND);
    /* The new token lives in the same family with its own expiry. */
    assert_int_equal(count_rows(f, "SELECT count(*) FROM refresh_tokens WHERE family = 'fam1'"), 3);
    assert_int_equal(count_rows(f, "SELECT expires_at FROM refresh_tokens WHERE token_hash = 'h3'"), 7000);
}

static void test_refresh_reuse_revokes_family(void **state)
{
    struct fx *f = *state;
    int64_t u = mkuser(f->st, "alice"), who = 0;

    assert_int_equal(store_refresh_insert(f->st, u, "fam1", "h1", 5000, 1000), STORE_OK);
    assert_int_equal(store_refresh_insert(f->st, u, "fam2", "other", 5000, 1000), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h2", 6000, 1100, &who), STORE_OK);
    /* h1 again: theft. The family dies, including the legitimate h2. */
    assert_int_equal(store_refresh_rotate(f->st, "h1", "hx", 6000, 1200, &who), STORE_REUSED);
    assert_int_equal(store_refresh_rotate(f->st, "h2", "h3", 6000, 1300, &who), STORE_EXPIRED);
    assert_int_equal(store_refresh_rotate(f->st, "hx", "h4", 6000, 1300, &who), STORE_NOT_FOUND);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h5", 6000, 1400, &who), STORE_REUSED);
    /* Another family of the same user is untouched. */
    assert_int_equal(store_refresh_rotate(f->st, "other", "other2", 6000, 1400, &who), STORE_OK);
}

static void test_refresh_reuse_inside_job(void **state)
{
    struct fx *f = *state;
    int64_t u = mkuser(f->st, "alice"), who = 0;

    /* As the writer runs it: in a transaction and a job savepoint. The
     * revocation must survive when the job is released and committed. */
    assert_int_equal(store_refresh_insert(f->st, u, "fam", "h1", 5000, 1000), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h2", 6000, 1100, &who), STORE_OK);
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "hx", 6000, 1200, &who), STORE_REUSED);
    assert_int_equal(store_release(f->st), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "h2", "h3", 6000, 1300, &who), STORE_EXPIRED);
}

static void test_refresh_expired_and_revoke(void **state)
{
    struct fx *f = *state;
    int64_t u = mkuser(f->st, "alice"), who = 0;

    assert_int_equal(store_refresh_insert(f->st, u, "f1", "old", 2000, 1000), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "old", "n1", 9000, 2000, &who), STORE_EXPIRED);
    assert_int_equal(store_refresh_rotate(f->st, "old", "n1", 9000, 2001, &who), STORE_EXPIRED);
    /* An expired token is not "replaced": n1 was never stored. */
    assert_int_equal(store_refresh_rotate(f->st, "n1", "n2", 9000, 2001, &who), STORE_NOT_FOUND);

    assert_int_equal(store_refresh_insert(f->st, u, "f2", "live", 9000, 1000), STORE_OK);
    assert_int_equal(store_refresh_revoke(f->st, "live", 1500), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "live", "n3", 9000, 1600, &who), STORE_EXPIRED);
    assert_int_equal(store_refresh_revoke(f->st, "live", 1700), STORE_OK);
    assert_int_equal(store_refresh_revoke(f->st, "unknown", 1700), STORE_OK);
}

/* ---- conversations ---- */

static void test_direct_create(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c1 = 0, c2 = 0;
    int created = -1;
    json_t *conv = NULL, *m;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &c1, &created), STORE_OK);
    assert_int_equal(created, 1);
    assert_int_equal(store_conv_create_direct(f->st, a, b, 200, &c2, &created), STORE_OK);
    assert_int_equal(created, 0);
    assert_int_equal(c2, c1);
    assert_int_equal(store_conv_create_direct(f->st, b, a, 300, &c2, &created), STORE_OK);
    assert_int_equal(created, 0);
    assert_int_equal(c2, c1);
    assert_int_equal(store_conv_create_direct(f->st, a, a, 300, &c2, &created), STORE_BAD_REQUEST);
    assert_int_equal(store_conv_create_direct(f->st, a, b + 100, 300, &c2, &created), STORE_NOT_FOUND);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM conversations"), 1);

    assert_int_equal(store_conv_get(f->st, c1, b, &conv), STORE_OK);
    assert_int_equal(jint(conv, "id"), c1);
    assert_string_equal(jstr(conv, "kind"), "direct");
    assert_true(json_is_null(json_object_get(conv, "title")));
    assert_true(json_is_null(json_object_get(conv, "last_message")));
    assert_int_equal(jint(conv, "last_seq"), 0);
    assert_int_equal(jint(conv, "last_read_seq"), 0);
    assert_int_equal(jint(conv, "unread"), 0);
    assert_int_equal(jint(conv, "created_at"), 100);
    assert_int_equal(json_object_size(conv), 10); /* version 2: last_mod */
    assert_int_equal(json_array_size(json_object_get(conv, "members")), 2);
    m = json_array_get(json_object_get(conv, "members"), 0);
    assert_int_equal(jint(m, "id"), a);
    assert_string_equal(jstr(m, "username"), "alice");
    assert_string_equal(jstr(m, "display_name"), "alice");
    assert_int_equal(json_object_size(m), 4);
    assert_string_equal(role_of(conv, a), "member");
    assert_string_equal(role_of(conv, b), "member");
    json_decref(conv);
}

static void test_group_create(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t conv = 0;
    json_t *obj = NULL, *members;

    /* Duplicates and the creator among the members are ignored. */
    conv = mkgroup(f->st, b, (int64_t[]){c, a, c, b}, 4, 500);
    assert_int_equal(store_conv_get(f->st, conv, a, &obj), STORE_OK);
    assert_string_equal(jstr(obj, "kind"), "group");
    assert_string_equal(jstr(obj, "title"), "room");
    members = json_object_get(obj, "members");
    assert_int_equal(json_array_size(members), 3);
    /* Same joined_at: by user id. */
    assert_int_equal(jint(json_array_get(members, 0), "id"), a);
    assert_int_equal(jint(json_array_get(members, 1), "id"), b);
    assert_int_equal(jint(json_array_get(members, 2), "id"), c);
    assert_string_equal(role_of(obj, b), "owner");
    assert_string_equal(role_of(obj, a), "member");
    assert_string_equal(role_of(obj, c), "member");
    json_decref(obj);

    /* A group of one is fine. */
    mkgroup(f->st, a, NULL, 0, 600);
}

static void test_group_unknown_member(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), conv = 0;
    json_t *list = NULL;

    /* As the writer runs it: the job's savepoint is rolled back on error. */
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_conv_create_group(f->st, a, "t", (int64_t[]){b, b + 50}, 2, 100, &conv),
                     STORE_NOT_FOUND);
    assert_int_equal(store_rollback_to(f->st), STORE_OK);
    /* A successful create undone by the job's rollback leaves nothing either. */
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_conv_create_group(f->st, a, "t", (int64_t[]){b}, 1, 100, &conv), STORE_OK);
    assert_int_equal(store_rollback_to(f->st), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);

    assert_int_equal(store_conv_list(f->st, a, &list), STORE_OK);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM conversations"), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM members"), 0);
    /* Unknown creator too. */
    assert_int_equal(store_conv_create_group(f->st, b + 60, "t", (int64_t[]){b}, 1, 100, &conv), STORE_NOT_FOUND);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM conversations"), 0);
}

static void test_conv_get_not_member(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t conv = mkgroup(f->st, a, &b, 1, 100);
    json_t *obj = (json_t *)1;

    assert_int_equal(store_conv_get(f->st, conv, c, &obj), STORE_NOT_FOUND);
    assert_null(obj);
    assert_int_equal(store_conv_get(f->st, conv + 10, a, &obj), STORE_NOT_FOUND);
    assert_int_equal(store_is_member(f->st, conv, b), STORE_OK);
    assert_int_equal(store_is_member(f->st, conv, c), STORE_NOT_FOUND);
}

static void test_conv_list_order(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t g1 = mkgroup(f->st, a, &b, 1, 100), g2 = mkgroup(f->st, a, &c, 1, 100);
    int64_t g3 = mkgroup(f->st, b, &c, 1, 50), d = 0;
    int created;
    json_t *list = NULL, *first, *members;

    assert_int_equal(store_conv_create_direct(f->st, a, c, 100, &d, &created), STORE_OK);
    (void)g3;
    /* Same activity: newest id first. */
    assert_int_equal(store_conv_list(f->st, a, &list), STORE_OK);
    assert_int_equal(json_array_size(list), 3);
    assert_int_equal(jint(json_array_get(list, 0), "id"), d);
    assert_int_equal(jint(json_array_get(list, 1), "id"), g2);
    assert_int_equal(jint(json_array_get(list, 2), "id"), g1);
    json_decref(list);

    /* A message moves g1 to the front, with its last message. */
    send_msg(f->st, g1, 1, b, "m1", 900);
    assert_int_equal(store_conv_list(f->st, a, &list), STORE_OK);
    assert_int_equal(json_array_size(list), 3);
    first = json_array_get(list, 0);
    assert_int_equal(jint(first, "id"), g1);
    assert_int_equal(jint(first, "last_seq"), 1);
    assert_int_equal(jint(first, "unread"), 1);
    assert_int_equal(jint(json_object_get(first, "last_message"), "seq"), 1);
    assert_string_equal(jstr(json_object_get(first, "last_message"), "body"), "body 1");
    members = json_object_get(first, "members");
    assert_int_equal(json_array_size(members), 2);
    assert_string_equal(role_of(first, a), "owner");
    assert_string_equal(role_of(first, b), "member");
    /* Every listed conversation has exactly its own members. */
    assert_int_equal(json_array_size(json_object_get(json_array_get(list, 1), "members")), 2);
    assert_int_equal(jint(json_array_get(list, 2), "id"), g2);
    assert_string_equal(role_of(json_array_get(list, 2), a), "owner");
    assert_string_equal(role_of(json_array_get(list, 2), c), "member");
    json_decref(list);

    /* The list equals the conversations one gets one by one. */
    assert_int_equal(store_conv_list(f->st, c, &list), STORE_OK);
    assert_int_equal(json_array_size(list), 3);
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *one = NULL, *item = json_array_get(list, i);
        assert_int_equal(store_conv_get(f->st, jint(item, "id"), c, &one), STORE_OK);
        assert_true(json_equal(one, item));
        json_decref(one);
    }
    json_decref(list);
}

/* ---- messages ---- */

static void test_send_batch(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = 0, g, conv = 0, seq = 0, ts = 0;
    int created;
    struct store_batch_out out = {0};

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    g = mkgroup(f->st, a, (int64_t[]){b, c}, 2, 100);
    struct store_send v[] = {
        {.conv = d, .sender = a, .client_id = "c1", .body = "hi", .body_len = 2},
        {.conv = g, .sender = b, .client_id = "c1", .body = "yo", .body_len = 2},   /* ids are per sender */
        {.conv = d, .sender = a, .client_id = "c1", .body = "again", .body_len = 5}, /* a resend in the batch */
        {.conv = d, .sender = c, .client_id = "c9", .body = "no", .body_len = 2},   /* not a member */
        {.conv = g, .sender = c, .client_id = "c2", .body = "x", .body_len = 1},
        {.conv = d, .sender = b, .client_id = "c2", .body = "z", .body_len = 1},
        {.conv = d + g + 10, .sender = a, .client_id = "c3", .body = "?", .body_len = 1}, /* no conversation */
    };
    assert_int_equal(store_send_batch(f->st, v, 7, 1000, &out), STORE_OK);
    assert_int_equal(v[0].rc, STORE_OK);
    assert_int_equal(v[0].seq, 1);
    assert_int_equal(v[0].dup, 0);
    assert_int_equal(v[1].seq, 1);
    assert_int_equal(v[2].rc, STORE_OK);
    assert_int_equal(v[2].dup, 1);
    assert_int_equal(v[2].seq, 1);
    assert_int_equal(v[3].rc, STORE_NOT_FOUND);
    assert_int_equal(v[4].seq, 2);
    assert_int_equal(v[5].seq, 2); /* the refused send took no seq: dense */
    assert_int_equal(v[6].rc, STORE_NOT_FOUND);
    /* the touched conversations and their members, for the fan-out */
    assert_int_equal(out.n, 2);
    assert_int_equal(store_batch_members(&out, d)->n, 2);
    assert_int_equal(store_batch_members(&out, g)->n, 3);
    assert_null(store_batch_members(&out, d + g + 10));
    store_batch_out_dispose(&out);

    /* a later resend, even aimed elsewhere, answers with the original */
    struct store_send r = {.conv = g, .sender = a, .client_id = "c1", .body = "late", .body_len = 4};
    assert_int_equal(store_send_batch(f->st, &r, 1, 2000, &out), STORE_OK);
    assert_int_equal(r.dup, 1);
    assert_int_equal(r.conv, d);
    assert_int_equal(r.seq, 1);
    assert_int_equal(r.ts, 1000);
    assert_int_equal(out.n, 0);
    store_batch_out_dispose(&out);

    assert_int_equal(store_msg_by_client(f->st, a, "c1", &conv, &seq, &ts), STORE_OK);
    assert_int_equal(conv, d);
    assert_int_equal(seq, 1);
    assert_int_equal(ts, 1000);
    assert_int_equal(store_msg_by_client(f->st, b, "c1", &conv, &seq, &ts), STORE_OK);
    assert_int_equal(conv, g);
    assert_int_equal(store_msg_by_client(f->st, a, "c2", &conv, &seq, &ts), STORE_NOT_FOUND);
    assert_int_equal(store_conv_last_seq(f->st, d, &seq), STORE_OK);
    assert_int_equal(seq, 2);
    assert_int_equal(store_conv_last_seq(f->st, g, &seq), STORE_OK);
    assert_int_equal(seq, 2);
}

/* Two writers (two connections, as two nodes would be) reserve seqs of one
 * conversation in turn: dense, never the same seq twice. */
static void test_send_batch_two_writers(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), d = 0, last = 0;
    int created;
    struct store *other;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    assert_int_equal(fx_open_other(f, 0, &other), STORE_OK);
    for (int round = 0; round < 5; round++) {
        struct store *st = round % 2 ? other : f->st;
        char id1[16], id2[16];
        snprintf(id1, sizeof id1, "a%d", round);
        snprintf(id2, sizeof id2, "b%d", round);
        struct store_send v[] = {
            {.conv = d, .sender = a, .client_id = id1, .body = "1", .body_len = 1},
            {.conv = d, .sender = b, .client_id = id2, .body = "2", .body_len = 1},
        };
        assert_int_equal(store_begin(st), STORE_OK);
        assert_int_equal(store_send_batch(st, v, 2, 1000 + round, NULL), STORE_OK);
        assert_int_equal(store_commit(st), STORE_OK);
        assert_int_equal(v[0].seq, 2 * round + 1);
        assert_int_equal(v[1].seq, 2 * round + 2);
    }
    store_close(other);
    assert_int_equal(store_conv_last_seq(f->st, d, &last), STORE_OK);
    assert_int_equal(last, 10);
}

static void test_advance_and_read(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = 0, last = -1, pos = -1;
    int created;
    json_t *obj = NULL;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    assert_int_equal(store_conv_last_seq(f->st, d, &last), STORE_OK);
    assert_int_equal(last, 0);
    /* Nothing to read yet: clamped to 0. */
    assert_int_equal(store_read_set(f->st, d, a, 5, &pos), STORE_OK);
    assert_int_equal(pos, 0);

    /* b sends 3: b's own position follows its messages */
    for (int64_t s = 1; s <= 3; s++) {
        char cid[8];
        snprintf(cid, sizeof cid, "c%lld", (long long)s);
        send_msg(f->st, d, s, b, cid, 1000 + s);
    }
    assert_int_equal(store_conv_last_seq(f->st, d, &last), STORE_OK);
    assert_int_equal(last, 3);
    assert_int_equal(store_conv_last_seq(f->st, d + 10, &last), STORE_NOT_FOUND);

    assert_int_equal(store_read_set(f->st, d, a, 2, &pos), STORE_OK);
    assert_int_equal(pos, 2);
    assert_int_equal(store_read_set(f->st, d, a, 1, &pos), STORE_OK);
    assert_int_equal(pos, 2);
    assert_int_equal(store_read_set(f->st, d, a, -7, &pos), STORE_OK);
    assert_int_equal(pos, 2);
    assert_int_equal(store_read_set(f->st, d, a, 10, &pos), STORE_OK);
    assert_int_equal(pos, 3);
    assert_int_equal(store_read_set(f->st, d, c, 1, &pos), STORE_NOT_FOUND);
    assert_int_equal(store_read_set(f->st, d + 10, a, 1, &pos), STORE_NOT_FOUND);

    assert_int_equal(store_conv_get(f->st, d, a, &obj), STORE_OK);
    assert_int_equal(jint(obj, "last_seq"), 3);
    assert_int_equal(jint(obj, "last_read_seq"), 3);
    assert_int_equal(jint(obj, "unread"), 0);
    assert_int_equal(jint(json_object_get(obj, "last_message"), "seq"), 3);
    assert_int_equal(jint(json_object_get(obj, "last_message"), "ts"), 1003);
    json_decref(obj);
    assert_int_equal(store_conv_get(f->st, d, b, &obj), STORE_OK);
    assert_int_equal(jint(obj, "last_read_seq"), 3);
    assert_int_equal(jint(obj, "unread"), 0);
    json_decref(obj);
}

/* The push view: the shared part once, every member's position. */
static void test_conv_view(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t g = mkgroup(f->st, a, (int64_t[]){b, c}, 2, 100), pos;
    json_t *shared = NULL;
    struct store_pos *p = NULL;
    size_t n = 0;

    send_msg(f->st, g, 1, a, "m1", 1001);
    send_msg(f->st, g, 2, b, "m2", 1002);
    assert_int_equal(store_read_set(f->st, g, c, 1, &pos), STORE_OK);
    assert_int_equal(store_conv_view(f->st, g, &shared, &p, &n), STORE_OK);
    assert_int_equal(jint(shared, "last_seq"), 2);
    assert_int_equal(json_array_size(json_object_get(shared, "members")), 3);
    assert_int_equal(jint(json_object_get(shared, "last_message"), "seq"), 2);
    assert_null(json_object_get(shared, "last_read_seq"));
    assert_null(json_object_get(shared, "unread"));
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(p[i].last_read_seq, p[i].user == a ? 1 : p[i].user == b ? 2 : 1);
    json_decref(shared);
    free(p);
    assert_int_equal(store_conv_view(f->st, g + 10, &shared, &p, &n), STORE_NOT_FOUND);
    assert_null(shared);
}

static void expect_page(struct store *st, int64_t conv, int64_t before, int64_t after, int limit,
                        int64_t first, int64_t n, int has_more)
{
    json_t *msgs = NULL;
    int more = -1;
    int64_t step = first <= 0 ? 0 : (before > 0 || after < 0) ? -1 : 1;

    assert_int_equal(store_msg_page(st, conv, before, after, limit, &msgs, &more), STORE_OK);
    assert_int_equal(json_array_size(msgs), n);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(jint(json_array_get(msgs, (size_t)i), "seq"), first + i * step);
    assert_int_equal(more, has_more);
    json_decref(msgs);
}

static void test_msg_page(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), g = mkgroup(f->st, a, &b, 1, 100);
    json_t *msgs = NULL, *m;
    int more;

    for (int64_t s = 1; s <= 10; s++) {
        char cid[8];
        snprintf(cid, sizeof cid, "c%lld", (long long)s);
        send_msg(f->st, g, s, s % 2 ? a : b, cid, 2000 + s);
    }
    expect_page(f->st, g, 0, -1, 3, 10, 3, 1);   /* newest */
    expect_page(f->st, g, 0, -1, 10, 10, 10, 0);
    expect_page(f->st, g, 0, -1, 50, 10, 10, 0);
    expect_page(f->st, g, 5, -1, 3, 4, 3, 1);    /* before */
    expect_page(f->st, g, 4, -1, 3, 3, 3, 0);
    expect_page(f->st, g, 1, -1, 3, 0, 0, 0);
    expect_page(f->st, g, 0, 6, 3, 7, 3, 1);     /* after */
    expect_page(f->st, g, 0, 7, 3, 8, 3, 0);
    expect_page(f->st, g, 0, 0, 50, 1, 10, 0);
    expect_page(f->st, g, 0, 10, 5, 0, 0, 0);
    expect_page(f->st, g, 3, 1, 5, 2, 2, 0);     /* before wins */
    expect_page(f->st, g + 10, 0, -1, 5, 0, 0, 0);

    assert_int_equal(store_msg_page(f->st, g, 0, -1, 0, &msgs, &more), STORE_BAD_REQUEST);
    assert_null(msgs);

    assert_int_equal(store_msg_page(f->st, g, 0, -1, 1, &msgs, &more), STORE_OK);
    m = json_array_get(msgs, 0);
    assert_int_equal(jint(m, "conv"), g);
    assert_int_equal(jint(m, "seq"), 10);
    assert_int_equal(jint(m, "from"), b);
    assert_string_equal(jstr(m, "id"), "c10");
    assert_string_equal(jstr(m, "body"), "body 10");
    assert_int_equal(jint(m, "ts"), 2010);
    assert_int_equal(json_object_size(m), 6);
    json_decref(msgs);
}

static void test_body_with_nul(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), d = 0;
    static const char body[] = "a\0b\0\xc3\xa9";
    const size_t len = sizeof body - 1;
    json_t *msgs = NULL, *obj = NULL, *text;
    int created, more;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    struct store_send m = {.conv = d, .sender = a, .client_id = "nul", .body = body, .body_len = len};
    assert_int_equal(store_send_batch(f->st, &m, 1, 1000, NULL), STORE_OK);
    assert_int_equal(m.seq, 1);

    assert_int_equal(store_msg_page(f->st, d, 0, -1, 10, &msgs, &more), STORE_OK);
    text = json_object_get(json_array_get(msgs, 0), "body");
    assert_int_equal(json_string_length(text), len);
    assert_memory_equal(json_string_value(text), body, len);
    json_decref(msgs);

    assert_int_equal(store_conv_get(f->st, d, b, &obj), STORE_OK);
    text = json_object_get(json_object_get(obj, "last_message"), "body");
    assert_int_equal(json_string_length(text), len);
    assert_memory_equal(json_string_value(text), body, len);
    json_decref(obj);
}

/* ---- membership queries ---- */

static void expect_ids(int64_t *ids, size_t n, const int64_t *want, size_t n_want)
{
    assert_non_null(ids);
    assert_int_equal(n, n_want);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], want[i]);
    free(ids);
}

static void test_peers_and_summary(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t d = mkuser(f->st, "dave"), e = mkuser(f->st, "eve"), dm = 0, *ids = NULL;
    int64_t g = mkgroup(f->st, c, (int64_t[]){a, d}, 2, 100), pos;
    size_t n = 0;
    int created;
    json_t *sum = NULL, *row;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &dm, &created), STORE_OK);
    send_msg(f->st, g, 1, c, "g1", 500);
    send_msg(f->st, g, 2, c, "g2", 501);
    assert_int_equal(store_read_set(f->st, g, a, 1, &pos), STORE_OK);

    assert_int_equal(store_peers(f->st, a, &ids, &n), STORE_OK);
    expect_ids(ids, n, (int64_t[]){b, c, d}, 3);
    assert_int_equal(store_peers(f->st, b, &ids, &n), STORE_OK);
    expect_ids(ids, n, (int64_t[]){a}, 1);
    assert_int_equal(store_peers(f->st, e, &ids, &n), STORE_OK);
    expect_ids(ids, n, NULL, 0);

    assert_int_equal(store_user_convs(f->st, a, &ids, &n), STORE_OK);
    expect_ids(ids, n, (int64_t[]){g < dm ? g : dm, g < dm ? dm : g}, 2);
    assert_int_equal(store_user_convs(f->st, e, &ids, &n), STORE_OK);
    expect_ids(ids, n, NULL, 0);
    assert_int_equal(store_members(f->st, g, &ids, &n), STORE_OK);
    expect_ids(ids, n, (int64_t[]){a, c, d}, 3);
    assert_int_equal(store_members(f->st, g + dm + 10, &ids, &n), STORE_OK);
    expect_ids(ids, n, NULL, 0);

    assert_int_equal(store_sync_summary(f->st, a, &sum), STORE_OK);
    assert_int_equal(json_array_size(sum), 2);
    for (size_t i = 0; i < 2; i++) {
        row = json_array_get(sum, i);
        assert_int_equal(json_object_size(row), 5); /* version 2: last_mod */
        if (jint(row, "conv") == g) {
            assert_int_equal(jint(row, "last_seq"), 2);
            assert_int_equal(jint(row, "last_read_seq"), 1);
            assert_int_equal(jint(row, "unread"), 1);
        } else {
            assert_int_equal(jint(row, "conv"), dm);
            assert_int_equal(jint(row, "last_seq"), 0);
            assert_int_equal(jint(row, "unread"), 0);
        }
    }
    json_decref(sum);
    assert_int_equal(store_sync_summary(f->st, e, &sum), STORE_OK);
    assert_int_equal(json_array_size(sum), 0);
    json_decref(sum);
}

/* ---- connections ---- */

static void test_readonly_sees_commits(void **state)
{
    struct fx *f = *state;
    struct store *ro = NULL;
    json_t *u = NULL, *list = NULL;
    int64_t a, b, g, last = -1;

    assert_int_equal(fx_open_other(f, 1, &ro), STORE_OK);
    a = mkuser(f->st, "alice");
    assert_int_equal(store_user_by_name(ro, "alice", &u, NULL), STORE_OK);
    json_decref(u);

    /* Uncommitted writes are invisible; committed ones visible at once. */
    assert_int_equal(store_begin(f->st), STORE_OK);
    b = mkuser(f->st, "bob");
    g = mkgroup(f->st, a, &b, 1, 100);
    send_msg(f->st, g, 1, a, "m1", 200);
    assert_int_equal(store_user_by_id(ro, b, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_conv_last_seq(ro, g, &last), STORE_NOT_FOUND);
    assert_int_equal(store_commit(f->st), STORE_OK);
    assert_int_equal(store_user_by_id(ro, b, NULL), STORE_OK);
    assert_int_equal(store_conv_last_seq(ro, g, &last), STORE_OK);
    assert_int_equal(last, 1);
    assert_int_equal(store_conv_list(ro, b, &list), STORE_OK);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);

    /* An SQLite reader cannot write (query_only). A PostgreSQL reader is an
     * ordinary connection: a replica refuses writes by itself. */
    if (!fx_is_pg())
        assert_int_equal(store_user_create(ro, "mallory", NULL, "h", 1, NULL), STORE_ERR);
    store_close(ro);
}

/* Every answer but STORE_ERR leaves the transaction usable (PostgreSQL
 * aborts a transaction on a failed statement: the backend must not let one
 * fail), and the batch commits what it did. */
static void test_answers_keep_transaction(void **state)
{
    struct fx *f = *state;
    int64_t a, b, c, d = 0, g, d2 = 0, who = 0, pos = 0, conv = 0;
    json_t *u = NULL, *msgs = NULL;
    int created = -1, added = -1, more;

    assert_int_equal(store_begin(f->st), STORE_OK);
    a = mkuser(f->st, "alice");
    b = mkuser(f->st, "bob");
    c = mkuser(f->st, "carol");
    assert_int_equal(store_user_create(f->st, "alice", NULL, "x", 1, &u), STORE_CONFLICT);
    assert_null(u);
    assert_int_equal(store_user_create(f->st, "Alice", NULL, "x", 1, NULL), STORE_CONFLICT);
    assert_int_equal(store_user_by_name(f->st, "nobody", NULL, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_refresh_insert(f->st, a, "fam", "h1", 5000, 1000), STORE_OK);
    assert_int_equal(store_refresh_insert(f->st, a, "fam", "h1", 5000, 1000), STORE_CONFLICT);
    assert_int_equal(store_refresh_rotate(f->st, "nope", "h2", 6000, 1100, &who), STORE_NOT_FOUND);
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h2", 6000, 1100, &who), STORE_OK);
    assert_int_equal(store_refresh_rotate(f->st, "h2", "h1", 6000, 1100, &who), STORE_CONFLICT); /* h1 taken */
    assert_int_equal(store_refresh_rotate(f->st, "h1", "h3", 6000, 1200, &who), STORE_REUSED);
    assert_int_equal(store_refresh_rotate(f->st, "h2", "h4", 6000, 1300, &who), STORE_EXPIRED);
    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    assert_int_equal(created, 1);
    assert_int_equal(store_conv_create_direct(f->st, b, a, 100, &d2, &created), STORE_OK);
    assert_int_equal(created, 0);
    assert_int_equal(d2, d);
    assert_int_equal(store_conv_create_direct(f->st, a, c + 100, 100, &d2, &created), STORE_NOT_FOUND);
    assert_int_equal(store_conv_create_direct(f->st, a, a, 100, &d2, &created), STORE_BAD_REQUEST);
    g = mkgroup(f->st, a, &b, 1, 100);
    assert_int_equal(store_conv_create_group(f->st, a, "x", (int64_t[]){c + 100}, 1, 100, &conv), STORE_NOT_FOUND);
    assert_int_equal(store_member_insert(f->st, g, b, ROLE_MEMBER, 100, &added), STORE_OK);
    assert_int_equal(added, 0);
    assert_int_equal(store_member_set_role(f->st, g, c, ROLE_ADMIN), STORE_NOT_FOUND);
    assert_int_equal(store_member_delete(f->st, g, c, 0), STORE_NOT_FOUND);
    assert_int_equal(store_conv_get(f->st, g, c, &u), STORE_NOT_FOUND);
    assert_int_equal(store_member_ctx(f->st, g, c, NULL, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_read_set(f->st, g, c, 1, &pos), STORE_NOT_FOUND);
    assert_int_equal(store_msg_page(f->st, g, 0, -1, 0, &msgs, &more), STORE_BAD_REQUEST);
    assert_int_equal(store_msg_by_client(f->st, a, "none", NULL, NULL, NULL), STORE_NOT_FOUND);
    struct store_send v[] = {
        {.conv = g, .sender = a, .client_id = "k1", .body = "one", .body_len = 3},
        {.conv = g, .sender = c, .client_id = "k2", .body = "not a member", .body_len = 12},
        {.conv = g, .sender = a, .client_id = "k1", .body = "again", .body_len = 5},
    };
    assert_int_equal(store_send_batch(f->st, v, 3, 500, NULL), STORE_OK);
    assert_int_equal(v[1].rc, STORE_NOT_FOUND);
    assert_int_equal(v[2].dup, 1);
    struct store_send r = {.conv = d, .sender = a, .client_id = "k1", .body = "resend", .body_len = 6};
    assert_int_equal(store_send_batch(f->st, &r, 1, 600, NULL), STORE_OK);
    assert_int_equal(r.dup, 1);
    assert_int_equal(r.conv, g);
    assert_int_equal(store_commit(f->st), STORE_OK);

    assert_int_equal(count_rows(f, "SELECT count(*) FROM users"), 3);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM conversations"), 2);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM messages"), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL"), 2);
}

/* One batch of many sends over several conversations: dense seqs in batch
 * order per conversation, resends and refusals in between, exact bodies,
 * each sender's read position at its last message. */
static void test_send_batch_large(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol"), d = 0, pos = 0;
    int64_t convs[3], want[3] = {0, 0, 0};
    int created;
    enum { N = 300 };
    struct store_send *v = calloc(N, sizeof *v);
    char (*cid)[16] = calloc(N, sizeof *cid), (*body)[32] = calloc(N, sizeof *body);
    struct store_batch_out out = {0};

    assert_non_null(v);
    assert_non_null(cid);
    assert_non_null(body);
    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    convs[0] = mkgroup(f->st, a, &b, 1, 100);
    convs[1] = d;
    convs[2] = mkgroup(f->st, a, &c, 1, 100);
    for (int i = 0; i < N; i++) {
        int k = i % 3, resend = i % 50 == 49;
        snprintf(cid[i], sizeof cid[i], "c%d", resend ? i - 3 : i);
        int len = snprintf(body[i], sizeof body[i], "body %d", i);
        body[i][2] = (char)(i % 2 ? 0 : 'd'); /* NUL bytes in every other body */
        int64_t from = resend ? v[i - 3].sender : i % 7 == 6 && k == 2 ? b : a;
        v[i] = (struct store_send){.conv = convs[k], .sender = from, .client_id = cid[i], .body = body[i],
                                   .body_len = (size_t)len};
    }
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_send_batch(f->st, v, N, 5000, &out), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);
    for (int i = 0; i < N; i++) {
        int k = i % 3;
        if (i % 50 == 49) { /* the resend of i - 3, same conversation: its answer */
            assert_int_equal(v[i].rc, v[i - 3].rc);
            assert_int_equal(v[i].dup, v[i - 3].rc == STORE_OK);
            if (v[i].dup)
                assert_int_equal(v[i].seq, v[i - 3].seq);
        } else if (v[i].sender == b) { /* b is not in convs[2] */
            assert_int_equal(v[i].rc, STORE_NOT_FOUND);
        } else {
            assert_int_equal(v[i].rc, STORE_OK);
            assert_int_equal(v[i].dup, 0);
            assert_int_equal(v[i].seq, ++want[k]);
            assert_int_equal(v[i].ts, 5000);
        }
    }
    assert_int_equal(out.n, 3);
    store_batch_out_dispose(&out);
    for (int k = 0; k < 3; k++) {
        int64_t last = 0;
        assert_int_equal(store_conv_last_seq(f->st, convs[k], &last), STORE_OK);
        assert_int_equal(last, want[k]);
        assert_int_equal(store_read_set(f->st, convs[k], a, 0, &pos), STORE_OK);
        assert_int_equal(pos, want[k]);
    }
    /* the bodies come back byte for byte */
    for (int i = 0; i < N; i++) {
        json_t *msgs = NULL, *text;
        int more;
        if (v[i].dup || v[i].rc != STORE_OK)
            continue;
        assert_int_equal(store_msg_page(f->st, v[i].conv, v[i].seq + 1, -1, 1, &msgs, &more), STORE_OK);
        assert_int_equal(json_array_size(msgs), 1);
        text = json_object_get(json_array_get(msgs, 0), "body");
        assert_int_equal(json_string_length(text), v[i].body_len);
        assert_memory_equal(json_string_value(text), v[i].body, v[i].body_len);
        json_decref(msgs);
    }
    free(v);
    free(cid);
    free(body);
}

/* ---- PostgreSQL: several connections (nodes) at once ---- */

struct writer_arg {
    struct store *st;
    pthread_barrier_t *start;
    int id, rounds, fails;
    int64_t convs[2], a, b;
    int64_t *seqs[2]; /* the seqs handed out, per conversation */
    size_t nseq[2];
};

enum { PER_BATCH = 10 };

/* Batches of PER_BATCH sends over two conversations, in the order opposite
 * to the other writer's. */
static void *writer_main(void *p)
{
    struct writer_arg *w = p;
    char cids[PER_BATCH][32];

    pthread_barrier_wait(w->start);
    for (int r = 0; r < w->rounds; r++) {
        struct store_send v[PER_BATCH];
        for (int i = 0; i < PER_BATCH; i++) {
            int k = (i < PER_BATCH / 2) ^ w->id;
            snprintf(cids[i], sizeof cids[i], "w%d-r%d-%d", w->id, r, i);
            v[i] = (struct store_send){.conv = w->convs[k], .sender = i % 2 ? w->a : w->b, .client_id = cids[i],
                                       .body = cids[i], .body_len = strlen(cids[i])};
        }
        if (store_begin(w->st) != STORE_OK || store_send_batch(w->st, v, PER_BATCH, 1000 + r, NULL) != STORE_OK ||
            store_commit(w->st) != STORE_OK) {
            store_rollback(w->st);
            w->fails++;
            continue;
        }
        for (int i = 0; i < PER_BATCH; i++) {
            int k = v[i].conv == w->convs[1];
            if (v[i].rc != STORE_OK || v[i].dup)
                w->fails++;
            else
                w->seqs[k][w->nseq[k]++] = v[i].seq;
        }
    }
    return NULL;
}

static void test_pg_concurrent_writers(void **state)
{
    struct fx *f = *state;
    enum { WRITERS = 2, ROUNDS = 40 };
    struct writer_arg w[WRITERS];
    pthread_t t[WRITERS];
    pthread_barrier_t start;
    int64_t a, b, convs[2];

    if (!fx_is_pg())
        skip();
    a = mkuser(f->st, "alice");
    b = mkuser(f->st, "bob");
    convs[0] = mkgroup(f->st, a, &b, 1, 100);
    convs[1] = mkgroup(f->st, b, &a, 1, 100);
    pthread_barrier_init(&start, NULL, WRITERS);
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (struct writer_arg){.start = &start, .id = i, .rounds = ROUNDS, .a = a, .b = b};
        memcpy(w[i].convs, convs, sizeof convs);
        for (int k = 0; k < 2; k++)
            w[i].seqs[k] = calloc(ROUNDS * PER_BATCH, sizeof(int64_t));
        assert_int_equal(fx_open_other(f, 0, &w[i].st), STORE_OK);
    }
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);

    /* every seq of each conversation exactly once, 1..total */
    for (int k = 0; k < 2; k++) {
        size_t total = 0;
        int64_t last = 0;
        for (int i = 0; i < WRITERS; i++)
            total += w[i].nseq[k];
        assert_int_equal(total, WRITERS * ROUNDS * PER_BATCH / 2);
        uint8_t *seen = calloc(total + 1, 1);
        for (int i = 0; i < WRITERS; i++)
            for (size_t j = 0; j < w[i].nseq[k]; j++) {
                int64_t s = w[i].seqs[k][j];
                assert_true(s >= 1 && s <= (int64_t)total);
                assert_int_equal(seen[s], 0);
                seen[s] = 1;
            }
        free(seen);
        assert_int_equal(store_conv_last_seq(f->st, convs[k], &last), STORE_OK);
        assert_int_equal(last, (int64_t)total);
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(DISTINCT seq) FROM messages WHERE conv_id = %lld AND seq <= %zu",
                 (long long)convs[k], total);
        assert_int_equal(count_rows(f, sql), total);
    }
    for (int i = 0; i < WRITERS; i++) {
        assert_int_equal(w[i].fails, 0);
        store_close(w[i].st);
        for (int k = 0; k < 2; k++)
            free(w[i].seqs[k]);
    }
}

struct opener_arg {
    pthread_barrier_t *start;
    struct store *st;
    int rc;
    char err[256];
};

static void *opener_main(void *p)
{
    struct opener_arg *o = p;
    pthread_barrier_wait(o->start);
    o->rc = store_pg_open(fx_run.url, 1, &o->st, o->err, sizeof o->err);
    return NULL;
}

/* Nodes starting together against an empty database: the migrations run
 * once, the others wait for them (the advisory lock). */
static void test_pg_concurrent_migration(void **state)
{
    struct fx *f = *state;
    enum { OPENERS = 3, ROUNDS = 3 };

    if (!fx_is_pg())
        skip();
    for (int round = 0; round < ROUNDS; round++) {
        struct opener_arg o[OPENERS];
        pthread_t t[OPENERS];
        pthread_barrier_t start;
        char schema[64], sql[160];

        assert_int_equal(fx_new_schema(f, schema, sizeof schema), 0);
        fx_use_schema(schema);
        pthread_barrier_init(&start, NULL, OPENERS);
        for (int i = 0; i < OPENERS; i++) {
            o[i] = (struct opener_arg){.start = &start};
            assert_int_equal(pthread_create(&t[i], NULL, opener_main, &o[i]), 0);
        }
        for (int i = 0; i < OPENERS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < OPENERS; i++) {
            if (o[i].rc != STORE_OK)
                fprintf(stderr, "opener %d: %s\n", i, o[i].err);
            assert_int_equal(o[i].rc, STORE_OK);
        }
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.schema_version", schema);
        assert_int_equal(count_rows(f, sql), migrations_pg_count);
        /* and the schema works from any of them */
        assert_true(mkuser(o[0].st, "alice") > 0);
        assert_int_equal(store_user_by_name(o[OPENERS - 1].st, "alice", NULL, NULL), STORE_OK);
        for (int i = 0; i < OPENERS; i++)
            store_close(o[i].st);
        snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
        assert_int_equal(fx_admin_exec(f, sql), 0);
    }
    fx_use_schema(f->schema);
}

/* A reader needs a migrated schema. */
static void test_pg_reader_needs_schema(void **state)
{
    struct fx *f = *state;
    struct store *st = (struct store *)1;
    char schema[64], sql[160], err[256] = "";

    if (!fx_is_pg())
        skip();
    assert_int_equal(fx_new_schema(f, schema, sizeof schema), 0);
    fx_use_schema(schema);
    assert_int_equal(store_pg_open(fx_run.url, 0, &st, err, sizeof err), STORE_ERR);
    assert_null(st);
    assert_non_null(strstr(err, "schema_version"));
    fx_use_schema(f->schema);
    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
    assert_int_equal(fx_admin_exec(f, sql), 0);
}

struct direct_arg {
    struct store *st;
    int64_t a, b, conv;
    int created, rc;
};

static void *direct_main(void *p)
{
    struct direct_arg *d = p;
    d->rc = store_begin(d->st);
    if (d->rc == STORE_OK)
        d->rc = store_conv_create_direct(d->st, d->b, d->a, 200, &d->conv, &d->created);
    if (d->rc == STORE_OK)
        d->rc = store_commit(d->st);
    return NULL;
}

/* Two nodes create the same direct conversation at the same moment: the
 * second waits for the first, answers with its conversation, and leaves
 * nothing of its own attempt. */
static void test_pg_direct_race(void **state)
{
    struct fx *f = *state;
    int64_t a, b, conv = 0;
    int created = -1;
    pthread_t t;

    if (!fx_is_pg())
        skip();
    a = mkuser(f->st, "alice");
    b = mkuser(f->st, "bob");
    struct direct_arg d = {.a = a, .b = b, .rc = -100};
    assert_int_equal(fx_open_other(f, 0, &d.st), STORE_OK);
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &conv, &created), STORE_OK);
    assert_int_equal(created, 1);
    assert_int_equal(pthread_create(&t, NULL, direct_main, &d), 0);
    usleep(300 * 1000); /* the other node is now waiting on the pair's key */
    assert_int_equal(store_commit(f->st), STORE_OK);
    pthread_join(t, NULL);
    assert_int_equal(d.rc, STORE_OK);
    assert_int_equal(d.created, 0);
    assert_int_equal(d.conv, conv);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM conversations"), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM members"), 2);
    store_close(d.st);
}

/* Ends the sessions named app (pg_terminate_backend: the role may end its
 * own) and waits until they are gone. */
static void kill_sessions(struct fx *f, const char *app)
{
    char sql[256];

    snprintf(sql, sizeof sql,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'", app);
    assert_int_equal(count_rows(f, sql), 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", app);
    for (int i = 0; i < 200 && count_rows(f, sql) > 0; i++)
        usleep(10 * 1000);
    assert_int_equal(count_rows(f, sql), 0);
}

/* A lost connection: STORE_UNAVAILABLE, then ping reconnects; a transaction
 * open when it was lost is reported lost, and the next one works. */
static void test_pg_connection_lost(void **state)
{
    struct fx *f = *state;
    struct store *st = NULL;
    char app[64];
    int64_t a;

    if (!fx_is_pg())
        skip();
    a = mkuser(f->st, "alice");
    snprintf(app, sizeof app, "parley-test-%ld", (long)getpid());
    setenv("PGAPPNAME", app, 1); /* for this connection and its reconnections */
    assert_int_equal(fx_open_other(f, 0, &st), STORE_OK);
    assert_int_equal(store_user_exists(st, a), STORE_OK);
    assert_int_equal(store_ping(st), STORE_OK);

    kill_sessions(f, app);
    assert_int_equal(store_user_exists(st, a), STORE_UNAVAILABLE);
    assert_int_equal(store_user_exists(st, a), STORE_UNAVAILABLE);
    assert_int_equal(store_ping(st), STORE_OK); /* reconnected */
    assert_int_equal(store_user_exists(st, a), STORE_OK);

    usleep(300 * 1000); /* reconnections are at least 250 ms apart */
    assert_int_equal(store_begin(st), STORE_OK);
    assert_true(mkuser(st, "bob") > 0);
    kill_sessions(f, app);
    assert_int_equal(store_user_exists(st, a), STORE_UNAVAILABLE);
    assert_int_equal(store_ping(st), STORE_UNAVAILABLE); /* its transaction is gone */
    assert_int_equal(store_rollback(st), STORE_OK);
    assert_int_equal(store_ping(st), STORE_OK);
    assert_int_equal(store_begin(st), STORE_OK);
    assert_true(mkuser(st, "carol") > 0);
    assert_int_equal(store_commit(st), STORE_OK);
    assert_int_equal(store_user_by_name(f->st, "bob", NULL, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_user_by_name(f->st, "carol", NULL, NULL), STORE_OK);
    store_close(st);
    unsetenv("PGAPPNAME");
}

int main(int argc, char **argv)
{
    int skip_rc = fx_init(argc, argv);
    if (skip_rc)
        return skip_rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrations_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_needs_existing_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sqlite_connection_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users_search, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_reuse_revokes_family, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_reuse_inside_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_expired_and_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_unknown_member, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_get_not_member, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_list_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_batch_two_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_view, setup, teardown),
        cmocka_unit_test_setup_teardown(test_advance_and_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msg_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_with_nul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peers_and_summary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_sees_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers_keep_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_batch_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_concurrent_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_concurrent_migration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_needs_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_direct_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_connection_lost, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
