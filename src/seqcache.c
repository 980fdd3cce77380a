/* seqcache: see seqcache.h. */
#include "seqcache.h"

#include <string.h>

_Static_assert(sizeof(intptr_t) >= sizeof(int64_t), "seqs are kept in pointer-sized slots");

void seqcache_init(struct seqcache *c)
{
    memset(c, 0, sizeof *c);
    uv_mutex_init(&c->mu);
}

void seqcache_dispose(struct seqcache *c)
{
    idmap_dispose(&c->map);
    uv_mutex_destroy(&c->mu);
}

void seqcache_note(struct seqcache *c, int64_t conv, int64_t seq)
{
    uv_mutex_lock(&c->mu);
    if ((intptr_t)idmap_get(&c->map, conv) < seq)
        idmap_put(&c->map, conv, (void *)(intptr_t)seq);
    uv_mutex_unlock(&c->mu);
}

int64_t seqcache_get(struct seqcache *c, int64_t conv)
{
    uv_mutex_lock(&c->mu);
    int64_t seq = (intptr_t)idmap_get(&c->map, conv);
    uv_mutex_unlock(&c->mu);
    return seq;
}
