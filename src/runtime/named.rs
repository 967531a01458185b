//! `TaskBuilder`: spawning with a name (and a placement).
//!
//! A name shows in [`Handle::dump`](super::Handle::dump) and in stall reports. An
//! unnamed task costs what it always did; a named one carries a shared pointer to its
//! name, and a named callback travels as a boxed job (its plain `RawTask` stays small).

use std::ffi::c_void;
use std::future::Future;
use std::ptr;
use std::sync::Arc;

use super::context::{self, RuntimeContext};
use super::introspect::TaskName;
use super::job::RawTask;
use super::join::{JoinHandle, LocalJoinHandle};
use super::runtime::{entered_handle, Handle, Placement, SpawnError, SpawnErrorKind};
use super::task::TaskRef;

/// Spawns tasks with an optional name and a placement:
///
/// ```no_run
/// # let rt = veloq::Runtime::new().unwrap();
/// let handle = veloq::TaskBuilder::new()
///     .name("parse")
///     .placement(veloq::Placement::Balanced)
///     .spawn_on(&rt, async { 1 + 1 })
///     .unwrap();
/// assert_eq!(rt.block_on(handle).unwrap(), 2);
/// ```
///
/// Every `spawn*` method behaves as the unnamed function of the same name does (same
/// placement rules, errors and threads). `name` allocates; a clone of a builder shares
/// its name, so hot paths build one and clone it per spawn.
#[derive(Clone, Debug)]
pub struct TaskBuilder {
    name: Option<Arc<TaskName>>,
    placement: Placement,
}

impl Default for TaskBuilder {
    fn default() -> Self {
        TaskBuilder {
            name: None,
            placement: Placement::Any,
        }
    }
}

impl TaskBuilder {
    /// No name, `Placement::Any`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The task's name (copied), shown by dumps and stall reports. Any string; an
    /// interior NUL cuts the name short where C sees it.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(TaskName::new(name));
        self
    }

    /// Where a `Send` task or callback runs (default `Placement::Any`). Ignored by
    /// `spawn_local`, and `spawn_local_to` takes its worker as an argument.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Spawns a `Send` future on the current runtime: from a worker, or inside
    /// `Runtime::block_on`. Fails with `NoRuntime` elsewhere.
    pub fn spawn<F>(self, future: F) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = self.name;
        let alloc = move |f: F| TaskRef::new_shared_named(f, name);
        let mut future = Some(future);
        let mut alloc = Some(alloc);
        let on_worker = context::with_current(|cx| {
            cx.map(|cx| {
                cx.spawn_task(
                    self.placement,
                    future.take().expect("taken once"),
                    alloc.take().expect("taken once"),
                )
            })
        });
        if let Some(result) = on_worker {
            return result;
        }
        let future = future.take().expect("not taken off a worker");
        match entered_handle() {
            Some(handle) => {
                handle.spawn_task(self.placement, future, alloc.take().expect("not taken"))
            }
            None => Err(SpawnError::new(SpawnErrorKind::NoRuntime, future)),
        }
    }

    /// Spawns a `Send` future on the runtime behind `handle` (from any thread).
    pub fn spawn_on<F>(
        self,
        handle: &Handle,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = self.name;
        handle.spawn_task(self.placement, future, move |f| {
            TaskRef::new_shared_named(f, name)
        })
    }

    /// Spawns a `!Send` future on the current worker (see [`crate::spawn_local`]); fails
    /// with `NoRuntime` off a worker.
    pub fn spawn_local<F>(self, future: F) -> Result<LocalJoinHandle<F::Output>, SpawnError<F>>
    where
        F: Future + 'static,
    {
        let name = self.name;
        context::with_current(|cx| match cx {
            Some(cx) => cx.spawn_local_named(future, name),
            None => Err(SpawnError::new(SpawnErrorKind::NoRuntime, future)),
        })
    }

    /// Runs `make` on worker `worker` and spawns the future it returns there as a local
    /// task (see [`Handle::spawn_local_to`]).
    pub fn spawn_local_to<M, F>(
        self,
        handle: &Handle,
        worker: usize,
        make: M,
    ) -> Result<JoinHandle<F::Output>, SpawnError<M>>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let name = self.name;
        handle.spawn_task(Placement::Worker(worker), make, move |m| {
            TaskRef::new_shared_lazy_named(m, name)
        })
    }

    /// Queues a callback job with this builder's name and placement (see
    /// [`Handle::spawn_raw`]).
    ///
    /// # Safety
    /// As for [`Handle::spawn_raw`].
    pub unsafe fn spawn_raw(
        self,
        handle: &Handle,
        task: RawTask,
    ) -> Result<(), SpawnError<RawTask>> {
        let Some(name) = self.name else {
            // SAFETY: forwarded promise.
            return unsafe { handle.spawn_raw(self.placement, task) };
        };
        // The completion is the inner task's: reserve it now, as spawn_raw would.
        task.reserve_completion();
        let boxed = Box::into_raw(Box::new(NamedRaw { raw: task, name }));
        let outer = RawTask {
            func: run_named,
            arg: boxed.cast(),
            cq: ptr::null(),
            user_data: 0,
        };
        // SAFETY: `run_named` takes the box made here, and the inner task's promises are
        // the caller's.
        match unsafe { handle.spawn_raw(self.placement, outer) } {
            Ok(()) => Ok(()),
            Err(e) => {
                task.release_completion();
                // SAFETY: refused: the box was not queued and is freed once, here.
                drop(unsafe { Box::from_raw(boxed) });
                Err(SpawnError::new(e.kind(), task))
            }
        }
    }
}

/// A named callback, boxed: the argument of `run_named`.
struct NamedRaw {
    raw: RawTask,
    name: Arc<TaskName>,
}

/// Runs a named callback: publishes its name for the stall watchdog, runs it (which
/// posts its completion), clears the name.
unsafe extern "C" fn run_named(ctx: *mut RuntimeContext, arg: *mut c_void) -> i64 {
    // SAFETY: `arg` is the box made by `TaskBuilder::spawn_raw`, run once.
    let named = unsafe { Box::from_raw(arg as *mut NamedRaw) };
    // SAFETY: the worker passes its live context.
    let cx = unsafe { &*ctx };
    let watch = &cx.me().watch;
    watch.set_running_name(Some(named.name.clone()));
    // SAFETY: the promises of the spawn call that accepted the task.
    let res = unsafe { named.raw.run(cx) };
    watch.set_running_name(None);
    res
}
