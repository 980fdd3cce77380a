/* chat_sync: the core's `sync`, produced in parts as the socket drains.
 *
 * A sync asks for the messages after a position in each of many
 * conversations; answered at once, one frame could queue gigabytes and hold
 * the worker's loop for seconds. Here an answer is a run of small steps:
 * each step reads at most SYNC_STEP_CONVS conversations and sends what it
 * read, and the next step starts only once the connection's out-queue is
 * back under the low-water mark (conn_on_drain) and the loop has served
 * everyone else once (the step is posted to the worker's own inbox). An
 * answer holds at most SYNC_PER_CONV messages of a conversation and
 * SYNC_TOTAL in all; then comes `synced` with every conversation's state,
 * from which the client sees what is left and syncs again.
 *
 * While an answer is being produced the connection's further frames wait
 * (conn_hold): one sync at a time per connection, frames answered in order.
 *
 * Ownership: the run pins its connection (conn->pending) until it ends; it
 * lives on the connection's worker only. */
#ifndef PARLEY_CHAT_SYNC_H
#define PARLEY_CHAT_SYNC_H

#include "chat.h"

#define SYNC_PER_CONV 200  /* messages of one conversation in one answer (the reader's per_conv) */
#define SYNC_TOTAL 1000    /* messages in one answer */
#define SYNC_STEP_CONVS 64 /* conversations one step reads */
#define SYNC_CHANGES_STEP 50 /* changed messages one step reads (of one conversation) */

/* Starts the answer to a sync on an authenticated connection: conv[i] (sorted,
 * distinct, canonical ids) after seq after[i], and the changes of mconv[i]
 * after mod mafter[i] (version 2's "mods"). Takes the four arrays
 * (malloc'd). The frames: `msg`s, then `update`s (each conversation's in mod
 * order, at most SYNC_PER_CONV of one), then `synced` (or an `error`
 * `internal` `sync failed` when the database fails). */
void chat_sync(struct chat_worker *cw, struct conn *c, int64_t *conv, int64_t *after, size_t n, int64_t *mconv,
               int64_t *mafter, size_t mn);

#endif
