//! The completion queue's public promises, one test each. No timing assertions: sleeps only
//! make the interesting interleaving likely, never decide the outcome.
#![cfg(not(veloq_loom))]

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use veloq::runtime::completion::{CompletionQueue, Cqe};

fn cqe(producer: u32, seq: u64) -> Cqe {
    Cqe {
        user_data: seq,
        res: -(seq as i64),
        flags: 0,
        worker: producer,
    }
}

/// What poll(2) says about `fd` right now.
fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0 (does not block).
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert!(
        n >= 0,
        "poll(2) failed: {}",
        std::io::Error::last_os_error()
    );
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Checks that each producer's entries arrive complete and in order; `next[p]` is the next
/// sequence number expected from producer `p`.
fn check_in_order(next: &mut [u64], got: &[Cqe]) {
    for e in got {
        let p = e.worker as usize;
        assert_eq!(
            e.user_data, next[p],
            "producer {p} out of order or lost an entry"
        );
        assert_eq!(e.res, -(e.user_data as i64), "entry corrupted");
        next[p] += 1;
    }
}

fn drain(q: &CompletionQueue) -> Vec<Cqe> {
    let mut all = Vec::new();
    let mut buf = [Cqe::default(); 64];
    loop {
        let n = q.poll(&mut buf);
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn cqe_has_the_c_layout() {
    assert_eq!(std::mem::size_of::<Cqe>(), 24);
    assert_eq!(std::mem::align_of::<Cqe>(), 8);
    assert_eq!(std::mem::offset_of!(Cqe, user_data), 0);
    assert_eq!(std::mem::offset_of!(Cqe, res), 8);
    assert_eq!(std::mem::offset_of!(Cqe, flags), 16);
    assert_eq!(std::mem::offset_of!(Cqe, worker), 20);
}

#[test]
fn queue_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CompletionQueue>();
}

#[test]
fn invalid_capacity_is_refused() {
    for bad in [0, CompletionQueue::MAX_CAPACITY + 1, u32::MAX] {
        let err = CompletionQueue::new(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "capacity {bad}");
    }
}

#[test]
fn capacity_rounds_up_to_a_power_of_two() {
    assert_eq!(CompletionQueue::new(1).unwrap().capacity(), 2);
    assert_eq!(CompletionQueue::new(2).unwrap().capacity(), 2);
    assert_eq!(CompletionQueue::new(5).unwrap().capacity(), 8);
    assert_eq!(CompletionQueue::new(64).unwrap().capacity(), 64);
    let max = CompletionQueue::MAX_CAPACITY;
    assert_eq!(CompletionQueue::new(max).unwrap().capacity(), max);
}

#[test]
fn poll_on_empty_queue_returns_zero() {
    let q = CompletionQueue::new(4).unwrap();
    let mut buf = [Cqe::default(); 4];
    assert_eq!(q.poll(&mut buf), 0);
    assert_eq!(q.poll(&mut []), 0);
    assert!(q.is_empty());
}

#[test]
fn overflow_keeps_every_entry_in_post_order() {
    let q = CompletionQueue::new(4).unwrap();
    for i in 0..100 {
        q.post(cqe(0, i));
    }
    assert_eq!(q.len(), 100);
    // Take a few, post more while the overflow is still non-empty: they must queue behind it.
    let mut buf = [Cqe::default(); 3];
    let mut next = [0];
    let n = q.poll(&mut buf);
    check_in_order(&mut next, &buf[..n]);
    for i in 100..150 {
        q.post(cqe(0, i));
    }
    check_in_order(&mut next, &drain(&q));
    assert_eq!(next[0], 150);
    assert!(q.is_empty());
}

#[test]
fn four_producers_into_capacity_8_lose_nothing_and_keep_order() {
    producers_race_one_poller(8, 25_000); // 100,000 in all
}

#[test]
fn four_producers_into_capacity_1_lose_nothing_and_keep_order() {
    producers_race_one_poller(1, 10_000);
}

/// `PRODUCERS` threads post `per_producer` entries each while this thread polls. Stops once
/// the producers are done and a poll finds nothing, so a lost entry fails rather than hangs.
fn producers_race_one_poller(capacity: u32, per_producer: u64) {
    const PRODUCERS: u32 = 4;
    let q = Arc::new(CompletionQueue::new(capacity).unwrap());
    let finished = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(PRODUCERS as usize + 1));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (q, start, finished) = (q.clone(), start.clone(), finished.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..per_producer {
                    q.post(cqe(p, i));
                }
                finished.fetch_add(1, Ordering::Release);
            })
        })
        .collect();
    start.wait();
    let mut next = vec![0; PRODUCERS as usize];
    let mut buf = [Cqe::default(); 16];
    loop {
        let all_posted = finished.load(Ordering::Acquire) == PRODUCERS;
        let n = q.poll(&mut buf);
        check_in_order(&mut next, &buf[..n]);
        if n == 0 {
            if all_posted {
                break;
            }
            thread::yield_now();
        }
    }
    producers.into_iter().for_each(|p| p.join().unwrap());
    assert_eq!(next, vec![per_producer; PRODUCERS as usize], "entries lost");
    assert!(q.is_empty());
    assert!(!readable(q.fd()));
}

#[test]
fn concurrent_consumers_each_entry_once_in_order_per_producer() {
    const PRODUCERS: u32 = 4;
    const CONSUMERS: usize = 3;
    const PER_PRODUCER: u64 = 20_000;
    let q = Arc::new(CompletionQueue::new(8).unwrap());
    let finished = Arc::new(AtomicU32::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (q, finished) = (q.clone(), finished.clone());
            thread::spawn(move || {
                (0..PER_PRODUCER).for_each(|i| q.post(cqe(p, i)));
                finished.fetch_add(1, Ordering::Release);
            })
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let (q, finished) = (q.clone(), finished.clone());
            thread::spawn(move || {
                let mut mine = Vec::new();
                let mut buf = vec![Cqe::default(); 1 + c * 5];
                loop {
                    let all_posted = finished.load(Ordering::Acquire) == PRODUCERS;
                    let n = q.poll(&mut buf);
                    mine.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        if all_posted {
                            return mine;
                        }
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    producers.into_iter().for_each(|p| p.join().unwrap());
    let mut seen = vec![vec![false; PER_PRODUCER as usize]; PRODUCERS as usize];
    for c in consumers {
        let mut last = vec![None; PRODUCERS as usize];
        for e in c.join().unwrap() {
            let p = e.worker as usize;
            assert!(
                last[p] < Some(e.user_data),
                "a consumer saw producer {p} out of order"
            );
            last[p] = Some(e.user_data);
            let dup = std::mem::replace(&mut seen[p][e.user_data as usize], true);
            assert!(!dup, "entry delivered twice");
        }
    }
    assert!(seen.iter().flatten().all(|&s| s), "an entry was lost");
    assert!(!readable(q.fd()));
}

#[test]
fn fd_is_readable_exactly_while_entries_wait() {
    let q = CompletionQueue::new(2).unwrap();
    let fd = q.fd();
    assert!(fd >= 0);
    assert!(!readable(fd), "readable while empty");
    q.post(cqe(0, 0));
    assert!(readable(fd), "not readable after a post");
    for i in 1..5 {
        q.post(cqe(0, i)); // past capacity: into the overflow
    }
    let mut buf = [Cqe::default(); 3];
    assert_eq!(q.poll(&mut buf), 3);
    assert!(readable(fd), "not readable with entries left");
    assert_eq!(q.poll(&mut buf), 2); // exactly what is left: drained
    assert!(!readable(fd), "readable after the queue was drained");
    q.post(cqe(0, 5));
    assert!(readable(fd), "not readable after the queue refilled");
    let mut one = [Cqe::default(); 1];
    assert_eq!(q.wait(&mut one, 1, None).unwrap(), 1);
    assert!(!readable(fd), "readable after wait drained the queue");
}

#[test]
fn fd_works_level_triggered_in_epoll() {
    let q = CompletionQueue::new(4).unwrap();
    // SAFETY: plain syscalls on descriptors we own; the event struct lives on the stack.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 7,
        };
        assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, q.fd(), &mut ev), 0);
        let mut got = [libc::epoll_event { events: 0, u64: 0 }; 1];
        assert_eq!(libc::epoll_wait(ep, got.as_mut_ptr(), 1, 0), 0);
        q.post(cqe(0, 0));
        q.post(cqe(0, 1));
        // Level-triggered: reported again and again until drained.
        assert_eq!(libc::epoll_wait(ep, got.as_mut_ptr(), 1, 0), 1);
        assert_eq!({ got[0].u64 }, 7);
        assert_eq!(libc::epoll_wait(ep, got.as_mut_ptr(), 1, 0), 1);
        drain(&q);
        assert_eq!(libc::epoll_wait(ep, got.as_mut_ptr(), 1, 0), 0);
        libc::close(ep);
    }
}

#[test]
fn wait_without_entries_times_out() {
    let q = CompletionQueue::new(4).unwrap();
    let mut buf = [Cqe::default(); 4];
    let err = q
        .wait(&mut buf, 1, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    let err = q.wait(&mut buf, 1, Some(Duration::ZERO)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut);
}

#[test]
fn wait_returns_once_min_entries_are_posted_by_another_thread() {
    let q = Arc::new(CompletionQueue::new(8).unwrap());
    let poster = {
        let q = q.clone();
        thread::spawn(move || {
            for i in 0..3 {
                thread::sleep(Duration::from_millis(5));
                q.post(cqe(0, i));
            }
        })
    };
    let mut buf = [Cqe::default(); 8];
    let n = q.wait(&mut buf, 3, None).unwrap();
    assert_eq!(n, 3);
    check_in_order(&mut [0], &buf[..n]);
    poster.join().unwrap();
}

#[test]
fn wait_returns_what_arrived_when_the_deadline_passes_short_of_min() {
    let q = CompletionQueue::new(8).unwrap();
    q.post(cqe(0, 0));
    let mut buf = [Cqe::default(); 8];
    assert_eq!(
        q.wait(&mut buf, 3, Some(Duration::from_millis(10)))
            .unwrap(),
        1
    );
}

#[test]
fn wait_returns_immediately_when_entries_are_there() {
    let q = CompletionQueue::new(8).unwrap();
    (0..5).for_each(|i| q.post(cqe(0, i)));
    let mut buf = [Cqe::default(); 8];
    // min 0 counts as 1; more than min may be returned.
    assert_eq!(q.wait(&mut buf, 0, None).unwrap(), 5);
    // min above out.len() is capped at out.len().
    (0..5).for_each(|i| q.post(cqe(0, i)));
    let mut two = [Cqe::default(); 2];
    assert_eq!(q.wait(&mut two, 10, None).unwrap(), 2);
}

#[test]
fn wait_with_empty_out_is_invalid() {
    let q = CompletionQueue::new(8).unwrap();
    let err = q.wait(&mut [], 1, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn waiters_on_several_threads_all_get_their_entries() {
    let q = Arc::new(CompletionQueue::new(4).unwrap());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || {
                let mut buf = [Cqe::default(); 1];
                let mut got = 0;
                while got < 100 {
                    got += q.wait(&mut buf, 1, None).unwrap();
                }
            })
        })
        .collect();
    for i in 0..300 {
        q.post(cqe(0, i));
    }
    waiters.into_iter().for_each(|w| w.join().unwrap());
    assert!(q.is_empty());
}

#[test]
fn owed_counts_reserved_completions_until_posted_or_released() {
    let q = CompletionQueue::new(4).unwrap();
    assert_eq!(q.owed(), 0);
    q.reserve();
    q.reserve();
    q.reserve();
    assert_eq!(q.owed(), 3);
    q.post_reserved(cqe(0, 0));
    assert_eq!(q.owed(), 2);
    assert_eq!(q.len(), 1, "post_reserved posts the entry");
    q.release_reservation();
    assert_eq!(q.owed(), 1);
    assert_eq!(q.len(), 1, "release_reservation posts nothing");
    q.post(cqe(0, 1));
    assert_eq!(q.owed(), 1, "a plain post does not touch reservations");
    q.post_reserved(cqe(0, 2));
    assert_eq!(q.owed(), 0);
    check_in_order(&mut [0], &drain(&q));
}

#[test]
fn owed_is_consistent_across_threads() {
    let q = Arc::new(CompletionQueue::new(8).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..1000 {
                    q.reserve();
                    if i % 3 == 0 {
                        q.release_reservation();
                    } else {
                        q.post_reserved(cqe(p, i));
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(q.owed(), 0);
    assert_eq!(drain(&q).len(), 4 * 666);
}

#[test]
fn fd_is_nonblocking_and_close_on_exec() {
    let q = CompletionQueue::new(4).unwrap();
    // SAFETY: F_GETFD / F_GETFL only read flags of a descriptor the queue owns.
    let (fd_flags, fl_flags) = unsafe {
        (
            libc::fcntl(q.fd(), libc::F_GETFD),
            libc::fcntl(q.fd(), libc::F_GETFL),
        )
    };
    assert!(fd_flags & libc::FD_CLOEXEC != 0);
    assert!(fl_flags & libc::O_NONBLOCK != 0);
}
