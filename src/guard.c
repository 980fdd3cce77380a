/* guard: see guard.h. */
#include "guard.h"

#include "util.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define SWEEP_SLOTS 4 /* slots each call looks at for expired entries */
#define NEVER INT64_MAX

struct entry {
    struct entry *next;
    uint64_t a, b;
    uint8_t kind;
    double tokens;     /* bucket level */
    int64_t t_ms;      /* bucket: last refill; once: last mark; failure: last failure */
    int64_t val;       /* counter, remembered value, or failures */
    int64_t until_ms;  /* failure backoff: blocked until */
    int64_t expires;   /* nothing is left to remember from here on */
};

struct gaddr {         /* one source address's waiting hashes */
    struct gaddr *next;
    uint64_t src;
    struct guard_wait *head, *tail;
    size_t n;
};

struct guard {
    unsigned char key[crypto_shorthash_KEYBYTES];
    uv_mutex_t mu;     /* the table */
    struct entry **slots;
    size_t cap, len, cursor;
    uv_mutex_t hmu;    /* the hash queue */
    int running, max_running;
    size_t waiting, max_waiting;
    struct gaddr *ahead, *atail; /* addresses in turn order */
};

struct guard *guard_new(int max_running, size_t max_waiting)
{
    struct guard *g = xcalloc(1, sizeof *g);
    randombytes_buf(g->key, sizeof g->key);
    uv_mutex_init(&g->mu);
    uv_mutex_init(&g->hmu);
    g->cap = 1024;
    g->slots = xcalloc(g->cap, sizeof *g->slots);
    g->max_running = max_running > 0 ? max_running : 1;
    g->max_waiting = max_waiting;
    return g;
}

void guard_free(struct guard *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->cap; i++) {
        struct entry *e = g->slots[i];
        while (e) {
            struct entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(g->slots);
    /* Waiters left belong to workers that are gone; their owners freed them. */
    while (g->ahead) {
        struct gaddr *n = g->ahead->next;
        free(g->ahead);
        g->ahead = n;
    }
    uv_mutex_destroy(&g->mu);
    uv_mutex_destroy(&g->hmu);
    free(g);
}

uint64_t guard_key(const struct guard *g, const char *s, size_t len)
{
    unsigned char out[crypto_shorthash_BYTES];
    crypto_shorthash(out, (const unsigned char *)s, len, g->key);
    uint64_t k;
    memcpy(&k, out, sizeof k);
    return k;
}

/* ---- the table (g->mu held) ---- */

static size_t slot_of(const struct guard *g, enum guard_kind k, uint64_t a, uint64_t b)
{
    uint64_t h = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL) ^ ((uint64_t)k << 56);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return (size_t)h & (g->cap - 1);
}

static void grow(struct guard *g)
{
    size_t old_cap = g->cap;
    struct entry **old = g->slots;
    g->cap *= 2;
    g->slots = xcalloc(g->cap, sizeof *g->slots);
    for (size_t i = 0; i < old_cap; i++) {
        struct entry *e = old[i];
        while (e) {
            struct entry *n = e->next;
            size_t s = slot_of(g, e->kind, e->a, e->b);
            e->next = g->slots[s];
            g->slots[s] = e;
            e = n;
        }
    }
    free(old);
    g->cursor = 0;
}

static void sweep_slot(struct guard *g, size_t s, int64_t now)
{
    struct entry **pe = &g->slots[s];
    while (*pe) {
        struct entry *e = *pe;
        if (e->expires <= now) {
            *pe = e->next;
            free(e);
            g->len--;
        } else {
            pe = &e->next;
        }
    }
}

/* Frees what expired in a few slots: over many calls, every slot. */
static void sweep_some(struct guard *g, int64_t now)
{
    for (int i = 0; i < SWEEP_SLOTS; i++) {
        sweep_slot(g, g->cursor, now);
        g->cursor = (g->cursor + 1) & (g->cap - 1);
    }
}

static struct entry *find(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b)
{
    for (struct entry *e = g->slots[slot_of(g, k, a, b)]; e; e = e->next)
        if (e->kind == k && e->a == a && e->b == b)
            return e;
    return NULL;
}

static struct entry *get(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int *fresh)
{
    struct entry *e = find(g, k, a, b);
    *fresh = !e;
    if (e)
        return e;
    if (g->len + 1 > g->cap)
        grow(g);
    e = xcalloc(1, sizeof *e);
    e->kind = (uint8_t)k;
    e->a = a;
    e->b = b;
    e->expires = NEVER;
    size_t s = slot_of(g, k, a, b);
    e->next = g->slots[s];
    g->slots[s] = e;
    g->len++;
    return e;
}

static void drop(struct guard *g, struct entry *e)
{
    for (struct entry **pe = &g->slots[slot_of(g, e->kind, e->a, e->b)]; *pe; pe = &(*pe)->next)
        if (*pe == e) {
            *pe = e->next;
            free(e);
            g->len--;
            return;
        }
}

int guard_take(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, double per_s,
               double burst, int64_t *retry_ms)
{
    if (per_s <= 0 || burst <= 0)
        return 0;
    uv_mutex_lock(&g->mu);
    sweep_some(g, now_ms);
    int fresh;
    struct entry *e = get(g, k, a, b, &fresh);
    double t = fresh ? burst : e->tokens + (double)(now_ms - e->t_ms) * per_s / 1000.0;
    e->tokens = t > burst ? burst : t;
    e->t_ms = now_ms;
    int rc = 0;
    if (e->tokens >= 1.0) {
        e->tokens -= 1.0;
    } else {
        rc = -1;
        *retry_ms = (int64_t)((1.0 - e->tokens) * 1000.0 / per_s) + 1;
    }
    /* full again (nothing to remember) once the missing tokens are back */
    e->expires = now_ms + (int64_t)((burst - e->tokens) * 1000.0 / per_s) + 1;
    uv_mutex_unlock(&g->mu);
    return rc;
}

int guard_once(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, int64_t interval_ms)
{
    if (interval_ms <= 0)
        return 1;
    uv_mutex_lock(&g->mu);
    sweep_some(g, now_ms);
    int fresh, go = 0;
    struct entry *e = get(g, k, a, b, &fresh);
    if (fresh || now_ms - e->t_ms >= interval_ms) {
        e->t_ms = now_ms;
        e->expires = now_ms + interval_ms;
        go = 1;
    }
    uv_mutex_unlock(&g->mu);
    return go;
}

int64_t guard_swap(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, int64_t ttl_ms,
                   int64_t v)
{
    uv_mutex_lock(&g->mu);
    sweep_some(g, now_ms);
    int fresh;
    struct entry *e = get(g, k, a, b, &fresh);
    int64_t old = fresh ? -1 : e->val;
    e->val = v;
    e->expires = now_ms + ttl_ms;
    uv_mutex_unlock(&g->mu);
    return old;
}

int64_t guard_get(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms)
{
    uv_mutex_lock(&g->mu);
    struct entry *e = find(g, k, a, b);
    int64_t v = e && e->expires > now_ms ? e->val : -1;
    uv_mutex_unlock(&g->mu);
    return v;
}

int guard_count(struct guard *g, enum guard_kind k, uint64_t a, int delta, int64_t max)
{
    uv_mutex_lock(&g->mu);
    int fresh, rc = 0;
    struct entry *e = delta > 0 ? get(g, k, a, 0, &fresh) : find(g, k, a, 0);
    if (e) {
        int64_t v = e->val + delta;
        if (delta > 0 && max > 0 && v > max)
            rc = -1;
        else
            e->val = v > 0 ? v : 0;
        if (e->val == 0)
            drop(g, e);
    }
    uv_mutex_unlock(&g->mu);
    return rc;
}

int guard_blocked(struct guard *g, enum guard_kind k, uint64_t a, int64_t now_ms, int64_t *retry_ms)
{
    uv_mutex_lock(&g->mu);
    sweep_some(g, now_ms);
    struct entry *e = find(g, k, a, 0);
    int blocked = e && e->until_ms > now_ms;
    if (blocked)
        *retry_ms = e->until_ms - now_ms;
    uv_mutex_unlock(&g->mu);
    return blocked;
}

void guard_failed(struct guard *g, enum guard_kind k, uint64_t a, int64_t now_ms, int64_t free_fails,
                  int64_t base_ms, int64_t max_ms, int64_t forget_ms)
{
    uv_mutex_lock(&g->mu);
    sweep_some(g, now_ms);
    int fresh;
    struct entry *e = get(g, k, a, 0, &fresh);
    e->val++;
    e->t_ms = now_ms;
    if (e->val > free_fails) {
        int64_t d = base_ms;
        for (int64_t i = free_fails + 1; i < e->val && d < max_ms; i++)
            d *= 2;
        e->until_ms = now_ms + (d < max_ms ? d : max_ms);
    }
    int64_t end = now_ms + forget_ms;
    e->expires = e->until_ms > end ? e->until_ms : end;
    uv_mutex_unlock(&g->mu);
}

void guard_forgive(struct guard *g, enum guard_kind k, uint64_t a)
{
    uv_mutex_lock(&g->mu);
    struct entry *e = find(g, k, a, 0);
    if (e)
        drop(g, e);
    uv_mutex_unlock(&g->mu);
}

size_t guard_entries(struct guard *g, int64_t now_ms)
{
    uv_mutex_lock(&g->mu);
    if (now_ms >= 0)
        for (size_t s = 0; s < g->cap; s++)
            sweep_slot(g, s, now_ms);
    size_t n = g->len;
    uv_mutex_unlock(&g->mu);
    return n;
}

/* ---- the password-hash queue (g->hmu held) ---- */

static struct gaddr *addr_of(struct guard *g, uint64_t src, struct gaddr **prev_out)
{
    struct gaddr *prev = NULL;
    for (struct gaddr *a = g->ahead; a; prev = a, a = a->next)
        if (a->src == src) {
            if (prev_out)
                *prev_out = prev;
            return a;
        }
    return NULL;
}

static void unlink_addr(struct guard *g, struct gaddr *a, struct gaddr *prev)
{
    if (prev)
        prev->next = a->next;
    else
        g->ahead = a->next;
    if (g->atail == a)
        g->atail = prev;
    a->next = NULL;
}

static void append_addr(struct guard *g, struct gaddr *a)
{
    a->next = NULL;
    if (g->atail)
        g->atail->next = a;
    else
        g->ahead = a;
    g->atail = a;
}

static void push_wait(struct guard *g, struct guard_wait *gw)
{
    struct gaddr *a = addr_of(g, gw->src, NULL);
    if (!a) {
        a = xcalloc(1, sizeof *a);
        a->src = gw->src;
        append_addr(g, a);
    }
    gw->next = NULL;
    if (a->tail)
        a->tail->next = gw;
    else
        a->head = gw;
    a->tail = gw;
    a->n++;
    g->waiting++;
}

/* Takes gw out of its address's FIFO: 1 if it was there. */
static int remove_wait(struct guard *g, struct guard_wait *gw)
{
    struct gaddr *prev, *a = addr_of(g, gw->src, &prev);
    if (!a)
        return 0;
    struct guard_wait *before = NULL;
    for (struct guard_wait *x = a->head; x; before = x, x = x->next) {
        if (x != gw)
            continue;
        if (before)
            before->next = x->next;
        else
            a->head = x->next;
        if (a->tail == x)
            a->tail = before;
        a->n--;
        g->waiting--;
        if (!a->n) {
            unlink_addr(g, a, prev);
            free(a);
        }
        return 1;
    }
    return 0;
}

static void post(struct guard_wait *gw, int outcome)
{
    gw->outcome = outcome;
    worker_post(gw->w, &gw->ev, &gw->ev);
}

int guard_hash_enter(struct guard *g, struct guard_wait *gw)
{
    struct guard_wait *evicted = NULL;
    int rc;
    uv_mutex_lock(&g->hmu);
    if (g->running < g->max_running && !g->waiting) {
        g->running++;
        rc = GUARD_HASH_GO;
    } else if (g->waiting < g->max_waiting) {
        push_wait(g, gw);
        rc = GUARD_HASH_QUEUED;
    } else {
        /* Full: the address holding the most gives up its newest, if it
         * holds more than the newcomer's address would. */
        struct gaddr *heavy = NULL, *mine = addr_of(g, gw->src, NULL);
        for (struct gaddr *a = g->ahead; a; a = a->next)
            if (!heavy || a->n > heavy->n)
                heavy = a;
        size_t have = mine ? mine->n : 0;
        if (g->max_waiting && heavy && heavy->n > have + 1) {
            evicted = heavy->tail;
            remove_wait(g, evicted);
            push_wait(g, gw);
            rc = GUARD_HASH_QUEUED;
        } else {
            rc = GUARD_HASH_FULL;
        }
    }
    uv_mutex_unlock(&g->hmu);
    if (evicted)
        post(evicted, GUARD_EVICTED);
    return rc;
}

void guard_hash_leave(struct guard *g)
{
    struct guard_wait *next = NULL;
    uv_mutex_lock(&g->hmu);
    struct gaddr *a = g->ahead;
    if (a) {
        next = a->head;
        a->head = next->next;
        if (!a->head)
            a->tail = NULL;
        a->n--;
        g->waiting--;
        unlink_addr(g, a, NULL);
        if (a->n)
            append_addr(g, a); /* its next waits for everyone else's turn */
        else
            free(a);
    } else {
        g->running--;
    }
    uv_mutex_unlock(&g->hmu);
    if (next)
        post(next, GUARD_GO); /* the slot passes to it */
}

int guard_hash_cancel(struct guard *g, struct guard_wait *gw)
{
    uv_mutex_lock(&g->hmu);
    int rc = remove_wait(g, gw);
    uv_mutex_unlock(&g->hmu);
    return rc;
}

void guard_hash_stats(struct guard *g, int *running, size_t *waiting)
{
    uv_mutex_lock(&g->hmu);
    *running = g->running;
    *waiting = g->waiting;
    uv_mutex_unlock(&g->hmu);
}
