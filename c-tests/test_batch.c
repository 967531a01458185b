/*
 * Batch submission (veloq_spawn_batch, veloq_spawn_balanced_batch): every accepted job runs
 * exactly once and completes exactly once; the accepted jobs are always a prefix of the
 * array, fewer than n only when shutdown started during the call; bad input accepts
 * nothing; a chunk runs in order on one worker; the plain form reaches every worker.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "vtest.h"

#define SUBMITTERS 4
#define PER_SUBMITTER 100000
#define BATCH 64

static check_tally g_runs;

/* Marks its id (the arg) as run and returns it. */
static int64_t task_mark(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    check_tally_mark(&g_runs, (uint64_t)(uintptr_t)arg);
    return (int64_t)(uintptr_t)arg;
}

static void fill(veloq_job *jobs, uint64_t first, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        jobs[i].fn = task_mark;
        jobs[i].arg = (void *)(uintptr_t)(first + i);
        jobs[i].user_data = first + i;
    }
}

static void on_cqe_check_res(const veloq_cqe *e, void *p) {
    check_tally *done = (check_tally *)p;
    check_tally_mark(done, e->user_data);
    if (e->res != (int64_t)e->user_data)
        check_fail_(__FILE__, __LINE__, "completion %llu has res %lld",
                    (unsigned long long)e->user_data, (long long)e->res);
}

/* ---- exactly once ---- */

/* A host thread submitting jobs first..first+count in batches (see submit_next). */
struct submitter {
    pthread_t thread;
    veloq_runtime *rt;
    veloq_cq *cq;
    uint64_t first, count;
    int bad_rc;
    long partial; /* calls that accepted a proper prefix (the shutdown race) */
};

/* Submits the batch of jobs from `done` on (at most BATCH), alternating the plain and
 * the balanced form; returns what the call returned and the batch's size in `*n`. */
static int submit_next(struct submitter *s, veloq_job *jobs, uint64_t done, uint32_t *n) {
    *n = s->count - done < BATCH ? (uint32_t)(s->count - done) : BATCH;
    fill(jobs, s->first + done, *n);
    return (done / BATCH) % 2 ? veloq_spawn_batch(s->rt, jobs, *n, s->cq)
                              : veloq_spawn_balanced_batch(s->rt, jobs, *n, s->cq);
}

/* Starts SUBMITTERS threads running `main_fn`, thread t on jobs t*per..(t+1)*per;
 * 0 when a thread could not be started. */
static int start_submitters(struct submitter *s, veloq_runtime *rt, veloq_cq *cq, uint64_t per,
                            void *(*main_fn)(void *)) {
    int t;
    for (t = 0; t < SUBMITTERS; t++) {
        memset(&s[t], 0, sizeof s[t]);
        s[t].rt = rt;
        s[t].cq = cq;
        s[t].first = (uint64_t)t * per;
        s[t].count = per;
        if (pthread_create(&s[t].thread, NULL, main_fn, &s[t]) != 0)
            return 0;
    }
    return 1;
}

static void *submitter_main(void *p) {
    struct submitter *s = (struct submitter *)p;
    veloq_job jobs[BATCH];
    uint64_t done = 0;
    while (done < s->count) {
        uint32_t n;
        int rc = submit_next(s, jobs, done, &n);
        if (rc != (int)n) {
            s->bad_rc = rc;
            return NULL;
        }
        done += n;
    }
    return NULL;
}

static void four_host_threads_submit_batches_every_job_runs_and_completes_once(void) {
    uint64_t per = CHECK_SCALED(PER_SUBMITTER), total = per * SUBMITTERS;
    struct submitter s[SUBMITTERS];
    veloq_runtime *rt = vt_runtime(0);
    check_tally done;
    veloq_cq *cq;
    int t;

    REQUIRE(rt);
    cq = vt_cq(rt, 8); /* small: most completions go through the overflow list */
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, total));
    REQUIRE(check_tally_init(&done, total));
    REQUIRE(start_submitters(s, rt, cq, per, submitter_main));
    CHECK_EQ(vt_reap(cq, total, on_cqe_check_res, &done), total);
    for (t = 0; t < SUBMITTERS; t++) {
        pthread_join(s[t].thread, NULL);
        CHECK_EQ(s[t].bad_rc, 0);
    }
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(vt_drain_now(cq, on_cqe_check_res, &done), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

/* ---- placement ---- */

static void a_small_batch_runs_in_order_on_one_worker(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_job jobs[16]; /* one chunk: chunks are at least 16 jobs */
    veloq_cqe out[16];
    veloq_cq *cq;
    int got = 0, i;

    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, 16));
    fill(jobs, 0, 16);
    CHECK_EQ(veloq_spawn_balanced_batch(rt, jobs, 16, cq), 16);
    while (got < 16) {
        int rc = veloq_cq_wait(cq, out + got, (uint32_t)(16 - got), 1, VT_REAP_DEADLINE_NS);
        REQUIRE(rc > 0);
        got += rc;
    }
    for (i = 0; i < 16; i++) {
        CHECK_EQ(out[i].user_data, (uint64_t)i);
        CHECK_EQ(out[i].worker, out[0].worker);
    }
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
}

static void the_plain_form_deals_a_large_batch_to_every_worker(void) {
    veloq_runtime *rt = vt_runtime(0);
    uint32_t workers, n, w;
    veloq_job *jobs;
    veloq_cqe out[64];
    unsigned char *seen;
    veloq_cq *cq;
    uint32_t got = 0;

    REQUIRE(rt);
    workers = veloq_runtime_workers(rt);
    n = 32 * workers; /* one chunk of 32 per worker */
    jobs = (veloq_job *)calloc(n, sizeof *jobs);
    seen = (unsigned char *)calloc(workers, 1);
    REQUIRE(jobs && seen);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, n));
    fill(jobs, 0, n);
    CHECK_EQ(veloq_spawn_batch(rt, jobs, n, cq), (int)n);
    while (got < n) {
        int rc = veloq_cq_wait(cq, out, 64, 1, VT_REAP_DEADLINE_NS);
        int i;
        REQUIRE(rc > 0);
        for (i = 0; i < rc; i++)
            if (out[i].worker < workers)
                seen[out[i].worker] = 1;
        got += (uint32_t)rc;
    }
    for (w = 0; w < workers; w++)
        CHECK_EQ(seen[w], 1);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    free(jobs);
    free(seen);
}

static void the_largest_batch_is_accepted_whole_in_many_chunks(void) {
    /* VELOQ_SPAWN_BATCH_MAX jobs in one call (scaled down under valgrind). */
    uint32_t n = (uint32_t)CHECK_SCALED(VELOQ_SPAWN_BATCH_MAX);
    veloq_runtime *rt = vt_runtime(0);
    veloq_job *jobs = (veloq_job *)calloc(n, sizeof *jobs);
    check_tally done;
    veloq_cq *cq;

    REQUIRE(rt && jobs);
    cq = vt_cq(rt, 1024);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, n));
    REQUIRE(check_tally_init(&done, n));
    fill(jobs, 0, n);
    CHECK_EQ(veloq_spawn_balanced_batch(rt, jobs, n, cq), (int)n);
    CHECK_EQ(vt_reap(cq, n, on_cqe_check_res, &done), n);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
    free(jobs);
}

/* ---- bad input ---- */

static void bad_input_is_einval_and_accepts_nothing(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_job jobs[40];
    veloq_cqe out[1];
    veloq_cq *cq;
    int form;

    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, 40));
    fill(jobs, 0, 40);
    for (form = 0; form < 2; form++) {
        int (*spawn)(veloq_runtime *, const veloq_job *, uint32_t, veloq_cq *) =
            form ? veloq_spawn_balanced_batch : veloq_spawn_batch;
        CHECK_EQ(spawn(NULL, jobs, 40, cq), -EINVAL);
        CHECK_EQ(spawn(rt, NULL, 40, cq), -EINVAL);
        CHECK_EQ(spawn(rt, jobs, 0, cq), -EINVAL);
        CHECK_EQ(spawn(rt, jobs, VELOQ_SPAWN_BATCH_MAX + 1, cq), -EINVAL);
        CHECK_EQ(spawn(rt, jobs, UINT32_MAX, cq), -EINVAL);
        /* A NULL fn anywhere, even in the last chunk: nothing of the array is accepted. */
        jobs[39].fn = NULL;
        CHECK_EQ(spawn(rt, jobs, 40, cq), -EINVAL);
        jobs[39].fn = task_mark;
        jobs[0].fn = NULL;
        CHECK_EQ(spawn(rt, jobs, 40, cq), -EINVAL);
        jobs[0].fn = task_mark;
    }
    /* Nothing ran, nothing was posted, nothing is owed. */
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    CHECK_EQ(g_runs.marked, 0);
    CHECK_EQ(veloq_cq_poll(cq, out, 1), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
}

/* ---- shutdown race ---- */

enum outcome { NOT_CALLED = 0, ACCEPTED = 1, REFUSED = 2 };

static unsigned char *g_outcome; /* per job id */
static long g_accepted;

static void *racer_main(void *p) {
    struct submitter *s = (struct submitter *)p;
    veloq_job jobs[BATCH];
    uint64_t done = 0;
    int refused = 0;
    while (done < s->count) {
        uint32_t n, i;
        int rc = submit_next(s, jobs, done, &n);
        if (rc == -ESHUTDOWN) {
            for (i = 0; i < n; i++)
                g_outcome[s->first + done + i] = REFUSED;
            if (++refused == 10)
                return NULL;
        } else if (rc >= 1 && rc <= (int)n) {
            if (refused)
                check_fail_(__FILE__, __LINE__, "a batch accepted after -ESHUTDOWN");
            for (i = 0; i < n; i++)
                g_outcome[s->first + done + i] = i < (uint32_t)rc ? ACCEPTED : REFUSED;
            s->partial += rc < (int)n;
            __atomic_fetch_add(&g_accepted, rc, __ATOMIC_RELAXED);
        } else {
            s->bad_rc = rc;
            return NULL;
        }
        done += n;
    }
    return NULL;
}

static void shutdown_while_batches_arrive_every_job_ran_once_or_was_refused(void) {
    uint64_t per = CHECK_SCALED(PER_SUBMITTER * 2), total = per * SUBMITTERS, id;
    struct submitter s[SUBMITTERS];
    veloq_runtime *rt = vt_runtime(0);
    long accepted = 0, refused = 0, partial = 0;
    check_tally done;
    veloq_cq *cq;
    int64_t start;
    int t;

    REQUIRE(rt);
    cq = vt_cq(rt, 256);
    REQUIRE(cq);
    REQUIRE(check_tally_init(&g_runs, total));
    REQUIRE(check_tally_init(&done, total));
    g_outcome = (unsigned char *)calloc(total, 1);
    REQUIRE(g_outcome);
    g_accepted = 0;
    REQUIRE(start_submitters(s, rt, cq, per, racer_main));
    /* Shut down mid-stream, once a tenth was accepted (bounded wait); the queue is drained
     * meanwhile so that it does not grow without limit. */
    start = check_now_ns();
    while (__atomic_load_n(&g_accepted, __ATOMIC_RELAXED) < (long)(total / 10) &&
           check_now_ns() - start < VT_REAP_DEADLINE_NS)
        vt_drain_now(cq, on_cqe_check_res, &done);
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    for (t = 0; t < SUBMITTERS; t++) {
        pthread_join(s[t].thread, NULL);
        CHECK_EQ(s[t].bad_rc, 0);
        partial += s[t].partial;
    }
    /* Shutdown returned: every accepted job ran and its completion is in the queue. */
    vt_drain_now(cq, on_cqe_check_res, &done);
    for (id = 0; id < total; id++) {
        unsigned char runs = g_runs.seen[id], comps = done.seen[id];
        switch (g_outcome[id]) {
        case ACCEPTED:
            accepted++;
            if (runs != 1 || comps != 1)
                check_fail_(__FILE__, __LINE__, "accepted job %llu ran %u times, completed %u",
                            (unsigned long long)id, runs, comps);
            break;
        case REFUSED:
            refused++;
            if (runs != 0 || comps != 0)
                check_fail_(__FILE__, __LINE__, "refused job %llu ran %u times, completed %u",
                            (unsigned long long)id, runs, comps);
            break;
        default:
            if (runs != 0 || comps != 0)
                check_fail_(__FILE__, __LINE__, "job %llu never submitted but ran",
                            (unsigned long long)id);
            break;
        }
    }
    printf("    accepted %ld, refused %ld, calls with a partial acceptance %ld\n", accepted,
           refused, partial);
    CHECK_GT(accepted, 0);
    CHECK_EQ((long)g_runs.marked, accepted);
    CHECK_EQ(g_runs.duplicates, 0);
    CHECK_EQ(done.duplicates, 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    free(g_outcome);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

/* ---- from a worker ---- */

static veloq_cq *g_inner_cq;

static int64_t task_submit_batch(veloq_ctx *ctx, void *arg) {
    veloq_job jobs[BATCH];
    (void)arg;
    fill(jobs, 0, BATCH);
    return veloq_spawn_balanced_batch(veloq_ctx_runtime(ctx), jobs, BATCH, g_inner_cq);
}

static void a_worker_callback_may_submit_a_batch(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cqe out[1];
    check_tally done;
    veloq_cq *cq;

    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    g_inner_cq = vt_cq(rt, 8);
    REQUIRE(cq && g_inner_cq);
    REQUIRE(check_tally_init(&g_runs, BATCH));
    REQUIRE(check_tally_init(&done, BATCH));
    CHECK_EQ(veloq_spawn_to(rt, 0, task_submit_batch, NULL, cq, 1), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 1, 1, VT_REAP_DEADLINE_NS), 1);
    CHECK_EQ(out[0].res, BATCH);
    CHECK_EQ(vt_reap(g_inner_cq, BATCH, on_cqe_check_res, &done), BATCH);
    CHECK_TALLY_EXACT(&g_runs);
    CHECK_TALLY_EXACT(&done);
    CHECK_EQ(veloq_cq_free(cq), 0);
    CHECK_EQ(veloq_cq_free(g_inner_cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&g_runs);
    check_tally_free(&done);
}

int main(void) {
    check_init("test_batch", 300);
    RUN_CASE(four_host_threads_submit_batches_every_job_runs_and_completes_once);
    RUN_CASE(a_small_batch_runs_in_order_on_one_worker);
    RUN_CASE(the_plain_form_deals_a_large_batch_to_every_worker);
    RUN_CASE(the_largest_batch_is_accepted_whole_in_many_chunks);
    RUN_CASE(bad_input_is_einval_and_accepts_nothing);
    RUN_CASE(shutdown_while_batches_arrive_every_job_ran_once_or_was_refused);
    RUN_CASE(a_worker_callback_may_submit_a_batch);
    return check_summary();
}
