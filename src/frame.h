/* frame: immutable, reference-counted byte buffers that cross threads.
 *
 * An outgoing message is encoded once into a struct frame (a complete
 * WebSocket frame, or a whole HTTP response) and every recipient connection
 * holds one reference until its write completes (DESIGN.md rule 7).
 * A struct idlist is the same idea for a list of user ids (a conversation's
 * members, handed to every worker with the frame).
 * Once built, neither is written again, so any thread may read them; only the
 * reference count is atomic. */
#ifndef PARLEY_FRAME_H
#define PARLEY_FRAME_H

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct frame {
    atomic_uint refs;
    uint32_t len;
    uint8_t data[];
};

/* A frame of len bytes with one reference, contents to be filled by the
 * creator before it is shared. */
struct frame *frame_new(size_t len);
/* A complete WebSocket frame (FIN, no mask) with this payload. */
struct frame *frame_ws(int opcode, const void *payload, size_t len);
/* A WebSocket text frame holding the compact JSON encoding of obj. */
struct frame *frame_ws_json(const json_t *obj);
/* A JSON string literal of s[0..n) (valid UTF-8, may hold NUL bytes), for
 * frames written by hand: its length with the quotes, and writing it at p
 * (returns the end). Control characters are escaped, the rest is kept. */
size_t frame_json_str_len(const char *s, size_t n);
uint8_t *frame_json_str_put(uint8_t *p, const char *s, size_t n);
static inline struct frame *frame_ref(struct frame *f)
{
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}
void frame_unref(struct frame *f);

struct idlist {
    atomic_uint refs;
    uint32_t n;
    int64_t ids[];
};

/* A copy of ids[0..n) with one reference. */
struct idlist *idlist_new(const int64_t *ids, size_t n);
static inline struct idlist *idlist_ref(struct idlist *l)
{
    atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
    return l;
}
void idlist_unref(struct idlist *l);

#endif
