//! Socket addresses between `std::net::SocketAddr` and the kernel's `sockaddr`, and the
//! few synchronous socket calls that never wait (socket, bind, listen, getsockname,
//! setsockopt).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A kernel socket address in heap memory that does not move while an operation holds
/// a pointer to it, with its length (in/out for accept and recvmsg).
pub(crate) struct SockAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl SockAddr {
    /// An empty address for the kernel to fill (accept, recvmsg).
    pub(crate) fn empty() -> Box<SockAddr> {
        Box::new(SockAddr {
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            storage: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        })
    }

    /// `addr` in kernel form.
    pub(crate) fn from_std(addr: &SocketAddr) -> Box<SockAddr> {
        let mut out = SockAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                let sin = unsafe { &mut *(&mut out.storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                out.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above.
                let sin6 = unsafe { &mut *(&mut out.storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                out.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        out
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        &mut self.storage as *mut _ as *mut libc::sockaddr
    }

    /// The address the kernel wrote, as a `SocketAddr`; `InvalidData` for families other
    /// than IPv4 and IPv6.
    pub(crate) fn to_std(&self) -> io::Result<SocketAddr> {
        to_std(&self.storage, self.len)
    }
}

/// `storage` (of `len` bytes) as a `SocketAddr`.
pub(crate) fn to_std(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as i32 {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say it is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say it is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("socket address of family {family} (not IPv4 or IPv6)"),
        )),
    }
}

/// The addresses `addr` names. A `SocketAddr` (or a literal `"ip:port"`) resolves
/// without any lookup; a host name is resolved by the system resolver, synchronously.
pub(crate) fn resolve(addr: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        ));
    }
    Ok(addrs)
}

/// Tries `f` on each address in turn: the first success, or the last error.
pub(crate) fn each_addr<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(&SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in resolve(addr)? {
        match f(&a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("resolve yields at least one address"))
}

/// The address family of `addr`.
pub(crate) fn domain(addr: &SocketAddr) -> i32 {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// A new close-on-exec socket (synchronous: `socket(2)` never waits).
pub(crate) fn socket(domain: i32, socket_type: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::socket(domain, socket_type | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec socket of `socket_type` bound to `addr`: `SO_REUSEADDR` when
/// `reuseaddr`, `SO_REUSEPORT` when `reuseport` (set before binding, as they must be).
/// The one way every listener and datagram socket of the crate, Rust or C, is made.
pub(crate) fn bound_socket(
    addr: &SocketAddr,
    socket_type: i32,
    reuseaddr: bool,
    reuseport: bool,
) -> io::Result<OwnedFd> {
    let fd = socket(domain(addr), socket_type)?;
    let raw = fd.as_raw_fd();
    if reuseaddr {
        set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    if reuseport {
        set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    bind(raw, addr)?;
    Ok(fd)
}

/// A TCP listener on `addr` (`SO_REUSEADDR` always, `SO_REUSEPORT` when `reuseport`),
/// listening with `backlog` (clamped to `i32::MAX`; the kernel caps it at `somaxconn`).
pub(crate) fn tcp_listener(
    addr: &SocketAddr,
    reuseport: bool,
    backlog: u32,
) -> io::Result<OwnedFd> {
    let fd = bound_socket(addr, libc::SOCK_STREAM, true, reuseport)?;
    let backlog = backlog.min(i32::MAX as u32) as i32;
    // SAFETY: plain system call on a socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// The IPv4 or IPv6 address in the `len` bytes at `raw` (a C caller's `sockaddr`).
/// `EINVAL` when `len` is too short for the family it names or longer than any socket
/// address; `EAFNOSUPPORT` for families other than IPv4 and IPv6.
///
/// # Safety
/// `raw` points to `len` readable bytes.
pub(crate) unsafe fn from_raw(raw: *const libc::sockaddr, len: usize) -> io::Result<SocketAddr> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    if len < size_of::<libc::sa_family_t>() || len > size_of::<libc::sockaddr_storage>() {
        return Err(einval());
    }
    let mut sa = SockAddr::empty();
    // SAFETY: `raw` has `len` readable bytes (caller's promise), the storage has room for
    // them (checked above), and the two never overlap (the storage is fresh).
    unsafe {
        std::ptr::copy_nonoverlapping(raw.cast::<u8>(), sa.as_mut_ptr().cast::<u8>(), len);
    }
    sa.len = len as libc::socklen_t;
    let needed = match i32::from(sa.storage.ss_family) {
        libc::AF_INET => size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
        _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    };
    if len < needed {
        return Err(einval());
    }
    sa.to_std()
}

/// `bind(2)` (synchronous: it never waits).
pub(crate) fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let sa = SockAddr::from_std(addr);
    // SAFETY: `sa` is a valid address of `sa.len` bytes.
    cvt(unsafe { libc::bind(fd, sa.as_ptr(), sa.len) })
}

/// Sets an int-valued socket option.
pub(crate) fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    })
}

/// Reads an int-valued socket option.
pub(crate) fn int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live int and its size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(value)
}

/// `getsockname(2)`.
pub(crate) fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut sa = SockAddr::empty();
    // SAFETY: `sa` has room for any address; the kernel writes at most `sa.len` bytes.
    cvt(unsafe { libc::getsockname(fd, sa.as_mut_ptr(), &mut sa.len) })?;
    sa.to_std()
}

/// `getpeername(2)`.
pub(crate) fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let mut sa = SockAddr::empty();
    // SAFETY: as for local_addr.
    cvt(unsafe { libc::getpeername(fd, sa.as_mut_ptr(), &mut sa.len) })?;
    sa.to_std()
}

/// A libc return value: -1 is the thread's errno.
pub(crate) fn cvt(r: i32) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A length for a kernel call, clamped to what one operation can take.
#[inline]
pub(crate) fn op_len(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}
