//! Provided-buffer rings (`IORING_REGISTER_PBUF_RING`) for multishot receives.
//!
//! # Design
//! A [`BufRing`] owns `count` buffers of `size` bytes (one anonymous mapping, so each is
//! 4 KiB aligned when `size` is a multiple of 4 KiB) and a page-aligned ring of
//! `count` entries (`io_uring_buf`, 16 bytes each; the tail shares the first entry's last
//! two bytes), registered under buffer group `bgid`. A receive submitted with
//! `BUFFER_SELECT` on that group (e.g. `RecvMulti`) lets the kernel pick a buffer from
//! the ring head; its completion names the buffer id (`cqueue::buffer_select`).
//! [`BufRing::take`] turns that (id, length) into a [`RecvBuf`] handle; dropping the
//! handle puts the buffer back at the ring tail, ready for the next receive. Handles are
//! `!Send` (the tail is the owner's alone), so a buffer is always recycled on its owner.
//!
//! The kernel writes into the buffers by address (they are not pinned like fixed
//! buffers), so their memory must outlive the registration: the group is unregistered
//! when the [`BufRing`] is dropped (on its worker), and the memory goes with the last
//! handle (a [`RecvBuf`], or a dropped receive the driver still keeps until the kernel's
//! final completion). A ring that cannot be unregistered (dropped off its worker, or
//! after the worker's ring is gone) leaks its memory on purpose: the kernel may still
//! be able to write there.
//!
//! A receive whose future was dropped is kept by the driver with a [`Provided`] as its
//! memory: buffers its remaining completions name go straight back to the ring.
//!
//! The C API (`veloq_buf_ring_*`) uses the same rings: the worker's driver owns them by
//! group id, a C multishot receive on such a group keeps a [`Provided`] in its slot until
//! its final completion, and the C caller takes and gives back buffers by id
//! ([`BufRing::lend`], [`BufRing::recycle`], which refuse what was not handed over).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering::Release};
use std::task::Waker;

use io_uring::types::BufRingEntry;

use super::mapping::Mapping;
use super::op::{self, Owner};
use io_uring::Submitter;

/// Most entries a provided-buffer ring may have (the kernel's limit).
pub(crate) const MAX_RING_ENTRIES: usize = 1 << 15;

pub(crate) struct Inner {
    ring: Mapping,
    bufs: Mapping,
    count: u16,
    size: u32,
    bgid: u16,
    /// Our copy of the tail (the shared one is published with a release store).
    tail: Cell<u16>,
    registered: Cell<bool>,
    /// Buffers given back since the ring was made (a receive that ran the ring dry is
    /// re-armed only once this moved on: see [`BufRing::returned`]).
    returned: Cell<u64>,
    /// Receives waiting for a buffer to come back (they ran the ring dry).
    waiters: RefCell<Vec<Waker>>,
    /// Whether `waiters` may be non-empty (checked on every give-back).
    waiting: Cell<bool>,
    /// Buffers lent to a C caller ([`BufRing::lend`]), one bit per buffer id: only
    /// these may be [recycled](BufRing::recycle), once each.
    lent: Box<[Cell<u64>]>,
    /// How many bits of `lent` are set.
    lent_count: Cell<u32>,
}

impl Inner {
    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.as_ptr().cast()
    }

    fn buf_addr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count: inside the buffer mapping.
        unsafe {
            self.bufs
                .ptr
                .as_ptr()
                .add(bid as usize * self.size as usize)
        }
    }

    /// Appends buffer `bid` at the tail and publishes it to the kernel.
    fn publish(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: slot < count entries of the ring mapping. The kernel reads only entries
        // between its head and the published tail; this one is past the tail until the
        // store below. Writing the fields one by one keeps the tail (which lives in entry
        // 0's last two bytes) untouched.
        unsafe {
            let entry = &mut *self.entries().add(slot);
            entry.set_addr(self.buf_addr(bid) as u64);
            entry.set_len(self.size);
            entry.set_bid(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail field of the first entry, u16-aligned inside the ring mapping;
        // the kernel reads it concurrently, so it is accessed atomically.
        let shared = unsafe { &*(BufRingEntry::tail(self.entries()) as *const AtomicU16) };
        shared.store(tail, Release);
    }

    /// Gives buffer `bid` (which the kernel handed over) back to the ring, and wakes the
    /// receives waiting for one.
    fn give_back(&self, bid: u16) {
        if !self.registered.get() {
            return;
        }
        self.publish(bid);
        self.returned.set(self.returned.get().wrapping_add(1));
        if self.waiting.get() {
            self.wake_waiters();
        }
    }

    #[cold]
    fn wake_waiters(&self) {
        if let Ok(mut waiters) = self.waiters.try_borrow_mut() {
            self.waiting.set(false);
            // Only live receives wait here (a dropped one takes its waker out), so
            // waking one never releases a task.
            for w in waiters.drain(..) {
                w.wake();
            }
        }
    }

    /// Maps and registers a ring (see [`BufRing::register`]).
    fn register(ring: &Submitter<'_>, bgid: u16, count: usize, size: usize) -> io::Result<Inner> {
        if !count.is_power_of_two() || count > MAX_RING_ENTRIES || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two <= 32768, size > 0",
            ));
        }
        let size32 = u32::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        let page = 4096;
        let ring_bytes = (count * std::mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let buf_bytes = count.checked_mul(size).ok_or(io::ErrorKind::InvalidInput)?;
        let inner = Inner {
            ring: Mapping::new(ring_bytes)?,
            bufs: Mapping::new(buf_bytes)?,
            count: count as u16, // 32768 fits; the mask below uses count - 1
            size: size32,
            bgid,
            tail: Cell::new(0),
            registered: Cell::new(false),
            returned: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            waiting: Cell::new(false),
            lent: (0..count.div_ceil(64)).map(|_| Cell::new(0)).collect(),
            lent_count: Cell::new(0),
        };
        // SAFETY: the ring mapping is page-aligned, `count` entries long and zeroed (tail
        // 0). It stays mapped while registered: `registered` is cleared only after the
        // kernel let go, and Drop leaks the memory while it is set.
        unsafe {
            ring.register_buf_ring_with_flags(inner.ring.ptr.as_ptr() as u64, count as u16, bgid, 0)
        }?;
        inner.registered.set(true);
        for bid in 0..count {
            inner.publish(bid as u16);
        }
        Ok(inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.registered.get() {
            // Still registered: the kernel may write into the buffers and read the ring.
            std::mem::forget(std::mem::replace(&mut self.ring, Mapping::dangling()));
            std::mem::forget(std::mem::replace(&mut self.bufs, Mapping::dangling()));
        }
    }
}

thread_local! {
    /// The next buffer group id to try on this thread's ring.
    static NEXT_BGID: Cell<u16> = const { Cell::new(0x4000) };
}

/// A ring of provided buffers registered with one worker's io_uring ring: the buffers
/// [`TcpStream::recv_multishot`](crate::net::TcpStream::recv_multishot) receives into.
/// One ring can feed any number of receives on its worker (share it with `Rc`); each
/// received chunk occupies one buffer until its [`RecvBuf`] is dropped.
///
/// `!Send`: a ring belongs to the worker that made it. Dropping it (on that worker)
/// unregisters it: receives still armed on it then end with `ENOBUFS`; buffers still
/// held stay valid until dropped.
pub struct BufRing {
    inner: Rc<Inner>,
    /// The worker whose ring it is registered with; `None` for a ring registered by
    /// hand (tests), which the caller unregisters.
    owner: Option<Owner>,
}

impl fmt::Debug for BufRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRing")
            .field("bgid", &self.inner.bgid)
            .field("count", &self.count())
            .field("size", &self.inner.size)
            .finish()
    }
}

impl BufRing {
    /// Registers a ring of `count` buffers of `size` bytes with the current worker's
    /// io_uring ring (Linux 5.19 or later; multishot receives need 6.0). `count` must be
    /// a power of two in `1..=32768` and `size` in `1..=u32::MAX`, else `InvalidInput`.
    /// Errors: off a worker (an error saying so), the kernel's errors from the
    /// registration (`EINVAL` on an older kernel, `ENOMEM`), mapping failures. The
    /// group id is picked from 0x4000 up, skipping ids already registered on the ring
    /// (the C API's rings, `veloq_buf_ring_new`, are made here too).
    pub fn new(count: usize, size: usize) -> io::Result<BufRing> {
        let made = op::with_driver(|driver, owner| {
            let submitter = driver.submitter();
            // Group ids are per ring; a taken one (EEXIST: e.g. registered through the
            // C API) is skipped.
            let mut last = None;
            for _ in 0..=u16::MAX {
                let bgid = NEXT_BGID.with(|n| {
                    let b = n.get();
                    n.set(b.wrapping_add(1));
                    b
                });
                match Inner::register(&submitter, bgid, count, size) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = Some(e),
                    r => return r.map(|inner| (inner, owner)),
                }
            }
            Err(last.expect("tried at least once"))
        })?;
        let (inner, owner) = made?;
        Ok(BufRing {
            inner: Rc::new(inner),
            owner: Some(owner),
        })
    }

    /// Maps `count` buffers of `size` bytes and a ring of `count` entries, registers it
    /// as group `bgid` with `ring` and fills it with every buffer. Shapes as for
    /// [`new`](Self::new); the kernel's errno otherwise (e.g. `EEXIST` when `bgid` is
    /// taken). The caller unregisters it ([`unregister`](Self::unregister)).
    #[cfg(test)]
    pub(crate) fn register(
        ring: &Submitter<'_>,
        bgid: u16,
        count: usize,
        size: usize,
    ) -> io::Result<BufRing> {
        Ok(BufRing {
            inner: Rc::new(Inner::register(ring, bgid, count, size)?),
            owner: None,
        })
    }

    /// The buffer group id to pass with `BUFFER_SELECT` receives.
    pub(crate) fn bgid(&self) -> u16 {
        self.inner.bgid
    }

    /// The worker the ring belongs to (`None`: registered by hand).
    pub(crate) fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Bytes per buffer: the most one [`RecvBuf`] holds.
    pub fn buf_size(&self) -> usize {
        self.inner.size as usize
    }

    /// Buffers in the ring.
    pub fn count(&self) -> usize {
        self.inner.count as usize
    }

    /// The data of a completed receive: buffer `bid` holding `len` bytes. Dropping the
    /// handle gives the buffer back to the ring. Panics when `bid` or `len` is out of
    /// range for this ring.
    ///
    /// # Safety
    /// A completion of an operation on this ring's group named `bid` (its `res` being
    /// `len`), and `bid` was not taken since: until the handle is dropped the kernel
    /// no longer owns that buffer.
    pub(crate) unsafe fn take(&self, bid: u16, len: usize) -> RecvBuf {
        assert!(bid < self.inner.count, "buffer id out of range");
        assert!(len <= self.inner.size as usize, "length beyond the buffer");
        RecvBuf {
            inner: self.inner.clone(),
            bid,
            len,
        }
    }

    /// How many buffers were given back so far. A receive that ended with `ENOBUFS`
    /// found the ring empty; if this count did not move since that receive was armed,
    /// the ring is still empty (only a give-back adds a buffer).
    pub(crate) fn returned(&self) -> u64 {
        self.inner.returned.get()
    }

    /// Leaves `waker` to be woken when a buffer comes back.
    pub(crate) fn wait_for_buffer(&self, waker: &Waker) {
        let mut waiters = self.inner.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        self.inner.waiting.set(true);
    }

    /// Takes `waker` out of the waiters (its receive is going away).
    pub(crate) fn forget_waiter(&self, waker: &Waker) {
        self.inner
            .waiters
            .borrow_mut()
            .retain(|w| !w.will_wake(waker));
    }

    /// What keeps the ring's memory alive for a receive on it: the driver keeps it for
    /// a receive whose future was dropped, and for a C receive on the group (until its
    /// final completion; see [`in_use`](Self::in_use)).
    pub(crate) fn provided(&self) -> Provided {
        Provided(self.inner.clone())
    }

    /// Removes the group from the ring: no receive picks these buffers any more. The
    /// memory goes with the last outstanding handle.
    #[cfg(test)]
    pub(crate) fn unregister(self, ring: &Submitter<'_>) -> io::Result<()> {
        self.unregister_on(ring)
    }

    /// Unregisters the group from `ring` (the ring it was registered with) without
    /// going through the current worker: for the driver while it is torn down. After
    /// it the drop does nothing more. An error leaves the ring registered (its memory
    /// is then leaked on drop, see the module doc).
    pub(crate) fn unregister_on(&self, ring: &Submitter<'_>) -> io::Result<()> {
        if self.inner.registered.get() {
            ring.unregister_buf_ring(self.inner.bgid)?;
            self.inner.registered.set(false);
        }
        Ok(())
    }

    /// For the C API: buffer `bid`, which a completion of a receive on this group just
    /// named, is now the caller's until [`recycle`](Self::recycle). Returns its address
    /// ([`buf_size`](Self::buf_size) bytes; the completion's result says how many hold
    /// data). `-EINVAL` when `bid` is out of range, `-EALREADY` when it is lent already
    /// (taken twice without a recycle between); nothing changes then.
    ///
    /// The caller's promise (not checked): a completion named `bid` since it was last
    /// recycled, so the kernel no longer owns it.
    pub(crate) fn lend(&self, bid: u16) -> Result<*mut u8, i32> {
        let (word, bit) = self.lent_bit(bid)?;
        let w = word.get();
        if w & bit != 0 {
            return Err(-libc::EALREADY);
        }
        word.set(w | bit);
        self.inner.lent_count.set(self.inner.lent_count.get() + 1);
        Ok(self.inner.buf_addr(bid))
    }

    /// For the C API: gives back buffer `bid`, lent by [`lend`](Self::lend), to the
    /// ring (the next receive may fill it; the caller no longer touches it). `-EINVAL`
    /// when `bid` is out of range or not lent (never taken, or recycled already);
    /// nothing changes then.
    pub(crate) fn recycle(&self, bid: u16) -> Result<(), i32> {
        let (word, bit) = self.lent_bit(bid)?;
        let w = word.get();
        if w & bit == 0 {
            return Err(-libc::EINVAL);
        }
        word.set(w & !bit);
        self.inner.lent_count.set(self.inner.lent_count.get() - 1);
        self.inner.give_back(bid);
        Ok(())
    }

    /// The word of `lent` holding `bid`'s bit, and the bit; `-EINVAL` out of range.
    fn lent_bit(&self, bid: u16) -> Result<(&Cell<u64>, u64), i32> {
        if bid >= self.inner.count {
            return Err(-libc::EINVAL);
        }
        Ok((&self.inner.lent[bid as usize / 64], 1 << (bid % 64)))
    }

    /// Whether the ring is in use: buffers are lent ([`lend`](Self::lend)), or an
    /// operation in flight keeps it (its [`provided`](Self::provided) is alive: a
    /// multishot receive armed on the group).
    pub(crate) fn in_use(&self) -> bool {
        self.inner.lent_count.get() > 0 || Rc::strong_count(&self.inner) > 1
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let Some(owner) = self.owner else {
            return;
        };
        if !self.inner.registered.get() {
            return;
        }
        let bgid = self.inner.bgid;
        let done = op::with_driver(|driver, here| {
            here == owner && driver.submitter().unregister_buf_ring(bgid).is_ok()
        });
        if done.unwrap_or(false) {
            self.inner.registered.set(false);
        }
        // Otherwise the memory is leaked by Inner's Drop (the kernel may still use it).
    }
}

/// A receive's memory while the driver keeps it after its future was dropped: the
/// ring its completions take buffers from. See [`give_back_orphaned`].
pub(crate) struct Provided(Rc<Inner>);

/// For the driver: a completion (`flags`) of an operation whose future was dropped,
/// kept with `keep`. When `keep` is a [`Provided`] and the completion names a buffer,
/// that buffer goes back to its ring (nobody will read it).
pub(crate) fn give_back_orphaned(keep: &dyn std::any::Any, flags: u32) {
    if let (Some(p), Some(bid)) = (
        keep.downcast_ref::<Provided>(),
        io_uring::cqueue::buffer_select(flags),
    ) {
        if bid < p.0.count {
            p.0.give_back(bid);
        }
    }
}

/// The data of one completed receive, in a buffer of a [`BufRing`]: derefs to the bytes
/// received. Dropping it gives the buffer back to its ring (for the next receive).
/// `!Send`: dropped on the ring's worker. It can be written out as is
/// (`write_all(buf)`: it is an [`IoBuf`](crate::io::IoBuf)).
pub struct RecvBuf {
    inner: Rc<Inner>,
    bid: u16,
    len: usize,
}

impl fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl RecvBuf {
    /// The buffer id within its group.
    #[cfg(test)]
    pub(crate) fn bid(&self) -> u16 {
        self.bid
    }
}

impl Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= size` bytes of buffer `bid`, which the kernel handed over (the
        // `take` contract) and gets back only when this handle is dropped.
        unsafe { std::slice::from_raw_parts(self.inner.buf_addr(self.bid), self.len) }
    }
}

// SAFETY: the buffer lives in a mapping that stays put for as long as any handle (this
// one included) keeps `Inner` alive, and nothing else writes it while the handle lives
// (the kernel gets it back only on drop).
unsafe impl super::IoBuf for RecvBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.inner.buf_addr(self.bid)
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.inner.give_back(self.bid);
    }
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;
    use io_uring::{cqueue, opcode, types, IoUring};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn multishot_recv_on_a_real_socket_recycles_provided_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut ring = IoUring::new(16).unwrap();
        let bufs = BufRing::register(&ring.submitter(), 7, 4, 64).unwrap();
        assert_eq!((bufs.bgid(), bufs.buf_size()), (7, 64));
        let arm = |ring: &mut IoUring| {
            let recv = opcode::RecvMulti::new(types::Fd(server.as_raw_fd()), 7)
                .build()
                .user_data(1);
            // SAFETY: no buffer pointer in the entry; the kernel picks provided buffers.
            unsafe { ring.submission().push(&recv) }.unwrap();
        };
        arm(&mut ring);
        let mut bids = Vec::new();
        let mut rearmed = 0;
        // Ten messages through four buffers: only works if dropped handles are recycled.
        for i in 0..10u8 {
            let msg = [b'a' + i; 40];
            client.write_all(&msg).unwrap();
            ring.submit_and_wait(1).unwrap();
            let cqe: cqueue::Entry = ring.completion().next().expect("a completion");
            let (res, flags) = (cqe.result(), cqe.flags());
            assert!(res > 0, "message {i}: res {res} (ENOBUFS = not recycled)");
            let bid = cqueue::buffer_select(flags).expect("a provided buffer");
            // SAFETY: a completion of this group naming `bid`, not taken before.
            let data = unsafe { bufs.take(bid, res as usize) };
            assert_eq!(&*data, &msg[..], "message {i}");
            assert_eq!(data.bid(), bid);
            bids.push(bid);
            drop(data);
            if !cqueue::more(flags) {
                rearmed += 1;
                arm(&mut ring);
            }
        }
        assert!(bids.iter().all(|&b| b < 4));
        assert!(rearmed < 10, "multishot: the receive stayed armed");
        bufs.unregister(&ring.submitter()).unwrap();
    }

    #[test]
    fn bad_ring_shapes_are_refused() {
        let ring = IoUring::new(4).unwrap();
        for (count, size) in [(3, 64), (0, 64), (1 << 16, 64), (4, 0)] {
            let e = BufRing::register(&ring.submitter(), 1, count, size).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{count} x {size}");
        }
    }

    #[test]
    fn lent_buffers_are_recycled_once_each_and_keep_the_ring_in_use() {
        let ring = IoUring::new(4).unwrap();
        let bufs = BufRing::register(&ring.submitter(), 5, 4, 64).unwrap();
        assert!(!bufs.in_use());
        assert_eq!(bufs.recycle(2), Err(-libc::EINVAL), "never lent");
        assert_eq!(bufs.lend(4).unwrap_err(), -libc::EINVAL, "out of range");
        // Nothing is armed on this ring, so the kernel reads none of its entries: lending
        // a buffer still in the ring (a real caller lends only what a completion named)
        // exercises only the bookkeeping.
        let p = bufs.lend(2).unwrap();
        assert_eq!(p, bufs.inner.buf_addr(2));
        assert_eq!(bufs.lend(2).unwrap_err(), -libc::EALREADY);
        assert!(bufs.in_use());
        let keep = bufs.provided();
        assert_eq!(bufs.recycle(2), Ok(()));
        assert_eq!(bufs.recycle(2), Err(-libc::EINVAL), "recycled twice");
        assert!(bufs.in_use(), "a receive's keep still holds it");
        drop(keep);
        assert!(!bufs.in_use());
        bufs.unregister(&ring.submitter()).unwrap();
    }

    #[test]
    fn a_taken_buffer_outlives_the_unregistered_ring() {
        let ring = IoUring::new(4).unwrap();
        let bufs = BufRing::register(&ring.submitter(), 3, 2, 4096).unwrap();
        // SAFETY: nothing was submitted, so this only exercises the handle's lifetime
        // (the kernel is not writing there: no receive is armed).
        let held = unsafe { bufs.take(0, 16) };
        bufs.unregister(&ring.submitter()).unwrap();
        assert_eq!(&*held, &[0u8; 16][..]);
        drop(held);
    }
}
