/*
 * libuv_echo: the libuv echo server of the I/O bench (benches/io.rs).
 *
 *   libuv_echo --port P [--workers W]
 *
 * W threads (default 2), each running its own uv_loop_t with its own listening socket on
 * 127.0.0.1:P (SO_REUSEPORT, set on the socket before uv_tcp_open since this libuv has no
 * UV_TCP_REUSEPORT: the kernel spreads new connections over the W listeners). A connection
 * reads with uv_read_start into its own 16 KiB buffer and answers with uv_try_write; what
 * the socket does not take at once goes through uv_write (a copy, freed in the callback),
 * which also keeps the order once something is queued.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "server_args.h"

#define BUF_SIZE 16384

struct conn {
    uv_tcp_t tcp;
    char buf[BUF_SIZE];
};

struct pending_write {
    uv_write_t req;
    char data[];
};

static void on_close(uv_handle_t *h) { free(h); } /* the uv_tcp_t is the conn's first member */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct conn *c = (struct conn *)h;
    *buf = uv_buf_init(c->buf, BUF_SIZE);
}

static void on_written(uv_write_t *req, int status) {
    if (status < 0 && !uv_is_closing((uv_handle_t *)req->handle))
        uv_close((uv_handle_t *)req->handle, on_close);
    free(req);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    if (nread < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (nread == 0)
        return;
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    int n = uv_try_write(s, &b, 1);
    if (n == nread)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0, rest = (size_t)nread - done;
    struct pending_write *w = malloc(sizeof *w + rest);
    if (!w) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    memcpy(w->data, buf->base + done, rest);
    uv_buf_t rb = uv_buf_init(w->data, (unsigned)rest);
    if (uv_write(&w->req, s, &rb, 1, on_written) != 0) {
        free(w);
        uv_close((uv_handle_t *)s, on_close);
    }
}

static void on_connection(uv_stream_t *server, int status) {
    if (status < 0)
        return;
    struct conn *c = malloc(sizeof *c);
    if (!c)
        return;
    uv_tcp_init(server->loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_close);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void *worker(void *arg) {
    int fd = (int)(intptr_t)arg;
    uv_loop_t loop;
    uv_tcp_t server;
    int err = uv_loop_init(&loop);
    if (!err)
        err = uv_tcp_init(&loop, &server);
    if (!err)
        err = uv_tcp_open(&server, fd);
    if (!err)
        err = uv_listen((uv_stream_t *)&server, LISTEN_BACKLOG, on_connection);
    if (err) {
        fprintf(stderr, "libuv_echo: %s\n", uv_strerror(err));
        exit(1);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    return NULL;
}

int main(int argc, char **argv) {
    struct server_args a = parse_server_args("libuv_echo", argc, argv);
    pthread_t threads[MAX_WORKERS];
    int fds[MAX_WORKERS];
    for (int i = 0; i < a.workers; i++)
        fds[i] = reuseport_listener("libuv_echo", a.port, 0);
    for (int i = 0; i < a.workers; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)fds[i]) != 0) {
            fprintf(stderr, "libuv_echo: pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < a.workers; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
