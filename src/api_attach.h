/* api_attach: the HTTP transport of attachments (PROTOCOL.md, version 2).
 *
 * POST /api/attachments?name=NAME: the body is streamed to a temporary file
 * under <data>/attachments/tmp/ as it arrives, hashed (SHA-256) on the way,
 * never held in memory; Content-Length is checked against PARLEY_MAX_UPLOAD
 * before a byte of it is read. Once whole, the core records it (JOB_ATTACH:
 * the store links or copies the file) and the answer is 201 {"attachment"}.
 *
 * GET / HEAD /api/attachments/{id}: the bytes to the uploader and to members
 * of a conversation where it was sent (else 404), with ETag (the SHA-256),
 * If-None-Match (304), one Range (206, 416), Content-Disposition, nosniff.
 * From a store that keeps a file (SQLite) the body is sent with sendfile
 * (conn_send_file: zero-copy); from one that does not (PostgreSQL) it is read
 * a chunk at a time (READ_ATT_CHUNK), the next one only once the socket has
 * taken the last (conn_on_drain).
 *
 * Runs on the connection's worker; api.c routes to it. */
#ifndef PARLEY_API_ATTACH_H
#define PARLEY_API_ATTACH_H

#include "http.h"
#include "worker.h"

#include <stdint.h>

struct config;

/* conn_handler.on_body_start for POST /api/attachments (see worker.h):
 * 1 with *sink filled, or -1 after answering (401, 400, 411, 413, 500). */
int api_attach_body_start(struct conn *c, struct http_req *r, struct http_sink *sink);
/* A complete request to /api/attachments or /api/attachments/{id}. */
void api_attach_handle(struct conn *c, struct http_req *r);

/* At start: creates <data>/attachments/tmp and removes what an earlier run
 * left there (uploads cut short by a crash). 0, or -1 with err. */
int api_attach_prepare(const struct config *cfg, char *err, size_t errlen);

/* ---- pure helpers (unit-tested) ---- */

/* The Range header h against a resource of size bytes: 0 no range, or one
 * to ignore (malformed, several ranges: the whole is sent), 1 one
 * satisfiable range [*start, *end] (inclusive, clamped to the size), -1 not
 * satisfiable (416). Forms: bytes=a-b, bytes=a-, bytes=-n. */
int api_attach_range(const char *h, int64_t size, int64_t *start, int64_t *end);
/* 1 if the If-None-Match value h names etag (a quoted entity tag; weak
 * comparison, "*" matches anything). */
int api_attach_etag_match(const char *h, const char *etag);
/* The Content-Disposition value (malloc'd): "inline" for the image types
 * the web client shows (PNG, JPEG, GIF, WebP), "attachment" otherwise, with
 * an ASCII filename= fallback and the exact name as filename*=UTF-8''...
 * (RFC 6266, RFC 8187). */
char *api_attach_disposition(const char *type, const char *name);

#endif
