/*
 * uring_echo: the minimal raw io_uring echo server of the I/O bench (benches/io.rs), on
 * liburing.
 *
 *   uring_echo --port P [--workers W]
 *
 * W threads (default 2), each with its own ring and its own listening socket on 127.0.0.1:P
 * (SO_REUSEPORT: the kernel spreads new connections over the W listeners). Per thread: one
 * multishot accept; per connection one operation in flight at a time, recv into the
 * connection's buffer, then send of what came, then recv again. The loop is
 * io_uring_submit_and_wait(1) and handles every completion that is there, so one
 * io_uring_enter submits all the new operations and reaps a batch of completions. The ring
 * is single-issuer with deferred task work (IORING_SETUP_SINGLE_ISSUER |
 * IORING_SETUP_DEFER_TASKRUN, kernel 6.1+) where the kernel has it, plain otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server_args.h"

#define RING_ENTRIES 1024
#define BUF_SIZE 16384

enum op { OP_ACCEPT = 0, OP_RECV = 1, OP_SEND = 2 };

struct conn {
    int fd;
    unsigned len; /* bytes received, to echo */
    unsigned off; /* bytes of them sent */
    char buf[BUF_SIZE];
};

/* user_data: the connection pointer (at least 8-byte aligned) with the operation in the
 * low bits; accept has no connection. */
static uint64_t tag(struct conn *c, enum op op) { return (uint64_t)(uintptr_t)c | (uint64_t)op; }

static struct io_uring_sqe *sqe_of(struct io_uring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    while (!sqe) { /* the submission queue is full: hand it to the kernel */
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    return sqe;
}

static void arm_accept(struct io_uring *ring, int lfd) {
    struct io_uring_sqe *sqe = sqe_of(ring);
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(NULL, OP_ACCEPT));
}

static void arm_recv(struct io_uring *ring, struct conn *c) {
    struct io_uring_sqe *sqe = sqe_of(ring);
    io_uring_prep_recv(sqe, c->fd, c->buf, BUF_SIZE, 0);
    io_uring_sqe_set_data64(sqe, tag(c, OP_RECV));
}

static void arm_send(struct io_uring *ring, struct conn *c) {
    struct io_uring_sqe *sqe = sqe_of(ring);
    io_uring_prep_send(sqe, c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
}

static void drop_conn(struct conn *c) {
    close(c->fd);
    free(c);
}

static void *worker(void *arg) {
    int lfd = (int)(intptr_t)arg;
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int err = io_uring_queue_init_params(RING_ENTRIES, &ring, &p);
    if (err == -EINVAL) { /* an older kernel */
        memset(&p, 0, sizeof p);
        err = io_uring_queue_init_params(RING_ENTRIES, &ring, &p);
    }
    if (err < 0) {
        fprintf(stderr, "uring_echo: io_uring_queue_init: %s\n", strerror(-err));
        exit(1);
    }
    arm_accept(&ring, lfd);
    for (;;) {
        err = io_uring_submit_and_wait(&ring, 1);
        if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
            fprintf(stderr, "uring_echo: io_uring_submit_and_wait: %s\n", strerror(-err));
            exit(1);
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t data = io_uring_cqe_get_data64(cqe);
            struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)7);
            int res = cqe->res;
            switch ((enum op)(data & 7)) {
            case OP_ACCEPT:
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    arm_accept(&ring, lfd);
                if (res < 0)
                    break;
                c = malloc(sizeof *c);
                if (!c) {
                    close(res);
                    break;
                }
                c->fd = res;
                int one = 1;
                setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                arm_recv(&ring, c);
                break;
            case OP_RECV:
                if (res <= 0) {
                    drop_conn(c);
                    break;
                }
                c->len = (unsigned)res;
                c->off = 0;
                arm_send(&ring, c);
                break;
            case OP_SEND:
                if (res < 0) {
                    drop_conn(c);
                    break;
                }
                c->off += (unsigned)res;
                if (c->off < c->len)
                    arm_send(&ring, c);
                else
                    arm_recv(&ring, c);
                break;
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
    return NULL;
}

int main(int argc, char **argv) {
    struct server_args a = parse_server_args("uring_echo", argc, argv);
    pthread_t threads[MAX_WORKERS];
    int fds[MAX_WORKERS];
    for (int i = 0; i < a.workers; i++)
        fds[i] = reuseport_listener("uring_echo", a.port, 1);
    for (int i = 0; i < a.workers; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)fds[i]) != 0) {
            fprintf(stderr, "uring_echo: pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < a.workers; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
