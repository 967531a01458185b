//! Synchronous socket set-up for C servers: a listening TCP socket or a bound UDP socket
//! in one call, made exactly as the Rust `TcpListener::bind_with` and
//! `UdpSocket::bind_with` make theirs. These calls never wait, so they may run anywhere:
//! on a host thread before the runtime starts, or inside a worker callback.

use std::ffi::c_int;
use std::net::SocketAddr;

use super::error::VELOQ_EPANIC;
use crate::runtime::OsError;

/// `flags` bit of `veloq_tcp_listen` and `veloq_udp_bind`: set `SO_REUSEPORT` so that
/// several sockets, e.g. one per worker, share the address and the kernel spreads
/// connections (TCP) or datagrams (UDP, by source) over them. Only sockets of the same
/// user can share a port this way.
pub const VELOQ_BIND_REUSEPORT: u32 = 1;

/// Every flag bit the bind helpers know.
const KNOWN_BIND_FLAGS: u32 = VELOQ_BIND_REUSEPORT;

/// Checks the arguments every bind helper shares and reads the address.
fn checked_addr(addr: *const libc::sockaddr, addrlen: u32, flags: u32) -> Result<SocketAddr, i32> {
    if addr.is_null() || flags & !KNOWN_BIND_FLAGS != 0 {
        return Err(-libc::EINVAL);
    }
    // SAFETY: the caller promises `addrlen` readable bytes at a non-null `addr`;
    // `from_raw` refuses lengths over a `sockaddr_storage` before reading.
    unsafe { crate::net::addr_from_raw(addr, addrlen as usize) }.map_err(|e| -OsError::errno_of(&e))
}

/// The descriptor as the C return value, or the error's negative errno.
fn fd_or_errno(r: std::io::Result<std::os::fd::OwnedFd>) -> c_int {
    match r {
        Ok(fd) => std::os::fd::IntoRawFd::into_raw_fd(fd),
        Err(e) => -OsError::errno_of(&e),
    }
}

/// Creates a TCP socket listening on `addr` (IPv4 or IPv6; `addrlen` readable bytes at
/// `addr`, which stays the caller's): `socket` (close-on-exec),
/// `SO_REUSEADDR`, `SO_REUSEPORT` when `flags` has `VELOQ_BIND_REUSEPORT`, `bind`, then
/// `listen(backlog)` (the kernel caps `backlog` at `net.core.somaxconn`). Port 0 binds a
/// free port: read it with `getsockname`. Returns the new descriptor (>= 0), owned by the
/// caller (close it with `close` or `veloq_close`; use it with `veloq_accept`), or a
/// negative errno, and then no descriptor is left open: -EINVAL (NULL `addr`, `addrlen`
/// shorter than the family's address or over 128, `backlog` < 0, an unknown `flags`
/// bit); -EAFNOSUPPORT (a family other than AF_INET / AF_INET6); the kernel's errors of
/// `socket`, `setsockopt`, `bind` (-EADDRINUSE, -EADDRNOTAVAIL, -EACCES) and `listen`.
/// Synchronous (it never waits); callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_tcp_listen(
    addr: *const libc::sockaddr,
    addrlen: u32,
    backlog: c_int,
    flags: u32,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        let a = match checked_addr(addr, addrlen, flags) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let Ok(backlog) = u32::try_from(backlog) else {
            return -libc::EINVAL;
        };
        let reuseport = flags & VELOQ_BIND_REUSEPORT != 0;
        fd_or_errno(crate::net::tcp_listener(&a, reuseport, backlog))
    })
}

/// Creates a UDP socket bound to `addr` (IPv4 or IPv6; `addrlen` readable bytes at `addr`,
/// which stays the caller's): `socket` (close-on-exec), `SO_REUSEPORT` when `flags` has
/// `VELOQ_BIND_REUSEPORT`, then `bind`.
/// Port 0 binds a free port. Returns the new descriptor (>= 0), owned by the caller (use
/// it with `veloq_recvmsg` / `veloq_sendmsg`), or a negative errno, and then no
/// descriptor is left open: -EINVAL (NULL `addr`, `addrlen` shorter than the family's
/// address or over 128, an unknown `flags` bit); -EAFNOSUPPORT; the kernel's errors of
/// `socket`, `setsockopt` and `bind` (-EADDRINUSE, -EADDRNOTAVAIL, -EACCES).
/// Synchronous (it never waits); callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_udp_bind(addr: *const libc::sockaddr, addrlen: u32, flags: u32) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        let a = match checked_addr(addr, addrlen, flags) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let reuseport = flags & VELOQ_BIND_REUSEPORT != 0;
        fd_or_errno(crate::net::bound_socket(
            &a,
            libc::SOCK_DGRAM,
            false,
            reuseport,
        ))
    })
}
