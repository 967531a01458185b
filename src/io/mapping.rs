//! [`Mapping`]: an anonymous, private read-write memory mapping, unmapped on drop. The
//! memory behind buffer-pool classes and provided-buffer rings.

use std::io;
use std::ptr::NonNull;

/// An anonymous mapping of `len` bytes at `ptr` (page aligned); unmapped on drop.
pub(crate) struct Mapping {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: plain memory with no thread affinity; who may touch which bytes is decided by
// the owner (a pool gives each buffer one owner at a time; a buffer ring is !Send).
unsafe impl Send for Mapping {}
// SAFETY: as above; the mapping itself is never changed after creation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` fresh zeroed bytes.
    pub(crate) fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    /// A mapping of length 0 that unmaps nothing (munmap of length 0 fails harmlessly);
    /// what is left in place of a mapping that was leaked on purpose.
    pub(crate) fn dangling() -> Mapping {
        Mapping {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; its owner guarantees nothing points
        // into it any more (pool buffers hold the pool's shared state alive; a buffer
        // ring leaks its mapping while the kernel may still write it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
