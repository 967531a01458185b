//! A counting global allocator for memory scenarios.
//!
//! A bench installs it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
//! Counting is off except inside a [`Window`], so the timed scenarios pay one relaxed load
//! of a flag that never changes under them, and no shared counter traffic.
//!
//! Inside a window the counter is the net heap growth of the whole process (every thread):
//! bytes allocated minus bytes freed since the window opened, whoever allocated them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

static COUNTING: AtomicBool = AtomicBool::new(false);
static NET_BYTES: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, plus net byte counting while a [`Window`] is open.
pub struct CountingAlloc;

#[inline]
fn count(delta: isize) {
    if COUNTING.load(Relaxed) {
        NET_BYTES.fetch_add(delta, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// An open counting window; one at a time.
pub struct Window(());

impl Window {
    /// Starts counting from zero.
    pub fn open() -> Window {
        assert!(!COUNTING.load(Relaxed), "one counting window at a time");
        NET_BYTES.store(0, Relaxed);
        COUNTING.store(true, Relaxed);
        Window(())
    }

    /// Net heap growth since the window opened.
    pub fn net_bytes(&self) -> isize {
        NET_BYTES.load(Relaxed)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        COUNTING.store(false, Relaxed);
    }
}
