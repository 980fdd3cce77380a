/* accounts: signup, login, refresh and logout as the core runs them:
 * password hashing on libuv's thread pool under the process-wide cap
 * (PARLEY_MAX_HASHES), constant-time answers for unknown users, new token
 * families, rotation with reuse detection (chat_tx.c), revocation.
 *
 * The transport (api.c) validates the request and shapes the answer; it
 * gets exactly one call of its reply function per request, on the
 * connection's worker, only while the connection is still answering HTTP. */
#ifndef PARLEY_ACCOUNTS_H
#define PARLEY_ACCOUNTS_H

#include "chat.h"

struct account_answer {
    int status;                 /* 200, 201, 204, or an HTTP error status */
    const char *code, *message; /* the error's, when status >= 400 */
    int64_t retry_ms;           /* > 0: say Retry-After */
    json_t *user;               /* 200/201 with tokens: borrowed */
    const char *refresh_token;  /* 200/201 with tokens: borrowed */
};

typedef void (*account_reply_fn)(struct conn *c, const struct account_answer *a);

/* username: already folded and checked (3-32 of a-z0-9_.-); display_name may
 * be NULL; the password is copied (and wiped after hashing). */
void accounts_signup(struct chat_worker *cw, struct conn *c, const char *username, const char *display_name,
                     const char *password, size_t password_len, account_reply_fn reply);
/* username: folded, or NULL when it cannot be a username (the answer is the
 * same 401 after the same work). */
void accounts_login(struct chat_worker *cw, struct conn *c, const char *username, const char *password,
                    size_t password_len, account_reply_fn reply);
void accounts_refresh(struct chat_worker *cw, struct conn *c, const char *refresh_token, account_reply_fn reply);
void accounts_logout(struct chat_worker *cw, struct conn *c, const char *refresh_token, account_reply_fn reply);

#endif
