/* bus_local: the in-process implementation of bus.h. A publication becomes
 * one event per worker (sharing one reference-counted bus_msg), posted to
 * its inbox; the worker runs the deliver callback. No subscriptions are
 * needed inside one process, so watch/unwatch only keep the counts a
 * network bus would subscribe by. */
#include "bus.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct bus_local {
    struct bus base;            /* first */
    struct worker **workers;    /* borrowed */
    int nworkers;
    bus_deliver_fn deliver;
    uv_mutex_t mu;              /* guards the watch table */
    struct watch { int64_t conv; int count; } *watch; /* open addressing, conv 0 = empty */
    size_t cap, len;
};

/* One publication on its way to one worker. */
struct bus_event {
    struct event ev;            /* first */
    struct bus_local *bus;
    struct bus_msg *msg;        /* one reference */
};

struct bus_msg *bus_msg_new(enum bus_kind kind, int64_t conv)
{
    struct bus_msg *m = xcalloc(1, sizeof *m);
    atomic_init(&m->refs, 1);
    m->kind = kind;
    m->conv = conv;
    return m;
}

void bus_msg_unref(struct bus_msg *m)
{
    if (!m || atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    frame_unref(m->frame);
    frame_unref(m->aux);
    idlist_unref(m->users);
    free(m->pos);
    free(m);
}

static void event_run(struct worker *w, struct event *ev)
{
    struct bus_event *be = (struct bus_event *)ev;
    be->bus->deliver(w, be->msg);
    bus_msg_unref(be->msg);
    free(be);
}

static void event_drop(struct event *ev)
{
    struct bus_event *be = (struct bus_event *)ev;
    bus_msg_unref(be->msg);
    free(be);
}

static void local_publish(struct bus *b, struct bus_msg *m, struct postbox *pb)
{
    struct bus_local *bl = (struct bus_local *)b;
    for (int i = 0; i < bl->nworkers; i++) {
        struct bus_event *be = xcalloc(1, sizeof *be);
        be->ev.run = event_run;
        be->ev.drop = event_drop;
        be->bus = bl;
        be->msg = bus_msg_ref(m);
        if (pb)
            postbox_add(pb, i, &be->ev);
        else
            worker_post(bl->workers[i], &be->ev, &be->ev);
    }
}

/* ---- the watch counts (conv -> workers watching) ---- */

static size_t slot_of(int64_t conv, size_t cap)
{
    return (size_t)(((uint64_t)conv * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1);
}

static struct watch *find(struct bus_local *bl, int64_t conv, int insert)
{
    if (insert && (bl->len + 1) * 4 > bl->cap * 3) {
        size_t old_cap = bl->cap;
        struct watch *old = bl->watch;
        bl->cap = old_cap ? old_cap * 2 : 64;
        bl->watch = xcalloc(bl->cap, sizeof *bl->watch);
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].conv)
                continue;
            size_t j = slot_of(old[i].conv, bl->cap);
            while (bl->watch[j].conv)
                j = (j + 1) & (bl->cap - 1);
            bl->watch[j] = old[i];
        }
        free(old);
    }
    if (!bl->cap)
        return NULL;
    for (size_t i = slot_of(conv, bl->cap);; i = (i + 1) & (bl->cap - 1)) {
        if (bl->watch[i].conv == conv)
            return &bl->watch[i];
        if (!bl->watch[i].conv) {
            if (!insert)
                return NULL;
            bl->watch[i].conv = conv;
            bl->watch[i].count = 0;
            bl->len++;
            return &bl->watch[i];
        }
    }
}

/* Backward-shift deletion, so there are no tombstones. */
static void erase(struct bus_local *bl, struct watch *w)
{
    size_t mask = bl->cap - 1, i = (size_t)(w - bl->watch), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!bl->watch[j].conv)
            break;
        size_t home = slot_of(bl->watch[j].conv, bl->cap);
        if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
            bl->watch[i] = bl->watch[j];
            i = j;
        }
    }
    bl->watch[i].conv = 0;
    bl->len--;
}

static void local_watch(struct bus *b, int worker, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    (void)worker;
    uv_mutex_lock(&bl->mu);
    find(bl, conv, 1)->count++;
    uv_mutex_unlock(&bl->mu);
}

static void local_unwatch(struct bus *b, int worker, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    (void)worker;
    uv_mutex_lock(&bl->mu);
    struct watch *w = find(bl, conv, 0);
    if (w && --w->count <= 0)
        erase(bl, w);
    uv_mutex_unlock(&bl->mu);
}

static int local_watching(struct bus *b, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    uv_mutex_lock(&bl->mu);
    struct watch *w = find(bl, conv, 0);
    int n = w ? w->count : 0;
    uv_mutex_unlock(&bl->mu);
    return n;
}

static void local_free(struct bus *b)
{
    struct bus_local *bl = (struct bus_local *)b;
    uv_mutex_destroy(&bl->mu);
    free(bl->watch);
    free(bl);
}

static const struct bus_ops local_ops = {
    .name = "local",
    .publish = local_publish,
    .watch = local_watch,
    .unwatch = local_unwatch,
    .watching = local_watching,
    .free = local_free,
};

struct bus *bus_local_new(struct worker **workers, int nworkers, bus_deliver_fn deliver)
{
    struct bus_local *bl = xcalloc(1, sizeof *bl);
    bl->base.ops = &local_ops;
    do
        randombytes_buf(&bl->base.node, sizeof bl->base.node);
    while (!bl->base.node);
    bl->workers = workers;
    bl->nworkers = nworkers;
    bl->deliver = deliver;
    uv_mutex_init(&bl->mu);
    return &bl->base;
}
