/* hub: a worker's index of its authenticated connections by user id, and
 * the local end of fan-out. Owned by the worker (the table lives in struct
 * worker); only that worker's thread calls these. */
#ifndef PARLEY_HUB_H
#define PARLEY_HUB_H

#include "worker.h"

struct hub_slot {
    int64_t user;        /* 0: empty; -1: deleted */
    struct conn *head;   /* linked through conn->unext/uprev */
};

void hub_add(struct worker *w, struct conn *c);    /* c->user_id set */
void hub_remove(struct worker *w, struct conn *c); /* no-op if not in */
struct conn *hub_first(struct worker *w, int64_t user);
/* Queues f on every local connection of every user, except the one whose id is except. */
void hub_deliver(struct worker *w, const struct idlist *users, struct frame *f, uint64_t except);
void hub_dispose(struct worker *w);

#endif
