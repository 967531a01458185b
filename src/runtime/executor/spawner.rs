//! What every thread may touch of a worker (`WorkerShared`), the registry of all of them
//! (`ExecutorRegistry`), and the placement policy (P2C).

use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_deque::Injector;
use crossbeam_utils::CachePadded;

use crate::runtime::intake::StealQueue;
use crate::runtime::introspect::{DumpRequest, WorkerWatch};
use crate::runtime::job::{InboxJob, Job};
use crate::runtime::mesh::MeshMatrix;
use crate::runtime::park::ParkState;
use crate::runtime::task::{RemoteOp, TaskRef};

/// Settings fixed at build time.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) budget: usize,
    /// Cooperative budget of one task poll (0: off), see `runtime::coop`.
    pub(crate) coop_budget: u32,
    pub(crate) spin_before_park: Duration,
    /// Longest wait of a busy worker's park for a batch of completions (0: off).
    pub(crate) io_batch_wait: Duration,
    /// How long a worker with I/O in flight polls before it parks (0: off).
    pub(crate) io_poll: Duration,
    pub(crate) ring_entries: u32,
    pub(crate) buffer_pool: crate::io::buffers::BufferPoolConfig,
    pub(crate) blocking: crate::runtime::blocking::BlockingConfig,
    /// The scheduling policies of the workers and the builder's thread.
    pub(crate) policies: crate::runtime::sched::ThreadPolicies,
}

/// Counters a worker publishes for others (statistics and load balancing).
#[derive(Default)]
pub(crate) struct WorkerCounters {
    pub(crate) tasks_local: AtomicU64,
    pub(crate) tasks_mesh: AtomicU64,
    pub(crate) tasks_injector: AtomicU64,
    pub(crate) tasks_inbox: AtomicU64,
    pub(crate) tasks_stolen: AtomicU64,
    pub(crate) polls: AtomicU64,
    /// Spawned by this worker's own jobs (published per turn).
    pub(crate) tasks_spawned: AtomicU64,
    pub(crate) steals: AtomicU64,
    pub(crate) parks: AtomicU64,
    pub(crate) wakeups_sent: AtomicU64,
    pub(crate) ring_flags: AtomicU64,
    /// The worker's I/O driver counters, as last published (see `DriverStats`).
    pub(crate) io_submitted: AtomicU64,
    pub(crate) io_completed: AtomicU64,
    pub(crate) io_stale: AtomicU64,
    pub(crate) io_backlog: AtomicU64,
    pub(crate) io_enters: AtomicU64,
    pub(crate) io_batched_parks: AtomicU64,
    /// The scheduling policy the worker runs under (set once at start).
    pub(crate) sched_policy: AtomicU64,
}

/// Written by the worker once per turn, read by every balanced submission.
#[derive(Default)]
struct Progress {
    /// Jobs of the injector and inbox run here or stolen away (see `submitted`).
    taken: AtomicU64,
    /// Length of the local run queue, as last published by the worker.
    local_queued: AtomicU64,
    /// Set by the stall watchdog while the worker is stuck in one job: balanced
    /// placement avoids it. Here because every balanced submission reads this line.
    stalled: AtomicBool,
}

/// Counts of jobs handed to a worker from anywhere (one line, written by submitters).
/// Their sum is the jobs ever put in this worker's injector or inbox (see
/// `WorkerShared::submitted`); kept apart so that an outside submission makes one RMW
/// for both the load and shutdown accounting and its statistics.
#[derive(Default)]
struct Submitted {
    /// Jobs handed over by workers (their own injector, mesh overflow, steals).
    count: AtomicU64,
    /// Jobs (tasks and callbacks) handed over by threads that are not workers, through
    /// `ExecutorRegistry::admit_n` (also the `spawned_outside` statistic).
    from_outside: AtomicU64,
}

/// The part of a worker that other threads may touch.
pub(crate) struct WorkerShared {
    /// Stealable work: `spawn` from this worker and the `spawn_balanced` P2C kept on it,
    /// `spawn` / `spawn_balanced` from outside, mesh overflow of unpinned work.
    pub(crate) injector: StealQueue,
    /// Pinned work that did not come over the mesh (from outside, or overflow): never
    /// stolen.
    pub(crate) inbox: Injector<InboxJob>,
    /// Waker operations from other threads on this worker's tasks (FIFO).
    remote: Injector<RemoteOp>,
    /// On its own line: every submission from another thread reads it, and the worker
    /// writes it only when it goes to sleep or wakes up.
    pub(crate) park: CachePadded<ParkState>,
    /// Written to wake the worker from its ring.
    pub(crate) eventfd: OwnedFd,
    /// Jobs ever put in this worker's injector or inbox (mesh jobs are not counted: see
    /// `ExecutorRegistry::try_terminate`).
    submitted: CachePadded<Submitted>,
    /// What the worker publishes once per turn for load balancing (`load`).
    progress: CachePadded<Progress>,
    /// Statistics, apart from what submitters read so that publishing them costs a
    /// submitting thread no cache miss. The `tasks_*` and `polls` counts are written by
    /// the worker only (see `executor::publish_count`).
    pub(crate) counters: CachePadded<WorkerCounters>,
    /// Progress and stall state for the watchdog and the dump.
    pub(crate) watch: CachePadded<WorkerWatch>,
    /// Set when the worker thread has left its loop; from then on remote operations are
    /// applied by whoever sends them, under `orphan_lock`.
    orphaned: AtomicBool,
    orphan_lock: Mutex<()>,
    /// Task allocations that still name this worker as owner. Touched only by the
    /// owner thread, or under `orphan_lock` once orphaned.
    task_memory: UnsafeCell<usize>,
    /// `Arc::into_raw` of the registry while orphaned tasks keep it alive.
    keep_alive: AtomicPtr<ExecutorRegistry>,
}

// SAFETY: `task_memory` is the only non-Sync field; see its comment for its discipline.
unsafe impl Sync for WorkerShared {}

impl WorkerShared {
    fn new(eventfd: OwnedFd) -> Self {
        WorkerShared {
            injector: StealQueue::new(),
            inbox: Injector::new(),
            remote: Injector::new(),
            park: CachePadded::new(ParkState::new()),
            eventfd,
            submitted: CachePadded::new(Submitted::default()),
            progress: CachePadded::new(Progress::default()),
            counters: CachePadded::new(WorkerCounters::default()),
            watch: CachePadded::new(WorkerWatch::default()),
            orphaned: AtomicBool::new(false),
            orphan_lock: Mutex::new(()),
            task_memory: UnsafeCell::new(0),
            keep_alive: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Wakes the worker if it sleeps; returns whether a system call was made.
    pub(crate) fn notify(&self) -> bool {
        if self.park.notify() {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
            let _ = unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    &one as *const u64 as *const c_void,
                    8,
                )
            };
            self.counters.wakeups_sent.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }

    // --- load accounting -----------------------------------------------------------------

    /// Counts a job a worker is about to hand to this worker.
    pub(crate) fn count_submitted(&self, n: u64) {
        self.submitted.count.fetch_add(n, SeqCst);
    }

    /// Counts jobs a thread that is not a worker is about to hand to this worker. SeqCst
    /// pairs with the shutdown check: see `ExecutorRegistry::admit_n`.
    fn count_submitted_outside(&self, n: u64) {
        self.submitted.from_outside.fetch_add(n, SeqCst);
    }

    /// Takes back an outside count whose jobs were refused before they were queued.
    fn uncount_submitted_outside(&self, n: u64) {
        self.submitted.from_outside.fetch_sub(n, SeqCst);
    }

    /// Jobs ever handed to this worker's injector or inbox, from anywhere.
    fn submitted(&self, order: std::sync::atomic::Ordering) -> u64 {
        let by_workers = self.submitted.count.load(order);
        by_workers.wrapping_add(self.submitted.from_outside.load(order))
    }

    /// Counts jobs of this worker that ran (or were stolen away).
    pub(crate) fn count_taken(&self, n: u64) {
        if n > 0 {
            self.progress.taken.fetch_add(n, SeqCst);
        }
    }

    /// Publishes the local run queue length (a store only when it changed, so an
    /// unchanged length costs readers no cache miss).
    pub(crate) fn publish_local_queued(&self, n: usize) {
        let n = n as u64;
        if self.progress.local_queued.load(Relaxed) != n {
            self.progress.local_queued.store(n, Relaxed);
        }
    }

    /// Queued and running work as others can see it: injector and inbox jobs not yet
    /// finished, plus the local run queue as last published. Never wraps or drifts:
    /// both counts only grow, `taken` is read first and every taken job was submitted
    /// before it.
    pub fn load(&self) -> u64 {
        let taken = self.progress.taken.load(Acquire);
        let submitted = self.submitted(Acquire);
        submitted.saturating_sub(taken) + self.progress.local_queued.load(Relaxed)
    }

    /// The local run queue length as last published.
    pub(crate) fn local_queued(&self) -> u64 {
        self.progress.local_queued.load(Relaxed)
    }

    /// Tasks spawned onto this worker from non-worker threads (counted by `admit_n`; a
    /// refused one is counted only while its refusal is under way).
    pub(crate) fn spawned_outside(&self) -> u64 {
        self.submitted.from_outside.load(Relaxed)
    }

    /// Whether the stall watchdog considers the worker stuck in one job.
    #[inline]
    pub(crate) fn is_stalled(&self) -> bool {
        self.progress.stalled.load(Relaxed)
    }

    /// Watchdog: marks the worker stalled or recovered.
    pub(crate) fn set_stalled(&self, stalled: bool) {
        self.progress.stalled.store(stalled, Relaxed);
    }

    /// Asks the worker for its section of a dump (answered in its next loop turn, or
    /// here when it has exited).
    pub(crate) fn post_dump(&self, request: Arc<DumpRequest>, index: usize) {
        self.post_remote(RemoteOp::Dump(request, index));
    }

    /// Whether every injector and inbox job handed to this worker has run.
    pub(crate) fn all_jobs_taken(&self) -> bool {
        let taken = self.progress.taken.load(SeqCst);
        self.submitted(SeqCst) == taken
    }

    /// Whether the injector and the inbox are empty and nothing is on its way into them.
    fn shared_queues_empty(&self) -> bool {
        self.injector.is_empty() && self.inbox.is_empty() && self.all_jobs_taken()
    }

    // --- remote waker operations ---------------------------------------------------------

    /// Sends a waker operation from a foreign thread to this worker.
    pub(crate) fn post_remote(&self, op: RemoteOp) {
        self.remote.push(op);
        std::sync::atomic::fence(SeqCst);
        if self.orphaned.load(SeqCst) {
            // The worker is gone (or leaving): apply what is queued ourselves.
            self.drain_orphaned();
        } else {
            self.notify();
        }
    }

    /// Whether remote operations wait.
    pub(crate) fn has_remote(&self) -> bool {
        !self.remote.is_empty()
    }

    /// Owner thread: applies queued remote operations; returns how many.
    pub(crate) fn drain_remote(&self, cx: &super::super::context::RuntimeContext) -> usize {
        let mut n = 0;
        while let Some(op) = self.remote.steal().success() {
            TaskRef::apply_remote(op, Some(cx));
            n += 1;
        }
        n
    }

    /// Owner thread: a task allocation naming this worker was made.
    pub(crate) fn task_memory_acquired(&self) {
        // SAFETY: owner thread (see `task_memory`).
        unsafe { *self.task_memory.get() += 1 };
    }

    /// Owner thread, or under `orphan_lock`: a task allocation was let go.
    pub(crate) fn task_memory_released(&self) {
        // SAFETY: owner thread or orphan lock held (see `task_memory`).
        unsafe { *self.task_memory.get() -= 1 };
    }

    /// Owner thread, leaving its loop: from now on remote operations are applied by
    /// their senders. If tasks are still allocated (foreign wakers hold them), the
    /// registry is kept alive until the last of them is released.
    pub(crate) fn orphan(&self, registry: &Arc<ExecutorRegistry>) {
        let _guard = self.orphan_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.orphaned.store(true, SeqCst);
        while let Some(op) = self.remote.steal().success() {
            TaskRef::apply_remote(op, None);
        }
        // SAFETY: orphan lock held.
        if unsafe { *self.task_memory.get() } > 0 {
            let raw = Arc::into_raw(registry.clone()) as *mut ExecutorRegistry;
            self.keep_alive.store(raw, SeqCst);
        }
    }

    fn drain_orphaned(&self) {
        let release = {
            let _guard = self.orphan_lock.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(op) = self.remote.steal().success() {
                TaskRef::apply_remote(op, None);
            }
            // SAFETY: orphan lock held.
            if unsafe { *self.task_memory.get() } == 0 {
                self.keep_alive.swap(std::ptr::null_mut(), SeqCst)
            } else {
                std::ptr::null_mut()
            }
        };
        if !release.is_null() {
            // SAFETY: made by Arc::into_raw in `orphan`, taken out exactly once by the
            // swap above. `self` is not used after this point.
            drop(unsafe { Arc::from_raw(release) });
        }
    }
}

/// The worker asking [`ExecutorRegistry::p2c`] where a balanced spawn goes.
#[derive(Clone, Copy)]
pub(crate) struct Asker {
    pub index: usize,
    /// Balanced jobs it kept in its own injector during its current job. They count in
    /// its live load, but P2C leaves them out. A job spawning in a loop would otherwise
    /// make its worker look as loaded as the one it sends to. An even split would then
    /// commit half the burst to that worker's mesh channel, where no one can steal it
    /// even if that worker is stuck in a long job. What stays here is stealable, and for
    /// a burst a sleeping peer is woken as soon as the job returns. Approximate once
    /// peers steal some of them: that lowers the live load but not this count, so the
    /// rest of the load may read low (never below 0); what it leaves out is stealable
    /// anyway.
    pub kept_by_this_job: u64,
}

/// All workers' shared state, the mesh and the runtime-wide flags. Every worker, every
/// `Handle` and every `JoinHandle` holds it through an `Arc`.
///
/// Aligned to a pair of cache lines so that, inside the `Arc`, the reference counts
/// (written by every `JoinHandle` made and dropped: twice per spawn from outside) do not
/// share a line with the fields every worker reads every turn (`workers`, `mesh`, flags).
#[repr(align(128))]
pub(crate) struct ExecutorRegistry {
    pub(crate) workers: Box<[CachePadded<WorkerShared>]>,
    pub(crate) mesh: MeshMatrix<Job>,
    pub(crate) config: Config,
    /// Set when shutdown starts: new submissions are refused.
    pub(crate) closed: AtomicBool,
    /// Set when the shutdown limit passed (or on drop): unfinished futures are dropped.
    pub(crate) cancel: AtomicBool,
    /// Workers that have left their loop, and the condition shutdown waits on.
    pub(crate) exited: Mutex<usize>,
    pub(crate) exited_cv: Condvar,
    /// An opaque pointer the C layer attaches (its `veloq_runtime *`).
    pub(crate) host_data: AtomicPtr<c_void>,
    /// During shutdown: workers with nothing left to do (low 32 bits) and how many times
    /// one of them found work again (high 32 bits). See `try_terminate`.
    idle: AtomicU64,
    /// Set once every worker may exit.
    pub(crate) terminated: AtomicBool,
    /// The blocking pool (`spawn_blocking`); closed and drained by `Runtime::shutdown`.
    pub(crate) blocking: crate::runtime::blocking::BlockingPool,
    /// How many workers the stall watchdog considers stalled now (a fast "none" for
    /// the stealing path).
    pub(crate) stalled_workers: AtomicUsize,
}

/// One worker in `ExecutorRegistry::idle`.
const IDLE_ONE: u64 = 1;
/// One un-idling in `ExecutorRegistry::idle` (epoch + 1, count - 1).
const IDLE_LEAVE: u64 = (1 << 32) - 1;

impl ExecutorRegistry {
    /// This runtime's identity among live runtimes (its registry's address), for pool
    /// buffers to name the runtime of their worker. A runtime freed may pass it on.
    pub(crate) fn token(&self) -> usize {
        self as *const ExecutorRegistry as usize
    }

    pub(crate) fn new(
        eventfds: Vec<OwnedFd>,
        mesh_capacity: usize,
        config: Config,
    ) -> ExecutorRegistry {
        let n = eventfds.len();
        ExecutorRegistry {
            workers: eventfds
                .into_iter()
                .map(|fd| CachePadded::new(WorkerShared::new(fd)))
                .collect(),
            mesh: MeshMatrix::new(n, mesh_capacity),
            blocking: crate::runtime::blocking::BlockingPool::new(config.blocking.clone()),
            config,
            closed: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            exited: Mutex::new(0),
            exited_cv: Condvar::new(),
            host_data: AtomicPtr::new(std::ptr::null_mut()),
            idle: AtomicU64::new(0),
            terminated: AtomicBool::new(false),
            stalled_workers: AtomicUsize::new(0),
        }
    }

    // --- shutdown by quiescence ----------------------------------------------------------
    //
    // Jobs a worker hands to another (mesh, overflow, its own injector) are not counted
    // one by one: a worker only hands work over while it runs a job, and it counts itself
    // idle only after that job returned and its own queues are empty. So once every
    // worker is idle and every shared queue is empty, no job can appear any more (outside
    // threads are refused, or counted through `admit`) and all may exit.

    /// A worker has nothing left to do during shutdown.
    pub(crate) fn enter_idle(&self) {
        self.idle.fetch_add(IDLE_ONE, SeqCst);
    }

    /// A worker that counted itself idle is about to take work again. Must come before
    /// it takes anything out of a queue.
    pub(crate) fn leave_idle(&self) {
        self.idle.fetch_add(IDLE_LEAVE, SeqCst);
    }

    /// Ends shutdown if every worker is idle and every shared queue is empty, with no
    /// worker leaving idle meanwhile (the epoch is read before and after the scan).
    pub(crate) fn try_terminate(&self) -> bool {
        if self.terminated.load(SeqCst) {
            return true;
        }
        let before = self.idle.load(SeqCst);
        if before & 0xffff_ffff != self.len() as u64 {
            return false;
        }
        let n = self.len();
        for to in 0..n {
            if !self.workers[to].shared_queues_empty() {
                return false;
            }
            for from in 0..n {
                if self.mesh.channel(from, to).is_some_and(|c| !c.is_drained()) {
                    return false;
                }
            }
        }
        if self.idle.load(SeqCst) != before {
            return false;
        }
        self.terminated.store(true, SeqCst);
        for w in self.workers.iter() {
            w.notify();
        }
        true
    }

    pub(crate) fn worker(&self, i: usize) -> &WorkerShared {
        &self.workers[i]
    }

    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Counts a submission to `target` unless shutdown has started. The count is made
    /// before `closed` is read, and shutdown sets `closed` before workers compare their
    /// counts (all SeqCst): a submission is either refused here or waited for by its
    /// worker, never lost.
    pub(crate) fn admit(&self, target: &WorkerShared) -> bool {
        self.admit_n(target, 1)
    }

    /// `admit` for `n` jobs handed over together (one count, one check). For threads
    /// that are not workers: the count is also their `spawned_outside` statistic.
    pub(crate) fn admit_n(&self, target: &WorkerShared, n: u64) -> bool {
        target.count_submitted_outside(n);
        if self.closed.load(SeqCst) {
            target.uncount_submitted_outside(n);
            // Shutdown may have waited on this count: let the target look again.
            target.notify();
            false
        } else {
            true
        }
    }

    /// Power of two choices: the less loaded of two workers drawn at random. `from` is
    /// the worker asking, if a worker asks: its unconsumed mesh messages to each candidate
    /// count too, and its own load leaves out what its current job kept in its injector
    /// (see [`Asker`]).
    #[inline]
    pub(crate) fn p2c(&self, rng: &Cell<u64>, from: Option<Asker>) -> usize {
        let n = self.len();
        if n == 1 {
            return 0;
        }
        // One draw for both: its high and low halves, each mapped onto its range with a
        // multiply and a shift instead of a division.
        let r = next_random(rng);
        let a = below(r >> 32, n);
        let mut b = below(r & 0xffff_ffff, n - 1);
        if b >= a {
            b += 1;
        }
        let load = |w: usize| match from {
            Some(asker) if asker.index == w => self.workers[w]
                .load()
                .saturating_sub(asker.kept_by_this_job),
            Some(asker) => {
                let sent = self
                    .mesh
                    .channel(asker.index, w)
                    .map_or(0, |c| c.occupancy() as u64);
                self.workers[w].load() + sent
            }
            None => self.workers[w].load(),
        };
        // A stalled worker gets nothing: the other candidate, or any worker that is not
        // stalled (the flags sit on the line `load` reads anyway).
        match (self.workers[a].is_stalled(), self.workers[b].is_stalled()) {
            (false, false) => {}
            (true, false) => return b,
            (false, true) => return a,
            (true, true) => return self.unstalled_from(a),
        }
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }

    /// `start`, or the first worker after it that is not stalled (`start` when all are).
    #[inline]
    pub(crate) fn unstalled_from(&self, start: usize) -> usize {
        // Nothing stalled (the usual case): no look at any worker's flag, whose line the
        // worker writes every turn.
        if self.stalled_workers.load(Relaxed) == 0 {
            return start;
        }
        self.first_unstalled_from(start)
    }

    #[inline(never)]
    fn first_unstalled_from(&self, start: usize) -> usize {
        let n = self.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&w| !self.workers[w].is_stalled())
            .unwrap_or(start)
    }

    /// A stalled worker other than `me` whose injector has work, if any.
    pub(crate) fn stalled_peer(&self, me: usize) -> Option<usize> {
        if self.stalled_workers.load(Relaxed) == 0 {
            return None;
        }
        (0..self.len()).find(|&w| {
            w != me && self.workers[w].is_stalled() && !self.workers[w].injector.is_empty()
        })
    }
}

/// Maps a 32-bit random value onto `0..n` (n < 2^32) without a division.
pub(crate) fn below(r32: u64, n: usize) -> usize {
    ((r32 * n as u64) >> 32) as usize
}

/// xorshift64*: the per-thread generator for P2C and victim selection.
pub(crate) fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A seed that differs between threads and calls.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(&h as *const _ as usize);
    h.finish() | 1
}
