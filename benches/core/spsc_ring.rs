//! A minimal bounded single-producer single-consumer ring: the hardware reference for
//! the mesh scenarios.
//!
//! Head and tail sit on their own cache lines; each side keeps a private copy of the
//! other side's index and rereads the shared one only when the copy says full or empty,
//! and [`Consumer::drain`] publishes its progress once per batch, so a steady stream
//! costs a few cache-line transfers per batch rather than per message. There is nothing
//! else in it: no wake-ups, no scheduling, no overflow; the consumer spins.

use std::alloc::{self, Layout};
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

struct Ring<T> {
    /// Next slot the consumer reads; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes; written by the producer only.
    tail: CachePadded<AtomicUsize>,
    slots: Slots<T>,
}

/// Alignment of the slot array: a pair of cache lines, as for veloq's mesh channels. A
/// plain boxed slice is only 16-byte aligned, and where the allocator put it decided
/// whether a 32-byte value straddled two lines: the reference itself ran at two speeds.
const SLOTS_ALIGN: usize = 128;

/// `len` slots in one allocation aligned to [`SLOTS_ALIGN`].
struct Slots<T> {
    ptr: std::ptr::NonNull<UnsafeCell<MaybeUninit<T>>>,
    len: usize,
}

impl<T> Slots<T> {
    fn layout(len: usize) -> Layout {
        Layout::array::<UnsafeCell<MaybeUninit<T>>>(len)
            .and_then(|l| l.align_to(SLOTS_ALIGN))
            .expect("ring size")
    }

    fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        assert!(layout.size() > 0);
        // SAFETY: the layout's size is not zero. `MaybeUninit` needs no initialisation and
        // `UnsafeCell` has the same layout as its contents.
        let raw = unsafe { alloc::alloc(layout) } as *mut UnsafeCell<MaybeUninit<T>>;
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Slots { ptr, len }
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl<T> std::ops::Index<usize> for Slots<T> {
    type Output = UnsafeCell<MaybeUninit<T>>;

    fn index(&self, index: usize) -> &Self::Output {
        assert!(index < self.len);
        // SAFETY: in bounds, in the allocation made by `new`.
        unsafe { &*self.ptr.as_ptr().add(index) }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; `T: Copy` values need no drop.
        unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) };
    }
}

// SAFETY: a slot is written by the producer before it publishes `tail` (Release) and read
// by the consumer after it observes it (Acquire), and the other way round for `head`, so
// no slot is ever accessed from both sides at once. `T: Copy` means nothing to drop.
unsafe impl<T: Copy + Send> Sync for Ring<T> {}
// SAFETY: the ring owns its slots' allocation; its values are `Send`.
unsafe impl<T: Copy + Send> Send for Ring<T> {}

/// The sending half.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    tail: usize,
    cached_head: usize,
}

/// The receiving half.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    head: usize,
    cached_tail: usize,
}

/// A ring of `capacity` slots (a power of two).
pub fn channel<T: Copy + Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity.is_power_of_two());
    let ring = Arc::new(Ring {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots: Slots::new(capacity),
    });
    let producer = Producer {
        ring: ring.clone(),
        tail: 0,
        cached_head: 0,
    };
    let consumer = Consumer {
        ring,
        head: 0,
        cached_tail: 0,
    };
    (producer, consumer)
}

impl<T: Copy + Send> Producer<T> {
    /// Appends `value`, or gives it back when the ring is full.
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        let capacity = self.ring.slots.len();
        if self.tail - self.cached_head == capacity {
            self.cached_head = self.ring.head.load(Acquire);
            if self.tail - self.cached_head == capacity {
                return Err(value);
            }
        }
        let slot = &self.ring.slots[self.tail & (capacity - 1)];
        // SAFETY: the slot is free (the consumer has moved past it) and only we write it.
        unsafe { (*slot.get()).write(value) };
        self.tail += 1;
        self.ring.tail.store(self.tail, Release);
        Ok(())
    }

    /// Appends `value`, spinning while the ring is full.
    pub fn push(&mut self, mut value: T) {
        while let Err(v) = self.try_push(value) {
            value = v;
            std::hint::spin_loop();
        }
    }
}

impl<T: Copy + Send> Consumer<T> {
    /// Takes the oldest value, if any.
    pub fn try_pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.ring.tail.load(Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.ring.slots[self.head & (self.ring.slots.len() - 1)];
        // SAFETY: the producer published this slot (Acquire above) and will not touch it
        // until we move `head` past it.
        let value = unsafe { (*slot.get()).assume_init() };
        self.head += 1;
        self.ring.head.store(self.head, Release);
        Some(value)
    }

    /// Hands every value published so far to `f`, oldest first, then frees their slots
    /// with one store. Returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(T)) -> usize {
        let tail = self.ring.tail.load(Acquire);
        let mask = self.ring.slots.len() - 1;
        for index in self.head..tail {
            // SAFETY: published by the producer (Acquire above), read once, and not
            // reused by it before the `head` store below.
            f(unsafe { (*self.ring.slots[index & mask].get()).assume_init() });
        }
        let taken = tail - self.head;
        self.head = tail;
        self.cached_tail = tail;
        self.ring.head.store(tail, Release);
        taken
    }

    /// Takes the oldest value, spinning until there is one.
    pub fn pop(&mut self) -> T {
        loop {
            if let Some(value) = self.try_pop() {
                return value;
            }
            std::hint::spin_loop();
        }
    }
}
