/*
 * Spawning: every kind, from host threads at once and from workers; each accepted task runs
 * exactly once and posts exactly one completion {user_data, res = its return value}.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "vtest.h"

#define HOST_THREADS 4
#define PER_THREAD 250000

enum kind { KIND_SPAWN, KIND_BALANCED, KIND_TO, KIND_MIXED };

static const char *kind_name(int kind) {
    switch (kind) {
    case KIND_SPAWN: return "veloq_spawn";
    case KIND_BALANCED: return "veloq_spawn_balanced";
    case KIND_TO: return "veloq_spawn_to";
    default: return "mixed";
    }
}

/* State of the running case, read by the tasks. */
static veloq_runtime *g_rt;
static uint32_t g_workers;
static check_tally g_runs;
static long g_wrong_runtime;
static long g_wrong_worker;

static int spawn_kind(veloq_runtime *rt, int kind, uint64_t id, veloq_task_fn fn, veloq_cq *cq) {
    if (kind == KIND_MIXED)
        kind = (int)(id % 3);
    switch (kind) {
    case KIND_SPAWN: return veloq_spawn(rt, fn, (void *)(uintptr_t)id, cq, id);
    case KIND_BALANCED: return veloq_spawn_balanced(rt, fn, (void *)(uintptr_t)id, cq, id);
    default:
        return veloq_spawn_to(rt, (uint32_t)(id % g_workers), fn, (void *)(uintptr_t)id, cq, id);
    }
}

/* Counts the run of task `id` (its arg), checks its context, returns id. */
static int64_t task_counted(veloq_ctx *ctx, void *arg) {
    uint64_t id = (uint64_t)(uintptr_t)arg;
    check_tally_mark(&g_runs, id);
    if (veloq_ctx_runtime(ctx) != g_rt)
        __atomic_fetch_add(&g_wrong_runtime, 1, __ATOMIC_RELAXED);
    if (veloq_ctx_worker(ctx) >= g_workers)
        __atomic_fetch_add(&g_wrong_worker, 1, __ATOMIC_RELAXED);
    return (int64_t)id;
}

/* Like task_counted, and it must run on worker id % workers (spawned with veloq_spawn_to). */
static int64_t task_pinned(veloq_ctx *ctx, void *arg) {
    uint64_t id = (uint64_t)(uintptr_t)arg;
    if (veloq_ctx_worker(ctx) != (uint32_t)(id % g_workers))
        __atomic_fetch_add(&g_wrong_worker, 1, __ATOMIC_RELAXED);
    return task_counted(ctx, arg);
}

struct spawner {
    pthread_t thread;
    veloq_cq *cq;
    int kind;
    uint64_t first;
    uint64_t count;
    long errors;
    int last_error;
};

static void *spawner_main(void *p) {
    struct spawner *s = (struct spawner *)p;
    uint64_t i;
    for (i = 0; i < s->count; i++) {
        uint64_t id = s->first + i;
        int kind = s->kind == KIND_MIXED ? (int)(id % 3) : s->kind;
        int rc = spawn_kind(g_rt, kind, id, kind == KIND_TO ? task_pinned : task_counted, s->cq);
        if (rc != 0) {
            s->errors++;
            s->last_error = rc;
        }
    }
    return NULL;
}

struct reaped {
    check_tally done;
    long wrong_res;
    long bad_worker;
    long pinned_elsewhere;
};

static void on_cqe(const veloq_cqe *e, void *p) {
    struct reaped *r = (struct reaped *)p;
    check_tally_mark(&r->done, e->user_data);
    if (e->res != (int64_t)e->user_data)
        r->wrong_res++;
    if (e->worker >= g_workers)
        r->bad_worker++;
}

static void on_cqe_pinned(const veloq_cqe *e, void *p) {
    struct reaped *r = (struct reaped *)p;
    on_cqe(e, p);
    if (e->worker != (uint32_t)(e->user_data % g_workers))
        r->pinned_elsewhere++;
}

/* HOST_THREADS threads spawn PER_THREAD tasks each at once with `kind`; the main thread reaps
 * the completion queue meanwhile. Every task must run once and complete once. */
static void spawn_from_host_threads(int kind) {
    size_t per = CHECK_SCALED(PER_THREAD), total = per * HOST_THREADS;
    struct spawner sp[HOST_THREADS];
    struct reaped r;
    veloq_cq *cq;
    size_t got;
    int t;

    memset(&r, 0, sizeof r);
    g_wrong_runtime = g_wrong_worker = 0;
    g_rt = vt_runtime(0);
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    cq = vt_cq(g_rt, 1024);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, total));
    REQUIRE(check_tally_init(&r.done, total));

    for (t = 0; t < HOST_THREADS; t++) {
        memset(&sp[t], 0, sizeof sp[t]);
        sp[t].cq = cq;
        sp[t].kind = kind;
        sp[t].first = (uint64_t)t * per;
        sp[t].count = per;
        REQUIRE(pthread_create(&sp[t].thread, NULL, spawner_main, &sp[t]) == 0);
    }
    got = vt_reap(cq, total, kind == KIND_TO ? on_cqe_pinned : on_cqe, &r);
    for (t = 0; t < HOST_THREADS; t++) {
        pthread_join(sp[t].thread, NULL);
        if (sp[t].errors)
            printf("    %s: %ld calls failed, last %d (%s)\n", kind_name(kind), sp[t].errors,
                   sp[t].last_error, veloq_strerror(sp[t].last_error));
        CHECK_EQ(sp[t].errors, 0);
    }

    CHECK_EQ(got, total);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&r.done);
    CHECK_EQ(r.wrong_res, 0);
    CHECK_EQ(r.bad_worker, 0);
    CHECK_EQ(r.pinned_elsewhere, 0);
    CHECK_EQ(g_wrong_runtime, 0);
    CHECK_EQ(g_wrong_worker, 0);
    /* Nothing more comes: no completion twice, none owed. */
    CHECK_EQ(vt_drain_now(cq, on_cqe, &r), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    check_tally_free(&g_runs);
    check_tally_free(&r.done);
}

static void spawn_from_4_host_threads_runs_and_completes_each_task_once(void) {
    spawn_from_host_threads(KIND_SPAWN);
}
static void spawn_balanced_from_4_host_threads_runs_and_completes_each_task_once(void) {
    spawn_from_host_threads(KIND_BALANCED);
}
static void spawn_to_from_4_host_threads_runs_each_task_once_on_its_worker(void) {
    spawn_from_host_threads(KIND_TO);
}
static void all_spawn_kinds_mixed_from_4_host_threads_each_task_once(void) {
    spawn_from_host_threads(KIND_MIXED);
}

/* veloq_spawn_to lands on exactly that worker, for every worker, and the completion says so. */
static void spawn_to_lands_on_every_worker_it_names(void) {
    size_t per = CHECK_SCALED(2000), total;
    struct reaped r;
    veloq_cq *cq;
    uint64_t id;

    memset(&r, 0, sizeof r);
    g_wrong_runtime = g_wrong_worker = 0;
    g_rt = vt_runtime(3); /* more workers than cores is allowed */
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    CHECK_EQ(g_workers, 3);
    total = per * g_workers;
    cq = vt_cq(g_rt, 64);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, total));
    REQUIRE(check_tally_init(&r.done, total));
    for (id = 0; id < total; id++)
        CHECK_EQ(veloq_spawn_to(g_rt, (uint32_t)(id % g_workers), task_pinned,
                                (void *)(uintptr_t)id, cq, id),
                 0);
    CHECK_EQ(vt_reap(cq, total, on_cqe_pinned, &r), total);
    CHECK_TALLY_EXACT(&r.done);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_EQ(r.pinned_elsewhere, 0);
    CHECK_EQ(g_wrong_worker, 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    check_tally_free(&g_runs);
    check_tally_free(&r.done);
}

/* Inside a callback, veloq_ctx_runtime is the runtime that runs it: two runtimes side by side
 * never see each other's. */
struct whose {
    veloq_runtime *rt;
    long right;
    long wrong;
};

static int64_t task_whose(veloq_ctx *ctx, void *arg) {
    struct whose *w = (struct whose *)arg;
    if (veloq_ctx_runtime(ctx) == w->rt)
        __atomic_fetch_add(&w->right, 1, __ATOMIC_RELAXED);
    else
        __atomic_fetch_add(&w->wrong, 1, __ATOMIC_RELAXED);
    return 0;
}

static void ctx_runtime_is_the_runtime_running_the_task(void) {
    struct whose a, b;
    long i, n = (long)CHECK_SCALED(5000);
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.rt = vt_runtime(2);
    b.rt = vt_runtime(1);
    REQUIRE(a.rt && b.rt);
    for (i = 0; i < n; i++) {
        CHECK_EQ(veloq_spawn(a.rt, task_whose, &a, NULL, 0), 0);
        CHECK_EQ(veloq_spawn_balanced(b.rt, task_whose, &b, NULL, 0), 0);
        CHECK_EQ(veloq_spawn_to(a.rt, (uint32_t)(i % 2), task_whose, &a, NULL, 0), 0);
    }
    /* Shutdown runs every accepted task before it returns. */
    CHECK_EQ(veloq_runtime_shutdown(a.rt, -1), 0);
    CHECK_EQ(veloq_runtime_shutdown(b.rt, -1), 0);
    CHECK_EQ(a.right, 2 * n);
    CHECK_EQ(b.right, n);
    CHECK_EQ(a.wrong + b.wrong, 0);
    veloq_runtime_free(a.rt);
    veloq_runtime_free(b.rt);
}

/* With cq NULL a task runs exactly once and posts nothing. */
static void spawn_without_cq_runs_each_task_once(void) {
    size_t total = CHECK_SCALED(30000);
    uint64_t id;
    g_rt = vt_runtime(0);
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    REQUIRE(check_tally_init(&g_runs, total));
    for (id = 0; id < total; id++)
        CHECK_EQ(spawn_kind(g_rt, KIND_MIXED, id, id % 3 == 2 ? task_pinned : task_counted, NULL),
                 0);
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    CHECK_TALLY_EXACT(&g_runs);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    check_tally_free(&g_runs);
}

/* Tasks spawn tasks from inside their callbacks, with every kind (the worker-side paths:
 * own injector, mesh channel to a P2C pick, mesh channel to the named worker). */
static veloq_cq *g_cq;
static uint64_t g_parents;

static int64_t task_parent(veloq_ctx *ctx, void *arg) {
    uint64_t id = (uint64_t)(uintptr_t)arg, child = g_parents + id;
    veloq_runtime *rt = veloq_ctx_runtime(ctx);
    check_tally_mark(&g_runs, id);
    switch (id % 3) {
    case 0: return veloq_spawn(rt, task_counted, (void *)(uintptr_t)child, g_cq, child);
    case 1: return veloq_spawn_balanced(rt, task_counted, (void *)(uintptr_t)child, g_cq, child);
    default:
        return veloq_spawn_to(rt, (uint32_t)(child % g_workers), task_pinned,
                              (void *)(uintptr_t)child, g_cq, child);
    }
}

struct family {
    check_tally done;
    long parent_failed;
    long child_wrong_res;
};

static void on_family_cqe(const veloq_cqe *e, void *p) {
    struct family *f = (struct family *)p;
    check_tally_mark(&f->done, e->user_data);
    if (e->user_data < g_parents) {
        if (e->res != 0)
            f->parent_failed++;
    } else if (e->res != (int64_t)e->user_data) {
        f->child_wrong_res++;
    }
}

static void spawn_from_worker_callbacks_with_every_kind(void) {
    struct family f;
    uint64_t id;
    memset(&f, 0, sizeof f);
    g_wrong_runtime = g_wrong_worker = 0;
    g_parents = CHECK_SCALED(30000);
    g_rt = vt_runtime(0);
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    g_cq = vt_cq(g_rt, 256);
    REQUIRE(g_cq);
    REQUIRE(check_tally_init(&g_runs, 2 * g_parents));
    REQUIRE(check_tally_init(&f.done, 2 * g_parents));
    for (id = 0; id < g_parents; id++)
        CHECK_EQ(veloq_spawn_balanced(g_rt, task_parent, (void *)(uintptr_t)id, g_cq, id), 0);
    CHECK_EQ(vt_reap(g_cq, 2 * g_parents, on_family_cqe, &f), 2 * g_parents);
    CHECK_TALLY_EXACT(&f.done);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_EQ(f.parent_failed, 0);
    CHECK_EQ(f.child_wrong_res, 0);
    CHECK_EQ(g_wrong_runtime, 0);
    CHECK_EQ(g_wrong_worker, 0);
    CHECK_EQ(veloq_cq_free(g_cq), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    g_cq = NULL;
    check_tally_free(&g_runs);
    check_tally_free(&f.done);
}

/* The completion's res is exactly what the callback returned, over the whole int64 range. */
static const int64_t k_results[] = {0, 1, -1, -EINVAL, VELOQ_EPANIC, INT64_MAX, INT64_MIN,
                                    (int64_t)1 << 40, -((int64_t)1 << 40)};
#define N_RESULTS (sizeof k_results / sizeof k_results[0])

static int64_t task_result(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return k_results[(uintptr_t)arg];
}

static void completion_res_is_the_callback_return_value(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_cqe e;
    size_t i, got = 0;
    int seen[N_RESULTS];
    REQUIRE(rt);
    cq = vt_cq(rt, 4);
    REQUIRE(cq);
    memset(seen, 0, sizeof seen);
    for (i = 0; i < N_RESULTS; i++)
        CHECK_EQ(veloq_spawn(rt, task_result, (void *)(uintptr_t)i, cq, 1000 + i), 0);
    while (got < N_RESULTS) {
        int n = veloq_cq_wait(cq, &e, 1, 1, 10LL * 1000000000LL);
        REQUIRE(n == 1);
        got++;
        REQUIRE(e.user_data >= 1000 && e.user_data < 1000 + N_RESULTS);
        seen[e.user_data - 1000]++;
        CHECK(e.res == k_results[e.user_data - 1000]);
    }
    for (i = 0; i < N_RESULTS; i++)
        CHECK_EQ(seen[i], 1);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* A balanced burst from one callback: P2C sends a task or two to worker 1 over the mesh
 * and keeps the rest with the caller, stealable, and the idle worker is woken to steal (as
 * veloq_spawn_balanced documents). A task on worker 0 waits until worker 1 has run 10,
 * which worker 1 can reach only by stealing from worker 0; a task on worker 1 waits until
 * worker 0 has run one, so it takes no more from the mesh while the burst is spawned.
 * The deadline is for the failure only. */
#define BURST 1000
static long g_burst_on[2];
static long g_burst_refused;
static int64_t g_burst_deadline_ns;

static int64_t burst_task(veloq_ctx *ctx, void *arg) {
    uint32_t w = veloq_ctx_worker(ctx);
    uint32_t other = w == 0 ? 1 : 0;
    long enough = w == 0 ? 10 : 1;
    (void)arg;
    if (w >= 2)
        return -1;
    __atomic_fetch_add(&g_burst_on[w], 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&g_burst_on[other], __ATOMIC_SEQ_CST) < enough &&
           check_now_ns() < g_burst_deadline_ns)
        sched_yield();
    return 0;
}

static int64_t burst_root(veloq_ctx *ctx, void *arg) {
    int i;
    (void)arg;
    for (i = 0; i < BURST; i++)
        if (veloq_spawn_balanced(veloq_ctx_runtime(ctx), burst_task, NULL, NULL, 0) != 0)
            __atomic_fetch_add(&g_burst_refused, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void burst_root_done(const veloq_cqe *e, void *p) {
    (void)p;
    CHECK_EQ(e->user_data, 7);
    CHECK_EQ(e->res, 0);
}

static void a_balanced_burst_from_one_callback_reaches_the_idle_worker(void) {
    veloq_worker_stats s;
    veloq_cq *cq;
    veloq_runtime *rt = vt_runtime(2);
    REQUIRE(rt);
    g_burst_on[0] = g_burst_on[1] = 0;
    g_burst_refused = 0;
    g_burst_deadline_ns = check_now_ns() + 30LL * 1000000000LL;
    cq = vt_cq(rt, 4);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn_to(rt, 0, burst_root, NULL, cq, 7), 0);
    /* The burst is spawned once the root's completion is here; shutdown then runs every
     * accepted task before it returns. */
    CHECK_EQ(vt_reap(cq, 1, burst_root_done, NULL), 1);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(g_burst_refused, 0);
    CHECK_EQ(g_burst_on[0] + g_burst_on[1], BURST);
    CHECK(g_burst_on[1] >= 10);
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    CHECK_OK(veloq_runtime_stats(rt, 1, &s));
    if (s.tasks_stolen == 0)
        fprintf(stderr, "    worker 1: local %llu mesh %llu inbox %llu injector %llu stolen %llu\n",
                (unsigned long long)s.tasks_local, (unsigned long long)s.tasks_mesh,
                (unsigned long long)s.tasks_inbox, (unsigned long long)s.tasks_injector,
                (unsigned long long)s.tasks_stolen);
    CHECK(s.tasks_stolen > 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_spawn", 300);
    RUN_CASE(spawn_from_4_host_threads_runs_and_completes_each_task_once);
    RUN_CASE(spawn_balanced_from_4_host_threads_runs_and_completes_each_task_once);
    RUN_CASE(spawn_to_from_4_host_threads_runs_each_task_once_on_its_worker);
    RUN_CASE(all_spawn_kinds_mixed_from_4_host_threads_each_task_once);
    RUN_CASE(spawn_to_lands_on_every_worker_it_names);
    RUN_CASE(ctx_runtime_is_the_runtime_running_the_task);
    RUN_CASE(spawn_without_cq_runs_each_task_once);
    RUN_CASE(spawn_from_worker_callbacks_with_every_kind);
    RUN_CASE(completion_res_is_the_callback_return_value);
    RUN_CASE(a_balanced_burst_from_one_callback_reaches_the_idle_worker);
    return check_summary();
}
