// Second translation unit of the C++ test: more cases, and the same templates as main.
#include "test_cpp.hpp"

#include <memory>
#include <sched.h>
#include <string>

std::int64_t spawn_plain_function_in_other_tu(veloq::Runtime &rt, veloq::CompletionQueue &cq) {
    rt.spawn(&plain_task, cq, 2); // trampoline<int64_t (*)()>, also instantiated in main
    auto got = cq.wait(1, 1, std::chrono::seconds(60));
    return got.size() == 1 ? got[0].res : -1;
}

// A move-only callable (captures a unique_ptr) is boxed by moving.
static void move_only_callable_is_boxed_and_run(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 8);
    auto p = std::make_unique<std::int64_t>(99);
    rt.spawn_balanced([p = std::move(p)]() { return *p + 1; }, cq, 5);
    auto got = cq.wait(4, 1, std::chrono::seconds(60));
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].user_data, 5);
    CHECK_EQ(got[0].res, 100);
}

// Inside a callback, RuntimeRef(ctx) spawns onto the same runtime.
static void runtime_ref_from_ctx_spawns_from_inside_a_callback(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 8);
    veloq_cq *raw = cq.get();
    rt.spawn_to(0, [raw](veloq_ctx *ctx) -> std::int64_t {
        veloq::RuntimeRef here(ctx);
        here.spawn_to(1, [](veloq_ctx *c) { return std::int64_t(veloq_ctx_worker(c)); }, raw, 11);
        return here.workers();
    }, cq, 10);
    int seen = 0;
    while (seen < 2) {
        auto got = cq.wait(4, 1, std::chrono::seconds(60));
        REQUIRE(!got.empty());
        for (const veloq_cqe &e : got) {
            if (e.user_data == 10)
                CHECK_EQ(e.res, 2);
            else if (e.user_data == 11)
                CHECK_EQ(e.res, 1); // ran on worker 1
            else
                CHECK(false);
            seen++;
        }
    }
}

// Calls from a throwing setter leave the builder usable.
static void builder_rejects_bad_options_with_error(void) {
    veloq::Runtime::Builder b = veloq::Runtime::builder();
    b.workers(1);
    try {
        b.mesh_capacity(0);
        CHECK(!"mesh_capacity(0) did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
        CHECK(std::string(e.what()).find("veloq_builder_mesh_capacity") != std::string::npos);
        CHECK(std::string(e.what()).find(veloq_strerror(-EINVAL)) != std::string::npos);
    }
    veloq::Runtime rt = b.pin_workers(false).ring_entries(64).budget(32).build();
    CHECK_EQ(rt.workers(), 1);
}

// Builder::sched_batch: workers under SCHED_BATCH by default and with sched_batch(), under
// SCHED_OTHER with sched_batch(false) (this thread runs under SCHED_OTHER).
static void builder_sched_batch_sets_the_workers_policy(void) {
    CHECK_EQ(sched_getscheduler(0), SCHED_OTHER);
    const auto batch = static_cast<std::uint64_t>(SCHED_BATCH);
    {
        veloq::Runtime::Builder b = veloq::Runtime::builder();
        veloq::Runtime rt = b.workers(1).build();
        CHECK_EQ(rt.stats(0).sched_policy, batch);
    }
    {
        veloq::Runtime::Builder b = veloq::Runtime::builder();
        veloq::Runtime rt = b.workers(1).sched_batch().build();
        CHECK_EQ(rt.stats(0).sched_policy, batch);
    }
    {
        veloq::Runtime::Builder b = veloq::Runtime::builder();
        veloq::Runtime rt = b.workers(1).sched_batch(false).build();
        CHECK_EQ(rt.stats(0).sched_policy, static_cast<std::uint64_t>(SCHED_OTHER));
    }
}

// Once every spawned task has run (shutdown finished), the tasks started by source add
// up to the tasks spawned, over all workers; stats() sets size to the whole struct.
static void stats_tasks_started_add_up_to_tasks_spawned(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    const std::uint64_t rounds = 50;
    {
        veloq::CompletionQueue cq(rt, 512);
        for (std::uint64_t i = 0; i < rounds; i++) {
            rt.spawn([] {}, cq, 0);
            rt.spawn_balanced([] {}, cq, 0);
            rt.spawn_to(static_cast<std::uint32_t>(i % 2), [] {}, cq, 0);
            rt.spawn_named("stats", veloq::worker_any, [] {}, cq, 0);
            rt.spawn_named("stats", static_cast<std::int32_t>(i % 2), [](veloq_ctx *ctx) {
                veloq::RuntimeRef(ctx).spawn_balanced([] {}); // from a worker
            }, cq, 0);
        }
        std::size_t seen = 0;
        while (seen < rounds * 5) {
            auto got = cq.wait(256, 1, std::chrono::seconds(60));
            REQUIRE(!got.empty());
            seen += got.size();
        }
    }
    REQUIRE(rt.shutdown());
    std::uint64_t spawned = 0, started = 0;
    for (std::uint32_t w = 0; w < rt.workers(); w++) {
        veloq_worker_stats s = rt.stats(w);
        CHECK_EQ(s.size, sizeof(veloq_worker_stats));
        spawned += s.tasks_spawned;
        started += s.tasks_local + s.tasks_mesh + s.tasks_inbox + s.tasks_injector +
                   s.tasks_stolen;
    }
    CHECK_EQ(spawned, rounds * 6);
    CHECK_EQ(started, spawned);
    try {
        (void)rt.stats(rt.workers());
        CHECK(!"stats of a worker out of range did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
}

// A Runtime destroyed inside one of its own blocking jobs lets go of the runtime, which
// the library refuses to free there: it goes on running, and the host frees it.
static void runtime_destroyed_on_its_own_thread_lets_go_and_runs_on(void) {
    auto owner = std::make_unique<veloq::Runtime>(veloq::Runtime::builder().workers(1).build());
    veloq_runtime *raw = owner->get();
    CHECK_EQ(::veloq_runtime_is_own_thread(raw), 0);
    veloq::CompletionQueue cq(veloq::RuntimeRef(raw), 8);
    owner->spawn_blocking([&owner, raw]() -> std::int64_t {
        int own = ::veloq_runtime_is_own_thread(raw);
        owner.reset(); // refused by the library: must neither free nor hang
        return own;
    }, cq, 1);
    auto got = cq.wait(1, 1, std::chrono::seconds(60));
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].res, 1);
    CHECK(owner == nullptr);
    // Still running: a spawn through the raw handle completes.
    veloq::RuntimeRef(raw).spawn([] { return std::int64_t(5); }, cq, 2);
    got = cq.wait(1, 1, std::chrono::seconds(60));
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].res, 5);
    cq.close();
    ::veloq_runtime_free(raw);
}

void run_other_tu_cases() {
    RUN_CASE(runtime_destroyed_on_its_own_thread_lets_go_and_runs_on);
    RUN_CASE(move_only_callable_is_boxed_and_run);
    RUN_CASE(runtime_ref_from_ctx_spawns_from_inside_a_callback);
    RUN_CASE(builder_rejects_bad_options_with_error);
    RUN_CASE(builder_sched_batch_sets_the_workers_policy);
    RUN_CASE(stats_tasks_started_add_up_to_tasks_spawned);
}
