//! Core runtime benchmarks: veloq against Tokio, async-executor and a raw SPSC ring.
//! (`scope`: structured fan-out/fan-in against Tokio's `JoinSet`.)
//!
//! Run with `cargo bench --bench core` (`VELOQ_BENCH_QUICK=1` for a smoke test). Optional
//! arguments select scenario groups by name: `cargo bench --bench core -- mesh park`;
//! a filtered run prints its table but leaves `target/bench/core.json` alone.
//!
//! Every scenario lives in one of the modules below, one function per scenario and
//! system; `benches/harness` alternates the systems, takes medians and writes the table.

#[path = "harness/mod.rs"]
mod harness;

#[path = "core/blocking.rs"]
mod blocking;
#[path = "core/common.rs"]
mod common;
#[path = "core/fairness.rs"]
mod fairness;
#[path = "core/introspect.rs"]
mod introspect;
#[path = "core/memory.rs"]
mod memory;
#[path = "core/mesh.rs"]
mod mesh;
#[path = "core/park.rs"]
mod park;
#[path = "core/scope.rs"]
mod scope;
#[path = "core/spawn.rs"]
mod spawn;
#[path = "core/spsc_ring.rs"]
mod spsc_ring;

use harness::{alloc::CountingAlloc, Bench};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A named group of scenarios.
type Group = (&'static str, fn(&mut Bench));

/// Scenario groups in run order.
///
/// `introspect` runs first, in a process no other scenario has used. Its watchdog row
/// compares two runtimes within 5 %. After other scenarios have made and ended many
/// worker threads, glibc gives new threads arenas in whatever state those left. The same
/// spawn loop then ran at 145.6 ns/task on one runtime and 109.5 on the other, which
/// differed only in the setting under test (full run at cca9cdb). Run first, the two
/// came out within 3 % in every run.
const GROUPS: [Group; 8] = [
    ("introspect", introspect::all),
    ("spawn", spawn::all),
    ("mesh", mesh::all),
    ("memory", memory::all),
    ("park", park::all),
    ("blocking", blocking::all),
    ("scope", scope::all),
    ("fairness", fairness::all),
];

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` is a filter.
    // `--out PATH` writes the results there instead (the smoke run in `make test`).
    let mut out = None;
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--out" {
            out = args.next().map(std::path::PathBuf::from);
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    let mut bench = Bench::new("core");
    for (name, run) in GROUPS {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            run(&mut bench);
        }
    }
    if let Some(path) = out {
        bench.finish_to(&path);
    } else if filters.is_empty() {
        bench.finish();
    } else {
        bench.finish_without_saving();
    }
}
