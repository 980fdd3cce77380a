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
