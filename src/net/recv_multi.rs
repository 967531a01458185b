//! [`RecvStream`]: one multishot receive (`IORING_OP_RECV` with `IORING_RECV_MULTISHOT`)
//! into the buffers of a [`BufRing`], re-armed when the kernel ends it.
//!
//! The entry is the C API's (`veloq_recv_multishot`: [`RawOp::RecvMulti`]); the driver
//! delivers its completions like any multishot operation's, and gives the buffers of a
//! dropped stream's late completions back to the ring (`buf_ring::give_back_orphaned`).

use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::task::{Context, Poll};

use io_uring::cqueue;

use crate::io::buf_ring::{BufRing, Provided, RecvBuf};
use crate::io::op::MultiOp;
use crate::io::op_table::OpResult;
use crate::io::RawOp;

/// Where a [`RecvStream`] is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Receiving (a receive is armed, or is armed by the next poll).
    Open,
    /// The ring ran dry (`ENOBUFS` ended the receive): re-armed once a buffer was given
    /// back since the receive was armed (before that the ring is still empty).
    Starved,
    /// [`RecvStream::stop`] was called: what the kernel received still comes out.
    Stopping,
    /// Ended (end of stream, an error returned, stopped, shutdown).
    Done,
}

/// The bytes arriving on a connected socket, chunk by chunk, through one multishot
/// receive into the buffers of a [`BufRing`] (see
/// [`TcpStream::recv_multishot`](crate::net::TcpStream::recv_multishot)): no submission
/// per chunk, and no failed first attempt when no data waits.
///
/// Promises:
/// - Chunks come out of [`next`](Self::next) in the order the bytes arrived, each whole
///   (one [`RecvBuf`] of at most [`BufRing::buf_size`] bytes); nothing is skipped, also
///   when the kernel ends the multishot receive on its own (it is re-armed) or the ring
///   runs out of buffers (the bytes wait in the socket; the receive is re-armed once a
///   buffer is given back, so holding every buffer of the ring makes `next` wait until
///   one is dropped).
/// - End of stream: `None`. An error (e.g. `ECONNRESET`): returned once as `Some(Err)`,
///   then `None`. Runtime shutdown: `None`.
/// - [`stop`](Self::stop) then `next` until `None`: every byte the kernel took from the
///   socket comes out, the rest stays in the socket for a plain `read`. Nothing is lost.
/// - Dropping the stream cancels the receive (`ASYNC_CANCEL`); chunks the kernel
///   received but `next` did not return are discarded (their buffers go back to the
///   ring, never touched again by anyone): bytes may be lost, stop first to keep them.
///
/// `!Send`: it lives on the worker whose ring its [`BufRing`] belongs to.
pub struct RecvStream<'a> {
    ring: &'a BufRing,
    fd: RawFd,
    op: Option<MultiOp<Provided>>,
    state: State,
    arms: u64,
    /// The ring's give-back count when the receive was last armed.
    armed_at: u64,
    /// The waker left with the ring while starved.
    waiter: Option<std::task::Waker>,
}

impl<'a> RecvStream<'a> {
    /// A stream on `fd` (a connected socket the caller keeps open while the stream
    /// lives), receiving into `ring`. Nothing is submitted before the first poll.
    pub(crate) fn new(fd: RawFd, ring: &'a BufRing) -> RecvStream<'a> {
        RecvStream {
            ring,
            fd,
            op: None,
            state: State::Open,
            arms: 0,
            armed_at: 0,
            waiter: None,
        }
    }

    /// The next chunk received: `Some(Ok(buf))`, `None` at end of stream (or once
    /// stopped, after an error, at shutdown), `Some(Err(e))` once for an error. Errors
    /// besides the socket's: off a worker; `EXDEV` when the ring belongs to another
    /// worker; `EINVAL` when the kernel has no multishot receive (before Linux 6.0).
    pub async fn next(&mut self) -> Option<io::Result<RecvBuf>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next chunk (see [`next`](Self::next)).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<RecvBuf>>> {
        loop {
            if self.op.is_none() {
                match self.state {
                    State::Done => return Poll::Ready(None),
                    State::Stopping => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    State::Starved => {
                        if self.ring.returned() == self.armed_at {
                            self.ring.wait_for_buffer(cx.waker());
                            self.waiter = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                        if let Some(w) = self.waiter.take() {
                            self.ring.forget_waiter(&w);
                        }
                        self.state = State::Open;
                    }
                    State::Open => {}
                }
                if let Err(e) = self.arm() {
                    self.state = State::Done;
                    if e.raw_os_error() == Some(libc::ESHUTDOWN) {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let op = self.op.as_mut().expect("armed above");
            let r = match op.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.op = None;
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(r)) => r,
            };
            if let Some(out) = self.handle(r) {
                return Poll::Ready(out);
            }
        }
    }

    /// Submits the multishot receive.
    fn arm(&mut self) -> io::Result<()> {
        let entry = RawOp::RecvMulti {
            fd: self.fd,
            group: self.ring.bgid(),
            flags: 0,
        }
        .entry();
        let op = MultiOp::submit_on(self.ring.provided(), self.ring.owner(), |_| entry)
            .map_err(|(e, _)| e)?;
        self.op = Some(op);
        self.arms += 1;
        self.armed_at = self.ring.returned();
        Ok(())
    }

    /// One completion: what `poll_next` returns, or `None` to go on (re-arm or wait).
    fn handle(&mut self, r: OpResult) -> Option<Option<io::Result<RecvBuf>>> {
        let more = cqueue::more(r.flags);
        if !more {
            // The kernel ended this receive: re-armed by the next round unless ended.
            self.op = None;
        }
        let buf = cqueue::buffer_select(r.flags).map(|bid| {
            // SAFETY: a completion of our receive on this ring's group naming `bid`,
            // seen once (each completion is delivered once).
            unsafe { self.ring.take(bid, r.res.max(0) as usize) }
        });
        if r.res > 0 {
            return Some(Some(buf.ok_or_else(|| {
                io::Error::other("multishot receive: data without a provided buffer")
            })));
        }
        drop(buf);
        let end = match -r.res {
            0 => None,
            libc::ENOBUFS => {
                // The bytes stay in the socket; re-arm once the ring has a buffer.
                debug_assert!(!more);
                self.op = None;
                if self.state == State::Open {
                    self.state = State::Starved;
                }
                return None;
            }
            libc::ECANCELED => None,
            errno => Some(Err(io::Error::from_raw_os_error(errno))),
        };
        // End of stream, stopped, shutdown or an error: the stream ends here. A receive
        // still armed (not expected) is cancelled by the drop.
        self.op = None;
        self.state = State::Done;
        Some(end)
    }

    /// Asks the kernel to stop receiving. Chunks it received before that still come out
    /// of [`next`](Self::next), which then returns `None`; bytes it did not take stay in
    /// the socket.
    pub fn stop(&mut self) {
        match self.state {
            State::Done => {}
            _ => self.state = State::Stopping,
        }
        if let Some(op) = &self.op {
            op.cancel();
        }
    }

    /// How many times a multishot receive was submitted: 1, plus one per re-arm after
    /// the kernel ended one (ring ran dry, completion queue overflow).
    pub fn arms(&self) -> u64 {
        self.arms
    }
}

impl Drop for RecvStream<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            // Only live receives may wait on the ring (see `Inner::give_back`).
            self.ring.forget_waiter(&w);
        }
        if let Some(mut op) = self.op.take() {
            // Results already delivered give their buffers back now; the driver does it
            // for those still to come (the op's memory is the ring, see the module doc).
            while let Some(r) = op.take_ready() {
                if let Some(bid) = cqueue::buffer_select(r.flags) {
                    // SAFETY: as in `handle`: a completion naming `bid`, seen once.
                    drop(unsafe { self.ring.take(bid, 0) });
                }
            }
            drop(op);
        }
    }
}

impl std::fmt::Debug for RecvStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("fd", &self.fd)
            .field("state", &self.state)
            .field("arms", &self.arms)
            .finish()
    }
}
