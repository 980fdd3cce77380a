/* proto: the WebSocket transport: one JSON op per text message, parsed and
 * validated here (a pure parser, shared with HTTP's POST .../messages),
 * handed to the core (chat.h), answered here. Runs on the connection's
 * worker thread; the worker calls proto_handle through its handler table. */
#ifndef PARLEY_PROTO_H
#define PARLEY_PROTO_H

#include "job.h"
#include "worker.h"

#include <jansson.h>

/* A client frame, parsed and validated (pure: no I/O, no state). */
enum proto_op_kind { OP_NONE, OP_AUTH, OP_SEND, OP_SYNC, OP_READ, OP_TYPING, OP_PING, OP_EDIT, OP_DELETE, OP_REACT };

struct proto_op {
    enum proto_op_kind kind;
    json_t *root;        /* owned: the parsed frame; the fields below point into it */
    const char *id;      /* send: the client id (also set on a send's errors, to echo) */
    const char *token;   /* auth */
    int64_t conv;        /* send, read, typing */
    const char *body;    /* send; may hold NUL bytes */
    size_t body_len;
    int64_t seq;         /* read; edit, delete, react: the message */
    json_t *since;       /* sync: object of conversation id -> seq, or NULL */
    json_t *mods;        /* sync: object of conversation id -> mod, or NULL */
    int64_t reply_to;    /* send: 0 none */
    json_t *att;         /* send: array of attachment id strings (1..STORE_MAX_ATTACH), or NULL */
    const char *emoji;   /* react */
    int on;              /* react: 1 add, 0 remove */
    char id_buf[516];    /* send read by the fast path (root NULL): the id, NUL-terminated (128
                            characters of at most 4 bytes); body then points into the frame's text */
};

/* Parses one frame. 0 on success; -1 with *code (an error code of the
 * protocol: bad_request or too_large) and *message. Either way call
 * proto_op_dispose. */
int proto_parse(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
                const char **message);
/* proto_parse without its fast path for plain sends: every frame through
 * jansson. The same answers; for the fuzz target that checks so. */
int proto_parse_json(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
                     const char **message);
void proto_op_dispose(struct proto_op *op);
/* One JSON value from a client (a frame, an HTTP body): duplicate keys
 * refused, NUL allowed in strings (refused by field where it matters). A
 * number jansson cannot hold (1e400, an integer past int64) is read as null,
 * so the field that holds it is refused by name and the rest (a send's id)
 * still answers; no id or seq of the protocol is that large. NULL if the
 * text is not JSON. */
json_t *proto_json_load(const char *text, size_t len);
/* A JSON integer id above 0, or 0 (not an integer, or not positive). */
int64_t proto_json_id(json_t *v);
/* The message part of a send ({"id","body"} and version 2's optional
 * "reply_to" and "attachments"), shared with HTTP's POST .../messages: fills
 * op->id, op->body, op->body_len, op->reply_to, op->att from obj. body may
 * be "" only with attachments. */
int proto_check_message(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                        const char **message);

/* Whether an emoji (a reaction's key) is acceptable: 1-32 bytes of UTF-8
 * with no whitespace and no control characters. */
int proto_emoji_ok(const char *e, size_t len);
/* The words of a search query: runs of letters and digits (anything but
 * whitespace, controls and punctuation), each cut to max_word bytes, at most
 * max_words, appended to out NUL-terminated one after the other. Returns
 * how many (0: none, or q is not UTF-8). */
size_t proto_search_words(const char *q, size_t len, size_t max_word, size_t max_words, struct buf *out);
/* The fields of an edit ({"body"}, shared with HTTP's PATCH): 0, or -1
 * with *code and *message. */
int proto_check_edit_body(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                          const char **message);

/* A send job's payload from a checked message (owned copies). */
void proto_fill_send(struct job *j, int64_t user, int64_t conv, const struct proto_op *m);

struct chat_worker;
/* A JOB_CHANGE of kind by user on message (conv, seq), text copied (the new
 * body, or the emoji; NULL for a delete), answered by reply; shared with
 * HTTP's PATCH/DELETE/PUT routes. Submit it with chat_change. */
struct job *proto_change_job(struct chat_worker *cw, struct conn *c, enum store_change_kind kind, int64_t user,
                             int64_t conv, int64_t seq, const char *text, size_t text_len, job_done_fn reply);

/* The answer to a change job's refusal by the chat's rules (not_found,
 * forbidden, bad_request with its reason), for both transports: 0 and the
 * HTTP status, code and message; -1 for anything else (unavailable, an
 * internal error: the transport's usual answer). */
int proto_change_refusal(const struct job *j, int *status, const char **code, const char **message);

/* One complete text message from the client (valid UTF-8); ctx is the
 * worker's struct chat_worker (conn_handler.on_message). */
void proto_handle(void *ctx, struct conn *c, const char *text, size_t len);

#endif
