//! Callback-style submission of [`RawOp`]s: on the current worker with a callback, or
//! from any thread with a completion queue. The C I/O API is a thin layer over these.

use std::ffi::c_void;

use super::buf_ring::BufRing;
use super::op_table::{IoCallback, OpId, Target};
use super::ops::{validate, validate_deadline, RawOp};
use crate::runtime::completion::{CompletionQueue, Cqe};
use crate::runtime::{Handle, Placement, RawTask, RuntimeContext, SpawnErrorKind};

impl RuntimeContext {
    /// Submits `op` on this worker's ring. Returns the operation's id (> 0); then
    /// `cb(ctx, res, flags, arg)` runs on this worker once per completion: once for a
    /// single-shot operation, and for a multishot one with `flags & 1` (more follow) on
    /// every completion but the last. Errors (a negative errno, and `cb` never runs):
    /// -EINVAL for an invalid op, -ESHUTDOWN once shutdown has started. A
    /// `RawOp::RecvMulti` whose `group` is a ring of this worker made by
    /// [`buf_ring_new`](Self::buf_ring_new) keeps that ring in use
    /// ([`buf_ring_free`](Self::buf_ring_free) refuses) until its final completion.
    ///
    /// # Safety
    /// `op`'s pointers must stay valid until the final callback; `cb` must be safe to
    /// call with `arg` on this thread.
    // Always inlined: a caller submitting a known operation (each C call, a Rust loop)
    // gets the driver's fast path with that operation's checks and entry folded in (the
    // group, backlog and buffer-ring paths stay out of line, and fold away for other
    // operations).
    #[inline(always)]
    pub unsafe fn submit_io(
        &self,
        op: RawOp,
        cb: IoCallback,
        arg: *mut c_void,
    ) -> Result<u64, i32> {
        // SAFETY: forwarded promise.
        unsafe { self.submit_io_inner(op, None, cb, arg) }
    }

    /// [`submit_io`](Self::submit_io) with a deadline: when `timeout_ns` nanoseconds
    /// pass before the operation completes, the kernel cancels it (`IORING_OP_LINK_TIMEOUT`)
    /// and `cb` gets -ECANCELED (an operation the kernel cannot interrupt, such as a
    /// buffered file read under way, completes with its own result). Besides
    /// `submit_io`'s errors: -EINVAL for a `RawOp::Timeout` or a multishot operation.
    ///
    /// # Safety
    /// As [`submit_io`](Self::submit_io).
    pub unsafe fn submit_io_with_timeout(
        &self,
        op: RawOp,
        timeout_ns: u64,
        cb: IoCallback,
        arg: *mut c_void,
    ) -> Result<u64, i32> {
        // SAFETY: forwarded promise.
        unsafe { self.submit_io_inner(op, Some(timeout_ns), cb, arg) }
    }

    #[inline(always)]
    unsafe fn submit_io_inner(
        &self,
        op: RawOp,
        timeout_ns: Option<u64>,
        cb: IoCallback,
        arg: *mut c_void,
    ) -> Result<u64, i32> {
        // SAFETY: forwarded promise (a pool operation's buffer is alive).
        let op = unsafe { op.resolve_pool(&self.buffers) };
        let id = if !self.group.get().is_null() {
            // SAFETY: forwarded promise.
            unsafe { self.submit_io_in_group(&op, timeout_ns, cb, arg) }?
        } else {
            self.driver
                .borrow_mut()
                .submit_raw(&op, Target::Callback { cb, arg }, timeout_ns)?
                .raw()
        };
        if let RawOp::RecvMulti { group, .. } = op {
            self.keep_buf_ring(id, group);
        }
        Ok(id)
    }

    /// A multishot receive `id` just accepted keeps ring `group` (when it is one of this
    /// worker's C rings) until its final completion.
    #[cold]
    #[inline(never)]
    fn keep_buf_ring(&self, id: u64, group: u16) {
        // Accepted and not completed yet: completions run only from the worker loop.
        if let Some(op) = OpId::from_raw(id) {
            self.driver.borrow_mut().keep_buf_ring(op, group);
        }
    }

    /// [`submit_io`](Self::submit_io) inside a task group's callback: the operation
    /// joins the group.
    ///
    /// # Safety
    /// As `submit_io`.
    #[cold]
    #[inline(never)]
    unsafe fn submit_io_in_group(
        &self,
        op: &RawOp,
        timeout_ns: Option<u64>,
        cb: IoCallback,
        arg: *mut c_void,
    ) -> Result<u64, i32> {
        match crate::runtime::group::current(self) {
            // SAFETY: forwarded promise.
            Some(group) => unsafe {
                crate::runtime::group::submit_in_group(self, group, op, timeout_ns, cb, arg)
            },
            None => unreachable!("called with a current group"),
        }
    }

    /// Hands the I/O queued in this worker's submission queue to the kernel now, in one
    /// `io_uring_enter`, rather than with the worker's batch at the end of its turn (or in
    /// its park). For direct (`O_DIRECT`) file I/O: a read or write flushed as soon as it
    /// is made reaches the device at once, where a batch is held back (plugged) by the
    /// block layer and may be served all together by a virtual disk; [`crate::fs::File`]
    /// does this itself for a file opened with `O_DIRECT`. Socket and buffered file I/O
    /// are better left to the batch (one system call for many operations). Operations
    /// waiting in the backlog (a full submission queue) are not handed over here; they go
    /// in as room frees. Returns how many entries the kernel took, possibly fewer than
    /// were queued; 0 when none were queued, when the enter failed (EINTR, EBUSY, EAGAIN,
    /// ...) or when called from inside the driver (a buffer's `Drop` run by it); what was
    /// not taken goes in with the batch as usual.
    pub fn flush_io(&self) -> usize {
        // Not borrowed between jobs, nor while a task or a C callback runs; a caller
        // nested in the driver (none today) gets the batch.
        self.driver
            .try_borrow_mut()
            .map_or(0, |mut driver| driver.flush_queued())
    }

    /// Asks for operation `id` of this worker to be cancelled. It completes once more,
    /// with -ECANCELED unless it finished first. -ENOENT when `id` names no live
    /// operation of this worker (finished, never existed, or another worker's);
    /// -EALREADY when a cancel is already on its way.
    pub fn cancel_io(&self, id: u64) -> Result<(), i32> {
        let id = OpId::from_raw(id).ok_or(-libc::ENOENT)?;
        self.driver.borrow_mut().cancel(id)
    }
}

/// Provided-buffer rings for callback-style multishot receives: the worker's driver owns
/// them, by buffer group id (what `RawOp::RecvMulti` names).
impl RuntimeContext {
    /// Registers a ring of `count` buffers of `size` bytes with this worker's io_uring
    /// ring ([`BufRing::new`]) and keeps it here until [`buf_ring_free`]
    /// (Self::buf_ring_free) or the worker's end. Returns its group id. Errors (nothing
    /// is registered then): -EINVAL (`count` not a power of two in 1..=32768, `size`
    /// 0), -EOPNOTSUPP (the kernel has no provided-buffer rings: before Linux 5.19),
    /// -ENOMEM, or the kernel's errno.
    pub(crate) fn buf_ring_new(&self, count: usize, size: usize) -> Result<u16, i32> {
        let ring = BufRing::new(count, size).map_err(|e| match e.raw_os_error() {
            // The shape is checked before the kernel is asked, so a kernel EINVAL means
            // it does not know the request.
            Some(libc::EINVAL) => -libc::EOPNOTSUPP,
            _ => -crate::runtime::OsError::errno_of(&e),
        })?;
        let group = ring.bgid();
        self.driver.borrow_mut().adopt_buf_ring(ring);
        Ok(group)
    }

    /// Lends buffer `bid` of group `group`'s ring to the caller ([`BufRing::lend`]):
    /// its address. -ENOENT when this worker has no such ring; -EINVAL, -EALREADY as
    /// `lend`.
    ///
    /// The caller's promise (not checked): a completion of a receive on the group named
    /// `bid`, and it was not lent since.
    pub(crate) fn buf_ring_take(&self, group: u16, bid: u16) -> Result<*mut u8, i32> {
        let driver = self.driver.borrow();
        driver.buf_ring(group).ok_or(-libc::ENOENT)?.lend(bid)
    }

    /// Gives lent buffer `bid` back to group `group`'s ring ([`BufRing::recycle`]).
    /// -ENOENT when this worker has no such ring; -EINVAL when `bid` is not lent.
    pub(crate) fn buf_ring_recycle(&self, group: u16, bid: u16) -> Result<(), i32> {
        let driver = self.driver.borrow();
        driver.buf_ring(group).ok_or(-libc::ENOENT)?.recycle(bid)
    }

    /// Unregisters group `group`'s ring and frees its memory. -ENOENT when this worker
    /// has no such ring; -EBUSY while a buffer is lent or a multishot receive on the
    /// group has not delivered its final completion (the ring stays as it was).
    pub(crate) fn buf_ring_free(&self, group: u16) -> Result<(), i32> {
        let ring = self.driver.borrow_mut().release_buf_ring(group)?;
        // Dropped once the driver is no longer borrowed: the drop unregisters it.
        drop(ring);
        Ok(())
    }
}

/// The worker of runtime `runtime` whose pool made the buffer of a validated
/// [`RawOp::ReadPool`] / [`RawOp::WritePool`] (None for any other operation, a buffer of
/// no worker's pool, or of another runtime's).
///
/// # Safety
/// A pool operation's buffer pointer is alive (and non-null: validated).
unsafe fn pool_owner(op: &RawOp, runtime: usize) -> Option<usize> {
    match *op {
        // SAFETY: the caller's promise.
        RawOp::ReadPool { pool, .. } | RawOp::WritePool { pool, .. } => {
            unsafe { &*pool }.worker_of(runtime)
        }
        _ => None,
    }
}

/// How a host-side submission goes in ([`Handle::submit_io_with`]); the default is
/// [`Handle::submit_io`]'s: no deadline, with the worker's batch. Start from `default()`
/// and set fields (more may come).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubmitOptions {
    /// A deadline in nanoseconds from the submission, as
    /// [`Handle::submit_io_with_timeout`]; None: none.
    pub timeout_ns: Option<u64>,
    /// The worker hands the operation to the kernel as soon as it takes it, with an
    /// `io_uring_enter` made right away (which also takes whatever else it had queued),
    /// rather than with its batch at the end of its turn; one that has to wait in the
    /// backlog (a full submission queue) still goes in with the backlog. For direct
    /// (`O_DIRECT`) file I/O, see [`RuntimeContext::flush_io`].
    pub submit_now: bool,
}

/// A host-side submission travelling to its worker.
struct HostIo {
    op: RawOp,
    options: SubmitOptions,
    cq: *const CompletionQueue,
    user_data: u64,
}

unsafe extern "C" fn run_host_io(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the box made in `submit_io`, run exactly once.
    let io = unsafe { Box::from_raw(arg.cast::<HostIo>()) };
    // SAFETY: the worker passes its own live context.
    let cx = unsafe { &*cx };
    let target = Target::Queue {
        cq: io.cq,
        user_data: io.user_data,
    };
    // SAFETY: the host's promise: the memory the operation names (a pool buffer among
    // it) stays valid until its completion.
    let op = unsafe { io.op.resolve_pool(&cx.buffers) };
    let mut driver = cx.driver.borrow_mut();
    let submitted = driver.submit_raw(&op, target, io.options.timeout_ns);
    if submitted.is_ok() && io.options.submit_now {
        driver.flush_queued();
    }
    drop(driver);
    if let Err(mut res) = submitted {
        if res == -libc::ESHUTDOWN {
            // Accepted before shutdown, cancelled by it like the operations in flight.
            res = -libc::ECANCELED;
        }
        // SAFETY: the queue holds the reservation taken in `submit_io`.
        let cq = unsafe { &*io.cq };
        cq.post_reserved(Cqe {
            user_data: io.user_data,
            res: res as i64,
            flags: 0,
            worker: cx.worker_index() as u32,
        });
    }
    0
}

impl Handle {
    /// Routes `op` to a worker's ring (`placement`: balanced, or a given worker) from
    /// any thread. Once accepted (`Ok`), exactly one completion `{user_data, res,
    /// flags: 0, worker}` is posted to `cq` for a single-shot operation; a multishot one
    /// posts entries with `flags & 1` and ends with one without. Errors: -EINVAL (bad
    /// op or worker), -ESHUTDOWN; then nothing is posted.
    ///
    /// # Safety
    /// `op`'s pointers must stay valid, and usable from a worker thread, until the final
    /// completion was posted; `cq` must stay alive until then (its free refuses while
    /// completions are owed).
    pub unsafe fn submit_io(
        &self,
        placement: Placement,
        op: RawOp,
        cq: &CompletionQueue,
        user_data: u64,
    ) -> Result<(), i32> {
        // SAFETY: forwarded promise.
        unsafe { self.submit_io_with(placement, op, SubmitOptions::default(), cq, user_data) }
    }

    /// [`submit_io`](Self::submit_io) with a deadline, as
    /// [`RuntimeContext::submit_io_with_timeout`]: the operation is cancelled (res
    /// -ECANCELED) when `timeout_ns` pass before it completes. -EINVAL besides for a
    /// `RawOp::Timeout` or a multishot operation.
    ///
    /// # Safety
    /// As [`submit_io`](Self::submit_io).
    pub unsafe fn submit_io_with_timeout(
        &self,
        placement: Placement,
        op: RawOp,
        timeout_ns: u64,
        cq: &CompletionQueue,
        user_data: u64,
    ) -> Result<(), i32> {
        let options = SubmitOptions {
            timeout_ns: Some(timeout_ns),
            ..SubmitOptions::default()
        };
        // SAFETY: forwarded promise.
        unsafe { self.submit_io_with(placement, op, options, cq, user_data) }
    }

    /// [`submit_io`](Self::submit_io) as `options` say: with a deadline (as
    /// [`submit_io_with_timeout`](Self::submit_io_with_timeout), with its errors), and/or
    /// handed to the kernel as soon as the worker takes it (`submit_now`).
    ///
    /// # Safety
    /// As [`submit_io`](Self::submit_io).
    pub unsafe fn submit_io_with(
        &self,
        placement: Placement,
        op: RawOp,
        options: SubmitOptions,
        cq: &CompletionQueue,
        user_data: u64,
    ) -> Result<(), i32> {
        if options.timeout_ns.is_some() {
            validate_deadline(&op)?;
        }
        validate(&op)?;
        let placement = match placement {
            Placement::Any | Placement::Balanced => {
                // A pool buffer's own worker (of this runtime), where it is registered.
                // (A freed runtime's token may be reused: the bound keeps such a buffer's
                // stale index in range; its operation is then simply a plain one.)
                // SAFETY: the caller's promise: the memory `op` names is alive; validated.
                match unsafe { pool_owner(&op, self.registry().token()) } {
                    Some(w) if w < self.workers() => Placement::Worker(w),
                    _ => Placement::Balanced,
                }
            }
            p => p,
        };
        cq.reserve();
        let io = Box::into_raw(Box::new(HostIo {
            op,
            options,
            cq,
            user_data,
        }));
        let task = RawTask {
            func: run_host_io,
            arg: io.cast(),
            cq: std::ptr::null(),
            user_data: 0,
        };
        // SAFETY: run_host_io takes the box exactly once; the caller's promises cover
        // the op's memory and the queue.
        match unsafe { self.spawn_raw(placement, task) } {
            Ok(()) => Ok(()),
            Err(e) => {
                // SAFETY: refused, so the box was never handed to a worker.
                drop(unsafe { Box::from_raw(io) });
                cq.release_reservation();
                Err(match e.kind() {
                    SpawnErrorKind::Shutdown => -libc::ESHUTDOWN,
                    _ => -libc::EINVAL,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runtime;
    use std::sync::Arc;
    use std::time::Duration;

    /// Whether the worker's ring holds queued entries right after a host submission's job
    /// ran: yes with the batch, no when the submission asked to go in `now`. Both complete.
    #[test]
    fn a_host_submission_marked_now_is_with_the_kernel_when_its_job_returns() {
        let rt = Runtime::builder().workers(1).build().expect("runtime");
        let cq = Arc::new(CompletionQueue::new(8).expect("queue"));
        let q = cq.clone();
        let job = rt
            .spawn_local_to(0, move || async move {
                let mut queued = Vec::new();
                for now in [false, true] {
                    q.reserve();
                    let io = Box::new(HostIo {
                        op: RawOp::Nop,
                        options: SubmitOptions {
                            timeout_ns: None,
                            submit_now: now,
                        },
                        cq: &*q,
                        user_data: u64::from(now),
                    });
                    RuntimeContext::with_current(|cx| {
                        let cx = cx.expect("on a worker");
                        // SAFETY: run as the worker runs a host submission's job: the
                        // box once, with this worker's own context; the queue outlives
                        // the operation (the test waits for its completion).
                        unsafe { run_host_io(cx as *const _ as *mut _, Box::into_raw(io).cast()) };
                        queued.push(cx.driver.borrow_mut().has_queued());
                    });
                }
                queued
            })
            .expect("spawn");
        assert_eq!(rt.block_on(job).expect("join"), [true, false]);
        let mut got = [Cqe::default(); 4];
        let mut n = 0;
        while n < 2 {
            n += cq
                .wait(&mut got[n..], 1, Some(Duration::from_secs(10)))
                .expect("a completion did not come");
        }
        let mut seen: Vec<(u64, i64)> = got[..n].iter().map(|e| (e.user_data, e.res)).collect();
        seen.sort();
        assert_eq!(seen, [(0, 0), (1, 0)]);
        rt.shutdown(Some(Duration::from_secs(10)))
            .expect("shutdown");
    }
}
