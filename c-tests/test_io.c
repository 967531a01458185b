/*
 * Worker-side I/O (veloq_read ... veloq_cancel): every operation's success and error
 * paths on real files and loopback sockets; the callback runs exactly once on the
 * submitting worker (once per entry for multishot); cancel; timeouts; shutdown with
 * operations in flight; a tiny ring with a large backlog; an echo server with 1,000
 * concurrent connections; pool buffers through the fixed-buffer reads and writes (and the
 * plain fallback); statx and fallocate.
 */
#define _GNU_SOURCE
#include <linux/falloc.h>

#include "vio.h"

#define TASK_TAG 0xffffffffULL

static veloq_runtime *g_rt;
static veloq_cq *g_cq;
static char g_dir[256];

/* ------------------------------------------------------------------ one operation */

enum op_kind {
    K_NOP, K_READ, K_WRITE, K_READV, K_WRITEV, K_RECV, K_SEND, K_RECVMSG, K_SENDMSG,
    K_RECV_MULTI, K_ACCEPT, K_CONNECT, K_SOCKET, K_SHUTDOWN, K_CLOSE, K_OPENAT, K_FSYNC,
    K_FDATASYNC, K_TIMEOUT, K_POLL, K_READ_FIXED, K_WRITE_FIXED, K_STATX, K_FALLOCATE, K_SQE
};

/* One operation: its arguments, then what happened (written on the worker). */
struct op {
    enum op_kind kind;
    int fd;
    void *buf;
    uint32_t len;
    uint64_t off;
    int flags;
    const void *addr;
    uint32_t addrlen;
    const char *path;
    uint32_t mode;
    uint64_t ns;
    struct iovec *iov;
    uint32_t iovcnt;
    struct msghdr *msg;
    veloq_buf *vbuf;
    uint32_t buf_off;
    uint64_t len64;
    struct statx *stx;
    const veloq_sqe *sqe;
    int null_cb;
    /* results */
    int64_t submitted;
    int calls;
    int64_t res;
    uint32_t flags_out;
    uint32_t submit_worker, cb_worker;
};

static void op_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct op *o = (struct op *)arg;
    o->calls++;
    o->res = res;
    o->flags_out = flags;
    o->cb_worker = veloq_ctx_worker(ctx);
    if (!(flags & VELOQ_CQE_F_MORE))
        veloq_cq_post(g_cq, (uint64_t)(uintptr_t)o, res);
}

static int64_t submit_op(veloq_ctx *ctx, struct op *o) {
    veloq_io_cb cb = o->null_cb ? NULL : op_cb;
    switch (o->kind) {
    case K_NOP: return veloq_nop(ctx, cb, o);
    case K_READ: return veloq_read(ctx, o->fd, o->buf, o->len, o->off, cb, o);
    case K_WRITE: return veloq_write(ctx, o->fd, o->buf, o->len, o->off, cb, o);
    case K_READV: return veloq_readv(ctx, o->fd, o->iov, o->iovcnt, o->off, cb, o);
    case K_WRITEV: return veloq_writev(ctx, o->fd, o->iov, o->iovcnt, o->off, cb, o);
    case K_RECV: return veloq_recv(ctx, o->fd, o->buf, o->len, o->flags, cb, o);
    case K_SEND: return veloq_send(ctx, o->fd, o->buf, o->len, o->flags, cb, o);
    case K_RECVMSG: return veloq_recvmsg(ctx, o->fd, o->msg, (uint32_t)o->flags, cb, o);
    case K_SENDMSG: return veloq_sendmsg(ctx, o->fd, o->msg, (uint32_t)o->flags, cb, o);
    case K_RECV_MULTI: return veloq_recv_multishot(ctx, o->fd, (uint16_t)o->len, 0, cb, o);
    case K_ACCEPT: return veloq_accept(ctx, o->fd, o->flags != 0, cb, o);
    case K_CONNECT:
        return veloq_connect(ctx, o->fd, (const struct sockaddr *)o->addr, o->addrlen, cb, o);
    case K_SOCKET: return veloq_socket(ctx, AF_INET, SOCK_STREAM, 0, cb, o);
    case K_SHUTDOWN: return veloq_socket_shutdown(ctx, o->fd, o->flags, cb, o);
    case K_CLOSE: return veloq_close(ctx, o->fd, cb, o);
    case K_OPENAT: return veloq_openat(ctx, o->fd, o->path, o->flags, o->mode, cb, o);
    case K_FSYNC: return veloq_fsync(ctx, o->fd, cb, o);
    case K_FDATASYNC: return veloq_fdatasync(ctx, o->fd, cb, o);
    case K_TIMEOUT: return veloq_timeout(ctx, o->ns, cb, o);
    case K_POLL: return veloq_poll_add(ctx, o->fd, (uint32_t)o->flags, cb, o);
    case K_READ_FIXED:
        return veloq_read_fixed(ctx, o->fd, o->vbuf, o->buf_off, o->len, o->off, cb, o);
    case K_WRITE_FIXED:
        return veloq_write_fixed(ctx, o->fd, o->vbuf, o->buf_off, o->len, o->off, cb, o);
    case K_STATX:
        return veloq_statx(ctx, o->fd, o->path, o->flags, o->mode, o->stx, cb, o);
    case K_FALLOCATE: return veloq_fallocate(ctx, o->fd, o->flags, o->off, o->len64, cb, o);
    case K_SQE: return veloq_ctx_submit(ctx, o->sqe, cb, o);
    }
    return -9999;
}

static int64_t op_task(veloq_ctx *ctx, void *arg) {
    struct op *o = (struct op *)arg;
    o->submit_worker = veloq_ctx_worker(ctx);
    o->submitted = submit_op(ctx, o);
    return o->submitted;
}

/* Waits for one entry of g_cq (bounded). */
static int wait_one(veloq_cqe *e) {
    int n = veloq_cq_wait(g_cq, e, 1, 1, VT_REAP_DEADLINE_NS);
    if (n != 1)
        check_fail_(__FILE__, __LINE__, "no completion came (%d)", n);
    return n == 1;
}

/* Runs *o on a worker through task `fn` (which submits it): returns the submit error, or
 * the callback's final result. */
static int64_t run_op_in(struct op *o, veloq_task_fn fn) {
    veloq_cqe e;
    o->calls = 0;
    if (veloq_spawn_to(g_rt, 1, fn, o, g_cq, TASK_TAG) != 0)
        return -9998;
    if (!wait_one(&e))
        return -9997;
    CHECK_EQ(e.user_data, TASK_TAG);
    if (e.res < 0)
        return e.res;
    CHECK_GT(e.res, 0); /* an op id */
    if (!wait_one(&e))
        return -9996;
    CHECK_EQ(e.user_data, (uint64_t)(uintptr_t)o);
    CHECK_EQ(o->calls, 1);
    CHECK_EQ(o->cb_worker, o->submit_worker);
    CHECK_EQ(o->cb_worker, 1);
    return o->res;
}

/* Runs *o on a worker: returns the submit error, or the callback's final result. */
static int64_t run_op(struct op *o) { return run_op_in(o, op_task); }

static void setup(void) {
    g_rt = vt_runtime(2);
    g_cq = g_rt ? vt_cq(g_rt, 1024) : NULL;
}

static void teardown(void) {
    veloq_runtime_free(g_rt);
    CHECK_EQ(veloq_cq_free(g_cq), 0);
    g_rt = NULL;
    g_cq = NULL;
}

static struct op mk(enum op_kind k) {
    struct op o;
    memset(&o, 0, sizeof o);
    o.kind = k;
    o.fd = -1;
    return o;
}

static void file_path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

/* ------------------------------------------------------------------ cases */

static void nop_completes_once_with_zero_on_the_same_worker(void) {
    struct op o = mk(K_NOP);
    setup();
    REQUIRE(g_cq);
    CHECK_EQ(run_op(&o), 0);
    teardown();
}

static void bad_arguments_are_refused_and_the_callback_never_runs(void) {
    char buf[8];
    struct op o;
    setup();
    REQUIRE(g_cq);
    /* NULL ctx, from the host: nothing to run on. */
    CHECK_ERR(veloq_nop(NULL, op_cb, NULL), -EINVAL);
    CHECK_ERR(veloq_read(NULL, 0, buf, 8, 0, op_cb, NULL), -EINVAL);
    CHECK_ERR(veloq_cancel(NULL, 1), -EINVAL);
    CHECK_ERR(veloq_read_fixed(NULL, 0, NULL, 0, 8, 0, op_cb, NULL), -EINVAL);
    CHECK_ERR(veloq_write_fixed(NULL, 0, NULL, 0, 8, 0, op_cb, NULL), -EINVAL);
    CHECK_ERR(veloq_statx(NULL, AT_FDCWD, "/", 0, STATX_SIZE, NULL, op_cb, NULL), -EINVAL);
    CHECK_ERR(veloq_fallocate(NULL, 0, 0, 0, 4096, op_cb, NULL), -EINVAL);
    o = mk(K_NOP);
    o.null_cb = 1;
    CHECK_ERR(run_op(&o), -EINVAL);
    o = mk(K_READ); /* fd -1 */
    o.buf = buf;
    o.len = 8;
    CHECK_ERR(run_op(&o), -EINVAL);
    o = mk(K_READ);
    o.fd = 0;
    o.len = 8; /* NULL buffer, len 8 */
    CHECK_ERR(run_op(&o), -EINVAL);
    o = mk(K_OPENAT); /* NULL path */
    o.fd = AT_FDCWD;
    CHECK_ERR(run_op(&o), -EINVAL);
    o = mk(K_CONNECT);
    o.fd = 0; /* NULL address */
    CHECK_ERR(run_op(&o), -EINVAL);
    o = mk(K_READV);
    o.fd = 0; /* NULL iov */
    CHECK_ERR(run_op(&o), -EINVAL);
    /* Nothing was posted for any of them. */
    {
        veloq_cqe e;
        CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    }
    teardown();
}

static void files_open_write_read_sync_close(void) {
    char path[512], out[64];
    char vbuf1[3], vbuf2[5];
    struct iovec iov[2];
    int fd;
    struct op o;
    setup();
    REQUIRE(g_cq);
    file_path(path, sizeof path, "a.txt");
    o = mk(K_OPENAT);
    o.fd = AT_FDCWD;
    o.path = path;
    o.flags = O_CREAT | O_RDWR | O_TRUNC;
    o.mode = 0600;
    fd = (int)run_op(&o);
    REQUIRE(fd >= 0);
    o = mk(K_WRITE);
    o.fd = fd;
    o.buf = (void *)"hello, veloq";
    o.len = 12;
    CHECK_EQ(run_op(&o), 12);
    o = mk(K_FSYNC);
    o.fd = fd;
    CHECK_EQ(run_op(&o), 0);
    o = mk(K_FDATASYNC);
    o.fd = fd;
    CHECK_EQ(run_op(&o), 0);
    memset(out, 0, sizeof out);
    o = mk(K_READ);
    o.fd = fd;
    o.buf = out;
    o.len = sizeof out;
    o.off = 7;
    CHECK_EQ(run_op(&o), 5);
    CHECK(memcmp(out, "veloq", 5) == 0);
    /* writev / readv */
    iov[0].iov_base = (void *)"abc";
    iov[0].iov_len = 3;
    iov[1].iov_base = (void *)"defgh";
    iov[1].iov_len = 5;
    o = mk(K_WRITEV);
    o.fd = fd;
    o.iov = iov;
    o.iovcnt = 2;
    o.off = 100;
    CHECK_EQ(run_op(&o), 8);
    memset(vbuf1, 0, sizeof vbuf1); /* valgrind does not see the kernel write them */
    memset(vbuf2, 0, sizeof vbuf2);
    iov[0].iov_base = vbuf1;
    iov[1].iov_base = vbuf2;
    o = mk(K_READV);
    o.fd = fd;
    o.iov = iov;
    o.iovcnt = 2;
    o.off = 100;
    CHECK_EQ(run_op(&o), 8);
    CHECK(memcmp(vbuf1, "abc", 3) == 0 && memcmp(vbuf2, "defgh", 5) == 0);
    /* end of file */
    o = mk(K_READ);
    o.fd = fd;
    o.buf = out;
    o.len = 4;
    o.off = 1000;
    CHECK_EQ(run_op(&o), 0);
    o = mk(K_CLOSE);
    o.fd = fd;
    CHECK_EQ(run_op(&o), 0);
    CHECK_EQ(fcntl(fd, F_GETFD), -1); /* really closed */
    unlink(path);
    teardown();
}

static void file_errors_come_back_as_negative_errno(void) {
    char path[512], buf[16];
    struct op o;
    int fd;
    setup();
    REQUIRE(g_cq);
    file_path(path, sizeof path, "missing/nothing");
    o = mk(K_OPENAT);
    o.fd = AT_FDCWD;
    o.path = path;
    o.flags = O_RDONLY;
    CHECK_ERR(run_op(&o), -ENOENT);
    /* A descriptor that is not open: -EBADF for each operation taking one. */
    {
        enum op_kind kinds[] = {K_READ, K_WRITE, K_FSYNC, K_FDATASYNC, K_CLOSE, K_RECV, K_SEND};
        size_t i;
        for (i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
            o = mk(kinds[i]);
            o.fd = 100000;
            o.buf = buf;
            o.len = sizeof buf;
            CHECK_ERR(run_op(&o), -EBADF);
        }
    }
    /* Bad address: the kernel refuses to write to page 0. */
    file_path(path, sizeof path, "b.txt");
    fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    CHECK_EQ(write(fd, "data", 4), 4);
    o = mk(K_READ);
    o.fd = fd;
    o.buf = (void *)(uintptr_t)16;
    o.len = 4;
    CHECK_ERR(run_op(&o), -EFAULT);
    /* A socket operation on a file. */
    o = mk(K_RECV);
    o.fd = fd;
    o.buf = buf;
    o.len = 4;
    CHECK_ERR(run_op(&o), -ENOTSOCK);
    close(fd);
    unlink(path);
    teardown();
}

static void sockets_connect_accept_send_recv_shutdown(void) {
    uint16_t port;
    int l, c, s;
    char buf[64];
    struct sockaddr_in addr;
    struct op o;
    struct msghdr msg;
    struct iovec iov;
    setup();
    REQUIRE(g_cq);
    l = vio_listener(&port);
    REQUIRE(l >= 0);
    /* veloq_socket + veloq_connect on the worker, veloq_accept there too. */
    o = mk(K_SOCKET);
    c = (int)run_op(&o);
    REQUIRE(c >= 0);
    addr = vio_addr(port);
    o = mk(K_CONNECT);
    o.fd = c;
    o.addr = &addr;
    o.addrlen = sizeof addr;
    CHECK_EQ(run_op(&o), 0);
    o = mk(K_ACCEPT);
    o.fd = l;
    s = (int)run_op(&o);
    REQUIRE(s >= 0);
    /* send / recv */
    o = mk(K_SEND);
    o.fd = c;
    o.buf = (void *)"ping";
    o.len = 4;
    o.flags = MSG_NOSIGNAL;
    CHECK_EQ(run_op(&o), 4);
    memset(buf, 0, sizeof buf);
    o = mk(K_RECV);
    o.fd = s;
    o.buf = buf;
    o.len = sizeof buf;
    CHECK_EQ(run_op(&o), 4);
    CHECK(memcmp(buf, "ping", 4) == 0);
    /* sendmsg / recvmsg */
    memset(&msg, 0, sizeof msg);
    iov.iov_base = (void *)"pong!";
    iov.iov_len = 5;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    o = mk(K_SENDMSG);
    o.fd = s;
    o.msg = &msg;
    o.flags = MSG_NOSIGNAL;
    CHECK_EQ(run_op(&o), 5);
    iov.iov_base = buf;
    iov.iov_len = sizeof buf;
    o = mk(K_RECVMSG);
    o.fd = c;
    o.msg = &msg;
    CHECK_EQ(run_op(&o), 5);
    CHECK(memcmp(buf, "pong!", 5) == 0);
    /* poll_add: readable once data waits */
    CHECK_EQ(send(s, "x", 1, MSG_NOSIGNAL), 1);
    o = mk(K_POLL);
    o.fd = c;
    o.flags = POLLIN;
    CHECK_EQ(run_op(&o) & POLLIN, POLLIN);
    CHECK_EQ(recv(c, buf, 1, 0), 1);
    /* shutdown(SHUT_WR): the peer reads end of stream */
    o = mk(K_SHUTDOWN);
    o.fd = c;
    o.flags = SHUT_WR;
    CHECK_EQ(run_op(&o), 0);
    o = mk(K_RECV);
    o.fd = s;
    o.buf = buf;
    o.len = sizeof buf;
    CHECK_EQ(run_op(&o), 0);
    close(c);
    close(s);
    /* shutdown of a non-socket */
    {
        int p[2];
        REQUIRE(pipe(p) == 0);
        o = mk(K_SHUTDOWN);
        o.fd = p[0];
        o.flags = SHUT_RDWR;
        CHECK_ERR(run_op(&o), -ENOTSOCK);
        close(p[0]);
        close(p[1]);
    }
    close(l);
    teardown();
}

static void connect_refused_and_closed_peer(void) {
    uint16_t port;
    int l, c, s, i;
    struct sockaddr_in addr;
    char buf[16];
    int64_t r = 0;
    struct op o;
    setup();
    REQUIRE(g_cq);
    /* A port nobody listens on: bind, learn it, close. */
    l = vio_listener(&port);
    REQUIRE(l >= 0);
    close(l);
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(c >= 0);
    addr = vio_addr(port);
    o = mk(K_CONNECT);
    o.fd = c;
    o.addr = &addr;
    o.addrlen = sizeof addr;
    CHECK_ERR(run_op(&o), -ECONNREFUSED);
    close(c);
    /* Closed peer: recv gives 0; sending soon fails with EPIPE or ECONNRESET. */
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    close(s);
    o = mk(K_RECV);
    o.fd = c;
    o.buf = buf;
    o.len = sizeof buf;
    CHECK_EQ(run_op(&o), 0);
    for (i = 0; i < 50 && r >= 0; i++) {
        o = mk(K_SEND);
        o.fd = c;
        o.buf = (void *)"data";
        o.len = 4;
        o.flags = MSG_NOSIGNAL;
        r = run_op(&o);
        check_sleep_ms(2);
    }
    CHECK(r == -EPIPE || r == -ECONNRESET);
    close(c);
    teardown();
}

static void timeouts_expire_with_etime_after_their_time(void) {
    struct op o = mk(K_TIMEOUT);
    int64_t start;
    setup();
    REQUIRE(g_cq);
    o.ns = 20 * 1000000ULL;
    start = check_now_ns();
    CHECK_ERR(run_op(&o), -ETIME);
    CHECK_GE(check_now_ns() - start, 20 * 1000000LL);
    o = mk(K_TIMEOUT);
    o.ns = 0;
    CHECK_ERR(run_op(&o), -ETIME);
    teardown();
}

static void recv_multishot_without_buffers_ends_with_one_final_entry(void) {
    int c, s;
    struct op o = mk(K_RECV_MULTI);
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    CHECK_EQ(send(c, "x", 1, MSG_NOSIGNAL), 1);
    o.fd = s;
    o.len = 77; /* group 77: never provided */
    CHECK_ERR(run_op(&o), -ENOBUFS);
    CHECK_EQ(o.flags_out, 0);
    close(c);
    close(s);
    teardown();
}

/* ---- cancel */

struct cancel_req {
    int64_t id;
    int rc;
};

static int64_t cancel_task(veloq_ctx *ctx, void *arg) {
    struct cancel_req *c = (struct cancel_req *)arg;
    c->rc = veloq_cancel(ctx, c->id);
    return c->rc;
}

/* Cancels `id` from a callback on `worker`: veloq_cancel's result. */
static int run_cancel_on(int32_t worker, int64_t id) {
    struct cancel_req c;
    veloq_cqe e;
    c.id = id;
    c.rc = -9999;
    if (veloq_spawn_to(g_rt, worker, cancel_task, &c, g_cq, TASK_TAG) != 0)
        return -9998;
    while (wait_one(&e)) {
        if (e.user_data == TASK_TAG)
            return c.rc;
        check_fail_(__FILE__, __LINE__, "unexpected entry %" PRIu64, e.user_data);
    }
    return -9997;
}

static int run_cancel(int64_t id) { return run_cancel_on(1, id); }

static void cancel_of_an_unknown_op_is_enoent(void) {
    setup();
    REQUIRE(g_cq);
    CHECK_ERR(run_cancel(12345), -ENOENT);
    CHECK_ERR(run_cancel(0), -ENOENT);
    CHECK_ERR(run_cancel(-5), -ENOENT);
    CHECK_ERR(run_cancel(INT64_MAX), -ENOENT);
    teardown();
}

static void cancelled_recv_completes_once_and_never_touches_the_buffer(void) {
    unsigned char buf[256], check[256];
    struct op o = mk(K_RECV);
    veloq_cqe e;
    int c, s, i;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    for (i = 0; i < 256; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    memcpy(check, buf, sizeof buf);
    o.fd = s;
    o.buf = buf;
    o.len = sizeof buf;
    REQUIRE(veloq_spawn_to(g_rt, 1, op_task, &o, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    REQUIRE(e.res > 0);
    check_sleep_ms(20); /* in the kernel's hands by now */
    CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    CHECK_EQ(run_cancel(o.submitted), 0);
    REQUIRE(wait_one(&e));
    CHECK_EQ(e.user_data, (uint64_t)(uintptr_t)&o);
    CHECK_ERR(e.res, -ECANCELED);
    /* A second cancel finds nothing: it completed. */
    CHECK_ERR(run_cancel(o.submitted), -ENOENT);
    /* Data arrives afterwards: the buffer stays as it was; the data waits in the socket. */
    CHECK_EQ(send(c, "XXXXXXXX", 8, MSG_NOSIGNAL), 8);
    check_sleep_ms(50);
    CHECK(memcmp(buf, check, sizeof buf) == 0);
    CHECK_EQ(o.calls, 1);
    CHECK_EQ(recv(s, check, 8, MSG_DONTWAIT), 8);
    CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    close(c);
    close(s);
    teardown();
}

static void cancelled_timeout_completes_with_ecanceled(void) {
    struct op o = mk(K_TIMEOUT);
    veloq_cqe e;
    setup();
    REQUIRE(g_cq);
    o.ns = 3600ULL * 1000000000ULL;
    REQUIRE(veloq_spawn_to(g_rt, 1, op_task, &o, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    REQUIRE(e.res > 0);
    CHECK_EQ(run_cancel(o.submitted), 0);
    REQUIRE(wait_one(&e));
    CHECK_ERR(e.res, -ECANCELED);
    CHECK_EQ(o.calls, 1);
    teardown();
}

/* Each worker's first operation: the ids differ, and cancelling one worker's operation on
 * the other finds nothing there and cancels nothing. */
static void cancel_of_another_workers_op_is_enoent_and_cancels_nothing(void) {
    struct op o[2] = {mk(K_TIMEOUT), mk(K_TIMEOUT)};
    veloq_cqe e;
    int w;
    setup();
    REQUIRE(g_cq);
    for (w = 0; w < 2; w++) {
        o[w].ns = 3600ULL * 1000000000ULL;
        REQUIRE(veloq_spawn_to(g_rt, w, op_task, &o[w], g_cq, TASK_TAG) == 0);
        REQUIRE(wait_one(&e));
        REQUIRE(e.res > 0);
    }
    CHECK(o[0].submitted != o[1].submitted);
    CHECK_ERR(run_cancel_on(0, o[1].submitted), -ENOENT);
    CHECK_ERR(run_cancel_on(1, o[0].submitted), -ENOENT);
    check_sleep_ms(20);
    CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0); /* both still waiting */
    for (w = 0; w < 2; w++) {
        CHECK_EQ(run_cancel_on(w, o[w].submitted), 0);
        REQUIRE(wait_one(&e));
        CHECK_EQ(e.user_data, (uint64_t)(uintptr_t)&o[w]);
        CHECK_ERR(e.res, -ECANCELED);
        CHECK_EQ(o[w].calls, 1);
    }
    teardown();
}

/* ---- multishot accept */

static long g_ma_more, g_ma_final, g_ma_bad;
static int64_t g_ma_final_res;

static void multi_accept_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    (void)ctx;
    (void)arg;
    if (flags & VELOQ_CQE_F_MORE) {
        if (res >= 0) {
            close((int)res);
            __atomic_fetch_add(&g_ma_more, 1, __ATOMIC_SEQ_CST);
        } else {
            __atomic_fetch_add(&g_ma_bad, 1, __ATOMIC_SEQ_CST);
        }
    } else {
        if (res >= 0)
            close((int)res);
        g_ma_final_res = res;
        __atomic_fetch_add(&g_ma_final, 1, __ATOMIC_SEQ_CST);
        veloq_cq_post(g_cq, 1, res);
    }
}

static int64_t multi_accept_task(veloq_ctx *ctx, void *arg) {
    return veloq_accept(ctx, *(int *)arg, true, multi_accept_cb, NULL);
}

static void multishot_accept_takes_1000_connections_until_cancelled(void) {
    size_t n = CHECK_SCALED(1000), i;
    uint16_t port;
    int l, *clients;
    veloq_cqe e;
    int64_t id, start;
    setup();
    REQUIRE(g_cq);
    g_ma_more = g_ma_final = g_ma_bad = 0;
    l = vio_listener(&port);
    REQUIRE(l >= 0);
    clients = (int *)calloc(n, sizeof *clients);
    REQUIRE(clients);
    REQUIRE(veloq_spawn_to(g_rt, 1, multi_accept_task, &l, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    id = e.res;
    REQUIRE(id > 0);
    for (i = 0; i < n; i++) {
        clients[i] = vio_connect(port);
        CHECK_GE(clients[i], 0);
    }
    start = check_now_ns();
    while (__atomic_load_n(&g_ma_more, __ATOMIC_SEQ_CST) < (long)n &&
           __atomic_load_n(&g_ma_final, __ATOMIC_SEQ_CST) == 0 &&
           check_now_ns() - start < VT_REAP_DEADLINE_NS)
        check_sleep_ms(1);
    CHECK_EQ(g_ma_more, (long)n);
    CHECK_EQ(g_ma_final, 0);
    CHECK_EQ(run_cancel(id), 0);
    REQUIRE(wait_one(&e));
    CHECK_EQ(e.user_data, 1);
    CHECK_ERR(g_ma_final_res, -ECANCELED);
    CHECK_EQ(g_ma_final, 1);
    CHECK_EQ(g_ma_more, (long)n);
    CHECK_EQ(g_ma_bad, 0);
    for (i = 0; i < n; i++)
        if (clients[i] >= 0)
            close(clients[i]);
    free(clients);
    close(l);
    teardown();
}

/* ---- shutdown with operations in flight */

static check_tally g_sd_tally;
static long g_sd_not_cancelled;

static void sd_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    (void)ctx;
    (void)flags;
    check_tally_mark(&g_sd_tally, (uint64_t)(uintptr_t)arg);
    if (res != -ECANCELED)
        __atomic_fetch_add(&g_sd_not_cancelled, 1, __ATOMIC_SEQ_CST);
}

struct sd_args {
    int fd;
    size_t n;
    char *bufs;
    long accepted;
};

static int64_t sd_task(veloq_ctx *ctx, void *arg) {
    struct sd_args *a = (struct sd_args *)arg;
    size_t i;
    for (i = 0; i < a->n; i++) {
        int64_t r = i % 2 ? veloq_recv(ctx, a->fd, a->bufs + 16 * i, 16, 0, sd_cb, (void *)(uintptr_t)i)
                          : veloq_timeout(ctx, 3600ULL * 1000000000ULL, sd_cb, (void *)(uintptr_t)i);
        if (r > 0)
            a->accepted++;
    }
    return 0;
}

static void shutdown_cancels_1000_inflight_ops_each_callback_once(void) {
    size_t n = CHECK_SCALED(1000);
    struct sd_args a;
    veloq_cqe e;
    int c, s;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    REQUIRE(check_tally_init(&g_sd_tally, n));
    g_sd_not_cancelled = 0;
    a.fd = s;
    a.n = n;
    a.accepted = 0;
    a.bufs = (char *)calloc(n, 16);
    REQUIRE(a.bufs);
    REQUIRE(veloq_spawn_to(g_rt, 1, sd_task, &a, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    CHECK_EQ(a.accepted, (long)n);
    check_sleep_ms(20);
    CHECK_EQ(g_sd_tally.marked, 0);
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    CHECK_TALLY_EXACT(&g_sd_tally);
    CHECK_EQ(g_sd_not_cancelled, 0);
    teardown();
    check_tally_free(&g_sd_tally);
    free(a.bufs);
    close(c);
    close(s);
}

/* ---- a ring of 8 entries with 10,000 operations outstanding */

static long g_small_done, g_small_bad;

static void small_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    (void)ctx;
    (void)flags;
    (void)arg;
    if (res != 0 && res != -ETIME)
        g_small_bad++;
    if (++g_small_done == (long)(uintptr_t)arg)
        veloq_cq_post(g_cq, 2, 0);
}

static int64_t small_task(veloq_ctx *ctx, void *arg) {
    size_t n = (size_t)(uintptr_t)arg, i;
    int64_t refused = 0;
    for (i = 0; i < n; i++) {
        int64_t r = i % 2 ? veloq_nop(ctx, small_cb, arg) : veloq_timeout(ctx, 100000, small_cb, arg);
        refused += r <= 0;
    }
    return refused;
}

/* n nops and timeouts from one task on worker 1 of a runtime made by b: each callback
 * runs once, none is refused. */
static void small_ops_each_complete_once(veloq_builder *b, size_t n) {
    veloq_cqe e;
    REQUIRE(veloq_runtime_build(b, &g_rt) == 0);
    g_cq = vt_cq(g_rt, 64);
    REQUIRE(g_cq);
    g_small_done = g_small_bad = 0;
    REQUIRE(veloq_spawn_to(g_rt, 1, small_task, (void *)(uintptr_t)n, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    CHECK_EQ(e.res, 0); /* none refused */
    REQUIRE(wait_one(&e));
    CHECK_EQ(e.user_data, 2);
    CHECK_EQ(g_small_done, (long)n);
    CHECK_EQ(g_small_bad, 0);
    teardown();
}

static void a_ring_of_8_entries_carries_10000_outstanding_ops(void) {
    size_t n = CHECK_SCALED(10000);
    veloq_builder *b = veloq_builder_new();
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_ring_entries(b, 8), 0);
    small_ops_each_complete_once(b, n);
}

static void with_completion_batching_10000_ops_each_complete_once(void) {
    size_t n = CHECK_SCALED(10000);
    veloq_builder *b = veloq_builder_new();
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_io_batch_wait(b, 1000), 0);
    small_ops_each_complete_once(b, n);
}

/* Polling (veloq_builder_io_poll) on a small ring: the backlog drains, each operation
 * completes once, and shutdown ends a poll with timers still in flight. */
static void with_io_polling_10000_ops_each_complete_once(void) {
    size_t n = CHECK_SCALED(10000);
    veloq_builder *b = veloq_builder_new();
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_ring_entries(b, 8), 0);
    CHECK_EQ(veloq_builder_io_poll(b, 10000), 0);
    small_ops_each_complete_once(b, n);
}

static void impossible_ring_sizes_are_refused(void) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    REQUIRE(b);
    CHECK_ERR(veloq_builder_ring_entries(b, 0), -EINVAL);
    CHECK_ERR(veloq_builder_ring_entries(b, 1u << 20), -EINVAL);
    CHECK_ERR(veloq_builder_ring_entries(b, UINT32_MAX), -EINVAL);
    /* The builder is unchanged and still builds. */
    CHECK_EQ(veloq_builder_workers(b, 1), 0);
    CHECK_EQ(veloq_runtime_build(b, &rt), 0);
    veloq_runtime_free(rt);
}

/* ---- echo server, 1,000 concurrent connections */

#define ECHO_BUF 2048

struct echo_conn {
    int fd;
    uint32_t have, sent;
    char buf[ECHO_BUF];
};

static long g_echo_open;

static void echo_recv_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg);

static void echo_close(struct echo_conn *c) {
    close(c->fd);
    free(c);
    __atomic_fetch_sub(&g_echo_open, 1, __ATOMIC_SEQ_CST);
}

static void echo_arm_recv(veloq_ctx *ctx, struct echo_conn *c) {
    if (veloq_recv(ctx, c->fd, c->buf, ECHO_BUF, 0, echo_recv_cb, c) < 0)
        echo_close(c);
}

static void echo_send_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct echo_conn *c = (struct echo_conn *)arg;
    (void)flags;
    if (res <= 0) {
        echo_close(c);
        return;
    }
    c->sent += (uint32_t)res;
    if (c->sent < c->have) {
        if (veloq_send(ctx, c->fd, c->buf + c->sent, c->have - c->sent, MSG_NOSIGNAL,
                       echo_send_cb, c) < 0)
            echo_close(c);
        return;
    }
    echo_arm_recv(ctx, c);
}

static void echo_recv_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct echo_conn *c = (struct echo_conn *)arg;
    (void)flags;
    if (res <= 0) {
        echo_close(c);
        return;
    }
    c->have = (uint32_t)res;
    c->sent = 0;
    if (veloq_send(ctx, c->fd, c->buf, c->have, MSG_NOSIGNAL, echo_send_cb, c) < 0)
        echo_close(c);
}

static int g_echo_listener;
static int64_t g_echo_accept_id;

static void echo_accept_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct echo_conn *c;
    (void)arg;
    if (!(flags & VELOQ_CQE_F_MORE)) {
        if (res == -ECANCELED || res == -ESHUTDOWN) {
            veloq_cq_post(g_cq, 3, res);
            return;
        }
        /* The kernel ended the multishot accept on its own (it does when the completion
         * queue overflows; this entry may still carry a connection): accept again. */
        int64_t id = veloq_accept(ctx, g_echo_listener, true, echo_accept_cb, NULL);
        __atomic_store_n(&g_echo_accept_id, id, __ATOMIC_SEQ_CST);
        if (id < 0)
            veloq_cq_post(g_cq, 3, id);
    }
    if (res < 0)
        return;
    c = (struct echo_conn *)malloc(sizeof *c);
    if (!c) {
        close((int)res);
        return;
    }
    __atomic_fetch_add(&g_echo_open, 1, __ATOMIC_SEQ_CST);
    c->fd = (int)res;
    echo_arm_recv(ctx, c);
}

static int64_t echo_start(veloq_ctx *ctx, void *arg) {
    int64_t id;
    g_echo_listener = *(int *)arg;
    id = veloq_accept(ctx, g_echo_listener, true, echo_accept_cb, NULL);
    __atomic_store_n(&g_echo_accept_id, id, __ATOMIC_SEQ_CST);
    return id;
}

struct echo_client {
    pthread_t thread;
    uint16_t port;
    size_t conns, rounds;
    size_t bad;
};

static void *echo_client_main(void *p) {
    struct echo_client *cl = (struct echo_client *)p;
    int *fds = (int *)calloc(cl->conns, sizeof *fds);
    char out[1500], in[1500];
    size_t i, r;
    if (!fds) {
        cl->bad++;
        return NULL;
    }
    for (i = 0; i < cl->conns; i++) {
        fds[i] = vio_connect(cl->port);
        if (fds[i] < 0)
            cl->bad++;
    }
    /* Every connection is open at once; each round sends on all, then reads all back. */
    for (r = 0; r < cl->rounds; r++) {
        for (i = 0; i < cl->conns; i++) {
            size_t k, len = 1 + (i * 131 + r * 17) % sizeof out;
            for (k = 0; k < len; k++)
                out[k] = (char)(i * 31 + r * 7 + k);
            if (fds[i] >= 0 && vio_write_all(fds[i], out, len) != 0)
                cl->bad++;
        }
        for (i = 0; i < cl->conns; i++) {
            size_t k, len = 1 + (i * 131 + r * 17) % sizeof out;
            for (k = 0; k < len; k++)
                out[k] = (char)(i * 31 + r * 7 + k);
            if (fds[i] < 0)
                continue;
            if (vio_read_all(fds[i], in, len) != 0 ||
                vio_fnv(VIO_FNV_INIT, in, len) != vio_fnv(VIO_FNV_INIT, out, len))
                cl->bad++;
        }
    }
    for (i = 0; i < cl->conns; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    return NULL;
}

static void echo_server_with_1000_concurrent_connections(void) {
    enum { CLIENTS = 4 };
    struct echo_client cl[CLIENTS];
    size_t total = CHECK_SCALED(1000), i;
    uint16_t port;
    int l;
    int64_t start, id;
    veloq_cqe e;
    setup();
    REQUIRE(g_cq);
    g_echo_open = 0;
    l = vio_listener(&port);
    REQUIRE(l >= 0);
    REQUIRE(veloq_spawn_to(g_rt, 1, echo_start, &l, g_cq, TASK_TAG) == 0);
    REQUIRE(wait_one(&e));
    id = e.res;
    REQUIRE(id > 0);
    for (i = 0; i < CLIENTS; i++) {
        cl[i].port = port;
        cl[i].conns = total / CLIENTS + (i < total % CLIENTS);
        cl[i].rounds = 3;
        cl[i].bad = 0;
        REQUIRE(pthread_create(&cl[i].thread, NULL, echo_client_main, &cl[i]) == 0);
    }
    for (i = 0; i < CLIENTS; i++) {
        pthread_join(cl[i].thread, NULL);
        CHECK_EQ(cl[i].bad, 0);
    }
    /* The clients closed: every server connection sees end of stream and frees itself. */
    start = check_now_ns();
    while (__atomic_load_n(&g_echo_open, __ATOMIC_SEQ_CST) > 0 &&
           check_now_ns() - start < VT_REAP_DEADLINE_NS)
        check_sleep_ms(1);
    CHECK_EQ(g_echo_open, 0);
    CHECK_EQ(run_cancel(__atomic_load_n(&g_echo_accept_id, __ATOMIC_SEQ_CST)), 0);
    REQUIRE(wait_one(&e));
    CHECK_EQ(e.user_data, 3);
    CHECK_ERR(e.res, -ECANCELED);
    close(l);
    teardown();
}

/* ------------------------------------------------------------------ pool buffers, statx */

/* A pool buffer allocated on a worker (veloq_buf_alloc needs the worker's ctx). */
struct buf_job {
    uint32_t size;
    veloq_buf *buf;
    veloq_buf_stats stats;
};

static int64_t alloc_task(veloq_ctx *ctx, void *arg) {
    struct buf_job *j = (struct buf_job *)arg;
    int rc = veloq_buf_alloc(ctx, j->size, &j->buf);
    if (rc == 0)
        rc = veloq_buf_pool_stats(ctx, &j->stats);
    return rc;
}

static veloq_buf *alloc_on(uint32_t worker, uint32_t size, veloq_buf_stats *stats) {
    struct buf_job j;
    veloq_cqe e;
    memset(&j, 0, sizeof j);
    j.size = size;
    if (veloq_spawn_to(g_rt, worker, alloc_task, &j, g_cq, TASK_TAG) != 0 || !wait_one(&e))
        return NULL;
    CHECK_EQ(e.res, 0);
    if (stats)
        *stats = j.stats;
    return j.buf;
}

/* The fixed-buffer operation `o` describes (K_READ_FIXED / K_WRITE_FIXED), as a veloq_sqe for
 * veloq_ctx_submit (VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED) with deadline `ns`. */
static void as_fixed_sqe(struct op *o, veloq_sqe *s, uint64_t ns) {
    memset(s, 0, sizeof *s);
    s->opcode = o->kind == K_READ_FIXED ? VELOQ_OP_READ_FIXED : VELOQ_OP_WRITE_FIXED;
    s->fd = o->fd;
    s->addr = (uint64_t)(uintptr_t)o->vbuf;
    s->addr2 = o->buf_off;
    s->len = o->len;
    s->offset = o->off;
    s->timeout_ns = ns;
    o->kind = K_SQE;
    o->sqe = s;
}

/* Writes `n` bytes of pattern `seed` from pool buffer b (at buf_off) at file offset `off`,
 * reads them back into pool buffer r (at buf_off) and compares. `via_sqe`: through
 * veloq_ctx_submit's sqe opcodes (1: no deadline, 2: a deadline that does not pass). */
static void fixed_round_trip_via(int fd, veloq_buf *b, veloq_buf *r, uint32_t buf_off,
                                 uint32_t n, uint64_t off, unsigned seed, int via_sqe) {
    unsigned char *w = (unsigned char *)veloq_buf_data(b) + buf_off;
    unsigned char *rd = (unsigned char *)veloq_buf_data(r) + buf_off;
    uint64_t ns = via_sqe == 2 ? 10ull * 1000 * 1000 * 1000 : 0;
    veloq_sqe s;
    struct op o;
    uint32_t i;
    for (i = 0; i < n; i++)
        w[i] = (unsigned char)(seed * 131 + i * 7);
    memset(rd, 0, n); /* valgrind does not see the kernel write it */
    o = mk(K_WRITE_FIXED);
    o.fd = fd;
    o.vbuf = b;
    o.buf_off = buf_off;
    o.len = n;
    o.off = off;
    if (via_sqe)
        as_fixed_sqe(&o, &s, ns);
    CHECK_EQ(run_op(&o), n);
    o = mk(K_READ_FIXED);
    o.fd = fd;
    o.vbuf = r;
    o.buf_off = buf_off;
    o.len = n;
    o.off = off;
    if (via_sqe)
        as_fixed_sqe(&o, &s, ns);
    CHECK_EQ(run_op(&o), n);
    CHECK(memcmp(w, rd, n) == 0);
}

static void fixed_round_trip(int fd, veloq_buf *b, veloq_buf *r, uint32_t buf_off, uint32_t n,
                             uint64_t off, unsigned seed) {
    fixed_round_trip_via(fd, b, r, buf_off, n, off, seed, 0);
}

static void pool_buffers_write_and_read_a_file_fixed_or_plain(void) {
    char path[512];
    veloq_buf_stats st;
    veloq_buf *a, *b, *big, *other;
    struct op o;
    int fd;
    setup();
    REQUIRE(g_cq);
    file_path(path, sizeof path, "fixed.bin");
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    a = alloc_on(1, 16384, &st);
    b = alloc_on(1, 16384, NULL);
    big = alloc_on(1, 2u << 20, NULL);  /* above the largest class: a plain allocation */
    other = alloc_on(0, 16384, NULL);   /* registered with worker 0's ring, not worker 1's */
    REQUIRE(a && b && big && other);
    /* Registered (root has the memlock for the default pool): the fixed opcodes run. */
    if (st.registration_error == 0)
        CHECK(veloq_buf_index(a) >= 0 && veloq_buf_index(b) >= 0);
    else
        printf("  (pool not registered: %d; the fixed path is not exercised)\n",
               st.registration_error);
    CHECK_ERR(veloq_buf_index(big), -ENOENT);
    fixed_round_trip(fd, a, b, 0, 16384, 0, 1);
    fixed_round_trip(fd, a, b, 4096, 8192, 65536, 2); /* inside the buffer, at an offset */
    fixed_round_trip(fd, a, b, 100, 1, 7, 3);         /* one byte, unaligned */
    fixed_round_trip(fd, big, b, 0, 16384, 4096, 4);  /* plain buffer: a plain write */
    fixed_round_trip(fd, other, a, 0, 16384, 8192, 5); /* another worker's buffer */
    /* The same through veloq_ctx_submit's VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED. */
    fixed_round_trip_via(fd, a, b, 4096, 8192, 131072, 7, 1);
    fixed_round_trip_via(fd, a, b, 0, 4096, 0, 8, 2); /* with a deadline */
    fixed_round_trip_via(fd, other, a, 0, 16384, 8192, 9, 1);
    fixed_round_trip_via(fd, big, b, 0, 16384, 4096, 10, 1);
    {
        veloq_sqe s;
        o = mk(K_READ_FIXED);
        o.fd = fd;
        o.vbuf = a;
        o.buf_off = 16384 - 100; /* 200 bytes from here pass the capacity */
        o.len = 200;
        as_fixed_sqe(&o, &s, 0);
        CHECK_ERR(run_op(&o), -EINVAL);
        CHECK_EQ(o.calls, 0);
        o = mk(K_WRITE_FIXED);
        o.fd = fd;
        o.len = 8; /* no buffer */
        as_fixed_sqe(&o, &s, 0);
        CHECK_ERR(run_op(&o), -EINVAL);
        CHECK_EQ(o.calls, 0);
    }
    /* The whole of a 2 MiB plain buffer, then a short read at the end of the file. */
    fixed_round_trip(fd, big, big, 0, 2u << 20, 1u << 20, 6);
    o = mk(K_READ_FIXED);
    o.fd = fd;
    o.vbuf = a;
    o.len = 16384;
    o.off = (3u << 20) - 10;
    CHECK_EQ(run_op(&o), 10);
    o.off = 3u << 20;
    CHECK_EQ(run_op(&o), 0); /* end of file */
    close(fd);
    unlink(path);
    veloq_buf_free(a);
    veloq_buf_free(b);
    veloq_buf_free(big);
    veloq_buf_free(other);
    teardown();
}

static void fixed_ops_refuse_bad_input_and_report_kernel_errors(void) {
    char path[512];
    veloq_buf *a;
    struct op o;
    int fd, ro;
    setup();
    REQUIRE(g_cq);
    a = alloc_on(1, 4096, NULL);
    REQUIRE(a);
    CHECK_EQ(veloq_buf_capacity(a), 4096);
    file_path(path, sizeof path, "ro.bin");
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ro = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(ro >= 0);
    /* Refused at the call: no callback, nothing submitted. */
    {
        enum op_kind kinds[] = {K_READ_FIXED, K_WRITE_FIXED};
        size_t i;
        for (i = 0; i < 2; i++) {
            o = mk(kinds[i]);
            o.fd = fd;
            o.vbuf = NULL; /* no buffer */
            o.len = 1;
            CHECK_ERR(run_op(&o), -EINVAL);
            CHECK_EQ(o.calls, 0);
            o.vbuf = a;
            o.len = 4097; /* past the end */
            CHECK_ERR(run_op(&o), -EINVAL);
            o.buf_off = 4096;
            o.len = 1;
            CHECK_ERR(run_op(&o), -EINVAL);
            o.buf_off = UINT32_MAX; /* no wrap-around */
            o.len = 2;
            CHECK_ERR(run_op(&o), -EINVAL);
            o.buf_off = 0;
            o.len = 16;
            o.fd = -1;
            CHECK_ERR(run_op(&o), -EINVAL);
            o.fd = fd;
            o.null_cb = 1;
            CHECK_ERR(run_op(&o), -EINVAL);
            CHECK_EQ(o.calls, 0);
            /* Kernel errors come to the callback. */
            o.null_cb = 0;
            o.fd = 100000;
            CHECK_ERR(run_op(&o), -EBADF);
        }
    }
    o = mk(K_WRITE_FIXED);
    o.fd = ro;
    o.vbuf = a;
    o.len = 16;
    CHECK_ERR(run_op(&o), -EBADF); /* not open for writing */
    /* The end of the buffer exactly is fine. */
    o = mk(K_WRITE_FIXED);
    o.fd = fd;
    o.vbuf = a;
    o.buf_off = 4000;
    o.len = 96;
    CHECK_EQ(run_op(&o), 96);
    close(ro);
    close(fd);
    unlink(path);
    veloq_buf_free(a);
    teardown();
}

static void statx_and_fallocate_report_sizes_and_errors(void) {
    char path[512];
    struct statx stx;
    struct op o;
    int fd;
    setup();
    REQUIRE(g_cq);
    file_path(path, sizeof path, "sized.bin");
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    CHECK_EQ(write(fd, "0123456789", 10), 10);
    /* By path. */
    memset(&stx, 0, sizeof stx);
    o = mk(K_STATX);
    o.fd = AT_FDCWD;
    o.path = path;
    o.mode = STATX_SIZE | STATX_MODE;
    o.stx = &stx;
    CHECK_EQ(run_op(&o), 0);
    CHECK(stx.stx_mask & STATX_SIZE);
    CHECK_EQ(stx.stx_size, 10);
    CHECK(S_ISREG(stx.stx_mode));
    CHECK_EQ(stx.stx_mode & 0777, 0600);
    /* fallocate grows the file; statx of the descriptor itself (AT_EMPTY_PATH) sees it. */
    o = mk(K_FALLOCATE);
    o.fd = fd;
    o.off = 0;
    o.len64 = 1u << 20;
    CHECK_EQ(run_op(&o), 0);
    memset(&stx, 0, sizeof stx);
    o = mk(K_STATX);
    o.fd = fd;
    o.path = "";
    o.flags = AT_EMPTY_PATH;
    o.mode = STATX_SIZE | STATX_BLOCKS;
    o.stx = &stx;
    CHECK_EQ(run_op(&o), 0);
    CHECK_EQ(stx.stx_size, 1u << 20);
    CHECK(stx.stx_blocks * 512 >= (1u << 20));
    /* FALLOC_FL_KEEP_SIZE allocates past the end without growing it. */
    o = mk(K_FALLOCATE);
    o.fd = fd;
    o.flags = FALLOC_FL_KEEP_SIZE;
    o.off = 1u << 20;
    o.len64 = 1u << 20;
    CHECK_EQ(run_op(&o), 0);
    CHECK_EQ(lseek(fd, 0, SEEK_END), 1u << 20);
    /* Kernel errors. */
    o = mk(K_FALLOCATE);
    o.fd = fd;
    o.len64 = 0;
    CHECK_ERR(run_op(&o), -EINVAL);
    o.fd = 100000;
    o.len64 = 4096;
    CHECK_ERR(run_op(&o), -EBADF);
    o = mk(K_STATX);
    o.fd = AT_FDCWD;
    o.path = "/nonexistent/veloq";
    o.mode = STATX_SIZE;
    o.stx = &stx;
    CHECK_ERR(run_op(&o), -ENOENT);
    /* Refused at the call. */
    o.path = NULL;
    CHECK_ERR(run_op(&o), -EINVAL);
    o.path = path;
    o.stx = NULL;
    CHECK_ERR(run_op(&o), -EINVAL);
    CHECK_EQ(o.calls, 0);
    o = mk(K_FALLOCATE);
    o.fd = -1;
    o.len64 = 1;
    CHECK_ERR(run_op(&o), -EINVAL);
    close(fd);
    unlink(path);
    teardown();
}

/* veloq_ctx_submit: a veloq_sqe from inside a callback, with a deadline when asked. */
static void sqe_submissions_from_a_callback_with_deadlines(void) {
    veloq_sqe s;
    struct op o;
    char buf[16];
    int a, b;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&a, &b) == 0);
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_NOP;
    o = mk(K_SQE);
    o.sqe = &s;
    CHECK_EQ(run_op(&o), 0);
    /* Nothing to receive: the 20 ms deadline cancels the receive. */
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_RECV;
    s.fd = b;
    s.addr = (uint64_t)(uintptr_t)buf;
    s.len = sizeof buf;
    s.timeout_ns = 20 * 1000 * 1000;
    o = mk(K_SQE);
    o.sqe = &s;
    CHECK_ERR(run_op(&o), -ECANCELED);
    /* Data waiting: it arrives. */
    memset(buf, 0, sizeof buf);
    CHECK_EQ(send(a, "in time", 7, 0), 7);
    s.timeout_ns = 60ull * 1000 * 1000 * 1000;
    CHECK_EQ(run_op(&o), 7);
    CHECK(memcmp(buf, "in time", 7) == 0);
    /* The deadline does not stop a send that can go at once. */
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_SEND;
    s.fd = b;
    s.addr = (uint64_t)(uintptr_t)"back";
    s.len = 4;
    s.op_flags = MSG_NOSIGNAL;
    s.timeout_ns = 1000 * 1000 * 1000;
    CHECK_EQ(run_op(&o), 4);
    CHECK_EQ(recv(a, buf, sizeof buf, 0), 4);
    /* Refused at the call: the callback never runs. */
    o.sqe = NULL;
    CHECK_ERR(run_op(&o), -EINVAL);
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_TIMEOUT;
    s.offset = 1000;
    s.timeout_ns = 1000; /* a timer has its own time */
    o.sqe = &s;
    CHECK_ERR(run_op(&o), -EINVAL);
    s.opcode = VELOQ_OP_ACCEPT_MULTISHOT;
    s.fd = b;
    CHECK_ERR(run_op(&o), -EINVAL);
    s.opcode = 200; /* unknown */
    s.timeout_ns = 0;
    CHECK_ERR(run_op(&o), -EINVAL);
    s.opcode = VELOQ_OP_NOP;
    o.null_cb = 1;
    CHECK_ERR(run_op(&o), -EINVAL);
    CHECK_EQ(o.calls, 0);
    CHECK_ERR(veloq_ctx_submit(NULL, &s, op_cb, NULL), -EINVAL);
    close(a);
    close(b);
    teardown();
}

/* ------------------------------------------------------------------ veloq_ctx_flush */

/* What veloq_ctx_flush said in flush_task: before submitting, after, again, for NULL. */
static int g_flush_before, g_flush_after, g_flush_again, g_flush_null;

/* Submits *o, calling veloq_ctx_flush before, after (twice) and with NULL. */
static int64_t flush_task(veloq_ctx *ctx, void *arg) {
    struct op *o = (struct op *)arg;
    o->submit_worker = veloq_ctx_worker(ctx);
    g_flush_before = veloq_ctx_flush(ctx);
    o->submitted = submit_op(ctx, o);
    g_flush_after = veloq_ctx_flush(ctx);
    g_flush_again = veloq_ctx_flush(ctx);
    g_flush_null = veloq_ctx_flush(NULL);
    return o->submitted;
}

static void ctx_flush_hands_queued_io_to_the_kernel_at_once(void) {
    char path[512], out[16];
    veloq_sqe sqe;
    struct op o;
    int fd;
    setup();
    REQUIRE(g_cq);
    file_path(path, sizeof path, "flush.txt");
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    CHECK_EQ(write(fd, "0123456789abcdef", 16), 16);
    /* A read queued in the callback: the flush hands over exactly it, then nothing is
     * left; NULL is refused; the read still completes once, with its bytes. */
    memset(out, 0, sizeof out);
    o = mk(K_READ);
    o.fd = fd;
    o.buf = out;
    o.len = 10;
    o.off = 6;
    CHECK_EQ(run_op_in(&o, flush_task), 10);
    CHECK_EQ(g_flush_before, 0);
    CHECK_EQ(g_flush_after, 1);
    CHECK_EQ(g_flush_again, 0);
    CHECK_EQ(g_flush_null, -EINVAL);
    CHECK(memcmp(out, "6789abcdef", 10) == 0);
    /* A refused submission queues nothing. */
    o = mk(K_READ);
    o.fd = -1;
    o.buf = out;
    o.len = 4;
    CHECK_EQ(run_op_in(&o, flush_task), -EINVAL);
    CHECK_EQ(g_flush_after, 0);
    /* veloq_ctx_submit with VELOQ_SQE_SUBMIT_NOW: with the kernel when it returns, so the
     * flush right after finds nothing; the same sqe without it waits for the flush. */
    memset(&sqe, 0, sizeof sqe);
    sqe.opcode = VELOQ_OP_READ;
    sqe.fd = fd;
    sqe.addr = (uint64_t)(uintptr_t)out;
    sqe.len = 4;
    sqe.sqe_flags = VELOQ_SQE_SUBMIT_NOW;
    memset(out, 0, sizeof out);
    o = mk(K_SQE);
    o.sqe = &sqe;
    CHECK_EQ(run_op_in(&o, flush_task), 4);
    CHECK_EQ(g_flush_after, 0);
    CHECK(memcmp(out, "0123", 4) == 0);
    sqe.sqe_flags = 0;
    o = mk(K_SQE);
    o.sqe = &sqe;
    CHECK_EQ(run_op_in(&o, flush_task), 4);
    CHECK_EQ(g_flush_after, 1);
    /* A bit that means nothing is refused, and nothing is queued. */
    sqe.sqe_flags = 2;
    o = mk(K_SQE);
    o.sqe = &sqe;
    CHECK_EQ(run_op_in(&o, flush_task), -EINVAL);
    CHECK_EQ(g_flush_after, 0);
    close(fd);
    unlink(path);
    teardown();
}

int main(void) {
    check_init("test_io", 300);
    vio_raise_nofile();
    if (vio_tempdir(g_dir, sizeof g_dir) != 0) {
        printf("cannot make a temp dir\n");
        return 1;
    }
    RUN_CASE(nop_completes_once_with_zero_on_the_same_worker);
    RUN_CASE(bad_arguments_are_refused_and_the_callback_never_runs);
    RUN_CASE(files_open_write_read_sync_close);
    RUN_CASE(file_errors_come_back_as_negative_errno);
    RUN_CASE(sockets_connect_accept_send_recv_shutdown);
    RUN_CASE(connect_refused_and_closed_peer);
    RUN_CASE(timeouts_expire_with_etime_after_their_time);
    RUN_CASE(recv_multishot_without_buffers_ends_with_one_final_entry);
    RUN_CASE(cancel_of_an_unknown_op_is_enoent);
    RUN_CASE(cancel_of_another_workers_op_is_enoent_and_cancels_nothing);
    RUN_CASE(cancelled_recv_completes_once_and_never_touches_the_buffer);
    RUN_CASE(cancelled_timeout_completes_with_ecanceled);
    RUN_CASE(multishot_accept_takes_1000_connections_until_cancelled);
    RUN_CASE(shutdown_cancels_1000_inflight_ops_each_callback_once);
    RUN_CASE(a_ring_of_8_entries_carries_10000_outstanding_ops);
    RUN_CASE(with_completion_batching_10000_ops_each_complete_once);
    RUN_CASE(with_io_polling_10000_ops_each_complete_once);
    RUN_CASE(impossible_ring_sizes_are_refused);
    RUN_CASE(echo_server_with_1000_concurrent_connections);
    RUN_CASE(pool_buffers_write_and_read_a_file_fixed_or_plain);
    RUN_CASE(fixed_ops_refuse_bad_input_and_report_kernel_errors);
    RUN_CASE(statx_and_fallocate_report_sizes_and_errors);
    RUN_CASE(sqe_submissions_from_a_callback_with_deadlines);
    RUN_CASE(ctx_flush_hands_queued_io_to_the_kernel_at_once);
    rmdir(g_dir);
    return check_summary();
}
