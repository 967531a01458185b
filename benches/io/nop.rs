//! No-op throughput: what submitting and reaping costs with nothing else to do. Peer: a raw
//! io-uring crate loop, batches of 32 (push 32 NOPs, `submit_and_wait(32)`, reap 32); veloq's
//! row comes from [`veloq_nop`] once its driver can be driven from a bench.

use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};

use crate::harness::{fmt_value, quick, Goal, Row, Scenario, VELOQ};
use crate::rounds::{self, Contender};

/// NOPs per batch.
pub const BATCH: usize = 32;

fn run_time() -> Duration {
    if quick() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    }
}

/// The raw loop, in millions of NOPs per second.
fn raw_nop() -> Result<f64, String> {
    let mut ring = IoUring::new(BATCH as u32).map_err(|e| format!("io_uring: {e}"))?;
    let nop = opcode::Nop::new().build();
    let deadline = Instant::now() + run_time();
    let start = Instant::now();
    let mut done = 0u64;
    while Instant::now() < deadline {
        for i in 0..BATCH {
            let sqe = nop.clone().user_data(i as u64);
            // SAFETY: a NOP points at no memory; the ring has room for BATCH entries and
            // the previous batch was submitted and reaped whole.
            unsafe { ring.submission().push(&sqe) }.expect("submission queue full");
        }
        ring.submit_and_wait(BATCH)
            .map_err(|e| format!("submit: {e}"))?;
        for cqe in ring.completion() {
            if cqe.result() != 0 {
                return Err(format!("NOP returned {}", cqe.result()));
            }
            done += 1;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// veloq's NOP throughput through its driver, in millions per second: one worker submits
/// batches of [`BATCH`] NOPs through `RuntimeContext::submit_io` (the path the C API takes:
/// one callback per completion) and waits for each batch to complete before the next, as
/// the raw loop does.
fn veloq_nop(duration: Duration) -> Option<f64> {
    use std::cell::Cell;
    use std::ffi::c_void;
    use std::task::{Poll, Waker};

    /// What the callbacks of one batch share with the task that waits for them.
    struct Batch {
        left: Cell<usize>,
        failed: Cell<bool>,
        waker: Cell<Option<Waker>>,
    }

    unsafe extern "C" fn on_nop(_: *mut veloq::RuntimeContext, res: i64, _: u32, arg: *mut c_void) {
        // SAFETY: `arg` is the Batch below, alive until every callback of the batch ran.
        let batch = unsafe { &*(arg as *const Batch) };
        if res != 0 {
            batch.failed.set(true);
        }
        batch.left.set(batch.left.get() - 1);
        if batch.left.get() == 0 {
            if let Some(w) = batch.waker.take() {
                w.wake();
            }
        }
    }

    let rt = veloq::Runtime::builder().workers(1).build().ok()?;
    let main = rt
        .spawn_local_to(0, move || async move {
            let batch = Box::new(Batch {
                left: Cell::new(0),
                failed: Cell::new(false),
                waker: Cell::new(None),
            });
            let arg = &*batch as *const Batch as *mut c_void;
            let deadline = Instant::now() + duration;
            let start = Instant::now();
            let mut done = 0u64;
            while Instant::now() < deadline {
                batch.left.set(BATCH);
                veloq::RuntimeContext::with_current(|cx| {
                    let cx = cx.expect("on a worker");
                    for _ in 0..BATCH {
                        // SAFETY: a NOP uses no memory; `on_nop` may be called with `arg`
                        // on this worker, which outlives the batch (awaited below).
                        unsafe { cx.submit_io(veloq::io::RawOp::Nop, on_nop, arg) }
                            .expect("nop accepted");
                    }
                });
                std::future::poll_fn(|cx| {
                    if batch.left.get() == 0 {
                        Poll::Ready(())
                    } else {
                        batch.waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                })
                .await;
                done += BATCH as u64;
            }
            (!batch.failed.get()).then(|| done as f64 / start.elapsed().as_secs_f64() / 1e6)
        })
        .ok()?;
    rt.block_on(main).ok().flatten()
}

pub fn all(rows: &mut Vec<Row>) {
    let name = format!("io_uring NOP, batches of {BATCH}");
    eprintln!("• {name}");
    let mut contenders: Vec<Contender<'_, Option<f64>>> = vec![
        Contender::new(VELOQ, || veloq_nop(run_time())),
        Contender::new("io-uring", || match raw_nop() {
            Ok(v) => Some(v),
            Err(e) => {
                rounds::failed("io-uring", &e);
                None
            }
        }),
    ];
    let samples = rounds::alternate(&mut contenders, 1);
    let values: Vec<(String, Option<f64>)> = contenders
        .iter()
        .zip(&samples)
        .map(|(c, s)| (c.name.clone(), rounds::median_of(s, |v| *v)))
        .collect();
    for (n, v) in &values {
        let v = v.map_or("— (not measured)".into(), fmt_value);
        eprintln!("    {n:<9} {v} M NOP/s");
    }
    let scenario =
        Scenario::higher_is_better(name, "M NOP/s").goal(Goal::at_least("io-uring", 0.8));
    rows.push(rounds::row(scenario, values));
}
