//! Task groups: members and their I/O, cancelled together, reported by one completion.

use std::ffi::{c_int, c_void};

use super::cq::veloq_cq;
use super::error::VELOQ_EPANIC;
use super::handle;
use super::runtime::veloq_runtime;
use super::task::raw_fn;
use super::task::veloq_task_fn;
use crate::{Placement, TaskGroup};

/// A task group: callback tasks (members) and every worker-side I/O operation
/// (`veloq_read`, `veloq_recv`, ...) started from a member's callback or from the callback
/// of one of the group's operations. Tasks a member spawns with `veloq_spawn*` and
/// operations sent with `veloq_submit` are not in the group. It is cancelled as a whole
/// and completes once. Shutdown does not wait for a group: members already accepted still
/// run (or complete -ECANCELED if the group was cancelled), its operations complete with
/// -ECANCELED, and the group completes once it is closed (`veloq_group_free` closes it,
/// also after the runtime was freed). Its functions are callable from any thread,
/// worker callbacks included (members of the group too), except that `veloq_group_free`
/// must not race with another call on the same handle.
pub struct veloq_group {
    inner: TaskGroup,
}

/// Makes an open group of `rt` into `*out`. Its one completion `{user_data, res, flags 0,
/// worker}` goes to `cq` (none when `cq` is NULL) once the group is closed and every
/// member and operation of it has delivered its final completion: `res` is the first
/// negative value a member returned (in the order members finished), else -ECANCELED if
/// `veloq_group_cancel` was called, else 0; `worker` is the worker that finished last
/// (UINT32_MAX when `veloq_group_close` completed it from another thread). The
/// completion is reserved now: `veloq_cq_free(cq)` returns -EBUSY until it is posted.
///
/// Returns 0; -EINVAL (NULL `rt` or `out`); -ESHUTDOWN once `rt` is shutting down.
/// Release the handle with `veloq_group_free` (which closes the group if needed).
/// Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_group_new(
    rt: *mut veloq_runtime,
    cq: *mut veloq_cq,
    user_data: u64,
    out: *mut *mut veloq_group,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        if rt.inner.handle().is_shutting_down() {
            return -libc::ESHUTDOWN;
        }
        // SAFETY: a non-null cq is live (caller's promise) and cannot be freed while
        // the group's completion is owed (the reservation taken here).
        let cq = unsafe { cq.as_ref() }.map(|c| &c.inner);
        // SAFETY: see above.
        let inner = unsafe { TaskGroup::new(rt.inner.handle(), cq, user_data) };
        // SAFETY: `out` is writable (caller's promise).
        unsafe { *out = Box::into_raw(Box::new(veloq_group { inner })) };
        0
    })
}

/// Adds a member to `g`: `fn(ctx, arg)` runs once on worker `worker` (0..workers, never
/// stolen), or with `worker` -1 on the less loaded of two workers (P2C). Operations it
/// starts with `ctx` belong to the group; its return value counts towards the group's
/// result (no completion of its own). If the group is cancelled before the member starts,
/// `fn` never runs and the member counts as -ECANCELED.
///
/// Returns 0; -EINVAL (NULL `g` or `fn`, `worker` < -1 or out of range, or the group is
/// closed); -ECANCELED (the group was cancelled); -ESHUTDOWN (the runtime is shutting
/// down). On an error nothing changes and `fn` never runs. `arg` stays the caller's and
/// must stay valid until `fn` ran (or the group completed). Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_group_spawn(
    g: *mut veloq_group,
    worker: i32,
    r#fn: veloq_task_fn,
    arg: *mut c_void,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null group is live (caller's promise).
        let Ok(g) = (unsafe { handle(g) }) else {
            return -libc::EINVAL;
        };
        let Some(func) = r#fn else {
            return -libc::EINVAL;
        };
        let placement = match worker {
            -1 => Placement::Balanced,
            w if w >= 0 => Placement::Worker(w as usize),
            _ => return -libc::EINVAL,
        };
        let func = raw_fn(func);
        // SAFETY: the C contract: `arg` stays valid until the callback ran.
        match unsafe { g.inner.spawn_raw(placement, func, arg) } {
            Ok(()) => 0,
            Err(e) => e,
        }
    })
}

/// Cancels `g`: members not started yet complete as -ECANCELED without running; every
/// operation of the group in flight is cancelled on its worker and its callback gets
/// -ECANCELED (unless it finished first); later `veloq_group_spawn` calls and operations
/// started from the group's callbacks are refused with -ECANCELED. Running members are
/// not interrupted. The group still completes only once closed. Returns 0 (also when it
/// was already cancelled or has completed); -EINVAL for NULL. Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_group_cancel(g: *mut veloq_group) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null group is live (caller's promise).
        let Ok(g) = (unsafe { handle(g) }) else {
            return -libc::EINVAL;
        };
        g.inner.cancel();
        0
    })
}

/// Closes `g`: no more members. Its completion is posted once every member and operation
/// is done — from inside this call when nothing is left. Returns 0; -EINVAL (NULL, or
/// already closed). Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_group_close(g: *mut veloq_group) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null group is live (caller's promise).
        let Ok(g) = (unsafe { handle(g) }) else {
            return -libc::EINVAL;
        };
        match g.inner.close() {
            Ok(()) => 0,
            Err(e) => e,
        }
    })
}

/// Releases the handle `g`, closing the group first if it is still open; the group
/// itself finishes and completes as usual. NULL is a no-op. Callable from any thread,
/// once per handle, with no other call on `g` in progress or after it; works after the
/// runtime was freed.
#[no_mangle]
pub extern "C" fn veloq_group_free(g: *mut veloq_group) {
    ffi_boundary!((), {
        if g.is_null() {
            return;
        }
        // SAFETY: made by Box::into_raw in veloq_group_new; the caller hands it back once.
        drop(unsafe { Box::from_raw(g) });
    })
}
