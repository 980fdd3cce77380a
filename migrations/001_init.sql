-- 001_init: the schema of DESIGN.md for the embedded (SQLite) mode.
-- store.c runs each migration file inside its own transaction and records it
-- in schema_version, so no BEGIN/COMMIT here.

-- Usernames arrive already folded to lower case. NOCASE changes nothing for
-- them but lets the index serve the case-insensitive `LIKE 'prefix%'` of the
-- user search (SQLite's LIKE optimization needs a NOCASE index).
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Only a hash of each refresh token is stored. A rotated token keeps its row
-- with replaced_by = the id of its successor: presenting it again is reuse,
-- which revokes the whole family. replaced_by carries no foreign key so that
-- pruning old rows never has to scan for referencing rows.
CREATE TABLE refresh_tokens (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    replaced_by INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

-- last_seq is the seq of the newest message (0: none yet), advanced by the
-- writer in the batch transaction; last_activity orders conversation lists.
CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL CHECK (kind IN ('direct', 'group')),
    title         TEXT,
    created_by    INTEGER NOT NULL REFERENCES users(id),
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity INTEGER NOT NULL
);

-- The unique key on the ordered user pair of a direct conversation: at most
-- one direct conversation per pair, whichever side created it.
CREATE TABLE direct_pairs (
    user_lo INTEGER NOT NULL REFERENCES users(id),
    user_hi INTEGER NOT NULL REFERENCES users(id),
    conv_id INTEGER NOT NULL UNIQUE REFERENCES conversations(id) ON DELETE CASCADE,
    PRIMARY KEY (user_lo, user_hi),
    CHECK (user_lo < user_hi)
) WITHOUT ROWID;

-- Clustered on (conv_id, user_id): a conversation's members are adjacent.
-- members_user serves "my conversations", peers and sync.
CREATE TABLE members (
    conv_id       INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role          TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    last_read_seq INTEGER NOT NULL DEFAULT 0,
    joined_at     INTEGER NOT NULL,
    PRIMARY KEY (conv_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_user ON members(user_id);

-- Clustered on (conv_id, seq): a history page or a sync range is a run of
-- adjacent rows, not one random lookup per message. The unique key on
-- (sender_id, client_id) makes sends idempotent and serves the lookup of a
-- client id already used. body is TEXT bound with an explicit length, so it
-- may hold NUL bytes.
CREATE TABLE messages (
    conv_id    INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    sender_id  INTEGER NOT NULL REFERENCES users(id),
    client_id  TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (conv_id, seq),
    UNIQUE (sender_id, client_id)
) WITHOUT ROWID;
