/* bus: the publish side of fan-out, as an interface with one implementation
 * per transport (bus_local.c: one process; a Redis bus: many nodes).
 *
 * A publication (struct bus_msg) is immutable once published and
 * reference-counted; it carries an already encoded frame, so nobody
 * re-encodes it per node or per recipient. The bus routes it to the workers
 * that may have recipients (every worker of every node that watches its
 * conversation, for a network bus); on each, the deliver callback the core
 * gave at creation (chat_deliver) finds the local connections.
 *
 * watch/unwatch are called by a worker when its first local member of a
 * conversation arrives and when its last one leaves: a network bus
 * subscribes to the conversation's channel while any worker of the node
 * watches it.
 *
 * Ordering: publications from one thread reach each worker in the order they
 * were published, and before anything that thread posts to that worker
 * afterwards (the writer's acks come after its messages). */
#ifndef PARLEY_BUS_H
#define PARLEY_BUS_H

#include "frame.h"
#include "store.h"
#include "worker.h"

#include <stdatomic.h>
#include <stdint.h>

enum bus_kind {
    BUS_MSG,        /* a stored message: frame to every local connection of `users` (the members) */
    BUS_CONV_EVENT, /* frame to the local members of conv (typing, read receipts) */
    BUS_PRESENCE,   /* frame to the local members of any conversation in `users` (conv ids), each
                       once, but `user` itself */
    BUS_CONV_PUSH,  /* a conversation's new state: to each member of `pos`, its own view (a head of
                       its own + the shared `frame`); to each user of `users` (former members) the
                       shared `aux` frame */
    BUS_ALIVE,      /* a node's presence heartbeat: `users` are online there (no frame, to no
                       connection); other nodes keep them online until it stops */
    BUS_UPDATE,     /* a message changed (edit, delete, reaction): frame (the `update`) to every local
                       connection of `users` (the members); seq = the change's mod */
};

struct bus_msg {
    atomic_uint refs;
    enum bus_kind kind;
    int64_t conv;
    int64_t user;            /* BUS_PRESENCE: whose presence */
    int64_t seq;             /* BUS_MSG: the message's seq; BUS_UPDATE: its mod; BUS_CONV_PUSH: the
                                conversation's last_seq;
                                BUS_PRESENCE: 1 online, 0 offline */
    struct frame *frame;     /* a reference (see kinds; NULL for BUS_ALIVE) */
    struct frame *aux;       /* BUS_CONV_PUSH: the whole frame for former members */
    struct idlist *users;    /* a reference or NULL (see kinds) */
    struct store_pos *pos;   /* BUS_CONV_PUSH: owned */
    size_t npos;
    uint64_t origin;         /* the publishing node (bus->node) */
    uint64_t t0_ns;          /* BUS_MSG on its own node: when the send arrived (uv_hrtime); 0 elsewhere
                                (not carried between nodes: clocks differ) */
    uint64_t except_conn;    /* a connection of the origin node that must not get it; 0 none */
    /* BUS_MSG on its own node: a run of one conversation's messages stored
     * by one batch (seqs seq, seq+1, ...), their frames back to back in
     * `frame`: a worker hands the one buffer to every member connection (one
     * queue node and one send each) instead of every message to each. 0: one
     * message. Owned. Between nodes each goes on its own (bus_redis.c). */
    uint32_t nparts;
    struct bus_part *parts;
};

/* One message of a run: where its frame ends in the run's frame, and t0_ns
 * as for a single message. */
struct bus_part {
    uint32_t end;
    uint64_t t0_ns;
};

/* The messages m carries: its run's length, else 1. */
static inline uint32_t bus_msg_count(const struct bus_msg *m)
{
    return m->nparts ? m->nparts : 1;
}

/* A zeroed publication with one reference. */
struct bus_msg *bus_msg_new(enum bus_kind kind, int64_t conv);
static inline struct bus_msg *bus_msg_ref(struct bus_msg *m)
{
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}
void bus_msg_unref(struct bus_msg *m);

struct bus;

/* Runs on a worker's thread for each publication that reaches it. */
typedef void (*bus_deliver_fn)(struct worker *w, const struct bus_msg *m);

struct bus_ops {
    const char *name;
    /* Any thread. Takes its own references. pb: the caller's postbox, so a
     * thread publishing many messages wakes each worker once (NULL: post
     * at once). */
    void (*publish)(struct bus *b, struct bus_msg *m, struct postbox *pb);
    /* The calling worker's first local member of conv arrived / last left. */
    void (*watch)(struct bus *b, int worker, int64_t conv);
    void (*unwatch)(struct bus *b, int worker, int64_t conv);
    /* How many workers of this node watch conv (tests, metrics). */
    int (*watching)(struct bus *b, int64_t conv);
    /* 1 while the bus can reach the other nodes (NULL: always). */
    int (*ready)(struct bus *b);
    void (*free)(struct bus *b);
};

/* The common head of every implementation. */
struct bus {
    const struct bus_ops *ops;
    uint64_t node;           /* this node's id: random at start, never 0 */
};

static inline void bus_publish(struct bus *b, struct bus_msg *m, struct postbox *pb)
{
    m->origin = b->node;
    b->ops->publish(b, m, pb);
}
static inline void bus_watch(struct bus *b, int worker, int64_t conv) { b->ops->watch(b, worker, conv); }
static inline void bus_unwatch(struct bus *b, int worker, int64_t conv) { b->ops->unwatch(b, worker, conv); }
static inline int bus_watching(struct bus *b, int64_t conv) { return b->ops->watching(b, conv); }
static inline int bus_ready(struct bus *b) { return b->ops->ready ? b->ops->ready(b) : 1; }
static inline void bus_free(struct bus *b)
{
    if (b)
        b->ops->free(b);
}

/* The in-process bus: every publication goes to every worker's inbox (one
 * event per worker, the frame shared); watch/unwatch only count, as a
 * network bus's subscriptions would. workers are borrowed. */
struct bus *bus_local_new(struct worker **workers, int nworkers, bus_deliver_fn deliver);

#endif
