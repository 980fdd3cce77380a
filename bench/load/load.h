/* parley-load: a load generator for the Parley client protocol v1, in C.
 * Shared declarations of its modules:
 *   main.c    options, scenarios, measurement phases, checks, the JSON result
 *   engine.c  the WebSocket clients: epoll, one thread per --threads, own RFC 6455 framing
 *   setup.c   blocking HTTP/1.1 for setup (signup, conversations), starting/stopping the server
 *   util.c    clocks, latency histogram, a flat JSON field scanner, /proc readings
 *   cache.c   the setup cache (--setup-cache): entries of a server's data directory and the
 *             users and conversations made in it; copying and removing directory trees
 */
#ifndef PARLEY_LOAD_H
#define PARLEY_LOAD_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------ util.c */

uint64_t now_ns(void); /* CLOCK_MONOTONIC */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);

/* Log-linear latency histogram in nanoseconds: 64 buckets per power of two (1.6%).
 * One writer (an engine thread); counts are relaxed atomics so the main thread may read a
 * live copy for the progress line. */
#define HIST_BUCKETS 2304 /* values capped at 2^40 ns */
struct hist {
    _Atomic uint64_t b[HIST_BUCKETS];
    _Atomic uint64_t n;
    _Atomic uint64_t max;
};
void hist_add(struct hist *h, uint64_t ns);
/* a += b (b read relaxed); snapshot for a reader */
void hist_merge(struct hist *a, const struct hist *b);
/* value (ns) at quantile q in [0,1] of h minus base (base may be NULL) */
double hist_quantile(const struct hist *h, const struct hist *base, double q);
uint64_t hist_count(const struct hist *h);

/* Flat JSON scanner for server frames: the top-level fields the load generator needs;
 * nested values are skipped. Strings are returned raw (escapes not decoded). */
struct span { const char *p; uint32_t n; };
struct frame_fields {
    struct span op, id, body, code, message;
    int64_t conv, seq, user, mod;
    int has_conv, has_seq, has_mod;
};
int scan_frame(const char *p, size_t n, struct frame_fields *f); /* 0 ok, -1 malformed */
int span_eq(struct span s, const char *lit);
/* Word w of the --words vocabulary, written at out (at most 24 bytes, no NUL); its length.
 * The digits of w + 16 in base 16, each digit a two-letter syllable: distinct words, at least
 * two syllables. bench/search.mjs builds the same words for its queries. */
int word_of(uint32_t w, char *out);

/* /proc readings of a process (-1 when unreadable) */
double proc_cpu_s(pid_t pid);        /* utime + stime, all threads */
double proc_tree_cpu_s(pid_t pid);   /* the same + reaped children + live descendants */
long proc_rss_kib(pid_t pid);        /* VmRSS */
long proc_rss_anon_kib(pid_t pid);   /* RssAnon: VmRSS without mapped files (the database) */
long proc_fd_count(pid_t pid);
long proc_nofile_limit(pid_t pid);   /* soft "Max open files", -1 unlimited/unknown */
double machine_busy_s(void);         /* busy CPU seconds of the whole machine (/proc/stat) */
double self_cpu_s(void);             /* this process, getrusage */

/* ------------------------------------------------------------------ setup.c */

struct target {
    char host[64];     /* dotted IPv4 loopback address */
    int port;
    pid_t pid;         /* server process, 0 if unknown */
    int spawned;       /* we started it */
    int exited;        /* reaped: status holds the wait status */
    int status;
    char dir[256];     /* spawned: temporary directory (data/ and server.log) */
    char log_path[300];
};

/* The access-token lifetime every started server gets (PARLEY_ACCESS_TTL_S): 30 days, parleyd's
 * maximum, so that tokens kept in the setup cache stay valid. */
#define LOAD_ACCESS_TTL_S "2592000"

/* A fresh temporary directory for a server: t->dir, with an empty data/ and the log path. */
void server_prepare(struct target *t);
/* Starts `bin` on a free 127.0.0.1 port on t->dir/data (as it is); env: extra KEY=VALUE.
 * 0 once it listens; -1 (err filled, the process gone) if it exited or did not listen in time. */
int server_spawn(struct target *t, const char *bin, char **env, int nenv, int start_timeout_s, char *err, size_t errlen);
/* server_prepare + server_spawn; dies (with the server's output) if it does not start. */
void server_start(struct target *t, const char *bin, char **env, int nenv, int start_timeout_s);
/* SIGTERM, waits (SIGKILL after 15 s); returns the wait status, fills *secs; keeps the data. */
int server_halt(struct target *t, double *secs, int *killed);
/* server_halt, then removes t->dir (unless PARLEY_LOAD_KEEP_DATA is set). */
int server_stop(struct target *t, double *secs, int *killed);
int server_alive(struct target *t);
/* last `max` bytes of the server's output (spawned servers), malloc'd */
char *server_log_tail(struct target *t, size_t max);

struct http_conn { int fd; const struct target *t; };
struct http_resp { int status; char *body; size_t len; double retry_after; };
/* One request on a keep-alive connection (reconnects as needed). 503/429 are retried after
 * Retry-After (else 100 ms) for up to 120 s. Returns 0 with resp filled, -1 on failure. */
int http_call(struct http_conn *c, const char *method, const char *path, const char *token,
              const char *body, struct http_resp *resp, char *err, size_t errlen);
void http_close(struct http_conn *c);
extern _Atomic uint64_t http_retries_503, http_retries_429;

/* ------------------------------------------------------------------ cache.c */

/* One entry of the setup cache: DIR/<label>/<shape>/ holds data/ (a copy of the server's data
 * directory, taken after a clean stop) and setup.json (what a run needs from the setup). */
struct cache_entry {
    int64_t tokens_issued;  /* unix seconds: the oldest access token in it was issued then */
    int64_t ttl_s;          /* their lifetime */
    uint32_t nusers, nconvs;
    struct user *users;     /* malloc'd, tokens too */
    int64_t *convs;
};
/* Reads DIR/setup.json: 0, or -1 with why filled (missing, malformed, other key, or expired:
 * older than the shorter of its tokens' lifetime and ttl_s, less a margin). */
int cache_read(const char *dir, const char *key, struct cache_entry *ce, char *why, size_t whylen, int64_t ttl_s);
/* Stores data_dir (a stopped server's) and the entry as DIR (replacing an older one) through a
 * temporary sibling and a rename; 0, or -1 with err filled (the cache is then left as it was). */
int cache_write(const char *dir, const char *key, const char *data_dir, const struct cache_entry *ce, char *err, size_t errlen);
void cache_entry_free(struct cache_entry *ce);
/* Copies the tree under src into dst (created as needed): directories and regular files. */
int copy_tree(const char *src, const char *dst, char *err, size_t errlen);
void remove_tree(const char *dir);
/* mkdir -p */
int make_dirs(const char *path);

/* ------------------------------------------------------------------ engine.c */

enum phase {
    PH_OPEN = 0,   /* connecting and authenticating */
    PH_IDLE,       /* open, nobody sends */
    PH_WARMUP,     /* publishers send, nothing is measured */
    PH_MEASURE,    /* publishers send, deliveries and acks are measured */
    PH_DRAIN,      /* no new sends; waiting for acks and deliveries */
    PH_PING,       /* the ping sample (conns) */
    PH_CLOSE,      /* close frames out, waiting for the server's close */
    PH_EXIT,
};

struct conv {
    int64_t id;                  /* server's conversation id */
    _Atomic uint64_t acks;       /* acks received with a seq */
    _Atomic uint64_t seq_sum;    /* sum of acked seqs (dense check) */
    _Atomic uint64_t seq_max;
};

struct user {
    int64_t id;
    char *token;
};

struct client;
struct engine;

/* What a publisher sends: new messages, or (protocol version 2) changes to a message of its own,
 * each of which the server fans out as an `update` frame: a reaction toggled on and off, or an
 * edit. With a change op, each client's deliveries are update frames and their order check is
 * on `mod` (dense per conversation) instead of `seq`. */
enum pub_op { OP_SEND = 0, OP_REACT, OP_EDIT };

struct pub_cfg {
    enum pub_op op;
    uint32_t window;        /* >0: window of unacked sends per publisher */
    double rate_per_pub;    /* >0: sends per second per publisher (open loop) */
    uint32_t max_inflight;  /* rate mode: cap on unacked sends per publisher */
    uint32_t body_bytes;
    uint32_t words;         /* >0: bodies of words from a vocabulary of this many (word_of) */
    uint64_t max_sends;     /* total sends over all publishers (count bound) */
};

/* Per-thread counters: one writer, relaxed atomics, summed by main. */
struct counters {
    _Atomic uint64_t sent, acks, acks_m, deliv, deliv_m, failed;
    _Atomic uint64_t err_frames, seq_gaps, seq_dups, wrong_conv, bad_frames, unexpected_close;
    _Atomic uint64_t conn_fail, opened, closed_ok, pongs, frames_other, rate_skipped;
    _Atomic uint64_t bytes_in, bytes_out, inflight, behind;
    _Atomic uint64_t err_code[8];
    _Atomic uint64_t other_op[6];
};
extern const char *const err_code_names[8];
extern const char *const other_op_names[6]; /* frames other than msg/ack/error/hello/pong, by op */

struct engine_cfg {
    const struct target *t;
    uint32_t nthreads;
    uint32_t nsrc;            /* source addresses 127.0.0.2 .. 127.0.0.(1+nsrc) */
    uint32_t open_conc;       /* handshakes in flight per thread */
    struct pub_cfg pub;
    struct user *users;
    struct conv *convs;
    uint64_t t0_ns;           /* the run's time origin (bodies carry now - t0) */
};

struct engine *engine_new(const struct engine_cfg *cfg, uint32_t nclients);
/* client i: user index, conversation index (-1: none), publisher? */
void engine_client(struct engine *e, uint32_t i, uint32_t user, int32_t conv, int publisher);
/* a change op's target: the seq of the publisher's own message that client i changes */
void engine_pub_target(struct engine *e, uint32_t i, int64_t seq);
void engine_start(struct engine *e);                 /* threads start, phase PH_OPEN */
void engine_set_phase(struct engine *e, enum phase p);
enum phase engine_phase(struct engine *e);
uint32_t engine_nthreads(struct engine *e);
struct counters *engine_counters(struct engine *e, uint32_t thread);
struct hist *engine_lat(struct engine *e, uint32_t thread);     /* send -> deliver (measured) */
struct hist *engine_acklat(struct engine *e, uint32_t thread);  /* send -> ack (measured) */
void engine_sum(struct engine *e, struct counters *out);
/* after PH_DRAIN: clients whose last seq differs from their conversation's acked count */
void engine_check_clients(struct engine *e, uint64_t *short_clients, uint64_t *missing, uint64_t *ahead);
/* first error texts seen (for the JSON problems), at most n, joined */
size_t engine_samples(struct engine *e, char **out, size_t n);
void engine_join(struct engine *e);                  /* PH_EXIT and join */
void engine_free(struct engine *e);
uint32_t engine_ping_sample(struct engine *e);       /* clients pinged in PH_PING */

#endif
