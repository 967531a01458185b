//! I/O benchmarks (issue #4): TCP echo over loopback against Tokio, Monoio, libuv and two
//! minimal servers written for the bench (epoll, liburing), with system calls per request;
//! 4 KiB random file reads against fio and a raw io-uring loop; NOP throughput against a
//! raw io-uring loop.
//!
//! Run with `make bench-io` (builds the C programs of `benches/io/` first, installs fio,
//! perf, liburing and libuv when missing, then `cargo bench --bench io`). Optional arguments
//! select groups by name (`cargo bench --bench io -- echo`; a filtered run does not replace
//! `target/bench/io.json`), and `--out PATH` writes the results elsewhere (the smoke run).
//! `VELOQ_BENCH_QUICK=1` makes every run tiny (one round, a few connections, a 16 MiB file):
//! a smoke test, not a measurement.
//!
//! `cargo bench --bench io -- profile [...]` profiles echo servers instead: where the
//! machine's CPU time goes per request (see `benches/io/profile.rs`).
//!
//! The same binary is also the Tokio and Monoio echo servers: `io serve tokio --port P
//! --workers W` (see `benches/io/servers.rs`). veloq's servers and hooks: `SERVERS` in
//! `benches/io/echo.rs`, `veloq_randread` in `benches/io/file.rs`, `veloq_nop` in
//! `benches/io/nop.rs`; a veloq figure appears only once they exist.

#[path = "harness/mod.rs"]
mod harness;

#[path = "io/echo.rs"]
mod echo;
#[path = "io/file.rs"]
mod file;
#[path = "io/nop.rs"]
mod nop;
#[path = "io/profile.rs"]
mod profile;
#[path = "io/rounds.rs"]
mod rounds;
#[path = "io/servers.rs"]
mod servers;

use std::path::PathBuf;

use harness::{quick, results_dir, text_table, Row};
use serde_json::Value;

/// A named group of scenarios.
type Group = (&'static str, fn(&mut Vec<Row>));

/// Scenario groups in run order.
const GROUPS: [Group; 3] = [("echo", echo::all), ("file", file::all), ("nop", nop::all)];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "serve") {
        servers::serve(&args[at + 1..]);
    }
    if let Some(at) = args.iter().position(|a| a == "profile") {
        profile::run(&args[at + 1..]);
        return;
    }
    // `cargo bench` passes `--bench`; anything else not starting with `-` is a filter.
    let mut out = None;
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--out" {
            out = it.next().map(PathBuf::from);
        } else if !arg.starts_with('-') {
            filters.push(arg.clone());
        }
    }
    let mode = if quick() {
        " (quick: a smoke test)"
    } else {
        ""
    };
    eprintln!(
        "bench io: {} timed round(s) per scenario, systems alternating{mode}",
        rounds::rounds()
    );
    let mut rows = Vec::new();
    for (name, run) in GROUPS {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            run(&mut rows);
        }
    }
    println!("\n{}", text_table("io", &rows));
    if !filters.is_empty() && out.is_none() {
        println!("partial run: results not saved");
        return;
    }
    let path = out.unwrap_or_else(|| results_dir().join("io.json"));
    let json = Value::Array(rows.iter().map(Row::to_json).collect());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create the results directory");
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("results written to {}", path.display());
}
