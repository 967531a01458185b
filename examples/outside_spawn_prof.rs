//! Profiling aid for the outside-thread spawn path: N empty `Send` tasks spawned from the
//! main thread onto a 2-worker runtime, handles dropped, then a wait until every task ran,
//! as the core bench's "spawn from an outside thread" row does. For counting instructions
//! per spawn (`valgrind --tool=callgrind --separate-threads=yes`, twice with different N,
//! the difference divided by the difference in N; the main thread is the spawn side). With `PIN` set in the environment the workers are
//! pinned to cores, as in the bench.
//!
//! `outside_spawn_prof N [any|balanced|to]`: `any` (default) is `Handle::spawn`,
//! `balanced` is `spawn_balanced`, `to` is `spawn_to` alternating between the workers;
//! `local` and `inside` are the bench's other spawn rows, for checking they did not get
//! dearer: N `spawn_local` on one worker, or N `spawn_balanced` over two from a task on
//! worker 0, then all joined; `tokio` is the outside row's peer (`Handle::spawn` onto a 2-worker multi_thread runtime).
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

static FINISHED: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mode = args.next().unwrap_or_else(|| "any".into());
    if mode == "tokio" {
        return tokio_from_outside(n);
    }
    if mode == "local" || mode == "inside" {
        return from_a_worker(n, mode == "local");
    }
    let rt = veloq::Runtime::builder()
        .workers(2)
        .pin_workers(std::env::var_os("PIN").is_some())
        .stall_threshold(Duration::from_secs(10))
        .build()
        .expect("veloq runtime");
    let start = std::time::Instant::now();
    for i in 0..n {
        let task = async {
            FINISHED.fetch_add(1, Relaxed);
        };
        let handle = match mode.as_str() {
            "any" => rt.spawn(task),
            "balanced" => rt.spawn_balanced(task),
            "to" => rt.spawn_to(i % 2, task),
            other => panic!("unknown mode {other}"),
        };
        drop(handle.expect("spawn"));
    }
    while FINISHED.load(Relaxed) != n {
        std::thread::sleep(Duration::from_micros(20));
    }
    println!(
        "{n} tasks ran in {:.1} ns/task",
        start.elapsed().as_nanos() as f64 / n as f64
    );
    if std::env::var_os("STATS").is_some() {
        for (i, w) in rt.stats().iter().enumerate() {
            println!(
                "worker {i}: injector {} stolen {} inbox {} steals {} parks {} wakeups {}",
                w.tasks_injector, w.tasks_stolen, w.tasks_inbox, w.steals, w.parks, w.wakeups
            );
        }
    }
}

fn tokio_from_outside(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let handle = rt.handle();
    let start = std::time::Instant::now();
    for _ in 0..n {
        drop(handle.spawn(async {
            FINISHED.fetch_add(1, Relaxed);
        }));
    }
    while FINISHED.load(Relaxed) != n {
        std::thread::sleep(Duration::from_micros(20));
    }
    println!(
        "{n} tasks ran in {:.1} ns/task",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}

fn from_a_worker(n: usize, local: bool) {
    let rt = veloq::Runtime::builder()
        .workers(if local { 1 } else { 2 })
        .pin_workers(std::env::var_os("PIN").is_some())
        .stall_threshold(Duration::from_secs(10))
        .build()
        .expect("veloq runtime");
    let root = rt
        .spawn_local_to(0, move || async move {
            let start = std::time::Instant::now();
            if local {
                let mut handles = Vec::with_capacity(n);
                for _ in 0..n {
                    handles.push(veloq::spawn_local(async {}).expect("spawn_local"));
                }
                for handle in handles {
                    handle.await.expect("task completed");
                }
            } else {
                let mut handles = Vec::with_capacity(n);
                for _ in 0..n {
                    handles.push(veloq::spawn_balanced(async {}).expect("spawn_balanced"));
                }
                for handle in handles {
                    handle.await.expect("task completed");
                }
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .expect("spawn root");
    let ns = rt.block_on(root).expect("root task");
    println!("{n} tasks ran in {ns:.1} ns/task");
}
