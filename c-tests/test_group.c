/*
 * Task groups (veloq_group_*): one completion per group, after every member and every
 * operation started from the group's callbacks completed exactly once; cancel ends
 * in-flight receives and keeps unstarted members from running; members on given workers
 * and balanced; bad input; the queue cannot be freed while the group's completion is
 * owed; shutdown with open and closed groups.
 */
#define _GNU_SOURCE
#include "vio.h"

#define GROUP_TAG 0x6709ULL

/* Waits for exactly one completion, which must be the group's; returns its res. */
static int64_t wait_group(veloq_cq *cq, uint64_t tag) {
    veloq_cqe e;
    int n = veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS);
    if (n != 1) {
        check_fail_(__FILE__, __LINE__, "no group completion (%d)", n);
        return 1;
    }
    CHECK_EQ(e.user_data, tag);
    CHECK_EQ(e.flags, 0u);
    return e.res;
}

/* Nothing more arrives (after letting stragglers land). */
static void check_no_more(veloq_cq *cq) {
    veloq_cqe e;
    check_sleep_ms(20);
    CHECK_EQ(veloq_cq_poll(cq, &e, 1), 0);
}

/* ------------------------------------------------------------------ plain members */

struct member {
    int ran;
    uint32_t worker;
    int64_t ret;
};

static int64_t member_fn(veloq_ctx *ctx, void *arg) {
    struct member *m = (struct member *)arg;
    __atomic_fetch_add(&m->ran, 1, __ATOMIC_SEQ_CST);
    m->worker = veloq_ctx_worker(ctx);
    return m->ret;
}

static void members_on_given_workers_and_balanced_complete_the_group_with_zero(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_group *g = NULL;
    struct member m[40];
    int i;
    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    memset(m, 0, sizeof m);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    for (i = 0; i < 40; i++) {
        m[i].ret = i; /* >= 0: success */
        CHECK_EQ(veloq_group_spawn(g, i < 20 ? (i % 2) : -1, member_fn, &m[i]), 0);
    }
    CHECK_EQ(veloq_group_close(g), 0);
    CHECK_EQ(wait_group(cq, GROUP_TAG), 0);
    for (i = 0; i < 40; i++) {
        CHECK_EQ(m[i].ran, 1);
        if (i < 20)
            CHECK_EQ(m[i].worker, (uint32_t)(i % 2));
    }
    check_no_more(cq);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void the_first_negative_member_result_is_the_group_result(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_group *g = NULL;
    struct member m[5];
    int i;
    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    memset(m, 0, sizeof m);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    for (i = 0; i < 5; i++) {
        m[i].ret = i == 3 ? -EIO : 1;
        CHECK_EQ(veloq_group_spawn(g, 0, member_fn, &m[i]), 0);
    }
    veloq_group_free(g); /* closes it */
    CHECK_ERR(wait_group(cq, GROUP_TAG), -EIO);
    for (i = 0; i < 5; i++)
        CHECK_EQ(m[i].ran, 1);
    check_no_more(cq);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ------------------------------------------------------------------ members with I/O */

/* A member that receives on `fd`; with `chain`, it first runs a nop whose callback starts
 * the receive (so the receive belongs to the group through the nop's callback). */
struct io_member {
    int fd;
    int chain;
    char buf[64];
    int ran;
    int nop_calls;
    int recv_calls;
    int64_t nop_res, recv_res;
    int64_t recv_id;
};

static int g_recvs_started;

static void recv_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct io_member *m = (struct io_member *)arg;
    (void)ctx;
    (void)flags;
    m->recv_calls++;
    m->recv_res = res;
}

static void start_recv(veloq_ctx *ctx, struct io_member *m) {
    m->recv_id = veloq_recv(ctx, m->fd, m->buf, sizeof m->buf, 0, recv_cb, m);
    __atomic_fetch_add(&g_recvs_started, 1, __ATOMIC_SEQ_CST);
}

static void nop_then_recv_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct io_member *m = (struct io_member *)arg;
    (void)flags;
    m->nop_calls++;
    m->nop_res = res;
    start_recv(ctx, m);
}

static int64_t io_member_fn(veloq_ctx *ctx, void *arg) {
    struct io_member *m = (struct io_member *)arg;
    m->ran++;
    if (m->chain) {
        int64_t id = veloq_nop(ctx, nop_then_recv_cb, m);
        return id > 0 ? 0 : id;
    }
    start_recv(ctx, m);
    return m->recv_id > 0 ? 0 : m->recv_id;
}

#define IO_MEMBERS 16

static int wait_recvs_started(int n) {
    int64_t start = check_now_ns();
    while (__atomic_load_n(&g_recvs_started, __ATOMIC_SEQ_CST) < n) {
        if (check_now_ns() - start > VT_REAP_DEADLINE_NS)
            return 0;
        check_sleep_ms(1);
    }
    return 1;
}

static void cancel_ends_inflight_recvs_and_everything_completes_once(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_group *g = NULL;
    static struct io_member m[IO_MEMBERS];
    int peer[IO_MEMBERS];
    int i;
    REQUIRE(rt);
    cq = vt_cq(rt, 64);
    REQUIRE(cq);
    memset(m, 0, sizeof m);
    g_recvs_started = 0;
    for (i = 0; i < IO_MEMBERS; i++) {
        REQUIRE(vio_tcp_pair(&peer[i], &m[i].fd) == 0);
        m[i].chain = i % 2;
    }
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    for (i = 0; i < IO_MEMBERS; i++)
        CHECK_EQ(veloq_group_spawn(g, i % 3 == 2 ? -1 : i % 2, io_member_fn, &m[i]), 0);
    CHECK_EQ(veloq_group_close(g), 0);
    /* Every receive is in flight and no data ever comes: only the cancel can end them. */
    REQUIRE(wait_recvs_started(IO_MEMBERS));
    check_sleep_ms(10);
    CHECK_EQ(veloq_cq_poll(cq, &(veloq_cqe){0}, 1), 0);
    CHECK_EQ(veloq_group_cancel(g), 0);
    CHECK_EQ(veloq_group_cancel(g), 0); /* idempotent */
    CHECK_ERR(wait_group(cq, GROUP_TAG), -ECANCELED);
    /* The group completed after every operation's callback ran, each exactly once. */
    for (i = 0; i < IO_MEMBERS; i++) {
        CHECK_EQ(m[i].ran, 1);
        CHECK_GT(m[i].recv_id, 0);
        CHECK_EQ(m[i].recv_calls, 1);
        CHECK_ERR(m[i].recv_res, -ECANCELED);
        CHECK_EQ(m[i].nop_calls, m[i].chain);
        if (m[i].chain)
            CHECK_EQ(m[i].nop_res, 0);
    }
    check_no_more(cq);
    for (i = 0; i < IO_MEMBERS; i++) {
        CHECK_EQ(m[i].recv_calls, 1);
        close(peer[i]);
        close(m[i].fd);
    }
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

static void the_group_waits_for_its_operations_not_only_its_members(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    veloq_group *g = NULL;
    struct io_member m;
    int peer;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&m, 0, sizeof m);
    g_recvs_started = 0;
    REQUIRE(vio_tcp_pair(&peer, &m.fd) == 0);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    CHECK_EQ(veloq_group_spawn(g, 0, io_member_fn, &m), 0);
    CHECK_EQ(veloq_group_close(g), 0);
    REQUIRE(wait_recvs_started(1));
    /* The member returned long ago; its receive still holds the group open. */
    check_sleep_ms(20);
    CHECK_EQ(veloq_cq_poll(cq, &(veloq_cqe){0}, 1), 0);
    CHECK_EQ(send(peer, "hello", 5, MSG_NOSIGNAL), 5);
    CHECK_EQ(wait_group(cq, GROUP_TAG), 0);
    CHECK_EQ(m.recv_calls, 1);
    CHECK_EQ(m.recv_res, 5);
    CHECK(memcmp(m.buf, "hello", 5) == 0);
    close(peer);
    close(m.fd);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ------------------------------------------------------------------ deadline */

struct deadline_member {
    int fd;
    char buf[8];
    int calls;
    int64_t res;
};

static void deadline_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    struct deadline_member *m = (struct deadline_member *)arg;
    (void)ctx;
    (void)flags;
    m->calls++;
    m->res = res;
}

static int64_t deadline_member_fn(veloq_ctx *ctx, void *arg) {
    struct deadline_member *m = (struct deadline_member *)arg;
    veloq_sqe s;
    int64_t id;
    memset(&s, 0, sizeof s);
    s.opcode = VELOQ_OP_RECV;
    s.fd = m->fd;
    s.addr = (uint64_t)(uintptr_t)m->buf;
    s.len = sizeof m->buf;
    s.timeout_ns = 20 * 1000 * 1000;
    id = veloq_ctx_submit(ctx, &s, deadline_cb, m);
    return id > 0 ? 0 : id;
}

/* An operation with a deadline started from a member belongs to the group like any: the
 * group completes once the deadline cancelled it. */
static void a_members_receive_with_a_deadline_ends_and_the_group_completes(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    veloq_group *g = NULL;
    struct deadline_member m;
    int peer;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&m, 0, sizeof m);
    REQUIRE(vio_tcp_pair(&peer, &m.fd) == 0);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    CHECK_EQ(veloq_group_spawn(g, 0, deadline_member_fn, &m), 0);
    CHECK_EQ(veloq_group_close(g), 0);
    CHECK_EQ(wait_group(cq, GROUP_TAG), 0);
    CHECK_EQ(m.calls, 1);
    CHECK_ERR(m.res, -ECANCELED);
    check_no_more(cq);
    close(peer);
    close(m.fd);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ------------------------------------------------------------------ cancel before start */

struct gated {
    vt_gate gate;
    veloq_group *g;
    int64_t nop_after_cancel;
    int64_t spawn_after_cancel;
};

static void unused_cb(veloq_ctx *ctx, int64_t res, uint32_t flags, void *arg) {
    (void)ctx;
    (void)res;
    (void)flags;
    __atomic_fetch_add((int *)arg, 1, __ATOMIC_SEQ_CST);
}

static int g_unused_calls;

/* Holds its worker at the gate; once let through (after the cancel), tries more work. */
static int64_t gated_member(veloq_ctx *ctx, void *arg) {
    struct gated *s = (struct gated *)arg;
    vt_gate_pass(&s->gate);
    s->nop_after_cancel = veloq_nop(ctx, unused_cb, &g_unused_calls);
    s->spawn_after_cancel = veloq_group_spawn(s->g, -1, member_fn, NULL);
    return 0;
}

static void unstarted_members_complete_ecanceled_without_running(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    struct gated s;
    struct member m[10];
    int i;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&s, 0, sizeof s);
    memset(m, 0, sizeof m);
    g_unused_calls = 0;
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &s.g) == 0);
    CHECK_EQ(veloq_group_spawn(s.g, 0, gated_member, &s), 0);
    REQUIRE(vt_gate_wait_arrived(&s.gate, 1));
    /* Worker 0 is held: these wait behind the gated member (pinned, never stolen). */
    for (i = 0; i < 10; i++)
        CHECK_EQ(veloq_group_spawn(s.g, 0, member_fn, &m[i]), 0);
    CHECK_EQ(veloq_group_cancel(s.g), 0);
    CHECK_ERR(veloq_group_spawn(s.g, 1, member_fn, &m[0]), -ECANCELED);
    CHECK_EQ(veloq_group_close(s.g), 0);
    vt_gate_open(&s.gate);
    CHECK_ERR(wait_group(cq, GROUP_TAG), -ECANCELED);
    for (i = 0; i < 10; i++)
        CHECK_EQ(m[i].ran, 0);
    /* The running member was not interrupted, but new work of the group is refused. */
    CHECK_ERR(s.nop_after_cancel, -ECANCELED);
    CHECK_ERR(s.spawn_after_cancel, -EINVAL); /* closed by then: -EINVAL comes first */
    CHECK_EQ(g_unused_calls, 0);
    check_no_more(cq);
    veloq_group_free(s.g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ------------------------------------------------------------------ input and queues */

static void bad_input_is_refused_and_changes_nothing(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_group *g = NULL;
    struct member m;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(&m, 0, sizeof m);
    CHECK_ERR(veloq_group_new(NULL, cq, 1, &g), -EINVAL);
    CHECK_ERR(veloq_group_new(rt, cq, 1, NULL), -EINVAL);
    CHECK(g == NULL);
    CHECK_ERR(veloq_group_spawn(NULL, 0, member_fn, &m), -EINVAL);
    CHECK_ERR(veloq_group_cancel(NULL), -EINVAL);
    CHECK_ERR(veloq_group_close(NULL), -EINVAL);
    veloq_group_free(NULL);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    CHECK_ERR(veloq_group_spawn(g, 0, NULL, &m), -EINVAL);
    CHECK_ERR(veloq_group_spawn(g, -2, member_fn, &m), -EINVAL);
    CHECK_ERR(veloq_group_spawn(g, 2, member_fn, &m), -EINVAL);
    CHECK_ERR(veloq_group_spawn(g, INT32_MAX, member_fn, &m), -EINVAL);
    /* None of those counted: the group completes at once when closed. */
    CHECK_EQ(veloq_group_close(g), 0);
    CHECK_EQ(wait_group(cq, GROUP_TAG), 0);
    CHECK_ERR(veloq_group_close(g), -EINVAL);
    CHECK_ERR(veloq_group_spawn(g, 0, member_fn, &m), -EINVAL);
    CHECK_EQ(veloq_group_cancel(g), 0); /* completed: nothing to do */
    CHECK_EQ(m.ran, 0);
    check_no_more(cq);
    veloq_group_free(g);
    /* A group without a queue completes silently. */
    REQUIRE(veloq_group_new(rt, NULL, 0, &g) == 0);
    CHECK_EQ(veloq_group_spawn(g, 1, member_fn, &m), 0);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
    CHECK_EQ(m.ran, 1);
}

static void cq_free_is_ebusy_until_the_group_completes(void) {
    veloq_runtime *rt = vt_runtime(1);
    veloq_cq *cq;
    veloq_group *g = NULL;
    vt_gate gate = {0, 0};
    veloq_cqe e;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    REQUIRE(veloq_group_new(rt, cq, GROUP_TAG, &g) == 0);
    CHECK_ERR(veloq_cq_free(cq), -EBUSY); /* owed from the start */
    CHECK_EQ(veloq_group_spawn(g, 0, vt_task_gate, &gate), 0);
    CHECK_EQ(veloq_group_close(g), 0);
    REQUIRE(vt_gate_wait_arrived(&gate, 1));
    CHECK_ERR(veloq_cq_free(cq), -EBUSY);
    vt_gate_open(&gate);
    REQUIRE(veloq_cq_wait(cq, &e, 1, 1, VT_REAP_DEADLINE_NS) == 1);
    CHECK_EQ(e.user_data, GROUP_TAG);
    CHECK_EQ(e.res, 0);
    CHECK_EQ(e.worker, 0u);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    /* An empty group closed from the host completes from that call. */
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    REQUIRE(veloq_group_new(rt, cq, 9, &g) == 0);
    CHECK_EQ(veloq_group_close(g), 0);
    REQUIRE(veloq_cq_poll(cq, &e, 1) == 1);
    CHECK_EQ(e.user_data, 9u);
    CHECK_EQ(e.worker, UINT32_MAX);
    veloq_group_free(g);
    CHECK_EQ(veloq_cq_free(cq), 0);
    veloq_runtime_free(rt);
}

/* ------------------------------------------------------------------ shutdown */

static void shutdown_with_open_and_closed_groups_completes_each_once(void) {
    veloq_runtime *rt = vt_runtime(2);
    veloq_cq *cq;
    veloq_group *closed_g = NULL, *open_g = NULL;
    static struct io_member m[8];
    int peer[8];
    veloq_cqe e[4];
    int i, n, seen_closed = 0, seen_open = 0;
    REQUIRE(rt);
    cq = vt_cq(rt, 8);
    REQUIRE(cq);
    memset(m, 0, sizeof m);
    g_recvs_started = 0;
    for (i = 0; i < 8; i++)
        REQUIRE(vio_tcp_pair(&peer[i], &m[i].fd) == 0);
    REQUIRE(veloq_group_new(rt, cq, 1, &closed_g) == 0);
    REQUIRE(veloq_group_new(rt, cq, 2, &open_g) == 0);
    for (i = 0; i < 8; i++)
        CHECK_EQ(veloq_group_spawn(i < 4 ? closed_g : open_g, i % 2, io_member_fn, &m[i]), 0);
    CHECK_EQ(veloq_group_close(closed_g), 0);
    REQUIRE(wait_recvs_started(8));
    CHECK_EQ(veloq_runtime_shutdown(rt, -1), 0);
    /* Shutdown cancelled every receive; the closed group completed, the open one waits. */
    for (i = 0; i < 8; i++) {
        CHECK_EQ(m[i].recv_calls, 1);
        CHECK_ERR(m[i].recv_res, -ECANCELED);
    }
    CHECK_ERR(veloq_group_spawn(open_g, 0, io_member_fn, &m[0]), -ESHUTDOWN);
    {
        veloq_group *late = NULL;
        CHECK_ERR(veloq_group_new(rt, cq, 3, &late), -ESHUTDOWN);
        CHECK(late == NULL);
    }
    veloq_runtime_free(rt);
    veloq_group_free(open_g); /* closes it: completes from here */
    veloq_group_free(closed_g);
    n = veloq_cq_poll(cq, e, 4);
    CHECK_EQ(n, 2);
    for (i = 0; i < n; i++) {
        CHECK_EQ(e[i].res, 0); /* members returned 0; nobody called cancel */
        seen_closed += e[i].user_data == 1;
        seen_open += e[i].user_data == 2;
    }
    CHECK_EQ(seen_closed, 1);
    CHECK_EQ(seen_open, 1);
    CHECK_EQ(veloq_cq_free(cq), 0);
    for (i = 0; i < 8; i++) {
        close(peer[i]);
        close(m[i].fd);
    }
}

int main(void) {
    check_init("test_group", 120);
    RUN_CASE(members_on_given_workers_and_balanced_complete_the_group_with_zero);
    RUN_CASE(the_first_negative_member_result_is_the_group_result);
    RUN_CASE(cancel_ends_inflight_recvs_and_everything_completes_once);
    RUN_CASE(the_group_waits_for_its_operations_not_only_its_members);
    RUN_CASE(a_members_receive_with_a_deadline_ends_and_the_group_completes);
    RUN_CASE(unstarted_members_complete_ecanceled_without_running);
    RUN_CASE(bad_input_is_refused_and_changes_nothing);
    RUN_CASE(cq_free_is_ebusy_until_the_group_completes);
    RUN_CASE(shutdown_with_open_and_closed_groups_completes_each_once);
    return check_summary();
}
