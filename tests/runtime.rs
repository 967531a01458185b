//! The runtime core's promises, one test each (issue: runtime core).
// Cloning a waker only to wake it is what some tests exercise on purpose.
#![allow(clippy::waker_clone_wake)]

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use veloq::{
    JoinError, Placement, RawTask, Runtime, RuntimeContext, ShutdownError, SpawnErrorKind,
};

fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

/// Records that task `id` ran; a second run is caught by `assert_each_ran_once`.
struct Ledger(Vec<AtomicU8>);

impl Ledger {
    fn new(n: usize) -> Arc<Ledger> {
        Arc::new(Ledger((0..n).map(|_| AtomicU8::new(0)).collect()))
    }
    fn ran(&self, id: usize) {
        self.0[id].fetch_add(1, SeqCst);
    }
    fn assert_each_ran_once(&self) {
        let bad: Vec<_> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(SeqCst) != 1)
            .map(|(i, c)| (i, c.load(SeqCst)))
            .take(10)
            .collect();
        assert!(
            bad.is_empty(),
            "tasks not run exactly once (id, runs): {bad:?}"
        );
    }
}

/// Blocks the worker it runs on until `release` is set (a stand-in for a long job).
fn hold_worker(release: &Arc<AtomicBool>) -> impl Future<Output = ()> + Send + 'static {
    let release = release.clone();
    async move {
        while !release.load(SeqCst) {
            std::thread::yield_now();
        }
    }
}

unsafe extern "C" fn raw_mark(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: arg is a leaked Box<(Arc<Ledger>, usize)> made by the test.
    let job = unsafe { Box::from_raw(arg as *mut (Arc<Ledger>, usize)) };
    job.0.ran(job.1);
    0
}

fn raw_job(ledger: &Arc<Ledger>, id: usize) -> RawTask {
    RawTask {
        func: raw_mark,
        arg: Box::into_raw(Box::new((ledger.clone(), id))) as *mut c_void,
        cq: std::ptr::null(),
        user_data: id as u64,
    }
}

#[test]
fn a_million_tasks_through_every_spawn_kind_each_run_exactly_once() {
    const TOTAL: usize = 1_000_000;
    const OUTSIDE_THREADS: usize = 4;
    const OUTSIDE_SHARE: usize = TOTAL / 2 / OUTSIDE_THREADS;
    const WORKER_SHARE: usize = TOTAL / 2 / 2;
    let rt = runtime(2);
    let ledger = Ledger::new(TOTAL);

    // Half from two worker roots: spawn_local, spawn, spawn_balanced, spawn_to in turn.
    let roots: Vec<_> = (0..2)
        .map(|w| {
            let ledger = ledger.clone();
            rt.spawn_local_to(w, move || async move {
                let base = w * WORKER_SHARE;
                for k in 0..WORKER_SHARE {
                    let id = base + k;
                    let l = ledger.clone();
                    let job = async move { l.ran(id) };
                    match k % 4 {
                        0 => drop(veloq::spawn_local(job).unwrap()),
                        1 => drop(veloq::spawn(job).unwrap()),
                        2 => drop(veloq::spawn_balanced(job).unwrap()),
                        _ => drop(veloq::spawn_to(1 - w, job).unwrap()),
                    }
                    if k % 1024 == 0 {
                        veloq::yield_now().await;
                    }
                }
            })
            .unwrap()
        })
        .collect();

    // Half from four outside threads at once: spawn, spawn_balanced, spawn_to, raw.
    let start = Arc::new(Barrier::new(OUTSIDE_THREADS));
    std::thread::scope(|s| {
        for t in 0..OUTSIDE_THREADS {
            let (handle, ledger, start) = (rt.handle(), ledger.clone(), start.clone());
            s.spawn(move || {
                start.wait();
                let base = TOTAL / 2 + t * OUTSIDE_SHARE;
                for k in 0..OUTSIDE_SHARE {
                    let id = base + k;
                    let l = ledger.clone();
                    let job = async move { l.ran(id) };
                    match k % 4 {
                        0 => drop(handle.spawn(job).unwrap()),
                        1 => drop(handle.spawn_balanced(job).unwrap()),
                        2 => drop(handle.spawn_to(k % 2, job).unwrap()),
                        // SAFETY: raw_mark takes the boxed argument made by raw_job.
                        _ => unsafe { handle.spawn_raw(Placement::Balanced, raw_job(&ledger, id)) }
                            .unwrap(),
                    }
                }
            });
        }
    });
    for root in roots {
        rt.block_on(root).unwrap();
    }
    rt.shutdown(None).expect("drains");
    ledger.assert_each_ran_once();
    for (i, s) in rt.stats().iter().enumerate() {
        assert_eq!(s.load, 0, "worker {i}'s load counter drifted: {s:?}");
    }
}

#[test]
fn p2c_sends_balanced_work_to_the_idle_worker_when_the_other_is_loaded() {
    // A mesh channel well above the 100 tasks the check allows (past its capacity, work
    // overflows into worker 0's injector, stealable, which would hide a wrong choice), and
    // no stall flag (which makes P2C avoid worker 0 whatever the loads say).
    let rt = Runtime::builder()
        .workers(2)
        .mesh_capacity(1024)
        .stall_threshold(Duration::from_secs(600))
        .build()
        .expect("runtime");
    let release = Arc::new(AtomicBool::new(false));
    // Worker 0 is busy with a long job.
    let busy = rt.spawn_to(0, hold_worker(&release)).unwrap();
    let ran_on = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = ran_on.clone();
    let root = rt
        .spawn_local_to(1, move || async move {
            let handles: Vec<_> = (0..1000)
                .map(|_| {
                    let c = counts.clone();
                    veloq::spawn_balanced(async move {
                        c[veloq::worker_index().unwrap()].fetch_add(1, SeqCst);
                    })
                    .unwrap()
                })
                .collect();
            handles
        })
        .unwrap();
    let handles = rt.block_on(root).unwrap();
    // Worker 0 stays stuck until the idle worker has run 900 of the tasks. It could steal
    // the ones kept on worker 1 once released, so where they ran says nothing after that.
    // That many can run on worker 1 only if P2C committed at most 100 to worker 0's mesh
    // channel, which nobody else may take from. The deadline is for the failure only.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ran_on[1].load(SeqCst) < 900 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let on1_while_stuck = ran_on[1].load(SeqCst);
    release.store(true, SeqCst);
    rt.block_on(busy).unwrap();
    for h in handles {
        rt.block_on(h).unwrap();
    }
    let (on0, on1) = (ran_on[0].load(SeqCst), ran_on[1].load(SeqCst));
    assert_eq!(on0 + on1, 1000);
    assert!(
        on1_while_stuck >= 900,
        "P2C should avoid the loaded worker: {on1_while_stuck} of 1000 ran on the idle one \
         while the other was stuck ({on0} on the loaded one in the end)"
    );
}

#[test]
fn a_burst_of_balanced_spawns_from_one_job_reaches_the_idle_worker() {
    // One job on worker 0 spawns a burst. P2C sends the first task or two to worker 1 over
    // the mesh and keeps the rest on worker 0, where they must be stealable, and worker 1
    // is woken to steal. A task on worker 0 waits until worker 1 has run 10. Worker 1 can
    // reach that only by stealing from worker 0, which sits in that wait. A task on worker
    // 1 waits until worker 0 has run one, so worker 1 is busy, not taking more from the
    // mesh, until the burst is spawned. The deadline is for the failure only (before
    // this, the burst stayed in worker 0's local queue and nothing was stolen).
    let rt = runtime(2);
    let ran_on = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counts = ran_on.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let root = rt
        .spawn_to(0, async move {
            let handles: Vec<_> = (0..1000)
                .map(|_| {
                    let c = counts.clone();
                    veloq::spawn_balanced(async move {
                        let me = veloq::worker_index().unwrap();
                        c[me].fetch_add(1, SeqCst);
                        let (other, enough) = if me == 0 { (1, 10) } else { (0, 1) };
                        while c[other].load(SeqCst) < enough && std::time::Instant::now() < deadline
                        {
                            std::thread::yield_now();
                        }
                    })
                    .unwrap()
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        })
        .unwrap();
    rt.block_on(root).unwrap();
    rt.shutdown(None).unwrap();
    let (on0, on1) = (ran_on[0].load(SeqCst), ran_on[1].load(SeqCst));
    let stats = rt.stats();
    assert_eq!(on0 + on1, 1000);
    assert!(
        on1 >= 10 && stats[1].tasks_stolen > 0,
        "a balanced burst stayed on worker 0: {on0} ran there, {on1} on worker 1; {stats:?}"
    );
}

#[test]
fn an_idle_worker_steals_from_a_long_stealable_queue() {
    let rt = runtime(2);
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let root = rt
        .spawn_local_to(0, move || async move {
            for _ in 0..2000 {
                let d = d.clone();
                drop(
                    veloq::spawn(async move {
                        let until = std::time::Instant::now() + Duration::from_micros(20);
                        while std::time::Instant::now() < until {}
                        d.fetch_add(1, SeqCst);
                    })
                    .unwrap(),
                );
            }
        })
        .unwrap();
    rt.block_on(root).unwrap();
    rt.shutdown(None).unwrap();
    assert_eq!(done.load(SeqCst), 2000);
    let stats = rt.stats();
    assert!(stats[1].steals > 0, "worker 1 never stole: {stats:?}");
    assert!(stats[1].tasks_stolen > 0, "{stats:?}");
}

#[test]
fn spawn_to_and_spawn_local_tasks_never_move() {
    let rt = runtime(2);
    let release = Arc::new(AtomicBool::new(false));
    let busy = rt.spawn_to(0, hold_worker(&release)).unwrap();
    // Pinned work queued behind a busy worker must wait for it, not be stolen.
    let pinned: Vec<_> = (0..500)
        .map(|_| rt.spawn_to(0, async { veloq::worker_index() }).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    release.store(true, SeqCst);
    rt.block_on(busy).unwrap();
    for h in pinned {
        assert_eq!(rt.block_on(h).unwrap(), Some(0));
    }
    // A local task keeps its worker across many yields.
    let root = rt
        .spawn_local_to(1, || async {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    veloq::spawn_local(async {
                        let first = veloq::worker_index();
                        for _ in 0..20 {
                            veloq::yield_now().await;
                            assert_eq!(veloq::worker_index(), first);
                        }
                        first
                    })
                    .unwrap()
                })
                .collect();
            let mut seen = Vec::new();
            for h in handles {
                seen.push(h.await.unwrap());
            }
            seen
        })
        .unwrap();
    assert!(rt.block_on(root).unwrap().iter().all(|w| *w == Some(1)));
}

/// A future that hands its waker to whoever asks and finishes when woken `wakes` times.
struct WakeSlot {
    waker: Mutex<Option<Waker>>,
    polls: AtomicUsize,
}

struct WaitForWakes {
    slot: Arc<WakeSlot>,
    wakes: usize,
}

impl Future for WaitForWakes {
    type Output = usize;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let polls = self.slot.polls.fetch_add(1, SeqCst) + 1;
        if polls > self.wakes {
            return Poll::Ready(polls);
        }
        *self.slot.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn a_local_task_is_woken_from_another_thread() {
    let rt = runtime(1);
    let slot = Arc::new(WakeSlot {
        waker: Mutex::new(None),
        polls: AtomicUsize::new(0),
    });
    let s = slot.clone();
    let task = rt
        .spawn_local_to(0, move || {
            // A !Send local task that waits for three wakes from a foreign thread.
            let not_send = Rc::new(());
            async move {
                let polls = WaitForWakes { slot: s, wakes: 3 }.await;
                drop(not_send);
                polls
            }
        })
        .unwrap();
    let waker_thread = std::thread::spawn(move || {
        let mut kinds = 0;
        while kinds < 3 {
            let polls_before = slot.polls.load(SeqCst);
            let Some(waker) = slot.waker.lock().unwrap().take() else {
                std::thread::yield_now();
                continue;
            };
            // Clone and drop on this thread too, then wake in all three ways.
            let extra = waker.clone();
            match kinds {
                0 => waker.wake(),
                1 => {
                    waker.wake_by_ref();
                    drop(waker);
                }
                _ => extra.clone().wake(),
            }
            drop(extra);
            while slot.polls.load(SeqCst) == polls_before {
                std::thread::yield_now();
            }
            kinds += 1;
        }
    });
    assert_eq!(rt.block_on(task).unwrap(), 4);
    waker_thread.join().unwrap();
}

#[test]
fn wakes_after_the_task_finished_or_the_runtime_is_gone_are_harmless() {
    let rt = runtime(1);
    let slot = Arc::new(WakeSlot {
        waker: Mutex::new(None),
        polls: AtomicUsize::new(0),
    });
    let s = slot.clone();
    let task = rt
        .spawn_local_to(0, move || WaitForWakes { slot: s, wakes: 1 })
        .unwrap();
    while slot.waker.lock().unwrap().is_none() {
        std::thread::yield_now();
    }
    let kept = slot.waker.lock().unwrap().clone().unwrap();
    slot.waker.lock().unwrap().take().unwrap().wake();
    assert_eq!(rt.block_on(task).unwrap(), 2);
    kept.wake_by_ref(); // finished task: ignored
    drop(rt); // workers gone
    kept.wake_by_ref();
    let again = kept.clone();
    again.wake();
    drop(kept); // the last reference frees the task on this thread
}

#[test]
fn a_task_woken_many_times_while_queued_runs_once_per_wake_cycle() {
    let rt = runtime(1);
    let root = rt
        .spawn_local_to(0, || async {
            let slot = Arc::new(WakeSlot {
                waker: Mutex::new(None),
                polls: AtomicUsize::new(0),
            });
            let waiter = veloq::spawn_local(WaitForWakes {
                slot: slot.clone(),
                wakes: 1,
            })
            .unwrap();
            veloq::yield_now().await; // let the waiter park its waker
            let waker = slot.waker.lock().unwrap().clone().unwrap();
            for _ in 0..100 {
                waker.wake_by_ref();
            }
            for _ in 0..10 {
                waker.clone().wake();
            }
            let polls = waiter.await.unwrap();
            (polls, slot.polls.load(SeqCst))
        })
        .unwrap();
    let (polls_seen, polls_total) = rt.block_on(root).unwrap();
    assert_eq!(polls_seen, 2, "110 wakes while queued must cause one poll");
    assert_eq!(polls_total, 2);
}

#[test]
fn a_panicking_task_yields_panicked_and_its_worker_keeps_running() {
    let rt = runtime(1);
    let bad = rt.spawn(async { panic!("boom") }).unwrap();
    match rt.block_on(bad) {
        Err(JoinError::Panicked(p)) => assert_eq!(p.downcast_ref::<&str>(), Some(&"boom")),
        other => panic!("expected Panicked, got {other:?}"),
    }
    let local = rt
        .spawn_local_to(0, || async {
            let h = veloq::spawn_local(async { panic!("local boom") }).unwrap();
            let r: Result<(), JoinError> = h.await;
            r.unwrap_err().is_panic()
        })
        .unwrap();
    assert!(rt.block_on(local).unwrap());
    assert_eq!(rt.block_on(rt.spawn(async { 7 }).unwrap()).unwrap(), 7);
}

/// Notes on which thread it was dropped.
struct DropProbe(Arc<Mutex<Vec<String>>>);
impl Drop for DropProbe {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.0.lock().unwrap().push(name);
    }
}

#[test]
fn abort_cancels_a_task_and_drops_its_future_on_its_worker() {
    let rt = runtime(2);
    let drops = Arc::new(Mutex::new(Vec::new()));
    let probe = DropProbe(drops.clone());
    let h = rt
        .spawn_to(1, async move {
            let _p = probe;
            std::future::pending::<()>().await
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    h.abort();
    assert!(rt.block_on(h).unwrap_err().is_cancelled());
    assert_eq!(*drops.lock().unwrap(), vec!["veloq-w1".to_string()]);

    // Abort before the task was ever polled (its worker is busy).
    let release = Arc::new(AtomicBool::new(false));
    let busy = rt.spawn_to(0, hold_worker(&release)).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let queued = rt
        .spawn_to(0, async move { r.store(true, SeqCst) })
        .unwrap();
    queued.abort();
    release.store(true, SeqCst);
    rt.block_on(busy).unwrap();
    assert!(rt.block_on(queued).unwrap_err().is_cancelled());
    assert!(!ran.load(SeqCst), "an aborted task must not run");

    // A local task aborted through its LocalJoinHandle.
    let local = rt
        .spawn_local_to(0, || async {
            let h = veloq::spawn_local(std::future::pending::<()>()).unwrap();
            veloq::yield_now().await;
            h.abort();
            h.await.unwrap_err().is_cancelled()
        })
        .unwrap();
    assert!(rt.block_on(local).unwrap());
}

#[test]
fn shutdown_runs_accepted_work_and_cancels_what_is_still_pending_at_the_limit() {
    let rt = runtime(2);
    let drops = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut pending = Vec::new();
    for i in 0..10 {
        let probe = DropProbe(drops.clone());
        pending.push(
            rt.spawn_to(i % 2, async move {
                let _p = probe;
                std::future::pending::<()>().await
            })
            .unwrap(),
        );
    }
    let quick: Vec<_> = (0..1000)
        .map(|_| {
            let f = finished.clone();
            rt.spawn(async move {
                veloq::yield_now().await;
                f.fetch_add(1, SeqCst);
            })
            .unwrap()
        })
        .collect();
    assert_eq!(
        rt.shutdown(Some(Duration::from_millis(50))),
        Err(ShutdownError::TimedOut)
    );
    assert_eq!(rt.shutdown(None), Ok(()));
    assert_eq!(
        finished.load(SeqCst),
        1000,
        "accepted tasks ran before the limit"
    );
    for h in quick {
        rt.block_on(h).unwrap();
    }
    for h in pending {
        assert!(rt.block_on(h).unwrap_err().is_cancelled());
    }
    let drops = drops.lock().unwrap();
    assert_eq!(drops.len(), 10);
    assert!(
        drops.iter().all(|t| t.starts_with("veloq-w")),
        "dropped on their workers: {drops:?}"
    );
    // After shutdown every spawn is refused and the future comes back.
    let err = rt.spawn(async { 1 }).unwrap_err();
    assert_eq!(err.kind(), SpawnErrorKind::Shutdown);
    let _future_back = err.into_inner();
}

#[test]
fn shutdown_while_outside_threads_keep_spawning_loses_nothing() {
    let rt = runtime(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Barrier::new(5));
    std::thread::scope(|s| {
        for t in 0..4 {
            let (h, ran, accepted, refused, started) = (
                rt.handle(),
                ran.clone(),
                accepted.clone(),
                refused.clone(),
                started.clone(),
            );
            s.spawn(move || {
                started.wait();
                loop {
                    let r = ran.clone();
                    let job = async move {
                        r.fetch_add(1, SeqCst);
                    };
                    let result = match t {
                        0 => h.spawn(job).map(drop),
                        1 => h.spawn_balanced(job).map(drop),
                        _ => h.spawn_to(t % 2, job).map(drop),
                    };
                    match result {
                        Ok(()) => accepted.fetch_add(1, SeqCst),
                        Err(e) => {
                            assert_eq!(e.kind(), SpawnErrorKind::Shutdown);
                            refused.fetch_add(1, SeqCst);
                            break;
                        }
                    };
                }
            });
        }
        started.wait();
        std::thread::sleep(Duration::from_millis(30));
        rt.shutdown(None).unwrap();
    });
    assert_eq!(refused.load(SeqCst), 4);
    assert!(accepted.load(SeqCst) > 0);
    assert_eq!(
        ran.load(SeqCst),
        accepted.load(SeqCst),
        "every accepted spawn ran exactly once"
    );
}

#[test]
fn shutdown_from_a_worker_is_refused() {
    let rt = Arc::new(runtime(1));
    let r = rt.clone();
    let h = rt.spawn(async move { r.shutdown(None) }).unwrap();
    assert_eq!(rt.block_on(h).unwrap(), Err(ShutdownError::FromWorker));
    assert_eq!(rt.shutdown(None), Ok(()));
}

#[test]
fn neither_a_mesh_flood_nor_busy_local_tasks_starve_the_other() {
    const FLOOD: usize = 200_000;
    let rt = runtime(2);
    let mesh_done = Arc::new(AtomicUsize::new(0));
    let local_turns = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // On worker 1: a local task that is always ready.
    let (lt, st) = (local_turns.clone(), stop.clone());
    let spinner = rt
        .spawn_local_to(1, move || async move {
            while !st.load(SeqCst) {
                lt.fetch_add(1, SeqCst);
                veloq::yield_now().await;
            }
        })
        .unwrap();
    // From worker 0: a flood of mesh tasks into worker 1. While it lasts, sample how far
    // the local task got each time another tenth of the flood has been handled.
    let md = mesh_done.clone();
    let lt = local_turns.clone();
    let flooder = rt
        .spawn_local_to(0, move || async move {
            let mut samples = Vec::new();
            for k in 0..FLOOD {
                let counter = md.clone();
                drop(veloq::spawn_to(1, async move {
                    counter.fetch_add(1, SeqCst);
                }));
                if k % 256 == 0 {
                    veloq::yield_now().await;
                }
                if k % (FLOOD / 10) == 0 {
                    samples.push((md.load(SeqCst), lt.load(SeqCst)));
                }
            }
            samples
        })
        .unwrap();
    let samples = rt.block_on(flooder).unwrap();
    while mesh_done.load(SeqCst) < FLOOD {
        std::thread::yield_now();
    }
    stop.store(true, SeqCst);
    rt.block_on(spinner).unwrap();
    // Both counters grew across the flood: neither kind of work was starved.
    let first = samples[1];
    let last = *samples.last().unwrap();
    assert!(last.0 > first.0, "mesh tasks made no progress: {samples:?}");
    assert!(
        last.1 > first.1,
        "the local task made no progress during the flood: {samples:?}"
    );
}

#[test]
fn sixty_four_workers_of_mesh_cost_at_most_64_mib() {
    let bytes = Runtime::mesh_memory_bytes(64, veloq::RuntimeBuilder::DEFAULT_MESH_CAPACITY);
    assert!(bytes <= 64 << 20, "{bytes} bytes");
    let rt = runtime(4);
    let before = rt.mesh_memory();
    let root = rt
        .spawn_local_to(0, || async { veloq::spawn_to(1, async {}).unwrap().await })
        .unwrap();
    rt.block_on(root).unwrap().unwrap();
    assert!(
        rt.mesh_memory() > before,
        "the 0→1 channel is made on first use"
    );
    assert!(
        rt.mesh_memory()
            < Runtime::mesh_memory_bytes(4, veloq::RuntimeBuilder::DEFAULT_MESH_CAPACITY)
    );
}

#[test]
fn a_full_mesh_channel_overflows_without_losing_or_moving_pinned_tasks() {
    let rt = Runtime::builder()
        .workers(2)
        .mesh_capacity(4)
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let busy = rt.spawn_to(1, hold_worker(&release)).unwrap();
    let root = rt
        .spawn_local_to(0, || async {
            (0..1000)
                .map(|i| veloq::spawn_to(1, async move { (i, veloq::worker_index()) }).unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let handles = rt.block_on(root).unwrap();
    release.store(true, SeqCst);
    rt.block_on(busy).unwrap();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(rt.block_on(h).unwrap(), (i, Some(1)));
    }
}

#[test]
fn bad_builder_settings_are_refused_with_invalid_input() {
    for b in [
        Runtime::builder().workers(100_000),
        Runtime::builder().mesh_capacity(0),
        Runtime::builder().budget(0),
        Runtime::builder().ring_entries(0),
        Runtime::builder().ring_entries(1 << 20),
    ] {
        assert_eq!(
            b.build().unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
}

#[test]
fn spawn_off_a_runtime_and_to_a_missing_worker_are_refused() {
    assert_eq!(
        veloq::spawn(async {}).unwrap_err().kind(),
        SpawnErrorKind::NoRuntime
    );
    assert_eq!(
        veloq::spawn_local(async {}).unwrap_err().kind(),
        SpawnErrorKind::NoRuntime
    );
    let rt = runtime(2);
    assert_eq!(
        rt.spawn_to(2, async {}).unwrap_err().kind(),
        SpawnErrorKind::InvalidWorker
    );
    // Inside block_on the free functions reach the runtime.
    let v = rt.block_on(async { veloq::spawn(async { 5 }).unwrap().await.unwrap() });
    assert_eq!(v, 5);
}

#[test]
fn dropping_a_join_handle_detaches_the_task() {
    let rt = runtime(1);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    drop(rt.spawn(async move {
        veloq::yield_now().await;
        r.store(true, SeqCst)
    }));
    rt.shutdown(None).unwrap();
    assert!(ran.load(SeqCst));
}

#[test]
fn foreign_clones_racing_the_owners_last_release_never_free_early() {
    // A waker shared through a mutex: another thread clones and wakes it by reference
    // while the owner side takes it out and drops it after the task finished.
    let rt = runtime(1);
    for _ in 0..200 {
        let shared: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let foreign = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let copy = shared.lock().unwrap().as_ref().map(Waker::clone);
                    if let Some(w) = copy {
                        w.wake_by_ref();
                        drop(w);
                    }
                }
            })
        };
        let s = shared.clone();
        let task = rt
            .spawn_local_to(0, move || async move {
                let slot = Arc::new(WakeSlot {
                    waker: Mutex::new(None),
                    polls: AtomicUsize::new(0),
                });
                let waiter = veloq::spawn_local(WaitForWakes {
                    slot: slot.clone(),
                    wakes: 1,
                })
                .unwrap();
                veloq::yield_now().await;
                let w = slot.waker.lock().unwrap().clone().unwrap();
                *s.lock().unwrap() = Some(w.clone());
                w.wake();
                waiter.await.unwrap();
                for _ in 0..10 {
                    veloq::yield_now().await;
                }
                // Owner side drops the last references while the thread keeps cloning.
                drop(slot);
                s.lock().unwrap().take()
            })
            .unwrap();
        let last = rt.block_on(task).unwrap();
        drop(last);
        stop.store(true, SeqCst);
        foreign.join().unwrap();
    }
}

#[test]
fn shutdown_while_workers_keep_spawning_on_each_other_loses_nothing() {
    // Every task tries to spawn a follow-up on the other worker (over the mesh, or
    // balanced) until shutdown refuses it: each accepted spawn must have run.
    fn relay(
        hops_left: u32,
        accepted: Arc<AtomicUsize>,
        ran: Arc<AtomicUsize>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            ran.fetch_add(1, SeqCst);
            if hops_left == 0 {
                return;
            }
            let me = veloq::worker_index().unwrap();
            let next = relay(hops_left - 1, accepted.clone(), ran.clone());
            let spawned = if hops_left % 2 == 0 {
                veloq::spawn_to(1 - me, next).map(drop)
            } else {
                veloq::spawn_balanced(next).map(drop)
            };
            if spawned.is_ok() {
                accepted.fetch_add(1, SeqCst);
            }
        })
    }
    for _ in 0..20 {
        let rt = runtime(2);
        let accepted = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..64 {
            rt.spawn(relay(u32::MAX, accepted.clone(), ran.clone()))
                .unwrap();
            accepted.fetch_add(1, SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
        rt.shutdown(None).unwrap();
        assert_eq!(ran.load(SeqCst), accepted.load(SeqCst));
    }
}

#[test]
fn shutdown_right_after_build_while_workers_still_spin_finishes() {
    // Workers that have not parked yet are not woken by a system call; they must still
    // notice shutdown before they go to sleep.
    for _ in 0..200 {
        let rt = runtime(2);
        assert_eq!(rt.shutdown(None), Ok(()));
    }
}

unsafe extern "C" fn raw_count(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: arg is an AtomicUsize the test keeps alive until shutdown returned.
    unsafe { &*(arg as *const AtomicUsize) }.fetch_add(1, SeqCst);
    0
}

#[test]
fn shutdown_after_a_burst_of_stealable_outside_work_finishes() {
    // Idle workers steal while shutdown drains; a victim that checked its counts while a
    // steal was moving them must still be told when they agree.
    for _ in 0..60 {
        let rt = runtime(2);
        let ran = AtomicUsize::new(0);
        let job = RawTask {
            func: raw_count,
            arg: &ran as *const AtomicUsize as *mut c_void,
            cq: std::ptr::null(),
            user_data: 0,
        };
        for _ in 0..20_000 {
            // SAFETY: raw_count only reads its counter, alive until shutdown returned.
            unsafe { rt.spawn_raw(Placement::Any, job) }.unwrap();
        }
        rt.shutdown(None).unwrap();
        assert_eq!(ran.load(SeqCst), 20_000);
    }
}

unsafe extern "C" fn raw_return_id(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    arg as usize as i64
}

#[test]
fn a_batch_runs_every_callback_once_and_posts_every_completion_once() {
    let rt = runtime(2);
    let cq = veloq::CompletionQueue::new(8).unwrap();
    const N: usize = 10_000;
    let tasks: Vec<RawTask> = (0..N)
        .map(|i| RawTask {
            func: raw_return_id,
            arg: i as *mut c_void,
            cq: &cq,
            user_data: i as u64,
        })
        .collect();
    for (k, chunk) in tasks.chunks(100).enumerate() {
        let placement = match k % 3 {
            0 => Placement::Balanced,
            1 => Placement::Any,
            _ => Placement::Worker(k % 2),
        };
        // SAFETY: raw_return_id touches nothing; `cq` outlives every completion.
        assert_eq!(unsafe { rt.spawn_raw_batch(placement, chunk) }, Ok(100));
    }
    let mut seen = vec![0u8; N];
    let mut buf = [veloq::Cqe::default(); 64];
    let mut got = 0;
    while got < N {
        let n = cq
            .wait(&mut buf, 1, Some(Duration::from_secs(60)))
            .expect("completions lost");
        for e in &buf[..n] {
            assert_eq!(e.res, e.user_data as i64);
            seen[e.user_data as usize] += 1;
        }
        got += n;
    }
    assert!(seen.iter().all(|&s| s == 1));
    assert_eq!(cq.owed(), 0);
    // Each callback counts as one task spawned and one started (published per turn).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = rt.stats();
        let spawned: u64 = stats.iter().map(|s| s.tasks_spawned).sum();
        let started: u64 = stats
            .iter()
            .map(|s| {
                s.tasks_local + s.tasks_mesh + s.tasks_inbox + s.tasks_injector + s.tasks_stolen
            })
            .sum();
        assert_eq!(spawned, N as u64);
        if started == N as u64 || std::time::Instant::now() > deadline {
            assert_eq!(started, N as u64);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // An empty batch accepts nothing; a worker out of range is refused whole.
    // SAFETY: as above.
    assert_eq!(
        unsafe { rt.spawn_raw_batch(Placement::Balanced, &[]) },
        Ok(0)
    );
    assert_eq!(
        unsafe { rt.spawn_raw_batch(Placement::Worker(2), &tasks[..10]) },
        Err(SpawnErrorKind::InvalidWorker)
    );
    rt.shutdown(None).unwrap();
    assert_eq!(
        unsafe { rt.spawn_raw_batch(Placement::Balanced, &tasks[..10]) },
        Err(SpawnErrorKind::Shutdown)
    );
    assert_eq!(cq.owed(), 0, "a refused batch owes nothing");
}

#[test]
fn a_callback_waiting_on_its_own_workers_completion_is_not_left_waiting() {
    // Worker 0 runs `first` (completion gathered, not yet posted), then `waiter` in the
    // same turn, which waits for that completion: the wait posts the gathered run first.
    unsafe extern "C" fn waiter(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
        // SAFETY: arg is the test's queue, alive until the runtime shut down.
        let cq = unsafe { &*(arg as *const veloq::CompletionQueue) };
        let mut buf = [veloq::Cqe::default(); 1];
        match cq.wait(&mut buf, 1, Some(Duration::from_secs(60))) {
            Ok(1) => buf[0].user_data as i64,
            _ => -1,
        }
    }
    let rt = runtime(2);
    let inner = veloq::CompletionQueue::new(8).unwrap();
    let outer = veloq::CompletionQueue::new(8).unwrap();
    let tasks = [
        RawTask {
            func: raw_return_id,
            arg: std::ptr::null_mut(),
            cq: &inner,
            user_data: 7,
        },
        RawTask {
            func: waiter,
            arg: &inner as *const veloq::CompletionQueue as *mut c_void,
            cq: &outer,
            user_data: 8,
        },
    ];
    // SAFETY: both queues outlive the runtime's shutdown below.
    assert_eq!(
        unsafe { rt.spawn_raw_batch(Placement::Worker(0), &tasks) },
        Ok(2)
    );
    let mut buf = [veloq::Cqe::default(); 1];
    assert_eq!(
        outer
            .wait(&mut buf, 1, Some(Duration::from_secs(60)))
            .unwrap(),
        1
    );
    assert_eq!((buf[0].user_data, buf[0].res), (8, 7));
    rt.shutdown(None).unwrap();
}

/// The calling thread's scheduling policy.
fn policy() -> i32 {
    // SAFETY: plain system call on the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// Builds a 2-worker runtime, calling `sched_batch` with `setting` unless it is `None`
/// (the default), and returns (what each worker's task saw, what the stats say, what a
/// blocking job started by a worker saw).
fn policies_seen(setting: Option<bool>) -> (Vec<i32>, Vec<i32>, i32) {
    let mut builder = Runtime::builder()
        .workers(2)
        .stall_threshold(Duration::ZERO);
    if let Some(on) = setting {
        builder = builder.sched_batch(on);
    }
    let rt = builder.build().expect("runtime");
    let on_workers: Vec<i32> = (0..2)
        .map(|w| {
            rt.block_on(rt.spawn_to(w, async { policy() }).unwrap())
                .unwrap()
        })
        .collect();
    let stats = rt.stats().iter().map(|s| s.sched_policy).collect();
    let blocking = rt
        .block_on(
            rt.spawn(async { veloq::spawn_blocking(policy).unwrap().await.unwrap() })
                .unwrap(),
        )
        .unwrap();
    (on_workers, stats, blocking)
}

/// Runs `f` on a thread of its own under `policy` (priority 0).
fn under_policy<T: Send + 'static>(policy_: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: valid sched_param; the calling thread (pid 0) only.
        assert_eq!(unsafe { libc::sched_setscheduler(0, policy_, &param) }, 0);
        assert_eq!(policy(), policy_);
        f()
    })
    .join()
    .unwrap()
}

/// Builds from a thread under `builder` with `setting` (see `policies_seen`) and checks
/// that each worker (as it sees itself and in the stats) runs under `worker` and a
/// blocking job started by a worker under `blocking`.
fn assert_policies(builder: i32, setting: Option<bool>, worker: i32, blocking: i32) {
    let (workers, stats, seen_blocking) = under_policy(builder, move || policies_seen(setting));
    let case = format!("built under {builder}, sched_batch {setting:?}");
    assert_eq!(workers, vec![worker; 2], "{case}");
    assert_eq!(stats, vec![worker; 2], "{case}");
    assert_eq!(seen_blocking, blocking, "{case}");
}

#[test]
fn workers_run_under_sched_batch_by_default_and_blocking_threads_do_not() {
    for setting in [None, Some(true)] {
        // Blocking threads: the builder's policy.
        assert_policies(
            libc::SCHED_OTHER,
            setting,
            libc::SCHED_BATCH,
            libc::SCHED_OTHER,
        );
    }
}

#[test]
fn sched_batch_off_leaves_workers_under_the_default_policy() {
    assert_policies(
        libc::SCHED_OTHER,
        Some(false),
        libc::SCHED_OTHER,
        libc::SCHED_OTHER,
    );
}

#[test]
fn a_runtime_built_under_another_policy_keeps_it_on_its_workers() {
    // SCHED_BATCH stands for any policy but SCHED_OTHER (the rule is the same for
    // SCHED_IDLE and the real-time ones, which would starve or need privileges here);
    // asking for sched_batch or not changes nothing then.
    for setting in [None, Some(false)] {
        assert_policies(
            libc::SCHED_BATCH,
            setting,
            libc::SCHED_BATCH,
            libc::SCHED_BATCH,
        );
    }
}
