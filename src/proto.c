/* proto: see proto.h. The WebSocket transport: parses and validates each
 * op, hands it to the core (chat.h), and shapes the answers. */
#include "proto.h"

#include "auth.h"
#include "chat.h"
#include "chat_limits.h"
#include "chat_sync.h"
#include "config.h"
#include "log.h"
#include "ws.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const struct config *cfg_of(struct chat_worker *cw)
{
    return cw->chat->cfg;
}

static void send_error(struct conn *c, const char *id, const char *code, const char *message)
{
    json_t *e = json_pack("{s:s,s:s,s:s}", "op", "error", "code", code, "message", message);
    if (id)
        json_object_set_new(e, "id", json_string(id));
    conn_send_json(c, e);
    json_decref(e);
}

static void send_rc_error(struct conn *c, const char *id, int rc, int unavailable);

/* A job's refusal, with its own explanation when it has one. */
static void send_job_error(struct conn *c, const char *id, int rc, int unavailable, const char *why)
{
    if (rc == STORE_BAD_REQUEST && !unavailable)
        send_error(c, id, "bad_request", why ? why : "not allowed here");
    else
        send_rc_error(c, id, rc, unavailable);
}

static void send_rc_error(struct conn *c, const char *id, int rc, int unavailable)
{
    if (unavailable == JOB_BUSY)
        send_error(c, id, "unavailable", "server busy; retry shortly");
    else if (unavailable || rc == STORE_UNAVAILABLE)
        send_error(c, id, "unavailable", "temporarily unavailable (shutting down, or the database is unreachable); retry");
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

/* ---- ops ---- */

static void op_auth(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    struct jwt_claims cl;
    int rc = auth_verify(cfg_of(cw), op->token, strlen(op->token), &cl);
    if (rc != JWT_OK) {
        conn_close_ws(c, 4001, rc == JWT_EXPIRED ? "token expired" : "invalid token");
        return;
    }
    if (c->state == CONN_WS_AUTH) {
        chat_session_start(cw, c, &cl);
        return;
    }
    if (cl.sub != c->user_id) {
        send_error(c, NULL, "forbidden", "token belongs to another user");
        return;
    }
    chat_session_renew(cw, c, &cl);
}

/* {"op":"ack","id":ID,"conv":C,"seq":S,"<last>":V}, written by hand: one per
 * send, and building a json_t to encode it cost about a microsecond, a
 * fifteenth of a send's whole cost on the server (docs/BENCHMARKS.md). The
 * same object, keys in the same order, as json_pack made. */
static void send_ack(struct conn *c, const char *id, int64_t conv, int64_t seq, const char *last, int64_t v)
{
    char head[] = "{\"op\":\"ack\",\"id\":", tail[128];
    size_t id_len = strlen(id);
    int tn = snprintf(tail, sizeof tail, ",\"conv\":%lld,\"seq\":%lld,\"%s\":%lld}", (long long)conv,
                      (long long)seq, last, (long long)v);
    size_t n = sizeof head - 1 + frame_json_str_len(id, id_len) + (size_t)tn;
    size_t hl = ws_header_len(n);
    struct frame *f = frame_new(hl + n);
    ws_write_header(f->data, WS_OP_TEXT, n);
    uint8_t *p = f->data + hl;
    memcpy(p, head, sizeof head - 1);
    p = frame_json_str_put(p + sizeof head - 1, id, id_len);
    memcpy(p, tail, (size_t)tn);
    conn_send(c, f);
    conn_urgent(c);
    frame_unref(f);
}

static void send_answered(struct job *j)
{
    struct conn *c = j->conn;
    struct job_send *s = &j->u.send;
    if (c->state != CONN_WS)
        return; /* the client will resend after reconnecting; the id keeps it idempotent */
    if (j->rc != STORE_OK) {
        send_job_error(c, s->client_id, j->rc, j->unavailable, s->why);
        return;
    }
    send_ack(c, s->client_id, s->conv, s->seq, "ts", s->ts);
}

/* The ack of an edit, delete or react: after the commit, and after the
 * update frame went to every member connection (the writer published it
 * before posting the job back). */
static void change_answered(struct job *j)
{
    struct conn *c = j->conn;
    struct job_change *ch = &j->u.change;
    const char *id = ch->request_id;
    if (c->state != CONN_WS)
        return;
    if (j->rc != STORE_OK) {
        int status;
        const char *code, *message;
        if (proto_change_refusal(j, &status, &code, &message) == 0)
            send_error(c, id, code, message);
        else
            send_rc_error(c, id, j->rc, j->unavailable);
        return;
    }
    send_ack(c, id, ch->conv, ch->seq, "mod", ch->mod);
}

int proto_change_refusal(const struct job *j, int *status, const char **code, const char **message)
{
    const struct job_change *ch = &j->u.change;
    if (j->unavailable)
        return -1;
    switch (j->rc) {
    case STORE_NOT_FOUND:
        *status = 404, *code = "not_found", *message = "no such conversation or message";
        return 0;
    case STORE_FORBIDDEN:
        *status = 403, *code = "forbidden";
        *message = ch->kind == CHANGE_EDIT ? "only the sender may edit a message"
                                           : "only the sender, or a group's owner or admin, may delete a message";
        return 0;
    case STORE_BAD_REQUEST:
        *status = 400, *code = "bad_request", *message = ch->why ? ch->why : "not allowed on this message";
        return 0;
    }
    return -1;
}

/* A change job of kind from a parsed op (owned copies). */
struct job *proto_change_job(struct chat_worker *cw, struct conn *c, enum store_change_kind kind, int64_t user,
                             int64_t conv, int64_t seq, const char *text, size_t text_len, job_done_fn reply)
{
    struct job *j = chat_job(cw, JOB_CHANGE, c, reply);
    struct job_change *ch = &j->u.change;
    ch->kind = kind;
    ch->user = user;
    ch->conv = conv;
    ch->seq = seq;
    if (text) {
        ch->text = xmalloc(text_len + 1);
        memcpy(ch->text, text, text_len);
        ch->text[text_len] = '\0';
        ch->text_len = text_len;
    }
    return j;
}

static void op_change(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    enum store_change_kind kind = op->kind == OP_EDIT     ? CHANGE_EDIT
                                  : op->kind == OP_DELETE ? CHANGE_DELETE
                                  : op->on                ? CHANGE_REACT_ON
                                                          : CHANGE_REACT_OFF;
    const char *text = op->kind == OP_EDIT ? op->body : op->kind == OP_REACT ? op->emoji : NULL;
    size_t len = op->kind == OP_EDIT ? op->body_len : text ? strlen(text) : 0;
    struct job *j = proto_change_job(cw, c, kind, c->user_id, op->conv, op->seq, text, len, change_answered);
    j->u.change.request_id = xstrdup(op->id);
    int64_t retry;
    if (chat_change(cw, j, &retry) < 0)
        send_error(c, op->id, "rate_limited", "too many changes; slow down");
}

/* Fills a send job from a parsed message (shared with HTTP's POST .../messages). */
void proto_fill_send(struct job *j, int64_t user, int64_t conv, const struct proto_op *m)
{
    struct job_send *s = &j->u.send;
    s->sender = user;
    s->conv = conv;
    s->client_id = xstrdup(m->id);
    s->body_len = m->body_len;
    s->body = xmalloc(m->body_len + 1);
    memcpy(s->body, m->body, m->body_len);
    s->body[m->body_len] = '\0'; /* m->body may point into a frame's text (the fast path) */
    s->reply_to = m->reply_to;
    s->n_att = json_array_size(m->att);
    if (s->n_att) {
        s->att = xmalloc(s->n_att * sizeof *s->att);
        for (size_t i = 0; i < s->n_att; i++)
            s->att[i] = xstrdup(json_string_value(json_array_get(m->att, i)));
    }
}

static void op_send(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    struct job *j = chat_job(cw, JOB_SEND, c, send_answered);
    proto_fill_send(j, c->user_id, op->conv, op);
    int64_t retry;
    if (chat_send(cw, j, &retry) < 0)
        send_error(c, op->id, "rate_limited", "too many messages; slow down");
}

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* since (and mods): canonical conversation ids only ("1", never "01", " 1"
 * or "+1": one conversation, one key), each with an integer >= 0; anything
 * else is ignored, as is a key repeated. Gives the ids sorted, and the
 * position of each (malloc'd). */
static size_t positions(json_t *obj, int64_t **conv_out, int64_t **after_out)
{
    size_t n = 0, cap = obj ? json_object_size(obj) : 0;
    int64_t *pairs = xmalloc((cap ? cap : 1) * 2 * sizeof *pairs);
    const char *key;
    json_t *v;
    if (obj)
        json_object_foreach(obj, key, v) {
            int64_t conv;
            if (util_parse_id(key, &conv) < 0 || !json_is_integer(v) || json_integer_value(v) < 0)
                continue;
            pairs[2 * n] = conv;
            pairs[2 * n + 1] = (int64_t)json_integer_value(v);
            n++;
        }
    qsort(pairs, n, 2 * sizeof *pairs, cmp_pair);
    int64_t *conv = xmalloc((n ? n : 1) * sizeof *conv), *after = xmalloc((n ? n : 1) * sizeof *after);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && conv[m - 1] == pairs[2 * i])
            continue;
        conv[m] = pairs[2 * i];
        after[m++] = pairs[2 * i + 1];
    }
    free(pairs);
    *conv_out = conv;
    *after_out = after;
    return m;
}

/* The answer is produced in parts (chat_sync.c). */
static void op_sync(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    int64_t *conv, *after, *mconv, *mafter;
    size_t n = positions(op->since, &conv, &after);
    size_t mn = positions(op->mods, &mconv, &mafter);
    chat_sync(cw, c, conv, after, n, mconv, mafter, mn);
}

static void read_answered(struct job *j)
{
    if (j->rc != STORE_OK && j->conn->state == CONN_WS)
        send_rc_error(j->conn, NULL, j->rc, j->unavailable);
}

static void op_read(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    int64_t retry;
    int admit = chat_read_admit(cw, c->user_id, op->conv, op->seq, &retry);
    if (admit < 0) {
        send_error(c, NULL, "rate_limited", "too many reads; slow down");
        return;
    }
    if (admit > 0)
        return; /* at or below the position already stored: nothing would change */
    struct job *j = chat_job(cw, JOB_READ, c, read_answered);
    j->u.read.user = c->user_id;
    j->u.read.conv = op->conv;
    j->u.read.seq = op->seq;
    chat_submit(cw, j);
}

static void op_typing(struct chat_worker *cw, struct conn *c, const struct proto_op *op)
{
    if (chat_typing(cw, c, op->conv) != STORE_OK)
        send_error(c, NULL, "not_found", "no such conversation");
}

/* ---- parsing ---- */

/* obj's "id" into op->id: a string of 1-128 characters without NUL, or -1
 * and op->id NULL (not echoed: it is not a valid id). */
static int check_id(json_t *obj, struct proto_op *op)
{
    json_t *idv = json_object_get(obj, "id");
    op->id = json_string_value(idv);
    if (!op->id || json_string_length(idv) < 1 || strlen(op->id) != json_string_length(idv) ||
        util_utf8_chars(op->id) > 128) {
        op->id = NULL;
        return -1;
    }
    return 0;
}

#define BAD(msg) do { *code = "bad_request"; *message = (msg); return -1; } while (0)

int proto_check_message(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                        const char **message)
{
    json_t *bv = json_object_get(obj, "body");
    if (check_id(obj, op) < 0)
        BAD("id must be a string of 1-128 characters");
    json_t *rv = json_object_get(obj, "reply_to"), *av = json_object_get(obj, "attachments");
    if (rv && !json_is_null(rv) && !(op->reply_to = proto_json_id(rv)))
        BAD("reply_to must be the seq of a message of the conversation");
    if (av && !json_is_null(av)) {
        size_t i, n = json_array_size(av);
        json_t *a;
        if (!json_is_array(av) || n > STORE_MAX_ATTACH)
            BAD("attachments must be an array of at most 10 attachment ids");
        json_array_foreach(av, i, a) {
            size_t l = json_string_length(a);
            if (!json_is_string(a) || l < 1 || l > 64 || strlen(json_string_value(a)) != l)
                BAD("attachments must be an array of attachment ids");
        }
        op->att = n ? av : NULL;
    }
    if (!json_is_string(bv) || (json_string_length(bv) < 1 && !op->att))
        BAD("body must be a non-empty string (or \"\" with attachments)");
    op->body = json_string_value(bv);
    op->body_len = json_string_length(bv);
    if (op->body_len > max_body) {
        *code = "too_large";
        *message = "body too large";
        return -1;
    }
    return 0;
}

int proto_check_edit_body(json_t *obj, size_t max_body, struct proto_op *op, const char **code,
                          const char **message)
{
    json_t *bv = json_object_get(obj, "body");
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

/* One code point of UTF-8 at p (valid: the frame was checked), its length in *n. */
static uint32_t utf8_next(const unsigned char *p, size_t left, size_t *n)
{
    if (p[0] < 0x80 || left < 2) {
        *n = 1;
        return p[0];
    }
    if (p[0] < 0xe0) {
        *n = 2;
        return (uint32_t)(p[0] & 0x1f) << 6 | (p[1] & 0x3f);
    }
    if (p[0] < 0xf0 || left < 4) {
        *n = left < 3 ? left : 3;
        return *n < 3 ? 0 : (uint32_t)(p[0] & 0x0f) << 12 | (uint32_t)(p[1] & 0x3f) << 6 | (p[2] & 0x3f);
    }
    *n = 4;
    return (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3f) << 12 | (uint32_t)(p[2] & 0x3f) << 6 | (p[3] & 0x3f);
}

/* Unicode's White_Space and the C0/C1 controls. */
static int space_or_control(uint32_t c)
{
    return c <= 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000 || c == 0xfeff;
}

int proto_emoji_ok(const char *e, size_t len)
{
    if (!e || len < 1 || len > 32 || strlen(e) != len || !ws_utf8_valid((const uint8_t *)e, len))
        return 0;
    const unsigned char *p = (const unsigned char *)e;
    for (size_t i = 0, n; i < len; i += n)
        if (space_or_control(utf8_next(p + i, len - i, &n)))
            return 0;
    return 1;
}

/* Punctuation and symbols that separate words beyond ASCII: Latin-1's,
 * the general punctuation block, and CJK punctuation. */
static int separator(uint32_t c)
{
    if (c < 0x80)
        return !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
    return space_or_control(c) || (c >= 0xa1 && c <= 0xbf) || c == 0xd7 || c == 0xf7 ||
           (c >= 0x2000 && c <= 0x206f) || (c >= 0x3000 && c <= 0x303f) || (c >= 0xfe30 && c <= 0xfe4f) ||
           (c >= 0xff01 && c <= 0xff0f);
}

size_t proto_search_words(const char *q, size_t len, size_t max_word, size_t max_words, struct buf *out)
{
    const unsigned char *p = (const unsigned char *)q;
    size_t n = 0, i = 0;
    if (!ws_utf8_valid(p, len))
        return 0;
    while (i < len && n < max_words) {
        size_t k;
        while (i < len && separator(utf8_next(p + i, len - i, &k)))
            i += k;
        size_t start = i;
        while (i < len && !separator(utf8_next(p + i, len - i, &k)))
            i += k;
        if (i == start)
            break;
        size_t wl = i - start;
        if (wl > max_word) { /* cut at a character boundary */
            wl = max_word;
            while (wl > 0 && (p[start + wl] & 0xc0) == 0x80)
                wl--;
        }
        buf_append(out, q + start, wl);
        buf_append(out, "", 1);
        n++;
    }
    return n;
}

/* edit, delete, react: {"id","conv","seq"} */
static int parse_change(struct proto_op *op, const char **code, const char **message)
{
    if (check_id(op->root, op) < 0)
        BAD("id must be a string of 1-128 characters");
    op->conv = int_field(op->root, "conv");
    op->seq = int_field(op->root, "seq");
    if (!op->conv || !op->seq)
        BAD("needs conv and seq: the message");
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

/* The end of the number token at p (JSON grammar; p < end is '-' or a digit). */
static const char *number_end(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-'))
        p++;
    return p;
}

/* Whether jansson can hold the number text[0..n): an integer within
 * json_int_t, or a real that does not overflow a double. */
static int number_fits(const char *t, size_t n)
{
    char buf[512];
    if (n >= sizeof buf)
        return 0;
    memcpy(buf, t, n);
    buf[n] = '\0';
    char *e;
    errno = 0;
    if (!strpbrk(buf, ".eE")) {
        (void)strtoll(buf, &e, 10);
        return errno != ERANGE;
    }
    double d = strtod(buf, &e);
    return errno != ERANGE || d == 0.0; /* underflow to 0 is what jansson does too */
}

/* A copy of text with every number jansson would refuse replaced by null
 * (strings are skipped: their escapes are not numbers). */
static char *nullify_big_numbers(const char *text, size_t len, size_t *out_len)
{
    struct buf b = {0};
    const char *p = text, *end = text + len, *copied = text;
    int in_str = 0;
    while (p < end) {
        char ch = *p;
        if (in_str) {
            if (ch == '\\' && p + 1 < end)
                p++;
            else if (ch == '"')
                in_str = 0;
            p++;
        } else if (ch == '"') {
            in_str = 1;
            p++;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            const char *q = number_end(p, end);
            if (!number_fits(p, (size_t)(q - p))) {
                buf_append(&b, copied, (size_t)(p - copied));
                buf_append(&b, "null", 4);
                copied = q;
            }
            p = q;
        } else {
            p++;
        }
    }
    buf_append(&b, copied, (size_t)(end - copied));
    *out_len = b.len;
    return b.data;
}

json_t *proto_json_load(const char *text, size_t len)
{
    json_error_t err;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (v || json_error_code(&err) != json_error_numeric_overflow)
        return v;
    size_t n;
    char *fixed = nullify_big_numbers(text, len, &n);
    v = json_loadb(fixed, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    free(fixed);
    return v;
}

/* ---- the fast path of the commonest frame ---- */
/*
 * {"op":"send","id":"...","conv":N,"body":"..."} is most of what clients
 * send, and jansson's tree for it (an object, its table, four keys, four
 * values, a dozen allocations and frees) cost more than anything else on the
 * worker's side of a send. This reads exactly that shape straight from the
 * text: the four keys once each in any order, strings without a backslash
 * or a control character, conv a plain integer, JSON whitespace between.
 * Anything else (escapes, other keys, version 2's reply_to or attachments,
 * a malformed frame) returns 0 and the frame goes through jansson as
 * before, so an answer never depends on which path read it (the fuzz
 * target fuzz_proto checks that the two agree). */

struct scan {
    const char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int scan_char(struct scan *s, char ch)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p != ch)
        return 0;
    s->p++;
    return 1;
}

/* A string with no escape and no control character; *str, *n: its bytes. */
static int scan_plain_string(struct scan *s, const char **str, size_t *n)
{
    if (!scan_char(s, '"'))
        return 0;
    const char *start = s->p;
    while (s->p < s->end && *s->p != '"') {
        unsigned char ch = (unsigned char)*s->p;
        if (ch < 0x20 || ch == '\\')
            return 0;
        s->p++;
    }
    if (s->p >= s->end)
        return 0;
    *str = start;
    *n = (size_t)(s->p - start);
    s->p++;
    return ws_utf8_valid((const uint8_t *)start, *n);
}

/* An integer as JSON writes it (no leading zero, no fraction or exponent)
 * within int64. */
static int scan_int(struct scan *s, int64_t *v)
{
    skip_ws(s);
    const char *start = s->p;
    int neg = s->p < s->end && *s->p == '-';
    if (neg)
        s->p++;
    if (s->p >= s->end || *s->p < '0' || *s->p > '9' || (*s->p == '0' && s->p + 1 < s->end && s->p[1] >= '0' &&
                                                           s->p[1] <= '9'))
        return 0;
    uint64_t u = 0;
    for (; s->p < s->end && *s->p >= '0' && *s->p <= '9'; s->p++) {
        if (u > (UINT64_MAX - 9) / 10)
            return 0;
        u = u * 10 + (uint64_t)(*s->p - '0');
    }
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return 0;
    if (u > (uint64_t)INT64_MAX || s->p - start > 19)
        return 0;
    *v = neg ? -(int64_t)u : (int64_t)u;
    return 1;
}

/* 1: text was a plain send and op holds it (valid or refused exactly as the
 * slow path would: *rc, *code, *message); 0: not that shape, use jansson. */
static int parse_send_fast(const char *text, size_t len, size_t max_body, struct proto_op *op, int *rc,
                           const char **code, const char **message)
{
    struct scan s = {text, text + len};
    const char *id = NULL, *body = NULL, *opname = NULL;
    size_t id_len = 0, body_len = 0, op_len = 0;
    int64_t conv = 0;
    int seen_conv = 0;

    if (!scan_char(&s, '{'))
        return 0;
    for (int k = 0; k < 4; k++) {
        const char *key;
        size_t kl;
        if ((k && !scan_char(&s, ',')) || !scan_plain_string(&s, &key, &kl) || !scan_char(&s, ':'))
            return 0;
        if (kl == 2 && !memcmp(key, "op", 2) && !opname) {
            if (!scan_plain_string(&s, &opname, &op_len))
                return 0;
        } else if (kl == 2 && !memcmp(key, "id", 2) && !id) {
            if (!scan_plain_string(&s, &id, &id_len))
                return 0;
        } else if (kl == 4 && !memcmp(key, "body", 4) && !body) {
            if (!scan_plain_string(&s, &body, &body_len))
                return 0;
        } else if (kl == 4 && !memcmp(key, "conv", 4) && !seen_conv) {
            if (!scan_int(&s, &conv))
                return 0;
            seen_conv = 1;
        } else {
            return 0;
        }
    }
    if (!scan_char(&s, '}'))
        return 0;
    skip_ws(&s);
    if (s.p != s.end || op_len != 4 || memcmp(opname, "send", 4))
        return 0;
    /* the slow path's checks, in its order (proto_check_message, parse_send) */
    op->kind = OP_SEND;
    *rc = -1;
    *code = "bad_request";
    if (id_len < 1 || id_len >= sizeof op->id_buf) {
        *message = "id must be a string of 1-128 characters";
        return 1;
    }
    memcpy(op->id_buf, id, id_len);
    op->id_buf[id_len] = '\0';
    if (util_utf8_chars(op->id_buf) > 128) {
        *message = "id must be a string of 1-128 characters";
        return 1;
    }
    op->id = op->id_buf;
    if (body_len < 1) {
        *message = "body must be a non-empty string (or \"\" with attachments)";
        return 1;
    }
    op->body = body;
    op->body_len = body_len;
    if (body_len > max_body) {
        *code = "too_large";
        *message = "body too large";
        return 1;
    }
    if (conv <= 0) {
        *message = "send needs conv: a conversation id";
        return 1;
    }
    op->conv = conv;
    *rc = 0;
    *code = NULL;
    return 1;
}

int proto_parse(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
                const char **message)
{
    int rc;
    memset(op, 0, offsetof(struct proto_op, id_buf));
    if (parse_send_fast(text, len, max_body, op, &rc, code, message))
        return rc;
    return proto_parse_json(text, len, max_body, op, code, message);
}

int proto_parse_json(const char *text, size_t len, size_t max_body, struct proto_op *op, const char **code,
                     const char **message)
{
    memset(op, 0, offsetof(struct proto_op, id_buf));
    op->root = proto_json_load(text, len);
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
        op->mods = json_object_get(op->root, "mods");
        if (op->mods && !json_is_object(op->mods) && !json_is_null(op->mods))
            BAD("mods must be an object of conversation id -> mod");
        if (json_is_null(op->mods))
            op->mods = NULL;
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
    if (strcmp(name, "edit") == 0) {
        op->kind = OP_EDIT;
        if (parse_change(op, code, message) < 0)
            return -1;
        return proto_check_edit_body(op->root, max_body, op, code, message);
    }
    if (strcmp(name, "delete") == 0) {
        op->kind = OP_DELETE;
        return parse_change(op, code, message);
    }
    if (strcmp(name, "react") == 0) {
        op->kind = OP_REACT;
        if (parse_change(op, code, message) < 0)
            return -1;
        json_t *ev = json_object_get(op->root, "emoji"), *onv = json_object_get(op->root, "on");
        op->emoji = json_string_value(ev);
        if (!op->emoji || !proto_emoji_ok(op->emoji, json_string_length(ev)))
            BAD("emoji must be 1-32 bytes of UTF-8 without whitespace or control characters");
        if (!json_is_boolean(onv))
            BAD("react needs on: true or false");
        op->on = json_is_true(onv);
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

void proto_handle(void *ctx, struct conn *c, const char *text, size_t len)
{
    struct chat_worker *cw = ctx;
    struct proto_op op;
    const char *code = NULL, *message = NULL;
    int rc = proto_parse(text, len, (size_t)cfg_of(cw)->max_body, &op, &code, &message);
    if (c->state == CONN_WS_AUTH) {
        /* The first frame must be a valid auth; anything else ends the connection. */
        if (rc == 0 && op.kind == OP_AUTH)
            op_auth(cw, c, &op);
        else
            conn_close_ws(c, 4001, "expected an auth frame first");
    } else if (rc < 0 && op.kind == OP_AUTH) {
        conn_close_ws(c, 4001, "invalid token"); /* auth without a usable token */
    } else if (rc < 0) {
        send_error(c, op.id, code, message);
    } else {
        switch (op.kind) {
        case OP_NONE: break;
        case OP_AUTH: op_auth(cw, c, &op); break;
        case OP_SEND: op_send(cw, c, &op); break;
        case OP_SYNC: op_sync(cw, c, &op); break;
        case OP_READ: op_read(cw, c, &op); break;
        case OP_TYPING: op_typing(cw, c, &op); break;
        case OP_EDIT:
        case OP_DELETE:
        case OP_REACT: op_change(cw, c, &op); break;
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
