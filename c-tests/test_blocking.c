/*
 * The blocking pool from C: veloq_spawn_blocking runs fn(NULL, arg) once on a pool thread
 * and posts exactly one completion, from a host thread or a worker callback; a full queue
 * still drains at shutdown (each job once), after which spawning says -ESHUTDOWN; bad input
 * is -EINVAL; a completion queue owed a blocking completion cannot be freed (-EBUSY).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>

#include "vtest.h"

#define JOBS 2000

static check_tally g_runs;
static int g_bad_thread; /* jobs that ran with a context or off a pool thread */

/* A job: checks where it runs, marks its id, returns it. */
static int64_t job_counted(veloq_ctx *ctx, void *arg) {
    char name[32] = {0};
    if (ctx != NULL || pthread_getname_np(pthread_self(), name, sizeof name) != 0 ||
        strncmp(name, "veloq-b", 7) != 0)
        __atomic_fetch_add(&g_bad_thread, 1, __ATOMIC_RELAXED);
    check_tally_mark(&g_runs, (uint64_t)(uintptr_t)arg);
    return (int64_t)(uintptr_t)arg;
}

/* A gate blocking jobs wait at until it opens (a stand-in for a blocking system call). */
static pthread_mutex_t g_gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_gate_cv = PTHREAD_COND_INITIALIZER;
static int g_gate_open;

static void gate_set(int open) {
    pthread_mutex_lock(&g_gate_lock);
    g_gate_open = open;
    pthread_cond_broadcast(&g_gate_cv);
    pthread_mutex_unlock(&g_gate_lock);
}

static int64_t job_gated(veloq_ctx *ctx, void *arg) {
    pthread_mutex_lock(&g_gate_lock);
    while (!g_gate_open)
        pthread_cond_wait(&g_gate_cv, &g_gate_lock);
    pthread_mutex_unlock(&g_gate_lock);
    return job_counted(ctx, arg);
}

static void on_cqe(const veloq_cqe *e, void *p) {
    check_tally *done = (check_tally *)p;
    check_tally_mark(done, e->user_data);
    if (e->res != (int64_t)e->user_data)
        check_fail_(__FILE__, __LINE__, "completion %llu has res %lld",
                    (unsigned long long)e->user_data, (long long)e->res);
    if (e->worker != UINT32_MAX)
        check_fail_(__FILE__, __LINE__, "completion %llu names worker %u, not UINT32_MAX",
                    (unsigned long long)e->user_data, e->worker);
}

static veloq_runtime *pool_runtime(uint32_t min, uint32_t max) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    if (!b)
        return NULL;
    if (veloq_builder_workers(b, 2) != 0 || veloq_builder_blocking_threads(b, min, max) != 0 ||
        veloq_builder_blocking_idle_timeout(b, 1000000ULL) != 0) {
        veloq_builder_free(b);
        return NULL;
    }
    return veloq_runtime_build(b, &rt) == 0 ? rt : NULL;
}

static void jobs_from_a_host_thread_each_run_once_on_a_pool_thread_and_complete_once(void) {
    size_t n = CHECK_SCALED(JOBS), i;
    veloq_runtime *rt = pool_runtime(0, 4);
    veloq_cq *cq;
    check_tally done;
    REQUIRE(rt);
    cq = vt_cq(rt, 64); /* smaller than the burst: the overflow list must not lose any */
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, n));
    REQUIRE(check_tally_init(&done, n));
    g_bad_thread = 0;
    for (i = 0; i < n; i++)
        CHECK_EQ(veloq_spawn_blocking(rt, job_counted, (void *)(uintptr_t)i, cq, i), 0);
    CHECK_EQ(vt_reap(cq, n, on_cqe, &done), n);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(g_bad_thread, 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

struct from_worker {
    veloq_cq *cq;
    size_t count;
    int failures;
};

/* A worker callback that hands `count` jobs to the pool and returns at once. */
static int64_t task_spawns_blocking(veloq_ctx *ctx, void *arg) {
    struct from_worker *w = (struct from_worker *)arg;
    veloq_runtime *rt = veloq_ctx_runtime(ctx);
    size_t i;
    for (i = 0; i < w->count; i++)
        if (veloq_spawn_blocking(rt, job_counted, (void *)(uintptr_t)i, w->cq, i) != 0)
            w->failures++;
    return 0;
}

static void task_cqe(const veloq_cqe *e, void *p) {
    int *seen = (int *)p;
    (*seen)++;
    CHECK_EQ(e->res, 0);
    CHECK_LT(e->worker, 2);
}

static void jobs_from_a_worker_callback_each_run_once_and_complete_once(void) {
    size_t n = CHECK_SCALED(JOBS);
    veloq_runtime *rt = pool_runtime(1, 3);
    veloq_cq *jobs_cq, *task_cq;
    struct from_worker w;
    check_tally done;
    int tasks_seen = 0;
    REQUIRE(rt);
    jobs_cq = vt_cq(rt, 256);
    task_cq = vt_cq(rt, 4);
    REQUIRE(jobs_cq && task_cq);
    REQUIRE(check_tally_init(&g_runs, n));
    REQUIRE(check_tally_init(&done, n));
    g_bad_thread = 0;
    w.cq = jobs_cq;
    w.count = n;
    w.failures = 0;
    CHECK_EQ(veloq_spawn_to(rt, 1, task_spawns_blocking, &w, task_cq, 7), 0);
    CHECK_EQ(vt_reap(task_cq, 1, task_cqe, &tasks_seen), 1);
    CHECK_EQ(w.failures, 0);
    CHECK_EQ(vt_reap(jobs_cq, n, on_cqe, &done), n);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(g_bad_thread, 0);
    CHECK_EQ(veloq_cq_free(jobs_cq), 0);
    CHECK_EQ(veloq_cq_free(task_cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

static void shutdown_with_a_full_queue_runs_each_job_once_then_refuses_with_eshutdown(void) {
    size_t n = CHECK_SCALED(500), i;
    veloq_runtime *rt = pool_runtime(0, 2);
    veloq_cq *cq;
    check_tally done;
    REQUIRE(rt);
    cq = vt_cq(rt, 1024);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, n));
    REQUIRE(check_tally_init(&done, n));
    gate_set(0);
    for (i = 0; i < n; i++)
        CHECK_EQ(veloq_spawn_blocking(rt, job_gated, (void *)(uintptr_t)i, cq, i), 0);
    /* Both pool threads wait at the gate with the rest queued: the pool cannot drain. */
    CHECK_EQ(veloq_runtime_shutdown(rt, 1000000LL), -ETIMEDOUT);
    CHECK_EQ(veloq_spawn_blocking(rt, job_counted, NULL, cq, 0), -ESHUTDOWN);
    CHECK_EQ(veloq_spawn_blocking(rt, job_counted, NULL, NULL, 0), -ESHUTDOWN);
    CHECK_EQ(check_tally_missing(&g_runs), n); /* none ran yet */
    gate_set(1);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    /* Every completion is already posted once shutdown returned. */
    {
        veloq_cqe buf[256];
        int got;
        while ((got = veloq_cq_poll(cq, buf, 256)) > 0) {
            int k;
            for (k = 0; k < got; k++)
                on_cqe(&buf[k], &done);
        }
    }
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

static void a_cq_owed_a_blocking_completion_cannot_be_freed(void) {
    veloq_runtime *rt = pool_runtime(0, 1);
    veloq_cq *cq;
    veloq_cqe out;
    REQUIRE(rt);
    cq = vt_cq(rt, 4);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, 1));
    gate_set(0);
    CHECK_EQ(veloq_spawn_blocking(rt, job_gated, (void *)(uintptr_t)0, cq, 0), 0);
    CHECK_EQ(veloq_cq_free(cq), -EBUSY);
    gate_set(1);
    CHECK_EQ(veloq_cq_wait(cq, &out, 1, 1, VT_REAP_DEADLINE_NS), 1);
    CHECK_EQ(out.user_data, 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
}

static void bad_input_is_einval_and_changes_nothing(void) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt;
    REQUIRE(b);
    CHECK_EQ(veloq_builder_blocking_threads(NULL, 0, 4), -EINVAL);
    CHECK_EQ(veloq_builder_blocking_threads(b, 3, 2), -EINVAL);
    CHECK_EQ(veloq_builder_blocking_threads(b, 0, 0), -EINVAL);
    CHECK_EQ(veloq_builder_blocking_threads(b, 0, 4097), -EINVAL);
    CHECK_EQ(veloq_builder_blocking_idle_timeout(NULL, 1), -EINVAL);
    CHECK_EQ(veloq_builder_blocking_threads(b, 1, 1), 0);
    CHECK_EQ(veloq_builder_blocking_idle_timeout(b, 0), 0);
    CHECK_EQ(veloq_builder_workers(b, 1), 0);
    rt = NULL;
    REQUIRE(veloq_runtime_build(b, &rt) == 0 && rt);
    CHECK_EQ(veloq_spawn_blocking(NULL, job_counted, NULL, NULL, 0), -EINVAL);
    CHECK_EQ(veloq_spawn_blocking(rt, NULL, NULL, NULL, 0), -EINVAL);
    /* The runtime still works after the refusals. */
    REQUIRE(check_tally_init(&g_runs, 1));
    {
        veloq_cq *cq = vt_cq(rt, 4);
        veloq_cqe out;
        REQUIRE(cq);
        CHECK_EQ(veloq_spawn_blocking(rt, job_counted, (void *)(uintptr_t)0, cq, 0), 0);
        CHECK_EQ(veloq_cq_wait(cq, &out, 1, 1, VT_REAP_DEADLINE_NS), 1);
        CHECK_EQ(veloq_cq_free(cq), 0);
    }
    CHECK_TALLY_EXACT(&g_runs);
    check_tally_free(&g_runs);
    veloq_runtime_free(rt);
}

/* A blocking job that tries to shut its own runtime down (with and without a limit) and to
 * free it: each is refused at once, since the shutdown would wait for the job itself. */
static int64_t job_shutting_down_its_runtime(veloq_ctx *ctx, void *arg) {
    veloq_runtime *rt = (veloq_runtime *)arg;
    int bounded;
    if (veloq_runtime_is_own_thread(rt) != 1)
        return -1;
    bounded = veloq_runtime_shutdown(rt, 1000000000LL);
    int unbounded = veloq_runtime_shutdown(rt, -1);
    (void)ctx;
    veloq_runtime_free(rt); /* refused: nothing happens, the runtime stays usable */
    return bounded == -EDEADLK && unbounded == -EDEADLK ? 1 : (int64_t)bounded * 1000 + unbounded;
}

static int64_t report_own_thread(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return veloq_runtime_is_own_thread((const veloq_runtime *)arg);
}

/* veloq_runtime_is_own_thread: 1 in the runtime's callbacks and blocking jobs, 0 on a
 * host thread, in another runtime's and for NULL. */
static void own_threads_are_told_apart_from_the_others(void) {
    veloq_runtime *rt = pool_runtime(0, 1), *other = pool_runtime(0, 1);
    veloq_cq *cq, *other_cq;
    veloq_cqe e[4];
    int i, n = 0;
    int64_t res[4] = {-1, -1, -1, -1};
    REQUIRE(rt && other);
    cq = vt_cq(rt, 8);
    other_cq = vt_cq(other, 8);
    REQUIRE(cq && other_cq);
    CHECK_EQ(veloq_runtime_is_own_thread(rt), 0);
    CHECK_EQ(veloq_runtime_is_own_thread(NULL), 0);
    CHECK_EQ(veloq_spawn_to(rt, 1, report_own_thread, rt, cq, 0), 0);
    CHECK_EQ(veloq_spawn_blocking(rt, report_own_thread, rt, cq, 1), 0);
    CHECK_EQ(veloq_spawn_to(other, 0, report_own_thread, rt, other_cq, 2), 0);
    CHECK_EQ(veloq_spawn_blocking(other, report_own_thread, rt, other_cq, 3), 0);
    while (n < 4) {
        int got = veloq_cq_wait(n < 2 ? cq : other_cq, e, 4, n < 2 ? 2 - n : 4 - n,
                                VT_REAP_DEADLINE_NS);
        REQUIRE(got > 0);
        for (i = 0; i < got; i++)
            if (e[i].user_data < 4)
                res[e[i].user_data] = e[i].res;
        n += got;
    }
    CHECK_EQ(res[0], 1); /* its worker */
    CHECK_EQ(res[1], 1); /* its blocking pool */
    CHECK_EQ(res[2], 0); /* another runtime's worker */
    CHECK_EQ(res[3], 0); /* another runtime's pool */
    veloq_runtime_free(other);
    CHECK_EQ(veloq_cq_free(other_cq), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void shutdown_from_a_blocking_job_is_edeadlk_and_changes_nothing(void) {
    veloq_runtime *rt = pool_runtime(0, 2);
    veloq_cq *cq;
    veloq_cqe e;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn_blocking(rt, job_shutting_down_its_runtime, rt, cq, 7), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 7);
    CHECK_EQ(e.res, 1);
    /* Still running: a spawn is taken, and the real shutdown from here succeeds. */
    REQUIRE(check_tally_init(&g_runs, 1));
    CHECK_EQ(veloq_spawn_blocking(rt, job_counted, (void *)(uintptr_t)0, cq, 0), 0);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, 0);
    CHECK_TALLY_EXACT(&g_runs);
    check_tally_free(&g_runs);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_blocking", 300);
    RUN_CASE(jobs_from_a_host_thread_each_run_once_on_a_pool_thread_and_complete_once);
    RUN_CASE(jobs_from_a_worker_callback_each_run_once_and_complete_once);
    RUN_CASE(shutdown_with_a_full_queue_runs_each_job_once_then_refuses_with_eshutdown);
    RUN_CASE(a_cq_owed_a_blocking_completion_cannot_be_freed);
    RUN_CASE(bad_input_is_einval_and_changes_nothing);
    RUN_CASE(shutdown_from_a_blocking_job_is_edeadlk_and_changes_nothing);
    RUN_CASE(own_threads_are_told_apart_from_the_others);
    return check_summary();
}
