//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) for multishot receives.
//!
//! # Design
//! [`BufRing`] owns `count` buffers of `size` bytes (one anonymous mapping, so each is
//! 4 KiB aligned when `size` is a multiple of 4 KiB) and a page-aligned ring of
//! `count` entries (`io_uring_buf`, 16 bytes each; the tail shares the first entry's last
//! two bytes), registered under buffer group `bgid`. A receive submitted with
//! `BUFFER_SELECT` on that group (e.g. `RecvMulti`) lets the kernel pick a buffer from
//! the ring head; its completion names the buffer id (`cqueue::buffer_select`).
//! [`BufRing::take`] turns that (id, length) into a [`RingBuf`] handle; dropping the
//! handle puts the buffer back at the ring tail, ready for the next receive. Handles are
//! `!Send` (the tail is the owner's alone), so a buffer is always recycled on its owner.
//!
//! The kernel writes into the buffers by address (they are not pinned like fixed
//! buffers), so their memory must outlive the registration: [`BufRing::unregister`]
//! removes the group, after which the memory goes with the last handle. A `BufRing`
//! dropped while still registered leaks its memory on purpose (the ring may still be
//! alive and able to write there); dropping the io_uring ring itself also ends the
//! registration, but this type cannot know when that happened.
// Not wired to an op yet: the driver's recv (I/O engineer) will own one per worker.
#![cfg_attr(not(test), allow(dead_code))]

use std::cell::Cell;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering::Release};

use io_uring::types::BufRingEntry;

use super::mapping::Mapping;
use io_uring::Submitter;

/// Most entries a provided-buffer ring may have (the kernel's limit).
pub(crate) const MAX_RING_ENTRIES: usize = 1 << 15;

struct Inner {
    ring: Mapping,
    bufs: Mapping,
    count: u16,
    size: u32,
    bgid: u16,
    /// Our copy of the tail (the shared one is published with a release store).
    tail: Cell<u16>,
    registered: Cell<bool>,
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
    fn recycle(&self, bid: u16) {
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

/// A provided-buffer ring registered with one io_uring ring (see the module doc).
/// `!Send`: it lives on the worker that owns that ring.
pub(crate) struct BufRing {
    inner: Rc<Inner>,
}

impl fmt::Debug for BufRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRing")
            .field("bgid", &self.inner.bgid)
            .field("count", &self.inner.count)
            .field("size", &self.inner.size)
            .finish()
    }
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes and a ring of `count` entries, registers it
    /// as group `bgid` with `ring` and fills it with every buffer. `count` must be a
    /// power of two in `1..=32768` and `size` in `1..=u32::MAX` (else `InvalidInput`);
    /// the kernel's errno otherwise (e.g. `EEXIST` when `bgid` is taken, `EINVAL`
    /// before Linux 5.19).
    pub(crate) fn register(
        ring: &Submitter<'_>,
        bgid: u16,
        count: usize,
        size: usize,
    ) -> io::Result<BufRing> {
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
        };
        // SAFETY: the ring mapping is page-aligned, `count` entries long and zeroed (tail
        // 0). It stays mapped while registered: unregister clears `registered` only after
        // the kernel let go, and Drop leaks the memory while it is set.
        unsafe {
            ring.register_buf_ring_with_flags(inner.ring.ptr.as_ptr() as u64, count as u16, bgid, 0)
        }?;
        inner.registered.set(true);
        for bid in 0..inner.count {
            inner.recycle(bid);
        }
        Ok(BufRing {
            inner: Rc::new(inner),
        })
    }

    /// The buffer group id to pass with `BUFFER_SELECT` receives.
    pub(crate) fn bgid(&self) -> u16 {
        self.inner.bgid
    }

    /// Bytes per buffer.
    pub(crate) fn buf_size(&self) -> usize {
        self.inner.size as usize
    }

    /// The data of a completed receive: buffer `bid` holding `len` bytes. Dropping the
    /// handle gives the buffer back to the ring. Panics when `bid` or `len` is out of
    /// range for this ring.
    ///
    /// # Safety
    /// A completion of an operation on this ring's group named `bid` (its `res` being
    /// `len`), and `bid` was not taken since: until the handle is dropped the kernel
    /// no longer owns that buffer.
    pub(crate) unsafe fn take(&self, bid: u16, len: usize) -> RingBuf {
        assert!(bid < self.inner.count, "buffer id out of range");
        assert!(len <= self.inner.size as usize, "length beyond the buffer");
        RingBuf {
            inner: self.inner.clone(),
            bid,
            len,
        }
    }

    /// Removes the group from the ring: no receive picks these buffers any more. The
    /// memory goes with the last outstanding handle.
    pub(crate) fn unregister(self, ring: &Submitter<'_>) -> io::Result<()> {
        ring.unregister_buf_ring(self.inner.bgid)?;
        self.inner.registered.set(false);
        Ok(())
    }
}

/// The data of one completed receive, in a provided buffer. Goes back to its ring when
/// dropped. `!Send`: dropped on the ring's owner thread.
pub(crate) struct RingBuf {
    inner: Rc<Inner>,
    bid: u16,
    len: usize,
}

impl RingBuf {
    /// The buffer id within its group.
    pub(crate) fn bid(&self) -> u16 {
        self.bid
    }
}

impl Deref for RingBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= size` bytes of buffer `bid`, which the kernel handed over (the
        // `take` contract) and gets back only when this handle is dropped.
        unsafe { std::slice::from_raw_parts(self.inner.buf_addr(self.bid), self.len) }
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        if self.inner.registered.get() {
            self.inner.recycle(self.bid);
        }
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
