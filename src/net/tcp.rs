//! TCP: [`TcpListener`] and [`TcpStream`].

use crate::io::fd::IoFd;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use super::addr::{self, op_len, SockAddr};
use crate::io::op::{self, MultiOp, Op};
use crate::io::vectored::{self, Via};
use crate::io::{IoBuf, IoBufMut, RawOp};
use crate::net::RecvStream;

/// Default listen backlog of [`TcpListener::bind`].
pub const DEFAULT_BACKLOG: u32 = 1024;

/// A listening TCP socket. Accepting goes through the worker's ring; `bind` itself is
/// synchronous (it never waits).
#[derive(Debug)]
pub struct TcpListener {
    fd: IoFd,
}

impl TcpListener {
    /// Binds a listener to `addr` with `SO_REUSEADDR` on and a backlog of
    /// [`DEFAULT_BACKLOG`]. With several addresses, the first that binds is used. Errors:
    /// those of `socket`, `bind` (`EADDRINUSE`, `EADDRNOTAVAIL`, ...) and `listen`;
    /// `InvalidInput` for an address that does not parse or resolves to nothing.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_with(addr, false, DEFAULT_BACKLOG)
    }

    /// Like [`bind`](Self::bind), with `SO_REUSEPORT` when `reuseport` (several
    /// listeners, e.g. one per worker, share the port and the kernel spreads the
    /// connections) and the given listen `backlog`.
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        reuseport: bool,
        backlog: u32,
    ) -> io::Result<TcpListener> {
        addr::each_addr(addr, |a| {
            let fd = addr::tcp_listener(a, reuseport, backlog)?;
            Ok(TcpListener { fd: fd.into() })
        })
    }

    /// Takes over a listener made by the standard library (already listening).
    pub fn from_std(listener: std::net::TcpListener) -> TcpListener {
        TcpListener {
            fd: OwnedFd::from(listener).into(),
        }
    }

    /// The address the listener is bound to (its port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        addr::local_addr(self.fd.as_raw_fd())
    }

    /// Waits for one connection: the connected stream and the peer's address.
    /// Dropping the future before it completes cancels the accept (a connection the
    /// kernel accepted meanwhile is closed, never leaked).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let fd = self.fd.as_raw_fd();
        let (r, sa) = op::run_fd(SockAddr::empty(), |sa| {
            RawOp::Accept {
                fd,
                addr: sa.as_mut_ptr(),
                addrlen: &mut sa.len,
            }
            .entry()
        })
        .await;
        let stream = TcpStream::from_new_fd(r?);
        Ok((stream, sa.to_std()?))
    }

    /// The stream of incoming connections, through one multishot accept (one
    /// submission for any number of connections). Dropping it stops accepting.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            listener: self,
            op: None,
            stopping: false,
            done: false,
        }
    }
}

/// Connections accepted by a multishot accept on a [`TcpListener`] (see
/// [`TcpListener::incoming`]).
pub struct Incoming<'a> {
    listener: &'a TcpListener,
    op: Option<MultiOp<()>>,
    stopping: bool,
    done: bool,
}

impl Incoming<'_> {
    /// The next connection; an `Err` for a failed accept (the stream goes on: the
    /// multishot accept is re-armed when the kernel ended it); `None` once
    /// [`stop`](Self::stop) took effect or the runtime is shutting down.
    pub async fn next(&mut self) -> Option<io::Result<TcpStream>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next connection (see [`next`](Self::next)).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<TcpStream>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.op.is_none() {
            if self.stopping {
                self.done = true;
                return Poll::Ready(None);
            }
            let fd = self.listener.fd.as_raw_fd();
            match MultiOp::submit_fd((), |_| RawOp::AcceptMulti { fd }.entry()) {
                Ok(op) => self.op = Some(op),
                Err((e, ())) if e.raw_os_error() == Some(libc::ESHUTDOWN) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Err((e, ())) => return Poll::Ready(Some(Err(e))),
            }
        }
        let op = self.op.as_mut().expect("armed above");
        let r = match op.poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                self.op = None;
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(r)) => r,
        };
        if !io_uring::cqueue::more(r.flags) {
            // The kernel ended this multishot accept; the next call re-arms one.
            self.op = None;
        }
        if r.res >= 0 {
            return Poll::Ready(Some(Ok(TcpStream::from_new_fd(r.res as u32))));
        }
        if r.res == -libc::ECANCELED {
            // Stopped, or cancelled by shutdown.
            self.op = None;
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Err(io::Error::from_raw_os_error(-r.res))))
    }

    /// Asks the kernel to stop accepting. Connections it accepted before that still
    /// come out of [`next`](Self::next), which then returns `None`.
    pub fn stop(&mut self) {
        self.stopping = true;
        if let Some(op) = &self.op {
            op.cancel();
        }
    }
}

crate::io::fd::impl_fd_traits!(TcpListener, "an open, listening TCP socket");

/// A connected TCP stream. Reads and writes take the buffer by value and give it back
/// with the result: `read(buf) -> (io::Result<usize>, buf)`; the kernel owns it in
/// between. Dropping an unfinished operation's future cancels it safely.
///
/// Dropping the stream closes its socket at once (`close(2)`); [`close`](Self::close)
/// closes it through the ring.
#[derive(Debug)]
pub struct TcpStream {
    fd: IoFd,
}

impl TcpStream {
    fn from_new_fd(fd: u32) -> TcpStream {
        // SAFETY: the kernel just created this descriptor for us (accept or socket).
        TcpStream {
            fd: unsafe { IoFd::from_raw_fd(fd as RawFd) },
        }
    }

    /// Connects to `addr` (a socket made through the ring, then connected through it).
    /// With several addresses each is tried in turn; the last error is returned.
    /// Errors: `ECONNREFUSED`, `ENETUNREACH`, `ETIMEDOUT`, ...; `InvalidInput` for an
    /// address that does not parse.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for a in addr::resolve(addr)? {
            match TcpStream::connect_addr(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("resolve yields at least one address"))
    }

    async fn connect_addr(a: SocketAddr) -> io::Result<TcpStream> {
        let domain = addr::domain(&a);
        let (fd, ()) = op::run_fd((), |_| {
            RawOp::Socket {
                domain,
                socket_type: libc::SOCK_STREAM,
                protocol: 0,
            }
            .entry()
        })
        .await;
        let stream = TcpStream::from_new_fd(fd?);
        let fd = stream.fd.as_raw_fd();
        let (r, _sa) = op::run(SockAddr::from_std(&a), |sa| {
            RawOp::Connect {
                fd,
                addr: sa.as_ptr(),
                addrlen: sa.len,
            }
            .entry()
        })
        .await;
        r?;
        Ok(stream)
    }

    /// Takes over a connected stream made by the standard library.
    pub fn from_std(stream: std::net::TcpStream) -> TcpStream {
        TcpStream {
            fd: OwnedFd::from(stream).into(),
        }
    }

    /// Receives into `buf` (up to `bytes_total()` bytes, from its first byte): how many
    /// bytes arrived, 0 at end of stream, and the buffer (its first `n` bytes
    /// initialised). Errors: `ECONNRESET`, `ECANCELED` (shutdown), ...
    #[inline]
    pub fn read<B: IoBufMut>(&self, buf: B) -> impl Future<Output = (io::Result<usize>, B)> + '_ {
        super::socket_io::recv(self.fd.as_raw_fd(), buf)
    }

    /// The bytes arriving on this stream, chunk by chunk, through one multishot receive
    /// into the buffers of `ring` (a [`BufRing`](crate::io::BufRing) of this worker):
    /// no submission per chunk and no failed attempt when nothing waits. Order, end of
    /// stream, errors, running out of buffers, [`stop`](RecvStream::stop) and drop are
    /// as [`RecvStream`] promises. Nothing is submitted before the first `next`. Other
    /// reads on this stream while a `RecvStream` lives would race it for the bytes.
    pub fn recv_multishot<'a>(&'a self, ring: &'a crate::io::BufRing) -> RecvStream<'a> {
        RecvStream::new(self.fd.as_raw_fd(), ring)
    }

    /// Like [`read`](Self::read), ended by the kernel (an io_uring linked timeout) when
    /// `deadline` passes first: then `ErrorKind::TimedOut` and no byte was received.
    pub async fn recv_with_deadline<B: IoBufMut>(
        &self,
        buf: B,
        deadline: Duration,
    ) -> (io::Result<usize>, B) {
        let fd = self.fd.as_raw_fd();
        let ns = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        let (r, mut buf) = op::run_with_deadline(buf, ns, |b| {
            RawOp::Recv {
                fd,
                buf: b.stable_mut_ptr(),
                len: op_len(b.bytes_total()),
                flags: 0,
            }
            .entry()
        })
        .await;
        let r = match r {
            Ok(n) => {
                // SAFETY: the kernel wrote `n` bytes at the buffer's start.
                unsafe { buf.set_init(n as usize) };
                Ok(n as usize)
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the receive deadline passed (or the runtime is shutting down)",
            )),
            Err(e) => Err(e),
        };
        (r, buf)
    }

    /// Fills `buf` completely (`bytes_total()` bytes), reading as often as needed.
    /// `ErrorKind::UnexpectedEof` when the stream ends first (the bytes read so far are
    /// initialised in the buffer).
    pub async fn read_exact<B: IoBufMut>(&self, mut buf: B) -> (io::Result<()>, B) {
        let fd = self.fd.as_raw_fd();
        let total = buf.bytes_total();
        let mut filled = 0;
        while filled < total {
            let (r, b) = op::run(buf, |b| {
                RawOp::Recv {
                    fd,
                    // SAFETY: filled < bytes_total, inside the buffer.
                    buf: unsafe { b.stable_mut_ptr().add(filled) },
                    len: op_len(total - filled),
                    flags: 0,
                }
                .entry()
            })
            .await;
            buf = b;
            match r {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended");
                    return (Err(e), buf);
                }
                Ok(n) => {
                    filled += n as usize;
                    // SAFETY: the kernel wrote every byte up to `filled`.
                    unsafe { buf.set_init(filled) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Receives into `bufs` in order (one `recvmsg`), each from its first byte up to its
    /// `bytes_total()`: how many bytes arrived in all (0 at end of stream) and the
    /// buffers, each with what it received marked initialised. 1 to 1024 buffers, else
    /// `ErrorKind::InvalidInput`.
    pub async fn read_vectored<B: IoBufMut>(&self, bufs: Vec<B>) -> (io::Result<usize>, Vec<B>) {
        vectored::read(self.fd.as_raw_fd(), bufs, Via::Socket).await
    }

    /// Sends the initialised bytes of `bufs` in order (one `sendmsg`), or a part of them:
    /// how many were sent. Never raises `SIGPIPE`. 1 to 1024 buffers, else
    /// `ErrorKind::InvalidInput`.
    pub async fn write_vectored<B: IoBuf>(&self, bufs: Vec<B>) -> (io::Result<usize>, Vec<B>) {
        vectored::write(self.fd.as_raw_fd(), bufs, Via::Socket).await
    }

    /// Sends the buffer's `bytes_init()` bytes, or a part of them: how many were sent.
    /// Never raises `SIGPIPE`: a closed peer gives `EPIPE` (or `ECONNRESET`).
    #[inline]
    pub fn write<B: IoBuf>(&self, buf: B) -> impl Future<Output = (io::Result<usize>, B)> + '_ {
        super::socket_io::send_from(self.fd.as_raw_fd(), buf, 0)
    }

    /// Sends all of the buffer's `bytes_init()` bytes, writing as often as needed.
    /// `ErrorKind::WriteZero` if the kernel accepts nothing.
    #[inline]
    pub fn write_all<B: IoBuf>(&self, buf: B) -> impl Future<Output = (io::Result<()>, B)> + '_ {
        super::socket_io::send_all(self.fd.as_raw_fd(), buf)
    }

    /// Waits until the socket is readable (data, end of stream or an error), without
    /// reading (an io_uring `POLL_ADD`).
    pub async fn readable(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        op::run((), |_| RawOp::PollAdd { fd, events }.entry())
            .await
            .0
            .map(|_| ())
    }

    /// Shuts down the read half, the write half or both (`shutdown(2)` through the
    /// ring). Errors: `ENOTCONN`.
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        op::run((), |_| RawOp::Shutdown { fd, how }.entry())
            .await
            .0
            .map(|_| ())
    }

    /// Closes the socket through the ring and reports the result.
    pub async fn close(self) -> io::Result<()> {
        close_fd(self.fd).await
    }

    /// Turns Nagle's algorithm off (`TCP_NODELAY` on) or back on.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        addr::set_int_opt(
            self.fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            nodelay as i32,
        )
    }

    /// Whether `TCP_NODELAY` is on.
    pub fn nodelay(&self) -> io::Result<bool> {
        addr::int_opt(self.fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY).map(|v| v != 0)
    }

    /// The peer's address. `ENOTCONN` once it is gone.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        addr::peer_addr(self.fd.as_raw_fd())
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        addr::local_addr(self.fd.as_raw_fd())
    }
}

/// Closes `fd` through the ring; off a worker (or during shutdown) with `close(2)`.
pub(crate) async fn close_fd(fd: IoFd) -> io::Result<()> {
    let raw = fd.into_raw_fd();
    match Op::submit((), |_| RawOp::Close { fd: raw }.entry()) {
        Ok(op) => {
            let (r, ()) = op.await;
            crate::io::result(r.res).map(|_| ())
        }
        Err(_) => {
            // SAFETY: we own `raw` (taken out of the OwnedFd above) and close it once.
            addr::cvt(unsafe { libc::close(raw) })
        }
    }
}

crate::io::fd::impl_fd_traits!(TcpStream, "an open, connected TCP socket");
