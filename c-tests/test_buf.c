/*
 * Buffer pools: a worker callback allocates 4 KiB-aligned buffers from its worker's pool;
 * any thread may free them and they go back to that worker (counted, reused); exhausted
 * classes fall back to plain buffers; buffers outlive their runtime; bad input changes
 * nothing.
 */
#define _GNU_SOURCE
#include <limits.h>

#include "vtest.h"

/* Runs fn(ctx, arg) on worker `worker` and waits for it; returns fn's result. */
static int64_t run_on(veloq_runtime *rt, uint32_t worker, veloq_task_fn fn, void *arg) {
    struct res {
        int64_t v;
        size_t n;
    } r = {-1, 0};
    veloq_cq *cq = vt_cq(rt, 4);
    veloq_cqe e;
    if (!cq)
        return INT64_MIN;
    CHECK_EQ(veloq_spawn_to(rt, worker, fn, arg, cq, 1), 0);
    while (r.n == 0) {
        int n = veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS);
        if (n < 0) {
            check_fail_(__FILE__, __LINE__, "veloq_cq_wait = %d", n);
            break;
        }
        r.v = e.res;
        r.n += (size_t)n;
    }
    CHECK_EQ(veloq_cq_free(cq), 0);
    return r.v;
}

static veloq_runtime *pool_runtime(uint32_t workers, const uint32_t counts[5]) {
    static const uint32_t sizes[5] = {4096, 16384, 65536, 262144, 1048576};
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    int i;
    if (!b)
        return NULL;
    CHECK_OK(veloq_builder_workers(b, workers));
    for (i = 0; counts && i < 5; i++)
        CHECK_OK(veloq_builder_buffer_pool(b, sizes[i], counts[i]));
    CHECK_OK(veloq_runtime_build(b, &rt));
    return rt;
}

/* What a task reports back to the host. */
struct job {
    uint32_t size;
    veloq_buf *buf;
    void *data;
    uint32_t capacity;
    int index;
    veloq_buf_stats stats;
    veloq_ctx *ctx;
};

static int64_t task_alloc(veloq_ctx *ctx, void *arg) {
    struct job *j = (struct job *)arg;
    int rc = veloq_buf_alloc(ctx, j->size, &j->buf);
    j->ctx = ctx;
    if (rc < 0)
        return rc;
    j->data = veloq_buf_data(j->buf);
    j->capacity = veloq_buf_capacity(j->buf);
    j->index = veloq_buf_index(j->buf);
    memset(j->data, 0xa5, j->capacity);
    return veloq_buf_pool_stats(ctx, &j->stats);
}

static int64_t task_stats(veloq_ctx *ctx, void *arg) {
    return veloq_buf_pool_stats(ctx, &((struct job *)arg)->stats);
}

static int64_t task_free(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    veloq_buf_free(((struct job *)arg)->buf);
    return 0;
}

static void alloc_in_a_callback_gives_an_aligned_buffer_of_its_class(void) {
    static const uint32_t sizes[] = {1, 100, 4096, 4097, 65536, 1048576};
    static const uint32_t caps[] = {4096, 4096, 4096, 16384, 65536, 1048576};
    veloq_runtime *rt = pool_runtime(2, NULL);
    size_t i;
    REQUIRE(rt);
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct job j;
        memset(&j, 0, sizeof j);
        j.size = sizes[i];
        CHECK_EQ(run_on(rt, 0, task_alloc, &j), 0);
        REQUIRE(j.buf);
        CHECK_EQ((uintptr_t)j.data % 4096, 0);
        CHECK_EQ(j.capacity, caps[i]);
        if (j.stats.registration_error == 0) {
            CHECK_GE(j.index, 0);
            CHECK_EQ(j.stats.registered_bytes, j.stats.pool_bytes);
        } else {
            CHECK_LT(j.stats.registration_error, 0);
            CHECK_EQ(j.index, -ENOENT);
        }
        CHECK_EQ(run_on(rt, 0, task_free, &j), 0);
    }
    {
        struct job s;
        memset(&s, 0, sizeof s);
        CHECK_EQ(run_on(rt, 0, task_stats, &s), 0);
        CHECK_EQ(s.stats.allocs, 6);
        CHECK_EQ(s.stats.frees, 6);
        CHECK_EQ(s.stats.plain_allocs, 0);
        CHECK_EQ(s.stats.cross_thread_frees, 0);
    }
    veloq_runtime_free(rt);
}

static void above_the_largest_class_or_exhausted_gives_a_plain_unregistered_buffer(void) {
    static const uint32_t counts[5] = {2, 0, 0, 0, 0};
    veloq_runtime *rt = pool_runtime(1, counts);
    struct job j[4];
    int i;
    REQUIRE(rt);
    memset(j, 0, sizeof j);
    for (i = 0; i < 3; i++) {
        j[i].size = 4096;
        CHECK_EQ(run_on(rt, 0, task_alloc, &j[i]), 0);
    }
    j[3].size = (1u << 20) + 1;
    CHECK_EQ(run_on(rt, 0, task_alloc, &j[3]), 0);
    CHECK_EQ(j[2].index, -ENOENT); /* the class was empty: plain */
    CHECK_EQ(j[2].capacity, 4096);
    CHECK_EQ(j[3].index, -ENOENT); /* above 1 MiB: plain */
    CHECK_EQ(j[3].capacity, (1u << 20) + 4096);
    CHECK_EQ((uintptr_t)j[3].data % 4096, 0);
    CHECK_EQ(j[3].stats.plain_allocs, 2);
    CHECK_EQ(j[3].stats.free_buffers, 0);
    for (i = 0; i < 4; i++)
        veloq_buf_free(j[i].buf); /* from the host thread */
    veloq_runtime_free(rt);
}

static void a_buffer_freed_on_a_host_thread_goes_back_to_its_worker_and_is_reused(void) {
    static const uint32_t counts[5] = {1, 0, 0, 0, 0};
    veloq_runtime *rt = pool_runtime(2, counts);
    struct job a, b, other;
    REQUIRE(rt);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&other, 0, sizeof other);
    a.size = b.size = 4096;
    CHECK_EQ(run_on(rt, 1, task_alloc, &a), 0);
    REQUIRE(a.buf);
    veloq_buf_free(a.buf); /* host thread */
    CHECK_EQ(run_on(rt, 1, task_alloc, &b), 0);
    CHECK(b.data == a.data);  /* the only buffer of the class came back */
    CHECK_NE(b.index, -EINVAL);
    CHECK_EQ(b.stats.cross_thread_frees, 1);
    CHECK_EQ(b.stats.plain_allocs, 0);
    CHECK_EQ(run_on(rt, 0, task_stats, &other), 0);
    CHECK_EQ(other.stats.frees, 0); /* worker 0 never saw it */
    CHECK_EQ(other.stats.allocs, 0);
    CHECK_EQ(run_on(rt, 0, task_free, &b), 0); /* freed on the other worker */
    CHECK_EQ(run_on(rt, 1, task_stats, &other), 0);
    CHECK_EQ(other.stats.cross_thread_frees, 2);
    CHECK_EQ(other.stats.free_buffers, 1);
    veloq_runtime_free(rt);
}

#define FREERS 4
#define PER_FREER 8

struct freer {
    pthread_t thread;
    veloq_buf *bufs[PER_FREER];
};

static void *freer_main(void *p) {
    struct freer *f = (struct freer *)p;
    int i;
    for (i = 0; i < PER_FREER; i++)
        veloq_buf_free(f->bufs[i]);
    return NULL;
}

static int64_t task_alloc_many(veloq_ctx *ctx, void *arg) {
    struct freer *f = (struct freer *)arg;
    int t, i, rc;
    for (t = 0; t < FREERS; t++)
        for (i = 0; i < PER_FREER; i++)
            if ((rc = veloq_buf_alloc(ctx, 4096, &f[t].bufs[i])) < 0)
                return rc;
    return 0;
}

static void buffers_freed_by_many_host_threads_at_once_all_come_back(void) {
    static const uint32_t counts[5] = {FREERS * PER_FREER, 0, 0, 0, 0};
    veloq_runtime *rt = pool_runtime(1, counts);
    struct freer f[FREERS];
    struct job s;
    int t;
    REQUIRE(rt);
    memset(f, 0, sizeof f);
    memset(&s, 0, sizeof s);
    CHECK_EQ(run_on(rt, 0, task_alloc_many, f), 0);
    for (t = 0; t < FREERS; t++)
        REQUIRE(pthread_create(&f[t].thread, NULL, freer_main, &f[t]) == 0);
    for (t = 0; t < FREERS; t++)
        pthread_join(f[t].thread, NULL);
    CHECK_EQ(run_on(rt, 0, task_stats, &s), 0);
    CHECK_EQ(s.stats.cross_thread_frees, FREERS * PER_FREER);
    CHECK_EQ(s.stats.free_buffers, FREERS * PER_FREER);
    CHECK_EQ(s.stats.plain_allocs, 0);
    veloq_runtime_free(rt);
}

static void a_buffer_outlives_its_runtime(void) {
    veloq_runtime *rt = pool_runtime(1, NULL);
    struct job j;
    REQUIRE(rt);
    memset(&j, 0, sizeof j);
    j.size = 20000;
    CHECK_EQ(run_on(rt, 0, task_alloc, &j), 0);
    veloq_runtime_free(rt);
    REQUIRE(j.buf);
    CHECK(veloq_buf_data(j.buf) == j.data);
    memset(j.data, 1, j.capacity);
    CHECK_EQ(veloq_buf_capacity(j.buf), 65536);
    veloq_buf_free(j.buf);
}

#define SENTINEL_BUF ((veloq_buf *)(uintptr_t)0x5eed)

/* Inside a callback: every bad call is refused and writes nothing. */
static int64_t task_bad_calls(veloq_ctx *ctx, void *arg) {
    struct job *j = (struct job *)arg;
    veloq_buf *out = SENTINEL_BUF;
    veloq_buf_stats st;
    int bad = 0;
    memset(&st, 0x77, sizeof st);
    bad += veloq_buf_alloc(ctx, 4096, NULL) != -EINVAL;
    bad += veloq_buf_alloc(ctx, 0, &out) != -EINVAL;
    bad += veloq_buf_alloc(ctx, VELOQ_BUF_MAX_SIZE + 1u, &out) != -EINVAL;
    bad += veloq_buf_alloc(ctx, UINT32_MAX, &out) != -EINVAL;
    bad += veloq_buf_alloc(NULL, 4096, &out) != -EINVAL;
    bad += veloq_buf_alloc(j->ctx, 4096, &out) != -EINVAL; /* a context of another worker */
    bad += veloq_buf_pool_stats(ctx, NULL) != -EINVAL;
    bad += veloq_buf_pool_stats(NULL, &st) != -EINVAL;
    bad += out != SENTINEL_BUF;
    bad += st.allocs != 0x7777777777777777ull;
    if (veloq_buf_pool_stats(ctx, &j->stats) != 0)
        bad++;
    return bad;
}

static void bad_input_is_refused_and_changes_nothing(void) {
    veloq_runtime *rt = pool_runtime(2, NULL);
    veloq_builder *b = veloq_builder_new();
    veloq_buf *out = SENTINEL_BUF;
    veloq_buf_stats st;
    struct job j;
    REQUIRE(rt);
    REQUIRE(b);
    memset(&j, 0, sizeof j);
    j.size = 4096;
    /* A context kept after its callback returned, used from the host: refused unread. */
    CHECK_EQ(run_on(rt, 1, task_alloc, &j), 0);
    CHECK_EQ(veloq_buf_alloc(j.ctx, 4096, &out), -EINVAL);
    CHECK(out == SENTINEL_BUF);
    CHECK_EQ(veloq_buf_pool_stats(j.ctx, &st), -EINVAL);
    veloq_buf_free(j.buf);

    CHECK_EQ(run_on(rt, 0, task_bad_calls, &j), 0); /* j.ctx is worker 1's */
    CHECK_EQ(j.stats.allocs, 0);

    CHECK(veloq_buf_data(NULL) == NULL);
    CHECK_EQ(veloq_buf_capacity(NULL), 0);
    CHECK_EQ(veloq_buf_index(NULL), -EINVAL);
    veloq_buf_free(NULL);

    CHECK_EQ(veloq_builder_buffer_pool(NULL, 4096, 1), -EINVAL);
    CHECK_EQ(veloq_builder_buffer_pool(b, 0, 1), -EINVAL);
    CHECK_EQ(veloq_builder_buffer_pool(b, 8192, 1), -EINVAL);
    CHECK_EQ(veloq_builder_buffer_pool(b, UINT32_MAX, 1), -EINVAL);
    CHECK_EQ(veloq_builder_buffer_pool(b, 1048576, UINT32_MAX), -EINVAL); /* > 4 GiB */
    CHECK_EQ(veloq_builder_buffer_pool(b, 4096, 0), 0);                   /* class left out */
    CHECK_OK(veloq_builder_workers(b, 1));
    {
        veloq_runtime *rt2 = NULL;
        struct job k;
        REQUIRE(veloq_runtime_build(b, &rt2) == 0);
        memset(&k, 0, sizeof k);
        k.size = 100;
        CHECK_EQ(run_on(rt2, 0, task_alloc, &k), 0);
        CHECK_EQ(k.capacity, 16384); /* no 4 KiB class: the next one */
        CHECK_EQ(k.stats.spills, 1);
        veloq_buf_free(k.buf);
        veloq_runtime_free(rt2);
    }
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_buf", 120);
    RUN_CASE(alloc_in_a_callback_gives_an_aligned_buffer_of_its_class);
    RUN_CASE(above_the_largest_class_or_exhausted_gives_a_plain_unregistered_buffer);
    RUN_CASE(a_buffer_freed_on_a_host_thread_goes_back_to_its_worker_and_is_reused);
    RUN_CASE(buffers_freed_by_many_host_threads_at_once_all_come_back);
    RUN_CASE(a_buffer_outlives_its_runtime);
    RUN_CASE(bad_input_is_refused_and_changes_nothing);
    return check_summary();
}
