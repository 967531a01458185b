//! What travels between threads: a task that has not started yet, or a C-style callback.

use std::ffi::c_void;

use super::completion::{CompletionQueue, Cqe};
use super::context::RuntimeContext;
use super::task::TaskRef;

/// A C-style task function: runs once on a worker with that worker's context and `arg`;
/// its return value becomes the completion's `res`.
pub type RawTaskFn = unsafe extern "C" fn(ctx: *mut RuntimeContext, arg: *mut c_void) -> i64;

/// A callback job: `func(ctx, arg)` runs exactly once on a worker and, when `cq` is not
/// null, exactly one completion `{user_data, res}` is posted to `cq`. It is carried inline
/// through queues and channels: scheduling one allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct RawTask {
    /// The function to run.
    pub func: RawTaskFn,
    /// Passed to `func` unchanged; owned by the caller.
    pub arg: *mut c_void,
    /// Where the completion goes, or null for none. Must outlive the completion.
    pub cq: *const CompletionQueue,
    /// Copied into the completion.
    pub user_data: u64,
}

// SAFETY: a RawTask is a plain description of work; whoever builds one promises (through
// the `unsafe` spawn functions) that `arg` and `cq` may be used from a worker thread.
unsafe impl Send for RawTask {}

impl RawTask {
    /// Runs the callback on the worker that owns `ctx` and posts its completion.
    ///
    /// # Safety
    /// The promises of the spawn call that accepted this task: `func` may be called with
    /// `arg` on this thread, and `cq`, when not null, is alive with a reservation held.
    pub(crate) unsafe fn run(self, ctx: &RuntimeContext) -> i64 {
        let ctx_ptr = ctx as *const RuntimeContext as *mut RuntimeContext;
        // SAFETY: guaranteed by the caller (see above); ctx outlives the call.
        let res = unsafe { (self.func)(ctx_ptr, self.arg) };
        // SAFETY: a non-null cq holds a reservation for this task, so it is still alive.
        if let Some(cq) = unsafe { self.cq.as_ref() } {
            cq.post_reserved(Cqe {
                user_data: self.user_data,
                res,
                flags: 0,
                worker: ctx.worker_index() as u32,
            });
        }
        res
    }

    /// Takes a reservation on the completion queue, if any, before the task is queued.
    pub(crate) fn reserve_completion(&self) {
        // SAFETY: the spawn caller promised `cq` is alive (or null).
        if let Some(cq) = unsafe { self.cq.as_ref() } {
            cq.reserve();
        }
    }

    /// Gives the reservation back when the task was refused.
    pub(crate) fn release_completion(&self) {
        // SAFETY: as in `reserve_completion`.
        if let Some(cq) = unsafe { self.cq.as_ref() } {
            cq.release_reservation();
        }
    }
}

/// A unit of work that crosses threads: through a mesh channel, an injector or an inbox.
pub(crate) enum Job {
    /// A `Send` task that has not been polled yet; the worker that receives it adopts it.
    Task(TaskRef),
    /// A callback.
    Raw(RawTask),
}

// Jobs travel inline in mesh slots, injectors and inboxes: a job is no bigger than the
// callback it carries (the `Task` variant sits in the niche of `RawTask::func`), so a mesh
// slot is 32 bytes and two share a cache line.
const _: () = assert!(std::mem::size_of::<Job>() == std::mem::size_of::<RawTask>());

impl Drop for Job {
    fn drop(&mut self) {
        // A job is normally consumed by running it. One dropped unrun (a queue torn down
        // with work in it) must still resolve its join handle.
        if let Job::Task(task) = self {
            task.cancel_unadopted();
        }
    }
}

impl Job {
    /// Consumes the job without running its drop hook (the task was adopted or run).
    pub(crate) fn into_parts(self) -> JobParts {
        let this = std::mem::ManuallyDrop::new(self);
        match &*this {
            Job::Task(t) => JobParts::Task(*t),
            Job::Raw(r) => JobParts::Raw(*r),
        }
    }
}

/// A job taken apart, without a drop hook.
pub(crate) enum JobParts {
    Task(TaskRef),
    Raw(RawTask),
}
