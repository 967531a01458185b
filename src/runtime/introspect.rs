//! Introspection: task names, the per-worker "what runs now" state the stall watchdog
//! samples, and the dump of live tasks.
//!
//! Cost model. An unnamed task costs one extra pointer in its header (the optional
//! name); its age is stamped from a coarse clock the worker reads once per loop turn
//! (no clock read per task). Per job, the worker makes one
//! `Relaxed` store of its progress counter on a line only it writes; it takes the
//! running-name lock only around tasks that have a name (and once after them, to
//! clear it). The dump asks each worker for its own section, so it never touches a
//! worker's task list from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::context::RuntimeContext;
use super::executor::spawner::ExecutorRegistry;

/// A task's name, shared between its task and the worker's running-name slot.
#[derive(Debug)]
pub(crate) struct TaskName(pub(crate) Box<str>);

impl TaskName {
    pub(crate) fn new(name: &str) -> Arc<TaskName> {
        Arc::new(TaskName(name.into()))
    }
}

/// CLOCK_MONOTONIC_COARSE in milliseconds, truncated to 32 bits (wraps every 49 days;
/// ages are computed with a wrapping subtraction). A vDSO read, no system call.
pub(crate) fn coarse_ms() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC_COARSE exists on every Linux we run on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec as u64 / 1_000_000) as u32
}

/// CLOCK_MONOTONIC in nanoseconds (for the watchdog and the dump, never per task).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What other threads may learn of what a worker is doing: written by the worker (progress,
/// running name) and by the watchdog (stall state). One per worker, on its own line.
#[derive(Default)]
pub(crate) struct WorkerWatch {
    /// Bumped by the worker (a plain `Relaxed` store) whenever it starts a job or a loop
    /// turn: a value that stays the same for long means the worker is stuck in one job.
    pub(crate) progress: AtomicU64,
    /// The name of the task the worker runs now, when it has one. Written only around
    /// named tasks.
    pub(crate) running_name: Mutex<Option<Arc<TaskName>>>,
    /// Set by the worker when it left its loop for good.
    pub(crate) exited: AtomicBool,
    /// Watchdog: monotonic ns at which it first saw the current `progress` value (0: the
    /// watchdog is off or has not looked yet).
    pub(crate) job_seen_ns: AtomicU64,
    /// Watchdog: stalls detected, and nanoseconds spent stalled in finished stalls.
    pub(crate) stalls: AtomicU64,
    pub(crate) stalled_ns: AtomicU64,
}

impl WorkerWatch {
    /// The running task's name, if it has one (any thread).
    pub(crate) fn running_name(&self) -> Option<Arc<TaskName>> {
        self.running_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Worker: publishes (or clears) the running task's name.
    pub(crate) fn set_running_name(&self, name: Option<Arc<TaskName>>) {
        *self.running_name.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }
}

/// How far a worker's queues are filled (a snapshot from any thread; hints, not exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// The local run queue, as last published by the worker (once per loop turn).
    pub local: u64,
    /// The stealable injector.
    pub injector: u64,
    /// The pinned inbox (work from other threads, mesh overflow).
    pub inbox: u64,
    /// Messages waiting in the inbound mesh channels.
    pub mesh: u64,
}

impl QueueDepths {
    pub(crate) fn of(registry: &ExecutorRegistry, w: usize) -> QueueDepths {
        let shared = registry.worker(w);
        QueueDepths {
            local: shared.local_queued(),
            injector: shared.injector.len() as u64,
            inbox: shared.inbox.len() as u64,
            mesh: (0..registry.len())
                .filter_map(|from| registry.mesh.channel(from, w))
                .map(|c| c.occupancy() as u64)
                .sum(),
        }
    }
}

/// Where a live task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting to be woken (its future returned `Pending`).
    Idle,
    /// Woken, in the run queue.
    Scheduled,
    /// Being polled now (only the task that asked for the dump, or a stalled one).
    Running,
    /// Finished but not yet unlinked (rare: seen only from inside its last poll).
    Complete,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Idle => "idle",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
        })
    }
}

/// One live task in a [`RuntimeDump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDump {
    /// The name it was spawned with, if any.
    pub name: Option<String>,
    /// The worker that owns it.
    pub worker: usize,
    /// Its state.
    pub state: TaskState,
    /// Time since it became live on its worker: its spawn, or, for a task spawned on
    /// another thread, when its worker took it. Stamped with the coarse clock the
    /// worker reads at the start of each loop turn (millisecond resolution; a task
    /// spawned late in a long turn looks older by up to that turn's length).
    pub age: Duration,
}

/// One worker's section of a [`RuntimeDump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerDump {
    /// The worker's index.
    pub worker: usize,
    /// Whether the worker answered within the bound. A worker that did not is busy in
    /// one job (stalled) or gone; then `tasks` is empty.
    pub answered: bool,
    /// Whether the stall watchdog considers the worker stalled now.
    pub stalled: bool,
    /// The name of the task running now, if it has one (for a worker that answered: the
    /// task that asked for the dump, if any).
    pub running: Option<String>,
    /// How long the current job has run, as far as the watchdog saw (None when the
    /// watchdog is off or the worker answered).
    pub running_for: Option<Duration>,
    /// Queue depths when the dump was taken.
    pub queues: QueueDepths,
    /// Live (unfinished) tasks the worker owns, at most [`RuntimeDump::MAX_TASKS`].
    pub tasks: Vec<TaskDump>,
    /// How many live tasks it owns, listed or not.
    pub live_tasks: usize,
}

/// A snapshot of every worker and its live tasks, made by [`Handle::dump`](super::Handle::dump).
/// Its `Display` form is the text `veloq_runtime_dump` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeDump {
    /// One section per worker, in index order.
    pub workers: Vec<WorkerDump>,
    /// How long the dump waited for workers at most.
    pub wait: Duration,
}

impl RuntimeDump {
    /// Most tasks listed per worker (the count is always complete).
    pub const MAX_TASKS: usize = 10_000;
    /// How long a dump waits for each worker's answer.
    pub const WAIT: Duration = Duration::from_millis(200);
}

impl fmt::Display for RuntimeDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "veloq runtime dump: {} workers", self.workers.len())?;
        for w in &self.workers {
            write!(f, "worker {}: ", w.worker)?;
            if w.stalled {
                write!(f, "STALLED, ")?;
            }
            if w.answered {
                write!(f, "answered")?;
            } else {
                write!(f, "not answering within {} ms", self.wait.as_millis())?;
            }
            match (&w.running, w.running_for) {
                (Some(name), Some(d)) => {
                    write!(f, "; running task '{name}' for {} ms", d.as_millis())?
                }
                (Some(name), None) => write!(f, "; running task '{name}'")?,
                (None, Some(d)) => write!(f, "; running an unnamed job for {} ms", d.as_millis())?,
                (None, None) => {}
            }
            let q = &w.queues;
            writeln!(
                f,
                "; queues: local {}, injector {}, inbox {}, mesh {}",
                q.local, q.injector, q.inbox, q.mesh
            )?;
            if w.answered {
                writeln!(f, "  {} live tasks", w.live_tasks)?;
            }
            for t in &w.tasks {
                match &t.name {
                    Some(name) => write!(f, "  task '{name}'")?,
                    None => write!(f, "  task (unnamed)")?,
                }
                writeln!(
                    f,
                    " worker {} state {} age {} ms",
                    t.worker,
                    t.state,
                    t.age.as_millis()
                )?;
            }
            if w.tasks.len() < w.live_tasks && w.answered {
                writeln!(f, "  ... {} more", w.live_tasks - w.tasks.len())?;
            }
        }
        Ok(())
    }
}

/// A dump in progress: one slot per worker, filled by the worker itself.
pub(crate) struct DumpRequest {
    sections: Mutex<Vec<Option<WorkerDump>>>,
    answered: Condvar,
}

impl DumpRequest {
    /// Worker side: fills `cx`'s section (None: the worker has exited; nothing to list).
    pub(crate) fn answer(&self, cx: Option<&RuntimeContext>, worker: usize) {
        let section = cx.map(|cx| cx.dump_section());
        let mut sections = self.sections.lock().unwrap_or_else(|e| e.into_inner());
        sections[worker] = Some(section.unwrap_or(WorkerDump {
            worker,
            answered: true,
            stalled: false,
            running: None,
            running_for: None,
            queues: QueueDepths::default(),
            tasks: Vec::new(),
            live_tasks: 0,
        }));
        self.answered.notify_all();
    }
}

impl RuntimeContext {
    /// This worker's section of a dump (on the worker).
    pub(crate) fn dump_section(&self) -> WorkerDump {
        let now = coarse_ms();
        let mut tasks = Vec::new();
        let mut live = 0;
        let mut next = self.live_head.get();
        while let Some(task) = next {
            live += 1;
            if tasks.len() < RuntimeDump::MAX_TASKS {
                tasks.push(TaskDump {
                    name: task.name().map(|n| n.0.to_string()),
                    worker: self.index,
                    state: task.dump_state(),
                    age: Duration::from_millis(now.wrapping_sub(task.spawned_ms()) as u64),
                });
            }
            next = task.live_next();
        }
        let watch = &self.me().watch;
        WorkerDump {
            worker: self.index,
            answered: true,
            stalled: self.me().is_stalled(),
            running: watch.running_name().map(|n| n.0.to_string()),
            running_for: None,
            queues: QueueDepths::of(&self.registry, self.index),
            tasks,
            live_tasks: live,
        }
    }
}

/// Makes a dump of every worker of `registry`, waiting at most `wait` for their answers.
/// On a worker, its own section is made inline.
pub(crate) fn dump(registry: &ExecutorRegistry, wait: Duration) -> RuntimeDump {
    let n = registry.len();
    let request = Arc::new(DumpRequest {
        sections: Mutex::new(vec![None; n]),
        answered: Condvar::new(),
    });
    let own = super::context::with_current(|cx| {
        cx.filter(|cx| std::ptr::eq(&*cx.registry, registry))
            .map(|cx| {
                request.answer(Some(cx), cx.index);
                cx.index
            })
    });
    for w in (0..n).filter(|&w| Some(w) != own) {
        registry.worker(w).post_dump(request.clone(), w);
    }
    let deadline = std::time::Instant::now() + wait;
    let mut sections = request.sections.lock().unwrap_or_else(|e| e.into_inner());
    while sections.iter().any(Option::is_none) {
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        sections = request
            .answered
            .wait_timeout(sections, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let now_ns = monotonic_ns();
    let workers = sections
        .iter()
        .enumerate()
        .map(|(w, s)| match s {
            Some(s) => s.clone(),
            None => {
                let shared = registry.worker(w);
                let seen = shared.watch.job_seen_ns.load(Relaxed);
                WorkerDump {
                    worker: w,
                    answered: false,
                    stalled: shared.is_stalled(),
                    running: shared.watch.running_name().map(|n| n.0.to_string()),
                    running_for: (seen != 0)
                        .then(|| Duration::from_nanos(now_ns.saturating_sub(seen))),
                    queues: QueueDepths::of(registry, w),
                    tasks: Vec::new(),
                    live_tasks: 0,
                }
            }
        })
        .collect();
    RuntimeDump { workers, wait }
}
