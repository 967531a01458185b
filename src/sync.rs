//! One place that picks the synchronisation primitives: `std` normally, `loom` under
//! `--cfg veloq_loom`, so the lock-free state machines are model-checked with the same
//! code that ships. (Not plain `--cfg loom`: the benchmark peers among the
//! dev-dependencies, Tokio and concurrent-queue, read `cfg(loom)` as their own and stop
//! building under it.)
#![allow(unused_imports, dead_code)]

#[cfg(veloq_loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize},
    sync::{Arc, Mutex},
};

#[cfg(not(veloq_loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize},
    Arc, Mutex,
};

/// `UnsafeCell` with loom's closure-based access API, so code reads the same under both.
#[cfg(not(veloq_loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(veloq_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared raw pointer to the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a mutable raw pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spin-loop hint that loom understands as a yield point.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(veloq_loom)]
    loom::thread::yield_now();
    #[cfg(not(veloq_loom))]
    std::hint::spin_loop();
}
