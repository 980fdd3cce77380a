/* worker: the runtime at the bottom of the server. One I/O thread with its
 * own libuv loop, its own SO_REUSEPORT listener and every connection accepted
 * on it (DESIGN.md rule 8).
 *
 * It knows bytes, connections, HTTP and WebSocket framing, and nothing of the
 * chat: it calls up only through the connection handler table it was given
 * (struct conn_handler, as h2o's on_req), with the opaque context of the
 * layer above (the core's per-worker state). Other threads reach a worker
 * only through its inbox: worker_post() appends events, each carrying the
 * function that runs it on the worker (struct event).
 *
 * Ownership: a struct worker owns its loop, its listener, its read buffer
 * and every struct conn on it. No other thread touches any of these; only
 * inbox_head/tail are shared, under inbox_mu.
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

struct config;
struct http_req;
struct http_sink;
struct worker;

/* ---- the inbox: what other threads send to a worker ---- */

/* An event runs on the worker it was posted to (run), or is only freed
 * (drop) when the worker goes away before reading it. Ownership of an event
 * passes with worker_post. */
struct event {
    struct event *next;
    void (*run)(struct worker *w, struct event *ev);
    void (*drop)(struct event *ev);
};

/* Appends one event, or a chain linked by ->next, and wakes the worker.
 * Callable from any thread. */
void worker_post(struct worker *w, struct event *first, struct event *last);

/* A thread's per-worker event chains, posted with one wake-up per worker
 * (the writer posts a whole batch's results this way). Owned by the thread
 * that uses it. */
struct postbox {
    struct worker **workers; /* borrowed */
    int n;
    struct event **head, **tail;
};
void postbox_init(struct postbox *pb, struct worker **workers, int n);
void postbox_add(struct postbox *pb, int worker_index, struct event *ev);
void postbox_flush(struct postbox *pb);
void postbox_dispose(struct postbox *pb);

/* Shutdown steps, posted by main: stop accepting and reading (1), then close
 * every connection with 1001 and end the loop (2). */
/* done is posted once w has taken step 1 (nothing more will be read, so
 * nothing more submitted to the writer), or went away. */
void worker_post_drain(struct worker *w, uv_sem_t *done);
/* The graceful drain before those steps (SIGTERM): leaving = the node says
 * it is not ready and takes no new WebSocket session, but serves on; then
 * its WebSockets are closed with 1001 spread evenly over spread_ms. */
void worker_post_leave(struct worker *w);
void worker_post_spread_close(struct worker *w, int64_t spread_ms);
void worker_post_stop(struct worker *w);

/* ---- connections ---- */
enum conn_state {
    CONN_HTTP,      /* reading/answering HTTP requests */
    CONN_WS_AUTH,   /* upgraded, waiting for the first-frame auth */
    CONN_WS,        /* authenticated WebSocket */
    CONN_CLOSING,   /* final bytes queued; closes once they are written */
    CONN_CLOSED,    /* uv_close called; freed when pending == 0 */
};

struct outq_file;

#define WORKER_CHUNK_CLASSES 3 /* chunk sizes: 512 B, 2 KiB, 8 KiB (worker.c) */

/* An out-queue item is a shared frame (one reference), a chunk (small frames
 * copied one after the other into a buffer of this connection's own, so a
 * delivery costs a memcpy, not a node and an atomic reference: worker.c,
 * enqueue), or a file. */
struct outq_item {
    struct outq_item *next;
    struct frame *frame; /* one reference, or the chunk's buffer; NULL for a file item */
    struct outq_file *file; /* a file item (conn_send_file): owned; NULL for a frame */
    uint32_t off;        /* bytes of it the kernel already took */
    uint8_t cont;        /* the rest of the previous item's frame (conn_send2) */
    uint8_t chunk;       /* 0: a shared frame; else frame is a chunk of class chunk - 1,
                            owned by this item, and more may be appended */
};

/* A fragmented WebSocket message being reassembled (worker.c, ws_frame):
 * rare, so a connection holds one only from its first fragment to its last
 * (freed there, or when the connection is freed). */
struct ws_frag {
    int opcode;     /* of the first fragment: WS_OP_TEXT or WS_OP_BINARY */
    struct buf msg; /* the payload so far, at most PARLEY_MAX_FRAME bytes */
};

/* An idle server holds little but one of these per connection, so it is kept
 * small (the assertion after it): flags are single bits, and what only some
 * connections need for a while (a read remainder, a fragmented message) is
 * behind a pointer that is NULL at rest. Only the worker's thread touches a
 * connection, so the bitfields need no atomics; no flag's address is taken. */
struct conn {
    uv_tcp_t tcp;                  /* first: tcp.data == this */
    struct worker *w;
    struct conn *prev, *next;      /* the worker's list of all connections */
    struct conn *uprev, *unext;    /* the hub's list of this user's connections (hub.c) */
    struct conn *dirty_next;       /* the worker's list of connections to flush */
    uint64_t id;                   /* unique in the process: worker index << 48 | counter */
    unsigned state : 3;            /* enum conn_state */
    unsigned busy : 1;             /* an HTTP request is being answered: reading paused */
    unsigned writing : 1;          /* a uv_write is in flight */
    unsigned handle_closed : 1;    /* the uv_close callback ran */
    unsigned in_session : 1;       /* the layer above registered it: on_session_end runs at close */
    unsigned processing : 1;       /* inside process(): no nested passes */
    unsigned close_after_write : 1; /* HTTP Connection: close */
    unsigned shut : 1;             /* FIN sent: lingering for the peer's */
    unsigned dirty : 1;            /* on the worker's dirty list: to be flushed */
    unsigned freed : 1;            /* closed and released while on the dirty list: the flush
                                      pass frees the memory when it reaches it (conn_free) */
    unsigned urgent : 1;           /* also on the worker's urgent list: flushed before the others */
    unsigned admin : 1;            /* accepted on the metrics listener */
    unsigned held : 1;             /* the layer above holds the input (conn_hold): nothing is parsed */
    unsigned throttled : 1;        /* input not read: the out-queue is above PARLEY_OUTQ_LOW */
    unsigned gated : 1;            /* counted by the gate's open: its close runs at the end */
    unsigned paused : 1;           /* a WebSocket we stopped reading (throttled, held): judged by
                                      progress_ms, not by its silence (worker.c, sweep_conn) */
    unsigned chunk_cls : 2;        /* the chunk class its last flush needed (worker.c, enqueue) */
    int pending;                   /* jobs in flight holding this pointer */
    uint64_t src;                  /* the peer's address as a key: IPv4 address, or IPv6 /64 */
    void (*drain_fn)(struct conn *c, void *arg); /* conn_on_drain: once, then NULL */
    void *drain_arg;
    struct buf *in;                /* unparsed remainder only; NULL at rest (worker.c, keep_input) */
    struct ws_frag *frag;          /* fragmented WS message being reassembled; else NULL */
    struct http_req *http;         /* HTTP parser state; NULL once upgraded */
    struct outq_item *out_head, *out_tail;
    size_t out_bytes;              /* bytes the kernel has not taken yet (queued + in flight) */
    int64_t user_id;               /* 0 until authenticated */
    int64_t token_exp_ms;          /* authorization ends here (4001 after) */
    /* Two pairs of clocks that are never needed at the same time share
     * storage (the size assertion); which one is live follows from the
     * state or the paused bit, as each says. */
    union {
        int64_t deadline_ms;       /* CONN_HTTP, CONN_WS_AUTH, CONN_CLOSING: header, auth or
                                      close timeout */
        int64_t last_ping_ms;      /* CONN_WS: when we last pinged it */
    };
    union {
        int64_t last_seen_ms;      /* !paused: last bytes from the peer */
        int64_t progress_ms;       /* paused: when the peer last took some of our output */
    };
    size_t progress_pending;       /* paused: our bytes the peer had not taken at the last sweep */
};

/* The idle-connection memory target (issue 9, docs/BENCHMARKS.md "Idle
 * connections"): at most 0.5 KiB of RSS per idle connection, of which this
 * struct is most. 424 bytes is a 432-byte malloc chunk on 64-bit glibc, and
 * libuv's uv_tcp_t (248 bytes with Debian's libuv 1.x) is more than half of
 * it. A field added here, or a libuv that grows uv_tcp_t, moves the figure:
 * re-measure it and update the model there before raising this bound. */
_Static_assert(sizeof(struct conn) <= 424, "struct conn grew: idle connections cost more RSS (docs/BENCHMARKS.md)");
/* and its bitfields hold every value put in them */
_Static_assert(CONN_CLOSED < (1 << 3) && WORKER_CHUNK_CLASSES <= (1 << 2), "struct conn's state or chunk_cls is too narrow");

/* What the layer above does with a connection's input. ctx is the context
 * given to worker_new (the core's per-worker state). */
struct conn_handler {
    /* A complete HTTP request (reading is paused until it is answered:
     * exactly one response, then conn_http_done). */
    void (*on_request)(void *ctx, struct conn *c, struct http_req *r);
    /* One complete WebSocket text message, valid UTF-8. */
    void (*on_message)(void *ctx, struct conn *c, const char *text, size_t len);
    /* A connection with in_session set is closing (once). */
    void (*on_session_end)(void *ctx, struct conn *c);
    /* Optional: the headers of a request with a body (Content-Length > 0,
     * or chunked) are in, and none of its body has been read. Returns
     *   0  read the body into r->body as usual (up to PARLEY_MAX_HTTP_BODY,
     *      larger: 413), then on_request;
     *   1  stream it: the function filled *sink (r->sink); each piece goes
     *      there as it arrives (never buffered whole), then on_request runs
     *      with r->body empty and takes the sink back (http_req_take_sink);
     *      if the request ends first, the sink's discard runs;
     *  -1  it answered the request already (an error, exactly one
     *      response): the body is not read and the connection closes after
     *      the answer.
     * r->method, path, query and headers are valid. */
    int (*on_body_start)(void *ctx, struct conn *c, struct http_req *r, struct http_sink *sink);
};

/* Admission of new connections, set by the layer above (the core's
 * per-address connection limit). open runs once a connection is accepted:
 * 0 keeps it, an HTTP status (429) refuses it with that answer and a close.
 * close runs once, when a connection that open kept is closed. */
struct conn_gate {
    int (*open)(void *ctx, struct conn *c);
    void (*close)(void *ctx, struct conn *c);
    void *ctx;
};
void worker_set_gate(struct worker *w, const struct conn_gate *g);

/* ---- backpressure ----
 * Input is parsed only while the connection's out-queue (what the kernel has
 * not taken) is at or below PARLEY_OUTQ_LOW: above it the worker stops
 * reading from the socket, and parses again once the peer has read enough.
 * Above PARLEY_MAX_OUTQ after a flush, the connection is closed (WebSocket:
 * 1008 `slow consumer`; HTTP: TCP close), in every state.
 * A WebSocket we stopped reading is not judged by its silence (its pings wait
 * unread): instead, if it takes none of our output for two heartbeat
 * intervals, it is closed 1008 `slow consumer` too. Its silence clock starts
 * again when reading resumes. */

/* Holds c's input: no further request or frame is parsed (reading stops)
 * until conn_unhold. For an answer produced in parts (a long sync), so the
 * connection's next frames wait for it. */
void conn_hold(struct conn *c);
void conn_unhold(struct conn *c);
/* fn runs once, on the worker: when c's out-queue is at or below the
 * low-water mark (at the end of this loop iteration at the earliest), or when
 * c closes (c->state is then CONN_CLOSING or CONN_CLOSED). Replaces an
 * earlier fn that has not run. */
void conn_on_drain(struct conn *c, void (*fn)(struct conn *c, void *arg), void *arg);
/* 1 if c's out-queue is above the low-water mark. */
int conn_congested(const struct conn *c);

/* Queues a frame (takes a new reference). Written at the end of the loop
 * iteration with everything else queued to c, in one writev. If what the
 * kernel will not take passes max_outq, the connection is closed with 1008. */
void conn_send(struct conn *c, struct frame *f);
/* conn_send of f holding nframes whole WebSocket frames back to back (a run
 * of messages: bus.h), counted as nframes. */
void conn_send_frames(struct conn *c, struct frame *f, uint32_t nframes);
/* Queues head then body as ONE WebSocket frame split in two buffers (the
 * per-recipient head of a push, and a body shared by every recipient): they
 * are written together and never separated by another frame. */
void conn_send2(struct conn *c, struct frame *head, struct frame *body);
/* Has c written before every other connection at the end of this iteration
 * (an ack: the client's next send waits for it, and a client reads the
 * sockets that became readable first, first; with c last among a thousand
 * members of a fan-out, it would see its ack a whole fan-out later). */
void conn_urgent(struct conn *c);
/* Queues len bytes of the open file fd from offset off, sent with
 * sendfile(2) after everything queued before it, as the socket takes them
 * (zero-copy: the bytes never pass through our memory). Takes fd: it is
 * closed once sent, or when the connection closes first. A file item counts
 * nothing towards the out-queue's byte bounds (its bytes are not held in
 * memory); a peer that stops reading is dropped by the idle timeout (no
 * write progress for PARLEY_HEADER_TIMEOUT_MS). HTTP answers only. */
void conn_send_file(struct conn *c, int fd, int64_t off, int64_t len);
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

/* Upgrades an HTTP connection whose 101 answer is queued: drops the HTTP
 * state; WebSocket frames are read from now on (auth within the timeout). */
void conn_upgrade(struct conn *c, int64_t auth_deadline_ms);

/* ---- the worker ---- */

/* What a worker counts for /metrics: written only by its own thread, read
 * by it when a scrape asks (chat_metrics_gather), so no lock or atomic. */
#define WORKER_ROUTES 32
#define WORKER_STATUSES 16
struct worker_counters {
    uint64_t frames_in, frames_out;   /* WebSocket data frames received, queued */
    uint64_t slow_closes;             /* 1008 slow consumer */
    int64_t fd_logged_ms;             /* when "descriptor limit close" was last logged (once a second) */
    uint64_t http[WORKER_ROUTES][WORKER_STATUSES]; /* answers by route and status (http_status_index) */
};
/* The index of a status in the counters (the last one: any other). */
int http_status_index(int status);
extern const int http_counted_statuses[WORKER_STATUSES];
/* One HTTP answer of route (c->http->route) with status. */
void worker_count_http(struct conn *c, int status);



struct worker {
    int index;
    int nworkers;
    int fd_warn_at;                /* a connection's descriptor at or above this: warn (0: no limit known) */
    const struct config *cfg;      /* read-only */
    const struct conn_handler *handler;
    void *ctx;                     /* the layer above's per-worker state */
    struct conn_gate gate;         /* admission of new connections (may be empty) */
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_tcp_t mlistener;            /* PARLEY_METRICS_LISTEN, on worker 0 */
    int has_mlistener;
    uv_async_t wake;
    uv_timer_t sweep;              /* timeouts and heartbeats, once a second */
    int64_t last_sweep_ms;         /* when the sweep last ran (a late one defers its verdicts once) */
    int sweep_deferred;
    uv_check_t flush_check;        /* end of each loop iteration: write what was queued */
    uv_idle_t flush_more;          /* active while the dirty list is left over: poll without blocking */
    struct conn *dirty, *dirty_tail; /* connections with frames queued, oldest first */
    struct conn **urgent;          /* of those, the ones to write first (conn_urgent); owned, grown */
    size_t nurgent, capurgent;
    struct outq_item *free_items;  /* spare out-queue nodes (worker.c: item_get/item_put) */
    size_t nfree_items;
    struct frame *free_chunks[WORKER_CHUNK_CLASSES]; /* spare chunks per class (worker.c: chunk_get/chunk_put) */
    size_t nfree_chunks[WORKER_CHUNK_CLASSES];
    uv_thread_t thread;
    uv_mutex_t inbox_mu;           /* guards inbox_head/tail only */
    struct event *inbox_head, *inbox_tail;
    struct conn *conns;            /* all connections (list head) */
    size_t nconns;
    uint64_t next_conn_id;
    int leaving;                   /* SIGTERM: not ready, no new WebSocket sessions, still serving */
    int64_t spread_start_ms, spread_ms; /* closing WebSockets evenly over spread_ms (0: not) */
    size_t spread_total, spread_closed;
    int draining;                  /* shutdown step 1: no accepting, no reading */
    int stopping;                  /* step 2: closing every connection */
    int64_t stop_deadline_ms;      /* shutdown: abort what has not flushed by then */
    struct frame *ping;            /* the shared ping frame */
    struct worker_counters counters;
    uint8_t rbuf[65536];           /* the shared read buffer */
};

/* Binds the listener. handler and ctx may be set later (worker_set_handler),
 * before worker_start. */
struct worker *worker_new(const struct config *cfg, int index, int nworkers, char *err, size_t errlen);
void worker_set_handler(struct worker *w, const struct conn_handler *h, void *ctx);
/* The port the listener (metrics: the /metrics listener, worker 0 only) is
 * bound to, or -1: what port 0 in the configuration became. */
int worker_bound_port(struct worker *w, int metrics);
/* Starts the thread. */
int worker_start(struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w);
/* Milliseconds of the worker's loop clock (timeouts). */
int64_t worker_now(struct worker *w);

#endif
