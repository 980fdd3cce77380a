/* worker: see worker.h. The event loop, the listener, the life of a
 * connection (read, parse, write, close) and the inbox. */
#include "worker.h"

#include "config.h"
#include "http.h"
#include "log.h"
#include "ws.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define WRITE_BATCH 64            /* frames per writev */
#define FLUSH_SLICE 64            /* connections written per loop iteration; the rest wait for the
                                     next (on_flush_check) */
#define CLOSE_GRACE_MS 5000       /* a closing connection that cannot flush */
#define STOP_GRACE_MS 3000        /* shutdown: time to flush before abort */
#define LINGER_MS 2000            /* after our FIN: time for the peer's */
#define SENDFILE_BUDGET (4 << 20) /* file bytes per connection per loop iteration: a fast download
                                     does not hold the loop up for everyone else */

/* A file item of an out-queue (conn_send_file). While the kernel refuses
 * more, a poll on a duplicate of the socket descriptor waits for it to be
 * writable again: libuv's stream watches the socket itself, and epoll takes a
 * second registration of the same socket only under another descriptor. */
struct outq_file {
    uv_poll_t poll;   /* data == this */
    int fd;           /* the file */
    int sock;         /* the duplicate the poll watches; -1 until first needed */
    off_t off;        /* next byte of the file to send */
    int64_t left;     /* bytes still to send */
    struct conn *c;
};

static int64_t now_ms(struct worker *w)
{
    return (int64_t)uv_now(&w->loop);
}

static void free_event(struct event *ev)
{
    free(ev);
}

/* Out-queue nodes come from a per-worker free list: one node per frame per
 * recipient connection is the fan-out's commonest allocation, so a freed node
 * is kept for the next one (at most OUTQ_FREE_MAX, the rest go back to
 * malloc). */
#define OUTQ_FREE_MAX 8192

static struct outq_item *item_get(struct worker *w)
{
    struct outq_item *it = w->free_items;
    if (!it) {
        it = xmalloc(sizeof *it);
        it->file = NULL;
        return it;
    }
    w->free_items = it->next;
    w->nfree_items--;
    return it;
}

static void item_put(struct worker *w, struct outq_item *it)
{
    if (w->nfree_items >= OUTQ_FREE_MAX) {
        free(it);
        return;
    }
    it->next = w->free_items;
    w->free_items = it;
    w->nfree_items++;
}

/* Chunks. A frame of at most CHUNK_COPY_MAX bytes is copied into the chunk at
 * the tail of the recipient's queue instead of being referenced: a fan-out
 * delivery is then a memcpy of a hundred-odd bytes, with no queue node and no
 * atomic reference count (one frame's counter, touched by every recipient on
 * every worker, bounced its cache line between the cores), and the flush of
 * all the frames a connection got in one loop iteration is one buffer and one
 * send (docs/BENCHMARKS.md, "Fan-out: one buffer per recipient").
 * A chunk is a struct frame whose len grows as frames are appended; it is the
 * queue's own (never shared). It comes in three sizes (classes): a connection
 * starts with the class its last flush needed (c->chunk_cls), and a tail
 * chunk nothing of which was sent yet moves into the next class when full,
 * so a ping to 10,000 idle connections takes 512 bytes each, not 8 KiB.
 * Written chunks go back to a per-worker free list of their class, so an idle
 * connection holds none. */
#define CHUNK_COPY_MAX 1024
static const uint32_t chunk_size[WORKER_CHUNK_CLASSES] = {512, 2048, 8192};
/* spare chunks kept per worker and class: 1 MiB, 2 MiB, 4 MiB at most */
static const size_t chunk_free_max[WORKER_CHUNK_CLASSES] = {2048, 1024, 512};
#define CHUNK_CAP(k) ((uint32_t)(chunk_size[k] - offsetof(struct frame, data)))

static struct frame *chunk_get(struct worker *w, int k)
{
    struct frame *f = w->free_chunks[k];
    if (f) {
        memcpy(&w->free_chunks[k], f->data, sizeof f); /* the free list's link */
        w->nfree_chunks[k]--;
    } else {
        f = xmalloc(chunk_size[k]);
        atomic_init(&f->refs, 1);
    }
    f->len = 0;
    return f;
}

static void chunk_put(struct worker *w, struct frame *f, int k)
{
    if (w->nfree_chunks[k] >= chunk_free_max[k]) {
        free(f);
        return;
    }
    memcpy(f->data, &w->free_chunks[k], sizeof f);
    w->free_chunks[k] = f;
    w->nfree_chunks[k]++;
}

/* The smallest class that holds n bytes (the largest if none does). */
static int chunk_class(size_t n)
{
    int k = 0;
    while (k < WORKER_CHUNK_CLASSES - 1 && CHUNK_CAP(k) < n)
        k++;
    return k;
}

/* An item's frame once the kernel took it (or it is dropped); chunk as in
 * struct outq_item. */
static void frame_release(struct worker *w, struct frame *f, int chunk)
{
    if (chunk)
        chunk_put(w, f, chunk - 1);
    else
        frame_unref(f);
}

/* The backpressure low-water mark: never above the cap. */
static size_t low_water(const struct worker *w)
{
    int64_t lo = w->cfg->outq_low < w->cfg->max_outq ? w->cfg->outq_low : w->cfg->max_outq;
    return lo > 0 ? (size_t)lo : 0;
}

/* Progress on an HTTP connection (body bytes read, answer bytes written):
 * its timeout counts from now, so only a stalled transfer is dropped. */
static void touch(struct conn *c)
{
    if (c->state == CONN_HTTP)
        c->deadline_ms = now_ms(c->w) + c->w->cfg->header_timeout_ms;
}

/* The peer took some of our output: the clock by which a connection we
 * stopped reading is judged (sweep_conn). Noted only while paused: while we
 * read it, its silence is the clock (last_seen_ms, which shares the field's
 * storage). */
static void took(struct conn *c)
{
    if (c->paused)
        c->progress_ms = now_ms(c->w);
}

/* We stopped reading c (backpressure, a hold): from now on its silence is
 * not held against it, whether it reads our output is (sweep_conn). */
static void note_paused(struct conn *c)
{
    if (c->paused || (c->state != CONN_WS && c->state != CONN_WS_AUTH))
        return;
    c->paused = 1;
    c->progress_ms = now_ms(c->w);
    c->progress_pending = SIZE_MAX; /* the first sample counts as progress */
}

/* We read c again: its silence counts from now, not from bytes that waited
 * in the kernel because we did not read them. */
static void note_reading(struct conn *c)
{
    if (!c->paused)
        return;
    c->paused = 0;
    c->last_seen_ms = now_ms(c->w);
}

/* ---- the inbox ---- */

void worker_post(struct worker *w, struct event *first, struct event *last)
{
    last->next = NULL;
    uv_mutex_lock(&w->inbox_mu);
    if (w->inbox_tail)
        w->inbox_tail->next = first;
    else
        w->inbox_head = first;
    w->inbox_tail = last;
    uv_mutex_unlock(&w->inbox_mu);
    uv_async_send(&w->wake);
}

int64_t worker_now(struct worker *w)
{
    return now_ms(w);
}

const int http_counted_statuses[WORKER_STATUSES] = {200, 201, 204, 304, 400, 401, 403, 404,
                                                    405, 409, 413, 426, 429, 431, 500, 503};

int http_status_index(int status)
{
    for (int i = 0; i < WORKER_STATUSES - 1; i++)
        if (http_counted_statuses[i] == status)
            return i;
    return WORKER_STATUSES - 1;
}

void worker_count_http(struct conn *c, int status)
{
    int route = c->http && c->http->route > 0 && c->http->route < WORKER_ROUTES ? c->http->route : 0;
    c->w->counters.http[route][http_status_index(status)]++;
}

void postbox_init(struct postbox *pb, struct worker **workers, int n)
{
    pb->workers = workers;
    pb->n = n;
    pb->head = xcalloc((size_t)n, sizeof *pb->head);
    pb->tail = xcalloc((size_t)n, sizeof *pb->tail);
}

void postbox_add(struct postbox *pb, int i, struct event *ev)
{
    ev->next = NULL;
    if (pb->tail[i])
        pb->tail[i]->next = ev;
    else
        pb->head[i] = ev;
    pb->tail[i] = ev;
}

void postbox_flush(struct postbox *pb)
{
    for (int i = 0; i < pb->n; i++) {
        if (pb->head[i])
            worker_post(pb->workers[i], pb->head[i], pb->tail[i]);
        pb->head[i] = pb->tail[i] = NULL;
    }
}

void postbox_dispose(struct postbox *pb)
{
    free(pb->head);
    free(pb->tail);
    pb->head = pb->tail = NULL;
}

static void begin_stop(struct worker *w);
static void begin_drain(struct worker *w);

struct drain_event {
    struct event ev;
    uv_sem_t *done; /* posted once the worker reads nothing more (or is gone) */
};

static void run_drain(struct worker *w, struct event *ev)
{
    struct drain_event *d = (struct drain_event *)ev;
    begin_drain(w);
    uv_sem_post(d->done);
    free(d);
}

static void drop_drain(struct event *ev)
{
    struct drain_event *d = (struct drain_event *)ev;
    uv_sem_post(d->done);
    free(d);
}

static void run_stop(struct worker *w, struct event *ev)
{
    free(ev);
    begin_stop(w);
}

static void post_simple(struct worker *w, void (*run)(struct worker *, struct event *))
{
    struct event *ev = xcalloc(1, sizeof *ev);
    ev->run = run;
    ev->drop = free_event;
    worker_post(w, ev, ev);
}

void worker_post_drain(struct worker *w, uv_sem_t *done)
{
    struct drain_event *d = xcalloc(1, sizeof *d);
    d->ev.run = run_drain;
    d->ev.drop = drop_drain;
    d->done = done;
    worker_post(w, &d->ev, &d->ev);
}

void worker_post_stop(struct worker *w)
{
    post_simple(w, run_stop);
}

static void run_leave(struct worker *w, struct event *ev)
{
    free(ev);
    w->leaving = 1;
}

void worker_post_leave(struct worker *w)
{
    post_simple(w, run_leave);
}

struct spread_event {
    struct event ev;
    int64_t spread_ms;
};

static void on_sweep(uv_timer_t *t);

static void run_spread(struct worker *w, struct event *ev)
{
    struct spread_event *se = (struct spread_event *)ev;
    w->leaving = 1;
    w->spread_start_ms = now_ms(w);
    w->spread_ms = se->spread_ms > 0 ? se->spread_ms : 1;
    w->spread_total = w->spread_closed = 0;
    for (struct conn *c = w->conns; c; c = c->next)
        w->spread_total += c->state == CONN_WS || c->state == CONN_WS_AUTH;
    free(se);
    /* look often enough that the closes come in many small steps */
    uv_timer_start(&w->sweep, on_sweep, 0, 100);
}

void worker_post_spread_close(struct worker *w, int64_t spread_ms)
{
    struct spread_event *se = xcalloc(1, sizeof *se);
    se->ev.run = run_spread;
    se->ev.drop = free_event;
    se->spread_ms = spread_ms;
    worker_post(w, &se->ev, &se->ev);
}

/* The share of the WebSockets due to be closed by now, closed with 1001:
 * clients reconnect elsewhere a few at a time, not all at once. */
static void spread_close(struct worker *w, int64_t now)
{
    int64_t elapsed = now - w->spread_start_ms;
    size_t due = elapsed >= w->spread_ms ? w->spread_total
                                         : (size_t)((double)w->spread_total * (double)elapsed / (double)w->spread_ms);
    struct conn *next;
    for (struct conn *c = w->conns; c && w->spread_closed < due; c = next) {
        next = c->next;
        if (c->state == CONN_WS || c->state == CONN_WS_AUTH) {
            conn_close_ws(c, 1001, "server going away");
            w->spread_closed++;
        }
    }
    if (elapsed >= w->spread_ms) /* anything opened meanwhile too */
        for (struct conn *c = w->conns; c; c = next) {
            next = c->next;
            if (c->state == CONN_WS || c->state == CONN_WS_AUTH)
                conn_close_ws(c, 1001, "server going away");
        }
}

static void on_wake(uv_async_t *a)
{
    struct worker *w = a->data;
    uv_mutex_lock(&w->inbox_mu);
    struct event *ev = w->inbox_head;
    w->inbox_head = w->inbox_tail = NULL;
    uv_mutex_unlock(&w->inbox_mu);
    while (ev) {
        struct event *next = ev->next;
        ev->run(w, ev);
        ev = next;
    }
}

/* ---- writing ----
 * Frames are corked: conn_send only queues and marks the connection dirty;
 * at the end of a loop iteration (the check handle, after all events of the
 * iteration) each dirty connection's whole queue goes to the kernel in one
 * writev, FLUSH_SLICE connections per iteration, oldest first. A batch of
 * 100 messages to a member is one syscall, not 100.
 * What the kernel refuses waits in a uv_write until the socket is writable. */

struct write_req {
    uv_write_t req;
    struct conn *c;
    size_t bytes;
    unsigned n;
    struct frame *frames[WRITE_BATCH];
    uint8_t chunk[WRITE_BATCH]; /* of frames[i], as in struct outq_item */
};

static void flush(struct conn *c);
static void after_flush(struct conn *c);
static void finish_close(struct conn *c);
static void drop_queue(struct conn *c, int keep_started);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void on_write(uv_write_t *req, int status)
{
    struct write_req *wr = (struct write_req *)req;
    struct conn *c = wr->c;
    for (unsigned i = 0; i < wr->n; i++)
        frame_release(c->w, wr->frames[i], wr->chunk[i]);
    c->out_bytes -= wr->bytes;
    c->writing = 0;
    free(wr);
    if (c->state == CONN_CLOSED)
        return;
    if (status < 0) {
        conn_abort(c);
        return;
    }
    took(c);
    touch(c);
    flush(c);
    after_flush(c);
}

/* Hands the head of the queue to uv_write, which finishes it when the socket
 * is writable again. The references move into the request. */
static void submit_write(struct conn *c)
{
    struct write_req *wr = xmalloc(sizeof *wr);
    uv_buf_t bufs[WRITE_BATCH];
    wr->c = c;
    wr->n = 0;
    wr->bytes = 0;
    while (c->out_head && !c->out_head->file && wr->n < WRITE_BATCH) {
        struct outq_item *it = c->out_head;
        c->out_head = it->next;
        bufs[wr->n] = uv_buf_init((char *)it->frame->data + it->off, it->frame->len - it->off);
        wr->bytes += it->frame->len - it->off;
        wr->chunk[wr->n] = it->chunk;
        wr->frames[wr->n++] = it->frame;
        item_put(c->w, it);
    }
    if (!c->out_head)
        c->out_tail = NULL;
    c->writing = 1;
    touch(c);
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, bufs, wr->n, on_write);
    if (rc < 0) {
        c->writing = 0;
        c->out_bytes -= wr->bytes;
        for (unsigned i = 0; i < wr->n; i++)
            frame_release(c->w, wr->frames[i], wr->chunk[i]);
        free(wr);
        conn_abort(c);
    }
}

/* Drops the first n written bytes from the queue. */
static void consume(struct conn *c, size_t n)
{
    c->out_bytes -= n;
    if (n) {
        took(c);
        touch(c);
    }
    while (n && c->out_head && !c->out_head->file) {
        struct outq_item *it = c->out_head;
        size_t left = it->frame->len - it->off;
        if (n < left) {
            it->off += (uint32_t)n;
            return;
        }
        n -= left;
        c->out_head = it->next;
        frame_release(c->w, it->frame, it->chunk);
        item_put(c->w, it);
    }
    if (!c->out_head)
        c->out_tail = NULL;
}

static void file_closed(uv_handle_t *h)
{
    struct outq_file *f = h->data;
    close(f->sock); /* after the poll is off epoll: closing it first would leave the registration */
    free(f);
}

static void file_free(struct outq_file *f)
{
    close(f->fd);
    if (f->sock < 0)
        free(f);
    else
        uv_close((uv_handle_t *)&f->poll, file_closed);
}

static void on_file_writable(uv_poll_t *h, int status, int events)
{
    struct outq_file *f = h->data;
    struct conn *c = f->c;
    (void)events;
    uv_poll_stop(h);
    if (c->state == CONN_CLOSED)
        return; /* its queue (and this file) goes in on_closed */
    c->writing = 0;
    if (status < 0) {
        conn_abort(c);
        return;
    }
    flush(c);
    after_flush(c);
}

/* Sends the file item at the head of the queue with sendfile: 1 when all of
 * it is sent (the item is gone), 0 when the kernel is full or this
 * iteration's budget is spent (the poll resumes it: c->writing meanwhile),
 * -1 when the connection was aborted. */
static int send_file(struct conn *c)
{
    struct outq_item *it = c->out_head;
    struct outq_file *f = it->file;
    int sock;
    if (uv_fileno((uv_handle_t *)&c->tcp, &sock) < 0) {
        conn_abort(c);
        return -1;
    }
    int64_t budget = SENDFILE_BUDGET;
    int64_t sent = 0;
    while (f->left > 0 && sent < budget) {
        size_t want = (size_t)(f->left < budget - sent ? f->left : budget - sent);
        ssize_t n = sendfile(sock, f->fd, &f->off, want);
        if (n > 0) {
            f->left -= n;
            sent += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* the file ended early (cut short meanwhile) or the socket failed:
         * the answer cannot be finished, and the peer sees it cut */
        log_info("conn %llu: sendfile: %s", (unsigned long long)c->id, n < 0 ? strerror(errno) : "file ended early");
        conn_abort(c);
        return -1;
    }
    if (sent) {
        took(c);
        touch(c);
    }
    if (f->left == 0) {
        c->out_head = it->next;
        if (!c->out_head)
            c->out_tail = NULL;
        file_free(f);
        it->file = NULL;
        item_put(c->w, it);
        return 1;
    }
    if (f->sock < 0) {
        f->sock = fcntl(sock, F_DUPFD_CLOEXEC, 0);
        if (f->sock < 0 || uv_poll_init(&c->w->loop, &f->poll, f->sock) < 0) {
            if (f->sock >= 0)
                close(f->sock);
            f->sock = -1;
            conn_abort(c);
            return -1;
        }
        f->poll.data = f;
    }
    f->c = c;
    c->writing = 1;
    uv_poll_start(&f->poll, UV_WRITABLE, on_file_writable);
    return 0;
}

/* uv_try_write, but one buffer (the common case: a chunk) goes with send,
 * which skips the file layer writev takes (fdget_pos, vfs_writev, the iovec
 * walk). Nothing of libuv's is pending here (flush checks c->writing). */
static int try_write(struct conn *c, uv_buf_t *bufs, unsigned n)
{
    int fd;
    if (n != 1 || uv_fileno((uv_handle_t *)&c->tcp, &fd) < 0)
        return uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    ssize_t w;
    do
        w = send(fd, bufs[0].base, bufs[0].len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w >= 0)
        return (int)w;
    return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
}

static void flush(struct conn *c)
{
    if (c->writing || c->state == CONN_CLOSED)
        return;
    while (c->out_head) {
        if (c->out_head->file) {
            if (send_file(c) <= 0)
                return;
            continue;
        }
        uv_buf_t bufs[WRITE_BATCH];
        unsigned n = 0;
        size_t want = 0;
        if (c->out_head->chunk && c->out_head->off == 0) /* what to start with next time */
            c->chunk_cls = (uint8_t)chunk_class(c->out_head->frame->len);
        for (struct outq_item *it = c->out_head; it && !it->file && n < WRITE_BATCH; it = it->next) {
            bufs[n] = uv_buf_init((char *)it->frame->data + it->off, it->frame->len - it->off);
            want += bufs[n++].len;
        }
        int w = try_write(c, bufs, n);
        if (w < 0 && w != UV_EAGAIN) {
            conn_abort(c);
            return;
        }
        consume(c, w > 0 ? (size_t)w : 0);
        if (w < 0 || (size_t)w < want) {
            submit_write(c); /* the kernel is full: finish when writable */
            return;
        }
    }
    if (c->state == CONN_CLOSING || (c->close_after_write && !c->busy))
        finish_close(c);
}

static void mark_dirty(struct conn *c)
{
    struct worker *w = c->w;
    if (c->dirty)
        return;
    c->dirty = 1;
    c->dirty_next = NULL;
    if (w->dirty_tail)
        w->dirty_tail->dirty_next = c;
    else
        w->dirty = c;
    w->dirty_tail = c;
}

static struct conn *pop_dirty(struct worker *w)
{
    struct conn *c = w->dirty;
    w->dirty = c->dirty_next;
    if (!w->dirty)
        w->dirty_tail = NULL;
    c->dirty = 0;
    c->dirty_next = NULL;
    return c;
}

/* Closes a slow consumer: a WebSocket gets 1008 `slow consumer` after
 * whatever frame the kernel has begun (the rest of its queue is dropped: it
 * reconnects and syncs), and the TCP connection is closed once that is
 * written, or CLOSE_GRACE_MS later at the latest (a peer that does not read
 * never drains it); HTTP has no close code: the connection is closed now. */
static void close_slow(struct conn *c, const char *why)
{
    log_info("conn %llu: %zu bytes waiting, %s: closing (slow consumer)", (unsigned long long)c->id, c->out_bytes,
             why);
    if (c->state == CONN_HTTP) {
        conn_abort(c); /* the queue goes with the handle */
        return;
    }
    drop_queue(c, 1);
    c->w->counters.slow_closes++;
    conn_close_ws(c, 1008, "slow consumer");
    flush(c);
}

static void on_flush_more(uv_idle_t *h)
{
    (void)h; /* its being active is the point: the loop's next poll does not block */
}

/* The check handle: runs once per loop iteration, after its events.
 *
 * It writes at most FLUSH_SLICE connections of the dirty list, oldest
 * first, and leaves the rest for the next iteration, whose poll does not
 * block (flush_more). Between slices the loop reads: a publisher's next
 * sends and the writer's acks and batches come in while a fan-out to a
 * large group is still being written, and a member not yet written gets the
 * new batch in the same writev as the old one: fewer sends per delivery,
 * and the commit cycle runs alongside the writing instead of after it. */
static void on_flush_check(uv_check_t *h)
{
    struct worker *w = h->data;
    const struct config *cfg = w->cfg;
    /* The urgent ones first; they stay on the dirty list, whose pass below
     * finds them written (or writes what the kernel did not take yet) and
     * runs the checks. */
    for (size_t i = 0; i < w->nurgent; i++) {
        struct conn *c = w->urgent[i];
        c->urgent = 0;
        if (c->state != CONN_CLOSED)
            flush(c);
    }
    w->nurgent = 0;
    for (unsigned n = 0; w->dirty && n < FLUSH_SLICE; n++) {
        struct conn *c = pop_dirty(w);
        if (c->freed) {
            free(c); /* conn_free released everything else */
            continue;
        }
        if (c->state == CONN_CLOSED)
            continue;
        flush(c);
        if (c->state != CONN_CLOSED && c->state != CONN_CLOSING && c->out_bytes > (size_t)cfg->max_outq) {
            /* A slow consumer: it reconnects and syncs, nobody else waits.
             * In every state: an HTTP client that pipelines and never reads,
             * an unauthenticated socket that pings and never reads. */
            close_slow(c, "bytes the kernel will not take");
            continue;
        }
        after_flush(c);
    }
    if (w->dirty)
        uv_idle_start(&w->flush_more, on_flush_more);
    else
        uv_idle_stop(&w->flush_more);
}

static void drop_queue(struct conn *c, int keep_started)
{
    /* Queued frames were never started, except a head the kernel took part
     * of: while the connection lives, that one must be finished, or the peer
     * sees half a frame. */
    struct outq_item **pp = &c->out_head;
    if (keep_started && *pp && (*pp)->off) {
        c->out_tail = *pp;
        pp = &(*pp)->next;
        while (*pp && (*pp)->cont) { /* the rest of that frame (conn_send2) */
            c->out_tail = *pp;
            pp = &(*pp)->next;
        }
    } else {
        c->out_tail = NULL;
    }
    struct outq_item *it = *pp;
    *pp = NULL;
    while (it) {
        struct outq_item *next = it->next;
        if (it->file) {
            file_free(it->file);
            it->file = NULL;
        } else {
            c->out_bytes -= it->frame->len - it->off;
            frame_release(c->w, it->frame, it->chunk);
        }
        item_put(c->w, it);
        it = next;
    }
}

/* A new item at the tail of the queue. */
static struct outq_item *push_item(struct conn *c, struct frame *f, int cont, int chunk)
{
    struct outq_item *it = item_get(c->w);
    it->next = NULL;
    it->frame = f;
    it->file = NULL;
    it->off = 0;
    it->cont = (uint8_t)cont;
    it->chunk = (uint8_t)chunk;
    if (c->out_tail)
        c->out_tail->next = it;
    else
        c->out_head = it;
    c->out_tail = it;
    return it;
}

/* cont: f is the rest of the previously queued frame (conn_send2). Copied
 * into the tail chunk it follows it directly; an item of its own is marked,
 * so drop_queue keeps it with a started head. */
static void enqueue(struct conn *c, struct frame *f, int cont)
{
    if (f->len <= CHUNK_COPY_MAX) {
        struct outq_item *t = c->out_tail;
        if (t && t->chunk && CHUNK_CAP(t->chunk - 1) - t->frame->len < f->len) {
            int k = chunk_class((size_t)t->frame->len + f->len);
            if (t->off == 0 && k > t->chunk - 1) { /* move it into a larger chunk */
                struct frame *g = chunk_get(c->w, k);
                memcpy(g->data, t->frame->data, t->frame->len);
                g->len = t->frame->len;
                chunk_put(c->w, t->frame, t->chunk - 1);
                t->frame = g;
                t->chunk = (uint8_t)(k + 1);
            }
        }
        if (!t || !t->chunk || CHUNK_CAP(t->chunk - 1) - t->frame->len < f->len) {
            int k = chunk_class(f->len);
            if (c->chunk_cls > k)
                k = c->chunk_cls;
            t = push_item(c, chunk_get(c->w, k), cont, k + 1);
        }
        memcpy(t->frame->data + t->frame->len, f->data, f->len);
        t->frame->len += f->len;
    } else {
        push_item(c, frame_ref(f), cont, 0);
    }
    c->out_bytes += f->len;
    if (!cont && c->state != CONN_HTTP)
        c->w->counters.frames_out++;
    mark_dirty(c);
}

void conn_send_file(struct conn *c, int fd, int64_t off, int64_t len)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING || len <= 0) {
        close(fd);
        return;
    }
    struct outq_file *f = xcalloc(1, sizeof *f);
    f->fd = fd;
    f->sock = -1;
    f->off = (off_t)off;
    f->left = len;
    f->c = c;
    struct outq_item *it = item_get(c->w);
    it->next = NULL;
    it->frame = NULL;
    it->file = f;
    it->off = 0;
    it->cont = 0;
    it->chunk = 0;
    if (c->out_tail)
        c->out_tail->next = it;
    else
        c->out_head = it;
    c->out_tail = it;
    mark_dirty(c);
}

void conn_send_frames(struct conn *c, struct frame *f, uint32_t nframes)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING)
        return;
    enqueue(c, f, 0); /* counts one frame */
    if (c->state != CONN_HTTP && nframes > 1)
        c->w->counters.frames_out += nframes - 1;
}

void conn_send(struct conn *c, struct frame *f)
{
    conn_send_frames(c, f, 1);
}

void conn_urgent(struct conn *c)
{
    struct worker *w = c->w;
    if (c->urgent || !c->dirty || c->state == CONN_CLOSED)
        return; /* listed already, or nothing queued */
    if (w->nurgent == w->capurgent) {
        w->capurgent = w->capurgent ? w->capurgent * 2 : 64;
        w->urgent = xrealloc(w->urgent, w->capurgent * sizeof *w->urgent);
    }
    w->urgent[w->nurgent++] = c;
    c->urgent = 1;
}

void conn_send2(struct conn *c, struct frame *head, struct frame *body)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING)
        return;
    enqueue(c, head, 0);
    enqueue(c, body, 1);
}

void conn_send_json(struct conn *c, const json_t *obj)
{
    if (c->state != CONN_WS && c->state != CONN_WS_AUTH)
        return;
    struct frame *f = frame_ws_json(obj);
    conn_send(c, f);
    frame_unref(f);
}

/* ---- closing ---- */

static void end_session(struct conn *c)
{
    if (!c->in_session)
        return;
    c->in_session = 0;
    c->w->handler->on_session_end(c->w->ctx, c);
}

/* The drain waiter learns that the connection is closing. */
static void fire_drain(struct conn *c)
{
    void (*fn)(struct conn *, void *) = c->drain_fn;
    if (!fn)
        return;
    c->drain_fn = NULL;
    fn(c, c->drain_arg);
}

static void drop_input(struct conn *c);
static void frag_free(struct ws_frag *fr);

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    for (size_t i = 0; c->urgent && i < w->nurgent; i++) /* as unexpected */
        if (w->urgent[i] == c) {
            w->urgent[i] = w->urgent[--w->nurgent];
            c->urgent = 0;
        }
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    drop_input(c);
    frag_free(c->frag);
    c->frag = NULL;
    http_req_free(c->http);
    c->http = NULL;
    if (c->dirty) { /* the dirty list still points here: its pass frees it */
        c->freed = 1;
        return;
    }
    free(c);
}

static void on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->handle_closed = 1;
    drop_queue(c, 0);
    if (c->pending == 0)
        conn_free(c);
}

void conn_abort(struct conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    end_session(c);
    c->state = CONN_CLOSED;
    http_req_drop_sink(c->http); /* an upload cut short leaves nothing behind */
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    fire_drain(c);
    if (c->gated) {
        c->gated = 0;
        c->w->gate.close(c->w->gate.ctx, c);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    free(req);
    if (status < 0)
        conn_abort(c); /* no-op when already closed (ECANCELED) */
    /* else: wait for the peer's EOF (on_read) or the linger deadline (sweep) */
}

/* Everything queued is written: send FIN, then linger until the peer closes
 * too. Closing at once with unread request bytes would make the kernel send
 * RST, which can destroy the response we just wrote before the peer reads it. */
static void finish_close(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->shut)
        return;
    end_session(c);
    http_req_drop_sink(c->http);
    c->state = CONN_CLOSING;
    c->shut = 1;
    fire_drain(c);
    c->deadline_ms = now_ms(c->w) + LINGER_MS;
    uv_shutdown_t *req = xmalloc(sizeof *req);
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        conn_abort(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read); /* to see EOF; data is dropped */
}

void conn_close_after_flush(struct conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    c->close_after_write = 1;
    if (!c->out_head && !c->writing)
        finish_close(c);
}

void conn_close_ws(struct conn *c, uint16_t code, const char *reason)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING)
        return;
    uint8_t payload[125];
    size_t n = ws_close_payload(payload, code, reason);
    struct frame *f = frame_ws(WS_OP_CLOSE, payload, n);
    enqueue(c, f, 0);
    frame_unref(f);
    end_session(c); /* no more deliveries to a closing connection */
    c->state = CONN_CLOSING;
    c->deadline_ms = now_ms(c->w) + CLOSE_GRACE_MS;
    fire_drain(c);
    /* enqueue marked it dirty: flush sends the frame, then finish_close */
}

void conn_release(struct conn *c)
{
    c->pending--;
    if (c->pending == 0 && c->state == CONN_CLOSED && c->handle_closed)
        conn_free(c);
}

/* ---- reading ---- */

static size_t process(struct conn *c, uint8_t *data, size_t len);

/* Whether the connection's input must wait: an HTTP answer is pending, the
 * layer above holds it, or the out-queue is above the low-water mark. */
static int input_paused(const struct conn *c)
{
    return (c->state == CONN_HTTP && c->busy) || c->held || c->throttled;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct conn *c = h->data;
    (void)suggested;
    b->base = (char *)c->w->rbuf;
    b->len = sizeof c->w->rbuf;
}

/* The connection's remainder (c->in): bytes read but not parsed yet (a
 * frame or a request cut by the read), its own until parsed. Allocated with
 * the first such bytes and freed once all are parsed, so a connection at
 * rest holds neither the bytes nor their struct buf. */
static void keep_input(struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->in) {
        c->in = xmalloc(sizeof *c->in);
        buf_init(c->in);
    }
    buf_append(c->in, p, n);
}

static void drop_input(struct conn *c)
{
    if (!c->in)
        return;
    buf_dispose(c->in);
    free(c->in);
    c->in = NULL;
}

/* used bytes of the remainder were parsed: drops them, and the remainder
 * with them once it is empty. */
static void consumed_input(struct conn *c, size_t used)
{
    buf_consume(c->in, used);
    if (!c->in->len)
        drop_input(c); /* at rest, own nothing */
}

/* Parses what is buffered: the shared read buffer when nothing was left
 * over, else the connection's remainder with the new bytes appended. */
static void consume_input(struct conn *c, uint8_t *data, size_t len)
{
    if (c->in) {
        buf_append(c->in, data, len);
        size_t used = process(c, (uint8_t *)c->in->data, c->in->len);
        if (c->state == CONN_CLOSED)
            return;
        consumed_input(c, used);
    } else {
        size_t used = process(c, data, len);
        if (c->state == CONN_CLOSED || used >= len)
            return;
        keep_input(c, data + used, len - used);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (nread < 0) {
        conn_abort(c);
        return;
    }
    if (nread == 0 || c->state == CONN_CLOSED || c->state == CONN_CLOSING)
        return;
    c->last_seen_ms = now_ms(c->w);
    consume_input(c, (uint8_t *)b->base, (size_t)nread);
    /* Pipelined HTTP: wait for the answer before reading more. Backpressure
     * or a hold: wait until the queue drains (after_flush) or the hold ends. */
    if (c->state != CONN_CLOSED && input_paused(c)) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        note_paused(c);
    }
}

static void http_fail(struct conn *c, int status, const char *code, const char *msg)
{
    c->close_after_write = 1;
    c->busy = 1;
    worker_count_http(c, status);
    struct frame *f = http_error_response(status, code, msg, 0);
    conn_send(c, f);
    frame_unref(f);
    conn_http_done(c);
}

static void ws_message(struct conn *c, int opcode, const uint8_t *p, size_t n)
{
    if (c->state == CONN_WS_AUTH && (opcode != WS_OP_TEXT || !ws_utf8_valid(p, n))) {
        conn_close_ws(c, 4001, "expected an auth frame first");
        return;
    }
    if (opcode == WS_OP_BINARY) {
        json_t *e = json_pack("{s:s,s:s,s:s}", "op", "error", "code", "bad_request", "message",
                              "binary frames are not supported; send JSON text frames");
        conn_send_json(c, e);
        json_decref(e);
        return;
    }
    if (!ws_utf8_valid(p, n)) {
        conn_close_ws(c, 1007, "invalid UTF-8");
        return;
    }
    c->w->handler->on_message(c->w->ctx, c, (const char *)p, n);
}

static void frag_free(struct ws_frag *fr)
{
    if (!fr)
        return;
    buf_dispose(&fr->msg);
    free(fr);
}

static void ws_frame(struct conn *c, const struct ws_frame *f)
{
    const struct config *cfg = c->w->cfg;
    if (f->opcode == WS_OP_TEXT || f->opcode == WS_OP_BINARY || f->opcode == WS_OP_CONT)
        c->w->counters.frames_in++;
    switch (f->opcode) {
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (c->frag) {
            conn_close_ws(c, 1002, "expected a continuation frame");
            return;
        }
        if (f->fin) {
            ws_message(c, f->opcode, f->payload, f->len);
            return;
        }
        c->frag = xmalloc(sizeof *c->frag); /* freed by the last fragment, or conn_free */
        c->frag->opcode = f->opcode;
        buf_init(&c->frag->msg);
        buf_append(&c->frag->msg, f->payload, f->len);
        return;
    case WS_OP_CONT:
        if (!c->frag) {
            conn_close_ws(c, 1002, "unexpected continuation frame");
            return;
        }
        if (c->frag->msg.len + f->len > (size_t)cfg->max_frame) {
            conn_close_ws(c, 1009, "message too big");
            return;
        }
        buf_append(&c->frag->msg, f->payload, f->len);
        if (f->fin) {
            /* off the connection before the message is handled: from here
             * on c holds no fragment, whatever the handler does with c */
            struct ws_frag *done = c->frag;
            c->frag = NULL;
            ws_message(c, done->opcode, (const uint8_t *)done->msg.data, done->msg.len);
            frag_free(done);
        }
        return;
    case WS_OP_PING: {
        struct frame *pong = frame_ws(WS_OP_PONG, f->payload, f->len);
        conn_send(c, pong);
        frame_unref(pong);
        return;
    }
    case WS_OP_PONG:
        return;
    case WS_OP_CLOSE: {
        uint16_t code;
        if (ws_parse_close(f->payload, f->len, &code) < 0)
            conn_close_ws(c, 1002, "bad close frame");
        else
            conn_close_ws(c, code == 1005 ? 1000 : code, "");
        return;
    }
    }
}

static size_t process_frames(struct conn *c, uint8_t *data, size_t len);
static void pump_input(struct conn *c);

/* process_frames with a guard: answers given synchronously from inside it
 * must not start a second, nested pass over the same bytes. */
static size_t process(struct conn *c, uint8_t *data, size_t len)
{
    c->processing = 1;
    size_t used = process_frames(c, data, len);
    c->processing = 0;
    return used;
}

/* The headers of a request with a body are in: the layer above decides
 * how its body is read (conn_handler.on_body_start). -1: answered, the
 * connection closes after the answer. */
static int body_start(struct conn *c)
{
    struct http_req *r = c->http;
    int rc = 0;
    if (c->w->handler->on_body_start) {
        uint8_t was = c->close_after_write;
        c->close_after_write = 1; /* an answer given now ends the connection: the body stays unread */
        c->busy = 1;
        rc = c->w->handler->on_body_start(c->w->ctx, c, r, &r->sink);
        if (rc < 0)
            return -1;
        c->busy = 0;
        c->close_after_write = was;
    }
    if (http_body_continue(r, rc == 1) < 0) {
        http_fail(c, 413, "too_large", "request body too large");
        return -1;
    }
    if (r->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        struct frame *f = frame_new(sizeof cont - 1);
        memcpy(f->data, cont, sizeof cont - 1);
        conn_send(c, f);
        frame_unref(f);
    }
    touch(c);
    return 0;
}

static size_t process_frames(struct conn *c, uint8_t *data, size_t len)
{
    const struct config *cfg = c->w->cfg;
    size_t off = 0;
    while (off < len) {
        if (c->state != CONN_HTTP && c->state != CONN_WS && c->state != CONN_WS_AUTH)
            return len; /* closing: ignore the rest */
        if (c->held)
            break;
        if (c->out_bytes > low_water(c->w)) {
            c->throttled = 1; /* the rest waits in c->in; after_flush resumes */
            break;
        }
        if (c->state == CONN_HTTP) {
            if (c->busy)
                break;
            if (c->close_after_write)
                return len; /* answered and closing (a refused body, Connection: close): the rest is not read */
            long n = http_feed(c->http, (const char *)data + off, len - off);
            if (n < 0) {
                int st = c->http->sink_status;
                if (st)
                    http_fail(c, st, st == 413 ? "too_large" : st == 507 ? "insufficient_storage" : "internal",
                              "the request body could not be stored");
                else if (c->http->too_large)
                    http_fail(c, 413, "too_large", "request body too large");
                else if (c->http->header_overflow)
                    http_fail(c, 431, "bad_request", "request headers too large");
                else
                    http_fail(c, 400, "bad_request", "malformed HTTP request");
                return len;
            }
            off += (size_t)n;
            if (c->http->at_body) {
                if (body_start(c) < 0)
                    return len; /* answered before the body: closing */
                continue;
            }
            if (c->http->in_body)
                touch(c); /* a body in progress: the timeout counts from its last bytes */
            if (!c->http->complete)
                continue;
            c->busy = 1;
            c->w->handler->on_request(c->w->ctx, c, c->http);
        } else if (c->state == CONN_WS || c->state == CONN_WS_AUTH) {
            struct ws_frame f;
            const char *why = NULL;
            int n = ws_parse(data + off, len - off, (size_t)cfg->max_frame, &f, &why);
            if (n == WS_PARTIAL)
                break;
            if (n == WS_TOO_BIG) {
                conn_close_ws(c, 1009, "frame too big");
                return len;
            }
            if (n < 0) {
                conn_close_ws(c, 1002, why ? why : "protocol error");
                return len;
            }
            off += (size_t)n;
            ws_frame(c, &f);
        } else {
            return len; /* closing: ignore the rest */
        }
    }
    return off;
}

void conn_http_done(struct conn *c)
{
    if (c->state != CONN_HTTP)
        return; /* upgraded, or closing */
    c->busy = 0;
    if (c->close_after_write) {
        conn_close_after_flush(c);
        return;
    }
    http_req_reset(c->http);
    c->deadline_ms = now_ms(c->w) + c->w->cfg->header_timeout_ms;
    /* A pipelined request may be waiting in the remainder. When we are
     * inside process() (a synchronous answer) its loop continues by itself. */
    pump_input(c);
}

/* Parses what waits in the remainder, then reads from the socket again,
 * unless the input is paused (an HTTP answer pending, a hold, the queue
 * above the low-water mark) or the worker drains. */
static void pump_input(struct conn *c)
{
    if (c->processing || (c->state != CONN_HTTP && c->state != CONN_WS && c->state != CONN_WS_AUTH))
        return;
    c->throttled = c->out_bytes > low_water(c->w);
    /* draining: a WebSocket frame still unread stays unread (the client
     * resends it); a pipelined HTTP request is answered (503 if it writes) */
    int parse = c->in && !(c->w->draining && c->state != CONN_HTTP);
    if (parse && !input_paused(c)) {
        size_t used = process(c, (uint8_t *)c->in->data, c->in->len);
        if (c->state == CONN_CLOSED)
            return;
        consumed_input(c, used);
    }
    if (c->state != CONN_HTTP && c->state != CONN_WS && c->state != CONN_WS_AUTH)
        return; /* closing: finish_close reads for the peer's EOF */
    if (input_paused(c) || c->w->draining) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        if (input_paused(c))
            note_paused(c);
    } else {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        note_reading(c);
    }
}

/* Flushed (or a write finished): below the low-water mark, the drain waiter
 * runs and paused input resumes. */
static void after_flush(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING || c->out_bytes > low_water(c->w))
        return;
    if (c->drain_fn) {
        void (*fn)(struct conn *, void *) = c->drain_fn;
        c->drain_fn = NULL;
        fn(c, c->drain_arg);
        if (c->state == CONN_CLOSED || c->state == CONN_CLOSING)
            return;
    }
    if (c->throttled)
        pump_input(c);
}

void conn_hold(struct conn *c)
{
    c->held = 1;
}

void conn_unhold(struct conn *c)
{
    if (!c->held)
        return;
    c->held = 0;
    pump_input(c);
}

void conn_on_drain(struct conn *c, void (*fn)(struct conn *c, void *arg), void *arg)
{
    c->drain_fn = fn;
    c->drain_arg = arg;
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) {
        fire_drain(c);
        return;
    }
    mark_dirty(c); /* the check at the end of this iteration looks at the queue */
}

int conn_congested(const struct conn *c)
{
    return c->out_bytes > low_water(c->w);
}

void conn_upgrade(struct conn *c, int64_t auth_deadline_ms)
{
    http_req_free(c->http);
    c->http = NULL;
    c->busy = 0;
    c->state = CONN_WS_AUTH;
    c->deadline_ms = auth_deadline_ms;
}

/* ---- accepting ---- */

static void free_unlisted(uv_handle_t *h)
{
    free(h->data); /* a conn that never made it onto the worker's list */
}

/* The peer's address as a limit key: an IPv4 address (or an IPv4-mapped
 * IPv6 one) is itself, an IPv6 address is its /64 (one subscriber's). */
static uint64_t peer_key(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET) {
        const uint8_t *a = (const uint8_t *)&((struct sockaddr_in *)&ss)->sin_addr;
        return 0xFFFF00000000ULL | (uint64_t)a[0] << 24 | (uint64_t)a[1] << 16 | (uint64_t)a[2] << 8 | a[3];
    }
    if (ss.ss_family == AF_INET6) {
        const uint8_t *a = ((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        uint64_t k = 0;
        if (memcmp(a, mapped, sizeof mapped) == 0)
            return 0xFFFF00000000ULL | (uint64_t)a[12] << 24 | (uint64_t)a[13] << 16 | (uint64_t)a[14] << 8 | a[15];
        for (int i = 0; i < 8; i++)
            k = k << 8 | a[i];
        return k;
    }
    return 0;
}

void worker_set_gate(struct worker *w, const struct conn_gate *g)
{
    w->gate = *g;
}

#define FD_WARN_MARGIN 16 /* descriptors left below the limit when the warning starts */

static void on_connection(uv_stream_t *server, int status)
{
    struct worker *w = server->data;
    if (status < 0) {
        log_warn("worker %d: cannot accept a connection: %s", w->index, uv_strerror(status));
        return;
    }
    if (w->stopping)
        return;
    const struct config *cfg = w->cfg;
    struct conn *c = xcalloc(1, sizeof *c);
    c->w = w;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, free_unlisted);
        return;
    }
    /* Past the descriptor limit libuv resets new connections itself (its
     * EMFILE trick) and tells nobody: warn while the limit is close. The
     * kernel hands out the lowest free number, so a number this high means
     * nearly all below it are taken. */
    int fd;
    if (w->fd_warn_at > 0 && uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 && fd >= w->fd_warn_at &&
        now_ms(w) - w->counters.fd_logged_ms >= 1000) {
        w->counters.fd_logged_ms = now_ms(w);
        log_warn("worker %d: descriptor limit close: descriptor %d of %d (ulimit -n): connections past it are"
                 " reset",
                 w->index, fd, w->fd_warn_at + FD_WARN_MARGIN);
    }
    c->admin = w->has_mlistener && server == (uv_stream_t *)&w->mlistener;
    c->id = ((uint64_t)w->index << 48) | ++w->next_conn_id;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    c->state = CONN_HTTP;
    c->http = http_req_new((size_t)cfg->max_http_body);
    c->http->notify_body = w->handler && w->handler->on_body_start;
    c->last_seen_ms = now_ms(w);
    c->deadline_ms = c->last_seen_ms + cfg->header_timeout_ms;
    uv_tcp_nodelay(&c->tcp, 1);
    c->src = peer_key(&c->tcp);
    /* The cap is per worker so it needs no shared counter. */
    if (w->nconns > (size_t)(cfg->max_conns / w->nworkers + 1)) {
        log_warn("worker %d: connection cap reached, refusing", w->index);
        http_fail(c, 503, "unavailable", "too many connections");
        return;
    }
    if (w->gate.open) {
        int refuse = w->gate.open(w->gate.ctx, c);
        if (refuse) {
            http_fail(c, refuse, refuse == 429 ? "rate_limited" : "unavailable",
                      "too many connections from your address");
            return;
        }
        c->gated = w->gate.close != NULL;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* libuv 1.44 has no SO_REUSEPORT flag: make the socket by hand, then adopt it. */
/* libuv 1.44 has no SO_REUSEPORT flag: make the socket by hand, then adopt
 * it (every worker listens on the main address: the kernel spreads them). */
static int listen_on(struct worker *w, uv_tcp_t *handle, const char *host, int portnum, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    char port[16];
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(port, sizeof port, "%d", portnum);
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve listen address %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, portnum, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    uv_tcp_init(&w->loop, handle);
    handle->data = w;
    if (uv_tcp_open(handle, fd) < 0 || uv_listen((uv_stream_t *)handle, 1024, on_connection) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d", host, portnum);
        return -1;
    }
    return 0;
}

static int open_listener(struct worker *w, char *err, size_t errlen)
{
    const struct config *cfg = w->cfg;
    if (listen_on(w, &w->listener, cfg->listen_host, cfg->listen_port, err, errlen) < 0)
        return -1;
    /* /metrics on its own address: one listener, on worker 0 */
    if (cfg->metrics_host[0] && w->index == 0) {
        if (listen_on(w, &w->mlistener, cfg->metrics_host, cfg->metrics_port, err, errlen) < 0)
            return -1;
        w->has_mlistener = 1;
    }
    return 0;
}

static void close_listeners(struct worker *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->listener))
        uv_close((uv_handle_t *)&w->listener, NULL);
    if (w->has_mlistener && !uv_is_closing((uv_handle_t *)&w->mlistener))
        uv_close((uv_handle_t *)&w->mlistener, NULL);
}

/* ---- timeouts and heartbeats ---- */

static void close_handles(struct worker *w)
{
    close_listeners(w);
    /* The inbox stays open (only unreferenced, so the loop can end): a
     * reader pool or bus thread may still post until main frees the worker,
     * which drops what arrived. */
    uv_unref((uv_handle_t *)&w->wake);
    if (!uv_is_closing((uv_handle_t *)&w->sweep))
        uv_close((uv_handle_t *)&w->sweep, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->flush_check))
        uv_close((uv_handle_t *)&w->flush_check, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->flush_more))
        uv_close((uv_handle_t *)&w->flush_more, NULL);
}

/* Our bytes the peer has not taken yet, beyond our own queue: what the
 * kernel holds unacknowledged (SIOCOUTQ) and what libuv has still to hand
 * it of the write in flight. */
static size_t peer_pending(struct conn *c)
{
    size_t n = uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
    int fd, q = 0;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &q) == 0 && q > 0)
        n += (size_t)q;
    return n;
}

/* Whether a paused connection's peer took any of our output since the last
 * sweep: the kernel's and libuv's part shrank (a write that finished counts
 * through took()). A sample per sweep, only for paused connections. */
static int peer_progressed(struct conn *c, int64_t now)
{
    size_t p = peer_pending(c);
    int moved = p < c->progress_pending;
    c->progress_pending = p;
    if (moved)
        c->progress_ms = now;
    return moved;
}

/* The sweep pings every connection of an interval in one pass: queued,
 * each ping took a chunk and a queue node until the end of the iteration,
 * thousands at once, and the heap kept the high-water mark (about 330 bytes
 * per idle connection after the first round: docs/BENCHMARKS.md). To a
 * connection with nothing queued it goes straight to the socket instead. */
static void send_ping(struct conn *c)
{
    struct frame *p = c->w->ping;
    if (c->out_head || c->writing) {
        conn_send(c, p);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)p->data, p->len);
    int n = try_write(c, &b, 1);
    if (n < 0 && n != UV_EAGAIN) {
        conn_abort(c);
        return;
    }
    if (n == (int)p->len) {
        c->w->counters.frames_out++;
        return;
    }
    /* the kernel took none or part of it: queued as usual, the part it took
     * consumed as a flush would (the queue was empty: it is the head) */
    conn_send(c, p);
    if (n > 0)
        consume(c, (size_t)n);
}

static void sweep_conn(struct worker *w, struct conn *c, int64_t now, int64_t wall)
{
    const struct config *cfg = w->cfg;
    switch (c->state) {
    case CONN_HTTP:
        /* slow or idle: headers timeout, a body or an answer without
         * progress (touch), keep-alive idle */
        if ((!c->busy || c->out_head) && now >= c->deadline_ms)
            conn_abort(c);
        break;
    case CONN_WS_AUTH:
        if (now >= c->deadline_ms)
            conn_close_ws(c, 4001, "auth timeout");
        break;
    case CONN_WS:
        if (c->token_exp_ms && wall >= c->token_exp_ms) { /* exp is wall-clock time */
            conn_close_ws(c, 4001, "token expired");
            break;
        }
        if (c->paused) {
            /* We do not read it (backpressure, or a sync waiting for it to
             * read): its pings and pongs wait unread, so its silence proves
             * nothing. Whether it takes our output does: none of it for two
             * intervals, and it is a slow consumer. */
            if (conn_congested(c) && !peer_progressed(c, now) && now - c->progress_ms > 2 * cfg->heartbeat_ms) {
                close_slow(c, "none taken for two heartbeat intervals");
                break;
            }
        } else if (now - c->last_seen_ms > 2 * cfg->heartbeat_ms) {
            conn_abort(c); /* silent for two intervals */
            break;
        }
        if (now - c->last_ping_ms >= cfg->heartbeat_ms) {
            c->last_ping_ms = now;
            send_ping(c);
        }
        break;
    case CONN_CLOSING:
        if (now >= c->deadline_ms)
            conn_abort(c);
        break;
    }
}

static void on_sweep(uv_timer_t *t)
{
    struct worker *w = t->data;
    uv_update_time(&w->loop);
    int64_t now = now_ms(w), wall = util_now_ms();
    /* The loop itself was held up (a long synchronous step, an overloaded
     * machine): bytes that arrived meanwhile are not read yet, and the
     * timeouts would blame their connections. Such a round only notes the
     * time and the next one judges, after the input was read; one round at
     * most, so a loop that is always late still times connections out. */
    int64_t every = (int64_t)uv_timer_get_repeat(t);
    int late = w->last_sweep_ms && now - w->last_sweep_ms > 2 * every + 250;
    w->last_sweep_ms = now;
    if (late && !w->sweep_deferred && !w->stopping) {
        w->sweep_deferred = 1;
        return;
    }
    w->sweep_deferred = 0;
    struct conn *next;
    for (struct conn *c = w->conns; c; c = next) {
        next = c->next;
        if (c->state == CONN_CLOSED)
            continue;
        if (w->stopping && now >= w->stop_deadline_ms)
            conn_abort(c);
        else
            sweep_conn(w, c, now, wall);
    }
    if (w->spread_ms && !w->stopping)
        spread_close(w, now);
    if (w->stopping && w->nconns == 0)
        close_handles(w);
}

/* Shutdown, step 1: no new connections, and no new requests or frames read
 * from open ones, so nothing reaches the writer after it flushes. A frame a
 * client sent meanwhile stays unread: it resends it (same client id) after
 * reconnecting, and idempotency makes that safe. */
static void begin_drain(struct worker *w)
{
    w->draining = 1;
    close_listeners(w);
    for (struct conn *c = w->conns; c; c = c->next)
        if (c->state == CONN_HTTP || c->state == CONN_WS || c->state == CONN_WS_AUTH)
            uv_read_stop((uv_stream_t *)&c->tcp);
}

static void begin_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    w->stop_deadline_ms = now_ms(w) + STOP_GRACE_MS;
    close_listeners(w);
    struct conn *next;
    for (struct conn *c = w->conns; c; c = next) {
        next = c->next;
        if (c->state == CONN_WS || c->state == CONN_WS_AUTH)
            conn_close_ws(c, 1001, "server shutting down");
        else if (c->state == CONN_HTTP && !c->busy)
            conn_abort(c);
        else if (c->state == CONN_HTTP)
            c->close_after_write = 1;
    }
    uv_timer_start(&w->sweep, on_sweep, 20, 20);
}

/* ---- the worker ---- */

struct worker *worker_new(const struct config *cfg, int index, int nworkers, char *err, size_t errlen)
{
    struct worker *w = xcalloc(1, sizeof *w);
    w->cfg = cfg;
    w->index = index;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 2 * FD_WARN_MARGIN &&
        rl.rlim_cur < INT32_MAX)
        w->fd_warn_at = (int)rl.rlim_cur - FD_WARN_MARGIN;
    w->nworkers = nworkers;
    uv_loop_init(&w->loop);
    uv_mutex_init(&w->inbox_mu);
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_timer_init(&w->loop, &w->sweep);
    w->sweep.data = w;
    uv_check_init(&w->loop, &w->flush_check);
    w->flush_check.data = w;
    uv_check_start(&w->flush_check, on_flush_check);
    uv_unref((uv_handle_t *)&w->flush_check); /* never keeps the loop alive by itself */
    uv_idle_init(&w->loop, &w->flush_more);
    w->flush_more.data = w;
    uv_unref((uv_handle_t *)&w->flush_more); /* nor this one; active, it still keeps polls short */
    w->ping = frame_ws(WS_OP_PING, NULL, 0);
    if (open_listener(w, err, errlen) < 0) {
        worker_free(w);
        return NULL;
    }
    return w;
}

int worker_bound_port(struct worker *w, int metrics)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (metrics && !w->has_mlistener)
        return -1;
    if (uv_tcp_getsockname(metrics ? &w->mlistener : &w->listener, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

void worker_set_handler(struct worker *w, const struct conn_handler *h, void *ctx)
{
    w->handler = h;
    w->ctx = ctx;
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    const struct config *cfg = w->cfg;
    int64_t every = cfg->heartbeat_ms / 4;
    if (every > 1000)
        every = 1000;
    if (every < 25)
        every = 25;
    uv_timer_start(&w->sweep, on_sweep, (uint64_t)every, (uint64_t)every);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

int worker_start(struct worker *w)
{
    return uv_thread_create(&w->thread, worker_main, w) == 0 ? 0 : -1;
}

void worker_join(struct worker *w)
{
    uv_thread_join(&w->thread);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    /* Only handles are left (the thread has returned, or never ran). */
    uv_walk(&w->loop, close_any, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    struct event *ev = w->inbox_head;
    while (ev) {
        struct event *next = ev->next;
        ev->drop(ev);
        ev = next;
    }
    while (w->dirty) { /* connections closed before their turn came */
        struct conn *c = pop_dirty(w);
        if (c->freed)
            free(c);
    }
    while (w->free_items) {
        struct outq_item *it = w->free_items;
        w->free_items = it->next;
        free(it);
    }
    for (int k = 0; k < WORKER_CHUNK_CLASSES; k++)
        while (w->free_chunks[k]) {
            struct frame *f = w->free_chunks[k];
            memcpy(&w->free_chunks[k], f->data, sizeof f);
            free(f);
        }
    uv_mutex_destroy(&w->inbox_mu);
    frame_unref(w->ping);
    free(w->urgent);
    free(w);
}
