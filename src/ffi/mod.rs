//! The C ABI. Every exported function checks its arguments, converts them, calls the
//! Rust API and converts the result back; nothing else. Each body runs inside
//! `ffi_boundary!` (defined below), so no panic ever unwinds into C.
//!
//! Conventions (the header repeats them): negative errno on failure, out-parameters
//! written only on success, `_free(NULL)` is a no-op, bad input changes nothing.

// Every exported function takes raw pointers from C and checks them before use; marking
// them `unsafe fn` would tell C callers nothing.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// The C names are the contract.
#![allow(non_camel_case_types)]

/// Runs `$body` and turns a panic into `$on_panic`: the one panic boundary of the C ABI.
macro_rules! ffi_boundary {
    ($on_panic:expr, $body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => $on_panic,
        }
    };
}

mod cq;
mod error;
mod runtime;
mod task;
mod version;
// After the task API: blocking jobs are tasks run off the workers.
mod blocking;
// Names, stall detection, statistics and the dump: after the task API.
mod introspect;
// After the task API: the header reads tasks, then worker-side and host-side I/O.
mod io;
mod submit;
// Synchronous listener and datagram socket set-up: after the I/O calls that use them.
mod net;
// Task groups: after tasks and I/O, whose callbacks they group.
mod group;

// After the others in the header (cbindgen keeps this order): buffers come last, as in
// the API contract.
mod buf;
// Provided-buffer rings: after the buffers.
mod buf_ring;

pub use blocking::*;
pub use buf::*;
pub use buf_ring::*;
pub use cq::*;
pub use error::*;
pub use group::*;
pub use introspect::*;
pub use io::*;
pub use net::*;
pub use runtime::*;
pub use submit::*;
pub use task::*;
pub use version::*;

/// Borrows a handle, or fails with `-EINVAL` when it is NULL.
///
/// # Safety
/// A non-null `p` points to a live `T` (the C caller's promise).
pub(crate) unsafe fn handle<'a, T>(p: *const T) -> Result<&'a T, i32> {
    // SAFETY: caller's promise for non-null pointers.
    unsafe { p.as_ref() }.ok_or(-libc::EINVAL)
}

/// Folds `Ok(v)` / `Err(-errno)` into one C return value.
pub(crate) fn result_code(r: Result<i32, i32>) -> i32 {
    r.unwrap_or_else(|e| e)
}
