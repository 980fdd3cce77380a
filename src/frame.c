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

#define FRAME_JSON_STACK 4096 /* most frames' JSON fits: encoded once, then copied */

struct frame *frame_ws_json(const json_t *obj)
{
    /* Encoding is the cost, copying is not: a frame that fits the stack
     * buffer is encoded once and copied behind its header; a bigger one is
     * measured first, then encoded straight into the frame. */
    char tmp[FRAME_JSON_STACK];
    size_t n = json_dumpb(obj, tmp, sizeof tmp, JSON_COMPACT);
    size_t hl = ws_header_len(n);
    struct frame *f = frame_new(hl + n);
    ws_write_header(f->data, WS_OP_TEXT, n);
    if (n <= sizeof tmp)
        memcpy(f->data + hl, tmp, n);
    else
        json_dumpb(obj, (char *)f->data + hl, n, JSON_COMPACT);
    return f;
}

size_t frame_json_str_len(const char *s, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            len += 2;
        else if (c < 0x20)
            len += 6;
        else
            len += 1;
    }
    return len;
}

uint8_t *frame_json_str_put(uint8_t *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e = c == '"' ? '"' : c == '\\' ? '\\' : c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n'
               : c == '\r' ? 'r' : c == '\t' ? 't' : 0;
        if (e) {
            *p++ = '\\';
            *p++ = (uint8_t)e;
        } else if (c < 0x20) {
            memcpy(p, "\\u00", 4);
            p[4] = (uint8_t)hex[c >> 4];
            p[5] = (uint8_t)hex[c & 15];
            p += 6;
        } else {
            *p++ = c;
        }
    }
    *p++ = '"';
    return p;
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
