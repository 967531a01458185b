//! Completion queues.

use std::ffi::c_int;
use std::time::Duration;

use super::error::VELOQ_EPANIC;
use super::handle;
use super::runtime::veloq_runtime;
use crate::{CompletionQueue, Cqe};

/// A completion queue: many threads post, any thread polls or waits. It never drops an
/// entry: past its capacity, entries wait in an overflow list and are delivered in order.
/// All its functions are callable from any thread.
pub struct veloq_cq {
    pub(crate) inner: CompletionQueue,
}

/// One completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct veloq_cqe {
    /// The `user_data` given when the work was submitted.
    pub user_data: u64,
    /// The task's return value, or a result (>= 0) / negative errno.
    pub res: i64,
    /// Zero for task completions.
    pub flags: u32,
    /// The worker the task ran on; UINT32_MAX for entries posted with `veloq_cq_post`.
    pub worker: u32,
}

const _: () = assert!(
    std::mem::size_of::<veloq_cqe>() == std::mem::size_of::<Cqe>()
        && std::mem::align_of::<veloq_cqe>() == std::mem::align_of::<Cqe>()
);

/// Views C's output array as the core's entries (same layout, checked above).
///
/// # Safety
/// `out` points to `max` writable entries.
unsafe fn entries<'a>(out: *mut veloq_cqe, max: u32) -> &'a mut [Cqe] {
    // SAFETY: caller's promise; identical layout.
    unsafe { std::slice::from_raw_parts_mut(out.cast::<Cqe>(), max as usize) }
}

/// The largest `max` a poll or wait may ask for (its count must fit the `int` result).
const MAX_BATCH: u32 = i32::MAX as u32;

/// Makes a completion queue holding `capacity` entries (1..=1048576) in its ring before
/// it overflows into a list, and stores it in `*out`. Returns 0; -EINVAL (NULL `rt` or
/// `out`, capacity out of range); -ESHUTDOWN when `rt` is shutting down; -ENOMEM, or
/// -EMFILE when no eventfd can be made. Free it with `veloq_cq_free`.
#[no_mangle]
pub extern "C" fn veloq_cq_new(
    rt: *mut veloq_runtime,
    capacity: u32,
    out: *mut *mut veloq_cq,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null runtime is live (caller's promise).
        let Ok(rt) = (unsafe { handle(rt) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() || capacity == 0 || capacity > CompletionQueue::MAX_CAPACITY {
            return -libc::EINVAL;
        }
        if rt.inner.is_shutting_down() {
            return -libc::ESHUTDOWN;
        }
        match CompletionQueue::new(capacity) {
            Ok(inner) => {
                // SAFETY: `out` checked non-null.
                unsafe { *out = Box::into_raw(Box::new(veloq_cq { inner })) };
                0
            }
            Err(e) => -crate::OsError::errno_of(&e),
        }
    })
}

/// Copies up to `max` waiting entries, oldest first, into `out` and returns how many
/// (0 when none wait). Never blocks. -EINVAL for NULL `cq` or `out`, or `max` 0.
#[no_mangle]
pub extern "C" fn veloq_cq_poll(cq: *mut veloq_cq, out: *mut veloq_cqe, max: u32) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null cq is live (caller's promise).
        let Ok(cq) = (unsafe { handle(cq) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() || max == 0 {
            return -libc::EINVAL;
        }
        // SAFETY: `out` holds `max` entries (caller's promise).
        cq.inner.poll(unsafe { entries(out, max.min(MAX_BATCH)) }) as i32
    })
}

/// Waits until at least `min` entries (at least 1, at most `max`) wait, then copies up
/// to `max` of them into `out` and returns how many. When `timeout_ns` (< 0: no limit)
/// passes first it returns what has arrived if anything did, else -ETIMEDOUT. -EINVAL
/// for NULL `cq` or `out`, `max` 0, or `min` > `max`. Blocks the calling thread (not a
/// worker callback's: that would stall the worker).
#[no_mangle]
pub extern "C" fn veloq_cq_wait(
    cq: *mut veloq_cq,
    out: *mut veloq_cqe,
    max: u32,
    min: u32,
    timeout_ns: i64,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null cq is live (caller's promise).
        let Ok(cq) = (unsafe { handle(cq) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() || max == 0 || min > max {
            return -libc::EINVAL;
        }
        let timeout = (timeout_ns >= 0).then(|| Duration::from_nanos(timeout_ns as u64));
        // SAFETY: `out` holds `max` entries (caller's promise).
        let out = unsafe { entries(out, max.min(MAX_BATCH)) };
        match cq.inner.wait(out, min.max(1) as usize, timeout) {
            Ok(n) => n as i32,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => -libc::ETIMEDOUT,
            Err(e) => -crate::OsError::errno_of(&e),
        }
    })
}

/// A file descriptor that polls readable (EPOLLIN) exactly while entries wait; add it
/// to your own epoll/poll loop and call `veloq_cq_poll` when it fires. Owned by the
/// queue (do not close or read it). -EINVAL for NULL. Readiness is kept from the first
/// call on (entries already waiting make it readable at once): a queue whose fd was never
/// asked for costs its posts and polls no eventfd system call.
#[no_mangle]
pub extern "C" fn veloq_cq_fd(cq: *const veloq_cq) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null cq is live (caller's promise).
        unsafe { handle(cq) }.map_or_else(|e| e, |cq| cq.inner.fd())
    })
}

/// Posts the entry `{user_data, res, flags 0, worker UINT32_MAX}` from any thread.
/// Never fails for a valid queue and never drops; costs no system call unless the
/// queue's consumer may be asleep. Returns 0, or -EINVAL for NULL.
#[no_mangle]
pub extern "C" fn veloq_cq_post(cq: *mut veloq_cq, user_data: u64, res: i64) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null cq is live (caller's promise).
        let Ok(cq) = (unsafe { handle(cq) }) else {
            return -libc::EINVAL;
        };
        cq.inner.post(Cqe {
            user_data,
            res,
            flags: 0,
            worker: u32::MAX,
        });
        0
    })
}

/// Frees the queue and any entries still in it, and closes its fd. Returns 0 (also for
/// NULL); -EBUSY, changing nothing, while completions of accepted submissions are still
/// owed to it (free it after they arrived, or after the runtime shut down). No other
/// call may use `cq` during or after a successful free.
#[no_mangle]
pub extern "C" fn veloq_cq_free(cq: *mut veloq_cq) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null cq is live (caller's promise).
        let Ok(queue) = (unsafe { handle(cq) }) else {
            return 0;
        };
        if !queue.inner.quiesce() {
            return -libc::EBUSY;
        }
        // SAFETY: made by Box::into_raw in veloq_cq_new; nothing is owed to it.
        drop(unsafe { Box::from_raw(cq) });
        0
    })
}
