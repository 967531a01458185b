/*
 * Lifecycle: builder options, build, worker count, shutdown (with and without a limit),
 * free, and that a runtime gives back every thread and file descriptor it took.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>

#include "vtest.h"

static void builder_accepts_every_option_in_range(void) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 0), 0);
    CHECK_EQ(veloq_builder_workers(b, 1), 0);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_pin_workers(b, true), 0);
    CHECK_EQ(veloq_builder_pin_workers(b, false), 0);
    CHECK_EQ(veloq_builder_sched_batch(b, false), 0);
    CHECK_EQ(veloq_builder_sched_batch(b, true), 0);
    CHECK_EQ(veloq_builder_mesh_capacity(b, 1), 0);
    CHECK_EQ(veloq_builder_mesh_capacity(b, 1000), 0); /* not a power of two: fine */
    CHECK_EQ(veloq_builder_mesh_capacity(b, 64), 0);
    CHECK_EQ(veloq_builder_ring_entries(b, 1), 0);
    CHECK_EQ(veloq_builder_ring_entries(b, 64), 0);
    CHECK_EQ(veloq_builder_budget(b, 1), 0);
    CHECK_EQ(veloq_builder_budget(b, 16), 0);
    CHECK_EQ(veloq_runtime_build(b, &rt), 0);
    REQUIRE(rt);
    CHECK_EQ(veloq_runtime_workers(rt), 2); /* the last setting counts */
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    veloq_runtime_free(rt);
}

static void a_builder_never_built_is_freed(void) {
    veloq_builder *b = veloq_builder_new();
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    veloq_builder_free(b); /* valgrind: nothing lost */
}

struct placed {
    long on_worker[8];
    long wrong_worker;
};

static int64_t task_where(veloq_ctx *ctx, void *arg) {
    (void)arg;
    return (int64_t)veloq_ctx_worker(ctx);
}

static void on_placed(const veloq_cqe *e, void *p) {
    struct placed *pl = (struct placed *)p;
    if (e->res < 0 || e->res >= 8 || (uint64_t)e->res != e->user_data ||
        e->worker != (uint32_t)e->user_data)
        pl->wrong_worker++;
    else
        pl->on_worker[e->res]++;
}

/* A runtime has exactly the workers asked for, and each of them runs tasks. */
static void build_gives_the_requested_number_of_workers(void) {
    uint32_t n;
    for (n = 1; n <= 4; n++) {
        veloq_runtime *rt = vt_runtime(n);
        struct placed pl;
        veloq_cq *cq;
        uint32_t w;
        REQUIRE(rt);
        CHECK_EQ(veloq_runtime_workers(rt), n);
        cq = vt_cq(rt, 16);
        REQUIRE(cq);
        memset(&pl, 0, sizeof pl);
        for (w = 0; w < n; w++)
            CHECK_EQ(veloq_spawn_to(rt, w, task_where, NULL, cq, w), 0);
        CHECK_EQ(vt_reap(cq, n, on_placed, &pl), n);
        CHECK_EQ(pl.wrong_worker, 0);
        for (w = 0; w < n; w++)
            CHECK_EQ(pl.on_worker[w], 1);
        CHECK_EQ(veloq_cq_free(cq), 0);
        CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
        veloq_runtime_free(rt);
    }
}

static void zero_workers_means_one_per_cpu(void) {
    veloq_runtime *rt = vt_runtime(0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    REQUIRE(rt);
    CHECK_GE(veloq_runtime_workers(rt), 1);
    CHECK_LE(veloq_runtime_workers(rt), cpus);
    veloq_runtime_free(rt);
}

static void runtime_new_builds_with_the_defaults(void) {
    veloq_runtime *rt = NULL;
    long ran = 0;
    CHECK_EQ(veloq_runtime_new(&rt), 0);
    REQUIRE(rt);
    CHECK_GE(veloq_runtime_workers(rt), 1);
    CHECK_EQ(veloq_spawn(rt, vt_task_count, &ran, NULL, 0), 0);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(ran, 1);
    veloq_runtime_free(rt);
}

static void pinned_workers_run_their_tasks(void) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    struct placed pl;
    veloq_cq *cq;
    uint32_t w, i;
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_pin_workers(b, true), 0);
    REQUIRE_OK(veloq_runtime_build(b, &rt));
    REQUIRE(rt);
    cq = vt_cq(rt, 16);
    REQUIRE(cq);
    memset(&pl, 0, sizeof pl);
    for (i = 0; i < 50; i++)
        for (w = 0; w < 2; w++)
            CHECK_EQ(veloq_spawn_to(rt, w, task_where, NULL, cq, w), 0);
    CHECK_EQ(vt_reap(cq, 100, on_placed, &pl), 100);
    CHECK_EQ(pl.wrong_worker, 0);
    CHECK_EQ(pl.on_worker[0], 50);
    CHECK_EQ(pl.on_worker[1], 50);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

struct policy_probe {
    veloq_runtime *rt;
    veloq_cq *cq;
    int64_t seen[4]; /* by user_data: workers 0 and 1, a blocking job, the spawn */
};

static int64_t task_policy(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return sched_getscheduler(0);
}

/* On a worker: starts a blocking job (user_data 2) that reports its thread's policy. */
static int64_t task_spawns_blocking_probe(veloq_ctx *ctx, void *arg) {
    struct policy_probe *p = (struct policy_probe *)arg;
    (void)ctx;
    return veloq_spawn_blocking(p->rt, task_policy, NULL, p->cq, 2);
}

static void on_policy(const veloq_cqe *e, void *arg) {
    struct policy_probe *p = (struct policy_probe *)arg;
    if (e->user_data < 4)
        p->seen[e->user_data] = e->res;
}

/* Builds 2 workers from this (SCHED_OTHER) thread with `veloq_builder_sched_batch(b,
 * setting)`, or without calling it when `setting` is -1 (the default); checks what each
 * worker and a blocking job started by a worker run under. */
static void check_policies(int setting, int want_worker) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    veloq_worker_stats s;
    struct policy_probe p;
    uint32_t w;
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    if (setting >= 0)
        CHECK_EQ(veloq_builder_sched_batch(b, setting != 0), 0);
    REQUIRE_OK(veloq_runtime_build(b, &rt));
    REQUIRE(rt);
    memset(&p, 0, sizeof p);
    p.rt = rt;
    p.cq = vt_cq(rt, 16);
    REQUIRE(p.cq);
    for (w = 0; w < 2; w++)
        CHECK_OK(veloq_spawn_to(rt, w, task_policy, NULL, p.cq, w));
    CHECK_OK(veloq_spawn_to(rt, 0, task_spawns_blocking_probe, &p, p.cq, 3));
    CHECK_EQ(vt_reap(p.cq, 4, on_policy, &p), 4);
    CHECK_EQ(p.seen[0], want_worker);
    CHECK_EQ(p.seen[1], want_worker);
    CHECK_EQ(p.seen[2], SCHED_OTHER); /* the building thread's policy */
    CHECK_EQ(p.seen[3], 0);           /* the spawn was accepted */
    for (w = 0; w < 2; w++) {
        memset(&s, 0, sizeof s);
        s.size = sizeof s;
        CHECK_OK(veloq_runtime_stats(rt, w, &s));
        CHECK_EQ(s.sched_policy, (uint64_t)want_worker);
    }
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(veloq_cq_free(p.cq), 0);
    veloq_runtime_free(rt);
}

/* Workers run under SCHED_BATCH by default, under SCHED_OTHER when it is turned off;
 * blocking threads run under the building thread's policy either way. */
static void workers_run_under_sched_batch_unless_turned_off(void) {
    REQUIRE(sched_getscheduler(0) == SCHED_OTHER);
    check_policies(-1, SCHED_BATCH);
    check_policies(1, SCHED_BATCH);
    check_policies(0, SCHED_OTHER);
    CHECK_EQ(veloq_builder_sched_batch(NULL, true), -EINVAL);
}

/* Small settings (mesh of 1 slot, budget 1) still lose nothing: a full channel overflows. */
static void tiny_mesh_and_budget_lose_no_task(void) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    long ran = 0;
    size_t i, n = CHECK_SCALED(20000);
    REQUIRE(b);
    CHECK_EQ(veloq_builder_workers(b, 2), 0);
    CHECK_EQ(veloq_builder_mesh_capacity(b, 1), 0);
    CHECK_EQ(veloq_builder_budget(b, 1), 0);
    REQUIRE_OK(veloq_runtime_build(b, &rt));
    REQUIRE(rt);
    for (i = 0; i < n; i++)
        CHECK_EQ(veloq_spawn_balanced(rt, vt_task_count, &ran, NULL, 0), 0);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(ran, (long)n);
    veloq_runtime_free(rt);
}

static void shutdown_runs_every_accepted_task_first(void) {
    veloq_runtime *rt = vt_runtime(2);
    long ran = 0;
    size_t i, n = CHECK_SCALED(50000);
    REQUIRE(rt);
    for (i = 0; i < n; i++)
        CHECK_EQ(veloq_spawn(rt, vt_task_count, &ran, NULL, 0), 0);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(ran, (long)n);
    /* Done is done: a second shutdown has nothing left to wait for. */
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(veloq_runtime_shutdown(rt, 0), 0);
    veloq_runtime_free(rt);
}

static void free_without_shutdown_runs_every_accepted_task(void) {
    veloq_runtime *rt = vt_runtime(2);
    long ran = 0;
    size_t i, n = CHECK_SCALED(50000);
    REQUIRE(rt);
    for (i = 0; i < n; i++)
        CHECK_EQ(veloq_spawn_balanced(rt, vt_task_count, &ran, NULL, 0), 0);
    veloq_runtime_free(rt);
    CHECK_EQ(ran, (long)n);
}

/* A task holds its worker: a limited shutdown says -ETIMEDOUT (and refuses new work at
 * once); called again it goes on waiting; the held task still runs once and completes. */
static void shutdown_with_a_limit_times_out_then_finishes_when_called_again(void) {
    veloq_runtime *rt = vt_runtime(2);
    vt_gate gate = {0, 0};
    veloq_cqe out[2];
    veloq_cq *cq;
    long ran = 0;
    REQUIRE(rt);
    cq = vt_cq(rt, 4);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn_to(rt, 0, vt_task_gate, &gate, cq, 1), 0);
    if (vt_gate_wait_arrived(&gate, 1)) {
        CHECK_ERR(veloq_runtime_shutdown(rt, 1000000), -ETIMEDOUT); /* 1 ms */
        CHECK_ERR(veloq_runtime_shutdown(rt, 0), -ETIMEDOUT);
        /* Shutdown has started: new work is refused. */
        CHECK_ERR(veloq_spawn(rt, vt_task_count, &ran, NULL, 0), -ESHUTDOWN);
        CHECK_ERR(veloq_spawn_to(rt, 1, vt_task_count, &ran, cq, 2), -ESHUTDOWN);
        CHECK_EQ(veloq_cq_poll(cq, out, 2), 0);
    }
    vt_gate_open(&gate);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(ran, 0);
    /* The owed completion was delivered before shutdown returned. */
    CHECK_EQ(veloq_cq_poll(cq, out, 2), 1);
    CHECK_EQ(out[0].user_data, 1);
    CHECK_EQ(out[0].res, 7);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void free_of_null_is_a_no_op(void) {
    veloq_builder_free(NULL);
    veloq_runtime_free(NULL);
    CHECK_EQ(veloq_cq_free(NULL), 0);
}

static int count_dir(const char *path) {
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void ignore_cqe(const veloq_cqe *e, void *p) {
    (void)e;
    (void)p;
}

/* Build and free runtimes and queues over and over: every thread exits and every fd (rings,
 * eventfds) is closed; valgrind checks the memory. */
static void runtimes_give_back_every_thread_and_fd(void) {
    int fds = count_dir("/proc/self/fd"), threads = count_dir("/proc/self/task");
    int i, rounds = (int)CHECK_SCALED(40);
    if (rounds < 3)
        rounds = 3;
    REQUIRE(fds > 0 && threads > 0);
    for (i = 0; i < rounds; i++) {
        veloq_runtime *rt = vt_runtime((uint32_t)(i % 3 + 1));
        veloq_cq *cq;
        long ran = 0;
        REQUIRE(rt);
        cq = vt_cq(rt, 8);
        REQUIRE(cq);
        CHECK_EQ(veloq_spawn(rt, vt_task_count, &ran, cq, 0), 0);
        if (i % 2) {
            /* shutdown delivers the owed completion; the queue is freed with it unread */
            CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
        } else {
            CHECK_EQ(vt_reap(cq, 1, ignore_cqe, NULL), 1);
        }
        CHECK_EQ(veloq_cq_free(cq), 0);
        veloq_runtime_free(rt);
    }
    CHECK_EQ(count_dir("/proc/self/fd"), fds);
    /* io_uring's own kernel workers (iou-wrk-*) are listed as our threads and may take a
     * moment to go after their ring is closed: give them up to 10 s. One left by an earlier
     * case may be counted at the start and gone by now, hence "no more than". */
    {
        int64_t start = check_now_ns();
        while (count_dir("/proc/self/task") > threads &&
               check_now_ns() - start < 10LL * 1000000000LL)
            check_sleep_ms(10);
    }
    CHECK(count_dir("/proc/self/task") <= threads);
}

int main(void) {
    check_init("test_lifecycle", 120);
    RUN_CASE(builder_accepts_every_option_in_range);
    RUN_CASE(a_builder_never_built_is_freed);
    RUN_CASE(build_gives_the_requested_number_of_workers);
    RUN_CASE(zero_workers_means_one_per_cpu);
    RUN_CASE(runtime_new_builds_with_the_defaults);
    RUN_CASE(pinned_workers_run_their_tasks);
    RUN_CASE(workers_run_under_sched_batch_unless_turned_off);
    RUN_CASE(tiny_mesh_and_budget_lose_no_task);
    RUN_CASE(shutdown_runs_every_accepted_task_first);
    RUN_CASE(free_without_shutdown_runs_every_accepted_task);
    RUN_CASE(shutdown_with_a_limit_times_out_then_finishes_when_called_again);
    RUN_CASE(free_of_null_is_a_no_op);
    RUN_CASE(runtimes_give_back_every_thread_and_fd);
    return check_summary();
}
