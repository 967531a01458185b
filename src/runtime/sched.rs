//! The Linux scheduling policy the runtime's threads run under
//! (`RuntimeBuilder::sched_batch`).
//!
//! A worker woken by the kernel (a completion, an eventfd write) while another thread runs
//! on its core preempts that thread at once under the default policy, `SCHED_OTHER`. When
//! the thread it preempts is the one feeding it (a client or load generator on the same
//! core, writing request after request), every request costs two context switches, and
//! the worker handles one at a time. Under `SCHED_BATCH` a woken worker does not preempt:
//! it runs when the core's current thread sleeps or its time slice ends, by which time
//! the requests have queued up and one turn of the worker handles them all. On a core of
//! its own a worker has nothing to preempt, and the two policies behave the same; time
//! slices and fairness (nice values) are those of `SCHED_OTHER` either way.
//!
//! Only a worker that would run under `SCHED_OTHER` is switched. Threads start under the
//! policy of the thread that starts them (unless `SCHED_RESET_ON_FORK` resets a real-time
//! one to `SCHED_OTHER`), so a runtime built by a `SCHED_FIFO`, `SCHED_RR`, `SCHED_IDLE`
//! or `SCHED_BATCH` thread keeps that policy on its workers. The blocking pool's threads
//! that a worker starts go back to the policy the builder's threads start under. Anything
//! else a worker starts keeps `SCHED_BATCH`, as it would any policy: threads a task or
//! callback starts, processes it forks (the policy survives fork and exec), thread pools
//! first used from a task, the kernel's io-wq helper threads of the worker's ring.

/// `SCHED_OTHER`, the default policy (0 on Linux).
pub(crate) const SCHED_OTHER: i32 = libc::SCHED_OTHER;
/// `SCHED_BATCH` (3 on Linux).
pub(crate) const SCHED_BATCH: i32 = libc::SCHED_BATCH;

/// The policies of a runtime's threads, decided once when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadPolicies {
    /// The policy the threads the builder's thread starts run under: its own, or
    /// `SCHED_OTHER` when `SCHED_RESET_ON_FORK` resets its real-time one.
    pub(crate) inherited: i32,
    /// The policy workers run under (`inherited` unless switched to `SCHED_BATCH`).
    pub(crate) worker: i32,
}

impl Default for ThreadPolicies {
    /// Nothing switched: everything under `SCHED_OTHER`.
    fn default() -> Self {
        ThreadPolicies {
            inherited: SCHED_OTHER,
            worker: SCHED_OTHER,
        }
    }
}

impl ThreadPolicies {
    /// Decides on the calling (builder's) thread: workers go to `SCHED_BATCH` when
    /// `sched_batch` is asked for and the threads this one starts run under
    /// `SCHED_OTHER`.
    pub(crate) fn decide(sched_batch: bool) -> Self {
        // SAFETY: plain system call on the calling thread (pid 0); no memory is passed.
        let raw = unsafe { libc::sched_getscheduler(0) };
        let inherited = if raw < 0 {
            SCHED_OTHER
        } else {
            inherited_from(raw)
        };
        let worker = if sched_batch && inherited == SCHED_OTHER {
            SCHED_BATCH
        } else {
            inherited
        };
        ThreadPolicies { inherited, worker }
    }

    /// Called by a worker thread as it starts: switches it to the workers' policy.
    /// Returns the policy it runs under (the inherited one when the kernel refused).
    pub(crate) fn enter_worker(&self) -> i32 {
        let now = current();
        if now != self.worker && now == self.inherited {
            set(self.worker);
        }
        current()
    }

    /// Called by a blocking-pool thread as it starts: if it inherited the workers'
    /// policy from the worker that started it, it goes back to `inherited`.
    pub(crate) fn enter_blocking(&self) {
        if self.worker != self.inherited && current() == self.worker {
            set(self.inherited);
        }
    }
}

/// The policy a thread started by one under `raw` (as `sched_getscheduler` gives it)
/// runs under: `SCHED_RESET_ON_FORK` turns a real-time policy into `SCHED_OTHER`.
fn inherited_from(raw: i32) -> i32 {
    let policy = raw & !libc::SCHED_RESET_ON_FORK;
    let real_time = matches!(
        policy,
        libc::SCHED_FIFO | libc::SCHED_RR | libc::SCHED_DEADLINE
    );
    if raw & libc::SCHED_RESET_ON_FORK != 0 && real_time {
        SCHED_OTHER
    } else {
        policy
    }
}

/// The calling thread's policy (without `SCHED_RESET_ON_FORK`); `SCHED_OTHER` if the
/// kernel does not say.
pub(crate) fn current() -> i32 {
    // SAFETY: plain system call on the calling thread (pid 0); no memory is passed.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy < 0 {
        SCHED_OTHER
    } else {
        policy & !libc::SCHED_RESET_ON_FORK
    }
}

/// Switches the calling thread to `policy` (a non-real-time one: priority 0); whether
/// the kernel agreed.
fn set(policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread (so policy changes stay there).
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn a_default_thread_gets_batch_workers_and_keeps_its_own_policy() {
        on_thread(|| {
            assert_eq!(current(), SCHED_OTHER);
            let p = ThreadPolicies::decide(true);
            assert_eq!(p.inherited, SCHED_OTHER);
            assert_eq!(p.worker, SCHED_BATCH);
            assert_eq!(current(), SCHED_OTHER, "deciding changes nothing");
            let inner = on_thread(move || (p.enter_worker(), current()));
            assert_eq!(inner, (SCHED_BATCH, SCHED_BATCH));
        });
    }

    #[test]
    fn off_changes_nothing() {
        on_thread(|| {
            let p = ThreadPolicies::decide(false);
            assert_eq!(p.worker, SCHED_OTHER);
            assert_eq!(on_thread(move || p.enter_worker()), SCHED_OTHER);
        });
    }

    #[test]
    fn a_blocking_thread_started_by_a_worker_goes_back() {
        on_thread(|| {
            let p = ThreadPolicies::decide(true);
            let (worker, blocking) = on_thread(move || {
                let w = p.enter_worker();
                (
                    w,
                    on_thread(move || {
                        p.enter_blocking();
                        current()
                    }),
                )
            });
            assert_eq!(worker, SCHED_BATCH);
            assert_eq!(blocking, SCHED_OTHER);
        });
    }

    #[test]
    fn reset_on_fork_turns_only_real_time_policies_into_other() {
        let reset = libc::SCHED_RESET_ON_FORK;
        assert_eq!(inherited_from(libc::SCHED_FIFO | reset), SCHED_OTHER);
        assert_eq!(inherited_from(libc::SCHED_RR | reset), SCHED_OTHER);
        assert_eq!(inherited_from(libc::SCHED_FIFO), libc::SCHED_FIFO);
        assert_eq!(inherited_from(libc::SCHED_IDLE | reset), libc::SCHED_IDLE);
        assert_eq!(inherited_from(SCHED_BATCH | reset), SCHED_BATCH);
        assert_eq!(inherited_from(SCHED_OTHER | reset), SCHED_OTHER);
    }

    #[test]
    fn an_idle_builder_keeps_idle_workers() {
        on_thread(|| {
            assert!(set(libc::SCHED_IDLE));
            let p = ThreadPolicies::decide(true);
            assert_eq!(p.worker, libc::SCHED_IDLE);
            assert_eq!(on_thread(move || p.enter_worker()), libc::SCHED_IDLE);
        });
    }
}
