/* Unit tests of the version 2 store operations (store.h: changes, search,
 * attachments, replies), on SQLite and (test_store_v2 --pg, CTest's
 * test_store_v2_pg) on PostgreSQL, each test on a fresh database
 * (store_fixture.h). The tests of SQLite's files (erasure read back from
 * every file of the data directory, the migration of a version 1 database)
 * are skipped on PostgreSQL. */
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
#include <dirent.h>
#include <math.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "migrations.h"
#include "store_fixture.h"
#include "test_json.h"

/* ---- fixture: the store's, plus a directory for upload files ---- */

struct t {
    struct fx *f;
    char tmpdir[96]; /* where the tests write "uploaded" files */
    int ntmp;
};

/* Removes path and everything under it. */
static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d) {
        unlink(path);
        return;
    }
    while ((e = readdir(d))) {
        char p[1024];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(path);
}

static int setup(void **state)
{
    struct t *t = calloc(1, sizeof *t);
    void *fs = NULL;

    if (!t || fx_setup(&fs) != 0) {
        free(t);
        return -1;
    }
    t->f = fs;
    /* next to the database on SQLite: the store may hard-link from here */
    if (fx_is_pg())
        snprintf(t->tmpdir, sizeof t->tmpdir, "/tmp/parley-up-XXXXXX");
    else
        snprintf(t->tmpdir, sizeof t->tmpdir, "%s/up-XXXXXX", t->f->dir);
    if (!mkdtemp(t->tmpdir)) {
        void *p = t->f;
        fx_teardown(&p);
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct t *t = *state;
    void *fs = t->f;
    char p[160];

    rm_tree(t->tmpdir);
    if (!fx_is_pg()) {
        snprintf(p, sizeof p, "%s/attachments", t->f->dir);
        rm_tree(p);
    }
    fx_teardown(&fs);
    free(t);
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

static int64_t mkgroup(struct store *st, int64_t owner, const int64_t *members, size_t n)
{
    int64_t conv = 0;

    assert_int_equal(store_conv_create_group(st, owner, "room", members, n, 1000, &conv), STORE_OK);
    return conv;
}

/* One send in a batch of its own: its rc (and *seq). */
static int send_full(struct store *st, int64_t conv, int64_t from, const char *cid, const char *body, int64_t reply_to,
                     const char *const *att, size_t n_att, int64_t *seq, json_t **att_out, const char **why)
{
    struct store_batch_out out = {0};
    struct store_send m = {.conv = conv, .sender = from, .client_id = cid, .body = body, .body_len = strlen(body),
                           .reply_to = reply_to, .att = att, .n_att = n_att};

    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_send_batch(st, &m, 1, 5000, &out), STORE_OK);
    assert_int_equal(store_commit(st), STORE_OK);
    store_batch_out_dispose(&out);
    if (seq)
        *seq = m.seq;
    if (why)
        *why = m.why;
    if (att_out)
        *att_out = m.att_out;
    else
        json_decref(m.att_out);
    if (m.rc == STORE_OK && m.dup)
        return 1;
    return m.rc;
}

static int64_t send_msg(struct store *st, int64_t conv, int64_t from, const char *cid, const char *body)
{
    int64_t seq = 0;
    assert_int_equal(send_full(st, conv, from, cid, body, 0, NULL, 0, &seq, NULL, NULL), STORE_OK);
    assert_true(seq > 0);
    return seq;
}

/* One change in a transaction of its own: its rc, *mod, *changed. */
static int change(struct store *st, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                  const char *text, int64_t *mod, int *changed)
{
    int64_t m = 0;
    int c = 0, rc;

    assert_int_equal(store_begin(st), STORE_OK);
    rc = store_msg_change(st, conv, seq, user, kind, text, text ? strlen(text) : 0, 7000, &m, &c);
    assert_int_equal(store_commit(st), STORE_OK);
    if (mod)
        *mod = m;
    if (changed)
        *changed = c;
    return rc;
}

static int64_t change_ok(struct store *st, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                         const char *text)
{
    int64_t mod = 0;
    int changed = 0;
    assert_int_equal(change(st, conv, seq, user, kind, text, &mod, &changed), STORE_OK);
    assert_int_equal(changed, 1);
    return mod;
}

static json_t *get_msg(struct store *st, int64_t conv, int64_t seq)
{
    json_t *m = NULL;
    assert_int_equal(store_msg_get(st, conv, seq, &m), STORE_OK);
    assert_non_null(m);
    return m;
}

/* Writes bytes to a new file of the test's upload directory. */
static const char *upload_file(struct t *t, const void *bytes, size_t len, char *path, size_t plen)
{
    snprintf(path, plen, "%s/u%d", t->tmpdir, ++t->ntmp);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    return path;
}

/* A made-up sha256 name per content tag (the store trusts the caller's
 * digest; which digest does not matter here, only that equal bytes get
 * equal names). */
static void fake_sha(int tag, char out[65])
{
    for (int i = 0; i < 64; i++)
        out[i] = "0123456789abcdef"[(tag * 7 + i * 3) & 15];
    out[64] = '\0';
    snprintf(out, 9, "%08x", (unsigned)tag);
    out[8] = 'a';
}

/* att_create in a transaction: the new attachment's id (static buffer per call site's copy). */
static void att_new(struct t *t, int64_t owner, const char *name, const void *bytes, size_t len, int tag,
                    char id[64])
{
    char path[128], sha[65];
    json_t *a = NULL;

    fake_sha(tag, sha);
    upload_file(t, bytes, len, path, sizeof path);
    assert_int_equal(store_begin(t->f->st), STORE_OK);
    assert_int_equal(store_att_create(t->f->st, owner, name, "application/octet-stream", path, (int64_t)len, sha,
                                      2000 + t->ntmp, 0, &a),
                     STORE_OK);
    assert_int_equal(store_commit(t->f->st), STORE_OK);
    assert_non_null(a);
    assert_string_equal(jstr(a, "name"), name);
    assert_int_equal(jint(a, "size"), (int64_t)len);
    snprintf(id, 64, "%s", jstr(a, "id"));
    assert_true(strlen(id) >= 16);
    json_decref(a);
}

/* ---- mods ---- */

static void test_mods_dense(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    int64_t g = mkgroup(st, a, (int64_t[]){b, c}, 2);
    int64_t s1 = send_msg(st, g, a, "a1", "one"), s2 = send_msg(st, g, b, "b1", "two"),
            s3 = send_msg(st, g, c, "c1", "three");
    struct store *w2 = NULL;
    json_t *msgs = NULL, *m;
    int64_t last = -1, mods[2];

    /* a second writer connection, taking turns with the first: the write
     * lock makes them one sequence */
    assert_int_equal(fx_open_other(t->f, 0, &w2), STORE_OK);
    assert_int_equal(change_ok(st, g, s1, a, CHANGE_EDIT, "one, edited"), 1);
    assert_int_equal(change_ok(w2, g, s2, c, CHANGE_REACT_ON, "👍"), 2);
    assert_int_equal(change_ok(st, g, s1, b, CHANGE_REACT_ON, "🎉"), 3);
    assert_int_equal(change_ok(w2, g, s3, c, CHANGE_DELETE, NULL), 4);
    /* several changes in one transaction take consecutive mods */
    assert_int_equal(store_begin(st), STORE_OK);
    for (int i = 0; i < 3; i++) {
        int64_t mod = 0;
        int ch = 0;
        assert_int_equal(store_savepoint(st), STORE_OK);
        assert_int_equal(store_msg_change(st, g, s2, a + i % 2, CHANGE_REACT_ON, i == 2 ? "🔥" : "❤", i == 2 ? 4 : 3,
                                          7100, &mod, &ch),
                         STORE_OK);
        assert_int_equal(store_release(st), STORE_OK);
        assert_int_equal(ch, 1);
        assert_int_equal(mod, 5 + i);
    }
    /* a change undone with its job gives its mod back */
    {
        int64_t mod = 0;
        int ch = 0;
        assert_int_equal(store_savepoint(st), STORE_OK);
        assert_int_equal(store_msg_change(st, g, s1, a, CHANGE_EDIT, "undone", 6, 7200, &mod, &ch), STORE_OK);
        assert_int_equal(mod, 8);
        assert_int_equal(store_rollback_to(st), STORE_OK);
    }
    assert_int_equal(store_commit(st), STORE_OK);
    assert_int_equal(change_ok(st, g, s1, a, CHANGE_EDIT, "one, again"), 8);

    struct store_msg_facts fa;
    assert_int_equal(store_msg_facts(st, g, s3, &fa), STORE_OK);
    assert_int_equal(fa.sender, c);
    assert_int_equal(fa.deleted, 1);
    assert_int_equal(fa.mod, 4);
    assert_int_equal(store_msg_facts(st, g, 99, &fa), STORE_NOT_FOUND);

    /* changes: each message once, with its last mod, in mod order */
    assert_int_equal(store_changes_page(st, g, 0, 50, &msgs, &last), STORE_OK);
    assert_int_equal(last, 8);
    assert_int_equal(json_array_size(msgs), 3);
    assert_int_equal(jint(json_array_get(msgs, 0), "seq"), s3);
    assert_int_equal(jint(json_array_get(msgs, 0), "mod"), 4);
    assert_true(json_is_true(json_object_get(json_array_get(msgs, 0), "deleted")));
    assert_string_equal(jstr(json_array_get(msgs, 0), "body"), "");
    assert_int_equal(jint(json_array_get(msgs, 1), "seq"), s2);
    assert_int_equal(jint(json_array_get(msgs, 1), "mod"), 7);
    m = json_array_get(msgs, 2);
    assert_int_equal(jint(m, "seq"), s1);
    assert_int_equal(jint(m, "mod"), 8);
    assert_string_equal(jstr(m, "body"), "one, again");
    assert_int_equal(jint(m, "edited_at"), 7000);
    json_decref(msgs);
    assert_int_equal(store_changes_page(st, g, 4, 1, &msgs, &last), STORE_OK);
    assert_int_equal(json_array_size(msgs), 1);
    assert_int_equal(jint(json_array_get(msgs, 0), "seq"), s2);
    json_decref(msgs);
    assert_int_equal(store_changes_page(st, g, 8, 10, &msgs, &last), STORE_OK);
    assert_int_equal(json_array_size(msgs), 0);
    json_decref(msgs);
    assert_int_equal(store_changes_page(st, g + 100, 0, 10, &msgs, &last), STORE_NOT_FOUND);

    int64_t seqs2[2];
    assert_int_equal(store_conv_last_seqs(st, (int64_t[]){g, g + 100}, 2, seqs2, mods), STORE_OK);
    assert_int_equal(mods[0], 8);
    assert_int_equal(mods[1], 0);

    /* conversations and summaries carry last_mod; the last message its state */
    json_t *conv = NULL, *sum = NULL;
    assert_int_equal(store_conv_get(st, g, b, &conv), STORE_OK);
    assert_int_equal(jint(conv, "last_mod"), 8);
    m = json_object_get(conv, "last_message");
    assert_int_equal(jint(m, "seq"), s3);
    assert_true(json_is_true(json_object_get(m, "deleted")));
    json_decref(conv);
    assert_int_equal(store_sync_summary(st, b, &sum), STORE_OK);
    assert_int_equal(jint(json_array_get(sum, 0), "last_mod"), 8);
    json_decref(sum);
    store_close(w2);
}

/* A message never changed has none of the new fields. */
static void test_plain_message_unchanged(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob");
    int64_t g = mkgroup(st, a, &b, 1);
    int64_t s = send_msg(st, g, a, "a1", "hi");
    json_t *m = get_msg(st, g, s);

    assert_int_equal(json_object_size(m), 6);
    json_decref(m);
    assert_int_equal(store_msg_get(st, g, s + 1, &m), STORE_NOT_FOUND);
}

/* ---- reactions ---- */

static void test_reactions(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    int64_t g = mkgroup(st, a, (int64_t[]){b, c}, 2);
    int64_t s = send_msg(st, g, a, "a1", "hello");
    int64_t mod = -1;
    int changed = -1;
    json_t *m, *r, *page = NULL, *conv = NULL, *list = NULL;
    int more = 0;

    change_ok(st, g, s, c, CHANGE_REACT_ON, "👍");
    change_ok(st, g, s, a, CHANGE_REACT_ON, "👍");
    change_ok(st, g, s, b, CHANGE_REACT_ON, "❤");
    change_ok(st, g, s, b, CHANGE_REACT_ON, "👍");
    /* no-ops: nothing written, the message's current mod back */
    assert_int_equal(change(st, g, s, a, CHANGE_REACT_ON, "👍", &mod, &changed), STORE_OK);
    assert_int_equal(changed, 0);
    assert_int_equal(mod, 4);
    assert_int_equal(change(st, g, s, c, CHANGE_REACT_OFF, "❤", &mod, &changed), STORE_OK);
    assert_int_equal(changed, 0);
    assert_int_equal(mod, 4);
    int64_t lm[1], ls[1];
    assert_int_equal(store_conv_last_seqs(st, &g, 1, ls, lm), STORE_OK);
    assert_int_equal(lm[0], 4);
    if (!fx_is_pg())
        assert_int_equal(fx_count(t->f, "SELECT count(*) FROM reactions"), 4);

    /* users in the order they reacted */
    m = get_msg(st, g, s);
    r = json_object_get(m, "reactions");
    assert_int_equal(json_object_size(r), 2);
    assert_int_equal(json_array_size(json_object_get(r, "👍")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 0)), c);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 1)), a);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 2)), b);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "❤"), 0)), b);
    assert_int_equal(jint(m, "mod"), 4);
    json_decref(m);

    /* off, then on again: at the end of the line */
    assert_int_equal(change_ok(st, g, s, c, CHANGE_REACT_OFF, "👍"), 5);
    assert_int_equal(change_ok(st, g, s, b, CHANGE_REACT_OFF, "❤"), 6);
    assert_int_equal(change_ok(st, g, s, c, CHANGE_REACT_ON, "👍"), 7);
    /* history, the conversation and the list show the same */
    send_msg(st, g, b, "b1", "second");
    change_ok(st, g, 2, a, CHANGE_REACT_ON, "🎉");
    assert_int_equal(store_msg_page(st, g, 0, -1, 10, &page, &more), STORE_OK);
    assert_int_equal(json_array_size(page), 2);
    m = json_array_get(page, 1); /* newest first: seq 1 second */
    assert_int_equal(jint(m, "seq"), s);
    r = json_object_get(m, "reactions");
    assert_int_equal(json_object_size(r), 1); /* ❤ has no user left: absent */
    assert_int_equal(json_array_size(json_object_get(r, "👍")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 0)), a);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "👍"), 2)), c);
    assert_non_null(json_object_get(json_object_get(json_array_get(page, 0), "reactions"), "🎉"));
    json_decref(page);
    assert_int_equal(store_conv_list(st, b, &list), STORE_OK);
    conv = json_array_get(list, 0);
    assert_int_equal(jint(conv, "last_mod"), 8);
    assert_non_null(json_object_get(json_object_get(json_object_get(conv, "last_message"), "reactions"), "🎉"));
    json_decref(list);
    assert_int_equal(change(st, g, 9, a, CHANGE_REACT_ON, "👍", &mod, &changed), STORE_NOT_FOUND);
    /* a deleted message takes no reaction, and lost the ones it had */
    change_ok(st, g, s, a, CHANGE_DELETE, NULL);
    assert_int_equal(change(st, g, s, b, CHANGE_REACT_ON, "👍", &mod, &changed), STORE_BAD_REQUEST);
    m = get_msg(st, g, s);
    assert_null(json_object_get(m, "reactions"));
    json_decref(m);
}

/* ---- replies ---- */

static void test_reply_to(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob");
    int64_t g = mkgroup(st, a, &b, 1), last = 0, seq = 0;
    const char *why = NULL;
    json_t *page = NULL;
    int more = 0;

    assert_int_equal(send_full(st, g, a, "r0", "x", 1, NULL, 0, &seq, NULL, &why), STORE_BAD_REQUEST);
    assert_non_null(why);
    assert_int_equal(send_full(st, g, a, "r1", "x", -3, NULL, 0, &seq, NULL, &why), STORE_BAD_REQUEST);
    assert_int_equal(store_conv_last_seq(st, g, &last), STORE_OK);
    assert_int_equal(last, 0);

    /* in one batch, a reply to the batch's own earlier message */
    struct store_batch_out out = {0};
    struct store_send v[3] = {
        {.conv = g, .sender = a, .client_id = "m1", .body = "first", .body_len = 5},
        {.conv = g, .sender = b, .client_id = "m2", .body = "re", .body_len = 2, .reply_to = 1},
        {.conv = g, .sender = b, .client_id = "m3", .body = "bad", .body_len = 3, .reply_to = 3},
    };
    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_send_batch(st, v, 3, 5000, &out), STORE_OK);
    assert_int_equal(store_commit(st), STORE_OK);
    store_batch_out_dispose(&out);
    assert_int_equal(v[0].rc, STORE_OK);
    assert_int_equal(v[1].rc, STORE_OK);
    assert_int_equal(v[1].seq, 2);
    assert_int_equal(v[2].rc, STORE_BAD_REQUEST);
    assert_non_null(v[2].why);
    /* the refused send left no trace: the next one is seq 3 */
    assert_int_equal(store_conv_last_seq(st, g, &last), STORE_OK);
    assert_int_equal(last, 2);
    assert_int_equal(send_full(st, g, a, "m3", "ok", 2, NULL, 0, &seq, NULL, NULL), STORE_OK);
    assert_int_equal(seq, 3);

    assert_int_equal(store_msg_page(st, g, 0, 0, 10, &page, &more), STORE_OK);
    assert_int_equal(json_array_size(page), 3);
    assert_null(json_object_get(json_array_get(page, 0), "reply_to"));
    assert_int_equal(jint(json_array_get(page, 1), "reply_to"), 1);
    assert_int_equal(jint(json_array_get(page, 2), "reply_to"), 2);
    json_decref(page);
}

/* ---- attachments ---- */

static void test_attachments_send(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    int64_t g = mkgroup(st, a, &b, 1), seq = 0, last = 0;
    char x[64], y[64], z[64];
    const char *why = NULL;
    json_t *att_out = NULL, *page = NULL, *m;
    int more = 0;

    att_new(t, a, "x.bin", "xxxx", 4, 1, x);
    att_new(t, a, "y.txt", "yy", 2, 2, y);
    att_new(t, b, "z.png", "zzz", 3, 3, z);

    /* refused: someone else's, unknown, twice, too many; nothing written */
    assert_int_equal(send_full(st, g, b, "b1", "", 0, (const char *[]){x}, 1, &seq, NULL, &why), STORE_BAD_REQUEST);
    assert_non_null(why);
    assert_int_equal(send_full(st, g, a, "a1", "", 0, (const char *[]){"nope"}, 1, &seq, NULL, &why),
                     STORE_BAD_REQUEST);
    assert_int_equal(send_full(st, g, a, "a1", "", 0, (const char *[]){x, y, x}, 3, &seq, NULL, &why),
                     STORE_BAD_REQUEST);
    const char *many[STORE_MAX_ATTACH + 1];
    for (int i = 0; i <= STORE_MAX_ATTACH; i++)
        many[i] = x;
    assert_int_equal(send_full(st, g, a, "a1", "", 0, many, STORE_MAX_ATTACH + 1, &seq, NULL, &why),
                     STORE_BAD_REQUEST);
    /* a refused send with a bad reply_to attaches nothing either */
    assert_int_equal(send_full(st, g, a, "a1", "", 5, (const char *[]){x}, 1, &seq, NULL, &why), STORE_BAD_REQUEST);
    assert_int_equal(store_conv_last_seq(st, g, &last), STORE_OK);
    assert_int_equal(last, 0);

    /* y then x: att_out and the message keep the order given */
    assert_int_equal(send_full(st, g, a, "a1", "files", 0, (const char *[]){y, x}, 2, &seq, &att_out, NULL), STORE_OK);
    assert_int_equal(seq, 1);
    assert_int_equal(json_array_size(att_out), 2);
    assert_string_equal(jstr(json_array_get(att_out, 0), "id"), y);
    assert_string_equal(jstr(json_array_get(att_out, 0), "name"), "y.txt");
    assert_string_equal(jstr(json_array_get(att_out, 0), "type"), "application/octet-stream");
    assert_int_equal(jint(json_array_get(att_out, 0), "size"), 2);
    assert_string_equal(jstr(json_array_get(att_out, 1), "id"), x);
    json_decref(att_out);
    att_out = NULL;
    /* the resend: dup, attaches nothing again */
    assert_int_equal(send_full(st, g, a, "a1", "files", 0, (const char *[]){y, x}, 2, &seq, &att_out, NULL), 1);
    assert_int_equal(seq, 1);
    assert_null(att_out);
    /* attached already */
    assert_int_equal(send_full(st, g, a, "a2", "again", 0, (const char *[]){x}, 1, &seq, NULL, &why),
                     STORE_BAD_REQUEST);
    /* b's own upload, in the same conversation */
    assert_int_equal(send_full(st, g, b, "b2", "", 0, (const char *[]){z}, 1, &seq, NULL, NULL), STORE_OK);
    assert_int_equal(seq, 2);

    assert_int_equal(store_msg_page(st, g, 0, 0, 10, &page, &more), STORE_OK);
    m = json_array_get(page, 0);
    assert_int_equal(json_array_size(json_object_get(m, "attachments")), 2);
    assert_string_equal(jstr(json_array_get(json_object_get(m, "attachments"), 0), "id"), y);
    assert_string_equal(jstr(json_array_get(json_object_get(m, "attachments"), 1), "id"), x);
    assert_string_equal(jstr(json_array_get(json_object_get(json_array_get(page, 1), "attachments"), 0), "name"),
                        "z.png");
    json_decref(page);

    /* permission: the uploader, members of the conversation; nobody else */
    json_t *att = NULL;
    char *sha = NULL;
    assert_int_equal(store_att_get(st, x, b, &att, &sha), STORE_OK);
    assert_string_equal(jstr(att, "name"), "x.bin");
    assert_non_null(sha);
    json_decref(att);
    free(sha);
    assert_int_equal(store_att_get(st, x, c, &att, &sha), STORE_NOT_FOUND);
    assert_null(att);
    assert_null(sha);
    assert_int_equal(store_att_get(st, "nope", a, &att, &sha), STORE_NOT_FOUND);
    /* b leaves: the message's attachments are no longer b's to read, but z
     * stays b's own upload */
    assert_int_equal(store_member_delete(st, g, b, 0), STORE_OK);
    assert_int_equal(store_att_get(st, x, b, &att, &sha), STORE_NOT_FOUND);
    assert_int_equal(store_att_get(st, z, b, &att, &sha), STORE_OK);
    json_decref(att);
    free(sha);
}

static void test_attachments_bytes(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    char x[64], y[64], w[64];
    json_t *att = NULL;
    char *sha = NULL, *path = NULL, buf[64];
    size_t n = 0;
    const char bytes[] = "0123456789abcdef\0binary\xff";

    /* two uploads of the same bytes: one blob */
    att_new(t, a, "one", bytes, sizeof bytes, 7, x);
    att_new(t, b, "two", bytes, sizeof bytes, 7, y);
    assert_string_not_equal(x, y);
    att_new(t, c, "other", "w", 1, 8, w);
    if (!fx_is_pg()) {
        assert_int_equal(fx_count(t->f, "SELECT count(*) FROM blobs"), 2);
        assert_int_equal(fx_count(t->f, "SELECT refs FROM blobs WHERE size = 25"), 2);
    }
    /* never attached: only its uploader */
    assert_int_equal(store_att_get(st, x, b, &att, &sha), STORE_NOT_FOUND);
    assert_int_equal(store_att_get(st, x, a, &att, &sha), STORE_OK);
    json_decref(att);

    assert_int_equal(store_att_read(st, sha, 0, buf, sizeof buf, &n), STORE_OK);
    assert_int_equal(n, sizeof bytes);
    assert_memory_equal(buf, bytes, sizeof bytes);
    assert_int_equal(store_att_read(st, sha, 10, buf, 4, &n), STORE_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(buf, bytes + 10, 4);
    assert_int_equal(store_att_read(st, sha, 100, buf, 4, &n), STORE_OK);
    assert_int_equal(n, 0);
    int prc = store_att_path(st, sha, &path);
    if (prc == STORE_OK) {
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        assert_int_equal(fread(buf, 1, sizeof buf, fp), sizeof bytes);
        fclose(fp);
        assert_memory_equal(buf, bytes, sizeof bytes);
        free(path);
    } else {
        assert_int_equal(prc, STORE_NOT_FOUND); /* a backend that keeps bytes elsewhere */
    }

    /* prune: uploads never attached and older than the cut; the blob goes
     * with its last reference */
    int64_t g = mkgroup(st, c, NULL, 0);
    assert_int_equal(send_full(st, g, c, "c1", "", 0, (const char *[]){w}, 1, NULL, NULL, NULL), STORE_OK);
    int deleted = -1;
    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_att_prune(st, 2002, 10, &deleted), STORE_OK); /* x only (created 2001) */
    assert_int_equal(store_commit(st), STORE_OK);
    assert_int_equal(deleted, 1);
    free(sha);
    assert_int_equal(store_att_get(st, x, a, &att, &sha), STORE_NOT_FOUND);
    assert_int_equal(store_att_get(st, y, b, &att, &sha), STORE_OK); /* the bytes are still y's */
    json_decref(att);
    assert_int_equal(store_att_read(st, sha, 0, buf, sizeof buf, &n), STORE_OK);
    assert_int_equal(n, sizeof bytes);
    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_att_prune(st, 1000000, 100, &deleted), STORE_OK); /* y; w is attached */
    assert_int_equal(store_commit(st), STORE_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(store_att_read(st, sha, 0, buf, sizeof buf, &n), STORE_NOT_FOUND);
    free(sha);
    assert_int_equal(store_att_get(st, w, c, &att, &sha), STORE_OK);
    json_decref(att);
    free(sha);
    if (!fx_is_pg())
        assert_int_equal(fx_count(t->f, "SELECT count(*) FROM blobs"), 1);
}

/* An upload whose transaction rolls back leaves no file behind (SQLite). */
static void test_attachment_rollback(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice");
    char path[128], sha[65], blob[256];
    json_t *att = NULL;

    if (fx_is_pg())
        skip();
    fake_sha(42, sha);
    upload_file(t, "gone", 4, path, sizeof path);
    assert_int_equal(store_begin(st), STORE_OK);
    assert_int_equal(store_savepoint(st), STORE_OK);
    assert_int_equal(store_att_create(st, a, "n", "text/plain", path, 4, sha, 1, 0, &att), STORE_OK);
    json_decref(att);
    snprintf(blob, sizeof blob, "%s/attachments/%.2s/%s", t->f->dir, sha, sha);
    assert_int_equal(access(blob, F_OK), 0);
    assert_int_equal(store_rollback_to(st), STORE_OK);
    assert_int_equal(access(blob, F_OK), -1);
    assert_int_equal(store_att_create(st, a, "n", "text/plain", path, 4, sha, 1, 0, &att), STORE_OK);
    json_decref(att);
    assert_int_equal(store_rollback(st), STORE_OK);
    assert_int_equal(access(blob, F_OK), -1);
    assert_int_equal(access(path, F_OK), 0); /* the caller's file stays the caller's */
}

/* One upload of len bytes by owner, capped at max_pending: att_create's answer. */
static int att_try(struct t *t, int64_t owner, size_t len, int tag, int64_t max_pending, char id[64])
{
    char path[128], sha[65];
    char *bytes = calloc(1, len ? len : 1);
    json_t *a = NULL;

    assert_non_null(bytes);
    memset(bytes, 'a' + tag % 26, len);
    fake_sha(tag, sha);
    upload_file(t, bytes, len, path, sizeof path);
    free(bytes);
    assert_int_equal(store_begin(t->f->st), STORE_OK);
    int rc = store_att_create(t->f->st, owner, "p.bin", "application/octet-stream", path, (int64_t)len, sha, 3000,
                              max_pending, &a);
    assert_int_equal(store_commit(t->f->st), STORE_OK);
    if (rc == STORE_OK) {
        snprintf(id, 64, "%s", jstr(a, "id"));
        json_decref(a);
    } else {
        assert_null(a);
    }
    return rc;
}

/* The cap on an owner's uploads not yet attached: each counts at least
 * STORE_ATT_MIN_CHARGE; a refused one leaves nothing; other owners are
 * apart; an attached upload no longer counts; 0 is no cap. */
static void test_pending_quota(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob");
    int64_t g = mkgroup(st, a, &b, 1), seq = 0;
    const int64_t cap = 3 * STORE_ATT_MIN_CHARGE + 100;
    char x[64], y[64], z[64], w[64];
    const char *why = NULL;

    assert_int_equal(att_try(t, a, 1, 101, cap, x), STORE_OK);    /* counts 4096 */
    assert_int_equal(att_try(t, a, 5000, 102, cap, y), STORE_OK); /* 9096 */
    assert_int_equal(att_try(t, a, 10, 103, cap, z), STORE_QUOTA); /* 13192 > 12388 */
    assert_int_equal(att_try(t, a, 3292, 104, cap, z), STORE_QUOTA);
    assert_int_equal(fx_count(t->f, "SELECT count(*) FROM attachments"), 2);
    assert_int_equal(att_try(t, b, 5000, 105, cap, z), STORE_OK); /* bob's are his own */
    assert_int_equal(att_try(t, a, 10, 106, 0, z), STORE_OK);     /* no cap */
    /* now 4096 + 5000 + 4096 pending: x and the uncapped one attached, 5000 left */
    assert_int_equal(att_try(t, a, 8000, 107, cap, w), STORE_QUOTA);
    assert_int_equal(send_full(st, g, a, "q1", "files", 0, (const char *[]){x, z}, 2, &seq, NULL, &why), STORE_OK);
    assert_int_equal(att_try(t, a, 7388, 108, cap, z), STORE_OK); /* 5000 + 7388 = the cap exactly */
    assert_int_equal(att_try(t, a, 1, 109, cap, z), STORE_QUOTA);
}

/* ---- search ---- */

static json_t *search(struct store *st, int64_t user, int64_t conv, const char *q, int64_t before, int limit,
                      int64_t *next)
{
    const char *words[16];
    char buf[256], *save = NULL;
    size_t n = 0;
    json_t *r = NULL;
    int64_t nx = -1;

    snprintf(buf, sizeof buf, "%s", q);
    for (char *w = strtok_r(buf, " ", &save); w && n < 16; w = strtok_r(NULL, " ", &save))
        words[n++] = w;
    assert_int_equal(store_search(st, user, conv, words, n, before, limit, &r, &nx), STORE_OK);
    assert_non_null(r);
    if (next)
        *next = nx;
    return r;
}

/* How many hits q gets for user (everything, one page). */
static size_t hits(struct store *st, int64_t user, int64_t conv, const char *q)
{
    json_t *r = search(st, user, conv, q, 0, 100, NULL);
    size_t n = json_array_size(r);
    json_decref(r);
    return n;
}

static void test_search(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    int64_t g = mkgroup(st, a, &b, 1), h = mkgroup(st, a, &c, 1), k = mkgroup(st, b, &c, 1);
    json_t *r;

    int64_t s1 = send_msg(st, g, a, "g1", "Crème brûlée au caramel");
    send_msg(st, g, b, "g2", "the QUICK brown fox");
    send_msg(st, h, c, "h1", "quick thinking, brown shoes");
    send_msg(st, k, b, "k1", "quick brown secret");
    send_msg(st, g, b, "g3", "\"quoted\" words AND OR NOT near*");

    /* accents and case fold; whole words; the last word a prefix */
    assert_int_equal(hits(st, a, 0, "creme"), 1);
    assert_int_equal(hits(st, a, 0, "BRULEE"), 1);
    assert_int_equal(hits(st, a, 0, "brûlée"), 1);
    assert_int_equal(hits(st, a, 0, "car"), 1);
    assert_int_equal(hits(st, a, 0, "creme car"), 1);
    assert_int_equal(hits(st, a, 0, "crem brulee"), 0); /* only the last word is a prefix */
    assert_int_equal(hits(st, a, 0, "rulee"), 0);
    assert_int_equal(hits(st, a, 0, "quick brown"), 2);  /* g and h, not k */
    assert_int_equal(hits(st, b, 0, "quick brown"), 2);  /* g and k */
    assert_int_equal(hits(st, c, 0, "quick brown"), 2);  /* h and k */
    assert_int_equal(hits(st, a, g, "quick brown"), 1);  /* one conversation */
    assert_int_equal(hits(st, a, 0, "fox secret"), 0);   /* every word */
    /* FTS5's syntax in a word is only a word */
    assert_int_equal(hits(st, a, 0, "AND"), 1);
    assert_int_equal(hits(st, a, 0, "near"), 1);
    assert_int_equal(hits(st, a, 0, "\"quoted\""), 1);
    assert_int_equal(hits(st, a, 0, "c1"), 0); /* the conversation token is not text */

    /* the result object, newest first */
    r = search(st, a, 0, "brown", 0, 10, NULL);
    assert_int_equal(json_array_size(r), 2);
    assert_int_equal(jint(json_array_get(r, 0), "conv"), h);
    assert_int_equal(jint(json_array_get(r, 0), "from"), c);
    assert_string_equal(jstr(json_array_get(r, 0), "body"), "quick thinking, brown shoes");
    assert_int_equal(jint(json_array_get(r, 1), "conv"), g);
    assert_int_equal(jint(json_array_get(r, 1), "seq"), 2);
    assert_int_equal(jint(json_array_get(r, 1), "ts"), 5000);
    json_decref(r);

    /* an edit: found by its new text only */
    change_ok(st, g, s1, a, CHANGE_EDIT, "tarte tatin");
    assert_int_equal(hits(st, a, 0, "creme"), 0);
    assert_int_equal(hits(st, b, 0, "tatin"), 1);
    /* a delete: gone */
    change_ok(st, g, s1, a, CHANGE_DELETE, NULL);
    assert_int_equal(hits(st, b, 0, "tatin"), 0);
    assert_int_equal(hits(st, b, 0, "tarte"), 0);
    /* leaving: the conversation's messages are no longer found */
    assert_int_equal(store_member_delete(st, h, c, 0), STORE_OK);
    assert_int_equal(hits(st, c, 0, "quick brown"), 1);
    assert_int_equal(hits(st, a, 0, "thinking"), 1);
}

static void test_search_paging(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob");
    int64_t g = mkgroup(st, a, &b, 1), next = -1, seen = 0, prev = INT64_MAX;
    char cid[16], body[64];

    for (int i = 0; i < 7; i++) {
        snprintf(cid, sizeof cid, "m%d", i);
        snprintf(body, sizeof body, "%s number %d", i % 2 ? "apple" : "banana apple", i);
        send_msg(st, g, a, cid, body);
    }
    for (int page = 0; page < 4; page++) {
        json_t *r = search(st, b, 0, "apple", next > 0 ? next : 0, 3, &next);
        size_t n = json_array_size(r);
        for (size_t i = 0; i < n; i++) {
            int64_t seq = jint(json_array_get(r, i), "seq");
            assert_true(seq < prev); /* newest first, across pages */
            prev = seq;
            seen++;
        }
        json_decref(r);
        if (page < 2) {
            assert_int_equal(n, 3);
            assert_true(next > 0);
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(next, 0);
            break;
        }
    }
    assert_int_equal(seen, 7);
    /* a full last page: no further cursor once nothing is left */
    json_t *r = search(st, b, 0, "banana", 0, 4, &next);
    assert_int_equal(json_array_size(r), 4);
    assert_int_equal(next, 0);
    json_decref(r);
    /* no words: nothing */
    json_t *e = NULL;
    assert_int_equal(store_search(st, a, 0, NULL, 0, 0, 10, &e, &next), STORE_OK);
    assert_int_equal(json_array_size(e), 0);
    json_decref(e);
}

/* A user in more conversations than the search names in its query: the
 * membership filter alone. */
static void test_search_many_convs(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st;
    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob"), c = mkuser(st, "carol");
    char cid[16];

    for (int i = 0; i < 80; i++) {
        int64_t g = mkgroup(st, a, &b, 1);
        snprintf(cid, sizeof cid, "m%d", i);
        send_msg(st, g, b, cid, i % 10 ? "common words" : "rare words");
    }
    int64_t other = mkgroup(st, c, NULL, 0);
    send_msg(st, other, c, "c1", "rare words");
    assert_int_equal(hits(st, a, 0, "rare"), 8);
    assert_int_equal(hits(st, a, 0, "words"), 80);
    assert_int_equal(hits(st, c, 0, "words"), 1);
}

/* ---- erasure (SQLite: read every file) ---- */

static int contains(const char *hay, size_t n, const char *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return 1;
    return 0;
}

/* Whether any file under dir holds needle (each as a whole, so nothing is
 * missed at a read boundary). */
static int tree_contains(const char *dir, const char *needle, size_t m)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while (!found && (e = readdir(d))) {
        char p[1024];
        struct stat sb;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        assert_int_equal(lstat(p, &sb), 0);
        if (S_ISDIR(sb.st_mode)) {
            found = tree_contains(p, needle, m);
            continue;
        }
        FILE *fp = fopen(p, "rb");
        assert_non_null(fp);
        char *buf = malloc((size_t)sb.st_size + 1);
        assert_non_null(buf);
        size_t n = fread(buf, 1, (size_t)sb.st_size, fp);
        fclose(fp);
        found = contains(buf, n, needle, m);
        free(buf);
    }
    closedir(d);
    return found;
}

static void test_erasure_files(void **state)
{
    struct t *t = *state;
    struct store *st = t->f->st, *reader = NULL;
    const char *m1 = "zqxalphamarker4417", *m2 = "zqxbetamarker9931", *m3 = "zqxgammamarker5113";
    char bytes[4096], body[128], cid[16], x[64], *longbody;
    json_t *r = NULL;
    int64_t next;

    if (fx_is_pg())
        skip();
    longbody = malloc(9000); /* after the skip: nothing leaked on PostgreSQL */
    /* bytes no other file can hold by chance */
    srand(4417);
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (char)(rand() & 0xff);
    memcpy(bytes + 100, "zqxbytesmarker", 14);

    int64_t a = mkuser(st, "alice"), b = mkuser(st, "bob");
    int64_t g = mkgroup(st, a, &b, 1);
    /* neighbours on the same pages, before and after */
    for (int i = 0; i < 300; i++) {
        snprintf(cid, sizeof cid, "n%d", i);
        snprintf(body, sizeof body, "neighbour %d says something about the weather", i);
        send_msg(st, g, b, cid, body);
    }
    att_new(t, a, "secret.bin", bytes, sizeof bytes, 99, x);
    rm_tree(t->tmpdir); /* the upload's own file is the caller's: gone here */
    int64_t s = 0;
    snprintf(body, sizeof body, "the first text %s here", m1);
    assert_int_equal(send_full(st, g, a, "secret", body, 0, (const char *[]){x}, 1, &s, NULL, NULL), STORE_OK);
    for (int i = 300; i < 600; i++) {
        snprintf(cid, sizeof cid, "n%d", i);
        snprintf(body, sizeof body, "neighbour %d says something about the weather", i);
        send_msg(st, g, b, cid, body);
    }
    /* a long one too: its text on overflow pages, freed by the delete */
    assert_non_null(longbody);
    for (int i = 0; i < 8999; i++)
        longbody[i] = "abcdefghij klmnopqrstuvwxyz"[i % 27];
    longbody[8999] = '\0';
    memcpy(longbody + 4000, m3, strlen(m3));
    memcpy(longbody + 8000, m3, strlen(m3));
    int64_t s_long = send_msg(st, g, a, "long", longbody);
    free(longbody);
    assert_true(tree_contains(t->f->dir, m1, strlen(m1)));
    snprintf(body, sizeof body, "the second text %s here", m2);
    change_ok(st, g, s, a, CHANGE_EDIT, body);
    change_ok(st, g, s, b, CHANGE_REACT_ON, "👍");
    /* the scan can see them before the delete */
    assert_true(tree_contains(t->f->dir, m2, strlen(m2)));
    assert_true(tree_contains(t->f->dir, m3, strlen(m3)));
    assert_true(tree_contains(t->f->dir, bytes, sizeof bytes));
    r = search(st, b, 0, "zqxbetamarker9931", 0, 10, &next);
    assert_int_equal(json_array_size(r), 1);
    json_decref(r);

    /* a reader open meanwhile, as the server's are */
    assert_int_equal(fx_open_other(t->f, 1, &reader), STORE_OK);
    assert_int_equal(hits(reader, b, 0, "weather"), 100);
    /* both in one transaction, as the writer batches them */
    assert_int_equal(store_begin(st), STORE_OK);
    for (int i = 0; i < 2; i++) {
        int64_t mod = 0;
        int ch = 0;
        assert_int_equal(store_savepoint(st), STORE_OK);
        assert_int_equal(store_msg_change(st, g, i ? s_long : s, a, CHANGE_DELETE, NULL, 0, 9000, &mod, &ch), STORE_OK);
        assert_int_equal(store_release(st), STORE_OK);
    }
    assert_int_equal(store_commit(st), STORE_OK);

    assert_false(tree_contains(t->f->dir, m3, strlen(m3)));
    assert_false(tree_contains(t->f->dir, m1, strlen(m1)));
    assert_false(tree_contains(t->f->dir, m2, strlen(m2)));
    assert_false(tree_contains(t->f->dir, "zqxbytesmarker", 14));
    assert_false(tree_contains(t->f->dir, bytes, sizeof bytes));
    assert_false(tree_contains(t->f->dir, "secret.bin", 10));
    assert_int_equal(hits(reader, b, 0, "zqxbetamarker9931"), 0);
    assert_int_equal(hits(reader, b, 0, "weather"), 100);
    json_t *m = get_msg(reader, g, s);
    assert_string_equal(jstr(m, "body"), "");
    assert_null(json_object_get(m, "attachments"));
    json_decref(m);
    store_close(reader);
}

/* ---- a version 1 database migrated: its messages become searchable ---- */

static void test_migrate_v1(void **state)
{
    struct t *t = *state;
    sqlite3 *db = NULL;
    char err[256];

    if (fx_is_pg())
        skip();
    store_close(t->f->st);
    t->f->st = NULL;
    for (int i = 0; i < 3; i++) {
        char p[200];
        snprintf(p, sizeof p, "%s%s", t->f->path, (const char *[]){"", "-wal", "-shm"}[i]);
        unlink(p);
    }
    assert_int_equal(sqlite3_open(t->f->path, &db), SQLITE_OK);
    assert_true(migrations_count >= 2);
    assert_int_equal(migrations[0].version, 1);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                                  " applied_at INTEGER NOT NULL);"
                                  "INSERT INTO schema_version VALUES (1, '001_init.sql', 0);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, migrations[0].sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO users VALUES (1, 'alice', 'alice', 'h', 0), (2, 'bob', 'bob', 'h', 0);"
                                  "INSERT INTO conversations VALUES (1, 'group', 't', 1, 0, 2, 0);"
                                  "INSERT INTO members VALUES (1, 1, 'owner', 0, 0), (1, 2, 'member', 0, 0);"
                                  "INSERT INTO messages VALUES (1, 1, 1, 'c1', 'old café message', 10),"
                                  " (1, 2, 2, 'c2', 'another old one', 20);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(store_sqlite_open(t->f->path, 0, &t->f->st, err, sizeof err), STORE_OK);
    assert_int_equal(hits(t->f->st, 2, 0, "cafe"), 1);
    assert_int_equal(hits(t->f->st, 2, 0, "old"), 2);
    /* new messages continue the ids */
    send_msg(t->f->st, 1, 1, "c3", "a new old thing");
    assert_int_equal(hits(t->f->st, 2, 0, "old"), 3);
    json_t *r = search(t->f->st, 2, 0, "old", 0, 1, NULL);
    assert_int_equal(jint(json_array_get(r, 0), "seq"), 3);
    json_decref(r);
    assert_int_equal(change_ok(t->f->st, 1, 1, 1, CHANGE_EDIT, "edited"), 1);
    assert_int_equal(hits(t->f->st, 2, 0, "cafe"), 0);
}


/* ---- search latency over many messages (opt-in) ----
 *
 * PARLEY_SEARCH_BENCH=N (e.g. 1000000) stores N messages (SQLite only):
 * 1000 users, 2000 groups of 5, 10 power users in 100 groups each; bodies
 * of 6-14 words drawn from a 5000-word vocabulary with a Zipf-like
 * distribution (a few words in most messages, most words rare), then times
 * store_search on a reader connection: p50 / p99 / max per kind of query.
 * PARLEY_SEARCH_BENCH_DB=path keeps the database between runs (built once
 * when missing).
 *
 * At 1,000,000 messages (62 shards, 195 MB, 2 shared cores under a load of
 * ~20, so CPU time is the figure to read; 2026-12-02): one word p50 1.4-6.6
 * ms, p99 7-14 ms of CPU (a common word stops in the newest shard, a rare
 * one walks all 62); one conversation p50 2.5 ms; two words p50 8.7 ms, p99
 * 22 ms; the worst case, a word and a 2-letter prefix, p50 18 ms, p99 54 ms
 * (FTS5 expands the prefix in every shard). A delete with its shard's
 * optimize and the WAL checkpoint: p50 33 ms wall. A prefix index
 * (prefix='2') halved the 2-letter case but made the index 19% larger and
 * the delete 8x slower: not kept. */

static unsigned bench_rand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

/* word i of the vocabulary: letters only, 3-10 of them, distinct per i */
static void bench_word(int i, char *out)
{
    static const char *cons = "bcdfghjklmnprstvz", *vow = "aeiou";
    int n = 0, x = i + 1;
    while (x > 0 || n < 3) {
        out[n++] = cons[x % 17];
        x /= 17;
        out[n++] = vow[x % 5];
        x /= 5;
    }
    out[n] = '\0';
}

/* a Zipf-ish rank in [0, n): rank r with probability ~ 1/(r+1) */
static int bench_zipf(unsigned *s, int n)
{
    double u = (bench_rand(s) + 1) / 16777217.0;
    int r = (int)(exp(u * log((double)n + 1)) - 1);
    return r < 0 ? 0 : r >= n ? n - 1 : r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* this thread's CPU time: on a shared machine, wall time also counts the
 * waits for a core */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

#define B_USERS 1000
#define B_GROUPS 2000
#define B_VOCAB 5000

static void bench_build(struct store *st, long total)
{
    unsigned seed = 11;
    char name[32], cid[32], body[256], w[16];
    int64_t members[B_GROUPS][5];
    double t0 = now_ms();

    assert_int_equal(store_begin(st), STORE_OK); /* the setup: one commit */
    for (int i = 0; i < B_USERS; i++) {
        snprintf(name, sizeof name, "u%d", i);
        assert_int_equal(mkuser(st, name), i + 1);
    }
    int64_t conv = 0;
    for (int g = 0; g < B_GROUPS; g++) {
        for (int k = 0; k < 5; k++)
            members[g][k] = 1 + (int64_t)(bench_rand(&seed) % B_USERS);
        assert_int_equal(store_conv_create_group(st, members[g][0], "g", members[g] + 1, 4, 1000, &conv), STORE_OK);
        assert_int_equal(conv, g + 1);
    }
    /* users 1-10 in 100 groups each: past the query's list of conversations */
    for (int u = 1; u <= 10; u++)
        for (int g = 0; g < 100; g++)
            assert_int_equal(store_member_insert(st, 1 + (int64_t)(bench_rand(&seed) % B_GROUPS), u, ROLE_MEMBER,
                                                 1000, NULL),
                             STORE_OK);
    assert_int_equal(store_commit(st), STORE_OK);
    enum { BATCH = 500 };
    struct store_send *v = calloc(BATCH, sizeof *v);
    char (*bodies)[256] = calloc(BATCH, 256), (*cids)[32] = calloc(BATCH, 32);
    for (long done = 0; done < total;) {
        int n = total - done < BATCH ? (int)(total - done) : BATCH;
        for (int i = 0; i < n; i++) {
            int g = (int)(bench_rand(&seed) % B_GROUPS), len = 0, words = 6 + (int)(bench_rand(&seed) % 9);
            for (int k = 0; k < words; k++) {
                bench_word(bench_zipf(&seed, B_VOCAB), w);
                len += snprintf(body + len, sizeof body - (size_t)len, "%s%s", k ? " " : "", w);
            }
            snprintf(cid, sizeof cid, "m%ld", done + i);
            memcpy(bodies[i], body, sizeof body);
            memcpy(cids[i], cid, sizeof cid);
            v[i] = (struct store_send){.conv = g + 1, .sender = members[g][bench_rand(&seed) % 5],
                                       .client_id = cids[i], .body = bodies[i], .body_len = strlen(bodies[i])};
        }
        struct store_batch_out out = {0};
        assert_int_equal(store_begin(st), STORE_OK);
        assert_int_equal(store_send_batch(st, v, (size_t)n, 5000 + done, &out), STORE_OK);
        assert_int_equal(store_commit(st), STORE_OK);
        store_batch_out_dispose(&out);
        done += n;
        if (done % 100000 == 0)
            fprintf(stderr, "bench: %ld messages stored (%.0f s)\n", done, (now_ms() - t0) / 1e3);
    }
    free(v);
    free(bodies);
    free(cids);
}

struct bench_kind {
    const char *what;
    int rank_lo, rank_hi; /* vocabulary ranks the words come from */
    int words, prefix;    /* prefix: letters kept of the last word (0: whole) */
    int conv;             /* 1: within one of the user's conversations */
    int power;            /* 1: users in 100+ conversations */
};

static void bench_run(struct store *rd, const struct bench_kind *k, int runs)
{
    unsigned seed = 77;
    double *ms = calloc((size_t)runs, sizeof *ms), *cpu = calloc((size_t)runs, sizeof *cpu);
    char w[3][16];
    long found = 0;

    for (int i = 0; i < runs; i++) {
        const char *words[3];
        int64_t user = k->power ? 1 + (int64_t)(bench_rand(&seed) % 10) : 11 + (int64_t)(bench_rand(&seed) % (B_USERS - 10));
        int64_t conv = 0, *convs = NULL, next = 0;
        size_t nconvs = 0;
        json_t *r = NULL;
        if (k->conv) {
            assert_int_equal(store_user_convs(rd, user, &convs, &nconvs), STORE_OK);
            conv = nconvs ? convs[bench_rand(&seed) % nconvs] : 0;
            free(convs);
        }
        for (int j = 0; j < k->words; j++) {
            bench_word(k->rank_lo + (int)(bench_rand(&seed) % (unsigned)(k->rank_hi - k->rank_lo)), w[j]);
            words[j] = w[j];
        }
        if (k->prefix && (int)strlen(w[k->words - 1]) > k->prefix)
            w[k->words - 1][k->prefix] = '\0';
        double t0 = now_ms(), c0 = cpu_ms();
        assert_int_equal(store_search(rd, user, conv, words, (size_t)k->words, 0, 20, &r, &next), STORE_OK);
        ms[i] = now_ms() - t0;
        cpu[i] = cpu_ms() - c0;
        found += (long)json_array_size(r);
        json_decref(r);
    }
    qsort(ms, (size_t)runs, sizeof *ms, cmp_double);
    qsort(cpu, (size_t)runs, sizeof *cpu, cmp_double);
    fprintf(stderr, "bench: %-40s wall p50 %6.2f p99 %6.2f max %6.2f | cpu p50 %6.2f p99 %6.2f ms (%d, %.1f hits)\n",
            k->what, ms[runs / 2], ms[runs * 99 / 100], ms[runs - 1], cpu[runs / 2], cpu[runs * 99 / 100], runs,
            (double)found / runs);
    free(ms);
    free(cpu);
}

static void test_search_bench(void **state)
{
    struct t *t = *state;
    const char *n = getenv("PARLEY_SEARCH_BENCH"), *keep = getenv("PARLEY_SEARCH_BENCH_DB");
    struct store *st = NULL, *rd = NULL;
    char err[256];

    if (!n || fx_is_pg())
        skip();
    long total = atol(n);
    const char *path = keep ? keep : t->f->path;
    int exists = keep && access(keep, F_OK) == 0;
    if (keep) {
        assert_int_equal(store_sqlite_open(path, 0, &st, err, sizeof err), STORE_OK);
    } else {
        st = t->f->st;
    }
    if (!exists)
        bench_build(st, total);
    assert_int_equal(store_sqlite_open(path, 1, &rd, err, sizeof err), STORE_OK);
    static const struct bench_kind kinds[] = {
        {"one common word (ranks 0-20)", 0, 20, 1, 0, 0, 0},
        {"one mid word (ranks 100-1000)", 100, 1000, 1, 0, 0, 0},
        {"one rare word (ranks 3000-5000)", 3000, 5000, 1, 0, 0, 0},
        {"two words, common + mid", 0, 300, 2, 0, 0, 0},
        {"prefix of 3 letters (mid word)", 100, 1000, 1, 3, 0, 0},
        {"prefix of 1 letter", 0, 5000, 1, 1, 0, 0},
        {"mid word + prefix 2 letters", 50, 1000, 2, 2, 0, 0},
        {"one mid word, one conversation", 100, 1000, 1, 0, 1, 0},
        {"one common word, 100+ conversations", 0, 20, 1, 0, 0, 1},
        {"one rare word, 100+ conversations", 3000, 5000, 1, 0, 0, 1},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        bench_run(rd, &kinds[i], 200);
    /* the cost of an erasure at this size: the shard's optimize, the
     * checkpoint; and of an edit */
    for (int kind = 0; kind < 2; kind++) {
        double ms[20];
        unsigned seed = 99 + (unsigned)kind;
        for (int i = 0; i < 20; i++) {
            int64_t conv = 1 + (int64_t)(bench_rand(&seed) % B_GROUPS), last = 0, mod = 0;
            int ch = 0;
            assert_int_equal(store_conv_last_seq(st, conv, &last), STORE_OK);
            int64_t seq = 1 + (int64_t)(bench_rand(&seed) % (unsigned)last);
            double t0 = now_ms();
            assert_int_equal(store_begin(st), STORE_OK);
            assert_int_equal(store_msg_change(st, conv, seq, 1, kind ? CHANGE_EDIT : CHANGE_DELETE, "edited text", 11,
                                              9000, &mod, &ch),
                             STORE_OK);
            assert_int_equal(store_commit(st), STORE_OK);
            ms[i] = now_ms() - t0;
        }
        qsort(ms, 20, sizeof *ms, cmp_double);
        fprintf(stderr, "bench: %-44s p50 %7.2f ms  max %7.2f ms  (20, each its own transaction)\n",
                kind ? "edit (commit included)" : "delete (optimize + checkpoint included)", ms[10], ms[19]);
    }
    store_close(rd);
    if (keep)
        store_close(st);
}

int main(int argc, char **argv)
{
    int rc = fx_init(argc, argv);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mods_dense, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_message_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_to, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attachments_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attachments_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attachment_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_quota, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_many_convs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_erasure_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_bench, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
