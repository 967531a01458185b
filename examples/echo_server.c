/*
 * echo_server: a multi-worker TCP echo server on libveloq's C I/O API.
 *
 *   echo_server --port P --workers W [--seconds N]
 *
 * Each worker owns one SO_REUSEPORT listener (the kernel spreads connections over them),
 * started on that worker with veloq_spawn_to and served by one multishot veloq_accept.
 * Each connection has one buffer, allocated when it is accepted, and loops recv -> send
 * (resending the rest of a short send) until the peer closes; no allocation per request.
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

static int64_t start_accepting(veloq_ctx *ctx, void *arg);

static void on_accept(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    uint32_t w = veloq_ctx_worker(ctx);
    if (res >= 0) {
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
    return veloq_accept(ctx, fd, true, on_accept, arg);
}

static int listener(uint16_t port, uint16_t *bound) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        close(fd);
        return -1;
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
    fprintf(stderr, "usage: %s --port P --workers W [--seconds N]\n", argv0);
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

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--workers"))
            workers = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = strtol(argv[i + 1], NULL, 10);
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
    if (!g_stats || !g_listeners)
        return 1;
    for (i = 0; i < workers; i++) {
        g_listeners[i] = listener(i == 0 ? (uint16_t)port : bound, &bound);
        if (g_listeners[i] < 0) {
            fprintf(stderr, "echo_server: cannot listen on port %u: %s\n", (unsigned)bound,
                    strerror(errno));
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
    printf("echo_server: listening on port %u with %ld workers\n", (unsigned)bound, workers);
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
    totals((uint32_t)workers, &accepted, &open, &bytes);
    for (i = 0; i < workers; i++)
        close(g_listeners[i]);
    printf("echo_server: stopped (%s): %" PRIu64 " connections, %" PRIu64 " still open, %" PRIu64
           " bytes echoed\n",
           sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "time", accepted, open, bytes);
    free(g_stats);
    free(g_listeners);
    return rc == 0 && open == 0 ? 0 : 1;
}
