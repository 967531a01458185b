//! The scheduler: workers, tasks, the mesh, joins and completion queues.

pub mod completion;
mod context;
pub mod coop;
pub(crate) mod executor;
mod job;
mod join;
mod mesh;
mod park;
#[allow(clippy::module_inception)]
mod runtime;
mod task;

pub use context::{
    spawn, spawn_balanced, spawn_local, spawn_to, worker_index, yield_now, RuntimeContext,
};
pub use coop::consume_budget;
pub use job::{RawTask, RawTaskFn};
pub use join::{JoinError, JoinHandle, LocalJoinHandle};
pub use runtime::{
    Handle, OsError, Placement, Runtime, RuntimeBuilder, ShutdownError, SpawnError, SpawnErrorKind,
    WorkerStats,
};
