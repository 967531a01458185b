//! The park handshake between a worker going to sleep and a thread handing it work.
//!
//! States: `RUNNING → PARKING → PARKED → RUNNING`. The worker announces PARKING, looks at
//! its queues once more, and only then commits to PARKED and sleeps. A notifier publishes
//! its work first, then reads the state: it makes a wake-up system call only when it finds
//! PARKED, and finds PARKING often enough to cancel a park that has not committed yet.
//! Both sides put a SeqCst fence between their write and their read, so at least one of
//! them sees the other (no lost wake-up, proved by the loom model below).

use crate::sync::{fence, AtomicU8};
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};

const RUNNING: u8 = 0;
const PARKING: u8 = 1;
const PARKED: u8 = 2;

/// A worker's park state.
#[derive(Debug)]
pub(crate) struct ParkState(AtomicU8);

impl ParkState {
    pub(crate) fn new() -> Self {
        ParkState(AtomicU8::new(RUNNING))
    }

    /// Worker, step 1: RUNNING → PARKING. Afterwards the worker must look at every queue
    /// once more and call `abort_park` if it finds work.
    pub(crate) fn begin_park(&self) {
        self.0.store(PARKING, Relaxed);
        fence(SeqCst);
    }

    /// Worker: found work after `begin_park`; back to RUNNING.
    pub(crate) fn abort_park(&self) {
        self.0.store(RUNNING, Relaxed);
    }

    /// Worker, step 2: PARKING → PARKED. Returns false when a notifier already moved the
    /// state back to RUNNING: the worker must not sleep.
    pub(crate) fn commit_park(&self) -> bool {
        self.0
            .compare_exchange(PARKING, PARKED, SeqCst, Relaxed)
            .is_ok()
    }

    /// Worker: woke up (notified or for any other reason); back to RUNNING.
    pub(crate) fn unparked(&self) {
        self.0.store(RUNNING, Relaxed);
    }

    /// Notifier, after publishing work: returns true when the worker sleeps and the
    /// caller must wake it with a system call (exactly one notifier gets true per sleep).
    pub(crate) fn notify(&self) -> bool {
        fence(SeqCst);
        if self.0.load(Relaxed) == RUNNING {
            return false;
        }
        self.0.swap(RUNNING, SeqCst) == PARKED
    }

    /// Whether the worker is asleep or about to be (a hint for load balancing).
    pub(crate) fn is_parked(&self) -> bool {
        self.0.load(Acquire) != RUNNING
    }
}

#[cfg(veloq_loom)]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicBool, AtomicU32};

    /// A worker parking while a notifier publishes work: either the worker sees the work
    /// before sleeping, or the notifier is told to wake it. Never neither.
    #[test]
    fn loom_park_never_loses_a_wakeup() {
        loom::model(|| {
            let park = Arc::new(ParkState::new());
            let work = Arc::new(AtomicBool::new(false));
            let wakes = Arc::new(AtomicU32::new(0));

            let notifier = {
                let (park, work, wakes) = (park.clone(), work.clone(), wakes.clone());
                loom::thread::spawn(move || {
                    work.store(true, Relaxed);
                    if park.notify() {
                        wakes.fetch_add(1, SeqCst);
                    }
                })
            };

            park.begin_park();
            let slept = if work.load(Relaxed) {
                park.abort_park();
                false
            } else {
                park.commit_park()
            };
            notifier.join().unwrap();
            if slept {
                assert_eq!(wakes.load(SeqCst), 1, "a sleeping worker must be woken");
            } else {
                assert_eq!(
                    wakes.load(SeqCst),
                    0,
                    "no system call for a worker that did not sleep"
                );
            }
        });
    }
}
