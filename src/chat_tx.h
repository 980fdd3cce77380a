/* chat_tx: the core's part of a write: what every non-send job does inside
 * the writer's batch transaction, with the chat's rules (who may add, remove
 * or promote whom; the group size cap; refresh token rotation and reuse).
 * The writer calls chat_tx_run through the function pointer it was given
 * (writer_exec_fn); it runs on the writer's thread, inside a savepoint, on
 * whatever store backend the writer has. */
#ifndef PARLEY_CHAT_TX_H
#define PARLEY_CHAT_TX_H

#include "job.h"
#include "store.h"

/* Runs j (any kind but JOB_SEND). Returns a store_rc: a negative one rolls
 * the job's savepoint back; STORE_ERR fails the whole batch. */
int chat_tx_run(struct store *st, struct job *j);

/* The member rules on their own (also what chat_tx_run runs for JOB_MEMBER):
 * NOT_FOUND when the conversation does not exist, the actor is not in it or
 * the target is unknown (the same answer: no existence leak); BAD_REQUEST
 * for a direct conversation or an owner demoting itself; FORBIDDEN when the
 * actor's role is too low. */
int chat_tx_member_add(struct store *st, int64_t conv, int64_t actor, int64_t user, int64_t max_group,
                       int64_t now, int *added_out, const char **why_out);
int chat_tx_member_remove(struct store *st, int64_t conv, int64_t actor, int64_t user);
int chat_tx_member_set_role(struct store *st, int64_t conv, int64_t actor, int64_t user, enum store_role role);

#define CHAT_REACTIONS_MAX 20 /* different emoji on one message */

/* The rules of a change (JOB_CHANGE): NOT_FOUND (no such conversation or
 * message, or not a member), FORBIDDEN (someone else's message, without the
 * role to delete it), BAD_REQUEST with *why_out (editing or reacting to a
 * deleted message, a new emoji on a message that has CHAT_REACTIONS_MAX).
 * f gets the message's facts. */
int chat_tx_change_allowed(struct store *st, const struct job_change *c, struct store_msg_facts *f,
                           const char **why_out);

#endif
