/* hub: one worker's index of its authenticated connections, the local end of
 * fan-out. Owned by the core's per-worker state (struct chat_worker); only
 * that worker's thread calls these.
 *
 * It maps each user with a local connection to those connections and to the
 * conversations the user is in, and each such conversation to its local
 * users, so a conversation's event reaches its local members without a
 * database read, and the bus is told when a conversation gets its first
 * local member and loses its last (watch). */
#ifndef PARLEY_HUB_H
#define PARLEY_HUB_H

#include "idmap.h"
#include "worker.h"

#include <stddef.h>
#include <stdint.h>

/* Called when conv gets its first local user (on = 1) or loses its last. */
typedef void (*hub_watch_fn)(void *ctx, int64_t conv, int on);

struct hub {
    struct idmap users;   /* user id -> struct hub_user */
    struct idmap convs;   /* conv id -> struct hub_conv */
    hub_watch_fn watch;
    void *watch_ctx;
    uint32_t mark;        /* generation for de-duplicated deliveries */
};

struct hub_user {
    struct conn *head;    /* linked through conn->unext/uprev */
    int64_t *convs;       /* sorted; owned */
    size_t nconvs, capconvs;
    uint32_t mark;
};

void hub_init(struct hub *h, hub_watch_fn watch, void *ctx);
/* Frees the index (the connections are the worker's). */
void hub_dispose(struct hub *h);

/* Adds an authenticated connection (c->user_id set). Returns 1 when it is
 * the user's first local connection: then the caller gives the user's
 * conversations with hub_set_convs. */
int hub_add(struct hub *h, struct conn *c);
/* The user's conversations (any order, duplicates ignored). */
void hub_set_convs(struct hub *h, int64_t user, const int64_t *convs, size_t n);
/* Removes c. Returns 1 when it was the user's last local connection; then
 * the user leaves every conversation of the index. */
int hub_remove(struct hub *h, struct conn *c);

struct hub_user *hub_user(struct hub *h, int64_t user);
/* Whether the local user is in conv (0 for a user with no local connection). */
int hub_in_conv(struct hub *h, int64_t user, int64_t conv);
/* A local user joined or left conv (no-op for a user with no local connection). */
void hub_join(struct hub *h, int64_t user, int64_t conv);
void hub_leave(struct hub *h, int64_t user, int64_t conv);
/* The local users of conv (NULL, 0 if none). Valid until the hub changes. */
const int64_t *hub_conv_users(struct hub *h, int64_t conv, size_t *n);

/* Queues f, which holds nframes whole WebSocket frames, on every
 * authenticated connection of user, except the one with id except (0:
 * none). Returns how many connections got it. */
size_t hub_send_user_frames(struct hub *h, int64_t user, struct frame *f, uint32_t nframes, uint64_t except);
static inline size_t hub_send_user(struct hub *h, int64_t user, struct frame *f, uint64_t except)
{
    return hub_send_user_frames(h, user, f, 1, except);
}

#endif
