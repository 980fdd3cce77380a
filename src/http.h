/* http: HTTP/1.1 on llhttp: request parsing state for one connection, and
 * building responses (each a complete immutable frame, see frame.h).
 *
 * Ownership: struct http_req belongs to its struct conn (conn->http) from
 * accept until the connection upgrades to WebSocket or closes. The request
 * fields below are valid from on_message_complete until http_req_reset. */
#ifndef PARLEY_HTTP_H
#define PARLEY_HTTP_H

#include "util.h"
#include "worker.h"

#include <jansson.h>
#include <llhttp.h>

#define HTTP_MAX_HEADER_BYTES 16384

struct http_req {
    llhttp_t parser;         /* parser.data == the struct conn */
    size_t max_body;
    int complete;            /* a whole request is here (parser paused) */
    int too_large;           /* body over max_body: answer 413 and close */
    int header_overflow;     /* headers over HTTP_MAX_HEADER_BYTES */
    int method;              /* llhttp_method_t */
    int keep_alive;
    int upgrade;             /* Upgrade: websocket (case-insensitive) */
    size_t header_bytes;
    struct buf url;          /* raw request target */
    struct buf field, value; /* the header being read */
    struct buf body;
    char *authorization;     /* owned copies of the headers we use */
    char *ws_key;
    char *ws_version;
    char *if_none_match;
    /* split out of url at completion (point into url.data) */
    const char *path;
    const char *query;       /* "" when none */
};

struct http_req *http_req_new(struct conn *c, size_t max_body);
void http_req_free(struct http_req *r);
/* Forgets the last request and resumes the parser for the next one. */
void http_req_reset(struct http_req *r);

/* Feeds bytes. Returns how many were consumed (less than len when a request
 * completed and the parser paused: the rest belongs to the next request, or,
 * after an upgrade, to the WebSocket), or -1 on a malformed request. */
long http_feed(struct http_req *r, const char *data, size_t len);

#define HTTP_QUERY_ABSENT (-1)
#define HTTP_QUERY_TOO_LONG (-2)
/* Decoded value of query parameter name into out: 0 found, HTTP_QUERY_ABSENT,
 * or HTTP_QUERY_TOO_LONG (the value does not fit: a caller's bound, which it
 * answers as it sees fit, never the same as absent). */
int http_query_get(const char *query, const char *name, char *out, size_t outlen);

/* Responses. Each queues one complete response on c and then calls
 * conn_http_done (next request, or close). extra_headers: "" or full lines
 * each ending in \r\n. */
void http_respond(struct conn *c, int status, const char *content_type, const char *extra_headers,
                  const void *body, size_t len);
/* Steals obj (may be NULL for an empty body with 204). */
void http_respond_json(struct conn *c, int status, json_t *obj);
/* {"error":{"code","message"}}; 429 adds Retry-After (seconds, rounded up). */
void http_respond_error(struct conn *c, int status, const char *code, const char *message);
void http_respond_rate_limited(struct conn *c, int64_t retry_ms);
/* An error answer with Retry-After (seconds, rounded up from retry_ms). */
void http_respond_retry(struct conn *c, int status, const char *code, const char *message, int64_t retry_ms);
/* Serves a file of web_dir for GET/HEAD (index.html for "/"). */
void http_serve_static(struct conn *c, const struct http_req *r, const char *web_dir);
/* Answers the upgrade with 101 Switching Protocols (queued, no conn_http_done). */
void http_send_upgrade(struct conn *c, const char *accept_key);

const char *http_status_text(int status);

#endif
