//! The promises of the cooperative budget (`veloq::runtime::coop`): a task that keeps
//! finding libveloq's I/O and join handles ready still lets the other tasks of its worker
//! run, what a leaf future did not return because the budget ran out is handed over on
//! a later poll (nothing lost, nothing reordered), and off a worker (or with the budget
//! turned off) nothing ever waits for it.
//!
//! Every scenario runs on one worker, so a task that never yields would keep its sibling
//! from running for good; loops are bounded by an iteration guard that fails the test
//! rather than hang it.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use veloq::fs::File;
use veloq::net::TcpListener;
use veloq::{consume_budget, spawn_local, Runtime, RuntimeBuilder};

const DEFAULT_COOP_BUDGET: u32 = RuntimeBuilder::DEFAULT_COOP_BUDGET;

/// Iterations after which a loop that should have seen its sibling run gives up.
const GUARD: u64 = 10_000_000;

fn one_worker(coop_budget: u32) -> Runtime {
    Runtime::builder()
        .workers(1)
        .coop_budget(coop_budget)
        .build()
        .expect("runtime")
}

/// Runs `make()`'s future as a local task on the only worker and returns its output.
fn run_local<M, F>(rt: &Runtime, make: M) -> F::Output
where
    M: FnOnce() -> F + Send + 'static,
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let h = rt.spawn_local_to(0, make).expect("spawn");
    let out = rt.block_on(h).expect("task finished");
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
    out
}

/// A flag and the local task that sets it (queued behind the caller on its worker).
fn sibling_sets_flag() -> Rc<Cell<bool>> {
    let flag = Rc::new(Cell::new(false));
    let f = flag.clone();
    spawn_local(async move { f.set(true) }).expect("spawn sibling");
    flag
}

#[test]
fn a_task_looping_over_ready_file_reads_lets_a_sibling_on_its_worker_run() {
    let rt = one_worker(DEFAULT_COOP_BUDGET);
    let reads = run_local(&rt, || async {
        let zero = File::open("/dev/zero").await.expect("open /dev/zero");
        let flag = sibling_sets_flag();
        let mut buf = Vec::with_capacity(64);
        let mut reads = 0u64;
        while !flag.get() {
            buf.clear();
            let (r, b) = zero.read_at(buf, 0).await;
            buf = b;
            assert_eq!(r.expect("read /dev/zero"), 64);
            assert!(buf.iter().all(|&x| x == 0));
            reads += 1;
            assert!(reads < GUARD, "the sibling never ran");
        }
        reads
    });
    assert!(reads >= 1);
}

/// The local task that records what `progress` says when it runs (queued behind the
/// caller on its worker).
fn sibling_records(progress: &Rc<Cell<usize>>) -> Rc<Cell<Option<usize>>> {
    let seen = Rc::new(Cell::new(None));
    let (p, s) = (progress.clone(), seen.clone());
    spawn_local(async move { s.set(Some(p.get())) }).expect("spawn sibling");
    seen
}

#[test]
fn a_loop_of_consume_budget_yields_once_its_budget_is_spent() {
    let rt = one_worker(DEFAULT_COOP_BUDGET);
    let spent_before_sibling = run_local(&rt, || async {
        let spent = Rc::new(Cell::new(0));
        let seen = sibling_records(&spent);
        while seen.get().is_none() {
            consume_budget().await;
            spent.set(spent.get() + 1);
            assert!((spent.get() as u64) < GUARD, "the sibling never ran");
        }
        seen.get()
    });
    // The first yield comes when the budget of the first poll is spent.
    assert_eq!(spent_before_sibling, Some(DEFAULT_COOP_BUDGET as usize));
}

#[test]
fn a_task_awaiting_finished_join_handles_yields_after_its_budget() {
    const TASKS: usize = 1000;
    let rt = one_worker(DEFAULT_COOP_BUDGET);
    let (values, joined_before_sibling) = run_local(&rt, || async {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| spawn_local(async move { i }).expect("spawn"))
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            veloq::yield_now().await;
        }
        let joined = Rc::new(Cell::new(0));
        let seen = sibling_records(&joined);
        let mut values = Vec::with_capacity(TASKS);
        for h in handles {
            values.push(h.await.expect("joined"));
            joined.set(values.len());
        }
        (values, seen.get())
    });
    assert_eq!(
        values,
        (0..TASKS).collect::<Vec<_>>(),
        "every output, in order"
    );
    // Every handle is ready: only the budget makes the task yield, once it is spent.
    assert_eq!(joined_before_sibling, Some(DEFAULT_COOP_BUDGET as usize));
}

#[test]
fn with_the_budget_off_a_ready_loop_keeps_its_worker() {
    let rt = one_worker(0);
    let sibling_ran = run_local(&rt, || async {
        let flag = sibling_sets_flag();
        for _ in 0..10 * DEFAULT_COOP_BUDGET {
            consume_budget().await;
        }
        flag.get()
    });
    assert!(!sibling_ran, "nothing made the task yield");
}

/// Polls every future of `futures` until all are ready, like a join-all, and records
/// the most that became ready in one poll.
async fn join_all_counting<F: Future>(futures: Vec<F>) -> (Vec<F::Output>, usize) {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut most_per_poll = 0;
    poll_fn(|cx: &mut Context<'_>| {
        let mut ready_now = 0;
        for (f, out) in futures.iter_mut().zip(&mut outputs) {
            if out.is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *out = Some(v);
                    ready_now += 1;
                }
            }
        }
        most_per_poll = most_per_poll.max(ready_now);
        if outputs.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let outputs = outputs.into_iter().map(|o| o.expect("ready")).collect();
    (outputs, most_per_poll)
}

#[test]
fn reads_held_back_by_the_budget_keep_their_results() {
    const READS: u64 = 1000;
    const BUDGET: u32 = 3;
    let path = std::env::temp_dir().join(format!("veloq-coop-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..READS {
        f.write_all(&i.to_le_bytes()).unwrap();
    }
    drop(f);
    let rt = one_worker(BUDGET);
    let p = path.clone();
    let (values, most_per_poll) = run_local(&rt, move || async move {
        let file = Rc::new(File::open(&p).await.expect("open"));
        let reads = (0..READS)
            .map(|i| {
                let file = file.clone();
                async move {
                    let (r, buf) = file.read_at(Vec::with_capacity(8), i * 8).await;
                    assert_eq!(r.expect("read"), 8);
                    u64::from_le_bytes(buf[..].try_into().unwrap())
                }
            })
            .collect();
        join_all_counting(reads).await
    });
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        values,
        (0..READS).collect::<Vec<_>>(),
        "each read its own bytes"
    );
    assert!(
        most_per_poll <= BUDGET as usize,
        "{most_per_poll} reads finished in one poll (budget {BUDGET})"
    );
}

#[test]
fn a_multishot_accept_held_back_by_the_budget_loses_no_connection() {
    const CONNS: usize = 64;
    let rt = one_worker(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Every connection is made (and queued in the listener's backlog) before the
    // accept starts, so the kernel completes the multishot accept many times at once.
    let clients: Vec<_> = (0..CONNS)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let accepted = run_local(&rt, move || async move {
        let listener = TcpListener::from_std(listener);
        let mut incoming = listener.incoming();
        let mut streams = Vec::new();
        while streams.len() < CONNS {
            streams.push(incoming.next().await.expect("open").expect("accepted"));
        }
        incoming.stop();
        streams.len()
    });
    assert_eq!(accepted, CONNS);
    drop(clients);
}

#[test]
fn off_a_worker_the_budget_never_makes_a_future_wait() {
    let rt = one_worker(DEFAULT_COOP_BUDGET);
    let polls = Cell::new(0u32);
    let mut work = Box::pin(async {
        for _ in 0..10 * DEFAULT_COOP_BUDGET {
            consume_budget().await;
        }
    });
    rt.block_on(poll_fn(|cx| {
        polls.set(polls.get() + 1);
        work.as_mut().poll(cx)
    }));
    assert_eq!(polls.get(), 1, "block_on polled once: nothing yielded");
    assert_eq!(veloq::runtime::coop::budget_remaining(), None);
    rt.shutdown(Some(Duration::from_secs(30))).unwrap();
}

#[test]
fn each_poll_of_a_task_starts_with_the_configured_budget_and_a_ready_join_spends_one() {
    use veloq::runtime::coop::budget_remaining;
    let rt = one_worker(7);
    let (at_start, after_join, after_yield) = run_local(&rt, || async {
        let at_start = budget_remaining();
        let h = spawn_local(async {}).expect("spawn");
        while !h.is_finished() {
            veloq::yield_now().await;
        }
        let fresh = budget_remaining();
        h.await.expect("joined");
        let after_join = budget_remaining();
        veloq::yield_now().await;
        (at_start.zip(fresh), after_join, budget_remaining())
    });
    assert_eq!(at_start, Some((7, 7)));
    assert_eq!(after_join, Some(6));
    assert_eq!(after_yield, Some(7), "a new poll, a new budget");
}
