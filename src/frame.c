/* frame: see frame.h. */
#include "frame.h"

#include "util.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

struct frame *frame_new(size_t len)
{
    struct frame *f = xmalloc(sizeof *f + len);
    atomic_init(&f->refs, 1);
    f->len = (uint32_t)len;
    return f;
}

struct frame *frame_ws(int opcode, const void *payload, size_t len)
{
    size_t hl = ws_header_len(len);
    struct frame *f = frame_new(hl + len);
    ws_write_header(f->data, opcode, len);
    if (len)
        memcpy(f->data + hl, payload, len);
    return f;
}

struct frame *frame_ws_json(const json_t *obj)
{
    /* Encode straight into the frame: ask for the length first, so the JSON
     * text is written once, after the header, with no intermediate copy. */
    size_t n = json_dumpb(obj, NULL, 0, JSON_COMPACT);
    size_t hl = ws_header_len(n);
    struct frame *f = frame_new(hl + n);
    ws_write_header(f->data, WS_OP_TEXT, n);
    json_dumpb(obj, (char *)f->data + hl, n, JSON_COMPACT);
    return f;
}

void frame_unref(struct frame *f)
{
    if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1)
        free(f);
}

struct idlist *idlist_new(const int64_t *ids, size_t n)
{
    struct idlist *l = xmalloc(sizeof *l + n * sizeof ids[0]);
    atomic_init(&l->refs, 1);
    l->n = (uint32_t)n;
    if (n)
        memcpy(l->ids, ids, n * sizeof ids[0]);
    return l;
}

void idlist_unref(struct idlist *l)
{
    if (l && atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1)
        free(l);
}
