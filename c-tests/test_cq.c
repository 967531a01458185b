/*
 * Completion queues: never drop an entry (overflow past capacity, in order per producer),
 * poll never blocks, wait honours min and timeout, the fd is readable exactly while entries
 * wait, and free refuses while completions are still owed.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>

#include "vtest.h"

/* ---- 100,000 completions through a queue of capacity 8 ---- */

#define HOST_POSTERS 3
#define PRODUCERS (HOST_POSTERS + 1) /* + one producer posting from inside a worker */
#define TASKS_ID PRODUCERS           /* user_data >> 32 of task completions */

struct poster {
    pthread_t thread;
    veloq_cq *cq;
    uint64_t producer;
    uint64_t count;
    long errors;
};

static uint64_t tag(uint64_t producer, uint64_t seq) { return producer << 32 | seq; }

static void *poster_main(void *p) {
    struct poster *s = (struct poster *)p;
    uint64_t seq;
    for (seq = 0; seq < s->count; seq++)
        if (veloq_cq_post(s->cq, tag(s->producer, seq), (int64_t)s->producer) != 0)
            s->errors++;
    return NULL;
}

/* Runs on a worker: posts arg->count entries in sequence, as one more producer. */
static int64_t task_poster(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    poster_main(arg);
    return 0;
}

static int64_t task_id(veloq_ctx *ctx, void *arg) {
    (void)ctx;
    return (int64_t)(uintptr_t)arg;
}

struct order {
    uint64_t next[PRODUCERS]; /* next expected seq per producer */
    long out_of_order;
    check_tally tasks;
    long task_wrong_res;
    long stray;
};

static void on_ordered_cqe(const veloq_cqe *e, void *p) {
    struct order *o = (struct order *)p;
    uint64_t producer = e->user_data >> 32, seq = e->user_data & 0xffffffffu;
    if (producer < PRODUCERS) {
        if (seq != o->next[producer])
            o->out_of_order++;
        o->next[producer] = seq + 1;
    } else if (producer == TASKS_ID) {
        check_tally_mark(&o->tasks, seq);
        if (e->res != (int64_t)seq)
            o->task_wrong_res++;
    } else {
        o->stray++;
    }
}

static void capacity_8_queue_takes_100k_completions_none_lost_in_order_per_producer(void) {
    uint64_t per_poster = CHECK_SCALED(25000), worker_posts = CHECK_SCALED(10000);
    uint64_t tasks = CHECK_SCALED(15000), total, i;
    veloq_runtime *rt = vt_runtime(2);
    struct poster ps[PRODUCERS];
    struct order o;
    veloq_cq *cq;
    int p;

    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&o, 0, sizeof o);
    REQUIRE(check_tally_init(&o.tasks, tasks));
    total = HOST_POSTERS * per_poster + worker_posts + tasks;

    for (p = 0; p < PRODUCERS; p++) {
        memset(&ps[p], 0, sizeof ps[p]);
        ps[p].cq = cq;
        ps[p].producer = (uint64_t)p;
        ps[p].count = p < HOST_POSTERS ? per_poster : worker_posts;
    }
    CHECK_EQ(veloq_spawn_to(rt, 1, task_poster, &ps[HOST_POSTERS], NULL, 0), 0);
    for (p = 0; p < HOST_POSTERS; p++)
        REQUIRE(pthread_create(&ps[p].thread, NULL, poster_main, &ps[p]) == 0);
    for (i = 0; i < tasks; i++)
        CHECK_EQ(veloq_spawn_balanced(rt, task_id, (void *)(uintptr_t)i, cq, tag(TASKS_ID, i)), 0);

    CHECK_EQ(vt_reap(cq, total, on_ordered_cqe, &o), total);
    for (p = 0; p < HOST_POSTERS; p++)
        pthread_join(ps[p].thread, NULL);
    for (p = 0; p < PRODUCERS; p++) {
        CHECK_EQ(ps[p].errors, 0);
        CHECK_EQ(o.next[p], ps[p].count);
    }
    CHECK_EQ(o.out_of_order, 0);
    CHECK_EQ(o.stray, 0);
    CHECK_EQ(o.task_wrong_res, 0);
    CHECK_TALLY_EXACT(&o.tasks);
    CHECK_EQ(vt_drain_now(cq, on_ordered_cqe, &o), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&o.tasks);
}

/* ---- poll ---- */

static void poll_never_blocks_and_returns_entries_in_post_order(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cqe out[8];
    veloq_cq *cq;
    uint64_t i;
    REQUIRE(rt);
    cq = vt_cq(rt, 4);
    REQUIRE(cq);
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 0);
    for (i = 0; i < 5; i++)
        CHECK_EQ(veloq_cq_post(cq, 100 + i, -(int64_t)i), 0);
    CHECK_EQ(veloq_cq_poll(cq, out, 3), 3);
    for (i = 0; i < 3; i++) {
        CHECK_EQ(out[i].user_data, 100 + i);
        CHECK_EQ(out[i].res, -(int64_t)i);
    }
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 2);
    CHECK_EQ(out[0].user_data, 103);
    CHECK_EQ(out[1].user_data, 104);
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void capacity_1_queue_overflows_in_order(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cqe out[4];
    veloq_cq *cq;
    uint64_t i;
    int n, got = 0;
    REQUIRE(rt);
    cq = vt_cq(rt, 1);
    REQUIRE(cq);
    for (i = 0; i < 10; i++)
        CHECK_EQ(veloq_cq_post(cq, i, 0), 0);
    while ((n = veloq_cq_poll(cq, out, 4)) > 0) {
        int k;
        for (k = 0; k < n; k++)
            CHECK_EQ(out[k].user_data, (uint64_t)(got + k));
        got += n;
    }
    CHECK_EQ(n, 0);
    CHECK_EQ(got, 10);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ---- the fd ---- */

static int readable_now(int epfd) {
    struct epoll_event ev;
    return epoll_wait(epfd, &ev, 1, 0);
}

static void cq_fd_is_readable_while_entries_wait_and_not_after_drain(void) {
    veloq_runtime *rt = vt_runtime(1);
    struct epoll_event ev;
    veloq_cqe out[8];
    veloq_cq *cq;
    int fd, epfd;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    fd = veloq_cq_fd(cq);
    REQUIRE(fd >= 0);
    CHECK_EQ(veloq_cq_fd(cq), fd); /* the same fd for the queue's whole life */
    epfd = epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(epfd >= 0);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    REQUIRE(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0);

    CHECK_EQ(readable_now(epfd), 0); /* empty: not readable */
    CHECK_EQ(veloq_cq_post(cq, 1, 0), 0);
    CHECK_EQ(veloq_cq_post(cq, 2, 0), 0);
    CHECK_EQ(veloq_cq_post(cq, 3, 0), 0);
    CHECK_EQ(epoll_wait(epfd, &ev, 1, 10000), 1);
    CHECK_EQ(readable_now(epfd), 1); /* level: stays readable while nothing is taken */
    CHECK_EQ(veloq_cq_poll(cq, out, 1), 1);
    CHECK_EQ(readable_now(epfd), 1); /* two still wait */
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 2);
    CHECK_EQ(readable_now(epfd), 0); /* drained */
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 0);
    CHECK_EQ(readable_now(epfd), 0);

    /* And again, after the queue went idle; and through veloq_cq_wait too. */
    CHECK_EQ(veloq_cq_post(cq, 4, 0), 0);
    CHECK_EQ(epoll_wait(epfd, &ev, 1, 10000), 1);
    CHECK_EQ(veloq_cq_wait(cq, out, 8, 1, -1), 1);
    CHECK_EQ(readable_now(epfd), 0);

    /* poll(2) sees the same. */
    {
        struct pollfd pfd;
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        CHECK_EQ(poll(&pfd, 1, 0), 0);
        CHECK_EQ(veloq_cq_post(cq, 5, 0), 0);
        CHECK_EQ(poll(&pfd, 1, 10000), 1);
        CHECK(pfd.revents & POLLIN);
        CHECK_EQ(veloq_cq_poll(cq, out, 8), 1);
        CHECK_EQ(poll(&pfd, 1, 0), 0);
    }
    close(epfd);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

struct epoll_seen {
    check_tally done;
    long wrong_res;
};

static void on_epoll_cqe(const veloq_cqe *e, void *p) {
    struct epoll_seen *s = (struct epoll_seen *)p;
    check_tally_mark(&s->done, e->user_data);
    if (e->res != (int64_t)e->user_data)
        s->wrong_res++;
}

/* The host sleeps in its own epoll loop; task completions posted by workers wake it. */
static void host_epoll_loop_receives_every_task_completion(void) {
    size_t total = CHECK_SCALED(20000), got = 0;
    veloq_runtime *rt = vt_runtime(0);
    struct epoll_seen s;
    struct epoll_event ev;
    veloq_cq *cq;
    int epfd, idle = 0;
    uint64_t i;
    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    memset(&s, 0, sizeof s);
    REQUIRE(check_tally_init(&s.done, total));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(epfd >= 0);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    REQUIRE(epoll_ctl(epfd, EPOLL_CTL_ADD, veloq_cq_fd(cq), &ev) == 0);
    for (i = 0; i < total; i++)
        CHECK_EQ(veloq_spawn_balanced(rt, task_id, (void *)(uintptr_t)i, cq, i), 0);
    /* Bounded: 120 idle seconds in a row means completions were lost. */
    while (got < total && idle < 120) {
        int n = epoll_wait(epfd, &ev, 1, 1000);
        if (n == 0) {
            idle++;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        REQUIRE(n == 1);
        idle = 0;
        got += vt_drain_now(cq, on_epoll_cqe, &s);
    }
    CHECK_EQ(got, total);
    CHECK_TALLY_EXACT(&s.done);
    CHECK_EQ(s.wrong_res, 0);
    CHECK_EQ(readable_now(epfd), 0);
    close(epfd);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    check_tally_free(&s.done);
}

/* ---- wait ---- */

static int cqe_untouched(const veloq_cqe *out, size_t n) {
    const unsigned char *b = (const unsigned char *)out;
    size_t i;
    for (i = 0; i < n * sizeof *out; i++)
        if (b[i] != 0xAB)
            return 0;
    return 1;
}

static void wait_times_out_with_etimedout_when_nothing_comes(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cqe out[4];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(out, 0xAB, sizeof out);
    CHECK_ERR(veloq_cq_wait(cq, out, 4, 1, 1000000), -ETIMEDOUT);   /* 1 ms */
    CHECK_ERR(veloq_cq_wait(cq, out, 4, 1, 0), -ETIMEDOUT);         /* no wait at all */
    CHECK_ERR(veloq_cq_wait(cq, out, 4, 0, 1000000), -ETIMEDOUT);   /* min 0 means 1 */
    CHECK_ERR(veloq_cq_wait(cq, out, 4, 4, 1000000), -ETIMEDOUT);
    CHECK(cqe_untouched(out, 4));
    CHECK_EQ(veloq_cq_poll(cq, out, 4), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void wait_returns_at_once_when_entries_are_there(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cqe out[8];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_cq_post(cq, 1, 10), 0);
    CHECK_EQ(veloq_cq_post(cq, 2, 20), 0);
    CHECK_EQ(veloq_cq_post(cq, 3, 30), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 2, 1, -1), 2); /* at most max */
    CHECK_EQ(out[0].user_data, 1);
    CHECK_EQ(out[1].res, 20);
    CHECK_EQ(veloq_cq_wait(cq, out, 8, 1, -1), 1);
    CHECK_EQ(out[0].user_data, 3);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

struct late_poster {
    veloq_cq *cq;
    int count;
};

static void *late_poster_main(void *p) {
    struct late_poster *lp = (struct late_poster *)p;
    int i;
    for (i = 0; i < lp->count; i++) {
        check_sleep_ms(5);
        veloq_cq_post(lp->cq, (uint64_t)i, 0);
    }
    return NULL;
}

/* min = 3: wait does not return while only one or two entries are there. */
static void wait_returns_once_min_entries_are_there(void) {
    veloq_runtime *rt = vt_runtime(1);
    struct late_poster lp;
    pthread_t th;
    veloq_cqe out[8];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    lp.cq = cq;
    lp.count = 3;
    REQUIRE(pthread_create(&th, NULL, late_poster_main, &lp) == 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 8, 3, 60LL * 1000000000LL), 3);
    pthread_join(th, NULL);
    CHECK_EQ(out[0].user_data, 0);
    CHECK_EQ(out[2].user_data, 2);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* Fewer than min came before the limit: wait hands over those (-ETIMEDOUT is for none). */
static void wait_gives_what_came_when_min_is_not_reached_in_time(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cqe out[8];
    veloq_cq *cq;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_cq_post(cq, 1, 0), 0);
    CHECK_EQ(veloq_cq_post(cq, 2, 0), 0);
    CHECK_EQ(veloq_cq_wait(cq, out, 8, 3, 20 * 1000000LL), 2);
    CHECK_EQ(veloq_cq_poll(cq, out, 8), 0);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* A blocked waiter is woken by a task completion from a worker. */
static void wait_without_limit_wakes_on_task_completion(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cqe out[2];
    veloq_cq *cq;
    vt_gate gate = {0, 0};
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn_to(rt, 1, vt_task_gate, &gate, cq, 77), 0);
    if (vt_gate_wait_arrived(&gate, 1)) {
        CHECK_EQ(veloq_cq_poll(cq, out, 2), 0); /* the task has not finished */
        vt_gate_open(&gate);
        CHECK_EQ(veloq_cq_wait(cq, out, 2, 1, -1), 1);
        CHECK_EQ(out[0].user_data, 77);
        CHECK_EQ(out[0].res, 7);
        CHECK_EQ(out[0].worker, 1);
    }
    vt_gate_open(&gate);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ---- free ---- */

static void cq_free_is_ebusy_while_completions_are_owed_and_works_after(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cqe out[4];
    veloq_cq *cq;
    vt_gate gate = {0, 0};
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    CHECK_EQ(veloq_spawn(rt, vt_task_gate, &gate, cq, 5), 0);
    CHECK_ERR(veloq_cq_free(cq), -EBUSY);
    /* Refused means untouched: the queue still works. */
    CHECK_EQ(veloq_cq_post(cq, 6, 0), 0);
    CHECK_EQ(veloq_cq_poll(cq, out, 4), 1);
    CHECK_EQ(out[0].user_data, 6);
    CHECK(veloq_cq_fd(cq) >= 0);
    CHECK_ERR(veloq_cq_free(cq), -EBUSY);
    vt_gate_open(&gate);
    CHECK_EQ(veloq_cq_wait(cq, out, 4, 1, 60LL * 1000000000LL), 1);
    CHECK_EQ(out[0].user_data, 5);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* Entries that were delivered but never taken are not owed: free takes them with it. */
static void cq_free_with_entries_waiting_frees_them(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    long ran = 0;
    int i;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    for (i = 0; i < 20; i++)
        CHECK_EQ(veloq_cq_post(cq, (uint64_t)i, 0), 0);
    CHECK_EQ(veloq_spawn(rt, vt_task_count, &ran, cq, 99), 0);
    /* -EBUSY until the task's completion is delivered; then 0, with 21 entries untaken. */
    {
        int rc;
        int64_t start = check_now_ns();
        while ((rc = veloq_cq_free(cq)) == -EBUSY && check_now_ns() - start < VT_REAP_DEADLINE_NS)
            check_sleep_ms(1);
        CHECK_EQ(rc, 0);
        CHECK_EQ(__atomic_load_n(&ran, __ATOMIC_SEQ_CST), 1);
    }
    veloq_runtime_free(rt);
}

/* Several queues on one runtime: each gets its own completions only. */
static void each_queue_gets_only_its_own_completions(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *a, *b;
    veloq_cqe out[64];
    int i, n, got_a = 0, got_b = 0;
    REQUIRE(rt);
    a = vt_cq(rt, 4);
    b = vt_cq(rt, 4);
    REQUIRE(a && b);
    CHECK(veloq_cq_fd(a) != veloq_cq_fd(b));
    for (i = 0; i < 40; i++)
        CHECK_EQ(veloq_spawn_balanced(rt, task_id, (void *)(uintptr_t)i, i % 2 ? b : a,
                                      (uint64_t)i),
                 0);
    while (got_a < 20 && (n = veloq_cq_wait(a, out, 64, 1, 60LL * 1000000000LL)) > 0) {
        for (i = 0; i < n; i++)
            CHECK_EQ(out[i].user_data % 2, 0);
        got_a += n;
    }
    while (got_b < 20 && (n = veloq_cq_wait(b, out, 64, 1, 60LL * 1000000000LL)) > 0) {
        for (i = 0; i < n; i++)
            CHECK_EQ(out[i].user_data % 2, 1);
        got_b += n;
    }
    CHECK_EQ(got_a, 20);
    CHECK_EQ(got_b, 20);
    CHECK_EQ(veloq_cq_free(a), 0);
    CHECK_EQ(veloq_cq_free(b), 0);
    veloq_runtime_free(rt);
}

int main(void) {
    check_init("test_cq", 300);
    RUN_CASE(capacity_8_queue_takes_100k_completions_none_lost_in_order_per_producer);
    RUN_CASE(poll_never_blocks_and_returns_entries_in_post_order);
    RUN_CASE(capacity_1_queue_overflows_in_order);
    RUN_CASE(cq_fd_is_readable_while_entries_wait_and_not_after_drain);
    RUN_CASE(host_epoll_loop_receives_every_task_completion);
    RUN_CASE(wait_times_out_with_etimedout_when_nothing_comes);
    RUN_CASE(wait_returns_at_once_when_entries_are_there);
    RUN_CASE(wait_returns_once_min_entries_are_there);
    RUN_CASE(wait_gives_what_came_when_min_is_not_reached_in_time);
    RUN_CASE(wait_without_limit_wakes_on_task_completion);
    RUN_CASE(cq_free_is_ebusy_while_completions_are_owed_and_works_after);
    RUN_CASE(cq_free_with_entries_waiting_frees_them);
    RUN_CASE(each_queue_gets_only_its_own_completions);
    return check_summary();
}
