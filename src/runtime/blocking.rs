//! The blocking pool: an elastic set of threads for CPU-heavy work and blocking system
//! calls, so that neither ever runs on a worker.
//!
//! # Threads
//! Threads (named `veloq-b{n}`) are started lazily: a job that arrives while no thread is
//! idle starts one, up to `max`. A thread that finds the queue empty waits for work; past
//! the idle timeout it exits, unless that would leave fewer than `min` threads alive.
//! When all `max` threads are busy, jobs wait in one FIFO queue.
//!
//! The queue is a `Mutex<VecDeque>` with a `Condvar`: this is not a hot path, and a lock
//! keeps "queued, taken, refused" decisions simple to reason about. A submission wakes
//! at most one idle thread (`notify_one`, accounted in `State::notified`), never all of
//! them. A new thread is started under the lock, which makes the rare growing submission
//! pay for the `clone` system call. A submitter (a worker included) thus never waits for
//! a job or for a thread to become free, only for the lock, which is held for a few
//! queue operations and, when the pool grows, for starting one thread. Starting threads
//! under the lock keeps the rule "a queued job always has a thread that will take it"
//! true at every moment the lock is free:
//!
//! * a job is queued only while a thread is alive (a submission that finds no thread
//!   and cannot start one is refused with `NoThread`);
//! * a thread goes to wait only after it saw the queue empty (under the lock);
//! * a submission that finds an idle thread hands it a notification, one that finds none
//!   starts a thread or leaves the job to the busy ones, which look at the queue again
//!   before they wait.
//!
//! # Shutdown, in order
//! 1. `Runtime::shutdown` sets the registry's `closed` flag (every spawn reading it from
//!    then on is refused), then [`BlockingPool::close`] sets `closing` under the lock. A
//!    submission tests `closing` under the same lock, so every job is either queued
//!    before `closing` (and will run) or refused, never lost or half-accepted.
//! 2. `closing` wakes every idle thread. Threads keep taking jobs until the queue is
//!    empty; only then do they exit, whatever `min` says. No job can enter a closing
//!    queue, so "closing and empty" is final: each queued job runs exactly once.
//! 3. Workers drain on their own rules meanwhile. A task awaiting a
//!    [`BlockingJoinHandle`] is a live future, so its worker does not count itself idle
//!    and stays in its loop; the pool's completion wakes the task through its waker (a
//!    foreign wake is routed to the owning worker), it finishes, then the worker may
//!    exit. The pool never waits for the workers, and a blocking job that waits for a
//!    worker task waits for a live task on a running worker: no cycle. `shutdown` waits
//!    for the workers first and then for the pool, both against the same deadline; the
//!    two sets of threads run concurrently with the waiter, so the order of waiting
//!    changes nothing but which one is reported first.
//! 4. When the deadline passes, `shutdown` returns `TimedOut`; unfinished worker futures
//!    are cancelled as before, but a blocking job cannot be interrupted: queued ones
//!    still run. Calling `shutdown` again goes on waiting.
//! 5. Once every pool thread has left (`alive == 0`), `shutdown` joins their threads, so
//!    after it returned (and after `Runtime` drop or `veloq_runtime_free`) no pool thread
//!    runs. A runtime dropped on one of its own workers or pool threads cannot wait: the
//!    pool is closed and its threads exit by themselves once the queue is empty.
//!
//! # C jobs
//! A C job (`veloq_spawn_blocking`) is a [`RawTask`] run with a NULL context on a pool
//! thread; its completion (`worker` = `u32::MAX`, no worker produced it) goes to its
//! completion queue, whose reservation was taken when the job was accepted.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::completion::Cqe;
use super::context::{self, RuntimeContext};
use super::executor::spawner::ExecutorRegistry;
use super::job::RawTask;
use super::join::{JoinError, SharedJoin};
use super::runtime::{self as rt, Handle, Runtime, SpawnError, SpawnErrorKind};
use super::sched::ThreadPolicies;

/// The pool's settings, fixed at build time (see `RuntimeBuilder::blocking_threads`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockingConfig {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) idle_timeout: Duration,
    /// The policy the pool's threads run under (see `runtime::sched`).
    pub(crate) policies: ThreadPolicies,
}

impl Default for BlockingConfig {
    fn default() -> Self {
        BlockingConfig {
            min: 0,
            max: DEFAULT_MAX_THREADS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            policies: ThreadPolicies::default(),
        }
    }
}

/// Most blocking threads unless set.
pub(crate) const DEFAULT_MAX_THREADS: usize = 64;
/// Largest `max` accepted.
pub(crate) const MAX_THREADS: usize = 4096;
/// How long a thread beyond `min` waits for work before it exits, unless set.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

impl BlockingConfig {
    /// Checks `min <= max` and `1 <= max <= MAX_THREADS`.
    pub(crate) fn check_threads(min: usize, max: usize) -> Result<(), &'static str> {
        if max == 0 || max > MAX_THREADS {
            return Err("blocking_threads: max out of 1..=MAX_BLOCKING_THREADS");
        }
        if min > max {
            return Err("blocking_threads: min greater than max");
        }
        Ok(())
    }
}

/// A pool's counters at one moment, from [`Runtime::blocking_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockingStats {
    /// Threads started and not exited.
    pub threads: usize,
    /// Of those, threads waiting for work.
    pub idle: usize,
    /// Jobs accepted and not taken by a thread yet.
    pub queued: usize,
    /// Jobs that have run to the end (including those that panicked); a job is counted
    /// just after its result was handed over, so a caller holding every result may
    /// briefly see the last few uncounted.
    pub completed: u64,
}

/// One unit of blocking work.
pub(crate) enum BlockingJob {
    /// A Rust closure; it completes its own handle (see `spawn_on`).
    Rust(Box<dyn FnOnce() + Send + 'static>),
    /// A C callback, run with a NULL context; posts its completion to its queue.
    Raw(RawTask),
}

impl BlockingJob {
    /// Runs the job on the calling pool thread. Never unwinds.
    fn run(self) {
        match self {
            BlockingJob::Rust(f) => {
                // The closure catches its own panic (it becomes the handle's JoinError);
                // this outer catch only keeps the thread alive if completing the handle
                // itself panicked (a waker's wake, a payload's drop).
                let _ = catch_unwind(AssertUnwindSafe(f));
            }
            BlockingJob::Raw(task) => {
                // SAFETY: the promise of `spawn_blocking_raw`: `func` may be called with
                // `arg` on a pool thread with a NULL context.
                let res = catch_unwind(AssertUnwindSafe(|| unsafe {
                    (task.func)(std::ptr::null_mut(), task.arg)
                }))
                .unwrap_or(i64::from(crate::ffi::VELOQ_EPANIC));
                // SAFETY: a non-null cq holds the reservation taken when the job was
                // accepted, so it is still alive.
                if let Some(cq) = unsafe { task.cq.as_ref() } {
                    cq.post_reserved(Cqe {
                        user_data: task.user_data,
                        res,
                        flags: 0,
                        worker: u32::MAX,
                    });
                }
            }
        }
    }
}

/// What the lock protects.
struct State {
    /// Accepted jobs not taken yet, oldest first.
    queue: VecDeque<BlockingJob>,
    /// Threads started and not exited.
    alive: usize,
    /// Threads waiting for work that no notification has claimed yet.
    idle: usize,
    /// Notifications given to idle threads and not consumed yet (each one was taken
    /// off `idle` by its giver).
    notified: usize,
    /// Shutdown started: no new job; threads exit once the queue is empty.
    closing: bool,
    /// Threads to join (exited ones are joined when the next thread starts).
    threads: Vec<thread::JoinHandle<()>>,
    /// Number for the next thread's name.
    next_id: u64,
    /// Jobs run to the end.
    completed: u64,
}

/// The shared part of the pool; every pool thread holds it.
struct PoolShared {
    state: Mutex<State>,
    /// Idle threads wait here for a job or for `closing`.
    work: Condvar,
    /// `drain` waits here for the last thread to leave.
    drained: Condvar,
    config: BlockingConfig,
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock can only come from a bug in
        // this module; its state is still consistent at every unlock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The runtime's blocking pool (one per runtime, in its registry).
pub(crate) struct BlockingPool {
    shared: Arc<PoolShared>,
}

impl BlockingPool {
    pub(crate) fn new(config: BlockingConfig) -> Self {
        BlockingPool {
            shared: Arc::new(PoolShared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    alive: 0,
                    idle: 0,
                    notified: 0,
                    closing: false,
                    threads: Vec::new(),
                    next_id: 0,
                    completed: 0,
                }),
                work: Condvar::new(),
                drained: Condvar::new(),
                config,
            }),
        }
    }

    /// Queues the job `make` returns: wakes one idle thread, or starts one (up to
    /// `max`), or leaves it to the busy threads. Refused with `Shutdown` once closing,
    /// and with `NoThread` when no thread is alive and none could be started; `make`
    /// runs only when the job is accepted (so a refused caller keeps what it had).
    /// `registry` is entered on a new thread, so the free `veloq::spawn*` functions
    /// work inside blocking jobs.
    fn push(
        &self,
        registry: &Arc<ExecutorRegistry>,
        make: impl FnOnce() -> BlockingJob,
    ) -> Result<(), SpawnErrorKind> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.closing {
            return Err(SpawnErrorKind::Shutdown);
        }
        if state.idle > 0 {
            state.queue.push_back(make());
            state.idle -= 1;
            state.notified += 1;
            drop(state);
            shared.work.notify_one();
            return Ok(());
        }
        if state.alive < shared.config.max {
            // Join the threads that exited since the last start (each has returned from
            // its body already, so this does not wait).
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut state.threads)
                .into_iter()
                .partition(|t| t.is_finished());
            state.threads = running;
            for t in done {
                let _ = t.join();
            }
            let id = state.next_id;
            let (pool, handle) = (shared.clone(), Handle::from_registry(registry.clone()));
            // The new thread needs the lock we hold to look at the queue: it finds the
            // job queued below.
            match thread::Builder::new()
                .name(format!("veloq-b{id}"))
                .spawn(move || thread_main(pool, handle))
            {
                Ok(t) => {
                    state.next_id += 1;
                    state.alive += 1;
                    state.threads.push(t);
                }
                // Nobody would ever take it.
                Err(_) if state.alive == 0 => return Err(SpawnErrorKind::NoThread),
                // A busy thread will take it when it is done.
                Err(_) => {}
            }
        }
        state.queue.push_back(make());
        Ok(())
    }

    /// Whether the calling thread is one of this pool's (running one of its jobs): such
    /// a thread must not wait for the pool to drain, it would wait for itself.
    pub(crate) fn is_own_thread(&self) -> bool {
        SERVING.with(|s| std::ptr::eq(s.get(), Arc::as_ptr(&self.shared)))
    }

    /// Shutdown step 1–2 (module doc): refuse new jobs, wake every idle thread so it
    /// drains the queue and exits. Idempotent.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        if state.closing {
            return;
        }
        state.closing = true;
        state.notified += state.idle;
        state.idle = 0;
        drop(state);
        self.shared.work.notify_all();
    }

    /// Shutdown step 5: waits until every queued job has run and every thread has left,
    /// then joins them. False when `deadline` passed first (call again to go on).
    /// Must follow `close`.
    pub(crate) fn drain(&self, deadline: Option<Instant>) -> bool {
        let shared = &self.shared;
        let mut state = shared.lock();
        debug_assert!(state.closing, "drain before close");
        while state.alive > 0 {
            state = match deadline {
                None => shared
                    .drained
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    shared
                        .drained
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        let threads = std::mem::take(&mut state.threads);
        drop(state);
        for t in threads {
            let _ = t.join();
        }
        true
    }

    pub(crate) fn stats(&self) -> BlockingStats {
        let state = self.shared.lock();
        BlockingStats {
            threads: state.alive,
            idle: state.idle,
            queued: state.queue.len(),
            completed: state.completed,
        }
    }
}

thread_local! {
    /// The pool this thread serves (its `PoolShared`'s address); null on other threads.
    static SERVING: std::cell::Cell<*const PoolShared> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// The body of a pool thread: take jobs until closing and empty, or idle too long.
fn thread_main(pool: Arc<PoolShared>, handle: Handle) {
    SERVING.with(|s| s.set(Arc::as_ptr(&pool)));
    pool.config.policies.enter_blocking();
    let _entered = rt::EnterGuard::enter(handle);
    let config = &pool.config;
    let mut state = pool.lock();
    'work: loop {
        if let Some(job) = state.queue.pop_front() {
            drop(state);
            job.run();
            state = pool.lock();
            state.completed += 1;
            continue;
        }
        if state.closing {
            break;
        }
        // The queue is empty (seen under the lock): wait for a notification.
        state.idle += 1;
        // None: a timeout too long to add to the clock, so never.
        let deadline = Instant::now().checked_add(config.idle_timeout);
        loop {
            state = match deadline {
                Some(deadline) if state.alive > config.min => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    pool.work
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                _ => pool.work.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
            if state.notified > 0 {
                // Our giver already took us off `idle`.
                state.notified -= 1;
                continue 'work;
            }
            if state.alive > config.min && deadline.is_some_and(|d| Instant::now() >= d) {
                state.idle -= 1;
                break 'work;
            }
        }
    }
    state.alive -= 1;
    if state.alive == 0 {
        pool.drained.notify_all();
    }
}

// ---------------------------------------------------------------------------------------
// The handle.

/// Awaits a blocking job's result; `Send`, awaitable on any thread, or waited for with
/// [`BlockingJoinHandle::join`] off the workers.
///
/// Resolves to the closure's return value, or [`JoinError::Panicked`] when it panicked.
/// Dropping the handle detaches the job: it still runs, its result is dropped. A job
/// cannot be cancelled once accepted (not even by shutdown: accepted jobs always run).
pub struct BlockingJoinHandle<T> {
    join: Arc<SharedJoin<T>>,
}

impl<T> BlockingJoinHandle<T> {
    /// Whether the job has finished (its result, or its panic, is in).
    pub fn is_finished(&self) -> bool {
        self.join.is_ready()
    }

    /// Blocks the calling thread until the job finished and returns its result.
    ///
    /// # Panics
    /// When called on a worker thread (it would block the worker; `.await` instead).
    pub fn join(self) -> Result<T, JoinError> {
        assert!(
            context::worker_index().is_none(),
            "BlockingJoinHandle::join called on a worker thread; await the handle instead"
        );
        struct Unpark(Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(out) = self.join.poll_output(&mut cx) {
                return out;
            }
            thread::park();
        }
    }
}

impl<T> Future for BlockingJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.join.poll_output(cx)
    }
}

impl<T> fmt::Debug for BlockingJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingJoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// Spawning.

/// Queues `f` on `registry`'s pool; the one path behind every `spawn_blocking`.
fn spawn_on<F, R>(
    registry: &Arc<ExecutorRegistry>,
    f: F,
) -> Result<BlockingJoinHandle<R>, SpawnError<F>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if registry.closed.load(SeqCst) {
        return Err(SpawnError::new(SpawnErrorKind::Shutdown, f));
    }
    let mut f = Some(f);
    let mut handle = None;
    let pushed = registry.blocking.push(registry, || {
        let f = f.take().expect("made once");
        let join = Arc::new(SharedJoin::new());
        handle = Some(BlockingJoinHandle { join: join.clone() });
        BlockingJob::Rust(Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).map_err(JoinError::Panicked);
            join.complete(out);
        }))
    });
    match pushed {
        Ok(()) => Ok(handle.expect("made on success")),
        Err(kind) => Err(SpawnError::new(kind, f.take().expect("kept on refusal"))),
    }
}

impl Handle {
    /// Runs `f` on the runtime's blocking pool: a thread that is not a worker, for
    /// CPU-heavy work or blocking system calls. Returns at once (the caller never waits
    /// for the pool); the handle resolves to `f`'s result, or [`JoinError::Panicked`].
    /// Awaited from a task, the result wakes that task on its own worker.
    ///
    /// Inside `f`, the free `veloq::spawn*` functions spawn onto this runtime.
    /// Errors: `Shutdown` once shutdown has started (every job accepted before it still
    /// runs, exactly once); `NoThread` when the pool has no thread and the OS refused to
    /// start one. Callable from any thread.
    pub fn spawn_blocking<F, R>(&self, f: F) -> Result<BlockingJoinHandle<R>, SpawnError<F>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_on(self.registry(), f)
    }

    /// Runs a C-style callback on the blocking pool: `task.func(NULL, task.arg)` runs
    /// exactly once on a pool thread (the context is NULL: no worker runs it), and when
    /// `task.cq` is not null exactly one completion `{user_data, res = func's return,
    /// flags 0, worker u32::MAX}` is posted to it. Errors as [`Handle::spawn_blocking`];
    /// on refusal nothing runs and nothing is posted. Callable from any thread.
    ///
    /// # Safety
    /// `task.func` may be called with `task.arg` and a null context on another thread,
    /// and `task.cq`, when not null, stays alive until its completion is posted (the
    /// reservation taken here keeps a C `veloq_cq_free` from freeing it).
    pub unsafe fn spawn_blocking_raw(&self, task: RawTask) -> Result<(), SpawnError<RawTask>> {
        let registry = self.registry();
        if registry.closed.load(SeqCst) {
            return Err(SpawnError::new(SpawnErrorKind::Shutdown, task));
        }
        task.reserve_completion();
        registry
            .blocking
            .push(registry, || BlockingJob::Raw(task))
            .map_err(|kind| {
                task.release_completion();
                SpawnError::new(kind, task)
            })
    }
}

impl Runtime {
    /// The blocking pool's counters now (threads alive and idle, jobs queued and
    /// completed). Callable from any thread.
    pub fn blocking_stats(&self) -> BlockingStats {
        self.registry().blocking.stats()
    }
}

impl RuntimeContext {
    /// [`Handle::spawn_blocking`] from this worker: `f` runs on the runtime's blocking
    /// pool, never on this worker; awaiting the handle wakes the task here.
    pub fn spawn_blocking<F, R>(&self, f: F) -> Result<BlockingJoinHandle<R>, SpawnError<F>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_on(&self.registry, f)
    }
}

/// Runs `f` on the blocking pool of the current runtime: the worker's this thread is,
/// else the one whose `Runtime::block_on` runs here (or whose blocking job this is).
/// See [`Handle::spawn_blocking`]; fails with `NoRuntime` elsewhere.
pub fn spawn_blocking<F, R>(f: F) -> Result<BlockingJoinHandle<R>, SpawnError<F>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let mut f = Some(f);
    let on_worker = context::with_current(|cx| {
        cx.map(|cx| spawn_on(&cx.registry, f.take().expect("taken once")))
    });
    if let Some(result) = on_worker {
        return result;
    }
    let f = f.take().expect("not taken on a worker");
    match rt::entered_handle() {
        Some(handle) => handle.spawn_blocking(f),
        None => Err(SpawnError::new(SpawnErrorKind::NoRuntime, f)),
    }
}
