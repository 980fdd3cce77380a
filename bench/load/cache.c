/* cache.c: the setup cache (--setup-cache DIR, main.c decides what is looked up and stored).
 *
 * Signing up thousands of users costs a server one password hash each (parleyd: argon2id,
 * about 90 ms and 64 MiB), which dominates a benchmark run's wall time and is not what it
 * measures. An entry keeps a stopped server's data directory together with what the run needs
 * from the setup (user ids, access tokens, conversation ids), so a later run copies the
 * directory into its fresh temporary one and skips the HTTP setup. Entries are written to a
 * temporary sibling and renamed into place, so a reader never sees half an entry. */
#include "load.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_FORMAT 1

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void remove_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int make_dirs(const char *path)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    return mkdir(p, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

static int copy_file(const char *src, const char *dst, mode_t mode, char *err, size_t errlen)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        snprintf(err, errlen, "open %s: %s", src, strerror(errno));
        return -1;
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 0777);
    if (out < 0) {
        snprintf(err, errlen, "create %s: %s", dst, strerror(errno));
        close(in);
        return -1;
    }
    static _Thread_local char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "read %s: %s", src, strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                snprintf(err, errlen, "write %s: %s", dst, strerror(errno));
                rc = -1;
                break;
            }
            off += w;
        }
        if (rc)
            break;
    }
    close(in);
    if (close(out) < 0 && !rc) {
        snprintf(err, errlen, "close %s: %s", dst, strerror(errno));
        rc = -1;
    }
    return rc;
}

int copy_tree(const char *src, const char *dst, char *err, size_t errlen)
{
    if (make_dirs(dst) < 0) {
        snprintf(err, errlen, "mkdir %s: %s", dst, strerror(errno));
        return -1;
    }
    DIR *d = opendir(src);
    if (!d) {
        snprintf(err, errlen, "opendir %s: %s", src, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char s[PATH_MAX], t[PATH_MAX];
        if (snprintf(s, sizeof s, "%s/%s", src, de->d_name) >= (int)sizeof s ||
            snprintf(t, sizeof t, "%s/%s", dst, de->d_name) >= (int)sizeof t) {
            snprintf(err, errlen, "path too long under %s", src);
            rc = -1;
            break;
        }
        struct stat st;
        if (lstat(s, &st) < 0) {
            snprintf(err, errlen, "stat %s: %s", s, strerror(errno));
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            rc = copy_tree(s, t, err, errlen);
        } else if (S_ISREG(st.st_mode)) {
            rc = copy_file(s, t, st.st_mode, err, errlen);
        } /* sockets, fifos, links: nothing a stopped server needs */
    }
    closedir(d);
    return rc;
}

void cache_entry_free(struct cache_entry *ce)
{
    for (uint32_t i = 0; ce->users && i < ce->nusers; i++)
        free(ce->users[i].token);
    free(ce->users);
    free(ce->convs);
    memset(ce, 0, sizeof *ce);
}

/* Tokens are used up to the end of a run: an entry counts as expired a margin before its
 * tokens do (a day, or half the lifetime if that is shorter). */
static int64_t ttl_margin(int64_t ttl) { return ttl / 2 < 86400 ? ttl / 2 : 86400; }

int cache_read(const char *dir, const char *key, struct cache_entry *ce, char *why, size_t whylen, int64_t ttl_s)
{
    memset(ce, 0, sizeof *ce);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/setup.json", dir);
    struct stat st;
    char data[PATH_MAX];
    snprintf(data, sizeof data, "%s/data", dir);
    if (stat(path, &st) < 0 || stat(data, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(why, whylen, "no entry");
        return -1;
    }
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) {
        snprintf(why, whylen, "%s: %s", path, je.text);
        return -1;
    }
    json_t *users = json_object_get(j, "users"), *convs = json_object_get(j, "conversations");
    json_t *issued = json_object_get(j, "tokens_issued"), *ttl = json_object_get(j, "access_ttl_s");
    const char *k = json_string_value(json_object_get(j, "key"));
    int rc = -1;
    if (json_integer_value(json_object_get(j, "format")) != CACHE_FORMAT || !k || !json_is_array(users) ||
        !json_is_array(convs) || !json_is_integer(issued) || !json_is_integer(ttl)) {
        snprintf(why, whylen, "%s: not a setup cache entry of format %d", path, CACHE_FORMAT);
        goto out;
    }
    if (strcmp(k, key)) {
        snprintf(why, whylen, "%s: made for key %s", path, k);
        goto out;
    }
    ce->tokens_issued = json_integer_value(issued);
    /* the shorter of the lifetime the tokens were issued with and the one the servers get now */
    ce->ttl_s = json_integer_value(ttl) < ttl_s ? json_integer_value(ttl) : ttl_s;
    int64_t age = (int64_t)time(NULL) - ce->tokens_issued;
    if (age < 0 || age + ttl_margin(ce->ttl_s) >= ce->ttl_s) {
        snprintf(why, whylen, "expired: its tokens are %lld s old, they live %lld s", (long long)age, (long long)ce->ttl_s);
        goto out;
    }
    ce->nusers = (uint32_t)json_array_size(users);
    ce->users = xcalloc(ce->nusers, sizeof *ce->users);
    for (uint32_t i = 0; i < ce->nusers; i++) {
        json_t *u = json_array_get(users, i);
        json_t *id = json_array_get(u, 0), *tok = json_array_get(u, 1);
        if (!json_is_integer(id) || !json_is_string(tok)) {
            snprintf(why, whylen, "%s: user %u malformed", path, i);
            goto out;
        }
        ce->users[i].id = json_integer_value(id);
        ce->users[i].token = xstrdup(json_string_value(tok));
    }
    ce->nconvs = (uint32_t)json_array_size(convs);
    ce->convs = xcalloc(ce->nconvs ? ce->nconvs : 1, sizeof *ce->convs);
    for (uint32_t i = 0; i < ce->nconvs; i++) {
        json_t *c = json_array_get(convs, i);
        if (!json_is_integer(c)) {
            snprintf(why, whylen, "%s: conversation %u malformed", path, i);
            goto out;
        }
        ce->convs[i] = json_integer_value(c);
    }
    rc = 0;
out:
    json_decref(j);
    if (rc)
        cache_entry_free(ce);
    return rc;
}

int cache_write(const char *dir, const char *key, const char *data_dir, const struct cache_entry *ce, char *err, size_t errlen)
{
    char tmp[PATH_MAX], path[PATH_MAX + 16];
    if (make_dirs(dir) < 0) { /* the parent (and dir itself, replaced below) */
        snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", dir);
    if (!mkdtemp(tmp)) {
        snprintf(err, errlen, "mkdtemp %s: %s", tmp, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/data", tmp);
    if (copy_tree(data_dir, path, err, errlen) < 0)
        goto fail;
    json_t *users = json_array(), *convs = json_array();
    for (uint32_t i = 0; i < ce->nusers; i++)
        json_array_append_new(users, json_pack("[I,s]", (json_int_t)ce->users[i].id, ce->users[i].token));
    for (uint32_t i = 0; i < ce->nconvs; i++)
        json_array_append_new(convs, json_integer((json_int_t)ce->convs[i]));
    json_t *j = json_pack("{s:i,s:s,s:I,s:I,s:o,s:o}", "format", CACHE_FORMAT, "key", key, "tokens_issued",
                          (json_int_t)ce->tokens_issued, "access_ttl_s", (json_int_t)ce->ttl_s, "users", users,
                          "conversations", convs);
    snprintf(path, sizeof path, "%s/setup.json", tmp);
    int w = json_dump_file(j, path, JSON_COMPACT);
    json_decref(j);
    if (w < 0) {
        snprintf(err, errlen, "write %s failed", path);
        goto fail;
    }
    /* replace: the old entry goes first (rename does not replace a non-empty directory) */
    remove_tree(dir);
    if (rename(tmp, dir) < 0) {
        snprintf(err, errlen, "rename %s to %s: %s", tmp, dir, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    remove_tree(tmp);
    return -1;
}
