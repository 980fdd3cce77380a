/* auth: access tokens as the server uses them: verifying a bearer header or
 * a raw token against the configured key, and issuing the token answer of
 * signup/login/refresh. Stateless (the key is read-only config). */
#ifndef PARLEY_AUTH_H
#define PARLEY_AUTH_H

#include "config.h"
#include "jwt.h"

#include <jansson.h>

#define AUTH_MISSING (-10)

/* Verifies a raw token. JWT_OK or a negative jwt_rc. */
int auth_verify(const struct config *cfg, const char *token, size_t len, struct jwt_claims *out);
/* Verifies "Bearer <token>" (NULL or another scheme: AUTH_MISSING). */
int auth_bearer(const struct config *cfg, const char *header, struct jwt_claims *out);
/* {"user","access_token","refresh_token","expires_in"}; takes a new reference to user. */
json_t *auth_token_answer(const struct config *cfg, json_t *user, const char *refresh_token);

#endif
