/* rows: see rows.h. */
#include "rows.h"

json_t *rows_user(int64_t id, const char *username, const char *display_name, int64_t created_at)
{
    return json_pack("{sI ss ss sI}", "id", (json_int_t)id, "username", username, "display_name", display_name,
                     "created_at", (json_int_t)created_at);
}

json_t *rows_member(int64_t id, const char *username, const char *display_name, const char *role)
{
    return json_pack("{sI ss ss ss}", "id", (json_int_t)id, "username", username, "display_name", display_name,
                     "role", role);
}

json_t *rows_msg(int64_t conv, int64_t seq, int64_t from, const char *client_id, const char *body,
                 size_t body_len, int64_t ts)
{
    if (!body || !client_id)
        return NULL;
    return json_pack("{sI sI sI ss ss% sI}", "conv", (json_int_t)conv, "seq", (json_int_t)seq, "from",
                     (json_int_t)from, "id", client_id, "body", body, body_len, "ts", (json_int_t)ts);
}

json_t *rows_conv_shared(int64_t id, const char *kind, const char *title, int64_t last_seq,
                         json_t *last_message, int64_t created_at)
{
    return json_pack("{sI ss ss? so sI so sI}", "id", (json_int_t)id, "kind", kind, "title", title, "members",
                     json_array(), "last_seq", (json_int_t)last_seq, "last_message",
                     last_message ? last_message : json_null(), "created_at", (json_int_t)created_at);
}

void rows_conv_view(json_t *conv, int64_t last_read_seq)
{
    int64_t last = (int64_t)json_integer_value(json_object_get(conv, "last_seq"));
    json_object_set_new(conv, "last_read_seq", json_integer(last_read_seq));
    json_object_set_new(conv, "unread", json_integer(last > last_read_seq ? last - last_read_seq : 0));
}

json_t *rows_summary(int64_t conv, int64_t last_seq, int64_t last_read_seq)
{
    return json_pack("{sI sI sI sI}", "conv", (json_int_t)conv, "last_seq", (json_int_t)last_seq,
                     "last_read_seq", (json_int_t)last_read_seq, "unread",
                     (json_int_t)(last_seq > last_read_seq ? last_seq - last_read_seq : 0));
}

void rows_msg_v2(json_t *msg, struct rows_msg_v2 *x)
{
    if (msg && x->reply_to > 0)
        json_object_set_new(msg, "reply_to", json_integer(x->reply_to));
    if (msg && x->attachments && json_array_size(x->attachments))
        json_object_set(msg, "attachments", x->attachments);
    if (msg && x->edited_at > 0)
        json_object_set_new(msg, "edited_at", json_integer(x->edited_at));
    if (msg && x->deleted)
        json_object_set_new(msg, "deleted", json_true());
    if (msg && x->reactions && json_object_size(x->reactions))
        json_object_set(msg, "reactions", x->reactions);
    if (msg && x->mod > 0)
        json_object_set_new(msg, "mod", json_integer(x->mod));
    json_decref(x->attachments);
    json_decref(x->reactions);
    x->attachments = x->reactions = NULL;
}

json_t *rows_attachment(const char *id, const char *name, const char *type, int64_t size)
{
    return json_pack("{ss ss ss sI}", "id", id, "name", name, "type", type, "size", (json_int_t)size);
}

void rows_reaction_add(json_t *reactions, const char *emoji, int64_t user)
{
    json_t *users = json_object_get(reactions, emoji);
    if (!users) {
        users = json_array();
        if (json_object_set_new(reactions, emoji, users) != 0)
            return; /* not UTF-8: jansson refused the key */
    }
    json_array_append_new(users, json_integer(user));
}

json_t *rows_search_hit(int64_t conv, int64_t seq, int64_t from, const char *body, size_t body_len, int64_t ts)
{
    if (!body)
        return NULL;
    return json_pack("{sI sI sI ss% sI}", "conv", (json_int_t)conv, "seq", (json_int_t)seq, "from", (json_int_t)from,
                     "body", body, body_len, "ts", (json_int_t)ts);
}
