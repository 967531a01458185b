//! Provided-buffer rings: the buffers `veloq_recv_multishot` receives into.

use std::ffi::{c_int, c_void};

use super::buf::running_ctx;
use super::error::VELOQ_EPANIC;
use super::io::{VELOQ_CQE_BUFFER_SHIFT, VELOQ_CQE_F_BUFFER};
use super::task::veloq_ctx;

/// Most buffers a provided-buffer ring may have (the kernel's limit).
pub const VELOQ_BUF_RING_MAX_COUNT: u32 = 32768;

/// Registers a ring of `count` buffers of `size` bytes each with the io_uring ring of the
/// worker running the callback that received `ctx`, and stores its buffer group id in
/// `*group` (pass it to `veloq_recv_multishot`). Every buffer starts in the ring, owned
/// by the kernel until a completion names it. The ring belongs to that worker: only
/// receives submitted on it use it, and every `veloq_buf_ring_*` call on it must be made
/// there. Needs Linux 5.19 (multishot receives: 6.0).
///
/// Returns 0; -EINVAL (NULL `group`, `count` not a power of two in
/// 1..=VELOQ_BUF_RING_MAX_COUNT, `size` 0, `ctx` NULL or not the context of the callback
/// running on this thread); -ENOMEM; -EOPNOTSUPP when the kernel has no provided-buffer
/// rings; another negative errno from the kernel. On error nothing is registered and
/// `*group` is untouched. Only inside a worker callback, with its `ctx`. Free it with
/// `veloq_buf_ring_free`; the runtime frees what is left when its worker ends.
#[no_mangle]
pub extern "C" fn veloq_buf_ring_new(
    ctx: *mut veloq_ctx,
    count: u32,
    size: u32,
    group: *mut u16,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if group.is_null() || !count.is_power_of_two() || count > VELOQ_BUF_RING_MAX_COUNT {
            return -libc::EINVAL;
        }
        if size == 0 {
            return -libc::EINVAL;
        }
        match running_ctx(ctx, |cx| cx.buf_ring_new(count as usize, size as usize)) {
            None => -libc::EINVAL,
            Some(Err(e)) => e,
            Some(Ok(g)) => {
                // SAFETY: `group` checked non-null; the C caller's promise that it is
                // writable.
                unsafe { *group = g };
                0
            }
        }
    })
}

/// Takes the buffer a completion of a receive on ring `group` names: `flags` is that
/// completion's flags (`VELOQ_CQE_F_BUFFER` set, id in the upper 16 bits). Stores the
/// buffer's address in `*data` and returns its id (>= 0). Its first `res` bytes (the
/// completion's result) hold the data; it has the ring's `size` bytes. It is the
/// caller's until `veloq_buf_ring_recycle(ctx, group, id)`, also across callbacks on
/// the same worker; the kernel does not use it meanwhile.
///
/// Call it once per completion, before any recycle of that id. Returns -ENODATA when
/// `flags` names no buffer (no `VELOQ_CQE_F_BUFFER`: e.g. an error or end of stream);
/// -ENOENT when this worker has no ring `group` (never made, freed, or another
/// worker's); -EALREADY when that buffer is taken already (not recycled since);
/// -EINVAL (NULL `data`, id out of range, `ctx` NULL or not the running callback's).
/// On error `*data` is untouched and nothing changes. Only inside a callback on the
/// ring's worker, with its `ctx`.
#[no_mangle]
pub extern "C" fn veloq_buf_ring_take(
    ctx: *mut veloq_ctx,
    group: u16,
    flags: u32,
    data: *mut *mut c_void,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if data.is_null() {
            return -libc::EINVAL;
        }
        if flags & VELOQ_CQE_F_BUFFER == 0 {
            return -libc::ENODATA;
        }
        let bid = (flags >> VELOQ_CQE_BUFFER_SHIFT) as u16;
        match running_ctx(ctx, |cx| cx.buf_ring_take(group, bid)) {
            None => -libc::EINVAL,
            Some(Err(e)) => e,
            Some(Ok(p)) => {
                // SAFETY: `data` checked non-null; the C caller's promise that it is
                // writable.
                unsafe { *data = p.cast() };
                c_int::from(bid)
            }
        }
    })
}

/// Gives buffer `id` (returned by `veloq_buf_ring_take`) back to ring `group`, where the
/// next receive may fill it: the caller must not touch it afterwards. Returns 0;
/// -ENOENT when this worker has no ring `group`; -EINVAL (`id` not taken: never, or
/// recycled already; `ctx` NULL or not the running callback's), changing nothing. Only
/// inside a callback on the ring's worker, with its `ctx`. A multishot receive that
/// ended with -ENOBUFS is not re-armed by this: call `veloq_recv_multishot` again.
#[no_mangle]
pub extern "C" fn veloq_buf_ring_recycle(ctx: *mut veloq_ctx, group: u16, id: u16) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        match running_ctx(ctx, |cx| cx.buf_ring_recycle(group, id)) {
            None => -libc::EINVAL,
            Some(Err(e)) => e,
            Some(Ok(())) => 0,
        }
    })
}

/// Unregisters ring `group` and frees its buffers. Refused with -EBUSY (the ring stays
/// as it was) while it is in use: a buffer is taken and not recycled, or a
/// `veloq_recv_multishot` on the group has not delivered its final completion (cancel
/// it with `veloq_cancel` and free the ring from, or after, that final callback). A
/// buffer a delivered completion names but nobody took does not hold the ring: freeing
/// drops its data (take it first).
/// Returns 0; -EBUSY; -ENOENT when this worker has no ring `group` (freed already,
/// another worker's); -EINVAL (`ctx` NULL or not the running callback's). The group
/// id may be reused by a later `veloq_buf_ring_new`. Only inside a callback on the
/// ring's worker, with its `ctx`. Rings never freed are freed when the runtime's
/// worker ends (shutdown).
#[no_mangle]
pub extern "C" fn veloq_buf_ring_free(ctx: *mut veloq_ctx, group: u16) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        match running_ctx(ctx, |cx| cx.buf_ring_free(group)) {
            None => -libc::EINVAL,
            Some(Err(e)) => e,
            Some(Ok(())) => 0,
        }
    })
}
