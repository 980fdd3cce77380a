/* api: the HTTP side of the protocol: routes every complete request (REST
 * handlers, the WebSocket upgrade on /ws, static files of the web client).
 * Runs on the connection's worker thread. A handler answers at once or
 * hands a job to the writer (or the thread pool) and answers when it returns;
 * either way exactly one http_respond* call finishes the request. */
#ifndef PARLEY_API_H
#define PARLEY_API_H

#include "http.h"
#include "worker.h"

void api_handle(struct conn *c, struct http_req *r);

#endif
