//! Memory: heap bytes per pending local task, and the mesh at 64 workers.
//!
//! Both use the counting global allocator (`harness::alloc`): net heap growth of the
//! whole process while a counting window is open.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::future::{poll_fn, Future};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use veloq::{Placement, RawTask, RuntimeBuilder, RuntimeContext};

use crate::common::{human, tokio_current_thread, veloq_builder, veloq_runtime, wait_until, MIB};
use crate::harness::alloc::Window;
use crate::harness::{count, Bench, Goal, Scenario, System};

pub fn all(bench: &mut Bench) {
    per_pending_task(bench);
    mesh_at_64_workers(bench);
}

// ---------------------------------------------------------------------------------------
// bytes per pending local task
// ---------------------------------------------------------------------------------------

fn per_pending_task(bench: &mut Bench) {
    let n = count(100_000);
    let scenario = Scenario::lower_is_better(
        format!("memory per pending local task ({} pending)", human(n)),
        "bytes/task",
    )
    .goal(Goal::within("tokio-localset"));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_pending_task_bytes(n)),
            System::new("tokio-localset", || tokio_pending_task_bytes(n)),
        ],
    );
}

/// `n` tasks spawned with `veloq::spawn_local` on the only worker, all parked at a gate.
fn veloq_pending_task_bytes(n: usize) -> f64 {
    let rt = veloq_runtime(1);
    let root = rt
        .spawn_local_to(0, move || {
            pending_task_bytes(
                n,
                |gate| drop(veloq::spawn_local(gate.pass()).expect("spawn_local")),
                veloq::yield_now,
            )
        })
        .expect("spawn root");
    rt.block_on(root).expect("root task")
}

/// `n` tasks spawned with `tokio::task::spawn_local` in a `LocalSet`, all parked at a gate.
fn tokio_pending_task_bytes(n: usize) -> f64 {
    let rt = tokio_current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &rt,
        pending_task_bytes(
            n,
            |gate| drop(tokio::task::spawn_local(gate.pass())),
            tokio::task::yield_now,
        ),
    )
}

/// Spawns `n` detached tasks that each wait at one shared gate, lets them all reach it,
/// and returns the net heap growth per task while they are all pending; then opens the
/// gate and waits until every task has finished. `spawn` and `yield_now` are the
/// runtime's own.
async fn pending_task_bytes<Y: Future<Output = ()>>(
    n: usize,
    spawn: impl Fn(Rc<Gate>),
    yield_now: impl Fn() -> Y,
) -> f64 {
    let gate = Rc::new(Gate::with_capacity(n));
    let window = Window::open();
    for _ in 0..n {
        spawn(gate.clone());
    }
    while gate.waiting.get() < n {
        yield_now().await;
    }
    let bytes = window.net_bytes();
    drop(window);
    gate.open();
    while gate.passed.get() < n {
        yield_now().await;
    }
    bytes as f64 / n as f64
}

/// A one-shot barrier for tasks on one thread. Its waker list is allocated up front, so
/// waiting at it allocates nothing.
struct Gate {
    open: Cell<bool>,
    waiting: Cell<usize>,
    passed: Cell<usize>,
    wakers: RefCell<Vec<Waker>>,
}

impl Gate {
    fn with_capacity(n: usize) -> Gate {
        Gate {
            open: Cell::new(false),
            waiting: Cell::new(0),
            passed: Cell::new(0),
            wakers: RefCell::new(Vec::with_capacity(n)),
        }
    }

    /// What each pending task runs: wait until the gate opens, then count itself through.
    async fn pass(self: Rc<Self>) {
        let mut registered = false;
        poll_fn(|cx| {
            if self.open.get() {
                return Poll::Ready(());
            }
            if !registered {
                registered = true;
                self.waiting.set(self.waiting.get() + 1);
                self.wakers.borrow_mut().push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        self.passed.set(self.passed.get() + 1);
    }

    fn open(&self) {
        self.open.set(true);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

// ---------------------------------------------------------------------------------------
// mesh memory at 64 workers
// ---------------------------------------------------------------------------------------

const MESH_WORKERS: usize = 64;
const MESH_BUDGET_MIB: f64 = 64.0;

fn mesh_at_64_workers(bench: &mut Bench) {
    let capacity = RuntimeBuilder::DEFAULT_MESH_CAPACITY;
    let scenario = Scenario::lower_is_better(
        format!("mesh memory, {MESH_WORKERS} workers, every channel used (heap growth)"),
        "MiB",
    )
    .goal(Goal::within("budget"));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || veloq_mesh_heap_growth_mib(MESH_WORKERS)),
            System::new("budget", || MESH_BUDGET_MIB),
        ],
    );
    let scenario = Scenario::lower_is_better(
        format!(
            "mesh memory, {MESH_WORKERS} workers, Runtime::mesh_memory_bytes({MESH_WORKERS}, {capacity})"
        ),
        "MiB",
    )
    .goal(Goal::within("budget"));
    bench.run(
        scenario,
        vec![
            System::new("veloq", || {
                veloq::Runtime::mesh_memory_bytes(MESH_WORKERS, capacity) as f64 / MIB
            }),
            System::new("budget", || MESH_BUDGET_MIB),
        ],
    );
}

/// Counts one arrival (the all-to-all messages).
unsafe extern "C" fn count_arrival(_cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the counter the host keeps alive until every message arrived.
    unsafe { &*(arg as *const AtomicU64) }.fetch_add(1, Release);
    0
}

/// Starts a runtime of `workers` workers (not pinned, parking at once: 64 threads on a
/// small machine), then has every worker send one job to every other worker, so every
/// mesh channel gets made, and returns the heap growth of that traffic in MiB. The
/// runtime's own `mesh_memory()` is printed next to it as a cross-check.
fn veloq_mesh_heap_growth_mib(workers: usize) -> f64 {
    let rt = veloq_builder(workers)
        .pin_workers(false)
        .spin_before_park(Duration::ZERO)
        .build()
        .expect("veloq runtime");
    let arrivals = Arc::new(AtomicU64::new(0));
    let expected = (workers * (workers - 1)) as u64;
    let window = Window::open();
    for from in 0..workers {
        let arrivals = arrivals.clone();
        let sender = async move {
            let job = RawTask {
                func: count_arrival,
                arg: Arc::as_ptr(&arrivals) as *mut c_void,
                cq: ptr::null(),
                user_data: 0,
            };
            RuntimeContext::with_current(|cx| {
                let cx = cx.expect("called on a worker");
                for to in (0..workers).filter(|&to| to != from) {
                    // SAFETY: the host keeps the counter alive until every job has run.
                    unsafe { cx.spawn_raw(Placement::Worker(to), job) }.expect("spawn_raw");
                }
            });
        };
        drop(rt.spawn_to(from, sender).expect("spawn sender"));
    }
    wait_until(|| arrivals.load(Acquire) == expected);
    let grown = window.net_bytes() as f64 / MIB;
    drop(window);
    eprintln!(
        "      (heap growth {grown:.2} MiB; runtime reports mesh_memory() = {:.2} MiB)",
        rt.mesh_memory() as f64 / MIB
    );
    grown
}
