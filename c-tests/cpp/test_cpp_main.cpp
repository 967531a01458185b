// The C++ wrapper: RAII, moves, spawning any callable, exceptions turned into error
// completions, refusals turned into veloq::Error. Two translation units (this one and
// test_cpp_other.cpp) both include veloq.hpp.
#include "test_cpp.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;

static std::vector<veloq_cqe> reap(veloq::CompletionQueue &cq, std::size_t n) {
    std::vector<veloq_cqe> all;
    while (all.size() < n) {
        auto got = cq.wait(64, 1, 60s);
        if (got.empty()) {
            CHECK(!"completions lost");
            break;
        }
        all.insert(all.end(), got.begin(), got.end());
    }
    return all;
}

// Leaving a scope shuts the runtime down: tasks accepted before have all run.
static void runtime_destructor_runs_every_accepted_task(void) {
    std::atomic<long> ran{0};
    {
        veloq::Runtime rt;
        CHECK_GE(rt.workers(), 1);
        for (int i = 0; i < 1000; i++)
            rt.spawn([&ran] { ran++; });
    }
    CHECK_EQ(ran.load(), 1000);
}

static void runtime_and_queue_move_their_handles(void) {
    veloq::Runtime a = veloq::Runtime::builder().workers(2).build();
    veloq_runtime *raw = a.get();
    REQUIRE(raw != nullptr);

    veloq::Runtime b(std::move(a));
    CHECK(a.get() == nullptr);
    CHECK(!a);
    CHECK(b.get() == raw);

    veloq::Runtime c = veloq::Runtime::builder().workers(1).build();
    c = std::move(b); // c's old runtime is freed here
    CHECK(c.get() == raw);
    CHECK(b.get() == nullptr);
    CHECK_EQ(c.workers(), 2);
    veloq::Runtime &alias = c;
    c = std::move(alias); // self-move keeps it
    CHECK(c.get() == raw);

    veloq::CompletionQueue q1(c, 8);
    veloq_cq *rq = q1.get();
    veloq::CompletionQueue q2(std::move(q1));
    CHECK(q1.get() == nullptr);
    CHECK(q2.get() == rq);
    veloq::CompletionQueue q3(c, 8);
    q3 = std::move(q2);
    CHECK(q3.get() == rq);
    c.spawn_balanced([] { return std::int64_t(5); }, q3, 1);
    auto got = reap(q3, 1);
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].res, 5);

    // A moved-from runtime refuses work with an Error, it does not crash.
    try {
        b.spawn([] {});
        CHECK(!"spawn on a moved-from runtime did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
}

static std::int64_t free_function(veloq_ctx *ctx) { return 100 + veloq_ctx_worker(ctx); }

struct Functor {
    std::int64_t operator()(veloq_ctx *) const { return 77; }
};

// Lambdas with and without ctx, function pointers, functors, std::function, void results.
static void every_kind_of_callable_runs_with_every_spawn(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 4);
    int captured = 41;
    std::function<std::int64_t()> stdfn = [] { return std::int64_t(-3); };

    rt.spawn([captured] { return std::int64_t(captured + 1); }, cq, 1);
    rt.spawn_balanced([&captured](veloq_ctx *ctx) {
        return std::int64_t(captured) + (veloq_ctx_runtime(ctx) ? 1000 : 0);
    }, cq, 2);
    rt.spawn_to(1, &free_function, cq, 3);
    rt.spawn_to(0, Functor{}, cq, 4);
    rt.spawn(stdfn, cq, 5);
    rt.spawn_balanced([] {}, cq, 6);
    rt.spawn_to(1, [](veloq_ctx *ctx) { return veloq_ctx_worker(ctx); }, cq, 7);

    std::int64_t res[8] = {0};
    int seen[8] = {0};
    for (const veloq_cqe &e : reap(cq, 7)) {
        REQUIRE(e.user_data >= 1 && e.user_data <= 7);
        res[e.user_data] = e.res;
        seen[e.user_data]++;
    }
    for (int i = 1; i <= 7; i++)
        CHECK_EQ(seen[i], 1);
    CHECK_EQ(res[1], 42);
    CHECK_EQ(res[2], 1041);
    CHECK_EQ(res[3], 101);
    CHECK_EQ(res[4], 77);
    CHECK_EQ(res[5], -3);
    CHECK_EQ(res[6], 0);
    CHECK_EQ(res[7], 1);
}

// Each box is freed after its callable ran: no Tracked instance outlives the runtime.
static void boxed_callables_are_freed_after_they_run(void) {
    {
        veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
        Tracked t;
        for (int i = 0; i < 500; i++) {
            rt.spawn([t] { return std::int64_t(0); });
            rt.spawn_balanced([t] {});
        }
        rt.shutdown();
        CHECK_EQ(tracked_live(), 1); // only `t` itself
    }
    CHECK_EQ(tracked_live(), 0);
}

// A throwing callable completes with an error code; nothing crosses into the library.
static void throwing_callable_completes_with_an_error_code(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 8);
    rt.spawn([]() -> std::int64_t { throw std::runtime_error("boom"); }, cq, 1);
    rt.spawn_balanced([](veloq_ctx *) -> std::int64_t { throw 42; }, cq, 2);
    rt.spawn_to(1, []() -> std::int64_t { throw veloq::Error(-EIO, "inside"); }, cq, 3);
    rt.spawn([] { return std::int64_t(9); }, cq, 4); // the runtime goes on
    std::int64_t res[5] = {0};
    for (const veloq_cqe &e : reap(cq, 4))
        if (e.user_data >= 1 && e.user_data <= 4)
            res[e.user_data] = e.res;
    CHECK_EQ(res[1], VELOQ_EPANIC);
    CHECK_EQ(res[2], VELOQ_EPANIC);
    CHECK_EQ(res[3], -EIO);
    CHECK_EQ(res[4], 9);
}

// Refused: spawn throws Error (the callable is destroyed, never run); try_spawn returns it.
static void refused_spawn_throws_or_returns_the_errno_and_frees_the_callable(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    std::atomic<int> ran{0};
    CHECK(rt.shutdown());
    {
        Tracked t;
        try {
            rt.spawn([t, &ran] { ran++; });
            CHECK(!"spawn after shutdown did not throw");
        } catch (const veloq::Error &e) {
            CHECK_EQ(e.code(), -ESHUTDOWN);
            CHECK(std::string(e.what()).find("veloq_spawn") != std::string::npos);
        }
        CHECK_EQ(rt.try_spawn_balanced([t, &ran] { ran++; }), -ESHUTDOWN);
        CHECK_EQ(rt.try_spawn_to(0, [t, &ran] { ran++; }), -ESHUTDOWN);
        CHECK_EQ(tracked_live(), 1);
    }
    // A bad worker index is refused the same way, before shutdown too.
    veloq::Runtime live = veloq::Runtime::builder().workers(2).build();
    CHECK_EQ(live.try_spawn_to(2, [&ran] { ran++; }), -EINVAL);
    try {
        live.spawn_to(99, [&ran] { ran++; });
        CHECK(!"spawn_to(99) did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
    live.shutdown();
    CHECK_EQ(ran.load(), 0);
    CHECK_EQ(tracked_live(), 0);
}

static std::int64_t c_job_return_arg(veloq_ctx *, void *arg) {
    return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(arg));
}

static void batches_of_c_jobs_complete_once_or_throw(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 16);
    std::vector<veloq_job> jobs(40);
    for (std::uint32_t i = 0; i < 40; i++)
        jobs[i] = veloq_job{c_job_return_arg, reinterpret_cast<void *>(std::uintptr_t{i}), i};
    CHECK_EQ(rt.spawn_batch(jobs.data(), 20, cq.get()), 20u);
    CHECK_EQ(rt.spawn_balanced_batch(jobs.data() + 20, 20, cq.get()), 20u);
    std::vector<int> seen(40, 0);
    for (const veloq_cqe &e : reap(cq, 40)) {
        CHECK_EQ(e.res, static_cast<std::int64_t>(e.user_data));
        if (e.user_data < 40)
            seen[e.user_data]++;
    }
    for (int n : seen)
        CHECK_EQ(n, 1);
    try {
        rt.spawn_batch(jobs.data(), 0, cq.get());
        CHECK(!"an empty batch did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
    CHECK(rt.shutdown());
    try {
        rt.spawn_balanced_batch(jobs.data(), 40, cq.get());
        CHECK(!"a batch after shutdown did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -ESHUTDOWN);
    }
}

static void completion_queue_poll_wait_fd_post_close(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 4);
    CHECK_GE(cq.fd(), 0);
    CHECK(cq.poll().empty());
    CHECK(cq.wait(8, 1, 1ms).empty()); // timeout: empty, not an exception
    for (std::uint64_t i = 0; i < 6; i++)
        cq.post(i, -static_cast<std::int64_t>(i));
    auto first = cq.poll(4);
    REQUIRE(first.size() == 4);
    CHECK_EQ(first[0].user_data, 0);
    CHECK_EQ(first[3].res, -3);
    veloq_cqe raw[4];
    CHECK_EQ(cq.poll_into(raw, 4), 2);
    CHECK_EQ(raw[1].user_data, 5);

    // close() while a completion is owed: Error(-EBUSY), the queue stays usable.
    std::atomic<bool> go{false};
    rt.spawn_to(0, [&go] {
        while (!go.load())
            check_sleep_ms(1);
        return std::int64_t(1);
    }, cq, 50);
    try {
        cq.close();
        CHECK(!"close with an owed completion did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EBUSY);
    }
    CHECK(cq.get() != nullptr);
    go = true;
    auto got = cq.wait(4, 1, 60s);
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].user_data, 50);
    try {
        cq.close(); // the completion arrived: nothing is owed any more
        CHECK(cq.get() == nullptr);
    } catch (const veloq::Error &e) {
        check_fail_(__FILE__, __LINE__, "close() after the owed completion arrived: %s", e.what());
    }
}

// The destructor of a queue that is still owed completions waits for them.
static void queue_destructor_waits_for_owed_completions(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    std::atomic<int> ran{0};
    {
        veloq::CompletionQueue cq(rt, 2);
        for (int i = 0; i < 100; i++)
            rt.spawn_balanced([&ran] { return std::int64_t(ran++); }, cq, std::uint64_t(i));
    }
    CHECK_EQ(ran.load(), 100);
}

static void shutdown_with_a_limit_reports_timeout(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    std::atomic<bool> go{false}, started{false};
    rt.spawn([&] {
        started = true;
        while (!go.load())
            check_sleep_ms(1);
    });
    while (!started.load())
        check_sleep_ms(1);
    CHECK(!rt.shutdown(1ms)); // false: timed out
    go = true;
    CHECK(rt.shutdown());
}

static void same_template_in_both_translation_units(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    veloq::CompletionQueue cq(rt, 4);
    rt.spawn(&plain_task, cq, 1); // trampoline<int64_t (*)()>, as in the other unit
    auto got = reap(cq, 1);
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].res, 1234);
    CHECK_EQ(spawn_plain_function_in_other_tu(rt, cq), 1234);
}

static void version_and_strerror(void) {
    CHECK_EQ(veloq::version(), veloq_version());
    CHECK(veloq::strerror(VELOQ_EPANIC) == veloq_strerror(VELOQ_EPANIC));
}

// ---- I/O through veloq::Io lambdas


static void io_lambdas_chain_on_the_worker_and_are_freed(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_cq *q = cq.get();
    rt.spawn_to(1, [q](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        auto owned = std::make_unique<int>(5); // move-only capture
        return io.nop([q, owned = std::move(owned), t = Tracked()](veloq::Io io2, std::int64_t res,
                                                                  std::uint32_t flags) {
            if (res != 0 || flags != 0 || io2.worker() != 1) {
                veloq_cq_post(q, 99, res);
                return;
            }
            std::int64_t id = io2.timeout(1ms, [q, v = *owned](std::int64_t r) {
                veloq_cq_post(q, 1, r == -ETIME ? v : -1);
            });
            if (id <= 0)
                veloq_cq_post(q, 98, id);
        });
    }, cq, 0);
    auto got = reap(cq, 2);
    for (const veloq_cqe &e : got) {
        if (e.user_data == 0)
            CHECK_GT(e.res, 0); // the nop's op id
        else {
            CHECK_EQ(e.user_data, 1);
            CHECK_EQ(e.res, 5);
        }
    }
    rt.shutdown();
    CHECK_EQ(tracked_live(), 0);
}

static void io_exceptions_never_cross_and_refusals_free_the_callable(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_cq *q = cq.get();
    rt.spawn_to(0, [q](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        io.nop([q, t = Tracked()](std::int64_t) {
            veloq_cq_post(q, 1, 0);
            throw std::runtime_error("thrown inside an I/O callable");
        });
        // Refused (fd < 0): returns -EINVAL, the callable is destroyed unrun.
        return io.read(-1, nullptr, 0, 0, [t = Tracked()](std::int64_t) {});
    }, cq, 0);
    auto got = reap(cq, 2);
    for (const veloq_cqe &e : got)
        if (e.user_data == 0)
            CHECK_EQ(e.res, -EINVAL);
    rt.shutdown();
    CHECK_EQ(tracked_live(), 0);
}

// File calls through veloq::Io: fallocate, then statx of the descriptor, then a pool
// buffer written and read back with write_fixed / read_fixed.
static void io_file_calls_allocate_stat_and_move_pool_buffers(void) {
    char path[] = "/tmp/veloq-cpp-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    unlink(path);
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_cq *q = cq.get();
    static struct statx stx;
    std::memset(&stx, 0, sizeof stx);
    rt.spawn_to(0, [q, fd](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        return io.fallocate(fd, 0, 0, 8192, [q, fd](veloq::Io io2, std::int64_t res, std::uint32_t) {
            if (res != 0) {
                veloq_cq_post(q, 1, res);
                return;
            }
            std::int64_t id = io2.statx(fd, "", AT_EMPTY_PATH, STATX_SIZE, &stx,
                                        [q](std::int64_t r) {
                                            veloq_cq_post(q, 1, r < 0 ? r : (std::int64_t)stx.stx_size);
                                        });
            if (id <= 0)
                veloq_cq_post(q, 1, id);
        });
    }, cq, 0);
    rt.spawn_to(0, [q, fd](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        veloq_buf *b = nullptr;
        int rc = veloq_buf_alloc(ctx, 4096, &b);
        if (rc != 0)
            return (std::int64_t)rc;
        std::memset(veloq_buf_data(b), 'v', 4096);
        return io.write_fixed(fd, b, 0, 4096, 4096, [q, fd, b](veloq::Io io2, std::int64_t w, std::uint32_t) {
            if (w != 4096) {
                veloq_buf_free(b);
                veloq_cq_post(q, 2, w < 0 ? w : -1);
                return;
            }
            std::memset(veloq_buf_data(b), 0, 4096);
            std::int64_t id = io2.read_fixed(fd, b, 1024, 16, 4100, [q, b](std::int64_t r) {
                const char *d = static_cast<const char *>(veloq_buf_data(b));
                bool ok = r == 16 && d[1024] == 'v' && d[1039] == 'v' && d[1040] == 0;
                veloq_buf_free(b);
                veloq_cq_post(q, 2, ok ? 0 : -1);
            });
            if (id <= 0) {
                veloq_buf_free(b);
                veloq_cq_post(q, 2, id);
            }
        });
    }, cq, 0);
    auto got = reap(cq, 4);
    for (const veloq_cqe &e : got) {
        if (e.user_data == 0)
            CHECK_GT(e.res, 0); // the first calls' op ids
        else if (e.user_data == 1)
            CHECK_EQ(e.res, 8192);
        else
            CHECK_EQ(e.res, 0);
    }
    rt.shutdown();
    close(fd);
}

static void io_multishot_accept_runs_per_connection_then_frees(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_cq *q = cq.get();
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    int l = veloq::tcp_listen(reinterpret_cast<const sockaddr *>(&a), sizeof a, 64);
    REQUIRE(l >= 0);
    REQUIRE(getsockname(l, reinterpret_cast<sockaddr *>(&a), &alen) == 0);
    // The port is taken now: a second listener without VELOQ_BIND_REUSEPORT is refused.
    try {
        ::close(veloq::tcp_listen(reinterpret_cast<const sockaddr *>(&a), sizeof a));
        CHECK(!"tcp_listen on a taken port did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EADDRINUSE);
    }
    int u = ::veloq_udp_bind(reinterpret_cast<const sockaddr *>(&a), sizeof a, 0);
    CHECK(u >= 0); // UDP ports are their own namespace
    if (u >= 0)
        ::close(u);
    std::atomic<int> accepted{0};
    rt.spawn_to(0, [q, l, &accepted](veloq_ctx *ctx) {
        return veloq::Io(ctx).accept(l, true, [q, &accepted, t = Tracked()](std::int64_t fd,
                                                                        std::uint32_t flags) {
            if (fd >= 0) {
                ::close(static_cast<int>(fd));
                accepted++;
            }
            if (!(flags & VELOQ_CQE_F_MORE))
                veloq_cq_post(q, 2, fd);
        });
    }, cq, 0);
    auto first = reap(cq, 1);
    REQUIRE(first.size() == 1 && first[0].res > 0);
    std::int64_t id = first[0].res;
    int clients[10];
    for (int &c : clients) {
        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK_EQ(connect(c, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
    }
    for (int i = 0; i < 6000 && accepted.load() < 10; i++)
        check_sleep_ms(1);
    CHECK_EQ(accepted.load(), 10);
    rt.spawn_to(0, [id](veloq_ctx *ctx) { return veloq::Io(ctx).cancel(id); }, cq, 3);
    auto rest = reap(cq, 2);
    for (const veloq_cqe &e : rest)
        CHECK_EQ(e.res, e.user_data == 3 ? 0 : -ECANCELED);
    // The callable posted its last entry from inside its final call; the worker frees
    // it right after that call returns, which may be a moment after we reaped.
    for (int i = 0; i < 5000 && tracked_live() != 0; i++)
        check_sleep_ms(1);
    CHECK_EQ(tracked_live(), 0);
    for (int c : clients)
        ::close(c);
    ::close(l);
}

static void io_recv_multishot_into_a_buffer_ring_recycles_and_frees(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(1).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_cq *q = cq.get();
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    struct State {
        std::uint16_t group = 0;
        std::string got;
        int bad = 0;
        int free_rc = -1;
    } st;
    int fd = sv[1];
    rt.spawn_to(0, [q, fd, &st](veloq_ctx *ctx) -> std::int64_t {
        veloq::Io io(ctx);
        int rc = io.buf_ring_new(4, 16, st.group);
        if (rc != 0)
            return rc;
        return io.recv_multishot(fd, st.group, 0, [q, &st, t = Tracked()](
                                                       veloq::Io io, std::int64_t res,
                                                       std::uint32_t flags) {
            if (res > 0) {
                void *data = nullptr;
                int id = io.buf_ring_take(st.group, flags, data);
                if (id < 0 || !(flags & VELOQ_CQE_F_BUFFER)) {
                    st.bad++;
                } else {
                    st.got.append(static_cast<const char *>(data), static_cast<size_t>(res));
                    if (io.buf_ring_recycle(st.group, static_cast<std::uint16_t>(id)) != 0)
                        st.bad++;
                }
                veloq_cq_post(q, 3, res); // recycled: the host may send the next chunk
            }
            if (!(flags & VELOQ_CQE_F_MORE)) {
                st.free_rc = io.buf_ring_free(st.group);
                veloq_cq_post(q, 2, res);
            }
        });
    }, cq, 1);
    auto first = reap(cq, 1);
    REQUIRE(first.size() == 1 && first[0].res > 0);
    // 100 bytes in 10 chunks through 4 buffers of 16: only works when they are recycled.
    // Each chunk is sent once the previous one came back (not after a pause, which a busy
    // worker may outlast: the ring would run dry and end the receive with -ENOBUFS).
    std::string msg;
    for (int i = 0; i < 100; i++)
        msg.push_back(static_cast<char>('a' + i % 26));
    std::int64_t received = 0;
    for (size_t off = 0; off < msg.size(); off += 10) {
        CHECK_EQ(::write(sv[0], msg.data() + off, 10), 10);
        while (received < static_cast<std::int64_t>(off + 10)) {
            auto got = reap(cq, 1);
            REQUIRE(got.size() == 1 && got[0].user_data == 3);
            received += got[0].res;
        }
    }
    CHECK_EQ(received, 100);
    ::close(sv[0]);
    auto last = reap(cq, 1);
    REQUIRE(last.size() == 1);
    CHECK_EQ(last[0].user_data, 2);
    CHECK_EQ(last[0].res, 0);
    CHECK(st.got == msg);
    CHECK_EQ(st.bad, 0);
    CHECK_EQ(st.free_rc, 0);
    rt.shutdown();
    CHECK_EQ(tracked_live(), 0);
    ::close(sv[1]);
}

static void host_submit_io_posts_to_the_queue_or_throws(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 64);
    veloq_sqe sqe{};
    sqe.opcode = VELOQ_OP_NOP;
    rt.submit_io(sqe, cq, 11, 1);
    auto got = reap(cq, 1);
    REQUIRE(got.size() == 1);
    CHECK_EQ(got[0].user_data, 11);
    CHECK_EQ(got[0].res, 0);
    CHECK_EQ(got[0].worker, 1);
    sqe.opcode = 250;
    int code = 0;
    try {
        rt.submit_io(sqe, cq, 12);
    } catch (const veloq::Error &e) {
        code = e.code();
    }
    CHECK_EQ(code, -EINVAL);
    CHECK_EQ(rt.try_submit_io(sqe, cq.get(), 12), -EINVAL);
    // From inside a callback: a timer, then a timer-less sqe with a deadline that passes.
    static char never[8];
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    veloq_cq *q = cq.get();
    int rfd = fds[0];
    rt.spawn_to(0, [q, rfd](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        veloq_sqe s{};
        s.opcode = VELOQ_OP_RECV;
        s.fd = rfd;
        s.addr = reinterpret_cast<std::uintptr_t>(never);
        s.len = sizeof never;
        s.timeout_ns = 5'000'000;
        return io.submit(s, [q](std::int64_t res) { veloq_cq_post(q, 13, res); });
    }, cq, 14);
    got = reap(cq, 2);
    for (const veloq_cqe &e : got) {
        if (e.user_data == 14)
            CHECK_GT(e.res, 0); // the op id
        else {
            CHECK_EQ(e.user_data, 13);
            CHECK_EQ(e.res, -ECANCELED);
        }
    }
    close(fds[0]);
    close(fds[1]);
}

// Io::flush (veloq_ctx_flush): an sqe with VELOQ_SQE_SUBMIT_NOW is with the kernel once
// submit returns, so flush() finds nothing left; a plain one waits for the worker's batch,
// which flush() hands over. Both receive their bytes.
static void io_flush_and_submit_now_hand_operations_over_at_once(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 16);
    veloq_cq *q = cq.get();
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    int rfd = fds[0];
    std::vector<veloq_cqe> got;
    static char got_now[4], got_plain[4];
    REQUIRE(write(fds[1], "abcdefgh", 8) == 8);
    rt.spawn_to(0, [q, rfd](veloq_ctx *ctx) {
        veloq::Io io(ctx);
        veloq_sqe s{};
        s.opcode = VELOQ_OP_RECV;
        s.fd = rfd;
        s.addr = reinterpret_cast<std::uintptr_t>(got_now);
        s.len = sizeof got_now;
        s.sqe_flags = VELOQ_SQE_SUBMIT_NOW;
        if (io.submit(s, [q](std::int64_t res) { veloq_cq_post(q, 15, res); }) <= 0)
            return std::int64_t{-1};
        int left_now = io.flush();
        s.sqe_flags = 0;
        s.addr = reinterpret_cast<std::uintptr_t>(got_plain);
        if (io.submit(s, [q](std::int64_t res) { veloq_cq_post(q, 16, res); }) <= 0)
            return std::int64_t{-2};
        int left_plain = io.flush();
        return std::int64_t{left_now * 10 + left_plain};
    }, cq, 17);
    got = reap(cq, 3);
    REQUIRE(got.size() == 3);
    for (const veloq_cqe &e : got)
        CHECK_EQ(e.res, e.user_data == 17 ? 1 : 4);
    CHECK(memcmp(got_now, "abcd", 4) == 0);
    CHECK(memcmp(got_plain, "efgh", 4) == 0);
    close(fds[0]);
    close(fds[1]);
}

// ---- issue #5: blocking pool, groups, names, stalls, stats, dump ----

// A blocking lambda takes no veloq_ctx (the pool passes none), runs off the workers, and
// its result reaches the queue exactly once; its box is freed after it ran.
static void blocking_lambda_result_reaches_the_queue_once(void) {
    {
        veloq::Runtime rt = veloq::Runtime::builder()
                                .workers(2)
                                .blocking_threads(1, 4)
                                .blocking_idle_timeout(100ms)
                                .build();
        veloq::CompletionQueue cq(rt, 16);
        veloq::RuntimeRef ref = rt.ref();
        Tracked t;
        rt.spawn_blocking([t, ref, raw = cq.get()] {
            // Spawning from a pool thread is allowed: capture the runtime.
            ref.spawn_to(1, [] { return std::int64_t(3); }, raw, 31);
            return std::int64_t(77);
        }, cq, 30);
        rt.spawn_blocking([] {}, cq, 32);                              // void: 0
        rt.spawn_blocking([]() -> int { throw veloq::Error(-EIO); }, cq, 33);
        CHECK_EQ(rt.try_spawn_blocking([] { return 1; }, cq.get(), 34), 0);
        auto got = reap(cq, 5);
        REQUIRE(got.size() == 5);
        int seen[5] = {0, 0, 0, 0, 0};
        for (const veloq_cqe &e : got) {
            REQUIRE(e.user_data >= 30 && e.user_data <= 34);
            seen[e.user_data - 30]++;
            if (e.user_data == 30) {
                CHECK_EQ(e.res, 77);
                CHECK_EQ(e.worker, UINT32_MAX); // not a worker
            }
            if (e.user_data == 31)
                CHECK_EQ(e.res, 3);
            if (e.user_data == 32)
                CHECK_EQ(e.res, 0);
            if (e.user_data == 33)
                CHECK_EQ(e.res, -EIO);
            if (e.user_data == 34)
                CHECK_EQ(e.res, 1);
        }
        for (int n : seen)
            CHECK_EQ(n, 1);
        CHECK(cq.wait(8, 1, 50ms).empty()); // nothing more
        CHECK_EQ(tracked_live(), 1);        // only `t` itself: the box is gone

        // After shutdown the pool refuses: the callable is destroyed, never run.
        rt.shutdown();
        CHECK_EQ(rt.try_spawn_blocking([t] { return 1; }), -ESHUTDOWN);
        try {
            rt.spawn_blocking([t] { return 1; });
            CHECK(!"spawn_blocking after shutdown did not throw");
        } catch (const veloq::Error &e) {
            CHECK_EQ(e.code(), -ESHUTDOWN);
        }
        CHECK_EQ(tracked_live(), 1);
    }
    CHECK_EQ(tracked_live(), 0);
    try {
        veloq::Runtime::builder().blocking_threads(5, 4);
        CHECK(!"blocking_threads(min > max) did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
}

// A group of lambdas completes once, with the first negative member result; members run
// once each and their boxes are freed. A moved group keeps its handle.
static void group_of_lambdas_completes_once_with_the_first_error(void) {
    std::atomic<int> ran{0};
    {
        veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
        veloq::CompletionQueue cq(rt, 16);
        {
            veloq::Group g(rt, cq, 40);
            Tracked t;
            for (int i = 0; i < 16; i++)
                g.spawn([t, &ran](veloq_ctx *ctx) {
                    ran++;
                    return std::int64_t(veloq_ctx_worker(ctx) < 2 ? 0 : -EFAULT); // 0
                }, i % 2);
            g.spawn([&ran] { ran++; return -EIO; });
            veloq::Group moved(std::move(g));
            CHECK(!g);
            CHECK_EQ(g.try_spawn([] {}), -EINVAL); // moved-from: refused, not a crash
            moved.close();
            auto got = reap(cq, 1);
            REQUIRE(got.size() == 1);
            CHECK_EQ(got[0].user_data, 40);
            CHECK_EQ(got[0].res, -EIO);
            CHECK_EQ(ran.load(), 17);
            CHECK(cq.wait(8, 1, 50ms).empty()); // exactly one completion
            try {
                moved.close();
                CHECK(!"closing twice did not throw");
            } catch (const veloq::Error &e) {
                CHECK_EQ(e.code(), -EINVAL);
            }
        }
        CHECK_EQ(tracked_live(), 0);

        // A group left open is closed by its destructor: the completion still comes (0).
        {
            veloq::Group g(rt, cq, 41);
            g.spawn([] {}, 0);
        }
        auto got = reap(cq, 1);
        REQUIRE(got.size() == 1);
        CHECK_EQ(got[0].user_data, 41);
        CHECK_EQ(got[0].res, 0);
    }
}

// cancel(): the group completes -ECANCELED, later spawns are refused with -ECANCELED and
// their callables destroyed unrun.
static void cancelled_group_completes_with_ecanceled(void) {
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
    veloq::CompletionQueue cq(rt, 16);
    std::atomic<int> ran{0};
    {
        veloq::Group g(rt, cq, 50);
        g.spawn([&ran] { ran++; });
        while (ran.load() == 0) // started before the cancel: no member is skipped here
            std::this_thread::yield();
        g.cancel();
        g.cancel(); // again: still fine
        Tracked t;
        CHECK_EQ(g.try_spawn([t, &ran] { ran += 100; }), -ECANCELED);
        try {
            g.spawn([t, &ran] { ran += 100; });
            CHECK(!"spawn into a cancelled group did not throw");
        } catch (const veloq::Error &e) {
            CHECK_EQ(e.code(), -ECANCELED);
        }
        CHECK_EQ(tracked_live(), 1);
        g.close();
        auto got = reap(cq, 1);
        REQUIRE(got.size() == 1);
        CHECK_EQ(got[0].user_data, 50);
        CHECK_EQ(got[0].res, -ECANCELED);
    }
    CHECK_EQ(ran.load(), 1); // never the refused ones
    CHECK_EQ(tracked_live(), 0);

    // Members queued behind a busy worker when the group is cancelled never run; the
    // Group's destructor destroys their callables (the Runtime frees the rest later).
    std::atomic<bool> busy{false}, release{false};
    rt.spawn_to(0, [&] {
        busy = true;
        auto give_up = std::chrono::steady_clock::now() + 5s;
        while (!release.load() && std::chrono::steady_clock::now() < give_up)
            std::this_thread::yield();
    });
    while (!busy.load())
        std::this_thread::yield();
    {
        veloq::Group g(rt, cq, 51);
        Tracked t;
        for (int i = 0; i < 4; i++)
            g.spawn([t, &ran] { ran += 100; }, 0);
        CHECK_EQ(tracked_live(), 5);
        g.cancel();
        g.close();
        release = true;
        auto got = reap(cq, 1);
        REQUIRE(got.size() == 1);
        CHECK_EQ(got[0].user_data, 51);
        CHECK_EQ(got[0].res, -ECANCELED);
    }
    CHECK_EQ(ran.load(), 1); // skipped, not run
    CHECK_EQ(tracked_live(), 0);
}

// Reads back everything written to `fd` (a memfd).
static std::string read_back(int fd) {
    std::string text;
    char buf[4096];
    if (lseek(fd, 0, SEEK_SET) != 0)
        return text;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    return text;
}

// A task spawned with a name shows under it in the dump while it runs.
static void named_spawn_shows_in_the_dump(void) {
    std::atomic<bool> release{false};
    veloq::Runtime rt = veloq::Runtime::builder().workers(2).stall_log(false).build();
    veloq::CompletionQueue cq(rt, 16);
    std::atomic<bool> started{false};
    rt.spawn_named("cpp-named-holder", 1, [&] {
        started = true;
        auto give_up = std::chrono::steady_clock::now() + 5s;
        while (!release.load() && std::chrono::steady_clock::now() < give_up)
            std::this_thread::yield();
        return std::int64_t(9);
    }, cq, 60);
    rt.spawn_named(nullptr, veloq::worker_any, [] { return 1; }, cq, 61); // unnamed
    rt.spawn_named("b", veloq::worker_balanced, [] { return 2; }, cq, 62);
    CHECK_EQ(rt.try_spawn_named("bad", 2, [] {}), -EINVAL); // no worker 2
    CHECK_EQ(rt.try_spawn_named("bad", -3, [] {}), -EINVAL);
    while (!started.load())
        std::this_thread::yield();

    int fd = memfd_create("veloq-cpp-dump", 0);
    REQUIRE(fd >= 0);
    rt.dump(fd);
    std::string text = read_back(fd);
    CHECK(text.find("cpp-named-holder") != std::string::npos);
    close(fd);
    try {
        rt.dump(-1);
        CHECK(!"dump(-1) did not throw");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }

    release = true;
    auto got = reap(cq, 3);
    REQUIRE(got.size() == 3);
    for (const veloq_cqe &e : got) {
        if (e.user_data == 60)
            CHECK_EQ(e.res, 9);
        else
            CHECK_EQ(e.res, static_cast<std::int64_t>(e.user_data - 60));
    }
}

// The stall lambda runs on the watchdog thread for a worker spinning past a low threshold,
// with the task's name, and again when the stall ends. The Runtime (moved once) owns it.
static void stall_lambda_fires_for_a_spinning_worker(void) {
    std::atomic<int> noticed{0}, ended{0};
    std::atomic<std::uint32_t> stalled_worker{UINT32_MAX};
    std::mutex m;
    std::string name;
    veloq::Runtime moved;
    {
        veloq::Runtime rt = veloq::Runtime::builder()
                                .workers(2)
                                .stall_threshold(20ms)
                                .stall_log(false)
                                .on_stall([](const veloq_stall_report &) {}) // replaced below
                                .on_stall([&](const veloq_stall_report &r) {
                                    if (r.ended) {
                                        ended++;
                                        return;
                                    }
                                    {
                                        std::lock_guard<std::mutex> hold(m);
                                        name = r.task_name ? r.task_name : "(null)";
                                    }
                                    stalled_worker = r.worker;
                                    noticed++;
                                    throw std::runtime_error("dropped, never reaches C");
                                })
                                .build();
        moved = std::move(rt); // the handler moves with the runtime
    }
    veloq::CompletionQueue cq(moved, 4);
    moved.spawn_named("cpp-spinner", 0, [&noticed] {
        auto give_up = std::chrono::steady_clock::now() + 5s;
        while (noticed.load() == 0 && std::chrono::steady_clock::now() < give_up)
            std::this_thread::yield();
        return std::int64_t(noticed.load());
    }, cq, 70);
    auto got = reap(cq, 1);
    REQUIRE(got.size() == 1);
    CHECK_GE(got[0].res, 1); // the spinner saw the callback
    CHECK_GE(noticed.load(), 1);
    CHECK_EQ(stalled_worker.load(), 0u);
    {
        std::lock_guard<std::mutex> hold(m);
        CHECK(name == "cpp-spinner");
    }
    auto give_up = std::chrono::steady_clock::now() + 5s;
    while (ended.load() == 0 && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(1ms);
    CHECK_GE(ended.load(), 1);
    try {
        veloq::Runtime::builder().on_stall(veloq::StallHandler());
        CHECK(!"an empty stall handler was accepted");
    } catch (const veloq::Error &e) {
        CHECK_EQ(e.code(), -EINVAL);
    }
}

int main() {
    check_init("test_cpp", 120);
    RUN_CASE(runtime_destructor_runs_every_accepted_task);
    RUN_CASE(runtime_and_queue_move_their_handles);
    RUN_CASE(every_kind_of_callable_runs_with_every_spawn);
    RUN_CASE(boxed_callables_are_freed_after_they_run);
    RUN_CASE(throwing_callable_completes_with_an_error_code);
    RUN_CASE(refused_spawn_throws_or_returns_the_errno_and_frees_the_callable);
    RUN_CASE(batches_of_c_jobs_complete_once_or_throw);
    RUN_CASE(completion_queue_poll_wait_fd_post_close);
    RUN_CASE(queue_destructor_waits_for_owed_completions);
    RUN_CASE(shutdown_with_a_limit_reports_timeout);
    RUN_CASE(same_template_in_both_translation_units);
    RUN_CASE(version_and_strerror);
    RUN_CASE(io_lambdas_chain_on_the_worker_and_are_freed);
    RUN_CASE(io_exceptions_never_cross_and_refusals_free_the_callable);
    RUN_CASE(io_multishot_accept_runs_per_connection_then_frees);
    RUN_CASE(io_file_calls_allocate_stat_and_move_pool_buffers);
    RUN_CASE(io_recv_multishot_into_a_buffer_ring_recycles_and_frees);
    RUN_CASE(host_submit_io_posts_to_the_queue_or_throws);
    RUN_CASE(io_flush_and_submit_now_hand_operations_over_at_once);
    RUN_CASE(blocking_lambda_result_reaches_the_queue_once);
    RUN_CASE(group_of_lambdas_completes_once_with_the_first_error);
    RUN_CASE(cancelled_group_completes_with_ecanceled);
    RUN_CASE(named_spawn_shows_in_the_dump);
    RUN_CASE(stall_lambda_fires_for_a_spinning_worker);
    run_other_tu_cases();
    return check_summary();
}
