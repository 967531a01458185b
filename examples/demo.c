/*
 * demo: one million callbacks through libveloq, watched from the host's own epoll loop.
 *
 *   - starts a runtime with one worker per CPU;
 *   - two host threads submit 500,000 callbacks each with veloq_spawn_balanced, every one
 *     tagged with a unique user_data and completing to one completion queue;
 *   - the main thread waits on the queue's fd in its own epoll loop and drains it with
 *     veloq_cq_poll whenever it is readable;
 *   - every completion must arrive exactly once (a bitmap by user_data), with res equal to
 *     what the callback returned; it prints how many ran on each worker and the throughput.
 *
 * Exit status 0 only when nothing was lost or duplicated.
 *
 *   make demo                      # builds libveloq and runs this
 *   ./demo [callbacks]             # default 1000000
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <veloq.h>

#define SUBMITTERS 2
#define BATCH 256

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The callback: a little arithmetic on its tag, returned as the completion's res. */
static int64_t callback(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return (int64_t)((uintptr_t)arg * 2 + 1);
}

struct submitter {
    pthread_t thread;
    veloq_runtime *rt;
    veloq_cq *cq;
    uint64_t first, count;
    uint64_t refused;
    int last_error;
    int done;
};

static void *submit_main(void *p) {
    struct submitter *s = p;
    uint64_t i;
    for (i = 0; i < s->count; i++) {
        uint64_t tag = s->first + i;
        int rc = veloq_spawn_balanced(s->rt, callback, (void *)(uintptr_t)tag, s->cq, tag);
        if (rc != 0) {
            s->refused++;
            s->last_error = rc;
        }
    }
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

int main(int argc, char **argv) {
    uint64_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000u;
    uint64_t received = 0, duplicates = 0, stray = 0, wrong_res = 0, missing = 0, refused = 0;
    uint64_t *per_worker, i, start, elapsed, unknown;
    unsigned char *seen;
    struct submitter sub[SUBMITTERS];
    struct epoll_event ev;
    veloq_runtime *rt = NULL;
    veloq_cq *cq = NULL;
    uint32_t workers, w;
    int rc, epfd, idle = 0, ok;

    if (total == 0) {
        fprintf(stderr, "usage: %s [callbacks > 0]\n", argv[0]);
        return 2;
    }
    rc = veloq_runtime_new(&rt);
    if (rc < 0) {
        fprintf(stderr, "veloq_runtime_new: %s\n", veloq_strerror(rc));
        return 1;
    }
    workers = veloq_runtime_workers(rt);
    rc = veloq_cq_new(rt, 4096, &cq);
    if (rc < 0) {
        fprintf(stderr, "veloq_cq_new: %s\n", veloq_strerror(rc));
        veloq_runtime_free(rt);
        return 1;
    }
    seen = calloc(total, 1);
    per_worker = calloc(workers + 1u, sizeof *per_worker); /* + 1: a worker index out of range */
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!seen || !per_worker || epfd < 0) {
        perror("demo: setup");
        return 1;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, veloq_cq_fd(cq), &ev) != 0) {
        perror("demo: epoll_ctl");
        return 1;
    }

    printf("libveloq %u.%u.%u: %u workers, %" PRIu64 " callbacks from %d host threads\n",
           veloq_version() >> 16, (veloq_version() >> 8) & 0xff, veloq_version() & 0xff, workers,
           total, SUBMITTERS);
    start = now_ns();
    for (i = 0; i < SUBMITTERS; i++) {
        sub[i].rt = rt;
        sub[i].cq = cq;
        sub[i].first = total / SUBMITTERS * i;
        sub[i].count = i + 1 < SUBMITTERS ? total / SUBMITTERS : total - sub[i].first;
        sub[i].refused = 0;
        sub[i].last_error = 0;
        sub[i].done = 0;
        if (pthread_create(&sub[i].thread, NULL, submit_main, &sub[i]) != 0) {
            perror("demo: pthread_create");
            return 1;
        }
    }

    /* The host's own event loop: sleep in epoll until the queue's fd is readable, then drain
     * it. Bounded: 30 quiet seconds in a row means completions were lost. */
    while (received < total && idle < 30) {
        veloq_cqe batch[BATCH];
        int n = epoll_wait(epfd, &ev, 1, 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("demo: epoll_wait");
            break;
        }
        if (n == 0) {
            /* Quiet. When the submitters are done and some calls were refused, everything
             * that was accepted may already be here: then stop instead of idling. */
            uint64_t accepted = 0, finished = 0;
            idle++;
            for (i = 0; i < SUBMITTERS; i++) {
                finished += __atomic_load_n(&sub[i].done, __ATOMIC_ACQUIRE);
                accepted += sub[i].count - __atomic_load_n(&sub[i].refused, __ATOMIC_RELAXED);
            }
            if (finished == SUBMITTERS && received >= accepted)
                break;
            continue;
        }
        idle = 0;
        while ((n = veloq_cq_poll(cq, batch, BATCH)) > 0) {
            int k;
            for (k = 0; k < n; k++) {
                const veloq_cqe *e = &batch[k];
                if (e->user_data >= total) {
                    stray++;
                    continue;
                }
                if (seen[e->user_data]++)
                    duplicates++;
                if (e->res != (int64_t)(e->user_data * 2 + 1))
                    wrong_res++;
                per_worker[e->worker < workers ? e->worker : workers]++;
            }
            received += (uint64_t)n;
        }
        if (n < 0) {
            fprintf(stderr, "veloq_cq_poll: %s\n", veloq_strerror(n));
            break;
        }
    }
    elapsed = now_ns() - start;

    for (i = 0; i < SUBMITTERS; i++) {
        pthread_join(sub[i].thread, NULL);
        refused += sub[i].refused;
        if (sub[i].refused)
            fprintf(stderr, "submitter %" PRIu64 ": %" PRIu64 " refused, last: %s\n", i,
                    sub[i].refused, veloq_strerror(sub[i].last_error));
    }
    for (i = 0; i < total; i++)
        missing += seen[i] == 0;

    printf("\nper worker:\n");
    for (w = 0; w < workers; w++)
        printf("  worker %2u: %9" PRIu64 " callbacks (%5.1f%%)\n", w, per_worker[w],
               100.0 * (double)per_worker[w] / (double)(received ? received : 1));
    unknown = per_worker[workers];
    if (unknown)
        printf("  unknown  : %9" PRIu64 "\n", unknown);
    printf("\nreceived %" PRIu64 " of %" PRIu64 " completions in %.3f s: %.0f callbacks/s\n",
           received, total, (double)elapsed / 1e9, (double)received * 1e9 / (double)elapsed);
    printf("missing %" PRIu64 ", duplicates %" PRIu64 ", stray %" PRIu64 ", wrong res %" PRIu64
           ", refused %" PRIu64 "\n",
           missing, duplicates, stray, wrong_res, refused);

    close(epfd);
    rc = veloq_cq_free(cq);
    if (rc < 0)
        fprintf(stderr, "veloq_cq_free: %s\n", veloq_strerror(rc));
    veloq_runtime_free(rt);
    free(seen);
    free(per_worker);

    ok = received == total && missing == 0 && duplicates == 0 && stray == 0 && wrong_res == 0 &&
         refused == 0 && unknown == 0 && rc == 0;
    printf("%s\n", ok ? "demo: OK, every callback completed exactly once"
                      : "demo: FAILED");
    return ok ? 0 : 1;
}
