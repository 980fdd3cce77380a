/* api: the HTTP transport: routes every complete request (REST handlers,
 * the WebSocket upgrade on /ws, static files of the web client), validates
 * it, hands it to the core (chat.h, accounts.h) and shapes the answer.
 * Runs on the connection's worker thread; the worker calls api_handle
 * through its handler table. A handler answers at once or when the core's
 * job or read comes back; either way exactly one http_respond* call
 * finishes the request. */
#ifndef PARLEY_API_H
#define PARLEY_API_H

#include "http.h"
#include "worker.h"

/* The tail of "/api/conversations/" (pure; the fuzz target's too): "12",
 * "12/", "12/messages", "12/members", "12/members/5", "12/messages/7",
 * "12/messages/7/reactions/<emoji>", "12/changes", with canonical ids only
 * ("012", "+12" are no route). */
struct api_route {
    int64_t conv;
    const char *sub;   /* "", "members", "messages", "member" (with target), "message" (target = its
                          seq), "reaction" (target = the seq, emoji), "changes" */
    int64_t target;
    const char *emoji; /* "reaction": the rest of the path, still percent-encoded */
    int ok;
};
struct api_route api_parse_conv_path(const char *p);

/* ctx: the worker's struct chat_worker (conn_handler.on_request). */
void api_handle(void *ctx, struct conn *c, struct http_req *r);
/* conn_handler.on_body_start: uploads (POST /api/attachments) are streamed
 * to disk (api_attach.h); every other body is buffered as before. */
int api_body_start(void *ctx, struct conn *c, struct http_req *r, struct http_sink *sink);

#endif
