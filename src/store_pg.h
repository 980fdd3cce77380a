/* store_pg: the PostgreSQL backend of the store interface (cluster mode).
 *
 * Owns one libpq connection per struct store it opens, for one thread: a
 * node's writer connection or one of its readers' (primary or replica), with
 * the connection's prepared statements and its transaction state. Every SQL
 * statement of cluster mode lives in store_pg.c; the schema is
 * migrations_pg/ (embedded, see migrations_pg.h).
 *
 * Meaning: exactly store_sqlite's, operation by operation (store.h), with
 * several nodes writing at once:
 *  - seqs stay dense per conversation across writers: send_batch reserves
 *    them with one UPDATE conversations SET last_seq = last_seq + n ...
 *    RETURNING per conversation, in ascending conversation order (the row
 *    lock serializes the writers; the order keeps two batches from
 *    deadlocking on each other's conversations);
 *  - no statement fails in the normal course (a taken username, a member
 *    already there, a direct pair created by another node at the same moment
 *    are ON CONFLICT answers, never errors), so the transaction stays usable
 *    after every answer but STORE_ERR and STORE_UNAVAILABLE. One race is an
 *    error on purpose, as in SQLite: a resend stored by another node between
 *    this batch's lookup and its insert fails the batch (STORE_ERR); the
 *    client's next resend gets the original;
 *  - multi-statement operations are atomic: each writes with one statement
 *    (data-modifying WITH). Reads that must agree (a conversation and its
 *    members) share one REPEATABLE READ READ ONLY snapshot outside a
 *    transaction (a reader); inside the writer's transaction, which is READ
 *    COMMITTED (the seq reservation needs the latest committed last_seq),
 *    each statement sees the writer's own writes and the latest commits of
 *    the other nodes;
 *  - message bodies are bytea: the exact bytes, NUL bytes included.
 *
 * Version 2 (migrations_pg/002, 003):
 *  - mods stay dense per conversation across writers: a change first locks
 *    its conversation's row (FOR NO KEY UPDATE), then one statement decides
 *    on the message as the last change left it and only when something
 *    changes takes UPDATE conversations SET last_mod = last_mod + 1
 *    RETURNING; a no-op reaction writes nothing;
 *  - send_batch checks reply_to and attachments in C on what its first round
 *    trip read (the uploads not attached yet row-locked), so no statement
 *    of the batch fails on them and a refused send writes nothing;
 *  - message objects carry their current state from the same statement that
 *    reads them (reactions and attachments as correlated subqueries: no
 *    round trip per message);
 *  - attachment bytes live in blobs/blob_chunks (256 KiB chunks, stored once
 *    per sha256 and counted by reference): att_create streams the file in,
 *    att_read reads a range out, both in bounded memory; att_path has no
 *    file to give;
 *  - erasure: a delete sets the body to '' and the search vector to NULL and
 *    deletes the reactions, the attachments rows and the blobs they held the
 *    last reference to, in the writer's transaction. From its commit no
 *    query finds any of it; the dead row versions stay in the table and
 *    index files until (auto)vacuum reclaims their space, and in WAL until
 *    it is recycled: the erasure cluster mode documents (PROTOCOL.md);
 *  - search: a tsvector column kept by the statements that write the body
 *    (simple configuration, case folded with ICU, accents removed), a GIN
 *    index, the words quoted into a tsquery on the server (parley_tsquery),
 *    newest first by messages.id, the cursor.
 *
 * Round trips: statements that do not depend on each other's answers go out
 * together in libpq's pipeline mode; begin and the writer's per-job
 * savepoint commands are sent with the next statement, not alone. A batch of
 * sends is three round trips whatever its size (lookups and members; the
 * reservations; the multi-row insert and read positions), plus COMMIT;
 * replies and attachments add statements to those round trips, not round
 * trips. A change is one round trip (a delete that drops a blob, two).
 *
 * Sessions: a session that sets no idle_in_transaction_session_timeout
 * gets 60 s, so a node cut off inside a transaction does not hold the row
 * locks of its conversations against the other nodes for long.
 *
 * Connection loss: an operation on a lost connection returns
 * STORE_UNAVAILABLE. ping reconnects (a new session: statements are prepared
 * again on first use) and answers STORE_OK when the connection works, or
 * STORE_UNAVAILABLE when it cannot be made to work or when it was lost with a
 * transaction open (that work is gone; nothing of it committed, except that
 * a COMMIT cut off in flight may have committed: the usual ambiguity, which
 * idempotent resends make harmless for messages). */
#ifndef PARLEY_STORE_PG_H
#define PARLEY_STORE_PG_H

#include "store.h"

#include <stddef.h>

/* Connects to conninfo_or_url (a libpq URL postgresql://... or key=value
 * string; libpq's PG* environment variables fill what it leaves out). The
 * database must be UTF8. migrate=1: applies migrations_pg/ first, each in its
 * own transaction and recorded in schema_version, under a database-wide
 * advisory lock so that nodes starting together against an empty database
 * apply them once (the others wait, then find them applied). migrate=0: a
 * reader (on the primary or a replica), which checks the schema is there and
 * current. Nodes connect as an ordinary role that owns the database (no
 * superuser needed). STORE_OK and *out, or STORE_ERR with a one-line reason in
 * err. Close with store_close. */
int store_pg_open(const char *conninfo_or_url, int migrate, struct store **out, char *err, size_t errlen);

#endif
