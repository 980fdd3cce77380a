/* reader_pool: reads answered by a pool of threads, each with its own
 * database connections (a network database: a read must never block a
 * worker's loop; or SQLite's long reads, which must not stall it either:
 * reader_inline_new hands them here). The other implementation of struct
 * reader (reader.h). Generic over the store: open says how to connect.
 *
 * The queue is bounded: a read submitted while max_queue reads wait is
 * answered at once on the submitting thread with STORE_UNAVAILABLE and busy
 * set (503 + Retry-After; PARLEY_READ_QUEUE).
 *
 * Each thread holds a primary connection and, when a replica is configured,
 * a replica connection. History, sync, conversation lists and user searches
 * go to the replica, unless the read must be complete and the replica has
 * not replayed far enough: for a sync, a history page read forward, or a
 * read with a min_seq, the conversations' last_seq on the primary (one
 * round trip of primary-key lookups, whichever node wrote them) and the
 * read's min_seq are compared with the replica's, and a replica behind
 * sends the read to the primary. Everything else (accounts, the session,
 * pushes, a message just acked) reads the primary. A replica that fails is
 * left for the primary (logged once, counted) and tried again every
 * REPLICA_RETRY_MS; reads return to it when it answers.
 *
 * Ownership: the pool owns its threads, their connections and its queue; a
 * submitted read belongs to the pool until it is posted back to its origin
 * worker (struct read begins with a struct event). */
#ifndef PARLEY_READER_POOL_H
#define PARLEY_READER_POOL_H

#include "reader.h"

#include <stdatomic.h>

/* Opens one connection: replica = 0 the primary, 1 the replica. */
typedef int (*reader_open_fn)(void *arg, int replica, struct store **out, char *err, size_t errlen);

struct reader_pool;

struct reader_pool_stats {
    atomic_llong primary_reads, replica_reads, replica_behind, replica_failures;
    atomic_llong refused; /* reads answered busy: the queue was full */
};

/* nthreads threads; have_replica: open replica connections too; max_queue:
 * reads waiting, at most (0: no bound). Connections are opened by each
 * thread on first use. */
struct reader_pool *reader_pool_new(int nthreads, reader_open_fn open, void *open_arg, int have_replica,
                                    int per_conv, size_t max_queue);
/* Joins the threads (after answering what is queued) and closes everything. */
void reader_pool_free(struct reader_pool *p);
/* A struct reader for one worker that submits to the pool (freeing it leaves
 * the pool running). */
struct reader *reader_pool_handle(struct reader_pool *p);
const struct reader_pool_stats *reader_pool_stats(struct reader_pool *p);
/* The replica's replay lag, measured every 2 s while reads come (0: none). */
int64_t reader_pool_replica_lag_ms(struct reader_pool *p);
/* 1 while the replica answered its last read (or none is configured). */
int reader_pool_replica_ok(struct reader_pool *p);

#endif
