/* util: allocation wrappers, clock, and a growable byte buffer.
 * Allocation failure aborts here, in one place, so no caller has an untested
 * NULL branch (DESIGN.md, style rule 4). Everything else returns errors. */
#ifndef PARLEY_UTIL_H
#define PARLEY_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Wall clock in milliseconds since the Unix epoch (message ts, token times). */
int64_t util_now_ms(void);
/* Monotonic clock in milliseconds (timeouts, rate buckets). */
int64_t util_mono_ms(void);

/* A growable buffer. The owner of the struct owns `data`; buf_dispose frees it. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_dispose(struct buf *b);
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
/* Drops the first n bytes, keeping the rest. */
void buf_consume(struct buf *b, size_t n);

/* Characters (code points) of a valid UTF-8 string. */
size_t util_utf8_chars(const char *s);

/* Parses a decimal int64 that must fill the whole string; 0 or -1. */
int util_parse_i64(const char *s, int64_t *out);
/* A canonical id: the decimal digits of 1 to 2^53 - 1 and nothing else, no
 * sign, no leading zero, no space ("1" yes; "01", " 1", "+1", "1.0" no):
 * one id has one spelling. 0 or -1. */
int util_parse_id(const char *s, int64_t *out);

#endif
