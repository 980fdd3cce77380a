/* idmap: see idmap.h. */
#include "idmap.h"

#include "util.h"

#include <stdlib.h>

static size_t home(int64_t key, size_t cap)
{
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1); /* Fibonacci hashing */
}

static struct idmap_slot *find(const struct idmap *m, int64_t key)
{
    if (!m->cap)
        return NULL;
    for (size_t i = home(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->v[i].key == key)
            return &m->v[i];
        if (!m->v[i].key)
            return NULL;
    }
}

void *idmap_get(const struct idmap *m, int64_t key)
{
    struct idmap_slot *s = find(m, key);
    return s ? s->val : NULL;
}

static void grow(struct idmap *m)
{
    size_t old_cap = m->cap;
    struct idmap_slot *old = m->v;
    m->cap = old_cap ? old_cap * 2 : 16;
    m->v = xcalloc(m->cap, sizeof *m->v);
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].key)
            continue;
        size_t j = home(old[i].key, m->cap);
        while (m->v[j].key)
            j = (j + 1) & (m->cap - 1);
        m->v[j] = old[i];
    }
    free(old);
}

void idmap_put(struct idmap *m, int64_t key, void *val)
{
    struct idmap_slot *s = find(m, key);
    if (s) {
        s->val = val;
        return;
    }
    if ((m->len + 1) * 4 > m->cap * 3) /* at most 75% full */
        grow(m);
    size_t i = home(key, m->cap);
    while (m->v[i].key)
        i = (i + 1) & (m->cap - 1);
    m->v[i].key = key;
    m->v[i].val = val;
    m->len++;
}

void *idmap_del(struct idmap *m, int64_t key)
{
    struct idmap_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *val = s->val;
    size_t mask = m->cap - 1, i = (size_t)(s - m->v), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->v[j].key)
            break;
        size_t h = home(m->v[j].key, m->cap);
        /* move j to i unless its home lies cyclically in (i, j] */
        if ((i <= j) ? (h <= i || h > j) : (h <= i && h > j)) {
            m->v[i] = m->v[j];
            i = j;
        }
    }
    m->v[i].key = 0;
    m->v[i].val = NULL;
    m->len--;
    return val;
}

void idmap_dispose(struct idmap *m)
{
    free(m->v);
    m->v = NULL;
    m->cap = m->len = 0;
}
