//! Host-side I/O submission: any thread routes one operation to a worker's ring and gets
//! its completion in a completion queue.

use std::ffi::{c_int, c_void};

use super::cq::veloq_cq;
use super::error::VELOQ_EPANIC;
use super::handle;
use super::io::{pool_op, veloq_io_cb, PoolDir};
use super::runtime::veloq_runtime;
use super::task::veloq_ctx;
use crate::io::{RawOp, SubmitOptions};
use crate::Placement;

/// No operation: completes with res 0. Uses no field.
pub const VELOQ_OP_NOP: u8 = 0;
/// `pread(fd, (void *)addr, len, offset)`; `offset` UINT64_MAX: the file position.
/// res: bytes read.
pub const VELOQ_OP_READ: u8 = 1;
/// `pwrite(fd, (const void *)addr, len, offset)`; `offset` UINT64_MAX: the file position.
/// res: bytes written.
pub const VELOQ_OP_WRITE: u8 = 2;
/// `preadv(fd, (const struct iovec *)addr, len = iovcnt, offset)`. res: bytes read.
pub const VELOQ_OP_READV: u8 = 3;
/// `pwritev(fd, (const struct iovec *)addr, len = iovcnt, offset)`. res: bytes written.
pub const VELOQ_OP_WRITEV: u8 = 4;
/// `recv(fd, (void *)addr, len, op_flags = MSG_*)`. res: bytes received.
pub const VELOQ_OP_RECV: u8 = 5;
/// `send(fd, (const void *)addr, len, op_flags = MSG_*)`. res: bytes sent.
pub const VELOQ_OP_SEND: u8 = 6;
/// `accept4(fd, (struct sockaddr *)addr, (socklen_t *)addr2, SOCK_CLOEXEC)`; `addr` and
/// `addr2` both 0 (no peer address) or both set. res: the new fd (the host's to close).
pub const VELOQ_OP_ACCEPT: u8 = 7;
/// `connect(fd, (const struct sockaddr *)addr, len = addrlen)`. res: 0.
pub const VELOQ_OP_CONNECT: u8 = 8;
/// `close(fd)`. res: 0.
pub const VELOQ_OP_CLOSE: u8 = 9;
/// `openat(fd = dirfd, (const char *)addr = path, op_flags = O_* flags, len = mode)`,
/// O_CLOEXEC added. res: the new fd (the host's to close).
pub const VELOQ_OP_OPENAT: u8 = 10;
/// `fsync(fd)`. res: 0.
pub const VELOQ_OP_FSYNC: u8 = 11;
/// `fdatasync(fd)`. res: 0.
pub const VELOQ_OP_FDATASYNC: u8 = 12;
/// A timer of `offset` nanoseconds. res: -ETIME when it expired.
pub const VELOQ_OP_TIMEOUT: u8 = 13;
/// Waits until `fd` polls with any of `op_flags` = POLLIN/POLLOUT/... res: the events.
pub const VELOQ_OP_POLL_ADD: u8 = 14;
/// `shutdown(fd, len = how)` (SHUT_RD, SHUT_WR, SHUT_RDWR). res: 0.
pub const VELOQ_OP_SHUTDOWN: u8 = 15;
/// `recvmsg(fd, (struct msghdr *)addr, op_flags)`. res: bytes received.
pub const VELOQ_OP_RECVMSG: u8 = 16;
/// `sendmsg(fd, (const struct msghdr *)addr, op_flags)`. res: bytes sent.
pub const VELOQ_OP_SENDMSG: u8 = 17;
/// `socket(fd = domain, op_flags = type, len = protocol)`, SOCK_CLOEXEC added. res: the
/// new fd.
pub const VELOQ_OP_SOCKET: u8 = 18;
/// Multishot accept on listening socket `fd`: one entry per connection (res: its fd) with
/// `VELOQ_CQE_F_MORE`, until an error ends it (final entry without the flag).
pub const VELOQ_OP_ACCEPT_MULTISHOT: u8 = 19;
/// `statx(fd = dirfd, (const char *)addr = path, op_flags = AT_* flags, len = STATX_* mask,
/// (struct statx *)addr2)`. res: 0.
pub const VELOQ_OP_STATX: u8 = 20;
/// `fallocate(fd, op_flags = mode, offset, addr2 = length in bytes)`. res: 0.
pub const VELOQ_OP_FALLOCATE: u8 = 21;

/// `pread(fd, veloq_buf_data(buf) + addr2, len, offset)` into pool buffer `buf =
/// (veloq_buf *)addr`; `offset` UINT64_MAX: the file position. A fixed-buffer read
/// (`IORING_OP_READ_FIXED`, no page pinning per operation) on the worker whose ring the
/// buffer is registered with, a plain read with the same result on any other worker;
/// `veloq_submit` with worker -1 sends it to the buffer's own worker (`veloq_buf_worker`)
/// when that worker is of the same runtime, else (a plain allocation, a buffer of another
/// runtime) to the less loaded of two.
/// -EINVAL for NULL `buf` or `addr2 + len` above `veloq_buf_capacity(buf)`. The buffer
/// must not be freed (nor its bytes used) before the completion. res: bytes read.
pub const VELOQ_OP_READ_FIXED: u8 = 22;
/// `pwrite(fd, veloq_buf_data(buf) + addr2, len, offset)` from pool buffer `buf =
/// (veloq_buf *)addr`; `offset` UINT64_MAX: the file position. A fixed-buffer write
/// (`IORING_OP_WRITE_FIXED`) on the buffer's own worker, a plain write elsewhere, as
/// VELOQ_OP_READ_FIXED (same routing and errors). res: bytes written.
pub const VELOQ_OP_WRITE_FIXED: u8 = 23;

/// `veloq_sqe.sqe_flags` bit: the worker hands the operation to the kernel as soon as it
/// takes it, with an `io_uring_enter` made right away (which also takes whatever else the
/// worker had queued), rather than with its batch at the end of its turn (inside a
/// callback: as `veloq_ctx_flush` right after `veloq_ctx_submit`). An operation that has
/// to wait in the backlog (a full submission queue) still goes in with the backlog. For
/// direct (`O_DIRECT`) file reads and writes: each reaches the device at once, where a
/// batch is held back (plugged) by the block layer and may be served all together by a
/// virtual disk. Leave it off for sockets and buffered files, where the batch saves system
/// calls.
pub const VELOQ_SQE_SUBMIT_NOW: u32 = 1;

/// One operation for `veloq_submit` (from any thread, completion to a queue) or
/// `veloq_ctx_submit` (inside a worker callback, completion to a callback): `opcode` (a
/// `VELOQ_OP_*`) says which fields it uses and how (see each constant); the others are
/// ignored but must be 0: start from a zeroed struct (`veloq_sqe sqe = {0};`, `memset`, or
/// designated initializers), since fields may be added in what is padding now. Addresses are the
/// submitter's memory, passed as integers, and must stay valid until the operation's final
/// completion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct veloq_sqe {
    /// A `VELOQ_OP_*` constant.
    pub opcode: u8,
    /// The file descriptor (or dirfd / domain, see the opcode).
    pub fd: i32,
    /// A buffer, iovec array, sockaddr, path or msghdr, by opcode.
    pub addr: u64,
    /// Byte count, iovec count, address length, mode or `how`, by opcode.
    pub len: u32,
    /// File offset, or a timeout in nanoseconds.
    pub offset: u64,
    /// MSG_* / O_* / POLL* flags or socket type, by opcode.
    pub op_flags: u32,
    /// `VELOQ_SQE_*` bits saying how the operation goes in; 0: with its worker's batch.
    /// An unknown bit: -EINVAL. (It takes what was padding: the struct's size and the
    /// other fields' offsets are those of earlier versions.)
    pub sqe_flags: u32,
    /// A second address or a 64-bit count: the `socklen_t *` of VELOQ_OP_ACCEPT, the `struct
    /// statx *` of VELOQ_OP_STATX, the length of VELOQ_OP_FALLOCATE, the offset into the
    /// buffer of VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED.
    pub addr2: u64,
    /// 0: no deadline. Else the operation's deadline in nanoseconds from its submission
    /// (`IORING_OP_LINK_TIMEOUT`): when it passes first, the kernel cancels the operation
    /// and its completion has res -ECANCELED (an operation it cannot interrupt, like a
    /// buffered file read under way, completes with its own result). Not for
    /// VELOQ_OP_TIMEOUT or a multishot opcode (-EINVAL).
    pub timeout_ns: u64,
}

/// How the operation an sqe describes goes in: its deadline and `VELOQ_SQE_*` bits, or
/// -EINVAL for an unknown bit.
fn submit_options(s: &veloq_sqe) -> Result<SubmitOptions, i32> {
    if s.sqe_flags & !VELOQ_SQE_SUBMIT_NOW != 0 {
        return Err(-libc::EINVAL);
    }
    Ok(SubmitOptions {
        timeout_ns: (s.timeout_ns != 0).then_some(s.timeout_ns),
        submit_now: s.sqe_flags & VELOQ_SQE_SUBMIT_NOW != 0,
    })
}

/// The operation an sqe describes, or -EINVAL for an unknown opcode (or a pool buffer
/// span out of bounds).
///
/// # Safety
/// The `veloq_buf *` of a VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED, when not NULL, is
/// a live buffer from `veloq_buf_alloc`.
unsafe fn raw_op(s: &veloq_sqe) -> Result<RawOp, i32> {
    let fd = s.fd;
    let ptr = s.addr as usize as *mut c_void;
    Ok(match s.opcode {
        VELOQ_OP_NOP => RawOp::Nop,
        VELOQ_OP_READ => RawOp::Read {
            fd,
            buf: ptr.cast(),
            len: s.len,
            offset: s.offset,
        },
        VELOQ_OP_WRITE => RawOp::Write {
            fd,
            buf: ptr.cast(),
            len: s.len,
            offset: s.offset,
        },
        VELOQ_OP_READV => RawOp::Readv {
            fd,
            iov: ptr.cast(),
            iovcnt: s.len,
            offset: s.offset,
        },
        VELOQ_OP_WRITEV => RawOp::Writev {
            fd,
            iov: ptr.cast(),
            iovcnt: s.len,
            offset: s.offset,
        },
        VELOQ_OP_RECV => RawOp::Recv {
            fd,
            buf: ptr.cast(),
            len: s.len,
            flags: s.op_flags as i32,
        },
        VELOQ_OP_SEND => RawOp::Send {
            fd,
            buf: ptr.cast(),
            len: s.len,
            flags: s.op_flags as i32,
        },
        VELOQ_OP_ACCEPT => RawOp::Accept {
            fd,
            addr: ptr.cast(),
            addrlen: s.addr2 as usize as *mut libc::socklen_t,
        },
        VELOQ_OP_ACCEPT_MULTISHOT => RawOp::AcceptMulti { fd },
        VELOQ_OP_CONNECT => RawOp::Connect {
            fd,
            addr: ptr.cast(),
            addrlen: s.len,
        },
        VELOQ_OP_CLOSE => RawOp::Close { fd },
        VELOQ_OP_OPENAT => RawOp::OpenAt {
            dirfd: fd,
            path: ptr.cast(),
            flags: s.op_flags as i32,
            mode: s.len,
        },
        VELOQ_OP_FSYNC => RawOp::Fsync {
            fd,
            datasync: false,
        },
        VELOQ_OP_FDATASYNC => RawOp::Fsync { fd, datasync: true },
        VELOQ_OP_TIMEOUT => RawOp::Timeout { ns: s.offset },
        VELOQ_OP_POLL_ADD => RawOp::PollAdd {
            fd,
            events: s.op_flags,
        },
        VELOQ_OP_SHUTDOWN => RawOp::Shutdown {
            fd,
            how: s.len as i32,
        },
        VELOQ_OP_RECVMSG => RawOp::RecvMsg {
            fd,
            msg: ptr.cast(),
            flags: s.op_flags,
        },
        VELOQ_OP_SENDMSG => RawOp::SendMsg {
            fd,
            msg: ptr.cast(),
            flags: s.op_flags,
        },
        VELOQ_OP_SOCKET => RawOp::Socket {
            domain: fd,
            socket_type: s.op_flags as i32,
            protocol: s.len as i32,
        },
        VELOQ_OP_STATX => RawOp::Statx {
            dirfd: fd,
            path: ptr.cast(),
            flags: s.op_flags as i32,
            mask: s.len,
            buf: s.addr2 as usize as *mut libc::statx,
        },
        VELOQ_OP_FALLOCATE => RawOp::Fallocate {
            fd,
            mode: s.op_flags as i32,
            offset: s.offset,
            len: s.addr2,
        },
        // SAFETY (both): the caller's promise.
        VELOQ_OP_READ_FIXED => {
            unsafe { pool_op(s.fd, ptr.cast(), s.addr2, s.len, s.offset, PoolDir::Read) }?
        }
        VELOQ_OP_WRITE_FIXED => {
            unsafe { pool_op(s.fd, ptr.cast(), s.addr2, s.len, s.offset, PoolDir::Write) }?
        }
        _ => return Err(-libc::EINVAL),
    })
}

/// Submits the operation `*sqe` from any thread (host threads, worker callbacks) to the
/// ring of worker `worker` (0..workers), or for -1 of the less loaded of two workers (for
/// VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED: of the buffer's own worker, when its pool is
/// one of this runtime's). `*sqe` is copied: it may be reused as soon as the call returns.
///
/// Returns 0 when accepted: then the operation runs on that worker and exactly one
/// completion `{user_data, res, flags 0, worker = the worker that ran it}` is posted to
/// `cq` (`res` the kernel's result or a negative errno: -ECANCELED when shutdown cancelled
/// it, -ESHUTDOWN when shutdown began before it reached its worker). A multishot opcode
/// posts entries with `VELOQ_CQE_F_MORE` and ends with one without it.
///
/// Errors (nothing runs, nothing is posted): -EINVAL for NULL `rt`/`sqe`/`cq`, a `worker`
/// that is not -1 or 0..workers, an unknown opcode, or fields the opcode cannot take (fd
/// < 0, NULL buffer with len > 0, NULL path, iovec count 0, ...), a `timeout_ns` on
/// VELOQ_OP_TIMEOUT or a multishot opcode, an unknown `sqe_flags` bit; -ESHUTDOWN once
/// shutdown has started.
///
/// Ownership: the memory named by the sqe stays the host's and must stay valid (and
/// untouched while the kernel may write it) until the final completion was posted; `cq`
/// must not be freed before (veloq_cq_free answers -EBUSY until then).
#[no_mangle]
pub extern "C" fn veloq_submit(
    rt: *mut veloq_runtime,
    worker: i32,
    sqe: *const veloq_sqe,
    cq: *mut veloq_cq,
    user_data: u64,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: non-null handles are live (caller's promise).
        let handles = unsafe { (handle(rt), handle(sqe), handle(cq)) };
        let (Ok(rt), Ok(sqe), Ok(cq)) = handles else {
            return -libc::EINVAL;
        };
        let placement = match worker {
            -1 => Placement::Balanced,
            w if w >= 0 => Placement::Worker(w as usize),
            _ => return -libc::EINVAL,
        };
        // SAFETY: the C contract: a pool buffer the sqe names is live.
        let (op, options) =
            match unsafe { raw_op(sqe) }.and_then(|op| submit_options(sqe).map(|o| (op, o))) {
                Ok(parsed) => parsed,
                Err(e) => return e,
            };
        let handle = rt.inner.handle();
        // SAFETY: the C contract: the sqe's memory stays valid until the final
        // completion, and `cq` until then (its free refuses while one is owed).
        let r = unsafe { handle.submit_io_with(placement, op, options, &cq.inner, user_data) };
        match r {
            Ok(()) => 0,
            Err(e) => e,
        }
    })
}

/// Submits the operation `*sqe` on the ring of the worker running the callback that
/// received `ctx`, like the worker-side calls (`veloq_read`, ...): any `VELOQ_OP_*`, and a
/// deadline when `sqe->timeout_ns` is set (a receive or a connect that gives up with
/// -ECANCELED). `*sqe` is copied: it may be reused as soon as the call returns.
///
/// Returns the op id (> 0, for `veloq_cancel`); then `cb(ctx, res, flags, arg)` runs
/// exactly once on this worker (multishot: once per entry, `VELOQ_CQE_F_MORE` on all but
/// the last). Errors (`cb` never runs, nothing is submitted): -EINVAL for NULL
/// `ctx`/`sqe`/`cb` and everything `veloq_submit` refuses in an sqe; -ESHUTDOWN once
/// shutdown has started. Memory the sqe names stays the caller's and must stay valid
/// until the final callback ran. Only inside a callback on a worker, with its `ctx`.
#[no_mangle]
pub extern "C" fn veloq_ctx_submit(
    ctx: *mut veloq_ctx,
    sqe: *const veloq_sqe,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    // SAFETY: a non-null sqe is readable (the C contract); it is copied here.
    let Ok(sqe) = (unsafe { handle(sqe) }) else {
        return -libc::EINVAL as i64;
    };
    // SAFETY: the C contract: a pool buffer the sqe names is live.
    let (op, options) =
        match unsafe { raw_op(sqe) }.and_then(|op| submit_options(sqe).map(|o| (op, o))) {
            Ok(parsed) => parsed,
            Err(e) => return e as i64,
        };
    super::io::submit_with(ctx, cb, move |cx, cb| {
        // SAFETY: the C contract: the sqe's memory and `arg` stay valid until the final
        // callback.
        let id = unsafe {
            match options.timeout_ns {
                None => cx.submit_io(op, cb, arg),
                Some(ns) => cx.submit_io_with_timeout(op, ns, cb, arg),
            }
        }?;
        if options.submit_now {
            cx.flush_io();
        }
        Ok(id)
    })
}
