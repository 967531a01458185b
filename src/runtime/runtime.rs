//! `Runtime`, its builder, and `Handle`, the `Send` door into it from any thread.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::pin;
use std::sync::atomic::Ordering::{Release, SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::blocking::{self, BlockingConfig};
use super::context::{self, RuntimeContext};
use super::executor::spawner::{Config, ExecutorRegistry};
use super::introspect::{self, QueueDepths, RuntimeDump};
use super::job::{InboxJob, Job, RawTask};
use super::join::JoinHandle;
use super::mesh::MeshMatrix;
use super::sched::ThreadPolicies;
use super::task::TaskRef;
use super::watchdog::{StallConfig, StallReport, Watchdog};
use crate::io::buffers::BufferPoolConfig;
use crate::io::driver::Driver;

/// Where a spawned task or callback should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On a worker: its own injector (stealable). Elsewhere: some worker's injector.
    Any,
    /// The less loaded of two workers drawn at random (P2C). From a worker, it goes over
    /// the mesh to the chosen worker, or into the caller's own injector when P2C chose
    /// the caller. The caller's load, for P2C, leaves out the balanced spawns it kept
    /// there during the current job. A burst spawned from one job therefore mostly
    /// stays there, stealable, and one sleeping worker (if any) is woken to steal as soon
    /// as the job returns. From elsewhere it goes through the chosen worker's injector.
    /// Stealable while in an injector.
    Balanced,
    /// Exactly this worker; never stolen.
    Worker(usize),
}

/// Why a spawn was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnErrorKind {
    /// The runtime is shutting down (or shut down).
    Shutdown,
    /// `Placement::Worker` named a worker the runtime does not have.
    InvalidWorker,
    /// Called off a worker thread with no runtime to spawn on.
    NoRuntime,
    /// `spawn_blocking`: the blocking pool has no thread and the OS refused to start one.
    NoThread,
    /// `Handle::spawn_raw_batch`: the memory to carry the jobs could not be allocated.
    NoMemory,
}

/// A refused spawn; gives back what was to be spawned.
pub struct SpawnError<T> {
    kind: SpawnErrorKind,
    value: T,
}

impl<T> SpawnError<T> {
    pub(crate) fn new(kind: SpawnErrorKind, value: T) -> Self {
        SpawnError { kind, value }
    }

    /// Why it was refused.
    pub fn kind(&self) -> SpawnErrorKind {
        self.kind
    }

    /// The future or callback that was not spawned.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> fmt::Debug for SpawnError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl<T> fmt::Display for SpawnError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            SpawnErrorKind::Shutdown => "spawn refused: the runtime is shutting down",
            SpawnErrorKind::InvalidWorker => "spawn refused: no such worker",
            SpawnErrorKind::NoRuntime => "spawn refused: not on a runtime",
            SpawnErrorKind::NoThread => "spawn refused: no blocking thread could be started",
            SpawnErrorKind::NoMemory => "spawn refused: out of memory",
        })
    }
}

impl<T> std::error::Error for SpawnError<T> {}

/// Why `shutdown` did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownError {
    /// The limit passed first. Unfinished futures are now being cancelled; call
    /// `shutdown` again to wait for the workers to exit.
    TimedOut,
    /// Called from one of the runtime's own threads (a worker, or a blocking-pool
    /// thread running a job), where waiting would deadlock. Nothing was done.
    FromWorker,
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownError::TimedOut => "shutdown timed out; unfinished tasks are being cancelled",
            ShutdownError::FromWorker => {
                "shutdown called from a worker or blocking thread of the same runtime"
            }
        })
    }
}

impl std::error::Error for ShutdownError {}

/// An OS-level error with its errno kept (inside an `io::Error`) and a readable reason.
#[derive(Debug)]
pub struct OsError {
    errno: i32,
    message: String,
}

impl OsError {
    pub(crate) fn new(errno: i32, message: String) -> Self {
        OsError { errno, message }
    }

    /// The errno of any `io::Error` libveloq returns (EIO when it has none).
    pub fn errno_of(e: &io::Error) -> i32 {
        e.raw_os_error()
            .or_else(|| e.get_ref()?.downcast_ref::<OsError>().map(|o| o.errno))
            .unwrap_or(match e.kind() {
                io::ErrorKind::InvalidInput => libc::EINVAL,
                io::ErrorKind::OutOfMemory => libc::ENOMEM,
                _ => libc::EIO,
            })
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OsError {}

impl From<OsError> for io::Error {
    fn from(e: OsError) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// Configures and starts a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    workers: usize,
    pin_workers: bool,
    sched_batch: bool,
    mesh_capacity: usize,
    budget: usize,
    coop_budget: u32,
    ring_entries: u32,
    spin_before_park: Duration,
    io_batch_wait: Duration,
    io_poll: Duration,
    buffer_pool: BufferPoolConfig,
    blocking: BlockingConfig,
    stall: StallConfig,
    invalid: Option<&'static str>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            workers: 0,
            pin_workers: false,
            sched_batch: true,
            mesh_capacity: Self::DEFAULT_MESH_CAPACITY,
            budget: Self::DEFAULT_BUDGET,
            coop_budget: super::coop::DEFAULT_COOP_BUDGET,
            ring_entries: Self::DEFAULT_RING_ENTRIES,
            spin_before_park: Self::DEFAULT_SPIN,
            io_batch_wait: Self::DEFAULT_IO_BATCH_WAIT,
            io_poll: Self::DEFAULT_IO_POLL,
            buffer_pool: BufferPoolConfig::default(),
            blocking: BlockingConfig::default(),
            stall: StallConfig::default(),
            invalid: None,
        }
    }
}

impl RuntimeBuilder {
    /// Most workers a runtime may have.
    pub const MAX_WORKERS: usize = 1024;
    /// Slots per mesh channel unless set.
    pub const DEFAULT_MESH_CAPACITY: usize = 256;
    /// Largest mesh channel.
    pub const MAX_MESH_CAPACITY: usize = 1 << 16;
    /// Tasks per source per loop turn unless set.
    pub const DEFAULT_BUDGET: usize = 64;
    /// Units of cooperative budget per task poll unless set (see [`Self::coop_budget`]).
    pub const DEFAULT_COOP_BUDGET: u32 = super::coop::DEFAULT_COOP_BUDGET;
    /// Largest budget.
    pub const MAX_BUDGET: usize = 1 << 16;
    /// io_uring submission queue entries unless set.
    pub const DEFAULT_RING_ENTRIES: u32 = 256;
    /// Largest ring the kernel accepts.
    pub const MAX_RING_ENTRIES: u32 = 32768;
    /// The longest an idle worker polls before it parks, unless set (see
    /// [`Self::spin_before_park`]).
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
    /// The longest a busy worker's park waits for a batch of I/O completions, unless
    /// set (see [`Self::io_batch_wait`]).
    pub const DEFAULT_IO_BATCH_WAIT: Duration = Duration::from_micros(20);
    /// Longest [`Self::io_batch_wait`].
    pub const MAX_IO_BATCH_WAIT: Duration = Duration::from_millis(1);
    /// How long a worker with I/O in flight polls its ring before it parks, unless set
    /// (see [`Self::io_poll`]): off.
    pub const DEFAULT_IO_POLL: Duration = Duration::ZERO;
    /// Longest [`Self::io_poll`].
    pub const MAX_IO_POLL: Duration = Duration::from_millis(10);

    /// A builder with the defaults: one worker per online CPU, not pinned, under
    /// `SCHED_BATCH` (see [`Self::sched_batch`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of workers; 0 means one per online CPU. Checked by [`Self::set_workers`].
    pub fn workers(mut self, n: usize) -> Self {
        let r = self.set_workers(n);
        self.record(r);
        self
    }

    /// Pins worker i to core i (modulo the cores there are).
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.pin_workers = pin;
        self
    }

    /// Runs the workers under Linux's `SCHED_BATCH` scheduling policy (default: on).
    ///
    /// What it changes: a worker woken (by a completion, a spawn, a mesh message) while
    /// another thread runs on its core does not preempt that thread; it runs when the
    /// thread sleeps or its time slice ends. On a core no other thread wants there is
    /// nothing to preempt and nothing changes. On a core
    /// it shares with the threads that feed it (a client, a load generator, a proxy on
    /// the same machine), the worker no longer takes the core back for each request:
    /// requests queue while the feeder runs, and one turn of the worker handles them
    /// all. Measured on the echo example (2 workers, one load-generator thread on the
    /// same 2 cores, against `sched_batch(false)`): at 10 and 50 connections 1.2–1.5×
    /// the requests per second with a third to a tenth of the context switches, and a
    /// lower median latency; the 99th-percentile latency lower at 10 connections (0.1
    /// against 0.13 ms) but higher at 50 (about 4 against 2.7 ms); at 1 and 500
    /// connections no change.
    ///
    /// What it costs: on a shared core, a worker's wake-up may wait for the running
    /// thread's time slice to end (at the next scheduler tick) rather than preempting it
    /// at once: a few ms, depending on the kernel version, its tick rate and how many
    /// threads are runnable there (up to about 10 ms on older kernels). Fairness between
    /// threads, nice values and time slices are those of the default policy. Turn it off
    /// for a worker whose latency matters more than its throughput while it shares its
    /// core.
    ///
    /// Only workers that would run under the default policy (`SCHED_OTHER`) are switched:
    /// threads start under the policy of the thread that starts them, so a runtime built
    /// by a real-time (`SCHED_FIFO`, `SCHED_RR`; unless `SCHED_RESET_ON_FORK` resets it),
    /// `SCHED_IDLE` or `SCHED_BATCH` thread keeps that policy on its workers, whether this
    /// is on or off. Blocking-pool threads started by a worker go back to the policy the
    /// building thread's threads start under. Anything else a worker starts keeps
    /// `SCHED_BATCH`, as with any policy: threads a task starts, processes it forks (the
    /// policy survives fork and exec), thread pools first used from a task, the kernel's
    /// io-wq helper threads of the worker's ring. If the kernel refuses the switch (a
    /// seccomp profile, say), the worker runs on under the inherited policy;
    /// [`WorkerStats::sched_policy`] says which one each worker got.
    pub fn sched_batch(mut self, on: bool) -> Self {
        self.sched_batch = on;
        self
    }

    /// Slots per mesh channel (1..=MAX_MESH_CAPACITY; rounded up to a power of two).
    pub fn mesh_capacity(mut self, slots: usize) -> Self {
        let r = self.set_mesh_capacity(slots);
        self.record(r);
        self
    }

    /// Jobs each source may run per loop turn (1..=MAX_BUDGET).
    pub fn budget(mut self, tasks: usize) -> Self {
        let r = self.set_budget(tasks);
        self.record(r);
        self
    }

    /// Units of cooperative budget each poll of a task may spend (default
    /// [`Self::DEFAULT_COOP_BUDGET`], 0 turns it off): every
    /// libveloq I/O operation or join handle that is ready spends one, and once they are
    /// spent the task yields to its worker's loop (see [`crate::runtime::coop`]).
    pub fn coop_budget(mut self, units: u32) -> Self {
        self.coop_budget = units;
        self
    }

    /// io_uring submission queue size (1..=MAX_RING_ENTRIES).
    pub fn ring_entries(mut self, entries: u32) -> Self {
        let r = self.set_ring_entries(entries);
        self.record(r);
        self
    }

    /// The longest an idle worker keeps polling its queues (mesh channels, inbox,
    /// injector, its ring's completions, peers to steal from) before it parks; default
    /// [`Self::DEFAULT_SPIN`]. Longer costs idle CPU and saves the 50–60 µs a parked
    /// worker takes to wake. `Duration::ZERO`: never spin, park at once.
    ///
    /// The spin adapts below this bound, per worker: a worker whose spins keep finding
    /// nothing (an I/O-bound server whose waits outlast the spin) spins shorter, down to
    /// none, and parks at once, so it does not take CPU from processes sharing its core;
    /// spins that find work make the next longer again, up to this bound. At no spin it
    /// still makes a short probe (about a microsecond) every 8th idle to notice short
    /// waits coming back. The adaptation costs no clock read and no atomic operation, and
    /// changes only how long a worker polls: wakeups are never lost either way. A worker
    /// that goes idle with I/O submissions queued does not spin: it parks at once,
    /// handing them to the kernel in the same system call (unless [`Self::io_poll`] is
    /// set).
    pub fn spin_before_park(mut self, spin: Duration) -> Self {
        self.spin_before_park = spin;
        self
    }

    /// Completion batching for busy I/O workers: the longest a worker waits, when it
    /// parks, for a batch of I/O completions before it takes what is there; default
    /// [`Self::DEFAULT_IO_BATCH_WAIT`] (20 µs), at most [`Self::MAX_IO_BATCH_WAIT`]
    /// (checked by [`Self::set_io_batch_wait`]). `Duration::ZERO`: off, every park
    /// returns at the first completion or wake-up.
    ///
    /// A park waits for a batch only on a busy worker: one with at least 32 operations
    /// in the kernel whose recent parks brought, on average, 4 or more completions beyond
    /// the operations they submitted (a server with a hundred connections, say). It then
    /// waits for the entries it hands over plus their recent average, at most 32 and at
    /// most one in eight of the operations in the kernel. Every other park (light load, a dozen connections, a
    /// worker running only tasks) is the plain one, as with batching off.
    ///
    /// What it trades: fewer system calls per completion (one `io_uring_enter` per batch
    /// instead of one per completion or two) and less CPU per request under load, for up
    /// to this much extra latency on a busy worker: a completion, or a wake-up for work
    /// handed to the worker from elsewhere (a spawn, a mesh message, shutdown), that
    /// arrives while the worker waits for a batch is acted on at most this late. Never
    /// later: a batch that does not fill ends at this bound, and nothing is lost either
    /// way. Needs Linux 6.12 (`IORING_FEAT_MIN_TIMEOUT`); on older kernels, and under
    /// valgrind, it stays off.
    pub fn io_batch_wait(mut self, wait: Duration) -> Self {
        let r = self.set_io_batch_wait(wait);
        self.record(r);
        self
    }

    /// Checked setter: at most [`Self::MAX_IO_BATCH_WAIT`] (else unchanged).
    pub fn set_io_batch_wait(&mut self, wait: Duration) -> Result<(), &'static str> {
        if wait > Self::MAX_IO_BATCH_WAIT {
            return Err("io_batch_wait: more than MAX_IO_BATCH_WAIT");
        }
        self.io_batch_wait = wait;
        Ok(())
    }

    /// Polling for device-bound I/O workers: a worker that runs out of work while it has
    /// I/O operations in flight (any: an armed receive counts) hands its queued
    /// submissions to the kernel and polls its ring, its queues and its mesh channels for
    /// up to this long before it parks, instead of parking at once; default
    /// [`Self::DEFAULT_IO_POLL`] (off), at most [`Self::MAX_IO_POLL`] (checked by
    /// [`Self::set_io_poll`]). `Duration::ZERO`: off.
    ///
    /// What it trades: a core kept busy while I/O is in flight, and a system call of its
    /// own for submissions that a park would have handed over in the call that sleeps,
    /// for no park and wake (50–60 µs here) per gap between completions. It pays where
    /// completions come every few tens of µs but in gaps longer than an idle spin, as
    /// O_DIRECT reads at queue depth (the way fio runs); it costs a network server
    /// system calls per request. The poll ends at once for a completion, a mesh
    /// message, a spawn or a wake-up; it does not change what
    /// [`Self::spin_before_park`] does when no I/O is in flight.
    pub fn io_poll(mut self, poll: Duration) -> Self {
        let r = self.set_io_poll(poll);
        self.record(r);
        self
    }

    /// Checked setter: at most [`Self::MAX_IO_POLL`] (else unchanged).
    pub fn set_io_poll(&mut self, poll: Duration) -> Result<(), &'static str> {
        if poll > Self::MAX_IO_POLL {
            return Err("io_poll: more than MAX_IO_POLL");
        }
        self.io_poll = poll;
        Ok(())
    }

    /// How many buffers of `class_size` (one of `veloq::io::buffers::CLASS_SIZES`: 4 KiB,
    /// 16 KiB, 64 KiB, 256 KiB, 1 MiB) each worker's buffer pool holds; 0 leaves the
    /// class out. Checked by [`Self::set_buffer_pool`].
    pub fn buffer_pool(mut self, class_size: usize, count: usize) -> Self {
        let r = self.set_buffer_pool(class_size, count);
        self.record(r);
        self
    }

    /// Checked setter: `class_size` one of the classes, at most
    /// `BufferPoolConfig::MAX_CLASS_BYTES` in the class (else unchanged).
    pub fn set_buffer_pool(&mut self, class_size: usize, count: usize) -> Result<(), &'static str> {
        self.buffer_pool.set_count(class_size, count)
    }

    /// Checked setter: `n <= MAX_WORKERS` (0 = one per CPU).
    pub fn set_workers(&mut self, n: usize) -> Result<(), &'static str> {
        if n > Self::MAX_WORKERS {
            return Err("workers: more than MAX_WORKERS");
        }
        self.workers = n;
        Ok(())
    }

    /// Checked setter: `1..=MAX_MESH_CAPACITY`.
    pub fn set_mesh_capacity(&mut self, slots: usize) -> Result<(), &'static str> {
        if !(1..=Self::MAX_MESH_CAPACITY).contains(&slots) {
            return Err("mesh_capacity: out of 1..=MAX_MESH_CAPACITY");
        }
        self.mesh_capacity = slots;
        Ok(())
    }

    /// Checked setter: `1..=MAX_BUDGET`.
    pub fn set_budget(&mut self, tasks: usize) -> Result<(), &'static str> {
        if !(1..=Self::MAX_BUDGET).contains(&tasks) {
            return Err("budget: out of 1..=MAX_BUDGET");
        }
        self.budget = tasks;
        Ok(())
    }

    /// Checked setter: `1..=MAX_RING_ENTRIES`.
    pub fn set_ring_entries(&mut self, entries: u32) -> Result<(), &'static str> {
        if !(1..=Self::MAX_RING_ENTRIES).contains(&entries) {
            return Err("ring_entries: out of 1..=MAX_RING_ENTRIES");
        }
        self.ring_entries = entries;
        Ok(())
    }

    // --- blocking pool (see `runtime/blocking.rs`) ------------------------------------

    /// Most blocking-pool threads `max` may ask for.
    pub const MAX_BLOCKING_THREADS: usize = blocking::MAX_THREADS;
    /// Blocking-pool threads at most, unless set (at least: 0).
    pub const DEFAULT_BLOCKING_MAX: usize = blocking::DEFAULT_MAX_THREADS;
    /// How long a blocking thread beyond the minimum waits for work, unless set.
    pub const DEFAULT_BLOCKING_IDLE_TIMEOUT: Duration = blocking::DEFAULT_IDLE_TIMEOUT;

    /// The blocking pool keeps at least `min` threads once started and runs at most `max`
    /// at once (jobs beyond wait in FIFO order). Threads start when work arrives. Checked
    /// by [`Self::set_blocking_threads`]. Default 0 and 64.
    pub fn blocking_threads(mut self, min: usize, max: usize) -> Self {
        let r = self.set_blocking_threads(min, max);
        self.record(r);
        self
    }

    /// Checked setter: `min <= max`, `1 <= max <= MAX_BLOCKING_THREADS` (else unchanged).
    pub fn set_blocking_threads(&mut self, min: usize, max: usize) -> Result<(), &'static str> {
        BlockingConfig::check_threads(min, max)?;
        self.blocking.min = min;
        self.blocking.max = max;
        Ok(())
    }

    /// How long a blocking thread beyond the minimum waits for work before it exits
    /// (0: at once). Default 10 s.
    pub fn blocking_idle_timeout(mut self, timeout: Duration) -> Self {
        let r = self.set_blocking_idle_timeout(timeout);
        self.record(r);
        self
    }

    /// Checked setter for [`Self::blocking_idle_timeout`]; every duration is accepted.
    pub fn set_blocking_idle_timeout(&mut self, timeout: Duration) -> Result<(), &'static str> {
        self.blocking.idle_timeout = timeout;
        Ok(())
    }

    // --- stall detection (see `watchdog.rs`) -------------------------------------------

    /// How long a worker may stay in one job (a callback, a future's poll) before the
    /// watchdog reports it stalled and routes work around it; default 100 ms,
    /// `Duration::ZERO` turns the watchdog (and its thread) off. Stalls are noticed
    /// within a quarter of the threshold after it passed.
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall.threshold = threshold;
        self
    }

    /// Whether each stall (and its end) is logged as a line on stderr, e.g.
    /// `veloq: worker 1 stalled for 503 ms in task 'parse' (still running)`. Default on.
    pub fn stall_log(mut self, log: bool) -> Self {
        self.stall.log = log;
        self
    }

    /// Called when a stall is noticed and again when it ends (`StallReport::ended`), on
    /// the watchdog thread (never a worker). It may call anything callable from any
    /// thread (spawn, stats, dump); it should return quickly: the watchdog looks at no
    /// worker while it runs. A panic in it is caught and ignored. Replaces an earlier
    /// handler.
    pub fn on_stall<F>(mut self, f: F) -> Self
    where
        F: Fn(&StallReport) + Send + Sync + 'static,
    {
        self.stall.handler = Some(Arc::new(f));
        self
    }

    fn record(&mut self, r: Result<(), &'static str>) {
        if let Err(e) = r {
            self.invalid.get_or_insert(e);
        }
    }

    /// Starts the workers. Fails with `InvalidInput` for a bad setting and with the
    /// kernel's errno (and reason) when a worker's ring or eventfd cannot be made; then
    /// nothing is left running.
    pub fn build(self) -> io::Result<Runtime> {
        if let Some(why) = self.invalid {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        let workers = if self.workers == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        let eventfds = (0..workers)
            .map(|_| {
                // SAFETY: plain syscall; the result is checked.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: a fresh fd we own.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })
            .collect::<io::Result<Vec<_>>>()?;
        let policies = ThreadPolicies::decide(self.sched_batch);
        let config = Config {
            budget: self.budget,
            coop_budget: self.coop_budget,
            spin_before_park: self.spin_before_park,
            io_batch_wait: self.io_batch_wait,
            io_poll: self.io_poll,
            ring_entries: self.ring_entries,
            buffer_pool: self.buffer_pool,
            blocking: BlockingConfig {
                policies,
                ..self.blocking
            },
            policies,
        };
        let registry = Arc::new(ExecutorRegistry::new(eventfds, self.mesh_capacity, config));
        let cores = if self.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        let mut failure = None;
        for index in 0..workers {
            let registry = registry.clone();
            let ready = ready_tx.clone();
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let spawned = thread::Builder::new()
                .name(format!("veloq-w{index}"))
                .spawn(move || worker_main(registry, index, core, ready));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(ready_tx);
        for _ in threads.len()..workers {
            // Threads that could not be started count as idle and exited.
            registry.enter_idle();
            mark_exited(&registry);
        }
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| io::Error::other("worker died at start"));
                }
            }
        }
        let watchdog = if failure.is_none() {
            match Watchdog::start(registry.clone(), self.stall) {
                Ok(w) => w,
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        } else {
            None
        };
        let runtime = Runtime {
            handle: Handle { registry },
            threads: Mutex::new(threads),
            watchdog: Mutex::new(watchdog),
        };
        match failure {
            None => Ok(runtime),
            Some(e) => {
                drop(runtime); // stops and joins the workers that did start
                Err(e)
            }
        }
    }
}

/// The body of worker thread `index`.
fn worker_main(
    registry: Arc<ExecutorRegistry>,
    index: usize,
    core: Option<core_affinity::CoreId>,
    ready: mpsc::Sender<io::Result<()>>,
) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let policy = registry.config.policies.enter_worker();
    registry
        .worker(index)
        .counters
        .sched_policy
        .store(policy as u64, std::sync::atomic::Ordering::Relaxed);
    use std::os::fd::AsRawFd;
    let eventfd = registry.worker(index).eventfd.as_raw_fd();
    let driver = match Driver::new(registry.config.ring_entries, eventfd, index as u32) {
        Ok(mut d) => {
            d.set_batch_wait(registry.config.io_batch_wait);
            d
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            // Never runs: count it idle for good, so the others can terminate.
            registry.enter_idle();
            mark_exited(&registry);
            return;
        }
    };
    registry.worker(index).counters.ring_flags.store(
        driver.flags().bits() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let cx = match RuntimeContext::new(registry.clone(), index, driver) {
        Ok(cx) => cx,
        Err(e) => {
            let _ = ready.send(Err(e));
            registry.enter_idle();
            mark_exited(&registry);
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    context::enter(&cx, || cx.run_loop());
    registry.worker(index).watch.exited.store(true, Release);
    registry.worker(index).orphan(&registry);
    drop(cx);
    mark_exited(&registry);
}

fn mark_exited(registry: &ExecutorRegistry) {
    let mut exited = registry.exited.lock().unwrap_or_else(|e| e.into_inner());
    *exited += 1;
    registry.exited_cv.notify_all();
}

/// Per-worker counters, read with [`Runtime::stats`].
///
/// The `tasks_*` counters count task *starts* (a future's first poll, or a callback's
/// run) by where the task came from; re-polls of woken futures count in `polls`. Once
/// every spawned task has run, the sum of `tasks_local + tasks_mesh + tasks_inbox +
/// tasks_injector + tasks_stolen` over all workers equals the sum of `tasks_spawned`
/// (counters are published once per loop turn, so read them after the work is done; a
/// future dropped unpolled by a shutdown that timed out counts as spawned, not started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Tasks started from the local run queue (`spawn_local`, and `spawn_to` a worker's
    /// own index; the balanced spawns P2C keeps on a worker count in `tasks_injector`).
    pub tasks_local: u64,
    /// Tasks started that arrived over the mesh.
    pub tasks_mesh: u64,
    /// Tasks started from the pinned inbox.
    pub tasks_inbox: u64,
    /// Tasks started from the own injector.
    pub tasks_injector: u64,
    /// Tasks started that were stolen from other workers' injectors.
    pub tasks_stolen: u64,
    /// Polls of woken futures after their first (not task starts).
    pub polls: u64,
    /// Tasks and callbacks spawned by this worker's own jobs, plus those spawned from
    /// non-worker threads that were placed on this worker.
    pub tasks_spawned: u64,
    /// Successful steal operations (each takes a batch).
    pub steals: u64,
    /// Times the worker went to sleep.
    pub parks: u64,
    /// Wake-up system calls made for this worker.
    pub wakeups: u64,
    /// Current load (queued + running jobs) as P2C sees it.
    pub load: u64,
    /// Which optional io_uring set-up flags the worker's ring got (`RING_*` bits).
    pub ring_flags: u32,
    /// I/O operations accepted by the worker's ring (Rust, C and host-side).
    pub io_submitted: u64,
    /// I/O operations that delivered their final completion.
    pub io_completed: u64,
    /// Completions that named no live operation (counted and ignored).
    pub io_stale: u64,
    /// Operations waiting for room in the submission queue.
    pub io_backlog: u64,
    /// `io_uring_enter` calls made to submit or reap (a park counted only when it also
    /// handed queued submissions to the kernel).
    pub io_enters: u64,
    /// Parks that waited for a batch of I/O completions (see
    /// [`RuntimeBuilder::io_batch_wait`]); included in `parks`.
    pub io_batched_parks: u64,
    /// The Linux scheduling policy the worker runs under: `libc::SCHED_BATCH` (3) by
    /// default, else the one it inherited (see [`RuntimeBuilder::sched_batch`]).
    pub sched_policy: i32,
    /// Stalls the watchdog noticed (see [`RuntimeBuilder::stall_threshold`]).
    pub stalls: u64,
    /// Nanoseconds spent in stalls that have ended (as the watchdog measured them).
    pub stalled_ns: u64,
    /// Whether the worker is stalled now.
    pub stalled: bool,
    /// Queue depths now.
    pub queues: QueueDepths,
}

impl WorkerStats {
    /// `ring_flags` bit: IORING_SETUP_SINGLE_ISSUER.
    pub const RING_SINGLE_ISSUER: u32 = 1 << 0;
    /// `ring_flags` bit: IORING_SETUP_DEFER_TASKRUN.
    pub const RING_DEFER_TASKRUN: u32 = 1 << 1;
    /// `ring_flags` bit: IORING_SETUP_COOP_TASKRUN.
    pub const RING_COOP_TASKRUN: u32 = 1 << 2;
}

/// A `Send + Sync + Clone` handle for spawning onto a runtime from any thread.
#[derive(Clone)]
pub struct Handle {
    registry: Arc<ExecutorRegistry>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.workers())
            .finish()
    }
}

impl Handle {
    pub(crate) fn from_registry(registry: Arc<ExecutorRegistry>) -> Self {
        Handle { registry }
    }

    pub(crate) fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.registry
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.registry.len()
    }

    /// Spawns a `Send` future (see [`Placement::Any`]).
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_placed(Placement::Any, future)
    }

    /// Spawns a `Send` future on the less loaded of two workers (P2C).
    pub fn spawn_balanced<F>(&self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_placed(Placement::Balanced, future)
    }

    /// Spawns a `Send` future on worker `worker`; it never moves.
    pub fn spawn_to<F>(
        &self,
        worker: usize,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_placed(Placement::Worker(worker), future)
    }

    /// Spawns with an explicit placement. On one of this runtime's workers it takes the
    /// worker's path (mesh, own injector); elsewhere it goes through injectors and inboxes.
    pub fn spawn_placed<F>(
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

    /// Runs `make` on worker `worker` and spawns the (possibly `!Send`) future it returns
    /// there as a local task: the way to start work that uses `spawn_local` and
    /// `LocalJoinHandle` from outside the runtime. The handle is `Send`.
    pub fn spawn_local_to<M, F>(
        &self,
        worker: usize,
        make: M,
    ) -> Result<JoinHandle<F::Output>, SpawnError<M>>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_task(Placement::Worker(worker), make, TaskRef::new_shared_lazy)
    }

    pub(crate) fn spawn_task<V, T>(
        &self,
        placement: Placement,
        value: V,
        alloc: impl FnOnce(V) -> TaskRef,
    ) -> Result<JoinHandle<T>, SpawnError<V>> {
        let mut value = Some(value);
        let mut alloc = Some(alloc);
        if let Some(result) = self.on_own_worker(|cx| {
            cx.spawn_task(
                placement,
                value.take().expect("taken once"),
                alloc.take().expect("taken once"),
            )
        }) {
            return result;
        }
        let value = value.take().expect("not taken off a worker");
        let alloc = alloc.take().expect("not taken off a worker");
        self.spawn_task_outside(placement, value, alloc)
    }

    /// `spawn_task` from a thread that is not one of our workers: `submit_outside` for a
    /// task, the task allocated only once the submission is admitted.
    #[inline]
    fn spawn_task_outside<V, T>(
        &self,
        placement: Placement,
        value: V,
        alloc: impl FnOnce(V) -> TaskRef,
    ) -> Result<JoinHandle<T>, SpawnError<V>> {
        let registry = &self.registry;
        let (target, pinned) = match self.outside_target(placement) {
            Ok(target) => target,
            Err(kind) => return Err(SpawnError::new(kind, value)),
        };
        let worker = registry.worker(target);
        if !registry.admit(worker) {
            return Err(SpawnError::new(SpawnErrorKind::Shutdown, value));
        }
        let task = alloc(value);
        let handle = JoinHandle::new(task, registry.clone());
        if pinned {
            worker.inbox.push(InboxJob::One(Job::Task(task)));
        } else {
            worker.injector.push(Job::Task(task));
        }
        worker.notify();
        Ok(handle)
    }

    /// Queues a callback job. From a worker of this runtime it takes the worker's path.
    ///
    /// # Safety
    /// `task.func` may be called with `task.arg` on a worker thread, and `task.cq`, when
    /// not null, stays alive until its completion is posted (the reservation taken
    /// here keeps a C `veloq_cq_free` from freeing it).
    pub unsafe fn spawn_raw(
        &self,
        placement: Placement,
        task: RawTask,
    ) -> Result<(), SpawnError<RawTask>> {
        // SAFETY: forwarded promise.
        if let Some(result) = self.on_own_worker(|cx| unsafe { cx.spawn_raw(placement, task) }) {
            return result;
        }
        task.reserve_completion();
        self.submit_outside(placement, || Job::Raw(task))
            .map_err(|kind| {
                task.release_completion();
                SpawnError::new(kind, task)
            })
    }

    /// Queues many callback jobs at once, spread over the workers in contiguous chunks
    /// (about one per worker, at least 16 and at most a loop turn's budget of jobs each):
    /// each chunk costs its worker one admission (one count and one shutdown check), one
    /// push into its pinned inbox and one wake-up check, whatever its length, and its
    /// callbacks run in order on that worker (never stolen). `Placement::Balanced` gives
    /// the chunks to the least loaded workers (loads read once per call);
    /// `Placement::Any` deals them out round robin; `Placement::Worker(w)` gives them all
    /// to `w`. Callable from any thread, a worker's callbacks and tasks included.
    ///
    /// Returns how many jobs were accepted, always a prefix of `tasks`: all of them,
    /// unless shutdown started (or memory ran out) during the call, in which case the
    /// chunks admitted before stay accepted and the rest are refused. Errors (nothing
    /// accepted): `InvalidWorker` for an out-of-range `Placement::Worker`, `Shutdown`,
    /// `NoMemory` when the first chunk's memory could not be allocated. An empty `tasks`
    /// accepts 0. Every accepted job runs exactly once and posts exactly one completion
    /// to its `cq` when that is not null; a refused one never runs and owes nothing.
    ///
    /// # Safety
    /// As for [`spawn_raw`](Self::spawn_raw), for every element of `tasks`.
    pub unsafe fn spawn_raw_batch(
        &self,
        placement: Placement,
        tasks: &[RawTask],
    ) -> Result<usize, SpawnErrorKind> {
        // SAFETY: forwarded promise.
        unsafe { self.spawn_raw_batch_with(placement, tasks.len(), |i| tasks[i]) }
    }

    /// [`spawn_raw_batch`](Self::spawn_raw_batch) of the `n` tasks `task(0..n)`, each
    /// made once, as its chunk is copied (so a C array is read only once).
    ///
    /// # Safety
    /// As for `spawn_raw_batch`, for every task `task` returns.
    pub(crate) unsafe fn spawn_raw_batch_with(
        &self,
        placement: Placement,
        n: usize,
        task: impl Fn(usize) -> RawTask,
    ) -> Result<usize, SpawnErrorKind> {
        let registry = &*self.registry;
        let workers = registry.len();
        if let Placement::Worker(w) = placement {
            if w >= workers {
                return Err(SpawnErrorKind::InvalidWorker);
            }
        }
        if n == 0 {
            return Ok(0);
        }
        // Chunks of about an equal share per worker, not smaller than `MIN_CHUNK` so a
        // small batch stays on few workers, and not larger than a loop turn's budget so a
        // worker never runs more than about one budget of callbacks before it looks at
        // its other sources again.
        const MIN_CHUNK: usize = 16;
        let max_chunk = registry.config.budget.max(MIN_CHUNK);
        let chunk = match placement {
            Placement::Worker(_) => max_chunk,
            _ => n.div_ceil(workers).clamp(MIN_CHUNK, max_chunk),
        };
        // Balanced: each worker's load as read now, plus what this call gave it.
        let mut loads: Vec<u64> = match placement {
            Placement::Balanced => registry
                .workers
                .iter()
                .map(|w| {
                    if w.is_stalled() {
                        u64::MAX / 2
                    } else {
                        w.load()
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let on_worker = self.on_own_worker(|_| ()).is_some();
        let mut accepted = 0;
        while accepted < n {
            let len = chunk.min(n - accepted);
            let target = match placement {
                Placement::Worker(w) => w,
                Placement::Any => {
                    let next = OUTSIDE_CURSOR.with(|c| next_outside(c, workers));
                    registry.unstalled_from(next)
                }
                Placement::Balanced => {
                    let (w, _) = loads
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, &l)| l)
                        .expect("at least one worker");
                    loads[w] = loads[w].saturating_add(len as u64);
                    w
                }
            };
            let mut part = Vec::new();
            if part.try_reserve_exact(len).is_err() {
                break;
            }
            part.extend((accepted..accepted + len).map(&task));
            reserve_completions(&part);
            let worker = registry.worker(target);
            // From a worker's job no handshake is needed (shutdown waits for this worker
            // to be idle, see `RuntimeContext::submit`); from elsewhere, `admit_n`.
            let admitted = if on_worker {
                !registry.closed.load(SeqCst) && {
                    worker.count_submitted(len as u64);
                    true
                }
            } else {
                registry.admit_n(worker, len as u64)
            };
            if !admitted {
                release_completions(&part);
                break;
            }
            worker.inbox.push(InboxJob::Batch(part.into_boxed_slice()));
            worker.notify();
            accepted += len;
        }
        if on_worker {
            self.on_own_worker(|cx| {
                cx.stats
                    .spawned
                    .set(cx.stats.spawned.get() + accepted as u64)
            });
        }
        if accepted > 0 {
            Ok(accepted)
        } else if registry.closed.load(SeqCst) {
            Err(SpawnErrorKind::Shutdown)
        } else {
            Err(SpawnErrorKind::NoMemory)
        }
    }

    /// Runs `f` with the current worker's context if this thread is one of ours.
    fn on_own_worker<R>(&self, f: impl FnOnce(&RuntimeContext) -> R) -> Option<R> {
        context::with_current(|cx| {
            cx.filter(|cx| Arc::ptr_eq(&cx.registry, &self.registry))
                .map(f)
        })
    }

    /// Places a job from a thread that is not one of our workers.
    fn submit_outside(
        &self,
        placement: Placement,
        make: impl FnOnce() -> Job,
    ) -> Result<(), SpawnErrorKind> {
        let registry = &*self.registry;
        let (target, pinned) = self.outside_target(placement)?;
        let worker = registry.worker(target);
        if !registry.admit(worker) {
            return Err(SpawnErrorKind::Shutdown);
        }
        let job = make();
        if pinned {
            worker.inbox.push(InboxJob::One(job));
        } else {
            worker.injector.push(job);
        }
        worker.notify();
        Ok(())
    }

    /// Where a job from a thread that is not one of our workers goes: the worker, and
    /// whether it is pinned there (its inbox) rather than stealable (its injector).
    #[inline]
    fn outside_target(&self, placement: Placement) -> Result<(usize, bool), SpawnErrorKind> {
        let registry = &*self.registry;
        Ok(match placement {
            Placement::Any => {
                let next = OUTSIDE_CURSOR.with(|c| next_outside(c, registry.len()));
                // Not onto a stalled worker's injector (nobody may be idle to steal it).
                (registry.unstalled_from(next), false)
            }
            Placement::Balanced => (
                OUTSIDE_RNG.with(|rng| {
                    if rng.get() == 0 {
                        // First balanced spawn of this thread (xorshift never reaches 0).
                        rng.set(super::executor::spawner::random_seed());
                    }
                    registry.p2c(rng, None)
                }),
                false,
            ),
            Placement::Worker(w) if w < registry.len() => (w, true),
            Placement::Worker(_) => return Err(SpawnErrorKind::InvalidWorker),
        })
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.registry.closed.load(SeqCst)
    }

    /// A snapshot of every worker and the live (unfinished) futures it owns: name,
    /// worker, state, age, plus what each worker runs now and its queue depths. Each
    /// worker lists its own tasks in its next loop turn (never touched from here); a
    /// worker that does not answer within [`RuntimeDump::WAIT`] (stuck in a job) is
    /// reported as such, with its running task's name and, when the stall watchdog is
    /// on, how long that job has run. Never waits longer than that bound. Callable from
    /// any thread; from a worker callback or task, that worker's section is made inline
    /// (then the running task shows as `Running`) and the call blocks the worker for up
    /// to the bound while the others answer. Callbacks waiting in queues are not tasks
    /// and are not listed (see the queue depths).
    pub fn dump(&self) -> RuntimeDump {
        introspect::dump(&self.registry, RuntimeDump::WAIT)
    }
}

/// Takes the completion reservations of `tasks`, one RMW per run of tasks naming the
/// same queue.
fn reserve_completions(tasks: &[RawTask]) {
    for_each_cq_run(tasks, |cq, n| cq.reserve_many(n));
}

/// Gives back what `reserve_completions(tasks)` took.
fn release_completions(tasks: &[RawTask]) {
    for_each_cq_run(tasks, |cq, n| (0..n).for_each(|_| cq.release_reservation()));
}

/// Calls `f(cq, n)` for each maximal run of `n` consecutive tasks naming the same
/// non-null queue.
fn for_each_cq_run(tasks: &[RawTask], mut f: impl FnMut(&super::completion::CompletionQueue, u64)) {
    let mut i = 0;
    while i < tasks.len() {
        let cq = tasks[i].cq;
        let run = tasks[i..].iter().take_while(|t| t.cq == cq).count();
        // SAFETY: the batch spawn caller promised every non-null `cq` is alive.
        if let Some(cq) = unsafe { cq.as_ref() } {
            f(cq, run as u64);
        }
        i += run;
    }
}

/// Round robin over the workers, per outside thread (no shared counter to contend on).
/// The cursor stays below `workers` after its first use, so a step costs a compare, not a
/// division.
#[inline]
fn next_outside(cursor: &Cell<usize>, workers: usize) -> usize {
    let mut i = cursor.get().wrapping_add(1);
    if i >= workers {
        // Wrapped, or the random seed of this thread's first call.
        i = if i == workers { 0 } else { i % workers };
    }
    cursor.set(i);
    i
}

thread_local! {
    static OUTSIDE_CURSOR: Cell<usize> = Cell::new(super::executor::spawner::random_seed() as usize);
    /// P2C's generator state on a thread that is not a worker; 0 until its first use
    /// seeds it (a const initializer: no lazy-init check on every balanced spawn).
    static OUTSIDE_RNG: Cell<u64> = const { Cell::new(0) };
    static ENTERED: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// The runtime `block_on` is running on this thread, if any.
pub(crate) fn entered_handle() -> Option<Handle> {
    ENTERED.with(|e| e.borrow().clone())
}

/// Makes `handle` this thread's entered runtime (as inside `block_on`) until dropped.
pub(crate) struct EnterGuard(Option<Handle>);

impl EnterGuard {
    pub(crate) fn enter(handle: Handle) -> EnterGuard {
        EnterGuard(ENTERED.with(|e| e.borrow_mut().replace(handle)))
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        ENTERED.with(|e| *e.borrow_mut() = previous);
    }
}

/// A thread-per-core runtime: owns the worker threads. Dropping it cancels unfinished
/// futures, runs every accepted callback, and joins the workers (dropped on one of its
/// own workers or blocking-pool threads, it cannot wait for itself: it stops what it can
/// and the threads exit on their own).
pub struct Runtime {
    handle: Handle,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// The stall watchdog, when enabled; stopped after the workers exited.
    watchdog: Mutex<Option<Watchdog>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.workers())
            .finish()
    }
}

impl std::ops::Deref for Runtime {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Runtime {
    /// A runtime with the defaults (see [`RuntimeBuilder::new`]: one worker per online
    /// CPU, under `SCHED_BATCH`).
    pub fn new() -> io::Result<Runtime> {
        RuntimeBuilder::new().build()
    }

    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::new()
    }

    /// A `Send + Sync + Clone` handle for spawning from other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs `future` to completion on the calling thread (not a worker). Inside it, the
    /// free `veloq::spawn*` functions spawn onto this runtime.
    ///
    /// # Panics
    /// When called on one of the runtime's workers (it would block that worker).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        assert!(
            context::worker_index().is_none(),
            "Runtime::block_on called on a worker thread; spawn the future instead"
        );
        struct Restore(Option<Handle>);
        impl Drop for Restore {
            fn drop(&mut self) {
                ENTERED.with(|e| *e.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(ENTERED.with(|e| e.borrow_mut().replace(self.handle.clone())));
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            thread::park();
        }
    }

    /// Stops the runtime. From the call on, every new spawn is refused; tasks and
    /// callbacks accepted before it keep running. Returns `Ok` once every worker has
    /// drained and exited and the blocking pool has run every job it accepted (all
    /// threads joined). When `timeout` passes first it returns `Err(TimedOut)` and
    /// cancels the unfinished futures (dropped on their own workers, their handles
    /// resolve to `Cancelled`; callbacks and blocking jobs still run); call again to wait
    /// for the exit. `None` waits without limit. Callable from any thread but the
    /// runtime's own workers and blocking-pool threads (`Err(FromWorker)`, nothing done).
    pub fn shutdown(&self, timeout: Option<Duration>) -> Result<(), ShutdownError> {
        if self.is_own_thread() {
            return Err(ShutdownError::FromWorker);
        }
        let registry = &*self.handle.registry;
        registry.closed.store(true, SeqCst);
        // The blocking pool refuses new jobs from here on and drains its queue.
        registry.blocking.close();
        self.notify_all();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exited = registry.exited.lock().unwrap_or_else(|e| e.into_inner());
        while *exited < registry.len() {
            match deadline {
                None => {
                    exited = registry
                        .exited_cv
                        .wait(exited)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        drop(exited);
                        registry.cancel.store(true, SeqCst);
                        self.notify_all();
                        return Err(ShutdownError::TimedOut);
                    }
                    exited = registry
                        .exited_cv
                        .wait_timeout(exited, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        drop(exited);
        // Then the blocking pool (ordering: see the doc of `runtime/blocking.rs`).
        if !registry.blocking.drain(deadline) {
            return Err(ShutdownError::TimedOut);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.stop();
        }
        Ok(())
    }

    fn notify_all(&self) {
        for w in self.handle.registry.workers.iter() {
            w.notify();
        }
    }

    /// Attaches an opaque pointer that workers can read back
    /// ([`RuntimeContext::host_data`]); the C layer stores its `veloq_runtime *` here.
    pub fn set_host_data(&self, data: *mut c_void) {
        self.handle.registry.host_data.store(data, Release);
    }

    /// Counters of every worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        (0..self.workers())
            .filter_map(|i| self.worker_stats(i))
            .collect()
    }

    /// Counters of worker `worker`; None when there is no such worker. Callable from
    /// any thread.
    pub fn worker_stats(&self, worker: usize) -> Option<WorkerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = &self.handle.registry;
        let w = registry.workers.get(worker)?;
        let i = worker;
        let c = &w.counters;
        Some(WorkerStats {
            tasks_local: c.tasks_local.load(Relaxed),
            tasks_mesh: c.tasks_mesh.load(Relaxed),
            tasks_inbox: c.tasks_inbox.load(Relaxed),
            tasks_injector: c.tasks_injector.load(Relaxed),
            tasks_stolen: c.tasks_stolen.load(Relaxed),
            polls: c.polls.load(Relaxed),
            tasks_spawned: c.tasks_spawned.load(Relaxed) + w.spawned_outside(),
            steals: c.steals.load(Relaxed),
            parks: c.parks.load(Relaxed),
            wakeups: c.wakeups_sent.load(Relaxed),
            load: w.load(),
            ring_flags: c.ring_flags.load(Relaxed) as u32,
            io_submitted: c.io_submitted.load(Relaxed),
            io_completed: c.io_completed.load(Relaxed),
            io_stale: c.io_stale.load(Relaxed),
            io_backlog: c.io_backlog.load(Relaxed),
            io_enters: c.io_enters.load(Relaxed),
            io_batched_parks: c.io_batched_parks.load(Relaxed),
            sched_policy: c.sched_policy.load(Relaxed) as i32,
            stalls: w.watch.stalls.load(Relaxed),
            stalled_ns: w.watch.stalled_ns.load(Relaxed),
            stalled: w.is_stalled(),
            queues: QueueDepths::of(registry, i),
        })
    }

    /// Bytes the mesh takes now (channels are made on first use).
    pub fn mesh_memory(&self) -> usize {
        self.handle.registry.mesh.footprint()
    }

    /// Bytes the mesh of a runtime with `workers` workers and `capacity` slots per
    /// channel takes when every channel is in use.
    pub fn mesh_memory_bytes(workers: usize, capacity: usize) -> usize {
        MeshMatrix::<Job>::full_footprint(workers, capacity)
    }

    /// Whether the calling thread is one of this runtime's workers or blocking-pool
    /// threads (running one of its tasks, callbacks or blocking jobs), where
    /// [`Self::shutdown`] is refused and dropping the runtime cannot wait for it.
    /// Callable from any thread.
    pub fn is_own_thread(&self) -> bool {
        let registry = &self.handle.registry;
        registry.blocking.is_own_thread()
            || context::with_current(|cx| cx.is_some_and(|cx| Arc::ptr_eq(&cx.registry, registry)))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.is_own_thread() {
            // Dropped on its own worker or blocking thread: cannot wait for ourselves.
            // Stop what can be stopped; the threads exit on their own.
            self.handle.registry.closed.store(true, SeqCst);
            self.handle.registry.cancel.store(true, SeqCst);
            self.handle.registry.blocking.close();
            self.notify_all();
            return;
        }
        self.handle.registry.closed.store(true, SeqCst);
        self.handle.registry.cancel.store(true, SeqCst);
        let _ = self.shutdown(None);
    }
}
