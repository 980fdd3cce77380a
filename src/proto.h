/* proto: the WebSocket side of the protocol: one JSON op per text message,
 * the session (auth, hello, presence), and the server's pushes (read,
 * typing, presence, conversation). Runs on the connection's worker thread. */
#ifndef PARLEY_PROTO_H
#define PARLEY_PROTO_H

#include "jwt.h"
#include "worker.h"

#include <jansson.h>

/* One complete text message from the client (valid UTF-8). */
void proto_handle(struct conn *c, const char *text, size_t len);
/* Authenticates an upgraded connection (token from the upgrade request, or
 * a first-frame auth): registers it, sends hello and presence. */
void proto_start_session(struct conn *c, const struct jwt_claims *claims);
/* The connection is going away: leaves the hub, announces offline. */
void proto_end_session(struct conn *c);

/* Fan-out helpers shared with api.c. Each builds the frame once. */
/* {"op":"conversation","conversation":...} to each member, each with their
 * own view (their read position), read from w's reader. */
void proto_push_conversation(struct worker *w, int64_t conv, const int64_t *extra_users, size_t n_extra);
/* {"op":"presence","user","online"} to the user's peers. */
void proto_push_presence(struct worker *w, int64_t user, int online);

#endif
