/*
 * Provided-buffer rings (veloq_buf_ring_*) and veloq_recv_multishot into them, on real
 * loopback TCP: a byte stream arrives whole and in order across many chunks while buffers
 * are recycled (also from later callbacks); a dry ring ends the receive with -ENOBUFS and
 * it is re-armed after a recycle; cancel ends it with exactly one final completion; bad
 * input is refused and changes nothing; free is refused while the ring is in use; shutdown
 * ends an armed receive once and frees the rings left over.
 */
#define _GNU_SOURCE
#include "vio.h"

#define TASK_TAG 0xffffffffULL
#define EV_FINAL 1ULL /* a receive's final completion: res is its result */

static veloq_runtime *g_rt;
static veloq_cq *g_cq;

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

/* Waits for one entry of g_cq (bounded). */
static int wait_one(veloq_cqe *e) {
    int n = veloq_cq_wait(g_cq, e, 1, 1, VT_REAP_DEADLINE_NS);
    if (n != 1)
        check_fail_(__FILE__, __LINE__, "no completion came (%d)", n);
    return n == 1;
}

/* Runs fn(ctx, arg) on worker `worker` and returns its result (or -9999 when it was lost). */
static int64_t on_worker(uint32_t worker, veloq_task_fn fn, void *arg) {
    veloq_cqe e;
    if (veloq_spawn_to(g_rt, worker, fn, arg, g_cq, TASK_TAG) != 0)
        return -9998;
    if (!wait_one(&e))
        return -9999;
    CHECK_EQ(e.user_data, TASK_TAG);
    return e.res;
}

/* Waits for a receive's final completion (EV_FINAL); returns its result. */
static int64_t wait_final(void) {
    veloq_cqe e;
    if (!wait_one(&e))
        return -9999;
    CHECK_EQ(e.user_data, EV_FINAL);
    return e.res;
}

/* ------------------------------------------------------------------ one receive */

#define MAX_HELD 8

/* A multishot receive on worker 1 into ring `group`; every field is written on worker 1
 * only (the host reads them after a completion of g_cq told it the worker is done). */
struct ms {
    int fd;
    uint32_t count, size;
    uint16_t group;
    int new_rc;
    int64_t op;
    /* the callback */
    int hold;           /* buffers kept across callbacks before the oldest is recycled */
    int held_n;         /* buffers taken and not recycled yet */
    uint16_t held[MAX_HELD];
    int rearm_on_enobufs;
    int free_on_final;  /* free the ring from the final callback (its result below) */
    long chunks, entries, finals, enobufs, bad;
    uint64_t bytes, fnv;
    int64_t last_res;
    uint32_t last_flags;
    uint32_t data_flags; /* flags of the last completion with data */
    int free_rc;
    unsigned char copy[256]; /* the first bytes received, for short messages */
};

static int recycle_oldest(veloq_ctx *ctx, struct ms *m) {
    int rc = veloq_buf_ring_recycle(ctx, m->group, m->held[0]);
    memmove(m->held, m->held + 1, (size_t)(m->held_n - 1) * sizeof m->held[0]);
    m->held_n--;
    return rc;
}

static void ms_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct ms *m = (struct ms *)arg;
    m->entries++;
    m->last_res = res;
    m->last_flags = flags;
    if (veloq_ctx_worker(ctx) != 1)
        m->bad++;
    if (res > 0) {
        void *data = NULL;
        int id = veloq_buf_ring_take(ctx, m->group, flags, &data);
        if (!(flags & VELOQ_CQE_F_BUFFER) || id < 0 || (uint32_t)id >= m->count || !data ||
            (uint32_t)res > m->size || id != (int)(flags >> VELOQ_CQE_BUFFER_SHIFT)) {
            m->bad++;
        } else {
            if (m->bytes < sizeof m->copy) {
                size_t n = sizeof m->copy - m->bytes;
                memcpy(m->copy + m->bytes, data, n < (size_t)res ? n : (size_t)res);
            }
            m->fnv = vio_fnv(m->fnv, data, (size_t)res);
            m->bytes += (uint64_t)res;
            m->chunks++;
            m->data_flags = flags;
            m->held[m->held_n++] = (uint16_t)id;
            if (m->held_n > m->hold && recycle_oldest(ctx, m) != 0)
                m->bad++;
        }
    } else if (flags & VELOQ_CQE_F_BUFFER) {
        m->bad++; /* no data, yet a buffer */
    }
    if (flags & VELOQ_CQE_F_MORE)
        return;
    if (res > 0) {
        /* The kernel ended it on its own (completion queue overflow): arm again. */
        m->op = veloq_recv_multishot(ctx, m->fd, m->group, 0, ms_cb, m);
        if (m->op > 0)
            return;
        m->bad++;
    }
    m->finals++;
    if (res == -ENOBUFS) {
        m->enobufs++;
        if (m->rearm_on_enobufs) {
            /* Ran dry because buffers are held: give them back, then arm again. */
            while (m->held_n > 0)
                if (recycle_oldest(ctx, m) != 0)
                    m->bad++;
            m->op = veloq_recv_multishot(ctx, m->fd, m->group, 0, ms_cb, m);
            if (m->op > 0)
                return;
            m->bad++;
        }
    }
    if (m->free_on_final) {
        while (m->held_n > 0)
            if (recycle_oldest(ctx, m) != 0)
                m->bad++;
        m->free_rc = veloq_buf_ring_free(ctx, m->group);
    }
    veloq_cq_post(g_cq, EV_FINAL, res);
}

static void ms_init(struct ms *m, int fd, uint32_t count, uint32_t size) {
    memset(m, 0, sizeof *m);
    m->fd = fd;
    m->count = count;
    m->size = size;
    m->fnv = VIO_FNV_INIT;
    m->free_rc = -9999;
}

/* Task: makes the ring and arms the receive; returns the op id or the first error. */
static int64_t ms_start(veloq_ctx *ctx, void *arg) {
    struct ms *m = (struct ms *)arg;
    m->new_rc = veloq_buf_ring_new(ctx, m->count, m->size, &m->group);
    if (m->new_rc != 0)
        return m->new_rc;
    m->op = veloq_recv_multishot(ctx, m->fd, m->group, 0, ms_cb, m);
    return m->op;
}

static int64_t ms_arm(veloq_ctx *ctx, void *arg) {
    struct ms *m = (struct ms *)arg;
    m->op = veloq_recv_multishot(ctx, m->fd, m->group, 0, ms_cb, m);
    return m->op;
}

static int64_t ms_cancel(veloq_ctx *ctx, void *arg) {
    return veloq_cancel(ctx, ((struct ms *)arg)->op);
}

static int64_t ms_free(veloq_ctx *ctx, void *arg) {
    return veloq_buf_ring_free(ctx, ((struct ms *)arg)->group);
}

static int64_t ms_recycle_all(veloq_ctx *ctx, void *arg) {
    struct ms *m = (struct ms *)arg;
    int rc = 0;
    while (m->held_n > 0 && rc == 0)
        rc = recycle_oldest(ctx, m);
    return rc;
}

/* The byte at offset i of the test stream. */
static unsigned char stream_byte(uint64_t i) { return (unsigned char)(i * 131 + (i >> 13)); }

/* ------------------------------------------------------------------ cases */

static void a_stream_arrives_whole_in_order_through_recycled_buffers(void) {
    const uint64_t total = CHECK_SCALED(8u << 20);
    unsigned char *chunk = malloc(65536);
    uint64_t sent = 0, fnv = VIO_FNV_INIT, seed = 12345;
    struct ms m;
    int c, s;
    setup();
    REQUIRE(g_cq && chunk);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    ms_init(&m, s, 16, 4096);
    m.hold = 3; /* each buffer is recycled three callbacks after it was taken */
    m.rearm_on_enobufs = 1;
    m.free_on_final = 1;
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    while (sent < total) {
        size_t n, i;
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        n = 1 + (size_t)((seed >> 33) % 65536);
        if (n > total - sent)
            n = (size_t)(total - sent);
        for (i = 0; i < n; i++)
            chunk[i] = stream_byte(sent + i);
        fnv = vio_fnv(fnv, chunk, n);
        REQUIRE(vio_write_all(c, chunk, n) == 0);
        sent += n;
    }
    close(c); /* end of stream: the receive ends with res 0 */
    CHECK_EQ(wait_final(), 0);
    CHECK_EQ(m.bad, 0);
    CHECK_EQ(m.bytes, total);
    CHECK_EQ(m.fnv, fnv);
    CHECK_GE(m.chunks, (long)(total / 4096)); /* at most 4096 bytes per buffer */
    /* The final callback recycled what it held and freed the ring: nothing was armed. */
    CHECK_EQ(m.free_rc, 0);
    CHECK_ERR(on_worker(1, ms_free, &m), -ENOENT);
    close(s);
    free(chunk);
    teardown();
}

static void a_dry_ring_ends_with_enobufs_and_rearms_after_a_recycle(void) {
    unsigned char msg[200];
    struct ms m;
    int c, s, i;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    for (i = 0; i < (int)sizeof msg; i++)
        msg[i] = (unsigned char)(i * 7 + 1);
    ms_init(&m, s, 2, 64);
    m.hold = MAX_HELD; /* keep every buffer: the ring runs dry */
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    /* 200 bytes, 2 x 64 bytes of buffers: two chunks, then the ring is empty. */
    REQUIRE(vio_write_all(c, msg, sizeof msg) == 0);
    CHECK_ERR(wait_final(), -ENOBUFS);
    CHECK_EQ(m.chunks, 2);
    CHECK_EQ(m.held_n, 2);
    CHECK_EQ(m.bytes, 128);
    /* Nothing more comes while the ring stays empty and nothing is armed. */
    check_sleep_ms(20);
    {
        veloq_cqe e;
        CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    }
    /* Give both back, arm again: the 72 bytes that waited in the socket come out. (Even
     * end of stream needs a free buffer: should the ring be dry again when it comes, the
     * callback recycles and re-arms, as a server would.) */
    CHECK_EQ(on_worker(1, ms_recycle_all, &m), 0);
    m.hold = 0;
    m.rearm_on_enobufs = 1;
    REQUIRE(on_worker(1, ms_arm, &m) > 0);
    close(c);
    CHECK_EQ(wait_final(), 0);
    CHECK_EQ(m.bad, 0);
    CHECK_EQ(m.bytes, sizeof msg);
    CHECK(memcmp(m.copy, msg, sizeof msg) == 0);
    CHECK_GE(m.finals, 2);
    CHECK_GE(m.enobufs, 1);
    CHECK_EQ(on_worker(1, ms_free, &m), 0);
    close(s);
    teardown();
}

static void cancel_ends_the_receive_with_exactly_one_final_completion(void) {
    struct ms m;
    veloq_cqe e;
    long entries;
    int c, s;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    ms_init(&m, s, 4, 256);
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    CHECK_EQ(send(c, "hello", 5, MSG_NOSIGNAL), 5);
    CHECK_EQ(on_worker(1, ms_cancel, &m), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    entries = m.entries;
    CHECK_EQ(m.finals, 1);
    CHECK_EQ(m.bad, 0);
    /* Data after the cancel reaches no callback: it waits in the socket. */
    CHECK_EQ(send(c, "world", 5, MSG_NOSIGNAL), 5);
    check_sleep_ms(50);
    CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    CHECK_EQ(m.entries, entries);
    CHECK_EQ(m.finals, 1);
    CHECK_ERR(on_worker(1, ms_cancel, &m), -ENOENT);
    /* "hello" either came out before the cancel (and was recycled) or still waits. */
    CHECK(m.bytes == 0 || m.bytes == 5);
    CHECK_EQ(on_worker(1, ms_free, &m), 0);
    close(c);
    close(s);
    teardown();
}

/* ---- bad input */

struct bad {
    int rc[32];
    int n;
    uint16_t group;
    void *data;
};

static int64_t bad_new(veloq_ctx *ctx, void *arg) {
    struct bad *b = (struct bad *)arg;
    veloq_ctx *other = (veloq_ctx *)(void *)&b->data;
    uint16_t g = 0xBEEF;
    b->n = 0;
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 0, 64, &g);
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 3, 64, &g);
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 65536, 64, &g);
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 1u << 31, 64, &g);
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 4, 0, &g);
    b->rc[b->n++] = veloq_buf_ring_new(ctx, 4, 64, NULL);
    b->rc[b->n++] = veloq_buf_ring_new(NULL, 4, 64, &g);
    b->rc[b->n++] = veloq_buf_ring_new(other, 4, 64, &g); /* not this callback's ctx */
    if (g != 0xBEEF)
        b->rc[b->n++] = -9999; /* an error wrote the out-parameter */
    return 0;
}

static int64_t bad_use(veloq_ctx *ctx, void *arg) {
    struct bad *b = (struct bad *)arg;
    veloq_ctx *other = (veloq_ctx *)(void *)&b->data;
    uint16_t g = b->group;
    void *d = (void *)&b->n;
    uint32_t f3 = VELOQ_CQE_F_BUFFER | (3u << VELOQ_CQE_BUFFER_SHIFT);
    b->n = 0;
    b->rc[b->n++] = veloq_buf_ring_take(ctx, g, 0, &d);                  /* no buffer */
    b->rc[b->n++] = veloq_buf_ring_take(ctx, g, VELOQ_CQE_F_MORE, &d);   /* no buffer */
    b->rc[b->n++] = veloq_buf_ring_take(ctx, (uint16_t)(g + 1), f3, &d); /* no such ring */
    b->rc[b->n++] = veloq_buf_ring_take(ctx, g, VELOQ_CQE_F_BUFFER | (4u << 16), &d);
    b->rc[b->n++] = veloq_buf_ring_take(ctx, g, f3, NULL);
    b->rc[b->n++] = veloq_buf_ring_take(NULL, g, f3, &d);
    b->rc[b->n++] = veloq_buf_ring_take(other, g, f3, &d);
    b->rc[b->n++] = veloq_buf_ring_recycle(ctx, g, 3);  /* never taken */
    b->rc[b->n++] = veloq_buf_ring_recycle(ctx, g, 4);  /* out of range */
    b->rc[b->n++] = veloq_buf_ring_recycle(ctx, (uint16_t)(g + 1), 0);
    b->rc[b->n++] = veloq_buf_ring_recycle(NULL, g, 0);
    b->rc[b->n++] = veloq_buf_ring_free(ctx, (uint16_t)(g + 1));
    b->rc[b->n++] = veloq_buf_ring_free(NULL, g);
    b->rc[b->n++] = veloq_buf_ring_free(other, g);
    if (d != (void *)&b->n)
        b->rc[b->n++] = -9999; /* an error wrote the out-parameter */
    return 0;
}

static const int bad_use_expected[] = {-ENODATA, -ENODATA, -ENOENT, -EINVAL, -EINVAL,
                                       -EINVAL,  -EINVAL,  -EINVAL, -EINVAL, -ENOENT,
                                       -EINVAL,  -ENOENT,  -EINVAL, -EINVAL};

/* Misuse of a buffer a receive really handed over (held[0], named by data_flags). */
static int64_t misuse_held(veloq_ctx *ctx, void *arg) {
    struct ms *m = (struct ms *)arg;
    void *d = NULL;
    int rc;
    rc = veloq_buf_ring_take(ctx, m->group, m->data_flags, &d);
    if (rc != -EALREADY || d != NULL)
        return rc == 0 ? -9000 : rc; /* taken twice */
    rc = veloq_buf_ring_free(ctx, m->group);
    if (rc != -EBUSY)
        return rc == 0 ? -9001 : rc;
    rc = recycle_oldest(ctx, m);
    if (rc != 0)
        return rc;
    rc = veloq_buf_ring_recycle(ctx, m->group, (uint16_t)(m->data_flags >> VELOQ_CQE_BUFFER_SHIFT));
    return rc == -EINVAL ? 0 : (rc == 0 ? -9002 : rc); /* recycled twice */
}

static void bad_input_is_refused_and_changes_nothing(void) {
    struct bad b;
    struct ms m;
    int c, s, i;
    void *d = NULL;
    uint16_t g = 7;
    setup();
    REQUIRE(g_cq);
    /* From the host thread: no worker, nothing to run on. */
    CHECK_ERR(veloq_buf_ring_new(NULL, 4, 64, &g), -EINVAL);
    CHECK_ERR(veloq_buf_ring_take(NULL, 0, VELOQ_CQE_F_BUFFER, &d), -EINVAL);
    CHECK_ERR(veloq_buf_ring_recycle(NULL, 0, 0), -EINVAL);
    CHECK_ERR(veloq_buf_ring_free(NULL, 0), -EINVAL);
    CHECK_EQ(g, 7);
    CHECK(d == NULL);

    memset(&b, 0, sizeof b);
    CHECK_EQ(on_worker(1, bad_new, &b), 0);
    REQUIRE(b.n == 8);
    for (i = 0; i < b.n; i++)
        CHECK_ERR(b.rc[i], -EINVAL);

    /* A ring of 4 buffers on worker 1; then every misuse of it. */
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    ms_init(&m, s, 4, 128);
    m.free_on_final = 1;
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    CHECK_EQ(on_worker(1, ms_cancel, &m), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    /* free_on_final freed it: make it again (same shape) for the misuse round. */
    ms_init(&m, s, 4, 128);
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    CHECK_EQ(on_worker(1, ms_cancel, &m), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    b.group = m.group;
    CHECK_EQ(on_worker(1, bad_use, &b), 0);
    REQUIRE(b.n == (int)(sizeof bad_use_expected / sizeof bad_use_expected[0]));
    for (i = 0; i < b.n; i++)
        CHECK_ERR(b.rc[i], bad_use_expected[i]);
    /* Another worker has no such ring. */
    CHECK_ERR(on_worker(0, ms_free, &m), -ENOENT);

    /* The ring works as before: a message arrives whole. */
    m.hold = 0;
    REQUIRE(on_worker(1, ms_arm, &m) > 0);
    CHECK_EQ(send(c, "still fine", 10, MSG_NOSIGNAL), 10);
    close(c);
    CHECK_EQ(wait_final(), 0);
    CHECK_EQ(m.bytes, 10);
    CHECK(memcmp(m.copy, "still fine", 10) == 0);
    CHECK_EQ(m.bad, 0);
    CHECK_EQ(on_worker(1, ms_free, &m), 0);
    close(s);
    teardown();
}

static void free_is_refused_while_a_receive_is_armed_or_a_buffer_is_taken(void) {
    struct ms m;
    int c, s;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    ms_init(&m, s, 4, 64);
    m.hold = MAX_HELD;
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    /* Armed: refused, and the ring keeps working. */
    CHECK_ERR(on_worker(1, ms_free, &m), -EBUSY);
    CHECK_EQ(send(c, "abc", 3, MSG_NOSIGNAL), 3);
    CHECK_EQ(on_worker(1, ms_cancel, &m), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    if (m.bytes == 0) {
        /* The cancel won the race: arm again and let the data in, then end it. */
        REQUIRE(on_worker(1, ms_arm, &m) > 0);
        while (__atomic_load_n(&m.chunks, __ATOMIC_SEQ_CST) == 0)
            check_sleep_ms(1);
        CHECK_EQ(on_worker(1, ms_cancel, &m), 0);
        CHECK_ERR(wait_final(), -ECANCELED);
    }
    CHECK_EQ(m.bytes, 3);
    CHECK(memcmp(m.copy, "abc", 3) == 0);
    /* Nothing armed, but a buffer is still taken: refused. Taking it again is refused
     * (-EALREADY), so is a second recycle (-EINVAL); misuse_held checks both. */
    CHECK_EQ(m.held_n, 1);
    CHECK_ERR(on_worker(1, ms_free, &m), -EBUSY);
    CHECK_EQ(on_worker(1, misuse_held, &m), 0);
    CHECK_EQ(m.held_n, 0);
    CHECK_EQ(on_worker(1, ms_free, &m), 0);
    CHECK_ERR(on_worker(1, ms_free, &m), -ENOENT);
    CHECK_EQ(m.bad, 0);
    close(c);
    close(s);
    teardown();
}

static void shutdown_ends_an_armed_receive_once_and_frees_the_rings(void) {
    struct ms m, idle;
    veloq_cqe e;
    int c, s, c2, s2;
    setup();
    REQUIRE(g_cq);
    REQUIRE(vio_tcp_pair(&c, &s) == 0);
    REQUIRE(vio_tcp_pair(&c2, &s2) == 0);
    /* One receive armed, holding a taken buffer; one ring nobody uses. Neither is freed. */
    ms_init(&m, s, 8, 512);
    m.hold = MAX_HELD;
    REQUIRE(on_worker(1, ms_start, &m) > 0);
    ms_init(&idle, s2, 32, 4096);
    REQUIRE(on_worker(1, ms_start, &idle) > 0);
    CHECK_EQ(on_worker(1, ms_cancel, &idle), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    CHECK_EQ(send(c, "x", 1, MSG_NOSIGNAL), 1);
    while (__atomic_load_n(&m.chunks, __ATOMIC_SEQ_CST) == 0)
        check_sleep_ms(1);
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    CHECK_ERR(wait_final(), -ECANCELED);
    CHECK_EQ(veloq_cq_poll(g_cq, &e, 1), 0);
    CHECK_EQ(m.finals, 1);
    CHECK_EQ(m.bad, 0);
    CHECK_EQ(m.held_n, 1);
    /* The runtime freed both rings (valgrind checks nothing leaked). */
    close(c);
    close(s);
    close(c2);
    close(s2);
    teardown();
}

int main(void) {
    check_init("test_buf_ring", 300);
    RUN_CASE(a_stream_arrives_whole_in_order_through_recycled_buffers);
    RUN_CASE(a_dry_ring_ends_with_enobufs_and_rearms_after_a_recycle);
    RUN_CASE(cancel_ends_the_receive_with_exactly_one_final_completion);
    RUN_CASE(bad_input_is_refused_and_changes_nothing);
    RUN_CASE(free_is_refused_while_a_receive_is_armed_or_a_buffer_is_taken);
    RUN_CASE(shutdown_ends_an_armed_receive_once_and_frees_the_rings);
    return check_summary();
}
