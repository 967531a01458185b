//! Vectored reads and writes: one operation over several owned buffers.
//!
//! The buffers travel with their iovec array (and, for sockets, the message header) in
//! one heap allocation that the operation owns until the kernel's completion, so a
//! dropped future never leaves the kernel pointing at freed memory.

use std::io;
use std::os::fd::RawFd;

use super::op;
use super::{IoBuf, IoBufMut, RawOp};

/// Most iovecs one operation takes (`UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// What an operation owns: the buffers, their iovecs and a message header pointing at
/// them. Boxed so the iovec and header addresses do not move while the kernel uses them.
struct Vectored<B> {
    bufs: Vec<B>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iovecs` and `msg` point only into this value's own
// buffers and iovec array; moving the whole value to another thread moves what they
// point at with it (heap memory that does not move).
unsafe impl<B: Send> Send for Vectored<B> {}

impl<B> Vectored<B> {
    fn new(bufs: Vec<B>, iovecs: Vec<libc::iovec>) -> Box<Self> {
        // SAFETY: an all-zero msghdr is a valid empty header (null pointers, zero lengths).
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut v = Box::new(Vectored { bufs, iovecs, msg });
        v.msg.msg_iov = v.iovecs.as_mut_ptr();
        v.msg.msg_iovlen = v.iovecs.len() as _;
        v
    }
}

fn check_count(n: usize) -> io::Result<()> {
    if n == 0 || n > MAX_IOVECS {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a vectored operation takes 1 to 1024 buffers",
        ))
    } else {
        Ok(())
    }
}

/// How the bytes travel: a positioned `preadv`/`pwritev`, or `recvmsg`/`sendmsg` on a
/// socket (which lets a send say `MSG_NOSIGNAL`).
#[derive(Clone, Copy)]
pub(crate) enum Via {
    /// At this file offset, submitted as the mode says (see `fs::File`).
    File(u64, op::Mode),
    /// On a connected socket.
    Socket,
}

impl Via {
    /// How the operation is submitted: a socket's with the worker's next batch.
    fn mode(self) -> op::Mode {
        match self {
            Via::File(_, mode) => mode,
            Via::Socket => op::Mode::Plain,
        }
    }
}

/// Reads into `bufs` in order, each from its first byte up to `bytes_total()`; marks the
/// bytes received initialised. The byte count and the buffers.
pub(crate) async fn read<B: IoBufMut>(
    fd: RawFd,
    mut bufs: Vec<B>,
    via: Via,
) -> (io::Result<usize>, Vec<B>) {
    if let Err(e) = check_count(bufs.len()) {
        return (Err(e), bufs);
    }
    let iovecs = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.stable_mut_ptr().cast(),
            iov_len: b.bytes_total(),
        })
        .collect();
    let (r, mut v) = op::run_as(via.mode(), Vectored::new(bufs, iovecs), |v| match via {
        Via::File(offset, _) => RawOp::Readv {
            fd,
            iov: v.iovecs.as_ptr(),
            iovcnt: v.iovecs.len() as u32,
            offset,
        }
        .entry(),
        Via::Socket => RawOp::RecvMsg {
            fd,
            msg: &mut v.msg,
            flags: 0,
        }
        .entry(),
    })
    .await;
    if let Ok(n) = r {
        let mut left = n as usize;
        for b in v.bufs.iter_mut() {
            let here = left.min(b.bytes_total());
            if here == 0 {
                break;
            }
            // SAFETY: the kernel filled the iovecs in order, this one with `here` bytes
            // from its start.
            unsafe { b.set_init(here) };
            left -= here;
        }
    }
    (r.map(|n| n as usize), v.bufs)
}

/// Writes the initialised bytes of `bufs` in order, or a part of them: how many were
/// written. A socket send never raises `SIGPIPE`.
pub(crate) async fn write<B: IoBuf>(
    fd: RawFd,
    bufs: Vec<B>,
    via: Via,
) -> (io::Result<usize>, Vec<B>) {
    if let Err(e) = check_count(bufs.len()) {
        return (Err(e), bufs);
    }
    let iovecs = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.stable_ptr() as *mut libc::c_void,
            iov_len: b.bytes_init(),
        })
        .collect();
    let (r, v) = op::run_as(via.mode(), Vectored::new(bufs, iovecs), |v| match via {
        Via::File(offset, _) => RawOp::Writev {
            fd,
            iov: v.iovecs.as_ptr(),
            iovcnt: v.iovecs.len() as u32,
            offset,
        }
        .entry(),
        Via::Socket => RawOp::SendMsg {
            fd,
            msg: &v.msg,
            flags: libc::MSG_NOSIGNAL as u32,
        }
        .entry(),
    })
    .await;
    (r.map(|n| n as usize), v.bufs)
}
