/*
 * epoll_echo: the minimal epoll echo server of the I/O bench (benches/io.rs).
 *
 *   epoll_echo --port P [--workers W]
 *
 * W threads (default 2), each with its own listening socket on 127.0.0.1:P (SO_REUSEPORT:
 * the kernel spreads new connections over the W listeners) and its own level-triggered
 * epoll set. A readable connection gets one read(2) of up to 16 KiB and one write(2) of what
 * was read, then the thread goes back to epoll_wait: a request costs a read, a write and a
 * share of one epoll_wait. A short write (which a loopback echo with 64 KiB socket buffers
 * does not meet) waits in poll(2) for room: minimal, not fair to other connections.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server_args.h"

#define MAX_EVENTS 256
#define BUF_SIZE 16384

static int write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *worker(void *arg) {
    int lfd = (int)(intptr_t)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        perror("epoll_echo: epoll");
        exit(1);
    }
    static _Thread_local char buf[BUF_SIZE];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    int one = 1;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) != 0)
                        close(cfd);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0 || write_all(fd, buf, (size_t)r) != 0)
                close(fd); /* also leaves the epoll set: nothing else holds the file */
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    struct server_args a = parse_server_args("epoll_echo", argc, argv);
    pthread_t threads[MAX_WORKERS];
    int fds[MAX_WORKERS];
    for (int i = 0; i < a.workers; i++)
        fds[i] = reuseport_listener("epoll_echo", a.port, 1);
    for (int i = 0; i < a.workers; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)fds[i]) != 0) {
            fprintf(stderr, "epoll_echo: pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < a.workers; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
