//! Worker A → worker B: one-way messages per second and ping-pong round trip.
//!
//! veloq sends `RawTask` callback jobs with `RuntimeContext::spawn_raw(Worker(b), ..)` from
//! a task on worker 0 to worker 1 (pinned to cores 0 and 1). The reference is a bare SPSC
//! ring between two threads pinned to the same cores, carrying the same 32-byte
//! `RawTask` and running the same callback on arrival: the hardware limit for moving a
//! message between the two cores.
//!
//! The ping-pong's "veloq" row chains the callbacks as the ring does (A's pong callback
//! sends the next ping); "veloq-task" has a task on A await each pong instead (the round
//! trip plus a task wake and poll). It also runs veloq with
//! `spin_before_park(Duration::ZERO)` ("veloq-park", task-awaited), where B parks between
//! pings: the worker-to-worker side of the park/wake trade-off.
//!
//! For the one-way stream both senders use the same flow control: at most one channel's
//! worth of messages not yet arrived, read off the arrival counter the callback bumps
//! (a full mesh channel would otherwise spill into the target's inbox, a different path;
//! veloq's `spawn_raw` has no way to say "full"). The arrival counter both read has a
//! cache line of its own: the receiver bumps it once per message, and sharing a line with
//! the sender's own state (its loop variables, on its stack or in its task) made each
//! message cost a line transfer or not depending on where the allocator happened to put
//! that state: runs of one binary differed by 3× and more.

use std::ffi::c_void;
use std::future::poll_fn;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use veloq::{Placement, RawTask, RuntimeBuilder, RuntimeContext};

use crate::common::{human, veloq_builder};
use crate::harness::{count, mops_per_sec, ns_per_op, Bench, Goal, Scenario, System};
use crate::spsc_ring;

/// Slots per channel, the same for the mesh and the ring: veloq's default.
const CAPACITY: usize = RuntimeBuilder::DEFAULT_MESH_CAPACITY;
/// Worker A (sender) and worker B (receiver).
const A: usize = 0;
const B: usize = 1;

pub fn all(bench: &mut Bench) {
    one_way(bench);
    ping_pong(bench);
}

/// The callback every message runs on arrival: count it.
unsafe extern "C" fn count_arrival(_cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the sender's counter, which it keeps alive until every message
    // has arrived.
    let arrivals = unsafe { &*(arg as *const AtomicU64) };
    arrivals.fetch_add(1, Release);
    0
}

/// A message whose arrival bumps `arrivals`.
fn arrival_job(arrivals: &AtomicU64) -> RawTask {
    RawTask {
        func: count_arrival,
        arg: arrivals as *const AtomicU64 as *mut c_void,
        cq: ptr::null(),
        user_data: 0,
    }
}

/// Sends `copies` of `job` to worker `to` over the mesh, from the current worker.
fn send_over_mesh(to: usize, job: RawTask, copies: u64) {
    RuntimeContext::with_current(|cx| {
        let cx = cx.expect("called on a worker");
        for _ in 0..copies {
            // SAFETY: the job's arg outlives every run of it: the sender waits for all
            // arrivals before dropping it.
            unsafe { cx.spawn_raw(Placement::Worker(to), job) }.expect("spawn_raw");
        }
    });
}

/// The two cores workers A and B are pinned to (veloq pins worker i to core i).
fn cores_a_b() -> (core_affinity::CoreId, core_affinity::CoreId) {
    let cores = core_affinity::get_core_ids().expect("core list");
    assert!(cores.len() >= 2, "the mesh scenarios need two cores");
    (cores[A], cores[B])
}

/// A runtime with workers A and B, pinned, with `CAPACITY`-slot mesh channels; idle
/// workers spin for the default time before parking, or `spin` when given.
fn two_worker_runtime(spin: Option<Duration>) -> veloq::Runtime {
    let builder = veloq_builder(2).mesh_capacity(CAPACITY);
    let builder = match spin {
        Some(spin) => builder.spin_before_park(spin),
        None => builder,
    };
    builder.build().expect("veloq runtime")
}

// ---------------------------------------------------------------------------------------
// one-way throughput
// ---------------------------------------------------------------------------------------

fn one_way(bench: &mut Bench) {
    let n = count(10_000_000) as u64;
    let scenario = Scenario::higher_is_better(
        format!("mesh one-way A→B, {} messages", human(n as usize)),
        "M msg/s",
    )
    .goal(Goal::at_least("spsc-ring", 0.7));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_one_way(n)),
            System::new("spsc-ring", || ring_one_way(n)),
        ],
    );
}

/// The arrival counter of a one-way run, on a cache line of its own (see the module
/// comment), boxed so that its alignment holds wherever the sender keeps it.
fn arrival_counter() -> Box<CachePadded<AtomicU64>> {
    Box::new(CachePadded::new(AtomicU64::new(0)))
}

/// Messages the sender may still send: `CAPACITY` minus those sent but not yet arrived.
fn credits(sent: u64, arrivals: &AtomicU64) -> u64 {
    CAPACITY as u64 - (sent - arrivals.load(Acquire))
}

/// What a sender out of credits does before it looks at the arrival counter again, the
/// same for every system: back off a little, since rereading the counter at full speed
/// would slow down the consumer that bumps it.
fn back_off() {
    for _ in 0..32 {
        std::hint::spin_loop();
    }
}

/// A task on worker A sends `n` jobs to worker B, at most `CAPACITY` unarrived, and
/// waits until all have run.
fn veloq_one_way(n: u64) -> f64 {
    let rt = two_worker_runtime(None);
    let root = rt
        .spawn_local_to(A, move || async move {
            let arrivals = arrival_counter();
            let job = arrival_job(&arrivals);
            let mut sent = 0;
            let start = Instant::now();
            while sent < n {
                let burst = credits(sent, &arrivals).min(n - sent);
                if burst == 0 {
                    // The ring's back-off (see `ring_one_way`), then end this poll so the
                    // worker wakes B if needed and runs its loop.
                    back_off();
                    veloq::yield_now().await;
                    continue;
                }
                send_over_mesh(B, job, burst);
                sent += burst;
            }
            while arrivals.load(Acquire) < n {
                veloq::yield_now().await;
            }
            mops_per_sec(start, n as usize)
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// The same over a bare SPSC ring: thread A pushes (spinning while out of credits),
/// thread B drains whatever has been published (spinning while empty) and runs each job.
fn ring_one_way(n: u64) -> f64 {
    let (mut tx, mut rx) = spsc_ring::channel::<RawTask>(CAPACITY);
    let (core_a, core_b) = cores_a_b();
    let ready = Arc::new(Barrier::new(2));
    let consumer = {
        let ready = ready.clone();
        thread::spawn(move || {
            core_affinity::set_for_current(core_b);
            ready.wait();
            let mut received = 0;
            while received < n {
                let batch = rx.drain(|job| {
                    // SAFETY: as for veloq: the producer keeps the counter alive.
                    unsafe { (job.func)(ptr::null_mut(), job.arg) };
                });
                if batch == 0 {
                    std::hint::spin_loop();
                }
                received += batch as u64;
            }
        })
    };
    let producer = thread::spawn(move || {
        core_affinity::set_for_current(core_a);
        let arrivals = arrival_counter();
        let job = arrival_job(&arrivals);
        ready.wait();
        let mut sent = 0;
        let start = Instant::now();
        while sent < n {
            let burst = credits(sent, &arrivals).min(n - sent);
            if burst == 0 {
                back_off();
                continue;
            }
            for _ in 0..burst {
                tx.push(job);
            }
            sent += burst;
        }
        while arrivals.load(Acquire) < n {
            std::hint::spin_loop();
        }
        mops_per_sec(start, n as usize)
    });
    consumer.join().expect("consumer");
    producer.join().expect("producer")
}

// ---------------------------------------------------------------------------------------
// ping-pong round trip
// ---------------------------------------------------------------------------------------

fn ping_pong(bench: &mut Bench) {
    let n = count(200_000) as u64;
    // A parked worker takes tens of µs to wake: fewer round trips keep the run short
    // (the unit is per round trip).
    let n_parked = n / 20;
    let scenario = Scenario::lower_is_better(
        format!(
            "mesh ping-pong A→B→A, {} round trips (veloq-park: {})",
            human(n as usize),
            human(n_parked as usize)
        ),
        "ns",
    )
    .goal(Goal::cost_at_most("spsc-ring", 2.0));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_ping_pong_chained(n)),
            System::new("spsc-ring", || ring_ping_pong(n)),
            System::new("veloq-task", || veloq_ping_pong(None, n)),
            System::new("veloq-park", || {
                veloq_ping_pong(Some(Duration::ZERO), n_parked)
            }),
        ],
    );
}

/// What a pong updates on worker A: a reply count and the task waiting for it.
#[derive(Default)]
struct Replies {
    count: AtomicU64,
    waiter: Mutex<Option<Waker>>,
}

impl Replies {
    /// Resolves once `target` replies have arrived.
    async fn reach(&self, target: u64) {
        poll_fn(|cx| {
            if self.count.load(Acquire) >= target {
                return Poll::Ready(());
            }
            *self.waiter.lock().unwrap() = Some(cx.waker().clone());
            if self.count.load(Acquire) >= target {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The pong, run on A: counts the reply and wakes the waiting task, if any.
unsafe extern "C" fn pong(_cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is worker A's `Replies`, alive until the last reply.
    let replies = unsafe { &*(arg as *const Replies) };
    replies.count.fetch_add(1, Release);
    if let Some(waker) = replies.waiter.lock().unwrap().take() {
        waker.wake();
    }
    0
}

/// The ping, run on B: sends the pong back to worker A.
unsafe extern "C" fn ping(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: the runtime passes the context of the worker running the job.
    let cx = unsafe { &*cx };
    let pong = RawTask {
        func: pong,
        arg,
        cq: ptr::null(),
        user_data: 0,
    };
    // SAFETY: same argument, same promise as the ping's.
    if let Err(e) = unsafe { cx.spawn_raw(Placement::Worker(A), pong) } {
        eprintln!("pong refused: {e:?}");
        std::process::abort(); // cannot unwind out of an extern "C" callback
    }
    0
}

/// A ping job carrying `replies`.
fn ping_job(replies: &Replies) -> RawTask {
    RawTask {
        func: ping,
        arg: replies as *const Replies as *mut c_void,
        cq: ptr::null(),
        user_data: 0,
    }
}

/// The state of a chained ping-pong: replies to go, and the replies the waiting task
/// looks at once the last one is in.
struct Chain {
    left: AtomicU64,
    replies: Replies,
}

/// The chained pong, run on A: counts the reply and, while round trips are left, sends
/// the next ping straight from the callback (as the ring's pinger does).
unsafe extern "C" fn chained_pong(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the `Chain` on worker A's stack, alive until the last reply; the
    // runtime passes the context of the worker running the job.
    let (chain, cx) = unsafe { (&*(arg as *const Chain), &*cx) };
    if chain.left.fetch_sub(1, Release) > 1 {
        send_chained_ping(cx, arg);
    } else {
        // SAFETY: `pong` takes the Replies, alive as long as the Chain.
        unsafe {
            pong(
                ptr::null_mut(),
                &chain.replies as *const Replies as *mut c_void,
            )
        };
    }
    0
}

/// The chained ping, run on B: sends the chained pong back to A.
unsafe extern "C" fn chained_ping(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: the runtime passes the context of the worker running the job.
    let cx = unsafe { &*cx };
    let job = RawTask {
        func: chained_pong,
        arg,
        cq: ptr::null(),
        user_data: 0,
    };
    // SAFETY: `arg` is the Chain, alive until the last reply.
    if unsafe { cx.spawn_raw(Placement::Worker(A), job) }.is_err() {
        std::process::abort(); // cannot unwind out of an extern "C" callback
    }
    0
}

fn send_chained_ping(cx: &RuntimeContext, chain: *mut c_void) {
    let job = RawTask {
        func: chained_ping,
        arg: chain,
        cq: ptr::null(),
        user_data: 0,
    };
    // SAFETY: `chain` is the Chain, alive until the last reply.
    if unsafe { cx.spawn_raw(Placement::Worker(B), job) }.is_err() {
        std::process::abort(); // cannot unwind out of an extern "C" callback
    }
}

/// The mesh round trip itself, as the ring measures it: worker A sends a ping to B, B's
/// callback sends a pong back, and A's pong callback sends the next ping; a task on A
/// waits only for the last of `n` replies.
fn veloq_ping_pong_chained(n: u64) -> f64 {
    let rt = two_worker_runtime(None);
    let root = rt
        .spawn_local_to(A, move || async move {
            let chain = Box::new(Chain {
                left: AtomicU64::new(n),
                replies: Replies::default(),
            });
            let arg = &*chain as *const Chain as *mut c_void;
            let start = Instant::now();
            RuntimeContext::with_current(|cx| send_chained_ping(cx.expect("on A"), arg));
            chain.replies.reach(1).await;
            ns_per_op(start, n as usize)
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// A task on worker A sends a ping to B and awaits the pong, `n` times ("veloq-task":
/// the round trip plus waking and polling a task each time).
fn veloq_ping_pong(spin: Option<Duration>, n: u64) -> f64 {
    let rt = two_worker_runtime(spin);
    let root = rt
        .spawn_local_to(A, move || async move {
            let replies = Replies::default();
            let ping = ping_job(&replies);
            let start = Instant::now();
            for i in 1..=n {
                send_over_mesh(B, ping, 1);
                replies.reach(i).await;
            }
            ns_per_op(start, n as usize)
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// The same over two bare rings: A pushes a ping, spins for the pong and runs it; B
/// spins for the ping and pushes the matching pong back.
fn ring_ping_pong(n: u64) -> f64 {
    let (mut ping_tx, mut ping_rx) = spsc_ring::channel::<RawTask>(CAPACITY);
    let (mut pong_tx, mut pong_rx) = spsc_ring::channel::<RawTask>(CAPACITY);
    let (core_a, core_b) = cores_a_b();
    let ready = Arc::new(Barrier::new(2));
    let echo = {
        let ready = ready.clone();
        thread::spawn(move || {
            core_affinity::set_for_current(core_b);
            ready.wait();
            for _ in 0..n {
                let ping = ping_rx.pop();
                pong_tx.push(RawTask { func: pong, ..ping });
            }
        })
    };
    let pinger = thread::spawn(move || {
        core_affinity::set_for_current(core_a);
        let replies = Replies::default();
        let ping = ping_job(&replies);
        ready.wait();
        let start = Instant::now();
        for _ in 0..n {
            ping_tx.push(ping);
            let pong = pong_rx.pop();
            // SAFETY: `replies` is alive for the whole loop.
            unsafe { (pong.func)(ptr::null_mut(), pong.arg) };
        }
        ns_per_op(start, n as usize)
    });
    echo.join().expect("echo");
    pinger.join().expect("pinger")
}
