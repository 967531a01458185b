/*
 * check.h: the smallest test framework that the C and C++ tests of libveloq need.
 *
 * A test program is a list of cases (void functions) run by RUN_CASE from main():
 *
 *     static void cq_wait_times_out_when_empty(void) { ... CHECK_EQ(rc, -ETIMEDOUT); ... }
 *     int main(void) {
 *         check_init("test_cq", 60);
 *         RUN_CASE(cq_wait_times_out_when_empty);
 *         return check_summary();
 *     }
 *
 * A case fails when any CHECK in it fails (checks may be made from any thread, workers
 * included); the program ends with the line `N passed, N failed` (cases) and exits non-zero
 * when a case failed. Environment:
 *   VELOQ_TEST_SCALE=N    divide every load (CHECK_SCALED) by N, e.g. under valgrind;
 *                         every case still runs.
 *   VELOQ_TEST_TIMEOUT=S  watchdog in seconds for the whole program (default: the value
 *                         given to check_init); on expiry it names the running case and
 *                         exits with status 124, so a hang is a failure and not a stuck CI.
 *
 * Programs define _GNU_SOURCE before any include (clock_gettime, alarm, nanosleep).
 * Works as C99/C11 and C++11/17 (GCC builtins for atomics, no <stdatomic.h>). In C every
 * program is one translation unit and the state is static; in C++ the state lives in an
 * inline function, so several translation units of one program share it.
 */
#ifndef VELOQ_CHECK_H
#define VELOQ_CHECK_H

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
#include <exception>
#define CHECK_API_ inline
#else
#define CHECK_API_ static inline
#endif

struct check_state_ {
    int passed;          /* cases */
    int failed;          /* cases */
    unsigned failures;   /* failed checks, all threads; read/written with __atomic */
    const char *current; /* name of the running case, for the watchdog */
    unsigned long scale;
};

CHECK_API_ struct check_state_ *check_state_(void) {
    static struct check_state_ state = {0, 0, 0, "(none)", 1};
    return &state;
}

#if defined(__GNUC__)
#define CHECK_PRINTF_(a, b) __attribute__((format(printf, a, b)))
#else
#define CHECK_PRINTF_(a, b)
#endif

CHECK_API_ void check_fail_(const char *file, int line, const char *fmt, ...) CHECK_PRINTF_(3, 4);

CHECK_API_ void check_fail_(const char *file, int line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    __atomic_fetch_add(&check_state_()->failures, 1u, __ATOMIC_SEQ_CST);
    /* One fprintf per failure: lines from several threads do not interleave. */
    fprintf(stdout, "    FAILED %s:%d: %s\n", file, line, msg);
    fflush(stdout);
}

/* The condition must hold. */
#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond))                                                                   \
            check_fail_(__FILE__, __LINE__, "CHECK(%s)", #cond);                       \
    } while (0)

/* Two integers compare as given; both values are printed on failure. */
#define CHECK_CMP_(a, op, b)                                                           \
    do {                                                                               \
        long long check_a_ = (long long)(a);                                           \
        long long check_b_ = (long long)(b);                                           \
        if (!(check_a_ op check_b_))                                                   \
            check_fail_(__FILE__, __LINE__, "%s %s %s (%lld vs %lld)", #a, #op, #b,    \
                        check_a_, check_b_);                                           \
    } while (0)
#define CHECK_EQ(a, b) CHECK_CMP_(a, ==, b)
#define CHECK_NE(a, b) CHECK_CMP_(a, !=, b)
#define CHECK_LT(a, b) CHECK_CMP_(a, <, b)
#define CHECK_LE(a, b) CHECK_CMP_(a, <=, b)
#define CHECK_GT(a, b) CHECK_CMP_(a, >, b)
#define CHECK_GE(a, b) CHECK_CMP_(a, >=, b)

/* A call returning 0 / a count succeeded (>= 0); prints the errno name otherwise. */
#define CHECK_OK(expr)                                                                 \
    do {                                                                               \
        long long check_r_ = (long long)(expr);                                        \
        if (check_r_ < 0)                                                              \
            check_fail_(__FILE__, __LINE__, "%s failed: %lld (%s)", #expr, check_r_,   \
                        check_r_ > -4096 ? strerror((int)-check_r_) : "library code"); \
    } while (0)

/* A call failed with exactly this negative errno. */
#define CHECK_ERR(expr, err)                                                           \
    do {                                                                               \
        long long check_r_ = (long long)(expr);                                        \
        long long check_e_ = (long long)(err);                                         \
        if (check_r_ != check_e_)                                                      \
            check_fail_(__FILE__, __LINE__, "%s returned %lld, expected %s (%lld)",    \
                        #expr, check_r_, #err, check_e_);                              \
    } while (0)

/* Like CHECK, but ends the case (returns from the void case function) when it fails:
 * for preconditions without which the rest of the case cannot run. */
#define REQUIRE(cond)                                                                  \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            check_fail_(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                     \
            return;                                                                    \
        }                                                                              \
    } while (0)
#define REQUIRE_OK(expr)                                                               \
    do {                                                                               \
        long long check_r_ = (long long)(expr);                                        \
        if (check_r_ < 0) {                                                            \
            check_fail_(__FILE__, __LINE__, "%s failed: %lld (%s)", #expr, check_r_,   \
                        check_r_ > -4096 ? strerror((int)-check_r_) : "library code"); \
            return;                                                                    \
        }                                                                              \
    } while (0)

CHECK_API_ void check_watchdog_(int sig) {
    static const char head[] = "\nTIMEOUT (watchdog) in case: ";
    const char *name = check_state_()->current;
    ssize_t r;
    (void)sig;
    r = write(1, head, sizeof head - 1);
    r = write(1, name, strlen(name));
    r = write(1, "\n", 1);
    (void)r;
    _exit(124);
}

/* Reads the environment and arms the watchdog. */
CHECK_API_ void check_init(const char *program, unsigned default_timeout_s) {
    const char *s = getenv("VELOQ_TEST_SCALE");
    const char *t = getenv("VELOQ_TEST_TIMEOUT");
    unsigned timeout = default_timeout_s;
    if (s && strtoul(s, NULL, 10) > 0)
        check_state_()->scale = strtoul(s, NULL, 10);
    if (t && strtoul(t, NULL, 10) > 0)
        timeout = (unsigned)strtoul(t, NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, check_watchdog_);
    alarm(timeout);
    printf("%s (scale 1/%lu, watchdog %us)\n", program, check_state_()->scale, timeout);
}

/* A load of n, divided by VELOQ_TEST_SCALE (at least 1). */
CHECK_API_ size_t check_scaled(size_t n) {
    size_t v = n / check_state_()->scale;
    return v ? v : 1;
}
#define CHECK_SCALED(n) check_scaled(n)

CHECK_API_ void check_run_case_(const char *name, void (*fn)(void)) {
    struct check_state_ *st = check_state_();
    unsigned before = __atomic_load_n(&st->failures, __ATOMIC_SEQ_CST);
    st->current = name;
#ifdef __cplusplus
    /* An exception escaping a case fails that case; the program goes on. */
    try {
        fn();
    } catch (const std::exception &e) {
        check_fail_(__FILE__, __LINE__, "uncaught exception: %s", e.what());
    } catch (...) {
        check_fail_(__FILE__, __LINE__, "uncaught exception of unknown type");
    }
#else
    fn();
#endif
    if (__atomic_load_n(&st->failures, __ATOMIC_SEQ_CST) == before) {
        st->passed++;
        printf("ok   %s\n", name);
    } else {
        st->failed++;
        printf("FAIL %s\n", name);
    }
    st->current = "(between cases)";
}
#define RUN_CASE(fn) check_run_case_(#fn, fn)

/* Prints the closing line and gives main's exit status. */
CHECK_API_ int check_summary(void) {
    struct check_state_ *st = check_state_();
    alarm(0);
    printf("%d passed, %d failed\n", st->passed, st->failed);
    fflush(stdout);
    return st->failed ? 1 : 0;
}

/* ---- small helpers shared by the tests ---- */

CHECK_API_ int64_t check_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

CHECK_API_ void check_sleep_ms(unsigned ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/*
 * A tally counts how often each id in [0, n) was seen, from any thread: the tool for
 * "every completion exactly once". Marking an id seen before counts a duplicate; an id out
 * of range counts as stray.
 */
typedef struct check_tally {
    unsigned char *seen;
    size_t n;
    size_t marked;
    size_t duplicates;
    size_t stray;
} check_tally;

CHECK_API_ int check_tally_init(check_tally *t, size_t n) {
    t->seen = (unsigned char *)calloc(n ? n : 1, 1);
    t->n = n;
    t->marked = t->duplicates = t->stray = 0;
    return t->seen != NULL;
}

CHECK_API_ void check_tally_mark(check_tally *t, uint64_t id) {
    if (id >= t->n) {
        __atomic_fetch_add(&t->stray, 1, __ATOMIC_RELAXED);
        return;
    }
    if (__atomic_fetch_add(&t->seen[id], 1, __ATOMIC_RELAXED) != 0)
        __atomic_fetch_add(&t->duplicates, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->marked, 1, __ATOMIC_RELAXED);
}

/* How many ids in [0, n) were never seen. */
CHECK_API_ size_t check_tally_missing(const check_tally *t) {
    size_t i, missing = 0;
    for (i = 0; i < t->n; i++)
        missing += __atomic_load_n(&t->seen[i], __ATOMIC_RELAXED) == 0;
    return missing;
}

CHECK_API_ void check_tally_free(check_tally *t) {
    free(t->seen);
    t->seen = NULL;
}

/* Every id in [0, n) exactly once, nothing else. */
#define CHECK_TALLY_EXACT(t)                                                           \
    do {                                                                               \
        CHECK_EQ(check_tally_missing(t), 0);                                           \
        CHECK_EQ((t)->duplicates, 0);                                                  \
        CHECK_EQ((t)->stray, 0);                                                       \
    } while (0)

#endif /* VELOQ_CHECK_H */
