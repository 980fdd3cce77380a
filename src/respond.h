/* respond: the transports' way of answering an HTTP request on a
 * connection: builds the response (http.h), queues it (worker.h) and moves
 * the connection on to its next request (conn_http_done). Each request gets
 * exactly one of these calls. Also serves the web client's static files. */
#ifndef PARLEY_RESPOND_H
#define PARLEY_RESPOND_H

#include "http.h"
#include "worker.h"

#include <jansson.h>

/* extra_headers: "" or NULL, or full lines each ending in \r\n. */
void http_respond(struct conn *c, int status, const char *content_type, const char *extra_headers,
                  const void *body, size_t len);
/* Steals obj (may be NULL for an empty body with 204). */
void http_respond_json(struct conn *c, int status, json_t *obj);
/* {"error":{"code","message"}}. */
void http_respond_error(struct conn *c, int status, const char *code, const char *message);
/* 429 rate_limited with Retry-After (seconds, rounded up). */
void http_respond_rate_limited(struct conn *c, int64_t retry_ms);
/* An error answer with Retry-After (seconds, rounded up from retry_ms). */
void http_respond_retry(struct conn *c, int status, const char *code, const char *message, int64_t retry_ms);
/* The file of web_dir that path names (index.html for a path ending in
 * '/'): 0 with it in out, or -1 when path is not a plain name under web_dir
 * (no "..", no hidden component, only [A-Za-z0-9-_./]) or does not fit. */
int http_static_path(const char *web_dir, const char *path, char *out, size_t outlen);
/* Serves a file of web_dir for GET/HEAD (index.html for "/"). */
void http_serve_static(struct conn *c, const struct http_req *r, const char *web_dir);

#endif
