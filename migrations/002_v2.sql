-- 002_v2: edit, delete, reactions, replies, attachments, search (PROTOCOL.md,
-- "Version 2 additions"). Run inside its own transaction like 001.

-- messages stays clustered on (conv_id, seq). New columns:
--   id        a number per message, in the order messages were stored: the
--             rowid of its search entry (the FTS5 shards, see
--             store_sqlite.c "Search") and the cursor of search pages. The
--             unique index maps a search hit back to (conv_id, seq).
--   reply_to  the seq replied to (NULL: none)
--   edited_at ms of the last edit (NULL: never)
--   deleted   1: erased (body '', no attachments, no reactions)
--   mod       the conversation's mod at the last change (0: never changed)
--   n_react, n_att  how many reaction and attachment rows the message has:
--             a page only asks for them when some message has any.
ALTER TABLE messages ADD COLUMN id INTEGER;
ALTER TABLE messages ADD COLUMN reply_to INTEGER;
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN mod INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN n_react INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN n_att INTEGER NOT NULL DEFAULT 0;

-- Messages of version 1 get ids in the order they were stored; store_sqlite.c
-- indexes them for search right after this file runs, in the same
-- transaction.
UPDATE messages SET id = r.n
  FROM (SELECT conv_id AS c, seq AS s, row_number() OVER (ORDER BY created_at, conv_id, seq) AS n
        FROM messages) AS r
 WHERE messages.conv_id = r.c AND messages.seq = r.s;
CREATE UNIQUE INDEX messages_id ON messages(id);
-- The changes of a conversation after a mod, in mod order (/changes, sync's mods).
CREATE INDEX messages_mod ON messages(conv_id, mod) WHERE mod > 0;

-- The second dense counter per conversation: every change takes last_mod + 1.
ALTER TABLE conversations ADD COLUMN last_mod INTEGER NOT NULL DEFAULT 0 CHECK (last_mod >= 0);

-- One row per (message, user, emoji); id orders them as they were made, so
-- an emoji's users come back in the order they reacted.
CREATE TABLE reactions (
    id      INTEGER PRIMARY KEY,
    conv_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users(id),
    emoji   TEXT    NOT NULL,
    UNIQUE (conv_id, seq, user_id, emoji)
);

-- Attachment bytes, content-addressed: <data>/attachments/<2 hex>/<sha256>,
-- stored once however many attachment rows share them; refs counts those
-- rows, and the file is unlinked after the commit that takes it to 0.
CREATE TABLE blobs (
    sha256 TEXT    PRIMARY KEY,
    size   INTEGER NOT NULL,
    refs   INTEGER NOT NULL CHECK (refs > 0)
) WITHOUT ROWID;

-- An upload. id is random and opaque; conv_id/seq/pos stay NULL until a send
-- attaches it (pos: its place in the message's list). No foreign key to
-- blobs: deleting a blob row would then scan attachments for referrers.
CREATE TABLE attachments (
    id         TEXT    PRIMARY KEY,
    owner_id   INTEGER NOT NULL REFERENCES users(id),
    name       TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    size       INTEGER NOT NULL CHECK (size >= 0),
    sha256     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    conv_id    INTEGER,
    seq        INTEGER,
    pos        INTEGER
) WITHOUT ROWID;
CREATE INDEX attachments_msg ON attachments(conv_id, seq, pos) WHERE conv_id IS NOT NULL;
CREATE INDEX attachments_pending ON attachments(created_at) WHERE conv_id IS NULL;

-- The FTS5 shards of the search index that exist (search_<k> holds the
-- messages with id in [k * 16384, (k + 1) * 16384)); see store_sqlite.c.
CREATE TABLE search_shards (
    k INTEGER PRIMARY KEY
);
