/* Unit tests of the local bus on its own: real workers (their inboxes and
 * loops, run by the test), publications from this thread and from another,
 * the order each worker sees, the postbox putting publications before what
 * the publisher posts next, reference counting, and the watch counts a
 * network bus would subscribe by. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "config.h"

enum { NW = 2, MAXSEEN = 4096 };

struct seen {
    int64_t conv, seq;
    enum bus_kind kind;
    uint64_t origin;
};

struct fixture {
    struct config cfg;
    struct worker *w[NW];
    struct bus *bus;
    struct seen seen[NW][MAXSEEN];
    int nseen[NW];
    int marker_at[NW]; /* where the marker event ran, in seen order */
};

/* The deliver callback: the fixture is every worker's context. */
static void record(struct worker *w, const struct bus_msg *m)
{
    struct fixture *f = w->ctx;
    int i = w->index;
    assert_true(f->nseen[i] < MAXSEEN);
    f->seen[i][f->nseen[i]++] = (struct seen){m->conv, m->seq, m->kind, m->origin};
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    strcpy(f->cfg.listen_host, "127.0.0.1");
    f->cfg.listen_port = 0; /* any free port: the listener is not used here */
    f->cfg.heartbeat_ms = 30000;
    char err[256];
    for (int i = 0; i < NW; i++) {
        f->w[i] = worker_new(&f->cfg, i, NW, err, sizeof err);
        assert_non_null(f->w[i]);
        worker_set_handler(f->w[i], NULL, f);
        f->marker_at[i] = -1;
    }
    f->bus = bus_local_new(f->w, NW, record);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    bus_free(f->bus);
    for (int i = 0; i < NW; i++)
        worker_free(f->w[i]); /* drops whatever is still in the inbox */
    free(f);
    return 0;
}

/* Runs each worker's loop once without blocking: its inbox is read. */
static void pump(struct fixture *f)
{
    for (int i = 0; i < NW; i++)
        uv_run(&f->w[i]->loop, UV_RUN_NOWAIT);
}

static struct bus_msg *msg(int64_t conv, int64_t seq)
{
    struct bus_msg *m = bus_msg_new(BUS_MSG, conv);
    m->seq = seq;
    m->frame = frame_ws(1, "x", 1);
    int64_t members[] = {1, 2, 3};
    m->users = idlist_new(members, 3);
    return m;
}

static void test_every_worker_in_order(void **state)
{
    struct fixture *f = *state;
    struct bus_msg *kept = msg(7, 0);
    bus_publish(f->bus, kept, NULL);
    for (int s = 1; s <= 100; s++) {
        struct bus_msg *m = msg(s % 3 + 1, s);
        bus_publish(f->bus, m, NULL);
        bus_msg_unref(m);
    }
    pump(f);
    for (int i = 0; i < NW; i++) {
        assert_int_equal(f->nseen[i], 101);
        assert_int_equal(f->seen[i][0].conv, 7);
        for (int s = 1; s <= 100; s++) {
            assert_int_equal(f->seen[i][s].seq, s);
            assert_int_equal(f->seen[i][s].conv, s % 3 + 1);
            assert_int_equal(f->seen[i][s].origin, f->bus->node);
        }
    }
    assert_true(f->bus->node != 0);
    /* every worker dropped its reference: only ours is left */
    assert_int_equal(atomic_load(&kept->refs), 1);
    bus_msg_unref(kept);
}

static void run_marker(struct worker *w, struct event *ev)
{
    struct fixture *f = w->ctx;
    f->marker_at[w->index] = f->nseen[w->index];
    free(ev);
}

static void drop_marker(struct event *ev)
{
    free(ev);
}

/* What a thread posts after its publications (the writer's acks) comes
 * after them in every inbox, and a postbox wakes each worker once. */
static void test_postbox_orders_publications_first(void **state)
{
    struct fixture *f = *state;
    struct postbox pb;
    postbox_init(&pb, f->w, NW);
    for (int s = 1; s <= 3; s++) {
        struct bus_msg *m = msg(1, s);
        bus_publish(f->bus, m, &pb);
        bus_msg_unref(m);
    }
    for (int i = 0; i < NW; i++) {
        struct event *ev = calloc(1, sizeof *ev);
        ev->run = run_marker;
        ev->drop = drop_marker;
        postbox_add(&pb, i, ev);
    }
    pump(f);
    for (int i = 0; i < NW; i++)
        assert_int_equal(f->nseen[i], 0); /* nothing until the flush */
    postbox_flush(&pb);
    pump(f);
    for (int i = 0; i < NW; i++) {
        assert_int_equal(f->nseen[i], 3);
        assert_int_equal(f->marker_at[i], 3);
    }
    postbox_dispose(&pb);
}

struct publisher {
    struct bus *bus;
    int64_t conv;
    int n;
};

static void publish_many(void *arg)
{
    struct publisher *p = arg;
    for (int s = 1; s <= p->n; s++) {
        struct bus_msg *m = msg(p->conv, s);
        bus_publish(p->bus, m, NULL);
        bus_msg_unref(m);
    }
}

/* Two threads publish at once: every worker gets all of both, each
 * thread's in its own order. */
static void test_concurrent_publishers(void **state)
{
    struct fixture *f = *state;
    struct publisher a = {f->bus, 100, 1000}, b = {f->bus, 200, 1000};
    uv_thread_t ta, tb;
    assert_int_equal(uv_thread_create(&ta, publish_many, &a), 0);
    assert_int_equal(uv_thread_create(&tb, publish_many, &b), 0);
    uv_thread_join(&ta);
    uv_thread_join(&tb);
    pump(f);
    for (int i = 0; i < NW; i++) {
        assert_int_equal(f->nseen[i], 2000);
        int64_t next_a = 1, next_b = 1;
        for (int k = 0; k < f->nseen[i]; k++) {
            if (f->seen[i][k].conv == 100)
                assert_int_equal(f->seen[i][k].seq, next_a++);
            else
                assert_int_equal(f->seen[i][k].seq, next_b++);
        }
    }
}

static void test_watch_counts(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(bus_watching(f->bus, 5), 0);
    bus_watch(f->bus, 0, 5);
    bus_watch(f->bus, 1, 5);
    assert_int_equal(bus_watching(f->bus, 5), 2);
    /* many conversations: the table grows and shrinks without losing any */
    for (int64_t c = 1000; c < 1500; c++)
        bus_watch(f->bus, (int)(c % NW), c);
    for (int64_t c = 1000; c < 1500; c += 2)
        bus_unwatch(f->bus, (int)(c % NW), c);
    for (int64_t c = 1000; c < 1500; c++)
        assert_int_equal(bus_watching(f->bus, c), c % 2 ? 1 : 0);
    bus_unwatch(f->bus, 0, 5);
    assert_int_equal(bus_watching(f->bus, 5), 1);
    bus_unwatch(f->bus, 1, 5);
    assert_int_equal(bus_watching(f->bus, 5), 0);
    bus_unwatch(f->bus, 1, 5); /* an extra unwatch is harmless */
    assert_int_equal(bus_watching(f->bus, 5), 0);
}

/* A worker that goes away with publications unread frees them. */
static void test_unread_publications_dropped(void **state)
{
    struct fixture *f = *state;
    struct bus_msg *kept = msg(3, 1);
    bus_publish(f->bus, kept, NULL);
    assert_int_equal(atomic_load(&kept->refs), 1 + NW);
    worker_free(f->w[0]);
    f->w[0] = worker_new(&f->cfg, 0, NW, (char[64]){0}, 64); /* teardown frees it */
    worker_set_handler(f->w[0], NULL, f);
    assert_int_equal(atomic_load(&kept->refs), NW);
    bus_msg_unref(kept);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_worker_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_postbox_orders_publications_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_publishers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unread_publications_dropped, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
