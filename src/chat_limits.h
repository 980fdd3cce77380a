/* chat_limits: the core's admission rules, over the process-wide guard
 * (guard.h): who may open a connection, sign up, log in, create a
 * conversation, and how often a user's reads and typing fan out. The values
 * come from the configuration (PARLEY_CONNS_PER_ADDR, PARLEY_SIGNUPS_PER_MIN,
 * PARLEY_CONVS_PER_MIN, PARLEY_LOGIN_FAILS, PARLEY_READ_RATE/BURST,
 * PARLEY_TYPING_MS; 0 switches each off); what a client gets when it hits
 * one is in docs/SECURITY.md. Every function runs on a worker. */
#ifndef PARLEY_CHAT_LIMITS_H
#define PARLEY_CHAT_LIMITS_H

#include "chat.h"

#define LOGIN_BACKOFF_MS 1000            /* the first blocked failure; doubled per further one */
#define LOGIN_BACKOFF_ACCOUNT_MAX_MS 300000
#define LOGIN_BACKOFF_ADDR_MAX_MS 900000
#define LOGIN_FORGET_MS 900000           /* failures are forgotten this long after the last */
#define LOGIN_ADDR_FACTOR 4              /* an address may fail 4x what one account may */
#define READ_POS_TTL_MS 60000            /* how long a read position is remembered */

/* Sets the worker's connection gate: at most PARLEY_CONNS_PER_ADDR open
 * connections per source address (429 at accept beyond). */
void chat_limits_attach(struct chat_worker *cw);

/* 0, or -1 with *retry_ms: the source address of c is over its bucket. */
int chat_limit_signup(struct chat_worker *cw, struct conn *c, int64_t *retry_ms);
int chat_limit_conv(struct chat_worker *cw, struct conn *c, int64_t *retry_ms);

/* Login backoff. username: folded, or NULL (only the address counts). */
int chat_login_blocked(struct chat_worker *cw, struct conn *c, const char *username, int64_t *retry_ms);
void chat_login_failed(struct chat_worker *cw, struct conn *c, const char *username);
void chat_login_ok(struct chat_worker *cw, const char *username);

/* A `read` frame: 0 go, 1 drop (it cannot move the position: at or below
 * the one last stored), -1 rate limited (*retry_ms). */
int chat_read_admit(struct chat_worker *cw, int64_t user, int64_t conv, int64_t seq, int64_t *retry_ms);
/* A search takes a token of the user's read bucket (PARLEY_READ_RATE,
 * PARLEY_READ_BURST): one costs a walk of the index, so a client cannot loop
 * them. 0 go, -1 rate limited (*retry_ms). */
int chat_search_admit(struct chat_worker *cw, int64_t user, int64_t *retry_ms);
/* After the write: 1 if pos is news (announce it), 0 if it was announced. */
int chat_read_moved(struct chat_worker *cw, int64_t user, int64_t conv, int64_t pos);
/* typing: 1 if this one fans out, 0 if it falls within the last one's interval. */
int chat_typing_due(struct chat_worker *cw, int64_t user, int64_t conv);

#endif
