/* Unit tests of the housekeeping (issue 8, item 7): the refresh tokens that
 * can never serve again are deleted (expired ones, every row of a family with
 * no live token, rotated rows whose successor is older than the keep window),
 * and nothing a live session or reuse detection needs; the writer does it at
 * start and periodically, in bounded steps. And the presence table frees the
 * send buckets of users who are gone once they are full again. Uploads
 * never attached to a message are deleted after a day (WRITER_UPLOAD_KEEP_MS)
 * by the same housekeeping step, younger ones kept. On SQLite;
 * with --pg on PostgreSQL too (store_fixture.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "presence.h"

#include <fcntl.h>
#include <ftw.h>
#include <sodium.h>
#include "store_fixture.h"
#include "writer.h"

#define DAY (86400LL * 1000)

static struct fx *F;  /* the current test's fixture */
static int64_t user_id;

static int setup(void **state)
{
    if (fx_setup(state) != 0)
        return -1;
    F = *state;
    json_t *u;
    assert_int_equal(store_user_create(F->st, "alice", "alice", "$argon2id$x", 1, &u), STORE_OK);
    user_id = json_integer_value(json_object_get(u, "id"));
    json_decref(u);
    return 0;
}

static int teardown(void **state)
{
    return fx_teardown(state);
}

static int64_t rows(struct fx *f)
{
    return fx_count(f, "SELECT count(*) FROM refresh_tokens");
}

static void hash_of(char *out, const char *family, int i)
{
    sprintf(out, "h-%s-%d", family, i);
}

/* A family: one token issued at t0, rotated n times at t0 + k * step. */
static void family(struct fx *f, const char *name, int64_t t0, int64_t step, int n, int64_t ttl)
{
    char h[64], next[64];
    hash_of(h, name, 0);
    assert_int_equal(store_refresh_insert(f->st, user_id, name, h, t0 + ttl, t0), STORE_OK);
    for (int k = 1; k <= n; k++) {
        int64_t uid;
        hash_of(next, name, k);
        assert_int_equal(store_refresh_rotate(f->st, h, next, t0 + k * step + ttl, t0 + k * step, &uid), STORE_OK);
        strcpy(h, next);
    }
}

static int rotate(struct fx *f, const char *name, int i, int64_t now)
{
    char h[64], next[64];
    hash_of(h, name, i);
    sprintf(next, "x-%s-%d-%lld", name, i, (long long)now);
    int64_t uid;
    return store_refresh_rotate(f->st, h, next, now + 30 * DAY, now, &uid);
}

static int prune(struct fx *f, int64_t now)
{
    int n = -1;
    assert_int_equal(store_refresh_prune(f->st, now, now - WRITER_ROTATED_KEEP_MS, 1000, &n), STORE_OK);
    return n;
}

static void test_prune_rules(void **state)
{
    struct fx *f = *state;
    int64_t now = 100 * DAY;
    /* live: 300 rotations over the last day; the current token is valid */
    family(f, "live", now - DAY, 60 * 1000, 300, 30 * DAY);
    /* old: rotated 20 days ago, then every day since: rotations older than 7 days go */
    family(f, "old", now - 20 * DAY, DAY, 20, 30 * DAY);
    /* expired: never rotated, past its expiry */
    family(f, "expired", now - 40 * DAY, DAY, 0, 30 * DAY);
    /* loggedout: rotated 3 times, its current token revoked */
    family(f, "loggedout", now - DAY, 1000, 3, 30 * DAY);
    char h[64];
    hash_of(h, "loggedout", 3);
    assert_int_equal(store_refresh_revoke(f->st, h, now - 1000), STORE_OK);
    /* reused: a rotated token presented again revokes the family */
    family(f, "reused", now - DAY, 1000, 2, 30 * DAY);
    assert_int_equal(rotate(f, "reused", 0, now - 500), STORE_REUSED);
    assert_int_equal(rows(f), 301 + 21 + 1 + 4 + 3);

    /* live 301 kept; old: 0..12 go (their successors are 8+ days old), 13..20 stay */
    assert_int_equal(prune(f, now), 13 + 1 + 4 + 3);
    assert_int_equal(rows(f), 301 + 8);
    assert_int_equal(prune(f, now), 0);

    /* what stays still works: reuse of a kept rotated token is detected */
    assert_int_equal(rotate(f, "live", 299, now), STORE_REUSED);
    /* a pruned one is just unknown */
    assert_int_equal(rotate(f, "old", 3, now), STORE_NOT_FOUND);
    assert_int_equal(rotate(f, "old", 20, now), STORE_OK);
    /* the reuse just revoked "live": the whole family goes at the next prune */
    assert_int_equal(prune(f, now), 301);
}

static void test_prune_bounded(void **state)
{
    struct fx *f = *state;
    int64_t now = 100 * DAY;
    char name[32];
    for (int i = 0; i < 2500; i++) {
        sprintf(name, "e%d", i);
        family(f, name, now - 40 * DAY, DAY, 0, 30 * DAY);
    }
    assert_int_equal(writer_prune(f->st, now), WRITER_PRUNE_ROWS);
    assert_int_equal(writer_prune(f->st, now), WRITER_PRUNE_ROWS);
    assert_int_equal(writer_prune(f->st, now), 500);
    assert_int_equal(writer_prune(f->st, now), 0);
    assert_int_equal(rows(f), 0);
}

static void test_writer_prunes(void **state)
{
    struct fx *f = *state;
    int64_t now = util_now_ms();
    family(f, "gone", now - 40 * DAY, DAY, 0, 30 * DAY);
    family(f, "here", now, DAY, 0, 30 * DAY);
    struct writer_config cfg = {.batch_max = 16, .batch_interval_ms = 1, .prune_interval_ms = 60000};
    struct writer *wr = writer_new(f->st, cfg, NULL, NULL, NULL, 0);
    assert_int_equal(writer_start(wr), 0);
    /* at start (the first idle second) */
    for (int i = 0; i < 100 && rows(f) != 1; i++)
        usleep(50 * 1000);
    assert_int_equal(rows(f), 1);
    writer_stop(wr);
    f->st = NULL; /* the writer's now */
    writer_free(wr);
}

/* An upload as api_attach.c records it: bytes in a temporary file, then
 * store_att_create at time t. Returns its id (malloc'd). */
static char *upload_at(struct fx *f, const char *text, int64_t t)
{
    char tmp[128], sha[65];
    unsigned char d[crypto_hash_sha256_BYTES];
    snprintf(tmp, sizeof tmp, "%s/upload-XXXXXX", f->dir[0] ? f->dir : "/tmp");
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    crypto_hash_sha256(d, (const unsigned char *)text, strlen(text));
    sodium_bin2hex(sha, sizeof sha, d, sizeof d);
    json_t *att = NULL;
    assert_int_equal(store_att_create(f->st, user_id, "n.txt", "text/plain", tmp, (int64_t)strlen(text), sha, t, 0, &att),
                     STORE_OK);
    unlink(tmp); /* as job_free does */
    char *id = xstrdup(json_string_value(json_object_get(att, "id")));
    json_decref(att);
    return id;
}

static int att_exists(struct fx *f, const char *id)
{
    json_t *att = NULL;
    char *sha = NULL;
    int rc = store_att_get(f->st, id, user_id, &att, &sha);
    json_decref(att);
    free(sha);
    assert_true(rc == STORE_OK || rc == STORE_NOT_FOUND);
    return rc == STORE_OK;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : 0; /* best effort */
}

static void test_writer_prunes_uploads(void **state)
{
    struct fx *f = *state;
    if (!f->st->ops->att_create) {
        skip(); /* a backend without attachments yet: nothing to prune */
        return;
    }
    int64_t now = util_now_ms();
    char *old = upload_at(f, "an upload of two days ago", now - 2 * DAY);
    char *edge = upload_at(f, "an upload of nearly a day ago", now - WRITER_UPLOAD_KEEP_MS + 60000);
    char *young = upload_at(f, "an upload of now", now);
    assert_true(att_exists(f, old) && att_exists(f, edge) && att_exists(f, young));
    /* SQLite: the bytes are a file under <data>/attachments, named by their SHA-256 */
    char blob[256];
    unsigned char d[crypto_hash_sha256_BYTES];
    char sha[65];
    const char *text = "an upload of two days ago";
    crypto_hash_sha256(d, (const unsigned char *)text, strlen(text));
    sodium_bin2hex(sha, sizeof sha, d, sizeof d);
    snprintf(blob, sizeof blob, "%s/attachments/%.2s/%s", f->dir, sha, sha);
    int files = !f->schema[0];
    if (files)
        assert_int_equal(access(blob, F_OK), 0);
    assert_int_equal(writer_prune(f->st, now), 1);
    assert_false(att_exists(f, old));
    if (files)
        assert_int_equal(access(blob, F_OK), -1); /* its bytes went with it */
    assert_true(att_exists(f, edge));
    assert_true(att_exists(f, young));
    assert_int_equal(writer_prune(f->st, now), 0);
    if (files) { /* the fixture removes the database files only */
        char dir[128];
        snprintf(dir, sizeof dir, "%s/attachments", f->dir);
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    }
    free(old);
    free(edge);
    free(young);
}

static void test_presence_frees_idle_buckets(void **state)
{
    (void)state;
    struct presence *p = presence_new();
    int64_t retry, t = 1000;
    for (int64_t u = 1; u <= 5000; u++)
        assert_int_equal(presence_take_token(p, u, t, 50, 500, &retry), 0);
    assert_int_equal(presence_up(p, 7), 1); /* one of them is online */
    assert_int_equal(presence_size(p), 5000);
    /* buckets are full again 10 s later; traffic of a few users sweeps the rest */
    for (int i = 0; i < 20000; i++)
        presence_take_token(p, 9000000 + i % 2, t + 20000 + i, 50, 500, &retry);
    assert_int_equal(presence_size(p), 3); /* the online user and the two busy ones */
    assert_int_equal(presence_online(p, 7), 1);
    /* a bucket not yet full is kept: forgetting it would hand out a fresh burst */
    for (int i = 0; i < 500; i++)
        presence_take_token(p, 42, t + 30000, 50, 500, &retry);
    assert_int_equal(presence_take_token(p, 42, t + 30000, 50, 500, &retry), -1);
    for (int i = 0; i < 20000; i++)
        presence_take_token(p, 9000000, t + 30001, 50, 500, &retry);
    assert_int_equal(presence_take_token(p, 42, t + 30002, 50, 500, &retry), -1);
    presence_free(p);
}

int main(int argc, char **argv)
{
    int rc = fx_init(argc, argv);
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_prune_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_prunes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_prunes_uploads, setup, teardown),
        cmocka_unit_test(test_presence_frees_idle_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
