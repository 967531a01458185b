//! The promises of `veloq::scope`: children borrow from the parent, all of them are done
//! before the scope returns, the first failure or panic drops the siblings and comes
//! back to the parent, cancellation drops children (and ends their I/O), and only the
//! children that were woken are polled.

use std::future::{pending, poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use veloq::net::{TcpListener, TcpStream};
use veloq::{scope, time, yield_now, Runtime, ScopeError};

fn runtime() -> Runtime {
    Runtime::builder().workers(2).build().expect("runtime")
}

/// Runs `fut` as a task on a worker and waits for its output.
fn run<T: Send + 'static>(rt: &Runtime, fut: impl Future<Output = T> + Send + 'static) -> T {
    let h = rt.spawn(fut).unwrap();
    rt.block_on(h).unwrap()
}

/// Counts its drops.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn children_borrow_from_the_parent_and_hand_back_their_values() {
    let rt = runtime();
    let total = run(&rt, async {
        let data: Vec<u64> = (1..=100).collect();
        let hits = AtomicUsize::new(0);
        let (data, hits_ref) = (&data, &hits);
        let sum = scope(|s| async move {
            let handles: Vec<_> = data
                .chunks(10)
                .map(|chunk| {
                    s.spawn(async move {
                        yield_now().await;
                        hits_ref.fetch_add(1, SeqCst);
                        Ok::<u64, ()>(chunk.iter().sum())
                    })
                })
                .collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await.expect("child succeeded");
            }
            Ok(sum)
        })
        .await
        .unwrap();
        assert_eq!(hits.load(SeqCst), 10);
        sum
    });
    assert_eq!(total, 5050);
}

#[test]
fn every_child_is_finished_before_the_scope_returns() {
    let rt = runtime();
    run(&rt, async {
        let finished: Vec<AtomicBool> = (0..20).map(|_| AtomicBool::new(false)).collect();
        let f = &finished;
        scope(|s| async move {
            for (i, flag) in f.iter().enumerate() {
                s.spawn(async move {
                    for _ in 0..i {
                        yield_now().await;
                    }
                    time::sleep(Duration::from_millis(i as u64 % 3)).await;
                    flag.store(true, SeqCst);
                    Ok::<(), ()>(())
                });
            }
            // The body returns at once, without awaiting any handle.
            Ok(())
        })
        .await
        .unwrap();
        assert!(finished.iter().all(|f| f.load(SeqCst)));
    });
}

#[test]
fn an_error_in_one_child_drops_its_siblings_and_is_returned() {
    let rt = runtime();
    run(&rt, async {
        let drops = Arc::new(AtomicUsize::new(0));
        let body_dropped = Arc::new(AtomicUsize::new(0));
        let (d, bd) = (drops.clone(), body_dropped.clone());
        let r = scope(|s| async move {
            let _body_guard = DropCounter(bd);
            let mut siblings = Vec::new();
            for _ in 0..5 {
                let guard = DropCounter(d.clone());
                siblings.push(s.spawn(async move {
                    let _guard = guard;
                    pending::<()>().await;
                    Ok(())
                }));
            }
            s.spawn(async {
                yield_now().await;
                Err::<(), _>("boom")
            });
            for h in siblings {
                h.await;
            }
            Ok(())
        })
        .await;
        match r {
            Err(ScopeError::Failed(e)) => assert_eq!(e, "boom"),
            other => panic!("expected the child's error, got {other:?}"),
        }
        assert_eq!(drops.load(SeqCst), 5, "every sibling was dropped");
        assert_eq!(body_dropped.load(SeqCst), 1, "the body was dropped");
    });
}

#[test]
fn an_error_of_the_body_drops_every_child() {
    let rt = runtime();
    run(&rt, async {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let r = scope(|s| async move {
            for _ in 0..3 {
                let guard = DropCounter(d.clone());
                s.spawn(async move {
                    let _guard = guard;
                    pending::<()>().await;
                    Ok::<(), i32>(())
                });
            }
            yield_now().await;
            Err::<(), i32>(7)
        })
        .await;
        assert!(matches!(r, Err(ScopeError::Failed(7))));
        assert_eq!(drops.load(SeqCst), 3);
    });
}

#[test]
fn a_panicking_child_drops_its_siblings_and_its_payload_reaches_the_parent() {
    let rt = runtime();
    run(&rt, async {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let r = scope(|s| async move {
            let guard = DropCounter(d);
            s.spawn(async move {
                let _guard = guard;
                pending::<()>().await;
                Ok::<(), ()>(())
            });
            s.spawn(async {
                yield_now().await;
                panic!("child exploded");
                #[allow(unreachable_code)]
                Ok(())
            });
            Ok(())
        })
        .await;
        assert_eq!(drops.load(SeqCst), 1);
        let err = r.expect_err("the child panicked");
        assert!(err.is_panic());
        let resumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            err.into_failed_or_resume();
        }))
        .expect_err("the panic is resumed in the parent");
        assert_eq!(resumed.downcast_ref::<&str>(), Some(&"child exploded"));
    });
}

#[test]
fn cancel_drops_unfinished_children_and_the_body_result_is_returned() {
    let rt = runtime();
    run(&rt, async {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let r = scope(|s| async move {
            let mut handles = Vec::new();
            for _ in 0..4 {
                let guard = DropCounter(d.clone());
                handles.push(s.spawn(async move {
                    let _guard = guard;
                    pending::<()>().await;
                    Ok::<u32, ()>(1)
                }));
            }
            let quick = s.spawn(async { Ok(2) });
            assert_eq!(quick.await, Some(2));
            s.cancel();
            assert!(s.is_cancelled());
            for h in handles {
                assert_eq!(h.await, None, "a cancelled child gives no value");
            }
            let late = s.spawn(async { Ok(3) });
            assert_eq!(late.await, None, "spawned after cancel: dropped unrun");
            Ok("body's value")
        })
        .await;
        assert_eq!(r.unwrap(), "body's value");
        assert_eq!(drops.load(SeqCst), 4);
    });
}

#[test]
fn dropping_the_scope_future_drops_its_children() {
    let rt = runtime();
    run(&rt, async {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let r = time::timeout(
            Duration::from_millis(10),
            scope(|s| async move {
                for _ in 0..3 {
                    let guard = DropCounter(d.clone());
                    s.spawn(async move {
                        let _guard = guard;
                        pending::<()>().await;
                        Ok::<(), ()>(())
                    });
                }
                Ok(())
            }),
        )
        .await;
        assert!(r.is_err(), "the children never finish");
        assert_eq!(drops.load(SeqCst), 3);
    });
}

/// A connected pair on the current worker: (client end, server end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

#[test]
fn a_child_blocked_on_a_socket_read_is_dropped_and_its_read_cancelled() {
    let rt = runtime();
    let got = run(&rt, async {
        let (client, server) = pair().await;
        let server_ref = &server;
        let r = scope(|s| async move {
            s.spawn(async move {
                // Nothing is sent: this read waits until it is cancelled.
                let (r, _buf) = server_ref.read(vec![0u8; 64]).await;
                r.map(|_| ()).map_err(|e| e.to_string())
            });
            s.spawn(async {
                time::sleep(Duration::from_millis(2)).await;
                Err::<(), _>("give up".to_string())
            });
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(ScopeError::Failed(ref e)) if e == "give up"));
        // The dropped read was cancelled: it does not swallow what comes next.
        client.write_all(b"after".to_vec()).await.0.unwrap();
        let (r, buf) = server.read_exact(vec![0u8; 5]).await;
        r.unwrap();
        buf
    });
    assert_eq!(&got[..], b"after");
}

/// A child that counts its polls and finishes once its flag is set.
struct Probe {
    polls: Arc<AtomicUsize>,
    go: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Future for Probe {
    type Output = Result<(), ()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls.fetch_add(1, SeqCst);
        if self.go.load(SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn only_the_children_that_were_woken_are_polled() {
    let rt = runtime();
    run(&rt, async {
        const N: usize = 100;
        let polls: Vec<_> = (0..N).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let gos: Vec<_> = (0..N).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let wakers: Vec<_> = (0..N).map(|_| Arc::new(Mutex::new(None))).collect();
        let (p, g, w) = (&polls, &gos, &wakers);
        scope(|s| async move {
            for i in 0..N {
                s.spawn(Probe {
                    polls: p[i].clone(),
                    go: g[i].clone(),
                    waker: w[i].clone(),
                });
            }
            // Let every child run once and park.
            poll_fn(|cx| {
                if w.iter().all(|w| w.lock().unwrap().is_some()) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
            for i in 0..N {
                g[i].store(true, SeqCst);
                w[i].lock().unwrap().take().unwrap().wake();
                yield_now().await;
                // Child i ran a second time and finished; the others stayed untouched.
                assert_eq!(p[i].load(SeqCst), 2);
                for (j, pj) in p.iter().enumerate().skip(i + 1) {
                    assert_eq!(pj.load(SeqCst), 1, "child {j} was polled unwoken");
                }
            }
            Ok::<(), ()>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_child_may_spawn_siblings_through_a_cloned_scope() {
    let rt = runtime();
    let n = run(&rt, async {
        let count = AtomicUsize::new(0);
        let c = &count;
        scope(|s| async move {
            let s2 = s.clone();
            s.spawn(async move {
                for _ in 0..10 {
                    s2.spawn(async move {
                        c.fetch_add(1, SeqCst);
                        Ok::<(), ()>(())
                    });
                }
                Ok(())
            });
            Ok(())
        })
        .await
        .unwrap();
        count.load(SeqCst)
    });
    assert_eq!(n, 10);
}

#[test]
fn a_scope_handle_kept_past_its_scope_drops_what_it_spawns_unrun() {
    let rt = runtime();
    run(&rt, async {
        let ran = AtomicBool::new(false);
        let ran_ref = &ran;
        let kept = scope(|s| async move { Ok::<_, ()>(s) }).await.unwrap();
        let late = kept.spawn(async move {
            ran_ref.store(true, SeqCst);
            Ok(())
        });
        assert!(late.is_finished());
        assert_eq!(late.await, None);
        assert!(!ran.load(SeqCst));
    });
}

#[test]
fn a_scope_future_is_send_when_its_body_is() {
    fn assert_send<T: Send>(_: &T) {}
    let data = [1u8, 2, 3];
    let data = &data;
    let fut = scope(|s| async move {
        s.spawn(async move { Ok::<u8, ()>(data[0]) }).await;
        Ok(())
    });
    assert_send(&fut);
}
