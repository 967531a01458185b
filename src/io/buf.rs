//! Buffers that can be handed to the kernel.
//!
//! Completion I/O lends a buffer to the kernel until the operation completes, so the
//! API takes buffers by value and gives them back with the result
//! (`read(buf) -> (io::Result<usize>, buf)`). A buffer type qualifies when its memory
//! does not move when the value moves (it lives on the heap or is `'static`).

/// A buffer the kernel may read from: `bytes_init()` bytes at `stable_ptr()`.
///
/// # Safety
/// The pointer must stay valid, and the memory must not move, while the value is moved
/// around, for as long as the value lives and is not mutated through other means.
pub unsafe trait IoBuf: Unpin + 'static {
    /// The first byte.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes are initialised (what a write sends).
    fn bytes_init(&self) -> usize;
    /// How many bytes fit.
    fn bytes_total(&self) -> usize;
}

/// A buffer the kernel may write into: up to `bytes_total()` bytes at `stable_mut_ptr()`.
///
/// # Safety
/// As for [`IoBuf`]; and `set_init(n)` is only called once `n` bytes were written.
pub unsafe trait IoBufMut: IoBuf {
    /// The first byte, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Marks the first `n` bytes as initialised (after the kernel wrote them).
    ///
    /// # Safety
    /// The first `n` bytes must have been written.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap buffer does not move when the Vec does.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; `set_init` only grows `len` over bytes the kernel wrote.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller promises the first `n` (<= capacity) bytes are written.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: a boxed slice's memory does not move with the box.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; the whole slice is always initialised.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

// SAFETY: static memory never moves and is never freed.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above.
unsafe impl IoBuf for &'static str {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

// SAFETY: a PoolBuf's memory is a pool arena or a plain allocation that does not move
// with the handle and stays valid while the handle lives.
unsafe impl IoBuf for super::buffers::PoolBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; every byte up to the capacity is initialised memory, and
// `set_init` only grows `len` (capped at the capacity).
unsafe impl IoBufMut for super::buffers::PoolBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            self.set_len(n.min(self.capacity()));
        }
    }
}

/// A heap buffer whose first byte is aligned to `align` bytes (a power of two), for
/// `O_DIRECT` files, which need the buffer, the length and the offset aligned to the
/// device's logical block size (4096 is always enough). All `len` bytes are always
/// initialised (zeroed at first).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: an AlignedBuf owns its memory exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes at an `align`-byte boundary.
    ///
    /// # Panics
    /// When `align` is not a power of two, `len` is 0, or the allocation fails.
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        assert!(len > 0, "AlignedBuf of 0 bytes");
        let layout = std::alloc::Layout::from_size_align(len, align)
            .expect("align must be a power of two and len fit isize");
        // SAFETY: the layout's size is not zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false (an `AlignedBuf` is never empty).
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes we own exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

// SAFETY: the heap memory does not move with the value and lives until drop.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.layout.size()
    }
    fn bytes_total(&self) -> usize {
        self.layout.size()
    }
}

// SAFETY: as above; the whole buffer is always initialised.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}
