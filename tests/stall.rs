//! Stall detection, task names, statistics and the dump (issue #5, parts 3 and 4): one
//! test per promise. Every runtime has two workers: the stalled one and the one that
//! takes over. No test asserts a duration; waits are bounded only to fail instead of hang.

use std::ffi::c_void;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use veloq::{
    Placement, RawTask, Runtime, RuntimeContext, StallReport, TaskBuilder, TaskState, WorkerStats,
};

/// Long enough for any honest wait in these tests; reaching it means a lost promise.
const GIVE_UP: Duration = Duration::from_secs(5);

/// Two workers, a low stall threshold, no log noise; reports about worker `watched` are
/// sent to the returned channel (on a loaded machine the other worker may be descheduled
/// long enough to look stalled too; those reports are not what a test checks).
fn stall_runtime(watched: usize) -> (Runtime, mpsc::Receiver<StallReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let rt = Runtime::builder()
        .workers(2)
        .stall_threshold(Duration::from_millis(30))
        .stall_log(false)
        .on_stall(move |r| {
            if r.worker == watched {
                let _ = tx.lock().unwrap().send(r.clone());
            }
        })
        .build()
        .expect("runtime");
    (rt, rx)
}

/// Spins (holding its worker) until `done()` or GIVE_UP; returns whether `done()` came true.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > GIVE_UP {
            return false;
        }
        std::hint::spin_loop();
    }
    true
}

#[test]
fn a_spinning_named_task_is_reported_and_its_stealable_work_and_balanced_spawns_go_elsewhere() {
    let (rt, reports) = stall_runtime(0);
    const STEALABLE: usize = 8;
    let stolen_ran_on = Arc::new(Mutex::new(Vec::new()));
    let balanced_ran_on = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(AtomicBool::new(false));
    let (r, release2) = (stolen_ran_on.clone(), release.clone());
    let spinner = TaskBuilder::new()
        .name("spin")
        .placement(Placement::Worker(0))
        .spawn_on(&rt, async move {
            // Stealable work queued on this (soon stalled) worker's own injector.
            for _ in 0..STEALABLE {
                let r = r.clone();
                drop(veloq::spawn(async move {
                    r.lock().unwrap().push(veloq::worker_index().unwrap());
                }));
            }
            let stolen = spin_until(|| r.lock().unwrap().len() == STEALABLE);
            // Also hold on until the test has made its balanced spawns during the stall.
            let released = spin_until(|| release2.load(SeqCst));
            (stolen, released)
        })
        .unwrap();

    let report = reports.recv_timeout(GIVE_UP).expect("a stall report");
    assert_eq!(report.worker, 0);
    assert_eq!(report.task.as_deref(), Some("spin"));
    assert!(!report.ended);
    assert!(rt.stats()[0].stalled, "worker 0 is marked stalled");

    // Balanced spawns from this (outside) thread while worker 0 is stalled.
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let b = balanced_ran_on.clone();
            rt.spawn_balanced(async move {
                b.lock().unwrap().push(veloq::worker_index().unwrap());
            })
            .unwrap()
        })
        .collect();
    for h in handles {
        rt.block_on(h).unwrap();
    }
    release.store(true, SeqCst);
    let (stolen, released) = rt.block_on(spinner).unwrap();
    assert!(
        stolen,
        "the stealable jobs did not run while the spinner held worker 0"
    );
    assert!(released);
    assert_eq!(*stolen_ran_on.lock().unwrap(), vec![1; STEALABLE]);
    assert_eq!(*balanced_ran_on.lock().unwrap(), vec![1; 20]);

    let end = reports.recv_timeout(GIVE_UP).expect("the end of the stall");
    assert_eq!((end.worker, end.ended), (0, true));
    assert_eq!(end.task.as_deref(), Some("spin"));
    rt.shutdown(None).unwrap();
    let s = rt.stats();
    assert_eq!(s[0].stalls, 1, "{s:?}");
    assert!(!s[0].stalled);
    assert!(s[0].stalled_ns > 0);
}

unsafe extern "C" fn spin_raw(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: the test passes a live AtomicBool that outlives the runtime's work.
    let release = unsafe { &*(arg as *const AtomicBool) };
    spin_until(|| release.load(SeqCst)) as i64
}

#[test]
fn a_named_callback_is_reported_by_name_and_a_dump_during_the_stall_does_not_hang() {
    let (rt, reports) = stall_runtime(1);
    let release = Box::leak(Box::new(AtomicBool::new(false)));
    let task = RawTask {
        func: spin_raw,
        arg: release as *const AtomicBool as *mut c_void,
        cq: std::ptr::null(),
        user_data: 0,
    };
    // SAFETY: `release` is leaked, so valid on any thread for ever; no completion queue.
    unsafe {
        TaskBuilder::new()
            .name("busy callback")
            .placement(Placement::Worker(1))
            .spawn_raw(&rt, task)
    }
    .unwrap();
    let report = reports.recv_timeout(GIVE_UP).expect("a stall report");
    assert_eq!((report.worker, report.ended), (1, false));
    assert_eq!(report.task.as_deref(), Some("busy callback"));

    let dump = rt.dump();
    let w1 = &dump.workers[1];
    assert!(!w1.answered, "a stalled worker cannot answer: {dump}");
    assert!(w1.stalled);
    assert_eq!(w1.running.as_deref(), Some("busy callback"));
    assert!(w1.running_for.is_some());
    assert!(dump.workers[0].answered, "{dump}");
    let text = dump.to_string();
    assert!(text.contains("worker 1: STALLED, not answering"), "{text}");
    assert!(text.contains("'busy callback'"), "{text}");

    release.store(true, SeqCst);
    let end = reports.recv_timeout(GIVE_UP).expect("the end of the stall");
    assert!(end.ended);
    rt.shutdown(None).unwrap();
}

/// A future that waits until its gate opens.
struct Gate {
    open: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        })
    }
    fn pass(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let gate = self.clone();
        std::future::poll_fn(move |cx: &mut Context<'_>| {
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
    fn open(&self) {
        self.open.store(true, SeqCst);
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

#[test]
fn the_dump_lists_live_named_tasks_with_worker_state_and_age() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let gate = Gate::new();
    let alpha = TaskBuilder::new()
        .name("alpha")
        .placement(Placement::Worker(0))
        .spawn_on(&rt, gate.pass())
        .unwrap();
    let beta = TaskBuilder::new()
        .name("beta")
        .spawn_local_to(&rt, 1, {
            let gate = gate.clone();
            move || gate.pass()
        })
        .unwrap();
    let g = gate.clone();
    let local = rt
        .spawn_local_to(1, move || async move {
            TaskBuilder::new()
                .name("gamma")
                .spawn_local(g.pass())
                .unwrap()
                .await
        })
        .unwrap();
    // Wait until all four (alpha, beta, gamma and gamma's unnamed parent) are parked.
    let start = Instant::now();
    let dump = loop {
        let d = rt.dump();
        let idle = d
            .workers
            .iter()
            .flat_map(|w| &w.tasks)
            .filter(|t| t.state == TaskState::Idle)
            .count();
        if idle == 4 {
            break d;
        }
        assert!(start.elapsed() < GIVE_UP, "tasks never parked: {d}");
        std::thread::sleep(Duration::from_millis(1));
    };
    let find = |name: &str| {
        dump.workers
            .iter()
            .flat_map(|w| &w.tasks)
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from {dump}"))
            .clone()
    };
    assert_eq!(find("alpha").worker, 0);
    assert_eq!(find("beta").worker, 1);
    assert_eq!(find("gamma").worker, 1);
    assert!(dump.workers.iter().all(|w| w.answered && !w.stalled));
    assert_eq!(dump.workers[0].live_tasks, 1);
    assert_eq!(dump.workers[1].live_tasks, 3);
    let text = dump.to_string();
    for needle in [
        "task 'alpha' worker 0 state idle age",
        "task 'beta' worker 1 state idle age",
        "task 'gamma' worker 1 state idle age",
        "task (unnamed) worker 1 state idle",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    gate.open();
    rt.block_on(alpha).unwrap();
    rt.block_on(beta).unwrap();
    rt.block_on(local).unwrap().unwrap();
    let after = rt.dump();
    assert!(after.workers.iter().all(|w| w.tasks.is_empty()), "{after}");
}

#[test]
fn a_dump_from_inside_a_task_lists_the_task_itself_as_running() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let h = TaskBuilder::new()
        .name("introspective")
        .placement(Placement::Worker(1))
        .spawn_on(&rt.handle(), {
            let handle = rt.handle();
            async move { handle.dump() }
        })
        .unwrap();
    let dump = rt.block_on(h).unwrap();
    let me = dump.workers[1]
        .tasks
        .iter()
        .find(|t| t.name.as_deref() == Some("introspective"))
        .expect("listed");
    assert_eq!(me.state, TaskState::Running);
    assert_eq!(dump.workers[1].running.as_deref(), Some("introspective"));
    assert!(dump.workers[0].answered);
}

unsafe extern "C" fn count_raw(_ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: the test passes a live counter.
    unsafe { &*(arg as *const AtomicUsize) }.fetch_add(1, SeqCst);
    0
}

fn raw(counter: &'static AtomicUsize) -> RawTask {
    RawTask {
        func: count_raw,
        arg: counter as *const AtomicUsize as *mut c_void,
        cq: std::ptr::null(),
        user_data: 0,
    }
}

fn started(s: &WorkerStats) -> u64 {
    s.tasks_local + s.tasks_mesh + s.tasks_inbox + s.tasks_injector + s.tasks_stolen
}

#[test]
fn tasks_started_by_source_add_up_to_tasks_spawned_by_every_path() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let raw_runs: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let futures_done = Arc::new(AtomicUsize::new(0));
    const ROUNDS: usize = 50;
    let mut expected = 0;
    let h = rt.handle();
    // A future that yields once (so re-polls happen) and counts itself.
    let job = |done: &Arc<AtomicUsize>| {
        let done = done.clone();
        async move {
            veloq::yield_now().await;
            done.fetch_add(1, SeqCst);
        }
    };
    for k in 0..ROUNDS {
        // From this (host) thread: every placement, futures and callbacks.
        let mut handles = vec![
            h.spawn(job(&futures_done)).unwrap(),
            h.spawn_balanced(job(&futures_done)).unwrap(),
            h.spawn_to(k % 2, job(&futures_done)).unwrap(),
            h.spawn_local_to(k % 2, {
                let d = futures_done.clone();
                move || job(&d)
            })
            .unwrap(),
        ];
        expected += 4;
        for p in [
            Placement::Any,
            Placement::Balanced,
            Placement::Worker(k % 2),
        ] {
            // SAFETY: the counter is leaked (valid everywhere, for ever).
            unsafe { h.spawn_raw(p, raw(raw_runs)) }.unwrap();
            expected += 1;
        }
        // From a worker: every path again, plus local tasks and named spawns.
        let d = futures_done.clone();
        handles.push(
            h.spawn_local_to((k + 1) % 2, move || async move {
                let mut inner = vec![
                    veloq::spawn(job(&d)).unwrap(),
                    veloq::spawn_balanced(job(&d)).unwrap(),
                    veloq::spawn_to(0, job(&d)).unwrap(),
                    veloq::spawn_to(1, job(&d)).unwrap(),
                    TaskBuilder::new().name("n").spawn(job(&d)).unwrap(),
                ];
                let local = veloq::spawn_local(job(&d)).unwrap();
                let named_local = TaskBuilder::new().name("l").spawn_local(job(&d)).unwrap();
                RuntimeContext::with_current(|cx| {
                    let cx = cx.unwrap();
                    for p in [
                        Placement::Any,
                        Placement::Balanced,
                        Placement::Worker(0),
                        Placement::Worker(1),
                    ] {
                        // SAFETY: as above.
                        unsafe { cx.spawn_raw(p, raw(raw_runs)) }.unwrap();
                    }
                });
                // SAFETY: as above.
                unsafe {
                    TaskBuilder::new()
                        .name("raw")
                        .placement(Placement::Balanced)
                        .spawn_raw(&cx_handle(), raw(raw_runs))
                }
                .unwrap();
                local.await.unwrap();
                named_local.await.unwrap();
                for h in inner.drain(..) {
                    h.await.unwrap();
                }
            })
            .unwrap(),
        );
        // The root above (1) + 5 spawns + 2 local + 4 raw + 1 named raw.
        expected += 1 + 5 + 2 + 4 + 1;
        for handle in handles {
            rt.block_on(handle).unwrap();
        }
    }
    rt.shutdown(None).unwrap();
    assert_eq!(raw_runs.load(SeqCst), ROUNDS * (3 + 5));
    let stats = rt.stats();
    let spawned: u64 = stats.iter().map(|s| s.tasks_spawned).sum();
    let ran: u64 = stats.iter().map(started).sum();
    assert_eq!(spawned, expected as u64, "{stats:#?}");
    assert_eq!(ran, spawned, "task starts by source vs spawns: {stats:#?}");
    assert!(stats.iter().map(|s| s.polls).sum::<u64>() > 0, "{stats:#?}");
}

/// The handle of the runtime the current worker belongs to.
fn cx_handle() -> veloq::Handle {
    RuntimeContext::with_current(|cx| cx.unwrap().handle())
}

#[test]
fn a_zero_threshold_turns_stall_detection_off() {
    let (tx, rx) = mpsc::channel::<StallReport>();
    let tx = Mutex::new(tx);
    let rt = Runtime::builder()
        .workers(2)
        .stall_threshold(Duration::ZERO)
        .on_stall(move |r| {
            let _ = tx.lock().unwrap().send(r.clone());
        })
        .build()
        .unwrap();
    let h = rt
        .spawn_to(0, async {
            let until = Instant::now() + Duration::from_millis(50);
            while Instant::now() < until {}
        })
        .unwrap();
    rt.block_on(h).unwrap();
    rt.shutdown(None).unwrap();
    drop(rt);
    assert!(rx.try_recv().is_err(), "no watchdog, no report");
}

#[test]
fn parked_workers_are_never_reported_stalled() {
    let (rt, reports) = stall_runtime(0);
    // Both workers idle for several thresholds.
    std::thread::sleep(Duration::from_millis(200));
    assert!(reports.try_recv().is_err());
    assert!(rt.stats().iter().all(|s| s.stalls == 0 && !s.stalled));
}
