//! Task groups: callback tasks (members) and the I/O operations they start, cancelled
//! together and reported by one completion. The logic behind the C `veloq_group_*` API.
//!
//! # Membership
//! A member is a callback spawned with [`TaskGroup::spawn_raw`]. While a member's
//! callback runs, and while the callback of one of the group's operations runs, the
//! worker's context names the group as *current*; every operation submitted with
//! [`RuntimeContext::submit_io`] meanwhile belongs to the group (so chains of operations
//! stay in it). Tasks spawned from a member (`spawn_raw`, `veloq_spawn*`) and host-side
//! submissions (`Handle::submit_io`, `veloq_submit`) do not; a member may add members with
//! [`TaskGroup::spawn_raw`] while the group is open.
//!
//! # Completion
//! The group completes once: when it is closed and every member and every operation of
//! it has delivered its final completion. Its entry `{user_data, res, flags 0, worker}`
//! goes to the queue given at creation (reserved then, so the queue cannot be freed
//! while it is owed): `res` is the first negative result a member returned (in the order
//! members finished), else -ECANCELED when the group was cancelled, else 0. `worker` is
//! the worker that finished last, or UINT32_MAX when `close` completed it from a host
//! thread.
//!
//! # Cancellation
//! [`TaskGroup::cancel`] marks the group cancelled (members not started yet complete with
//! -ECANCELED without running, new members and operations are refused with -ECANCELED)
//! and sends to every worker holding operations of the group a pinned job that cancels
//! them there (the I/O driver is worker-local); they complete with -ECANCELED unless they
//! finished first. Stale ids are harmless: an operation id names one use of a slot.
//!
//! # Shutdown
//! Members accepted before shutdown still run once, operations are cancelled by it
//! (-ECANCELED) and their callbacks run; the group still completes once it is closed
//! (dropping the [`TaskGroup`] closes it). Shutdown never waits for a group: a group left
//! open only holds its queue's reservation.

use std::collections::HashSet;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard};

use super::completion::{CompletionQueue, Cqe};
use super::context::{worker_index, RuntimeContext};
use super::job::{RawTask, RawTaskFn};
use super::runtime::{Handle, Placement, SpawnErrorKind};
use crate::io::{IoCallback, RawOp, CQE_F_MORE};

/// A group of callback tasks and their I/O. See the [module docs](self).
///
/// Every method is callable from any thread, including worker callbacks (members of this
/// group too). Dropping it closes the group if it was not closed; the group itself lives
/// on until its completion was posted.
pub struct TaskGroup {
    inner: Arc<GroupInner>,
}

pub(crate) struct GroupInner {
    handle: Handle,
    cq: *const CompletionQueue,
    user_data: u64,
    state: Mutex<GroupState>,
}

// SAFETY: `cq` is only used to post the one reserved completion; `TaskGroup::new`'s
// caller promised it stays alive (and usable from any thread) until then.
unsafe impl Send for GroupInner {}
// SAFETY: as above; everything else is behind the mutex.
unsafe impl Sync for GroupInner {}

struct GroupState {
    /// Members accepted and not finished, plus operations not finally completed.
    pending: usize,
    closed: bool,
    cancelled: bool,
    completed: bool,
    /// The first negative member result, 0 while none.
    first_error: i64,
    /// Live operations: (worker, op id).
    ops: HashSet<(usize, u64)>,
}

fn lock(m: &Mutex<GroupState>) -> MutexGuard<'_, GroupState> {
    // No user code runs under the lock; the state is consistent even if poisoned.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskGroup {
    /// An open group of `handle`'s runtime whose one completion goes to `cq` (none when
    /// `cq` is None) with `user_data`. Takes the queue's reservation now.
    ///
    /// # Safety
    /// `cq` must stay alive until the group's completion was posted (a C queue's free
    /// refuses while it is owed).
    pub unsafe fn new(handle: Handle, cq: Option<&CompletionQueue>, user_data: u64) -> TaskGroup {
        if let Some(cq) = cq {
            cq.reserve();
        }
        TaskGroup {
            inner: Arc::new(GroupInner {
                handle,
                cq: cq.map_or(std::ptr::null(), |c| c as *const _),
                user_data,
                state: Mutex::new(GroupState {
                    pending: 0,
                    closed: false,
                    cancelled: false,
                    completed: false,
                    first_error: 0,
                    ops: HashSet::new(),
                }),
            }),
        }
    }

    /// Adds a member: `func(ctx, arg)` runs once on a worker (`placement`: `Balanced`,
    /// `Worker(i)` or `Any`), with the group current, and its return value counts towards
    /// the group's result. After [`cancel`](Self::cancel) a member that has not started
    /// completes with -ECANCELED and `func` never runs.
    ///
    /// Errors (then `func` never runs and nothing changes): -EINVAL when the group is
    /// closed or the worker is out of range; -ECANCELED when it was cancelled;
    /// -ESHUTDOWN once the runtime is shutting down.
    ///
    /// # Safety
    /// `func` may be called with `arg` on a worker thread (that worker's, for `Worker`).
    pub unsafe fn spawn_raw(
        &self,
        placement: Placement,
        func: RawTaskFn,
        arg: *mut c_void,
    ) -> Result<(), i32> {
        if let Placement::Worker(w) = placement {
            if w >= self.inner.handle.workers() {
                return Err(-libc::EINVAL);
            }
        }
        {
            let mut st = lock(&self.inner.state);
            if st.closed {
                return Err(-libc::EINVAL);
            }
            if st.cancelled {
                return Err(-libc::ECANCELED);
            }
            st.pending += 1;
        }
        let member = Box::into_raw(Box::new(Member {
            group: self.inner.clone(),
            func,
            arg,
        }));
        let task = RawTask {
            func: run_member,
            arg: member.cast(),
            cq: std::ptr::null(),
            user_data: 0,
        };
        // SAFETY: run_member takes the box exactly once; the caller's promise covers
        // `func` and `arg`.
        match unsafe { self.inner.handle.spawn_raw(placement, task) } {
            Ok(()) => Ok(()),
            Err(e) => {
                // SAFETY: refused, so the box never reached a worker.
                drop(unsafe { Box::from_raw(member) });
                self.inner.settle(|_| {});
                Err(match e.kind() {
                    SpawnErrorKind::Shutdown => -libc::ESHUTDOWN,
                    _ => -libc::EINVAL,
                })
            }
        }
    }

    /// Cancels the group (see the module docs). Idempotent; does nothing once the group
    /// completed.
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// No more members; the group completes once everything in it is done (at once when
    /// nothing is). -EINVAL when it was already closed.
    pub fn close(&self) -> Result<(), i32> {
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(-libc::EINVAL);
        }
        st.closed = true;
        self.inner.maybe_complete(st);
        Ok(())
    }

    /// Whether the group's completion was posted.
    pub fn is_completed(&self) -> bool {
        lock(&self.inner.state).completed
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl std::fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("TaskGroup")
            .field("pending", &st.pending)
            .field("closed", &st.closed)
            .field("cancelled", &st.cancelled)
            .field("completed", &st.completed)
            .finish()
    }
}

impl GroupInner {
    /// One member or operation is done: `f` records what it leaves behind.
    fn settle(&self, f: impl FnOnce(&mut GroupState)) {
        let mut st = lock(&self.state);
        f(&mut st);
        st.pending -= 1;
        self.maybe_complete(st);
    }

    /// Posts the group's completion if it is closed and nothing is pending.
    fn maybe_complete(&self, mut st: MutexGuard<'_, GroupState>) {
        if !st.closed || st.pending > 0 || st.completed {
            return;
        }
        st.completed = true;
        let res = if st.first_error < 0 {
            st.first_error
        } else if st.cancelled {
            -libc::ECANCELED as i64
        } else {
            0
        };
        drop(st);
        // SAFETY: a non-null queue holds the reservation taken in `new` (the caller
        // promised it stays alive until this post).
        if let Some(cq) = unsafe { self.cq.as_ref() } {
            cq.post_reserved(Cqe {
                user_data: self.user_data,
                res,
                flags: 0,
                worker: worker_index().map_or(u32::MAX, |w| w as u32),
            });
        }
    }

    fn cancel(self: &Arc<Self>) {
        let workers: Vec<usize> = {
            let mut st = lock(&self.state);
            if st.cancelled || st.completed {
                return;
            }
            st.cancelled = true;
            let mut w: Vec<usize> = st.ops.iter().map(|&(w, _)| w).collect();
            w.sort_unstable();
            w.dedup();
            w
        };
        for w in workers {
            let task = RawTask {
                func: cancel_ops_here,
                arg: Arc::into_raw(self.clone()) as *mut c_void,
                cq: std::ptr::null(),
                user_data: 0,
            };
            // SAFETY: cancel_ops_here takes the Arc exactly once and runs on worker `w`.
            if unsafe { self.handle.spawn_raw(Placement::Worker(w), task) }.is_err() {
                // Shutdown: it cancels every operation itself.
                // SAFETY: refused, so this reference was never handed over.
                drop(unsafe { Arc::from_raw(task.arg as *const GroupInner) });
            }
        }
    }
}

/// A member on its way to a worker.
struct Member {
    group: Arc<GroupInner>,
    func: RawTaskFn,
    arg: *mut c_void,
}

/// Makes `group` the context's current group while `f` runs (restored even on unwind).
fn with_group<R>(cx: &RuntimeContext, group: &Arc<GroupInner>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a RuntimeContext, *const GroupInner);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.group.set(self.1);
        }
    }
    let _restore = Restore(cx, cx.group.replace(Arc::as_ptr(group)));
    f()
}

unsafe extern "C" fn run_member(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the box made in `spawn_raw`, run exactly once.
    let m = unsafe { Box::from_raw(arg.cast::<Member>()) };
    // SAFETY: the worker passes its own live context.
    let cx_ref = unsafe { &*cx };
    let cancelled = lock(&m.group.state).cancelled;
    let res = if cancelled {
        -libc::ECANCELED as i64
    } else {
        // SAFETY: the promise of `spawn_raw`: `func` may be called with `arg` here.
        with_group(cx_ref, &m.group, || unsafe { (m.func)(cx, m.arg) })
    };
    m.group.settle(|st| {
        if res < 0 && st.first_error == 0 {
            st.first_error = res;
        }
    });
    res
}

/// Runs on a worker after `cancel`: cancels that worker's operations of the group.
unsafe extern "C" fn cancel_ops_here(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the reference made in `cancel`, taken exactly once.
    let group = unsafe { Arc::from_raw(arg as *const GroupInner) };
    // SAFETY: the worker passes its own live context.
    let cx = unsafe { &*cx };
    let ids: Vec<u64> = lock(&group.state)
        .ops
        .iter()
        .filter(|&&(w, _)| w == cx.worker_index())
        .map(|&(_, id)| id)
        .collect();
    for id in ids {
        // -ENOENT / -EALREADY: it finished meanwhile, or a cancel is on its way.
        let _ = cx.cancel_io(id);
    }
    0
}

/// An operation of a group: the caller's callback, wrapped.
struct GroupOp {
    group: Arc<GroupInner>,
    cb: IoCallback,
    arg: *mut c_void,
    id: u64,
}

/// The current group of `cx`, if a member or group operation callback is running.
pub(crate) fn current(cx: &RuntimeContext) -> Option<Arc<GroupInner>> {
    let p = cx.group.get();
    if p.is_null() {
        return None;
    }
    // SAFETY: `group` is set only while a callback holding an Arc to it runs on this
    // thread (`with_group`), so the pointer is a live Arc's.
    let borrowed = ManuallyDrop::new(unsafe { Arc::from_raw(p) });
    Some(Arc::clone(&borrowed))
}

/// Submits `op` as an operation of `group` on `cx`'s worker (see
/// [`RuntimeContext::submit_io`]). -ECANCELED once the group was cancelled.
///
/// # Safety
/// As `RuntimeContext::submit_io`.
pub(crate) unsafe fn submit_in_group(
    cx: &RuntimeContext,
    group: Arc<GroupInner>,
    op: &RawOp,
    timeout_ns: Option<u64>,
    cb: IoCallback,
    arg: *mut c_void,
) -> Result<u64, i32> {
    // Under the lock, so a concurrent `cancel` either sees this operation or refuses it.
    let mut st = lock(&group.state);
    if st.cancelled {
        return Err(-libc::ECANCELED);
    }
    let wrapped = Box::into_raw(Box::new(GroupOp {
        group: group.clone(),
        cb,
        arg,
        id: 0,
    }));
    let target = crate::io::op_table::Target::Callback {
        cb: run_group_op,
        arg: wrapped.cast(),
    };
    match cx.driver.borrow_mut().submit_raw(op, target, timeout_ns) {
        Ok(id) => {
            // SAFETY: the box is ours until its final callback, which cannot run before
            // this call returns.
            unsafe { (*wrapped).id = id.raw() };
            st.pending += 1;
            st.ops.insert((cx.worker_index(), id.raw()));
            Ok(id.raw())
        }
        Err(e) => {
            // SAFETY: refused, so the driver never took the box.
            drop(unsafe { Box::from_raw(wrapped) });
            Err(e)
        }
    }
}

unsafe extern "C" fn run_group_op(cx: *mut RuntimeContext, res: i64, flags: u32, arg: *mut c_void) {
    let op = arg.cast::<GroupOp>();
    // SAFETY: the box made in `submit_in_group`, alive until the final completion below.
    let (group, cb, user_arg) = unsafe { ((*op).group.clone(), (*op).cb, (*op).arg) };
    // SAFETY: the worker passes its own live context.
    let cx_ref = unsafe { &*cx };
    // SAFETY: the caller's promise to `submit_io`: `cb` may be called with its `arg` here.
    with_group(cx_ref, &group, || unsafe { cb(cx, res, flags, user_arg) });
    if flags & CQE_F_MORE == 0 {
        // SAFETY: the final completion: nothing uses the box any more.
        let op = unsafe { Box::from_raw(op) };
        let key = (cx_ref.worker_index(), op.id);
        group.settle(|st| {
            st.ops.remove(&key);
        });
    }
}
