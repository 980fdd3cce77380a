/* libFuzzer target for the HTTP request path: the bytes a client sends,
 * through http_feed (llhttp and our callbacks) split at a point the input
 * chooses, request after request (pipelining), each complete request then
 * taken apart as api.c does it before answering: the query values it reads
 * (limit, before, after, q, token, each with small and large buffers), the
 * conversation route, the static file it would name. Checks what the worker
 * relies on: consumption within the input, a complete request has a path
 * and a query, limits hold, decoded values are NUL-terminated in bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
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
    char file[2048];
    if (http_static_path("/srv/web", r->path, file, sizeof file) == 0) {
        CHECK(strncmp(file, "/srv/web/", 9) == 0);
        CHECK(!strstr(file, "/.") && strlen(file) < sizeof file);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1, off = 0;
    size_t split = data[0] % len + 1; /* the first read ends here, the second has the rest */
    struct http_req *r = http_req_new(1024);
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
        if (!r->complete) {
            if ((size_t)n < avail)
                abort(); /* it stopped short without a complete request */
            continue;
        }
        CHECK(r->body.len <= 1024);
        take_apart(r);
        requests++;
        http_req_reset(r);
    }
    http_req_free(r);
    return 0;
}
