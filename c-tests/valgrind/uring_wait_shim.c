/*
 * uring_wait_shim.so: LD_PRELOADed into the test programs for the valgrind pass only.
 *
 * Valgrind runs one client thread at a time and lets another run while a thread sits in a
 * system call only when it knows that call may block. Its io_uring_enter wrapper (3.19, and
 * the versions after it that we know of) does not say so: a worker parked in
 * io_uring_enter(GETEVENTS, min_complete >= 1) keeps valgrind's lock, so no other thread
 * (the one that would wake it included) ever runs again, and the process hangs where a
 * native run does not.
 *
 * This shim interposes glibc's syscall(3), which the io-uring crate uses, and turns such a
 * waiting io_uring_enter into (1) the same call without waiting, to submit, then (2) a loop
 * of non-blocking waits (GETEVENTS with a zero timeout through IORING_ENTER_EXT_ARG, which
 * also runs deferred task work, so DEFER_TASKRUN rings complete too) with a 100 us
 * nanosleep(2) between them: valgrind knows nanosleep may block and lets the other threads
 * run. The library sees the result it would have seen; only how the thread sleeps changes.
 * Every other system call goes through untouched. Never used outside the valgrind pass.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>

typedef long (*syscall_fn)(long number, ...);

static long real_syscall(long n, long a, long b, long c, long d, long e, long f) {
    static syscall_fn real;
    if (!real) {
        void *sym = dlsym(RTLD_NEXT, "syscall");
        memcpy(&real, &sym, sizeof real); /* POSIX: dlsym results convert to functions */
    }
    return real(n, a, b, c, d, e, f);
}

long syscall(long number, ...) {
    long a[6];
    va_list ap;
    int i;
    va_start(ap, number);
    for (i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);

    if (number == __NR_io_uring_enter) {
        int fd = (int)a[0];
        unsigned to_submit = (unsigned)a[1], min_complete = (unsigned)a[2], flags = (unsigned)a[3];
        if ((flags & IORING_ENTER_GETEVENTS) && min_complete > 0 && !(flags & IORING_ENTER_EXT_ARG)) {
            struct __kernel_timespec zero = {0, 0};
            struct io_uring_getevents_arg arg;
            long submitted = 0;
            memset(&arg, 0, sizeof arg);
            arg.sigmask = (unsigned long long)a[4]; /* the caller's sigmask, if any */
            arg.sigmask_sz = a[4] ? (unsigned)a[5] : 0;
            arg.ts = (unsigned long long)(uintptr_t)&zero;
            if (to_submit > 0) {
                submitted = real_syscall(number, fd, to_submit, 0, flags & ~IORING_ENTER_GETEVENTS,
                                         0, 0);
                if (submitted < 0)
                    return submitted;
            }
            for (;;) {
                struct timespec nap = {0, 100000};
                long r = real_syscall(number, fd, 0, min_complete, flags | IORING_ENTER_EXT_ARG,
                                      (long)(uintptr_t)&arg, (long)sizeof arg);
                if (r >= 0)
                    return submitted;
                if (errno != ETIME && errno != EBUSY)
                    return submitted > 0 ? submitted : -1; /* EINTR and real errors as they are */
                nanosleep(&nap, NULL);
            }
        }
    }
    return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
