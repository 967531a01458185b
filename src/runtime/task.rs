//! Tasks: one heap allocation holding a header, the join rendezvous and the future.
//!
//! A task belongs to one worker (its *owner*) from its first poll on. Its scheduling
//! state and reference count are plain `Cell`s that only the owner touches, so spawning,
//! waking and polling a task on its worker costs no atomic operation.
//!
//! A [`Waker`] is `Send + Sync`, so a waker may be cloned, woken or dropped on another
//! thread. Those operations never touch the cells: they are sent as [`RemoteOp`]s to the
//! owner's mailbox, a FIFO queue, and the owner applies them. `wake` and `drop` carry the
//! waker's own reference. `clone` and `wake_by_ref` carry none, so they count themselves
//! in the task's `foreign_pending` (the one atomic, touched only on these foreign paths)
//! and the owner frees a task only when its reference count *and* that counter are zero:
//! a foreign operation always happens before the release of the reference it was made
//! through, so the owner sees it counted before it could free the task.
//!
//! `Send` tasks (spawned with `spawn`, `spawn_balanced`, `spawn_to`) are created on the
//! spawning thread, travel as a [`Job`](super::job::Job) and are *adopted* by the worker
//! that receives them; their output goes through an atomic [`SharedJoin`]. Local tasks
//! (`spawn_local`) are created on their worker and use a [`LocalJoin`].

use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::sync::atomic::{
    AtomicPtr, AtomicU32,
    Ordering::{AcqRel, Acquire, SeqCst},
};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use super::context::{self, RuntimeContext};
use super::coop;
use super::executor::spawner::WorkerShared;
use super::intake::Link;
use super::introspect::{DumpRequest, TaskName, TaskState};
use super::join::{JoinError, LocalJoin, Output, SharedJoin};

/// Not queued, not running.
const IDLE: u8 = 0;
/// In its owner's local run queue (which holds a reference for it).
const SCHEDULED: u8 = 1;
/// Being polled.
const RUNNING: u8 = 2;
/// Woken while being polled: goes back to the queue when the poll returns.
const NOTIFIED: u8 = 3;
/// Finished, cancelled or panicked; its future is gone. Wakes are ignored.
const COMPLETE: u8 = 4;

/// `Header::kind` bit: the task has a name.
const NAMED: u8 = 1;
/// `Header::kind` bit: a `Send` task (with a `SharedJoin`).
const SHARED: u8 = 2;

/// The part of a task every kind shares. Fields other than `owner` are touched only by
/// the owner thread (or, after the owner exited, under its mailbox lock).
#[repr(C)]
pub(crate) struct Header {
    vtable: &'static Vtable,
    state: Cell<u8>,
    cancel_requested: Cell<bool>,
    /// Polled (or cancelled) at least once: tells a task's start from a re-poll.
    started: Cell<bool>,
    /// [`NAMED`]: the task carries a name (see `TaskCell::name`), read before reaching
    /// for it through the vtable; [`SHARED`]: a `Send` task, whose join handle may ask
    /// for cancellation (a local task's poll skips that vtable call). Fills what was
    /// padding.
    kind: u8,
    refs: Cell<u32>,
    /// Foreign `clone` / `wake_by_ref` operations queued but not applied yet.
    foreign_pending: AtomicU32,
    /// When it became live on its owner (`introspect::coarse_ms`, as cached by the
    /// owner at the start of its loop turn); fills what was padding.
    spawned_ms: Cell<u32>,
    /// The owning worker; written once when the task is adopted, before any waker of it
    /// exists. Atomic because a `JoinHandle::abort` on another thread reads it.
    owner: AtomicPtr<WorkerShared>,
    /// Links of the owner's list of unfinished tasks. The previous one is kept in
    /// `queue_link` (see `live_prev`).
    live_next: Cell<*const Header>,
    /// The link of a worker's task intake while the unadopted task waits in it; from its
    /// adoption on (the intake is done with it once it is taken out), the live list's
    /// link to the previous task. One word for both saves every task 8 bytes.
    queue_link: Link,
}

impl Header {
    /// The previous task of the owner's live list (owner thread).
    #[inline]
    fn live_prev(&self) -> *const Header {
        self.queue_link.get() as *const Header
    }

    #[inline]
    fn set_live_prev(&self, prev: *const Header) {
        self.queue_link.set(prev as *mut Link);
    }
}

/// Operations that depend on the task's future and output types.
struct Vtable {
    /// Polls the future once; true when the task finished (output delivered).
    poll: unsafe fn(TaskRef) -> bool,
    /// Drops the future and delivers `Cancelled`.
    cancel: unsafe fn(TaskRef),
    /// Whether a `JoinHandle` asked for cancellation (always false for local tasks).
    shared_cancel_requested: unsafe fn(TaskRef) -> bool,
    /// The owner's last reference is gone.
    release_task_side: unsafe fn(TaskRef),
    /// An abort message in flight is done with the task (shared tasks only).
    release_shared_ref: unsafe fn(TaskRef),
    /// Frees the allocation.
    dealloc: unsafe fn(TaskRef),
    /// The name given at spawn, kept after the future (see `TaskCell::name`).
    name: unsafe fn(TaskRef) -> Option<*const Arc<TaskName>>,
}

/// A counted-by-hand pointer to a task. Copying it does not add a reference: every
/// function says which reference it consumes or expects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TaskRef(NonNull<Header>);

// SAFETY: a TaskRef crosses threads only as an unadopted task inside a Job (the spawner
// hands over its only reference) or inside a RemoteOp (applied by the owner).
unsafe impl Send for TaskRef {}

/// The full allocation. `repr(C)` keeps `join` at an offset that does not depend on `F`,
/// so join handles can reach it knowing only the output type, and makes a
/// `TaskCell<F, J, ()>` a prefix of every `TaskCell<F, J, N>`: code that does not touch
/// the name uses the prefix.
#[repr(C)]
struct TaskCell<F: Future, J, N = ()> {
    header: Header,
    join: J,
    future: UnsafeCell<Option<F>>,
    /// The name given at spawn: `()` for an unnamed task (no byte), an
    /// `Arc<TaskName>` for a named one. Last, so naming costs unnamed tasks nothing;
    /// set before the task is shared, never changed.
    name: N,
}

/// What a task may carry as its name.
trait NameSlot: 'static {
    fn get(&self) -> Option<&Arc<TaskName>>;
}

impl NameSlot for () {
    fn get(&self) -> Option<&Arc<TaskName>> {
        None
    }
}

impl NameSlot for Arc<TaskName> {
    fn get(&self) -> Option<&Arc<TaskName>> {
        Some(self)
    }
}

/// The prefix of every `TaskCell` with join type `J`.
#[repr(C)]
struct Prefix<J> {
    header: Header,
    join: J,
}

/// What a task's rendezvous must do.
trait Join<T> {
    const SHARED: bool;
    fn new() -> Self;
    fn complete(&self, out: Output<T>);
    fn cancel_requested(&self) -> bool;
}

impl<T> Join<T> for LocalJoin<T> {
    const SHARED: bool = false;
    fn new() -> Self {
        LocalJoin::new()
    }
    fn complete(&self, out: Output<T>) {
        LocalJoin::complete(self, out)
    }
    fn cancel_requested(&self) -> bool {
        false
    }
}

impl<T> Join<T> for SharedJoin<T> {
    const SHARED: bool = true;
    fn new() -> Self {
        SharedJoin::new()
    }
    fn complete(&self, out: Output<T>) {
        SharedJoin::complete(self, out)
    }
    fn cancel_requested(&self) -> bool {
        SharedJoin::cancel_requested(self)
    }
}

/// A waker operation made on a thread other than the task's owner.
pub(crate) enum RemoteOp {
    /// A waker was cloned: add a reference.
    Clone(TaskRef),
    /// A waker was dropped: release its reference.
    Drop(TaskRef),
    /// `wake()`: schedule, then release the waker's reference.
    Wake(TaskRef),
    /// `wake_by_ref()`: schedule.
    WakeByRef(TaskRef),
    /// `JoinHandle::abort`: cancel, then release the abort's shared reference.
    Abort(TaskRef),
    /// A runtime dump asks this worker (index given) for its section.
    Dump(Arc<DumpRequest>, usize),
}

impl TaskRef {
    fn header(&self) -> &Header {
        // SAFETY: a TaskRef is only used while some reference keeps the task alive.
        unsafe { self.0.as_ref() }
    }

    /// Allocates a local task owned by `owner` with `refs` references (the caller decides
    /// who holds them) in state SCHEDULED.
    pub(crate) fn new_local<F: Future + 'static>(
        future: F,
        owner: &WorkerShared,
        refs: u32,
        name: Option<Arc<TaskName>>,
    ) -> TaskRef {
        Self::allocate::<F, LocalJoin<F::Output>>(future, owner as *const _ as *mut _, refs, name)
    }

    /// Allocates a `Send` task not yet owned by any worker. Its shared side starts with
    /// two references: the task's and the join handle's.
    pub(crate) fn new_shared<F>(future: F) -> TaskRef
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Self::allocate::<F, SharedJoin<F::Output>>(future, ptr::null_mut(), 0, None)
    }

    /// `new_shared` with a name.
    pub(crate) fn new_shared_named<F>(future: F, name: Option<Arc<TaskName>>) -> TaskRef
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Self::allocate::<F, SharedJoin<F::Output>>(future, ptr::null_mut(), 0, name)
    }

    /// Allocates a task whose `!Send` future is made on its worker by `make`, which is
    /// `Send`: the task crosses threads only before its first poll, while it still holds
    /// `make`, and is dropped unpolled (on any thread) only in that state.
    pub(crate) fn new_shared_lazy<M, F>(make: M) -> TaskRef
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        Self::new_shared_lazy_named(make, None)
    }

    /// `new_shared_lazy` with a name.
    pub(crate) fn new_shared_lazy_named<M, F>(make: M, name: Option<Arc<TaskName>>) -> TaskRef
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        Self::allocate::<LazyLocal<M, F>, SharedJoin<F::Output>>(
            LazyLocal::Make(Some(make)),
            ptr::null_mut(),
            0,
            name,
        )
    }

    fn allocate<F: Future + 'static, J: Join<F::Output> + 'static>(
        future: F,
        owner: *mut WorkerShared,
        refs: u32,
        name: Option<Arc<TaskName>>,
    ) -> TaskRef {
        match name {
            None => Self::allocate_with::<F, J, ()>(future, owner, refs, ()),
            Some(name) => Self::allocate_with::<F, J, Arc<TaskName>>(future, owner, refs, name),
        }
    }

    fn allocate_with<F: Future + 'static, J: Join<F::Output> + 'static, N: NameSlot>(
        future: F,
        owner: *mut WorkerShared,
        refs: u32,
        name: N,
    ) -> TaskRef {
        let cell = Box::new(TaskCell::<F, J, N> {
            header: Header {
                vtable: vtable::<F, J, N>(),
                state: Cell::new(SCHEDULED),
                cancel_requested: Cell::new(false),
                started: Cell::new(false),
                kind: (name.get().is_some() as u8 * NAMED) | (J::SHARED as u8 * SHARED),
                refs: Cell::new(refs),
                foreign_pending: AtomicU32::new(0),
                spawned_ms: Cell::new(0),
                owner: AtomicPtr::new(owner),
                live_next: Cell::new(ptr::null()),
                queue_link: Link::new(),
            },
            join: J::new(),
            future: UnsafeCell::new(Some(future)),
            name,
        });
        // SAFETY: Box::into_raw is never null.
        TaskRef(unsafe { NonNull::new_unchecked(Box::into_raw(cell) as *mut Header) })
    }

    /// The link through which an unadopted task waits in a worker's task intake.
    pub(crate) fn queue_link(self) -> NonNull<Link> {
        NonNull::from(&self.header().queue_link)
    }

    /// The task whose [`queue_link`](Self::queue_link) `link` is.
    ///
    /// # Safety
    /// `link` was returned by `queue_link` of a task that is still allocated.
    pub(crate) unsafe fn from_queue_link(link: NonNull<Link>) -> TaskRef {
        let offset = std::mem::offset_of!(Header, queue_link);
        // SAFETY: caller's promise: `link` lies `offset` bytes into a live header.
        TaskRef(unsafe { NonNull::new_unchecked(link.as_ptr().byte_sub(offset) as *mut Header) })
    }

    /// The worker that received an unadopted `Send` task takes it over with `refs`
    /// references. Publishing the owner (SeqCst) before reading the cancel flag pairs
    /// with `abort_shared`, which sets the flag before reading the owner: one of the two
    /// always sees the other, so an abort is never lost.
    pub(crate) fn adopt(self, owner: &WorkerShared, refs: u32) -> bool {
        let h = self.header();
        h.refs.set(refs);
        h.owner.store(owner as *const _ as *mut _, SeqCst);
        // SAFETY: the task is alive (we hold its references).
        unsafe { (h.vtable.shared_cancel_requested)(self) }
    }

    /// Whether this thread is the task's owner.
    fn on_owner_thread(&self) -> bool {
        let owner = self
            .header()
            .owner
            .load(std::sync::atomic::Ordering::Relaxed);
        ptr::eq(context::current_worker_shared(), owner)
    }

    fn owner(&self) -> &WorkerShared {
        let owner = self
            .header()
            .owner
            .load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: an adopted task's owner outlives the task memory (the runtime keeps
        // a worker's shared state alive while tasks of its are allocated).
        unsafe { &*owner }
    }

    // --- owner-thread operations -------------------------------------------------------

    /// Adds an owner-side reference.
    pub(crate) fn retain_local(&self) {
        let h = self.header();
        h.refs.set(h.refs.get() + 1);
    }

    /// Releases an owner-side reference; the last one lets go of the task.
    pub(crate) fn release_local(self) {
        let h = self.header();
        let refs = h.refs.get() - 1;
        h.refs.set(refs);
        if refs == 0 {
            self.release_if_unreferenced();
        }
    }

    /// Lets go of the task when no reference is left and no foreign operation is queued
    /// (the last such operation, when applied, calls this again).
    fn release_if_unreferenced(self) {
        let h = self.header();
        if h.refs.get() != 0 || h.foreign_pending.load(Acquire) != 0 {
            return;
        }
        let owner = self.owner();
        // SAFETY: no owner-side reference and no queued foreign operation is left.
        unsafe { (h.vtable.release_task_side)(self) };
        owner.task_memory_released();
    }

    /// A foreign `clone` / `wake_by_ref` is about to be queued.
    fn count_foreign_op(&self) {
        self.header().foreign_pending.fetch_add(1, AcqRel);
    }

    /// A counted foreign operation was applied.
    fn foreign_op_applied(self) {
        self.header().foreign_pending.fetch_sub(1, AcqRel);
        self.release_if_unreferenced();
    }

    /// Wakes the task on its owner thread: queues it unless it is queued, running (then
    /// it is re-queued after its poll) or finished.
    #[inline]
    pub(crate) fn wake_local(self, cx: Option<&RuntimeContext>) {
        let h = self.header();
        match h.state.get() {
            IDLE => {
                if let Some(cx) = cx {
                    h.state.set(SCHEDULED);
                    self.retain_local();
                    cx.push_local_task(self);
                }
            }
            RUNNING => h.state.set(NOTIFIED),
            _ => {}
        }
    }

    /// [`wake_local`](Self::wake_local) through a reference the caller owns (a waker
    /// woken by value): the reference becomes the run queue's when the task is queued,
    /// and is released otherwise. Saves the queue's retain and the waker's release.
    #[inline]
    fn wake_local_owned(self, cx: Option<&RuntimeContext>) {
        let h = self.header();
        match (h.state.get(), cx) {
            (IDLE, Some(cx)) => {
                h.state.set(SCHEDULED);
                cx.push_local_task(self); // the queue takes over our reference
            }
            (RUNNING, _) => {
                h.state.set(NOTIFIED);
                self.release_local();
            }
            _ => self.release_local(),
        }
    }

    /// Polls the task once on its owner. Consumes the caller's (queue) reference.
    /// Returns true when the task finished in this call.
    pub(crate) fn run(self, cx: &RuntimeContext) -> bool {
        let h = self.header();
        if h.state.get() == COMPLETE {
            self.release_local();
            return false;
        }
        // SAFETY: the task is alive (we hold the queue's reference).
        if h.kind & SHARED != 0 && unsafe { (h.vtable.shared_cancel_requested)(self) } {
            h.state.set(IDLE);
            self.cancel_now(cx);
            self.release_local();
            return true;
        }
        h.state.set(RUNNING);
        // Each poll starts with a fresh cooperative budget (see `coop`).
        let finished = coop::with_budget(cx.registry.config.coop_budget, || {
            // SAFETY: owner thread, task alive, not being polled elsewhere (state machine).
            unsafe { (h.vtable.poll)(self) }
        });
        if finished {
            h.state.set(COMPLETE);
            cx.task_finished(self);
        } else if h.cancel_requested.get() {
            h.state.set(IDLE);
            self.cancel_now(cx);
            self.release_local();
            return true;
        } else if h.state.get() == NOTIFIED {
            h.state.set(SCHEDULED);
            cx.push_local_task(self); // the queue keeps our reference
            return false;
        } else {
            h.state.set(IDLE);
        }
        self.release_local();
        finished
    }

    /// Cancels the task on its owner: drops the future now, or, when it is being polled,
    /// as soon as that poll returns. Idempotent.
    pub(crate) fn cancel_now(self, cx: &RuntimeContext) {
        let h = self.header();
        match h.state.get() {
            COMPLETE => {}
            RUNNING | NOTIFIED => h.cancel_requested.set(true),
            _ => {
                h.state.set(COMPLETE);
                // SAFETY: owner thread, not being polled.
                unsafe { (h.vtable.cancel)(self) };
                cx.task_finished(self);
            }
        }
    }

    /// A `LocalJoinHandle::abort` (on the owner thread).
    pub(crate) fn abort_local(self) {
        context::with_current(|cx| {
            if let Some(cx) = cx {
                self.cancel_now(cx);
            }
        });
    }

    /// Applies an operation a foreign thread sent; `cx` is None once the owner exited
    /// (then every task of it is complete and only references change).
    pub(crate) fn apply_remote(op: RemoteOp, cx: Option<&RuntimeContext>) {
        match op {
            RemoteOp::Clone(t) => {
                t.retain_local();
                t.foreign_op_applied();
            }
            RemoteOp::Drop(t) => t.release_local(),
            RemoteOp::Wake(t) => {
                t.wake_local(cx);
                t.release_local();
            }
            RemoteOp::WakeByRef(t) => {
                t.wake_local(cx);
                t.foreign_op_applied();
            }
            RemoteOp::Abort(t) => {
                if let Some(cx) = cx {
                    t.cancel_now(cx);
                }
                // SAFETY: the abort message held one shared reference.
                unsafe { (t.header().vtable.release_shared_ref)(t) };
            }
            RemoteOp::Dump(request, worker) => request.answer(cx, worker),
        }
    }

    // --- introspection (owner thread) ------------------------------------------------------

    /// The name given at spawn.
    pub(crate) fn name(&self) -> Option<&Arc<TaskName>> {
        if self.header().kind & NAMED == 0 {
            return None;
        }
        // SAFETY: the vtable matches the allocation; the name lives as long as the task
        // memory, which the caller's reference keeps alive.
        unsafe { (self.header().vtable.name)(*self) }.map(|p| unsafe { &*p })
    }

    /// When it became live on its owner (`coarse_ms`).
    pub(crate) fn spawned_ms(&self) -> u32 {
        self.header().spawned_ms.get()
    }

    /// Owner thread: records when the task became live here.
    pub(crate) fn set_spawned_ms(&self, ms: u32) {
        self.header().spawned_ms.set(ms);
    }

    /// True the first time it is asked: the run about to happen is the task's start.
    pub(crate) fn take_first_run(&self) -> bool {
        !self.header().started.replace(true)
    }

    /// The state as a dump shows it.
    pub(crate) fn dump_state(&self) -> TaskState {
        match self.header().state.get() {
            IDLE => TaskState::Idle,
            SCHEDULED => TaskState::Scheduled,
            RUNNING | NOTIFIED => TaskState::Running,
            _ => TaskState::Complete,
        }
    }

    /// The next task of the owner's live list.
    pub(crate) fn live_next(&self) -> Option<TaskRef> {
        NonNull::new(self.header().live_next.get() as *mut Header).map(TaskRef)
    }

    // --- the owner's list of unfinished tasks --------------------------------------------

    pub(crate) fn link_live(&self, head: &Cell<Option<TaskRef>>) {
        let h = self.header();
        h.set_live_prev(ptr::null());
        h.live_next
            .set(head.get().map_or(ptr::null(), |t| t.0.as_ptr()));
        if let Some(old) = head.get() {
            old.header().set_live_prev(self.0.as_ptr());
        }
        head.set(Some(*self));
    }

    pub(crate) fn unlink_live(&self, head: &Cell<Option<TaskRef>>) {
        let h = self.header();
        let prev = h.live_prev();
        let next = h.live_next.get();
        // SAFETY: linked tasks are alive (the list holds their live reference).
        unsafe {
            if let Some(next) = next.as_ref() {
                next.set_live_prev(prev);
            }
            match prev.as_ref() {
                Some(prev) => prev.live_next.set(next),
                None => head.set(NonNull::new(next as *mut Header).map(TaskRef)),
            }
        }
    }

    // --- join-handle side ----------------------------------------------------------------

    /// # Safety
    /// The task is a shared task with output `T`, kept alive by the caller.
    pub(crate) unsafe fn shared_join<T>(&self) -> &SharedJoin<T> {
        // SAFETY: TaskCell is repr(C) with the same prefix as Prefix<SharedJoin<T>>.
        unsafe { &(*(self.0.as_ptr() as *const Prefix<SharedJoin<T>>)).join }
    }

    /// # Safety
    /// The task is a local task with output `T`, kept alive by the caller.
    pub(crate) unsafe fn local_join<T>(&self) -> &LocalJoin<T> {
        // SAFETY: as in `shared_join`.
        unsafe { &(*(self.0.as_ptr() as *const Prefix<LocalJoin<T>>)).join }
    }

    /// `JoinHandle::abort`, from any thread.
    ///
    /// # Safety
    /// As in `shared_join`.
    pub(crate) unsafe fn abort_shared<T>(&self) {
        // SAFETY: caller's promise.
        let join = unsafe { self.shared_join::<T>() };
        if !join.request_cancel() {
            return; // already finished
        }
        let owner = self.header().owner.load(SeqCst);
        // SAFETY: see `adopt`; a null owner means the adopter will see the flag. The
        // handle keeps the runtime (and so the owner's shared state) alive.
        if let Some(owner) = unsafe { owner.as_ref() } {
            join.acquire();
            owner.post_remote(RemoteOp::Abort(*self));
        }
    }

    /// Drops a join handle's reference.
    ///
    /// # Safety
    /// As in `shared_join`; called once per handle.
    pub(crate) unsafe fn release_shared<T>(&self) {
        // SAFETY: caller's promise.
        if unsafe { self.shared_join::<T>() }.release() {
            // SAFETY: the last reference is gone; nobody else can reach the task.
            unsafe { (self.header().vtable.dealloc)(*self) };
        }
    }

    /// A `Send` task that was never adopted is being dropped (its queue was torn down):
    /// drop its future here and resolve its handle to `Cancelled`.
    pub(crate) fn cancel_unadopted(self) {
        let h = self.header();
        h.state.set(COMPLETE);
        // SAFETY: unadopted: we hold the only task-side access; the future is Send.
        unsafe {
            (h.vtable.cancel)(self);
            (h.vtable.release_task_side)(self);
        }
    }

    /// A non-owning waker for polling (no reference taken).
    fn borrowed_waker(&self) -> ManuallyDrop<Waker> {
        // SAFETY: the vtable upholds the RawWaker contract (see `waker_*` below); the
        // ManuallyDrop keeps this non-owning waker from releasing a reference.
        ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new(self.0.as_ptr() as *const (), &WAKER_VTABLE))
        })
    }
}

fn vtable<F: Future + 'static, J: Join<F::Output> + 'static, N: NameSlot>() -> &'static Vtable {
    trait HasVtable {
        const VTABLE: Vtable;
    }
    impl<F: Future + 'static, J: Join<F::Output> + 'static, N: NameSlot> HasVtable for (F, J, N) {
        const VTABLE: Vtable = Vtable {
            poll: poll_task::<F, J>,
            cancel: cancel_task::<F, J>,
            shared_cancel_requested: shared_cancel_requested::<F, J>,
            release_task_side: release_task_side::<F, J, N>,
            release_shared_ref: release_shared_ref::<F, J, N>,
            dealloc: dealloc::<F, J, N>,
            name: name_of::<F, J, N>,
        };
    }
    &<(F, J, N) as HasVtable>::VTABLE
}

/// A future made on first poll (see `TaskRef::new_shared_lazy`).
enum LazyLocal<M, F> {
    Make(Option<M>),
    Running(F),
}

impl<M: FnOnce() -> F, F: Future> Future for LazyLocal<M, F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: we never move the inner future out of the pinned enum; `Make` holds no
        // pinned data, and the variant switch happens before `F` exists.
        let this = unsafe { self.get_unchecked_mut() };
        if let LazyLocal::Make(make) = this {
            let make = make.take().expect("made once");
            *this = LazyLocal::Running(make());
        }
        match this {
            // SAFETY: `F` stays in place inside the pinned enum until dropped.
            LazyLocal::Running(f) => unsafe { Pin::new_unchecked(f) }.poll(cx),
            LazyLocal::Make(_) => unreachable!(),
        }
    }
}

/// # Safety
/// `task` is a `TaskCell<F, J, N>` for some `N` (of which `TaskCell<F, J>` is a prefix).
unsafe fn cell<'a, F: Future, J>(task: TaskRef) -> &'a TaskCell<F, J> {
    // SAFETY: caller's promise.
    unsafe { &*(task.0.as_ptr() as *const TaskCell<F, J>) }
}

/// Drops the future, containing a panic in its destructor.
///
/// # Safety
/// Owner thread (or unadopted), not being polled.
unsafe fn drop_future<F: Future, J>(cell: &TaskCell<F, J>) {
    // SAFETY: caller's promise: nobody else accesses the future slot now.
    let future = unsafe { (*cell.future.get()).take() };
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(future))) {
        // A payload's own destructor may panic too; leak it rather than unwind.
        std::mem::forget(payload);
    }
}

unsafe fn poll_task<F: Future, J: Join<F::Output>>(task: TaskRef) -> bool {
    // SAFETY: vtable of a TaskCell<F, J>.
    let cell = unsafe { cell::<F, J>(task) };
    // SAFETY: owner thread, state RUNNING: we have exclusive access to the future.
    let Some(future) = (unsafe { &mut *cell.future.get() }).as_mut() else {
        return true;
    };
    let waker = task.borrowed_waker();
    let mut cx = Context::from_waker(&waker);
    // SAFETY: the future never moves: it lives in its heap cell until dropped in place.
    let polled = catch_unwind(AssertUnwindSafe(|| unsafe {
        Pin::new_unchecked(future).poll(&mut cx)
    }));
    let output = match polled {
        Ok(Poll::Pending) => return false,
        Ok(Poll::Ready(value)) => Ok(value),
        Err(payload) => Err(JoinError::Panicked(payload)),
    };
    // SAFETY: as above; the poll is over.
    unsafe { drop_future(cell) };
    cell.join.complete(output);
    true
}

unsafe fn cancel_task<F: Future, J: Join<F::Output>>(task: TaskRef) {
    // SAFETY: vtable of a TaskCell<F, J>; owner thread (or unadopted), not polled.
    let cell = unsafe { cell::<F, J>(task) };
    unsafe { drop_future(cell) };
    cell.join.complete(Err(JoinError::Cancelled));
}

unsafe fn shared_cancel_requested<F: Future, J: Join<F::Output>>(task: TaskRef) -> bool {
    // SAFETY: vtable of a TaskCell<F, J>.
    J::SHARED && unsafe { cell::<F, J>(task) }.join.cancel_requested()
}

unsafe fn dealloc<F: Future, J, N>(task: TaskRef) {
    // SAFETY: created by Box::new in `allocate_with` with these types; freed once, by
    // the last owner.
    drop(unsafe { Box::from_raw(task.0.as_ptr() as *mut TaskCell<F, J, N>) });
}

unsafe fn name_of<F: Future, J, N: NameSlot>(task: TaskRef) -> Option<*const Arc<TaskName>> {
    // SAFETY: vtable of a TaskCell<F, J, N>; the name is never written after allocation.
    let cell = unsafe { &*(task.0.as_ptr() as *const TaskCell<F, J, N>) };
    cell.name.get().map(|n| n as *const Arc<TaskName>)
}

unsafe fn release_task_side<F: Future, J: Join<F::Output>, N>(task: TaskRef) {
    if J::SHARED {
        // SAFETY: the task side holds one shared reference.
        unsafe { release_shared_ref::<F, J, N>(task) }
    } else {
        // SAFETY: a local task's only owners are owner-side references: none is left.
        unsafe { dealloc::<F, J, N>(task) }
    }
}

unsafe fn release_shared_ref<F: Future, J: Join<F::Output>, N>(task: TaskRef) {
    // SAFETY: only called for shared tasks, whose join is a SharedJoin<F::Output>.
    let join = unsafe { task.shared_join::<F::Output>() };
    if join.release() {
        // SAFETY: last reference.
        unsafe { dealloc::<F, J, N>(task) }
    }
}

// --- the hand-written waker --------------------------------------------------------------

static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

fn task_of(data: *const ()) -> TaskRef {
    // SAFETY: wakers are only made from non-null task pointers.
    TaskRef(unsafe { NonNull::new_unchecked(data as *mut Header) })
}

fn waker_clone(data: *const ()) -> RawWaker {
    let task = task_of(data);
    if task.on_owner_thread() {
        task.retain_local();
    } else {
        task.count_foreign_op();
        task.owner().post_remote(RemoteOp::Clone(task));
    }
    RawWaker::new(data, &WAKER_VTABLE)
}

fn waker_wake(data: *const ()) {
    let task = task_of(data);
    if task.on_owner_thread() {
        context::with_current(|cx| task.wake_local_owned(cx));
    } else {
        task.owner().post_remote(RemoteOp::Wake(task));
    }
}

fn waker_wake_by_ref(data: *const ()) {
    let task = task_of(data);
    if task.on_owner_thread() {
        context::with_current(|cx| task.wake_local(cx));
    } else {
        task.count_foreign_op();
        task.owner().post_remote(RemoteOp::WakeByRef(task));
    }
}

fn waker_drop(data: *const ()) {
    let task = task_of(data);
    if task.on_owner_thread() {
        task.release_local();
    } else {
        task.owner().post_remote(RemoteOp::Drop(task));
    }
}
