//! Per-worker buffer pools: I/O memory in size classes, registered with the worker's
//! io_uring ring as fixed buffers.
//!
//! # Design
//! - **One pool per worker** ([`BufferPool`], `!Send`), made with the worker's ring. Each
//!   size class ([`CLASS_SIZES`]: 4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB; counts set with
//!   [`BufferPoolConfig`]) is one anonymous `mmap` arena cut into equal buffers, so every
//!   buffer starts on a 4 KiB boundary ([`BUF_ALIGN`]: ready for `O_DIRECT`).
//! - **O(1) allocate and free**: per class a stack of free buffer indices, preallocated
//!   to the class's count (no reallocation on push). An allocation takes the best-fitting
//!   class; when it is empty the next larger class ("spill"); when every fitting class
//!   is empty, or the size is above the largest class, a plain 4 KiB-aligned heap
//!   allocation that is not registered ("plain").
//! - **Registration**: each class arena is registered as one or more regions
//!   (`IORING_REGISTER_BUFFERS`), each at most [`MAX_REGISTRATION_BYTES`] (the kernel's
//!   1 GiB per-buffer limit) and holding whole buffers, at most
//!   [`MAX_REGISTERED_REGIONS`] in all (the kernel's 16384). A buffer's
//!   [`PoolBuf::buf_index`] is its region's index, for `ReadFixed` / `WriteFixed` with the
//!   buffer's own address. When registration fails (`ENOMEM` under `RLIMIT_MEMLOCK`,
//!   `EPERM`, `EBUSY`, ...) the pool keeps working with the same memory unregistered
//!   (`buf_index() == None`) and [`PoolStats::registration_errno`] says why.
//! - **Freed on another thread**: a [`PoolBuf`] is `Send`. Dropped on its owner thread it
//!   goes straight back on its class's free stack. Dropped anywhere else it is pushed on
//!   the owner's lock-free return stack (a Treiber stack of buffer ids, one `next` link
//!   per buffer, that only the owner empties, all at once); the owner takes the returned
//!   buffers back on its next allocation (or stats read). No other thread ever touches
//!   the owner's free stacks or counters.
//! - **Lifetime**: the arenas live in a reference-counted state shared by the pool and
//!   every buffer taken from it, so a buffer that outlives its pool (the runtime shut
//!   down) stays valid and is freed with the last reference. The kernel pins the pages
//!   of registered regions, so it never writes into memory that was unmapped and reused;
//!   still, the owner drops the ring before its pool (see `RuntimeContext`).
//!
//! Contents of a buffer taken from the pool are whatever its last user left there
//! (always initialized bytes: fresh memory is zeroed).

use std::alloc::Layout;
use std::cell::{Cell, UnsafeCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::mapping::Mapping as Region;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use io_uring::Submitter;

use crate::sync::AtomicU32;

/// Buffer sizes of the pool's classes, smallest first.
pub const CLASS_SIZES: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

/// Alignment of every buffer, pooled or plain: a page, as `O_DIRECT` wants.
pub const BUF_ALIGN: usize = 4096;

/// Largest buffer [`BufferPool::alloc`] hands out (1 GiB).
pub const MAX_BUF_SIZE: usize = 1 << 30;

/// Largest region registered as one fixed buffer: the kernel refuses more than 1 GiB.
pub const MAX_REGISTRATION_BYTES: usize = 1 << 30;

/// Most fixed buffers one ring may have registered (the kernel's `IORING_MAX_REG_BUFFERS`).
pub const MAX_REGISTERED_REGIONS: usize = 1 << 14;

/// How many buffers of each class a worker's pool holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferPoolConfig {
    counts: [usize; CLASS_SIZES.len()],
}

impl Default for BufferPoolConfig {
    fn default() -> Self {
        BufferPoolConfig {
            counts: Self::DEFAULT_COUNTS,
        }
    }
}

impl BufferPoolConfig {
    /// Buffers per class unless set, in the order of [`CLASS_SIZES`]: 32 × 4 KiB,
    /// 16 × 16 KiB, 8 × 64 KiB, 2 × 256 KiB, 1 × 1 MiB (2.375 MiB per worker).
    pub const DEFAULT_COUNTS: [usize; CLASS_SIZES.len()] = [32, 16, 8, 2, 1];
    /// Most bytes one class may hold per worker (4 GiB).
    pub const MAX_CLASS_BYTES: usize = 4 << 30;

    /// The defaults ([`Self::DEFAULT_COUNTS`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool with no buffers at all: every allocation is plain.
    pub fn empty() -> Self {
        BufferPoolConfig {
            counts: [0; CLASS_SIZES.len()],
        }
    }

    /// Sets how many buffers of `class_size` (one of [`CLASS_SIZES`]) the pool holds;
    /// 0 leaves the class out. Refused (nothing changed) for a size that is not a class
    /// or more than [`Self::MAX_CLASS_BYTES`] in the class.
    pub fn set_count(&mut self, class_size: usize, count: usize) -> Result<(), &'static str> {
        let Some(class) = CLASS_SIZES.iter().position(|&s| s == class_size) else {
            return Err("buffer_pool: class_size is not one of CLASS_SIZES");
        };
        if count > Self::MAX_CLASS_BYTES / class_size {
            return Err("buffer_pool: more than MAX_CLASS_BYTES in one class");
        }
        self.counts[class] = count;
        Ok(())
    }

    /// How many buffers of `class_size` the pool holds; None when it is not a class.
    pub fn count(&self, class_size: usize) -> Option<usize> {
        let class = CLASS_SIZES.iter().position(|&s| s == class_size)?;
        Some(self.counts[class])
    }

    /// Bytes of pool memory per worker.
    pub fn bytes(&self) -> usize {
        CLASS_SIZES
            .iter()
            .zip(self.counts)
            .map(|(s, n)| s * n)
            .sum()
    }
}

/// A pool's counters, read on its worker with `RuntimeContext::buffer_pool_stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out (pooled and plain).
    pub allocs: u64,
    /// Pool buffers back on their free stack (freed on the owner thread, or taken back
    /// from the return stack).
    pub frees: u64,
    /// Of `frees`: buffers freed on another thread and taken back by the owner.
    pub cross_thread_frees: u64,
    /// Allocations served by a larger class because the best-fitting one was empty.
    pub spills: u64,
    /// Allocations served by a plain, unregistered heap allocation: larger than the
    /// largest class, or every fitting class was empty.
    pub plain_allocs: u64,
    /// Pool buffers free right now.
    pub free_buffers: u64,
    /// Bytes of pool memory (all classes).
    pub pool_bytes: u64,
    /// Bytes registered with the ring (0 when registration failed or there is no ring).
    pub registered_bytes: u64,
    /// Regions registered with the ring (fixed-buffer indices in use).
    pub registered_regions: u32,
    /// 0, or the errno registration failed with; then the pool works with plain buffers.
    pub registration_errno: i32,
}

impl PoolStats {
    /// Whether registering the pool with the ring failed (the pool then hands out
    /// unregistered buffers).
    pub fn registration_failed(&self) -> bool {
        self.registration_errno != 0
    }
}

// ---------------------------------------------------------------- thread identity

static NEXT_THREAD_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// A number unique to the calling thread for the life of the process (never reused,
/// unlike a TLS address); 0 when thread-local storage is gone (thread exit), which
/// matches no owner.
fn thread_token() -> u64 {
    THREAD_TOKEN
        .try_with(|t| {
            if t.get() == 0 {
                t.set(NEXT_THREAD_TOKEN.fetch_add(1, Relaxed));
            }
            t.get()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------- return stack

/// No buffer: the end of a return chain.
const NIL: u32 = u32::MAX;

/// A lock-free multi-producer stack of buffer ids with one consumer that takes
/// everything at once. Producers (any thread) only push; the consumer (the owner) only
/// swaps the whole chain out, so a push's compare-exchange has no ABA hazard: if `head`
/// is the value it read, linking to that value is right whatever happened in between.
pub(crate) struct ReturnStack {
    head: AtomicU32,
    /// `next[id]`: the id below `id` while `id` is on the stack.
    next: Box<[AtomicU32]>,
}

impl ReturnStack {
    pub(crate) fn new(ids: usize) -> Self {
        ReturnStack {
            head: AtomicU32::new(NIL),
            next: (0..ids).map(|_| AtomicU32::new(NIL)).collect(),
        }
    }

    /// Pushes `id` (any thread). `id` must not be on the stack already: each buffer is
    /// returned once per allocation. The release publishes the pusher's writes to the
    /// buffer to the consumer.
    pub(crate) fn push(&self, id: u32) {
        let link = &self.next[id as usize];
        let mut head = self.head.load(Relaxed);
        loop {
            link.store(head, Relaxed);
            match self.head.compare_exchange_weak(head, id, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Whether nothing waits (a hint: a push may land right after).
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Relaxed) == NIL
    }

    /// Takes every id pushed so far and hands each to `f` (the consumer only). The
    /// acquire pairs with every push in the chain (a chain of release RMWs), so the
    /// pushers' writes are visible. `next` is read before `f` may hand the id out again.
    pub(crate) fn drain(&self, mut f: impl FnMut(u32)) {
        let mut id = self.head.swap(NIL, Acquire);
        while id != NIL {
            let next = self.next[id as usize].load(Relaxed);
            f(id);
            id = next;
        }
    }
}

// ---------------------------------------------------------------- memory

// ---------------------------------------------------------------- registration plan

/// How a pool's classes map onto registered regions.
#[derive(Debug)]
struct Plan {
    /// (address, length) of each region, in fixed-buffer index order.
    regions: Vec<(usize, usize)>,
    /// Per class: the index of its first region (None for an empty class).
    first_index: Vec<Option<u16>>,
    /// Per class: buffers per region.
    per_region: Vec<usize>,
}

/// Cuts each class `(base address, buffer size, count)` into regions of at most `limit`
/// bytes holding whole buffers. Fails with EINVAL when a buffer is larger than `limit` or
/// the regions would exceed [`MAX_REGISTERED_REGIONS`].
fn plan_registration(classes: &[(usize, usize, usize)], limit: usize) -> Result<Plan, i32> {
    let mut plan = Plan {
        regions: Vec::new(),
        first_index: Vec::with_capacity(classes.len()),
        per_region: Vec::with_capacity(classes.len()),
    };
    for &(base, size, count) in classes {
        if count == 0 {
            plan.first_index.push(None);
            plan.per_region.push(1);
            continue;
        }
        if size > limit {
            return Err(libc::EINVAL);
        }
        let per_region = limit / size;
        plan.first_index.push(Some(
            u16::try_from(plan.regions.len()).map_err(|_| libc::EINVAL)?,
        ));
        plan.per_region.push(per_region);
        let mut done = 0;
        while done < count {
            let n = per_region.min(count - done);
            plan.regions.push((base + done * size, n * size));
            done += n;
            if plan.regions.len() > MAX_REGISTERED_REGIONS {
                return Err(libc::EINVAL);
            }
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------- the pool

/// One size class: an arena of `count` buffers of `size` bytes.
struct Class {
    size: usize,
    count: usize,
    /// Global id of buffer 0 (ids index the return stack).
    first_id: u32,
    region: Option<Region>,
    /// Fixed-buffer index of the first region, when registered.
    first_index: Option<u16>,
    per_region: usize,
}

impl Class {
    fn buffer(&self, index: u32) -> NonNull<u8> {
        let region = self
            .region
            .as_ref()
            .expect("a class with buffers has memory");
        // SAFETY: index < count, so the offset stays inside the region.
        unsafe { region.ptr.add(index as usize * self.size) }
    }

    fn buf_index(&self, index: u32) -> Option<u16> {
        // The plan keeps every index below MAX_REGISTERED_REGIONS, so this fits.
        self.first_index
            .map(|first| first + (index as usize / self.per_region) as u16)
    }
}

/// What only the owner thread touches.
struct Local {
    /// Per class: indices of free buffers (a stack).
    free: Box<[Vec<u32>]>,
    stats: PoolStats,
}

/// What the pool and every buffer taken from it share.
struct PoolShared {
    /// `thread_token()` of the owner thread.
    owner: u64,
    /// The worker owning the pool, when a worker's (see [`BufferPool::on_worker`]): its
    /// runtime's token and its index.
    worker: Option<(usize, usize)>,
    classes: Box<[Class]>,
    /// Owner thread only (checked against `owner` before every access).
    local: UnsafeCell<Local>,
    returned: ReturnStack,
}

// SAFETY: `local` is only ever accessed on the owner thread (every access is behind an
// owner check or on the `!Send` `BufferPool`, which lives there); `classes` is immutable;
// `returned` is atomic.
unsafe impl Sync for PoolShared {}
// SAFETY: as above; the last reference may drop it on any thread, which only unmaps.
unsafe impl Send for PoolShared {}

impl PoolShared {
    /// The owner's state.
    ///
    /// # Safety
    /// Only on the owner thread, and no other reference from `local_mut` may be alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn local_mut(&self) -> &mut Local {
        debug_assert_eq!(thread_token(), self.owner);
        // SAFETY: caller's promise: owner thread, no overlapping borrow.
        unsafe { &mut *self.local.get() }
    }

    /// Moves buffers freed on other threads back onto their free stacks (owner only).
    ///
    /// # Safety
    /// As `local_mut`.
    unsafe fn take_back_returned(&self) {
        if self.returned.is_empty() {
            return;
        }
        // SAFETY: forwarded.
        let local = unsafe { self.local_mut() };
        let classes = &self.classes;
        self.returned.drain(|id| {
            let class = classes
                .iter()
                .rposition(|c| c.count > 0 && c.first_id <= id)
                .expect("a returned id belongs to a class");
            local.free[class].push(id - classes[class].first_id);
            local.stats.frees += 1;
            local.stats.cross_thread_frees += 1;
        });
    }

    /// A pool buffer comes back (any thread).
    fn give_back(&self, class: usize, index: u32) {
        if thread_token() == self.owner {
            // SAFETY: owner thread; no borrow of `local` spans a buffer drop.
            let local = unsafe { self.local_mut() };
            local.free[class].push(index);
            local.stats.frees += 1;
        } else {
            self.returned.push(self.classes[class].first_id + index);
        }
    }
}

/// A worker's buffer pool (see the module doc). `!Send`: it lives on its worker.
pub struct BufferPool {
    shared: Arc<PoolShared>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BufferPool {
    /// Maps the classes of `config` and registers them with `ring` (when given) in
    /// regions of at most [`MAX_REGISTRATION_BYTES`]. Fails only when memory cannot be
    /// mapped; a failed registration leaves a working, unregistered pool (see the stats).
    /// The calling thread becomes the owner.
    pub(crate) fn new(config: &BufferPoolConfig, ring: Option<&Submitter<'_>>) -> io::Result<Self> {
        Self::with_region_limit(config, ring, MAX_REGISTRATION_BYTES)
    }

    /// As `new`, with regions of at most `limit` bytes (tests split with small limits).
    pub(crate) fn with_region_limit(
        config: &BufferPoolConfig,
        ring: Option<&Submitter<'_>>,
        limit: usize,
    ) -> io::Result<Self> {
        let mut classes = Vec::with_capacity(CLASS_SIZES.len());
        let mut first_id = 0u32;
        for (&size, &count) in CLASS_SIZES.iter().zip(&config.counts) {
            let region = if count > 0 {
                Some(Region::new(size * count)?)
            } else {
                None
            };
            classes.push(Class {
                size,
                count,
                first_id,
                region,
                first_index: None,
                per_region: 1,
            });
            first_id = u32::try_from(count)
                .ok()
                .and_then(|c| first_id.checked_add(c))
                .filter(|&ids| ids < NIL)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many buffers"))?;
        }
        let pool_bytes = config.bytes() as u64;
        let mut stats = PoolStats {
            pool_bytes,
            free_buffers: config.counts.iter().sum::<usize>() as u64,
            ..PoolStats::default()
        };
        if let (Some(ring), true) = (ring, pool_bytes > 0) {
            match Self::register(&mut classes, ring, limit) {
                Ok(regions) => {
                    stats.registered_bytes = pool_bytes;
                    stats.registered_regions = regions;
                }
                Err(errno) => stats.registration_errno = errno,
            }
        }
        let free = classes
            .iter()
            .map(|c| (0..c.count as u32).rev().collect::<Vec<u32>>())
            .collect();
        Ok(BufferPool {
            shared: Arc::new(PoolShared {
                owner: thread_token(),
                worker: None,
                classes: classes.into_boxed_slice(),
                local: UnsafeCell::new(Local { free, stats }),
                returned: ReturnStack::new(first_id as usize),
            }),
            _not_send: PhantomData,
        })
    }

    /// Names the worker owning this pool: worker `index` of the runtime identified by
    /// `runtime` (an address unique among live runtimes; see [`PoolBuf::worker_of`]).
    /// Only before the pool hands out a buffer (unchanged after).
    pub(crate) fn on_worker(mut self, runtime: usize, index: usize) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.worker = Some((runtime, index));
        }
        self
    }

    /// Registers every class with the ring; on success records each class's first
    /// fixed-buffer index and returns the region count. Err(errno) leaves them unset.
    fn register(classes: &mut [Class], ring: &Submitter<'_>, limit: usize) -> Result<u32, i32> {
        let spans: Vec<(usize, usize, usize)> = classes
            .iter()
            .map(|c| {
                let base = c.region.as_ref().map_or(0, |r| r.ptr.as_ptr() as usize);
                (base, c.size, c.count)
            })
            .collect();
        let plan = plan_registration(&spans, limit)?;
        let iovecs: Vec<libc::iovec> = plan
            .regions
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: every iovec lies inside a region of `classes`, which end up in the pool's
        // shared state and stay mapped until its last reference goes; the owner drops its
        // ring before its pool, and the kernel pins the pages in any case.
        unsafe { ring.register_buffers(&iovecs) }
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        for (class, (first, per)) in classes
            .iter_mut()
            .zip(plan.first_index.into_iter().zip(plan.per_region))
        {
            class.first_index = first;
            class.per_region = per;
        }
        Ok(plan.regions.len() as u32)
    }

    /// A buffer of at least `size` bytes (`len() == size`, `capacity()` its class size
    /// or `size` rounded up to 4 KiB), 4 KiB aligned. From the best-fitting class, else
    /// a larger class, else a plain unregistered allocation. O(1) apart from taking back
    /// buffers that other threads freed since the last call. Errors: `InvalidInput` for
    /// 0 or more than [`MAX_BUF_SIZE`]; `OutOfMemory` when a plain allocation fails.
    pub fn alloc(&self, size: usize) -> io::Result<PoolBuf> {
        if size == 0 || size > MAX_BUF_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer size must be 1..=MAX_BUF_SIZE",
            ));
        }
        let shared = &*self.shared;
        // SAFETY: `BufferPool` is `!Send` and made on the owner thread; `take_back_returned`
        // ends its borrow before the one below starts.
        unsafe { shared.take_back_returned() };
        // SAFETY: as above; nothing below drops a buffer while `local` is borrowed.
        let local = unsafe { shared.local_mut() };
        let best = CLASS_SIZES.iter().position(|&s| s >= size);
        if let Some(best) = best {
            for class in best..CLASS_SIZES.len() {
                if let Some(index) = local.free[class].pop() {
                    local.stats.allocs += 1;
                    if class != best {
                        local.stats.spills += 1;
                    }
                    let c = &shared.classes[class];
                    return Ok(PoolBuf {
                        ptr: c.buffer(index),
                        len: size,
                        cap: c.size,
                        buf_index: c.buf_index(index),
                        origin: Origin::Pool {
                            shared: self.shared.clone(),
                            class: class as u8,
                            index,
                        },
                    });
                }
            }
        }
        let buf = PoolBuf::plain(size)?;
        local.stats.allocs += 1;
        local.stats.plain_allocs += 1;
        Ok(buf)
    }

    /// The fixed-buffer index to use for `buf` on this pool's ring: its
    /// [`PoolBuf::buf_index`] when it came from this very pool, else None (a buffer of
    /// another worker's pool is registered with that worker's ring, not this one; use a
    /// plain read or write). What an op submitting on this worker must check.
    pub fn fixed_index(&self, buf: &PoolBuf) -> Option<u16> {
        match &buf.origin {
            Origin::Pool { shared, .. } if Arc::ptr_eq(shared, &self.shared) => buf.buf_index,
            _ => None,
        }
    }

    /// The counters, after taking back buffers freed on other threads.
    pub fn stats(&self) -> PoolStats {
        // SAFETY: owner thread (`!Send`), borrows one after the other.
        unsafe { self.shared.take_back_returned() };
        // SAFETY: as above.
        let local = unsafe { self.shared.local_mut() };
        let mut stats = local.stats;
        stats.free_buffers = local.free.iter().map(|f| f.len() as u64).sum();
        stats
    }

    /// Free buffers of class `class` right now, without taking back returned ones.
    #[cfg(test)]
    fn free_now(&self, class: usize) -> usize {
        // SAFETY: owner thread (`!Send`).
        unsafe { self.shared.local_mut() }.free[class].len()
    }
}

// ---------------------------------------------------------------- the buffer

enum Origin {
    /// From a pool's class; goes back there.
    Pool {
        shared: Arc<PoolShared>,
        class: u8,
        index: u32,
    },
    /// A plain heap allocation of `cap` bytes aligned to `BUF_ALIGN`.
    Plain,
}

/// An owned I/O buffer: 4 KiB aligned, `len()` bytes in use out of `capacity()`, and,
/// when the pool is registered with the ring, a fixed-buffer index for `ReadFixed` /
/// `WriteFixed` ([`PoolBuf::buf_index`]). `Send`: it may be dropped on any thread and
/// then goes back to the pool of the worker that allocated it. It stays valid after
/// that worker's runtime is gone.
pub struct PoolBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    buf_index: Option<u16>,
    origin: Origin,
}

// SAFETY: a PoolBuf owns its bytes exclusively; dropping it on a foreign thread only
// pushes onto the owner's atomic return stack (see `PoolShared::give_back`).
unsafe impl Send for PoolBuf {}
// SAFETY: `&PoolBuf` only reads its bytes and fields.
unsafe impl Sync for PoolBuf {}

impl PoolBuf {
    fn plain(size: usize) -> io::Result<PoolBuf> {
        let cap = size.next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(cap, BUF_ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size (size >= 1).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(PoolBuf {
            ptr,
            len: size,
            cap,
            buf_index: None,
            origin: Origin::Plain,
        })
    }

    /// Bytes in use (what `Deref` shows).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer holds; a multiple of 4 KiB.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the bytes in use (e.g. to what a read returned). Every byte up to the
    /// capacity is initialized, so any length is safe.
    ///
    /// # Panics
    /// When `len > capacity()`.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "PoolBuf::set_len beyond the capacity");
        self.len = len;
    }

    /// Start of the buffer (4 KiB aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the buffer (4 KiB aligned), for the kernel to write `capacity()` bytes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The fixed-buffer index to pass with this buffer's address to `ReadFixed` /
    /// `WriteFixed` on the owner worker's ring; None when the buffer is not registered
    /// (plain allocation, or the pool's registration failed).
    pub fn buf_index(&self) -> Option<u16> {
        self.buf_index
    }

    /// The index of the worker whose pool made this buffer (the worker on whose ring it
    /// is registered, when it is), in whichever runtime that worker belongs to. None for a
    /// plain allocation or a pool of no worker.
    pub fn worker(&self) -> Option<usize> {
        self.owner().map(|(_, index)| index)
    }

    /// [`worker`](Self::worker) when that worker belongs to the runtime identified by
    /// `runtime` (see `BufferPool::on_worker`), else None.
    pub(crate) fn worker_of(&self, runtime: usize) -> Option<usize> {
        self.owner()
            .and_then(|(rt, index)| (rt == runtime).then_some(index))
    }

    fn owner(&self) -> Option<(usize, usize)> {
        match &self.origin {
            Origin::Pool { shared, .. } => shared.worker,
            Origin::Plain => None,
        }
    }

    /// Whether the buffer came from a pool class (else a plain allocation).
    pub fn is_pooled(&self) -> bool {
        matches!(self.origin, Origin::Pool { .. })
    }
}

impl Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= cap` initialized bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("buf_index", &self.buf_index)
            .field("pooled", &self.is_pooled())
            .finish()
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Pool {
                shared,
                class,
                index,
            } => shared.give_back(*class as usize, *index),
            Origin::Plain => {
                let layout = Layout::from_size_align(self.cap, BUF_ALIGN)
                    .expect("the layout it was allocated with");
                // SAFETY: allocated in `plain` with this very layout, freed once.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
        }
    }
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;

    fn config(counts: [usize; 5]) -> BufferPoolConfig {
        BufferPoolConfig { counts }
    }

    fn ring() -> IoUring {
        IoUring::new(8).expect("io_uring")
    }

    #[test]
    fn every_buffer_is_4k_aligned_pooled_or_plain() {
        let ring = ring();
        let pool = BufferPool::new(&config([4, 4, 2, 1, 1]), Some(&ring.submitter())).unwrap();
        let mut bufs = Vec::new();
        for size in [
            1,
            100,
            4096,
            4097,
            20_000,
            65_536,
            100_000,
            1 << 20,
            (1 << 20) + 1,
            5 << 20,
        ] {
            let b = pool.alloc(size).unwrap();
            assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0, "size {size}");
            assert_eq!(b.capacity() % BUF_ALIGN, 0);
            assert!(b.capacity() >= size);
            assert_eq!(b.len(), size);
            bufs.push(b);
        }
        assert!(
            !bufs.last().unwrap().is_pooled(),
            "above the largest class: plain"
        );
        assert_eq!(bufs.last().unwrap().buf_index(), None);
    }

    /// The fixed-or-plain rule of `File::read_fixed_at` and `veloq_read_fixed`: a buffer
    /// gets a fixed index only from the registered pool that handed it out.
    #[test]
    fn only_the_registered_pool_that_made_a_buffer_names_its_fixed_index() {
        let (my_ring, other_ring) = (ring(), ring());
        let mine = BufferPool::new(&config([2, 0, 0, 0, 0]), Some(&my_ring.submitter())).unwrap();
        let other =
            BufferPool::new(&config([2, 0, 0, 0, 0]), Some(&other_ring.submitter())).unwrap();
        let unregistered = BufferPool::new(&config([2, 0, 0, 0, 0]), None).unwrap();
        let own = mine.alloc(4096).unwrap();
        assert!(own.buf_index().is_some());
        assert_eq!(mine.fixed_index(&own), own.buf_index());
        // Another worker's registered buffer: its index means nothing on this ring.
        let foreign = other.alloc(4096).unwrap();
        assert!(foreign.buf_index().is_some());
        assert_eq!(mine.fixed_index(&foreign), None);
        // Plain buffers: from an unregistered pool, or too big for any class.
        assert_eq!(mine.fixed_index(&unregistered.alloc(4096).unwrap()), None);
        let big = mine.alloc(2 << 20).unwrap();
        assert_eq!(big.buf_index(), None);
        assert_eq!(mine.fixed_index(&big), None);
    }

    /// `RawOp::ReadPool` / `WritePool` become the fixed-buffer operations only on the
    /// pool that made the buffer, and name its owner worker for routing.
    #[test]
    fn a_pool_operation_is_fixed_only_on_the_buffers_own_pool() {
        use crate::io::RawOp;
        let (my_ring, other_ring) = (ring(), ring());
        let mine = BufferPool::new(&config([2, 0, 0, 0, 0]), Some(&my_ring.submitter()))
            .unwrap()
            .on_worker(0x1000, 3);
        let other =
            BufferPool::new(&config([2, 0, 0, 0, 0]), Some(&other_ring.submitter())).unwrap();
        let mut buf = mine.alloc(4096).unwrap();
        assert_eq!(buf.worker(), Some(3));
        assert_eq!(buf.worker_of(0x1000), Some(3));
        assert_eq!(buf.worker_of(0x2000), None, "another runtime's worker 3");
        assert_eq!(
            other.alloc(4096).unwrap().worker(),
            None,
            "a pool of no worker"
        );
        let index = buf.buf_index().expect("registered");
        let data = buf.as_mut_ptr().wrapping_add(512);
        let read = RawOp::ReadPool {
            fd: 7,
            pool: &buf,
            data,
            len: 100,
            offset: 9,
        };
        // SAFETY: `buf` is alive.
        let (on_mine, on_other) = unsafe { (read.resolve_pool(&mine), read.resolve_pool(&other)) };
        assert_eq!(
            on_mine,
            RawOp::ReadFixed {
                fd: 7,
                buf: data,
                len: 100,
                offset: 9,
                buf_index: index
            }
        );
        assert_eq!(
            on_other,
            RawOp::Read {
                fd: 7,
                buf: data,
                len: 100,
                offset: 9
            }
        );
        let write = RawOp::WritePool {
            fd: 7,
            pool: &buf,
            data: data.cast_const(),
            len: 100,
            offset: 9,
        };
        // SAFETY: as above.
        let (on_mine, on_other) =
            unsafe { (write.resolve_pool(&mine), write.resolve_pool(&other)) };
        assert!(matches!(on_mine, RawOp::WriteFixed { buf_index, .. } if buf_index == index));
        assert!(matches!(on_other, RawOp::Write { .. }));
        // Any other operation is left as it is, and so is a pool operation without a
        // buffer, for validation to refuse.
        // SAFETY: no pointer is followed.
        assert_eq!(unsafe { RawOp::Nop.resolve_pool(&mine) }, RawOp::Nop);
        let no_buffer = RawOp::ReadPool {
            fd: 7,
            pool: std::ptr::null(),
            data,
            len: 100,
            offset: 9,
        };
        // SAFETY: a null buffer is not followed.
        assert_eq!(unsafe { no_buffer.resolve_pool(&mine) }, no_buffer);
        assert_eq!(crate::io::ops::validate(&no_buffer), Err(-libc::EINVAL));
    }

    #[test]
    fn a_freed_buffer_is_the_next_one_handed_out() {
        let pool = BufferPool::new(&config([8, 0, 0, 0, 0]), None).unwrap();
        let a = pool.alloc(4096).unwrap();
        let p = a.as_ptr();
        drop(a);
        for _ in 0..1000 {
            let b = pool.alloc(10).unwrap();
            assert_eq!(b.as_ptr(), p, "LIFO free stack: the same buffer again");
        }
        let s = pool.stats();
        assert_eq!((s.allocs, s.frees, s.plain_allocs), (1001, 1001, 0));
        assert_eq!(s.free_buffers, 8);
    }

    #[test]
    fn an_exhausted_class_spills_to_the_next_then_to_plain() {
        let ring = ring();
        let pool = BufferPool::new(&config([2, 1, 0, 0, 0]), Some(&ring.submitter())).unwrap();
        let a = pool.alloc(4096).unwrap();
        let b = pool.alloc(4096).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (4096, 4096));
        let c = pool.alloc(4096).unwrap();
        assert_eq!(c.capacity(), 16 << 10, "the 4 KiB class is empty: 16 KiB");
        assert!(c.buf_index().is_some());
        let d = pool.alloc(4096).unwrap();
        assert!(!d.is_pooled(), "every fitting class empty: plain");
        assert_eq!(d.capacity(), 4096);
        assert_eq!(d.buf_index(), None);
        let s = pool.stats();
        assert_eq!(
            (s.allocs, s.spills, s.plain_allocs, s.free_buffers),
            (4, 1, 1, 0)
        );
        drop((a, b, c, d));
        assert_eq!(pool.stats().free_buffers, 3);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let pool = BufferPool::new(&config([1, 0, 0, 0, 0]), None).unwrap();
        for size in [0, MAX_BUF_SIZE + 1, usize::MAX] {
            let e = pool.alloc(size).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        assert_eq!(pool.stats().allocs, 0);
    }

    #[test]
    fn a_buffer_freed_on_another_thread_goes_back_to_its_owner() {
        let pool = BufferPool::new(&config([2, 0, 0, 0, 0]), None).unwrap();
        let mut a = pool.alloc(4096).unwrap();
        let _b = pool.alloc(4096).unwrap();
        a.fill(0xab);
        let p = a.as_ptr() as usize;
        std::thread::spawn(move || drop(a)).join().unwrap();
        // The other thread did not touch the free stack: it is still empty.
        assert_eq!(pool.free_now(0), 0);
        // The owner takes it back on its next allocation, and reuses it.
        let c = pool.alloc(100).unwrap();
        assert_eq!(c.as_ptr() as usize, p);
        assert!(
            c.iter().all(|&x| x == 0xab),
            "the other thread's writes are visible"
        );
        let s = pool.stats();
        assert_eq!((s.frees, s.cross_thread_frees, s.plain_allocs), (1, 1, 0));
    }

    #[test]
    fn many_threads_return_buffers_concurrently_none_lost() {
        let pool = BufferPool::new(&config([64, 0, 0, 0, 0]), None).unwrap();
        let mut batches: Vec<Vec<PoolBuf>> = (0..4).map(|_| Vec::new()).collect();
        for i in 0..64 {
            batches[i % 4].push(pool.alloc(4096).unwrap());
        }
        let threads: Vec<_> = batches
            .into_iter()
            .map(|batch| std::thread::spawn(move || drop(batch)))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = pool.stats();
        assert_eq!((s.cross_thread_frees, s.free_buffers), (64, 64));
        let again: Vec<_> = (0..64).map(|_| pool.alloc(4096).unwrap()).collect();
        assert!(again.iter().all(PoolBuf::is_pooled));
        let mut ptrs: Vec<_> = again.iter().map(|b| b.as_ptr() as usize).collect();
        ptrs.sort_unstable();
        ptrs.dedup();
        assert_eq!(ptrs.len(), 64, "each buffer handed out once");
    }

    #[test]
    fn a_buffer_outliving_its_pool_stays_valid_and_is_freed() {
        let ring = ring();
        let pool = BufferPool::new(&config([1, 0, 0, 0, 0]), Some(&ring.submitter())).unwrap();
        let mut a = pool.alloc(4096).unwrap();
        drop(pool);
        drop(ring);
        a.fill(7);
        assert!(a.iter().all(|&x| x == 7));
        std::thread::spawn(move || drop(a)).join().unwrap();
    }

    #[test]
    fn a_class_over_the_region_limit_is_split_into_regions_under_it() {
        // The real 1 GiB limit: 3000 buffers of 1 MiB plan as 1024 + 1024 + 952.
        let base = 1usize << 40;
        let plan = plan_registration(
            &[(base, 4096, 10), (base << 1, 1 << 20, 3000)],
            MAX_REGISTRATION_BYTES,
        )
        .unwrap();
        assert_eq!(plan.regions.len(), 4);
        assert!(plan
            .regions
            .iter()
            .all(|&(_, len)| len <= MAX_REGISTRATION_BYTES));
        assert_eq!(plan.regions[1], (base << 1, 1 << 30));
        assert_eq!(plan.regions[2], ((base << 1) + (1 << 30), 1 << 30));
        assert_eq!(plan.regions[3], ((base << 1) + (2 << 30), 952 << 20));
        assert_eq!(plan.first_index, vec![Some(0), Some(1)]);
        assert_eq!(plan.per_region[1], 1024);
        // More regions than the kernel takes is refused before asking it.
        assert_eq!(
            plan_registration(&[(base, 4096, MAX_REGISTERED_REGIONS + 1)], 4096).unwrap_err(),
            libc::EINVAL
        );
    }

    /// A temporary file, removed on drop.
    struct TempFile(std::fs::File, std::path::PathBuf);

    impl TempFile {
        fn new(tag: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "veloq-bufpool-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            TempFile(file, path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.1);
        }
    }

    fn complete(ring: &mut IoUring, sqe: io_uring::squeue::Entry) -> i32 {
        // SAFETY: the caller keeps the buffer the entry points at alive until this
        // returns, which is after the completion was reaped.
        unsafe { ring.submission().push(&sqe) }.unwrap();
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().expect("one completion").result()
    }

    #[test]
    fn write_fixed_and_read_fixed_on_a_real_file_through_split_regions() {
        let mut ring = ring();
        // Regions of 32 KiB: the 16 KiB class (4 buffers) becomes 2 regions.
        let pool = BufferPool::with_region_limit(
            &config([2, 4, 0, 0, 0]),
            Some(&ring.submitter()),
            32 << 10,
        )
        .unwrap();
        let s = pool.stats();
        assert_eq!((s.registration_errno, s.registered_regions), (0, 3));
        assert_eq!(s.registered_bytes, s.pool_bytes);
        let file = TempFile::new("fixed");
        let fd = types::Fd(file.0.as_raw_fd());
        let mut bufs: Vec<PoolBuf> = (0..4).map(|_| pool.alloc(16 << 10).unwrap()).collect();
        let indices: Vec<_> = bufs.iter().map(|b| b.buf_index().unwrap()).collect();
        assert_eq!(indices, vec![1, 1, 2, 2]);
        for (i, b) in bufs.iter_mut().enumerate() {
            b.fill(i as u8 + 1);
            let w = opcode::WriteFixed::new(fd, b.as_ptr(), b.len() as u32, b.buf_index().unwrap())
                .offset((i * (16 << 10)) as u64)
                .build();
            assert_eq!(complete(&mut ring, w), 16 << 10);
        }
        drop(bufs);
        let mut small = pool.alloc(4096).unwrap();
        assert_eq!(small.buf_index(), Some(0));
        for i in 0..4 {
            let r = opcode::ReadFixed::new(fd, small.as_mut_ptr(), 4096, 0)
                .offset((i * (16 << 10) + 4096) as u64)
                .build();
            assert_eq!(complete(&mut ring, r), 4096);
            assert!(small.iter().all(|&x| x == i as u8 + 1), "block {i}");
        }
    }

    #[test]
    fn a_failed_registration_leaves_a_working_unregistered_pool_flagged_in_stats() {
        let mut ring = ring();
        // A ring takes one buffer table: a second registration fails (EBUSY) for real.
        let other = vec![0u8; 4096];
        let iov = [libc::iovec {
            iov_base: other.as_ptr() as *mut _,
            iov_len: other.len(),
        }];
        // SAFETY: `other` outlives the ring (declared before it is dropped below).
        unsafe { ring.submitter().register_buffers(&iov) }.unwrap();
        let pool = BufferPool::new(&config([2, 0, 0, 0, 0]), Some(&ring.submitter())).unwrap();
        let s = pool.stats();
        assert!(s.registration_failed());
        assert_eq!(s.registration_errno, libc::EBUSY);
        assert_eq!((s.registered_bytes, s.registered_regions), (0, 0));
        let mut b = pool.alloc(4096).unwrap();
        assert!(b.is_pooled());
        assert_eq!(b.buf_index(), None);
        // Still good for plain I/O.
        let file = TempFile::new("fallback");
        std::io::Write::write_all(&mut &file.0, &[9u8; 4096]).unwrap();
        let r = opcode::Read::new(types::Fd(file.0.as_raw_fd()), b.as_mut_ptr(), 4096).build();
        assert_eq!(complete(&mut ring, r), 4096);
        assert!(b.iter().all(|&x| x == 9));
        drop(ring);
        drop(other);
    }
}

#[cfg(veloq_loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two threads return buffers while the owner drains: every id comes back exactly
    /// once, whether it is taken during or after the pushes.
    #[test]
    fn loom_return_stack_loses_and_duplicates_nothing() {
        loom::model(|| {
            let stack = Arc::new(ReturnStack::new(3));
            let pushers: Vec<_> = [vec![0u32], vec![1, 2]]
                .into_iter()
                .map(|ids| {
                    let stack = stack.clone();
                    loom::thread::spawn(move || {
                        for id in ids {
                            stack.push(id);
                        }
                    })
                })
                .collect();
            let mut seen = Vec::new();
            stack.drain(|id| seen.push(id));
            for p in pushers {
                p.join().unwrap();
            }
            stack.drain(|id| seen.push(id));
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1, 2]);
        });
    }
}
