/*
 * Errors and version: veloq_strerror gives a static string for every code (VELOQ_EPANIC's
 * its own), and veloq_version agrees with the VELOQ_VERSION_* macros (and, when the build
 * passes them, with the crate version in Cargo.toml).
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>

#include "vtest.h"

static const int k_codes[] = {
    0,           -EINVAL,  -ENOMEM,      -EAGAIN, -EBUSY, -ECANCELED, -ETIMEDOUT,
    -ESHUTDOWN,  -EDEADLK, -ENOENT,      -EBADF,  -EIO,   -EPIPE,     -ECONNRESET,
    VELOQ_EPANIC};
#define N_CODES (sizeof k_codes / sizeof k_codes[0])

/* Values no function returns; -4096 is the lowest kernel errno, below it libveloq's own. */
static const int k_odd_values[] = {INT_MIN, INT_MIN + 1, -1000000, -4096, -4095,
                                   1,       EINVAL,      4096,     INT_MAX};
#define N_ODD (sizeof k_odd_values / sizeof k_odd_values[0])

static void strerror_gives_a_string_for_every_code(void) {
    size_t i;
    for (i = 0; i < N_CODES; i++) {
        const char *s = veloq_strerror(k_codes[i]);
        CHECK(s != NULL);
        if (s) {
            CHECK(s[0] != '\0');
            /* static: the same text every time */
            CHECK(strcmp(s, veloq_strerror(k_codes[i])) == 0);
        }
    }
    for (i = 0; i < N_ODD; i++) {
        const char *s = veloq_strerror(k_odd_values[i]);
        CHECK(s != NULL);
        if (s)
            CHECK(s[0] != '\0');
    }
}

/* Every errno the documented calls return has a real text, those without one of
 * libveloq's own included (the C library's). */
static void strerror_describes_every_errno_the_calls_return(void) {
    static const int returned[] = {-EALREADY, -ENODATA,  -ETIME,    -ENOBUFS,
                                   -EOPNOTSUPP, -ENOTSOCK, -EINPROGRESS, -EMSGSIZE};
    size_t i;
    for (i = 0; i < sizeof returned / sizeof returned[0]; i++) {
        const char *s = veloq_strerror(returned[i]);
        REQUIRE(s != NULL);
        if (strcmp(s, "unknown error") == 0)
            check_fail_(__FILE__, __LINE__, "veloq_strerror(%d) = \"%s\"", returned[i], s);
        CHECK(s == veloq_strerror(returned[i])); /* static: the same string every time */
    }
    CHECK(strcmp(veloq_strerror(-4095), "unknown error") == 0); /* no errno */
}

static void epanic_is_a_library_code_with_its_own_string(void) {
    const char *panic = veloq_strerror(VELOQ_EPANIC);
    size_t i;
    CHECK_LT(VELOQ_EPANIC, -4096);
    REQUIRE(panic != NULL);
    for (i = 0; i < N_CODES; i++) {
        const char *s = veloq_strerror(k_codes[i]);
        if (k_codes[i] == VELOQ_EPANIC || !s)
            continue;
        if (strcmp(s, panic) == 0)
            check_fail_(__FILE__, __LINE__, "veloq_strerror(%d) == veloq_strerror(VELOQ_EPANIC)",
                        k_codes[i]);
    }
    for (i = 0; i < N_ODD; i++) {
        const char *s = veloq_strerror(k_odd_values[i]);
        if (k_odd_values[i] == VELOQ_EPANIC)
            continue;
        if (s && strcmp(s, panic) == 0)
            check_fail_(__FILE__, __LINE__, "veloq_strerror(%d) == veloq_strerror(VELOQ_EPANIC)",
                        k_odd_values[i]);
    }
}

static void *strerror_hammer(void *p) {
    long *bad = (long *)p;
    int round;
    size_t i;
    for (round = 0; round < 2000; round++)
        for (i = 0; i < N_CODES; i++)
            if (veloq_strerror(k_codes[i]) == NULL)
                __atomic_fetch_add(bad, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void strerror_is_safe_from_many_threads(void) {
    pthread_t th[4];
    long bad = 0;
    int i;
    for (i = 0; i < 4; i++)
        REQUIRE(pthread_create(&th[i], NULL, strerror_hammer, &bad) == 0);
    for (i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ(bad, 0);
}

static void version_agrees_with_the_macros(void) {
    uint32_t v = veloq_version();
    CHECK_EQ(v, ((uint32_t)VELOQ_VERSION_MAJOR << 16) | ((uint32_t)VELOQ_VERSION_MINOR << 8) |
                    (uint32_t)VELOQ_VERSION_PATCH);
    CHECK_EQ(v >> 16, VELOQ_VERSION_MAJOR);
    CHECK_EQ((v >> 8) & 0xff, VELOQ_VERSION_MINOR);
    CHECK_EQ(v & 0xff, VELOQ_VERSION_PATCH);
    CHECK_LT(VELOQ_VERSION_MINOR, 256);
    CHECK_LT(VELOQ_VERSION_PATCH, 256);
}

/* The Makefile passes the crate version from Cargo.toml: header, library and package agree. */
static void version_is_the_crate_version(void) {
#if defined(EXPECT_VERSION_MAJOR) && defined(EXPECT_VERSION_MINOR) && defined(EXPECT_VERSION_PATCH)
    CHECK_EQ(VELOQ_VERSION_MAJOR, EXPECT_VERSION_MAJOR);
    CHECK_EQ(VELOQ_VERSION_MINOR, EXPECT_VERSION_MINOR);
    CHECK_EQ(VELOQ_VERSION_PATCH, EXPECT_VERSION_PATCH);
#else
    printf("    (no EXPECT_VERSION_* given; checked against the macros only)\n");
#endif
}

int main(void) {
    check_init("test_errors", 60);
    RUN_CASE(strerror_gives_a_string_for_every_code);
    RUN_CASE(strerror_describes_every_errno_the_calls_return);
    RUN_CASE(epanic_is_a_library_code_with_its_own_string);
    RUN_CASE(strerror_is_safe_from_many_threads);
    RUN_CASE(version_agrees_with_the_macros);
    RUN_CASE(version_is_the_crate_version);
    return check_summary();
}
