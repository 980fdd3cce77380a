/* idmap: a hash map from a positive int64 id to a pointer, open addressing
 * with linear probing and backward-shift deletion (no tombstones, so lookups
 * stay short however often ids come and go). The owner of the struct owns
 * the table, not the values. One thread. */
#ifndef PARLEY_IDMAP_H
#define PARLEY_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct idmap {
    struct idmap_slot { int64_t key; void *val; } *v; /* key 0: empty */
    size_t cap, len;
};

void *idmap_get(const struct idmap *m, int64_t key);
/* Sets key's value (key > 0). */
void idmap_put(struct idmap *m, int64_t key, void *val);
/* Removes key; returns its value or NULL. */
void *idmap_del(struct idmap *m, int64_t key);
void idmap_dispose(struct idmap *m);

#define IDMAP_FOREACH(m, slot) \
    for (struct idmap_slot *slot = (m)->v; slot && slot < (m)->v + (m)->cap; slot++) if (slot->key)

#endif
