/*
 * Shutdown under load and from the wrong place: while host threads keep spawning, every call
 * either ran exactly once (and completed once) or returned -ESHUTDOWN; shutdown and free
 * called from inside a worker callback are refused (-EDEADLK) and leave the runtime working.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "vtest.h"

#define SPAWNERS 3
#define PER_SPAWNER 200000
#define AFTER_REFUSAL 200 /* calls each spawner still makes after its first -ESHUTDOWN */

enum outcome { NOT_CALLED = 0, ACCEPTED = 1, REFUSED = 2, OTHER_ERROR = 3 };

static veloq_runtime *g_rt;
static uint32_t g_workers;
static check_tally g_runs;
static unsigned char *g_outcome; /* per task id */
static long g_accepted;

static int64_t task_counted(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    check_tally_mark(&g_runs, (uint64_t)(uintptr_t)arg);
    return (int64_t)(uintptr_t)arg;
}

struct spawner {
    pthread_t thread;
    veloq_cq *cq;
    uint64_t first;
    uint64_t count;
    int other_rc;
};

static void *spawner_main(void *p) {
    struct spawner *s = (struct spawner *)p;
    uint64_t i, after = 0;
    for (i = 0; i < s->count && after < AFTER_REFUSAL; i++) {
        uint64_t id = s->first + i;
        void *arg = (void *)(uintptr_t)id;
        veloq_cq *cq = id % 4 ? s->cq : NULL; /* some with a completion, some without */
        int rc;
        switch (id % 3) {
        case 0: rc = veloq_spawn(g_rt, task_counted, arg, cq, id); break;
        case 1: rc = veloq_spawn_balanced(g_rt, task_counted, arg, cq, id); break;
        default:
            rc = veloq_spawn_to(g_rt, (uint32_t)(id % g_workers), task_counted, arg, cq, id);
            break;
        }
        if (rc == 0) {
            g_outcome[id] = ACCEPTED;
            __atomic_fetch_add(&g_accepted, 1, __ATOMIC_RELAXED);
            /* Once refused, always refused: acceptance after a refusal is a failure. */
            if (after)
                check_fail_(__FILE__, __LINE__, "id %llu accepted after -ESHUTDOWN",
                            (unsigned long long)id);
        } else if (rc == -ESHUTDOWN) {
            g_outcome[id] = REFUSED;
            after++;
        } else {
            g_outcome[id] = OTHER_ERROR;
            s->other_rc = rc;
        }
    }
    return NULL;
}

static void on_cqe(const veloq_cqe *e, void *p) {
    check_tally *done = (check_tally *)p;
    check_tally_mark(done, e->user_data);
    if (e->res != (int64_t)e->user_data)
        check_fail_(__FILE__, __LINE__, "completion %llu has res %lld",
                    (unsigned long long)e->user_data, (long long)e->res);
}

static void shutdown_while_host_threads_spawn_every_call_ran_once_or_got_eshutdown(void) {
    size_t per = CHECK_SCALED(PER_SPAWNER), total = per * SPAWNERS, id;
    struct spawner sp[SPAWNERS];
    check_tally done;
    veloq_cq *cq;
    long accepted = 0, refused = 0, ran = 0, completed = 0, with_cq = 0;
    int64_t start;
    int t;

    g_rt = vt_runtime(0);
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    g_accepted = 0;
    cq = vt_cq(g_rt, 256);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, total));
    REQUIRE(check_tally_init(&done, total));
    g_outcome = (unsigned char *)calloc(total, 1);
    REQUIRE(g_outcome);

    for (t = 0; t < SPAWNERS; t++) {
        memset(&sp[t], 0, sizeof sp[t]);
        sp[t].cq = cq;
        sp[t].first = (uint64_t)t * per;
        sp[t].count = per;
        REQUIRE(pthread_create(&sp[t].thread, NULL, spawner_main, &sp[t]) == 0);
    }
    /* Shut down mid-stream: once a tenth of the calls were accepted (bounded wait). */
    start = check_now_ns();
    while (__atomic_load_n(&g_accepted, __ATOMIC_RELAXED) < (long)(total / 10) &&
           check_now_ns() - start < VT_REAP_DEADLINE_NS)
        sched_yield();
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    for (t = 0; t < SPAWNERS; t++) {
        pthread_join(sp[t].thread, NULL);
        CHECK_EQ(sp[t].other_rc, 0);
    }

    /* Shutdown returned: every accepted task ran and every owed completion is in the queue. */
    completed = (long)vt_drain_now(cq, on_cqe, &done);
    for (id = 0; id < total; id++) {
        unsigned char runs = g_runs.seen[id], comps = done.seen[id];
        switch (g_outcome[id]) {
        case ACCEPTED:
            accepted++;
            if (runs != 1 || comps != (id % 4 ? 1 : 0))
                check_fail_(__FILE__, __LINE__, "accepted id %zu ran %u times, completed %u",
                            id, runs, comps);
            with_cq += id % 4 != 0;
            break;
        case REFUSED:
            refused++;
            if (runs != 0 || comps != 0)
                check_fail_(__FILE__, __LINE__, "refused id %zu ran %u times, completed %u", id,
                            runs, comps);
            break;
        case NOT_CALLED:
            if (runs != 0 || comps != 0)
                check_fail_(__FILE__, __LINE__, "id %zu never spawned but ran", id);
            break;
        default: break; /* reported through other_rc */
        }
    }
    ran = (long)g_runs.marked;
    printf("    accepted %ld, refused %ld, ran %ld, completed %ld\n", accepted, refused, ran,
           completed);
    CHECK_EQ(ran, accepted);
    CHECK_EQ(completed, with_cq);
    CHECK_EQ(g_runs.duplicates, 0);
    CHECK_EQ(done.duplicates, 0);
    CHECK_GT(accepted, 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    free(g_outcome);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

/* Tasks that spawn during shutdown: each child was either accepted (then ran exactly once)
 * or refused with -ESHUTDOWN (then never ran); the parent's res says which. */
static uint64_t g_parents;
static veloq_cq *g_cq;

static int64_t task_parent(veloq_ctx *ctx, void *arg) {
    uint64_t id = (uint64_t)(uintptr_t)arg, child = g_parents + id;
    veloq_runtime *rt = veloq_ctx_runtime(ctx);
    check_tally_mark(&g_runs, id);
    switch (id % 3) {
    case 0: return veloq_spawn(rt, task_counted, (void *)(uintptr_t)child, NULL, child);
    case 1: return veloq_spawn_balanced(rt, task_counted, (void *)(uintptr_t)child, NULL, child);
    default:
        return veloq_spawn_to(rt, (uint32_t)(child % g_workers), task_counted,
                              (void *)(uintptr_t)child, NULL, child);
    }
}

struct parents {
    long accepted_child_missing;
    long refused_child_ran;
    long other;
    long children_accepted;
};

static void on_parent_cqe(const veloq_cqe *e, void *p) {
    struct parents *ps = (struct parents *)p;
    uint64_t child = g_parents + e->user_data;
    unsigned char runs = child < g_runs.n ? g_runs.seen[child] : 0;
    if (e->res == 0) {
        ps->children_accepted++;
        if (runs != 1)
            ps->accepted_child_missing++;
    } else if (e->res == -ESHUTDOWN) {
        if (runs != 0)
            ps->refused_child_ran++;
    } else {
        ps->other++;
    }
}

static void tasks_spawning_during_shutdown_ran_once_or_got_eshutdown(void) {
    struct parents ps;
    uint64_t id;
    memset(&ps, 0, sizeof ps);
    g_parents = CHECK_SCALED(30000);
    g_rt = vt_runtime(0);
    REQUIRE(g_rt);
    g_workers = veloq_runtime_workers(g_rt);
    g_cq = vt_cq(g_rt, 64);
    REQUIRE(g_cq);
    REQUIRE(check_tally_init(&g_runs, 2 * g_parents));
    for (id = 0; id < g_parents; id++)
        CHECK_EQ(veloq_spawn_balanced(g_rt, task_parent, (void *)(uintptr_t)id, g_cq, id), 0);
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    /* Every parent ran, and its completion (with its child's fate) was delivered. */
    CHECK_EQ(vt_drain_now(g_cq, on_parent_cqe, &ps), g_parents);
    CHECK_EQ(ps.accepted_child_missing, 0);
    CHECK_EQ(ps.refused_child_ran, 0);
    CHECK_EQ(ps.other, 0);
    CHECK_EQ(g_runs.duplicates, 0);
    CHECK_EQ((long)g_runs.marked, (long)g_parents + ps.children_accepted);
    printf("    %ld of %llu children accepted before shutdown refused them\n",
           ps.children_accepted, (unsigned long long)g_parents);
    CHECK_EQ(veloq_cq_free(g_cq), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    check_tally_free(&g_runs);
}

/* ---- reentrancy ---- */

static int64_t task_shutdown_self(veloq_ctx *ctx, void *arg) {
    int64_t limit = (int64_t)(intptr_t)arg;
    return veloq_runtime_shutdown(veloq_ctx_runtime(ctx), limit);
}

static long g_free_returned;

static int64_t task_free_self(veloq_ctx *ctx, void *arg) {
    (void)arg;
    veloq_runtime_free(veloq_ctx_runtime(ctx)); /* must be refused: it would wait for itself */
    __atomic_store_n(&g_free_returned, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void after_refusal_the_runtime_still_works(veloq_runtime *rt, veloq_cq *cq) {
    veloq_cqe out[2];
    long ran = 0;
    uint32_t w;
    for (w = 0; w < veloq_runtime_workers(rt); w++)
        CHECK_EQ(veloq_spawn_to(rt, w, vt_task_count, &ran, cq, 100 + w), 0);
    for (w = 0; w < veloq_runtime_workers(rt); w++) {
        CHECK_EQ(veloq_cq_wait(cq, out, 1, 1, 60LL * 1000000000LL), 1);
        CHECK_EQ(out[0].res, 0);
    }
    CHECK_EQ(ran, (long)veloq_runtime_workers(rt));
}

static void shutdown_from_a_worker_callback_is_edeadlk(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cqe out[1];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn(rt, task_shutdown_self, (void *)(intptr_t)-1, cq, 1), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 1, 1, 60LL * 1000000000LL), 1);
    CHECK_EQ(out[0].res, -EDEADLK);
    CHECK_EQ(veloq_spawn_to(rt, 1, task_shutdown_self, (void *)(intptr_t)0, cq, 2), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 1, 1, 60LL * 1000000000LL), 1);
    CHECK_EQ(out[0].res, -EDEADLK);
    after_refusal_the_runtime_still_works(rt, cq);
    CHECK_EQ(veloq_cq_free(cq), 0);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    veloq_runtime_free(rt);
}

static void free_from_a_worker_callback_is_refused(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cqe out[1];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    g_free_returned = 0;
    CHECK_EQ(veloq_spawn_to(rt, 0, task_free_self, NULL, cq, 1), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 1, 1, 60LL * 1000000000LL), 1);
    CHECK_EQ(out[0].user_data, 1);
    CHECK_EQ(g_free_returned, 1);
    after_refusal_the_runtime_still_works(rt, cq);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_shutdown", 300);
    RUN_CASE(shutdown_while_host_threads_spawn_every_call_ran_once_or_got_eshutdown);
    RUN_CASE(tasks_spawning_during_shutdown_ran_once_or_got_eshutdown);
    RUN_CASE(shutdown_from_a_worker_callback_is_edeadlk);
    RUN_CASE(free_from_a_worker_callback_is_refused);
    return check_summary();
}
