//! Error codes and their descriptions.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

/// The call hit an internal bug (a Rust panic was caught at the boundary). Nothing was
/// accepted; the runtime stays usable. libveloq's own codes live below -4096, away from
/// every errno.
pub const VELOQ_EPANIC: c_int = -4097;

/// Describes any return value of libveloq: 0, a negative errno, or a `VELOQ_E*` code.
/// The string is static and must not be freed. Callable from any thread.
#[no_mangle]
pub extern "C" fn veloq_strerror(err: c_int) -> *const c_char {
    let s: &'static [u8] = match err {
        0 => b"success\0",
        VELOQ_EPANIC => b"internal error in libveloq (panic caught); the runtime stays usable\0",
        e if e > 0 => b"not an error code (positive value)\0",
        e => match e.wrapping_neg() {
            libc::EINVAL => b"invalid argument\0",
            libc::ENOMEM => b"out of memory\0",
            libc::EAGAIN => b"resource temporarily unavailable\0",
            libc::EBUSY => b"busy: completions are still owed\0",
            libc::ECANCELED => b"operation cancelled\0",
            libc::ETIMEDOUT => b"timed out\0",
            libc::ESHUTDOWN => b"the runtime is shutting down\0",
            libc::EDEADLK => b"refused: would deadlock (called from the runtime's own worker or blocking thread)\0",
            libc::ENOSYS => b"function not implemented (io_uring unavailable?)\0",
            libc::EPERM => b"operation not permitted\0",
            libc::EACCES => b"permission denied\0",
            libc::EBADF => b"bad file descriptor\0",
            libc::EFAULT => b"bad address\0",
            libc::EINTR => b"interrupted system call\0",
            libc::EIO => b"input/output error\0",
            libc::ENOENT => b"no such file or directory\0",
            libc::EEXIST => b"file exists\0",
            libc::EMFILE => b"too many open files\0",
            libc::ENFILE => b"too many open files in system\0",
            libc::ENOSPC => b"no space left on device\0",
            libc::EPIPE => b"broken pipe\0",
            libc::ECONNREFUSED => b"connection refused\0",
            libc::ECONNRESET => b"connection reset by peer\0",
            libc::ENOTCONN => b"socket not connected\0",
            libc::EADDRINUSE => b"address already in use\0",
            libc::EADDRNOTAVAIL => b"address not available on this host\0",
            libc::EAFNOSUPPORT => b"address family not supported\0",
            libc::EOVERFLOW => b"value too large\0",
            e => return system_text(e).map_or(c"unknown error".as_ptr(), CStr::as_ptr),
        },
    };
    s.as_ptr() as *const c_char
}

/// Largest errno given the C library's text: Linux's stop well below it.
const MAX_SYSTEM_ERRNO: c_int = 255;

/// The C library's description of errno `e` (-ETIME, -ENOBUFS, ... which the table above
/// has no text of its own for), made once for every errno and kept for the process's
/// life; None for a value that is no errno.
fn system_text(e: c_int) -> Option<&'static CStr> {
    static TEXTS: OnceLock<Vec<Option<CString>>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (0..=MAX_SYSTEM_ERRNO)
            .map(|e| {
                let mut buf = [0u8; 128];
                // SAFETY: the buffer is writable for its length (the XSI strerror_r, the
                // one the libc crate binds, writes at most that much).
                let rc = unsafe { libc::strerror_r(e, buf.as_mut_ptr().cast(), buf.len()) };
                let text = CStr::from_bytes_until_nul(&buf).ok().filter(|_| rc == 0)?;
                (!text.to_bytes().starts_with(b"Unknown error")).then(|| text.to_owned())
            })
            .collect()
    });
    texts.get(usize::try_from(e).ok()?)?.as_deref()
}
