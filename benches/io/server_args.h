/*
 * What the C echo servers of the I/O bench share: the command line (`--port P --workers W`)
 * and a listening socket on 127.0.0.1 with SO_REUSEPORT (one per worker).
 */
#ifndef VELOQ_BENCH_SERVER_ARGS_H
#define VELOQ_BENCH_SERVER_ARGS_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define LISTEN_BACKLOG 4096

struct server_args {
    int port;
    int workers;
};

static inline long server_arg_long(const char *prog, const char *flag, const char *value, long min,
                                   long max) {
    char *end;
    long v = value ? strtol(value, &end, 10) : 0;
    if (!value || *end || v < min || v > max) {
        fprintf(stderr, "%s: %s needs a number in [%ld, %ld]\n", prog, flag, min, max);
        exit(2);
    }
    return v;
}

static inline struct server_args parse_server_args(const char *prog, int argc, char **argv) {
    struct server_args a = {.port = 0, .workers = 2};
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--port"))
            a.port = (int)server_arg_long(prog, argv[i], v, 1, 65535);
        else if (!strcmp(argv[i], "--workers"))
            a.workers = (int)server_arg_long(prog, argv[i], v, 1, MAX_WORKERS);
        else {
            fprintf(stderr, "usage: %s --port P [--workers W]\n", prog);
            exit(2);
        }
    }
    if (!a.port) {
        fprintf(stderr, "%s: --port is required\n", prog);
        exit(2);
    }
    return a;
}

/* A non-blocking TCP socket bound to 127.0.0.1:port with SO_REUSEADDR and SO_REUSEPORT,
 * listening when `do_listen` is set (libuv listens itself). Exits on failure. */
static inline int reuseport_listener(const char *prog, int port, int do_listen) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        (do_listen && listen(fd, LISTEN_BACKLOG) != 0)) {
        fprintf(stderr, "%s: listening on 127.0.0.1:%d: %s\n", prog, port, strerror(errno));
        exit(1);
    }
    return fd;
}

#endif
