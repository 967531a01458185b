/*
 * Bad input never crashes and never changes anything: a table of bad calls for every
 * function, each with the negative errno it must return; after every row the test checks
 * that nothing happened (no task ran, no completion appeared, the fd is not readable, the
 * runtime and the builder are as they were, out-parameters were not written).
 */
#define _GNU_SOURCE
#include <limits.h>
#include <poll.h>

#include "vtest.h"

static veloq_runtime *g_rt;  /* a running runtime with 2 workers */
static veloq_cq *g_cq;       /* a queue on it that must stay empty */
static veloq_builder *g_b;   /* a builder set to 3 workers that bad calls must not change */
static long g_ran;           /* runs of the task that no bad call may start */

static int64_t task_must_not_run(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    __atomic_fetch_add(&g_ran, 1, __ATOMIC_SEQ_CST);
    return 0;
}

#define SENTINEL_RT ((veloq_runtime *)(uintptr_t)0x5eed)
#define SENTINEL_CQ ((veloq_cq *)(uintptr_t)0x5eed)
#define OUT_WRITTEN (-100000) /* a thunk's answer when the call wrote its out-parameter */

/* Thunks: each makes one bad call and returns its result as an int. */
#define ROW(name, expr) \
    static int name(void) { return (int)(expr); }

/* builder */
ROW(builder_workers_null, veloq_builder_workers(NULL, 2))
ROW(builder_workers_absurd, veloq_builder_workers(g_b, UINT32_MAX))
ROW(builder_workers_million, veloq_builder_workers(g_b, 1u << 20))
ROW(builder_pin_null, veloq_builder_pin_workers(NULL, true))
ROW(builder_mesh_null, veloq_builder_mesh_capacity(NULL, 64))
ROW(builder_mesh_zero, veloq_builder_mesh_capacity(g_b, 0))
ROW(builder_mesh_absurd, veloq_builder_mesh_capacity(g_b, UINT32_MAX))
ROW(builder_ring_null, veloq_builder_ring_entries(NULL, 64))
ROW(builder_ring_zero, veloq_builder_ring_entries(g_b, 0))
ROW(builder_ring_absurd, veloq_builder_ring_entries(g_b, UINT32_MAX))
ROW(builder_batch_null, veloq_builder_io_batch_wait(NULL, 50))
ROW(builder_batch_absurd, veloq_builder_io_batch_wait(g_b, 1001))
ROW(builder_poll_null, veloq_builder_io_poll(NULL, 50))
ROW(builder_poll_absurd, veloq_builder_io_poll(g_b, 10001))
ROW(builder_budget_null, veloq_builder_budget(NULL, 64))
ROW(builder_budget_zero, veloq_builder_budget(g_b, 0))
ROW(builder_budget_absurd, veloq_builder_budget(g_b, UINT32_MAX))
static int builder_free_null(void) {
    veloq_builder_free(NULL);
    return 0;
}

/* runtime */
static int runtime_build_null_builder(void) {
    veloq_runtime *out = SENTINEL_RT;
    int rc = veloq_runtime_build(NULL, &out);
    return out == SENTINEL_RT ? rc : OUT_WRITTEN;
}
/* Consumes the (fresh) builder even on error: valgrind sees neither a leak nor a double free. */
ROW(runtime_build_null_out, veloq_runtime_build(veloq_builder_new(), NULL))
ROW(runtime_new_null_out, veloq_runtime_new(NULL))
ROW(runtime_workers_null, veloq_runtime_workers(NULL)) /* 0 workers: no runtime */
ROW(runtime_shutdown_null, veloq_runtime_shutdown(NULL, -1))
ROW(runtime_shutdown_null_limit, veloq_runtime_shutdown(NULL, 0))
static int runtime_free_null(void) {
    veloq_runtime_free(NULL);
    return 0;
}

/* tasks */
ROW(spawn_null_rt, veloq_spawn(NULL, task_must_not_run, NULL, g_cq, 1))
ROW(spawn_null_fn, veloq_spawn(g_rt, NULL, NULL, g_cq, 1))
ROW(spawn_null_fn_no_cq, veloq_spawn(g_rt, NULL, NULL, NULL, 1))
ROW(balanced_null_rt, veloq_spawn_balanced(NULL, task_must_not_run, NULL, g_cq, 1))
ROW(balanced_null_fn, veloq_spawn_balanced(g_rt, NULL, NULL, g_cq, 1))
ROW(spawn_to_null_rt, veloq_spawn_to(NULL, 0, task_must_not_run, NULL, g_cq, 1))
ROW(spawn_to_null_fn, veloq_spawn_to(g_rt, 0, NULL, NULL, g_cq, 1))
ROW(spawn_to_worker_eq_workers, veloq_spawn_to(g_rt, 2, task_must_not_run, NULL, g_cq, 1))
ROW(spawn_to_worker_absurd, veloq_spawn_to(g_rt, UINT32_MAX, task_must_not_run, NULL, g_cq, 1))
ROW(spawn_to_worker_absurd_no_cq,
    veloq_spawn_to(g_rt, 1u << 31, task_must_not_run, NULL, NULL, 1))
static int ctx_runtime_null(void) { return veloq_ctx_runtime(NULL) == NULL ? 0 : -1; }
static int ctx_worker_null(void) {
    (void)veloq_ctx_worker(NULL); /* any value; it must not crash */
    return 0;
}

/* completion queues */
static int cq_new_null_rt(void) {
    veloq_cq *out = SENTINEL_CQ;
    int rc = veloq_cq_new(NULL, 8, &out);
    return out == SENTINEL_CQ ? rc : OUT_WRITTEN;
}
static int cq_new_zero_capacity(void) {
    veloq_cq *out = SENTINEL_CQ;
    int rc = veloq_cq_new(g_rt, 0, &out);
    return out == SENTINEL_CQ ? rc : OUT_WRITTEN;
}
static int cq_new_absurd_capacity(void) {
    veloq_cq *out = SENTINEL_CQ;
    int rc = veloq_cq_new(g_rt, UINT32_MAX, &out);
    return out == SENTINEL_CQ ? rc : OUT_WRITTEN;
}
ROW(cq_new_null_out, veloq_cq_new(g_rt, 8, NULL))
static veloq_cqe g_out[4];
ROW(cq_poll_null_cq, veloq_cq_poll(NULL, g_out, 4))
ROW(cq_poll_null_out, veloq_cq_poll(g_cq, NULL, 4))
ROW(cq_poll_zero_max, veloq_cq_poll(g_cq, g_out, 0))
ROW(cq_wait_null_cq, veloq_cq_wait(NULL, g_out, 4, 1, 0))
ROW(cq_wait_null_out, veloq_cq_wait(g_cq, NULL, 4, 1, 0))
ROW(cq_wait_zero_max, veloq_cq_wait(g_cq, g_out, 0, 1, 0))
ROW(cq_wait_min_above_max, veloq_cq_wait(g_cq, g_out, 4, 5, 0))
ROW(cq_fd_null, veloq_cq_fd(NULL))
ROW(cq_post_null, veloq_cq_post(NULL, 1, 2))
ROW(cq_free_null, veloq_cq_free(NULL)) /* free(NULL) is a no-op: 0 */

/* strerror: a static string for any value */
static int strerror_any_value(void) {
    static const int values[] = {INT_MIN, INT_MIN + 1, -4097, -4096, -1, 0, 1, 4096, INT_MAX};
    size_t i;
    for (i = 0; i < sizeof values / sizeof values[0]; i++)
        if (veloq_strerror(values[i]) == NULL)
            return -1;
    return 0;
}

struct bad_row {
    const char *name;
    int (*call)(void);
    int expect;
};

static const struct bad_row k_rows[] = {
    {"veloq_builder_workers(NULL, 2)", builder_workers_null, -EINVAL},
    {"veloq_builder_workers(b, UINT32_MAX)", builder_workers_absurd, -EINVAL},
    {"veloq_builder_workers(b, 1<<20)", builder_workers_million, -EINVAL},
    {"veloq_builder_pin_workers(NULL, true)", builder_pin_null, -EINVAL},
    {"veloq_builder_mesh_capacity(NULL, 64)", builder_mesh_null, -EINVAL},
    {"veloq_builder_mesh_capacity(b, 0)", builder_mesh_zero, -EINVAL},
    {"veloq_builder_mesh_capacity(b, UINT32_MAX)", builder_mesh_absurd, -EINVAL},
    {"veloq_builder_ring_entries(NULL, 64)", builder_ring_null, -EINVAL},
    {"veloq_builder_ring_entries(b, 0)", builder_ring_zero, -EINVAL},
    {"veloq_builder_ring_entries(b, UINT32_MAX)", builder_ring_absurd, -EINVAL},
    {"veloq_builder_io_batch_wait(NULL, 50)", builder_batch_null, -EINVAL},
    {"veloq_builder_io_batch_wait(b, 1001)", builder_batch_absurd, -EINVAL},
    {"veloq_builder_io_poll(NULL, 50)", builder_poll_null, -EINVAL},
    {"veloq_builder_io_poll(b, 10001)", builder_poll_absurd, -EINVAL},
    {"veloq_builder_budget(NULL, 64)", builder_budget_null, -EINVAL},
    {"veloq_builder_budget(b, 0)", builder_budget_zero, -EINVAL},
    {"veloq_builder_budget(b, UINT32_MAX)", builder_budget_absurd, -EINVAL},
    {"veloq_builder_free(NULL)", builder_free_null, 0},
    {"veloq_runtime_build(NULL, &out)", runtime_build_null_builder, -EINVAL},
    {"veloq_runtime_build(b, NULL)", runtime_build_null_out, -EINVAL},
    {"veloq_runtime_new(NULL)", runtime_new_null_out, -EINVAL},
    {"veloq_runtime_workers(NULL)", runtime_workers_null, 0},
    {"veloq_runtime_shutdown(NULL, -1)", runtime_shutdown_null, -EINVAL},
    {"veloq_runtime_shutdown(NULL, 0)", runtime_shutdown_null_limit, -EINVAL},
    {"veloq_runtime_free(NULL)", runtime_free_null, 0},
    {"veloq_spawn(NULL, fn, ..)", spawn_null_rt, -EINVAL},
    {"veloq_spawn(rt, NULL, .., cq, ..)", spawn_null_fn, -EINVAL},
    {"veloq_spawn(rt, NULL, .., NULL, ..)", spawn_null_fn_no_cq, -EINVAL},
    {"veloq_spawn_balanced(NULL, fn, ..)", balanced_null_rt, -EINVAL},
    {"veloq_spawn_balanced(rt, NULL, ..)", balanced_null_fn, -EINVAL},
    {"veloq_spawn_to(NULL, 0, fn, ..)", spawn_to_null_rt, -EINVAL},
    {"veloq_spawn_to(rt, 0, NULL, ..)", spawn_to_null_fn, -EINVAL},
    {"veloq_spawn_to(rt, workers, fn, ..)", spawn_to_worker_eq_workers, -EINVAL},
    {"veloq_spawn_to(rt, UINT32_MAX, fn, ..)", spawn_to_worker_absurd, -EINVAL},
    {"veloq_spawn_to(rt, 1<<31, fn, NULL cq, ..)", spawn_to_worker_absurd_no_cq, -EINVAL},
    {"veloq_ctx_runtime(NULL) == NULL", ctx_runtime_null, 0},
    {"veloq_ctx_worker(NULL)", ctx_worker_null, 0},
    {"veloq_cq_new(NULL, 8, &out)", cq_new_null_rt, -EINVAL},
    {"veloq_cq_new(rt, 0, &out)", cq_new_zero_capacity, -EINVAL},
    {"veloq_cq_new(rt, UINT32_MAX, &out)", cq_new_absurd_capacity, -EINVAL},
    {"veloq_cq_new(rt, 8, NULL)", cq_new_null_out, -EINVAL},
    {"veloq_cq_poll(NULL, out, 4)", cq_poll_null_cq, -EINVAL},
    {"veloq_cq_poll(cq, NULL, 4)", cq_poll_null_out, -EINVAL},
    {"veloq_cq_poll(cq, out, 0)", cq_poll_zero_max, -EINVAL},
    {"veloq_cq_wait(NULL, out, 4, 1, 0)", cq_wait_null_cq, -EINVAL},
    {"veloq_cq_wait(cq, NULL, 4, 1, 0)", cq_wait_null_out, -EINVAL},
    {"veloq_cq_wait(cq, out, 0, 1, 0)", cq_wait_zero_max, -EINVAL},
    {"veloq_cq_wait(cq, out, 4, 5, 0) min > max", cq_wait_min_above_max, -EINVAL},
    {"veloq_cq_fd(NULL)", cq_fd_null, -EINVAL},
    {"veloq_cq_post(NULL, ..)", cq_post_null, -EINVAL},
    {"veloq_cq_free(NULL)", cq_free_null, 0},
    {"veloq_strerror(any int) != NULL", strerror_any_value, 0},
};

/* Nothing happened: no task ran, no completion is there, the fd is quiet, the runtime kept
 * its workers. */
static void check_nothing_changed(const char *row, uint32_t workers) {
    struct pollfd pfd;
    veloq_cqe out[4];
    int n;
    if (__atomic_load_n(&g_ran, __ATOMIC_SEQ_CST) != 0)
        check_fail_(__FILE__, __LINE__, "after %s: a task ran", row);
    n = veloq_cq_poll(g_cq, out, 4);
    if (n != 0)
        check_fail_(__FILE__, __LINE__, "after %s: veloq_cq_poll = %d, expected 0", row, n);
    pfd.fd = veloq_cq_fd(g_cq);
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) != 0)
        check_fail_(__FILE__, __LINE__, "after %s: the cq fd is readable", row);
    if (veloq_runtime_workers(g_rt) != workers)
        check_fail_(__FILE__, __LINE__, "after %s: workers %u, expected %u", row,
                    veloq_runtime_workers(g_rt), workers);
}

static size_t g_row;

/* One row of the table as one case: its errno, then nothing changed. */
static void run_row(void) {
    const struct bad_row *row = &k_rows[g_row];
    int rc = row->call();
    if (rc == OUT_WRITTEN)
        check_fail_(__FILE__, __LINE__, "%s wrote its out-parameter on failure", row->name);
    else if (rc != row->expect)
        check_fail_(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)", row->name, rc,
                    veloq_strerror(rc), row->expect, veloq_strerror(row->expect));
    check_nothing_changed(row->name, 2);
}

static void fixture_runtime_queue_and_builder(void) {
    g_ran = 0;
    g_rt = vt_runtime(2);
    REQUIRE(g_rt);
    g_cq = vt_cq(g_rt, 8);
    REQUIRE(g_cq);
    g_b = veloq_builder_new();
    REQUIRE(g_b);
    REQUIRE_OK(veloq_builder_workers(g_b, 3));
}

static void after_the_table_nothing_ran_nothing_is_owed_and_the_builder_is_unchanged(void) {
    veloq_runtime *from_b = NULL;
    /* The builder kept its setting through every refused call. */
    CHECK_EQ(veloq_runtime_build(g_b, &from_b), 0);
    g_b = NULL;
    if (from_b) {
        CHECK_EQ(veloq_runtime_workers(from_b), 3);
        veloq_runtime_free(from_b);
    }
    /* Shutdown runs every accepted task: if any bad call had been accepted, it runs now. */
    CHECK_EQ(veloq_runtime_shutdown(g_rt, -1), 0);
    CHECK_EQ(g_ran, 0);
    CHECK_EQ(veloq_cq_poll(g_cq, g_out, 4), 0);
    /* No refused call left a completion owed. */
    CHECK_EQ(veloq_cq_free(g_cq), 0);
    veloq_runtime_free(g_rt);
    g_rt = NULL;
    g_cq = NULL;
}

/* After shutdown every submission is refused with -ESHUTDOWN, the caller keeps its arg, and
 * nothing runs or completes. */
static void every_submission_after_shutdown_gets_eshutdown(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq, *out = SENTINEL_CQ;
    veloq_cqe cqe[4];
    long *arg;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    arg = (long *)malloc(sizeof *arg);
    REQUIRE(arg);
    *arg = 0;
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);

    CHECK_ERR(veloq_spawn(rt, vt_task_count, arg, cq, 1), -ESHUTDOWN);
    CHECK_ERR(veloq_spawn(rt, vt_task_count, arg, NULL, 1), -ESHUTDOWN);
    CHECK_ERR(veloq_spawn_balanced(rt, vt_task_count, arg, cq, 2), -ESHUTDOWN);
    CHECK_ERR(veloq_spawn_balanced(rt, vt_task_count, arg, NULL, 2), -ESHUTDOWN);
    CHECK_ERR(veloq_spawn_to(rt, 0, vt_task_count, arg, cq, 3), -ESHUTDOWN);
    CHECK_ERR(veloq_spawn_to(rt, 1, vt_task_count, arg, NULL, 3), -ESHUTDOWN);
    CHECK_ERR(veloq_cq_new(rt, 8, &out), -ESHUTDOWN);
    CHECK(out == SENTINEL_CQ);
    CHECK_EQ(veloq_runtime_workers(rt), 2);

    CHECK_EQ(*arg, 0);                        /* nothing ran */
    CHECK_EQ(veloq_cq_poll(cq, cqe, 4), 0);   /* nothing completed */
    CHECK_EQ(veloq_cq_free(cq), 0);           /* nothing is owed */
    free(arg);                                /* still ours: no double free under valgrind */
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_badinput", 120);
    RUN_CASE(fixture_runtime_queue_and_builder);
    if (g_rt && g_cq && g_b)
        for (g_row = 0; g_row < sizeof k_rows / sizeof k_rows[0]; g_row++)
            check_run_case_(k_rows[g_row].name, run_row);
    RUN_CASE(after_the_table_nothing_ran_nothing_is_owed_and_the_builder_is_unchanged);
    RUN_CASE(every_submission_after_shutdown_gets_eshutdown);
    return check_summary();
}
