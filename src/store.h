/* store: every SQL statement of the embedded (SQLite) mode lives here.
 *
 * One struct store is one SQLite connection, owned by exactly one thread:
 * the writer thread's read-write connection, or a worker's read-only one.
 * Nothing in here is shared between threads.
 *
 * Every statement is parameterized (prepared once per connection, cached).
 * Functions return STORE_OK or a negative enum store_rc. Functions that
 * produce protocol objects return new jansson references (`json_t **out`),
 * shaped exactly as PROTOCOL.md's objects; the caller owns and decrefs them.
 * Arrays of ids are malloc'd and owned by the caller (free()).
 *
 * Transactions are the caller's business (the writer batches many jobs into
 * one transaction, each job inside its own savepoint). */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum store_rc {
    STORE_OK = 0,
    STORE_ERR = -1,         /* SQLite error; logged once by the store */
    STORE_NOT_FOUND = -2,   /* unknown row, or caller not a member */
    STORE_CONFLICT = -3,    /* unique key taken (username, sender+client id) */
    STORE_FORBIDDEN = -4,   /* member, but role too low */
    STORE_BAD_REQUEST = -5, /* not allowed on this kind of conversation */
    STORE_REUSED = -6,      /* refresh token already rotated: family revoked */
    STORE_EXPIRED = -7,     /* refresh token past expires_at, or revoked */
};

struct store;

/* Opens (creating if needed) the database at path. readonly=0: the one
 * read-write connection: WAL, synchronous=FULL, foreign_keys=ON, and applies
 * pending migrations (schema_version table). readonly=1: a query-only reader.
 * Both set a busy timeout. Returns STORE_OK and *out, or STORE_ERR with a
 * one-line reason in errbuf. */
int store_open(const char *path, int readonly, struct store **out, char *errbuf, size_t errlen);
void store_close(struct store *st);

/* Transactions. begin is BEGIN IMMEDIATE. Savepoints are a single level named
 * "job": the writer wraps each job so one failing job does not undo others. */
int store_begin(struct store *st);
int store_commit(struct store *st);
int store_rollback(struct store *st);
int store_savepoint(struct store *st);
int store_release(struct store *st);
int store_rollback_to(struct store *st); /* rolls back to and releases "job" */

/* ---- users. user object: {"id","username","display_name","created_at"} ---- */
int store_user_create(struct store *st, const char *username, const char *display_name,
                      const char *pwhash, int64_t now, json_t **user_out); /* CONFLICT */
/* *pwhash_out is malloc'd (caller frees); pass NULL to skip. */
int store_user_by_name(struct store *st, const char *username, json_t **user_out, char **pwhash_out);
int store_user_by_id(struct store *st, int64_t id, json_t **user_out);
/* Users whose username starts with prefix (LIKE-escaped), by username, at most limit. */
int store_users_search(struct store *st, const char *prefix, int limit, json_t **users_out);

/* ---- refresh tokens. Only a hash of the token is stored (token_hash). ---- */
int store_refresh_insert(struct store *st, int64_t user_id, const char *family,
                         const char *token_hash, int64_t expires_at, int64_t now);
/* Rotation. Unknown hash: NOT_FOUND. Already replaced (reuse): revokes every
 * token of its family, returns REUSED. Revoked or expired: EXPIRED. Otherwise
 * marks it replaced by new_hash, inserts new_hash in the same family with
 * new_expires_at, sets *user_id_out, returns OK.
 * REUSED comes with a write (the family's revocation) that the caller must
 * commit, not roll back: a writer job should report REUSED in its result and
 * return STORE_OK from its run function, or the revocation is undone. */
int store_refresh_rotate(struct store *st, const char *old_hash, const char *new_hash,
                         int64_t new_expires_at, int64_t now, int64_t *user_id_out);
/* Revokes one token; OK for an unknown hash too. */
int store_refresh_revoke(struct store *st, const char *token_hash, int64_t now);

/* ---- conversations ----
 * conversation object: {"id","kind","title","members":[{"id","username",
 * "display_name","role"}],"last_seq","last_read_seq","unread","last_message",
 * "created_at"}; last_read_seq and unread are the viewer's; unread is
 * last_seq - last_read_seq; last_message is a message object or null. */
/* Direct conversation of the pair (a, b). Existing one: *created_out = 0.
 * b unknown: NOT_FOUND. a == b: BAD_REQUEST. */
int store_conv_create_direct(struct store *st, int64_t a, int64_t b, int64_t now,
                             int64_t *conv_out, int *created_out);
/* Group owned by creator (role "owner"), others "member"; duplicates and the
 * creator in members are ignored. Unknown member id: NOT_FOUND. */
int store_conv_create_group(struct store *st, int64_t creator, const char *title,
                            const int64_t *members, size_t n, int64_t now, int64_t *conv_out);
/* NOT_FOUND if the conversation does not exist or viewer is not a member. */
int store_conv_get(struct store *st, int64_t conv, int64_t viewer, json_t **conv_out);
/* All the viewer's conversations, most recent activity first. */
int store_conv_list(struct store *st, int64_t viewer, json_t **convs_out);
/* actor adds user. NOT_FOUND: no such conversation, actor not a member, or
 * user unknown. BAD_REQUEST: direct. FORBIDDEN: actor not owner/admin.
 * Already a member: OK, *added_out = 0. */
int store_member_add(struct store *st, int64_t conv, int64_t actor, int64_t user, int64_t now,
                     int *added_out);
/* actor removes user (actor == user: leave). NOT_FOUND: conversation/actor/user
 * not there. BAD_REQUEST: direct. FORBIDDEN: removing someone else without
 * being owner/admin, or an admin removing the owner. When the owner leaves, the
 * longest-standing admin (else member) becomes owner. */
int store_member_remove(struct store *st, int64_t conv, int64_t actor, int64_t user);
/* Owner sets a member's role to "admin" or "member" (extension).
 * FORBIDDEN unless actor is owner; BAD_REQUEST for another role or a direct. */
int store_member_set_role(struct store *st, int64_t conv, int64_t actor, int64_t user, const char *role);
/* Member user ids of conv (empty if none). */
int store_members(struct store *st, int64_t conv, int64_t **ids_out, size_t *n_out);
/* STORE_OK if user is a member of conv, else NOT_FOUND. */
int store_is_member(struct store *st, int64_t conv, int64_t user);
/* Distinct users who share at least one conversation with user (not user). */
int store_peers(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out);
/* All conversation ids of user. */
int store_user_convs(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out);

/* ---- messages. message object: {"conv","seq","from","id","body","ts"} ---- */
/* The message a sender already sent with this client id, if any (NOT_FOUND). */
int store_msg_by_client(struct store *st, int64_t sender, const char *client_id,
                        int64_t *conv_out, int64_t *seq_out, int64_t *ts_out);
/* Current last_seq of a conversation (NOT_FOUND if none). */
int store_conv_last_seq(struct store *st, int64_t conv, int64_t *last_seq_out);
/* Inserts one message with the seq the writer assigned. CONFLICT if
 * (sender, client_id) exists. body may hold NUL bytes (body_len counts). */
int store_msg_insert(struct store *st, int64_t conv, int64_t seq, int64_t sender,
                     const char *client_id, const char *body, size_t body_len, int64_t ts);
/* After a batch's inserts for conv: last_seq = seq, last_activity = ts. */
int store_conv_advance(struct store *st, int64_t conv, int64_t last_seq, int64_t ts);
/* Moves user's read position in conv forward to min(seq, last_seq); never
 * back. *pos_out gets the resulting position. NOT_FOUND if not a member. */
int store_read_set(struct store *st, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out);
/* History. before > 0: seq < before, newest first. else after >= 0: seq > after,
 * oldest first. Neither (before <= 0 and after < 0): newest first.
 * *has_more: more rows exist beyond the page in the same direction. */
int store_msg_page(struct store *st, int64_t conv, int64_t before, int64_t after, int limit,
                   json_t **msgs_out, int *has_more_out);
/* [{"conv","last_seq","last_read_seq","unread"}...] for every conversation of user. */
int store_sync_summary(struct store *st, int64_t user, json_t **out);

#endif
