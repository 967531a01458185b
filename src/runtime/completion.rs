//! Completion queues: where finished work reports back to whoever is waiting for it.
//!
//! A [`CompletionQueue`] takes [`Cqe`]s from any number of threads (workers finishing tasks,
//! host threads calling `veloq_cq_post`) and hands them to any number of consumers, which
//! either poll it, block in [`CompletionQueue::wait`], or watch its eventfd from their own
//! epoll loop. It never drops an entry and never makes a poster wait for room.
//!
//! # Design
//!
//! **Ring.** The fast path is a bounded multi-producer multi-consumer ring (Vyukov's
//! sequence-numbered slots). Each slot carries a `seq` word: `seq == pos` means "free for the
//! poster of position `pos`", `seq == pos + 1` means "holds the entry of position `pos`",
//! `seq == pos + size` means "consumed, free for the next lap". A poster claims a position by
//! CAS on `tail`, writes the entry and publishes it with a `Release` store of `seq`; a
//! consumer checks that a run of slots is published, claims the whole run with one CAS on
//! `head`, copies it out and frees the slots. No allocation and no lock per entry; `head` and
//! `tail` live on their own cache lines.
//!
//! **Overflow.** When the ring is full the entry goes to an overflow list (a `VecDeque` under
//! a mutex) whose length is mirrored in the atomic `overflow_len`. Two rules keep each
//! poster's entries in order across the boundary:
//! 1. *No overtaking:* a poster that sees `overflow_len != 0` appends to the overflow even if
//!    the ring has room. A poster always sees its own overflow entries (coherence on one
//!    atomic), so once one of its entries is in the overflow, all its later ones go behind it
//!    until the overflow has been consumed.
//! 2. *Ring first:* a consumer takes from the overflow only while holding its lock and after
//!    seeing `head == tail`, i.e. every position ever claimed in the ring (even one whose
//!    poster is still writing it) has been claimed by a consumer. Anything a poster put in the
//!    ring before it appended to the overflow happens-before that append (and so before the
//!    consumer's lock), so it is already gone.
//!
//! With several concurrent consumers, "delivered in order" means in the order the entries
//! were claimed: each consumer sees each poster's entries in increasing order.
//!
//! **Eventfd (level readiness, no syscall on the hot path).** The `signaled` flag says "the
//! eventfd's count is, or is about to be, non-zero". Two transitions (`raise_signal`,
//! `clear_signal`, invariants written above each):
//! - CLEAR → SIGNALED: after its push, a poster that sees the flag clear swaps it to set; the
//!   one whose swap flipped it writes the eventfd. So a post to a queue that already holds
//!   entries costs a fence and two loads, no system call.
//! - SIGNALED → CLEAR: a consumer that leaves the queue empty reads the eventfd; only if that
//!   read took the count does it clear the flag, then (after a `SeqCst` fence) looks at the
//!   queue again and raises the flag itself if a post slipped in. A read that finds the count
//!   at 0 means the flipper's write is still in flight, so the flag stays set.
//!
//! Readiness is kept only once somebody holds the descriptor: until the first
//! [`CompletionQueue::fd`] call (transition UNWATCHED → WATCHED, `watch`) posts leave the
//! flag and the eventfd alone, so a host that reaps with `poll` and `wait` pays no eventfd
//! system call at all.
//!
//! **Blocking wait.** [`CompletionQueue::wait`] sleeps on a futex word (`wake`) after
//! registering in `waiters`; a post makes the wake syscall only when `waiters != 0`. The
//! waiter takes entries as they come, so it never spins while fewer than `min` are there.
//!
//! Both kernel objects sit behind the tiny `sys` module; under `--cfg loom` the eventfd is an
//! atomic counter and the futex a mutex plus condvar, so the model checker explores the same
//! protocol code that ships.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::sync::{
    fence, spin_hint, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, UnsafeCell,
};

use self::sys::{EventFd, Futex};

/// One completion, laid out exactly like the C `veloq_cqe`.
///
/// `user_data` is the value given at submission, `res` the result (a task's return value, or
/// a negative errno), `flags` is reserved (0 for now) and `worker` the index of the worker
/// that produced it. The queue delivers entries exactly as posted. A plain value: may be
/// copied between threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// The submission's `user_data`, returned untouched.
    pub user_data: u64,
    /// The result: a task's return value or a negative errno.
    pub res: i64,
    /// Reserved; 0.
    pub flags: u32,
    /// Index of the worker that produced the completion, as filled in by the poster.
    pub worker: u32,
}

/// One ring position: its sequence word and the entry it holds.
struct Slot {
    /// `pos` = free for the poster of `pos`; `pos + 1` = holds `pos`'s entry;
    /// `pos + size` = consumed, free for the next lap.
    seq: AtomicUsize,
    cqe: UnsafeCell<Cqe>,
}

/// The words every post reads and almost never writes, together on one cache line.
struct Flags {
    /// Entries in the overflow list; written only with the overflow lock held.
    overflow_len: AtomicUsize,
    /// The eventfd's count is, or is about to be, non-zero.
    signaled: AtomicBool,
    /// Threads registered in `wait` that may be asleep on the futex.
    waiters: AtomicU32,
    /// The descriptor was handed out (`fd` was called): posts keep it readable while
    /// entries wait. Set once, never cleared.
    watched: AtomicBool,
}

/// The layout of `CompletionQueue::settled`: reservations given back (by a post or a
/// release) in the high bits, posts under way in the low bits. Both change in one RMW when a
/// post starts, so a poster pays two RMWs on a line no submitter writes.
struct Settled;

impl Settled {
    /// Bits of the posts-under-way count (more concurrent posters than threads can exist).
    const POSTING_BITS: u32 = 24;
    const POSTING_ONE: u64 = 1;
    const SETTLE_ONE: u64 = 1 << Self::POSTING_BITS;
    /// The settle count wraps at 2^40; `reserved` is compared modulo the same.
    const COUNT_MASK: u64 = (1 << (64 - Self::POSTING_BITS)) - 1;

    fn posting(word: u64) -> u64 {
        word & (Self::SETTLE_ONE - 1)
    }

    /// Reservations not settled, from `reserved` and a `settled` word read before it.
    fn owed(reserved: u64, word: u64) -> u64 {
        reserved.wrapping_sub(word >> Self::POSTING_BITS) & Self::COUNT_MASK
    }
}

/// Above this many entries of unused room, an emptied overflow list gives its memory back.
const OVERFLOW_KEEP: usize = 4096;

/// A multi-producer, multi-consumer completion queue that never drops an entry.
///
/// `Send + Sync`: share it by reference or `Arc`; every method may be called from any thread,
/// concurrently with any other. See the module documentation for the design.
pub struct CompletionQueue {
    /// Next position a poster claims.
    tail: CachePadded<AtomicUsize>,
    /// Next position a consumer claims.
    head: CachePadded<AtomicUsize>,
    /// Reservations ever made (see [`Settled`] for the other half of the count). Written only
    /// by submitters, so a host thread that submits keeps this line to itself.
    reserved: CachePadded<AtomicU64>,
    /// Reservations ever given back, and posts under way: written only by posters.
    settled: CachePadded<AtomicU64>,
    flags: CachePadded<Flags>,
    /// Ring size - 1 (the size is a power of two).
    mask: usize,
    slots: Box<[Slot]>,
    /// Entries that did not fit in the ring, oldest first.
    overflow: Mutex<VecDeque<Cqe>>,
    /// Futex word of `wait`; bumped by posts that see a registered waiter.
    wake: Futex,
    eventfd: EventFd,
}

// SAFETY: the only field that is not `Sync` by itself is each slot's `UnsafeCell`. A slot's
// cell is written only by the one poster whose CAS on `tail` claimed that position while
// `seq == pos`, and read only by the one consumer whose CAS on `head` claimed it while
// `seq == pos + 1`; the writer publishes with a `Release` store of `seq` that the reader's
// `Acquire` load observes, and the reader frees the slot the same way. So no two threads
// ever access a cell concurrently, and sharing `&CompletionQueue` is sound.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Largest accepted capacity (2^20 entries in the ring).
    pub const MAX_CAPACITY: u32 = 1 << 20;

    /// Creates a queue whose ring holds `capacity` entries, rounded up to a power of two and
    /// to at least 2 (entries beyond it wait in the overflow list, never dropped), with its own eventfd
    /// (`EFD_NONBLOCK | EFD_CLOEXEC`).
    ///
    /// Errors: `InvalidInput` unless `1 <= capacity <= MAX_CAPACITY`; the OS error if the
    /// eventfd cannot be created. Callable from any thread.
    pub fn new(capacity: u32) -> io::Result<CompletionQueue> {
        if capacity == 0 || capacity > Self::MAX_CAPACITY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "completion queue capacity must be in 1..=MAX_CAPACITY",
            ));
        }
        // At least 2: with one slot, "holds the entry of `pos`" (`seq == pos + 1`) would read
        // as "free for the poster of `pos + 1`" and a post could overwrite an unread entry.
        let size = capacity.next_power_of_two().max(2) as usize;
        let eventfd = EventFd::new()?;
        let slots = (0..size)
            .map(|pos| Slot {
                seq: AtomicUsize::new(pos),
                cqe: UnsafeCell::new(Cqe::default()),
            })
            .collect();
        Ok(CompletionQueue {
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            reserved: CachePadded::new(AtomicU64::new(0)),
            settled: CachePadded::new(AtomicU64::new(0)),
            flags: CachePadded::new(Flags {
                overflow_len: AtomicUsize::new(0),
                signaled: AtomicBool::new(false),
                watched: AtomicBool::new(false),
                waiters: AtomicU32::new(0),
            }),
            mask: size - 1,
            slots,
            overflow: Mutex::new(VecDeque::new()),
            wake: Futex::new(),
            eventfd,
        })
    }

    /// Number of entries the ring holds before posts spill into the overflow list: the
    /// requested capacity rounded up to a power of two, at least 2. Callable from any thread.
    pub fn capacity(&self) -> u32 {
        // Fits: the size is at most MAX_CAPACITY.
        (self.mask + 1) as u32
    }

    /// Appends `cqe`. Never fails, never blocks on the consumer, never drops: past the ring's
    /// capacity the entry waits in the overflow list (which allocates). Entries posted by one
    /// thread are delivered in the order it posted them.
    ///
    /// Makes a system call only when the queue was empty and its [`fd`](Self::fd) has been
    /// handed out (to make the eventfd readable), or a thread is registered in
    /// [`wait`](Self::wait) (to wake it). Callable from any thread.
    pub fn post(&self, cqe: Cqe) {
        // This thread's earlier completions still gathered in its worker's batch go first.
        flush_own_batch();
        self.post_unbatched(cqe);
    }

    fn post_unbatched(&self, cqe: Cqe) {
        // Rule 1 (no overtaking): once anything is in the overflow, go behind it.
        if self.flags.overflow_len.load(Acquire) != 0 || !self.ring_push(cqe) {
            self.overflow_push(cqe);
        }
        self.announce();
    }

    /// Appends `cqe(0..n)` in order, as `n` posts by this thread would, but claims
    /// the ring positions for the whole run with one CAS and makes the eventfd readable
    /// and wakes waiters once for all of them (at most one system call of each kind).
    fn post_many(&self, n: usize, cqe: impl Fn(usize) -> Cqe) {
        // Rule 1 (no overtaking) for the whole run: what does not fit in the ring goes
        // to the overflow behind what did, and nothing of it before what is already there.
        let mut pushed = 0;
        if self.flags.overflow_len.load(Acquire) == 0 {
            while pushed < n {
                let k = self.ring_push_many(n - pushed, |i| cqe(pushed + i));
                if k == 0 {
                    break;
                }
                pushed += k;
            }
        }
        if pushed < n {
            self.overflow_push_many((pushed..n).map(cqe));
        }
        self.announce();
    }

    /// Copies up to `out.len()` waiting entries into `out`, oldest first, and returns how many.
    /// Never blocks waiting for entries (taking from the overflow list briefly takes its lock).
    /// Returns 0 when nothing is waiting, or when the oldest entry is still being written by a
    /// concurrent post (it shows up on the next call).
    ///
    /// When this call leaves the queue empty it makes the eventfd unreadable again (one
    /// `read(2)`); polling an already empty queue makes no system call. Callable from any
    /// thread, concurrently with other consumers: each entry goes to exactly one of them.
    /// On a worker thread, a poll that finds nothing first posts the completions that
    /// worker has gathered (a worker posts its callbacks' completions in runs, at the
    /// latest when its loop turn ends), and so does a `wait` before it sleeps.
    pub fn poll(&self, out: &mut [Cqe]) -> usize {
        let mut n = self.ring_take(out);
        if n == 0 && flush_own_batch() {
            // A worker callback polling for completions its own worker still gathers.
            n = self.ring_take(out);
        }
        if n < out.len() && self.flags.overflow_len.load(Acquire) != 0 {
            n += self.overflow_take(&mut out[n..]);
        }
        if self.flags.signaled.load(Acquire) && self.looks_empty() {
            self.clear_signal();
        }
        n
    }

    /// Blocks until at least `min` entries (at least 1, at most `out.len()`) have been copied
    /// into `out`, then returns how many (possibly more than `min`, up to `out.len()`).
    ///
    /// Entries are taken as they arrive, so when the deadline passes with at least one but
    /// fewer than `min` taken, it returns `Ok` with those; with none it returns
    /// `Err(TimedOut)`. `timeout: None` waits without limit; `Some(Duration::ZERO)` polls once.
    /// Sleeps on a futex between arrivals (a poster wakes it), never spins.
    ///
    /// Errors: `InvalidInput` when `out` is empty; `TimedOut` as above. Callable from any
    /// thread, also concurrently with other consumers (an entry taken by another consumer does
    /// not count here). Never call it from a thread that is the only poster of the entries it
    /// waits for.
    pub fn wait(
        &self,
        out: &mut [Cqe],
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wait needs room for at least one entry",
            ));
        }
        let min = min.clamp(1, out.len());
        // None: no limit (also for a timeout too large to represent).
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let finish = |got: usize| {
            if got == 0 {
                Err(io::Error::from(io::ErrorKind::TimedOut))
            } else {
                Ok(got)
            }
        };
        let mut got = 0;
        loop {
            got += self.poll(&mut out[got..]);
            if got >= min {
                return Ok(got);
            }
            let remaining = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return finish(got),
                },
            };
            // Register, then look once more, then sleep unless the futex word moved. Pairs
            // with `announce`: either the post's fence comes first and our look sees its entry,
            // or ours does and the post sees `waiters != 0` and bumps the word after its push.
            // Never sleep on completions this thread's worker still gathers.
            flush_own_batch();
            self.flags.waiters.fetch_add(1, Relaxed);
            fence(SeqCst);
            let seen = self.wake.load();
            got += self.poll(&mut out[got..]);
            if got < min {
                self.wake.wait(seen, remaining);
            }
            self.flags.waiters.fetch_sub(1, Relaxed);
        }
    }

    /// The eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`) to add to a poll/epoll set: readable
    /// (`POLLIN`/`EPOLLIN`, level-triggered) while entries wait, not readable once a
    /// [`poll`](Self::poll) or [`wait`](Self::wait) has drained the queue.
    ///
    /// Readiness is kept from the first call of this function on (entries already waiting
    /// make it readable at once); until then posts leave the descriptor alone, so a queue
    /// reaped only with `poll` and `wait` makes no eventfd system call.
    ///
    /// A post racing with a drain can leave it readable with nothing waiting; the next poll
    /// that finds the queue empty makes it unreadable, so a host loop never spins on it. Do
    /// not read or write it yourself. The queue owns it and closes it when dropped. Callable
    /// from any thread. (Under `--cfg loom` there is no real descriptor and this returns -1.)
    pub fn fd(&self) -> RawFd {
        if !self.flags.watched.load(Relaxed) {
            self.watch();
        }
        self.eventfd.raw()
    }

    /// Transition UNWATCHED → WATCHED, on the first `fd` call.
    ///
    /// From here on every post keeps the eventfd readable while entries wait; the entries
    /// already waiting are covered by our own look. The fence pairs with the one in
    /// `announce` (store-buffering pattern): a post whose load of `watched` came before our
    /// store pushed before its fence, so either our look after our fence sees its entry and
    /// we raise the flag, or its load sees `watched` and it raises the flag itself.
    #[cold]
    fn watch(&self) {
        self.flags.watched.swap(true, SeqCst);
        fence(SeqCst);
        if !self.looks_empty() {
            self.raise_signal();
        }
    }

    /// Records that a completion is owed to this queue (a submission naming it was accepted).
    /// Pair each call with exactly one [`post_reserved`](Self::post_reserved) or
    /// [`release_reservation`](Self::release_reservation). Callable from any thread.
    pub fn reserve(&self) {
        // Only submitters write `reserved`: a single host thread submitting in a loop keeps
        // the line in its own cache while the workers settle on theirs. Relaxed: the job that
        // carries the reservation to its poster orders it before the settle.
        self.reserved.fetch_add(1, Relaxed);
    }

    /// Releases one reservation and posts `cqe` (like [`post`](Self::post)).
    ///
    /// Transition *settle and start posting*, one RMW: the reservation is settled before the
    /// entry becomes visible (its `Release` publication comes later in this thread), so a
    /// consumer that has received the entry always finds nothing owed any more; the post is
    /// counted as under way in the same word until it has finished touching the queue, which
    /// [`quiesce`](Self::quiesce) waits out. Callable from any thread.
    pub fn post_reserved(&self, cqe: Cqe) {
        self.settled
            .fetch_add(Settled::SETTLE_ONE + Settled::POSTING_ONE, SeqCst);
        self.post_unbatched(cqe);
        self.settled.fetch_sub(Settled::POSTING_ONE, Release);
    }

    /// Records that `n` completions are owed (one [`reserve`](Self::reserve) for each, in
    /// one RMW). Callable from any thread.
    pub fn reserve_many(&self, n: u64) {
        self.reserved.fetch_add(n, Relaxed);
    }

    /// Releases `n` reservations and posts the entries `cqe(0..n)` in order, like as many
    /// [`post_reserved`](Self::post_reserved) calls, with the queue's atomics touched once
    /// for the whole run (one settle, one ring claim while there is room, one announce).
    /// Callable from any thread.
    ///
    /// Transition *settle and start posting* for the run: as in `post_reserved`, every
    /// reservation of the run is settled before any of its entries becomes visible.
    pub fn post_reserved_many(&self, n: usize, cqe: impl Fn(usize) -> Cqe) {
        if n == 0 {
            return;
        }
        // Fits: the settle count occupies the high 40 bits and wraps modulo them.
        let settle = (n as u64).wrapping_mul(Settled::SETTLE_ONE);
        self.settled
            .fetch_add(settle + Settled::POSTING_ONE, SeqCst);
        self.post_many(n, cqe);
        self.settled.fetch_sub(Settled::POSTING_ONE, Release);
    }

    /// Whether the queue may be dropped now: false while completions are owed; otherwise
    /// waits for posts already under way (they finish in nanoseconds) and returns true.
    /// Nothing can start posting afterwards unless a new reservation is made. Callable
    /// from any thread.
    pub fn quiesce(&self) -> bool {
        // `settled` before `reserved` (SeqCst): every settle counted in `word` follows its
        // reservation, so equal counts mean every reservation made before our second load
        // was settled before our first; a post that settles later needs a new reservation.
        let word = self.settled.load(SeqCst);
        if Settled::owed(self.reserved.load(SeqCst), word) > 0 {
            return false;
        }
        // Posts whose settle we counted are in `posting` until they are done with us.
        while Settled::posting(self.settled.load(Acquire)) > 0 {
            crate::sync::spin_hint();
        }
        true
    }

    /// Releases one reservation without posting (the submission was refused after
    /// reserving). A release without a matching reservation is a caller bug: it panics in
    /// debug builds and is undone (ignored) in release builds. Callable from any thread.
    pub fn release_reservation(&self) {
        let word = self.settled.fetch_add(Settled::SETTLE_ONE, SeqCst) + Settled::SETTLE_ONE;
        // Reservations only grow, so more settles than reservations read afterwards is
        // certainly a release without a reservation.
        if Settled::owed(self.reserved.load(SeqCst), word) > Settled::COUNT_MASK / 2 {
            self.settled.fetch_sub(Settled::SETTLE_ONE, SeqCst);
            if cfg!(debug_assertions) {
                panic!("release_reservation without a reservation");
            }
        }
    }

    /// Completions reserved and not yet posted or released. While it is above 0 the queue
    /// must stay alive (the C `veloq_cq_free` refuses with `-EBUSY`). Callable from any thread.
    pub fn owed(&self) -> u64 {
        let word = self.settled.load(Acquire);
        let owed = Settled::owed(self.reserved.load(Acquire), word);
        // A stray release being undone right now reads as a huge count: nothing is owed.
        if owed > Settled::COUNT_MASK / 2 {
            0
        } else {
            owed
        }
    }

    /// Entries waiting now, in the ring and the overflow list; exact when no other thread
    /// uses the queue, a snapshot otherwise. Callable from any thread.
    pub fn len(&self) -> usize {
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        let in_ring = (tail.wrapping_sub(head) as isize).max(0) as usize;
        in_ring + self.flags.overflow_len.load(Acquire)
    }

    /// Whether no entry waits now; the same caveat as [`len`](Self::len). Callable from any
    /// thread.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- ring ---------------------------------------------------------------------------

    fn slot(&self, pos: usize) -> &Slot {
        &self.slots[pos & self.mask]
    }

    /// Claims the position at `tail` and publishes `cqe` there; false when the ring is full.
    #[inline]
    fn ring_push(&self, cqe: Cqe) -> bool {
        let mut pos = self.tail.load(Relaxed);
        loop {
            let slot = self.slot(pos);
            let seq = slot.seq.load(Acquire);
            match seq.wrapping_sub(pos) as isize {
                0 => match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Relaxed,
                    Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: our CAS moved `tail` past `pos` while the slot's `seq` was
                        // `pos`, so we are the only thread that may write this slot until we
                        // publish it below; the consumer that freed it did so with a Release
                        // store our Acquire load of `seq` observed, so its read is finished.
                        slot.cqe.with_mut(|p| unsafe { p.write(cqe) });
                        slot.seq.store(pos.wrapping_add(1), Release);
                        return true;
                    }
                    Err(now) => pos = now,
                },
                // The slot still holds the entry of the previous lap: full.
                d if d < 0 => return false,
                // Another poster took `pos` already; catch up.
                _ => {
                    spin_hint();
                    pos = self.tail.load(Relaxed);
                }
            }
        }
    }

    /// Claims the longest run of free positions at `tail` (up to `n`) with one CAS and
    /// publishes the first entries of `cqe(0..n)` there, in order; returns how many (0
    /// when the ring is full).
    #[inline]
    fn ring_push_many(&self, n: usize, cqe: impl Fn(usize) -> Cqe) -> usize {
        let mut pos = self.tail.load(Relaxed);
        'claim: loop {
            let mut free = 0;
            while free < n {
                let p = pos.wrapping_add(free);
                let seq = self.slot(p).seq.load(Acquire);
                match seq.wrapping_sub(p) as isize {
                    0 => free += 1,
                    // Another poster took `pos` already; catch up.
                    d if d > 0 && free == 0 => {
                        spin_hint();
                        pos = self.tail.load(Relaxed);
                        continue 'claim;
                    }
                    // Full at `p` (or `p` taken meanwhile: the CAS below then fails).
                    _ => break,
                }
            }
            if free == 0 {
                return 0;
            }
            match self
                .tail
                .compare_exchange_weak(pos, pos.wrapping_add(free), Relaxed, Relaxed)
            {
                Ok(_) => {
                    for i in 0..free {
                        let p = pos.wrapping_add(i);
                        let entry = cqe(i);
                        let slot = self.slot(p);
                        // SAFETY: as in `ring_push`, for each position of the run: our CAS
                        // moved `tail` past all of them while each slot's `seq` read `p`
                        // (Acquire, pairing with the consumer's Release that freed it), so
                        // only we may write these slots until we publish them.
                        slot.cqe.with_mut(|ptr| unsafe { ptr.write(entry) });
                        slot.seq.store(p.wrapping_add(1), Release);
                    }
                    return free;
                }
                Err(now) => pos = now,
            }
        }
    }

    /// Claims the longest published run at `head` (up to `out.len()`) with one CAS, copies
    /// it into `out` and frees its slots. Returns 0 when the slot at `head` is not published.
    #[inline]
    fn ring_take(&self, out: &mut [Cqe]) -> usize {
        let mut head = self.head.load(Relaxed);
        'claim: loop {
            let mut ready = 0;
            while ready < out.len() {
                let pos = head.wrapping_add(ready);
                let seq = self.slot(pos).seq.load(Acquire);
                match seq.wrapping_sub(pos.wrapping_add(1)) as isize {
                    0 => ready += 1,
                    // Our `head` is stale: someone consumed `pos` already.
                    d if d > 0 && ready == 0 => {
                        spin_hint();
                        head = self.head.load(Relaxed);
                        continue 'claim;
                    }
                    _ => break,
                }
            }
            if ready == 0 {
                return 0;
            }
            match self
                .head
                .compare_exchange_weak(head, head.wrapping_add(ready), Relaxed, Relaxed)
            {
                Ok(_) => {
                    for (i, dst) in out[..ready].iter_mut().enumerate() {
                        let pos = head.wrapping_add(i);
                        let slot = self.slot(pos);
                        // SAFETY: we saw `seq == pos + 1` (Acquire, pairing with the poster's
                        // Release) and then moved `head` past `pos`, so the entry is fully
                        // written and no other consumer can claim it; no poster writes the
                        // slot until the Release store below frees it.
                        *dst = slot.cqe.with(|p| unsafe { *p });
                        slot.seq.store(pos.wrapping_add(self.mask + 1), Release);
                    }
                    return ready;
                }
                Err(now) => head = now,
            }
        }
    }

    /// Every position ever claimed in the ring has been claimed by a consumer.
    fn ring_is_empty(&self) -> bool {
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        tail.wrapping_sub(head) as isize <= 0
    }

    /// Nothing waits in the ring or the overflow (not counting a post still in flight).
    fn looks_empty(&self) -> bool {
        self.ring_is_empty() && self.flags.overflow_len.load(Acquire) == 0
    }

    // ---- overflow -----------------------------------------------------------------------

    /// Runs `f` on the overflow list with its lock held.
    fn with_overflow<R>(&self, f: impl FnOnce(&mut VecDeque<Cqe>) -> R) -> R {
        // Nothing panics while holding the lock except an allocation failure, after which the
        // list is still consistent; keep going rather than poison every later post.
        let mut list = self
            .overflow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut list)
    }

    #[cold]
    fn overflow_push(&self, cqe: Cqe) {
        self.with_overflow(|list| {
            list.push_back(cqe);
            self.flags.overflow_len.store(list.len(), Release);
        });
    }

    #[cold]
    fn overflow_push_many(&self, cqes: impl Iterator<Item = Cqe>) {
        self.with_overflow(|list| {
            list.extend(cqes);
            self.flags.overflow_len.store(list.len(), Release);
        });
    }

    /// Takes from the overflow list, but only once the ring is empty (rule 2, ring first).
    #[cold]
    fn overflow_take(&self, out: &mut [Cqe]) -> usize {
        self.with_overflow(|list| self.overflow_take_locked(list, out))
    }

    fn overflow_take_locked(&self, list: &mut VecDeque<Cqe>, out: &mut [Cqe]) -> usize {
        let mut n = 0;
        loop {
            let took = self.ring_take(&mut out[n..]);
            n += took;
            if n == out.len() {
                return n;
            }
            if self.ring_is_empty() {
                break;
            }
            if took == 0 {
                // A post claimed a ring slot but has not filled it yet; its entry may be
                // older than the overflow's, so leave the overflow for the next call.
                return n;
            }
        }
        let k = (out.len() - n).min(list.len());
        for (dst, cqe) in out[n..n + k].iter_mut().zip(list.drain(..k)) {
            *dst = cqe;
        }
        self.flags.overflow_len.store(list.len(), Release);
        if list.is_empty() && list.capacity() > OVERFLOW_KEEP {
            *list = VecDeque::new();
        }
        n + k
    }

    // ---- readiness: the signaled flag, the eventfd and the futex --------------------------

    /// After a push: make the eventfd readable if nobody has, and wake registered waiters.
    ///
    /// The `SeqCst` fence orders our push (the `tail` CAS or the `overflow_len` store) before
    /// the loads of `signaled` and `waiters`; it pairs with the fences in `clear_signal` and
    /// `wait` (store-buffering pattern), so at least one side sees the other.
    #[inline]
    fn announce(&self) {
        fence(SeqCst);
        if self.flags.watched.load(Relaxed) && !self.flags.signaled.load(Relaxed) {
            self.raise_signal();
        }
        if self.flags.waiters.load(Relaxed) != 0 {
            self.wake.wake_all();
        }
    }

    /// Transition CLEAR → SIGNALED.
    ///
    /// Invariant: each clear→set flip of `signaled` is followed by exactly one eventfd write,
    /// by the thread that flipped it; no other thread writes the eventfd. So while the flag is
    /// set the count is 1 or that write is in flight, and while it is clear the count is 0.
    #[cold]
    fn raise_signal(&self) {
        if !self.flags.signaled.swap(true, AcqRel) {
            self.eventfd.notify();
        }
    }

    /// Transition SIGNALED → CLEAR, run by a consumer that found the queue empty.
    ///
    /// Only the thread whose reset takes the eventfd's count (1) may clear the flag. A reset
    /// that finds 0 means the flipper's write is still in flight (or another consumer is
    /// clearing): the flag stays set, the write will land, and the next poll that finds the
    /// queue empty clears it. The count is taken *before* the flag is cleared so that a post
    /// that flips the flag in between writes after our reset, not before it.
    ///
    /// After clearing, the fence and the second look close the race with a post whose load of
    /// `signaled` came before our store (it saw "set" and did not write): its push precedes
    /// its fence, so if its fence comes first our look sees the entry and we set the flag
    /// again ourselves; if ours comes first, it sees "clear" and raises it.
    #[cold]
    fn clear_signal(&self) {
        if !self.eventfd.reset() {
            return;
        }
        // A swap rather than a store: every write of `signaled` is then a read-modify-write,
        // which keeps its modification order one chain (and sidesteps loom issue #254, where
        // a plain store can be ordered between another thread's RMW read and write).
        self.flags.signaled.swap(false, Release);
        fence(SeqCst);
        if !self.looks_empty() {
            self.raise_signal();
        }
    }

    /// Counts of the system calls this queue made so far (for tests and statistics).
    #[cfg(not(veloq_loom))]
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn syscalls(&self) -> sys::SyscallCounts {
        sys::SyscallCounts {
            eventfd_writes: self.eventfd.writes.load(Relaxed),
            eventfd_reads: self.eventfd.reads.load(Relaxed),
            futex_waits: self.wake.waits.load(Relaxed),
            futex_wakes: self.wake.wakes.load(Relaxed),
        }
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("owed", &self.owed())
            .field("fd", &self.eventfd.raw())
            .finish()
    }
}

/// Posts what the worker running on this thread has gathered (see
/// `RuntimeContext::defer_completion`); true when it posted anything. Nothing on other
/// threads, and nothing under loom (no workers there).
#[inline]
fn flush_own_batch() -> bool {
    #[cfg(not(veloq_loom))]
    return crate::runtime::context::flush_own_completions();
    #[cfg(veloq_loom)]
    return false;
}

/// The kernel objects behind the smallest interface the protocol needs: real syscalls
/// normally, atomics and a condvar under `--cfg loom`.
mod sys {
    #[cfg(not(veloq_loom))]
    pub(crate) use self::real::*;

    #[cfg(veloq_loom)]
    pub(crate) use self::model::*;

    /// System calls made by one queue.
    #[cfg(not(veloq_loom))]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) struct SyscallCounts {
        pub(crate) eventfd_writes: u64,
        pub(crate) eventfd_reads: u64,
        pub(crate) futex_waits: u64,
        pub(crate) futex_wakes: u64,
    }

    #[cfg(not(veloq_loom))]
    mod real {
        use std::io;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        use std::ptr;
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        use std::time::Duration;

        use crate::sync::{AtomicU32, AtomicU64};

        /// A non-blocking eventfd, closed on drop.
        pub(crate) struct EventFd {
            fd: OwnedFd,
            pub(crate) writes: AtomicU64,
            pub(crate) reads: AtomicU64,
        }

        impl EventFd {
            pub(crate) fn new() -> io::Result<Self> {
                // SAFETY: eventfd takes no pointers; we check the result before using it.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(EventFd {
                    // SAFETY: `fd` is a descriptor we just opened and nobody else owns.
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    writes: AtomicU64::new(0),
                    reads: AtomicU64::new(0),
                })
            }

            pub(crate) fn raw(&self) -> RawFd {
                self.fd.as_raw_fd()
            }

            /// Adds 1 to the count: the fd becomes readable.
            pub(crate) fn notify(&self) {
                let one: u64 = 1;
                loop {
                    self.writes.fetch_add(1, Relaxed);
                    // SAFETY: writes the 8 bytes of a live `u64` to a descriptor we own.
                    let r = unsafe {
                        libc::write(self.raw(), (&one as *const u64).cast(), size_of::<u64>())
                    };
                    // The count stays at most 1 (see `raise_signal`), so only EINTR can
                    // make this fail, and then we retry.
                    if r >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return;
                    }
                }
            }

            /// Sets the count to 0; returns whether it was non-zero.
            pub(crate) fn reset(&self) -> bool {
                let mut count: u64 = 0;
                loop {
                    self.reads.fetch_add(1, Relaxed);
                    // SAFETY: reads 8 bytes into a live `u64` from a descriptor we own.
                    let r = unsafe {
                        libc::read(
                            self.raw(),
                            (&mut count as *mut u64).cast(),
                            size_of::<u64>(),
                        )
                    };
                    if r >= 0 {
                        return count != 0;
                    }
                    if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                        return false; // EAGAIN: the count was 0.
                    }
                }
            }
        }

        /// A futex word for threads of this process.
        pub(crate) struct Futex {
            word: AtomicU32,
            pub(crate) waits: AtomicU64,
            pub(crate) wakes: AtomicU64,
        }

        impl Futex {
            pub(crate) fn new() -> Self {
                Futex {
                    word: AtomicU32::new(0),
                    waits: AtomicU64::new(0),
                    wakes: AtomicU64::new(0),
                }
            }

            pub(crate) fn load(&self) -> u32 {
                self.word.load(Acquire)
            }

            /// Sleeps while the word equals `seen`, at most `timeout`; may return spuriously.
            pub(crate) fn wait(&self, seen: u32, timeout: Option<Duration>) {
                self.waits.fetch_add(1, Relaxed);
                let ts = timeout.map(|t| libc::timespec {
                    tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                    tv_nsec: t.subsec_nanos().into(),
                });
                let ts_ptr = ts
                    .as_ref()
                    .map_or(ptr::null(), |ts| ts as *const libc::timespec);
                // SAFETY: the word is a live, aligned `u32` for the whole call and the kernel
                // only reads it; `ts_ptr` is null or points to a `timespec` on our stack. Any
                // error (EAGAIN: the word moved, EINTR, ETIMEDOUT) is a normal return.
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        self.word.as_ptr(),
                        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        seen,
                        ts_ptr,
                        ptr::null::<u32>(),
                        0u32,
                    );
                }
            }

            /// Moves the word on and wakes every thread sleeping on it.
            pub(crate) fn wake_all(&self) {
                self.word.fetch_add(1, Release);
                self.wakes.fetch_add(1, Relaxed);
                // SAFETY: the word is a live, aligned `u32`; FUTEX_WAKE does not dereference
                // the other arguments.
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        self.word.as_ptr(),
                        libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                        i32::MAX,
                    );
                }
            }
        }
    }

    #[cfg(veloq_loom)]
    mod model {
        use std::io;
        use std::os::fd::RawFd;
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        use std::time::Duration;

        use loom::sync::Condvar;

        use crate::sync::{AtomicU32, AtomicU64, Mutex};

        /// The eventfd's count as an atomic: a write adds 1, a read swaps in 0.
        pub(crate) struct EventFd {
            count: AtomicU64,
        }

        impl EventFd {
            pub(crate) fn new() -> io::Result<Self> {
                Ok(EventFd {
                    count: AtomicU64::new(0),
                })
            }

            pub(crate) fn raw(&self) -> RawFd {
                -1
            }

            pub(crate) fn notify(&self) {
                self.count.fetch_add(1, Release);
            }

            pub(crate) fn reset(&self) -> bool {
                self.count.swap(0, AcqRel) != 0
            }

            /// What poll(2) would say.
            #[cfg(test)]
            pub(crate) fn readable(&self) -> bool {
                self.count.load(Acquire) != 0
            }
        }

        /// A futex: the word plus a mutex and condvar that make "compare and sleep" atomic
        /// with respect to "wake", as the kernel does.
        pub(crate) struct Futex {
            word: AtomicU32,
            lock: Mutex<()>,
            sleepers: Condvar,
        }

        impl Futex {
            pub(crate) fn new() -> Self {
                Futex {
                    word: AtomicU32::new(0),
                    lock: Mutex::new(()),
                    sleepers: Condvar::new(),
                }
            }

            pub(crate) fn load(&self) -> u32 {
                self.word.load(Acquire)
            }

            /// A timed wait is modelled as an immediate spurious wakeup (loom has no clock);
            /// an untimed one really sleeps, so a lost wakeup shows up as a deadlock.
            pub(crate) fn wait(&self, seen: u32, timeout: Option<Duration>) {
                if timeout.is_some() {
                    loom::thread::yield_now();
                    return;
                }
                let guard = self.lock.lock().unwrap();
                if self.word.load(Relaxed) == seen {
                    drop(self.sleepers.wait(guard).unwrap());
                }
            }

            pub(crate) fn wake_all(&self) {
                self.word.fetch_add(1, Release);
                let _guard = self.lock.lock().unwrap();
                self.sleepers.notify_all();
            }
        }
    }
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    fn cqe(producer: u32, seq: u64) -> Cqe {
        Cqe {
            user_data: seq,
            res: 0,
            flags: 0,
            worker: producer,
        }
    }

    #[test]
    fn posting_to_a_non_empty_queue_makes_no_syscall() {
        let q = CompletionQueue::new(16_384).unwrap();
        q.fd();
        q.post(cqe(0, 0));
        assert_eq!(
            q.syscalls().eventfd_writes,
            1,
            "the empty→non-empty post signals once"
        );
        // 10,000 more, also past the ring into the overflow.
        for i in 1..=10_000 {
            q.post(cqe(0, i));
        }
        let small = CompletionQueue::new(8).unwrap();
        small.fd();
        for i in 0..10_000 {
            small.post(cqe(0, i));
        }
        for q in [&q, &small] {
            let calls = q.syscalls();
            assert!(calls.eventfd_writes <= 2, "{calls:?}");
            assert_eq!(calls.futex_wakes, 0, "no waiter, yet a wake: {calls:?}");
            assert_eq!(calls.eventfd_reads, 0, "{calls:?}");
        }
    }

    #[test]
    fn many_posters_into_a_non_empty_queue_make_at_most_a_few_syscalls() {
        let q = Arc::new(CompletionQueue::new(64).unwrap());
        q.fd();
        q.post(cqe(9, 0));
        let posters: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || (0..2_500).for_each(|i| q.post(cqe(p, i))))
            })
            .collect();
        posters.into_iter().for_each(|p| p.join().unwrap());
        let calls = q.syscalls();
        assert!(calls.eventfd_writes <= 2, "{calls:?}");
        assert_eq!(calls.futex_wakes, 0, "{calls:?}");
    }

    #[test]
    fn polling_an_empty_queue_makes_no_syscall() {
        let q = CompletionQueue::new(8).unwrap();
        let mut buf = [Cqe::default(); 8];
        for _ in 0..1000 {
            assert_eq!(q.poll(&mut buf), 0);
        }
        assert_eq!(q.syscalls(), sys::SyscallCounts::default());
    }

    #[test]
    fn each_drain_and_refill_costs_one_read_and_one_write() {
        let q = CompletionQueue::new(8).unwrap();
        q.fd();
        let mut buf = [Cqe::default(); 8];
        for round in 1..=10 {
            q.post(cqe(0, 0));
            q.post(cqe(0, 1));
            assert_eq!(q.poll(&mut buf), 2);
            let calls = q.syscalls();
            assert_eq!((calls.eventfd_writes, calls.eventfd_reads), (round, round));
        }
    }

    #[test]
    fn a_posted_run_signals_once_and_wakes_its_waiter_once() {
        let q = Arc::new(CompletionQueue::new(8).unwrap());
        q.fd();
        q.reserve_many(40);
        let waiter = {
            let q = q.clone();
            thread::spawn(move || {
                let mut buf = [Cqe::default(); 40];
                let n = q.wait(&mut buf, 40, None).unwrap();
                buf[..n].to_vec()
            })
        };
        while q.flags.waiters.load(Relaxed) == 0 {
            thread::yield_now();
        }
        // 8 entries fit in the ring, the other 32 go to the overflow behind them.
        q.post_reserved_many(40, |i| cqe(0, i as u64));
        let got = waiter.join().unwrap();
        assert_eq!(got, (0..40).map(|i| cqe(0, i)).collect::<Vec<_>>());
        assert_eq!(q.owed(), 0);
        let calls = q.syscalls();
        assert_eq!(
            (calls.eventfd_writes, calls.futex_wakes),
            (1, 1),
            "{calls:?}"
        );
    }

    #[test]
    fn a_queue_whose_fd_was_never_asked_for_makes_no_eventfd_syscall() {
        let q = CompletionQueue::new(8).unwrap();
        let mut buf = [Cqe::default(); 8];
        for round in 0..100 {
            q.post(cqe(0, 2 * round));
            q.post(cqe(0, 2 * round + 1));
            assert_eq!(q.poll(&mut buf), 2);
        }
        let calls = q.syscalls();
        assert_eq!(
            (calls.eventfd_writes, calls.eventfd_reads),
            (0, 0),
            "{calls:?}"
        );
        // Asked for now, with entries waiting: readable at once, then kept as usual.
        q.post(cqe(1, 0));
        q.fd();
        assert_eq!(q.syscalls().eventfd_writes, 1);
        assert_eq!(q.poll(&mut buf), 1);
        assert_eq!(q.syscalls().eventfd_reads, 1);
    }

    #[test]
    fn posts_wake_only_when_a_waiter_is_registered() {
        let q = Arc::new(CompletionQueue::new(8).unwrap());
        let waiter = {
            let q = q.clone();
            thread::spawn(move || {
                let mut buf = [Cqe::default(); 2];
                q.wait(&mut buf, 2, None).unwrap()
            })
        };
        // Post only once the waiter is registered, so the wake path is exercised.
        while q.flags.waiters.load(Relaxed) == 0 {
            thread::yield_now();
        }
        q.post(cqe(0, 0));
        q.post(cqe(0, 1));
        assert_eq!(waiter.join().unwrap(), 2);
        let wakes = q.syscalls().futex_wakes;
        assert!(wakes >= 1);
        q.post(cqe(0, 2));
        assert_eq!(q.syscalls().futex_wakes, wakes, "woke with nobody waiting");
    }
}

/// Model checks of the lock-free parts: run with
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib completion`
/// (`LOOM_MAX_PREEMPTIONS=n` widens the search; the default bound keeps each model small).
#[cfg(all(test, veloq_loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Runs `f` under loom with at most `preemptions` forced thread switches per run, unless
    /// `LOOM_MAX_PREEMPTIONS` says otherwise.
    fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(preemptions);
        }
        builder.check(f);
    }

    /// loom 0.7's DPOR remembers only the last access to each object, so when a thread's
    /// first touch of an object is a load followed by a write, its own load hides the race
    /// with another thread's earlier load, and runs where it goes first are never tried
    /// (a mutated `overflow_take` that skips the ring-first check passed without this).
    /// Every thread of a model therefore starts with an RMW on a shared gate: RMWs always
    /// conflict, so loom tries every start order.
    struct Gate(Arc<AtomicUsize>);

    impl Gate {
        fn new() -> Self {
            Gate(Arc::new(AtomicUsize::new(0)))
        }

        fn pass(&self) {
            self.0.fetch_add(1, Relaxed);
        }

        fn spawn<T: Send + 'static>(
            &self,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> thread::JoinHandle<T> {
            let gate = Gate(self.0.clone());
            thread::spawn(move || {
                gate.pass();
                f()
            })
        }
    }

    /// A queue whose descriptor a host holds, as in every model that checks readiness.
    fn watched(capacity: u32) -> Arc<CompletionQueue> {
        let q = Arc::new(CompletionQueue::new(capacity).unwrap());
        q.fd();
        q
    }

    fn cqe(producer: u32, seq: u64) -> Cqe {
        Cqe {
            user_data: seq,
            res: 0,
            flags: 0,
            worker: producer,
        }
    }

    fn poster(
        gate: &Gate,
        q: &Arc<CompletionQueue>,
        producer: u32,
        n: u64,
    ) -> thread::JoinHandle<()> {
        let q = q.clone();
        gate.spawn(move || (0..n).for_each(|i| q.post(cqe(producer, i))))
    }

    fn poll_once(q: &CompletionQueue, max: usize, into: &mut Vec<Cqe>) {
        let mut buf = [Cqe::default(); 4];
        let n = q.poll(&mut buf[..max]);
        into.extend_from_slice(&buf[..n]);
    }

    fn drain(q: &CompletionQueue, into: &mut Vec<Cqe>) {
        let mut buf = [Cqe::default(); 4];
        loop {
            let n = q.poll(&mut buf);
            if n == 0 {
                return;
            }
            into.extend_from_slice(&buf[..n]);
        }
    }

    /// The eventfd promise at a quiet moment: while entries wait the flag is set and the
    /// eventfd readable; a poll that finds nothing leaves both clear.
    fn assert_readiness_matches(q: &CompletionQueue) {
        if !q.is_empty() {
            assert!(q.flags.signaled.load(Relaxed), "entries wait, flag clear");
            assert!(q.eventfd.readable(), "entries wait, eventfd not readable");
        } else {
            assert_eq!(q.poll(&mut [Cqe::default(); 1]), 0);
            assert!(!q.eventfd.readable(), "drained, eventfd still readable");
            assert!(!q.flags.signaled.load(Relaxed), "drained, flag still set");
        }
    }

    fn assert_complete_and_in_order(got: &[Cqe], per_producer: &[u64]) {
        for (p, &n) in per_producer.iter().enumerate() {
            let mine: Vec<u64> = got
                .iter()
                .filter(|e| e.worker == p as u32)
                .map(|e| e.user_data)
                .collect();
            assert_eq!(mine, (0..n).collect::<Vec<_>>(), "producer {p}: {got:?}");
        }
        assert_eq!(
            got.len() as u64,
            per_producer.iter().sum::<u64>(),
            "{got:?}"
        );
    }

    /// Capacity 1 (a ring of 2, the smallest): the posts cross into the overflow while the
    /// consumer takes from both. (Bound 2: with 3 this model takes about a minute.)
    #[test]
    fn two_producers_one_consumer_lose_nothing_and_keep_order() {
        model(2, || {
            let q = watched(1);
            let gate = Gate::new();
            let producers = [poster(&gate, &q, 0, 2), poster(&gate, &q, 1, 2)];
            gate.pass();
            let mut got = Vec::new();
            poll_once(&q, 2, &mut got);
            poll_once(&q, 2, &mut got);
            producers.into_iter().for_each(|p| p.join().unwrap());
            assert_readiness_matches(&q);
            drain(&q, &mut got);
            assert_complete_and_in_order(&got, &[2, 2]);
            assert_readiness_matches(&q);
        });
    }

    /// Producer 0's second entry lands in the overflow while producer 1 may still be filling
    /// the ring slot in front of producer 0's first: the consumer must not take the overflow
    /// entry before that older ring entry.
    #[test]
    fn overflow_never_overtakes_an_older_ring_entry() {
        model(3, || {
            let q = watched(2);
            let gate = Gate::new();
            let producers = [poster(&gate, &q, 0, 2), poster(&gate, &q, 1, 1)];
            gate.pass();
            let mut got = Vec::new();
            poll_once(&q, 2, &mut got);
            producers.into_iter().for_each(|p| p.join().unwrap());
            drain(&q, &mut got);
            assert_complete_and_in_order(&got, &[2, 1]);
        });
    }

    /// A run posted in one go (a worker's completion batch) into a ring too small for it,
    /// while another producer posts and the consumer takes: the run's tail goes to the
    /// overflow, nothing is lost, each producer's entries arrive in order, nothing stays
    /// owed and readiness matches.
    #[test]
    fn a_batched_run_crossing_into_the_overflow_keeps_order() {
        model(2, || {
            let q = watched(2);
            q.reserve_many(3);
            let gate = Gate::new();
            let batcher = {
                let q = q.clone();
                gate.spawn(move || q.post_reserved_many(3, |i| cqe(0, i as u64)))
            };
            let single = poster(&gate, &q, 1, 1);
            gate.pass();
            let mut got = Vec::new();
            poll_once(&q, 2, &mut got);
            batcher.join().unwrap();
            single.join().unwrap();
            drain(&q, &mut got);
            assert_complete_and_in_order(&got, &[3, 1]);
            assert_eq!(q.owed(), 0);
            assert!(q.quiesce());
            assert_readiness_matches(&q);
        });
    }

    /// A waiter needing two entries is woken by a run that brings both (one announce for
    /// the run): never left asleep.
    #[test]
    fn wait_is_woken_by_a_batched_run() {
        model(3, || {
            let q = watched(4);
            q.reserve_many(2);
            let gate = Gate::new();
            let batcher = {
                let q = q.clone();
                gate.spawn(move || q.post_reserved_many(2, |i| cqe(0, i as u64)))
            };
            gate.pass();
            let mut buf = [Cqe::default(); 2];
            assert_eq!(q.wait(&mut buf, 2, None).unwrap(), 2);
            assert_complete_and_in_order(&buf, &[2]);
            batcher.join().unwrap();
            assert_readiness_matches(&q);
        });
    }

    /// The first `fd` call races with posts (and a consumer): once both are done, the
    /// descriptor is readable exactly when entries wait.
    #[test]
    fn the_first_fd_call_never_misses_a_racing_post() {
        model(3, || {
            let q = Arc::new(CompletionQueue::new(4).unwrap());
            let gate = Gate::new();
            let producer = poster(&gate, &q, 0, 2);
            let host = {
                let q = q.clone();
                gate.spawn(move || {
                    q.fd();
                })
            };
            gate.pass();
            let mut got = Vec::new();
            poll_once(&q, 1, &mut got);
            producer.join().unwrap();
            host.join().unwrap();
            assert_readiness_matches(&q);
            drain(&q, &mut got);
            assert_complete_and_in_order(&got, &[2]);
            assert_readiness_matches(&q);
        });
    }

    /// Two consumers race to drain (and to clear the flag) while a producer posts.
    #[test]
    fn signaled_flag_never_left_clear_with_entries_waiting() {
        model(3, || {
            let q = watched(4);
            let gate = Gate::new();
            let producer = poster(&gate, &q, 0, 2);
            let other = {
                let q = q.clone();
                gate.spawn(move || {
                    let mut got = Vec::new();
                    poll_once(&q, 1, &mut got);
                    got
                })
            };
            gate.pass();
            let mut got = Vec::new();
            poll_once(&q, 2, &mut got);
            producer.join().unwrap();
            got.extend(other.join().unwrap());
            assert_readiness_matches(&q);
            drain(&q, &mut got);
            assert_eq!(got.len(), 2);
            assert_readiness_matches(&q);
        });
    }

    /// A waiter is never left asleep while what it waits for has been posted: the futex
    /// model really blocks, so a lost wakeup shows up as a loom deadlock.
    #[test]
    fn wait_is_always_woken_by_a_post() {
        model(3, || {
            let q = watched(2);
            let gate = Gate::new();
            let producer = poster(&gate, &q, 0, 2);
            gate.pass();
            let mut buf = [Cqe::default(); 2];
            assert_eq!(q.wait(&mut buf, 2, None).unwrap(), 2);
            assert_complete_and_in_order(&buf, &[2]);
            producer.join().unwrap();
            assert_readiness_matches(&q);
        });
    }

    /// `veloq_cq_free` after `quiesce` said yes: a post whose reservation it saw settled
    /// must be done with the queue. The main thread reads every slot the way dropping the
    /// queue would; loom reports a race if the poster could still be writing one.
    #[test]
    fn quiesce_waits_for_a_post_under_way() {
        model(3, || {
            let q = watched(2);
            q.reserve();
            let gate = Gate::new();
            let poster = {
                let q = q.clone();
                gate.spawn(move || q.post_reserved(cqe(0, 0)))
            };
            gate.pass();
            while !q.quiesce() {
                thread::yield_now();
            }
            for slot in q.slots.iter() {
                // SAFETY: nothing may write a slot once `quiesce` returned true with no
                // reservation left; a violation is what loom reports here.
                let _ = slot.cqe.with(|p| unsafe { *p });
            }
            poster.join().unwrap();
        });
    }

    /// A submitter reserves and hands the job to a poster on another thread (spawning it
    /// stands for the queue the job travels through), then has a second reservation refused
    /// and released. Whoever has received the entry finds nothing owed, and `quiesce` agrees.
    #[test]
    fn a_received_entry_owes_nothing() {
        model(2, || {
            let q = watched(2);
            let gate = Gate::new();
            let submitter = {
                let q = q.clone();
                gate.spawn(move || {
                    q.reserve();
                    let poster = {
                        let q = q.clone();
                        thread::spawn(move || q.post_reserved(cqe(0, 0)))
                    };
                    q.reserve();
                    q.release_reservation();
                    poster
                })
            };
            gate.pass();
            let mut buf = [Cqe::default(); 1];
            assert_eq!(q.wait(&mut buf, 1, None).unwrap(), 1);
            let poster = submitter.join().unwrap();
            assert_eq!(q.owed(), 0, "the entry arrived, its reservation is settled");
            assert!(q.quiesce());
            poster.join().unwrap();
            assert_eq!(buf, [cqe(0, 0)]);
        });
    }
}
