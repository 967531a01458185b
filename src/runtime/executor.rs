//! `LocalExecutor`: the loop every worker thread runs.
//!
//! One turn visits every source with its own budget, so none can starve another: the
//! local run queue, the inbound mesh channels, the pinned inbox and the own injector.
//! A turn that found nothing steals a batch from a random peer's injector, spins a
//! little (running mesh messages as soon as they arrive, the other sources in the turn
//! that follows; for as long as the worker's recent spins make worth it, see `spin.rs`),
//! then parks in the io_uring ring until notified.

pub(crate) mod spawner;

use std::cell::{Cell, RefMut};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::time::Instant;

use crossbeam_deque::Steal;

use super::context::RuntimeContext;
use super::introspect::coarse_ms;
use super::job::{InboxJob, Job, JobParts};
use super::spin::AdaptiveSpin;
use crate::io::driver::{cqe_batch, Completed, Delivery, Driver, REAP_BATCH};
use spawner::{below, next_random};

/// Where a job came from (for statistics).
#[derive(Clone, Copy)]
enum Source {
    Local,
    Mesh,
    Inbox,
    Injector,
    Stolen,
}

/// Counters the worker keeps in cells and publishes once per turn.
#[derive(Default)]
pub(crate) struct LocalCounters {
    local: Cell<u64>,
    mesh: Cell<u64>,
    inbox: Cell<u64>,
    injector: Cell<u64>,
    stolen: Cell<u64>,
    /// Re-polls of woken tasks (not starts).
    polls: Cell<u64>,
    /// Tasks and callbacks spawned by this worker's jobs.
    pub(crate) spawned: Cell<u64>,
    /// The worker's progress counter (see `WorkerWatch::progress`).
    progress: Cell<u64>,
    /// `coarse_ms` as first read in the current loop turn (`TURN_MS_UNREAD` until a task
    /// needed it): a task's age starts here. Read lazily so that turns which make no
    /// task live (callbacks, re-polls) read no clock.
    turn_ms: Cell<u32>,
    /// Jobs at the front of `buffer` that came from the own injector (the rest were
    /// stolen): keeps the by-source counts exact.
    buffered_own: Cell<usize>,
}

/// Adds a worker-local count to its published counter and zeroes it. Only the worker
/// writes the counter, so a plain load and store do (no locked instruction).
#[inline]
fn publish_count(local: &Cell<u64>, shared: &AtomicU64) {
    let v = local.get();
    if v > 0 {
        local.set(0);
        shared.store(shared.load(Relaxed).wrapping_add(v), Relaxed);
    }
}

/// `LocalCounters::turn_ms` before the turn read the clock. Should the clock itself read
/// this value (one millisecond in 49 days), the turn merely reads it again.
const TURN_MS_UNREAD: u32 = u32::MAX;

impl LocalCounters {
    /// `coarse_ms` as of the current loop turn (read on the turn's first call).
    pub(crate) fn turn_ms(&self) -> u32 {
        let ms = self.turn_ms.get();
        if ms != TURN_MS_UNREAD {
            return ms;
        }
        let ms = coarse_ms();
        self.turn_ms.set(ms);
        ms
    }
}

impl RuntimeContext {
    /// The worker loop; returns when shutdown has drained every worker.
    pub(crate) fn run_loop(&self) {
        let budget = self.registry.config.budget;
        let mut cancelled = false;
        loop {
            if self.counted_idle.get() && self.has_work() {
                self.leave_idle();
            }
            self.bump_progress();
            self.stats.turn_ms.set(TURN_MS_UNREAD);
            let mut ran = self.poll_io();
            if self.me().has_remote() {
                ran += self.me().drain_remote(self);
            }
            ran += self.run_local(budget);
            ran += self.run_mesh(budget);
            ran += self.run_inbox(budget);
            ran += self.run_injector(budget);
            if ran > 0 {
                self.end_turn();
                // Loop again only when something is left to run: a turn that would find
                // nothing (typically: a task submitted I/O and waits for it) costs more
                // than asking, and its only act, trying to steal, follows here anyway.
                // Shutdown keeps the plain loop.
                if self.registry.closed.load(Relaxed) || self.has_work() {
                    continue;
                }
            }
            // Nothing left to run here. A turn that ran something has published above; one
            // that ran nothing has nothing to publish (every count and the local queue are
            // as the last `end_turn` left them). Try to steal, then go idle.
            if self.steal(budget) {
                continue;
            }
            if self.registry.closed.load(SeqCst) {
                if !cancelled && self.registry.cancel.load(SeqCst) {
                    cancelled = true;
                    self.cancel_all();
                    continue;
                }
                if self.locally_quiet() {
                    if !self.counted_idle.replace(true) {
                        self.registry.enter_idle();
                    }
                    if self.registry.try_terminate() {
                        self.completions.flush();
                        return;
                    }
                }
            }
            self.idle(cancelled);
        }
    }

    /// Submits the I/O queued since the last turn and carries out the completions that
    /// arrived (waking futures, running C callbacks). At most one system call, none when
    /// the ring has nothing for us. Returns how many completions were handled.
    pub(crate) fn poll_io(&self) -> usize {
        if !self.io_closed.get() && self.registry.closed.load(Relaxed) {
            // Shutdown: in-flight I/O is cancelled, new I/O refused.
            self.io_closed.set(true);
            self.driver.borrow_mut().close();
        }
        {
            let mut driver = self.driver.borrow_mut();
            if !driver.has_completions() {
                // Submissions alone, with nothing else for this worker to do, wait for the
                // park that follows: one enter hands them over and sleeps (see `idle`).
                if !driver.has_queued() || self.may_defer_submissions() {
                    return 0;
                }
            }
            driver.flush();
        }
        let handled = self.reap_io();
        if handled > 0 {
            self.publish_io_stats();
        }
        handled
    }

    /// Carries out up to `REAP_BATCH` completions, one at a time: each is resolved with
    /// the driver borrowed, then delivered (a future woken, a C callback run) once it no
    /// longer is, since a callback may submit more I/O. The driver's own completions
    /// (cancelled before the kernel saw them) come first, as in `Driver::reap`.
    #[inline(never)]
    fn reap_io(&self) -> usize {
        // `bump_progress` with the worker's watch looked up once for the batch.
        let watch = &self.me().watch.progress;
        let mut handled = 0;
        while handled < REAP_BATCH {
            let mut driver = self.driver.borrow_mut();
            let Some((user_data, res, flags)) = driver.pop_synthetic() else {
                break;
            };
            self.complete_io(driver, user_data, res, flags, watch);
            handled += 1;
        }
        let mut batch = cqe_batch();
        while handled < REAP_BATCH {
            let cqes = self.driver.borrow_mut().take_completions(&mut batch);
            let taken = cqes.len();
            handled += taken;
            for cqe in cqes {
                let driver = self.driver.borrow_mut();
                self.complete_io(driver, cqe.user_data(), cqe.result(), cqe.flags(), watch);
            }
            if taken < batch.len() {
                // The ring had no more; what arrives meanwhile is for the next turn.
                break;
            }
        }
        if handled > 0 {
            self.driver.borrow_mut().reaped(handled);
        }
        handled
    }

    /// Resolves one completion with the `driver` borrow it is given, then carries out
    /// what it calls for once that borrow is released.
    #[inline(always)]
    fn complete_io(
        &self,
        mut driver: RefMut<'_, Driver>,
        user_data: u64,
        res: i32,
        flags: u32,
        watch: &AtomicU64,
    ) {
        match driver.complete(user_data, res, flags) {
            Completed::Deliver(d) => {
                drop(driver);
                self.deliver(d, watch);
            }
            Completed::Nothing => {}
            Completed::Other => {
                let d = driver.complete_other(user_data, res, flags);
                drop(driver);
                if let Some(d) = d {
                    self.deliver(d, watch);
                }
            }
        }
    }

    /// Carries out one completion's delivery (the driver no longer borrowed).
    #[inline(always)]
    fn deliver(&self, delivery: Delivery, watch: &AtomicU64) {
        match delivery {
            Delivery::Wake(waker) => waker.wake(),
            Delivery::Call {
                cb,
                arg,
                res,
                flags,
            } => {
                let p = self.stats.progress.get().wrapping_add(1);
                self.stats.progress.set(p);
                watch.store(p, Relaxed);
                let ctx = self as *const RuntimeContext as *mut RuntimeContext;
                // SAFETY: the C I/O contract: `cb` may be called with `arg` on this
                // worker, once per completion of the operation it was given with.
                unsafe { cb(ctx, res, flags, arg) };
                self.flush_notifications();
            }
        }
    }

    /// Copies the driver's counters where `Runtime::stats` reads them: after completions
    /// were handled and before the worker parks, so they are current while it sleeps.
    fn publish_io_stats(&self) {
        let Ok(driver) = self.driver.try_borrow() else {
            return;
        };
        let d = driver.stats();
        let c = &self.me().counters;
        c.io_submitted.store(d.submitted, Relaxed);
        c.io_completed.store(d.completed, Relaxed);
        c.io_stale.store(d.stale, Relaxed);
        c.io_backlog.store(d.backlog, Relaxed);
        c.io_enters.store(d.enters, Relaxed);
        c.io_batched_parks.store(d.batched_parks, Relaxed);
    }

    /// Takes this worker out of the shutdown idle count before it takes work.
    fn leave_idle(&self) {
        if self.counted_idle.replace(false) {
            self.registry.leave_idle();
        }
    }

    fn run_local(&self, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(job) = self.local.borrow_mut().pop_front() else {
                break;
            };
            self.run_job(job, Source::Local);
            n += 1;
        }
        n
    }

    fn run_mesh(&self, budget: usize) -> usize {
        let workers = self.registry.len();
        let mut from = self.mesh_cursor.get();
        let mut n = 0;
        for _ in 0..workers {
            if from != self.index {
                if let Some(chan) = self.registry.mesh.channel(from, self.index) {
                    // SAFETY: this thread is worker `self.index`, the only consumer of its
                    // column; running a job never consumes from this channel.
                    n += unsafe { chan.drain(budget - n, |job| self.run_job(job, Source::Mesh)) };
                    if n >= budget {
                        // Start with the next channel next turn so every sender gets its
                        // share.
                        self.mesh_cursor
                            .set(if from + 1 == workers { 0 } else { from + 1 });
                        break;
                    }
                }
            }
            from = if from + 1 == workers { 0 } else { from + 1 };
        }
        n
    }

    fn run_inbox(&self, budget: usize) -> usize {
        // `is_empty` first: an empty `steal` costs a SeqCst fence. A job pushed just after
        // this look is found next turn, or by the look at every queue before parking.
        let inbox = &self.me().inbox;
        if inbox.is_empty() {
            return 0;
        }
        let mut n = 0;
        while n < budget {
            let Some(job) = inbox.steal().success() else {
                break;
            };
            // A batch counts as its callbacks, in the budget as in the taken count.
            n += job.weight() as usize;
            match job {
                InboxJob::One(job) => self.run_job(job, Source::Inbox),
                InboxJob::Batch(tasks) => self.run_batch_job(&tasks, Source::Inbox),
            }
        }
        self.taken.set(self.taken.get() + n as u64);
        n
    }

    fn run_injector(&self, budget: usize) -> usize {
        let mut n = 0;
        if self.buffer.is_empty() {
            // `is_empty` first, as in `run_inbox`.
            if self.me().injector.is_empty() {
                return 0;
            }
            if let Steal::Success(job) = self
                .me()
                .injector
                .steal_batch_with_limit_and_pop(&self.buffer, budget)
            {
                self.stats.buffered_own.set(self.buffer.len());
                self.taken.set(self.taken.get() + 1);
                self.run_job(job, Source::Injector);
                n += 1;
            }
        }
        while n < budget {
            let Some(job) = self.buffer.pop() else { break };
            self.taken.set(self.taken.get() + 1);
            let own = self.stats.buffered_own.get();
            if own > 0 {
                self.stats.buffered_own.set(own - 1);
                self.run_job(job, Source::Injector);
            } else {
                self.run_job(job, Source::Stolen);
            }
            n += 1;
        }
        n
    }

    /// Steals a batch from a random peer's injector; true when it ran something.
    fn steal(&self, budget: usize) -> bool {
        let workers = self.registry.len();
        if workers < 2 {
            return false;
        }
        // A stalled peer's injector first: nobody else will run that work.
        let mut next = self
            .registry
            .stalled_peer(self.index)
            .unwrap_or_else(|| below(next_random(&self.rng) >> 32, workers));
        for _ in 0..workers {
            let victim_index = next;
            next = if next + 1 == workers { 0 } else { next + 1 };
            if victim_index == self.index {
                continue;
            }
            let victim = self.registry.worker(victim_index);
            if victim.injector.is_empty() {
                continue;
            }
            self.leave_idle();
            let before = self.buffer.len();
            if let Steal::Success(job) = victim
                .injector
                .steal_batch_with_limit_and_pop(&self.buffer, budget)
            {
                let n = (self.buffer.len() - before + 1) as u64;
                // Count them as ours before they stop being the victim's, so shutdown
                // never sees them nowhere.
                self.me().count_submitted(n);
                victim.count_taken(n);
                if self.registry.closed.load(SeqCst) {
                    // The victim may have looked at its counts in between, found them
                    // unequal and gone to sleep without counting itself idle.
                    victim.notify();
                }
                self.me().counters.steals.fetch_add(1, Relaxed);
                self.taken.set(self.taken.get() + 1);
                self.run_job(job, Source::Stolen);
                self.end_turn();
                return true;
            }
        }
        false
    }

    /// Runs one job taken from `source`. A callback runs right here (the loops that take
    /// jobs, the mesh drain above all, inline this); a task goes out of line.
    #[inline]
    fn run_job(&self, job: Job, source: Source) {
        match job.into_parts() {
            JobParts::Raw(raw) => {
                self.bump_progress();
                // SAFETY: promised by the spawn call that accepted the job.
                unsafe { raw.run(self) };
                self.count(source);
                self.flush_notifications();
            }
            JobParts::Task(task) => self.run_task_job(task, source),
        }
    }

    /// `run_job` for a batch of callbacks: each one is a job of its own for the
    /// watchdog, the statistics and the peers it hands work to.
    #[inline(never)]
    fn run_batch_job(&self, tasks: &[super::job::RawTask], source: Source) {
        for raw in tasks {
            self.bump_progress();
            // SAFETY: promised by the batch spawn call that accepted the job.
            unsafe { raw.run(self) };
            self.flush_notifications();
        }
        self.count_n(source, tasks.len() as u64);
    }

    /// `run_job` for a task: adopts a `Send` task arriving here, or polls a woken one.
    #[inline(never)]
    fn run_task_job(&self, task: super::task::TaskRef, source: Source) {
        self.bump_progress();
        if !task.take_first_run() {
            // A woken task polled again: not a start.
            self.stats.polls.set(self.stats.polls.get() + 1);
            self.run_task(task);
            self.flush_notifications();
            return;
        }
        if !matches!(source, Source::Local) {
            // A Send task arriving here: adopt it (live list + this run).
            let cancel = task.adopt(self.me(), 2);
            self.adopted(task);
            if cancel || self.registry.cancel.load(Relaxed) {
                task.cancel_now(self);
                task.release_local();
                self.count(source);
                return;
            }
        }
        self.run_task(task);
        self.count(source);
        self.flush_notifications();
    }

    /// Polls a task, with its name published for the stall watchdog while it runs.
    fn run_task(&self, task: super::task::TaskRef) {
        match task.name() {
            None => {
                task.run(self);
            }
            Some(name) => {
                let watch = &self.me().watch;
                watch.set_running_name(Some(name.clone()));
                task.run(self);
                watch.set_running_name(None);
            }
        }
    }

    /// Tells the stall watchdog this worker is making progress: a plain store on a line
    /// only this worker writes.
    #[inline]
    pub(crate) fn bump_progress(&self) {
        let p = self.stats.progress.get().wrapping_add(1);
        self.stats.progress.set(p);
        self.me().watch.progress.store(p, Relaxed);
    }

    fn count(&self, source: Source) {
        self.count_n(source, 1);
    }

    fn count_n(&self, source: Source, n: u64) {
        let c = match source {
            Source::Local => &self.stats.local,
            Source::Mesh => &self.stats.mesh,
            Source::Inbox => &self.stats.inbox,
            Source::Injector => &self.stats.injector,
            Source::Stolen => &self.stats.stolen,
        };
        c.set(c.get() + n);
    }

    /// Publishes counts and wakes a sleeping peer if our injector has work to steal.
    fn end_turn(&self) {
        self.completions.flush();
        let me = self.me();
        let taken = self.taken.get();
        if taken > 0 {
            self.taken.set(0);
            me.count_taken(taken);
        }
        me.publish_local_queued(self.local.borrow().len());
        let c = &me.counters;
        publish_count(&self.stats.local, &c.tasks_local);
        publish_count(&self.stats.mesh, &c.tasks_mesh);
        publish_count(&self.stats.inbox, &c.tasks_inbox);
        publish_count(&self.stats.injector, &c.tasks_injector);
        publish_count(&self.stats.stolen, &c.tasks_stolen);
        publish_count(&self.stats.polls, &c.polls);
        publish_count(&self.stats.spawned, &c.tasks_spawned);
        self.flush_notifications();
        if !me.injector.is_empty() {
            self.wake_a_sleeping_peer();
        }
    }

    /// Wakes one parked peer, if any, to steal from our injector.
    pub(crate) fn wake_a_sleeping_peer(&self) {
        let workers = self.registry.len();
        for k in 1..workers {
            let peer = self.registry.worker((self.index + k) % workers);
            if peer.park.is_parked() && peer.notify() {
                return;
            }
        }
    }

    /// Whether an inbound mesh channel holds a message.
    fn mesh_has_work(&self) -> bool {
        (0..self.registry.len()).any(|from| {
            self.registry
                .mesh
                .channel(from, self.index)
                .is_some_and(|c| !c.is_empty())
        })
    }

    /// Whether queued submissions may wait for this worker's park rather than cost an
    /// enter of their own now: nothing else to run here (so the turn ends idle and parks),
    /// and no shutdown under way (shutdown takes the plain path).
    fn may_defer_submissions(&self) -> bool {
        !self.registry.closed.load(Relaxed) && !self.has_task_work()
    }

    /// Whether a queue of this worker holds a job (its driver not looked at).
    fn has_task_work(&self) -> bool {
        let me = self.me();
        !self.local.borrow().is_empty()
            || !self.buffer.is_empty()
            || me.has_remote()
            || !me.inbox.is_empty()
            || !me.injector.is_empty()
            || self.mesh_has_work()
    }

    /// Whether any source of this worker has work. Submissions merely queued in the ring
    /// do not count: parking hands them to the kernel.
    fn has_work(&self) -> bool {
        let me = self.me();
        if !self.local.borrow().is_empty()
            || !self.buffer.is_empty()
            || me.has_remote()
            || !me.inbox.is_empty()
            || !me.injector.is_empty()
        {
            return true;
        }
        if self
            .driver
            .try_borrow_mut()
            .is_ok_and(|mut d| d.has_completions())
        {
            return true;
        }
        self.mesh_has_work()
    }

    /// A turn of mesh messages alone, for a spinning worker that found some: they run
    /// at once rather than after the other looks of a full turn (I/O, local queue),
    /// which the loop makes right after.
    fn run_mesh_turn(&self) {
        self.leave_idle();
        self.bump_progress();
        self.stats.turn_ms.set(TURN_MS_UNREAD);
        if self.run_mesh(self.registry.config.budget) > 0 {
            self.end_turn();
        }
    }

    /// Nothing to do: spin (for as many rounds as the worker's adaptive limit allows,
    /// at most the configured time), then park in the ring.
    #[inline(never)]
    fn idle(&self, cancelled: bool) {
        // Work handed out by code that ran outside a job (a future dropped by
        // `cancel_all`, say) is published and announced before this worker waits.
        self.flush_notifications();
        let spin = self.registry.config.spin_before_park;
        // Submissions waiting for the park go in now rather than after a spin: the park's
        // enter submits them and sleeps in one system call. Unless polling is configured
        // (`RuntimeBuilder::io_poll`) and I/O is in flight: then they go in now and the
        // worker polls for the completions for the configured time, whatever its recent
        // spins found.
        let (queued, in_flight) = self
            .driver
            .try_borrow_mut()
            .map_or((false, false), |mut d| (d.has_queued(), d.live() > 0));
        let io_poll = self.registry.config.io_poll;
        let polling = !io_poll.is_zero() && in_flight;
        // 0 when spinning is configured off, or when this worker's recent spins kept
        // finding nothing (see `spin.rs`); asked only when a spin may start.
        let (limit, spin) = if polling {
            if queued {
                self.driver.borrow_mut().flush_queued();
            }
            (AdaptiveSpin::MAX_ROUNDS, io_poll)
        } else if queued {
            (0, spin)
        } else {
            (self.spin.rounds(), spin)
        };
        // What a spin found adapts the next plain spin; a poll's outcome does not.
        let adapt = !polling;
        if limit > 0 {
            // The clock is first read at the 64th round (so the spin lasts up to 64 rounds,
            // a few µs, longer than `spin`): a worker whose wait is short reads none.
            let mut start = None;
            let mut rounds = 0u32;
            loop {
                // Mesh messages are what a spinning worker most often waits for: look at
                // its inbound channels every round, at everything else every 16th.
                if self.mesh_has_work() {
                    if adapt {
                        self.spin.found();
                    }
                    self.run_mesh_turn();
                    return;
                }
                if rounds % 16 == 0 && self.has_work() {
                    if adapt {
                        self.spin.found();
                    }
                    return;
                }
                rounds += 1;
                if rounds >= limit {
                    if adapt {
                        self.spin.ran_out();
                    }
                    break;
                }
                if rounds % 64 == 0 {
                    self.bump_progress();
                    if self.steal(self.registry.config.budget) {
                        if adapt {
                            self.spin.found();
                        }
                        return;
                    }
                    if start.get_or_insert_with(Instant::now).elapsed() >= spin {
                        if adapt {
                            self.spin.timed_out(rounds);
                        }
                        break;
                    }
                }
                std::hint::spin_loop();
            }
        }
        let me = self.me();
        me.park.begin_park();
        // Shutdown news this worker has not acted on yet: it must loop once more (to
        // cancel its I/O, count itself idle and try to end shutdown) rather than sleep.
        // A worker still waiting for its tasks and I/O may sleep once it has cancelled
        // that I/O: whatever finishes them will wake it. Its I/O is cancelled by the
        // next `poll_io`, not here: a worker that saw `closed` only now (its notifier
        // found it running, so wrote no wake-up) would otherwise sleep on operations
        // nothing will ever end.
        let shutdown_news = self.registry.closed.load(SeqCst)
            && (!self.io_closed.get()
                || self.registry.terminated.load(SeqCst)
                || (!cancelled && self.registry.cancel.load(SeqCst))
                || (!self.counted_idle.get() && self.locally_quiet()));
        if self.has_work() || shutdown_news {
            me.park.abort_park();
            return;
        }
        if !me.park.commit_park() {
            return; // a notifier got in first
        }
        me.counters.parks.fetch_add(1, Relaxed);
        self.publish_io_stats();
        self.driver.borrow_mut().park();
        me.park.unparked();
        // Woken by a peer (a mesh message, a pinned or injected job): peers answer one
        // another quickly unless parked, so the next spin is the whole configured time
        // (two workers parking at once for a short exchange would otherwise stay so).
        if me.has_remote()
            || !me.inbox.is_empty()
            || !me.injector.is_empty()
            || self.mesh_has_work()
        {
            self.spin.woken_by_peer();
        }
    }

    /// Shutdown limit passed: drop every unfinished future owned here.
    fn cancel_all(&self) {
        while let Some(task) = self.live_head.get() {
            // A task being polled cannot be here (we are between jobs), so this always
            // finishes the task and unlinks it.
            task.cancel_now(self);
            debug_assert!(self.live_head.get() != Some(task));
        }
    }

    /// Nothing left on this worker: no unfinished task, nothing queued anywhere it owns,
    /// nothing on its way into its injector or inbox.
    fn locally_quiet(&self) -> bool {
        self.live_futures.get() == 0
            && self.driver.borrow().live() == 0
            && self.local.borrow().is_empty()
            && self.buffer.is_empty()
            && !self.has_work()
            && self.me().all_jobs_taken()
    }
}
