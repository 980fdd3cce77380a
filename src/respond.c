/* respond: see respond.h. */
#include "respond.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ctype.h>

void http_respond(struct conn *c, int status, const char *content_type, const char *extra_headers,
                  const void *body, size_t len)
{
    int keep_alive = c->http && c->http->keep_alive && !c->close_after_write && !c->w->stopping;
    int head_only = c->http && c->http->method == HTTP_HEAD;
    struct frame *f = http_response(status, content_type, extra_headers, body, len, keep_alive, head_only);
    worker_count_http(c, status);
    if (!keep_alive)
        c->close_after_write = 1;
    conn_send(c, f);
    frame_unref(f);
    conn_http_done(c);
}

void http_respond_json(struct conn *c, int status, json_t *obj)
{
    if (!obj) {
        http_respond(c, status, NULL, NULL, "", 0);
        return;
    }
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    http_respond(c, status, "application/json", NULL, s, strlen(s));
    free(s);
}

void http_respond_error(struct conn *c, int status, const char *code, const char *message)
{
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    http_respond_json(c, status, o);
}

void http_respond_retry(struct conn *c, int status, const char *code, const char *message, int64_t retry_ms)
{
    char hdr[64];
    snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n", (long long)((retry_ms + 999) / 1000));
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    http_respond(c, status, "application/json", hdr, s, strlen(s));
    free(s);
}

void http_respond_rate_limited(struct conn *c, int64_t retry_ms)
{
    http_respond_retry(c, 429, "rate_limited", "too many messages; slow down", retry_ms);
}

/* ---- static files ---- */

static const char *mime_of(const char *path)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
        {".ico", "image/x-icon"}, {".webmanifest", "application/manifest+json"},
        {".md", "text/markdown; charset=utf-8"}, {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    if (dot)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* Only plain relative names: letters, digits, '-', '_', '.', '/', no "..",
 * no hidden files. Anything else is a 404, never a path outside web_dir. */
static int safe_path(const char *p)
{
    if (*p != '/')
        return 0;
    for (const char *s = p; *s; s++) {
        if (!(isalnum((unsigned char)*s) || strchr("-_./", *s)))
            return 0;
        if (*s == '/' && s[1] == '.')
            return 0;
    }
    return 1;
}

int http_static_path(const char *web_dir, const char *path, char *out, size_t outlen)
{
    if (!safe_path(path))
        return -1;
    int n = snprintf(out, outlen, "%s%s%s", web_dir, path, path[strlen(path) - 1] == '/' ? "index.html" : "");
    return n < 0 || (size_t)n >= outlen ? -1 : 0; /* cut short: another file, so none */
}

void http_serve_static(struct conn *c, const struct http_req *r, const char *web_dir)
{
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_respond_error(c, 405, "bad_request", "method not allowed");
        return;
    }
    char full[2048];
    if (http_static_path(web_dir, r->path, full, sizeof full) < 0) {
        http_respond_error(c, 404, "not_found", "no such file");
        return;
    }
    int fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (16 << 20)) {
        if (fd >= 0)
            close(fd);
        http_respond_error(c, 404, "not_found", "no such file");
        return;
    }
    char etag[64], hdr[160];
    snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)st.st_mtime,
             (unsigned long long)st.st_size);
    snprintf(hdr, sizeof hdr, "ETag: %s\r\nCache-Control: no-cache\r\n", etag);
    if (r->if_none_match && strcmp(r->if_none_match, etag) == 0) {
        close(fd);
        http_respond(c, 304, NULL, hdr, "", 0);
        return;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *data = xmalloc(size + 1);
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    http_respond(c, 200, mime_of(full), hdr, data, got);
    free(data);
}
