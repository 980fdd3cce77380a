/* chat: the chat core. It holds the rules and the state of the chat above
 * the services (writer, reader, bus, presence) and below the transports
 * (api.c for HTTP, proto.c for WebSocket ops), which parse, validate and
 * shape answers, and call in here.
 *
 * What it owns:
 * - struct chat: the process-wide services, read-only pointers after start;
 *   the running password hashes (an atomic counter, accounts.c).
 * - struct chat_worker: one per worker thread, the worker's context (given
 *   to worker_new's handler table): its hub (local connections by user and
 *   by conversation) and its reader. Only that worker's thread touches it.
 *
 * Sessions (an authenticated WebSocket: hello, presence, the conversation
 * index), sends (rate limit, then the writer), read positions and receipts,
 * typing, sync, conversation pushes (one shared body for all members plus a
 * small head of each member's own), and the delivery of every bus
 * publication on this worker (chat_deliver) live here; the in-transaction
 * rules are in chat_tx.c, accounts in accounts.c. */
#ifndef PARLEY_CHAT_H
#define PARLEY_CHAT_H

#include "bus.h"
#include "hub.h"
#include "job.h"
#include "jwt.h"
#include "reader.h"
#include "worker.h"

#include <jansson.h>
#include <stdatomic.h>

struct guard;
struct presence;
struct reader_pool;
struct writer;

struct chat {
    const struct config *cfg;
    struct writer *writer;
    struct bus *bus;
    struct presence *presence;
    struct reader_pool *pool;   /* cluster: the reads' connection pool (metrics); NULL: inline readers */
    struct worker **workers;    /* every worker of this node (borrowed) */
    int nworkers;
    int64_t check_ms;           /* > 0: every worker checks its conversations for missed messages
                                   this often (a network bus); 0: never (in-process bus) */
    struct guard *guard;        /* admission control: limits, the password-hash queue (guard.h) */
};

/* What the core counts per worker for /metrics: written by the worker's own
 * thread, read by it when a scrape asks; summed over the workers then. */
enum chat_limited { LIMITED_SEND, LIMITED_READ, LIMITED_SIGNUP, LIMITED_LOGIN, LIMITED_CONV, LIMITED_CONNS,
                    LIMITED__N };
extern const char *const chat_limited_names[LIMITED__N];
#define CHAT_S2D_BUCKETS 12 /* send-to-deliver histogram, seconds; the last is +Inf */
extern const double chat_s2d_bounds[CHAT_S2D_BUCKETS - 1];
struct chat_counters {
    uint64_t deliveries;                 /* msg frames queued to member connections */
    uint64_t limited[LIMITED__N];
    uint64_t s2d[CHAT_S2D_BUCKETS];      /* per bucket, not cumulative */
    double s2d_sum;
    uint64_t reads;                      /* reads submitted (an inline reader: all of them) */
};

struct chat_worker {
    struct chat *chat;
    struct worker *w;
    struct hub hub;
    struct reader *reader;      /* owned */
    struct idmap order;         /* conv -> struct conv_order: in-order, once-only delivery */
    uv_timer_t repair_timer;    /* a gap waits this long for its missing messages, then reads them */
    uv_timer_t check_timer;     /* the periodic check (check_ms) */
    uv_timer_t beat_timer;      /* cluster, worker 0: this node's presence heartbeat */
    int repair_armed, repair_inflight;
    size_t awaiting;            /* conversations whose messages wait for a push (chat.c await_push) */
    struct chat_counters counters;
};

/* Counts a refusal by a rate limit (any worker thread, its own counters). */
void chat_count_limited(struct chat_worker *cw, enum chat_limited what);

/* ---- /metrics ---- */
struct metrics_snapshot {
    struct worker_counters rt;           /* summed over the workers */
    struct chat_counters core;           /* summed over the workers */
    uint64_t conns_http, conns_ws_unauth, conns_ws;
    int nworkers;
};
/* Gathers every worker's counters (each on its own thread: no lock on the
 * hot path), then calls done on this worker with the sums, if c still waits
 * for its answer. c is pinned meanwhile. */
typedef void (*chat_metrics_fn)(struct conn *c, const struct metrics_snapshot *m);
void chat_metrics_gather(struct chat_worker *cw, struct conn *c, chat_metrics_fn done);

/* rd becomes the worker state's. Runs on the thread that creates the
 * workers, before they start (it initializes timers on w's loop). */
struct chat_worker *chat_worker_new(struct chat *ch, struct worker *w, struct reader *rd);
/* After the worker's thread has ended. */
void chat_worker_free(struct chat_worker *cw);
/* Any thread: every worker checks all its conversations for messages it
 * missed, now (the bus lost publications: a Redis link came back). */
void chat_check_all(struct chat *ch);

/* The bus's deliver callback: a publication reached worker w (w->ctx is its
 * struct chat_worker). */
void chat_deliver(struct worker *w, const struct bus_msg *m);

/* ---- sessions ---- */
/* Authenticates an upgraded connection: reads the user, registers the
 * connection, sends hello and who of the user's peers is online, announces
 * the user online. Closes 4001 "unknown user" if the user is gone. */
void chat_session_start(struct chat_worker *cw, struct conn *c, const struct jwt_claims *cl);
/* A new token on an open session: extends it and says hello again. */
void chat_session_renew(struct chat_worker *cw, struct conn *c, const struct jwt_claims *cl);
/* The handler table's on_session_end: leaves the hub, announces offline. */
void chat_session_end(void *ctx, struct conn *c);

/* ---- jobs and reads, as the transports start them ---- */
/* A job of kind whose answer is reply (on this worker, after the core's own
 * effects: pushes, receipts). The caller fills j->u and calls chat_submit. */
struct job *chat_job(struct chat_worker *cw, enum job_kind kind, struct conn *c, job_done_fn reply);
void chat_submit(struct chat_worker *cw, struct job *j);
/* A send: 0 and submitted, or -1 when the sender's rate limit refuses it
 * (*retry_ms until a token is back; the job is freed). */
int chat_send(struct chat_worker *cw, struct job *j, int64_t *retry_ms);
/* A change (JOB_CHANGE: edit, delete, react): like a send, it takes a token
 * of the sender's send limit; 0 and submitted, or -1 (*retry_ms, job freed).
 * After the commit every member connection gets the `update` frame (the
 * writer publishes it), then the job's reply runs. */
int chat_change(struct chat_worker *cw, struct job *j, int64_t *retry_ms);
/* A read of kind answered through done. */
struct read *chat_read(struct chat_worker *cw, enum read_kind kind, struct conn *c, read_done_fn done);
void chat_read_submit(struct chat_worker *cw, struct read *r);

/* typing: STORE_OK (fanned out to the conversation's other members) or
 * STORE_NOT_FOUND (not a member). */
int chat_typing(struct chat_worker *cw, struct conn *c, int64_t conv);

/* Whether this node can serve: the database answers, the bus reaches the
 * other nodes, the worker is not draining. Fills problems (NULL-terminated,
 * at most 3) with what is wrong. */
int chat_ready(struct chat_worker *cw, const char *problems[4]);

/* The caller's error answer for a store_rc, as WebSocket error codes. */
const char *chat_rc_code(int rc, int unavailable);

#endif
