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

/* ctx: the worker's struct chat_worker (conn_handler.on_request). */
void api_handle(void *ctx, struct conn *c, struct http_req *r);

#endif
