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
enum proto_op_kind { OP_NONE, OP_AUTH, OP_SEND, OP_SYNC, OP_READ, OP_TYPING, OP_PING };

struct proto_op {
    enum proto_op_kind kind;
    json_t *root;        /* owned: the parsed frame; the fields below point into it */
    const char *id;      /* send: the client id (also set on a send's errors, to echo) */
    const char *token;   /* auth */
    int64_t conv;        /* send, read, typing */
    const char *body;    /* send; may hold NUL bytes */
    size_t body_len;
    int64_t seq;         /* read */
    json_t *since;       /* sync: object of conversation id -> seq, or NULL */
};

/* Parses one frame. 0 on success; -1 with *code (an error code of the
 * protocol: bad_request or too_large) and *message. Either way call
 * proto_op_dispose. */
int proto_parse(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
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
/* The message part of a send ({"id","body"}), shared with HTTP's
 * POST .../messages: fills op->id, op->body, op->body_len from obj. */
int proto_check_message(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                        const char **message);

/* A send job's payload from a checked message (owned copies). */
void proto_fill_send(struct job *j, int64_t user, int64_t conv, const struct proto_op *m);

/* One complete text message from the client (valid UTF-8); ctx is the
 * worker's struct chat_worker (conn_handler.on_message). */
void proto_handle(void *ctx, struct conn *c, const char *text, size_t len);

#endif
