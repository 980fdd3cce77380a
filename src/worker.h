/* worker: one I/O thread with its own libuv loop, its own SO_REUSEPORT
 * listener and every connection accepted on it (DESIGN.md rule 8).
 *
 * Ownership: a struct worker owns its loop, its listener, its read buffer,
 * its read-only store connection, its hub (user -> local connections) and
 * every struct conn on it. No other thread touches any of these. Other
 * threads talk to a worker only through worker_post(), which appends to the
 * worker's inbox (a mutex-guarded list) and wakes it with uv_async_send.
 *
 * A struct conn is one TCP connection: HTTP/1.1 first, possibly upgraded to
 * WebSocket. At rest it owns no buffers: bytes are read into the worker's
 * shared read buffer and only an unparsed remainder is copied into conn->in;
 * the out-queue exists only while it holds frames. */
#ifndef PARLEY_WORKER_H
#define PARLEY_WORKER_H

#include "frame.h"
#include "util.h"

#include <stdint.h>
#include <uv.h>

struct server;
struct store;
struct http_req;
struct worker;

/* ---- the inbox: what other threads send to a worker ---- */
enum event_kind {
    EV_JOB,      /* a writer job came back: struct job (writer.h) */
    EV_FANOUT,   /* deliver a frame to local connections of some users */
    EV_STOP_ACCEPT, /* close the listener (shutdown, step 1) */
    EV_STOP,     /* close every connection with 1001 and stop (step 2) */
};

struct event {
    struct event *next;
    enum event_kind kind;
};

/* EV_FANOUT: one per worker per message; frame and users are shared refs. */
struct fanout {
    struct event ev;
    struct frame *frame;   /* one reference, owned by this event */
    struct idlist *users;  /* one reference, owned by this event */
    uint64_t except_conn;  /* conn id that must not get it (0: none) */
};

/* Appends one event, or a chain linked by ->next, and wakes the worker.
 * Callable from any thread; ownership of the events passes to the worker. */
void worker_post(struct worker *w, struct event *first, struct event *last);

/* Builds one struct fanout per worker for (frame, users) and posts them.
 * Takes its own references; the caller keeps its own. */
void worker_fanout_all(struct server *srv, struct frame *f, struct idlist *users, uint64_t except_conn);

/* ---- connections ---- */
enum conn_state {
    CONN_HTTP,      /* reading/answering HTTP requests */
    CONN_WS_AUTH,   /* upgraded, waiting for the first-frame auth */
    CONN_WS,        /* authenticated WebSocket */
    CONN_CLOSING,   /* final bytes queued; closes once they are written */
    CONN_CLOSED,    /* uv_close called; freed when pending == 0 */
};

struct outq_item {
    struct outq_item *next;
    struct frame *frame; /* one reference */
    uint32_t off;        /* bytes of it the kernel already took */
};

struct conn {
    uv_tcp_t tcp;                  /* first: tcp.data == this */
    struct worker *w;
    struct conn *prev, *next;      /* the worker's list of all connections */
    struct conn *uprev, *unext;    /* the hub's list of this user's connections */
    struct conn *dirty_next;       /* the worker's list of connections to flush */
    uint64_t id;                   /* unique in the process: worker index << 48 | counter */
    uint8_t state;                 /* enum conn_state */
    uint8_t busy;                  /* an HTTP request is being answered: reading paused */
    uint8_t writing;               /* a uv_write is in flight */
    uint8_t handle_closed;         /* the uv_close callback ran */
    uint8_t in_hub;
    uint8_t processing;            /* inside process(): no nested passes */
    uint8_t close_after_write;     /* HTTP Connection: close */
    uint8_t shut;                  /* FIN sent: lingering for the peer's */
    uint8_t dirty;                 /* on the worker's dirty list: flush this iteration */
    int pending;                   /* jobs in flight holding this pointer */
    struct buf in;                 /* unparsed remainder only; empty at rest */
    struct buf frag;               /* fragmented WS message being reassembled */
    int frag_opcode;
    struct http_req *http;         /* HTTP parser state; NULL once upgraded */
    struct outq_item *out_head, *out_tail;
    size_t out_bytes;              /* bytes the kernel has not taken yet (queued + in flight) */
    int64_t user_id;               /* 0 until authenticated */
    int64_t token_exp_ms;          /* authorization ends here (4001 after) */
    int64_t deadline_ms;           /* header or auth timeout; 0 none */
    int64_t last_seen_ms;          /* last bytes from the peer */
    int64_t last_ping_ms;
};

/* Queues a frame (takes a new reference). Written at the end of the loop
 * iteration with everything else queued to c, in one writev. If what the
 * kernel will not take passes max_outq, the connection is closed with 1008. */
void conn_send(struct conn *c, struct frame *f);
/* Queues a JSON object as one WebSocket text frame (does not steal obj). */
void conn_send_json(struct conn *c, const json_t *obj);
/* WebSocket close: queues a close frame with code and reason, then closes
 * once it is written. Safe to call twice. */
void conn_close_ws(struct conn *c, uint16_t code, const char *reason);
/* Closes the TCP connection now (queued bytes are dropped). */
void conn_abort(struct conn *c);
/* Closes once everything queued has been written. */
void conn_close_after_flush(struct conn *c);
/* A job that pointed at c came back: drop its hold (frees a closed conn). */
void conn_release(struct conn *c);
/* After an HTTP response: continue with the next request or close. */
void conn_http_done(struct conn *c);

/* ---- the worker ---- */
struct hub_slot;

struct worker {
    int index;
    struct server *srv;            /* read-only after start */
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t wake;
    uv_timer_t sweep;              /* timeouts and heartbeats, once a second */
    uv_check_t flush_check;        /* end of each loop iteration: write what was queued */
    struct conn *dirty;            /* connections with frames queued this iteration */
    uv_thread_t thread;
    uv_mutex_t inbox_mu;           /* guards inbox_head/tail only */
    struct event *inbox_head, *inbox_tail;
    struct store *reader;          /* read-only database connection */
    struct conn *conns;            /* all connections (list head) */
    size_t nconns;
    uint64_t next_conn_id;
    int draining;                  /* shutdown step 1: no accepting, no reading */
    int stopping;                  /* step 2: closing every connection */
    int64_t stop_deadline_ms;      /* shutdown: abort what has not flushed by then */
    struct frame *ping;            /* the shared ping frame */
    /* hub: user id -> first local connection of that user (open addressing) */
    struct hub_slot *hub;
    size_t hub_cap, hub_len;
    uint8_t rbuf[65536];           /* the shared read buffer */
};

struct worker *worker_new(struct server *srv, int index, char *err, size_t errlen);
/* Starts the thread; the listener is already bound. */
int worker_start(struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

#endif
