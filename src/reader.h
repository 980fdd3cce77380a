/* reader: reads as jobs. A transport or the core describes a read (struct
 * read: a kind, its parameters, and min_seq, the newest seq of the
 * conversation the answer must include); the reader answers it by calling
 * its done function on the worker that asked.
 *
 * The interface lets a backend answer later: reader_submit may run the read
 * at once (reader_inline: the worker's own SQLite connection, no thread hop,
 * no copy, no extra cost in embedded mode; a search still goes to a pool of
 * SQLite connections, see reader_inline_new) or queue it for a pool of
 * database connections and post the answer through the worker's inbox (a
 * network database, where a read must never block the loop). Callers are
 * written for either: nothing after reader_submit may rely on the answer.
 *
 * Ownership: the caller builds the read (read_new) and hands it over with
 * reader_submit; the reader owns it until done returns, then frees it.
 * A read bound to a connection keeps it allocated (conn->pending). */
#ifndef PARLEY_READER_H
#define PARLEY_READER_H

#include "store.h"
#include "worker.h"

#include <jansson.h>

enum read_kind {
    READ_USER,         /* user: result = the user */
    READ_USER_BY_NAME, /* str: result = the user, pwhash */
    READ_USERS,        /* str (prefix), limit: result = [users] */
    READ_CONVS,        /* user: result = [conversations] */
    READ_CONV,         /* conv, user: result = the user's view */
    READ_HISTORY,      /* conv, user (must be a member), before, after, limit: result = [msgs], has_more */
    READ_MSG,          /* conv, seq: result = that message */
    READ_SYNC,         /* user, since (canonical conversation id -> seq), limit: result = [msgs] after
                          each asked conversation's seq the user is in, in since's order, at most
                          per_conv of each, limit (> 0) and about SYNC_STEP_BYTES of bodies in all;
                          has_more: it stopped there. One step of a sync (chat_sync.c) */
    READ_SYNC_SUMMARY, /* user: result = the summary of all the user's conversations (synced) */
    READ_SESSION,      /* user: result = the user, ids = peers, ids2 = conversations, extra = their
                          summary (last seqs) */
    READ_MEMBERSHIP,   /* ids = users: result = [[user, conv], ...] for every conversation of each */
    READ_REPUBLISH,    /* conv, seq: result = that message, ids = the conversation's members */
    READ_REPAIR,       /* ids = conversations, ids2 = the seq each was delivered up to: result =
                          [msgs] after those (at most per_conv each), only for those behind; mods
                          (NULL: none) = the mod each was delivered up to (-1: unknown, skipped):
                          extra = [msgs] changed after those, each conversation's in mod order */
    READ_CONV_VIEW,    /* conv: result = the shared part, pos = every member's read position */
    READ_CHANGES,      /* conv, user (must be a member), after (a mod), limit: result = [msgs] with mod >
                          after in mod order; seq = the conversation's last_mod */
    READ_SEARCH,       /* user, conv (0: all of the user's; else must be a member), str (the words,
                          NUL-separated, n of them), before, limit: result = [hits], seq = next cursor */
    READ_ATTACHMENT,   /* str (id), user: result = the attachment, pwhash = its sha256, extra = NULL;
                          str2 = a path to sendfile from, or NULL (read it with store_att_read) */
    READ_ATT_CHUNK,    /* str (the sha256 of an attachment's bytes), after (offset), limit (bytes, > 0):
                          frame = up to limit bytes from there (fewer: the end); the body of a
                          download from a store with no file to send (api_attach.c) */
};

#define READ_SEARCH_WORDS 16 /* words of one search, at most (store_search) */
#define SYNC_STEP_BYTES (256 * 1024) /* message bodies in one READ_SYNC (one step of an answer) */

struct read;
typedef void (*read_done_fn)(struct read *r);

struct read {
    struct event ev;        /* first: for a reader that answers through the inbox */
    enum read_kind kind;
    struct worker *origin;
    struct conn *conn;      /* NULL, or pinned until the read is freed */
    read_done_fn done;      /* on origin, with the answer */
    void *arg;              /* the caller's */
    int64_t min_seq;        /* the answer must include conv's seq up to here (0: any) */
    /* parameters */
    int64_t user, conv, seq, before, after;
    int limit;
    char *str;              /* owned */
    char *str2;             /* owned */
    json_t *since;          /* a reference owned by the read */
    /* answer */
    int rc;                 /* enum store_rc */
    int busy;               /* with STORE_UNAVAILABLE: not tried, the pool's queue was full (retry shortly) */
    json_t *result, *extra; /* references owned by the read (take them with json_incref) */
    int has_more;
    char *pwhash;           /* owned */
    int64_t *ids, *ids2;    /* owned */
    int64_t *mods;          /* owned (READ_REPAIR) */
    size_t n, n2;
    struct store_pos *pos;  /* owned */
    size_t npos;
    struct frame *frame;    /* READ_ATT_CHUNK: the bytes (one reference owned by the read) */
};

struct read *read_new(enum read_kind kind, struct worker *origin, struct conn *conn, read_done_fn done, void *arg);
void read_free(struct read *r);

struct reader {
    void (*submit)(struct reader *rd, struct read *r);
    void (*free)(struct reader *rd);
};

static inline void reader_submit(struct reader *rd, struct read *r) { rd->submit(rd, r); }
static inline void reader_free(struct reader *rd)
{
    if (rd)
        rd->free(rd);
}

/* Answers each read at once on the calling thread from st (owned by the
 * reader from now on). per_conv: the most messages of one conversation in a
 * sync answer. slow (owned from now on; NULL: none): the reads that may take
 * long (reader_slow_kind) are handed to it instead, so they never stall the
 * worker's loop (reader_pool.c with connections of their own). */
struct reader *reader_inline_new(struct store *st, int per_conv, struct reader *slow);

/* The kinds whose time grows with the store rather than with the answer:
 * a search walks every shard of the index a rare word is not in (tens of ms
 * over a million messages). Everything else is bounded by its page. */
int reader_slow_kind(enum read_kind kind);

/* Runs r against st (any backend, any thread): fills the answer. */
void reader_run(struct store *st, struct read *r, int per_conv);

#endif
