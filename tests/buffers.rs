//! The per-worker buffer pools' promises seen from a running runtime, one test each
//! (issue #4, "Buffer pools"). Direct ring use (fixed reads and writes, the provided
//! buffer ring) is tested beside the code, in src/io/.

use std::io;

use veloq::{PoolBuf, PoolStats, Runtime, RuntimeContext};

fn runtime_with_pool(counts: &[(usize, usize)]) -> Runtime {
    let mut b = Runtime::builder().workers(2);
    for &(size, count) in counts {
        b = b.buffer_pool(size, count);
    }
    b.build().expect("runtime")
}

/// Runs `f` with the context of worker `w` and returns its result.
fn on_worker<T: Send + 'static>(
    rt: &Runtime,
    w: usize,
    f: impl FnOnce(&RuntimeContext) -> T + Send + 'static,
) -> T {
    let h = rt
        .spawn_to(w, async move {
            RuntimeContext::with_current(|cx| f(cx.expect("on a worker")))
        })
        .unwrap();
    rt.block_on(h).unwrap()
}

#[test]
fn each_worker_has_a_pool_of_the_configured_classes_registered_or_flagged() {
    let rt = runtime_with_pool(&[(4096, 3), (16 << 10, 0), (64 << 10, 1)]);
    for w in 0..2 {
        let (stats, buf) = on_worker(&rt, w, |cx| {
            let b = cx.alloc_buf(100).unwrap();
            (cx.buffer_pool_stats(), b)
        });
        let expected = 3 * 4096 + (64 << 10) + 2 * (256 << 10) + (1 << 20);
        assert_eq!(stats.pool_bytes, expected as u64);
        assert_eq!(stats.allocs, 1);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert_eq!((buf.len(), buf.capacity()), (100, 4096));
        if stats.registration_failed() {
            assert_eq!(buf.buf_index(), None);
            assert_eq!(stats.registered_bytes, 0);
        } else {
            assert!(buf.buf_index().is_some());
            assert_eq!(stats.registered_bytes, stats.pool_bytes);
        }
    }
}

#[test]
fn a_bad_pool_setting_fails_the_build_with_invalid_input() {
    let e = Runtime::builder()
        .workers(1)
        .buffer_pool(8192, 4)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let mut b = Runtime::builder();
    assert!(
        b.set_buffer_pool(1 << 20, 5000).is_err(),
        "over 4 GiB in one class"
    );
    assert!(b.set_buffer_pool(1 << 20, 4096).is_ok());
}

#[test]
fn a_buffer_freed_off_its_worker_goes_back_to_that_worker_and_is_reused() {
    let rt = runtime_with_pool(&[
        (4096, 1),
        (16 << 10, 0),
        (64 << 10, 0),
        (256 << 10, 0),
        (1 << 20, 0),
    ]);
    let mut buf = on_worker(&rt, 1, |cx| cx.alloc_buf(4096).unwrap());
    assert!(buf.is_pooled());
    buf.fill(0x5a);
    let addr = buf.as_ptr() as usize;
    drop(buf); // on this (host) thread
    let (stats, again): (PoolStats, PoolBuf) = on_worker(&rt, 1, |cx| {
        let b = cx.alloc_buf(10).unwrap();
        (cx.buffer_pool_stats(), b)
    });
    assert_eq!(
        again.as_ptr() as usize,
        addr,
        "the one buffer came back to worker 1"
    );
    assert!(again.is_pooled());
    assert_eq!(stats.cross_thread_frees, 1);
    assert_eq!(stats.plain_allocs, 0);
    // Worker 0's pool never saw it.
    let other = on_worker(&rt, 0, |cx| cx.buffer_pool_stats());
    assert_eq!((other.allocs, other.frees), (0, 0));
}

#[test]
fn a_buffer_outlives_its_runtime() {
    let rt = runtime_with_pool(&[]);
    let mut buf = on_worker(&rt, 0, |cx| cx.alloc_buf(64 << 10).unwrap());
    rt.shutdown(None).unwrap();
    drop(rt);
    buf.fill(3);
    assert!(buf.iter().all(|&b| b == 3));
    drop(buf);
}
