/* store_pg: the PostgreSQL backend of the store interface (store.h), used
 * in cluster mode. See store_pg.h.
 *
 * Statements: every statement is a constant of the table below. Named ones
 * are prepared on first use on the connection (in the same pipeline as their
 * first execution) and reused; F_UNNAMED ones are parsed and planned at each
 * use with the actual values (utility commands, and the user search, whose
 * LIKE prefix can use the index only in a plan made for its value).
 * Parameters and results travel in binary: int8 as 8 big-endian bytes, text
 * and bytea as their bytes, arrays in PostgreSQL's array format (struct
 * arr), so a body's NUL bytes and a client id's bytes arrive exactly.
 *
 * Execution (run): a list of calls goes out as one pipeline (libpq pipeline
 * mode: one round trip), preceded by the commands still pending (a deferred
 * BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO) and, for reads that must share a
 * snapshot outside a transaction, wrapped in BEGIN ISOLATION LEVEL
 * REPEATABLE READ READ ONLY ... COMMIT.
 *
 * Errors: PostgreSQL failures are logged once, here, with the statement's
 * purpose, and become STORE_ERR; a lost connection is logged once and
 * becomes STORE_UNAVAILABLE until ping reconnects. */
#include "store_pg.h"

#include "log.h"
#include "migrations_pg.h"
#include "rows.h"
#include "util.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Type OIDs (catalog/pg_type_d.h is a server header). */
enum {
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_TEXT = 25,
    OID_BYTEA_ARR = 1001,
    OID_TEXT_ARR = 1009,
    OID_INT8_ARR = 1016,
};

/* The advisory lock key of the migrations: "parley" in ASCII. */
#define MIGRATE_LOCK "140106055788921"
#define RECONNECT_MIN_MS 250 /* between two connection attempts */
#define IDLE_TX_TIMEOUT "60s" /* idle_in_transaction_session_timeout, unless set */
#define MAXP 10              /* parameters of one statement, at most */
#define MAXPEND 8            /* deferred commands, at most */

enum sid {
    /* utility commands (F_UNNAMED) */
    S_BEGIN,
    S_BEGIN_SNAPSHOT,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_RELEASE,
    S_ROLLBACK_TO,
    /* users and tokens */
    S_USER_INSERT,
    S_USER_BY_NAME,
    S_USER_BY_ID,
    S_USER_SEARCH,
    S_USER_EXISTS,
    S_USERS_COUNT,
    S_RT_INSERT,
    S_RT_BY_HASH,
    S_RT_REVOKE_FAMILY,
    S_RT_ROTATE,
    S_RT_REVOKE,
    S_RT_PRUNE,
    /* conversations and members */
    S_DIRECT_FIND,
    S_DIRECT_CREATE,
    S_CONV_DELETE,
    S_GROUP_CREATE,
    S_MEMBER_INSERT,
    S_CONV_GET,
    S_CONV_LIST,
    S_CONV_MEMBERS,
    S_LIST_MEMBERS,
    S_ACTOR_CTX,
    S_MEMBER_DELETE,
    S_MEMBER_SET_ROLE,
    S_MEMBER_IDS,
    S_IS_MEMBER,
    S_PEERS,
    S_USER_CONVS,
    /* messages */
    S_MSG_BY_CLIENT,
    S_CONV_LAST_SEQ,
    S_CONV_LAST_SEQS,
    S_REPLAY_LAG,
    S_READ_SET,
    S_MSG_BEFORE,
    S_MSG_AFTER,
    S_SYNC_SUMMARY,
    S_CONV_SHARED,
    S_MEMBER_POS,
    /* send_batch */
    S_BATCH_LOOKUP,
    S_BATCH_MEMBERS,
    S_CONV_ADVANCE,
    S_MSG_INSERT_MANY,
    S_READ_SET_MANY,
    /* version 2 in send_batch */
    S_BATCH_LAST_SEQS,
    S_BATCH_ATTS,
    S_BATCH_ATTACHED,
    S_ATTACH_MANY,
    /* version 2: changes */
    S_MSG_FACTS,
    S_MSG_GET,
    S_CONV_LOCK,
    S_CHANGE_EDIT,
    S_CHANGE_DELETE,
    S_CHANGE_REACT_ON,
    S_CHANGE_REACT_OFF,
    S_BLOBS_DROP,
    S_CHANGES,
    S_CONV_LAST_MOD,
    /* version 2: search */
    S_SEARCH_USER,
    S_SEARCH_CONV,
    /* version 2: attachments */
    S_BLOB_REF,
    S_ATT_INSERT,
    S_ATT_PENDING,
    S_CHUNK_INSERT,
    S_ATT_GET,
    S_BLOB_SIZE,
    S_ATT_READ,
    S_ATT_PRUNE,
    S__COUNT
};

enum { F_UNNAMED = 1 };

struct sdef {
    const char *what;  /* the purpose, for the error log */
    const char *sql;
    const char *types; /* one letter per parameter: i int8, t text, b bytea, I int8[], T text[], B bytea[] */
    int flags;
};

#define USER_COLS "u.id, u.username, u.display_name, u.created_at"
#define MEMBER_COLS "u.id, u.username, u.display_name, m.role"
/* The version-2 state of the message of alias M, read by msg_v2_json():
 * reply_to, edited_at, deleted, mod, then its attachments as one JSON array
 * in their order and its reactions as one JSON array of [emoji, user] in the
 * order they were made. Each list is a correlated subquery inside the
 * page's one statement (an index probe, no round trip), made only when the
 * message can have one: attachments when it was sent with some (n_att),
 * reactions when it was ever changed (mod). */
#define MSG_V2_COLS(M)                                                                             \
    M ".reply_to, " M ".edited_at, " M ".deleted, " M ".mod,"                                      \
    " CASE WHEN " M ".n_att > 0 THEN (SELECT json_agg(json_build_object('id', a.id, 'name', a.name," \
    " 'type', a.type, 'size', a.size) ORDER BY a.pos) FROM attachments a"                          \
    " WHERE a.conv_id = " M ".conv_id AND a.seq = " M ".seq) END,"                                 \
    " CASE WHEN " M ".mod > 0 THEN (SELECT json_agg(json_build_array(r.emoji, r.user_id) ORDER BY r.id)" \
    " FROM reactions r WHERE r.conv_id = " M ".conv_id AND r.seq = " M ".seq) END"
/* The conversation row: the conversation, the viewer's read position, its
 * last_mod and the last message (NULLs when there is none). Read by
 * conv_json(). */
#define CONV_SELECT                                                                      \
    "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, m.last_read_seq, c.last_mod," \
    " g.sender_id, g.client_id, g.body, g.created_at, " MSG_V2_COLS("g")                  \
    " FROM members m JOIN conversations c ON c.id = m.conv_id"                           \
    " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq"
/* A whole message of alias m, read by page_msg_json(). */
#define MSG_COLS "m.seq, m.sender_id, m.client_id, m.body, m.created_at, " MSG_V2_COLS("m")
/* The search vector of a body: TXT, the body's text when it holds NUL
 * bytes (made spaces, in C), else NULL and the body itself; case and
 * accents folded (parley_fold, migrations_pg/002). */
#define TSV_OF(BODY, TXT) \
    "to_tsvector('simple', parley_fold(COALESCE(" TXT ", convert_from(" BODY ", 'UTF8'))))"
/* The blobs of the attachments rows a data-modifying WITH deleted (CTE a,
 * with their sha256): each one's refs down by its count (row-locked until
 * the commit), and the ones at 0 named for S_BLOBS_DROP. */
#define BLOBS_UNREF                                                                                  \
    " b AS (UPDATE blobs SET refs = blobs.refs - x.n FROM (SELECT sha256, count(*) AS n FROM a GROUP BY sha256) x" \
    " WHERE blobs.sha256 = x.sha256 RETURNING blobs.sha256, blobs.refs)"
#define BLOBS_ZERO "(SELECT string_agg(sha256, ',') FROM b WHERE refs <= 0)"
#define CHUNK 262144 /* bytes of a blob_chunks row */
#define CHUNK_SQL "262144"

static const struct sdef SQL[S__COUNT] = {
    [S_BEGIN] = {"begin transaction", "BEGIN ISOLATION LEVEL READ COMMITTED", "", F_UNNAMED},
    [S_BEGIN_SNAPSHOT] = {"begin snapshot", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "", F_UNNAMED},
    [S_COMMIT] = {"commit", "COMMIT", "", F_UNNAMED},
    [S_ROLLBACK] = {"rollback", "ROLLBACK", "", F_UNNAMED},
    [S_SAVEPOINT] = {"savepoint job", "SAVEPOINT job", "", F_UNNAMED},
    [S_RELEASE] = {"release job", "RELEASE SAVEPOINT job", "", F_UNNAMED},
    [S_ROLLBACK_TO] = {"rollback to job", "ROLLBACK TO SAVEPOINT job", "", F_UNNAMED},

    /* A taken username is an empty answer, not an error (the transaction
     * must stay usable). lower() under the column's "C" collation folds
     * ASCII only: SQLite's NOCASE. */
    [S_USER_INSERT] = {"insert user",
                       "INSERT INTO users(username, display_name, password_hash, created_at)"
                       " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id",
                       "ttti", 0},
    [S_USER_BY_NAME] = {"user by name",
                        "SELECT " USER_COLS ", u.password_hash FROM users u"
                        " WHERE lower(u.username) = lower($1 COLLATE \"C\")",
                        "t", 0},
    [S_USER_BY_ID] = {"user by id", "SELECT " USER_COLS ", u.password_hash FROM users u WHERE u.id = $1", "i", 0},
    [S_USER_SEARCH] = {"search users",
                       "SELECT " USER_COLS " FROM users u WHERE lower(u.username) LIKE $1 ESCAPE '!'"
                       " ORDER BY lower(u.username) LIMIT $2",
                       "ti", F_UNNAMED},
    [S_USER_EXISTS] = {"user exists", "SELECT 1 FROM users WHERE id = $1", "i", 0},
    [S_USERS_COUNT] = {"users exist", "SELECT count(*) FROM users WHERE id = ANY($1)", "I", 0},

    [S_RT_INSERT] = {"insert refresh token",
                     "INSERT INTO refresh_tokens(user_id, family, token_hash, created_at, expires_at)"
                     " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                     "ittii", 0},
    /* FOR UPDATE: two nodes rotating the same token take turns, and the
     * second sees it rotated (reuse), as it would one after the other. */
    [S_RT_BY_HASH] = {"refresh token by hash",
                      "SELECT id, user_id, expires_at, revoked_at IS NOT NULL, replaced_by IS NOT NULL"
                      " FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                      "t", 0},
    [S_RT_REVOKE_FAMILY] = {"revoke refresh token family",
                            "UPDATE refresh_tokens SET revoked_at = $2"
                            " WHERE revoked_at IS NULL"
                            " AND family = (SELECT family FROM refresh_tokens WHERE id = $1)",
                            "ii", 0},
    /* The successor and the link to it in one statement: both or neither;
     * no row back when the new hash is taken. */
    [S_RT_ROTATE] = {"rotate refresh token",
                     "WITH n AS (INSERT INTO refresh_tokens(user_id, family, token_hash, created_at, expires_at)"
                     " SELECT user_id, family, $2, $3, $4 FROM refresh_tokens WHERE id = $1"
                     " ON CONFLICT DO NOTHING RETURNING id)"
                     " UPDATE refresh_tokens t SET replaced_by = n.id FROM n WHERE t.id = $1 RETURNING n.id",
                     "itii", 0},
    [S_RT_REVOKE] = {"revoke refresh token",
                     "UPDATE refresh_tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
                     "ti", 0},
    /* store.h: expired rows, families with no live token, rotations older than $2 */
    [S_RT_PRUNE] = {"prune refresh tokens",
                    "DELETE FROM refresh_tokens WHERE id IN (SELECT t.id FROM refresh_tokens t"
                    " WHERE t.expires_at <= $1"
                    " OR EXISTS (SELECT 1 FROM refresh_tokens n WHERE n.id = t.replaced_by AND n.created_at <= $2)"
                    " OR NOT EXISTS (SELECT 1 FROM refresh_tokens l WHERE l.family = t.family"
                    "  AND l.revoked_at IS NULL AND l.replaced_by IS NULL AND l.expires_at > $1)"
                    " LIMIT $3)",
                    "iii", 0},

    [S_DIRECT_FIND] = {"find direct conversation",
                       "SELECT conv_id FROM direct_pairs WHERE user_lo = $1 AND user_hi = $2", "ii", 0},
    /* The conversation, its pair and both members in one statement. When
     * another writer took the pair a moment ago, no pair and no members
     * are written and the second column is NULL: the caller deletes the
     * conversation row (S_CONV_DELETE) and finds the other one. */
    [S_DIRECT_CREATE] = {"create direct conversation",
                         "WITH c AS (INSERT INTO conversations(kind, title, created_by, created_at, last_seq,"
                         " last_activity) VALUES ('direct', NULL, $1, $5, 0, $5) RETURNING id),"
                         " p AS (INSERT INTO direct_pairs(user_lo, user_hi, conv_id) SELECT $3, $4, id FROM c"
                         " ON CONFLICT DO NOTHING RETURNING conv_id),"
                         " m AS (INSERT INTO members(conv_id, user_id, role, last_read_seq, joined_at)"
                         " SELECT p.conv_id, u.id, 'member', 0, $5 FROM p, (VALUES ($1::bigint), ($2::bigint)) u(id)"
                         " RETURNING 1)"
                         " SELECT c.id, (SELECT conv_id FROM p) FROM c",
                         "iiiii", 0},
    [S_CONV_DELETE] = {"delete conversation", "DELETE FROM conversations WHERE id = $1", "i", 0},
    /* The group and its members ($3: distinct ids, the creator among them)
     * in one statement. */
    [S_GROUP_CREATE] = {"create group",
                        "WITH c AS (INSERT INTO conversations(kind, title, created_by, created_at, last_seq,"
                        " last_activity) VALUES ('group', $2, $1, $4, 0, $4) RETURNING id),"
                        " m AS (INSERT INTO members(conv_id, user_id, role, last_read_seq, joined_at)"
                        " SELECT c.id, u.id, CASE WHEN u.id = $1 THEN 'owner' ELSE 'member' END, 0, $4"
                        " FROM c, unnest($3::bigint[]) u(id) RETURNING 1)"
                        " SELECT id FROM c",
                        "itIi", 0},
    [S_MEMBER_INSERT] = {"insert member",
                         "INSERT INTO members(conv_id, user_id, role, last_read_seq, joined_at)"
                         " VALUES ($1, $2, $3, 0, $4) ON CONFLICT DO NOTHING",
                         "iiti", 0},
    [S_CONV_GET] = {"get conversation", CONV_SELECT " WHERE m.conv_id = $1 AND m.user_id = $2", "ii", 0},
    [S_CONV_LIST] = {"list conversations",
                     CONV_SELECT " WHERE m.user_id = $1 ORDER BY c.last_activity DESC, c.id DESC", "i", 0},
    [S_CONV_MEMBERS] = {"members of a conversation",
                        "SELECT " MEMBER_COLS " FROM members m JOIN users u ON u.id = m.user_id"
                        " WHERE m.conv_id = $1 ORDER BY m.joined_at, m.user_id",
                        "i", 0},
    [S_LIST_MEMBERS] = {"members of listed conversations",
                        "SELECT m.conv_id, " MEMBER_COLS " FROM members v"
                        " JOIN members m ON m.conv_id = v.conv_id JOIN users u ON u.id = m.user_id"
                        " WHERE v.user_id = $1 ORDER BY m.conv_id, m.joined_at, m.user_id",
                        "i", 0},
    [S_ACTOR_CTX] = {"conversation kind and actor role",
                     "SELECT c.kind = 'direct', m.role FROM conversations c"
                     " JOIN members m ON m.conv_id = c.id WHERE c.id = $1 AND m.user_id = $2",
                     "ii", 0},
    /* The member, and when $3 <> 0 (it was the owner) ownership passed to
     * the longest-standing admin, else member, ties by user id: one
     * statement. The subquery sees the row being deleted (one snapshot),
     * hence user_id <> $2. Answers the number of members deleted. */
    [S_MEMBER_DELETE] = {"delete member",
                         "WITH d AS (DELETE FROM members WHERE conv_id = $1 AND user_id = $2 RETURNING 1),"
                         " t AS (UPDATE members SET role = 'owner' WHERE $3 <> 0 AND conv_id = $1"
                         " AND EXISTS (SELECT 1 FROM d) AND user_id ="
                         " (SELECT user_id FROM members WHERE conv_id = $1 AND user_id <> $2"
                         "  ORDER BY role <> 'admin', joined_at, user_id LIMIT 1) RETURNING 1)"
                         " SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM t)",
                         "iii", 0},
    [S_MEMBER_SET_ROLE] = {"set member role",
                           "UPDATE members SET role = $3 WHERE conv_id = $1 AND user_id = $2", "iit", 0},
    [S_MEMBER_IDS] = {"member ids", "SELECT user_id FROM members WHERE conv_id = $1 ORDER BY user_id", "i", 0},
    [S_IS_MEMBER] = {"membership", "SELECT 1 FROM members WHERE conv_id = $1 AND user_id = $2", "ii", 0},
    [S_PEERS] = {"peers",
                 "SELECT DISTINCT m.user_id FROM members v JOIN members m ON m.conv_id = v.conv_id"
                 " WHERE v.user_id = $1 AND m.user_id <> $1 ORDER BY m.user_id",
                 "i", 0},
    [S_USER_CONVS] = {"conversations of a user",
                      "SELECT conv_id FROM members WHERE user_id = $1 ORDER BY conv_id", "i", 0},

    [S_MSG_BY_CLIENT] = {"message by client id",
                         "SELECT conv_id, seq, created_at FROM messages WHERE sender_id = $1 AND client_id = $2",
                         "it", 0},
    [S_CONV_LAST_SEQ] = {"conversation last seq", "SELECT last_seq FROM conversations WHERE id = $1", "i", 0},
    /* A replica's lag: 0 when it has replayed all it received (or is not a
     * replica), else the age of the last transaction it replayed. */
    [S_REPLAY_LAG] = {"replay lag",
                      "SELECT CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS DISTINCT FROM"
                      " pg_last_wal_replay_lsn() THEN COALESCE((EXTRACT(EPOCH FROM now() -"
                      " pg_last_xact_replay_timestamp()) * 1000)::bigint, 0) ELSE 0::bigint END",
                      "", 0},
    [S_CONV_LAST_SEQS] = {"conversations' last seqs",
                          "SELECT k.i, c.last_seq, c.last_mod FROM unnest($1::bigint[]) WITH ORDINALITY AS k(id, i)"
                          " JOIN conversations c ON c.id = k.id",
                          "I", 0},
    /* Forward only (GREATEST), clamped to last_seq (LEAST). */
    [S_READ_SET] = {"set read position",
                    "UPDATE members SET last_read_seq = GREATEST(last_read_seq,"
                    " LEAST($3, (SELECT last_seq FROM conversations WHERE id = $1)))"
                    " WHERE conv_id = $1 AND user_id = $2 RETURNING last_read_seq",
                    "iii", 0},
    [S_MSG_BEFORE] = {"messages before",
                      "SELECT " MSG_COLS " FROM messages m WHERE m.conv_id = $1 AND m.seq < $2"
                      " ORDER BY m.seq DESC LIMIT $3",
                      "iii", 0},
    [S_MSG_AFTER] = {"messages after",
                     "SELECT " MSG_COLS " FROM messages m WHERE m.conv_id = $1 AND m.seq > $2"
                     " ORDER BY m.seq ASC LIMIT $3",
                     "iii", 0},
    [S_SYNC_SUMMARY] = {"sync summary",
                        "SELECT c.id, c.last_seq, m.last_read_seq, c.last_mod FROM members m"
                        " JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = $1 ORDER BY c.id",
                        "i", 0},
    [S_CONV_SHARED] = {"conversation for a push",
                       "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, 0::bigint, c.last_mod,"
                       " g.sender_id, g.client_id, g.body, g.created_at, " MSG_V2_COLS("g") " FROM conversations c"
                       " LEFT JOIN messages g ON g.conv_id = c.id AND g.seq = c.last_seq WHERE c.id = $1",
                       "i", 0},
    [S_MEMBER_POS] = {"read positions of members",
                      "SELECT user_id, last_read_seq FROM members WHERE conv_id = $1 ORDER BY user_id", "i", 0},

    /* send_batch: the originals of (sender, client id) pairs (k.i: the
     * pair's 1-based position in the arrays), and the members of the
     * batch's conversations. */
    [S_BATCH_LOOKUP] = {"look up resends",
                        "SELECT k.i, m.conv_id, m.seq, m.created_at"
                        " FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(sender, cid, i)"
                        " JOIN messages m ON m.sender_id = k.sender AND m.client_id = k.cid",
                        "IT", 0},
    [S_BATCH_MEMBERS] = {"members of the batch's conversations",
                         "SELECT conv_id, user_id FROM members WHERE conv_id = ANY($1) ORDER BY conv_id, user_id",
                         "I", 0},
    [S_CONV_ADVANCE] = {"reserve seqs",
                        "UPDATE conversations SET last_seq = last_seq + $2,"
                        " last_activity = GREATEST(last_activity, $3) WHERE id = $1 RETURNING last_seq",
                        "iii", 0},
    /* One statement for every message of the batch (docs/BENCHMARKS.md:
     * faster than one pipelined INSERT per message), with its search
     * vector; reply_to 0 is none. */
    [S_MSG_INSERT_MANY] = {"insert messages",
                           "INSERT INTO messages(conv_id, seq, sender_id, client_id, body, created_at, reply_to,"
                           " n_att, tsv)"
                           " SELECT k.conv, k.seq, k.sender, k.cid, k.body, $6, NULLIF(k.reply_to, 0), k.n_att, "
                           TSV_OF("k.body", "k.txt") " FROM"
                           " unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[], $7::bigint[],"
                           " $8::bigint[], $9::text[]) AS k(conv, seq, sender, cid, body, reply_to, n_att, txt)",
                           "IIITBiIIT", 0},
    /* Each sender's position to its last new message of the batch (one
     * row per (conv, sender); the seqs were just reserved, so they are
     * within last_seq). */
    [S_READ_SET_MANY] = {"move senders' read positions",
                         "UPDATE members m SET last_read_seq = GREATEST(m.last_read_seq, k.seq)"
                         " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS k(conv, usr, seq)"
                         " WHERE m.conv_id = k.conv AND m.user_id = k.usr",
                         "III", 0},

    /* send_batch, version 2: the last seqs a reply_to is checked against
     * (a lower bound of the ones the reservation will see: seqs only grow);
     * the uploads the batch names that are not attached yet, locked so that
     * no other writer attaches or prunes them before this transaction ends
     * (in id order: two batches lock them in the same order; one attached
     * meanwhile drops out after the wait); and, without a lock, the ones
     * attached already (a delete locks those: never waited for here, so a
     * send and a delete cannot deadlock on them). */
    [S_BATCH_LAST_SEQS] = {"last seqs of the batch's conversations",
                           "SELECT id, last_seq FROM conversations WHERE id = ANY($1)", "I", 0},
    [S_BATCH_ATTS] = {"attachments of the batch",
                      "SELECT id, owner_id, name, type, size FROM attachments"
                      " WHERE id = ANY($1) AND conv_id IS NULL ORDER BY id FOR UPDATE",
                      "T", 0},
    [S_BATCH_ATTACHED] = {"attached attachments of the batch",
                          "SELECT id, owner_id FROM attachments WHERE id = ANY($1) AND conv_id IS NOT NULL", "T", 0},
    [S_ATTACH_MANY] = {"attach uploads",
                       "UPDATE attachments a SET conv_id = k.conv, seq = k.seq, pos = k.pos"
                       " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS k(id, conv, seq, pos)"
                       " WHERE a.id = k.id",
                       "TIII", 0},

    [S_MSG_FACTS] = {"message facts", "SELECT sender_id, deleted, mod FROM messages WHERE conv_id = $1 AND seq = $2",
                     "ii", 0},
    [S_MSG_GET] = {"get message", "SELECT " MSG_COLS " FROM messages m WHERE m.conv_id = $1 AND m.seq = $2", "ii", 0},
    /* A change first locks its conversation's row (the lock the mod's
     * UPDATE takes anyway), so the statement after it, a new snapshot in
     * READ COMMITTED, sees the message as the last change of any node left
     * it, and decides on that: whether there is anything to change, and
     * only then the next mod. */
    [S_CONV_LOCK] = {"lock conversation", "SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE", "i", 0},
    /* Each change: (deleted, mod) of the message as it was, and the new mod
     * (NULL: nothing changed); no row: no such message. */
    [S_CHANGE_EDIT] = {"edit message",
                       "WITH t AS (SELECT deleted, mod FROM messages WHERE conv_id = $1 AND seq = $2),"
                       " c AS (UPDATE conversations SET last_mod = last_mod + 1"
                       "  WHERE id = $1 AND EXISTS (SELECT 1 FROM t WHERE NOT deleted) RETURNING last_mod),"
                       " u AS (UPDATE messages m SET body = $3, tsv = " TSV_OF("$3", "$4") ","
                       "  edited_at = $5, mod = c.last_mod FROM c WHERE m.conv_id = $1 AND m.seq = $2 RETURNING m.mod)"
                       " SELECT t.deleted, t.mod, (SELECT mod FROM u) FROM t",
                       "iibti", 0},
    /* The erasure (PROTOCOL.md): body '' and no search vector, no edit
     * history to erase (none is kept), reactions and attachments rows
     * deleted, their blobs' refs down (the ones at 0 go in S_BLOBS_DROP, in
     * the same transaction). PostgreSQL keeps the old row versions in the
     * table's pages until vacuum reclaims them: no query finds them from
     * the commit on, and (auto)vacuum removes the bytes from the files
     * later; WAL holds them until it is recycled. That is the documented
     * erasure of cluster mode. */
    [S_CHANGE_DELETE] = {"delete message",
                         "WITH t AS (SELECT deleted, mod FROM messages WHERE conv_id = $1 AND seq = $2),"
                         " c AS (UPDATE conversations SET last_mod = last_mod + 1"
                         "  WHERE id = $1 AND EXISTS (SELECT 1 FROM t WHERE NOT deleted) RETURNING last_mod),"
                         " u AS (UPDATE messages m SET body = ''::bytea, tsv = NULL, deleted = true, n_att = 0,"
                         "  mod = c.last_mod FROM c WHERE m.conv_id = $1 AND m.seq = $2 RETURNING m.mod),"
                         " r AS (DELETE FROM reactions WHERE conv_id = $1 AND seq = $2 AND EXISTS (SELECT 1 FROM u)),"
                         " a AS (DELETE FROM attachments WHERE conv_id = $1 AND seq = $2 AND EXISTS (SELECT 1 FROM u)"
                         "  RETURNING sha256),"
                         BLOBS_UNREF
                         " SELECT t.deleted, t.mod, (SELECT mod FROM u), " BLOBS_ZERO " FROM t",
                         "ii", 0},
    /* Already there (the unique key): nothing inserted, no mod. */
    [S_CHANGE_REACT_ON] = {"add reaction",
                           "WITH t AS (SELECT deleted, mod FROM messages WHERE conv_id = $1 AND seq = $2),"
                           " i AS (INSERT INTO reactions(conv_id, seq, user_id, emoji) SELECT $1, $2, $3, $4 FROM t"
                           "  WHERE NOT t.deleted ON CONFLICT DO NOTHING RETURNING 1),"
                           " c AS (UPDATE conversations SET last_mod = last_mod + 1"
                           "  WHERE id = $1 AND EXISTS (SELECT 1 FROM i) RETURNING last_mod),"
                           " u AS (UPDATE messages m SET mod = c.last_mod FROM c"
                           "  WHERE m.conv_id = $1 AND m.seq = $2 RETURNING m.mod)"
                           " SELECT t.deleted, t.mod, (SELECT mod FROM u) FROM t",
                           "iiit", 0},
    [S_CHANGE_REACT_OFF] = {"remove reaction",
                            "WITH t AS (SELECT deleted, mod FROM messages WHERE conv_id = $1 AND seq = $2),"
                            " d AS (DELETE FROM reactions WHERE conv_id = $1 AND seq = $2 AND user_id = $3"
                            "  AND emoji = $4 RETURNING 1),"
                            " c AS (UPDATE conversations SET last_mod = last_mod + 1"
                            "  WHERE id = $1 AND EXISTS (SELECT 1 FROM d) RETURNING last_mod),"
                            " u AS (UPDATE messages m SET mod = c.last_mod FROM c"
                            "  WHERE m.conv_id = $1 AND m.seq = $2 RETURNING m.mod)"
                            " SELECT t.deleted, t.mod, (SELECT mod FROM u) FROM t",
                            "iiit", 0},
    /* The blobs whose last reference this transaction dropped (BLOBS_ZERO;
     * still row-locked by it, so no upload took a new reference since), and
     * their chunks by cascade. */
    [S_BLOBS_DROP] = {"drop unreferenced blobs",
                      "DELETE FROM blobs WHERE sha256 = ANY(string_to_array($1, ',')) AND refs <= 0", "t", 0},
    /* mod > 0 as well as > $2: what lets the partial index messages_mod
     * serve a generic plan. */
    [S_CHANGES] = {"changes",
                   "SELECT " MSG_COLS " FROM messages m WHERE m.conv_id = $1 AND m.mod > 0 AND m.mod > $2"
                   " ORDER BY m.mod LIMIT $3",
                   "iii", 0},
    [S_CONV_LAST_MOD] = {"conversation last mod", "SELECT last_mod FROM conversations WHERE id = $1", "i", 0},

    /* The search (store.h): parley_tsquery (002_v2.sql) quotes the words;
     * deleted messages have no vector. Unnamed: planned with the words'
     * query, whose selectivity decides between the GIN index (the matches
     * ANDed with the user's conversations' rows from the primary key, then
     * sorted) and messages_id backwards (words in most messages: the newest
     * rows until the page is full). The conversations are an array (an
     * InitPlan), not a join: on 1,000,000 messages the planner made the
     * join a nested loop that ran the GIN scan once per conversation of the
     * user (7x slower than one scan ANDed with the primary key's rows). */
    [S_SEARCH_USER] = {"search",
                       "SELECT m.id, m.conv_id, m.seq, m.sender_id, m.body, m.created_at FROM messages m"
                       " WHERE m.tsv @@ parley_tsquery($2) AND NOT m.deleted AND m.id < $3"
                       " AND m.conv_id = ANY(ARRAY(SELECT conv_id FROM members WHERE user_id = $1))"
                       " ORDER BY m.id DESC LIMIT $4",
                       "iTii", F_UNNAMED},
    [S_SEARCH_CONV] = {"search a conversation",
                       "SELECT m.id, m.conv_id, m.seq, m.sender_id, m.body, m.created_at FROM messages m"
                       " WHERE m.tsv @@ parley_tsquery($2) AND NOT m.deleted AND m.id < $3 AND m.conv_id = $1"
                       " ORDER BY m.id DESC LIMIT $4",
                       "iTii", F_UNNAMED},

    /* One more reference to the bytes, or the first: refs = 1 says the
     * chunks are to be written (a blob row lives only with refs > 0; its
     * row lock makes an upload of the same bytes wait for a delete that
     * drops them, then insert them afresh). */
    [S_BLOB_REF] = {"reference blob",
                    "INSERT INTO blobs(sha256, size, refs) VALUES ($1, $2, 1)"
                    " ON CONFLICT (sha256) DO UPDATE SET refs = blobs.refs + 1 RETURNING refs",
                    "ti", 0},
    [S_ATT_INSERT] = {"insert attachment",
                      "INSERT INTO attachments(id, owner_id, name, type, size, sha256, created_at)"
                      " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                      "tittiti", 0},
    /* What an owner's uploads not yet attached count against the cap (each
     * at least $2), the owner's row locked first: the uploads of one owner
     * are checked one after the other, whichever node's writer runs them. */
    [S_ATT_PENDING] = {"pending uploads",
                       "SELECT coalesce((SELECT sum(greatest(size, $2)) FROM attachments"
                       " WHERE owner_id = $1 AND conv_id IS NULL), 0)::bigint"
                       " FROM users WHERE id = $1 FOR NO KEY UPDATE",
                       "ii", 0},
    [S_CHUNK_INSERT] = {"insert blob chunk", "INSERT INTO blob_chunks(sha256, n, data) VALUES ($1, $2, $3)", "tib",
                        0},
    [S_ATT_GET] = {"get attachment",
                   "SELECT a.id, a.name, a.type, a.size, a.sha256 FROM attachments a WHERE a.id = $1"
                   " AND (a.owner_id = $2 OR EXISTS (SELECT 1 FROM members m WHERE m.conv_id = a.conv_id"
                   " AND m.user_id = $2))",
                   "ti", 0},
    [S_BLOB_SIZE] = {"blob size", "SELECT size FROM blobs WHERE sha256 = $1", "t", 0},
    /* The bytes [$2, $2 + $3) from the chunks they fall in, each cut on
     * the server to its part of the range (from the TOAST slices it needs:
     * EXTERNAL storage). */
    [S_ATT_READ] = {"read blob",
                    "SELECT n, substring(data FROM (greatest($2, n * " CHUNK_SQL "::bigint) - n * " CHUNK_SQL
                    "::bigint + 1)::integer FOR (least($2 + $3, (n + 1) * " CHUNK_SQL
                    "::bigint) - greatest($2, n * " CHUNK_SQL "::bigint))::integer)"
                    " FROM blob_chunks WHERE sha256 = $1 AND n >= $2 / " CHUNK_SQL " AND n <= ($2 + $3 - 1) / "
                    CHUNK_SQL " ORDER BY n",
                    "tii", 0},
    /* Uploads never attached, oldest first; one a send is attaching right
     * now is locked by it and skipped. Their blobs lose a reference. */
    [S_ATT_PRUNE] = {"prune attachments",
                     "WITH a AS (DELETE FROM attachments WHERE conv_id IS NULL AND id IN (SELECT id FROM attachments"
                     "  WHERE conv_id IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2"
                     "  FOR UPDATE SKIP LOCKED) RETURNING sha256),"
                     BLOBS_UNREF
                     " SELECT (SELECT count(*) FROM a), " BLOBS_ZERO,
                     "ii", 0},
};

struct pg {
    struct store base; /* first: a struct store * is a struct pg * */
    PGconn *conn;
    char *conninfo;
    int in_tx;              /* the caller's transaction is open (its BEGIN may still be pending) */
    int lost;               /* the connection failed; ping reconnects */
    int64_t next_connect;   /* monotonic ms: no connection attempt before */
    int npend;              /* commands deferred to the next round trip */
    enum sid pend[MAXPEND];
    unsigned char prepared[S__COUNT];
};

/* ------------------------------------------------------------------ */
/* Calls: one statement with its parameters and, after run, its result. */

struct call {
    enum sid id;
    int np;
    int bad; /* a parameter too large for the protocol */
    const char *val[MAXP];
    int len[MAXP];
    char num[MAXP][8];
    char *own[MAXP]; /* malloc'd values, freed by call_done */
    PGresult *res;
    int prep; /* run: a Parse was sent for it */
};

static const int BINARY[MAXP] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

static void call_start(struct call *c, enum sid id)
{
    memset(c, 0, sizeof *c);
    c->id = id;
}

static void call_i64(struct call *c, int64_t v)
{
    uint64_t be = htobe64((uint64_t)v);
    memcpy(c->num[c->np], &be, 8);
    c->val[c->np] = c->num[c->np];
    c->len[c->np++] = 8;
}

/* Bytes (text or bytea); p NULL: SQL NULL. */
static void call_bytes(struct call *c, const char *p, size_t n)
{
    if (n > INT_MAX)
        c->bad = 1;
    c->val[c->np] = p;
    c->len[c->np++] = n > INT_MAX ? 0 : (int)n;
}

static void call_text(struct call *c, const char *s)
{
    call_bytes(c, s, s ? strlen(s) : 0);
}

/* Takes p (malloc'd, n bytes), freed by call_done. */
static void call_own(struct call *c, char *p, size_t n)
{
    c->own[c->np] = p;
    call_bytes(c, p, n);
}

/* Takes b's bytes (an array built with arr_*). */
static void call_buf(struct call *c, struct buf *b)
{
    c->own[c->np] = b->data;
    call_bytes(c, b->data, b->len);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void call_done(struct call *c)
{
    PQclear(c->res);
    c->res = NULL;
    for (int i = 0; i < MAXP; i++) {
        free(c->own[i]);
        c->own[i] = NULL;
    }
}

static void calls_done(struct call *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        call_done(&c[i]);
}

/* Whether p[0..n) is text PostgreSQL takes: valid UTF-8 (no overlong
 * forms, surrogates or code points past U+10FFFF) without NUL. A parameter
 * it would refuse must not reach it: the failed statement would abort the
 * writer's transaction. */
static int utf8_ok(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            k = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            k = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            k = 3, cp = c & 0x07;
        else
            return 0;
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* ---- one-dimensional arrays in PostgreSQL's binary format ---- */

static void put32(struct buf *b, uint32_t v)
{
    uint32_t be = htobe32(v);
    buf_append(b, &be, 4);
}

static void arr_start(struct buf *b, uint32_t elem_oid, size_t n)
{
    buf_init(b);
    put32(b, n ? 1 : 0); /* dimensions */
    put32(b, 0);         /* no NULLs */
    put32(b, elem_oid);
    if (n) {
        put32(b, (uint32_t)n); /* length */
        put32(b, 1);           /* lower bound */
    }
}

static void arr_i64(struct buf *b, int64_t v)
{
    uint64_t be = htobe64((uint64_t)v);
    put32(b, 8);
    buf_append(b, &be, 8);
}

static void arr_bytes(struct buf *b, const char *p, size_t n)
{
    put32(b, (uint32_t)n);
    buf_append(b, p, n);
}

static void arr_null(struct buf *b)
{
    uint32_t flag = htobe32(1);
    put32(b, UINT32_MAX); /* length -1 */
    memcpy(b->data + 4, &flag, 4); /* the header's "has NULLs" */
}

/* The text of a body for the search vector: the body with each NUL byte
 * made a space (text cannot hold NUL; a NUL separates words like a
 * space). */
static void arr_text_nonul(struct buf *b, const char *p, size_t n)
{
    put32(b, (uint32_t)n);
    buf_reserve(b, n);
    for (size_t i = 0; i < n; i++)
        b->data[b->len + i] = p[i] ? p[i] : ' ';
    b->len += n;
}

/* ---- results ---- */

/* An integer or boolean column (int8, int4, int2, bool by their sizes). */
static int64_t col_i64(const PGresult *r, int row, int col)
{
    const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
    uint64_t v = 0;

    if (PQgetisnull(r, row, col))
        return 0;
    switch (PQgetlength(r, row, col)) {
    case 8:
        for (int i = 0; i < 8; i++)
            v = v << 8 | p[i];
        return (int64_t)v;
    case 4:
        return (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    case 2:
        return (int16_t)((uint16_t)(p[0] << 8 | p[1]));
    case 1:
        return p[0];
    }
    return 0;
}

static const char *col_text(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static int rows(const struct call *c)
{
    return PQntuples(c->res);
}

/* Rows changed by an INSERT/UPDATE/DELETE without RETURNING. */
static long changed(const struct call *c)
{
    return strtol(PQcmdTuples(c->res), NULL, 10);
}

/* ------------------------------------------------------------------ */
/* Running statements.                                                  */

/* libpq's message on one line: without its trailing newline, its inner
 * newlines and tabs made spaces. */
static const char *one_line(const char *msg, char *out, size_t len)
{
    size_t n = 0;

    for (const char *p = msg; *p && n + 1 < len; p++) {
        char ch = *p == '\n' || *p == '\t' ? ' ' : *p;
        if (ch == ' ' && (n == 0 || out[n - 1] == ' '))
            continue;
        out[n++] = ch;
    }
    while (n && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
    return out;
}

static void log_result(const char *what, const PGresult *r, PGconn *conn)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    char line[512];

    /* the server ending the session: conn_lost says it once */
    if (state && (strncmp(state, "57P", 3) == 0 || strncmp(state, "08", 2) == 0))
        return;
    log_error("store: %s: %s", what, one_line(r ? PQresultErrorMessage(r) : PQerrorMessage(conn), line, sizeof line));
}

static int conn_lost(struct pg *st)
{
    char line[512];

    if (!st->lost)
        log_warn("store: the PostgreSQL connection is lost (%s)",
                 one_line(st->conn ? PQerrorMessage(st->conn) : "no connection", line, sizeof line));
    st->lost = 1;
    return STORE_UNAVAILABLE;
}

static int send_one(struct pg *st, struct call *c)
{
    const struct sdef *d = &SQL[c->id];
    int np = (int)strlen(d->types);
    Oid types[MAXP];
    char name[16];

    for (int i = 0; i < np; i++) {
        switch (d->types[i]) {
        case 'i': types[i] = OID_INT8; break;
        case 't': types[i] = OID_TEXT; break;
        case 'b': types[i] = OID_BYTEA; break;
        case 'I': types[i] = OID_INT8_ARR; break;
        case 'T': types[i] = OID_TEXT_ARR; break;
        default: types[i] = OID_BYTEA_ARR; break;
        }
    }
    if (d->flags & F_UNNAMED)
        return PQsendQueryParams(st->conn, d->sql, np, types, c->val, c->len, BINARY, 1);
    snprintf(name, sizeof name, "p%d", (int)c->id);
    if (!st->prepared[c->id]) {
        if (!PQsendPrepare(st->conn, name, d->sql, np, types))
            return 0;
        st->prepared[c->id] = 2; /* sent; 1 once the server said yes */
        c->prep = 1;
    }
    return PQsendQueryPrepared(st->conn, name, np, c->val, c->len, BINARY, 1);
}

/* One command's answer: its result, then the NULL that ends it. NULL if
 * the connection broke. */
static PGresult *take(PGconn *conn)
{
    PGresult *r = PQgetResult(conn), *more;

    if (!r)
        return NULL;
    while ((more = PQgetResult(conn)) != NULL)
        PQclear(more);
    return r;
}

enum { RUN_SNAPSHOT = 1 };

/* The pipeline of run(); on failure, results may be left to free. */
static int run_pipeline(struct pg *st, struct call *c, size_t n, int flags)
{
    PGconn *conn = st->conn;
    int snap = (flags & RUN_SNAPSHOT) && !st->in_tx && n > 0;
    int rc = STORE_OK, logged = 0, sent = 1;
    enum sid pend[MAXPEND + 2];
    int npend = 0;

    for (size_t i = 0; i < n; i++)
        if (c[i].bad) {
            log_error("store: %s: a parameter is too large", SQL[c[i].id].what);
            st->npend = 0;
            return STORE_ERR;
        }
    memcpy(pend, st->pend, (size_t)st->npend * sizeof *pend);
    npend = st->npend;
    st->npend = 0;
    if (snap)
        pend[npend++] = S_BEGIN_SNAPSHOT;
    if (st->lost || !conn || PQstatus(conn) != CONNECTION_OK)
        return conn_lost(st);
    if (!PQenterPipelineMode(conn))
        return conn_lost(st);
    for (int k = 0; k < npend && sent; k++) {
        struct call u;
        call_start(&u, pend[k]);
        sent = send_one(st, &u);
    }
    for (size_t i = 0; i < n && sent; i++)
        sent = send_one(st, &c[i]);
    if (snap && sent) {
        struct call u;
        call_start(&u, S_COMMIT);
        sent = send_one(st, &u);
    }
    if (!sent || !PQpipelineSync(conn))
        return conn_lost(st);

    /* The answers, in the order sent. */
    for (int k = 0; k < npend + (snap ? 1 : 0) + (int)n * 2; k++) {
        PGresult *r;
        const char *what;
        struct call *cur = NULL;
        int is_prep = 0;
        if (k < npend) {
            what = SQL[pend[k]].what;
        } else if (k - npend < (int)n * 2) {
            int j = k - npend;
            cur = &c[j / 2];
            is_prep = j % 2 == 0;
            if (is_prep && !cur->prep)
                continue;
            what = SQL[cur->id].what;
        } else {
            what = SQL[S_COMMIT].what;
        }
        if (!(r = take(conn)))
            return conn_lost(st);
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) {
            if (is_prep)
                st->prepared[cur->id] = 1;
            else if (cur)
                cur->res = r, r = NULL;
        } else if (s == PGRES_PIPELINE_ABORTED) {
            if (is_prep)
                st->prepared[cur->id] = 0;
            rc = STORE_ERR;
        } else {
            if (is_prep)
                st->prepared[cur->id] = 0;
            if (!logged)
                log_result(what, r, conn);
            logged = 1;
            rc = STORE_ERR;
        }
        PQclear(r);
    }
    PGresult *r = PQgetResult(conn);
    int synced = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!synced || !PQexitPipelineMode(conn) || PQstatus(conn) != CONNECTION_OK)
        return conn_lost(st);
    if (rc != STORE_OK) {
        /* A failed snapshot leaves its transaction aborted, not closed. */
        if (!st->in_tx && PQtransactionStatus(conn) != PQTRANS_IDLE)
            PQclear(PQexec(conn, "ROLLBACK"));
        return PQstatus(conn) == CONNECTION_OK ? STORE_ERR : conn_lost(st);
    }
    return STORE_OK;
}

/* Runs c[0..n) in one round trip, after the deferred commands; with
 * RUN_SNAPSHOT outside a transaction, inside BEGIN REPEATABLE READ READ ONLY
 * and COMMIT. STORE_OK with every c[i].res set (the caller runs
 * calls_done), or STORE_ERR (logged) or STORE_UNAVAILABLE with everything
 * of the calls freed. */
static int run(struct pg *st, struct call *c, size_t n, int flags)
{
    int rc = run_pipeline(st, c, n, flags);

    if (rc != STORE_OK)
        calls_done(c, n);
    return rc;
}

static int run1(struct pg *st, struct call *c)
{
    return run(st, c, 1, 0);
}

/* Defers a transaction command to the next round trip. */
static int defer(struct pg *st, enum sid id)
{
    if (st->npend == MAXPEND) {
        int rc = run(st, NULL, 0, 0);
        if (rc != STORE_OK)
            return rc;
    }
    st->pend[st->npend++] = id;
    return STORE_OK;
}

/* A one-row query's column 0 (out may be NULL): OK or NOT_FOUND. */
static int one_i64(struct pg *st, struct call *c, int64_t *out)
{
    int rc = run1(st, c);

    if (rc != STORE_OK)
        return rc;
    rc = rows(c) ? STORE_OK : STORE_NOT_FOUND;
    if (rc == STORE_OK && out)
        *out = col_i64(c->res, 0, 0);
    call_done(c);
    return rc;
}

/* Column 0 of every row into a malloc'd array (never NULL). */
static void take_ids(const struct call *c, int64_t **ids_out, size_t *n_out)
{
    int n = rows(c);
    int64_t *ids = xmalloc((n ? (size_t)n : 1) * sizeof *ids);

    for (int i = 0; i < n; i++)
        ids[i] = col_i64(c->res, i, 0);
    *ids_out = ids;
    *n_out = (size_t)n;
}

static int ids_query(struct pg *st, struct call *c, int64_t **ids_out, size_t *n_out)
{
    int rc = run1(st, c);

    if (rc != STORE_OK)
        return rc;
    take_ids(c, ids_out, n_out);
    call_done(c);
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* JSON rows.                                                           */

static int log_json(const char *what)
{
    log_error("store: %s: cannot build JSON from the row (invalid UTF-8?)", what);
    return STORE_ERR;
}

static json_t *user_json(const PGresult *r, int row, int col)
{
    return rows_user(col_i64(r, row, col), col_text(r, row, col + 1), col_text(r, row, col + 2),
                     col_i64(r, row, col + 3));
}

static json_t *member_json(const PGresult *r, int row, int col)
{
    return rows_member(col_i64(r, row, col), col_text(r, row, col + 1), col_text(r, row, col + 2),
                       col_text(r, row, col + 3));
}

/* A message from sender_id, client_id, body, created_at at col; the body
 * with its byte count (NUL bytes). */
static json_t *msg_json(const PGresult *r, int row, int64_t conv, int64_t seq, int col)
{
    return rows_msg(conv, seq, col_i64(r, row, col), col_text(r, row, col + 1), col_text(r, row, col + 2),
                    (size_t)PQgetlength(r, row, col + 2), col_i64(r, row, col + 3));
}

/* A JSON column (json_agg); NULL for SQL NULL or what jansson refuses. */
static json_t *col_json(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    return json_loadb(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col), 0, NULL);
}

/* Adds the MSG_V2_COLS at col to msg (a rows_msg object); msg NULL: nothing.
 * Returns msg, or NULL (msg freed) when a list does not parse. */
static json_t *msg_v2_json(json_t *msg, const PGresult *r, int row, int col)
{
    struct rows_msg_v2 x = {
        .reply_to = col_i64(r, row, col),
        .edited_at = col_i64(r, row, col + 1),
        .deleted = col_i64(r, row, col + 2) != 0,
        .mod = col_i64(r, row, col + 3),
    };
    int bad = 0;

    if (!msg)
        return NULL;
    if (!PQgetisnull(r, row, col + 4) && !(x.attachments = col_json(r, row, col + 4)))
        bad = 1;
    if (!PQgetisnull(r, row, col + 5)) {
        json_t *pairs = col_json(r, row, col + 5), *p;
        size_t i;
        bad |= !pairs;
        x.reactions = json_object();
        json_array_foreach(pairs, i, p) {
            const char *emoji = json_string_value(json_array_get(p, 0));
            if (emoji)
                rows_reaction_add(x.reactions, emoji, (int64_t)json_integer_value(json_array_get(p, 1)));
        }
        json_decref(pairs);
    }
    rows_msg_v2(bad ? NULL : msg, &x);
    if (bad) {
        json_decref(msg);
        return NULL;
    }
    return msg;
}

/* A whole message: sender_id, client_id, body, created_at at col, then its
 * MSG_V2_COLS. */
static json_t *msg_full_json(const PGresult *r, int row, int64_t conv, int64_t seq, int col)
{
    return msg_v2_json(msg_json(r, row, conv, seq, col), r, row, col + 4);
}

/* The shared part of a CONV_SELECT row, with an empty "members" array. */
static json_t *conv_shared_json(const PGresult *r, int row)
{
    int64_t id = col_i64(r, row, 0), last_seq = col_i64(r, row, 3);
    json_t *last = NULL, *o;

    if (last_seq > 0 && !PQgetisnull(r, row, 7) && !(last = msg_full_json(r, row, id, last_seq, 7)))
        return NULL;
    o = rows_conv_shared(id, col_text(r, row, 1), col_text(r, row, 2), last_seq, last, col_i64(r, row, 4));
    if (o)
        json_object_set_new(o, "last_mod", json_integer(col_i64(r, row, 6)));
    return o;
}

static json_t *conv_json(const PGresult *r, int row)
{
    json_t *o = conv_shared_json(r, row);
    if (o)
        rows_conv_view(o, col_i64(r, row, 5));
    return o;
}

/* Appends one object per row to arr. */
static int collect(const struct call *c, json_t *arr, json_t *(*make)(const PGresult *r, int row, int col), int col)
{
    for (int i = 0; i < rows(c); i++) {
        json_t *o = make(c->res, i, col);
        if (!o)
            return log_json(SQL[c->id].what);
        json_array_append_new(arr, o);
    }
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Connecting, migrations.                                              */

static void set_err(char *err, size_t errlen, const char *what, const char *msg)
{
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    if (err && errlen)
        snprintf(err, errlen, "%s: %.*s", what, (int)n, msg);
}

/* Server notices: warnings go to the log, the rest (NOTICE: relation
 * already exists, skipping) nowhere. */
static void on_notice(void *arg, const PGresult *r)
{
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    (void)arg;
    if (sev && strcmp(sev, "WARNING") == 0)
        log_warn("store: PostgreSQL: %s", msg ? msg : "?");
}

static PGconn *connect_db(const char *conninfo, char *err, size_t errlen)
{
    /* The URL's own settings win over the defaults before it; UTF8 is not
     * negotiable (after it). */
    const char *keys[] = {"fallback_application_name", "connect_timeout", "dbname", "client_encoding", NULL};
    const char *vals[] = {"parleyd", "10", conninfo, "UTF8", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    const char *enc;

    if (!conn) {
        set_err(err, errlen, "connect", "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        set_err(err, errlen, "connect", PQerrorMessage(conn));
        goto fail;
    }
    enc = PQparameterStatus(conn, "server_encoding");
    if (!enc || strcmp(enc, "UTF8") != 0) {
        set_err(err, errlen, "connect", "the database encoding must be UTF8");
        goto fail;
    }
    PQsetNoticeReceiver(conn, on_notice, NULL);
    /* Unless the URL or the server chose otherwise: a node cut off in the
     * middle of a transaction must not hold its row locks (a conversation's
     * seq reservation) for long against the other nodes. */
    PGresult *r = PQexec(conn, "SELECT set_config('idle_in_transaction_session_timeout', '" IDLE_TX_TIMEOUT "', false)"
                               " WHERE current_setting('idle_in_transaction_session_timeout') = '0'");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(err, errlen, "connect", PQresultErrorMessage(r));
        PQclear(r);
        goto fail;
    }
    PQclear(r);
    return conn;
fail:
    PQfinish(conn);
    return NULL;
}

/* Runs constant SQL with the simple protocol (migration files hold several
 * statements). */
static int exec_const(PGconn *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType s = PQresultStatus(r);
    int ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;

    if (!ok)
        set_err(err, errlen, what, r ? PQresultErrorMessage(r) : PQerrorMessage(conn));
    PQclear(r);
    return ok ? STORE_OK : STORE_ERR;
}

/* A one-value query with one text parameter: the value (text), or NULL. */
static char *query_value(PGconn *conn, const char *sql, const char *param, const char *what, int *failed,
                         char *err, size_t errlen)
{
    PGresult *r = PQexecParams(conn, sql, param ? 1 : 0, NULL, param ? &param : NULL, NULL, NULL, 0);
    char *v = NULL;

    *failed = PQresultStatus(r) != PGRES_TUPLES_OK;
    if (*failed)
        set_err(err, errlen, what, r ? PQresultErrorMessage(r) : PQerrorMessage(conn));
    else if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Applies one migration in its own transaction unless recorded. */
static int migrate_one(PGconn *conn, const struct migration *m, char *err, size_t errlen)
{
    char version[16], now[24];
    const char *params[3] = {version, m->name, now};
    int failed;
    char *applied;

    snprintf(version, sizeof version, "%d", m->version);
    snprintf(now, sizeof now, "%lld", (long long)util_now_ms());
    if (exec_const(conn, "BEGIN", m->name, err, errlen))
        return STORE_ERR;
    applied = query_value(conn, "SELECT 1 FROM schema_version WHERE version = $1::integer", version, m->name,
                          &failed, err, errlen);
    if (failed)
        goto fail;
    if (!applied) {
        if (exec_const(conn, m->sql, m->name, err, errlen))
            goto fail;
        PGresult *r = PQexecParams(conn, "INSERT INTO schema_version(version, name, applied_at) VALUES ($1, $2, $3)",
                                   3, NULL, params, NULL, NULL, 0);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            set_err(err, errlen, m->name, r ? PQresultErrorMessage(r) : PQerrorMessage(conn));
        PQclear(r);
        if (!ok)
            goto fail;
    }
    free(applied);
    return exec_const(conn, "COMMIT", m->name, err, errlen);
fail:
    free(applied);
    PQclear(PQexec(conn, "ROLLBACK"));
    return STORE_ERR;
}

/* Every migration, under the advisory lock: a node starting at the same
 * moment waits here until this one is done, then finds them recorded. */
static int migrate(PGconn *conn, char *err, size_t errlen)
{
    int rc = exec_const(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK ")", "migration lock", err, errlen);

    if (rc != STORE_OK)
        return rc;
    rc = exec_const(conn,
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)",
                    "schema_version", err, errlen);
    for (int i = 0; i < migrations_pg_count && rc == STORE_OK; i++)
        rc = migrate_one(conn, &migrations_pg[i], err, errlen);
    if (exec_const(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK ")", "migration unlock", NULL, 0) != STORE_OK &&
        rc == STORE_OK) {
        set_err(err, errlen, "migration unlock", PQerrorMessage(conn));
        rc = STORE_ERR;
    }
    return rc;
}

/* A reader: the schema must be there and as new as this build's. */
static int check_schema(PGconn *conn, char *err, size_t errlen)
{
    int failed;
    char *v = query_value(conn, "SELECT max(version) FROM schema_version", NULL, "schema_version", &failed, err,
                          errlen);
    int have = v ? atoi(v) : 0, want = migrations_pg_count ? migrations_pg[migrations_pg_count - 1].version : 0;

    free(v);
    if (failed)
        return STORE_ERR;
    if (have < want) {
        if (err && errlen)
            snprintf(err, errlen, "schema_version: the database is at version %d, this build needs %d (a writer "
                     "node migrates it)", have, want);
        return STORE_ERR;
    }
    return STORE_OK;
}

/* A new session: nothing prepared, no transaction, nothing pending. */
static int reconnect(struct pg *st)
{
    char err[256] = "";
    int64_t now = util_mono_ms();
    PGconn *conn;

    if (now < st->next_connect)
        return STORE_UNAVAILABLE;
    st->next_connect = now + RECONNECT_MIN_MS;
    if (!(conn = connect_db(st->conninfo, err, sizeof err)))
        return STORE_UNAVAILABLE;
    PQfinish(st->conn);
    st->conn = conn;
    st->lost = 0;
    st->in_tx = 0;
    st->npend = 0;
    memset(st->prepared, 0, sizeof st->prepared);
    log_info("store: connected to PostgreSQL again");
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* The connection and transactions.                                     */

static void pg_close(struct store *st_)
{
    struct pg *st = (struct pg *)st_;
    if (!st)
        return;
    PQfinish(st->conn);
    free(st->conninfo);
    free(st);
}

/* A local check: reads what the server may have sent an idle connection
 * (a shutdown notice, the end of the stream) without a round trip. */
static int pg_ping(struct store *st_)
{
    struct pg *st = (struct pg *)st_;
    int had_tx = st->in_tx;

    if (!st->lost && st->conn && PQstatus(st->conn) == CONNECTION_OK) {
        if (PQtransactionStatus(st->conn) == PQTRANS_IDLE && !PQconsumeInput(st->conn))
            conn_lost(st);
        if (!st->lost && PQstatus(st->conn) == CONNECTION_OK)
            return STORE_OK;
        conn_lost(st);
    }
    if (reconnect(st) != STORE_OK)
        return STORE_UNAVAILABLE;
    /* the transaction's work went with the old session */
    return had_tx ? STORE_UNAVAILABLE : STORE_OK;
}

/* BEGIN goes out with the first statement of the transaction. */
static int pg_begin(struct store *st_)
{
    struct pg *st = (struct pg *)st_;

    if (st->lost && reconnect(st) != STORE_OK)
        return STORE_UNAVAILABLE;
    st->npend = 0;
    st->in_tx = 1;
    return defer(st, S_BEGIN);
}

/* COMMIT on an aborted transaction answers ROLLBACK, not an error. */
static int pg_commit(struct store *st_)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_COMMIT);
    rc = run1(st, &c);
    st->in_tx = 0;
    if (rc != STORE_OK)
        return rc;
    if (strcmp(PQcmdStatus(c.res), "COMMIT") != 0) {
        log_error("store: commit: the transaction was rolled back");
        rc = STORE_ERR;
    }
    call_done(&c);
    return rc;
}

static int pg_rollback(struct store *st_)
{
    struct pg *st = (struct pg *)st_;

    st->in_tx = 0;
    st->npend = 0;
    if (st->lost || !st->conn || PQstatus(st->conn) != CONNECTION_OK)
        return STORE_OK; /* the server ended it with the session */
    if (PQtransactionStatus(st->conn) == PQTRANS_IDLE)
        return STORE_OK; /* nothing open, or BEGIN never sent */
    PGresult *r = PQexec(st->conn, "ROLLBACK");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        log_result(SQL[S_ROLLBACK].what, r, st->conn);
    PQclear(r);
    if (PQstatus(st->conn) != CONNECTION_OK)
        return conn_lost(st);
    return ok ? STORE_OK : STORE_ERR;
}

/* The job savepoint commands go out with the next statement (or the
 * COMMIT); a failing one fails that round trip, hence the batch. */
static int pg_savepoint(struct store *st_)
{
    return defer((struct pg *)st_, S_SAVEPOINT);
}

/* A savepoint nothing was done in (the job failed before any statement)
 * is dropped, not sent. */
static int pending_savepoint(struct pg *st)
{
    if (st->npend == 0 || st->pend[st->npend - 1] != S_SAVEPOINT)
        return 0;
    st->npend--;
    return 1;
}

static int pg_release(struct store *st_)
{
    struct pg *st = (struct pg *)st_;

    return pending_savepoint(st) ? STORE_OK : defer(st, S_RELEASE);
}

static int pg_rollback_to(struct store *st_)
{
    struct pg *st = (struct pg *)st_;
    int rc;

    if (pending_savepoint(st))
        return STORE_OK;
    rc = defer(st, S_ROLLBACK_TO);
    return rc ? rc : defer(st, S_RELEASE);
}

/* ------------------------------------------------------------------ */
/* Users.                                                               */

static int pg_user_create(struct store *st_, const char *username, const char *display_name, const char *pwhash,
                          int64_t now, json_t **user_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *user;
    struct call c;
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
    call_start(&c, S_USER_INSERT);
    call_text(&c, username);
    call_text(&c, display_name);
    call_text(&c, pwhash);
    call_i64(&c, now);
    if ((rc = run1(st, &c)) != STORE_OK) {
        json_decref(user);
        return rc;
    }
    if (!rows(&c)) {
        call_done(&c);
        json_decref(user);
        return STORE_CONFLICT;
    }
    json_object_set_new(user, "id", json_integer(col_i64(c.res, 0, 0)));
    call_done(&c);
    if (user_out)
        *user_out = user;
    else
        json_decref(user);
    return STORE_OK;
}

/* The one row of S_USER_BY_NAME / S_USER_BY_ID. */
static int user_row(struct pg *st, struct call *c, json_t **user_out, char **pwhash_out)
{
    int rc = run1(st, c);

    if (rc != STORE_OK)
        return rc;
    if (!rows(c)) {
        rc = STORE_NOT_FOUND;
    } else if (user_out && !(*user_out = user_json(c->res, 0, 0))) {
        rc = log_json(SQL[c->id].what);
    } else if (pwhash_out) {
        const char *h = col_text(c->res, 0, 4);
        *pwhash_out = xstrdup(h ? h : "");
    }
    call_done(c);
    return rc;
}

static int pg_user_by_name(struct store *st_, const char *username, json_t **user_out, char **pwhash_out)
{
    struct call c;

    if (user_out)
        *user_out = NULL;
    if (pwhash_out)
        *pwhash_out = NULL;
    call_start(&c, S_USER_BY_NAME);
    call_text(&c, username);
    return user_row((struct pg *)st_, &c, user_out, pwhash_out);
}

static int pg_user_by_id(struct store *st_, int64_t id, json_t **user_out)
{
    struct call c;

    if (user_out)
        *user_out = NULL;
    call_start(&c, S_USER_BY_ID);
    call_i64(&c, id);
    return user_row((struct pg *)st_, &c, user_out, NULL);
}

static int pg_user_exists(struct store *st_, int64_t id)
{
    struct call c;

    call_start(&c, S_USER_EXISTS);
    call_i64(&c, id);
    return one_i64((struct pg *)st_, &c, NULL);
}

/* The LIKE pattern of a prefix: ASCII letters folded (the search is
 * case-insensitive as SQLite's LIKE is), LIKE's wildcards and the escape
 * character escaped, then the one wildcard we mean. Caller frees. */
static char *like_prefix(const char *prefix)
{
    size_t n = strlen(prefix);
    char *pat = xmalloc(2 * n + 2), *p = pat;

    for (size_t i = 0; i < n; i++) {
        char ch = prefix[i];
        if (ch == '%' || ch == '_' || ch == '!')
            *p++ = '!';
        *p++ = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    *p++ = '%';
    *p = '\0';
    return pat;
}

static int pg_users_search(struct store *st_, const char *prefix, int limit, json_t **users_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *users = json_array();
    struct call c;
    char *pat;
    int rc;

    *users_out = NULL;
    if (limit <= 0) {
        *users_out = users;
        return STORE_OK;
    }
    pat = like_prefix(prefix ? prefix : "");
    call_start(&c, S_USER_SEARCH);
    call_text(&c, pat);
    call_i64(&c, limit);
    rc = run1(st, &c);
    if (rc == STORE_OK) {
        rc = collect(&c, users, user_json, 0);
        call_done(&c);
    }
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

static int pg_refresh_insert(struct store *st_, int64_t user_id, const char *family, const char *token_hash,
                             int64_t expires_at, int64_t now)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_RT_INSERT);
    call_i64(&c, user_id);
    call_text(&c, family);
    call_text(&c, token_hash);
    call_i64(&c, now);
    call_i64(&c, expires_at);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    rc = changed(&c) ? STORE_OK : STORE_CONFLICT;
    call_done(&c);
    return rc;
}

/* Reuse is checked before revocation and expiry: a rotated token presented
 * again is theft, whatever else is true of it. Each outcome writes with at
 * most one statement, so no savepoint is needed for atomicity. */
static int pg_refresh_rotate(struct store *st_, const char *old_hash, const char *new_hash, int64_t new_expires_at,
                             int64_t now, int64_t *user_id_out)
{
    struct pg *st = (struct pg *)st_;
    int64_t id, user_id, expires_at;
    int revoked, replaced, rc;
    struct call c;

    call_start(&c, S_RT_BY_HASH);
    call_text(&c, old_hash);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c)) {
        call_done(&c);
        return STORE_NOT_FOUND;
    }
    id = col_i64(c.res, 0, 0);
    user_id = col_i64(c.res, 0, 1);
    expires_at = col_i64(c.res, 0, 2);
    revoked = col_i64(c.res, 0, 3) != 0;
    replaced = col_i64(c.res, 0, 4) != 0;
    call_done(&c);
    if (replaced) {
        call_start(&c, S_RT_REVOKE_FAMILY);
        call_i64(&c, id);
        call_i64(&c, now);
        if ((rc = run1(st, &c)) != STORE_OK)
            return rc;
        call_done(&c);
        return STORE_REUSED;
    }
    if (revoked || expires_at <= now)
        return STORE_EXPIRED;
    call_start(&c, S_RT_ROTATE);
    call_i64(&c, id);
    call_text(&c, new_hash);
    call_i64(&c, now);
    call_i64(&c, new_expires_at);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    rc = rows(&c) ? STORE_OK : STORE_CONFLICT;
    call_done(&c);
    if (rc == STORE_OK && user_id_out)
        *user_id_out = user_id;
    return rc;
}

static int pg_refresh_revoke(struct store *st_, const char *token_hash, int64_t now)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_RT_REVOKE);
    call_text(&c, token_hash);
    call_i64(&c, now);
    if ((rc = run1(st, &c)) == STORE_OK)
        call_done(&c);
    return rc;
}

static int pg_refresh_prune(struct store *st_, int64_t now, int64_t rotated_before, int limit, int *deleted_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_RT_PRUNE);
    call_i64(&c, now);
    call_i64(&c, rotated_before);
    call_i64(&c, limit);
    if ((rc = run1(st, &c)) == STORE_OK) {
        *deleted_out = (int)changed(&c);
        call_done(&c);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* Conversations and members.                                           */

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts ids and drops duplicates; returns the new count. */
static size_t sort_unique(int64_t *ids, size_t n)
{
    size_t k = 0;

    qsort(ids, n, sizeof *ids, cmp_id);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || ids[k - 1] != ids[i])
            ids[k++] = ids[i];
    return k;
}

static void arr_of_ids(struct buf *b, const int64_t *ids, size_t n)
{
    arr_start(b, OID_INT8, n);
    for (size_t i = 0; i < n; i++)
        arr_i64(b, ids[i]);
}

/* Queues S_USERS_COUNT of ids[0..n) (distinct). */
static void users_count_call(struct call *c, const int64_t *ids, size_t n)
{
    struct buf b;

    call_start(c, S_USERS_COUNT);
    arr_of_ids(&b, ids, n);
    call_buf(c, &b);
}

static int pg_conv_create_direct(struct store *st_, int64_t a, int64_t b, int64_t now, int64_t *conv_out,
                                 int *created_out)
{
    struct pg *st = (struct pg *)st_;
    int64_t lo = a < b ? a : b, hi = a < b ? b : a, ids[2] = {lo, hi};
    struct call c[2];
    int rc;

    *created_out = 0;
    if (a == b)
        return STORE_BAD_REQUEST;
    users_count_call(&c[0], ids, 2);
    call_start(&c[1], S_DIRECT_FIND);
    call_i64(&c[1], lo);
    call_i64(&c[1], hi);
    if ((rc = run(st, c, 2, 0)) != STORE_OK)
        return rc;
    if (col_i64(c[0].res, 0, 0) != 2)
        rc = STORE_NOT_FOUND;
    else if (rows(&c[1]))
        *conv_out = col_i64(c[1].res, 0, 0);
    else
        rc = STORE_CONFLICT; /* not there yet: create it */
    calls_done(c, 2);
    if (rc != STORE_CONFLICT)
        return rc;

    call_start(&c[0], S_DIRECT_CREATE);
    call_i64(&c[0], a);
    call_i64(&c[0], b);
    call_i64(&c[0], lo);
    call_i64(&c[0], hi);
    call_i64(&c[0], now);
    if ((rc = run1(st, &c[0])) != STORE_OK)
        return rc;
    int64_t made = col_i64(c[0].res, 0, 0);
    int paired = !PQgetisnull(c[0].res, 0, 1);
    call_done(&c[0]);
    if (paired) {
        *conv_out = made;
        *created_out = 1;
        return STORE_OK;
    }
    /* Another writer created the pair's conversation a moment ago: ours
     * goes, theirs is the answer. */
    call_start(&c[0], S_CONV_DELETE);
    call_i64(&c[0], made);
    call_start(&c[1], S_DIRECT_FIND);
    call_i64(&c[1], lo);
    call_i64(&c[1], hi);
    if ((rc = run(st, c, 2, 0)) != STORE_OK)
        return rc;
    if (rows(&c[1]))
        *conv_out = col_i64(c[1].res, 0, 0);
    else
        rc = STORE_ERR; /* cannot be: the pair conflicted */
    calls_done(c, 2);
    if (rc == STORE_ERR)
        log_error("store: %s: the pair conflicted but is not there", SQL[S_DIRECT_CREATE].what);
    return rc;
}

static int pg_conv_create_group(struct store *st_, int64_t creator, const char *title, const int64_t *members,
                                size_t n, int64_t now, int64_t *conv_out)
{
    struct pg *st = (struct pg *)st_;
    int64_t *ids;
    size_t k;
    struct call c;
    struct buf b;
    int rc;

    if (n && !members)
        return STORE_BAD_REQUEST;
    /* Every id is checked before anything is written (one statement), and
     * the group is one statement: an unknown id leaves no trace. */
    ids = xmalloc((n + 1) * sizeof *ids);
    ids[0] = creator;
    if (n)
        memcpy(ids + 1, members, n * sizeof *ids);
    k = sort_unique(ids, n + 1);
    users_count_call(&c, ids, k);
    if ((rc = run1(st, &c)) != STORE_OK)
        goto done;
    rc = col_i64(c.res, 0, 0) == (int64_t)k ? STORE_OK : STORE_NOT_FOUND;
    call_done(&c);
    if (rc != STORE_OK)
        goto done;
    call_start(&c, S_GROUP_CREATE);
    call_i64(&c, creator);
    call_text(&c, title);
    arr_of_ids(&b, ids, k);
    call_buf(&c, &b);
    call_i64(&c, now);
    if ((rc = run1(st, &c)) != STORE_OK)
        goto done;
    *conv_out = col_i64(c.res, 0, 0);
    call_done(&c);
done:
    free(ids);
    return rc;
}

static void members_call(struct call *c, int64_t conv)
{
    call_start(c, S_CONV_MEMBERS);
    call_i64(c, conv);
}

/* The conversation row and its members in one snapshot (one round trip). */
static int pg_conv_get(struct store *st_, int64_t conv, int64_t viewer, json_t **conv_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c[2];
    json_t *obj = NULL;
    int rc;

    *conv_out = NULL;
    call_start(&c[0], S_CONV_GET);
    call_i64(&c[0], conv);
    call_i64(&c[0], viewer);
    members_call(&c[1], conv);
    if ((rc = run(st, c, 2, RUN_SNAPSHOT)) != STORE_OK)
        return rc;
    if (!rows(&c[0]))
        rc = STORE_NOT_FOUND;
    else if (!(obj = conv_json(c[0].res, 0)))
        rc = log_json(SQL[S_CONV_GET].what);
    else
        rc = collect(&c[1], json_object_get(obj, "members"), member_json, 0);
    calls_done(c, 2);
    if (rc != STORE_OK) {
        json_decref(obj);
        return rc;
    }
    *conv_out = obj;
    return STORE_OK;
}

/* Two queries whatever the number of conversations, in one snapshot: the
 * rows (last message joined in), then every member of all of them. */
static int pg_conv_list(struct store *st_, int64_t viewer, json_t **convs_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *convs, *index;
    struct call c[2];
    int rc;

    *convs_out = NULL;
    call_start(&c[0], S_CONV_LIST);
    call_i64(&c[0], viewer);
    call_start(&c[1], S_LIST_MEMBERS);
    call_i64(&c[1], viewer);
    if ((rc = run(st, c, 2, RUN_SNAPSHOT)) != STORE_OK)
        return rc;
    convs = json_array();
    index = json_object(); /* id (decimal) -> that conversation's "members" */
    for (int i = 0; i < rows(&c[0]) && rc == STORE_OK; i++) {
        json_t *obj = conv_json(c[0].res, i);
        char key[24];
        if (!obj) {
            rc = log_json(SQL[S_CONV_LIST].what);
            break;
        }
        snprintf(key, sizeof key, "%lld", (long long)col_i64(c[0].res, i, 0));
        json_object_set(index, key, json_object_get(obj, "members"));
        json_array_append_new(convs, obj);
    }
    for (int i = 0; i < rows(&c[1]) && rc == STORE_OK; i++) {
        json_t *members, *m;
        char key[24];
        snprintf(key, sizeof key, "%lld", (long long)col_i64(c[1].res, i, 0));
        if (!(members = json_object_get(index, key)))
            continue; /* cannot happen: one snapshot */
        if (!(m = member_json(c[1].res, i, 1)))
            rc = log_json(SQL[S_LIST_MEMBERS].what);
        else
            json_array_append_new(members, m);
    }
    calls_done(c, 2);
    json_decref(index);
    if (rc != STORE_OK) {
        json_decref(convs);
        return rc;
    }
    *convs_out = convs;
    return STORE_OK;
}

/* One snapshot of a conversation for a push to every member: its row, its
 * members, their read positions (one round trip). */
static int pg_conv_view(struct store *st_, int64_t conv, json_t **shared_out, struct store_pos **pos_out,
                        size_t *n_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *obj = NULL;
    struct call c[3];
    int rc;

    *shared_out = NULL;
    *pos_out = NULL;
    *n_out = 0;
    call_start(&c[0], S_CONV_SHARED);
    call_i64(&c[0], conv);
    members_call(&c[1], conv);
    call_start(&c[2], S_MEMBER_POS);
    call_i64(&c[2], conv);
    if ((rc = run(st, c, 3, RUN_SNAPSHOT)) != STORE_OK)
        return rc;
    if (!rows(&c[0]) || !rows(&c[2]))
        rc = STORE_NOT_FOUND;
    else if (!(obj = conv_shared_json(c[0].res, 0)))
        rc = log_json(SQL[S_CONV_SHARED].what);
    else
        rc = collect(&c[1], json_object_get(obj, "members"), member_json, 0);
    if (rc == STORE_OK) {
        size_t n = (size_t)rows(&c[2]);
        struct store_pos *v = xmalloc(n * sizeof *v);
        for (size_t i = 0; i < n; i++) {
            v[i].user = col_i64(c[2].res, (int)i, 0);
            v[i].last_read_seq = col_i64(c[2].res, (int)i, 1);
        }
        *pos_out = v;
        *n_out = n;
        *shared_out = obj;
    } else {
        json_decref(obj);
    }
    calls_done(c, 3);
    return rc;
}

static int pg_member_ctx(struct store *st_, int64_t conv, int64_t user, int *direct, enum store_role *role)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_ACTOR_CTX);
    call_i64(&c, conv);
    call_i64(&c, user);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c)) {
        rc = STORE_NOT_FOUND;
    } else {
        if (direct)
            *direct = col_i64(c.res, 0, 0) != 0;
        if (role)
            *role = store_role_parse(col_text(c.res, 0, 1));
    }
    call_done(&c);
    return rc;
}

static int pg_member_insert(struct store *st_, int64_t conv, int64_t user, enum store_role role, int64_t now,
                            int *added_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_MEMBER_INSERT);
    call_i64(&c, conv);
    call_i64(&c, user);
    call_text(&c, store_role_name(role));
    call_i64(&c, now);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (added_out)
        *added_out = changed(&c) > 0;
    call_done(&c);
    return STORE_OK;
}

/* The member and the hand-over of ownership: one statement, both or neither. */
static int pg_member_delete(struct store *st_, int64_t conv, int64_t user, int pass_ownership)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int64_t deleted = 0;
    int rc;

    call_start(&c, S_MEMBER_DELETE);
    call_i64(&c, conv);
    call_i64(&c, user);
    call_i64(&c, pass_ownership ? 1 : 0);
    if ((rc = one_i64(st, &c, &deleted)) != STORE_OK)
        return rc;
    return deleted ? STORE_OK : STORE_NOT_FOUND;
}

static int pg_member_set_role(struct store *st_, int64_t conv, int64_t user, enum store_role role)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_MEMBER_SET_ROLE);
    call_i64(&c, conv);
    call_i64(&c, user);
    call_text(&c, store_role_name(role));
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    rc = changed(&c) ? STORE_OK : STORE_NOT_FOUND;
    call_done(&c);
    return rc;
}

static int pg_members(struct store *st_, int64_t conv, int64_t **ids_out, size_t *n_out)
{
    struct call c;

    call_start(&c, S_MEMBER_IDS);
    call_i64(&c, conv);
    return ids_query((struct pg *)st_, &c, ids_out, n_out);
}

static int pg_is_member(struct store *st_, int64_t conv, int64_t user)
{
    struct call c;

    call_start(&c, S_IS_MEMBER);
    call_i64(&c, conv);
    call_i64(&c, user);
    return one_i64((struct pg *)st_, &c, NULL);
}

static int pg_peers(struct store *st_, int64_t user, int64_t **ids_out, size_t *n_out)
{
    struct call c;

    call_start(&c, S_PEERS);
    call_i64(&c, user);
    return ids_query((struct pg *)st_, &c, ids_out, n_out);
}

static int pg_user_convs(struct store *st_, int64_t user, int64_t **ids_out, size_t *n_out)
{
    struct call c;

    call_start(&c, S_USER_CONVS);
    call_i64(&c, user);
    return ids_query((struct pg *)st_, &c, ids_out, n_out);
}

/* ------------------------------------------------------------------ */
/* Messages.                                                            */

static int pg_msg_by_client(struct store *st_, int64_t sender, const char *client_id, int64_t *conv_out,
                            int64_t *seq_out, int64_t *ts_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_MSG_BY_CLIENT);
    call_i64(&c, sender);
    call_text(&c, client_id);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c)) {
        rc = STORE_NOT_FOUND;
    } else {
        if (conv_out)
            *conv_out = col_i64(c.res, 0, 0);
        if (seq_out)
            *seq_out = col_i64(c.res, 0, 1);
        if (ts_out)
            *ts_out = col_i64(c.res, 0, 2);
    }
    call_done(&c);
    return rc;
}

static int pg_conv_last_seq(struct store *st_, int64_t conv, int64_t *last_seq_out)
{
    struct call c;

    call_start(&c, S_CONV_LAST_SEQ);
    call_i64(&c, conv);
    return one_i64((struct pg *)st_, &c, last_seq_out);
}

static int pg_conv_last_seqs(struct store *st_, const int64_t *convs, size_t n, int64_t *seqs, int64_t *mods)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    struct buf b;
    int rc;

    for (size_t i = 0; i < n; i++) {
        seqs[i] = 0;
        if (mods)
            mods[i] = 0;
    }
    if (!n)
        return STORE_OK;
    call_start(&c, S_CONV_LAST_SEQS);
    arr_of_ids(&b, convs, n);
    call_buf(&c, &b);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    for (int i = 0; i < rows(&c); i++) {
        int64_t k = col_i64(c.res, i, 0);
        if (k < 1 || (size_t)k > n)
            continue;
        seqs[k - 1] = col_i64(c.res, i, 1);
        if (mods)
            mods[k - 1] = col_i64(c.res, i, 2);
    }
    call_done(&c);
    return STORE_OK;
}

static int pg_replay_lag(struct store *st_, int64_t *ms_out)
{
    struct call c;

    call_start(&c, S_REPLAY_LAG);
    return one_i64((struct pg *)st_, &c, ms_out);
}

static int pg_read_set(struct store *st_, int64_t conv, int64_t user, int64_t seq, int64_t *pos_out)
{
    struct call c;

    call_start(&c, S_READ_SET);
    call_i64(&c, conv);
    call_i64(&c, user);
    call_i64(&c, seq);
    return one_i64((struct pg *)st_, &c, pos_out);
}

/* A MSG_COLS row. */
static json_t *page_msg_json(const PGresult *r, int row, int64_t conv)
{
    return msg_full_json(r, row, conv, col_i64(r, row, 0), 1);
}

static int pg_msg_page(struct store *st_, int64_t conv, int64_t before, int64_t after, int limit, json_t **msgs_out,
                       int *has_more_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *msgs;
    struct call c;
    int rc = STORE_OK, n;

    *msgs_out = NULL;
    *has_more_out = 0;
    if (limit < 1)
        return STORE_BAD_REQUEST;
    /* before wins over after; neither is "before infinity". */
    call_start(&c, before <= 0 && after >= 0 ? S_MSG_AFTER : S_MSG_BEFORE);
    call_i64(&c, conv);
    call_i64(&c, before > 0 ? before : after >= 0 ? after : INT64_MAX);
    call_i64(&c, (int64_t)limit + 1); /* one row more tells whether there is more */
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    msgs = json_array();
    n = rows(&c);
    for (int i = 0; i < n && i < limit; i++) {
        json_t *m = page_msg_json(c.res, i, conv);
        if (!m) {
            rc = log_json(SQL[c.id].what);
            break;
        }
        json_array_append_new(msgs, m);
    }
    call_done(&c);
    if (rc != STORE_OK) {
        json_decref(msgs);
        return rc;
    }
    *has_more_out = n > limit;
    *msgs_out = msgs;
    return STORE_OK;
}

static json_t *summary_json(const PGresult *r, int row, int col)
{
    json_t *o = rows_summary(col_i64(r, row, col), col_i64(r, row, col + 1), col_i64(r, row, col + 2));
    if (o)
        json_object_set_new(o, "last_mod", json_integer(col_i64(r, row, col + 3)));
    return o;
}

static int pg_sync_summary(struct store *st_, int64_t user, json_t **out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    json_t *arr;
    int rc;

    *out = NULL;
    call_start(&c, S_SYNC_SUMMARY);
    call_i64(&c, user);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    arr = json_array();
    rc = collect(&c, arr, summary_json, 0);
    call_done(&c);
    if (rc != STORE_OK) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* The batch of sends.                                                  */

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
        k[i] = (struct send_key){v[i].sender, v[i].client_id ? v[i].client_id : "", i};
        first[i] = i;
    }
    qsort(k, n, sizeof *k, cmp_send);
    for (size_t j = 1; j < n; j++)
        if (k[j - 1].sender == k[j].sender && strcmp(k[j - 1].client_id, k[j].client_id) == 0)
            first[k[j].i] = first[k[j - 1].i];
    free(k);
}

/* A conversation of one send_batch call: its members (read once, sorted),
 * how many new messages, the next seq to hand out. */
struct bconv {
    int64_t conv;
    struct idlist *members;
    int64_t count, next;
    int64_t last_seq; /* as read before the reservation (only when a send of the batch has a reply_to) */
};

static int cmp_bconv(const void *a, const void *b)
{
    int64_t x = ((const struct bconv *)a)->conv, y = ((const struct bconv *)b)->conv;
    return (x > y) - (x < y);
}

static struct bconv *bconv_find(struct bconv *v, size_t n, int64_t conv)
{
    struct bconv key = {.conv = conv};
    return bsearch(&key, v, n, sizeof *v, cmp_bconv);
}

static int bconv_has(const struct bconv *c, int64_t user)
{
    return c->members->n && bsearch(&user, c->members->ids, c->members->n, sizeof user, cmp_id) != NULL;
}

enum { SEND_NEW = 1 };

/* An upload named by a send of the batch: S_BATCH_ATTS (not attached,
 * row-locked) or S_BATCH_ATTACHED. */
struct batt {
    const char *id; /* into the result */
    int row;        /* its row in S_BATCH_ATTS's result (not attached) */
    int64_t owner;
    int attached;
    size_t taken;   /* 0, or 1 + the index of the send that takes it */
};

static int cmp_batt(const void *a, const void *b)
{
    return strcmp(((const struct batt *)a)->id, ((const struct batt *)b)->id);
}

static struct batt *batt_find(struct batt *v, size_t n, const char *id)
{
    struct batt key = {.id = id};
    return id && n ? bsearch(&key, v, n, sizeof *v, cmp_batt) : NULL;
}

/* What batch_read learns beyond the dups: the conversations (sorted, with
 * their members and, when a send replies, their last seqs) and the uploads
 * the sends name (sorted by id; res kept for their names). */
struct bread {
    struct bconv *bv;
    size_t nconv;
    PGresult *atts, *attached;
    struct batt *att;
    size_t natt;
};

static void bread_dispose(struct bread *b)
{
    for (size_t k = 0; k < b->nconv; k++)
        idlist_unref(b->bv[k].members);
    free(b->bv);
    PQclear(b->atts);
    PQclear(b->attached);
    free(b->att);
}

/* Lookups and members (one round trip), plus the last seqs when a send has
 * a reply_to and the named uploads when a send has attachments: fills the
 * dups and *br. */
static int batch_read(struct pg *st, struct store_send *v, size_t n, const size_t *first, struct bread *br)
{
    size_t k = 0, nconv = 0, nids = 0;
    size_t *pos = xmalloc((n ? n : 1) * sizeof *pos); /* lookup position -> index in v */
    int64_t *ids = xmalloc((n ? n : 1) * sizeof *ids);
    int need_seqs = 0;
    struct buf senders, cids, convs, attids;
    struct call c[5];
    int nc = 2, cs = -1, ca = -1;
    int rc;

    for (size_t i = 0; i < n; i++)
        if (first[i] == i) {
            pos[k++] = i;
            ids[nconv++] = v[i].conv;
            need_seqs |= v[i].reply_to != 0;
            nids += v[i].att ? v[i].n_att : 0;
        }
    nconv = sort_unique(ids, nconv);
    arr_start(&senders, OID_INT8, k);
    arr_start(&cids, OID_TEXT, k);
    for (size_t j = 0; j < k; j++) {
        const char *cid = v[pos[j]].client_id ? v[pos[j]].client_id : "";
        arr_i64(&senders, v[pos[j]].sender);
        arr_bytes(&cids, cid, strlen(cid));
    }
    arr_of_ids(&convs, ids, nconv);
    call_start(&c[0], S_BATCH_LOOKUP);
    call_buf(&c[0], &senders);
    call_buf(&c[0], &cids);
    call_start(&c[1], S_BATCH_MEMBERS);
    call_buf(&c[1], &convs);
    if (need_seqs) {
        cs = nc++;
        call_start(&c[cs], S_BATCH_LAST_SEQS);
        arr_of_ids(&convs, ids, nconv);
        call_buf(&c[cs], &convs);
    }
    if (nids) {
        /* an id that is not text (invalid UTF-8) is left out: unknown */
        size_t m = 0;
        ca = nc++;
        for (size_t j = 0; j < k; j++)
            for (size_t a = 0; v[pos[j]].att && a < v[pos[j]].n_att; a++)
                m += v[pos[j]].att[a] && utf8_ok(v[pos[j]].att[a], strlen(v[pos[j]].att[a]));
        arr_start(&attids, OID_TEXT, m);
        for (size_t j = 0; j < k; j++)
            for (size_t a = 0; v[pos[j]].att && a < v[pos[j]].n_att; a++) {
                const char *id = v[pos[j]].att[a];
                if (id && utf8_ok(id, strlen(id)))
                    arr_bytes(&attids, id, strlen(id));
            }
        call_start(&c[ca], S_BATCH_ATTS);
        call_start(&c[ca + 1], S_BATCH_ATTACHED);
        call_bytes(&c[ca + 1], attids.data, attids.len); /* the same array: c[ca] frees it */
        call_buf(&c[ca], &attids);
        nc++;
    }
    rc = run(st, c, (size_t)nc, 0);
    if (rc == STORE_OK) {
        for (int r = 0; r < rows(&c[0]); r++) {
            int64_t j = col_i64(c[0].res, r, 0);
            if (j < 1 || (size_t)j > k)
                continue;
            struct store_send *m = &v[pos[j - 1]];
            m->dup = 1; /* the original ack, wherever it went */
            m->conv = col_i64(c[0].res, r, 1);
            m->seq = col_i64(c[0].res, r, 2);
            m->ts = col_i64(c[0].res, r, 3);
        }
        /* members arrive by (conv, user): cut them into one list per conv */
        struct bconv *bv = xcalloc(nconv ? nconv : 1, sizeof *bv);
        int nrow = rows(&c[1]), r = 0;
        int64_t *uids = xmalloc((nrow ? (size_t)nrow : 1) * sizeof *uids);
        for (size_t j = 0; j < nconv; j++) {
            size_t cnt = 0;
            while (r < nrow && col_i64(c[1].res, r, 0) < ids[j])
                r++;
            while (r < nrow && col_i64(c[1].res, r, 0) == ids[j])
                uids[cnt++] = col_i64(c[1].res, r++, 1);
            bv[j].conv = ids[j];
            bv[j].members = idlist_new(uids, cnt);
        }
        free(uids);
        for (int i = 0; cs >= 0 && i < rows(&c[cs]); i++) {
            struct bconv *b = bconv_find(bv, nconv, col_i64(c[cs].res, i, 0));
            if (b)
                b->last_seq = col_i64(c[cs].res, i, 1);
        }
        br->bv = bv;
        br->nconv = nconv;
        if (ca >= 0) {
            int na = rows(&c[ca]), nb = rows(&c[ca + 1]);
            br->atts = c[ca].res;
            br->attached = c[ca + 1].res;
            c[ca].res = c[ca + 1].res = NULL;
            br->att = xcalloc((size_t)(na + nb) + 1, sizeof *br->att);
            for (int i = 0; i < na; i++)
                br->att[i] = (struct batt){.id = col_text(br->atts, i, 0), .row = i, .owner = col_i64(br->atts, i, 1)};
            for (int i = 0; i < nb; i++)
                br->att[na + i] = (struct batt){.id = col_text(br->attached, i, 0), .row = -1,
                                                .owner = col_i64(br->attached, i, 1), .attached = 1};
            br->natt = (size_t)(na + nb);
            qsort(br->att, br->natt, sizeof *br->att, cmp_batt);
        }
        calls_done(c, (size_t)nc);
    }
    free(pos);
    free(ids);
    return rc;
}

/* The version-2 checks of send i (store.h), before anything of it is
 * written: its reply_to within 1..last_seq counting the batch's earlier new
 * messages of the conversation; its uploads the sender's own, not attached,
 * not taken by an earlier send of the batch, each named once. STORE_OK
 * with the uploads taken, or BAD_REQUEST with why and none taken. */
static int check_v2(const struct store_send *m, size_t i, const struct bconv *c, struct bread *br, const char **why)
{
    *why = NULL;
    if (m->reply_to < 0 || m->reply_to > c->last_seq + c->count)
        *why = "reply_to is not a message of the conversation";
    else if (m->n_att > STORE_MAX_ATTACH || (m->n_att && !m->att))
        *why = "too many attachments";
    for (size_t j = 0; !*why && j < m->n_att; j++) {
        struct batt *a = batt_find(br->att, br->natt, m->att[j]);
        if (!a || a->owner != m->sender)
            *why = "unknown attachment";
        else if (a->taken == i + 1)
            *why = "an attachment is listed twice";
        else if (a->attached || a->taken)
            *why = "attachment already attached to a message";
        else
            a->taken = i + 1;
    }
    if (!*why)
        return STORE_OK;
    for (size_t j = 0; j < br->natt; j++)
        if (br->att[j].taken == i + 1)
            br->att[j].taken = 0;
    return STORE_BAD_REQUEST;
}

/* The attachment objects of a new send, in the order given. */
static json_t *att_out_json(const struct store_send *m, struct bread *br)
{
    json_t *arr = json_array();

    for (size_t j = 0; j < m->n_att; j++) {
        struct batt *a = batt_find(br->att, br->natt, m->att[j]);
        json_t *o = a && a->row >= 0 ? rows_attachment(a->id, col_text(br->atts, a->row, 2),
                                                       col_text(br->atts, a->row, 3), col_i64(br->atts, a->row, 4))
                                     : NULL;
        if (!o) {
            json_decref(arr);
            return NULL;
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

/* One UPDATE ... RETURNING per conversation with new messages, in
 * ascending id order, all in one round trip: the row locks serialize the
 * writers of every node and the order keeps them from deadlocking. */
static int batch_reserve(struct pg *st, struct bconv *bv, size_t nconv, int64_t now)
{
    struct call *c = xmalloc((nconv ? nconv : 1) * sizeof *c);
    size_t k = 0;
    int rc;

    for (size_t j = 0; j < nconv; j++) {
        if (!bv[j].count)
            continue;
        call_start(&c[k], S_CONV_ADVANCE);
        call_i64(&c[k], bv[j].conv);
        call_i64(&c[k], bv[j].count);
        call_i64(&c[k++], now);
    }
    rc = k ? run(st, c, k, 0) : STORE_OK;
    if (rc == STORE_OK) {
        k = 0;
        for (size_t j = 0; j < nconv; j++) {
            if (!bv[j].count)
                continue;
            if (!rows(&c[k])) {
                /* the conversation had members a moment ago */
                log_error("store: %s: conversation %lld is gone", SQL[S_CONV_ADVANCE].what, (long long)bv[j].conv);
                rc = STORE_ERR;
            } else {
                bv[j].next = col_i64(c[k].res, 0, 0) - bv[j].count + 1;
            }
            k++;
        }
        calls_done(c, k);
    }
    free(c);
    return rc;
}

/* The new messages (one multi-row INSERT), each sender's read position
 * (one multi-row UPDATE) and, when sends have attachments, the uploads
 * attached (one multi-row UPDATE), in one round trip. */
static int batch_write(struct pg *st, struct store_send *v, size_t n, const uint8_t *fresh, int64_t now)
{
    struct buf convs, seqs, senders, cids, bodies, replies, natts, txts, rconv, ruser, rseq;
    struct buf aid, aconv, aseq, apos;
    size_t nnew = 0, nread = 0, natt = 0;
    struct call c[3];
    int rc;

    for (size_t i = 0; i < n; i++)
        if (fresh[i] == SEND_NEW) {
            nnew++;
            natt += v[i].n_att;
        }
    /* each sender's last new message per conversation */
    uint8_t *last = xcalloc(n ? n : 1, 1);
    for (size_t i = n; i-- > 0;) {
        if (fresh[i] != SEND_NEW)
            continue;
        int later = 0;
        for (size_t k = i + 1; k < n && !later; k++)
            later = fresh[k] == SEND_NEW && v[k].conv == v[i].conv && v[k].sender == v[i].sender;
        if (!later) {
            last[i] = 1;
            nread++;
        }
    }
    arr_start(&convs, OID_INT8, nnew);
    arr_start(&seqs, OID_INT8, nnew);
    arr_start(&senders, OID_INT8, nnew);
    arr_start(&cids, OID_TEXT, nnew);
    arr_start(&bodies, OID_BYTEA, nnew);
    arr_start(&replies, OID_INT8, nnew);
    arr_start(&natts, OID_INT8, nnew);
    arr_start(&txts, OID_TEXT, nnew);
    arr_start(&rconv, OID_INT8, nread);
    arr_start(&ruser, OID_INT8, nread);
    arr_start(&rseq, OID_INT8, nread);
    arr_start(&aid, OID_TEXT, natt);
    arr_start(&aconv, OID_INT8, natt);
    arr_start(&aseq, OID_INT8, natt);
    arr_start(&apos, OID_INT8, natt);
    for (size_t i = 0; i < n; i++) {
        if (fresh[i] != SEND_NEW)
            continue;
        const char *body = v[i].body ? v[i].body : "";
        size_t len = v[i].body ? v[i].body_len : 0;
        arr_i64(&convs, v[i].conv);
        arr_i64(&seqs, v[i].seq);
        arr_i64(&senders, v[i].sender);
        arr_bytes(&cids, v[i].client_id, strlen(v[i].client_id));
        arr_bytes(&bodies, body, len);
        arr_i64(&replies, v[i].reply_to);
        arr_i64(&natts, (int64_t)v[i].n_att);
        /* the text of the search vector: the body itself unless it holds
         * NUL bytes (the common case sends it once) */
        if (len && memchr(body, 0, len))
            arr_text_nonul(&txts, body, len);
        else
            arr_null(&txts);
        if (last[i]) {
            arr_i64(&rconv, v[i].conv);
            arr_i64(&ruser, v[i].sender);
            arr_i64(&rseq, v[i].seq);
        }
        for (size_t j = 0; j < v[i].n_att; j++) {
            arr_bytes(&aid, v[i].att[j], strlen(v[i].att[j]));
            arr_i64(&aconv, v[i].conv);
            arr_i64(&aseq, v[i].seq);
            arr_i64(&apos, (int64_t)j);
        }
    }
    free(last);
    call_start(&c[0], S_MSG_INSERT_MANY);
    call_buf(&c[0], &convs);
    call_buf(&c[0], &seqs);
    call_buf(&c[0], &senders);
    call_buf(&c[0], &cids);
    call_buf(&c[0], &bodies);
    call_i64(&c[0], now);
    call_buf(&c[0], &replies);
    call_buf(&c[0], &natts);
    call_buf(&c[0], &txts);
    call_start(&c[1], S_READ_SET_MANY);
    call_buf(&c[1], &rconv);
    call_buf(&c[1], &ruser);
    call_buf(&c[1], &rseq);
    call_start(&c[2], S_ATTACH_MANY);
    call_buf(&c[2], &aid);
    call_buf(&c[2], &aconv);
    call_buf(&c[2], &aseq);
    call_buf(&c[2], &apos);
    /* A unique-key failure here is the one race that fails a batch: another
     * node stored the same (sender, client id) after our lookup. The
     * client's next resend gets the original. */
    rc = run(st, c, natt ? 3 : 2, 0);
    if (rc == STORE_OK)
        calls_done(c, natt ? 3 : 2);
    if (!natt)
        call_done(&c[2]);
    return rc;
}

/* See store.h and store_pg.h: lookups and members first (nothing fails on
 * a unique key in the normal course), then one reservation per
 * conversation, then the inserts and read positions: three round trips.
 * The version-2 checks (reply_to, attachments) are made in C, in the
 * batch's order, on what the first round trip read: no statement of the
 * batch can fail on them. */
static int pg_send_batch(struct store *st_, struct store_send *v, size_t n, int64_t now,
                         struct store_batch_out *out)
{
    struct pg *st = (struct pg *)st_;
    size_t *first = xmalloc((n ? n : 1) * sizeof *first);
    uint8_t *fresh = xcalloc(n ? n : 1, 1);
    struct bread br = {0};
    size_t nnew = 0;
    int rc;

    find_batch_resends(v, n, first);
    for (size_t i = 0; i < n; i++) {
        v[i].dup = 0;
        v[i].rc = STORE_OK;
        v[i].why = NULL;
        v[i].att_out = NULL;
        if (!v[i].client_id)
            v[i].client_id = "";
    }
    rc = n ? batch_read(st, v, n, first, &br) : STORE_OK;
    for (size_t i = 0; i < n && rc == STORE_OK; i++) {
        struct store_send *m = &v[i];
        if (first[i] != i || m->dup)
            continue;
        struct bconv *c = bconv_find(br.bv, br.nconv, m->conv);
        if (!c || !bconv_has(c, m->sender)) {
            m->rc = STORE_NOT_FOUND;
            continue;
        }
        if ((m->reply_to || m->n_att) && (m->rc = check_v2(m, i, c, &br, &m->why)) != STORE_OK)
            continue;
        fresh[i] = SEND_NEW;
        c->count++;
        nnew++;
    }
    if (rc == STORE_OK && nnew)
        rc = batch_reserve(st, br.bv, br.nconv, now);
    if (rc == STORE_OK && nnew) {
        for (size_t i = 0; i < n; i++) {
            if (fresh[i] != SEND_NEW)
                continue;
            struct bconv *c = bconv_find(br.bv, br.nconv, v[i].conv);
            v[i].seq = c->next++;
            v[i].ts = now;
        }
        rc = batch_write(st, v, n, fresh, now);
    }
    for (size_t i = 0; i < n && rc == STORE_OK; i++)
        if (fresh[i] == SEND_NEW && v[i].n_att && !(v[i].att_out = att_out_json(&v[i], &br)))
            rc = log_json(SQL[S_BATCH_ATTS].what);
    for (size_t i = 0; i < n; i++) {
        if (first[i] == i)
            continue;
        const struct store_send *o = &v[first[i]];
        v[i].rc = o->rc;
        v[i].why = o->why;
        v[i].dup = o->rc == STORE_OK;
        v[i].conv = o->rc == STORE_OK ? o->conv : v[i].conv;
        v[i].seq = o->seq;
        v[i].ts = o->ts;
    }
    if (rc == STORE_OK && out) {
        for (size_t k = 0; k < br.nconv; k++) {
            if (!br.bv[k].count)
                continue;
            out->v = xrealloc(out->v, (out->n + 1) * sizeof *out->v);
            out->v[out->n].conv = br.bv[k].conv;
            out->v[out->n++].members = idlist_ref(br.bv[k].members);
        }
    }
    bread_dispose(&br);
    free(first);
    free(fresh);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Version 2: changes.                                                  */

/* An operation of several statements called outside a transaction (a test,
 * a tool) runs in one of its own: *own says to end it. */
static int own_begin(struct pg *st, int *own)
{
    *own = !st->in_tx;
    return *own ? pg_begin(&st->base) : STORE_OK;
}

static int own_end(struct pg *st, int own, int rc)
{
    if (!own)
        return rc;
    if (rc == STORE_OK)
        return pg_commit(&st->base);
    pg_rollback(&st->base);
    return rc;
}

static int pg_msg_facts(struct store *st_, int64_t conv, int64_t seq, struct store_msg_facts *out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    call_start(&c, S_MSG_FACTS);
    call_i64(&c, conv);
    call_i64(&c, seq);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c)) {
        rc = STORE_NOT_FOUND;
    } else {
        out->sender = col_i64(c.res, 0, 0);
        out->deleted = col_i64(c.res, 0, 1) != 0;
        out->mod = col_i64(c.res, 0, 2);
    }
    call_done(&c);
    return rc;
}

static int pg_msg_get(struct store *st_, int64_t conv, int64_t seq, json_t **msg_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    *msg_out = NULL;
    call_start(&c, S_MSG_GET);
    call_i64(&c, conv);
    call_i64(&c, seq);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c))
        rc = STORE_NOT_FOUND;
    else if (!(*msg_out = page_msg_json(c.res, 0, conv)))
        rc = log_json(SQL[S_MSG_GET].what);
    call_done(&c);
    return rc;
}

/* Drops the blobs named in zero (BLOBS_ZERO: NULL when none). */
static int blobs_drop(struct pg *st, const char *zero)
{
    struct call c;
    int rc;

    if (!zero)
        return STORE_OK;
    call_start(&c, S_BLOBS_DROP);
    call_text(&c, zero);
    if ((rc = run1(st, &c)) == STORE_OK)
        call_done(&c);
    return rc;
}

/* See store.h. One round trip: the conversation's row lock, then the change
 * (S_CHANGE_*), which decides on the message as it is under that lock; a
 * delete that dropped a blob's last reference takes a second one. A change
 * the message's state refuses (editing or reacting to a deleted message)
 * is BAD_REQUEST, decided before anything is written; deleting a deleted
 * message changes nothing (*changed_out 0, its mod). */
static int pg_msg_change(struct store *st_, int64_t conv, int64_t seq, int64_t user, enum store_change_kind kind,
                         const char *text, size_t text_len, int64_t now, int64_t *mod_out, int *changed_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c[2];
    char *zero = NULL;
    int rc, own;

    *mod_out = 0;
    *changed_out = 0;
    if (kind != CHANGE_DELETE && (!text || (kind != CHANGE_EDIT && (!text_len || memchr(text, 0, text_len))) ||
                                  !utf8_ok(text, text_len)))
        return STORE_BAD_REQUEST;
    call_start(&c[0], S_CONV_LOCK);
    call_i64(&c[0], conv);
    switch (kind) {
    case CHANGE_EDIT:
        call_start(&c[1], S_CHANGE_EDIT);
        call_i64(&c[1], conv);
        call_i64(&c[1], seq);
        call_bytes(&c[1], text_len ? text : "", text_len);
        if (text_len && memchr(text, 0, text_len)) {
            char *t = xmalloc(text_len);
            for (size_t i = 0; i < text_len; i++)
                t[i] = text[i] ? text[i] : ' ';
            call_own(&c[1], t, text_len);
        } else {
            call_bytes(&c[1], NULL, 0);
        }
        call_i64(&c[1], now);
        break;
    case CHANGE_DELETE:
        call_start(&c[1], S_CHANGE_DELETE);
        call_i64(&c[1], conv);
        call_i64(&c[1], seq);
        break;
    case CHANGE_REACT_ON:
    case CHANGE_REACT_OFF:
        call_start(&c[1], kind == CHANGE_REACT_ON ? S_CHANGE_REACT_ON : S_CHANGE_REACT_OFF);
        call_i64(&c[1], conv);
        call_i64(&c[1], seq);
        call_i64(&c[1], user);
        call_bytes(&c[1], text, text_len);
        break;
    default:
        return STORE_BAD_REQUEST;
    }
    if ((rc = own_begin(st, &own)) != STORE_OK) {
        calls_done(c, 2);
        return rc;
    }
    if ((rc = run(st, c, 2, 0)) != STORE_OK)
        return own_end(st, own, rc);
    if (!rows(&c[0]) || !rows(&c[1])) {
        rc = STORE_NOT_FOUND;
    } else if (!PQgetisnull(c[1].res, 0, 2)) {
        *mod_out = col_i64(c[1].res, 0, 2);
        *changed_out = 1;
        if (kind == CHANGE_DELETE && !PQgetisnull(c[1].res, 0, 3))
            zero = xstrdup(col_text(c[1].res, 0, 3));
    } else if (col_i64(c[1].res, 0, 0) && (kind == CHANGE_EDIT || kind == CHANGE_REACT_ON)) {
        rc = STORE_BAD_REQUEST; /* deleted: nothing was written */
    } else {
        *mod_out = col_i64(c[1].res, 0, 1);
    }
    calls_done(c, 2);
    if (rc == STORE_OK)
        rc = blobs_drop(st, zero);
    free(zero);
    return own_end(st, own, rc);
}

static int pg_changes_page(struct store *st_, int64_t conv, int64_t after_mod, int limit, json_t **msgs_out,
                           int64_t *last_mod_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c[2];
    json_t *msgs;
    int rc = STORE_OK;

    *msgs_out = NULL;
    *last_mod_out = 0;
    if (limit < 1)
        return STORE_BAD_REQUEST;
    call_start(&c[0], S_CHANGES);
    call_i64(&c[0], conv);
    call_i64(&c[0], after_mod);
    call_i64(&c[0], limit);
    call_start(&c[1], S_CONV_LAST_MOD);
    call_i64(&c[1], conv);
    /* one snapshot: last_mod agrees with the page */
    if ((rc = run(st, c, 2, RUN_SNAPSHOT)) != STORE_OK)
        return rc;
    if (!rows(&c[1])) {
        calls_done(c, 2);
        return STORE_NOT_FOUND;
    }
    msgs = json_array();
    for (int i = 0; i < rows(&c[0]) && rc == STORE_OK; i++) {
        json_t *m = page_msg_json(c[0].res, i, conv);
        if (!m)
            rc = log_json(SQL[S_CHANGES].what);
        else
            json_array_append_new(msgs, m);
    }
    *last_mod_out = col_i64(c[1].res, 0, 0);
    calls_done(c, 2);
    if (rc != STORE_OK) {
        json_decref(msgs);
        return rc;
    }
    *msgs_out = msgs;
    return STORE_OK;
}


/* ------------------------------------------------------------------ */
/* Version 2: search.                                                   */

/* See store.h: the words go to parley_tsquery as one text[] parameter
 * (002_v2.sql quotes each as a lexeme); nothing of them is SQL. The cursor
 * is messages.id: the page is id < before, newest first, one row more than
 * the limit telling whether there is a next page. */
static int pg_search(struct store *st_, int64_t user, int64_t conv, const char *const *words, size_t nwords,
                     int64_t before, int limit, json_t **results_out, int64_t *next_out)
{
    struct pg *st = (struct pg *)st_;
    json_t *res;
    struct call c;
    struct buf w;
    size_t k = 0;
    int rc = STORE_OK, n;

    *results_out = NULL;
    *next_out = 0;
    if (limit < 1)
        return STORE_BAD_REQUEST;
    for (size_t i = 0; i < nwords; i++)
        if (!words[i] || !*words[i] || !utf8_ok(words[i], strlen(words[i])))
            return STORE_BAD_REQUEST;
    res = json_array();
    if (!nwords) {
        *results_out = res;
        return STORE_OK;
    }
    arr_start(&w, OID_TEXT, nwords);
    for (size_t i = 0; i < nwords; i++)
        arr_bytes(&w, words[i], strlen(words[i]));
    call_start(&c, conv > 0 ? S_SEARCH_CONV : S_SEARCH_USER);
    call_i64(&c, conv > 0 ? conv : user);
    call_buf(&c, &w);
    call_i64(&c, before > 0 ? before : INT64_MAX);
    call_i64(&c, (int64_t)limit + 1);
    if ((rc = run1(st, &c)) != STORE_OK) {
        json_decref(res);
        return rc;
    }
    n = rows(&c);
    for (int i = 0; i < n && i < limit && rc == STORE_OK; i++) {
        json_t *o = rows_search_hit(col_i64(c.res, i, 1), col_i64(c.res, i, 2), col_i64(c.res, i, 3),
                                    col_text(c.res, i, 4), (size_t)PQgetlength(c.res, i, 4), col_i64(c.res, i, 5));
        if (!o)
            rc = log_json(SQL[c.id].what);
        else
            json_array_append_new(res, o);
        k = (size_t)i;
    }
    if (rc == STORE_OK && n > limit)
        *next_out = col_i64(c.res, (int)k, 0);
    call_done(&c);
    if (rc != STORE_OK) {
        json_decref(res);
        return rc;
    }
    *results_out = res;
    return STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Version 2: attachments.                                              */

#define ATT_ID_BYTES 16
#define CHUNKS_PER_TRIP 4 /* chunk inserts per round trip: 1 MiB of buffers at most */

/* Streams the file into blob_chunks, CHUNKS_PER_TRIP chunks per round trip:
 * memory bounded whatever its size. STORE_BAD_REQUEST when the file is not
 * size bytes (logged). */
static int write_chunks(struct pg *st, int fd, const char *sha256, int64_t size)
{
    struct call c[CHUNKS_PER_TRIP];
    int64_t done = 0, n = 0;
    int rc = STORE_OK;

    while (rc == STORE_OK && done < size) {
        size_t k = 0;
        while (k < CHUNKS_PER_TRIP && done < size) {
            size_t want = (size_t)(size - done < CHUNK ? size - done : CHUNK), got = 0;
            char *p = xmalloc(want);
            while (got < want) {
                ssize_t r = read(fd, p + got, want - got);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                got += (size_t)r;
            }
            if (got < want) {
                free(p);
                log_error("store: %s: the upload's file is shorter than its size", SQL[S_CHUNK_INSERT].what);
                rc = STORE_BAD_REQUEST;
                break;
            }
            call_start(&c[k], S_CHUNK_INSERT);
            call_text(&c[k], sha256);
            call_i64(&c[k], n++);
            call_own(&c[k++], p, want);
            done += (int64_t)want;
        }
        if (rc != STORE_OK) {
            calls_done(c, k);
            break;
        }
        if ((rc = run(st, c, k, 0)) == STORE_OK)
            calls_done(c, k);
    }
    return rc;
}

/* See store.h: a new attachments row, and one more reference to its bytes,
 * which are copied into blob_chunks only when no attachment holds them yet
 * (the same bytes are stored once). One round trip, plus the chunks'. */
/* STORE_QUOTA if owner's pending uploads and one more of size would count
 * more than max_pending (0: no cap); the owner's row stays locked to the end
 * of the transaction. An unknown owner has nothing pending. */
static int att_quota(struct pg *st, int64_t owner, int64_t size, int64_t max_pending)
{
    struct call c;
    int64_t pending = 0;
    int rc;

    if (max_pending <= 0)
        return STORE_OK;
    call_start(&c, S_ATT_PENDING);
    call_i64(&c, owner);
    call_i64(&c, STORE_ATT_MIN_CHARGE);
    rc = one_i64(st, &c, &pending);
    if (rc == STORE_NOT_FOUND)
        rc = STORE_OK;
    if (rc != STORE_OK)
        return rc;
    return pending + (size > STORE_ATT_MIN_CHARGE ? size : STORE_ATT_MIN_CHARGE) > max_pending ? STORE_QUOTA
                                                                                              : STORE_OK;
}

static int pg_att_create(struct store *st_, int64_t owner, const char *name, const char *type, const char *tmp_path,
                         int64_t size, const char *sha256_hex, int64_t now, int64_t max_pending, json_t **att_out)
{
    struct pg *st = (struct pg *)st_;
    unsigned char raw[ATT_ID_BYTES];
    char id[sodium_base64_ENCODED_LEN(ATT_ID_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    struct call c[2];
    struct stat sb;
    json_t *att;
    int rc, own, fd, fresh;

    *att_out = NULL;
    if (!name || !type || !sha256_hex || size < 0 || !utf8_ok(name, strlen(name)) ||
        !utf8_ok(type, strlen(type)) || !utf8_ok(sha256_hex, strlen(sha256_hex)))
        return STORE_BAD_REQUEST;
    if ((fd = open(tmp_path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &sb) != 0 || sb.st_size != size) {
        log_error("store: %s: %s: %s", SQL[S_ATT_INSERT].what, tmp_path,
                  fd < 0 ? strerror(errno) : "not the upload's size");
        if (fd >= 0)
            close(fd);
        return STORE_BAD_REQUEST;
    }
    if (sodium_init() < 0) {
        close(fd);
        return STORE_ERR;
    }
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(id, sizeof id, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    if (!(att = rows_attachment(id, name, type, size))) {
        close(fd);
        return STORE_BAD_REQUEST;
    }
    call_start(&c[0], S_BLOB_REF);
    call_text(&c[0], sha256_hex);
    call_i64(&c[0], size);
    call_start(&c[1], S_ATT_INSERT);
    call_text(&c[1], id);
    call_i64(&c[1], owner);
    call_text(&c[1], name);
    call_text(&c[1], type);
    call_i64(&c[1], size);
    call_text(&c[1], sha256_hex);
    call_i64(&c[1], now);
    if ((rc = own_begin(st, &own)) != STORE_OK) {
        calls_done(c, 2);
    } else if ((rc = att_quota(st, owner, size, max_pending)) != STORE_OK) {
        calls_done(c, 2);
    } else if ((rc = run(st, c, 2, 0)) == STORE_OK) {
        fresh = col_i64(c[0].res, 0, 0) == 1;
        if (changed(&c[1]) != 1) {
            log_error("store: %s: the new id is taken", SQL[S_ATT_INSERT].what);
            rc = STORE_ERR;
        }
        calls_done(c, 2);
        if (rc == STORE_OK && fresh)
            rc = write_chunks(st, fd, sha256_hex, size);
    }
    close(fd);
    rc = own_end(st, own, rc);
    if (rc != STORE_OK) {
        json_decref(att);
        return rc;
    }
    *att_out = att;
    return STORE_OK;
}

static int pg_att_get(struct store *st_, const char *id, int64_t user, json_t **att_out, char **sha256_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    int rc;

    *att_out = NULL;
    if (sha256_out)
        *sha256_out = NULL;
    if (!id || !utf8_ok(id, strlen(id)))
        return STORE_NOT_FOUND;
    call_start(&c, S_ATT_GET);
    call_text(&c, id);
    call_i64(&c, user);
    if ((rc = run1(st, &c)) != STORE_OK)
        return rc;
    if (!rows(&c)) {
        rc = STORE_NOT_FOUND;
    } else if (!(*att_out = rows_attachment(col_text(c.res, 0, 0), col_text(c.res, 0, 1), col_text(c.res, 0, 2),
                                            col_i64(c.res, 0, 3)))) {
        rc = log_json(SQL[S_ATT_GET].what);
    } else if (sha256_out) {
        *sha256_out = xstrdup(col_text(c.res, 0, 4));
    }
    call_done(&c);
    return rc;
}

/* The range's chunks (each cut to its part on the server) and the blob's
 * size, in one snapshot. NOT_FOUND: no such blob (deleted meanwhile). */
static int pg_att_read(struct store *st_, const char *sha256_hex, int64_t off, void *buf, size_t len, size_t *n_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c[2];
    int64_t size, end, want;
    size_t got = 0;
    int rc;

    *n_out = 0;
    if (!sha256_hex || off < 0 || !utf8_ok(sha256_hex, strlen(sha256_hex)))
        return STORE_NOT_FOUND;
    if (len > INT32_MAX)
        len = INT32_MAX;
    call_start(&c[0], S_BLOB_SIZE);
    call_text(&c[0], sha256_hex);
    call_start(&c[1], S_ATT_READ);
    call_text(&c[1], sha256_hex);
    call_i64(&c[1], off);
    call_i64(&c[1], (int64_t)(len ? len : 1));
    if ((rc = run(st, c, 2, RUN_SNAPSHOT)) != STORE_OK)
        return rc;
    if (!rows(&c[0])) {
        calls_done(c, 2);
        return STORE_NOT_FOUND;
    }
    size = col_i64(c[0].res, 0, 0);
    end = off + (int64_t)len < size ? off + (int64_t)len : size;
    want = end > off ? end - off : 0;
    for (int i = 0; i < rows(&c[1]) && rc == STORE_OK; i++) {
        int64_t n = col_i64(c[1].res, i, 0), at = n * CHUNK > off ? n * CHUNK - off : 0;
        size_t piece = (size_t)PQgetlength(c[1].res, i, 1);
        if (at != (int64_t)got || got + piece > (size_t)want) {
            rc = STORE_ERR; /* a chunk missing or of the wrong size */
            break;
        }
        memcpy((char *)buf + got, PQgetvalue(c[1].res, i, 1), piece);
        got += piece;
    }
    if (rc == STORE_OK && got != (size_t)want)
        rc = STORE_ERR;
    if (rc == STORE_ERR)
        log_error("store: %s: blob %s: its chunks do not make its size", SQL[S_ATT_READ].what, sha256_hex);
    calls_done(c, 2);
    if (rc == STORE_OK)
        *n_out = got;
    return rc;
}

/* Deletes at most limit never-attached uploads created before
 * created_before, and the blobs that loses their last reference. */
static int pg_att_prune(struct store *st_, int64_t created_before, int limit, int *deleted_out)
{
    struct pg *st = (struct pg *)st_;
    struct call c;
    char *zero = NULL;
    int rc, own;

    *deleted_out = 0;
    if (limit < 1)
        return STORE_OK;
    call_start(&c, S_ATT_PRUNE);
    call_i64(&c, created_before);
    call_i64(&c, limit);
    if ((rc = own_begin(st, &own)) != STORE_OK) {
        call_done(&c);
        return rc;
    }
    if ((rc = run1(st, &c)) == STORE_OK) {
        *deleted_out = (int)col_i64(c.res, 0, 0);
        if (!PQgetisnull(c.res, 0, 1))
            zero = xstrdup(col_text(c.res, 0, 1));
        call_done(&c);
        rc = blobs_drop(st, zero);
        free(zero);
    }
    rc = own_end(st, own, rc);
    if (rc != STORE_OK)
        *deleted_out = 0;
    return rc;
}

/* ------------------------------------------------------------------ */
/* The backend table and opening.                                       */

static const struct store_ops pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .ping = pg_ping,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .savepoint = pg_savepoint,
    .release = pg_release,
    .rollback_to = pg_rollback_to,
    .send_batch = pg_send_batch,
    .user_create = pg_user_create,
    .user_by_name = pg_user_by_name,
    .user_by_id = pg_user_by_id,
    .user_exists = pg_user_exists,
    .users_search = pg_users_search,
    .refresh_insert = pg_refresh_insert,
    .refresh_rotate = pg_refresh_rotate,
    .refresh_revoke = pg_refresh_revoke,
    .refresh_prune = pg_refresh_prune,
    .conv_create_direct = pg_conv_create_direct,
    .conv_create_group = pg_conv_create_group,
    .conv_get = pg_conv_get,
    .conv_list = pg_conv_list,
    .conv_view = pg_conv_view,
    .member_ctx = pg_member_ctx,
    .member_insert = pg_member_insert,
    .member_delete = pg_member_delete,
    .member_set_role = pg_member_set_role,
    .members = pg_members,
    .is_member = pg_is_member,
    .peers = pg_peers,
    .user_convs = pg_user_convs,
    .msg_by_client = pg_msg_by_client,
    .conv_last_seq = pg_conv_last_seq,
    .conv_last_seqs = pg_conv_last_seqs,
    .replay_lag = pg_replay_lag,
    .read_set = pg_read_set,
    .msg_page = pg_msg_page,
    .sync_summary = pg_sync_summary,
    .msg_facts = pg_msg_facts,
    .msg_get = pg_msg_get,
    .msg_change = pg_msg_change,
    .changes_page = pg_changes_page,
    .search = pg_search,
    .att_create = pg_att_create,
    .att_get = pg_att_get,
    .att_path = NULL, /* the bytes live in blob_chunks: att_read */
    .att_read = pg_att_read,
    .att_prune = pg_att_prune,
};

int store_pg_open(const char *conninfo_or_url, int migrate_now, struct store **out, char *err, size_t errlen)
{
    struct pg *st;
    PGconn *conn;

    *out = NULL;
    if (!conninfo_or_url) {
        set_err(err, errlen, "connect", "no database URL");
        return STORE_ERR;
    }
    if (!(conn = connect_db(conninfo_or_url, err, errlen)))
        return STORE_ERR;
    if ((migrate_now ? migrate(conn, err, errlen) : check_schema(conn, err, errlen)) != STORE_OK) {
        PQfinish(conn);
        return STORE_ERR;
    }
    st = xcalloc(1, sizeof *st);
    st->base.ops = &pg_ops;
    st->conn = conn;
    st->conninfo = xstrdup(conninfo_or_url);
    *out = &st->base;
    return STORE_OK;
}
