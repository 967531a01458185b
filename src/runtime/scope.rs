//! Structured concurrency: [`scope`] runs child futures that may borrow from the caller
//! and are all finished, or cancelled and dropped, before the scope's future completes.
//!
//! # Design
//! The children are owned and polled by the scope's own future, like a
//! `FuturesUnordered` inside it: they run concurrently with each other and with the
//! scope's body, interleaved on the worker that polls the scope, never on another
//! thread. That is what makes borrowing sound without `unsafe` lifetime tricks: a child
//! can only ever be polled from inside the scope future's `poll`, so once that future is
//! dropped (or forgotten), no child can run again, and dropping it drops every child.
//!
//! Each child has its own waker: waking it queues the child's index and wakes the task
//! polling the scope; a poll of the scope polls only the queued children (and the body
//! when it was woken), so a scope with many idle children costs O(ready) per poll. A
//! child woken again while it is being polled waits for the next poll of the scope (the
//! scope then wakes itself), so a child that yields in a loop cannot monopolise it.
//!
//! # Failure
//! The body and every child return `Result<_, E>`. The first `Err` (from the body or a
//! child) or the first panic of a child ends the scope: every other child and the body
//! are dropped, and the scope's future returns [`ScopeError::Failed`] or
//! [`ScopeError::Panicked`] (with the panic's payload; pass it to
//! [`std::panic::resume_unwind`] to propagate it). A panic in the *body* is not caught:
//! it unwinds out of the scope's `poll` like any panic of the awaiting task, and the
//! children are dropped with the scope's future.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Release, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// Why a scope ended without the body's value.
pub enum ScopeError<E> {
    /// The body or a child returned this error (the first one); the others were dropped.
    Failed(E),
    /// A child panicked with this payload; the others and the body were dropped.
    Panicked(Box<dyn Any + Send + 'static>),
}

impl<E> ScopeError<E> {
    /// True for [`ScopeError::Panicked`].
    pub fn is_panic(&self) -> bool {
        matches!(self, ScopeError::Panicked(_))
    }

    /// The error of [`ScopeError::Failed`]; for [`ScopeError::Panicked`], resumes the
    /// child's panic on the calling thread.
    pub fn into_failed_or_resume(self) -> E {
        match self {
            ScopeError::Failed(e) => e,
            ScopeError::Panicked(payload) => std::panic::resume_unwind(payload),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for ScopeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            ScopeError::Panicked(_) => f.write_str("Panicked(..)"),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ScopeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Failed(e) => write!(f, "scope failed: {e}"),
            ScopeError::Panicked(_) => f.write_str("a child of the scope panicked"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ScopeError<E> {}

/// A child as the scope stores it: its own output goes to its handle.
type ChildFuture<'env, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'env>>;

/// The index the body takes in the ready queue.
const BODY: usize = usize::MAX;

/// The `'static` part the wakers share: which children were woken, and the task polling
/// the scope.
struct Ready {
    queue: Mutex<Vec<usize>>,
    parent: Mutex<Option<Waker>>,
    /// The scope is inside `poll` and will look at `queue` again before returning, so a
    /// wake need not wake the parent task.
    polling: AtomicBool,
}

impl Ready {
    fn push(&self, idx: usize) {
        lock(&self.queue).push(idx);
        self.notify();
    }

    /// Wakes the task polling the scope, unless the scope is polling right now.
    ///
    /// Invariant: a push (to `queue`, or a child to `Shared::incoming`) followed by a
    /// `polling == true` read here is seen by the scope's re-check of both lists after it
    /// stored `polling = false` (both `SeqCst`, the lists behind mutexes), so no wake is
    /// lost.
    fn notify(&self) {
        if self.polling.load(SeqCst) {
            return;
        }
        let waker = lock(&self.parent).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A child's waker (or the body's, with index [`BODY`]).
struct ChildWaker {
    idx: usize,
    /// In `Ready::queue` already (cleared just before the child is polled).
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, AcqRel) {
            self.ready.push(self.idx);
        }
    }
}

/// What the scope future, the `Scope` handles and the children share: children spawned
/// and not yet taken over by the scope future, and the scope's flags. Once the scope
/// future took a child, only it touches it (no lock per poll).
struct Shared<'env, E> {
    incoming: Mutex<Incoming<'env, E>>,
    ready: Arc<Ready>,
    /// `'env` is invariant, as in `std::thread::scope`.
    _env: PhantomData<&'env mut &'env ()>,
}

struct Incoming<'env, E> {
    children: Vec<ChildFuture<'env, E>>,
    /// `Scope::cancel` was called: children are dropped, new ones refused.
    cancelled: bool,
    /// The scope is over (finished, failed or dropped): new children are dropped unrun.
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under these locks, so poisoning can only come from an
    // allocation failure; the data is consistent either way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The handle a scope's body receives: spawns children into the scope, or cancels them.
///
/// It is `Clone` (children may hold one to spawn siblings) and `Send + Sync`. It cannot outlive `'env`, the lifetime of what the children may borrow; a
/// handle kept past the end of its scope is harmless: what it spawns then is dropped
/// without being polled.
pub struct Scope<'env, E> {
    shared: Arc<Shared<'env, E>>,
}

impl<E> Clone for Scope<'_, E> {
    fn clone(&self) -> Self {
        Scope {
            shared: self.shared.clone(),
        }
    }
}

impl<E> fmt::Debug for Scope<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inc = lock(&self.shared.incoming);
        f.debug_struct("Scope")
            .field("cancelled", &inc.cancelled)
            .field("closed", &inc.closed)
            .finish()
    }
}

impl<'env, E: Send + 'env> Scope<'env, E> {
    /// Starts `child` in the scope. It is polled by the scope's future, on the thread
    /// that polls it, concurrently with the body and the other children, starting at
    /// the scope's next poll (never from inside this call).
    ///
    /// `Ok(v)` makes `v` available through the returned handle. `Err(e)` ends the whole
    /// scope with [`ScopeError::Failed`]`(e)` unless another failure came first; a panic
    /// ends it with [`ScopeError::Panicked`]. After [`cancel`](Self::cancel), or once the
    /// scope is over, `child` is dropped at once without being polled (its handle gives
    /// `None`). Callable from any thread.
    pub fn spawn<T, F>(&self, child: F) -> ScopedJoinHandle<T>
    where
        F: Future<Output = Result<T, E>> + Send + 'env,
        T: Send + 'env,
    {
        let out = Arc::new(Output {
            state: Mutex::new(OutputState {
                value: None,
                done: false,
                waker: None,
            }),
        });
        let task: ChildFuture<'env, E> = Box::pin(ChildTask {
            fut: child,
            out: out.clone(),
        });
        let refused = {
            let mut inc = lock(&self.shared.incoming);
            if inc.closed || inc.cancelled {
                Some(task)
            } else {
                inc.children.push(task);
                None
            }
        };
        match refused {
            None => self.shared.ready.notify(),
            // The lock is released: the child's drop may call back into the scope.
            Some(task) => {
                out.finish(None);
                drop(task);
            }
        }
        ScopedJoinHandle { out }
    }

    /// Cancels the scope's children: every unfinished child is dropped (at the scope's
    /// next poll, on the thread polling it; immediately-running ones after their current
    /// poll returns) and later `spawn`s are dropped unrun. Their handles give `None`.
    /// The body goes on; the scope then returns the body's result once it is done.
    /// Idempotent; callable from any thread.
    pub fn cancel(&self) {
        let newly = {
            let mut inc = lock(&self.shared.incoming);
            !mem::replace(&mut inc.cancelled, true)
        };
        if newly {
            self.shared.ready.notify();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.shared.incoming).cancelled
    }
}

struct Output<T> {
    state: Mutex<OutputState<T>>,
}

struct OutputState<T> {
    value: Option<T>,
    done: bool,
    waker: Option<Waker>,
}

impl<T> Output<T> {
    fn finish(&self, value: Option<T>) {
        let waker = {
            let mut st = lock(&self.state);
            if st.done {
                return;
            }
            st.done = true;
            st.value = value;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A child as spawned: its future, and where its value goes.
struct ChildTask<F, T> {
    fut: F,
    out: Arc<Output<T>>,
}

impl<F, T, E> Future for ChildTask<F, T>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of the
        // (pinned) ChildTask, and ChildTask's Drop does not move it.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(v)) => {
                this.out.finish(Some(v));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<F, T> Drop for ChildTask<F, T> {
    fn drop(&mut self) {
        // Failed, panicked or cancelled: the handle learns there is no value.
        self.out.finish(None);
    }
}

/// A child's output: a future that resolves to `Some(value)` once the child returned
/// `Ok(value)`, or to `None` if it failed, panicked or was dropped (scope cancelled or
/// ended). It may be awaited in the body, in another child, or after the scope;
/// dropping it does not affect the child.
pub struct ScopedJoinHandle<T> {
    out: Arc<Output<T>>,
}

impl<T> fmt::Debug for ScopedJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedJoinHandle")
            .field("done", &lock(&self.out.state).done)
            .finish()
    }
}

impl<T> ScopedJoinHandle<T> {
    /// Whether the child is over (finished, failed or dropped).
    pub fn is_finished(&self) -> bool {
        lock(&self.out.state).done
    }
}

impl<T> Future for ScopedJoinHandle<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = lock(&self.out.state);
        if st.done {
            return Poll::Ready(st.value.take());
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Runs `body` with a [`Scope`] whose children may borrow anything that outlives
/// `'env`, and completes once the body returned and every child is finished — or, on
/// the first failure, once everything else was dropped.
///
/// Returns the body's `Ok` value; [`ScopeError::Failed`] with the first `Err` of the body
/// or a child; [`ScopeError::Panicked`] with the payload of the first child that
/// panicked (see the [module docs](self)). The returned future is `Send` when the body
/// is (children must be `Send`). Dropping it before it completes drops the body and
/// every child, on the dropping thread. Children run on the thread that polls the scope:
/// for parallelism across workers, spawn tasks instead.
///
/// ```
/// # let rt = veloq::Runtime::builder().workers(1).build().unwrap();
/// let words = vec!["thread", "per", "core"];
/// let total = rt.block_on(async {
///     let words = &words;
///     veloq::scope(|s| async move {
///         let lens: Vec<_> = (0..words.len())
///             .map(|i| s.spawn(async move { Ok::<_, ()>(words[i].len()) }))
///             .collect();
///         let mut total = 0;
///         for h in lens {
///             total += h.await.unwrap();
///         }
///         Ok(total)
///     })
///     .await
/// });
/// assert_eq!(total.unwrap(), 13);
/// ```
///
/// A child cannot borrow what the body owns (it would dangle once the body is gone):
/// ```compile_fail
/// # async fn f() {
/// let _ = veloq::scope(|s| async move {
///     let local = vec![1, 2, 3];
///     s.spawn(async { Ok::<usize, ()>(local.len()) });
///     Ok::<(), ()>(())
/// })
/// .await;
/// # }
/// ```
///
/// and the scope cannot outlive what its children borrow:
/// ```compile_fail
/// let fut = {
///     let data = vec![1, 2, 3];
///     let data = &data;
///     veloq::scope(|s| async move {
///         s.spawn(async move { Ok::<usize, ()>(data.len()) });
///         Ok::<(), ()>(())
///     })
/// };
/// drop(fut);
/// ```
pub fn scope<'env, E, R, F, Fut>(body: F) -> ScopeFuture<'env, E, R, Fut>
where
    E: Send + 'env,
    F: FnOnce(Scope<'env, E>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let ready = Arc::new(Ready {
        queue: Mutex::new(vec![BODY]),
        parent: Mutex::new(None),
        polling: AtomicBool::new(false),
    });
    let shared = Arc::new(Shared {
        incoming: Mutex::new(Incoming {
            children: Vec::new(),
            cancelled: false,
            closed: false,
        }),
        ready: ready.clone(),
        _env: PhantomData,
    });
    let body_waker = Arc::new(ChildWaker {
        idx: BODY,
        queued: AtomicBool::new(true),
        ready,
    });
    let fut = body(Scope {
        shared: shared.clone(),
    });
    ScopeFuture {
        shared,
        body: Some(Box::pin(fut)),
        body_waker: Waker::from(body_waker.clone()),
        body_wake: body_waker,
        body_round: 0,
        output: None,
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        wakers: Vec::new(),
        round: 0,
        batch: Vec::new(),
        deferred: Vec::new(),
        done: false,
    }
}

/// A child's waker as the scope future keeps it (only the scope future polls children,
/// so these need no lock).
struct Entry {
    wake: Arc<ChildWaker>,
    waker: Waker,
    /// The scope poll in which the child was last polled.
    round: u64,
}

/// The future returned by [`scope`]; see there. Polling it again after it completed
/// panics.
#[must_use = "a scope does nothing unless awaited"]
pub struct ScopeFuture<'env, E, R, Fut> {
    shared: Arc<Shared<'env, E>>,
    body: Option<Pin<Box<Fut>>>,
    body_wake: Arc<ChildWaker>,
    body_waker: Waker,
    body_round: u64,
    output: Option<R>,
    /// The children, owned here: `None` for a free slot.
    slots: Vec<Option<ChildFuture<'env, E>>>,
    free: Vec<usize>,
    /// Children in `slots`.
    live: usize,
    wakers: Vec<Entry>,
    round: u64,
    batch: Vec<usize>,
    deferred: Vec<usize>,
    done: bool,
}

// Nothing is structurally pinned: the body is boxed, children are boxed in `shared`.
impl<E, R, Fut> Unpin for ScopeFuture<'_, E, R, Fut> {}

impl<E, R, Fut> fmt::Debug for ScopeFuture<'_, E, R, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeFuture")
            .field("body_done", &self.body.is_none())
            .field("done", &self.done)
            .finish()
    }
}

/// What polling one child or the body gave.
enum Step<E> {
    Continue,
    Fail(ScopeError<E>),
}

impl<'env, E, R, Fut> ScopeFuture<'env, E, R, Fut>
where
    Fut: Future<Output = Result<R, E>>,
{
    fn poll_body(&mut self) -> Step<E> {
        if self.body_round == self.round {
            self.deferred.push(BODY);
            return Step::Continue;
        }
        let Some(body) = self.body.as_mut() else {
            return Step::Continue;
        };
        self.body_round = self.round;
        self.body_wake.queued.store(false, Release);
        let mut cx = Context::from_waker(&self.body_waker);
        match body.as_mut().poll(&mut cx) {
            Poll::Pending => Step::Continue,
            Poll::Ready(Ok(r)) => {
                self.output = Some(r);
                self.body = None;
                Step::Continue
            }
            Poll::Ready(Err(e)) => {
                self.body = None;
                Step::Fail(ScopeError::Failed(e))
            }
        }
    }

    /// Moves the children spawned since the last look into slots, queueing each for a
    /// poll in this round. Returns false when there were none.
    fn adopt_incoming(&mut self) -> bool {
        let (new, cancelled) = {
            let mut inc = lock(&self.shared.incoming);
            if inc.children.is_empty() {
                return false;
            }
            (mem::take(&mut inc.children), inc.cancelled)
        };
        if cancelled {
            drop(new); // lock released: their drops may call back into the scope
            return true;
        }
        for child in new {
            let idx = match self.free.pop() {
                Some(i) => {
                    self.slots[i] = Some(child);
                    i
                }
                None => {
                    self.slots.push(Some(child));
                    let idx = self.slots.len() - 1;
                    let wake = Arc::new(ChildWaker {
                        idx,
                        queued: AtomicBool::new(false),
                        ready: self.shared.ready.clone(),
                    });
                    self.wakers.push(Entry {
                        waker: Waker::from(wake.clone()),
                        wake,
                        round: 0,
                    });
                    idx
                }
            };
            self.live += 1;
            self.batch.push(idx);
        }
        true
    }

    fn poll_child(&mut self, idx: usize) -> Step<E> {
        let Some(Some(fut)) = self.slots.get_mut(idx) else {
            return Step::Continue; // a stale wake of a freed slot
        };
        let entry = &mut self.wakers[idx];
        if entry.round == self.round {
            self.deferred.push(idx);
            return Step::Continue;
        }
        entry.round = self.round;
        entry.wake.queued.store(false, Release);
        let mut cx = Context::from_waker(&entry.waker);
        let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        let result = match polled {
            Ok(Poll::Pending) => return Step::Continue,
            Ok(Poll::Ready(r)) => r.map_err(ScopeError::Failed),
            Err(payload) => Err(ScopeError::Panicked(payload)),
        };
        let fut = self.slots[idx].take();
        self.free.push(idx);
        self.live -= 1;
        // A panicking child's drop could panic again; its payload is already taken.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
        match result {
            Ok(()) => Step::Continue,
            Err(e) => Step::Fail(e),
        }
    }

    /// Drops every child, owned or still incoming; with `close`, later spawns are
    /// refused. The flag is set before the drops, which may call back into the scope.
    fn drop_children(&mut self, close: bool) {
        let incoming = {
            let mut inc = lock(&self.shared.incoming);
            if close {
                inc.closed = true;
            }
            mem::take(&mut inc.children)
        };
        let owned: Vec<_> = self.slots.iter_mut().filter_map(Option::take).collect();
        self.free.clear();
        self.free.extend(0..self.slots.len());
        self.live = 0;
        drop(owned);
        drop(incoming);
    }

    /// Ends the scope with `err`: every child and the body are dropped.
    fn fail(&mut self, err: ScopeError<E>) -> Poll<Result<R, ScopeError<E>>> {
        self.shared.ready.polling.store(false, SeqCst);
        self.done = true;
        self.drop_children(true);
        self.body = None;
        Poll::Ready(Err(err))
    }
}

impl<'env, E, R, Fut> Future for ScopeFuture<'env, E, R, Fut>
where
    Fut: Future<Output = Result<R, E>>,
{
    type Output = Result<R, ScopeError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.done, "ScopeFuture polled after completion");
        {
            let mut parent = lock(&this.shared.ready.parent);
            match &*parent {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *parent = Some(cx.waker().clone()),
            }
        }
        let ready = this.shared.ready.clone();
        ready.polling.store(true, SeqCst);
        this.round += 1;
        loop {
            // Woken children and the body, then children spawned since the last look.
            this.batch.append(&mut lock(&ready.queue));
            this.adopt_incoming();
            if this.batch.is_empty() {
                ready.polling.store(false, SeqCst);
                let woken = !lock(&ready.queue).is_empty();
                if !woken && lock(&this.shared.incoming).children.is_empty() {
                    break;
                }
                ready.polling.store(true, SeqCst);
                continue;
            }
            let mut batch = mem::take(&mut this.batch);
            for &idx in batch.iter() {
                let step = if idx == BODY {
                    this.poll_body()
                } else {
                    this.poll_child(idx)
                };
                if let Step::Fail(e) = step {
                    // The rest of the batch belongs to children being dropped.
                    return this.fail(e);
                }
            }
            batch.clear();
            if this.batch.is_empty() {
                this.batch = batch; // keep the allocation
            }
        }
        if !this.deferred.is_empty() {
            // Woken again during this poll: next poll, after the worker ran others.
            lock(&ready.queue).append(&mut this.deferred);
            cx.waker().wake_by_ref();
        }
        if this.live > 0 && lock(&this.shared.incoming).cancelled {
            this.drop_children(false);
        }
        if this.body.is_none() && this.live == 0 {
            let mut inc = lock(&this.shared.incoming);
            if inc.children.is_empty() {
                inc.closed = true;
                drop(inc);
                this.done = true;
                return Poll::Ready(Ok(this.output.take().expect("body returned Ok")));
            }
        }
        Poll::Pending
    }
}

impl<E, R, Fut> Drop for ScopeFuture<'_, E, R, Fut> {
    fn drop(&mut self) {
        if !self.done {
            // Children first: none may run, or be left behind, once the scope is gone.
            let incoming = {
                let mut inc = lock(&self.shared.incoming);
                inc.closed = true;
                mem::take(&mut inc.children)
            };
            let owned: Vec<_> = self.slots.iter_mut().filter_map(Option::take).collect();
            drop(owned);
            drop(incoming);
            self.body = None;
        }
    }
}
