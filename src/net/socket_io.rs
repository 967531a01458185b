//! The recv and send every socket type shares.
//!
//! These are named futures over [`Run`] rather than `async fn`s: a read or a write is
//! then one future, polled directly by the caller's state machine, with no layer of
//! generated state machines between the caller and the operation (each layer moved the
//! buffer in and the result out once more, on every request of a server).

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue::Entry;

use super::addr::op_len;
use crate::io::op::{BuildEntry, Mode, Run};
use crate::io::{ops, IoBuf, IoBufMut};

/// Builds a `recv` on `fd` into the whole buffer, from its first byte.
pub(crate) struct RecvInto {
    fd: RawFd,
}

impl<B: IoBufMut> BuildEntry<B> for RecvInto {
    #[inline]
    fn build(self, b: &mut B) -> Entry {
        ops::recv_entry(self.fd, b.stable_mut_ptr(), op_len(b.bytes_total()), 0)
    }
}

/// Builds a `send` on `fd` of the buffer's initialised bytes from `at` on, never
/// raising `SIGPIPE`.
pub(crate) struct SendFrom {
    fd: RawFd,
    at: usize,
}

impl<B: IoBuf> BuildEntry<B> for SendFrom {
    #[inline]
    fn build(self, b: &mut B) -> Entry {
        let init = b.bytes_init();
        // SAFETY: the offset is clamped to `bytes_init()`, so the pointer stays inside,
        // or one past, the buffer.
        let buf = unsafe { b.stable_ptr().add(self.at.min(init)) };
        let len = op_len(init.saturating_sub(self.at));
        ops::send_entry(self.fd, buf, len, libc::MSG_NOSIGNAL)
    }
}

/// One `recv` on `fd` into `buf` (from its first byte, up to `bytes_total()`); marks the
/// bytes received initialised. The byte count and the buffer.
#[inline]
pub(crate) fn recv<B: IoBufMut>(fd: RawFd, buf: B) -> Recv<B> {
    Recv {
        run: Run::new(buf, RecvInto { fd }, Mode::Plain),
    }
}

/// The future of [`recv`].
pub(crate) struct Recv<B: IoBufMut> {
    run: Run<B, RecvInto>,
}

impl<B: IoBufMut> Future for Recv<B> {
    type Output = (io::Result<usize>, B);

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (r, mut buf) = std::task::ready!(Pin::new(&mut self.run).poll(cx));
        if let Ok(n) = r {
            // SAFETY: the kernel wrote `n` bytes at the buffer's start.
            unsafe { buf.set_init(n as usize) };
        }
        Poll::Ready((r.map(|n| n as usize), buf))
    }
}

/// One `send` on `fd` of the buffer's initialised bytes from `at` on (callers send what
/// is left: `at <= bytes_init()`), never raising `SIGPIPE`. The byte count and the
/// buffer.
#[inline]
pub(crate) fn send_from<B: IoBuf>(fd: RawFd, buf: B, at: usize) -> SendOnce<B> {
    SendOnce {
        run: Run::new(buf, SendFrom { fd, at }, Mode::Plain),
    }
}

/// The future of [`send_from`].
pub(crate) struct SendOnce<B: IoBuf> {
    run: Run<B, SendFrom>,
}

impl<B: IoBuf> Future for SendOnce<B> {
    type Output = (io::Result<usize>, B);

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (r, buf) = std::task::ready!(Pin::new(&mut self.run).poll(cx));
        Poll::Ready((r.map(|n| n as usize), buf))
    }
}

/// Sends all of the buffer's `bytes_init()` bytes on `fd`, as many `send`s as it takes.
/// `ErrorKind::WriteZero` if the kernel accepts nothing.
#[inline]
pub(crate) fn send_all<B: IoBuf>(fd: RawFd, buf: B) -> SendAll<B> {
    let total = buf.bytes_init();
    SendAll {
        fd,
        total,
        sent: 0,
        state: if total == 0 {
            SendAllState::Empty(Some(buf))
        } else {
            SendAllState::Sending(Run::new(buf, SendFrom { fd, at: 0 }, Mode::Plain))
        },
    }
}

/// The future of [`send_all`].
pub(crate) struct SendAll<B: IoBuf> {
    fd: RawFd,
    total: usize,
    sent: usize,
    state: SendAllState<B>,
}

enum SendAllState<B: IoBuf> {
    /// Nothing to send: the buffer goes back at once.
    Empty(Option<B>),
    /// The `send` of what is left.
    Sending(Run<B, SendFrom>),
}

impl<B: IoBuf> Future for SendAll<B> {
    type Output = (io::Result<()>, B);

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let run = match &mut this.state {
                SendAllState::Sending(run) => run,
                SendAllState::Empty(buf) => {
                    let buf = buf.take().expect("a SendAll polled after it completed");
                    return Poll::Ready((Ok(()), buf));
                }
            };
            let (r, buf) = std::task::ready!(Pin::new(run).poll(cx));
            match r {
                // Finished: the spent `Run` stays (polling it again panics); replacing it
                // would cost a drop call per write for nothing.
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "the socket took no byte");
                    return Poll::Ready((Err(e), buf));
                }
                Ok(n) => this.sent += n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready((Err(e), buf)),
            }
            if this.sent >= this.total {
                return Poll::Ready((Ok(()), buf));
            }
            // Send the rest: submitted by the next round of the loop.
            let at = this.sent;
            this.state =
                SendAllState::Sending(Run::new(buf, SendFrom { fd: this.fd, at }, Mode::Plain));
        }
    }
}
