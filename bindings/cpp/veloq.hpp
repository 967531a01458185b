// veloq.hpp: header-only C++17 RAII wrapper over libveloq's C API (veloq.h).
//
//     #include <veloq.hpp>
//
//     veloq::Runtime rt = veloq::Runtime::builder().workers(2).build();
//     veloq::CompletionQueue cq(rt, 256);
//     int x = 41;
//     rt.spawn_balanced([&x] { return int64_t(x + 1); }, cq, /*user_data=*/7);
//     for (const veloq_cqe &e : cq.wait()) { /* e.user_data == 7, e.res == 42 */ }
//
// Compile with -std=c++17 (or later) and link like C: `pkg-config --cflags --libs veloq`.
//
// Errors. Every failing call throws veloq::Error, which carries the negative errno of the C
// call (code()) and veloq_strerror's text (what()). Two exceptions to that rule, both
// documented where they occur: CompletionQueue::wait returns an empty result on -ETIMEDOUT,
// and the try_spawn* functions return the errno instead of throwing it.
//
// Batches. spawn_batch / spawn_balanced_batch pass an array of plain C jobs (veloq_job:
// a veloq_task_fn, its arg, its user_data) straight to the C calls: no boxing, the jobs are
// C callbacks; they return how many were accepted (a prefix) and throw when none was.
//
// Spawning callables. spawn / spawn_balanced / spawn_to accept any callable `f` that can be
// called as `f(veloq_ctx *)` or as `f()` and returns something convertible to int64_t (or
// void, which completes with 0). The callable is moved (or copied) into a heap box; a
// noexcept trampoline runs it once on a worker and then destroys the box there. So:
//   * Captured references must stay valid until the callable has run.
//   * The callable may be move-only (e.g. it may capture a std::unique_ptr).
//   * No exception ever crosses into the C library: a callable that throws veloq::Error
//     completes with that error's code(); one that throws anything else completes with
//     VELOQ_EPANIC. (Its destructor must not throw: that would end the program.)
//   * If the runtime refuses the task (-ESHUTDOWN after shutdown began, -EINVAL for a bad
//     worker index, ...), spawn* destroys the box without running the callable and THROWS
//     veloq::Error with that errno; try_spawn* destroys it the same way and RETURNS the errno
//     (0 when accepted). Both may throw std::bad_alloc (or whatever the callable's move/copy
//     constructor throws) before anything is submitted.
//
// I/O. veloq::Io wraps the worker-side calls (veloq_read ... veloq_cancel) for use inside a
// task or I/O callback: `veloq::Io io(ctx); io.recv(fd, buf, len, 0, [](veloq::Io io,
// std::int64_t res, std::uint32_t flags) { ... });`. Each completion callable may take
// (veloq::Io, int64_t res, uint32_t flags), (int64_t res, uint32_t flags) or (int64_t res);
// it is moved into a heap box and run by a noexcept trampoline on the submitting worker,
// once (multishot: once per entry), then destroyed there after its final entry (the one
// without VELOQ_CQE_F_MORE). An exception escaping it is caught and dropped: nothing
// unwinds into C. The calls return what the C call returns, the op id (> 0) or a negative
// errno, and never throw except std::bad_alloc (or the callable's move constructor's
// exception) before anything is submitted; when refused the box is destroyed unrun.
// Buffers stay the caller's until the final completion. Host side, Runtime::submit_io
// routes a veloq_sqe to a worker and posts the completion to a CompletionQueue.
//
// Blocking jobs, groups, names, stalls (issue #5). spawn_blocking takes a callable `f()`
// with NO veloq_ctx (the blocking pool runs it off the workers and passes none); otherwise
// it is boxed and guarded like spawn's. veloq::Group is an RAII task group (one completion
// for all its members, cancel()). spawn_named names a task for dump() and stall reports.
// Builder::on_stall boxes a StallHandler that runs on the watchdog thread; the Runtime owns
// it and destroys it only after the runtime is freed. stats(w) returns a veloq_worker_stats.
//
// Threads. Spawning, Runtime::workers and every CompletionQueue member may be used from any
// thread, workers included (a RuntimeRef made from the veloq_ctx passed to a callable spawns
// from inside it). Runtime's destructor and shutdown must be called from a host thread: from
// inside one of the runtime's callbacks or blocking jobs they are refused by the library
// (shutdown throws Error(-EDEADLK); a destructor run there lets go of the runtime, which
// goes on running, and leaks it with its stall handler).
//
// Lifetimes. Runtime and CompletionQueue are move-only owners of their C handle; a moved-from
// object holds nothing and its destructor does nothing. Destroying a Runtime shuts it down
// without a limit: every accepted task runs and every owed completion is delivered first.
// Destroying a CompletionQueue that completions are still owed to waits for them (discarding
// them), because the C library refuses to free such a queue; call close() to be told instead.
// Declare a queue after the runtime it belongs to, so it is destroyed first.
#ifndef VELOQ_HPP
#define VELOQ_HPP

#if !defined(__cplusplus) || __cplusplus < 201703L
#error "veloq.hpp needs C++17 or later"
#endif

#include <veloq.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <sys/socket.h>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace veloq {

/// A failed libveloq call: code() is the negative errno, what() names the call and gives
/// veloq_strerror's text.
class Error : public std::runtime_error {
public:
    explicit Error(int code, const char *call = "veloq")
        : std::runtime_error(std::string(call) + ": " + describe(code)), code_(code) {}

    /// The negative errno (or VELOQ_E* code) of the failed call.
    int code() const noexcept { return code_; }

private:
    static std::string describe(int code) {
        const char *s = ::veloq_strerror(code);
        return std::string(s ? s : "unknown error") + " (" + std::to_string(code) + ")";
    }
    int code_;
};

/// Wait without a time limit.
inline constexpr std::chrono::nanoseconds no_timeout{-1};

/// spawn_named worker: an injector, stealable (as spawn). VELOQ_WORKER_ANY.
inline constexpr std::int32_t worker_any = VELOQ_WORKER_ANY;
/// spawn_named worker: the less loaded of two workers (as spawn_balanced).
/// VELOQ_WORKER_BALANCED.
inline constexpr std::int32_t worker_balanced = VELOQ_WORKER_BALANCED;

/// A stall callback (Runtime::Builder::on_stall). `report` (and its task_name) is valid
/// only during the call.
using StallHandler = std::function<void(const veloq_stall_report &report)>;

/// veloq_strerror as a std::string.
inline std::string strerror(int code) {
    const char *s = ::veloq_strerror(code);
    return s ? s : "unknown error";
}

/// The library's version, (major << 16) | (minor << 8) | patch.
inline std::uint32_t version() noexcept { return ::veloq_version(); }

/// veloq_tcp_listen: a TCP socket listening on `addr` (SO_REUSEADDR; SO_REUSEPORT with
/// VELOQ_BIND_REUSEPORT in `flags`). Returns its descriptor, which the caller owns. Throws
/// Error (-EINVAL, -EAFNOSUPPORT, -EADDRINUSE, ...); then no descriptor is left open.
inline int tcp_listen(const struct sockaddr *addr, std::uint32_t addrlen, int backlog = 1024,
                      std::uint32_t flags = 0) {
    int fd = ::veloq_tcp_listen(addr, addrlen, backlog, flags);
    if (fd < 0)
        throw Error(fd, "veloq_tcp_listen");
    return fd;
}

/// veloq_udp_bind: a UDP socket bound to `addr` (SO_REUSEPORT with VELOQ_BIND_REUSEPORT
/// in `flags`). Returns its descriptor, which the caller owns. Throws
/// Error; then no descriptor is left open.
inline int udp_bind(const struct sockaddr *addr, std::uint32_t addrlen, std::uint32_t flags = 0) {
    int fd = ::veloq_udp_bind(addr, addrlen, flags);
    if (fd < 0)
        throw Error(fd, "veloq_udp_bind");
    return fd;
}

class Runtime;
class RuntimeRef;
class CompletionQueue;

namespace detail {

inline int check(int rc, const char *call) {
    if (rc < 0)
        throw Error(rc, call);
    return rc;
}

template <class Fn>
inline constexpr bool takes_ctx_v = std::is_invocable_v<Fn &, veloq_ctx *>;

template <class Fn, bool WithCtx = takes_ctx_v<Fn>>
struct call_result;
template <class Fn>
struct call_result<Fn, true> {
    using type = std::invoke_result_t<Fn &, veloq_ctx *>;
};
template <class Fn>
struct call_result<Fn, false> {
    using type = std::invoke_result_t<Fn &>;
};

template <class Fn>
constexpr bool is_task_callable() {
    if constexpr (std::is_invocable_v<Fn &, veloq_ctx *> || std::is_invocable_v<Fn &>) {
        using R = typename call_result<Fn>::type;
        return std::is_void_v<R> || std::is_convertible_v<R, std::int64_t>;
    } else {
        return false;
    }
}

template <class Fn>
std::int64_t call(Fn &fn, veloq_ctx *ctx) {
    using R = typename call_result<Fn>::type;
    if constexpr (takes_ctx_v<Fn>) {
        if constexpr (std::is_void_v<R>) {
            fn(ctx);
            return 0;
        } else {
            return static_cast<std::int64_t>(fn(ctx));
        }
    } else {
        (void)ctx;
        if constexpr (std::is_void_v<R>) {
            fn();
            return 0;
        } else {
            return static_cast<std::int64_t>(fn());
        }
    }
}

// Runs the boxed callable once and frees the box. noexcept: nothing unwinds into C.
template <class Fn>
std::int64_t trampoline(veloq_ctx *ctx, void *arg) noexcept {
    std::unique_ptr<Fn> box(static_cast<Fn *>(arg));
    try {
        return call(*box, ctx);
    } catch (const Error &e) {
        return e.code();
    } catch (...) {
        return VELOQ_EPANIC;
    }
}

enum class Kind { any, balanced, worker };

template <class F>
int submit(veloq_runtime *rt, Kind kind, std::uint32_t worker, F &&f, veloq_cq *cq,
           std::uint64_t user_data) {
    using Fn = std::decay_t<F>;
    static_assert(is_task_callable<Fn>(),
                  "a veloq task is a callable f(veloq_ctx*) or f() returning a value "
                  "convertible to int64_t, or void");
    auto box = std::make_unique<Fn>(std::forward<F>(f));
    veloq_task_fn fn = &trampoline<Fn>;
    int rc;
    switch (kind) {
    case Kind::any: rc = ::veloq_spawn(rt, fn, box.get(), cq, user_data); break;
    case Kind::balanced: rc = ::veloq_spawn_balanced(rt, fn, box.get(), cq, user_data); break;
    default: rc = ::veloq_spawn_to(rt, worker, fn, box.get(), cq, user_data); break;
    }
    if (rc == 0)
        box.release(); // the trampoline owns it now
    return rc;         // refused: the box is freed here, the callable never ran
}

template <class Fn>
constexpr bool is_blocking_callable() {
    if constexpr (std::is_invocable_v<Fn &>) {
        using R = std::invoke_result_t<Fn &>;
        return std::is_void_v<R> || std::is_convertible_v<R, std::int64_t>;
    } else {
        return false;
    }
}

// The blocking pool calls fn(NULL, arg): the callable takes no context. Runs it once and
// frees the box; noexcept like trampoline.
template <class Fn>
std::int64_t blocking_trampoline(veloq_ctx *, void *arg) noexcept {
    std::unique_ptr<Fn> box(static_cast<Fn *>(arg));
    try {
        if constexpr (std::is_void_v<std::invoke_result_t<Fn &>>) {
            (*box)();
            return 0;
        } else {
            return static_cast<std::int64_t>((*box)());
        }
    } catch (const Error &e) {
        return e.code();
    } catch (...) {
        return VELOQ_EPANIC;
    }
}

// Boxes `f` and hands `tramp` and the box to `c_call` (a C spawn call); frees the box
// when the call refused (the callable never runs).
template <class Fn, class F, class Call>
int submit_boxed(F &&f, veloq_task_fn tramp, Call &&c_call) {
    auto box = std::make_unique<Fn>(std::forward<F>(f));
    int rc = c_call(tramp, static_cast<void *>(box.get()));
    if (rc == 0)
        box.release(); // the trampoline owns it now
    return rc;
}

template <class F>
int submit_blocking(veloq_runtime *rt, F &&f, veloq_cq *cq, std::uint64_t user_data) {
    using Fn = std::decay_t<F>;
    static_assert(is_blocking_callable<Fn>(),
                  "a blocking job is a callable f() (no veloq_ctx: it runs on a pool "
                  "thread) returning a value convertible to int64_t, or void");
    return submit_boxed<Fn>(std::forward<F>(f), &blocking_trampoline<Fn>,
                            [&](veloq_task_fn fn, void *arg) {
                                return ::veloq_spawn_blocking(rt, fn, arg, cq, user_data);
                            });
}

template <class F>
int submit_named(veloq_runtime *rt, const char *name, std::int32_t worker, F &&f,
                 veloq_cq *cq, std::uint64_t user_data) {
    using Fn = std::decay_t<F>;
    static_assert(is_task_callable<Fn>(),
                  "a veloq task is a callable f(veloq_ctx*) or f() returning a value "
                  "convertible to int64_t, or void");
    return submit_boxed<Fn>(std::forward<F>(f), &trampoline<Fn>,
                            [&](veloq_task_fn fn, void *arg) {
                                return ::veloq_spawn_named(rt, name, worker, fn, arg, cq,
                                                           user_data);
                            });
}

// The spawning members shared by Runtime (owner) and RuntimeRef (view).
template <class Self>
class Spawner {
public:
    /// veloq_spawn: some worker's stealable injector (the caller's own on a worker).
    /// With a queue, exactly one completion {user_data, res = the callable's result} is
    /// posted to it. Throws Error when refused (the callable is destroyed, never run).
    template <class F>
    void spawn(F &&f) const {
        spawn(std::forward<F>(f), static_cast<veloq_cq *>(nullptr), 0);
    }
    template <class F>
    void spawn(F &&f, const CompletionQueue &cq, std::uint64_t user_data) const;
    template <class F>
    void spawn(F &&f, veloq_cq *cq, std::uint64_t user_data) const {
        check(submit(self(), Kind::any, 0, std::forward<F>(f), cq, user_data), "veloq_spawn");
    }

    /// veloq_spawn_balanced: the less loaded of two workers (P2C). Otherwise as spawn.
    template <class F>
    void spawn_balanced(F &&f) const {
        spawn_balanced(std::forward<F>(f), static_cast<veloq_cq *>(nullptr), 0);
    }
    template <class F>
    void spawn_balanced(F &&f, const CompletionQueue &cq, std::uint64_t user_data) const;
    template <class F>
    void spawn_balanced(F &&f, veloq_cq *cq, std::uint64_t user_data) const {
        check(submit(self(), Kind::balanced, 0, std::forward<F>(f), cq, user_data),
              "veloq_spawn_balanced");
    }

    /// veloq_spawn_to: exactly that worker, never stolen. Otherwise as spawn.
    template <class F>
    void spawn_to(std::uint32_t worker, F &&f) const {
        spawn_to(worker, std::forward<F>(f), static_cast<veloq_cq *>(nullptr), 0);
    }
    template <class F>
    void spawn_to(std::uint32_t worker, F &&f, const CompletionQueue &cq,
                  std::uint64_t user_data) const;
    template <class F>
    void spawn_to(std::uint32_t worker, F &&f, veloq_cq *cq, std::uint64_t user_data) const {
        check(submit(self(), Kind::worker, worker, std::forward<F>(f), cq, user_data),
              "veloq_spawn_to");
    }

    /// Like spawn*, but return the errno (0: accepted) instead of throwing it.
    template <class F>
    int try_spawn(F &&f, veloq_cq *cq = nullptr, std::uint64_t user_data = 0) const {
        return submit(self(), Kind::any, 0, std::forward<F>(f), cq, user_data);
    }
    template <class F>
    int try_spawn_balanced(F &&f, veloq_cq *cq = nullptr, std::uint64_t user_data = 0) const {
        return submit(self(), Kind::balanced, 0, std::forward<F>(f), cq, user_data);
    }
    template <class F>
    int try_spawn_to(std::uint32_t worker, F &&f, veloq_cq *cq = nullptr,
                     std::uint64_t user_data = 0) const {
        return submit(self(), Kind::worker, worker, std::forward<F>(f), cq, user_data);
    }

    /// veloq_spawn_blocking: runs `f()` once on a thread of the runtime's blocking pool,
    /// never on a worker (for blocking system calls and long computations). `f` takes no
    /// veloq_ctx (the pool passes none): to spawn from inside, capture a RuntimeRef. It
    /// returns something convertible to int64_t, or void (completes with 0); exceptions
    /// are caught as for spawn. With a queue, exactly one completion {user_data, res,
    /// flags 0, worker UINT32_MAX} is posted to it. Throws Error when refused (-ESHUTDOWN,
    /// -EAGAIN when no pool thread could start; the callable is destroyed, never run).
    /// The box is destroyed on the pool thread after the call. Callable from any thread.
    template <class F>
    void spawn_blocking(F &&f) const {
        spawn_blocking(std::forward<F>(f), static_cast<veloq_cq *>(nullptr), 0);
    }
    template <class F>
    void spawn_blocking(F &&f, const CompletionQueue &cq, std::uint64_t user_data) const;
    template <class F>
    void spawn_blocking(F &&f, veloq_cq *cq, std::uint64_t user_data) const {
        check(submit_blocking(self(), std::forward<F>(f), cq, user_data),
              "veloq_spawn_blocking");
    }
    /// Like spawn_blocking, returning the errno (0: accepted) instead of throwing it.
    template <class F>
    int try_spawn_blocking(F &&f, veloq_cq *cq = nullptr, std::uint64_t user_data = 0) const {
        return submit_blocking(self(), std::forward<F>(f), cq, user_data);
    }

    /// veloq_spawn_named: as spawn (worker_any), spawn_balanced (worker_balanced) or
    /// spawn_to (a worker index), with a name that dump() and stall reports show. `name`
    /// is copied by the library (nullptr: unnamed). Callables, completions and errors as
    /// for spawn (-EINVAL for a worker below -2 or out of range). Any thread.
    template <class F>
    void spawn_named(const char *name, std::int32_t worker, F &&f) const {
        spawn_named(name, worker, std::forward<F>(f), static_cast<veloq_cq *>(nullptr), 0);
    }
    template <class F>
    void spawn_named(const char *name, std::int32_t worker, F &&f, const CompletionQueue &cq,
                     std::uint64_t user_data) const;
    template <class F>
    void spawn_named(const char *name, std::int32_t worker, F &&f, veloq_cq *cq,
                     std::uint64_t user_data) const {
        check(submit_named(self(), name, worker, std::forward<F>(f), cq, user_data),
              "veloq_spawn_named");
    }
    /// Like spawn_named, returning the errno (0: accepted) instead of throwing it.
    template <class F>
    int try_spawn_named(const char *name, std::int32_t worker, F &&f, veloq_cq *cq = nullptr,
                        std::uint64_t user_data = 0) const {
        return submit_named(self(), name, worker, std::forward<F>(f), cq, user_data);
    }

    /// veloq_spawn_batch: submits the plain C jobs jobs[0..n) ({fn, arg, user_data}: C
    /// callbacks, not boxed callables, so nothing is allocated here) with their completions
    /// going to `cq` (nullptr: none), in chunks dealt out to the workers. Returns how many
    /// were accepted, k >= 1: always the prefix jobs[0..k), and k < n only when shutdown
    /// began during the call (the rest never run and stay the caller's). Throws Error when
    /// none was accepted (-EINVAL for bad input, -ESHUTDOWN, -ENOMEM). Any thread.
    std::uint32_t spawn_batch(const veloq_job *jobs, std::uint32_t n, veloq_cq *cq) const {
        return static_cast<std::uint32_t>(
            check(::veloq_spawn_batch(self(), jobs, n, cq), "veloq_spawn_batch"));
    }
    /// veloq_spawn_balanced_batch: as spawn_batch, the chunks to the least loaded workers.
    std::uint32_t spawn_balanced_batch(const veloq_job *jobs, std::uint32_t n,
                                       veloq_cq *cq) const {
        return static_cast<std::uint32_t>(check(::veloq_spawn_balanced_batch(self(), jobs, n, cq),
                                                "veloq_spawn_balanced_batch"));
    }

    /// veloq_runtime_stats: worker `worker`'s counters (size set to sizeof(veloq_worker_stats)
    /// before the call; on return it holds the bytes the library wrote, fields beyond are 0).
    /// Throws Error(-EINVAL) for a worker out of range or an empty handle. Any thread.
    veloq_worker_stats stats(std::uint32_t worker) const {
        veloq_worker_stats out{};
        out.size = static_cast<std::uint32_t>(sizeof(veloq_worker_stats));
        check(::veloq_runtime_stats(self(), worker, &out), "veloq_runtime_stats");
        return out;
    }

    /// veloq_runtime_dump: writes a text dump of the runtime (workers, what they run,
    /// queue depths, live tasks with their names) to `fd`, which stays the caller's. Waits
    /// at most about 200 ms for a worker that does not answer. Throws Error (-EINVAL, or a
    /// failed write's errno: the dump may then be partly written). Any thread; from a
    /// callback it blocks that worker up to the bound.
    void dump(int fd) const { check(::veloq_runtime_dump(self(), fd), "veloq_runtime_dump"); }

    /// Number of workers (0 for an empty handle).
    std::uint32_t workers() const noexcept { return ::veloq_runtime_workers(self()); }

    /// veloq_submit: runs `sqe` on worker `worker` (-1: the less loaded of two, or for
    /// VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED the buffer's own worker) and posts
    /// its completion {user_data, res, flags, worker} to `cq`. Throws Error when refused
    /// (-EINVAL bad sqe/worker, -ESHUTDOWN); then nothing is posted. The memory the sqe
    /// names must stay valid until the final completion.
    void submit_io(const veloq_sqe &sqe, const CompletionQueue &cq, std::uint64_t user_data,
                   std::int32_t worker = -1) const;
    /// Like submit_io, returning the errno (0: accepted) instead of throwing it.
    int try_submit_io(const veloq_sqe &sqe, veloq_cq *cq, std::uint64_t user_data,
                      std::int32_t worker = -1) const noexcept {
        return ::veloq_submit(self(), worker, &sqe, cq, user_data);
    }

private:
    veloq_runtime *self() const noexcept { return static_cast<const Self *>(this)->get(); }
};

} // namespace detail

/// A non-owning handle to a runtime: for spawning from inside a callback
/// (`RuntimeRef(ctx).spawn(...)`) or for passing a runtime around without owning it.
class RuntimeRef : public detail::Spawner<RuntimeRef> {
public:
    explicit RuntimeRef(veloq_runtime *rt) noexcept : rt_(rt) {}
    /// The runtime running the callback that was given `ctx`.
    explicit RuntimeRef(const veloq_ctx *ctx) noexcept : rt_(::veloq_ctx_runtime(ctx)) {}

    veloq_runtime *get() const noexcept { return rt_; }

private:
    veloq_runtime *rt_;
};

class Io;

namespace detail {

template <class Fn>
constexpr int io_arity() {
    if constexpr (std::is_invocable_v<Fn &, Io, std::int64_t, std::uint32_t>)
        return 3;
    else if constexpr (std::is_invocable_v<Fn &, std::int64_t, std::uint32_t>)
        return 2;
    else if constexpr (std::is_invocable_v<Fn &, std::int64_t>)
        return 1;
    else
        return 0;
}

template <class Fn>
void io_trampoline(veloq_ctx *ctx, std::int64_t res, std::uint32_t flags, void *arg) noexcept;

// Boxes `f`, hands the trampoline and the box to `submit` (a C call); frees the box when
// the call refused (the callable never runs).
template <class F, class Submit>
std::int64_t io_submit(F &&f, Submit &&submit) {
    using Fn = std::decay_t<F>;
    static_assert(io_arity<Fn>() != 0,
                  "an I/O completion callable takes (veloq::Io, int64_t, uint32_t), "
                  "(int64_t, uint32_t) or (int64_t)");
    auto box = std::make_unique<Fn>(std::forward<F>(f));
    std::int64_t rc = submit(&io_trampoline<Fn>, static_cast<void *>(box.get()));
    if (rc > 0)
        box.release(); // the trampoline frees it after the final entry
    return rc;
}

} // namespace detail

/// The worker-side I/O calls of the worker running the current callback. Valid only inside
/// the task or I/O callback that received its veloq_ctx, on that worker (like veloq_ctx).
/// Each call returns the op id (> 0) or a negative errno; see the C function of the same
/// name for what `res` means and which errors come back.
class Io {
public:
    explicit Io(veloq_ctx *ctx) noexcept : ctx_(ctx) {}

    veloq_ctx *ctx() const noexcept { return ctx_; }
    /// The index of this worker.
    std::uint32_t worker() const noexcept { return ::veloq_ctx_worker(ctx_); }
    /// The runtime, for spawning from inside the callback.
    RuntimeRef runtime() const noexcept { return RuntimeRef(ctx_); }

    template <class F>
    std::int64_t nop(F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_nop(ctx_, cb, a);
        });
    }
    template <class F>
    std::int64_t read(int fd, void *buf, std::uint32_t len, std::uint64_t offset, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_read(ctx_, fd, buf, len, offset, cb, a);
        });
    }
    template <class F>
    std::int64_t write(int fd, const void *buf, std::uint32_t len, std::uint64_t offset,
                       F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_write(ctx_, fd, buf, len, offset, cb, a);
        });
    }
    template <class F>
    std::int64_t recv(int fd, void *buf, std::uint32_t len, int flags, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_recv(ctx_, fd, buf, len, flags, cb, a);
        });
    }
    template <class F>
    std::int64_t send(int fd, const void *buf, std::uint32_t len, int flags, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_send(ctx_, fd, buf, len, flags, cb, a);
        });
    }
    /// Multishot: `f` runs once per connection and is destroyed after the final entry.
    template <class F>
    std::int64_t accept(int fd, bool multishot, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_accept(ctx_, fd, multishot, cb, a);
        });
    }
    template <class F>
    std::int64_t connect(int fd, const struct sockaddr *addr, std::uint32_t addrlen,
                         F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_connect(ctx_, fd, addr, addrlen, cb, a);
        });
    }
    template <class F>
    std::int64_t close(int fd, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_close(ctx_, fd, cb, a);
        });
    }
    template <class F>
    std::int64_t openat(int dirfd, const char *path, int flags, std::uint32_t mode,
                        F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_openat(ctx_, dirfd, path, flags, mode, cb, a);
        });
    }
    template <class F>
    std::int64_t fsync(int fd, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_fsync(ctx_, fd, cb, a);
        });
    }
    template <class F>
    std::int64_t fdatasync(int fd, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_fdatasync(ctx_, fd, cb, a);
        });
    }
    /// veloq_read_fixed: into pool buffer `buf` (veloq_buf_alloc) from byte `buf_offset`.
    template <class F>
    std::int64_t read_fixed(int fd, veloq_buf *buf, std::uint32_t buf_offset, std::uint32_t len,
                            std::uint64_t offset, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_read_fixed(ctx_, fd, buf, buf_offset, len, offset, cb, a);
        });
    }
    /// veloq_write_fixed: from pool buffer `buf` (veloq_buf_alloc) from byte `buf_offset`.
    template <class F>
    std::int64_t write_fixed(int fd, const veloq_buf *buf, std::uint32_t buf_offset,
                             std::uint32_t len, std::uint64_t offset, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_write_fixed(ctx_, fd, buf, buf_offset, len, offset, cb, a);
        });
    }
    template <class F>
    std::int64_t statx(int dirfd, const char *path, int flags, std::uint32_t mask,
                       struct ::statx *out, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_statx(ctx_, dirfd, path, flags, mask, out, cb, a);
        });
    }
    template <class F>
    std::int64_t fallocate(int fd, int mode, std::uint64_t offset, std::uint64_t len,
                           F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_fallocate(ctx_, fd, mode, offset, len, cb, a);
        });
    }
    template <class F>
    std::int64_t timeout(std::chrono::nanoseconds after, F &&f) const {
        auto ns = static_cast<std::uint64_t>(after.count() < 0 ? 0 : after.count());
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_timeout(ctx_, ns, cb, a);
        });
    }
    template <class F>
    std::int64_t poll_add(int fd, std::uint32_t events, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_poll_add(ctx_, fd, events, cb, a);
        });
    }
    template <class F>
    std::int64_t socket_shutdown(int fd, int how, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_socket_shutdown(ctx_, fd, how, cb, a);
        });
    }
    /// veloq_ctx_submit: any VELOQ_OP_* operation described by `sqe` (copied), with a
    /// deadline when `sqe.timeout_ns` is set (then -ECANCELED when it passed first).
    template <class F>
    std::int64_t submit(const veloq_sqe &sqe, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_ctx_submit(ctx_, &sqe, cb, a);
        });
    }
    /// veloq_cancel: 0, -ENOENT, -EALREADY. The operation still completes through its
    /// callable (with -ECANCELED unless it finished first).
    int cancel(std::int64_t op) const noexcept { return ::veloq_cancel(ctx_, op); }
    /// veloq_ctx_flush: hands this worker's queued operations to the kernel now (for
    /// O_DIRECT file I/O); how many entries the kernel took.
    int flush() const noexcept { return ::veloq_ctx_flush(ctx_); }

    // Provided-buffer rings (veloq_buf_ring_*): plain calls returning 0 / an id or a
    // negative errno, like the C ones. A ring is identified by its group id and belongs to
    // this worker: make, take, recycle and free it only inside callbacks on this worker
    // (no RAII owner: freeing needs a worker's context; the runtime frees what is left).

    /// veloq_recv_multishot into ring `group`: `f` runs once per chunk (flags has
    /// VELOQ_CQE_F_MORE on all but the final entry, VELOQ_CQE_F_BUFFER with data; take the
    /// buffer with buf_ring_take) and is destroyed after the final entry.
    template <class F>
    std::int64_t recv_multishot(int fd, std::uint16_t group, int flags, F &&f) const {
        return detail::io_submit(std::forward<F>(f), [&](veloq_io_cb cb, void *a) {
            return ::veloq_recv_multishot(ctx_, fd, group, flags, cb, a);
        });
    }
    /// veloq_buf_ring_new: 0 with the new ring's group id in `group` (untouched on error);
    /// -EINVAL, -ENOMEM, -EOPNOTSUPP.
    int buf_ring_new(std::uint32_t count, std::uint32_t size, std::uint16_t &group) const noexcept {
        return ::veloq_buf_ring_new(ctx_, count, size, &group);
    }
    /// veloq_buf_ring_take: the buffer id (>= 0) a completion's `flags` name, with its
    /// address in `data` (untouched on error); -ENODATA, -ENOENT, -EALREADY, -EINVAL.
    int buf_ring_take(std::uint16_t group, std::uint32_t flags, void *&data) const noexcept {
        return ::veloq_buf_ring_take(ctx_, group, flags, &data);
    }
    /// veloq_buf_ring_recycle: 0; -ENOENT, -EINVAL (not taken).
    int buf_ring_recycle(std::uint16_t group, std::uint16_t id) const noexcept {
        return ::veloq_buf_ring_recycle(ctx_, group, id);
    }
    /// veloq_buf_ring_free: 0; -EBUSY while a receive is armed on it or a buffer is taken;
    /// -ENOENT.
    int buf_ring_free(std::uint16_t group) const noexcept {
        return ::veloq_buf_ring_free(ctx_, group);
    }

private:
    veloq_ctx *ctx_;
};

namespace detail {
template <class Fn>
void io_trampoline(veloq_ctx *ctx, std::int64_t res, std::uint32_t flags, void *arg) noexcept {
    Fn *fn = static_cast<Fn *>(arg);
    try {
        constexpr int arity = io_arity<Fn>();
        if constexpr (arity == 3)
            (*fn)(Io(ctx), res, flags);
        else if constexpr (arity == 2)
            (*fn)(res, flags);
        else
            (*fn)(res);
    } catch (...) {
        // Dropped: nothing unwinds into C (see the I/O section at the top).
    }
    if (!(flags & VELOQ_CQE_F_MORE))
        delete fn;
}
} // namespace detail

namespace detail {

// A member's callable, type-erased.
struct GroupMember {
    virtual ~GroupMember() = default;
    virtual std::int64_t run(veloq_ctx *ctx) = 0;
};
template <class Fn>
struct GroupMemberOf final : GroupMember {
    template <class F>
    explicit GroupMemberOf(F &&f) : fn(std::forward<F>(f)) {}
    std::int64_t run(veloq_ctx *ctx) override { return call(fn, ctx); }
    Fn fn;
};

struct GroupState;
// One accepted (or being accepted) member. Lives inside GroupState, so the trampoline may
// look at `claimed` even after the Group object reclaimed the callable.
struct GroupSlot {
    GroupSlot(GroupState *s, GroupMember *m) noexcept : state(s), member(m) {}
    std::atomic<bool> claimed{false}; // whoever sets it first runs or destroys `member`
    GroupState *state;
    GroupMember *member;
};

// Shared by a Group object and its members' trampolines: freed by the last reference
// (the Group holds one, every accepted member one until its trampoline returned).
struct GroupState {
    std::atomic<std::size_t> refs{1};
    std::mutex lock;
    std::deque<GroupSlot> slots; // deque: addresses stay put on emplace_back

    void release() noexcept {
        if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1)
            delete this;
    }
    ~GroupState() {
        for (GroupSlot &s : slots)
            if (!s.claimed.load(std::memory_order_relaxed))
                delete s.member;
    }
};

inline std::int64_t group_trampoline(veloq_ctx *ctx, void *arg) noexcept {
    GroupSlot *slot = static_cast<GroupSlot *>(arg);
    GroupState *state = slot->state;
    std::int64_t res = -ECANCELED; // reclaimed by a cancelled Group's destructor
    if (!slot->claimed.exchange(true, std::memory_order_acq_rel)) {
        std::unique_ptr<GroupMember> member(slot->member);
        try {
            res = member->run(ctx);
        } catch (const Error &e) {
            res = e.code();
        } catch (...) {
            res = VELOQ_EPANIC;
        }
    }
    state->release();
    return res;
}

// Cancelled groups' states that members skipped by the cancel still hold references to:
// no trampoline runs for a skipped member, but the C API does not say when that is known.
// The owning Runtime frees them once veloq_runtime_free returned (no callback can run any
// more); states whose members all returned are freed earlier, whenever another is added.
struct GroupGraveyard {
    std::mutex lock;
    bool runtime_freed = false;
    std::vector<GroupState *> states;

    // Takes over one reference to `s` (the destroyed Group's).
    void bury(GroupState *s) noexcept {
        std::unique_lock<std::mutex> hold(lock);
        if (runtime_freed) {
            hold.unlock();
            delete s; // nothing can run any more
            return;
        }
        for (std::size_t i = 0; i < states.size();) {
            if (states[i]->refs.load(std::memory_order_acquire) == 1) { // only ours
                delete states[i];
                states[i] = states.back();
                states.pop_back();
            } else {
                i++;
            }
        }
        try {
            states.push_back(s);
        } catch (...) {
            s->release(); // out of memory: leave it to its members (as without a graveyard)
        }
    }
    // After veloq_runtime_free: every callback has returned or will never run.
    void runtime_gone() noexcept {
        std::lock_guard<std::mutex> hold(lock);
        runtime_freed = true;
        for (GroupState *s : states)
            delete s;
        states.clear();
    }
};

} // namespace detail

/// Owns a veloq_runtime. Move-only. The destructor shuts the runtime down without a limit.
class Runtime : public detail::Spawner<Runtime> {
public:
    class Builder;

    /// A runtime with every default (veloq_runtime_new). Throws Error.
    Runtime() : graveyard_(std::make_shared<detail::GroupGraveyard>()) {
        detail::check(::veloq_runtime_new(&rt_), "veloq_runtime_new");
    }

    /// Takes ownership of a runtime made through the C API.
    explicit Runtime(veloq_runtime *owned) noexcept : rt_(owned) {}

    Runtime(Runtime &&other) noexcept
        : rt_(std::exchange(other.rt_, nullptr)), on_stall_(std::move(other.on_stall_)),
          graveyard_(std::move(other.graveyard_)) {}
    Runtime &operator=(Runtime &&other) noexcept {
        if (this != &other) {
            reset();
            rt_ = std::exchange(other.rt_, nullptr);
            on_stall_ = std::move(other.on_stall_);
            graveyard_ = std::move(other.graveyard_);
        }
        return *this;
    }
    Runtime(const Runtime &) = delete;
    Runtime &operator=(const Runtime &) = delete;
    ~Runtime() { reset(); }

    /// Options, then build().
    static Builder builder();

    /// Graceful shutdown, waiting at most `limit` (negative: no limit). Returns true when it
    /// finished, false when the limit passed first (call again to go on waiting). New
    /// submissions are refused (-ESHUTDOWN) from the first call on. Throws Error
    /// (-EDEADLK from inside one of the runtime's callbacks or blocking jobs).
    bool shutdown(std::chrono::nanoseconds limit = no_timeout) {
        int rc = ::veloq_runtime_shutdown(rt_, static_cast<std::int64_t>(limit.count()));
        if (rc == -ETIMEDOUT)
            return false;
        detail::check(rc, "veloq_runtime_shutdown");
        return true;
    }

    /// The C handle (still owned by this object).
    veloq_runtime *get() const noexcept { return rt_; }
    /// Gives up ownership: the caller frees the handle with veloq_runtime_free. A stall
    /// handler set through the builder stays owned by this object (the watchdog may still
    /// call it): keep this object alive until the released runtime was freed.
    veloq_runtime *release() noexcept { return std::exchange(rt_, nullptr); }
    /// A non-owning handle to this runtime.
    RuntimeRef ref() const noexcept { return RuntimeRef(rt_); }
    explicit operator bool() const noexcept { return rt_ != nullptr; }

private:
    friend class Builder;
    friend class Group;
    Runtime(veloq_runtime *owned, std::unique_ptr<StallHandler> on_stall,
            std::shared_ptr<detail::GroupGraveyard> graveyard) noexcept
        : rt_(owned), on_stall_(std::move(on_stall)), graveyard_(std::move(graveyard)) {}

    // The stall handler is freed only after the runtime (and its watchdog thread) is.
    // (After release() the runtime may still run: the graveyard then keeps its states.)
    void reset() noexcept {
        if (rt_ && ::veloq_runtime_is_own_thread(rt_)) {
            // Destroyed inside one of its own callbacks or blocking jobs: the library
            // refuses to free the runtime there, and it goes on running. Let go of it as
            // release() does, and of the stall handler its watchdog may still call: both
            // are leaked rather than freed under it.
            rt_ = nullptr;
            (void)on_stall_.release();
            graveyard_.reset();
            return;
        }
        bool freed = rt_ != nullptr;
        if (rt_)
            ::veloq_runtime_free(std::exchange(rt_, nullptr));
        on_stall_.reset();
        if (freed && graveyard_)
            graveyard_->runtime_gone();
        graveyard_.reset();
    }
    veloq_runtime *rt_ = nullptr;
    std::unique_ptr<StallHandler> on_stall_; // boxed by Builder::on_stall; see reset()
    // Cancelled Groups' leftover states (made from this object); see reset().
    std::shared_ptr<detail::GroupGraveyard> graveyard_;
};

/// Runtime options (veloq_builder_*). Each setter throws Error(-EINVAL) for a value out of
/// range and leaves the builder as it was.
class Runtime::Builder {
public:
    Builder() : b_(::veloq_builder_new()) {
        if (!b_)
            throw std::bad_alloc();
    }
    Builder(Builder &&other) noexcept
        : b_(std::exchange(other.b_, nullptr)), on_stall_(std::move(other.on_stall_)) {}
    Builder &operator=(Builder &&other) noexcept {
        if (this != &other) {
            ::veloq_builder_free(b_);
            b_ = std::exchange(other.b_, nullptr);
            on_stall_ = std::move(other.on_stall_);
        }
        return *this;
    }
    Builder(const Builder &) = delete;
    Builder &operator=(const Builder &) = delete;
    ~Builder() { ::veloq_builder_free(b_); }

    /// Number of workers; 0: one per online CPU.
    Builder &workers(std::uint32_t n) {
        detail::check(::veloq_builder_workers(b_, n), "veloq_builder_workers");
        return *this;
    }
    /// Pin worker i to a core.
    Builder &pin_workers(bool pin = true) {
        detail::check(::veloq_builder_pin_workers(b_, pin), "veloq_builder_pin_workers");
        return *this;
    }
    /// Run the workers under Linux's SCHED_BATCH policy (default: on; see
    /// `veloq_builder_sched_batch`: a woken worker does not preempt the thread running
    /// on its core).
    Builder &sched_batch(bool on = true) {
        detail::check(::veloq_builder_sched_batch(b_, on), "veloq_builder_sched_batch");
        return *this;
    }
    /// Slots per SPSC mesh channel.
    Builder &mesh_capacity(std::uint32_t slots) {
        detail::check(::veloq_builder_mesh_capacity(b_, slots), "veloq_builder_mesh_capacity");
        return *this;
    }
    /// io_uring submission queue entries per worker.
    Builder &ring_entries(std::uint32_t entries) {
        detail::check(::veloq_builder_ring_entries(b_, entries), "veloq_builder_ring_entries");
        return *this;
    }
    /// Tasks per loop turn.
    Builder &budget(std::uint32_t tasks) {
        detail::check(::veloq_builder_budget(b_, tasks), "veloq_builder_budget");
        return *this;
    }

    /// Blocking pool size (spawn_blocking): at least `min` threads kept once started, at
    /// most `max` at once (defaults 0 and 64). Throws Error(-EINVAL) for `max` 0 or above
    /// 4096, or `min` above `max`.
    Builder &blocking_threads(std::uint32_t min, std::uint32_t max) {
        detail::check(::veloq_builder_blocking_threads(b_, min, max),
                      "veloq_builder_blocking_threads");
        return *this;
    }
    /// How long a blocking-pool thread beyond the minimum waits for work before it exits
    /// (default 10 s; zero or negative: at once).
    Builder &blocking_idle_timeout(std::chrono::nanoseconds idle) {
        auto ns = static_cast<std::uint64_t>(idle.count() < 0 ? 0 : idle.count());
        detail::check(::veloq_builder_blocking_idle_timeout(b_, ns),
                      "veloq_builder_blocking_idle_timeout");
        return *this;
    }
    /// How long a worker may stay in one callback before the watchdog reports it stalled
    /// (default 100 ms; zero or negative turns the watchdog and its thread off).
    Builder &stall_threshold(std::chrono::nanoseconds threshold) {
        auto ns = static_cast<std::uint64_t>(threshold.count() < 0 ? 0 : threshold.count());
        detail::check(::veloq_builder_stall_threshold(b_, ns), "veloq_builder_stall_threshold");
        return *this;
    }
    /// Whether each stall and its end is logged as a line on stderr (default true).
    Builder &stall_log(bool log) {
        detail::check(::veloq_builder_stall_log(b_, log), "veloq_builder_stall_log");
        return *this;
    }
    /// Calls `handler(report)` when a stall is noticed (report.ended == 0) and again when it
    /// ends (1). It runs on the runtime's watchdog thread (never a worker), one call at a
    /// time, and should return quickly; it may spawn, read stats or dump. An exception
    /// escaping it is caught and dropped (nothing unwinds into C). The handler is moved
    /// into a box that the builder, then the built Runtime, owns; the Runtime destroys it
    /// after freeing the runtime (so never while the watchdog may call it). A later call
    /// replaces the handler. Throws Error(-EINVAL) for an empty std::function (the builder
    /// is unchanged), std::bad_alloc.
    Builder &on_stall(StallHandler handler) {
        if (!handler)
            throw Error(-EINVAL, "veloq_builder_on_stall");
        auto box = std::make_unique<StallHandler>(std::move(handler));
        detail::check(::veloq_builder_on_stall(b_, &stall_trampoline, box.get()),
                      "veloq_builder_on_stall");
        on_stall_ = std::move(box); // the old handler (if any) is no longer referenced
        return *this;
    }

    /// Starts the runtime. The builder is used up either way (veloq_runtime_build consumes
    /// it); throws Error when the runtime cannot start. The stall handler (if any) moves
    /// into the Runtime.
    Runtime build() {
        auto graveyard = std::make_shared<detail::GroupGraveyard>();
        veloq_runtime *rt = nullptr;
        detail::check(::veloq_runtime_build(std::exchange(b_, nullptr), &rt),
                      "veloq_runtime_build");
        return Runtime(rt, std::move(on_stall_), std::move(graveyard));
    }

private:
    static void stall_trampoline(const veloq_stall_report *report, void *user_data) noexcept {
        try {
            (*static_cast<StallHandler *>(user_data))(*report);
        } catch (...) {
            // Dropped: nothing unwinds into C.
        }
    }

    veloq_builder *b_;
    std::unique_ptr<StallHandler> on_stall_;
};

inline Runtime::Builder Runtime::builder() { return Builder(); }

/// Owns a veloq_cq. Move-only. Every member may be called from any thread.
class CompletionQueue {
public:
    /// A queue on `rt` holding `capacity` entries before it overflows (it never drops one).
    template <class R, class = std::enable_if_t<std::is_same_v<R, Runtime> ||
                                                std::is_same_v<R, RuntimeRef>>>
    explicit CompletionQueue(const R &rt, std::uint32_t capacity = 256) {
        detail::check(::veloq_cq_new(rt.get(), capacity, &cq_), "veloq_cq_new");
    }
    /// Takes ownership of a queue made through the C API.
    explicit CompletionQueue(veloq_cq *owned) noexcept : cq_(owned) {}

    CompletionQueue(CompletionQueue &&other) noexcept : cq_(std::exchange(other.cq_, nullptr)) {}
    CompletionQueue &operator=(CompletionQueue &&other) noexcept {
        if (this != &other) {
            reset();
            cq_ = std::exchange(other.cq_, nullptr);
        }
        return *this;
    }
    CompletionQueue(const CompletionQueue &) = delete;
    CompletionQueue &operator=(const CompletionQueue &) = delete;

    /// Frees the queue; while completions are still owed to it, first waits for them and
    /// discards them. Do not destroy a queue with owed completions inside a callback.
    ~CompletionQueue() { reset(); }

    /// Up to `max` waiting entries, oldest first; never blocks (empty when none wait).
    std::vector<veloq_cqe> poll(std::uint32_t max = 256) {
        std::vector<veloq_cqe> out(max ? max : 1);
        out.resize(poll_into(out.data(), max));
        return out;
    }
    /// poll into caller memory; returns the count.
    std::size_t poll_into(veloq_cqe *out, std::uint32_t max) {
        return static_cast<std::size_t>(detail::check(::veloq_cq_poll(cq_, out, max), "veloq_cq_poll"));
    }

    /// Waits until at least `min` (at least 1) entries are there, then takes up to `max`.
    /// Empty when none came within `timeout` (-ETIMEDOUT is not thrown). Other errors throw.
    std::vector<veloq_cqe> wait(std::uint32_t max = 256, std::uint32_t min = 1,
                                std::chrono::nanoseconds timeout = no_timeout) {
        std::vector<veloq_cqe> out(max ? max : 1);
        out.resize(wait_into(out.data(), max, min, timeout));
        return out;
    }
    /// wait into caller memory; returns the count (0 on timeout).
    std::size_t wait_into(veloq_cqe *out, std::uint32_t max, std::uint32_t min = 1,
                          std::chrono::nanoseconds timeout = no_timeout) {
        int rc = ::veloq_cq_wait(cq_, out, max, min, static_cast<std::int64_t>(timeout.count()));
        if (rc == -ETIMEDOUT)
            return 0;
        return static_cast<std::size_t>(detail::check(rc, "veloq_cq_wait"));
    }

    /// Posts {user_data, res} as a completion.
    void post(std::uint64_t user_data, std::int64_t res) {
        detail::check(::veloq_cq_post(cq_, user_data, res), "veloq_cq_post");
    }

    /// The fd to add to an epoll/poll loop: readable while entries wait. Owned by the queue.
    int fd() const { return detail::check(::veloq_cq_fd(cq_), "veloq_cq_fd"); }

    /// Frees the queue now. Throws Error(-EBUSY) while completions are still owed to it, and
    /// then the queue stays as it was (and owned by this object).
    void close() {
        if (cq_) {
            detail::check(::veloq_cq_free(cq_), "veloq_cq_free");
            cq_ = nullptr;
        }
    }

    veloq_cq *get() const noexcept { return cq_; }
    /// Gives up ownership: the caller frees the handle with veloq_cq_free.
    veloq_cq *release() noexcept { return std::exchange(cq_, nullptr); }
    explicit operator bool() const noexcept { return cq_ != nullptr; }

private:
    void reset() noexcept {
        if (!cq_)
            return;
        veloq_cqe sink[64];
        while (::veloq_cq_free(cq_) == -EBUSY)
            (void)::veloq_cq_wait(cq_, sink, 64, 1, 1000000); // 1 ms
        cq_ = nullptr;
    }
    veloq_cq *cq_ = nullptr;
};

/// Owns a veloq_group: callback tasks (members), and the worker-side I/O they start with
/// their ctx, cancelled as a whole and reported by ONE completion {user_data, res} on the
/// queue given at construction once the group is closed and every member and operation
/// is done: res is the first negative value a member returned (or threw as veloq::Error;
/// VELOQ_EPANIC for another exception), else -ECANCELED if cancel() was called, else 0.
/// Move-only; a moved-from Group holds nothing. Every member may be called from any
/// thread, worker callbacks included, but not concurrently with the destructor or a move.
///
/// Members are callables like spawn's (f(veloq_ctx *) or f(), int64_t-convertible or void);
/// each is boxed and destroyed after it ran, on its worker. The destructor closes the group
/// (veloq_group_free) without waiting: accepted members still run and the completion still
/// comes, also after the runtime object is gone. After cancel(), a member that never ran
/// has its callable destroyed by the Group's destructor (on the destroying thread). The
/// C API does not say when a skipped member is done, so the group's small bookkeeping
/// record (not the callables) then stays allocated: for a Group made from a Runtime, until
/// that Runtime object frees the runtime; for one made from a RuntimeRef, for good (a
/// few dozen bytes per member; cancel groups made from a Runtime to avoid it).
class Group {
public:
    /// veloq_group_new on `rt`; the completion goes to `cq` (none when nullptr). Throws
    /// Error (-ESHUTDOWN once `rt` shuts down), std::bad_alloc.
    template <class R, class = std::enable_if_t<std::is_same_v<R, Runtime> ||
                                                std::is_same_v<R, RuntimeRef>>>
    explicit Group(const R &rt, veloq_cq *cq = nullptr, std::uint64_t user_data = 0) {
        init(rt, cq, user_data);
    }
    template <class R, class = std::enable_if_t<std::is_same_v<R, Runtime> ||
                                                std::is_same_v<R, RuntimeRef>>>
    Group(const R &rt, const CompletionQueue &cq, std::uint64_t user_data) {
        init(rt, cq.get(), user_data);
    }

    Group(Group &&other) noexcept
        : g_(std::exchange(other.g_, nullptr)), state_(std::exchange(other.state_, nullptr)),
          graveyard_(std::move(other.graveyard_)), cancelled_(other.cancelled_.load()) {}
    Group &operator=(Group &&other) noexcept {
        if (this != &other) {
            reset();
            g_ = std::exchange(other.g_, nullptr);
            state_ = std::exchange(other.state_, nullptr);
            graveyard_ = std::move(other.graveyard_);
            cancelled_ = other.cancelled_.load();
        }
        return *this;
    }
    Group(const Group &) = delete;
    Group &operator=(const Group &) = delete;

    /// Closes the group if still open and releases the handle (see the class comment).
    ~Group() { reset(); }

    /// veloq_group_spawn: adds a member on worker `worker` (never stolen), or -1 (the
    /// default) on the less loaded of two. Throws Error when refused: -EINVAL (bad worker,
    /// group closed), -ECANCELED (cancelled), -ESHUTDOWN; the callable is then destroyed,
    /// never run. std::bad_alloc (or the callable's move/copy exception) before anything.
    template <class F>
    void spawn(F &&f, std::int32_t worker = -1) {
        detail::check(try_spawn(std::forward<F>(f), worker), "veloq_group_spawn");
    }
    /// Like spawn, returning the errno (0: accepted) instead of throwing it.
    template <class F>
    int try_spawn(F &&f, std::int32_t worker = -1) {
        using Fn = std::decay_t<F>;
        static_assert(detail::is_task_callable<Fn>(),
                      "a veloq task is a callable f(veloq_ctx*) or f() returning a value "
                      "convertible to int64_t, or void");
        if (!g_)
            return -EINVAL;
        auto member = std::make_unique<detail::GroupMemberOf<Fn>>(std::forward<F>(f));
        detail::GroupSlot *slot;
        {
            std::lock_guard<std::mutex> hold(state_->lock);
            slot = &state_->slots.emplace_back(state_, member.get());
        }
        state_->refs.fetch_add(1, std::memory_order_relaxed);
        int rc = ::veloq_group_spawn(g_, worker, &detail::group_trampoline, slot);
        if (rc == 0) {
            member.release(); // the trampoline (or a cancelled destructor) owns it now
        } else {
            slot->claimed.store(true, std::memory_order_relaxed); // never runs
            state_->release();
        }
        return rc;
    }

    /// veloq_group_cancel: members not started yet never run (they count as -ECANCELED),
    /// the group's I/O in flight completes -ECANCELED, later spawns are refused. Running
    /// members are not interrupted; the completion still comes only once closed. Throws
    /// Error(-EINVAL) on an empty Group. Cancel through this object (not veloq_group_cancel
    /// on get()), so the destructor knows to destroy the callables of skipped members.
    void cancel() {
        detail::check(::veloq_group_cancel(g_), "veloq_group_cancel");
        cancelled_ = true;
    }

    /// veloq_group_close: no more members; the completion is posted once everything is
    /// done (from inside this call when nothing is left). Throws Error(-EINVAL) when
    /// already closed or empty.
    void close() { detail::check(::veloq_group_close(g_), "veloq_group_close"); }

    /// The C handle (still owned by this object).
    veloq_group *get() const noexcept { return g_; }
    explicit operator bool() const noexcept { return g_ != nullptr; }

private:
    void init(const Runtime &rt, veloq_cq *cq, std::uint64_t user_data) {
        graveyard_ = rt.graveyard_;
        init(rt.get(), cq, user_data);
    }
    void init(const RuntimeRef &rt, veloq_cq *cq, std::uint64_t user_data) {
        init(rt.get(), cq, user_data);
    }
    void init(veloq_runtime *rt, veloq_cq *cq, std::uint64_t user_data) {
        auto state = std::make_unique<detail::GroupState>();
        detail::check(::veloq_group_new(rt, cq, user_data, &g_), "veloq_group_new");
        state_ = state.release();
    }
    void reset() noexcept {
        if (!g_)
            return;
        ::veloq_group_free(std::exchange(g_, nullptr));
        detail::GroupState *state = std::exchange(state_, nullptr);
        if (!cancelled_) {
            state->release(); // every accepted member runs and drops its reference
            return;
        }
        {
            // Members that have not started never will: destroy their callables now.
            // One that has started (or is about to) claimed its slot first.
            std::lock_guard<std::mutex> hold(state->lock);
            for (detail::GroupSlot &s : state->slots)
                if (!s.claimed.exchange(true, std::memory_order_acq_rel))
                    delete s.member;
        }
        // Skipped members never drop their references: the runtime's graveyard frees the
        // state after the runtime (see GroupGraveyard).
        if (graveyard_)
            std::exchange(graveyard_, nullptr)->bury(state);
        else
            state->release();
    }
    veloq_group *g_ = nullptr;
    detail::GroupState *state_ = nullptr;
    std::shared_ptr<detail::GroupGraveyard> graveyard_; // only when made from a Runtime
    std::atomic<bool> cancelled_{false}; // cancel() may run on a worker
};

namespace detail {
template <class Self>
void Spawner<Self>::submit_io(const veloq_sqe &sqe, const CompletionQueue &cq,
                              std::uint64_t user_data, std::int32_t worker) const {
    check(::veloq_submit(self(), worker, &sqe, cq.get(), user_data), "veloq_submit");
}
template <class Self>
template <class F>
void Spawner<Self>::spawn(F &&f, const CompletionQueue &cq, std::uint64_t user_data) const {
    spawn(std::forward<F>(f), cq.get(), user_data);
}
template <class Self>
template <class F>
void Spawner<Self>::spawn_balanced(F &&f, const CompletionQueue &cq,
                                   std::uint64_t user_data) const {
    spawn_balanced(std::forward<F>(f), cq.get(), user_data);
}
template <class Self>
template <class F>
void Spawner<Self>::spawn_to(std::uint32_t worker, F &&f, const CompletionQueue &cq,
                             std::uint64_t user_data) const {
    spawn_to(worker, std::forward<F>(f), cq.get(), user_data);
}
template <class Self>
template <class F>
void Spawner<Self>::spawn_blocking(F &&f, const CompletionQueue &cq,
                                   std::uint64_t user_data) const {
    spawn_blocking(std::forward<F>(f), cq.get(), user_data);
}
template <class Self>
template <class F>
void Spawner<Self>::spawn_named(const char *name, std::int32_t worker, F &&f,
                                const CompletionQueue &cq, std::uint64_t user_data) const {
    spawn_named(name, worker, std::forward<F>(f), cq.get(), user_data);
}
} // namespace detail

} // namespace veloq

#endif // VELOQ_HPP
