//! I/O on io_uring: each worker owns one ring (its `driver`) and one pool of registered
//! buffers ([`buffers`]); provided-buffer rings (`buf_ring`) feed multishot receives.

pub(crate) mod buf_ring;
pub mod buffers;
pub(crate) mod driver;
