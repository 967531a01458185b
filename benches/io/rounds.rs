//! Alternating rounds for the I/O bench, where a system may measure several figures per run
//! (requests/s, system calls per request, latency) or be missing (its binary not built, a
//! veloq hook not written yet): `benches/harness`'s `Bench::run` wants exactly one figure
//! per run and veloq always present, so the I/O bench keeps the same method (systems
//! alternating inside each round, a quiet machine before each round, medians) here and
//! builds the harness's `Row`s itself.

use crate::harness::{median, quick, runs, Goal, Row, Scenario, VELOQ};

/// One contender: a name and a closure doing one complete run, returning its figures.
pub struct Contender<'a, T> {
    pub name: String,
    run: Box<dyn FnMut() -> T + 'a>,
}

impl<'a, T> Contender<'a, T> {
    pub fn new(name: &str, run: impl FnMut() -> T + 'a) -> Contender<'a, T> {
        Contender {
            name: name.to_owned(),
            run: Box::new(run),
        }
    }
}

/// Timed rounds: one in quick mode, else the harness's count (`VELOQ_BENCH_RUNS`).
pub fn rounds() -> usize {
    if quick() {
        1
    } else {
        runs()
    }
}

/// Runs `warmups` untimed rounds then [`rounds`] timed ones, every contender once per
/// round in order, waiting for a quiet machine before each timed round (not in quick mode:
/// a smoke test measures nothing and must stay short). Returns each
/// contender's samples, in the contenders' order.
pub fn alternate<T>(contenders: &mut [Contender<'_, T>], warmups: usize) -> Vec<Vec<T>> {
    let warmups = if quick() { 0 } else { warmups };
    for _ in 0..warmups {
        for c in contenders.iter_mut() {
            (c.run)();
        }
    }
    let mut samples: Vec<Vec<T>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds() {
        if !quick() {
            crate::harness::quiet::wait();
        }
        for (c, s) in contenders.iter_mut().zip(&mut samples) {
            s.push((c.run)());
        }
    }
    samples
}

/// The median of one figure over a contender's samples; `None` if no sample has it.
pub fn median_of<T>(samples: &[T], figure: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = samples.iter().filter_map(figure).collect();
    (!values.is_empty()).then(|| median(&values))
}

/// A result row for `scenario` from `(system, median)` pairs; systems without a value are
/// left out (veloq goes first, as in every result file).
pub fn row(scenario: Scenario, values: Vec<(String, Option<f64>)>) -> Row {
    let mut results: Vec<(String, f64)> = values
        .into_iter()
        .filter_map(|(name, v)| Some((name, v?)))
        .collect();
    results.sort_by_key(|(name, _)| name != VELOQ);
    Row {
        scenario: scenario.name,
        unit: scenario.unit.to_owned(),
        higher_is_better: scenario.higher_is_better,
        results,
        goals: scenario.goals,
        quick: quick(),
    }
}

/// Goals of veloq at least `factor` times each of `peers`.
pub fn goals_at_least(scenario: Scenario, peers: &[&str], factor: f64) -> Scenario {
    peers
        .iter()
        .fold(scenario, |s, peer| s.goal(Goal::at_least(peer, factor)))
}

/// Reports a failed run. A full run goes on without that sample (the row leaves the system
/// out if no run of it succeeded); a quick run is the smoke test of `make test`, which exists
/// to catch a broken server or peer, so it stops there with exit status 1.
pub fn failed(who: &str, error: &str) {
    eprintln!("    {who}: run failed: {error}");
    if quick() {
        eprintln!("smoke run: {who} failed");
        std::process::exit(1);
    }
}
