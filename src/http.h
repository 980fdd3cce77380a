/* http: HTTP/1.1 on llhttp: request parsing state for one connection, and
 * building responses as complete immutable frames (frame.h). Pure: no
 * connection, no I/O; the worker feeds it bytes and sends what it builds.
 *
 * Ownership: struct http_req belongs to its struct conn (conn->http) from
 * accept until the connection upgrades to WebSocket or closes. The request
 * fields below are valid from on_message_complete until http_req_reset. */
#ifndef PARLEY_HTTP_H
#define PARLEY_HTTP_H

#include "frame.h"
#include "util.h"

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
    int route;               /* the transport's route index, for the request counters (0: other) */
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

struct http_req *http_req_new(size_t max_body);
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

/* A complete response with one reference. extra_headers: NULL or full
 * lines each ending in \r\n. head_only: the body is left out (HEAD) but
 * Content-Length still counts it. */
struct frame *http_response(int status, const char *content_type, const char *extra_headers, const void *body,
                           size_t len, int keep_alive, int head_only);
/* {"error":{"code","message"}} as application/json. */
struct frame *http_error_response(int status, const char *code, const char *message, int keep_alive);
/* 101 Switching Protocols with the Sec-WebSocket-Accept key. */
struct frame *http_upgrade_response(const char *accept_key);

const char *http_status_text(int status);

#endif
