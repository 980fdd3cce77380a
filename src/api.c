/* api: see api.h. Routes, then one small function per route. Validation
 * happens here; every database write goes to the writer as a job, every read
 * goes to the worker's read-only store. */
#include "api.h"

#include "auth.h"
#include "hub.h"
#include "log.h"
#include "password.h"
#include "presence.h"
#include "proto.h"
#include "server.h"
#include "store.h"
#include "token.h"
#include "writer.h"
#include "ws.h"

#include <ctype.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200

static const struct config *cfg_of(struct conn *c)
{
    return c->w->srv->cfg;
}

static int alive(struct conn *c)
{
    return c && c->state == CONN_HTTP;
}

/* Answers a store_rc (or the writer's "unavailable") as an HTTP error. */
static void respond_rc(struct conn *c, int rc, int unavailable)
{
    if (unavailable) {
        http_respond_error(c, 503, "unavailable", "server is shutting down");
        return;
    }
    switch (rc) {
    case STORE_NOT_FOUND: http_respond_error(c, 404, "not_found", "not found"); break;
    case STORE_CONFLICT: http_respond_error(c, 409, "conflict", "already exists"); break;
    case STORE_FORBIDDEN: http_respond_error(c, 403, "forbidden", "not allowed for your role"); break;
    case STORE_BAD_REQUEST: http_respond_error(c, 400, "bad_request", "not allowed on this conversation"); break;
    default: http_respond_error(c, 500, "internal", "internal error"); break;
    }
}

/* The answer to a read from the worker's store: 200 with obj (stolen),
 * wrapped as {key: obj} when key is given, or the error of rc. */
static void respond_read(struct conn *c, int rc, const char *key, json_t *obj)
{
    if (rc != STORE_OK)
        respond_rc(c, rc, 0);
    else
        http_respond_json(c, 200, key ? json_pack("{s:o}", key, obj) : obj);
}

/* ---- request helpers ---- */

/* The body as a JSON object, or NULL after answering 400. */
static json_t *body_object(struct conn *c, struct http_req *r)
{
    json_error_t e;
    json_t *o = json_loadb(r->body.data, r->body.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        http_respond_error(c, 400, "bad_request", "body must be a JSON object");
        return NULL;
    }
    return o;
}

/* The caller's user id, or 0 after answering 401. */
static int64_t require_user(struct conn *c, struct http_req *r)
{
    struct jwt_claims cl;
    int rc = auth_bearer(cfg_of(c), r->authorization, &cl);
    if (rc != JWT_OK) {
        http_respond_error(c, 401, "unauthorized",
                           rc == AUTH_MISSING ? "missing bearer token" : jwt_strerror(rc));
        return 0;
    }
    return cl.sub;
}

/* limit=N: default 50, clamped to 200, below 1 (or not a number) is -1. */
static int parse_limit(const char *query)
{
    char v[32];
    int64_t n;
    int rc = http_query_get(query, "limit", v, sizeof v);
    if (rc == HTTP_QUERY_ABSENT)
        return LIMIT_DEFAULT;
    if (rc < 0 || util_parse_i64(v, &n) < 0 || n < 1)
        return -1;
    return n > LIMIT_MAX ? LIMIT_MAX : (int)n;
}


/* Folds ASCII letters to lower case and checks 3-32 of [a-z0-9_.-]. */
static int fold_username(const char *in, char out[33])
{
    size_t n = strlen(in);
    if (n < 3 || n > 32)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)tolower((unsigned char)in[i]);
        if (!(isdigit((unsigned char)ch) || (ch >= 'a' && ch <= 'z') || ch == '_' || ch == '.' || ch == '-'))
            return -1;
        out[i] = ch;
    }
    out[n] = '\0';
    return 0;
}

/* A string member without embedded NUL bytes (those would cut it short
 * in C string functions), or NULL. */
static const char *plain_string(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

/* ---- accounts ---- */

/* Password hashing runs on libuv's thread pool, never on the event loop. */
struct pw_work {
    uv_work_t req;
    struct conn *c;
    int verify;                 /* 0: hash, 1: verify against hash */
    char *password;
    size_t len;
    char hash[PASSWORD_HASH_MAX]; /* in (verify) or out (hash) */
    int have_hash;
    int rc;
    char username[33];
    char *display_name;
    json_t *user;               /* login: the user found */
    /* runs on the worker after the hash, only if the connection is still open */
    void (*then)(struct conn *c, struct pw_work *pw);
};

/* A work item holding a copy of the password (wiped when freed). */
static struct pw_work *pw_new(json_t *password, int verify)
{
    struct pw_work *pw = xcalloc(1, sizeof *pw);
    pw->verify = verify;
    pw->len = json_string_length(password);
    pw->password = xmalloc(pw->len + 1);
    memcpy(pw->password, json_string_value(password), pw->len + 1);
    return pw;
}

static void pw_free(struct pw_work *pw)
{
    if (pw->password) {
        sodium_memzero(pw->password, pw->len); /* not left in freed memory */
        free(pw->password);
    }
    free(pw->display_name);
    if (pw->user)
        json_decref(pw->user);
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
    struct conn *c = pw->c;
    atomic_fetch_sub(&c->w->srv->hashes_running, 1);
    if (status < 0)
        pw->rc = -1;
    if (alive(c))
        pw->then(c, pw);
    pw_free(pw);
    conn_release(c);
}

static int pw_start(struct conn *c, struct pw_work *pw, void (*then)(struct conn *, struct pw_work *))
{
    struct worker *w = c->w;
    /* argon2id takes 64 MiB and ~90 ms: past the cap, refuse rather than queue */
    if (atomic_fetch_add(&w->srv->hashes_running, 1) >= cfg_of(c)->max_hashes) {
        atomic_fetch_sub(&w->srv->hashes_running, 1);
        http_respond_retry(c, 503, "unavailable", "too many logins at once; retry shortly", 1000);
        pw_free(pw);
        return -1;
    }
    c->pending++;
    pw->c = c;
    pw->then = then;
    pw->req.data = pw;
    uv_queue_work(&w->loop, &pw->req, pw_run, pw_after);
    return 0;
}

/* Both signup and login end with a new refresh token family. */
static int run_issue_tokens(struct store *st, struct job *j)
{
    return store_refresh_insert(st, j->user, j->str2, j->str3, j->ts, util_now_ms());
}

static void new_refresh(struct job *j, const struct config *cfg)
{
    char tok[TOKEN_STR_LEN], fam[TOKEN_STR_LEN], hash[TOKEN_HASH_LEN];
    token_new(tok);
    token_new(fam);
    token_hash(tok, strlen(tok), hash);
    j->str = xstrdup(tok);  /* the token itself, only ever sent to the client */
    j->str2 = xstrdup(fam);
    j->str3 = xstrdup(hash);
    j->ts = util_now_ms() + cfg->refresh_ttl_s * 1000;
}

static void done_tokens(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc != STORE_OK) {
        respond_rc(c, j->rc, j->flag == -1);
        return;
    }
    http_respond_json(c, j->op == 201 ? 201 : 200, auth_token_answer(cfg_of(c), j->result, j->str));
}

static int run_signup(struct store *st, struct job *j)
{
    json_t *user = NULL;
    int rc = store_user_create(st, j->body, j->str2 ? j->str2 : j->body, j->str3, util_now_ms(), &user);
    if (rc != STORE_OK)
        return rc;
    j->result = user;
    j->user = json_integer_value(json_object_get(user, "id"));
    free(j->str2);
    free(j->str3);
    new_refresh(j, j->origin->srv->cfg);
    return run_issue_tokens(st, j);
}

static void signup_hashed(struct conn *c, struct pw_work *pw)
{
    if (pw->rc < 0) {
        http_respond_error(c, 500, "internal", "password hashing failed");
        return;
    }
    struct job *j = job_new(c->w, c, run_signup, done_tokens);
    j->body = xstrdup(pw->username);
    j->str2 = pw->display_name ? xstrdup(pw->display_name) : NULL;
    j->str3 = xstrdup(pw->hash);
    j->op = 201;
    writer_submit(c->w->srv->writer, j);
}

static void api_signup(struct conn *c, struct http_req *r)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    const char *u = plain_string(o, "username");
    json_t *pv = json_object_get(o, "password");
    json_t *dv = json_object_get(o, "display_name");
    char folded[33];
    const char *err = NULL;
    if (!u || fold_username(u, folded) < 0)
        err = "username must be 3-32 characters of a-z, 0-9, '_', '.', '-'";
    else if (!json_is_string(pv) || json_string_length(pv) < 8 || json_string_length(pv) > 256)
        err = "password must be 8-256 bytes";
    else if (dv && !json_is_null(dv) &&
             (!json_is_string(dv) || strlen(json_string_value(dv)) != json_string_length(dv) ||
              util_utf8_chars(json_string_value(dv)) < 1 || util_utf8_chars(json_string_value(dv)) > 64))
        err = "display_name must be 1-64 characters";
    if (err) {
        http_respond_error(c, 400, "bad_request", err);
        json_decref(o);
        return;
    }
    struct pw_work *pw = pw_new(pv, 0);
    strcpy(pw->username, folded);
    if (json_is_string(dv))
        pw->display_name = xstrdup(json_string_value(dv));
    json_decref(o);
    pw_start(c, pw, signup_hashed);
}

static void login_checked(struct conn *c, struct pw_work *pw)
{
    if (pw->rc < 0 || !pw->user) {
        http_respond_error(c, 401, "unauthorized", "invalid username or password");
        return;
    }
    struct job *j = job_new(c->w, c, run_issue_tokens, done_tokens);
    j->user = json_integer_value(json_object_get(pw->user, "id"));
    j->result = json_incref(pw->user);
    new_refresh(j, cfg_of(c));
    writer_submit(c->w->srv->writer, j);
}

static void api_login(struct conn *c, struct http_req *r)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    const char *u = plain_string(o, "username");
    json_t *pv = json_object_get(o, "password");
    if (!u || !json_is_string(pv)) {
        http_respond_error(c, 400, "bad_request", "username and password are required");
        json_decref(o);
        return;
    }
    struct pw_work *pw = pw_new(pv, 1);
    char *hash = NULL;
    /* An unknown user still costs one full verification (against a dummy
     * hash), so timing does not tell whether the name exists. */
    if (fold_username(u, pw->username) == 0 &&
        store_user_by_name(c->w->reader, pw->username, &pw->user, &hash) == STORE_OK && hash &&
        strlen(hash) < sizeof pw->hash) {
        strcpy(pw->hash, hash);
        pw->have_hash = 1;
    }
    free(hash);
    json_decref(o);
    pw_start(c, pw, login_checked);
}

static int run_refresh(struct store *st, struct job *j)
{
    int64_t uid;
    int rc = store_refresh_rotate(st, j->str2, j->str3, j->ts, util_now_ms(), &uid);
    if (rc == STORE_REUSED) {
        /* The family's revocation must commit: report reuse without
         * failing the job (a failing job's savepoint is rolled back). */
        j->dup = 1;
        return STORE_OK;
    }
    if (rc != STORE_OK)
        return rc;
    j->user = uid;
    return store_user_by_id(st, uid, &j->result);
}

static void done_refresh(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc == STORE_NOT_FOUND || j->rc == STORE_EXPIRED || (j->rc == STORE_OK && j->dup)) {
        http_respond_error(c, 401, "unauthorized",
                           j->dup ? "refresh token reused; its session was revoked"
                                                 : "invalid or expired refresh token");
        return;
    }
    done_tokens(j);
}

/* The refresh token of a refresh or logout body, or NULL after a 400. */
static json_t *refresh_body(struct conn *c, struct http_req *r, const char **tok)
{
    json_t *o = body_object(c, r);
    if (!o)
        return NULL;
    *tok = plain_string(o, "refresh_token");
    if (!*tok || !**tok || strlen(*tok) > 512) {
        http_respond_error(c, 400, "bad_request", "refresh_token is required");
        json_decref(o);
        return NULL;
    }
    return o;
}

static void api_refresh(struct conn *c, struct http_req *r)
{
    const char *tok;
    json_t *o = refresh_body(c, r, &tok);
    if (!o)
        return;
    struct job *j = job_new(c->w, c, run_refresh, done_refresh);
    char old_hash[TOKEN_HASH_LEN];
    token_hash(tok, strlen(tok), old_hash);
    json_decref(o);
    new_refresh(j, cfg_of(c)); /* str = new token, str3 = its hash */
    free(j->str2);
    j->str2 = xstrdup(old_hash);
    writer_submit(c->w->srv->writer, j);
}

static int run_logout(struct store *st, struct job *j)
{
    return store_refresh_revoke(st, j->str, util_now_ms());
}

static void done_empty(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc != STORE_OK)
        respond_rc(c, j->rc, j->flag == -1);
    else
        http_respond_json(c, 204, NULL);
}

static void api_logout(struct conn *c, struct http_req *r)
{
    const char *tok;
    json_t *o = refresh_body(c, r, &tok);
    if (!o)
        return;
    struct job *j = job_new(c->w, c, run_logout, done_empty);
    char hash[TOKEN_HASH_LEN];
    token_hash(tok, strlen(tok), hash);
    j->str = xstrdup(hash);
    json_decref(o);
    writer_submit(c->w->srv->writer, j);
}

static void api_me(struct conn *c, int64_t uid)
{
    json_t *user;
    if (store_user_by_id(c->w->reader, uid, &user) != STORE_OK) {
        http_respond_error(c, 401, "unauthorized", "unknown user");
        return;
    }
    http_respond_json(c, 200, json_pack("{s:o}", "user", user));
}

static void api_users(struct conn *c, struct http_req *r)
{
    char q[256] = "";
    int limit = parse_limit(r->query);
    if (limit < 0) {
        http_respond_error(c, 400, "bad_request", "limit must be a positive integer");
        return;
    }
    int qrc = http_query_get(r->query, "q", q, sizeof q);
    if (qrc == HTTP_QUERY_TOO_LONG) {
        /* longer than any username: nothing can match */
        http_respond_json(c, 200, json_pack("{s:[]}", "users"));
        return;
    }
    for (char *p = q; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    json_t *users;
    int rc = store_users_search(c->w->reader, q, limit, &users);
    if (rc != STORE_OK) {
        respond_rc(c, rc, 0);
        return;
    }
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u) {
        int64_t id = json_integer_value(json_object_get(u, "id"));
        json_object_set_new(u, "online", json_boolean(presence_online(c->w->srv->presence, id)));
    }
    respond_read(c, STORE_OK, "users", users);
}

/* ---- conversations ---- */

static int run_create(struct store *st, struct job *j)
{
    int64_t conv;
    int rc;
    if (j->op == 'd') {
        int created;
        rc = store_conv_create_direct(st, j->user, j->target, util_now_ms(), &conv, &created);
        j->dup = !created;
    } else {
        rc = store_conv_create_group(st, j->user, j->str, j->ids, j->n_ids, util_now_ms(), &conv);
    }
    if (rc != STORE_OK)
        return rc;
    j->conv = conv;
    return store_conv_get(st, conv, j->user, &j->result);
}

static void done_create(struct job *j)
{
    struct conn *c = j->conn;
    if (j->rc == STORE_OK && !j->dup)
        proto_push_conversation(j->origin, j->conv, NULL, 0);
    if (!alive(c))
        return;
    if (j->rc != STORE_OK) {
        respond_rc(c, j->rc, j->flag == -1);
        return;
    }
    http_respond_json(c, j->dup ? 200 : 201, json_incref(j->result));
}

static void api_create_conv(struct conn *c, struct http_req *r, int64_t uid)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    const char *kind = json_string_value(json_object_get(o, "kind"));
    /* bound to c only once valid, so a refusal leaves nothing pending */
    struct job *j = job_new(c->w, NULL, run_create, done_create);
    j->user = uid;
    const char *err = NULL;
    if (kind && strcmp(kind, "direct") == 0) {
        j->op = 'd';
        j->target = proto_json_id(json_object_get(o, "user_id"));
        if (!j->target)
            err = "user_id must be a user id";
    } else if (kind && strcmp(kind, "group") == 0) {
        j->op = 'g';
        const char *title = plain_string(o, "title");
        json_t *members = json_object_get(o, "members");
        if (!title || util_utf8_chars(title) < 1 || util_utf8_chars(title) > 128)
            err = "title must be 1-128 characters";
        else if (members && !json_is_array(members))
            err = "members must be an array of user ids";
        else if (json_array_size(members) + 1 > (size_t)cfg_of(c)->max_group)
            err = "too many members";
        else {
            j->str = xstrdup(title);
            j->n_ids = json_array_size(members);
            j->ids = xcalloc(j->n_ids ? j->n_ids : 1, sizeof *j->ids);
            for (size_t i = 0; i < j->n_ids && !err; i++)
                if (!(j->ids[i] = proto_json_id(json_array_get(members, i))))
                    err = "members must be an array of user ids";
        }
    } else {
        err = "kind must be \"direct\" or \"group\"";
    }
    json_decref(o);
    if (err) {
        http_respond_error(c, 400, "bad_request", err);
        job_free(j);
        return;
    }
    job_bind(j, c);
    writer_submit(c->w->srv->writer, j);
}

static void api_list_convs(struct conn *c, int64_t uid)
{
    json_t *list = NULL;
    int rc = store_conv_list(c->w->reader, uid, &list);
    respond_read(c, rc, "conversations", list);
}

static void api_get_conv(struct conn *c, int64_t uid, int64_t conv)
{
    json_t *o = NULL;
    int rc = store_conv_get(c->w->reader, conv, uid, &o);
    respond_read(c, rc, NULL, o);
}

static int run_member(struct store *st, struct job *j)
{
    int added = 0;
    int rc;
    switch (j->op) {
    case 'a': {
        int64_t *ids;
        size_t n;
        if (store_members(st, j->conv, &ids, &n) != STORE_OK)
            return STORE_ERR;
        int full = 1;
        for (size_t i = 0; i < n; i++)
            full &= ids[i] != j->target; /* adding a member again is fine */
        free(ids);
        if (full && n >= (size_t)j->origin->srv->cfg->max_group) {
            j->str2 = xstrdup("the group is full (PARLEY_MAX_GROUP)");
            return STORE_BAD_REQUEST;
        }
        rc = store_member_add(st, j->conv, j->user, j->target, util_now_ms(), &added);
        j->dup = !added;
        return rc;
    }
    case 'r':
        return store_member_remove(st, j->conv, j->user, j->target);
    default:
        return store_member_set_role(st, j->conv, j->user, j->target, j->str);
    }
}

static void done_member(struct job *j)
{
    struct conn *c = j->conn;
    if (j->rc == STORE_OK && !j->dup)
        proto_push_conversation(j->origin, j->conv, &j->target, j->op == 'r');
    if (!alive(c))
        return;
    if (j->rc == STORE_BAD_REQUEST && j->str2)
        http_respond_error(c, 400, "bad_request", j->str2);
    else if (j->rc != STORE_OK)
        respond_rc(c, j->rc, j->flag == -1);
    else
        http_respond_json(c, 204, NULL);
}

static void submit_member(struct conn *c, int64_t uid, int64_t conv, int64_t target, int op, const char *role)
{
    struct job *j = job_new(c->w, c, run_member, done_member);
    j->user = uid;
    j->conv = conv;
    j->target = target;
    j->op = op;
    j->str = role ? xstrdup(role) : NULL;
    writer_submit(c->w->srv->writer, j);
}

static void api_add_member(struct conn *c, struct http_req *r, int64_t uid, int64_t conv)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    int64_t target = proto_json_id(json_object_get(o, "user_id"));
    json_decref(o);
    if (!target) {
        http_respond_error(c, 400, "bad_request", "user_id must be a user id");
        return;
    }
    submit_member(c, uid, conv, target, 'a', NULL);
}

static void api_set_role(struct conn *c, struct http_req *r, int64_t uid, int64_t conv, int64_t target)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    const char *role = plain_string(o, "role");
    if (!role || (strcmp(role, "admin") != 0 && strcmp(role, "member") != 0)) {
        json_decref(o);
        http_respond_error(c, 400, "bad_request", "role must be \"admin\" or \"member\"");
        return;
    }
    submit_member(c, uid, conv, target, 's', role);
    json_decref(o);
}

/* ---- messages ---- */

static void api_history(struct conn *c, struct http_req *r, int64_t uid, int64_t conv)
{
    char v[32];
    int64_t before = 0, after = -1;
    int brc = http_query_get(r->query, "before", v, sizeof v);
    int limit = parse_limit(r->query);
    if (limit < 0) {
        http_respond_error(c, 400, "bad_request", "limit must be a positive integer");
        return;
    }
    if (brc != HTTP_QUERY_ABSENT && (brc < 0 || util_parse_i64(v, &before) < 0 || before < 1)) {
        http_respond_error(c, 400, "bad_request", "before must be a positive seq");
        return;
    }
    int arc = http_query_get(r->query, "after", v, sizeof v);
    if (arc != HTTP_QUERY_ABSENT && (arc < 0 || util_parse_i64(v, &after) < 0 || after < 0)) {
        http_respond_error(c, 400, "bad_request", "after must be a seq (0 or more)");
        return;
    }
    int rc = store_is_member(c->w->reader, conv, uid);
    json_t *msgs;
    int has_more;
    if (rc == STORE_OK)
        rc = store_msg_page(c->w->reader, conv, before, after, limit, &msgs, &has_more);
    if (rc != STORE_OK) {
        respond_rc(c, rc, 0);
        return;
    }
    http_respond_json(c, 200, json_pack("{s:o,s:b}", "messages", msgs, "has_more", has_more));
}

static json_t *message_object(const struct job *j)
{
    return json_pack("{s:I,s:I,s:I,s:s,s:s%,s:I}", "conv", (json_int_t)j->conv, "seq", (json_int_t)j->seq,
                     "from", (json_int_t)j->user, "id", j->str, "body", j->body, j->body_len, "ts",
                     (json_int_t)j->ts);
}

static void done_http_send(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc != STORE_OK) {
        respond_rc(c, j->rc, j->flag == -1);
        return;
    }
    if (!j->dup) {
        http_respond_json(c, 201, message_object(j));
        return;
    }
    /* The original message (its own body), from the store. */
    json_t *page;
    int more;
    if (store_msg_page(c->w->reader, j->conv, 0, j->seq - 1, 1, &page, &more) == STORE_OK &&
        json_array_size(page) == 1) {
        json_t *m = json_incref(json_array_get(page, 0));
        json_decref(page);
        http_respond_json(c, 200, m);
        return;
    }
    json_decref(page);
    http_respond_error(c, 500, "internal", "internal error");
}

static void api_send(struct conn *c, struct http_req *r, int64_t uid, int64_t conv)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    struct proto_op m = {0};
    const char *code, *msg;
    if (proto_check_message(o, (size_t)cfg_of(c)->max_body, &m, &code, &msg) < 0) {
        json_decref(o);
        http_respond_error(c, strcmp(code, "too_large") == 0 ? 413 : 400, code, msg);
        return;
    }
    int64_t retry;
    if (presence_take_token(c->w->srv->presence, uid, util_mono_ms(), cfg_of(c)->send_rate,
                            cfg_of(c)->send_burst, &retry) < 0) {
        json_decref(o);
        http_respond_rate_limited(c, retry);
        return;
    }
    struct job *j = job_new(c->w, c, NULL, done_http_send);
    j->user = uid;
    j->conv = conv;
    j->str = xstrdup(m.id);
    j->body_len = m.body_len;
    j->body = xmalloc(m.body_len + 1);
    memcpy(j->body, m.body, m.body_len + 1);
    json_decref(o);
    writer_submit(c->w->srv->writer, j);
}

/* ---- WebSocket upgrade ---- */

static void api_upgrade(struct conn *c, struct http_req *r)
{
    const struct config *cfg = cfg_of(c);
    if (r->method != HTTP_GET || !r->upgrade || !r->ws_key) {
        http_respond_error(c, 400, "bad_request", "expected a WebSocket upgrade");
        return;
    }
    if (!r->ws_version || strcmp(r->ws_version, "13") != 0) {
        static const char body[] =
            "{\"error\":{\"code\":\"bad_request\",\"message\":\"WebSocket version 13 required\"}}";
        http_respond(c, 426, "application/json", "Sec-WebSocket-Version: 13\r\n", body, sizeof body - 1);
        return;
    }
    struct jwt_claims cl;
    int have = 0;
    char qtok[4096];
    int rc = AUTH_MISSING;
    int qrc = r->authorization ? HTTP_QUERY_ABSENT : http_query_get(r->query, "token", qtok, sizeof qtok);
    if (r->authorization)
        rc = auth_bearer(cfg, r->authorization, &cl);
    else if (qrc == 0)
        rc = auth_verify(cfg, qtok, strlen(qtok), &cl);
    else if (qrc == HTTP_QUERY_TOO_LONG)
        rc = JWT_MALFORMED; /* a token that long is no token of ours */
    if (rc == JWT_OK)
        have = 1;
    else if (rc != AUTH_MISSING) {
        http_respond_error(c, 401, "unauthorized", jwt_strerror(rc));
        return;
    }
    char accept[29];
    if (ws_accept_key(r->ws_key, strlen(r->ws_key), accept) < 0) {
        http_respond_error(c, 400, "bad_request", "bad Sec-WebSocket-Key");
        return;
    }
    http_send_upgrade(c, accept);
    http_req_free(c->http);
    c->http = NULL;
    c->busy = 0;
    c->state = CONN_WS_AUTH;
    c->deadline_ms = (int64_t)uv_now(&c->w->loop) + cfg->auth_timeout_ms;
    if (have)
        proto_start_session(c, &cl);
}

/* ---- routing ---- */

/* "/api/conversations/12/members/5" -> ids {12, 5}, tail "members". */
struct route {
    int64_t conv;
    const char *sub;   /* "", "members", "messages" */
    int64_t target;
    int ok;
};

static struct route parse_conv_path(const char *p)
{
    struct route rt = {0, "", 0, 0};
    char *end;
    long long id = strtoll(p, &end, 10);
    if (end == p || id <= 0 || (*end && *end != '/'))
        return rt;
    rt.conv = id;
    if (!*end || strcmp(end, "/") == 0) {
        rt.ok = 1;
        return rt;
    }
    if (strcmp(end, "/messages") == 0) {
        rt.sub = "messages";
        rt.ok = 1;
    } else if (strcmp(end, "/members") == 0) {
        rt.sub = "members";
        rt.ok = 1;
    } else if (strncmp(end, "/members/", 9) == 0) {
        long long t = strtoll(end + 9, &end, 10);
        if (t > 0 && !*end) {
            rt.sub = "member";
            rt.target = t;
            rt.ok = 1;
        }
    }
    return rt;
}

static void api_conversations(struct conn *c, struct http_req *r, int64_t uid, const char *rest)
{
    int m = r->method;
    if (!*rest || strcmp(rest, "/") == 0) {
        if (m == HTTP_GET)
            api_list_convs(c, uid);
        else if (m == HTTP_POST)
            api_create_conv(c, r, uid);
        else
            http_respond_error(c, 405, "bad_request", "method not allowed");
        return;
    }
    struct route rt = parse_conv_path(rest + 1);
    if (!rt.ok) {
        http_respond_error(c, 404, "not_found", "no such route");
        return;
    }
    if (!*rt.sub && m == HTTP_GET)
        api_get_conv(c, uid, rt.conv);
    else if (strcmp(rt.sub, "messages") == 0 && m == HTTP_GET)
        api_history(c, r, uid, rt.conv);
    else if (strcmp(rt.sub, "messages") == 0 && m == HTTP_POST)
        api_send(c, r, uid, rt.conv);
    else if (strcmp(rt.sub, "members") == 0 && m == HTTP_POST)
        api_add_member(c, r, uid, rt.conv);
    else if (strcmp(rt.sub, "member") == 0 && m == HTTP_DELETE)
        submit_member(c, uid, rt.conv, rt.target, 'r', NULL);
    else if (strcmp(rt.sub, "member") == 0 && m == HTTP_PATCH)
        api_set_role(c, r, uid, rt.conv, rt.target);
    else
        http_respond_error(c, 405, "bad_request", "method not allowed");
}

void api_handle(struct conn *c, struct http_req *r)
{
    const char *p = r->path;
    int m = r->method;
    if (m == HTTP_OPTIONS) {
        http_respond(c, 204, NULL,
                     "Access-Control-Allow-Methods: GET, POST, PATCH, DELETE, OPTIONS\r\n"
                     "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                     "Access-Control-Max-Age: 86400\r\n",
                     "", 0);
        return;
    }
    if (strcmp(p, "/ws") == 0) {
        api_upgrade(c, r);
        return;
    }
    if (strncmp(p, "/api/", 5) != 0) {
        http_serve_static(c, r, cfg_of(c)->web_dir);
        return;
    }
    if (strcmp(p, "/api/health") == 0) {
        http_respond_json(c, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (m == HTTP_POST && strncmp(p, "/api/auth/", 10) == 0) {
        const char *a = p + 10;
        if (strcmp(a, "signup") == 0)
            api_signup(c, r);
        else if (strcmp(a, "login") == 0)
            api_login(c, r);
        else if (strcmp(a, "refresh") == 0)
            api_refresh(c, r);
        else if (strcmp(a, "logout") == 0)
            api_logout(c, r);
        else
            http_respond_error(c, 404, "not_found", "no such route");
        return;
    }
    int known = strcmp(p, "/api/me") == 0 || strcmp(p, "/api/users") == 0 ||
                strncmp(p, "/api/conversations", 18) == 0;
    if (!known) {
        http_respond_error(c, 404, "not_found", "no such route");
        return;
    }
    int64_t uid = require_user(c, r);
    if (!uid)
        return;
    if (strcmp(p, "/api/me") == 0 && m == HTTP_GET)
        api_me(c, uid);
    else if (strcmp(p, "/api/users") == 0 && m == HTTP_GET)
        api_users(c, r);
    else if (strncmp(p, "/api/conversations", 18) == 0 && (p[18] == '\0' || p[18] == '/'))
        api_conversations(c, r, uid, p + 18);
    else
        http_respond_error(c, 404, "not_found", "no such route");
}
