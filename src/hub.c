/* hub: see hub.h. Linear probing with backward-shift deletion, so there are
 * no tombstones and lookups stay short however often users come and go. */
#include "hub.h"

#include <stdlib.h>

static size_t slot_of(int64_t user, size_t cap)
{
    uint64_t x = (uint64_t)user * 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing */
    return (size_t)(x >> 17) & (cap - 1);
}

static struct hub_slot *find(struct worker *w, int64_t user)
{
    if (!w->hub_cap)
        return NULL;
    for (size_t i = slot_of(user, w->hub_cap);; i = (i + 1) & (w->hub_cap - 1)) {
        if (w->hub[i].user == user)
            return &w->hub[i];
        if (w->hub[i].user == 0)
            return NULL;
    }
}

static void grow(struct worker *w)
{
    size_t old_cap = w->hub_cap;
    struct hub_slot *old = w->hub;
    w->hub_cap = old_cap ? old_cap * 2 : 64;
    w->hub = xcalloc(w->hub_cap, sizeof *w->hub);
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].user)
            continue;
        size_t j = slot_of(old[i].user, w->hub_cap);
        while (w->hub[j].user)
            j = (j + 1) & (w->hub_cap - 1);
        w->hub[j] = old[i];
    }
    free(old);
}

void hub_add(struct worker *w, struct conn *c)
{
    if (c->in_hub)
        return;
    struct hub_slot *s = find(w, c->user_id);
    if (!s) {
        if ((w->hub_len + 1) * 4 > w->hub_cap * 3)
            grow(w);
        size_t i = slot_of(c->user_id, w->hub_cap);
        while (w->hub[i].user)
            i = (i + 1) & (w->hub_cap - 1);
        s = &w->hub[i];
        s->user = c->user_id;
        s->head = NULL;
        w->hub_len++;
    }
    c->uprev = NULL;
    c->unext = s->head;
    if (s->head)
        s->head->uprev = c;
    s->head = c;
    c->in_hub = 1;
}

/* Removes slot i and shifts later members of its probe run back, so every
 * remaining key stays reachable from its home slot. */
static void delete_slot(struct worker *w, size_t i)
{
    size_t mask = w->hub_cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!w->hub[j].user)
            break;
        size_t home = slot_of(w->hub[j].user, w->hub_cap);
        /* move j to i unless its home lies cyclically in (i, j] */
        if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
            w->hub[i] = w->hub[j];
            i = j;
        }
    }
    w->hub[i].user = 0;
    w->hub[i].head = NULL;
    w->hub_len--;
}

void hub_remove(struct worker *w, struct conn *c)
{
    if (!c->in_hub)
        return;
    c->in_hub = 0;
    struct hub_slot *s = find(w, c->user_id);
    if (!s)
        return;
    if (c->uprev)
        c->uprev->unext = c->unext;
    else
        s->head = c->unext;
    if (c->unext)
        c->unext->uprev = c->uprev;
    c->uprev = c->unext = NULL;
    if (!s->head)
        delete_slot(w, (size_t)(s - w->hub));
}

struct conn *hub_first(struct worker *w, int64_t user)
{
    struct hub_slot *s = find(w, user);
    return s ? s->head : NULL;
}

void hub_deliver(struct worker *w, const struct idlist *users, struct frame *f, uint64_t except)
{
    for (uint32_t i = 0; i < users->n; i++) {
        struct conn *c = hub_first(w, users->ids[i]);
        while (c) {
            /* conn_send may close c (slow consumer), which unlinks it: step first */
            struct conn *next = c->unext;
            if (c->id != except && c->state == CONN_WS)
                conn_send(c, f);
            c = next;
        }
    }
}

void hub_dispose(struct worker *w)
{
    free(w->hub);
    w->hub = NULL;
    w->hub_cap = w->hub_len = 0;
}
