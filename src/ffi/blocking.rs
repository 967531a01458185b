//! The blocking pool from C: `veloq_spawn_blocking` and its two builder settings.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use super::cq::veloq_cq;
use super::error::VELOQ_EPANIC;
use super::handle;
use super::runtime::{veloq_builder, veloq_runtime};
use super::task::veloq_task_fn;
use super::task::{raw_task, spawn_errno};

/// Blocking pool size: at least `min` threads are kept once started, at most `max` run
/// at once (jobs beyond wait in FIFO order); threads start when work arrives. Defaults
/// 0 and 64. Returns 0, or -EINVAL (NULL builder, `max` 0 or above 4096, `min` above
/// `max`; the builder is unchanged). Not thread-safe (like every builder function).
#[no_mangle]
pub extern "C" fn veloq_builder_blocking_threads(
    b: *mut veloq_builder,
    min: u32,
    max: u32,
) -> c_int {
    super::runtime::configure(b, |b| b.set_blocking_threads(min as usize, max as usize))
}

/// How long a blocking-pool thread beyond the minimum waits for work before it exits,
/// in nanoseconds (0: at once). Default 10 s. Returns 0, or -EINVAL for a NULL builder.
#[no_mangle]
pub extern "C" fn veloq_builder_blocking_idle_timeout(b: *mut veloq_builder, ns: u64) -> c_int {
    super::runtime::configure(b, |b| b.set_blocking_idle_timeout(Duration::from_nanos(ns)))
}

/// Runs `fn(NULL, arg)` once on a thread of the runtime's blocking pool, never on a
/// worker: for blocking system calls and long computations. `ctx` is NULL because no
/// worker runs it (to spawn more work from inside, capture the `veloq_runtime *` in
/// `arg`; every spawn function may be called from a pool thread). When `cq` is not NULL,
/// exactly one completion `{user_data, res = fn's return value, flags 0, worker
/// UINT32_MAX}` is posted to it; `veloq_cq_free` returns -EBUSY until it has been.
///
/// Returns 0 when accepted; -EINVAL (NULL `rt` or `fn`); -ESHUTDOWN once shutdown has
/// started (a job accepted before still runs and completes exactly once, and
/// `veloq_runtime_shutdown` waits for it); -EAGAIN when the pool has no thread and the
/// OS refused to start one. On an error `fn` never runs and nothing is posted. `arg` and
/// `cq` stay the caller's and must stay valid until `fn` ran and its completion was
/// posted. Never waits for the pool: callable from any thread, including worker
/// callbacks and blocking callbacks.
#[no_mangle]
pub extern "C" fn veloq_spawn_blocking(
    rt: *mut veloq_runtime,
    r#fn: veloq_task_fn,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        let Some(func) = r#fn else {
            return -libc::EINVAL;
        };
        let task = raw_task(func, arg, cq, user_data);
        // SAFETY: the C contract above: `fn` may run with `arg` and a NULL context on a
        // pool thread; `cq` stays valid until its completion (reserved here).
        match unsafe { rt.inner.spawn_blocking_raw(task) } {
            Ok(()) => 0,
            Err(e) => spawn_errno(e.kind()),
        }
    })
}
