//! UDP: [`UdpSocket`].

use crate::io::fd::IoFd;
use std::io;
use std::mem::zeroed;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};

use super::addr::{self, SockAddr};
use crate::io::op;
use crate::io::{IoBuf, IoBufMut, RawOp};

/// A UDP socket. Datagrams go through the worker's ring; buffers are passed by value
/// and given back (see the [module documentation](crate::net)).
#[derive(Debug)]
pub struct UdpSocket {
    fd: IoFd,
}

/// What a `sendmsg`/`recvmsg` hands the kernel: the header, its one iovec and the
/// address, boxed together so their addresses stay put while the buffer's owner moves.
struct Msg {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
}

// SAFETY: the raw pointers in `hdr` and `iov` point into this same box or into the
// buffer travelling with it; they are only followed by the kernel on the worker that
// owns the operation.
unsafe impl Send for Msg {}

impl Msg {
    /// A header over `len` bytes at `ptr`, with room for (or holding) an address.
    fn new(ptr: *mut u8, len: usize, addr: Option<&SocketAddr>) -> Box<Msg> {
        let mut m = Box::new(Msg {
            // SAFETY: msghdr is plain data; zeroes are a valid empty header.
            hdr: unsafe { zeroed() },
            iov: libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            },
            addr: match addr {
                Some(a) => *SockAddr::from_std(a),
                None => *SockAddr::empty(),
            },
        });
        m.hdr.msg_iov = &mut m.iov;
        m.hdr.msg_iovlen = 1;
        m.hdr.msg_name = m.addr.as_mut_ptr().cast();
        m.hdr.msg_namelen = m.addr.len;
        m
    }
}

impl UdpSocket {
    /// Binds a socket to `addr` (synchronous). Errors: those of `socket` and `bind`;
    /// `InvalidInput` for an address that does not parse.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        UdpSocket::bind_with(addr, false)
    }

    /// Like [`bind`](Self::bind), with `SO_REUSEPORT` when `reuseport`: several sockets
    /// of the same user (e.g. one per worker) share the port and the kernel spreads the
    /// datagrams over them by source address. (No `SO_REUSEADDR`: for UDP it would let
    /// any user's socket bind the port too.)
    pub fn bind_with(addr: impl ToSocketAddrs, reuseport: bool) -> io::Result<UdpSocket> {
        addr::each_addr(addr, |a| {
            let fd = addr::bound_socket(a, libc::SOCK_DGRAM, false, reuseport)?;
            Ok(UdpSocket { fd: fd.into() })
        })
    }

    /// Takes over a socket made by the standard library.
    pub fn from_std(socket: std::net::UdpSocket) -> UdpSocket {
        UdpSocket {
            fd: OwnedFd::from(socket).into(),
        }
    }

    /// Sets the default peer: [`send`](Self::send) goes there and only its datagrams are
    /// received (`connect(2)` through the ring).
    pub async fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<()> {
        let mut last = None;
        for a in addr::resolve(addr)? {
            let fd = self.fd.as_raw_fd();
            let (r, _sa) = op::run(SockAddr::from_std(&a), |sa| {
                RawOp::Connect {
                    fd,
                    addr: sa.as_ptr(),
                    addrlen: sa.len,
                }
                .entry()
            })
            .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("resolve yields at least one address"))
    }

    /// Sends the buffer's initialised bytes as one datagram to `target`: how many bytes
    /// were sent. Errors: `EMSGSIZE` (too large), `ENETUNREACH`, ...
    pub async fn send_to<B: IoBuf>(&self, buf: B, target: SocketAddr) -> (io::Result<usize>, B) {
        let fd = self.fd.as_raw_fd();
        let msg = Msg::new(buf.stable_ptr().cast_mut(), buf.bytes_init(), Some(&target));
        let (r, (buf, _msg)) = op::run((buf, msg), |(_, m)| {
            RawOp::SendMsg {
                fd,
                msg: &m.hdr,
                flags: libc::MSG_NOSIGNAL as u32,
            }
            .entry()
        })
        .await;
        (r.map(|n| n as usize), buf)
    }

    /// Receives one datagram into `buf` (from its first byte; the rest of a longer
    /// datagram is discarded): its length, the sender's address, and the buffer.
    pub async fn recv_from<B: IoBufMut>(&self, mut buf: B) -> (io::Result<(usize, SocketAddr)>, B) {
        let fd = self.fd.as_raw_fd();
        let msg = Msg::new(buf.stable_mut_ptr(), buf.bytes_total(), None);
        let (r, (mut buf, msg)) = op::run((buf, msg), |(_, m)| {
            RawOp::RecvMsg {
                fd,
                msg: &mut m.hdr,
                flags: 0,
            }
            .entry()
        })
        .await;
        let r = r.and_then(|n| {
            // SAFETY: the kernel wrote `n` bytes at the buffer's start.
            unsafe { buf.set_init(n as usize) };
            let from = addr::to_std(&msg.addr.storage, msg.hdr.msg_namelen)?;
            Ok((n as usize, from))
        });
        (r, buf)
    }

    /// Sends the buffer's initialised bytes as one datagram to the connected peer.
    /// `EDESTADDRREQ` when not connected.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        super::socket_io::send_from(self.fd.as_raw_fd(), buf, 0).await
    }

    /// Receives one datagram into `buf` (from its first byte): its length and the
    /// buffer.
    pub async fn recv<B: IoBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        super::socket_io::recv(self.fd.as_raw_fd(), buf).await
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        addr::local_addr(self.fd.as_raw_fd())
    }

    /// The connected peer's address; `ENOTCONN` when not connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        addr::peer_addr(self.fd.as_raw_fd())
    }

    /// Closes the socket through the ring and reports the result.
    pub async fn close(self) -> io::Result<()> {
        super::close_fd(self.fd).await
    }
}

crate::io::fd::impl_fd_traits!(UdpSocket, "an open UDP socket");
