//! Rust futures over driver operations.
//!
//! A [`Run`] (what [`run`] returns: the future of every single-shot socket, file and
//! descriptor operation) and an [`Op`] (submitted when made: close, timeouts) own the
//! memory their operation uses (`T`: buffers, addresses) and give it back with the
//! result. Dropping one before its completion is safe: the memory moves into the
//! driver's operation table, an `ASYNC_CANCEL` is sent, and the memory is freed only
//! after the kernel's final completion. A `Run` dropped before its first poll submitted
//! nothing.
//!
//! Operations belong to the worker that submitted them (its ring). Tasks never move once
//! they started, so an `Op` created inside a task is always polled and dropped there.
//! Polling one on another thread is a bug and panics; dropping one elsewhere leaks its
//! memory rather than free what the kernel may still write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::squeue::Entry;

use super::driver::Driver;
use super::op_table::{OpId, OpResult, Target};
use crate::runtime::{coop, RuntimeContext};

/// The worker an operation was submitted on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Owner {
    /// The runtime's registry address, compared only, never followed.
    registry: usize,
    worker: usize,
}

impl Owner {
    #[inline]
    fn of(cx: &RuntimeContext) -> Owner {
        Owner {
            registry: Arc::as_ptr(&cx.registry) as usize,
            worker: cx.index,
        }
    }
}

/// The error for I/O started off a worker thread.
pub(crate) fn not_on_worker() -> io::Error {
    io::Error::other(
        "veloq I/O must run inside a task on a runtime worker (spawn it on the runtime)",
    )
}

/// Runs `f` with the current worker's driver and identity; an error off a worker.
#[inline]
pub(crate) fn with_driver<R>(f: impl FnOnce(&mut Driver, Owner) -> R) -> io::Result<R> {
    RuntimeContext::with_current(|cx| {
        let cx = cx.ok_or_else(not_on_worker)?;
        let owner = Owner::of(cx);
        Ok(f(&mut cx.driver.borrow_mut(), owner))
    })
}

/// A single-shot operation in flight, owning its memory `T`.
pub(crate) struct Op<T: 'static> {
    id: OpId,
    owner: Owner,
    data: Option<T>,
}

// SAFETY: an Op is only ever used on its owner's thread (checked on poll and drop, see
// the module doc); `T` itself crosses threads only if it is Send.
unsafe impl<T: Send + 'static> Send for Op<T> {}

impl<T: 'static> Op<T> {
    /// Submits the entry `build` makes from `data` (whose pointers must point into heap
    /// memory `data` owns: `data` moves after `build` returns). On failure (off a worker,
    /// or shutdown has started: `ESHUTDOWN`) `data` comes back with the error, so a
    /// caller's buffer is never lost.
    pub(crate) fn submit(
        mut data: T,
        build: impl FnOnce(&mut T) -> Entry,
    ) -> Result<Op<T>, (io::Error, T)> {
        let entry = build(&mut data);
        Self::submit_with(data, |driver| {
            driver.submit(entry, Target::Future(None), false)
        })
    }

    fn submit_with(
        data: T,
        submit: impl FnOnce(&mut Driver) -> Result<OpId, i32>,
    ) -> Result<Op<T>, (io::Error, T)> {
        match with_driver(|driver, owner| (submit(driver), owner)) {
            Ok((Ok(id), owner)) => Ok(Op {
                id,
                owner,
                data: Some(data),
            }),
            Ok((Err(errno), _)) => Err((io::Error::from_raw_os_error(-errno), data)),
            Err(e) => Err((e, data)),
        }
    }
}

/// Makes an operation's submission entry from its memory (whose pointers must point
/// into heap memory the memory owns, see [`Op::submit`]); used once, on the future's
/// first poll. Closures `FnOnce(&mut T) -> Entry` are builders; a named type is one
/// where a future type must be named (see `net::socket_io`).
pub(crate) trait BuildEntry<T> {
    /// The entry (without `user_data`).
    fn build(self, data: &mut T) -> Entry;
}

impl<T, F: FnOnce(&mut T) -> Entry> BuildEntry<T> for F {
    #[inline]
    fn build(self, data: &mut T) -> Entry {
        self(data)
    }
}

/// Submits the entry `build` makes from `data` (see [`Op::submit`]) and waits for it:
/// the kernel's result as an `io::Result` (a negative errno becomes the error) and
/// `data` back, whatever happened.
pub(crate) fn run<T, B>(data: T, build: B) -> Run<T, B>
where
    T: Unpin + 'static,
    B: FnOnce(&mut T) -> Entry,
{
    Run::new(data, build, Mode::Plain)
}

/// [`run`], submitted as `mode` says: `Mode::Plain` (as `run`) or `Mode::Now`.
pub(crate) fn run_as<T, B>(mode: Mode, data: T, build: B) -> Run<T, B>
where
    T: Unpin + 'static,
    B: FnOnce(&mut T) -> Entry,
{
    Run::new(data, build, mode)
}

/// Like [`run`] for an operation whose result is a new file descriptor: if the future
/// is dropped, the driver closes a descriptor the kernel still makes rather than leak it.
pub(crate) fn run_fd<T, B>(data: T, build: B) -> Run<T, B>
where
    T: Unpin + 'static,
    B: FnOnce(&mut T) -> Entry,
{
    Run::new(data, build, Mode::Fd)
}

/// Like [`run`], with a deadline of `deadline_ns` (an io_uring linked timeout): when it
/// passes first the operation ends with `ECANCELED`.
pub(crate) fn run_with_deadline<T, B>(data: T, deadline_ns: u64, build: B) -> Run<T, B>
where
    T: Unpin + 'static,
    B: FnOnce(&mut T) -> Entry,
{
    Run::new(data, build, Mode::Deadline(deadline_ns))
}

/// How a [`Run`] submits its entry.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// A plain single-shot operation.
    Plain,
    /// A plain single-shot operation handed to the kernel at once, with an
    /// `io_uring_enter` made right after it is queued (which also takes whatever else is
    /// queued), rather than with the worker's next batch (direct file I/O, see
    /// `fs::File`); one that had to wait in the backlog goes in with the backlog.
    Now,
    /// The result is a new descriptor (see [`run_fd`]).
    Fd,
    /// With a linked timeout of this many nanoseconds.
    Deadline(u64),
}

/// Where a [`Run`] is.
enum RunState<B> {
    /// Not submitted yet: the entry is built on the first poll.
    Start(B, Mode),
    /// Submitted on this worker's ring.
    InFlight(OpId, Owner),
    /// The result was returned (or submitting failed and the error was).
    Done,
}

/// The future of [`run`]: one operation, from the submission to the result.
///
/// The first poll builds the entry, submits it and leaves the task's waker with the
/// operation, in one access to the driver; it returns `Pending` (nothing can complete
/// before the worker hands the entry to the kernel) unless submitting failed. The poll
/// after the wake-up takes the result. Dropped while in flight, it hands `data` to the
/// driver and cancels the operation, like a dropped [`Op`].
pub(crate) struct Run<T: 'static, B> {
    /// The operation's memory; `None` once given back.
    data: Option<T>,
    state: RunState<B>,
}

// `B` is taken out by value before use and never pinned.
impl<T: Unpin + 'static, B> Unpin for Run<T, B> {}

impl<T: Unpin + 'static, B: BuildEntry<T>> Run<T, B> {
    #[inline]
    pub(crate) fn new(data: T, build: B, mode: Mode) -> Self {
        Run {
            data: Some(data),
            state: RunState::Start(build, mode),
        }
    }

    /// The first poll: submits, leaving a clone of the task's waker with the operation.
    #[inline]
    fn start(&mut self, build: B, mode: Mode, cx: &mut Context<'_>) -> Poll<(io::Result<u32>, T)> {
        let data = self
            .data
            .as_mut()
            .expect("a Run has its data until it is done");
        let entry = build.build(data);
        // Cloned outside the driver's borrow; dropped inside it only on a refusal.
        let target = Target::Future(Some(cx.waker().clone()));
        let submitted = with_driver(|driver, owner| {
            let id = match mode {
                Mode::Plain => driver.submit(entry, target, false),
                Mode::Now => driver.submit(entry, target, false).inspect(|_| {
                    driver.flush_queued();
                }),
                Mode::Fd => driver.submit(entry, target, false).inspect(|&id| {
                    driver.set_result_is_fd(id);
                }),
                Mode::Deadline(ns) => driver.submit_with_deadline(entry, target, ns),
            };
            id.map(|id| (id, owner))
        });
        let error = match submitted {
            Ok(Ok((id, owner))) => {
                self.state = RunState::InFlight(id, owner);
                return Poll::Pending;
            }
            Ok(Err(errno)) => io::Error::from_raw_os_error(-errno),
            Err(e) => e,
        };
        let data = self.data.take().expect("checked above");
        Poll::Ready((Err(error), data))
    }
}

impl<T: Unpin + 'static, B: BuildEntry<T>> Future for Run<T, B> {
    type Output = (io::Result<u32>, T);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.state {
            RunState::InFlight(id, owner) => {
                // Out of budget: the result (if any) stays in the driver for the next poll.
                match coop::poll_leaf(cx, |cx| poll_result(id, owner, cx)) {
                    Poll::Ready(r) => {
                        this.state = RunState::Done;
                        let data = this.data.take().expect("in flight with its data");
                        let res = r.map_or(-libc::ECANCELED, |r| r.res);
                        Poll::Ready((super::result(res), data))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            RunState::Start(..) => {
                let RunState::Start(build, mode) =
                    std::mem::replace(&mut this.state, RunState::Done)
                else {
                    unreachable!()
                };
                this.start(build, mode, cx)
            }
            RunState::Done => panic!("a veloq I/O future was polled after it completed"),
        }
    }
}

impl<T: 'static, B> Drop for Run<T, B> {
    #[inline]
    fn drop(&mut self) {
        if let RunState::InFlight(id, owner) = self.state {
            if let Some(data) = self.data.take() {
                orphan(id, owner, Box::new(data));
            }
        }
    }
}

impl Op<()> {
    /// A timeout of `ns` nanoseconds (completes with -ETIME).
    pub(crate) fn timeout(ns: u64) -> io::Result<Op<()>> {
        Self::submit_with((), |driver| driver.submit_timeout(ns, Target::Future(None)))
            .map_err(|(e, ())| e)
    }
}

/// Polls `id` on its owner's driver: its next result, `None` once it is gone, or
/// `Pending` with the waker left for the next completion.
#[inline]
fn poll_result(id: OpId, owner: Owner, cx: &mut Context<'_>) -> Poll<Option<OpResult>> {
    let polled = with_driver(|driver, here| {
        assert_eq!(
            here, owner,
            "a veloq I/O future was polled off the worker that started it"
        );
        driver.poll_op(id, cx.waker())
    });
    polled.unwrap_or_else(|_| panic!("a veloq I/O future was polled off its worker"))
}

impl<T: Unpin + 'static> Future for Op<T> {
    /// The kernel's result (`res`, `flags`) and the memory back.
    type Output = (OpResult, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(self.data.is_some(), "Op polled after completion");
        // Out of budget: the result (if any) stays in the driver for the next poll.
        let (id, owner) = (self.id, self.owner);
        match coop::poll_leaf(cx, |cx| poll_result(id, owner, cx)) {
            Poll::Ready(r) => {
                let data = self.data.take().expect("checked above");
                let r = r.unwrap_or(OpResult {
                    res: -libc::ECANCELED,
                    flags: 0,
                });
                Poll::Ready((r, data))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        orphan(self.id, self.owner, Box::new(data));
    }
}

/// Hands an unfinished operation's memory to its driver (cancelling the operation), or
/// leaks it when dropped off its worker.
fn orphan(id: OpId, owner: Owner, keep: Box<dyn std::any::Any>) {
    let mut keep = Some(keep);
    let old = with_driver(|driver, here| (here == owner).then(|| driver.orphan(id, keep.take())));
    if let Some(leaked) = keep {
        // Off its worker (or the worker is gone): the kernel may still write it.
        std::mem::forget(leaked);
    }
    // The old target (a waker) is dropped here, outside the driver's borrow.
    drop(old);
}

/// A waker that does nothing (`Waker::noop` needs Rust 1.85, above our MSRV).
fn noop_waker() -> std::task::Waker {
    use std::task::{RawWaker, RawWakerVTable};
    const VTABLE: RawWakerVTable = RawWakerVTable::new(|_| RAW, |_| {}, |_| {}, |_| {});
    const RAW: RawWaker = RawWaker::new(std::ptr::null(), &VTABLE);
    // SAFETY: every function of the vtable ignores the (null) data pointer.
    unsafe { std::task::Waker::from_raw(RAW) }
}

/// A multishot operation: yields each completion until the final one.
pub(crate) struct MultiOp<T: 'static> {
    id: OpId,
    owner: Owner,
    data: Option<T>,
    finished: bool,
}

// SAFETY: as for Op.
unsafe impl<T: Send + 'static> Send for MultiOp<T> {}

impl<T: 'static> MultiOp<T> {
    /// Submits a multishot entry whose results are new file descriptors (multishot
    /// accept; its memory in `data`, as for [`Op::submit`]). Descriptors nobody
    /// collects (the `MultiOp` was dropped) are closed by the driver. On failure `data`
    /// comes back with the error.
    pub(crate) fn submit_fd(
        data: T,
        build: impl FnOnce(&mut T) -> Entry,
    ) -> Result<MultiOp<T>, (io::Error, T)> {
        Self::submit_multi(data, build, true, None)
    }

    /// Submits a multishot entry (its memory in `data`, as for [`Op::submit`]), on the
    /// current worker only if it is `on` (when given): else an error (the entry names
    /// something of that worker's ring). On failure `data` comes back with the error.
    pub(crate) fn submit_on(
        data: T,
        on: Option<Owner>,
        build: impl FnOnce(&mut T) -> Entry,
    ) -> Result<MultiOp<T>, (io::Error, T)> {
        Self::submit_multi(data, build, false, on)
    }

    fn submit_multi(
        mut data: T,
        build: impl FnOnce(&mut T) -> Entry,
        result_is_fd: bool,
        on: Option<Owner>,
    ) -> Result<MultiOp<T>, (io::Error, T)> {
        let entry = build(&mut data);
        let submitted = with_driver(|driver, owner| {
            if on.is_some_and(|on| on != owner) {
                return Err(-libc::EXDEV);
            }
            let id = driver.submit(entry, Target::Future(None), true)?;
            if result_is_fd {
                driver.set_result_is_fd(id);
            }
            Ok::<_, i32>((id, owner))
        });
        match submitted {
            Ok(Ok((id, owner))) => Ok(MultiOp {
                id,
                owner,
                data: Some(data),
                finished: false,
            }),
            Ok(Err(errno)) => Err((io::Error::from_raw_os_error(-errno), data)),
            Err(e) => Err((e, data)),
        }
    }

    /// The next completion; None after the final one was returned. A result without
    /// `IORING_CQE_F_MORE` in its flags is the final one.
    #[inline]
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<OpResult>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // Out of budget: every result stays queued in the driver, in order.
        let (id, owner) = (self.id, self.owner);
        match coop::poll_leaf(cx, |cx| poll_result(id, owner, cx)) {
            Poll::Ready(Some(r)) => {
                if !io_uring::cqueue::more(r.flags) {
                    self.finished = true;
                }
                Poll::Ready(Some(r))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A result that already arrived, taken without waiting and without the task's
    /// budget (for draining before a drop); `None` when none waits.
    pub(crate) fn take_ready(&mut self) -> Option<OpResult> {
        if self.finished {
            return None;
        }
        let (id, owner) = (self.id, self.owner);
        let waker = &noop_waker();
        // Off the owner (or without a worker) nothing is taken: the drop that follows
        // leaks the operation's memory rather than touch another worker's driver.
        let polled = with_driver(|driver, here| (here == owner).then(|| driver.poll_op(id, waker)));
        match polled.ok().flatten().unwrap_or(Poll::Pending) {
            Poll::Ready(Some(r)) => {
                if !io_uring::cqueue::more(r.flags) {
                    self.finished = true;
                }
                Some(r)
            }
            Poll::Ready(None) => {
                self.finished = true;
                None
            }
            Poll::Pending => None,
        }
    }

    /// Asks the kernel to stop; the final completion still comes through `poll_next`.
    pub(crate) fn cancel(&self) {
        let _ = with_driver(|driver, here| {
            if here == self.owner {
                let _ = driver.cancel(self.id);
            }
        });
    }
}

impl<T: 'static> Drop for MultiOp<T> {
    fn drop(&mut self) {
        let data = self
            .data
            .take()
            .map(|d| Box::new(d) as Box<dyn std::any::Any>);
        if self.finished {
            return;
        }
        orphan(self.id, self.owner, data.unwrap_or_else(|| Box::new(())));
    }
}
