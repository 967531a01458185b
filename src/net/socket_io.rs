//! The recv and send every socket type shares.

use std::io;
use std::os::fd::RawFd;

use super::addr::op_len;
use crate::io::op;
use crate::io::{IoBuf, IoBufMut, RawOp};

/// One `recv` on `fd` into `buf` (from its first byte, up to `bytes_total()`); marks the
/// bytes received initialised. The byte count and the buffer.
pub(crate) async fn recv<B: IoBufMut>(fd: RawFd, buf: B) -> (io::Result<usize>, B) {
    let (r, mut buf) = op::run(buf, |b| {
        RawOp::Recv {
            fd,
            buf: b.stable_mut_ptr(),
            len: op_len(b.bytes_total()),
            flags: 0,
        }
        .entry()
    })
    .await;
    if let Ok(n) = r {
        // SAFETY: the kernel wrote `n` bytes at the buffer's start.
        unsafe { buf.set_init(n as usize) };
    }
    (r.map(|n| n as usize), buf)
}

/// One `send` on `fd` of the buffer's initialised bytes from `at` on, never raising
/// `SIGPIPE`. The byte count and the buffer.
pub(crate) async fn send_from<B: IoBuf>(fd: RawFd, buf: B, at: usize) -> (io::Result<usize>, B) {
    let len = op_len(buf.bytes_init().saturating_sub(at));
    let (r, buf) = op::run(buf, |b| {
        RawOp::Send {
            fd,
            // SAFETY: `at` is at most `bytes_init()` (callers send what is left), so the
            // pointer stays inside, or one past, the buffer.
            buf: unsafe { b.stable_ptr().add(at.min(b.bytes_init())) },
            len,
            flags: libc::MSG_NOSIGNAL,
        }
        .entry()
    })
    .await;
    (r.map(|n| n as usize), buf)
}
