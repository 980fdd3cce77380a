/* hub: see hub.h. */
#include "hub.h"

#include <stdlib.h>
#include <string.h>

struct hub_conv {
    int64_t *users;       /* local users, unordered; owned */
    size_t n, cap;
};

void hub_init(struct hub *h, hub_watch_fn watch, void *ctx)
{
    memset(h, 0, sizeof *h);
    h->watch = watch;
    h->watch_ctx = ctx;
}

void hub_dispose(struct hub *h)
{
    IDMAP_FOREACH(&h->users, s) {
        struct hub_user *u = s->val;
        free(u->convs);
        free(u);
    }
    IDMAP_FOREACH(&h->convs, s) {
        struct hub_conv *c = s->val;
        free(c->users);
        free(c);
    }
    idmap_dispose(&h->users);
    idmap_dispose(&h->convs);
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* conv side of the index */
static void conv_add_user(struct hub *h, int64_t conv, int64_t user)
{
    struct hub_conv *c = idmap_get(&h->convs, conv);
    if (!c) {
        c = xcalloc(1, sizeof *c);
        idmap_put(&h->convs, conv, c);
        if (h->watch)
            h->watch(h->watch_ctx, conv, 1);
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 4;
        c->users = xrealloc(c->users, c->cap * sizeof *c->users);
    }
    c->users[c->n++] = user;
}

static void conv_remove_user(struct hub *h, int64_t conv, int64_t user)
{
    struct hub_conv *c = idmap_get(&h->convs, conv);
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        if (c->users[i] == user) {
            c->users[i] = c->users[--c->n];
            break;
        }
    if (c->n)
        return;
    idmap_del(&h->convs, conv);
    free(c->users);
    free(c);
    if (h->watch)
        h->watch(h->watch_ctx, conv, 0);
}

struct hub_user *hub_user(struct hub *h, int64_t user)
{
    return idmap_get(&h->users, user);
}

int hub_add(struct hub *h, struct conn *c)
{
    struct hub_user *u = idmap_get(&h->users, c->user_id);
    int first = !u;
    if (!u) {
        u = xcalloc(1, sizeof *u);
        idmap_put(&h->users, c->user_id, u);
    }
    c->uprev = NULL;
    c->unext = u->head;
    if (u->head)
        u->head->uprev = c;
    u->head = c;
    return first;
}

static int user_has(const struct hub_user *u, int64_t conv)
{
    return u->nconvs && bsearch(&conv, u->convs, u->nconvs, sizeof conv, cmp_id) != NULL;
}

void hub_join(struct hub *h, int64_t user, int64_t conv)
{
    struct hub_user *u = idmap_get(&h->users, user);
    if (!u || user_has(u, conv))
        return;
    if (u->nconvs == u->capconvs) {
        u->capconvs = u->capconvs ? u->capconvs * 2 : 4;
        u->convs = xrealloc(u->convs, u->capconvs * sizeof *u->convs);
    }
    size_t i = u->nconvs;
    while (i > 0 && u->convs[i - 1] > conv) { /* keep it sorted */
        u->convs[i] = u->convs[i - 1];
        i--;
    }
    u->convs[i] = conv;
    u->nconvs++;
    conv_add_user(h, conv, user);
}

void hub_leave(struct hub *h, int64_t user, int64_t conv)
{
    struct hub_user *u = idmap_get(&h->users, user);
    if (!u || !user_has(u, conv))
        return;
    int64_t *p = bsearch(&conv, u->convs, u->nconvs, sizeof conv, cmp_id);
    memmove(p, p + 1, (size_t)(u->convs + u->nconvs - (p + 1)) * sizeof *p);
    u->nconvs--;
    conv_remove_user(h, conv, user);
}

void hub_set_convs(struct hub *h, int64_t user, const int64_t *convs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hub_join(h, user, convs[i]);
}

int hub_remove(struct hub *h, struct conn *c)
{
    struct hub_user *u = idmap_get(&h->users, c->user_id);
    if (!u)
        return 0;
    if (c->uprev)
        c->uprev->unext = c->unext;
    else
        u->head = c->unext;
    if (c->unext)
        c->unext->uprev = c->uprev;
    c->uprev = c->unext = NULL;
    if (u->head)
        return 0;
    for (size_t i = 0; i < u->nconvs; i++)
        conv_remove_user(h, u->convs[i], c->user_id);
    idmap_del(&h->users, c->user_id);
    free(u->convs);
    free(u);
    return 1;
}

int hub_in_conv(struct hub *h, int64_t user, int64_t conv)
{
    struct hub_user *u = idmap_get(&h->users, user);
    return u && user_has(u, conv);
}

const int64_t *hub_conv_users(struct hub *h, int64_t conv, size_t *n)
{
    struct hub_conv *c = idmap_get(&h->convs, conv);
    *n = c ? c->n : 0;
    return c ? c->users : NULL;
}

size_t hub_send_user_frames(struct hub *h, int64_t user, struct frame *f, uint32_t nframes, uint64_t except)
{
    struct hub_user *u = idmap_get(&h->users, user);
    size_t n = 0;
    for (struct conn *c = u ? u->head : NULL; c;) {
        /* conn_send may close c (slow consumer), which unlinks it: step first */
        struct conn *next = c->unext;
        if (c->id != except && c->state == CONN_WS) {
            conn_send_frames(c, f, nframes);
            n++;
        }
        c = next;
    }
    return n;
}
