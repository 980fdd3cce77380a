/* presence: see presence.h. A chained hash table; an entry lives while the
 * user has connections or a bucket that is not yet full again. Every
 * take_token looks at a few slots and frees the entries there that hold
 * neither (issue 8: buckets of users long gone were never freed). */
#include "presence.h"

#include "idmap.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct entry {
    struct entry *next;
    int64_t user;
    int conns;
    double tokens;       /* bucket level */
    int64_t refill_ms;   /* when tokens was last brought up to date */
    int bucket_used;     /* tokens was ever taken from */
    int64_t full_ms;     /* the bucket is full again from here on */
};

#define SWEEP_SLOTS 4    /* slots each take_token looks at for idle entries */

/* Cluster mode: the other nodes a user is online at, each until a
 * deadline their heartbeats keep pushing back (a node that dies stops
 * them, and its users fall offline here when the deadline passes). */
struct remote {
    size_t n;
    struct { uint64_t node; int64_t until_ms; } v[];
};

struct presence {
    uv_mutex_t mu;
    struct entry **slots;
    size_t cap, len;
    size_t cursor;       /* the next slot the sweep looks at */
    struct idmap remote; /* user -> struct remote */
};

struct presence *presence_new(void)
{
    struct presence *p = xcalloc(1, sizeof *p);
    uv_mutex_init(&p->mu);
    p->cap = 1024;
    p->slots = xcalloc(p->cap, sizeof *p->slots);
    return p;
}

void presence_free(struct presence *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->cap; i++) {
        struct entry *e = p->slots[i];
        while (e) {
            struct entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(p->slots);
    IDMAP_FOREACH(&p->remote, r)
        free(r->val);
    idmap_dispose(&p->remote);
    uv_mutex_destroy(&p->mu);
    free(p);
}

static size_t slot_of(const struct presence *p, int64_t user)
{
    return (size_t)(((uint64_t)user * 0x9E3779B97F4A7C15ULL) >> 20) & (p->cap - 1);
}

static void grow(struct presence *p)
{
    size_t old_cap = p->cap;
    struct entry **old = p->slots;
    p->cap *= 2;
    p->slots = xcalloc(p->cap, sizeof *p->slots);
    for (size_t i = 0; i < old_cap; i++) {
        struct entry *e = old[i];
        while (e) {
            struct entry *n = e->next;
            size_t s = slot_of(p, e->user);
            e->next = p->slots[s];
            p->slots[s] = e;
            e = n;
        }
    }
    free(old);
    p->cursor = 0;
}

/* Frees, in a few slots, the entries of users with no connection whose
 * bucket is unused or full again: forgetting them hands out nothing. */
static void sweep_some(struct presence *p, int64_t now_ms)
{
    for (int i = 0; i < SWEEP_SLOTS; i++) {
        struct entry **pe = &p->slots[p->cursor];
        while (*pe) {
            struct entry *e = *pe;
            if (e->conns == 0 && (!e->bucket_used || e->full_ms <= now_ms)) {
                *pe = e->next;
                free(e);
                p->len--;
            } else {
                pe = &e->next;
            }
        }
        p->cursor = (p->cursor + 1) & (p->cap - 1);
    }
}

static struct entry **find(struct presence *p, int64_t user)
{
    struct entry **pe = &p->slots[slot_of(p, user)];
    while (*pe && (*pe)->user != user)
        pe = &(*pe)->next;
    return pe;
}

static struct entry *get_or_add(struct presence *p, int64_t user)
{
    struct entry **pe = find(p, user);
    if (*pe)
        return *pe;
    if (p->len + 1 > p->cap) {
        grow(p);
        pe = find(p, user);
    }
    struct entry *e = xcalloc(1, sizeof *e);
    e->user = user;
    *pe = e;
    p->len++;
    return e;
}

static void drop_if_idle(struct presence *p, struct entry **pe, int64_t now_ms, int64_t rate, int64_t burst)
{
    struct entry *e = *pe;
    if (e->conns > 0)
        return;
    if (e->bucket_used && rate > 0 && e->tokens + (double)(now_ms - e->refill_ms) * (double)rate / 1000.0 < (double)burst)
        return; /* forgetting it now would hand out a fresh burst */
    *pe = e->next;
    free(e);
    p->len--;
}

int presence_up(struct presence *p, int64_t user)
{
    uv_mutex_lock(&p->mu);
    int n = ++get_or_add(p, user)->conns;
    uv_mutex_unlock(&p->mu);
    return n;
}

int presence_down(struct presence *p, int64_t user)
{
    uv_mutex_lock(&p->mu);
    struct entry **pe = find(p, user);
    int n = 0;
    if (*pe) {
        n = (*pe)->conns > 0 ? --(*pe)->conns : 0;
        /* keep a used bucket around; it is dropped when next found idle and full */
        if (n == 0 && !(*pe)->bucket_used)
            drop_if_idle(p, pe, 0, 0, 0);
    }
    uv_mutex_unlock(&p->mu);
    return n;
}

/* Under mu: whether another node (but except) holds user online now. */
static int remote_online(struct presence *p, int64_t user, uint64_t except, int64_t now_ms)
{
    struct remote *r = idmap_get(&p->remote, user);
    for (size_t i = 0; r && i < r->n; i++)
        if (r->v[i].node != except && r->v[i].until_ms > now_ms)
            return 1;
    return 0;
}

int presence_online(struct presence *p, int64_t user)
{
    return presence_online_but(p, user, 0);
}

int presence_online_but(struct presence *p, int64_t user, uint64_t except_node)
{
    int64_t now = util_mono_ms();
    uv_mutex_lock(&p->mu);
    struct entry *e = *find(p, user);
    int online = (e && e->conns > 0) || remote_online(p, user, except_node, now);
    uv_mutex_unlock(&p->mu);
    return online;
}

int presence_other_nodes(struct presence *p, int64_t user)
{
    int64_t now = util_mono_ms();
    int n = 0;
    uv_mutex_lock(&p->mu);
    struct remote *r = p->remote.len ? idmap_get(&p->remote, user) : NULL;
    for (size_t i = 0; r && i < r->n; i++)
        n += r->v[i].until_ms > now;
    uv_mutex_unlock(&p->mu);
    return n;
}

/* Under mu: sets (until_ms > 0) or drops node's entry for user. */
static void remote_put(struct presence *p, uint64_t node, int64_t user, int64_t until_ms)
{
    struct remote *r = idmap_get(&p->remote, user);
    size_t i = 0;
    while (r && i < r->n && r->v[i].node != node)
        i++;
    if (until_ms <= 0) {
        if (!r || i == r->n)
            return;
        r->v[i] = r->v[--r->n];
        if (!r->n) {
            idmap_del(&p->remote, user);
            free(r);
        }
        return;
    }
    if (r && i < r->n) {
        r->v[i].until_ms = until_ms;
        return;
    }
    size_t n = r ? r->n : 0;
    struct remote *g = xrealloc(r, sizeof *g + (n + 1) * sizeof g->v[0]);
    g->n = n + 1;
    g->v[n].node = node;
    g->v[n].until_ms = until_ms;
    if (g != r)
        idmap_put(&p->remote, user, g);
}

void presence_remote_set(struct presence *p, uint64_t node, int64_t user, int online, int64_t until_ms)
{
    uv_mutex_lock(&p->mu);
    remote_put(p, node, user, online ? until_ms : 0);
    uv_mutex_unlock(&p->mu);
}

void presence_remote_alive(struct presence *p, uint64_t node, const int64_t *users, size_t n, int64_t until_ms)
{
    int64_t now = util_mono_ms();
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < n; i++)
        remote_put(p, node, users[i], until_ms);
    /* entries past their deadline (dead nodes, missed offlines) go now */
    int64_t *gone = NULL;
    size_t ngone = 0;
    IDMAP_FOREACH(&p->remote, slot) {
        struct remote *r = slot->val;
        for (size_t k = 0; k < r->n;)
            if (r->v[k].until_ms <= now)
                r->v[k] = r->v[--r->n];
            else
                k++;
        if (!r->n) {
            gone = xrealloc(gone, (ngone + 1) * sizeof *gone);
            gone[ngone++] = slot->key;
        }
    }
    for (size_t i = 0; i < ngone; i++)
        free(idmap_del(&p->remote, gone[i]));
    free(gone);
    uv_mutex_unlock(&p->mu);
}

size_t presence_local_users(struct presence *p, int64_t **out)
{
    size_t n = 0, cap = 64;
    int64_t *v = xmalloc(cap * sizeof *v);
    uv_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->cap; i++)
        for (struct entry *e = p->slots[i]; e; e = e->next)
            if (e->conns > 0) {
                if (n == cap)
                    v = xrealloc(v, (cap *= 2) * sizeof *v);
                v[n++] = e->user;
            }
    uv_mutex_unlock(&p->mu);
    *out = v;
    return n;
}

int presence_take_token(struct presence *p, int64_t user, int64_t now_ms, int64_t rate,
                        int64_t burst, int64_t *retry_ms)
{
    if (rate <= 0 || burst <= 0)
        return 0;
    uv_mutex_lock(&p->mu);
    sweep_some(p, now_ms);
    struct entry *e = get_or_add(p, user);
    if (!e->bucket_used) {
        e->bucket_used = 1;
        e->tokens = (double)burst;
        e->refill_ms = now_ms;
    }
    double t = e->tokens + (double)(now_ms - e->refill_ms) * (double)rate / 1000.0;
    e->tokens = t > (double)burst ? (double)burst : t;
    e->refill_ms = now_ms;
    int rc = 0;
    if (e->tokens >= 1.0) {
        e->tokens -= 1.0;
    } else {
        rc = -1;
        *retry_ms = (int64_t)((1.0 - e->tokens) * 1000.0 / (double)rate) + 1;
    }
    e->full_ms = now_ms + (int64_t)(((double)burst - e->tokens) * 1000.0 / (double)rate) + 1;
    uv_mutex_unlock(&p->mu);
    return rc;
}

size_t presence_size(struct presence *p)
{
    uv_mutex_lock(&p->mu);
    size_t n = p->len;
    uv_mutex_unlock(&p->mu);
    return n;
}
