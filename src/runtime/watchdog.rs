//! The stall watchdog: a thread that notices a worker stuck in one job.
//!
//! A callback or a future's poll cannot be preempted. What can be done is to see it and
//! route around it. Each worker bumps a progress counter when it starts a job or a loop
//! turn (a plain store on a line it owns, see `RuntimeContext::bump_progress`). The
//! watchdog samples every counter every `threshold / 4` and keeps, per worker, when it
//! first saw the current value. A worker that is not parked and whose counter has not
//! moved for `threshold` is *stalled*: the watchdog reports it (callback and log), sets
//! the flag that makes balanced placement and outside spawns avoid it, and, as long as
//! the stalled worker's injector holds work, wakes a parked peer to steal it (idle
//! workers look at a stalled peer's injector first). When the counter moves again the
//! stall ends: the flag is cleared and the end is reported too.
//!
//! The worker pays one store per job; every clock read and comparison is the watchdog's.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::executor::spawner::ExecutorRegistry;
use super::introspect::{monotonic_ns, TaskName};

/// What the watchdog tells [`RuntimeBuilder::on_stall`](super::RuntimeBuilder::on_stall)
/// about a stall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallReport {
    /// The stalled worker.
    pub worker: usize,
    /// How long the worker had been in the same job when this report was made (as the
    /// watchdog measures it: up to a quarter of the threshold less than the truth).
    pub running_for: Duration,
    /// The name of the task it runs, when it has one.
    pub task: Option<String>,
    /// False when the stall was noticed (the job still runs), true when the worker came
    /// back to its loop (then `running_for` is the whole stall, as measured).
    pub ended: bool,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.running_for.as_millis();
        let task = match &self.task {
            Some(name) => format!("task '{name}'"),
            None => "an unnamed job".to_string(),
        };
        if self.ended {
            write!(f, "worker {} back after {ms} ms in {task}", self.worker)
        } else {
            write!(
                f,
                "worker {} stalled for {ms} ms in {task} (still running)",
                self.worker
            )
        }
    }
}

/// A stall callback.
pub(crate) type StallHandler = Arc<dyn Fn(&StallReport) + Send + Sync + 'static>;

/// The builder's stall settings.
#[derive(Clone)]
pub(crate) struct StallConfig {
    /// 0: no watchdog.
    pub(crate) threshold: Duration,
    /// Write a line on stderr per report.
    pub(crate) log: bool,
    pub(crate) handler: Option<StallHandler>,
}

impl StallConfig {
    /// Default threshold.
    pub(crate) const DEFAULT_THRESHOLD: Duration = Duration::from_millis(100);
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            threshold: Self::DEFAULT_THRESHOLD,
            log: true,
            handler: None,
        }
    }
}

impl fmt::Debug for StallConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StallConfig")
            .field("threshold", &self.threshold)
            .field("log", &self.log)
            .field("handler", &self.handler.is_some())
            .finish()
    }
}

thread_local! {
    static ON_WATCHDOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The running watchdog thread; stopping (or dropping) it joins the thread.
pub(crate) struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog for `registry`, or returns None when the threshold is 0.
    pub(crate) fn start(
        registry: Arc<ExecutorRegistry>,
        config: StallConfig,
    ) -> std::io::Result<Option<Watchdog>> {
        if config.threshold.is_zero() {
            return Ok(None);
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = thread::Builder::new()
            .name("veloq-watchdog".into())
            .spawn(move || {
                ON_WATCHDOG.with(|w| w.set(true));
                watch(&registry, &config, &stop2)
            })?;
        Ok(Some(Watchdog {
            stop,
            thread: Some(thread),
        }))
    }

    /// Stops the thread and joins it (unless called from the watchdog itself, from a
    /// stall callback: then it exits on its own once the callback returns).
    pub(crate) fn stop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            if !ON_WATCHDOG.with(|w| w.get()) {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the watchdog remembers of a worker.
#[derive(Clone, Default)]
struct Seen {
    progress: u64,
    since_ns: u64,
    stalled: bool,
    name: Option<Arc<TaskName>>,
}

fn watch(registry: &ExecutorRegistry, config: &StallConfig, stop: &(Mutex<bool>, Condvar)) {
    let threshold = config.threshold.as_nanos().min(u64::MAX as u128) as u64;
    let period = (config.threshold / 4).max(Duration::from_millis(1));
    let n = registry.len();
    let mut seen = vec![Seen::default(); n];
    let start = monotonic_ns();
    for s in seen.iter_mut() {
        s.since_ns = start;
    }
    loop {
        {
            let stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
            let (stopped, _) = stop
                .1
                .wait_timeout(stopped, period)
                .unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
        }
        let now = monotonic_ns();
        for (w, s) in seen.iter_mut().enumerate() {
            let shared = registry.worker(w);
            let progress = shared.watch.progress.load(Relaxed);
            let resting = shared.park.is_parked() || shared.watch.exited.load(Relaxed);
            if progress != s.progress || resting {
                if s.stalled {
                    let stalled_for = now.saturating_sub(s.since_ns);
                    shared.watch.stalled_ns.fetch_add(stalled_for, Relaxed);
                    shared.set_stalled(false);
                    registry.stalled_workers.fetch_sub(1, Relaxed);
                    report(
                        config,
                        StallReport {
                            worker: w,
                            running_for: Duration::from_nanos(stalled_for),
                            task: s.name.take().map(|n| n.0.to_string()),
                            ended: true,
                        },
                    );
                }
                s.progress = progress;
                s.since_ns = now;
                s.stalled = false;
                shared.watch.job_seen_ns.store(now, Relaxed);
                continue;
            }
            let running = now.saturating_sub(s.since_ns);
            if !s.stalled && running >= threshold {
                s.stalled = true;
                s.name = shared.watch.running_name();
                shared.set_stalled(true);
                registry.stalled_workers.fetch_add(1, Relaxed);
                shared.watch.stalls.fetch_add(1, Relaxed);
                report(
                    config,
                    StallReport {
                        worker: w,
                        running_for: Duration::from_nanos(running),
                        task: s.name.as_ref().map(|n| n.0.to_string()),
                        ended: false,
                    },
                );
            }
            if s.stalled && !shared.injector.is_empty() {
                // Its stealable work would wait for it: wake a parked peer to take it.
                for k in 1..n {
                    let peer = registry.worker((w + k) % n);
                    if !peer.is_stalled() && peer.park.is_parked() && peer.notify() {
                        break;
                    }
                }
            }
        }
    }
}

/// Logs the report (when enabled) and calls the handler, containing its panics.
fn report(config: &StallConfig, report: StallReport) {
    if config.log {
        eprintln!("veloq: {report}");
    }
    if let Some(handler) = &config.handler {
        let _ = catch_unwind(AssertUnwindSafe(|| handler(&report)));
    }
}
