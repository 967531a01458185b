//! Builder and runtime lifecycle.

use std::ffi::c_int;
use std::ptr;
use std::time::Duration;

use super::error::VELOQ_EPANIC;
use super::{handle, result_code};
use crate::{OsError, Runtime, RuntimeBuilder, ShutdownError};

/// Settings for a runtime, made by `veloq_builder_new` and consumed by
/// `veloq_runtime_build`. Not thread-safe: use one builder from one thread at a time.
pub struct veloq_builder {
    inner: RuntimeBuilder,
}

/// A running runtime: its worker threads, queues and rings. Every function taking a
/// `veloq_runtime *` may be called from any thread unless its comment says otherwise.
pub struct veloq_runtime {
    pub(crate) inner: Runtime,
}

/// A new builder with the defaults: one worker per online CPU, not pinned, under
/// `SCHED_BATCH` (see `veloq_builder_sched_batch`), mesh channels
/// of 256 slots, a budget of 64 tasks per loop turn, io_uring rings of 256 entries.
/// Returns NULL only when out of memory. Free it with `veloq_builder_free` unless it is
/// passed to `veloq_runtime_build`, which consumes it.
#[no_mangle]
pub extern "C" fn veloq_builder_new() -> *mut veloq_builder {
    ffi_boundary!(ptr::null_mut(), {
        Box::into_raw(Box::new(veloq_builder {
            inner: RuntimeBuilder::new(),
        }))
    })
}

/// Runs `set` on the builder behind `b`; -EINVAL for NULL or a value `set` refuses
/// (the builder is then unchanged).
pub(crate) fn configure(
    b: *mut veloq_builder,
    set: impl FnOnce(&mut RuntimeBuilder) -> Result<(), &'static str>,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null builder comes from veloq_builder_new and is not shared.
        match unsafe { b.as_mut() } {
            None => -libc::EINVAL,
            Some(b) => set(&mut b.inner).map_or(-libc::EINVAL, |()| 0),
        }
    })
}

/// Number of workers, 1..=1024; 0 means one per online CPU (the default).
/// Returns 0, or -EINVAL (NULL builder, n > 1024; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_workers(b: *mut veloq_builder, n: u32) -> c_int {
    configure(b, |b| b.set_workers(n as usize))
}

/// Pin worker i to CPU core i (modulo the cores there are). Default: not pinned.
/// Returns 0, or -EINVAL for a NULL builder.
#[no_mangle]
pub extern "C" fn veloq_builder_pin_workers(b: *mut veloq_builder, pin: bool) -> c_int {
    configure(b, |b| {
        *b = std::mem::take(b).pin_workers(pin);
        Ok(())
    })
}

/// Run the workers under Linux's `SCHED_BATCH` scheduling policy (default: on). A
/// worker woken while another thread runs on its core then does not preempt that thread:
/// it runs when the thread sleeps or its time slice ends. On a core of its own nothing
/// changes. On a core shared with the threads that feed it (a client or load generator
/// on the same machine) requests queue meanwhile and one turn of the worker handles them
/// all: more requests per second and far fewer context switches, for a wake-up that may
/// wait for the running thread's time slice to end (a few ms, depending on the kernel,
/// its tick rate and the threads runnable there; up to about 10 ms on older kernels)
/// instead of preempting it. Only workers that would run under `SCHED_OTHER` are
/// switched: threads start under the policy of the thread that starts them, so a
/// runtime built by a real-time (unless `SCHED_RESET_ON_FORK` resets it), `SCHED_IDLE`
/// or `SCHED_BATCH` thread keeps that policy on its workers, on or off. Blocking-pool
/// threads started by a worker go back to the policy the building thread's threads
/// start under; anything else a worker starts keeps `SCHED_BATCH`, as with any policy
/// (threads a callback starts, processes it forks, the kernel's io-wq helper threads of
/// its ring). If the kernel refuses (a seccomp profile), workers stay under the
/// inherited policy; `veloq_worker_stats.sched_policy` says what each got.
/// Returns 0, or -EINVAL for a NULL builder.
#[no_mangle]
pub extern "C" fn veloq_builder_sched_batch(b: *mut veloq_builder, on: bool) -> c_int {
    configure(b, |b| {
        *b = std::mem::take(b).sched_batch(on);
        Ok(())
    })
}

/// Slots per mesh channel (between two workers), 1..=65536, rounded up to a power of
/// two. A full channel never loses a task: the rest waits in the target's inbox.
/// Returns 0, or -EINVAL (NULL builder, out of range; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_mesh_capacity(b: *mut veloq_builder, slots: u32) -> c_int {
    configure(b, |b| b.set_mesh_capacity(slots as usize))
}

/// io_uring submission queue entries per worker, 1..=32768 (the kernel rounds up to a
/// power of two). Returns 0, or -EINVAL (NULL builder, out of range; unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_ring_entries(b: *mut veloq_builder, entries: u32) -> c_int {
    configure(b, |b| b.set_ring_entries(entries))
}

/// Completion batching for busy I/O workers: the longest, in microseconds, a worker
/// waits when it parks for a batch of I/O completions before it takes what is there;
/// default 20, 0 turns it off, at most 1000. Only a busy worker's park waits: one with
/// 32 or more operations in the kernel whose recent parks brought, on average, 4 or more
/// completions beyond what they submitted (a server with a hundred connections, say);
/// it then waits for what it submits plus that average, at most 32 more and at most one
/// in 8 of the operations in the kernel. Every other park returns at the first
/// completion or wake-up. Trades fewer system
/// calls per completion under load for up to this much extra latency on a busy worker
/// (a completion, or a wake-up for a spawn or task handed to it, is acted on at most
/// this late; nothing is lost). Needs Linux 6.12; stays off on older kernels.
/// Returns 0, or -EINVAL (NULL builder, more than 1000; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_io_batch_wait(b: *mut veloq_builder, usec: u32) -> c_int {
    configure(b, |b| {
        b.set_io_batch_wait(Duration::from_micros(u64::from(usec)))
    })
}

/// Polling for device-bound I/O workers: the longest, in microseconds, a worker that runs
/// out of work while it has I/O operations in flight (an armed receive counts) polls its
/// ring and queues before it parks, after handing its queued submissions to the kernel;
/// 0 turns it off (the default), at most 10000. Trades a core kept busy while I/O is in
/// flight, and more system calls for a network server, for no park and wake per gap
/// between completions (O_DIRECT reads at queue depth gain most). Returns 0, or -EINVAL
/// (NULL builder, more than 10000; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_io_poll(b: *mut veloq_builder, usec: u32) -> c_int {
    configure(b, |b| b.set_io_poll(Duration::from_micros(u64::from(usec))))
}

/// Tasks each source (local queue, mesh, inbox, injector) may run per loop turn,
/// 1..=65536; default 64. Returns 0, or -EINVAL (NULL builder, out of range; unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_budget(b: *mut veloq_builder, tasks: u32) -> c_int {
    configure(b, |b| b.set_budget(tasks as usize))
}

/// How many buffers of `class_size` bytes each worker's buffer pool holds; `class_size`
/// is one of 4096, 16384, 65536, 262144, 1048576; `count` 0 leaves the class out; at
/// most 4 GiB per class. Defaults: 32, 16, 8, 2, 1 (2.375 MiB per worker). The pool is
/// registered with the worker's io_uring ring (pinned memory, counted against
/// RLIMIT_MEMLOCK for unprivileged processes); when that fails the pool still works,
/// unregistered (see `veloq_buf_pool_stats`). Returns 0, or -EINVAL (NULL builder,
/// `class_size` not a class, too many bytes; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_buffer_pool(
    b: *mut veloq_builder,
    class_size: u32,
    count: u32,
) -> c_int {
    configure(b, |b| {
        b.set_buffer_pool(class_size as usize, count as usize)
    })
}

/// Frees a builder that was never passed to `veloq_runtime_build`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn veloq_builder_free(b: *mut veloq_builder) {
    ffi_boundary!((), {
        if !b.is_null() {
            // SAFETY: a non-null builder comes from veloq_builder_new, freed once.
            drop(unsafe { Box::from_raw(b) });
        }
    })
}

/// Starts a runtime from `b` and stores it in `*out`. Always consumes `b`, even on
/// error. Returns 0; -EINVAL (NULL `b` or `out`); or the kernel's errno when a worker
/// thread, eventfd or io_uring ring cannot be made (-ENOMEM under RLIMIT_MEMLOCK,
/// -EPERM where io_uring is forbidden, -ENOSYS without io_uring); then nothing is left
/// running and `*out` is untouched. Free the runtime with `veloq_runtime_free`.
#[no_mangle]
pub extern "C" fn veloq_runtime_build(
    b: *mut veloq_builder,
    out: *mut *mut veloq_runtime,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if b.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: a non-null builder comes from veloq_builder_new; consumed here.
        let builder = unsafe { Box::from_raw(b) }.inner;
        if out.is_null() {
            return -libc::EINVAL;
        }
        build_into(builder, out)
    })
}

/// Starts a runtime with all defaults (see `veloq_builder_new`) into `*out`.
/// Returns 0, or the errors of `veloq_runtime_build`.
#[no_mangle]
pub extern "C" fn veloq_runtime_new(out: *mut *mut veloq_runtime) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if out.is_null() {
            return -libc::EINVAL;
        }
        build_into(RuntimeBuilder::new(), out)
    })
}

fn build_into(builder: RuntimeBuilder, out: *mut *mut veloq_runtime) -> c_int {
    match builder.build() {
        Ok(inner) => {
            let rt = Box::into_raw(Box::new(veloq_runtime { inner }));
            // SAFETY: just made; the runtime lets workers hand it to callbacks.
            unsafe { (*rt).inner.set_host_data(rt.cast()) };
            // SAFETY: `out` checked non-null by the caller.
            unsafe { *out = rt };
            0
        }
        Err(e) => -OsError::errno_of(&e),
    }
}

/// 1 when the calling thread is one of `rt`'s workers or blocking-pool threads (inside
/// one of its callbacks or blocking jobs), where `veloq_runtime_shutdown` is refused with
/// -EDEADLK and `veloq_runtime_free` does nothing; else 0 (NULL included). Callable from
/// any thread.
#[no_mangle]
pub extern "C" fn veloq_runtime_is_own_thread(rt: *const veloq_runtime) -> c_int {
    ffi_boundary!(0, {
        // SAFETY: a non-null runtime is live (caller's promise).
        unsafe { handle(rt) }.map_or(0, |rt| c_int::from(rt.inner.is_own_thread()))
    })
}

/// Number of worker threads; 0 for NULL.
#[no_mangle]
pub extern "C" fn veloq_runtime_workers(rt: *const veloq_runtime) -> u32 {
    ffi_boundary!(0, {
        // SAFETY: a non-null runtime is live (caller's promise).
        unsafe { handle(rt) }.map_or(0, |rt| rt.inner.workers() as u32)
    })
}

/// Shuts the runtime down gracefully. From the call on, every spawn is refused with
/// -ESHUTDOWN; every task and blocking job accepted before runs exactly once and every
/// completion owed is posted; then the workers and blocking threads exit. Returns 0 when
/// they have; -ETIMEDOUT when
/// `timeout_ns` (< 0: no limit) passed first (call again to go on waiting); -EDEADLK
/// when called from one of this runtime's worker callbacks or blocking jobs
/// (`veloq_spawn_blocking`), which it would wait for (nothing happens); -EINVAL for
/// NULL. Callable from any other thread, any number of times.
#[no_mangle]
pub extern "C" fn veloq_runtime_shutdown(rt: *mut veloq_runtime, timeout_ns: i64) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        result_code((|| {
            // SAFETY: a non-null runtime is live (caller's promise).
            let rt = unsafe { handle(rt) }?;
            let timeout = (timeout_ns >= 0).then(|| Duration::from_nanos(timeout_ns as u64));
            match rt.inner.shutdown(timeout) {
                Ok(()) => Ok(0),
                Err(ShutdownError::TimedOut) => Err(-libc::ETIMEDOUT),
                Err(ShutdownError::FromWorker) => Err(-libc::EDEADLK),
            }
        })())
    })
}

/// Shuts the runtime down without a time limit (see `veloq_runtime_shutdown`), then
/// frees it. NULL is a no-op. Refused (nothing happens) when called from one of this
/// runtime's worker callbacks or blocking jobs. No other call may use `rt` during or
/// after this one.
#[no_mangle]
pub extern "C" fn veloq_runtime_free(rt: *mut veloq_runtime) {
    ffi_boundary!((), {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(runtime) = (unsafe { handle(rt) }) else {
            return;
        };
        if runtime.inner.shutdown(None) == Err(ShutdownError::FromWorker) {
            return;
        }
        // SAFETY: made by Box::into_raw in build_into; the caller hands it back once.
        drop(unsafe { Box::from_raw(rt) });
    })
}
