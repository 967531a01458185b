//! The Rust side of task groups (`veloq::TaskGroup`, the logic behind `veloq_group_*`):
//! operations started from a member's callback join the group, cancel ends them, and the
//! group completes exactly once after all of them. (c-tests/test_group.c covers the C API.)

use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use veloq::io::RawOp;
use veloq::{CompletionQueue, Cqe, Placement, Runtime, RuntimeContext, TaskGroup};

/// What one member saw.
#[derive(Default)]
struct Probe {
    submitted: AtomicI64,
    calls: AtomicUsize,
    res: AtomicI64,
}

unsafe extern "C" fn on_timeout(_cx: *mut RuntimeContext, res: i64, _flags: u32, arg: *mut c_void) {
    // SAFETY: `arg` is a Probe that outlives the group (the test waits for it).
    let p = unsafe { &*(arg as *const Probe) };
    p.res.store(res, SeqCst);
    p.calls.fetch_add(1, SeqCst);
}

/// A member that starts an hour-long timeout: only a cancel ends it.
unsafe extern "C" fn member(cx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: the worker's own context.
    let cx = unsafe { &*cx };
    // SAFETY: `arg` (a Probe) outlives the operation.
    let r = unsafe {
        cx.submit_io(
            RawOp::Timeout {
                ns: 3_600_000_000_000,
            },
            on_timeout,
            arg,
        )
    };
    let p = unsafe { &*(arg as *const Probe) };
    p.submitted
        .store(r.map_or_else(|e| e as i64, |id| id as i64), SeqCst);
    0
}

fn wait_one(cq: &CompletionQueue) -> Cqe {
    let mut out = [Cqe::default(); 2];
    let n = cq
        .wait(&mut out, 1, Some(Duration::from_secs(60)))
        .expect("a completion");
    assert_eq!(n, 1, "exactly one completion");
    out[0]
}

#[test]
fn cancel_ends_the_operations_of_the_members_and_the_group_completes_once() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let cq = CompletionQueue::new(8).unwrap();
    let probes: Vec<Probe> = (0..6).map(|_| Probe::default()).collect();
    // SAFETY: `cq` outlives the group's completion (awaited below).
    let group = unsafe { TaskGroup::new(rt.handle(), Some(&cq), 42) };
    for (i, p) in probes.iter().enumerate() {
        let placement = if i % 2 == 0 {
            Placement::Balanced
        } else {
            Placement::Worker(i % 2)
        };
        // SAFETY: `member` may run with a Probe on any worker; the probes outlive it.
        unsafe { group.spawn_raw(placement, member, p as *const Probe as *mut c_void) }.unwrap();
    }
    group.close().unwrap();
    while probes.iter().any(|p| p.submitted.load(SeqCst) == 0) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!group.is_completed(), "the timeouts hold the group open");
    group.cancel();
    let e = wait_one(&cq);
    assert_eq!(e.user_data, 42);
    assert_eq!(e.res, -libc::ECANCELED as i64);
    assert!(group.is_completed());
    for p in &probes {
        assert!(p.submitted.load(SeqCst) > 0);
        assert_eq!(p.calls.load(SeqCst), 1);
        assert_eq!(p.res.load(SeqCst), -libc::ECANCELED as i64);
    }
    assert_eq!(group.close(), Err(-libc::EINVAL));
    drop(group);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(cq.poll(&mut [Cqe::default(); 1]), 0);
    assert_eq!(cq.owed(), 0);
}

#[test]
fn dropping_the_group_closes_it() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let cq = CompletionQueue::new(8).unwrap();
    // SAFETY: as above.
    let group = unsafe { TaskGroup::new(rt.handle(), Some(&cq), 7) };
    assert_eq!(cq.owed(), 1);
    drop(group);
    let e = wait_one(&cq);
    assert_eq!((e.user_data, e.res), (7, 0));
    assert_eq!(cq.owed(), 0);
}
