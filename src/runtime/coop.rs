//! Cooperative scheduling: a budget per task poll.
//!
//! A worker cannot preempt a future, so a task that keeps finding its I/O or its joins
//! ready could run a long time inside one poll while everything else queued on its
//! worker waits. To bound that, every poll of a task starts with a budget of units
//! ([`RuntimeBuilder::coop_budget`](super::RuntimeBuilder::coop_budget), default
//! [`DEFAULT_COOP_BUDGET`]). libveloq's own leaf futures (every I/O operation of `net`,
//! `fs` and `time`, and the join handles) spend one unit each time they return `Ready`.
//! Once the budget is spent they return `Pending` instead, after waking their task, which
//! therefore goes to the back of its worker's run queue: the worker goes back to its loop
//! (other tasks, mesh messages, I/O) and polls the task again later with a fresh budget.
//!
//! What a leaf does not return stays where it was: an operation that completed keeps its
//! result in the driver (a multishot operation all its results, in order) until the next
//! poll, a finished task keeps its output for its handle. Nothing is lost, it is only
//! handed over one turn later.
//!
//! The budget lives in a thread-local cell: on a thread that is not polling a task of a
//! veloq worker (`Runtime::block_on` on a host thread, another runtime's threads, a C
//! callback) it is unconstrained and a leaf never waits for it. Spending a unit is a
//! thread-local read and write; no atomic operation, no clock.

use std::cell::Cell;
use std::task::{Context, Poll};

/// Units a task poll may spend unless the builder says otherwise.
pub const DEFAULT_COOP_BUDGET: u32 = 128;

/// The budget of a thread that is not polling a task: never spent, never exhausted.
const UNCONSTRAINED: u32 = u32::MAX;

thread_local! {
    static BUDGET: Cell<u32> = const { Cell::new(UNCONSTRAINED) };
}

/// Runs `poll` (one poll of a task) with a fresh budget of `limit` units (0: no budget),
/// then puts back the budget the thread had before.
#[inline]
pub(crate) fn with_budget<R>(limit: u32, poll: impl FnOnce() -> R) -> R {
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let fresh = if limit == 0 { UNCONSTRAINED } else { limit };
    let _restore = Restore(BUDGET.with(|b| b.replace(fresh)));
    poll()
}

/// Permission for a leaf future to make progress, with one unit of budget already taken.
/// The unit is given back when the permission is dropped without
/// [`made_progress`](Spend::made_progress) (the leaf returned `Pending`).
#[must_use]
pub(crate) struct Spend {
    refund: bool,
}

impl Spend {
    /// The leaf returns `Ready`: the unit stays spent.
    #[inline]
    pub(crate) fn made_progress(mut self) {
        self.refund = false;
    }
}

impl Drop for Spend {
    #[inline]
    fn drop(&mut self) {
        if self.refund {
            BUDGET.with(|b| b.set(b.get() + 1));
        }
    }
}

/// Called by a leaf future before it looks for its result. `Ready` with a unit taken
/// when the task has budget left (or none applies on this thread); otherwise wakes the
/// task and returns `Pending`, and the leaf must return `Pending` without touching its
/// result, which stays for the next poll.
#[inline]
pub(crate) fn poll_proceed(cx: &mut Context<'_>) -> Poll<Spend> {
    BUDGET.with(|b| match b.get() {
        UNCONSTRAINED => Poll::Ready(Spend { refund: false }),
        0 => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        left => {
            b.set(left - 1);
            Poll::Ready(Spend { refund: true })
        }
    })
}

/// Polls `inner` as a leaf: only with budget left, spending one unit when it is `Ready`.
#[inline]
pub(crate) fn poll_leaf<T>(
    cx: &mut Context<'_>,
    inner: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    let Poll::Ready(spend) = poll_proceed(cx) else {
        return Poll::Pending;
    };
    let polled = inner(cx);
    if polled.is_ready() {
        spend.made_progress();
    }
    polled
}

/// Spends one unit of the current task's budget, yielding first when it is spent (the
/// task goes to the back of its worker's run queue and continues with a fresh budget).
///
/// For a loop that makes progress without awaiting any libveloq operation (CPU work,
/// another library's always-ready futures): awaiting this once per iteration lets the
/// rest of the worker run every [`DEFAULT_COOP_BUDGET`] iterations or so. Off a worker,
/// or with the budget turned off (`coop_budget(0)`), it is ready at once.
pub async fn consume_budget() {
    std::future::poll_fn(|cx| poll_leaf(cx, |_| Poll::Ready(()))).await
}

/// Units the current task poll has left: `None` on a thread that is not polling a task
/// of a veloq worker, or when the budget is turned off.
pub fn budget_remaining() -> Option<u32> {
    BUDGET.with(|b| match b.get() {
        UNCONSTRAINED => None,
        left => Some(left),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn noop() -> Waker {
        Waker::from(Arc::new(Noop))
    }

    #[test]
    fn off_a_task_poll_the_budget_is_unconstrained() {
        assert_eq!(budget_remaining(), None);
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            assert!(poll_leaf(&mut cx, |_| Poll::Ready(())).is_ready());
        }
        assert_eq!(budget_remaining(), None);
    }

    #[test]
    fn a_poll_spends_its_budget_then_waits_and_the_old_budget_comes_back() {
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        with_budget(3, || {
            for left in [2, 1, 0] {
                assert!(poll_leaf(&mut cx, |_| Poll::Ready(())).is_ready());
                assert_eq!(budget_remaining(), Some(left));
            }
            let mut looked = false;
            let polled = poll_leaf(&mut cx, |_| {
                looked = true;
                Poll::Ready(())
            });
            assert!(polled.is_pending());
            assert!(!looked, "an exhausted leaf must not take its result");
        });
        assert_eq!(budget_remaining(), None);
    }

    #[test]
    fn a_pending_leaf_spends_nothing() {
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        with_budget(2, || {
            for _ in 0..10 {
                assert!(poll_leaf(&mut cx, |_| Poll::<()>::Pending).is_pending());
            }
            assert_eq!(budget_remaining(), Some(2));
        });
    }

    #[test]
    fn a_zero_limit_turns_the_budget_off() {
        with_budget(0, || assert_eq!(budget_remaining(), None));
    }
}
