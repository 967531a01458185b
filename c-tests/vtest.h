/*
 * vtest.h: libveloq helpers shared by the C tests (on top of check.h).
 */
#ifndef VELOQ_VTEST_H
#define VELOQ_VTEST_H

#include <pthread.h>
#include <sched.h>

#include "check.h"
#include "veloq.h"

/* How long a test waits for completions that must come before it calls it a loss. Generous:
 * valgrind runs the same cases ~50x slower; this bounds a lost completion, it is no speed
 * assertion. */
#define VT_REAP_DEADLINE_NS (120LL * 1000000000LL)

/* A runtime with `workers` workers (0 = one per CPU), or NULL (the failure is reported). */
static inline veloq_runtime *vt_runtime(uint32_t workers) {
    veloq_builder *b = veloq_builder_new();
    veloq_runtime *rt = NULL;
    int rc;
    if (!b) {
        check_fail_(__FILE__, __LINE__, "veloq_builder_new returned NULL");
        return NULL;
    }
    rc = veloq_builder_workers(b, workers);
    if (rc < 0) {
        check_fail_(__FILE__, __LINE__, "veloq_builder_workers(%u) = %d", workers, rc);
        veloq_builder_free(b);
        return NULL;
    }
    rc = veloq_runtime_build(b, &rt);
    if (rc < 0 || !rt) {
        check_fail_(__FILE__, __LINE__, "veloq_runtime_build = %d", rc);
        return NULL;
    }
    return rt;
}

/* A completion queue of `capacity`, or NULL (the failure is reported). */
static inline veloq_cq *vt_cq(veloq_runtime *rt, uint32_t capacity) {
    veloq_cq *cq = NULL;
    int rc = veloq_cq_new(rt, capacity, &cq);
    if (rc < 0 || !cq) {
        check_fail_(__FILE__, __LINE__, "veloq_cq_new(%u) = %d", capacity, rc);
        return NULL;
    }
    return cq;
}

typedef void (*vt_cqe_fn)(const veloq_cqe *e, void *ctx);

/*
 * Reaps completions from `cq` with veloq_cq_wait until `expected` have arrived, handing each
 * to `fn`. Returns how many arrived; fewer than expected only when nothing came for
 * VT_REAP_DEADLINE_NS (reported as a failure) or the queue returned an error.
 */
static inline size_t vt_reap(veloq_cq *cq, size_t expected, vt_cqe_fn fn, void *ctx) {
    veloq_cqe buf[256];
    size_t got = 0;
    int64_t last = check_now_ns();
    while (got < expected) {
        int i, n = veloq_cq_wait(cq, buf, 256, 1, 100 * 1000000LL);
        if (n == -ETIMEDOUT) {
            if (check_now_ns() - last > VT_REAP_DEADLINE_NS) {
                check_fail_(__FILE__, __LINE__, "lost completions: %zu of %zu arrived", got,
                            expected);
                break;
            }
            continue;
        }
        if (n < 0) {
            check_fail_(__FILE__, __LINE__, "veloq_cq_wait = %d (%s)", n, veloq_strerror(n));
            break;
        }
        for (i = 0; i < n; i++)
            fn(&buf[i], ctx);
        got += (size_t)n;
        last = check_now_ns();
    }
    return got;
}

/* Takes whatever waits in `cq` right now (veloq_cq_poll until empty); returns the count. */
static inline size_t vt_drain_now(veloq_cq *cq, vt_cqe_fn fn, void *ctx) {
    veloq_cqe buf[256];
    size_t got = 0;
    for (;;) {
        int i, n = veloq_cq_poll(cq, buf, 256);
        if (n < 0) {
            check_fail_(__FILE__, __LINE__, "veloq_cq_poll = %d (%s)", n, veloq_strerror(n));
            break;
        }
        if (n == 0)
            break;
        for (i = 0; i < n; i++)
            fn(&buf[i], ctx);
        got += (size_t)n;
    }
    return got;
}

/* A gate that tasks wait at until the host opens it: holds a worker busy for as long as a
 * case needs, without any timing. Waiting sleeps (not spins) so valgrind stays fair. */
typedef struct vt_gate {
    int open;
    int arrived;
} vt_gate;

static inline void vt_gate_pass(vt_gate *g) {
    __atomic_fetch_add(&g->arrived, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&g->open, __ATOMIC_ACQUIRE))
        check_sleep_ms(1);
}

static inline void vt_gate_open(vt_gate *g) { __atomic_store_n(&g->open, 1, __ATOMIC_RELEASE); }

/* Waits until `n` tasks arrived at the gate (bounded; a failure after the deadline). */
static inline int vt_gate_wait_arrived(vt_gate *g, int n) {
    int64_t start = check_now_ns();
    while (__atomic_load_n(&g->arrived, __ATOMIC_ACQUIRE) < n) {
        if (check_now_ns() - start > VT_REAP_DEADLINE_NS) {
            check_fail_(__FILE__, __LINE__, "only %d of %d tasks reached the gate",
                        __atomic_load_n(&g->arrived, __ATOMIC_ACQUIRE), n);
            return 0;
        }
        check_sleep_ms(1);
    }
    return 1;
}

/* Task: returns its arg (an id) unchanged. */
static inline int64_t vt_task_return_arg(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return (int64_t)(uintptr_t)arg;
}

/* Task: waits at the gate passed as arg, returns 7. */
static inline int64_t vt_task_gate(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    vt_gate_pass((vt_gate *)arg);
    return 7;
}

/* Task: adds one to the counter passed as arg. */
static inline int64_t vt_task_count(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    __atomic_fetch_add((long *)arg, 1, __ATOMIC_SEQ_CST);
    return 0;
}

#endif /* VELOQ_VTEST_H */
