//! The per-worker io_uring driver. For now it gives the worker a place to sleep: the
//! worker parks in `io_uring_enter` with a read of its eventfd armed, and a notifier
//! wakes it by writing that eventfd.
//!
//! One exception: valgrind up to at least 3.19 (Debian 12's) does not know that
//! `io_uring_enter` may block, so a worker sleeping there holds valgrind's global lock and
//! freezes every other thread. Under valgrind (seen in `LD_PRELOAD`) the worker parks in
//! `poll(2)` on the same eventfd instead.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// `user_data` of the armed eventfd read.
const WAKE_TOKEN: u64 = u64::MAX;

/// One worker's ring.
pub(crate) struct Driver {
    ring: IoUring,
    eventfd: RawFd,
    /// Where the armed read puts the eventfd counter; boxed so its address is stable
    /// while the kernel may write it.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Park in poll(2) rather than io_uring_enter (under valgrind, see the module doc).
    park_in_poll: bool,
    /// Which set-up flags the kernel accepted.
    flags: RingFlags,
}

/// The optional set-up flags, each probed on its own.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RingFlags {
    pub(crate) single_issuer: bool,
    pub(crate) defer_taskrun: bool,
    pub(crate) coop_taskrun: bool,
}

impl RingFlags {
    /// As the `WorkerStats::ring_flags` bits.
    pub(crate) fn bits(self) -> u32 {
        use crate::runtime::WorkerStats as S;
        (self.single_issuer as u32 * S::RING_SINGLE_ISSUER)
            | (self.defer_taskrun as u32 * S::RING_DEFER_TASKRUN)
            | (self.coop_taskrun as u32 * S::RING_COOP_TASKRUN)
    }
}

impl Driver {
    /// Creates the ring on the calling thread (the only thread that will submit to it).
    /// Optional flags the kernel refuses are dropped one by one; an error is returned
    /// only when even a plain ring cannot be made.
    pub(crate) fn new(entries: u32, eventfd: RawFd) -> io::Result<Driver> {
        let (ring, flags) = Self::build_ring(entries)?;
        Ok(Driver {
            ring,
            eventfd,
            wake_buf: Box::new(0),
            wake_armed: false,
            park_in_poll: running_under_valgrind(),
            flags,
        })
    }

    /// Which optional set-up flags the kernel accepted.
    pub(crate) fn flags(&self) -> RingFlags {
        self.flags
    }

    /// The ring's register interface (fixed buffers, provided-buffer rings).
    pub(crate) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    fn build_ring(entries: u32) -> io::Result<(IoUring, RingFlags)> {
        // Most capable first; DEFER_TASKRUN requires SINGLE_ISSUER.
        let attempts = [
            RingFlags {
                single_issuer: true,
                defer_taskrun: true,
                coop_taskrun: true,
            },
            RingFlags {
                single_issuer: true,
                defer_taskrun: false,
                coop_taskrun: true,
            },
            RingFlags {
                single_issuer: true,
                defer_taskrun: false,
                coop_taskrun: false,
            },
            RingFlags {
                single_issuer: false,
                defer_taskrun: false,
                coop_taskrun: true,
            },
            RingFlags::default(),
        ];
        let mut last_err = None;
        for flags in attempts {
            let mut b = IoUring::builder();
            if flags.single_issuer {
                b.setup_single_issuer();
            }
            if flags.defer_taskrun {
                b.setup_defer_taskrun();
            }
            if flags.coop_taskrun {
                b.setup_coop_taskrun();
            }
            match b.build(entries) {
                Ok(ring) => return Ok((ring, flags)),
                // EINVAL may mean "flag unknown": try the next, simpler set.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
                Err(e) => return Err(describe(e, entries)),
            }
        }
        Err(describe(last_err.expect("at least one attempt"), entries))
    }

    /// Sleeps until the eventfd is written (or the kernel wakes the ring otherwise).
    pub(crate) fn park(&mut self) {
        if self.park_in_poll {
            self.park_in_poll();
            return;
        }
        if !self.wake_armed {
            let read = opcode::Read::new(
                types::Fd(self.eventfd),
                &mut *self.wake_buf as *mut u64 as *mut u8,
                8,
            )
            .build()
            .user_data(WAKE_TOKEN);
            // SAFETY: the buffer is boxed and owned by the driver until the read
            // completes (the driver is dropped only after a final drain, see Drop).
            if unsafe { self.ring.submission().push(&read) }.is_err() {
                // Cannot happen with an otherwise idle ring; fall back to not sleeping.
                return;
            }
            self.wake_armed = true;
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return,
        }
        self.reap();
    }

    fn park_in_poll(&mut self) {
        let mut pfd = libc::pollfd {
            fd: self.eventfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the result is only a hint (EINTR is fine).
        unsafe { libc::poll(&mut pfd, 1, -1) };
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a u64; the eventfd is non-blocking.
        unsafe { libc::read(self.eventfd, &mut count as *mut u64 as *mut _, 8) };
    }

    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            if cqe.user_data() == WAKE_TOKEN {
                self.wake_armed = false;
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.wake_armed {
            // Make the armed read finish so the kernel no longer owns `wake_buf`.
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.eventfd, &one as *const u64 as *const _, 8) };
            while self.wake_armed {
                if self.ring.submit_and_wait(1).is_err() {
                    break;
                }
                self.reap();
            }
        }
    }
}

/// Whether this process runs under valgrind (its preload library is in LD_PRELOAD).
fn running_under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
}

/// An io_uring set-up error with the likely reason spelled out.
fn describe(e: io::Error, entries: u32) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not available in this kernel",
        Some(libc::EPERM) => "io_uring is forbidden here (seccomp or io_uring_disabled)",
        Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
        Some(libc::EINVAL) => "the kernel refused the ring parameters (entries out of range?)",
        _ => "io_uring_setup failed",
    };
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    crate::runtime::OsError::new(
        errno,
        format!("cannot create an io_uring ring of {entries} entries: {why} ({e})"),
    )
    .into()
}

#[cfg(all(test, not(veloq_loom)))]
mod tests {
    use super::*;

    fn eventfd() -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall, result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh fd we own.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_ring_is_made_with_the_flags_the_kernel_accepts() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let driver = Driver::new(8, efd.as_raw_fd()).expect("ring");
        let flags = driver.flags();
        // DEFER_TASKRUN is only ever asked for together with SINGLE_ISSUER.
        assert!(!flags.defer_taskrun || flags.single_issuer, "{flags:?}");
    }

    #[test]
    fn an_impossible_ring_fails_with_errno_and_reason() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let err = Driver::new(0, efd.as_raw_fd())
            .err()
            .expect("0 entries is refused");
        assert_eq!(crate::OsError::errno_of(&err), libc::EINVAL);
        assert!(err.to_string().contains("entries"), "{err}");
    }

    #[test]
    fn a_written_eventfd_wakes_a_parked_driver() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let mut driver = Driver::new(8, efd.as_raw_fd()).expect("ring");
        let fd = efd.as_raw_fd();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let one: u64 = 1;
            // SAFETY: 8 bytes from a u64 to an eventfd.
            unsafe { libc::write(fd, &one as *const u64 as *const _, 8) };
        });
        driver.park(); // returns only once the eventfd read completed
        assert!(!driver.wake_armed);
        waker.join().unwrap();
    }

    #[test]
    fn the_valgrind_park_in_poll_is_woken_the_same_way() {
        use std::os::fd::AsRawFd;
        let efd = eventfd();
        let mut driver = Driver::new(8, efd.as_raw_fd()).expect("ring");
        driver.park_in_poll = true;
        let fd = efd.as_raw_fd();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let one: u64 = 1;
            // SAFETY: 8 bytes from a u64 to an eventfd.
            unsafe { libc::write(fd, &one as *const u64 as *const _, 8) };
        });
        driver.park();
        waker.join().unwrap();
        let mut left: u64 = 0;
        // SAFETY: 8-byte read into a u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(fd, &mut left as *mut u64 as *mut _, 8) };
        assert_eq!(n, -1, "the park consumed the wake-up");
    }
}
