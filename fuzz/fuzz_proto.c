/* libFuzzer target for proto_parse: any bytes a client can send as a text
 * frame must parse or be refused with a code, never crash or leak. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_op op;
    const char *code = NULL, *message = NULL;
    int rc = proto_parse((const char *)data, size, 4096, &op, &code, &message);
    if (rc < 0 && (!code || !message))
        __builtin_trap();
    if (rc == 0 && op.kind == OP_SEND && (!op.id || !op.body || op.body_len == 0 || op.body_len > 4096))
        __builtin_trap();
    proto_op_dispose(&op);
    return 0;
}
