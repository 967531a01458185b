//! I/O on io_uring: each worker owns one ring (its [`driver`]), which every operation
//! started on that worker goes through.
//!
//! The public part: the buffer traits ([`IoBuf`], [`IoBufMut`]) of the ownership-passing
//! API, and [`nop`]. Sockets are in [`crate::net`], files in [`crate::fs`], timers in
//! [`crate::time`].

mod buf;
pub(crate) mod driver;
pub(crate) mod op;
pub(crate) mod op_table;

pub use buf::{IoBuf, IoBufMut};

/// A no-op through the current worker's ring: completes once the kernel has seen it.
/// Measures the driver's own cost. Must run inside a task on a runtime worker.
pub async fn nop() -> std::io::Result<()> {
    let (r, ()) = op::Op::submit((), |_| io_uring::opcode::Nop::new().build())?.await;
    result(r.res).map(|_| ())
}

/// A kernel result as an `io::Result`: >= 0 is the value, < 0 a negative errno.
pub(crate) fn result(res: i32) -> std::io::Result<u32> {
    if res < 0 {
        Err(std::io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}
