//! Every operation the driver knows, as plain data ([`RawOp`]), and the one place where
//! each becomes an io_uring submission entry. The Rust API (net, fs, time), the C
//! worker-side calls and host-side `veloq_submit` all go through here.

use io_uring::{opcode, squeue::Entry, types};

/// One I/O operation, described by file descriptors, raw pointers and sizes. Pointers
/// are the submitter's memory and must stay valid until the operation's final
/// completion (the callers enforce that: Rust futures own their memory, C callers
/// promise it).
// The fields are the system call's arguments, named as in each variant's first line.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawOp {
    /// Does nothing; completes with 0.
    Nop,
    /// `pread(fd, buf, len, offset)`; `offset == u64::MAX` reads at the file position.
    Read {
        fd: i32,
        buf: *mut u8,
        len: u32,
        offset: u64,
    },
    /// `pwrite(fd, buf, len, offset)`; `offset == u64::MAX` writes at the file position.
    Write {
        fd: i32,
        buf: *const u8,
        len: u32,
        offset: u64,
    },
    /// `preadv(fd, iov, iovcnt, offset)`.
    Readv {
        fd: i32,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
    },
    /// `pwritev(fd, iov, iovcnt, offset)`.
    Writev {
        fd: i32,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
    },
    /// A read into registered buffer `buf_index` (`buf` lies inside it).
    ReadFixed {
        fd: i32,
        buf: *mut u8,
        len: u32,
        offset: u64,
        buf_index: u16,
    },
    /// A write from registered buffer `buf_index`.
    WriteFixed {
        fd: i32,
        buf: *const u8,
        len: u32,
        offset: u64,
        buf_index: u16,
    },
    /// `recv(fd, buf, len, flags)`.
    Recv {
        fd: i32,
        buf: *mut u8,
        len: u32,
        flags: i32,
    },
    /// `send(fd, buf, len, flags)`.
    Send {
        fd: i32,
        buf: *const u8,
        len: u32,
        flags: i32,
    },
    /// Multishot recv into buffers of provided-buffer group `group`; each completion
    /// names its buffer in the flags (`IORING_CQE_F_BUFFER`).
    RecvMulti { fd: i32, group: u16, flags: i32 },
    /// `recvmsg(fd, msg, flags)`.
    RecvMsg {
        fd: i32,
        msg: *mut libc::msghdr,
        flags: u32,
    },
    /// `sendmsg(fd, msg, flags)`.
    SendMsg {
        fd: i32,
        msg: *const libc::msghdr,
        flags: u32,
    },
    /// `accept4(fd, addr, addrlen, SOCK_CLOEXEC)`; `addr` and `addrlen` may be null.
    Accept {
        fd: i32,
        addr: *mut libc::sockaddr,
        addrlen: *mut libc::socklen_t,
    },
    /// Multishot accept: one completion per connection (the new fd), until cancelled.
    AcceptMulti { fd: i32 },
    /// `connect(fd, addr, addrlen)`.
    Connect {
        fd: i32,
        addr: *const libc::sockaddr,
        addrlen: u32,
    },
    /// `socket(domain, type, protocol)`.
    Socket {
        domain: i32,
        socket_type: i32,
        protocol: i32,
    },
    /// `shutdown(fd, how)`.
    Shutdown { fd: i32, how: i32 },
    /// `close(fd)`.
    Close { fd: i32 },
    /// `openat(dirfd, path, flags, mode)` (`O_CLOEXEC` added).
    OpenAt {
        dirfd: i32,
        path: *const libc::c_char,
        flags: i32,
        mode: u32,
    },
    /// `fsync(fd)`, or `fdatasync(fd)` when `datasync`.
    Fsync { fd: i32, datasync: bool },
    /// `statx(dirfd, path, flags, mask, buf)`.
    Statx {
        dirfd: i32,
        path: *const libc::c_char,
        flags: i32,
        mask: u32,
        buf: *mut libc::statx,
    },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate {
        fd: i32,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Completes with `revents` once `fd` polls with any of `events`.
    PollAdd { fd: i32, events: u32 },
    /// Completes with -ETIME after `ns` nanoseconds.
    Timeout { ns: u64 },
}

/// What an operation cannot be, checked before it is accepted (a negative errno).
pub(crate) fn validate(op: &RawOp) -> Result<(), i32> {
    let bad = match *op {
        RawOp::Read { fd, buf, len, .. } | RawOp::Recv { fd, buf, len, .. } => {
            fd < 0 || (buf.is_null() && len > 0)
        }
        RawOp::ReadFixed { fd, buf, .. } => fd < 0 || buf.is_null(),
        RawOp::Write { fd, buf, len, .. } | RawOp::Send { fd, buf, len, .. } => {
            fd < 0 || (buf.is_null() && len > 0)
        }
        RawOp::WriteFixed { fd, buf, .. } => fd < 0 || buf.is_null(),
        RawOp::Readv {
            fd, iov, iovcnt, ..
        }
        | RawOp::Writev {
            fd, iov, iovcnt, ..
        } => fd < 0 || iov.is_null() || iovcnt == 0 || iovcnt > libc::UIO_MAXIOV as u32,
        RawOp::RecvMsg { fd, msg, .. } => fd < 0 || msg.is_null(),
        RawOp::SendMsg { fd, msg, .. } => fd < 0 || msg.is_null(),
        RawOp::Accept { fd, addr, addrlen } => fd < 0 || addr.is_null() != addrlen.is_null(),
        RawOp::Connect { fd, addr, addrlen } => {
            fd < 0 || addr.is_null() || addrlen == 0 || addrlen as usize > 128
        }
        RawOp::OpenAt { path, .. } => path.is_null(),
        RawOp::Statx { path, buf, .. } => path.is_null() || buf.is_null(),
        RawOp::RecvMulti { fd, .. }
        | RawOp::AcceptMulti { fd }
        | RawOp::Shutdown { fd, .. }
        | RawOp::Close { fd }
        | RawOp::Fsync { fd, .. }
        | RawOp::Fallocate { fd, .. }
        | RawOp::PollAdd { fd, .. } => fd < 0,
        RawOp::Nop | RawOp::Socket { .. } | RawOp::Timeout { .. } => false,
    };
    if bad {
        Err(-libc::EINVAL)
    } else {
        Ok(())
    }
}

impl RawOp {
    /// Whether the operation completes more than once.
    pub(crate) fn is_multishot(&self) -> bool {
        matches!(self, RawOp::RecvMulti { .. } | RawOp::AcceptMulti { .. })
    }

    /// The submission entry (without `user_data`). `Timeout` needs a stable `timespec`
    /// from the driver and is built there ([`crate::io::driver::Driver::submit_raw`]).
    pub(crate) fn entry(&self) -> Entry {
        use types::Fd;
        match *self {
            RawOp::Nop => opcode::Nop::new().build(),
            RawOp::Read {
                fd,
                buf,
                len,
                offset,
            } => opcode::Read::new(Fd(fd), buf, len).offset(offset).build(),
            RawOp::Write {
                fd,
                buf,
                len,
                offset,
            } => opcode::Write::new(Fd(fd), buf, len).offset(offset).build(),
            RawOp::Readv {
                fd,
                iov,
                iovcnt,
                offset,
            } => opcode::Readv::new(Fd(fd), iov, iovcnt)
                .offset(offset)
                .build(),
            RawOp::Writev {
                fd,
                iov,
                iovcnt,
                offset,
            } => opcode::Writev::new(Fd(fd), iov, iovcnt)
                .offset(offset)
                .build(),
            RawOp::ReadFixed {
                fd,
                buf,
                len,
                offset,
                buf_index,
            } => opcode::ReadFixed::new(Fd(fd), buf, len, buf_index)
                .offset(offset)
                .build(),
            RawOp::WriteFixed {
                fd,
                buf,
                len,
                offset,
                buf_index,
            } => opcode::WriteFixed::new(Fd(fd), buf, len, buf_index)
                .offset(offset)
                .build(),
            RawOp::Recv {
                fd,
                buf,
                len,
                flags,
            } => opcode::Recv::new(Fd(fd), buf, len).flags(flags).build(),
            RawOp::Send {
                fd,
                buf,
                len,
                flags,
            } => opcode::Send::new(Fd(fd), buf, len).flags(flags).build(),
            RawOp::RecvMulti { fd, group, flags } => {
                opcode::RecvMulti::new(Fd(fd), group).flags(flags).build()
            }
            RawOp::RecvMsg { fd, msg, flags } => {
                opcode::RecvMsg::new(Fd(fd), msg).flags(flags).build()
            }
            RawOp::SendMsg { fd, msg, flags } => {
                opcode::SendMsg::new(Fd(fd), msg).flags(flags).build()
            }
            RawOp::Accept { fd, addr, addrlen } => opcode::Accept::new(Fd(fd), addr, addrlen)
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            RawOp::AcceptMulti { fd } => opcode::AcceptMulti::new(Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            RawOp::Connect { fd, addr, addrlen } => {
                opcode::Connect::new(Fd(fd), addr, addrlen).build()
            }
            RawOp::Socket {
                domain,
                socket_type,
                protocol,
            } => opcode::Socket::new(domain, socket_type | libc::SOCK_CLOEXEC, protocol).build(),
            RawOp::Shutdown { fd, how } => opcode::Shutdown::new(Fd(fd), how).build(),
            RawOp::Close { fd } => opcode::Close::new(Fd(fd)).build(),
            RawOp::OpenAt {
                dirfd,
                path,
                flags,
                mode,
            } => opcode::OpenAt::new(Fd(dirfd), path)
                .flags(flags | libc::O_CLOEXEC)
                .mode(mode)
                .build(),
            RawOp::Fsync { fd, datasync } => {
                let flags = if datasync {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                };
                opcode::Fsync::new(Fd(fd)).flags(flags).build()
            }
            RawOp::Statx {
                dirfd,
                path,
                flags,
                mask,
                buf,
            } => opcode::Statx::new(Fd(dirfd), path, buf.cast())
                .flags(flags)
                .mask(mask)
                .build(),
            RawOp::Fallocate {
                fd,
                mode,
                offset,
                len,
            } => opcode::Fallocate::new(Fd(fd), len)
                .offset(offset)
                .mode(mode)
                .build(),
            RawOp::PollAdd { fd, events } => opcode::PollAdd::new(Fd(fd), events).build(),
            RawOp::Timeout { .. } => unreachable!("timeouts are built by the driver"),
        }
    }
}

// SAFETY: a RawOp is a plain description of work; whoever submits one promises (through
// the `unsafe` submit functions) that its pointers may be used by the worker that runs it.
unsafe impl Send for RawOp {}
