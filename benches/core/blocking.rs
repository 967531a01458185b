//! The blocking pool: `spawn_blocking` round-trip latency and throughput, veloq against
//! Tokio's `spawn_blocking`, both from a task on a 1-worker runtime and both pools capped
//! at the same number of threads.
//!
//! Each system builds its runtime and starts one pool thread before the timer starts.

use std::time::Instant;

use crate::common::{human, veloq_builder};
use crate::harness::{count, ns_per_op, Bench, Scenario, System};

/// Most pool threads, for both systems.
const POOL_THREADS: usize = 4;

pub fn all(bench: &mut Bench) {
    round_trip(bench);
    throughput(bench);
}

fn veloq_runtime() -> veloq::Runtime {
    veloq_builder(1)
        .blocking_threads(0, POOL_THREADS)
        .build()
        .expect("veloq runtime")
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(POOL_THREADS)
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// one job at a time: task → pool → task
// ---------------------------------------------------------------------------------------

fn round_trip(bench: &mut Bench) {
    let n = count(5_000);
    let scenario = Scenario::lower_is_better(
        format!(
            "spawn_blocking round trip task→pool→task, 1 worker, ×{}",
            human(n)
        ),
        "µs",
    );
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_round_trip(n)),
            System::new("tokio", || tokio_round_trip(n)),
        ],
    );
}

/// A task on the only worker awaits `n` empty blocking jobs one after the other.
fn veloq_round_trip(n: usize) -> f64 {
    let rt = veloq_runtime();
    let task = rt
        .spawn_to(0, async move {
            veloq::spawn_blocking(|| ())
                .expect("spawn")
                .await
                .expect("warm-up");
            let start = Instant::now();
            for _ in 0..n {
                veloq::spawn_blocking(|| ())
                    .expect("spawn")
                    .await
                    .expect("job");
            }
            ns_per_op(start, n) / 1e3
        })
        .expect("spawn task");
    rt.block_on(task).expect("task")
}

/// The same with `tokio::task::spawn_blocking` from a task on a 1-worker runtime.
fn tokio_round_trip(n: usize) -> f64 {
    let rt = tokio_runtime();
    rt.block_on(rt.spawn(async move {
        tokio::task::spawn_blocking(|| ()).await.expect("warm-up");
        let start = Instant::now();
        for _ in 0..n {
            tokio::task::spawn_blocking(|| ()).await.expect("job");
        }
        ns_per_op(start, n) / 1e3
    }))
    .expect("task")
}

// ---------------------------------------------------------------------------------------
// many jobs at once: spawn them all, then await them all
// ---------------------------------------------------------------------------------------

fn throughput(bench: &mut Bench) {
    let n = count(50_000);
    let scenario = Scenario::lower_is_better(
        format!(
            "spawn {} blocking jobs + await all, 1 worker, pool of ≤{POOL_THREADS}",
            human(n)
        ),
        "ns/job",
    );
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_throughput(n)),
            System::new("tokio", || tokio_throughput(n)),
        ],
    );
}

/// A task spawns `n` empty blocking jobs, then awaits every handle.
fn veloq_throughput(n: usize) -> f64 {
    let rt = veloq_runtime();
    let task = rt
        .spawn_to(0, async move {
            veloq::spawn_blocking(|| ())
                .expect("spawn")
                .await
                .expect("warm-up");
            let mut handles = Vec::with_capacity(n);
            let start = Instant::now();
            for _ in 0..n {
                handles.push(veloq::spawn_blocking(|| ()).expect("spawn"));
            }
            for handle in handles {
                handle.await.expect("job");
            }
            ns_per_op(start, n)
        })
        .expect("spawn task");
    rt.block_on(task).expect("task")
}

/// The same with `tokio::task::spawn_blocking`.
fn tokio_throughput(n: usize) -> f64 {
    let rt = tokio_runtime();
    rt.block_on(rt.spawn(async move {
        tokio::task::spawn_blocking(|| ()).await.expect("warm-up");
        let mut handles = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            handles.push(tokio::task::spawn_blocking(|| ()));
        }
        for handle in handles {
            handle.await.expect("job");
        }
        ns_per_op(start, n)
    }))
    .expect("task")
}
