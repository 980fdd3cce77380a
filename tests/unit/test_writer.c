/* Unit tests for the writer's batch: grouping many jobs into one
 * transaction, dense per-conversation seq assignment in submission order,
 * idempotency on (sender, client id), membership, per-job savepoints, and the
 * fan-out it hands on after the commit. Runs on a real SQLite store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_tx.h"
#include "rows.h"
#include "store_sqlite.h"
#include "writer.h"

struct fixture {
    char dir[64];
    char path[128];
    struct store *st;
    int64_t u1, u2, u3, group, direct;
    /* what the batch handed on */
    struct job *delivered[64];
    int ndelivered;
    json_t *fanned[64];     /* decoded msg frames */
    size_t fan_members[64]; /* member count of each */
    int nfanned;
    int run_len[64];        /* messages in each publication (bus.h: runs) */
    int nruns;
};

static int64_t make_user(struct store *st, const char *name)
{
    json_t *u;
    assert_int_equal(store_user_create(st, name, name, "$argon2id$x", 1, &u), STORE_OK);
    int64_t id = json_integer_value(json_object_get(u, "id"));
    json_decref(u);
    return id;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/parley-writer-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/parley.db", f->dir);
    char err[256];
    assert_int_equal(store_sqlite_open(f->path, 0, &f->st, err, sizeof err), STORE_OK);
    f->u1 = make_user(f->st, "alice");
    f->u2 = make_user(f->st, "bob");
    f->u3 = make_user(f->st, "carol");
    int64_t members[] = {f->u2};
    assert_int_equal(store_conv_create_group(f->st, f->u1, "g", members, 1, 1, &f->group), STORE_OK);
    int created;
    assert_int_equal(store_conv_create_direct(f->st, f->u1, f->u3, 1, &f->direct, &created), STORE_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < f->ndelivered; i++)
        job_free(f->delivered[i]);
    for (int i = 0; i < f->nfanned; i++)
        json_decref(f->fanned[i]);
    store_close(f->st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void deliver(void *ctx, struct job *j)
{
    struct fixture *f = ctx;
    f->delivered[f->ndelivered++] = j;
}

/* A publication: one message, or a run of them whose frames lie back to
 * back, each ending where its part says, with seqs m->seq, m->seq + 1, ... */
static void fanout(void *ctx, struct bus_msg *m)
{
    struct fixture *f = ctx;
    struct frame *fr = m->frame;
    struct idlist *members = m->users;
    assert_int_equal(m->kind, BUS_MSG);
    uint32_t start = 0;
    for (uint32_t i = 0; i < bus_msg_count(m); i++) {
        uint32_t end = m->nparts ? m->parts[i].end : fr->len;
        const uint8_t *p = fr->data + start;
        /* a server frame: FIN|TEXT, then a 7-bit, 16-bit or 64-bit length */
        assert_int_equal(p[0], 0x81);
        size_t hl = (p[1] & 0x7f) < 126 ? 2 : (p[1] & 0x7f) == 126 ? 4 : 10;
        size_t plen = (p[1] & 0x7f) < 126 ? (size_t)(p[1] & 0x7f) : (size_t)p[2] << 8 | p[3];
        assert_int_equal(hl + plen, end - start); /* the header's length is the part's */
        json_error_t e;
        json_t *o = json_loadb((const char *)p + hl, end - start - hl, JSON_ALLOW_NUL, &e);
        assert_non_null(o);
        assert_int_equal(json_integer_value(json_object_get(o, "conv")), m->conv);
        assert_int_equal(json_integer_value(json_object_get(o, "seq")), m->seq + (int64_t)i);
        f->fan_members[f->nfanned] = members->n;
        f->fanned[f->nfanned++] = o;
        start = end;
    }
    assert_int_equal(start, fr->len);
    f->run_len[f->nruns++] = (int)bus_msg_count(m);
}

static struct job *send_job(int64_t user, int64_t conv, const char *id, const char *body)
{
    struct job *j = job_new(JOB_SEND, NULL, NULL, NULL, NULL);
    j->u.send.sender = user;
    j->u.send.conv = conv;
    j->u.send.client_id = strdup(id);
    j->u.send.body = strdup(body);
    j->u.send.body_len = strlen(body);
    return j;
}

/* actor adds target to conv */
static struct job *member_add_job(int64_t conv, int64_t actor, int64_t target)
{
    struct job *j = job_new(JOB_MEMBER, NULL, NULL, NULL, NULL);
    j->u.member.op = MEMBER_ADD;
    j->u.member.conv = conv;
    j->u.member.actor = actor;
    j->u.member.target = target;
    return j;
}

/* The core's executor, but a signup named "ghost" writes and then fails:
 * its savepoint must undo only itself. */
static int test_exec(struct store *st, struct job *j)
{
    if (j->kind == JOB_SIGNUP && strcmp(j->u.signup.username, "ghost") == 0) {
        json_t *u;
        if (store_user_create(st, "ghost", "ghost", "h", 1, &u) == STORE_OK)
            json_decref(u);
        return STORE_CONFLICT;
    }
    return chat_tx_run(st, j);
}

static struct job *signup_job(const char *name)
{
    struct job *j = job_new(JOB_SIGNUP, NULL, NULL, NULL, NULL);
    snprintf(j->u.signup.username, sizeof j->u.signup.username, "%s", name);
    j->u.signup.pwhash = strdup("$argon2id$x");
    job_token_new(&j->u.signup.tok, 60);
    return j;
}

/* Links jobs into a batch, runs it, and returns how many were delivered. */
static int run(struct fixture *f, struct job **jobs, int n)
{
    for (int i = 0; i < n; i++)
        jobs[i]->ev.next = i + 1 < n ? &jobs[i + 1]->ev : NULL;
    int before = f->ndelivered;
    int got = writer_run_batch(f->st, jobs[0], test_exec, fanout, deliver, f);
    assert_int_equal(got, n);
    assert_int_equal(f->ndelivered - before, n);
    return got;
}

static void test_dense_seqs_in_submission_order(void **state)
{
    struct fixture *f = *state;
    struct job *b[] = {
        send_job(f->u1, f->group, "a1", "one"),  send_job(f->u1, f->direct, "a2", "dm"),
        send_job(f->u2, f->group, "b1", "two"),  send_job(f->u1, f->group, "a3", "three"),
        send_job(f->u3, f->direct, "c1", "back"),
    };
    run(f, b, 5);
    int64_t want_seq[] = {1, 1, 2, 3, 2};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(b[i]->rc, STORE_OK);
        assert_int_equal(b[i]->u.send.dup, 0);
        assert_int_equal(b[i]->u.send.seq, want_seq[i]);
        assert_true(b[i]->u.send.ts > 0);
    }
    int64_t last;
    assert_int_equal(store_conv_last_seq(f->st, f->group, &last), STORE_OK);
    assert_int_equal(last, 3);
    assert_int_equal(store_conv_last_seq(f->st, f->direct, &last), STORE_OK);
    assert_int_equal(last, 2);
    /* one frame per message carrying the assigned seq, published as one run
     * per conversation (in the order of their first messages), each in seq
     * order: the group's 1, 2, 3, then the direct conversation's 1, 2 */
    assert_int_equal(f->nruns, 2);
    assert_int_equal(f->run_len[0], 3);
    assert_int_equal(f->run_len[1], 2);
    assert_int_equal(f->nfanned, 5);
    int64_t fan_seq[] = {1, 2, 3, 1, 2}, fan_conv[] = {f->group, f->group, f->group, f->direct, f->direct};
    const char *fan_id[] = {"a1", "b1", "a3", "a2", "c1"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(json_integer_value(json_object_get(f->fanned[i], "seq")), fan_seq[i]);
        assert_int_equal(json_integer_value(json_object_get(f->fanned[i], "conv")), fan_conv[i]);
        assert_string_equal(json_string_value(json_object_get(f->fanned[i], "id")), fan_id[i]);
        assert_string_equal(json_string_value(json_object_get(f->fanned[i], "op")), "msg");
        assert_int_equal(f->fan_members[i], 2);
    }
    /* the next batch continues where this one stopped */
    struct job *c[] = {send_job(f->u2, f->group, "b2", "four")};
    run(f, c, 1);
    assert_int_equal(c[0]->u.send.seq, 4);
}

static void test_idempotent_resend(void **state)
{
    struct fixture *f = *state;
    struct job *b[] = {send_job(f->u1, f->group, "same", "first"), send_job(f->u1, f->group, "same", "second")};
    run(f, b, 2);
    assert_int_equal(b[0]->u.send.dup, 0);
    assert_int_equal(b[1]->rc, STORE_OK);
    assert_int_equal(b[1]->u.send.dup, 1); /* a duplicate inside one batch */
    assert_int_equal(b[1]->u.send.seq, b[0]->u.send.seq);
    assert_int_equal(f->nfanned, 1);

    /* later, even aimed at another conversation: the original ack */
    struct job *c[] = {send_job(f->u1, f->direct, "same", "third")};
    run(f, c, 1);
    assert_int_equal(c[0]->u.send.dup, 1);
    assert_int_equal(c[0]->u.send.conv, f->group);
    assert_int_equal(c[0]->u.send.seq, b[0]->u.send.seq);
    assert_int_equal(c[0]->u.send.ts, b[0]->u.send.ts);
    assert_int_equal(f->nfanned, 1);
    int64_t last;
    store_conv_last_seq(f->st, f->group, &last);
    assert_int_equal(last, 1);
    /* the same client id from another sender is another message */
    struct job *d[] = {send_job(f->u2, f->group, "same", "bob's")};
    run(f, d, 1);
    assert_int_equal(d[0]->u.send.dup, 0);
    assert_int_equal(d[0]->u.send.seq, 2);
}

static void test_non_member_refused_others_commit(void **state)
{
    struct fixture *f = *state;
    struct job *b[] = {send_job(f->u3, f->group, "x1", "not a member"), send_job(f->u1, f->group, "a1", "ok"),
                       send_job(f->u1, 9999, "a2", "no such conversation")};
    run(f, b, 3);
    assert_int_equal(b[0]->rc, STORE_NOT_FOUND);
    assert_int_equal(b[1]->rc, STORE_OK);
    assert_int_equal(b[1]->u.send.seq, 1); /* the refused send took no seq */
    assert_int_equal(b[2]->rc, STORE_NOT_FOUND);
    assert_int_equal(f->nfanned, 1);
}

static void test_sender_read_position_moves(void **state)
{
    struct fixture *f = *state;
    struct job *b[] = {send_job(f->u1, f->group, "a1", "1"), send_job(f->u1, f->group, "a2", "2"),
                       send_job(f->u2, f->group, "b1", "3")};
    run(f, b, 3);
    json_t *summary;
    assert_int_equal(store_sync_summary(f->st, f->u1, &summary), STORE_OK);
    size_t i;
    json_t *s;
    json_array_foreach(summary, i, s) {
        if (json_integer_value(json_object_get(s, "conv")) != f->group)
            continue;
        assert_int_equal(json_integer_value(json_object_get(s, "last_read_seq")), 2);
        assert_int_equal(json_integer_value(json_object_get(s, "unread")), 1);
    }
    json_decref(summary);
}

static void test_failing_job_rolls_back_only_itself(void **state)
{
    struct fixture *f = *state;
    struct job *b[3];
    b[0] = signup_job("ghost");
    b[1] = send_job(f->u1, f->group, "a1", "kept");
    b[2] = signup_job("dave");
    run(f, b, 3);
    assert_int_equal(b[0]->rc, STORE_CONFLICT);
    assert_int_equal(b[1]->rc, STORE_OK);
    assert_int_equal(b[2]->rc, STORE_OK);
    json_t *u;
    assert_int_equal(store_user_by_name(f->st, "ghost", &u, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_user_by_name(f->st, "dave", &u, NULL), STORE_OK);
    json_decref(u);
}

/* Membership is checked against the state each send sees in batch order:
 * a member added by an earlier job of the same batch may send, and gets
 * the messages fanned out after that. */
static void test_member_added_mid_batch(void **state)
{
    struct fixture *f = *state;
    struct job *b[4];
    b[0] = send_job(f->u3, f->group, "c1", "too early");
    b[1] = member_add_job(f->group, f->u1, f->u3);
    b[2] = send_job(f->u3, f->group, "c2", "hello all");
    b[3] = send_job(f->u1, f->group, "a1", "welcome");
    run(f, b, 4);
    assert_int_equal(b[0]->rc, STORE_NOT_FOUND);
    assert_int_equal(b[1]->rc, STORE_OK);
    assert_int_equal(b[2]->rc, STORE_OK);
    assert_int_equal(b[2]->u.send.seq, 1);
    assert_int_equal(b[3]->u.send.seq, 2);
    assert_int_equal(f->nfanned, 2);
    assert_int_equal(f->fan_members[0], 3);
    assert_int_equal(f->fan_members[1], 3);
    assert_int_equal(f->nruns, 1); /* both after the change: one run */
}

/* A run holds messages that went to the same members: a member added
 * between two sends of a batch starts a new one, with the new members. */
static void test_run_ends_at_membership_change(void **state)
{
    struct fixture *f = *state;
    struct job *b[4];
    b[0] = send_job(f->u1, f->group, "a1", "before");
    b[1] = send_job(f->u2, f->group, "b1", "before too");
    b[2] = member_add_job(f->group, f->u1, f->u3);
    b[3] = send_job(f->u1, f->group, "a2", "after");
    run(f, b, 4);
    assert_int_equal(b[3]->u.send.seq, 3);
    assert_int_equal(f->nruns, 2);
    assert_int_equal(f->run_len[0], 2);
    assert_int_equal(f->run_len[1], 1);
    assert_int_equal(f->fan_members[0], 2);
    assert_int_equal(f->fan_members[1], 2);
    assert_int_equal(f->fan_members[2], 3);
}

/* A run's buffer is bounded (RUN_MAX_BYTES, 64 KiB): 20 frames of about
 * 4 KiB make two runs, in seq order, every message once. */
static void test_run_bounded_in_bytes(void **state)
{
    struct fixture *f = *state;
    enum { N = 20 };
    static char body[4001];
    memset(body, 'y', sizeof body - 1);
    struct job *b[N];
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "big%d", i);
        b[i] = send_job(f->u1, f->group, id, body);
    }
    run(f, b, N);
    assert_int_equal(f->nruns, 2);
    assert_true(f->run_len[0] >= 14 && f->run_len[0] <= 16); /* 64 KiB / ~4.1 KiB */
    assert_int_equal(f->run_len[0] + f->run_len[1], N);
    assert_int_equal(f->nfanned, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(json_integer_value(json_object_get(f->fanned[i], "seq")), i + 1);
}

static void test_large_batch(void **state)
{
    struct fixture *f = *state;
    enum { N = 50 };
    struct job *b[N];
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        b[i] = send_job(i % 2 ? f->u1 : f->u2, f->group, id, "x");
    }
    /* delivered[] holds 64: this test uses N of them */
    run(f, b, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(b[i]->u.send.seq, i + 1);
    /* fanned[] holds 64: all of them as one run */
    assert_int_equal(f->nruns, 1);
    assert_int_equal(f->nfanned, N);
    json_t *page;
    int more;
    assert_int_equal(store_msg_page(f->st, f->group, 0, 0, 200, &page, &more), STORE_OK);
    assert_int_equal(json_array_size(page), N);
    json_decref(page);
}

/* The hand-written msg frame holds exactly the object rows_msg +
 * rows_msg_v2 + "op" would, for any body: every control character, quotes,
 * backslashes, NUL, multi-byte UTF-8; with and without the version-2 fields. */
static void test_msg_frame_matches_rows(void **state)
{
    (void)state;
    char body[200];
    size_t n = 0;
    for (int c = 0; c < 0x20; c++)
        body[n++] = (char)c;
    const char *rest = "\"q\" \\ / \x7f caf\xc3\xa9 \xf0\x9f\x91\x8d end";
    memcpy(body + n, rest, strlen(rest));
    n += strlen(rest);
    body[n] = '\0';
    for (int v2 = 0; v2 < 2; v2++) {
        struct job *j = job_new(JOB_SEND, NULL, NULL, NULL, NULL);
        struct job_send *s = &j->u.send;
        s->conv = 7;
        s->seq = 123456789012LL;
        s->sender = 42;
        s->ts = 1700000000123LL;
        s->client_id = strdup("id \"\\\t\xc3\xa9");
        s->body = malloc(n + 1);
        memcpy(s->body, body, n + 1);
        s->body_len = n;
        if (v2) {
            s->reply_to = 5;
            s->att_out = json_pack("[{ss ss ss sI}]", "id", "a\"b", "name", "x.png", "type", "image/png", "size",
                                   (json_int_t)10);
        }
        struct frame *fr = writer_msg_frame(j);
        size_t hl = (fr->data[1] & 0x7f) < 126 ? 2 : (fr->data[1] & 0x7f) == 126 ? 4 : 10;
        json_error_t e;
        json_t *got = json_loadb((const char *)fr->data + hl, fr->len - hl, JSON_ALLOW_NUL, &e);
        if (!got)
            fail_msg("not JSON: %s", e.text);
        json_t *want = rows_msg(s->conv, s->seq, s->sender, s->client_id, s->body, s->body_len, s->ts);
        struct rows_msg_v2 x = {.reply_to = s->reply_to, .attachments = s->att_out ? json_incref(s->att_out) : NULL};
        rows_msg_v2(want, &x);
        json_object_set_new(want, "op", json_string("msg"));
        assert_true(json_equal(got, want));
        json_decref(got);
        json_decref(want);
        frame_unref(fr);
        job_free(j);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dense_seqs_in_submission_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent_resend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_member_refused_others_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_read_position_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_job_rolls_back_only_itself, setup, teardown),
        cmocka_unit_test_setup_teardown(test_member_added_mid_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_ends_at_membership_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_bounded_in_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_batch, setup, teardown),
        cmocka_unit_test(test_msg_frame_matches_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
