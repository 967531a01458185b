//! Files on io_uring: [`File`] and [`OpenOptions`] (with `O_DIRECT`).
//!
//! Reads and writes are positional (`read_at(buf, offset)`), take the buffer by value
//! and give it back with the result, as in [`crate::net`]. For `O_DIRECT`
//! ([`OpenOptions::direct`]) use buffers, lengths and offsets aligned to the device's
//! block size, e.g. [`AlignedBuf`](crate::io::AlignedBuf) of 4096-byte alignment.
//!
//! Every future here must run inside a task on a runtime worker (the operation goes
//! through that worker's ring); awaited elsewhere it fails with an error saying so.
//! Dropping a future cancels its operation safely (the buffer stays with the driver
//! until the kernel is done). During shutdown operations fail with `ECANCELED` or
//! `ESHUTDOWN`.
//!
//! Reads and writes on registered buffers: [`File::read_fixed_at`] /
//! [`File::write_fixed_at`] take a pool buffer (`RuntimeContext::alloc_buf`) and use
//! `IORING_OP_READ_FIXED` / `WRITE_FIXED` when it is registered with the current worker's
//! ring (else a plain read or write).

mod file;
mod open_options;

pub use file::{File, Metadata};
pub use open_options::OpenOptions;
