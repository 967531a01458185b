//! Profiling aid for the mesh (benches/core/mesh.rs): the one-way stream worker 0 →
//! worker 1 with the bench's flow control, and the chained ping-pong, printing what
//! explains a run besides its speed.
//!
//! `mesh_prof [RUNS] [N] [oneway|pingpong]`
//!
//! * `oneway` (default): N messages; prints M msg/s, the sender's bursts (how many
//!   messages it found room for at each look at the arrival counter: about 250 when the
//!   receiver keeps up, a few dozen when it lags), worker 1's parks and wake-ups, the
//!   messages that took the mesh and those that spilled into worker 1's inbox, and the
//!   workers' context switches.
//! * `pingpong`: N round trips, ns per round trip.
//!
//! For instruction counts run it under `valgrind --tool=callgrind --dump-instr=yes
//! --separate-threads=yes` and count, per worker thread, the instructions executed about
//! N times (the per-message path); the sender's loop is `send_burst`.
use std::ffi::c_void;
use std::future::poll_fn;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::Mutex;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use veloq::{Placement, RawTask, Runtime, RuntimeBuilder, RuntimeContext};

const CAPACITY: usize = RuntimeBuilder::DEFAULT_MESH_CAPACITY;

/// Counts one arrival.
unsafe extern "C" fn count_arrival(_cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the sender's counter, alive until every message arrived.
    let arrivals = unsafe { &*(arg as *const AtomicU64) };
    arrivals.fetch_add(1, Release);
    0
}

/// Sends `burst` copies of `job` to worker 1; out of line so that callgrind shows the
/// sender's per-message path as one function.
#[inline(never)]
fn send_burst(job: RawTask, burst: u64) {
    RuntimeContext::with_current(|cx| {
        let cx = cx.expect("on a worker");
        for _ in 0..burst {
            // SAFETY: the job's counter outlives every run of it (the sender waits).
            unsafe { cx.spawn_raw(Placement::Worker(1), job) }.expect("spawn_raw");
        }
    });
}

fn runtime() -> Runtime {
    Runtime::builder()
        .workers(2)
        .pin_workers(true)
        .stall_threshold(Duration::from_secs(10))
        .mesh_capacity(CAPACITY)
        .build()
        .expect("runtime")
}

/// (voluntary, involuntary) context switches of this process's worker threads.
fn worker_switches() -> (u64, u64) {
    let mut sum = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return sum;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("veloq-w") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                sum.0 += count(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                sum.1 += count(v);
            }
        }
    }
    sum
}

fn one_way(n: u64) -> String {
    let rt = runtime();
    let before = rt.stats();
    let root = rt
        .spawn_local_to(0, move || async move {
            // On a line of its own, as in the bench.
            let arrivals = Box::new(CachePadded::new(AtomicU64::new(0)));
            let job = RawTask {
                func: count_arrival,
                arg: &**arrivals as *const AtomicU64 as *mut c_void,
                cq: ptr::null(),
                user_data: 0,
            };
            let (mut sent, mut bursts) = (0, 0u64);
            let switches = worker_switches();
            let start = Instant::now();
            while sent < n {
                let burst = (CAPACITY as u64 - (sent - arrivals.load(Acquire))).min(n - sent);
                if burst == 0 {
                    for _ in 0..32 {
                        std::hint::spin_loop();
                    }
                    veloq::yield_now().await;
                    continue;
                }
                send_burst(job, burst);
                sent += burst;
                bursts += 1;
            }
            while arrivals.load(Acquire) < n {
                veloq::yield_now().await;
            }
            let secs = start.elapsed().as_secs_f64();
            let after = worker_switches();
            let switched = (after.0 - switches.0, after.1 - switches.1);
            (n as f64 / secs / 1e6, bursts, switched)
        })
        .expect("spawn root");
    let (mops, bursts, switched) = rt.block_on(root).expect("root");
    let after = rt.stats();
    let delta = |f: fn(&veloq::WorkerStats) -> u64| f(&after[1]) - f(&before[1]);
    format!(
        "one-way {mops:7.2} M msg/s  bursts {bursts} (avg {:.1})  worker 1: parks {} \
         wake-ups {} mesh {} inbox {}  switches voluntary {} involuntary {}",
        n as f64 / bursts as f64,
        delta(|s| s.parks),
        delta(|s| s.wakeups),
        delta(|s| s.tasks_mesh),
        delta(|s| s.tasks_inbox),
        switched.0,
        switched.1
    )
}

/// A chained ping-pong's state: round trips to go, and the task waiting for the last.
struct Chain {
    left: AtomicU64,
    done: AtomicU64,
    waiter: Mutex<Option<Waker>>,
}

/// Runs on worker 0: sends the next ping, or wakes the waiting task after the last.
unsafe extern "C" fn chained_pong(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the Chain, alive until the last reply; `cx` is this worker's.
    let (chain, cx) = unsafe { (&*(arg as *const Chain), &*cx) };
    if chain.left.fetch_sub(1, Release) > 1 {
        send(cx, 1, chained_ping, arg);
    } else {
        chain.done.store(1, Release);
        if let Some(waker) = chain.waiter.lock().unwrap().take() {
            waker.wake();
        }
    }
    0
}

/// Runs on worker 1: sends the pong back.
unsafe extern "C" fn chained_ping(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `cx` is this worker's context.
    send(unsafe { &*cx }, 0, chained_pong, arg);
    0
}

fn send(cx: &RuntimeContext, to: usize, func: veloq::RawTaskFn, arg: *mut c_void) {
    let job = RawTask {
        func,
        arg,
        cq: ptr::null(),
        user_data: 0,
    };
    // SAFETY: `arg` is the Chain, alive until the last reply.
    if unsafe { cx.spawn_raw(Placement::Worker(to), job) }.is_err() {
        std::process::abort(); // cannot unwind out of an extern "C" callback
    }
}

fn ping_pong(n: u64) -> String {
    let rt = runtime();
    let root = rt
        .spawn_local_to(0, move || async move {
            let chain = Chain {
                left: AtomicU64::new(n),
                done: AtomicU64::new(0),
                waiter: Mutex::new(None),
            };
            let arg = &chain as *const Chain as *mut c_void;
            let start = Instant::now();
            RuntimeContext::with_current(|cx| send(cx.expect("on worker 0"), 1, chained_ping, arg));
            poll_fn(|cx| {
                *chain.waiter.lock().unwrap() = Some(cx.waker().clone());
                if chain.done.load(Acquire) == 1 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .expect("spawn root");
    format!(
        "ping-pong {:7.1} ns per round trip",
        rt.block_on(root).expect("root")
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let n: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let ping = args.get(3).is_some_and(|m| m == "pingpong");
    for _ in 0..runs {
        println!("{}", if ping { ping_pong(n) } else { one_way(n) });
    }
}
