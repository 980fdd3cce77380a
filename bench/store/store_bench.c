/* store-bench: what one message costs the store's write path, measured
 * without a network, a worker or a load generator: one thread runs
 * store_send_batch over a fixed workload and reports CPU time per message
 * (getrusage: user + system), so two builds or two settings compare on the
 * same work even on a busy machine (run it under `perf stat -e instructions`
 * for a count that does not depend on the machine at all).
 *
 *   store-bench [--dir D] [--messages N] [--batch B] [--convs C] [--body-bytes L]
 *
 * The workload: C groups of 2 members each, messages sent round-robin over
 * them, B per transaction, each body L bytes of words (a timestamp and
 * then words from a small vocabulary, like the load generator's --words). One
 * JSON line on stdout. The database is made fresh under D (default: a new
 * directory under /tmp) and removed at the end. */
#include "store.h"
#include "store_sqlite.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double wall_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static const char *const words[] = {"hello", "world", "meeting", "tomorrow", "lunch", "deploy", "release",
                                    "review", "coffee", "parley", "message", "search", "index", "thanks",
                                    "question", "answer", "server", "client", "budget", "weekend"};

/* body L bytes: "<n> word word ..." padded to exactly L */
static size_t make_body(char *b, size_t L, uint64_t n, uint64_t *rng)
{
    size_t len = (size_t)snprintf(b, L + 1, "%" PRIu64, n);
    while (len < L) {
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        const char *w = words[(*rng >> 33) % (sizeof words / sizeof *words)];
        size_t wl = strlen(w);
        if (len + 1 + wl > L)
            break;
        b[len++] = ' ';
        memcpy(b + len, w, wl);
        len += wl;
    }
    while (len < L)
        b[len++] = 'x';
    b[len] = 0;
    return len;
}

static long arg(int argc, char **argv, const char *name, long def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name))
            return strtol(argv[i + 1], NULL, 10);
    return def;
}

int main(int argc, char **argv)
{
    long nmsg = arg(argc, argv, "--messages", 200000), batch = arg(argc, argv, "--batch", 256);
    long nconv = arg(argc, argv, "--convs", 50), blen = arg(argc, argv, "--body-bytes", 64);
    char dir[256] = "", path[300], err[256], cmd[400];
    struct store *st;

    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--dir"))
            snprintf(dir, sizeof dir, "%s", argv[i + 1]);
    if (!*dir) {
        snprintf(dir, sizeof dir, "/tmp/store-bench-XXXXXX");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            return 2;
        }
    }
    if (nmsg <= 0 || batch <= 0 || nconv <= 0 || blen < 8 || blen > 4096) {
        fprintf(stderr, "usage: store-bench [--dir D] [--messages N] [--batch B] [--convs C] [--body-bytes L]\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/parley.db", dir);
    if (store_sqlite_open(path, 0, &st, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store-bench: %s\n", err);
        return 2;
    }
    int64_t *convs = calloc((size_t)nconv, sizeof *convs), *senders = calloc((size_t)nconv, sizeof *senders);
    store_begin(st);
    for (long c = 0; c < nconv; c++) {
        char name[32];
        json_t *u;
        int64_t ids[2];
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "u%ld_%d", c, k);
            if (store_user_create(st, name, NULL, "x", 1, &u) != STORE_OK)
                return 2;
            ids[k] = json_integer_value(json_object_get(u, "id"));
            json_decref(u);
        }
        senders[c] = ids[0];
        if (store_conv_create_group(st, ids[0], "g", ids + 1, 1, 1, &convs[c]) != STORE_OK)
            return 2;
    }
    store_commit(st);

    struct store_send *v = calloc((size_t)batch, sizeof *v);
    char *bodies = malloc((size_t)batch * (size_t)(blen + 1)), (*cids)[24] = malloc((size_t)batch * 24);
    uint64_t rng = 42, n = 0;
    double c0 = cpu_s(), w0 = wall_s();
    long commits = 0;
    while ((long)n < nmsg) {
        long k = 0;
        for (; k < batch && (long)n < nmsg; k++, n++) {
            memset(&v[k], 0, sizeof v[k]);
            v[k].conv = convs[n % (uint64_t)nconv];
            v[k].sender = senders[n % (uint64_t)nconv];
            snprintf(cids[k], 24, "c%" PRIu64, n);
            v[k].client_id = cids[k];
            v[k].body = bodies + (size_t)k * (size_t)(blen + 1);
            v[k].body_len = make_body(bodies + (size_t)k * (size_t)(blen + 1), (size_t)blen, n, &rng);
        }
        struct store_batch_out out = {0};
        if (store_begin(st) != STORE_OK || store_send_batch(st, v, (size_t)k, 1000 + (int64_t)n, &out) != STORE_OK ||
            store_commit(st) != STORE_OK) {
            fprintf(stderr, "store-bench: a batch failed\n");
            return 1;
        }
        store_batch_out_dispose(&out);
        for (long i = 0; i < k; i++)
            if (v[i].rc != STORE_OK || v[i].dup) {
                fprintf(stderr, "store-bench: send %ld refused (%d)\n", i, v[i].rc);
                return 1;
            }
        commits++;
    }
    double cpu = cpu_s() - c0, wall = wall_s() - w0;
    printf("{\"tool\":\"store-bench\",\"store\":\"sqlite\",\"messages\":%ld,\"batch\":%ld,\"convs\":%ld,\"body_bytes\":%ld,"
           "\"commits\":%ld,\"cpu_s\":%.3f,\"wall_s\":%.3f,\"cpu_us_per_msg\":%.3f,\"msgs_per_s\":%.0f}\n",
           nmsg, batch, nconv, blen, commits, cpu, wall, cpu * 1e6 / (double)nmsg, (double)nmsg / wall);
    store_close(st);
    free(v);
    free(bodies);
    free(cids);
    free(convs);
    free(senders);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
