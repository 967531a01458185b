//! Profiling aid for the driver's NOP path: N NOPs in batches of 32, as benches/io/nop.rs
//! does, for counting instructions per NOP (`valgrind --tool=callgrind`, twice with
//! different N, the difference divided by the difference in N).
//!
//! `nop_prof N [cb|fut|raw|spawn]`: `cb` (default) submits with `RuntimeContext::submit_io`
//! and C-style callbacks, as the bench's veloq row; `fut` awaits 32 `veloq::io::nop()`
//! futures; `raw` is the bench's io-uring loop; `spawn` is N spawn_local + join (a check
//! that the worker loop did not get dearer).
use std::cell::Cell;
use std::ffi::c_void;
use std::future::Future;
use std::task::{Poll, Waker};

const BATCH: usize = 32;

struct Batch {
    left: Cell<usize>,
    failed: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

unsafe extern "C" fn on_nop(_: *mut veloq::RuntimeContext, res: i64, _: u32, arg: *mut c_void) {
    // SAFETY: `arg` is the Batch of `main`, alive until every callback of the batch ran.
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

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().unwrap());
    let mode = std::env::args().nth(2).unwrap_or_else(|| "cb".into());
    if mode == "raw" {
        use io_uring::{opcode, IoUring};
        let mut ring = IoUring::new(BATCH as u32).unwrap();
        let nop = opcode::Nop::new().build();
        let t = std::time::Instant::now();
        let mut done = 0u64;
        while done < n {
            for i in 0..BATCH {
                let sqe = nop.clone().user_data(i as u64);
                // SAFETY: a NOP points at no memory; the ring has room for BATCH entries.
                unsafe { ring.submission().push(&sqe) }.expect("full");
            }
            ring.submit_and_wait(BATCH).unwrap();
            for cqe in ring.completion() {
                assert_eq!(cqe.result(), 0);
                done += 1;
            }
        }
        let e = t.elapsed();
        eprintln!(
            "{} NOPs {:.3} M/s (raw)",
            done,
            done as f64 / e.as_secs_f64() / 1e6
        );
        return;
    }
    if mode == "spawn" {
        let rt = veloq::Runtime::builder().workers(1).build().unwrap();
        let main = rt
            .spawn_local_to(0, move || async move {
                for i in 0..n {
                    let h = veloq::spawn_local(async move { i }).ok().unwrap();
                    assert_eq!(h.await.unwrap(), i);
                }
            })
            .unwrap();
        rt.block_on(main).unwrap();
        return;
    }
    let rt = veloq::Runtime::builder().workers(1).build().unwrap();
    let main = rt
        .spawn_local_to(0, move || async move {
            let batch = Box::new(Batch {
                left: Cell::new(0),
                failed: Cell::new(false),
                waker: Cell::new(None),
            });
            let arg = &*batch as *const Batch as *mut c_void;
            let t = std::time::Instant::now();
            let mut done = 0u64;
            while done < n {
                if mode == "fut" {
                    // 32 nop futures on the stack, polled in place until all are done.
                    let mut futs: [Option<_>; BATCH] =
                        std::array::from_fn(|_| Some(veloq::io::nop()));
                    let mut left = BATCH;
                    std::future::poll_fn(|cx| {
                        for slot in futs.iter_mut() {
                            if let Some(f) = slot {
                                // SAFETY: the array is not moved while the futures live
                                // (it stays in this async block's frame until emptied).
                                let f = unsafe { std::pin::Pin::new_unchecked(f) };
                                if let Poll::Ready(r) = f.poll(cx) {
                                    r.unwrap();
                                    *slot = None;
                                    left -= 1;
                                }
                            }
                        }
                        if left == 0 {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                } else {
                    batch.left.set(BATCH);
                    veloq::RuntimeContext::with_current(|cx| {
                        let cx = cx.expect("on a worker");
                        for _ in 0..BATCH {
                            // SAFETY: a NOP uses no memory; `arg` outlives the batch.
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
                }
                done += BATCH as u64;
            }
            let e = t.elapsed();
            eprintln!(
                "{} NOPs {:.3} M/s",
                done,
                done as f64 / e.as_secs_f64() / 1e6
            );
        })
        .unwrap();
    rt.block_on(main).unwrap();
}
