/* proto: see proto.h. */
#include "proto.h"

#include "auth.h"
#include "hub.h"
#include "log.h"
#include "presence.h"
#include "server.h"
#include "store.h"
#include "writer.h"

#include <stdlib.h>
#include <string.h>

#define SYNC_PAGE 200

static const struct config *cfg_of(struct conn *c)
{
    return c->w->srv->cfg;
}

static void send_error(struct conn *c, const char *id, const char *code, const char *message)
{
    json_t *e = json_pack("{s:s,s:s,s:s}", "op", "error", "code", code, "message", message);
    if (id)
        json_object_set_new(e, "id", json_string(id));
    conn_send_json(c, e);
    json_decref(e);
}

static void send_rc_error(struct conn *c, const char *id, int rc, int unavailable)
{
    if (unavailable)
        send_error(c, id, "unavailable", "server is shutting down; retry after reconnecting");
    else if (rc == STORE_NOT_FOUND)
        send_error(c, id, "not_found", "no such conversation");
    else if (rc == STORE_FORBIDDEN)
        send_error(c, id, "forbidden", "not allowed");
    else
        send_error(c, id, "internal", "internal error");
}

int64_t proto_json_id(json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) > 0 ? (int64_t)json_integer_value(v) : 0;
}

static int64_t int_field(json_t *o, const char *k)
{
    return proto_json_id(json_object_get(o, k));
}

/* The members of conv but except_user. *had_except tells whether
 * except_user was one of them: the membership check comes with the list. */
static struct idlist *members_of(struct worker *w, int64_t conv, int64_t except_user, int *had_except)
{
    int64_t *ids;
    size_t n;
    if (store_members(w->reader, conv, &ids, &n) != STORE_OK)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] != except_user)
            ids[k++] = ids[i];
    if (had_except)
        *had_except = k < n;
    struct idlist *l = idlist_new(ids, k);
    free(ids);
    return l;
}

static void fanout_json(struct worker *w, json_t *o, struct idlist *users, uint64_t except_conn)
{
    struct frame *f = frame_ws_json(o);
    worker_fanout_all(w->srv, f, users, except_conn);
    frame_unref(f);
}

/* ---- pushes ---- */

void proto_push_presence(struct worker *w, int64_t user, int online)
{
    int64_t *ids;
    size_t n;
    if (store_peers(w->reader, user, &ids, &n) != STORE_OK)
        return;
    if (n) {
        struct idlist *l = idlist_new(ids, n);
        json_t *o = json_pack("{s:s,s:I,s:b}", "op", "presence", "user", (json_int_t)user, "online", online);
        fanout_json(w, o, l, 0);
        json_decref(o);
        idlist_unref(l);
    }
    free(ids);
}

static void push_to(struct worker *w, int64_t user, json_t *conversation)
{
    json_t *o = json_pack("{s:s,s:O}", "op", "conversation", "conversation", conversation);
    struct idlist *one = idlist_new(&user, 1);
    fanout_json(w, o, one, 0);
    idlist_unref(one);
    json_decref(o);
}

void proto_push_conversation(struct worker *w, int64_t conv, const int64_t *extra, size_t n_extra)
{
    int64_t *ids;
    size_t n;
    if (store_members(w->reader, conv, &ids, &n) != STORE_OK)
        return;
    json_t *outside = NULL;
    /* Each member gets their own view (read position, unread). */
    for (size_t i = 0; i < n; i++) {
        json_t *co;
        if (store_conv_get(w->reader, conv, ids[i], &co) != STORE_OK)
            continue;
        if (!outside) {
            /* what a former member may see: who is in it now, nothing of the messages */
            outside = json_deep_copy(co);
            json_object_set_new(outside, "last_read_seq", json_integer(0));
            json_object_set_new(outside, "unread", json_integer(0));
            json_object_set_new(outside, "last_message", json_null());
        }
        push_to(w, ids[i], co);
        json_decref(co);
    }
    free(ids);
    if (!n_extra)
        goto done;
    if (!outside) /* nobody is left */
        outside = json_pack("{s:I,s:s,s:n,s:[],s:i,s:i,s:i,s:n,s:i}", "id", (json_int_t)conv, "kind", "group",
                            "title", "members", "last_seq", 0, "last_read_seq", 0, "unread", 0, "last_message",
                            "created_at", 0);
    for (size_t i = 0; i < n_extra; i++)
        push_to(w, extra[i], outside);
done:
    if (outside)
        json_decref(outside);
}

/* ---- the session ---- */

static void send_hello(struct conn *c, json_t *user)
{
    json_t *o = json_pack("{s:s,s:O,s:I}", "op", "hello", "user", user, "heartbeat_ms",
                          (json_int_t)cfg_of(c)->heartbeat_ms);
    conn_send_json(c, o);
    json_decref(o);
}

void proto_start_session(struct conn *c, const struct jwt_claims *cl)
{
    struct worker *w = c->w;
    json_t *user;
    if (store_user_by_id(w->reader, cl->sub, &user) != STORE_OK) {
        conn_close_ws(c, 4001, "unknown user");
        return;
    }
    c->user_id = cl->sub;
    c->token_exp_ms = cl->exp * 1000;
    c->state = CONN_WS;
    c->deadline_ms = 0;
    c->last_ping_ms = (int64_t)uv_now(&w->loop);
    hub_add(w, c);
    int count = presence_up(w->srv->presence, c->user_id);
    send_hello(c, user);
    json_decref(user);

    int64_t *peers;
    size_t n;
    if (store_peers(w->reader, c->user_id, &peers, &n) == STORE_OK) {
        for (size_t i = 0; i < n; i++) {
            if (!presence_online(w->srv->presence, peers[i]))
                continue;
            json_t *o = json_pack("{s:s,s:I,s:b}", "op", "presence", "user", (json_int_t)peers[i], "online", 1);
            conn_send_json(c, o);
            json_decref(o);
        }
        free(peers);
    }
    if (count == 1)
        proto_push_presence(w, c->user_id, 1);
}

void proto_end_session(struct conn *c)
{
    if (!c->in_hub)
        return;
    hub_remove(c->w, c);
    if (presence_down(c->w->srv->presence, c->user_id) == 0 && !c->w->stopping)
        proto_push_presence(c->w, c->user_id, 0);
}

/* ---- ops ---- */

static void op_auth(struct conn *c, const struct proto_op *op)
{
    struct jwt_claims cl;
    int rc = auth_verify(cfg_of(c), op->token, strlen(op->token), &cl);
    if (rc != JWT_OK) {
        conn_close_ws(c, 4001, rc == JWT_EXPIRED ? "token expired" : "invalid token");
        return;
    }
    if (c->state == CONN_WS_AUTH) {
        proto_start_session(c, &cl);
        return;
    }
    if (cl.sub != c->user_id) {
        send_error(c, NULL, "forbidden", "token belongs to another user");
        return;
    }
    if (cl.exp * 1000 > c->token_exp_ms)
        c->token_exp_ms = cl.exp * 1000;
    json_t *user;
    if (store_user_by_id(c->w->reader, c->user_id, &user) == STORE_OK) {
        send_hello(c, user);
        json_decref(user);
    }
}

static void done_ws_send(struct job *j)
{
    struct conn *c = j->conn;
    if (c->state != CONN_WS)
        return; /* the client will resend after reconnecting; the id keeps it idempotent */
    if (j->rc != STORE_OK) {
        send_rc_error(c, j->str, j->rc, j->flag == -1);
        return;
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I}", "op", "ack", "id", j->str, "conv", (json_int_t)j->conv,
                          "seq", (json_int_t)j->seq, "ts", (json_int_t)j->ts);
    conn_send_json(c, o);
    json_decref(o);
}

static void op_send(struct conn *c, const struct proto_op *op)
{
    int64_t retry;
    if (presence_take_token(c->w->srv->presence, c->user_id, util_mono_ms(), cfg_of(c)->send_rate,
                            cfg_of(c)->send_burst, &retry) < 0) {
        send_error(c, op->id, "rate_limited", "too many messages; slow down");
        return;
    }
    struct job *j = job_new(c->w, c, NULL, done_ws_send);
    j->user = c->user_id;
    j->conv = op->conv;
    j->str = xstrdup(op->id);
    j->body_len = op->body_len;
    j->body = xmalloc(op->body_len + 1);
    memcpy(j->body, op->body, op->body_len + 1);
    writer_submit(c->w->srv->writer, j);
}

static void op_sync(struct conn *c, const struct proto_op *op)
{
    struct store *st = c->w->reader;
    const char *key;
    json_t *v;
    json_object_foreach(op->since, key, v) {
        int64_t conv, after;
        if (util_parse_i64(key, &conv) < 0 || conv <= 0 || !json_is_integer(v) || json_integer_value(v) < 0)
            continue; /* not a conversation: nothing to send for it */
        after = json_integer_value(v);
        if (store_is_member(st, conv, c->user_id) != STORE_OK)
            continue;
        json_t *msgs;
        int more;
        if (store_msg_page(st, conv, 0, after, SYNC_PAGE, &msgs, &more) != STORE_OK)
            continue;
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m) {
            json_object_set_new(m, "op", json_string("msg"));
            conn_send_json(c, m);
        }
        json_decref(msgs);
    }
    json_t *summary;
    if (store_sync_summary(st, c->user_id, &summary) != STORE_OK) {
        send_error(c, NULL, "internal", "sync failed");
        return;
    }
    json_t *reply = json_pack("{s:s,s:o}", "op", "synced", "conversations", summary);
    conn_send_json(c, reply);
    json_decref(reply);
}

static int run_read(struct store *st, struct job *j)
{
    return store_read_set(st, j->conv, j->user, j->seq, &j->seq);
}

static void done_read(struct job *j)
{
    struct conn *c = j->conn;
    if (j->rc != STORE_OK) {
        if (c->state == CONN_WS)
            send_rc_error(c, NULL, j->rc, j->flag == -1);
        return;
    }
    struct idlist *l = members_of(j->origin, j->conv, 0, NULL);
    if (!l)
        return;
    json_t *o = json_pack("{s:s,s:I,s:I,s:I}", "op", "read", "conv", (json_int_t)j->conv, "user",
                          (json_int_t)j->user, "seq", (json_int_t)j->seq);
    fanout_json(j->origin, o, l, c->id); /* every member connection but this one */
    json_decref(o);
    idlist_unref(l);
}

static void op_read(struct conn *c, const struct proto_op *op)
{
    struct job *j = job_new(c->w, c, run_read, done_read);
    j->user = c->user_id;
    j->conv = op->conv;
    j->seq = op->seq;
    writer_submit(c->w->srv->writer, j);
}

static void op_typing(struct conn *c, const struct proto_op *op)
{
    int64_t conv = op->conv;
    int member = 0;
    struct idlist *l = members_of(c->w, conv, c->user_id, &member);
    if (!l)
        return;
    if (!member) {
        idlist_unref(l);
        send_error(c, NULL, "not_found", "no such conversation");
        return;
    }
    json_t *t = json_pack("{s:s,s:I,s:I}", "op", "typing", "conv", (json_int_t)conv, "user", (json_int_t)c->user_id);
    fanout_json(c->w, t, l, 0);
    json_decref(t);
    idlist_unref(l);
}

/* ---- parsing ---- */

#define BAD(msg) do { *code = "bad_request"; *message = (msg); return -1; } while (0)

int proto_check_message(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                        const char **message)
{
    json_t *idv = json_object_get(obj, "id"), *bv = json_object_get(obj, "body");
    op->id = json_string_value(idv);
    if (!op->id || json_string_length(idv) < 1 || strlen(op->id) != json_string_length(idv) ||
        util_utf8_chars(op->id) > 128) {
        op->id = NULL; /* not echoed: it is not a valid client id */
        BAD("id must be a string of 1-128 characters");
    }
    if (!json_is_string(bv) || json_string_length(bv) < 1)
        BAD("body must be a non-empty string");
    op->body = json_string_value(bv);
    op->body_len = json_string_length(bv);
    if (op->body_len > max_body) {
        *code = "too_large";
        *message = "body too large";
        return -1;
    }
    return 0;
}

static int parse_send(struct proto_op *op, size_t max_body, const char **code, const char **message)
{
    if (proto_check_message(op->root, max_body, op, code, message) < 0)
        return -1;
    op->conv = int_field(op->root, "conv");
    if (!op->conv)
        BAD("send needs conv: a conversation id");
    return 0;
}

int proto_parse(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
                const char **message)
{
    memset(op, 0, sizeof *op);
    json_error_t err;
    op->root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (!op->root || !json_is_object(op->root))
        BAD("malformed JSON: expected one object per frame");
    const char *name = json_string_value(json_object_get(op->root, "op"));
    if (!name)
        BAD("missing op");
    if (strcmp(name, "send") == 0) {
        op->kind = OP_SEND;
        return parse_send(op, max_body, code, message);
    }
    if (strcmp(name, "auth") == 0) {
        op->kind = OP_AUTH;
        op->token = json_string_value(json_object_get(op->root, "token"));
        if (!op->token || !*op->token)
            BAD("auth needs token");
        return 0;
    }
    if (strcmp(name, "sync") == 0) {
        op->kind = OP_SYNC;
        op->since = json_object_get(op->root, "since");
        if (op->since && !json_is_object(op->since) && !json_is_null(op->since))
            BAD("since must be an object of conversation id -> seq");
        if (json_is_null(op->since))
            op->since = NULL;
        return 0;
    }
    if (strcmp(name, "read") == 0) {
        op->kind = OP_READ;
        json_t *sv = json_object_get(op->root, "seq");
        op->conv = int_field(op->root, "conv");
        if (!op->conv || !json_is_integer(sv) || json_integer_value(sv) < 0)
            BAD("read needs conv and seq");
        op->seq = json_integer_value(sv);
        return 0;
    }
    if (strcmp(name, "typing") == 0) {
        op->kind = OP_TYPING;
        op->conv = int_field(op->root, "conv");
        if (!op->conv)
            BAD("typing needs conv");
        return 0;
    }
    if (strcmp(name, "ping") == 0) {
        op->kind = OP_PING;
        return 0;
    }
    BAD("unknown op");
}

#undef BAD

void proto_op_dispose(struct proto_op *op)
{
    if (op->root)
        json_decref(op->root);
    op->root = NULL;
}

void proto_handle(struct conn *c, const char *text, size_t len)
{
    struct proto_op op;
    const char *code = NULL, *message = NULL;
    int rc = proto_parse(text, len, (size_t)cfg_of(c)->max_body, &op, &code, &message);
    if (c->state == CONN_WS_AUTH) {
        /* The first frame must be a valid auth; anything else ends the connection. */
        if (rc == 0 && op.kind == OP_AUTH)
            op_auth(c, &op);
        else
            conn_close_ws(c, 4001, "expected an auth frame first");
    } else if (rc < 0 && op.kind == OP_AUTH) {
        conn_close_ws(c, 4001, "invalid token"); /* auth without a usable token */
    } else if (rc < 0) {
        send_error(c, op.id, code, message);
    } else {
        switch (op.kind) {
        case OP_NONE: break;
        case OP_AUTH: op_auth(c, &op); break;
        case OP_SEND: op_send(c, &op); break;
        case OP_SYNC: op_sync(c, &op); break;
        case OP_READ: op_read(c, &op); break;
        case OP_TYPING: op_typing(c, &op); break;
        case OP_PING: {
            json_t *p = json_pack("{s:s}", "op", "pong");
            conn_send_json(c, p);
            json_decref(p);
            break;
        }
        }
    }
    proto_op_dispose(&op);
}
