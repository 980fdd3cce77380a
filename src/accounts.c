/* accounts: see accounts.h. */
#include "accounts.h"

#include "config.h"
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
    if (unavailable || rc == STORE_UNAVAILABLE)
        answer_error(c, reply, 503, "unavailable", "temporarily unavailable; retry", 1000);
    else if (rc == STORE_CONFLICT)
        answer_error(c, reply, 409, "conflict", "already exists", 0);
    else if (rc == STORE_NOT_FOUND)
        answer_error(c, reply, 404, "not_found", "not found", 0);
    else
        answer_error(c, reply, 500, "internal", "internal error", 0);
}

/* ---- password work on the thread pool, never on the event loop ---- */

struct pw_work {
    uv_work_t req;
    struct chat_worker *cw;
    struct conn *c;             /* pinned */
    account_reply_fn reply;
    int verify;                 /* 0: hash, 1: verify against hash */
    char *password;             /* owned; wiped when freed */
    size_t len;
    char hash[PASSWORD_HASH_MAX]; /* in (verify) or out (hash) */
    int have_hash;
    int rc;
    char username[33];
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
    atomic_fetch_sub(&pw->cw->chat->hashes_running, 1);
    if (status < 0)
        pw->rc = -1;
    if (alive(pw->c))
        pw->then(pw);
    pw_free(pw);
}

static void pw_start(struct pw_work *pw, void (*then)(struct pw_work *pw))
{
    struct chat *ch = pw->cw->chat;
    /* argon2id takes 64 MiB and ~90 ms: past the cap, refuse rather than queue */
    if (atomic_fetch_add(&ch->hashes_running, 1) >= ch->cfg->max_hashes) {
        atomic_fetch_sub(&ch->hashes_running, 1);
        answer_error(pw->c, pw->reply, 503, "unavailable", "too many logins at once; retry shortly", 1000);
        pw_free(pw);
        return;
    }
    pw->then = then;
    pw->req.data = pw;
    uv_queue_work(&pw->cw->w->loop, &pw->req, pw_run, pw_after);
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
    struct pw_work *pw = pw_new(cw, c, password, password_len, 0, reply);
    snprintf(pw->username, sizeof pw->username, "%s", username);
    if (display_name)
        pw->display_name = xstrdup(display_name);
    pw_start(pw, signup_hashed);
}

/* ---- login ---- */

static void login_checked(struct pw_work *pw)
{
    if (pw->rc < 0 || !pw->user) {
        answer_error(pw->c, pw->reply, 401, "unauthorized", "invalid username or password", 0);
        return;
    }
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
        pw_free(pw);
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
    struct pw_work *pw = pw_new(cw, c, password, password_len, 1, reply);
    if (!username) {
        pw_start(pw, login_checked);
        return;
    }
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
