//! The scheduler: workers, tasks, the mesh, joins and completion queues.

mod blocking;
pub mod completion;
mod context;
pub mod coop;
pub(crate) mod executor;
pub mod group;
mod intake;
mod introspect;
mod job;
mod join;
mod mesh;
mod named;
mod park;
#[allow(clippy::module_inception)]
mod runtime;
mod sched;
pub mod scope;
mod spin;
mod task;
mod watchdog;

pub use blocking::{spawn_blocking, BlockingJoinHandle, BlockingStats};
pub use context::{
    spawn, spawn_balanced, spawn_local, spawn_to, worker_index, yield_now, RuntimeContext,
};
pub use coop::consume_budget;
pub use group::TaskGroup;
pub use introspect::{QueueDepths, RuntimeDump, TaskDump, TaskState, WorkerDump};
pub use job::{RawTask, RawTaskFn};
pub use join::{JoinError, JoinHandle, LocalJoinHandle};
pub use named::TaskBuilder;
pub use runtime::{
    Handle, OsError, Placement, Runtime, RuntimeBuilder, ShutdownError, SpawnError, SpawnErrorKind,
    WorkerStats,
};
pub use scope::{scope, Scope, ScopeError, ScopeFuture, ScopedJoinHandle};
pub use watchdog::StallReport;
