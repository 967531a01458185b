/*
 * Host-side submission (veloq_submit with a veloq_sqe): operations from threads the runtime
 * does not own reach a worker's ring, and each completion is posted exactly once to the
 * completion queue, naming the worker that ran it. Bad input posts nothing.
 */
#define _GNU_SOURCE
#include <linux/falloc.h>

#include <stddef.h>

#include "vio.h"

#define OP_LEN 64

static char g_dir[256];

static veloq_sqe sqe_of(uint8_t opcode, int fd) {
    veloq_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = opcode;
    s.fd = fd;
    return s;
}

static void bad_submissions_are_einval_and_post_nothing(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_sqe s = sqe_of(VELOQ_OP_NOP, -1);
    veloq_cqe e;
    char buf[8];
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    CHECK_ERR(veloq_submit(NULL, -1, &s, cq, 1), -EINVAL);
    CHECK_ERR(veloq_submit(rt, -1, NULL, cq, 1), -EINVAL);
    CHECK_ERR(veloq_submit(rt, -1, &s, NULL, 1), -EINVAL);
    CHECK_ERR(veloq_submit(rt, -2, &s, cq, 1), -EINVAL);
    CHECK_ERR(veloq_submit(rt, 2, &s, cq, 1), -EINVAL);
    CHECK_ERR(veloq_submit(rt, INT32_MAX, &s, cq, 1), -EINVAL);
    s.opcode = 200;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_NOP, -1); /* sqe_flags bits that mean nothing */
    s.sqe_flags = 2;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s.sqe_flags = 0x80 | VELOQ_SQE_SUBMIT_NOW;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_READ, -1); /* fd < 0 */
    s.addr = (uint64_t)(uintptr_t)buf;
    s.len = sizeof buf;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_READ, 0); /* NULL buffer */
    s.len = 8;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_OPENAT, AT_FDCWD); /* NULL path */
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_STATX, AT_FDCWD); /* a path but no statx record */
    s.addr = (uint64_t)(uintptr_t)"/";
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_FALLOCATE, -1); /* fd < 0 */
    s.addr2 = 4096;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_ACCEPT, 0); /* address without its length */
    s.addr = (uint64_t)(uintptr_t)buf;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    check_sleep_ms(10);
    CHECK_EQ(veloq_cq_poll(cq, &e, 1), 0);
    CHECK_EQ(veloq_cq_free(cq), 0); /* nothing is owed */
    veloq_runtime_free(rt);
}

static void errors_of_the_kernel_come_back_in_the_completion(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e;
    char buf[8];
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    s = sqe_of(VELOQ_OP_READ, 100000);
    s.addr = (uint64_t)(uintptr_t)buf;
    s.len = sizeof buf;
    CHECK_EQ(veloq_submit(rt, 0, &s, cq, 5), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 5);
    CHECK_ERR(e.res, -EBADF);
    CHECK_EQ(e.flags, 0);
    CHECK_EQ(e.worker, 0);
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_free(cq), 0);
}

/* A host allocates a file's space and reads its size back, without a worker callback. */
static void host_fallocate_then_statx_see_the_new_size(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e;
    struct statx stx;
    char path[512];
    uint64_t size;
    int fd, punched;
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    snprintf(path, sizeof path, "%s/alloc.bin", g_dir);
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    s = sqe_of(VELOQ_OP_FALLOCATE, fd);
    s.offset = 4096;
    s.addr2 = 1u << 20;
    CHECK_EQ(veloq_submit(rt, -1, &s, cq, 1), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 1);
    CHECK_EQ(e.res, 0);
    /* A length past 32 bits reaches the kernel whole: 4 GiB of holes punched from 0
     * (keeping the size) free the 1 MiB (its low 32 bits are 0: cut to 32 bits it would
     * be -EINVAL); a file system without holes says -EOPNOTSUPP. */
    s = sqe_of(VELOQ_OP_FALLOCATE, fd);
    s.op_flags = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    s.addr2 = 1ull << 32;
    CHECK_EQ(veloq_submit(rt, -1, &s, cq, 4), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 4);
    CHECK(e.res == 0 || e.res == -EOPNOTSUPP);
    punched = e.res == 0;
    size = 4096 + (1u << 20);
    memset(&stx, 0, sizeof stx);
    s = sqe_of(VELOQ_OP_STATX, AT_FDCWD);
    s.addr = (uint64_t)(uintptr_t)path;
    s.len = STATX_SIZE | STATX_BLOCKS;
    s.addr2 = (uint64_t)(uintptr_t)&stx;
    CHECK_EQ(veloq_submit(rt, 0, &s, cq, 2), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 2);
    CHECK_EQ(e.res, 0);
    CHECK(stx.stx_mask & STATX_SIZE);
    CHECK_EQ(stx.stx_size, size);
    if (punched)
        CHECK_EQ(stx.stx_blocks, 0);
    /* A missing path: the kernel's error in the completion. */
    s.addr = (uint64_t)(uintptr_t)"/nonexistent/veloq";
    CHECK_EQ(veloq_submit(rt, 0, &s, cq, 3), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_ERR(e.res, -ENOENT);
    close(fd);
    unlink(path);
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_free(cq), 0);
}

/* A deadline (timeout_ns): a receive with nothing to read is cancelled when it passes,
 * one that finds data completes with it; one completion each, never the timer's own. */
static void host_deadlines_cancel_a_waiting_receive_only(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e;
    char buf[16], spare[16];
    int a, b;
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    REQUIRE(vio_tcp_pair(&a, &b) == 0);
    memset(buf, 0, sizeof buf);
    s = sqe_of(VELOQ_OP_RECV, b);
    s.addr = (uint64_t)(uintptr_t)buf;
    s.len = sizeof buf;
    s.timeout_ns = 20 * 1000 * 1000; /* 20 ms, nothing sent */
    CHECK_EQ(veloq_submit(rt, -1, &s, cq, 1), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 1);
    CHECK_ERR(e.res, -ECANCELED);
    /* Data waiting: the receive completes with it, well before a 60 s deadline. */
    CHECK_EQ(send(a, "deadline", 8, 0), 8);
    s.timeout_ns = 60ull * 1000 * 1000 * 1000;
    CHECK_EQ(veloq_submit(rt, 1, &s, cq, 2), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 2);
    CHECK_EQ(e.res, 8);
    CHECK(memcmp(buf, "deadline", 8) == 0);
    /* Refused at the call, nothing posted: a timer's own deadline, a multishot opcode. */
    s = sqe_of(VELOQ_OP_TIMEOUT, 0);
    s.offset = 1000;
    s.timeout_ns = 1000;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 3), -EINVAL);
    s = sqe_of(VELOQ_OP_ACCEPT_MULTISHOT, b);
    s.timeout_ns = 1000;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 3), -EINVAL);
    /* In flight at shutdown: cancelled once, like any operation. */
    s = sqe_of(VELOQ_OP_RECV, b);
    s.addr = (uint64_t)(uintptr_t)spare;
    s.len = sizeof spare;
    s.timeout_ns = 60ull * 1000 * 1000 * 1000;
    CHECK_EQ(veloq_submit(rt, 0, &s, cq, 4), 0);
    check_sleep_ms(10);
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_poll(cq, &e, 1), 1);
    CHECK_EQ(e.user_data, 4);
    CHECK_ERR(e.res, -ECANCELED);
    CHECK_EQ(veloq_cq_poll(cq, &e, 1), 0); /* nothing else, ever */
    CHECK_EQ(veloq_cq_free(cq), 0);
    close(a);
    close(b);
}

/* ---- two host threads, a mix of operations, every completion exactly once */

enum { MIX_NOP, MIX_READ, MIX_WRITE, MIX_OPENAT, MIX_FSYNC, MIX_TIMEOUT, MIX_KINDS };

struct mix {
    pthread_t thread;
    veloq_runtime *rt;
    veloq_cq *cq;
    uint32_t workers;
    int rfd, wfd;
    const char *rpath;
    size_t first, n;
    char *bufs; /* OP_LEN per id */
    long refused;
};

static void *mix_main(void *p) {
    struct mix *m = (struct mix *)p;
    size_t i;
    for (i = m->first; i < m->first + m->n; i++) {
        int kind = (int)(i % MIX_KINDS);
        int32_t worker = (int32_t)(i / MIX_KINDS % (m->workers + 1)) - 1;
        char *buf = m->bufs + i * OP_LEN;
        veloq_sqe s;
        memset(&s, 0, sizeof s);
        switch (kind) {
        case MIX_NOP: s.opcode = VELOQ_OP_NOP; break;
        case MIX_READ:
            s.opcode = VELOQ_OP_READ;
            s.fd = m->rfd;
            s.addr = (uint64_t)(uintptr_t)buf;
            s.len = OP_LEN;
            s.offset = (uint64_t)(i % 100) * OP_LEN;
            break;
        case MIX_WRITE:
            memset(buf, (int)(i & 0x7f) | 1, OP_LEN);
            s.opcode = VELOQ_OP_WRITE;
            s.fd = m->wfd;
            s.addr = (uint64_t)(uintptr_t)buf;
            s.len = OP_LEN;
            s.offset = (uint64_t)i * OP_LEN;
            break;
        case MIX_OPENAT:
            s.opcode = VELOQ_OP_OPENAT;
            s.fd = AT_FDCWD;
            s.addr = (uint64_t)(uintptr_t)m->rpath;
            s.op_flags = O_RDONLY;
            break;
        case MIX_FSYNC: s.opcode = VELOQ_OP_FSYNC; s.fd = m->wfd; break;
        default: s.opcode = VELOQ_OP_TIMEOUT; s.offset = 1000; break;
        }
        if (veloq_submit(m->rt, worker, &s, m->cq, i) != 0)
            m->refused++;
    }
    return NULL;
}

struct mix_check {
    check_tally tally;
    uint32_t workers;
    const char *bufs;
    long wrong;
};

static void mix_on_cqe(const veloq_cqe *e, void *p) {
    struct mix_check *c = (struct mix_check *)p;
    size_t i = (size_t)e->user_data;
    int kind = (int)(i % MIX_KINDS);
    int32_t worker = (int32_t)(i / MIX_KINDS % (c->workers + 1)) - 1;
    int ok = e->flags == 0 && e->worker < c->workers && (worker < 0 || e->worker == (uint32_t)worker);
    check_tally_mark(&c->tally, e->user_data);
    switch (kind) {
    case MIX_NOP: case MIX_FSYNC: ok = ok && e->res == 0; break;
    case MIX_READ: {
        size_t k;
        const char *b = c->bufs + i * OP_LEN;
        ok = ok && e->res == OP_LEN;
        for (k = 0; ok && k < OP_LEN; k++)
            ok = b[k] == (char)((i % 100) * OP_LEN + k);
        break;
    }
    case MIX_WRITE: ok = ok && e->res == OP_LEN; break;
    case MIX_OPENAT:
        ok = ok && e->res >= 0;
        if (e->res >= 0)
            close((int)e->res);
        break;
    default: ok = ok && e->res == -ETIME; break;
    }
    if (!ok) {
        if (c->wrong < 5)
            printf("    wrong completion: id %zu kind %d res %lld flags %u worker %u\n", i, kind,
                   (long long)e->res, e->flags, e->worker);
        c->wrong++;
    }
}

static void two_host_threads_submit_a_mix_each_completion_exactly_once(void) {
    size_t per = CHECK_SCALED(6000), total = 2 * per, i;
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    struct mix m[2];
    struct mix_check c;
    char rpath[512], wpath[512], data[100 * OP_LEN], back[OP_LEN];
    char *bufs;
    int rfd, wfd, t;
    REQUIRE(rt);
    cq = vt_cq(rt, 512);
    REQUIRE(cq);
    snprintf(rpath, sizeof rpath, "%s/read.bin", g_dir);
    snprintf(wpath, sizeof wpath, "%s/write.bin", g_dir);
    for (i = 0; i < sizeof data; i++)
        data[i] = (char)i;
    rfd = open(rpath, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    wfd = open(wpath, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(rfd >= 0 && wfd >= 0);
    REQUIRE(write(rfd, data, sizeof data) == (ssize_t)sizeof data);
    bufs = (char *)calloc(total, OP_LEN);
    REQUIRE(bufs);
    for (t = 0; t < 2; t++) {
        m[t].rt = rt;
        m[t].cq = cq;
        m[t].workers = 2;
        m[t].rfd = rfd;
        m[t].wfd = wfd;
        m[t].rpath = rpath;
        m[t].first = (size_t)t * per;
        m[t].n = per;
        m[t].bufs = bufs;
        m[t].refused = 0;
        REQUIRE(pthread_create(&m[t].thread, NULL, mix_main, &m[t]) == 0);
    }
    REQUIRE(check_tally_init(&c.tally, total));
    c.workers = 2;
    c.bufs = bufs;
    c.wrong = 0;
    CHECK_EQ(vt_reap(cq, total, mix_on_cqe, &c), total);
    for (t = 0; t < 2; t++) {
        pthread_join(m[t].thread, NULL);
        CHECK_EQ(m[t].refused, 0);
    }
    CHECK_TALLY_EXACT(&c.tally);
    CHECK_EQ(c.wrong, 0);
    /* Every write landed where it was aimed. */
    for (i = MIX_WRITE; i < total; i += MIX_KINDS) {
        size_t k;
        int good = pread(wfd, back, OP_LEN, (off_t)(i * OP_LEN)) == OP_LEN;
        for (k = 0; good && k < OP_LEN; k++)
            good = back[k] == (char)((int)(i & 0x7f) | 1);
        if (!good) {
            check_fail_(__FILE__, __LINE__, "write %zu is not in the file", i);
            break;
        }
    }
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_free(cq), 0);
    check_tally_free(&c.tally);
    free(bufs);
    close(rfd);
    close(wfd);
    unlink(rpath);
    unlink(wpath);
}

static void host_multishot_accept_ends_with_one_entry_at_shutdown(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_sqe s;
    veloq_cqe e[16];
    uint16_t port;
    int l, clients[8], i, more = 0, final = 0, got = 0;
    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    l = vio_listener(&port);
    REQUIRE(l >= 0);
    s = sqe_of(VELOQ_OP_ACCEPT_MULTISHOT, l);
    CHECK_EQ(veloq_submit(rt, 1, &s, cq, 9), 0);
    for (i = 0; i < 8; i++)
        clients[i] = vio_connect(port);
    while (got < 8) {
        int k, n = veloq_cq_wait(cq, e, 16, 1, VT_REAP_DEADLINE_NS);
        REQUIRE(n > 0);
        for (k = 0; k < n; k++) {
            CHECK_EQ(e[k].user_data, 9);
            CHECK_EQ(e[k].flags, VELOQ_CQE_F_MORE);
            CHECK_EQ(e[k].worker, 1);
            CHECK_GE(e[k].res, 0);
            if (e[k].res >= 0)
                close((int)e[k].res);
            more++;
        }
        got += n;
    }
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    for (;;) {
        int k, n = veloq_cq_poll(cq, e, 16);
        if (n <= 0)
            break;
        for (k = 0; k < n; k++) {
            if (e[k].flags & VELOQ_CQE_F_MORE) {
                more++;
                continue;
            }
            final++;
            CHECK_ERR(e[k].res, -ECANCELED);
        }
    }
    CHECK_EQ(more, 8);
    CHECK_EQ(final, 1);
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 10), -ESHUTDOWN);
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_free(cq), 0);
    for (i = 0; i < 8; i++)
        if (clients[i] >= 0)
            close(clients[i]);
    close(l);
}

/* Fixed-buffer file I/O from a host thread: pool buffers allocated on worker 1, then
 * written and read through veloq_submit, the data checked, bad spans refused. */
#define FIXED_LEN 8192u
#define FIXED_AT 4096u /* offset into the 16 KiB buffers */

struct fixed_alloc {
    uint32_t size;
    veloq_buf *buf;
};

static int64_t alloc_on_worker(veloq_ctx *ctx, void *p) {
    struct fixed_alloc *a = (struct fixed_alloc *)p;
    return veloq_buf_alloc(ctx, a->size, &a->buf);
}

/* A pool buffer of `size` bytes made on worker `w` (NULL if that failed). */
static veloq_buf *buf_on(veloq_runtime *rt, veloq_cq *cq, int w, uint32_t size) {
    struct fixed_alloc a;
    veloq_cqe e;
    a.size = size;
    a.buf = NULL;
    if (veloq_spawn_to(rt, (uint32_t)w, alloc_on_worker, &a, cq, 77) != 0)
        return NULL;
    if (veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) != 1 || e.user_data != 77 || e.res != 0)
        return NULL;
    return a.buf;
}

/* Submits `s` to `worker` and waits for its completion; its res (or -ETIMEDOUT), the worker
 * that ran it in *ran. */
static int64_t submit_wait(veloq_runtime *rt, int worker, veloq_sqe *s, veloq_cq *cq,
                           uint32_t *ran) {
    veloq_cqe e;
    int rc = veloq_submit(rt, worker, s, cq, 42);
    if (rc != 0)
        return rc;
    if (veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) != 1)
        return -ETIMEDOUT;
    *ran = e.worker;
    return e.user_data == 42 ? e.res : -EPROTO;
}

/* The sqe's layout: `sqe_flags` took what was padding, so the struct's size and every
 * other field's offset are those of earlier versions. */
_Static_assert(sizeof(veloq_sqe) == 56, "veloq_sqe size");
_Static_assert(offsetof(veloq_sqe, fd) == 4 && offsetof(veloq_sqe, addr) == 8 &&
                   offsetof(veloq_sqe, len) == 16 && offsetof(veloq_sqe, offset) == 24 &&
                   offsetof(veloq_sqe, op_flags) == 32 && offsetof(veloq_sqe, sqe_flags) == 36 &&
                   offsetof(veloq_sqe, addr2) == 40 && offsetof(veloq_sqe, timeout_ns) == 48,
               "veloq_sqe offsets");

/* VELOQ_SQE_SUBMIT_NOW gives the same results as without it (it changes only when the
 * worker hands the operation to the kernel; tests/fs.rs, the unit test of run_host_io and
 * test_io.c check that), with and without a deadline. */
static void host_submit_now_gives_the_same_results(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_sqe s;
    char path[512], back[16];
    uint32_t ran = 99;
    int fd;
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    snprintf(path, sizeof path, "%s/now", g_dir);
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    s = sqe_of(VELOQ_OP_WRITE, fd);
    s.sqe_flags = VELOQ_SQE_SUBMIT_NOW;
    s.addr = (uint64_t)(uintptr_t)"now and then";
    s.len = 12;
    s.offset = 100;
    CHECK_EQ(submit_wait(rt, 1, &s, cq, &ran), 12);
    CHECK_EQ(ran, 1);
    memset(back, 0, sizeof back);
    s = sqe_of(VELOQ_OP_READ, fd);
    s.sqe_flags = VELOQ_SQE_SUBMIT_NOW;
    s.addr = (uint64_t)(uintptr_t)back;
    s.len = sizeof back;
    s.offset = 100;
    s.timeout_ns = 5000000000ull;
    CHECK_EQ(submit_wait(rt, -1, &s, cq, &ran), 12);
    CHECK(memcmp(back, "now and then", 12) == 0);
    s.fd = 1 << 20; /* a descriptor that is not open: the kernel's error, in the entry */
    s.timeout_ns = 0;
    CHECK_EQ(submit_wait(rt, 0, &s, cq, &ran), -EBADF);
    close(fd);
    unlink(path);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void host_fixed_buffer_writes_and_reads_a_file(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_buf *out, *in, *big;
    veloq_sqe s;
    veloq_cqe e;
    char path[512];
    unsigned char *p;
    uint32_t i, ran = 99;
    int fd;
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    out = buf_on(rt, cq, 1, 16384);
    in = buf_on(rt, cq, 1, 16384);
    REQUIRE(out && in);
    CHECK_EQ(veloq_buf_worker(out), 1);
    CHECK_EQ(veloq_buf_worker(in), 1);
    CHECK_ERR(veloq_buf_worker(NULL), -EINVAL);
    CHECK_GE(veloq_buf_index(out), 0); /* registered: the fixed-buffer path applies */
    snprintf(path, sizeof path, "%s/fixed.bin", g_dir);
    fd = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    /* The host fills the buffer, then writes it: worker -1 goes to the buffer's worker. */
    p = (unsigned char *)veloq_buf_data(out);
    for (i = 0; i < FIXED_LEN; i++)
        p[FIXED_AT + i] = (unsigned char)(i * 7 + 3);
    s = sqe_of(VELOQ_OP_WRITE_FIXED, fd);
    s.addr = (uint64_t)(uintptr_t)out;
    s.addr2 = FIXED_AT;
    s.len = FIXED_LEN;
    s.offset = 4096;
    CHECK_EQ(submit_wait(rt, -1, &s, cq, &ran), (int64_t)FIXED_LEN);
    CHECK_EQ(ran, 1);
    /* Read it back at another offset of another buffer, on the buffer's worker. */
    memset(veloq_buf_data(in), 0, 16384);
    s = sqe_of(VELOQ_OP_READ_FIXED, fd);
    s.addr = (uint64_t)(uintptr_t)in;
    s.addr2 = 0;
    s.len = FIXED_LEN;
    s.offset = 4096;
    CHECK_EQ(submit_wait(rt, -1, &s, cq, &ran), (int64_t)FIXED_LEN);
    CHECK_EQ(ran, 1);
    CHECK(memcmp(veloq_buf_data(in), p + FIXED_AT, FIXED_LEN) == 0);
    /* On the other worker, where it is not registered: a plain read, the same bytes. */
    memset(veloq_buf_data(in), 0, 16384);
    CHECK_EQ(submit_wait(rt, 0, &s, cq, &ran), (int64_t)FIXED_LEN);
    CHECK_EQ(ran, 0);
    CHECK(memcmp(veloq_buf_data(in), p + FIXED_AT, FIXED_LEN) == 0);
    /* Past the end of the file: 0 bytes. */
    s.offset = 4096 + FIXED_LEN;
    CHECK_EQ(submit_wait(rt, -1, &s, cq, &ran), 0);
    /* Bad spans and buffers: refused at once, nothing posted. */
    s.offset = 0;
    s.addr2 = 16384 - FIXED_LEN + 1; /* one byte past the capacity */
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s.addr2 = UINT64_MAX; /* the span's end would wrap */
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s.addr2 = 0;
    s.addr = 0; /* NULL buffer */
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    s = sqe_of(VELOQ_OP_WRITE_FIXED, -1); /* fd < 0 */
    s.addr = (uint64_t)(uintptr_t)out;
    s.len = 16;
    CHECK_ERR(veloq_submit(rt, -1, &s, cq, 1), -EINVAL);
    /* A bad descriptor is the kernel's answer, in the completion. */
    s.fd = 100000;
    CHECK_ERR(submit_wait(rt, -1, &s, cq, &ran), -EBADF);
    /* A plain allocation (above the largest class) belongs to no worker; it still works,
     * on a balanced worker. */
    big = buf_on(rt, cq, 0, 2u << 20);
    REQUIRE(big);
    CHECK_ERR(veloq_buf_worker(big), -ENOENT);
    CHECK_ERR(veloq_buf_index(big), -ENOENT);
    s = sqe_of(VELOQ_OP_READ_FIXED, fd);
    s.addr = (uint64_t)(uintptr_t)big;
    s.addr2 = (2u << 20) - FIXED_LEN;
    s.len = FIXED_LEN;
    s.offset = 4096;
    CHECK_EQ(submit_wait(rt, -1, &s, cq, &ran), (int64_t)FIXED_LEN);
    CHECK(memcmp((unsigned char *)veloq_buf_data(big) + (2u << 20) - FIXED_LEN, p + FIXED_AT,
                 FIXED_LEN) == 0);
    check_sleep_ms(10);
    CHECK_EQ(veloq_cq_poll(cq, &e, 1), 0);
    /* Freed by the host thread: back to worker 1's pool. */
    veloq_buf_free(out);
    veloq_buf_free(in);
    veloq_buf_free(big);
    close(fd);
    unlink(path);
    veloq_runtime_free(rt);
    CHECK_EQ(veloq_cq_free(cq), 0);
}

int main(void) {
    check_init("test_submit", 300);
    if (vio_tempdir(g_dir, sizeof g_dir) != 0) {
        printf("cannot make a temp dir\n");
        return 1;
    }
    RUN_CASE(bad_submissions_are_einval_and_post_nothing);
    RUN_CASE(errors_of_the_kernel_come_back_in_the_completion);
    RUN_CASE(host_fallocate_then_statx_see_the_new_size);
    RUN_CASE(host_deadlines_cancel_a_waiting_receive_only);
    RUN_CASE(two_host_threads_submit_a_mix_each_completion_exactly_once);
    RUN_CASE(host_multishot_accept_ends_with_one_entry_at_shutdown);
    RUN_CASE(host_fixed_buffer_writes_and_reads_a_file);
    RUN_CASE(host_submit_now_gives_the_same_results);
    rmdir(g_dir);
    return check_summary();
}
