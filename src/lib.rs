//! libveloq: a thread-per-core async runtime on io_uring.
//!
//! Each worker thread owns an io_uring ring, a local run queue of tasks that never leave
//! it, a stealable injector, a pinned inbox and its inbound channels of the **mesh**, an
//! N×N matrix of single-producer single-consumer channels between workers. Work reaches
//! a worker by one of four doors:
//!
//! | door | from a worker | from another thread | may move |
//! |---|---|---|---|
//! | [`spawn_local`] | local run queue | — | never |
//! | [`spawn`] | own injector | some worker's injector | stolen by idle workers |
//! | [`spawn_balanced`] | the less loaded of two (P2C): mesh channel to the chosen worker, or own injector | that worker's injector | stolen from an injector |
//! | [`spawn_to`] | mesh channel to that worker | that worker's pinned inbox | never |
//!
//! Blocking system calls and long computations go to a separate, elastic thread pool
//! with [`spawn_blocking`] (C: `veloq_spawn_blocking`), never to a worker.
//!
//! The same core is exported to C as `libveloq.so` (see `include/veloq.h`).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod sync;

pub mod ffi;
pub mod fs;
pub mod io;
pub mod net;
pub mod runtime;
pub mod time;

pub use io::buffers::{BufferPoolConfig, PoolBuf, PoolStats};
pub use runtime::{
    completion::{CompletionQueue, Cqe},
    consume_budget, spawn, spawn_balanced, spawn_blocking, spawn_local, spawn_to, worker_index,
    yield_now, BlockingJoinHandle, BlockingStats, Handle, JoinError, JoinHandle, LocalJoinHandle,
    OsError, Placement, RawTask, RawTaskFn, Runtime, RuntimeBuilder, RuntimeContext, ShutdownError,
    SpawnError, SpawnErrorKind, WorkerStats,
};
// Structured concurrency (issue #5).
pub use runtime::{scope, Scope, ScopeError, ScopeFuture, ScopedJoinHandle, TaskGroup};
pub use runtime::{
    QueueDepths, RuntimeDump, StallReport, TaskBuilder, TaskDump, TaskState, WorkerDump,
};
