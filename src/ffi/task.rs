//! Spawning callbacks, and the worker context they receive.

use std::ffi::{c_int, c_void};
use std::ptr;

use super::cq::veloq_cq;
use super::error::VELOQ_EPANIC;
use super::handle;
use super::runtime::veloq_runtime;
use crate::{Placement, RawTask, RawTaskFn, RuntimeContext, SpawnErrorKind};

/// A worker's context. Valid only inside the callback it is passed to, and only on that
/// worker's thread; never store it.
pub struct veloq_ctx {
    _opaque: [u8; 0],
}

/// A task: runs once on a worker with that worker's context and the `arg` given at
/// spawn; its return value becomes the completion's `res`.
pub type veloq_task_fn = Option<unsafe extern "C" fn(ctx: *mut veloq_ctx, arg: *mut c_void) -> i64>;

/// The callback type the runtime runs, from the C one.
pub(crate) fn raw_fn(func: unsafe extern "C" fn(*mut veloq_ctx, *mut c_void) -> i64) -> RawTaskFn {
    // SAFETY: the two function pointer types differ only in the pointee of the first
    // argument (`veloq_ctx` is the C name of `RuntimeContext`, or NULL for blocking
    // jobs); same ABI.
    unsafe { std::mem::transmute(func) }
}

/// A callback job from the arguments every C spawn function takes.
pub(crate) fn raw_task(
    func: unsafe extern "C" fn(*mut veloq_ctx, *mut c_void) -> i64,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> RawTask {
    RawTask {
        func: raw_fn(func),
        arg,
        // SAFETY: a non-null cq is live (the caller's promise in every spawn function).
        cq: unsafe { cq.as_ref() }.map_or(ptr::null(), |cq| &cq.inner as *const _),
        user_data,
    }
}

/// The errno a refused spawn returns.
pub(crate) fn spawn_errno(kind: SpawnErrorKind) -> c_int {
    match kind {
        SpawnErrorKind::Shutdown => -libc::ESHUTDOWN,
        SpawnErrorKind::InvalidWorker | SpawnErrorKind::NoRuntime => -libc::EINVAL,
        SpawnErrorKind::NoThread => -libc::EAGAIN,
        SpawnErrorKind::NoMemory => -libc::ENOMEM,
    }
}

fn spawn(
    rt: *mut veloq_runtime,
    placement: Placement,
    func: veloq_task_fn,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        let Some(func) = func else {
            return -libc::EINVAL;
        };
        let task = raw_task(func, arg, cq, user_data);
        // SAFETY: the C contract: `arg` stays valid until the callback ran, `cq` until
        // its completion was delivered (veloq_cq_free refuses while one is owed).
        match unsafe { rt.inner.spawn_raw(placement, task) } {
            Ok(()) => 0,
            Err(e) => spawn_errno(e.kind()),
        }
    })
}

/// Runs `fn(ctx, arg)` once on a worker. From a worker callback it goes into that
/// worker's injector; from any other thread onto some worker's injector; idle workers
/// may steal it. When `cq` is not NULL, exactly one completion `{user_data, res = fn's
/// return value, worker}` is posted to it.
///
/// Returns 0 when accepted; -EINVAL (NULL `rt` or `fn`); -ESHUTDOWN once shutdown has
/// started (then `fn` never runs and nothing is posted). `arg` and `cq` stay the
/// caller's and must stay valid until the callback ran and its completion was posted.
/// Callable from any thread, including worker callbacks.
///
/// When completions are posted (every spawn function): a worker gathers the completions
/// of the callbacks it runs and posts them to their queue together, at the latest when
/// its loop turn ends (before it looks for more work or sleeps), after at most 32
/// callbacks, or when one of its callbacks calls `veloq_cq_post`, or polls or waits on a
/// queue and finds nothing (so a callback never waits for its own worker). So a callback that blocks holds back the completions of callbacks its
/// worker ran just before it in the same turn: a callback must never block waiting for
/// the host to react to another completion (blocking work belongs in
/// `veloq_spawn_blocking`).
#[no_mangle]
pub extern "C" fn veloq_spawn(
    rt: *mut veloq_runtime,
    r#fn: veloq_task_fn,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    spawn(rt, Placement::Any, r#fn, arg, cq, user_data)
}

/// Like `veloq_spawn`, on the less loaded of two workers drawn at random (power of two
/// choices). From a worker callback: when P2C chooses the calling worker, the task goes
/// into that worker's injector, where idle workers may steal it. The caller's load, for
/// P2C, leaves out the balanced spawns it kept there during the current callback. So a
/// burst spawned from one callback mostly stays with the caller, and one sleeping worker
/// (if any) is woken to steal from it as soon as the callback returns. A task for
/// another worker travels over the mesh (the SPSC channel between the two workers; when
/// it is full, the target's queue takes it). From any other thread it goes through the
/// chosen worker's injector. Same returns and ownership.
#[no_mangle]
pub extern "C" fn veloq_spawn_balanced(
    rt: *mut veloq_runtime,
    r#fn: veloq_task_fn,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    spawn(rt, Placement::Balanced, r#fn, arg, cq, user_data)
}

/// Like `veloq_spawn`, on exactly worker `worker` (0..workers); the task is never stolen.
/// Returns also -EINVAL for `worker` out of range.
#[no_mangle]
pub extern "C" fn veloq_spawn_to(
    rt: *mut veloq_runtime,
    worker: u32,
    r#fn: veloq_task_fn,
    arg: *mut c_void,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    spawn(
        rt,
        Placement::Worker(worker as usize),
        r#fn,
        arg,
        cq,
        user_data,
    )
}

/// The most jobs one `veloq_spawn_batch` / `veloq_spawn_balanced_batch` call takes.
pub const VELOQ_SPAWN_BATCH_MAX: u32 = 1 << 20;

/// One callback of a batch submission: `fn(ctx, arg)` runs once on a worker, and its
/// completion carries `user_data`. A plain description, read only during the submitting
/// call; `arg` stays the caller's, as with `veloq_spawn`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct veloq_job {
    /// The callback; must not be NULL.
    pub r#fn: veloq_task_fn,
    /// Passed to `fn` unchanged.
    pub arg: *mut c_void,
    /// Copied into the job's completion.
    pub user_data: u64,
}

fn spawn_batch(
    rt: *mut veloq_runtime,
    placement: Placement,
    jobs: *const veloq_job,
    n: u32,
    cq: *mut veloq_cq,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        if jobs.is_null() || n == 0 || n > VELOQ_SPAWN_BATCH_MAX {
            return -libc::EINVAL;
        }
        // SAFETY: `jobs` points to `n` readable elements (caller's promise); the slice
        // lives only during this call.
        let jobs = unsafe { std::slice::from_raw_parts(jobs, n as usize) };
        if jobs.iter().any(|j| j.r#fn.is_none()) {
            return -libc::EINVAL;
        }
        // SAFETY: a non-null cq is live (the caller's promise).
        let cq = unsafe { cq.as_ref() }.map_or(ptr::null(), |cq| &cq.inner as *const _);
        let task = |i: usize| {
            let job = &jobs[i];
            RawTask {
                func: raw_fn(job.r#fn.expect("checked above")),
                arg: job.arg,
                cq,
                user_data: job.user_data,
            }
        };
        // SAFETY: the C contract, for every element: `arg` stays valid until its callback
        // ran, `cq` until its completion was delivered (veloq_cq_free refuses meanwhile).
        match unsafe { rt.inner.spawn_raw_batch_with(placement, jobs.len(), task) } {
            // At most VELOQ_SPAWN_BATCH_MAX: fits.
            Ok(accepted) => accepted as c_int,
            Err(kind) => spawn_errno(kind),
        }
    })
}

/// Submits the `n` callbacks `jobs[0..n)` at once, spread over the workers in
/// contiguous chunks (about one per worker, at least 16 jobs each and at most a loop
/// turn's budget, `veloq_builder_budget`, 64 by default) dealt out round robin; each job then behaves as if given to `veloq_spawn` with the same `cq`: it
/// runs exactly once, and when `cq` is not NULL exactly one completion `{user_data,
/// res = fn's return value, worker}` is posted to it. A chunk's jobs run in order on
/// the worker that received it and are never stolen; no order holds between chunks.
/// Costs one admission, one queue push and one wake-up check per chunk, not per job.
///
/// Returns how many jobs were accepted, k >= 1: always the prefix `jobs[0..k)`. k == n
/// unless shutdown started (or memory ran out) during the call; then the jobs from k
/// on were refused: their `fn` never runs, nothing is posted for them, and they stay
/// the caller's to submit elsewhere or drop. Errors, with nothing accepted: -EINVAL
/// (NULL `rt` or `jobs`, `n` == 0 or above `VELOQ_SPAWN_BATCH_MAX`, a NULL `fn` in any
/// element); -ESHUTDOWN (shutdown has started); -ENOMEM (no memory to carry the jobs).
///
/// `jobs` is read during the call only and stays the caller's. Each `arg`, and `cq`,
/// must stay valid until the accepted jobs ran and their completions were posted.
/// Callable from any thread, including worker callbacks.
#[no_mangle]
pub extern "C" fn veloq_spawn_batch(
    rt: *mut veloq_runtime,
    jobs: *const veloq_job,
    n: u32,
    cq: *mut veloq_cq,
) -> c_int {
    spawn_batch(rt, Placement::Any, jobs, n, cq)
}

/// Like `veloq_spawn_batch`, with the chunks going to the least loaded workers: the
/// loads are read once per call (as `veloq_spawn_balanced` reads two), each chunk goes
/// to the worker with the least work counting what this call already gave it, and a
/// worker the stall watchdog considers stuck gets nothing while another is not. Same
/// returns, partial acceptance rule, ownership and threads.
#[no_mangle]
pub extern "C" fn veloq_spawn_balanced_batch(
    rt: *mut veloq_runtime,
    jobs: *const veloq_job,
    n: u32,
    cq: *mut veloq_cq,
) -> c_int {
    spawn_batch(rt, Placement::Balanced, jobs, n, cq)
}

/// The index (0..workers) of the worker running the callback that received `ctx`;
/// UINT32_MAX for NULL. Only inside that callback.
#[no_mangle]
pub extern "C" fn veloq_ctx_worker(ctx: *const veloq_ctx) -> u32 {
    ffi_boundary!(u32::MAX, {
        // SAFETY: a non-null ctx is the RuntimeContext passed to the running callback.
        unsafe { (ctx as *const RuntimeContext).as_ref() }
            .map_or(u32::MAX, |cx| cx.worker_index() as u32)
    })
}

/// The runtime the callback that received `ctx` runs on (to spawn more work); NULL for
/// NULL. Only inside that callback.
#[no_mangle]
pub extern "C" fn veloq_ctx_runtime(ctx: *const veloq_ctx) -> *mut veloq_runtime {
    ffi_boundary!(ptr::null_mut(), {
        // SAFETY: as in veloq_ctx_worker.
        unsafe { (ctx as *const RuntimeContext).as_ref() }
            .map_or(ptr::null_mut(), |cx| cx.host_data().cast())
    })
}
