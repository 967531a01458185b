//! Turns the result files into tables, charts and BENCHMARKS.md.
//!
//! `cargo bench --bench report` reads every `target/bench/*.json` (written by the Rust
//! benches through `benches/harness` and by the C API benchmark, all in the same shape),
//! prints each table, draws `target/bench/<name>.svg`, copies the charts to
//! `docs/bench/<name>.svg` and regenerates `BENCHMARKS.md` at the repository root.
//! It measures nothing itself.

#[path = "harness/mod.rs"]
mod harness;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use harness::{
    fmt_ratio, fmt_value, markdown_table, read_rows, repo_root, results_dir, text_table, Row,
};

/// Where the committed copies of the charts go, relative to the repository root.
const DOCS_DIR: &str = "docs/bench";
/// The command that reproduces everything, and what it amounts to.
const REPRODUCE: &str = "make bench";
const REPRODUCE_STEPS: &str = "runs `cargo bench --bench core`, the C API benchmark \
    (writing `target/bench/capi.json`), the I/O benchmark (`make bench-io`: `cargo bench --bench \
    io` after building its C programs, writing `target/bench/io.json`) and then `cargo bench \
    --bench report`";

/// What a result file's section says before its table, for benches whose method differs
/// from the harness's default.
const NOTES: [(&str, &str); 2] = [
    (
        "core",
        "Fairness rows (`benches/core/fairness.rs`): veloq worker 1 is flooded by worker 0, \
         which keeps 64 `spawn_to` tasks in flight to it, while it runs a chain of \
         `spawn_local` tasks (each spawns the next) and a UDP receive loop fed one datagram at \
         a time over loopback. Each job notes how long it waited from ready (spawned, or its \
         datagram sent) to running, in ns and in jobs the worker ran in between (counted from \
         the worker's own log of job start times: free of timing noise). One loop turn's worth of budget = budget (64) × the 2 sources this \
         load keeps busy (local, mesh) = 128 jobs; the goal is p99 ≤ two turns' worth = 256 \
         jobs, and in time 256 × veloq's measured cost per job. Peer: a 1-worker Tokio \
         multi_thread runtime, flooded by `Handle::spawn` from a thread on the other core, \
         with `tokio::spawn` for the chain and a Tokio `UdpSocket`. 300 ms per run, the first 5 % \
         not measured; p50/p99 in ns are histogram buckets 3 % wide.",
    ),
    (
        "io",
        "TCP echo: every server is a fresh process per run with `--port P --workers 2` on \
         127.0.0.1, driven by the one load generator `benches/io/loadgen.c` (one epoll thread on \
         the same 2 cores; each connection sends 64-byte requests, one at a time or 16 in one \
         write, and checks every echoed byte): 0.5 s warm-up, then 2 s measured; no untimed \
         rounds. System calls per request come from a second, shorter pass on the same server \
         (`perf stat -e raw_syscalls:sys_enter -p PID` over 1 s, every thread of the server, \
         divided by that pass's requests/s), kept apart because the tracepoint slows each call. \
         File reads: a 1 GiB file of random bytes in `target/bench`, read whole before each \
         scenario; fio runs with `--ioengine=io_uring --rw=randread --bs=4k --iodepth=32 \
         --norandommap --invalidate=0` and otherwise its defaults, the io-uring loop keeps 32 reads \
         in flight with `submit_and_wait(1)`, each for 2 s. A row without a veloq figure waits for \
         veloq's server or hook (see `benches/io.rs`). Where each echo server's CPU time goes, \
         and the ceiling the one load-generator thread sets on every server's requests/s: \
         `make bench-echo-profile` (`benches/io/profile.rs`; measured in \
         `docs/echo-profile.md`).",
    ),
];

/// One result file, read.
struct ResultFile {
    name: String,
    rows: Vec<Row>,
    measured: Option<SystemTime>,
}

fn main() {
    let dir = results_dir();
    let files = match result_files(&dir) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            eprintln!(
                "no result files in {}: run the benches first",
                dir.display()
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cannot list {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let root = repo_root();
    let docs = root.join(DOCS_DIR);
    std::fs::create_dir_all(&docs).expect("create docs/bench");

    let mut results = Vec::new();
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let rows = match read_rows(&path) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("skipping {e}");
                continue;
            }
        };
        println!("{}", text_table(&name, &rows));
        let svg = chart_svg(&name, &rows);
        let svg_path = dir.join(format!("{name}.svg"));
        std::fs::write(&svg_path, &svg).expect("write chart");
        std::fs::write(docs.join(format!("{name}.svg")), &svg).expect("copy chart");
        println!("chart: {}\n", svg_path.display());
        let measured = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        results.push(ResultFile {
            name,
            rows,
            measured,
        });
    }

    let markdown = benchmarks_md(&results);
    let md_path = root.join("BENCHMARKS.md");
    std::fs::write(&md_path, markdown).expect("write BENCHMARKS.md");
    println!("wrote {}", md_path.display());
}

/// Every `*.json` in `dir`, sorted by name.
fn result_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------
// BENCHMARKS.md
// ---------------------------------------------------------------------------------------

/// What each system name stands for, for the legend of BENCHMARKS.md, and the crate whose
/// locked version is shown next to it.
const SYSTEMS: [(&str, &str, Option<&str>); 28] = [
    (
        "veloq",
        "this crate, default settings, workers under `SCHED_BATCH` (the core benches pin \
         their workers to cores; the I/O bench's echo server, `examples/echo`, does not, \
         and keeps one multishot receive per connection into a provided-buffer ring; the \
         file rows read with `File::read_at`, which on an `O_DIRECT` file hands each read \
         to the kernel as it is issued)",
        Some("veloq"),
    ),
    (
        "veloq-task",
        "veloq's mesh ping-pong with a task on worker A awaiting each pong (the round trip \
         plus a task wake and poll); the `veloq` row chains the callbacks as the ring does",
        Some("veloq"),
    ),
    (
        "veloq-park",
        "veloq with `spin_before_park(Duration::ZERO)`: idle workers park at once",
        Some("veloq"),
    ),
    (
        "tokio",
        "`tokio::spawn` / `Handle::spawn`: current_thread runtime in the one-worker spawn \
         row, multi_thread elsewhere (the I/O bench's echo server: one listener, a task per \
         connection)",
        Some("tokio"),
    ),
    (
        "tokio-localset",
        "Tokio current_thread runtime, `tokio::task::spawn_local` in a `LocalSet`",
        Some("tokio"),
    ),
    (
        "async-executor",
        "smol's `async_executor::LocalExecutor`",
        Some("async-executor"),
    ),
    (
        "spsc-ring",
        "a bare cache-padded SPSC ring between two pinned spinning threads (hardware \
         reference, written in the bench)",
        None,
    ),
    (
        "veloq-watchdog-off",
        "veloq with `stall_threshold(Duration::ZERO)`: no stall watchdog thread",
        Some("veloq"),
    ),
    (
        "veloq-named",
        "veloq, every task spawned with a name (`TaskBuilder::name`)",
        Some("veloq"),
    ),
    ("budget", "a fixed limit, not a system", None),
    (
        "ideal",
        "a fixed figure, not a system: the tasks' total work divided by the 2 workers \
         (both busy from the first spawn to the last join)",
        None,
    ),
    (
        "spsc_limit",
        "the C API bench's hardware ceiling for handing callbacks to another thread one \
         call at a time and back: spinning threads with private SPSC rings, best of the \
         runs (not a product; it does not bound the batch rows)",
        None,
    ),
    (
        "limit",
        "a fixed limit, not a system (fairness: two loop turns' worth of budget)",
        None,
    ),
    (
        "veloq-recv",
        "veloq's Rust echo server submitting one receive per request into a buffer moved \
         through each operation (`examples/echo --recv-per-request`)",
        Some("veloq"),
    ),
    (
        "veloq-nobatch",
        "veloq's Rust echo server with completion batching at park off (`examples/echo \
         --batch-us 0`; by default a busy worker's park waits up to 20 µs for a batch of \
         completions, `RuntimeBuilder::io_batch_wait`)",
        Some("veloq"),
    ),
    (
        "veloq-other",
        "veloq's Rust echo server with its workers under the default scheduling policy, \
         `SCHED_OTHER` (`examples/echo --sched-other`; by default workers run under \
         `SCHED_BATCH`, `RuntimeBuilder::sched_batch`: a woken worker does not preempt the \
         thread running on its core)",
        Some("veloq"),
    ),
    (
        "veloq-fixed",
        "veloq's file reads into buffers of the worker's registered pool \
         (`File::read_fixed_at`: `IORING_OP_READ_FIXED`, as `veloq_read_fixed` from C)",
        Some("veloq"),
    ),
    (
        "veloq-host",
        "veloq's host-side submission (`veloq_submit` from C; `Handle::submit_io` here): the \
         bench's own thread, not a worker, routes each read to the worker's ring and takes \
         its completion from a completion queue, into the host's own buffers; on the \
         `O_DIRECT` file each read with `VELOQ_SQE_SUBMIT_NOW` (`SubmitOptions::submit_now`)",
        Some("veloq"),
    ),
    (
        "veloq-host-fixed",
        "as veloq-host, into buffers of the worker's registered pool \
         (`VELOQ_OP_READ_FIXED`: `IORING_OP_READ_FIXED` on the buffer's worker)",
        Some("veloq"),
    ),
    (
        "veloq-poll",
        "veloq's file reads with `RuntimeBuilder::io_poll(2 ms)`: a worker with reads in \
         flight polls its ring instead of parking (busy: a core spent while reads are in \
         flight)",
        Some("veloq"),
    ),
    (
        "veloq-c",
        "veloq's C echo server through the C API (`build/examples/echo_server`)",
        Some("veloq"),
    ),
    (
        "veloq-c-ms",
        "veloq's C echo server with one multishot receive per connection into a \
         provided-buffer ring of its worker (`veloq_buf_ring_*`), echoing from the buffers \
         (`build/examples/echo_server --multishot`)",
        Some("veloq"),
    ),
    (
        "monoio",
        "Monoio, one io_uring runtime per worker thread, a listener each (SO_REUSEPORT)",
        Some("monoio"),
    ),
    (
        "libuv",
        "libuv from Debian's libuv1-dev: the C API bench's thread pool and async handles; \
         the I/O bench's echo server, one loop and listener per worker",
        None,
    ),
    (
        "epoll",
        "minimal epoll echo server in C written for the bench (`benches/io/epoll_echo.c`)",
        None,
    ),
    (
        "liburing",
        "minimal raw io_uring echo server in C on liburing written for the bench \
         (`benches/io/uring_echo.c`)",
        None,
    ),
    ("fio", "Debian's fio, `--ioengine=io_uring`", None),
    (
        "io-uring",
        "a raw loop on the io-uring crate written for the bench",
        Some("io-uring"),
    ),
];

/// The version of `krate` in the repository's Cargo.lock.
fn locked_version(krate: &str) -> Option<String> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    let name_line = format!("name = \"{krate}\"");
    lines.find(|l| *l == name_line)?;
    let version = lines.next()?.strip_prefix("version = ")?;
    Some(version.trim_matches('"').to_owned())
}

fn benchmarks_md(results: &[ResultFile]) -> String {
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# Benchmarks\n").unwrap();
    writeln!(
        w,
        "Generated by `cargo bench --bench report` from `target/bench/*.json`; do not edit \
         by hand. To reproduce: `{REPRODUCE}`, which {REPRODUCE_STEPS}. \
         `VELOQ_BENCH_QUICK=1` divides every count by ten for a smoke test.\n"
    )
    .unwrap();
    writeln!(w, "## Machine\n").unwrap();
    writeln!(w, "| | |\n|---|---|").unwrap();
    writeln!(w, "| CPUs (nproc) | {} |", nproc()).unwrap();
    writeln!(w, "| CPU | {} |", cpu_model()).unwrap();
    writeln!(w, "| kernel | {} |", kernel()).unwrap();
    writeln!(w, "| report generated | {} |", utc(SystemTime::now())).unwrap();
    writeln!(w).unwrap();
    writeln!(w, "## How to read\n").unwrap();
    writeln!(
        w,
        "Each scenario runs veloq and every peer in the same process, alternating them \
         (veloq, peer 1, peer 2, veloq, ...): {} warm-up round and {} timed rounds, median \
         of each; before each round the harness waits (within limits) until other processes \
         leave the machine idle. **veloq vs peer** is oriented so that **> 1 means veloq is better** \
         (peer ÷ veloq for times and bytes, veloq ÷ peer for throughput); the goal column \
         checks that ratio. The charts show every system relative to veloq = 1.0, longer \
         is better.\n",
        harness::WARMUPS,
        harness::RUNS
    )
    .unwrap();
    let used = SYSTEMS.iter().filter(|(name, _, _)| {
        results
            .iter()
            .any(|f| f.rows.iter().any(|r| r.value(name).is_some()))
    });
    writeln!(w, "| system | what it is | version |\n|---|---|---|").unwrap();
    for (name, what, krate) in used {
        let version = krate.and_then(locked_version).unwrap_or_default();
        writeln!(w, "| {name} | {what} | {version} |").unwrap();
    }
    // Systems this report does not know (a new bench's peers): name where they come from.
    let mut unknown: Vec<(&str, &str)> = Vec::new();
    for file in results {
        for (system, _) in file.rows.iter().flat_map(|r| &r.results) {
            let known = SYSTEMS.iter().any(|(name, _, _)| name == system);
            if !known && !unknown.iter().any(|(s, _)| s == system) {
                unknown.push((system, &file.name));
            }
        }
    }
    for (system, file) in unknown {
        writeln!(
            w,
            "| {system} | see the bench that writes `{file}.json` | |"
        )
        .unwrap();
    }
    writeln!(w).unwrap();

    for file in results {
        writeln!(w, "## {}\n", file.name).unwrap();
        let when = file.measured.map(utc).unwrap_or_else(|| "unknown".into());
        writeln!(
            w,
            "Measured {when}, from `target/bench/{}.json`.\n",
            file.name
        )
        .unwrap();
        if file.rows.iter().any(|r| r.quick) {
            writeln!(
                w,
                "> **Quick run** (`VELOQ_BENCH_QUICK=1`, counts ÷ 10): a smoke test, not \
                 representative.\n"
            )
            .unwrap();
        }
        if let Some((_, note)) = NOTES.iter().find(|(name, _)| *name == file.name) {
            writeln!(w, "{note}\n").unwrap();
        }
        if file.rows.iter().any(|r| r.veloq().is_some()) {
            writeln!(w, "![{0} chart]({DOCS_DIR}/{0}.svg)\n", file.name).unwrap();
        } else {
            writeln!(
                w,
                "No chart yet: the chart draws every system relative to veloq, and no row \
                 has a veloq figure.\n"
            )
            .unwrap();
        }
        writeln!(w, "{}", markdown_table(&file.rows)).unwrap();
    }
    md
}

fn nproc() -> String {
    std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `sysname release machine`, as `uname -srm` prints it.
fn kernel() -> String {
    // SAFETY: uname fills the struct we hand it.
    let uts = unsafe {
        let mut uts = std::mem::zeroed::<libc::utsname>();
        if libc::uname(&mut uts) != 0 {
            return "unknown".into();
        }
        uts
    };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {}",
        field(&uts.sysname),
        field(&uts.release),
        field(&uts.machine)
    )
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

// ---------------------------------------------------------------------------------------
// SVG chart
// ---------------------------------------------------------------------------------------

const WIDTH: f64 = 960.0;
const LABEL_X: f64 = 16.0;
const BAR_X: f64 = 150.0;
const BAR_MAX_W: f64 = 560.0;
const BAR_H: f64 = 16.0;
const BAR_GAP: f64 = 4.0;
const HEADING_H: f64 = 24.0;
const GROUP_GAP: f64 = 14.0;
const TOP: f64 = 64.0;
/// Text attributes that keep a label readable over the reference line.
const HALO: &str = r#"stroke="white" stroke-width="3" paint-order="stroke""#;
/// Bars longer than this (relative to veloq) are cut and marked.
const MAX_RELATIVE: f64 = 4.0;

/// The colour of a system's bars: veloq stands out, peers share a palette.
fn colour(system: &str, peer_index: usize) -> &'static str {
    const PEERS: [&str; 6] = [
        "#4c78a8", "#54a24b", "#b279a2", "#72b7b2", "#eeca3b", "#9d755d",
    ];
    match system {
        "veloq" => "#e4572e",
        "budget" | "ideal" => "#9e9e9e",
        _ => PEERS[peer_index % PEERS.len()],
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A grouped horizontal bar chart: one group per scenario, one bar per system, each
/// system's performance relative to veloq (veloq = 1.0, longer = better).
fn chart_svg(name: &str, rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.veloq().is_some()).collect();
    let axis_max = rows
        .iter()
        .flat_map(|r| r.results.iter().filter_map(|(s, _)| r.relative(s)))
        .fold(1.0_f64, f64::max)
        .min(MAX_RELATIVE)
        * 1.1;
    let x_of = |relative: f64| BAR_X + BAR_MAX_W * (relative.min(axis_max) / axis_max);

    // Peers keep one colour across the whole chart.
    let mut peers: Vec<&str> = Vec::new();
    for row in &rows {
        for (system, _) in row.peers() {
            if !peers.contains(&system) {
                peers.push(system);
            }
        }
    }
    let colour_of =
        |system: &str| colour(system, peers.iter().position(|p| *p == system).unwrap_or(0));

    let height: f64 = TOP
        + rows
            .iter()
            .map(|r| HEADING_H + r.results.len() as f64 * (BAR_H + BAR_GAP) + GROUP_GAP)
            .sum::<f64>()
        + 24.0;

    let mut svg = String::new();
    let s = &mut svg;
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    )
    .unwrap();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).unwrap();
    let quick = if rows.iter().any(|r| r.quick) {
        " — QUICK RUN, not representative"
    } else {
        ""
    };
    writeln!(
        s,
        r#"<text x="{LABEL_X}" y="24" font-size="16" font-weight="bold">{}{}</text>"#,
        escape(name),
        quick
    )
    .unwrap();
    writeln!(
        s,
        r##"<text x="{LABEL_X}" y="44" fill="#555">Each system relative to veloq = 1.0 (longer is better: veloq ÷ system for times and bytes, system ÷ veloq for throughput). Labels: ratio · measured value.</text>"##
    )
    .unwrap();

    // The veloq = 1.0 reference line through every group.
    let one = x_of(1.0);
    writeln!(
        s,
        r##"<line x1="{one:.1}" y1="{:.1}" x2="{one:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
        TOP - 6.0,
        height - 20.0
    )
    .unwrap();
    writeln!(
        s,
        r##"<text x="{one:.1}" y="{:.1}" text-anchor="middle" fill="#333">1.0 = veloq</text>"##,
        height - 6.0
    )
    .unwrap();

    let mut y = TOP;
    for row in &rows {
        writeln!(
            s,
            r#"<text x="{LABEL_X}" y="{:.1}" font-weight="bold">{} [{}]</text>"#,
            y + 14.0,
            escape(&row.scenario),
            escape(&row.unit)
        )
        .unwrap();
        y += HEADING_H;
        for (system, value) in &row.results {
            let bar_y = y;
            y += BAR_H + BAR_GAP;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                BAR_X - 8.0,
                bar_y + 12.0,
                escape(system)
            )
            .unwrap();
            let Some(relative) = row.relative(system) else {
                writeln!(
                    s,
                    r##"<text x="{BAR_X}" y="{:.1}" fill="#555">n/a · {}</text>"##,
                    bar_y + 12.0,
                    fmt_value(*value)
                )
                .unwrap();
                continue;
            };
            let end = x_of(relative);
            writeln!(
                s,
                r#"<rect x="{BAR_X}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}" fill="{}"/>"#,
                (end - BAR_X).max(1.0),
                colour_of(system)
            )
            .unwrap();
            let cut = if relative > axis_max { " ▶" } else { "" };
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" {HALO}>{}{cut} · {} {}</text>"#,
                end + 6.0,
                bar_y + 12.0,
                fmt_ratio(Some(relative)),
                fmt_value(*value),
                escape(&row.unit)
            )
            .unwrap();
        }
        y += GROUP_GAP;
    }
    writeln!(s, "</svg>").unwrap();
    svg
}
