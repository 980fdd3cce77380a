-- 002_v2: version 2 of the protocol (PROTOCOL.md "Version 2 additions"):
-- edits, deletes, reactions, replies, attachments and search. Run by
-- store_pg.c inside its own transaction, like 001 (no BEGIN/COMMIT here).

-- unaccent is a trusted extension (PostgreSQL 13+): the database's owner may
-- create it, no superuser needed. An extension is database-wide, so it goes
-- where every schema finds it: where it already is, else public when we may
-- create there (a schema of its own per test run must not take it along
-- when dropped), else the first schema of the search path. parley_fold
-- wraps it as the usual IMMUTABLE function: unaccent(text) is only STABLE
-- (it looks its dictionary up through the search path), the two-argument
-- form with the dictionary named, schema-qualified, is safe from anywhere.
DO $do$
DECLARE
    s name;
    coll text := '';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'unaccent') THEN
        IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public') THEN
            IF has_schema_privilege(current_user, 'public', 'CREATE') THEN
                s := 'public';
            END IF;
        END IF;
        IF s IS NULL THEN
            CREATE EXTENSION IF NOT EXISTS unaccent;
        ELSE
            CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public;
        END IF;
    END IF;
    SELECT n.nspname INTO s FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'unaccent';
    -- parley_fold: case folded in every script, then accents removed. The
    -- simple configuration lowercases under the database's LC_CTYPE, which
    -- for a "C" database (scripts/pgtmp's, and a common choice) is ASCII
    -- only: "МОСКВЕ" would not find "москве". So it lowercases with ICU's
    -- root locale when the server has ICU (Debian's PostgreSQL has), else
    -- under the database's own locale; final sigma is made sigma (ICU
    -- lowercases a word's last Σ to ς, a typed query has σ). ASCII text is
    -- left as it is (nothing to unaccent; the simple dictionary lowercases
    -- ASCII itself): a third of the vector's cost on every send.
    IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'
                AND collnamespace = 'pg_catalog'::regnamespace) THEN
        coll := ' COLLATE pg_catalog."und-x-icu"';
    END IF;
    EXECUTE format('CREATE FUNCTION parley_fold(text) RETURNS text'
                   ' LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS %L',
                   format('SELECT CASE WHEN octet_length($1) = length($1) THEN $1'
                          ' ELSE %I.unaccent(%L::regdictionary, translate(lower($1%s), %L, %L)) END',
                          s, quote_ident(s) || '.unaccent', coll, 'ς', 'σ'));
END
$do$;

-- The text search query of plain words (store.h: letters and digits): every
-- word, case folded and accents removed, quoted as a tsquery lexeme (a quote doubled, a
-- backslash escaped: nothing in a word can be read as an operator), ANDed,
-- the last one a prefix (:*). IMMUTABLE, so with the words as a parameter the
-- planner computes the query once and estimates its selectivity from the
-- column's statistics. An empty list: an empty query, which matches nothing.
CREATE FUNCTION parley_tsquery(words text[]) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_tsquery('simple', coalesce(string_agg(
               '''' || replace(replace(parley_fold(w), '\', '\\'), '''', '''''') || ''''
               || CASE WHEN i = cardinality(words) THEN ':*' ELSE '' END, ' & ' ORDER BY i), ''))
      FROM unnest(words) WITH ORDINALITY AS k(w, i)
$$;

-- Every change to a message takes the conversation's next mod: UPDATE
-- conversations SET last_mod = last_mod + 1 ... RETURNING, whose row lock
-- serializes the writers of every node (dense, like last_seq).
ALTER TABLE conversations ADD COLUMN last_mod bigint NOT NULL DEFAULT 0;

-- messages:
--  reply_to   a seq of the same conversation (NULL: none);
--  edited_at  ms of the last edit (NULL: never); no earlier text is kept;
--  deleted    a tombstone: body '' and tsv NULL, no reactions, no attachments;
--  mod        the conversation's mod at the message's last change (0: none);
--  n_att      how many attachments it was sent with (0: the reads skip the
--             attachments lookup), 0 again once deleted;
--  tsv        the search vector of the body (simple configuration, accents
--             removed), written by the same statements that write the body;
--             NULL for a tombstone;
--  id         a number per message in the order stored, the search's order
--             and cursor (the primary key is (conv_id, seq)).
-- Adding the columns without defaults (or with constant ones) rewrites
-- nothing; the UPDATE below numbers and indexes the messages already there
-- (oldest first), once.
ALTER TABLE messages
    ADD COLUMN reply_to bigint,
    ADD COLUMN edited_at bigint,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false,
    ADD COLUMN mod bigint NOT NULL DEFAULT 0,
    ADD COLUMN n_att integer NOT NULL DEFAULT 0,
    ADD COLUMN tsv tsvector,
    ADD COLUMN id bigint;

-- A body's text for the search: NUL bytes (allowed in a body, not in text)
-- made spaces. For the messages already stored only; store_pg.c does the
-- same in C for new ones.
CREATE FUNCTION pg_temp.body_text(b bytea) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    p integer;
BEGIN
    LOOP
        p := position('\x00'::bytea IN b);
        EXIT WHEN p = 0;
        b := set_byte(b, p - 1, 32);
    END LOOP;
    RETURN convert_from(b, 'UTF8');
END
$$;
UPDATE messages m SET id = o.n, tsv = to_tsvector('simple', parley_fold(pg_temp.body_text(m.body)))
  FROM (SELECT conv_id, seq, row_number() OVER (ORDER BY created_at, conv_id, seq) AS n FROM messages) o
 WHERE m.conv_id = o.conv_id AND m.seq = o.seq;
ALTER TABLE messages ALTER COLUMN id SET NOT NULL, ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('messages', 'id'), coalesce(max(id), 0) + 1, false) FROM messages;

CREATE UNIQUE INDEX messages_id ON messages(id);
-- The search: words through the GIN index, newest first through messages_id.
CREATE INDEX messages_tsv ON messages USING gin (tsv);
-- changes_page (conv_id, mod > M in mod order); partial: a new message
-- (mod 0) adds no entry here.
CREATE INDEX messages_mod ON messages(conv_id, mod) WHERE mod > 0;

-- Reactions: one row per (message, user, emoji); id orders a message's
-- reactions the way they were made (users in the order they reacted).
CREATE TABLE reactions (
    id      bigint GENERATED ALWAYS AS IDENTITY,
    conv_id bigint NOT NULL,
    seq     bigint NOT NULL,
    user_id bigint NOT NULL,
    emoji   text   NOT NULL,
    PRIMARY KEY (conv_id, seq, user_id, emoji),
    FOREIGN KEY (conv_id, seq) REFERENCES messages(conv_id, seq) ON DELETE CASCADE
);

-- Bytes, stored once per content (sha256 in hex) and counted by reference:
-- refs = the attachments rows naming them. Deleted with their last
-- reference (chunks by cascade), in the transaction that drops it.
CREATE TABLE blobs (
    sha256 text   PRIMARY KEY,
    size   bigint NOT NULL,
    refs   bigint NOT NULL
);

-- The bytes in chunks of 256 KiB (n = 0, 1, ...), written and read one chunk
-- at a time: bounded memory on both sides whatever the file's size. EXTERNAL:
-- no compression attempt (uploads are mostly compressed already), and a
-- substring reads only the TOAST slices it needs (ranges).
CREATE TABLE blob_chunks (
    sha256 text    NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    n      integer NOT NULL,
    data   bytea   NOT NULL,
    PRIMARY KEY (sha256, n)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- An upload: id random and opaque; conv_id, seq and pos (its place in the
-- message's list) NULL until a send attaches it. Deleted with its message,
-- or by att_prune when never attached.
CREATE TABLE attachments (
    id         text   PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name       text   NOT NULL,
    type       text   NOT NULL,
    size       bigint NOT NULL,
    sha256     text   NOT NULL,
    created_at bigint NOT NULL,
    conv_id    bigint,
    seq        bigint,
    pos        integer
);
CREATE INDEX attachments_msg ON attachments(conv_id, seq, pos) WHERE conv_id IS NOT NULL;
CREATE INDEX attachments_pending ON attachments(created_at) WHERE conv_id IS NULL;
