//! Runtime constructors and small helpers shared by the core scenarios.

use std::time::Duration;

/// Bytes in a MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// A veloq builder with `workers` pinned workers (the runtime's intended setup). The
/// stall threshold is raised to 10 s: a scenario's root task that spawns a million tasks
/// in one poll holds its worker for longer than the default 100 ms, which the watchdog
/// would rightly report and route around (a different placement, not what the scenario
/// measures). The watchdog still runs and every job still publishes its progress.
pub fn veloq_builder(workers: usize) -> veloq::RuntimeBuilder {
    veloq::Runtime::builder()
        .workers(workers)
        .pin_workers(true)
        .stall_threshold(Duration::from_secs(10))
}

/// A veloq runtime with `workers` pinned workers and default settings.
pub fn veloq_runtime(workers: usize) -> veloq::Runtime {
    veloq_builder(workers).build().expect("veloq runtime")
}

/// Tokio's single-threaded runtime.
pub fn tokio_current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// Tokio's work-stealing runtime with `workers` worker threads.
pub fn tokio_multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("tokio runtime")
}

/// Blocks the calling (non-worker) thread until `done()` holds, checking every 20 µs
/// without spinning, so the runtime's workers keep both cores.
pub fn wait_until(done: impl Fn() -> bool) {
    while !done() {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// `1M`, `100k`, `64`: a count as it reads in a scenario name.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
