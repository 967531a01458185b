//! Join handles: how a spawner gets a task's output.
//!
//! [`JoinHandle`] is `Send` and may be awaited on any thread; its rendezvous with the task
//! is [`SharedJoin`], an `AtomicU8` state machine. [`LocalJoinHandle`] never leaves the
//! worker, so its rendezvous ([`LocalJoin`]) is plain cells with no atomics.

use std::any::Any;
use std::cell::{Cell, UnsafeCell as StdUnsafeCell};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicU32, AtomicU8, UnsafeCell};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

use super::coop;
use super::executor::spawner::ExecutorRegistry;
use super::task::TaskRef;
use std::sync::Arc;

/// Why a task produced no output.
pub enum JoinError {
    /// The task was aborted, or the runtime shut down before it finished; its future
    /// was dropped on its worker.
    Cancelled,
    /// The task panicked; the payload is the panic's. Its worker kept running.
    Panicked(Box<dyn Any + Send + 'static>),
}

impl JoinError {
    /// True for [`JoinError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }

    /// True for [`JoinError::Panicked`].
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panicked(_))
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("Cancelled"),
            JoinError::Panicked(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("<non-string payload>");
                write!(f, "Panicked({msg:?})")
            }
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task was cancelled"),
            JoinError::Panicked(_) => f.write_str("task panicked"),
        }
    }
}

impl std::error::Error for JoinError {}

/// What a finished task leaves for its handle.
pub(crate) type Output<T> = Result<T, JoinError>;

// ---------------------------------------------------------------------------------------
// The shared (atomic) rendezvous.

/// No waiter registered, no output.
const IDLE: u8 = 0;
/// The handle stored a waker; while this bit is set the waker slot belongs to the task.
const WAITING: u8 = 1 << 0;
/// The output is stored; from then on the output slot belongs to the handle.
const READY: u8 = 1 << 1;
/// The handle asked for the task to be cancelled.
const CANCEL: u8 = 1 << 2;

/// The rendezvous of a `Send` task with its [`JoinHandle`].
///
/// Its state word moves IDLE → WAITING → READY (WAITING may be skipped and may be taken
/// back and set again while the handle swaps wakers). `refs` counts the owners of the
/// task's memory on this side: one for the task (released when the worker lets go of
/// the task), one for the handle, one per abort request in flight.
pub(crate) struct SharedJoin<T> {
    state: AtomicU8,
    refs: AtomicU32,
    waker: UnsafeCell<Option<Waker>>,
    output: UnsafeCell<Option<Output<T>>>,
}

// SAFETY: the slots are handed between the task's worker and the handle's thread by the
// state word (Release on the writer's transition, Acquire on the reader's); T and Waker
// are Send.
unsafe impl<T: Send> Sync for SharedJoin<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SharedJoin<T> {}

impl<T> SharedJoin<T> {
    /// A rendezvous owned by the task and one handle.
    pub(crate) fn new() -> Self {
        SharedJoin {
            state: AtomicU8::new(IDLE),
            refs: AtomicU32::new(2),
            waker: UnsafeCell::new(None),
            output: UnsafeCell::new(None),
        }
    }

    /// Task side, once: stores the output, then wakes the handle if it waits.
    /// Invariant: after the READY bit is set the task side never touches `output` again,
    /// and it owns `waker` iff it saw WAITING.
    pub(crate) fn complete(&self, output: Output<T>) {
        // SAFETY: before READY the output slot belongs to the task side (us).
        self.output.with_mut(|p| unsafe { *p = Some(output) });
        let prev = self.state.fetch_or(READY, AcqRel);
        if prev & WAITING != 0 {
            // SAFETY: WAITING was set and READY now is: the handle can no longer take
            // WAITING back (its CAS expects READY clear), so the waker is ours.
            if let Some(w) = self.waker.with_mut(|p| unsafe { (*p).take() }) {
                w.wake();
            }
        }
    }

    /// Handle side: the output when ready, else registers `cx`'s waker.
    /// Invariant: the handle touches `waker` only while WAITING is clear; it clears
    /// WAITING with a CAS that fails once READY is set, so it never races the task side,
    /// which takes the waker only after setting READY over a set WAITING.
    pub(crate) fn poll_output(&self, cx: &mut Context<'_>) -> Poll<Output<T>> {
        let mut state = self.state.load(Acquire);
        loop {
            if state & READY != 0 {
                // SAFETY: READY is set (seen with Acquire): the output slot is ours.
                let out = self.output.with_mut(|p| unsafe { (*p).take() });
                return Poll::Ready(out.unwrap_or(Err(JoinError::Cancelled)));
            }
            if state & WAITING != 0 {
                // WAITING -> IDLE: take the waker slot back to replace it.
                match self
                    .state
                    .compare_exchange(state, state & !WAITING, AcqRel, Acquire)
                {
                    Ok(_) => state &= !WAITING,
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            // SAFETY: WAITING is clear: the slot is the handle's.
            self.waker
                .with_mut(|p| unsafe { *p = Some(cx.waker().clone()) });
            // IDLE -> WAITING: hand the slot to the task side.
            match self
                .state
                .compare_exchange(state, state | WAITING, AcqRel, Acquire)
            {
                Ok(_) => return Poll::Pending,
                Err(actual) => state = actual,
            }
        }
    }

    /// Whether the output is in.
    pub(crate) fn is_ready(&self) -> bool {
        self.state.load(Acquire) & READY != 0
    }

    /// Handle side: asks for cancellation; returns false when the task already finished.
    pub(crate) fn request_cancel(&self) -> bool {
        self.state.fetch_or(CANCEL, SeqCst) & READY == 0
    }

    /// Task side: whether cancellation was asked for (SeqCst: pairs with the owner
    /// publication in `TaskRef::adopt`).
    pub(crate) fn cancel_requested(&self) -> bool {
        self.state.load(SeqCst) & CANCEL != 0
    }

    /// Adds an owner of the task memory (an abort message in flight).
    pub(crate) fn acquire(&self) {
        self.refs.fetch_add(1, Relaxed);
    }

    /// Drops an owner; true when it was the last and the memory must be freed.
    pub(crate) fn release(&self) -> bool {
        self.refs.fetch_sub(1, Release) == 1 && {
            std::sync::atomic::fence(Acquire);
            true
        }
    }
}

// ---------------------------------------------------------------------------------------
// The local (single-thread) rendezvous.

/// The rendezvous of a local task with its [`LocalJoinHandle`]: same promises as
/// [`SharedJoin`], no atomics, because both sides live on one worker.
pub(crate) struct LocalJoin<T> {
    waker: Cell<Option<Waker>>,
    output: StdUnsafeCell<Option<Output<T>>>,
    ready: Cell<bool>,
}

impl<T> LocalJoin<T> {
    pub(crate) fn new() -> Self {
        LocalJoin {
            waker: Cell::new(None),
            output: StdUnsafeCell::new(None),
            ready: Cell::new(false),
        }
    }

    /// Task side, once: stores the output and wakes the handle.
    pub(crate) fn complete(&self, output: Output<T>) {
        // SAFETY: single-threaded; no reference into the slot is alive.
        unsafe { *self.output.get() = Some(output) };
        self.ready.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Handle side: the output when ready, else registers `cx`'s waker.
    pub(crate) fn poll_output(&self, cx: &mut Context<'_>) -> Poll<Output<T>> {
        if self.ready.get() {
            // SAFETY: single-threaded; no reference into the slot is alive.
            let out = unsafe { (*self.output.get()).take() };
            return Poll::Ready(out.unwrap_or(Err(JoinError::Cancelled)));
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.get()
    }
}

// ---------------------------------------------------------------------------------------
// Handles.

/// Awaits a `Send` task's output from any thread; `Send` itself.
///
/// Dropping it detaches the task (it keeps running). [`JoinHandle::abort`] cancels it:
/// its future is dropped on its own worker and the handle resolves to
/// [`JoinError::Cancelled`] (unless it finished first).
pub struct JoinHandle<T> {
    task: TaskRef,
    /// Keeps the workers' shared state alive for `abort`, which reaches the owner.
    _runtime: Arc<ExecutorRegistry>,
    _output: PhantomData<T>,
}

// SAFETY: the handle only touches the task through its SharedJoin (atomic) and the
// abort path, which routes to the task's worker; T is Send.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: &JoinHandle only allows `abort` and `is_finished`, both thread-safe.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: TaskRef, runtime: Arc<ExecutorRegistry>) -> Self {
        JoinHandle {
            task,
            _runtime: runtime,
            _output: PhantomData,
        }
    }

    /// Cancels the task. Callable from any thread, any number of times; a task that
    /// already finished keeps its output.
    pub fn abort(&self) {
        // SAFETY: the handle owns a reference to the task's memory; T is its output type.
        unsafe { self.task.abort_shared::<T>() }
    }

    /// Whether the task has finished (its output, or its error, is in).
    pub fn is_finished(&self) -> bool {
        // SAFETY: as in `abort`.
        unsafe { self.task.shared_join::<T>() }.is_ready()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: as in `abort`.
        let join = unsafe { self.task.shared_join::<T>() };
        // Out of budget: the output stays in the rendezvous for the next poll.
        coop::poll_leaf(cx, |cx| join.poll_output(cx))
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        // SAFETY: the handle's reference is released exactly once, here.
        unsafe { self.task.release_shared::<T>() }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Awaits a local task's output; never leaves its worker (`!Send`).
///
/// Dropping it detaches the task; [`LocalJoinHandle::abort`] cancels it.
pub struct LocalJoinHandle<T> {
    task: TaskRef,
    _output: PhantomData<(T, *const ())>,
}

impl<T> LocalJoinHandle<T> {
    pub(crate) fn new(task: TaskRef) -> Self {
        LocalJoinHandle {
            task,
            _output: PhantomData,
        }
    }

    /// Cancels the task: its future is dropped (now, or when its current poll returns)
    /// and the handle resolves to [`JoinError::Cancelled`].
    pub fn abort(&self) {
        self.task.abort_local();
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        // SAFETY: the handle holds a local reference; T is the task's output type.
        unsafe { self.task.local_join::<T>() }.is_ready()
    }
}

impl<T> Future for LocalJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: as in `is_finished`.
        let join = unsafe { self.task.local_join::<T>() };
        // Out of budget: the output stays in the rendezvous for the next poll.
        coop::poll_leaf(cx, |cx| join.poll_output(cx))
    }
}

impl<T> Drop for LocalJoinHandle<T> {
    fn drop(&mut self) {
        self.task.release_local();
    }
}

impl<T> fmt::Debug for LocalJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalJoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

#[cfg(veloq_loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use std::task::{RawWaker, RawWakerVTable};

    /// A waker that counts its wakes in an Arc<AtomicU32>.
    fn counting_waker(count: &Arc<crate::sync::AtomicU32>) -> Waker {
        fn clone(p: *const ()) -> RawWaker {
            let a = unsafe { Arc::from_raw(p as *const crate::sync::AtomicU32) };
            let b = a.clone();
            std::mem::forget(a);
            RawWaker::new(Arc::into_raw(b) as *const (), &VTABLE)
        }
        fn wake(p: *const ()) {
            let a = unsafe { Arc::from_raw(p as *const crate::sync::AtomicU32) };
            a.fetch_add(1, SeqCst);
        }
        fn wake_by_ref(p: *const ()) {
            let a = unsafe { &*(p as *const crate::sync::AtomicU32) };
            a.fetch_add(1, SeqCst);
        }
        fn drop_w(p: *const ()) {
            drop(unsafe { Arc::from_raw(p as *const crate::sync::AtomicU32) });
        }
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_w);
        let raw = RawWaker::new(Arc::into_raw(count.clone()) as *const (), &VTABLE);
        unsafe { Waker::from_raw(raw) }
    }

    /// The task completes while the handle polls (and re-polls with a new waker): the
    /// handle gets the output exactly once, and a handle left pending is woken.
    #[test]
    fn loom_join_state_never_loses_output_or_wakeup() {
        loom::model(|| {
            let join = Arc::new(SharedJoin::<u32>::new());
            let wakes = Arc::new(crate::sync::AtomicU32::new(0));
            let task = {
                let join = join.clone();
                loom::thread::spawn(move || join.complete(Ok(7)))
            };
            let waker_a = counting_waker(&wakes);
            let waker_b = counting_waker(&wakes);
            let mut got = None;
            for waker in [&waker_a, &waker_b] {
                let mut cx = Context::from_waker(waker);
                if let Poll::Ready(out) = join.poll_output(&mut cx) {
                    got = Some(out.unwrap());
                    break;
                }
            }
            task.join().unwrap();
            match got {
                Some(v) => assert_eq!(v, 7),
                None => {
                    assert!(wakes.load(SeqCst) >= 1, "a pending handle must be woken");
                    let mut cx = Context::from_waker(&waker_b);
                    match join.poll_output(&mut cx) {
                        Poll::Ready(out) => assert_eq!(out.unwrap(), 7),
                        Poll::Pending => panic!("output lost"),
                    }
                }
            }
        });
    }

    /// Abort racing completion: whoever wins, the handle ends with exactly one outcome.
    #[test]
    fn loom_join_cancel_races_completion() {
        loom::model(|| {
            let join = Arc::new(SharedJoin::<u32>::new());
            let task = {
                let join = join.clone();
                loom::thread::spawn(move || {
                    if join.cancel_requested() {
                        join.complete(Err(JoinError::Cancelled));
                    } else {
                        join.complete(Ok(1));
                    }
                })
            };
            let asked = join.request_cancel();
            task.join().unwrap();
            let wakes = Arc::new(crate::sync::AtomicU32::new(0));
            let waker = counting_waker(&wakes);
            let mut cx = Context::from_waker(&waker);
            match join.poll_output(&mut cx) {
                Poll::Ready(Ok(1)) | Poll::Ready(Err(JoinError::Cancelled)) => {}
                other => panic!(
                    "unexpected {:?}",
                    other.map(|r| r.map_err(|e| e.to_string()))
                ),
            }
            let _ = asked;
        });
    }

    /// The task side and the handle let go at once (plus an abort in flight): exactly
    /// one of them frees the memory.
    #[test]
    fn loom_join_refs_are_released_exactly_once() {
        loom::model(|| {
            let join = Arc::new(SharedJoin::<u32>::new());
            join.acquire(); // an abort message in flight
            let frees = Arc::new(crate::sync::AtomicU32::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (join, frees) = (join.clone(), frees.clone());
                    loom::thread::spawn(move || {
                        if join.release() {
                            frees.fetch_add(1, SeqCst);
                        }
                    })
                })
                .collect();
            if join.release() {
                frees.fetch_add(1, SeqCst);
            }
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(frees.load(SeqCst), 1);
        });
    }
}
