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

/* Where a streamed request body goes (http_body_continue). write takes each
 * piece as it arrives: 0, or an HTTP status to answer instead (the rest of
 * the body is not read and the connection closes). discard frees arg when
 * the request ends before the layer above took the sink back with
 * http_req_take_sink (the peer went away mid-body, a malformed body, a
 * refused piece): nothing of a half-received body may stay behind. */
struct http_sink {
    int (*write)(void *arg, const char *data, size_t len);
    void (*discard)(void *arg);
    void *arg;
};

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
    int notify_body;         /* set by the owner: pause when the headers of a request with a body are in */
    int at_body;             /* paused there: http_body_continue decides how the body is read */
    int in_body;             /* reading a body (after the headers, before the end) */
    int expect_continue;     /* Expect: 100-continue */
    int64_t content_length;  /* -1: none (no body, or chunked) */
    int chunked;             /* Transfer-Encoding: chunked */
    struct http_sink sink;   /* a streamed body's destination (arg NULL: the body is buffered) */
    int sink_status;         /* the sink refused a piece: answer this status */
    size_t header_bytes;
    struct buf url;          /* raw request target */
    struct buf field, value; /* the header being read */
    struct buf body;
    char *authorization;     /* owned copies of the headers we use */
    char *ws_key;
    char *ws_version;
    char *if_none_match;
    char *content_type;
    char *range;
    char *if_range;
    /* split out of url once the headers are in (point into url.data) */
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

/* With notify_body set, http_feed also stops (at_body set, returning what it
 * consumed) when the headers of a request with a body are complete, before
 * any of the body is read: method, path, query and the headers are valid.
 * The owner then calls this: stream 0 buffers the body in r->body (-1 when
 * Content-Length is over max_body: answer 413), stream 1 sends every piece
 * to r->sink (filled by the caller), whatever its size. Then feeding goes
 * on. */
int http_body_continue(struct http_req *r, int stream);
/* The streamed body's sink arg, now the caller's (NULL if there is none):
 * after the request completed, the layer above takes it back. */
void *http_req_take_sink(struct http_req *r);
/* Discards a streamed body not taken back (see struct http_sink). */
void http_req_drop_sink(struct http_req *r);

/* Percent-decodes in[0..n) into out (NUL-terminated). query: the query
 * string's rules ('+' is a space, a broken escape is kept as it is); else a
 * path segment's (a broken escape is an error). Returns the decoded length,
 * or -1 (it does not fit in outlen, or a broken escape in a path). */
long http_pct_decode(const char *in, size_t n, int query, char *out, size_t outlen);

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
