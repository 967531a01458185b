//! `RuntimeContext`: the explicit handle to the worker a task or callback runs on, and
//! the free `spawn*` functions that use the current one.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::future::Future;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;

use super::executor::spawner::{random_seed, Asker, ExecutorRegistry, WorkerShared};
use super::introspect::TaskName;
use super::job::{InboxJob, Job, JobParts, RawTask};
use super::join::{JoinHandle, LocalJoinHandle};
use super::mesh::{MeshCell, MeshMatrix};
use super::runtime::{Handle, Placement, SpawnError, SpawnErrorKind};
use super::task::TaskRef;
use crate::io::buffers::{BufferPool, PoolBuf, PoolStats};
use crate::io::driver::Driver;

thread_local! {
    static CURRENT: Cell<*const RuntimeContext> = const { Cell::new(ptr::null()) };
    static CURRENT_SHARED: Cell<*const WorkerShared> = const { Cell::new(ptr::null()) };
}

/// Balanced jobs kept in this worker's injector by one job from which a sleeping peer is
/// woken as soon as that job returns (see `wake_thief`).
const BURST_WAKES_A_PEER: u64 = 2;

/// A worker's context: which worker this is, its spawner, its mesh producer side, its
/// I/O driver and its buffer pool. It exists only on its worker thread (`!Send`); a callback receives it as
/// its `ctx` argument and a task reaches it with [`RuntimeContext::with_current`].
pub struct RuntimeContext {
    pub(crate) index: usize,
    pub(crate) registry: Arc<ExecutorRegistry>,
    /// `registry.worker(index)`, looked up once: every job touches it.
    me: ptr::NonNull<WorkerShared>,
    /// The first of `registry.mesh.row(index)`: this worker's outgoing mesh cells, one
    /// per worker, looked up once: every message to another worker goes through it.
    mesh_row: ptr::NonNull<MeshCell<Job>>,
    /// The local run queue: local tasks, adopted tasks and callbacks sent to ourselves.
    pub(crate) local: RefCell<VecDeque<Job>>,
    /// Jobs taken in a batch from an injector (ours or a victim's), not yet run.
    pub(crate) buffer: crossbeam_deque::Worker<Job>,
    /// Unfinished tasks owned here (an intrusive list through their headers).
    pub(crate) live_head: Cell<Option<TaskRef>>,
    pub(crate) live_futures: Cell<usize>,
    /// Jobs run since the counts were last published.
    pub(crate) taken: Cell<u64>,
    /// Workers we handed work to during the current job, to notify once it returns.
    pub(crate) notify_pending: Box<[Cell<bool>]>,
    pub(crate) any_notify_pending: Cell<bool>,
    /// Counted in the registry's shutdown idle count.
    pub(crate) counted_idle: Cell<bool>,
    /// How long this worker's next idle spin may last (see `spin.rs`).
    pub(crate) spin: super::spin::AdaptiveSpin,
    pub(crate) rng: Cell<u64>,
    /// Balanced jobs P2C kept in this worker's injector during the current job (see
    /// `spawner::Asker`); back to 0 when the job's notifications are flushed.
    pub(crate) balanced_kept: Cell<u64>,
    /// A burst of balanced jobs was kept here during the current job: once it returns,
    /// wake a sleeping peer to steal (rather than at the end of the turn, which may be a
    /// whole budget of jobs later).
    pub(crate) wake_thief: Cell<bool>,
    pub(crate) mesh_cursor: Cell<usize>,
    pub(crate) driver: RefCell<Driver>,
    /// Shutdown reached the driver: its operations were cancelled.
    pub(crate) io_closed: Cell<bool>,
    /// The worker's buffer pool, registered with `driver`'s ring. Declared after
    /// `driver` so the ring (and its registration) is dropped first.
    pub(crate) buffers: BufferPool,
    pub(crate) stats: super::executor::LocalCounters,
    /// The task group whose member or operation callback is running, or null: I/O
    /// submitted meanwhile belongs to it (see `group.rs`).
    pub(crate) group: Cell<*const super::group::GroupInner>,
    /// Completions of the callbacks run here, not posted yet.
    pub(crate) completions: super::job::CompletionBatch,
    _not_send: PhantomData<*const ()>,
}

impl RuntimeContext {
    /// Makes worker `index`'s context on its own thread, with a buffer pool registered
    /// with `driver`'s ring. Fails only when the pool's memory cannot be mapped (a failed
    /// registration leaves an unregistered pool, see `PoolStats::registration_errno`).
    pub(crate) fn new(
        registry: Arc<ExecutorRegistry>,
        index: usize,
        driver: Driver,
    ) -> std::io::Result<Self> {
        let n = registry.len();
        let buffers = BufferPool::new(&registry.config.buffer_pool, Some(&driver.submitter()))?
            .on_worker(registry.token(), index);
        let me = ptr::NonNull::from(registry.worker(index));
        let mesh_row = ptr::NonNull::from(&registry.mesh.row(index)[0]);
        Ok(RuntimeContext {
            index,
            me,
            mesh_row,
            local: RefCell::new(VecDeque::with_capacity(256)),
            buffer: crossbeam_deque::Worker::new_fifo(),
            live_head: Cell::new(None),
            live_futures: Cell::new(0),
            taken: Cell::new(0),
            notify_pending: (0..n).map(|_| Cell::new(false)).collect(),
            any_notify_pending: Cell::new(false),
            counted_idle: Cell::new(false),
            spin: super::spin::AdaptiveSpin::new(!registry.config.spin_before_park.is_zero()),
            rng: Cell::new(random_seed()),
            balanced_kept: Cell::new(0),
            wake_thief: Cell::new(false),
            mesh_cursor: Cell::new(0),
            driver: RefCell::new(driver),
            io_closed: Cell::new(false),
            buffers,
            stats: Default::default(),
            group: Cell::new(ptr::null()),
            completions: super::job::CompletionBatch::new(),
            registry,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` with the context of the worker this thread is, or None off a worker.
    pub fn with_current<R>(f: impl FnOnce(Option<&RuntimeContext>) -> R) -> R {
        with_current(f)
    }

    /// This worker's index, `0..workers`.
    pub fn worker_index(&self) -> usize {
        self.index
    }

    /// How many workers the runtime has.
    pub fn workers(&self) -> usize {
        self.registry.len()
    }

    /// A `Send` handle to the runtime, for spawning from other threads.
    pub fn handle(&self) -> Handle {
        Handle::from_registry(self.registry.clone())
    }

    /// The pointer the embedding layer attached to the runtime (the C `veloq_runtime *`).
    pub fn host_data(&self) -> *mut c_void {
        self.registry.host_data.load(Acquire)
    }

    /// A buffer of at least `size` bytes from this worker's pool: 4 KiB aligned,
    /// `len() == size`, registered with this worker's ring when the pool is (see
    /// [`PoolBuf::buf_index`]). From the best-fitting size class, else a larger one, else a
    /// plain unregistered allocation; O(1). The buffer may be dropped on any thread: it
    /// goes back to this pool. Errors: `InvalidInput` for 0 or more than 1 GiB,
    /// `OutOfMemory` when a plain allocation fails.
    pub fn alloc_buf(&self, size: usize) -> std::io::Result<PoolBuf> {
        self.buffers.alloc(size)
    }

    /// This worker's buffer pool counters (taking back buffers freed on other threads
    /// first).
    pub fn buffer_pool_stats(&self) -> PoolStats {
        self.buffers.stats()
    }

    /// This worker's shared state.
    #[inline]
    pub(crate) fn me(&self) -> &WorkerShared {
        // SAFETY: `me` points into `registry.workers`, which the registry never resizes
        // or moves, and `self.registry` keeps the registry alive as long as `self`.
        unsafe { self.me.as_ref() }
    }

    /// The mesh cell of channel (this worker → `worker`).
    #[inline(always)]
    fn mesh_cell(&self, worker: usize) -> &MeshCell<Job> {
        debug_assert!(worker < self.registry.len());
        // SAFETY: every caller passes a worker index (`< registry.len()`, the length of
        // the row `mesh_row` starts), and the row lives in `registry.mesh`, which never
        // moves or shrinks and which `self.registry` keeps alive.
        unsafe { &*self.mesh_row.as_ptr().add(worker) }
    }

    /// Spawns a `!Send` future on this worker; it never leaves it.
    pub fn spawn_local<F>(&self, future: F) -> Result<LocalJoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + 'static,
    {
        self.spawn_local_named(future, None)
    }

    /// `spawn_local` with an optional name (see `TaskBuilder`).
    pub(crate) fn spawn_local_named<F>(
        &self,
        future: F,
        name: Option<Arc<TaskName>>,
    ) -> Result<LocalJoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + 'static,
    {
        if self.registry.closed.load(Relaxed) {
            return Err(SpawnError::new(SpawnErrorKind::Shutdown, future));
        }
        self.stats.spawned.set(self.stats.spawned.get() + 1);
        // References: the live list, the run queue entry and the join handle.
        let task = TaskRef::new_local(future, self.me(), 3, name);
        self.adopted(task);
        self.push_local_task(task);
        Ok(LocalJoinHandle::new(task))
    }

    /// Spawns into this worker's injector; idle workers may steal it.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_future(Placement::Any, future)
    }

    /// Spawns on the less loaded of two workers (P2C): over the mesh to the chosen worker,
    /// or into this worker's injector, stealable (see [`Placement::Balanced`]).
    pub fn spawn_balanced<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_future(Placement::Balanced, future)
    }

    /// Spawns on worker `worker`, over the mesh; the task never moves from there.
    pub fn spawn_to<F>(
        &self,
        worker: usize,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_future(Placement::Worker(worker), future)
    }

    /// Queues a callback job from this worker.
    ///
    /// # Safety
    /// `task.func` may be called with `task.arg` on any worker thread (or on
    /// `Placement::Worker`'s), and `task.cq`, when not null, stays alive until its
    /// completion is posted (its reservation is taken here).
    // Always inlined: the path to another worker is a few dozen instructions (sending to
    // ourselves, a full channel and refusals are out of line), and a caller's sending
    // loop keeps the task in registers instead of paying a call frame per message.
    #[inline(always)]
    pub unsafe fn spawn_raw(
        &self,
        placement: Placement,
        task: RawTask,
    ) -> Result<(), SpawnError<RawTask>> {
        task.reserve_completion();
        self.submit(placement, move || Job::Raw(task))
            .map_err(|kind| {
                task.release_completion();
                SpawnError::new(kind, task)
            })
    }

    pub(crate) fn spawn_future<F>(
        &self,
        placement: Placement,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_task(placement, future, TaskRef::new_shared)
    }

    /// Places a `Send` task made by `alloc(value)`, or gives `value` back.
    pub(crate) fn spawn_task<V, T>(
        &self,
        placement: Placement,
        value: V,
        alloc: impl FnOnce(V) -> TaskRef,
    ) -> Result<JoinHandle<T>, SpawnError<V>> {
        place_task(&self.registry, value, alloc, |make| {
            self.submit(placement, make)
        })
    }

    /// Places a job; `make` runs only once the submission is accepted.
    ///
    /// From a worker no per-job shutdown handshake is needed: shutdown ends only when
    /// every worker is idle (see `ExecutorRegistry::try_terminate`), which this one is not
    /// while it runs the job calling this. A job accepted here always runs.
    ///
    /// The path to another worker (a push onto the mesh and a notification recorded for
    /// the end of the current job) is inlined into the spawn calls; sending to ourselves
    /// and a full channel are out of line. Inlined always (the compiler chose a call):
    /// a call frame per message is seven stores more (six saved registers and the return
    /// address), and stores leave the core in order behind the slot store, which waits
    /// for the slot's cache line to come back from the receiving core: a sender's speed
    /// is set by how many stores each message queues behind that one.
    #[inline(always)]
    fn submit(
        &self,
        placement: Placement,
        make: impl FnOnce() -> Job,
    ) -> Result<(), SpawnErrorKind> {
        let registry = &*self.registry;
        let (target, pinned) = match placement {
            Placement::Any => (self.index, false),
            Placement::Balanced => {
                let asker = Asker {
                    index: self.index,
                    kept_by_this_job: self.balanced_kept.get(),
                };
                (registry.p2c(&self.rng, Some(asker)), false)
            }
            Placement::Worker(w) if w < registry.len() => (w, true),
            Placement::Worker(_) => return Err(SpawnErrorKind::InvalidWorker),
        };
        if registry.closed.load(Relaxed) {
            return Err(SpawnErrorKind::Shutdown);
        }
        self.stats.spawned.set(self.stats.spawned.get() + 1);
        if target == self.index {
            self.submit_here(placement, make());
            return Ok(());
        }
        let cell = self.mesh_cell(target);
        // SAFETY: this thread is worker `self.index`, the only producer of its row; the
        // push is published at the latest by `flush_notifications`, which every job is
        // followed by.
        if let Err(make) = unsafe { registry.mesh.push_with(cell, make) } {
            self.overflow(target, pinned, make());
        }
        if self.notify_later(target) {
            // The job's first message to this worker (a ping, a reply) goes out at once;
            // the rest of a burst every `PUBLISH_EVERY` and when the job returns.
            // SAFETY: as for the push.
            unsafe { MeshMatrix::publish(cell) };
        }
        Ok(())
    }

    /// `submit` to this worker: `Any`, and `Balanced` when P2C chose this worker, into its
    /// injector (stealable: a burst of balanced spawns from one job would otherwise stay
    /// here however idle the others are); `Worker` straight into the local run queue.
    #[inline(never)]
    fn submit_here(&self, placement: Placement, job: Job) {
        if !matches!(placement, Placement::Worker(_)) {
            if placement == Placement::Balanced {
                let kept = self.balanced_kept.get() + 1;
                self.balanced_kept.set(kept);
                // The count is reset when the job's notifications are flushed, off the
                // loop's per-turn path.
                self.any_notify_pending.set(true);
                // A burst: a peer is woken as soon as the current job returns. A single
                // kept job is left to the end of the turn, like `Any`: this worker
                // usually runs it itself in the same turn, and an early wake would cost
                // a system call for nothing.
                if kept == BURST_WAKES_A_PEER {
                    self.wake_thief.set(true);
                }
            }
            self.me().count_submitted(1);
            self.me().injector.push(job);
            // Our own queue: a sleeping peer is woken at the end of the turn, or when the
            // current job returns for a balanced job kept here (see `wake_thief`).
            return;
        }
        match job.into_parts() {
            JobParts::Task(task) => {
                // References: the live list and the run queue entry.
                task.adopt(self.me(), 2);
                self.adopted(task);
                self.push_local_task(task);
            }
            JobParts::Raw(raw) => self.local.borrow_mut().push_back(Job::Raw(raw)),
        }
    }

    /// The mesh channel to `target` is full: the job goes to the target's inbox when
    /// pinned (never stolen), to its injector otherwise. Never lost, never refused.
    #[cold]
    #[inline(never)]
    fn overflow(&self, target: usize, pinned: bool, job: Job) {
        let worker = self.registry.worker(target);
        worker.count_submitted(1);
        if pinned {
            worker.inbox.push(InboxJob::One(job));
        } else {
            worker.injector.push(job);
        }
    }

    /// Records that `worker` must be notified once the current job returns (and our
    /// channel to it published); true when it was not recorded yet.
    #[inline(always)]
    fn notify_later(&self, worker: usize) -> bool {
        debug_assert!(worker < self.notify_pending.len());
        // SAFETY: callers pass a worker index, and there is one flag per worker.
        let pending = unsafe { self.notify_pending.get_unchecked(worker) };
        // Stores only when not recorded yet: in a burst to one worker, every later message
        // costs a load (see `submit` for why stores count).
        if pending.get() {
            return false;
        }
        pending.set(true);
        self.any_notify_pending.set(true);
        true
    }

    /// Publishes our mesh channel to every worker we handed work to since the last
    /// flush, and notifies each. Every job is followed by this call (and so is every
    /// loop turn, and going idle).
    #[inline]
    pub(crate) fn flush_notifications(&self) {
        if self.any_notify_pending.get() {
            self.flush_pending_notifications();
        }
    }

    /// The notifications `flush_notifications` found pending: the work is published
    /// before the notification reads the target's park state (see `park.rs`).
    #[inline(never)]
    fn flush_pending_notifications(&self) {
        self.any_notify_pending.set(false);
        for (i, pending) in self.notify_pending.iter().enumerate() {
            if pending.replace(false) {
                // SAFETY: this thread is worker `self.index`, the only producer of its row.
                unsafe { MeshMatrix::publish(self.mesh_cell(i)) };
                self.registry.worker(i).notify();
            }
        }
        self.balanced_kept.set(0);
        if self.wake_thief.replace(false) {
            self.wake_a_sleeping_peer();
        }
    }

    /// Registers a task that now belongs to this worker as unfinished.
    pub(crate) fn adopted(&self, task: TaskRef) {
        task.set_spawned_ms(self.stats.turn_ms());
        task.link_live(&self.live_head);
        self.live_futures.set(self.live_futures.get() + 1);
        self.me().task_memory_acquired();
    }

    /// Queues a scheduled task (the queue takes over one reference).
    #[inline]
    pub(crate) fn push_local_task(&self, task: TaskRef) {
        self.local.borrow_mut().push_back(Job::Task(task));
    }

    /// A task finished (or was cancelled): off the live list, its live reference dropped.
    pub(crate) fn task_finished(&self, task: TaskRef) {
        task.unlink_live(&self.live_head);
        self.live_futures.set(self.live_futures.get() - 1);
        task.release_local();
    }
}

/// Places a `Send` task through `submit`: the task is allocated from `value` only once
/// `submit` accepts it, and its handle returned; on refusal `value` comes back.
pub(crate) fn place_task<V, T>(
    registry: &Arc<ExecutorRegistry>,
    value: V,
    alloc: impl FnOnce(V) -> TaskRef,
    submit: impl FnOnce(&mut dyn FnMut() -> Job) -> Result<(), SpawnErrorKind>,
) -> Result<JoinHandle<T>, SpawnError<V>> {
    let mut value = Some(value);
    let mut alloc = Some(alloc);
    let mut handle = None;
    let submitted = submit(&mut || {
        let make = alloc.take().expect("made once");
        let task = make(value.take().expect("made once"));
        handle = Some(JoinHandle::new(task, registry.clone()));
        Job::Task(task)
    });
    match submitted {
        Ok(()) => Ok(handle.expect("made on success")),
        Err(kind) => Err(SpawnError::new(
            kind,
            value.take().expect("kept on refusal"),
        )),
    }
}

/// Runs `f` with the current worker's context, if this thread is a worker.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&RuntimeContext>) -> R) -> R {
    let cx = CURRENT.with(Cell::get);
    // SAFETY: CURRENT is set only while the context lives on this thread's stack
    // (see `enter`).
    f(unsafe { cx.as_ref() })
}

/// Posts the completions this thread's worker has gathered, if this is a worker thread;
/// true when there were any (see `CompletionBatch`).
#[cfg_attr(veloq_loom, allow(dead_code))]
pub(crate) fn flush_own_completions() -> bool {
    with_current(|cx| cx.is_some_and(|cx| cx.completions.flush()))
}

/// The shared state of the worker this thread is, or null.
pub(crate) fn current_worker_shared() -> *const WorkerShared {
    CURRENT_SHARED.with(Cell::get)
}

/// Installs `cx` as this thread's context while `f` runs.
pub(crate) fn enter<R>(cx: &RuntimeContext, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(ptr::null()));
            CURRENT_SHARED.with(|c| c.set(ptr::null()));
        }
    }
    CURRENT.with(|c| c.set(cx));
    CURRENT_SHARED.with(|c| c.set(cx.me()));
    let _reset = Reset;
    f()
}

/// Spawns a `!Send` future on the current worker. Fails with `NoRuntime` off a worker.
pub fn spawn_local<F>(future: F) -> Result<LocalJoinHandle<F::Output>, SpawnError<F>>
where
    F: Future + 'static,
{
    with_current(|cx| match cx {
        Some(cx) => cx.spawn_local(future),
        None => Err(SpawnError::new(SpawnErrorKind::NoRuntime, future)),
    })
}

/// Spawns a `Send` future: on a worker into its injector (stealable); inside
/// `Runtime::block_on`, onto some worker. Fails with `NoRuntime` elsewhere.
pub fn spawn<F>(future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_placed(Placement::Any, future)
}

/// Spawns a `Send` future on the less loaded of two workers (P2C).
pub fn spawn_balanced<F>(future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_placed(Placement::Balanced, future)
}

/// Spawns a `Send` future on worker `worker`; it never moves.
pub fn spawn_to<F>(worker: usize, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_placed(Placement::Worker(worker), future)
}

fn spawn_placed<F>(placement: Placement, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut future = Some(future);
    let on_worker = with_current(|cx| {
        cx.map(|cx| cx.spawn_future(placement, future.take().expect("taken once")))
    });
    if let Some(result) = on_worker {
        return result;
    }
    let future = future.take().expect("not taken off a worker");
    match super::runtime::entered_handle() {
        Some(handle) => handle.spawn_placed(placement, future),
        None => Err(SpawnError::new(SpawnErrorKind::NoRuntime, future)),
    }
}

/// The index of the worker this thread is, if it is one.
pub fn worker_index() -> Option<usize> {
    with_current(|cx| cx.map(|cx| cx.index))
}

/// Yields once: the task goes to the back of its worker's run queue.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
