/* writer: the one thread that writes to the database (the message queue of
 * the original design).
 *
 * Workers hand it jobs through writer_submit(). It collects them for at most
 * batch_interval_ms or until batch_max are waiting, whichever comes first, and
 * runs the whole batch in ONE transaction: sends get their conversation's
 * next seqs (dense, in submission order), other jobs run their own `run`
 * function inside a savepoint so a failing job undoes only itself. Only after
 * COMMIT does any job go back to its worker (ack, HTTP answer), and only then
 * is each new message encoded once as a WebSocket frame and fanned out to
 * every worker.
 *
 * Ownership: a submitted job belongs to the writer until it is posted back to
 * job->origin as an EV_JOB event; then it belongs to that worker, which calls
 * job->done and job_free. The writer owns its read-write store connection. */
#ifndef PARLEY_WRITER_H
#define PARLEY_WRITER_H

#include "worker.h"

#include <jansson.h>
#include <stdint.h>

struct store;
struct job;

/* Runs on the writer thread inside the batch transaction (in a savepoint).
 * Returns a store_rc; a negative result rolls back this job's changes. */
typedef int (*job_run_fn)(struct store *st, struct job *j);
/* Runs on the origin worker's thread after the commit (or failure). */
typedef void (*job_done_fn)(struct job *j);

struct job {
    struct event ev;       /* first: the trip back through the inbox */
    struct worker *origin;
    struct conn *conn;     /* may be NULL; else holds a pending reference */
    job_run_fn run;        /* NULL: a message send (the batched path) */
    job_done_fn done;
    int rc;                /* store_rc result */

    /* a send: inputs conv, user (sender), str (client id), body; outputs
     * seq, ts, dup (1: the client id was used before: seq/ts/conv are the
     * original's) */
    int64_t user;
    int64_t conv;
    int64_t target;        /* another user (member add/remove, direct peer) */
    int64_t seq, ts;
    int dup;
    char *str;             /* client id, username, title, token hash...; owned */
    char *str2;            /* owned */
    char *str3;            /* owned */
    char *body;            /* owned; may hold NUL bytes */
    size_t body_len;
    int64_t *ids;          /* owned */
    size_t n_ids;
    json_t *result;        /* a reference owned by the job */
    int flag;              /* -1: the writer was stopping (answer unavailable); else per job */
    int op;                /* which variant of a job (e.g. add/remove/role) */
};

/* conn may be NULL; a job bound to a conn keeps it allocated until the job
 * comes back (conn->pending). */
struct job *job_new(struct worker *origin, struct conn *conn, job_run_fn run, job_done_fn done);
void job_bind(struct job *j, struct conn *conn);
void job_free(struct job *j);

struct writer;

/* Opens the read-write store (applying migrations). NULL with err on failure. */
struct writer *writer_new(struct server *srv, char *err, size_t errlen);
int writer_start(struct writer *wr);
/* Hands a job to the writer. After writer_stop has begun, the job comes
 * back at once with rc STORE_ERR and flag = -1 (unavailable). */
void writer_submit(struct writer *wr, struct job *j);
/* Commits everything already submitted, posts the results, joins the thread. */
void writer_stop(struct writer *wr);
void writer_free(struct writer *wr);

/* Exposed for the unit test: runs one batch of jobs (linked by ev.next) on
 * st in one transaction, exactly as the thread does, then hands each job to
 * deliver() instead of posting it. Fan-out frames go to fanout() (may be NULL).
 * Returns the number of jobs. */
typedef void (*writer_deliver_fn)(void *ctx, struct job *j);
typedef void (*writer_fanout_fn)(void *ctx, int64_t conv, struct frame *f, struct idlist *members);
int writer_run_batch(struct store *st, struct job *batch, writer_deliver_fn deliver,
                     writer_fanout_fn fanout, void *ctx);

#endif
