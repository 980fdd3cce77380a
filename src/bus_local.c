/* bus_local: the in-process implementation of bus.h. A publication becomes
 * one event per worker (sharing one reference-counted bus_msg), posted to
 * its inbox; the worker runs the deliver callback. No subscriptions are
 * needed inside one process, so watch/unwatch only keep the counts a
 * network bus would subscribe by. */
#include "bus.h"

#include "idmap.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

struct bus_local {
    struct bus base;            /* first */
    struct worker **workers;    /* borrowed */
    int nworkers;
    bus_deliver_fn deliver;
    uv_mutex_t mu;              /* guards watch */
    struct idmap watch;         /* conv -> (intptr_t) workers watching */
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
    free(m->parts);
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

static void local_watch(struct bus *b, int worker, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    (void)worker;
    uv_mutex_lock(&bl->mu);
    idmap_put(&bl->watch, conv, (void *)((intptr_t)idmap_get(&bl->watch, conv) + 1));
    uv_mutex_unlock(&bl->mu);
}

static void local_unwatch(struct bus *b, int worker, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    (void)worker;
    uv_mutex_lock(&bl->mu);
    intptr_t n = (intptr_t)idmap_get(&bl->watch, conv);
    if (n > 1)
        idmap_put(&bl->watch, conv, (void *)(n - 1));
    else if (n == 1)
        idmap_del(&bl->watch, conv);
    uv_mutex_unlock(&bl->mu);
}

static int local_watching(struct bus *b, int64_t conv)
{
    struct bus_local *bl = (struct bus_local *)b;
    uv_mutex_lock(&bl->mu);
    int n = (int)(intptr_t)idmap_get(&bl->watch, conv);
    uv_mutex_unlock(&bl->mu);
    return n;
}

static void local_free(struct bus *b)
{
    struct bus_local *bl = (struct bus_local *)b;
    uv_mutex_destroy(&bl->mu);
    idmap_dispose(&bl->watch);
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
