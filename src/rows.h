/* rows: the JSON objects of PROTOCOL.md built from plain values, written
 * once for every store backend (and for the frames built from a job). Each
 * returns a new reference, or NULL when jansson refuses a value (invalid
 * UTF-8 in stored text). Text arguments are borrowed. */
#ifndef PARLEY_ROWS_H
#define PARLEY_ROWS_H

#include "store.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* {"id","username","display_name","created_at"} */
json_t *rows_user(int64_t id, const char *username, const char *display_name, int64_t created_at);
/* {"id","username","display_name","role"} */
json_t *rows_member(int64_t id, const char *username, const char *display_name, const char *role);
/* {"conv","seq","from","id","body","ts"}; body may hold NUL bytes. */
json_t *rows_msg(int64_t conv, int64_t seq, int64_t from, const char *client_id, const char *body,
                 size_t body_len, int64_t ts);
/* The shared part of a conversation: {"id","kind","title","members":[],
 * "last_seq","last_message","created_at"}; last_message is stolen (NULL:
 * null). The viewer's part is added by rows_conv_view. */
json_t *rows_conv_shared(int64_t id, const char *kind, const char *title, int64_t last_seq,
                         json_t *last_message, int64_t created_at);
/* Adds "last_read_seq" and "unread" (last_seq - last_read_seq, never below 0). */
void rows_conv_view(json_t *conv, int64_t last_read_seq);
/* Version 2: the fields of a message that apply (absent otherwise). */
struct rows_msg_v2 {
    int64_t reply_to;      /* 0: none */
    json_t *attachments;   /* stolen; NULL or empty: none */
    int64_t edited_at;     /* 0: never edited */
    int deleted;           /* 1: a tombstone (the body must already be "") */
    json_t *reactions;     /* stolen; NULL or empty: none */
    int64_t mod;           /* 0: never changed */
};
/* Adds x's fields to msg (a rows_msg object); msg NULL: only frees x's. */
void rows_msg_v2(json_t *msg, struct rows_msg_v2 *x);
/* {"id","name","type","size"} */
json_t *rows_attachment(const char *id, const char *name, const char *type, int64_t size);
/* Adds user to the users of emoji in reactions ({"emoji":[ids]}), in the
 * order the rows come (each reaction row in the order it was made). */
void rows_reaction_add(json_t *reactions, const char *emoji, int64_t user);
/* A search result: {"conv","seq","from","body","ts"}. */
json_t *rows_search_hit(int64_t conv, int64_t seq, int64_t from, const char *body, size_t body_len, int64_t ts);

/* {"conv","last_seq","last_read_seq","unread"} */
json_t *rows_summary(int64_t conv, int64_t last_seq, int64_t last_read_seq);

#endif
