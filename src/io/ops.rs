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
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *mut u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
    },
    /// `pwrite(fd, buf, len, offset)`; `offset == u64::MAX` writes at the file position.
    Write {
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *const u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
    },
    /// `preadv(fd, iov, iovcnt, offset)`.
    Readv {
        /// The file descriptor operated on.
        fd: i32,
        /// The iovec array.
        iov: *const libc::iovec,
        /// How many iovecs (1..=`UIO_MAXIOV`).
        iovcnt: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
    },
    /// `pwritev(fd, iov, iovcnt, offset)`.
    Writev {
        /// The file descriptor operated on.
        fd: i32,
        /// The iovec array.
        iov: *const libc::iovec,
        /// How many iovecs (1..=`UIO_MAXIOV`).
        iovcnt: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
    },
    /// A read into registered buffer `buf_index` (`buf` lies inside it).
    ReadFixed {
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *mut u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
        /// The registered buffer's index.
        buf_index: u16,
    },
    /// A write from registered buffer `buf_index`.
    WriteFixed {
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *const u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
        /// The registered buffer's index.
        buf_index: u16,
    },
    /// `pread(fd, data, len, offset)` into pool buffer `pool` (`data` lies inside it):
    /// submitted as a [`RawOp::ReadFixed`] when `pool` is registered with the ring of the
    /// worker submitting it, else as a plain [`RawOp::Read`], with the same result.
    ReadPool {
        /// The file descriptor operated on.
        fd: i32,
        /// The pool buffer the bytes go into (the submitter's, alive until completion).
        pool: *const crate::io::buffers::PoolBuf,
        /// Where in `pool` the bytes go.
        data: *mut u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position).
        offset: u64,
    },
    /// `pwrite(fd, data, len, offset)` from pool buffer `pool`: a [`RawOp::WriteFixed`]
    /// when `pool` is registered with the submitting worker's ring, else a plain
    /// [`RawOp::Write`].
    WritePool {
        /// The file descriptor operated on.
        fd: i32,
        /// The pool buffer the bytes come from (the submitter's, alive until completion).
        pool: *const crate::io::buffers::PoolBuf,
        /// Where in `pool` the bytes start.
        data: *const u8,
        /// Bytes to transfer at most.
        len: u32,
        /// File offset (`u64::MAX`: the file position).
        offset: u64,
    },
    /// `recv(fd, buf, len, flags)`.
    Recv {
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *mut u8,
        /// Bytes to transfer at most.
        len: u32,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: i32,
    },
    /// `send(fd, buf, len, flags)`.
    Send {
        /// The file descriptor operated on.
        fd: i32,
        /// The buffer (the submitter's memory).
        buf: *const u8,
        /// Bytes to transfer at most.
        len: u32,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: i32,
    },
    /// Multishot recv into buffers of provided-buffer group `group`; each completion
    /// names its buffer in the flags (`IORING_CQE_F_BUFFER`).
    RecvMulti {
        /// The file descriptor operated on.
        fd: i32,
        /// The provided-buffer group.
        group: u16,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: i32,
    },
    /// `recvmsg(fd, msg, flags)`.
    RecvMsg {
        /// The file descriptor operated on.
        fd: i32,
        /// The message header (its iovecs and address, the submitter's memory).
        msg: *mut libc::msghdr,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: u32,
    },
    /// `sendmsg(fd, msg, flags)`.
    SendMsg {
        /// The file descriptor operated on.
        fd: i32,
        /// The message header (its iovecs and address, the submitter's memory).
        msg: *const libc::msghdr,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: u32,
    },
    /// `accept4(fd, addr, addrlen, SOCK_CLOEXEC)`; `addr` and `addrlen` may be null.
    Accept {
        /// The file descriptor operated on.
        fd: i32,
        /// The socket address.
        addr: *mut libc::sockaddr,
        /// The address length (for `Accept`, in/out).
        addrlen: *mut libc::socklen_t,
    },
    /// Multishot accept: one completion per connection (the new fd), until cancelled.
    AcceptMulti {
        /// The file descriptor operated on.
        fd: i32,
    },
    /// `connect(fd, addr, addrlen)`.
    Connect {
        /// The file descriptor operated on.
        fd: i32,
        /// The socket address.
        addr: *const libc::sockaddr,
        /// The address length (for `Accept`, in/out).
        addrlen: u32,
    },
    /// `socket(domain, type, protocol)`.
    Socket {
        /// Address family (`AF_*`).
        domain: i32,
        /// Socket type (`SOCK_*`); `SOCK_CLOEXEC` is added.
        socket_type: i32,
        /// Protocol (0: the default).
        protocol: i32,
    },
    /// `shutdown(fd, how)`.
    Shutdown {
        /// The file descriptor operated on.
        fd: i32,
        /// `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
        how: i32,
    },
    /// `close(fd)`.
    Close {
        /// The file descriptor operated on.
        fd: i32,
    },
    /// `openat(dirfd, path, flags, mode)` (`O_CLOEXEC` added).
    OpenAt {
        /// Directory the path is relative to (`AT_FDCWD`: the working directory).
        dirfd: i32,
        /// A NUL-terminated path.
        path: *const libc::c_char,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: i32,
        /// Mode bits (`OpenAt`: for a created file; `Fallocate`: `FALLOC_FL_*`).
        mode: u32,
    },
    /// `fsync(fd)`, or `fdatasync(fd)` when `datasync`.
    Fsync {
        /// The file descriptor operated on.
        fd: i32,
        /// `fdatasync` rather than `fsync`.
        datasync: bool,
    },
    /// `statx(dirfd, path, flags, mask, buf)`.
    Statx {
        /// Directory the path is relative to (`AT_FDCWD`: the working directory).
        dirfd: i32,
        /// A NUL-terminated path.
        path: *const libc::c_char,
        /// Flags of the system call (`MSG_*`, `AT_*`, `O_*`, as the call takes).
        flags: i32,
        /// `STATX_*` fields wanted.
        mask: u32,
        /// The buffer (the submitter's memory).
        buf: *mut libc::statx,
    },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate {
        /// The file descriptor operated on.
        fd: i32,
        /// Mode bits (`OpenAt`: for a created file; `Fallocate`: `FALLOC_FL_*`).
        mode: i32,
        /// File offset (`u64::MAX`: the file position, where the variant allows it).
        offset: u64,
        /// Bytes to transfer at most.
        len: u64,
    },
    /// Completes with `revents` once `fd` polls with any of `events`.
    PollAdd {
        /// The file descriptor operated on.
        fd: i32,
        /// `POLL*` events to wait for.
        events: u32,
    },
    /// Completes with -ETIME after `ns` nanoseconds.
    Timeout {
        /// Nanoseconds.
        ns: u64,
    },
}

/// What an operation cannot be, checked before it is accepted (a negative errno).
/// Always inlined, as [`RawOp::entry`]: a known variant folds to its few checks.
#[inline(always)]
pub(crate) fn validate(op: &RawOp) -> Result<(), i32> {
    let bad = match *op {
        RawOp::Read { fd, buf, len, .. } | RawOp::Recv { fd, buf, len, .. } => {
            fd < 0 || (buf.is_null() && len > 0)
        }
        RawOp::ReadFixed { fd, buf, .. } => fd < 0 || buf.is_null(),
        RawOp::ReadPool { fd, pool, data, .. } => fd < 0 || pool.is_null() || data.is_null(),
        RawOp::WritePool { fd, pool, data, .. } => fd < 0 || pool.is_null() || data.is_null(),
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

/// What an operation given a deadline cannot be: a `Timeout` (it has its own time) or a
/// multishot operation (-EINVAL).
pub(crate) fn validate_deadline(op: &RawOp) -> Result<(), i32> {
    if matches!(op, RawOp::Timeout { .. }) || op.is_multishot() {
        Err(-libc::EINVAL)
    } else {
        Ok(())
    }
}

/// [`RawOp::Recv`]'s entry, for a socket read that builds it directly (the whole
/// `entry` match is not inlined into every read).
#[inline]
pub(crate) fn recv_entry(fd: i32, buf: *mut u8, len: u32, flags: i32) -> Entry {
    opcode::Recv::new(types::Fd(fd), buf, len)
        .flags(flags)
        .build()
}

/// [`RawOp::Send`]'s entry, for a socket write that builds it directly.
#[inline]
pub(crate) fn send_entry(fd: i32, buf: *const u8, len: u32, flags: i32) -> Entry {
    opcode::Send::new(types::Fd(fd), buf, len)
        .flags(flags)
        .build()
}

impl RawOp {
    /// A [`RawOp::ReadPool`] / [`RawOp::WritePool`] as the worker owning `buffers`
    /// submits it: the fixed-buffer operation when its buffer is registered with this
    /// worker's ring ([`BufferPool::fixed_index`]), else the plain one. Any other
    /// operation unchanged.
    ///
    /// A pool operation whose `pool` is null is left as it is, for the validation that
    /// follows to refuse (-EINVAL).
    ///
    /// # Safety
    /// A pool operation's non-null `pool` points to a live buffer (the submitter's
    /// promise for every pointer of an operation).
    ///
    /// [`BufferPool::fixed_index`]: crate::io::buffers::BufferPool::fixed_index
    #[inline(always)]
    pub(crate) unsafe fn resolve_pool(self, buffers: &crate::io::buffers::BufferPool) -> RawOp {
        if matches!(self, RawOp::ReadPool { .. } | RawOp::WritePool { .. }) {
            // SAFETY: forwarded promise.
            unsafe { self.resolve_pool_op(buffers) }
        } else {
            self
        }
    }

    /// [`resolve_pool`](Self::resolve_pool) of a pool operation, out of line: inlined,
    /// the optimizer merged its tests with the callers' into code that tests bytes other
    /// variants leave unset before the variant is known (valgrind's memcheck flagged every
    /// operation submitted through `veloq_ctx_submit`; the results were right).
    ///
    /// # Safety
    /// As `resolve_pool`.
    #[inline(never)]
    unsafe fn resolve_pool_op(self, buffers: &crate::io::buffers::BufferPool) -> RawOp {
        match self {
            RawOp::ReadPool { pool, .. } | RawOp::WritePool { pool, .. } if pool.is_null() => self,
            RawOp::ReadPool {
                fd,
                pool,
                data,
                len,
                offset,
            } => {
                // SAFETY: the caller's promise.
                match buffers.fixed_index(unsafe { &*pool }) {
                    Some(buf_index) => RawOp::ReadFixed {
                        fd,
                        buf: data,
                        len,
                        offset,
                        buf_index,
                    },
                    None => RawOp::Read {
                        fd,
                        buf: data,
                        len,
                        offset,
                    },
                }
            }
            RawOp::WritePool {
                fd,
                pool,
                data,
                len,
                offset,
            } => {
                // SAFETY: the caller's promise.
                match buffers.fixed_index(unsafe { &*pool }) {
                    Some(buf_index) => RawOp::WriteFixed {
                        fd,
                        buf: data,
                        len,
                        offset,
                        buf_index,
                    },
                    None => RawOp::Write {
                        fd,
                        buf: data,
                        len,
                        offset,
                    },
                }
            }
            op => op,
        }
    }

    /// Whether the operation completes more than once.
    #[inline]
    pub(crate) fn is_multishot(&self) -> bool {
        matches!(self, RawOp::RecvMulti { .. } | RawOp::AcceptMulti { .. })
    }

    /// The submission entry (without `user_data`). `Timeout` needs a stable `timespec`
    /// from the driver and is built there ([`crate::io::driver::Driver::submit_raw`]).
    /// Always inlined: a known variant folds to its few stores.
    #[inline(always)]
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
            // Not resolved to a fixed-buffer operation by the submitting worker
            // (`RawOp::resolve_pool`): the plain one, same result.
            RawOp::ReadPool {
                fd,
                data,
                len,
                offset,
                ..
            } => opcode::Read::new(Fd(fd), data, len).offset(offset).build(),
            RawOp::WritePool {
                fd,
                data,
                len,
                offset,
                ..
            } => opcode::Write::new(Fd(fd), data, len).offset(offset).build(),
            RawOp::Recv {
                fd,
                buf,
                len,
                flags,
            } => recv_entry(fd, buf, len, flags),
            RawOp::Send {
                fd,
                buf,
                len,
                flags,
            } => send_entry(fd, buf, len, flags),
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
