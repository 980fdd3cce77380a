/* chat_limits: see chat_limits.h. */
#include "chat_limits.h"

#include "config.h"
#include "guard.h"

#include <string.h>

static const struct config *cfg_of(struct chat_worker *cw)
{
    return cw->chat->cfg;
}

static struct guard *guard_of(struct chat_worker *cw)
{
    return cw->chat->guard;
}

static int gate_open(void *ctx, struct conn *c)
{
    struct chat_worker *cw = ctx;
    int64_t max = cfg_of(cw)->conns_per_addr;
    if (max <= 0)
        return 0;
    if (guard_count(guard_of(cw), GUARD_CONNS, c->src, +1, max) >= 0)
        return 0;
    chat_count_limited(cw, LIMITED_CONNS);
    return 429;
}

static void gate_close(void *ctx, struct conn *c)
{
    struct chat_worker *cw = ctx;
    guard_count(guard_of(cw), GUARD_CONNS, c->src, -1, 0);
}

void chat_limits_attach(struct chat_worker *cw)
{
    struct conn_gate g = {.open = gate_open, .close = gate_close, .ctx = cw};
    if (cfg_of(cw)->conns_per_addr <= 0)
        g.open = NULL, g.close = NULL;
    worker_set_gate(cw->w, &g);
}

/* n per minute: a bucket of n, refilled over a minute. */
static int per_minute(struct chat_worker *cw, enum guard_kind k, uint64_t src, int64_t n, int64_t *retry_ms)
{
    if (n <= 0)
        return 0;
    return guard_take(guard_of(cw), k, src, 0, util_mono_ms(), (double)n / 60.0, (double)n, retry_ms);
}

int chat_limit_signup(struct chat_worker *cw, struct conn *c, int64_t *retry_ms)
{
    int rc = per_minute(cw, GUARD_SIGNUP, c->src, cfg_of(cw)->signups_per_min, retry_ms);
    if (rc < 0)
        chat_count_limited(cw, LIMITED_SIGNUP);
    return rc;
}

int chat_limit_conv(struct chat_worker *cw, struct conn *c, int64_t *retry_ms)
{
    int rc = per_minute(cw, GUARD_CONV, c->src, cfg_of(cw)->convs_per_min, retry_ms);
    if (rc < 0)
        chat_count_limited(cw, LIMITED_CONV);
    return rc;
}

static uint64_t account_key(struct chat_worker *cw, const char *username)
{
    return guard_key(guard_of(cw), username, strlen(username));
}

int chat_login_blocked(struct chat_worker *cw, struct conn *c, const char *username, int64_t *retry_ms)
{
    if (cfg_of(cw)->login_fails <= 0)
        return 0;
    int64_t now = util_mono_ms(), a = 0, b = 0;
    int blocked = guard_blocked(guard_of(cw), GUARD_FAIL_ADDR, c->src, now, &a);
    if (username)
        blocked |= guard_blocked(guard_of(cw), GUARD_FAIL_ACCOUNT, account_key(cw, username), now, &b);
    *retry_ms = a > b ? a : b;
    if (blocked)
        chat_count_limited(cw, LIMITED_LOGIN);
    return blocked;
}

void chat_login_failed(struct chat_worker *cw, struct conn *c, const char *username)
{
    int64_t free_fails = cfg_of(cw)->login_fails;
    if (free_fails <= 0)
        return;
    int64_t now = util_mono_ms();
    guard_failed(guard_of(cw), GUARD_FAIL_ADDR, c->src, now, free_fails * LOGIN_ADDR_FACTOR, LOGIN_BACKOFF_MS,
                 LOGIN_BACKOFF_ADDR_MAX_MS, LOGIN_FORGET_MS);
    if (username)
        guard_failed(guard_of(cw), GUARD_FAIL_ACCOUNT, account_key(cw, username), now, free_fails,
                     LOGIN_BACKOFF_MS, LOGIN_BACKOFF_ACCOUNT_MAX_MS, LOGIN_FORGET_MS);
}

void chat_login_ok(struct chat_worker *cw, const char *username)
{
    if (cfg_of(cw)->login_fails > 0 && username)
        guard_forgive(guard_of(cw), GUARD_FAIL_ACCOUNT, account_key(cw, username));
}

int chat_read_admit(struct chat_worker *cw, int64_t user, int64_t conv, int64_t seq, int64_t *retry_ms)
{
    const struct config *cfg = cfg_of(cw);
    int64_t now = util_mono_ms();
    if (guard_take(guard_of(cw), GUARD_READ, (uint64_t)user, 0, now, (double)cfg->read_rate,
                   (double)cfg->read_burst, retry_ms) < 0) {
        chat_count_limited(cw, LIMITED_READ);
        return -1;
    }
    int64_t known = guard_get(guard_of(cw), GUARD_READ_POS, (uint64_t)user, (uint64_t)conv, now);
    return known >= 0 && seq <= known ? 1 : 0;
}

int chat_search_admit(struct chat_worker *cw, int64_t user, int64_t *retry_ms)
{
    const struct config *cfg = cfg_of(cw);
    if (guard_take(guard_of(cw), GUARD_READ, (uint64_t)user, 0, util_mono_ms(), (double)cfg->read_rate,
                   (double)cfg->read_burst, retry_ms) < 0) {
        chat_count_limited(cw, LIMITED_READ);
        return -1;
    }
    return 0;
}

int chat_read_moved(struct chat_worker *cw, int64_t user, int64_t conv, int64_t pos)
{
    int64_t was = guard_swap(guard_of(cw), GUARD_READ_POS, (uint64_t)user, (uint64_t)conv, util_mono_ms(),
                             READ_POS_TTL_MS, pos);
    return was != pos;
}

int chat_typing_due(struct chat_worker *cw, int64_t user, int64_t conv)
{
    return guard_once(guard_of(cw), GUARD_TYPING, (uint64_t)user, (uint64_t)conv, util_mono_ms(),
                      cfg_of(cw)->typing_ms);
}
