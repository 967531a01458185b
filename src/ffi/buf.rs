//! Buffers from the workers' pools.

use std::ffi::{c_int, c_void};
use std::ptr;

use super::error::VELOQ_EPANIC;
use super::task::veloq_ctx;
use crate::runtime::RuntimeContext;
use crate::{PoolBuf, PoolStats};

/// Largest buffer `veloq_buf_alloc` hands out: 1 GiB.
pub const VELOQ_BUF_MAX_SIZE: u32 = 1 << 30;

/// An I/O buffer from a worker's pool: 4 KiB aligned, `veloq_buf_capacity` bytes, and,
/// when the pool is registered with the worker's io_uring ring, a fixed-buffer index.
/// Owned by whoever allocated it until `veloq_buf_free`, which may be called from any
/// thread (the buffer goes back to the pool of the worker that allocated it). It stays
/// valid after its runtime was freed.
pub struct veloq_buf {
    pub(super) inner: PoolBuf,
}

/// A worker's buffer pool counters (`veloq_buf_pool_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct veloq_buf_stats {
    /// Buffers handed out (pooled and plain).
    pub allocs: u64,
    /// Pool buffers back in the pool (freed on the worker, or taken back from other
    /// threads).
    pub frees: u64,
    /// Of `frees`: buffers freed on another thread and taken back by the worker.
    pub cross_thread_frees: u64,
    /// Allocations served by a larger size class because the best fitting was empty.
    pub spills: u64,
    /// Allocations served by a plain, unregistered allocation: larger than the largest
    /// class (1 MiB), or every fitting class was empty.
    pub plain_allocs: u64,
    /// Pool buffers free right now.
    pub free_buffers: u64,
    /// Bytes of pool memory of the worker.
    pub pool_bytes: u64,
    /// Bytes registered with the worker's ring; 0 when registration failed.
    pub registered_bytes: u64,
    /// Fixed-buffer regions registered with the worker's ring.
    pub registered_regions: u32,
    /// 0 when the pool is registered (or empty); else the negative errno registration
    /// failed with (-ENOMEM under RLIMIT_MEMLOCK, -EPERM, ...): the pool then hands out
    /// unregistered buffers (`veloq_buf_index` gives -ENOENT).
    pub registration_error: i32,
}

impl From<PoolStats> for veloq_buf_stats {
    fn from(s: PoolStats) -> Self {
        veloq_buf_stats {
            allocs: s.allocs,
            frees: s.frees,
            cross_thread_frees: s.cross_thread_frees,
            spills: s.spills,
            plain_allocs: s.plain_allocs,
            free_buffers: s.free_buffers,
            pool_bytes: s.pool_bytes,
            registered_bytes: s.registered_bytes,
            registered_regions: s.registered_regions,
            registration_error: -s.registration_errno,
        }
    }
}

/// The context of the callback running on this thread, if `ctx` is exactly that one.
/// Compares addresses before anything is dereferenced, so a stale or foreign `ctx` is
/// refused instead of read.
pub(super) fn running_ctx<R>(
    ctx: *mut veloq_ctx,
    f: impl FnOnce(&RuntimeContext) -> R,
) -> Option<R> {
    RuntimeContext::with_current(|cx| {
        cx.filter(|cx| ptr::eq(*cx as *const RuntimeContext, ctx as *const RuntimeContext))
            .map(f)
    })
}

/// Allocates a buffer of at least `size` bytes (1..=VELOQ_BUF_MAX_SIZE) from the pool
/// of the worker running the callback that received `ctx`, and stores it in `*out`.
/// The buffer is 4 KiB aligned; its capacity is its size class (4 KiB, 16 KiB, 64 KiB,
/// 256 KiB, 1 MiB) or, when every fitting class is empty or `size` is above 1 MiB, `size`
/// rounded up to 4 KiB from a plain unregistered allocation. Its contents are
/// unspecified (what its last user left). O(1).
///
/// Returns 0; -EINVAL (NULL `out`, `size` 0 or above VELOQ_BUF_MAX_SIZE, `ctx` NULL or
/// not the context of the callback running on this thread; `*out` untouched); -ENOMEM.
/// Only inside a worker callback, with its `ctx`. Free the buffer with `veloq_buf_free`.
/// The buffer itself may then go to any thread: a host thread reads and writes files
/// through it with `veloq_submit` (VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED).
#[no_mangle]
pub extern "C" fn veloq_buf_alloc(
    ctx: *mut veloq_ctx,
    size: u32,
    out: *mut *mut veloq_buf,
) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if out.is_null() || size == 0 || size > VELOQ_BUF_MAX_SIZE {
            return -libc::EINVAL;
        }
        match running_ctx(ctx, |cx| cx.alloc_buf(size as usize)) {
            None => -libc::EINVAL,
            Some(Err(e)) => -crate::OsError::errno_of(&e),
            Some(Ok(inner)) => {
                // SAFETY: `out` checked non-null; the C caller's promise that it is writable.
                unsafe { *out = Box::into_raw(Box::new(veloq_buf { inner })) };
                0
            }
        }
    })
}

/// The first byte of the buffer (4 KiB aligned; `veloq_buf_capacity` bytes are usable);
/// NULL for NULL. Valid until `veloq_buf_free`. Callable from any thread that owns the
/// buffer.
#[no_mangle]
pub extern "C" fn veloq_buf_data(b: *mut veloq_buf) -> *mut c_void {
    ffi_boundary!(ptr::null_mut(), {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet. Only
        // shared: a worker may be reading the buffer's fields for an operation meanwhile.
        match unsafe { b.as_ref() } {
            None => ptr::null_mut(),
            // The bytes are the buffer's own allocation, not the `veloq_buf`: the caller
            // owning the buffer may write them.
            Some(b) => b.inner.as_ptr().cast_mut().cast(),
        }
    })
}

/// The buffer's size in bytes (a multiple of 4096, at least the size asked for); 0 for
/// NULL. Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_buf_capacity(b: *const veloq_buf) -> u32 {
    ffi_boundary!(0, {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet.
        unsafe { b.as_ref() }.map_or(0, |b| b.inner.capacity() as u32)
    })
}

/// The fixed-buffer index (>= 0) under which the buffer is registered with the io_uring
/// ring of the worker that allocated it; -ENOENT when it is not registered (plain
/// allocation, or the pool's registration failed); -EINVAL for NULL. Callable from any
/// thread. `veloq_read_fixed` / `veloq_write_fixed` use it by themselves; this is for
/// statistics and checks.
#[no_mangle]
pub extern "C" fn veloq_buf_index(b: *const veloq_buf) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet.
        match unsafe { b.as_ref() } {
            None => -libc::EINVAL,
            Some(b) => b.inner.buf_index().map_or(-libc::ENOENT, c_int::from),
        }
    })
}

/// The index of the worker whose pool made the buffer, in the runtime that worker
/// belongs to (the worker on whose ring the buffer is registered, when it is: where
/// VELOQ_OP_READ_FIXED / VELOQ_OP_WRITE_FIXED use the fixed-buffer path); -ENOENT for a
/// plain allocation (above 1 MiB, or every fitting class was empty), which belongs to no
/// worker; -EINVAL for NULL. Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_buf_worker(b: *const veloq_buf) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        // SAFETY: a non-null buffer comes from veloq_buf_alloc and is not freed yet.
        match unsafe { b.as_ref() } {
            None => -libc::EINVAL,
            Some(b) => b.inner.worker().map_or(-libc::ENOENT, |w| w as c_int),
        }
    })
}

/// Gives the buffer back to the pool of the worker that allocated it. Callable from any
/// thread: on that worker it is free again at once; elsewhere it is queued for the
/// worker without touching the worker's own state, and taken back on its next
/// allocation. After its runtime was freed the memory is simply released. NULL is a
/// no-op. No other call may use `b` during or after this one.
#[no_mangle]
pub extern "C" fn veloq_buf_free(b: *mut veloq_buf) {
    ffi_boundary!((), {
        if !b.is_null() {
            // SAFETY: made by Box::into_raw in veloq_buf_alloc; the caller frees it once.
            drop(unsafe { Box::from_raw(b) });
        }
    })
}

/// Stores the buffer pool counters of the worker running the callback that received
/// `ctx` in `*out` (after taking back buffers freed on other threads). Returns 0, or
/// -EINVAL (NULL `out`, `ctx` NULL or not the context of the callback running on this
/// thread; `*out` untouched). Only inside a worker callback, with its `ctx`.
#[no_mangle]
pub extern "C" fn veloq_buf_pool_stats(ctx: *mut veloq_ctx, out: *mut veloq_buf_stats) -> c_int {
    ffi_boundary!(VELOQ_EPANIC, {
        if out.is_null() {
            return -libc::EINVAL;
        }
        match running_ctx(ctx, |cx| cx.buffer_pool_stats()) {
            None => -libc::EINVAL,
            Some(stats) => {
                // SAFETY: `out` checked non-null; the C caller's promise that it is writable.
                unsafe { *out = stats.into() };
                0
            }
        }
    })
}
