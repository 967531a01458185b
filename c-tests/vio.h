/*
 * vio.h: helpers of the I/O tests (on top of vtest.h): loopback TCP sockets, a temp
 * directory, and running one worker-side operation from the host.
 */
#ifndef VELOQ_VIO_H
#define VELOQ_VIO_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "vtest.h"

/* A listening TCP socket on 127.0.0.1 with a kernel-chosen port (stored in *port). */
static inline int vio_listener(uint16_t *port) {
    *port = 0;
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static inline struct sockaddr_in vio_addr(uint16_t port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return a;
}

/* A blocking client connected to 127.0.0.1:port, or a negative errno. */
static inline int vio_connect(uint16_t port) {
    struct sockaddr_in a = vio_addr(port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

/* A connected TCP pair over loopback: *a (client side) and *b (accepted side). */
static inline int vio_tcp_pair(int *a, int *b) {
    uint16_t port;
    int l = vio_listener(&port);
    if (l < 0)
        return l;
    *a = vio_connect(port);
    *b = *a >= 0 ? accept4(l, NULL, NULL, SOCK_CLOEXEC) : -1;
    close(l);
    if (*a < 0 || *b < 0) {
        if (*a >= 0)
            close(*a);
        return -EIO;
    }
    return 0;
}

/* Writes/reads exactly n bytes on a blocking fd; 0 or -1. */
static inline int vio_write_all(int fd, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static inline int vio_read_all(int fd, void *p, size_t n) {
    char *c = (char *)p;
    while (n > 0) {
        ssize_t r = recv(fd, c, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* FNV-1a over a buffer, chained through h. */
static inline uint64_t vio_fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ULL;
    }
    return h;
}
#define VIO_FNV_INIT 14695981039346656037ULL

/* A fresh temp directory (mkdtemp) in buf. */
static inline int vio_tempdir(char *buf, size_t len) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, len, "%s/veloq-test-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf) ? 0 : -errno;
}

/* Raises RLIMIT_NOFILE's soft limit to its hard limit (1,000 connections need ~2,100 fds). */
static inline void vio_raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

#endif /* VELOQ_VIO_H */
