/* guard: admission control for the whole process, the state behind every
 * limit that is not per connection (docs/SECURITY.md). One struct guard per
 * process, made by main and shared by every worker; it guards itself (one
 * mutex for its table, one for the password-hash queue; every operation is
 * short).
 *
 * 1. A table of small entries keyed by (kind, a, b): token buckets (reads per
 *    user, signups and conversations per source address), once-per-interval
 *    marks (typing per user and conversation), a remembered value (the read
 *    position last announced), counters with a ceiling (connections per
 *    address), and failure backoff (logins per account and per address).
 *    An entry is freed once it holds nothing (a full bucket, an expired mark
 *    or block, a zero count): each call looks at a few slots and frees what
 *    has expired there, so idle entries never pile up.
 *
 * 2. The password-hash queue: at most max_running hashes run at once; the
 *    others wait, each source address in its own FIFO and the addresses
 *    served in turn, so a flood from one address waits behind itself while
 *    anyone else is served within a turn. The queue is bounded: when it is
 *    full, the address with the most waiting gives up its newest to a
 *    newcomer from an address with fewer. A waiter that waits too long is
 *    cancelled by its owner (guard_hash_cancel). */
#ifndef PARLEY_GUARD_H
#define PARLEY_GUARD_H

#include "worker.h"

#include <stddef.h>
#include <stdint.h>

enum guard_kind {
    GUARD_READ = 1,      /* a: user */
    GUARD_READ_POS,      /* a: user, b: conversation */
    GUARD_TYPING,        /* a: user, b: conversation */
    GUARD_SIGNUP,        /* a: source address */
    GUARD_CONV,          /* a: source address */
    GUARD_CONNS,         /* a: source address */
    GUARD_FAIL_ACCOUNT,  /* a: guard_key(username) */
    GUARD_FAIL_ADDR,     /* a: source address */
};

struct guard;

/* max_running: concurrent password hashes; max_waiting: hashes that may
 * wait for a slot (0: none, refuse at once). */
struct guard *guard_new(int max_running, size_t max_waiting);
void guard_free(struct guard *g);

/* A 64-bit key for a string (a username), keyed with a secret drawn at
 * start, so nobody can pick names that collide. */
uint64_t guard_key(const struct guard *g, const char *s, size_t len);

/* ---- the table ---- */

/* Token bucket of burst tokens refilled at per_s per second: 0 and one token
 * taken; -1 when empty, *retry_ms until the next token. per_s or burst <= 0:
 * always 0. */
int guard_take(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, double per_s,
               double burst, int64_t *retry_ms);
/* 1 (and marked) if (k, a, b) was not marked within the last interval_ms,
 * else 0. interval_ms <= 0: always 1. */
int guard_once(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, int64_t interval_ms);
/* Remembers v for (k, a, b) for ttl_ms; returns the value it replaces, or -1. */
int64_t guard_swap(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms, int64_t ttl_ms,
                   int64_t v);
/* The value remembered for (k, a, b), or -1. */
int64_t guard_get(struct guard *g, enum guard_kind k, uint64_t a, uint64_t b, int64_t now_ms);
/* Counter (k, a): delta > 0 adds when the result stays <= max (max <= 0: no
 * ceiling) and returns 0, else -1 and nothing changes; delta < 0 subtracts
 * (never below 0) and returns 0. */
int guard_count(struct guard *g, enum guard_kind k, uint64_t a, int delta, int64_t max);

/* Failure backoff for (k, a): 1 and *retry_ms while blocked, else 0. */
int guard_blocked(struct guard *g, enum guard_kind k, uint64_t a, int64_t now_ms, int64_t *retry_ms);
/* One more failure: past free_fails failures, each blocks for base_ms,
 * doubled per further failure, at most max_ms. Forgotten forget_ms after the
 * last failure. */
void guard_failed(struct guard *g, enum guard_kind k, uint64_t a, int64_t now_ms, int64_t free_fails,
                  int64_t base_ms, int64_t max_ms, int64_t forget_ms);
/* Forgets (k, a)'s failures (a successful login). */
void guard_forgive(struct guard *g, enum guard_kind k, uint64_t a);

/* Entries in the table (tests). With now_ms >= 0, first frees every expired one. */
size_t guard_entries(struct guard *g, int64_t now_ms);

/* ---- the password-hash queue ---- */

enum guard_outcome { GUARD_GO = 0, GUARD_EVICTED = 1 };

/* One hash request. The owner fills ev.run/ev.drop, w (the worker its
 * answer runs on) and src. When it is its turn (or it is evicted), outcome
 * is set and ev is posted to w. */
struct guard_wait {
    struct event ev;        /* first */
    struct guard_wait *next;
    struct worker *w;
    uint64_t src;
    int outcome;            /* enum guard_outcome, when posted */
};

enum { GUARD_HASH_QUEUED = 1, GUARD_HASH_GO = 0, GUARD_HASH_FULL = -1 };
/* GUARD_HASH_GO: a slot is taken, start now (and call guard_hash_leave when
 * done). GUARD_HASH_QUEUED: gw waits; its event comes with outcome GO (a
 * slot was handed over: call guard_hash_leave when done) or EVICTED.
 * GUARD_HASH_FULL: refused. Any thread. */
int guard_hash_enter(struct guard *g, struct guard_wait *gw);
/* A hash ended: its slot goes to the next waiter in turn, or is freed. */
void guard_hash_leave(struct guard *g);
/* Takes gw out of the queue: 1 if it was still waiting (no event will
 * come), 0 if its event was already posted. */
int guard_hash_cancel(struct guard *g, struct guard_wait *gw);
/* Hashes running and waiting (tests). */
void guard_hash_stats(struct guard *g, int *running, size_t *waiting);

#endif
