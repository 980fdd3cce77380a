/* store: the storage interface of the chat, and nothing of any database.
 *
 * A backend (store_sqlite.c today; PostgreSQL next) fills a struct store_ops
 * with its functions and embeds struct store as the first member of its own
 * connection struct. Everything above calls the store_* wrappers below, which
 * only dispatch through the table, so the chat core runs unchanged over any
 * backend.
 *
 * One struct store is one database connection, owned by exactly one thread:
 * the writer's read-write connection, or a reader's read-only one.
 *
 * The operations are the chat's, not SQL's. They hold no permission rules:
 * who may add, remove or promote is decided by the core (chat_tx.c) from the
 * facts these return (kind, role). Functions return STORE_OK or a negative
 * enum store_rc. Rows come back as new jansson references shaped by rows.c
 * (the objects of PROTOCOL.md); the caller owns and decrefs them. Arrays of
 * ids are malloc'd and owned by the caller (free()).
 *
 * Transactions are the writer's business: it batches many jobs into one
 * transaction, each non-send job inside a savepoint, and the sends of a run
 * of consecutive sends in one store_send_batch call. A backend must keep the
 * transaction usable after any answer other than STORE_ERR (PostgreSQL aborts
 * a transaction on a failed statement: its backend must avoid failing ones,
 * or wrap them in a savepoint). */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include "frame.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum store_rc {
    STORE_OK = 0,
    STORE_ERR = -1,         /* database failure; logged once by the backend */
    STORE_NOT_FOUND = -2,   /* unknown row, or caller not a member */
    STORE_CONFLICT = -3,    /* unique key taken (username) */
    STORE_FORBIDDEN = -4,   /* member, but role too low */
    STORE_BAD_REQUEST = -5, /* not allowed on this kind of conversation */
    STORE_REUSED = -6,      /* refresh token already rotated: family revoked */
    STORE_EXPIRED = -7,     /* refresh token past expires_at, or revoked */
    STORE_UNAVAILABLE = -8, /* the database cannot be reached now; retry later (never a lost write:
                               nothing of the call was committed) */
    STORE_QUOTA = -9,       /* att_create: the owner's uploads not yet attached would pass max_pending;
                               nothing was stored */
};

/* att_create: each pending upload counts at least this many bytes against
 * max_pending (a one-byte upload still takes a row and a disk block), so the
 * cap bounds their number too. */
#define STORE_ATT_MIN_CHARGE 4096

enum store_role { ROLE_MEMBER = 0, ROLE_ADMIN = 1, ROLE_OWNER = 2 };

/* One send of a batch, in and out. The strings belong to the caller (the
 * job) and outlive the call. */
struct store_send {
    /* in */
    int64_t conv;
    int64_t sender;
    const char *client_id;
    const char *body;      /* may hold NUL bytes */
    size_t body_len;
    int64_t reply_to;      /* 0: none; else a seq of conv (1..last_seq, counting earlier sends of the batch) */
    const char *const *att; /* attachment ids (n_att, at most STORE_MAX_ATTACH): the sender's own uploads
                              not yet attached to any message; they become this message's */
    size_t n_att;
    /* out */
    int rc;                /* STORE_OK, STORE_NOT_FOUND (not a member, no original), or STORE_BAD_REQUEST
                              (reply_to or an attachment refused: why says which) */
    const char *why;       /* BAD_REQUEST: a static explanation */
    int dup;               /* 1: (sender, client_id) was used before: conv/seq/ts are the original's */
    int64_t seq, ts;
    int64_t orig_conv;     /* the conversation that holds the message (conv, or the original's) */
    json_t *att_out;       /* STORE_OK, not dup, n_att > 0: the attachment objects in the order given
                              (a new reference the caller owns); else NULL */
};

#define STORE_MAX_ATTACH 10

/* A change to an existing message (PROTOCOL.md "Version 2 additions"). Each
 * takes the conversation's next mod (UPDATE ... last_mod = last_mod + 1
 * RETURNING, dense under concurrent writers like seqs) and records it as the
 * message's mod. */
enum store_change_kind {
    CHANGE_EDIT,      /* text = the new body (may hold NUL bytes) */
    CHANGE_DELETE,    /* erase: body "", attachments unlinked (their bytes erased once no message or
                         pending upload refers to them), search entry gone, reactions gone, deleted */
    CHANGE_REACT_ON,  /* text = emoji, by user: appended to that emoji's users */
    CHANGE_REACT_OFF, /* text = emoji, by user: removed */
};

/* What the core needs to decide on a change (chat_tx.c holds the rules). */
struct store_msg_facts {
    int64_t sender;
    int deleted;
    int64_t mod;           /* the message's current mod (0: never changed) */
};

/* A conversation a batch stored messages in: its members when the batch
 * ran (sorted ids), for the fan-out after the commit. */
struct store_touched {
    int64_t conv;
    struct idlist *members; /* one reference, owned by the array */
};

struct store_batch_out {
    struct store_touched *v; /* malloc'd; store_batch_out_dispose frees */
    size_t n;
};
void store_batch_out_dispose(struct store_batch_out *out);
/* The members of conv as the batch saw them (NULL if it stored nothing there). */
struct idlist *store_batch_members(const struct store_batch_out *out, int64_t conv);

/* A member's read position, for the per-member part of a conversation push. */
struct store_pos {
    int64_t user;
    int64_t last_read_seq;
};

struct store;

struct store_ops {
    const char *name;
    void (*close)(struct store *st);
    /* Whether the connection works, reconnecting if it was lost: STORE_OK or
     * STORE_UNAVAILABLE. Cheap when it works (a local status check). */
    int (*ping)(struct store *st);

    int (*begin)(struct store *st);
    /* A commit of a transaction that erased (CHANGE_DELETE) must leave
     * nothing of the erased text or bytes in any file of the backend's
     * before it returns (SQLite: secure_delete, the search index rewritten
     * without them, the WAL checkpointed and truncated, the blob files
     * unlinked; PostgreSQL: the rows deleted, space reclaimed by vacuum). */
    int (*commit)(struct store *st);
    int (*rollback)(struct store *st);
    int (*savepoint)(struct store *st);
    int (*release)(struct store *st);
    int (*rollback_to)(struct store *st);

    /* Runs sends v[0..n) in order inside the open transaction: a send from a
     * non-member (as the batch sees membership) is NOT_FOUND unless it is a
     * resend; a resend of (sender, client_id), earlier in the batch or in any
     * committed batch, is dup with the original's conv/seq/ts; every other
     * send gets its conversation's next seqs, reserved atomically so that
     * several writers stay dense (UPDATE ... last_seq = last_seq + n
     * RETURNING; a backend whose write transaction holds a database-wide
     * lock, as SQLite's BEGIN IMMEDIATE does, may count up from last_seq read
     * inside it). Each
     * sender's read position moves to its last new message. Returns STORE_OK
     * (per-send results in v[i].rc) or STORE_ERR (the batch must roll back).
     * out gets the touched conversations' members. */
    int (*send_batch)(struct store *st, struct store_send *v, size_t n, int64_t now,
                      struct store_batch_out *out);

    /* users: {"id","username","display_name","created_at"} */
    int (*user_create)(struct store *st, const char *username, const char *display_name, const char *pwhash,
                       int64_t now, json_t **user_out);
    int (*user_by_name)(struct store *st, const char *username, json_t **user_out, char **pwhash_out);
    int (*user_by_id)(struct store *st, int64_t id, json_t **user_out);
    int (*user_exists)(struct store *st, int64_t id);
    int (*users_search)(struct store *st, const char *prefix, int limit, json_t **users_out);

    /* refresh tokens (only hashes are stored) */
    int (*refresh_insert)(struct store *st, int64_t user_id, const char *family, const char *token_hash,
                          int64_t expires_at, int64_t now);
    int (*refresh_rotate)(struct store *st, const char *old_hash, const char *new_hash, int64_t new_expires_at,
                          int64_t now, int64_t *user_id_out);
    int (*refresh_revoke)(struct store *st, const char *token_hash, int64_t now);
    /* housekeeping (the writer, periodically); may be NULL: nothing is pruned */
    int (*refresh_prune)(struct store *st, int64_t now, int64_t rotated_before, int limit, int *deleted_out);

    /* conversations and members */
    int (*conv_create_direct)(struct store *st, int64_t a, int64_t b, int64_t now, int64_t *conv_out,
                              int *created_out);
    int (*conv_create_group)(struct store *st, int64_t creator, const char *title, const int64_t *members,
                             size_t n, int64_t now, int64_t *conv_out);
    int (*conv_get)(struct store *st, int64_t conv, int64_t viewer, json_t **conv_out);
    int (*conv_list)(struct store *st, int64_t viewer, json_t **convs_out);
    int (*conv_view)(struct store *st, int64_t conv, json_t **shared_out, struct store_pos **pos_out,
                     size_t *n_out);
    int (*member_ctx)(struct store *st, int64_t conv, int64_t user, int *direct_out, enum store_role *role_out);
    int (*member_insert)(struct store *st, int64_t conv, int64_t user, enum store_role role, int64_t now,
                         int *added_out);
    int (*member_delete)(struct store *st, int64_t conv, int64_t user, int pass_ownership);
    int (*member_set_role)(struct store *st, int64_t conv, int64_t user, enum store_role role);
    int (*members)(struct store *st, int64_t conv, int64_t **ids_out, size_t *n_out);
    int (*is_member)(struct store *st, int64_t conv, int64_t user);
    int (*peers)(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out);
    int (*user_convs)(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out);

    /* messages: {"conv","seq","from","id","body","ts"} */
    int (*msg_by_client)(struct store *st, int64_t sender, const char *client_id, int64_t *conv_out,
                         int64_t *seq_out, int64_t *ts_out);
    int (*conv_last_seq)(struct store *st, int64_t conv, int64_t *last_seq_out);
    int (*conv_last_seqs)(struct store *st, const int64_t *convs, size_t n, int64_t *last_seqs_out,
                          int64_t *last_mods_out);
    /* A replica's replay lag in ms (0: caught up, or not a replica). NULL:
     * the backend has no replicas. */
    int (*replay_lag)(struct store *st, int64_t *ms_out);
    int (*read_set)(struct store *st, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out);
    int (*msg_page)(struct store *st, int64_t conv, int64_t before, int64_t after, int limit, json_t **msgs_out,
                    int *has_more_out);
    int (*sync_summary)(struct store *st, int64_t user, json_t **out);

    /* ---- version 2: changes, search, attachments ---- */
    int (*msg_facts)(struct store *st, int64_t conv, int64_t seq, struct store_msg_facts *out);
    int (*msg_get)(struct store *st, int64_t conv, int64_t seq, json_t **msg_out);
    int (*msg_change)(struct store *st, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                      const char *text, size_t text_len, int64_t now, int64_t *mod_out, int *changed_out);
    int (*changes_page)(struct store *st, int64_t conv, int64_t after_mod, int limit, json_t **msgs_out,
                        int64_t *last_mod_out);
    int (*search)(struct store *st, int64_t user, int64_t conv, const char *const *words, size_t nwords,
                  int64_t before, int limit, json_t **results_out, int64_t *next_out);
    int (*att_create)(struct store *st, int64_t owner, const char *name, const char *type, const char *tmp_path,
                      int64_t size, const char *sha256_hex, int64_t now, int64_t max_pending, json_t **att_out);
    int (*att_get)(struct store *st, const char *id, int64_t user, json_t **att_out, char **sha256_out);
    int (*att_path)(struct store *st, const char *sha256_hex, char **path_out);
    int (*att_read)(struct store *st, const char *sha256_hex, int64_t off, void *buf, size_t len, size_t *n_out);
    int (*att_prune)(struct store *st, int64_t created_before, int limit, int *deleted_out);
};

/* The common head of every backend's connection struct. */
struct store {
    const struct store_ops *ops;
};

/* ---- the interface, as everything above calls it ---- */

static inline void store_close(struct store *st)
{
    if (st)
        st->ops->close(st);
}
static inline int store_ping(struct store *st) { return st->ops->ping(st); }
/* begin opens the batch's write transaction. Savepoints are one level, the
 * writer's per-job "job" savepoint; rollback_to undoes and releases it. */
static inline int store_begin(struct store *st) { return st->ops->begin(st); }
static inline int store_commit(struct store *st) { return st->ops->commit(st); }
static inline int store_rollback(struct store *st) { return st->ops->rollback(st); }
static inline int store_savepoint(struct store *st) { return st->ops->savepoint(st); }
static inline int store_release(struct store *st) { return st->ops->release(st); }
static inline int store_rollback_to(struct store *st) { return st->ops->rollback_to(st); }

static inline int store_send_batch(struct store *st, struct store_send *v, size_t n, int64_t now,
                                   struct store_batch_out *out)
{
    return st->ops->send_batch(st, v, n, now, out);
}

/* CONFLICT when the username is taken. */
static inline int store_user_create(struct store *st, const char *username, const char *display_name,
                                    const char *pwhash, int64_t now, json_t **user_out)
{
    return st->ops->user_create(st, username, display_name, pwhash, now, user_out);
}
/* *pwhash_out is malloc'd (caller frees); pass NULL to skip. */
static inline int store_user_by_name(struct store *st, const char *username, json_t **user_out,
                                     char **pwhash_out)
{
    return st->ops->user_by_name(st, username, user_out, pwhash_out);
}
static inline int store_user_by_id(struct store *st, int64_t id, json_t **user_out)
{
    return st->ops->user_by_id(st, id, user_out);
}
/* STORE_OK or NOT_FOUND. */
static inline int store_user_exists(struct store *st, int64_t id) { return st->ops->user_exists(st, id); }
/* Users whose username starts with prefix (wildcards escaped), by username, at most limit. */
static inline int store_users_search(struct store *st, const char *prefix, int limit, json_t **users_out)
{
    return st->ops->users_search(st, prefix, limit, users_out);
}

/* A new token family (login, signup). */
static inline int store_refresh_insert(struct store *st, int64_t user_id, const char *family,
                                       const char *token_hash, int64_t expires_at, int64_t now)
{
    return st->ops->refresh_insert(st, user_id, family, token_hash, expires_at, now);
}
/* Rotation: NOT_FOUND (unknown), EXPIRED (expired or revoked), REUSED (the
 * token was already rotated: the whole family is revoked, and that write is
 * kept, so a caller in a savepoint must report reuse as a result and return
 * STORE_OK, or the revocation is undone). */
static inline int store_refresh_rotate(struct store *st, const char *old_hash, const char *new_hash,
                                       int64_t new_expires_at, int64_t now, int64_t *user_id_out)
{
    return st->ops->refresh_rotate(st, old_hash, new_hash, new_expires_at, now, user_id_out);
}
/* Revokes one token; OK for an unknown hash too. */
static inline int store_refresh_revoke(struct store *st, const char *token_hash, int64_t now)
{
    return st->ops->refresh_revoke(st, token_hash, now);
}

/* Deletes at most limit refresh-token rows that can never serve again:
 * expired ones; every row of a family with no live token left (logged out,
 * revoked for reuse, abandoned); and rotated rows whose successor was issued
 * at or before rotated_before (a reuse that old is answered as an unknown
 * token instead of revoking the family). Rotated rows of a family in use are
 * otherwise kept: presenting one is how theft is detected. *deleted_out gets
 * the count (limit: call again). A backend without it deletes nothing. */
static inline int store_refresh_prune(struct store *st, int64_t now, int64_t rotated_before, int limit,
                                      int *deleted_out)
{
    *deleted_out = 0;
    return st->ops->refresh_prune ? st->ops->refresh_prune(st, now, rotated_before, limit, deleted_out) : STORE_OK;
}

/* conversation object: {"id","kind","title","members":[{"id","username",
 * "display_name","role"}],"last_seq","last_read_seq","unread","last_message",
 * "created_at"}; last_read_seq and unread are the viewer's. */
/* Direct conversation of (a, b); an existing one gives *created_out = 0.
 * b unknown: NOT_FOUND. a == b: BAD_REQUEST. */
static inline int store_conv_create_direct(struct store *st, int64_t a, int64_t b, int64_t now,
                                           int64_t *conv_out, int *created_out)
{
    return st->ops->conv_create_direct(st, a, b, now, conv_out, created_out);
}
/* Group owned by creator, the others members; duplicates and the creator in
 * members ignored. Unknown member id: NOT_FOUND, nothing written. */
static inline int store_conv_create_group(struct store *st, int64_t creator, const char *title,
                                          const int64_t *members, size_t n, int64_t now, int64_t *conv_out)
{
    return st->ops->conv_create_group(st, creator, title, members, n, now, conv_out);
}
/* NOT_FOUND if the conversation does not exist or viewer is not a member. */
static inline int store_conv_get(struct store *st, int64_t conv, int64_t viewer, json_t **conv_out)
{
    return st->ops->conv_get(st, conv, viewer, conv_out);
}
/* All the viewer's conversations, most recent activity first. */
static inline int store_conv_list(struct store *st, int64_t viewer, json_t **convs_out)
{
    return st->ops->conv_list(st, viewer, convs_out);
}
/* One snapshot of a conversation for a push to all its members: the object
 * WITHOUT last_read_seq and unread (the shared part), and every member's read
 * position (*pos_out malloc'd). NOT_FOUND if the conversation has no member. */
static inline int store_conv_view(struct store *st, int64_t conv, json_t **shared_out,
                                  struct store_pos **pos_out, size_t *n_out)
{
    return st->ops->conv_view(st, conv, shared_out, pos_out, n_out);
}
/* Whether conv is direct and user's role in it, in one lookup. NOT_FOUND
 * alike for a missing conversation and a non-member: no existence leak. */
static inline int store_member_ctx(struct store *st, int64_t conv, int64_t user, int *direct_out,
                                   enum store_role *role_out)
{
    return st->ops->member_ctx(st, conv, user, direct_out, role_out);
}
/* Adds user unless already there (*added_out 0 then; may be NULL). */
static inline int store_member_insert(struct store *st, int64_t conv, int64_t user, enum store_role role,
                                      int64_t now, int *added_out)
{
    return st->ops->member_insert(st, conv, user, role, now, added_out);
}
/* Deletes the member; pass_ownership: it was the owner, so the
 * longest-standing admin (else member) becomes owner. */
static inline int store_member_delete(struct store *st, int64_t conv, int64_t user, int pass_ownership)
{
    return st->ops->member_delete(st, conv, user, pass_ownership);
}
/* NOT_FOUND if user is not a member. */
static inline int store_member_set_role(struct store *st, int64_t conv, int64_t user, enum store_role role)
{
    return st->ops->member_set_role(st, conv, user, role);
}
/* Member user ids of conv, ascending (empty if none). */
static inline int store_members(struct store *st, int64_t conv, int64_t **ids_out, size_t *n_out)
{
    return st->ops->members(st, conv, ids_out, n_out);
}
/* STORE_OK if user is a member of conv, else NOT_FOUND. */
static inline int store_is_member(struct store *st, int64_t conv, int64_t user)
{
    return st->ops->is_member(st, conv, user);
}
/* Distinct users who share at least one conversation with user (not user). */
static inline int store_peers(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out)
{
    return st->ops->peers(st, user, ids_out, n_out);
}
/* All conversation ids of user, ascending. */
static inline int store_user_convs(struct store *st, int64_t user, int64_t **ids_out, size_t *n_out)
{
    return st->ops->user_convs(st, user, ids_out, n_out);
}

/* The message a sender already sent with this client id (NOT_FOUND if none). */
static inline int store_msg_by_client(struct store *st, int64_t sender, const char *client_id,
                                      int64_t *conv_out, int64_t *seq_out, int64_t *ts_out)
{
    return st->ops->msg_by_client(st, sender, client_id, conv_out, seq_out, ts_out);
}
/* Current last_seq of a conversation (NOT_FOUND if none). */
static inline int store_conv_last_seq(struct store *st, int64_t conv, int64_t *last_seq_out)
{
    return st->ops->conv_last_seq(st, conv, last_seq_out);
}
/* last_seqs_out[i] = the last_seq of convs[i], and (unless last_mods_out is
 * NULL) last_mods_out[i] its last_mod (0 for an unknown one), in one round
 * trip: the node's periodic check for missed messages and changes, a
 * replica's freshness. */
static inline int store_conv_last_seqs(struct store *st, const int64_t *convs, size_t n, int64_t *last_seqs_out,
                                       int64_t *last_mods_out)
{
    return st->ops->conv_last_seqs(st, convs, n, last_seqs_out, last_mods_out);
}
/* Moves user's read position forward to min(seq, last_seq); never back.
 * *pos_out gets the resulting position. NOT_FOUND if not a member. */
static inline int store_read_set(struct store *st, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out)
{
    return st->ops->read_set(st, conv, user, seq, pos_out);
}
/* History. before > 0: seq < before, newest first. else after >= 0: seq > after,
 * oldest first. Neither: newest first. *has_more: more rows beyond the page. */
static inline int store_msg_page(struct store *st, int64_t conv, int64_t before, int64_t after, int limit,
                                 json_t **msgs_out, int *has_more_out)
{
    return st->ops->msg_page(st, conv, before, after, limit, msgs_out, has_more_out);
}
/* [{"conv","last_seq","last_read_seq","unread"}...] for every conversation of user. */
static inline int store_sync_summary(struct store *st, int64_t user, json_t **out)
{
    return st->ops->sync_summary(st, user, out);
}

/* ---- version 2: changes, search, attachments ----
 * message objects gain, when they apply: "reply_to", "attachments"
 * ([{"id","name","type","size"}]), "edited_at", "deleted" (true; body ""),
 * "reactions" ({"emoji":[user ids in the order they reacted]}), "mod";
 * conversation objects and summaries gain "last_mod". rows.c shapes them. */

/* Sender, deleted flag and mod of (conv, seq): NOT_FOUND if there is none. */
static inline int store_msg_facts(struct store *st, int64_t conv, int64_t seq, struct store_msg_facts *out)
{
    return st->ops->msg_facts(st, conv, seq, out);
}
/* The whole message as it now is (edited body, tombstone, reactions, mod). */
static inline int store_msg_get(struct store *st, int64_t conv, int64_t seq, json_t **msg_out)
{
    return st->ops->msg_get(st, conv, seq, msg_out);
}
/* Applies a change inside the open transaction; no permission rule (the
 * caller checked them). *changed_out 0: a reaction already there (or not
 * there to remove): nothing written, *mod_out = the message's current mod.
 * Else the conversation's next mod. NOT_FOUND: no such message. */
static inline int store_msg_change(struct store *st, int64_t conv, int64_t seq, int64_t user,
                                   enum store_change_kind kind, const char *text, size_t text_len, int64_t now,
                                   int64_t *mod_out, int *changed_out)
{
    return st->ops->msg_change(st, conv, seq, user, kind, text, text_len, now, mod_out, changed_out);
}
/* Messages of conv with mod > after_mod in mod order, at most limit;
 * *last_mod_out = the conversation's last_mod. NOT_FOUND: no conversation. */
static inline int store_changes_page(struct store *st, int64_t conv, int64_t after_mod, int limit,
                                     json_t **msgs_out, int64_t *last_mod_out)
{
    return st->ops->changes_page(st, conv, after_mod, limit, msgs_out, last_mod_out);
}
/* Full-text search: messages of user's current conversations (conv > 0:
 * that one only; the caller checked membership) containing every word (whole
 * words, case- and accent-insensitive, the last one a prefix), not deleted,
 * newest first, at most limit, older than the cursor before (0: from the
 * newest). results: [{"conv","seq","from","body","ts"}]; *next_out the
 * cursor of the next page, 0 on the last one. Words are plain (letters and
 * digits, at most 64 bytes each, at most 16 words): the backend quotes them. */
static inline int store_search(struct store *st, int64_t user, int64_t conv, const char *const *words,
                               size_t nwords, int64_t before, int limit, json_t **results_out, int64_t *next_out)
{
    return st->ops->search(st, user, conv, words, nwords, before, limit, results_out, next_out);
}
/* Records an uploaded file, written whole to tmp_path, as attachment
 * {"id","name","type","size"} owned by owner, not yet attached; id is a new
 * random opaque string. Same bytes (sha256) are stored once, counted by
 * reference. tmp_path stays the caller's (removed after the job): the
 * backend copies or hard-links it (same file system: under the data
 * directory). max_pending > 0: STORE_QUOTA, nothing stored, if the owner's
 * uploads not yet attached, this one included, would count more than that
 * many bytes (each at least STORE_ATT_MIN_CHARGE); checked in the write
 * transaction, the owner's uploads serialized (concurrent ones from other
 * workers or nodes cannot both pass). */
static inline int store_att_create(struct store *st, int64_t owner, const char *name, const char *type,
                                   const char *tmp_path, int64_t size, const char *sha256_hex, int64_t now,
                                   int64_t max_pending, json_t **att_out)
{
    return st->ops->att_create(st, owner, name, type, tmp_path, size, sha256_hex, now, max_pending, att_out);
}
/* The attachment if user may read it (its uploader, or a member of a
 * conversation of a message that has it); NOT_FOUND otherwise. *sha256_out
 * (malloc'd) names its bytes for att_path / att_read. */
static inline int store_att_get(struct store *st, const char *id, int64_t user, json_t **att_out,
                                char **sha256_out)
{
    return st->ops->att_get(st, id, user, att_out, sha256_out);
}
/* A file holding the bytes (malloc'd path), for sendfile: a backend that
 * keeps them elsewhere answers NOT_FOUND (use att_read). */
static inline int store_att_path(struct store *st, const char *sha256_hex, char **path_out)
{
    *path_out = NULL;
    return st->ops->att_path ? st->ops->att_path(st, sha256_hex, path_out) : STORE_NOT_FOUND;
}
/* Up to len bytes of the blob from off into buf (*n_out < len: the end). */
static inline int store_att_read(struct store *st, const char *sha256_hex, int64_t off, void *buf, size_t len,
                                 size_t *n_out)
{
    return st->ops->att_read(st, sha256_hex, off, buf, len, n_out);
}
/* Deletes at most limit uploads never attached and created before
 * created_before (and their bytes when nothing else refers to them). */
static inline int store_att_prune(struct store *st, int64_t created_before, int limit, int *deleted_out)
{
    *deleted_out = 0;
    return st->ops->att_prune ? st->ops->att_prune(st, created_before, limit, deleted_out) : STORE_OK;
}

const char *store_role_name(enum store_role r);
/* "owner", "admin", anything else member. */
enum store_role store_role_parse(const char *s);

#endif
