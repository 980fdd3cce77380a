/* libFuzzer target for query-string and path decoding: http_query_get over
 * any query and any name with any buffer size (the decoded value ends in
 * bounds, absent and too long are told apart), the canonical id parser (an
 * id it accepts prints back to the same text) and the conversation route
 * parser (what it accepts has canonical ids). */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "http.h"
#include "util.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* byte 0: the buffer size; then "name\0query" (or all query, name "a") */
    size_t outlen = data[0] % 64 + 1;
    char *text = malloc(size);
    CHECK(text != NULL);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    const char *name = text, *query = memchr(text, '\0', size - 1) && strlen(text) < size - 2 ? text + strlen(text) + 1 : NULL;
    if (!query) {
        query = text;
        name = "a";
    }
    char out[80];
    memset(out, 'Z', sizeof out);
    int rc = http_query_get(query, name, out, outlen);
    CHECK(rc == 0 || rc == HTTP_QUERY_ABSENT || rc == HTTP_QUERY_TOO_LONG);
    if (rc == 0)
        CHECK(memchr(out, '\0', outlen) != NULL);
    for (size_t i = outlen; i < sizeof out; i++)
        CHECK(out[i] == 'Z'); /* nothing written past the buffer */

    int64_t v;
    if (util_parse_id(query, &v) == 0) {
        char back[32];
        snprintf(back, sizeof back, "%" PRId64, v);
        CHECK(v > 0 && v < (INT64_C(1) << 53) && strcmp(back, query) == 0);
    }
    struct api_route rt = api_parse_conv_path(query);
    if (rt.ok) {
        char back[64];
        snprintf(back, sizeof back, "%" PRId64, rt.conv);
        CHECK(strncmp(query, back, strlen(back)) == 0);
    }
    free(text);
    return 0;
}
