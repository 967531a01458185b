//! Named spawns, stall detection settings, per-worker statistics and the live-task dump.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::time::Duration;

use super::cq::veloq_cq;
use super::error::VELOQ_EPANIC;
use super::handle;
use super::runtime::{configure, veloq_builder, veloq_runtime};
use super::task::veloq_task_fn;
use super::task::{raw_task, spawn_errno};
use crate::{Placement, StallReport, TaskBuilder};

/// `veloq_spawn_named` worker argument: the less loaded of two workers (as
/// `veloq_spawn_balanced`).
pub const VELOQ_WORKER_BALANCED: i32 = -1;
/// `veloq_spawn_named` worker argument: an injector, stealable (as `veloq_spawn`).
pub const VELOQ_WORKER_ANY: i32 = -2;

/// Like `veloq_spawn` / `veloq_spawn_balanced` / `veloq_spawn_to`, with a name that
/// `veloq_runtime_dump` and stall reports show. `worker` is `VELOQ_WORKER_ANY` (-2: an
/// injector, stealable), `VELOQ_WORKER_BALANCED` (-1: power of two choices) or a worker
/// index (that worker, never stolen). `name` is copied (invalid UTF-8 is replaced);
/// NULL spawns unnamed, exactly as the unnamed functions do.
///
/// Returns 0 when accepted (then `fn(ctx, arg)` runs exactly once and, when `cq` is not
/// NULL, exactly one completion `{user_data, res}` is posted); -EINVAL (NULL `rt` or
/// `fn`, `worker` below -2 or not a worker); -ESHUTDOWN once shutdown has started.
/// `arg` and `cq` stay the caller's, valid until the callback ran and its completion was
/// posted. Callable from any thread, including worker callbacks.
#[no_mangle]
pub extern "C" fn veloq_spawn_named(
    rt: *mut veloq_runtime,
    name: *const c_char,
    worker: i32,
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
        let placement = match worker {
            VELOQ_WORKER_ANY => Placement::Any,
            VELOQ_WORKER_BALANCED => Placement::Balanced,
            w if w >= 0 && (w as usize) < rt.inner.workers() => Placement::Worker(w as usize),
            _ => return -libc::EINVAL,
        };
        let task = raw_task(func, arg, cq, user_data);
        let mut builder = TaskBuilder::new().placement(placement);
        if !name.is_null() {
            // SAFETY: a non-null name is a NUL-terminated string (caller's promise).
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            builder = builder.name(&name);
        }
        // SAFETY: the C contract for `arg` and `cq`, as in `veloq_spawn`.
        match unsafe { builder.spawn_raw(&rt.inner, task) } {
            Ok(()) => 0,
            Err(e) => spawn_errno(e.kind()),
        }
    })
}

// --- stall detection -----------------------------------------------------------------------

/// What a stall callback receives. Valid only during the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct veloq_stall_report {
    /// The stalled worker.
    pub worker: u32,
    /// 0: the stall was just noticed, the job still runs. 1: the worker came back to its
    /// loop; `running_ns` is then the whole stall.
    pub ended: u32,
    /// How long the worker had been in the same job, as the watchdog measured it (up to
    /// a quarter of the threshold less than the truth).
    pub running_ns: u64,
    /// The running task's name (from `veloq_spawn_named`), or NULL for an unnamed job.
    /// Valid only during the call.
    pub task_name: *const c_char,
}

/// A stall callback: `report` is valid only during the call; `user_data` is the pointer
/// given to `veloq_builder_on_stall`.
pub type veloq_stall_fn =
    Option<unsafe extern "C" fn(report: *const veloq_stall_report, user_data: *mut c_void)>;

/// How long a worker may stay in one callback (or one poll of a future) before the
/// watchdog reports it stalled, in nanoseconds; default 100 ms; 0 turns the watchdog
/// (and its thread) off. While a worker is stalled, balanced spawns and spawns from
/// outside threads avoid it, and idle workers steal its injector. Stalls are noticed
/// within a quarter of the threshold after it passed; a parked worker is never stalled.
/// Returns 0, or -EINVAL for a NULL builder.
#[no_mangle]
pub extern "C" fn veloq_builder_stall_threshold(b: *mut veloq_builder, ns: u64) -> c_int {
    configure(b, |b| {
        *b = std::mem::take(b).stall_threshold(Duration::from_nanos(ns));
        Ok(())
    })
}

/// Whether each stall and its end is logged as a line on stderr (default true), e.g.
/// `veloq: worker 1 stalled for 503 ms in task 'parse' (still running)`.
/// Returns 0, or -EINVAL for a NULL builder.
#[no_mangle]
pub extern "C" fn veloq_builder_stall_log(b: *mut veloq_builder, log: bool) -> c_int {
    configure(b, |b| {
        *b = std::mem::take(b).stall_log(log);
        Ok(())
    })
}

/// Calls `fn(report, user_data)` when a stall is noticed and again when it ends. It runs
/// on the runtime's watchdog thread (never a worker), one call at a time; it may call
/// any libveloq function callable from any thread (spawn, stats, dump) and should return
/// quickly (no other worker is watched meanwhile). `user_data` stays the caller's and
/// must stay valid until the runtime is freed. A later call replaces the callback.
/// Returns 0, or -EINVAL (NULL builder or `fn`; the builder is unchanged).
#[no_mangle]
pub extern "C" fn veloq_builder_on_stall(
    b: *mut veloq_builder,
    r#fn: veloq_stall_fn,
    user_data: *mut c_void,
) -> c_int {
    let Some(func) = r#fn else {
        return -libc::EINVAL;
    };
    struct UserData(*mut c_void);
    // SAFETY: the C caller promises `user_data` may be used from the watchdog thread.
    unsafe impl Send for UserData {}
    // SAFETY: as above; calls are made one at a time.
    unsafe impl Sync for UserData {}
    let user_data = UserData(user_data);
    configure(b, move |b| {
        *b = std::mem::take(b).on_stall(move |report: &StallReport| {
            let name = report
                .task
                .as_deref()
                .map(|n| CString::new(n.replace('\0', " ")).unwrap_or_default());
            let c = veloq_stall_report {
                worker: report.worker as u32,
                ended: report.ended as u32,
                running_ns: report.running_for.as_nanos().min(u64::MAX as u128) as u64,
                task_name: name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            };
            let ud = &user_data;
            // SAFETY: the C contract of veloq_builder_on_stall.
            unsafe { func(&c, ud.0) };
        });
        Ok(())
    })
}

// --- statistics ------------------------------------------------------------------------------

/// One worker's counters, filled by `veloq_runtime_stats`. The struct grows at its end
/// in later versions: set `size` to `sizeof(veloq_worker_stats)` before the call; the
/// library writes only the fields that fit (and that it knows) and sets `size` to the
/// bytes it wrote. Counters only grow; they are published once per worker loop turn.
///
/// Task counters count task *starts* by where the task came from: once every spawned
/// task has run, the sum over all workers of `tasks_local + tasks_mesh + tasks_inbox +
/// tasks_injector + tasks_stolen` equals the sum of `tasks_spawned`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct veloq_worker_stats {
    /// In: the caller's `sizeof(veloq_worker_stats)`; out: bytes written.
    pub size: u32,
    /// Optional io_uring set-up flags the worker's ring got (bit 0 SINGLE_ISSUER, bit 1
    /// DEFER_TASKRUN, bit 2 COOP_TASKRUN).
    pub ring_flags: u32,
    /// Tasks started from the local run queue (Rust `spawn_local`, `veloq_spawn_to` a
    /// worker's own index from its callback; balanced work P2C keeps on a worker counts
    /// in `tasks_injector`).
    pub tasks_local: u64,
    /// Tasks started that arrived over the mesh (balanced / targeted from a worker).
    pub tasks_mesh: u64,
    /// Tasks started from the pinned inbox (`veloq_spawn_to` from outside, overflow).
    pub tasks_inbox: u64,
    /// Tasks started from the worker's own injector.
    pub tasks_injector: u64,
    /// Tasks started that were stolen from another worker's injector.
    pub tasks_stolen: u64,
    /// Polls of woken Rust futures after their first (not starts).
    pub polls: u64,
    /// Tasks spawned by this worker's callbacks and tasks, plus tasks spawned from
    /// non-worker threads that were placed on this worker.
    pub tasks_spawned: u64,
    /// Successful steals (each takes a batch).
    pub steals: u64,
    /// Times the worker went to sleep.
    pub parks: u64,
    /// Wake-up system calls made for this worker.
    pub wakeups: u64,
    /// Queued and running work as the balancer sees it.
    pub load: u64,
    /// I/O operations accepted by the worker's ring.
    pub io_submitted: u64,
    /// I/O operations that delivered their final completion.
    pub io_completed: u64,
    /// Completions that named no live operation.
    pub io_stale: u64,
    /// I/O operations waiting for room in the submission queue.
    pub io_backlog: u64,
    /// `io_uring_enter` calls made to submit or reap.
    pub io_enters: u64,
    /// Stalls the watchdog noticed.
    pub stalls: u64,
    /// Nanoseconds spent in stalls that have ended.
    pub stalled_ns: u64,
    /// 1 while the worker is stalled, else 0.
    pub stalled: u64,
    /// Jobs in the local run queue (as last published by the worker).
    pub queue_local: u64,
    /// Jobs in the stealable injector.
    pub queue_injector: u64,
    /// Jobs in the pinned inbox.
    pub queue_inbox: u64,
    /// Jobs waiting in the inbound mesh channels.
    pub queue_mesh: u64,
    /// Parks that waited for a batch of I/O completions (see
    /// `veloq_builder_io_batch_wait`); included in `parks`.
    pub io_batched_parks: u64,
    /// The Linux scheduling policy the worker runs under: `SCHED_BATCH` (3) by default,
    /// else the one it inherited from the thread that built the runtime (`SCHED_OTHER`,
    /// 0, for most; see `veloq_builder_sched_batch`). Written only by libraries that know
    /// it: check that the returned `size` covers it.
    pub sched_policy: u64,
}

/// The part of `veloq_worker_stats` every caller must have room for (`size`, `ring_flags`).
const STATS_HEADER: usize = 8;

/// Fills `*out` with worker `worker`'s counters (see `veloq_worker_stats`): writes
/// min(`out->size`, the library's size) bytes, whole fields only, and sets `out->size` to
/// that. Returns 0; -EINVAL (NULL `rt` or `out`, `worker` out of range, `out->size` < 8;
/// nothing is written). Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_runtime_stats(
    rt: *const veloq_runtime,
    worker: u32,
    out: *mut veloq_worker_stats,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: a non-null `out` has at least its `size` field (caller's promise).
        let size = unsafe { ptr::read_unaligned(out as *const u32) } as usize;
        if size < STATS_HEADER {
            return -libc::EINVAL;
        }
        let Some(s) = rt.inner.worker_stats(worker as usize) else {
            return -libc::EINVAL;
        };
        let full = veloq_worker_stats {
            size: 0,
            ring_flags: s.ring_flags,
            tasks_local: s.tasks_local,
            tasks_mesh: s.tasks_mesh,
            tasks_inbox: s.tasks_inbox,
            tasks_injector: s.tasks_injector,
            tasks_stolen: s.tasks_stolen,
            polls: s.polls,
            tasks_spawned: s.tasks_spawned,
            steals: s.steals,
            parks: s.parks,
            wakeups: s.wakeups,
            load: s.load,
            io_submitted: s.io_submitted,
            io_completed: s.io_completed,
            io_stale: s.io_stale,
            io_backlog: s.io_backlog,
            io_enters: s.io_enters,
            stalls: s.stalls,
            stalled_ns: s.stalled_ns,
            stalled: s.stalled as u64,
            queue_local: s.queues.local,
            queue_injector: s.queues.injector,
            queue_inbox: s.queues.inbox,
            queue_mesh: s.queues.mesh,
            io_batched_parks: s.io_batched_parks,
            sched_policy: s.sched_policy as u64,
        };
        // Whole 8-byte fields only, never past the caller's size or ours.
        let n = size.min(std::mem::size_of::<veloq_worker_stats>()) & !7;
        // SAFETY: `out` has room for `size` >= n bytes (caller's promise); `full` has
        // size_of >= n bytes; the two do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(
                &full as *const veloq_worker_stats as *const u8,
                out as *mut u8,
                n,
            );
            ptr::write_unaligned(out as *mut u32, n as u32);
        }
        0
    })
}

// --- dump -------------------------------------------------------------------------------------

/// Writes a text dump of the runtime to `fd`: per worker, whether it answered, whether it
/// is stalled and what it runs (task name, for how long), its queue depths, then each
/// live Rust task it owns (name, worker, state, age). C callbacks are not tasks; queued
/// ones show in the queue depths, a running one as the worker's running job. Each worker
/// lists its own tasks; one that does not answer within 200 ms (stuck in a job) is
/// reported as "not answering" with its running task's name and how long it has run:
/// the call never waits longer than that. The text format is for people, not parsers.
///
/// Returns 0; -EINVAL (NULL `rt`, `fd` < 0); or the errno of a failed `write`
/// (the dump may then be partly written). Callable from any thread; from a worker
/// callback, that worker's section is made inline and the call blocks that worker up to
/// the bound while the others answer. `fd` stays the caller's (not closed).
#[no_mangle]
pub extern "C" fn veloq_runtime_dump(rt: *const veloq_runtime, fd: c_int) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        if fd < 0 {
            return -libc::EINVAL;
        }
        let text = rt.inner.dump().to_string();
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            // SAFETY: writing from a valid buffer to the caller's fd.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                if e == libc::EINTR {
                    continue;
                }
                return -e;
            }
            rest = &rest[n as usize..];
        }
        0
    })
}
