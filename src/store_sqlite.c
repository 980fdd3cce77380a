/* store_sqlite: the SQLite backend of the store interface (store.h), used
 * in embedded mode. See store_sqlite.h.
 *
 * Every statement is a constant of the table below, prepared on first use
 * with SQLITE_PREPARE_PERSISTENT and cached in the struct store for the life
 * of the connection; each use binds, steps, then resets and clears bindings
 * (struct q). Text is bound SQLITE_STATIC: the bindings are cleared before
 * any function returns, so the caller's buffers outlive them.
 *
 * Errors: SQLite failures are logged once, here, with the statement's
 * purpose, and become STORE_ERR. A unique-key violation is an expected answer
 * (STORE_CONFLICT) and is not logged.
 *
 * Version 2 (migrations/002_v2.sql): how the search index is sharded so a
 * delete can rewrite it cheaply is under "Search"; what a commit does for an
 * erasure (optimize, secure_delete, WAL truncation, blob unlinks) is at
 * sq_commit; attachment bytes live in <data dir>/attachments, the directory
 * of the database file (see "Attachments"). */
#include "store_sqlite.h"

#include "rows.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrations.h"
#include "util.h"

#define BUSY_TIMEOUT_MS 5000

enum sid {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_RELEASE,
    S_ROLLBACK_TO,
    S_OP_SAVEPOINT,
    S_OP_RELEASE,
    S_OP_ROLLBACK_TO,
    S_USER_INSERT,
    S_USER_BY_NAME,
    S_USER_BY_ID,
    S_USER_SEARCH,
    S_USER_EXISTS,
    S_RT_INSERT,
    S_RT_BY_HASH,
    S_RT_REVOKE_FAMILY,
    S_RT_INSERT_NEXT,
    S_RT_SET_REPLACED,
    S_RT_REVOKE,
    S_RT_PRUNE,
    S_DIRECT_FIND,
    S_DIRECT_INSERT,
    S_CONV_INSERT,
    S_MEMBER_INSERT,
    S_CONV_GET,
    S_CONV_LIST,
    S_CONV_MEMBERS,
    S_LIST_MEMBERS,
    S_ACTOR_CTX,
    S_MEMBER_DELETE,
    S_OWNER_TRANSFER,
    S_MEMBER_SET_ROLE,
    S_MEMBER_IDS,
    S_IS_MEMBER,
    S_PEERS,
    S_USER_CONVS,
    S_MSG_BY_CLIENT,
    S_CONV_LAST_SEQ,
    S_MSG_INSERT,
    S_CONV_ADVANCE,
    S_READ_SET,
    S_MSG_BEFORE,
    S_MSG_AFTER,
    S_SYNC_SUMMARY,
    S_CONV_SHARED,
    S_MEMBER_POS,
    /* version 2 */
    S_MAX_ID,
    S_MSG_FACTS,
    S_MSG_ONE,
    S_MSG_OLD,
    S_MOD_NEXT,
    S_MSG_EDIT,
    S_MSG_ERASE,
    S_MSG_REACTED,
    S_REACT_ADD,
    S_REACT_DEL,
    S_REACT_DEL_MSG,
    S_REACT_RANGE,
    S_REACT_LIST,
    S_ATT_RANGE,
    S_ATT_LIST,
    S_ATT_OF_MSG,
    S_ATT_DELETE,
    S_ATT_CHECK,
    S_ATT_ATTACH,
    S_ATT_ROW,
    S_ATT_INSERT,
    S_ATT_PENDING,
    S_ATT_GET,
    S_ATT_PENDING_OLD,
    S_BLOB_REF,
    S_BLOB_UNREF,
    S_BLOB_DELETE,
    S_BLOB_EXISTS,
    S_CHANGES,
    S_CONV_LAST_MOD,
    S_SHARD_KNOWN,
    S_SHARD_ADD,
    S_SHARDS,
    S_BACKFILL,
    S__COUNT
};

struct sdef {
    const char *what; /* the purpose, for the error log */
    const char *sql;
};

/* Column lists shared by several statements (and by the row readers below). */
#define USER_COLS "u.id, u.username, u.display_name, u.created_at"
#define MEMBER_COLS "u.id, u.username, u.display_name, m.role"
/* The conversation row: the conversation, the viewer's read position and
 * the last message (NULLs when there is none). Read by conv_json(). */
/* The version 2 state of a message (read by mv2_read), after its version 1
 * columns. */
#define V2_COLS(t)                                                                                 \
    "coalesce(" t "reply_to, 0), coalesce(" t "edited_at, 0), " t "deleted, " t "mod, " t "n_react, " \
    t "n_att"
#define CONV_SELECT                                                                      \
    "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, m.last_read_seq,"           \
    " g.sender_id, g.client_id, g.body, g.created_at, " V2_COLS("g.") ", c.last_mod"       \
    " FROM members m JOIN conversations c ON c.id = m.conv_id"                           \
    " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq"
#define CONV_V2_COL 10   /* the first V2_COLS column of a conversation row */
#define CONV_LAST_MOD 16 /* c.last_mod */
#define MSG_COLS "seq, sender_id, client_id, body, created_at, " V2_COLS("")
#define MSG_V2_COL 5

static const struct sdef SQL[S__COUNT] = {
    [S_BEGIN] = {"begin transaction", "BEGIN IMMEDIATE"},
    [S_COMMIT] = {"commit", "COMMIT"},
    [S_ROLLBACK] = {"rollback", "ROLLBACK"},
    [S_SAVEPOINT] = {"savepoint job", "SAVEPOINT job"},
    [S_RELEASE] = {"release job", "RELEASE job"},
    [S_ROLLBACK_TO] = {"rollback to job", "ROLLBACK TO job"},
    /* The store's own savepoint, distinct from the caller's "job", makes a
     * multi-statement operation atomic whether or not a transaction is open. */
    [S_OP_SAVEPOINT] = {"savepoint store_op", "SAVEPOINT store_op"},
    [S_OP_RELEASE] = {"release store_op", "RELEASE store_op"},
    [S_OP_ROLLBACK_TO] = {"rollback to store_op", "ROLLBACK TO store_op"},

    [S_USER_INSERT] = {"insert user",
                       "INSERT INTO users(username, display_name, password_hash, created_at)"
                       " VALUES (?1, ?2, ?3, ?4)"},
    [S_USER_BY_NAME] = {"user by name",
                        "SELECT " USER_COLS ", u.password_hash FROM users u WHERE u.username = ?1"},
    [S_USER_BY_ID] = {"user by id",
                      "SELECT " USER_COLS ", u.password_hash FROM users u WHERE u.id = ?1"},
    [S_USER_SEARCH] = {"search users",
                       "SELECT " USER_COLS " FROM users u WHERE u.username LIKE ?1 ESCAPE '\\'"
                       " ORDER BY u.username LIMIT ?2"},
    [S_USER_EXISTS] = {"user exists", "SELECT 1 FROM users WHERE id = ?1"},

    [S_RT_INSERT] = {"insert refresh token",
                     "INSERT INTO refresh_tokens(user_id, family, token_hash, created_at, expires_at)"
                     " VALUES (?1, ?2, ?3, ?4, ?5)"},
    [S_RT_BY_HASH] = {"refresh token by hash",
                      "SELECT id, user_id, expires_at, revoked_at IS NOT NULL, replaced_by IS NOT NULL"
                      " FROM refresh_tokens WHERE token_hash = ?1"},
    [S_RT_REVOKE_FAMILY] = {"revoke refresh token family",
                            "UPDATE refresh_tokens SET revoked_at = ?2"
                            " WHERE revoked_at IS NULL"
                            " AND family = (SELECT family FROM refresh_tokens WHERE id = ?1)"},
    [S_RT_INSERT_NEXT] = {"insert rotated refresh token",
                          "INSERT INTO refresh_tokens(user_id, family, token_hash, created_at, expires_at)"
                          " SELECT user_id, family, ?2, ?3, ?4 FROM refresh_tokens WHERE id = ?1"},
    [S_RT_SET_REPLACED] = {"mark refresh token replaced",
                           "UPDATE refresh_tokens SET replaced_by = ?2 WHERE id = ?1"},
    [S_RT_REVOKE] = {"revoke refresh token",
                     "UPDATE refresh_tokens SET revoked_at = ?2"
                     " WHERE token_hash = ?1 AND revoked_at IS NULL"},
    [S_RT_PRUNE] = {"prune refresh tokens",
                    "DELETE FROM refresh_tokens WHERE id IN (SELECT t.id FROM refresh_tokens t"
                    " WHERE t.expires_at <= ?1"
                    " OR EXISTS (SELECT 1 FROM refresh_tokens n WHERE n.id = t.replaced_by AND n.created_at <= ?2)"
                    " OR NOT EXISTS (SELECT 1 FROM refresh_tokens l WHERE l.family = t.family"
                    "  AND l.revoked_at IS NULL AND l.replaced_by IS NULL AND l.expires_at > ?1)"
                    " LIMIT ?3)"},

    [S_DIRECT_FIND] = {"find direct conversation",
                       "SELECT conv_id FROM direct_pairs WHERE user_lo = ?1 AND user_hi = ?2"},
    [S_DIRECT_INSERT] = {"insert direct pair",
                         "INSERT INTO direct_pairs(user_lo, user_hi, conv_id) VALUES (?1, ?2, ?3)"},
    [S_CONV_INSERT] = {"insert conversation",
                       "INSERT INTO conversations(kind, title, created_by, created_at, last_seq, last_activity)"
                       " VALUES (?1, ?2, ?3, ?4, 0, ?4)"},
    [S_MEMBER_INSERT] = {"insert member",
                         "INSERT OR IGNORE INTO members(conv_id, user_id, role, last_read_seq, joined_at)"
                         " VALUES (?1, ?2, ?3, 0, ?4)"},
    [S_CONV_GET] = {"get conversation", CONV_SELECT " WHERE m.conv_id = ?1 AND m.user_id = ?2"},
    [S_CONV_LIST] = {"list conversations",
                     CONV_SELECT " WHERE m.user_id = ?1 ORDER BY c.last_activity DESC, c.id DESC"},
    [S_CONV_MEMBERS] = {"members of a conversation",
                        "SELECT " MEMBER_COLS " FROM members m JOIN users u ON u.id = m.user_id"
                        " WHERE m.conv_id = ?1 ORDER BY m.joined_at, m.user_id"},
    /* All members of all the viewer's conversations in one query, grouped by
     * conversation, instead of one query per listed conversation. */
    [S_LIST_MEMBERS] = {"members of listed conversations",
                        "SELECT m.conv_id, " MEMBER_COLS " FROM members v"
                        " JOIN members m ON m.conv_id = v.conv_id JOIN users u ON u.id = m.user_id"
                        " WHERE v.user_id = ?1 ORDER BY m.conv_id, m.joined_at, m.user_id"},
    [S_ACTOR_CTX] = {"conversation kind and actor role",
                     "SELECT c.kind = 'direct', m.role FROM conversations c"
                     " JOIN members m ON m.conv_id = c.id WHERE c.id = ?1 AND m.user_id = ?2"},
    [S_MEMBER_DELETE] = {"delete member", "DELETE FROM members WHERE conv_id = ?1 AND user_id = ?2"},
    /* Longest-standing admin, else longest-standing member; ties by user id. */
    [S_OWNER_TRANSFER] = {"transfer ownership",
                          "UPDATE members SET role = 'owner' WHERE conv_id = ?1 AND user_id ="
                          " (SELECT user_id FROM members WHERE conv_id = ?1"
                          "  ORDER BY role <> 'admin', joined_at, user_id LIMIT 1)"},
    [S_MEMBER_SET_ROLE] = {"set member role",
                           "UPDATE members SET role = ?3 WHERE conv_id = ?1 AND user_id = ?2"},
    [S_MEMBER_IDS] = {"member ids", "SELECT user_id FROM members WHERE conv_id = ?1 ORDER BY user_id"},
    [S_IS_MEMBER] = {"membership", "SELECT 1 FROM members WHERE conv_id = ?1 AND user_id = ?2"},
    [S_PEERS] = {"peers",
                 "SELECT DISTINCT m.user_id FROM members v JOIN members m ON m.conv_id = v.conv_id"
                 " WHERE v.user_id = ?1 AND m.user_id <> ?1 ORDER BY m.user_id"},
    [S_USER_CONVS] = {"conversations of a user",
                      "SELECT conv_id FROM members WHERE user_id = ?1 ORDER BY conv_id"},

    [S_MSG_BY_CLIENT] = {"message by client id",
                         "SELECT conv_id, seq, created_at FROM messages"
                         " WHERE sender_id = ?1 AND client_id = ?2"},
    [S_CONV_LAST_SEQ] = {"conversation last seq", "SELECT last_seq FROM conversations WHERE id = ?1"},
    [S_MSG_INSERT] = {"insert message",
                      "INSERT INTO messages(conv_id, seq, sender_id, client_id, body, created_at, id, reply_to, n_att)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, nullif(?8, 0), ?9)"},
    [S_CONV_ADVANCE] = {"advance conversation",
                        "UPDATE conversations SET last_seq = ?2,"
                        " last_activity = max(last_activity, ?3) WHERE id = ?1"},
    /* One statement: forward only (max), clamped to last_seq (min), and the
     * resulting position comes back without a second query. */
    [S_READ_SET] = {"set read position",
                    "UPDATE members SET last_read_seq = max(last_read_seq,"
                    " min(?3, (SELECT last_seq FROM conversations WHERE id = ?1)))"
                    " WHERE conv_id = ?1 AND user_id = ?2 RETURNING last_read_seq"},
    [S_MSG_BEFORE] = {"messages before",
                      "SELECT " MSG_COLS " FROM messages WHERE conv_id = ?1 AND seq < ?2"
                      " ORDER BY seq DESC LIMIT ?3"},
    [S_MSG_AFTER] = {"messages after",
                     "SELECT " MSG_COLS " FROM messages WHERE conv_id = ?1 AND seq > ?2"
                     " ORDER BY seq ASC LIMIT ?3"},
    [S_SYNC_SUMMARY] = {"sync summary",
                        "SELECT c.id, c.last_seq, m.last_read_seq, c.last_mod FROM members m"
                        " JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = ?1 ORDER BY c.id"},
    [S_CONV_SHARED] = {"conversation for a push",
                       "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, 0,"
                       " g.sender_id, g.client_id, g.body, g.created_at, " V2_COLS("g.") ", c.last_mod"
                       " FROM conversations c"
                       " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq WHERE c.id = ?1"},
    [S_MEMBER_POS] = {"read positions of members",
                      "SELECT user_id, last_read_seq FROM members WHERE conv_id = ?1 ORDER BY user_id"},

    /* ---- version 2 ---- */
    /* The messages_id index makes this one descent. */
    [S_MAX_ID] = {"last message id", "SELECT coalesce(max(id), 0) FROM messages"},
    [S_MSG_FACTS] = {"message facts", "SELECT sender_id, deleted, mod FROM messages WHERE conv_id = ?1 AND seq = ?2"},
    [S_MSG_ONE] = {"one message", "SELECT " MSG_COLS " FROM messages WHERE conv_id = ?1 AND seq = ?2"},
    [S_MSG_OLD] = {"message before a change",
                   "SELECT id, body, deleted, mod FROM messages WHERE conv_id = ?1 AND seq = ?2"},
    /* Under BEGIN IMMEDIATE nobody else writes: last_mod + 1 is dense. */
    [S_MOD_NEXT] = {"next mod",
                    "UPDATE conversations SET last_mod = last_mod + 1 WHERE id = ?1 RETURNING last_mod"},
    [S_MSG_EDIT] = {"edit message",
                    "UPDATE messages SET body = ?3, edited_at = ?4, mod = ?5 WHERE conv_id = ?1 AND seq = ?2"},
    [S_MSG_ERASE] = {"erase message",
                     "UPDATE messages SET body = '', deleted = 1, mod = ?3, n_react = 0, n_att = 0"
                     " WHERE conv_id = ?1 AND seq = ?2"},
    [S_MSG_REACTED] = {"count reaction",
                       "UPDATE messages SET mod = ?3, n_react = n_react + ?4 WHERE conv_id = ?1 AND seq = ?2"},
    [S_REACT_ADD] = {"add reaction",
                     "INSERT OR IGNORE INTO reactions(conv_id, seq, user_id, emoji) VALUES (?1, ?2, ?3, ?4)"},
    [S_REACT_DEL] = {"remove reaction",
                     "DELETE FROM reactions WHERE conv_id = ?1 AND seq = ?2 AND user_id = ?3 AND emoji = ?4"},
    [S_REACT_DEL_MSG] = {"remove reactions of a message", "DELETE FROM reactions WHERE conv_id = ?1 AND seq = ?2"},
    /* The reactions of a run of seqs (a page, or one message with ?2 = ?3),
     * in the order they were made. */
    [S_REACT_RANGE] = {"reactions of messages",
                       "SELECT conv_id, seq, emoji, user_id FROM reactions"
                       " WHERE conv_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY id"},
    /* The reactions of the last messages of a viewer's conversations. */
    [S_REACT_LIST] = {"reactions of last messages",
                      "SELECT r.conv_id, r.seq, r.emoji, r.user_id FROM members v"
                      " JOIN conversations c ON c.id = v.conv_id"
                      " JOIN reactions r ON r.conv_id = c.id AND r.seq = c.last_seq"
                      " WHERE v.user_id = ?1 ORDER BY r.id"},
    [S_ATT_RANGE] = {"attachments of messages",
                     "SELECT conv_id, seq, id, name, type, size FROM attachments"
                     " WHERE conv_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY conv_id, seq, pos"},
    [S_ATT_LIST] = {"attachments of last messages",
                    "SELECT a.conv_id, a.seq, a.id, a.name, a.type, a.size FROM members v"
                    " JOIN conversations c ON c.id = v.conv_id"
                    " JOIN attachments a ON a.conv_id = c.id AND a.seq = c.last_seq"
                    " WHERE v.user_id = ?1 ORDER BY a.conv_id, a.pos"},
    [S_ATT_OF_MSG] = {"attachments to erase",
                      "SELECT id, sha256 FROM attachments WHERE conv_id = ?1 AND seq = ?2"},
    [S_ATT_DELETE] = {"delete attachment", "DELETE FROM attachments WHERE id = ?1"},
    [S_ATT_CHECK] = {"check attachment",
                     "SELECT owner_id, conv_id IS NOT NULL FROM attachments WHERE id = ?1"},
    [S_ATT_ATTACH] = {"attach", "UPDATE attachments SET conv_id = ?2, seq = ?3, pos = ?4 WHERE id = ?1"},
    [S_ATT_ROW] = {"attachment", "SELECT id, name, type, size FROM attachments WHERE id = ?1"},
    [S_ATT_INSERT] = {"insert attachment",
                      "INSERT INTO attachments(id, owner_id, name, type, size, sha256, created_at)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
    /* What an owner's uploads not yet attached count against the cap (each at least ?2) */
    [S_ATT_PENDING] = {"pending uploads",
                       "SELECT coalesce(sum(max(size, ?2)), 0) FROM attachments WHERE owner_id = ?1 AND conv_id IS NULL"},
    /* The uploader, or a member of the conversation of the message it is in. */
    [S_ATT_GET] = {"attachment for a reader",
                   "SELECT a.id, a.name, a.type, a.size, a.sha256 FROM attachments a WHERE a.id = ?1"
                   " AND (a.owner_id = ?2 OR (a.conv_id IS NOT NULL AND EXISTS"
                   " (SELECT 1 FROM members m WHERE m.conv_id = a.conv_id AND m.user_id = ?2)))"},
    [S_ATT_PENDING_OLD] = {"old unattached uploads",
                           "SELECT id, sha256 FROM attachments WHERE conv_id IS NULL AND created_at < ?1"
                           " ORDER BY created_at LIMIT ?2"},
    [S_BLOB_REF] = {"reference blob",
                    "INSERT INTO blobs(sha256, size, refs) VALUES (?1, ?2, 1)"
                    " ON CONFLICT(sha256) DO UPDATE SET refs = refs + 1 RETURNING refs"},
    [S_BLOB_UNREF] = {"unreference blob", "UPDATE blobs SET refs = refs - 1 WHERE sha256 = ?1 AND refs > 1"},
    [S_BLOB_DELETE] = {"delete blob", "DELETE FROM blobs WHERE sha256 = ?1"},
    [S_BLOB_EXISTS] = {"blob exists", "SELECT 1 FROM blobs WHERE sha256 = ?1"},
    [S_CHANGES] = {"changes", "SELECT " MSG_COLS " FROM messages WHERE conv_id = ?1 AND mod > ?2"
                              " ORDER BY mod LIMIT ?3"},
    [S_CONV_LAST_MOD] = {"conversation last mod", "SELECT last_mod FROM conversations WHERE id = ?1"},
    [S_SHARD_KNOWN] = {"search shard known", "SELECT 1 FROM search_shards WHERE k = ?1"},
    [S_SHARD_ADD] = {"record search shard", "INSERT INTO search_shards(k) VALUES (?1)"},
    [S_SHARDS] = {"search shards", "SELECT k FROM search_shards WHERE k <= ?1 ORDER BY k DESC"},
    [S_BACKFILL] = {"messages to index",
                    "SELECT id, conv_id, body FROM messages WHERE deleted = 0 AND id IS NOT NULL ORDER BY id"},
};

/* One FTS5 shard of the search index (see "Search" below): its statements,
 * prepared on first use, and whether this connection knows the table exists
 * (writer; forgotten on every rollback, since a rollback may undo its
 * CREATE). */
struct shard {
    sqlite3_stmt *ins, *del, *opt, *find;
    int known;
};

/* A list of sha256 names (hex, NUL-terminated) with the length it had at the
 * writer's "job" savepoint, so rolling back to it forgets what came after. */
struct shalist {
    char (*v)[65];
    size_t n, cap, mark;
};

struct sq {
    struct store base; /* first: a struct store * is a struct sq * */
    sqlite3 *db;
    sqlite3_stmt *stmt[S__COUNT]; /* prepared on first use */
    char *attdir;                 /* <data dir>/attachments */
    struct shard *shards;         /* indexed by shard number */
    size_t nshards;
    /* The open write transaction's erasure work, done by commit: */
    int64_t *dirty; /* shards a delete touched: optimized before COMMIT */
    size_t ndirty, capdirty, markdirty;
    int erased, markerased;  /* it erased: the WAL is checkpointed and truncated after COMMIT */
    struct shalist gone;     /* blobs whose last reference went: files unlinked after COMMIT */
    struct shalist created;  /* blob files it created: unlinked again if it rolls back */
};


/* ------------------------------------------------------------------ */
/* Statement use: start, bind in parameter order, step, end.           */

struct q {
    struct sq *st;
    enum sid id;
    sqlite3_stmt *s;
    int n;  /* parameters bound so far */
    int rc; /* first bind failure, reported by q_step */
};

static void log_sqlite(struct sq *st, const char *what, int rc)
{
    fprintf(stderr, "store: %s: %s (%d)\n", what, sqlite3_errmsg(st->db), rc);
}

static int log_json(const char *what)
{
    fprintf(stderr, "store: %s: cannot build JSON from the row (invalid UTF-8?)\n", what);
    return STORE_ERR;
}

static int q_start(struct sq *st, enum sid id, struct q *q)
{
    int rc;

    q->st = st;
    q->id = id;
    q->n = 0;
    q->rc = SQLITE_OK;
    q->s = st->stmt[id];
    if (q->s)
        return STORE_OK;
    rc = sqlite3_prepare_v3(st->db, SQL[id].sql, -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[id], NULL);
    if (rc != SQLITE_OK) {
        log_sqlite(st, SQL[id].what, rc);
        sqlite3_finalize(st->stmt[id]);
        st->stmt[id] = NULL;
        return STORE_ERR;
    }
    q->s = st->stmt[id];
    return STORE_OK;
}

static void q_i64(struct q *q, int64_t v)
{
    q->n++;
    if (q->rc == SQLITE_OK)
        q->rc = sqlite3_bind_int64(q->s, q->n, v);
}

static void q_textn(struct q *q, const char *s, size_t len)
{
    q->n++;
    if (q->rc != SQLITE_OK)
        return;
    if (!s)
        q->rc = sqlite3_bind_null(q->s, q->n);
    else
        q->rc = sqlite3_bind_text64(q->s, q->n, s, len, SQLITE_STATIC, SQLITE_UTF8);
}

static void q_text(struct q *q, const char *s)
{
    q_textn(q, s, s ? strlen(s) : 0);
}

/* SQLITE_ROW or SQLITE_DONE (positive), else a negative store_rc: CONFLICT
 * for a unique-key violation, ERR (logged) for anything else. */
static int q_step(struct q *q)
{
    int rc = q->rc;

    if (rc == SQLITE_OK)
        rc = sqlite3_step(q->s);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        return rc;
    if (rc == SQLITE_CONSTRAINT_UNIQUE)
        return STORE_CONFLICT;
    log_sqlite(q->st, SQL[q->id].what, rc);
    return STORE_ERR;
}

/* Resetting also ends the implicit read transaction of a reader, so a
 * reader never pins an old WAL snapshot between calls. */
static void q_end(struct q *q)
{
    sqlite3_reset(q->s);
    sqlite3_clear_bindings(q->s);
}

/* Runs a statement that returns no rows. */
static int q_exec(struct q *q)
{
    int rc = q_step(q);

    q_end(q);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? STORE_OK : rc;
}

/* Runs a one-row query and reads column 0 (out may be NULL): OK, NOT_FOUND. */
static int q_one_i64(struct q *q, int64_t *out)
{
    int rc = q_step(q);

    if (rc == SQLITE_ROW) {
        if (out)
            *out = sqlite3_column_int64(q->s, 0);
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(q);
    return rc;
}

/* Collects column 0 of every row into a malloc'd array (never NULL). */
static int q_ids(struct q *q, int64_t **ids_out, size_t *n_out)
{
    size_t n = 0, cap = 8;
    int64_t *ids = xmalloc(cap * sizeof *ids);
    int rc;

    while ((rc = q_step(q)) == SQLITE_ROW) {
        if (n == cap) {
            cap *= 2;
            ids = xrealloc(ids, cap * sizeof *ids);
        }
        ids[n++] = sqlite3_column_int64(q->s, 0);
    }
    q_end(q);
    if (rc != SQLITE_DONE) {
        free(ids);
        return rc;
    }
    *ids_out = ids;
    *n_out = n;
    return STORE_OK;
}

static int run0(struct sq *st, enum sid id)
{
    struct q q;

    if (q_start(st, id, &q))
        return STORE_ERR;
    return q_exec(&q);
}

/* ------------------------------------------------------------------ */
/* JSON rows.                                                           */

static const char *col_text(sqlite3_stmt *s, int col)
{
    return (const char *)sqlite3_column_text(s, col);
}

/* The row readers: columns to plain values, shaped by rows.c. */
static json_t *user_json(sqlite3_stmt *s, int col)
{
    return rows_user(sqlite3_column_int64(s, col), col_text(s, col + 1), col_text(s, col + 2),
                     sqlite3_column_int64(s, col + 3));
}

static json_t *member_json(sqlite3_stmt *s, int col)
{
    return rows_member(sqlite3_column_int64(s, col), col_text(s, col + 1), col_text(s, col + 2),
                       col_text(s, col + 3));
}

/* A message from sender_id, client_id, body, created_at at col. The body is
 * read with its byte count: it may hold NUL bytes. */
static json_t *msg_json(sqlite3_stmt *s, int64_t conv, int64_t seq, int col)
{
    const char *body = col_text(s, col + 2);
    return rows_msg(conv, seq, sqlite3_column_int64(s, col), col_text(s, col + 1), body,
                    (size_t)sqlite3_column_bytes(s, col + 2), sqlite3_column_int64(s, col + 3));
}

struct mv2;
static void mv2_read(sqlite3_stmt *s, int col, json_t *msg, int64_t conv, int64_t seq, struct mv2 *m);

/* The shared part of a CONV_SELECT row, with an empty "members" array and
 * "last_mod". The last message's version 2 state goes to *last (its msg
 * NULL when there is none) for decorate(). */
static json_t *conv_shared_json(sqlite3_stmt *s, struct mv2 *lastx)
{
    int64_t id = sqlite3_column_int64(s, 0);
    int64_t last_seq = sqlite3_column_int64(s, 3);
    json_t *last = NULL, *o;

    if (last_seq > 0 && sqlite3_column_type(s, 6) != SQLITE_NULL && !(last = msg_json(s, id, last_seq, 6)))
        return NULL;
    mv2_read(s, CONV_V2_COL, last, id, last_seq, lastx);
    o = rows_conv_shared(id, col_text(s, 1), col_text(s, 2), last_seq, last, sqlite3_column_int64(s, 4));
    if (o)
        json_object_set_new(o, "last_mod", json_integer(sqlite3_column_int64(s, CONV_LAST_MOD)));
    return o;
}

/* The viewer's conversation object of a CONV_SELECT row. */
static json_t *conv_json(sqlite3_stmt *s, struct mv2 *lastx)
{
    json_t *o = conv_shared_json(s, lastx);
    if (o)
        rows_conv_view(o, sqlite3_column_int64(s, 5));
    return o;
}

/* Appends one JSON object per row to arr; make() returns NULL on failure. */
static int q_collect(struct q *q, json_t *arr, json_t *(*make)(sqlite3_stmt *s, int col), int col)
{
    int rc;

    while ((rc = q_step(q)) == SQLITE_ROW) {
        json_t *o = make(q->s, col);
        if (!o) {
            rc = log_json(SQL[q->id].what);
            break;
        }
        json_array_append_new(arr, o);
    }
    q_end(q);
    return rc == SQLITE_DONE ? STORE_OK : rc;
}

/* ------------------------------------------------------------------ */
/* Version 2 state of messages.                                         */

/* A message object being built and the version 2 columns of its row. The
 * cheap counters n_react / n_att say whether it has any reaction or
 * attachment rows, so a page asks for those only when some message has
 * them, and then in one query for the page's seq range. */
struct mv2 {
    json_t *msg; /* borrowed */
    int64_t conv, seq;
    struct rows_msg_v2 x;
    int n_react, n_att;
};

static void mv2_read(sqlite3_stmt *s, int col, json_t *msg, int64_t conv, int64_t seq, struct mv2 *m)
{
    memset(m, 0, sizeof *m);
    m->msg = msg;
    m->conv = conv;
    m->seq = seq;
    m->x.reply_to = sqlite3_column_int64(s, col);
    m->x.edited_at = sqlite3_column_int64(s, col + 1);
    m->x.deleted = sqlite3_column_int(s, col + 2);
    m->x.mod = sqlite3_column_int64(s, col + 3);
    m->n_react = sqlite3_column_int(s, col + 4);
    m->n_att = sqlite3_column_int(s, col + 5);
}

static int mv2_cmp(const void *a, const void *b)
{
    const struct mv2 *x = *(const struct mv2 *const *)a, *y = *(const struct mv2 *const *)b;
    if (x->conv != y->conv)
        return x->conv < y->conv ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static struct mv2 *mv2_find(struct mv2 **idx, size_t n, int64_t conv, int64_t seq)
{
    struct mv2 key = {.conv = conv, .seq = seq}, *kp = &key;
    struct mv2 **hit = bsearch(&kp, idx, n, sizeof *idx, mv2_cmp);
    return hit ? *hit : NULL;
}

/* How decorate finds the rows: RANGE: one query over [min seq, max seq] of
 * the flagged messages (all of one conversation: a page); EACH: one query
 * per flagged message (changes, single messages); VIEWER: one query over the
 * last messages of the viewer's conversations (a conversation list). */
enum dmode { D_RANGE, D_EACH, D_VIEWER };

/* Runs the reactions (what = 0) or attachments (1) query of mode and files
 * each row under its message. */
static int decorate_rows(struct sq *st, struct mv2 *v, size_t n, struct mv2 **idx, enum dmode mode,
                         int64_t viewer, int what)
{
    int64_t lo = INT64_MAX, hi = 0;
    size_t runs = 0;

    for (size_t i = 0; i < n; i++) {
        if (!(what ? v[i].n_att : v[i].n_react))
            continue;
        lo = v[i].seq < lo ? v[i].seq : lo;
        hi = v[i].seq > hi ? v[i].seq : hi;
        runs++;
    }
    if (!runs)
        return STORE_OK;
    for (size_t i = 0; i < n; i++) {
        if (mode == D_EACH && !(what ? v[i].n_att : v[i].n_react))
            continue;
        if (mode != D_EACH && i > 0)
            break;
        struct q q;
        enum sid id = mode == D_VIEWER ? (what ? S_ATT_LIST : S_REACT_LIST) : (what ? S_ATT_RANGE : S_REACT_RANGE);
        if (q_start(st, id, &q))
            return STORE_ERR;
        if (mode == D_VIEWER) {
            q_i64(&q, viewer);
        } else {
            q_i64(&q, v[i].conv);
            q_i64(&q, mode == D_EACH ? v[i].seq : lo);
            q_i64(&q, mode == D_EACH ? v[i].seq : hi);
        }
        int rc;
        while ((rc = q_step(&q)) == SQLITE_ROW) {
            struct mv2 *m = mv2_find(idx, n, sqlite3_column_int64(q.s, 0), sqlite3_column_int64(q.s, 1));
            if (!m)
                continue; /* a seq of the range outside the page */
            if (what) {
                json_t *a = rows_attachment(col_text(q.s, 2), col_text(q.s, 3), col_text(q.s, 4),
                                            sqlite3_column_int64(q.s, 5));
                if (!a) {
                    rc = log_json(SQL[id].what);
                    break;
                }
                if (!m->x.attachments)
                    m->x.attachments = json_array();
                json_array_append_new(m->x.attachments, a);
            } else {
                if (!m->x.reactions)
                    m->x.reactions = json_object();
                rows_reaction_add(m->x.reactions, col_text(q.s, 2), sqlite3_column_int64(q.s, 3));
            }
        }
        q_end(&q);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return STORE_OK;
}

/* Adds each message's version 2 fields to its object (and frees what v
 * holds, whatever happens). */
static int decorate(struct sq *st, struct mv2 *v, size_t n, enum dmode mode, int64_t viewer)
{
    struct mv2 **idx = xmalloc((n ? n : 1) * sizeof *idx);
    int rc;

    for (size_t i = 0; i < n; i++)
        idx[i] = &v[i];
    qsort(idx, n, sizeof *idx, mv2_cmp);
    rc = decorate_rows(st, v, n, idx, mode, viewer, 0);
    if (rc == STORE_OK)
        rc = decorate_rows(st, v, n, idx, mode, viewer, 1);
    for (size_t i = 0; i < n; i++)
        rows_msg_v2(rc == STORE_OK ? v[i].msg : NULL, &v[i].x);
    free(idx);
    return rc;
}

/* Growable array of struct mv2. */
struct mv2s {
    struct mv2 *v;
    size_t n, cap;
};

static struct mv2 *mv2s_push(struct mv2s *a)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    return &a->v[a->n++];
}

/* Frees what a holds when decorate was never called on it. */
static void mv2s_dispose(struct mv2s *a, int decorated)
{
    for (size_t i = 0; !decorated && i < a->n; i++)
        rows_msg_v2(NULL, &a->v[i].x);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* Reads message rows of MSG_COLS into arr (a json array), decorated in
 * mode. */
static int collect_msgs(struct q *q, int64_t conv, json_t *arr, int limit, int *has_more, enum dmode mode)
{
    struct mv2s a = {0};
    int rc, n = 0;

    while ((rc = q_step(q)) == SQLITE_ROW) {
        if (limit >= 0 && n == limit) {
            if (has_more)
                *has_more = 1;
            continue; /* the LIMIT makes this the last row */
        }
        int64_t seq = sqlite3_column_int64(q->s, 0);
        json_t *m = msg_json(q->s, conv, seq, 1);
        if (!m) {
            rc = log_json(SQL[q->id].what);
            break;
        }
        json_array_append_new(arr, m);
        mv2_read(q->s, MSG_V2_COL, m, conv, seq, mv2s_push(&a));
        n++;
    }
    q_end(q);
    if (rc != SQLITE_DONE) {
        mv2s_dispose(&a, 0);
        return rc;
    }
    rc = decorate(q->st, a.v, a.n, mode, 0);
    mv2s_dispose(&a, 1);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening: pragmas and migrations.                                     */

static void set_err(char *errbuf, size_t errlen, const char *what, const char *msg)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s: %s", what, msg);
}

/* Runs constant SQL (pragmas, migration files). */
static int exec_const(sqlite3 *db, const char *sql, const char *what, char *errbuf, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

    if (rc != SQLITE_OK)
        set_err(errbuf, errlen, what, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return rc == SQLITE_OK ? STORE_OK : STORE_ERR;
}

/* journal_mode answers with the mode in force: anything but "wal" (a file
 * system without shared memory, say) would silently serialize the readers
 * behind the writer, so it is an error. */
static int set_wal(sqlite3 *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        set_err(errbuf, errlen, "journal_mode=WAL", sqlite3_errmsg(db));
        goto fail;
    }
    if (sqlite3_stricmp((const char *)sqlite3_column_text(s, 0), "wal") != 0) {
        set_err(errbuf, errlen, "journal_mode=WAL", "the database refused WAL mode");
        goto fail;
    }
    sqlite3_finalize(s);
    return STORE_OK;
fail:
    sqlite3_finalize(s);
    return STORE_ERR;
}

/* Whether migration m is recorded (1), not (0), or an error (-1). One-off
 * statements: they run once per start, caching them would buy nothing. */
static int migration_applied(sqlite3 *db, const struct migration *m)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM schema_version WHERE version = ?1", -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(s, 1, m->version);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

static int migration_record(sqlite3 *db, const struct migration *m)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "INSERT INTO schema_version(version, name, applied_at) VALUES (?1, ?2, ?3)",
                                -1, &s, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(s, 1, m->version);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 2, m->name, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 3, util_now_ms());
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERR;
}

/* Applies one migration in its own transaction, unless already recorded.
 * The check is inside the transaction so two openers cannot both apply it. */
static int search_backfill(struct sq *st);
static void shards_forget(struct sq *st);

static int migrate_one(struct sq *st, const struct migration *m, char *errbuf, size_t errlen)
{
    sqlite3 *db = st->db;
    int applied;

    if (exec_const(db, "BEGIN IMMEDIATE", m->name, errbuf, errlen))
        return STORE_ERR;
    applied = migration_applied(db, m);
    if (applied < 0) {
        set_err(errbuf, errlen, m->name, sqlite3_errmsg(db));
        goto fail;
    }
    if (!applied) {
        if (exec_const(db, m->sql, m->name, errbuf, errlen))
            goto fail;
        /* 002 gave the messages of version 1 ids: index them for search */
        if (m->version == 2 && search_backfill(st) != STORE_OK) {
            set_err(errbuf, errlen, m->name, "indexing the stored messages for search failed");
            goto fail;
        }
        if (migration_record(db, m)) {
            set_err(errbuf, errlen, m->name, sqlite3_errmsg(db));
            goto fail;
        }
    }
    if (exec_const(db, "COMMIT", m->name, errbuf, errlen))
        goto fail;
    return STORE_OK;
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    shards_forget(st);
    return STORE_ERR;
}

static int migrate(struct sq *st, char *errbuf, size_t errlen)
{
    sqlite3 *db = st->db;
    if (exec_const(db,
                   "CREATE TABLE IF NOT EXISTS schema_version ("
                   " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
                   "schema_version", errbuf, errlen))
        return STORE_ERR;
    for (int i = 0; i < migrations_count; i++)
        if (migrate_one(st, &migrations[i], errbuf, errlen))
            return STORE_ERR;
    return STORE_OK;
}

static int setup_writer(struct sq *st, char *errbuf, size_t errlen)
{
    if (set_wal(st->db, errbuf, errlen))
        return STORE_ERR;
    /* FULL: an ack promises the message survives a crash, WAL included.
     * secure_delete: every freed cell and page is overwritten with zeros,
     * so erased text leaves no copy in free space (see sq_commit).
     * temp_store=MEMORY: a savepoint's journal (the pages as they were
     * before the job, erased text included) never spills to a file.
     * wal_autocheckpoint=8000 pages (32 MiB of WAL), not SQLite's 1000: the
     * checkpoint runs on the writer's thread inside a commit, and a batch
     * rewrites the same tail pages (each conversation's last leaf, the
     * indexes' right edges) again and again; checkpointing 8x less often
     * copies each hot page once instead of eight times, about a microsecond
     * per message at full load (docs/BENCHMARKS.md, "The write path").
     * journal_size_limit: a WAL grown past 64 MiB by a long read is cut back
     * after the next checkpoint. */
    if (exec_const(st->db,
                   "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;"
                   " PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint=8000;"
                   " PRAGMA journal_size_limit=67108864",
                   "pragmas", errbuf, errlen))
        return STORE_ERR;
    return migrate(st, errbuf, errlen);
}

/* The probe reads the schema now, so a missing or uninitialized database
 * fails here, at start, rather than on the first request. */
static int setup_reader(sqlite3 *db, char *errbuf, size_t errlen)
{
    /* mmap: a search walks many pages of the index; reading them through
     * the shared mapping instead of a pread each halved its time at 1M
     * messages */
    if (exec_const(db, "PRAGMA query_only=1; PRAGMA mmap_size=268435456", "query_only", errbuf, errlen))
        return STORE_ERR;
    return exec_const(db, "SELECT max(version) FROM schema_version", "schema_version", errbuf, errlen);
}

static void sq_close(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    if (!st)
        return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    for (size_t i = 0; i < st->nshards; i++) {
        sqlite3_finalize(st->shards[i].ins);
        sqlite3_finalize(st->shards[i].del);
        sqlite3_finalize(st->shards[i].opt);
        sqlite3_finalize(st->shards[i].find);
    }
    sqlite3_close(st->db);
    free(st->shards);
    free(st->dirty);
    free(st->gone.v);
    free(st->created.v);
    free(st->attdir);
    free(st);
}


/* ------------------------------------------------------------------ */
/* Transactions.                                                        */

static void shalist_add(struct shalist *l, const char *sha)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    snprintf(l->v[l->n++], sizeof l->v[0], "%s", sha);
}

static void shards_forget(struct sq *st)
{
    for (size_t i = 0; i < st->nshards; i++)
        st->shards[i].known = 0;
}

static int blob_path(const struct sq *st, const char *sha, char *buf, size_t len);

/* Unlinks the blob files listed (errors other than "already gone" logged;
 * nothing else to do about them). check: only those no blob row names any
 * more (a later upload of the same bytes in the same transaction took them
 * back). */
static void unlink_blobs(struct sq *st, struct shalist *l, int check)
{
    for (size_t i = 0; i < l->n; i++) {
        char path[4200];
        struct q q;
        if (check && q_start(st, S_BLOB_EXISTS, &q) == STORE_OK) {
            q_text(&q, l->v[i]);
            int rc = q_one_i64(&q, NULL);
            if (rc != STORE_NOT_FOUND)
                continue; /* still referenced (or unknown: keep the bytes) */
        }
        if (blob_path(st, l->v[i], path, sizeof path) == STORE_OK && unlink(path) != 0 && errno != ENOENT)
            fprintf(stderr, "store: unlink %s: %s\n", path, strerror(errno));
    }
    l->n = l->mark = 0;
}

/* Forgets the transaction's erasure work (after COMMIT, or a rollback). */
static void tx_reset(struct sq *st)
{
    st->ndirty = st->markdirty = 0;
    st->erased = st->markerased = 0;
    st->gone.n = st->gone.mark = 0;
    st->created.n = st->created.mark = 0;
}

static int sq_begin(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    tx_reset(st);
    return run0(st, S_BEGIN);
}

static int shard_optimize(struct sq *st, int64_t k);

/* After a commit that erased: copies the WAL into the database and truncates
 * it to 0 bytes, so the page images of the erased text that the WAL held
 * (the old versions of the pages) are gone. TRUNCATE waits (busy handler)
 * for readers still using the WAL; readers hold no snapshot between calls
 * (q_end), so that wait is short. */
static void checkpoint_truncate(struct sq *st)
{
    for (int i = 0; i < 3; i++) {
        int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        if (rc == SQLITE_OK)
            return;
        if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) {
            log_sqlite(st, "checkpoint after an erasure", rc);
            return;
        }
    }
    fprintf(stderr, "store: checkpoint after an erasure: readers kept the WAL busy; it is truncated at the next one\n");
}

/* Erasure, in order: the search shards a delete touched are rewritten
 * without the deleted entries (before COMMIT, in the transaction); COMMIT;
 * the WAL checkpointed and truncated; the blob files whose last reference
 * went unlinked (only now: a rollback would have needed them). With
 * secure_delete every freed cell and page was overwritten with zeros as it
 * was freed, so once this returns no file under the data directory holds
 * the erased text or bytes. */
static int sq_commit(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    for (size_t i = 0; i < st->ndirty; i++)
        if (shard_optimize(st, st->dirty[i]) != STORE_OK)
            return STORE_ERR; /* the writer rolls back */
    int rc = run0(st, S_COMMIT);
    if (rc != STORE_OK)
        return rc;
    if (st->erased)
        checkpoint_truncate(st);
    st->created.n = 0;
    unlink_blobs(st, &st->gone, 1);
    tx_reset(st);
    return STORE_OK;
}

/* Some errors (disk full, I/O) make SQLite roll the transaction back by
 * itself; rolling back again would only log a second, misleading error.
 * Blob files this transaction created are unlinked: no row names them. */
static int sq_rollback(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    int rc = STORE_OK;
    if (!sqlite3_get_autocommit(st->db))
        rc = run0(st, S_ROLLBACK);
    shards_forget(st);
    unlink_blobs(st, &st->created, 0);
    tx_reset(st);
    return rc;
}

static int sq_savepoint(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    st->markdirty = st->ndirty;
    st->markerased = st->erased;
    st->gone.mark = st->gone.n;
    st->created.mark = st->created.n;
    return run0(st, S_SAVEPOINT);
}

static int sq_release(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    return run0(st, S_RELEASE);
}

/* Undoes the job: and the erasure work it asked for, and the blob files it
 * created. */
static int sq_rollback_to(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    int rc = run0(st, S_ROLLBACK_TO);

    st->ndirty = st->markdirty;
    st->erased = st->markerased;
    st->gone.n = st->gone.mark;
    if (st->created.n > st->created.mark) {
        struct shalist tail = {st->created.v + st->created.mark, st->created.n - st->created.mark, 0, 0};
        unlink_blobs(st, &tail, 0);
        st->created.n = st->created.mark;
    }
    shards_forget(st);
    return rc ? rc : run0(st, S_RELEASE);
}

static int op_begin(struct sq *st)
{
    return run0(st, S_OP_SAVEPOINT);
}

/* Ends the store's own savepoint: keeps its changes when keep, else undoes
 * them. Returns rc, or the error of a failed release. */
static int op_end(struct sq *st, int rc, int keep)
{
    if (keep) {
        int r = run0(st, S_OP_RELEASE);
        if (r == STORE_OK)
            return rc;
        rc = r;
    }
    if (!sqlite3_get_autocommit(st->db) && run0(st, S_OP_ROLLBACK_TO) == STORE_OK)
        run0(st, S_OP_RELEASE);
    shards_forget(st);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Users.                                                               */

static int sq_user_create(struct store *st_, const char *username, const char *display_name,
                      const char *pwhash, int64_t now, json_t **user_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *user = NULL;
    struct q q;
    int rc;

    if (user_out)
        *user_out = NULL;
    if (!display_name)
        display_name = username;
    /* Built before the insert: a name jansson refuses is refused, not stored. */
    user = json_pack("{ss ss sI}", "username", username, "display_name", display_name, "created_at",
                     (json_int_t)now);
    if (!user)
        return STORE_BAD_REQUEST;
    if (q_start(st, S_USER_INSERT, &q)) {
        rc = STORE_ERR;
        goto fail;
    }
    q_text(&q, username);
    q_text(&q, display_name);
    q_text(&q, pwhash);
    q_i64(&q, now);
    rc = q_exec(&q);
    if (rc != STORE_OK)
        goto fail;
    json_object_set_new(user, "id", json_integer(sqlite3_last_insert_rowid(st->db)));
    if (user_out)
        *user_out = user;
    else
        json_decref(user);
    return STORE_OK;
fail:
    json_decref(user);
    return rc;
}

/* Reads the one row of S_USER_BY_NAME / S_USER_BY_ID. */
static int user_row(struct q *q, json_t **user_out, char **pwhash_out)
{
    int rc = q_step(q);

    if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
        goto done;
    }
    if (rc != SQLITE_ROW)
        goto done;
    rc = STORE_OK;
    if (user_out && !(*user_out = user_json(q->s, 0))) {
        rc = log_json(SQL[q->id].what);
        goto done;
    }
    if (pwhash_out)
        *pwhash_out = xstrdup(col_text(q->s, 4) ? col_text(q->s, 4) : "");
done:
    q_end(q);
    return rc;
}

static int sq_user_by_name(struct store *st_, const char *username, json_t **user_out, char **pwhash_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (user_out)
        *user_out = NULL;
    if (pwhash_out)
        *pwhash_out = NULL;
    if (q_start(st, S_USER_BY_NAME, &q))
        return STORE_ERR;
    q_text(&q, username);
    return user_row(&q, user_out, pwhash_out);
}

static int sq_user_by_id(struct store *st_, int64_t id, json_t **user_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (user_out)
        *user_out = NULL;
    if (q_start(st, S_USER_BY_ID, &q))
        return STORE_ERR;
    q_i64(&q, id);
    return user_row(&q, user_out, NULL);
}

/* prefix with LIKE's wildcards and the escape character itself escaped,
 * followed by the one wildcard we mean. Caller frees. */
static char *like_prefix(const char *prefix)
{
    size_t n = strlen(prefix);
    char *pat = xmalloc(2 * n + 2), *p = pat;

    for (size_t i = 0; i < n; i++) {
        if (prefix[i] == '%' || prefix[i] == '_' || prefix[i] == '\\')
            *p++ = '\\';
        *p++ = prefix[i];
    }
    *p++ = '%';
    *p = '\0';
    return pat;
}

static int sq_users_search(struct store *st_, const char *prefix, int limit, json_t **users_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *users = json_array();
    char *pat = NULL;
    struct q q;
    int rc = STORE_OK;

    *users_out = NULL;
    /* LIMIT -1 would mean "no limit" to SQLite. */
    if (limit <= 0)
        goto done;
    pat = like_prefix(prefix ? prefix : "");
    if (q_start(st, S_USER_SEARCH, &q)) {
        rc = STORE_ERR;
        goto done;
    }
    q_text(&q, pat);
    q_i64(&q, limit);
    rc = q_collect(&q, users, user_json, 0);
done:
    free(pat);
    if (rc != STORE_OK) {
        json_decref(users);
        return rc;
    }
    *users_out = users;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Refresh tokens.                                                      */

static int sq_refresh_insert(struct store *st_, int64_t user_id, const char *family,
                         const char *token_hash, int64_t expires_at, int64_t now)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_RT_INSERT, &q))
        return STORE_ERR;
    q_i64(&q, user_id);
    q_text(&q, family);
    q_text(&q, token_hash);
    q_i64(&q, now);
    q_i64(&q, expires_at);
    return q_exec(&q);
}

struct rt {
    int64_t id, user_id, expires_at;
    int revoked, replaced;
};

static int rt_lookup(struct sq *st, const char *hash, struct rt *t)
{
    struct q q;
    int rc;

    if (q_start(st, S_RT_BY_HASH, &q))
        return STORE_ERR;
    q_text(&q, hash);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        t->id = sqlite3_column_int64(q.s, 0);
        t->user_id = sqlite3_column_int64(q.s, 1);
        t->expires_at = sqlite3_column_int64(q.s, 2);
        t->revoked = sqlite3_column_int(q.s, 3);
        t->replaced = sqlite3_column_int(q.s, 4);
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

static int rt_revoke_family(struct sq *st, int64_t token_id, int64_t now)
{
    struct q q;

    if (q_start(st, S_RT_REVOKE_FAMILY, &q))
        return STORE_ERR;
    q_i64(&q, token_id);
    q_i64(&q, now);
    return q_exec(&q);
}

/* Inserts the successor of token t in its family and links t to it. */
static int rt_replace(struct sq *st, const struct rt *t, const char *new_hash,
                      int64_t new_expires_at, int64_t now)
{
    struct q q;
    int rc;

    if (q_start(st, S_RT_INSERT_NEXT, &q))
        return STORE_ERR;
    q_i64(&q, t->id);
    q_text(&q, new_hash);
    q_i64(&q, now);
    q_i64(&q, new_expires_at);
    rc = q_exec(&q);
    if (rc != STORE_OK)
        return rc;
    if (q_start(st, S_RT_SET_REPLACED, &q))
        return STORE_ERR;
    q_i64(&q, t->id);
    q_i64(&q, sqlite3_last_insert_rowid(st->db));
    return q_exec(&q);
}

/* Reuse is checked before revocation and expiry: a rotated token presented
 * again is theft, whatever else is true of it. */
static int rt_rotate(struct sq *st, const char *old_hash, const char *new_hash,
                     int64_t new_expires_at, int64_t now, int64_t *user_id_out)
{
    struct rt t = {0};
    int rc = rt_lookup(st, old_hash, &t);

    if (rc != STORE_OK)
        return rc;
    if (t.replaced) {
        rc = rt_revoke_family(st, t.id, now);
        return rc ? rc : STORE_REUSED;
    }
    if (t.revoked || t.expires_at <= now)
        return STORE_EXPIRED;
    rc = rt_replace(st, &t, new_hash, new_expires_at, now);
    if (rc == STORE_OK && user_id_out)
        *user_id_out = t.user_id;
    return rc;
}

static int sq_refresh_rotate(struct store *st_, const char *old_hash, const char *new_hash,
                         int64_t new_expires_at, int64_t now, int64_t *user_id_out)
{
    struct sq *st = (struct sq *)st_;
    int rc = op_begin(st);

    if (rc != STORE_OK)
        return rc;
    rc = rt_rotate(st, old_hash, new_hash, new_expires_at, now, user_id_out);
    /* REUSED keeps its write: the revocation of the family. */
    return op_end(st, rc, rc == STORE_OK || rc == STORE_REUSED);
}

static int sq_refresh_revoke(struct store *st_, const char *token_hash, int64_t now)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_RT_REVOKE, &q))
        return STORE_ERR;
    q_text(&q, token_hash);
    q_i64(&q, now);
    return q_exec(&q);
}

static int sq_refresh_prune(struct store *st_, int64_t now, int64_t rotated_before, int limit, int *deleted_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_RT_PRUNE, &q))
        return STORE_ERR;
    q_i64(&q, now);
    q_i64(&q, rotated_before);
    q_i64(&q, limit);
    int rc = q_exec(&q);
    if (rc == STORE_OK)
        *deleted_out = sqlite3_changes(st->db);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Conversations and members.                                           */

static int user_exists(struct sq *st, int64_t id)
{
    struct q q;

    if (q_start(st, S_USER_EXISTS, &q))
        return STORE_ERR;
    q_i64(&q, id);
    return q_one_i64(&q, NULL);
}

static int conv_insert(struct sq *st, const char *kind, const char *title, int64_t creator,
                       int64_t now, int64_t *conv_out)
{
    struct q q;
    int rc;

    if (q_start(st, S_CONV_INSERT, &q))
        return STORE_ERR;
    q_text(&q, kind);
    q_text(&q, title);
    q_i64(&q, creator);
    q_i64(&q, now);
    rc = q_exec(&q);
    if (rc == STORE_OK)
        *conv_out = sqlite3_last_insert_rowid(st->db);
    return rc;
}

/* Adds user to conv unless already there (*added_out 0 then; may be NULL). */
static int member_insert(struct sq *st, int64_t conv, int64_t user, const char *role, int64_t now,
                         int *added_out)
{
    struct q q;
    int rc;

    if (q_start(st, S_MEMBER_INSERT, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, user);
    q_text(&q, role);
    q_i64(&q, now);
    rc = q_exec(&q);
    if (rc == STORE_OK && added_out)
        *added_out = sqlite3_changes(st->db) > 0;
    return rc;
}

static int direct_find(struct sq *st, int64_t lo, int64_t hi, int64_t *conv_out)
{
    struct q q;

    if (q_start(st, S_DIRECT_FIND, &q))
        return STORE_ERR;
    q_i64(&q, lo);
    q_i64(&q, hi);
    return q_one_i64(&q, conv_out);
}

static int direct_insert(struct sq *st, int64_t a, int64_t b, int64_t lo, int64_t hi, int64_t now,
                         int64_t *conv_out)
{
    struct q q;
    int rc = conv_insert(st, "direct", NULL, a, now, conv_out);

    if (rc == STORE_OK && (rc = q_start(st, S_DIRECT_INSERT, &q)) == STORE_OK) {
        q_i64(&q, lo);
        q_i64(&q, hi);
        q_i64(&q, *conv_out);
        rc = q_exec(&q);
    }
    if (rc == STORE_OK)
        rc = member_insert(st, *conv_out, a, "member", now, NULL);
    if (rc == STORE_OK)
        rc = member_insert(st, *conv_out, b, "member", now, NULL);
    return rc;
}

static int sq_conv_create_direct(struct store *st_, int64_t a, int64_t b, int64_t now,
                             int64_t *conv_out, int *created_out)
{
    struct sq *st = (struct sq *)st_;
    int64_t lo = a < b ? a : b, hi = a < b ? b : a, conv = 0;
    int rc;

    *created_out = 0;
    if (a == b)
        return STORE_BAD_REQUEST;
    if ((rc = user_exists(st, b)) != STORE_OK || (rc = user_exists(st, a)) != STORE_OK)
        return rc;
    rc = direct_find(st, lo, hi, &conv);
    if (rc == STORE_OK) {
        *conv_out = conv;
        return STORE_OK;
    }
    if (rc != STORE_NOT_FOUND)
        return rc;
    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    rc = direct_insert(st, a, b, lo, hi, now, &conv);
    rc = op_end(st, rc, rc == STORE_OK);
    if (rc == STORE_OK) {
        *conv_out = conv;
        *created_out = 1;
    }
    return rc;
}

static int group_insert(struct sq *st, int64_t creator, const char *title, const int64_t *members,
                        size_t n, int64_t now, int64_t *conv_out)
{
    int rc = conv_insert(st, "group", title, creator, now, conv_out);

    if (rc == STORE_OK)
        rc = member_insert(st, *conv_out, creator, "owner", now, NULL);
    /* INSERT OR IGNORE skips duplicates and the creator (already owner). */
    for (size_t i = 0; rc == STORE_OK && i < n; i++)
        rc = member_insert(st, *conv_out, members[i], "member", now, NULL);
    return rc;
}

static int sq_conv_create_group(struct store *st_, int64_t creator, const char *title,
                            const int64_t *members, size_t n, int64_t now, int64_t *conv_out)
{
    struct sq *st = (struct sq *)st_;
    int64_t conv = 0;
    int rc;

    if (n && !members)
        return STORE_BAD_REQUEST;
    /* Every id is checked before anything is written, so an unknown one
     * leaves no trace even without the caller's savepoint. */
    if ((rc = user_exists(st, creator)) != STORE_OK)
        return rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = user_exists(st, members[i])) != STORE_OK)
            return rc;
    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    rc = group_insert(st, creator, title, members, n, now, &conv);
    rc = op_end(st, rc, rc == STORE_OK);
    if (rc == STORE_OK)
        *conv_out = conv;
    return rc;
}

/* Fills the "members" array of a conversation object. */
static int conv_members(struct sq *st, int64_t conv, json_t *obj)
{
    struct q q;

    if (q_start(st, S_CONV_MEMBERS, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    return q_collect(&q, json_object_get(obj, "members"), member_json, 0);
}

static int conv_get(struct sq *st, int64_t conv, int64_t viewer, json_t **conv_out)
{
    json_t *obj = NULL;
    struct mv2 last;
    struct q q;
    int rc;

    if (q_start(st, S_CONV_GET, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, viewer);
    rc = q_step(&q);
    if (rc == SQLITE_ROW && !(obj = conv_json(q.s, &last)))
        rc = log_json(SQL[q.id].what);
    q_end(&q);
    if (rc == SQLITE_DONE)
        return STORE_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return rc;
    rc = decorate(st, &last, 1, D_EACH, 0);
    if (rc == STORE_OK)
        rc = conv_members(st, conv, obj);
    if (rc != STORE_OK) {
        json_decref(obj);
        return rc;
    }
    *conv_out = obj;
    return STORE_OK;
}

/* The savepoint (a read transaction when none is open) gives both queries
 * one snapshot: a reader would otherwise see the writer's commits between
 * them. */
static int sq_conv_get(struct store *st_, int64_t conv, int64_t viewer, json_t **conv_out)
{
    struct sq *st = (struct sq *)st_;
    int rc;

    *conv_out = NULL;
    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    rc = op_end(st, conv_get(st, conv, viewer, conv_out), 1);
    if (rc != STORE_OK) {
        json_decref(*conv_out);
        *conv_out = NULL;
    }
    return rc;
}

/* The listed conversations, in order; index maps each id (as a decimal
 * string) to that conversation's "members" array. */
static int list_rows(struct sq *st, int64_t viewer, json_t *convs, json_t *index)
{
    struct mv2s last = {0};
    struct q q;
    int rc;

    if (q_start(st, S_CONV_LIST, &q))
        return STORE_ERR;
    q_i64(&q, viewer);
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        struct mv2 *x = mv2s_push(&last);
        json_t *obj = conv_json(q.s, x);
        char key[24];
        if (!obj) {
            last.n--;
            rc = log_json(SQL[q.id].what);
            break;
        }
        snprintf(key, sizeof key, "%lld", (long long)sqlite3_column_int64(q.s, 0));
        json_object_set(index, key, json_object_get(obj, "members"));
        json_array_append_new(convs, obj);
    }
    q_end(&q);
    if (rc != SQLITE_DONE) {
        mv2s_dispose(&last, 0);
        return rc;
    }
    /* the reactions and attachments of every listed last message: one query each */
    rc = decorate(st, last.v, last.n, D_VIEWER, viewer);
    mv2s_dispose(&last, 1);
    return rc;
}

static int list_members(struct sq *st, int64_t viewer, json_t *index)
{
    struct q q;
    int rc;

    if (q_start(st, S_LIST_MEMBERS, &q))
        return STORE_ERR;
    q_i64(&q, viewer);
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        json_t *members, *m;
        char key[24];
        snprintf(key, sizeof key, "%lld", (long long)sqlite3_column_int64(q.s, 0));
        members = json_object_get(index, key);
        if (!members)
            continue; /* cannot happen: both queries share one snapshot */
        if (!(m = member_json(q.s, 1))) {
            rc = log_json(SQL[q.id].what);
            break;
        }
        json_array_append_new(members, m);
    }
    q_end(&q);
    return rc == SQLITE_DONE ? STORE_OK : rc;
}

/* Two queries whatever the number of conversations: the conversation rows
 * (last message joined in), then every member of all of them; one snapshot
 * for both (see store_conv_get). */
static int sq_conv_list(struct store *st_, int64_t viewer, json_t **convs_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *convs = json_array(), *index = json_object();
    int rc;

    *convs_out = NULL;
    if ((rc = op_begin(st)) != STORE_OK)
        goto fail;
    rc = list_rows(st, viewer, convs, index);
    if (rc == STORE_OK)
        rc = list_members(st, viewer, index);
    rc = op_end(st, rc, 1);
    if (rc != STORE_OK)
        goto fail;
    json_decref(index);
    *convs_out = convs;
    return STORE_OK;
fail:
    json_decref(index);
    json_decref(convs);
    return rc;
}

const char *store_role_name(enum store_role r)
{
    return r == ROLE_OWNER ? "owner" : r == ROLE_ADMIN ? "admin" : "member";
}

enum store_role store_role_parse(const char *s)
{
    if (s && strcmp(s, "owner") == 0)
        return ROLE_OWNER;
    if (s && strcmp(s, "admin") == 0)
        return ROLE_ADMIN;
    return ROLE_MEMBER;
}

static int sq_member_ctx(struct store *st_, int64_t conv, int64_t user, int *direct, enum store_role *role)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    if (q_start(st, S_ACTOR_CTX, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, user);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        if (direct)
            *direct = sqlite3_column_int(q.s, 0);
        if (role)
            *role = store_role_parse(col_text(q.s, 1));
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

static int sq_member_insert(struct store *st_, int64_t conv, int64_t user, enum store_role role, int64_t now,
                            int *added_out)
{
    return member_insert((struct sq *)st_, conv, user, store_role_name(role), now, added_out);
}

/* Deletes the member and, if it was the owner, hands ownership on; both or
 * neither (the store's own savepoint). */
static int sq_member_delete(struct store *st_, int64_t conv, int64_t user, int pass_ownership)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    if ((rc = q_start(st, S_MEMBER_DELETE, &q)) == STORE_OK) {
        q_i64(&q, conv);
        q_i64(&q, user);
        rc = q_exec(&q);
    }
    if (rc == STORE_OK && sqlite3_changes(st->db) == 0)
        rc = STORE_NOT_FOUND;
    /* Nobody left: the UPDATE matches no row and the conversation stays. */
    if (rc == STORE_OK && pass_ownership && (rc = q_start(st, S_OWNER_TRANSFER, &q)) == STORE_OK) {
        q_i64(&q, conv);
        rc = q_exec(&q);
    }
    return op_end(st, rc, rc == STORE_OK);
}

static int sq_member_set_role(struct store *st_, int64_t conv, int64_t user, enum store_role role)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    if (q_start(st, S_MEMBER_SET_ROLE, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, user);
    q_text(&q, store_role_name(role));
    rc = q_exec(&q);
    if (rc == STORE_OK && sqlite3_changes(st->db) == 0)
        rc = STORE_NOT_FOUND;
    return rc;
}

static int sq_members(struct store *st_, int64_t conv, int64_t **ids_out, size_t *n_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_MEMBER_IDS, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    return q_ids(&q, ids_out, n_out);
}

static int sq_is_member(struct store *st_, int64_t conv, int64_t user)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_IS_MEMBER, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, user);
    return q_one_i64(&q, NULL);
}

static int sq_peers(struct store *st_, int64_t user, int64_t **ids_out, size_t *n_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_PEERS, &q))
        return STORE_ERR;
    q_i64(&q, user);
    return q_ids(&q, ids_out, n_out);
}

static int sq_user_convs(struct store *st_, int64_t user, int64_t **ids_out, size_t *n_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_USER_CONVS, &q))
        return STORE_ERR;
    q_i64(&q, user);
    return q_ids(&q, ids_out, n_out);
}

/* ------------------------------------------------------------------ */
/* Messages: the first four run in the writer's hot path.              */

static int sq_msg_by_client(struct store *st_, int64_t sender, const char *client_id,
                        int64_t *conv_out, int64_t *seq_out, int64_t *ts_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    if (q_start(st, S_MSG_BY_CLIENT, &q))
        return STORE_ERR;
    q_i64(&q, sender);
    q_text(&q, client_id);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        if (conv_out)
            *conv_out = sqlite3_column_int64(q.s, 0);
        if (seq_out)
            *seq_out = sqlite3_column_int64(q.s, 1);
        if (ts_out)
            *ts_out = sqlite3_column_int64(q.s, 2);
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

static int sq_conv_last_seq(struct store *st_, int64_t conv, int64_t *last_seq_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_CONV_LAST_SEQ, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    return q_one_i64(&q, last_seq_out);
}

/* CONFLICT: (sender, client id) is taken, a resend. A (conv, seq) collision
 * is a primary-key violation, not CONFLICT: it means a seq was used twice, a
 * bug worth the error log. */
static int msg_insert(struct sq *st, const struct store_send *m, int64_t id)
{
    struct q q;
    int rc;

    if (q_start(st, S_MSG_INSERT, &q))
        return STORE_ERR;
    q_i64(&q, m->conv);
    q_i64(&q, m->seq);
    q_i64(&q, m->sender);
    q_text(&q, m->client_id);
    q_textn(&q, m->body ? m->body : "", m->body ? m->body_len : 0);
    q_i64(&q, m->ts);
    q_i64(&q, id);
    q_i64(&q, m->reply_to);
    q_i64(&q, (int64_t)m->n_att);
    rc = q_exec(&q);
    return rc == STORE_OK || rc == STORE_CONFLICT ? rc : STORE_ERR;
}

/* After the inserts: the conversation's last_seq and activity. Reading
 * last_seq once and counting up is atomic here because BEGIN IMMEDIATE holds
 * SQLite's one write lock for the whole batch: no other writer, in this
 * process or another, runs between the read and this update. (A backend
 * with row locks and concurrent writers reserves with UPDATE ... last_seq =
 * last_seq + n RETURNING instead.) */
static int conv_set_last(struct sq *st, int64_t conv, int64_t last_seq, int64_t now)
{
    struct q q;
    int rc;

    if (q_start(st, S_CONV_ADVANCE, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, last_seq);
    q_i64(&q, now);
    rc = q_exec(&q);
    if (rc == STORE_OK && sqlite3_changes(st->db) == 0)
        rc = STORE_ERR; /* the conversation had members a moment ago */
    return rc == STORE_OK ? STORE_OK : STORE_ERR;
}

void store_batch_out_dispose(struct store_batch_out *out)
{
    for (size_t i = 0; i < out->n; i++)
        idlist_unref(out->v[i].members);
    free(out->v);
    out->v = NULL;
    out->n = 0;
}

struct idlist *store_batch_members(const struct store_batch_out *out, int64_t conv)
{
    for (size_t i = 0; i < out->n; i++)
        if (out->v[i].conv == conv)
            return out->v[i].members;
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Per conversation of one send_batch call: members (read once, sorted),
 * how many new messages, the next seq to hand out. */
struct bconv {
    int64_t conv;
    struct idlist *members;
    int64_t count, next;
};

struct bstate {
    struct bconv *v;
    size_t n, cap;
};

static struct bconv *bconv_get(struct sq *st, struct bstate *b, int64_t conv, int *rc)
{
    *rc = STORE_OK;
    for (size_t i = 0; i < b->n; i++)
        if (b->v[i].conv == conv)
            return &b->v[i];
    int64_t *ids;
    size_t n;
    struct q q;
    if (q_start(st, S_MEMBER_IDS, &q)) {
        *rc = STORE_ERR;
        return NULL;
    }
    q_i64(&q, conv);
    if (q_ids(&q, &ids, &n) != STORE_OK) {
        *rc = STORE_ERR;
        return NULL;
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 8;
        b->v = xrealloc(b->v, b->cap * sizeof *b->v);
    }
    struct bconv *c = &b->v[b->n++];
    memset(c, 0, sizeof *c);
    c->conv = conv;
    qsort(ids, n, sizeof *ids, cmp_id);
    c->members = idlist_new(ids, n);
    free(ids);
    return c;
}

static int bconv_has(const struct bconv *c, int64_t user)
{
    return bsearch(&user, c->members->ids, c->members->n, sizeof user, cmp_id) != NULL;
}

/* Sorting the batch by (sender, client id, position) puts resends inside one
 * batch next to their first occurrence. */
struct send_key {
    int64_t sender;
    const char *client_id;
    size_t i;
};

static int cmp_send(const void *a, const void *b)
{
    const struct send_key *x = a, *y = b;
    if (x->sender != y->sender)
        return x->sender < y->sender ? -1 : 1;
    int c = strcmp(x->client_id, y->client_id);
    if (c)
        return c;
    return (x->i > y->i) - (x->i < y->i);
}

/* first[i]: the index of the first send of the batch with i's (sender,
 * client id); i itself when it is the first. */
static void find_batch_resends(const struct store_send *v, size_t n, size_t *first)
{
    struct send_key *k = xmalloc((n ? n : 1) * sizeof *k);
    for (size_t i = 0; i < n; i++) {
        k[i] = (struct send_key){v[i].sender, v[i].client_id, i};
        first[i] = i;
    }
    qsort(k, n, sizeof *k, cmp_send);
    for (size_t j = 1; j < n; j++)
        if (k[j - 1].sender == k[j].sender && strcmp(k[j - 1].client_id, k[j].client_id) == 0)
            first[k[j].i] = first[k[j - 1].i];
    free(k);
}

static int sq_read_set(struct store *st_, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out);
static int fts_add(struct sq *st, int64_t id, int64_t conv, const char *body, size_t len);

enum { SEND_NEW = 1 };

/* Whether send m may go as it is: reply_to a seq of its conversation (last:
 * its last seq counting the batch's earlier sends), attachments the
 * sender's own and not yet attached. Checked before anything of the send is
 * written, so a refused send leaves no trace. OK, BAD_REQUEST (m->why set)
 * or ERR. */
static int send_check(struct sq *st, struct store_send *m, int64_t last)
{
    if (m->reply_to != 0 && (m->reply_to < 1 || m->reply_to > last)) {
        m->why = "reply_to is not a message of this conversation";
        return STORE_BAD_REQUEST;
    }
    if (m->n_att > STORE_MAX_ATTACH) {
        m->why = "too many attachments";
        return STORE_BAD_REQUEST;
    }
    for (size_t k = 0; k < m->n_att; k++) {
        int64_t owner = 0;
        struct q q;
        int rc;
        if (!m->att || !m->att[k]) {
            m->why = "unknown attachment";
            return STORE_BAD_REQUEST;
        }
        for (size_t j = 0; j < k; j++)
            if (strcmp(m->att[j], m->att[k]) == 0) {
                m->why = "an attachment is listed twice";
                return STORE_BAD_REQUEST;
            }
        if (q_start(st, S_ATT_CHECK, &q))
            return STORE_ERR;
        q_text(&q, m->att[k]);
        rc = q_step(&q);
        if (rc == SQLITE_ROW) {
            owner = sqlite3_column_int64(q.s, 0);
            if (sqlite3_column_int(q.s, 1))
                owner = -1;
        }
        q_end(&q);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return STORE_ERR;
        /* someone else's upload is as unknown as a missing one: no leak */
        if (rc == SQLITE_DONE || (owner != m->sender && owner != -1)) {
            m->why = "unknown attachment";
            return STORE_BAD_REQUEST;
        }
        if (owner == -1) {
            m->why = "attachment already attached to a message";
            return STORE_BAD_REQUEST;
        }
    }
    return STORE_OK;
}

/* Attaches m's uploads to the message just stored, in the order given, and
 * returns their objects in m->att_out. */
static int send_attach(struct sq *st, struct store_send *m)
{
    json_t *arr = json_array();

    for (size_t k = 0; k < m->n_att; k++) {
        struct q q;
        int rc;
        if (q_start(st, S_ATT_ATTACH, &q))
            goto fail;
        q_text(&q, m->att[k]);
        q_i64(&q, m->conv);
        q_i64(&q, m->seq);
        q_i64(&q, (int64_t)k);
        if (q_exec(&q) != STORE_OK || q_start(st, S_ATT_ROW, &q))
            goto fail;
        q_text(&q, m->att[k]);
        rc = q_step(&q);
        json_t *a = rc == SQLITE_ROW ? rows_attachment(col_text(q.s, 0), col_text(q.s, 1), col_text(q.s, 2),
                                                       sqlite3_column_int64(q.s, 3))
                                     : NULL;
        q_end(&q);
        if (!a) {
            if (rc == SQLITE_ROW)
                log_json(SQL[S_ATT_ROW].what);
            goto fail;
        }
        json_array_append_new(arr, a);
    }
    m->att_out = arr;
    return STORE_OK;
fail:
    json_decref(arr);
    return STORE_ERR;
}

/* See store.h. SQLite's way: membership from the members read once per
 * conversation, the insert first (the unique key on (sender, client id)
 * finds a resend of a committed send, and only then is the original looked
 * up: one statement per new message), seqs counted up from last_seq read
 * once per conversation (atomic under BEGIN IMMEDIATE, see conv_set_last).
 * A failed insert does not abort an SQLite transaction, so this is safe
 * here; a backend where it would (PostgreSQL) looks resends up first. */
struct pos_key {
    int64_t conv, sender;
    size_t i;
};

static int cmp_pos_key(const void *a, const void *b)
{
    const struct pos_key *x = a, *y = b;
    if (x->conv != y->conv)
        return x->conv < y->conv ? -1 : 1;
    if (x->sender != y->sender)
        return x->sender < y->sender ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static int sq_send_batch(struct store *st_, struct store_send *v, size_t n, int64_t now,
                         struct store_batch_out *out)
{
    struct sq *st = (struct sq *)st_;
    struct bstate b = {0};
    size_t *first = xmalloc((n ? n : 1) * sizeof *first);
    uint8_t *fresh = xcalloc(n ? n : 1, 1);
    int64_t next_id = 0; /* the id of the next new message, read at the first one */
    int rc = STORE_OK;

    for (size_t i = 0; i < n; i++) {
        v[i].why = NULL;
        v[i].att_out = NULL;
    }
    find_batch_resends(v, n, first);
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        struct store_send *m = &v[i];
        m->dup = 0;
        m->rc = STORE_OK;
        if (first[i] != i)
            continue; /* settled below, from its first occurrence */
        struct bconv *c = bconv_get(st, &b, m->conv, &rc);
        if (!c)
            break;
        if (!bconv_has(c, m->sender)) {
            /* a resend answers with the original, wherever it went */
            int r = sq_msg_by_client(st_, m->sender, m->client_id, &m->conv, &m->seq, &m->ts);
            if (r == STORE_OK)
                m->dup = 1;
            else if (r == STORE_NOT_FOUND)
                m->rc = STORE_NOT_FOUND;
            else
                rc = STORE_ERR;
            continue;
        }
        if (m->n_att > 0) {
            /* a resend answers dup before its attachments (attached by the
             * original) are checked */
            int r = sq_msg_by_client(st_, m->sender, m->client_id, &m->conv, &m->seq, &m->ts);
            if (r == STORE_OK) {
                m->dup = 1;
                continue;
            }
            if (r != STORE_NOT_FOUND) {
                rc = STORE_ERR;
                break;
            }
        }
        if (!c->next) { /* the first new message of this conversation in this call */
            int64_t last = 0;
            if (sq_conv_last_seq(st_, c->conv, &last) != STORE_OK) {
                rc = STORE_ERR;
                break;
            }
            c->next = last + 1;
        }
        int r = send_check(st, m, c->next - 1);
        if (r == STORE_ERR) {
            rc = STORE_ERR;
            break;
        }
        if (r != STORE_OK) {
            m->rc = r;
            continue;
        }
        if (!next_id) {
            struct q q;
            if (q_start(st, S_MAX_ID, &q) || q_one_i64(&q, &next_id) != STORE_OK) {
                rc = STORE_ERR;
                break;
            }
            next_id++;
        }
        m->seq = c->next;
        m->ts = now;
        r = msg_insert(st, m, next_id);
        if (r == STORE_CONFLICT) { /* the unique key: a resend of a committed send */
            if (sq_msg_by_client(st_, m->sender, m->client_id, &m->conv, &m->seq, &m->ts) != STORE_OK)
                rc = STORE_ERR;
            m->dup = 1;
            continue;
        }
        if (r != STORE_OK || fts_add(st, next_id, m->conv, m->body ? m->body : "", m->body ? m->body_len : 0) ||
            (m->n_att && send_attach(st, m))) {
            rc = STORE_ERR;
            break;
        }
        next_id++;
        c->next++;
        c->count++;
        fresh[i] = SEND_NEW;
    }
    for (size_t k = 0; k < b.n && rc == STORE_OK; k++)
        if (b.v[k].count)
            rc = conv_set_last(st, b.v[k].conv, b.v[k].next - 1, now);
    /* each sender's read position moves to its last new message: the new
     * sends sorted by (conv, sender, index), the last of each run */
    size_t nnew = 0;
    struct pos_key *pk = xmalloc((n ? n : 1) * sizeof *pk);
    for (size_t i = 0; i < n; i++)
        if (fresh[i] == SEND_NEW)
            pk[nnew++] = (struct pos_key){v[i].conv, v[i].sender, i};
    qsort(pk, nnew, sizeof *pk, cmp_pos_key);
    for (size_t k = 0; k < nnew && rc == STORE_OK; k++) {
        if (k + 1 < nnew && pk[k + 1].conv == pk[k].conv && pk[k + 1].sender == pk[k].sender)
            continue;
        const struct store_send *m = &v[pk[k].i];
        int64_t pos;
        int r = sq_read_set(st_, m->conv, m->sender, m->seq, &pos);
        if (r != STORE_OK && r != STORE_NOT_FOUND)
            rc = STORE_ERR;
    }
    free(pk);
    for (size_t i = 0; i < n; i++) {
        if (first[i] == i)
            continue;
        const struct store_send *o = &v[first[i]];
        v[i].rc = o->rc;
        v[i].dup = o->rc == STORE_OK;
        v[i].conv = o->rc == STORE_OK ? o->conv : v[i].conv;
        v[i].seq = o->seq;
        v[i].ts = o->ts;
        v[i].why = o->why;
    }
    for (size_t i = 0; i < n && rc != STORE_OK; i++) {
        json_decref(v[i].att_out); /* the batch rolls back */
        v[i].att_out = NULL;
    }
    if (rc == STORE_OK && out) {
        for (size_t k = 0; k < b.n; k++) {
            if (!b.v[k].count)
                continue;
            out->v = xrealloc(out->v, (out->n + 1) * sizeof *out->v);
            out->v[out->n].conv = b.v[k].conv;
            out->v[out->n++].members = idlist_ref(b.v[k].members);
        }
    }
    for (size_t k = 0; k < b.n; k++)
        idlist_unref(b.v[k].members);
    free(b.v);
    free(first);
    free(fresh);
    return rc == STORE_OK ? STORE_OK : STORE_ERR;
}

static int sq_read_set(struct store *st_, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;

    if (q_start(st, S_READ_SET, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, user);
    q_i64(&q, seq);
    return q_one_i64(&q, pos_out);
}

static int sq_msg_page(struct store *st_, int64_t conv, int64_t before, int64_t after, int limit,
                   json_t **msgs_out, int *has_more_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *msgs;
    struct q q;
    int rc;

    *msgs_out = NULL;
    *has_more_out = 0;
    if (limit < 1)
        return STORE_BAD_REQUEST;
    /* before wins over after; neither is "before infinity". */
    if (q_start(st, before <= 0 && after >= 0 ? S_MSG_AFTER : S_MSG_BEFORE, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, before > 0 ? before : after >= 0 ? after : INT64_MAX);
    /* One row more than asked tells whether there is more. */
    q_i64(&q, (int64_t)limit + 1);
    msgs = json_array();
    /* the page and its reactions and attachments in one snapshot */
    if ((rc = op_begin(st)) != STORE_OK) {
        q_end(&q);
        json_decref(msgs);
        return rc;
    }
    rc = op_end(st, collect_msgs(&q, conv, msgs, limit, has_more_out, D_RANGE), 1);
    if (rc != STORE_OK) {
        json_decref(msgs);
        *has_more_out = 0;
        return rc;
    }
    *msgs_out = msgs;
    return STORE_OK;
}

static json_t *summary_json(sqlite3_stmt *s, int col)
{
    json_t *o = rows_summary(sqlite3_column_int64(s, col), sqlite3_column_int64(s, col + 1),
                             sqlite3_column_int64(s, col + 2));
    if (o)
        json_object_set_new(o, "last_mod", json_integer(sqlite3_column_int64(s, col + 3)));
    return o;
}

static int sq_sync_summary(struct store *st_, int64_t user, json_t **out)
{
    struct sq *st = (struct sq *)st_;
    json_t *arr = json_array();
    struct q q;
    int rc;

    *out = NULL;
    if (q_start(st, S_SYNC_SUMMARY, &q)) {
        json_decref(arr);
        return STORE_ERR;
    }
    q_i64(&q, user);
    rc = q_collect(&q, arr, summary_json, 0);
    if (rc != STORE_OK) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* A conversation for a push to every member: one snapshot, one row of the
 * conversation and its members, one row per member's read position. */

static int view_positions(struct sq *st, int64_t conv, struct store_pos **pos_out, size_t *n_out)
{
    struct q q;
    size_t n = 0, cap = 8;
    struct store_pos *v = xmalloc(cap * sizeof *v);
    int rc;

    if (q_start(st, S_MEMBER_POS, &q)) {
        free(v);
        return STORE_ERR;
    }
    q_i64(&q, conv);
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        if (n == cap)
            v = xrealloc(v, (cap *= 2) * sizeof *v);
        v[n].user = sqlite3_column_int64(q.s, 0);
        v[n++].last_read_seq = sqlite3_column_int64(q.s, 1);
    }
    q_end(&q);
    if (rc != SQLITE_DONE) {
        free(v);
        return rc;
    }
    *pos_out = v;
    *n_out = n;
    return STORE_OK;
}

static int view_shared(struct sq *st, int64_t conv, json_t **shared_out)
{
    json_t *obj = NULL;
    struct q q;
    int rc;

    struct mv2 last;
    if (q_start(st, S_CONV_SHARED, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    rc = q_step(&q);
    if (rc == SQLITE_ROW && !(obj = conv_shared_json(q.s, &last)))
        rc = log_json(SQL[q.id].what);
    q_end(&q);
    if (rc == SQLITE_DONE)
        return STORE_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return rc;
    rc = decorate(st, &last, 1, D_EACH, 0);
    if (rc != STORE_OK || (rc = conv_members(st, conv, obj)) != STORE_OK) {
        json_decref(obj);
        return rc;
    }
    *shared_out = obj;
    return STORE_OK;
}

static int sq_conv_view(struct store *st_, int64_t conv, json_t **shared_out, struct store_pos **pos_out,
                        size_t *n_out)
{
    struct sq *st = (struct sq *)st_;
    int rc;

    *shared_out = NULL;
    *pos_out = NULL;
    *n_out = 0;
    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    rc = view_shared(st, conv, shared_out);
    if (rc == STORE_OK)
        rc = view_positions(st, conv, pos_out, n_out);
    if (rc == STORE_OK && *n_out == 0)
        rc = STORE_NOT_FOUND;
    rc = op_end(st, rc, 1);
    if (rc != STORE_OK) {
        json_decref(*shared_out);
        free(*pos_out);
        *shared_out = NULL;
        *pos_out = NULL;
        *n_out = 0;
    }
    return rc;
}

static int sq_user_exists(struct store *st_, int64_t id)
{
    return user_exists((struct sq *)st_, id);
}

/* ------------------------------------------------------------------ */
/* Search: the FTS5 index, sharded.                                     */
/*
 * Erasure needs the search index to forget a deleted message's words, and
 * SQLite 3.40 has no FTS5 secure-delete (3.44): a delete only appends a
 * "deleted" marker, and the words stay in the older segments until a merge
 * that includes the oldest one rewrites them. 'optimize' is that merge, but
 * over a whole index it costs as much as the index. So the index is split
 * into shards by message id: search_<k> holds the messages with id in
 * [k << SHARD_BITS, (k + 1) << SHARD_BITS), created when its first message
 * arrives (and recorded in search_shards). A transaction that deletes
 * optimizes the shards it touched before its COMMIT (sq_commit): the cost of
 * a delete is bounded by one shard (16384 messages), not by the index.
 *
 * Each shard is contentless (content=''): it keeps no copy of the text,
 * and keeps no token counts (columnsize=0: one B-tree insert less per
 * message; they only serve ranking, and hits come newest first). Shards
 * made before that keep their counts, which nothing reads. A message's entry is removed with FTS5's 'delete' command
 * and the exact text it was indexed with (the stored body, read before the
 * change). Column c holds one token, "c<conv id>", so a search can ask FTS5
 * itself for "these words in these conversations": the index intersects the
 * short doclists of the caller's conversations with the words', instead of
 * walking every match of a common word and dropping those in other
 * conversations. The conversation tokens are matched in any column: a
 * column filter on them made FTS5 read their position lists, 4x slower with
 * a prefix word over 1M messages; a body that happens to hold a word like
 * "c12" is dropped by the join, which checks the message's conversation and
 * the caller's membership for every hit anyway. A message is indexed iff
 * it is not deleted.
 *
 * A search walks the shards newest first with the same statement shape,
 * each newest first (ORDER BY rowid DESC is FTS5's own order), and stops as
 * soon as it has a page and one more hit; the cursor is the message id.
 */

#define SHARD_BITS 14
#define SEARCH_OR_MAX 64 /* conversations named in the FTS5 query; more: filtered by the join */

enum { SH_INS, SH_DEL, SH_OPT, SH_FIND };

static struct shard *shard_slot(struct sq *st, int64_t k)
{
    if ((size_t)k >= st->nshards) {
        size_t n = (size_t)k + 16;
        st->shards = xrealloc(st->shards, n * sizeof *st->shards);
        memset(st->shards + st->nshards, 0, (n - st->nshards) * sizeof *st->shards);
        st->nshards = n;
    }
    return &st->shards[k];
}

/* The shard's statement `which`, prepared on first use. */
static sqlite3_stmt *shard_stmt(struct sq *st, int64_t k, int which)
{
    struct shard *sh = shard_slot(st, k);
    sqlite3_stmt **slot = which == SH_INS ? &sh->ins : which == SH_DEL ? &sh->del : which == SH_OPT ? &sh->opt : &sh->find;
    long long K = (long long)k;
    char sql[640];

    if (*slot)
        return *slot;
    switch (which) {
    case SH_INS:
        snprintf(sql, sizeof sql, "INSERT INTO search_%lld(rowid, body, c) VALUES (?1, ?2, ?3)", K);
        break;
    case SH_DEL:
        snprintf(sql, sizeof sql,
                 "INSERT INTO search_%lld(search_%lld, rowid, body, c) VALUES ('delete', ?1, ?2, ?3)", K, K);
        break;
    case SH_OPT:
        snprintf(sql, sizeof sql, "INSERT INTO search_%lld(search_%lld) VALUES ('optimize')", K, K);
        break;
    default:
        /* CROSS JOIN: FTS5 drives, in its rowid order; a hit costs one
         * lookup by id and one membership probe. */
        snprintf(sql, sizeof sql,
                 "SELECT m.id, m.conv_id, m.seq, m.sender_id, m.body, m.created_at"
                 " FROM search_%lld CROSS JOIN messages m ON m.id = search_%lld.rowid"
                 " WHERE search_%lld MATCH ?1 AND search_%lld.rowid < ?2 AND m.deleted = 0"
                 " AND (?5 = 0 OR m.conv_id = ?5)"
                 " AND EXISTS (SELECT 1 FROM members v WHERE v.conv_id = m.conv_id AND v.user_id = ?3)"
                 " ORDER BY search_%lld.rowid DESC LIMIT ?4",
                 K, K, K, K, K);
        break;
    }
    int rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot, NULL);
    if (rc != SQLITE_OK) {
        log_sqlite(st, "prepare a search shard statement", rc);
        sqlite3_finalize(*slot);
        *slot = NULL;
    }
    return *slot;
}

/* Creates shard k unless it exists (writer). */
static int shard_ensure(struct sq *st, int64_t k)
{
    struct shard *sh = shard_slot(st, k);
    struct q q;
    int rc;

    if (sh->known)
        return STORE_OK;
    if (q_start(st, S_SHARD_KNOWN, &q))
        return STORE_ERR;
    q_i64(&q, k);
    rc = q_one_i64(&q, NULL);
    if (rc == STORE_NOT_FOUND) {
        char sql[256];
        snprintf(sql, sizeof sql,
                 "CREATE VIRTUAL TABLE search_%lld USING fts5(body, c, content='', columnsize=0,"
                 " tokenize='unicode61 remove_diacritics 2')",
                 (long long)k);
        rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            log_sqlite(st, "create a search shard", rc);
            return STORE_ERR;
        }
        if (q_start(st, S_SHARD_ADD, &q))
            return STORE_ERR;
        q_i64(&q, k);
        rc = q_exec(&q);
    }
    if (rc == STORE_OK)
        sh->known = 1;
    return rc;
}

/* Runs the shard's insert or delete of one entry. */
static int fts_entry(struct sq *st, int which, int64_t id, int64_t conv, const char *body, size_t len)
{
    int64_t k = id >> SHARD_BITS;
    char c[32];
    sqlite3_stmt *s;
    int rc;

    if (shard_ensure(st, k) != STORE_OK || !(s = shard_stmt(st, k, which)))
        return STORE_ERR;
    snprintf(c, sizeof c, "c%lld", (long long)conv);
    rc = sqlite3_bind_int64(s, 1, id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text64(s, 2, body, len, SQLITE_STATIC, SQLITE_UTF8);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(s, 3, c, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        log_sqlite(st, which == SH_INS ? "index a message" : "unindex a message", rc);
        return STORE_ERR;
    }
    return STORE_OK;
}

static int fts_add(struct sq *st, int64_t id, int64_t conv, const char *body, size_t len)
{
    return fts_entry(st, SH_INS, id, conv, body, len);
}

/* Removes the entry, and marks its shard for the 'optimize' that makes the
 * removal real (sq_commit). */
static int fts_del(struct sq *st, int64_t id, int64_t conv, const char *body, size_t len)
{
    int64_t k = id >> SHARD_BITS;
    int rc = fts_entry(st, SH_DEL, id, conv, body, len);

    if (rc != STORE_OK)
        return rc;
    for (size_t i = 0; i < st->ndirty; i++)
        if (st->dirty[i] == k)
            return STORE_OK;
    if (st->ndirty == st->capdirty) {
        st->capdirty = st->capdirty ? st->capdirty * 2 : 8;
        st->dirty = xrealloc(st->dirty, st->capdirty * sizeof *st->dirty);
    }
    st->dirty[st->ndirty++] = k;
    return STORE_OK;
}

static int shard_optimize(struct sq *st, int64_t k)
{
    sqlite3_stmt *s = shard_stmt(st, k, SH_OPT);
    int rc;

    if (!s)
        return STORE_ERR;
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        log_sqlite(st, "optimize a search shard", rc);
        return STORE_ERR;
    }
    return STORE_OK;
}

/* Migration 002: indexes the messages stored before it. The shards are
 * created first: no table is created while the read of messages is open. */
static int search_backfill(struct sq *st)
{
    int64_t max = 0;
    struct q q;
    int rc;

    if (q_start(st, S_MAX_ID, &q) || q_one_i64(&q, &max) != STORE_OK)
        return STORE_ERR;
    for (int64_t k = 0; max > 0 && k <= max >> SHARD_BITS; k++)
        if (shard_ensure(st, k) != STORE_OK)
            return STORE_ERR;
    if (q_start(st, S_BACKFILL, &q))
        return STORE_ERR;
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        if (fts_add(st, sqlite3_column_int64(q.s, 0), sqlite3_column_int64(q.s, 1), col_text(q.s, 2),
                    (size_t)sqlite3_column_bytes(q.s, 2)) != STORE_OK) {
            rc = STORE_ERR;
            break;
        }
    }
    q_end(&q);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERR;
}

/* Appends s as an FTS5 string: in double quotes, a quote doubled. */
static void fts_quote(struct buf *b, const char *s)
{
    buf_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"')
            buf_append(b, "\"", 1);
        buf_append(b, s, 1);
    }
    buf_append(b, "\"", 1);
}

/* The MATCH expression: every word in body (the last as a prefix), and
 * when given, one of the conversations in c. */
static void fts_query(struct buf *b, const char *const *words, size_t nwords, const int64_t *convs, size_t nconvs)
{
    if (nconvs) {
        buf_append(b, "(", 1);
        for (size_t i = 0; i < nconvs; i++) {
            char c[40];
            snprintf(c, sizeof c, "%s\"c%lld\"", i ? " OR " : "", (long long)convs[i]);
            buf_append(b, c, strlen(c));
        }
        buf_append(b, ") AND ", 6);
    }
    buf_append(b, "body : (", 8);
    for (size_t i = 0; i < nwords; i++) {
        if (i)
            buf_append(b, " AND ", 5);
        fts_quote(b, words[i]);
        if (i == nwords - 1)
            buf_append(b, "*", 1);
    }
    buf_append(b, ")", 2); /* with the NUL */
}

/* Hits of shard k into results, at most want; ids[*got] gets each one's id. */
static int search_shard(struct sq *st, int64_t k, const char *match, int64_t before, int64_t user, int64_t conv,
                        int want, json_t *results, int *got, int64_t *ids)
{
    sqlite3_stmt *s = shard_stmt(st, k, SH_FIND);
    int rc;

    if (!s)
        return STORE_ERR;
    rc = sqlite3_bind_text(s, 1, match, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 2, before);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 3, user);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 4, want);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 5, conv);
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW)
            break;
        json_t *h = rows_search_hit(sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2),
                                    sqlite3_column_int64(s, 3), col_text(s, 4), (size_t)sqlite3_column_bytes(s, 4),
                                    sqlite3_column_int64(s, 5));
        if (!h) {
            log_json("search hit");
            rc = SQLITE_ERROR;
            break;
        }
        json_array_append_new(results, h);
        ids[(*got)++] = sqlite3_column_int64(s, 0);
    }
    if (rc != SQLITE_DONE)
        log_sqlite(st, "search", rc);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? STORE_OK : STORE_ERR;
}

static int search_run(struct sq *st, int64_t user, int64_t conv, const char *const *words, size_t nwords,
                      int64_t before, int limit, json_t *results, int64_t *next_out)
{
    int64_t *convs = NULL, *shards = NULL, *ids;
    size_t nconvs = 0, nshards = 0;
    struct buf b;
    struct q q;
    int rc, got = 0;

    if (conv > 0) {
        convs = xmalloc(sizeof *convs);
        convs[0] = conv;
        nconvs = 1;
    } else {
        if (q_start(st, S_USER_CONVS, &q))
            return STORE_ERR;
        q_i64(&q, user);
        if ((rc = q_ids(&q, &convs, &nconvs)) != STORE_OK)
            return rc;
        if (!nconvs) {
            free(convs);
            return STORE_OK; /* in no conversation: nothing to find */
        }
    }
    if (q_start(st, S_SHARDS, &q)) {
        free(convs);
        return STORE_ERR;
    }
    q_i64(&q, before > 0 ? (before - 1) >> SHARD_BITS : INT64_MAX);
    if ((rc = q_ids(&q, &shards, &nshards)) != STORE_OK) {
        free(convs);
        return rc;
    }
    buf_init(&b);
    ids = xmalloc(((size_t)limit + 1) * sizeof *ids);
    /* a user in very many conversations: the query would be longer than the
     * index walk it saves; the membership probe of the join filters */
    fts_query(&b, words, nwords, convs, nconvs <= SEARCH_OR_MAX ? nconvs : 0);
    for (size_t i = 0; i < nshards && got <= limit && rc == STORE_OK; i++)
        rc = search_shard(st, shards[i], b.data, before > 0 ? before : INT64_MAX, user, conv, limit + 1 - got, results,
                          &got, ids);
    if (rc == STORE_OK && got > limit) {
        /* the extra hit only said there is more */
        json_array_remove(results, json_array_size(results) - 1);
        *next_out = ids[limit - 1];
    }
    buf_dispose(&b);
    free(ids);
    free(convs);
    free(shards);
    return rc;
}

static int sq_search(struct store *st_, int64_t user, int64_t conv, const char *const *words, size_t nwords,
                     int64_t before, int limit, json_t **results_out, int64_t *next_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *results = json_array();
    int rc;

    *results_out = NULL;
    *next_out = 0;
    if (limit < 1 || (nwords && !words)) {
        json_decref(results);
        return STORE_BAD_REQUEST;
    }
    for (size_t i = 0; i < nwords; i++)
        if (!words[i] || !words[i][0]) {
            json_decref(results);
            return STORE_BAD_REQUEST;
        }
    if (nwords == 0) {
        *results_out = results;
        return STORE_OK;
    }
    /* one snapshot for the shards, the memberships and the hits */
    if ((rc = op_begin(st)) != STORE_OK) {
        json_decref(results);
        return rc;
    }
    rc = op_end(st, search_run(st, user, conv, words, nwords, before, limit, results, next_out), 1);
    if (rc != STORE_OK) {
        json_decref(results);
        *next_out = 0;
        return rc;
    }
    *results_out = results;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Changes to messages.                                                 */

/* A write of the store's own: inside the caller's transaction, a savepoint
 * (op_begin); with none open, a transaction of its own, committed by
 * sq_commit so its erasure work (optimize, checkpoint, unlinks) is done.
 * The erasure work lists are put back as they were if it is undone. */
struct txw {
    int own;
    size_t ndirty, ngone, ncreated;
    int erased;
};

static int tx_enter(struct sq *st, struct txw *t)
{
    t->own = sqlite3_get_autocommit(st->db);
    t->ndirty = st->ndirty;
    t->ngone = st->gone.n;
    t->ncreated = st->created.n;
    t->erased = st->erased;
    return t->own ? sq_begin(&st->base) : op_begin(st);
}

static int tx_leave(struct sq *st, struct txw *t, int rc, int keep)
{
    if (t->own) {
        if (keep) {
            int r = sq_commit(&st->base);
            if (r == STORE_OK)
                return rc;
            rc = r;
        }
        sq_rollback(&st->base);
        return rc;
    }
    rc = op_end(st, rc, keep); /* a failed release rolls back too */
    if (keep && rc == STORE_OK)
        return STORE_OK;
    st->ndirty = t->ndirty;
    st->gone.n = t->ngone;
    st->erased = t->erased;
    if (st->created.n > t->ncreated) {
        struct shalist tail = {st->created.v + t->ncreated, st->created.n - t->ncreated, 0, 0};
        unlink_blobs(st, &tail, 0);
        st->created.n = t->ncreated;
    }
    return rc;
}

static int sq_msg_facts(struct store *st_, int64_t conv, int64_t seq, struct store_msg_facts *out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    memset(out, 0, sizeof *out);
    if (q_start(st, S_MSG_FACTS, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, seq);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        out->sender = sqlite3_column_int64(q.s, 0);
        out->deleted = sqlite3_column_int(q.s, 1);
        out->mod = sqlite3_column_int64(q.s, 2);
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

static int sq_msg_get(struct store *st_, int64_t conv, int64_t seq, json_t **msg_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *arr = json_array();
    struct q q;
    int rc;

    *msg_out = NULL;
    if ((rc = op_begin(st)) != STORE_OK) {
        json_decref(arr);
        return rc;
    }
    if (q_start(st, S_MSG_ONE, &q) == STORE_OK) {
        q_i64(&q, conv);
        q_i64(&q, seq);
        rc = collect_msgs(&q, conv, arr, -1, NULL, D_EACH);
    } else {
        rc = STORE_ERR;
    }
    rc = op_end(st, rc, 1);
    if (rc == STORE_OK && json_array_size(arr) == 0)
        rc = STORE_NOT_FOUND;
    if (rc == STORE_OK)
        *msg_out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return rc;
}

static int take_mod(struct sq *st, int64_t conv, int64_t *mod)
{
    struct q q;
    int rc;

    if (q_start(st, S_MOD_NEXT, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    rc = q_one_i64(&q, mod);
    return rc == STORE_OK ? STORE_OK : STORE_ERR; /* the message exists: so does its conversation */
}

/* Drops one reference to a blob; the last one deletes its row and lists its
 * file for unlinking after the commit. */
static int blob_unref(struct sq *st, const char *sha)
{
    struct q q;
    int rc;

    if (q_start(st, S_BLOB_UNREF, &q))
        return STORE_ERR;
    q_text(&q, sha);
    if ((rc = q_exec(&q)) != STORE_OK)
        return rc;
    if (sqlite3_changes(st->db) > 0)
        return STORE_OK;
    if (q_start(st, S_BLOB_DELETE, &q))
        return STORE_ERR;
    q_text(&q, sha);
    if ((rc = q_exec(&q)) != STORE_OK)
        return rc;
    if (sqlite3_changes(st->db) > 0)
        shalist_add(&st->gone, sha);
    return STORE_OK;
}

/* Deletes the attachment rows the query q (bound; rows: id, sha256) returns,
 * and their references to blobs. *n_out: how many. */
static int att_delete_rows(struct sq *st, struct q *q, int *n_out)
{
    struct {
        char *id;
        char sha[65];
    } *v = NULL;
    size_t n = 0, cap = 0;
    int rc;

    while ((rc = q_step(q)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            v = xrealloc(v, cap * sizeof *v);
        }
        v[n].id = xstrdup(col_text(q->s, 0));
        snprintf(v[n].sha, sizeof v[n].sha, "%s", col_text(q->s, 1));
        n++;
    }
    q_end(q);
    rc = rc == SQLITE_DONE ? STORE_OK : rc;
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        struct q d;
        if (q_start(st, S_ATT_DELETE, &d)) {
            rc = STORE_ERR;
            break;
        }
        q_text(&d, v[i].id);
        rc = q_exec(&d);
        if (rc == STORE_OK)
            rc = blob_unref(st, v[i].sha);
    }
    for (size_t i = 0; i < n; i++)
        free(v[i].id);
    free(v);
    if (n_out)
        *n_out = (int)n;
    return rc;
}

/* Runs a statement on (conv, seq) and maybe a third and fourth value. */
static int exec_msg(struct sq *st, enum sid id, int64_t conv, int64_t seq, int nargs, int64_t a, int64_t b)
{
    struct q q;

    if (q_start(st, id, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, seq);
    if (nargs > 0)
        q_i64(&q, a);
    if (nargs > 1)
        q_i64(&q, b);
    return q_exec(&q);
}

static int react(struct sq *st, enum sid id, int64_t conv, int64_t seq, int64_t user, const char *emoji,
                 size_t len, int *changed)
{
    struct q q;
    int rc;

    if (q_start(st, id, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, seq);
    q_i64(&q, user);
    q_textn(&q, emoji, len);
    rc = q_exec(&q);
    *changed = rc == STORE_OK && sqlite3_changes(st->db) > 0;
    return rc;
}

/* The message as it was, for a change: its id (the search entry), its body
 * (to remove that entry: malloc'd), whether deleted, its mod. */
struct oldmsg {
    int64_t id, mod;
    char *body;
    size_t len;
    int deleted;
};

static int old_get(struct sq *st, int64_t conv, int64_t seq, struct oldmsg *o)
{
    struct q q;
    int rc;

    if (q_start(st, S_MSG_OLD, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, seq);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        o->id = sqlite3_column_int64(q.s, 0);
        o->len = (size_t)sqlite3_column_bytes(q.s, 1);
        o->body = xmalloc(o->len + 1);
        memcpy(o->body, sqlite3_column_text(q.s, 1) ? (const char *)sqlite3_column_text(q.s, 1) : "", o->len);
        o->body[o->len] = '\0';
        o->deleted = sqlite3_column_int(q.s, 2);
        o->mod = sqlite3_column_int64(q.s, 3);
        rc = STORE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

/* The erasure of a message: its search entry, reactions and attachments
 * (and the blobs they were the last references to), then the row becomes a
 * tombstone. The shard's 'optimize', the checkpoint and the unlinks follow
 * at commit. */
static int change_delete(struct sq *st, int64_t conv, int64_t seq, const struct oldmsg *o, int64_t mod)
{
    struct q q;
    int rc = STORE_OK;

    if (!o->deleted && o->id > 0)
        rc = fts_del(st, o->id, conv, o->body, o->len);
    if (rc == STORE_OK)
        rc = exec_msg(st, S_REACT_DEL_MSG, conv, seq, 0, 0, 0);
    if (rc == STORE_OK && (rc = q_start(st, S_ATT_OF_MSG, &q)) == STORE_OK) {
        q_i64(&q, conv);
        q_i64(&q, seq);
        rc = att_delete_rows(st, &q, NULL);
    }
    if (rc == STORE_OK)
        rc = exec_msg(st, S_MSG_ERASE, conv, seq, 1, mod, 0);
    if (rc == STORE_OK)
        st->erased = 1;
    return rc;
}

static int change_apply(struct sq *st, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                        const char *text, size_t len, int64_t now, struct oldmsg *o, int64_t *mod_out,
                        int *changed_out)
{
    int64_t mod = 0;
    int rc = old_get(st, conv, seq, o), changed = 1;

    if (rc != STORE_OK)
        return rc;
    switch (kind) {
    case CHANGE_REACT_ON:
    case CHANGE_REACT_OFF:
        if (!text || (o->deleted && kind == CHANGE_REACT_ON))
            return STORE_BAD_REQUEST;
        rc = react(st, kind == CHANGE_REACT_ON ? S_REACT_ADD : S_REACT_DEL, conv, seq, user, text, len, &changed);
        if (rc != STORE_OK)
            return rc;
        if (!changed) { /* already there, or not there: nothing written */
            *mod_out = o->mod;
            *changed_out = 0;
            return STORE_OK;
        }
        if ((rc = take_mod(st, conv, &mod)) == STORE_OK)
            rc = exec_msg(st, S_MSG_REACTED, conv, seq, 2, mod, kind == CHANGE_REACT_ON ? 1 : -1);
        break;
    case CHANGE_EDIT:
        if (!text || o->deleted)
            return STORE_BAD_REQUEST;
        if ((rc = take_mod(st, conv, &mod)) != STORE_OK)
            break;
        /* the old text leaves the index; sq_commit's optimize of a later
         * delete takes it out of the shard's segments for good */
        if (o->id > 0)
            rc = fts_entry(st, SH_DEL, o->id, conv, o->body, o->len);
        if (rc == STORE_OK) {
            struct q q;
            if ((rc = q_start(st, S_MSG_EDIT, &q)) == STORE_OK) {
                q_i64(&q, conv);
                q_i64(&q, seq);
                q_textn(&q, text, len);
                q_i64(&q, now);
                q_i64(&q, mod);
                rc = q_exec(&q);
            }
        }
        if (rc == STORE_OK && o->id > 0)
            rc = fts_add(st, o->id, conv, text, len);
        break;
    case CHANGE_DELETE:
        if ((rc = take_mod(st, conv, &mod)) == STORE_OK)
            rc = change_delete(st, conv, seq, o, mod);
        break;
    default:
        return STORE_BAD_REQUEST;
    }
    if (rc == STORE_OK) {
        *mod_out = mod;
        *changed_out = 1;
    }
    return rc;
}

static int sq_msg_change(struct store *st_, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                         const char *text, size_t text_len, int64_t now, int64_t *mod_out, int *changed_out)
{
    struct sq *st = (struct sq *)st_;
    struct oldmsg o = {0};
    struct txw t;
    int rc;

    *mod_out = 0;
    *changed_out = 0;
    if ((rc = tx_enter(st, &t)) != STORE_OK)
        return rc;
    rc = change_apply(st, conv, seq, user, kind, text, text_len, now, &o, mod_out, changed_out);
    rc = tx_leave(st, &t, rc, rc == STORE_OK);
    if (o.body) {
        /* the old text does not linger in this process either */
        memset(o.body, 0, o.len);
        free(o.body);
    }
    if (rc != STORE_OK) {
        *mod_out = 0;
        *changed_out = 0;
    }
    return rc;
}

static int sq_changes_page(struct store *st_, int64_t conv, int64_t after_mod, int limit, json_t **msgs_out,
                           int64_t *last_mod_out)
{
    struct sq *st = (struct sq *)st_;
    json_t *msgs;
    struct q q;
    int rc;

    *msgs_out = NULL;
    *last_mod_out = 0;
    if (limit < 1)
        return STORE_BAD_REQUEST;
    if ((rc = op_begin(st)) != STORE_OK)
        return rc;
    msgs = json_array();
    if (q_start(st, S_CONV_LAST_MOD, &q) == STORE_OK) {
        q_i64(&q, conv);
        rc = q_one_i64(&q, last_mod_out);
    } else {
        rc = STORE_ERR;
    }
    if (rc == STORE_OK && (rc = q_start(st, S_CHANGES, &q)) == STORE_OK) {
        q_i64(&q, conv);
        q_i64(&q, after_mod);
        q_i64(&q, limit);
        rc = collect_msgs(&q, conv, msgs, limit, NULL, D_EACH);
    }
    rc = op_end(st, rc, 1);
    if (rc != STORE_OK) {
        json_decref(msgs);
        *last_mod_out = 0;
        return rc;
    }
    *msgs_out = msgs;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Attachments: the rows here, the bytes in <data dir>/attachments/<first
 * two hex digits>/<sha256>, one file per distinct content.              */

static int sha_ok(const char *sha)
{
    size_t i = 0;
    if (!sha)
        return 0;
    for (; sha[i]; i++)
        if (!((sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f')))
            return 0;
    return i == 64;
}

static int blob_path(const struct sq *st, const char *sha, char *buf, size_t len)
{
    if (!sha_ok(sha))
        return STORE_NOT_FOUND;
    if ((size_t)snprintf(buf, len, "%s/%.2s/%s", st->attdir, sha, sha) >= len)
        return STORE_ERR;
    return STORE_OK;
}

static int fsync_path(const char *path, int dir)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | (dir ? O_DIRECTORY : 0));
    int rc = fd >= 0 && fsync(fd) == 0 ? 0 : -1;
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Copies src to dst through a temporary file in dst's directory. */
static int copy_file(const char *src, const char *dir, const char *dst)
{
    char tmp[4300], buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, ok = 0;
    ssize_t r = 0;

    snprintf(tmp, sizeof tmp, "%s/.tmp-XXXXXX", dir);
    if (in < 0 || (out = mkstemp(tmp)) < 0)
        goto done;
    while ((r = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t w = 0; w < r;) {
            ssize_t k = write(out, buf + w, (size_t)(r - w));
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                goto done;
            w += k;
        }
    }
    ok = r == 0 && fsync(out) == 0 && rename(tmp, dst) == 0;
done:
    if (in >= 0)
        close(in);
    if (out >= 0) {
        close(out);
        if (!ok)
            unlink(tmp);
    }
    return ok ? 0 : -1;
}

/* Puts the bytes of tmp_path in place as blob sha: a hard link (same file
 * system: no copy), else a copy. *created: 1 if this made the file (0: it
 * was there already, from an earlier transaction that rolled back or whose
 * unlink is pending; same name, same bytes). */
static int blob_place(struct sq *st, const char *sha, const char *tmp_path, int *created)
{
    char dir[4200], path[4300];

    *created = 0;
    if (mkdir(st->attdir, 0700) != 0 && errno != EEXIST)
        goto fail;
    snprintf(dir, sizeof dir, "%s/%.2s", st->attdir, sha);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        goto fail;
    if (blob_path(st, sha, path, sizeof path) != STORE_OK)
        return STORE_ERR;
    if (link(tmp_path, path) == 0) {
        *created = 1;
    } else if (errno == EEXIST) {
        return STORE_OK;
    } else {
        if (copy_file(tmp_path, dir, path) != 0)
            goto fail;
        *created = 1;
    }
    /* the commit promises the upload: its bytes and name are on disk first */
    if (fsync_path(path, 0) != 0 || fsync_path(dir, 1) != 0)
        goto fail;
    return STORE_OK;
fail:
    fprintf(stderr, "store: attachment %s from %s: %s\n", sha, tmp_path, strerror(errno));
    return STORE_ERR;
}

static int random_id(char *out, size_t len)
{
    unsigned char b[16];
    size_t got = 0;

    while (got < sizeof b) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        got += (size_t)r;
    }
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < len; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

static int att_insert(struct sq *st, const char *id, int64_t owner, const char *name, const char *type,
                      const char *tmp_path, int64_t size, const char *sha, int64_t now)
{
    int64_t refs = 0;
    struct q q;
    int rc, created = 0;

    if (q_start(st, S_BLOB_REF, &q))
        return STORE_ERR;
    q_text(&q, sha);
    q_i64(&q, size);
    if ((rc = q_one_i64(&q, &refs)) != STORE_OK)
        return STORE_ERR;
    if (refs == 1) {
        if (blob_place(st, sha, tmp_path, &created) != STORE_OK)
            return STORE_ERR;
        if (created)
            shalist_add(&st->created, sha);
    }
    if (q_start(st, S_ATT_INSERT, &q))
        return STORE_ERR;
    q_text(&q, id);
    q_i64(&q, owner);
    q_text(&q, name);
    q_text(&q, type);
    q_i64(&q, size);
    q_text(&q, sha);
    q_i64(&q, now);
    rc = q_exec(&q);
    return rc == STORE_OK ? STORE_OK : STORE_ERR;
}

/* STORE_QUOTA if owner's pending uploads and one more of size would count
 * more than max_pending (0: no cap). In the write transaction: SQLite's one
 * writer serializes every upload. */
static int att_quota(struct sq *st, int64_t owner, int64_t size, int64_t max_pending)
{
    int64_t pending = 0;
    struct q q;

    if (max_pending <= 0)
        return STORE_OK;
    if (q_start(st, S_ATT_PENDING, &q))
        return STORE_ERR;
    q_i64(&q, owner);
    q_i64(&q, STORE_ATT_MIN_CHARGE);
    if (q_one_i64(&q, &pending) != STORE_OK)
        return STORE_ERR;
    return pending + (size > STORE_ATT_MIN_CHARGE ? size : STORE_ATT_MIN_CHARGE) > max_pending ? STORE_QUOTA
                                                                                              : STORE_OK;
}

static int sq_att_create(struct store *st_, int64_t owner, const char *name, const char *type, const char *tmp_path,
                         int64_t size, const char *sha256_hex, int64_t now, int64_t max_pending, json_t **att_out)
{
    struct sq *st = (struct sq *)st_;
    char id[33];
    struct txw t;
    json_t *att;
    int rc;

    *att_out = NULL;
    if (!name || !type || !tmp_path || size < 0 || !sha_ok(sha256_hex))
        return STORE_BAD_REQUEST;
    if (random_id(id, sizeof id) != 0) {
        fprintf(stderr, "store: attachment id: getrandom: %s\n", strerror(errno));
        return STORE_ERR;
    }
    /* built first: a name jansson refuses is refused, not stored */
    if (!(att = rows_attachment(id, name, type, size)))
        return STORE_BAD_REQUEST;
    if ((rc = tx_enter(st, &t)) != STORE_OK) {
        json_decref(att);
        return rc;
    }
    rc = att_quota(st, owner, size, max_pending);
    if (rc == STORE_OK)
        rc = att_insert(st, id, owner, name, type, tmp_path, size, sha256_hex, now);
    rc = tx_leave(st, &t, rc, rc == STORE_OK);
    if (rc != STORE_OK) {
        json_decref(att);
        return rc;
    }
    *att_out = att;
    return STORE_OK;
}

static int sq_att_get(struct store *st_, const char *id, int64_t user, json_t **att_out, char **sha256_out)
{
    struct sq *st = (struct sq *)st_;
    struct q q;
    int rc;

    *att_out = NULL;
    *sha256_out = NULL;
    if (!id)
        return STORE_NOT_FOUND;
    if (q_start(st, S_ATT_GET, &q))
        return STORE_ERR;
    q_text(&q, id);
    q_i64(&q, user);
    rc = q_step(&q);
    if (rc == SQLITE_ROW) {
        *att_out = rows_attachment(col_text(q.s, 0), col_text(q.s, 1), col_text(q.s, 2), sqlite3_column_int64(q.s, 3));
        if (*att_out) {
            *sha256_out = xstrdup(col_text(q.s, 4));
            rc = STORE_OK;
        } else {
            rc = log_json(SQL[q.id].what);
        }
    } else if (rc == SQLITE_DONE) {
        rc = STORE_NOT_FOUND;
    }
    q_end(&q);
    return rc;
}

static int sq_att_path(struct store *st_, const char *sha256_hex, char **path_out)
{
    struct sq *st = (struct sq *)st_;
    char path[4300];
    int rc = blob_path(st, sha256_hex, path, sizeof path);

    *path_out = NULL;
    if (rc != STORE_OK)
        return rc;
    if (access(path, R_OK) != 0)
        return errno == ENOENT ? STORE_NOT_FOUND : STORE_ERR;
    *path_out = xstrdup(path);
    return STORE_OK;
}

static int sq_att_read(struct store *st_, const char *sha256_hex, int64_t off, void *buf, size_t len, size_t *n_out)
{
    struct sq *st = (struct sq *)st_;
    char path[4300];
    size_t n = 0;
    int rc = blob_path(st, sha256_hex, path, sizeof path), fd;

    *n_out = 0;
    if (rc != STORE_OK)
        return rc;
    if (off < 0)
        return STORE_BAD_REQUEST;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == ENOENT ? STORE_NOT_FOUND : STORE_ERR;
    while (n < len) {
        ssize_t r = pread(fd, (char *)buf + n, len - n, (off_t)(off + (int64_t)n));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            close(fd);
            return STORE_ERR;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *n_out = n;
    return STORE_OK;
}

static int sq_att_prune(struct store *st_, int64_t created_before, int limit, int *deleted_out)
{
    struct sq *st = (struct sq *)st_;
    struct txw t;
    struct q q;
    int rc, n = 0;

    *deleted_out = 0;
    if (limit <= 0)
        return STORE_OK;
    if ((rc = tx_enter(st, &t)) != STORE_OK)
        return rc;
    if ((rc = q_start(st, S_ATT_PENDING_OLD, &q)) == STORE_OK) {
        q_i64(&q, created_before);
        q_i64(&q, limit);
        rc = att_delete_rows(st, &q, &n);
    }
    rc = tx_leave(st, &t, rc, rc == STORE_OK);
    if (rc == STORE_OK)
        *deleted_out = n;
    return rc;
}

/* ------------------------------------------------------------------ */
/* The backend table and opening.                                       */

/* One statement reused per id: SQLite has no round trips to save. */
static int sq_conv_last_seqs(struct store *st_, const int64_t *convs, size_t n, int64_t *seqs, int64_t *mods)
{
    struct sq *st = (struct sq *)st_;

    for (size_t i = 0; i < n; i++) {
        int rc = sq_conv_last_seq(st_, convs[i], &seqs[i]);
        if (rc == STORE_OK && mods) {
            struct q q;
            if (q_start(st, S_CONV_LAST_MOD, &q))
                return STORE_ERR;
            q_i64(&q, convs[i]);
            rc = q_one_i64(&q, &mods[i]);
        }
        if (rc == STORE_NOT_FOUND) {
            seqs[i] = 0;
            if (mods)
                mods[i] = 0;
        } else if (rc != STORE_OK) {
            return rc;
        }
    }
    return STORE_OK;
}

/* A local file is always there; a failing disk shows as STORE_ERR. */
static int sq_ping(struct store *st_)
{
    (void)st_;
    return STORE_OK;
}

static const struct store_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .ping = sq_ping,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .savepoint = sq_savepoint,
    .release = sq_release,
    .rollback_to = sq_rollback_to,
    .send_batch = sq_send_batch,
    .user_create = sq_user_create,
    .user_by_name = sq_user_by_name,
    .user_by_id = sq_user_by_id,
    .user_exists = sq_user_exists,
    .users_search = sq_users_search,
    .refresh_insert = sq_refresh_insert,
    .refresh_rotate = sq_refresh_rotate,
    .refresh_revoke = sq_refresh_revoke,
    .refresh_prune = sq_refresh_prune,
    .conv_create_direct = sq_conv_create_direct,
    .conv_create_group = sq_conv_create_group,
    .conv_get = sq_conv_get,
    .conv_list = sq_conv_list,
    .conv_view = sq_conv_view,
    .member_ctx = sq_member_ctx,
    .member_insert = sq_member_insert,
    .member_delete = sq_member_delete,
    .member_set_role = sq_member_set_role,
    .members = sq_members,
    .is_member = sq_is_member,
    .peers = sq_peers,
    .user_convs = sq_user_convs,
    .msg_by_client = sq_msg_by_client,
    .conv_last_seq = sq_conv_last_seq,
    .conv_last_seqs = sq_conv_last_seqs,
    .read_set = sq_read_set,
    .msg_page = sq_msg_page,
    .sync_summary = sq_sync_summary,
    .msg_facts = sq_msg_facts,
    .msg_get = sq_msg_get,
    .msg_change = sq_msg_change,
    .changes_page = sq_changes_page,
    .search = sq_search,
    .att_create = sq_att_create,
    .att_get = sq_att_get,
    .att_path = sq_att_path,
    .att_read = sq_att_read,
    .att_prune = sq_att_prune,
};

/* The library's process-wide settings, once, before its first use.
 * MEMSTATUS off: SQLite otherwise takes one global mutex around every
 * allocation and free to keep memory statistics nobody here reads; with the
 * writer and every reader allocating, that lock was 2.6% of the server's
 * time under a full write load (docs/BENCHMARKS.md, "The write path"). */
static void sqlite_library_init(void)
{
    if (sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK)
        fprintf(stderr, "store: sqlite memory statistics stay on (the library was initialized first)\n");
}

int store_sqlite_open(const char *path, int readonly, struct store **out, char *errbuf, size_t errlen)
{
    static pthread_once_t library_once = PTHREAD_ONCE_INIT;
    pthread_once(&library_once, sqlite_library_init);
    struct sq *st = xcalloc(1, sizeof *st);
    int flags = SQLITE_OPEN_NOMUTEX |
                (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(path, &st->db, flags, NULL);

    st->base.ops = &sqlite_ops;
    *out = NULL;
    if (rc != SQLITE_OK) {
        set_err(errbuf, errlen, path, st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, BUSY_TIMEOUT_MS);
    /* attachments live next to the database: <data dir>/attachments */
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 1;
    st->attdir = xmalloc(dlen + sizeof "/attachments");
    memcpy(st->attdir, slash ? path : ".", dlen);
    memcpy(st->attdir + dlen, "/attachments", sizeof "/attachments");
    if (readonly ? setup_reader(st->db, errbuf, errlen) : setup_writer(st, errbuf, errlen))
        goto fail;
    *out = &st->base;
    return STORE_OK;
fail:
    sq_close(&st->base);
    return STORE_ERR;
}

/* ------------------------------------------------------------------ */
/* Online backup.                                                       */

int store_sqlite_backup(const char *path, const char *dest, char *errbuf, size_t errlen)
{
    char tmp[4200];
    sqlite3 *src = NULL, *dst = NULL;
    int rc;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", dest) >= (int)sizeof tmp) {
        set_err(errbuf, errlen, dest, "path too long");
        return STORE_ERR;
    }
    unlink(tmp);
    rc = sqlite3_open_v2(path, &src, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        set_err(errbuf, errlen, rc == SQLITE_OK ? tmp : path, sqlite3_errstr(rc));
        goto done;
    }
    sqlite3_busy_timeout(src, BUSY_TIMEOUT_MS);
    sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
    if (!b) {
        set_err(errbuf, errlen, "backup", sqlite3_errmsg(dst));
        rc = SQLITE_ERROR;
        goto done;
    }
    /* in steps, so the writer is never held up for long; a commit meanwhile
     * makes SQLite restart the copy from a consistent point */
    do {
        rc = sqlite3_backup_step(b, 256);
        if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
            sqlite3_sleep(10);
    } while (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED);
    sqlite3_backup_finish(b);
    if (rc != SQLITE_DONE) {
        set_err(errbuf, errlen, "backup", sqlite3_errstr(rc));
        goto done;
    }
    /* the copy is a plain rollback-journal database; DELETE mode so it is
     * one self-contained file */
    rc = sqlite3_exec(dst, "PRAGMA journal_mode=DELETE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        set_err(errbuf, errlen, "backup", sqlite3_errmsg(dst));
        goto done;
    }
    rc = SQLITE_DONE;
done:
    sqlite3_close(src);
    sqlite3_close(dst);
    if (rc != SQLITE_DONE) {
        unlink(tmp);
        return STORE_ERR;
    }
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0 || rename(tmp, dest) != 0) {
        set_err(errbuf, errlen, dest, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return STORE_ERR;
    }
    close(fd);
    return STORE_OK;
}
