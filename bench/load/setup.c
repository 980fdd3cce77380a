/* setup.c: the server process (start on a free port, stop, liveness) and a blocking
 * HTTP/1.1 client for the setup requests (signup, conversations). */
#include "load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

_Atomic uint64_t http_retries_503, http_retries_429;

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------ server process */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        die("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static int try_connect(const struct target *t)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
    inet_pton(AF_INET, t->host, &a.sin_addr);
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (r < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void server_prepare(struct target *t)
{
    snprintf(t->host, sizeof t->host, "127.0.0.1");
    snprintf(t->dir, sizeof t->dir, "%s/parley-load-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(t->dir))
        die("mkdtemp %s: %s", t->dir, strerror(errno));
    char data[300];
    snprintf(data, sizeof data, "%s/data", t->dir);
    if (mkdir(data, 0700) < 0)
        die("mkdir %s: %s", data, strerror(errno));
    snprintf(t->log_path, sizeof t->log_path, "%s/server.log", t->dir);
}

int server_spawn(struct target *t, const char *bin, char **env, int nenv, int start_timeout_s, char *err, size_t errlen)
{
    if (access(bin, X_OK) != 0)
        die("server binary %s: %s (make build builds build/release/parleyd)", bin, strerror(errno));
    t->port = free_port();
    t->exited = 0;
    t->status = 0;
    char data[300];
    snprintf(data, sizeof data, "%s/data", t->dir);
    char listen[96];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", t->port);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* the server dies with us, whatever happens to us */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        setenv("PARLEY_LISTEN", listen, 1);
        setenv("PARLEY_DATA", data, 1);
        setenv("PARLEY_JWT_SECRET", "bench-secret-0123456789abcdef0123456789abcdef", 1);
        /* the longest access-token lifetime parleyd allows (30 days; the baselines honour the
         * same variable): tokens kept in the setup cache (cache.c) stay valid that long */
        setenv("PARLEY_ACCESS_TTL_S", LOAD_ACCESS_TTL_S, 1);
        setenv("PARLEY_SEND_RATE", "0", 1);
        setenv("PARLEY_SEND_BURST", "0", 1);
        /* every generated client comes from one address and floods on purpose:
         * the per-address and per-user abuse limits off (docs/SECURITY.md) */
        setenv("PARLEY_CONNS_PER_ADDR", "0", 1);
        setenv("PARLEY_SIGNUPS_PER_MIN", "0", 1);
        setenv("PARLEY_CONVS_PER_MIN", "0", 1);
        setenv("PARLEY_LOGIN_FAILS", "0", 1);
        setenv("PARLEY_READ_RATE", "0", 1);
        setenv("PARLEY_TYPING_MS", "0", 1);
        setenv("PARLEY_WRITER_QUEUE", "100000000", 1);
        /* parleyd drains for 15 s on SIGTERM by default, which would outlast the 15 s allowed
         * for the exit: a benchmark's server stops at once */
        setenv("PARLEY_DRAIN_DELAY_S", "0", 1);
        setenv("PARLEY_DRAIN_SECONDS", "0", 1);
        setenv("PARLEY_LOG_LEVEL", "warn", 1);
        for (int i = 0; i < nenv; i++)
            putenv(env[i]);
        /* appended: a server started again on the same directory (the setup cache) keeps the
         * earlier output in the log */
        int lf = open(t->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (lf >= 0) {
            dup2(lf, 1);
            dup2(lf, 2);
        }
        if (nul >= 0)
            dup2(nul, 0);
        execl(bin, bin, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    t->pid = pid;
    t->spawned = 1;
    uint64_t until = now_ns() + (uint64_t)start_timeout_s * 1000000000u;
    for (;;) {
        if (!server_alive(t)) {
            snprintf(err, errlen, "the server exited during its start (wait status %d)", t->status);
            return -1;
        }
        int fd = try_connect(t);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (now_ns() > until) {
            kill(t->pid, SIGKILL);
            while (server_alive(t))
                sleep_s(0.01);
            snprintf(err, errlen, "the server did not listen on %s within %d s", listen, start_timeout_s);
            return -1;
        }
        sleep_s(0.05);
    }
}

void server_start(struct target *t, const char *bin, char **env, int nenv, int start_timeout_s)
{
    char err[200];
    server_prepare(t);
    if (server_spawn(t, bin, env, nenv, start_timeout_s, err, sizeof err) < 0) {
        char *tail = server_log_tail(t, 2000);
        fprintf(stderr, "%s\n", tail);
        free(tail);
        die("%s; its output is above", err);
    }
}

int server_alive(struct target *t)
{
    if (t->exited)
        return 0;
    if (!t->pid)
        return 1;
    if (t->spawned) {
        int st;
        pid_t r = waitpid(t->pid, &st, WNOHANG);
        if (r == t->pid) {
            t->exited = 1;
            t->status = st;
            return 0;
        }
        return 1;
    }
    return kill(t->pid, 0) == 0 || errno == EPERM;
}

int server_halt(struct target *t, double *secs, int *killed)
{
    uint64_t t0 = now_ns();
    *killed = 0;
    if (t->spawned && server_alive(t)) {
        kill(t->pid, SIGTERM);
        uint64_t until = t0 + 15000000000ull;
        while (server_alive(t)) {
            if (now_ns() > until && !*killed) {
                kill(t->pid, SIGKILL);
                *killed = 1;
            }
            sleep_s(0.01);
        }
    }
    *secs = (double)(now_ns() - t0) / 1e9;
    return t->status;
}

int server_stop(struct target *t, double *secs, int *killed)
{
    int st = server_halt(t, secs, killed);
    if (t->spawned && t->dir[0] && !getenv("PARLEY_LOAD_KEEP_DATA")) {
        remove_tree(t->dir);
        t->dir[0] = 0;
    }
    return st;
}

char *server_log_tail(struct target *t, size_t max)
{
    char *out = xcalloc(1, max + 1);
    FILE *f = t->log_path[0] ? fopen(t->log_path, "r") : NULL;
    if (!f)
        return out;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, len > (long)max ? len - (long)max : 0, SEEK_SET);
    size_t n = fread(out, 1, max, f);
    out[n] = 0;
    fclose(f);
    return out;
}

/* ------------------------------------------------------------------ HTTP client */

struct rbuf {
    char *p;
    size_t len, cap;
};

static int fill(int fd, struct rbuf *b)
{
    if (b->cap - b->len < 4096) {
        b->cap = b->cap ? b->cap * 2 : 16384;
        b->p = xrealloc(b->p, b->cap + 1);
    }
    ssize_t n;
    do
        n = read(fd, b->p + b->len, b->cap - b->len);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        b->len += (size_t)n;
        b->p[b->len] = 0;
    }
    return (int)n;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void http_close(struct http_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static const char *find_header(const char *hdrs, const char *end, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = hdrs; p && p < end; p = strstr(p, "\r\n")) {
        if (p[0] == '\r')
            p += 2;
        if (p + n + 1 < end && !strncasecmp(p, name, n) && p[n] == ':') {
            p += n + 1;
            while (*p == ' ')
                p++;
            return p;
        }
    }
    return NULL;
}

/* One request/answer. Returns 0, -1 (failed before any answer byte: retryable), -2 (failed). */
static int http_once(struct http_conn *c, const char *method, const char *path, const char *token,
                     const char *body, struct http_resp *resp, char *err, size_t errlen)
{
    if (c->fd < 0) {
        c->fd = try_connect(c->t);
        if (c->fd < 0) {
            snprintf(err, errlen, "connect %s:%d: %s", c->t->host, c->t->port, strerror(errno));
            return -2;
        }
        struct timeval tv = {30, 0};
        int one = 1;
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    size_t blen = body ? strlen(body) : 0;
    size_t cap = 512 + strlen(path) + (token ? strlen(token) : 0) + blen;
    char *req = xcalloc(1, cap);
    int n = snprintf(req, cap,
                     "%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s%s%s\r\n",
                     method, path, c->t->host, c->t->port, blen, token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "");
    memcpy(req + n, body ? body : "", blen);
    int wr = write_all(c->fd, req, (size_t)n + blen);
    free(req);
    if (wr < 0) {
        snprintf(err, errlen, "write: %s", strerror(errno));
        http_close(c);
        return -1;
    }
    struct rbuf b = {0};
    char *hend;
    while (!(b.p && (hend = strstr(b.p, "\r\n\r\n")))) {
        int r = fill(c->fd, &b);
        if (r <= 0) {
            snprintf(err, errlen, "%s %s: %s", method, path, r == 0 ? "connection closed" : strerror(errno));
            int retry = b.len == 0 ? -1 : -2;
            free(b.p);
            http_close(c);
            return retry;
        }
    }
    hend += 4;
    if (strncmp(b.p, "HTTP/1.", 7) || strlen(b.p) < 12) {
        snprintf(err, errlen, "%s %s: not an HTTP answer", method, path);
        free(b.p);
        http_close(c);
        return -2;
    }
    resp->status = atoi(b.p + 9);
    const char *h = find_header(b.p, hend, "Retry-After");
    resp->retry_after = h ? atof(h) : 0;
    h = find_header(b.p, hend, "Connection");
    int close_after = h && !strncasecmp(h, "close", 5);
    h = find_header(b.p, hend, "Transfer-Encoding");
    int chunked = h && !strncasecmp(h, "chunked", 7);
    h = find_header(b.p, hend, "Content-Length");
    long clen = h ? atol(h) : -1;
    size_t hoff = (size_t)(hend - b.p);
    char *out = NULL;
    size_t olen = 0;
    if (chunked) {
        size_t pos = hoff;
        for (;;) {
            char *eol;
            while (!(eol = strstr(b.p + pos, "\r\n")))
                if (fill(c->fd, &b) <= 0)
                    goto truncated;
            size_t sz = strtoul(b.p + pos, NULL, 16);
            pos = (size_t)(eol - b.p) + 2;
            while (b.len < pos + sz + 2)
                if (fill(c->fd, &b) <= 0)
                    goto truncated;
            if (sz == 0)
                break; /* trailers are not used by these servers */
            out = xrealloc(out, olen + sz + 1);
            memcpy(out + olen, b.p + pos, sz);
            olen += sz;
            pos += sz + 2;
        }
    } else {
        int no_body = resp->status == 204 || resp->status == 304 || resp->status / 100 == 1 || !strcmp(method, "HEAD");
        if (clen < 0 && !no_body && close_after) {
            while (fill(c->fd, &b) > 0)
                ;
            clen = (long)(b.len - hoff);
        }
        if (clen < 0 || no_body)
            clen = 0;
        while (b.len < hoff + (size_t)clen)
            if (fill(c->fd, &b) <= 0)
                goto truncated;
        out = xrealloc(NULL, (size_t)clen + 1);
        memcpy(out, b.p + hoff, (size_t)clen);
        olen = (size_t)clen;
    }
    if (!out)
        out = xcalloc(1, 1);
    out[olen] = 0;
    resp->body = out;
    resp->len = olen;
    free(b.p);
    if (close_after)
        http_close(c);
    return 0;
truncated:
    snprintf(err, errlen, "%s %s: answer truncated", method, path);
    free(out);
    free(b.p);
    http_close(c);
    return -2;
}

int http_call(struct http_conn *c, const char *method, const char *path, const char *token, const char *body,
              struct http_resp *resp, char *err, size_t errlen)
{
    uint64_t until = now_ns() + 120000000000ull;
    int broken = 0;
    for (;;) {
        memset(resp, 0, sizeof *resp);
        int r = http_once(c, method, path, token, body, resp, err, errlen);
        if (r == -1 && ++broken <= 3)
            continue; /* a keep-alive connection the server had closed: once more on a new one */
        if (r < 0)
            return -1;
        if ((resp->status == 503 || resp->status == 429) && now_ns() < until) {
            atomic_fetch_add(resp->status == 503 ? &http_retries_503 : &http_retries_429, 1);
            free(resp->body);
            resp->body = NULL;
            sleep_s(resp->retry_after > 0 ? (resp->retry_after < 10 ? resp->retry_after : 10) : 0.1);
            continue;
        }
        return 0;
    }
}
