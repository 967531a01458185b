//! Spawning: 1M empty tasks on one worker, balanced over two, and from an outside thread;
//! and a burst of balanced tasks that each do some work, spawned from one task.
//!
//! Every system preallocates its handle vector outside the timed region; the timer runs
//! from the first spawn until the last task is known to be finished.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::common::{human, tokio_current_thread, tokio_multi_thread, veloq_runtime, wait_until};
use crate::harness::{count, ns_per_op, Bench, Goal, Scenario, System};

pub fn all(bench: &mut Bench) {
    local(bench);
    balanced(bench);
    balanced_burst_of_work(bench);
    from_outside(bench);
}

// ---------------------------------------------------------------------------------------
// spawn N empty local tasks on one worker, then join them all
// ---------------------------------------------------------------------------------------

fn local(bench: &mut Bench) {
    let n = count(1_000_000);
    let scenario = Scenario::lower_is_better(
        format!("spawn {} local tasks + join all, 1 worker", human(n)),
        "ns/task",
    )
    .goal(Goal::at_least("tokio", 2.0))
    .goal(Goal::at_least("tokio-localset", 2.0))
    .goal(Goal::at_least("async-executor", 1.0));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_spawn_local(n)),
            System::new("tokio", || tokio_current_thread_spawn(n)),
            System::new("tokio-localset", || tokio_localset_spawn_local(n)),
            System::new("async-executor", || async_executor_spawn_local(n)),
        ],
    );
}

/// `veloq::spawn_local` from a task on the only worker.
fn veloq_spawn_local(n: usize) -> f64 {
    let rt = veloq_runtime(1);
    let root = rt
        .spawn_local_to(0, move || async move {
            let mut handles = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                handles.push(veloq::spawn_local(async {}).expect("spawn_local"));
            }
            for handle in handles {
                handle.await.expect("task completed");
            }
            ns_per_op(start, n)
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// `tokio::spawn` inside `block_on` of a current_thread runtime.
fn tokio_current_thread_spawn(n: usize) -> f64 {
    let rt = tokio_current_thread();
    rt.block_on(async move {
        let mut handles = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            handles.push(tokio::spawn(async {}));
        }
        for handle in handles {
            handle.await.expect("task completed");
        }
        ns_per_op(start, n)
    })
}

/// `tokio::task::spawn_local` in a `LocalSet` on a current_thread runtime (Tokio's
/// `!Send` task API, the closest match to `veloq::spawn_local`).
fn tokio_localset_spawn_local(n: usize) -> f64 {
    let rt = tokio_current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut handles = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            handles.push(tokio::task::spawn_local(async {}));
        }
        for handle in handles {
            handle.await.expect("task completed");
        }
        ns_per_op(start, n)
    })
}

/// `LocalExecutor::spawn` inside its own `run`.
fn async_executor_spawn_local(n: usize) -> f64 {
    let ex = async_executor::LocalExecutor::new();
    futures_lite::future::block_on(ex.run(async {
        let mut handles = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            handles.push(ex.spawn(async {}));
        }
        for handle in handles {
            handle.await;
        }
        ns_per_op(start, n)
    }))
}

// ---------------------------------------------------------------------------------------
// spawn N tasks balanced over two workers, from a task on worker 0, then join them all
// ---------------------------------------------------------------------------------------

fn balanced(bench: &mut Bench) {
    let n = count(1_000_000);
    let scenario = Scenario::lower_is_better(
        format!("spawn_balanced {} tasks + join all, 2 workers", human(n)),
        "ns/task",
    )
    .goal(Goal::at_least("tokio", 2.0));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_spawn_balanced(n)),
            System::new("tokio", || tokio_multi_thread_spawn(n)),
        ],
    );
}

/// `veloq::spawn_balanced` of empty tasks from a task on worker 0; ns per task.
fn veloq_spawn_balanced(n: usize) -> f64 {
    per_task_ns(veloq_spawn_balanced_each(n, || {}), n)
}

/// `veloq::spawn_balanced` of `n` tasks running `body`, from a task on worker 0 of a new
/// 2-worker runtime (P2C: over the mesh to worker 1, or kept on worker 0, stealable),
/// then a join of each; the time from the first spawn to the last join.
fn veloq_spawn_balanced_each(n: usize, body: impl Fn() + Copy + Send + 'static) -> Duration {
    let rt = veloq_runtime(2);
    let root = rt
        .spawn_to(0, async move {
            let mut handles = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                handles.push(veloq::spawn_balanced(async move { body() }).expect("spawn_balanced"));
            }
            for handle in handles {
                handle.await.expect("task completed");
            }
            start.elapsed()
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// `tokio::spawn` from a task on a 2-worker multi_thread runtime (work stealing
/// spreads the tasks).
pub fn tokio_multi_thread_spawn(n: usize) -> f64 {
    tokio_spawn_join(&tokio_multi_thread(2), n)
}

/// `tokio::spawn` of `n` empty tasks from a task on `rt`, then a join of each; ns per task.
pub fn tokio_spawn_join(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    per_task_ns(tokio_spawn_each(rt, n, || {}), n)
}

/// `tokio::spawn` of `n` tasks running `body` from a task on `rt`, then a join of each;
/// the time from the first spawn to the last join.
fn tokio_spawn_each(
    rt: &tokio::runtime::Runtime,
    n: usize,
    body: impl Fn() + Copy + Send + 'static,
) -> Duration {
    let root = rt.spawn(async move {
        let mut handles = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            handles.push(tokio::spawn(async move { body() }));
        }
        for handle in handles {
            handle.await.expect("task completed");
        }
        start.elapsed()
    });
    rt.block_on(root).expect("root task")
}

/// `elapsed` per task, in ns.
fn per_task_ns(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

// ---------------------------------------------------------------------------------------
// spawn_balanced a burst of N tasks of W µs of work each from one task, then join them all
// ---------------------------------------------------------------------------------------

/// The work each task of the burst does (a busy loop on the clock).
const BURST_WORK: Duration = Duration::from_micros(20);

fn balanced_burst_of_work(bench: &mut Bench) {
    let n = count(10_000);
    // Both workers busy from the first spawn to the last join.
    let ideal_ms = (BURST_WORK * n as u32).as_secs_f64() * 1e3 / 2.0;
    let scenario = Scenario::lower_is_better(
        format!(
            "spawn_balanced {} tasks of {} µs work from one task + join all, 2 workers",
            human(n),
            BURST_WORK.as_micros()
        ),
        "ms",
    )
    // Both runtimes end within a few % of the ideal (work stealing spreads Tokio's burst),
    // so the ideal is the goal that says something; Tokio's only bounds the noise.
    .goal(Goal::cost_at_most("ideal", 1.1))
    .goal(Goal::at_least("tokio", 0.95));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || ms(veloq_spawn_balanced_each(n, work))),
            System::new("tokio", || {
                ms(tokio_spawn_each(&tokio_multi_thread(2), n, work))
            }),
            System::new("ideal", || ideal_ms),
        ],
    );
}

/// `elapsed` in ms.
fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// Busy for `BURST_WORK`, as a task with real work would be.
fn work() {
    let until = Instant::now() + BURST_WORK;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------------------
// spawn N tasks from a thread outside the runtime, then wait until all have run
// ---------------------------------------------------------------------------------------

fn from_outside(bench: &mut Bench) {
    let n = count(1_000_000);
    let scenario = Scenario::lower_is_better(
        format!("spawn {} tasks from an outside thread, 2 workers", human(n)),
        "ns/task",
    )
    .goal(Goal::at_least("tokio", 1.5));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_spawn_from_outside(n)),
            System::new("tokio", || tokio_spawn_from_outside(n)),
        ],
    );
}

/// `Runtime::spawn` from the main thread; the handles are dropped (detached) and every
/// task bumps a counter the main thread waits on.
fn veloq_spawn_from_outside(n: usize) -> f64 {
    static FINISHED: AtomicUsize = AtomicUsize::new(0);
    FINISHED.store(0, Relaxed);
    let rt = veloq_runtime(2);
    let start = Instant::now();
    for _ in 0..n {
        let handle = rt.spawn(async {
            FINISHED.fetch_add(1, Relaxed);
        });
        drop(handle.expect("spawn"));
    }
    wait_until(|| FINISHED.load(Relaxed) == n);
    ns_per_op(start, n)
}

/// `Handle::spawn` from the main thread onto a 2-worker multi_thread runtime; same
/// detach-and-count scheme.
fn tokio_spawn_from_outside(n: usize) -> f64 {
    static FINISHED: AtomicUsize = AtomicUsize::new(0);
    FINISHED.store(0, Relaxed);
    let rt = tokio_multi_thread(2);
    let handle = rt.handle();
    let start = Instant::now();
    for _ in 0..n {
        drop(handle.spawn(async {
            FINISHED.fetch_add(1, Relaxed);
        }));
    }
    wait_until(|| FINISHED.load(Relaxed) == n);
    ns_per_op(start, n)
}
