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
// Threads. Spawning, Runtime::workers and every CompletionQueue member may be used from any
// thread, workers included (a RuntimeRef made from the veloq_ctx passed to a callable spawns
// from inside it). Runtime's destructor and shutdown must be called from a host thread: from
// inside a callback they are refused by the library (shutdown throws Error(-EDEADLK)).
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

#include <cerrno>
#include <chrono>
#include <cstddef>
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

/// veloq_strerror as a std::string.
inline std::string strerror(int code) {
    const char *s = ::veloq_strerror(code);
    return s ? s : "unknown error";
}

/// The library's version, (major << 16) | (minor << 8) | patch.
inline std::uint32_t version() noexcept { return ::veloq_version(); }

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

    /// Number of workers (0 for an empty handle).
    std::uint32_t workers() const noexcept { return ::veloq_runtime_workers(self()); }

    /// veloq_submit: runs `sqe` on worker `worker` (-1: the less loaded of two) and posts
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
    /// veloq_cancel: 0, -ENOENT, -EALREADY. The operation still completes through its
    /// callable (with -ECANCELED unless it finished first).
    int cancel(std::int64_t op) const noexcept { return ::veloq_cancel(ctx_, op); }

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

/// Owns a veloq_runtime. Move-only. The destructor shuts the runtime down without a limit.
class Runtime : public detail::Spawner<Runtime> {
public:
    class Builder;

    /// A runtime with every default (veloq_runtime_new). Throws Error.
    Runtime() { detail::check(::veloq_runtime_new(&rt_), "veloq_runtime_new"); }

    /// Takes ownership of a runtime made through the C API.
    explicit Runtime(veloq_runtime *owned) noexcept : rt_(owned) {}

    Runtime(Runtime &&other) noexcept : rt_(std::exchange(other.rt_, nullptr)) {}
    Runtime &operator=(Runtime &&other) noexcept {
        if (this != &other) {
            reset();
            rt_ = std::exchange(other.rt_, nullptr);
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
    /// (-EDEADLK from inside a callback).
    bool shutdown(std::chrono::nanoseconds limit = no_timeout) {
        int rc = ::veloq_runtime_shutdown(rt_, static_cast<std::int64_t>(limit.count()));
        if (rc == -ETIMEDOUT)
            return false;
        detail::check(rc, "veloq_runtime_shutdown");
        return true;
    }

    /// The C handle (still owned by this object).
    veloq_runtime *get() const noexcept { return rt_; }
    /// Gives up ownership: the caller frees the handle with veloq_runtime_free.
    veloq_runtime *release() noexcept { return std::exchange(rt_, nullptr); }
    /// A non-owning handle to this runtime.
    RuntimeRef ref() const noexcept { return RuntimeRef(rt_); }
    explicit operator bool() const noexcept { return rt_ != nullptr; }

private:
    void reset() noexcept {
        if (rt_)
            ::veloq_runtime_free(std::exchange(rt_, nullptr));
    }
    veloq_runtime *rt_ = nullptr;
};

/// Runtime options (veloq_builder_*). Each setter throws Error(-EINVAL) for a value out of
/// range and leaves the builder as it was.
class Runtime::Builder {
public:
    Builder() : b_(::veloq_builder_new()) {
        if (!b_)
            throw std::bad_alloc();
    }
    Builder(Builder &&other) noexcept : b_(std::exchange(other.b_, nullptr)) {}
    Builder &operator=(Builder &&other) noexcept {
        if (this != &other) {
            ::veloq_builder_free(b_);
            b_ = std::exchange(other.b_, nullptr);
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

    /// Starts the runtime. The builder is used up either way (veloq_runtime_build consumes
    /// it); throws Error when the runtime cannot start.
    Runtime build() {
        veloq_runtime *rt = nullptr;
        detail::check(::veloq_runtime_build(std::exchange(b_, nullptr), &rt),
                      "veloq_runtime_build");
        return Runtime(rt);
    }

private:
    veloq_builder *b_;
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
} // namespace detail

} // namespace veloq

#endif // VELOQ_HPP
