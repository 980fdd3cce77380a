/* libFuzzer target for the static path resolver: whatever request path a
 * client sends, the file it names is under the web directory, has no
 * component starting with '.', and fits; anything else is refused. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "respond.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char dir[] = "/srv/parley/web";
    char *path = malloc(size + 1);
    CHECK(path != NULL);
    memcpy(path, data, size);
    path[size] = '\0';
    size_t outlen = size ? (size_t)data[0] * 16 + 1 : 64;
    char *out = malloc(outlen);
    CHECK(out != NULL);
    if (http_static_path(dir, path, out, outlen) == 0) {
        size_t n = strlen(out);
        CHECK(n < outlen);
        CHECK(strncmp(out, dir, sizeof dir - 1) == 0 && out[sizeof dir - 1] == '/');
        CHECK(!strstr(out + sizeof dir - 1, "/."));
        for (const char *s = out + sizeof dir - 1; *s; s++)
            CHECK((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("-_./", *s));
        CHECK(out[n - 1] != '/');
    }
    free(out);
    free(path);
    return 0;
}
