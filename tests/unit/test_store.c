/* Unit tests of store (SQLite): every test runs on a fresh database in its
 * own mkdtemp directory under /tmp. */
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
#include <sqlite3.h>

#include "migrations.h"
#include "store_sqlite.h"

struct fx {
    char dir[64];
    char path[128];
    struct store *st;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    char err[256] = "";

    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/parley-store-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/parley.db", f->dir);
    if (store_sqlite_open(f->path, 0, &f->st, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store_open: %s\n", err);
        rmdir(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    char p[160];

    store_close(f->st);
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

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


static int64_t count_rows(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    int64_t n = -1;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    if (sqlite3_step(s) == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

/* ---- schema ---- */

static void test_migrations_idempotent(void **state)
{
    struct fx *f = *state;
    char err[256] = "";
    json_t *u = NULL;

    assert_true(migrations_count >= 1);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM schema_version"), migrations_count);
    assert_int_equal(count_rows(f->path, "SELECT max(version) FROM schema_version"),
                     migrations[migrations_count - 1].version);
    mkuser(f->st, "alice");

    /* Re-opening applies nothing twice and keeps the data. */
    store_close(f->st);
    f->st = NULL;
    assert_int_equal(store_sqlite_open(f->path, 0, &f->st, err, sizeof err), STORE_OK);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM schema_version"), migrations_count);
    assert_int_equal(store_user_by_name(f->st, "alice", &u, NULL), STORE_OK);
    json_decref(u);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);
}

static void test_readonly_needs_existing_db(void **state)
{
    struct fx *f = *state;
    struct store *ro = (struct store *)1;
    char path[160], err[256] = "";

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
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM refresh_tokens WHERE family = 'fam1'"), 3);
    assert_int_equal(count_rows(f->path, "SELECT expires_at FROM refresh_tokens WHERE token_hash = 'h3'"), 7000);
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
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM conversations"), 1);

    assert_int_equal(store_conv_get(f->st, c1, b, &conv), STORE_OK);
    assert_int_equal(jint(conv, "id"), c1);
    assert_string_equal(jstr(conv, "kind"), "direct");
    assert_true(json_is_null(json_object_get(conv, "title")));
    assert_true(json_is_null(json_object_get(conv, "last_message")));
    assert_int_equal(jint(conv, "last_seq"), 0);
    assert_int_equal(jint(conv, "last_read_seq"), 0);
    assert_int_equal(jint(conv, "unread"), 0);
    assert_int_equal(jint(conv, "created_at"), 100);
    assert_int_equal(json_object_size(conv), 9);
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
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM conversations"), 0);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM members"), 0);
    /* Unknown creator too. */
    assert_int_equal(store_conv_create_group(f->st, b + 60, "t", (int64_t[]){b}, 1, 100, &conv), STORE_NOT_FOUND);
    assert_int_equal(count_rows(f->path, "SELECT count(*) FROM conversations"), 0);
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
    char err[256];
    struct store *other;

    assert_int_equal(store_conv_create_direct(f->st, a, b, 100, &d, &created), STORE_OK);
    assert_int_equal(store_sqlite_open(f->path, 0, &other, err, sizeof err), STORE_OK);
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
        assert_int_equal(json_object_size(row), 4);
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
    char err[256] = "";
    json_t *u = NULL, *list = NULL;
    int64_t a, b, g, last = -1;

    assert_int_equal(store_sqlite_open(f->path, 1, &ro, err, sizeof err), STORE_OK);
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

    /* A reader cannot write. */
    assert_int_equal(store_user_create(ro, "mallory", NULL, "h", 1, NULL), STORE_ERR);
    store_close(ro);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrations_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_needs_existing_db, setup, teardown),
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
