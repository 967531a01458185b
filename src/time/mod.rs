//! Timers on the worker's io_uring ring: [`sleep`] and [`timeout`].
//!
//! Both must run inside a task on a runtime worker. Once shutdown has started, timers
//! no longer wait: a `sleep` ends at once (I/O is cancelled at shutdown).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::io::op::Op;

/// Waits for `duration` (an io_uring timeout on the current worker's ring).
///
/// # Panics
/// When awaited off a runtime worker.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        duration,
        op: None,
        done: false,
    }
}

/// The future of [`sleep`]. Dropping it cancels the timer.
pub struct Sleep {
    duration: Duration,
    op: Option<Op<()>>,
    done: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        if self.op.is_none() {
            let ns = u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX);
            match Op::timeout(ns) {
                Ok(op) => self.op = Some(op),
                Err(e) if e.raw_os_error() == Some(libc::ESHUTDOWN) => {
                    self.done = true;
                    return Poll::Ready(());
                }
                Err(e) => panic!("veloq::time::sleep: {e}"),
            }
        }
        let op = self.op.as_mut().expect("set above");
        match Pin::new(op).poll(cx) {
            Poll::Ready(_) => {
                self.op = None;
                self.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The error of [`timeout`]: the time ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` for at most `duration`: its output, or `Err(Elapsed)` (the future is
/// then dropped, cancelling its I/O).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
