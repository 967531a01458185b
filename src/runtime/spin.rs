//! How long an idle worker spins before it parks, adapted to what its recent spins found.
//!
//! A spin pays off when work arrives while it lasts (a mesh message, a completion, a
//! stolen batch): the worker saves the park and the 50–60 µs a wake takes. It is wasted
//! when the wait outlasts it, and on a machine where the worker shares its core with
//! other processes (a load generator, a client) that waste is taken from them. A worker
//! whose waits are long (an I/O-bound server waiting for its peers) should park at once;
//! one whose waits are short (a mesh ping-pong) should spin for the whole configured time.
//!
//! [`AdaptiveSpin`] keeps a per-worker limit, counted in rounds of the idle loop (no clock
//! read): doubled when a spin found work, halved when one ran out, so it settles near
//! the wait a spin catches half the time, or at zero when few are that short. A spin cut
//! by the configured time (`spin_before_park`, the upper bound) sets the limit to half
//! the rounds it made, so the limit never stays far above what that time allows. At zero
//! the worker parks at once, but every [`AdaptiveSpin::PROBE_EVERY`]th idle it spins
//! [`AdaptiveSpin::MIN_ROUNDS`] rounds, so short waits coming back grow the limit again.
//! A park ended by a peer (a mesh message, a job sent to the worker) restores the whole
//! configured time: peers answer fast unless parked, and a wake (tens of µs) outlasts
//! any probe, so two workers exchanging messages must not both settle on parking.
//! An I/O-bound worker is woken by its ring's completions instead, and keeps its limit.
//!
//! Only the owning worker touches it (plain cells), and only on the idle path.

use std::cell::Cell;

/// A worker's adaptive spin limit (see the module doc).
#[derive(Debug)]
pub(crate) struct AdaptiveSpin {
    /// Rounds the next spin may make; 0: park at once (probes aside).
    limit: Cell<u32>,
    /// Idles since the last probe while the limit is 0.
    idles_at_zero: Cell<u32>,
    /// Spinning is configured off (`spin_before_park` zero): never spin, never adapt.
    disabled: bool,
}

impl AdaptiveSpin {
    /// The shortest nonzero limit, and the length of a probe: a halving below it parks at
    /// once from then on. About a microsecond of rounds.
    pub(crate) const MIN_ROUNDS: u32 = 32;
    /// The largest limit: far more rounds than any configured time allows, so the time
    /// ends such a spin. The limit starts here.
    pub(crate) const MAX_ROUNDS: u32 = 1 << 24;
    /// At limit 0, one idle in this many spins a probe of `MIN_ROUNDS` rounds.
    pub(crate) const PROBE_EVERY: u32 = 8;

    /// A limit for a worker whose configured spin is `enabled` (nonzero): the whole
    /// configured time at first; never any spin otherwise.
    pub(crate) fn new(enabled: bool) -> Self {
        AdaptiveSpin {
            limit: Cell::new(if enabled { Self::MAX_ROUNDS } else { 0 }),
            idles_at_zero: Cell::new(0),
            disabled: !enabled,
        }
    }

    /// Rounds the spin of the idle that starts now may make (still bounded by the
    /// configured time); 0: park at once.
    pub(crate) fn rounds(&self) -> u32 {
        let limit = self.limit.get();
        if limit > 0 || self.disabled {
            return limit;
        }
        let n = self.idles_at_zero.get() + 1;
        if n >= Self::PROBE_EVERY {
            self.idles_at_zero.set(0);
            Self::MIN_ROUNDS
        } else {
            self.idles_at_zero.set(n);
            0
        }
    }

    /// The spin found work: the next may last twice as long.
    pub(crate) fn found(&self) {
        if self.disabled {
            return;
        }
        let limit = self.limit.get();
        self.limit.set(
            limit
                .saturating_mul(2)
                .clamp(Self::MIN_ROUNDS, Self::MAX_ROUNDS),
        );
        self.idles_at_zero.set(0);
    }

    /// The worker parked and a peer woke it (a mesh message, a job for it): the next
    /// spin may last the whole configured time. A peer answers within a spin unless it
    /// parked too, and its wake takes longer than any short spin: two workers whose short
    /// spins both failed would otherwise keep parking for every message of an exchange
    /// their spins would carry.
    pub(crate) fn woken_by_peer(&self) {
        if !self.disabled {
            self.limit.set(Self::MAX_ROUNDS);
            self.idles_at_zero.set(0);
        }
    }

    /// The spin made all its rounds and found nothing: the next lasts half as long, none
    /// once that falls below `MIN_ROUNDS`.
    pub(crate) fn ran_out(&self) {
        self.shrink_to(self.limit.get() / 2);
    }

    /// The configured time ended the spin after `rounds` rounds, finding nothing: the
    /// next may make half as many.
    pub(crate) fn timed_out(&self, rounds: u32) {
        self.shrink_to((rounds / 2).min(self.limit.get() / 2));
    }

    fn shrink_to(&self, limit: u32) {
        self.limit
            .set(if limit < Self::MIN_ROUNDS { 0 } else { limit });
    }

    /// The current limit in rounds (tests).
    #[cfg(test)]
    fn limit(&self) -> u32 {
        self.limit.get()
    }
}

#[cfg(test)]
mod tests {
    use super::AdaptiveSpin;

    #[test]
    fn starts_at_the_configured_time_and_never_spins_when_configured_off() {
        let on = AdaptiveSpin::new(true);
        assert_eq!(on.rounds(), AdaptiveSpin::MAX_ROUNDS);
        let off = AdaptiveSpin::new(false);
        for _ in 0..3 * AdaptiveSpin::PROBE_EVERY {
            assert_eq!(off.rounds(), 0);
        }
        // Even a (spurious) success does not turn a configured-off spin on.
        off.found();
        off.ran_out();
        off.timed_out(1000);
        assert_eq!(off.rounds(), 0);
    }

    #[test]
    fn a_spin_cut_by_the_time_limits_the_next_to_half_its_rounds() {
        let s = AdaptiveSpin::new(true);
        s.timed_out(1800);
        assert_eq!(s.rounds(), 900);
    }

    #[test]
    fn spins_that_keep_failing_stop_and_a_success_grows_the_limit_back() {
        let s = AdaptiveSpin::new(true);
        s.timed_out(1000);
        assert_eq!(s.rounds(), 500);
        let mut fails = 0;
        while s.rounds() > 0 {
            s.ran_out();
            fails += 1;
        }
        // 500 -> 250 -> 125 -> 62 -> 31 (below MIN_ROUNDS: none).
        assert_eq!(fails, 4);
        s.found();
        assert_eq!(s.rounds(), AdaptiveSpin::MIN_ROUNDS);
        s.found();
        assert_eq!(s.rounds(), 2 * AdaptiveSpin::MIN_ROUNDS);
        for _ in 0..40 {
            s.found();
        }
        assert_eq!(s.rounds(), AdaptiveSpin::MAX_ROUNDS);
    }

    #[test]
    fn a_park_ended_by_a_peer_restores_the_whole_spin() {
        let s = AdaptiveSpin::new(true);
        s.timed_out(40);
        assert_eq!(s.rounds(), 0);
        s.woken_by_peer();
        assert_eq!(s.rounds(), AdaptiveSpin::MAX_ROUNDS);
        let off = AdaptiveSpin::new(false);
        off.woken_by_peer();
        assert_eq!(off.rounds(), 0);
    }

    #[test]
    fn at_zero_one_idle_in_probe_every_spins_a_short_probe() {
        let s = AdaptiveSpin::new(true);
        s.timed_out(2 * AdaptiveSpin::MIN_ROUNDS - 2);
        assert_eq!(s.limit(), 0);
        for _round in 0..3 {
            let spins: Vec<u32> = (0..AdaptiveSpin::PROBE_EVERY).map(|_| s.rounds()).collect();
            let last = AdaptiveSpin::PROBE_EVERY as usize - 1;
            assert!(spins[..last].iter().all(|&r| r == 0), "{spins:?}");
            assert_eq!(spins[last], AdaptiveSpin::MIN_ROUNDS);
            // The probe found nothing: still parking at once.
            s.ran_out();
            assert_eq!(s.limit(), 0);
        }
        // A probe that finds work starts the limit again.
        while s.rounds() == 0 {}
        s.found();
        assert_eq!(s.rounds(), AdaptiveSpin::MIN_ROUNDS);
    }
}
