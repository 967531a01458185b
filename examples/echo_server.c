/*
 * echo_server: a multi-worker TCP echo server on libveloq's C I/O API.
 *
 *   echo_server --port P --workers W [--seconds N] [--multishot]
 *
 * Each worker owns one SO_REUSEPORT listener (the kernel spreads connections over them),
 * started on that worker with veloq_spawn_to and served by one multishot veloq_accept.
 * Each connection has one buffer, allocated when it is accepted, and loops recv -> send
 * (resending the rest of a short send) until the peer closes; no allocation per request.
 * With --multishot, each worker makes one provided-buffer ring (veloq_buf_ring_new) and
 * each connection has one multishot veloq_recv_multishot into it: the kernel picks a
 * buffer per chunk, the chunk is echoed from that buffer (veloq_buf_ring_take), which goes
 * back to the ring once sent (veloq_buf_ring_recycle). No receive is submitted per request.
 * Port 0 picks a free port (the first line printed names it). It prints one line per
 * second and one at exit; SIGINT, SIGTERM or --seconds stop it: veloq_runtime_shutdown
 * cancels every operation, each callback then closes and frees what it owned.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <veloq.h>

#define CONN_BUF 16384

struct conn {
    int fd;
    uint32_t worker;
    uint32_t have, sent;
    char buf[CONN_BUF];
};

/* Counters of one worker, written only by it (padded: no false sharing). */
struct worker_stats {
    uint64_t accepted, closed, bytes;
    char pad[64 - 3 * sizeof(uint64_t)];
};

static struct worker_stats *g_stats;
static int *g_listeners;
static int g_multishot;

static void add(uint64_t *counter, uint64_t n) { __atomic_fetch_add(counter, n, __ATOMIC_RELAXED); }

static void on_recv(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg);

static void conn_close(struct conn *c) {
    add(&g_stats[c->worker].closed, 1);
    close(c->fd);
    free(c);
}

static void conn_recv(veloq_ctx *ctx, struct conn *c) {
    if (veloq_recv(ctx, c->fd, c->buf, CONN_BUF, 0, on_recv, c) < 0)
        conn_close(c); /* -ESHUTDOWN: the server is stopping */
}

static void on_send(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct conn *c = (struct conn *)arg;
    (void)flags;
    if (res <= 0) { /* error, -ECANCELED at shutdown */
        conn_close(c);
        return;
    }
    c->sent += (uint32_t)res;
    add(&g_stats[c->worker].bytes, (uint64_t)res);
    if (c->sent < c->have) {
        if (veloq_send(ctx, c->fd, c->buf + c->sent, c->have - c->sent, MSG_NOSIGNAL, on_send,
                       c) < 0)
            conn_close(c);
        return;
    }
    conn_recv(ctx, c);
}

static void on_recv(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct conn *c = (struct conn *)arg;
    (void)flags;
    if (res <= 0) { /* 0: the peer closed; < 0: error or -ECANCELED at shutdown */
        conn_close(c);
        return;
    }
    c->have = (uint32_t)res;
    c->sent = 0;
    if (veloq_send(ctx, c->fd, c->buf, c->have, MSG_NOSIGNAL, on_send, c) < 0)
        conn_close(c);
}

/* ---------------------------------------------------------------- --multishot */

#ifndef RING_COUNT
#define RING_COUNT 4096 /* buffers per worker (a power of two) */
#endif
#ifndef RING_SIZE
#define RING_SIZE 4096 /* bytes per buffer */
#endif

struct chunk {
    char *data;
    uint32_t len;
    uint16_t id;
};

#define MAX_IOV 64 /* chunks echoed by one sendmsg */

/* One connection: a multishot receive into its worker's ring, and a queue of received
 * chunks (their buffers) echoed in order, up to MAX_IOV of them per sendmsg. */
struct mconn {
    int fd;
    uint32_t worker;
    int64_t recv_op;
    int recv_live; /* a multishot receive is armed */
    int send_live; /* a sendmsg of the first chunks of q is in flight */
    int eof;       /* no more receives: end of stream, error or shutdown */
    int dead;      /* a send failed: drop what is queued */
    int starved;   /* the ring ran dry: re-armed on the worker's next recycle */
    uint64_t armed_at; /* the worker's recycle count when the receive was armed */
    uint32_t sent;     /* bytes of q[head] sent */
    struct chunk *q;
    uint32_t head, n, cap;
    struct mconn *next_starved;
    struct msghdr msg; /* of the sendmsg in flight, with iov */
    struct iovec iov[MAX_IOV];
};

/* Per worker, touched only by it (padded: no false sharing). */
struct mworker {
    uint16_t group;
    int has_ring;
    uint64_t recycled;
    struct mconn *starved;
    char pad[64 - 8 - sizeof(uint64_t) - sizeof(void *)];
};

static struct mworker *g_mw;

static void on_mrecv(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg);
static void on_msend(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg);

static void m_recycle(veloq_ctx *ctx, struct mconn *c, uint16_t id);

static void m_arm(veloq_ctx *ctx, struct mconn *c) {
    struct mworker *w = &g_mw[c->worker];
    c->recv_op = veloq_recv_multishot(ctx, c->fd, w->group, 0, on_mrecv, c);
    c->recv_live = c->recv_op > 0;
    c->eof = !c->recv_live; /* -ESHUTDOWN: the server is stopping */
    c->armed_at = w->recycled;
}

/* Closes `c` once nothing of it is in flight and nothing is left to echo. */
static void m_maybe_close(veloq_ctx *ctx, struct mconn *c) {
    if (c->recv_live || c->send_live || c->starved || (!c->eof && !c->dead))
        return;
    if (c->n > 0 && !c->dead)
        return;
    while (c->n > 0) {
        m_recycle(ctx, c, c->q[c->head].id);
        c->head = (c->head + 1) % c->cap;
        c->n--;
    }
    add(&g_stats[c->worker].closed, 1);
    close(c->fd);
    free(c->q);
    free(c);
}

/* Re-arms the receives that found the ring dry: a buffer came back. */
static void m_wake_starved(veloq_ctx *ctx, struct mworker *w) {
    struct mconn *s = w->starved;
    w->starved = NULL;
    while (s) {
        struct mconn *next = s->next_starved;
        s->starved = 0;
        if (!s->dead)
            m_arm(ctx, s);
        m_maybe_close(ctx, s);
        s = next;
    }
}

static void m_recycle(veloq_ctx *ctx, struct mconn *c, uint16_t id) {
    struct mworker *w = &g_mw[c->worker];
    veloq_buf_ring_recycle(ctx, w->group, id);
    w->recycled++;
    if (w->starved)
        m_wake_starved(ctx, w);
}

/* The connection cannot go on (a send failed, out of memory): stop its receive; it closes
 * once nothing is in flight. */
static void m_kill(veloq_ctx *ctx, struct mconn *c) {
    c->dead = 1;
    if (c->recv_live)
        veloq_cancel(ctx, c->recv_op);
}

/* Sends the queued chunks (the first from c->sent on) with one sendmsg. */
static void m_send(veloq_ctx *ctx, struct mconn *c) {
    uint32_t i, cnt = c->n < MAX_IOV ? c->n : MAX_IOV;
    for (i = 0; i < cnt; i++) {
        struct chunk *k = &c->q[(c->head + i) % c->cap];
        c->iov[i].iov_base = k->data + (i == 0 ? c->sent : 0);
        c->iov[i].iov_len = k->len - (i == 0 ? c->sent : 0);
    }
    memset(&c->msg, 0, sizeof c->msg);
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = cnt;
    c->send_live = veloq_sendmsg(ctx, c->fd, &c->msg, MSG_NOSIGNAL, on_msend, c) > 0;
    if (!c->send_live)
        m_kill(ctx, c);
}

static void on_msend(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct mconn *c = (struct mconn *)arg;
    (void)flags;
    if (res <= 0) { /* error, -ECANCELED at shutdown */
        c->send_live = 0;
        m_kill(ctx, c);
        m_maybe_close(ctx, c);
        return;
    }
    add(&g_stats[c->worker].bytes, (uint64_t)res);
    /* Every chunk sent whole goes back to the ring; a partial one is resent from where
     * the send stopped. (send_live stays set meanwhile: a recycle may re-arm starved
     * receives, and none of that may close this connection under our feet.) */
    {
        uint64_t left = (uint64_t)res;
        while (left > 0) {
            struct chunk *k = &c->q[c->head];
            uint32_t rest = k->len - c->sent;
            if (left < rest) {
                c->sent += (uint32_t)left;
                break;
            }
            left -= rest;
            c->sent = 0;
            c->head = (c->head + 1) % c->cap;
            c->n--;
            m_recycle(ctx, c, k->id);
        }
    }
    c->send_live = 0;
    if (c->n > 0)
        m_send(ctx, c);
    m_maybe_close(ctx, c);
}

/* Appends a received chunk; false when out of memory. */
static int m_push(struct mconn *c, char *data, uint32_t len, uint16_t id) {
    if (c->n == c->cap) {
        uint32_t cap = c->cap ? 2 * c->cap : 4, i;
        struct chunk *q = (struct chunk *)malloc(cap * sizeof *q);
        if (!q)
            return 0;
        for (i = 0; i < c->n; i++)
            q[i] = c->q[(c->head + i) % c->cap];
        free(c->q);
        c->q = q;
        c->head = 0;
        c->cap = cap;
    }
    c->q[(c->head + c->n) % c->cap] = (struct chunk){data, len, id};
    c->n++;
    return 1;
}

static void on_mrecv(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct mconn *c = (struct mconn *)arg;
    struct mworker *w = &g_mw[c->worker];
    if (res > 0) {
        void *data = NULL;
        int id = veloq_buf_ring_take(ctx, w->group, flags, &data);
        if (id < 0) {
            m_kill(ctx, c);
        } else if (c->dead || !m_push(c, (char *)data, (uint32_t)res, (uint16_t)id)) {
            m_recycle(ctx, c, (uint16_t)id);
            m_kill(ctx, c);
        } else if (!c->send_live) {
            m_send(ctx, c);
        }
    }
    if (flags & VELOQ_CQE_F_MORE)
        return;
    c->recv_live = 0;
    if (c->dead) {
        /* a send failed: stop receiving */
    } else if (res > 0) {
        m_arm(ctx, c); /* the kernel ended it on its own (completion queue overflow) */
    } else if (res == -ENOBUFS) {
        /* Every buffer is out being echoed (end of stream needs one too). Arm again at
         * once if one came back since this receive was armed, else at the next recycle. */
        if (w->recycled != c->armed_at) {
            m_arm(ctx, c);
        } else {
            c->starved = 1;
            c->next_starved = w->starved;
            w->starved = c;
        }
    } else {
        c->eof = 1; /* 0: the peer closed; < 0: error or -ECANCELED at shutdown */
    }
    m_maybe_close(ctx, c);
}

/* Makes the worker's ring on its first call. */
static int m_ring(veloq_ctx *ctx) {
    struct mworker *w = &g_mw[veloq_ctx_worker(ctx)];
    int rc;
    if (w->has_ring)
        return 0;
    rc = veloq_buf_ring_new(ctx, RING_COUNT, RING_SIZE, &w->group);
    if (rc < 0) {
        fprintf(stderr, "echo_server: veloq_buf_ring_new: %s\n", veloq_strerror(rc));
        exit(1);
    }
    w->has_ring = 1;
    return 0;
}

static void m_start(veloq_ctx *ctx, int fd) {
    struct mconn *c = (struct mconn *)calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->worker = veloq_ctx_worker(ctx);
    add(&g_stats[c->worker].accepted, 1);
    m_arm(ctx, c);
    m_maybe_close(ctx, c);
}

/* After the runtime stopped: receives left starved at shutdown had nothing in flight. */
static void m_close_starved(uint32_t workers) {
    uint32_t i;
    for (i = 0; i < workers; i++) {
        struct mconn *s = g_mw[i].starved;
        while (s) {
            struct mconn *next = s->next_starved;
            add(&g_stats[s->worker].closed, 1);
            close(s->fd);
            free(s->q);
            free(s);
            s = next;
        }
        g_mw[i].starved = NULL;
    }
}

/* ---------------------------------------------------------------- accepting */

static int64_t start_accepting(veloq_ctx *ctx, void *arg);

static void on_accept(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    uint32_t w = veloq_ctx_worker(ctx);
    if (res >= 0 && g_multishot) {
        m_start(ctx, (int)res);
    } else if (res >= 0) {
        struct conn *c = (struct conn *)malloc(sizeof *c);
        if (!c) {
            close((int)res);
        } else {
            c->fd = (int)res;
            c->worker = w;
            add(&g_stats[w].accepted, 1);
            conn_recv(ctx, c);
        }
    }
    /* The kernel may end a multishot accept on its own (e.g. an overflowing completion
     * queue, or EMFILE): start a new one unless shutdown cancelled it. */
    if (!(flags & VELOQ_CQE_F_MORE) && res != -ECANCELED)
        start_accepting(ctx, arg);
}

static int64_t start_accepting(veloq_ctx *ctx, void *arg) {
    int fd = *(int *)arg;
    if (g_multishot)
        m_ring(ctx);
    return veloq_accept(ctx, fd, true, on_accept, arg);
}

/* A SO_REUSEPORT listener on port `port` (0: any free port), its port in *bound: one per
 * worker, all on the same port. Returns the fd or a negative errno. */
static int listener(uint16_t port, uint16_t *bound) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(port);
    fd = veloq_tcp_listen((const struct sockaddr *)&a, sizeof a, 4096, VELOQ_BIND_REUSEPORT);
    if (fd < 0)
        return fd;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

static void totals(uint32_t workers, uint64_t *accepted, uint64_t *open, uint64_t *bytes) {
    uint32_t i;
    *accepted = *open = *bytes = 0;
    for (i = 0; i < workers; i++) {
        uint64_t a = __atomic_load_n(&g_stats[i].accepted, __ATOMIC_RELAXED);
        *accepted += a;
        *open += a - __atomic_load_n(&g_stats[i].closed, __ATOMIC_RELAXED);
        *bytes += __atomic_load_n(&g_stats[i].bytes, __ATOMIC_RELAXED);
    }
}

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s --port P --workers W [--seconds N] [--multishot]\n", argv0);
    exit(2);
}

int main(int argc, char **argv) {
    long port = -1, workers = -1, seconds = 0, elapsed = 0;
    uint16_t bound = 0;
    uint64_t accepted, open, bytes, last_bytes = 0;
    veloq_builder *b;
    veloq_runtime *rt = NULL;
    sigset_t stop;
    int i, rc, sig = 0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--multishot"))
            g_multishot = 1;
        else if (i + 1 == argc)
            usage(argv[0]);
        else if (!strcmp(argv[i], "--port"))
            port = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--workers"))
            workers = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = strtol(argv[++i], NULL, 10);
        else
            usage(argv[0]);
    }
    if (i != argc || port < 0 || port > 65535 || workers < 1 || workers > 1024 || seconds < 0)
        usage(argv[0]);

    /* Block the stop signals before the workers start: they inherit the mask, and the main
     * thread takes the signals with sigtimedwait. */
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    g_stats = (struct worker_stats *)calloc((size_t)workers, sizeof *g_stats);
    g_listeners = (int *)calloc((size_t)workers, sizeof *g_listeners);
    g_mw = (struct mworker *)calloc((size_t)workers, sizeof *g_mw);
    if (!g_stats || !g_listeners || !g_mw)
        return 1;
    for (i = 0; i < workers; i++) {
        g_listeners[i] = listener(i == 0 ? (uint16_t)port : bound, &bound);
        if (g_listeners[i] < 0) {
            fprintf(stderr, "echo_server: cannot listen on port %u: %s\n",
                    (unsigned)(i == 0 ? (uint16_t)port : bound), strerror(-g_listeners[i]));
            return 1;
        }
    }

    b = veloq_builder_new();
    if (!b || veloq_builder_workers(b, (uint32_t)workers) != 0)
        return 1;
    rc = veloq_runtime_build(b, &rt);
    if (rc < 0) {
        fprintf(stderr, "echo_server: veloq_runtime_build: %s\n", veloq_strerror(rc));
        return 1;
    }
    for (i = 0; i < workers; i++) {
        rc = veloq_spawn_to(rt, (uint32_t)i, start_accepting, &g_listeners[i], NULL, 0);
        if (rc < 0) {
            fprintf(stderr, "echo_server: veloq_spawn_to: %s\n", veloq_strerror(rc));
            return 1;
        }
    }
    printf("echo_server: listening on port %u with %ld workers%s\n", (unsigned)bound, workers,
           g_multishot ? " (multishot receives into provided-buffer rings)" : "");
    fflush(stdout);

    while (!seconds || elapsed < seconds) {
        struct timespec one = {1, 0};
        sig = sigtimedwait(&stop, NULL, &one);
        if (sig == SIGINT || sig == SIGTERM)
            break;
        elapsed++;
        totals((uint32_t)workers, &accepted, &open, &bytes);
        printf("echo_server: %lds: %" PRIu64 " connections (%" PRIu64 " open), %" PRIu64
               " bytes echoed, %.1f MB/s\n",
               elapsed, accepted, open, bytes, (double)(bytes - last_bytes) / 1e6);
        fflush(stdout);
        last_bytes = bytes;
    }

    /* Cancels every accept, recv and send: each callback closes and frees its own. */
    rc = veloq_runtime_shutdown(rt, -1);
    veloq_runtime_free(rt);
    m_close_starved((uint32_t)workers);
    totals((uint32_t)workers, &accepted, &open, &bytes);
    for (i = 0; i < workers; i++)
        close(g_listeners[i]);
    printf("echo_server: stopped (%s): %" PRIu64 " connections, %" PRIu64 " still open, %" PRIu64
           " bytes echoed\n",
           sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "time", accepted, open, bytes);
    free(g_stats);
    free(g_listeners);
    free(g_mw);
    return rc == 0 && open == 0 ? 0 : 1;
}
