//! The scheduler: workers, tasks, the mesh, joins and completion queues.

pub mod completion;
mod context;
pub(crate) mod executor;
mod introspect;
mod job;
mod join;
mod mesh;
mod named;
mod park;
#[allow(clippy::module_inception)]
mod runtime;
mod task;
mod watchdog;

pub use context::{
    spawn, spawn_balanced, spawn_local, spawn_to, worker_index, yield_now, RuntimeContext,
};
pub use introspect::{QueueDepths, RuntimeDump, TaskDump, TaskState, WorkerDump};
pub use job::{RawTask, RawTaskFn};
pub use join::{JoinError, JoinHandle, LocalJoinHandle};
pub use named::TaskBuilder;
pub use runtime::{
    Handle, OsError, Placement, Runtime, RuntimeBuilder, ShutdownError, SpawnError, SpawnErrorKind,
    WorkerStats,
};
pub use watchdog::StallReport;
