/* chat_tx: see chat_tx.h. */
#include "chat_tx.h"

#include "util.h"

#include <stdlib.h>

int chat_tx_member_add(struct store *st, int64_t conv, int64_t actor, int64_t user, int64_t max_group,
                       int64_t now, int *added_out, const char **why_out)
{
    enum store_role role = ROLE_MEMBER;
    int direct = 0, rc;

    *added_out = 0;
    *why_out = NULL;
    /* who asks comes first: a stranger learns nothing about the group */
    if ((rc = store_member_ctx(st, conv, actor, &direct, &role)) != STORE_OK)
        return rc;
    if (direct)
        return STORE_BAD_REQUEST;
    if (role < ROLE_ADMIN)
        return STORE_FORBIDDEN;
    if ((rc = store_user_exists(st, user)) != STORE_OK)
        return rc;
    if (store_member_ctx(st, conv, user, NULL, NULL) == STORE_OK)
        return STORE_OK; /* already a member: nothing changes */
    if (max_group > 0) {
        int64_t *ids;
        size_t n;
        if (store_members(st, conv, &ids, &n) != STORE_OK)
            return STORE_ERR;
        free(ids);
        if ((int64_t)n >= max_group) {
            *why_out = "the group is full (PARLEY_MAX_GROUP)";
            return STORE_BAD_REQUEST;
        }
    }
    return store_member_insert(st, conv, user, ROLE_MEMBER, now, added_out);
}

int chat_tx_member_remove(struct store *st, int64_t conv, int64_t actor, int64_t user)
{
    enum store_role actor_role = ROLE_MEMBER, user_role;
    int direct = 0, rc;

    if ((rc = store_member_ctx(st, conv, actor, &direct, &actor_role)) != STORE_OK)
        return rc;
    if (direct)
        return STORE_BAD_REQUEST;
    user_role = actor_role;
    if (actor != user) {
        if (actor_role < ROLE_ADMIN)
            return STORE_FORBIDDEN;
        if ((rc = store_member_ctx(st, conv, user, NULL, &user_role)) != STORE_OK)
            return rc;
        /* Only the owner may remove the owner, and the owner leaving is the
         * actor == user case; so this is an admin removing the owner. */
        if (user_role == ROLE_OWNER)
            return STORE_FORBIDDEN;
    }
    return store_member_delete(st, conv, user, user_role == ROLE_OWNER);
}

int chat_tx_member_set_role(struct store *st, int64_t conv, int64_t actor, int64_t user, enum store_role role)
{
    enum store_role actor_role = ROLE_MEMBER;
    int direct = 0, rc;

    if (role != ROLE_ADMIN && role != ROLE_MEMBER)
        return STORE_BAD_REQUEST;
    if ((rc = store_member_ctx(st, conv, actor, &direct, &actor_role)) != STORE_OK)
        return rc;
    if (direct)
        return STORE_BAD_REQUEST;
    if (actor_role != ROLE_OWNER)
        return STORE_FORBIDDEN;
    /* The owner demoting itself would leave the group without an owner. */
    if (user == actor)
        return STORE_BAD_REQUEST;
    return store_member_set_role(st, conv, user, role);
}

static int run_member(struct store *st, struct job_member *m)
{
    int64_t now = util_now_ms();
    switch (m->op) {
    case MEMBER_ADD:
        return chat_tx_member_add(st, m->conv, m->actor, m->target, m->max_group, now, &m->changed, &m->why);
    case MEMBER_REMOVE:
        m->changed = 1;
        return chat_tx_member_remove(st, m->conv, m->actor, m->target);
    case MEMBER_SET_ROLE:
        m->changed = 1;
        return chat_tx_member_set_role(st, m->conv, m->actor, m->target, m->role);
    }
    return STORE_BAD_REQUEST;
}

static int issue(struct store *st, int64_t user, const struct job_token *t)
{
    return store_refresh_insert(st, user, t->family, t->hash, t->expires_at, util_now_ms());
}

static int run_signup(struct store *st, struct job_signup *s)
{
    const char *display = s->display_name ? s->display_name : s->username;
    int rc = store_user_create(st, s->username, display, s->pwhash, util_now_ms(), &s->user);
    if (rc != STORE_OK)
        return rc;
    return issue(st, (int64_t)json_integer_value(json_object_get(s->user, "id")), &s->tok);
}

static int run_refresh(struct store *st, struct job_refresh *r)
{
    int64_t uid;
    int rc = store_refresh_rotate(st, r->old_hash, r->tok.hash, r->tok.expires_at, util_now_ms(), &uid);
    if (rc == STORE_REUSED) {
        /* The family's revocation must commit: report reuse without
         * failing the job (a failing job's savepoint is rolled back). */
        r->reused = 1;
        return STORE_OK;
    }
    if (rc != STORE_OK)
        return rc;
    return store_user_by_id(st, uid, &r->user);
}

static int run_create(struct store *st, struct job_conv_create *c)
{
    int rc;
    if (c->direct) {
        rc = store_conv_create_direct(st, c->creator, c->peer, util_now_ms(), &c->conv, &c->created);
    } else {
        rc = store_conv_create_group(st, c->creator, c->title, c->members, c->n_members, util_now_ms(), &c->conv);
        c->created = rc == STORE_OK;
    }
    if (rc != STORE_OK)
        return rc;
    return store_conv_get(st, c->conv, c->creator, &c->view);
}

/* Every update frame carries the whole message, reactions included, to
 * every member: a new emoji is refused once CHAT_REACTIONS_MAX different
 * ones are on the message (an emoji already there may still be added), so
 * one client cannot grow every later frame of that message without bound. */
static int reaction_room(struct store *st, const struct job_change *c, const char **why_out)
{
    json_t *m = NULL;
    int rc = store_msg_get(st, c->conv, c->seq, &m);
    if (rc != STORE_OK)
        return rc;
    json_t *r = json_object_get(m, "reactions");
    if (json_object_size(r) >= CHAT_REACTIONS_MAX && !json_object_getn(r, c->text, c->text_len)) {
        *why_out = "too many different reactions on this message (at most 20)";
        rc = STORE_BAD_REQUEST;
    }
    json_decref(m);
    return rc;
}

/* The change rules: members only (a stranger learns nothing: NOT_FOUND);
 * the sender edits; the sender, or a group's owner or admin, deletes; any
 * member reacts; nothing but a delete touches a deleted message, and a
 * second delete changes nothing. */
int chat_tx_change_allowed(struct store *st, const struct job_change *c, struct store_msg_facts *f,
                           const char **why_out)
{
    enum store_role role = ROLE_MEMBER;
    int direct = 0, rc;

    *why_out = NULL;
    if ((rc = store_member_ctx(st, c->conv, c->user, &direct, &role)) != STORE_OK)
        return rc;
    if ((rc = store_msg_facts(st, c->conv, c->seq, f)) != STORE_OK)
        return rc;
    switch (c->kind) {
    case CHANGE_EDIT:
        if (f->sender != c->user)
            return STORE_FORBIDDEN;
        break;
    case CHANGE_DELETE:
        if (f->sender != c->user && (direct || role < ROLE_ADMIN))
            return STORE_FORBIDDEN;
        return STORE_OK;
    case CHANGE_REACT_ON:
    case CHANGE_REACT_OFF: break;
    }
    if (f->deleted) {
        *why_out = "the message is deleted";
        return STORE_BAD_REQUEST;
    }
    if (c->kind == CHANGE_REACT_ON)
        return reaction_room(st, c, why_out);
    return STORE_OK;
}

/* {"op":"update","conv","seq","mod","message"} to every member, after the
 * commit (the writer publishes j->publish). */
static int publish_update(struct store *st, struct job *j)
{
    struct job_change *c = &j->u.change;
    int64_t *ids;
    size_t n;
    int rc = store_msg_get(st, c->conv, c->seq, &c->message);
    if (rc != STORE_OK)
        return rc == STORE_NOT_FOUND ? STORE_ERR : rc; /* it was just changed: must be there */
    if ((rc = store_members(st, c->conv, &ids, &n)) != STORE_OK)
        return rc;
    json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:O}", "op", "update", "conv", (json_int_t)c->conv, "seq",
                          (json_int_t)c->seq, "mod", (json_int_t)c->mod, "message", c->message);
    struct bus_msg *m = bus_msg_new(BUS_UPDATE, c->conv);
    m->frame = frame_ws_json(o);
    m->users = idlist_new(ids, n);
    m->seq = c->mod;
    json_decref(o);
    free(ids);
    j->publish = m;
    return STORE_OK;
}

static int run_change(struct store *st, struct job *j)
{
    struct job_change *c = &j->u.change;
    struct store_msg_facts f;
    int rc = chat_tx_change_allowed(st, c, &f, &c->why);
    if (rc != STORE_OK)
        return rc;
    if (c->kind == CHANGE_DELETE && f.deleted) { /* deleted already: nothing to erase twice */
        c->mod = f.mod;
        c->changed = 0;
    } else {
        rc = store_msg_change(st, c->conv, c->seq, c->user, c->kind, c->text, c->text_len, util_now_ms(), &c->mod,
                              &c->changed);
        if (rc != STORE_OK)
            return rc;
    }
    if (!c->changed) /* the message as it is, for an HTTP answer */
        return store_msg_get(st, c->conv, c->seq, &c->message);
    return publish_update(st, j);
}

int chat_tx_run(struct store *st, struct job *j)
{
    switch (j->kind) {
    case JOB_SIGNUP: return run_signup(st, &j->u.signup);
    case JOB_LOGIN: return issue(st, j->u.login.user_id, &j->u.login.tok);
    case JOB_REFRESH: return run_refresh(st, &j->u.refresh);
    case JOB_LOGOUT: return store_refresh_revoke(st, j->u.logout.hash, util_now_ms());
    case JOB_CONV_CREATE: return run_create(st, &j->u.create);
    case JOB_MEMBER: return run_member(st, &j->u.member);
    case JOB_READ:
        return store_read_set(st, j->u.read.conv, j->u.read.user, j->u.read.seq, &j->u.read.pos);
    case JOB_ATTACH: {
        struct job_attach *a = &j->u.attach;
        return store_att_create(st, a->owner, a->name, a->type, a->tmp_path, a->size, a->sha256, util_now_ms(),
                                a->max_pending, &a->att);
    }
    case JOB_CHANGE: return run_change(st, j);
    case JOB_SEND: break; /* the writer's batched path, never here */
    }
    return STORE_ERR;
}
