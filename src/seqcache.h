/* seqcache: the newest seq this node knows of each conversation (from its own
 * commits and from the bus), so a read that must be complete can tell whether
 * a lagging replica has it (reader_pool.c). Shared by every thread of the
 * process: a mutex-guarded map; one update per message (worker 0 records
 * what the bus delivers), one lookup per such read. Only used in cluster
 * mode with a replica. */
#ifndef PARLEY_SEQCACHE_H
#define PARLEY_SEQCACHE_H

#include "idmap.h"

#include <stdint.h>
#include <uv.h>

struct seqcache {
    uv_mutex_t mu;
    struct idmap map;   /* conv -> (void *)(intptr_t) last seq; seqs fit a pointer on 64-bit */
};

void seqcache_init(struct seqcache *c);
void seqcache_dispose(struct seqcache *c);
/* Raises conv's known seq to seq (never lowers it). */
void seqcache_note(struct seqcache *c, int64_t conv, int64_t seq);
/* The newest seq known of conv, 0 if none. */
int64_t seqcache_get(struct seqcache *c, int64_t conv);

#endif
