/* job: the typed unit of work the writer runs in its batch transaction.
 *
 * A job has a kind and one payload per kind (the union), nothing reused
 * between kinds. The core builds it (chat.c), the writer runs it: a send
 * through store_send_batch, every other kind through the function the
 * core gave the writer (chat_tx_run), inside its own savepoint.
 *
 * Ownership: the submitting worker until writer_submit; the writer until it
 * posts the job back to `origin` (its event runs job_returned there); then
 * that worker, which calls `done` and job_free. Strings and arrays in the
 * payloads are owned by the job and freed by job_free. A job bound to a
 * connection keeps it allocated until it comes back (conn->pending). */
#ifndef PARLEY_JOB_H
#define PARLEY_JOB_H

#include "bus.h"
#include "store.h"
#include "token.h"
#include "worker.h"

#include <jansson.h>
#include <stdint.h>

enum job_kind {
    JOB_SEND,        /* store a message (the batched path) */
    JOB_SIGNUP,      /* create a user, then its first token family */
    JOB_LOGIN,       /* a new token family for a verified user */
    JOB_REFRESH,     /* rotate a refresh token */
    JOB_LOGOUT,      /* revoke a refresh token */
    JOB_CONV_CREATE, /* a direct or group conversation */
    JOB_MEMBER,      /* add, remove, or set the role of a member */
    JOB_READ,        /* move a read position forward */
    JOB_CHANGE,      /* edit, delete, or react to a message (version 2) */
    JOB_ATTACH,      /* record an uploaded file (version 2) */
};

struct job_send {
    int64_t conv;          /* in; out: the original's conversation on a resend */
    int64_t sender;
    char *client_id;       /* owned */
    char *body;            /* owned, NUL-terminated, may hold NUL bytes */
    size_t body_len;
    int64_t reply_to;      /* 0: none */
    char **att;            /* owned, each owned: attachment ids (n_att <= STORE_MAX_ATTACH) */
    size_t n_att;
    int dup;               /* out: a resend; seq/ts are the original's */
    int64_t seq, ts;       /* out */
    json_t *att_out;       /* out: the attachment objects (a reference owned by the job), or NULL */
    const char *why;       /* out: a static explanation of a BAD_REQUEST, or NULL */
    uint64_t arrived_ns;   /* when the send reached the node (uv_hrtime), for send-to-deliver */
};

/* A fresh refresh token: the token itself goes only to the client; the
 * store keeps its hash and its family. */
struct job_token {
    char token[TOKEN_STR_LEN];
    char family[TOKEN_STR_LEN];
    char hash[TOKEN_HASH_LEN];
    int64_t expires_at;
};

struct job_signup {
    char username[33];
    char *display_name;    /* owned; NULL: the username */
    char *pwhash;          /* owned */
    struct job_token tok;
    json_t *user;          /* out: the new user (a reference owned by the job) */
};

struct job_login {
    int64_t user_id;
    json_t *user;          /* the user found at login (a reference owned by the job) */
    struct job_token tok;
};

struct job_refresh {
    char old_hash[TOKEN_HASH_LEN];
    struct job_token tok;  /* the successor */
    int reused;            /* out: the old token was already rotated; its family is revoked */
    json_t *user;          /* out */
};

struct job_logout {
    char hash[TOKEN_HASH_LEN];
};

struct job_conv_create {
    int direct;
    int64_t creator;
    int64_t peer;          /* direct */
    char *title;           /* group; owned */
    int64_t *members;      /* group; owned */
    size_t n_members;
    int64_t conv;          /* out */
    int created;           /* out: 0 for an existing direct conversation */
    json_t *view;          /* out: the creator's view (a reference owned by the job) */
};

enum member_op { MEMBER_ADD, MEMBER_REMOVE, MEMBER_SET_ROLE };

struct job_member {
    enum member_op op;
    int64_t conv, actor, target;
    enum store_role role;  /* MEMBER_SET_ROLE */
    int64_t max_group;     /* MEMBER_ADD: the group size cap */
    int changed;           /* out: 0 when adding someone already there */
    const char *why;       /* out: a static explanation of a BAD_REQUEST, or NULL */
};

struct job_read {
    int64_t conv, user;
    int64_t seq;           /* in: the position asked for */
    int64_t pos;           /* out: the position stored (forward only, clamped) */
};

struct job_change {
    enum store_change_kind kind;
    int64_t conv, seq, user;
    char *text;            /* owned: the new body (EDIT, may hold NUL bytes) or the emoji (REACT_*) */
    size_t text_len;
    int64_t mod;           /* out: the change's mod (a no-op reaction: the message's current mod) */
    int changed;           /* out: 0 a no-op reaction */
    const char *why;       /* out: a static explanation of a BAD_REQUEST, or NULL */
    json_t *message;       /* out: the message as it now is (a reference owned by the job) */
    char *request_id;      /* owned: the WebSocket op's id, echoed in its ack; NULL over HTTP */
};

struct job_attach {
    int64_t owner;
    char *name, *type;     /* owned */
    char *tmp_path;        /* owned: the upload, whole on disk; the store takes the file */
    int64_t size;
    char sha256[65];
    int64_t max_pending;   /* the owner's pending uploads, at most (PARLEY_MAX_PENDING_UPLOADS; 0: no cap) */
    json_t *att;           /* out: the attachment object (a reference owned by the job) */
};

#define JOB_BUSY 2 /* job->unavailable: the writer's queue was full (PARLEY_WRITER_QUEUE); retry shortly */

struct job;
typedef void (*job_done_fn)(struct job *j);

struct job {
    struct event ev;       /* first: the trip back through the origin's inbox */
    enum job_kind kind;
    struct worker *origin; /* where done runs */
    struct conn *conn;     /* NULL, or pinned until the job is freed */
    job_done_fn done;      /* on the origin worker, after the commit (or failure) */
    job_done_fn reply;     /* the transport's answer, called by the core's done after its own effects */
    void *arg;             /* the core's per-worker state */
    int rc;                /* enum store_rc */
    int unavailable;       /* nothing was tried: 1 the writer was stopping, JOB_BUSY its queue was full */
    int holds;             /* on the origin worker: holders of the job (job_hold/job_release) */
    struct bus_msg *publish; /* NULL, or set inside the transaction (chat_tx_run): the writer publishes it
                                after the commit, in batch order, before the jobs go back, and drops it
                                when the batch failed or the job's rc < 0. Owned by the job. */
    union {
        struct job_send send;
        struct job_signup signup;
        struct job_login login;
        struct job_refresh refresh;
        struct job_logout logout;
        struct job_conv_create create;
        struct job_member member;
        struct job_read read;
        struct job_change change;
        struct job_attach attach;
    } u;
};

/* A zeroed job of kind; conn may be NULL (else it is pinned). */
struct job *job_new(enum job_kind kind, struct worker *origin, struct conn *conn, job_done_fn done, void *arg);
/* Pins conn for the job's life (a job built before it was known valid). */
void job_bind(struct job *j, struct conn *conn);
void job_free(struct job *j);
/* On the origin worker: done may keep the job past its return (an answer
 * that waits for a read) with job_hold, and lets it go with job_release; the
 * last release frees it. */
void job_hold(struct job *j);
void job_release(struct job *j);
/* Fills a fresh token expiring ttl_s from now. */
void job_token_new(struct job_token *t, int64_t ttl_s);

#endif
