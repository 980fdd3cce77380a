/* bus_redis: the Redis implementation of bus.h (cluster mode), on hiredis's
 * async API and its libuv adapter. docs/ARCHITECTURE.md, "Cluster: the Redis
 * bus", has the channels, the envelope, the sharding and the failure rules.
 *
 * A publication is delivered to this node's workers at once, exactly as
 * bus_local does (one event per worker, the bus_msg shared, into the
 * caller's postbox when given), and sent once to Redis as a binary envelope
 * carrying the already encoded frame. Envelopes from other nodes become the
 * same per-worker events, run by the deliver callback; the node's own come
 * back from Redis and are skipped by their origin (bus->node).
 *
 * Sharding: PARLEY_REDIS_URL may name several Redis servers (comma-separated);
 * a conversation lives on shard bus_redis_shard_of(conv, n) of them, so every
 * node must be given the same list in the same order.
 *
 * Threading and ownership: the bus owns ONE thread with its own libuv loop,
 * which owns every hiredis context (per shard: one connection that publishes,
 * one subscribed connection), the per-shard sets of subscribed
 * conversations and the reconnection timers. publish, watch, unwatch and
 * watching are called from any thread: they take a mutex only to append to
 * the bus thread's queue (and to count watches), wake it with
 * uv_async_send, and never wait for the network. The link hook runs on the
 * bus thread. The workers are borrowed: free the bus (bus_free) before the
 * workers (after worker_join is fine), since its thread posts to their
 * inboxes until bus_free returns.
 *
 * Failure: publish never fails its caller. What cannot be sent while a shard
 * is down (or past the per-shard backlog of unacknowledged bytes) is dropped
 * and counted; each connection reconnects with exponential backoff and
 * jitter (50 ms doubling to 2 s), resubscribes every watched channel, and
 * then the link hook says the shard is up again, so the core repairs from the
 * database what its connections missed. */
#ifndef PARLEY_BUS_REDIS_H
#define PARLEY_BUS_REDIS_H

#include "bus.h"
#include "util.h"

#include <stddef.h>
#include <stdint.h>

struct bus_redis_hooks {
    /* A connection of shard went down or failed to connect (up = 0; once per
     * outage), or the shard is whole again after that: both connections up
     * and every watched channel of the shard subscribed again (up = 1). Every
     * up follows a down; a shard that connects at the first attempt calls
     * nothing. Runs on the bus thread; keep it short. May be NULL. */
    void (*link)(void *ctx, int shard, int up);
    void *ctx;
};

/* urls: PARLEY_REDIS_URL, redis://[[user]:password@]host[:port][/db], several
 * separated by commas (at most BUS_REDIS_MAX_SHARDS). workers are borrowed;
 * hooks is copied (NULL: none). Connects in the background: the bus is usable
 * at once (bus_redis_ready says when every shard is connected). NULL with a
 * message in err on a bad URL or if the thread cannot start. */
enum { BUS_REDIS_MAX_SHARDS = 64 };
struct bus *bus_redis_new(const char *urls, struct worker **workers, int nworkers, bus_deliver_fn deliver,
                          const struct bus_redis_hooks *hooks, char *err, size_t errlen);

/* 1 while every shard is up (both connections, every watched channel
 * subscribed); any thread (/readyz). 0 for a bus that is not a Redis bus. */
int bus_redis_ready(struct bus *b);

/* Counters since the start, read with atomics from any thread. */
struct bus_redis_stats {
    uint64_t published;   /* envelopes Redis acknowledged (PUBLISH answered) */
    uint64_t dropped;     /* envelopes not sent: shard down, backlog full, or lost with a connection */
    uint64_t received;    /* envelopes of other nodes delivered to the workers */
    uint64_t malformed;   /* envelopes from Redis dropped as malformed */
    uint64_t reconnects;  /* connections established again after a loss */
    uint64_t channels;    /* channels subscribed now (confirmed by Redis), all shards */
    int shards, shards_up;
};
/* Zeroes *out for a bus that is not a Redis bus. */
void bus_redis_stats(struct bus *b, struct bus_redis_stats *out);

/* The shard of a conversation among n: a fixed 64-bit mix (splitmix64's
 * finalizer) of the id, modulo n; the same on every node and every build. */
int bus_redis_shard_of(int64_t conv, int n);

/* The envelope (version BUS_REDIS_ENVELOPE_VERSION; layout in
 * ARCHITECTURE.md): exposed for the tests and fuzzing. encode appends m's
 * envelope to out. decode builds a new bus_msg (one reference) from
 * untrusted bytes, or returns NULL with a reason in *why: it never reads past
 * len and checks every count and what chat_deliver relies on per kind. */
enum { BUS_REDIS_ENVELOPE_VERSION = 1 };
size_t bus_redis_envelope_size(const struct bus_msg *m);
void bus_redis_encode(const struct bus_msg *m, struct buf *out);
struct bus_msg *bus_redis_decode(const void *data, size_t len, const char **why);

#endif
