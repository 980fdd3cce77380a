/* Unit tests of the PostgreSQL backend's version-2 operations (store_pg.c,
 * migrations_pg/002_v2.sql) that the shared store tests do not reach: what
 * is only PostgreSQL's (rows gone at once after a delete, blobs in chunks,
 * several connections changing one conversation at once) and the corners
 * of its statements (checks made before any write keep the transaction
 * usable). PostgreSQL only: on the server of PARLEY_TEST_PG_URL (scripts/pgtmp
 * exec sets it; `make unit` runs it so); without it, exit 77 (skipped). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
#include <sodium.h>

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
    json_decref(u);
    return id;
}

static int64_t mkgroup(struct store *st, int64_t owner, const int64_t *members, size_t n)
{
    int64_t conv = 0;

    assert_int_equal(store_conv_create_group(st, owner, "room", members, n, 100, &conv), STORE_OK);
    return conv;
}

/* One send (no v2 fields unless given) that must be stored: its seq. */
static int64_t send_full(struct store *st, int64_t conv, int64_t from, const char *cid, const char *body,
                         int64_t reply_to, const char *const *att, size_t n_att, json_t **att_out)
{
    struct store_send m = {.conv = conv, .sender = from, .client_id = cid, .body = body, .body_len = strlen(body),
                           .reply_to = reply_to, .att = att, .n_att = n_att};

    assert_int_equal(store_send_batch(st, &m, 1, 5000, NULL), STORE_OK);
    assert_int_equal(m.rc, STORE_OK);
    if (att_out)
        *att_out = m.att_out;
    else
        json_decref(m.att_out);
    return m.seq;
}

static int64_t send1(struct store *st, int64_t conv, int64_t from, const char *cid, const char *body)
{
    return send_full(st, conv, from, cid, body, 0, NULL, 0, NULL);
}

static int64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    assert_non_null(v);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static int64_t count_rows(struct fx *f, const char *sql)
{
    int64_t n = fx_count(f, sql);
    assert_true(n >= 0);
    return n;
}

/* A file of n bytes (byte i = i * 7 + seed) written to a temporary path;
 * its sha256 in hex into sha. */
static void mkfile(char *path, size_t len, size_t n, int seed, char sha[65])
{
    unsigned char *p = malloc(n ? n : 1), digest[32];
    FILE *fp;

    snprintf(path, len, "/tmp/parley-att-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + (size_t)seed);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    fclose(fp);
    crypto_hash_sha256(digest, p, n);
    sodium_bin2hex(sha, 65, digest, sizeof digest);
    free(p);
}

/* An upload of n bytes by owner: its id (malloc'd). */
static char *upload(struct store *st, int64_t owner, size_t n, int seed, char sha[65])
{
    char path[64];
    json_t *att = NULL;
    char *id;

    mkfile(path, sizeof path, n, seed, sha);
    assert_int_equal(store_att_create(st, owner, "photo.png", "image/png", path, (int64_t)n, sha, 2000, 0, &att),
                     STORE_OK);
    unlink(path);
    assert_int_equal(jint(att, "size"), (int64_t)n);
    id = strdup(json_string_value(json_object_get(att, "id")));
    assert_true(strlen(id) >= 16);
    json_decref(att);
    return id;
}

static int64_t change(struct store *st, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                      const char *text, int want_changed)
{
    int64_t mod = -1;
    int changed = -1;

    assert_int_equal(store_msg_change(st, conv, seq, user, kind, text, text ? strlen(text) : 0, 7000, &mod,
                                      &changed),
                     STORE_OK);
    assert_int_equal(changed, want_changed);
    return mod;
}

/* ---- sends with replies and attachments ---- */

static void test_reply_to(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    int64_t g = mkgroup(f->st, a, &b, 1);
    json_t *msg;

    send1(f->st, g, a, "c1", "one");
    /* a batch: a reply to the first, to the batch's own earlier message,
     * past it, then a valid one again (the refused one took no seq) */
    struct store_send v[4] = {
        {.conv = g, .sender = b, .client_id = "c2", .body = "two", .body_len = 3, .reply_to = 1},
        {.conv = g, .sender = a, .client_id = "c3", .body = "three", .body_len = 5, .reply_to = 2},
        {.conv = g, .sender = a, .client_id = "c4", .body = "four", .body_len = 4, .reply_to = 4},
        {.conv = g, .sender = a, .client_id = "c5", .body = "five", .body_len = 4, .reply_to = -1},
    };
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_send_batch(f->st, v, 4, 6000, NULL), STORE_OK);
    assert_int_equal(v[0].rc, STORE_OK);
    assert_int_equal(v[0].seq, 2);
    assert_int_equal(v[1].rc, STORE_OK);
    assert_int_equal(v[1].seq, 3);
    assert_int_equal(v[2].rc, STORE_BAD_REQUEST);
    assert_non_null(v[2].why);
    assert_int_equal(v[3].rc, STORE_BAD_REQUEST);
    /* the transaction goes on */
    assert_int_equal(send_full(f->st, g, a, "c6", "six", 3, NULL, 0, NULL), 4);
    assert_int_equal(store_commit(f->st), STORE_OK);

    assert_int_equal(store_msg_get(f->st, g, 3, &msg), STORE_OK);
    assert_int_equal(jint(msg, "reply_to"), 2);
    assert_null(json_object_get(msg, "mod"));
    assert_null(json_object_get(msg, "attachments"));
    json_decref(msg);
    assert_int_equal(store_msg_get(f->st, g, 1, &msg), STORE_OK);
    assert_null(json_object_get(msg, "reply_to"));
    json_decref(msg);
    assert_int_equal(store_msg_get(f->st, g, 9, &msg), STORE_NOT_FOUND);
}

static void test_attachments_send(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), e = mkuser(f->st, "eve");
    int64_t g = mkgroup(f->st, a, &b, 1);
    char sha1[65], sha2[65], sha3[65];
    char *x = upload(f->st, a, 1000, 1, sha1), *y = upload(f->st, a, 300 * 1024, 2, sha2),
         *z = upload(f->st, b, 10, 3, sha3);
    json_t *msg, *att, *msgs;
    int more;

    /* refusals, each before anything is written */
    const char *twice[] = {x, x}, *bobs[] = {z}, *unknown[] = {"nope"}, *many[11];
    for (int i = 0; i < 11; i++)
        many[i] = x;
    struct store_send v[5] = {
        {.conv = g, .sender = a, .client_id = "r1", .body = "", .att = twice, .n_att = 2},
        {.conv = g, .sender = a, .client_id = "r2", .body = "", .att = bobs, .n_att = 1},
        {.conv = g, .sender = a, .client_id = "r3", .body = "", .att = unknown, .n_att = 1},
        {.conv = g, .sender = a, .client_id = "r4", .body = "", .att = many, .n_att = 11},
        {.conv = g, .sender = e, .client_id = "r5", .body = "", .att = bobs, .n_att = 1},
    };
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_send_batch(f->st, v, 5, 6000, NULL), STORE_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(v[i].rc, STORE_BAD_REQUEST);
        assert_non_null(v[i].why);
        assert_null(v[i].att_out);
    }
    assert_int_equal(v[4].rc, STORE_NOT_FOUND); /* not a member: that first */

    /* a batch: y and x on one message, then x again on another: refused */
    const char *yx[] = {y, x}, *xo[] = {x};
    struct store_send w[3] = {
        {.conv = g, .sender = a, .client_id = "s1", .body = "look", .body_len = 4, .att = yx, .n_att = 2},
        {.conv = g, .sender = a, .client_id = "s2", .body = "again", .body_len = 5, .att = xo, .n_att = 1},
        {.conv = g, .sender = a, .client_id = "s1", .body = "look", .body_len = 4, .att = yx, .n_att = 2},
    };
    assert_int_equal(store_send_batch(f->st, w, 3, 6000, NULL), STORE_OK);
    assert_int_equal(w[0].rc, STORE_OK);
    assert_int_equal(w[0].seq, 1);
    assert_int_equal(json_array_size(w[0].att_out), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(w[0].att_out, 0), "id")), y);
    assert_string_equal(json_string_value(json_object_get(json_array_get(w[0].att_out, 1), "name")), "photo.png");
    assert_int_equal(w[1].rc, STORE_BAD_REQUEST);
    assert_int_equal(w[2].rc, STORE_OK);
    assert_int_equal(w[2].dup, 1);
    assert_null(w[2].att_out);
    json_decref(w[0].att_out);
    assert_int_equal(store_commit(f->st), STORE_OK);

    /* a resend after the commit attaches nothing again */
    struct store_send r = {.conv = g, .sender = a, .client_id = "s1", .body = "look", .body_len = 4, .att = yx,
                           .n_att = 2};
    assert_int_equal(store_send_batch(f->st, &r, 1, 6000, NULL), STORE_OK);
    assert_int_equal(r.dup, 1);
    assert_null(r.att_out);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM attachments WHERE conv_id IS NOT NULL"), 2);
    /* attached already: refused, and the owner is told so; anyone else is
     * told it is unknown */
    struct store_send q[2] = {
        {.conv = g, .sender = a, .client_id = "s3", .body = "x", .body_len = 1, .att = xo, .n_att = 1},
        {.conv = g, .sender = b, .client_id = "s4", .body = "x", .body_len = 1, .att = xo, .n_att = 1},
    };
    assert_int_equal(store_send_batch(f->st, q, 2, 6000, NULL), STORE_OK);
    assert_int_equal(q[0].rc, STORE_BAD_REQUEST);
    assert_string_equal(q[0].why, "attachment already attached to a message");
    assert_int_equal(q[1].rc, STORE_BAD_REQUEST);
    assert_string_equal(q[1].why, "unknown attachment");

    /* every read of the message carries them, in the order given */
    assert_int_equal(store_msg_get(f->st, g, 1, &msg), STORE_OK);
    att = json_object_get(msg, "attachments");
    assert_int_equal(json_array_size(att), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(att, 0), "id")), y);
    assert_int_equal(jint(json_array_get(att, 0), "size"), 300 * 1024);
    assert_string_equal(json_string_value(json_object_get(json_array_get(att, 1), "id")), x);
    assert_int_equal(json_object_size(json_array_get(att, 1)), 4);
    json_decref(msg);
    assert_int_equal(store_msg_page(f->st, g, 0, -1, 10, &msgs, &more), STORE_OK);
    assert_int_equal(json_array_size(json_object_get(json_array_get(msgs, 0), "attachments")), 2);
    json_decref(msgs);
    assert_int_equal(store_conv_get(f->st, g, b, &msg), STORE_OK);
    assert_int_equal(json_array_size(json_object_get(json_object_get(msg, "last_message"), "attachments")), 2);
    assert_int_equal(jint(msg, "last_mod"), 0);
    json_decref(msg);

    /* permission: the uploader and members; bob's own pending upload */
    char *sha = NULL;
    assert_int_equal(store_att_get(f->st, x, b, &att, &sha), STORE_OK);
    assert_string_equal(sha, sha1);
    free(sha);
    json_decref(att);
    assert_int_equal(store_att_get(f->st, x, e, &att, &sha), STORE_NOT_FOUND);
    assert_int_equal(store_att_get(f->st, z, a, &att, &sha), STORE_NOT_FOUND);
    assert_int_equal(store_att_get(f->st, z, b, &att, &sha), STORE_OK);
    free(sha);
    json_decref(att);
    assert_int_equal(store_att_path(f->st, sha1, &sha), STORE_NOT_FOUND);
    assert_null(sha);
    free(x);
    free(y);
    free(z);
}

/* ---- blobs ---- */

static void test_blob_chunks_and_ranges(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    const size_t n = 600 * 1024 + 5; /* three chunks, the last one short */
    char sha[65], sha_again[65];
    char *x = upload(f->st, a, n, 9, sha), *y = upload(f->st, b, n, 9, sha_again);
    unsigned char *buf = malloc(n + 10);
    size_t got;

    /* the same bytes are stored once, referenced twice */
    assert_string_equal(sha, sha_again);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blobs"), 1);
    assert_int_equal(count_rows(f, "SELECT refs FROM blobs"), 2);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blob_chunks"), 3);
    assert_int_equal(count_rows(f, "SELECT max(length(data)) FROM blob_chunks"), 262144);

    /* whole, across a chunk's edge, the tail, past the end */
    assert_int_equal(store_att_read(f->st, sha, 0, buf, n + 10, &got), STORE_OK);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++)
        if (buf[i] != (unsigned char)(i * 7 + 9))
            fail_msg("byte %zu", i);
    assert_int_equal(store_att_read(f->st, sha, 262144 - 3, buf, 7, &got), STORE_OK);
    assert_int_equal(got, 7);
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(buf[i], (unsigned char)((262144 - 3 + i) * 7 + 9));
    assert_int_equal(store_att_read(f->st, sha, (int64_t)n - 2, buf, 100, &got), STORE_OK);
    assert_int_equal(got, 2);
    assert_int_equal(store_att_read(f->st, sha, (int64_t)n + 5, buf, 100, &got), STORE_OK);
    assert_int_equal(got, 0);
    assert_int_equal(store_att_read(f->st, "0000", 0, buf, 100, &got), STORE_NOT_FOUND);

    /* prune: the never-attached uploads older than the cutoff; the bytes go
     * with the last reference */
    int deleted = -1;
    assert_int_equal(store_att_prune(f->st, 2000, 10, &deleted), STORE_OK);
    assert_int_equal(deleted, 0); /* created at 2000: not before */
    assert_int_equal(store_att_prune(f->st, 2001, 1, &deleted), STORE_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(count_rows(f, "SELECT refs FROM blobs"), 1);
    assert_int_equal(store_att_prune(f->st, 2001, 10, &deleted), STORE_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blobs"), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blob_chunks"), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM attachments"), 0);
    assert_int_equal(store_att_read(f->st, sha, 0, buf, 10, &got), STORE_NOT_FOUND);

    /* an empty file */
    char *e = upload(f->st, a, 0, 0, sha);
    assert_int_equal(store_att_read(f->st, sha, 0, buf, 10, &got), STORE_OK);
    assert_int_equal(got, 0);
    free(e);
    free(buf);
    free(x);
    free(y);
}

/* ---- changes ---- */

static void test_changes_and_mods(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    int64_t g = mkgroup(f->st, a, &b, 1), h = mkgroup(f->st, b, &a, 1);
    struct store_msg_facts facts;
    json_t *msg, *msgs, *r;
    int64_t last_mod, mods[3];

    send1(f->st, g, a, "c1", "hello");
    send1(f->st, g, b, "c2", "world");
    assert_int_equal(store_msg_facts(f->st, g, 1, &facts), STORE_OK);
    assert_int_equal(facts.sender, a);
    assert_int_equal(facts.deleted, 0);
    assert_int_equal(facts.mod, 0);
    assert_int_equal(store_msg_facts(f->st, g, 3, &facts), STORE_NOT_FOUND);

    assert_int_equal(change(f->st, g, 1, a, CHANGE_EDIT, "hello again", 1), 1);
    assert_int_equal(change(f->st, g, 2, b, CHANGE_REACT_ON, "👍", 1), 2);
    assert_int_equal(change(f->st, g, 2, a, CHANGE_REACT_ON, "👍", 1), 3);
    assert_int_equal(change(f->st, g, 2, a, CHANGE_REACT_ON, "🎉", 1), 4);
    /* no-ops: the current mod, nothing written */
    assert_int_equal(change(f->st, g, 2, a, CHANGE_REACT_ON, "👍", 0), 4);
    assert_int_equal(change(f->st, g, 1, a, CHANGE_REACT_OFF, "👍", 0), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM reactions"), 3);
    /* the other conversation counts its own mods */
    send1(f->st, h, a, "c3", "elsewhere");
    assert_int_equal(change(f->st, h, 1, b, CHANGE_REACT_ON, "👍", 1), 1);

    assert_int_equal(store_msg_get(f->st, g, 2, &msg), STORE_OK);
    r = json_object_get(msg, "reactions");
    assert_int_equal(json_object_size(r), 2);
    assert_int_equal(json_array_size(json_object_get(r, "👍")), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 0)), b);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 1)), a);
    assert_int_equal(jint(msg, "mod"), 4);
    assert_null(json_object_get(msg, "edited_at"));
    json_decref(msg);
    assert_int_equal(change(f->st, g, 2, b, CHANGE_REACT_OFF, "👍", 1), 5);
    assert_int_equal(change(f->st, g, 2, a, CHANGE_REACT_OFF, "🎉", 1), 6);
    assert_int_equal(store_msg_get(f->st, g, 2, &msg), STORE_OK);
    assert_int_equal(json_object_size(json_object_get(msg, "reactions")), 1);
    json_decref(msg);
    assert_int_equal(store_msg_get(f->st, g, 1, &msg), STORE_OK);
    assert_string_equal(json_string_value(json_object_get(msg, "body")), "hello again");
    assert_int_equal(jint(msg, "edited_at"), 7000);
    json_decref(msg);

    /* changes after a mod, in mod order, with last_mod */
    assert_int_equal(store_changes_page(f->st, g, 0, 10, &msgs, &last_mod), STORE_OK);
    assert_int_equal(last_mod, 6);
    assert_int_equal(json_array_size(msgs), 2);
    assert_int_equal(jint(json_array_get(msgs, 0), "seq"), 1);
    assert_int_equal(jint(json_array_get(msgs, 1), "mod"), 6);
    json_decref(msgs);
    assert_int_equal(store_changes_page(f->st, g, 1, 10, &msgs, &last_mod), STORE_OK);
    assert_int_equal(json_array_size(msgs), 1);
    json_decref(msgs);
    assert_int_equal(store_changes_page(f->st, g, 6, 10, &msgs, &last_mod), STORE_OK);
    assert_int_equal(json_array_size(msgs), 0);
    json_decref(msgs);
    assert_int_equal(store_changes_page(f->st, 999999, 0, 10, &msgs, &last_mod), STORE_NOT_FOUND);

    int64_t convs[3] = {h, 999999, g};
    int64_t seqs3[3];
    assert_int_equal(store_conv_last_seqs(f->st, convs, 3, seqs3, mods), STORE_OK);
    assert_int_equal(mods[0], 1);
    assert_int_equal(mods[1], 0);
    assert_int_equal(mods[2], 6);
    assert_int_equal(store_sync_summary(f->st, a, &msgs), STORE_OK);
    assert_int_equal(json_array_size(msgs), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *row = json_array_get(msgs, i);
        assert_int_equal(jint(row, "last_mod"), jint(row, "conv") == g ? 6 : 1);
    }
    json_decref(msgs);
    assert_int_equal(store_conv_list(f->st, a, &msgs), STORE_OK);
    for (size_t i = 0; i < 2; i++) {
        json_t *row = json_array_get(msgs, i);
        assert_int_equal(jint(row, "last_mod"), jint(row, "id") == g ? 6 : 1);
    }
    json_decref(msgs);

    /* no such message */
    int64_t mod;
    int changed;
    assert_int_equal(store_msg_change(f->st, g, 9, a, CHANGE_EDIT, "x", 1, 1, &mod, &changed), STORE_NOT_FOUND);
    assert_int_equal(store_msg_change(f->st, 999999, 1, a, CHANGE_DELETE, NULL, 0, 1, &mod, &changed),
                     STORE_NOT_FOUND);
    assert_int_equal(count_rows(f, "SELECT last_mod FROM conversations ORDER BY last_mod DESC LIMIT 1"), 6);
}

static void test_delete_erases(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    int64_t g = mkgroup(f->st, a, &b, 1);
    char sha1[65], sha2[65];
    char *x = upload(f->st, a, 1000, 1, sha1), *y = upload(f->st, a, 300000, 2, sha2),
         *y2 = upload(f->st, b, 300000, 2, sha2);
    const char *xy[] = {x, y};
    json_t *msg, *res;
    int64_t mod, next;
    int changed;

    send_full(f->st, g, a, "c1", "secret words", 0, xy, 2, NULL);
    send1(f->st, g, b, "c2", "other words");
    change(f->st, g, 1, b, CHANGE_REACT_ON, "👍", 1);
    assert_int_equal(change(f->st, g, 1, a, CHANGE_EDIT, "secret edited words", 1), 2);

    /* inside the writer's transaction, with a job savepoint around it */
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_msg_change(f->st, g, 1, b, CHANGE_DELETE, NULL, 0, 8000, &mod, &changed), STORE_OK);
    assert_int_equal(store_release(f->st), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);
    assert_int_equal(mod, 3);
    assert_int_equal(changed, 1);

    assert_int_equal(count_rows(f, "SELECT count(*) FROM messages WHERE position('secret' in"
                                   " convert_from(body, 'UTF8')) > 0"),
                     0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM messages WHERE tsv IS NOT NULL AND seq = 1"), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM reactions"), 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM attachments"), 1); /* bob's pending upload of y's bytes */
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blobs"), 1);
    assert_int_equal(count_rows(f, "SELECT refs FROM blobs"), 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blob_chunks"), 2);

    assert_int_equal(store_msg_get(f->st, g, 1, &msg), STORE_OK);
    assert_string_equal(json_string_value(json_object_get(msg, "body")), "");
    assert_true(json_is_true(json_object_get(msg, "deleted")));
    assert_null(json_object_get(msg, "attachments"));
    assert_null(json_object_get(msg, "reactions"));
    assert_int_equal(jint(msg, "mod"), 3);
    json_decref(msg);
    assert_int_equal(store_att_get(f->st, x, a, &msg, NULL), STORE_NOT_FOUND);

    /* a deleted message: no edit, no reaction; deleting again changes nothing */
    assert_int_equal(store_msg_change(f->st, g, 1, a, CHANGE_EDIT, "x", 1, 1, &mod, &changed), STORE_BAD_REQUEST);
    assert_int_equal(store_msg_change(f->st, g, 1, a, CHANGE_REACT_ON, "👍", 4, 1, &mod, &changed),
                     STORE_BAD_REQUEST);
    assert_int_equal(change(f->st, g, 1, a, CHANGE_DELETE, NULL, 0), 3);
    assert_int_equal(change(f->st, g, 1, a, CHANGE_REACT_OFF, "👍", 0), 3);

    /* gone from search at once */
    const char *w[] = {"secret"};
    assert_int_equal(store_search(f->st, a, 0, w, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 0);
    json_decref(res);
    const char *w2[] = {"words"};
    assert_int_equal(store_search(f->st, a, 0, w2, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);

    /* the last reference goes: the bytes with it */
    int deleted;
    assert_int_equal(store_att_prune(f->st, 1 << 30, 10, &deleted), STORE_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM blob_chunks"), 0);
    free(x);
    free(y);
    free(y2);
}

/* A refused change inside a batch's transaction leaves it usable, and a
 * rolled-back job savepoint takes its change back (mod included). */
static void test_change_in_transaction(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    int64_t g = mkgroup(f->st, a, &b, 1);
    int64_t mod;
    int changed;

    send1(f->st, g, a, "c1", "one");
    change(f->st, g, 1, a, CHANGE_DELETE, NULL, 1);
    send1(f->st, g, a, "c2", "two");
    assert_int_equal(store_begin(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_msg_change(f->st, g, 1, a, CHANGE_EDIT, "x", 1, 1, &mod, &changed), STORE_BAD_REQUEST);
    assert_int_equal(store_rollback_to(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_msg_change(f->st, g, 2, a, CHANGE_EDIT, "x", 1, 1, &mod, &changed), STORE_OK);
    assert_int_equal(mod, 2);
    assert_int_equal(store_rollback_to(f->st), STORE_OK);
    assert_int_equal(store_savepoint(f->st), STORE_OK);
    assert_int_equal(store_msg_change(f->st, g, 2, a, CHANGE_REACT_ON, "ok", 2, 1, &mod, &changed), STORE_OK);
    assert_int_equal(mod, 2);
    assert_int_equal(store_release(f->st), STORE_OK);
    assert_int_equal(store_commit(f->st), STORE_OK);
    assert_int_equal(count_rows(f, "SELECT last_mod FROM conversations"), 2);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM messages WHERE edited_at IS NOT NULL"), 0);
}

/* ---- search ---- */

static void test_search(void **state)
{
    struct fx *f = *state;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob"), c = mkuser(f->st, "carol");
    int64_t g = mkgroup(f->st, a, &b, 1), h = mkgroup(f->st, b, &c, 1);
    json_t *res;
    int64_t next;

    send1(f->st, g, a, "c1", "Le Café est fermé");
    send1(f->st, g, b, "c2", "cafeteria lunch at noon");
    send1(f->st, h, b, "c3", "cafe with carol");
    char nul[] = "hidden\0cafe words";
    struct store_send m = {.conv = g, .sender = a, .client_id = "c4", .body = nul, .body_len = sizeof nul - 1};
    assert_int_equal(store_send_batch(f->st, &m, 1, 1, NULL), STORE_OK);
    send1(f->st, g, a, "c5", "o'reilly \\ back'slash");

    /* whole words, case and accents folded, the last word a prefix */
    const char *w1[] = {"CAFE"};
    assert_int_equal(store_search(f->st, a, 0, w1, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 3); /* c4, c2 (prefix), c1: not carol's conversation */
    assert_int_equal(jint(json_array_get(res, 0), "seq"), 3);
    assert_int_equal(jint(json_array_get(res, 2), "seq"), 1);
    assert_int_equal(json_string_length(json_object_get(json_array_get(res, 0), "body")), sizeof nul - 1);
    assert_int_equal(next, 0);
    json_decref(res);
    const char *w2[] = {"café", "FERM"};
    assert_int_equal(store_search(f->st, a, 0, w2, 2, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    assert_int_equal(jint(json_array_get(res, 0), "from"), a);
    json_decref(res);
    const char *w3[] = {"cafe", "lunch"}; /* only the last word is a prefix */
    assert_int_equal(store_search(f->st, a, 0, w3, 2, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 0);
    json_decref(res);
    /* quotes and backslashes are words' characters, never operators */
    const char *w4[] = {"o'reilly", "back'", "'", "\\", "&", "!|"};
    assert_int_equal(store_search(f->st, a, 0, w4, 6, 0, 10, &res, &next), STORE_OK);
    json_decref(res);
    const char *w5[] = {"reilly"};
    assert_int_equal(store_search(f->st, a, 0, w5, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);

    /* case beyond ASCII, whatever the database's locale (scripts/pgtmp's is
     * "C"): Cyrillic and Greek, final sigma included */
    send1(f->st, g, b, "c6", "встреча в Москве ΟΔΟΣ");
    const char *w8[] = {"МОСКВЕ", "встреча"}, *w9[] = {"οδοσ"}, *w10[] = {"Οδός"};
    assert_int_equal(store_search(f->st, a, 0, w8, 2, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);
    assert_int_equal(store_search(f->st, a, 0, w9, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);
    assert_int_equal(store_search(f->st, a, 0, w10, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);

    /* one conversation; pages with the cursor */
    assert_int_equal(store_search(f->st, b, h, w1, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);
    assert_int_equal(store_search(f->st, b, 0, w1, 1, 0, 2, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 2);
    assert_true(next > 0);
    json_decref(res);
    assert_int_equal(store_search(f->st, b, 0, w1, 1, next, 2, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 2);
    assert_int_equal(next, 0);
    assert_int_equal(jint(json_array_get(res, 1), "seq"), 1);
    json_decref(res);

    /* an edit is found by its new text only; a member who left finds nothing */
    change(f->st, g, 1, a, CHANGE_EDIT, "Le thé", 1);
    const char *w6[] = {"ferme"};
    assert_int_equal(store_search(f->st, a, 0, w6, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 0);
    json_decref(res);
    const char *w7[] = {"THE"};
    assert_int_equal(store_search(f->st, b, 0, w7, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);
    assert_int_equal(store_member_delete(f->st, g, b, 0), STORE_OK);
    assert_int_equal(store_search(f->st, b, 0, w7, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 0);
    json_decref(res);
    assert_int_equal(store_search(f->st, b, 0, NULL, 0, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 0);
    json_decref(res);
}

/* ---- a version-1 database ---- */

/* Messages stored under 001 alone get ids in time order and search vectors
 * (a body with a NUL byte included) when the later migrations run. */
static void test_migrate_v1(void **state)
{
    struct fx *f = *state;
    char schema[64], sql[256];
    struct store *st = NULL;
    json_t *res, *msg;
    int64_t next;

    assert_int_equal(fx_new_schema(f, schema, sizeof schema), 0);
    snprintf(sql, sizeof sql, "SET search_path = %s", schema);
    assert_int_equal(fx_admin_exec(f, sql), 0);
    assert_int_equal(fx_admin_exec(f, migrations_pg[0].sql), 0);
    assert_int_equal(fx_admin_exec(f, "CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL,"
                                      " applied_at bigint NOT NULL);"
                                      "INSERT INTO schema_version VALUES (1, '001_init', 0);"
                                      "INSERT INTO users(username, display_name, password_hash, created_at)"
                                      " VALUES ('alice', 'alice', 'x', 0);"
                                      "INSERT INTO conversations(kind, created_by, created_at, last_seq, last_activity)"
                                      " VALUES ('group', 1, 0, 3, 0);"
                                      "INSERT INTO members VALUES (1, 1, 'owner', 0, 0);"
                                      "INSERT INTO messages VALUES (1, 2, 1, 'b', '\\x6869006361666521'::bytea, 20),"
                                      " (1, 1, 1, 'a', convert_to('Café Москва', 'UTF8'), 10),"
                                      " (1, 3, 1, 'c', convert_to('last', 'UTF8'), 30)"),
                     0);
    fx_use_schema(schema);
    char err[256] = "";
    assert_int_equal(store_pg_open(fx_run.url, 1, &st, err, sizeof err), STORE_OK);
    assert_int_equal(fx_count(f, "SELECT max(version) FROM schema_version"),
                     migrations_pg[migrations_pg_count - 1].version);
    assert_int_equal(fx_count(f, "SELECT id FROM messages WHERE seq = 2"), 2);

    const char *w1[] = {"cafe"}, *w2[] = {"МОСКВА"};
    assert_int_equal(store_search(st, 1, 0, w1, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 2); /* "hi\0cafe!" and "Café Москва" */
    assert_int_equal(jint(json_array_get(res, 0), "seq"), 2);
    json_decref(res);
    assert_int_equal(store_search(st, 1, 0, w2, 1, 0, 10, &res, &next), STORE_OK);
    assert_int_equal(json_array_size(res), 1);
    json_decref(res);
    /* new messages number on after the old ones */
    send1(st, 1, 1, "d", "cafe again");
    assert_int_equal(store_search(st, 1, 0, w1, 1, 0, 1, &res, &next), STORE_OK);
    assert_int_equal(jint(json_array_get(res, 0), "seq"), 4);
    json_decref(res);
    assert_int_equal(store_msg_get(st, 1, 1, &msg), STORE_OK);
    assert_null(json_object_get(msg, "mod"));
    json_decref(msg);
    store_close(st);
    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
    assert_int_equal(fx_admin_exec(f, sql), 0);
    snprintf(sql, sizeof sql, "SET search_path = %s", f->schema);
    assert_int_equal(fx_admin_exec(f, sql), 0);
    fx_use_schema(f->schema);
}

/* ---- several connections changing one conversation ---- */

struct changer {
    struct store *st;
    pthread_barrier_t *start;
    int64_t conv, user, nmsg;
    int rounds, fails;
    int64_t *mods;
    size_t nmods;
};

/* Rounds of one transaction each: a reaction on and off and an edit of a
 * message, the messages taken in turn. */
static void *changer_main(void *p)
{
    struct changer *c = p;

    pthread_barrier_wait(c->start);
    for (int r = 0; r < c->rounds; r++) {
        int64_t seq = 1 + r % c->nmsg, mod[3];
        int changed[3] = {0, 0, 0};
        char body[32];
        snprintf(body, sizeof body, "edit %lld %d", (long long)c->user, r);
        if (store_begin(c->st) != STORE_OK ||
            store_msg_change(c->st, c->conv, seq, c->user, CHANGE_REACT_ON, "👍", 4, 1, &mod[0], &changed[0]) ||
            store_msg_change(c->st, c->conv, seq, c->user, CHANGE_EDIT, body, strlen(body), 1, &mod[1],
                             &changed[1]) ||
            store_msg_change(c->st, c->conv, seq, c->user, CHANGE_REACT_OFF, "👍", 4, 1, &mod[2], &changed[2]) ||
            store_commit(c->st) != STORE_OK) {
            store_rollback(c->st);
            c->fails++;
            continue;
        }
        for (int i = 0; i < 3; i++) {
            if (!changed[i])
                c->fails++;
            c->mods[c->nmods++] = mod[i];
        }
    }
    return NULL;
}

static void test_mods_dense_two_connections(void **state)
{
    struct fx *f = *state;
    enum { CHANGERS = 2, ROUNDS = 40, NMSG = 3 };
    struct changer c[CHANGERS];
    pthread_t t[CHANGERS];
    pthread_barrier_t start;
    int64_t a = mkuser(f->st, "alice"), b = mkuser(f->st, "bob");
    int64_t g = mkgroup(f->st, a, &b, 1);

    for (int i = 0; i < NMSG; i++) {
        char cid[8];
        snprintf(cid, sizeof cid, "m%d", i);
        send1(f->st, g, a, cid, "hi");
    }
    pthread_barrier_init(&start, NULL, CHANGERS);
    for (int i = 0; i < CHANGERS; i++) {
        c[i] = (struct changer){.start = &start, .conv = g, .user = i ? b : a, .nmsg = NMSG, .rounds = ROUNDS};
        c[i].mods = calloc(3 * ROUNDS, sizeof(int64_t));
        assert_int_equal(fx_open_other(f, 0, &c[i].st), STORE_OK);
    }
    for (int i = 0; i < CHANGERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, changer_main, &c[i]), 0);
    for (int i = 0; i < CHANGERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);

    /* every mod exactly once, 1..total: dense */
    size_t total = 0;
    for (int i = 0; i < CHANGERS; i++) {
        assert_int_equal(c[i].fails, 0);
        total += c[i].nmods;
    }
    assert_int_equal(total, CHANGERS * ROUNDS * 3);
    uint8_t *seen = calloc(total + 1, 1);
    for (int i = 0; i < CHANGERS; i++)
        for (size_t j = 0; j < c[i].nmods; j++) {
            int64_t m = c[i].mods[j];
            assert_true(m >= 1 && m <= (int64_t)total);
            assert_int_equal(seen[m], 0);
            seen[m] = 1;
        }
    free(seen);
    assert_int_equal(count_rows(f, "SELECT last_mod FROM conversations"), (int64_t)total);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM reactions"), 0);
    /* each message's mod is the last one taken for it */
    json_t *msgs;
    int64_t last_mod;
    assert_int_equal(store_changes_page(f->st, g, 0, 10, &msgs, &last_mod), STORE_OK);
    assert_int_equal(json_array_size(msgs), NMSG);
    assert_int_equal(jint(json_array_get(msgs, NMSG - 1), "mod"), (int64_t)total);
    json_decref(msgs);
    for (int i = 0; i < CHANGERS; i++) {
        store_close(c[i].st);
        free(c[i].mods);
    }
}

int main(int argc, char **argv)
{
    char *pg[] = {argv[0], "--pg", NULL};
    int skip_rc;

    (void)argc;
    if (sodium_init() < 0)
        return 1;
    /* PostgreSQL only, whatever the arguments */
    if ((skip_rc = fx_init(2, pg)) != 0)
        return skip_rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reply_to, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attachments_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_chunks_and_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_changes_and_mods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_erases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_in_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mods_dense_two_connections, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
