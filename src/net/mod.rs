//! Sockets on io_uring: [`TcpListener`], [`TcpStream`] and [`UdpSocket`].
//!
//! Completion I/O lends buffers to the kernel, so every operation takes its buffer by
//! value and gives it back with the result: `read(buf) -> (io::Result<usize>, buf)`.
//! Buffers are [`IoBuf`](crate::io::IoBuf) (written from) and
//! [`IoBufMut`](crate::io::IoBufMut) (read into): `Vec<u8>`, `Box<[u8]>`, static slices,
//! [`AlignedBuf`](crate::io::AlignedBuf). A read fills the buffer from its first byte
//! (up to its capacity); a write sends its initialised bytes.
//!
//! Every future here must run inside a task on a runtime worker (the operation goes
//! through that worker's ring); awaited elsewhere it fails with an error saying so.
//! Dropping a future before it completes cancels the operation: the kernel is told to
//! stop, and the buffer stays with the driver until the kernel is done with it, so it is
//! never written after the drop is observed by anyone. Once the runtime is shutting
//! down, operations in flight end with `ECANCELED` and new ones fail with `ESHUTDOWN`.
//!
//! Binding, socket options and addresses are synchronous system calls (they never wait).
//! Names (`"localhost:80"`) are resolved by the system resolver, synchronously: pass a
//! `SocketAddr` or a literal `"ip:port"` on a worker to avoid blocking it.

mod addr;
mod recv_multi;
mod socket_io;
mod tcp;
mod udp;

pub use recv_multi::RecvStream;
pub use tcp::{Incoming, TcpListener, TcpStream, DEFAULT_BACKLOG};
pub use udp::UdpSocket;

pub(crate) use addr::{bound_socket, from_raw as addr_from_raw, tcp_listener};
pub(crate) use tcp::close_fd;
