/* proto: the WebSocket side of the protocol: one JSON op per text message,
 * the session (auth, hello, presence), and the server's pushes (read,
 * typing, presence, conversation). Runs on the connection's worker thread. */
#ifndef PARLEY_PROTO_H
#define PARLEY_PROTO_H

#include "jwt.h"
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
/* A JSON integer id above 0, or 0 (not an integer, or not positive). */
int64_t proto_json_id(json_t *v);
/* The message part of a send ({"id","body"}), shared with HTTP's
 * POST .../messages: fills op->id, op->body, op->body_len from obj. */
int proto_check_message(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                        const char **message);

/* One complete text message from the client (valid UTF-8). */
void proto_handle(struct conn *c, const char *text, size_t len);
/* Authenticates an upgraded connection (token from the upgrade request, or
 * a first-frame auth): registers it, sends hello and presence. */
void proto_start_session(struct conn *c, const struct jwt_claims *claims);
/* The connection is going away: leaves the hub, announces offline. */
void proto_end_session(struct conn *c);

/* Fan-out helpers shared with api.c. Each builds the frame once. */
/* {"op":"conversation","conversation":...} to each member, each with their
 * own view (their read position), read from w's reader; and to each of the
 * extra users (members who just left or were removed) a view that shows the
 * current members only, so their clients see they are out. */
void proto_push_conversation(struct worker *w, int64_t conv, const int64_t *extra_users, size_t n_extra);
/* {"op":"presence","user","online"} to the user's peers. */
void proto_push_presence(struct worker *w, int64_t user, int online);

#endif
