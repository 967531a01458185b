//! [`IoFd`]: an owned descriptor that is safe to close while operations on it may
//! still sit in the worker's submission queue.
//!
//! An operation names its descriptor by number, and the kernel looks the number up
//! when the entry is submitted, not when it was queued. Closing a descriptor with
//! entries for it still queued, and the number then being reused by a new file, would
//! let those entries act on the wrong file. Once submitted, an operation holds its own
//! reference to the file, so closing is harmless. `IoFd` therefore hands the current
//! worker's queued entries to the kernel before it closes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::runtime::RuntimeContext;

/// An owned file descriptor, closed on drop after the current worker's queued
/// submissions were handed to the kernel.
#[derive(Debug)]
pub(crate) struct IoFd(Option<OwnedFd>);

impl IoFd {
    #[inline]
    fn inner(&self) -> &OwnedFd {
        self.0
            .as_ref()
            .expect("an IoFd holds its descriptor until dropped")
    }
}

impl From<OwnedFd> for IoFd {
    fn from(fd: OwnedFd) -> IoFd {
        IoFd(Some(fd))
    }
}

impl FromRawFd for IoFd {
    unsafe fn from_raw_fd(fd: RawFd) -> IoFd {
        // SAFETY: the caller gives us ownership of an open descriptor.
        IoFd(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl IntoRawFd for IoFd {
    fn into_raw_fd(mut self) -> RawFd {
        self.0.take().expect("held until dropped").into_raw_fd()
    }
}

impl AsRawFd for IoFd {
    #[inline]
    fn as_raw_fd(&self) -> RawFd {
        self.inner().as_raw_fd()
    }
}

impl AsFd for IoFd {
    #[inline]
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner().as_fd()
    }
}

impl Drop for IoFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            flush_queued_submissions();
            drop(fd);
        }
    }
}

/// Hands this worker's queued submissions to the kernel (no-op off a worker, or when
/// nothing is queued, or when the driver is busy on this thread).
pub(crate) fn flush_queued_submissions() {
    RuntimeContext::with_current(|cx| {
        if let Some(cx) = cx {
            if let Ok(mut driver) = cx.driver.try_borrow_mut() {
                driver.flush_queued();
            }
        }
    });
}

/// The descriptor traits of a type holding its descriptor in an `fd: IoFd` field:
/// `AsRawFd`, `AsFd`, `IntoRawFd`, and `FromRawFd` (whose caller must pass `$what` it
/// owns; it is closed on drop). A third argument names the type's
/// `fn(IoFd) -> Self` that `FromRawFd` makes the value with, for a type with more fields.
macro_rules! impl_fd_traits {
    (@borrow $ty:ident) => {
        impl std::os::fd::AsRawFd for $ty {
            #[inline]
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&self.fd)
            }
        }

        impl std::os::fd::AsFd for $ty {
            #[inline]
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.fd)
            }
        }

        impl std::os::fd::IntoRawFd for $ty {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.fd)
            }
        }
    };
    ($ty:ident, $what:literal) => {
        crate::io::fd::impl_fd_traits!(@borrow $ty);

        impl std::os::fd::FromRawFd for $ty {
            #[doc = concat!("# Safety\n`fd` must be ", $what, " the caller owns (closed on drop).")]
            unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> $ty {
                $ty {
                    // SAFETY: forwarded promise.
                    fd: unsafe { <crate::io::fd::IoFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                }
            }
        }
    };
    // As above, with `FromRawFd` making the value by `$ty::$from_io_fd(IoFd)` (a type
    // with more than its descriptor).
    ($ty:ident, $what:literal, $from_io_fd:ident) => {
        crate::io::fd::impl_fd_traits!(@borrow $ty);

        impl std::os::fd::FromRawFd for $ty {
            #[doc = concat!("# Safety\n`fd` must be ", $what, " the caller owns (closed on drop).")]
            unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> $ty {
                // SAFETY: forwarded promise.
                $ty::$from_io_fd(unsafe {
                    <crate::io::fd::IoFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                })
            }
        }
    };
}
pub(crate) use impl_fd_traits;
