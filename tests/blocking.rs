//! The blocking pool's promises, one test each (issue #5, part 1).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use veloq::{BlockingStats, JoinError, Runtime, RuntimeBuilder, ShutdownError, SpawnErrorKind};

fn runtime(workers: usize, min: usize, max: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .blocking_threads(min, max)
        .build()
        .expect("runtime")
}

/// Records that job `id` ran; a second run is caught by `assert_each_ran_once`.
struct Ledger(Vec<AtomicU8>);

impl Ledger {
    fn new(n: usize) -> Arc<Ledger> {
        Arc::new(Ledger((0..n).map(|_| AtomicU8::new(0)).collect()))
    }
    fn ran(&self, id: usize) {
        self.0[id].fetch_add(1, SeqCst);
    }
    fn assert_each_ran_once(&self) {
        let bad: Vec<_> = (0..self.0.len())
            .map(|i| (i, self.0[i].load(SeqCst)))
            .filter(|&(_, n)| n != 1)
            .take(10)
            .collect();
        assert!(
            bad.is_empty(),
            "jobs not run exactly once (id, runs): {bad:?}"
        );
    }
}

/// A gate blocking jobs wait at until it is opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Polls the pool's counters until `done` holds; panics after a generous 20 s (a hang,
/// not a slow machine).
fn wait_for_stats(rt: &Runtime, what: &str, done: impl Fn(&BlockingStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = rt.blocking_stats();
        if done(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {stats:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_task_awaiting_a_blocking_job_gets_its_result_on_its_own_worker() {
    let rt = runtime(2, 0, 4);
    for worker in 0..2 {
        let task = rt
            .spawn_to(worker, async move {
                let job = veloq::spawn_blocking(|| {
                    assert_eq!(veloq::worker_index(), None, "ran on a worker");
                    thread::current().name().map(str::to_owned)
                })
                .expect("spawn_blocking");
                let name = job.await.expect("job result");
                (name, veloq::worker_index())
            })
            .expect("spawn");
        let (name, index) = rt.block_on(task).expect("task");
        assert!(
            name.as_deref().is_some_and(|n| n.starts_with("veloq-b")),
            "pool thread name: {name:?}"
        );
        assert_eq!(index, Some(worker), "woken on another worker");
    }
}

#[test]
fn the_context_and_the_handle_spawn_blocking_too() {
    let rt = runtime(1, 0, 2);
    let task = rt
        .spawn_local_to(0, || async {
            let job = veloq::RuntimeContext::with_current(|cx| {
                cx.expect("on a worker").spawn_blocking(|| 7)
            })
            .expect("spawn_blocking");
            job.await.expect("job")
        })
        .expect("spawn");
    assert_eq!(rt.block_on(task).expect("task"), 7);
    let handle = rt.handle();
    let from_thread = thread::spawn(move || handle.spawn_blocking(|| 8).expect("spawn").join());
    assert_eq!(from_thread.join().unwrap().expect("job"), 8);
}

#[test]
fn a_blocking_job_from_outside_resolves_in_block_on_and_in_join() {
    let rt = runtime(1, 0, 2);
    let awaited = rt.block_on(async {
        veloq::spawn_blocking(|| 1 + 1)
            .expect("free fn inside block_on")
            .await
    });
    assert_eq!(awaited.expect("job"), 2);
    let joined = rt.spawn_blocking(|| "done").expect("spawn").join();
    assert_eq!(joined.expect("job"), "done");
}

#[test]
fn spawn_blocking_off_any_runtime_is_refused_with_no_runtime() {
    let err = veloq::spawn_blocking(|| 3).expect_err("no runtime here");
    assert_eq!(err.kind(), SpawnErrorKind::NoRuntime);
    assert_eq!(err.into_inner()(), 3, "the closure comes back");
}

#[test]
fn inside_a_blocking_job_the_free_spawn_functions_reach_the_runtime() {
    let rt = runtime(1, 0, 2);
    let out = rt
        .spawn_blocking(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            veloq::spawn(async move { tx.send(5).unwrap() }).expect("spawn from a pool thread");
            let nested = veloq::spawn_blocking(|| 6).expect("nested spawn_blocking");
            (rx.recv().expect("task ran"), nested.join().expect("nested"))
        })
        .expect("spawn")
        .join()
        .expect("job");
    assert_eq!(out, (5, 6));
}

#[test]
fn ten_thousand_jobs_from_workers_and_threads_each_run_exactly_once() {
    const N: usize = 10_000;
    let rt = runtime(2, 0, 8);
    let ledger = Ledger::new(N);
    // Half from a task on each worker (awaiting every result), half from this thread.
    let mut tasks = Vec::new();
    for worker in 0..2 {
        let ledger = ledger.clone();
        tasks.push(
            rt.spawn_to(worker, async move {
                let ids = (worker * N / 4)..((worker + 1) * N / 4);
                let mut jobs = Vec::new();
                for id in ids {
                    let ledger = ledger.clone();
                    jobs.push(veloq::spawn_blocking(move || ledger.ran(id)).expect("spawn"));
                }
                for job in jobs {
                    job.await.expect("job");
                }
            })
            .expect("spawn task"),
        );
    }
    let jobs: Vec<_> = (N / 2..N)
        .map(|id| {
            let ledger = ledger.clone();
            rt.spawn_blocking(move || ledger.ran(id)).expect("spawn")
        })
        .collect();
    for job in jobs {
        job.join().expect("job");
    }
    for task in tasks {
        rt.block_on(task).expect("task");
    }
    ledger.assert_each_ran_once();
    // A job is counted just after its result was handed over.
    wait_for_stats(&rt, "every job counted", |s| s.completed == N as u64);
    assert!(rt.blocking_stats().threads <= 8, "more threads than max");
}

#[test]
fn jobs_from_many_threads_each_run_once_while_pool_threads_come_and_go() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;
    // An idle timeout of zero: a thread that finds no work exits at once, so threads are
    // started and leave all the time while jobs arrive.
    let rt = Runtime::builder()
        .workers(1)
        .blocking_threads(0, 3)
        .blocking_idle_timeout(Duration::ZERO)
        .build()
        .expect("runtime");
    let ledger = Ledger::new(THREADS * PER_THREAD);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (rt, ledger) = (&rt, ledger.clone());
            s.spawn(move || {
                let jobs: Vec<_> = (t * PER_THREAD..(t + 1) * PER_THREAD)
                    .map(|id| {
                        let ledger = ledger.clone();
                        rt.spawn_blocking(move || ledger.ran(id)).expect("spawn")
                    })
                    .collect();
                for job in jobs {
                    job.join().expect("job");
                }
            });
        }
    });
    ledger.assert_each_ran_once();
    wait_for_stats(&rt, "every job counted", |s| {
        s.completed == (THREADS * PER_THREAD) as u64
    });
    assert!(rt.blocking_stats().threads <= 3);
}

#[test]
fn more_jobs_than_min_run_in_parallel_up_to_max_and_the_rest_wait_in_order() {
    let rt = runtime(1, 1, 4);
    // Four jobs meet at a barrier with this thread: they can only all arrive if four
    // threads run them at once.
    let barrier = Arc::new(Barrier::new(5));
    let met: Vec<_> = (0..4)
        .map(|_| {
            let barrier = barrier.clone();
            rt.spawn_blocking(move || {
                barrier.wait();
            })
            .expect("spawn")
        })
        .collect();
    barrier.wait();
    for job in met {
        job.join().expect("job");
    }
    // Six jobs behind a closed gate: four run (max), two wait in the queue.
    let gate = Gate::default();
    let order = Arc::new(Mutex::new(Vec::new()));
    let jobs: Vec<_> = (0..6)
        .map(|i| {
            let (gate, order) = (gate.clone(), order.clone());
            rt.spawn_blocking(move || {
                order.lock().unwrap().push(i);
                gate.wait();
            })
            .expect("spawn")
        })
        .collect();
    wait_for_stats(&rt, "4 busy threads and 2 queued jobs", |s| {
        s.threads == 4 && s.queued == 2 && order.lock().unwrap().len() == 4
    });
    let started: Vec<_> = order.lock().unwrap().clone();
    assert!(
        started.iter().all(|&i| i < 4),
        "a later job overtook the queue: {started:?}"
    );
    gate.open();
    for job in jobs {
        job.join().expect("job");
    }
    assert!(rt.blocking_stats().threads <= 4);
}

#[test]
fn threads_beyond_min_exit_when_idle_and_min_stay() {
    let rt = Runtime::builder()
        .workers(1)
        .blocking_threads(1, 3)
        .blocking_idle_timeout(Duration::from_millis(20))
        .build()
        .expect("runtime");
    let barrier = Arc::new(Barrier::new(4));
    let jobs: Vec<_> = (0..3)
        .map(|_| {
            let barrier = barrier.clone();
            rt.spawn_blocking(move || {
                barrier.wait();
            })
            .expect("spawn")
        })
        .collect();
    barrier.wait();
    for job in jobs {
        job.join().expect("job");
    }
    assert_eq!(rt.blocking_stats().threads, 3);
    wait_for_stats(&rt, "the pool shrink to its minimum", |s| s.threads == 1);
    // The one kept runs the next job.
    assert_eq!(
        rt.spawn_blocking(|| 9).expect("spawn").join().expect("job"),
        9
    );
    assert!(rt.blocking_stats().threads >= 1, "min not kept");
}

#[test]
fn a_panicking_blocking_job_yields_panicked_and_the_pool_keeps_working() {
    let rt = runtime(1, 0, 1);
    let err = rt
        .spawn_blocking(|| -> u32 { panic!("boom in the pool") })
        .expect("spawn")
        .join()
        .expect_err("panicked");
    assert!(err.is_panic(), "{err:?}");
    assert!(matches!(err, JoinError::Panicked(_)));
    let awaited = rt.block_on(async {
        veloq::spawn_blocking(|| -> u32 { panic!("again") })
            .expect("spawn")
            .await
    });
    assert!(awaited.expect_err("panicked").is_panic());
    assert_eq!(
        rt.spawn_blocking(|| 4).expect("spawn").join().expect("job"),
        4
    );
}

#[test]
fn shutdown_runs_every_queued_job_once_refuses_new_ones_and_waiting_tasks_get_results() {
    const N: usize = 200;
    let rt = Arc::new(runtime(2, 0, 2));
    let gate = Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let ledger = Ledger::new(N);
    let jobs: Vec<_> = (0..N)
        .map(|id| {
            let (gate, ledger, started) = (gate.clone(), ledger.clone(), started.clone());
            rt.spawn_blocking(move || {
                started.fetch_add(1, SeqCst);
                gate.wait();
                ledger.ran(id);
                id
            })
            .expect("spawn")
        })
        .collect();
    // A task on each worker awaits one more gated job: its worker must stay up for it.
    let tasks: Vec<_> = (0..2)
        .map(|worker| {
            let (gate, started) = (gate.clone(), started.clone());
            rt.spawn_to(worker, async move {
                let job = veloq::spawn_blocking(move || {
                    started.fetch_add(1, SeqCst);
                    gate.wait();
                    worker * 10
                })
                .expect("spawn");
                job.await.expect("job") + 1
            })
            .expect("spawn task")
        })
        .collect();
    wait_for_stats(&rt, "both tasks' jobs accepted", |s| {
        s.queued + started.load(SeqCst) == N + 2
    });
    let shutdown = {
        let rt = rt.clone();
        thread::spawn(move || rt.shutdown(None))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rt.is_shutting_down() {
        assert!(Instant::now() < deadline, "shutdown never started");
        thread::yield_now();
    }
    let refused = rt
        .spawn_blocking(|| ())
        .expect_err("refused after shutdown");
    assert_eq!(refused.kind(), SpawnErrorKind::Shutdown);
    gate.open();
    assert_eq!(shutdown.join().unwrap(), Ok(()));
    ledger.assert_each_ran_once();
    for (id, job) in jobs.into_iter().enumerate() {
        assert_eq!(job.join().expect("job"), id);
    }
    let results: Vec<_> = tasks
        .into_iter()
        .map(|t| rt.block_on(t).expect("task finished, not cancelled"))
        .collect();
    assert_eq!(results, vec![1, 11]);
    let stats = rt.blocking_stats();
    assert_eq!((stats.threads, stats.queued), (0, 0), "{stats:?}");
    assert_eq!(stats.completed, N as u64 + 2);
}

#[test]
fn shutdown_times_out_while_a_job_blocks_and_a_second_call_finishes() {
    let rt = runtime(1, 0, 1);
    let gate = Gate::default();
    let job = {
        let gate = gate.clone();
        rt.spawn_blocking(move || gate.wait()).expect("spawn")
    };
    assert_eq!(
        rt.shutdown(Some(Duration::from_millis(10))),
        Err(ShutdownError::TimedOut)
    );
    assert_eq!(
        rt.spawn_blocking(|| ()).expect_err("closed").kind(),
        SpawnErrorKind::Shutdown
    );
    gate.open();
    assert_eq!(rt.shutdown(None), Ok(()));
    job.join().expect("the job still ran");
}

#[test]
fn dropping_the_runtime_runs_queued_jobs_and_joins_the_threads() {
    let rt = runtime(1, 0, 1);
    let ledger = Ledger::new(50);
    for id in 0..50 {
        let ledger = ledger.clone();
        rt.spawn_blocking(move || {
            thread::sleep(Duration::from_micros(100));
            ledger.ran(id);
        })
        .expect("spawn");
    }
    drop(rt);
    ledger.assert_each_ran_once();
}

#[test]
fn bad_pool_settings_are_refused_and_leave_the_builder_unchanged() {
    let mut b = RuntimeBuilder::new();
    assert!(b.set_blocking_threads(3, 2).is_err(), "min > max");
    assert!(b.set_blocking_threads(0, 0).is_err(), "max 0");
    assert!(b
        .set_blocking_threads(0, RuntimeBuilder::MAX_BLOCKING_THREADS + 1)
        .is_err());
    assert!(b.set_blocking_threads(2, 2).is_ok());
    let err = Runtime::builder()
        .blocking_threads(5, 1)
        .build()
        .expect_err("bad setting");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn an_idle_timeout_too_long_for_the_clock_means_threads_never_time_out() {
    let rt = Runtime::builder()
        .workers(1)
        .blocking_threads(0, 2)
        .blocking_idle_timeout(Duration::MAX)
        .build()
        .expect("runtime");
    assert_eq!(
        rt.spawn_blocking(|| 1).expect("spawn").join().expect("job"),
        1
    );
    wait_for_stats(&rt, "the thread waiting for work", |s| s.idle == 1);
    assert_eq!(
        rt.spawn_blocking(|| 2).expect("spawn").join().expect("job"),
        2
    );
}

#[test]
fn shutdown_from_a_blocking_job_is_refused_and_changes_nothing() {
    let rt = Arc::new(runtime(1, 0, 2));
    let r = rt.clone();
    let job = rt
        .spawn_blocking(move || {
            // Both would wait for this very job to finish.
            (r.shutdown(Some(Duration::from_secs(1))), r.shutdown(None))
        })
        .expect("spawn");
    assert_eq!(
        job.join().unwrap(),
        (
            Err(ShutdownError::FromWorker),
            Err(ShutdownError::FromWorker)
        )
    );
    assert_eq!(
        rt.spawn_blocking(|| 3).expect("still open").join().unwrap(),
        3
    );
    assert_eq!(rt.shutdown(None), Ok(()));
}
