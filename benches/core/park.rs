//! The park/wake trade-off: an idle worker that spins a while before parking answers
//! faster, and burns CPU while it spins.
//!
//! "veloq" is the default builder (spins `RuntimeBuilder::DEFAULT_SPIN` before parking),
//! "veloq-park" is `spin_before_park(Duration::ZERO)` (parks at once), and Tokio's
//! multi_thread runtime is the reference.

use std::thread;
use std::time::{Duration, Instant};

use veloq::RuntimeBuilder;

use crate::common::{human, tokio_multi_thread, veloq_builder};
use crate::harness::{count, ns_per_op, quick, Bench, Scenario, System};

pub fn all(bench: &mut Bench) {
    round_trip(bench);
    idle_cpu(bench);
}

/// The veloq runtime for `spin`: `None` keeps the default.
fn veloq_with_spin(workers: usize, spin: Option<Duration>) -> veloq::Runtime {
    let builder = veloq_builder(workers);
    let builder = match spin {
        Some(spin) => builder.spin_before_park(spin),
        None => builder,
    };
    builder.build().expect("veloq runtime")
}

// ---------------------------------------------------------------------------------------
// host → worker → host round trip
// ---------------------------------------------------------------------------------------

fn round_trip(bench: &mut Bench) {
    let n = count(10_000);
    let scenario = Scenario::lower_is_better(
        format!(
            "round trip host→worker→host, 1 worker, ×{} (veloq spins {:?}; veloq-park: 0)",
            human(n),
            RuntimeBuilder::DEFAULT_SPIN
        ),
        "µs",
    );
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_round_trip(None, n)),
            System::new("veloq-park", || veloq_round_trip(Some(Duration::ZERO), n)),
            System::new("tokio", || tokio_round_trip(n)),
        ],
    );
}

/// The main thread spawns an empty task on worker 0 and blocks on its handle, `n` times.
fn veloq_round_trip(spin: Option<Duration>, n: usize) -> f64 {
    let rt = veloq_with_spin(1, spin);
    let start = Instant::now();
    for _ in 0..n {
        let handle = rt.spawn_to(0, async {}).expect("spawn");
        rt.block_on(handle).expect("task");
    }
    ns_per_op(start, n) / 1e3
}

/// The same on a 1-worker Tokio multi_thread runtime.
fn tokio_round_trip(n: usize) -> f64 {
    let rt = tokio_multi_thread(1);
    let start = Instant::now();
    for _ in 0..n {
        rt.block_on(rt.spawn(async {})).expect("task");
    }
    ns_per_op(start, n) / 1e3
}

// ---------------------------------------------------------------------------------------
// idle CPU
// ---------------------------------------------------------------------------------------

fn idle_cpu(bench: &mut Bench) {
    let window = if quick() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let scenario = Scenario::lower_is_better(
        format!("idle CPU of 2 workers over {window:?} after one task each"),
        "% of a core",
    );
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_idle_cpu(None, window)),
            System::new("veloq-park", || {
                veloq_idle_cpu(Some(Duration::ZERO), window)
            }),
            System::new("tokio", || tokio_idle_cpu(window)),
        ],
    );
}

/// Runs one task on each of 2 workers, then measures the process's CPU over `window`.
fn veloq_idle_cpu(spin: Option<Duration>, window: Duration) -> f64 {
    let rt = veloq_with_spin(2, spin);
    for worker in 0..2 {
        let handle = rt.spawn_to(worker, async {}).expect("spawn");
        rt.block_on(handle).expect("task");
    }
    process_cpu_percent(window)
}

/// The same on a 2-worker Tokio multi_thread runtime (two tasks; Tokio places them).
fn tokio_idle_cpu(window: Duration) -> f64 {
    let rt = tokio_multi_thread(2);
    for _ in 0..2 {
        rt.block_on(rt.spawn(async {})).expect("task");
    }
    process_cpu_percent(window)
}

/// User + system CPU time of the whole process, over `window` of sleeping on this
/// thread, as a percentage of one core.
fn process_cpu_percent(window: Duration) -> f64 {
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    thread::sleep(window);
    let cpu = process_cpu_time() - cpu_before;
    cpu.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0
}

/// User + system CPU time of this process so far (getrusage).
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we hand it.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
