/* config: see config.h. Options are one table, so flags, variables, defaults
 * and the --help text cannot drift apart. */
#include "config.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PARLEY_WEB_DIR
#define PARLEY_WEB_DIR "web"
#endif
#ifndef PARLEY_VERSION
#define PARLEY_VERSION "0.1.0"
#endif

enum opt_type { OPT_INT, OPT_STR, OPT_LISTEN, OPT_LEVEL, OPT_SECRET, OPT_MLISTEN };

struct opt {
    const char *flag;
    const char *env;
    enum opt_type type;
    size_t offset;   /* into struct config */
    size_t size;     /* for strings */
    int64_t min, max;
    const char *def; /* NULL: no default (empty) */
    const char *help;
};

#define OFF(f) offsetof(struct config, f)
#define SZ(f) sizeof(((struct config *)0)->f)

static const struct opt opts[] = {
    {"--listen", "PARLEY_LISTEN", OPT_LISTEN, 0, 0, 0, 0, "127.0.0.1:8080", "host:port to listen on"},
    {"--data", "PARLEY_DATA", OPT_STR, OFF(data_dir), SZ(data_dir), 0, 0, "./data", "data directory (SQLite database, jwt.secret)"},
    {"--web", "PARLEY_WEB_DIR", OPT_STR, OFF(web_dir), SZ(web_dir), 0, 0, PARLEY_WEB_DIR, "directory of the web client served at /"},
    {"--workers", "PARLEY_WORKERS", OPT_INT, OFF(workers), 0, 0, 256, "0", "I/O worker threads (0: one per core)"},
    {"--jwt-secret", "PARLEY_JWT_SECRET", OPT_SECRET, 0, 0, 16, CONFIG_SECRET_MAX, NULL, "HS256 key, at least 16 bytes (default: generated into <data>/jwt.secret)"},
    {"--access-ttl-s", "PARLEY_ACCESS_TTL_S", OPT_INT, OFF(access_ttl_s), 0, 1, 86400 * 30, "900", "access token lifetime, seconds"},
    {"--refresh-ttl-s", "PARLEY_REFRESH_TTL_S", OPT_INT, OFF(refresh_ttl_s), 0, 60, 86400 * 3650, "2592000", "refresh token lifetime, seconds"},
    {"--batch-max", "PARLEY_BATCH_MAX", OPT_INT, OFF(batch_max), 0, 1, 100000, "512", "most writes per database transaction"},
    {"--batch-interval-ms", "PARLEY_BATCH_INTERVAL_MS", OPT_INT, OFF(batch_interval_ms), 0, 0, 1000, "2", "longest wait to fill a batch, ms"},
    {"--batch-gap-us", "PARLEY_BATCH_GAP_US", OPT_INT, OFF(batch_gap_us), 0, 0, 1000000, "250", "commit a batch early once no write came for this long, us (0: wait the whole interval)"},
    {"--send-rate", "PARLEY_SEND_RATE", OPT_INT, OFF(send_rate), 0, 0, 1000000, "50", "messages per second per user (0: no limit)"},
    {"--send-burst", "PARLEY_SEND_BURST", OPT_INT, OFF(send_burst), 0, 0, 1000000, "500", "token bucket size per user (0: no limit)"},
    {"--max-body", "PARLEY_MAX_BODY", OPT_INT, OFF(max_body), 0, 1, 1 << 20, "4096", "message body bytes after JSON decoding"},
    {"--max-frame", "PARLEY_MAX_FRAME", OPT_INT, OFF(max_frame), 0, 1024, 16 << 20, "65536", "WebSocket message bytes (larger: close 1009)"},
    {"--max-http-body", "PARLEY_MAX_HTTP_BODY", OPT_INT, OFF(max_http_body), 0, 1024, 16 << 20, "65536", "HTTP request body bytes (larger: 413)"},
    {"--max-upload", "PARLEY_MAX_UPLOAD", OPT_INT, OFF(max_upload), 0, 1, 1LL << 30, "10485760", "attachment upload bytes, streamed to <data>/attachments (larger: 413)"},
    {"--max-pending-uploads", "PARLEY_MAX_PENDING_UPLOADS", OPT_INT, OFF(max_pending_uploads), 0, 0, 1LL << 40, "104857600", "bytes of one user's uploads not yet attached to a message, each counted at least 4096 (more: 413; 0: no cap)"},
    {"--heartbeat-ms", "PARLEY_HEARTBEAT_MS", OPT_INT, OFF(heartbeat_ms), 0, 100, 3600000, "25000", "WebSocket ping interval; silent for two intervals: closed (not read and none of its output taken: 1008)"},
    {"--auth-timeout-ms", "PARLEY_AUTH_TIMEOUT_MS", OPT_INT, OFF(auth_timeout_ms), 0, 100, 600000, "10000", "time allowed for a first-frame auth"},
    {"--header-timeout-ms", "PARLEY_HEADER_TIMEOUT_MS", OPT_INT, OFF(header_timeout_ms), 0, 100, 600000, "10000", "time allowed for a request's headers, and idle keep-alive"},
    {"--max-conns", "PARLEY_MAX_CONNS", OPT_INT, OFF(max_conns), 0, 1, 10000000, "100000", "open connections per process"},
    {"--max-outq", "PARLEY_MAX_OUTQ", OPT_INT, OFF(max_outq), 0, 4096, 1LL << 32, "8388608", "bytes queued to one connection (more: close 1008)"},
    {"--max-group", "PARLEY_MAX_GROUP", OPT_INT, OFF(max_group), 0, 2, 100000, "1000", "members per group"},
    {"--max-hashes", "PARLEY_MAX_HASHES", OPT_INT, OFF(max_hashes), 0, 1, 256, "4", "concurrent password hashes (more: 503)"},
    /* hardening: backpressure, admission and per-address limits (docs/SECURITY.md) */
    {"--outq-low", "PARLEY_OUTQ_LOW", OPT_INT, OFF(outq_low), 0, 1024, 1LL << 32, "262144", "bytes waiting for one connection above which its input is not read"},
    {"--conns-per-addr", "PARLEY_CONNS_PER_ADDR", OPT_INT, OFF(conns_per_addr), 0, 0, 10000000, "1000", "open connections per source address (IPv6: per /64; 0: no limit)"},
    {"--signups-per-min", "PARLEY_SIGNUPS_PER_MIN", OPT_INT, OFF(signups_per_min), 0, 0, 1000000, "30", "signups per minute per source address (0: no limit)"},
    {"--convs-per-min", "PARLEY_CONVS_PER_MIN", OPT_INT, OFF(convs_per_min), 0, 0, 1000000, "120", "conversations created per minute per source address (0: no limit)"},
    {"--login-fails", "PARLEY_LOGIN_FAILS", OPT_INT, OFF(login_fails), 0, 0, 1000000, "5", "failed logins per account (4x per address) before backoff, 429 (0: no limit)"},
    {"--hash-queue", "PARLEY_HASH_QUEUE", OPT_INT, OFF(hash_queue), 0, 0, 100000, "64", "password hashes waiting for a slot, fair by address (more: 503)"},
    {"--hash-wait-ms", "PARLEY_HASH_WAIT_MS", OPT_INT, OFF(hash_wait_ms), 0, 1, 600000, "5000", "longest wait for a password-hash slot (then 503)"},
    {"--read-rate", "PARLEY_READ_RATE", OPT_INT, OFF(read_rate), 0, 0, 1000000, "20", "read frames per second per user (0: no limit)"},
    {"--read-burst", "PARLEY_READ_BURST", OPT_INT, OFF(read_burst), 0, 0, 1000000, "100", "read token bucket size per user (0: no limit)"},
    {"--typing-ms", "PARLEY_TYPING_MS", OPT_INT, OFF(typing_ms), 0, 0, 600000, "2000", "one typing fan-out per user and conversation per interval (0: all)"},
    {"--writer-queue", "PARLEY_WRITER_QUEUE", OPT_INT, OFF(writer_queue), 0, 1, 100000000, "100000", "writes waiting for the writer (more: unavailable, 503)"},
    {"--read-threads", "PARLEY_READ_THREADS", OPT_INT, OFF(read_threads), 0, 0, 256, "4", "reader threads, each with its own database connection: every read (PostgreSQL, at least 1), or the searches (SQLite; 0: on the worker's loop)"},
    {"--read-queue", "PARLEY_READ_QUEUE", OPT_INT, OFF(read_queue), 0, 0, 100000000, "1024", "reads waiting for a reader thread (more: unavailable, 503; 0: no bound)"},
    {"--log-level", "PARLEY_LOG_LEVEL", OPT_LEVEL, 0, 0, 0, 0, "info", "debug, info, warn or error"},
    {"--metrics-listen", "PARLEY_METRICS_LISTEN", OPT_MLISTEN, 0, 0, 0, 0, NULL, "host:port serving /metrics (and health) alone; then not on the main listener"},
    {"--log-format", "PARLEY_LOG_FORMAT", OPT_STR, OFF(log_format), SZ(log_format), 0, 0, "text", "text, or json (one object per line)"},
    {"--drain-delay-s", "PARLEY_DRAIN_DELAY_S", OPT_INT, OFF(drain_delay_s), 0, 0, 3600, "5", "SIGTERM: seconds of /readyz 503 while still serving (no new WebSockets)"},
    {"--drain-seconds", "PARLEY_DRAIN_SECONDS", OPT_INT, OFF(drain_seconds), 0, 0, 3600, "10", "SIGTERM: then close WebSockets (1001) spread over this many seconds"},
    {"--redis-url", "PARLEY_REDIS_URL", OPT_STR, OFF(redis_url), SZ(redis_url), 0, 0, NULL, "cluster: Redis bus, redis://host:port[/db], comma-separated for several"},
    {"--db-url", "PARLEY_DB_URL", OPT_STR, OFF(db_url), SZ(db_url), 0, 0, NULL, "cluster: PostgreSQL primary, postgresql://user@host:port/db (instead of SQLite)"},
    {"--db-replica-url", "PARLEY_DB_REPLICA_URL", OPT_STR, OFF(db_replica_url), SZ(db_replica_url), 0, 0, NULL, "cluster: PostgreSQL streaming replica for reads (optional)"},
};

#define NOPTS (sizeof opts / sizeof opts[0])

static int check_cluster(const struct config *cfg, char *err, size_t errlen);

/* host:port (or [v6]:port) into host (256 bytes) and *port. */
static int parse_hostport(const char *what, const char *v, char host[256], int *port_out, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    int64_t port;
    if (!colon || colon == v || (size_t)(colon - v) >= 256 || util_parse_i64(colon + 1, &port) < 0 || port < 0 ||
        port > 65535) {
        /* port 0: the kernel picks one (tests), logged at startup */
        snprintf(err, errlen, "%s: expected host:port (port 0-65535), got '%s'", what, v);
        return -1;
    }
    size_t n = (size_t)(colon - v);
    /* [::1]:8080 */
    if (v[0] == '[' && colon[-1] == ']') {
        memcpy(host, v + 1, n - 2);
        host[n - 2] = '\0';
    } else {
        memcpy(host, v, n);
        host[n] = '\0';
    }
    *port_out = (int)port;
    return 0;
}

static int set_listen(struct config *cfg, const char *v, char *err, size_t errlen)
{
    return parse_hostport("PARLEY_LISTEN/--listen", v, cfg->listen_host, &cfg->listen_port, err, errlen);
}

static int set_opt(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    char *base = (char *)cfg;
    int64_t n;
    switch (o->type) {
    case OPT_LISTEN:
        return set_listen(cfg, v, err, errlen);
    case OPT_MLISTEN:
        return parse_hostport("PARLEY_METRICS_LISTEN/--metrics-listen", v, cfg->metrics_host, &cfg->metrics_port,
                              err, errlen);
    case OPT_LEVEL:
        cfg->log_level = log_level_parse(v);
        if (cfg->log_level < 0) {
            snprintf(err, errlen, "%s/%s: expected debug, info, warn or error, got '%s'", o->env, o->flag, v);
            return -1;
        }
        return 0;
    case OPT_SECRET:
        if (strlen(v) < (size_t)o->min || strlen(v) > (size_t)o->max) {
            snprintf(err, errlen, "%s/%s: must be %lld to %lld bytes", o->env, o->flag,
                     (long long)o->min, (long long)o->max);
            return -1;
        }
        cfg->jwt_secret_len = strlen(v);
        memcpy(cfg->jwt_secret, v, cfg->jwt_secret_len);
        return 0;
    case OPT_STR:
        if (strlen(v) >= o->size) {
            snprintf(err, errlen, "%s/%s: too long", o->env, o->flag);
            return -1;
        }
        strcpy(base + o->offset, v);
        return 0;
    case OPT_INT:
        if (util_parse_i64(v, &n) < 0 || n < o->min || n > o->max) {
            snprintf(err, errlen, "%s/%s: expected an integer from %lld to %lld, got '%s'", o->env,
                     o->flag, (long long)o->min, (long long)o->max, v);
            return -1;
        }
        if (o->offset == OFF(workers))
            cfg->workers = (int)n;
        else
            memcpy(base + o->offset, &n, sizeof n);
        return 0;
    }
    return -1;
}

void config_print_help(void)
{
    printf("usage: parleyd [options]\n\n%-22s %-26s %-12s %s\n", "flag", "environment", "default", "meaning");
    for (size_t i = 0; i < NOPTS; i++)
        printf("%-22s %-26s %-12s %s\n", opts[i].flag, opts[i].env, opts[i].def ? opts[i].def : "-",
               opts[i].help);
}

int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTS; i++) {
        const char *v = opts[i].def;
        const char *e = getenv(opts[i].env);
        /* PARLEY_BATCH_MS is the baselines' alias */
        if (!e && opts[i].offset == OFF(batch_interval_ms) && opts[i].type == OPT_INT)
            e = getenv("PARLEY_BATCH_MS");
        if (e && *e)
            v = e;
        if (v && set_opt(cfg, &opts[i], v, err, errlen) < 0)
            return -1;
    }
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
            config_print_help();
            return 1;
        }
        if (strcmp(argv[a], "--version") == 0) {
            printf("parleyd %s\n", PARLEY_VERSION);
            return 1;
        }
        const char *arg = argv[a], *val = NULL, *eq = strchr(arg, '=');
        size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
        const struct opt *o = NULL;
        for (size_t i = 0; i < NOPTS; i++)
            if (strlen(opts[i].flag) == flen && strncmp(opts[i].flag, arg, flen) == 0)
                o = &opts[i];
        if (!o) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
            return -1;
        }
        if (eq)
            val = eq + 1;
        else if (a + 1 < argc)
            val = argv[++a];
        else {
            snprintf(err, errlen, "option %s needs a value", o->flag);
            return -1;
        }
        if (set_opt(cfg, o, val, err, errlen) < 0)
            return -1;
    }
    if (cfg->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (int)(n > 64 ? 64 : n) : 1;
    }
    if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0) {
        snprintf(err, errlen, "PARLEY_LOG_FORMAT/--log-format: expected text or json, got '%s'", cfg->log_format);
        return -1;
    }
    return check_cluster(cfg, err, errlen);
}

static int has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* The cluster URLs, checked for their scheme here so a typo fails the start
 * with one line instead of a connection error later. */
static int check_cluster(const struct config *cfg, char *err, size_t errlen)
{
    if (cfg->db_replica_url[0] && !cfg->db_url[0]) {
        snprintf(err, errlen, "PARLEY_DB_REPLICA_URL/--db-replica-url needs PARLEY_DB_URL (the primary) as well");
        return -1;
    }
    const char *dbs[] = {cfg->db_url, cfg->db_replica_url};
    for (int i = 0; i < 2; i++)
        if (dbs[i][0] && !has_prefix(dbs[i], "postgresql://") && !has_prefix(dbs[i], "postgres://")) {
            snprintf(err, errlen, "%s: expected postgresql://user@host:port/db, got '%s'",
                     i ? "PARLEY_DB_REPLICA_URL" : "PARLEY_DB_URL", dbs[i]);
            return -1;
        }
    for (const char *p = cfg->redis_url; *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n <= 8 || strncmp(p, "redis://", 8) != 0) {
            snprintf(err, errlen, "PARLEY_REDIS_URL: expected redis://host:port[/db] (comma-separated for several), got '%s'",
                     cfg->redis_url);
            return -1;
        }
        p = comma ? comma + 1 : p + n;
    }
    return 0;
}

static int read_secret(struct config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? 1 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1);
    size_t n = fread(cfg->jwt_secret, 1, sizeof cfg->jwt_secret, f);
    fclose(f);
    if (n < 16) {
        snprintf(err, errlen, "%s: secret shorter than 16 bytes", path);
        return -1;
    }
    cfg->jwt_secret_len = n;
    return 0;
}

int config_load_secret(struct config *cfg, char *err, size_t errlen)
{
    if (mkdir(cfg->data_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        return -1;
    }
    if (cfg->jwt_secret_len)
        return 0;
    char path[1100];
    snprintf(path, sizeof path, "%s/jwt.secret", cfg->data_dir);
    int rc = read_secret(cfg, path, err, errlen);
    if (rc <= 0)
        return rc;
    /* Not there yet: generate once, readable only by us. O_EXCL so two
     * processes starting together cannot both write different secrets. */
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialize");
        return -1;
    }
    uint8_t raw[32];
    char hex[65];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return read_secret(cfg, path, err, errlen) == 0 ? 0 : -1;
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t w = write(fd, hex, 64);
    if (w != 64 || fsync(fd) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    memcpy(cfg->jwt_secret, hex, 64);
    cfg->jwt_secret_len = 64;
    return 0;
}
