//! The per-worker io_uring driver: the worker's ring, its [operation table](super::op_table)
//! and the backlog of operations waiting for room in the submission queue.
//!
//! Every operation submitted here completes exactly once to exactly one [`Target`]: a
//! Rust future, a C callback on this worker, or a completion queue. Submissions are
//! batched: pushed into the submission queue as they come and handed to the kernel by
//! one `io_uring_enter` per worker loop turn ([`Driver::flush`]), which also collects
//! completions. The worker copies them out of the ring a batch at a time
//! ([`Driver::take_completions`]) and turns each into a [`Delivery`]
//! ([`Driver::complete`]), which it carries out at once, no longer borrowing the driver
//! (a callback may submit more).
//!
//! Operations wait in the backlog only while the submission queue is full, so a full
//! ring never fails an operation. Operations in flight are not bounded by the
//! completion queue's size when the kernel keeps completions that overflow it
//! (`IORING_FEAT_NODROP`, every kernel since 5.5): a bound there would let operations
//! that wait for ever (a receive on an idle connection) hold every place and starve the
//! rest of the worker's I/O, the connect or send that would end the wait included.
//! Without NODROP the bound stays (the completion queue less a reserve). Memory the
//! kernel may still touch stays with the driver until the kernel's final completion for
//! it, whatever the submitter did meanwhile (dropped future, cancel, shutdown).
//!
//! The worker parks here too: in `io_uring_enter` with a read of its eventfd armed (a
//! notifier writes the eventfd), woken as well by any completion, or, for a busy worker
//! with completion batching on, by a batch of them, bounded by a short wait (see
//! [`ParkBatch`]). One exception:
//! valgrind up to at least 3.19 (Debian 12's) does not know that `io_uring_enter` may
//! block, so a worker sleeping there holds valgrind's global lock and freezes every
//! other thread. Under valgrind (seen in `LD_PRELOAD`) the worker parks in `poll(2)` on
//! the eventfd and the ring's fd instead.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Poll, Waker};

use io_uring::{cqueue, opcode, squeue::Entry, types, IoUring};

use super::buf_ring::BufRing;
use super::op_table::{
    close_orphan_fd, IoCallback, OpId, OpResult, OpTable, Phase, Target, INTERNAL_BIT,
};
use super::ops::{validate, validate_deadline, RawOp};
use crate::runtime::completion::{CompletionQueue, Cqe};

/// `user_data` of the armed eventfd read.
const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of the driver's own cancellations and linked timeouts (results ignored).
const INTERNAL_TOKEN: u64 = INTERNAL_BIT | 1;
/// Completion-queue room kept for the wake read and the driver's own entries.
const RESERVED_CQES: usize = 8;
/// Completions handled per reap (one worker loop turn, or one call of [`Driver::reap`]).
pub(crate) const REAP_BATCH: usize = 256;
/// Completions copied out of the ring at a time (one head update per batch).
pub(crate) const CQE_BATCH: usize = 64;

/// Outside completions a batched park waits for at least: fewer, and it waits for one,
/// as it would with batching off (see [`ParkBatch`]).
const BATCH_MIN: u32 = 4;
/// A batched park waits for at most one in this many of the operations already in the
/// kernel (see [`ParkBatch`]).
const BATCH_SHARE: usize = 8;
/// Most completions a batched park waits for.
const BATCH_MAX: u32 = 32;
/// The timeout of a batched park, in seconds (it ends only the wait: the worker parks
/// again). Only needed because the kernel treats a batch wait without a timeout as one
/// that ends with the batch wait.
const PARK_TIMEOUT_SECS: u64 = 3600;

/// `flags` bit of a C completion: more completions follow for this operation
/// (multishot). The last one comes without it.
pub const CQE_F_MORE: u32 = 1;

/// `flags` bit of a C completion: the operation filled a provided buffer, whose id is
/// `flags >> CQE_BUFFER_SHIFT` (multishot receives).
pub const CQE_F_BUFFER: u32 = 2;

/// Where a C completion's `flags` hold the provided buffer's id (the upper 16 bits, as
/// in the kernel's entry).
pub const CQE_BUFFER_SHIFT: u32 = 16;

/// The buffer part of a C completion's `flags` from the kernel's: `CQE_F_BUFFER` and the
/// buffer id when the kernel named a buffer, else 0. Only multishot operations select
/// buffers, so only [`Driver::complete_other`] needs it.
#[inline(always)]
fn c_buffer_flags(kernel_flags: u32) -> u32 {
    // IORING_CQE_F_BUFFER is bit 0 (the io-uring crate does not export the constant;
    // `cqueue::buffer_select` tests the same bit).
    if kernel_flags & 1 == 0 {
        0
    } else {
        CQE_F_BUFFER | (kernel_flags & !0xFFFF)
    }
}

/// What the worker must do for one completion, once it no longer borrows the driver.
pub(crate) enum Delivery {
    /// Wake the future waiting for the operation.
    Wake(Waker),
    /// Run a C callback.
    Call {
        cb: IoCallback,
        arg: *mut std::ffi::c_void,
        res: i64,
        flags: u32,
    },
}

/// What [`Driver::complete`] made of a completion.
pub(crate) enum Completed {
    /// Carry this out once the driver is no longer borrowed.
    Deliver(Delivery),
    /// Nothing to deliver (a stale or internal completion, or a future not waiting).
    Nothing,
    /// A rarer case: hand the same completion to [`Driver::complete_other`].
    Other,
}

impl Completed {
    #[inline(always)]
    fn wake(waker: Option<Waker>) -> Completed {
        match waker {
            Some(w) => Completed::Deliver(Delivery::Wake(w)),
            None => Completed::Nothing,
        }
    }
}

/// An operation waiting for room: one entry, or an entry and its linked timeout, which
/// must reach the kernel together.
enum Pending {
    One(OpId, Entry),
    Linked(OpId, Entry, Entry),
    Internal(Entry),
}

impl Pending {
    fn entries(&self) -> usize {
        match self {
            Pending::Linked(..) => 2,
            _ => 1,
        }
    }

    fn op(&self) -> Option<OpId> {
        match self {
            Pending::One(id, _) | Pending::Linked(id, ..) => Some(*id),
            Pending::Internal(_) => None,
        }
    }
}

/// A place for a batch of completions copied out of the ring ([`Driver::take_completions`]).
pub(crate) type CqeBatch = [MaybeUninit<cqueue::Entry>; CQE_BATCH];

/// An empty [`CqeBatch`].
pub(crate) const fn cqe_batch() -> CqeBatch {
    [const { MaybeUninit::uninit() }; CQE_BATCH]
}

/// Counters of one driver, published with the worker's statistics (`WorkerStats::io_*`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DriverStats {
    /// Operations accepted (C, Rust and host-side): the op table's inserts.
    pub(crate) submitted: u64,
    /// Operations that delivered their final completion.
    pub(crate) completed: u64,
    /// Completions that named no live operation (counted, ignored).
    pub(crate) stale: u64,
    /// Operations waiting in the backlog now.
    pub(crate) backlog: u64,
    /// io_uring_enter calls made to submit or reap (a park counted only when it handed
    /// over queued submissions).
    pub(crate) enters: u64,
    /// Parks that waited for a batch of completions (see [`ParkBatch`]).
    pub(crate) batched_parks: u64,
}

/// Adaptive completion batching at park (`RuntimeBuilder::io_batch_wait`).
///
/// With the ring's deferred task running, a completion becomes visible only to an
/// `io_uring_enter` asking for events, so a busy worker that parks as soon as one
/// completion is there makes one system call per completion or two. A batched park
/// asks the kernel for `k` completions but to return as soon as one is there once
/// `wait_us` has passed (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12): one enter per `k`
/// completions while they come fast, at most `wait_us` of extra delay when they do not.
///
/// `k` is the entries this park hands over plus a number of *outside* completions: the
/// average of those the last parks brought beyond the entries they handed over (rounded
/// up), but at most one in [`BATCH_SHARE`] of the operations already in the kernel and
/// at most [`BATCH_MAX`]. Below [`BATCH_MIN`] outside completions the park is the plain
/// one, waiting for one completion with no minimum wait.
///
/// Both rules keep the wait away from light load, where it costs latency. The entries a
/// park submits (a reply's send, say) mostly complete inside the same call and say
/// nothing about load; those that complete later (a timer, a re-armed receive) are not
/// counted either, so the rule errs towards the plain park. And a worker with few
/// operations in the kernel (a server with a dozen connections, whose requests each wait
/// for the peer to read a reply) would wait out the minimum for completions that come
/// only after its peers answer. A plain park brings the completion that woke it plus
/// those already pending when it began (the kernel posts no more in that call), so the
/// average grows when completions come faster than the worker gets round to parking.
///
/// Measured on the echo example (2 workers, loopback, batching at 20 µs against off): no
/// change in requests/s or latency from 1 to 50 connections; at 100 and 500 connections
/// half to a third of the system calls per request (a fifth with 16 requests pipelined).
#[derive(Clone, Copy, Debug, Default)]
struct ParkBatch {
    /// The minimum wait in µs; 0: off (configured so, or the kernel lacks the feature).
    wait_us: u32,
    /// Eight times the moving average of the outside completions reaped after a park.
    avg8: u32,
    /// Entries the last park handed to the kernel.
    handed_over: u32,
    /// The last park has not been followed by a reap yet.
    after_park: bool,
}

impl ParkBatch {
    /// Notes a reap of `n` completions: it is a park's batch when it is the first reap
    /// since the park.
    #[inline(always)]
    fn reaped(&mut self, n: usize) {
        if self.after_park {
            self.after_park = false;
            let outside = (n as u32).saturating_sub(self.handed_over).min(BATCH_MAX);
            // avg ← avg + (outside − avg) / 8, kept times eight.
            self.avg8 = self.avg8 - self.avg8 / 8 + outside;
        }
    }

    /// Notes a park about to hand `entries` over, with `in_kernel` operations already
    /// in the kernel; returns the completions it waits for (1: the plain park).
    fn park(&mut self, entries: usize, in_kernel: usize) -> u32 {
        self.after_park = true;
        self.handed_over = u32::try_from(entries).unwrap_or(u32::MAX);
        let avg = self.avg8.div_ceil(8);
        let cap = u32::try_from(in_kernel / BATCH_SHARE).unwrap_or(u32::MAX);
        let outside = avg.min(cap).min(BATCH_MAX);
        if self.wait_us == 0 || outside < BATCH_MIN {
            1
        } else {
            outside.saturating_add(self.handed_over)
        }
    }
}

/// One worker's ring.
pub(crate) struct Driver {
    ring: IoUring,
    eventfd: RawFd,
    /// Where the armed read puts the eventfd counter; boxed so its address is stable
    /// while the kernel may write it.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Park in poll(2) rather than io_uring_enter (under valgrind, see the module doc).
    park_in_poll: bool,
    /// Which set-up flags the kernel accepted.
    flags: RingFlags,
    table: OpTable,
    backlog: VecDeque<Pending>,
    /// Completions made up by the driver (operations cancelled before the kernel saw
    /// them), handled like the kernel's.
    synthetic: VecDeque<(u64, i32, u32)>,
    /// Entries handed to the kernel (or in the submission queue) whose final
    /// completion has not been seen, the wake read excepted.
    in_flight: usize,
    /// Most entries in flight at once: unbounded when the kernel keeps overflowing
    /// completions (NODROP), else the completion queue's size less a reserve.
    max_in_flight: usize,
    /// `in_flight`'s bound on [`submit`](Self::submit)'s fast path: `max_in_flight`
    /// while the driver is open and the backlog empty, else 0 (every submission takes
    /// the queued path). One comparison instead of three; kept by
    /// [`backlog_changed`](Self::backlog_changed).
    fast_limit: usize,
    /// Shutdown: everything was cancelled and new operations are refused.
    closed: bool,
    /// The ring's TASKRUN / CQ_OVERFLOW flags stayed up after an enter that had nothing
    /// for us; they are ignored until the next completion, enter that submits, or park.
    flags_stale: bool,
    /// Completion batching at park, see [`ParkBatch`].
    batch: ParkBatch,
    /// The kernel takes a minimum wait for a batch (`IORING_FEAT_MIN_TIMEOUT`).
    min_timeout: bool,
    stats: DriverStats,
    /// The worker this driver belongs to (stamped on completion-queue entries).
    worker: u32,
    /// Provided-buffer rings made through the C API (`veloq_buf_ring_new`), by group id:
    /// the driver owns them until `veloq_buf_ring_free` or its own drop.
    buf_rings: Vec<BufRing>,
}

/// The optional set-up flags, each probed on its own.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RingFlags {
    pub(crate) single_issuer: bool,
    pub(crate) defer_taskrun: bool,
    pub(crate) coop_taskrun: bool,
}

impl RingFlags {
    /// As the `WorkerStats::ring_flags` bits.
    pub(crate) fn bits(self) -> u32 {
        use crate::runtime::WorkerStats as S;
        (self.single_issuer as u32 * S::RING_SINGLE_ISSUER)
            | (self.defer_taskrun as u32 * S::RING_DEFER_TASKRUN)
            | (self.coop_taskrun as u32 * S::RING_COOP_TASKRUN)
    }
}

impl Driver {
    /// Creates the ring on the calling thread (the only thread that will submit to it).
    /// Optional flags the kernel refuses are dropped one by one; an error is returned
    /// only when even a plain ring cannot be made.
    pub(crate) fn new(entries: u32, eventfd: RawFd, worker: u32) -> io::Result<Driver> {
        let park_in_poll = running_under_valgrind();
        let (ring, flags) = Self::build_ring(entries, park_in_poll)?;
        let cq_entries = ring.params().cq_entries() as usize;
        let nodrop = ring.params().is_feature_nodrop();
        // Parking in poll(2) waits for no count of completions: batching has no use there.
        let min_timeout = ring.params().is_feature_min_timeout() && !park_in_poll;
        let max_in_flight = if nodrop {
            usize::MAX
        } else {
            cq_entries
                .saturating_sub(RESERVED_CQES.min(cq_entries / 4))
                .max(1)
        };
        Ok(Driver {
            ring,
            eventfd,
            wake_buf: Box::new(0),
            wake_armed: false,
            park_in_poll,
            flags,
            table: OpTable::new(worker),
            backlog: VecDeque::new(),
            synthetic: VecDeque::new(),
            in_flight: 0,
            max_in_flight,
            fast_limit: max_in_flight,
            closed: false,
            flags_stale: false,
            batch: ParkBatch::default(),
            min_timeout,
            stats: DriverStats::default(),
            worker,
            buf_rings: Vec::new(),
        })
    }

    /// Turns completion batching at park on (a busy worker's park waits up to `wait`
    /// for a batch of completions, see [`ParkBatch`]) or off (`Duration::ZERO`). Stays
    /// off where the kernel cannot bound the wait (before Linux 6.12) or the worker
    /// parks in poll(2). Returns whether it is on.
    pub(crate) fn set_batch_wait(&mut self, wait: std::time::Duration) -> bool {
        let us = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        self.batch.wait_us = if self.min_timeout { us } else { 0 };
        self.batch.wait_us != 0
    }

    /// Which optional set-up flags the kernel accepted.
    pub(crate) fn flags(&self) -> RingFlags {
        self.flags
    }

    /// The ring's submitter (for registering buffers).
    pub(crate) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// This driver's counters.
    pub(crate) fn stats(&self) -> DriverStats {
        DriverStats {
            submitted: self.table.inserted(),
            stale: self.table.stale(),
            backlog: self.backlog.len() as u64,
            ..self.stats
        }
    }

    /// `plain_only`: no optional flags. Parking in poll(2) needs that: with DEFER_TASKRUN
    /// or COOP_TASKRUN an operation finished by the kernel's async workers (openat, a
    /// socket becoming ready, ...) becomes a completion only when the ring's task enters
    /// the kernel for it, and nothing wakes a task sleeping in poll(2) to do so (the worker
    /// slept for ever on an openat under valgrind).
    fn build_ring(entries: u32, plain_only: bool) -> io::Result<(IoUring, RingFlags)> {
        // Most capable first; DEFER_TASKRUN requires SINGLE_ISSUER.
        let attempts = [
            RingFlags {
                single_issuer: true,
                defer_taskrun: true,
                coop_taskrun: true,
            },
            RingFlags {
                single_issuer: true,
                defer_taskrun: false,
                coop_taskrun: true,
            },
            RingFlags {
                single_issuer: true,
                defer_taskrun: false,
                coop_taskrun: false,
            },
            RingFlags {
                single_issuer: false,
                defer_taskrun: false,
                coop_taskrun: true,
            },
            RingFlags::default(),
        ];
        let mut last_err = None;
        let attempts = if plain_only {
            &attempts[attempts.len() - 1..]
        } else {
            &attempts[..]
        };
        for &flags in attempts {
            let mut b = IoUring::builder();
            if flags.single_issuer {
                b.setup_single_issuer();
            }
            if flags.defer_taskrun {
                b.setup_defer_taskrun();
            }
            if flags.coop_taskrun {
                b.setup_coop_taskrun();
            }
            // A completion queue well above the submission queue: many operations may be
            // in flight at once (idle connections' receives), and an overflowing queue makes
            // the kernel end multishot operations early.
            b.setup_cqsize(cq_entries_for(entries));
            if flags.defer_taskrun || flags.coop_taskrun {
                // Lets the worker see pending deferred completions without a syscall.
                b.setup_taskrun_flag();
            }
            match b.build(entries) {
                Ok(ring) => return Ok((ring, flags)),
                // EINVAL may mean "flag unknown": try the next, simpler set.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
                Err(e) => return Err(describe(e, entries)),
            }
        }
        Err(describe(last_err.expect("at least one attempt"), entries))
    }

    // ------------------------------------------------------------ submitting

    /// Accepts an operation for `target`. `entry`'s pointers must stay valid until the
    /// operation's final completion (the caller keeps the memory in the target's owner
    /// or in the slot's `keep`). Fails with -ESHUTDOWN once shutdown cancelled I/O.
    #[inline(always)]
    pub(crate) fn submit(
        &mut self,
        mut entry: Entry,
        target: Target,
        multishot: bool,
    ) -> Result<OpId, i32> {
        // The common case: not shut down, nothing waits in the backlog and there is
        // room in the submission queue and the completion budget. The slot goes
        // straight to InFlight and the entry straight into the ring: one table access,
        // no copy of the entry through the backlog's `Pending`.
        if self.in_flight < self.fast_limit {
            debug_assert!(!self.closed && self.backlog.is_empty());
            // The slot first, then the entry: the queue's room is looked at once, by
            // the push.
            let id = self.table.insert(target, multishot, Phase::InFlight)?;
            entry.set_user_data(id.raw());
            // SAFETY: as in `push_entries`: the entry's pointers stay valid until its
            // final completion, kept alive by the operation's owner.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.in_flight += 1;
                return Ok(id);
            }
            self.submit_when_full(id, entry);
            return Ok(id);
        }
        self.submit_queued(entry, target, multishot)
    }

    /// [`submit`](Self::submit)'s fast path found the submission queue full: operation
    /// `id` (inserted, its `entry` complete) goes through [`enqueue`](Self::enqueue)
    /// like any other.
    #[cold]
    #[inline(never)]
    fn submit_when_full(&mut self, id: OpId, entry: Entry) {
        if let Some(slot) = self.table.get_mut(id) {
            slot.phase = Phase::Backlog;
        }
        self.enqueue(Pending::One(id, entry));
    }

    /// [`submit`](Self::submit) off its fast path: shut down, or the operation goes
    /// through [`enqueue`](Self::enqueue) (backlog, or a full queue or budget).
    #[inline(never)]
    fn submit_queued(
        &mut self,
        entry: Entry,
        target: Target,
        multishot: bool,
    ) -> Result<OpId, i32> {
        let id = self.accept(target, multishot)?;
        self.enqueue(Pending::One(id, entry.user_data(id.raw())));
        Ok(id)
    }

    /// Submits a [`RawOp`] (checked first) for `target`; with `timeout_ns`, a deadline
    /// (see [`submit_with_deadline`](Self::submit_with_deadline)): -EINVAL for a
    /// `Timeout` (it has its own time) or a multishot operation. Callers without a
    /// deadline pass `None` as a constant, which folds the deadline path away.
    #[inline(always)]
    pub(crate) fn submit_raw(
        &mut self,
        op: &RawOp,
        target: Target,
        timeout_ns: Option<u64>,
    ) -> Result<OpId, i32> {
        validate(op)?;
        if let Some(ns) = timeout_ns {
            return self.submit_raw_with_deadline(op, target, ns);
        }
        match *op {
            RawOp::Timeout { ns } => self.submit_timeout(ns, target),
            _ => self.submit(op.entry(), target, op.is_multishot()),
        }
    }

    #[inline(never)]
    fn submit_raw_with_deadline(
        &mut self,
        op: &RawOp,
        target: Target,
        ns: u64,
    ) -> Result<OpId, i32> {
        validate_deadline(op)?;
        self.submit_with_deadline(op.entry(), target, ns)
    }

    /// Operation `id`, a multishot receive on `group` just accepted: when the group is one
    /// of [`buf_rings`](Self::buf_rings), its slot keeps the ring (memory and
    /// [`BufRing::in_use`]) until the final completion. (Done after the submission, off
    /// [`submit_raw`](Self::submit_raw): any test there costs every operation.)
    pub(crate) fn keep_buf_ring(&mut self, id: OpId, group: u16) {
        let Some(ring) = self.buf_rings.iter().find(|r| r.bgid() == group) else {
            return;
        };
        let keep: Box<dyn std::any::Any> = Box::new(ring.provided());
        if let Some(slot) = self.table.get_mut(id) {
            slot.keep = Some(keep);
        }
    }

    // ------------------------------------------------------------ C buffer rings

    /// Takes ownership of `ring` (registered with this driver's ring) for the C API.
    pub(crate) fn adopt_buf_ring(&mut self, ring: BufRing) {
        self.buf_rings.push(ring);
    }

    /// The C API's ring of group `group`, if there is one.
    pub(crate) fn buf_ring(&self, group: u16) -> Option<&BufRing> {
        self.buf_rings.iter().find(|r| r.bgid() == group)
    }

    /// Hands back the C API's ring of group `group` (to be dropped, which unregisters
    /// it, once the driver is no longer borrowed). -ENOENT when there is none; -EBUSY
    /// while it is [in use](BufRing::in_use) (then it stays).
    pub(crate) fn release_buf_ring(&mut self, group: u16) -> Result<BufRing, i32> {
        let i = self
            .buf_rings
            .iter()
            .position(|r| r.bgid() == group)
            .ok_or(-libc::ENOENT)?;
        if self.buf_rings[i].in_use() {
            return Err(-libc::EBUSY);
        }
        Ok(self.buf_rings.swap_remove(i))
    }

    /// Like [`submit`](Self::submit), with a deadline: the kernel cancels the operation
    /// (result -ECANCELED) when `deadline_ns` passes first.
    pub(crate) fn submit_with_deadline(
        &mut self,
        entry: Entry,
        target: Target,
        deadline_ns: u64,
    ) -> Result<OpId, i32> {
        let id = self.accept(target, false)?;
        let slot = self.table.get_mut(id).expect("just inserted");
        slot.timespec = timespec(deadline_ns);
        let ts: *const types::Timespec = &slot.timespec;
        let timeout = opcode::LinkTimeout::new(ts)
            .build()
            .user_data(INTERNAL_TOKEN);
        let entry = entry
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(id.raw());
        self.enqueue(Pending::Linked(id, entry, timeout));
        Ok(id)
    }

    /// A timeout of `ns` nanoseconds; completes with -ETIME when it expires.
    pub(crate) fn submit_timeout(&mut self, ns: u64, target: Target) -> Result<OpId, i32> {
        let id = self.accept(target, false)?;
        let slot = self.table.get_mut(id).expect("just inserted");
        slot.timespec = timespec(ns);
        // The slot's address is stable until the operation is freed.
        let entry = opcode::Timeout::new(&slot.timespec).build();
        self.enqueue(Pending::One(id, entry.user_data(id.raw())));
        Ok(id)
    }

    fn accept(&mut self, target: Target, multishot: bool) -> Result<OpId, i32> {
        if self.closed {
            return Err(-libc::ESHUTDOWN);
        }
        self.table.insert(target, multishot, Phase::Backlog)
    }

    /// Puts an operation in the submission queue, or in the backlog when the queue or
    /// the completion budget is full (or older operations wait there: order is kept).
    fn enqueue(&mut self, pending: Pending) {
        if let Pending::Internal(_) = pending {
            // A cancellation must not wait behind the operations it is meant to end.
            if !self.try_push(&pending) {
                self.backlog.push_front(pending);
                self.backlog_changed();
            }
            return;
        }
        if self.backlog.is_empty() && self.try_push(&pending) {
            return;
        }
        self.backlog.push_back(pending);
        self.backlog_changed();
    }

    /// Recomputes [`fast_limit`](Self::fast_limit) after the backlog or `closed`
    /// changed.
    fn backlog_changed(&mut self) {
        self.fast_limit = if self.closed || !self.backlog.is_empty() {
            0
        } else {
            self.max_in_flight
        };
    }

    fn try_push(&mut self, pending: &Pending) -> bool {
        let n = pending.entries();
        // The driver's own entries (cancellations) may go over the budget: the kernel
        // keeps completions that overflow the queue (IORING_FEAT_NODROP) and they are
        // few; holding them back could leave what they cancel in flight for ever.
        let internal = matches!(pending, Pending::Internal(_));
        if !internal && self.in_flight.saturating_add(n) > self.max_in_flight {
            return false;
        }
        let mut pushed = self.push_entries(pending, n);
        if !pushed {
            // Hand what is queued to the kernel to make room.
            self.enter(0);
            pushed = self.push_entries(pending, n);
        }
        if pushed {
            self.flags_stale = false;
            self.in_flight += n;
            if let Some(id) = pending.op() {
                if let Some(slot) = self.table.get_mut(id) {
                    slot.phase = Phase::InFlight;
                }
            }
        }
        pushed
    }

    /// Pushes `pending`'s `n` entries when the submission queue has room for all.
    fn push_entries(&mut self, pending: &Pending, n: usize) -> bool {
        let mut sq = self.ring.submission();
        if sq.capacity() - sq.len() < n {
            return false;
        }
        // SAFETY: the entries' pointers stay valid until their final completion: they
        // point into the operation's owner (future, C caller, slot keep or timespec),
        // which the table keeps alive until then.
        unsafe {
            match pending {
                Pending::One(_, e) | Pending::Internal(e) => sq.push(e).is_ok(),
                Pending::Linked(_, e, t) => sq.push_multiple(&[e.clone(), t.clone()]).is_ok(),
            }
        }
    }

    fn sq_room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Moves backlog entries into the submission queue while there is room; entries of
    /// operations cancelled meanwhile are dropped.
    fn drain_backlog(&mut self) {
        self.drain_backlog_entries();
        self.backlog_changed();
    }

    /// [`drain_backlog`](Self::drain_backlog)'s loop.
    fn drain_backlog_entries(&mut self) {
        while let Some(pending) = self.backlog.front() {
            if let Some(id) = pending.op() {
                let live = self
                    .table
                    .get_mut(id)
                    .is_some_and(|s| s.phase == Phase::Backlog);
                if !live {
                    self.backlog.pop_front();
                    continue;
                }
            }
            let pending = self.backlog.pop_front().expect("front exists");
            if !self.try_push(&pending) {
                self.backlog.push_front(pending);
                return;
            }
        }
    }

    /// Whether the submission queue holds entries the kernel has not seen yet. They go in
    /// with the next [`flush`](Self::flush) or [`park`](Self::park), whichever comes first.
    pub(crate) fn has_queued(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Whether anything but queued submissions needs the driver: completions posted or
    /// pending in the kernel, synthetic completions, or a backlog to push. Costs no
    /// system call.
    pub(crate) fn has_completions(&mut self) -> bool {
        if !self.synthetic.is_empty() || !self.backlog.is_empty() {
            return true;
        }
        let sq = self.ring.submission();
        if !self.flags_stale && (sq.taskrun() || sq.cq_overflow()) {
            return true;
        }
        drop(sq);
        !self.ring.completion().is_empty()
    }

    /// Live operations (any phase).
    pub(crate) fn live(&self) -> usize {
        self.table.live()
    }

    /// Hands the queued entries to the kernel and lets it post pending completions: at
    /// most one `io_uring_enter`, none when there is nothing to do.
    pub(crate) fn flush(&mut self) {
        if !self.backlog.is_empty() {
            self.drain_backlog();
        }
        let sq = self.ring.submission();
        let queued = !sq.is_empty();
        if queued {
            // New submissions: the kernel's flags are worth a look again.
            self.flags_stale = false;
        }
        let flagged = !self.flags_stale && (sq.taskrun() || sq.cq_overflow());
        drop(sq);
        // Completions already posted are reaped first: the kernel's "work pending" flag
        // alone is worth an enter only when there is nothing to reap. Reaping usually
        // queues submissions, and the enter that hands them over runs the pending work
        // as well (the flag makes it carry GETEVENTS).
        let reapable = flagged && !queued && !self.ring.completion().is_empty();
        if queued || (flagged && !reapable) {
            self.enter(0);
        }
        if reapable {
            return;
        }
        if flagged && !queued && self.ring.completion().is_empty() {
            // Entered for the kernel's "work pending" flags alone and got nothing: if
            // they are still up they are stale (seen with nothing in flight), and must
            // not keep the worker busy (nor count as work at shutdown). Ignored until the
            // next completion, submission or park; a park waits for real work anyway.
            let sq = self.ring.submission();
            self.flags_stale = sq.taskrun() || sq.cq_overflow();
        }
    }

    /// Hands the entries already in the submission queue to the kernel, when there
    /// are any (before a descriptor they name is closed: see `IoFd`; direct file I/O,
    /// see [`RuntimeContext::flush_io`](crate::RuntimeContext::flush_io)); the backlog
    /// is left for the next turn. Returns how many the kernel took (possibly fewer than
    /// were queued): 0 when none were queued or the enter failed (EINTR, EBUSY, EAGAIN,
    /// ...); what was not taken goes in with the next turn or park.
    pub(crate) fn flush_queued(&mut self) -> usize {
        if self.ring.submission().is_empty() {
            return 0;
        }
        self.flags_stale = false;
        self.stats.enters += 1;
        self.ring.submit().unwrap_or(0)
    }

    fn enter(&mut self, want: usize) {
        self.stats.enters += 1;
        // Errors are not failures here. EINTR: try again next turn. EBUSY/EAGAIN: the
        // completion queue is overflowing or the kernel is short of memory; reaping
        // makes progress.
        let _ = self.ring.submit_and_wait(want);
    }

    // ------------------------------------------------------------ completing

    /// Turns up to a batch of completions into deliveries (into `out`), freeing the
    /// operations they finish. Returns how many completions were handled. The worker
    /// loop does the same a completion at a time (`RuntimeContext::poll_io`, with
    /// [`pop_synthetic`](Self::pop_synthetic), [`take_completions`](Self::take_completions),
    /// [`complete`](Self::complete) and [`reaped`](Self::reaped)), delivering each one as
    /// soon as it is resolved; this is for the driver's own drain and its tests.
    pub(crate) fn reap(&mut self, out: &mut Vec<Delivery>) -> usize {
        let mut handled = 0;
        while handled < REAP_BATCH {
            let Some((user_data, res, flags)) = self.pop_synthetic() else {
                break;
            };
            out.extend(self.complete_any(user_data, res, flags));
            handled += 1;
        }
        let mut batch = cqe_batch();
        while handled < REAP_BATCH {
            let cqes = self.take_completions(&mut batch);
            if cqes.is_empty() {
                break;
            }
            handled += cqes.len();
            for cqe in cqes {
                out.extend(self.complete_any(cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
        if handled > 0 {
            self.reaped(handled);
        }
        handled
    }

    /// The oldest completion made up by the driver (an operation cancelled before the
    /// kernel saw it), to be handled like the kernel's, before them.
    #[inline]
    pub(crate) fn pop_synthetic(&mut self) -> Option<(u64, i32, u32)> {
        if self.synthetic.is_empty() {
            return None;
        }
        self.synthetic.pop_front()
    }

    /// Copies up to a batch of posted completions out of the ring (moving its head once),
    /// for [`complete`](Self::complete) one by one. Each must be completed: the ring no
    /// longer holds them.
    #[inline]
    pub(crate) fn take_completions<'a>(&mut self, batch: &'a mut CqeBatch) -> &'a [cqueue::Entry] {
        self.ring.completion().fill(batch)
    }

    /// After a reap that handled `handled` completions (at least one): the kernel's
    /// flags are worth a look again, operations waiting in the backlog may have room
    /// now, and the next park's batch follows what the last parks brought.
    #[inline]
    pub(crate) fn reaped(&mut self, handled: usize) {
        self.flags_stale = false;
        self.batch.reaped(handled);
        if !self.backlog.is_empty() {
            self.drain_backlog();
        }
    }

    /// [`complete`](Self::complete) and, for what it leaves,
    /// [`complete_other`](Self::complete_other).
    fn complete_any(&mut self, user_data: u64, res: i32, flags: u32) -> Option<Delivery> {
        match self.complete(user_data, res, flags) {
            Completed::Deliver(d) => Some(d),
            Completed::Nothing => None,
            Completed::Other => self.complete_other(user_data, res, flags),
        }
    }

    /// One completion (from the ring or [`pop_synthetic`](Self::pop_synthetic)): what
    /// the worker must do for it, once it no longer borrows the driver. An operation's
    /// final completion frees it (a future's, once collected). Handles the common cases
    /// (a C callback's or a future's operation ending, a multishot future's entry) and
    /// leaves the rest ([`Completed::Other`]) to
    /// [`complete_other`](Self::complete_other), out of line: that way the caller's
    /// match on the result folds into this one's branches.
    #[inline(always)]
    pub(crate) fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> Completed {
        if user_data & INTERNAL_BIT != 0 {
            self.complete_internal(user_data);
            return Completed::Nothing;
        }
        let Some(op) = self.table.in_flight(user_data) else {
            return Completed::Nothing;
        };
        let slot = &mut *op.slot;
        if slot.multishot {
            if let (true, Target::Future(waker)) = (cqueue::more(flags), &mut slot.target) {
                // A multishot receive's (or accept's) entry with more to come: queued for
                // its future, woken once per batch (the next Pending poll leaves its
                // waker again).
                slot.results.push_back(OpResult { res, flags });
                return Completed::wake(waker.take());
            }
            return Completed::Other;
        }
        // Each arm ends the operation's flight itself (no join before the caller's
        // match on the result).
        match &mut slot.target {
            &mut Target::Callback { cb, arg } => {
                // Single-shot: no C operation of one shot selects a provided buffer (only
                // `RawOp::RecvMulti` does), so the flags are 0. Not reading the buffer bits
                // here saves ~7 instructions per completion (nop_prof cb: 291.8 -> 284.9).
                debug_assert_eq!(c_buffer_flags(flags), 0);
                op.remove_plain();
                self.in_flight -= 1;
                self.stats.completed += 1;
                Completed::Deliver(Delivery::Call {
                    cb,
                    arg,
                    res: res as i64,
                    flags: 0,
                })
            }
            Target::Future(waker) => {
                slot.results.push_back(OpResult { res, flags });
                slot.phase = Phase::Done;
                // A future collects its result (and frees the slot) when polled.
                let waker = waker.take();
                self.in_flight -= 1;
                self.stats.completed += 1;
                Completed::wake(waker)
            }
            _ => Completed::Other,
        }
    }

    /// A completion of the driver's own: the wake read, a cancellation or a linked
    /// timeout; anything else with the internal bit is stale.
    #[cold]
    #[inline(never)]
    fn complete_internal(&mut self, user_data: u64) {
        if user_data == WAKE_TOKEN {
            self.wake_armed = false;
        } else if user_data == INTERNAL_TOKEN {
            self.in_flight -= 1;
        } else {
            // Counted as stale.
            let _ = self.table.in_flight_mut(user_data);
        }
    }

    /// The completions [`complete`](Self::complete) leaves: multishot entries with more
    /// to come, completion queues and orphans.
    #[inline(never)]
    pub(crate) fn complete_other(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
    ) -> Option<Delivery> {
        let more = cqueue::more(flags);
        let (id, slot) = self.table.in_flight_mut(user_data)?;
        let mut delivery = None;
        let result = OpResult { res, flags };
        let future = matches!(slot.target, Target::Future(_));
        let finished = !more || !slot.multishot;
        match &mut slot.target {
            Target::Future(waker) => {
                slot.results.push_back(result);
                delivery = if finished {
                    waker.take()
                } else {
                    waker.clone()
                }
                .map(Delivery::Wake);
                if finished {
                    slot.phase = Phase::Done;
                }
            }
            Target::Callback { cb, arg } => {
                delivery = Some(Delivery::Call {
                    cb: *cb,
                    arg: *arg,
                    res: res as i64,
                    flags: c_buffer_flags(flags) | if finished { 0 } else { CQE_F_MORE },
                });
            }
            Target::Queue { cq, user_data } => {
                // SAFETY: the queue holds a reservation for this operation, so it is
                // alive until the final completion is posted.
                let cq: &CompletionQueue = unsafe { &**cq };
                let cqe = Cqe {
                    user_data: *user_data,
                    res: res as i64,
                    flags: c_buffer_flags(flags) | if finished { 0 } else { CQE_F_MORE },
                    worker: self.worker,
                };
                post(cq, cqe, finished);
            }
            Target::Orphan => {
                if slot.result_is_fd && res >= 0 {
                    // E.g. an accept that won the race against its cancel.
                    close_orphan_fd(res);
                } else if let Some(keep) = &slot.keep {
                    // A dropped multishot receive: its buffer goes back to its ring.
                    super::buf_ring::give_back_orphaned(keep.as_ref(), flags);
                }
            }
        }
        if finished {
            self.in_flight -= 1;
            self.stats.completed += 1;
            if !future {
                // A future collects its result (and frees the slot) when polled.
                self.table.remove(id);
            }
        }
        delivery
    }

    // ------------------------------------------------------------ futures

    /// Marks `id` as making a file descriptor (accept, socket, openat): one nobody
    /// collects (the future was dropped) is closed by the driver.
    pub(crate) fn set_result_is_fd(&mut self, id: OpId) {
        if let Some(slot) = self.table.get_mut(id) {
            slot.result_is_fd = true;
        }
    }

    /// One poll of `id` by its future, in one table access: the next result if one
    /// arrived (the operation is freed with its final result); `None` once the final
    /// result was taken (the operation is gone); otherwise `Pending`, and `waker` is
    /// left to be woken by the next completion (replacing the one left before unless
    /// that one wakes the same task).
    #[inline]
    pub(crate) fn poll_op(&mut self, id: OpId, waker: &Waker) -> Poll<Option<OpResult>> {
        let Some(slot) = self.table.get_mut(id) else {
            return Poll::Ready(None);
        };
        if let Some(result) = slot.results.pop_front() {
            if slot.phase == Phase::Done && slot.results.is_empty() {
                self.table.remove(id);
            }
            return Poll::Ready(Some(result));
        }
        if let Target::Future(w) = &mut slot.target {
            match w {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
        Poll::Pending
    }

    /// The future of `id` is gone: keep `keep` (memory the kernel may still use) until
    /// the kernel is done, and ask it to stop. Returns the old target (its waker), for
    /// the caller to drop once it no longer borrows the driver.
    pub(crate) fn orphan(
        &mut self,
        id: OpId,
        keep: Option<Box<dyn std::any::Any>>,
    ) -> Option<Target> {
        let slot = self.table.get_mut(id)?;
        match slot.phase {
            Phase::Done => {
                self.table.remove(id);
                None
            }
            Phase::Backlog => {
                // The kernel never saw it.
                let old = std::mem::replace(&mut slot.target, Target::Orphan);
                self.table.remove(id);
                self.stats.completed += 1;
                Some(old)
            }
            Phase::InFlight => {
                let old = std::mem::replace(&mut slot.target, Target::Orphan);
                slot.drop_results();
                slot.keep = keep;
                let _ = self.cancel(id);
                Some(old)
            }
            Phase::Free => None,
        }
    }

    // ------------------------------------------------------------ cancelling

    /// Asks for `id` to be cancelled: it completes once, with -ECANCELED unless it
    /// finished first. -ENOENT when `id` names no live operation of this driver;
    /// -EALREADY when a cancel was already asked for.
    pub(crate) fn cancel(&mut self, id: OpId) -> Result<(), i32> {
        let Some(slot) = self.table.get_mut(id) else {
            return Err(-libc::ENOENT);
        };
        match slot.phase {
            Phase::Backlog => {
                // Complete it here; its backlog entry is skipped when reached.
                slot.phase = Phase::InFlight;
                slot.cancel_sent = true;
                self.in_flight += 1;
                self.synthetic.push_back((id.raw(), -libc::ECANCELED, 0));
                Ok(())
            }
            Phase::InFlight if !slot.cancel_sent => {
                slot.cancel_sent = true;
                let entry = opcode::AsyncCancel::new(id.raw())
                    .build()
                    .user_data(INTERNAL_TOKEN);
                self.enqueue(Pending::Internal(entry));
                Ok(())
            }
            Phase::InFlight => Err(-libc::EALREADY),
            Phase::Done | Phase::Free => Err(-libc::ENOENT),
        }
    }

    /// Shutdown: cancels every live operation and refuses new ones from now on.
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.backlog_changed();
        for (id, phase) in self.table.live_ids() {
            if matches!(phase, Phase::Backlog | Phase::InFlight) {
                let _ = self.cancel(id);
            }
        }
    }

    // ------------------------------------------------------------ parking

    /// Sleeps until the eventfd is written or a completion arrives. With batching on
    /// and recent parks bringing many completions, sleeps until a batch of them arrives
    /// or, once the batch wait has passed, until at least one is there (see
    /// [`ParkBatch`]): a wake-up or a lone completion then waits up to the batch wait.
    pub(crate) fn park(&mut self) {
        self.flags_stale = false;
        if self.park_in_poll {
            self.park_in_poll();
            return;
        }
        // A park handing over queued submissions is also an enter that submits.
        let mut handing_over = self.ring.submission().len();
        if handing_over != 0 {
            self.stats.enters += 1;
        }
        if !self.wake_armed {
            let read = opcode::Read::new(
                types::Fd(self.eventfd),
                &mut *self.wake_buf as *mut u64 as *mut u8,
                8,
            )
            .build()
            .user_data(WAKE_TOKEN);
            if self.sq_room() == 0 {
                // Hands the queued entries over now: the park hands over none of them.
                self.enter(0);
                handing_over = 0;
            }
            // SAFETY: the buffer is boxed and owned by the driver until the read
            // completes (the driver is dropped only after a final drain, see Drop).
            if unsafe { self.ring.submission().push(&read) }.is_err() {
                // The queue stays full: do not sleep, the caller loops.
                return;
            }
            self.wake_armed = true;
        }
        let want = self
            .batch
            .park(handing_over, self.in_flight.saturating_sub(handing_over));
        // Errors are not failures here (EINTR: the caller loops; EBUSY/EAGAIN: reaping
        // makes progress).
        let _ = if want > 1 {
            self.stats.batched_parks += 1;
            // The kernel ends a wait whose minimum wait outlasts its timeout when the
            // minimum wait ends, events or not, and no timeout counts as the shortest:
            // the long timeout makes a batch that found nothing wait on for one.
            let forever = types::Timespec::new().sec(PARK_TIMEOUT_SECS);
            let args = types::SubmitArgs::new()
                .timespec(&forever)
                .min_wait_usec(self.batch.wait_us);
            self.ring.submitter().submit_with_args(want as usize, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
    }

    fn park_in_poll(&mut self) {
        // Submit what is queued first, then wait on both the eventfd and the ring (its fd
        // polls readable when completions are posted).
        self.flush();
        let mut pfd = [
            libc::pollfd {
                fd: self.eventfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; the result is only a hint (EINTR is fine).
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a u64; the eventfd is non-blocking.
        unsafe { libc::read(self.eventfd, &mut count as *mut u64 as *mut _, 8) };
    }
}

/// Posts one completion to a completion queue: the final one uses the reservation.
fn post(cq: &CompletionQueue, cqe: Cqe, last: bool) {
    if last {
        cq.post_reserved(cqe);
    } else {
        cq.post(cqe);
    }
}

/// Completion-queue entries for a ring of `sq_entries`: 8 per submission entry, at least
/// 4096, at most the kernel's 65536 (16 bytes each: 64 KiB at the default ring size).
fn cq_entries_for(sq_entries: u32) -> u32 {
    sq_entries.saturating_mul(8).clamp(4096, 65536)
}

fn timespec(ns: u64) -> types::Timespec {
    types::Timespec::new()
        .sec(ns / 1_000_000_000)
        .nsec((ns % 1_000_000_000) as u32)
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The worker loop ends only when no operation is live; after a panic there may
        // be some. The kernel may write their memory until it completes them, so cancel
        // everything and wait for the last completion before the ring (and the memory)
        // goes. Deliveries are dropped: nobody is left to receive them.
        self.close();
        let mut sink = Vec::new();
        let mut rounds = 0;
        while self.in_flight > 0 && rounds < 10_000 {
            self.drain_backlog();
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap(&mut sink);
            sink.clear();
            rounds += 1;
        }
        if self.wake_armed {
            // Make the armed read finish so the kernel no longer owns `wake_buf`.
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.eventfd, &one as *const u64 as *const _, 8) };
            while self.wake_armed {
                if self.ring.submit_and_wait(1).is_err() {
                    break;
                }
                self.reap(&mut sink);
            }
        }
        // The C API's rings left over: unregistered here, while the ring is still
        // open (their own drop could not reach this driver any more).
        for r in self.buf_rings.drain(..) {
            if r.unregister_on(&self.ring.submitter()).is_err() {
                // Still registered: leaked on purpose (see the buf_ring module doc);
                // its own drop must not look for a driver that is going away.
                std::mem::forget(r);
            }
        }
    }
}

/// Whether this process runs under valgrind (its preload library is in LD_PRELOAD).
fn running_under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
}

/// An io_uring set-up error with the likely reason spelled out.
fn describe(e: io::Error, entries: u32) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not available in this kernel",
        Some(libc::EPERM) => "io_uring is forbidden here (seccomp or io_uring_disabled)",
        Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
        Some(libc::EINVAL) => "the kernel refused the ring parameters (entries out of range?)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "no file descriptor left for the ring (RLIMIT_NOFILE or the system's limit)"
        }
        _ => "io_uring_setup failed",
    };
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    crate::runtime::OsError::new(
        errno,
        format!("cannot create an io_uring ring of {entries} entries: {why} ({e})"),
    )
    .into()
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;

    #[test]
    fn c_completions_name_the_provided_buffer_only_when_the_kernel_did() {
        // IORING_CQE_F_BUFFER (bit 0) with buffer id 0x1234 in the upper half, and
        // IORING_CQE_F_MORE (bit 1), which the C flags carry on their own.
        let kernel = 1 | 2 | (0x1234 << 16);
        assert_eq!(
            c_buffer_flags(kernel),
            CQE_F_BUFFER | (0x1234 << CQE_BUFFER_SHIFT)
        );
        assert_eq!(c_buffer_flags(2), 0);
        assert_eq!(
            c_buffer_flags(0x1234 << 16),
            0,
            "an id without the flag is no buffer"
        );
        assert_eq!(c_buffer_flags(1), CQE_F_BUFFER, "buffer id 0");
    }

    fn eventfd() -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall, result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh fd we own.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    /// A thread that writes `fd` (an eventfd the caller keeps open until it joins the
    /// thread) 5 ms from now: long enough for the caller to be parked by then.
    fn write_eventfd_soon(fd: std::os::fd::RawFd) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let one: u64 = 1;
            // SAFETY: 8 bytes from a u64 to an eventfd the caller keeps open.
            unsafe { libc::write(fd, &one as *const u64 as *const _, 8) };
        })
    }

    #[test]
    fn a_ring_is_made_with_the_flags_the_kernel_accepts() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let driver = Driver::new(8, efd.as_raw_fd(), 0).expect("ring");
        let flags = driver.flags();
        // DEFER_TASKRUN is only ever asked for together with SINGLE_ISSUER.
        assert!(!flags.defer_taskrun || flags.single_issuer, "{flags:?}");
    }

    #[test]
    fn an_impossible_ring_fails_with_errno_and_reason() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let err = Driver::new(0, efd.as_raw_fd(), 0)
            .err()
            .expect("0 entries is refused");
        assert_eq!(crate::OsError::errno_of(&err), libc::EINVAL);
        assert!(err.to_string().contains("entries"), "{err}");
    }

    #[test]
    fn a_written_eventfd_wakes_a_parked_driver() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let mut driver = Driver::new(8, efd.as_raw_fd(), 0).expect("ring");
        let waker = write_eventfd_soon(efd.as_raw_fd());
        driver.park(); // returns only once the eventfd read completed
        driver.reap(&mut Vec::new());
        assert!(!driver.wake_armed);
        waker.join().unwrap();
    }

    #[test]
    fn the_valgrind_park_in_poll_is_woken_the_same_way() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let mut driver = Driver::new(8, efd.as_raw_fd(), 0).expect("ring");
        driver.park_in_poll = true;
        let waker = write_eventfd_soon(efd.as_raw_fd());
        driver.park();
        waker.join().unwrap();
        let mut left: u64 = 0;
        // SAFETY: 8-byte read into a u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(efd.as_raw_fd(), &mut left as *mut u64 as *mut _, 8) };
        assert_eq!(n, -1, "the park consumed the wake-up");
    }

    #[test]
    fn a_park_waits_for_a_batch_only_after_parks_that_brought_many_completions() {
        const MANY: usize = 1000; // operations in the kernel: no cap from them
        let mut batch = ParkBatch::default();
        // A park handing over `sent` entries, then the reap of what it brought.
        let park_then_reap = |batch: &mut ParkBatch, sent: usize, n: usize| {
            batch.park(sent, MANY);
            batch.reaped(n);
        };
        for _ in 0..64 {
            park_then_reap(&mut batch, 0, 20);
        }
        assert_eq!(batch.park(0, MANY), 1, "off: always the plain park");
        batch.wait_us = 50;
        assert_eq!(batch.park(0, MANY), 20, "busy: the recent batch size");
        assert_eq!(batch.park(5, MANY), 25, "and what this park hands over");
        assert_eq!(
            batch.park(0, 80),
            10,
            "at most one in 8 of those in the kernel"
        );
        assert_eq!(
            batch.park(0, 31),
            1,
            "too few in the kernel: the plain park"
        );
        for _ in 0..64 {
            park_then_reap(&mut batch, 0, 1000);
        }
        assert_eq!(batch.park(0, MANY), BATCH_MAX, "capped");
        for _ in 0..64 {
            park_then_reap(&mut batch, 0, 1);
        }
        assert_eq!(batch.park(0, MANY), 1, "light load: the plain park again");
        // Reaps that follow no park (a busy turn's own enter) do not count.
        batch.reaped(0);
        for _ in 0..64 {
            batch.reaped(20);
        }
        assert_eq!(batch.park(0, MANY), 1);
        batch.reaped(0);
        // Each park sends two replies, which complete in the park's own call, and brings
        // the two requests that follow: not a batch's worth of outside completions.
        for _ in 0..64 {
            park_then_reap(&mut batch, 2, 4);
        }
        assert_eq!(
            batch.park(2, MANY),
            1,
            "its own sends do not make a worker busy"
        );
        batch.reaped(4);
        for _ in 0..64 {
            park_then_reap(&mut batch, 10, 30);
        }
        assert_eq!(
            batch.park(10, MANY),
            30,
            "twenty outside completions a park: busy"
        );
    }

    #[test]
    fn a_park_waiting_for_a_batch_still_returns_for_a_lone_wake_up() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let mut driver = Driver::new(8, efd.as_raw_fd(), 0).expect("ring");
        if !driver.set_batch_wait(std::time::Duration::from_millis(1)) {
            return; // a kernel before 6.12: batching stays off, the park is the plain one
        }
        // Enough operations in the kernel for a full batch: polls of a pipe nobody
        // writes (the driver's drop cancels them).
        let mut fds = [0; 2];
        // SAFETY: plain syscall into a two-int array, result checked.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let in_kernel = BATCH_SHARE * BATCH_MAX as usize;
        for _ in 0..in_kernel {
            let poll = opcode::PollAdd::new(types::Fd(fds[0]), libc::POLLIN as u32).build();
            driver
                .submit(poll, Target::Orphan, false)
                .expect("submitted");
        }
        driver.flush();
        assert_eq!(
            driver.in_flight, in_kernel,
            "the driver counts them in the kernel"
        );
        driver.batch.avg8 = 8 * BATCH_MAX;
        let waker = write_eventfd_soon(efd.as_raw_fd());
        // One completion (the wake read) of the 32 asked for: returns once the batch
        // wait has passed.
        driver.park();
        assert_eq!(
            driver.stats().batched_parks,
            1,
            "the park waited for a batch"
        );
        driver.reap(&mut Vec::new());
        assert!(!driver.wake_armed);
        waker.join().unwrap();
        drop(driver);
        // SAFETY: the pipe's own fds, no longer used by the dropped driver.
        unsafe { libc::close(fds[0]) };
        // SAFETY: as above.
        unsafe { libc::close(fds[1]) };
    }
}
