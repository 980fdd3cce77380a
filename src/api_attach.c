/* api_attach: see api_attach.h. */
#include "api_attach.h"

#include "auth.h"
#include "chat.h"
#include "config.h"
#include "log.h"
#include "respond.h"
#include "ws.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define ATT_NAME_MAX 255          /* bytes of a file name */
#define ATT_TYPE_MAX 255          /* bytes of a media type */
#define ATT_ID_MAX 128            /* bytes of an attachment id (the store's opaque string) */
#define ATT_CHUNK (128 * 1024)    /* bytes of one read of a download from a store without files */

static const char *const tmp_sub = "attachments/tmp";

static int alive(struct conn *c)
{
    return c && c->state == CONN_HTTP;
}

static struct chat_worker *cw_of(struct conn *c)
{
    return c->w->ctx;
}

static const struct config *cfg_of(struct conn *c)
{
    return c->w->cfg;
}

/* The caller's user id, or 0 after answering 401. */
static int64_t require_user(struct conn *c, struct http_req *r)
{
    struct jwt_claims cl;
    int rc = auth_bearer(cfg_of(c), r->authorization, &cl);
    if (rc != JWT_OK) {
        http_respond_error(c, 401, "unauthorized", rc == AUTH_MISSING ? "missing bearer token" : jwt_strerror(rc));
        return 0;
    }
    return cl.sub;
}

/* 413: the caller's uploads not yet attached to a message would hold more
 * than PARLEY_MAX_PENDING_UPLOADS bytes. */
static void pending_refused(struct conn *c)
{
    char msg[200];
    snprintf(msg, sizeof msg,
             "your uploads not yet attached to a message may hold at most %lld bytes (each counts at least %d):"
             " send or wait for them (a day)",
             (long long)cfg_of(c)->max_pending_uploads, STORE_ATT_MIN_CHARGE);
    http_respond_error(c, 413, "too_large", msg);
}

static void respond_rc(struct conn *c, int rc, int unavailable)
{
    if (unavailable == JOB_BUSY)
        http_respond_retry(c, 503, "unavailable", "server busy; retry shortly", 1000);
    else if (unavailable || rc == STORE_UNAVAILABLE)
        http_respond_error(c, 503, "unavailable", "temporarily unavailable; retry");
    else if (rc == STORE_NOT_FOUND)
        http_respond_error(c, 404, "not_found", "no such attachment");
    else if (rc == STORE_QUOTA)
        pending_refused(c);
    else if (rc == STORE_BAD_REQUEST)
        http_respond_error(c, 400, "bad_request", "not allowed");
    else
        http_respond_error(c, 500, "internal", "internal error");
}

/* ---- pure helpers ---- */

/* Digits at *p into *out (saturating far above any size), 1 if there were any. */
static int digits(const char **p, int64_t *out)
{
    int64_t v = 0;
    const char *s = *p;
    while (isdigit((unsigned char)*s)) {
        if (v < INT64_MAX / 20)
            v = v * 10 + (*s - '0');
        s++;
    }
    int any = s != *p;
    *p = s;
    *out = v;
    return any;
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

int api_attach_range(const char *h, int64_t size, int64_t *start, int64_t *end)
{
    if (!h)
        return 0;
    const char *p = skip_ws(h);
    if (strncasecmp(p, "bytes", 5) != 0)
        return 0; /* another unit: ignored */
    p = skip_ws(p + 5);
    if (*p++ != '=')
        return 0;
    if (strchr(p, ','))
        return 0; /* several ranges: the whole is sent (RFC 9110 allows it) */
    p = skip_ws(p);
    int64_t a = 0, b = 0;
    int has_a = digits(&p, &a);
    if (*p++ != '-')
        return 0;
    int has_b = digits(&p, &b);
    if (*skip_ws(p))
        return 0; /* malformed: ignored */
    if (has_a) {
        if (has_b && b < a)
            return 0;
        if (a >= size)
            return -1;
        *start = a;
        *end = has_b && b < size - 1 ? b : size - 1;
        return 1;
    }
    if (!has_b || b == 0 || size == 0)
        return has_b ? -1 : 0;
    *start = b >= size ? 0 : size - b;
    *end = size - 1;
    return 1;
}

int api_attach_etag_match(const char *h, const char *etag)
{
    size_t el = strlen(etag);
    for (const char *p = h; p && *p;) {
        p = skip_ws(p);
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == 1 && *p == '*')
            return 1;
        if (n >= 2 && p[0] == 'W' && p[1] == '/') {
            p += 2;
            n -= 2;
        }
        if (n == el && memcmp(p, etag, n) == 0)
            return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static int is_inline_type(const char *type)
{
    static const char *const shown[] = {"image/png", "image/jpeg", "image/gif", "image/webp"};
    size_t n = strcspn(type, ";");
    while (n && (type[n - 1] == ' ' || type[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < sizeof shown / sizeof shown[0]; i++)
        if (strlen(shown[i]) == n && strncasecmp(type, shown[i], n) == 0)
            return 1;
    return 0;
}

char *api_attach_disposition(const char *type, const char *name)
{
    /* RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"; everything else is
     * percent-encoded. The quoted fallback keeps printable ASCII but '"' and
     * '\' (and '%', which some clients would decode). */
    static const char attr[] = "!#$&+-.^_`|~";
    size_t n = strlen(name);
    struct buf b = {0};
    const char *kind = is_inline_type(type) ? "inline" : "attachment";
    buf_append(&b, kind, strlen(kind));
    buf_append(&b, "; filename=\"", 12);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        char o = ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\' && ch != '%' ? (char)ch : '_';
        buf_append(&b, &o, 1);
    }
    buf_append(&b, "\"; filename*=UTF-8''", 20);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (isalnum(ch) && ch < 0x80) {
            buf_append(&b, (const char *)&ch, 1);
        } else if (ch && strchr(attr, ch)) {
            buf_append(&b, (const char *)&ch, 1);
        } else {
            char hex[4];
            snprintf(hex, sizeof hex, "%%%02X", ch);
            buf_append(&b, hex, 3);
        }
    }
    buf_append(&b, "", 1);
    return b.data;
}

/* ---- upload ---- */

struct upload {
    int fd;
    char *path;
    crypto_hash_sha256_state sha;
    int64_t size;
    int64_t owner;
    char *name, *type;
};

static void upload_free(struct upload *u)
{
    if (!u)
        return;
    if (u->fd >= 0)
        close(u->fd);
    if (u->path)
        unlink(u->path); /* nothing of an upload that did not finish stays behind */
    free(u->path);
    free(u->name);
    free(u->type);
    free(u);
}

static void upload_discard(void *arg)
{
    upload_free(arg);
}

/* The sink's write: straight from the worker's read buffer to the file. */
static int upload_write(void *arg, const char *data, size_t len)
{
    struct upload *u = arg;
    crypto_hash_sha256_update(&u->sha, (const unsigned char *)data, len);
    u->size += (int64_t)len;
    while (len) {
        ssize_t n = write(u->fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            log_warn("upload: cannot write %s: %s", u->path, strerror(e));
            return e == ENOSPC || e == EDQUOT ? 507 : 500;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int make_dir(const char *path)
{
    return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

/* <data>/attachments and <data>/attachments/tmp. */
static int make_tmp_dirs(const char *data_dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/attachments", data_dir);
    if (make_dir(path) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/%s", data_dir, tmp_sub);
    return make_dir(path);
}

/* A new temporary file for an upload: its descriptor, *path_out (malloc'd). */
static int open_tmp(const char *data_dir, char **path_out)
{
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s/upload-XXXXXX", data_dir, tmp_sub);
    if (n < 0 || (size_t)n >= sizeof path)
        return -1;
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && make_tmp_dirs(data_dir) == 0) { /* removed while running */
        snprintf(path, sizeof path, "%s/%s/upload-XXXXXX", data_dir, tmp_sub);
        fd = mkostemp(path, O_CLOEXEC);
    }
    if (fd < 0)
        return -1;
    *path_out = xstrdup(path);
    return fd;
}

/* The name query parameter into out, or a reason it is not acceptable. */
static const char *upload_name(const char *query, char *out, size_t outlen)
{
    int rc = http_query_get(query, "name", out, outlen);
    if (rc == HTTP_QUERY_TOO_LONG)
        return "name must be at most 255 bytes";
    if (rc < 0 || !out[0])
        return "the name query parameter is required";
    size_t n = strlen(out);
    if (!ws_utf8_valid((const uint8_t *)out, n))
        return "name must be UTF-8";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            return "name must not hold control characters";
    return NULL;
}

/* A media type that can go back out as a header: printable ASCII, short. */
static int type_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > ATT_TYPE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x20 || (unsigned char)t[i] > 0x7e)
            return 0;
    return 1;
}

/* The media type (Content-Type, default application/octet-stream), or NULL
 * if it is unacceptable. */
static const char *upload_type(const struct http_req *r)
{
    const char *t = r->content_type;
    if (!t || !*t)
        return "application/octet-stream";
    return type_ok(t) ? t : NULL;
}

int api_attach_body_start(struct conn *c, struct http_req *r, struct http_sink *sink)
{
    const struct config *cfg = cfg_of(c);
    if (r->method != HTTP_POST) {
        http_respond_error(c, 405, "bad_request", "method not allowed");
        return -1;
    }
    int64_t uid = require_user(c, r);
    if (!uid)
        return -1;
    char name[ATT_NAME_MAX + 1];
    const char *why = upload_name(r->query, name, sizeof name);
    if (why) {
        http_respond_error(c, 400, "bad_request", why);
        return -1;
    }
    if (r->content_length < 0) {
        http_respond_error(c, 411, "bad_request", "an upload needs a Content-Length (chunked bodies are not taken)");
        return -1;
    }
    if (r->content_length > cfg->max_upload) {
        char msg[96];
        snprintf(msg, sizeof msg, "an attachment is at most %lld bytes", (long long)cfg->max_upload);
        http_respond_error(c, 413, "too_large", msg);
        return -1;
    }
    /* the whole cap: one upload alone cannot pass it (the rest is checked
     * when it is recorded, against what is stored: store_att_create) */
    if (cfg->max_pending_uploads > 0 && (r->content_length > cfg->max_pending_uploads ||
                                         STORE_ATT_MIN_CHARGE > cfg->max_pending_uploads)) {
        pending_refused(c);
        return -1;
    }
    const char *type = upload_type(r);
    if (!type) {
        http_respond_error(c, 400, "bad_request", "Content-Type must be printable ASCII, at most 255 bytes");
        return -1;
    }
    struct upload *u = xcalloc(1, sizeof *u);
    u->fd = open_tmp(cfg->data_dir, &u->path);
    if (u->fd < 0) {
        int e = errno;
        log_warn("upload: cannot create a temporary file under %s/%s: %s", cfg->data_dir, tmp_sub, strerror(e));
        upload_free(u);
        if (e == ENOSPC || e == EDQUOT)
            http_respond_error(c, 507, "insufficient_storage", "no space left for uploads");
        else
            http_respond_error(c, 500, "internal", "cannot store uploads now");
        return -1;
    }
    crypto_hash_sha256_init(&u->sha);
    u->owner = uid;
    u->name = xstrdup(name);
    u->type = xstrdup(type);
    sink->write = upload_write;
    sink->discard = upload_discard;
    sink->arg = u;
    return 1;
}

static void attach_done(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc != STORE_OK || !j->u.attach.att) {
        respond_rc(c, j->rc, j->unavailable);
        return;
    }
    http_respond_json(c, 201, json_pack("{s:O}", "attachment", j->u.attach.att));
}

/* The body is whole on disk: the core records it. */
static void upload_finish(struct conn *c, struct upload *u)
{
    unsigned char d[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&u->sha, d);
    close(u->fd);
    u->fd = -1;
    struct job *j = chat_job(cw_of(c), JOB_ATTACH, c, attach_done);
    struct job_attach *a = &j->u.attach;
    a->owner = u->owner;
    a->name = u->name;
    a->type = u->type;
    a->tmp_path = u->path; /* job_free removes it: the store has linked or copied it by then */
    a->size = u->size;
    a->max_pending = cfg_of(c)->max_pending_uploads;
    sodium_bin2hex(a->sha256, sizeof a->sha256, d, sizeof d);
    u->name = u->type = u->path = NULL;
    upload_free(u);
    chat_submit(cw_of(c), j);
}

/* POST /api/attachments whose body was not streamed: it had none. */
static void upload_empty(struct conn *c, struct http_req *r)
{
    if (r->method != HTTP_POST) {
        http_respond_error(c, 405, "bad_request", "method not allowed");
        return;
    }
    if (!require_user(c, r))
        return;
    char name[ATT_NAME_MAX + 1];
    const char *why = upload_name(r->query, name, sizeof name);
    http_respond_error(c, 400, "bad_request", why ? why : "an attachment has at least one byte (the body is empty)");
}

/* ---- download ---- */

/* A response head without its body (that follows: a file or chunks). */
static void respond_head(struct conn *c, int status, const char *type, const char *extra, int64_t len)
{
    int keep_alive = c->http->keep_alive && !c->close_after_write && !c->w->stopping;
    struct frame *f = http_response(status, type, extra, NULL, (size_t)len, keep_alive, 1);
    worker_count_http(c, status);
    if (!keep_alive)
        c->close_after_write = 1;
    conn_send(c, f);
    frame_unref(f);
}

/* A download read from the store a chunk at a time, each asked for once the
 * socket has taken the one before (below the out-queue's low-water mark). */
struct att_stream {
    char sha[65];
    int64_t off, end; /* next byte; one past the last */
};

static void stream_next(struct conn *c, struct att_stream *s);

static void stream_drained(struct conn *c, void *arg)
{
    struct att_stream *s = arg;
    if (!alive(c)) {
        free(s);
        return;
    }
    stream_next(c, s);
}

static void stream_chunk(struct read *rd)
{
    struct conn *c = rd->conn;
    struct att_stream *s = rd->arg;
    if (!alive(c)) {
        free(s);
        return;
    }
    if (rd->rc != STORE_OK || !rd->frame || rd->frame->len == 0) {
        /* the head is out: all that is left is to cut the answer short */
        log_warn("download: reading the bytes of %s at %lld failed (rc %d)", s->sha, (long long)s->off, rd->rc);
        free(s);
        conn_abort(c);
        return;
    }
    conn_send(c, rd->frame);
    s->off += rd->frame->len;
    if (s->off < s->end && conn_congested(c))
        conn_on_drain(c, stream_drained, s);
    else
        stream_next(c, s);
}

static void stream_next(struct conn *c, struct att_stream *s)
{
    if (s->off >= s->end) {
        free(s);
        conn_http_done(c);
        return;
    }
    struct read *rd = chat_read(cw_of(c), READ_ATT_CHUNK, c, stream_chunk);
    rd->arg = s;
    rd->str = xstrdup(s->sha);
    rd->after = s->off;
    rd->limit = (int)(s->end - s->off < ATT_CHUNK ? s->end - s->off : ATT_CHUNK);
    chat_read_submit(cw_of(c), rd);
}

static void download_read(struct read *rd)
{
    struct conn *c = rd->conn;
    if (!alive(c))
        return;
    struct http_req *r = c->http;
    if (rd->rc != STORE_OK || !rd->pwhash || strlen(rd->pwhash) != 64) {
        respond_rc(c, rd->rc == STORE_OK ? STORE_ERR : rd->rc, 0);
        return;
    }
    const char *type = json_string_value(json_object_get(rd->result, "type"));
    const char *name = json_string_value(json_object_get(rd->result, "name"));
    int64_t size = json_integer_value(json_object_get(rd->result, "size"));
    if (!type || !type_ok(type))
        type = "application/octet-stream";
    if (!name)
        name = "attachment";
    char etag[67];
    snprintf(etag, sizeof etag, "\"%s\"", rd->pwhash);
    char *disp = api_attach_disposition(type, name);
    struct buf h = {0};
    char line[160];
    int n = snprintf(line, sizeof line, "ETag: %s\r\nCache-Control: private\r\nAccept-Ranges: bytes\r\n", etag);
    buf_append(&h, line, (size_t)n);
    if (r->if_none_match && api_attach_etag_match(r->if_none_match, etag)) {
        buf_append(&h, "", 1);
        respond_head(c, 304, NULL, h.data, size); /* the length the 200 would have (RFC 9110 8.6) */
        buf_dispose(&h);
        free(disp);
        conn_http_done(c);
        return;
    }
    buf_append(&h, "Content-Disposition: ", 21);
    buf_append(&h, disp, strlen(disp));
    free(disp);
    buf_append(&h, "\r\nContent-Security-Policy: default-src 'none'; sandbox\r\n", 56);
    int64_t start = 0, end = size - 1;
    int rng = 0;
    /* If-Range: the range only while the client's copy is this one */
    if (r->range && (!r->if_range || strcmp(r->if_range, etag) == 0))
        rng = api_attach_range(r->range, size, &start, &end);
    if (rng < 0) {
        n = snprintf(line, sizeof line, "Content-Range: bytes */%lld\r\n", (long long)size);
        buf_append(&h, line, (size_t)n);
        buf_append(&h, "", 1);
        static const char body[] = "{\"error\":{\"code\":\"bad_request\",\"message\":\"range not satisfiable\"}}";
        http_respond(c, 416, "application/json", h.data, body, sizeof body - 1);
        buf_dispose(&h);
        return;
    }
    if (rng > 0) {
        n = snprintf(line, sizeof line, "Content-Range: bytes %lld-%lld/%lld\r\n", (long long)start, (long long)end,
                     (long long)size);
        buf_append(&h, line, (size_t)n);
    }
    buf_append(&h, "", 1);
    int64_t len = size > 0 ? end - start + 1 : 0;
    int head = r->method == HTTP_HEAD;
    int fd = -1;
    if (rd->str2 && !head) {
        fd = open(rd->str2, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < start + len) {
            /* deleted since the read (erased with its message), or damaged */
            log_info("download: %s: %s", rd->str2, fd < 0 ? strerror(errno) : "shorter than recorded");
            if (fd >= 0)
                close(fd);
            buf_dispose(&h);
            http_respond_error(c, 404, "not_found", "no such attachment");
            return;
        }
    }
    respond_head(c, rng > 0 ? 206 : 200, type, h.data, len);
    buf_dispose(&h);
    if (head || len == 0) {
        conn_http_done(c);
        return;
    }
    if (fd >= 0) {
        conn_send_file(c, fd, start, len);
        conn_http_done(c);
        return;
    }
    struct att_stream *s = xcalloc(1, sizeof *s);
    memcpy(s->sha, rd->pwhash, 65);
    s->off = start;
    s->end = start + len;
    stream_next(c, s);
}

/* An id as the store makes them: letters, digits, '-', '_'. */
static int plain_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > ATT_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_')
            return 0;
    return 1;
}

void api_attach_handle(struct conn *c, struct http_req *r)
{
    const char *p = r->path + strlen("/api/attachments");
    if (!*p || strcmp(p, "/") == 0) {
        struct upload *u = http_req_take_sink(r);
        if (u)
            upload_finish(c, u);
        else
            upload_empty(c, r);
        return;
    }
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_respond_error(c, 405, "bad_request", "method not allowed");
        return;
    }
    int64_t uid = require_user(c, r);
    if (!uid)
        return;
    const char *id = p + 1;
    if (!plain_id(id)) {
        http_respond_error(c, 404, "not_found", "no such attachment");
        return;
    }
    struct read *rd = chat_read(cw_of(c), READ_ATTACHMENT, c, download_read);
    rd->str = xstrdup(id);
    rd->user = uid;
    chat_read_submit(cw_of(c), rd);
}

int api_attach_prepare(const struct config *cfg, char *err, size_t errlen)
{
    if (make_tmp_dirs(cfg->data_dir) < 0) {
        snprintf(err, errlen, "cannot create %s/%s: %s", cfg->data_dir, tmp_sub, strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cfg->data_dir, tmp_sub);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "upload-", 7) != 0)
            continue;
        char f[PATH_MAX];
        if (snprintf(f, sizeof f, "%s/%s", path, e->d_name) < (int)sizeof f && unlink(f) == 0)
            removed++;
    }
    closedir(d);
    if (removed)
        log_info("attachments: %d unfinished uploads of an earlier run removed", removed);
    return 0;
}
