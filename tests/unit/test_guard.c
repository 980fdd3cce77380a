/* Unit tests of guard: the buckets, marks, remembered values, counters and
 * failure backoff of the keyed table (with the clock given by the test),
 * idle entries freed; and the password-hash queue: slots, FIFO per address,
 * addresses in turn (a flood from one address cannot keep another out), the
 * bound with eviction of the heaviest address's newest, cancellation. The
 * queue's events go through a real worker's inbox, run by the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "guard.h"

static void test_bucket(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    int64_t retry = 0, t = 1000000;
    for (int i = 0; i < 5; i++)
        assert_int_equal(guard_take(g, GUARD_READ, 7, 0, t, 1.0, 5.0, &retry), 0);
    assert_int_equal(guard_take(g, GUARD_READ, 7, 0, t, 1.0, 5.0, &retry), -1);
    assert_true(retry > 0 && retry <= 1001);
    /* another key has its own bucket */
    assert_int_equal(guard_take(g, GUARD_READ, 8, 0, t, 1.0, 5.0, &retry), 0);
    assert_int_equal(guard_take(g, GUARD_SIGNUP, 7, 0, t, 1.0, 5.0, &retry), 0);
    /* one token a second */
    assert_int_equal(guard_take(g, GUARD_READ, 7, 0, t + 1000, 1.0, 5.0, &retry), 0);
    assert_int_equal(guard_take(g, GUARD_READ, 7, 0, t + 1000, 1.0, 5.0, &retry), -1);
    /* off */
    assert_int_equal(guard_take(g, GUARD_READ, 7, 0, t, 0, 0, &retry), 0);
    /* full again: nothing left to remember */
    assert_int_equal(guard_entries(g, t + 7000), 0);
    guard_free(g);
}

static void test_once_and_swap(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    int64_t t = 5000;
    assert_int_equal(guard_once(g, GUARD_TYPING, 1, 2, t, 2000), 1);
    assert_int_equal(guard_once(g, GUARD_TYPING, 1, 2, t + 1999, 2000), 0);
    assert_int_equal(guard_once(g, GUARD_TYPING, 1, 3, t + 10, 2000), 1); /* another conversation */
    assert_int_equal(guard_once(g, GUARD_TYPING, 1, 2, t + 2000, 2000), 1);
    assert_int_equal(guard_once(g, GUARD_TYPING, 1, 2, t, 0), 1);
    assert_int_equal(guard_swap(g, GUARD_READ_POS, 1, 2, t, 60000, 10), -1);
    assert_int_equal(guard_swap(g, GUARD_READ_POS, 1, 2, t, 60000, 12), 10);
    assert_int_equal(guard_swap(g, GUARD_READ_POS, 1, 2, t, 60000, 12), 12);
    assert_int_equal(guard_entries(g, -1), 3);
    assert_int_equal(guard_entries(g, t + 60000), 0);
    guard_free(g);
}

static void test_count(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(guard_count(g, GUARD_CONNS, 9, +1, 3), 0);
    assert_int_equal(guard_count(g, GUARD_CONNS, 9, +1, 3), -1);
    assert_int_equal(guard_count(g, GUARD_CONNS, 10, +1, 3), 0);
    assert_int_equal(guard_count(g, GUARD_CONNS, 9, -1, 3), 0);
    assert_int_equal(guard_count(g, GUARD_CONNS, 9, +1, 3), 0);
    for (int i = 0; i < 5; i++)
        guard_count(g, GUARD_CONNS, 9, -1, 3);
    guard_count(g, GUARD_CONNS, 10, -1, 3);
    assert_int_equal(guard_entries(g, -1), 0); /* zero counts are freed at once */
    guard_free(g);
}

static void test_failures(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    int64_t t = 100000, retry = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(guard_blocked(g, GUARD_FAIL_ACCOUNT, 5, t, &retry), 0);
        guard_failed(g, GUARD_FAIL_ACCOUNT, 5, t, 3, 1000, 8000, 60000);
    }
    assert_int_equal(guard_blocked(g, GUARD_FAIL_ACCOUNT, 5, t, &retry), 0); /* three are free */
    int64_t expect[] = {1000, 2000, 4000, 8000, 8000};
    for (int i = 0; i < 5; i++) {
        guard_failed(g, GUARD_FAIL_ACCOUNT, 5, t, 3, 1000, 8000, 60000);
        assert_int_equal(guard_blocked(g, GUARD_FAIL_ACCOUNT, 5, t, &retry), 1);
        assert_int_equal(retry, expect[i]);
    }
    assert_int_equal(guard_blocked(g, GUARD_FAIL_ACCOUNT, 5, t + 8000, &retry), 0);
    assert_int_equal(guard_blocked(g, GUARD_FAIL_ADDR, 5, t, &retry), 0); /* another kind */
    guard_forgive(g, GUARD_FAIL_ACCOUNT, 5);
    guard_failed(g, GUARD_FAIL_ACCOUNT, 5, t, 3, 1000, 8000, 60000);
    assert_int_equal(guard_blocked(g, GUARD_FAIL_ACCOUNT, 5, t, &retry), 0); /* counting from zero */
    assert_int_equal(guard_entries(g, t + 60000), 0); /* forgotten */
    guard_free(g);
}

static void test_key(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    assert_true(guard_key(g, "alice", 5) == guard_key(g, "alice", 5));
    assert_true(guard_key(g, "alice", 5) != guard_key(g, "alicf", 5));
    guard_free(g);
}

static void test_many_entries_freed(void **state)
{
    (void)state;
    struct guard *g = guard_new(1, 0);
    int64_t retry;
    for (uint64_t u = 1; u <= 5000; u++)
        guard_take(g, GUARD_READ, u, 0, 1000, 10.0, 10.0, &retry);
    assert_int_equal(guard_entries(g, -1), 5000);
    /* later traffic sweeps the idle ones a few slots at a time */
    for (uint64_t u = 1; u <= 20000; u++)
        guard_take(g, GUARD_READ, 100000 + (u % 3), 0, 100000 + (int64_t)u, 10.0, 10.0, &retry);
    assert_true(guard_entries(g, -1) <= 3);
    guard_free(g);
}

/* ---- the hash queue ---- */

struct fixture {
    struct config cfg;
    struct worker *w;
    struct guard *g;
    int order[64];
    int outcome[64];
    int n;
};

struct req {
    struct guard_wait gw; /* first */
    struct fixture *f;
    int id;
};

static void req_run(struct worker *w, struct event *ev)
{
    (void)w;
    struct req *r = (struct req *)ev;
    r->f->order[r->f->n] = r->id;
    r->f->outcome[r->f->n++] = r->gw.outcome;
}

static void req_drop(struct event *ev)
{
    (void)ev;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    strcpy(f->cfg.listen_host, "127.0.0.1");
    f->cfg.listen_port = 0;
    f->cfg.heartbeat_ms = 30000;
    char err[256];
    f->w = worker_new(&f->cfg, 0, 1, err, sizeof err);
    assert_non_null(f->w);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    worker_free(f->w);
    guard_free(f->g);
    free(f);
    return 0;
}

static void init_req(struct fixture *f, struct req *r, int id, uint64_t src)
{
    memset(r, 0, sizeof *r);
    r->f = f;
    r->id = id;
    r->gw.ev.run = req_run;
    r->gw.ev.drop = req_drop;
    r->gw.w = f->w;
    r->gw.src = src;
}

static void pump(struct fixture *f)
{
    uv_run(&f->w->loop, UV_RUN_NOWAIT);
}

static void test_hash_turns(void **state)
{
    struct fixture *f = *state;
    f->g = guard_new(2, 16);
    struct req r[12];
    /* two slots */
    init_req(f, &r[0], 0, 1);
    init_req(f, &r[1], 1, 1);
    assert_int_equal(guard_hash_enter(f->g, &r[0].gw), GUARD_HASH_GO);
    assert_int_equal(guard_hash_enter(f->g, &r[1].gw), GUARD_HASH_GO);
    /* a flood from address 1 waits... */
    for (int i = 2; i < 8; i++) {
        init_req(f, &r[i], i, 1);
        assert_int_equal(guard_hash_enter(f->g, &r[i].gw), GUARD_HASH_QUEUED);
    }
    /* ...and someone else, arriving later, is next in turn */
    init_req(f, &r[8], 8, 2);
    assert_int_equal(guard_hash_enter(f->g, &r[8].gw), GUARD_HASH_QUEUED);
    init_req(f, &r[9], 9, 3);
    assert_int_equal(guard_hash_enter(f->g, &r[9].gw), GUARD_HASH_QUEUED);
    int running;
    size_t waiting;
    guard_hash_stats(f->g, &running, &waiting);
    assert_int_equal(running, 2);
    assert_int_equal(waiting, 8);
    for (int i = 0; i < 8; i++) {
        guard_hash_leave(f->g); /* a slot frees: handed to the next in turn */
        pump(f);
    }
    assert_int_equal(f->n, 8);
    int want[] = {2, 8, 9, 3, 4, 5, 6, 7};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(f->order[i], want[i]);
        assert_int_equal(f->outcome[i], GUARD_GO);
    }
    guard_hash_stats(f->g, &running, &waiting);
    assert_int_equal(running, 2); /* the handed-over slots are still taken */
    assert_int_equal(waiting, 0);
    guard_hash_leave(f->g);
    guard_hash_leave(f->g);
    guard_hash_stats(f->g, &running, &waiting);
    assert_int_equal(running, 0);
    init_req(f, &r[10], 10, 1);
    assert_int_equal(guard_hash_enter(f->g, &r[10].gw), GUARD_HASH_GO);
    guard_hash_leave(f->g);
}

static void test_hash_bound(void **state)
{
    struct fixture *f = *state;
    f->g = guard_new(1, 3);
    struct req r[10];
    init_req(f, &r[0], 0, 1);
    assert_int_equal(guard_hash_enter(f->g, &r[0].gw), GUARD_HASH_GO);
    for (int i = 1; i <= 3; i++) {
        init_req(f, &r[i], i, 1);
        assert_int_equal(guard_hash_enter(f->g, &r[i].gw), GUARD_HASH_QUEUED);
    }
    /* full: more from the flooder is refused */
    init_req(f, &r[4], 4, 1);
    assert_int_equal(guard_hash_enter(f->g, &r[4].gw), GUARD_HASH_FULL);
    /* a newcomer takes the place of the flooder's newest */
    init_req(f, &r[5], 5, 2);
    assert_int_equal(guard_hash_enter(f->g, &r[5].gw), GUARD_HASH_QUEUED);
    pump(f);
    assert_int_equal(f->n, 1);
    assert_int_equal(f->order[0], 3);
    assert_int_equal(f->outcome[0], GUARD_EVICTED);
    /* the second newcomer from that address cannot push it out again */
    init_req(f, &r[6], 6, 2);
    init_req(f, &r[7], 7, 3);
    assert_int_equal(guard_hash_enter(f->g, &r[6].gw), GUARD_HASH_FULL);
    /* a third address still can (address 1 holds two) */
    assert_int_equal(guard_hash_enter(f->g, &r[7].gw), GUARD_HASH_QUEUED);
    pump(f);
    assert_int_equal(f->order[1], 2);
    assert_int_equal(f->outcome[1], GUARD_EVICTED);
    /* cancel: a waiter taken out gets no event; a posted one cannot be */
    assert_int_equal(guard_hash_cancel(f->g, &r[5].gw), 1);
    assert_int_equal(guard_hash_cancel(f->g, &r[5].gw), 0);
    guard_hash_leave(f->g);
    pump(f);
    assert_int_equal(f->order[2], 1);
    assert_int_equal(guard_hash_cancel(f->g, &r[1].gw), 0);
    guard_hash_leave(f->g);
    pump(f);
    assert_int_equal(f->order[3], 7);
    guard_hash_leave(f->g);
    int running;
    size_t waiting;
    guard_hash_stats(f->g, &running, &waiting);
    assert_int_equal(running, 0);
    assert_int_equal(waiting, 0);
}

static void test_hash_no_queue(void **state)
{
    struct fixture *f = *state;
    f->g = guard_new(1, 0);
    struct req r[2];
    init_req(f, &r[0], 0, 1);
    init_req(f, &r[1], 1, 2);
    assert_int_equal(guard_hash_enter(f->g, &r[0].gw), GUARD_HASH_GO);
    assert_int_equal(guard_hash_enter(f->g, &r[1].gw), GUARD_HASH_FULL);
    guard_hash_leave(f->g);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_once_and_swap),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_many_entries_freed),
        cmocka_unit_test_setup_teardown(test_hash_turns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_no_queue, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
