/* util.c: clocks, allocation, the latency histogram, the frame scanner, /proc readings. */
#include "load.h"

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void die(const char *fmt, ...)
{
    va_list ap;
    fputs("\nparley-load: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2); /* atexit (main.c) stops a server we started */
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory");
    return p;
}

void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (!p)
        die("out of memory");
    return p;
}

char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        die("out of memory");
    return d;
}

/* ------------------------------------------------------------------ histogram */

#define RLX memory_order_relaxed
#define HMAX_NS (1ull << 40)

static inline uint32_t hidx(uint64_t v)
{
    if (v < 128)
        return (uint32_t)v;
    if (v > HMAX_NS)
        v = HMAX_NS;
    int e = 63 - __builtin_clzll(v); /* 7..40 */
    uint64_t mant = v >> (e - 6);     /* 64..127 */
    return 128u + (uint32_t)(e - 7) * 64u + (uint32_t)(mant - 64);
}

static double hval(uint32_t i)
{
    if (i < 128)
        return i;
    int e = 7 + (int)((i - 128) / 64);
    double m = 64 + (i - 128) % 64;
    return ldexp(m + 0.5, e - 6); /* the middle of the bucket */
}

void hist_add(struct hist *h, uint64_t ns)
{
    uint32_t i = hidx(ns);
    atomic_store_explicit(&h->b[i], atomic_load_explicit(&h->b[i], RLX) + 1, RLX);
    atomic_store_explicit(&h->n, atomic_load_explicit(&h->n, RLX) + 1, RLX);
    if (ns > atomic_load_explicit(&h->max, RLX))
        atomic_store_explicit(&h->max, ns, RLX);
}

void hist_merge(struct hist *a, const struct hist *b)
{
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        uint64_t x = atomic_load_explicit(&b->b[i], RLX);
        if (x)
            atomic_store_explicit(&a->b[i], atomic_load_explicit(&a->b[i], RLX) + x, RLX);
    }
    atomic_store_explicit(&a->n, atomic_load_explicit(&a->n, RLX) + atomic_load_explicit(&b->n, RLX), RLX);
    uint64_t m = atomic_load_explicit(&b->max, RLX);
    if (m > atomic_load_explicit(&a->max, RLX))
        atomic_store_explicit(&a->max, m, RLX);
}

uint64_t hist_count(const struct hist *h) { return atomic_load_explicit(&h->n, RLX); }

double hist_quantile(const struct hist *h, const struct hist *base, double q)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++)
        total += atomic_load_explicit(&h->b[i], RLX) - (base ? atomic_load_explicit(&base->b[i], RLX) : 0);
    if (!total)
        return -1;
    uint64_t rank = (uint64_t)ceil(q * (double)total);
    if (rank < 1)
        rank = 1;
    uint64_t cum = 0;
    double mx = (double)atomic_load_explicit(&h->max, RLX);
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->b[i], RLX) - (base ? atomic_load_explicit(&base->b[i], RLX) : 0);
        if (cum >= rank) {
            double v = hval(i);
            return !base && v > mx ? mx : v;
        }
    }
    return mx;
}

/* ------------------------------------------------------------------ frame scanner */

int span_eq(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* p at the opening quote; returns the position after the closing quote, or NULL */
static const char *skip_string(const char *p, const char *e)
{
    p++;
    while (p < e) {
        const char *q = memchr(p, '"', (size_t)(e - p));
        if (!q)
            return NULL;
        /* escaped if preceded by an odd run of backslashes (within this string: the byte
         * before p is the opening quote or an escaped quote) */
        const char *b = q;
        while (b > p && b[-1] == '\\')
            b--;
        if (((q - b) & 1) == 0)
            return q + 1;
        p = q + 1;
    }
    return NULL;
}

static const char *skip_nested(const char *p, const char *e)
{
    int depth = 0;
    while (p < e) {
        char c = *p;
        if (c == '"') {
            p = skip_string(p, e);
            if (!p)
                return NULL;
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (--depth == 0)
                return p + 1;
        }
        p++;
    }
    return NULL;
}

/* "lit" at *p: advance past it */
static int eat(const char **p, const char *e, const char *lit, size_t n)
{
    if ((size_t)(e - *p) < n || memcmp(*p, lit, n) != 0)
        return 0;
    *p += n;
    return 1;
}

static int eat_int(const char **p, const char *e, int64_t *v)
{
    const char *s = *p;
    int64_t x = 0;
    while (s < e && *s >= '0' && *s <= '9')
        x = x * 10 + (*s++ - '0');
    if (s == *p)
        return 0;
    *v = x;
    *p = s;
    return 1;
}

/* The msg frame as parleyd and the baselines encode it (keys in this order, no blanks):
 * {"op":"msg","conv":C,"seq":S,"from":U,"id":"...","body":"...","ts":T}. Only the body's
 * start is needed (the send time); the rest of it is not scanned. 0: not this shape. */
static int fast_msg(const char *p, size_t n, struct frame_fields *f)
{
    static const char pre[] = "{\"op\":\"msg\",\"conv\":";
    const char *e = p + n, *s = p;
    int64_t from;
    if (n < 40 || p[n - 1] != '}' || !eat(&s, e, pre, sizeof pre - 1) || !eat_int(&s, e, &f->conv) ||
        !eat(&s, e, ",\"seq\":", 7) || !eat_int(&s, e, &f->seq) || !eat(&s, e, ",\"from\":", 8) ||
        !eat_int(&s, e, &from) || !eat(&s, e, ",\"id\":\"", 7))
        return 0;
    const char *q = memchr(s, '"', (size_t)(e - s));
    if (!q || memchr(s, '\\', (size_t)(q - s)))
        return 0;
    f->id = (struct span){s, (uint32_t)(q - s)};
    s = q + 1;
    if (!eat(&s, e, ",\"body\":\"", 9))
        return 0;
    f->body = (struct span){s, (uint32_t)(e - s)};
    f->op = (struct span){p + 7, 3};
    f->user = from;
    f->has_conv = f->has_seq = 1;
    return 1;
}

int scan_frame(const char *p, size_t n, struct frame_fields *f)
{
    memset(f, 0, sizeof *f);
    if (fast_msg(p, n, f))
        return 0;
    memset(f, 0, sizeof *f);
    const char *e = p + n;
    p = skip_ws(p, e);
    if (p >= e || *p != '{')
        return -1;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}')
        return 0;
    while (p < e) {
        if (*p != '"')
            return -1;
        const char *k = p + 1;
        const char *kend = skip_string(p, e);
        if (!kend)
            return -1;
        size_t klen = (size_t)(kend - 1 - k);
        p = skip_ws(kend, e);
        if (p >= e || *p != ':')
            return -1;
        p = skip_ws(p + 1, e);
        if (p >= e)
            return -1;
        if (*p == '"') {
            const char *vend = skip_string(p, e);
            if (!vend)
                return -1;
            struct span s = {p + 1, (uint32_t)(vend - 1 - (p + 1))};
            if (klen == 2 && !memcmp(k, "op", 2))
                f->op = s;
            else if (klen == 2 && !memcmp(k, "id", 2))
                f->id = s;
            else if (klen == 4 && !memcmp(k, "body", 4))
                f->body = s;
            else if (klen == 4 && !memcmp(k, "code", 4))
                f->code = s;
            else if (klen == 7 && !memcmp(k, "message", 7))
                f->message = s;
            p = vend;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            int neg = *p == '-';
            if (neg)
                p++;
            int64_t v = 0;
            while (p < e && *p >= '0' && *p <= '9')
                v = v * 10 + (*p++ - '0');
            while (p < e && (*p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-' ||
                             (*p >= '0' && *p <= '9')))
                p++;
            if (neg)
                v = -v;
            if (klen == 4 && !memcmp(k, "conv", 4)) {
                f->conv = v;
                f->has_conv = 1;
            } else if (klen == 3 && !memcmp(k, "seq", 3)) {
                f->seq = v;
                f->has_seq = 1;
            } else if (klen == 4 && !memcmp(k, "user", 4)) {
                f->user = v;
            } else if (klen == 3 && !memcmp(k, "mod", 3)) {
                f->mod = v;
                f->has_mod = 1;
            }
        } else if (*p == '{' || *p == '[') {
            p = skip_nested(p, e);
            if (!p)
                return -1;
        } else {
            while (p < e && isalpha((unsigned char)*p))
                p++;
        }
        p = skip_ws(p, e);
        if (p >= e)
            return -1;
        if (*p == '}')
            return 0;
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1, e);
    }
    return -1;
}

/* ------------------------------------------------------------------ /proc */

static int read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

/* utime + stime (fields 14, 15), with cutime + cstime (16, 17) when reaped children count */
static double stat_cpu_s(pid_t pid, int reaped)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (pid <= 0 || read_file(path, buf, sizeof buf) < 0)
        return -1;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* after ") ": state(3) ppid ... utime is field 14, stime 15 (1-based) */
    unsigned long long v[4] = {0};
    int field = 2;
    for (char *s = p + 1; *s && field < 17;) {
        while (*s == ' ')
            s++;
        field++;
        if (field >= 14 && field <= 17)
            v[field - 14] = strtoull(s, NULL, 10);
        while (*s && *s != ' ')
            s++;
    }
    return (double)(v[0] + v[1] + (reaped ? v[2] + v[3] : 0)) / (double)sysconf(_SC_CLK_TCK);
}

double proc_cpu_s(pid_t pid) { return stat_cpu_s(pid, 0); }

/* The process, its reaped children and its live descendants (the children files of its
 * threads, 4 levels at most). A child that exits between two readings moves from its own
 * line to its parent's cutime/cstime, so a difference of two readings stays right. */
static double tree_cpu(pid_t pid, int depth)
{
    double cpu = stat_cpu_s(pid, 1);
    if (cpu < 0 || depth >= 4)
        return cpu;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return cpu;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char cpath[300], buf[8192];
        snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", (int)pid, de->d_name);
        if (read_file(cpath, buf, sizeof buf) <= 0)
            continue;
        for (char *s = buf, *end; *s; s = end) {
            long c = strtol(s, &end, 10);
            if (end == s)
                break;
            double x = c > 0 ? tree_cpu((pid_t)c, depth + 1) : -1;
            if (x > 0)
                cpu += x;
        }
    }
    closedir(d);
    return cpu;
}

double proc_tree_cpu_s(pid_t pid) { return tree_cpu(pid, 0); }

static long status_field(pid_t pid, const char *key)
{
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (pid <= 0 || read_file(path, buf, sizeof buf) < 0)
        return -1;
    char *p = strstr(buf, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

long proc_rss_kib(pid_t pid) { return status_field(pid, "VmRSS:"); }
long proc_rss_anon_kib(pid_t pid) { return status_field(pid, "RssAnon:"); }

long proc_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

long proc_nofile_limit(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    if (pid <= 0 || read_file(path, buf, sizeof buf) < 0)
        return -1;
    char *p = strstr(buf, "Max open files");
    if (!p)
        return -1;
    p += strlen("Max open files");
    while (*p == ' ')
        p++;
    if (!strncmp(p, "unlimited", 9))
        return -1;
    return strtol(p, NULL, 10);
}

double machine_busy_s(void)
{
    char buf[512];
    if (read_file("/proc/stat", buf, sizeof buf) < 0)
        return -1;
    unsigned long long v[8] = {0};
    if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7]) < 7)
        return -1;
    /* user nice system idle iowait irq softirq steal: all but idle and iowait */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

int word_of(uint32_t w, char *out)
{
    static const char syl[16][3] = {"ba", "ke", "mi", "no", "ru", "sa", "te", "vi",
                                    "lo", "da", "fe", "gu", "ha", "jo", "ku", "pe"};
    char d[12];
    int nd = 0;
    for (uint64_t v = (uint64_t)w + 16; v; v /= 16)
        d[nd++] = (char)(v % 16);
    int n = 0;
    while (nd--) {
        out[n++] = syl[(int)d[nd]][0];
        out[n++] = syl[(int)d[nd]][1];
    }
    return n;
}
