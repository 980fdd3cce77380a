/* job: see job.h. */
#include "job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The event of a job that came back: runs on its origin worker. */
static void job_returned(struct worker *w, struct event *ev)
{
    struct job *j = (struct job *)ev;
    (void)w;
    job_hold(j); /* done may hold it too, and let go before it returns (an inline read) */
    if (j->done)
        j->done(j);
    job_release(j);
}

void job_hold(struct job *j)
{
    j->holds++;
}

void job_release(struct job *j)
{
    if (--j->holds <= 0)
        job_free(j);
}

static void job_dropped(struct event *ev)
{
    job_free((struct job *)ev);
}

struct job *job_new(enum job_kind kind, struct worker *origin, struct conn *conn, job_done_fn done, void *arg)
{
    struct job *j = xcalloc(1, sizeof *j);
    j->ev.run = job_returned;
    j->ev.drop = job_dropped;
    j->kind = kind;
    j->origin = origin;
    j->done = done;
    j->arg = arg;
    if (conn)
        job_bind(j, conn);
    return j;
}

void job_bind(struct job *j, struct conn *conn)
{
    j->conn = conn;
    conn->pending++; /* the conn outlives the job: see conn_release */
}

void job_token_new(struct job_token *t, int64_t ttl_s)
{
    token_new(t->token);
    token_new(t->family);
    token_hash(t->token, strlen(t->token), t->hash);
    t->expires_at = util_now_ms() + ttl_s * 1000;
}

static void decref(json_t *o)
{
    if (o)
        json_decref(o);
}

void job_free(struct job *j)
{
    if (!j)
        return;
    switch (j->kind) {
    case JOB_SEND:
        free(j->u.send.client_id);
        free(j->u.send.body);
        for (size_t i = 0; i < j->u.send.n_att; i++)
            free(j->u.send.att[i]);
        free(j->u.send.att);
        decref(j->u.send.att_out);
        break;
    case JOB_CHANGE:
        free(j->u.change.text);
        free(j->u.change.request_id);
        decref(j->u.change.message);
        break;
    case JOB_ATTACH:
        free(j->u.attach.name);
        free(j->u.attach.type);
        if (j->u.attach.tmp_path)
            remove(j->u.attach.tmp_path); /* not taken by the store (the job failed): nothing left behind */
        free(j->u.attach.tmp_path);
        decref(j->u.attach.att);
        break;
    case JOB_SIGNUP:
        free(j->u.signup.display_name);
        free(j->u.signup.pwhash);
        decref(j->u.signup.user);
        break;
    case JOB_LOGIN: decref(j->u.login.user); break;
    case JOB_REFRESH: decref(j->u.refresh.user); break;
    case JOB_CONV_CREATE:
        free(j->u.create.title);
        free(j->u.create.members);
        decref(j->u.create.view);
        break;
    case JOB_LOGOUT:
    case JOB_MEMBER:
    case JOB_READ: break;
    }
    if (j->publish)
        bus_msg_unref(j->publish);
    if (j->conn)
        conn_release(j->conn);
    free(j);
}
