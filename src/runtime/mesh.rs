//! The mesh: an N×N matrix of bounded single-producer single-consumer channels.
//!
//! Channel (i→j) is written only by worker i and read only by worker j, so a push is two
//! plain loads and plain stores, with no read-modify-write and no lock. Channels are
//! created by their producer on first use; a runtime whose workers talk to few peers pays
//! only for the channels it uses.

use std::alloc::{self, Layout};
use std::mem::MaybeUninit;
use std::ptr;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicPtr, AtomicUsize, UnsafeCell};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Pushes between two publications of a channel's tail (a power of two): the consumer
/// sees a stream a few cache lines at a time, never a line the producer is still
/// filling, and the producer's line changes hands once per group instead of once per
/// value. The producer publishes the rest of a group with [`Channel::publish`] (a worker
/// does so when the job that pushed returns).
pub(crate) const PUBLISH_EVERY: usize = 8;

/// How far ahead of the value it takes a draining consumer asks for a published slot's
/// cache line. Each value runs before the next is read, and a job that ends with an
/// atomic (a completion, a wake) holds back the next slot's load until it is done: without
/// the hint every other value (two to a line) waited for its line to come from the
/// producer's core one after the other. Only published slots are asked for, so a line the
/// producer is still filling is never pulled away from it.
const PREFETCH_AHEAD: usize = 8;

/// A bounded lock-free SPSC ring.
///
/// Each side caches the other side's index, so in steady state a push touches the
/// consumer's cache line only when the cached view says the ring is full, and a pop
/// touches the producer's line only when its cached view says the ring is empty.
///
/// Three lines, each written by one side only: the producer's private line (where it
/// writes on every push), the published `tail` (written every [`PUBLISH_EVERY`] pushes,
/// when the ring is full, and by [`Channel::publish`]; values pushed since are invisible
/// to the consumer until then) and the consumer's line (its `head`, stored as it takes
/// each value: a value is handed on only once its slot is free, see [`Channel::drain`]).
pub(crate) struct Channel<T> {
    /// Values published to the consumer: stored by the producer only (every
    /// [`PUBLISH_EVERY`] pushes, on a full ring, in `publish`), polled by the consumer. On
    /// a line of its own: the producer's per-push writes stay off the line the consumer
    /// polls.
    tail: CachePadded<AtomicUsize>,
    producer: CachePadded<ProducerSide>,
    consumer: CachePadded<ConsumerSide>,
    slots: Slots<T>,
    mask: usize,
}

/// Alignment of a channel's slot array: whole cache lines (a pair of them, as the
/// adjacent-line prefetcher fetches), so that a slot whose size divides 64 never
/// straddles two lines. A plain boxed slice is only 8- or 16-byte aligned: depending on
/// where the allocator put it, every other 32-byte job touched two lines.
const SLOTS_ALIGN: usize = 128;

/// A channel's slots: one allocation aligned to [`SLOTS_ALIGN`].
struct Slots<T> {
    ptr: ptr::NonNull<UnsafeCell<MaybeUninit<T>>>,
    len: usize,
}

impl<T> Slots<T> {
    fn layout(len: usize) -> Layout {
        Layout::array::<UnsafeCell<MaybeUninit<T>>>(len)
            .and_then(|l| l.align_to(SLOTS_ALIGN))
            .expect("mesh channel size overflows")
    }

    fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        let ptr = if layout.size() == 0 {
            ptr::NonNull::dangling()
        } else {
            // SAFETY: the layout's size is not zero.
            let raw = unsafe { alloc::alloc(layout) } as *mut UnsafeCell<MaybeUninit<T>>;
            let Some(ptr) = ptr::NonNull::new(raw) else {
                alloc::handle_alloc_error(layout)
            };
            ptr
        };
        for i in 0..len {
            // SAFETY: `i < len`: in the allocation, which nothing else uses yet.
            unsafe {
                ptr.as_ptr()
                    .add(i)
                    .write(UnsafeCell::new(MaybeUninit::uninit()))
            };
        }
        Slots { ptr, len }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        // The cells only (MaybeUninit drops no value: the channel took them out first).
        for i in 0..self.len {
            // SAFETY: cell `i` was written in `new` and is dropped once, here.
            unsafe { ptr::drop_in_place(self.ptr.as_ptr().add(i)) };
        }
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated in `new` with this layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) };
        }
    }
}

/// The producer's private line: written and read by the producer only (other threads
/// read `next` for hints).
struct ProducerSide {
    /// Next slot to write: `tail` plus the values pushed but not published yet. Stored
    /// by the producer only (an atomic so that other threads may read it as a hint).
    next: AtomicUsize,
    /// Producer-private cache of `head`.
    head_cache: UnsafeCell<usize>,
}

/// The consumer's line: written by the consumer only, read by the producer for `head`.
struct ConsumerSide {
    /// Next slot to read; stored by the consumer only.
    head: AtomicUsize,
    /// Consumer-private cache of `tail`.
    tail_cache: UnsafeCell<usize>,
}

// SAFETY: values move from the single producer thread to the single consumer thread
// (T: Send); the slot handoff is ordered by the Release store / Acquire load of the indices.
unsafe impl<T: Send> Send for Channel<T> {}
// SAFETY: as above; the private caches are touched only by their own side.
unsafe impl<T: Send> Sync for Channel<T> {}

impl<T> Channel<T> {
    /// A channel holding at least `capacity` values (rounded up to a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = Slots::new(capacity);
        Channel {
            tail: CachePadded::new(AtomicUsize::new(0)),
            producer: CachePadded::new(ProducerSide {
                next: AtomicUsize::new(0),
                head_cache: UnsafeCell::new(0),
            }),
            consumer: CachePadded::new(ConsumerSide {
                head: AtomicUsize::new(0),
                tail_cache: UnsafeCell::new(0),
            }),
            slots,
            mask: capacity - 1,
        }
    }

    /// The slot of ring position `index`.
    #[inline(always)]
    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        // SAFETY: `mask` is `slots.len - 1` and the length a power of two, so the masked
        // index is in bounds.
        unsafe { &*self.slots.ptr.as_ptr().add(index & self.mask) }
    }

    /// Asks the core to load slot `index`'s cache line (a hint: no effect on what is read;
    /// nothing on other architectures).
    #[inline(always)]
    fn prefetch(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and reads nothing the program sees.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                self.slot(index) as *const _ as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }

    /// Bytes one channel of `capacity` slots occupies.
    pub(crate) fn footprint(capacity: usize) -> usize {
        std::mem::size_of::<Self>() + capacity.max(2).next_power_of_two() * std::mem::size_of::<T>()
    }

    /// Appends `value` and publishes it at once, or gives it back when the ring is full.
    ///
    /// # Safety
    /// Only one thread ever calls `push`, `push_with` or `publish` on this channel.
    #[cfg(test)]
    pub(crate) unsafe fn push(&self, value: T) -> Result<(), T> {
        // SAFETY: as promised by the caller.
        let pushed = unsafe { self.push_with(|| value) }.map_err(|make| make());
        // SAFETY: as promised by the caller.
        unsafe { self.publish() };
        pushed
    }

    /// Appends the value `make` returns, building it straight in its slot; gives `make`
    /// back uncalled when the ring is full. The value reaches the consumer at the next
    /// publication: within [`PUBLISH_EVERY`] pushes, or at the caller's `publish`.
    ///
    /// # Safety
    /// Only one thread ever calls `push`, `push_with` or `publish` on this channel.
    #[inline]
    pub(crate) unsafe fn push_with<F: FnOnce() -> T>(&self, make: F) -> Result<(), F> {
        let p = &*self.producer;
        let next = p.next.load(Relaxed);
        // SAFETY: head_cache is producer-private (caller is the single producer).
        let head = p.head_cache.with(|c| unsafe { *c });
        // SAFETY: the caller is the single producer.
        if next.wrapping_sub(head) > self.mask && !unsafe { self.make_room(next) } {
            return Err(make);
        }
        // SAFETY: slot `next` is free: the consumer has moved past it (head > next - cap)
        // and will not read it until a Release store of tail publishes it.
        self.slot(next)
            .with_mut(|slot| unsafe { (*slot).write(make()) });
        let next = next.wrapping_add(1);
        p.next.store(next, Relaxed);
        if next & (PUBLISH_EVERY - 1) == 0 {
            self.tail.store(next, Release);
        }
        Ok(())
    }

    /// `push_with` found its cached head saying full: rereads the consumer's head. When
    /// the ring is full indeed, publishes what is pending (the consumer must see it to
    /// make room) and returns false.
    ///
    /// # Safety
    /// As for `push_with`.
    #[cold]
    #[inline(never)]
    unsafe fn make_room(&self, next: usize) -> bool {
        let head = self.consumer.head.load(Acquire);
        // SAFETY: head_cache is producer-private (our caller is the single producer).
        self.producer.head_cache.with_mut(|c| unsafe { *c = head });
        if next.wrapping_sub(head) > self.mask {
            // SAFETY: as promised by the caller.
            unsafe { self.publish() };
            return false;
        }
        true
    }

    /// Makes every value pushed so far visible to the consumer (one Release store, none
    /// when nothing is pending).
    ///
    /// # Safety
    /// Only one thread ever calls `push`, `push_with` or `publish` on this channel.
    #[inline]
    pub(crate) unsafe fn publish(&self) {
        let next = self.producer.next.load(Relaxed);
        if self.tail.load(Relaxed) != next {
            self.tail.store(next, Release);
        }
    }

    /// Removes the oldest published value.
    ///
    /// # Safety
    /// Only one thread ever calls `pop` or `drain` on this channel.
    pub(crate) unsafe fn pop(&self) -> Option<T> {
        let c = &*self.consumer;
        let head = c.head.load(Relaxed);
        // SAFETY: tail_cache is consumer-private (caller is the single consumer).
        let mut tail = c.tail_cache.with(|t| unsafe { *t });
        if head == tail {
            tail = self.tail.load(Acquire);
            c.tail_cache.with_mut(|t| unsafe { *t = tail });
            if head == tail {
                return None;
            }
        }
        // SAFETY: slot `head` was written and published by the producer's Release store
        // of tail (seen by our Acquire load, now or earlier), and is read exactly once.
        let value = self.slot(head).with(|p| unsafe { (*p).assume_init_read() });
        c.head.store(head.wrapping_add(1), Release);
        Some(value)
    }

    /// Removes up to `max` published values, oldest first, handing each to `f` (with the
    /// lines of the next few asked for ahead, see [`PREFETCH_AHEAD`]). Each
    /// value's slot is freed (a store of head, on the consumer's own line) before the
    /// value reaches `f`: a value `f` has seen never holds a slot, so a producer that
    /// knows how many of its values ran knows how many slots are free, and values a
    /// panicking `f` leaves stay queued. Returns how many were taken.
    ///
    /// # Safety
    /// Only one thread ever calls `pop` or `drain` on this channel, and `f` does not
    /// touch this channel's consumer side.
    #[inline]
    pub(crate) unsafe fn drain(&self, max: usize, mut f: impl FnMut(T)) -> usize {
        let c = &*self.consumer;
        let head = c.head.load(Relaxed);
        // SAFETY: tail_cache is consumer-private (caller is the single consumer).
        let mut tail = c.tail_cache.with(|t| unsafe { *t });
        if head == tail {
            tail = self.tail.load(Acquire);
            c.tail_cache.with_mut(|t| unsafe { *t = tail });
        }
        let n = tail.wrapping_sub(head).min(max);
        for k in 0..n.min(PREFETCH_AHEAD) {
            self.prefetch(head.wrapping_add(k));
        }
        for k in 0..n {
            let index = head.wrapping_add(k);
            if k + PREFETCH_AHEAD < n {
                self.prefetch(index.wrapping_add(PREFETCH_AHEAD));
            }
            // SAFETY: slots head..tail were published by the producer (Acquire load of
            // tail, now or earlier) and are each read exactly once: head moves past this
            // one before anything else happens.
            let value = self
                .slot(index)
                .with(|p| unsafe { (*p).assume_init_read() });
            c.head.store(index.wrapping_add(1), Release);
            f(value);
        }
        n
    }

    /// Values waiting, pushed or published, as the producer sees them (exact for the
    /// producer, a hint for other threads).
    pub(crate) fn occupancy(&self) -> usize {
        let head = self.consumer.head.load(Acquire);
        self.producer.next.load(Relaxed).wrapping_sub(head)
    }

    /// Whether the channel has no published value; callable from any thread (a hint,
    /// exact only for the consumer).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.consumer.head.load(Acquire) == self.tail.load(Acquire)
    }

    /// Whether every value ever pushed has been taken, published or not (a hint for any
    /// thread but the two sides; shutdown reads it once every worker is idle).
    pub(crate) fn is_drained(&self) -> bool {
        self.consumer.head.load(Acquire) == self.producer.next.load(Acquire)
    }
}

impl<T> Drop for Channel<T> {
    fn drop(&mut self) {
        // SAFETY: &mut self: no producer or consumer is left.
        unsafe { self.publish() };
        // SAFETY: as above.
        while unsafe { self.pop() }.is_some() {}
    }
}

/// A cell of the matrix: channel (from→to) once its first push created it.
pub(crate) type MeshCell<T> = AtomicPtr<Channel<T>>;

/// The flattened N×N matrix of channels; cell `from * n + to` is channel (from→to).
pub(crate) struct MeshMatrix<T> {
    workers: usize,
    capacity: usize,
    cells: Box<[AtomicPtr<Channel<T>>]>,
}

impl<T: Send> MeshMatrix<T> {
    /// A matrix for `workers` workers whose channels hold `capacity` values each.
    pub(crate) fn new(workers: usize, capacity: usize) -> Self {
        let cells = (0..workers * workers)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect();
        MeshMatrix {
            workers,
            capacity,
            cells,
        }
    }

    /// Bytes the matrix costs when every channel between distinct workers is in use.
    pub(crate) fn full_footprint(workers: usize, capacity: usize) -> usize {
        workers * workers * std::mem::size_of::<AtomicPtr<Channel<T>>>()
            + workers * workers.saturating_sub(1) * Channel::<T>::footprint(capacity)
    }

    /// Bytes the channels created so far cost.
    pub(crate) fn footprint(&self) -> usize {
        let used = self
            .cells
            .iter()
            .filter(|c| !c.load(Acquire).is_null())
            .count();
        self.cells.len() * std::mem::size_of::<AtomicPtr<Channel<T>>>()
            + used * Channel::<T>::footprint(self.capacity)
    }

    /// Sends `value` from `from` to `to` and publishes it, creating the channel on first
    /// use; gives the value back when the channel is full.
    ///
    /// # Safety
    /// Only worker `from`'s thread pushes with this `from` or publishes its channels.
    #[cfg(all(test, not(veloq_loom)))]
    pub(crate) unsafe fn push(&self, from: usize, to: usize, value: T) -> Result<(), T> {
        let cell = &self.row(from)[to];
        // SAFETY: as promised by the caller.
        let pushed = unsafe { self.push_with(cell, || value) }.map_err(|make| make());
        // SAFETY: as promised by the caller.
        unsafe { Self::publish(cell) };
        pushed
    }

    /// Worker `from`'s cells, one per target worker: `row(from)[to]` holds channel
    /// (from→to) once it exists. Only worker `from` pushes through them.
    pub(crate) fn row(&self, from: usize) -> &[MeshCell<T>] {
        &self.cells[from * self.workers..(from + 1) * self.workers]
    }

    /// `Channel::push_with` on the channel of `cell`, a cell of a `row`, creating the
    /// channel on its first push; `make` comes back uncalled when the channel is full.
    ///
    /// # Safety
    /// `cell` is a cell of `row(from)`, and only worker `from`'s thread calls `push_with`
    /// or `publish` with the cells of that row.
    #[inline]
    pub(crate) unsafe fn push_with<F: FnOnce() -> T>(
        &self,
        cell: &MeshCell<T>,
        make: F,
    ) -> Result<(), F> {
        let mut chan = cell.load(Acquire);
        if chan.is_null() {
            chan = self.create(cell);
        }
        // SAFETY: channels live as long as the matrix; caller is the single producer.
        unsafe { (*chan).push_with(make) }
    }

    /// `Channel::publish` on the channel of `cell` (a cell of a `row`), if it exists.
    ///
    /// # Safety
    /// As for `push_with`.
    #[inline]
    pub(crate) unsafe fn publish(cell: &MeshCell<T>) {
        // SAFETY: a published channel lives until the matrix is dropped, which `cell`
        // (borrowed from it) outlives not; the caller is the single producer.
        if let Some(chan) = unsafe { cell.load(Acquire).as_ref() } {
            // SAFETY: as promised by the caller.
            unsafe { chan.publish() };
        }
    }

    /// Creates and publishes the channel of `cell` (its first push).
    #[cold]
    #[inline(never)]
    fn create(&self, cell: &AtomicPtr<Channel<T>>) -> *mut Channel<T> {
        // Only the producer creates its channel, so there is no race to install it.
        let chan = Box::into_raw(Box::new(Channel::new(self.capacity)));
        cell.store(chan, Release);
        chan
    }

    /// The channel (from→to) if it exists.
    #[inline]
    pub(crate) fn channel(&self, from: usize, to: usize) -> Option<&Channel<T>> {
        let chan = self.cells[from * self.workers + to].load(Acquire);
        // SAFETY: a published channel lives until the matrix is dropped.
        unsafe { chan.as_ref() }
    }
}

impl<T> Drop for MeshMatrix<T> {
    fn drop(&mut self) {
        for cell in self.cells.iter() {
            let chan = cell.swap(ptr::null_mut(), AcqRel);
            if !chan.is_null() {
                // SAFETY: created by Box::into_raw in `push`, freed once here.
                drop(unsafe { Box::from_raw(chan) });
            }
        }
    }
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;

    #[test]
    fn channel_is_fifo_and_bounded() {
        let ch = Channel::new(4);
        for i in 0..4 {
            unsafe { ch.push(i) }.unwrap();
        }
        assert_eq!(unsafe { ch.push(99) }, Err(99), "a full channel refuses");
        for i in 0..4 {
            assert_eq!(unsafe { ch.pop() }, Some(i));
        }
        assert_eq!(unsafe { ch.pop() }, None);
    }

    #[test]
    fn channel_transfers_a_million_values_in_order_between_threads() {
        let ch = std::sync::Arc::new(Channel::new(64));
        let producer = {
            let ch = ch.clone();
            std::thread::spawn(move || {
                for i in 0..1_000_000u64 {
                    let mut v = i;
                    while let Err(back) = unsafe { ch.push(v) } {
                        v = back;
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut expected = 0u64;
        while expected < 1_000_000 {
            if let Some(v) = unsafe { ch.pop() } {
                assert_eq!(v, expected);
                expected += 1;
            }
        }
        producer.join().unwrap();
    }

    #[test]
    fn drain_takes_a_bounded_batch_in_order() {
        let ch = Channel::new(8);
        for i in 0..6 {
            unsafe { ch.push(i) }.unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(unsafe { ch.drain(4, |v| got.push(v)) }, 4);
        assert_eq!(ch.occupancy(), 2);
        assert_eq!(unsafe { ch.drain(10, |v| got.push(v)) }, 2);
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(unsafe { ch.drain(10, |v| got.push(v)) }, 0);
    }

    #[test]
    fn channel_drop_drops_values_left_in_it() {
        let counter = std::sync::Arc::new(());
        let ch = Channel::new(8);
        for _ in 0..5 {
            unsafe { ch.push(counter.clone()) }.unwrap();
        }
        for _ in 0..2 {
            assert!(unsafe { ch.push_with(|| counter.clone()) }.is_ok());
        }
        drop(ch);
        assert_eq!(
            std::sync::Arc::strong_count(&counter),
            1,
            "published or not, every value is dropped"
        );
    }

    #[test]
    fn slots_start_on_a_cache_line_pair() {
        for capacity in [2, 16, 256] {
            let ch = Channel::<[u64; 4]>::new(capacity);
            assert_eq!(ch.slot(0).with(|p| p as usize) % SLOTS_ALIGN, 0);
        }
        let zero_sized = Channel::<()>::new(4);
        assert!(unsafe { zero_sized.push(()) }.is_ok());
        assert_eq!(unsafe { zero_sized.pop() }, Some(()));
    }

    #[test]
    fn pushed_values_reach_the_consumer_when_published() {
        let ch = Channel::new(64);
        for i in 0..3 {
            assert!(unsafe { ch.push_with(|| i) }.is_ok());
        }
        assert_eq!(unsafe { ch.pop() }, None, "not published yet");
        assert!(ch.is_empty());
        assert!(!ch.is_drained());
        assert_eq!(ch.occupancy(), 3, "the producer counts what it pushed");
        unsafe { ch.publish() };
        for i in 0..3 {
            assert_eq!(unsafe { ch.pop() }, Some(i));
        }
        assert!(ch.is_drained());
    }

    #[test]
    fn every_publish_every_th_push_publishes_by_itself() {
        let ch = Channel::new(64);
        for i in 0..PUBLISH_EVERY {
            assert!(unsafe { ch.push_with(|| i) }.is_ok());
        }
        let mut got = Vec::new();
        unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
        assert_eq!(got, (0..PUBLISH_EVERY).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_channel_publishes_what_it_holds() {
        let ch = Channel::new(4);
        for i in 0..4 {
            assert!(unsafe { ch.push_with(|| i) }.is_ok());
        }
        assert!(unsafe { ch.push_with(|| 99) }.is_err(), "full");
        let mut got = Vec::new();
        unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
        assert_eq!(got, vec![0, 1, 2, 3], "the consumer can make room");
    }

    #[test]
    fn drain_frees_each_slot_before_handing_its_value_on() {
        let ch = Channel::new(4);
        for i in 0..4 {
            unsafe { ch.push(i) }.unwrap();
        }
        let mut got = Vec::new();
        unsafe {
            ch.drain(usize::MAX, |v| {
                // The value's slot is free already: room for one more.
                ch.push(v + 10).unwrap();
                got.push(v);
            })
        };
        assert_eq!(got, vec![0, 1, 2, 3]);
        unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
        assert_eq!(got, vec![0, 1, 2, 3, 10, 11, 12, 13]);
    }

    #[test]
    fn drain_takes_at_most_max_in_order() {
        let ch = Channel::new(256);
        for i in 0..200 {
            unsafe { ch.push(i) }.unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(unsafe { ch.drain(150, |v| got.push(v)) }, 150);
        assert_eq!(unsafe { ch.drain(150, |v| got.push(v)) }, 50);
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn values_a_panicking_drain_leaves_stay_queued() {
        let ch = Channel::new(8);
        for i in 0..5 {
            unsafe { ch.push(i) }.unwrap();
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            ch.drain(usize::MAX, |v| {
                if v == 1 {
                    panic!("callback panics");
                }
            })
        }));
        assert!(panicked.is_err());
        let mut rest = Vec::new();
        unsafe { ch.drain(usize::MAX, |v| rest.push(v)) };
        assert_eq!(rest, vec![2, 3, 4], "none lost, none taken twice");
    }

    #[test]
    fn matrix_creates_channels_on_first_use() {
        let m: MeshMatrix<u32> = MeshMatrix::new(4, 16);
        let empty = m.footprint();
        assert!(m.channel(0, 1).is_none());
        unsafe { m.push(0, 1, 7) }.unwrap();
        assert!(m.footprint() > empty);
        assert_eq!(unsafe { m.channel(0, 1).unwrap().pop() }, Some(7));
        assert!(m.channel(1, 0).is_none());
    }
}

#[cfg(veloq_loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// A producer thread pushing 0, 1, 2 into `ch`; joins with how many were refused.
    fn push_three(ch: &Arc<Channel<u32>>) -> loom::thread::JoinHandle<usize> {
        let ch = ch.clone();
        loom::thread::spawn(move || {
            let mut refused = 0;
            for i in 0..3u32 {
                if unsafe { ch.push(i) }.is_err() {
                    refused += 1;
                }
            }
            refused
        })
    }

    /// One producer, one consumer, a ring smaller than the traffic: every value arrives
    /// exactly once and in order, and a full ring refuses instead of overwriting.
    #[test]
    fn loom_spsc_channel_delivers_in_order() {
        loom::model(|| {
            let ch = Arc::new(Channel::new(2));
            let producer = push_three(&ch);
            let mut got = Vec::new();
            for _ in 0..3 {
                if let Some(v) = unsafe { ch.pop() } {
                    got.push(v);
                }
            }
            let refused = producer.join().unwrap();
            while let Some(v) = unsafe { ch.pop() } {
                got.push(v);
            }
            assert_eq!(got.len() + refused, 3);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
        });
    }

    /// A producer whose pushes wait for `publish` (as a worker's do until its job
    /// returns), on a ring smaller than the traffic: the consumer sees nothing unpublished
    /// (loom tracks every slot access), a full ring publishes what it holds, and every
    /// value arrives exactly once, in order.
    #[test]
    fn loom_spsc_deferred_publication_delivers_in_order() {
        loom::model(|| {
            let ch = Arc::new(Channel::new(2));
            let producer = {
                let ch = ch.clone();
                loom::thread::spawn(move || {
                    let mut refused = 0;
                    for i in 0..3u32 {
                        if unsafe { ch.push_with(|| i) }.is_err() {
                            refused += 1;
                        }
                    }
                    unsafe { ch.publish() };
                    refused
                })
            };
            let mut got = Vec::new();
            unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
            let refused = producer.join().unwrap();
            unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
            assert_eq!(got.len() + refused, 3);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
        });
    }

    /// The same through `drain`, which frees each slot (a store of `head`) before it
    /// hands the value on: the producer never writes a slot the consumer has not read
    /// yet (loom tracks every slot access), and every value arrives exactly once, in
    /// order.
    #[test]
    fn loom_spsc_drain_frees_slots_only_after_reading_them() {
        loom::model(|| {
            let ch = Arc::new(Channel::new(2));
            let producer = push_three(&ch);
            let mut got = Vec::new();
            for _ in 0..2 {
                unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
            }
            let refused = producer.join().unwrap();
            unsafe { ch.drain(usize::MAX, |v| got.push(v)) };
            assert_eq!(got.len() + refused, 3);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept: {got:?}");
        });
    }
}
