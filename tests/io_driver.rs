//! The I/O driver's promises, through the Rust API: every operation completes exactly
//! once, a full ring queues rather than fails, dropping a future cancels safely, and
//! shutdown cancels what is in flight.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use veloq::{io, time, Runtime, RuntimeBuilder};

fn runtime(workers: usize, ring_entries: u32) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .ring_entries(ring_entries)
        .build()
        .expect("runtime")
}

#[test]
fn nop_completes_on_a_worker_and_fails_clearly_off_one() {
    let rt = runtime(1, 64);
    let h = rt.spawn(async { io::nop().await }).unwrap();
    rt.block_on(h).unwrap().expect("nop");
    let err = rt.block_on(io::nop()).expect_err("off a worker");
    assert!(err.to_string().contains("worker"), "{err}");
}

#[test]
fn a_ring_of_8_entries_takes_10000_outstanding_operations() {
    let rt = runtime(1, 8);
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let h = rt
        .spawn_local_to(0, move || async move {
            let mut handles = Vec::new();
            for _ in 0..10_000 {
                let d = d.clone();
                handles.push(
                    veloq::spawn_local(async move {
                        time::sleep(Duration::from_millis(1)).await;
                        d.fetch_add(1, SeqCst);
                    })
                    .unwrap(),
                );
            }
            for h in handles {
                h.await.unwrap();
            }
        })
        .unwrap();
    rt.block_on(h).unwrap();
    assert_eq!(done.load(SeqCst), 10_000);
}

/// How many times each operation's callback ran (indexed by the `arg` it was given).
struct CallbackCounts {
    calls: Vec<AtomicUsize>,
    failed: AtomicUsize,
    total: AtomicUsize,
}

unsafe extern "C" fn count_call(
    _: *mut veloq::RuntimeContext,
    res: i64,
    flags: u32,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: `arg` names an entry of the `CallbackCounts` the test keeps alive until
    // every callback ran.
    let (counts, i) = unsafe { *(arg as *const (&CallbackCounts, usize)) };
    if res != 0 || flags != 0 {
        counts.failed.fetch_add(1, SeqCst);
    }
    counts.calls[i].fetch_add(1, SeqCst);
    counts.total.fetch_add(1, SeqCst);
}

#[test]
fn callback_nops_past_a_full_submission_queue_each_complete_once() {
    // 1000 callback operations submitted at once on a ring of 8 entries: all but the
    // first few find the submission queue full and wait for room; each completes once.
    const N: usize = 1000;
    let rt = runtime(1, 8);
    let h = rt
        .spawn_local_to(0, move || async move {
            let counts = CallbackCounts {
                calls: (0..N).map(|_| AtomicUsize::new(0)).collect(),
                failed: AtomicUsize::new(0),
                total: AtomicUsize::new(0),
            };
            let args: Vec<(&CallbackCounts, usize)> = (0..N).map(|i| (&counts, i)).collect();
            let ids: Vec<u64> = veloq::RuntimeContext::with_current(|cx| {
                let cx = cx.expect("on a worker");
                args.iter()
                    .map(|a| {
                        let arg = a as *const (&CallbackCounts, usize) as *mut std::ffi::c_void;
                        // SAFETY: a NOP uses no memory; `count_call` may be called with
                        // `arg` on this worker, and `args` outlives every callback
                        // (awaited below).
                        unsafe { cx.submit_io(veloq::io::RawOp::Nop, count_call, arg) }
                            .expect("nop accepted")
                    })
                    .collect()
            });
            while counts.total.load(SeqCst) < N {
                veloq::yield_now().await;
            }
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), N, "every operation has its own id");
            assert!(ids.iter().all(|&id| id > 0 && (id as i64) > 0));
            assert_eq!(counts.failed.load(SeqCst), 0);
            assert!(counts.calls.iter().all(|c| c.load(SeqCst) == 1));
        })
        .unwrap();
    rt.block_on(h).unwrap();
}

/// Operations whose callback cancels the others (see the test below).
struct Cancelling {
    ids: Vec<std::sync::atomic::AtomicU64>,
    calls: Vec<AtomicUsize>,
    odd_result: AtomicUsize,
    odd_cancel: AtomicUsize,
    total: AtomicUsize,
}

unsafe extern "C" fn cancel_the_others(
    cx: *mut veloq::RuntimeContext,
    res: i64,
    flags: u32,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: `arg` names an entry of the args the test keeps alive until every callback
    // ran; `cx` is the worker's live context (the callback contract).
    let ((ops, i), cx) = unsafe { (*(arg as *const (&Cancelling, usize)), &*cx) };
    if !(res == 0 || res == -(libc::ECANCELED as i64)) || flags != 0 {
        ops.odd_result.fetch_add(1, SeqCst);
    }
    if ops.calls[i].fetch_add(1, SeqCst) == 0 {
        // Every other operation: those completed already (earlier in this batch) are
        // gone, those later in it or still in flight take the cancel.
        for (j, id) in ops.ids.iter().enumerate() {
            if j != i {
                match cx.cancel_io(id.load(SeqCst)) {
                    Ok(()) => {}
                    Err(e) if e == -libc::ENOENT || e == -libc::EALREADY => {}
                    Err(_) => {
                        ops.odd_cancel.fetch_add(1, SeqCst);
                    }
                }
            }
        }
    }
    ops.total.fetch_add(1, SeqCst);
}

#[test]
fn callbacks_cancelling_operations_of_their_own_batch_run_once_each() {
    // 64 callback NOPs complete together; each callback cancels all the others, among
    // them operations whose completions were already taken from the ring with its own
    // and are delivered after it. Each still completes exactly once (res 0, or
    // -ECANCELED), and the driver's cancellations add no completion.
    const N: usize = 64;
    let rt = runtime(1, 256);
    let h = rt
        .spawn_local_to(0, move || async move {
            let ops = Cancelling {
                ids: (0..N).map(|_| Default::default()).collect(),
                calls: (0..N).map(|_| AtomicUsize::new(0)).collect(),
                odd_result: AtomicUsize::new(0),
                odd_cancel: AtomicUsize::new(0),
                total: AtomicUsize::new(0),
            };
            let args: Vec<(&Cancelling, usize)> = (0..N).map(|i| (&ops, i)).collect();
            veloq::RuntimeContext::with_current(|cx| {
                let cx = cx.expect("on a worker");
                for (i, a) in args.iter().enumerate() {
                    let arg = a as *const (&Cancelling, usize) as *mut std::ffi::c_void;
                    // SAFETY: a NOP uses no memory; the callback may run with `arg` on
                    // this worker, and `args` outlives every callback (awaited below).
                    let id = unsafe { cx.submit_io(veloq::io::RawOp::Nop, cancel_the_others, arg) }
                        .expect("nop accepted");
                    ops.ids[i].store(id, SeqCst);
                }
            });
            while ops.total.load(SeqCst) < N {
                veloq::yield_now().await;
            }
            // Two more trips through the ring: a stray extra completion would show.
            io::nop().await.expect("nop");
            io::nop().await.expect("nop");
            assert_eq!(ops.total.load(SeqCst), N);
            assert!(ops.calls.iter().all(|c| c.load(SeqCst) == 1));
            assert_eq!(ops.odd_result.load(SeqCst), 0);
            assert_eq!(ops.odd_cancel.load(SeqCst), 0);
        })
        .unwrap();
    rt.block_on(h).unwrap();
}

#[test]
fn sleep_waits_and_timeout_cancels() {
    let rt = runtime(2, 64);
    let h = rt
        .spawn(async {
            let t = Instant::now();
            time::sleep(Duration::from_millis(30)).await;
            let slept = t.elapsed();
            let r = time::timeout(
                Duration::from_millis(10),
                time::sleep(Duration::from_secs(60)),
            )
            .await;
            let quick = time::timeout(Duration::from_secs(60), async { 7 }).await;
            (slept, r, quick)
        })
        .unwrap();
    let (slept, r, quick) = rt.block_on(h).unwrap();
    assert!(slept >= Duration::from_millis(30), "{slept:?}");
    assert_eq!(r, Err(time::Elapsed));
    assert_eq!(quick, Ok(7));
}

#[test]
fn shutdown_cancels_in_flight_operations() {
    let rt = runtime(2, 64);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..1000 {
        let f = finished.clone();
        handles.push(
            rt.spawn(async move {
                time::sleep(Duration::from_secs(3600)).await;
                f.fetch_add(1, SeqCst);
            })
            .unwrap(),
        );
    }
    // Let them all start.
    std::thread::sleep(Duration::from_millis(100));
    rt.shutdown(Some(Duration::from_secs(30)))
        .expect("shutdown ends");
    assert_eq!(finished.load(SeqCst), 1000);
    for h in handles {
        rt.block_on(h).unwrap();
    }
}

/// Shutdown that lands while a worker with I/O in flight spins before parking: the
/// shutdown's notifier finds the worker running and writes no wake-up, so the worker
/// learns of shutdown only in its last look before sleeping. It must still cancel its
/// I/O (and so finish) rather than sleep on an operation nothing will end. Each round
/// widens that window: a long idle spin, and shutdown called the moment a second task
/// ran, as the worker heads for its spin with the first task's timer in flight.
#[test]
fn shutdown_while_a_worker_spins_with_io_in_flight_still_ends() {
    for round in 0..100 {
        let rt = Runtime::builder()
            .workers(1)
            .spin_before_park(Duration::from_millis(2))
            .build()
            .expect("runtime");
        let (tx, started) = std::sync::mpsc::channel();
        let sleeper_started = tx.clone();
        let sleeper = rt
            .spawn(async move {
                let _ = sleeper_started.send(());
                time::sleep(Duration::from_secs(3600)).await;
            })
            .unwrap();
        started.recv().unwrap();
        rt.spawn(async move {
            let _ = tx.send(());
        })
        .unwrap();
        started.recv().unwrap();
        rt.shutdown(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("round {round}: shutdown did not end: {e}"));
        // The sleep's timer was cancelled, so its task ran to its end.
        rt.block_on(sleeper)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

#[test]
fn receives_that_wait_for_ever_do_not_starve_other_io_on_a_small_ring() {
    use veloq::net::{TcpListener, TcpStream};
    // A ring of 8 entries (16 completions) and 200 receives nobody answers: the
    // connect, send and receive after them must still go through.
    let rt = runtime(1, 8);
    let h = rt
        .spawn(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut servers = Vec::new();
            let mut waiting = Vec::new();
            for _ in 0..200 {
                let c = TcpStream::connect(addr).await.unwrap();
                let (s, _) = listener.accept().await.unwrap();
                servers.push(s);
                waiting.push(
                    veloq::spawn(async move {
                        let (r, _) = c.read(Vec::with_capacity(8)).await;
                        r
                    })
                    .unwrap(),
                );
            }
            veloq::yield_now().await;
            let c = TcpStream::connect(addr).await.unwrap();
            let (s, _) = listener.accept().await.unwrap();
            c.write_all(b"through".to_vec()).await.0.unwrap();
            let (r, got) = s.read_exact(vec![0u8; 7]).await;
            r.unwrap();
            // Closing the idle servers' ends ends the waiting receives (0 bytes).
            drop(servers);
            for w in waiting {
                assert_eq!(w.await.unwrap().unwrap(), 0);
            }
            got
        })
        .unwrap();
    assert_eq!(rt.block_on(h).unwrap(), b"through");
}

/// A ring the kernel refuses (here: no descriptor left for it, RLIMIT_NOFILE) fails
/// `build` with the kernel's errno and a message that names the ring and the reason.
/// Runs in a child process (this test binary re-run for this test alone), so the lowered
/// limit touches nothing else.
#[test]
fn a_ring_the_kernel_refuses_fails_the_build_with_a_clear_error() {
    const CHILD: &str = "VELOQ_RING_REFUSED_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // Child: raise the descriptor limit one by one from "nothing more may open"
        // until a build succeeds; each failure on the way must be a clean error, and one
        // of them the ring's (its eventfd is made first, then the ring on the worker).
        let open: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .collect();
        // New descriptors take the lowest free number, and must be below the limit.
        let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
        for limit in lowest_free..lowest_free + 16 {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: 20_000.max(limit),
            };
            // SAFETY: plain syscall on a valid struct.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
            match Runtime::builder().workers(1).build() {
                Err(err) => println!(
                    "CHILD-ERROR errno={} msg={err}",
                    veloq::OsError::errno_of(&err)
                ),
                Ok(rt) => {
                    drop(rt);
                    break;
                }
            }
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_ring_the_kernel_refuses_fails_the_build_with_a_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ring_error = stdout
        .lines()
        .filter(|l| l.contains("CHILD-ERROR"))
        .find(|l| l.contains("io_uring"))
        .unwrap_or_else(|| panic!("no ring error:\n{stdout}"));
    assert!(
        ring_error.contains(&format!("errno={}", libc::EMFILE)),
        "{ring_error}"
    );
}

#[test]
fn worker_stats_count_io_submitted_and_completed() {
    let rt = runtime(1, 64);
    let before = rt.stats()[0];
    let h = rt
        .spawn_local_to(0, || async {
            for _ in 0..100 {
                io::nop().await.unwrap();
            }
        })
        .unwrap();
    rt.block_on(h).unwrap();
    // Published by the worker after it handles completions (and before it parks), so
    // possibly a moment after the task's handle resolved.
    let mut after = rt.stats()[0];
    for _ in 0..5000 {
        after = rt.stats()[0];
        if after.io_completed >= before.io_completed + 100 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(after.io_submitted >= before.io_submitted + 100, "{after:?}");
    assert!(after.io_completed >= before.io_completed + 100, "{after:?}");
    assert_eq!(after.io_stale, 0, "{after:?}");
    assert_eq!(after.io_backlog, 0, "{after:?}");
    assert!(after.io_enters > 0, "{after:?}");
}

/// `BURSTS` bursts of `BURST` local tasks on the current worker, each awaiting `op(i)` (its
/// index in the burst) and then counting itself in `done`; a burst ends before the next
/// starts, so every park brings many completions.
const BURSTS: usize = 64;
const BURST: usize = 32;
async fn bursts<F, Fut>(done: &Arc<AtomicUsize>, op: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    for _ in 0..BURSTS {
        let mut burst = Vec::new();
        for i in 0..BURST {
            let (d, op) = (done.clone(), op(i));
            burst.push(
                veloq::spawn_local(async move {
                    op.await;
                    d.fetch_add(1, SeqCst);
                })
                .unwrap(),
            );
        }
        for h in burst {
            h.await.unwrap();
        }
    }
}

/// With completion batching on and enough operations in the kernel for a park to wait for
/// a batch, every operation still completes once and outside spawns still run: a batch
/// wait is bounded, and a lone completion or a wake-up ends it. Whether a given park
/// waits for a batch depends on timing (on how many completions were already pending
/// when it began); the driver's unit tests force one
/// (`a_park_waiting_for_a_batch_still_returns_for_a_lone_wake_up`).
#[test]
fn with_completion_batching_lone_completions_and_outside_spawns_still_get_through() {
    let rt = Runtime::builder()
        .workers(1)
        .io_batch_wait(RuntimeBuilder::MAX_IO_BATCH_WAIT)
        .build()
        .expect("runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().expect("accept");
    // The peer: one byte per burst, a little after the worker asked for it (by then the
    // worker is parked).
    let (poke, poked) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        use std::io::Write;
        while poked.recv().is_ok() {
            std::thread::sleep(Duration::from_millis(1));
            client.write_all(b"x").expect("write");
        }
    });
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let h = rt
        .spawn_local_to(0, move || async move {
            // 64 timers that stay in the kernel all along (dropped, so cancelled, at the
            // end): enough operations there for a park to wait for a batch...
            let mut waiting: Vec<_> = (0..64)
                .map(|_| Box::pin(time::sleep(Duration::from_secs(3600))))
                .collect();
            std::future::poll_fn(|cx| {
                for sleep in &mut waiting {
                    assert!(sleep.as_mut().poll(cx).is_pending());
                }
                std::task::Poll::Ready(())
            })
            .await;
            // ...and bursts of 32 completions arriving together while the worker is
            // parked: 32 polls of one socket, made readable by one byte from the peer.
            let stream = Rc::new(veloq::net::TcpStream::from_std(server));
            for _ in 0..BURSTS {
                let burst: Vec<_> = (0..BURST)
                    .map(|_| {
                        let (d, stream) = (d.clone(), stream.clone());
                        veloq::spawn_local(async move {
                            stream.readable().await.expect("readable");
                            d.fetch_add(1, SeqCst);
                        })
                        .unwrap()
                    })
                    .collect();
                // Runs after the burst's tasks queued their polls (local tasks start in
                // spawn order): the polls go in, then the peer writes.
                let poke = poke.clone();
                veloq::spawn_local(async move {
                    veloq::RuntimeContext::with_current(|cx| cx.expect("worker").flush_io());
                    poke.send(()).expect("peer");
                })
                .unwrap();
                for h in burst {
                    h.await.unwrap();
                }
                let (read, _) = stream.read(vec![0u8; 8]).await;
                assert_eq!(read.expect("read"), 1);
            }
            drop(poke);
            // Lone completions.
            for _ in 0..8 {
                time::sleep(Duration::from_micros(100)).await;
                io::nop().await.expect("nop");
                d.fetch_add(1, SeqCst);
            }
            // The timers stay in the kernel while the outside spawns below wake it.
            veloq::spawn_local(async move {
                time::sleep(Duration::from_millis(300)).await;
                drop(waiting);
            })
            .unwrap();
        })
        .unwrap();
    rt.block_on(h).unwrap();
    assert_eq!(
        done.load(SeqCst),
        BURSTS * BURST + 8,
        "every operation completed once"
    );
    for i in 0..32 {
        let h = rt.spawn(async move { i * 2 }).unwrap();
        assert_eq!(rt.block_on(h).unwrap(), i * 2);
    }
    peer.join().unwrap();
    let stats = rt.worker_stats(0).expect("worker 0");
    assert!(stats.io_batched_parks <= stats.parks, "{stats:?}");
}

/// With polling on, a worker with I/O in flight polls instead of parking: timers and
/// nops still complete once each, outside spawns and mesh work still get through while it
/// polls, and the builder refuses a poll longer than the bound.
#[test]
fn with_io_polling_operations_and_outside_spawns_complete() {
    let mut refused = RuntimeBuilder::default();
    assert!(refused
        .set_io_poll(RuntimeBuilder::MAX_IO_POLL + Duration::from_nanos(1))
        .is_err());
    let rt = Runtime::builder()
        .workers(2)
        .io_poll(RuntimeBuilder::MAX_IO_POLL)
        .build()
        .expect("runtime");
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let h = rt
        .spawn_local_to(0, move || async move {
            bursts(&d, |i| async move {
                if i % 2 == 0 {
                    io::nop().await.expect("nop");
                } else {
                    time::sleep(Duration::from_micros(50)).await;
                }
            })
            .await;
            // Work from the other worker while this one polls a long timer.
            let other = veloq::spawn_to(1, async { 7 }).unwrap();
            let timer = veloq::spawn_local(time::sleep(Duration::from_millis(20))).unwrap();
            assert_eq!(other.await.unwrap(), 7);
            timer.await.unwrap();
        })
        .unwrap();
    rt.block_on(h).unwrap();
    assert_eq!(
        done.load(SeqCst),
        BURSTS * BURST,
        "every operation completed once"
    );
    // A timer in flight on worker 0 keeps it polling: spawns from outside still run.
    let long = rt
        .spawn_local_to(0, || time::sleep(Duration::from_millis(200)))
        .unwrap();
    for i in 0..32 {
        let h = rt.spawn(async move { i * 2 }).unwrap();
        assert_eq!(rt.block_on(h).unwrap(), i * 2);
    }
    rt.block_on(long).unwrap();
}
