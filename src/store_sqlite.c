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
 * (STORE_CONFLICT) and is not logged. */
#include "store_sqlite.h"

#include "rows.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#define CONV_SELECT                                                                      \
    "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, m.last_read_seq,"           \
    " g.sender_id, g.client_id, g.body, g.created_at"                                    \
    " FROM members m JOIN conversations c ON c.id = m.conv_id"                           \
    " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq"
#define MSG_COLS "seq, sender_id, client_id, body, created_at"

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
                      "INSERT INTO messages(conv_id, seq, sender_id, client_id, body, created_at)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
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
                        "SELECT c.id, c.last_seq, m.last_read_seq FROM members m"
                        " JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = ?1 ORDER BY c.id"},
    [S_CONV_SHARED] = {"conversation for a push",
                       "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, 0,"
                       " g.sender_id, g.client_id, g.body, g.created_at FROM conversations c"
                       " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq WHERE c.id = ?1"},
    [S_MEMBER_POS] = {"read positions of members",
                      "SELECT user_id, last_read_seq FROM members WHERE conv_id = ?1 ORDER BY user_id"},
};

struct sq {
    struct store base; /* first: a struct store * is a struct sq * */
    sqlite3 *db;
    sqlite3_stmt *stmt[S__COUNT]; /* prepared on first use */
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

/* A message of S_MSG_BEFORE / S_MSG_AFTER (MSG_COLS). */
static json_t *page_msg_json(sqlite3_stmt *s, int64_t conv)
{
    return msg_json(s, conv, sqlite3_column_int64(s, 0), 1);
}

/* The shared part of a CONV_SELECT row, with an empty "members" array. */
static json_t *conv_shared_json(sqlite3_stmt *s)
{
    int64_t id = sqlite3_column_int64(s, 0);
    int64_t last_seq = sqlite3_column_int64(s, 3);
    json_t *last = NULL;

    if (last_seq > 0 && sqlite3_column_type(s, 6) != SQLITE_NULL && !(last = msg_json(s, id, last_seq, 6)))
        return NULL;
    return rows_conv_shared(id, col_text(s, 1), col_text(s, 2), last_seq, last, sqlite3_column_int64(s, 4));
}

/* The viewer's conversation object of a CONV_SELECT row. */
static json_t *conv_json(sqlite3_stmt *s)
{
    json_t *o = conv_shared_json(s);
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
static int migrate_one(sqlite3 *db, const struct migration *m, char *errbuf, size_t errlen)
{
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
    return STORE_ERR;
}

static int migrate(sqlite3 *db, char *errbuf, size_t errlen)
{
    if (exec_const(db,
                   "CREATE TABLE IF NOT EXISTS schema_version ("
                   " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
                   "schema_version", errbuf, errlen))
        return STORE_ERR;
    for (int i = 0; i < migrations_count; i++)
        if (migrate_one(db, &migrations[i], errbuf, errlen))
            return STORE_ERR;
    return STORE_OK;
}

static int setup_writer(sqlite3 *db, char *errbuf, size_t errlen)
{
    if (set_wal(db, errbuf, errlen))
        return STORE_ERR;
    /* FULL: an ack promises the message survives a crash, WAL included. */
    if (exec_const(db, "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON", "pragmas", errbuf, errlen))
        return STORE_ERR;
    return migrate(db, errbuf, errlen);
}

/* The probe reads the schema now, so a missing or uninitialized database
 * fails here, at start, rather than on the first request. */
static int setup_reader(sqlite3 *db, char *errbuf, size_t errlen)
{
    if (exec_const(db, "PRAGMA query_only=1", "query_only", errbuf, errlen))
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
    sqlite3_close(st->db);
    free(st);
}


/* ------------------------------------------------------------------ */
/* Transactions.                                                        */

static int sq_begin(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    return run0(st, S_BEGIN);
}

static int sq_commit(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    return run0(st, S_COMMIT);
}

/* Some errors (disk full, I/O) make SQLite roll the transaction back by
 * itself; rolling back again would only log a second, misleading error. */
static int sq_rollback(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    if (sqlite3_get_autocommit(st->db))
        return STORE_OK;
    return run0(st, S_ROLLBACK);
}

static int sq_savepoint(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    return run0(st, S_SAVEPOINT);
}

static int sq_release(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    return run0(st, S_RELEASE);
}

static int sq_rollback_to(struct store *st_)
{
    struct sq *st = (struct sq *)st_;
    int rc = run0(st, S_ROLLBACK_TO);

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
    struct q q;
    int rc;

    if (q_start(st, S_CONV_GET, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    q_i64(&q, viewer);
    rc = q_step(&q);
    if (rc == SQLITE_ROW && !(obj = conv_json(q.s)))
        rc = log_json(SQL[q.id].what);
    q_end(&q);
    if (rc == SQLITE_DONE)
        return STORE_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return rc;
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
    struct q q;
    int rc;

    if (q_start(st, S_CONV_LIST, &q))
        return STORE_ERR;
    q_i64(&q, viewer);
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        json_t *obj = conv_json(q.s);
        char key[24];
        if (!obj) {
            rc = log_json(SQL[q.id].what);
            break;
        }
        snprintf(key, sizeof key, "%lld", (long long)sqlite3_column_int64(q.s, 0));
        json_object_set(index, key, json_object_get(obj, "members"));
        json_array_append_new(convs, obj);
    }
    q_end(&q);
    return rc == SQLITE_DONE ? STORE_OK : rc;
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
static int msg_insert(struct sq *st, const struct store_send *m)
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

enum { SEND_NEW = 1 };

/* See store.h. SQLite's way: membership from the members read once per
 * conversation, the insert first (the unique key on (sender, client id)
 * finds a resend of a committed send, and only then is the original looked
 * up: one statement per new message), seqs counted up from last_seq read
 * once per conversation (atomic under BEGIN IMMEDIATE, see conv_set_last).
 * A failed insert does not abort an SQLite transaction, so this is safe
 * here; a backend where it would (PostgreSQL) looks resends up first. */
static int sq_send_batch(struct store *st_, struct store_send *v, size_t n, int64_t now,
                         struct store_batch_out *out)
{
    struct sq *st = (struct sq *)st_;
    struct bstate b = {0};
    size_t *first = xmalloc((n ? n : 1) * sizeof *first);
    uint8_t *fresh = xcalloc(n ? n : 1, 1);
    int rc = STORE_OK;

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
        if (!c->next) { /* the first new message of this conversation in this call */
            int64_t last = 0;
            if (sq_conv_last_seq(st_, c->conv, &last) != STORE_OK) {
                rc = STORE_ERR;
                break;
            }
            c->next = last + 1;
        }
        m->seq = c->next;
        m->ts = now;
        int r = msg_insert(st, m);
        if (r == STORE_CONFLICT) { /* the unique key: a resend of a committed send */
            if (sq_msg_by_client(st_, m->sender, m->client_id, &m->conv, &m->seq, &m->ts) != STORE_OK)
                rc = STORE_ERR;
            m->dup = 1;
            continue;
        }
        if (r != STORE_OK) {
            rc = STORE_ERR;
            break;
        }
        c->next++;
        c->count++;
        fresh[i] = SEND_NEW;
    }
    for (size_t k = 0; k < b.n && rc == STORE_OK; k++)
        if (b.v[k].count)
            rc = conv_set_last(st, b.v[k].conv, b.v[k].next - 1, now);
    /* each sender's read position moves to its last new message */
    for (size_t i = n; i-- > 0 && rc == STORE_OK;) {
        if (fresh[i] != SEND_NEW)
            continue;
        int later = 0;
        for (size_t k = i + 1; k < n && !later; k++)
            later = fresh[k] == SEND_NEW && v[k].conv == v[i].conv && v[k].sender == v[i].sender;
        if (later)
            continue;
        int64_t pos;
        int r = sq_read_set(st_, v[i].conv, v[i].sender, v[i].seq, &pos);
        if (r != STORE_OK && r != STORE_NOT_FOUND)
            rc = STORE_ERR;
    }
    for (size_t i = 0; i < n; i++) {
        if (first[i] == i)
            continue;
        const struct store_send *o = &v[first[i]];
        v[i].rc = o->rc;
        v[i].dup = o->rc == STORE_OK;
        v[i].conv = o->rc == STORE_OK ? o->conv : v[i].conv;
        v[i].seq = o->seq;
        v[i].ts = o->ts;
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
    int rc, n = 0;

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
    while ((rc = q_step(&q)) == SQLITE_ROW) {
        json_t *m;
        if (n == limit) {
            *has_more_out = 1;
            continue; /* the LIMIT makes this the last row */
        }
        if (!(m = page_msg_json(q.s, conv))) {
            rc = log_json(SQL[q.id].what);
            break;
        }
        json_array_append_new(msgs, m);
        n++;
    }
    q_end(&q);
    if (rc != SQLITE_DONE) {
        json_decref(msgs);
        *has_more_out = 0;
        return rc;
    }
    *msgs_out = msgs;
    return STORE_OK;
}

static json_t *summary_json(sqlite3_stmt *s, int col)
{
    return rows_summary(sqlite3_column_int64(s, col), sqlite3_column_int64(s, col + 1),
                        sqlite3_column_int64(s, col + 2));
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

    if (q_start(st, S_CONV_SHARED, &q))
        return STORE_ERR;
    q_i64(&q, conv);
    rc = q_step(&q);
    if (rc == SQLITE_ROW && !(obj = conv_shared_json(q.s)))
        rc = log_json(SQL[q.id].what);
    q_end(&q);
    if (rc == SQLITE_DONE)
        return STORE_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return rc;
    if ((rc = conv_members(st, conv, obj)) != STORE_OK) {
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
/* The backend table and opening.                                       */

/* One statement reused per id: SQLite has no round trips to save. */
static int sq_conv_last_seqs(struct store *st_, const int64_t *convs, size_t n, int64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sq_conv_last_seq(st_, convs[i], &out[i]);
        if (rc == STORE_NOT_FOUND)
            out[i] = 0;
        else if (rc != STORE_OK)
            return rc;
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
};

int store_sqlite_open(const char *path, int readonly, struct store **out, char *errbuf, size_t errlen)
{
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
    if (readonly ? setup_reader(st->db, errbuf, errlen) : setup_writer(st->db, errbuf, errlen))
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
