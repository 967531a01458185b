//! A worker's stealable queue ([`StealQueue`]): unadopted `Send` tasks in an intrusive
//! queue ([`TaskIntake`]), callbacks in a crossbeam `Injector`.
//!
//! Every `Send` task is its own heap allocation, so the queue needs no memory of its own:
//! a task is linked in through a [`Link`] in its header. Pushing is one swap of the
//! queue's tail and one store into the previous task's link, with no slot array to
//! allocate and zero, no per-slot state word, and no cache line touched besides the tail
//! and the two tasks. Taking is done under a try-lock, by the owning worker or a thief,
//! a batch at a time. Tasks keep their order among themselves, callbacks theirs; a task
//! and a callback queued on one worker may run in either order (stealable work never
//! promised one: a thief may take either).
//!
//! The queue (a Mellor-Crummey / Vyukov style linked list):
//! - `tail` is the last node pushed, null when the queue is empty. Only a consumer makes
//!   it null, by a CAS from the last node it takes, so **empty ⟺ `tail` is null**; this is
//!   what `is_empty` reads, and what the park handshake relies on (a producer calls
//!   `WorkerShared::notify` after its push, a parking worker reads `is_empty` after
//!   announcing itself: one of the two sees the other).
//! - `head` is the first node not taken yet. A producer that swapped a null tail (the
//!   queue was empty) stores its node there; any other producer stores its node into its
//!   predecessor's link. Between its swap and that store a producer's node is queued but
//!   not reachable yet: a consumer then takes nothing and tries again later (the producer
//!   notifies the worker right after its store).
//! - A node is taken only once its link is set (its successor is reachable) or by the CAS
//!   that empties `tail` (it has no successor): after that no producer touches it.

use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use crossbeam_deque::{Injector, Steal, Worker};
use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicPtr};

use super::job::Job;
use super::task::TaskRef;

/// The link an intrusive queue node carries (a task's is in its header).
#[derive(Debug)]
pub(crate) struct Link {
    next: AtomicPtr<Link>,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The word, for a node in no queue (a task reuses it once taken out: see
    /// `task::Header::live_prev`).
    #[inline]
    pub(crate) fn get(&self) -> *mut Link {
        self.next.load(Relaxed)
    }

    /// Sets the word of a node in no queue.
    #[inline]
    pub(crate) fn set(&self, value: *mut Link) {
        self.next.store(value, Relaxed);
    }
}

/// A multi-producer queue of nodes, taken from a batch at a time by one consumer at a
/// time (a try-lock): see the module comment.
pub(crate) struct TaskIntake {
    /// The last node pushed; null when empty. Swapped by every producer.
    tail: CachePadded<AtomicPtr<Link>>,
    /// The consumers' line.
    consumer: CachePadded<Consumer>,
}

struct Consumer {
    /// The first node not taken yet; null when the queue is empty or while its first
    /// producer is between its swap and its store.
    head: AtomicPtr<Link>,
    /// Held by the thread taking nodes.
    busy: AtomicBool,
}

impl TaskIntake {
    pub(crate) fn new() -> TaskIntake {
        TaskIntake {
            tail: CachePadded::new(AtomicPtr::new(ptr::null_mut())),
            consumer: CachePadded::new(Consumer {
                head: AtomicPtr::new(ptr::null_mut()),
                busy: AtomicBool::new(false),
            }),
        }
    }

    /// Appends `node`. Any thread.
    ///
    /// # Safety
    /// `node` is in no queue and stays allocated (and unmoved) until it is taken.
    #[inline]
    pub(crate) unsafe fn push(&self, node: NonNull<Link>) {
        let node = node.as_ptr();
        // SAFETY: caller's promise: the node is ours until it is queued.
        unsafe { (*node).next.store(ptr::null_mut(), Relaxed) };
        // Release: the node's contents (the task) go with it; Acquire: the predecessor's
        // link is written below.
        let prev = self.tail.swap(node, AcqRel);
        if prev.is_null() {
            self.consumer.head.store(node, Release);
        } else {
            // SAFETY: `prev` cannot be taken before this store (it is not the tail any
            // more, and its link is still null), so it is alive.
            unsafe { (*prev).next.store(node, Release) };
        }
    }

    /// Whether no node is queued (nodes mid-push count as queued). Any thread.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.tail.load(Acquire).is_null()
    }

    /// Takes up to `limit` nodes, oldest first, handing each to `f`; returns how many.
    /// Takes none when another thread is taking, or while a producer is between its swap
    /// and its store (it notifies the worker right after). Any thread.
    pub(crate) fn take_batch(&self, limit: usize, mut f: impl FnMut(NonNull<Link>)) -> usize {
        if self
            .consumer
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return 0;
        }
        let mut n = 0;
        while n < limit {
            let Some(node) = self.take_one() else { break };
            f(node);
            n += 1;
        }
        self.consumer.busy.store(false, Release);
        n
    }

    /// Takes the oldest reachable node. The caller holds `busy`.
    fn take_one(&self) -> Option<NonNull<Link>> {
        let head = NonNull::new(self.consumer.head.load(Acquire))?;
        // SAFETY: a queued node stays allocated until it is taken, which only the holder
        // of `busy` (us) does.
        let next = unsafe { head.as_ref() }.next.load(Acquire);
        if !next.is_null() {
            // `tail` is not null (`head` is queued), so no producer stores `head` now.
            self.consumer.head.store(next, Relaxed);
            return Some(head);
        }
        // `head` is the last reachable node: take it only if it is the tail too. `head`
        // is cleared first: once the CAS below succeeds, the next producer finds a null
        // tail and stores its node there. Until then no producer writes `head` (the tail
        // is not null).
        self.consumer.head.store(ptr::null_mut(), Relaxed);
        if self
            .tail
            .compare_exchange(head.as_ptr(), ptr::null_mut(), AcqRel, Relaxed)
            .is_err()
        {
            // A producer swapped after `head` and will link it shortly.
            self.consumer.head.store(head.as_ptr(), Relaxed);
            return None;
        }
        Some(head)
    }

    /// How many nodes are queued and reachable (for dumps: counts them, under the
    /// consumer lock; 0 while another thread is taking).
    pub(crate) fn len(&self) -> usize {
        if self
            .consumer
            .busy
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_err()
        {
            return 0;
        }
        let mut n = 0;
        let mut node = self.consumer.head.load(Acquire);
        while !node.is_null() {
            n += 1;
            // SAFETY: queued nodes stay allocated while we hold `busy`.
            node = unsafe { &*node }.next.load(Acquire);
        }
        self.consumer.busy.store(false, Release);
        n
    }
}

/// A worker's stealable work: `Send` tasks in a [`TaskIntake`], callbacks in an
/// `Injector`. Taken from by its worker and by thieves, a batch at a time.
pub(crate) struct StealQueue {
    tasks: TaskIntake,
    callbacks: Injector<Job>,
}

impl StealQueue {
    pub(crate) fn new() -> StealQueue {
        StealQueue {
            tasks: TaskIntake::new(),
            callbacks: Injector::new(),
        }
    }

    /// Queues a job. Any thread.
    #[inline]
    pub(crate) fn push(&self, job: Job) {
        match job.into_task() {
            // SAFETY: an unadopted task is in no queue, and stays allocated until the
            // job taken back out of this queue runs or drops it.
            Ok(task) => unsafe { self.tasks.push(task.queue_link()) },
            Err(job) => self.callbacks.push(job),
        }
    }

    /// Whether nothing is queued (a job mid-push counts as queued).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.callbacks.is_empty()
    }

    /// Queued jobs (a snapshot, for dumps).
    pub(crate) fn len(&self) -> usize {
        self.tasks.len() + self.callbacks.len()
    }

    /// Takes up to `limit` jobs: returns the first, pushes the others onto `dest`.
    /// Callbacks get up to half of `limit` when both kinds wait, so neither kind starves
    /// the other.
    pub(crate) fn steal_batch_with_limit_and_pop(
        &self,
        dest: &Worker<Job>,
        limit: usize,
    ) -> Steal<Job> {
        let mut first = None;
        let mut room = limit.max(1);
        if !self.callbacks.is_empty() {
            let share = if self.tasks.is_empty() {
                room
            } else {
                (room / 2).max(1)
            };
            let before = dest.len();
            if let Steal::Success(job) = self.callbacks.steal_batch_with_limit_and_pop(dest, share)
            {
                room = room.saturating_sub(1 + dest.len() - before);
                first = Some(job);
            }
        }
        if room > 0 && !self.tasks.is_empty() {
            self.tasks.take_batch(room, |link| {
                // SAFETY: every node of `tasks` is the link of an unadopted task.
                let job = Job::Task(unsafe { TaskRef::from_queue_link(link) });
                if first.is_none() {
                    first = Some(job);
                } else {
                    dest.push(job);
                }
            });
        }
        match first {
            Some(job) => Steal::Success(job),
            None => Steal::Empty,
        }
    }
}

impl Drop for StealQueue {
    fn drop(&mut self) {
        // Tasks never taken: dropping their jobs resolves their handles (Cancelled).
        while self.tasks.take_batch(usize::MAX, |link| {
            // SAFETY: as in `steal_batch_with_limit_and_pop`.
            drop(Job::Task(unsafe { TaskRef::from_queue_link(link) }));
        }) > 0
        {}
    }
}

#[cfg(veloq_loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// A node with a payload, as a task is one with a link in its header.
    #[repr(C)]
    struct Item {
        link: Link,
        value: usize,
    }

    fn item(value: usize) -> NonNull<Link> {
        let b = Box::new(Item {
            link: Link::new(),
            value,
        });
        // SAFETY: `link` is the first field of a repr(C) struct.
        unsafe { NonNull::new_unchecked(Box::into_raw(b) as *mut Link) }
    }

    fn value_of(link: NonNull<Link>) -> usize {
        // SAFETY: made by `item`, taken exactly once.
        unsafe { Box::from_raw(link.as_ptr() as *mut Item) }.value
    }

    fn take_all(q: &TaskIntake, limit: usize, out: &mut Vec<usize>) -> usize {
        q.take_batch(limit, |l| out.push(value_of(l)))
    }

    /// Two producers push while a consumer takes: every node is taken exactly once, each
    /// producer's nodes in the order pushed, and once the producers are done one batch
    /// takes the rest and leaves the queue empty.
    #[test]
    fn loom_intake_takes_every_node_once_in_order() {
        loom::model(|| {
            let q = Arc::new(TaskIntake::new());
            let producers: Vec<_> = (0..2)
                .map(|p| {
                    let q = q.clone();
                    loom::thread::spawn(move || {
                        // SAFETY: fresh nodes, freed only by whoever takes them.
                        unsafe { q.push(item(p * 10)) };
                        unsafe { q.push(item(p * 10 + 1)) };
                    })
                })
                .collect();
            let mut got = Vec::new();
            take_all(&q, 3, &mut got);
            for p in producers {
                p.join().unwrap();
            }
            // Every push is complete: one batch takes the rest.
            take_all(&q, usize::MAX, &mut got);
            assert!(q.is_empty());
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 10, 11]);
            for p in [0, 10] {
                let a = got.iter().position(|&v| v == p).unwrap();
                let b = got.iter().position(|&v| v == p + 1).unwrap();
                assert!(a < b, "a producer's nodes keep their order");
            }
        });
    }

    /// A queue holding node 1, and a thread pushing node 2 onto it.
    fn one_node_and_a_racing_push() -> (Arc<TaskIntake>, loom::thread::JoinHandle<()>) {
        let q = Arc::new(TaskIntake::new());
        // SAFETY: fresh node.
        unsafe { q.push(item(1)) };
        let producer = {
            let q = q.clone();
            loom::thread::spawn(move || {
                // SAFETY: fresh node.
                unsafe { q.push(item(2)) };
            })
        };
        (q, producer)
    }

    /// A consumer emptying the queue races a producer pushing onto it (the CAS on the
    /// tail against the swap): the new node is neither lost nor taken twice, and
    /// `is_empty` turns false with the push.
    #[test]
    fn loom_intake_last_take_races_push() {
        loom::model(|| {
            let (q, producer) = one_node_and_a_racing_push();
            let mut got = Vec::new();
            take_all(&q, usize::MAX, &mut got);
            producer.join().unwrap();
            take_all(&q, usize::MAX, &mut got);
            assert!(q.is_empty());
            assert_eq!(got, vec![1, 2]);
        });
    }

    /// Two consumers (the owner and a thief) take while a producer pushes: the try-lock
    /// keeps them apart, and every node is taken exactly once.
    #[test]
    fn loom_intake_two_consumers_take_each_node_once() {
        loom::model(|| {
            let (q, producer) = one_node_and_a_racing_push();
            let thief = {
                let q = q.clone();
                loom::thread::spawn(move || {
                    let mut got = Vec::new();
                    take_all(&q, 1, &mut got);
                    got
                })
            };
            let mut got = Vec::new();
            take_all(&q, 1, &mut got);
            producer.join().unwrap();
            got.extend(thief.join().unwrap());
            // Every push is complete: one batch takes the rest.
            take_all(&q, usize::MAX, &mut got);
            assert!(q.is_empty());
            got.sort();
            assert_eq!(got, vec![1, 2]);
        });
    }

    /// A worker parking while a producer pushes and notifies (the order `StealQueue`
    /// users follow): either the worker sees the node before sleeping, or the producer is
    /// told to wake it. Never neither.
    #[test]
    fn loom_intake_push_then_notify_never_loses_a_parking_worker() {
        use crate::runtime::park::ParkState;
        use crate::sync::AtomicBool as Flag;
        use std::sync::atomic::Ordering::SeqCst;
        loom::model(|| {
            let q = Arc::new(TaskIntake::new());
            let park = Arc::new(ParkState::new());
            let woken = Arc::new(Flag::new(false));
            let producer = {
                let (q, park, woken) = (q.clone(), park.clone(), woken.clone());
                loom::thread::spawn(move || {
                    // SAFETY: fresh node.
                    unsafe { q.push(item(1)) };
                    if park.notify() {
                        woken.store(true, SeqCst);
                    }
                })
            };
            park.begin_park();
            let slept = if q.is_empty() {
                park.commit_park()
            } else {
                park.abort_park();
                false
            };
            producer.join().unwrap();
            if slept {
                assert!(woken.load(SeqCst), "a sleeping worker must be woken");
            }
            let mut got = Vec::new();
            take_all(&q, usize::MAX, &mut got);
            assert_eq!(got, vec![1]);
        });
    }
}
