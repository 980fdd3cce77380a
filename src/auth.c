/* auth: see auth.h. */
#include "auth.h"

#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int auth_verify(const struct config *cfg, const char *token, size_t len, struct jwt_claims *out)
{
    if (!token || !len)
        return AUTH_MISSING;
    return jwt_verify(cfg->jwt_secret, cfg->jwt_secret_len, token, len, util_now_ms() / 1000, out);
}

int auth_bearer(const struct config *cfg, const char *header, struct jwt_claims *out)
{
    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return AUTH_MISSING;
    const char *t = header + 7;
    while (*t == ' ')
        t++;
    size_t n = strlen(t);
    while (n && (t[n - 1] == ' ' || t[n - 1] == '\t'))
        n--;
    return auth_verify(cfg, t, n, out);
}

json_t *auth_token_answer(const struct config *cfg, json_t *user, const char *refresh_token)
{
    struct jwt_claims c = {0};
    int64_t now_s = util_now_ms() / 1000;
    c.sub = json_integer_value(json_object_get(user, "id"));
    snprintf(c.name, sizeof c.name, "%s", json_string_value(json_object_get(user, "username")));
    c.iat = now_s;
    c.exp = now_s + cfg->access_ttl_s;
    char *access = jwt_sign(cfg->jwt_secret, cfg->jwt_secret_len, &c);
    json_t *o = json_pack("{s:O, s:s, s:s, s:I}", "user", user, "access_token", access, "refresh_token",
                          refresh_token, "expires_in", (json_int_t)cfg->access_ttl_s);
    free(access);
    return o;
}
