//! Introspection costs: spawn throughput with the stall watchdog on (the default) and
//! off, with named tasks, beside Tokio; and how long a dump of a runtime with many live
//! tasks takes.
//!
//! The spawning root task runs for longer than the default 100 ms threshold in one poll,
//! which *is* a stall: with the default the watchdog would (rightly) flag worker 0 and
//! send the balanced spawns elsewhere, which measures a different placement, not the
//! watchdog's cost. So "on" here uses a 10 s threshold: the watchdog thread samples and
//! every job publishes its progress, but no stall is declared.
//!
//! Each system of the spawn row keeps one runtime for all its runs, as a server keeps
//! its runtime. A fresh runtime per run (fresh worker threads, so fresh malloc arenas)
//! makes the spawn phase fault in 90–140 MB of task memory anew, and how much is
//! bimodal: measured 22,651 or about 35,000 page faults per run of 1M spawns, 75 or
//! 110–135 ns per spawn, from one run to the next of the same program. That swamps the
//! 5 % the goal allows. On a kept runtime the count settles at about 14,800 faults and the
//! time at one mode.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::common::{human, tokio_multi_thread, veloq_builder};
use crate::harness::{count, ns_per_op, Bench, Goal, Scenario, System};
use crate::spawn::tokio_spawn_join;

pub fn all(bench: &mut Bench) {
    spawn_with_watchdog(bench);
    dump_latency(bench);
}

// ---------------------------------------------------------------------------------------
// spawn_balanced N tasks + join, 2 workers: watchdog on / off / named tasks / tokio
// ---------------------------------------------------------------------------------------

fn spawn_with_watchdog(bench: &mut Bench) {
    let n = count(1_000_000);
    let scenario = Scenario::lower_is_better(
        format!(
            "spawn_balanced {} tasks + join all, 2 workers, stall watchdog on (10 s)",
            human(n)
        ),
        "ns/task",
    )
    .goal(Goal::cost_at_most("veloq-watchdog-off", 1.05))
    .goal(Goal::at_least("tokio", 2.0));
    // Built before the row, one per system, each kept for all its runs (see the module's
    // doc): no system runs on memory another left behind.
    let runtime = |threshold| {
        veloq_builder(2)
            .stall_threshold(threshold)
            .build()
            .expect("veloq runtime")
    };
    let (watched, unwatched, named) = (
        runtime(WATCHING),
        runtime(Duration::ZERO),
        runtime(WATCHING),
    );
    let tokio = tokio_multi_thread(2);
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_spawn(&watched, n, None)),
            System::new("veloq-watchdog-off", || veloq_spawn(&unwatched, n, None)),
            System::new("veloq-named", || veloq_spawn(&named, n, Some("bench"))),
            System::new("tokio", || tokio_spawn_join(&tokio, n)),
        ],
    );
}

/// A threshold the benchmark's long root poll stays under.
const WATCHING: Duration = Duration::from_secs(10);

/// `spawn_balanced` (or a named balanced spawn) of `n` empty tasks from a task on worker
/// 0 of `rt`, then a join of each; ns per task.
fn veloq_spawn(rt: &veloq::Runtime, n: usize, name: Option<&'static str>) -> f64 {
    let root = rt
        .spawn_to(0, async move {
            let mut handles = Vec::with_capacity(n);
            // Built once, cloned per spawn (the name is shared, not copied).
            let named = name.map(|name| {
                veloq::TaskBuilder::new()
                    .name(name)
                    .placement(veloq::Placement::Balanced)
            });
            let start = Instant::now();
            for _ in 0..n {
                let h = match &named {
                    None => veloq::spawn_balanced(async {}).expect("spawn"),
                    Some(builder) => builder.clone().spawn(async {}).expect("spawn"),
                };
                handles.push(h);
            }
            for handle in handles {
                handle.await.expect("task completed");
            }
            ns_per_op(start, n)
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

// ---------------------------------------------------------------------------------------
// dump latency: 2 workers, N live (pending) tasks
// ---------------------------------------------------------------------------------------

/// The budget a dump must stay within (µs) at the scenario's task count.
const DUMP_BUDGET_US: f64 = 10_000.0;

fn dump_latency(bench: &mut Bench) {
    let n = count(100_000);
    let scenario = Scenario::lower_is_better(
        format!("Handle::dump, 2 workers, {} live named tasks", human(n)),
        "µs/dump",
    )
    .goal(Goal::within("budget"));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_dump(n)),
            System::new("budget", || DUMP_BUDGET_US),
        ],
    );
}

/// A gate every task waits at.
struct Gate {
    open: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    fn pass(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let gate = self.clone();
        std::future::poll_fn(move |cx| {
            if gate.open.load(SeqCst) {
                return Poll::Ready(());
            }
            gate.wakers.lock().unwrap().push(cx.waker().clone());
            if gate.open.load(SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Median time of a few dumps while `n` named tasks (half per worker) wait at a gate.
fn veloq_dump(n: usize) -> f64 {
    let rt = veloq_builder(2).build().expect("veloq runtime");
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        wakers: Mutex::new(Vec::new()),
    });
    let handles: Vec<_> = (0..n)
        .map(|i| {
            veloq::TaskBuilder::new()
                .name("waiting")
                .placement(veloq::Placement::Worker(i % 2))
                .spawn_on(&rt, gate.pass())
                .expect("spawn")
        })
        .collect();
    while gate.wakers.lock().unwrap().len() < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut samples: Vec<f64> = (0..9)
        .map(|_| {
            let start = Instant::now();
            let dump = rt.dump();
            let us = start.elapsed().as_secs_f64() * 1e6;
            assert!(dump.workers.iter().all(|w| w.answered));
            assert_eq!(dump.workers.iter().map(|w| w.live_tasks).sum::<usize>(), n);
            us
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    gate.open.store(true, SeqCst);
    for w in gate.wakers.lock().unwrap().drain(..) {
        w.wake();
    }
    for h in handles {
        rt.block_on(h).expect("task");
    }
    samples[samples.len() / 2]
}
