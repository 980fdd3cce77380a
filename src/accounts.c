/* accounts: see accounts.h. */
#include "accounts.h"

#include "chat_limits.h"
#include "config.h"
#include "guard.h"
#include "password.h"
#include "token.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static int alive(struct conn *c)
{
    return c && c->state == CONN_HTTP;
}

static void answer_error(struct conn *c, account_reply_fn reply, int status, const char *code, const char *msg,
                         int64_t retry_ms)
{
    struct account_answer a = {.status = status, .code = code, .message = msg, .retry_ms = retry_ms};
    reply(c, &a);
}

/* A store_rc as an HTTP error (or the writer's "unavailable"). */
static void answer_rc(struct conn *c, account_reply_fn reply, int rc, int unavailable)
{
    if (unavailable == JOB_BUSY)
        answer_error(c, reply, 503, "unavailable", "server busy; retry shortly", 1000);
    else if (unavailable || rc == STORE_UNAVAILABLE)
        answer_error(c, reply, 503, "unavailable", "temporarily unavailable; retry", 1000);
    else if (rc == STORE_CONFLICT)
        answer_error(c, reply, 409, "conflict", "already exists", 0);
    else if (rc == STORE_NOT_FOUND)
        answer_error(c, reply, 404, "not_found", "not found", 0);
    else
        answer_error(c, reply, 500, "internal", "internal error", 0);
}

/* ---- password work on the thread pool, never on the event loop ----
 * argon2id takes 64 MiB and ~90 ms: at most PARLEY_MAX_HASHES run at once in
 * the process. The others wait in the guard's queue (fair across source
 * addresses, bounded by PARLEY_HASH_QUEUE) for at most PARLEY_HASH_WAIT_MS,
 * then get 503 + Retry-After. */

#define PW_TICK_MS 250 /* a waiting hash checks its deadline and its connection this often */

struct pw_work {
    struct guard_wait gw;       /* first: the queue's event when its turn comes */
    uv_work_t req;
    uv_timer_t timer;           /* while waiting: the deadline */
    int timer_open;
    int refs;                   /* the flow, and the timer handle while open */
    int64_t deadline_ms;        /* loop time */
    struct chat_worker *cw;
    struct conn *c;             /* pinned */
    account_reply_fn reply;
    int verify;                 /* 0: hash, 1: verify against hash */
    char *password;             /* owned; wiped when freed */
    size_t len;
    char hash[PASSWORD_HASH_MAX]; /* in (verify) or out (hash) */
    int have_hash;
    int rc;
    char username[33];          /* signup: the new name; login: the name tried ("" when malformed) */
    char *display_name;         /* owned */
    json_t *user;               /* login: the user found (a reference) */
    void (*then)(struct pw_work *pw); /* on the worker, only if the connection still waits */
};

static struct pw_work *pw_new(struct chat_worker *cw, struct conn *c, const char *password, size_t len,
                              int verify, account_reply_fn reply)
{
    struct pw_work *pw = xcalloc(1, sizeof *pw);
    pw->cw = cw;
    pw->c = c;
    c->pending++;
    pw->refs = 1;
    pw->reply = reply;
    pw->verify = verify;
    pw->len = len;
    pw->password = xmalloc(len + 1);
    memcpy(pw->password, password, len);
    pw->password[len] = '\0';
    return pw;
}

static void pw_free(struct pw_work *pw)
{
    sodium_memzero(pw->password, pw->len); /* not left in freed memory */
    free(pw->password);
    free(pw->display_name);
    if (pw->user)
        json_decref(pw->user);
    conn_release(pw->c);
    free(pw);
}

static void pw_unref(struct pw_work *pw)
{
    if (--pw->refs == 0)
        pw_free(pw);
}

static void timer_closed(uv_handle_t *h)
{
    pw_unref(h->data);
}

static void close_timer(struct pw_work *pw)
{
    if (!pw->timer_open)
        return;
    pw->timer_open = 0;
    uv_close((uv_handle_t *)&pw->timer, timer_closed);
}

static void refuse_busy(struct pw_work *pw)
{
    if (alive(pw->c))
        answer_error(pw->c, pw->reply, 503, "unavailable", "too many logins at once; retry shortly", 1000);
}

static void pw_run(uv_work_t *req)
{
    struct pw_work *pw = req->data;
    if (!pw->verify)
        pw->rc = password_hash(pw->password, pw->len, pw->hash);
    else if (pw->have_hash)
        pw->rc = password_verify(pw->hash, pw->password, pw->len);
    else
        pw->rc = password_verify_dummy(pw->password, pw->len);
}

static void pw_after(uv_work_t *req, int status)
{
    struct pw_work *pw = req->data;
    guard_hash_leave(pw->cw->chat->guard); /* the slot goes to the next in turn */
    if (status < 0)
        pw->rc = -1;
    if (alive(pw->c))
        pw->then(pw);
    pw_unref(pw);
}

static void pw_hash(struct pw_work *pw)
{
    pw->req.data = pw;
    uv_queue_work(&pw->cw->w->loop, &pw->req, pw_run, pw_after);
}

/* Its turn came (GO: a slot is ours), or it was pushed out of a full queue. */
static void pw_turn(struct worker *w, struct event *ev)
{
    struct pw_work *pw = (struct pw_work *)ev;
    (void)w;
    close_timer(pw);
    if (pw->gw.outcome == GUARD_GO && alive(pw->c)) {
        pw_hash(pw);
        return;
    }
    if (pw->gw.outcome == GUARD_GO)
        guard_hash_leave(pw->cw->chat->guard); /* nobody waits for it any more */
    else
        refuse_busy(pw);
    pw_unref(pw);
}

/* The worker went away with the event unread (its loop and handles are gone). */
static void pw_dropped(struct event *ev)
{
    struct pw_work *pw = (struct pw_work *)ev;
    if (pw->gw.outcome == GUARD_GO)
        guard_hash_leave(pw->cw->chat->guard);
    pw_free(pw);
}

/* While waiting: past the deadline, or the client gone, leave the queue. */
static void pw_tick(uv_timer_t *t)
{
    struct pw_work *pw = t->data;
    if ((int64_t)uv_now(t->loop) < pw->deadline_ms && alive(pw->c))
        return;
    if (guard_hash_cancel(pw->cw->chat->guard, &pw->gw)) {
        refuse_busy(pw);
        close_timer(pw);
        pw_unref(pw);
    } else {
        close_timer(pw); /* its turn came already: pw_turn finishes it */
    }
}

static void pw_start(struct pw_work *pw, void (*then)(struct pw_work *pw))
{
    struct chat *ch = pw->cw->chat;
    pw->then = then;
    pw->gw.ev.run = pw_turn;
    pw->gw.ev.drop = pw_dropped;
    pw->gw.w = pw->cw->w;
    pw->gw.src = pw->c->src;
    switch (guard_hash_enter(ch->guard, &pw->gw)) {
    case GUARD_HASH_GO:
        pw_hash(pw);
        return;
    case GUARD_HASH_QUEUED: {
        uv_loop_t *loop = &pw->cw->w->loop;
        int64_t wait = ch->cfg->hash_wait_ms;
        pw->deadline_ms = (int64_t)uv_now(loop) + wait;
        uv_timer_init(loop, &pw->timer);
        pw->timer.data = pw;
        pw->timer_open = 1;
        pw->refs++;
        uv_timer_start(&pw->timer, pw_tick, (uint64_t)(wait < PW_TICK_MS ? wait : PW_TICK_MS), PW_TICK_MS);
        return;
    }
    default:
        refuse_busy(pw);
        pw_unref(pw);
        return;
    }
}

/* ---- the answers of the token jobs ---- */

static void answer_tokens(struct job *j, json_t *user, const char *token, int status)
{
    account_reply_fn reply = (account_reply_fn)j->arg;
    if (!alive(j->conn))
        return;
    if (j->rc != STORE_OK) {
        answer_rc(j->conn, reply, j->rc, j->unavailable);
        return;
    }
    struct account_answer a = {.status = status, .user = user, .refresh_token = token};
    reply(j->conn, &a);
}

static void signup_done(struct job *j)
{
    answer_tokens(j, j->u.signup.user, j->u.signup.tok.token, 201);
}

static void login_done(struct job *j)
{
    answer_tokens(j, j->u.login.user, j->u.login.tok.token, 200);
}

static void refresh_done(struct job *j)
{
    account_reply_fn reply = (account_reply_fn)j->arg;
    if (!alive(j->conn))
        return;
    if (j->rc == STORE_NOT_FOUND || j->rc == STORE_EXPIRED || (j->rc == STORE_OK && j->u.refresh.reused)) {
        answer_error(j->conn, reply, 401, "unauthorized",
                     j->u.refresh.reused ? "refresh token reused; its session was revoked"
                                         : "invalid or expired refresh token",
                     0);
        return;
    }
    answer_tokens(j, j->u.refresh.user, j->u.refresh.tok.token, 200);
}

static void logout_done(struct job *j)
{
    account_reply_fn reply = (account_reply_fn)j->arg;
    if (!alive(j->conn))
        return;
    if (j->rc != STORE_OK) {
        answer_rc(j->conn, reply, j->rc, j->unavailable);
        return;
    }
    struct account_answer a = {.status = 204};
    reply(j->conn, &a);
}

/* Token jobs answer the transport directly: arg carries its reply function
 * (they have no effect of the core's to run after the commit). */
static struct job *token_job(struct chat_worker *cw, enum job_kind kind, struct conn *c, job_done_fn done,
                             account_reply_fn reply)
{
    struct job *j = job_new(kind, cw->w, c, done, (void *)reply);
    return j;
}

/* ---- signup ---- */

static void signup_hashed(struct pw_work *pw)
{
    if (pw->rc < 0) {
        answer_error(pw->c, pw->reply, 500, "internal", "password hashing failed", 0);
        return;
    }
    struct job *j = token_job(pw->cw, JOB_SIGNUP, pw->c, signup_done, pw->reply);
    struct job_signup *s = &j->u.signup;
    memcpy(s->username, pw->username, sizeof s->username);
    s->display_name = pw->display_name;
    pw->display_name = NULL;
    s->pwhash = xstrdup(pw->hash);
    job_token_new(&s->tok, pw->cw->chat->cfg->refresh_ttl_s);
    chat_submit(pw->cw, j);
}

void accounts_signup(struct chat_worker *cw, struct conn *c, const char *username, const char *display_name,
                     const char *password, size_t password_len, account_reply_fn reply)
{
    int64_t retry;
    if (chat_limit_signup(cw, c, &retry) < 0) {
        answer_error(c, reply, 429, "rate_limited", "too many signups from your address; retry later", retry);
        return;
    }
    struct pw_work *pw = pw_new(cw, c, password, password_len, 0, reply);
    snprintf(pw->username, sizeof pw->username, "%s", username);
    if (display_name)
        pw->display_name = xstrdup(display_name);
    pw_start(pw, signup_hashed);
}

/* ---- login ---- */

static void login_checked(struct pw_work *pw)
{
    const char *name = pw->username[0] ? pw->username : NULL;
    if (pw->rc < 0 || !pw->user) {
        chat_login_failed(pw->cw, pw->c, name);
        answer_error(pw->c, pw->reply, 401, "unauthorized", "invalid username or password", 0);
        return;
    }
    chat_login_ok(pw->cw, name);
    struct job *j = token_job(pw->cw, JOB_LOGIN, pw->c, login_done, pw->reply);
    j->u.login.user_id = (int64_t)json_integer_value(json_object_get(pw->user, "id"));
    j->u.login.user = json_incref(pw->user);
    job_token_new(&j->u.login.tok, pw->cw->chat->cfg->refresh_ttl_s);
    chat_submit(pw->cw, j);
}

/* An unknown user still costs one full verification (against a dummy
 * hash), so timing does not tell whether the name exists. */
static void login_user_read(struct read *r)
{
    struct pw_work *pw = r->arg;
    if (!alive(pw->c)) {
        pw_unref(pw);
        return;
    }
    if (r->rc != STORE_OK && r->rc != STORE_NOT_FOUND) { /* the database failed: no verdict, no failure counted */
        answer_rc(pw->c, pw->reply, r->rc, 0);
        pw_unref(pw);
        return;
    }
    if (r->rc == STORE_OK && r->pwhash && strlen(r->pwhash) < sizeof pw->hash) {
        strcpy(pw->hash, r->pwhash);
        pw->have_hash = 1;
        pw->user = json_incref(r->result);
    }
    pw_start(pw, login_checked);
}

void accounts_login(struct chat_worker *cw, struct conn *c, const char *username, const char *password,
                    size_t password_len, account_reply_fn reply)
{
    int64_t retry;
    if (chat_login_blocked(cw, c, username, &retry)) {
        /* before any work: a guess while blocked costs nothing and tells nothing */
        answer_error(c, reply, 429, "rate_limited", "too many failed logins; retry later", retry);
        return;
    }
    struct pw_work *pw = pw_new(cw, c, password, password_len, 1, reply);
    if (!username) {
        pw_start(pw, login_checked);
        return;
    }
    snprintf(pw->username, sizeof pw->username, "%s", username);
    struct read *r = read_new(READ_USER_BY_NAME, cw->w, NULL, login_user_read, pw);
    r->str = xstrdup(username);
    chat_read_submit(cw, r);
}

/* ---- refresh and logout ---- */

void accounts_refresh(struct chat_worker *cw, struct conn *c, const char *refresh_token, account_reply_fn reply)
{
    struct job *j = token_job(cw, JOB_REFRESH, c, refresh_done, reply);
    token_hash(refresh_token, strlen(refresh_token), j->u.refresh.old_hash);
    job_token_new(&j->u.refresh.tok, cw->chat->cfg->refresh_ttl_s);
    chat_submit(cw, j);
}

void accounts_logout(struct chat_worker *cw, struct conn *c, const char *refresh_token, account_reply_fn reply)
{
    struct job *j = token_job(cw, JOB_LOGOUT, c, logout_done, reply);
    token_hash(refresh_token, strlen(refresh_token), j->u.logout.hash);
    chat_submit(cw, j);
}
