/* http: see http.h. */
#include "http.h"

#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- parsing ---- */

static struct http_req *req_of(llhttp_t *p)
{
    return (struct http_req *)p; /* parser is the first member */
}

static int count_header_bytes(struct http_req *r, size_t n)
{
    r->header_bytes += n;
    if (r->header_bytes > HTTP_MAX_HEADER_BYTES) {
        r->header_overflow = 1;
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct http_req *r = req_of(p);
    if (count_header_bytes(r, n) < 0)
        return -1;
    buf_append(&r->url, at, n);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct http_req *r = req_of(p);
    if (count_header_bytes(r, n) < 0)
        return -1;
    buf_append(&r->field, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct http_req *r = req_of(p);
    if (count_header_bytes(r, n) < 0)
        return -1;
    buf_append(&r->value, at, n);
    return 0;
}

static void keep(char **slot, const struct buf *v)
{
    free(*slot);
    *slot = xstrndup(v->data ? v->data : "", v->len);
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_req *r = req_of(p);
    const char *f = r->field.data ? r->field.data : "";
    if (strcasecmp(f, "authorization") == 0)
        keep(&r->authorization, &r->value);
    else if (strcasecmp(f, "sec-websocket-key") == 0)
        keep(&r->ws_key, &r->value);
    else if (strcasecmp(f, "sec-websocket-version") == 0)
        keep(&r->ws_version, &r->value);
    else if (strcasecmp(f, "if-none-match") == 0)
        keep(&r->if_none_match, &r->value);
    else if (strcasecmp(f, "content-type") == 0)
        keep(&r->content_type, &r->value);
    else if (strcasecmp(f, "range") == 0)
        keep(&r->range, &r->value);
    else if (strcasecmp(f, "if-range") == 0)
        keep(&r->if_range, &r->value);
    else if (strcasecmp(f, "expect") == 0 && r->value.data && strcasecmp(r->value.data, "100-continue") == 0)
        r->expect_continue = 1;
    else if (strcasecmp(f, "upgrade") == 0 && r->value.data && strcasecmp(r->value.data, "websocket") == 0)
        r->upgrade = 1;
    r->field.len = r->value.len = 0;
    if (r->field.data)
        r->field.data[0] = '\0';
    if (r->value.data)
        r->value.data[0] = '\0';
    return 0;
}

static int over_max_body(struct http_req *r)
{
    return r->content_length >= 0 && (uint64_t)r->content_length > r->max_body;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_req *r = req_of(p);
    r->method = llhttp_get_method(p);
    r->keep_alive = llhttp_should_keep_alive(p);
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->content_length = p->flags & F_CONTENT_LENGTH && !r->chunked ? (int64_t)p->content_length : -1;
    if (!r->url.data)
        buf_append(&r->url, "/", 1);
    char *q = strchr(r->url.data, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    } else {
        r->query = "";
    }
    r->path = r->url.data;
    int has_body = r->chunked || r->content_length > 0;
    if (r->notify_body && has_body && !r->upgrade) {
        r->at_body = 1; /* the owner decides before a byte of the body is read */
        return HPE_PAUSED;
    }
    if (over_max_body(r)) {
        r->too_large = 1;
        return -1;
    }
    r->in_body = has_body;
    return 0;
}

int http_body_continue(struct http_req *r, int stream)
{
    r->at_body = 0;
    if (!stream) {
        r->sink.write = NULL;
        if (over_max_body(r)) {
            r->too_large = 1;
            return -1;
        }
    }
    r->in_body = 1;
    llhttp_resume(&r->parser);
    return 0;
}

void *http_req_take_sink(struct http_req *r)
{
    void *arg = r->sink.arg;
    memset(&r->sink, 0, sizeof r->sink);
    return arg;
}

void http_req_drop_sink(struct http_req *r)
{
    if (!r)
        return;
    struct http_sink s = r->sink;
    memset(&r->sink, 0, sizeof r->sink);
    if (s.arg && s.discard)
        s.discard(s.arg);
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct http_req *r = req_of(p);
    if (r->sink.write) {
        int st = r->sink.write(r->sink.arg, at, n);
        if (st) {
            r->sink_status = st;
            return -1;
        }
        return 0;
    }
    if (r->body.len + n > r->max_body) {
        r->too_large = 1;
        return -1;
    }
    buf_append(&r->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_req *r = req_of(p);
    r->complete = 1;
    r->in_body = 0;
    r->keep_alive = llhttp_should_keep_alive(p);
    if (!r->body.data)
        buf_append(&r->body, "", 0);
    return HPE_PAUSED; /* one request at a time: the answer may be asynchronous */
}

static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

struct http_req *http_req_new(size_t max_body)
{
    struct http_req *r = xcalloc(1, sizeof *r);
    llhttp_init(&r->parser, HTTP_REQUEST, &settings);
    r->max_body = max_body;
    r->content_length = -1;
    return r;
}

static void clear_fields(struct http_req *r)
{
    free(r->authorization);
    free(r->ws_key);
    free(r->ws_version);
    free(r->if_none_match);
    free(r->content_type);
    free(r->range);
    free(r->if_range);
    r->authorization = r->ws_key = r->ws_version = r->if_none_match = NULL;
    r->content_type = r->range = r->if_range = NULL;
}

void http_req_free(struct http_req *r)
{
    if (!r)
        return;
    http_req_drop_sink(r);
    clear_fields(r);
    buf_dispose(&r->url);
    buf_dispose(&r->field);
    buf_dispose(&r->value);
    buf_dispose(&r->body);
    free(r);
}

void http_req_reset(struct http_req *r)
{
    http_req_drop_sink(r);
    clear_fields(r);
    /* an idle keep-alive connection should not hold request-sized buffers */
    buf_dispose(&r->url);
    buf_dispose(&r->field);
    buf_dispose(&r->value);
    buf_dispose(&r->body);
    r->complete = r->too_large = r->header_overflow = r->upgrade = 0;
    r->at_body = r->in_body = r->expect_continue = r->chunked = r->sink_status = 0;
    r->content_length = -1;
    r->header_bytes = 0;
    r->path = r->query = NULL;
    /* After an upgrade request that was refused (401, 426, answered
     * keep-alive), llhttp stays paused for the other protocol: start over at
     * this request boundary instead, or the next request gets a 400. */
    if (r->parser.upgrade || llhttp_get_errno(&r->parser) == HPE_PAUSED_UPGRADE)
        llhttp_init(&r->parser, HTTP_REQUEST, &settings);
    else
        llhttp_resume(&r->parser);
}

long http_feed(struct http_req *r, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
    if (e == HPE_OK)
        return (long)len;
    if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && (r->complete || r->at_body))
        return (long)(llhttp_get_error_pos(&r->parser) - data);
    log_debug("http: parse error %s (%s)", llhttp_errno_name(e), llhttp_get_error_reason(&r->parser));
    return -1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

long http_pct_decode(const char *in, size_t n, int query, char *out, size_t outlen)
{
    size_t o = 0;
    const char *end = in + n;
    for (const char *s = in; s < end; s++) {
        int ch = (unsigned char)*s;
        if (ch == '+' && query) {
            ch = ' ';
        } else if (ch == '%' && end - s >= 3 && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
            ch = hexval(s[1]) * 16 + hexval(s[2]);
            s += 2;
        } else if (ch == '%' && !query) {
            return -1; /* a broken escape in a path segment names nothing */
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = (char)ch;
    }
    if (outlen)
        out[o] = '\0';
    return (long)o;
}

int http_query_get(const char *query, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        const char *end = amp ? amp : p + strlen(p);
        if ((size_t)(end - p) > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            /* in a query a broken escape stays as it is: only a value too long fails */
            return http_pct_decode(v, (size_t)(end - v), 1, out, outlen) < 0 ? HTTP_QUERY_TOO_LONG : 0;
        }
        if ((size_t)(end - p) == nl && strncmp(p, name, nl) == 0) {
            if (outlen)
                out[0] = '\0';
            return 0;
        }
        p = amp ? amp + 1 : NULL;
    }
    return -1;
}

/* ---- responses ---- */

const char *http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 416: return "Range Not Satisfiable";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

struct frame *http_response(int status, const char *content_type, const char *extra_headers, const void *body,
                           size_t len, int keep_alive, int head_only)
{
    static const char fmt[] = "HTTP/1.1 %d %s\r\n"
                              "Content-Length: %zu\r\n"
                              "%s%s%s"
                              "Access-Control-Allow-Origin: *\r\n"
                              "X-Content-Type-Options: nosniff\r\n"
                              "%s"
                              "Connection: %s\r\n\r\n";
#define HTTP_RESPONSE_ARGS                                                                                     \
    status, http_status_text(status), len, content_type ? "Content-Type: " : "", content_type ? content_type : "", \
        content_type ? "\r\n" : "", extra_headers ? extra_headers : "", keep_alive ? "keep-alive" : "close"
    char small[1024];
    char *head = small;
    int hl = snprintf(small, sizeof small, fmt, HTTP_RESPONSE_ARGS);
    if (hl < 0)
        hl = 0;
    if ((size_t)hl >= sizeof small) { /* long extra headers (a Content-Disposition with a long name) */
        head = xmalloc((size_t)hl + 1);
        snprintf(head, (size_t)hl + 1, fmt, HTTP_RESPONSE_ARGS);
    }
#undef HTTP_RESPONSE_ARGS
    size_t blen = head_only ? 0 : len;
    struct frame *f = frame_new((size_t)hl + blen);
    memcpy(f->data, head, (size_t)hl);
    if (blen)
        memcpy(f->data + hl, body, blen);
    if (head != small)
        free(head);
    return f;
}

struct frame *http_error_response(int status, const char *code, const char *message, int keep_alive)
{
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    struct frame *f = http_response(status, "application/json", NULL, s, strlen(s), keep_alive, 0);
    free(s);
    return f;
}

struct frame *http_upgrade_response(const char *accept_key)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept_key);
    struct frame *f = frame_new((size_t)n);
    memcpy(f->data, head, (size_t)n);
    return f;
}
