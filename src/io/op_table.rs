//! The operation table: one slot per operation the driver owns, from submission until
//! the kernel's last completion for it.
//!
//! Slots live in fixed-size chunks that are never moved or freed while the driver lives,
//! so a slot's address is stable (the kernel may be handed pointers into it, e.g. a
//! timeout's `timespec`). An operation is named by its [`OpId`]: the slot index in the low
//! 27 bits (at most [`MAX_SLOTS`] operations live per worker), the slot's generation in
//! the next 26, bumped every time the slot is freed, and the owning worker in the 10
//! above them, so no two workers of a runtime share a live operation's id (a C caller
//! cancelling another worker's operation on its own gets -ENOENT, not one of its own
//! operations). A slot's id comes back only after 2^26 - 1 more operations used that slot
//! (the free list hands the last freed slot out first, so a busy worker's favourite slot
//! gets there soonest: at 3.5 million operations a second, after about 20 seconds);
//! a stale id kept longer could name a new operation. A slot keeps the whole id of its
//! current (or, while free, its next) operation, so taking a slot reads its id and
//! checking a completion compares one word. A completion whose id does not name an
//! operation in flight (stale, foreign, or corrupted) is counted and ignored, never
//! dereferenced.

use std::any::Any;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::task::Waker;

use io_uring::types::Timespec;

use crate::runtime::completion::CompletionQueue;
use crate::runtime::RuntimeContext;

/// Slots per chunk (a power of two: an index splits into chunk and place by shift and
/// mask).
const CHUNK: usize = 64;
const CHUNK_SHIFT: u32 = CHUNK.trailing_zeros();
/// Ids with this bit set are the driver's own (wake read, cancellations); never a slot.
pub(crate) const INTERNAL_BIT: u64 = 1 << 63;
/// The slot index bits of an id.
const INDEX_MASK: u64 = (1 << 27) - 1;
/// Most slots a table has (operations live at once on one worker): 2^27, over 10 GiB of
/// slots.
pub(crate) const MAX_SLOTS: usize = 1 << 27;
/// Where the generation starts in an id.
const GENERATION_SHIFT: u32 = 27;
/// The largest generation.
const GENERATION_MASK: u64 = (1 << 26) - 1;
/// Where the owning worker's number starts in an id (10 bits: `RuntimeBuilder::MAX_WORKERS`
/// is 1024).
const OWNER_SHIFT: u32 = 53;
/// The owner bits.
const OWNER_MASK: u64 = (1 << 10) - 1;

/// An operation's name: owning worker, slot index and generation; always > 0 and < 2^63,
/// so it fits the C API's positive `int64_t` op ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OpId(u64);

impl OpId {
    /// Slot `index`'s first id (generation 1) in the table of `owner` (a worker's number,
    /// taken modulo 1024).
    fn first(owner: u32, index: u32) -> OpId {
        debug_assert!(u64::from(owner) <= OWNER_MASK && u64::from(index) <= INDEX_MASK);
        OpId(((owner as u64 & OWNER_MASK) << OWNER_SHIFT) | (1 << GENERATION_SHIFT) | index as u64)
    }

    /// The id of the same slot's next operation: the generation goes 1, 2, ...,
    /// `GENERATION_MASK`, then 1 again (never 0, so the id stays > 0 and < 2^63).
    #[inline(always)]
    fn next(self) -> OpId {
        if self.generation() == GENERATION_MASK {
            OpId(self.0 & !(GENERATION_MASK << GENERATION_SHIFT) | (1 << GENERATION_SHIFT))
        } else {
            OpId(self.0 + (1 << GENERATION_SHIFT))
        }
    }

    /// The id as submitted in `user_data`.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// Decodes a `user_data` that may be anything (the kernel echoes what we gave it, but
    /// a table must never trust it).
    pub(crate) fn from_raw(raw: u64) -> Option<OpId> {
        (raw & INTERNAL_BIT == 0 && OpId(raw).generation() != 0).then_some(OpId(raw))
    }

    fn index(self) -> usize {
        (self.0 & INDEX_MASK) as usize
    }

    fn generation(self) -> u64 {
        (self.0 >> GENERATION_SHIFT) & GENERATION_MASK
    }

    #[cfg(test)]
    fn owner(self) -> u32 {
        ((self.0 >> OWNER_SHIFT) & OWNER_MASK) as u32
    }
}

/// A C-style I/O callback: `cb(ctx, res, flags, arg)`, run on the worker that submitted
/// the operation, once per completion (`flags & 1`: more follow, for multishot).
pub type IoCallback =
    unsafe extern "C" fn(ctx: *mut RuntimeContext, res: i64, flags: u32, arg: *mut c_void);

/// Who receives an operation's completions. Exactly one per operation.
pub(crate) enum Target {
    /// A Rust future polls for the result (and may have left a waker).
    Future(Option<Waker>),
    /// A C callback on the submitting worker.
    Callback { cb: IoCallback, arg: *mut c_void },
    /// A completion queue, which holds one reservation for this operation.
    Queue {
        cq: *const CompletionQueue,
        user_data: u64,
    },
    /// Nobody listens any more (the future was dropped): the slot only keeps what the
    /// kernel may still write until the kernel is done.
    Orphan,
}

/// Where an operation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not in use.
    Free,
    /// Waiting in the driver's backlog for room in the submission queue.
    Backlog,
    /// Handed to the kernel; completions may arrive.
    InFlight,
    /// The final completion arrived; a future has not collected it yet.
    Done,
}

/// One result the kernel gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpResult {
    /// The CQE's `res`: >= 0 success, < 0 a negative errno.
    pub(crate) res: i32,
    /// The CQE's flags (`IORING_CQE_F_MORE`, buffer ids, ...).
    pub(crate) flags: u32,
}

/// The results of one operation its future has not collected yet, in order. A
/// single-shot operation has at most one, kept inline; only a multishot operation with
/// several results waiting spills into a queue (whose allocation the slot keeps).
pub(crate) struct Results {
    first: Option<OpResult>,
    rest: VecDeque<OpResult>,
}

impl Results {
    fn new() -> Results {
        Results {
            first: None,
            rest: VecDeque::new(),
        }
    }

    /// Appends a result.
    #[inline]
    pub(crate) fn push_back(&mut self, r: OpResult) {
        if self.first.is_none() {
            // Empty: `rest` is empty whenever `first` is (see `pop_front`).
            self.first = Some(r);
        } else {
            self.rest.push_back(r);
        }
    }

    /// Takes the oldest result.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<OpResult> {
        let r = self.first.take()?;
        if !self.rest.is_empty() {
            self.first = self.rest.pop_front();
        }
        Some(r)
    }

    /// Whether no result waits.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Takes every result, oldest first.
    pub(crate) fn drain(
        &mut self,
        _all: std::ops::RangeFull,
    ) -> impl Iterator<Item = OpResult> + '_ {
        self.first.take().into_iter().chain(self.rest.drain(..))
    }
}

/// One operation's state.
pub(crate) struct Slot {
    /// The id of the slot's operation while it is live; of its next one while it is
    /// free (the generation is bumped when the slot is freed).
    id: OpId,
    pub(crate) phase: Phase,
    pub(crate) target: Target,
    /// Results a future has not collected yet (one for single-shot operations, any number
    /// for multishot ones).
    pub(crate) results: Results,
    pub(crate) multishot: bool,
    /// An `ASYNC_CANCEL` was already sent for it.
    pub(crate) cancel_sent: bool,
    /// A result >= 0 is a new file descriptor (accept, socket, openat): the driver
    /// closes those nobody will collect (orphaned operation) rather than leak them.
    pub(crate) result_is_fd: bool,
    /// Memory the kernel may still read or write (buffers, addresses) of an operation
    /// whose future was dropped, or the provided-buffer ring a C multishot receive
    /// selects from (`Driver::keep_buf_ring`); freed with the slot, after the final
    /// completion.
    pub(crate) keep: Option<Box<dyn Any>>,
    /// A timeout's duration; the kernel is given its address.
    pub(crate) timespec: Timespec,
    next_free: u32,
}

impl Slot {
    fn empty(owner: u32, index: u32, next_free: u32) -> Slot {
        Slot {
            id: OpId::first(owner, index),
            phase: Phase::Free,
            target: Target::Orphan,
            results: Results::new(),
            multishot: false,
            cancel_sent: false,
            result_is_fd: false,
            keep: None,
            timespec: Timespec::new(),
            next_free,
        }
    }
}

impl Slot {
    /// Drops uncollected results and kept memory of a slot being freed.
    #[cold]
    #[inline(never)]
    fn release_kept(&mut self) {
        self.drop_results();
        self.keep = None;
    }

    /// Forgets uncollected results; a descriptor among them is closed.
    pub(crate) fn drop_results(&mut self) {
        for r in self.results.drain(..) {
            if self.result_is_fd && r.res >= 0 {
                close_orphan_fd(r.res);
            }
        }
    }
}

/// Closes a descriptor the kernel made for an operation nobody waits for any more.
pub(crate) fn close_orphan_fd(fd: i32) {
    // SAFETY: the kernel created `fd` for this operation and nobody else has seen it.
    unsafe { libc::close(fd) };
}

const NO_FREE: u32 = u32::MAX;

/// An in-flight operation found by [`OpTable::in_flight`].
pub(crate) struct InFlight<'a> {
    pub(crate) id: OpId,
    pub(crate) slot: &'a mut Slot,
    free_head: &'a mut u32,
    removed: &'a mut u64,
}

impl InFlight<'_> {
    /// [`OpTable::remove`] for a single-shot callback operation: its slot holds neither
    /// results (a future's) nor kept memory (a future's, or a multishot receive's ring),
    /// so there is nothing to drop but the id; no second lookup.
    #[inline(always)]
    pub(crate) fn remove_plain(self) {
        let slot = self.slot;
        debug_assert!(slot.results.is_empty() && slot.keep.is_none());
        debug_assert!(!matches!(slot.target, Target::Future(_)));
        slot.phase = Phase::Free;
        slot.id = self.id.next();
        // Not a future's (see above): the old target owns nothing, no drop glue.
        std::mem::forget(std::mem::replace(&mut slot.target, Target::Orphan));
        slot.next_free = *self.free_head;
        *self.free_head = self.id.index() as u32;
        *self.removed += 1;
    }
}

/// The table. Owned by one driver, used only on its worker thread.
pub(crate) struct OpTable {
    /// The worker whose operations these are (part of every id).
    owner: u32,
    /// Most slots the table may have ([`MAX_SLOTS`]; less in tests).
    max_slots: usize,
    /// Fixed-size chunks: a place within one needs no bounds check.
    chunks: Vec<Box<[Slot; CHUNK]>>,
    free_head: u32,
    /// Operations ever inserted, and removed: `live` is the difference (one count per
    /// insert doubles as the driver's count of accepted operations).
    inserted: u64,
    removed: u64,
    /// Completions that named no live operation.
    stale: u64,
}

impl OpTable {
    /// An empty table for worker `owner`'s operations (its number goes into their ids).
    pub(crate) fn new(owner: u32) -> OpTable {
        Self::with_max_slots(owner, MAX_SLOTS)
    }

    /// An empty table that never grows past `max_slots` (a multiple of the chunk size).
    fn with_max_slots(owner: u32, max_slots: usize) -> OpTable {
        OpTable {
            owner,
            max_slots,
            chunks: Vec::new(),
            free_head: NO_FREE,
            inserted: 0,
            removed: 0,
            stale: 0,
        }
    }

    /// Takes a free slot (growing the table by one chunk when none is free) for an
    /// operation with `target`, starting in `phase` (Backlog, or InFlight when its entry
    /// goes straight into the ring); O(1). -ENOMEM (and `target` dropped) when the table
    /// already has [`MAX_SLOTS`] live operations.
    #[inline]
    pub(crate) fn insert(
        &mut self,
        target: Target,
        multishot: bool,
        phase: Phase,
    ) -> Result<OpId, i32> {
        if self.free_head == NO_FREE && !self.grow() {
            return Err(-libc::ENOMEM);
        }
        let index = self.free_head;
        let i = index as usize;
        debug_assert!(i >> CHUNK_SHIFT < self.chunks.len());
        // SAFETY: the free list only ever names slots of existing chunks (`grow` links
        // a new chunk's slots, `remove` a slot `get_mut` found), and chunks are never
        // dropped while the table lives.
        let chunk = unsafe { self.chunks.get_unchecked_mut(i >> CHUNK_SHIFT) };
        let slot = &mut chunk[i & (CHUNK - 1)];
        self.free_head = slot.next_free;
        debug_assert_eq!(slot.id.index(), i);
        debug_assert!(phase != Phase::Free && phase != Phase::Done);
        slot.phase = phase;
        // A free slot's target is always `Orphan` (see `remove`), which owns nothing:
        // overwrite it without running drop glue.
        debug_assert!(matches!(slot.target, Target::Orphan));
        std::mem::forget(std::mem::replace(&mut slot.target, target));
        slot.multishot = multishot;
        slot.cancel_sent = false;
        slot.result_is_fd = false;
        debug_assert!(slot.results.is_empty() && slot.keep.is_none());
        self.inserted += 1;
        Ok(slot.id)
    }

    /// Adds a chunk of free slots; false when that would pass `max_slots`.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        if self.chunks.len() * CHUNK + CHUNK > self.max_slots {
            return false;
        }
        let base = (self.chunks.len() * CHUNK) as u32;
        let chunk: Box<[Slot]> = (0..CHUNK as u32)
            .map(|i| {
                let next = if i + 1 < CHUNK as u32 {
                    base + i + 1
                } else {
                    NO_FREE
                };
                Slot::empty(self.owner, base + i, next)
            })
            .collect();
        let Ok(chunk) = chunk.try_into() else {
            unreachable!("a chunk has CHUNK slots");
        };
        self.chunks.push(chunk);
        self.free_head = base;
        true
    }

    /// The slot at `index`, whatever its state; None past the table.
    #[inline(always)]
    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        let chunk = self.chunks.get_mut(index >> CHUNK_SHIFT)?;
        Some(&mut chunk[index & (CHUNK - 1)])
    }

    /// The slot `id` names, if it is still that operation's.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: OpId) -> Option<&mut Slot> {
        let slot = self.slot(id.index())?;
        (slot.id == id && slot.phase != Phase::Free).then_some(slot)
    }

    /// Resolves a completion's `user_data` to its in-flight slot; anything else is
    /// counted as stale and yields None.
    #[inline]
    pub(crate) fn in_flight_mut(&mut self, user_data: u64) -> Option<(OpId, &mut Slot)> {
        self.in_flight(user_data).map(|op| (op.id, op.slot))
    }

    /// [`in_flight_mut`](Self::in_flight_mut), with the means to free the slot without
    /// looking it up again.
    #[inline(always)]
    pub(crate) fn in_flight(&mut self, user_data: u64) -> Option<InFlight<'_>> {
        // No `OpId::from_raw`: the comparison with the slot's whole id rejects anything
        // else (a slot's id has neither generation 0 nor the internal bit).
        let id = OpId(user_data);
        let index = id.index();
        let found = match self.chunks.get_mut(index >> CHUNK_SHIFT) {
            Some(chunk) => {
                let slot = &mut chunk[index & (CHUNK - 1)];
                (slot.id == id && slot.phase == Phase::InFlight).then_some(slot)
            }
            None => None,
        };
        match found {
            Some(slot) => Some(InFlight {
                id,
                slot,
                free_head: &mut self.free_head,
                removed: &mut self.removed,
            }),
            None => {
                self.stale += 1;
                None
            }
        }
    }

    /// Frees `id`'s slot, dropping whatever it kept (and closing descriptors among
    /// uncollected results, see [`Slot::result_is_fd`]); the id goes stale.
    #[inline(always)]
    pub(crate) fn remove(&mut self, id: OpId) {
        let head = self.free_head;
        let Some(slot) = self.get_mut(id) else {
            debug_assert!(false, "removing a free slot");
            return;
        };
        slot.phase = Phase::Free;
        slot.id = id.next();
        slot.target = Target::Orphan;
        if !slot.results.is_empty() || slot.keep.is_some() {
            slot.release_kept();
        }
        slot.next_free = head;
        self.free_head = id.index() as u32;
        self.removed += 1;
    }

    /// Operations in any phase but Free.
    pub(crate) fn live(&self) -> usize {
        (self.inserted - self.removed) as usize
    }

    /// Operations ever inserted.
    pub(crate) fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Completions that named no live operation.
    pub(crate) fn stale(&self) -> u64 {
        self.stale
    }

    /// Every live operation's id and phase (for shutdown's cancel sweep).
    pub(crate) fn live_ids(&self) -> Vec<(OpId, Phase)> {
        let mut out = Vec::with_capacity(self.live());
        for chunk in &self.chunks {
            for slot in chunk.iter() {
                if slot.phase != Phase::Free {
                    out.push((slot.id, slot.phase));
                }
            }
        }
        out
    }
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;

    #[test]
    fn results_come_out_in_arrival_order_however_many_wait() {
        let r = |res| OpResult { res, flags: 0 };
        let mut q = Results::new();
        assert!(q.is_empty() && q.pop_front().is_none());
        q.push_back(r(1));
        assert_eq!(q.pop_front(), Some(r(1)));
        assert!(q.is_empty());
        for i in 2..6 {
            q.push_back(r(i));
        }
        assert_eq!(q.pop_front(), Some(r(2)));
        q.push_back(r(6));
        assert_eq!(q.pop_front(), Some(r(3)));
        assert_eq!(q.drain(..).collect::<Vec<_>>(), [r(4), r(5), r(6)]);
        assert!(q.is_empty());
        q.push_back(r(7));
        assert_eq!(q.pop_front(), Some(r(7)));
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn ids_are_positive_and_go_stale_when_the_slot_is_reused() {
        let mut t = OpTable::new(0);
        let a = t.insert(Target::Orphan, false, Phase::Backlog).unwrap();
        assert!(a.raw() > 0 && (a.raw() as i64) > 0);
        t.remove(a);
        let b = t.insert(Target::Orphan, false, Phase::Backlog).unwrap();
        assert_eq!(a.index(), b.index(), "the slot is reused");
        assert_ne!(a, b);
        assert!(t.get_mut(a).is_none(), "old id no longer names it");
        assert!(t.get_mut(b).is_some());
    }

    #[test]
    fn a_generation_wraps_to_1_never_0_and_keeps_its_owner() {
        let last = OpId(OpId::first(1023, 5).0 | (GENERATION_MASK << GENERATION_SHIFT));
        assert_eq!((last.owner(), last.generation()), (1023, GENERATION_MASK));
        let next = last.next();
        assert_eq!(
            (next.owner(), next.generation(), next.index()),
            (1023, 1, 5)
        );
        assert_eq!(OpId::first(0, 5).next().generation(), 2);
        assert!(OpId::from_raw(next.raw()).is_some());
        assert!((next.raw() as i64) > 0, "fits a positive int64_t");
    }

    #[test]
    fn a_full_table_refuses_with_enomem_and_takes_again_once_a_slot_is_freed() {
        let mut t = OpTable::with_max_slots(3, 2 * CHUNK);
        let ids: Vec<_> = (0..2 * CHUNK)
            .map(|_| t.insert(Target::Orphan, false, Phase::Backlog).unwrap())
            .collect();
        assert_eq!(
            t.insert(Target::Orphan, false, Phase::Backlog).err(),
            Some(-libc::ENOMEM)
        );
        assert_eq!(t.live(), 2 * CHUNK, "the refusal took nothing");
        t.remove(ids[7]);
        let again = t.insert(Target::Orphan, false, Phase::Backlog).unwrap();
        assert_eq!(again.index(), ids[7].index());
        assert_eq!(again.owner(), 3);
    }

    #[test]
    fn the_largest_index_generation_and_owner_fit_a_positive_int64() {
        let id = OpId(
            OpId::first(1023, (MAX_SLOTS - 1) as u32).0 | (GENERATION_MASK << GENERATION_SHIFT),
        );
        assert_eq!(
            (id.owner(), id.index(), id.generation()),
            (1023, MAX_SLOTS - 1, GENERATION_MASK)
        );
        assert!((id.raw() as i64) > 0 && id.raw() & INTERNAL_BIT == 0);
    }

    #[test]
    fn two_workers_never_hand_out_the_same_id() {
        let (mut a, mut b) = (OpTable::new(0), OpTable::new(1));
        let ids_a: Vec<_> = (0..100)
            .map(|_| a.insert(Target::Orphan, false, Phase::Backlog).unwrap())
            .collect();
        for _ in 0..100 {
            let id = b.insert(Target::Orphan, false, Phase::Backlog).unwrap();
            assert!(!ids_a.contains(&id));
            assert!(
                a.get_mut(id).is_none(),
                "worker 1's id names nothing of worker 0"
            );
        }
    }

    #[test]
    fn completions_for_unknown_ids_are_counted_not_followed() {
        let mut t = OpTable::new(0);
        let a = t.insert(Target::Orphan, false, Phase::Backlog).unwrap();
        // Backlog, not in flight yet.
        assert!(t.in_flight_mut(a.raw()).is_none());
        t.get_mut(a).unwrap().phase = Phase::InFlight;
        assert!(t.in_flight_mut(a.raw()).is_some());
        for bogus in [
            0,
            1,
            u64::MAX,
            1 << 63 | 5,
            (77u64 << 32) | 3,
            (1u64 << 32) | 999_999,
        ] {
            assert!(t.in_flight_mut(bogus).is_none(), "{bogus:#x}");
        }
        assert_eq!(t.stale(), 7);
    }

    #[test]
    fn slot_addresses_are_stable_while_the_table_grows() {
        let mut t = OpTable::new(0);
        let first = t.insert(Target::Orphan, false, Phase::Backlog).unwrap();
        let addr = &t.get_mut(first).unwrap().timespec as *const Timespec;
        let many: Vec<_> = (0..10 * CHUNK)
            .map(|_| t.insert(Target::Orphan, false, Phase::Backlog).unwrap())
            .collect();
        assert_eq!(addr, &t.get_mut(first).unwrap().timespec as *const Timespec);
        assert_eq!(t.live(), 10 * CHUNK + 1);
        for id in many {
            t.remove(id);
        }
        assert_eq!(t.live(), 1);
        assert_eq!(t.live_ids().len(), 1);
    }
}
