/* libFuzzer target for the HTTP request path: the bytes a client sends,
 * through http_feed (llhttp and our callbacks) split at a point the input
 * chooses, request after request (pipelining), each complete request then
 * taken apart as api.c does it before answering: the query values it reads
 * (limit, before, after, q, token, each with small and large buffers), the
 * conversation route, the static file it would name. Checks what the worker
 * relies on: consumption within the input, a complete request has a path
 * and a query, limits hold, decoded values are NUL-terminated in bounds.
 * The first byte also picks how bodies are read: as before, paused at the
 * headers then buffered, or paused then streamed to a sink (uploads), whose
 * pieces must add up to the Content-Length and which is either taken back
 * at completion or discarded. The attachment routes' header parsers (Range,
 * If-None-Match, Content-Disposition of the name) run on every request. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_attach.h"
#include "http.h"
#include "respond.h"
#include "util.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static void take_apart(const struct http_req *r)
{
    static const char *names[] = {"limit", "before", "after", "q", "token", ""};
    static const size_t sizes[] = {1, 2, 8, 32, 256, 4096};
    char out[4096];
    CHECK(r->path && r->query);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            memset(out, 'Z', sizeof out);
            int rc = http_query_get(r->query, names[i], out, sizes[k]);
            CHECK(rc == 0 || rc == HTTP_QUERY_ABSENT || rc == HTTP_QUERY_TOO_LONG);
            if (rc == 0)
                CHECK(memchr(out, '\0', sizes[k]) != NULL);
            int64_t v;
            if (rc == 0 && util_parse_id(out, &v) == 0)
                CHECK(v > 0);
        }
    if (strncmp(r->path, "/api/conversations/", 19) == 0) {
        struct api_route rt = api_parse_conv_path(r->path + 19);
        if (rt.ok)
            CHECK(rt.conv > 0 && rt.sub && (strcmp(rt.sub, "member") != 0 || rt.target > 0));
    }
    int64_t start = -1, end = -1;
    static const int64_t rsizes[] = {0, 1, 100, INT64_C(1) << 40};
    for (size_t i = 0; i < sizeof rsizes / sizeof rsizes[0]; i++) {
        int rc = api_attach_range(r->range, rsizes[i], &start, &end);
        CHECK(rc >= -1 && rc <= 1);
        if (rc == 1)
            CHECK(0 <= start && start <= end && end < rsizes[i]);
    }
    if (r->if_none_match)
        (void)api_attach_etag_match(r->if_none_match, "\"abc\"");
    char name[256];
    if (http_query_get(r->query, "name", name, sizeof name) == 0) {
        char *d = api_attach_disposition(r->content_type ? r->content_type : "", name);
        CHECK(!strchr(d, '\r') && !strchr(d, '\n'));
        const char *q1 = strchr(d, '"'), *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
        CHECK(q1 && q2 && strncmp(q2, "\"; filename*=UTF-8''", 20) == 0); /* the fallback stays quoted */
        CHECK(!strchr(q2 + 20, '"') && !strchr(q2 + 20, ' '));
        free(d);
    }
    char file[2048];
    if (http_static_path("/srv/web", r->path, file, sizeof file) == 0) {
        CHECK(strncmp(file, "/srv/web/", 9) == 0);
        CHECK(!strstr(file, "/.") && strlen(file) < sizeof file);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct counting_sink {
    int64_t n;
    int live; /* given to the request, not yet taken back or discarded */
};

static int sink_write(void *arg, const char *d, size_t len)
{
    struct counting_sink *s = arg;
    CHECK(s->live && d);
    s->n += (int64_t)len;
    return 0;
}

static void sink_discard(void *arg)
{
    struct counting_sink *s = arg;
    CHECK(s->live);
    s->live = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1, off = 0;
    size_t split = data[0] % len + 1; /* the first read ends here, the second has the rest */
    struct http_req *r = http_req_new(1024);
    int mode = data[0] >> 6; /* 0: bodies read as before; 1: paused, buffered; 2, 3: paused, streamed */
    r->notify_body = mode != 0;
    struct counting_sink sink = {0, 0};
    int requests = 0;
    while (off < len && requests < 64) {
        size_t avail = (off < split ? split : len) - off;
        long n = http_feed(r, p + off, avail);
        if (n < 0)
            break; /* answered 400/413/431 and closed */
        CHECK((size_t)n <= avail);
        off += (size_t)n;
        if (r->too_large || r->header_overflow)
            abort(); /* those are refusals: http_feed must have said -1 */
        if (r->at_body) {
            CHECK(mode != 0 && !r->complete && r->path && r->query);
            CHECK(r->chunked || r->content_length > 0);
            if (mode >= 2) {
                CHECK(!sink.live); /* the last one was taken back or discarded */
                sink.n = 0;
                sink.live = 1;
                r->sink = (struct http_sink){sink_write, sink_discard, &sink};
            }
            if (http_body_continue(r, mode >= 2) < 0)
                break; /* 413 */
            continue;
        }
        if (!r->complete) {
            if ((size_t)n < avail)
                abort(); /* it stopped short without a complete request */
            continue;
        }
        CHECK(r->body.len <= 1024);
        if (mode >= 2 && r->sink.arg) {
            CHECK(http_req_take_sink(r) == &sink && sink.live && r->body.len == 0);
            CHECK(r->chunked || sink.n == r->content_length);
            sink.live = 0;
        }
        take_apart(r);
        requests++;
        http_req_reset(r);
    }
    http_req_free(r);
    CHECK(!sink.live); /* a body cut short was discarded */
    return 0;
}
