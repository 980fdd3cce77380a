/* api: see api.h. Routes, then one small function per route. The HTTP
 * transport: validation and the shape of answers happen here; the rules,
 * reads and writes are the core's (chat.h, accounts.h). */
#include "api.h"

#ifndef PARLEY_COMMIT
#define PARLEY_COMMIT "unknown"
#endif
#ifndef PARLEY_VERSION_STR
#define PARLEY_VERSION_STR "0.1.0"
#endif

#include "accounts.h"
#include "api_attach.h"
#include "auth.h"
#include "chat.h"
#include "chat_limits.h"
#include "config.h"
#include "log.h"
#include "presence.h"
#include "proto.h"
#include "respond.h"
#include "rows.h"
#include "ws.h"
#include "bus_redis.h"
#include "reader_pool.h"
#include "writer.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <strings.h>

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 200

static struct chat_worker *cw_of(struct conn *c)
{
    return c->w->ctx;
}

static const struct config *cfg_of(struct conn *c)
{
    return c->w->cfg;
}

static int alive(struct conn *c)
{
    return c && c->state == CONN_HTTP;
}

/* Answers a store_rc (or the writer's "unavailable") as an HTTP error. */
static void respond_rc(struct conn *c, int rc, int unavailable)
{
    if (unavailable == JOB_BUSY) {
        http_respond_retry(c, 503, "unavailable", "server busy; retry shortly", 1000);
        return;
    }
    if (unavailable || rc == STORE_UNAVAILABLE) {
        http_respond_error(c, 503, "unavailable", "temporarily unavailable (shutting down, or the database is unreachable); retry");
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

/* ---- request helpers ---- */

/* The body as a JSON object, or NULL after answering 400. */
static json_t *body_object(struct conn *c, struct http_req *r)
{
    json_t *o = proto_json_load(r->body.data, r->body.len);
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

static void account_answered(struct conn *c, const struct account_answer *a)
{
    if (a->status >= 400 && a->retry_ms > 0)
        http_respond_retry(c, a->status, a->code, a->message, a->retry_ms);
    else if (a->status >= 400)
        http_respond_error(c, a->status, a->code, a->message);
    else if (a->status == 204)
        http_respond_json(c, 204, NULL);
    else
        http_respond_json(c, a->status, auth_token_answer(cfg_of(c), a->user, a->refresh_token));
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
    accounts_signup(cw_of(c), c, folded, json_is_string(dv) ? json_string_value(dv) : NULL, json_string_value(pv),
                    json_string_length(pv), account_answered);
    json_decref(o);
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
    char folded[33];
    accounts_login(cw_of(c), c, fold_username(u, folded) == 0 ? folded : NULL, json_string_value(pv),
                   json_string_length(pv), account_answered);
    json_decref(o);
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
    accounts_refresh(cw_of(c), c, tok, account_answered);
    json_decref(o);
}

static void api_logout(struct conn *c, struct http_req *r)
{
    const char *tok;
    json_t *o = refresh_body(c, r, &tok);
    if (!o)
        return;
    accounts_logout(cw_of(c), c, tok, account_answered);
    json_decref(o);
}

/* A read answered as 200 with its result, wrapped as {key: result} when the
 * read's str names a key, or as the error of its rc. */
/* A read's connection when it still waits and the read succeeded; NULL
 * when it is gone or the failure was answered here. */
static struct conn *read_answerable(struct read *r)
{
    struct conn *c = r->conn;
    if (!alive(c))
        return NULL;
    if (r->rc != STORE_OK) {
        respond_rc(c, r->rc, r->busy ? JOB_BUSY : 0); /* busy: the reader threads' queue was full */
        return NULL;
    }
    return c;
}

static void read_answered(struct read *r)
{
    struct conn *c = read_answerable(r);
    if (!c)
        return;
    json_t *o = json_incref(r->result);
    http_respond_json(c, 200, r->str ? json_pack("{s:o}", r->str, o) : o);
}

static void me_read(struct read *r)
{
    struct conn *c = r->conn;
    if (!alive(c))
        return;
    if (r->rc != STORE_OK)
        http_respond_error(c, 401, "unauthorized", "unknown user");
    else
        http_respond_json(c, 200, json_pack("{s:O}", "user", r->result));
}

static void api_me(struct conn *c, int64_t uid)
{
    struct read *r = chat_read(cw_of(c), READ_USER, c, me_read);
    r->user = uid;
    chat_read_submit(cw_of(c), r);
}

static void users_read(struct read *r)
{
    struct chat_worker *cw = r->arg;
    if (r->rc == STORE_OK) {
        size_t i;
        json_t *u;
        json_array_foreach(r->result, i, u) {
            int64_t id = json_integer_value(json_object_get(u, "id"));
            json_object_set_new(u, "online", json_boolean(presence_online(cw->chat->presence, id)));
        }
    }
    free(r->str);
    r->str = xstrdup("users"); /* the answer's key */
    read_answered(r);
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
    struct read *rd = chat_read(cw_of(c), READ_USERS, c, users_read);
    rd->str = xstrdup(q);
    rd->limit = limit;
    chat_read_submit(cw_of(c), rd);
}

/* ---- conversations ---- */

static void created(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc != STORE_OK) {
        respond_rc(c, j->rc, j->unavailable);
        return;
    }
    http_respond_json(c, j->u.create.created ? 201 : 200, json_incref(j->u.create.view));
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* How many different ids other than self: sorted on a copy, O(n log n) for the
 * at most a few thousand ids a 64 KiB body holds. */
static size_t distinct_others(const int64_t *ids, size_t n, int64_t self)
{
    if (n == 0)
        return 0;
    int64_t *v = xmalloc(n * sizeof *v);
    memcpy(v, ids, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_id);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] != self && (i == 0 || v[i] != v[i - 1]))
            k++;
    free(v);
    return k;
}

static void api_create_conv(struct conn *c, struct http_req *r, int64_t uid)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    const char *kind = json_string_value(json_object_get(o, "kind"));
    /* bound to c only once valid, so a refusal leaves nothing pending */
    struct job *j = chat_job(cw_of(c), JOB_CONV_CREATE, NULL, created);
    struct job_conv_create *cc = &j->u.create;
    cc->creator = uid;
    const char *err = NULL;
    if (kind && strcmp(kind, "direct") == 0) {
        cc->direct = 1;
        cc->peer = proto_json_id(json_object_get(o, "user_id"));
        if (!cc->peer)
            err = "user_id must be a user id";
    } else if (kind && strcmp(kind, "group") == 0) {
        const char *title = plain_string(o, "title");
        json_t *members = json_object_get(o, "members");
        if (!title || util_utf8_chars(title) < 1 || util_utf8_chars(title) > 128)
            err = "title must be 1-128 characters";
        else if (members && !json_is_array(members))
            err = "members must be an array of user ids";
        else {
            cc->title = xstrdup(title);
            cc->n_members = json_array_size(members);
            cc->members = xcalloc(cc->n_members ? cc->n_members : 1, sizeof *cc->members);
            for (size_t i = 0; i < cc->n_members && !err; i++)
                if (!(cc->members[i] = proto_json_id(json_array_get(members, i))))
                    err = "members must be an array of user ids";
            /* the limit counts people: duplicates and the creator's own id are ignored */
            if (!err && distinct_others(cc->members, cc->n_members, uid) + 1 > (size_t)cfg_of(c)->max_group)
                err = "too many members";
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
    int64_t retry;
    if (chat_limit_conv(cw_of(c), c, &retry) < 0) {
        http_respond_retry(c, 429, "rate_limited", "too many conversations created from your address; slow down",
                           retry);
        job_free(j);
        return;
    }
    job_bind(j, c);
    chat_submit(cw_of(c), j);
}

static void api_list_convs(struct conn *c, int64_t uid)
{
    struct read *r = chat_read(cw_of(c), READ_CONVS, c, read_answered);
    r->user = uid;
    r->str = xstrdup("conversations");
    chat_read_submit(cw_of(c), r);
}

static void api_get_conv(struct conn *c, int64_t uid, int64_t conv)
{
    struct read *r = chat_read(cw_of(c), READ_CONV, c, read_answered);
    r->user = uid;
    r->conv = conv;
    chat_read_submit(cw_of(c), r);
}

static void member_done(struct job *j)
{
    struct conn *c = j->conn;
    if (!alive(c))
        return;
    if (j->rc == STORE_BAD_REQUEST && j->u.member.why)
        http_respond_error(c, 400, "bad_request", j->u.member.why);
    else if (j->rc != STORE_OK)
        respond_rc(c, j->rc, j->unavailable);
    else
        http_respond_json(c, 204, NULL);
}

static void submit_member(struct conn *c, int64_t uid, int64_t conv, int64_t target, enum member_op op,
                          enum store_role role)
{
    struct job *j = chat_job(cw_of(c), JOB_MEMBER, c, member_done);
    struct job_member *m = &j->u.member;
    m->op = op;
    m->actor = uid;
    m->conv = conv;
    m->target = target;
    m->role = role;
    m->max_group = cfg_of(c)->max_group;
    chat_submit(cw_of(c), j);
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
    submit_member(c, uid, conv, target, MEMBER_ADD, ROLE_MEMBER);
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
    submit_member(c, uid, conv, target, MEMBER_SET_ROLE, store_role_parse(role));
    json_decref(o);
}

/* ---- messages ---- */

static void history_read(struct read *r)
{
    struct conn *c = read_answerable(r);
    if (!c)
        return;
    http_respond_json(c, 200, json_pack("{s:O,s:b}", "messages", r->result, "has_more", r->has_more));
}

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
    struct read *rd = chat_read(cw_of(c), READ_HISTORY, c, history_read);
    rd->user = uid;
    rd->conv = conv;
    rd->before = before;
    rd->after = after;
    rd->limit = limit;
    chat_read_submit(cw_of(c), rd);
}

/* A resend answers with the original message (its own body) from the store. */
static void original_read(struct read *r)
{
    struct conn *c = r->conn;
    if (!alive(c))
        return;
    if (r->rc != STORE_OK)
        http_respond_error(c, 500, "internal", "internal error");
    else
        http_respond_json(c, 200, json_incref(r->result));
}

static void http_sent(struct job *j)
{
    struct conn *c = j->conn;
    struct job_send *s = &j->u.send;
    if (!alive(c))
        return;
    if (j->rc == STORE_BAD_REQUEST && !j->unavailable && s->why) {
        http_respond_error(c, 400, "bad_request", s->why);
        return;
    }
    if (j->rc != STORE_OK) {
        respond_rc(c, j->rc, j->unavailable);
        return;
    }
    if (!s->dup) {
        json_t *m = rows_msg(s->conv, s->seq, s->sender, s->client_id, s->body, s->body_len, s->ts);
        struct rows_msg_v2 x = {.reply_to = s->reply_to, .attachments = s->att_out ? json_incref(s->att_out) : NULL};
        rows_msg_v2(m, &x);
        http_respond_json(c, 201, m);
        return;
    }
    struct read *r = chat_read(cw_of(c), READ_MSG, c, original_read);
    r->conv = s->conv;
    r->seq = s->seq;
    r->min_seq = s->seq; /* it was committed before this ack */
    chat_read_submit(cw_of(c), r);
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
    struct job *j = chat_job(cw_of(c), JOB_SEND, c, http_sent);
    proto_fill_send(j, uid, conv, &m);
    json_decref(o);
    int64_t retry;
    if (chat_send(cw_of(c), j, &retry) < 0)
        http_respond_rate_limited(c, retry);
}

/* ---- changes: edit, delete, reactions (version 2) ---- */

static void changed(struct job *j)
{
    struct conn *c = j->conn;
    struct job_change *ch = &j->u.change;
    if (!alive(c))
        return;
    int status;
    const char *code, *message;
    if (j->rc == STORE_OK)
        http_respond_json(c, 200, json_pack("{s:O}", "message", ch->message));
    else if (proto_change_refusal(j, &status, &code, &message) == 0)
        http_respond_error(c, status, code, message);
    else
        respond_rc(c, j->rc, j->unavailable);
}

static void submit_change(struct conn *c, struct job *j)
{
    int64_t retry;
    if (chat_change(cw_of(c), j, &retry) < 0)
        http_respond_rate_limited(c, retry);
}

static void api_edit(struct conn *c, struct http_req *r, int64_t uid, int64_t conv, int64_t seq)
{
    json_t *o = body_object(c, r);
    if (!o)
        return;
    struct proto_op m = {0};
    const char *code, *msg;
    if (proto_check_edit_body(o, (size_t)cfg_of(c)->max_body, &m, &code, &msg) < 0) {
        json_decref(o);
        http_respond_error(c, strcmp(code, "too_large") == 0 ? 413 : 400, code, msg);
        return;
    }
    struct job *j = proto_change_job(cw_of(c), c, CHANGE_EDIT, uid, conv, seq, m.body, m.body_len, changed);
    json_decref(o);
    submit_change(c, j);
}

static void api_react(struct conn *c, int64_t uid, int64_t conv, int64_t seq, const char *enc, int on)
{
    char emoji[64];
    long n = http_pct_decode(enc, strlen(enc), 0, emoji, sizeof emoji);
    if (n < 0 || !proto_emoji_ok(emoji, (size_t)n)) {
        http_respond_error(c, 400, "bad_request",
                           "emoji must be 1-32 bytes of UTF-8 without whitespace or control characters");
        return;
    }
    submit_change(c, proto_change_job(cw_of(c), c, on ? CHANGE_REACT_ON : CHANGE_REACT_OFF, uid, conv, seq, emoji,
                                      (size_t)n, changed));
}

static void changes_read(struct read *r)
{
    struct conn *c = read_answerable(r);
    if (!c)
        return;
    http_respond_json(c, 200, json_pack("{s:O,s:I}", "messages", r->result, "last_mod", (json_int_t)r->seq));
}

static void api_changes(struct conn *c, struct http_req *r, int64_t uid, int64_t conv)
{
    char v[32];
    int64_t after = 0;
    int limit = parse_limit(r->query);
    int arc = http_query_get(r->query, "after_mod", v, sizeof v);
    if (limit < 0) {
        http_respond_error(c, 400, "bad_request", "limit must be a positive integer");
        return;
    }
    if (arc != HTTP_QUERY_ABSENT && (arc < 0 || util_parse_i64(v, &after) < 0 || after < 0)) {
        http_respond_error(c, 400, "bad_request", "after_mod must be a mod (0 or more)");
        return;
    }
    struct read *rd = chat_read(cw_of(c), READ_CHANGES, c, changes_read);
    rd->user = uid;
    rd->conv = conv;
    rd->after = after;
    rd->limit = limit;
    chat_read_submit(cw_of(c), rd);
}

/* ---- search (version 2) ---- */

#define SEARCH_Q_MAX 512     /* bytes of q */
#define SEARCH_WORD_MAX 64   /* bytes of one word */
#define SEARCH_DEFAULT 20
#define SEARCH_MAX 100

static void search_read(struct read *r)
{
    struct conn *c = read_answerable(r);
    if (!c)
        return;
    json_t *next = json_null();
    if (r->seq > 0) {
        char t[24];
        snprintf(t, sizeof t, "%lld", (long long)r->seq);
        next = json_string(t);
    }
    http_respond_json(c, 200, json_pack("{s:O,s:o}", "results", r->result, "next", next));
}

static void api_search(struct conn *c, struct http_req *r, int64_t uid)
{
    char q[SEARCH_Q_MAX + 1], v[32];
    int64_t conv = 0, before = 0, limit = SEARCH_DEFAULT;
    int qrc = http_query_get(r->query, "q", q, sizeof q);
    if (qrc == HTTP_QUERY_TOO_LONG) {
        http_respond_error(c, 400, "bad_request", "q is too long (at most 512 bytes)");
        return;
    }
    int rc = http_query_get(r->query, "conv", v, sizeof v);
    if (rc != HTTP_QUERY_ABSENT && (rc < 0 || util_parse_id(v, &conv) < 0)) {
        http_respond_error(c, 400, "bad_request", "conv must be a conversation id");
        return;
    }
    rc = http_query_get(r->query, "before", v, sizeof v);
    if (rc != HTTP_QUERY_ABSENT && (rc < 0 || util_parse_i64(v, &before) < 0 || before < 1)) {
        http_respond_error(c, 400, "bad_request", "before must be the next cursor of an earlier page");
        return;
    }
    rc = http_query_get(r->query, "limit", v, sizeof v);
    if (rc != HTTP_QUERY_ABSENT && (rc < 0 || util_parse_i64(v, &limit) < 0 || limit < 1)) {
        http_respond_error(c, 400, "bad_request", "limit must be a positive integer");
        return;
    }
    if (limit > SEARCH_MAX)
        limit = SEARCH_MAX;
    int64_t retry;
    if (chat_search_admit(cw_of(c), uid, &retry) < 0) {
        http_respond_rate_limited(c, retry);
        return;
    }
    struct buf words = {0};
    size_t n = qrc == 0 ? proto_search_words(q, strlen(q), SEARCH_WORD_MAX, READ_SEARCH_WORDS, &words) : 0;
    if (!n) {
        buf_dispose(&words);
        http_respond_error(c, 400, "bad_request", "q must hold at least one word");
        return;
    }
    struct read *rd = chat_read(cw_of(c), READ_SEARCH, c, search_read);
    rd->user = uid;
    rd->conv = conv;
    rd->before = before;
    rd->limit = (int)limit;
    rd->str = words.data; /* the read's now */
    rd->n = n;
    chat_read_submit(cw_of(c), rd);
}

/* ---- WebSocket upgrade ---- */

static void api_upgrade(struct conn *c, struct http_req *r)
{
    const struct config *cfg = cfg_of(c);
    if (r->method != HTTP_GET || !r->upgrade || !r->ws_key) {
        http_respond_error(c, 400, "bad_request", "expected a WebSocket upgrade");
        return;
    }
    if (c->w->leaving || c->w->draining) { /* a load balancer places the session elsewhere */
        http_respond_retry(c, 503, "unavailable", "this node is draining; connect again", 1000);
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
    struct frame *f = http_upgrade_response(accept);
    conn_send(c, f);
    frame_unref(f);
    conn_upgrade(c, worker_now(c->w) + cfg->auth_timeout_ms);
    if (have)
        chat_session_start(cw_of(c), c, &cl);
}

/* ---- health ---- */

/* 200 while this node can serve, else 503 naming what is wrong (load
 * balancers take the node out; nothing here touches the writer's queue). */
static void api_ready(struct conn *c)
{
    const char *problems[4];
    if (chat_ready(cw_of(c), problems)) {
        http_respond_json(c, 200, json_pack("{s:s}", "status", "ready"));
        return;
    }
    json_t *list = json_array();
    for (int i = 0; problems[i]; i++)
        json_array_append_new(list, json_string(problems[i]));
    http_respond_json(c, 503, json_pack("{s:s,s:o}", "status", "unavailable", "problems", list));
}

/* ---- routing ---- */

/* The id at p (canonical: digits, no sign, no leading zero) up to the next
 * '/' or the end; *end_out after it. 0 if there is none. */
static int64_t path_id(const char *p, const char **end_out)
{
    char buf[24];
    size_t n = strcspn(p, "/");
    *end_out = p + n;
    int64_t id;
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return util_parse_id(buf, &id) == 0 ? id : 0;
}

struct api_route api_parse_conv_path(const char *p)
{
    struct api_route rt = {0, "", 0, NULL, 0};
    const char *end;
    int64_t id = path_id(p, &end);
    if (!id)
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
    } else if (strcmp(end, "/changes") == 0) {
        rt.sub = "changes";
        rt.ok = 1;
    } else if (strncmp(end, "/messages/", 10) == 0) {
        int64_t seq = path_id(end + 10, &end);
        if (seq && !*end) {
            rt.sub = "message";
            rt.target = seq;
            rt.ok = 1;
        } else if (seq && strncmp(end, "/reactions/", 11) == 0 && end[11] && !strchr(end + 11, '/')) {
            rt.sub = "reaction";
            rt.target = seq;
            rt.emoji = end + 11;
            rt.ok = 1;
        }
    } else if (strncmp(end, "/members/", 9) == 0) {
        int64_t t = path_id(end + 9, &end);
        if (t && !*end) {
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
    struct api_route rt = api_parse_conv_path(rest + 1);
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
        submit_member(c, uid, rt.conv, rt.target, MEMBER_REMOVE, ROLE_MEMBER);
    else if (strcmp(rt.sub, "member") == 0 && m == HTTP_PATCH)
        api_set_role(c, r, uid, rt.conv, rt.target);
    else if (strcmp(rt.sub, "message") == 0 && m == HTTP_PATCH)
        api_edit(c, r, uid, rt.conv, rt.target);
    else if (strcmp(rt.sub, "message") == 0 && m == HTTP_DELETE)
        submit_change(c, proto_change_job(cw_of(c), c, CHANGE_DELETE, uid, rt.conv, rt.target, NULL, 0, changed));
    else if (strcmp(rt.sub, "reaction") == 0 && (m == HTTP_PUT || m == HTTP_DELETE))
        api_react(c, uid, rt.conv, rt.target, rt.emoji, m == HTTP_PUT);
    else if (strcmp(rt.sub, "changes") == 0 && m == HTTP_GET)
        api_changes(c, r, uid, rt.conv);
    else
        http_respond_error(c, 405, "bad_request", "method not allowed");
}

/* ---- metrics ---- */

/* Routes as templates, never raw paths (the request counters' labels). */
enum route_id { R_OTHER, R_STATIC, R_WS, R_HEALTH, R_READY, R_METRICS, R_SIGNUP, R_LOGIN, R_REFRESH, R_LOGOUT,
                R_ME, R_USERS, R_CONVS, R_CONV, R_MESSAGES, R_MEMBERS, R_MEMBER, R_OPTIONS, R_MESSAGE, R_REACTION,
                R_CHANGES, R_SEARCH, R_ATTACH, R_ATTACHMENT, R__N };
static const char *const route_names[R__N] = {
    "other", "static", "/ws", "/healthz", "/readyz", "/metrics", "/api/auth/signup", "/api/auth/login",
    "/api/auth/refresh", "/api/auth/logout", "/api/me", "/api/users", "/api/conversations",
    "/api/conversations/{id}", "/api/conversations/{id}/messages", "/api/conversations/{id}/members",
    "/api/conversations/{id}/members/{user_id}", "OPTIONS", "/api/conversations/{id}/messages/{seq}",
    "/api/conversations/{id}/messages/{seq}/reactions/{emoji}", "/api/conversations/{id}/changes", "/api/search",
    "/api/attachments", "/api/attachments/{id}"};
_Static_assert(R__N <= WORKER_ROUTES, "every route has its counters");

static int route_of(const char *p, int method)
{
    static const struct { const char *path; int id; } exact[] = {
        {"/ws", R_WS}, {"/healthz", R_HEALTH}, {"/api/health", R_HEALTH}, {"/readyz", R_READY},
        {"/metrics", R_METRICS}, {"/api/auth/signup", R_SIGNUP}, {"/api/auth/login", R_LOGIN},
        {"/api/auth/refresh", R_REFRESH}, {"/api/auth/logout", R_LOGOUT}, {"/api/me", R_ME},
        {"/api/users", R_USERS}, {"/api/conversations", R_CONVS}, {"/api/conversations/", R_CONVS},
        {"/api/search", R_SEARCH}, {"/api/attachments", R_ATTACH}, {"/api/attachments/", R_ATTACH}};
    if (method == HTTP_OPTIONS)
        return R_OPTIONS;
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        if (strcmp(p, exact[i].path) == 0)
            return exact[i].id;
    if (strncmp(p, "/api/attachments/", 17) == 0)
        return R_ATTACHMENT;
    if (strncmp(p, "/api/conversations/", 19) == 0) {
        struct api_route rt = api_parse_conv_path(p + 19);
        if (!rt.ok)
            return R_OTHER;
        return !*rt.sub                             ? R_CONV
               : strcmp(rt.sub, "messages") == 0 ? R_MESSAGES
               : strcmp(rt.sub, "members") == 0  ? R_MEMBERS
               : strcmp(rt.sub, "message") == 0  ? R_MESSAGE
               : strcmp(rt.sub, "reaction") == 0 ? R_REACTION
               : strcmp(rt.sub, "changes") == 0  ? R_CHANGES
                                                 : R_MEMBER;
    }
    return strncmp(p, "/api/", 5) == 0 ? R_OTHER : R_STATIC;
}

/* Appends printf-style text to b. */
static void out(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(struct buf *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_append(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    out(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A histogram from per-bucket counts (not cumulative) and upper bounds. */
static void histogram(struct buf *b, const char *name, const char *help, const double *bounds, const uint64_t *counts,
                      int nbuckets, double sum)
{
    family(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < nbuckets; i++) {
        cum += counts[i];
        if (i < nbuckets - 1)
            out(b, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
        else
            out(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    out(b, "%s_sum %.6f\n%s_count %llu\n", name, sum, name, (unsigned long long)cum);
}

/* The process's own figures, from /proc/self. */
static void process_metrics(struct buf *b)
{
    char stat[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(stat, 1, sizeof stat - 1, f) : 0;
    if (f)
        fclose(f);
    stat[n] = '\0';
    unsigned long long ut = 0, st = 0;
    const char *rp = strrchr(stat, ')'); /* the command name may hold spaces */
    if (rp)
        sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
    double ticks = (double)sysconf(_SC_CLK_TCK);
    family(b, "process_cpu_seconds_total", "counter", "User and system CPU time spent, seconds.");
    out(b, "process_cpu_seconds_total %.2f\n", (double)(ut + st) / (ticks > 0 ? ticks : 100));
    long pages = 0;
    f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%*d %ld", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    family(b, "process_resident_memory_bytes", "gauge", "Resident memory size, bytes.");
    out(b, "process_resident_memory_bytes %lld\n", (long long)pages * sysconf(_SC_PAGESIZE));
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        fds += e->d_name[0] != '.';
    if (d)
        closedir(d);
    family(b, "process_open_fds", "gauge", "Open file descriptors.");
    out(b, "process_open_fds %ld\n", fds > 0 ? fds - 1 : 0); /* less the one reading the directory */
    /* alert on open / max: past the limit new connections are reset unanswered */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        family(b, "process_max_fds", "gauge", "The descriptor limit (ulimit -n).");
        out(b, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
}

static void metrics_render(struct conn *c, const struct metrics_snapshot *m)
{
    struct chat_worker *cw = cw_of(c);
    struct chat *ch = cw->chat;
    const struct config *cfg = cfg_of(c);
    struct buf b = {0};
    family(&b, "parley_build_info", "gauge", "Build and mode of this node (always 1).");
    out(&b, "parley_build_info{version=\"%s\",commit=\"%s\",mode=\"%s\"} 1\n", PARLEY_VERSION_STR, PARLEY_COMMIT,
        cfg->db_url[0] || cfg->redis_url[0] ? "cluster" : "embedded");
    family(&b, "parley_connections", "gauge", "Open connections by state.");
    out(&b, "parley_connections{state=\"http\"} %llu\nparley_connections{state=\"ws_unauth\"} %llu\n"
            "parley_connections{state=\"ws\"} %llu\n",
        (unsigned long long)m->conns_http, (unsigned long long)m->conns_ws_unauth, (unsigned long long)m->conns_ws);
    family(&b, "parley_ws_frames_received_total", "counter", "WebSocket data frames received.");
    out(&b, "parley_ws_frames_received_total %llu\n", (unsigned long long)m->rt.frames_in);
    family(&b, "parley_ws_frames_sent_total", "counter", "WebSocket frames queued to clients.");
    out(&b, "parley_ws_frames_sent_total %llu\n", (unsigned long long)m->rt.frames_out);
    struct writer_stats ws;
    writer_stats(ch->writer, &ws);
    family(&b, "parley_messages_stored_total", "counter", "Messages committed by this node's writer.");
    out(&b, "parley_messages_stored_total %llu\n", (unsigned long long)ws.messages_stored);
    family(&b, "parley_deliveries_total", "counter", "msg frames handed to member connections (senders' own included).");
    out(&b, "parley_deliveries_total %llu\n", (unsigned long long)m->core.deliveries);
    histogram(&b, "parley_batch_size", "Jobs per writer transaction.", writer_batch_bounds, ws.batch_hist, WRITER_HIST,
              ws.batch_sum);
    histogram(&b, "parley_commit_duration_seconds", "Time of one writer transaction, begin to commit.",
              writer_commit_bounds, ws.commit_hist, WRITER_HIST, ws.commit_sum_s);
    histogram(&b, "parley_send_to_deliver_seconds",
              "From a send's arrival to its frames queued to the members' connections, on the node that took it.",
              chat_s2d_bounds, m->core.s2d, CHAT_S2D_BUCKETS, m->core.s2d_sum);
    family(&b, "parley_http_requests_total", "counter", "HTTP answers by route template and status.");
    for (int r = 0; r < R__N; r++)
        for (int st = 0; st < WORKER_STATUSES; st++) {
            if (!m->rt.http[r][st])
                continue;
            char status[8] = "other";
            if (st < WORKER_STATUSES - 1)
                snprintf(status, sizeof status, "%d", http_counted_statuses[st]);
            out(&b, "parley_http_requests_total{route=\"%s\",status=\"%s\"} %llu\n", route_names[r], status,
                (unsigned long long)m->rt.http[r][st]);
        }
    family(&b, "parley_rate_limited_total", "counter", "Requests refused by a rate or admission limit.");
    for (int i = 0; i < LIMITED__N; i++)
        out(&b, "parley_rate_limited_total{what=\"%s\"} %llu\n", chat_limited_names[i],
            (unsigned long long)m->core.limited[i]);
    family(&b, "parley_slow_consumer_closes_total", "counter", "WebSockets closed 1008 for not reading.");
    out(&b, "parley_slow_consumer_closes_total %llu\n", (unsigned long long)m->rt.slow_closes);
    uint64_t primary = m->core.reads, replica = 0;
    if (ch->pool) {
        const struct reader_pool_stats *ps = reader_pool_stats(ch->pool);
        primary = (uint64_t)atomic_load(&ps->primary_reads);
        replica = (uint64_t)atomic_load(&ps->replica_reads);
    }
    family(&b, "parley_db_reads_total", "counter", "Reads by the database that answered them.");
    out(&b, "parley_db_reads_total{target=\"primary\"} %llu\nparley_db_reads_total{target=\"replica\"} %llu\n",
        (unsigned long long)primary, (unsigned long long)replica);
    family(&b, "parley_replica_lag_seconds", "gauge", "The read replica's replay lag (0: caught up, or none).");
    out(&b, "parley_replica_lag_seconds %.3f\n", ch->pool ? (double)reader_pool_replica_lag_ms(ch->pool) / 1000 : 0.0);
    struct bus_redis_stats rs;
    bus_redis_stats(ch->bus, &rs);
    family(&b, "parley_redis_reconnects_total", "counter", "Redis connections established again after a loss.");
    out(&b, "parley_redis_reconnects_total %llu\n", (unsigned long long)rs.reconnects);
    family(&b, "parley_writer_queue_depth", "gauge", "Jobs waiting for the writer.");
    out(&b, "parley_writer_queue_depth %zu\n", ws.queue_depth);
    process_metrics(&b);
    http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data ? b.data : "", b.len);
    buf_dispose(&b);
}

int api_body_start(void *ctx, struct conn *c, struct http_req *r, struct http_sink *sink)
{
    (void)ctx;
    if (!c->admin && (strcmp(r->path, "/api/attachments") == 0 || strcmp(r->path, "/api/attachments/") == 0)) {
        r->route = R_ATTACH;
        return api_attach_body_start(c, r, sink);
    }
    return 0; /* every other body is read whole (PARLEY_MAX_HTTP_BODY) */
}

void api_handle(void *ctx, struct conn *c, struct http_req *r)
{
    (void)ctx; /* c->w->ctx: the same chat_worker */
    const char *p = r->path;
    int m = r->method;
    r->route = route_of(p, m);
    /* With PARLEY_METRICS_LISTEN, /metrics lives on that address alone, and
     * that address serves nothing else but the health checks. */
    int own = cfg_of(c)->metrics_host[0] != 0;
    if (c->admin && r->route != R_METRICS && r->route != R_HEALTH && r->route != R_READY) {
        http_respond_error(c, 404, "not_found", "this address serves /metrics, /healthz and /readyz only");
        return;
    }
    if (r->route == R_METRICS && (!own || c->admin) && (m == HTTP_GET || m == HTTP_HEAD)) {
        chat_metrics_gather(cw_of(c), c, metrics_render);
        return;
    }
    if (m == HTTP_OPTIONS) {
        http_respond(c, 204, NULL,
                     "Access-Control-Allow-Methods: GET, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
                     "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                     "Access-Control-Max-Age: 86400\r\n",
                     "", 0);
        return;
    }
    if (strcmp(p, "/ws") == 0) {
        api_upgrade(c, r);
        return;
    }
    if (strcmp(p, "/readyz") == 0) {
        api_ready(c);
        return;
    }
    if (strcmp(p, "/api/health") == 0 || strcmp(p, "/healthz") == 0) {
        http_respond_json(c, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strncmp(p, "/api/", 5) != 0) {
        http_serve_static(c, r, cfg_of(c)->web_dir);
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
    if (r->route == R_ATTACH || r->route == R_ATTACHMENT) {
        api_attach_handle(c, r);
        return;
    }
    int known = strcmp(p, "/api/me") == 0 || strcmp(p, "/api/users") == 0 || strcmp(p, "/api/search") == 0 ||
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
    else if (strcmp(p, "/api/search") == 0 && m == HTTP_GET)
        api_search(c, r, uid);
    else if (strncmp(p, "/api/conversations", 18) == 0 && (p[18] == '\0' || p[18] == '/'))
        api_conversations(c, r, uid, p + 18);
    else
        http_respond_error(c, 404, "not_found", "no such route");
}
