//! Shared benchmark harness: measuring, result rows, tables and result files.
//!
//! Every bench binary (`core`, `io`, ...) includes this module with
//! `#[path = "harness/mod.rs"] mod harness;`. A bench describes each scenario once and
//! hands the harness one closure per system (veloq and its peers); each closure performs
//! one complete timed run (its own setup and teardown stay outside the timed region) and
//! returns the measured value. The harness
//!
//! * runs every system once to warm up, then [`RUNS`] timed rounds, alternating the
//!   systems inside each round (veloq, peer1, peer2, veloq, peer1, ...) so that drift of
//!   the machine (frequency, other load) hits all of them alike;
//! * keeps the median of each system;
//! * prints one table per bench and writes `target/bench/<bench>.json`.
//!
//! The result file is a JSON list of rows
//! `{"scenario", "unit", "higher_is_better", "results": {"veloq": n, "<peer>": n}}`,
//! optionally with `"goals": [{"vs", "min_ratio", "text"}]` and `"quick": true`, the
//! shape `benches/report.rs` reads (the C benchmark writes the same shape).
//!
//! `VELOQ_BENCH_QUICK=1` divides every workload count by ten for smoke tests.

#![allow(dead_code)] // each bench binary uses a different part of the harness

pub mod alloc;
pub mod quiet;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

/// Timed rounds per scenario (each round runs every system once); `VELOQ_BENCH_RUNS`
/// may ask for more.
pub const RUNS: usize = 5;
/// Untimed rounds before the timed ones.
pub const WARMUPS: usize = 1;

/// The name every result file uses for the system under test.
pub const VELOQ: &str = "veloq";

/// Whether `VELOQ_BENCH_QUICK=1` asks for a smoke-test run.
pub fn quick() -> bool {
    std::env::var("VELOQ_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Timed rounds for this run: `VELOQ_BENCH_RUNS` if set (at least [`RUNS`]).
pub fn runs() -> usize {
    std::env::var("VELOQ_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(RUNS, |n: usize| n.max(RUNS))
}

/// A workload count, divided by ten in quick mode.
pub fn count(full: usize) -> usize {
    if quick() {
        (full / 10).max(1)
    } else {
        full
    }
}

/// Where the result files live: `$CARGO_TARGET_DIR/bench`, or `target/bench` in the repo.
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("bench")
}

/// The repository root (where Cargo.toml and BENCHMARKS.md are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Nanoseconds per operation for `ops` operations that took from `start` until now.
pub fn ns_per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Operations per second, in millions, for `ops` operations since `start`.
pub fn mops_per_sec(start: Instant, ops: usize) -> f64 {
    ops as f64 / start.elapsed().as_secs_f64() / 1e6
}

// ---------------------------------------------------------------------------------------
// Scenarios, goals and result rows
// ---------------------------------------------------------------------------------------

/// A target for veloq against one peer, on the oriented ratio (see [`Row::ratio`]).
#[derive(Clone, Debug)]
pub struct Goal {
    /// The peer the goal is measured against.
    pub vs: String,
    /// The goal holds when the oriented ratio veloq-vs-peer is at least this.
    pub min_ratio: f64,
    /// How the goal reads in a table.
    pub text: String,
}

impl Goal {
    /// veloq at least `factor` times better than `vs` (faster, or smaller).
    pub fn at_least(vs: &str, factor: f64) -> Goal {
        Goal {
            vs: vs.to_owned(),
            min_ratio: factor,
            text: format!("≥ {}×", fmt_factor(factor)),
        }
    }

    /// veloq's cost (time, bytes) at most `factor` times `vs`'s.
    pub fn cost_at_most(vs: &str, factor: f64) -> Goal {
        Goal {
            vs: vs.to_owned(),
            min_ratio: 1.0 / factor,
            text: format!("≤ {}× {vs}", fmt_factor(factor)),
        }
    }

    /// veloq's cost (time, bytes) no more than `vs`'s: a peer, or a fixed limit given as
    /// a result column.
    pub fn within(vs: &str) -> Goal {
        Goal {
            vs: vs.to_owned(),
            min_ratio: 1.0,
            text: format!("≤ {vs}"),
        }
    }

    /// Whether `ratio` (the oriented veloq-vs-peer ratio) meets the goal.
    pub fn met(&self, ratio: f64) -> bool {
        ratio >= self.min_ratio
    }
}

/// A goal's factor as written in its table: one decimal, two when it has them (1.05 must
/// not read 1.1).
fn fmt_factor(factor: f64) -> String {
    let tenths = factor * 10.0;
    if (tenths - tenths.round()).abs() < 1e-9 {
        format!("{factor:.1}")
    } else {
        format!("{factor:.2}")
    }
}

/// What a scenario measures, before it is measured.
pub struct Scenario {
    /// Human-readable description, the first column of the table.
    pub name: String,
    /// Unit of every value of the row (`ns/task`, `M msg/s`, ...).
    pub unit: &'static str,
    /// Whether bigger values are better (throughput) or worse (time, bytes).
    pub higher_is_better: bool,
    /// Goals for veloq, one per peer at most.
    pub goals: Vec<Goal>,
}

impl Scenario {
    /// A scenario where smaller values are better (time, latency, bytes, CPU).
    pub fn lower_is_better(name: impl Into<String>, unit: &'static str) -> Scenario {
        Scenario {
            name: name.into(),
            unit,
            higher_is_better: false,
            goals: Vec::new(),
        }
    }

    /// A scenario where bigger values are better (throughput).
    pub fn higher_is_better(name: impl Into<String>, unit: &'static str) -> Scenario {
        Scenario {
            name: name.into(),
            unit,
            higher_is_better: true,
            goals: Vec::new(),
        }
    }

    /// Adds a goal.
    pub fn goal(mut self, goal: Goal) -> Scenario {
        self.goals.push(goal);
        self
    }
}

/// One measured scenario: the median of every system.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// `(system, median)`, veloq first.
    pub results: Vec<(String, f64)>,
    pub goals: Vec<Goal>,
    /// Measured with `VELOQ_BENCH_QUICK=1`.
    pub quick: bool,
}

impl Row {
    /// veloq's value.
    pub fn veloq(&self) -> Option<f64> {
        self.value(VELOQ)
    }

    /// A system's value.
    pub fn value(&self, system: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|(name, _)| name == system)
            .map(|&(_, v)| v)
    }

    /// The peers (every system but veloq), in order.
    pub fn peers(&self) -> impl Iterator<Item = (&str, f64)> {
        self.results
            .iter()
            .filter(|(name, _)| name != VELOQ)
            .map(|(name, v)| (name.as_str(), *v))
    }

    /// veloq against `peer`, oriented so that > 1 means veloq is better:
    /// veloq/peer when higher is better, peer/veloq when lower is better.
    pub fn ratio(&self, peer: &str) -> Option<f64> {
        self.relative(peer).map(|r| 1.0 / r)
    }

    /// `system`'s performance relative to veloq (veloq = 1.0, > 1 means `system` is
    /// better): what the charts draw.
    pub fn relative(&self, system: &str) -> Option<f64> {
        let v = self.veloq()?;
        let s = self.value(system)?;
        let r = if self.higher_is_better { s / v } else { v / s };
        r.is_finite().then_some(r)
    }

    /// The goal against `peer`, if any.
    pub fn goal(&self, peer: &str) -> Option<&Goal> {
        self.goals.iter().find(|g| g.vs == peer)
    }

    /// Goal cell: the goal's text and ✓/✗, or empty.
    pub fn goal_cell(&self, peer: &str) -> String {
        match (self.goal(peer), self.ratio(peer)) {
            (Some(goal), Some(ratio)) => {
                let mark = if goal.met(ratio) { "✓" } else { "✗" };
                format!("{} {mark}", goal.text)
            }
            (Some(goal), None) => format!("{} ?", goal.text),
            (None, _) => String::new(),
        }
    }

    /// The row as a JSON object (the result-file shape).
    pub fn to_json(&self) -> Value {
        let results: serde_json::Map<String, Value> = self
            .results
            .iter()
            .map(|(name, v)| (name.clone(), json!(v)))
            .collect();
        let mut row = json!({
            "scenario": self.scenario,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "results": results,
        });
        if !self.goals.is_empty() {
            let goals: Vec<Value> = self
                .goals
                .iter()
                .map(|g| json!({"vs": g.vs, "min_ratio": g.min_ratio, "text": g.text}))
                .collect();
            row["goals"] = Value::Array(goals);
        }
        if self.quick {
            row["quick"] = Value::Bool(true);
        }
        row
    }

    /// Reads a row back from a result file; `None` when a required field is missing.
    /// Systems keep the file's order, except that veloq comes first.
    pub fn from_json(value: &Value) -> Option<Row> {
        let mut results: Vec<(String, f64)> = value["results"]
            .as_object()?
            .iter()
            .filter_map(|(name, v)| Some((name.clone(), v.as_f64()?)))
            .collect();
        results.sort_by_key(|(name, _)| name != VELOQ); // stable: peers keep their order
        let goals = value["goals"]
            .as_array()
            .map(|goals| {
                goals
                    .iter()
                    .filter_map(|g| {
                        let vs = g["vs"].as_str()?.to_owned();
                        let min_ratio = g["min_ratio"].as_f64()?;
                        let text = g["text"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("≥ {min_ratio:.1}×"));
                        Some(Goal {
                            vs,
                            min_ratio,
                            text,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Row {
            scenario: value["scenario"].as_str()?.to_owned(),
            unit: value["unit"].as_str()?.to_owned(),
            higher_is_better: value["higher_is_better"].as_bool()?,
            results,
            goals,
            quick: value["quick"].as_bool().unwrap_or(false),
        })
    }
}

/// Reads a result file.
pub fn read_rows(path: &std::path::Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let rows = value
        .as_array()
        .ok_or_else(|| format!("{}: not a JSON list", path.display()))?;
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            Row::from_json(row).ok_or_else(|| format!("{}: row {i} is malformed", path.display()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------

/// One contender of a scenario: a name and a closure doing one complete timed run.
pub struct System<'a> {
    name: String,
    run: Box<dyn FnMut() -> f64 + 'a>,
}

impl<'a> System<'a> {
    /// `run` performs one run (setup, timed part, teardown) and returns the measured value.
    pub fn new(name: &str, run: impl FnMut() -> f64 + 'a) -> System<'a> {
        System {
            name: name.to_owned(),
            run: Box::new(run),
        }
    }
}

/// The median of `samples` (mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// A bench binary's results.
pub struct Bench {
    name: String,
    rows: Vec<Row>,
}

impl Bench {
    /// Starts the bench `name` (its results go to `target/bench/<name>.json`).
    pub fn new(name: &str) -> Bench {
        let mode = if quick() { " (quick: counts / 10)" } else { "" };
        let rounds = runs();
        eprintln!("bench {name}: {WARMUPS} warm-up + {rounds} timed rounds per scenario{mode}");
        Bench {
            name: name.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Measures `scenario` on every system, alternating them inside each round, and
    /// records the medians. The first system must be veloq.
    pub fn run(&mut self, scenario: Scenario, mut systems: Vec<System<'_>>) {
        assert_eq!(systems[0].name, VELOQ, "veloq goes first");
        eprintln!("• {} [{}]", scenario.name, scenario.unit);
        for _ in 0..WARMUPS {
            for system in &mut systems {
                (system.run)();
            }
        }
        let rounds = runs();
        let mut samples = vec![Vec::with_capacity(rounds); systems.len()];
        for _ in 0..rounds {
            quiet::wait();
            for (system, samples) in systems.iter_mut().zip(&mut samples) {
                samples.push((system.run)());
            }
        }
        let results: Vec<(String, f64)> = systems
            .iter()
            .zip(&samples)
            .map(|(system, samples)| (system.name.clone(), median(samples)))
            .collect();
        for ((name, med), samples) in results.iter().zip(&samples) {
            let all: Vec<String> = samples.iter().map(|&v| fmt_value(v)).collect();
            eprintln!(
                "    {name:<16} median {:>10}   runs [{}]",
                fmt_value(*med),
                all.join(", ")
            );
        }
        self.rows.push(Row {
            scenario: scenario.name,
            unit: scenario.unit.to_owned(),
            higher_is_better: scenario.higher_is_better,
            results,
            goals: scenario.goals,
            quick: quick(),
        });
    }

    /// Records `scenario` with values a bench measured itself (one run yielding several
    /// figures, each already the median over rounds); veloq first.
    pub fn record(&mut self, scenario: Scenario, results: Vec<(String, f64)>) {
        assert_eq!(results[0].0, VELOQ, "veloq goes first");
        self.rows.push(Row {
            scenario: scenario.name,
            unit: scenario.unit.to_owned(),
            higher_is_better: scenario.higher_is_better,
            results,
            goals: scenario.goals,
            quick: quick(),
        });
    }

    /// Prints the table and writes `target/bench/<name>.json`.
    pub fn finish(self) {
        let path = results_dir().join(format!("{}.json", self.name));
        self.finish_to(&path);
    }

    /// Prints the table and writes the rows as JSON to `path` (the smoke run's own file).
    pub fn finish_to(self, path: &std::path::Path) {
        println!("\n{}", text_table(&self.name, &self.rows));
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let json = Value::Array(self.rows.iter().map(Row::to_json).collect());
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("results written to {}", path.display());
    }

    /// Prints the table only (a partial run must not replace the result file).
    pub fn finish_without_saving(self) {
        println!("\n{}", text_table(&self.name, &self.rows));
        println!("partial run: results not saved");
    }
}

// ---------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------

/// A value with about three significant digits.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// A ratio as `2.34×` (more digits below 0.1), or `—` when undefined.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r < 0.1 => format!("{r:.3}×"),
        Some(r) => format!("{r:.2}×"),
        None => "—".to_owned(),
    }
}

/// Table header.
pub const COLUMNS: [&str; 7] = [
    "scenario",
    "unit",
    "veloq",
    "peer",
    "peer value",
    "veloq vs peer (>1: veloq better)",
    "goal",
];

/// The table's cells: one line per (scenario, peer); the scenario, unit and veloq cells
/// are written on the first line of a scenario only.
pub fn table_cells(rows: &[Row]) -> Vec<[String; 7]> {
    let mut lines = Vec::new();
    for row in rows {
        let veloq = row.veloq().map(fmt_value).unwrap_or_else(|| "—".into());
        let mut first = true;
        let mut emit = |peer: &str, value: String, ratio: String, goal: String| {
            let lead = if first {
                [row.scenario.clone(), row.unit.clone(), veloq.clone()]
            } else {
                [String::new(), String::new(), String::new()]
            };
            first = false;
            let [a, b, c] = lead;
            lines.push([a, b, c, peer.to_owned(), value, ratio, goal]);
        };
        let mut any_peer = false;
        for (peer, value) in row.peers() {
            any_peer = true;
            emit(
                peer,
                fmt_value(value),
                fmt_ratio(row.ratio(peer)),
                row.goal_cell(peer),
            );
        }
        if !any_peer {
            emit("—", String::new(), String::new(), String::new());
        }
    }
    lines
}

/// A plain-text table for a terminal.
pub fn text_table(title: &str, rows: &[Row]) -> String {
    let cells = table_cells(rows);
    let width = |i: usize| {
        cells
            .iter()
            .map(|l| l[i].chars().count())
            .chain([COLUMNS[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..COLUMNS.len()).map(width).collect();
    let pad = |s: &str, w: usize, right: bool| {
        let fill = " ".repeat(w.saturating_sub(s.chars().count()));
        if right {
            format!("{fill}{s}")
        } else {
            format!("{s}{fill}")
        }
    };
    // Numbers are right-aligned, text left-aligned.
    let right = [false, false, true, false, true, true, false];
    let mut out = String::new();
    let quick = if rows.iter().any(|r| r.quick) {
        "  (QUICK run: counts / 10, not representative)"
    } else {
        ""
    };
    writeln!(out, "== {title}{quick} ==").unwrap();
    let header: Vec<String> = COLUMNS
        .iter()
        .zip(&widths)
        .map(|(c, &w)| pad(c, w, false))
        .collect();
    writeln!(out, "{}", header.join(" | ").trim_end()).unwrap();
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    writeln!(out, "{}", rule.join("-+-")).unwrap();
    for line in &cells {
        let cols: Vec<String> = line
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((c, &w), r)| pad(c, w, r))
            .collect();
        writeln!(out, "{}", cols.join(" | ").trim_end()).unwrap();
    }
    out
}

/// A GitHub-flavoured markdown table.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::new();
    writeln!(out, "| {} |", COLUMNS.join(" | ")).unwrap();
    writeln!(out, "|---|---|--:|---|--:|--:|---|").unwrap();
    for line in table_cells(rows) {
        let cells: Vec<String> = line.iter().map(|c| c.replace('|', "\\|")).collect();
        writeln!(out, "| {} |", cells.join(" | ")).unwrap();
    }
    out
}
