/* libFuzzer target for the op parser: any bytes a client can send as a text
 * frame (or an HTTP body) must parse or be refused with a code, never crash
 * or leak. What parses is what the core may rely on; the tolerant loader
 * (proto_json_load: numbers jansson cannot hold read as null) agrees with
 * jansson on everything jansson reads. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_op op;
    const char *code = NULL, *message = NULL;
    int rc = proto_parse((const char *)data, size, 4096, &op, &code, &message);
    CHECK(rc == 0 || (code && message));
    if (rc == 0) {
        CHECK(op.kind != OP_NONE);
        if (op.kind == OP_SEND)
            CHECK(op.id && op.body && op.body_len > 0 && op.body_len <= 4096 && op.conv > 0 &&
                  strlen(op.id) > 0);
        if (op.kind == OP_READ)
            CHECK(op.conv > 0 && op.seq >= 0);
        if (op.kind == OP_TYPING)
            CHECK(op.conv > 0);
        if (op.kind == OP_AUTH)
            CHECK(op.token && *op.token);
    }

    /* the fast path for plain sends answers exactly as jansson's path */
    struct proto_op ref;
    const char *rcode = NULL, *rmessage = NULL;
    int rrc = proto_parse_json((const char *)data, size, 4096, &ref, &rcode, &rmessage);
    CHECK(rrc == rc && ref.kind == op.kind);
    CHECK((!code && !rcode) || (code && rcode && !strcmp(code, rcode) && !strcmp(message, rmessage)));
    CHECK((!op.id && !ref.id) || (op.id && ref.id && !strcmp(op.id, ref.id)));
    if (rc == 0 && op.kind == OP_SEND)
        CHECK(op.conv == ref.conv && op.body_len == ref.body_len && !memcmp(op.body, ref.body, op.body_len));
    proto_op_dispose(&ref);
    proto_op_dispose(&op);

    json_error_t e;
    json_t *strict = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    json_t *loose = proto_json_load((const char *)data, size);
    if (strict)
        CHECK(loose && json_equal(strict, loose));
    json_decref(strict);
    json_decref(loose);
    return 0;
}
