/* parley-load: a load generator in C for the Parley client protocol v1 (docs/BENCHMARKS.md).
 *
 * One process: sets users and conversations up over the REST API (blocking HTTP/1.1, a few
 * connections in parallel), then drives thousands of authenticated WebSocket clients with
 * epoll (engine.c), measures, checks, and prints ONE JSON line on stdout. Bounded in time
 * and count; loopback only. See usage() for the scenarios and options. */
#include "load.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fputs(
        "usage: parley-load SCENARIO [options]\n"
        "\n"
        "Scenarios (each prints one JSON line on stdout, a progress line on stderr):\n"
        "  conns   N idle authenticated connections over U users: server RSS per connection\n"
        "          --conns N (1000) --users U (100) --settle S (2)\n"
        "          --steps N1,N2,...: open them in steps up to the last (which is --conns), RSS after\n"
        "          each step; the JSON has each step and a least-squares fit RSS = base + per_conn * N\n"
        "  fanout  R groups of M members, all connected; P publishers per group send with a window\n"
        "          of unacked sends each, or at a total rate: deliveries/s, send-to-deliver latency\n"
        "          --groups R (1) --members M (100) --publishers P (4) --window W (8) | --rate MSG/S\n"
        "  pairs   N users in N/2 direct conversations, everyone sends, at a total rate\n"
        "          --users N (1000) --rate MSG/S (5000) | --window W\n"
        "  writes  S senders, each in a group of its own (--group: all in one group), with a window\n"
        "          of unacked sends: acked sends/s, ack latency (the write path)\n"
        "          --senders S (50) --window W (32) [--group] | --rate MSG/S\n"
        "  --op send|react|edit   what publishers send (fanout, pairs, writes; protocol version 2):\n"
        "          send (the default) new messages; react: a reaction toggled on and off on a message of\n"
        "          the publisher's own (posted at setup), edit: edits of it. Deliveries are then the\n"
        "          update frames, checked dense on mod; latency is measured for send and edit\n"
        "  --words N              bodies made of words of a vocabulary of N (Zipf-like frequencies, the\n"
        "          words of bench/search.mjs) after the send time, instead of 'x' padding\n"
        "\n"
        "Server (default: start $PARLEYD, else build/release/parleyd, on a free 127.0.0.1 port with a\n"
        "fresh data directory, PARLEY_SEND_RATE=0 PARLEY_SEND_BURST=0 PARLEY_LOG_LEVEL=warn; SIGTERM at\n"
        "the end, which must exit 0):\n"
        "  --server PATH          the server to start (any protocol v1 server configured by PARLEY_*)\n"
        "  --env KEY=VALUE        extra environment for it (repeatable)\n"
        "  --url http://127.0.0.1:PORT [--server-pid PID]   use a running server instead (loopback only;\n"
        "                         without the pid there is no server CPU or RSS)\n"
        "  --cpu-pid PID          one more process whose CPU counts (a cluster's other nodes, Redis,\n"
        "                         HAProxy), repeatable; --cpu-tree PID: with its children (a postmaster\n"
        "                         and its backends). JSON: cpu_pids, all_cpu_us_per_delivery/_per_ack\n"
        "  --name LABEL           the server's name in the JSON\n"
        "\n"
        "Setup cache (a server this run starts only; docs/BENCHMARKS.md):\n"
        "  --setup-cache DIR      keep the setup's result in DIR and reuse it. Every signup costs the\n"
        "          server a password hash (parleyd: argon2id, ~90 ms), which dominates a run's wall time and\n"
        "          is not what it measures. Two kinds of entry, each a copy of the server's data directory\n"
        "          taken after a clean stop (SIGTERM, exit 0) and a setup.json (user ids, access tokens,\n"
        "          conversation ids):\n"
        "            DIR/LABEL/users/   the user pool: --setup-pool users (at least the run's), signed up\n"
        "                               once and extended when a run needs more\n"
        "            DIR/LABEL/SHAPE.pN/  the pool's data plus the run's conversations; SHAPE is what\n"
        "                               the setup depends on: fanout-gR-mM, pairs-uN, writes-sS[-group]\n"
        "                               (conns has no conversations: it uses the pool), N the pool's size\n"
        "          LABEL is --cache-as, else --name. A hit copies the entry's data into the run's fresh\n"
        "          temporary directory before the server starts and skips the HTTP setup (a change op's\n"
        "          own message is still posted: one request per publisher). A miss sets up over HTTP, stops\n"
        "          the server, stores the entry and starts the server again on the same directory. The key\n"
        "          is LABEL and SHAPE only: not the binary, not --env (a server that refuses a cached\n"
        "          directory, or whose tokens fail GET /api/me, falls back to a fresh setup). Every started\n"
        "          server gets PARLEY_ACCESS_TTL_S=" LOAD_ACCESS_TTL_S " (30 days); an entry a day short of that\n"
        "          age is a miss. Clear the cache with rm -rf DIR. JSON: setup_cache, setup_s\n"
        "  --setup-pool N         users in the pool (default: the run's); a runner passes its largest\n"
        "          run's count so that every entry's database holds the same users\n"
        "  --cache-as LABEL       the cache's label when --name is a variant of a server whose setup\n"
        "          data it can share (uws-nostore: uws-ref)\n"
        "\n"
        "Load and bounds:\n"
        "  --threads N            client threads, each with its own epoll (1; 0 = one per online CPU)\n"
        "  --src-addrs N          spread connections over 127.0.0.2 .. 127.0.0.(N+1) (8)\n"
        "  --open-conc N          handshakes in flight per thread (64)\n"
        "  --warmup S (2) --duration S (10)   seconds sent before measuring, seconds measured\n"
        "  --messages N           stop sending after N sends in all (0: no count bound)\n"
        "  --drain S (10)         after sending stops, wait this long at most for every ack and delivery\n"
        "  --max-inflight N       rate mode: unacked sends per publisher before sends are skipped (1024)\n"
        "  --body-bytes N (64)    message body size (it starts with the send time)\n"
        "  --setup-conc N (4)     parallel HTTP connections for the setup\n"
        "  --max-seconds S (600)  hard bound on the whole run\n"
        "  --quiet                no progress line\n"
        "\n"
        "Exit status: 0 the run completed and every check held; 1 a check failed (see \"problems\");\n"
        "2 setup failure, bad usage or a file-descriptor limit too low (ulimit -n).\n",
        f);
}

/* ------------------------------------------------------------------ options */

static struct {
    const char *scenario, *server, *url, *name, *setup_cache, *cache_as;
    uint32_t setup_pool;
    char **env;
    int nenv;
    pid_t server_pid;
    pid_t cpu_pid[64];
    int cpu_tree[64], ncpu;
    uint32_t threads, src_addrs, open_conc, setup_conc;
    double warmup, duration, drain, settle, max_seconds, rate;
    uint64_t messages;
    uint32_t conns, users, groups, members, publishers, window, senders, max_inflight, body_bytes, words;
    int group, quiet, window_set, rate_set;
    enum pub_op op;
    uint32_t steps[16]; /* conns: connection counts, increasing; the last is .conns */
    int nsteps;
} o = {
    .threads = 1, .src_addrs = 8, .open_conc = 64, .setup_conc = 4,
    .warmup = 2, .duration = 10, .drain = 10, .settle = 2, .max_seconds = 600,
    .conns = 1000, .groups = 1, .members = 100, .publishers = 4, .senders = 50,
    .max_inflight = 1024, .body_bytes = 64,
};

static struct target T;
static volatile sig_atomic_t interrupted;
static json_t *problems;
static char run_tag[16];

static void problem(const char *kind, json_t *detail)
{
    if (json_array_size(problems) < 100)
        json_array_append_new(problems, json_pack("{s:s,s:o}", "kind", kind, "detail", detail ? detail : json_null()));
    else
        json_decref(detail);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "\nparley-load: --max-seconds passed (hard bound): exiting\n";
    if (write(2, m, sizeof m - 1) < 0) {
    }
    if (T.spawned && T.pid > 0)
        kill(T.pid, SIGKILL);
    _exit(2);
}

static void cleanup(void)
{
    if (T.spawned && !T.exited && T.pid > 0) {
        double s;
        int k;
        server_stop(&T, &s, &k);
    }
}

static uint32_t u32arg(const char *name, const char *v, uint32_t min, uint32_t max)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (errno || *end || !*v || x < min || x > max)
        die("--%s expects an integer in %u..%u, got '%s'", name, min, max, v);
    return (uint32_t)x;
}

static double darg(const char *name, const char *v, double min, double max)
{
    char *end;
    double x = strtod(v, &end);
    if (*end || !*v || !(x >= min && x <= max))
        die("--%s expects a number in %g..%g, got '%s'", name, min, max, v);
    return x;
}

/* --steps 5000,10000,19000: increasing connection counts */
static void parse_steps(const char *v)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    o.nsteps = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o.nsteps == 16)
            die("--steps: at most 16");
        uint32_t n = u32arg("steps", t, 1, 1000000);
        if (o.nsteps && n <= o.steps[o.nsteps - 1])
            die("--steps must increase, got '%s'", v);
        o.steps[o.nsteps++] = n;
    }
    if (!o.nsteps)
        die("--steps: expected N1,N2,..., got '%s'", v);
}

static void parse_args(int argc, char **argv)
{
    enum { O_SERVER = 256, O_URL, O_PID, O_NAME, O_ENV, O_THREADS, O_SRC, O_OPENC, O_SETUPC, O_WARMUP,
           O_DURATION, O_DRAIN, O_SETTLE, O_MAXS, O_RATE, O_MESSAGES, O_CONNS, O_USERS, O_GROUPS, O_MEMBERS,
           O_PUBS, O_WINDOW, O_SENDERS, O_MAXINF, O_BODY, O_GROUP, O_QUIET, O_HELP, O_CPUPID, O_CPUTREE,
           O_OP, O_WORDS, O_STEPS, O_CACHE, O_POOL, O_CACHEAS };
    static const struct option lo[] = {
        {"server", 1, 0, O_SERVER}, {"url", 1, 0, O_URL}, {"server-pid", 1, 0, O_PID}, {"name", 1, 0, O_NAME},
        {"env", 1, 0, O_ENV}, {"threads", 1, 0, O_THREADS}, {"src-addrs", 1, 0, O_SRC},
        {"open-conc", 1, 0, O_OPENC}, {"setup-conc", 1, 0, O_SETUPC}, {"warmup", 1, 0, O_WARMUP},
        {"duration", 1, 0, O_DURATION}, {"drain", 1, 0, O_DRAIN}, {"settle", 1, 0, O_SETTLE},
        {"max-seconds", 1, 0, O_MAXS}, {"rate", 1, 0, O_RATE}, {"messages", 1, 0, O_MESSAGES},
        {"conns", 1, 0, O_CONNS}, {"users", 1, 0, O_USERS}, {"groups", 1, 0, O_GROUPS},
        {"members", 1, 0, O_MEMBERS}, {"publishers", 1, 0, O_PUBS}, {"window", 1, 0, O_WINDOW},
        {"senders", 1, 0, O_SENDERS}, {"max-inflight", 1, 0, O_MAXINF}, {"body-bytes", 1, 0, O_BODY},
        {"group", 0, 0, O_GROUP}, {"quiet", 0, 0, O_QUIET}, {"help", 0, 0, O_HELP},
        {"cpu-pid", 1, 0, O_CPUPID}, {"cpu-tree", 1, 0, O_CPUTREE}, {"op", 1, 0, O_OP},
        {"words", 1, 0, O_WORDS}, {"steps", 1, 0, O_STEPS}, {"setup-cache", 1, 0, O_CACHE},
        {"setup-pool", 1, 0, O_POOL}, {"cache-as", 1, 0, O_CACHEAS}, {0, 0, 0, 0}};
    int users_set = 0, ch;
    o.env = xcalloc((size_t)argc, sizeof *o.env);
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case O_SERVER: o.server = optarg; break;
        case O_URL: o.url = optarg; break;
        case O_PID: o.server_pid = (pid_t)u32arg("server-pid", optarg, 1, 1u << 30); break;
        case O_NAME: o.name = optarg; break;
        case O_CPUPID: case O_CPUTREE:
            if (o.ncpu == 64)
                die("at most 64 --cpu-pid/--cpu-tree");
            o.cpu_tree[o.ncpu] = ch == O_CPUTREE;
            o.cpu_pid[o.ncpu++] = (pid_t)u32arg(ch == O_CPUTREE ? "cpu-tree" : "cpu-pid", optarg, 1, 1u << 30);
            break;
        case O_ENV:
            if (!strchr(optarg, '=') || optarg[0] == '=')
                die("--env expects KEY=VALUE, got '%s'", optarg);
            o.env[o.nenv++] = optarg;
            break;
        case O_THREADS: o.threads = u32arg("threads", optarg, 0, 256); break;
        case O_SRC: o.src_addrs = u32arg("src-addrs", optarg, 1, 250); break;
        case O_OPENC: o.open_conc = u32arg("open-conc", optarg, 1, 10000); break;
        case O_SETUPC: o.setup_conc = u32arg("setup-conc", optarg, 1, 64); break;
        case O_WARMUP: o.warmup = darg("warmup", optarg, 0, 3600); break;
        case O_DURATION: o.duration = darg("duration", optarg, 0.1, 3600); break;
        case O_DRAIN: o.drain = darg("drain", optarg, 0, 600); break;
        case O_SETTLE: o.settle = darg("settle", optarg, 0, 600); break;
        case O_MAXS: o.max_seconds = darg("max-seconds", optarg, 1, 86400); break;
        case O_RATE: o.rate = darg("rate", optarg, 0.001, 1e8); o.rate_set = 1; break;
        case O_MESSAGES: o.messages = u32arg("messages", optarg, 0, 4000000000u); break;
        case O_CONNS: o.conns = u32arg("conns", optarg, 1, 1000000); break;
        case O_USERS: o.users = u32arg("users", optarg, 1, 1000000); users_set = 1; break;
        case O_GROUPS: o.groups = u32arg("groups", optarg, 1, 100000); break;
        case O_MEMBERS: o.members = u32arg("members", optarg, 1, 100000); break;
        case O_PUBS: o.publishers = u32arg("publishers", optarg, 1, 100000); break;
        case O_WINDOW: o.window = u32arg("window", optarg, 1, 1u << 20); o.window_set = 1; break;
        case O_SENDERS: o.senders = u32arg("senders", optarg, 1, 1000000); break;
        case O_MAXINF: o.max_inflight = u32arg("max-inflight", optarg, 1, 1u << 20); break;
        case O_BODY: o.body_bytes = u32arg("body-bytes", optarg, 24, 1u << 20); break;
        case O_GROUP: o.group = 1; break;
        case O_OP:
            if (!strcmp(optarg, "send"))
                o.op = OP_SEND;
            else if (!strcmp(optarg, "react"))
                o.op = OP_REACT;
            else if (!strcmp(optarg, "edit"))
                o.op = OP_EDIT;
            else
                die("--op must be send, react or edit, got '%s'", optarg);
            break;
        case O_WORDS: o.words = u32arg("words", optarg, 1, 1000000); break;
        case O_STEPS: parse_steps(optarg); break;
        case O_CACHE: o.setup_cache = optarg; break;
        case O_POOL: o.setup_pool = u32arg("setup-pool", optarg, 1, 1000000); break;
        case O_CACHEAS: o.cache_as = optarg; break;
        case O_QUIET: o.quiet = 1; break;
        case O_HELP: case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        exit(2);
    }
    o.scenario = argv[optind];
    if (strcmp(o.scenario, "conns") && strcmp(o.scenario, "fanout") && strcmp(o.scenario, "pairs") &&
        strcmp(o.scenario, "writes"))
        die("unknown scenario '%s' (conns, fanout, pairs, writes)", o.scenario);
    if (o.window_set && o.rate_set)
        die("--window and --rate exclude each other");
    if (!strcmp(o.scenario, "conns") && !users_set)
        o.users = 100;
    if (!strcmp(o.scenario, "pairs")) {
        if (!users_set)
            o.users = 1000;
        if (o.users < 2 || o.users % 2)
            die("pairs: --users must be even and at least 2");
        if (!o.window_set && !o.rate_set)
            o.rate = 5000, o.rate_set = 1;
    }
    if (!strcmp(o.scenario, "fanout")) {
        if (o.publishers > o.members)
            die("fanout: --publishers (%u) exceeds --members (%u)", o.publishers, o.members);
        if (o.members < 2)
            die("fanout: --members must be at least 2");
        if (!o.window_set && !o.rate_set)
            o.window = 8;
    }
    if (!strcmp(o.scenario, "writes") && !o.window_set && !o.rate_set)
        o.window = 32;
    if (o.server && o.url)
        die("--server and --url exclude each other");
    if (o.op != OP_SEND && !strcmp(o.scenario, "conns"))
        die("--op: conns sends nothing");
    if (o.nsteps && strcmp(o.scenario, "conns"))
        die("--steps: conns only");
    if (o.setup_cache && o.url)
        die("--setup-cache needs a server this run starts (not --url)");
    if (o.nsteps)
        o.conns = o.steps[o.nsteps - 1];
    else
        o.steps[o.nsteps++] = o.conns;
    if (o.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = n > 0 ? (uint32_t)n : 1;
    }
}

/* ------------------------------------------------------------------ setup over HTTP */

struct setup {
    struct user *users;
    uint32_t nusers;      /* users signed up: from .. nusers-1 (the rest came from the cache) */
    uint32_t from;
    struct conv *convs;
    uint32_t nconvs;
    /* conversation jobs: creator user and JSON body */
    uint32_t *creator;
    char **body;
    _Atomic uint32_t next;
    _Atomic int failed;
    char err[400];
    pthread_mutex_t mu;
};

static void setup_fail(struct setup *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void setup_fail(struct setup *s, const char *fmt, ...)
{
    pthread_mutex_lock(&s->mu);
    if (!atomic_exchange(&s->failed, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->err, sizeof s->err, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&s->mu);
}

static void *signup_worker(void *arg)
{
    struct setup *s = arg;
    struct http_conn hc = {.fd = -1, .t = &T};
    char body[200], err[300];
    for (;;) {
        uint32_t i = s->from + atomic_fetch_add(&s->next, 1);
        if (i >= s->nusers || atomic_load(&s->failed) || interrupted)
            break;
        snprintf(body, sizeof body, "{\"username\":\"l%s_%u\",\"password\":\"bench-password-1\"}", run_tag, i);
        struct http_resp r;
        if (http_call(&hc, "POST", "/api/auth/signup", NULL, body, &r, err, sizeof err) < 0) {
            setup_fail(s, "signup: %s", err);
            break;
        }
        json_t *j = r.status == 201 ? json_loadb(r.body, r.len, 0, NULL) : NULL;
        json_t *id = json_object_get(json_object_get(j, "user"), "id");
        json_t *tok = json_object_get(j, "access_token");
        if (!json_is_integer(id) || !json_is_string(tok)) {
            setup_fail(s, "signup answered %d: %.200s", r.status, r.body);
            json_decref(j);
            free(r.body);
            break;
        }
        s->users[i].id = json_integer_value(id);
        s->users[i].token = xstrdup(json_string_value(tok));
        json_decref(j);
        free(r.body);
    }
    http_close(&hc);
    return NULL;
}

static void *conv_worker(void *arg)
{
    struct setup *s = arg;
    struct http_conn hc = {.fd = -1, .t = &T};
    char err[300];
    for (;;) {
        uint32_t i = atomic_fetch_add(&s->next, 1);
        if (i >= s->nconvs || atomic_load(&s->failed) || interrupted)
            break;
        struct http_resp r;
        if (http_call(&hc, "POST", "/api/conversations", s->users[s->creator[i]].token, s->body[i], &r, err,
                      sizeof err) < 0) {
            setup_fail(s, "create conversation: %s", err);
            break;
        }
        json_t *j = (r.status == 201 || r.status == 200) ? json_loadb(r.body, r.len, 0, NULL) : NULL;
        json_t *id = json_object_get(j, "id");
        if (!json_is_integer(id)) {
            setup_fail(s, "create conversation answered %d: %.200s", r.status, r.body);
            json_decref(j);
            free(r.body);
            break;
        }
        s->convs[i].id = json_integer_value(id);
        json_decref(j);
        free(r.body);
    }
    http_close(&hc);
    return NULL;
}

static void run_pool(struct setup *s, void *(*fn)(void *), uint32_t jobs, const char *what)
{
    atomic_store(&s->next, 0);
    uint32_t n = o.setup_conc < jobs ? o.setup_conc : jobs;
    pthread_t th[64];
    uint64_t t0 = now_ns();
    for (uint32_t i = 0; i < n; i++)
        pthread_create(&th[i], NULL, fn, s);
    if (!o.quiet) {
        /* on a terminal a live line; in a log (make bench) a line every 15 s */
        int tty = isatty(2);
        uint64_t last = now_ns();
        while (atomic_load(&s->next) < jobs && !atomic_load(&s->failed) && !interrupted) {
            uint32_t done = atomic_load(&s->next);
            if (tty || now_ns() - last > 15000000000ull) {
                fprintf(stderr, tty ? "\r[%s] setup: %s %u/%u (%.0fs)\033[K" : "[%s] setup: %s %u/%u (%.0fs)\n", o.name, what,
                        done < n ? 0 : done - n, jobs, (double)(now_ns() - t0) / 1e9);
                last = now_ns();
            }
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
        }
    }
    for (uint32_t i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    if (!o.quiet)
        fprintf(stderr, isatty(2) ? "\r[%s] setup: %s %u/%u in %.1fs\033[K\n" : "[%s] setup: %s %u/%u in %.1fs\n",
                o.name, what, jobs, jobs, (double)(now_ns() - t0) / 1e9);
    if (atomic_load(&s->failed))
        die("setup failed: %s", s->err);
    if (interrupted)
        die("interrupted during setup");
}

/* ------------------------------------------------------------------ measurement helpers */

struct snap {
    uint64_t t;
    double server_cpu, client_cpu, machine;
    double extra_cpu[64]; /* --cpu-pid / --cpu-tree */
    struct counters c;
};

static void take(struct engine *e, struct snap *s)
{
    s->t = now_ns();
    s->server_cpu = T.pid ? proc_cpu_s(T.pid) : -1;
    s->client_cpu = self_cpu_s();
    s->machine = machine_busy_s();
    for (int i = 0; i < o.ncpu; i++)
        s->extra_cpu[i] = o.cpu_tree[i] ? proc_tree_cpu_s(o.cpu_pid[i]) : proc_cpu_s(o.cpu_pid[i]);
    if (e)
        engine_sum(e, &s->c);
}

#define G(s, f) atomic_load_explicit(&(s).c.f, memory_order_relaxed)

static double r2(double x) { return round(x * 100) / 100; }
static double r3(double x) { return round(x * 1000) / 1000; }

/* CPU seconds of the --cpu-pid/--cpu-tree processes from a to b (the server's pid, if listed
 * too, once); 0 without them */
static double extra_cpu_s(const struct snap *a, const struct snap *b)
{
    double sum = 0;
    for (int i = 0; i < o.ncpu; i++)
        if (o.cpu_pid[i] != T.pid && a->extra_cpu[i] >= 0 && b->extra_cpu[i] >= 0)
            sum += b->extra_cpu[i] - a->extra_cpu[i];
    return sum;
}

/* progress on stderr: once a second */
static struct {
    struct snap last;
    struct hist lat;
    int have;
} prog;

static void merged_lat(struct engine *e, struct hist *out)
{
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < engine_nthreads(e); i++)
        hist_merge(out, engine_lat(e, i));
}

static void progress(struct engine *e, const char *what, uint32_t nclients, int force)
{
    if (o.quiet)
        return;
    uint64_t now = now_ns();
    if (prog.have && !force && now - prog.last.t < 1000000000ull)
        return;
    struct snap s;
    take(e, &s);
    static struct hist lat;
    merged_lat(e, &lat);
    char line[400];
    int n = snprintf(line, sizeof line, "[%s] %s %s: open %llu/%u", o.name, o.scenario, what,
                     (unsigned long long)G(s, opened), nclients);
    if (prog.have && s.t > prog.last.t + 250000000ull) {
        double dt = (double)(s.t - prog.last.t) / 1e9;
        n += snprintf(line + n, sizeof line - (size_t)n, " | deliv/s %.0f acks/s %.0f",
                      (double)(G(s, deliv) - G(prog.last, deliv)) / dt, (double)(G(s, acks) - G(prog.last, acks)) / dt);
        double p99 = hist_quantile(&lat, &prog.lat, 0.99);
        if (p99 >= 0)
            n += snprintf(line + n, sizeof line - (size_t)n, " p99 %.2fms", p99 / 1e6);
        if (s.server_cpu >= 0 && prog.last.server_cpu >= 0)
            n += snprintf(line + n, sizeof line - (size_t)n, " | server %.2f cores", (s.server_cpu - prog.last.server_cpu) / dt);
        if (o.ncpu)
            n += snprintf(line + n, sizeof line - (size_t)n, " all %.2f",
                          (fmax(0, s.server_cpu - prog.last.server_cpu) + extra_cpu_s(&prog.last, &s)) / dt);
    }
    uint64_t errs = G(s, err_frames) + G(s, seq_gaps) + G(s, seq_dups) + G(s, wrong_conv) + G(s, bad_frames) +
                    G(s, unexpected_close) + G(s, conn_fail);
    snprintf(line + n, sizeof line - (size_t)n, " | errors %llu", (unsigned long long)errs);
    fprintf(stderr, isatty(2) ? "\r%s\033[K" : "%s\n", line);
    prog.last = s;
    prog.lat = lat;
    prog.have = 1;
}

static void progress_end(void)
{
    if (!o.quiet && isatty(2))
        fputc('\n', stderr);
    prog.have = 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static uint64_t deadline_ns;
static int time_up(void) { return interrupted || now_ns() > deadline_ns; }

/* Waits until every client is open (or failed); returns seconds taken. */
static double open_all(struct engine *e, uint32_t n)
{
    uint64_t t0 = now_ns();
    engine_start(e);
    for (;;) {
        struct snap s;
        take(e, &s);
        if (G(s, opened) + G(s, conn_fail) >= n)
            break;
        if (time_up() || !server_alive(&T))
            break;
        progress(e, "opening", n, 0);
        sleep_ms(20);
    }
    progress(e, "opened", n, 1);
    progress_end();
    return (double)(now_ns() - t0) / 1e9;
}

/* After the logins, until frames stop arriving for 500 ms (the presence burst), at most 60 s. */
static void settle_frames(struct engine *e)
{
    uint64_t t0 = now_ns(), quiet_since = now_ns(), last = UINT64_MAX;
    while (!time_up() && now_ns() - t0 < 60000000000ull) {
        struct snap s;
        take(e, &s);
        uint64_t f = G(s, bytes_in);
        if (f != last) {
            last = f;
            quiet_since = now_ns();
        } else if (now_ns() - quiet_since > 500000000ull) {
            break;
        }
        sleep_ms(20);
    }
}

static json_t *lat_json(struct engine *e, int ack)
{
    struct hist *h = xcalloc(1, sizeof *h);
    for (uint32_t i = 0; i < engine_nthreads(e); i++)
        hist_merge(h, ack ? engine_acklat(e, i) : engine_lat(e, i));
    json_t *j;
    if (!hist_count(h))
        j = json_pack("{s:I}", "n", (json_int_t)0);
    else
        j = json_pack("{s:I,s:f,s:f,s:f,s:f,s:f}", "n", (json_int_t)hist_count(h), "p50",
                      r3(hist_quantile(h, NULL, 0.5) / 1e6), "p90", r3(hist_quantile(h, NULL, 0.9) / 1e6), "p99",
                      r3(hist_quantile(h, NULL, 0.99) / 1e6), "p999", r3(hist_quantile(h, NULL, 0.999) / 1e6), "max",
                      r3((double)atomic_load(&h->max) / 1e6));
    free(h);
    return j;
}

static json_t *cpu_json(const struct snap *a, const struct snap *b)
{
    double wall = (double)(b->t - a->t) / 1e9;
    double srv = a->server_cpu >= 0 && b->server_cpu >= 0 ? b->server_cpu - a->server_cpu : -1;
    double cli = b->client_cpu - a->client_cpu;
    double mach = a->machine >= 0 && b->machine >= 0 ? b->machine - a->machine : -1;
    json_t *j = json_pack("{s:f,s:f}", "wall_s", r3(wall), "client_cpu_s", r2(cli));
    json_object_set_new(j, "server_cpu_s", srv >= 0 ? json_real(r2(srv)) : json_null());
    double ext = extra_cpu_s(a, b);
    if (o.ncpu)
        json_object_set_new(j, "cpu_pids_s", json_real(r3(ext)));
    json_object_set_new(j, "other_cpu_s", (srv >= 0 || o.ncpu) && mach >= 0 ? json_real(r2(fmax(0, mach - fmax(0, srv) - ext - cli))) : json_null());
    return j;
}

static void count_problems(struct engine *e, const struct snap *s)
{
    struct { const char *kind; uint64_t v; } k[] = {
        {"error_frames", G(*s, err_frames)}, {"seq_gaps", G(*s, seq_gaps)}, {"seq_repeats_or_out_of_order", G(*s, seq_dups)},
        {"msg_of_wrong_conv", G(*s, wrong_conv)}, {"bad_frames", G(*s, bad_frames)},
        {"unexpected_close", G(*s, unexpected_close)}, {"connections_failed", G(*s, conn_fail)},
        {"rate_not_sustained", G(*s, rate_skipped)},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (k[i].v)
            problem(k[i].kind, json_pack("{s:I}", "count", (json_int_t)k[i].v));
    char *samples[16];
    size_t n = engine_samples(e, samples, 16);
    if (n) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, json_string(samples[i]));
        problem("samples", a);
    }
}

static json_t *errors_json(const struct snap *s)
{
    json_t *codes = json_object();
    for (int i = 0; i < 8; i++) {
        uint64_t v = atomic_load(&s->c.err_code[i]);
        if (v)
            json_object_set_new(codes, err_code_names[i], json_integer((json_int_t)v));
    }
    return json_pack("{s:I,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "error_frames", (json_int_t)G(*s, err_frames),
                     "error_codes", codes, "seq_gaps", (json_int_t)G(*s, seq_gaps), "seq_repeats",
                     (json_int_t)G(*s, seq_dups), "wrong_conv", (json_int_t)G(*s, wrong_conv), "bad_frames",
                     (json_int_t)G(*s, bad_frames), "unexpected_close", (json_int_t)G(*s, unexpected_close),
                     "connections_failed", (json_int_t)G(*s, conn_fail), "rate_skipped",
                     (json_int_t)G(*s, rate_skipped));
}

/* ------------------------------------------------------------------ file descriptors */

static void check_nofile(uint64_t conns, uint64_t need)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
            die("%llu connections need about %llu file descriptors here (and as many in the server), but the "
                "hard limit is %llu (ulimit -Hn): lower --conns/--members/--users, or raise the limit "
                "(as root: ulimit -Hn %llu; or LimitNOFILE= in systemd, nofile in limits.conf)",
                (unsigned long long)conns, (unsigned long long)need, (unsigned long long)rl.rlim_max,
                (unsigned long long)need);
        /* the whole hard limit: a server we start inherits it, and needs as many as we do */
        rl.rlim_cur = rl.rlim_max != RLIM_INFINITY ? rl.rlim_max : need;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            die("cannot raise the file-descriptor limit to %llu: %s (ulimit -n)", (unsigned long long)need, strerror(errno));
    }
}

/* Change ops: user posts the message it will change to conv (HTTP, before any client
 * connects, so no client gets it as a msg frame); its seq. */
static int64_t post_target(struct setup *s, uint32_t user, uint32_t conv)
{
    struct http_conn hc = {.fd = -1, .t = &T};
    char err[300], body[128];
    struct http_resp r;
    snprintf(body, sizeof body, "{\"id\":\"target.%s.%u\",\"body\":\"the message publisher %u changes\"}", run_tag,
             user, user);
    char path[96];
    snprintf(path, sizeof path, "/api/conversations/%lld/messages", (long long)s->convs[conv].id);
    if (http_call(&hc, "POST", path, s->users[user].token, body, &r, err, sizeof err) < 0)
        die("setup: post the message to change: %s", err);
    json_t *j = (r.status == 201 || r.status == 200) ? json_loadb(r.body, r.len, 0, NULL) : NULL;
    json_t *seq = json_object_get(j, "seq");
    if (!json_is_integer(seq))
        die("setup: post the message to change answered %d: %.200s", r.status, r.body);
    int64_t v = json_integer_value(seq);
    json_decref(j);
    free(r.body);
    http_close(&hc);
    return v;
}

/* engine_client, and for a change op the publisher's target message */
static void add_client(struct engine *e, struct setup *s, uint32_t i, uint32_t user, int32_t conv, int publisher)
{
    engine_client(e, i, user, conv, publisher);
    if (publisher && o.op != OP_SEND)
        engine_pub_target(e, i, post_target(s, user, (uint32_t)conv));
}

/* ------------------------------------------------------------------ setup, with the cache */

/* The conversations of the run over HTTP (S->users filled) */
static void make_convs(struct setup *S, int is_pairs, int is_fanout, int is_writes)
{
    S->creator = xcalloc(S->nconvs, sizeof *S->creator);
    S->body = xcalloc(S->nconvs, sizeof *S->body);
    for (uint32_t i = 0; i < S->nconvs; i++) {
        if (is_pairs) {
            S->creator[i] = 2 * i;
            char b[96];
            snprintf(b, sizeof b, "{\"kind\":\"direct\",\"user_id\":%lld}", (long long)S->users[2 * i + 1].id);
            S->body[i] = xstrdup(b);
        } else {
            uint32_t first = is_fanout ? i * o.members : is_writes && !o.group ? i : 0;
            uint32_t count = is_fanout ? o.members : is_writes && !o.group ? 1 : o.senders;
            size_t cap = 64 + (size_t)count * 22;
            char *b = xcalloc(1, cap);
            size_t n = (size_t)snprintf(b, cap, "{\"kind\":\"group\",\"title\":\"load %u\",\"members\":[", i);
            for (uint32_t m = 1; m < count; m++)
                n += (size_t)snprintf(b + n, cap - n, "%s%lld", m > 1 ? "," : "", (long long)S->users[first + m].id);
            snprintf(b + n, cap - n, "]}");
            S->creator[i] = first;
            S->body[i] = b;
        }
    }
    run_pool(S, conv_worker, S->nconvs, "conversations");
}

/* What the JSON says about the cache (setup_cache) */
static struct {
    const char *state;     /* off; hit: no HTTP setup; pool: the users from the pool, the
                            * conversations made; miss: users signed up (all, or the pool's new) */
    char shape_key[200], pool_key[200], shape_dir[4096], pool_dir[4096];
    char miss[300], fallback[600];
    uint32_t pool_from, pool_users;
    double copy_s, snapshot_s;
    int stored_pool, stored_shape;
} C = {.state = "off"};

/* GET /api/me with user u's token answers 200: the server took the cached database and secret */
static int token_ok(const struct user *u, char *why, size_t whylen)
{
    struct http_conn hc = {.fd = -1, .t = &T};
    struct http_resp r;
    char err[300];
    int ok = http_call(&hc, "GET", "/api/me", u->token, NULL, &r, err, sizeof err) == 0 && r.status == 200;
    if (!ok)
        snprintf(why, whylen, "GET /api/me with a cached token: %s", r.status ? "not 200" : err);
    if (r.status)
        free(r.body);
    http_close(&hc);
    return ok;
}

/* The server on a copy of entry dir's data; 0 when it runs and the first and last of the `need`
 * users' tokens are good, else -1 with why (the server then stopped, the data directory empty). */
static int start_on_entry(const char *dir, const struct cache_entry *ce, uint32_t need, const char *bin, char *why, size_t whylen)
{
    char src[4200], data[300], err[300];
    snprintf(src, sizeof src, "%s/data", dir);
    snprintf(data, sizeof data, "%s/data", T.dir);
    uint64_t t0 = now_ns();
    int rc = copy_tree(src, data, err, sizeof err);
    C.copy_s += (double)(now_ns() - t0) / 1e9;
    if (rc < 0)
        snprintf(why, whylen, "copy: %s", err);
    else if (server_spawn(&T, bin, o.env, o.nenv, 60, err, sizeof err) < 0) {
        char *tail = server_log_tail(&T, 300);
        for (char *p = tail; *p; p++)
            if (*p == '\n')
                *p = ' ';
        snprintf(why, whylen, "%s: %s", err, tail);
        free(tail);
        rc = -1;
    } else if (!token_ok(&ce->users[0], why, whylen) || !token_ok(&ce->users[need - 1], why, whylen)) {
        rc = -1;
    }
    if (rc < 0) {
        double secs;
        int killed;
        server_halt(&T, &secs, &killed);
        remove_tree(data);
        mkdir(data, 0700);
    }
    return rc;
}

/* Stops the server cleanly, stores its data directory as an entry, starts it again on it. */
static int snapshot(const char *dir, const char *key, const struct cache_entry *ce, const char *bin)
{
    uint64_t t0 = now_ns();
    double secs;
    int killed, stored = 0;
    int st = server_halt(&T, &secs, &killed);
    char data[300], err[300];
    snprintf(data, sizeof data, "%s/data", T.dir);
    if (killed || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "[%s] setup cache: not stored, the server did not exit 0 on SIGTERM (wait status %d)\n", o.name, st);
    else if (cache_write(dir, key, data, ce, err, sizeof err) < 0)
        fprintf(stderr, "[%s] setup cache: not stored: %s\n", o.name, err);
    else
        stored = 1;
    if (server_spawn(&T, bin, o.env, o.nenv, 300, err, sizeof err) < 0) {
        char *tail = server_log_tail(&T, 2000);
        fprintf(stderr, "%s\n", tail);
        free(tail);
        die("starting the server again after storing the setup: %s; its output is above", err);
    }
    C.snapshot_s += (double)(now_ns() - t0) / 1e9;
    return stored;
}

/* The servers' access-token lifetime: ours, or the one given with --env */
static int64_t access_ttl_s(void)
{
    const char *v = LOAD_ACCESS_TTL_S;
    for (int i = 0; i < o.nenv; i++)
        if (!strncmp(o.env[i], "PARLEY_ACCESS_TTL_S=", 20))
            v = o.env[i] + 20;
    return atoll(v) > 0 ? atoll(v) : 900;
}

/* A label as one path component */
static void label_of(char *out, size_t n)
{
    const char *l = o.cache_as ? o.cache_as : o.name;
    size_t i = 0;
    for (; l[i] && i + 1 < n; i++)
        out[i] = (isalnum((unsigned char)l[i]) || strchr("-_.", l[i])) && !(i == 0 && l[i] == '.') ? l[i] : '_';
    out[i] = 0;
}

/* The setup through the cache (a server not yet started): see usage(). S->nusers is the pool's
 * size, nusers the run's. */
static void cached_setup(struct setup *S, uint32_t nusers, const char *bin, int is_pairs, int is_fanout, int is_writes)
{
    char label[100], shape[96];
    label_of(label, sizeof label);
    if (is_fanout)
        snprintf(shape, sizeof shape, "fanout-g%u-m%u", o.groups, o.members);
    else if (is_pairs)
        snprintf(shape, sizeof shape, "pairs-u%u", o.users);
    else if (is_writes)
        snprintf(shape, sizeof shape, "writes-s%u%s", o.senders, o.group ? "-group" : "");
    else
        shape[0] = 0; /* conns: the pool is all */
    snprintf(C.pool_key, sizeof C.pool_key, "%s/users", label);
    snprintf(C.pool_dir, sizeof C.pool_dir, "%s/%s", o.setup_cache, C.pool_key);
    struct cache_entry ce;
    char why[500];
    /* with the pool's size (the cached pool's, if it is larger than asked: its database holds
     * them all), so that every entry's database holds the same users as its pool-mates' */
    uint32_t pool_n = S->nusers;
    if (cache_read(C.pool_dir, C.pool_key, &ce, why, sizeof why, access_ttl_s()) == 0) {
        pool_n = ce.nusers > pool_n ? ce.nusers : pool_n;
        cache_entry_free(&ce);
    }
    if (shape[0])
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), ".p%u", pool_n);
    if (shape[0]) {
        snprintf(C.shape_key, sizeof C.shape_key, "%s/%s", label, shape);
        snprintf(C.shape_dir, sizeof C.shape_dir, "%s/%s", o.setup_cache, C.shape_key);
    }
    server_prepare(&T);
    /* 1. the run's own entry */
    if (shape[0]) {
        int have = cache_read(C.shape_dir, C.shape_key, &ce, why, sizeof why, access_ttl_s()) == 0;
        if (have && (ce.nusers < nusers || ce.nconvs != S->nconvs)) {
            snprintf(why, sizeof why, "entry with %u users and %u conversations, the run needs %u and %u", ce.nusers,
                     ce.nconvs, nusers, S->nconvs);
            cache_entry_free(&ce);
            have = 0;
        }
        if (have) {
            if (start_on_entry(C.shape_dir, &ce, nusers, bin, why, sizeof why) == 0) {
                for (uint32_t i = 0; i < nusers; i++)
                    S->users[i] = (struct user){ce.users[i].id, xstrdup(ce.users[i].token)};
                for (uint32_t i = 0; i < S->nconvs; i++)
                    S->convs[i].id = ce.convs[i];
                cache_entry_free(&ce);
                C.state = "hit";
                return;
            }
            snprintf(C.fallback, sizeof C.fallback, "%s: %.300s", C.shape_key, why);
            fprintf(stderr, "[%s] setup cache: %s unusable (%s): setting up without it\n", o.name, C.shape_key, why);
            cache_entry_free(&ce);
        } else {
            snprintf(C.miss, sizeof C.miss, "%.100s: %.180s", C.shape_key, why);
        }
    }
    /* 2. the user pool (its users are the first of the run's) */
    C.state = "miss";
    int64_t issued = (int64_t)time(NULL);
    int running = 0;
    if (cache_read(C.pool_dir, C.pool_key, &ce, why, sizeof why, access_ttl_s()) == 0) {
        uint32_t need = ce.nusers < nusers ? ce.nusers : nusers;
        if (start_on_entry(C.pool_dir, &ce, need, bin, why, sizeof why) == 0) {
            C.pool_from = ce.nusers < S->nusers ? ce.nusers : S->nusers;
            for (uint32_t i = 0; i < C.pool_from; i++)
                S->users[i] = (struct user){ce.users[i].id, xstrdup(ce.users[i].token)};
            issued = ce.tokens_issued;
            running = 1;
        } else {
            size_t n = strlen(C.fallback);
            snprintf(C.fallback + n, sizeof C.fallback - n, "%s%s: %.200s", n ? "; " : "", C.pool_key, why);
            fprintf(stderr, "[%s] setup cache: %s unusable (%s): setting up without it\n", o.name, C.pool_key, why);
        }
        cache_entry_free(&ce);
    }
    if (!running) {
        char err[300];
        if (server_spawn(&T, bin, o.env, o.nenv, 300, err, sizeof err) < 0) {
            char *tail = server_log_tail(&T, 2000);
            fprintf(stderr, "%s\n", tail);
            free(tail);
            die("%s; its output is above", err);
        }
    }
    if (C.pool_from < S->nusers) {
        S->from = C.pool_from;
        run_pool(S, signup_worker, S->nusers - S->from, "signups");
        struct cache_entry pe = {.tokens_issued = issued, .ttl_s = access_ttl_s(), .nusers = S->nusers, .users = S->users};
        C.stored_pool = snapshot(C.pool_dir, C.pool_key, &pe, bin);
    }
    C.pool_users = pool_n > S->nusers ? pool_n : S->nusers;
    if (C.pool_from >= S->nusers)
        C.state = shape[0] ? "pool" : "hit";
    if (!shape[0])
        return;
    make_convs(S, is_pairs, is_fanout, is_writes);
    int64_t *convs = xcalloc(S->nconvs, sizeof *convs);
    for (uint32_t i = 0; i < S->nconvs; i++)
        convs[i] = S->convs[i].id;
    struct cache_entry se = {.tokens_issued = issued, .ttl_s = access_ttl_s(), .nusers = nusers, .users = S->users,
                             .nconvs = S->nconvs, .convs = convs};
    C.stored_shape = snapshot(C.shape_dir, C.shape_key, &se, bin);
    free(convs);
}

static json_t *cache_json(void)
{
    if (!strcmp(C.state, "off"))
        return json_pack("{s:s}", "state", "off");
    json_t *j = json_pack("{s:s,s:b,s:s,s:s,s:I,s:I,s:f,s:f,s:b,s:b}", "state", C.state, "hit", !strcmp(C.state, "hit"),
                          "dir", o.setup_cache, "pool_key", C.pool_key, "pool_users", (json_int_t)C.pool_users,
                          "pool_users_cached", (json_int_t)C.pool_from, "copy_s", r2(C.copy_s), "store_s", r2(C.snapshot_s),
                          "stored_pool", C.stored_pool, "stored_entry", C.stored_shape);
    if (C.shape_key[0])
        json_object_set_new(j, "key", json_string(C.shape_key));
    if (C.miss[0])
        json_object_set_new(j, "miss", json_string(C.miss));
    if (C.fallback[0])
        json_object_set_new(j, "fallback", json_string(C.fallback));
    return j;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)o.max_seconds + 30);
    deadline_ns = now_ns() + (uint64_t)(o.max_seconds * 1e9);
    problems = json_array();
    snprintf(run_tag, sizeof run_tag, "%06llx", (unsigned long long)((now_ns() ^ (uint64_t)getpid() * 2654435761u) & 0xffffff));

    int is_conns = !strcmp(o.scenario, "conns"), is_fanout = !strcmp(o.scenario, "fanout");
    int is_pairs = !strcmp(o.scenario, "pairs"), is_writes = !strcmp(o.scenario, "writes");

    /* sizes */
    uint32_t nusers, nconvs, nclients, npubs;
    if (is_conns) {
        nusers = o.users < o.conns ? o.users : o.conns;
        nconvs = 0;
        nclients = o.conns;
        npubs = 0;
    } else if (is_fanout) {
        nusers = o.groups * o.members;
        nconvs = o.groups;
        nclients = nusers;
        npubs = o.groups * o.publishers;
    } else if (is_pairs) {
        nusers = o.users;
        nconvs = o.users / 2;
        nclients = nusers;
        npubs = nusers;
    } else {
        nusers = o.senders;
        nconvs = o.group ? 1 : o.senders;
        nclients = o.senders;
        npubs = o.senders;
    }
    check_nofile(nclients, (uint64_t)nclients + 64 + o.setup_conc);

    /* the server */
    const char *bin = NULL;
    if (o.url) {
        unsigned a, b, c, d;
        int port;
        if (sscanf(o.url, "http://%u.%u.%u.%u:%d", &a, &b, &c, &d, &port) != 5 || a != 127 || port <= 0 || port > 65535)
            die("--url must be http://127.x.y.z:PORT (loopback only), got '%s'", o.url);
        snprintf(T.host, sizeof T.host, "%u.%u.%u.%u", a, b, c, d);
        T.port = port;
        T.pid = o.server_pid;
        if (T.pid) {
            long lim = proc_nofile_limit(T.pid);
            if (lim > 0 && (uint64_t)lim < (uint64_t)nclients + 32)
                die("the server (pid %d) may open only %ld files (its ulimit -n), fewer than the %u connections asked",
                    (int)T.pid, lim, nclients);
        }
    } else {
        bin = o.server ? o.server : getenv("PARLEYD") ? getenv("PARLEYD") : "build/release/parleyd";
        atexit(cleanup);
        if (!o.setup_cache) /* else cached_setup starts it, on the cached data if there is any */
            server_start(&T, bin, o.env, o.nenv, 300);
    }
    if (!o.name)
        o.name = bin ? (strrchr(bin, '/') ? strrchr(bin, '/') + 1 : bin) : "server";

    json_t *params = json_pack("{s:I,s:I,s:I,s:f,s:f,s:I,s:s,s:I}", "threads", (json_int_t)o.threads, "src_addrs",
                               (json_int_t)o.src_addrs, "body_bytes", (json_int_t)o.body_bytes, "warmup_s", o.warmup,
                               "duration_s", o.duration, "messages", (json_int_t)o.messages, "op",
                               o.op == OP_REACT ? "react" : o.op == OP_EDIT ? "edit" : "send", "words", (json_int_t)o.words);
    if (is_conns)
        json_object_update_new(params, json_pack("{s:I,s:I,s:f}", "conns", (json_int_t)o.conns, "users",
                                                 (json_int_t)nusers, "settle_s", o.settle));
    if (is_fanout)
        json_object_update_new(params, json_pack("{s:I,s:I,s:I}", "groups", (json_int_t)o.groups, "members",
                                                 (json_int_t)o.members, "publishers", (json_int_t)o.publishers));
    if (is_pairs)
        json_object_update_new(params, json_pack("{s:I,s:I}", "users", (json_int_t)o.users, "conversations",
                                                 (json_int_t)nconvs));
    if (is_writes)
        json_object_update_new(params, json_pack("{s:I,s:s}", "senders", (json_int_t)o.senders, "conversations",
                                                 o.group ? "one group of all senders" : "a group of its own each"));
    if (!is_conns) {
        if (o.window)
            json_object_set_new(params, "window", json_integer(o.window));
        else {
            json_object_set_new(params, "rate", json_real(o.rate));
            json_object_set_new(params, "max_inflight", json_integer(o.max_inflight));
        }
    }
    if (!o.quiet) {
        char *p = json_dumps(params, JSON_COMPACT);
        if (o.setup_cache)
            fprintf(stderr, "[%s] %s %s (setup cache %s)\n", o.name, o.scenario, p, o.setup_cache);
        else
            fprintf(stderr, "[%s] %s %s on %s:%d\n", o.name, o.scenario, p, T.host, T.port);
        free(p);
    }

    /* the server's RSS before the setup (with the cache: after it, the server having just started) */
    long rss_start = T.pid ? proc_rss_kib(T.pid) : -1;

    /* setup: users, then conversations (with --setup-cache: from the cache where it can) */
    uint64_t setup_t0 = now_ns();
    uint32_t pool = o.setup_cache && o.setup_pool > nusers ? o.setup_pool : nusers;
    struct setup S = {.nusers = pool, .nconvs = nconvs};
    pthread_mutex_init(&S.mu, NULL);
    S.users = xcalloc(pool, sizeof *S.users);
    S.convs = xcalloc(nconvs ? nconvs : 1, sizeof *S.convs);
    if (o.setup_cache) {
        cached_setup(&S, nusers, bin, is_pairs, is_fanout, is_writes);
        if (!o.quiet)
            fprintf(stderr, "[%s] setup cache: %s (%s) in %.1fs, server on %s:%d\n", o.name, C.state,
                    C.shape_key[0] ? C.shape_key : C.pool_key, (double)(now_ns() - setup_t0) / 1e9, T.host, T.port);
    } else {
        run_pool(&S, signup_worker, nusers, "signups");
        if (nconvs)
            make_convs(&S, is_pairs, is_fanout, is_writes);
    }
    double setup_s = (double)(now_ns() - setup_t0) / 1e9;
    if (o.setup_cache)
        rss_start = T.pid ? proc_rss_kib(T.pid) : -1;

    struct engine_cfg ec = {
        .t = &T, .nthreads = o.threads, .nsrc = o.src_addrs, .open_conc = o.open_conc,
        .users = S.users, .convs = S.convs, .t0_ns = now_ns(),
        .pub = {.window = o.window, .rate_per_pub = npubs ? o.rate / npubs : 0, .max_inflight = o.max_inflight,
                .body_bytes = o.body_bytes, .max_sends = o.messages, .op = o.op, .words = o.words},
    };
    json_t *res = json_pack("{s:s,s:s,s:s,s:s*}", "tool", "parley-load", "scenario", o.scenario, "server", o.name,
                            "binary", bin ? bin : o.url);
    json_t *envj = json_object();
    for (int i = 0; i < o.nenv; i++) {
        char *eq = strchr(o.env[i], '=');
        char *k = strndup(o.env[i], (size_t)(eq - o.env[i]));
        json_object_set_new(envj, k, json_string(eq + 1));
        free(k);
    }
    json_object_set_new(res, "env", envj);
    json_object_set_new(res, "params", params);
    struct utsname un;
    uname(&un);
    json_object_set_new(res, "machine", json_pack("{s:I,s:s}", "cpus", (json_int_t)sysconf(_SC_NPROCESSORS_ONLN), "kernel", un.release));
    json_object_set_new(res, "pid", T.pid ? json_integer(T.pid) : json_null());
    json_object_set_new(res, "rss_at_start_kib", rss_start >= 0 ? json_integer(rss_start) : json_null());
    json_object_set_new(res, "setup_s", json_real(r2(setup_s)));
    json_object_set_new(res, "setup_cache", cache_json());
    struct engine *e = NULL;
    struct snap end;

    if (is_conns) {
        if (!T.pid)
            die("conns needs the server's pid (--server-pid with --url)");
        /* one socket per user, opened and closed: lazily built per-user state is not counted */
        struct engine *w = engine_new(&ec, nusers);
        for (uint32_t i = 0; i < nusers; i++)
            engine_client(w, i, i, -1, 0);
        open_all(w, nusers);
        engine_join(w);
        struct snap ws;
        take(w, &ws);
        if (G(ws, conn_fail))
            count_problems(w, &ws);
        engine_free(w);
        sleep_ms((int)(o.settle * 1000));
        long rss0 = proc_rss_kib(T.pid), fd0 = proc_fd_count(T.pid), anon0 = proc_rss_anon_kib(T.pid);
        /* one engine per step, each opening the step's new connections; all stay open */
        struct engine *eng[16];
        json_t *steps = json_array();
        long rss1 = rss0, fd1 = fd0;
        double open_s = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
        uint64_t opened = 0;
        int nfit = 0;
        for (int k = 0; k < o.nsteps; k++) {
            uint32_t from = k ? o.steps[k - 1] : 0, n = o.steps[k] - from;
            eng[k] = engine_new(&ec, n);
            for (uint32_t i = 0; i < n; i++)
                engine_client(eng[k], i, (from + i) % nusers, -1, 0);
            open_s += open_all(eng[k], n);
            sleep_ms((int)(o.settle * 1000));
            rss1 = proc_rss_kib(T.pid);
            fd1 = proc_fd_count(T.pid);
            long anon1 = proc_rss_anon_kib(T.pid);
            struct snap sk;
            take(eng[k], &sk);
            opened += G(sk, opened);
            json_array_append_new(steps, json_pack("{s:I,s:I,s:I,s:I,s:I,s:o?}", "conns", (json_int_t)o.steps[k],
                "conns_open", (json_int_t)opened, "rss_kib", (json_int_t)rss1, "rss_anon_kib", (json_int_t)anon1,
                "server_fds", (json_int_t)fd1,
                "kib_per_conn", rss0 > 0 && rss1 > 0 ? json_real(r3((double)(rss1 - rss0) / o.steps[k])) : NULL));
            if (rss1 > 0) { /* the fit: x = connections, y = RSS in KiB, with the point (0, rss0) */
                sx += o.steps[k], sy += (double)rss1, sxx += (double)o.steps[k] * o.steps[k];
                sxy += (double)o.steps[k] * (double)rss1, nfit++;
            }
            if (opened < o.steps[k] || time_up() || !server_alive(&T)) { /* no further step */
                o.nsteps = k + 1;
                break;
            }
        }
        if (rss0 > 0)
            sy += (double)rss0, nfit++;
        for (int k = 0; k < o.nsteps; k++)
            engine_set_phase(eng[k], PH_PING);
        uint32_t want = 0;
        for (int k = 0; k < o.nsteps; k++)
            want += engine_ping_sample(eng[k]);
        uint64_t until = now_ns() + 10000000000ull;
        uint64_t pongs = 0;
        do {
            sleep_ms(20);
            pongs = 0;
            for (int k = 0; k < o.nsteps; k++) {
                struct snap sk;
                take(eng[k], &sk);
                pongs += G(sk, pongs);
            }
        } while (pongs < want && now_ns() < until && !time_up());
        if (opened < nclients)
            problem("not_all_connections_opened", json_pack("{s:I,s:I}", "asked", (json_int_t)nclients, "opened", (json_int_t)opened));
        if (fd0 >= 0 && fd1 >= 0 && fd1 - fd0 < (long)opened - 16)
            problem("server_holds_fewer_fds", json_pack("{s:i,s:i,s:I}", "before", (int)fd0, "after", (int)fd1, "conns", (json_int_t)opened));
        if (pongs < want)
            problem("pings_unanswered", json_pack("{s:I,s:I}", "pinged", (json_int_t)want, "answered", (json_int_t)pongs));
        /* the totals of every step's engine; the last one stays e (its error samples) */
        uint64_t idle_frames = 0;
        memset(&end, 0, sizeof end);
        for (int k = 0; k < o.nsteps; k++) {
            struct snap sk;
            take(eng[k], &sk);
            idle_frames += G(sk, frames_other);
            engine_join(eng[k]);
            take(eng[k], &sk);
            _Atomic uint64_t *dst = (_Atomic uint64_t *)&end.c, *src = (_Atomic uint64_t *)&sk.c;
            for (size_t f = 0; f < sizeof end.c / sizeof(uint64_t); f++)
                atomic_store_explicit(&dst[f], atomic_load_explicit(&dst[f], memory_order_relaxed) +
                                      atomic_load_explicit(&src[f], memory_order_relaxed), memory_order_relaxed);
            if (k < o.nsteps - 1)
                engine_free(eng[k]);
        }
        e = eng[o.nsteps - 1];
        json_t *fit = json_null();
        double den = nfit * sxx - sx * sx;
        if (nfit >= 2 && den > 0) {
            double slope = (nfit * sxy - sx * sy) / den, base = (sy - slope * sx) / nfit;
            fit = json_pack("{s:f,s:f,s:s}", "base_kib", r2(base), "bytes_per_conn", r2(slope * 1024),
                            "points", "RSS before the connections (N = 0) and after each step");
        }
        json_object_update_new(res, json_pack("{s:I,s:I,s:f,s:I,s:I,s:o?,s:[i,i],s:{s:I,s:I},s:I,s:o,s:o}",
            "conns", (json_int_t)nclients, "conns_open", (json_int_t)opened, "seconds_to_open", r2(open_s),
            "rss_before_kib", (json_int_t)rss0, "rss_after_kib", (json_int_t)rss1,
            "kib_per_conn", rss0 > 0 && rss1 > 0 && opened ? json_real(r2((double)(rss1 - rss0) / (double)opened)) : NULL,
            "server_fds", (int)fd0, (int)fd1, "ping", "sent", (json_int_t)want, "answered", (json_int_t)pongs,
            "frames_while_idle", (json_int_t)idle_frames, "steps", steps, "fit", fit));
        json_object_set_new(res, "rss_anon_before_kib", json_integer(anon0));
    } else {
        e = engine_new(&ec, nclients);
        if (is_fanout) {
            for (uint32_t g = 0; g < o.groups; g++)
                for (uint32_t m = 0; m < o.members; m++)
                    add_client(e, &S, g * o.members + m, g * o.members + m, (int32_t)g, m < o.publishers);
        } else if (is_pairs) {
            for (uint32_t i = 0; i < nclients; i++)
                add_client(e, &S, i, i, (int32_t)(i / 2), 1);
        } else {
            for (uint32_t i = 0; i < nclients; i++)
                add_client(e, &S, i, i, o.group ? 0 : (int32_t)i, 1);
        }
        double open_s = open_all(e, nclients);
        struct snap s0;
        take(e, &s0);
        if (G(s0, opened) < nclients) {
            count_problems(e, &s0);
            problem("not_all_connections_opened", json_pack("{s:I,s:I}", "asked", (json_int_t)nclients, "opened", (json_int_t)G(s0, opened)));
        }
        settle_frames(e);
        struct snap a, b;
        struct snap s_login;
        take(e, &s_login);
        uint64_t login_frames = G(s_login, frames_other);
        engine_set_phase(e, PH_WARMUP);
        uint64_t tw = now_ns();
        while (!time_up() && now_ns() - tw < (uint64_t)(o.warmup * 1e9) && server_alive(&T)) {
            progress(e, "warmup", nclients, 0);
            sleep_ms(20);
        }
        take(e, &a);
        engine_set_phase(e, PH_MEASURE);
        uint64_t tm = now_ns();
        int count_bound = 0;
        while (!time_up() && now_ns() - tm < (uint64_t)(o.duration * 1e9) && server_alive(&T)) {
            progress(e, "measure", nclients, 0);
            sleep_ms(10);
            if (o.messages) {
                struct snap s;
                engine_sum(e, &s.c);
                if (G(s, sent) >= o.messages) {
                    count_bound = 1;
                    break;
                }
            }
        }
        engine_set_phase(e, PH_DRAIN);
        take(e, &b);
        int timed_out = interrupted || now_ns() > deadline_ns;
        /* drain: every ack and every delivery, or --drain seconds */
        uint64_t td = now_ns();
        struct snap d;
        for (;;) {
            take(e, &d);
            if (G(d, behind) == 0 && G(d, inflight) == 0)
                break;
            if (now_ns() - td > (uint64_t)(o.drain * 1e9) || !server_alive(&T) || interrupted)
                break;
            progress(e, "drain", nclients, 0);
            sleep_ms(10);
        }
        double drain_s = (double)(now_ns() - td) / 1e9;
        progress(e, "done", nclients, 1);
        progress_end();
        if (G(d, inflight) || G(d, behind))
            problem("drain_incomplete", json_pack("{s:I,s:I,s:f}", "unacked_sends", (json_int_t)G(d, inflight),
                                                  "deliveries_missing", (json_int_t)(G(d, behind) == UINT64_MAX ? 0 : G(d, behind)),
                                                  "waited_s", r2(drain_s)));
        if (timed_out)
            problem(interrupted ? "interrupted" : "time_bound_hit", json_pack("{s:f}", "max_seconds", o.max_seconds));
        engine_join(e);
        take(e, &end);
        /* once and in order: each client's last seq is its conversation's acked count, with no
         * gap or repeat on the way (counted per frame); the acked seqs of a conversation are 1..n */
        uint64_t short_c, missing, ahead;
        engine_check_clients(e, &short_c, &missing, &ahead);
        if (short_c)
            problem("missing_deliveries", json_pack("{s:I,s:I}", "clients", (json_int_t)short_c, "messages", (json_int_t)missing));
        if (ahead)
            problem("deliveries_beyond_acks", json_pack("{s:I}", "clients", (json_int_t)ahead));
        uint64_t not_dense = 0, acked_total = 0;
        for (uint32_t i = 0; i < nconvs; i++) {
            uint64_t n = atomic_load(&S.convs[i].acks), sum = atomic_load(&S.convs[i].seq_sum), mx = atomic_load(&S.convs[i].seq_max);
            acked_total += n;
            if (mx != n || sum != n * (n + 1) / 2)
                not_dense++;
        }
        if (not_dense)
            problem("acked_seqs_not_dense", json_pack("{s:I}", "conversations", (json_int_t)not_dense));
        double wall = (double)(b.t - a.t) / 1e9;
        double srv = a.server_cpu >= 0 && b.server_cpu >= 0 ? b.server_cpu - a.server_cpu : -1;
        uint64_t dm = G(b, deliv_m), am = G(b, acks_m);
        json_object_update_new(res, json_pack("{s:I,s:I,s:f,s:f,s:f,s:b}", "conns", (json_int_t)nclients,
            "conns_open", (json_int_t)G(s0, opened), "seconds_to_open", r2(open_s), "measured_s", r3(wall),
            "drain_s", r2(drain_s), "count_bound_hit", count_bound));
        json_object_set_new(res, "sent", json_integer((json_int_t)G(end, sent)));
        json_object_set_new(res, "acks", json_integer((json_int_t)G(end, acks)));
        json_object_set_new(res, "acked_seqs", json_integer((json_int_t)acked_total));
        json_object_set_new(res, "failed", json_integer((json_int_t)G(end, failed)));
        json_object_set_new(res, "deliveries", json_integer((json_int_t)G(end, deliv)));
        json_object_set_new(res, "deliveries_measured", json_integer((json_int_t)dm));
        json_object_set_new(res, "acks_measured", json_integer((json_int_t)am));
        json_object_set_new(res, "deliveries_per_s", json_real(round((double)dm / wall)));
        json_object_set_new(res, "acks_per_s", json_real(round((double)am / wall)));
        json_object_set_new(res, "latency_ms", lat_json(e, 0));
        json_object_set_new(res, "ack_latency_ms", lat_json(e, 1));
        json_object_set_new(res, "cpu", cpu_json(&a, &b));
        json_object_set_new(res, "server_cores", srv >= 0 ? json_real(r2(srv / wall)) : json_null());
        json_object_set_new(res, "server_cpu_us_per_delivery", srv >= 0 && dm ? json_real(r3(srv * 1e6 / (double)dm)) : json_null());
        json_object_set_new(res, "server_cpu_us_per_ack", srv >= 0 && am ? json_real(r3(srv * 1e6 / (double)am)) : json_null());
        json_object_set_new(res, "client_cpu_us_per_delivery", dm ? json_real(r3((b.client_cpu - a.client_cpu) * 1e6 / (double)dm)) : json_null());
        if (o.ncpu) {
            /* every listed process (and the server's) over the measured interval */
            json_t *pids = json_array();
            for (int i = 0; i < o.ncpu; i++)
                json_array_append_new(pids, json_pack("{s:i,s:b,s:f}", "pid", (int)o.cpu_pid[i], "tree", o.cpu_tree[i],
                                                      "cpu_s", a.extra_cpu[i] >= 0 && b.extra_cpu[i] >= 0 ? r3(b.extra_cpu[i] - a.extra_cpu[i]) : -1.0));
            json_object_set_new(res, "cpu_pids", pids);
            double all = fmax(0, srv) + extra_cpu_s(&a, &b);
            json_object_set_new(res, "all_cpu_s", json_real(r3(all)));
            json_object_set_new(res, "all_cores", json_real(r2(all / wall)));
            json_object_set_new(res, "all_cpu_us_per_delivery", dm ? json_real(r3(all * 1e6 / (double)dm)) : json_null());
            json_object_set_new(res, "all_cpu_us_per_ack", am ? json_real(r3(all * 1e6 / (double)am)) : json_null());
        }
        json_t *ops = json_object();
        for (int i = 0; i < 6; i++) {
            uint64_t v = atomic_load(&d.c.other_op[i]) - atomic_load(&s_login.c.other_op[i]);
            if (v)
                json_object_set_new(ops, other_op_names[i], json_integer((json_int_t)v));
        }
        json_object_set_new(res, "other_frames_by_op", ops);
        json_object_set_new(res, "login_frames", json_integer((json_int_t)login_frames));
        /* from the warm-up to the end of the drain (the close adds presence frames) */
        json_object_set_new(res, "other_frames", json_integer((json_int_t)(G(d, frames_other) - login_frames)));
        json_object_set_new(res, "server_rss_end_kib", T.pid ? json_integer(proc_rss_kib(T.pid)) : json_null());
    }
    count_problems(e, &end);
    json_object_set_new(res, "errors", errors_json(&end));
    json_object_set_new(res, "bytes", json_pack("{s:I,s:I}", "in", (json_int_t)G(end, bytes_in), "out", (json_int_t)G(end, bytes_out)));
    json_object_set_new(res, "setup_http_retries", json_pack("{s:I,s:I}", "503", (json_int_t)atomic_load(&http_retries_503),
                                                             "429", (json_int_t)atomic_load(&http_retries_429)));

    /* the server: alive until now, and exits 0 on SIGTERM */
    if (T.spawned) {
        int alive = server_alive(&T);
        if (!alive)
            problem("server_died", json_pack("{s:i}", "wait_status", T.status));
        sleep_ms(100);
        double secs;
        int killed;
        int st = server_stop(&T, &secs, &killed);
        json_t *ex = json_pack("{s:f,s:b}", "seconds", r2(secs), "killed", killed);
        if (WIFEXITED(st))
            json_object_set_new(ex, "code", json_integer(WEXITSTATUS(st)));
        if (WIFSIGNALED(st))
            json_object_set_new(ex, "signal", json_integer(WTERMSIG(st)));
        json_object_set_new(res, "server_exit", ex);
        if (alive && killed)
            problem("server_not_stopped_15s_after_sigterm", json_pack("{s:f}", "seconds", secs));
        else if (alive && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            problem("server_bad_exit_on_sigterm", json_pack("{s:i}", "wait_status", st));
        if (json_array_size(problems)) {
            char *tail = server_log_tail(&T, 1500);
            json_object_set_new(res, "server_output_tail", json_string(tail));
            free(tail);
        }
    }
    json_object_set_new(res, "problems", problems);
    int ok = json_array_size(problems) == 0;
    json_object_set_new(res, "ok", json_boolean(ok));

    /* the human summary on stderr, the JSON line on stdout */
    if (!o.quiet) {
        json_t *l = json_object_get(res, "latency_ms");
        if (is_conns)
            fprintf(stderr, "[%s] conns: %.2f KiB per connection (RSS %lld -> %lld KiB), %lld/%lld pings answered\n",
                    o.name, json_number_value(json_object_get(res, "kib_per_conn")),
                    (long long)json_integer_value(json_object_get(res, "rss_before_kib")),
                    (long long)json_integer_value(json_object_get(res, "rss_after_kib")),
                    (long long)json_integer_value(json_object_get(json_object_get(res, "ping"), "answered")),
                    (long long)json_integer_value(json_object_get(json_object_get(res, "ping"), "sent")));
        else
            fprintf(stderr, "[%s] %s: deliveries/s %.0f acks/s %.0f | latency ms p50 %.2f p99 %.2f p99.9 %.2f max %.2f | "
                    "server CPU us/delivery %.3f us/ack %.2f\n", o.name, o.scenario,
                    json_number_value(json_object_get(res, "deliveries_per_s")), json_number_value(json_object_get(res, "acks_per_s")),
                    json_number_value(json_object_get(l, "p50")), json_number_value(json_object_get(l, "p99")),
                    json_number_value(json_object_get(l, "p999")), json_number_value(json_object_get(l, "max")),
                    json_number_value(json_object_get(res, "server_cpu_us_per_delivery")),
                    json_number_value(json_object_get(res, "server_cpu_us_per_ack")));
        for (size_t i = 0; i < json_array_size(problems); i++) {
            char *p = json_dumps(json_array_get(problems, i), JSON_COMPACT);
            fprintf(stderr, "[%s] PROBLEM %.600s\n", o.name, p);
            free(p);
        }
    }
    char *line = json_dumps(res, JSON_COMPACT | JSON_REAL_PRECISION(10));
    printf("%s\n", line);
    fflush(stdout);
    free(line);
    json_decref(res);
    engine_free(e);
    for (uint32_t i = 0; i < pool; i++)
        free(S.users[i].token);
    for (uint32_t i = 0; S.body && i < nconvs; i++) /* no bodies when the cache had the conversations */
        free(S.body[i]);
    free(S.body);
    free(S.creator);
    free(S.users);
    free(S.convs);
    free(o.env);
    return ok ? 0 : 1;
}
