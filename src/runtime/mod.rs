//! The scheduler: workers, tasks, the mesh, joins and completion queues.

pub mod completion;
