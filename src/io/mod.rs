//! I/O on io_uring: each worker owns one ring (its driver), which every operation
//! started on that worker goes through, and one pool of registered buffers
//! ([`buffers`]); provided-buffer rings ([`BufRing`]) feed multishot receives
//! ([`TcpStream::recv_multishot`](crate::net::TcpStream::recv_multishot)).
//!
//! The public part: the buffer traits ([`IoBuf`], [`IoBufMut`]) of the ownership-passing
//! API, [`nop`], and callback-style submission of [`RawOp`]s
//! ([`RuntimeContext::submit_io`](crate::RuntimeContext::submit_io) on a worker,
//! [`Handle::submit_io`](crate::Handle::submit_io) from any thread), which the C API uses.
//! Sockets are in [`crate::net`], files in [`crate::fs`], timers in [`crate::time`].

mod buf;
pub(crate) mod buf_ring;
pub mod buffers;
pub(crate) mod driver;
pub(crate) mod fd;
mod mapping;
pub(crate) mod op;
pub(crate) mod op_table;
pub(crate) mod ops;
mod submit;
pub(crate) mod vectored;

pub use buf::{AlignedBuf, IoBuf, IoBufMut};
pub use buf_ring::{BufRing, RecvBuf};
pub use driver::{CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};
pub use op_table::IoCallback;
pub use ops::RawOp;
pub use submit::SubmitOptions;

/// A no-op through the current worker's ring: completes once the kernel has seen it.
/// Measures the driver's own cost. Must run inside a task on a runtime worker.
pub async fn nop() -> std::io::Result<()> {
    op::run((), |_| RawOp::Nop.entry()).await.0.map(|_| ())
}

/// A kernel result as an `io::Result`: >= 0 is the value, < 0 a negative errno.
pub(crate) fn result(res: i32) -> std::io::Result<u32> {
    if res < 0 {
        Err(std::io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}
