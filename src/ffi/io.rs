//! Worker-side asynchronous I/O: each call submits one operation on the ring of the worker
//! running the callback that received `ctx`, and a C callback receives its completion on
//! that same worker.
//!
//! Rules shared by every function here (the header repeats them on each):
//! - Call only from inside a task or I/O callback, with the `ctx` that callback received
//!   (any other use of `ctx` is undefined behaviour).
//! - Returns the operation's id (> 0, for `veloq_cancel`) or a negative errno; on an error
//!   `cb` is never called and nothing the caller passed is used.
//! - Once accepted, `cb(ctx, res, flags, arg)` runs exactly once on the same worker
//!   (multishot: once per entry, `flags & VELOQ_CQE_F_MORE` on every entry but the last),
//!   never from inside the submitting call; `res` is the kernel's result (>= 0) or a
//!   negative errno (-ECANCELED after `veloq_cancel` or at runtime shutdown).
//! - Buffers, addresses, paths and `arg` stay the caller's and must stay valid (and
//!   untouched) until the final callback ran.

use std::ffi::{c_char, c_int, c_void};

use libc::statx;

use super::buf::veloq_buf;
use super::error::VELOQ_EPANIC;
use super::task::veloq_ctx;
use crate::io::{IoCallback, RawOp};
use crate::RuntimeContext;

/// A completion callback: `res` is the operation's result (>= 0, e.g. bytes moved or a
/// new fd) or a negative errno; `flags` has `VELOQ_CQE_F_MORE` when more completions of
/// the same multishot operation follow. Runs on the worker that submitted the operation,
/// with that worker's context (usable for further calls during the callback).
pub type veloq_io_cb =
    Option<unsafe extern "C" fn(ctx: *mut veloq_ctx, res: i64, flags: u32, arg: *mut c_void)>;

/// `flags` bit of a completion (callback or `veloq_cqe`): more completions of this
/// multishot operation follow. The final completion comes without it.
pub const VELOQ_CQE_F_MORE: u32 = 1;

/// `flags` bit of a completion: the operation received into a provided buffer (see
/// `veloq_buf_ring_new`), whose id is `flags >> VELOQ_CQE_BUFFER_SHIFT`;
/// `veloq_buf_ring_take` turns `flags` into the buffer's address.
pub const VELOQ_CQE_F_BUFFER: u32 = 2;

/// With `VELOQ_CQE_F_BUFFER`: the provided buffer's id is `flags >> VELOQ_CQE_BUFFER_SHIFT`
/// (the upper 16 bits).
pub const VELOQ_CQE_BUFFER_SHIFT: u32 = 16;

const _: () = assert!(VELOQ_CQE_F_MORE == crate::io::CQE_F_MORE);
const _: () = assert!(VELOQ_CQE_F_BUFFER == crate::io::CQE_F_BUFFER);
const _: () = assert!(VELOQ_CQE_BUFFER_SHIFT == crate::io::CQE_BUFFER_SHIFT);

/// The one path of every worker-side call: checks `ctx` and `cb`, submits the operation
/// `op` makes. `op` runs inside the call's panic boundary: each call's submission is
/// then built for its own kind of operation (checks and entry known, folded into the
/// driver's fast path) rather than for any `RawOp` passed through memory.
#[inline(always)]
fn submit(
    ctx: *mut veloq_ctx,
    cb: veloq_io_cb,
    arg: *mut c_void,
    op: impl FnOnce() -> RawOp,
) -> i64 {
    // SAFETY: the C contract (see `submit_with`).
    submit_with(ctx, cb, move |cx, cb| unsafe {
        cx.submit_io(op(), cb, arg)
    })
}

/// Checks `ctx` and `cb`, then lets `go` submit with the context and the callback.
#[inline(always)]
pub(super) fn submit_with(
    ctx: *mut veloq_ctx,
    cb: veloq_io_cb,
    go: impl FnOnce(&RuntimeContext, IoCallback) -> Result<u64, i32>,
) -> i64 {
    ffi_boundary!(VELOQ_EPANIC as i64, {
        // SAFETY: a non-null ctx is the RuntimeContext passed to the running callback
        // (the C contract), used on its own worker thread.
        let Some(cx) = (unsafe { (ctx as *const RuntimeContext).as_ref() }) else {
            return -libc::EINVAL as i64;
        };
        let Some(cb) = cb else {
            return -libc::EINVAL as i64;
        };
        // SAFETY: the two function pointer types differ only in the pointee of the first
        // argument (`veloq_ctx` is the C name of `RuntimeContext`); same ABI.
        let cb: IoCallback = unsafe { std::mem::transmute(cb) };
        // The C contract (for `go`'s submission): the op's memory and `arg` stay valid
        // until the final callback, and `cb` may be called with `arg` on this worker.
        match go(cx, cb) {
            Ok(id) => id as i64,
            Err(e) => e as i64,
        }
    })
}

/// Does nothing through the ring: `cb` gets res 0. Returns the op id (> 0); -EINVAL for
/// NULL `ctx`/`cb`; -ESHUTDOWN once the runtime is shutting down (then `cb` never runs).
/// Only inside a callback on a worker, with the `ctx` it received (undefined otherwise);
/// `cb` runs once on the same worker. `arg` stays the caller's.
#[no_mangle]
pub extern "C" fn veloq_nop(ctx: *mut veloq_ctx, cb: veloq_io_cb, arg: *mut c_void) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Nop)
}

/// `pread(fd, buf, len, offset)`; `offset` UINT64_MAX reads at the file position. `res`:
/// bytes read (0 at end of file) or a negative errno (-EBADF, -EFAULT, ...). Returns the op
/// id (> 0); -EINVAL (NULL `ctx`/`cb`, `fd` < 0, NULL `buf` with `len` > 0); -ESHUTDOWN.
/// `buf` (caller's) must stay valid until `cb` ran; the kernel writes it until then.
/// Only inside a callback on a worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_read(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *mut c_void,
    len: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Read {
        fd,
        buf: buf.cast(),
        len,
        offset,
    })
}

/// `pwrite(fd, buf, len, offset)`; `offset` UINT64_MAX writes at the file position. `res`:
/// bytes written or a negative errno. Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`,
/// `fd` < 0, NULL `buf` with `len` > 0); -ESHUTDOWN. `buf` (caller's) must stay valid
/// until `cb` ran. Only inside a callback on a worker, with its `ctx`; `cb` runs once on
/// the same worker.
#[no_mangle]
pub extern "C" fn veloq_write(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *const c_void,
    len: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Write {
        fd,
        buf: buf.cast(),
        len,
        offset,
    })
}

/// `pread(fd, data + buf_offset, len, offset)` into pool buffer `buf` (`offset`
/// UINT64_MAX: the file position): a fixed-buffer read (`IORING_OP_READ_FIXED`, no page
/// pinning per call) when `buf` is registered with this worker's ring, else a plain read
/// with the same result (a buffer from another worker's pool, a plain allocation, a pool
/// whose registration failed). `res`: bytes read (0 at end of file) or a negative errno.
/// Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`/`buf`, `fd` < 0, `buf_offset + len`
/// above `veloq_buf_capacity(buf)`); -ESHUTDOWN. `buf` stays the caller's and must not be
/// freed before `cb` ran; the kernel writes it until then. With O_DIRECT, `buf_offset`,
/// `len` and `offset` must suit the device's alignment (pool buffers start 4 KiB
/// aligned). Only inside a callback on a worker, with its `ctx`; `cb` runs once on the
/// same worker.
#[no_mangle]
pub extern "C" fn veloq_read_fixed(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *mut veloq_buf,
    buf_offset: u32,
    len: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit_with(ctx, cb, move |cx, cb| {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet (the C
        // contract).
        let op = unsafe { pool_op(fd, buf, buf_offset.into(), len, offset, PoolDir::Read) }?;
        // SAFETY: the C contract: the buffer and `arg` stay valid until the callback.
        unsafe { cx.submit_io(op, cb, arg) }
    })
}

/// `pwrite(fd, data + buf_offset, len, offset)` from pool buffer `buf` (`offset`
/// UINT64_MAX: the file position): a fixed-buffer write (`IORING_OP_WRITE_FIXED`) when
/// `buf` is registered with this worker's ring, else a plain write with the same result.
/// `res`: bytes written or a negative errno. Returns the op id (> 0); -EINVAL (NULL
/// `ctx`/`cb`/`buf`, `fd` < 0, `buf_offset + len` above `veloq_buf_capacity(buf)`);
/// -ESHUTDOWN. `buf` stays the caller's and must not be freed (nor its bytes changed)
/// before `cb` ran. Only inside a callback on a worker, with its `ctx`; `cb` runs once on
/// the same worker.
#[no_mangle]
pub extern "C" fn veloq_write_fixed(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *const veloq_buf,
    buf_offset: u32,
    len: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit_with(ctx, cb, move |cx, cb| {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet.
        let op = unsafe { pool_op(fd, buf, buf_offset.into(), len, offset, PoolDir::Write) }?;
        // SAFETY: the C contract: the buffer and `arg` stay valid until the callback.
        unsafe { cx.submit_io(op, cb, arg) }
    })
}

/// Which way a pool operation moves bytes.
#[derive(Clone, Copy)]
pub(super) enum PoolDir {
    /// From the file into the buffer.
    Read,
    /// From the buffer to the file.
    Write,
}

/// The operation moving `len` bytes between `fd` (at `offset`) and pool buffer `buf`
/// from `buf_offset` on: a fixed-buffer one on the worker whose ring the buffer is
/// registered with, a plain one elsewhere (`RawOp::ReadPool` / `WritePool`). -EINVAL for
/// NULL `buf` or a span beyond `veloq_buf_capacity(buf)`.
///
/// # Safety
/// A non-null `buf` comes from `veloq_buf_alloc` and is not freed yet.
pub(super) unsafe fn pool_op(
    fd: c_int,
    buf: *const veloq_buf,
    buf_offset: u64,
    len: u32,
    offset: u64,
    dir: PoolDir,
) -> Result<RawOp, i32> {
    // SAFETY: the caller's promise.
    let Some(b) = (unsafe { buf.as_ref() }) else {
        return Err(-libc::EINVAL);
    };
    if buf_offset.saturating_add(u64::from(len)) > b.inner.capacity() as u64 {
        return Err(-libc::EINVAL);
    }
    // SAFETY: `buf_offset..buf_offset + len` lies inside the buffer (checked above). The
    // kernel may write through the pointer of a read: the bytes are the buffer's own
    // allocation, not the `veloq_buf`, and the C contract leaves them to the operation.
    let data = unsafe { b.inner.as_ptr().add(buf_offset as usize) }.cast_mut();
    let pool: *const crate::PoolBuf = &b.inner;
    Ok(match dir {
        PoolDir::Read => RawOp::ReadPool {
            fd,
            pool,
            data,
            len,
            offset,
        },
        PoolDir::Write => RawOp::WritePool {
            fd,
            pool,
            data,
            len,
            offset,
        },
    })
}

/// `preadv(fd, iov, iovcnt, offset)` (`offset` UINT64_MAX: the file position). `res`:
/// bytes read or a negative errno. Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`/`iov`,
/// `fd` < 0, `iovcnt` 0 or > IOV_MAX); -ESHUTDOWN. The iovec array and every buffer it
/// names (caller's) must stay valid until `cb` ran. Only inside a callback on a worker,
/// with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_readv(
    ctx: *mut veloq_ctx,
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Readv {
        fd,
        iov,
        iovcnt,
        offset,
    })
}

/// `pwritev(fd, iov, iovcnt, offset)` (`offset` UINT64_MAX: the file position). `res`:
/// bytes written or a negative errno. Errors, ownership and threads as `veloq_readv`.
#[no_mangle]
pub extern "C" fn veloq_writev(
    ctx: *mut veloq_ctx,
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: u32,
    offset: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Writev {
        fd,
        iov,
        iovcnt,
        offset,
    })
}

/// `recv(fd, buf, len, flags)` (`flags`: MSG_*). `res`: bytes received (0: the peer closed)
/// or a negative errno (-ENOTSOCK, -ECONNRESET, ...). Returns the op id (> 0); -EINVAL
/// (NULL `ctx`/`cb`, `fd` < 0, NULL `buf` with `len` > 0); -ESHUTDOWN. `buf` (caller's)
/// must stay valid until `cb` ran; after a cancel the kernel no longer writes it once `cb`
/// got -ECANCELED. Only inside a callback on a worker, with its `ctx`; `cb` runs once on
/// the same worker.
#[no_mangle]
pub extern "C" fn veloq_recv(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *mut c_void,
    len: u32,
    flags: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Recv {
        fd,
        buf: buf.cast(),
        len,
        flags,
    })
}

/// `send(fd, buf, len, flags)` (`flags`: MSG_*; add MSG_NOSIGNAL to get -EPIPE rather
/// than SIGPIPE from a closed peer). `res`: bytes sent (possibly fewer than `len`) or a
/// negative errno. Errors, ownership and threads as `veloq_recv`.
#[no_mangle]
pub extern "C" fn veloq_send(
    ctx: *mut veloq_ctx,
    fd: c_int,
    buf: *const c_void,
    len: u32,
    flags: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Send {
        fd,
        buf: buf.cast(),
        len,
        flags,
    })
}

/// `recvmsg(fd, msg, flags)`. `res`: bytes received or a negative errno. Returns the op
/// id (> 0); -EINVAL (NULL `ctx`/`cb`/`msg`, `fd` < 0); -ESHUTDOWN. `msg` and everything
/// it points to (caller's) must stay valid until `cb` ran. Only inside a callback on a
/// worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_recvmsg(
    ctx: *mut veloq_ctx,
    fd: c_int,
    msg: *mut libc::msghdr,
    flags: u32,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::RecvMsg { fd, msg, flags })
}

/// `sendmsg(fd, msg, flags)`. `res`: bytes sent or a negative errno. Errors, ownership
/// and threads as `veloq_recvmsg`.
#[no_mangle]
pub extern "C" fn veloq_sendmsg(
    ctx: *mut veloq_ctx,
    fd: c_int,
    msg: *const libc::msghdr,
    flags: u32,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::SendMsg { fd, msg, flags })
}

/// Multishot `recv` into the buffers of provided-buffer group `group` (a ring made on
/// this worker with `veloq_buf_ring_new`): one completion per chunk received, with
/// `VELOQ_CQE_F_MORE` while more follow. A completion with data (res > 0) has
/// `VELOQ_CQE_F_BUFFER` and names its buffer in the upper 16 bits of `flags`: take it
/// with `veloq_buf_ring_take` (address; res bytes hold data) and give it back with
/// `veloq_buf_ring_recycle` once done. It ends (entry without `VELOQ_CQE_F_MORE`) on an
/// error (-ENOBUFS when the ring has no buffer left, or `group` is no ring of this
/// worker: recycle, then call again to re-arm; the unreceived bytes wait in the socket),
/// at end of stream (res 0), or on `veloq_cancel` (-ECANCELED; -ECANCELED too at runtime
/// shutdown); the kernel may also end it on its own (when the completion queue
/// overflows), with data in that final entry: re-arm unless it is an error or end of
/// stream. While it is armed, `veloq_buf_ring_free` of its group returns -EBUSY.
/// Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`, `fd` < 0); -ESHUTDOWN. Only inside
/// a callback on a worker, with its `ctx`; `cb` runs on the same worker.
#[no_mangle]
pub extern "C" fn veloq_recv_multishot(
    ctx: *mut veloq_ctx,
    fd: c_int,
    group: u16,
    flags: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    // SAFETY: the C contract (see `submit_with`); the op has no pointer.
    submit_with(ctx, cb, |cx, cb| unsafe {
        cx.submit_io(RawOp::RecvMulti { fd, group, flags }, cb, arg)
    })
}

/// `accept4(fd, NULL, NULL, SOCK_CLOEXEC)` on a listening socket. `res`: the new
/// connection's fd (the callback's to close) or a negative errno. With `multishot`, one
/// completion per connection, each with `VELOQ_CQE_F_MORE`, until an error or
/// `veloq_cancel` ends it (final entry without the flag, e.g. -ECANCELED). The kernel may
/// also end it on its own (it does when the completion queue overflows): that final entry
/// may still carry a connection (res >= 0); accept again unless it is -ECANCELED or
/// -ESHUTDOWN. Returns the op
/// id (> 0); -EINVAL (NULL `ctx`/`cb`, `fd` < 0); -ESHUTDOWN. Only inside a callback on a
/// worker, with its `ctx`; `cb` runs on the same worker.
#[no_mangle]
pub extern "C" fn veloq_accept(
    ctx: *mut veloq_ctx,
    fd: c_int,
    multishot: bool,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || {
        if multishot {
            RawOp::AcceptMulti { fd }
        } else {
            RawOp::Accept {
                fd,
                addr: std::ptr::null_mut(),
                addrlen: std::ptr::null_mut(),
            }
        }
    })
}

/// `connect(fd, addr, addrlen)`. `res`: 0 or a negative errno (-ECONNREFUSED, ...).
/// Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`/`addr`, `fd` < 0, `addrlen` 0 or
/// over 128); -ESHUTDOWN. `addr` (caller's) must stay valid until `cb` ran. Only inside a
/// callback on a worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_connect(
    ctx: *mut veloq_ctx,
    fd: c_int,
    addr: *const libc::sockaddr,
    addrlen: u32,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Connect { fd, addr, addrlen })
}

/// `socket(domain, type, protocol)` (SOCK_CLOEXEC added). `res`: the new fd or a negative
/// errno. Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`); -ESHUTDOWN. Only inside a
/// callback on a worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_socket(
    ctx: *mut veloq_ctx,
    domain: c_int,
    r#type: c_int,
    protocol: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Socket {
        domain,
        socket_type: r#type,
        protocol,
    })
}

/// `shutdown(fd, how)` (SHUT_RD, SHUT_WR, SHUT_RDWR). `res`: 0 or a negative errno.
/// Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`, `fd` < 0); -ESHUTDOWN. Only inside
/// a callback on a worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_socket_shutdown(
    ctx: *mut veloq_ctx,
    fd: c_int,
    how: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Shutdown { fd, how })
}

/// `close(fd)`. `res`: 0 or a negative errno (-EBADF). Returns the op id (> 0); -EINVAL
/// (NULL `ctx`/`cb`, `fd` < 0); -ESHUTDOWN. Only inside a callback on a worker, with its
/// `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_close(
    ctx: *mut veloq_ctx,
    fd: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Close { fd })
}

/// `openat(dirfd, path, flags, mode)` (O_CLOEXEC added; `dirfd` AT_FDCWD for the working
/// directory). `res`: the new fd (the callback's to close) or a negative errno (-ENOENT,
/// -EACCES, ...). Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`/`path`); -ESHUTDOWN.
/// `path` (caller's) must stay valid until `cb` ran. Only inside a callback on a worker,
/// with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_openat(
    ctx: *mut veloq_ctx,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: u32,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::OpenAt {
        dirfd,
        path,
        flags,
        mode,
    })
}

/// `statx(dirfd, path, flags, mask, out)` (`dirfd` AT_FDCWD: the working directory;
/// `path` "" with `flags` AT_EMPTY_PATH: `dirfd` itself; `mask`: the STATX_* fields
/// wanted). `out` is a `struct statx` (from `<sys/stat.h>` with _GNU_SOURCE, or
/// `<linux/stat.h>`), filled by the kernel. `res`: 0 or a negative errno (-ENOENT,
/// -EBADF, ...). Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`/`path`/`out`);
/// -ESHUTDOWN. `path` and `out` (caller's) must stay valid until `cb` ran; the kernel
/// writes `out` until then. Only inside a callback on a worker, with its `ctx`; `cb` runs
/// once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_statx(
    ctx: *mut veloq_ctx,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: u32,
    out: *mut statx,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Statx {
        dirfd,
        path,
        flags,
        mask,
        buf: out,
    })
}

/// `fallocate(fd, mode, offset, len)` (`mode`: 0 allocates and grows the file if the range
/// ends past its end; FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
/// ... as the file system supports). `res`: 0 or a negative errno (-ENOSPC, -EOPNOTSUPP,
/// -EBADF, -EINVAL for `len` 0). Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`, `fd` <
/// 0); -ESHUTDOWN. Only inside a callback on a worker, with its `ctx`; `cb` runs once on
/// the same worker.
#[no_mangle]
pub extern "C" fn veloq_fallocate(
    ctx: *mut veloq_ctx,
    fd: c_int,
    mode: c_int,
    offset: u64,
    len: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Fallocate {
        fd,
        mode,
        offset,
        len,
    })
}

/// `fsync(fd)`. `res`: 0 or a negative errno. Returns the op id (> 0); -EINVAL (NULL
/// `ctx`/`cb`, `fd` < 0); -ESHUTDOWN. Only inside a callback on a worker, with its `ctx`;
/// `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_fsync(
    ctx: *mut veloq_ctx,
    fd: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Fsync {
        fd,
        datasync: false,
    })
}

/// `fdatasync(fd)`. Same results, errors and threads as `veloq_fsync`.
#[no_mangle]
pub extern "C" fn veloq_fdatasync(
    ctx: *mut veloq_ctx,
    fd: c_int,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Fsync { fd, datasync: true })
}

/// Completes after `ns` nanoseconds with res -ETIME (or -ECANCELED when cancelled first).
/// Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`); -ESHUTDOWN. Only inside a callback
/// on a worker, with its `ctx`; `cb` runs once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_timeout(
    ctx: *mut veloq_ctx,
    ns: u64,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::Timeout { ns })
}

/// Completes once `fd` polls with any of `events` (POLLIN, POLLOUT, ...): `res` is the
/// ready events, or a negative errno. Returns the op id (> 0); -EINVAL (NULL `ctx`/`cb`,
/// `fd` < 0); -ESHUTDOWN. Only inside a callback on a worker, with its `ctx`; `cb` runs
/// once on the same worker.
#[no_mangle]
pub extern "C" fn veloq_poll_add(
    ctx: *mut veloq_ctx,
    fd: c_int,
    events: u32,
    cb: veloq_io_cb,
    arg: *mut c_void,
) -> i64 {
    submit(ctx, cb, arg, move || RawOp::PollAdd { fd, events })
}

/// Hands the operations queued in this worker's submission queue to the kernel now, in one
/// `io_uring_enter`, rather than when the worker's turn ends (where it submits everything
/// queued at once). For direct (`O_DIRECT`) file I/O: a read or write flushed as soon as it
/// is made reaches the device at once, where a batch is held back (plugged) by the block
/// layer and may be served all together by a virtual disk (fio submits so by default).
/// Socket and buffered file I/O are better left to the batch. Operations waiting in the
/// backlog (a full submission queue) are not handed over here; they go in as room frees.
/// Returns how many entries the kernel took (possibly fewer than were queued): 0 when none
/// were queued or the kernel refused the enter (EINTR, EBUSY, EAGAIN, ...: what it did not
/// take goes in with the batch as usual); -EINVAL for NULL `ctx`. Only inside a callback on
/// a worker, with its `ctx`.
#[no_mangle]
pub extern "C" fn veloq_ctx_flush(ctx: *mut veloq_ctx) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: as in `submit`: the running callback's own context.
        let Some(cx) = (unsafe { (ctx as *const RuntimeContext).as_ref() }) else {
            return -libc::EINVAL;
        };
        cx.flush_io().min(c_int::MAX as usize) as c_int
    })
}

/// Asks for operation `op` (an id returned on this worker) to be cancelled. It still
/// completes through its callback: with -ECANCELED unless it finished first (a multishot
/// operation ends with one entry without `VELOQ_CQE_F_MORE`). Returns 0 when the request
/// was made; -ENOENT when `op` names no live operation of this worker (finished, unknown,
/// or another worker's of this runtime); -EALREADY when a cancel of it is already on its
/// way; -EINVAL for NULL `ctx`. Only inside a callback on a worker, with its `ctx`.
/// Forget an id once its final completion has run: ids are reused, so one kept for long
/// (tens of millions of operations later) may name a new operation.
#[no_mangle]
pub extern "C" fn veloq_cancel(ctx: *mut veloq_ctx, op: i64) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: as in `submit`: the running callback's own context.
        let Some(cx) = (unsafe { (ctx as *const RuntimeContext).as_ref() }) else {
            return -libc::EINVAL;
        };
        if op <= 0 {
            return -libc::ENOENT;
        }
        match cx.cancel_io(op as u64) {
            Ok(()) => 0,
            Err(e) => e,
        }
    })
}
