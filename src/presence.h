/* presence: the process's shared table of who is online (how many
 * authenticated WebSocket connections each user has, across all workers) and
 * of each user's send-rate token bucket.
 *
 * This is the one piece of state several workers write, so it guards itself
 * with a mutex; every operation is O(1) and holds it for a few instructions.
 * In cluster mode it also keeps which other nodes hold each user online,
 * learned from their presence publications and heartbeats (chat.c).
 * It is created by main and owned by struct chat. */
#ifndef PARLEY_PRESENCE_H
#define PARLEY_PRESENCE_H

#include <stddef.h>
#include <stdint.h>

struct presence;

struct presence *presence_new(void);
void presence_free(struct presence *p);
/* A connection of user became authenticated: returns the user's new count
 * (1 means the user just came online). */
int presence_up(struct presence *p, int64_t user);
/* One of user's connections went away: returns the remaining count
 * (0 means the user just went offline). */
int presence_down(struct presence *p, int64_t user);
/* Online here or, in cluster mode, at another node whose heartbeat is
 * current. _but: not counting what except_node said. */
int presence_online(struct presence *p, int64_t user);
int presence_online_but(struct presence *p, int64_t user, uint64_t except_node);

/* ---- cluster mode: the other nodes' users ----
 * node says user is online there until until_ms (monotonic), or not. */
void presence_remote_set(struct presence *p, uint64_t node, int64_t user, int online, int64_t until_ms);
/* node's heartbeat: each listed user is online there until until_ms; entries
 * past their deadline (a node that died) are dropped. */
void presence_remote_alive(struct presence *p, uint64_t node, const int64_t *users, size_t n, int64_t until_ms);
/* How many other nodes hold user online now (the send limit is shared). */
int presence_other_nodes(struct presence *p, int64_t user);
/* The users with a connection here, for this node's heartbeat (*out malloc'd). */
size_t presence_local_users(struct presence *p, int64_t **out);
/* Token bucket: takes one token for user. 0 when allowed; -1 when limited,
 * with *retry_ms the time until a token is back. rate or burst 0: always 0. */
int presence_take_token(struct presence *p, int64_t user, int64_t now_ms, int64_t rate,
                        int64_t burst, int64_t *retry_ms);

/* Entries held (tests: idle ones are freed as take_token sweeps). */
size_t presence_size(struct presence *p);

#endif
