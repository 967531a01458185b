/*
 * Stall detection and introspection from C: a callback that spins is reported (worker, task
 * name) and routed around (its stealable work and balanced spawns run on the other worker);
 * statistics add up; the dump names what runs and never hangs on a stalled worker; bad input
 * is refused with -EINVAL. Every runtime has two workers. No case asserts a duration: waits
 * are bounded only so that a broken promise fails instead of hanging.
 */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vtest.h"

#define GIVE_UP_NS (5LL * 1000000000LL)
/* The stall threshold: low, and longer under valgrind (VELOQ_TEST_SCALE), where a thread
 * may wait that long for its turn on the CPU. */
#define THRESHOLD_NS (30LL * 1000000LL * (int64_t)check_state_()->scale)

/* ---- stall reports, recorded by the callback (watchdog thread) ---- */

/* What the callback saw of the first stall of the worker the test stalls on purpose (others,
 * a worker descheduled on a loaded machine, are only counted). */
typedef struct reports {
    pthread_mutex_t lock;
    uint32_t watched;
    int started, ended, others;
    char name[64];
    uint64_t running_ns;
} reports;

static void on_stall(const veloq_stall_report *r, void *user_data) {
    reports *rep = (reports *)user_data;
    pthread_mutex_lock(&rep->lock);
    if (r->worker != rep->watched) {
        rep->others++;
    } else if (r->ended) {
        rep->ended++;
    } else {
        if (rep->started++ == 0) {
            rep->running_ns = r->running_ns;
            snprintf(rep->name, sizeof rep->name, "%s", r->task_name ? r->task_name : "(null)");
        }
    }
    pthread_mutex_unlock(&rep->lock);
}

static int reports_count(reports *rep, int ended) {
    int n;
    pthread_mutex_lock(&rep->lock);
    n = ended ? rep->ended : rep->started;
    pthread_mutex_unlock(&rep->lock);
    return n;
}

/* Waits (bounded) until `*flag` (read atomically) reaches `want`; returns whether it did. */
static int wait_for(int (*get)(void *), void *arg, int want) {
    int64_t start = check_now_ns();
    while (get(arg) < want) {
        if (check_now_ns() - start > GIVE_UP_NS)
            return 0;
        check_sleep_ms(1);
    }
    return 1;
}

static int get_started(void *rep) { return reports_count((reports *)rep, 0); }
static int get_ended(void *rep) { return reports_count((reports *)rep, 1); }

static veloq_runtime *stall_runtime(reports *rep) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    if (!b)
        return NULL;
    CHECK_OK(veloq_builder_workers(b, 2));
    CHECK_OK(veloq_builder_stall_threshold(b, THRESHOLD_NS));
    CHECK_OK(veloq_builder_stall_log(b, false));
    CHECK_OK(veloq_builder_on_stall(b, on_stall, rep));
    if (veloq_runtime_build(b, &rt) != 0)
        return NULL;
    return rt;
}

/* ---- a callback that stalls its worker ---- */

#define STEALABLE 6
#define BALANCED 10

typedef struct spin_state {
    veloq_cq *cq;
    int stolen_ran;             /* stealable jobs that ran */
    int stolen_on_other;        /* ... on a worker other than the spinner's */
    int balanced_ran, balanced_on_other;
    int release;                /* set by the host once it made its balanced spawns */
    uint32_t spinner_worker;
} spin_state;

static spin_state g_spin;

static int64_t mark_stolen(veloq_ctx *ctx, void *arg) {
    (void)arg;
    if (veloq_ctx_worker(ctx) != g_spin.spinner_worker)
        __atomic_fetch_add(&g_spin.stolen_on_other, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&g_spin.stolen_ran, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static int64_t mark_balanced(veloq_ctx *ctx, void *arg) {
    (void)arg;
    if (veloq_ctx_worker(ctx) != g_spin.spinner_worker)
        __atomic_fetch_add(&g_spin.balanced_on_other, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&g_spin.balanced_ran, 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* Spins until `*v` reaches `want` or GIVE_UP_NS passed; returns whether it did. */
static int spin_until(int *v, int want) {
    int64_t start = check_now_ns();
    while (__atomic_load_n(v, __ATOMIC_SEQ_CST) < want) {
        if (check_now_ns() - start > GIVE_UP_NS)
            return 0;
    }
    return 1;
}

/* Queues stealable work on its own worker, then holds that worker until the work ran
 * elsewhere and the host released it. Returns 1 when both happened. */
static int64_t spinner(veloq_ctx *ctx, void *arg) {
    int i, ok;
    (void)arg;
    g_spin.spinner_worker = veloq_ctx_worker(ctx);
    for (i = 0; i < STEALABLE; i++)
        if (veloq_spawn(veloq_ctx_runtime(ctx), mark_stolen, NULL, g_spin.cq, 100 + i) != 0)
            return -1;
    ok = spin_until(&g_spin.stolen_ran, STEALABLE);
    ok &= spin_until(&g_spin.release, 1);
    return ok;
}

static void count_cqe(const veloq_cqe *e, void *ctx) {
    int64_t *spinner_res = (int64_t *)ctx;
    if (e->user_data == 1)
        *spinner_res = e->res;
}

static void spinning_callback_is_reported_and_its_work_runs_on_the_other_worker(void) {
    reports rep = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, "", 0};
    veloq_runtime *rt = stall_runtime(&rep);
    veloq_worker_stats s;
    int64_t spinner_res = -100;
    int i;
    REQUIRE(rt != NULL);
    memset(&g_spin, 0, sizeof g_spin);
    g_spin.spinner_worker = 0;
    g_spin.cq = vt_cq(rt, 64);
    REQUIRE(g_spin.cq != NULL);
    CHECK_OK(veloq_spawn_named(rt, "spin", 0, spinner, NULL, g_spin.cq, 1));

    REQUIRE(wait_for(get_started, &rep, 1));
    CHECK(strcmp(rep.name, "spin") == 0);
    CHECK_GE(rep.running_ns, (uint64_t)THRESHOLD_NS);
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    CHECK_OK(veloq_runtime_stats(rt, 0, &s));
    CHECK_EQ(s.stalled, 1);
    CHECK_EQ(s.stalls, 1);
    CHECK_EQ(s.size, sizeof s); /* every field written, sched_policy the last */
    CHECK(s.io_batched_parks <= s.parks);

    /* Balanced spawns while worker 0 is stalled go to worker 1. */
    for (i = 0; i < BALANCED; i++)
        CHECK_OK(veloq_spawn_balanced(rt, mark_balanced, NULL, g_spin.cq, 200 + i));
    {
        int64_t start = check_now_ns();
        while (__atomic_load_n(&g_spin.balanced_ran, __ATOMIC_SEQ_CST) < BALANCED &&
               check_now_ns() - start < GIVE_UP_NS)
            check_sleep_ms(1);
    }
    __atomic_store_n(&g_spin.release, 1, __ATOMIC_SEQ_CST);

    CHECK_EQ(vt_reap(g_spin.cq, 1 + STEALABLE + BALANCED, count_cqe, &spinner_res),
             1 + STEALABLE + BALANCED);
    CHECK_EQ(spinner_res, 1); /* the stealable work ran while the spinner held worker 0 */
    CHECK_EQ(g_spin.stolen_on_other, STEALABLE);
    CHECK_EQ(g_spin.balanced_on_other, BALANCED);
    CHECK(wait_for(get_ended, &rep, 1));
    CHECK_OK(veloq_runtime_shutdown(rt, -1));
    s.size = sizeof s;
    CHECK_OK(veloq_runtime_stats(rt, 0, &s));
    CHECK_EQ(s.stalls, 1);
    CHECK_EQ(s.stalled, 0);
    CHECK_GT(s.stalled_ns, 0);
    s.size = sizeof s;
    CHECK_OK(veloq_runtime_stats(rt, 1, &s));
    CHECK_GE(s.tasks_stolen, STEALABLE);
    CHECK_OK(veloq_cq_free(g_spin.cq));
    veloq_runtime_free(rt);
}

/* ---- statistics add up ---- */

#define ROUNDS 200

static int64_t noop(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return 0;
}

/* From a worker: one task of every kind (4 + 4 named = 8 spawns). */
static int64_t spawn_every_kind(veloq_ctx *ctx, void *arg) {
    veloq_runtime *rt = veloq_ctx_runtime(ctx);
    veloq_cq *cq = (veloq_cq *)arg;
    int bad = 0;
    bad |= veloq_spawn(rt, noop, NULL, cq, 0);
    bad |= veloq_spawn_balanced(rt, noop, NULL, cq, 0);
    bad |= veloq_spawn_to(rt, 0, noop, NULL, cq, 0);
    bad |= veloq_spawn_to(rt, 1, noop, NULL, cq, 0);
    bad |= veloq_spawn_named(rt, "a", VELOQ_WORKER_ANY, noop, NULL, cq, 0);
    bad |= veloq_spawn_named(rt, "b", VELOQ_WORKER_BALANCED, noop, NULL, cq, 0);
    bad |= veloq_spawn_named(rt, "c", 0, noop, NULL, cq, 0);
    bad |= veloq_spawn_named(rt, NULL, 1, noop, NULL, cq, 0);
    return bad;
}

static void nothing(const veloq_cqe *e, void *ctx) {
    (void)e;
    (void)ctx;
}

static void tasks_run_by_source_add_up_to_tasks_spawned(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    uint64_t spawned = 0, ran = 0, expected = 0;
    uint32_t w;
    int i;
    REQUIRE(rt != NULL);
    cq = vt_cq(rt, 4096);
    REQUIRE(cq != NULL);
    for (i = 0; i < (int)CHECK_SCALED(ROUNDS); i++) {
        /* From this host thread: every kind, the last one spawning 8 more from a worker. */
        CHECK_OK(veloq_spawn(rt, noop, NULL, cq, 0));
        CHECK_OK(veloq_spawn_balanced(rt, noop, NULL, cq, 0));
        CHECK_OK(veloq_spawn_to(rt, (uint32_t)i % 2, noop, NULL, cq, 0));
        CHECK_OK(veloq_spawn_named(rt, "host", VELOQ_WORKER_ANY, noop, NULL, cq, 0));
        CHECK_OK(veloq_spawn_named(rt, "host", VELOQ_WORKER_BALANCED, noop, NULL, cq, 0));
        CHECK_OK(veloq_spawn_named(rt, "host", i % 2, spawn_every_kind, cq, cq, 0));
        expected += 6 + 8;
        CHECK_EQ(vt_reap(cq, 14, nothing, NULL), 14);
    }
    CHECK_OK(veloq_runtime_shutdown(rt, -1));
    for (w = 0; w < 2; w++) {
        veloq_worker_stats s;
        memset(&s, 0, sizeof s);
        s.size = sizeof s;
        CHECK_OK(veloq_runtime_stats(rt, w, &s));
        spawned += s.tasks_spawned;
        ran += s.tasks_local + s.tasks_mesh + s.tasks_inbox + s.tasks_injector + s.tasks_stolen;
    }
    CHECK_EQ(spawned, expected);
    CHECK_EQ(ran, spawned);
    CHECK_OK(veloq_cq_free(cq));
    veloq_runtime_free(rt);
}

/* ---- the dump ---- */

static int g_release_dump;

static int64_t hold_until_released(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    (void)arg;
    return spin_until(&g_release_dump, 1);
}

/* Dumps from inside a callback into the memfd `arg`: its own worker answers inline. */
static int64_t dump_from_inside(veloq_ctx *ctx, void *arg) {
    return veloq_runtime_dump(veloq_ctx_runtime(ctx), (int)(intptr_t)arg);
}

/* The whole content of fd (from offset 0), NUL-terminated; free it. */
static char *read_all(int fd) {
    off_t len = lseek(fd, 0, SEEK_END);
    char *text = (char *)calloc((size_t)len + 1, 1);
    if (text && pread(fd, text, (size_t)len, 0) != len) {
        free(text);
        return NULL;
    }
    return text;
}

static void dump_names_the_running_callbacks_and_reports_a_stalled_worker_without_hanging(void) {
    reports rep = {PTHREAD_MUTEX_INITIALIZER, 1, 0, 0, 0, "", 0};
    veloq_runtime *rt = stall_runtime(&rep);
    veloq_cq *cq;
    veloq_cqe e;
    int fd = memfd_create("veloq-dump", 0), fd2 = memfd_create("veloq-dump-inside", 0);
    char *text;
    REQUIRE(rt != NULL && fd >= 0 && fd2 >= 0);
    cq = vt_cq(rt, 8);
    REQUIRE(cq != NULL);
    g_release_dump = 0;
    CHECK_OK(veloq_spawn_named(rt, "held", 1, hold_until_released, NULL, cq, 1));
    REQUIRE(wait_for(get_started, &rep, 1));

    /* From the host: worker 1 cannot answer; the dump says so and returns. */
    CHECK_OK(veloq_runtime_dump(rt, fd));
    text = read_all(fd);
    REQUIRE(text != NULL);
    CHECK(strstr(text, "veloq runtime dump: 2 workers") != NULL);
    CHECK(strstr(text, "worker 1: STALLED, not answering") != NULL);
    CHECK(strstr(text, "running task 'held'") != NULL);
    CHECK(strstr(text, "worker 0:") != NULL);
    free(text);

    /* From a callback on worker 0: its own section inline, no deadlock. */
    CHECK_OK(veloq_spawn_named(rt, "inside", 0, dump_from_inside, (void *)(intptr_t)fd2, cq, 2));
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, GIVE_UP_NS) == 1);
    CHECK_EQ(e.user_data, 2);
    CHECK_EQ(e.res, 0);
    text = read_all(fd2);
    REQUIRE(text != NULL);
    CHECK(strstr(text, "worker 0: answered; running task 'inside'") != NULL);
    CHECK(strstr(text, "worker 1: STALLED, not answering") != NULL);
    free(text);

    __atomic_store_n(&g_release_dump, 1, __ATOMIC_SEQ_CST);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, GIVE_UP_NS) == 1);
    CHECK_EQ(e.user_data, 1);
    CHECK_EQ(e.res, 1);
    close(fd);
    close(fd2);
    CHECK_OK(veloq_cq_free(cq));
    veloq_runtime_free(rt);
}

/* ---- bad input ---- */

static void bad_input_is_refused_with_einval_and_changes_nothing(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_builder *b = veloq_builder_new();
    veloq_worker_stats s;
    unsigned char raw[sizeof s + 16];
    REQUIRE(rt != NULL && b != NULL);

    CHECK_ERR(veloq_runtime_stats(NULL, 0, &s), -EINVAL);
    CHECK_ERR(veloq_runtime_stats(rt, 0, NULL), -EINVAL);
    memset(&s, 0xab, sizeof s);
    s.size = sizeof s;
    CHECK_ERR(veloq_runtime_stats(rt, 2, &s), -EINVAL);
    CHECK_EQ(s.ring_flags, 0xabababab); /* nothing written */
    s.size = 4;
    CHECK_ERR(veloq_runtime_stats(rt, 0, &s), -EINVAL);
    CHECK_EQ(s.size, 4);

    /* An older caller with only the header: 8 bytes written, nothing past them. */
    memset(raw, 0xcd, sizeof raw);
    ((veloq_worker_stats *)raw)->size = 8;
    CHECK_OK(veloq_runtime_stats(rt, 0, (veloq_worker_stats *)raw));
    CHECK_EQ(((veloq_worker_stats *)raw)->size, 8);
    CHECK_EQ(raw[8], 0xcd);
    /* A newer caller with a bigger struct: the library's size written, the rest untouched. */
    memset(raw, 0xcd, sizeof raw);
    ((veloq_worker_stats *)raw)->size = sizeof raw;
    CHECK_OK(veloq_runtime_stats(rt, 1, (veloq_worker_stats *)raw));
    CHECK_EQ(((veloq_worker_stats *)raw)->size, sizeof s);
    CHECK_EQ(raw[sizeof s], 0xcd);

    CHECK_ERR(veloq_runtime_dump(NULL, 1), -EINVAL);
    CHECK_ERR(veloq_runtime_dump(rt, -1), -EINVAL);

    CHECK_ERR(veloq_spawn_named(NULL, "x", VELOQ_WORKER_ANY, noop, NULL, NULL, 0), -EINVAL);
    CHECK_ERR(veloq_spawn_named(rt, "x", VELOQ_WORKER_ANY, NULL, NULL, NULL, 0), -EINVAL);
    CHECK_ERR(veloq_spawn_named(rt, "x", -3, noop, NULL, NULL, 0), -EINVAL);
    CHECK_ERR(veloq_spawn_named(rt, "x", 2, noop, NULL, NULL, 0), -EINVAL);

    CHECK_ERR(veloq_builder_stall_threshold(NULL, 1), -EINVAL);
    CHECK_ERR(veloq_builder_stall_log(NULL, true), -EINVAL);
    CHECK_ERR(veloq_builder_on_stall(NULL, on_stall, NULL), -EINVAL);
    CHECK_ERR(veloq_builder_on_stall(b, NULL, NULL), -EINVAL);
    veloq_builder_free(b);
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_stall", 120);
    RUN_CASE(spinning_callback_is_reported_and_its_work_runs_on_the_other_worker);
    RUN_CASE(tasks_run_by_source_add_up_to_tasks_spawned);
    RUN_CASE(dump_names_the_running_callbacks_and_reports_a_stalled_worker_without_hanging);
    RUN_CASE(bad_input_is_refused_with_einval_and_changes_nothing);
    return check_summary();
}
