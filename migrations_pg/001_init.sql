-- 001_init: the schema of migrations/001_init.sql for PostgreSQL (cluster mode).
-- store_pg.c runs each migration file inside its own transaction, under a
-- database-wide advisory lock, and records it in schema_version (which it
-- creates itself), so no BEGIN/COMMIT here. Same tables, columns, keys and
-- indexes as the SQLite schema; only the types are PostgreSQL's: ids and
-- times (milliseconds since the epoch) are bigint, ids come from identity
-- columns, text is text.

-- Usernames arrive already folded to lower case. The column collates "C" and
-- the unique key is on lower(username), which under "C" folds ASCII letters
-- only: the meaning of SQLite's NOCASE, with byte order for ORDER BY. The same
-- index serves the user search (lower(username) LIKE 'prefix%': a "C" index
-- can answer a LIKE prefix).
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text COLLATE "C" NOT NULL,
    display_name  text   NOT NULL,
    password_hash text   NOT NULL,
    created_at    bigint NOT NULL
);
CREATE UNIQUE INDEX users_username ON users (lower(username));

-- Only a hash of each refresh token is stored. A rotated token keeps its row
-- with replaced_by = the id of its successor: presenting it again is reuse,
-- which revokes the whole family. replaced_by carries no foreign key so that
-- pruning old rows never has to scan for referencing rows.
CREATE TABLE refresh_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family      text   NOT NULL,
    token_hash  text   NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    revoked_at  bigint,
    replaced_by bigint
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

-- last_seq is the seq of the newest message (0: none yet), advanced by a
-- writer in its batch transaction (UPDATE ... last_seq = last_seq + n: the
-- row lock serializes the writers of every node); last_activity orders
-- conversation lists.
CREATE TABLE conversations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text   NOT NULL CHECK (kind IN ('direct', 'group')),
    title         text,
    created_by    bigint NOT NULL REFERENCES users(id),
    created_at    bigint NOT NULL,
    last_seq      bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity bigint NOT NULL
);

-- The unique key on the ordered user pair of a direct conversation: at most
-- one direct conversation per pair, whichever side (or node) created it.
CREATE TABLE direct_pairs (
    user_lo bigint NOT NULL REFERENCES users(id),
    user_hi bigint NOT NULL REFERENCES users(id),
    conv_id bigint NOT NULL UNIQUE REFERENCES conversations(id) ON DELETE CASCADE,
    PRIMARY KEY (user_lo, user_hi),
    CHECK (user_lo < user_hi)
);

-- members_user serves "my conversations", peers and sync.
CREATE TABLE members (
    conv_id       bigint NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id       bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role          text   NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    last_read_seq bigint NOT NULL DEFAULT 0,
    joined_at     bigint NOT NULL,
    PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

-- The primary key (conv_id, seq) serves history pages and sync ranges; the
-- unique key on (sender_id, client_id) makes sends idempotent and serves the
-- lookup of a client id already used. body is bytea, not text: a message body
-- may hold NUL bytes (PROTOCOL.md), which PostgreSQL text cannot; the store
-- writes and reads its exact bytes (valid UTF-8, checked before it gets here).
CREATE TABLE messages (
    conv_id    bigint NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    sender_id  bigint NOT NULL REFERENCES users(id),
    client_id  text   NOT NULL,
    body       bytea  NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (conv_id, seq),
    UNIQUE (sender_id, client_id)
);
