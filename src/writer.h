/* writer: the one thread that writes to the database (the message queue).
 *
 * Workers hand it typed jobs (job.h) through writer_submit(). It collects
 * them until the oldest has waited batch_interval_ms, or none came for
 * batch_gap_us (the senders wait for acks), or batch_max are waiting, and
 * runs the whole batch in ONE transaction, in submission order: each run of
 * consecutive sends is one store_send_batch call (dense seqs, idempotent on
 * (sender, client id)); every other job runs through the exec function the
 * core gave it, inside a savepoint, so a failing job undoes only itself.
 * After COMMIT, and only then, each new message is encoded once as a `msg`
 * frame and published on the bus (a conversation's messages of the batch as
 * one run: bus.h), and then every job goes back to its
 * origin worker: in each worker's inbox the messages come before the acks.
 *
 * Ownership: the writer owns its store connection (given to writer_new) and
 * its queue; a submitted job belongs to it until posted back. */
#ifndef PARLEY_WRITER_H
#define PARLEY_WRITER_H

#include "bus.h"
#include "job.h"

#include <stdint.h>

struct writer;

/* Runs a non-send job inside the batch transaction (in a savepoint): the
 * core's rules and writes (chat_tx_run). Returns a store_rc; a negative one
 * rolls back this job's changes; STORE_ERR fails the batch. */
typedef int (*writer_exec_fn)(struct store *st, struct job *j);

struct writer_config {
    int64_t batch_max;
    int64_t batch_interval_ms;
    int64_t batch_gap_us;     /* no new job for this long: the senders wait on us, commit (0: off) */
    int64_t max_queue;        /* jobs waiting, at most (0: no bound); more come back JOB_BUSY */
    int64_t prune_interval_ms; /* housekeeping (dead refresh tokens, stale uploads) this often, and at start; 0: never */
};

#define WRITER_PRUNE_ROWS 1000                     /* rows one housekeeping transaction deletes */
#define WRITER_ROTATED_KEEP_MS (7LL * 86400 * 1000) /* rotated refresh tokens are kept this long */
#define WRITER_UPLOAD_KEEP_MS (86400LL * 1000)      /* an upload never attached to a message is kept this long */

/* One housekeeping step on st (the writer's connection, outside a batch):
 * deletes up to WRITER_PRUNE_ROWS dead refresh tokens and up to as many
 * uploads never attached for WRITER_UPLOAD_KEEP_MS (store_att_prune) in one
 * transaction. Returns the larger count, or -1 when the database failed. */
int writer_prune(struct store *st, int64_t now_ms);

/* st becomes the writer's (closed by writer_free). bus and workers are
 * borrowed and must outlive the writer. */
struct writer *writer_new(struct store *st, struct writer_config cfg, writer_exec_fn exec, struct bus *bus,
                          struct worker **workers, int nworkers);
int writer_start(struct writer *wr);
/* Hands a job to the writer. After writer_stop has begun, the job comes
 * back at once with rc STORE_ERR and unavailable = 1; when max_queue jobs are
 * already waiting, with unavailable = JOB_BUSY (answered 503 + Retry-After
 * / `unavailable`: retry shortly). Any thread. */
void writer_submit(struct writer *wr, struct job *j);
/* 1 while the database answers (the last batch committed, or the idle
 * ping every WRITER_PING_MS succeeded); any thread (/readyz). */
int writer_db_ok(struct writer *wr);
/* For /metrics: totals since the start. Histogram bucket upper bounds are
 * WRITER_BATCH_BOUNDS (jobs) and WRITER_COMMIT_BOUNDS (seconds); the last
 * bucket is +Inf. Any thread. */
#define WRITER_HIST 12
extern const double writer_batch_bounds[WRITER_HIST - 1];
extern const double writer_commit_bounds[WRITER_HIST - 1];
struct writer_stats {
    uint64_t messages_stored, batches;
    uint64_t batch_hist[WRITER_HIST], commit_hist[WRITER_HIST]; /* per bucket, not cumulative */
    double batch_sum, commit_sum_s;
    size_t queue_depth;
};
void writer_stats(struct writer *wr, struct writer_stats *out);
/* Commits everything already submitted, posts the results, joins the thread. */
void writer_stop(struct writer *wr);
void writer_free(struct writer *wr);

/* The batch itself, exposed for the unit test: runs jobs (linked by
 * ev.next) on st in one transaction, exactly as the thread does; then hands
 * to publish() (may be NULL) each new message (BUS_MSG: its frame, and the
 * members the batch saw as users), then each job's own publication
 * (job->publish: a change's BUS_UPDATE), then each job to deliver().
 * publish borrows m. Returns the number of jobs. */
typedef void (*writer_publish_fn)(void *ctx, struct bus_msg *m);
typedef void (*writer_deliver_fn)(void *ctx, struct job *j);
int writer_run_batch(struct store *st, struct job *batch, writer_exec_fn exec, writer_publish_fn publish,
                     writer_deliver_fn deliver, void *ctx);

/* The `msg` frame of a stored send (one JSON encoding for every recipient). */
struct frame *writer_msg_frame(const struct job *j);

#endif
