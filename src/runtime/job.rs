//! What travels between threads: a task that has not started yet, or a C-style callback.

use std::cell::Cell;
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
        if !self.cq.is_null() {
            // Gathered with the worker's other completions, posted at the latest when its
            // loop turn ends (see `CompletionBatch`).
            ctx.completions.push(
                self.cq,
                Cqe {
                    user_data: self.user_data,
                    res,
                    flags: 0,
                    worker: ctx.worker_index() as u32,
                },
            );
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

/// The completions of callbacks a worker ran, gathered so that posting them costs the
/// queue's shared lines (its settle count, its tail, its readiness flags) one visit per
/// run instead of one per entry, and a consumer asleep in `wait` one wake-up per run.
///
/// Entries go to one queue at a time, in the order the callbacks finished: a completion
/// for another queue first posts what was gathered. The worker posts the run when it
/// reaches `CompletionBatch::MAX` entries and at the end of every loop turn (before it
/// steals, spins or parks); a thread of the worker that polls or waits on a queue and
/// finds nothing, or posts to one itself, posts the run first (see `completion.rs`), so
/// a callback never waits for its own worker's completions. Touched only by the worker's
/// own thread.
pub(crate) struct CompletionBatch {
    /// The queue the gathered entries go to (meaningless while `len` is 0).
    cq: Cell<*const CompletionQueue>,
    len: Cell<usize>,
    entries: [Cell<Cqe>; CompletionBatch::MAX],
}

impl CompletionBatch {
    /// Entries gathered before they are posted without waiting for the turn's end: the
    /// longest a finished callback's completion waits for the ones after it.
    pub(crate) const MAX: usize = 32;

    pub(crate) fn new() -> Self {
        CompletionBatch {
            cq: Cell::new(std::ptr::null()),
            len: Cell::new(0),
            entries: std::array::from_fn(|_| Cell::new(Cqe::default())),
        }
    }

    /// Gathers `cqe` for `cq`, which holds a reservation for it.
    #[inline]
    pub(crate) fn push(&self, cq: *const CompletionQueue, cqe: Cqe) {
        if cq != self.cq.get() {
            self.flush();
            self.cq.set(cq);
        }
        let len = self.len.get();
        self.entries[len].set(cqe);
        self.len.set(len + 1);
        if len + 1 == Self::MAX {
            self.flush();
        }
    }

    /// Posts the gathered entries; true when there were any.
    #[inline]
    pub(crate) fn flush(&self) -> bool {
        let len = self.len.replace(0);
        if len == 0 {
            return false;
        }
        // SAFETY: every gathered entry holds a reservation on this queue, so it is alive
        // until the post below settles them.
        let cq = unsafe { &*self.cq.get() };
        cq.post_reserved_many(len, |i| self.entries[i].get());
        true
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
    /// The task of a task job (now in the caller's hands: not dropped here), or the job
    /// itself.
    #[inline]
    pub(crate) fn into_task(self) -> Result<TaskRef, Job> {
        match self {
            Job::Task(_) => match self.into_parts() {
                JobParts::Task(task) => Ok(task),
                JobParts::Raw(_) => unreachable!(),
            },
            job => Err(job),
        }
    }

    /// Consumes the job without running its drop hook (the task was adopted or run).
    pub(crate) fn into_parts(self) -> JobParts {
        let mut this = std::mem::ManuallyDrop::new(self);
        match &mut *this {
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

/// What a worker's pinned inbox carries. Batches travel only here, so a [`Job`] (what
/// mesh slots, injectors and run queues hold) stays as small as one callback.
pub(crate) enum InboxJob {
    /// A pinned job from outside, or a mesh job that found its channel full.
    One(Job),
    /// Callbacks submitted together (`Handle::spawn_raw_batch`), run in order on this
    /// worker; never stolen. Counts as `len` jobs in the worker's submitted and taken
    /// counts (see `weight`).
    Batch(Box<[RawTask]>),
}

impl InboxJob {
    /// How many jobs this counts as in a worker's submitted and taken counts.
    #[inline]
    pub(crate) fn weight(&self) -> u64 {
        match self {
            InboxJob::One(_) => 1,
            InboxJob::Batch(tasks) => tasks.len() as u64,
        }
    }
}
